"""merge-slices: two consecutive Slice nodes on different axes of one tensor become one Slice.

Before -> After::

    x -> Slice(starts=[0], ends=[3], axes=[1]) -> t -> Slice(starts=[2], ends=[6], axes=[3]) -> y
    x -> Slice(starts=[0, 2], ends=[3, 6], axes=[1, 3]) -> y

Exporters emit such chains for ``x[:, :3, :, 2:6]`` (one Slice per indexed axis); a backend launches
one kernel instead of two and the intermediate tensor disappears. Legal when every parameter of
both Slices is a constant, the axes do not overlap (negative axes need a known rank to compare),
and the first Slice's output feeds only the second (and is no graph output). Exact: slicing
different axes commutes, so one Slice with both axes selects the same elements.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import node_label
from onnxforge.passes._slices import slice_params
from onnxforge.passes._rewrite import Match, Rule, RuleContext, RulePass, sole_consumer
from onnxforge.passes.base import PassKind, Skip
from onnxforge.passes.registry import register


def _params(node: gs.Node, rank: int | None, opset: int) -> tuple[list[int], ...] | str:
    """(starts, ends, axes, steps) of a Slice, axes made non-negative, or why they are not known."""
    p = slice_params(node, opset)
    if isinstance(p, str):
        return f"{node_label(node)}: {p}"
    if any(a < 0 for a in p.axes) and rank is None:
        return f"{node_label(node)} has a negative axis and the rank is unknown"
    return p.starts, p.ends, [a % rank if rank else a for a in p.axes], p.steps


class MergeSlicePair(Rule):
    """Slice(Slice(x)) over disjoint axes -> one Slice(x)."""

    name = "slices_merged"
    op_types = ("Slice",)

    def match(self, outer: gs.Node, ctx: RuleContext) -> Match | Skip | None:
        inner = outer.inputs[0].inputs[0] if outer.inputs[0].inputs else None
        if inner is None or inner.op != "Slice":
            return None  # not a chain: nothing to report
        if sole_consumer(ctx.graph, outer.inputs[0]) is None:
            return self.skip(outer, f"the output of {node_label(inner)} has other uses")
        dims = ctx.types().get(inner.inputs[0].name, (0, None))[1]
        rank = len(dims) if dims is not None else None
        a, b = _params(inner, rank, ctx.opset), _params(outer, rank, ctx.opset)
        if isinstance(a, str) or isinstance(b, str):
            return self.skip(outer, a if isinstance(a, str) else b)
        if set(a[2]) & set(b[2]):
            return self.skip(outer, f"both Slices cut axis {sorted(set(a[2]) & set(b[2]))[0]}")
        return Match(node_label(outer), node=outer, values={"x": inner.inputs[0], "params": [p + q for p, q in zip(a, b)]})

    def rewrite(self, match: Match, builder: GraphBuilder) -> None:
        outer = match.node
        (y,) = outer.outputs
        outer.outputs = []  # detached: the old pair becomes dead and the manager's cleanup drops it
        starts, ends, axes, steps = match["params"]
        builder.slice(match["x"], starts, ends, axes, None if all(s == 1 for s in steps) else steps, out=y)


@register
class MergeSlices(RulePass):
    name = "merge-slices"
    summary = "two consecutive Slice nodes on different axes become one Slice"
    kind = PassKind.EXACT
    tags = ("ascend",)

    def rules(self) -> list[Rule]:
        return [MergeSlicePair()]
