"""Task metrics, computed exactly as the upstream code each seed model was scored with.

Every metric accumulates over the dataset with `update(prediction, target)` and reports fractions in
[0, 1] from `result()`. Predictions are label maps (HxW ints; binary maps for ``binary-iou``) or, for
``topk``, a logits vector; `postprocess.py` makes them from any model output form.

- ``miou-segmentron`` (SegmenTron `SegmentationMetric`): pixels with target >= 0 are valid (-1 is
  void); intersection, prediction and label areas are histogrammed over the classes and **summed over
  the dataset**; IoU = inter / (2.22e-16 + union), **mIoU = plain mean over all classes** (a class absent
  everywhere counts as 0); pixAcc = correct / (2.22e-16 + labeled). (SegmenTron computes pixAcc from
  `argmax(output.long())`, i.e. truncated logits; here it uses the real argmax, which a label-map output
  can also provide.)
- ``miou-mmseg`` (mmseg 0.x `intersect_and_union` / `eval_metrics`): per image, pixels equal to
  `ignore_index` (255) are dropped; areas summed over the dataset; IoU = inter / union, **mIoU = nanmean**
  (classes with no union are skipped); pixAcc = aAcc = sum(inter) / sum(label area).
- ``miou-densetorch`` (densetorch `MeanIoU`, the RefineNet guide): confusion matrix over pixels with
  0 <= gt < C (so 255 is ignored); per-class IU = ii / (pi + gi - ii), a class with denominator 0 gets
  the placeholder 2, and **mIoU = mean over classes with IU <= 1**. pixAcc (trace / total) is extra.
- ``topk``: top-1 and top-5 accuracy of the logits against the integer label (ties: first index).
- ``binary-iou`` (the UNet++ guide): per image IoU = (|P & T| + 1e-5) / (|P | T| + 1e-5) with
  T = target > 0, P = the thresholded prediction; **mean over images**.

Each metric class registers itself (``@register_metric``) with its `name`, a one-line `summary` and the
`keys` its `result()` reports; `make_metric(name, ...)` builds one by name.

Per-image contributions (``per_image=True``), so that a bootstrap over images can resample them:
segmentation metrics keep one confusion matrix per image (rows: target class, columns: predicted
class, over pixels whose target and prediction are both in 0..C-1), ``topk`` one row of hits per image
(top-k for each k), ``binary-iou`` each image's IoU.

Sharded evaluation (`Metric.merge`): a metric accumulated over one shard of the images merges into the
same metric over another shard by adding its accumulators (the segmentation metrics' per-class areas or
confusion matrix, top-k hit counts), so mIoU over the merged shards is computed from the summed
confusion statistics, exactly the unsharded value, never a mean of per-shard mIoU. Float accumulators
(``binary-iou``'s sum of per-image IoUs) are replayed image by image in order, so they are bit-identical too.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np

from onnxforge.errors import EvaluationError
from onnxforge.evaluate.registry import METRICS, register_metric

SEGMENTRON_EPS = 2.220446049250313e-16
BINARY_SMOOTH = 1e-5


def _hist(values: np.ndarray, n: int) -> np.ndarray:
    """Counts of the integers 0..n-1 in `values` (others ignored), like torch.histc over integer bins."""
    v = values.astype(np.int64, copy=False).ravel()
    v = v[(v >= 0) & (v < n)]
    return np.bincount(v, minlength=n)[:n].astype(np.int64)


def _frac(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def confusion(pred: np.ndarray, target: np.ndarray, n: int) -> np.ndarray:
    """(n, n) counts of (target class, predicted class) over pixels where both are in 0..n-1."""
    p = pred.astype(np.int64, copy=False).ravel()
    t = target.astype(np.int64, copy=False).ravel()
    ok = (t >= 0) & (t < n) & (p >= 0) & (p < n)
    return np.bincount(t[ok] * n + p[ok], minlength=n * n).reshape(n, n)


class Metric(ABC):
    """Accumulates over the dataset; `result()` gives fractions in [0, 1] (None where undefined).

    A registered metric declares `name`, `summary`, the `keys` of `result()` and builds itself from
    the evaluation's class count and ignore label with `create`.
    """

    name: str = ""
    summary: str = ""
    keys: tuple[str, ...] = ()
    per_image_kind: str = ""  # "confusion" | "hits" | "score"
    #: accumulator attributes (integer counts or arrays) that add across shards, see `merge`
    summed: tuple[str, ...] = ()

    @classmethod
    def create(cls, num_classes: int, ignore_index: int | None = None) -> Metric:
        return cls(num_classes)

    def keep_per_image(self) -> None:
        """From now on, keep each image's contribution (see the module docstring)."""
        self._per_image: list[np.ndarray] = []

    def _record(self, prediction: np.ndarray, target: np.ndarray) -> None:
        if getattr(self, "_per_image", None) is not None:
            self._per_image.append(confusion(prediction, target, self.num_classes))

    def merge(self, other: Metric) -> None:
        """Adds `other` (this metric accumulated over later images) into this one, in place: `result()` is then
        the metric over both sets of images, as if they had been updated in order into one metric.

        Raises:
            EvaluationError: `other` is another metric or has another class count.
        """
        if type(other) is not type(self) or getattr(other, "num_classes", None) != getattr(self, "num_classes", None):
            raise EvaluationError(f"cannot merge metric {other.name} into {self.name} (different metric or class count)")
        for attr in self.summed:
            setattr(self, attr, getattr(self, attr) + getattr(other, attr))
        mine, theirs = getattr(self, "_per_image", None), getattr(other, "_per_image", None)
        if mine is not None and theirs is not None:
            mine.extend(theirs)
        elif mine is not None:
            self._per_image = None  # the other shard kept none: a partial list would be wrong

    def per_image(self) -> np.ndarray | None:
        """The kept contributions stacked over images (None unless `keep_per_image` was called)."""
        kept = getattr(self, "_per_image", None)
        if kept is None:
            return None
        return np.stack(kept) if kept else np.zeros((0,))

    def result_from(self, per_image: np.ndarray) -> dict[str, float | None]:
        """`result()` of the images whose kept contributions are `per_image` (rows of `per_image()`, any
        selection or resample, repeats allowed). Segmentation: exact where every target is a class or
        void; SegmenTron's pixAcc also counts targets >= C as labelled, which a confusion cannot."""
        raise NotImplementedError(f"{self.name}: no per-image aggregation")

    @abstractmethod
    def update(self, prediction, target) -> None: ...

    @abstractmethod
    def result(self) -> dict[str, float | None]: ...

    def per_class(self) -> list[float | None] | None:
        return None


def _check_pair(pred: np.ndarray, target: np.ndarray) -> None:
    if pred.shape != target.shape:
        raise EvaluationError(f"prediction shape {pred.shape} does not match the label's {target.shape}")


@register_metric
class SegmentronMIoU(Metric):
    name = "miou-segmentron"
    summary = "SegmenTron mIoU (void -1, plain mean over all classes) and pixAcc"
    keys = ("mIoU", "pixAcc")
    per_image_kind = "confusion"
    summed = ("inter", "union", "correct", "labeled")

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.inter = np.zeros(num_classes, np.int64)
        self.union = np.zeros(num_classes, np.int64)
        self.correct = 0
        self.labeled = 0

    def update(self, prediction: np.ndarray, target: np.ndarray) -> None:
        _check_pair(prediction, target)
        pred = prediction.astype(np.int64, copy=False)
        tgt = target.astype(np.int64, copy=False)
        valid = tgt >= 0
        self.labeled += int(valid.sum())
        self.correct += int(((pred == tgt) & valid).sum())
        p, t = pred[valid], tgt[valid]
        inter = _hist(p[p == t], self.num_classes)
        self.inter += inter
        self.union += _hist(p, self.num_classes) + _hist(t, self.num_classes) - inter
        self._record(p, t)

    def result_from(self, per_image: np.ndarray) -> dict[str, float | None]:
        cm = np.asarray(per_image, np.int64).reshape(-1, self.num_classes, self.num_classes).sum(axis=0)
        m = SegmentronMIoU(self.num_classes)
        m.inter = np.diag(cm).copy()
        m.union = cm.sum(axis=0) + cm.sum(axis=1) - m.inter
        m.correct, m.labeled = int(np.trace(cm)), int(cm.sum())
        return m.result()

    def iou(self) -> np.ndarray:
        return self.inter / (SEGMENTRON_EPS + self.union)

    def result(self) -> dict[str, float | None]:
        return {"mIoU": float(self.iou().mean()), "pixAcc": float(self.correct / (SEGMENTRON_EPS + self.labeled))}

    def per_class(self) -> list[float | None]:
        return [float(x) for x in self.iou()]


@register_metric
class MmsegMIoU(Metric):
    name = "miou-mmseg"
    summary = "mmseg mIoU (ignore 255, nanmean over classes) and aAcc"
    keys = ("mIoU", "pixAcc")
    per_image_kind = "confusion"
    summed = ("inter", "union", "area_pred", "area_label")

    def merge(self, other: Metric) -> None:
        if getattr(other, "ignore_index", None) != self.ignore_index:
            raise EvaluationError(f"cannot merge {self.name} with ignore index {other.ignore_index} into {self.ignore_index}")
        super().merge(other)

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.inter = np.zeros(num_classes, np.int64)
        self.union = np.zeros(num_classes, np.int64)
        self.area_pred = np.zeros(num_classes, np.int64)
        self.area_label = np.zeros(num_classes, np.int64)

    @classmethod
    def create(cls, num_classes: int, ignore_index: int | None = None) -> Metric:
        return cls(num_classes, 255 if ignore_index is None else ignore_index)

    def update(self, prediction: np.ndarray, target: np.ndarray) -> None:
        _check_pair(prediction, target)
        pred = prediction.astype(np.int64, copy=False)
        tgt = target.astype(np.int64, copy=False)
        if self.ignore_index is not None:
            mask = tgt != self.ignore_index
            pred, tgt = pred[mask], tgt[mask]
        inter = _hist(pred[pred == tgt], self.num_classes)
        ap, al = _hist(pred, self.num_classes), _hist(tgt, self.num_classes)
        self.inter += inter
        self.area_pred += ap
        self.area_label += al
        self.union += ap + al - inter
        self._record(pred, tgt)

    def result_from(self, per_image: np.ndarray) -> dict[str, float | None]:
        cm = np.asarray(per_image, np.int64).reshape(-1, self.num_classes, self.num_classes).sum(axis=0)
        m = MmsegMIoU(self.num_classes, self.ignore_index)
        m.inter = np.diag(cm).copy()
        m.area_pred, m.area_label = cm.sum(axis=0), cm.sum(axis=1)
        m.union = m.area_pred + m.area_label - m.inter
        return m.result()

    def iou(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.inter / self.union

    def result(self) -> dict[str, float | None]:
        iou = self.iou()
        miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
        total = self.area_label.sum()
        return {"mIoU": _frac(miou), "pixAcc": _frac(float(self.inter.sum() / total) if total else float("nan"))}

    def per_class(self) -> list[float | None]:
        return [_frac(float(x)) for x in self.iou()]


@register_metric
class DensetorchMIoU(Metric):
    name = "miou-densetorch"
    summary = "densetorch mIoU (confusion over gt < C, mean over classes with IU <= 1) and pixAcc"
    keys = ("mIoU", "pixAcc")
    per_image_kind = "confusion"
    summed = ("cm",)

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.cm = np.zeros((num_classes, num_classes), np.int64)

    def update(self, prediction: np.ndarray, target: np.ndarray) -> None:
        _check_pair(prediction, target)
        n = self.num_classes
        pred = prediction
        gt = target
        cm = confusion(pred, gt, n)
        self.cm += cm
        if getattr(self, "_per_image", None) is not None:
            self._per_image.append(cm)

    def result_from(self, per_image: np.ndarray) -> dict[str, float | None]:
        m = DensetorchMIoU(self.num_classes)
        m.cm = np.asarray(per_image, np.int64).reshape(-1, self.num_classes, self.num_classes).sum(axis=0)
        return m.result()

    def iou(self) -> np.ndarray:
        pi = self.cm.sum(axis=0)
        gi = self.cm.sum(axis=1)
        ii = np.diag(self.cm)
        denom = pi + gi - ii
        iu = np.full(self.num_classes, 2.0)
        ok = denom > 0
        iu[ok] = ii[ok] / denom[ok]
        return iu

    def result(self) -> dict[str, float | None]:
        iu = self.iou()
        kept = iu[iu <= 1.0]
        total = self.cm.sum()
        return {
            "mIoU": _frac(float(kept.mean()) if kept.size else float("nan")),
            "pixAcc": _frac(float(np.trace(self.cm) / total) if total else float("nan")),
        }

    def per_class(self) -> list[float | None]:
        return [None if x > 1.0 else float(x) for x in self.iou()]


@register_metric
class TopK(Metric):
    name = "topk"
    summary = "top-1 and top-5 accuracy of classification logits"
    keys = ("top1", "top5")
    per_image_kind = "hits"

    def __init__(self, ks: tuple[int, ...] = (1, 5)) -> None:
        self.ks = ks
        self.hits = {k: 0 for k in ks}
        self.count = 0

    @classmethod
    def create(cls, num_classes: int, ignore_index: int | None = None) -> Metric:
        return cls()

    def update(self, prediction: np.ndarray, target: int) -> None:
        logits = np.asarray(prediction, dtype=np.float64).ravel()
        order = np.argsort(-logits, kind="stable")
        row = [int(int(target) in order[:k]) for k in self.ks]
        for k, hit in zip(self.ks, row):
            self.hits[k] += hit
        self.count += 1
        if getattr(self, "_per_image", None) is not None:
            self._per_image.append(np.array(row, dtype=bool))

    def merge(self, other: Metric) -> None:
        if not isinstance(other, TopK) or other.ks != self.ks:
            raise EvaluationError(f"cannot merge metric {other.name} into {self.name}")
        self.hits = {k: self.hits[k] + other.hits[k] for k in self.ks}
        self.count += other.count
        Metric.merge(self, other)

    def result_from(self, per_image: np.ndarray) -> dict[str, float | None]:
        hits = np.asarray(per_image, bool).reshape(-1, len(self.ks))
        m = TopK(self.ks)
        m.hits = {k: int(hits[:, i].sum()) for i, k in enumerate(self.ks)}
        m.count = hits.shape[0]
        return m.result()

    def result(self) -> dict[str, float | None]:
        return {f"top{k}": (self.hits[k] / self.count if self.count else None) for k in self.ks}


@register_metric
class BinaryIoU(Metric):
    name = "binary-iou"
    summary = "binary IoU with 1e-5 smoothing, mean over images (UNet++)"
    keys = ("IoU",)
    per_image_kind = "score"

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0
        self.scores: list[float] = []  # each image's IoU, so that a merge replays the float sum in order

    @classmethod
    def create(cls, num_classes: int, ignore_index: int | None = None) -> Metric:
        return cls()

    def update(self, prediction: np.ndarray, target: np.ndarray) -> None:
        _check_pair(prediction, target)
        p = prediction.astype(bool)
        t = target > 0
        inter = float((p & t).sum())
        union = float((p | t).sum())
        iou = (inter + BINARY_SMOOTH) / (union + BINARY_SMOOTH)
        self.total += iou
        self.count += 1
        self.scores.append(iou)
        if getattr(self, "_per_image", None) is not None:
            self._per_image.append(np.array(iou))

    def merge(self, other: Metric) -> None:
        if not isinstance(other, BinaryIoU):
            raise EvaluationError(f"cannot merge metric {other.name} into {self.name}")
        for iou in other.scores:  # the serial sum's order: bit-identical to one metric over all images
            self.total += iou
        self.count += other.count
        self.scores.extend(other.scores)
        Metric.merge(self, other)

    def result_from(self, per_image: np.ndarray) -> dict[str, float | None]:
        scores = np.asarray(per_image, np.float64).ravel()
        m = BinaryIoU()
        m.total, m.count = float(scores.sum()), int(scores.size)
        return m.result()

    def result(self) -> dict[str, float | None]:
        return {"IoU": self.total / self.count if self.count else None}


def make_metric(name: str, num_classes: int, ignore_index: int | None = None) -> Metric:
    """The registered metric called `name` (see the module docstring); EvaluationError listing the known ones."""
    return METRICS.get(name).create(num_classes, ignore_index)


def metric_keys(name: str) -> tuple[str, ...]:
    """The keys `result()` of metric `name` reports."""
    return METRICS.get(name).keys
