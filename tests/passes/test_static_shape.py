"""static-shape: structure (declared and inferred shapes), numerics, near-misses and user errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxforge.errors import PassError, PipelineError
from onnxforge.numerics import run_model
from onnxforge.passes import PassManager, parse_pipeline
from onnxforge.passes.static_shape import StaticShape
from tests.passes.helpers import apply, ops, parse

# A dynamic model with a shape chain (Shape -> Gather -> Concat -> Reshape) and a second input that
# shares the symbols N, H, W with the first.
DYNAMIC = """
g (float[N,3,H,W] x, float[N,1,H,W] m) => (float[N,4,H,W] y, float[N,12] f) {
  w = Constant<value = float[4,3,1,1] {1,2,3,4,5,6,7,8,9,10,11,12}>()
  c = Conv(x, w)
  y = Mul(c, m)
  sh = Shape(x)
  i0 = Constant<value = int64[1] {0}>()
  n = Gather(sh, i0)
  k = Constant<value = int64[1] {-1}>()
  ns = Concat<axis = 0>(n, k)
  p = GlobalAveragePool(y)
  r = Reshape(p, ns)
  f = Concat<axis = 1>(r, r, r)
}"""

STATIC = """
g (float[1,3,8,8] x) => (float[1,3,8,8] y) {
  y = Relu(x)
}"""


def _shapes(values) -> dict[str, list]:
    return {v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim] for v in values}


# -- structure ----------------------------------------------------------------------------------------

def test_structure_batch_sets_the_leading_dim_of_every_input():
    result, model = apply(StaticShape(batch=16), parse(DYNAMIC))
    assert result.modified and result.stats["inputs_fixed"] == 2 and result.stats["dims_fixed"] == 2
    assert _shapes(model.graph.input) == {"x": [16, 3, "H", "W"], "m": [16, 1, "H", "W"]}
    assert _shapes(model.graph.output) == {"y": [16, 4, "H", "W"], "f": [16, 12]}
    assert sorted(ops(model)) == sorted(ops(parse(DYNAMIC)))  # only declarations change


def test_structure_shape_fixes_shared_symbols_and_makes_every_shape_static():
    result, model = apply(StaticShape(shape=("x:2x3x5x6",)), parse(DYNAMIC))
    assert result.modified and result.stats["shapes"] == "x:2x3x5x6, m:2x1x5x6"
    assert _shapes(model.graph.input) == {"x": [2, 3, 5, 6], "m": [2, 1, 5, 6]}  # m shares N, H, W
    assert _shapes(model.graph.output) == {"y": [2, 4, 5, 6], "f": [2, 12]}
    assert all(isinstance(d, int) for dims in _shapes(model.graph.value_info).values() for d in dims)
    assert any("run simplify next" in n for n in result.notes)


def test_following_simplify_folds_the_shape_chain():
    result = PassManager("static-shape{shape=x:2x3x5x6},simplify").run(parse(DYNAMIC))
    assert ops(result.model) == ["Conv", "Mul", "GlobalAveragePool", "Reshape", "Concat"]


def test_idempotent():
    _, once = apply(StaticShape(shape=("x:2x3x5x6",)), parse(DYNAMIC))
    again, twice = apply(StaticShape(shape=("x:2x3x5x6",)), once)
    assert not again.modified and again.why_nothing() == "inputs already static at x:2x3x5x6"
    assert twice.graph == once.graph


# -- numerics -----------------------------------------------------------------------------------------

def test_numerics_verified_at_the_new_sizes():
    model = parse(DYNAMIC)
    result = PassManager("static-shape{batch=2,shape=x:2x3x5x6|m:2x1x5x6}").run(model)
    stage = result.stages[0]
    assert stage.verification.status == "passed", stage.verification.detail
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((2, 3, 5, 6)).astype(np.float32), "m": rng.standard_normal((2, 1, 5, 6)).astype(np.float32)}
    ref, got = run_model(model, feeds), run_model(result.model, feeds)
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name])


# -- near-misses and errors ---------------------------------------------------------------------------

def test_no_options_make_a_dynamic_batch_1_and_leave_the_rest():
    result, model = apply(StaticShape(), parse(DYNAMIC))
    assert result.modified and result.stats["shapes"] == "x:1x3xHxW, m:1x1xHxW"
    assert any("output 'y' is still dynamic: 1x4xHxW" in n for n in result.notes)
    again, _ = apply(StaticShape(), parse(STATIC))
    assert not again.modified and "already static at x:1x3x8x8" in again.why_nothing()


def test_near_miss_already_static_at_those_values():
    result, model = apply(StaticShape(batch=1), parse(STATIC))
    assert not result.modified and "already static at x:1x3x8x8" in result.why_nothing()
    assert _shapes(model.graph.input) == {"x": [1, 3, 8, 8]}


@pytest.mark.parametrize("options, fragment", [
    ({"shape": ("nope:1x3x8x8",)}, "no graph input 'nope' (inputs: x)"),
    ({"shape": ("x:1x3x8",)}, "input 'x' has rank 4 (1x3x8x8), shape gives 3 dims"),
    ({"batch": 16}, "input 'x' dimension 0 is already 1, cannot set 16"),
])
def test_user_errors_are_one_line_pass_errors(options, fragment):
    with pytest.raises(PassError) as info:
        apply(StaticShape(**options), parse(STATIC))
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_one_symbol_given_two_values_is_an_error():
    with pytest.raises(PassError, match="dimension 'H' is 5 for input 'x' but 7 for 'm'"):
        apply(StaticShape(shape=("x:2x3x5x6", "m:2x1x7x6")), parse(DYNAMIC))


@pytest.mark.parametrize("text, fragment", [
    ("static-shape{shape=x:1x3xax8}", "is not NAME:DxDx..."),
    ("static-shape{shape=x:1x3x0x8}", "is not NAME:DxDx..."),
    ("static-shape{batch=4,shape=x:1x3x8x8}", "starts with 1 but batch=4"),
    ("static-shape{shape=x:1x3|x:1x4}", "gives input 'x' twice"),
])
def test_bad_options_fail_at_construction(text, fragment):
    with pytest.raises(PipelineError, match="static-shape") as info:
        parse_pipeline(text)
    assert fragment in str(info.value)


def test_canonical_form_round_trips():
    text = "static-shape{batch=16,shape=input:16x3x500x500|mask:16x1x500x500}"
    assert str(parse_pipeline(text)) == text


# -- paddle2onnx declares "any size" as dim_value -1 ------------------------------------------------

def _paddle_style(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every symbolic dim of its inputs and outputs written as `dim_value: -1`."""
    for vi in list(model.graph.input) + list(model.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param"):
                d.dim_value = -1
    return model


def test_dim_value_minus_one_is_dynamic_and_gets_fixed():
    model = _paddle_style(parse(DYNAMIC))
    assert _shapes(model.graph.input)["x"] == [-1, 3, -1, -1]
    result, out = apply(StaticShape(shape=("x:2x3x5x6", "m:2x1x5x6")), model)
    assert result.modified and result.stats["dims_fixed"] == 6
    assert _shapes(out.graph.input) == {"x": [2, 3, 5, 6], "m": [2, 1, 5, 6]}
    assert _shapes(out.graph.output) == {"y": [2, 4, 5, 6], "f": [2, 12]}


def test_dim_value_minus_one_batch_becomes_one_without_options():
    result, out = apply(StaticShape(), _paddle_style(parse(DYNAMIC)))
    assert result.modified and result.stats["inputs_fixed"] == 2
    assert [_shapes(out.graph.input)[n][0] for n in ("x", "m")] == [1, 1]
    again, _ = apply(StaticShape(), out)
    assert not again.modified
