"""fp16-output: graph outputs become float16 (what atc's `--output_type=FP16` does on the device).

Before -> After::

    ... -> X (float32, graph output "out")      ... -> X' (float32) -> Cast(to=FLOAT16) -> "out" (float16)

Applies to float32 graph outputs; integer outputs (labels) are skipped with a reason. The output names
stay the same. Approximate: values are rounded to fp16 (relative error <= 2**-11, values above 65504
overflow to inf), which the evaluator measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._rewrite import GraphIORule, Rule, RuleContext, RulePass
from onnxforge.passes.base import PassKind, option
from onnxforge.passes.registry import register


@dataclass(frozen=True)
class Fp16OutputOptions:
    outputs: tuple[str, ...] = option((), "only these graph outputs (default: every float32 output)")


class HalfOutput(GraphIORule):
    """A float32 graph output is cast to float16; the float16 tensor takes the output's name."""

    name = "outputs_cast"
    side = "output"
    option = "outputs"
    hint = "fp32"

    def why_not(self, out: gs.Tensor, ctx: RuleContext) -> str:
        if out.dtype != np.float32:
            return f"dtype is {np.dtype(out.dtype).name if out.dtype is not None else 'unknown'}, not float32"
        return ""

    def replace(self, out: gs.Tensor, builder: GraphBuilder) -> gs.Variable:
        return builder.cast(out, onnx.TensorProto.FLOAT16, out=gs.Variable(out.name, shape=out.shape), hint="cast")


@register
class Fp16Output(RulePass):
    name = "fp16-output"
    summary = "graph outputs become float16 (atc: --output_type=FP16)"
    kind = PassKind.APPROXIMATE
    Options = Fp16OutputOptions

    def rules(self) -> list[Rule]:
        return [HalfOutput()]

    def nothing_to_do(self, ctx: RuleContext) -> str:
        return "no float32 graph output to convert"
