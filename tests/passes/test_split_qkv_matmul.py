"""split-qkv-matmul: structure, numerics through the manager, real torch exports (both exporters, index
and unbind forms, the simplified Gemm form), near-misses left untouched with reasons."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge.passes import PassManager
from onnxforge.passes.split_qkv_matmul import SplitQkvMatmul
from tests.passes.helpers import apply, op_counts, ops, outputs, parse


def _floats(n: int, seed: int) -> str:
    return ", ".join(f"{v:.3f}" for v in np.random.default_rng(seed).normal(size=n))


def _qkv(parts: str = "index", extra: str = "", weight: str = "", reshape: str = "1, 5, 3, 2, 2", heads_out: str = "1,2,5,2") -> str:
    """x (1x5x8) -> MatMul(W 8x12) -> Add(b) -> Reshape(1,5,3,2,2) -> Transpose(2,0,3,1,4) -> q, k, v."""
    take = {
        "index": """
  i0 = Constant<value = int64 {0}>()
  i1 = Constant<value = int64 {1}>()
  i2 = Constant<value = int64 {-1}>()
  q = Gather<axis = 0>(t, i0)
  k = Gather<axis = 0>(t, i1)
  v = Gather<axis = 0>(t, i2)""",
        "split": """
  ones = Constant<value = int64[3] {1, 1, 1}>()
  ax = Constant<value = int64[1] {0}>()
  q1, k1, v1 = Split<axis = 0>(t, ones)
  q = Squeeze(q1, ax)
  k = Squeeze(k1, ax)
  v = Squeeze(v1, ax)""",
        "slice": """
  ax = Constant<value = int64[1] {0}>()
  s0 = Constant<value = int64[1] {0}>()
  s1 = Constant<value = int64[1] {1}>()
  s2 = Constant<value = int64[1] {2}>()
  s3 = Constant<value = int64[1] {3}>()
  q1 = Slice(t, s0, s1, ax)
  k1 = Slice(t, s1, s2, ax)
  v1 = Slice(t, s2, s3, ax)
  q = Squeeze(q1, ax)
  k = Squeeze(k1, ax)
  v = Squeeze(v1, ax)""",
    }[parts]
    w = weight or f"w = Constant<value = float[8,12] {{{_floats(96, 1)}}}>()"
    return f"""
g (float[1,5,8] x{extra}) => (float[{heads_out}] q, float[{heads_out}] k, float[{heads_out}] v) {{
  {w}
  b = Constant<value = float[12] {{{_floats(12, 2)}}}>()
  shape = Constant<value = int64[5] {{{reshape}}}>()
  y = MatMul(x, w)
  yb = Add(b, y)
  r = Reshape(yb, shape)
  t = Transpose<perm = [2, 0, 3, 1, 4]>(r){take}
}}"""


GEMM = f"""
g (float[5,8] x) => (float[1,2,5,2] q, float[1,2,5,2] k, float[1,2,5,2] v) {{
  w = Constant<value = float[12,8] {{{_floats(96, 3)}}}>()
  b = Constant<value = float[12] {{{_floats(12, 4)}}}>()
  shape = Constant<value = int64[5] {{1, 5, 3, 2, 2}}>()
  y = Gemm<transB = 1>(x, w, b)
  r = Reshape(y, shape)
  t = Transpose<perm = [2, 0, 3, 1, 4]>(r)
  i0 = Constant<value = int64 {{0}}>()
  i1 = Constant<value = int64 {{1}}>()
  i2 = Constant<value = int64 {{2}}>()
  q = Gather<axis = 0>(t, i0)
  k = Gather<axis = 0>(t, i1)
  v = Gather<axis = 0>(t, i2)
}}"""


def test_structure():
    result, model = apply(SplitQkvMatmul(), parse(_qkv()))
    assert result.modified and result.stats == {"projections_split": 1}
    counts = op_counts(model)
    assert counts["MatMul"] == counts["Add"] == counts["Reshape"] == counts["Transpose"] == 3
    assert "Gather" not in counts
    weights = sorted(tuple(i.dims) for i in model.graph.initializer if len(i.dims) == 2)
    assert weights == [(8, 4)] * 3


def test_idempotent():
    _, once = apply(SplitQkvMatmul(), parse(_qkv()))
    again, twice = apply(SplitQkvMatmul(), once)
    assert not again.modified and again.why_nothing() == "no projection -> Reshape -> Transpose -> parts pattern"
    assert ops(twice) == ops(once)


@pytest.mark.parametrize("text", [_qkv("index"), _qkv("split"), _qkv("slice"), GEMM], ids=["index", "split", "slice", "gemm"])
def test_numerics_through_manager(text):
    model = parse(text)
    result = PassManager("split-qkv-matmul").run(model)
    stage = result.stages[0]
    assert stage.modified and stage.verification.status == "passed", stage.verification.detail
    assert not {"Gather", "Split", "Slice", "Squeeze"} & set(ops(result.model))
    before, after = outputs(model), outputs(result.model)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-5, atol=1e-5)


def test_a_part_read_by_a_reshape_as_simplify_leaves_it():
    text = _qkv("slice").replace("  k = Squeeze(k1, ax)", "  kshape = Constant<value = int64[4] {1, 2, -1, 2}>()\n  k = Reshape(k1, kshape)")
    model = parse(text)
    result = PassManager("split-qkv-matmul").run(model)
    assert result.stages[0].modified and result.stages[0].verification.status == "passed"
    assert op_counts(result.model)["MatMul"] == 3 and not {"Slice", "Squeeze"} & set(ops(result.model))


def test_unread_part_gets_no_matmul():
    text = _qkv().replace("  v = Gather<axis = 0>(t, i2)", "  v = Identity(q)")
    result, model = apply(SplitQkvMatmul(), parse(text))
    assert result.modified and op_counts(model)["MatMul"] == 2


NEAR_MISSES = {
    "runtime weight": (_qkv(extra=", float[8,12] w", weight="wx = Identity(x)"), "is computed at run time"),
    "projection used elsewhere": (_qkv().replace("q = Gather<axis = 0>(t, i0)", "q0 = Gather<axis = 0>(t, i0)\n  m = ReduceMean<keepdims = 0>(yb)\n  q = Add(q0, m)"),
                                  "the projection's output has other uses"),
    "other reader": (_qkv().replace("v = Gather<axis = 0>(t, i2)", "v = ReduceSum<keepdims = 0>(t, ax2)").replace(
        "i2 = Constant<value = int64 {-1}>()", "ax2 = Constant<value = int64[1] {0}>()"), "it also feeds ReduceSum"),
    "width not split into parts": (_qkv(reshape="1, 15, 2, 2, 1", heads_out="1,2,15,1"), "does not split the projection's width"),
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_near_misses_stay_untouched_with_a_reason(case):
    text, reason = NEAR_MISSES[case]
    model = parse(text)
    result, out = apply(SplitQkvMatmul(), model)
    assert not result.modified
    if reason is not None:
        assert reason in result.why_nothing()
    assert sorted(ops(out)) == sorted(ops(model))


# -- real exporter output -------------------------------------------------------------------------

def _attention(unbind: bool):
    import torch

    class Attention(torch.nn.Module):
        """timm's ViT Attention (qkv = Linear(x).reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4))."""

        def __init__(self, dim: int = 16, heads: int = 2) -> None:
            super().__init__()
            self.heads = heads
            self.qkv = torch.nn.Linear(dim, dim * 3)
            self.proj = torch.nn.Linear(dim, dim)

        def forward(self, x):
            B, N, C = x.shape
            qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0) if unbind else (qkv[0], qkv[1], qkv[2])
            attn = (q @ k.transpose(-2, -1) * (C // self.heads) ** -0.5).softmax(-1)
            return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))

    torch.manual_seed(0)
    return Attention()


@pytest.fixture(scope="module", params=[(False, False), (False, True), (True, False), (True, True)],
                ids=["torchscript-index", "torchscript-unbind", "dynamo-index", "dynamo-unbind"])
def exported(request, tmp_path_factory):
    import torch
    from tests.passes.torch_export import export

    dynamo, unbind = request.param
    path = tmp_path_factory.mktemp("qkv") / "attn.onnx"
    return export(_attention(unbind), (torch.randn(1, 5, 16),), path, dynamo=dynamo, input_names=["x"], output_names=["y"])


def test_torch_export_is_split_and_exact(exported):
    result = PassManager("split-qkv-matmul").run(exported)
    stage = result.stages[0]
    assert stage.modified and stage.stats["projections_split"] == 1
    assert stage.verification.status == "passed", stage.verification.detail
    assert not {"Gather", "Split", "Slice", "Squeeze"} & set(ops(result.model))
    assert op_counts(result.model)["MatMul"] == op_counts(exported)["MatMul"] + 2


def test_torch_export_after_onnxsim_is_split_as_gemms(exported):
    simplified = PassManager("simplify{slim=false}").run(exported).model  # plain onnxsim: Reshape -> Gemm -> Reshape
    result = PassManager("split-qkv-matmul").run(simplified)
    stage = result.stages[0]
    assert stage.modified and stage.verification.status == "passed", stage.verification.detail
    assert op_counts(result.model)["Gemm"] == op_counts(simplified)["Gemm"] + 2


def test_torch_export_after_simplify_is_split_as_matmuls(exported):
    """simplify gives onnxsim's Reshape -> Gemm -> Reshape back as MatMul + Add (unflatten-gemm): the
    projection is split in that form."""
    simplified = PassManager("simplify").run(exported).model
    result = PassManager("split-qkv-matmul").run(simplified)
    stage = result.stages[0]
    assert stage.modified and stage.verification.status == "passed", stage.verification.detail
    assert op_counts(result.model)["MatMul"] == op_counts(simplified)["MatMul"] + 2
