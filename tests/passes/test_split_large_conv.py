"""split-large-conv: structure, numerics through the manager, near-misses left untouched with reasons."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge.passes import PassManager
from onnxforge.passes.split_large_conv import SplitLargeConv
from tests.passes.helpers import apply, ops, outputs, parse


def _conv(k: int, stride: int = 1, width: int = 40, extra: str = "") -> str:
    out = (width - k) // stride + 1
    weights = ", ".join(str((i % 7) - 3) for i in range(2 * 3 * k))
    return f"""
g (float[1,3,2,{width}] x) => (float[1,2,2,{out}] y) {{
  w = Constant<value = float[2,3,1,{k}] {{{weights}}}>()
  b = Constant<value = float[2] {{0.5, -1.5}}>()
  y = Conv<kernel_shape = [1, {k}], strides = [1, {stride}]{extra}>(x, w, b)
}}"""


def test_structure():
    result, model = apply(SplitLargeConv(max_kernel=8), parse(_conv(20)))
    assert result.modified and result.stats == {"convs_split": 1}
    assert sorted(op for op in ops(model) if op != "Constant") == ["Conv"] * 3 + ["Slice"] * 3 + ["Sum"]


def test_idempotent():
    _, once = apply(SplitLargeConv(max_kernel=8), parse(_conv(20)))
    again, twice = apply(SplitLargeConv(max_kernel=8), once)
    assert not again.modified and again.why_nothing() == "no Conv with a kernel side over 8"
    assert ops(twice) == ops(once)


@pytest.mark.parametrize("k, stride", [(20, 1), (17, 3), (9, 2)])
def test_numerics_through_manager(k, stride):
    model = parse(_conv(k, stride))
    result = PassManager("split-large-conv{max_kernel=8}").run(model)
    stage = result.stages[0]
    assert stage.modified and stage.verification.status == "passed", stage.verification.detail
    np.testing.assert_allclose(outputs(result.model)["y"], outputs(model)["y"], rtol=1e-4, atol=1e-4)


NEAR_MISSES = {
    "pads": (_conv(20, 1, 40, ", pads = [0, 1, 0, 1]").replace("float[1,2,2,21] y", "float[1,2,2,23] y"), "it has pads"),
    "runtime weights": ("""
g (float[1,3,2,40] x, float[2,3,1,20] w) => (float[1,2,2,21] y) {
  y = Conv<kernel_shape = [1, 20]>(x, w)
}""", "its weights are not constant"),
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_near_misses_stay_untouched_with_a_reason(case):
    text, reason = NEAR_MISSES[case]
    model = parse(text)
    result, out = apply(SplitLargeConv(max_kernel=8), model)
    assert not result.modified
    assert reason in result.why_nothing()
    assert sorted(ops(out)) == sorted(ops(model))


def test_kernel_over_the_limit_on_two_axes_is_split_on_both():
    weights = ", ".join(str((i % 5) - 2) for i in range(2 * 3 * 10 * 12))
    model = parse(f"""
g (float[1,3,14,15] x) => (float[1,2,5,4] y) {{
  w = Constant<value = float[2,3,10,12] {{{weights}}}>()
  y = Conv<kernel_shape = [10, 12]>(x, w)
}}""")
    result, out = apply(SplitLargeConv(max_kernel=6), model)
    assert result.stats == {"convs_split": 1}
    convs = [n for n in out.graph.node if n.op_type == "Conv"]
    kernels = sorted(tuple(a.ints) for n in convs for a in n.attribute if a.name == "kernel_shape")
    assert kernels == [(4, 6), (4, 6), (6, 6), (6, 6)]
    np.testing.assert_allclose(outputs(out)["y"], outputs(model)["y"], rtol=1e-4, atol=1e-4)
