"""fold-transpose-bn: structure, numerics through the manager, near-misses left untouched with reasons."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge.passes import PassManager
from onnxforge.passes.fold_transpose_bn import FoldTransposeBn
from tests.passes.helpers import apply, ops, outputs, parse

# A channels-last BatchNorm as tf2onnx writes it (torch exports keep BN on NCHW).
NHWC_BN = """
g (float[1,4,5,3] x) => (float[1,4,5,3] y) {
  t = Transpose<perm = [0, 3, 1, 2]>(x)
  g = Constant<value = float[3] {1.5, 0.5, 2.0}>()
  b = Constant<value = float[3] {0.1, -0.2, 0.3}>()
  m = Constant<value = float[3] {0.5, 1.0, -1.0}>()
  v = Constant<value = float[3] {1.0, 4.0, 0.25}>()
  n = BatchNormalization<epsilon = 0.001>(t, g, b, m, v)
  y = Transpose<perm = [0, 2, 3, 1]>(n)
}"""


def test_structure_becomes_mul_add():
    result, model = apply(FoldTransposeBn(), parse(NHWC_BN))
    assert result.modified and result.stats == {"bn_folded": 1}
    assert ops(model) == ["Mul", "Add"]
    assert model.graph.node[0].input[0] == "x" and model.graph.node[-1].output[0] == "y"


def test_idempotent():
    _, once = apply(FoldTransposeBn(), parse(NHWC_BN))
    again, twice = apply(FoldTransposeBn(), once)
    assert not again.modified and again.why_nothing() == "no BatchNormalization between Transposes"
    assert ops(twice) == ops(once)


@pytest.mark.parametrize("opset", [11, 15])
def test_numerics_through_manager(opset):
    model = parse(NHWC_BN, opset=opset)
    result = PassManager("fold-transpose-bn").run(model)
    stage = result.stages[0]
    assert stage.modified and stage.verification.status == "passed", stage.verification.detail
    np.testing.assert_allclose(outputs(result.model)["y"], outputs(model)["y"], rtol=1e-5, atol=1e-5)


NEAR_MISSES = {
    "not inverse": (NHWC_BN.replace("perm = [0, 2, 3, 1]", "perm = [0, 1, 3, 2]").replace("float[1,4,5,3] y", "float[1,3,5,4] y"),
                    "does not undo perm"),
    "bn output used twice": (NHWC_BN.replace("=> (float[1,4,5,3] y)", "=> (float[1,4,5,3] y, float[1,3,4,5] n)"),
                             "its output does not feed only a Transpose"),
    "runtime mean": (NHWC_BN.replace("(float[1,4,5,3] x)", "(float[1,4,5,3] x, float[3] m)").replace(
        "  m = Constant<value = float[3] {0.5, 1.0, -1.0}>()\n", ""), "is not constant"),
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_near_misses_stay_untouched_with_a_reason(case):
    text, reason = NEAR_MISSES[case]
    model = parse(text)
    result, out = apply(FoldTransposeBn(), model)
    assert not result.modified
    assert reason in result.why_nothing()
    assert sorted(ops(out)) == sorted(ops(model))
