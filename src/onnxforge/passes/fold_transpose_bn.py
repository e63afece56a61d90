"""fold-transpose-bn: Transpose -> BatchNormalization -> inverse Transpose becomes Mul + Add on the original layout.

Before -> After (x NHWC, as tf2onnx / paddle2onnx write a channels-last BatchNorm)::

    x -> Transpose(0,3,1,2) -> BatchNormalization(g, b, mean, var) -> Transpose(0,2,3,1) -> y
        ->  x -> Mul(scale[1,1,1,C]) -> Add(shift[1,1,1,C]) -> y

    scale = g / sqrt(var + eps),  shift = b - mean * scale

Why: the two Transposes are TransposeD tasks that move the whole tensor in global memory, and atc
only fuses a BatchNorm into a neighbouring Conv in NCHW; inference-mode BN is an affine map per
channel, which Mul + Add express in any layout as two cheap element-wise (fusable) tasks (Ascend's
surgeon knowledge for Transpose-BN-Transpose). Torch exports keep BN on NCHW without Transposes, so
this applies to TF- and Paddle-converted models.

Legal when: the BN is in inference mode (one output, no training_mode) with constant parameters of
C elements, the second Transpose undoes the first, the first's output feeds only the BN and the BN's
only the second Transpose (neither a graph output), and the input rank is known. BN normalizes axis
1 of its input, which is axis ``perm[1]`` of x; the scale and shift broadcast along that axis. Exact
up to float rounding (the scale is folded in float64 and stored in x's float type).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import const_value, is_graph_output, node_label
from onnxforge.passes._rewrite import Match, Rule, RuleContext, RulePass
from onnxforge.passes.base import PassKind, Skip
from onnxforge.passes.registry import register


@dataclass(frozen=True)
class BnMatch:
    first: gs.Node
    bn: gs.Node
    second: gs.Node
    axis: int  # the channel axis in x's layout
    rank: int
    scale: np.ndarray
    shift: np.ndarray


class FoldBn(Rule):
    """Transpose -> BatchNormalization -> inverse Transpose replaced by Mul + Add on x's layout."""

    name = "bn_folded"
    op_types = ("BatchNormalization",)

    def match(self, bn: gs.Node, ctx: RuleContext) -> Match | Skip | None:
        found = match(ctx.graph, bn)
        return Match(node_label(bn), node=bn, values={"m": found}) if isinstance(found, BnMatch) else found

    def rewrite(self, m: Match, builder: GraphBuilder) -> None:
        rewrite(m["m"], builder)


@register
class FoldTransposeBn(RulePass):
    name = "fold-transpose-bn"
    summary = "turns Transpose -> BatchNormalization -> inverse Transpose into Mul + Add on the original layout"
    kind = PassKind.EXACT
    tags = ("ascend",)

    def rules(self) -> list[Rule]:
        return [FoldBn()]

    def nothing_to_do(self, ctx: RuleContext) -> str | None:
        return "no BatchNormalization between Transposes"


def _sole_user(graph: gs.Graph, tensor: gs.Tensor) -> gs.Node | None:
    users = {id(n): n for n in tensor.outputs}
    if len(users) != 1 or is_graph_output(graph, tensor):
        return None
    return next(iter(users.values()))


def match(graph: gs.Graph, bn: gs.Node) -> BnMatch | Skip | None:
    """The fold for `bn`; a Skip with the reason; None when no Transpose feeds it."""
    source = bn.inputs[0]
    if len(source.inputs) != 1 or source.inputs[0].op != "Transpose":
        return None
    first = source.inputs[0]
    label = node_label(bn)
    if _sole_user(graph, source) is not bn:
        return Skip(label, "its input Transpose has other users or is a graph output")
    second = _sole_user(graph, bn.outputs[0]) if len(bn.outputs) == 1 else None
    if second is None or second.op != "Transpose":
        return Skip(label, "its output does not feed only a Transpose")
    if int(bn.attrs.get("training_mode", 0)):
        return Skip(label, "it is in training mode")
    perm = first.attrs.get("perm")
    x = first.inputs[0]
    rank = len(perm) if perm is not None else (len(x.shape) if getattr(x, "shape", None) is not None else None)
    if rank is None:
        return Skip(label, "the rank is unknown")
    p1 = [int(v) for v in perm] if perm is not None else list(range(rank))[::-1]
    p2 = [int(v) for v in second.attrs["perm"]] if "perm" in second.attrs else list(range(rank))[::-1]
    if len(p2) != rank or any(p1[p2[i]] != i for i in range(rank)):
        return Skip(label, f"{node_label(second)} perm {p2} does not undo perm {p1}")
    params = [const_value(t) for t in bn.inputs[1:5]]
    if len(params) != 4 or any(v is None for v in params):
        return Skip(label, "its scale, bias, mean or variance is not constant")
    gamma, beta, mean, var = (np.asarray(v, dtype=np.float64).reshape(-1) for v in params)
    eps = float(bn.attrs.get("epsilon", 1e-5))
    scale = gamma / np.sqrt(var + eps)
    shift = beta - mean * scale
    return BnMatch(first, bn, second, p1[1], rank, scale, shift)


def rewrite(m: BnMatch, b: GraphBuilder) -> None:
    """Mul + Add by per-channel constants broadcast along the channel axis of x; the three nodes removed."""
    x, y = m.first.inputs[0], m.second.outputs[0]
    dtype = x.dtype if x.dtype is not None and np.dtype(x.dtype).kind == "f" else np.float32
    shape = [1] * m.rank
    shape[m.axis] = m.scale.size
    for node in (m.second, m.bn, m.first):
        node.outputs.clear()
        node.inputs.clear()
        b.graph.nodes.remove(node)
    scaled = b.op("Mul", [x, b.const(m.scale.reshape(shape), "scale", dtype)], dtype=dtype, hint="mul")
    b.op("Add", [scaled, b.const(m.shift.reshape(shape), "shift", dtype)], outputs=[y], hint="add")
