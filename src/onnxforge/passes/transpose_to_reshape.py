"""transpose-to-reshape: a Transpose that only moves size-1 axes is a Reshape; Reshape chains become one Reshape.

Before -> After (x: 96 x 2 x 1 x 2)::

    x -> Reshape(a) -> Transpose(perm=[0,2,1,3]) -> Reshape(b) -> y      x -> Reshape(b) -> y
    x -> Transpose(perm=[0,3,1,2]) -> Reshape(b)   (x: N x 1 x 1 x C)     x -> Reshape(b)

Why: torch exports of attention and patch unfolding (timm mobilevit, convnext, edgenext with dynamo)
leave Transposes whose moved axes have size 1 next to Reshapes; onnxsim keeps them, onnxslim turns them
into Reshapes and merges the chain (its EliminationTransposeAsReshape and EliminationReshape, the only
of its patterns that still fired after onnxsim on the third-party corpus). A Transpose is a real data
movement on NPUs (a TransData or a transpose kernel); a Reshape is a metadata change.

Legal when: the axes with a size other than 1 keep their order under the perm (then the data order is
unchanged), at most one dim is not static (it becomes the Reshape's -1), no dim is 0, and the Transpose
reads or feeds a Reshape (as onnxslim requires: isolated Transposes are left to the backends). A
Reshape reading a Reshape reads the first one's input when its own target has no 0 that copies a dim
(allowzero=0), or allowzero=1: the target alone decides the output shape. Exact (no value changes).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import const_value, node_label, reshape_ends
from onnxforge.passes._rewrite import Match, Rule, RuleContext, RulePass
from onnxforge.passes.base import PassKind, Skip
from onnxforge.passes.registry import register


class TransposeAsReshape(Rule):
    """A Transpose next to a Reshape that keeps the order of its non-1 axes becomes a Reshape."""

    name = "transposes_as_reshapes"
    op_types = ("Transpose",)

    def match(self, node: gs.Node, ctx: RuleContext) -> Match | Skip | None:
        if not node.inputs or not node.outputs:
            return None
        x = node.inputs[0]
        if not any(p.op == "Reshape" for p in x.inputs) and not any(u.op == "Reshape" for u in node.outputs[0].outputs):
            return None
        dims = ctx.dims(x)
        if dims is None or 0 in dims:
            return None
        perm = [int(p) for p in node.attrs.get("perm", list(reversed(range(len(dims)))))]
        if sorted(perm) != list(range(len(dims))):
            return None
        moved = [(p, dims[p]) for p in perm]
        real = [p for p, d in moved if d != 1]  # unknown dims count as real, as size-1 ones cannot be proved
        if real != sorted(real):
            return None  # a genuine reordering of data
        if sum(d is None for _, d in moved) > 1:
            return Skip(node_label(node), "more than one dim is not static (a Reshape has one -1)")
        if ctx.opset < 5:
            return Skip(node_label(node), f"opset {ctx.opset} has no Reshape with a shape input")
        return Match(node_label(node), node=node, values={"shape": [-1 if d is None else d for _, d in moved]})

    def rewrite(self, m: Match, builder: GraphBuilder) -> None:
        node = m.node
        node.op = "Reshape"
        node.attrs = {}
        node.inputs = [node.inputs[0], builder.ints(m["shape"], "shape")]


class MergeReshapes(Rule):
    """A Reshape of a Reshape's output reads the first one's input (the first stays for other readers)."""

    name = "reshapes_merged"
    op_types = ("Reshape",)

    def match(self, node: gs.Node, ctx: RuleContext) -> Match | Skip | None:
        if len(node.inputs) < 2 or len(node.inputs[0].inputs) != 1 or node.inputs[0].inputs[0].op != "Reshape":
            return None
        target = const_value(node.inputs[1])
        if target is None:
            return None
        if not int(node.attrs.get("allowzero", 0)) and 0 in np.asarray(target).reshape(-1).tolist():
            return None  # a 0 copies a dim of the input it reads: of the intermediate, which differs
        return Match(node_label(node), node=node, values={"source": node.inputs[0].inputs[0].inputs[0]})

    def rewrite(self, m: Match, builder: GraphBuilder) -> None:
        m.node.inputs[0] = m["source"]


@register
class TransposeToReshape(RulePass):
    name = "transpose-to-reshape"
    summary = "a Transpose that only moves size-1 axes next to a Reshape becomes a Reshape; Reshape chains merge"
    kind = PassKind.EXACT

    def rules(self) -> list[Rule]:
        return [TransposeAsReshape(), MergeReshapes()]

    def nothing_to_do(self, ctx: RuleContext) -> str | None:
        return "no Transpose of size-1 axes next to a Reshape, no Reshape of a Reshape"


def has_candidates(model: onnx.ModelProto) -> bool:
    """Whether a ModelProto has a Transpose next to a Reshape or a Reshape reading a Reshape (no import)."""
    reshaped, reshape_inputs = reshape_ends(model)
    return any(
        (n.op_type == "Transpose" and n.input and n.output and (n.input[0] in reshaped or n.output[0] in reshape_inputs))
        or (n.op_type == "Reshape" and n.input and n.input[0] in reshaped)
        for n in model.graph.node
    )
