"""adaptive-pool: finds adaptive average pooling in every form exporters emit and rewrites it compactly.

Before -> After (X is N,C,H,W; Y is N,C,oh,ow)::

    dynamo decomposition (non-divisible sizes), e.g. 32x64 -> 3x3:
      X -> Transpose -> GatherND -> Transpose -> Where -> Gather x276 / Add x263 -> Div -> Y
                                                ->  MatMul(MatMul(A_h, X), A_w^T) -> Y    (mode=exact)
                                                ->  AveragePool(k, s) -> Y               (mode=emulate)
    dynamo, equal-length windows (63x63 -> 2x2, 63x63 -> 6x6):
      X -> Transpose -> GatherND -> Transpose -> ReduceMean -> Y   ->  AveragePool(k, s) -> Y
    dynamo, 1x1:        X -> ReduceMean(axes=2,3, keepdims=1) -> Y  ->  GlobalAveragePool -> Y
    custom / contrib:   X -> AdaptiveAvgPool2d(output_size) -> Y     ->  the compact form below
    legacy exporter:    AveragePool / GlobalAveragePool             (already compact: left as is)

PyTorch's window i over an axis of length n pooled to m is ``[floor(i*n/m), ceil((i+1)*n/m))``. The
exact compact form is GlobalAveragePool for 1x1, one AveragePool where the windows on both axes are
regular (equal length, constant step: always when m divides n, sometimes otherwise, e.g. 63 -> 2), and
otherwise the separable averaging-matrix form ``A_h @ X @ A_w^T`` whose row i holds ``1/len(window i)``
over window i (the form `onnxforge.frontends.adaptive` uses in PyTorch; the window arithmetic of both
is `onnxforge.pooling`). ``mode=emulate`` instead writes
the single AveragePool ``k = n-(m-1)*floor(n/m), s = floor(n/m)`` that mmcv's ONNX symbolic and the
Fast-SCNN guide use; it equals adaptive pooling only where the windows coincide (the pass says so per
region), so that mode is approximate.

How a region is found (legality):
- Y is a static 4-D float tensor (N,C,oh,ow) produced by a pooling-chain op (Gather, GatherND, Add,
  Div, Where, Transpose, ReduceMean, Concat, Reshape, Slice, MatMul, Constant, ...).
- Walking back from Y through pooling-chain ops reaches exactly one non-constant tensor X, 4-D with
  static spatial size (H,W) != (oh,ow) and the same N and C as Y; everything else is a constant. H < oh
  (pooling up, e.g. VGG's 7x7 head on a 5x5 feature) is legal: windows overlap and repeat, there is no
  AveragePool for it (its stride would be 0, also under mode=emulate) and the averaging matrices are exact.
- The region is **confirmed numerically**: the subgraph X -> Y is run in onnxruntime on a seeded random X
  and must equal a numpy adaptive average pool of X to float tolerance. Only confirmed regions are
  rewritten, so the rewrite is exact by construction (mode=exact). Single ReduceMean/AveragePool nodes are
  judged from their attributes instead. Custom ``AdaptiveAvgPool2d`` nodes (any domain) are trusted by
  their ``output_size`` attribute or static output shape, since onnxruntime cannot run them.
- Intermediate tensors of a region may have other consumers: Y's consumers are redirected to the new
  form and only what becomes dead is removed. Y keeps its name.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxforge.errors import ForgeError
from onnxforge.numerics import make_session
from onnxforge.pooling import (
    adaptive_avg_pool_reference,
    averaging_matrix,
    can_emulate,
    emulated_kernel_stride,
    emulation_is_exact,
    is_adaptive,
)
from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import const_value, node_label
from onnxforge.passes.base import ModelState, Pass, PassKind, PassResult, Skip, option
from onnxforge.passes.registry import register

log = logging.getLogger(__name__)

#: Ops an exporter's decomposition of adaptive pooling is made of. A region is a connected set of these.
CHAIN_OPS = frozenset({
    "Transpose", "Gather", "GatherND", "GatherElements", "Add", "Sum", "Sub", "Mul", "Div", "Where",
    "ReduceMean", "ReduceSum", "AveragePool", "GlobalAveragePool", "Concat", "Split", "Unsqueeze",
    "Squeeze", "Reshape", "Flatten", "Slice", "Expand", "Identity", "Cast", "Constant", "MatMul",
    "Shape", "ConstantOfShape", "Range",
})
#: A region must contain one of these (a pure Slice/Reshape region is a crop, not a pool).
REDUCING_OPS = frozenset({"Add", "Sum", "ReduceMean", "ReduceSum", "AveragePool", "GlobalAveragePool", "MatMul", "Div"})
#: Custom / contrib spellings of adaptive average pooling (matched in any domain).
CUSTOM_OPS = frozenset({"AdaptiveAvgPool2d", "AdaptiveAveragePool2d", "AdaptiveAvgPool", "adaptive_avg_pool2d"})

_TOLERANCE = {np.dtype(np.float16): 1e-2, np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-9}
_MAX_REGION_NODES = 20000
#: Single nodes judged from their attributes rather than by running them.
_ANALYTIC_OPS = frozenset({"AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum"})
_MAX_TRIES_PER_OUTPUT = 3  # input candidates tried for one output
_MAX_INNER_TRIES = 2  # outputs inside a failed chain tried before setting the chain aside


@dataclass(frozen=True)
class AdaptivePoolOptions:
    mode: Literal["exact", "emulate"] = option(
        "exact", "exact: Global/AveragePool or averaging matrices (exact); emulate: mmcv/guide AveragePool (approximate)"
    )


# ---------------------------------------------------------------------------------------------- regions


@dataclass
class _Region:
    """A confirmed adaptive pooling X -> Y."""

    label: str
    x: gs.Tensor
    y: gs.Tensor
    nodes: list[gs.Node]
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    source: str  # what the exporter emitted, for messages
    dtype: np.dtype | None = None  # X's element type (None: float32)
    removed: int = 0
    form: str = ""
    exact: bool = True


@dataclass
class _Failure:
    """A chain that looked like pooling and was not confirmed."""

    nodes: list[gs.Node]
    reason: str  # empty when no input candidate could even be tried


@dataclass
class _TensorInfo:
    elem_type: int
    dims: tuple[int | str | None, ...]

    @property
    def dtype(self) -> np.dtype | None:
        try:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(self.elem_type))
        except (KeyError, TypeError):
            return None


@dataclass
class _Context:
    graph: gs.Graph
    model: onnx.ModelProto
    infos: dict[str, _TensorInfo]
    index: dict[int, int]  # id(gs node) -> index of its NodeProto in model.graph.node
    initializers: dict[str, onnx.TensorProto]
    covered: set[int] = field(default_factory=set)  # id(tensor) of tensors inside confirmed regions


@register
class AdaptivePool(Pass):
    """Recognises adaptive average pooling (exporter decompositions, ReduceMean, custom nodes) and
    rewrites each region compactly; exact under mode=exact, the mmcv emulation under mode=emulate.

    Contract: only regions confirmed to compute adaptive average pooling are touched; tensor names of
    region outputs and graph outputs are preserved; other nodes are left alone.
    """

    name = "adaptive-pool"
    summary = "adaptive average pooling (dynamo decompositions, ReduceMean, custom nodes) -> compact exact form"
    kind = PassKind.EXACT
    Options = AdaptivePoolOptions

    def effective_kind(self) -> PassKind:
        return PassKind.APPROXIMATE if self.options.mode == "emulate" else PassKind.EXACT

    def run(self, state: ModelState) -> PassResult:
        model = state.view()  # read-only: regions are confirmed numerically on subgraphs of the input model
        infos = _tensor_infos(state.types())
        if not _may_pool(model, infos):  # checked on the ModelProto: no import of the graph
            return PassResult(False, {}, notes=["no adaptive average pooling found"])
        graph = state.graph
        ctx = _Context(
            graph=graph,
            model=model,
            infos=infos,
            index={id(n): i for i, n in enumerate(graph.nodes)},
            initializers={t.name: t for t in model.graph.initializer},
        )
        skipped: list[Skip] = []
        compact: list[str] = []
        regions: list[_Region] = []
        for node in reversed(list(graph.nodes)):
            if node.op in CUSTOM_OPS:
                found = self._custom(ctx, node, skipped)
                if found is not None:
                    regions.append(found)
                continue
            if node.op not in CHAIN_OPS or node.op == "Constant":
                continue
            for y in node.outputs:
                if id(y) in ctx.covered:
                    continue
                found = self._match(ctx, y, skipped, compact)
                if found is not None:
                    regions.append(found)
                    ctx.covered.update(id(t) for n in found.nodes for t in n.outputs)

        if not regions:
            notes = []
            if compact:
                notes.append(f"already compact: {', '.join(compact)}")
                if skipped:
                    notes.append(f"{len(skipped)} other candidate(s) skipped: " + "; ".join(map(str, skipped[:3])))
            elif not skipped:
                notes.append("no adaptive average pooling found")
            stats = {"already_compact": len(compact)} if compact else {}
            return PassResult(False, stats, skipped=skipped, notes=notes)

        builder = GraphBuilder(graph, "adaptive_pool")
        regions.reverse()  # graph order, for readable reports
        for region in regions:
            self._rewrite(graph, region, builder)
        alive_before = {id(n) for n in graph.nodes}
        graph.cleanup(remove_unused_graph_inputs=False)
        alive = {id(n) for n in graph.nodes}
        counted: set[int] = set()
        for region in regions:
            dead = {id(n) for n in region.nodes if id(n) in alive_before and id(n) not in alive} - counted
            region.removed = len(dead)
            counted |= dead
        notes = [_describe(r) for r in regions]
        for line in notes:
            log.debug("%s", line)
        stats: dict[str, int | float | str] = {
            "regions_rewritten": len(regions),
            "nodes_removed": sum(r.removed for r in regions),
            "regions": "; ".join(f"{r.label}: {r.removed} nodes -> {r.form}" for r in regions),
        }
        if compact:
            stats["already_compact"] = len(compact)
        if self.options.mode == "emulate":
            stats["emulated_inexact"] = sum(not r.exact for r in regions)
        return PassResult(True, stats, skipped=skipped, notes=notes)

    # ------------------------------------------------------------------------------------ matching

    def _custom(self, ctx: _Context, node: gs.Node, skipped: list[Skip]) -> _Region | None:
        label = node_label(node)
        x, y = node.inputs[0], node.outputs[0]
        xi, yi = ctx.infos.get(x.name), ctx.infos.get(y.name)
        if xi is None or len(xi.dims) != 4 or not _static(xi.dims[2:]):
            skipped.append(Skip(label, "input is not 4-D with a static spatial size"))
            return None
        in_hw = (int(xi.dims[2]), int(xi.dims[3]))
        size = node.attrs.get("output_size")
        if size is not None:
            size = [int(v) for v in (size if isinstance(size, (list, tuple)) else [size])]
            out_hw = (size[0], size[-1])
        elif yi is not None and len(yi.dims) == 4 and _static(yi.dims[2:]):
            out_hw = (int(yi.dims[2]), int(yi.dims[3]))
        else:
            skipped.append(Skip(label, "no output_size attribute and no static output shape"))
            return None
        if min(out_hw) < 1:
            skipped.append(Skip(label, f"output size {out_hw[0]}x{out_hw[1]} is not positive"))
            return None
        return _Region(label, x, y, [node], in_hw, out_hw, f"{node.op} node", dtype=xi.dtype)

    def _match(self, ctx: _Context, y: gs.Tensor, skipped: list[Skip], compact: list[str]) -> _Region | None:
        """The confirmed region ending at y, or None (with a Skip or a compact note where y looked like one).

        A chain ending at y that fails confirmation is not searched exhaustively: the latest few pooled-shape
        tensors inside it are tried (pooling followed by a scale, say), then the whole chain is set aside
        with one reason.
        """
        yi = _pooled_info(ctx, y)
        if yi is None:
            return None
        producer = y.inputs[0]
        if producer.op in _ANALYTIC_OPS and _rank(ctx, producer.inputs[0]) == 4:
            return self._single(ctx, producer, y, (int(yi.dims[2]), int(yi.dims[3])), skipped, compact)
        outcome = self._attempt(ctx, y, yi, compact)
        if not isinstance(outcome, _Failure):
            return outcome
        inner = sorted(
            (t for n in outcome.nodes for t in n.outputs if t is not y and _pooled_info(ctx, t) is not None),
            key=lambda t: -ctx.index.get(id(t.inputs[0]), 0),
        )
        found: _Region | None = None
        for t in inner[:_MAX_INNER_TRIES]:
            if t.inputs[0].op in _ANALYTIC_OPS:
                continue
            retry = self._attempt(ctx, t, _pooled_info(ctx, t), compact)
            if not isinstance(retry, _Failure):
                found = retry
                if retry is not None:
                    break
        ctx.covered.update(id(t) for n in outcome.nodes for t in n.outputs)
        if found is None and outcome.reason:
            skipped.append(Skip(node_label(producer), outcome.reason))
        return found

    def _attempt(self, ctx: _Context, y: gs.Tensor, yi: _TensorInfo, compact: list[str]) -> "_Region | _Failure | None":
        """Confirms the chain ending at y: a region, None (not a candidate, or already compact), or a failure."""
        label = node_label(y.inputs[0])
        out_hw = (int(yi.dims[2]), int(yi.dims[3]))
        nodes, leaves = _cone(y, lambda t: False)
        if not nodes or not any(n.op in REDUCING_OPS for n in nodes):
            return None
        candidates = [t for t in leaves if _fits(ctx, t, yi, out_hw)] if len(leaves) == 1 else []
        # A region may start inside what the walk reached (a channel shuffle or reshape ahead of the pool).
        candidates += sorted(
            (t for n in nodes for t in n.outputs if t is not y and _fits(ctx, t, yi, out_hw)),
            key=lambda t: ctx.index.get(id(t.inputs[0]), 0),
        )
        reasons = []
        for x in candidates[:_MAX_TRIES_PER_OUTPUT]:
            sub_nodes, sub_leaves = _cone(y, lambda t, x=x: t is x)
            if not sub_nodes or len(sub_leaves) != 1 or sub_leaves[0] is not x:
                continue
            xi = ctx.infos[x.name]
            in_hw = (int(xi.dims[2]), int(xi.dims[3]))
            ok, why = _confirm(ctx, sub_nodes, x, xi, y, yi, out_hw)
            if not ok:
                reasons.append(why)
                continue
            ops = Counter(n.op for n in sub_nodes if n.op != "Constant")
            if ops == _target_ops(in_hw, out_hw, self.options.mode):
                compact.append(f"{label} ({_form_name(in_hw, out_hw, self.options.mode)})")
                ctx.covered.update(id(t) for n in sub_nodes for t in n.outputs)
                return None
            source = ", ".join(f"{op} x{k}" if k > 1 else op for op, k in ops.most_common(4))
            source += " ..." if len(ops) > 4 else ""
            return _Region(label, x, y, sub_nodes, in_hw, out_hw, source, dtype=xi.dtype)
        reason = f"chain of {len(nodes)} pooling-like nodes is not adaptive average pooling: {reasons[0]}" if reasons else ""
        return _Failure(nodes, reason)

    def _single(
        self, ctx: _Context, node: gs.Node, y: gs.Tensor, out_hw: tuple[int, int], skipped: list[Skip], compact: list[str],
    ) -> _Region | None:
        """One node producing Y: judged from its attributes (no onnxruntime run needed)."""
        label = node_label(node)
        x = node.inputs[0] if node.inputs else None
        if x is None or isinstance(x, gs.Constant) or const_value(x) is not None:
            return None
        xi = ctx.infos.get(x.name)
        if xi is None or len(xi.dims) != 4 or not _static(xi.dims[2:]):
            return None
        in_hw = (int(xi.dims[2]), int(xi.dims[3]))
        if node.op == "GlobalAveragePool":
            compact.append(f"{label} (GlobalAveragePool)")
            return None
        if node.op == "AveragePool":
            windows = _avgpool_windows(node, in_hw)
            if windows is None:
                return None
            (kh, sh), (kw, sw) = windows
            if is_adaptive(in_hw[0], out_hw[0], kh, sh) and is_adaptive(in_hw[1], out_hw[1], kw, sw):
                compact.append(f"{label} (AveragePool)")
            elif _uses_avgpool(in_hw, out_hw, "emulate") and ((kh, sh), (kw, sw)) == (
                emulated_kernel_stride(*_axis(in_hw, out_hw, 0)), emulated_kernel_stride(*_axis(in_hw, out_hw, 1))
            ):
                skipped.append(Skip(label, (
                    f"AveragePool k={kh}x{kw} s={sh}x{sw} is the mmcv/guide emulation of adaptive pooling "
                    f"{in_hw[0]}x{in_hw[1]} -> {out_hw[0]}x{out_hw[1]}, not adaptive pooling itself; left as is"
                )))
            return None
        if node.op in ("ReduceMean", "ReduceSum"):
            axes = _reduce_axes(node, len(xi.dims))
            keep = int(node.attrs.get("keepdims", 1))
            if axes is None:
                skipped.append(Skip(label, f"{node.op} axes are computed at run time"))
                return None
            if node.op == "ReduceSum" or axes != [2, 3] or not keep:
                what = "sums" if node.op == "ReduceSum" else f"reduces axes {axes}{'' if keep else ' with keepdims=0'}"
                skipped.append(Skip(label, f"{node.op} {what}; only a mean over both spatial axes (2, 3) with keepdims=1 is global pooling"))
                return None
            return _Region(label, x, y, [node], in_hw, (1, 1), "ReduceMean", dtype=xi.dtype)
        return None

    # ------------------------------------------------------------------------------------ rewriting

    def _rewrite(self, graph: gs.Graph, region: _Region, b: GraphBuilder) -> None:
        (h, w), (oh, ow) = region.in_hw, region.out_hw
        dtype = np.dtype(region.dtype if region.dtype is not None else np.float32)
        new_y = gs.Variable(region.y.name, dtype=dtype, shape=region.y.shape)
        region.y.name = b.name("replaced")
        mode = self.options.mode
        if (oh, ow) == (1, 1):
            b.op("GlobalAveragePool", [region.x], outputs=[new_y], hint="global")
            region.form, region.exact = "GlobalAveragePool", True
        elif _uses_avgpool(region.in_hw, region.out_hw, mode):
            (kh, sh), (kw, sw) = emulated_kernel_stride(h, oh), emulated_kernel_stride(w, ow)
            b.op("AveragePool", [region.x], {"kernel_shape": [kh, kw], "strides": [sh, sw]}, outputs=[new_y], hint="avgpool")
            region.form = f"AveragePool k={kh}x{kw} s={sh}x{sw}"
            region.exact = emulation_is_exact(h, oh) and emulation_is_exact(w, ow)
        elif (oh, ow) == (h, w):  # a custom node that pools to its own size
            b.op("Identity", [region.x], outputs=[new_y], hint="identity")
            region.form, region.exact = "Identity", True
        else:
            # Irregular windows, or pooling up (m > n: windows overlap and repeat, and the emulation's
            # stride would be 0): the averaging matrices are exact for every size.
            current = region.x
            if oh != h:
                a_h = b.const(averaging_matrix(h, oh, dtype), "pool_h")
                current = b.op("MatMul", [a_h, current], dtype=dtype, outputs=None if ow != w else [new_y], hint="matmul_h")
            if ow != w:
                a_w_t = b.const(np.ascontiguousarray(averaging_matrix(w, ow, dtype).T), "pool_w_t")
                b.op("MatMul", [current, a_w_t], outputs=[new_y], hint="matmul_w")
            region.form = "MatMul x2 (averaging matrices)" if oh != h and ow != w else "MatMul (averaging matrix)"
            region.exact = True
        _redirect(graph, region.y, new_y)
        region.y = new_y


# ---------------------------------------------------------------------------------------------- helpers


def _describe(r: _Region) -> str:
    (h, w), (oh, ow) = r.in_hw, r.out_hw
    text = f"{r.label}: adaptive pooling {h}x{w} -> {oh}x{ow} ({r.source}; {r.removed} nodes removed) -> {r.form}"
    if not r.exact:
        text += " [emulation differs from adaptive pooling here]"
    elif r.form.startswith("MatMul") and (oh > h or ow > w):
        text += " [exact; pooling up: windows overlap and repeat, no AveragePool computes them]"
    elif r.form.startswith("AveragePool") or r.form.startswith("Global"):
        text += " [exact]"
    return text


def _form_name(in_hw: tuple[int, int], out_hw: tuple[int, int], mode: str) -> str:
    target = _target_ops(in_hw, out_hw, mode)
    return ", ".join(f"{op} x{k}" if k > 1 else op for op, k in target.items())


def _target_ops(in_hw: tuple[int, int], out_hw: tuple[int, int], mode: str) -> Counter:
    (h, w), (oh, ow) = in_hw, out_hw
    if (oh, ow) == (1, 1):
        return Counter({"GlobalAveragePool": 1})
    if _uses_avgpool(in_hw, out_hw, mode):
        return Counter({"AveragePool": 1})
    if (oh, ow) == (h, w):
        return Counter({"Identity": 1})
    return Counter({"MatMul": int(oh != h) + int(ow != w)})


def _uses_avgpool(in_hw: tuple[int, int], out_hw: tuple[int, int], mode: str) -> bool:
    """Whether the compact form is one AveragePool: regular windows, or any emulable size under emulate."""
    (h, w), (oh, ow) = in_hw, out_hw
    if mode == "emulate":
        return can_emulate(h, oh) and can_emulate(w, ow)
    return emulation_is_exact(h, oh) and emulation_is_exact(w, ow)


def _redirect(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """Every consumer of `old` (and the graph outputs) reads `new` instead."""
    for consumer in list(old.outputs):
        consumer.inputs = [new if t is old else t for t in consumer.inputs]
    graph.outputs = [new if t is old else t for t in graph.outputs]


def _pooled_info(ctx: _Context, t: gs.Tensor) -> _TensorInfo | None:
    """The info of t if it can be a pooling output: 4-D float with a static spatial size."""
    info = ctx.infos.get(t.name)
    if info is None or len(info.dims) != 4 or not _static(info.dims[2:]) or info.dtype is None or info.dtype.kind != "f":
        return None
    return info


def _rank(ctx: _Context, t: gs.Tensor) -> int | None:
    info = ctx.infos.get(t.name)
    return len(info.dims) if info is not None else None


def _static(dims: Sequence[int | str | None]) -> bool:
    return all(isinstance(d, int) and d > 0 for d in dims)


def _axis(in_hw: tuple[int, int], out_hw: tuple[int, int], i: int) -> tuple[int, int]:
    return in_hw[i], out_hw[i]


def _avgpool_windows(node: gs.Node, in_hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """((kh, sh), (kw, sw)) of an unpadded, undilated, floor-mode 2-D AveragePool, else None."""
    kernel = list(node.attrs.get("kernel_shape", []))
    strides = list(node.attrs.get("strides", [1] * len(kernel)))
    pads = list(node.attrs.get("pads", [0] * (2 * len(kernel))))
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    dilations = list(node.attrs.get("dilations", [1] * len(kernel)))
    if len(kernel) != 2 or any(pads) or auto_pad not in ("NOTSET", "VALID") or any(d != 1 for d in dilations):
        return None
    if int(node.attrs.get("ceil_mode", 0)):
        return None
    return (int(kernel[0]), int(strides[0])), (int(kernel[1]), int(strides[1]))


def _reduce_axes(node: gs.Node, rank: int) -> list[int] | None:
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
        value = const_value(node.inputs[1])
        if value is None:
            return None
        axes = value.ravel().tolist()
    if axes is None:
        return [] if int(node.attrs.get("noop_with_empty_axes", 0)) else list(range(rank))
    return sorted(int(a) % rank for a in axes)


def _may_pool(model, infos: dict[str, _TensorInfo]) -> bool:
    """Whether the graph can hold a region at all: a custom adaptive-pool node, or two 4-D float tensors
    with the same known N and C and different static spatial sizes (a pooling's input and output, as
    `_pooled_info` and `_fits` require). Most dynamic-size graphs have neither."""
    if any(n.op_type in CUSTOM_OPS for n in model.graph.node):
        return True
    sizes: dict[tuple, set] = {}
    for info in infos.values():
        dims = info.dims
        if len(dims) == 4 and _static(dims[2:]) and None not in dims[:2] and info.dtype is not None and info.dtype.kind == "f":
            seen = sizes.setdefault(tuple(dims[:2]), set())
            seen.add(tuple(dims[2:]))
            if len(seen) > 1:
                return True
    return False


def _tensor_infos(types: dict) -> dict[str, _TensorInfo]:
    """Element type and dims of every tensor shape inference can name (`ModelState.types()`)."""
    return {name: _TensorInfo(elem, dims) for name, (elem, dims) in types.items()}


def _fits(ctx: _Context, t: gs.Tensor, yi: _TensorInfo, out_hw: tuple[int, int]) -> bool:
    """Whether t could be the input X of a pooling to Y: same N and C, another static spatial size, float.

    The input may be smaller than Y on either axis: adaptive pooling up (5x5 -> 7x7, VGG-style heads at
    small inputs) repeats and overlaps windows, and is as exact in the averaging-matrix form."""
    if isinstance(t, gs.Constant) or not t.name:
        return False
    ti = ctx.infos.get(t.name)
    if ti is None or len(ti.dims) != 4 or ti.dtype is None or ti.dtype.kind != "f" or not _static(ti.dims[2:]):
        return False
    if ti.dims[:2] != yi.dims[:2] or any(d is None for d in ti.dims[:2]):
        return False
    h, w = int(ti.dims[2]), int(ti.dims[3])
    return (h, w) != out_hw


def _cone(y: gs.Tensor, stop) -> tuple[list[gs.Node] | None, list[gs.Tensor]]:
    """Nodes reached walking back from y through pooling-chain ops (stopping at tensors where
    `stop(t)`) and the non-constant tensors where the walk ended; (None, []) if the region is too large."""
    nodes: dict[int, gs.Node] = {}
    leaves: dict[int, gs.Tensor] = {}
    stack = [y]
    seen: set[int] = set()
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        if isinstance(t, gs.Constant) or not t.name:
            continue
        if stop(t) or not t.inputs or t.inputs[0].op not in CHAIN_OPS:
            leaves[id(t)] = t
            continue
        producer = t.inputs[0]
        if id(producer) in nodes:
            continue
        nodes[id(producer)] = producer
        if len(nodes) > _MAX_REGION_NODES:
            return None, []
        stack.extend(producer.inputs)
    return list(nodes.values()), list(leaves.values())


def _confirm(
    ctx: _Context, nodes: list[gs.Node], x: gs.Tensor, xi: _TensorInfo, y: gs.Tensor, yi: _TensorInfo,
    out_hw: tuple[int, int],
) -> tuple[bool, str]:
    """Runs the subgraph X -> Y in onnxruntime on a seeded random X and compares with numpy pooling."""
    protos = [ctx.model.graph.node[ctx.index[id(n)]] for n in sorted(nodes, key=lambda n: ctx.index[id(n)])]
    names = {i for p in protos for i in p.input}
    inits = [ctx.initializers[n] for n in sorted(names) if n in ctx.initializers and n != x.name]
    sub = onnx.helper.make_graph(
        protos, "adaptive_pool_region",
        [onnx.helper.make_tensor_value_info(x.name, xi.elem_type, list(xi.dims))],
        [onnx.helper.make_tensor_value_info(y.name, yi.elem_type, list(yi.dims))],
        initializer=inits,
    )
    model = onnx.helper.make_model(sub, opset_imports=list(ctx.model.opset_import))
    model.ir_version = ctx.model.ir_version
    shape = [d if isinstance(d, int) and d > 0 else 2 for d in xi.dims]
    rng = np.random.default_rng(0)
    dtype = xi.dtype
    data = rng.standard_normal(shape).astype(dtype)
    try:
        session = make_session(model, threads=1)
        got = session.run(None, {x.name: data})[0]
    except ForgeError as exc:
        return False, f"the region does not run on its own ({exc})"
    except Exception as exc:  # onnxruntime's own error types (shape mismatch inside the region)
        return False, f"the region does not run on its own ({type(exc).__name__})"
    ref = adaptive_avg_pool_reference(data, out_hw)
    if got.shape != ref.shape:
        return False, f"output shape {got.shape} differs from {ref.shape}"
    err = float(np.abs(got.astype(np.float64) - ref).max()) if ref.size else 0.0
    tol = _TOLERANCE.get(np.dtype(dtype), 1e-4) * max(1.0, float(np.abs(ref).max()))
    if not np.isfinite(err) or err > tol:
        return False, f"on a random input it differs from adaptive pooling {xi.dims[2]}x{xi.dims[3]} -> {out_hw[0]}x{out_hw[1]} by {err:.3g}"
    return True, ""
