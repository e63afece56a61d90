"""gather-to-split: structure, numerics through the manager, near-misses left untouched with reasons."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge.passes import PassManager
from onnxforge.passes.gather_to_split import GatherToSplit
from tests.passes.helpers import apply, ops, outputs, parse

# q, k, v = qkv[0], qkv[1], qkv[2] as torch exports it (scalar indices on axis 0).
QKV = """
g (float[3,2,4,5] qkv) => (float[2,4,5] q, float[2,4,5] k, float[2,4,5] v) {
  i0 = Constant<value = int64 {0}>()
  i1 = Constant<value = int64 {1}>()
  i2 = Constant<value = int64 {-1}>()
  q = Gather<axis = 0>(qkv, i0)
  k = Gather<axis = 0>(qkv, i1)
  v = Gather<axis = 0>(qkv, i2)
}"""

# Channel runs with a gap: x[:, [0, 1]] and x[:, [3, 4, 5]] on a 7-channel tensor.
RUNS = """
g (float[1,7,2,2] x) => (float[1,2,2,2] a, float[1,3,2,2] b) {
  ia = Constant<value = int64[2] {0, 1}>()
  ib = Constant<value = int64[3] {3, 4, 5}>()
  a = Gather<axis = 1>(x, ia)
  b = Gather<axis = -3>(x, ib)
}"""


def test_structure_qkv():
    result, model = apply(GatherToSplit(), parse(QKV))
    assert result.modified and result.stats == {"splits_created": 1, "gathers_replaced": 3}
    assert ops(model) == ["Split", "Squeeze", "Squeeze", "Squeeze"]


def test_structure_runs_with_gaps():
    result, model = apply(GatherToSplit(), parse(RUNS))
    assert result.modified and ops(model) == ["Split"]
    assert len(model.graph.node[0].output) == 4  # a, gap, b, tail


def test_idempotent():
    _, once = apply(GatherToSplit(), parse(QKV))
    again, twice = apply(GatherToSplit(), once)
    assert not again.modified and again.why_nothing() == "no tensor read by two or more Gathers on one axis"
    assert ops(twice) == ops(once)


@pytest.mark.parametrize("text", [QKV, RUNS], ids=["qkv", "runs"])
@pytest.mark.parametrize("opset", [11, 13, 18])
def test_numerics_through_manager(text, opset):
    model = parse(text, opset=opset)
    result = PassManager("gather-to-split").run(model)
    stage = result.stages[0]
    assert stage.modified and stage.verification.status == "passed", stage.verification.detail
    before, after = outputs(model), outputs(result.model)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])


NEAR_MISSES = {
    "overlap": ("""
g (float[1,7,2,2] x) => (float[1,2,2,2] a, float[1,3,2,2] b) {
  ia = Constant<value = int64[2] {0, 1}>()
  ib = Constant<value = int64[3] {1, 2, 3}>()
  a = Gather<axis = 1>(x, ia)
  b = Gather<axis = 1>(x, ib)
}""", "overlap"),
    "not a run": ("""
g (float[1,7,2,2] x) => (float[1,2,2,2] a, float[1,2,2,2] b) {
  ia = Constant<value = int64[2] {0, 2}>()
  ib = Constant<value = int64[2] {3, 4}>()
  a = Gather<axis = 1>(x, ia)
  b = Gather<axis = 1>(x, ib)
}""", "indices are not one ascending run"),
    "runtime index": ("""
g (float[3,4] x, int64 i) => (float[4] a, float[4] b) {
  i0 = Constant<value = int64 {0}>()
  a = Gather<axis = 0>(x, i0)
  b = Gather<axis = 0>(x, i)
}""", "has indices computed at run time"),
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_near_misses_stay_untouched_with_a_reason(case):
    text, reason = NEAR_MISSES[case]
    model = parse(text)
    result, out = apply(GatherToSplit(), model)
    assert not result.modified
    assert reason in result.why_nothing()
    assert sorted(ops(out)) == sorted(ops(model))


# h, w = x.shape[2], x.shape[3] as exporters write it: shape arithmetic, not data.
SHAPE_DIMS = """
g (float[1,3,4,5] x) => (int64 h, int64 w) {
  s = Shape(x)
  i2 = Constant<value = int64 {2}>()
  i3 = Constant<value = int64 {3}>()
  h = Gather<axis = 0>(s, i2)
  w = Gather<axis = 0>(s, i3)
}"""


def test_shape_dims_are_left_alone():
    result, model = apply(GatherToSplit(), parse(SHAPE_DIMS))
    assert not result.modified and [o for o in ops(model) if o != "Constant"] == ["Shape", "Gather", "Gather"]
    assert any("shape arithmetic" in s.reason for s in result.skipped)
