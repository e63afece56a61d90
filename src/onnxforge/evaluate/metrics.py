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
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np

from onnxforge.errors import EvaluationError

METRIC_NAMES = ("miou-segmentron", "miou-mmseg", "miou-densetorch", "topk", "binary-iou")
SEGMENTRON_EPS = 2.220446049250313e-16
BINARY_SMOOTH = 1e-5


def _hist(values: np.ndarray, n: int) -> np.ndarray:
    """Counts of the integers 0..n-1 in `values` (others ignored), like torch.histc over integer bins."""
    v = values.astype(np.int64, copy=False).ravel()
    v = v[(v >= 0) & (v < n)]
    return np.bincount(v, minlength=n)[:n].astype(np.int64)


def _frac(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


class Metric(ABC):
    """Accumulates over the dataset; `result()` gives fractions in [0, 1] (None where undefined)."""

    name: str = ""

    @abstractmethod
    def update(self, prediction, target) -> None: ...

    @abstractmethod
    def result(self) -> dict[str, float | None]: ...

    def per_class(self) -> list[float | None] | None:
        return None


def _check_pair(pred: np.ndarray, target: np.ndarray) -> None:
    if pred.shape != target.shape:
        raise EvaluationError(f"prediction shape {pred.shape} does not match the label's {target.shape}")


class SegmentronMIoU(Metric):
    name = "miou-segmentron"

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

    def iou(self) -> np.ndarray:
        return self.inter / (SEGMENTRON_EPS + self.union)

    def result(self) -> dict[str, float | None]:
        return {"mIoU": float(self.iou().mean()), "pixAcc": float(self.correct / (SEGMENTRON_EPS + self.labeled))}

    def per_class(self) -> list[float | None]:
        return [float(x) for x in self.iou()]


class MmsegMIoU(Metric):
    name = "miou-mmseg"

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.inter = np.zeros(num_classes, np.int64)
        self.union = np.zeros(num_classes, np.int64)
        self.area_pred = np.zeros(num_classes, np.int64)
        self.area_label = np.zeros(num_classes, np.int64)

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


class DensetorchMIoU(Metric):
    name = "miou-densetorch"

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.cm = np.zeros((num_classes, num_classes), np.int64)

    def update(self, prediction: np.ndarray, target: np.ndarray) -> None:
        _check_pair(prediction, target)
        n = self.num_classes
        pred = prediction.astype(np.int64, copy=False).ravel()
        gt = target.astype(np.int64, copy=False).ravel()
        idx = (gt >= 0) & (gt < n) & (pred >= 0) & (pred < n)
        self.cm += np.bincount(gt[idx] * n + pred[idx], minlength=n * n).reshape(n, n)

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


class TopK(Metric):
    name = "topk"

    def __init__(self, ks: tuple[int, ...] = (1, 5)) -> None:
        self.ks = ks
        self.hits = {k: 0 for k in ks}
        self.count = 0

    def update(self, prediction: np.ndarray, target: int) -> None:
        logits = np.asarray(prediction, dtype=np.float64).ravel()
        order = np.argsort(-logits, kind="stable")
        for k in self.ks:
            self.hits[k] += int(int(target) in order[:k])
        self.count += 1

    def result(self) -> dict[str, float | None]:
        return {f"top{k}": (self.hits[k] / self.count if self.count else None) for k in self.ks}


class BinaryIoU(Metric):
    name = "binary-iou"

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def update(self, prediction: np.ndarray, target: np.ndarray) -> None:
        _check_pair(prediction, target)
        p = prediction.astype(bool)
        t = target > 0
        inter = float((p & t).sum())
        union = float((p | t).sum())
        self.total += (inter + BINARY_SMOOTH) / (union + BINARY_SMOOTH)
        self.count += 1

    def result(self) -> dict[str, float | None]:
        return {"IoU": self.total / self.count if self.count else None}


def make_metric(name: str, num_classes: int, ignore_index: int | None = None) -> Metric:
    """The metric called `name` (see the module docstring)."""
    if name == "miou-segmentron":
        return SegmentronMIoU(num_classes)
    if name == "miou-mmseg":
        return MmsegMIoU(num_classes, 255 if ignore_index is None else ignore_index)
    if name == "miou-densetorch":
        return DensetorchMIoU(num_classes)
    if name == "topk":
        return TopK()
    if name == "binary-iou":
        return BinaryIoU()
    raise EvaluationError(f"unknown metric '{name}'; known metrics: {', '.join(METRIC_NAMES)}")
