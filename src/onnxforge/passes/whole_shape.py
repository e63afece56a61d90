"""whole-shape: a Concat that rebuilds a tensor's shape dim by dim becomes that tensor's Shape.

Before -> After (x: N x L x 48, N and L dynamic)::

    Concat(Unsqueeze(Gather(Shape(x), 0)), Unsqueeze(Gather(Shape(x), 1)), [48]) -> t      Shape(x) -> t
    Concat(Slice(Shape(x), 0, 2), [48]) -> t                                                  Shape(x) -> t

Why: torch exports `x.view(B, L, C)` with B and L read from `x.shape` as such a Concat, and onnxsim
keeps it whenever a dim is dynamic (timm edgenext's attention, smp MAnet's decoder): 3 to 5 nodes
computing what one Shape gives. onnxslim replaces it using its symbolic shape inference; this pass does
it with ONNX's shape inference (with data propagation), at a fraction of the cost, and `simplify` runs
it after onnxsim (then onnxsim again, to fold what the Shape makes foldable).

Legal when: the Concat's pieces are, in order, every dim of one tensor x: Gathers of x's Shape (one
index, then an Unsqueeze to 1-D), Slices of it with step 1, the Shape itself, and constants equal to
x's static dims at their positions (shape inference's dims). The same int64 values: exact.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import const_value, node_label
from onnxforge.passes._rewrite import Match, Rule, RuleContext, RulePass
from onnxforge.passes.base import PassKind, Skip
from onnxforge.passes.registry import register


def _shape_source(tensor: gs.Tensor) -> tuple[gs.Tensor, int, int | None] | None:
    """(x, start, end) when `tensor` is Shape(x) (opset 15's start/end attributes included), else None."""
    if len(tensor.inputs) != 1 or tensor.inputs[0].op != "Shape" or tensor.inputs[0].domain not in (None, "", "ai.onnx"):
        return None
    node = tensor.inputs[0]
    end = node.attrs.get("end")
    return node.inputs[0], int(node.attrs.get("start", 0)), None if end is None else int(end)


def _positions(shape_out: gs.Tensor, ctx: RuleContext) -> tuple[gs.Tensor, list[int], list[int | None]] | None:
    """For a Shape output: (x, the dim positions of x it holds, in order, and x's dims), or None."""
    source = _shape_source(shape_out)
    if source is None:
        return None
    x, start, end = source
    dims = ctx.dims(x, inferred_first=True)
    if dims is None:
        return None
    return x, list(range(len(dims)))[slice(start, end)], dims


def _slice_params(node: gs.Node) -> tuple[int, int, int] | None:
    """(start, end, step) of a 1-D Slice on axis 0 with constant parameters, else None."""
    if "starts" in node.attrs:  # before opset 10: attributes, step 1
        starts, ends, axes, steps = list(node.attrs["starts"]), list(node.attrs["ends"]), list(node.attrs.get("axes", [0])), [1]
    else:
        values = [const_value(t) if t.name else None for t in node.inputs[1:]]
        if len(values) < 2 or values[0] is None or values[1] is None:
            return None
        starts, ends = values[0].reshape(-1).tolist(), values[1].reshape(-1).tolist()
        axes = values[2].reshape(-1).tolist() if len(values) > 2 and values[2] is not None else [0]
        steps = values[3].reshape(-1).tolist() if len(values) > 3 and values[3] is not None else [1]
        if (len(values) > 2 and node.inputs[3].name and values[2] is None) or (len(values) > 3 and node.inputs[4].name and values[3] is None):
            return None
    if len(starts) != 1 or len(ends) != 1 or axes not in ([0], [-1]) or len(steps) != 1 or steps[0] == 0:
        return None
    return int(starts[0]), int(ends[0]), int(steps[0])


def _selected(node: gs.Node, ctx: RuleContext) -> tuple[gs.Tensor, list[int], list[int | None], bool] | None:
    """For a Gather or Slice of a Shape: (x, the positions of x it selects, x's dims, scalar result)."""
    found = _positions(node.inputs[0], ctx)
    if found is None:
        return None
    x, held, dims = found
    if node.op == "Gather":
        index = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if index is None or int(node.attrs.get("axis", 0)) != 0 or index.ndim > 1:
            return None
        picks = [int(i) for i in index.reshape(-1)]
        if any(not -len(held) <= i < len(held) for i in picks):
            return None
        return x, [held[i] for i in picks], dims, index.ndim == 0
    params = _slice_params(node)
    if params is None:
        return None
    start, end, step = params
    return x, held[slice(start, end, step)], dims, False


class WholeShape(Rule):
    """A Concat that reassembles every dim of one tensor, in order: that tensor's Shape."""

    name = "shapes_reassembled"
    op_types = ("Concat",)

    def match(self, node: gs.Node, ctx: RuleContext) -> Match | Skip | None:
        if not node.inputs or not node.outputs or int(node.attrs.get("axis", 0)) not in (0, -1):
            return None
        pieces: list[tuple[str, object]] = []  # ("dims", (x, positions, dims)) or ("const", values)
        x = None
        for t in node.inputs:
            value = const_value(t)
            if value is not None:
                pieces.append(("const", [int(v) for v in value.reshape(-1)]))
                continue
            found = self._piece(t, ctx)
            if found is None:
                return None
            if x is not None and found[0] is not x:
                return None
            x = found[0]
            pieces.append(("dims", found))
        if x is None:
            return None
        dims = next(p[1][2] for p in pieces if p[0] == "dims")
        position = 0
        for kind, piece in pieces:
            if kind == "const":
                for v in piece:
                    if position >= len(dims) or dims[position] != v:
                        return None
                    position += 1
            else:
                for p in piece[1]:
                    if p != position:
                        return None
                    position += 1
        if position != len(dims):
            return None
        return Match(node_label(node), node=node, values={"x": x})

    @staticmethod
    def _piece(t: gs.Tensor, ctx: RuleContext):
        """(x, positions, dims) for a piece made of x's Shape: Shape(x), Slice(Shape(x)), Gather(Shape(x), [i, ...])
        or Unsqueeze(Gather(Shape(x), i))."""
        whole = _positions(t, ctx)
        if whole is not None:
            return whole
        if len(t.inputs) != 1:
            return None
        node = t.inputs[0]
        if node.op in ("Slice", "Gather") and _shape_source(node.inputs[0]) is not None:
            found = _selected(node, ctx)  # a Gather with 1-D indices is a 1-D piece as it is
            return None if found is None or found[3] else found[:3]
        if node.op == "Unsqueeze" and len(node.inputs[0].inputs) == 1 and node.inputs[0].inputs[0].op == "Gather":
            axes = node.attrs.get("axes")
            if axes is None and len(node.inputs) > 1:
                value = const_value(node.inputs[1])
                axes = None if value is None else value.reshape(-1).tolist()
            gather = node.inputs[0].inputs[0]
            if axes is None or list(axes) not in ([0], [-1]) or _shape_source(gather.inputs[0]) is None:
                return None
            found = _selected(gather, ctx)
            return None if found is None or not found[3] else found[:3]
        return None

    def rewrite(self, m: Match, builder: GraphBuilder) -> None:
        node, out = m.node, m.node.outputs[0]
        node.inputs.clear()
        node.outputs.clear()
        builder.graph.nodes.remove(node)
        builder.op("Shape", [m["x"]], outputs=[out], hint="shape")


@register
class WholeShapePass(RulePass):
    name = "whole-shape"
    summary = "a Concat that rebuilds a tensor's shape dim by dim becomes that tensor's Shape"
    kind = PassKind.EXACT

    def rules(self) -> list[Rule]:
        return [WholeShape()]

    def nothing_to_do(self, ctx: RuleContext) -> str | None:
        return "no Concat rebuilding a tensor's shape"


def has_candidates(model) -> bool:
    """Whether a ModelProto has a Concat whose non-constant pieces all come from the Shape of one tensor
    (Shape, Slice or Gather of it, Unsqueeze of such a Gather): the structure `WholeShape` matches, checked
    without an import of the graph and without shape inference (which decides the rest)."""
    nodes = model.graph.node
    producer = {o: n for n in nodes for o in n.output}
    constant = {t.name for t in model.graph.initializer} | {n.output[0] for n in nodes if n.op_type == "Constant" and n.output}

    def source(name: str, depth: int = 0) -> str | None:
        node = producer.get(name)
        if node is None or depth > 2 or not node.input:
            return None
        if node.op_type == "Shape":
            return node.input[0]
        if node.op_type in ("Slice", "Gather") or (node.op_type == "Unsqueeze" and depth == 0):
            return source(node.input[0], depth + 1)
        return None

    for node in nodes:
        if node.op_type != "Concat":
            continue
        sources = {source(x) for x in node.input if x not in constant}
        if sources and None not in sources and len(sources) == 1:
            return True
    return False
