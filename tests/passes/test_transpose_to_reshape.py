"""transpose-to-reshape: Transposes of size-1 axes next to Reshapes become Reshapes, chains merge; verified."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge.passes import PassManager
from onnxforge.passes.transpose_to_reshape import TransposeToReshape, has_candidates
from tests.passes.helpers import apply, ops, outputs, parse

CHAIN = """
g (float[2,4,6] x) => (float[2,24] y) {
  s1 = Constant<value = int64[4] {2,4,1,6}>()
  a = Reshape(x, s1)
  t = Transpose<perm=[0,2,1,3]>(a)
  s2 = Constant<value = int64[2] {2,24}>()
  r = Reshape(t, s2)
  y = Relu(r)
}"""


def test_chain_becomes_one_reshape():
    model = parse(CHAIN)
    result, out = apply(TransposeToReshape(), model)
    assert result.modified and result.stats == {"transposes_as_reshapes": 1, "reshapes_merged": 2}
    assert [op for op in ops(out) if op != "Constant"] == ["Reshape", "Relu"]
    np.testing.assert_array_equal(outputs(out)["y"], outputs(model)["y"])


def test_dynamic_batch_becomes_the_reshapes_minus_one():
    """x: N x 1 x 1 x C, a channels-last to channels-first Transpose before a flatten: one -1 for N."""
    model = parse("""
g (float[N,1,1,8] x) => (float[N,8] y) {
  t = Transpose<perm=[0,3,1,2]>(x)
  s = Constant<value = int64[2] {-1, 8}>()
  y = Reshape(t, s)
}""")
    result = PassManager("transpose-to-reshape").run(model)
    stage = result.stages[0]
    assert stage.modified and stage.verification.status == "passed", stage.verification.detail
    assert [op for op in ops(result.model) if op != "Constant"] == ["Reshape"]


NEAR_MISSES = {
    "a real reordering": """
g (float[2,4,6] x) => (float[2,6,4] y) {
  t = Transpose<perm=[0,2,1]>(x)
  s = Constant<value = int64[3] {2,6,4}>()
  y = Reshape(t, s)
}""",
    "no Reshape next to it": """
g (float[2,1,6] x) => (float[1,2,6] y) {
  y = Transpose<perm=[1,0,2]>(x)
}""",
    "a 0 that copies a dim of the intermediate": """
g (float[2,4,6] x) => (float[4,12] y) {
  s1 = Constant<value = int64[2] {4,12}>()
  a = Reshape(x, s1)
  s2 = Constant<value = int64[2] {0,-1}>()
  y = Reshape(a, s2)
}""",
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_near_misses_stay_untouched(case):
    model = parse(NEAR_MISSES[case])
    result, out = apply(TransposeToReshape(), model)
    assert not result.modified
    assert sorted(ops(out)) == sorted(ops(model))


def test_two_dynamic_dims_are_skipped_with_the_reason():
    model = parse("""
g (float[N,1,M] x) => (float[1,N,M] y) {
  t = Transpose<perm=[1,0,2]>(x)
  s = Constant<value = int64[3] {1,-1,0}>()
  y = Reshape(t, s)
}""")
    result, _ = apply(TransposeToReshape(), model)
    assert not result.modified and "more than one dim is not static" in result.why_nothing()


def test_candidates_are_found_on_the_proto():
    assert has_candidates(parse(CHAIN))
    assert not has_candidates(parse(NEAR_MISSES["no Reshape next to it"]))
