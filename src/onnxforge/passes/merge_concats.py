"""merge-concats: a Concat feeding only a Concat on the same axis is folded into it.

Before -> After::

    a, b -> Concat<axis=1> -> t;  t, c -> Concat<axis=1> -> y        a, b, c -> Concat<axis=1> -> y

Why: on Ascend each Concat is a ConcatD task that copies all its inputs into a new buffer in global
memory; nested Concats copy the inner inputs twice. One flat Concat copies every input once (Ascend's
retired surgeon tool's knowledges). Torch exports of feature pyramids, and ``torch.cat`` of a
``torch.cat``, produce such nests.

Legal when: the inner Concat's output is used only by the outer Concat (it may appear there more than
once) and is not a graph output, and both concatenate the same axis (negative axes normalized by the
rank; with the rank unknown, mixed signs are skipped). Concatenation is associative, so the flat
Concat is the same tensor: the pass is exact. Nests of any depth fold until none is left.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from onnxforge.passes._graph import is_graph_output, node_label
from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._rewrite import Match, Rule, RuleContext, RulePass
from onnxforge.passes.base import PassKind, Skip
from onnxforge.passes.registry import register


@dataclass(frozen=True)
class ConcatMatch:
    inner: gs.Node
    outer: gs.Node


class FoldConcat(Rule):
    """A Concat whose only user is a Concat on the same axis, spliced into it."""

    name = "concats_merged"
    op_types = ("Concat",)

    def match(self, inner: gs.Node, ctx: RuleContext) -> Match | Skip | None:
        found = match(ctx.graph, inner)
        return Match(node_label(inner), node=inner, values={"m": found}) if isinstance(found, ConcatMatch) else found

    def rewrite(self, m: Match, builder: GraphBuilder) -> None:
        rewrite(m["m"], builder.graph)


@register
class MergeConcats(RulePass):
    name = "merge-concats"
    summary = "folds a Concat that feeds only a Concat on the same axis into it"
    kind = PassKind.EXACT
    tags = ("ascend",)

    def rules(self) -> list[Rule]:
        return [FoldConcat()]

    def nothing_to_do(self, ctx: RuleContext) -> str | None:
        has_concat = any(n.op == "Concat" for n in ctx.graph.nodes)
        return "no Concat feeding a Concat" if has_concat else "no Concat in the graph"


def _rank(tensors: list[gs.Tensor]) -> int | None:
    for tensor in tensors:
        shape = getattr(tensor, "shape", None)
        if shape is not None:
            return len(shape)
    return None


def match(graph: gs.Graph, inner: gs.Node) -> ConcatMatch | Skip | None:
    """`inner` folded into the Concat that uses it; a Skip with the reason; None when no Concat uses it."""
    out = inner.outputs[0]
    users = {id(n): n for n in out.outputs}
    concats = [n for n in users.values() if n.op == "Concat"]
    if not concats:
        return None
    label = node_label(inner)
    if is_graph_output(graph, out):
        return Skip(label, "its output is a graph output")
    if len(users) != 1:
        return Skip(label, f"its output feeds {len(users)} nodes, not only {node_label(concats[0])}")
    outer = concats[0]
    a, b = int(inner.attrs.get("axis", 0)), int(outer.attrs.get("axis", 0))
    if a != b:
        rank = _rank([out, *inner.inputs, outer.outputs[0]])
        if rank is None:
            return Skip(label, f"the rank is unknown, so axes {a} and {b} cannot be compared")
        if a % rank != b % rank:
            return Skip(label, f"it concatenates axis {a}, {node_label(outer)} axis {b}")
    return ConcatMatch(inner, outer)


def rewrite(m: ConcatMatch, graph: gs.Graph) -> None:
    """The inner Concat's inputs spliced into the outer one where its output was; the inner one removed."""
    out = m.inner.outputs[0]
    spliced: list[gs.Tensor] = []
    for tensor in m.outer.inputs:
        spliced.extend(m.inner.inputs if tensor is out else [tensor])
    m.inner.outputs.clear()
    m.inner.inputs.clear()
    graph.nodes.remove(m.inner)
    m.outer.inputs.clear()
    m.outer.inputs.extend(spliced)
