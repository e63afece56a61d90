"""split-qkv-matmul: the fused QKV projection of an attention block split into one projection per part.

Before -> After (ViT / timm ``Attention``: S = 3 parts, H heads of D channels, C = H * D)::

    x -> MatMul(W[K, 3C]) -> Add(b[3C]) -> Reshape([B, N, 3, H, D]) -> Transpose(2, 0, 3, 1, 4) -> t
    t -> Gather(0, axis=0) -> q,  t -> Gather(1, axis=0) -> k,  t -> Gather(2, axis=0) -> v
        ->  x -> MatMul(W[:, 0:C]) -> Add(b[0:C]) -> Reshape([B, N, H, D]) -> Transpose(0, 2, 1, 3) -> q
            (and the same with columns C:2C for k, 2C:3C for v)

Why: on Ascend the fused projection's output is reshaped, transposed as a whole (a TransposeD task
over 3C channels in global memory) and then gathered three times (GatherV2 tasks); with one MatMul
per part each part's Transpose is small, nothing is gathered, and atc can fuse each MatMul with its
Reshape/Transpose into the attention's BatchMatMul (Ascend's surgeon knowledge for QKV MatMuls, for
the vision transformers users port: ViT, DeiT, Swin, Segformer's attention).

The parts as exporters write them (all handled):

- ``q, k, v = qkv[0], qkv[1], qkv[2]``: Gathers with scalar indices (both torch exporters);
- ``qkv.unbind(0)``: Split into ones + Squeeze per output (TorchScript exporter), or one
  ``Slice(i : i + 1)`` + Squeeze per part (dynamo exporter); a part read by a Reshape instead of a
  Squeeze (simplify folds ``k.transpose(-2, -1)`` of a squeezed part that way) is fine: the Reshape
  reads the new part, which has the same elements in the same order (a target with a 0 is refused);
- the projection as ``MatMul`` (+ ``Add`` with the bias on either side), as the exporters write
  ``nn.Linear`` on a 3-D input, or as ``Gemm`` on a 2-D input (what ``simplify`` makes of it at a
  static batch: ``Reshape(x, [B*N, K]) -> Gemm -> Reshape([B, N, 3, H, D])``; ``transB`` either way).

Legal when: the weight (and the bias, if any) is a constant whose last axis (first for ``Gemm`` with
``transB=1``) has the projection's width; the Reshape target is constant and splits exactly the
projection's last axis into ``[S, *tail]`` (a 0 in the target only copies a leading dim); the
projection, the Reshape and the Transpose each feed only the next (none a graph output); and every
reader of the transposed tensor takes one part on the axis the S dim moved to (the forms above, with
constant indices). Parts nobody reads get no MatMul. Each new MatMul computes the same dot products
as the columns of the fused one, so the pass is exact (within float rounding of the matmul kernel).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import const_ints, const_value, is_graph_output, node_label
from onnxforge.passes._rewrite import Match, Rule, RuleContext, RulePass, sole_consumer
from onnxforge.passes._slices import slice_params
from onnxforge.passes.base import PassKind, Skip
from onnxforge.passes.registry import register

#: Ops that read the transposed QKV tensor and take parts of it.
_PART_OPS = ("Gather", "Split", "Slice")


@dataclass(frozen=True)
class Projection:
    """The fused projection: `node` (MatMul or Gemm) on `x`, its weight and optional bias (Add or Gemm C)."""

    node: gs.Node
    add: gs.Node | None
    x: gs.Tensor
    weight: np.ndarray
    bias: np.ndarray | None
    width: int  # the projection's output width (S * prod(tail))
    trans_b: bool  # Gemm with transB=1: the weight's output axis is its first


@dataclass(frozen=True)
class QkvMatch:
    proj: Projection
    lead: list[int]  # the Reshape target before the S dim
    tail: list[int]  # the Reshape target after it
    parts: int  # S
    perm: list[int]  # the Transpose's perm without the S axis, renumbered
    outputs: dict[int, list[gs.Tensor]]  # part index -> the tensors that are that part now
    readers: list[gs.Node]  # the nodes producing those tensors (detached by the rewrite)
    reshapes: dict[int, list[gs.Node]]  # part index -> Reshapes of the part (axis kept), re-pointed to it


def _squeeze_axes(node: gs.Node) -> list[int] | None:
    """A Squeeze's constant axes (attribute before opset 13, input from 13), None when not known."""
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    return const_ints(node.inputs[1]) if len(node.inputs) > 1 else None


def _projection(graph: gs.Graph, y: gs.Tensor) -> Projection | str | None:
    """The fused projection producing `y`; why it cannot be split; None when `y` comes from no projection."""
    if len(y.inputs) != 1:
        return None
    node, add, bias_t = y.inputs[0], None, None
    if node.op == "Add":
        add = node
        sides = [t for t in add.inputs if len(t.inputs) == 1 and t.inputs[0].op == "MatMul"]
        if len(sides) != 1 or len(add.inputs) != 2:
            return None
        bias_t = add.inputs[1] if add.inputs[0] is sides[0] else add.inputs[0]
        node = sides[0].inputs[0]
        if sole_consumer(graph, node.outputs[0]) is not add:
            return f"the output of {node_label(node)} has other uses"
    if node.op not in ("MatMul", "Gemm"):
        return None
    trans_b = False
    if node.op == "Gemm":
        if int(node.attrs.get("transA", 0)):
            return f"{node_label(node)} has transA=1"
        trans_b = bool(int(node.attrs.get("transB", 0)))
        bias_t = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    weight = const_value(node.inputs[1])
    if weight is None:
        return f"the weight of {node_label(node)} is computed at run time"
    weight = np.asarray(weight)
    if weight.ndim < 2 or (node.op == "Gemm" and weight.ndim != 2):
        return f"the weight of {node_label(node)} has rank {weight.ndim}"
    width = int(weight.shape[0] if trans_b else weight.shape[-1])
    bias = None
    if bias_t is not None:
        value = const_value(bias_t)
        if value is None:
            return f"the bias of {node_label(node)} is computed at run time"
        bias = np.asarray(value)
    return Projection(node, add, node.inputs[0], weight, bias, width, trans_b)


def _parts(graph: gs.Graph, t: gs.Tensor, axis: int, rank: int, count: int, opset: int) -> tuple[dict, list[gs.Node], dict] | str:
    """Part index -> the tensors that are that part (axis `axis` taken away), their producers, and the
    Reshapes that read a part with the axis kept (as simplify leaves a Squeeze followed by a Reshape)."""
    found: dict[int, list[gs.Tensor]] = {}
    readers: list[gs.Node] = []
    reshapes: dict[int, list[gs.Node]] = {}

    def squeezed(tensor: gs.Tensor, index: int) -> str:
        users = list({id(n): n for n in tensor.outputs}.values())
        if is_graph_output(graph, tensor) or not users:
            return f"part {index} is not only squeezed"
        for user in users:
            if user.op == "Reshape" and user.inputs[0] is tensor and tensor not in user.inputs[1:]:
                target = const_ints(user.inputs[1])
                if target is None or 0 in target:
                    return f"part {index} feeds {node_label(user)}, whose target is not constant or has a 0"
                reshapes.setdefault(index, []).append(user)
                continue
            axes = _squeeze_axes(user) if user.op == "Squeeze" else None
            if axes is None or [a % rank for a in axes] != [axis]:
                return f"part {index} feeds {user.op}, not a Squeeze of axis {axis} or a Reshape"
            found.setdefault(index, []).append(user.outputs[0])
            readers.append(user)
        return ""

    for user in {id(n): n for n in t.outputs}.values():
        label = node_label(user)
        if user.op == "Gather":
            index = const_ints(user.inputs[1])
            if int(user.attrs.get("axis", 0)) % rank != axis or index is None or np.asarray(const_value(user.inputs[1])).ndim != 0:
                return f"{label} is not a constant scalar index on axis {axis}"
            if not -count <= index[0] < count:
                return f"{label} index {index[0]} is out of range"
            found.setdefault(index[0] % count, []).append(user.outputs[0])
            readers.append(user)
        elif user.op == "Split":
            sizes = const_ints(user.inputs[1]) if len(user.inputs) > 1 else [int(s) for s in user.attrs.get("split", [1] * len(user.outputs))]
            if int(user.attrs.get("axis", 0)) % rank != axis or len(user.outputs) != count or sizes != [1] * count:
                return f"{label} does not split axis {axis} into ones"
            for index, out in enumerate(user.outputs):
                why = squeezed(out, index) if out.outputs or is_graph_output(graph, out) else ""
                if why:
                    return why
        elif user.op == "Slice":
            p = slice_params(user, opset)
            if isinstance(p, str) or len(p.axes) != 1 or p.axes[0] % rank != axis or p.steps != [1]:
                return f"{label} does not take one part of axis {axis}"
            taken = range(*slice(p.starts[0], p.ends[0], 1).indices(count))
            if len(taken) != 1:
                return f"{label} does not take one part of axis {axis}"
            why = squeezed(user.outputs[0], taken[0])
            if why:
                return why
        else:
            return f"it also feeds {label}"
    return found, readers, reshapes


class SplitQkv(Rule):
    """MatMul/Gemm (+ bias) -> Reshape -> Transpose -> parts, as one projection per part."""

    name = "projections_split"
    op_types = ("Reshape",)

    def match(self, reshape: gs.Node, ctx: RuleContext) -> Match | Skip | None:
        y, out = reshape.inputs[0], reshape.outputs[0]
        transpose = sole_consumer(ctx.graph, out)
        readers = transpose.outputs[0].outputs if transpose is not None and transpose.op == "Transpose" else []
        if not any(r.op in _PART_OPS for r in readers):
            return None
        proj = _projection(ctx.graph, y)
        if proj is None:
            return None
        if isinstance(proj, str):
            return self.skip(reshape, proj)
        if sole_consumer(ctx.graph, y) is not reshape:
            return self.skip(reshape, "the projection's output has other uses")
        if is_graph_output(ctx.graph, transpose.outputs[0]):
            return self.skip(reshape, "the transposed tensor is a graph output")
        target = const_ints(reshape.inputs[1])
        if target is None:
            return self.skip(reshape, "its target shape is computed at run time")
        rank = len(target)
        split = self._split_axis(target, proj.width, ctx.dims(y, inferred_first=True))
        if isinstance(split, str):
            return self.skip(reshape, split)
        s = split
        perm = [int(p) for p in transpose.attrs.get("perm", list(range(rank))[::-1])]
        axis = perm.index(s)
        parts = _parts(ctx.graph, transpose.outputs[0], axis, rank, target[s], ctx.opset)
        if isinstance(parts, str):
            return self.skip(reshape, parts)
        outputs, nodes, reshapes = parts
        new_perm = [p - (p > s) for p in perm if p != s]
        m = QkvMatch(proj, target[:s], target[s + 1:], target[s], new_perm, outputs, nodes, reshapes)
        return Match(node_label(reshape), node=reshape, values={"m": m})

    @staticmethod
    def _split_axis(target: list[int], width: int, y_dims) -> int | str:
        """The position of S in the target: the dims after it and S multiply to the projection's width."""
        y_rank = len(y_dims) if y_dims is not None else None
        prod = 1
        for s in range(len(target) - 1, 0, -1):
            d = target[s]
            if d <= 0:
                return "the target's last dims are not explicit"
            if prod * d == width and s < len(target) - 1:
                if any(v == 0 and (y_rank is None or i >= y_rank - 1) for i, v in enumerate(target[:s])):
                    return "a 0 in the target copies the projection's width"
                if d < 2:
                    return "the target has no parts dim"
                return s
            prod *= d
            if prod > width:
                break
        return f"the target {target} does not split the projection's width {width} into parts"

    def rewrite(self, match: Match, builder: GraphBuilder) -> None:
        m: QkvMatch = match["m"]
        p = m.proj
        size = p.width // m.parts
        for node in m.readers:  # detached: the old chain becomes dead and the manager's cleanup drops it
            node.outputs = []
        for index in sorted(set(m.outputs) | set(m.reshapes)):
            tensors = m.outputs.get(index) or [gs.Variable(builder.name("part"), dtype=p.x.dtype)]
            cols = slice(index * size, (index + 1) * size)
            w = p.weight[cols] if p.trans_b else p.weight[..., cols]
            bias = None
            if p.bias is not None:
                bias = p.bias[..., cols] if p.bias.ndim and p.bias.shape[-1] == p.width else p.bias
            ins = [p.x, builder.const(w, "weight")]
            if p.node.op == "Gemm":
                ins += [builder.const(bias, "bias")] if bias is not None else []
                attrs = {k: v for k, v in p.node.attrs.items() if k in ("alpha", "beta", "transB")}
                y = builder.op("Gemm", ins, attrs, dtype=p.x.dtype, hint="gemm")
            else:
                y = builder.op("MatMul", ins, dtype=p.x.dtype, hint="matmul")
                if bias is not None:
                    y = builder.op("Add", [y, builder.const(bias, "bias")], dtype=p.x.dtype, hint="add")
            r = builder.op("Reshape", [y, builder.ints(m.lead + m.tail, "shape")], dtype=p.x.dtype, hint="reshape")
            builder.op("Transpose", [r], {"perm": m.perm}, outputs=[tensors[0]], hint="transpose")
            for other in tensors[1:]:
                builder.op("Identity", [tensors[0]], outputs=[other], hint="part")
            for reshape in m.reshapes.get(index, []):  # the same elements in the same order, without the size-1 axis
                reshape.inputs[0] = tensors[0]


@register
class SplitQkvMatmul(RulePass):
    name = "split-qkv-matmul"
    summary = "splits a fused QKV projection (MatMul/Gemm -> Reshape -> Transpose -> parts) into one MatMul per part"
    kind = PassKind.EXACT
    tags = ("ascend",)

    def rules(self) -> list[Rule]:
        return [SplitQkv()]

    def nothing_to_do(self, ctx: RuleContext) -> str | None:
        return "no projection -> Reshape -> Transpose -> parts pattern"
