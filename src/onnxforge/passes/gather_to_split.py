"""gather-to-split: Gathers of contiguous, disjoint index ranges on one axis of one tensor become one Split.

Before -> After (the QKV pattern: qkv is 3xBxHxNxD)::

    qkv -> Gather(0, axis=0) -> q           qkv -> Split<axis=0>([1, 1, 1]) -> q', k', v'
    qkv -> Gather(1, axis=0) -> k               q' -> Squeeze(0) -> q,  k' -> Squeeze(0) -> k,
    qkv -> Gather(2, axis=0) -> v               v' -> Squeeze(0) -> v

Why: each Gather is a GatherV2 task that reads indices and does indexed loads; one SplitD cuts the
tensor in a single pass with plain strided copies (Ascend's surgeon knowledge for Gather-to-Split).
Torch exports of attention blocks (``q, k, v = qkv[0], qkv[1], qkv[2]`` in ViT / Swin) and of channel
groups (``x[:, 0:4]`` written as an index list) produce this.

Legal when: at least two Gathers read the same tensor on the same axis, the axis has a static size,
each index is a constant scalar or a constant 1-D ascending run ``[a, a+1, ..., b-1]`` (negative
indices normalized by the size), the ranges are pairwise disjoint, and the tensor is not a Shape's
output (dims picked from a shape are compile-time arithmetic for atc; splitting them only adds nodes). A scalar index removes the
axis, so its part is squeezed; a run keeps it. Uncovered stretches of the axis become Split outputs
nobody reads. Each output is the same slice of the tensor as before: exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import const_value, node_label, static_shape
from onnxforge.passes._rewrite import Match, Rule, RuleContext, RulePass
from onnxforge.passes.base import PassKind, Skip
from onnxforge.passes.registry import register


@dataclass(frozen=True)
class Part:
    gather: gs.Node
    start: int
    stop: int
    scalar: bool  # the index was a scalar: the axis is squeezed away


@dataclass(frozen=True)
class SplitMatch:
    x: gs.Tensor
    axis: int
    size: int
    parts: list[Part]  # sorted by start


class GathersToSplit(Rule):
    """The Gathers of one tensor on one axis (a group is the target) replaced by one Split."""

    name = "splits_created"
    op_types = ("Gather",)

    def __init__(self) -> None:
        self.gathers = 0  # Gathers replaced in this run (a rule object lives for one run)

    def targets(self, ctx: RuleContext) -> list[tuple[int, list[gs.Node]]]:
        """(axis, Gathers) per tensor and axis (negative axes normalized where the rank is known)."""
        groups: dict[tuple[int, int], list[gs.Node]] = {}
        for node in super().targets(ctx):
            axis = int(node.attrs.get("axis", 0))
            rank = len(node.inputs[0].shape) if getattr(node.inputs[0], "shape", None) is not None else None
            groups.setdefault((id(node.inputs[0]), axis % rank if rank else axis), []).append(node)
        return [(axis, nodes) for (_, axis), nodes in groups.items()]

    def match(self, group: tuple[int, list[gs.Node]], ctx: RuleContext) -> Match | Skip | None:
        axis, nodes = group
        found = match(ctx.graph, nodes, axis)
        return Match(found.x.name, values={"m": found}) if isinstance(found, SplitMatch) else found

    def rewrite(self, m: Match, builder: GraphBuilder) -> None:
        rewrite(m["m"], builder)
        self.gathers += len(m["m"].parts)


@register
class GatherToSplit(RulePass):
    name = "gather-to-split"
    summary = "turns Gathers of disjoint contiguous index ranges on one axis of a tensor into one Split"
    kind = PassKind.EXACT
    tags = ("ascend",)

    def rules(self) -> list[Rule]:
        self._rule = GathersToSplit()  # fresh per run: RulePass.run calls rules() once
        return [self._rule]

    def nothing_to_do(self, ctx: RuleContext) -> str | None:
        return "no tensor read by two or more Gathers on one axis"

    def extra_stats(self, ctx: RuleContext, counts: dict[str, int], rewritten: list[str]) -> dict[str, int]:
        return {"gathers_replaced": self._rule.gathers}


def _range(index: np.ndarray, size: int) -> tuple[int, int, bool] | None:
    """(start, stop, scalar) of a constant index, or None when it is not one contiguous ascending run."""
    values = [int(v) + size if int(v) < 0 else int(v) for v in index.reshape(-1)]
    if index.ndim > 1 or not values or any(not 0 <= v < size for v in values):
        return None
    if values != list(range(values[0], values[0] + len(values))):
        return None
    return values[0], values[0] + len(values), index.ndim == 0


def match(graph: gs.Graph, nodes: list[gs.Node], axis: int) -> SplitMatch | Skip | None:
    """The Split for Gathers of one tensor on one axis; a Skip with the reason; None for a lone Gather."""
    if len(nodes) < 2:
        return None
    x = nodes[0].inputs[0]
    label = f"Gathers of {x.name}"
    if x.inputs and x.inputs[0].op == "Shape":
        return Skip(label, "shape arithmetic (Gathers of a Shape's dims): atc folds it when it compiles, and a Split "
                           "would only add nodes")
    shape = static_shape(x)
    if shape is None:
        return Skip(label, "the input shape is not static")
    axis %= len(shape)
    size = shape[axis]
    parts = []
    for node in nodes:
        index = const_value(node.inputs[1])
        if index is None:
            return Skip(label, f"{node_label(node)} has indices computed at run time")
        found = _range(np.asarray(index), size)
        if found is None:
            return Skip(label, f"{node_label(node)} indices are not one ascending run within the axis")
        parts.append(Part(node, *found))
    parts.sort(key=lambda p: p.start)
    for a, b in zip(parts, parts[1:]):
        if b.start < a.stop:
            return Skip(label, f"{node_label(a.gather)} and {node_label(b.gather)} overlap")
    return SplitMatch(x, axis, size, parts)


def rewrite(m: SplitMatch, b: GraphBuilder) -> None:
    """One Split covering the axis (gaps as unread outputs); scalar parts squeezed into the old outputs."""
    sizes: list[int] = []
    slots: list[Part | None] = []
    at = 0
    for part in m.parts:
        if part.start > at:
            sizes.append(part.start - at)
            slots.append(None)
        sizes.append(part.stop - part.start)
        slots.append(part)
        at = part.stop
    if at < m.size:
        sizes.append(m.size - at)
        slots.append(None)
    outs = []
    for slot in slots:
        if slot is not None and not slot.scalar:
            target = slot.gather.outputs[0]
            slot.gather.outputs.clear()
            outs.append(target)
        else:
            outs.append(gs.Variable(b.name("part"), dtype=m.x.dtype))
    b.split(m.x, sizes, m.axis, outputs=outs, hint="split")
    for slot, out in zip(slots, outs):
        if slot is None:
            continue
        if slot.scalar:
            target = slot.gather.outputs[0]
            slot.gather.outputs.clear()
            b.squeeze(out, [m.axis], out=target, hint="squeeze")
        slot.gather.inputs.clear()
        b.graph.nodes.remove(slot.gather)
