"""target-opset: a real torch dynamo export (opset 20) down to 11 and back up; near-misses and refusals."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxforge.errors import PassError, PipelineError
from onnxforge.numerics import run_model
from onnxforge.passes import PassManager, parse_pipeline
from onnxforge.passes.target_opset import TargetOpset
from tests.passes.helpers import apply, op_counts, ops, outputs, parse
from tests.passes.torch_export import export

ZOO_OUTPUTS = ("hardswish", "means", "split", "squeeze", "up_ac", "up_hp", "pool", "softmax", "misc", "pad")


def _zoo_module():
    """One tiny module whose outputs cover the ops a dynamo export writes in opset-18+ form."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Zoo(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.ln = nn.LayerNorm(5)

        def forward(self, x):
            a, b = x.chunk(2, dim=1)  # Split<num_outputs=2>
            c, d = torch.split(x, [1, 3], dim=1)  # Split(x, sizes)
            return (
                F.hardswish(x),
                x.mean(dim=(2, 3), keepdim=True) + x.sum(1, keepdim=True) + x.amax(dim=1, keepdim=True),
                torch.cat([a * b, c.expand(-1, 2, -1, -1)], 1) + d[:, :1],
                x[:, :1].squeeze(1).unsqueeze(2),
                F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True),
                F.interpolate(x, size=(7, 9), mode="bilinear", align_corners=False),
                F.adaptive_avg_pool2d(x, (2, 3)),
                torch.softmax(x, dim=1),
                F.gelu(x) + F.mish(x) + self.ln(x) + F.relu6(x) + F.hardsigmoid(x),
                F.pad(x, (1, 2, 0, 1)),
            )

    return Zoo().eval()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> tuple[onnx.ModelProto, dict[str, np.ndarray], np.ndarray]:
    """(dynamo export at opset 20, torch 2.13's default, PyTorch outputs, the input they were computed on)."""
    import torch

    module = _zoo_module()
    x = np.random.default_rng(0).standard_normal((1, 4, 4, 5)).astype(np.float32)
    names = [f"y_{n}" for n in ZOO_OUTPUTS]
    model = export(module, (torch.from_numpy(x),), tmp_path_factory.mktemp("target_opset") / "zoo.onnx",
                   dynamo=True, opset=20, input_names=["x"], output_names=names)
    with torch.no_grad():
        expected = {name: t.numpy() for name, t in zip(names, module(torch.from_numpy(x)))}
    return model, expected, x


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


# -- structure ----------------------------------------------------------------------------------------

def test_dynamo_export_is_in_the_forms_this_pass_rewrites(zoo):
    model, _, _ = zoo
    counts = op_counts(model)
    assert _opset(model) >= 18
    assert {"HardSwish", "Gelu", "Mish", "LayerNormalization", "Softmax", "Split", "Squeeze", "Resize"} <= set(counts)
    reduce_mean = next(n for n in model.graph.node if n.op_type == "ReduceMean")
    assert len(reduce_mean.input) == 2  # axes as an input (opset 18)


def test_structure_down_to_11(zoo):
    model, _, _ = zoo
    result, out = apply(TargetOpset(), model)
    assert result.modified
    assert _opset(out) == 11 and out.ir_version == 6
    onnx.checker.check_model(out, full_check=True)
    rewritten = {part.rsplit("x", 1)[0] for part in result.stats["rewritten"].split(", ")}
    assert rewritten == {"Gelu", "HardSwish", "LayerNormalization", "Mish", "ReduceMax", "ReduceMean", "ReduceSum",
                         "Resize", "Softmax", "Split", "Squeeze", "Unsqueeze"}
    assert result.stats["opset"] == f"{_opset(model)}->11"
    counts = op_counts(out)
    assert not {"HardSwish", "Gelu", "Mish", "LayerNormalization"} & set(counts)
    assert counts["HardSigmoid"] == 2  # HardSwish -> x * HardSigmoid(alpha=1/6, beta=1/2), plus the model's own
    nodes = {n.output[0]: n for n in out.graph.node}
    attrs = {n.output[0]: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in out.graph.node}
    for n in out.graph.node:
        a = attrs[n.output[0]]
        if n.op_type.startswith("Reduce") or n.op_type in ("Squeeze", "Unsqueeze"):
            assert len(n.input) == 1 and "axes" in a and "noop_with_empty_axes" not in a, n
        if n.op_type == "Split":
            assert len(n.input) == 1 and "num_outputs" not in a
        if n.op_type == "Resize":
            assert len(n.input) in (3, 4) and n.input[1] and n.input[2]  # roi and scales present (empty tensors)
            assert not {"antialias", "keep_aspect_ratio_policy", "axes"} & set(a)
    splits = sorted(tuple(attrs[n.output[0]].get("split", ())) for n in out.graph.node if n.op_type == "Split")
    assert splits == [(), (1, 3)]  # chunk(2) of 4 is an even split; split([1, 3]) keeps its sizes
    softmax = next(n for n in out.graph.node if n.op_type == "Softmax")
    assert attrs[softmax.output[0]]["axis"] == 3  # opset-11 Softmax flattens from axis: moved last
    assert nodes[softmax.input[0]].op_type == "Transpose"


def test_idempotent(zoo):
    _, once = apply(TargetOpset(), zoo[0])
    again, twice = apply(TargetOpset(), once)
    assert not again.modified and again.why_nothing() == "already at opset 11"
    assert ops(twice) == ops(once)


# -- numerics -----------------------------------------------------------------------------------------

def test_numerics_down_and_up_again_match_the_export_and_pytorch(zoo):
    model, expected, x = zoo
    result = PassManager("target-opset,target-opset{opset=17}").run(model)
    down, up = result.stages
    assert down.verification.status == "passed", down.verification.detail
    assert up.verification.status == "passed", up.verification.detail
    assert up.stats["converter"] == "onnx.version_converter" and _opset(result.model) == 17
    got = run_model(result.model, {"x": x})
    for name, ref in expected.items():
        np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-5, err_msg=name)


def test_opset_11_model_runs_in_onnxruntime_and_matches_pytorch(zoo):
    model, expected, x = zoo
    _, out = apply(TargetOpset(), model)
    got = run_model(out, {"x": x})
    for name, ref in expected.items():
        np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-5, err_msg=name)


TEXT_20 = """
g (float[2,3,4] x, float[2,3,4] z) => (float[2,3,4] y, int64[2] s, bool[2,3,4] ge, float[2,1,3,4] u) {
  s = Shape<start = 1>(x)
  ge = GreaterOrEqual(x, z)
  y = LogSoftmax<axis = 1>(x)
  one = Constant<value_ints = [1]>()
  u = Unsqueeze(x, one)
}"""


def test_shape_start_constant_ints_or_equal_and_log_softmax_rewrites():
    model = parse(TEXT_20, opset=20)
    result = PassManager("target-opset").run(model)
    stage = result.stages[0]
    assert stage.verification.status == "passed", stage.verification.detail
    counts = op_counts(result.model)
    assert counts["Slice"] == 1 and counts["Or"] == 1 and counts["Transpose"] == 2 and "GreaterOrEqual" not in counts
    ref, got = outputs(model), outputs(result.model)
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name]) if ref[name].dtype.kind in "ib" else np.testing.assert_allclose(got[name], ref[name], rtol=1e-6, atol=1e-6)


# -- near-misses and refusals -------------------------------------------------------------------------

def test_near_miss_already_at_target_is_untouched():
    model = parse("""
g (float[1,3,4,4] x) => (float[1,3,4,4] y) {
  y = Softmax<axis = 1>(x)
}""", opset=11)
    result, out = apply(TargetOpset(), model)
    assert not result.modified and "already at opset 11" in result.why_nothing()
    assert ops(out) == ["Softmax"]


def test_near_miss_softmax_on_the_last_axis_needs_no_transpose():
    result, out = apply(TargetOpset(), parse("""
g (float[1,3,4,4] x) => (float[1,3,4,4] y) {
  y = Softmax<axis = -1>(x)
}""", opset=18))
    assert result.modified and ops(out) == ["Softmax"]
    assert onnx.helper.get_attribute_value(out.graph.node[0].attribute[0]) == 3


@pytest.mark.parametrize("body, fragment", [
    ("y = GridSample(x, grid)", "GridSample): does not exist before opset 16"),
    ("y = Resize<antialias = 1, mode = \"linear\">(x, , s)", "antialias=1 arrived in opset 18"),
    ("a = ArgMax<axis = 1, select_last_index = 1>(x)\n  y = Cast<to = 1>(a)", "select_last_index=1 has no equivalent"),
    ("y = ReduceMean(x, ax)", "the axes input is computed at run time"),
])
def test_refuses_what_opset_11_cannot_express_with_one_clear_error(body, fragment):
    model = onnx.parser.parse_model(f"""<ir_version: 9, opset_import: ["" : 20]>
g (float[1,2,4,4] x, float[1,4,4,2] grid, int64[1] ax) => (float[1,2,4,4] y) {{
  s = Constant<value = float[4] {{1, 1, 1, 1}}>()
  {body}
}}""")
    with pytest.raises(PassError, match="cannot convert opset 20 -> 11") as info:
        apply(TargetOpset(), model)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["target-opset{opset=9}", "target-opset{opset=99}"])
def test_option_out_of_range_is_a_pipeline_error(text):
    with pytest.raises(PipelineError, match="'opset' must be between 11 and"):
        parse_pipeline(text)


# -- the converter registry ---------------------------------------------------------------------------

def test_every_converter_handles_real_schema_versions_not_listed_as_type_only():
    from onnxforge.passes.target_opset.registry import _CONVERTERS, history
    from onnxforge.passes.target_opset.rules import TYPE_ONLY

    assert {"Softmax", "Resize", "ReduceMean", "ReduceSum", "Split", "HardSwish"} <= set(_CONVERTERS)
    for op, conv in _CONVERTERS.items():
        assert conv.op == op and conv.versions <= set(history()[op]), op
        assert not conv.versions & TYPE_ONLY.get(op, frozenset()), f"{op}: a version both type-only and converted"
    assert _CONVERTERS["Resize"].versions == {13, 18, 19} and _CONVERTERS["ReduceSum"].versions == {13}
    assert _CONVERTERS["Softmax"].needs_shape and not _CONVERTERS["HardSwish"].needs_shape


def test_converter_registration_refuses_duplicates_and_missing_versions():
    from onnxforge.passes.target_opset.registry import converter

    with pytest.raises(ValueError, match="registered twice"):
        converter("Softmax", changed_in=13)(lambda c, n: False)
    with pytest.raises(ValueError, match="at least one op and one schema version"):
        converter("NotAnOp")


# -- issue 11: graphs the checker rejected after conversion -------------------------------------------

def test_uint8_arithmetic_from_a_dynamo_export_is_computed_wider_and_cast_back(tmp_path):
    """Add/Sub/Mul before opset 14 have no uint8: the pass casts around them, wrap-around included."""
    import torch

    class Bytes(torch.nn.Module):
        def forward(self, x, y):
            return x + y, x * y, x - y, (x.float() * 2).to(torch.uint8) + 1

    x = torch.arange(256, dtype=torch.uint8).reshape(1, 4, 8, 8)
    y = torch.flip(x, dims=[3])
    model = export(Bytes(), (x, y), tmp_path / "bytes.onnx", dynamo=True, opset=20, input_names=["x", "y"])
    result = PassManager("target-opset").run(model)
    stage = result.stages[0]
    assert stage.verification.status == "passed", stage.verification.detail
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    assert stage.stats["rewritten"] == "Addx2, Mulx1, Subx1"
    types = {vi.name: vi.type.tensor_type.elem_type for vi in onnx.shape_inference.infer_shapes(out).graph.value_info}
    types.update({vi.name: vi.type.tensor_type.elem_type for vi in out.graph.input})
    types.update({t.name: t.data_type for t in out.graph.initializer})
    arithmetic = [{types[i] for i in n.input} for n in out.graph.node if n.op_type in ("Add", "Sub", "Mul")]
    assert sorted(map(sorted, arithmetic)) == [[onnx.TensorProto.FLOAT]] + [[onnx.TensorProto.INT32]] * 4
    got = run_model(out, {"x": x.numpy(), "y": y.numpy()})
    with torch.no_grad():
        expected = [t.numpy() for t in Bytes()(x, y)]
    for ref, value in zip(expected, got.values()):
        np.testing.assert_array_equal(value, ref)  # overflowing sums and products wrap as in PyTorch


def test_refuses_an_element_type_the_target_op_lacks_naming_the_node():
    model = onnx.parser.parse_model("""<ir_version: 9, opset_import: ["" : 20]>
g (int8[2,3] x) => (int8[2,3] y) {
  [relu_1] y = Relu(x)
}""")
    with pytest.raises(PassError, match=r"relu_1 \(Relu\): input 'x' is int8, which Relu at opset 11 does not accept"):
        apply(TargetOpset(), model)


def _pools_module():
    import torch
    import torch.nn.functional as F

    class Pools(torch.nn.Module):
        def forward(self, x):
            return (
                F.avg_pool2d(x, 2, 2, 1, ceil_mode=True),  # 5 -> 3: the 4th window would start on the padding
                F.avg_pool2d(x, 2, 2, 1, ceil_mode=True, count_include_pad=False),
                F.max_pool2d(x, 2, 2, 1, ceil_mode=True),
                F.avg_pool2d(x, 3, 2, 0, ceil_mode=True),  # near-miss: its last window starts inside
            )

    return Pools()


@pytest.mark.parametrize("opset", [18, 20])
def test_ceil_mode_pools_keep_the_shape_the_exporter_declared(tmp_path, opset):
    """Before opset 22 a ceil_mode window starting on the end padding counts; the Slice drops it again."""
    import torch

    x = torch.randn(1, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    model = export(_pools_module(), (x,), tmp_path / "pools.onnx", dynamo=True, opset=opset, input_names=["x"])
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [1, 2, 3, 3]
    result = PassManager("target-opset").run(model)
    stage = result.stages[0]
    assert stage.verification.status == "passed", stage.verification.detail
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    counts = op_counts(out)
    assert counts["Slice"] == 3 and counts["AveragePool"] == 3 and counts["MaxPool"] == 1
    sliced = {n.input[0] for n in out.graph.node if n.op_type == "Slice"}
    near_miss = next(n for n in out.graph.node if n.op_type == "AveragePool" and n.output[0] not in sliced)
    assert near_miss.output[0] == out.graph.output[3].name
    got = run_model(out, {"x": x.numpy()})
    with torch.no_grad():
        expected = _pools_module()(x)
    for ref, value in zip(expected, got.values()):
        np.testing.assert_allclose(value, ref.numpy(), rtol=1e-5, atol=1e-6)


def test_ceil_mode_sizes_follow_opset_22():
    from onnxforge.passes.target_opset.pools import ceil_mode_sizes

    assert ceil_mode_sizes(5, 2, 2, 1, 1, 1) == (4, 3)  # window 4 would start at 6 = 5 + pad_begin
    assert ceil_mode_sizes(5, 3, 2, 1, 0, 0) == (2, 2)
    assert ceil_mode_sizes(6, 3, 2, 1, 1, 1) == (4, 4)


def _pytorch_converted(name: str) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """An IR-3 model the onnx package ships (converted from PyTorch in 2017), with its input and output."""
    from pathlib import Path

    root = Path(onnx.__file__).parent / "backend" / "test" / "data" / "pytorch-converted" / name
    model = onnx.load(str(root / "model.onnx"))
    data = [onnx.numpy_helper.to_array(onnx.load_tensor(str(root / "test_data_set_0" / f))) for f in ("input_0.pb", "output_0.pb")]
    return model, data[0], data[1]


@pytest.mark.parametrize(("name", "pipeline"), [
    ("test_Conv2d", "drop-softmax-argmax,target-opset"),  # a graph pass first drops the weights from the inputs
    ("test_Conv2d_groups", "adaptive-pool,target-opset"),
    ("test_ConstantPad2d", "target-opset"),  # the converter's Pad adapter adds an initializer IR 3 cannot hold
])
def test_ir3_models_convert_up_with_weights_as_initializers(name, pipeline):
    model, x, expected = _pytorch_converted(name)
    assert model.ir_version == 3 and _opset(model) < 11
    result = PassManager(pipeline).run(model)
    stage = result.stages[-1]
    assert stage.verification.status == "passed", stage.verification.detail
    out = result.model
    assert _opset(out) == 11 and out.ir_version == 6 and stage.stats["ir_version"] == "3->6"
    onnx.checker.check_model(out, full_check=True)
    assert [vi.name for vi in out.graph.input] == [model.graph.input[0].name]  # weights are not inputs any more
    got = run_model(out, {out.graph.input[0].name: x})
    np.testing.assert_allclose(next(iter(got.values())), expected, rtol=1e-5, atol=1e-5)


def test_one_for_one_rebuilds_keep_the_node_names_pipelines_select_by():
    model = onnx.parser.parse_model("""<ir_version: 9, opset_import: ["" : 18]>
g (float[1,2,4,4] x) => (float[1,2,8,8] y, float[2,4,4] z, float[1,2,1,1] m) {
  s = Constant<value = float[4] {1, 1, 2, 2}>()
  ax = Constant<value = int64[1] {0}>()
  sp = Constant<value = int64[2] {2, 3}>()
  [up] y = Resize<mode = "linear">(x, , s)
  [drop_batch] z = Squeeze(x, ax)
  [pool] m = ReduceMean(x, sp)
}""")
    result = PassManager("target-opset").run(model)
    assert result.stages[0].verification.status == "passed", result.stages[0].verification.detail
    nodes = {n.name: n for n in result.model.graph.node}
    assert nodes["up"].op_type == "Resize" and len(nodes["up"].input) == 3 and nodes["up"].input[1]
    assert nodes["drop_batch"].op_type == "Squeeze" and len(nodes["drop_batch"].input) == 1
    assert nodes["pool"].op_type == "ReduceMean" and {a.name for a in nodes["pool"].attribute} == {"keepdims", "axes"}
    assert len(nodes) == len(result.model.graph.node)  # no duplicate names


# -- the default target comes from the CANN profile ----------------------------------------------------

def test_default_target_is_the_cann_profiles_and_cann_selects_another(monkeypatch):
    from onnxforge.cann import profile, select_profile

    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)
    assert TargetOpset().target() == select_profile().default_opset == 11
    assert TargetOpset(cann="8.0").target() == profile("8.0").default_opset == 17
    assert TargetOpset(opset=13, cann="8.0").target() == 13  # an explicit opset wins
    assert "CANN 5.0's atc accepts opset 9..13 (default 11)" in TargetOpset.summary
    with pytest.raises(PipelineError, match="target-opset: option 'cann': no CANN profile for version '4.0'"):
        TargetOpset(cann="4.0")


def test_default_target_follows_the_installed_cann(tmp_path, monkeypatch):
    info = tmp_path / "latest" / "ascend_toolkit_install.info"
    info.parent.mkdir()
    info.write_text("version=8.0.RC2\n")
    monkeypatch.setenv("ASCEND_TOOLKIT_HOME", str(info.parent))
    assert TargetOpset().target() == 17
    assert str(TargetOpset()) == "target-opset"  # the canonical form stays the same; the result records the target


def test_a_model_without_a_default_domain_opset_is_refused_with_the_reason():
    """An ai.onnx.ml-only graph (the onnx package's TreeEnsemble node tests): onnx's version converter
    asserts on it (a RuntimeError); the pass refuses with a PassError naming the opset imports instead."""
    from onnx import helper

    node = helper.make_node("Binarizer", ["x"], ["y"], domain="ai.onnx.ml", threshold=0.5)
    graph = helper.make_graph([node], "ml", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx.ml", 3)])
    with pytest.raises(PassError, match=r"no default-domain \(ai.onnx\) opset \(opset imports: ai.onnx.ml 3\)") as info:
        PassManager("target-opset{opset=13}").run(model)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # a refusal, not a crash


def test_a_version_converter_failure_upward_is_a_refusal_not_a_crash(monkeypatch):
    """Whatever onnx raises while converting up (its RuntimeError asserts, an InferenceError) is a PassError."""
    from onnx import helper, version_converter

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    for error in (RuntimeError("convert.h:96: assertInVersionRange failed"), onnx.shape_inference.InferenceError("[ShapeInferenceError] bad")):
        def fail(m, target, error=error):
            raise error
        monkeypatch.setattr(version_converter, "convert_version", fail)
        with pytest.raises(PassError, match="onnx.version_converter cannot convert opset 11 -> 13") as info:
            PassManager("target-opset{opset=13}").run(model)
        assert type(info.value) is PassError  # not PassCrash: the converter's refusal is not a bug of the pass
