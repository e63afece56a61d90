"""Resizes that reproduce the upstream tools' arithmetic in numpy (no cv2, no torch at run time).

- `resize_linear`: half-pixel bilinear without antialiasing, source coordinate clamped at 0 and the
  last pixel repeated. This is `F.interpolate(mode='bilinear', align_corners=False)` and cv2's
  ``INTER_LINEAR`` (float images exactly; uint8 images within one grey level, since cv2 uses 11-bit
  fixed-point weights for uint8 and this computes in float and rounds).
- `resize_nearest`: ``src = floor(dst * in/out)`` with a float32 scale, which is `F.interpolate(mode=
  'nearest')` and cv2's ``INTER_NEAREST`` (the asymmetric, non-centred nearest both use).

Both work on any array whose spatial axes are given (default: the first two, i.e. HxW or HxWxC).
"""

from __future__ import annotations

import numpy as np


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scale = n_in / n_out
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (src - i0).astype(np.float32)
    return i0, i1, w1


def _lerp_axis(x: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    n_in = x.shape[axis]
    if n_in == n_out:
        return x
    i0, i1, w1 = _linear_taps(n_in, n_out)
    shape = [1] * x.ndim
    shape[axis] = n_out
    w1 = w1.reshape(shape)
    a = np.take(x, i0, axis=axis)
    b = np.take(x, i1, axis=axis)
    return a + (b - a) * w1


def resize_linear(x: np.ndarray, size: tuple[int, int], axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Bilinear (half-pixel, no antialias) resize of spatial `axes` to `size` = (H, W).

    Floats come back as float32; uint8 input is rounded and saturated back to uint8, like cv2.
    """
    out_h, out_w = int(size[0]), int(size[1])
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"resize to an empty size {size}")
    is_u8 = x.dtype == np.uint8
    if x.shape[axes[0]] == out_h and x.shape[axes[1]] == out_w:
        return x.copy() if is_u8 else x.astype(np.float32, copy=False)
    y = x.astype(np.float32, copy=False)
    # the axis that shrinks the data most goes first, to keep the intermediate small
    if out_h * x.shape[axes[1]] <= x.shape[axes[0]] * out_w:
        y = _lerp_axis(_lerp_axis(y, axes[0], out_h), axes[1], out_w)
    else:
        y = _lerp_axis(_lerp_axis(y, axes[1], out_w), axes[0], out_h)
    if is_u8:
        return np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return y


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """floor(dst * (in/out)) with the scale in float32, clipped to the last index (torch/cv2 nearest)."""
    if n_in == n_out:
        return np.arange(n_out)
    scale = np.float32(n_in / n_out)
    idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def resize_nearest(x: np.ndarray, size: tuple[int, int], axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Nearest resize of spatial `axes` to `size` = (H, W); keeps the dtype (labels stay labels)."""
    out_h, out_w = int(size[0]), int(size[1])
    if x.shape[axes[0]] == out_h and x.shape[axes[1]] == out_w:
        return x
    y = np.take(x, nearest_indices(x.shape[axes[0]], out_h), axis=axes[0])
    return np.take(y, nearest_indices(x.shape[axes[1]], out_w), axis=axes[1])
