"""narrow-types: int64 -> int32 and float64 -> float32 over regions of ops that compute the same in both.

Before -> After (position ids from a static length; an int64 index constant)::

    Range(0, L, 1) -> Add(2) -> Unsqueeze -> Gather(table, .)       (int64, every value in [2, L + 2))
        ->  Range(0, L, 1) -> Cast<to=int32> -> Add(2:int32) -> Unsqueeze -> Gather(table, .)
    Cast<to=double>(x) -> Mul(2.0:double) -> Add(0.5:double) -> Cast<to=float> -> y
        ->  Mul(x, 2.0:float) -> Add(0.5:float) -> Cast<to=float> -> y   (that Cast, now a no-op, is merge-casts' job)
    Gather(x, [2, 0, 1]:int64)  ->  Gather(x, [2, 0, 1]:int32)

Why: Ascend's AI Core kernels are built for 32- and 16-bit types; an op on int64 or float64 runs on
an AI CPU kernel (a round trip off the AI Core) or is refused, so a torch graph's int64 index
arithmetic and any float64 math cost a device transfer each. This is the reason Ascend's retired
surgeon tool carried a type-narrowing knowledge; the effect on a device is not measured here.

What is narrowed: a region is a connected set of nodes whose ops are in `INT_OPS` / `FLOAT_OPS` and
compute in int64 (float64) on the inputs and outputs `_SLOTS` names (the type ``T`` of the ONNX spec:
Add's inputs and output, Reshape's data but not its shape, Gather's data; Cast to int64/float64 is
retargeted). Inputs of those ops that the spec allows only as int64 stay int64: Reshape's and
Expand's shape, Tile's repeats, Unsqueeze/Squeeze/Reduce axes, Pad's pads, TopK's K, Split's split,
ScatterND's and GatherND's indices, ConstantOfShape's input; so do Slice's starts/ends/axes/steps
(int32 is allowed there, but all four must share one type) and the outputs of Shape, Size,
ArgMax/ArgMin, NonZero and TopK's indices (int64 by spec). Index inputs that take either
width (Gather, GatherElements and ScatterElements indices, Cast's and Shape's inputs) read the narrow
values as they are, and int64 index constants there become int32.

At the region's edges: constants are converted (a copy where others use them), other int64/float64
values entering get a Cast to the narrow type, and narrow values used where int64/float64 is required
(an int64-only input, an op outside the lists, a graph output) get a Cast back. Graph inputs and
outputs keep their types; ``{io=true}`` narrows them instead (the model's interface changes, and
int64 inputs are then assumed to hold values that fit int32). No-op Casts (int32 -> int32) left by a
retargeted Cast are removed.

Refused, with the reason:
- int64 values that may not fit int32: an interval analysis bounds every int64 value from constants,
  static shapes, the width of the type a Cast came from (int32, bool...), and assumes only that every
  dimension and element count of a tensor fits int32 (``[0, 2^31 - 1]`` for Shape, Size, ArgMax...);
  a value without a bound (an int64 graph input, a Cast from float, a ReduceSum) or outside
  ``[-2^31, 2^31 - 1]`` (a constant, or ``dim + 1`` of a dynamic dim) keeps its op int64;
- float64 constants that do not round-trip through float32 (0.1) or overflow it, Casts to float64
  from integers that float32 does not hold exactly (beyond 2^24), and float64 regions whose values
  leave them other than through a Cast to another type or a comparison (a float64 graph output, a
  float64 consumer outside the lists): float64 precision would be lost there;
- shape arithmetic: a region fed only by Shape/Size (and constants) whose values all go to int64-only
  inputs (Shape -> Gather -> Concat -> Reshape) gains nothing and stays int64;
- a region that would need as many Casts as it has nodes.

Exact: int32 arithmetic on values that fit int32 is the int64 arithmetic, bit for bit. Float regions
compute in float32 what they computed in float64 and leave through a cast to float32 (or a
comparison): equal within float32 rounding, which is what the verifier's float32 tolerance measures;
a comparison of values closer than float32's rounding could in principle flip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import const_value, is_graph_output, node_label
from onnxforge.passes._rewrite import Match, Rule, RuleContext, RulePass, replace_all_uses
from onnxforge.passes.base import PassKind, Skip, option
from onnxforge.passes.registry import register

INT32_MIN, INT32_MAX = int(np.iinfo(np.int32).min), int(np.iinfo(np.int32).max)
#: The one assumption about run-time values: a dimension or element count fits int32.
DIM_MAX = INT32_MAX
#: Integers float32 holds exactly.
FLOAT32_EXACT_INT = 2 ** 24

ALL = "all"
#: op -> (inputs of type T, outputs of type T): the values narrowed together. ALL: every present one.
_SLOTS: dict[str, tuple[Any, Any]] = {
    **{op: (ALL, (0,)) for op in (
        "Add", "Sub", "Mul", "Div", "Mod", "Max", "Min", "Sum", "Mean", "Neg", "Abs", "Sign", "Relu", "Concat", "Identity",
        "Clip", "Sqrt", "Exp", "Log", "Tanh", "Sigmoid", "Erf", "Floor", "Ceil", "Round", "Reciprocal", "Sin", "Cos",
        "LeakyRelu", "Elu", "Selu", "Softplus", "HardSigmoid", "MatMul", "Softmax", "LogSoftmax", "Pow", "Range")},
    **{op: ((0,), (0,)) for op in (
        "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "Expand", "Tile", "Slice", "Gather",
        "GatherElements", "GatherND", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceMean", "ReduceProd", "TopK")},
    **{op: (ALL, ()) for op in ("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual")},
    "Where": ((1, 2), (0,)),
    "Pad": ((0, 2), (0,)),
    "Split": ((0,), ALL),
    "ScatterND": ((0, 2), (0,)),
    "ScatterElements": ((0, 2), (0,)),
    "Gemm": ((0, 1, 2), (0,)),
}
#: Ops narrowed int64 -> int32 (the spec types both widths alike; the sums are left out: unbounded; Range
#: too: onnxruntime's type check sees a limit computed from a static Shape as int64 and refuses the model).
INT_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Mod", "Max", "Min", "Neg", "Abs", "Sign", "Relu", "Concat", "Identity", "Clip",
    "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "Expand", "Tile", "Slice", "Gather", "GatherElements",
    "GatherND", "ReduceMax", "ReduceMin", "TopK", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Where",
    "Pad", "Split", "ScatterND", "ScatterElements",
})
#: Ops narrowed float64 -> float32.
FLOAT_OPS = frozenset(set(_SLOTS) - {"Mod"})
#: Inputs that take int32 or int64 whatever the rest of the node is (narrow values are read as they are).
EITHER_WIDTH = {"Gather": (1,), "GatherElements": (1,), "ScatterElements": (1,), "Cast": (0,), "Shape": (0,), "Size": (0,)}
#: int64-only outputs whose values are dimensions or indices (bounded by the one assumption).
DIM_SOURCES = frozenset({"Shape", "Size", "ArgMax", "ArgMin", "NonZero"})


@dataclass(frozen=True)
class Family:
    """One narrowing: int64 -> int32 or float64 -> float32."""

    key: str
    wide: int
    narrow: int
    ops: frozenset

    @property
    def narrow_np(self) -> np.dtype:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(self.narrow))


INT = Family("int", onnx.TensorProto.INT64, onnx.TensorProto.INT32, INT_OPS)
FLOAT = Family("float", onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT, FLOAT_OPS)
_INT_TYPE_RANGE = {
    onnx.TensorProto.BOOL: (0, 1), onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255),
    onnx.TensorProto.INT16: (-32768, 32767), onnx.TensorProto.UINT16: (0, 65535), onnx.TensorProto.INT32: (INT32_MIN, INT32_MAX),
}
_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


@dataclass(frozen=True)
class NarrowTypesOptions:
    io: bool = option(False, "also narrow graph inputs and outputs (the model's interface changes; int64 inputs are assumed to fit int32)")


def _present(tensors: list[gs.Tensor], which: Any) -> list[int]:
    if which == ALL:
        return [i for i, t in enumerate(tensors) if t.name != ""]
    return [i for i in which if i < len(tensors) and tensors[i].name != ""]


def group_inputs(node: gs.Node) -> list[int]:
    return _present(node.inputs, _SLOTS[node.op][0]) if node.op in _SLOTS else []


def group_outputs(node: gs.Node) -> list[int]:
    if node.op == "Cast":
        return [0]
    return _present(node.outputs, _SLOTS[node.op][1]) if node.op in _SLOTS else []


class Analysis:
    """Element types and (for integers) value ranges of every tensor, in one forward sweep."""

    def __init__(self, ctx: RuleContext) -> None:
        self.graph = ctx.graph
        self.io = bool(ctx.options.io)
        self.types = ctx.types()
        self.ranges: dict[int, tuple[int, int] | None] = {}
        for tensor in self.graph.inputs:
            if self.elem(tensor) == INT.wide:
                self.ranges[id(tensor)] = (INT32_MIN, INT32_MAX) if self.io else None
        for node in self.graph.nodes:
            self._sweep(node)

    def elem(self, tensor: gs.Tensor) -> int | None:
        if isinstance(tensor, gs.Constant):
            return onnx.helper.np_dtype_to_tensor_dtype(tensor.values.dtype)
        known = self.types.get(tensor.name)
        if known is not None:
            return int(known[0])
        if tensor.dtype is not None:
            try:
                return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))
            except (TypeError, KeyError):
                return None
        return None

    def dims(self, tensor: gs.Tensor) -> tuple | None:
        known = self.types.get(tensor.name)
        return known[1] if known is not None else None

    def range(self, tensor: gs.Tensor) -> tuple[int, int] | None:
        """Bounds of an integer tensor's values, or None when unknown."""
        value = const_value(tensor)
        if value is not None:
            if value.dtype.kind not in "iub":
                return None
            return (int(value.min()), int(value.max())) if value.size else (0, 0)
        if id(tensor) in self.ranges:
            return self.ranges[id(tensor)]
        return _INT_TYPE_RANGE.get(self.elem(tensor)) if self.elem(tensor) != INT.wide else None

    def _sweep(self, node: gs.Node) -> None:
        ins = [self.range(t) if t.name else None for t in node.inputs]
        outs = _transfer(node, ins, self)
        for i, out in enumerate(node.outputs):
            self.ranges[id(out)] = outs[i] if i < len(outs) else None


def _hull(*ranges: tuple[int, int] | None) -> tuple[int, int] | None:
    if not ranges or any(r is None for r in ranges):
        return None
    return (min(r[0] for r in ranges), max(r[1] for r in ranges))


def _static_dims(a: Analysis, tensor: gs.Tensor) -> list[int] | None:
    dims = a.dims(tensor)
    if dims is None or any(not isinstance(d, int) for d in dims):
        return None
    return list(dims)


def _transfer(node: gs.Node, ins: list, a: Analysis) -> list[tuple[int, int] | None]:
    """The output ranges of `node` from its input ranges (None: unknown)."""
    op = node.op
    if node.domain not in (None, "", "ai.onnx"):
        return []
    if op in DIM_SOURCES or op == "TopK":
        if op == "Shape":
            dims = _static_dims(a, node.inputs[0])
            if dims is not None:
                start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
                picked = dims[start:end] if end is not None else dims[start:]
                return [(min(picked), max(picked)) if picked else (0, 0)]
        if op == "Size":
            dims = _static_dims(a, node.inputs[0])
            if dims is not None:
                return [(int(np.prod(dims)), int(np.prod(dims)))]
        if op in ("ArgMax", "ArgMin"):
            dims = _static_dims(a, node.inputs[0])
            if dims:
                return [(0, max(dims[int(node.attrs.get("axis", 0))] - 1, 0))]
        bound = (0, DIM_MAX)
        return [ins[0], bound] if op == "TopK" else [bound]
    if op == "Cast":
        src = a.elem(node.inputs[0])
        if src is not None and src in _INT_TYPE_RANGE or src == INT.wide:
            return [ins[0] if ins[0] is not None else _INT_TYPE_RANGE.get(src)]
        return [None]
    if op in ("Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "Expand", "Tile", "Slice",
              "Gather", "GatherElements", "GatherND", "ReduceMax", "ReduceMin"):
        return [ins[0]]
    if op == "Split":
        return [ins[0]] * len(node.outputs)
    if op in ("Concat", "Max", "Min"):
        return [_hull(*[r for r, t in zip(ins, node.inputs) if t.name])]
    if op == "Where":
        return [_hull(ins[1], ins[2])]
    if op in ("ScatterND", "ScatterElements"):
        return [_hull(ins[0], ins[2])]
    if op == "Pad":
        value = ins[2] if len(ins) > 2 and node.inputs[2].name else (0, 0)
        return [_hull(ins[0], value)]
    if op == "Clip":
        return [ins[0]]
    if op == "Range":
        return [_hull(ins[0], ins[1])]
    if op == "ConstantOfShape":
        value = node.attrs.get("value")
        if isinstance(value, gs.Constant) and value.values.dtype.kind in "iub" and value.values.size:
            return [(int(value.values.min()), int(value.values.max()))]
        return [(0, 0)] if value is None else [None]
    if any(r is None for r, t in zip(ins, node.inputs) if t.name) or not ins:
        return [None]
    if op == "Neg":
        return [(-ins[0][1], -ins[0][0])]
    if op == "Abs":
        lo, hi = ins[0]
        return [(0 if lo <= 0 <= hi else min(abs(lo), abs(hi)), max(abs(lo), abs(hi)))]
    if op == "Sign":
        return [(-1, 1)]
    if op == "Relu":
        return [(max(ins[0][0], 0), max(ins[0][1], 0))]
    if op == "Add":
        return [(ins[0][0] + ins[1][0], ins[0][1] + ins[1][1])]
    if op == "Sub":
        return [(ins[0][0] - ins[1][1], ins[0][1] - ins[1][0])]
    if op == "Mul":
        corners = [x * y for x in ins[0] for y in ins[1]]
        return [(min(corners), max(corners))]
    if op == "Div":
        (lo, hi), (dlo, _) = ins[0], ins[1]
        if lo >= 0 and dlo > 0:
            return [(0, hi // dlo)]
        m = max(abs(lo), abs(hi))
        return [(-m, m)]
    if op == "Mod":
        b = max(abs(ins[1][0]), abs(ins[1][1]))
        return [(0, max(b - 1, 0))] if ins[0][0] >= 0 and ins[1][0] > 0 else [(-b, b)]
    return [None]


def _fits(r: tuple[int, int] | None) -> bool:
    return r is not None and INT32_MIN <= r[0] and r[1] <= INT32_MAX


def _round_trips(value: np.ndarray) -> bool:
    with np.errstate(over="ignore"):
        narrow = value.astype(np.float32)
    return bool(np.array_equal(narrow.astype(np.float64), value, equal_nan=True))


@dataclass
class Region:
    family: Family
    nodes: list[gs.Node] = field(default_factory=list)


def _candidate(node: gs.Node, fam: Family, a: Analysis) -> bool | str:
    """True if `node` computes in `fam`'s wide type and may be narrowed; a reason if it may not; False if
    it is no candidate at all."""
    if node.domain not in (None, "", "ai.onnx"):
        return False
    if node.op == "Cast":
        if int(node.attrs.get("to", 0)) != fam.wide or not node.outputs[0].outputs and not is_graph_output(a.graph, node.outputs[0]):
            return False
        src = a.elem(node.inputs[0])
        if fam is INT:
            return True if _fits(a.range(node.inputs[0])) else f"the values cast to int64 may not fit int32 (from {_type_name(src)})"
        if src in _FLOATS:
            return True
        r = a.range(node.inputs[0]) if src is not None and src not in (onnx.TensorProto.DOUBLE,) else None
        if r is not None and -FLOAT32_EXACT_INT <= r[0] and r[1] <= FLOAT32_EXACT_INT:
            return True
        return False if src == onnx.TensorProto.DOUBLE else f"float32 may not hold the {_type_name(src)} values exactly"
    if node.op not in fam.ops:
        return False
    slots = [node.inputs[i] for i in group_inputs(node)] + [node.outputs[i] for i in group_outputs(node)]
    if not slots or any(a.elem(t) != fam.wide for t in slots):
        return False
    for t in slots:
        if fam is INT and not _fits(a.range(t)):
            r = a.range(t)
            return f"the values of '{t.name}' may not fit int32 ({'unbounded' if r is None else f'range [{r[0]}, {r[1]}]'})"
        value = const_value(t)
        if fam is FLOAT and value is not None and not _round_trips(value):
            return f"the float64 constant '{t.name}' does not round-trip through float32"
    return True


def _type_name(elem: int | None) -> str:
    return onnx.TensorProto.DataType.Name(elem).lower() if elem else "an unknown type"


def _reads_narrow(consumer: gs.Node, index: int, members: set[int]) -> bool:
    """Whether input `index` of `consumer` takes the narrow value (a member's T input, or either width)."""
    if index in EITHER_WIDTH.get(consumer.op, ()):
        return True
    return id(consumer) in members and index in group_inputs(consumer)


def find_regions(a: Analysis) -> list[Region | Skip]:
    """The regions of both families, each with every check done: a Region to narrow or a Skip."""
    graph = a.graph
    found: list[Region | Skip] = []
    for fam in (INT, FLOAT):
        ok: dict[int, gs.Node] = {}
        for node in graph.nodes:
            verdict = _candidate(node, fam, a)
            if verdict is True:
                ok[id(node)] = node
            elif verdict:
                found.append(Skip(node_label(node), verdict))
        taken: set[int] = set()
        order = {id(n): i for i, n in enumerate(graph.nodes)}
        for node in graph.nodes:
            if id(node) not in ok or id(node) in taken:
                continue
            region, queue = Region(fam), [node]
            taken.add(id(node))
            while queue:
                current = queue.pop()
                region.nodes.append(current)
                for other in _linked(current, ok):
                    if id(other) not in taken:
                        taken.add(id(other))
                        queue.append(other)
            region.nodes.sort(key=lambda n: order[id(n)])
            found.append(_judge(region, a))
    return found


def _linked(node: gs.Node, ok: dict[int, gs.Node]) -> list[gs.Node]:
    out = []
    for i in group_inputs(node):
        producer = node.inputs[i].inputs[0] if node.inputs[i].inputs else None
        if producer is not None and id(producer) in ok and any(node.inputs[i] is producer.outputs[j] for j in group_outputs(producer)):
            out.append(producer)
    for j in group_outputs(node):
        for consumer in node.outputs[j].outputs:
            if id(consumer) in ok and any(consumer.inputs[i] is node.outputs[j] for i in group_inputs(consumer)):
                out.append(consumer)
    return out


@dataclass
class _Edges:
    entries: list[gs.Tensor]  # wide runtime values entering (a Cast each), graph inputs narrowed in place under io
    exits: list[gs.Tensor]  # narrowed values needed wide somewhere (a Cast back each)
    wide_exits: list[str]  # why: where each exit goes


def edges(region: Region, a: Analysis) -> _Edges:
    members = {id(n) for n in region.nodes}
    produced = {id(n.outputs[j]) for n in region.nodes for j in group_outputs(n)}
    entries: dict[int, gs.Tensor] = {}
    for node in region.nodes:
        for i in group_inputs(node):
            t = node.inputs[i]
            if id(t) in produced or const_value(t) is not None:
                continue
            if a.io and any(t is g for g in a.graph.inputs) and _all_read_narrow(t, members):
                continue
            entries[id(t)] = t
    exits, where = [], []
    for node in region.nodes:
        for j in group_outputs(node):
            t = node.outputs[j]
            outside = [c for c in t.outputs if not all(_reads_narrow(c, i, members) for i, x in enumerate(c.inputs) if x is t)]
            graph_out = is_graph_output(a.graph, t) and not a.io
            if outside or graph_out:
                exits.append(t)
                where.append(f"graph output '{t.name}'" if graph_out else f"{node_label(outside[0])} ({outside[0].op})")
    return _Edges(list(entries.values()), exits, where)


def _all_read_narrow(tensor: gs.Tensor, members: set[int]) -> bool:
    return all(_reads_narrow(c, i, members) for c in tensor.outputs for i, x in enumerate(c.inputs) if x is tensor)


def _judge(region: Region, a: Analysis) -> Region | Skip:
    e = edges(region, a)
    label = node_label(region.nodes[0])
    if region.family is FLOAT and e.exits:
        return Skip(label, f"its float64 values reach {e.wide_exits[0]}, which keeps float64 precision")
    sources = [t.inputs[0].op if t.inputs else "graph input" for t in e.entries]
    if region.family is INT and e.entries and all(s in ("Shape", "Size") for s in sources) and _read_wide_only(region, a):
        return Skip(label, "shape arithmetic: its values come from Shape and go only to int64-only inputs")
    casts = len(e.entries) + len(e.exits)
    if casts >= len(region.nodes):
        return Skip(label, f"narrowing its {len(region.nodes)} node(s) would need {casts} Cast(s)")
    return region


def _read_wide_only(region: Region, a: Analysis) -> bool:
    """Whether the region's values are used outside it only where int64 is required (no narrow reader)."""
    members = {id(n) for n in region.nodes}
    return all(id(c) in members or not _reads_narrow(c, i, members)
               for n in region.nodes for j in group_outputs(n) for c in n.outputs[j].outputs
               for i, x in enumerate(c.inputs) if x is n.outputs[j])


class NarrowRegion(Rule):
    """A region of int64 (float64) ops computed in int32 (float32), Casts at its edges."""

    name = "regions_narrowed"

    def targets(self, ctx: RuleContext) -> list[Region | Skip]:
        self._a = Analysis(ctx)
        self.nodes = self.casts = self.dropped = 0
        self._retargeted: list[tuple[gs.Node, Family]] = []
        return find_regions(self._a)

    def match(self, target: Region | Skip, ctx: RuleContext) -> Match | Skip | None:
        if isinstance(target, Skip):
            return target
        return Match(node_label(target.nodes[0]), node=target.nodes[0], values={"region": target})

    def rewrite(self, match: Match, builder: GraphBuilder) -> str | None:
        region: Region = match["region"]
        fam, a = region.family, self._a
        members = {id(n) for n in region.nodes}
        e = edges(region, a)
        cache: dict[int, gs.Tensor] = {}
        exit_ids = {id(t) for t in e.exits}
        entry_ids = {id(t) for t in e.entries}
        # values produced: narrowed in place, or (when needed wide too) a narrow twin with a Cast back
        for node in region.nodes:
            if node.op == "Cast":
                node.attrs["to"] = fam.narrow
            for j in group_outputs(node):
                t = node.outputs[j]
                if id(t) not in exit_ids:
                    t.dtype = fam.narrow_np
                    continue
                twin = gs.Variable(builder.name("narrow"), dtype=fam.narrow_np, shape=t.shape)
                for consumer in list(t.outputs):
                    consumer.inputs = [twin if x is t and _reads_narrow(consumer, i, members) else x for i, x in enumerate(consumer.inputs)]
                node.outputs[j] = twin
                builder.cast(twin, fam.wide, out=t, hint="widen")
                self.casts += 1
        # values consumed: constants converted, wide values cast, graph inputs narrowed under io
        for node in region.nodes:
            for i in group_inputs(node):
                t = node.inputs[i]
                if id(t) in entry_ids:
                    if id(t) not in cache:
                        cache[id(t)] = builder.cast(t, fam.narrow, hint="narrow")
                        self.casts += 1
                    node.inputs[i] = cache[id(t)]
                elif const_value(t) is not None and a.elem(t) == fam.wide:
                    if id(t) not in cache:
                        cache[id(t)] = builder.const(const_value(t).astype(fam.narrow_np), "narrowed")
                    node.inputs[i] = cache[id(t)]
                elif any(t is g for g in builder.graph.inputs) and a.elem(t) == fam.wide:
                    t.dtype = fam.narrow_np  # io=true: the interface changes
        if a.io:
            for t in builder.graph.outputs:
                if any(t is n.outputs[j] for n in region.nodes for j in group_outputs(n)):
                    t.dtype = fam.narrow_np
        # a Cast of this region may read a value another region narrows later: every retargeted Cast is
        # checked again after each region
        self._retargeted.extend((n, fam) for n in region.nodes if n.op == "Cast")
        self.dropped += _drop_noop_casts(self._retargeted, a)
        self.nodes += len(region.nodes)
        return None


def _current_elem(tensor: gs.Tensor, a: Analysis) -> int | None:
    """The element type of `tensor` now (a region rewritten before may have narrowed it in place)."""
    if isinstance(tensor, gs.Variable) and tensor.dtype is not None:
        try:
            return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))
        except (TypeError, KeyError):
            pass
    return a.elem(tensor)


def _drop_noop_casts(casts: list[tuple[gs.Node, Family]], a: Analysis) -> int:
    """Retargeted Casts whose input now has the narrow type, bypassed (the manager's cleanup drops
    them); a graph output keeps its Cast. Returns how many were bypassed now."""
    dropped = 0
    for node, fam in casts:
        if not node.outputs or _current_elem(node.inputs[0], a) != fam.narrow:
            continue
        out, src = node.outputs[0], node.inputs[0]
        if is_graph_output(a.graph, out):
            continue
        replace_all_uses(a.graph, out, src)
        node.outputs.clear()
        dropped += 1
    return dropped


class NarrowIndexConstants(Rule):
    """An int64 index constant of Gather/GatherElements/ScatterElements whose values fit becomes int32."""

    name = "index_constants_narrowed"
    op_types = ("Gather", "GatherElements", "ScatterElements")

    def match(self, node: gs.Node, ctx: RuleContext) -> Match | Skip | None:
        value = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if value is None or value.dtype != np.int64:
            return None
        if value.size and not _fits((int(value.min()), int(value.max()))):
            return self.skip(node, f"its index constant '{node.inputs[1].name}' does not fit int32")
        return Match(node_label(node), node=node, values={"value": value})

    def rewrite(self, match: Match, builder: GraphBuilder) -> str | None:
        match.node.inputs[1] = builder.const(match["value"].astype(np.int32), "indices")
        return None


@register
class NarrowTypes(RulePass):
    name = "narrow-types"
    summary = "computes int64 in int32 and float64 in float32 where the values fit, Casts at the regions' edges"
    kind = PassKind.EXACT
    tags = ("ascend",)
    Options = NarrowTypesOptions

    def rules(self) -> list[Rule]:
        self._region_rule = NarrowRegion()
        return [self._region_rule, NarrowIndexConstants()]

    def nothing_to_do(self, ctx: RuleContext) -> str | None:
        return "no int64 or float64 computation to narrow"

    def extra_stats(self, ctx: RuleContext, counts: dict[str, int], rewritten: list[str]) -> dict[str, int]:
        rule = self._region_rule
        return {"nodes_narrowed": rule.nodes, "casts_added": rule.casts, "casts_removed": rule.dropped}
