"""drop-empty-slice: a Slice that yields nothing along a Concat's axis is removed from that Concat.

Before -> After::

    x[:, 0:0] -> Slice -> e (N,0,H,W);  a, e, b -> Concat<axis=1> -> y        a, b -> Concat<axis=1> -> y

Why: atc rejects or mis-tiles zero-sized tensors (a StridedSlice with an empty output, a ConcatD input
of size 0), and the task costs a launch for nothing (Ascend's surgeon knowledge for empty slices).
Exporters write them for boundary cases of generic code, e.g. ``torch.cat([x[:, :k], y], 1)`` with
``k = 0``, or a channel shift of zero.

Legal when: the Slice's input shape is static along the sliced axes and its constant arguments give
length 0 on the Concat's axis (ONNX Slice clamps like numpy, so the length is numpy's), its output
feeds only Concats on that axis and is not a graph output, and each such Concat keeps another input.
An empty input contributes nothing along the concatenation axis, so the pass is exact. A Slice empty
on another axis is kept with the reason (the Concat's output is then empty too, and dropping an
input would change its shape).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import is_graph_output, node_label, static_shape
from onnxforge.passes._rewrite import Match, Rule, RuleContext, RulePass
from onnxforge.passes._slices import SliceParams, slice_params
from onnxforge.passes.base import PassKind, Skip
from onnxforge.passes.registry import register


def sliced_lengths(params: SliceParams, shape: tuple[int, ...]) -> dict[int, int] | None:
    """Output length per sliced axis (non-negative axes), numpy's clamping; None if an axis is out of range."""
    rank = len(shape)
    lengths = {}
    for start, end, axis, step in zip(params.starts, params.ends, params.axes, params.steps):
        if not -rank <= axis < rank or step == 0:
            return None
        axis %= rank
        lengths[axis] = len(range(*slice(start, end, step).indices(shape[axis])))
    return lengths


class DropEmpty(Rule):
    """A Slice empty along the axis of the Concats it feeds leaves them and the graph."""

    name = "empty_slices_removed"
    op_types = ("Slice",)

    def match(self, node: gs.Node, ctx: RuleContext) -> Match | Skip | None:
        found = match(ctx.graph, node, ctx.opset)
        return Match(node_label(node), node=node) if found is True else found

    def rewrite(self, m: Match, builder: GraphBuilder) -> None:
        rewrite(builder.graph, m.node)


@register
class DropEmptySlice(RulePass):
    name = "drop-empty-slice"
    summary = "removes a Slice that is empty along a Concat's axis from the Concats it feeds"
    kind = PassKind.EXACT
    tags = ("ascend",)

    def rules(self) -> list[Rule]:
        return [DropEmpty()]

    def nothing_to_do(self, ctx: RuleContext) -> str | None:
        return "no empty Slice"


def match(graph: gs.Graph, node: gs.Node, opset: int) -> Skip | bool | None:
    """True when the empty Slice can go; a Skip with the reason; None when it is not known to be empty."""
    shape = static_shape(node.inputs[0])
    params = slice_params(node, opset)
    if shape is None or isinstance(params, str):
        return None
    lengths = sliced_lengths(params, shape)
    if lengths is None or 0 not in lengths.values():
        return None
    label, out = node_label(node), node.outputs[0]
    if is_graph_output(graph, out):
        return Skip(label, "its output is a graph output")
    users = {id(n): n for n in out.outputs}.values()
    if not users:
        return Skip(label, "its output is unused")
    rank = len(shape)
    for user in users:
        if user.op != "Concat":
            return Skip(label, f"its output also feeds {user.op}")
        axis = int(user.attrs.get("axis", 0)) % rank
        if lengths.get(axis, shape[axis]) != 0:
            empty = sorted(a for a, n in lengths.items() if n == 0)
            return Skip(label, f"it is empty on axis {empty[0]}, {node_label(user)} concatenates axis {axis}")
        if all(t is out for t in user.inputs):
            return Skip(label, f"it is every input of {node_label(user)}")
    return True


def rewrite(graph: gs.Graph, node: gs.Node) -> None:
    """The Slice's output leaves every Concat's inputs; the Slice is removed."""
    out = node.outputs[0]
    for user in list({id(n): n for n in out.outputs}.values()):
        kept = [t for t in user.inputs if t is not out]
        user.inputs.clear()
        user.inputs.extend(kept)
    node.outputs.clear()
    node.inputs.clear()
    graph.nodes.remove(node)
