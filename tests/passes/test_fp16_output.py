"""fp16-output: structure, documented bound, near-miss."""

from __future__ import annotations

import numpy as np
import onnx

from onnxforge.passes.fp16_output import Fp16Output
from tests.passes.helpers import apply, ops, outputs, parse

TWO_OUTPUTS = """
g (float[1,3,4,4] x) => (float[1,3,4,4] y, int64[1,1,4,4] labels) {
  y = Relu(x)
  labels = ArgMax<axis = 1, keepdims = 1>(x)
}"""


def test_structure_casts_float_outputs_only_and_keeps_names():
    result, model = apply(Fp16Output(), parse(TWO_OUTPUTS))
    assert result.modified and result.stats == {"outputs_cast": 1}
    assert ops(model) == ["Relu", "ArgMax", "Cast"] or sorted(ops(model)) == ["ArgMax", "Cast", "Relu"]
    out = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert out == {"y": onnx.TensorProto.FLOAT16, "labels": onnx.TensorProto.INT64}
    assert [s.target for s in result.skipped] == ["labels"]


def test_idempotent():
    _, once = apply(Fp16Output(), parse(TWO_OUTPUTS))
    again, _ = apply(Fp16Output(), once)
    assert not again.modified
    assert "not float32" in again.why_nothing()


def test_within_fp16_rounding_bound():
    model = parse(TWO_OUTPUTS)
    _, half = apply(Fp16Output(), model)
    ref, got = outputs(model), outputs(half)
    assert got["y"].dtype == np.float16
    # fp16 rounding: relative error at most 2**-11 for normal values
    np.testing.assert_allclose(got["y"].astype(np.float32), ref["y"], rtol=2**-11, atol=2**-24)
    np.testing.assert_array_equal(got["labels"], ref["labels"])


def test_near_miss_integer_output_only_is_untouched():
    result, model = apply(Fp16Output(outputs=("labels",)), parse(TWO_OUTPUTS))
    assert not result.modified
    assert "labels skipped: dtype is int64, not float32" in result.why_nothing()
    assert ops(model) == ["Relu", "ArgMax"]


def test_unknown_output_name_is_an_error():
    import pytest

    from onnxforge.errors import PassError

    with pytest.raises(PassError, match="no graph output 'nope' \\(outputs: y, labels\\)"):
        apply(Fp16Output(outputs=("nope",)), parse(TWO_OUTPUTS))
