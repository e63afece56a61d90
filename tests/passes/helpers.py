"""Tiny graphs for pass tests, written readably with the ONNX text format."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx

from onnxforge.numerics import run_model, seeded_inputs


def parse(text: str, opset: int = 17) -> onnx.ModelProto:
    """A model from ONNX text; the header is added here."""
    model = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : {opset}]>\n' + text)
    onnx.checker.check_model(model)
    return model


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(ops(model))


def apply(pass_obj, model: onnx.ModelProto):
    """Runs one pass through the verifying PassManager and returns (its PassResult, the new model)."""
    from tests.passes.conftest import run_verified

    return run_verified(pass_obj, model)


def outputs(model: onnx.ModelProto, seed: int = 1) -> dict[str, np.ndarray]:
    return run_model(model, seeded_inputs(model, seed))
