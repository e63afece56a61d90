"""Adaptive average pooling at known static sizes, in forms every exporter and backend handles.

PyTorch's adaptive pooling window i over an axis of length ``n`` pooled to ``m`` is
``[floor(i*n/m), ceil((i+1)*n/m))`` (the arithmetic lives in `onnxforge.pooling`, shared with the
adaptive-pool pass; this module wraps it for PyTorch and raises FrontendError for bad sizes). The TorchScript exporter refuses it unless ``n % m == 0``, and atc
runs huge AveragePool kernels on the AICPU. Once the input size is known the same result is:

- ``m == 1``: a global mean (exported as GlobalAveragePool);
- regular windows on both axes (always when ``n % m == 0``; sometimes otherwise, e.g. 63 -> 2):
  one ``AvgPool2d`` (AveragePool) with the emulation's kernel and stride below;
- otherwise the separable averaging-matrix form ``A_h @ x @ A_w^T`` where row i of ``A`` holds
  ``1/len(window i)`` over window i (two MatMuls with constant weights). This is exact up to float
  summation order.

The seeds' export workaround (mmcv's ONNX symbolic, Fast-SCNN's ``module.patch``) is a single
``AvgPool2d(kernel = n-(m-1)*floor(n/m), stride = floor(n/m))``. It equals adaptive pooling only where
the windows coincide; ``EmulatedAdaptiveAvgPool2d`` reproduces it for the ``guide`` variants.

``swap_adaptive_pools(model, example)`` runs one forward with hooks to learn each pool's input size and
replaces every AdaptiveAvgPool2d (exactly) and every EmulatedAdaptiveAvgPool2d (by its fixed AvgPool2d).
The constant matrices are non-persistent buffers, so the model's state_dict is unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from onnxforge import pooling
from onnxforge.errors import FrontendError

logger = logging.getLogger(__name__)

Form = Literal["global", "avgpool", "matrix"]


def adaptive_windows(n: int, m: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling windows ``[start, end)`` for an axis of length n pooled to m."""
    _check_sizes(n, m)
    return pooling.adaptive_windows(n, m)


def emulated_kernel_stride(n: int, m: int) -> tuple[int, int]:
    """(kernel, stride) of the mmcv / Fast-SCNN guide emulation: k = n-(m-1)*floor(n/m), s = floor(n/m)."""
    _check_sizes(n, m)
    if not pooling.can_emulate(n, m):
        raise FrontendError(
            f"the AvgPool emulation of adaptive pooling cannot pool {n} -> {m} (stride would be 0); "
            "use a larger input size or the upstream variant"
        )
    return pooling.emulated_kernel_stride(n, m)


def emulated_windows(n: int, m: int) -> list[tuple[int, int]]:
    """The windows ``[start, end)`` the emulation's AvgPool2d covers."""
    k, s = emulated_kernel_stride(n, m)
    return pooling.windows_of(k, s, m)


def emulation_is_exact(n: int, m: int) -> bool:
    """Whether the emulation's windows equal adaptive pooling's for one axis."""
    emulated_kernel_stride(n, m)  # raises where the emulation does not exist
    return pooling.emulation_is_exact(n, m)


def averaging_matrix(n: int, m: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (m, n) matrix whose row i averages adaptive window i: ``pooled = A @ x`` along one axis."""
    _check_sizes(n, m)
    return torch.from_numpy(pooling.averaging_matrix(n, m, np.float64)).to(dtype)


def _check_sizes(n: int, m: int) -> None:
    if n < 1 or m < 1:
        raise FrontendError(f"adaptive pooling needs positive sizes, got input {n} -> output {m}")
    if m > n:
        # PyTorch allows it (overlapping single-pixel windows); the emulation does not (stride 0).
        logger.debug("adaptive pooling upsamples %d -> %d", n, m)


class StaticAdaptiveAvgPool2d(nn.Module):
    """Exact AdaptiveAvgPool2d for one fixed input size (H, W) -> (oh, ow), in an export-friendly form.

    Contract: for inputs of spatial size `in_size`, output equals ``F.adaptive_avg_pool2d(x, out_size)``
    to float tolerance; other sizes raise. Holds no state_dict entries.
    """

    def __init__(self, in_size: tuple[int, int], out_size: tuple[int, int]) -> None:
        super().__init__()
        self.in_size = (int(in_size[0]), int(in_size[1]))
        self.out_size = (int(out_size[0]), int(out_size[1]))
        (h, w), (oh, ow) = self.in_size, self.out_size
        self.form: Form
        regular_h, regular_w = pooling.regular_kernel_stride(h, oh), pooling.regular_kernel_stride(w, ow)
        if (oh, ow) == (1, 1):
            self.form = "global"
        elif regular_h is not None and regular_w is not None:
            # Regular windows (always when n % m == 0, sometimes otherwise, e.g. 63 -> 2): one AveragePool.
            self.form = "avgpool"
            (kh, sh), (kw, sw) = regular_h, regular_w
            self.kernel, self.stride = (kh, kw), (sh, sw)
        else:
            self.form = "matrix"
            self.register_buffer("pool_h", averaging_matrix(h, oh), persistent=False)
            self.register_buffer("pool_w_t", averaging_matrix(w, ow).t().contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and tuple(x.shape[-2:]) != self.in_size:
            raise FrontendError(
                f"pool was fixed for input {self.in_size[0]}x{self.in_size[1]}, got {x.shape[-2]}x{x.shape[-1]}"
            )
        if self.form == "global":
            return F.adaptive_avg_pool2d(x, 1)  # exported as GlobalAveragePool
        if self.form == "avgpool":
            return F.avg_pool2d(x, kernel_size=self.kernel, stride=self.stride)
        return torch.matmul(torch.matmul(self.pool_h, x), self.pool_w_t)

    def extra_repr(self) -> str:
        return f"in_size={self.in_size}, out_size={self.out_size}, form={self.form}"


class EmulatedAdaptiveAvgPool2d(nn.Module):
    """The seeds' adaptive-pool emulation: AvgPool2d(k=n-(m-1)*floor(n/m), s=floor(n/m)) per axis.

    The kernel is computed from the input size at each call (as mmcv's symbolic and Fast-SCNN's
    module.patch do at export time). Not equal to adaptive pooling where the windows differ.
    """

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        self.output_size = _pair(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, sh), (kw, sw) = (
            emulated_kernel_stride(int(x.shape[-2]), self.output_size[0]),
            emulated_kernel_stride(int(x.shape[-1]), self.output_size[1]),
        )
        return F.avg_pool2d(x, kernel_size=(kh, kw), stride=(sh, sw))

    def fixed(self, in_size: tuple[int, int]) -> nn.AvgPool2d:
        """The static AvgPool2d this emulation is for inputs of spatial size `in_size`."""
        (kh, sh), (kw, sw) = (
            emulated_kernel_stride(in_size[0], self.output_size[0]),
            emulated_kernel_stride(in_size[1], self.output_size[1]),
        )
        return nn.AvgPool2d(kernel_size=(kh, kw), stride=(sh, sw))

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


@dataclass(frozen=True)
class PoolSwap:
    """One replaced pooling module."""

    name: str  # qualified module name in the model
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    form: str  # global | avgpool | matrix | emulated
    exact: bool  # numerically equal to PyTorch's adaptive pooling

    def __str__(self) -> str:
        return (
            f"{self.name}: {self.in_size[0]}x{self.in_size[1]} -> {self.out_size[0]}x{self.out_size[1]} "
            f"as {self.form}{'' if self.exact else ' (not exact)'}"
        )


def swap_adaptive_pools(model: nn.Module, example_input: torch.Tensor | tuple[torch.Tensor, ...]) -> list[PoolSwap]:
    """Replaces adaptive pools in `model` (in place) by static forms fixed at the sizes `example_input` gives.

    AdaptiveAvgPool2d becomes StaticAdaptiveAvgPool2d (exact); EmulatedAdaptiveAvgPool2d becomes its
    fixed AvgPool2d (the guide's numerics, unchanged). Pools not reached by the forward are left alone.
    The model's state_dict keys are unchanged.

    Raises:
        FrontendError: a pool module is called with two different input sizes (it cannot be fixed).
    """
    targets = {
        name: mod
        for name, mod in model.named_modules()
        if isinstance(mod, (nn.AdaptiveAvgPool2d, EmulatedAdaptiveAvgPool2d))
    }
    if not targets:
        return []
    seen: dict[str, tuple[int, int]] = {}

    def make_hook(name: str):
        def hook(_mod: nn.Module, args: tuple) -> None:
            size = (int(args[0].shape[-2]), int(args[0].shape[-1]))
            if seen.setdefault(name, size) != size:
                raise FrontendError(
                    f"{name} is called with input sizes {seen[name]} and {size}; a static pool needs one size"
                )

        return hook

    handles = [mod.register_forward_pre_hook(make_hook(name)) for name, mod in targets.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*example_input) if isinstance(example_input, tuple) else model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    swaps = []
    for name, mod in targets.items():
        if name not in seen:
            logger.debug("%s not reached by the forward; left as is", name)
            continue
        in_size = seen[name]
        if isinstance(mod, EmulatedAdaptiveAvgPool2d):
            out_size = mod.output_size
            new: nn.Module = mod.fixed(in_size)
            exact = emulation_is_exact(in_size[0], out_size[0]) and emulation_is_exact(in_size[1], out_size[1])
            form = "emulated"
        else:
            out_size = _resolve_output(mod.output_size, in_size)
            new = StaticAdaptiveAvgPool2d(in_size, out_size)
            exact, form = True, new.form
        _set_submodule(model, name, new)
        swaps.append(PoolSwap(name, in_size, out_size, form, exact))
        logger.debug("swapped %s", swaps[-1])
    return swaps


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))


def _resolve_output(output_size, in_size: tuple[int, int]) -> tuple[int, int]:
    if isinstance(output_size, int):
        return (output_size, output_size)
    oh, ow = output_size
    return (in_size[0] if oh is None else int(oh), in_size[1] if ow is None else int(ow))


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def describe_windows(n: int, m: int) -> str:
    """'[0,11) [10,22) [21,32)': a readable list of adaptive windows (for messages and docs)."""
    _check_sizes(n, m)
    return pooling.describe_windows(n, m)


__all__ = [
    "EmulatedAdaptiveAvgPool2d",
    "PoolSwap",
    "StaticAdaptiveAvgPool2d",
    "adaptive_windows",
    "averaging_matrix",
    "describe_windows",
    "emulated_kernel_stride",
    "emulated_windows",
    "emulation_is_exact",
    "swap_adaptive_pools",
]
