"""Down-converters for element-wise ops that older opsets lack or define for fewer types.

    GreaterOrEqual(a, b)            Or(Greater(a, b), Equal(a, b))                     (12; LessOrEqual likewise)
    Add(a: uint8, b: uint8)         Cast<uint8>(Add(Cast<int32>(a), Cast<int32>(b)))   (14; Sub, Mul, Div too)

Add/Sub/Mul/Div accept int8, uint8, int16 and uint16 only from opset 14. In a wider integer (int32 for
8-bit, int64 for 16-bit, so no product overflows) the result is the narrow op's exactly: the narrowing
Cast keeps the low bits, which is the narrow op's wrap-around, and integer division truncates toward
zero in both.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from onnxforge.passes.target_opset.registry import DownConverter, converter

_I32, _I64 = onnx.TensorProto.INT32, onnx.TensorProto.INT64
_WIDER = {onnx.TensorProto.INT8: _I32, onnx.TensorProto.UINT8: _I32, onnx.TensorProto.INT16: _I64, onnx.TensorProto.UINT16: _I64}


@converter("GreaterOrEqual", "LessOrEqual", changed_in=12)
def _or_equal(c: DownConverter, node: gs.Node) -> bool:
    strict = {"GreaterOrEqual": "Greater", "LessOrEqual": "Less"}[node.op]
    (lhs, rhs), b = node.inputs, c.build
    (y,) = c.detach(node)
    b.op("Or", [b.op(strict, [lhs, rhs]), b.op("Equal", [lhs, rhs])], outputs=[y])
    return True


@converter("Add", "Sub", "Mul", "Div", changed_in=14)
def _small_ints(c: DownConverter, node: gs.Node) -> bool:
    """Computes 8- and 16-bit integer arithmetic in a wider integer and casts the result back."""
    elem = c.elem_type(node.outputs[0]) or c.elem_type(node.inputs[0])
    wide = _WIDER.get(elem)
    if wide is None:
        return False
    op, (lhs, rhs), b = node.op, node.inputs, c.build
    (y,) = c.detach(node)
    wide_lhs = b.cast(lhs, wide)
    wide_rhs = wide_lhs if rhs is lhs else b.cast(rhs, wide)
    b.cast(b.op(op, [wide_lhs, wide_rhs]), elem, out=y)
    return True
