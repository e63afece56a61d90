"""drop-empty-slice: structure, numerics through the manager, near-misses left untouched with reasons."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge.passes import PassManager
from onnxforge.passes.drop_empty_slice import DropEmptySlice
from tests.passes.helpers import apply, ops, outputs, parse

# torch.cat([x[:, :k], y, x[:, 5:]], 1) with k = 0 (and a start past the end, which numpy clamps).
EMPTY = """
g (float[1,4,3,3] x, float[1,2,3,3] y) => (float[1,2,3,3] z) {
  s = Constant<value = int64[1] {0}>()
  e = Constant<value = int64[1] {0}>()
  a = Constant<value = int64[1] {1}>()
  head = Slice(x, s, e, a)
  s2 = Constant<value = int64[1] {5}>()
  e2 = Constant<value = int64[1] {100}>()
  tail = Slice(x, s2, e2, a)
  z = Concat<axis = 1>(head, y, tail)
}"""


def test_structure_removes_both_empty_slices():
    result, model = apply(DropEmptySlice(), parse(EMPTY))
    assert result.modified and result.stats == {"empty_slices_removed": 2}
    assert ops(model) == ["Concat"]
    assert list(model.graph.node[0].input) == ["y"]


def test_idempotent():
    _, once = apply(DropEmptySlice(), parse(EMPTY))
    again, twice = apply(DropEmptySlice(), once)
    assert not again.modified and again.why_nothing() == "no empty Slice"
    assert ops(twice) == ops(once)


def test_numerics_through_manager():
    model = parse(EMPTY)
    result = PassManager("drop-empty-slice").run(model)
    stage = result.stages[0]
    assert stage.modified and stage.verification.status == "passed", stage.verification.detail
    np.testing.assert_array_equal(outputs(result.model)["z"], outputs(model)["z"])


NEAR_MISSES = {
    "empty on another axis": ("""
g (float[1,4,3,3] x, float[1,2,0,3] y) => (float[1,6,0,3] z) {
  h = Slice<starts = [2], ends = [2], axes = [2]>(x)
  z = Concat<axis = 1>(h, y)
}""", "it is empty on axis 2, Concat(z) concatenates axis 1"),
    "other consumer": ("""
g (float[1,4,3,3] x, float[1,2,3,3] y) => (float[1,2,3,3] z, float[1,0,3,3] r) {
  h = Slice<starts = [0], ends = [0], axes = [1]>(x)
  z = Concat<axis = 1>(h, y)
  r = Relu(h)
}""", "its output also feeds Relu"),
    "only input": ("""
g (float[1,4,3,3] x) => (float[1,0,3,3] z) {
  h = Slice<starts = [0], ends = [0], axes = [1]>(x)
  z = Concat<axis = 1>(h, h)
}""", "it is every input of Concat(z)"),
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_near_misses_stay_untouched_with_a_reason(case):
    text, reason = NEAR_MISSES[case]
    model = parse(text, opset=9)
    result, out = apply(DropEmptySlice(), model)
    assert not result.modified
    assert reason in result.why_nothing()
    assert sorted(ops(out)) == sorted(ops(model))
