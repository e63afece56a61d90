"""Agreement between a model and a reference model (the baseline), where labels are absent or beside the point.

Functions compare one pair; `Agreement` accumulates over a dataset with bounded memory:
- ``pixel_agreement``: fraction of pixels whose predicted class is the same (all pixels count);
- ``miou_vs_reference``: mIoU of the predictions scored against the reference's predictions as if they
  were labels (summed over the dataset, nanmean over classes present in either);
- ``top1_agreement``: fraction of samples whose top-1 class is the same;
- ``max_abs_error`` / ``mean_abs_error`` / ``cosine_similarity``: on the raw first outputs, when they
  have the same shape (not when one model emits labels and the other logits).

`Agreement.merge` adds the statistics of later images (another shard) exactly: counts add, the maximum is
taken, and the float sums are replayed image by image in order (each image's four partial sums are kept,
32 bytes an image), so a sharded evaluation's agreement is bit-identical to the unsharded one.
"""

from __future__ import annotations

import math

import numpy as np


def pixel_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of equal elements of two label maps of the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    return float((a == b).mean()) if a.size else 1.0


def miou_against(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> float:
    """mIoU of `pred` against `ref` (nanmean over classes that appear in either)."""
    inter, union = _inter_union(pred, ref, num_classes)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def top1_agreement(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
    """Fraction of rows of (N, C) logits whose argmax agrees."""
    return float((np.argmax(logits_a, axis=-1) == np.argmax(logits_b, axis=-1)).mean())


def abs_errors(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max, mean) absolute difference of two same-shape arrays, computed in float64."""
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return (float(d.max()), float(d.mean())) if d.size else (0.0, 0.0)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the angle between two flattened arrays (1.0 for two zero arrays)."""
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = float(x @ x), float(y @ y)
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(x @ y) / math.sqrt(na * nb)


def _inter_union(pred: np.ndarray, ref: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    p = pred.astype(np.int64).ravel()
    r = ref.astype(np.int64).ravel()
    ok_p = (p >= 0) & (p < n)
    ok_r = (r >= 0) & (r < n)
    inter = np.bincount(p[(p == r) & ok_p], minlength=n)[:n]
    ap = np.bincount(p[ok_p], minlength=n)[:n]
    ar = np.bincount(r[ok_r], minlength=n)[:n]
    return inter.astype(np.int64), (ap + ar - inter).astype(np.int64)


class Agreement:
    """Streams agreement statistics over a dataset; `result()` returns the metrics that apply."""

    def __init__(self, num_classes: int | None = None) -> None:
        self.num_classes = num_classes
        self.pixels = 0
        self.equal_pixels = 0
        self.inter = np.zeros(num_classes or 0, np.int64)
        self.union = np.zeros(num_classes or 0, np.int64)
        self.samples = 0
        self.top1_equal = 0
        self.raw_count = 0
        self.raw_max = 0.0
        self.raw_sum = 0.0
        self.dot = 0.0
        self.norm_a = 0.0
        self.norm_b = 0.0
        self.raw_compared = True
        self.raw_parts: list[tuple[float, float, float, float]] = []  # per image: (|d| sum, x.y, x.x, y.y)

    def update_labels(self, pred: np.ndarray, ref: np.ndarray) -> None:
        """Adds one pair of label maps (same shape)."""
        if pred.shape != ref.shape:
            raise ValueError(f"label maps differ in shape: {pred.shape} vs {ref.shape}")
        self.pixels += pred.size
        self.equal_pixels += int((pred == ref).sum())
        if self.num_classes:
            inter, union = _inter_union(pred, ref, self.num_classes)
            self.inter += inter
            self.union += union

    def update_logits(self, logits: np.ndarray, ref_logits: np.ndarray) -> None:
        """Adds one pair of classification logits vectors."""
        self.samples += 1
        self.top1_equal += int(np.argmax(logits) == np.argmax(ref_logits))

    def update_raw(self, out: np.ndarray, ref_out: np.ndarray) -> None:
        """Adds one pair of raw outputs; a shape mismatch turns the raw statistics off."""
        if out.shape != ref_out.shape or out.dtype.kind not in "f" or ref_out.dtype.kind not in "f":
            self.raw_compared = False
            return
        x, y = out.astype(np.float64).ravel(), ref_out.astype(np.float64).ravel()
        d = np.abs(x - y)
        if d.size:
            self.raw_max = max(self.raw_max, float(d.max()))
        # einsum, not `@`: BLAS splits a dot product by its thread count (Ray workers run with
        # OMP_NUM_THREADS=1), which changes the last digits; einsum's own loop gives the same sum everywhere
        part = (float(d.sum()), float(np.einsum("i,i->", x, y)), float(np.einsum("i,i->", x, x)),
                float(np.einsum("i,i->", y, y)))
        self.raw_count += d.size
        self._add_raw(part)
        self.raw_parts.append(part)

    def _add_raw(self, part: tuple[float, float, float, float]) -> None:
        self.raw_sum += part[0]
        self.dot += part[1]
        self.norm_a += part[2]
        self.norm_b += part[3]

    def merge(self, other: Agreement) -> None:
        """Adds `other` (the statistics of later images) into this one, in place (see the module docstring)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"agreement over {other.num_classes} classes cannot merge into {self.num_classes}")
        self.pixels += other.pixels
        self.equal_pixels += other.equal_pixels
        self.inter = self.inter + other.inter
        self.union = self.union + other.union
        self.samples += other.samples
        self.top1_equal += other.top1_equal
        self.raw_count += other.raw_count
        self.raw_max = max(self.raw_max, other.raw_max)
        for part in other.raw_parts:
            self._add_raw(part)
        self.raw_parts.extend(other.raw_parts)
        self.raw_compared = self.raw_compared and other.raw_compared

    def result(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        if self.pixels:
            out["pixel_agreement"] = self.equal_pixels / self.pixels
            if self.num_classes:
                with np.errstate(divide="ignore", invalid="ignore"):
                    iou = self.inter / self.union
                out["miou_vs_reference"] = float(np.nanmean(iou)) if np.isfinite(iou).any() else None
        if self.samples:
            out["top1_agreement"] = self.top1_equal / self.samples
        if self.raw_compared and self.raw_count:
            out["max_abs_error"] = self.raw_max
            out["mean_abs_error"] = self.raw_sum / self.raw_count
            if self.norm_a == 0.0 and self.norm_b == 0.0:
                out["cosine_similarity"] = 1.0
            elif self.norm_a == 0.0 or self.norm_b == 0.0:
                out["cosine_similarity"] = 0.0
            else:
                out["cosine_similarity"] = self.dot / math.sqrt(self.norm_a * self.norm_b)
        return out
