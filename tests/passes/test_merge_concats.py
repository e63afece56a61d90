"""merge-concats: structure, numerics through the manager, near-misses left untouched with reasons."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge.passes import PassManager
from onnxforge.passes.merge_concats import MergeConcats
from tests.passes.helpers import apply, ops, outputs, parse

# torch.cat([torch.cat([a, torch.cat([b, c], 1)], 1), a], dim=-3): a nest two deep, one axis written from the back.
NEST = """
g (float[1,2,4,4] a, float[1,3,4,4] b, float[1,1,4,4] c) => (float[1,8,4,4] y) {
  bc = Concat<axis = 1>(b, c)
  abc = Concat<axis = 1>(a, bc)
  y = Concat<axis = -3>(abc, a)
}"""


def test_structure_folds_the_nest_into_one_concat():
    result, model = apply(MergeConcats(), parse(NEST))
    assert result.modified and result.stats == {"concats_merged": 2}
    assert ops(model) == ["Concat"]
    assert list(model.graph.node[0].input) == ["a", "b", "c", "a"]


def test_idempotent():
    _, once = apply(MergeConcats(), parse(NEST))
    again, twice = apply(MergeConcats(), once)
    assert not again.modified and again.why_nothing() == "no Concat feeding a Concat"
    assert ops(twice) == ops(once)


def test_inner_used_twice_by_the_outer_is_spliced_at_both_places():
    text = """
g (float[2,3] a, float[1,3] b) => (float[7,3] y) {
  t = Concat<axis = 0>(a, b)
  y = Concat<axis = 0>(t, b, t)
}"""
    result, model = apply(MergeConcats(), parse(text))
    assert result.modified
    assert list(model.graph.node[0].input) == ["a", "b", "b", "a", "b"]


@pytest.mark.parametrize("opset", [11, 17])
def test_numerics_through_manager(opset):
    model = parse(NEST, opset=opset)
    result = PassManager("merge-concats").run(model)
    stage = result.stages[0]
    assert stage.modified and stage.verification.status == "passed", stage.verification.detail
    np.testing.assert_array_equal(outputs(result.model)["y"], outputs(model)["y"])


NEAR_MISSES = {
    "other axis": ("""
g (float[1,2,4,4] a, float[1,2,4,4] b) => (float[1,4,8,4] y) {
  t = Concat<axis = 1>(a, b)
  y = Concat<axis = 2>(t, t)
}""", "it concatenates axis 1"),
    "other consumer": ("""
g (float[1,2,4,4] a, float[1,2,4,4] b) => (float[1,8,4,4] y, float[1,4,4,4] z) {
  t = Concat<axis = 1>(a, b)
  y = Concat<axis = 1>(t, t)
  z = Relu(t)
}""", "its output feeds 2 nodes"),
    "graph output": ("""
g (float[1,2,4,4] a, float[1,2,4,4] b) => (float[1,6,4,4] y, float[1,4,4,4] t) {
  t = Concat<axis = 1>(a, b)
  y = Concat<axis = 1>(t, a)
}""", "its output is a graph output"),
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_near_misses_stay_untouched_with_a_reason(case):
    text, reason = NEAR_MISSES[case]
    model = parse(text)
    result, out = apply(MergeConcats(), model)
    assert not result.modified
    assert reason in result.why_nothing()
    assert sorted(ops(out)) == sorted(ops(model))
