"""fp16: structure (what runs in float16, where Casts go), the documented bound, near-misses kept float32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxforge.errors import PassError, PipelineError
from onnxforge.numerics import run_model, seeded_inputs
from onnxforge.passes import PassManager, parse_pipeline
from onnxforge.passes.fp16 import Fp16
from tests.passes.helpers import apply, op_counts, ops

F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16

# A small segmentation-style net: conv/bn/pool, squeeze-excite gate, a blocked Exp, a bilinear Resize
# (its scales must stay float32), Clip/HardSigmoid, logits -> Softmax (blocked) and labels.
CONVNET = """
g (float[1,3,16,16] x) => (float[1,5,32,32] y, int64[1,1,32,32] labels) {
  c1 = Conv<pads = [1,1,1,1]>(x, w1, b1)
  bn = BatchNormalization(c1, s, bb, m, v)
  r1 = Relu(bn)
  p = MaxPool<kernel_shape = [2,2], strides = [2,2]>(r1)
  c2 = Conv<pads = [1,1,1,1]>(p, w2)
  g = GlobalAveragePool(c2)
  sg = Sigmoid(g)
  att = Mul(c2, sg)
  e = Exp(att)
  ee = Add(att, e)
  up = Resize<mode = "linear", coordinate_transformation_mode = "half_pixel">(ee, , sc)
  cl = Clip(up, lo, hi)
  hs = HardSigmoid(cl)
  logits = Conv(hs, w3)
  y = Softmax<axis = 1>(logits)
  labels = ArgMax<axis = 1, keepdims = 1>(logits)
}"""


def _model(text: str = CONVNET, opset: int = 17, **extra: np.ndarray) -> onnx.ModelProto:
    """The text model with seeded weights as initializers (any name the text uses and `extra` gives)."""
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((8, 3, 3, 3)) * 0.3, "b1": rng.standard_normal(8) * 0.3,
        "s": rng.standard_normal(8) * 0.3 + 1, "bb": rng.standard_normal(8) * 0.3, "m": rng.standard_normal(8) * 0.3,
        "v": np.abs(rng.standard_normal(8)) + 0.5, "w2": rng.standard_normal((8, 8, 3, 3)) * 0.3,
        "w3": rng.standard_normal((5, 8, 1, 1)) * 0.3, "sc": np.array([1, 1, 4, 4]), "lo": np.array(-2.0), "hi": np.array(2.0),
        **extra,
    }
    model = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : {opset}]>\n' + text)
    used = {name for node in model.graph.node for name in node.input}
    model.graph.initializer.extend(onnx.numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items() if k in used)
    onnx.checker.check_model(model)
    return model


def _dtypes(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor, by inference."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    out = {t.name: t.data_type for t in inferred.graph.initializer}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        out[vi.name] = vi.type.tensor_type.elem_type
    return out


def _node(model: onnx.ModelProto, op: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == op)


# -- structure ----------------------------------------------------------------------------------------

def test_structure_fp16_body_blocked_ops_and_resize_scales_in_fp32():
    result, model = apply(Fp16(), _model())
    assert result.modified
    assert result.stats["nodes_fp16"] == 14 and result.stats["nodes_fp32"] == 2
    assert sorted(s.target for s in result.skipped) == ["Exp(e)", "Softmax(y)"]
    assert all("is in the block list" in s.reason for s in result.skipped)
    types = _dtypes(model)
    conv = _node(model, "Conv")
    assert types[conv.input[0]] == types[conv.input[1]] == types[conv.output[0]] == F16
    assert types[_node(model, "Exp").input[0]] == F32 and types[_node(model, "Softmax").input[0]] == F32
    resize = _node(model, "Resize")
    assert types[resize.input[0]] == F16 and types[resize.input[2]] == F32  # scales stay float32
    # input Cast, Exp in and out, logits to the Softmax: one Cast per tensor and dtype
    assert result.stats["casts_inserted"] == op_counts(model)["Cast"] == 4
    assert [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output] == [("y", F32), ("labels", onnx.TensorProto.INT64)]
    assert [(i.name, i.type.tensor_type.elem_type) for i in model.graph.input] == [("x", F32)]


def test_structure_keep_io_false_and_empty_block_list():
    result, model = apply(Fp16(keep_io=False, block=()), _model())
    assert result.stats["nodes_fp32"] == 0 and result.stats["io_converted"] == 2
    assert "Cast" not in ops(model)
    assert [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output] == [("y", F16), ("labels", onnx.TensorProto.INT64)]
    assert model.graph.input[0].type.tensor_type.elem_type == F16


def test_idempotent():
    _, once = apply(Fp16(), _model())
    again, twice = apply(Fp16(), once)
    assert not again.modified
    assert again.why_nothing() == "nothing left to convert: the float32 nodes left are kept for the reasons listed"
    assert ops(twice) == ops(once)


def test_after_fp16_input_no_cast_pair_is_left_at_the_input():
    result = PassManager("fp16-input,fp16").run(_model())
    model = result.model
    assert model.graph.input[0].type.tensor_type.elem_type == F16
    assert _node(model, "Conv").input[0] == "x"  # the fp16-input Cast became a no-op and was bypassed
    assert result.stages[1].stats["casts_removed"] == 1


# -- numerics -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("pipeline", ["fp16", "fp16{keep_io=false,block=}"])
def test_within_the_documented_bound(pipeline):
    model = _model()
    result = PassManager(pipeline).run(model)
    stage = result.stages[0]
    assert stage.verification.status == "measured"
    feeds = seeded_inputs(model, 7)
    ref, got = run_model(model, feeds), run_model(result.model, feeds)
    bound = 1e-2 * max(1.0, float(np.abs(ref["y"]).max()))
    assert float(np.abs(got["y"].astype(np.float32) - ref["y"]).max()) <= bound
    assert (got["labels"] == ref["labels"]).mean() >= 0.99


# -- near-misses: what stays float32 ------------------------------------------------------------------

SHAPE_PATH = """
g (float[1,4,6,6] x) => (float[1,4,12,12] y) {
  sh = Shape(x)
  shf = Cast<to = 1>(sh)
  two = Constant<value = float[4] {1, 1, 2, 2}>()
  big = Mul(shf, two)
  sizes = Cast<to = 7>(big)
  y = Resize<mode = "nearest">(x, , , sizes)
}"""


def test_near_miss_shape_arithmetic_stays_float32():
    model = _model(SHAPE_PATH)
    result, out = apply(Fp16(), model)
    types = _dtypes(out)
    mul = _node(out, "Mul")
    assert types[mul.input[0]] == types[mul.output[0]] == F32  # Shape -> Cast -> Mul is not data
    assert types[_node(out, "Resize").input[0]] == F16
    np.testing.assert_array_equal(outputs_of(out)["y"], outputs_of(model)["y"])  # nearest: exact on fp16-exact input


def outputs_of(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    feeds = {k: v.astype(np.float16).astype(np.float32) for k, v in seeded_inputs(model).items()}
    return run_model(model, feeds)


def test_near_miss_large_reductions_and_named_nodes_stay_float32():
    text = """
g (float[1,2,8,8] x) => (float[1,2,1,1] y, float[1,2,8,8] z) {
  y = GlobalAveragePool(x)
  z = Relu(x)
}"""
    result, out = apply(Fp16(max_reduce=32), _model(text))
    reasons = {s.target: s.reason for s in result.skipped}
    assert reasons["GlobalAveragePool(y)"] == "kept in float32: GlobalAveragePool over 64 elements (max_reduce=32)"
    types = _dtypes(out)
    assert types[_node(out, "GlobalAveragePool").input[0]] == F32 and types[_node(out, "Relu").input[0]] == F16
    named = _model(text)
    named.graph.node[1].name = "keep_me"
    result, out = apply(Fp16(block_nodes=("keep_me",)), named)
    assert [str(s) for s in result.skipped] == ["keep_me skipped: kept in float32: named in block_nodes"]


def test_weights_beyond_the_fp16_range_are_clipped_and_counted():
    text = """
g (float[1,2] x) => (float[1,2] y) {
  y = Mul(x, k)
}"""
    result, out = apply(Fp16(), _model(text, k=np.array([1e5, 2.0])))
    assert result.stats["initializers_clipped"] == 1
    k16 = next(t for t in out.graph.initializer if t.data_type == F16)
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(k16), np.array([65504, 2], np.float16))


def test_bad_option_fails_at_construction():
    with pytest.raises(PipelineError, match="'max_reduce' must be >= 0"):
        parse_pipeline("fp16{max_reduce=-1}")


def test_keep_set_stays_float32_round_trips_and_must_exist():
    text = """
g (float[1,2,8,8] x) => (float[1,2,8,8] z) {
  y = Relu(x)
  z = Sigmoid(y)
}"""
    named = _model(text)
    named.graph.node[0].name, named.graph.node[1].name = "relu", "sig"
    p = parse_pipeline("fp16{keep=relu}").passes[0]
    assert str(p) == "fp16{keep=relu}"
    result, out = apply(p, named)
    assert [str(s) for s in result.skipped] == ["relu skipped: kept in float32: in the keep-set (keep=)"]
    types = _dtypes(out)
    assert types[_node(out, "Relu").output[0]] == F32 and types[_node(out, "Sigmoid").output[0]] != F32
    with pytest.raises(PassError, match="fp16: no graph node 'gone'"):
        apply(Fp16(keep=("gone",)), named)


def test_simulate_rounds_with_cast_pairs_in_a_float32_graph():
    text = """
g (float[1,4] x) => (float[1,4] y, float[1,4] z) {
  t = Mul(x, k)
  y = Relu(t)
  z = Exp(x)
}"""
    model = _model(text, k=np.array([1e5, 1.0, 1.0, 3.0]))
    for n, name in zip(model.graph.node, ("mul", "relu", "exp")):
        n.name = name
    sim = Fp16().simulate(model)
    assert [o.name for o in sim.graph.output] == ["y", "z"] and [i.name for i in sim.graph.input] == ["x"]
    assert {t.type.tensor_type.elem_type for t in list(sim.graph.input) + list(sim.graph.output)} == {F32}
    assert [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in sim.graph.output] == [[1, 4], [1, 4]]
    casts = [n for n in sim.graph.node if n.op_type == "Cast"]
    # pairs on x (into mul), on mul's output and relu's output; none around the blocked Exp
    assert len(casts) == 6 and _node(sim, "Exp").input[0] == "x"
    x = np.array([[2.0, 1.0 + 2**-12, 1e-9, 2.0]], np.float32)
    y, z = (run_model(sim, {"x": x})[k] for k in ("y", "z"))
    assert np.isinf(y[0, 0])  # the weight 1e5 is clipped to 65504, and 2 * 65504 overflows float16
    assert y[0, 1] == 1.0  # 1 + 2^-12 rounds to 1 in float16
    assert y[0, 2] == 0.0  # underflow: 1e-9 is below float16's smallest subnormal
    assert y[0, 3] == 6.0 and z[0, 1] == np.exp(x[0, 1])  # Exp stays float32: its input is not rounded
    assert Fp16(block=("Mul", "Relu", "Exp")).simulate(model).graph.node[0].op_type == "Mul"  # nothing to round
