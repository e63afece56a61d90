"""fp16-input: float32 graph inputs become float16, cast back to float32 inside (atc: `--input_fp16_nodes`).

Before -> After::

    "x" (float32) -> Conv ...              "x" (float16) -> Cast<to=FLOAT> -> x' (float32) -> Conv ...

The host sends half the bytes; the model computes as before on the rounded input. Input names stay the
same (they are what `--input_fp16_nodes` names). Applies to float32 inputs, all of them or those in
`inputs=`; other dtypes are skipped with the reason, and so is an input that is also a graph output
(renaming it would rename the output). Approximate: the input is rounded to float16 (relative error
<= 2**-11, magnitudes above 65504 become inf); the model then sees exactly that rounded value, so
its outputs equal the original model's outputs on the rounded input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import is_graph_output
from onnxforge.passes._rewrite import GraphIORule, Rule, RuleContext, RulePass
from onnxforge.passes.base import PassKind, option
from onnxforge.passes.registry import register


@dataclass(frozen=True)
class Fp16InputOptions:
    inputs: tuple[str, ...] = option((), "only these graph inputs (default: every float32 input)")


class HalfInput(GraphIORule):
    """A float32 graph input becomes float16 under the same name, cast to float32 inside."""

    name = "inputs_cast"
    side = "input"
    option = "inputs"
    hint = "fp32"

    def why_not(self, inp: gs.Tensor, ctx: RuleContext) -> str:
        if inp.dtype is None:
            return "dtype unknown"
        dtype = np.dtype(inp.dtype)
        if dtype == np.float16:
            return "already float16"
        if dtype != np.float32:
            return f"dtype is {dtype.name}, not float32"
        if is_graph_output(ctx.graph, inp):
            return "it is also a graph output"
        return ""

    def replace(self, inp: gs.Tensor, builder: GraphBuilder) -> gs.Variable:
        half = gs.Variable(inp.name, dtype=np.float16, shape=inp.shape)
        builder.cast(half, onnx.TensorProto.FLOAT, out=inp, hint="Cast")
        return half


@register
class Fp16Input(RulePass):
    name = "fp16-input"
    summary = "graph float32 inputs become float16, cast to float32 inside (atc: --input_fp16_nodes)"
    kind = PassKind.APPROXIMATE
    Options = Fp16InputOptions

    def rules(self) -> list[Rule]:
        return [HalfInput()]

    def nothing_to_do(self, ctx: RuleContext) -> str:
        return "the graph has no inputs"
