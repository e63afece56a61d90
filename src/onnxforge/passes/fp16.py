"""fp16: the whole graph computes in float16, except a block list of ops that break in half precision.

Before -> After::

    x (f32) -> Conv(W f32) -> Relu -> Exp -> Resize(·, roi, scales f32) -> y (f32)
    x (f32) -> Cast(f16) -> Conv(W f16) -> Relu -> Cast(f32) -> Exp -> Cast(f16) -> Resize(·, roi f32, scales f32)
            -> Cast(f32) -> y (f32)

Which nodes run in float16:
- Selected: with `nodes=`, only the named nodes (what a per-node search tries one at a time).
- Only nodes downstream of a graph input ("data"), not through Shape/Size: shape arithmetic (Shape ->
  Cast -> Mul -> Cast -> Resize sizes), constant folding leftovers and the like stay float32.
- Not kept: node names in `keep` (the keep-set a mixed-precision search chose, `evaluate.fp16_search`;
  unlike `block_nodes`, every name must exist: a keep-set for another model is an error, not a no-op).
- Not blocked: op types in `block` (default `DEFAULT_BLOCK`: exponentials, logarithms, powers,
  softmax, sums and products, normalizations that compute statistics, Range/CumSum, detection ops:
  what PyTorch autocast keeps in float32, for overflow or accumulated rounding), node names in
  `block_nodes`, and averaging/summing reductions (ReduceMean, ReduceSum, GlobalAveragePool,
  AveragePool) over more than `max_reduce` elements, or over a count unknown statically: a backend
  that accumulates in float16 loses precision with the count.
- Possible: the op's schema (at the model's opset) allows float16 for every type variable that binds
  a float32 output, its output dtype is not an attribute (ConstantOfShape, Random*, EyeLike), it has
  no subgraphs. Inputs that are not data keep float32 even in a float16 node: Resize's roi and scales.
Float32 initializers and Constant outputs get a float16 copy for their float16 consumers (values
clipped to +-65504, counted in `initializers_clipped`). Cast(to=FLOAT) nodes whose consumers are all
float16 are retargeted to FLOAT16. Casts are inserted where a tensor's dtype differs from what a
consumer wants, once per tensor and dtype. Graph inputs and outputs stay float32 (names kept) unless
`keep_io=false`.

Approximate. Documented bound (tests): on small conv nets with unit-scale inputs, every output is
within 1e-2 * max(1, max|reference|) of the float32 model. Deep nets amplify rounding: onnxruntime on
CPU computes float16 nodes through float32 kernels, so the error is mostly that of rounding weights and
activations, and PSPNet-R50 with deterministic (untrained) weights moves by about 8% of its largest
logit from rounding its weights alone. The evaluator measures what that costs in task accuracy.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxforge.errors import PipelineError
from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import const_value, is_graph_output, node_label
from onnxforge.passes._rewrite import replace_all_uses, replace_options, select, take_name
from onnxforge.passes.base import ModelState, Pass, PassKind, PassResult, Skip, option
from onnxforge.passes.registry import register

F16, F32 = np.dtype(np.float16), np.dtype(np.float32)
FP16_MAX = float(np.finfo(np.float16).max)

DEFAULT_BLOCK: tuple[str, ...] = (
    "Exp", "Log", "Pow", "Reciprocal", "Softplus", "Softmax", "LogSoftmax", "CumSum", "Range",
    "ReduceSum", "ReduceProd", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
    "LayerNormalization", "GroupNormalization", "InstanceNormalization", "NonMaxSuppression", "RoiAlign",
)
# Reductions whose float16 accumulation error grows with the element count.
_COUNTED = ("ReduceMean", "ReduceSum", "GlobalAveragePool", "AveragePool")
# Inputs that stay float32 inside a float16 node: not data, and precision matters (coordinates).
_KEEP_INPUTS: dict[str, frozenset[int]] = {"Resize": frozenset({1, 2}), "Upsample": frozenset({1})}
# Ops whose output dtype is an attribute, not a type variable a Cast could follow.
_ATTR_TYPED = frozenset({"ConstantOfShape", "EyeLike", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"})


@dataclass(frozen=True)
class Fp16Options:
    keep_io: bool = option(True, "graph inputs and outputs stay float32 (Casts at the boundary); false makes them float16")
    block: tuple[str, ...] = option(DEFAULT_BLOCK, "op types kept in float32 (replaces the default list)")
    block_nodes: tuple[str, ...] = option((), "node names kept in float32")
    keep: tuple[str, ...] = option((), "the keep-set of a mixed-precision search: node names that stay float32 (each must exist)")
    nodes: tuple[str, ...] = option((), "only these nodes (by name) run in float16 (default: every node that can)")
    max_reduce: int = option(4096, "ReduceMean/ReduceSum/GlobalAveragePool/AveragePool over more elements stay float32 (0: no limit)")


@dataclass(frozen=True)
class _Plan:
    """Which inputs and outputs of a float16 node change from float32 to float16."""

    inputs: frozenset[int]
    outputs: frozenset[int]


@register
class Fp16(Pass):
    name = "fp16"
    summary = "whole graph in float16, with a block list of ops kept in float32 (Casts around them)"
    kind = PassKind.APPROXIMATE
    Options = Fp16Options

    def validate(self) -> None:
        if self.options.max_reduce < 0:
            raise PipelineError(f"fp16: option 'max_reduce' must be >= 0, got {self.options.max_reduce}")

    def run(self, state: ModelState) -> PassResult:
        graph, types, reached, plans, skipped = self._plan(state)
        rewrite = _Rewrite(graph, types, plans, self.options.keep_io)
        rewrite.apply(reached)
        stats = rewrite.stats
        stats["nodes_fp32"] = len(skipped)
        if not rewrite.changed:
            note = "nothing left to convert: the float32 nodes left are kept for the reasons listed" if skipped else "no float32 computation left to convert"
            return PassResult(False, stats, skipped=skipped, notes=[note])
        return PassResult(True, stats, skipped=skipped)

    def candidates(self, model: onnx.ModelProto) -> list[str]:
        """Names of the nodes this pass would run in float16, in graph order (node-selecting protocol).

        Unnamed nodes cannot be selected and are not listed."""
        graph, _, _, plans, _ = self._plan(ModelState(model))
        return [n.name for n in graph.nodes if id(n) in plans and n.name]

    def with_nodes(self, names: Sequence[str]) -> "Fp16":
        """This pass with only the nodes `names` (non-empty) in float16; other options kept."""
        if not names:
            raise ValueError("with_nodes needs at least one node name (an empty nodes= selects every node)")
        return replace_options(self, nodes=tuple(names))

    def simulate(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """The float32 model with this pass's float16 rounding simulated by Cast pairs (float32 -> float16
        -> float32): on every float input a float16 node would convert (graph inputs and float32
        producers' outputs), on every output it would make float16, and on its weights (rounded copies,
        clipped to +-65504 as the pass clips them). Arithmetic inside each node stays float32.

        Why not run the float16 graph itself: onnxruntime's CPU provider computes float16 nodes it has
        no kernel for through float32 kernels and removes the Cast pairs it inserts around them, so
        activations between such nodes never round nor overflow (an overflowing Mul goes unnoticed).
        Explicit Cast pairs in a float32 graph are kept, and overflow to inf, underflow to subnormal or
        zero, as float16 does. Graph inputs, outputs and names are unchanged.
        """
        state = ModelState(model)
        graph, types, _, plans, _ = self._plan(state)
        b = GraphBuilder(graph, "fp16sim")
        rounded: dict[str, gs.Tensor] = {}  # tensor name -> its rounded float32 copy
        weights: dict[str, gs.Constant] = {}
        produced: set[int] = set()  # ids of the rounded copies of float16 nodes' outputs

        def round_pair(tensor: gs.Tensor) -> gs.Variable:
            half = b.cast(tensor, onnx.TensorProto.FLOAT16, hint="Cast")
            back = b.cast(half, onnx.TensorProto.FLOAT, hint="Cast")
            half.shape = back.shape = tensor.shape
            back.dtype = F32
            return back

        for node in list(graph.nodes):
            plan = plans.get(id(node))
            if plan is None:
                continue
            for j in sorted(plan.outputs):
                out = node.outputs[j]
                back = round_pair(out)
                first_cast = back.inputs[0].inputs[0].inputs[0]  # Cast(out -> float16)
                output = is_graph_output(graph, out)
                replace_all_uses(graph, out, back)
                first_cast.inputs[0] = out  # the rounding pair itself still reads the raw output
                if output:
                    take_name(out, back, b, "raw")
                produced.add(id(back))
        for node in list(graph.nodes):
            plan = plans.get(id(node))
            if plan is None:
                continue
            for i in sorted(plan.inputs):
                tensor = node.inputs[i]
                if not tensor.name or id(tensor) in produced:
                    continue
                value = const_value(tensor)
                if value is not None and np.asarray(value).dtype == F32:
                    if tensor.name not in weights:
                        half = np.clip(np.asarray(value), -FP16_MAX, FP16_MAX).astype(np.float16).astype(np.float32)
                        weights[tensor.name] = b.const(half, f"{tensor.name}_fp16sim")
                    node.inputs[i] = weights[tensor.name]
                    continue
                if tensor.name not in rounded:
                    rounded[tensor.name] = round_pair(tensor)
                    produced.add(id(rounded[tensor.name]))
                node.inputs[i] = rounded[tensor.name]
        graph.cleanup(remove_unused_graph_inputs=False)
        graph.toposort()
        return state.release()

    def _plan(self, state: ModelState) -> tuple[gs.Graph, "_TypeInfo", set[int], dict[int, _Plan], list[Skip]]:
        graph = state.graph
        if self.options.nodes:
            select(self.name, "node", self.options.nodes, graph.nodes)  # unknown names: PassError
        if self.options.keep:
            select(self.name, "node", self.options.keep, graph.nodes)  # a keep-set naming nodes the model lacks
        types = _TypeInfo(state, graph)
        reached = _downstream_of_inputs(graph)
        plans: dict[int, _Plan] = {}
        skipped: list[Skip] = []
        for node in graph.nodes:
            if id(node) not in reached or node.op == "Cast" or not _touches_float32(node, types):
                continue
            verdict = self._blocked(node, types) or _plan_or_reason(node, int(graph.opset), types)
            if isinstance(verdict, _Plan):
                if verdict.inputs or verdict.outputs:
                    plans[id(node)] = verdict
                continue
            skipped.append(Skip(node_label(node), f"kept in float32: {verdict}"))
        return graph, types, reached, plans, skipped

    def _blocked(self, node: gs.Node, types: "_TypeInfo") -> str:
        if node.op in self.options.block:
            return f"op {node.op} is in the block list"
        if node.name and node.name in self.options.block_nodes:
            return "named in block_nodes"
        if node.name and node.name in self.options.keep:
            return "in the keep-set (keep=)"
        if self.options.nodes and node.name not in self.options.nodes:
            return "not selected (nodes=)"
        if node.op in _COUNTED and self.options.max_reduce:
            count = _reduced_count(node, types)
            if count is None:
                return f"{node.op} over an element count unknown statically"
            if count > self.options.max_reduce:
                return f"{node.op} over {count} elements (max_reduce={self.options.max_reduce})"
        return ""


class _TypeInfo:
    """Element types and shapes of every tensor: declared, else ONNX inference on a copy of the model."""

    def __init__(self, state: ModelState, graph: gs.Graph) -> None:
        self.dtype: dict[str, np.dtype] = {}
        self.shape: dict[str, list] = {}
        for name, tensor in graph.tensors().items():
            dtype = _np_dtype(tensor.dtype)
            if dtype is not None:
                self.dtype[name] = dtype
            if tensor.shape is not None:
                self.shape[name] = list(tensor.shape)
        if any(name and name not in self.dtype for name in graph.tensors()):
            for name, (elem, dims) in state.types().items():
                if name not in self.dtype and elem:
                    self.dtype[name] = _np_dtype(elem)
                if name not in self.shape:
                    self.shape[name] = [d if isinstance(d, int) else None for d in dims]

    def of(self, tensor: gs.Tensor) -> np.dtype | None:
        return self.dtype.get(tensor.name)


def _np_dtype(value) -> np.dtype | None:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        try:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(value)))
        except (KeyError, TypeError, ValueError):
            return None
    try:
        return np.dtype(value)
    except TypeError:
        return None


def _downstream_of_inputs(graph: gs.Graph) -> set[int]:
    """ids of nodes fed (transitively) by a graph input, not through Shape/Size (shape arithmetic)."""
    reached: set[int] = set()
    frontier = list(graph.inputs)
    while frontier:
        tensor = frontier.pop()
        for node in tensor.outputs:
            if id(node) in reached:
                continue
            reached.add(id(node))
            if node.op not in ("Shape", "Size"):
                frontier.extend(node.outputs)
    return reached


def _touches_float32(node: gs.Node, types: _TypeInfo) -> bool:
    return any(types.of(t) == F32 for t in list(node.inputs) + list(node.outputs) if t.name)


def _reduced_count(node: gs.Node, types: _TypeInfo) -> int | None:
    shape = types.shape.get(node.inputs[0].name)
    if shape is None or any(not isinstance(d, (int, np.integer)) or d <= 0 for d in shape):
        return None
    if node.op == "GlobalAveragePool":
        return int(np.prod(shape[2:]))
    if node.op == "AveragePool":
        return int(np.prod(node.attrs.get("kernel_shape", [1])))
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
        value = const_value(node.inputs[1])
        if value is None:
            return None
        axes = [int(a) for a in np.asarray(value).reshape(-1)]
    if not axes:
        return 1 if int(node.attrs.get("noop_with_empty_axes", 0)) else int(np.prod(shape))
    return int(np.prod([shape[a % len(shape)] for a in axes]))


def _plan_or_reason(node: gs.Node, opset: int, types: _TypeInfo) -> _Plan | str:
    """The inputs/outputs a float16 version of `node` converts, or why it cannot run in float16."""
    if node.op in _ATTR_TYPED:
        return f"the output dtype of {node.op} is an attribute"
    if any(isinstance(v, gs.Graph) or (isinstance(v, list) and v and isinstance(v[0], gs.Graph)) for v in node.attrs.values()):
        return "it has subgraphs"
    try:
        schema = onnx.defs.get_schema(node.op, opset, node.domain or "")
    except onnx.defs.SchemaError:
        return f"no ONNX schema for {node.domain or 'ai.onnx'}::{node.op}"
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    binds: dict[str, list[tuple[str, int]]] = {}
    for kind, tensors, formals in (("in", node.inputs, schema.inputs), ("out", node.outputs, schema.outputs)):
        for i, tensor in enumerate(tensors):
            if not tensor.name or not formals:
                continue
            formal = formals[i] if i < len(formals) else formals[-1]  # variadic last parameter
            if types.of(tensor) == F32:
                binds.setdefault(formal.type_str, []).append((kind, i))
    ins: set[int] = set()
    outs: set[int] = set()
    keep = _KEEP_INPUTS.get(node.op, frozenset())
    for var, slots in binds.items():
        if var not in allowed:
            continue  # a fixed type such as Resize's tensor(float) scales
        if "tensor(float16)" not in allowed[var]:
            if any(kind == "out" for kind, _ in slots):
                return f"{node.op}-{schema.since_version} has no float16 form"
            continue
        if any(kind == "in" and i in keep for kind, i in slots):
            continue
        ins.update(i for kind, i in slots if kind == "in")
        outs.update(i for kind, i in slots if kind == "out")
    return _Plan(frozenset(ins), frozenset(outs))


class _Rewrite:
    """Applies the per-node plans: output dtypes, Cast retargets, constant copies, boundary Casts."""

    def __init__(self, graph: gs.Graph, types: _TypeInfo, plans: dict[int, _Plan], keep_io: bool) -> None:
        self.graph, self.types, self.plans, self.keep_io = graph, types, plans, keep_io
        self.b = GraphBuilder(graph, "fp16")
        self.half: set[str] = set()  # tensors that are float16 after the rewrite (and were float32)
        self.casts: dict[tuple[str, str], gs.Variable] = {}
        self.copies: dict[str, gs.Constant] = {}
        self.counts: Counter = Counter()

    @property
    def changed(self) -> bool:
        return any(self.counts.values())

    @property
    def stats(self) -> dict[str, int | float | str]:
        keys = ("nodes_fp16", "casts_inserted", "casts_retargeted", "casts_removed", "initializers_converted", "initializers_clipped", "io_converted")
        return {k: int(self.counts[k]) for k in keys}

    def apply(self, reached: set[int]) -> None:
        if not self.keep_io:
            for inp in self.graph.inputs:
                if self.types.of(inp) == F32:
                    inp.dtype = F16
                    self.half.add(inp.name)
                    self.counts["io_converted"] += 1
        for node in self.graph.nodes:
            plan = self.plans.get(id(node))
            if plan is None:
                continue
            self.counts["nodes_fp16"] += 1
            for j in plan.outputs:
                node.outputs[j].dtype = F16
                self.half.add(node.outputs[j].name)
        for node in self.graph.nodes:
            if node.op == "Cast" and id(node) in reached:
                self._retarget(node)
        for node in list(self.graph.nodes):
            plan = self.plans.get(id(node))
            for i, tensor in enumerate(list(node.inputs)):
                if not tensor.name or node.op == "Cast":
                    continue
                want = F16 if plan is not None and i in plan.inputs else self.types.of(tensor)
                self._feed(node, i, tensor, want)
        self._outputs()

    def _wants_half(self, node: gs.Node, index: int) -> bool:
        if node.op == "Cast":
            return True  # a Cast takes any input dtype
        plan = self.plans.get(id(node))
        return plan is not None and index in plan.inputs

    def _retarget(self, node: gs.Node) -> None:
        """Cast(to=FLOAT) feeding only float16 consumers casts to FLOAT16 instead; a Cast that the
        rewrite made a no-op (input already of its target type) is bypassed."""
        inp, out = node.inputs[0], node.outputs[0]
        is_output = is_graph_output(self.graph, out)
        uses = [(c, i) for c in out.outputs for i, t in enumerate(c.inputs) if t is out]
        to = int(node.attrs.get("to", 0))
        if to == onnx.TensorProto.FLOAT and uses and not (is_output and self.keep_io) and all(self._wants_half(c, i) for c, i in uses):
            node.attrs["to"] = to = onnx.TensorProto.FLOAT16
            out.dtype = F16
            self.half.add(out.name)
            self.counts["casts_retargeted"] += 1
        source = F16 if inp.name in self.half else self.types.of(inp)
        if not is_output and source is not None and source == _np_dtype(to):
            for consumer, i in uses:
                consumer.inputs[i] = inp
            self.counts["casts_removed"] += 1

    def _feed(self, node: gs.Node, index: int, tensor: gs.Tensor, want: np.dtype | None) -> None:
        """Makes input `index` of `node` arrive as `want` (a float16 constant copy or a Cast)."""
        have = F16 if tensor.name in self.half else self.types.of(tensor)
        if want is None or have is None or have == want or {have, want} != {F16, F32}:
            return
        value = const_value(tensor)
        if want == F16 and value is not None and np.asarray(value).dtype == F32:
            node.inputs[index] = self._half_copy(tensor, np.asarray(value))
            return
        key = (tensor.name, want.name)
        if key not in self.casts:
            cast = gs.Variable(self.b.name(f"{want.name}"), dtype=want, shape=tensor.shape)
            to = onnx.TensorProto.FLOAT16 if want == F16 else onnx.TensorProto.FLOAT
            self.casts[key] = self.b.cast(tensor, to, out=cast, hint="Cast")
            self.counts["casts_inserted"] += 1
        node.inputs[index] = self.casts[key]

    def _half_copy(self, tensor: gs.Tensor, value: np.ndarray) -> gs.Constant:
        if tensor.name not in self.copies:
            clipped = np.abs(value) > FP16_MAX
            if clipped.any():
                self.counts["initializers_clipped"] += 1
            half = np.asarray(np.clip(value, -FP16_MAX, FP16_MAX), dtype=np.float16)
            self.copies[tensor.name] = self.b.const(half, f"{tensor.name}_fp16")
            self.counts["initializers_converted"] += 1
        return self.copies[tensor.name]

    def _outputs(self) -> None:
        outputs = []
        for out in self.graph.outputs:
            if out.name not in self.half:
                outputs.append(out)
            elif not self.keep_io:
                self.counts["io_converted"] += 1
                outputs.append(out)
            else:  # keep the name and dtype: the float16 tensor is renamed and cast back
                back = gs.Variable(out.name, dtype=F32, shape=out.shape)
                take_name(out, back, self.b, "half")
                self.b.cast(out, onnx.TensorProto.FLOAT, out=back, hint="Cast")
                self.counts["casts_inserted"] += 1
                outputs.append(back)
        self.graph.outputs = outputs
