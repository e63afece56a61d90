"""merge-casts: structure, numerics through the manager, near-misses left untouched with reasons."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge.passes import PassManager
from onnxforge.passes.merge_casts import MergeCasts
from tests.passes.helpers import apply, ops, outputs, parse

# A chain through a widening type, two sibling Casts, and a no-op Cast (the way fp16 tools leave them).
CASTS = """
g (int32[2,3] i, float[2,3] x) => (float[2,3] y, float16[2,3] h) {
  wide = Cast<to = 7>(i)
  f = Cast<to = 1>(wide)
  same = Cast<to = 1>(x)
  s = Add(f, same)
  h1 = Cast<to = 10>(s)
  h2 = Cast<to = 10>(s)
  h = Add(h1, h2)
  y = Relu(s)
}"""


def test_structure():
    result, model = apply(MergeCasts(), parse(CASTS))
    assert result.modified
    assert result.stats == {"chains_merged": 1, "siblings_shared": 1, "noops_removed": 1}
    assert ops(model) == ["Cast", "Add", "Cast", "Relu", "Add"]
    inputs = {n.output[0]: list(n.input) for n in model.graph.node}
    assert inputs["f"] == ["i"] and inputs["s"] == ["f", "x"] and inputs["h"] == ["h1", "h1"]


def test_idempotent():
    _, once = apply(MergeCasts(), parse(CASTS))
    again, twice = apply(MergeCasts(), once)
    assert not again.modified and again.why_nothing() == "no redundant Cast"
    assert ops(twice) == ops(once)


def test_widening_round_trip_becomes_identity():
    text = """
g (float16[4] x) => (float[4] y) {
  a = Cast<to = 1>(x)
  b = Cast<to = 10>(a)
  y = Cast<to = 1>(b)
}"""
    result, model = apply(MergeCasts(), parse(text))
    assert result.modified and ops(model) == ["Cast"]
    assert model.graph.node[0].input[0] == "x"


@pytest.mark.parametrize("opset", [11, 17])
def test_numerics_through_manager(opset):
    model = parse(CASTS, opset=opset)
    result = PassManager("merge-casts").run(model)
    stage = result.stages[0]
    assert stage.modified and stage.verification.status == "passed", stage.verification.detail
    for name in ("y", "h"):
        np.testing.assert_array_equal(outputs(result.model)[name], outputs(model)[name])


NEAR_MISSES = {
    "narrowing first": ("""
g (float[2,3] x) => (float[2,3] y) {
  h = Cast<to = 10>(x)
  y = Cast<to = 1>(h)
}""", "casts float to float16, which may change values"),
    "float to int first": ("""
g (float[2,3] x) => (double[2,3] y) {
  k = Cast<to = 7>(x)
  y = Cast<to = 11>(k)
}""", "casts float to int64, which may change values"),
    "no-op graph output": ("""
g (float[2,3] x) => (float[2,3] y) {
  y = Cast<to = 1>(x)
}""", "its output is a graph output"),
    "siblings both outputs": ("""
g (float[2,3] x) => (float16[2,3] a, float16[2,3] b) {
  a = Cast<to = 10>(x)
  b = Cast<to = 10>(x)
}""", "are both graph outputs"),
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_near_misses_stay_untouched_with_a_reason(case):
    text, reason = NEAR_MISSES[case]
    model = parse(text)
    result, out = apply(MergeCasts(), model)
    assert not result.modified
    assert reason in result.why_nothing()
    assert sorted(ops(out)) == sorted(ops(model))
