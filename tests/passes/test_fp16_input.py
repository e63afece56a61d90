"""fp16-input: structure, the outputs equal the original's on the fp16-rounded input, near-misses."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxforge.errors import PassError
from onnxforge.numerics import run_model, seeded_inputs
from onnxforge.passes import PassManager
from onnxforge.passes.fp16_input import Fp16Input
from tests.passes.helpers import apply, ops, parse

TWO_INPUTS = """
g (float[1,3,4,4] x, int64[1,1,4,4] idx, float[1,3,4,4] bias) => (float[1,3,4,4] y, int64[1,1,4,4] idx2) {
  w = Constant<value = float[3,3,1,1] {1,2,3,4,5,6,7,8,9}>()
  c = Conv(x, w)
  y = Add(c, bias)
  idx2 = Identity(idx)
}"""


def _inputs(model: onnx.ModelProto) -> dict[str, int]:
    return {i.name: i.type.tensor_type.elem_type for i in model.graph.input}


def test_structure_float_inputs_become_fp16_names_kept():
    result, model = apply(Fp16Input(), parse(TWO_INPUTS))
    assert result.modified and result.stats == {"inputs_cast": 2}
    assert _inputs(model) == {"x": onnx.TensorProto.FLOAT16, "idx": onnx.TensorProto.INT64, "bias": onnx.TensorProto.FLOAT16}
    assert ops(model).count("Cast") == 2
    assert [s.target for s in result.skipped] == ["idx"] and "dtype is int64, not float32" in result.skipped[0].reason


def test_structure_subset():
    result, model = apply(Fp16Input(inputs=("x",)), parse(TWO_INPUTS))
    assert result.stats == {"inputs_cast": 1}
    assert _inputs(model)["x"] == onnx.TensorProto.FLOAT16 and _inputs(model)["bias"] == onnx.TensorProto.FLOAT


def test_idempotent():
    _, once = apply(Fp16Input(), parse(TWO_INPUTS))
    again, twice = apply(Fp16Input(), once)
    assert not again.modified and "x skipped: already float16" in again.why_nothing()
    assert ops(twice) == ops(once)


def test_outputs_equal_the_original_on_the_rounded_input():
    model = parse(TWO_INPUTS)
    result = PassManager("fp16-input").run(model)
    assert result.stages[0].verification.status == "measured"
    feeds = seeded_inputs(model, 5)
    rounded = {k: (v.astype(np.float16).astype(np.float32) if v.dtype == np.float32 else v) for k, v in feeds.items()}
    got = run_model(result.model, feeds)  # run_model casts the float32 feeds to the declared float16
    ref = run_model(model, rounded)
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name])


def test_near_miss_non_float_and_passthrough_inputs_untouched():
    model = parse("""
g (int64[1,4] ids, float[1,4] x) => (int64[1,4] out, float[1,4] x) {
  out = Identity(ids)
}""")
    result, out = apply(Fp16Input(), model)
    assert not result.modified
    assert "ids skipped: dtype is int64, not float32" in result.why_nothing()
    assert "x skipped: it is also a graph output" in result.why_nothing()
    assert ops(out) == ["Identity"]


def test_unknown_input_name_is_an_error():
    with pytest.raises(PassError, match="no graph input 'img' \\(inputs: x, idx, bias\\)"):
        apply(Fp16Input(inputs=("img",)), parse(TWO_INPUTS))
