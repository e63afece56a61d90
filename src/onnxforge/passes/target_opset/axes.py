"""Down-converters for ops whose axes or sizes moved from attributes to inputs.

    ReduceMean(x, axes=[2,3])           ReduceMean<axes=[2,3]>(x)       (18; ReduceSum: 13)
    Squeeze/Unsqueeze(x, axes=[1])      Squeeze/Unsqueeze<axes=[1]>(x)  (13)
    Split<num_outputs=2>(x), Split(x, s)  Split<split=[...]>(x)         (13: sizes an input, 18: num_outputs)

Legal where those inputs are constants (run simplify first otherwise). The opset-aware builder writes
them in the target's form.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxforge.passes._graph import node_label
from onnxforge.passes.target_opset.registry import DownConverter, Unsupported, converter, truncate

_REDUCE_18 = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSumSquare")


@converter("ReduceSum", changed_in=13)
@converter(*_REDUCE_18, changed_in=18)
def _reduce(c: DownConverter, node: gs.Node) -> bool:
    """Opset 18 (ReduceSum: 13) moved `axes` from an attribute to an input."""
    moved_at = 13 if node.op == "ReduceSum" else 18
    if c.target >= moved_at:
        return False
    axes = c.const_ints(node, 1, "the axes input")
    noop = int(node.attrs.pop("noop_with_empty_axes", 0))
    if not axes:
        truncate(node.inputs, 1)
        if noop:
            node.op, node.attrs = "Identity", {}
        return True
    x, op, keepdims = node.inputs[0], node.op, bool(int(node.attrs.get("keepdims", 1)))
    (y,) = c.detach(node)
    c.build.reduce(op, x, axes, keepdims=keepdims, out=y)
    c.take_name(node, y)
    return True


@converter("Squeeze", "Unsqueeze", changed_in=13)
def _axes_to_attr(c: DownConverter, node: gs.Node) -> bool:
    """Squeeze/Unsqueeze: opset 13 moved `axes` from an attribute to an input."""
    axes = c.const_ints(node, 1, "the axes input")
    if axes is None and node.op == "Unsqueeze":
        raise Unsupported("Unsqueeze without axes")
    x, op = node.inputs[0], node.op
    (y,) = c.detach(node)
    if op == "Unsqueeze":
        c.build.unsqueeze(x, axes, out=y)
    else:
        c.build.squeeze(x, axes, out=y)
    c.take_name(node, y)
    return True


@converter("Split", versions=(13, 18), needs_shape=True)
def _split(c: DownConverter, node: gs.Node) -> bool:
    """Split: sizes became an input in 13; `num_outputs` (uneven last chunk) arrived in 18."""
    x = node.inputs[0]
    axis = int(node.attrs.get("axis", 0))
    sizes = c.const_ints(node, 1, "the split sizes")
    n = node.attrs.get("num_outputs")
    if sizes is None and n is not None:
        shape = getattr(x, "shape", None)
        dim = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
        if isinstance(dim, (int, np.integer)) and dim >= 0:
            chunk = -(-int(dim) // int(n))
            last = int(dim) - chunk * (int(n) - 1)
            if last <= 0:
                raise Unsupported(f"num_outputs={n} cannot split a dimension of {dim}")
            sizes = None if last == chunk else [chunk] * (int(n) - 1) + [last]
        else:
            c.notes.append(f"{node_label(node)}: split dimension unknown; equal chunks (the runtime rejects an uneven split)")
    outputs = c.detach(node)
    parts = c.build.split(x, sizes if sizes is not None else len(outputs), axis, outputs=outputs)
    c.take_name(node, parts[0])
    return True
