"""simplify: structure, numerics, near-miss."""

from __future__ import annotations

import numpy as np

from onnxforge.passes import PassManager
from onnxforge.passes.simplify import Simplify
from tests.passes.helpers import apply, ops, outputs, parse

FOLDABLE = """
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  w = Constant<value = float[4,3,1,1] {1,2,3,4,5,6,7,8,9,10,11,12}>()
  shape = Shape(x)
  flat = Constant<value = int64[2] {1, -1}>()
  c = Conv(x, w)
  i = Identity(c)
  r = Reshape(i, flat)
  shape_y = Constant<value = int64[4] {1, 4, 8, 8}>()
  y = Reshape(r, shape_y)
}"""


def test_structure_folds_and_removes_dead_code():
    result, model = apply(Simplify(), parse(FOLDABLE))
    assert result.modified
    assert "Identity" not in ops(model) and "Shape" not in ops(model)
    assert result.stats["nodes_removed"] >= 2
    names = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    assert names == (["x"], ["y"])


def test_idempotent():
    _, once = apply(Simplify(), parse(FOLDABLE))
    again, twice = apply(Simplify(), once)
    assert not again.modified and "already simplified" in again.why_nothing()
    assert ops(once) == ops(twice)


def test_numerics_equal_through_manager():
    model = parse(FOLDABLE)
    result = PassManager("simplify").run(model)
    assert result.stages[0].verification.status == "passed"
    np.testing.assert_allclose(outputs(result.model)["y"], outputs(model)["y"], rtol=1e-5, atol=1e-5)


def test_near_miss_nothing_to_fold():
    model = parse("""
g (float[1,3,8,8] x) => (float[1,3,8,8] y) {
  y = Relu(x)
}""")
    result, out = apply(Simplify(), model)
    assert not result.modified and ops(out) == ["Relu"]


def test_batchnorm_fusion_can_be_turned_off():
    text = """
g (float[1,2,4,4] x) => (float[1,2,4,4] y) {
  w = Constant<value = float[2,2,1,1] {1,0,0,1}>()
  s = Constant<value = float[2] {2,3}>()
  b = Constant<value = float[2] {0.5,1}>()
  m = Constant<value = float[2] {0.1,0.2}>()
  v = Constant<value = float[2] {1,4}>()
  c = Conv(x, w)
  y = BatchNormalization(c, s, b, m, v)
}"""
    _, fused = apply(Simplify(), parse(text))
    _, kept = apply(Simplify(fuse_bn=False), parse(text))
    assert "BatchNormalization" not in ops(fused)
    assert "BatchNormalization" in ops(kept)
