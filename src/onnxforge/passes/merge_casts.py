"""merge-casts: chained Casts through a lossless type merged, sibling Casts to one type shared, no-op Casts removed.

Before -> After::

    x:int32 -> Cast<to=int64> -> Cast<to=float> -> y          x:int32 -> Cast<to=float> -> y
    x -> Cast<to=float16> -> a;  x -> Cast<to=float16> -> b     x -> Cast<to=float16> -> a (b's users read a)
    x:float -> Cast<to=float> -> y -> ...                       x -> ...

Why: every Cast is a separate Cast task on Ascend (a full read and write of the tensor); exports that
go through int64 shape arithmetic, or fp16 conversion tools, leave chains and duplicates behind
(Ascend's surgeon knowledges for redundant Casts).

Legal (value-preserving only): a chain Cast(T0 -> T1) -> Cast(T1 -> T2) reads x directly when T1
holds every T0 value exactly (bool into any number; small integers into wider integers or floats that
represent them; float16 / bfloat16 into float / double; float into double), so the second Cast sees
the same value either way. A narrowing first step (float -> float16, int64 -> int32, float -> int) is
kept with the reason. Sibling Casts of one tensor to one type compute the same tensor. A Cast to its
input's own type is the identity. A Cast whose output is a graph output keeps its name: it is not
removed, and of two siblings that are both graph outputs neither is. Exact.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto as T

from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import is_graph_output, node_label
from onnxforge.passes._rewrite import Match, Rule, RuleContext, RulePass, replace_all_uses
from onnxforge.passes.base import ModelState, PassKind, PassResult, Skip
from onnxforge.passes.registry import register

#: Element types each type converts into without losing a value (besides itself).
_INTS = (T.INT8, T.UINT8, T.INT16, T.UINT16, T.INT32, T.UINT32, T.INT64, T.UINT64)
_FLOATS = (T.FLOAT16, T.BFLOAT16, T.FLOAT, T.DOUBLE)
LOSSLESS: dict[int, frozenset[int]] = {
    T.BOOL: frozenset(_INTS + _FLOATS),
    T.UINT8: frozenset({T.INT16, T.UINT16, T.INT32, T.UINT32, T.INT64, T.UINT64, T.FLOAT16, T.BFLOAT16, T.FLOAT, T.DOUBLE}),
    T.INT8: frozenset({T.INT16, T.INT32, T.INT64, T.FLOAT16, T.BFLOAT16, T.FLOAT, T.DOUBLE}),
    T.UINT16: frozenset({T.INT32, T.UINT32, T.INT64, T.UINT64, T.FLOAT, T.DOUBLE}),
    T.INT16: frozenset({T.INT32, T.INT64, T.FLOAT, T.DOUBLE}),
    T.UINT32: frozenset({T.INT64, T.UINT64, T.DOUBLE}),
    T.INT32: frozenset({T.INT64, T.DOUBLE}),
    T.FLOAT16: frozenset({T.FLOAT, T.DOUBLE}),
    T.BFLOAT16: frozenset({T.FLOAT, T.DOUBLE}),
    T.FLOAT: frozenset({T.DOUBLE}),
}


def _type_name(elem: int) -> str:
    return onnx.TensorProto.DataType.Name(elem).lower()


def _elem_type(tensor: gs.Tensor, ctx: RuleContext) -> int | None:
    """A tensor's element type: a Cast's `to`, the graph's annotation, else shape inference (`ctx.types()`)."""
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Cast":
        return int(tensor.inputs[0].attrs["to"])
    dtype = getattr(tensor, "dtype", None)
    if dtype is not None:
        try:
            return int(dtype) if isinstance(dtype, int) else onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        except (KeyError, TypeError, ValueError):
            pass
    found = ctx.types().get(tensor.name)
    return found[0] if found else None


class _CastRule(Rule):
    """A rule on live Casts (a Cast an earlier rewrite of this run removed has no inputs or outputs)."""

    op_types = ("Cast",)

    def match(self, node: gs.Node, ctx: RuleContext) -> Match | Skip | None:
        return self.match_cast(node, ctx) if node.inputs and node.outputs else None

    def match_cast(self, node: gs.Node, ctx: RuleContext) -> Match | Skip | None:  # pragma: no cover - abstract
        raise NotImplementedError


class Chain(_CastRule):
    """Cast(T1 -> T2) after Cast(T0 -> T1) reads the first one's input when T0 -> T1 is lossless."""

    name = "chains_merged"

    def match_cast(self, node: gs.Node, ctx: RuleContext) -> Match | Skip | None:
        source = node.inputs[0]
        if len(source.inputs) != 1 or source.inputs[0].op != "Cast":
            return None
        first = source.inputs[0]
        t0, t1 = _elem_type(first.inputs[0], ctx), int(first.attrs["to"])
        if t0 is None:
            return self.skip(node, f"the input type of {node_label(first)} is unknown")
        if t1 != t0 and t1 not in LOSSLESS.get(t0, ()):
            return self.skip(node, f"{node_label(first)} casts {_type_name(t0)} to {_type_name(t1)}, which may change values")
        return Match(node_label(node), node=node, values={"first": first})

    def rewrite(self, m: Match, builder: GraphBuilder) -> None:
        first, source = m["first"], m.node.inputs[0]
        m.node.inputs[0] = first.inputs[0]
        if not source.outputs and not is_graph_output(builder.graph, source):
            first.outputs.clear()  # detached: the manager's cleanup removes it (no O(n) list removal per rewrite)
            first.inputs.clear()


class Siblings(_CastRule):
    """Another Cast of the same tensor to the same type: its users read this one's output."""

    name = "siblings_shared"

    def match_cast(self, node: gs.Node, ctx: RuleContext) -> Match | Skip | None:
        x, to = node.inputs[0], int(node.attrs["to"])
        twins = [n for n in x.outputs if n is not node and n.op == "Cast" and int(n.attrs["to"]) == to and n.outputs]
        if not twins:
            return None
        keep, drop = node, twins[0]
        if is_graph_output(ctx.graph, drop.outputs[0]):
            keep, drop = drop, keep
        if is_graph_output(ctx.graph, drop.outputs[0]):
            return self.skip(twins[0], f"it and {node_label(node)} are both graph outputs")
        return Match(node_label(node), node=drop, values={"keep": keep})

    def rewrite(self, m: Match, builder: GraphBuilder) -> None:
        _drop(builder.graph, m.node, m["keep"].outputs[0])


class Noop(_CastRule):
    """A Cast to its input's own type is removed."""

    name = "noops_removed"

    def match_cast(self, node: gs.Node, ctx: RuleContext) -> Match | Skip | None:
        t = _elem_type(node.inputs[0], ctx)
        if t is None or t != int(node.attrs["to"]):
            return None
        if is_graph_output(ctx.graph, node.outputs[0]):
            return self.skip(node, "it casts to its input's type but its output is a graph output")
        return Match(node_label(node), node=node)

    def rewrite(self, m: Match, builder: GraphBuilder) -> None:
        _drop(builder.graph, m.node, m.node.inputs[0])


@register
class MergeCasts(RulePass):
    name = "merge-casts"
    summary = "merges value-preserving Cast chains, shares sibling Casts to one type, removes no-op Casts"
    kind = PassKind.EXACT
    tags = ("ascend",)

    def rules(self) -> list[Rule]:
        return [Chain(), Siblings(), Noop()]

    def nothing_to_do(self, ctx: RuleContext) -> str | None:
        return "no redundant Cast" if any(n.op == "Cast" for n in ctx.graph.nodes) else "no Cast in the graph"

    def run(self, state: ModelState) -> PassResult:
        result = super().run(state)
        live = {node_label(n) for n in state.graph.nodes if n.outputs}  # a later rewrite may remove a skipped Cast
        result.skipped = [s for s in result.skipped if s.target in live]
        return result


def _drop(graph: gs.Graph, node: gs.Node, replacement: gs.Tensor) -> None:
    """Every use of the node's output reads `replacement`; the node is detached (the manager's cleanup
    removes it). Callers never drop a Cast whose output is a graph output."""
    replace_all_uses(graph, node.outputs[0], replacement)
    node.outputs.clear()
    node.inputs.clear()
