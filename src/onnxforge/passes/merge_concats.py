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
from onnxforge.passes.base import ModelState, Pass, PassKind, PassResult, Skip
from onnxforge.passes.registry import register


@dataclass(frozen=True)
class ConcatMatch:
    inner: gs.Node
    outer: gs.Node


@register
class MergeConcats(Pass):
    name = "merge-concats"
    summary = "folds a Concat that feeds only a Concat on the same axis into it"
    kind = PassKind.EXACT
    tags = ("ascend",)

    def run(self, state: ModelState) -> PassResult:
        graph = state.graph
        merged = 0
        skipped: dict[str, Skip] = {}
        seen = False
        while True:
            found = None
            for node in list(graph.nodes):
                if node.op != "Concat" or node.domain not in (None, "", "ai.onnx"):
                    continue
                seen = True
                found = match(graph, node)
                if isinstance(found, ConcatMatch):
                    break
                if found is not None:
                    skipped[found.target] = found
                found = None
            if found is None:
                break
            rewrite(found, graph)
            merged += 1
        live = {node_label(n) for n in graph.nodes}  # skips of nodes a later fold removed are stale
        skips = [s for label, s in skipped.items() if label in live]
        if not merged:
            return PassResult(False, skipped=skips, notes=[] if skips else ["no Concat feeding a Concat" if seen else "no Concat in the graph"])
        return PassResult(True, {"concats_merged": merged}, skipped=skips)


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
