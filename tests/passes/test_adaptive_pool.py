"""adaptive-pool: structure, numerics and near-misses on real torch exports (dynamo and legacy)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from onnxforge.errors import PipelineError
from onnxforge.passes import PassManager, parse_pipeline
from onnxforge.passes.adaptive_pool import AdaptivePool
from onnxforge.passes.base import PassKind
from onnxforge.pooling import adaptive_avg_pool_reference, adaptive_windows
from tests.passes.helpers import apply, op_counts, outputs, parse
from tests.passes.torch_export import export

# Fast-SCNN's PPM sees 32x64 at 1024x2048; PSPNet's sees 63x63 at 500x500.
SIZES_32x64 = (1, 2, 3, 6)
SIZES_63x63 = (2, 6)  # 1 and 3 divide 63 and are covered by the 32x64 branch forms


def _pools_module():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Pools(nn.Module):
        """Two features (as in Fast-SCNN and PSPNet), adaptive pools to several sizes, a 1x1 conv after each,
        and a channel mean (a ReduceMean that is not pooling)."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.stem = nn.Conv2d(3, 4, 1)
            self.heads = nn.ModuleList(nn.Conv2d(4, 2, 1) for _ in SIZES_32x64 + SIZES_63x63)

        def forward(self, a, b):
            fa, fb = self.stem(a), self.stem(b)
            outs = [head(F.adaptive_avg_pool2d(f, s)) for head, f, s in zip(
                self.heads, [fa] * len(SIZES_32x64) + [fb] * len(SIZES_63x63), SIZES_32x64 + SIZES_63x63
            )]
            outs.append(fa.mean(dim=1, keepdim=True))
            return tuple(outs)

    return Pools()


def _inputs():
    import torch

    return (torch.randn(1, 3, 32, 64), torch.randn(1, 3, 63, 63))


@pytest.fixture(scope="module")
def dynamo_model(tmp_path_factory) -> onnx.ModelProto:
    return export(_pools_module(), _inputs(), tmp_path_factory.mktemp("ap") / "pools.onnx", dynamo=True, input_names=["a", "b"])


@pytest.fixture(scope="module")
def legacy_model(tmp_path_factory) -> onnx.ModelProto:
    """The legacy exporter only exports divisible sizes: GlobalAveragePool and AveragePool."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Divisible(nn.Module):
        def forward(self, x):
            return F.adaptive_avg_pool2d(x, 1), F.adaptive_avg_pool2d(x, (2, 4))

    return export(Divisible(), (torch.randn(1, 4, 32, 64),), tmp_path_factory.mktemp("ap") / "legacy.onnx", dynamo=False)


def _pooled_outputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return outputs(model)


# ------------------------------------------------------------------------------------------ mode=exact


def test_dynamo_export_has_the_decompositions_this_pass_targets(dynamo_model):
    counts = op_counts(dynamo_model)
    # 32x64 -> 3 and -> 6 decompose into hundreds of Gather/Add; 63 -> 2/6 into GatherND + ReduceMean.
    assert counts["Gather"] > 300 and counts["Add"] > 300 and counts["GatherND"] == 4
    assert counts["ReduceMean"] >= 3  # the 1x1 pool, the two 63x63 pools, the channel mean


def test_structure_exact(dynamo_model):
    result, model = apply(AdaptivePool(), dynamo_model)
    assert result.modified
    counts = op_counts(model)
    assert counts == Counter({"Conv": 8, "MatMul": 6, "AveragePool": 2, "GlobalAveragePool": 1, "ReduceMean": 1})
    # 32x64->1 (ReduceMean), 32x64->3, 32x64->6, 63->2, 63->6 rewritten; 32x64->2 was an AveragePool already.
    assert result.stats["regions_rewritten"] == 5
    assert result.stats["already_compact"] == 1
    assert result.stats["nodes_removed"] == len(dynamo_model.graph.node) - len(model.graph.node) + 1 + 2 + 2 + 1 + 2
    assert result.stats["nodes_removed"] > 690
    per_region = " ".join(result.notes)
    assert "32x64 -> 3x3" in per_region and "MatMul x2" in per_region
    assert "63x63 -> 2x2" in per_region and "AveragePool k=32x32 s=31x31 [exact]" in per_region
    # the channel mean is a near-miss, reported with its reason
    reasons = [s.reason for s in result.skipped]
    assert any("reduces axes [1]" in r for r in reasons), reasons
    # graph outputs keep their names
    assert [o.name for o in model.graph.output] == [o.name for o in dynamo_model.graph.output]


def test_idempotent_exact(dynamo_model):
    _, once = apply(AdaptivePool(), dynamo_model)
    again, twice = apply(AdaptivePool(), once)
    assert not again.modified
    assert "already compact" in again.why_nothing() or any("already" in n for n in again.notes)
    assert again.stats["already_compact"] == 6
    assert op_counts(twice) == op_counts(once)


def test_numerics_exact_equal_before_and_after(dynamo_model):
    result = PassManager("adaptive-pool").run(dynamo_model)
    stage = result.stages[0]
    assert stage.kind == "exact" and stage.verification.status == "passed", stage.verification.detail
    before, after = _pooled_outputs(dynamo_model), _pooled_outputs(result.model)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-5, atol=1e-6)


def test_legacy_export_is_already_compact(legacy_model):
    assert sorted(op_counts(legacy_model)) == ["AveragePool", "GlobalAveragePool"]
    result, model = apply(AdaptivePool(), legacy_model)
    assert not result.modified
    assert result.stats == {"already_compact": 2}
    assert "already compact" in result.why_nothing()
    assert op_counts(model) == op_counts(legacy_model)


# ------------------------------------------------------------------------------------------ mode=emulate


def _emulated_reference(x: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """numpy AveragePool with the mmcv/guide kernel and stride."""
    (h, w), (oh, ow) = x.shape[-2:], out_hw
    sh, sw = h // oh, w // ow
    kh, kw = h - (oh - 1) * sh, w - (ow - 1) * sw
    out = np.empty(x.shape[:2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[..., i, j] = x[..., i * sh:i * sh + kh, j * sw:j * sw + kw].mean(axis=(-2, -1))
    return out


POOL_ONLY = """
g (float[1,2,32,64] x) => (float[1,2,3,3] y) {
  y = com.example.AdaptiveAvgPool2d<output_size = [3, 3]>(x)
}"""


def _custom_model() -> onnx.ModelProto:
    model = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>\n' + POOL_ONLY)
    onnx.checker.check_model(model)
    return model


def test_emulate_is_approximate_and_reports_exactness_per_region(dynamo_model):
    p = AdaptivePool(mode="emulate")
    assert p.effective_kind() is PassKind.APPROXIMATE and AdaptivePool().effective_kind() is PassKind.EXACT
    result, model = apply(p, dynamo_model)
    assert result.modified
    # the 32x64->2 AveragePool was there already; four regions became AveragePools, one a GlobalAveragePool
    assert op_counts(model) == Counter({"Conv": 8, "AveragePool": 5, "GlobalAveragePool": 1, "ReduceMean": 1})
    assert len(result.notes) == result.stats["regions_rewritten"] == 5
    text = " | ".join(result.notes)
    assert "32x64 -> 3x3" in text and "AveragePool k=12x22 s=10x21 [emulation differs" in text
    assert "63x63 -> 2x2" in text and "AveragePool k=32x32 s=31x31 [exact]" in text
    assert "63x63 -> 6x6" in text and "AveragePool k=13x13 s=10x10 [emulation differs" in text
    assert result.stats["emulated_inexact"] == 3  # 32x64->3, 32x64->6, 63->6
    again, _ = apply(p, model)
    assert not again.modified


def test_emulate_numerics_equal_the_guide_avgpool():
    model = _custom_model()
    _, emulated = apply(AdaptivePool(mode="emulate"), model)
    x = np.random.default_rng(3).standard_normal((1, 2, 32, 64)).astype(np.float32)
    from onnxforge.numerics import run_model

    got = run_model(emulated, {"x": x})["y"]
    np.testing.assert_allclose(got, _emulated_reference(x, (3, 3)), rtol=1e-5, atol=1e-6)
    # and it is not adaptive pooling here: the documented cost
    assert np.abs(got - adaptive_avg_pool_reference(x, (3, 3))).max() > 1e-3


# ------------------------------------------------------------------------------------------ other forms


def test_custom_node_rewritten_to_exact_matmuls():
    result, model = apply(AdaptivePool(), _custom_model())
    assert result.modified and op_counts(model) == Counter({"MatMul": 2})
    x = np.random.default_rng(4).standard_normal((1, 2, 32, 64)).astype(np.float32)
    from onnxforge.numerics import run_model

    np.testing.assert_allclose(run_model(model, {"x": x})["y"], adaptive_avg_pool_reference(x, (3, 3)), rtol=1e-5, atol=1e-6)
    again, _ = apply(AdaptivePool(), model)
    assert not again.modified and "already compact" in again.why_nothing()


def test_windows_are_pytorchs():
    assert adaptive_windows(32, 3) == [(0, 11), (10, 22), (21, 32)]
    assert adaptive_windows(63, 6)[1] == (10, 21)


# ------------------------------------------------------------------------------------------ pooling up


def _vgg_head_module():
    """A VGG-style classifier head: AdaptiveAvgPool2d((7, 7)) on a 5x5 feature (pooling up), then Linear."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(), nn.Linear(4 * 49, 3))


@pytest.fixture(scope="module")
def pooling_up(tmp_path_factory) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """(dynamo export of the VGG-style head at a 5x5 feature, its input, PyTorch's output)."""
    import torch

    module = _vgg_head_module().eval()
    x = torch.randn(1, 3, 5, 5, generator=torch.Generator().manual_seed(5))
    model = export(module, (x,), tmp_path_factory.mktemp("ap_up") / "vgg_head.onnx", dynamo=True, input_names=["x"])
    with torch.no_grad():
        expected = module(x).numpy()
    return model, x.numpy(), expected


def test_pooling_up_dynamo_decomposition_becomes_exact_matmuls(pooling_up):
    model, x, expected = pooling_up
    assert {"Gather", "GatherND", "Where", "Add", "Div"} <= set(op_counts(model))  # the exporter's decomposition
    result, out = apply(AdaptivePool(), model)
    assert result.modified and result.stats["regions_rewritten"] == 1
    assert op_counts(out) == Counter({"Conv": 1, "MatMul": 2, "Reshape": 1, "Gemm": 1})
    assert "5x5 -> 7x7" in result.notes[0] and "pooling up" in result.notes[0]
    onnx.checker.check_model(out, full_check=True)
    from onnxforge.numerics import run_model

    got = next(iter(run_model(out, {"x": x}).values()))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    again, _ = apply(AdaptivePool(), out)
    assert not again.modified and "already compact" in again.why_nothing()


def test_pooling_up_is_verified_exact_by_the_manager_and_emulate_writes_the_exact_form(pooling_up):
    model, _, _ = pooling_up
    stage = PassManager("adaptive-pool").run(model).stages[0]
    assert stage.verification.status == "passed", stage.verification.detail
    # no AveragePool exists for 5 -> 7 (its stride would be 0): emulate writes the exact form as well
    result, out = apply(AdaptivePool(mode="emulate"), model)
    assert result.stats["emulated_inexact"] == 0 and "[emulation differs" not in result.notes[0]
    assert op_counts(out)["MatMul"] == 2 and "AveragePool" not in op_counts(out)


# ------------------------------------------------------------------------------------------ near-misses

NOT_POOLING = """
g (float[1,2,4,4] x) => (float[1,2,2,2] y) {
  lo = Constant<value = int64[2] {0, 0}>()
  mid = Constant<value = int64[2] {2, 2}>()
  hi = Constant<value = int64[2] {4, 4}>()
  axes = Constant<value = int64[2] {2, 3}>()
  a = Slice(x, lo, mid, axes)
  b = Slice(x, mid, hi, axes)
  s = Add(a, b)
  two = Constant<value = float {2.0}>()
  y = Div(s, two)
}"""


def test_near_miss_slice_add_chain_is_not_pooling():
    model = parse(NOT_POOLING)
    result, after = apply(AdaptivePool(), model)
    assert not result.modified
    assert op_counts(after) == op_counts(model)
    assert len(result.skipped) == 1 and "is not adaptive average pooling" in result.skipped[0].reason


def test_near_miss_perturbed_dynamo_chain_untouched(dynamo_model):
    """A real Gather chain whose divisor is off is not pooling: confirmation fails, nothing changes."""
    broken = onnx.ModelProto()
    broken.CopyFrom(dynamo_model)
    divs = [n for n in broken.graph.node if n.op_type == "Div"]
    inits = {t.name: t for t in broken.graph.initializer}
    for div in divs:
        t = inits[div.input[1]]
        value = onnx.numpy_helper.to_array(t) * 1.5
        t.CopyFrom(onnx.numpy_helper.from_array(value.astype(np.float32), t.name))
    result, after = apply(AdaptivePool(), broken)
    gather_skips = [s for s in result.skipped if "Gather" in s.reason or "pooling-like" in s.reason]
    assert len(gather_skips) == 2, result.skipped
    assert all("differs from adaptive pooling" in s.reason for s in gather_skips)
    assert op_counts(after)["Gather"] == op_counts(broken)["Gather"]
    assert op_counts(after)["Div"] == 2


def test_bad_mode_is_a_pipeline_error():
    with pytest.raises(PipelineError, match="expected one of exact, emulate"):
        parse_pipeline("adaptive-pool{mode=fast}")
    assert str(parse_pipeline("adaptive-pool{mode=emulate}")) == "adaptive-pool{mode=emulate}"


def test_manager_runs_a_model_onnxruntime_cannot_load_until_the_pass_rewrites_it():
    """The input has a custom op: the verifier checks structure only, and numerics from the next stage on."""
    result = PassManager("adaptive-pool,adaptive-pool{mode=emulate}").run(_custom_model())
    first, second = result.stages
    assert first.verification.status == "structural" and "numeric check off" in first.verification.detail
    assert second.verification.status == "measured"
    assert op_counts(result.model) == Counter({"AveragePool": 1})
