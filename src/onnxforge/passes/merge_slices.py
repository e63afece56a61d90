"""merge-slices: a Slice feeding only a Slice on other axes becomes one Slice.

Before -> After::

    x -> Slice<axes=[2], 0:4> -> Slice<axes=[3], 1:5> -> y        x -> Slice<axes=[2, 3], [0, 1]:[4, 5]> -> y

Why: atc maps every Slice to its own StridedSlice task, each reading and writing the whole tensor from
global memory; one multi-axis Slice is one task and one pass over the data (a knowledge of Ascend's
retired surgeon tool). Torch exports produce these chains from indexing such as
``x[:, :, 0:4, 1:5]``, which the exporter writes one Slice per axis.

Legal when: both Slices have constant starts/ends/axes/steps, the first one's output feeds only the
second and is not a graph output, and the two touch disjoint axes (negative axes are compared after
normalizing by the input rank; with the rank unknown, mixed signs are skipped). Slicing different axes
commutes, so the merged Slice selects exactly the same elements: the pass is exact. Chains of more
than two merge pairwise until no pair is left. Below opset 10 Slice takes attributes and no steps; the
builder emits the opset's form.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import const_value, is_graph_output, node_label
from onnxforge.passes.base import ModelState, Pass, PassKind, PassResult, Skip
from onnxforge.passes.registry import register


@dataclass(frozen=True)
class SliceParams:
    """A Slice's constant arguments, axes explicit (as written: possibly negative)."""

    starts: list[int]
    ends: list[int]
    axes: list[int]
    steps: list[int]


@dataclass(frozen=True)
class SliceMatch:
    first: gs.Node
    second: gs.Node
    params: SliceParams  # merged


@register
class MergeSlices(Pass):
    name = "merge-slices"
    summary = "merges a Slice that feeds only a Slice on other axes into one multi-axis Slice"
    kind = PassKind.EXACT
    tags = ("ascend",)

    def run(self, state: ModelState) -> PassResult:
        graph = state.graph
        opset = int(graph.opset)
        merged = 0
        skipped: dict[str, Skip] = {}
        seen = False
        while True:
            found = None
            for node in list(graph.nodes):
                if node.op != "Slice" or node.domain not in (None, "", "ai.onnx"):
                    continue
                seen = True
                found = match(graph, node, opset)
                if isinstance(found, SliceMatch):
                    break
                if found is not None:
                    skipped[found.target] = found
                found = None
            if found is None:
                break
            rewrite(found, GraphBuilder(graph, "merge_slices", opset))
            merged += 1
        live = {node_label(n) for n in graph.nodes}  # skips of nodes a later merge removed are stale
        skips = [s for label, s in skipped.items() if label in live]
        if not merged:
            return PassResult(False, skipped=skips, notes=[] if skips else ["no Slice feeding a Slice" if seen else "no Slice in the graph"])
        return PassResult(True, {"slices_merged": merged}, skipped=skips)


def slice_params(node: gs.Node, opset: int) -> SliceParams | str:
    """The Slice's constant arguments, or why they are not constant."""
    if opset < 10 or "starts" in node.attrs:
        starts = [int(v) for v in node.attrs.get("starts", [])]
        ends = [int(v) for v in node.attrs.get("ends", [])]
        axes = [int(v) for v in node.attrs.get("axes", range(len(starts)))]
        return SliceParams(starts, ends, axes, [1] * len(starts))
    values = []
    for i, what in enumerate(("starts", "ends", "axes", "steps"), start=1):
        tensor = node.inputs[i] if len(node.inputs) > i and node.inputs[i].name else None
        if tensor is None:
            values.append(None)
            continue
        value = const_value(tensor)
        if value is None:
            return f"its {what} are computed at run time"
        values.append([int(v) for v in np.asarray(value).reshape(-1)])
    starts, ends, axes, steps = values
    if starts is None or ends is None:
        return "it has no starts or ends"
    return SliceParams(starts, ends, axes if axes is not None else list(range(len(starts))), steps if steps is not None else [1] * len(starts))


def _rank(tensor: gs.Tensor) -> int | None:
    shape = getattr(tensor, "shape", None)
    return None if shape is None else len(shape)


def match(graph: gs.Graph, second: gs.Node, opset: int) -> SliceMatch | Skip | None:
    """`second` merged with the Slice feeding it; a Skip with the reason; None when no Slice feeds it."""
    source = second.inputs[0]
    if len(source.inputs) != 1 or source.inputs[0].op != "Slice":
        return None
    first = source.inputs[0]
    label = node_label(first)
    if is_graph_output(graph, source):
        return Skip(label, "its output is a graph output")
    if len(source.outputs) != 1:
        return Skip(label, f"its output feeds {len(source.outputs)} nodes, not only {node_label(second)}")
    a, b = slice_params(first, opset), slice_params(second, opset)
    for node, params in ((first, a), (second, b)):
        if isinstance(params, str):
            return Skip(label, f"{node_label(node)}: {params}")
    assert isinstance(a, SliceParams) and isinstance(b, SliceParams)
    rank = _rank(first.inputs[0]) or _rank(source) or _rank(second.outputs[0])
    axes_a, axes_b = a.axes, b.axes
    if rank is not None:
        axes_a, axes_b = [x % rank for x in axes_a], [x % rank for x in axes_b]
    elif any(x < 0 for x in axes_a + axes_b) and not all(x < 0 for x in axes_a + axes_b):
        return Skip(label, "the rank is unknown, so negative and positive axes cannot be compared")
    common = sorted(set(axes_a) & set(axes_b))
    if common:
        return Skip(label, f"both Slices cut axis {common[0]}")
    if opset < 10 and any(s != 1 for s in a.steps + b.steps):
        return Skip(label, "steps other than 1 need opset 10")
    merged = SliceParams(a.starts + b.starts, a.ends + b.ends, axes_a + axes_b, a.steps + b.steps)
    return SliceMatch(first, second, merged)


def rewrite(m: SliceMatch, b: GraphBuilder) -> None:
    """One Slice from the first one's input to the second one's output; both old Slices removed."""
    x, y = m.first.inputs[0], m.second.outputs[0]
    p = m.params
    steps = None if all(s == 1 for s in p.steps) else p.steps
    for node in (m.second, m.first):
        node.outputs.clear()
        node.inputs.clear()
        b.graph.nodes.remove(node)
    b.slice(x, p.starts, p.ends, p.axes, steps, out=y, hint="slice")
