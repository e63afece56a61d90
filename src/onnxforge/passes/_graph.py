"""Small graph helpers shared by passes (onnx-graphsurgeon based)."""

from __future__ import annotations

import itertools
from typing import Iterable

import numpy as np
import onnx_graphsurgeon as gs


def const_value(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of a tensor known at compile time (initializer or Constant output), else None."""
    if tensor is None:
        return None
    if isinstance(tensor, gs.Constant):
        return tensor.values
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        node = tensor.inputs[0]
        value = node.attrs.get("value")
        if isinstance(value, gs.Constant):
            return value.values
        if isinstance(value, np.ndarray):
            return value
        for key in ("value_float", "value_int"):
            if key in node.attrs:
                return np.array(node.attrs[key])
        for key in ("value_floats", "value_ints"):
            if key in node.attrs:
                return np.array(node.attrs[key])
    return None


def const_ints(tensor: gs.Tensor | None) -> list[int] | None:
    """A constant's values as a flat list of ints (shape targets, axes, indices), else None."""
    value = const_value(tensor) if tensor is not None and tensor.name else None
    return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]


def node_label(node: gs.Node) -> str:
    """How a node is named in messages: its name, else op and first output."""
    if node.name:
        return node.name
    out = node.outputs[0].name if node.outputs else "?"
    return f"{node.op}({out})"


def static_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    """The tensor's shape if fully known and static, else None."""
    shape = getattr(tensor, "shape", None)
    if shape is None or any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        return None
    return tuple(int(d) for d in shape)


class Namer:
    """Unique tensor/node names derived from a prefix, avoiding every name in the graph."""

    def __init__(self, graph: gs.Graph, prefix: str) -> None:
        self.used = set(graph.tensors().keys()) | {n.name for n in graph.nodes}
        self.prefix = prefix
        self.counter = itertools.count()

    def __call__(self, hint: str = "") -> str:
        while True:
            name = f"{self.prefix}/{hint}_{next(self.counter)}" if hint else f"{self.prefix}_{next(self.counter)}"
            if name not in self.used:
                self.used.add(name)
                return name


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.outputs)


def infer_shapes(graph: gs.Graph) -> gs.Graph:
    """Re-runs ONNX shape inference on the graph and returns a fresh graph with shapes filled in."""
    import onnx

    model = gs.export_onnx(graph, do_type_check=False)
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    return gs.import_onnx(model)


def all_nodes(graph: gs.Graph) -> Iterable[gs.Node]:
    return list(graph.nodes)


def inferred_types(model: "onnx.ModelProto") -> dict[str, tuple[int, tuple[int | str | None, ...]]]:
    """(ONNX element type, dims) of every tensor shape inference can name, without changing the model.

    Dims are ints where static, the dim_param string where symbolic, None where unknown. Initializers
    are included. If inference fails (an op it does not know), only the declared value_infos are used.
    """
    import logging

    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(weightless(model), data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        logging.getLogger(__name__).debug("shape inference failed (%s); using declared shapes", exc)
        inferred = model
    out: dict[str, tuple[int, tuple[int | str | None, ...]]] = {}
    g = inferred.graph
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        tt = vi.type.tensor_type
        dims = tuple(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        out[vi.name] = (tt.elem_type, dims)
    for init in model.graph.initializer:
        out[init.name] = (init.data_type, tuple(int(d) for d in init.dims))
    return out


#: Initializers with more elements than this are not needed by shape inference (only their shape is).
SMALL_INITIALIZER = 64


def weightless(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """A copy of `model` for shape inference: large initializers become typed graph inputs.

    Shape inference needs the values of small constants (shapes, axes, scales) for data propagation,
    but only the shapes of weights; serialising hundreds of MB of weights into the inference engine
    dominated the shape-dependent passes on the seed models.
    """
    import onnx

    light = onnx.ModelProto()
    graph = model.graph
    big = [t for t in graph.initializer if _numel(t.dims) > SMALL_INITIALIZER]
    if not big:
        return model
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(light, field, getattr(model, field))
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g = light.graph
    g.name = graph.name
    g.node.extend(graph.node)
    big_names = {t.name for t in big}
    g.initializer.extend(t for t in graph.initializer if t.name not in big_names)
    g.input.extend(vi for vi in graph.input if vi.name not in big_names)
    g.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in big)
    g.output.extend(graph.output)
    g.value_info.extend(graph.value_info)
    return light


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def reshape_ends(model: "onnx.ModelProto") -> tuple[set[str], set[str]]:
    """(outputs of Reshape nodes, data inputs of Reshape nodes) of a ModelProto: for passes' cheap
    "anything to do?" checks before a graph import."""
    outs, ins = set(), set()
    for n in model.graph.node:
        if n.op_type == "Reshape":
            outs.update(n.output[:1])
            ins.update(n.input[:1])
    return outs, ins
