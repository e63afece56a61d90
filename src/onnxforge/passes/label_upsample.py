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
from typing import Literal

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxforge.passes._graph import Namer, inferred_types, node_label
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
        types = inferred_types(state.view())  # before state.graph, which is what gets rewritten
        graph = state.graph
        opset = state.opset
        wanted = set(self.options.outputs)
        names = {t.name for t in graph.outputs}
        skipped = [Skip(m, "no graph output of that name") for m in sorted(wanted - names)]
        matches: list[_Match] = []
        for out in graph.outputs:
            if wanted and out.name not in wanted:
                continue
            found = self._match(graph, out, types, opset)
            if isinstance(found, str):
                skipped.append(Skip(out.name, found))
            else:
                matches.append(found)
        if not matches:
            return PassResult(False, {"outputs_rewritten": 0}, skipped=skipped)
        namer = Namer(graph, "label_upsample")
        rewritten = [m.out.name for m in matches]
        notes = [self._rewrite(graph, m, namer, opset) for m in matches]
        return PassResult(
            True,
            {"outputs_rewritten": len(matches), "rewritten": ", ".join(rewritten)},
            skipped=skipped,
            notes=notes,
        )

    # ------------------------------------------------------------------------------------ matching

    def _match(self, graph: gs.Graph, out: gs.Tensor, types: dict, opset: int) -> _Match | str:
        """The rewrite for one graph output, or the reason there is none."""
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
            if not _sole_use(graph, t, types):
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
                if not _sole_use(graph, t, types):
                    return f"the tensor {node.op} reads ({t.name}) feeds other nodes or is a graph output"
                node = _producer(t)
        elif tail and (node is None or node.op != "Resize"):
            return f"produced by {_producer(out).op}, not by a Resize or an ArgMax of one"
        resizes = []
        while node is not None and node.op == "Resize":
            if resizes and not _sole_use(graph, node.outputs[0], types):
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
        if dims is None or len(dims) != 4:
            return f"the Resize input {t.name} is not 4-D (N,C,H,W)"
        if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
            return f"the Resize input {t.name} is not float logits"
        if not isinstance(dims[1], int) or dims[1] < 2:
            return f"{dims[1]} channel(s): not class logits (C > 1 needed)"
        if self.options.label_dtype == "uint8" and dims[1] > 256:
            return f"{dims[1]} classes do not fit label_dtype=uint8"
        _, out_dims = types.get(last.outputs[0].name, (0, None))
        if out_dims is None or len(out_dims) != 4:
            return f"the output of Resize {node_label(last)} is not 4-D"
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

    def _rewrite(self, graph: gs.Graph, m: _Match, namer: Namer, opset: int) -> str:
        n, c, h, w = m.dims
        big_h, big_w = m.out_hw
        elem, np_type = _LABEL_TYPES[self.options.label_dtype]
        first = m.resizes[0]
        low = gs.Variable(namer("labels_low"), dtype=np.int64, shape=[n, 1, h, w])
        graph.nodes.append(gs.Node("ArgMax", name=namer("argmax"), attrs={"axis": 1, "keepdims": 1}, inputs=[m.logits], outputs=[low]))
        cast = gs.Variable(namer("labels_cast"), dtype=np_type, shape=[n, 1, h, w])
        graph.nodes.append(gs.Node("Cast", name=namer("cast"), attrs={"to": elem}, inputs=[low], outputs=[cast]))
        attrs = {k: v for k, v in nearest_attrs(first, (n, c, big_h, big_w) if isinstance(n, int) else None).items()
                 if k in ("coordinate_transformation_mode", "mode", "nearest_mode")}
        if isinstance(n, int):
            sizes = gs.Constant(namer("sizes"), np.array([n, 1, big_h, big_w], dtype=np.int64))
        elif opset >= 18:
            attrs["axes"] = [2, 3]
            sizes = gs.Constant(namer("sizes"), np.array([big_h, big_w], dtype=np.int64))
        else:  # N symbolic before opset 18: sizes = concat(shape(labels)[0:2], [H, W])
            head = gs.Variable(namer("batch_and_one"), dtype=np.int64, shape=[2])
            if opset >= 15:
                graph.nodes.append(gs.Node("Shape", name=namer("shape"), attrs={"start": 0, "end": 2}, inputs=[low], outputs=[head]))
            else:
                shape = gs.Variable(namer("shape"), dtype=np.int64, shape=[4])
                graph.nodes.append(gs.Node("Shape", name=namer("shape"), inputs=[low], outputs=[shape]))
                graph.nodes.append(gs.Node("Slice", name=namer("slice"), inputs=[
                    shape, gs.Constant(namer("s0"), np.array([0], np.int64)), gs.Constant(namer("s2"), np.array([2], np.int64))], outputs=[head]))
            sizes = gs.Variable(namer("sizes"), dtype=np.int64, shape=[4])
            graph.nodes.append(gs.Node("Concat", name=namer("concat"), attrs={"axis": 0}, inputs=[
                head, gs.Constant(namer("hw"), np.array([big_h, big_w], np.int64))], outputs=[sizes]))
        up = gs.Variable(namer("labels_up"), dtype=np_type, shape=[n, 1, big_h, big_w])
        graph.nodes.append(gs.Node(
            "Resize", name=namer("resize"), attrs=attrs, inputs=[cast, gs.Variable.empty(), gs.Variable.empty(), sizes], outputs=[up],
        ))
        target = m.target
        out_name = m.out.name  # before renaming: target may be the output itself
        final_shape = [n, 1, big_h, big_w] if m.keepdims else [n, big_h, big_w]
        new = gs.Variable(target.name, dtype=np.int64, shape=final_shape)
        target.name = namer("replaced")
        if m.keepdims:
            graph.nodes.append(gs.Node("Cast", name=namer("to_int64"), attrs={"to": onnx.TensorProto.INT64}, inputs=[up], outputs=[new]))
        else:
            wide = gs.Variable(namer("labels_int64"), dtype=np.int64, shape=[n, 1, big_h, big_w])
            graph.nodes.append(gs.Node("Cast", name=namer("to_int64"), attrs={"to": onnx.TensorProto.INT64}, inputs=[up], outputs=[wide]))
            if opset >= 13:
                graph.nodes.append(gs.Node("Squeeze", name=namer("squeeze"), inputs=[wide, gs.Constant(namer("axis1"), np.array([1], np.int64))], outputs=[new]))
            else:
                graph.nodes.append(gs.Node("Squeeze", name=namer("squeeze"), attrs={"axes": [1]}, inputs=[wide], outputs=[new]))
        _fold_shapes(m.chain, m.types)
        for consumer in list(target.outputs):
            consumer.inputs = [new if x is target else x for x in consumer.inputs]
        graph.outputs = [new if x is target else x for x in graph.outputs]
        coord = attrs["coordinate_transformation_mode"]
        form = "logits output becomes int64 labels (N,1,H,W)" if not m.with_argmax else "ArgMax output keeps its form"
        dropped = " and Softmax" if m.with_softmax else ""
        return (
            f"{out_name}: ArgMax at {h}x{w} + nearest ({coord}, {self.options.label_dtype}) label resize to "
            f"{big_h}x{big_w} replaces {len(m.resizes)} Resize(s){dropped} of {c} channels; {form}"
        )


def _producer(t: gs.Tensor) -> gs.Node | None:
    return t.inputs[0] if t.inputs else None


def _sole_use(graph: gs.Graph, t: gs.Tensor, types: dict) -> bool:
    """t feeds exactly one node besides Shape nodes of a static t (folded on rewrite), and is not a graph output."""
    return len(_data_consumers(t, types)) == 1 and not any(o is t for o in graph.outputs)


def _static_dims(t: gs.Tensor, types: dict) -> tuple[int, ...] | None:
    dims = types.get(t.name, (0, None))[1]
    if dims is None or not all(isinstance(d, int) and d >= 0 for d in dims):
        return None
    return tuple(dims)


def _data_consumers(t: gs.Tensor, types: dict) -> list[gs.Node]:
    static = _static_dims(t, types) is not None
    return [n for n in t.outputs if not (static and n.op == "Shape")]


def _fold_shapes(chain: list[gs.Tensor], types: dict) -> None:
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
            const = gs.Constant(out.name, value)
            for consumer in list(out.outputs):
                consumer.inputs = [const if x is out else x for x in consumer.inputs]
            node.outputs = []


def _rank(types: dict, t: gs.Tensor) -> int | None:
    dims = types.get(t.name, (0, None))[1]
    return len(dims) if dims is not None else None
