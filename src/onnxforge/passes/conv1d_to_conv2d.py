"""conv1d-to-conv2d: a connected region of 1-D Convs and element-wise ops is lifted to 2-D (N, C, 1, L).

Before -> After (x: N x C x L, a torch ``nn.Conv1d`` stack)::

    x -> Conv<k=[3],pads=[1,1]>(W[M,C,3]) -> BatchNormalization -> Relu -> Conv<k=[1]> -> Add(x') -> y
        ->  x -> Unsqueeze(2) -> Conv<k=[1,3],pads=[0,1,0,1]>(W[M,C,1,3]) -> BatchNormalization -> Relu
                 -> Conv<k=[1,1]> -> Add(Unsqueeze(x', 2)) -> Squeeze(2) -> y

Why: atc has no 1-D convolution on the AI Core; it runs Conv1d as a 2-D convolution in the 5-D
NC1HWC0 layout and inserts a TransData (plus a reshape) before and after every 1-D Conv, so a stack
of N Conv1d layers pays 2N layout conversions through global memory. Lifted once at the region's
edges, the whole stack stays in 4-D: one Unsqueeze at each input, one Squeeze at each output, and atc
converts the layout once (Ascend's retired surgeon tool's Conv1d-to-Conv2d knowledge; the effect on a
device is not measured here).

What is lifted (the region): a Conv whose input is rank 3 (a 1-D kernel) seeds it; it grows through
the rank-3 tensors connecting it to neighbours that are

- ``Conv`` and ``ConvTranspose`` with a rank-3 input (W[:, :, None, :]; a runtime weight gets an
  Unsqueeze), ``MaxPool`` (one output) and ``AveragePool`` on rank 3: kernel_shape, strides, dilations
  and output_shape get 1 and pads and output_padding 0 on the new axis (``pads [b, e] -> [0, b, 0, e]``);
  auto_pad and ceil_mode mean the same on an axis of 1;
- ``Concat`` of rank-3 tensors (its axis mapped: 0, 1, 2 -> 0, 1, 3), so skip connections stay inside;
- ``GlobalAveragePool``, ``GlobalMaxPool``, ``BatchNormalization`` (inference: one output) and
  ``InstanceNormalization`` on rank 3: per-channel parameters stay as they are;
- the element-wise ops in `ELEMENTWISE` (activations, ``Clip``, arithmetic, comparisons, ``Where``,
  ``Cast``...) whose output is rank 3.

Broadcasting: an element-wise input from outside the region of rank 0 or 1 aligns with L in both
layouts and stays as it is; one of rank r >= 2 gets the new axis before its last dim (a constant is
reshaped, e.g. [C, 1] -> [C, 1, 1], a runtime tensor goes through Unsqueeze(r - 1)). An op with an
input or output of unknown rank, or of rank over 3 (it would broadcast to 4-D), stays outside, and so
do ops not in the lists (Reshape, Transpose, MatMul, Softmax...): the region ends there with a Squeeze.
Constants shared with nodes outside the region are copied, never changed in place; weights shared by
several lifted Convs are lifted once.

Exact: a 2-D convolution, pooling or normalization over an axis of size 1 computes the same sums as
the 1-D one, and element-wise ops do not see the layout (within float tolerance: a runtime may pick
another algorithm for the 2-D Conv). A Conv1d whose input rank is unknown is skipped with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import const_value, is_graph_output, node_label
from onnxforge.passes._rewrite import Match, Rule, RuleContext, RulePass
from onnxforge.passes.base import PassKind, Skip
from onnxforge.passes.registry import register

#: Element-wise ops lifted with the region: every input broadcasts (see the module docstring).
ELEMENTWISE = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Gelu",
    "Softplus", "Softsign", "Mish", "Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Abs", "Neg", "Sign", "Floor",
    "Ceil", "Round", "Sin", "Cos", "Not", "Identity", "Cast", "Clip",
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "Where",
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor",
    "Concat",  # not element-wise, but its axis maps to 4-D (N, C, L -> 0, 1, 3) and all inputs are rank 3
})
#: Ops with a spatial window: their 1-D attributes get the new axis (value on it: 1, pads 0).
WINDOWED = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool"})
#: Ops whose second input is a convolution weight (lifted to W[:, :, None, :]).
CONVS = frozenset({"Conv", "ConvTranspose"})
#: Ops that see only their first input's layout (the others are per-channel parameters).
CHANNELWISE = frozenset({"BatchNormalization", "InstanceNormalization", "GlobalAveragePool", "GlobalMaxPool"})
LIFTED_AXIS = 2


@dataclass
class Region:
    """One connected set of nodes lifted together, seeded by a 1-D Conv."""

    seed: gs.Node
    nodes: list[gs.Node] = field(default_factory=list)


class _Ranks:
    """Ranks of tensors: constants by their values, others by shape inference (else the graph's shape)."""

    def __init__(self, ctx: RuleContext) -> None:
        self.types = ctx.types()

    def __call__(self, tensor: gs.Tensor) -> int | None:
        if isinstance(tensor, gs.Constant):
            return tensor.values.ndim
        known = self.types.get(tensor.name)
        if known is not None:
            return len(known[1])
        return len(tensor.shape) if getattr(tensor, "shape", None) is not None else None


def _present(node: gs.Node) -> list[tuple[int, gs.Tensor]]:
    return [(i, t) for i, t in enumerate(node.inputs) if t.name != ""]


def data_slots(node: gs.Node) -> list[int]:
    """The input indices of `node` that are lifted as data (the others are weights or parameters)."""
    if node.op in WINDOWED or node.op in CHANNELWISE:
        return [0]
    return [i for i, _ in _present(node)]


def _used_outputs(graph: gs.Graph, node: gs.Node) -> list[gs.Tensor]:
    return [t for t in node.outputs if t.outputs or is_graph_output(graph, t)]


def liftable(node: gs.Node, ranks: _Ranks, graph: gs.Graph) -> bool:
    """Whether `node` can join a region: a listed op on rank-3 data, one used output of rank 3."""
    if node.domain not in (None, "", "ai.onnx"):
        return False
    if node.op not in ELEMENTWISE and node.op not in WINDOWED and node.op not in CHANNELWISE:
        return False
    used = _used_outputs(graph, node)
    if len(used) != 1 or used[0] is not node.outputs[0] or ranks(used[0]) != 3:
        return False
    if node.op in WINDOWED or node.op in CHANNELWISE:
        return ranks(node.inputs[0]) == 3 and (node.op not in CONVS or ranks(node.inputs[1]) == 3)
    return all(ranks(t) is not None and ranks(t) <= 3 for _, t in _present(node))


def find_regions(ctx: RuleContext) -> list[Region | Skip]:
    """The regions of the graph, in the order of their first Conv; a Skip for a Conv1d of unknown rank."""
    graph, ranks = ctx.graph, _Ranks(ctx)
    taken: set[int] = set()
    found: list[Region | Skip] = []
    order = {id(n): i for i, n in enumerate(graph.nodes)}  # graph order; find_regions does not change the graph
    for node in graph.nodes:
        if node.op not in CONVS or node.domain not in (None, "", "ai.onnx") or id(node) in taken:
            continue
        weight_rank = ranks(node.inputs[1]) if len(node.inputs) > 1 else None
        if weight_rank != 3:
            continue  # a 2-D (or higher) Conv, or one whose kernel rank is unknown: not a candidate
        if not liftable(node, ranks, graph):
            found.append(Skip(node_label(node), "the rank of its input or output is unknown (shape inference did not reach it)"))
            continue
        region = Region(node)
        queue = [node]
        taken.add(id(node))
        while queue:
            current = queue.pop()
            region.nodes.append(current)
            for neighbour in _neighbours(current, ranks):
                if id(neighbour) not in taken and liftable(neighbour, ranks, graph):
                    taken.add(id(neighbour))
                    queue.append(neighbour)
        region.nodes.sort(key=lambda n: order[id(n)])
        found.append(region)
    return found


def _neighbours(node: gs.Node, ranks: _Ranks) -> list[gs.Node]:
    """Nodes joined to `node` by a rank-3 data tensor (a producer of its data input, a consumer of its output)."""
    out: list[gs.Node] = []
    for i in data_slots(node):
        tensor = node.inputs[i]
        if ranks(tensor) == 3 and tensor.inputs:
            out.append(tensor.inputs[0])
    for consumer in node.outputs[0].outputs:
        if any(consumer.inputs[i] is node.outputs[0] for i in data_slots(consumer)):
            out.append(consumer)
    return out


def _reads_as_data(consumer: gs.Node, tensor: gs.Tensor, members: set[int]) -> bool:
    """Whether `consumer` is in the region and reads `tensor` only at data slots (not as a weight)."""
    if id(consumer) not in members:
        return False
    slots = set(data_slots(consumer))
    return all(i in slots for i, t in enumerate(consumer.inputs) if t is tensor)


def lift_attrs(node: gs.Node) -> None:
    """The 1-D window attributes of `node` extended to 2-D (the new axis first: size 1, no padding)."""
    for key, new_axis in (("kernel_shape", 1), ("strides", 1), ("dilations", 1), ("output_padding", 0), ("output_shape", 1)):
        if key in node.attrs:
            node.attrs[key] = [new_axis, *[int(v) for v in node.attrs[key]]]
    if "pads" in node.attrs:
        begin, end = [int(v) for v in node.attrs["pads"]]
        node.attrs["pads"] = [0, begin, 0, end]


def _lift_shape(shape):
    if shape is None:
        return None
    shape = list(shape)
    return [*shape[:-1], 1, shape[-1]] if shape else shape


class _Lifter:
    """Rewrites one region; shared caches make each outside tensor lifted once per pass run."""

    def __init__(self, builder: GraphBuilder, ranks: _Ranks, cache: dict[int, gs.Tensor]) -> None:
        self.builder = builder
        self.ranks = ranks
        self.cache = cache
        self.unsqueezed = 0
        self.squeezed = 0

    def outside(self, tensor: gs.Tensor, rank: int, weight: bool = False) -> gs.Tensor:
        """`tensor` (from outside the region) with the new axis before its last dim."""
        if id(tensor) in self.cache:
            return self.cache[id(tensor)]
        values = const_value(tensor)
        if values is not None:
            lifted = self.builder.const(values.reshape(_lift_shape(values.shape)), "weight" if weight else "const", values.dtype)
        else:
            lifted = self.builder.unsqueeze(tensor, [rank - 1], hint="unsqueeze")
            lifted.dtype = tensor.dtype
            lifted.shape = _lift_shape(tensor.shape)
            self.unsqueezed += 1
        self.cache[id(tensor)] = lifted
        return lifted

    def lift(self, region: Region) -> None:
        graph, members = self.builder.graph, {id(n) for n in region.nodes}
        inside: dict[int, gs.Tensor] = {}
        exits: list[tuple[gs.Tensor, gs.Tensor]] = []
        for node in region.nodes:
            out = node.outputs[0]
            if is_graph_output(graph, out) or not all(_reads_as_data(c, out, members) for c in out.outputs):
                lifted = gs.Variable(self.builder.name("lifted"), dtype=out.dtype, shape=_lift_shape(out.shape))
                node.outputs[0] = lifted
                exits.append((lifted, out))
                inside[id(out)] = lifted
            else:
                out.shape = _lift_shape(out.shape)
                inside[id(out)] = out
        for node in region.nodes:
            slots = set(data_slots(node))
            for i, tensor in _present(node):
                if node.op in CONVS and i == 1:
                    node.inputs[1] = self.outside(tensor, 3, weight=True)
                    continue
                if i not in slots:
                    continue
                if id(tensor) in inside:
                    node.inputs[i] = inside[id(tensor)]
                    continue
                rank = self.ranks(tensor)
                if rank is not None and rank >= 2:
                    node.inputs[i] = self.outside(tensor, rank)
            if node.op in WINDOWED:
                lift_attrs(node)
            if node.op == "Concat":
                node.attrs["axis"] = (0, 1, 3)[int(node.attrs["axis"]) % 3]
        for lifted, out in exits:
            self.builder.squeeze(lifted, [LIFTED_AXIS], out=out, hint="squeeze")
            self.squeezed += 1


class LiftConv1dRegion(Rule):
    """A region seeded by a 1-D Conv, lifted to 2-D (see the module docstring)."""

    name = "regions_lifted"

    def targets(self, ctx: RuleContext) -> list[Region | Skip]:
        self._ranks = _Ranks(ctx)
        self._cache: dict[int, gs.Tensor] = {}
        self.convs = self.nodes = self.unsqueezed = self.squeezed = 0
        return find_regions(ctx)

    def match(self, target: Region | Skip, ctx: RuleContext) -> Match | Skip | None:
        if isinstance(target, Skip):
            return target
        return Match(node_label(target.seed), node=target.seed, values={"region": target})

    def rewrite(self, match: Match, builder: GraphBuilder) -> str | None:
        region: Region = match["region"]
        lifter = _Lifter(builder, self._ranks, self._cache)
        lifter.lift(region)
        self.convs += sum(n.op in CONVS for n in region.nodes)
        self.nodes += len(region.nodes)
        self.unsqueezed += lifter.unsqueezed
        self.squeezed += lifter.squeezed
        return None


@register
class Conv1dToConv2d(RulePass):
    name = "conv1d-to-conv2d"
    summary = "lifts connected 1-D Convs and element-wise ops to 2-D (N,C,1,L): one Unsqueeze in, one Squeeze out"
    kind = PassKind.EXACT
    tags = ("ascend",)

    def rules(self) -> list[Rule]:
        self._rule = LiftConv1dRegion()
        return [self._rule]

    def nothing_to_do(self, ctx: RuleContext) -> str | None:
        return "no 1-D Conv in the graph"

    def extra_stats(self, ctx: RuleContext, counts: dict[str, int], rewritten: list[str]) -> dict[str, int]:
        rule = self._rule
        return {"convs_lifted": rule.convs, "nodes_lifted": rule.nodes, "unsqueezes": rule.unsqueezed, "squeezes": rule.squeezed}
