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

import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto as T

from onnxforge.passes._graph import inferred_types, is_graph_output, node_label
from onnxforge.passes.base import ModelState, Pass, PassKind, PassResult, Skip
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


class _Types:
    """Element types of tensors: a Cast's `to`, the graph's annotation, else shape inference (once, lazily)."""

    def __init__(self, state: ModelState) -> None:
        self.state = state
        self.inferred: dict[str, int] | None = None

    def of(self, tensor: gs.Tensor) -> int | None:
        if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Cast":
            return int(tensor.inputs[0].attrs["to"])
        dtype = getattr(tensor, "dtype", None)
        if dtype is not None:
            try:
                return int(dtype) if isinstance(dtype, int) else onnx.helper.np_dtype_to_tensor_dtype(dtype)
            except (KeyError, TypeError):
                pass
        if self.inferred is None:
            self.inferred = {name: elem for name, (elem, _) in inferred_types(self.state.to_model()).items()}
        return self.inferred.get(tensor.name)


@register
class MergeCasts(Pass):
    name = "merge-casts"
    summary = "merges value-preserving Cast chains, shares sibling Casts to one type, removes no-op Casts"
    kind = PassKind.EXACT
    tags = ("ascend",)

    def run(self, state: ModelState) -> PassResult:
        graph = state.graph
        types = _Types(state)
        stats = {"chains_merged": 0, "siblings_shared": 0, "noops_removed": 0}
        skipped: dict[str, Skip] = {}
        seen = False
        changed = True
        while changed:
            changed = False
            for node in list(graph.nodes):
                if node.op != "Cast" or node.domain not in (None, "", "ai.onnx") or not node.outputs:
                    continue
                seen = True
                for step, key in ((_chain, "chains_merged"), (_siblings, "siblings_shared"), (_noop, "noops_removed")):
                    outcome = step(graph, node, types)
                    if isinstance(outcome, Skip):
                        skipped[f"{outcome.target}:{key}"] = outcome
                    elif outcome:
                        stats[key] += 1
                        changed = True
                        break
                if changed:
                    break
        live = {node_label(n) for n in graph.nodes if n.outputs}
        skips = [s for s in skipped.values() if s.target in live]
        if not any(stats.values()):
            return PassResult(False, skipped=skips, notes=[] if skips else ["no redundant Cast" if seen else "no Cast in the graph"])
        return PassResult(True, {k: v for k, v in stats.items() if v}, skipped=skips)


def _drop(graph: gs.Graph, node: gs.Node, replacement: gs.Tensor) -> None:
    """Every use of the node's output reads `replacement`; the node is removed."""
    out = node.outputs[0]
    for user in list(out.outputs):
        for i, tensor in enumerate(user.inputs):
            if tensor is out:
                user.inputs[i] = replacement
    node.outputs.clear()
    node.inputs.clear()
    graph.nodes.remove(node)


def _chain(graph: gs.Graph, node: gs.Node, types: _Types) -> bool | Skip:
    """Cast(T1 -> T2) after Cast(T0 -> T1) reads the first one's input when T0 -> T1 is lossless."""
    source = node.inputs[0]
    if len(source.inputs) != 1 or source.inputs[0].op != "Cast":
        return False
    first = source.inputs[0]
    t0, t1 = types.of(first.inputs[0]), int(first.attrs["to"])
    if t0 is None:
        return Skip(node_label(node), f"the input type of {node_label(first)} is unknown")
    if t1 != t0 and t1 not in LOSSLESS.get(t0, ()):
        return Skip(node_label(node), f"{node_label(first)} casts {_type_name(t0)} to {_type_name(t1)}, which may change values")
    node.inputs[0] = first.inputs[0]
    if not source.outputs and not is_graph_output(graph, source):
        first.outputs.clear()
        first.inputs.clear()
        graph.nodes.remove(first)
    return True


def _siblings(graph: gs.Graph, node: gs.Node, types: _Types) -> bool | Skip:
    """Another Cast of the same tensor to the same type: its users read this one's output."""
    x, to = node.inputs[0], int(node.attrs["to"])
    twins = [n for n in x.outputs if n is not node and n.op == "Cast" and int(n.attrs["to"]) == to and n.outputs]
    for twin in twins:
        keep, drop = (node, twin)
        if is_graph_output(graph, drop.outputs[0]):
            keep, drop = drop, keep
        if is_graph_output(graph, drop.outputs[0]):
            return Skip(node_label(twin), f"it and {node_label(node)} are both graph outputs")
        _drop(graph, drop, keep.outputs[0])
        return True
    return False


def _noop(graph: gs.Graph, node: gs.Node, types: _Types) -> bool | Skip:
    """A Cast to its input's own type is removed."""
    t = types.of(node.inputs[0])
    if t is None or t != int(node.attrs["to"]):
        return False
    if is_graph_output(graph, node.outputs[0]):
        return Skip(node_label(node), "it casts to its input's type but its output is a graph output")
    _drop(graph, node, node.inputs[0])
    return True
