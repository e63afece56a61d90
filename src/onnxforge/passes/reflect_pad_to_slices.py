"""reflect-pad-to-slices: a reflect-mode Pad becomes reversed Slices and a Concat per padded axis.

Before -> After (one axis of size n, pads p before and q after)::

    x -> Pad<mode=reflect>(pads) -> y
        ->  x[p:0:-1], x, x[-2:-2-q:-1] -> Concat<axis> -> (next axis ...) -> y

Why: atc maps a reflect Pad to PadV3 / MirrorPad, which runs on the AI CPU (or not at all) for many
shapes, costing a device-host round trip per call; StridedSlice and ConcatD run on the AI Core
(Ascend's surgeon knowledge for reflect padding). Torch exports ``nn.ReflectionPad2d`` (HRNet /
style-transfer / super-resolution models) as exactly this Pad.

Legal when: the pads are constant and non-negative, there is no ``axes`` input (opset 18), every
padded axis has a static size n with each pad at most n - 1 (what reflect requires), and the opset
is at least 10 (Slice with step -1). Reflect padding of several axes equals reflecting one axis after
the other, so the cascade selects the same elements: exact.
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
class PadMatch:
    pad: gs.Node
    pads: list[tuple[int, int, int]]  # (axis, before, after) for padded axes


class PadToSlices(Rule):
    """A reflect-mode Pad replaced by reversed edge Slices and a Concat per padded axis."""

    name = "pads_replaced"
    op_types = ("Pad",)

    def match(self, node: gs.Node, ctx: RuleContext) -> Match | Skip | None:
        if node.attrs.get("mode", "constant") != "reflect":
            return None
        found = match(node, ctx.opset)
        return Match(node_label(node), node=node, values={"m": found}) if isinstance(found, PadMatch) else found

    def rewrite(self, m: Match, builder: GraphBuilder) -> None:
        rewrite(m["m"], builder)


@register
class ReflectPadToSlices(RulePass):
    name = "reflect-pad-to-slices"
    summary = "turns a reflect-mode Pad into reversed Slices and a Concat per padded axis"
    kind = PassKind.EXACT
    tags = ("ascend",)

    def rules(self) -> list[Rule]:
        return [PadToSlices()]

    def nothing_to_do(self, ctx: RuleContext) -> str | None:
        return "no reflect-mode Pad"


def match(node: gs.Node, opset: int) -> PadMatch | Skip:
    """The per-axis pads of a reflect Pad, or a Skip with the reason."""
    label = node_label(node)
    if opset < 10:
        return Skip(label, "Slice with step -1 needs opset 10")
    if len(node.inputs) > 3 and node.inputs[3].name:
        return Skip(label, "it has an axes input")
    if "pads" in node.attrs:
        raw = node.attrs["pads"]
    else:
        raw = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if raw is None:
            return Skip(label, "its pads are computed at run time")
    pads = [int(v) for v in np.asarray(raw).reshape(-1)]
    shape = static_shape(node.inputs[0])
    if shape is None or len(pads) != 2 * len(shape):
        return Skip(label, "its input shape is not static")
    rank = len(shape)
    out = []
    for axis in range(rank):
        before, after = pads[axis], pads[axis + rank]
        if before < 0 or after < 0:
            return Skip(label, f"it crops axis {axis} (negative pad)")
        if max(before, after) > shape[axis] - 1:
            return Skip(label, f"pad {max(before, after)} on axis {axis} exceeds size {shape[axis]} - 1")
        if before or after:
            out.append((axis, before, after))
    return PadMatch(node, out)


def rewrite(m: PadMatch, b: GraphBuilder) -> None:
    """Per padded axis: reversed edge Slices around the tensor, concatenated; the Pad removed."""
    x, y = m.pad.inputs[0], m.pad.outputs[0]
    m.pad.outputs.clear()
    m.pad.inputs.clear()
    b.graph.nodes.remove(m.pad)
    if not m.pads:
        b.op("Identity", [x], outputs=[y])
        return
    for i, (axis, before, after) in enumerate(m.pads):
        parts = []
        if before:
            parts.append(b.slice(x, [before], [0], [axis], [-1], hint="reflect_before"))
        parts.append(x)
        if after:
            parts.append(b.slice(x, [-2], [-2 - after], [axis], [-1], hint="reflect_after"))
        x = b.concat(parts, axis, out=y if i == len(m.pads) - 1 else None, hint="reflect")
