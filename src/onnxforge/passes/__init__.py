"""Passes: named, verified rewrites of ONNX graphs, and the manager that runs them.

    from onnxforge.passes import optimize
    result = optimize(model, "simplify,resize-nearest,fp16-output")
"""

from __future__ import annotations

from onnxforge.passes.base import ModelState, NodeSelecting, Pass, PassKind, PassResult, Skip, option
from onnxforge.passes.manager import (
    DumpStages,
    Instrument,
    PassManager,
    PipelineResult,
    StageRecord,
    Verifier,
    optimize,
)
from onnxforge.passes.pipeline import Pipeline, parse_pipeline
from onnxforge.passes.registry import all_passes, get_pass, node_selecting, register

__all__ = [
    "DumpStages", "Instrument", "ModelState", "NodeSelecting", "Pass", "PassKind", "PassManager", "PassResult", "Pipeline",
    "PipelineResult", "Skip", "StageRecord", "Verifier", "all_passes", "get_pass", "node_selecting", "optimize", "option",
    "parse_pipeline", "register",
]
