"""Down-converters for shape and constant ops.

    Shape<start=2>(x)               Slice(Shape(x), [2], [INT64_MAX], [0])   (15)
    Constant<value_ints=[1]>()      Constant<value=int64[1]>()                (12)
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxforge.passes.target_opset.registry import DownConverter, Unsupported, converter


@converter("Shape", changed_in=15)
def _shape(c: DownConverter, node: gs.Node) -> bool:
    start = int(node.attrs.pop("start", 0))
    end = node.attrs.pop("end", None)
    if start == 0 and end is None:
        return False
    x = node.inputs[0]
    (y,) = c.detach(node)
    c.build.shape(x, start, None if end is None else int(end), out=y)
    return True


@converter("Constant", changed_in=12)
def _constant(c: DownConverter, node: gs.Node) -> bool:
    kinds = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}
    for key, dtype in kinds.items():
        if key in node.attrs:
            value = np.array(node.attrs.pop(key), dtype=dtype)
            node.attrs["value"] = c.build.const(value, "value")
            return True
    if "value" not in node.attrs:
        raise Unsupported(f"{sorted(node.attrs)[0] if node.attrs else 'no value'} is not expressible before opset 12")
    return False
