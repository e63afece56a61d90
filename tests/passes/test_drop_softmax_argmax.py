"""drop-softmax-argmax: structure, numerics (labels equal), near-misses left untouched with reasons."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge.passes import PassManager
from onnxforge.passes.drop_softmax_argmax import DropSoftmaxArgmax
from tests.passes.helpers import apply, ops, outputs, parse

# The tail of mmseg's PSPNet export: logits -> Softmax(axis=1) -> ArgMax(axis=1).
PSP_TAIL = """
g (float[1,3,6,6] x) => (int64[1,1,6,6] labels) {
  w = Constant<value = float[5,3,1,1] {1,2,3,4,5,6,7,8,9,10,11,12,13,14,15}>()
  logits = Conv(x, w)
  probs = Softmax<axis = 1>(logits)
  labels = ArgMax<axis = 1, keepdims = 1>(probs)
}"""


def test_structure_removes_the_softmax():
    result, model = apply(DropSoftmaxArgmax(), parse(PSP_TAIL))
    assert result.modified and result.stats == {"softmax_removed": 1}
    assert ops(model) == ["Constant", "Conv", "ArgMax"]
    assert model.graph.node[-1].input[0] == "logits"


def test_idempotent():
    _, once = apply(DropSoftmaxArgmax(), parse(PSP_TAIL))
    again, twice = apply(DropSoftmaxArgmax(), once)
    assert not again.modified and again.why_nothing() == "no Softmax or LogSoftmax in the graph"
    assert ops(twice) == ops(once)


@pytest.mark.parametrize("softmax, opset", [
    ("Softmax<axis = 1>", 17),
    ("LogSoftmax<axis = 1>", 17),
    ("LogSoftmax<axis = -3>", 17),  # the same axis, written from the back
    ("Softmax", 11),  # opset-11 default axis 1, normalizing C*H*W together: still monotonic along C
])
def test_numerics_labels_equal_through_manager(softmax, opset):
    model = parse(PSP_TAIL.replace("Softmax<axis = 1>", softmax), opset=opset)
    result = PassManager("drop-softmax-argmax").run(model)
    stage = result.stages[0]
    assert stage.modified and stage.verification.status == "passed", stage.verification.detail
    np.testing.assert_array_equal(outputs(result.model)["labels"], outputs(model)["labels"])


NEAR_MISSES = {
    "other consumer": ("""
g (float[1,5,4,4] x) => (int64[1,1,4,4] labels, float[1,1,4,4] top) {
  probs = Softmax<axis = 1>(x)
  labels = ArgMax<axis = 1, keepdims = 1>(probs)
  top = ReduceMax<axes = [1], keepdims = 1>(probs)
}""", "its output also feeds ReduceMax"),
    "different axis": ("""
g (float[1,5,4,4] x) => (int64[1,5,1,4] labels) {
  probs = Softmax<axis = 1>(x)
  labels = ArgMax<axis = 2, keepdims = 1>(probs)
}""", "reduces axis 2, the Softmax normalizes axis 1"),
    "graph output": ("""
g (float[1,5,4,4] x) => (int64[1,1,4,4] labels, float[1,5,4,4] probs) {
  probs = Softmax<axis = 1>(x)
  labels = ArgMax<axis = 1, keepdims = 1>(probs)
}""", "its output is a graph output"),
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_near_misses_stay_untouched_with_a_reason(case):
    text, reason = NEAR_MISSES[case]
    model = parse(text)
    result, out = apply(DropSoftmaxArgmax(), model)
    assert not result.modified
    assert reason in result.why_nothing()
    assert sorted(ops(out)) == sorted(ops(model))
