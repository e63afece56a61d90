"""drop-softmax-argmax: removes a Softmax (or LogSoftmax) that only feeds ArgMax over the same axis.

Before -> After::

    logits -> Softmax<axis=1> -> ArgMax<axis=1> -> labels        logits -> ArgMax<axis=1> -> labels

mmseg's PSPNet export ends this way. Legal because (log-)softmax is strictly increasing in its input
along the normalized axis: every element compared by the ArgMax shares one normalizer. That holds for
opset 13's one-axis Softmax and for the older one that normalizes all axes from `axis` on (the ArgMax
varies only `axis`, so the leading indices, and with them the normalizer, are shared). Required:
every consumer is an ArgMax over that same axis, and the (log-)softmax output is not a graph output.
Anything else is left untouched with the reason.

Exact for labels, up to ties that rounding creates: logits closer than float resolution can round to
equal probabilities, where ArgMax(softmax) picks the first and ArgMax(logits) the larger logit. The
verifier's seeded inputs do not hit this; on real data it changes labels only where the model was
undecided to within float precision.
"""

from __future__ import annotations

from typing import Callable

import onnx
import onnx_graphsurgeon as gs

from onnxforge.passes._graph import is_graph_output, node_label
from onnxforge.passes.base import ModelState, Pass, PassKind, PassResult, Skip
from onnxforge.passes.registry import register


@register
class DropSoftmaxArgmax(Pass):
    name = "drop-softmax-argmax"
    summary = "removes a Softmax/LogSoftmax whose only consumers are ArgMax over the same axis"
    kind = PassKind.EXACT

    def run(self, state: ModelState) -> PassResult:
        graph = state.graph
        opset = int(graph.opset)
        removed = 0
        skipped: list[Skip] = []
        inferred: dict[str, int] = {}  # ranks by shape inference, computed once and only if needed

        def rank_of(node: gs.Node) -> int | None:
            for tensor in (node.outputs[0], node.inputs[0]):
                if getattr(tensor, "shape", None) is not None:
                    return len(tensor.shape)
            if not inferred:
                inferred.update(_inferred_ranks(state))
            return inferred.get(node.outputs[0].name)

        for node in list(graph.nodes):
            if node.op not in ("Softmax", "LogSoftmax") or node.domain not in (None, "", "ai.onnx"):
                continue
            reason = _why_not(graph, node, opset, rank_of)
            if reason:
                skipped.append(Skip(node_label(node), reason))
                continue
            x = node.inputs[0]
            for argmax in list(node.outputs[0].outputs):
                argmax.inputs[0] = x
            removed += 1
        if not removed:
            return PassResult(False, skipped=skipped, notes=[] if skipped else ["no Softmax or LogSoftmax in the graph"])
        return PassResult(True, {"softmax_removed": removed}, skipped=skipped)


def _inferred_ranks(state: ModelState) -> dict[str, int]:
    """Tensor ranks by ONNX shape inference on a copy (the model itself is not annotated)."""
    model = onnx.shape_inference.infer_shapes(state.to_model())
    ranks = {}
    for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        if vi.type.tensor_type.HasField("shape"):
            ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    return ranks


def _why_not(graph: gs.Graph, node: gs.Node, opset: int, rank_of: Callable[[gs.Node], int | None]) -> str:
    """Empty when the (log-)softmax can go; else why it stays."""
    out = node.outputs[0]
    if is_graph_output(graph, out):
        return "its output is a graph output"
    consumers = list(out.outputs)
    if not consumers:
        return "its output is unused"
    others = sorted({c.op for c in consumers if c.op != "ArgMax"})
    if others:
        return f"its output also feeds {', '.join(others)}"
    axis = int(node.attrs.get("axis", -1 if opset >= 13 else 1))
    for argmax in consumers:
        arg_axis = int(argmax.attrs.get("axis", 0))
        if axis == arg_axis:
            continue
        rank = rank_of(node)
        if rank is None and (axis < 0) != (arg_axis < 0):
            return f"the rank is unknown, so axis {axis} and ArgMax axis {arg_axis} cannot be compared"
        if rank is None or axis % rank != arg_axis % rank:
            return f"{node_label(argmax)} reduces axis {arg_axis}, the {node.op} normalizes axis {axis}"
    return ""
