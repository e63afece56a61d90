"""Static adaptive pooling: windows, exactness against nn.AdaptiveAvgPool2d, the seeds' emulation, the swap."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from onnxforge.errors import FrontendError
from onnxforge.frontends.adaptive import (
    EmulatedAdaptiveAvgPool2d,
    StaticAdaptiveAvgPool2d,
    adaptive_windows,
    averaging_matrix,
    emulated_kernel_stride,
    emulated_windows,
    emulation_is_exact,
    swap_adaptive_pools,
)
from onnxforge.numerics import run_model


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def test_windows_match_the_reference_example():
    # fastscnn.md: in=32, out=3
    assert adaptive_windows(32, 3) == [(0, 11), (10, 22), (21, 32)]
    assert emulated_windows(32, 3) == [(0, 12), (10, 22), (20, 32)]
    assert emulated_kernel_stride(32, 3) == (12, 10)


@pytest.mark.parametrize(
    ("n", "m", "same"),
    [(63, 2, True), (63, 3, True), (63, 6, False), (64, 3, True), (64, 6, False), (16, 3, True), (16, 6, False),
     (32, 6, False), (64, 2, True), (8, 1, True)],
)
def test_emulation_exactness_table(n, m, same):
    # pspnet.md's table of where mmcv's AveragePool emulation equals adaptive pooling
    assert emulation_is_exact(n, m) is same


def test_averaging_matrix_rows_average_their_windows():
    a = averaging_matrix(7, 3)
    assert a.shape == (3, 7)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(3))
    for i, (start, end) in enumerate(adaptive_windows(7, 3)):
        assert torch.count_nonzero(a[i]) == end - start


@pytest.mark.parametrize("size", [(32, 64), (63, 63)])
@pytest.mark.parametrize("out", [1, 2, 3, 6])
def test_static_pool_equals_adaptive(size, out):
    x = _x(2, 4, *size)
    pool = StaticAdaptiveAvgPool2d(size, (out, out))
    torch.testing.assert_close(pool(x), nn.AdaptiveAvgPool2d(out)(x), rtol=1e-5, atol=1e-6)
    assert pool.state_dict() == {}  # constant matrices are not weights


def test_static_pool_forms():
    assert StaticAdaptiveAvgPool2d((32, 64), (1, 1)).form == "global"
    assert StaticAdaptiveAvgPool2d((32, 64), (2, 2)).form == "avgpool"
    assert StaticAdaptiveAvgPool2d((63, 63), (2, 2)).form == "avgpool"  # regular windows though 63 % 2 != 0
    assert StaticAdaptiveAvgPool2d((32, 64), (3, 3)).form == "matrix"
    assert StaticAdaptiveAvgPool2d((4, 8), (6, 6)).form == "matrix"  # upsampling adaptive pool


def test_static_pool_refuses_other_sizes():
    with pytest.raises(FrontendError, match="fixed for input 8x8"):
        StaticAdaptiveAvgPool2d((8, 8), (3, 3))(_x(1, 1, 9, 9))


def test_emulated_pool_is_the_guide_avgpool():
    x = _x(1, 3, 32, 64)
    got = EmulatedAdaptiveAvgPool2d(3)(x)
    ref = nn.AvgPool2d(kernel_size=(12, 22), stride=(10, 21))(x)  # 32: k12 s10; 64: k22 s21
    torch.testing.assert_close(got, ref)
    assert not torch.allclose(got, nn.AdaptiveAvgPool2d(3)(x))


def test_emulation_refuses_pooling_up():
    with pytest.raises(FrontendError, match="cannot pool 4 -> 6"):
        EmulatedAdaptiveAvgPool2d(6)(_x(1, 1, 4, 8))


class _PPM(nn.Module):
    def __init__(self, emulate: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        pool = EmulatedAdaptiveAvgPool2d if emulate else nn.AdaptiveAvgPool2d
        self.pools = nn.ModuleList([pool(s) for s in (1, 2, 3, 6)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.cat([p(y).flatten(1) for p in self.pools], dim=1)


def test_swap_keeps_outputs_and_state_dict():
    torch.manual_seed(0)
    model = _PPM().eval()
    x = _x(1, 3, 63, 63)
    with torch.no_grad():
        ref = model(x)
    keys = list(model.state_dict())
    swaps = swap_adaptive_pools(model, x)
    assert [s.form for s in swaps] == ["global", "avgpool", "avgpool", "matrix"]
    assert all(s.exact for s in swaps)
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in model.modules())
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-6)


def test_swap_of_the_emulation_fixes_its_avgpool():
    torch.manual_seed(0)
    model = _PPM(emulate=True).eval()
    x = _x(1, 3, 32, 64)
    with torch.no_grad():
        ref = model(x)
    swaps = swap_adaptive_pools(model, x)
    assert [(s.form, s.exact) for s in swaps] == [("emulated", True), ("emulated", True), ("emulated", False), ("emulated", False)]
    assert isinstance(model.pools[2], nn.AvgPool2d) and model.pools[2].kernel_size == (12, 22)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref)


def test_swap_refuses_a_pool_used_at_two_sizes():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(3)

        def forward(self, x):
            return self.pool(x).sum() + self.pool(x[..., :-1, :-1]).sum()

    with pytest.raises(FrontendError, match="input sizes"):
        swap_adaptive_pools(Twice(), _x(1, 1, 10, 10))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter announces its own deprecation
@pytest.mark.parametrize("size", [(32, 64), (63, 63)])
def test_swapped_model_exports_compactly_and_matches_in_onnxruntime(size):
    torch.manual_seed(0)
    model = _PPM().eval()
    x = _x(1, 3, *size)
    with torch.no_grad():
        ref = model(x).numpy()
    swap_adaptive_pools(model, x)
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, input_names=["input"], output_names=["output"], opset_version=17, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("GlobalAveragePool") == 1
    assert not any(op in ops for op in ("GatherND", "ReduceMean", "Loop"))
    got = run_model(proto, {"input": x.numpy()})["output"]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
