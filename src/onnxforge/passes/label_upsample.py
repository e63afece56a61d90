"""label-upsample: ArgMax at the logits' resolution, then a nearest resize of the label map.

Before -> After (L: N,C,h,w class logits; the output keeps its name)::

    L -> Resize(linear, ->H,W) -> "out" (N,C,H,W float)
        ->  L -> ArgMax(axis=1, keepdims=1) -> Cast(int32) -> Resize(nearest, ->H,W) -> Cast(int64) -> "out" (N,1,H,W int64)
    L -> Resize -> [Resize ...] -> [Softmax(axis=1)] -> ArgMax(axis=1) -> [Unsqueeze/Reshape/Cast...] -> "out"
        ->  L -> ArgMax -> Cast -> Resize(nearest) -> Cast(int64) [-> Squeeze] -> [the same tail] -> "out"

Why: upsampling C float channels to full resolution and then taking the ArgMax touches C*H*W values;
taking the ArgMax at h*w and upsampling one label channel is far less work and data. Measured on this
machine (onnxruntime CPU, 2 threads, Fast-SCNN 1x3x1024x2048, 19 classes): plain export 88 ms, ArgMax
after the full-resolution logits +23 ms, ArgMax at 1/8 + nearest label resize 67 ms.

**The output form changes** where the output was logits: it becomes an int64 label map (N,1,H,W),
under the same name; consumers of the model (the evaluator's postprocess, a deployment) must read labels.
Where the graph already ended in ArgMax (mmseg's export), the output keeps its shape and dtype.

Legality: the output's chain is Resize(s) of 4-D class logits (C > 1, N and C not resized), optionally
followed by a Softmax/LogSoftmax whose normalisation cannot change the ArgMax (over the class axis), an
ArgMax over axis 1 and shape-only ops; every intermediate tensor feeds only the next node; the output's
spatial size is static (scales computed at run time are fine once shape inference knows the size).

Approximate: the label map is a nearest resize of the low-resolution ArgMax, with the coordinate mode of
the first Resize and the rounding of resize-nearest (the closest low-resolution pixel). A pixel can only
change where the low-resolution pixels its bilinear interpolation blends carry different labels, i.e.
along class boundaries (a convex blend of logit vectors that share an ArgMax keeps it); boundaries get
blockier by up to half a low-resolution pixel. With a single nearest Resize the rewrite is exact.
Run it before transdata-align (whose channel Slice would hide the Resize); transdata-align then pads the
Conv feeding the ArgMax instead. The label map is resized as int32 by default (onnxruntime has no int64 Resize); ``label_dtype=uint8``
halves that traffic again for up to 256 classes, ``float`` suits backends that resize floats only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import node_label
from onnxforge.passes._rewrite import replace_all_uses, replace_options, sole_consumer, take_name
from onnxforge.passes.base import ModelState, Pass, PassKind, PassResult, Skip, option
from onnxforge.passes.registry import register
from onnxforge.passes.resize_nearest import nearest_attrs

#: Ops allowed between the ArgMax and the graph output (mmseg unsqueezes; others cast or reshape).
TAIL_OPS = frozenset({"Unsqueeze", "Squeeze", "Reshape", "Identity", "Cast", "Flatten"})
_LABEL_TYPES = {
    "int32": (onnx.TensorProto.INT32, np.int32),
    "uint8": (onnx.TensorProto.UINT8, np.uint8),
    "float": (onnx.TensorProto.FLOAT, np.float32),
}


@dataclass(frozen=True)
class LabelUpsampleOptions:
    outputs: tuple[str, ...] = option((), "only these graph outputs (default: every output that matches)")
    label_dtype: Literal["int32", "uint8", "float"] = option("int32", "element type the label map is resized in")


@dataclass
class _Match:
    out: gs.Tensor  # graph output
    logits: gs.Tensor  # L, the low-resolution logits
    resizes: list[gs.Node]  # first (from L) to last
    target: gs.Tensor  # tensor the new chain replaces: the ArgMax output, or the last Resize output
    keepdims: bool  # the target keeps the class axis (N,1,H,W), else (N,H,W)
    dims: tuple  # L's dims
    out_hw: tuple[int, int]
    with_softmax: bool
    with_argmax: bool
    chain: list[gs.Tensor]  # intermediate tensors of the old chain (Shape readers get folded)
    types: dict  # inferred (elem_type, dims) by tensor name


@register
class LabelUpsample(Pass):
    """Rewrites segmentation heads that upsample class logits into an ArgMax at low resolution followed
    by a nearest resize of the label map.

    Contract: matched graph outputs keep their names; logits outputs become int64 label maps (N,1,H,W),
    ArgMax outputs keep shape and dtype. Unmatched outputs are untouched and reported with a reason.
    """

    name = "label-upsample"
    summary = "ArgMax at low resolution, then a nearest resize of the label map (instead of upsampling logits)"
    kind = PassKind.APPROXIMATE
    Options = LabelUpsampleOptions

    def run(self, state: ModelState) -> PassResult:
        matches, skipped = self._matches(state)
        if not matches:
            return PassResult(False, {"outputs_rewritten": 0}, skipped=skipped)
        builder = GraphBuilder(state.graph, "label_upsample")
        rewritten = [m.out.name for m in matches]
        notes = [self._rewrite(builder, m) for m in matches]
        return PassResult(
            True,
            {"outputs_rewritten": len(matches), "rewritten": ", ".join(rewritten)},
            skipped=skipped,
            notes=notes,
        )

    def _matches(self, state: ModelState) -> tuple[list[_Match], list[Skip]]:
        types = state.types()  # any order is fine; first is cheaper (no export of the graph)
        graph = state.graph
        wanted = set(self.options.outputs)
        names = {t.name for t in graph.outputs}
        skipped = [Skip(m, "no graph output of that name") for m in sorted(wanted - names)]
        matches: list[_Match] = []
        for out in graph.outputs:
            if wanted and out.name not in wanted:
                continue
            found = self._match(graph, out, types, state.opset)
            if isinstance(found, str):
                skipped.append(Skip(out.name, found))
            else:
                matches.append(found)
        return matches, skipped

    def candidates(self, model: onnx.ModelProto) -> list[str]:
        """The graph outputs this pass would rewrite, in graph order (node-selecting protocol)."""
        return [m.out.name for m in self._matches(ModelState(model))[0]]

    def with_nodes(self, names: Sequence[str]) -> "LabelUpsample":
        """This pass limited to the graph outputs `names` (non-empty)."""
        if not names:
            raise ValueError("with_nodes needs at least one output name (an empty outputs= selects every output)")
        return replace_options(self, outputs=tuple(names))

    # ------------------------------------------------------------------------------------ matching

    def _match(self, graph: gs.Graph, out: gs.Tensor, types: dict, opset: int) -> _Match | str:
        """The rewrite for one graph output, or the reason there is none."""
        if opset < 11:
            return f"the label Resize needs output sizes, which Resize takes from opset 11 (this graph: {opset}; run target-opset first)"
        t = out
        tail = 0
        while _producer(t) is not None and _producer(t).op in TAIL_OPS:
            t = _producer(t).inputs[0]
            tail += 1
        node = _producer(t)
        with_softmax = with_argmax = False
        softmax_out: gs.Tensor | None = None
        keepdims = True
        target = t
        if node is not None and node.op == "ArgMax":
            axis = int(node.attrs.get("axis", 0))
            rank = _rank(types, node.inputs[0])
            if rank != 4 or axis % 4 != 1:
                return f"ArgMax over axis {axis} of a rank-{rank} tensor, not the class axis of N,C,H,W logits"
            if int(node.attrs.get("select_last_index", 0)):
                return "ArgMax with select_last_index=1"
            keepdims = bool(int(node.attrs.get("keepdims", 1)))
            with_argmax = True
            t = node.inputs[0]
            if sole_consumer(graph, t, _folded_shape(t, types)) is None:
                return f"the tensor ArgMax reads ({t.name}) feeds other nodes or is a graph output"
            node = _producer(t)
            if node is not None and node.op in ("Softmax", "LogSoftmax"):
                axis = int(node.attrs.get("axis", 1 if opset < 13 else -1))
                axis %= 4
                if (opset >= 13 and axis != 1) or (opset < 13 and axis > 1):
                    return f"{node.op} over axis {axis} can change the ArgMax over classes; left as is"
                with_softmax = True
                softmax_out = t
                t = node.inputs[0]
                if sole_consumer(graph, t, _folded_shape(t, types)) is None:
                    return f"the tensor {node.op} reads ({t.name}) feeds other nodes or is a graph output"
                node = _producer(t)
        elif tail and (node is None or node.op != "Resize"):
            return f"produced by {_producer(out).op}, not by a Resize or an ArgMax of one"
        resizes = []
        while node is not None and node.op == "Resize":
            if resizes and sole_consumer(graph, node.outputs[0], _folded_shape(node.outputs[0], types)) is None:
                return f"the output of Resize {node_label(node)} feeds other nodes or is a graph output"
            resizes.append(node)
            t = node.inputs[0]
            node = _producer(t)
        if not resizes:
            what = node.op if node is not None else "a graph input"
            hint = " (run label-upsample before transdata-align)" if what == "Slice" else ""
            return f"not produced by a Resize (optionally followed by Softmax/ArgMax); produced by {what}{hint}"
        resizes.reverse()
        last = resizes[-1]
        if node is not None and (node.op == "ArgMax" or (node.op == "Cast" and _producer(node.inputs[0]) is not None and _producer(node.inputs[0]).op == "ArgMax")):
            return "already upsamples a label map (ArgMax before the Resize)"
        if tail and not with_argmax:
            return "shape ops between the Resize and the output, without an ArgMax; left as is"
        if not with_argmax and _data_consumers(last.outputs[0], types):
            return f"the Resize output {out.name} also feeds other nodes; turning it into labels would change them"
        elem, dims = types.get(t.name, (0, None))
        if dims is None:
            return f"the Resize input {t.name} has no inferred shape (run simplify or static-shape first)"
        if len(dims) != 4:
            return f"the Resize input {t.name} is not 4-D (N,C,H,W): rank {len(dims)}"
        if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
            return f"the Resize input {t.name} is not float logits"
        if not isinstance(dims[1], int) or dims[1] < 2:
            return f"{dims[1]} channel(s): not class logits (C > 1 needed)"
        if self.options.label_dtype == "uint8" and dims[1] > 256:
            return f"{dims[1]} classes do not fit label_dtype=uint8"
        _, out_dims = types.get(last.outputs[0].name, (0, None))
        if out_dims is None:
            return f"the output of Resize {node_label(last)} has no inferred shape (sizes computed at run time; run simplify first)"
        if len(out_dims) != 4:
            return f"the output of Resize {node_label(last)} is not 4-D: rank {len(out_dims)}"
        if not all(isinstance(d, int) and d > 0 for d in out_dims[2:]):
            return f"Resize {node_label(last)}: output size unknown (scales computed at run time)"
        if out_dims[:2] != dims[:2]:
            return f"Resize {node_label(last)} resizes the batch or class axis"
        if not with_argmax:
            target = last.outputs[0]
        chain = [r.outputs[0] for r in resizes] + ([softmax_out] if softmax_out is not None else [])
        return _Match(
            out, t, resizes, target, keepdims, tuple(dims), (int(out_dims[2]), int(out_dims[3])), with_softmax, with_argmax,
            chain, types,
        )

    # ------------------------------------------------------------------------------------ rewriting

    def _rewrite(self, b: GraphBuilder, m: _Match) -> str:
        n, c, h, w = m.dims
        big_h, big_w = m.out_hw
        elem, np_type = _LABEL_TYPES[self.options.label_dtype]
        first = m.resizes[0]
        low = b.op("ArgMax", [m.logits], {"axis": 1, "keepdims": 1}, dtype=np.int64, shape=[n, 1, h, w], hint="labels_low")
        cast = b.cast(low, elem, hint="labels_cast")
        cast.shape = [n, 1, h, w]
        attrs = {k: v for k, v in nearest_attrs(first, (n, c, big_h, big_w) if isinstance(n, int) else None).items()
                 if k in ("coordinate_transformation_mode", "mode", "nearest_mode")}
        if isinstance(n, int):
            sizes = b.ints([n, 1, big_h, big_w], "sizes")
        elif b.opset >= 18:  # Resize over the spatial axes only: no size computation needed
            attrs["axes"] = [2, 3]
            sizes = b.ints([big_h, big_w], "sizes")
        else:  # N symbolic: sizes = concat(shape(labels)[0:2], [H, W])
            sizes = b.concat([b.shape(low, 0, 2, hint="batch_and_one"), b.ints([big_h, big_w], "hw")], 0, hint="sizes")
        up = b.resize(cast, sizes=sizes, hint="labels_up", **attrs)
        up.dtype, up.shape = np_type, [n, 1, big_h, big_w]
        target = m.target
        out_name = m.out.name  # before renaming: target may be the output itself
        new = gs.Variable(target.name, dtype=np.int64, shape=[n, 1, big_h, big_w] if m.keepdims else [n, big_h, big_w])
        take_name(target, new, b)
        if m.keepdims:
            b.cast(up, onnx.TensorProto.INT64, out=new, hint="to_int64")
        else:
            b.squeeze(b.cast(up, onnx.TensorProto.INT64, hint="labels_int64"), [1], out=new, hint="squeeze")
        _fold_shapes(b.graph, m.chain, m.types)
        replace_all_uses(b.graph, target, new)
        coord = attrs["coordinate_transformation_mode"]
        form = "logits output becomes int64 labels (N,1,H,W)" if not m.with_argmax else "ArgMax output keeps its form"
        dropped = " and Softmax" if m.with_softmax else ""
        return (
            f"{out_name}: ArgMax at {h}x{w} + nearest ({coord}, {self.options.label_dtype}) label resize to "
            f"{big_h}x{big_w} replaces {len(m.resizes)} Resize(s){dropped} of {c} channels; {form}"
        )


def _producer(t: gs.Tensor) -> gs.Node | None:
    return t.inputs[0] if t.inputs else None


def _static_dims(t: gs.Tensor, types: dict) -> tuple[int, ...] | None:
    dims = types.get(t.name, (0, None))[1]
    if dims is None or not all(isinstance(d, int) and d >= 0 for d in dims):
        return None
    return tuple(dims)


def _folded_shape(t: gs.Tensor, types: dict):
    """Readers of t that do not count as uses: Shape nodes of a static t (folded on rewrite)."""
    static = _static_dims(t, types) is not None
    return lambda n: static and n.op == "Shape"


def _data_consumers(t: gs.Tensor, types: dict) -> list[gs.Node]:
    ignore = _folded_shape(t, types)
    return [n for n in t.outputs if not ignore(n)]


def _fold_shapes(graph: gs.Graph, chain: list[gs.Tensor], types: dict) -> None:
    """Replaces Shape nodes reading static tensors of the old chain (the legacy exporter's size
    computations) by constants, so that the old chain becomes dead."""
    for t in chain:
        dims_t = _static_dims(t, types)
        if dims_t is None:
            continue
        for node in [n for n in t.outputs if n.op == "Shape"]:
            dims = np.array(dims_t, dtype=np.int64)
            start, end = int(node.attrs.get("start", 0)), node.attrs.get("end")
            value = dims[start:] if end is None else dims[start:int(end)]
            out = node.outputs[0]
            replace_all_uses(graph, out, gs.Constant(out.name, value))
            node.outputs = []


def _rank(types: dict, t: gs.Tensor) -> int | None:
    dims = types.get(t.name, (0, None))[1]
    return len(dims) if dims is not None else None
