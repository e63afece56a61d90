"""split-large-conv: a Conv with a kernel side over a threshold becomes Slice + smaller Convs + Sum.

Before -> After (kernel side k on one axis split into chunks [a, b))::

    x -> Conv(W: k taps, bias) -> y
        ->  for each chunk: Slice(x, a : a + (O-1)*s + (b-a)) -> Conv(W[a:b]) -> p_i
            Sum(p_0 (with the bias), p_1, ...) -> y

Why: atc's Conv2D tiles kernels up to a fixed size on the cube unit (a kernel side over 255 does not
compile, and very large kernels tile badly); several Convs with in-range kernels on shifted slices of
the input compute the same outputs (Ascend's surgeon knowledge for large-kernel convolutions; the
retired tool summed the parts with Concat + ReduceSum, Sum is one node doing the same).

Legal when: the input shape is static (the slice lengths need the output size O), the Conv has
constant weights, no pads, ``auto_pad`` NOTSET or VALID, and no dilation. Output p uses taps j at
input p*s + j; the chunk [a, b) of taps is exactly a Conv of the same stride on the input shifted
by a, so the sum of the chunks is the Conv (within float rounding: the sum is re-associated).
A kernel over the threshold on several axes is split axis by axis: each chunk Conv of the first
split (its input slice typed with its static shape) is split again on the next axis, in the same
rewrite; ``convs_split`` counts the original Convs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxforge.errors import PipelineError
from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import const_value, node_label, static_shape
from onnxforge.passes._rewrite import Match, Rule, RuleContext, RulePass
from onnxforge.passes.base import PassKind, Skip, option
from onnxforge.passes.registry import register


@dataclass(frozen=True)
class SplitLargeConvOptions:
    max_kernel: int = option(255, "largest kernel side kept in one Conv (larger sides are split into chunks of this size)")


class ConvChunks(Rule):
    """A Conv with kernel sides over `max_kernel` replaced by chunk Convs on shifted slices, summed."""

    name = "convs_split"
    op_types = ("Conv",)

    def match(self, node: gs.Node, ctx: RuleContext) -> Match | Skip | None:
        found = match(node, ctx.options.max_kernel)
        return Match(node_label(node), node=node, values={"limit": ctx.options.max_kernel}) if isinstance(found, tuple) else found

    def rewrite(self, m: Match, builder: GraphBuilder) -> None:
        pending = [m.node]
        while pending:  # the chunks of one axis may still be over the limit on another
            node = pending.pop()
            found = match(node, m["limit"])
            if isinstance(found, tuple):
                pending.extend(rewrite(node, *found, m["limit"], builder))


@register
class SplitLargeConv(RulePass):
    name = "split-large-conv"
    summary = "splits a Conv with a kernel side over a threshold into Slice + smaller Convs + Sum"
    kind = PassKind.EXACT
    tags = ("ascend",)
    Options = SplitLargeConvOptions

    def validate(self) -> None:
        if self.options.max_kernel < 1:
            raise PipelineError(f"split-large-conv: max_kernel must be at least 1, got {self.options.max_kernel}")

    def rules(self) -> list[Rule]:
        return [ConvChunks()]

    def nothing_to_do(self, ctx: RuleContext) -> str | None:
        return f"no Conv with a kernel side over {ctx.options.max_kernel}"


def match(node: gs.Node, limit: int) -> tuple[int, np.ndarray, tuple[int, ...]] | Skip | None:
    """(axis, weights, input shape) for the first spatial axis over the limit; a Skip; None if none is over."""
    w = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    kernel = list(node.attrs.get("kernel_shape", [])) or (list(w.shape[2:]) if w is not None else [])
    axes = [i for i, k in enumerate(kernel) if int(k) > limit]
    if not axes:
        return None
    label = node_label(node)
    if w is None:
        return Skip(label, "its weights are not constant")
    if any(int(p) for p in node.attrs.get("pads", [])) or node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return Skip(label, "it has pads")
    if any(int(d) != 1 for d in node.attrs.get("dilations", [])):
        return Skip(label, "it has dilations")
    shape = static_shape(node.inputs[0])
    if shape is None:
        return Skip(label, "its input shape is not static")
    return axes[0], np.asarray(w), shape


def rewrite(node: gs.Node, axis: int, w: np.ndarray, shape: tuple[int, ...], limit: int, b: GraphBuilder) -> list[gs.Node]:
    """Chunks of at most `limit` taps on `axis`, each a Conv on its shifted input slice, summed into y.

    Returns the chunk Convs (their input slices carry their static shapes)."""
    x, y = node.inputs[0], node.outputs[0]
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    n = len(shape) - 2
    strides = [int(s) for s in node.attrs.get("strides", [1] * n)]
    k = w.shape[2 + axis]
    out_len = (shape[2 + axis] - k) // strides[axis] + 1
    attrs = {key: v for key, v in node.attrs.items() if key in ("group", "strides")}
    node.outputs.clear()
    node.inputs.clear()
    b.graph.nodes.remove(node)
    parts = []
    for a in range(0, k, limit):
        e = min(a + limit, k)
        piece = np.take(w, range(a, e), axis=2 + axis)
        xs = b.slice(x, [a], [a + (out_len - 1) * strides[axis] + (e - a)], [2 + axis], hint="window")
        xs.dtype, xs.shape = x.dtype, [*shape[: 2 + axis], (out_len - 1) * strides[axis] + (e - a), *shape[3 + axis:]]
        kernel = list(piece.shape[2:])
        ins = [xs, b.const(piece, "weight")] + ([bias] if bias is not None and a == 0 else [])
        parts.append(b.op("Conv", ins, {**attrs, "kernel_shape": kernel}, dtype=x.dtype, hint="conv"))
    b.op("Sum", parts, outputs=[y], hint="sum")
    return [p.inputs[0] for p in parts]
