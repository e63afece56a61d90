"""fix-topk: TopK's k input and indices output as int32, the types Ascend's TopK has (backend-only).

Before -> After::

    x, k:int64 -> TopK -> values, indices:int64 -> ...
        ->  x, k32:int32 -> TopK -> values, i32:int32 -> Cast<to=int64> -> indices -> ...

    (a constant k becomes an int32 constant; a k computed at run time gets a Cast<to=int32>)

Why: the NPU implements TopK (TopKV2) with k and indices as int32, while ONNX defines both as int64,
and atc does not handle the difference correctly in some cases (Ascend's retired surgeon tool's
knowledge for TopK, which rewrote the graph exactly like this). Torch exports ``torch.topk`` (detection
heads, retrieval, top-k accuracy) as a TopK with an int64 k.

Not standard ONNX, on purpose: ONNX TopK accepts only an int64 k and produces only int64 indices, so
no valid ONNX graph has the int32 ports atc wants (a Cast back to int64 after the indices does not make
the TopK itself valid). The pass's kind is therefore ``backend-only``: onnx.checker, strict shape
inference and onnxruntime reject its output, the verifier checks no stage from it on (the stage record
says so), and the ``ascend`` shortcut (exact passes only) leaves it out. Give it by name, last, before
compiling with atc: ``--passes simplify,ascend,fix-topk``. The values are unchanged where they fit
int32: k is a constant at most 2**31 - 1 (a larger one is kept with the reason) or computed at run time
(as k <= the axis size, it fits wherever the axis does); indices are below the axis size, so an axis
known to have 2**31 elements or more is kept with the reason (an axis of unknown size is taken to fit,
as no device tensor has that many elements on one axis). The consumers of the indices still read int64
(the Cast back), so the rest of the graph is unchanged. Opset 1-9 TopK has k as an attribute: nothing
to fix.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import const_value, is_graph_output, node_label
from onnxforge.passes._rewrite import Match, Rule, RuleContext, RulePass, replace_all_uses, take_name
from onnxforge.passes.base import PassKind, Skip
from onnxforge.passes.registry import register

INT32_MAX = int(np.iinfo(np.int32).max)


def _is_int32(k: gs.Tensor) -> bool:
    """Whether `k` is int32 already: an int32 constant or the output of a Cast to int32."""
    value = const_value(k)
    if value is not None:
        return np.asarray(value).dtype == np.int32
    return len(k.inputs) == 1 and k.inputs[0].op == "Cast" and int(k.inputs[0].attrs["to"]) == onnx.TensorProto.INT32


class TopkToInt32(Rule):
    """A TopK with an int64 k gets an int32 k and int32 indices (Cast back to int64 for their readers)."""

    name = "topk_fixed"
    op_types = ("TopK",)

    def match(self, node: gs.Node, ctx: RuleContext) -> Match | Skip | None:
        if len(node.inputs) < 2 or _is_int32(node.inputs[1]):
            return None  # k is an attribute (opset < 10) or the TopK is fixed already
        value = const_value(node.inputs[1])
        if value is not None and int(np.asarray(value).reshape(-1)[0]) > INT32_MAX:
            return self.skip(node, f"k = {int(np.asarray(value).reshape(-1)[0])} does not fit int32")
        dims = ctx.dims(node.inputs[0], inferred_first=True)
        axis = int(node.attrs.get("axis", -1))
        size = dims[axis] if dims is not None and -len(dims) <= axis < len(dims) else None
        if size is not None and size > INT32_MAX:
            return self.skip(node, f"its axis has {size} elements: indices may not fit int32")
        return Match(node_label(node), node=node, values={"k": value})

    def rewrite(self, m: Match, builder: GraphBuilder) -> None:
        node = m.node
        if m["k"] is not None:  # a fresh constant: a shared one is left for its other users
            node.inputs[1] = builder.const(np.asarray(m["k"]).astype(np.int32), "k")
        else:
            node.inputs[1] = builder.cast(node.inputs[1], onnx.TensorProto.INT32, hint="k")
        indices = node.outputs[1] if len(node.outputs) > 1 else None
        if indices is None or not indices.name or (not indices.outputs and not is_graph_output(builder.graph, indices)):
            return
        narrow = gs.Variable(builder.name("indices"), dtype=np.dtype(np.int32), shape=indices.shape)
        node.outputs[1] = narrow
        wide = builder.cast(narrow, onnx.TensorProto.INT64, hint="indices")
        wide.shape = indices.shape
        replace_all_uses(builder.graph, indices, wide)  # the Cast's output takes the old tensor's place and name
        take_name(indices, wide, builder, "indices")


@register
class FixTopk(RulePass):
    name = "fix-topk"
    summary = "TopK's k and indices as int32 for atc (backend-only: the output is no longer standard ONNX)"
    kind = PassKind.BACKEND_ONLY
    tags = ("ascend",)

    def rules(self) -> list[Rule]:
        return [TopkToInt32()]

    def nothing_to_do(self, ctx: RuleContext) -> str | None:
        return "no TopK with an int64 k"
