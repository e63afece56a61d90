"""reflect-pad-to-slices: structure, numerics through the manager, near-misses left untouched with reasons."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge.numerics import run_model
from onnxforge.passes import PassManager
from onnxforge.passes.reflect_pad_to_slices import ReflectPadToSlices
from tests.passes.helpers import apply, ops, outputs, parse

# nn.ReflectionPad2d((2, 1, 1, 3)) as torch exports it (pads: begins then ends, W left 2, right 1, H top 1, bottom 3).
REFLECT = """
g (float[1,2,5,6] x) => (float[1,2,9,9] y) {
  p = Constant<value = int64[8] {0, 0, 1, 2, 0, 0, 3, 1}>()
  y = Pad<mode = "reflect">(x, p)
}"""


def test_structure():
    result, model = apply(ReflectPadToSlices(), parse(REFLECT))
    assert result.modified and result.stats == {"pads_replaced": 1}
    assert sorted(ops(model)) == ["Concat", "Concat", "Slice", "Slice", "Slice", "Slice"]
    assert model.graph.node[-1].output[0] == "y"


def test_idempotent():
    _, once = apply(ReflectPadToSlices(), parse(REFLECT))
    again, twice = apply(ReflectPadToSlices(), once)
    assert not again.modified and again.why_nothing() == "no reflect-mode Pad"
    assert ops(twice) == ops(once)


@pytest.mark.parametrize("opset", [11, 17])
def test_numerics_through_manager(opset):
    model = parse(REFLECT, opset=opset)
    result = PassManager("reflect-pad-to-slices").run(model)
    stage = result.stages[0]
    assert stage.modified and stage.verification.status == "passed", stage.verification.detail
    np.testing.assert_array_equal(outputs(result.model)["y"], outputs(model)["y"])


def test_numerics_match_numpy_reflect():
    result = PassManager("reflect-pad-to-slices").run(parse(REFLECT))
    x = np.arange(60, dtype=np.float32).reshape(1, 2, 5, 6)
    y = run_model(result.model, {"x": x})["y"]
    np.testing.assert_array_equal(y, np.pad(x, ((0, 0), (0, 0), (1, 3), (2, 1)), mode="reflect"))


NEAR_MISSES = {
    "pad too large": (REFLECT.replace("{0, 0, 1, 2, 0, 0, 3, 1}", "{0, 0, 5, 0, 0, 0, 0, 0}").replace("float[1,2,9,9] y", "float[1,2,10,6] y"),
                      "pad 5 on axis 2 exceeds size 5 - 1"),
    "runtime pads": ("""
g (float[1,2,5,6] x, int64[8] p) => (float[1,2,9,9] y) {
  y = Pad<mode = "reflect">(x, p)
}""", "its pads are computed at run time"),
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_near_misses_stay_untouched_with_a_reason(case):
    text, reason = NEAR_MISSES[case]
    model = parse(text)
    result, out = apply(ReflectPadToSlices(), model)
    assert not result.modified
    assert reason in result.why_nothing()
    assert sorted(ops(out)) == sorted(ops(model))
