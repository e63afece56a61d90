"""conv1d-to-conv2d: structure, numerics through the verifying manager, torch exports, near-misses."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxforge.passes import PassManager
from onnxforge.passes.conv1d_to_conv2d import Conv1dToConv2d
from tests.passes.helpers import apply, op_counts, ops, outputs, parse

# Conv1d -> BN -> Relu -> Conv1d(k=1) -> Add(per-channel bias [8, 1]) + residual from the input's projection.
STACK = """
g (float[1,4,16] x) => (float[1,8,16] y)
<float[8,4,3] w1 = {%s}, float[8,8,1] w2 = {%s}, float[8] s = {1,2,3,4,5,6,7,8}, float[8] b = {0,1,0,1,0,1,0,1},
 float[8] m = {0,0,0,0,1,1,1,1}, float[8] v = {1,1,1,1,2,2,2,2}, float[8,1] cb = {1,2,3,4,5,6,7,8}> {
  c1 = Conv<kernel_shape = [3], pads = [1, 1]>(x, w1)
  n1 = BatchNormalization(c1, s, b, m, v)
  r1 = Relu(n1)
  c2 = Conv<kernel_shape = [1]>(r1, w2)
  a = Add(c2, cb)
  y = Add(a, r1)
}""" % (",".join(str((i % 7) * 0.1 - 0.3) for i in range(96)), ",".join(str((i % 5) * 0.1 - 0.2) for i in range(64)))


def _conv_kernels(model: onnx.ModelProto) -> list[int]:
    inits = {t.name: t for t in model.graph.initializer}
    return [len(inits[n.input[1]].dims) for n in model.graph.node if n.op_type == "Conv"]


def test_structure_lifts_the_whole_stack_once():
    result, model = apply(Conv1dToConv2d(), parse(STACK))
    assert result.modified
    assert result.stats == {"regions_lifted": 1, "convs_lifted": 2, "nodes_lifted": 6, "unsqueezes": 1, "squeezes": 1}
    assert ops(model) == ["Unsqueeze", "Conv", "BatchNormalization", "Relu", "Conv", "Add", "Add", "Squeeze"]
    assert _conv_kernels(model) == [4, 4]
    first = next(n for n in model.graph.node if n.op_type == "Conv")
    attrs = {a.name: list(a.ints) for a in first.attribute}
    assert attrs["kernel_shape"] == [1, 3] and attrs["pads"] == [0, 1, 0, 1]
    bias = next(t for t in model.graph.initializer if list(t.dims) == [8, 1, 1])  # [8, 1] got the axis before L
    assert bias is not None
    assert [o.name for o in model.graph.output] == ["y"]


def test_idempotent():
    _, once = apply(Conv1dToConv2d(), parse(STACK))
    again, twice = apply(Conv1dToConv2d(), once)
    assert not again.modified and again.why_nothing() == "no 1-D Conv in the graph"
    assert ops(twice) == ops(once)


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_numerics_through_manager_at_opsets_with_axes_attribute_or_input(opset):
    model = parse(STACK, opset=opset)
    result = PassManager("conv1d-to-conv2d").run(model)
    stage = result.stages[0]
    assert stage.modified and stage.verification.status == "passed", stage.verification.detail
    np.testing.assert_allclose(outputs(result.model)["y"], outputs(model)["y"], rtol=1e-5, atol=1e-5)
    unsq = next(n for n in result.model.graph.node if n.op_type == "Unsqueeze")
    assert (len(unsq.input) == 1) == (opset < 13)


def test_pools_strides_dilations_and_runtime_inputs_of_every_rank():
    text = """
g (float[2,3,20] x, float[3,1] scale, float[2,3,10] skip, float[10] ramp) => (float[2,3,10] y, float[2,3,1] g) {
  w = Constant<value = float[3,1,3] {1,0,-1,0.5,0.5,0.5,-1,2,-1}>()
  c = Conv<group = 3, strides = [1], dilations = [2], pads = [2, 2]>(x, w)
  p = MaxPool<kernel_shape = [3], strides = [2], pads = [1, 0]>(c)
  q = AveragePool<kernel_shape = [2], strides = [1], pads = [0, 1], count_include_pad = 1>(p)
  m = Mul(q, scale)
  a = Add(m, skip)
  y = Sub(a, ramp)
  g = GlobalAveragePool(y)
}"""
    result, model = apply(Conv1dToConv2d(), parse(text))
    assert result.stats["nodes_lifted"] == 7 and result.stats["squeezes"] == 2
    # x and skip (rank 3) and scale (rank 2) get an Unsqueeze; ramp (rank 1) aligns with L as it is
    assert result.stats["unsqueezes"] == 3
    assert op_counts(model)["Squeeze"] == 2


def test_conv_transpose_and_concat_stay_in_the_region():
    text = """
g (float[1,2,8] x, float[2,3,3] wt, float[5,5,1] w) => (float[1,5,17] y) {
  up = ConvTranspose<strides = [2], pads = [1, 0], output_padding = [1]>(x, wt)
  r = Relu(up)
  roi = Constant<value = float[0] {}>()
  scales = Constant<value = float[3] {1, 1, 2.125}>()
  skip = Resize(x, roi, scales)
  cat = Concat<axis = -2>(r, skip)
  y = Conv(cat, w)
}"""
    result, out = apply(Conv1dToConv2d(), parse(text))
    assert result.stats["convs_lifted"] == 2 and result.stats["nodes_lifted"] == 4 and result.stats["squeezes"] == 1
    assert result.stats["unsqueezes"] == 4  # x, the Resize output (outside), and the two runtime weights
    nodes = {n.op_type: n for n in out.graph.node}
    attrs = {a.name: (a.i if a.type == onnx.AttributeProto.INT else list(a.ints)) for a in nodes["ConvTranspose"].attribute}
    assert attrs["strides"] == [1, 2] and attrs["pads"] == [0, 1, 0, 0] and attrs["output_padding"] == [0, 1]
    assert [a.i for a in nodes["Concat"].attribute if a.name == "axis"] == [1]


def test_shared_weight_lifted_once_and_shared_constant_kept_for_outside_users():
    text = """
g (float[1,2,8] x) => (float[1,2,8] y, float[2,2,3] wsum) {
  w = Constant<value = float[2,2,3] {1,2,3,4,5,6,7,8,9,10,11,12}>()
  a = Conv<pads = [1, 1]>(x, w)
  shape = Constant<value = int64[3] {1,2,8}>()
  t = Reshape(a, shape)
  b = Conv<pads = [1, 1]>(t, w)
  y = Relu(b)
  wsum = Add(w, w)
}"""
    model = parse(text)
    result, out = apply(Conv1dToConv2d(), model)
    assert result.stats["regions_lifted"] == 2  # Reshape is not lifted: it splits the stack in two
    lifted = [t for t in out.graph.initializer if list(t.dims) == [2, 2, 1, 3]]
    assert len(lifted) == 1
    add = next(n for n in out.graph.node if n.op_type == "Add")
    assert list(add.input) == ["w", "w"]  # the outside Add still reads the Constant as it was
    np.testing.assert_array_equal(outputs(out)["wsum"], outputs(model)["wsum"])


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_torch_conv1d_stack_export(tmp_path, dynamo):
    import torch
    from tests.passes.torch_export import export

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv1 = torch.nn.Conv1d(4, 8, 3, padding=1)
            self.bn = torch.nn.BatchNorm1d(8)
            self.conv2 = torch.nn.Conv1d(8, 8, 3, padding=2, dilation=2)
            self.proj = torch.nn.Conv1d(4, 8, 1)

        def forward(self, x):
            h = torch.relu(self.bn(self.conv1(x)))
            h = torch.sigmoid(self.conv2(h)) * h
            return h + self.proj(x)

    model = export(Block(), (torch.randn(1, 4, 32),), tmp_path / "m.onnx", dynamo=dynamo, input_names=["x"], output_names=["y"])
    result, out = apply(Conv1dToConv2d(), model)
    assert result.modified and result.stats["regions_lifted"] == 1 and result.stats["convs_lifted"] == 3
    assert result.stats["unsqueezes"] == 1 and result.stats["squeezes"] == 1
    counts = op_counts(out)
    assert counts["Unsqueeze"] == 1 and counts["Squeeze"] == 1 and counts["Conv"] == 3
    assert _conv_kernels(out) == [4, 4, 4]


NEAR_MISSES = {
    "conv2d": ("""
g (float[1,2,8,8] x, float[3,2,3,3] w) => (float[1,3,6,6] y) {
  y = Conv(x, w)
}""", "no 1-D Conv in the graph"),
    "unknown rank": ("""
g (float x, float[3,2,3] w) => (float y) {
  y = Conv(x, w)
}""", "the rank of its input or output is unknown"),
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_near_misses_stay_untouched_with_a_reason(case):
    text, reason = NEAR_MISSES[case]
    model = parse(text)
    result, out = apply(Conv1dToConv2d(), model)
    assert not result.modified
    assert reason in result.why_nothing()
    assert ops(out) == ops(model)


def test_region_stops_at_an_op_that_broadcasts_to_rank_4():
    text = """
g (float[1,2,8] x, float[3,2,3] w, float[5,1,1,1] k) => (float[5,3,6] y) {
  c = Conv(x, w)
  r = Relu(c)
  y0 = Mul(r, k)
  axes = Constant<value = int64[1] {1}>()
  y = ReduceSum<keepdims = 0>(y0, axes)
}"""
    result, model = apply(Conv1dToConv2d(), parse(text))
    assert result.stats["nodes_lifted"] == 2 and result.stats["unsqueezes"] == 2  # x, and the runtime weight
    assert ops(model)[-4:] == ["Relu", "Squeeze", "Mul", "ReduceSum"]
