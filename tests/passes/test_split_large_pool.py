"""split-large-pool: structure, numerics through the manager, near-misses left untouched with reasons."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge.errors import PipelineError
from onnxforge.passes import PassManager
from onnxforge.passes.split_large_pool import SplitLargePool, factors
from tests.passes.helpers import apply, ops, outputs, parse

# A fixed-size global pool on a wide input (one window of 2x512), as F.avg_pool2d(x, x.shape[2:]) exports.
POOL = """
g (float[1,2,2,512] x) => (float[1,2,1,1] y) {
  y = {op}<kernel_shape = [2, 512]>(x)
}"""


def test_factors():
    assert factors(512, 255) == [128, 4]
    assert factors(300, 255) == [150, 2]
    assert factors(257, 255) is None
    assert factors(600, 16) == [15, 10, 4]


@pytest.mark.parametrize("op", ["AveragePool", "MaxPool"])
def test_structure(op):
    result, model = apply(SplitLargePool(), parse(POOL.replace("{op}", op)))
    assert result.modified and result.stats == {"pools_split": 1}
    assert ops(model) == [op, op]
    kernels = [list(n.attribute[[a.name for a in n.attribute].index("kernel_shape")].ints) for n in model.graph.node]
    assert kernels == [[2, 128], [1, 4]]


def test_idempotent():
    _, once = apply(SplitLargePool(), parse(POOL.replace("{op}", "AveragePool")))
    again, twice = apply(SplitLargePool(), once)
    assert not again.modified and again.why_nothing() == "no pool with a kernel side over 255"
    assert ops(twice) == ops(once)


@pytest.mark.parametrize("op", ["AveragePool", "MaxPool"])
@pytest.mark.parametrize("max_kernel", [255, 16])
def test_numerics_through_manager(op, max_kernel):
    model = parse(POOL.replace("{op}", op))
    result = PassManager(f"split-large-pool{{max_kernel={max_kernel}}}").run(model)
    stage = result.stages[0]
    assert stage.modified and stage.verification.status == "passed", stage.verification.detail
    np.testing.assert_allclose(outputs(result.model)["y"], outputs(model)["y"], rtol=1e-5, atol=1e-6)


def test_tiling_stride_numerics():
    text = """
g (float[1,1,3,1030] x) => (float[1,1,3,2] y) {
  y = AveragePool<kernel_shape = [1, 512], strides = [1, 512]>(x)
}"""
    model = parse(text)
    result = PassManager("split-large-pool").run(model)
    assert result.stages[0].verification.status == "passed"
    np.testing.assert_allclose(outputs(result.model)["y"], outputs(model)["y"], rtol=1e-5, atol=1e-6)


def test_option_validated():
    with pytest.raises(PipelineError, match="max_kernel"):
        SplitLargePool(max_kernel=1)


NEAR_MISSES = {
    "overlapping": ("""
g (float[1,1,1,600] x) => (float[1,1,1,89] y) {
  y = AveragePool<kernel_shape = [1, 512], strides = [1, 1]>(x)
}""", "overlap (kernel 512, stride 1)"),
    "prime kernel": ("""
g (float[1,1,1,257] x) => (float[1,1,1,1] y) {
  y = MaxPool<kernel_shape = [1, 257]>(x)
}""", "prime factor over 255"),
    "pads": ("""
g (float[1,1,1,510] x) => (float[1,1,1,1] y) {
  y = AveragePool<kernel_shape = [1, 512], pads = [0, 1, 0, 1]>(x)
}""", "it has pads"),
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_near_misses_stay_untouched_with_a_reason(case):
    text, reason = NEAR_MISSES[case]
    model = parse(text)
    result, out = apply(SplitLargePool(), model)
    assert not result.modified
    assert reason in result.why_nothing()
    assert sorted(ops(out)) == sorted(ops(model))
