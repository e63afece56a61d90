"""unflatten-gemm: a Linear on an N-D tensor written as Reshape -> Gemm -> Reshape back becomes MatMul (+ Add).

Before -> After (x: N x S x K, a Linear K -> M)::

    x -> Reshape([-1, K]) -> Gemm(W, b) -> Reshape([-1, S, M]) -> y       x -> MatMul(W) -> Add(b) -> y
    x -> Reshape([-1, K]) -> Gemm(W, b) -> Reshape(Concat(Shape(x)[:-1], [M])) -> y   (the same)
    x -> Reshape([-1, K]) -> Gemm(W, b) -> Reshape([-1, S, 3, H, D])      x -> MatMul(W) -> Add(b) -> Reshape(·)

Why: exporters write `nn.Linear` on a 3-D or 4-D tensor as MatMul + Add; onnxsim 0.8.1 rewrites that
pair into a 2-D Gemm between two Reshapes, and where the leading dims are dynamic it computes the second
Reshape's target from the input's Shape (Shape -> Slice -> Concat): 2 nodes become 3 or 6. onnxslim
keeps MatMul + Add, so on transformer exports (timm deit, edgenext) plain onnxsim's output was up to
100 nodes larger than onnxslim's. `simplify` applies this pass after onnxsim (so it is never larger
than onnxslim there); it is a pass of its own so other producers of the form get it too. A zero bias is
dropped (random initialisations have them; `x + 0` is `x`). MatMul on N-D inputs is one op on every
backend and on Ascend's atc.

Legal when: the first Reshape flattens exactly the leading dims (target `[-1, K]` or their product,
K the static last dim of x), the Gemm has transA=0, alpha=1 and beta=1, a constant 2-D B (transB:
transposed here) and a constant bias of M or 1 values (or none), each intermediate has only that one
reader and is not a graph output, and the second Reshape's target is constant without a 0 that copies
a dim (or with allowzero=1), or is the input's own leading dims and M. A target that restores
x's leading dims and M is dropped, any other stays after the MatMul. Opset 7 and later (numpy
broadcasting in Add). The same products and sums: exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import const_ints, const_value, node_label, reshape_ends
from onnxforge.passes._rewrite import Match, Rule, RuleContext, RulePass, sole_consumer
from onnxforge.passes._shapes import dims_held
from onnxforge.passes.base import PassKind, Skip
from onnxforge.passes.registry import register


@dataclass
class _Found(Match):
    x: gs.Tensor | None = None
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None  # None: no Add (absent or all zeros)
    first: gs.Node | None = None
    gemm: gs.Node | None = None
    second: gs.Node | None = None
    drop_second: bool = False


def _leading_dims_and(target: gs.Tensor, x: gs.Tensor, rank: int, m_out: int, ctx: RuleContext) -> bool:
    """Whether a computed Reshape target is Concat(x's leading rank-1 dims, [m_out]) (onnxsim's form:
    Shape -> Slice, or Shape with start/end, then a constant)."""
    if len(target.inputs) != 1 or target.inputs[0].op != "Concat" or len(target.inputs[0].inputs) != 2:
        return False
    head, tail = target.inputs[0].inputs
    held = dims_held(head, ctx)
    return const_ints(tail) == [m_out] and held is not None and held[0] is x and held[1] == list(range(rank - 1)) and not held[2]


class UnflattenLinear(Rule):
    """Reshape(x, [-1, K]) -> Gemm -> Reshape(...) reads x directly with a MatMul (+ Add)."""

    name = "gemms_unflattened"
    op_types = ("Gemm",)

    def match(self, node: gs.Node, ctx: RuleContext) -> Match | Skip | None:
        if not node.inputs or not node.outputs or len(node.inputs[0].inputs) != 1 or node.inputs[0].inputs[0].op != "Reshape":
            return None
        first = node.inputs[0].inputs[0]
        second = sole_consumer(ctx.graph, node.outputs[0])
        if second is None or second.op != "Reshape" or second.inputs[0] is not node.outputs[0]:
            return None
        label = node_label(node)
        if ctx.opset < 7:
            return Skip(label, f"opset {ctx.opset} has no broadcasting Add")
        if sole_consumer(ctx.graph, first.outputs[0]) is not node:
            return Skip(label, f"the flattened input {first.outputs[0].name} has other readers")
        x = first.inputs[0]
        dims = ctx.dims(x)
        if dims is None or len(dims) < 3 or dims[-1] is None:
            return Skip(label, f"the rank or last dim of {x.name} is unknown" if dims is None or len(dims) >= 3 else f"{x.name} is {len(dims)}-D")
        k = dims[-1]
        flat = const_ints(first.inputs[1])
        lead = None if any(d is None for d in dims[:-1]) else int(np.prod(dims[:-1]))
        if flat is None or len(flat) != 2 or flat[1] != k or flat[0] not in (-1, lead):
            return Skip(label, f"{node_label(first)} does not flatten the leading dims of {x.name} to [-1, {k}]")
        attrs = node.attrs
        if int(attrs.get("transA", 0)) or float(attrs.get("alpha", 1.0)) != 1.0 or (len(node.inputs) > 2 and float(attrs.get("beta", 1.0)) != 1.0):
            return Skip(label, "transA, alpha or beta is not the plain product")
        b = const_value(node.inputs[1])
        if b is None or b.ndim != 2:
            return Skip(label, "B is not a constant matrix")
        weight = b.T if int(attrs.get("transB", 0)) else b
        if weight.shape[0] != k:
            return Skip(label, f"B has {weight.shape[0]} rows for {k} input features")
        m_out = int(weight.shape[1])
        bias = None
        if len(node.inputs) > 2 and node.inputs[2].name:
            c = const_value(node.inputs[2])
            if c is None or c.size not in (1, m_out) or (c.size == m_out and c.ndim == 2 and c.shape[0] != 1) or c.ndim > 2:
                return Skip(label, "the bias is not a constant of one value per output feature")
            bias = None if not np.any(c) else c.reshape(-1)
        target = second.inputs[1]
        values = const_ints(target)
        natural = False
        if values is None:
            if not _leading_dims_and(target, x, len(dims), m_out, ctx):
                return Skip(label, f"the target of {node_label(second)} is computed and is not {x.name}'s leading dims and {m_out}")
            natural = True
        else:
            if 0 in values and not int(second.attrs.get("allowzero", 0)):
                return Skip(label, f"the target of {node_label(second)} has a 0 that copies a dim of the 2-D product")
            known = [v == d for v, d in zip(values[:-1], dims[:-1])]
            natural = (len(values) == len(dims) and values[-1] == m_out and values.count(-1) <= 1
                       and all(ok or v == -1 for ok, v in zip(known, values[:-1])))
        return _Found(label, node=node, x=x, weight=weight, bias=bias, first=first, gemm=node, second=second, drop_second=natural)

    def rewrite(self, m: Match, builder: GraphBuilder) -> None:
        assert isinstance(m, _Found)
        graph, x, second = builder.graph, m.x, m.second
        out = second.outputs[0] if m.drop_second else None
        if out is not None:
            second.outputs.clear()
            second.inputs.clear()
            graph.nodes.remove(second)
        outs = [out] if out is not None and m.bias is None else None
        y = builder.op("MatMul", [x, builder.const(np.ascontiguousarray(m.weight), "weight")], outputs=outs, dtype=x.dtype, hint="matmul")
        if m.bias is not None:
            y = builder.op("Add", [y, builder.const(m.bias, "bias")], outputs=[out] if out is not None else None, dtype=x.dtype, hint="bias")
        if out is None:
            second.inputs[0] = y
        for node in (m.gemm, m.first):
            node.outputs.clear()
            node.inputs.clear()
            graph.nodes.remove(node)


@register
class UnflattenGemm(RulePass):
    name = "unflatten-gemm"
    summary = "Reshape -> Gemm -> Reshape back (onnxsim's form of an N-D Linear) becomes MatMul + Add"
    kind = PassKind.EXACT

    def rules(self) -> list[Rule]:
        return [UnflattenLinear()]

    def nothing_to_do(self, ctx: RuleContext) -> str | None:
        return "no Gemm between a flattening Reshape and a Reshape back"


def has_candidates(model: onnx.ModelProto) -> bool:
    """Whether a ModelProto has a Reshape -> Gemm -> Reshape chain (cheap: no import of the graph; a
    classifier head's Flatten -> Gemm is not one)."""
    reshaped, reshape_inputs = reshape_ends(model)
    return any(n.op_type == "Gemm" and n.input and n.input[0] in reshaped and n.output and n.output[0] in reshape_inputs for n in model.graph.node)
