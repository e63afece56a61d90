"""merge-slices: structure (one Slice, idempotent), numerics (exact), near-misses left with reasons."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge.passes.merge_slices import MergeSlices
from tests.passes.helpers import apply, ops, outputs, parse

CHAIN = """
g (float[2,4,6,8] x) => (float[2,3,6,4] y) {
  s0 = Constant<value = int64[1] {0}>()
  e0 = Constant<value = int64[1] {3}>()
  a0 = Constant<value = int64[1] {1}>()
  s1 = Constant<value = int64[1] {2}>()
  e1 = Constant<value = int64[1] {6}>()
  a1 = Constant<value = int64[1] {-1}>()
  t = Slice(x, s0, e0, a0)
  y = Slice(t, s1, e1, a1)
}"""

THREE = """
g (float[2,4,6,8] x) => (float[1,3,6,4] y) {
  s = Constant<value = int64[1] {0}>()
  e = Constant<value = int64[1] {3}>()
  a = Constant<value = int64[1] {1}>()
  e1 = Constant<value = int64[1] {1}>()
  a1 = Constant<value = int64[1] {0}>()
  s2 = Constant<value = int64[1] {2}>()
  e2 = Constant<value = int64[1] {6}>()
  a2 = Constant<value = int64[1] {3}>()
  t = Slice(x, s, e, a)
  u = Slice(t, s, e1, a1)
  y = Slice(u, s2, e2, a2)
}"""

OPSET9 = """
g (float[2,4,6,8] x) => (float[2,3,6,4] y) {
  t = Slice<starts = [0], ends = [3], axes = [1]>(x)
  y = Slice<starts = [2], ends = [6], axes = [3]>(t)
}"""


def test_structure_two_slices_become_one_and_a_second_run_changes_nothing():
    model = parse(CHAIN)
    result, after = apply(MergeSlices(), model)
    assert result.modified and result.stats == {"slices_merged": 1}
    assert ops(after).count("Slice") == 1
    (sl,) = [n for n in after.graph.node if n.op_type == "Slice"]
    assert sl.input[0] == "x" and sl.output[0] == "y"
    again, same = apply(MergeSlices(), after)
    assert not again.modified and ops(same) == ops(after)


@pytest.mark.parametrize("text,opset", [(CHAIN, 17), (THREE, 17), (OPSET9, 9)])
def test_numerics_exact(text, opset):
    model = parse(text, opset=opset)
    result, after = apply(MergeSlices(), model)  # the verifier also checks exactness
    assert result.modified and ops(after).count("Slice") == 1
    np.testing.assert_array_equal(outputs(after)["y"], outputs(model)["y"])
    if opset == 9:
        (sl,) = after.graph.node
        assert {a.name for a in sl.attribute} == {"starts", "ends", "axes"}


SAME_AXIS = CHAIN.replace("a1 = Constant<value = int64[1] {-1}>()", "a1 = Constant<value = int64[1] {1}>()").replace("float[2,3,6,4] y", "float[2,1,6,8] y").replace("int64[1] {6}", "int64[1] {3}")
SHARED = """
g (float[2,4,6,8] x) => (float[2,3,6,4] y, float[2,3,6,8] t) {
  s0 = Constant<value = int64[1] {0}>()
  e0 = Constant<value = int64[1] {3}>()
  a0 = Constant<value = int64[1] {1}>()
  s1 = Constant<value = int64[1] {2}>()
  e1 = Constant<value = int64[1] {6}>()
  a1 = Constant<value = int64[1] {3}>()
  t = Slice(x, s0, e0, a0)
  y = Slice(t, s1, e1, a1)
}"""
RUNTIME = """
g (float[2,4,6,8] x, int64[1] e0) => (float[2,?,6,4] y) {
  s0 = Constant<value = int64[1] {0}>()
  a0 = Constant<value = int64[1] {1}>()
  s1 = Constant<value = int64[1] {2}>()
  e1 = Constant<value = int64[1] {6}>()
  a1 = Constant<value = int64[1] {3}>()
  t = Slice(x, s0, e0, a0)
  y = Slice(t, s1, e1, a1)
}"""


@pytest.mark.parametrize("text,reason", [
    (SAME_AXIS, "both Slices cut axis 1"),
    (SHARED, "has other uses"),
    (RUNTIME, "computed at run time"),
])
def test_near_misses_untouched_with_reasons(text, reason):
    model = parse(text)
    result, after = apply(MergeSlices(), model)
    assert not result.modified and reason in result.skipped[0].reason
    assert ops(after) == ops(model)
