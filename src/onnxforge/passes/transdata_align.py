"""transdata-align: pad the channels of conv features that cross a layout boundary to a multiple of C0.

Before -> After (C = 19, c0 = 16, C' = 32)::

    Conv(W: 19xK, b: 19) -> [Resize / Relu / ...] -> T (N,19,H,W) -> graph output | Reshape | Softmax | ArgMax ...
        ->  Conv(W': 32xK zero-padded, b': 32 zero-padded) -> [Resize / Relu / ...] -> (N,32,H,W)
                -> Slice(axis=1, 0:19) -> T (N,19,H,W) -> the same consumers

Why: Ascend's AI Core keeps conv features in NC1HWC0 (C split in blocks of C0 = 16 for fp16). Where a
tensor leaves that layout, for a graph output or an ND operator (Reshape, Transpose, Softmax, ArgMax,
MatMul...), atc inserts a TransData to NCHW. With C not a multiple of C0 the last block is ragged and
TransData has to pad and unpad inside. Padding the producing Conv with zero channels makes the
conversion move whole blocks; the Slice that drops the padding runs in the ND world. The Fast-SCNN
porting guide did this by hand (19 classes -> 32).

Legality: T is 4-D with a static channel count; walking back from T through channel-wise ops (each of
whose outputs feeds only the next op) reaches a Conv with group=1 and constant weights (and bias).
Channel-wise ops are elementwise activations, Resize, pooling, and Add/Mul/Sub/Div by constants that
broadcast over channels (BatchNormalization gets identity padding). The padded channels are zero after
the Conv and never reach a consumer, so the pass is exact (checked by the manager).

Cost: the Conv and the channel-wise ops between it and the boundary compute C'/C times the channels
(for Fast-SCNN's 19 -> 32 that includes the full-resolution Resize). The statistics give a static
estimate of the bytes crossing layout boundaries (elements x dtype size, at the graph's dtype; on the
device fp16 halves it): the padded tensors carry more bytes after, but no ragged block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxforge.errors import PipelineError
from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import const_value, node_label
from onnxforge.passes._rewrite import sole_consumer
from onnxforge.passes.base import ModelState, Pass, PassKind, PassResult, Skip, option
from onnxforge.passes.registry import register

#: Operators that work on plain ND tensors: their 4-D inputs leave the NC1HWC0 layout.
ND_OPS = frozenset({
    "Reshape", "Transpose", "Softmax", "LogSoftmax", "ArgMax", "ArgMin", "Flatten", "Squeeze", "Unsqueeze",
    "MatMul", "Gemm", "Gather", "GatherND", "TopK", "DepthToSpace", "SpaceToDepth",
})
#: Ops that treat channels independently and carry no per-channel parameters.
CHANNELWISE_OPS = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "HardSwish", "Elu", "Selu", "Softplus",
    "Resize", "Upsample", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Identity", "Dropout",
    "Cast", "Neg", "Abs",
})
_BINARY_OPS = frozenset({"Add", "Mul", "Sub", "Div"})


@dataclass(frozen=True)
class TransdataAlignOptions:
    c0: int = option(16, "channel block of the NC1HWC0 layout (16 for fp16, 32 for int8)")


@dataclass
class _Plan:
    boundary: gs.Tensor  # T
    conv: gs.Node
    chain: list[gs.Node]  # nodes after the Conv up to T's producer, in order
    channels: int
    padded: int


@register
class TransdataAlign(Pass):
    """Pads Conv output channels to a multiple of c0 where the features cross a layout boundary, and
    slices them back at the boundary.

    Contract: every tensor keeps its name, shape and values; only Conv (and BatchNormalization)
    parameters between a boundary and its Conv grow by zero channels.
    """

    name = "transdata-align"
    summary = "pad conv channels crossing a layout boundary to a multiple of C0 (zero weights, sliced back)"
    kind = PassKind.EXACT
    Options = TransdataAlignOptions

    def validate(self) -> None:
        if self.options.c0 < 2:
            raise PipelineError(f"pass 'transdata-align': c0 must be at least 2, got {self.options.c0}")

    def run(self, state: ModelState) -> PassResult:
        types = state.types()
        graph = state.graph
        c0 = self.options.c0
        boundaries = _boundaries(graph, types)
        skipped: list[Skip] = []
        plans: list[_Plan] = []
        bytes_before = bytes_after = 0
        ragged_before = ragged_after = 0
        for t, where in boundaries:
            elem, dims = types[t.name]
            channels = int(dims[1])
            size = _itemsize(elem) * (math.prod(int(d) if isinstance(d, int) else 1 for d in dims))
            bytes_before += size
            if channels % c0 == 0:
                bytes_after += size
                skipped.append(Skip(t.name, f"{channels} channels, already a multiple of c0={c0} ({where})"))
                continue
            ragged_before += 1
            plan = _plan(graph, t, types, channels, c0)
            if isinstance(plan, str):
                bytes_after += size
                ragged_after += 1
                skipped.append(Skip(t.name, f"{plan} ({where})"))
                continue
            bytes_after += size // channels * plan.padded
            plans.append(plan)
        stats: dict[str, int | float | str] = {
            "boundaries": len(boundaries),
            "ragged_before": ragged_before,
            "ragged_after": ragged_after,
            "transdata_bytes_before": bytes_before,
            "transdata_bytes_after": bytes_after,
        }
        if not plans:
            notes = [] if boundaries else ["no 4-D tensor with a static channel count crosses a layout boundary"]
            return PassResult(False, stats, skipped=skipped, notes=notes)
        builder = GraphBuilder(graph, "transdata_align")
        notes = [self._rewrite(builder, p, types) for p in plans]
        stats["padded"] = len(plans)
        stats["padded_tensors"] = ", ".join(f"{p.boundary.name} {p.channels}->{p.padded}" for p in plans)
        notes.append(
            f"estimated bytes crossing layout boundaries: {bytes_before} -> {bytes_after} (ND side, graph dtype); "
            f"ragged C0 blocks: {ragged_before} -> {ragged_after}"
        )
        return PassResult(True, stats, skipped=skipped, notes=notes)

    def _rewrite(self, b: GraphBuilder, p: _Plan, types: dict) -> str:
        extra = p.padded - p.channels
        conv = p.conv
        weight = const_value(conv.inputs[1])
        pad_w = np.zeros((extra,) + weight.shape[1:], dtype=weight.dtype)
        conv.inputs[1] = b.const(np.concatenate([weight, pad_w], axis=0), "weight")
        if len(conv.inputs) > 2 and conv.inputs[2].name:
            bias = const_value(conv.inputs[2])
            conv.inputs[2] = b.const(np.concatenate([bias, np.zeros(extra, dtype=bias.dtype)]), "bias")
        for node in p.chain:
            if node.op == "Resize" and len(node.inputs) > 3 and node.inputs[3].name:
                # an explicit output size names the channel count too (dynamo writes [N, C, H, W])
                sizes = np.array(const_value(node.inputs[3]), dtype=np.int64)
                axes = [int(a) % 4 for a in node.attrs.get("axes", range(4))]
                if 1 in axes:
                    sizes[axes.index(1)] = p.padded
                    node.inputs[3] = b.const(sizes, "sizes")
            if node.op == "BatchNormalization":
                # identity on the padded channels: scale 1, bias 0, mean 0, var 1
                for i, fill in zip(range(1, 5), (1.0, 0.0, 0.0, 1.0)):
                    value = const_value(node.inputs[i])
                    node.inputs[i] = b.const(np.concatenate([value, np.full(extra, fill, dtype=value.dtype)]), "bn")
        last = p.chain[-1] if p.chain else conv
        t = p.boundary
        for node in [conv, *p.chain]:
            out = node.outputs[0]
            if out is not t and out.shape is not None and len(out.shape) == 4:
                out.shape = [out.shape[0], p.padded, *out.shape[2:]]
        elem, dims = types[t.name]
        padded = gs.Variable(b.name("padded"), dtype=t.dtype, shape=[dims[0], p.padded, *dims[2:]])
        last.outputs = [padded]
        b.slice(padded, [0], [p.channels], [1], out=t, hint="slice")
        through = f" through {', '.join(n.op for n in p.chain)}" if p.chain else ""
        return f"{t.name}: {node_label(conv)} padded {p.channels} -> {p.padded} channels{through}, sliced back before the boundary"


def _itemsize(elem: int) -> int:
    try:
        return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).itemsize)
    except (KeyError, TypeError):
        return 4


def _is_nd(node: gs.Node) -> bool:
    """Whether node works on plain ND tensors (so its 4-D input leaves NC1HWC0, its output is ND)."""
    return node.op in ND_OPS or (node.op == "Slice" and _slice_axes(node) == [1])


def _boundaries(graph: gs.Graph, types: dict) -> list[tuple[gs.Tensor, str]]:
    """4-D float tensors with a static channel count, produced by a layout-keeping op, that are graph
    outputs or feed an ND op (an ND op's output is ND already: no TransData)."""
    found: dict[int, tuple[gs.Tensor, str]] = {}

    def consider(t: gs.Tensor, where: str) -> None:
        if isinstance(t, gs.Constant) or not t.name or id(t) in found or t.name not in types:
            return
        if not t.inputs or _is_nd(t.inputs[0]):
            return
        elem, dims = types[t.name]
        if len(dims) != 4 or not isinstance(dims[1], int) or elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            return
        found[id(t)] = (t, where)

    for out in graph.outputs:
        consider(out, "graph output")
    for node in graph.nodes:
        if _is_nd(node) and node.inputs:
            consider(node.inputs[0], f"read by {node.op} {node_label(node)}")
    return list(found.values())


def _plan(graph: gs.Graph, t: gs.Tensor, types: dict, channels: int, c0: int) -> _Plan | str:
    """How to pad the Conv feeding boundary tensor t, or the reason it cannot be padded."""
    chain: list[gs.Node] = []
    current = t
    while True:
        node = current.inputs[0] if current.inputs else None
        if node is None:
            return "a graph input, not produced by a Conv"
        if current is not t and sole_consumer(graph, current) is None:
            return f"{current.name} between the Conv and the boundary feeds other nodes too"
        if node.op == "Conv":
            break
        if node.op in CHANNELWISE_OPS and not _channelwise(node):
            return f"{node.op} {node_label(node)} on the way has parameters computed at run time (run simplify first)"
        if not _channelwise(node):
            return f"produced by {node.op} {node_label(node)}, not a Conv (through channel-wise ops); cannot pad"
        chain.append(node)
        current = node.inputs[0]
    conv = node
    group = int(conv.attrs.get("group", 1))
    if group != 1:
        return f"produced by a grouped Conv {node_label(conv)} (group={group}); padding it would need padded inputs"
    weight = const_value(conv.inputs[1])
    if weight is None or weight.shape[0] != channels:
        return f"Conv {node_label(conv)} weights are not constant"
    if len(conv.inputs) > 2 and conv.inputs[2].name and const_value(conv.inputs[2]) is None:
        return f"Conv {node_label(conv)} bias is not constant"
    chain.reverse()
    return _Plan(t, conv, chain, channels, -(-channels // c0) * c0)


def _channelwise(node: gs.Node) -> bool:
    """Whether node treats channels independently with no per-channel parameters we cannot pad."""
    if node.op in CHANNELWISE_OPS:
        # Resize sizes/scales computed at run time (the legacy exporter's Shape chains) are not followed;
        # simplify folds them to constants.
        return all(i == 0 or not x.name or const_value(x) is not None for i, x in enumerate(node.inputs))
    if node.op in _BINARY_OPS and len(node.inputs) == 2:
        data = [x for x in node.inputs if const_value(x) is None]
        consts = [const_value(x) for x in node.inputs if const_value(x) is not None]
        if len(data) != 1 or len(consts) != 1 or (node.op in ("Sub", "Div") and const_value(node.inputs[0]) is not None):
            return False
        shape = consts[0].shape
        return len(shape) < 3 or shape[len(shape) - 3] == 1
    if node.op == "BatchNormalization":
        return all(const_value(x) is not None for x in node.inputs[1:5]) and len(node.outputs) == 1
    return False


def _slice_axes(node: gs.Node) -> list[int] | None:
    """The constant axes of a Slice (opset >= 10 inputs), else None."""
    if len(node.inputs) < 4 or not node.inputs[3].name:
        return None
    axes = const_value(node.inputs[3])
    return None if axes is None else [int(a) for a in np.asarray(axes).ravel()]
