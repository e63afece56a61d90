"""constant-reshape: structure, numerics through the manager, near-misses left untouched with reasons."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge.passes import PassManager
from onnxforge.passes.constant_reshape import ConstantReshape, explicit_shape
from tests.passes.helpers import apply, ops, outputs, parse

# x.view(x.size(0), -1) and a 0 that copies a dim, sharing nothing.
FLATTEN = """
g (float[2,3,4,5] x) => (float[2,60] y, float[2,3,20] z) {
  t = Constant<value = int64[2] {0, -1}>()
  y = Reshape(x, t)
  u = Constant<value = int64[3] {0, 0, -1}>()
  z = Reshape(x, u)
}"""


def _targets(model):
    init = {i.name: list(np.frombuffer(i.raw_data, dtype=np.int64)) if i.raw_data else list(i.int64_data) for i in model.graph.initializer}
    return [init.get(n.input[1]) for n in model.graph.node if n.op_type == "Reshape"]


def test_structure_writes_the_targets_out():
    result, model = apply(ConstantReshape(), parse(FLATTEN))
    assert result.modified and result.stats == {"reshapes_made_explicit": 2}
    assert ops(model) == ["Reshape", "Reshape"]
    assert _targets(model) == [[2, 60], [2, 3, 20]]


def test_idempotent():
    _, once = apply(ConstantReshape(), parse(FLATTEN))
    again, twice = apply(ConstantReshape(), once)
    assert not again.modified and again.why_nothing() == "no Reshape target with 0 or -1"
    assert ops(twice) == ops(once)


def test_allowzero_keeps_a_literal_zero():
    assert explicit_shape([0, -1], (0, 3), allowzero=True) == "0 elements do not fill the target [0, -1]"
    assert explicit_shape([3, 0], (0, 3), allowzero=True) == [3, 0]
    assert explicit_shape([0, 3], (0, 3), allowzero=False) == [0, 3]


@pytest.mark.parametrize("opset", [11, 17])
def test_numerics_through_manager(opset):
    model = parse(FLATTEN, opset=opset)
    result = PassManager("constant-reshape").run(model)
    stage = result.stages[0]
    assert stage.modified and stage.verification.status == "passed", stage.verification.detail
    for name in ("y", "z"):
        np.testing.assert_array_equal(outputs(result.model)[name], outputs(model)[name])


NEAR_MISSES = {
    "dynamic input": ("""
g (float[N,3] x) => (float[N,3] y) {
  t = Constant<value = int64[2] {-1, 3}>()
  y = Reshape(x, t)
}""", "its input shape is not static"),
    "runtime target": ("""
g (float[2,3] x, int64[2] t) => (float[3,2] y) {
  y = Reshape(x, t)
}""", "its target shape is computed at run time"),
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_near_misses_stay_untouched_with_a_reason(case):
    text, reason = NEAR_MISSES[case]
    model = parse(text)
    result, out = apply(ConstantReshape(), model)
    assert not result.modified
    assert reason in result.why_nothing()
    assert sorted(ops(out)) == sorted(ops(model))
