"""Adaptive average pooling windows: the one place their arithmetic is written (standard library + numpy).

PyTorch's adaptive pooling window i over an axis of length ``n`` pooled to ``m`` is
``[floor(i*n/m), ceil((i+1)*n/m))``. Where ``m > n`` (pooling "up") windows overlap and repeat.

- The windows are **regular** when they all have one length ``k`` and start ``s`` apart: then one
  AveragePool(k, s) computes them (always when ``m`` divides ``n``; sometimes otherwise, 63 -> 2).
- The **emulation** mmcv's ONNX symbolic and the Fast-SCNN guide use is the single AveragePool
  ``k = n-(m-1)*floor(n/m), s = floor(n/m)``; it exists only for ``m <= n`` and equals adaptive pooling
  exactly where the windows are regular.
- The **averaging matrix** ``A`` (m x n) has row i equal to ``1/len(window i)`` over window i, so pooling
  one axis is ``A @ x``; it is exact for every n and m (up to float summation order).

Used by `onnxforge.frontends.adaptive` (PyTorch module swaps) and `onnxforge.passes.adaptive_pool`
(graph rewrites); depends on nothing else in onnxforge.
"""

from __future__ import annotations

import numpy as np


def _check(n: int, m: int) -> None:
    if n < 1 or m < 1:
        raise ValueError(f"adaptive pooling needs positive sizes, got input {n} -> output {m}")


def adaptive_windows(n: int, m: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling windows ``[start, end)`` for an axis of length n pooled to m.

    Raises:
        ValueError: n or m is not positive.
    """
    _check(n, m)
    return [((i * n) // m, -((-(i + 1) * n) // m)) for i in range(m)]


def windows_of(k: int, s: int, m: int) -> list[tuple[int, int]]:
    """The m windows ``[start, end)`` an unpadded AveragePool with kernel k and stride s covers."""
    return [(i * s, i * s + k) for i in range(m)]


def is_adaptive(n: int, m: int, k: int, s: int) -> bool:
    """Whether an unpadded AveragePool of kernel k and stride s over n computes adaptive pooling to m."""
    if m == 1:
        return k == n
    return windows_of(k, s, m) == adaptive_windows(n, m)


def can_emulate(n: int, m: int) -> bool:
    """Whether the emulation's AveragePool exists for n -> m (its stride floor(n/m) must be >= 1)."""
    _check(n, m)
    return m <= n


def emulated_kernel_stride(n: int, m: int) -> tuple[int, int]:
    """(kernel, stride) of the mmcv / Fast-SCNN guide emulation: k = n-(m-1)*floor(n/m), s = floor(n/m).

    Raises:
        ValueError: n or m is not positive, or m > n (the stride would be 0; see `can_emulate`).
    """
    if not can_emulate(n, m):
        raise ValueError(f"the AvgPool emulation of adaptive pooling cannot pool {n} -> {m} (stride would be 0)")
    stride = n // m
    return n - (m - 1) * stride, stride


def emulated_windows(n: int, m: int) -> list[tuple[int, int]]:
    """The windows ``[start, end)`` the emulation's AveragePool covers (m <= n)."""
    k, s = emulated_kernel_stride(n, m)
    return windows_of(k, s, m)


def emulation_is_exact(n: int, m: int) -> bool:
    """Whether the emulation equals adaptive pooling on one axis (its windows are regular); False for m > n."""
    return can_emulate(n, m) and emulated_windows(n, m) == adaptive_windows(n, m)


def regular_kernel_stride(n: int, m: int) -> tuple[int, int] | None:
    """(kernel, stride) of the one AveragePool that computes adaptive pooling n -> m exactly, else None."""
    return emulated_kernel_stride(n, m) if emulation_is_exact(n, m) else None


def averaging_matrix(n: int, m: int, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """The (m, n) matrix whose row i averages adaptive window i: pooling one axis is ``A @ x``."""
    a = np.zeros((m, n), dtype=np.float64)
    for i, (start, end) in enumerate(adaptive_windows(n, m)):
        a[i, start:end] = 1.0 / (end - start)
    return a.astype(dtype)


def adaptive_avg_pool_reference(x: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """numpy reference of ``F.adaptive_avg_pool2d(x, out_hw)`` over the last two axes, in float64."""
    a_h = averaging_matrix(x.shape[-2], out_hw[0], np.float64)
    a_w = averaging_matrix(x.shape[-1], out_hw[1], np.float64)
    return a_h @ x.astype(np.float64) @ a_w.T


def describe_windows(n: int, m: int) -> str:
    """'[0,11) [10,22) [21,32)': a readable list of adaptive windows (for messages and docs)."""
    return " ".join(f"[{a},{b})" for a, b in adaptive_windows(n, m))
