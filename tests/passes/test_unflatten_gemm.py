"""unflatten-gemm: onnxsim's Reshape -> Gemm -> Reshape of an N-D Linear back to MatMul (+ Add), verified."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge.passes import PassManager
from onnxforge.passes.unflatten_gemm import UnflattenGemm, has_candidates
from tests.passes.helpers import apply, ops, outputs, parse

W = "float[8,4] {" + ", ".join(str((i % 7) / 7 - 0.4) for i in range(32)) + "}"
WT = "float[4,8] {" + ", ".join(str((i % 5) / 5 - 0.3) for i in range(32)) + "}"


def _linear(x: str, target: str, bias: str = "float[4] {0.5, -1, 2, 0.25}", gemm: str = "Gemm", w: str = W, out: str = "float[2,5,4] y",
            extra: str = "") -> str:
    return f"""
g ({x}) => ({out}) {{
  flat = Constant<value = int64[2] {{-1, 8}}>()
  a = Reshape(x, flat)
  w = Constant<value = {w}>()
  b = Constant<value = {bias}>()
  m = {gemm}(a, w, b)
  {target}
  y = Reshape(m, t)
  {extra}
}}"""


NATURAL = _linear("float[2,5,8] x", "t = Constant<value = int64[3] {-1, 5, 4}>()")


def test_natural_target_becomes_matmul_add_and_equal():
    model = parse(NATURAL)
    result, out = apply(UnflattenGemm(), model)
    assert result.modified and result.stats == {"gemms_unflattened": 1}
    assert ops(out) == ["MatMul", "Add"]
    np.testing.assert_allclose(outputs(out)["y"], outputs(model)["y"], rtol=1e-6, atol=1e-6)


def test_zero_bias_is_dropped_and_transb_transposed():
    model = parse(_linear("float[2,5,8] x", "t = Constant<value = int64[3] {-1, 5, 4}>()", bias="float[4] {0, 0, 0, 0}",
                          gemm="Gemm<transB=1>", w=WT))
    result, out = apply(UnflattenGemm(), model)
    assert result.modified and ops(out) == ["MatMul"]
    np.testing.assert_allclose(outputs(out)["y"], outputs(model)["y"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("opset", [11, 17])
def test_dynamic_leading_dims_computed_from_shape(opset):
    """onnxsim's dynamic form: the second target is Concat(Shape(x)[:-1], [M]); Shape/Slice/Concat go too."""
    target = ("s = Shape(x)\n  h = Slice<starts=[0], ends=[-1], axes=[0]>(s)\n" if opset < 10 else
              "s = Shape(x)\n  z = Constant<value = int64[1] {0}>()\n  e = Constant<value = int64[1] {-1}>()\n  h = Slice(s, z, e)\n")
    target += "  n = Constant<value = int64[1] {4}>()\n  t = Concat<axis=0>(h, n)"
    model = parse(_linear("float[N,S,8] x", target, out="float[N,S,4] y"), opset=opset)
    result = PassManager("unflatten-gemm").run(model)
    stage = result.stages[0]
    assert stage.modified and stage.verification.status == "passed", stage.verification.detail
    assert ops(result.model) == ["MatMul", "Add"]


def test_other_target_stays_after_the_matmul():
    model = parse(_linear("float[2,5,8] x", "t = Constant<value = int64[4] {-1, 5, 2, 2}>()", out="float[2,5,2,2] y"))
    result, out = apply(UnflattenGemm(), model)
    assert result.modified and [op for op in ops(out) if op != "Constant"] == ["MatMul", "Add", "Reshape"]
    np.testing.assert_allclose(outputs(out)["y"], outputs(model)["y"], rtol=1e-6, atol=1e-6)


NEAR_MISSES = {
    "not a flatten of the leading dims": (
        _linear("float[2,5,8] x", "t = Constant<value = int64[3] {-1, 5, 4}>()").replace("{-1, 8}", "{-1, 8}").replace("float[2,5,8] x", "float[2,10,4] x"),
        "does not flatten the leading dims"),
    "alpha": (_linear("float[2,5,8] x", "t = Constant<value = int64[3] {-1, 5, 4}>()", gemm="Gemm<alpha=0.5>"), "not the plain product"),
    "a 0 in the second target": (_linear("float[2,5,8] x", "t = Constant<value = int64[3] {0, 5, 4}>()"), "has a 0 that copies a dim"),
    "flattened input read twice": (
        _linear("float[2,5,8] x", "t = Constant<value = int64[3] {-1, 5, 4}>()", out="float[2,5,4] y, float[10,8] a2", extra="a2 = Identity(a)"),
        "has other readers"),
    "runtime weights": (
        _linear("float[2,5,8] x, float[8,4] w2", "t = Constant<value = int64[3] {-1, 5, 4}>()").replace("m = Gemm(a, w, b)", "m = Gemm(a, w2, b)"),
        "B is not a constant matrix"),
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_near_misses_stay_untouched_with_a_reason(case):
    text, reason = NEAR_MISSES[case]
    model = parse(text)
    result, out = apply(UnflattenGemm(), model)
    assert not result.modified
    assert reason in result.why_nothing()
    assert sorted(ops(out)) == sorted(ops(model))


def test_candidates_are_found_on_the_proto():
    assert has_candidates(parse(NATURAL))
    assert not has_candidates(parse("""
g (float[2,8] x) => (float[2,4] y) {
  w = Constant<value = """ + W + """>()
  y = Gemm(x, w)
}"""))


def test_simplify_undoes_onnxsims_flattening_of_a_torch_linear(tmp_path):
    """A torch nn.Linear on a 3-D tensor with dynamic batch and length: onnxsim 0.8.1 writes it as
    Reshape -> Gemm -> Reshape with Shape -> Slice -> Concat for the target (6 nodes); simplify gives
    MatMul + Add, what the exporter wrote and onnxslim keeps."""
    import onnxsim
    import torch

    from tests.passes.torch_export import export

    torch.manual_seed(0)
    model = export(torch.nn.Linear(8, 4), (torch.randn(2, 5, 8),), tmp_path / "linear.onnx", dynamo=False,
                   input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N", 1: "S"}})
    sim, _ = onnxsim.simplify(model, check_n=0)
    assert "Gemm" in ops(sim) and len(ops(sim)) > 2
    result = PassManager("simplify").run(model)
    stage = result.stages[0]
    assert ops(result.model) == ["MatMul", "Add"] and "unflatten-gemm" in stage.stats["by"]
    assert stage.verification.status == "passed", stage.verification.detail
