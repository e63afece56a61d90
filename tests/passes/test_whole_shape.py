"""whole-shape: a Concat rebuilding a tensor's shape from its dims becomes its Shape; verified, near-misses kept."""

from __future__ import annotations

import pytest

from onnxforge.passes import PassManager
from onnxforge.passes.whole_shape import WholeShapePass
from tests.passes.helpers import apply, ops, parse


def _view(pieces: str, x: str = "float[N,L,48] x", out: str = "float[N,L,48] y", extra: str = "") -> str:
    """y = Reshape(Relu(x), Concat(pieces)): the exporter's `x.view(B, L, C)` with B, L read from x.shape."""
    return f"""
g ({x}) => ({out}) {{
  s = Shape(x)
  i0 = Constant<value = int64 {{0}}>()
  i1 = Constant<value = int64 {{1}}>()
  zero = Constant<value = int64[1] {{0}}>()
  two = Constant<value = int64[1] {{2}}>()
  c48 = Constant<value = int64[1] {{48}}>()
  g0 = Gather(s, i0)
  g1 = Gather(s, i1)
  u0 = Unsqueeze(g0, zero)
  u1 = Unsqueeze(g1, zero)
  {extra}
  t = Concat<axis=0>({pieces})
  r = Relu(x)
  y = Reshape(r, t)
}}"""


CASES = {
    "gathers and a static dim": "u0, u1, c48",
    "a slice and a static dim": "h, c48",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rebuilt_shape_becomes_the_shape(case):
    model = parse(_view(CASES[case], extra="h = Slice(s, zero, two)"))
    result, out = apply(WholeShapePass(), model)
    assert result.modified and result.stats == {"shapes_reassembled": 1}
    assert "Concat" not in ops(out) and ops(out).count("Shape") == 1 and "Gather" not in ops(out)


def test_through_the_manager_numerics_on_a_dynamic_input():
    result = PassManager("whole-shape").run(parse(_view("u0, u1, c48")))
    stage = result.stages[0]
    assert stage.modified and stage.verification.status == "passed", stage.verification.detail
    assert "x:1x" in stage.verification.inputs  # numerically, on a concrete shape the verifier chose


NEAR_MISSES = {
    "dims out of order": _view("u1, u0, c48", out="float[?,?,48] y"),
    "-1 where the static dim is": _view("u0, u1, m1", out="float[N,L,?] y", extra="m1 = Constant<value = int64[1] {-1}>()"),
    "a dim missing": _view("u0, m1", out="float[N,?] y", extra="m1 = Constant<value = int64[1] {-1}>()"),
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_near_misses_stay_untouched(case):
    model = parse(NEAR_MISSES[case])
    result, out = apply(WholeShapePass(), model)
    assert not result.modified and result.why_nothing() == "no Concat rebuilding a tensor's shape"
    assert sorted(ops(out)) == sorted(ops(model))


def test_candidates_are_found_on_the_proto():
    from onnxforge.passes.whole_shape import has_candidates

    assert has_candidates(parse(_view("u0, u1, c48")))
    mixed = parse(_view("u0, v1, c48", out="float[?,?,48] y", extra="r0 = Relu(x)\n  q = Shape(r0)\n  v1 = Slice(q, zero, two)"))
    assert not has_candidates(mixed)  # pieces from the Shapes of two tensors
