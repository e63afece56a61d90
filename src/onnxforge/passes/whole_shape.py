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
from onnxforge.passes._shapes import dims_held
from onnxforge.passes.base import PassKind, Skip
from onnxforge.passes.registry import register


class WholeShape(Rule):
    """A Concat that reassembles every dim of one tensor, in order: that tensor's Shape."""

    name = "shapes_reassembled"
    op_types = ("Concat",)

    def match(self, node: gs.Node, ctx: RuleContext) -> Match | Skip | None:
        if not node.inputs or not node.outputs or int(node.attrs.get("axis", 0)) not in (0, -1):
            return None
        pieces: list[tuple[str, list[int]]] = []  # ("dims", positions of x) or ("const", values)
        x = None
        for t in node.inputs:
            value = const_value(t)
            if value is not None:
                pieces.append(("const", [int(v) for v in value.reshape(-1)]))
                continue
            found = dims_held(t, ctx)
            if found is None or found[2] or (x is not None and found[0] is not x):
                return None  # not x's dims, or a scalar (Concat takes 1-D pieces)
            x = found[0]
            pieces.append(("dims", found[1]))
        dims = ctx.dims(x, inferred_first=True) if x is not None else None
        if dims is None:
            return None
        position = 0
        for kind, values in pieces:
            for v in values:  # a constant must be x's static dim there; dims must come in order
                if position >= len(dims) or (v != dims[position] if kind == "const" else v != position):
                    return None
                position += 1
        if position != len(dims):
            return None
        return Match(node_label(node), node=node, values={"x": x})

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
