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
import onnx_graphsurgeon as gs

from onnxforge.passes._graph import Namer, select_names
from onnxforge.passes.base import ModelState, Pass, PassKind, PassResult, Skip, option
from onnxforge.passes.registry import register


@dataclass(frozen=True)
class Fp16OutputOptions:
    outputs: tuple[str, ...] = option((), "only these graph outputs (default: every float32 output)")


@register
class Fp16Output(Pass):
    name = "fp16-output"
    summary = "graph outputs become float16 (atc: --output_type=FP16)"
    kind = PassKind.APPROXIMATE
    Options = Fp16OutputOptions

    def run(self, state: ModelState) -> PassResult:
        graph = state.graph
        wanted = select_names(self.name, "output", self.options.outputs, [t.name for t in graph.outputs])
        skipped: list[Skip] = []
        namer = Namer(graph, "fp16_output")
        converted = 0
        new_outputs = []
        for out in graph.outputs:
            if out.name not in wanted:
                new_outputs.append(out)
                continue
            if out.dtype != np.float32:
                skipped.append(Skip(out.name, f"dtype is {np.dtype(out.dtype).name if out.dtype is not None else 'unknown'}, not float32"))
                new_outputs.append(out)
                continue
            name = out.name
            out.name = namer("fp32")
            half = gs.Variable(name, dtype=np.float16, shape=out.shape)
            graph.nodes.append(gs.Node("Cast", name=namer("cast"), attrs={"to": int(gs_onnx_float16())}, inputs=[out], outputs=[half]))
            new_outputs.append(half)
            converted += 1
        graph.outputs = new_outputs
        if not converted:
            return PassResult(False, skipped=skipped, notes=["no float32 graph output to convert"] if not skipped else [])
        return PassResult(True, {"outputs_cast": converted}, skipped=skipped)


def gs_onnx_float16() -> int:
    import onnx

    return onnx.TensorProto.FLOAT16
