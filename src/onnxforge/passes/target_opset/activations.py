"""Down-converters for activations and normalizations that older opsets lack or define differently.

    HardSwish(x)                        Mul(x, HardSigmoid<alpha=1/6, beta=1/2>(x))      (14)
    Mish(x)                             Mul(x, Tanh(Softplus(x)))                         (18)
    Gelu<approximate>(x)                its erf / tanh definition                         (20)
    LayerNormalization(x, scale, bias)  ReduceMean / Sub / Mul / Sqrt / Div               (17)
    Softmax<axis=1>(x)  (13: one axis)  Transpose -> Softmax<axis=last> -> Transpose      (also LogSoftmax, Hardmax)
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from onnxforge.passes._graph import is_graph_output
from onnxforge.passes.target_opset.registry import DownConverter, Unsupported, attr_str, converter


@converter("HardSwish", changed_in=14)
def _hardswish(c: DownConverter, node: gs.Node) -> bool:
    x, b = node.inputs[0], c.build
    (y,) = c.detach(node)
    b.op("Mul", [x, b.op("HardSigmoid", [x], {"alpha": 1.0 / 6.0, "beta": 0.5})], outputs=[y])
    return True


@converter("Mish", changed_in=18)
def _mish(c: DownConverter, node: gs.Node) -> bool:
    x, b = node.inputs[0], c.build
    (y,) = c.detach(node)
    b.op("Mul", [x, b.op("Tanh", [b.op("Softplus", [x])])], outputs=[y])
    return True


@converter("Gelu", changed_in=20)
def _gelu(c: DownConverter, node: gs.Node) -> bool:
    x, b = node.inputs[0], c.build
    dt = c.float_dtype(x)
    approx = attr_str(node, "approximate", "none")
    (y,) = c.detach(node)
    if approx == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = b.op("Mul", [b.op("Mul", [x, x]), x])
        inner = b.op("Add", [x, b.op("Mul", [cube, b.const(np.array(0.044715, dt), "k")])])
        core = b.op("Tanh", [b.op("Mul", [inner, b.const(np.array(math.sqrt(2.0 / math.pi), dt), "s")])])
    else:  # 0.5 x (1 + erf(x / sqrt 2))
        core = b.op("Erf", [b.op("Div", [x, b.const(np.array(math.sqrt(2.0), dt), "sqrt2")])])
    one_plus = b.op("Add", [core, b.const(np.array(1.0, dt), "one")])
    b.op("Mul", [b.op("Mul", [x, b.const(np.array(0.5, dt), "half")]), one_plus], outputs=[y])
    return True


@converter("LayerNormalization", changed_in=17, needs_shape=True)
def _layer_norm(c: DownConverter, node: gs.Node) -> bool:
    x, scale = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    if any(o.outputs or is_graph_output(c.graph, o) for o in node.outputs[1:]):
        raise Unsupported("its Mean/InvStdDev outputs are used")
    dt = c.float_dtype(x)
    if dt != np.float64 and dt != np.float32 and int(node.attrs.get("stash_type", 1)) == 1:
        raise Unsupported(f"stash_type=1 on a {dt.name} input (statistics in float32) is not decomposed here")
    axis = int(node.attrs.get("axis", -1))
    if axis >= 0:
        rank = c.rank(x, "LayerNormalization with a non-negative axis needs it")
        axes = list(range(axis, rank))
    else:
        axes = list(range(axis, 0))
    eps = float(node.attrs.get("epsilon", 1e-5))
    y = c.detach(node)[0]
    b = c.build
    mean = b.reduce("ReduceMean", x, axes, keepdims=True)
    centred = b.op("Sub", [x, mean])
    var = b.reduce("ReduceMean", b.op("Mul", [centred, centred]), axes, keepdims=True)
    std = b.op("Sqrt", [b.op("Add", [var, b.const(np.array(eps, dt), "eps")])])
    normed = b.op("Div", [centred, std])
    if bias is None:
        b.op("Mul", [normed, scale], outputs=[y])
    else:
        b.op("Add", [b.op("Mul", [normed, scale]), bias], outputs=[y])
    return True


@converter("Softmax", "LogSoftmax", "Hardmax", changed_in=13, needs_shape=True)
def _softmax(c: DownConverter, node: gs.Node) -> bool:
    """Opset 13 normalizes along one axis; older versions flatten all axes from `axis` on."""
    x = node.inputs[0]
    rank = c.rank(x, f"{node.op} before opset 13 needs it to move the axis last")
    axis = int(node.attrs.get("axis", -1)) % rank
    if axis == rank - 1:
        node.attrs["axis"] = axis
        return True
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]  # a swap is its own inverse
    op, attrs, b = node.op, {k: v for k, v in node.attrs.items() if k != "axis"}, c.build
    (y,) = c.detach(node)
    moved = b.op("Transpose", [x], {"perm": perm})
    done = b.op(op, [moved], {**attrs, "axis": rank - 1})
    b.op("Transpose", [done], {"perm": perm}, outputs=[y])
    return True
