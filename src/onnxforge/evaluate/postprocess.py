"""Turns whatever a model returns into the prediction a metric scores, in the metric's space.

Accepted output forms (the first graph output is the prediction; the others, e.g. aux heads, are
ignored):
- float logits (N, C, h, w), float32 or float16, at the input resolution or reduced: upsampled
  bilinear (align_corners=False, as mmseg, densetorch and the guides do) to the target size, then argmax;
- integer label maps (N, 1, h, w) or (N, h, w), including mmseg's export quirk (1, N, h, w) for N > 1:
  resized nearest;
- binary heads (N, 1, h, w) logits: upsampled bilinear, then ``> threshold``;
- classification logits (N, C) or (N, C, 1, 1): the row itself.

An image padded to a gear (`preprocess.prepare_gear`, ``Geometry.pad`` with the original metric space)
is predicted at the gear's size and its own region cropped back out before scoring.

For ``keep-ratio-pad`` the label map at the canvas size is cropped and resized back exactly as the
PSPNet guide's ``postprocess_mask`` did: pads recomputed from the float scale, the crop
``[top : H - top, left : W - left]`` (one row/column too many when the padding was odd, as in the
guide), then torch-style nearest resize to the original size.
"""

from __future__ import annotations

import numpy as np

from onnxforge.errors import EvaluationError
from onnxforge.evaluate.imageops import resize_linear, resize_nearest
from onnxforge.evaluate.preprocess import Geometry

#: rows processed at once when upsampling logits, to bound memory on large label maps
_ROW_BLOCK = 256


def split_batch(output: np.ndarray, batch: int) -> np.ndarray:
    """The first output reshaped so that axis 0 is the batch (handles the (1, N, H, W) label quirk)."""
    out = np.asarray(output)
    if out.dtype.kind in "iub" and out.ndim == 4 and batch > 1 and out.shape[0] == 1 and out.shape[1] == batch:
        return out[0]
    if out.ndim == 0 or out.shape[0] != batch:
        raise EvaluationError(f"model output has shape {out.shape}; expected the batch ({batch}) on axis 0")
    return out


def argmax0(x: np.ndarray) -> np.ndarray:
    """np.argmax(x, axis=0) as int32 (first index wins ties), by a running max over the class planes.

    Faster than numpy's strided argmax over a leading axis and it allocates only two planes.
    """
    best = x[0].copy()
    idx = np.zeros(x.shape[1:], dtype=np.int32)
    for c in range(1, x.shape[0]):
        better = x[c] > best
        idx[better] = c
        np.maximum(best, x[c], out=best)
    return idx


def upsample_argmax(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """argmax over axis 0 of (C, h, w) logits after bilinear upsampling to `size`; memory bounded by row blocks."""
    c, h, w = logits.shape
    oh, ow = size
    x = logits.astype(np.float32, copy=False)
    if (h, w) == (oh, ow):
        return argmax0(x)
    x = resize_linear(x, (h, ow), axes=(1, 2)) if w != ow else x
    if h == oh:
        return argmax0(x)
    from onnxforge.evaluate.imageops import _linear_taps

    i0, i1, w1 = _linear_taps(h, oh)
    out = np.empty((oh, ow), dtype=np.int32)
    for start in range(0, oh, _ROW_BLOCK):
        sl = slice(start, min(start + _ROW_BLOCK, oh))
        a = np.take(x, i0[sl], axis=1)
        b = np.take(x, i1[sl], axis=1)
        b -= a  # in place: a + (b - a) * w without further temporaries
        b *= w1[sl][None, :, None]
        a += b
        out[sl] = argmax0(a)
    return out


def label_map(raw: np.ndarray, size: tuple[int, int], num_classes: int) -> np.ndarray:
    """One sample's raw prediction -> an HxW label map at `size`."""
    r = np.asarray(raw)
    if r.ndim == 3 and r.shape[0] > 1 and r.dtype.kind == "f":
        return upsample_argmax(r, size)
    if r.ndim == 3 and r.shape[0] == 1:
        r = r[0]
    if r.ndim != 2:
        raise EvaluationError(f"cannot read a segmentation prediction from an output of shape {np.asarray(raw).shape}")
    if r.dtype.kind == "f":
        if num_classes == 1:
            raise EvaluationError("a single-channel float output is a binary logit map, not class labels")
        r = np.rint(r).astype(np.int64)
    return resize_nearest(r.astype(np.int64, copy=False), size)


def binary_map(raw: np.ndarray, size: tuple[int, int], threshold: float) -> np.ndarray:
    """One sample's raw binary-head output -> an HxW 0/1 map at `size` (logit > threshold)."""
    r = np.asarray(raw)
    while r.ndim > 2 and r.shape[0] == 1:
        r = r[0]
    if r.ndim != 2:
        raise EvaluationError(f"a binary-segmentation output must be (N, 1, H, W) or (N, H, W), got per-sample {np.asarray(raw).shape}")
    if r.dtype.kind in "iub":
        return resize_nearest((r > 0).astype(np.uint8), size)
    r = r.astype(np.float32, copy=False)
    if r.shape != tuple(size):
        r = resize_linear(r, size)
    return (r > threshold).astype(np.uint8)


def classification_logits(raw: np.ndarray) -> np.ndarray:
    r = np.asarray(raw)
    if r.ndim == 3 and r.shape[1:] == (1, 1):
        r = r[:, 0, 0]
    if r.ndim != 1:
        raise EvaluationError(f"a classification output must be (N, C) logits, got per-sample shape {r.shape}")
    return r.astype(np.float32, copy=False)


def guide_uncrop(canvas_labels: np.ndarray, geometry: Geometry) -> np.ndarray:
    """PSPNet guide's postprocess_mask: crop the centred pad (float-scale pads) and resize nearest to the original."""
    ch, cw = geometry.canvas
    h, w = geometry.original
    scale = min(cw / w, ch / h)
    pad_left = max(int((cw - w * scale) // 2), 0)
    pad_top = max(int((ch - h * scale) // 2), 0)
    crop = canvas_labels[pad_top:ch - pad_top, pad_left:cw - pad_left]
    return resize_nearest(crop, (h, w))


def prediction_for(raw: np.ndarray, geometry: Geometry, task: str, num_classes: int, target_shape: tuple[int, ...] | None,
                   threshold: float = 0.0) -> np.ndarray:
    """One sample's raw first-output slice -> what the metric scores (label map, binary map or logits)."""
    if task == "classification":
        return classification_logits(raw)
    if geometry.metric_space == "original" and geometry.policy == "keep-ratio-pad":
        canvas = geometry.canvas
        if task == "binary-segmentation":
            return guide_uncrop(binary_map(raw, canvas, threshold), geometry)
        return guide_uncrop(label_map(raw, canvas, num_classes), geometry)
    size = tuple(target_shape[:2]) if target_shape is not None else geometry.canvas
    if geometry.metric_space == "original" and any(geometry.pad):  # padded to a gear: crop the image back out
        top, left = geometry.pad[0], geometry.pad[1]
        rh, rw = geometry.resized
        full = binary_map(raw, geometry.canvas, threshold) if task == "binary-segmentation" else label_map(raw, geometry.canvas, num_classes)
        crop = full[top:top + rh, left:left + rw]
        return crop if crop.shape == size else resize_nearest(crop, size)
    if task == "binary-segmentation":
        return binary_map(raw, size, threshold)
    return label_map(raw, size, num_classes)
