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

from onnxforge.passes._graph import Namer, select_names, is_graph_output
from onnxforge.passes.base import ModelState, Pass, PassKind, PassResult, Skip, option
from onnxforge.passes.registry import register


@dataclass(frozen=True)
class Fp16InputOptions:
    inputs: tuple[str, ...] = option((), "only these graph inputs (default: every float32 input)")


@register
class Fp16Input(Pass):
    name = "fp16-input"
    summary = "graph float32 inputs become float16, cast to float32 inside (atc: --input_fp16_nodes)"
    kind = PassKind.APPROXIMATE
    Options = Fp16InputOptions

    def run(self, state: ModelState) -> PassResult:
        graph = state.graph
        names = [t.name for t in graph.inputs]
        wanted = select_names(self.name, "input", self.options.inputs, names)
        namer = Namer(graph, "fp16_input")
        skipped: list[Skip] = []
        new_inputs = []
        converted = 0
        for inp in graph.inputs:
            if inp.name not in wanted:
                new_inputs.append(inp)
                continue
            reason = _why_not(graph, inp)
            if reason:
                skipped.append(Skip(inp.name, reason))
                new_inputs.append(inp)
                continue
            name = inp.name
            inp.name = namer("fp32")
            half = gs.Variable(name, dtype=np.float16, shape=inp.shape)
            graph.nodes.append(gs.Node("Cast", name=namer("Cast"), attrs={"to": onnx.TensorProto.FLOAT}, inputs=[half], outputs=[inp]))
            new_inputs.append(half)
            converted += 1
        graph.inputs = new_inputs
        if not converted:
            return PassResult(False, skipped=skipped, notes=[] if skipped else ["the graph has no inputs"])
        return PassResult(True, {"inputs_cast": converted}, skipped=skipped)


def _why_not(graph: gs.Graph, inp: gs.Tensor) -> str:
    if inp.dtype is None:
        return "dtype unknown"
    dtype = np.dtype(inp.dtype)
    if dtype == np.float16:
        return "already float16"
    if dtype != np.float32:
        return f"dtype is {dtype.name}, not float32"
    if is_graph_output(graph, inp):
        return "it is also a graph output"
    return ""
