"""What a shape computation holds: which dims of which tensor a Shape, or a Slice / Gather of one, carries."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxforge.passes._graph import const_value
from onnxforge.passes._rewrite import RuleContext
from onnxforge.passes._slices import slice_params

_DEFAULT = (None, "", "ai.onnx")


def dims_held(tensor: gs.Tensor, ctx: RuleContext) -> tuple[gs.Tensor, list[int], bool] | None:
    """(x, the positions of x's dims `tensor` holds, in order, whether it is a scalar) when `tensor` is
    Shape(x) (with opset 15's start/end), a 1-D Slice or a Gather with constant indices of such a tensor,
    or an Unsqueeze to 1-D of such a scalar Gather; None otherwise, or when x's rank is unknown."""
    if len(tensor.inputs) != 1:
        return None
    node = tensor.inputs[0]
    if node.domain not in _DEFAULT or not node.inputs:
        return None
    if node.op == "Shape":
        x = node.inputs[0]
        dims = ctx.dims(x, inferred_first=True)
        if dims is None:
            return None
        end = node.attrs.get("end")
        return x, list(range(len(dims)))[slice(int(node.attrs.get("start", 0)), None if end is None else int(end))], False
    if node.op == "Unsqueeze":
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1:
            value = const_value(node.inputs[1])
            axes = None if value is None else value.reshape(-1).tolist()
        inner = dims_held(node.inputs[0], ctx)
        if axes is None or list(axes) not in ([0], [-1]) or inner is None or not inner[2]:
            return None
        return inner[0], inner[1], False
    source = dims_held(node.inputs[0], ctx) if node.op in ("Gather", "Slice") else None
    if source is None or source[2]:
        return None
    x, held, _ = source
    if node.op == "Gather":
        index = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if index is None or int(node.attrs.get("axis", 0)) != 0 or index.ndim > 1:
            return None
        picks = [int(i) for i in index.reshape(-1)]
        if any(not -len(held) <= i < len(held) for i in picks):
            return None
        return x, [held[i] for i in picks], index.ndim == 0
    params = slice_params(node, ctx.opset)
    if isinstance(params, str) or len(params.starts) != 1 or params.axes not in ([0], [-1]) or params.steps[0] == 0:
        return None
    return x, held[slice(params.starts[0], params.ends[0], params.steps[0])], False
