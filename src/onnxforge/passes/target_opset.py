"""target-opset: converts the model to another ONNX opset (default 11, the newest atc accepts).

Before -> After (down, e.g. a torch dynamo export at opset 20 -> 11)::

    HardSwish(x)                           Mul(x, HardSigmoid<alpha=1/6, beta=1/2>(x))
    ReduceMean(x, axes=[2,3])              ReduceMean<axes=[2,3]>(x)              (also Sum/Max/Min/...)
    Split<num_outputs=2>(x), Split(x, s)   Split<split=[...]>(x)
    Squeeze/Unsqueeze(x, axes=[1])         Squeeze/Unsqueeze<axes=[1]>(x)
    Resize(x, "", scales)                  Resize(x, roi=[], scales)            (18+ attributes at defaults)
    Softmax<axis=1>(x)  (13: one axis)     Transpose -> Softmax<axis=3> -> Transpose  (11: flattens from axis)
    Shape<start=2>(x)                      Slice(Shape(x), [2], [INT64_MAX], [0])
    Mish / Gelu / LayerNormalization       their definitions in older ops
    GreaterOrEqual(a, b)                   Or(Greater(a, b), Equal(a, b))

Up (e.g. 11 -> 17): onnx.version_converter, whose upward adapters are complete.

Down-conversion is table-driven and refuses what it cannot prove. For every default-domain node the pass
looks up each schema version between the target and the source. A version listed as type-only (it only
widened the allowed types; the verifier's type check rejects a tensor type the target lacks) needs
nothing. A version with a semantic change needs a rewrite above, or an attribute rule: an attribute
added later may be dropped only at the value that reproduces the old behaviour (ArgMax
select_last_index=0, AveragePool dilations=1, RoiAlign coordinate_transformation_mode=output_half_pixel,
...). Anything else - an op without a definition at the target (GridSample, Einsum, ...), a non-default
attribute (Resize antialias), an input that must become an attribute but is computed at run time -
fails the pass with one error naming every such node. onnx.version_converter is not used downward:
it has no adapters for many type-only steps (Add 14->13, Transpose 13->12, Split 18->17, Resize 13->12),
so it rejects every dynamo export as a whole.

Legal for graphs without control flow or local functions (their bodies would need the same
conversion). Exact: the manager checks outputs against the previous stage. The IR version is lowered
to the one ONNX released with the target opset (6 for opset 11), as older parsers expect.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxforge.errors import PassError, PipelineError
from onnxforge.passes._graph import Namer, const_value, infer_shapes, is_graph_output, node_label
from onnxforge.passes.base import ModelState, Pass, PassKind, PassResult, option
from onnxforge.passes.registry import register

MIN_TARGET = 11
INT64_MAX = np.iinfo(np.int64).max

# Schema versions after opset 11 that only widened the allowed tensor types (bfloat16, int8/16, float8,
# int4, ...). Checked against the schemas' signatures with onnx 1.23 (inputs, outputs, attributes and
# type constraints unchanged except for added types).
_TYPE_ONLY: dict[str, frozenset[int]] = {
    op: frozenset(versions)
    for op, versions in {
        "Abs": (13,), "Acos": (22,), "Acosh": (22,), "Add": (13, 14), "ArgMax": (13,), "ArgMin": (13,),
        "Asin": (22,), "Asinh": (22,), "Atan": (22,), "Atanh": (22,), "AveragePool": (22,),
        "BatchNormalization": (15,), "Cast": (13, 21, 23, 25), "Ceil": (13,), "Clip": (12, 13),
        "Concat": (13,), "Constant": (13, 19, 21, 23, 24, 25), "ConstantOfShape": (20, 21, 23, 24, 25),
        "Conv": (22,), "ConvTranspose": (22,), "Cos": (22,), "Cosh": (22,), "CumSum": (14,),
        "DepthToSpace": (13,), "Div": (13, 14), "Dropout": (13, 22), "Elu": (22,), "Equal": (13, 19),
        "Erf": (13,), "Exp": (13,), "Expand": (13,), "EyeLike": (22,), "Flatten": (13, 21, 23, 24, 25),
        "Floor": (13,), "GRU": (22,), "Gather": (13,), "GatherElements": (13,), "GatherND": (13,),
        "Gemm": (13,), "GlobalAveragePool": (22,), "GlobalLpPool": (22,), "GlobalMaxPool": (22,),
        "Greater": (13,), "GreaterOrEqual": (16,), "HardSigmoid": (22,), "HardSwish": (22,),
        "Identity": (13, 14, 16, 19, 21, 23, 24, 25), "InstanceNormalization": (22,), "IsInf": (20,),
        "IsNaN": (13, 20), "LRN": (13,), "LSTM": (22,), "LeakyRelu": (16,), "Less": (13,),
        "LessOrEqual": (16,), "Log": (13,), "LpNormalization": (22,), "LpPool": (22,), "MatMul": (13,),
        "Max": (12, 13), "MaxPool": (12, 22), "MaxRoiPool": (22,), "MaxUnpool": (22,), "Mean": (13,),
        "MeanVarianceNormalization": (13,), "Min": (12, 13), "Mish": (22,), "Mod": (13,), "Mul": (13, 14),
        "Neg": (13,), "NonZero": (13,), "PRelu": (16,), "Pad": (13, 21, 23, 24, 25), "Pow": (12, 13, 15),
        "RNN": (22,), "RandomNormal": (22,), "RandomNormalLike": (22,), "RandomUniform": (22,),
        "RandomUniformLike": (22,), "Reciprocal": (13,), "ReduceL1": (13,), "ReduceL2": (13,),
        "ReduceLogSum": (13,), "ReduceLogSumExp": (13,), "ReduceMax": (12, 13, 20), "ReduceMean": (13,),
        "ReduceMin": (12, 13, 20), "ReduceProd": (13,), "ReduceSumSquare": (13,), "Relu": (13, 14),
        "Reshape": (13, 19, 21, 23, 24, 25), "RoiAlign": (22,), "Round": (22,), "ScatterElements": (13, 18),
        "ScatterND": (13, 18), "Selu": (22,), "Shape": (13, 19, 21, 23, 24, 25), "Sigmoid": (13,),
        "Sign": (13,), "Sin": (22,), "Sinh": (22,), "Size": (13, 19, 21, 23, 24, 25), "Slice": (13,),
        "Softplus": (22,), "Softsign": (22,), "SpaceToDepth": (13,), "Sqrt": (13,),
        "Squeeze": (21, 23, 24, 25), "Sub": (13, 14), "Sum": (13,), "Tan": (22,), "Tanh": (13,),
        "ThresholdedRelu": (22,), "Tile": (13,), "TopK": (24,), "Transpose": (13, 21, 23, 24, 25),
        "Unsqueeze": (21, 23, 24, 25), "Where": (16,),
    }.items()
}


@dataclass(frozen=True)
class _AttrRule:
    """An attribute added at `version`: droppable when `keeps_old(value, node)` holds."""

    version: int
    attr: str
    keeps_old: Callable[[Any, gs.Node], bool]
    old_behaviour: str


def _ones(value: Any, node: gs.Node) -> bool:
    return all(int(v) == 1 for v in value)


def _equals(expected: Any) -> Callable[[Any, gs.Node], bool]:
    def check(value: Any, node: gs.Node) -> bool:
        if isinstance(value, bytes):
            value = value.decode()
        return value == expected

    return check


def _reshape_zero_free(value: Any, node: gs.Node) -> bool:
    if int(value) == 0:
        return True
    shape = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    return shape is not None and not (np.asarray(shape) == 0).any()  # allowzero only matters for 0s


_ATTR_RULES: dict[str, tuple[_AttrRule, ...]] = {
    "ArgMax": (_AttrRule(12, "select_last_index", _equals(0), "select_last_index=0"),),
    "ArgMin": (_AttrRule(12, "select_last_index", _equals(0), "select_last_index=0"),),
    "GatherND": (_AttrRule(12, "batch_dims", _equals(0), "batch_dims=0"),),
    "BatchNormalization": (_AttrRule(14, "training_mode", _equals(0), "training_mode=0"),),
    "AveragePool": (_AttrRule(19, "dilations", _ones, "dilations of 1"),),
    "LpPool": (_AttrRule(18, "dilations", _ones, "dilations of 1"), _AttrRule(18, "ceil_mode", _equals(0), "ceil_mode=0")),
    "Reshape": (_AttrRule(14, "allowzero", _reshape_zero_free, "allowzero=0 (or a shape without zeros)"),),
    "Cast": (_AttrRule(19, "saturate", lambda v, n: True, "saturate (float8 only)"), _AttrRule(24, "round_mode", _equals("up"), "round_mode=up")),
    "GRU": (_AttrRule(14, "layout", _equals(0), "layout=0"),),
    "LSTM": (_AttrRule(14, "layout", _equals(0), "layout=0"),),
    "RNN": (_AttrRule(14, "layout", _equals(0), "layout=0"),),
    "ScatterElements": (_AttrRule(16, "reduction", _equals("none"), "reduction=none"),),
    "ScatterND": (_AttrRule(16, "reduction", _equals("none"), "reduction=none"),),
    "RoiAlign": (_AttrRule(16, "coordinate_transformation_mode", _equals("output_half_pixel"), "coordinate_transformation_mode=output_half_pixel"),),
}
# RoiAlign-16's default is half_pixel while RoiAlign-10 behaves as output_half_pixel: an absent
# attribute means half_pixel, which the old op cannot express.
_ATTR_DEFAULTS: dict[tuple[str, str], Any] = {("RoiAlign", "coordinate_transformation_mode"): "half_pixel"}


class _Unsupported(Exception):
    """A node this pass cannot convert; collected and reported together as one PassError."""


@functools.lru_cache(maxsize=None)
def _history() -> dict[str, tuple[int, ...]]:
    """Every since_version of every default-domain op, ascending."""
    versions: dict[str, set[int]] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain in ("", "ai.onnx"):
            versions.setdefault(schema.name, set()).add(schema.since_version)
    return {op: tuple(sorted(v)) for op, v in versions.items()}


def _since(op: str, opset: int) -> int | None:
    """The since_version of `op` as defined at `opset`, or None if it does not exist there."""
    known = [v for v in _history().get(op, ()) if v <= opset]
    return known[-1] if known else None


def _schema_attrs(op: str, opset: int) -> set[str]:
    return set(onnx.defs.get_schema(op, opset, "").attributes)


@dataclass(frozen=True)
class TargetOpsetOptions:
    opset: int = option(11, "the ONNX opset to convert to (11: what atc accepts)")


@register
class TargetOpset(Pass):
    name = "target-opset"
    summary = "converts to another ONNX opset ({opset=11}: what atc accepts), up or down"
    kind = PassKind.EXACT
    Options = TargetOpsetOptions

    def validate(self) -> None:
        newest = onnx.defs.onnx_opset_version()
        if not MIN_TARGET <= self.options.opset <= newest:
            raise PipelineError(f"target-opset: option 'opset' must be between {MIN_TARGET} and {newest}, got {self.options.opset}")

    def run(self, state: ModelState) -> PassResult:
        source, target = state.opset, self.options.opset
        if source == target:
            return PassResult(False, {"opset": target}, notes=[f"already at opset {target}"])
        if source < target:
            return self._up(state, source, target)
        return self._down(state, source, target)

    def _up(self, state: ModelState, source: int, target: int) -> PassResult:
        from onnx import version_converter

        model = state.to_model()
        before = Counter(n.op_type for n in model.graph.node)
        try:
            converted = version_converter.convert_version(model, target)
        except (RuntimeError, onnx.checker.ValidationError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PassError(f"onnx.version_converter cannot convert opset {source} -> {target}: {first[:300]}") from None
        state.replace(converted)
        after = Counter(n.op_type for n in converted.graph.node)
        stats: dict[str, int | float | str] = {"opset": f"{source}->{target}", "converter": "onnx.version_converter"}
        changed = (after - before) + (before - after)
        if changed:
            stats["ops_changed"] = ", ".join(f"{op}x{n}" for op, n in sorted(changed.items()))
        return PassResult(True, stats)

    def _down(self, state: ModelState, source: int, target: int) -> PassResult:
        if state.graph.functions:
            raise PassError(f"cannot convert to opset {target}: the model has local functions ({', '.join(f.name for f in state.graph.functions)}); inline them first")
        if any(n.op in _NEEDS_SHAPE and n.inputs and n.inputs[0].shape is None for n in state.graph.nodes):
            state.graph = infer_shapes(state.graph)  # ranks and split sizes come from inferred shapes
        conv = _DownConverter(state.graph, source, target)
        problems = []
        for node in list(state.graph.nodes):
            try:
                conv.convert(node)
            except _Unsupported as exc:
                problems.append(f"{node_label(node)} ({node.op}): {exc}")
        if problems:
            raise PassError(f"cannot convert opset {source} -> {target}: " + "; ".join(problems[:8]) + (f" (+{len(problems) - 8} more)" if len(problems) > 8 else ""))
        _set_opset(state, target)
        stats: dict[str, int | float | str] = {"opset": f"{source}->{target}", "nodes_rewritten": sum(conv.rewritten.values())}
        if conv.rewritten:
            stats["rewritten"] = ", ".join(f"{op}x{n}" for op, n in sorted(conv.rewritten.items()))
        if conv.attrs_dropped:
            stats["attributes_dropped"] = ", ".join(f"{k}x{n}" for k, n in sorted(conv.attrs_dropped.items()))
        return PassResult(True, stats, notes=list(conv.notes))


def _set_opset(state: ModelState, target: int) -> None:
    """Declares the default-domain opset `target` (gs exports `import_domains`, not `graph.opset`)."""
    graph = state.graph
    graph.opset = target
    domains = [d for d in (graph.import_domains or []) if d.domain not in ("", "ai.onnx")]
    graph.import_domains = [onnx.helper.make_opsetid("", target)] + domains
    # A model at a newer opset already has at least this IR version: this only ever lowers it.
    state.set_ir_version(onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", target)]))


class _DownConverter:
    """Rewrites nodes one at a time from `source` to `target`; raises _Unsupported for what it cannot."""

    def __init__(self, graph: gs.Graph, source: int, target: int) -> None:
        self.graph = graph
        self.source = source
        self.target = target
        self.namer = Namer(graph, "target_opset")
        self.rewritten: Counter = Counter()
        self.attrs_dropped: Counter = Counter()
        self.notes: list[str] = []

    # -- dispatch ---------------------------------------------------------------------------------
    def convert(self, node: gs.Node) -> None:
        if node.domain not in (None, "", "ai.onnx"):
            return  # other domains keep their own opset imports
        src = _since(node.op, self.source)
        if src is None:
            raise _Unsupported(f"not an ONNX op at opset {self.source}")
        tgt = _since(node.op, self.target)
        if src == tgt:
            return
        if any(isinstance(v, gs.Graph) or (isinstance(v, list) and v and isinstance(v[0], gs.Graph)) for v in node.attrs.values()):
            raise _Unsupported("control flow with subgraphs is not supported")
        steps = [v for v in _history()[node.op] if (tgt or 0) < v <= src]
        rewrite = _REWRITES.get(node.op)
        handled = rewrite[1] if rewrite else frozenset()
        rules = {r.version for r in _ATTR_RULES.get(node.op, ())}
        unknown = [v for v in steps if v not in _TYPE_ONLY.get(node.op, frozenset()) and v not in handled and v not in rules]
        if tgt is None and not rewrite:
            raise _Unsupported(f"does not exist before opset {steps[0]} and has no decomposition here")
        if unknown:
            raise _Unsupported(f"changed meaning in opset {unknown[0]} and has no down-conversion here")
        for rule in _ATTR_RULES.get(node.op, ()):
            if self.target < rule.version:
                self._drop_attr(node, rule)
        if rewrite and any(v in handled for v in steps):
            op = node.op  # a rewrite may turn the node into another op (Dropout -> Identity)
            if rewrite[0](self, node):
                self.rewritten[op] += 1
        if node.outputs and tgt is not None:
            extra = set(node.attrs) - _schema_attrs(node.op, self.target)
            if extra:
                raise _Unsupported(f"attribute {sorted(extra)[0]!r} does not exist at opset {self.target}")

    def _drop_attr(self, node: gs.Node, rule: _AttrRule) -> None:
        value = node.attrs.get(rule.attr, _ATTR_DEFAULTS.get((node.op, rule.attr)))
        if value is None:
            return
        if not rule.keeps_old(value, node):
            shown = value.decode() if isinstance(value, bytes) else value
            raise _Unsupported(f"{rule.attr}={shown!r} has no equivalent before opset {rule.version} (needs {rule.old_behaviour})")
        if rule.attr in node.attrs:
            del node.attrs[rule.attr]
            self.attrs_dropped[f"{node.op}.{rule.attr}"] += 1

    # -- building blocks --------------------------------------------------------------------------
    def const(self, hint: str, value: np.ndarray) -> gs.Constant:
        return gs.Constant(self.namer(hint), np.asarray(value))

    def add(self, op: str, inputs: list[gs.Tensor], attrs: dict | None = None, out: gs.Variable | None = None, hint: str = "") -> gs.Variable:
        """Appends a single-output node; returns its output (a new tensor unless `out` is given)."""
        out = out if out is not None else gs.Variable(self.namer(hint or op.lower()))
        self.graph.nodes.append(gs.Node(op, name=self.namer(op), attrs=dict(attrs or {}), inputs=list(inputs), outputs=[out]))
        return out

    def replace_single(self, node: gs.Node, build: Callable[[gs.Variable], None]) -> None:
        """Detaches `node`'s only output and lets `build(y)` produce it from new nodes."""
        (y,) = node.outputs
        node.outputs.clear()
        build(y)

    @staticmethod
    def const_ints(node: gs.Node, index: int, what: str) -> list[int] | None:
        """A constant int input as a list; None when the input is absent; raises when computed."""
        if len(node.inputs) <= index or node.inputs[index].name == "":
            return None
        value = const_value(node.inputs[index])
        if value is None:
            raise _Unsupported(f"{what} is computed at run time; opset-{node.op} before this version needs it constant (run simplify first)")
        return [int(v) for v in np.asarray(value).reshape(-1)]

    @staticmethod
    def rank(tensor: gs.Tensor, why: str) -> int:
        shape = getattr(tensor, "shape", None)
        if shape is None:
            raise _Unsupported(f"the rank of '{tensor.name}' is unknown and {why}")
        return len(shape)

    @staticmethod
    def float_dtype(tensor: gs.Tensor) -> np.dtype:
        dtype = getattr(tensor, "dtype", None)
        return np.dtype(dtype) if dtype is not None and np.dtype(dtype).kind == "f" else np.dtype(np.float32)


# -- rewrites (each returns True when it changed the node's structure) -----------------------------

def _truncate(tensors: list, length: int) -> None:
    """Drops trailing inputs/outputs (gs's synchronized lists do not support slice assignment)."""
    while len(tensors) > length:
        tensors.pop()


def _hardswish(c: _DownConverter, node: gs.Node) -> bool:
    x = node.inputs[0]

    def build(y: gs.Variable) -> None:
        gate = c.add("HardSigmoid", [x], {"alpha": 1.0 / 6.0, "beta": 0.5})
        c.add("Mul", [x, gate], out=y)

    c.replace_single(node, build)
    return True


def _mish(c: _DownConverter, node: gs.Node) -> bool:
    x = node.inputs[0]

    def build(y: gs.Variable) -> None:
        c.add("Mul", [x, c.add("Tanh", [c.add("Softplus", [x])])], out=y)

    c.replace_single(node, build)
    return True


def _gelu(c: _DownConverter, node: gs.Node) -> bool:
    x = node.inputs[0]
    dt = c.float_dtype(x)
    approx = node.attrs.get("approximate", "none")
    approx = approx.decode() if isinstance(approx, bytes) else approx

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


def _layer_norm(c: _DownConverter, node: gs.Node) -> bool:
    x, scale = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    if any(o.outputs or is_graph_output(c.graph, o) for o in node.outputs[1:]):
        raise _Unsupported("its Mean/InvStdDev outputs are used")
    dt = c.float_dtype(x)
    if dt != np.float64 and dt != np.float32 and int(node.attrs.get("stash_type", 1)) == 1:
        raise _Unsupported(f"stash_type=1 on a {dt.name} input (statistics in float32) is not decomposed here")
    axis = int(node.attrs.get("axis", -1))
    if axis >= 0:
        rank = c.rank(x, "LayerNormalization with a non-negative axis needs it")
        axes = list(range(axis, rank))
    else:
        axes = list(range(axis, 0))
    eps = float(node.attrs.get("epsilon", 1e-5))
    _truncate(node.outputs, 1)

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


def _or_equal(c: _DownConverter, node: gs.Node) -> bool:
    strict = {"GreaterOrEqual": "Greater", "LessOrEqual": "Less"}[node.op]
    a, b = node.inputs

    def build(y: gs.Variable) -> None:
        c.add("Or", [c.add(strict, [a, b]), c.add("Equal", [a, b])], out=y)

    c.replace_single(node, build)
    return True


def _softmax(c: _DownConverter, node: gs.Node) -> bool:
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


def _reduce(c: _DownConverter, node: gs.Node) -> bool:
    """Opset 18 (ReduceSum: 13) moved `axes` from an attribute to an input."""
    moved_at = 13 if node.op == "ReduceSum" else 18
    if c.target >= moved_at:
        return False
    axes = c.const_ints(node, 1, "the axes input")
    noop = int(node.attrs.pop("noop_with_empty_axes", 0))
    _truncate(node.inputs, 1)
    if not axes:
        if noop:
            node.op, node.attrs = "Identity", {}
        return True
    node.attrs["axes"] = axes
    return True


def _axes_to_attr(c: _DownConverter, node: gs.Node) -> bool:
    """Squeeze/Unsqueeze: opset 13 moved `axes` from an attribute to an input."""
    axes = c.const_ints(node, 1, "the axes input")
    _truncate(node.inputs, 1)
    if axes is not None:
        node.attrs["axes"] = axes
    elif node.op == "Unsqueeze":
        raise _Unsupported("Unsqueeze without axes")
    return True


def _split(c: _DownConverter, node: gs.Node) -> bool:
    """Split: sizes became an input in 13; `num_outputs` (uneven last chunk) arrived in 18."""
    x = node.inputs[0]
    axis = int(node.attrs.get("axis", 0))
    sizes = c.const_ints(node, 1, "the split sizes")
    n = node.attrs.pop("num_outputs", None)
    if sizes is None and n is not None:
        shape = getattr(x, "shape", None)
        dim = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
        if isinstance(dim, (int, np.integer)) and dim >= 0:
            chunk = -(-int(dim) // int(n))
            last = int(dim) - chunk * (int(n) - 1)
            if last <= 0:
                raise _Unsupported(f"num_outputs={n} cannot split a dimension of {dim}")
            sizes = None if last == chunk else [chunk] * (int(n) - 1) + [last]
        else:
            c.notes.append(f"{node_label(node)}: split dimension unknown; equal chunks (the runtime rejects an uneven split)")
    _truncate(node.inputs, 1)
    if sizes is not None:
        if c.target < 13:
            node.attrs["split"] = sizes
        else:
            node.inputs.append(c.const("split", np.array(sizes, np.int64)))
    return True


def _resize(c: _DownConverter, node: gs.Node) -> bool:
    mode = node.attrs.get("coordinate_transformation_mode", "half_pixel")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if c.target < 19 and mode == "half_pixel_symmetric":
        raise _Unsupported("coordinate_transformation_mode=half_pixel_symmetric arrived in opset 19")
    if c.target < 18:
        if int(node.attrs.pop("antialias", 0)) != 0:
            raise _Unsupported("antialias=1 arrived in opset 18")
        policy = node.attrs.pop("keep_aspect_ratio_policy", "stretch")
        if (policy.decode() if isinstance(policy, bytes) else policy) != "stretch":
            raise _Unsupported("keep_aspect_ratio_policy other than stretch arrived in opset 18")
        axes = node.attrs.pop("axes", None)
        if axes is not None and list(axes) != list(range(c.rank(node.inputs[0], "Resize axes must be checked"))):
            raise _Unsupported("Resize over a subset of axes arrived in opset 18")
    if c.target < 13:
        # Resize-11 takes roi and scales as required inputs: empty tensors stand for "not given".
        ins = list(node.inputs) + [gs.Variable.empty()] * (4 - len(node.inputs))
        x, roi, scales, sizes = ins[:4]
        if roi.name == "":
            roi = c.const("roi", np.zeros([0], np.float32))
        if scales.name == "":
            scales = c.const("scales", np.zeros([0], np.float32))
        node.inputs.clear()
        node.inputs.extend([x, roi, scales] + ([sizes] if sizes.name else []))
    return True


def _pad(c: _DownConverter, node: gs.Node) -> bool:
    mode = node.attrs.get("mode", "constant")
    if c.target < 19 and (mode.decode() if isinstance(mode, bytes) else mode) == "wrap":
        raise _Unsupported("mode=wrap arrived in opset 19")
    if c.target >= 18 or len(node.inputs) < 4 or not node.inputs[3].name:
        return False
    axes = c.const_ints(node, 3, "the axes input")
    pads = c.const_ints(node, 1, "the pads input")
    rank = c.rank(node.inputs[0], "Pad axes must be expanded to every axis")
    full = [0] * (2 * rank)
    for i, ax in enumerate(axes or []):
        full[ax % rank] = pads[i]
        full[rank + ax % rank] = pads[len(axes) + i]
    node.inputs[1] = c.const("pads", np.array(full, np.int64))
    _truncate(node.inputs, 3)
    return True


def _shape(c: _DownConverter, node: gs.Node) -> bool:
    start = int(node.attrs.pop("start", 0))
    end = node.attrs.pop("end", None)
    if start == 0 and end is None:
        return False
    x = node.inputs[0]

    def build(y: gs.Variable) -> None:
        full = c.add("Shape", [x])
        c.add("Slice", [full, c.const("starts", np.array([start], np.int64)), c.const("ends", np.array([INT64_MAX if end is None else int(end)], np.int64)), c.const("axes", np.array([0], np.int64))], out=y)

    c.replace_single(node, build)
    return True


def _constant(c: _DownConverter, node: gs.Node) -> bool:
    kinds = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}
    for key, dtype in kinds.items():
        if key in node.attrs:
            value = np.array(node.attrs.pop(key), dtype=dtype)
            node.attrs["value"] = gs.Constant(c.namer("value"), value)
            return True
    if "value" not in node.attrs:
        raise _Unsupported(f"{sorted(node.attrs)[0] if node.attrs else 'no value'} is not expressible before opset 12")
    return False


def _dropout(c: _DownConverter, node: gs.Node) -> bool:
    """Dropout in inference (training_mode absent or false) is the identity."""
    if len(node.inputs) > 2 and node.inputs[2].name:
        mode = const_value(node.inputs[2])
        if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
            raise _Unsupported("training_mode is true or computed at run time")
    if len(node.outputs) > 1 and (node.outputs[1].outputs or is_graph_output(c.graph, node.outputs[1])):
        raise _Unsupported("its mask output is used")
    node.op, node.attrs = "Identity", {}
    _truncate(node.inputs, 1)
    _truncate(node.outputs, 1)
    return True


def _batchnorm(c: _DownConverter, node: gs.Node) -> bool:
    """BatchNormalization-14 in inference has one output; older versions allow optional extras."""
    if any(o.outputs or is_graph_output(c.graph, o) for o in node.outputs[1:]):
        raise _Unsupported("its running statistics outputs are used")
    _truncate(node.outputs, 1)
    return False


# Rewrites that read the rank or a dimension of their first input.
_NEEDS_SHAPE = frozenset({"Softmax", "LogSoftmax", "Hardmax", "Split", "LayerNormalization", "Pad", "Resize"})
_Rewrite = Callable[[_DownConverter, gs.Node], bool]
_REDUCE_18 = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSumSquare")
# op -> (rewrite, the schema versions whose changes it handles)
_REWRITES: dict[str, tuple[_Rewrite, frozenset[int]]] = {
    "HardSwish": (_hardswish, frozenset({14})),
    "Mish": (_mish, frozenset({18})),
    "Gelu": (_gelu, frozenset({20})),
    "LayerNormalization": (_layer_norm, frozenset({17})),
    "GreaterOrEqual": (_or_equal, frozenset({12})),
    "LessOrEqual": (_or_equal, frozenset({12})),
    "Softmax": (_softmax, frozenset({13})),
    "LogSoftmax": (_softmax, frozenset({13})),
    "Hardmax": (_softmax, frozenset({13})),
    "ReduceSum": (_reduce, frozenset({13})),
    **{op: (_reduce, frozenset({18})) for op in _REDUCE_18},
    "Squeeze": (_axes_to_attr, frozenset({13})),
    "Unsqueeze": (_axes_to_attr, frozenset({13})),
    "Split": (_split, frozenset({13, 18})),
    "Resize": (_resize, frozenset({13, 18, 19})),
    "Pad": (_pad, frozenset({18, 19})),
    "Shape": (_shape, frozenset({15})),
    "Constant": (_constant, frozenset({12})),
    "Dropout": (_dropout, frozenset({12})),
    "BatchNormalization": (_batchnorm, frozenset({14})),
}
