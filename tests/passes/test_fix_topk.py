"""fix-topk: structure, the backend-only kind (the verifier checks nothing from it on, onnxruntime rejects
the output), numerics through onnx's reference evaluator, real torch exports, near-misses."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx.reference import ReferenceEvaluator

from onnxforge.errors import ForgeError
from onnxforge.numerics import make_session, seeded_inputs
from onnxforge.passes import PassManager
from onnxforge.passes.fix_topk import FixTopk
from onnxforge.passes.registry import shortcut, tagged
from tests.passes.helpers import apply, ops, outputs, parse

CONST_K = """
g (float[2,10] x) => (float[2,3] values, float[2,3] picked, int64[2,3] indices) {
  k = Constant<value = int64[1] {3}>()
  values, indices = TopK<axis = 1>(x, k)
  g = GatherElements<axis = 1>(x, indices)
  two = Constant<value = float {2.0}>()
  picked = Mul(g, two)
}"""

RUNTIME_K = """
g (float[2,10] x, int64[1] k) => (float[2,?] values, int64[2,?] indices) {
  values, indices = TopK<axis = 1, largest = 0>(x, k)
}"""


def _reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs from onnx's reference evaluator, which runs the non-standard graph (onnxruntime does not)."""
    names = [o.name for o in model.graph.output]
    return dict(zip(names, ReferenceEvaluator(model).run(None, feeds)))


def _k_type(model: onnx.ModelProto) -> int:
    topk = next(n for n in model.graph.node if n.op_type == "TopK")
    init = {i.name: i for i in model.graph.initializer}
    if topk.input[1] in init:
        return init[topk.input[1]].data_type
    producer = next(n for n in model.graph.node if topk.output and topk.input[1] in n.output)
    return next(a.i for a in producer.attribute if a.name == "to") if producer.op_type == "Cast" else -1


def test_structure_constant_k():
    result, model = apply(FixTopk(), parse(CONST_K))
    assert result.modified and result.stats == {"topk_fixed": 1}
    assert _k_type(model) == T.INT32
    topk = next(n for n in model.graph.node if n.op_type == "TopK")
    cast = next(n for n in model.graph.node if n.op_type == "Cast")
    assert list(cast.input) == [topk.output[1]] and list(cast.output) == ["indices"]  # the old name, int64 again
    assert next(n for n in model.graph.node if n.op_type == "GatherElements").input[1] == "indices"


def test_structure_runtime_k_gets_a_cast():
    result, model = apply(FixTopk(), parse(RUNTIME_K))
    assert result.modified and _k_type(model) == T.INT32
    assert ops(model).count("Cast") == 2


def test_idempotent():
    _, once = apply(FixTopk(), parse(CONST_K))
    again, twice = apply(FixTopk(), once)
    assert not again.modified and again.why_nothing() == "no TopK with an int64 k"
    assert ops(twice) == ops(once)


def test_backend_only_the_verifier_stops_checking_and_onnxruntime_rejects_the_output():
    model = parse(CONST_K)
    result = PassManager("fix-topk,merge-casts").run(model)
    first, second = result.stages
    assert first.kind == "backend-only" and first.modified
    assert first.verification.status == "off" and "not standard ONNX" in first.verification.detail
    assert second.verification.status in ("off", "unchanged")
    with pytest.raises(onnx.shape_inference.InferenceError):
        onnx.shape_inference.infer_shapes(result.model, check_type=True, strict_mode=True)
    with pytest.raises(ForgeError):
        make_session(result.model)


def test_not_in_the_ascend_shortcut_but_tagged():
    assert "fix-topk" in tagged("ascend") and "fix-topk" not in shortcut("ascend")


@pytest.mark.parametrize("text", [CONST_K, RUNTIME_K], ids=["constant-k", "runtime-k"])
def test_values_unchanged_on_the_reference_evaluator(text):
    model = parse(text)
    _, fixed = apply(FixTopk(), model)
    feeds = seeded_inputs(parse(CONST_K), 3) | ({"k": np.array([4], dtype=np.int64)} if "int64[1] k" in text else {})
    before, after = _reference(model, feeds), _reference(fixed, feeds)
    assert before.keys() == after.keys()
    for name in before:
        assert after[name].dtype == before[name].dtype
        np.testing.assert_array_equal(after[name], before[name])
    if text is CONST_K:  # the reference evaluator agrees with onnxruntime on the original
        np.testing.assert_allclose(outputs(model, 3)["picked"], before["picked"])


NEAR_MISSES = {
    "k over int32": (CONST_K.replace("int64[1] {3}", "int64[1] {3000000000}").replace("[2,3]", "[2,?]"), "does not fit int32"),
}


@pytest.mark.parametrize("case", sorted(NEAR_MISSES))
def test_near_misses_stay_untouched_with_a_reason(case):
    text, reason = NEAR_MISSES[case]
    model = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 17]>\n' + text)
    result, out = apply(FixTopk(), model)
    assert not result.modified and reason in result.why_nothing()
    assert ops(out) == ops(model)


def test_opset_9_topk_has_no_k_input():
    model = parse("""
g (float[2,10] x) => (float[2,3] values, int64[2,3] indices) {
  values, indices = TopK<axis = 1, k = 3>(x)
}""", opset=9)
    result, _ = apply(FixTopk(), model)
    assert not result.modified and result.why_nothing() == "no TopK with an int64 k"


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_torch_export(dynamo, tmp_path):
    import torch
    from tests.passes.torch_export import export

    class TopkPick(torch.nn.Module):
        def forward(self, x):
            v, i = x.topk(3, dim=1)
            return v, torch.gather(x, 1, i) * 2

    model = export(TopkPick(), (torch.randn(2, 10),), tmp_path / "topk.onnx", dynamo=dynamo, input_names=["x"], output_names=["v", "g"])
    result, fixed = apply(FixTopk(), model)
    assert result.modified and _k_type(fixed) == T.INT32
    feeds = seeded_inputs(model, 5)
    before, after = _reference(model, feeds), _reference(fixed, feeds)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
