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
from onnxforge.passes.target_opset.registry import DownConverter, Unsupported, attr_str, converter, truncate


@converter("HardSwish", changed_in=14)
def _hardswish(c: DownConverter, node: gs.Node) -> bool:
    x = node.inputs[0]

    def build(y: gs.Variable) -> None:
        gate = c.add("HardSigmoid", [x], {"alpha": 1.0 / 6.0, "beta": 0.5})
        c.add("Mul", [x, gate], out=y)

    c.replace_single(node, build)
    return True


@converter("Mish", changed_in=18)
def _mish(c: DownConverter, node: gs.Node) -> bool:
    x = node.inputs[0]

    def build(y: gs.Variable) -> None:
        c.add("Mul", [x, c.add("Tanh", [c.add("Softplus", [x])])], out=y)

    c.replace_single(node, build)
    return True


@converter("Gelu", changed_in=20)
def _gelu(c: DownConverter, node: gs.Node) -> bool:
    x = node.inputs[0]
    dt = c.float_dtype(x)
    approx = attr_str(node, "approximate", "none")

    def build(y: gs.Variable) -> None:
        if approx == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            cube = c.add("Mul", [c.add("Mul", [x, x]), x])
            inner = c.add("Add", [x, c.add("Mul", [cube, c.const("k", np.array(0.044715, dt))])])
            core = c.add("Tanh", [c.add("Mul", [inner, c.const("s", np.array(math.sqrt(2.0 / math.pi), dt))])])
        else:  # 0.5 x (1 + erf(x / sqrt 2))
            core = c.add("Erf", [c.add("Div", [x, c.const("sqrt2", np.array(math.sqrt(2.0), dt))])])
        one_plus = c.add("Add", [core, c.const("one", np.array(1.0, dt))])
        c.add("Mul", [c.add("Mul", [x, c.const("half", np.array(0.5, dt))]), one_plus], out=y)

    c.replace_single(node, build)
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
    truncate(node.outputs, 1)

    def build(y: gs.Variable) -> None:
        mean = c.add("ReduceMean", [x], {"axes": axes, "keepdims": 1})
        centred = c.add("Sub", [x, mean])
        var = c.add("ReduceMean", [c.add("Mul", [centred, centred])], {"axes": axes, "keepdims": 1})
        std = c.add("Sqrt", [c.add("Add", [var, c.const("eps", np.array(eps, dt))])])
        normed = c.add("Div", [centred, std])
        if bias is None:
            c.add("Mul", [normed, scale], out=y)
        else:
            c.add("Add", [c.add("Mul", [normed, scale]), bias], out=y)

    c.replace_single(node, build)
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
    op, attrs = node.op, {k: v for k, v in node.attrs.items() if k != "axis"}

    def build(y: gs.Variable) -> None:
        moved = c.add("Transpose", [x], {"perm": perm})
        done = c.add(op, [moved], {**attrs, "axis": rank - 1})
        c.add("Transpose", [done], {"perm": perm}, out=y)

    c.replace_single(node, build)
    return True
