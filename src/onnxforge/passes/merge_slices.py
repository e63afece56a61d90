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

import numpy as np
import onnx_graphsurgeon as gs

from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import const_value, node_label
from onnxforge.passes._rewrite import Match, Rule, RuleContext, RulePass, sole_consumer
from onnxforge.passes.base import PassKind, Skip
from onnxforge.passes.registry import register


def _params(node: gs.Node, rank: int | None) -> tuple[list[int], ...] | str:
    """(starts, ends, axes, steps) of a Slice, axes made non-negative, or why they are not known."""
    if len(node.inputs) == 1:  # opset < 10: attributes
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        axes, steps = list(node.attrs.get("axes", range(len(starts)))), [1] * len(starts)
    else:
        values = [const_value(t) if t.name else None for t in node.inputs[1:]] + [None] * (5 - len(node.inputs))
        if any(v is None for v, t in zip(values, node.inputs[1:]) if t.name):
            return f"{node_label(node)} has parameters computed at run time"
        starts, ends = (np.asarray(v).ravel().tolist() for v in values[:2])
        axes = np.asarray(values[2]).ravel().tolist() if values[2] is not None else list(range(len(starts)))
        steps = np.asarray(values[3]).ravel().tolist() if values[3] is not None else [1] * len(starts)
    if any(a < 0 for a in axes) and rank is None:
        return f"{node_label(node)} has a negative axis and the rank is unknown"
    return starts, ends, [a % rank if rank else a for a in axes], steps


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
        a, b = _params(inner, rank), _params(outer, rank)
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
