"""merge-slices: structure, numerics through the manager, near-misses left untouched with reasons."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge.passes import PassManager
from onnxforge.passes.merge_slices import MergeSlices
from tests.passes.helpers import apply, ops, outputs, parse

# x[:, :, 1:5, 0:6:2] as torch exports it: one Slice per axis, then a third on the channels.
CHAIN = """
g (float[1,4,6,8] x) => (float[1,2,4,3] y) {
  s1 = Constant<value = int64[1] {1}>()
  e1 = Constant<value = int64[1] {5}>()
  a1 = Constant<value = int64[1] {2}>()
  t1 = Slice(x, s1, e1, a1)
  s2 = Constant<value = int64[1] {0}>()
  e2 = Constant<value = int64[1] {6}>()
  a2 = Constant<value = int64[1] {-1}>()
  p2 = Constant<value = int64[1] {2}>()
  t2 = Slice(t1, s2, e2, a2, p2)
  s3 = Constant<value = int64[1] {2}>()
  e3 = Constant<value = int64[1] {100}>()
  a3 = Constant<value = int64[1] {1}>()
  y = Slice(t2, s3, e3, a3)
}"""


def _slice_ops(model):
    return [op for op in ops(model) if op != "Constant"]


def test_structure_merges_the_chain_into_one_slice():
    result, model = apply(MergeSlices(), parse(CHAIN))
    assert result.modified and result.stats == {"slices_merged": 2}
    assert _slice_ops(model) == ["Slice"]
    assert model.graph.node[-1].output[0] == "y"


def test_idempotent():
    _, once = apply(MergeSlices(), parse(CHAIN))
    again, twice = apply(MergeSlices(), once)
    assert not again.modified and again.why_nothing() == "no Slice feeding a Slice"
    assert ops(twice) == ops(once)


@pytest.mark.parametrize("opset", [9, 11, 17])
def test_numerics_through_manager(opset):
    text = CHAIN
    if opset < 10:  # attribute form, no steps
        text = """
g (float[1,4,6,8] x) => (float[1,2,4,8] y) {
  t1 = Slice<starts = [1], ends = [5], axes = [2]>(x)
  y = Slice<starts = [2], ends = [100], axes = [1]>(t1)
}"""
    model = parse(text, opset=opset)
    result = PassManager("merge-slices").run(model)
    stage = result.stages[0]
    assert stage.modified and stage.verification.status == "passed", stage.verification.detail
    assert _slice_ops(result.model) == ["Slice"]
    np.testing.assert_array_equal(outputs(result.model)["y"], outputs(model)["y"])


NEAR_MISSES = {
    "same axis": ("""
g (float[1,4,6,8] x) => (float[1,4,2,8] y) {
  t1 = Slice<starts = [1], ends = [5], axes = [2]>(x)
  y = Slice<starts = [0], ends = [2], axes = [-2]>(t1)
}""", "both Slices cut axis 2"),
    "shared output": ("""
g (float[1,4,6,8] x) => (float[1,4,4,2] y, float[1,4,4,8] z) {
  t1 = Slice<starts = [1], ends = [5], axes = [2]>(x)
  y = Slice<starts = [0], ends = [2], axes = [3]>(t1)
  z = Relu(t1)
}""", "its output feeds 2 nodes"),
    "runtime starts": ("""
g (float[1,4,6,8] x, int64[1] k) => (float[1,4,4,2] y) {
  s1 = Constant<value = int64[1] {1}>()
  a1 = Constant<value = int64[1] {2}>()
  t1 = Slice(x, s1, k, a1)
  s2 = Constant<value = int64[1] {0}>()
  e2 = Constant<value = int64[1] {2}>()
  a2 = Constant<value = int64[1] {3}>()
  y = Slice(t1, s2, e2, a2)
}""", "its ends are computed at run time"),
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_near_misses_stay_untouched_with_a_reason(case):
    text, reason = NEAR_MISSES[case]
    model = parse(text, opset=9 if "Slice<" in text else 17)
    result, out = apply(MergeSlices(), model)
    assert not result.modified
    assert reason in result.why_nothing()
    assert sorted(ops(out)) == sorted(ops(model))
