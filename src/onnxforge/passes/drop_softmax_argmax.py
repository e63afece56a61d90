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

import onnx_graphsurgeon as gs

from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import is_graph_output, node_label
from onnxforge.passes._rewrite import Match, Rule, RuleContext, RulePass, replace_all_uses
from onnxforge.passes.base import PassKind, Skip
from onnxforge.passes.registry import register


class DropSoftmaxBeforeArgmax(Rule):
    """Softmax/LogSoftmax -> ArgMax(s) over the same axis: the ArgMaxes read the logits directly."""

    name = "softmax_removed"
    op_types = ("Softmax", "LogSoftmax")

    def match(self, node: gs.Node, ctx: RuleContext) -> Match | Skip:
        out = node.outputs[0]
        if is_graph_output(ctx.graph, out):
            return self.skip(node, "its output is a graph output")
        consumers = list(out.outputs)
        if not consumers:
            return self.skip(node, "its output is unused")
        others = sorted({c.op for c in consumers if c.op != "ArgMax"})
        if others:
            return self.skip(node, f"its output also feeds {', '.join(others)}")
        axis = int(node.attrs.get("axis", -1 if ctx.opset >= 13 else 1))
        for argmax in consumers:
            arg_axis = int(argmax.attrs.get("axis", 0))
            if axis == arg_axis:
                continue
            rank = _rank(node, ctx)
            if rank is None and (axis < 0) != (arg_axis < 0):
                return self.skip(node, f"the rank is unknown, so axis {axis} and ArgMax axis {arg_axis} cannot be compared")
            if rank is None or axis % rank != arg_axis % rank:
                return self.skip(node, f"{node_label(argmax)} reduces axis {arg_axis}, the {node.op} normalizes axis {axis}")
        return Match(node_label(node), node=node)

    def rewrite(self, match: Match, builder: GraphBuilder) -> None:
        node = match.node
        replace_all_uses(builder.graph, node.outputs[0], node.inputs[0])


def _rank(node: gs.Node, ctx: RuleContext) -> int | None:
    for tensor in (node.outputs[0], node.inputs[0]):
        if getattr(tensor, "shape", None) is not None:
            return len(tensor.shape)
    dims = ctx.types().get(node.outputs[0].name, (0, None))[1]
    return len(dims) if dims is not None else None


@register
class DropSoftmaxArgmax(RulePass):
    name = "drop-softmax-argmax"
    summary = "removes a Softmax/LogSoftmax whose only consumers are ArgMax over the same axis"
    kind = PassKind.EXACT

    def rules(self) -> list[Rule]:
        return [DropSoftmaxBeforeArgmax()]

    def nothing_to_do(self, ctx: RuleContext) -> str:
        return "no Softmax or LogSoftmax in the graph"
