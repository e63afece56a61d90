"""argmax-output: structure, exact label numerics through the manager, near-misses with reasons."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxforge.errors import PassError
from onnxforge.passes import PassManager, parse_pipeline
from onnxforge.passes.argmax_output import ArgmaxOutput
from tests.passes.helpers import apply, ops, outputs, parse

# A segmentation head with an auxiliary head (PSPNet-like): out is the main output, aux the FCN head.
SEG = """
g (float[1,3,6,6] x) => (float[1,5,6,6] out, float[1,5,6,6] aux) {
  w = Constant<value = float[5,3,1,1] {1,2,3,4,5,6,7,8,9,10,11,12,13,14,15}>()
  v = Constant<value = float[5,3,1,1] {3,1,2,6,4,5,9,7,8,12,10,11,15,13,14}>()
  out = Conv(x, w)
  aux = Conv(x, v)
}"""


def _out(model: onnx.ModelProto, name: str) -> tuple[int, list[int]]:
    vi = next(o for o in model.graph.output if o.name == name)
    return vi.type.tensor_type.elem_type, [d.dim_value for d in vi.type.tensor_type.shape.dim]


def test_structure_first_output_only_name_kept():
    result, model = apply(ArgmaxOutput(), parse(SEG))
    assert result.modified and result.stats == {"outputs_labelled": 1, "dtype": "int64"}
    assert sorted(ops(model)) == ["ArgMax", "Constant", "Constant", "Conv", "Conv"]
    assert [o.name for o in model.graph.output] == ["out", "aux"]
    assert _out(model, "out") == (onnx.TensorProto.INT64, [1, 1, 6, 6])
    assert _out(model, "aux") == (onnx.TensorProto.FLOAT, [1, 5, 6, 6])


def test_structure_int32_without_keepdims_on_selected_outputs():
    result, model = apply(ArgmaxOutput(dtype="int32", keepdims=False, outputs=("out", "aux")), parse(SEG))
    assert result.stats["outputs_labelled"] == 2
    assert ops(model).count("Cast") == 2 and ops(model).count("ArgMax") == 2
    assert _out(model, "out") == _out(model, "aux") == (onnx.TensorProto.INT32, [1, 6, 6])


def test_idempotent():
    _, once = apply(ArgmaxOutput(), parse(SEG))
    again, twice = apply(ArgmaxOutput(), once)
    assert not again.modified and again.why_nothing() == "out skipped: already labels (int64)"
    assert ops(twice) == ops(once)


@pytest.mark.parametrize("pipeline", ["argmax-output", "argmax-output{keepdims=false,dtype=int32,outputs=out|aux}"])
def test_numerics_labels_equal_argmax_of_previous_logits(pipeline):
    model = parse(SEG)
    result = PassManager(pipeline).run(model)
    stage = result.stages[0]
    assert stage.verification.status == "passed", stage.verification.detail
    p = parse_pipeline(pipeline).passes[0]
    ref, got = outputs(model), outputs(result.model)
    for name in p.options.outputs or ("out",):
        labels = np.argmax(ref[name], axis=1)
        np.testing.assert_array_equal(got[name].reshape(labels.shape), labels)
        assert got[name].dtype == np.dtype(p.options.dtype)
    if not p.options.outputs:
        np.testing.assert_array_equal(got["aux"], ref["aux"])


@pytest.mark.parametrize("text, reason", [
    ("g (float[1,8] x) => (float[1,8] y) { y = Relu(x) }", "rank 2, not an N,C,H,W map"),
    ("g (float[1,1,4,4] x) => (float[1,1,4,4] y) { y = Sigmoid(x) }", "1 channel(s) on axis 1"),
    ("g (float[1,3,4,4] x) => (int64[1,1,4,4] y) { y = ArgMax<axis = 1, keepdims = 1>(x) }", "already labels (int64)"),
])
def test_near_misses_untouched_with_reasons(text, reason):
    model = parse(text)
    result, out = apply(ArgmaxOutput(), model)
    assert not result.modified and reason in result.why_nothing()
    assert ops(out) == ops(model)


def test_unknown_output_name_is_an_error():
    with pytest.raises(PassError, match="no graph output 'logits' \\(outputs: out, aux\\)"):
        apply(ArgmaxOutput(outputs=("logits",)), parse(SEG))
