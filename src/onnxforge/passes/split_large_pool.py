"""split-large-pool: an AveragePool / MaxPool with a kernel side over a limit becomes a cascade of smaller pools.

Before -> After (kernel 512 with stride 512 on W, limit 255)::

    x -> AveragePool<kernel=[1,512], strides=[1,512]> -> y
        ->  x -> AveragePool<kernel=[1,32], strides=[1,32]> -> AveragePool<kernel=[1,16], strides=[1,16]> -> y

Why: atc's AvgPool / MaxPool take kernel sides up to 255 on the AI Core; larger windows (a fixed-size
"global" pool on a big input, as torch exports ``F.avg_pool2d(x, x.shape[2:])`` or an adaptive pool
whose output is 1) fail to compile or run on the AI CPU (Ascend's surgeon knowledge for large
pooling kernels).

Legal (exact) when, on every side whose kernel k exceeds the limit: the windows tile the axis (stride
equal to k, or the input side equals k so there is one window), and k factors into numbers no larger
than the limit. The pool has no pads, ``auto_pad`` NOTSET or VALID, no dilation, ``ceil_mode`` 0, and
(MaxPool) no Indices output. Then stage i pools non-overlapping blocks of k_i, so stage by stage the
blocks compose into the original windows: the max of maxes is the max, and the mean of equal-sized
means is the mean (within float rounding). Sides within the limit keep their kernel and stride in
the first stage. Not done (kept with the reason): overlapping windows (stride < k), a k with a prime
factor over the limit (e.g. 257), pads (AveragePool would mix padded and unpadded counts).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from onnxforge.errors import PipelineError
from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import node_label, static_shape
from onnxforge.passes._rewrite import Match, Rule, RuleContext, RulePass
from onnxforge.passes.base import PassKind, Skip, option
from onnxforge.passes.registry import register


@dataclass(frozen=True)
class SplitLargePoolOptions:
    max_kernel: int = option(255, "largest kernel side the target compiles on the AI Core")


def factors(k: int, limit: int) -> list[int] | None:
    """k as a product of factors each at most `limit`, largest first (greedy), or None when impossible."""
    out = []
    while k > limit:
        f = next((d for d in range(limit, 1, -1) if k % d == 0), None)
        if f is None:
            return None
        out.append(f)
        k //= f
    out.append(k)
    return sorted(out, reverse=True)


class PoolCascade(Rule):
    """A pool with a kernel side over `max_kernel` replaced by a cascade of tiling pools."""

    name = "pools_split"
    op_types = ("AveragePool", "MaxPool")

    def match(self, node: gs.Node, ctx: RuleContext) -> Match | Skip | None:
        limit = ctx.options.max_kernel
        if all(int(k) <= limit for k in node.attrs.get("kernel_shape", [])):
            return None
        found = match(node, limit)
        return Match(node_label(node), node=node, values={"stages": found}) if isinstance(found, list) else found

    def rewrite(self, m: Match, builder: GraphBuilder) -> None:
        rewrite(m.node, m["stages"], builder)


@register
class SplitLargePool(RulePass):
    name = "split-large-pool"
    summary = "splits an AveragePool/MaxPool with a kernel side over a limit into a cascade of smaller pools"
    kind = PassKind.EXACT
    tags = ("ascend",)
    Options = SplitLargePoolOptions

    def validate(self) -> None:
        if self.options.max_kernel < 2:
            raise PipelineError(f"split-large-pool: max_kernel must be at least 2, got {self.options.max_kernel}")

    def rules(self) -> list[Rule]:
        return [PoolCascade()]

    def nothing_to_do(self, ctx: RuleContext) -> str | None:
        return f"no pool with a kernel side over {ctx.options.max_kernel}"


def match(node: gs.Node, limit: int) -> list[tuple[list[int], list[int]]] | Skip:
    """The cascade as (kernel, strides) per stage, or a Skip with the reason."""
    label = node_label(node)
    kernel = [int(k) for k in node.attrs["kernel_shape"]]
    n = len(kernel)
    strides = [int(s) for s in node.attrs.get("strides", [1] * n)]
    if any(int(p) for p in node.attrs.get("pads", [])):
        return Skip(label, "it has pads")
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return Skip(label, f"auto_pad is {node.attrs['auto_pad']}")
    if any(int(d) != 1 for d in node.attrs.get("dilations", [])) or int(node.attrs.get("ceil_mode", 0)):
        return Skip(label, "it has dilations or ceil_mode")
    if len([o for o in node.outputs if o.name]) > 1:
        return Skip(label, "its Indices output is used")
    shape = static_shape(node.inputs[0])
    spatial = shape[2:] if shape is not None and len(shape) == n + 2 else None
    per_side = []
    for axis, (k, s) in enumerate(zip(kernel, strides)):
        if k <= limit:
            per_side.append([(k, s)])
            continue
        if s != k and (spatial is None or spatial[axis] != k):
            return Skip(label, f"its windows on side {axis} overlap (kernel {k}, stride {s}): not exact as a cascade")
        fs = factors(k, limit)
        if fs is None:
            return Skip(label, f"kernel side {k} has a prime factor over {limit}")
        per_side.append([(f, f) for f in fs])
    depth = max(len(p) for p in per_side)
    stages = []
    for i in range(depth):
        ks = [p[i][0] if i < len(p) else 1 for p in per_side]
        ss = [p[i][1] if i < len(p) else 1 for p in per_side]
        stages.append((ks, ss))
    return stages


def rewrite(node: gs.Node, stages: list[tuple[list[int], list[int]]], b: GraphBuilder) -> None:
    """The pool replaced by one pool per stage, the last producing the original output."""
    x, y = node.inputs[0], node.outputs[0]
    attrs = {k: v for k, v in node.attrs.items() if k in ("count_include_pad", "storage_order")}
    op = node.op
    node.outputs.clear()
    node.inputs.clear()
    b.graph.nodes.remove(node)
    for i, (ks, ss) in enumerate(stages):
        last = i == len(stages) - 1
        x = b.op(op, [x], {**attrs, "kernel_shape": ks, "strides": ss}, dtype=x.dtype, outputs=[y] if last else None, hint=op.lower())
