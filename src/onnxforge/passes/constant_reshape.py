"""constant-reshape: Reshape targets with 0 ("keep this dim") or -1 ("infer this dim") written out.

Before -> After (x static 1x64x8x8)::

    x -> Reshape(shape = [0, -1]) -> y        x -> Reshape(shape = [1, 4096]) -> y

Why: atc resolves 0 and -1 in its own shape inference, which some versions get wrong when the input
shape reaches it only through other inferred ops, and a target with 0 / -1 keeps the Reshape from
being treated as a pure metadata change during fusion (Ascend's surgeon knowledge for Reshape shapes).
Torch exports write ``x.view(x.size(0), -1)`` as exactly such a target once the size is folded.

Legal when: the target is a constant and the input shape is static, so the output shape is known;
``allowzero=1`` (opset 14) makes 0 a literal size, which is respected. The new target is a fresh
constant (a shared one is left for its other users). The output shape is the same: exact.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import const_value, node_label, static_shape
from onnxforge.passes._rewrite import Match, Rule, RuleContext, RulePass
from onnxforge.passes.base import PassKind, Skip
from onnxforge.passes.registry import register


def explicit_shape(target: list[int], shape: tuple[int, ...], allowzero: bool) -> list[int] | str:
    """The target with 0 and -1 resolved against the input shape, or why it cannot be resolved."""
    dims = [shape[i] if d == 0 and not allowzero and i < len(shape) else d for i, d in enumerate(target)]
    if any(d == 0 and not allowzero for d in target[len(shape):]):
        return "a 0 in the target has no input dim to copy"
    unknown = [i for i, d in enumerate(dims) if d == -1]
    if len(unknown) > 1:
        return "the target has more than one -1"
    total = math.prod(shape)
    if unknown:
        known = math.prod(d for d in dims if d != -1)
        if known == 0 or total % known:
            return f"{total} elements do not fill the target {target}"
        dims[unknown[0]] = total // known
    if math.prod(dims) != total:
        return f"{total} elements do not fill the target {target}"
    return dims


class ExplicitTarget(Rule):
    """A Reshape whose constant target has 0 / -1 gets the explicit target (a fresh constant)."""

    name = "reshapes_made_explicit"
    op_types = ("Reshape",)

    def match(self, node: gs.Node, ctx: RuleContext) -> Match | Skip | None:
        if len(node.inputs) < 2:
            return None
        found = match(node)
        return Match(node_label(node), node=node, values={"shape": found}) if isinstance(found, list) else found

    def rewrite(self, m: Match, builder: GraphBuilder) -> None:
        m.node.inputs[1] = builder.ints(m["shape"], "shape")


@register
class ConstantReshape(RulePass):
    name = "constant-reshape"
    summary = "writes out 0 and -1 in constant Reshape targets where the input shape is static"
    kind = PassKind.EXACT
    tags = ("ascend",)

    def rules(self) -> list[Rule]:
        return [ExplicitTarget()]

    def nothing_to_do(self, ctx: RuleContext) -> str | None:
        return "no Reshape target with 0 or -1"


def match(node: gs.Node) -> list[int] | Skip | None:
    """The explicit target; a Skip with the reason; None when the target has no 0 or -1."""
    value = const_value(node.inputs[1])
    label = node_label(node)
    allowzero = bool(node.attrs.get("allowzero", 0))
    if value is None:
        return Skip(label, "its target shape is computed at run time")
    target = [int(v) for v in np.asarray(value).reshape(-1)]
    if -1 not in target and (allowzero or 0 not in target):
        return None
    shape = static_shape(node.inputs[0])
    if shape is None:
        return Skip(label, "its input shape is not static")
    dims = explicit_shape(target, shape, allowzero)
    return Skip(label, dims) if isinstance(dims, str) else dims
