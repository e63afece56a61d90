"""narrow-types: structure, numerics through the verifying manager, a torch export, near-misses with reasons."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxforge.passes import PassManager
from onnxforge.passes.narrow_types import NarrowTypes
from tests.passes.helpers import apply, op_counts, ops, outputs, parse

# torch.arange(x.shape[1]) + 2 as positions into an embedding table: the length comes from a static Shape,
# so the positions are bounded by it.
POSITIONS = """
g (float[1,6,4] x, float[10,4] table) => (float[1,6,4] y) {
  s = Shape(x)
  one = Constant<value = int64[1] {1}>()
  zero = Constant<value_int = 0>()
  step = Constant<value_int = 1>()
  axes = Constant<value = int64[1] {0}>()
  two = Constant<value = int64[1] {2}>()
  n = Gather<axis = 0>(s, one)
  n0 = Squeeze(n, axes)
  ids = Range(zero, n0, step)
  shifted = Add(ids, two)
  pos = Unsqueeze(shifted, axes)
  e = Gather<axis = 0>(table, pos)
  y = Add(e, x)
}"""

FLOATS = """
g (float[2,3] x) => (float[2,3] y) {
  d = Cast<to = 11>(x)
  k = Constant<value = double[1] {2.0}>()
  b = Constant<value = double[1] {0.5}>()
  m = Mul(d, k)
  a = Add(m, b)
  y = Cast<to = 1>(a)
}"""


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    out = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.input) + list(g.output)}
    out.update({t.name: t.data_type for t in g.initializer})
    return out


def test_structure_positions_computed_in_int32_with_one_cast_from_shape():
    result, model = apply(NarrowTypes(), parse(POSITIONS))
    assert result.modified
    assert result.stats["regions_narrowed"] == 1 and result.stats["nodes_narrowed"] == 2 and result.stats["casts_added"] == 1
    types = _types(model)
    for name in ("shifted", "pos"):
        assert types[name] == onnx.TensorProto.INT32, name
    assert types["s"] == types["ids"] == onnx.TensorProto.INT64  # Shape's output is int64 by spec; Range stays int64
    # the length (Shape -> Gather -> Squeeze, read only by Range) is shape arithmetic: left int64
    assert any("shape arithmetic" in s.reason for s in result.skipped)
    assert op_counts(model)["Cast"] == 1
    assert op_counts(model)["Gather"] == 2


def test_idempotent():
    _, once = apply(NarrowTypes(), parse(POSITIONS))
    again, twice = apply(NarrowTypes(), once)
    assert not again.modified
    assert ops(twice) == ops(once)


def test_float64_region_between_casts_runs_in_float32_and_the_noop_cast_goes():
    result, model = apply(NarrowTypes(), parse(FLOATS))
    assert result.modified and result.stats["casts_removed"] == 1 and result.stats["casts_added"] == 0
    assert ops(model) == ["Mul", "Add", "Cast"]
    types = _types(model)
    assert types["m"] == types["a"] == onnx.TensorProto.FLOAT
    assert not any(t.data_type == onnx.TensorProto.DOUBLE for t in model.graph.initializer)


def test_index_constants_become_int32():
    text = """
g (float[4,3] x) => (float[3,3] y) {
  idx = Constant<value = int64[3] {2, 0, 1}>()
  y = Gather<axis = 0>(x, idx)
}"""
    model = parse(text)
    result, out = apply(NarrowTypes(), model)
    assert result.stats["index_constants_narrowed"] == 1
    assert [t.data_type for t in out.graph.initializer] == [onnx.TensorProto.INT32]
    np.testing.assert_array_equal(outputs(out)["y"], outputs(model)["y"])


@pytest.mark.parametrize("text", [POSITIONS, FLOATS], ids=["ints", "floats"])
@pytest.mark.parametrize("opset", [13, 17])
def test_numerics_through_manager(text, opset):
    model = parse(text, opset=opset)
    result = PassManager("narrow-types").run(model)
    stage = result.stages[0]
    assert stage.modified and stage.verification.status == "passed", stage.verification.detail
    np.testing.assert_allclose(outputs(result.model)["y"], outputs(model)["y"], rtol=1e-6)


def test_an_int64_graph_output_keeps_its_name_and_type_through_a_cast_back():
    text = """
g (float[2,5] x, float[16,2] t) => (float[2,2] y, int64[2] z) {
  a = ArgMax<axis = 1, keepdims = 0>(x)
  one = Constant<value = int64[1] {1}>()
  three = Constant<value = int64[1] {3}>()
  b = Add(a, one)
  c = Mul(b, three)
  z = Max(c, one)
  y = Gather<axis = 0>(t, z)
}"""
    model = parse(text)
    result, out = apply(NarrowTypes(), model)
    assert result.stats["nodes_narrowed"] == 3 and result.stats["casts_added"] == 2
    assert [o.name for o in out.graph.output] == ["y", "z"]
    assert out.graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.INT64
    gather = next(n for n in out.graph.node if n.op_type == "Gather")
    assert _types(out)[gather.input[1]] == onnx.TensorProto.INT32  # the Gather reads the narrow value
    np.testing.assert_array_equal(outputs(out)["z"], outputs(model)["z"])


def test_a_cast_left_no_op_by_a_later_region_is_removed():
    text = """
g (float[2,5] x, float[16,2] t) => (float[2,2] y, float[2,2] z) {
  a = ArgMax<axis = 1, keepdims = 0>(x)
  b = ArgMin<axis = 1, keepdims = 0>(x)
  one = Constant<value = int64[1] {1}>()
  three = Constant<value = int64[1] {3}>()
  n = Add(a, one)
  m = Mul(b, three)
  v = Max(m, one)
  k = Cast<to = 7>(v)
  s = Add(n, k)
  y = Gather<axis = 0>(t, s)
  z = Gather<axis = 0>(t, v)
}"""
    result, model = apply(NarrowTypes(), parse(text))
    # {n, k, s} is narrowed first (k then casts int64 -> int32), {m, v} second: k is then int32 -> int32
    assert result.stats["regions_narrowed"] == 2 and result.stats["casts_removed"] == 1
    assert op_counts(model)["Cast"] == 2  # the two ArgMax/ArgMin outputs entering


def test_int64_graph_input_needs_io_option_and_then_the_interface_narrows():
    text = """
g (int64[5] ids, float[8,2] table) => (float[5,2] y, int64[5] z) {
  zero = Constant<value = int64[1] {0}>()
  z = Max(ids, zero)
  y = Gather<axis = 0>(table, z)
}"""
    kept, _ = apply(NarrowTypes(), parse(text))
    assert not kept.modified and "may not fit int32 (unbounded)" in kept.why_nothing()
    result, model = apply(NarrowTypes(io=True), parse(text))
    assert result.modified and result.stats["casts_added"] == 0
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert model.graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.INT32


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_torch_float64_and_int64_model(tmp_path, dynamo):
    import torch
    from tests.passes.torch_export import export

    class Mixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("perm", torch.tensor([2, 0, 1, 3]))
            self.register_buffer("scale", torch.tensor([0.5, 2.0, 4.0, 1.0], dtype=torch.float64))

        def forward(self, x):
            h = (x.double() * self.scale + 0.25).float()[:, self.perm]
            labels = (torch.argmax(x, 1) * 3 + 1).float()
            return h, labels

    model = export(Mixed(), (torch.randn(2, 4),), tmp_path / "m.onnx", dynamo=dynamo, input_names=["x"], output_names=["h", "labels"])
    assert any(t.data_type == onnx.TensorProto.DOUBLE for t in model.graph.initializer) or "Constant" in ops(model)
    result, out = apply(NarrowTypes(), model)
    assert result.modified and result.stats["regions_narrowed"] == 2, result.stats
    # TorchScript indexes with Gather (int64 index constant -> int32), dynamo with GatherND (indices int64-only)
    assert result.stats["index_constants_narrowed"] == (0 if dynamo else 1)
    assert result.stats["casts_added"] == 1 and result.stats["casts_removed"] == 1  # ArgMax -> int32; x.double() goes
    types = _types(out)
    assert onnx.TensorProto.DOUBLE not in types.values()
    assert [o.type.tensor_type.elem_type for o in out.graph.output] == [onnx.TensorProto.FLOAT] * 2


def test_shape_arithmetic_keeps_int64_only_the_index_constant_narrows():
    text = """
g (float[2,3,4] x) => (float[2,12] y) {
  s = Shape(x)
  i = Constant<value = int64[1] {0}>()
  m = Constant<value = int64[1] {-1}>()
  n = Gather<axis = 0>(s, i)
  shape = Concat<axis = 0>(n, m)
  y = Reshape(x, shape)
}"""
    result, model = apply(NarrowTypes(), parse(text))
    assert result.stats["regions_narrowed"] == 0 and result.stats["index_constants_narrowed"] == 1
    assert any("shape arithmetic" in s.reason for s in result.skipped)
    types = _types(model)
    assert types["n"] == types["shape"] == onnx.TensorProto.INT64
    assert [o for o in ops(model) if o != "Constant"] == ["Shape", "Gather", "Concat", "Reshape"]


NEAR_MISSES = {
    "int64 constant out of range": ("""
g (float[4] x) => (float[4] y) {
  i = Constant<value = int64[4] {0, 1, 2, 3}>()
  big = Constant<value = int64[1] {3000000000}>()
  j = Add(i, big)
  y = Cast<to = 1>(j)
}""", "'big' may not fit int32 (range [3000000000, 3000000000])"),
    "float64 constant that does not round-trip": ("""
g (float[3] x) => (float[3] y) {
  d = Cast<to = 11>(x)
  k = Constant<value = double[1] {0.1}>()
  m = Mul(d, k)
  y = Cast<to = 1>(m)
}""", "does not round-trip through float32"),
    "float64 graph output": ("""
g (float[3] x) => (double[3] y) {
  d = Cast<to = 11>(x)
  k = Constant<value = double[1] {2.0}>()
  y = Mul(d, k)
}""", "reach graph output 'y'"),
    "cast from float to int64": ("""
g (float[3] x, float[8,2] t) => (float[3,2] y) {
  i = Cast<to = 7>(x)
  one = Constant<value = int64[1] {1}>()
  j = Add(i, one)
  y = Gather<axis = 0>(t, j)
}""", "may not fit int32 (from float)"),
    "as many casts as nodes": ("""
g (float[2,5] x) => (int64[2] y) {
  a = ArgMax<axis = 1, keepdims = 0>(x)
  one = Constant<value = int64[1] {1}>()
  y = Add(a, one)
}""", "would need 2 Cast(s)"),
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_near_misses_stay_untouched_with_a_reason(case):
    text, reason = NEAR_MISSES[case]
    model = parse(text)
    result, out = apply(NarrowTypes(), model)
    assert not result.modified
    assert reason in result.why_nothing(), result.why_nothing()
    assert ops(out) == ops(model)
