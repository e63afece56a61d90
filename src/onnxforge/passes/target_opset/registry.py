"""The per-op down-converter registry and the dispatcher that applies it to one node at a time.

A converter is a function ``(conv, node) -> bool`` registered next to the schema versions whose
changes it handles::

    @converter("Softmax", "LogSoftmax", "Hardmax", changed_in=13, needs_shape=True)
    def _softmax(c: DownConverter, node: gs.Node) -> bool: ...

    @converter("Resize", versions=(13, 18, 19), needs_shape=True)

It runs when a node is converted across one of those versions, may rewrite the node in place or replace
it with new nodes built by `DownConverter.build` (the opset-aware `GraphBuilder` at the target opset,
which decides whether axes, sizes and Resize's roi are attributes or inputs) producing the outputs that
`DownConverter.detach` took from the node, and returns True when it changed the node's structure
(counted in the pass's statistics). It raises `Unsupported` with the reason for a node it
cannot convert. `needs_shape`: the converter reads the rank or a dimension of the node's first input,
so the pass runs shape inference first where that input's shape is unknown.

The versions a converter does not list must be type-only or covered by an attribute rule
(`onnxforge.passes.target_opset.rules`); any other version is refused by the dispatcher.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import const_value
from onnxforge.passes.target_opset.rules import ATTR_DEFAULTS, ATTR_RULES, TYPE_ONLY, AttrRule


class Unsupported(Exception):
    """A node this pass cannot convert; collected and reported together as one PassError."""


ConvertFn = Callable[["DownConverter", gs.Node], bool]


@dataclass(frozen=True)
class Converter:
    """A down-conversion of `op` across the schema versions in `versions`."""

    op: str
    versions: frozenset[int]
    fn: ConvertFn
    needs_shape: bool = False
    also_older: bool = False


_CONVERTERS: dict[str, Converter] = {}


def converter(
    *ops: str, changed_in: int | None = None, versions: Iterable[int] = (), needs_shape: bool = False,
    also_older: bool = False,
) -> Callable[[ConvertFn], ConvertFn]:
    """Registers the decorated function as the down-converter of `ops` for the given schema versions.

    Args:
        ops: default-domain op types the function converts.
        changed_in: the one schema version whose change it handles (shorthand for ``versions=(v,)``).
        versions: the schema versions whose changes it handles.
        needs_shape: it reads the rank or a dimension of the node's first input.
        also_older: exporters and runtimes give the op this version's behaviour at every opset, so the
            converter also runs on nodes already at a version the target has (below the oldest
            handled version).

    Raises:
        ValueError: no op or no version given, or an op registered twice.
    """
    handled = frozenset(versions) | (frozenset({changed_in}) if changed_in is not None else frozenset())
    if not ops or not handled:
        raise ValueError("converter() needs at least one op and one schema version")

    def register(fn: ConvertFn) -> ConvertFn:
        for op in ops:
            if op in _CONVERTERS:
                raise ValueError(f"target-opset converter for {op!r} registered twice")
            _CONVERTERS[op] = Converter(op, handled, fn, needs_shape, also_older)
        return fn

    return register


def get_converter(op: str) -> Converter | None:
    """The registered down-converter of `op`, if any."""
    return _CONVERTERS.get(op)


def needs_shape(op: str) -> bool:
    """Whether converting `op` reads the rank or a dimension of its first input."""
    conv = _CONVERTERS.get(op)
    return conv is not None and conv.needs_shape


@functools.lru_cache(maxsize=None)
def history() -> dict[str, tuple[int, ...]]:
    """Every since_version of every default-domain op, ascending."""
    versions: dict[str, set[int]] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain in ("", "ai.onnx"):
            versions.setdefault(schema.name, set()).add(schema.since_version)
    return {op: tuple(sorted(v)) for op, v in versions.items()}


def since(op: str, opset: int) -> int | None:
    """The since_version of `op` as defined at `opset`, or None if it does not exist there."""
    known = [v for v in history().get(op, ()) if v <= opset]
    return known[-1] if known else None


def _schema_attrs(op: str, opset: int) -> set[str]:
    return set(onnx.defs.get_schema(op, opset, "").attributes)


@functools.lru_cache(maxsize=None)
def _signature(op: str, opset: int) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]], dict[str, frozenset[str]]]:
    """(inputs, outputs) as (type string, variadic) and the allowed types of each type parameter."""
    schema = onnx.defs.get_schema(op, opset, "")
    variadic = onnx.defs.OpSchema.FormalParameterOption.Variadic

    def formals(params) -> list[tuple[str, bool]]:
        return [(p.type_str, p.option == variadic) for p in params]

    allowed = {c.type_param_str: frozenset(c.allowed_type_strs) for c in schema.type_constraints}
    return formals(schema.inputs), formals(schema.outputs), allowed


def _formal(params: list[tuple[str, bool]], index: int) -> str | None:
    if index < len(params):
        return params[index][0]
    return params[-1][0] if params and params[-1][1] else None


def type_name(elem_type: int) -> str:
    """'uint8', 'float', 'bfloat16': the ONNX name of an element type, as schemas spell it."""
    return onnx.TensorProto.DataType.Name(elem_type).lower()


class DownConverter:
    """Rewrites nodes one at a time from `source` to `target`; raises Unsupported for what it cannot."""

    def __init__(self, graph: gs.Graph, source: int, target: int, types: dict[str, int] | None = None) -> None:
        """`types`: ONNX element types of tensors by name (from shape inference), where known."""
        self.graph = graph
        self.source = source
        self.target = target
        self.types = dict(types or {})
        self.build = GraphBuilder(graph, "target_opset", opset=target)
        self.rewritten: Counter = Counter()
        self.attrs_dropped: Counter = Counter()
        self.notes: list[str] = []

    # -- dispatch ---------------------------------------------------------------------------------
    def convert(self, node: gs.Node) -> None:
        if node.domain not in (None, "", "ai.onnx"):
            return  # other domains keep their own opset imports
        src = since(node.op, self.source)
        if src is None:
            raise Unsupported(f"not an ONNX op at opset {self.source}")
        tgt = since(node.op, self.target)
        conv = _CONVERTERS.get(node.op)
        if src == tgt:
            if conv and self._also_older(conv) and conv.fn(self, node):
                self.rewritten[node.op] += 1
            return
        if any(isinstance(v, gs.Graph) or (isinstance(v, list) and v and isinstance(v[0], gs.Graph)) for v in node.attrs.values()):
            raise Unsupported("control flow with subgraphs is not supported")
        steps = [v for v in history()[node.op] if (tgt or 0) < v <= src]
        handled = conv.versions if conv else frozenset()
        rules = {r.version for r in ATTR_RULES.get(node.op, ())}
        unknown = [v for v in steps if v not in TYPE_ONLY.get(node.op, frozenset()) and v not in handled and v not in rules]
        if tgt is None and not conv:
            raise Unsupported(f"does not exist before opset {steps[0]} and has no decomposition here")
        if unknown:
            raise Unsupported(f"changed meaning in opset {unknown[0]} and has no down-conversion here")
        for rule in ATTR_RULES.get(node.op, ()):
            if self.target < rule.version:
                self._drop_attr(node, rule)
        if conv and (any(v in handled for v in steps) or self._also_older(conv)):
            op = node.op  # a converter may turn the node into another op (Dropout -> Identity)
            if conv.fn(self, node):
                self.rewritten[op] += 1
        if node.outputs and tgt is not None:
            extra = set(node.attrs) - _schema_attrs(node.op, self.target)
            if extra:
                raise Unsupported(f"attribute {sorted(extra)[0]!r} does not exist at opset {self.target}")
            self._check_types(node)

    def _check_types(self, node: gs.Node) -> None:
        """Refuses a tensor whose element type the op at the target does not accept (e.g. Relu on int8)."""
        inputs, outputs, allowed = _signature(node.op, self.target)
        for kind, tensors, params in (("input", node.inputs, inputs), ("output", node.outputs, outputs)):
            for i, tensor in enumerate(tensors):
                formal = _formal(params, i)
                elem = self.elem_type(tensor) if tensor.name else None
                if formal is None or elem is None:
                    continue
                ok = allowed.get(formal, frozenset({formal}))
                if f"tensor({type_name(elem)})" not in ok:
                    raise Unsupported(f"{kind} '{tensor.name}' is {type_name(elem)}, which {node.op} at opset {self.target} does not accept")

    def elem_type(self, tensor: gs.Tensor) -> int | None:
        """The ONNX element type of `tensor` where known (shape inference, else graphsurgeon's dtype)."""
        if self.types.get(tensor.name):  # 0 is UNDEFINED: not known
            return self.types[tensor.name]
        dtype = getattr(tensor, "dtype", None)
        if dtype is None:
            return None
        if isinstance(dtype, int):
            return dtype or None
        try:
            return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        except (KeyError, TypeError, ValueError):
            return None

    def _also_older(self, conv: Converter) -> bool:
        return conv.also_older and self.target < min(conv.versions)

    def _drop_attr(self, node: gs.Node, rule: AttrRule) -> None:
        value = node.attrs.get(rule.attr, ATTR_DEFAULTS.get((node.op, rule.attr)))
        if value is None:
            return
        if not rule.keeps_old(value, node):
            shown = value.decode() if isinstance(value, bytes) else value
            raise Unsupported(f"{rule.attr}={shown!r} has no equivalent before opset {rule.version} (needs {rule.old_behaviour})")
        if rule.attr in node.attrs:
            del node.attrs[rule.attr]
            self.attrs_dropped[f"{node.op}.{rule.attr}"] += 1

    # -- replacing a node -------------------------------------------------------------------------
    @staticmethod
    def detach(node: gs.Node) -> list[gs.Variable]:
        """Takes `node`'s outputs away (it is dead from then on; the manager's cleanup drops it) and
        returns them, for nodes built with `self.build` (``outputs=``/``out=``) to produce."""
        outputs = list(node.outputs)
        node.outputs.clear()
        return outputs

    @staticmethod
    def take_name(node: gs.Node, out: gs.Tensor) -> None:
        """The node now producing `out` takes the replaced `node`'s name: a one-for-one rebuild keeps the
        name that pipelines (``resize-nearest{nodes=...}``) and reports select nodes by."""
        producer = out.inputs[0]
        producer.name, node.name = node.name, ""

    @staticmethod
    def const_ints(node: gs.Node, index: int, what: str) -> list[int] | None:
        """A constant int input as a list; None when the input is absent; raises when computed."""
        if len(node.inputs) <= index or node.inputs[index].name == "":
            return None
        value = const_value(node.inputs[index])
        if value is None:
            raise Unsupported(f"{what} is computed at run time; opset-{node.op} before this version needs it constant (run simplify first)")
        return [int(v) for v in np.asarray(value).reshape(-1)]

    @staticmethod
    def rank(tensor: gs.Tensor, why: str) -> int:
        shape = getattr(tensor, "shape", None)
        if shape is None:
            raise Unsupported(f"the rank of '{tensor.name}' is unknown and {why}")
        return len(shape)

    @staticmethod
    def float_dtype(tensor: gs.Tensor) -> np.dtype:
        dtype = getattr(tensor, "dtype", None)
        return np.dtype(dtype) if dtype is not None and np.dtype(dtype).kind == "f" else np.dtype(np.float32)


def truncate(tensors: list, length: int) -> None:
    """Drops trailing inputs/outputs (gs's synchronized lists do not support slice assignment)."""
    while len(tensors) > length:
        tensors.pop()


def attr_str(node: gs.Node, name: str, default: str) -> str:
    """A string attribute of `node` as str (onnx stores them as bytes)."""
    value = node.attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else value
