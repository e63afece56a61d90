"""resize-nearest: linear/cubic Resize -> nearest, on every Resize or on the ones selected by name.

Before -> After::

    Resize<mode=linear, coordinate_transformation_mode=M>(x, roi, scales|sizes)
        ->  Resize<mode=nearest, coordinate_transformation_mode=M', nearest_mode=round_prefer_ceil>(x, roi, scales|sizes)

Choice of modes (alignment). Every Resize maps an output coordinate to a source coordinate
``x_src = T(x_out)`` with its coordinate transformation T, then interpolates around ``x_src``: linear blends
the two pixels ``floor(x_src)`` and ``floor(x_src)+1``, cubic four. Keeping the same T and rounding
``x_src`` to the nearest integer samples the source pixel closest to where the original interpolation
sampled, i.e. the tap it weighted most, so the picture does not shift:
- ``align_corners`` stays ``align_corners`` (corners map to corners; 32 -> 128 as in Fast-SCNN's FFM).
- ``half_pixel`` stays; ``pytorch_half_pixel`` equals ``half_pixel`` whenever every resized axis has more
  than one output pixel, and is rewritten to ``half_pixel`` then (kept where an axis has length 1 or the
  output size is unknown). For an integer upscale, half_pixel + rounding is exactly PyTorch's nearest
  (``floor(x_out/s)``), so no pixel moves against a PyTorch nearest model either.
- ``asymmetric``, ``tf_crop_and_resize``, ``half_pixel_symmetric`` stay as they are.
- Rounding is ``round_prefer_ceil``: ties (x_src exactly halfway, e.g. align_corners 2 -> 3 or an even
  integer downscale with half_pixel) are equidistant, so either rule picks a closest pixel; halves
  rounding up is what TensorFlow's ResizeNearestNeighbor computes (``roundf`` with align_corners,
  ``floor((x+0.5)*scale)`` with half-pixel centres). Ascend's ResizeNearestNeighborV2 takes TF's
  align_corners/half_pixel_centers attributes, so halves-up is the likely rule on the device too (not
  verified on hardware); with it onnxruntime and the device agree even on ties. Not ``floor`` (the
  exporters' nearest_mode): with align_corners or half_pixel it shifts the picture by up to one pixel.

Legality: opset >= 11 (Resize-10 has no coordinate modes, Upsample-9 no rounding choice); the mode switch
needs no knowledge of the scales, so Resizes whose scales are computed at run time are rewritten too.
Cubic-only attributes (cubic_coeff_a, exclude_outside) and antialias are dropped.

Approximate: nearest replaces interpolation, outputs change by design. The cost depends on where the
Resize sits: on features inside a network it changes what later layers see; the Fast-SCNN porting guide
lost about 4 mIoU converting all its Resizes, so select nodes (``nodes=``, ``exclude=``) and let the
evaluator measure. Upsampling a label map (see label-upsample) or an already blocky map costs little.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import onnx
import onnx_graphsurgeon as gs

from onnxforge.errors import PassError, PipelineError
from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._graph import node_label
from onnxforge.passes._rewrite import Match, Rule, RuleContext, RulePass, replace_options
from onnxforge.passes.base import PassKind, Skip, option
from onnxforge.passes.registry import register

NEAREST_MODE = "round_prefer_ceil"
_DROPPED = ("cubic_coeff_a", "exclude_outside", "antialias")


@dataclass(frozen=True)
class ResizeNearestOptions:
    nodes: tuple[str, ...] = option((), "only these Resize nodes, by node name (default: every linear/cubic Resize)")
    exclude: tuple[str, ...] = option((), "leave these Resize nodes (by node name) as they are")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def nearest_attrs(node: gs.Node, out_shape: tuple[int, ...] | None) -> dict[str, object]:
    """The attributes of a nearest Resize sampling the source pixel closest to where `node` interpolates.

    `out_shape` is the static output shape of `node` if known (decides pytorch_half_pixel -> half_pixel).
    Shared with label-upsample, which resizes label maps with the same alignment as the logits' Resize.
    """
    attrs = {k: v for k, v in node.attrs.items() if k not in _DROPPED}
    coord = _text(attrs.get("coordinate_transformation_mode", "half_pixel"))
    if coord == "pytorch_half_pixel" and out_shape is not None and _resized_axes_longer_than_one(node, out_shape):
        coord = "half_pixel"
    attrs["coordinate_transformation_mode"] = coord
    attrs["mode"] = "nearest"
    attrs["nearest_mode"] = NEAREST_MODE
    return attrs


def _resized_axes_longer_than_one(node: gs.Node, out_shape: tuple[int, ...]) -> bool:
    axes = node.attrs.get("axes")
    if axes is not None:
        return all(out_shape[int(a)] > 1 for a in axes)
    return all(d > 1 for d in out_shape[2:])  # N and C are not resized by the exporters' Resizes


class ToNearest(Rule):
    """A linear/cubic Resize becomes nearest with the alignment-keeping modes (`nearest_attrs`)."""

    name = "resize_rewritten"
    op_types = ("Resize", "Upsample")

    def targets(self, ctx: RuleContext) -> list[gs.Node]:
        resizes = list(super().targets(ctx))
        names = {n.name for n in resizes if n.name}
        unknown = [n for n in (*ctx.options.nodes, *ctx.options.exclude) if n not in names]
        if unknown:
            available = ", ".join(sorted(names)) or "none"
            raise PassError(f"no Resize node named {', '.join(repr(u) for u in unknown)}; Resize nodes: {available}")
        return resizes

    def match(self, node: gs.Node, ctx: RuleContext) -> Match | Skip:
        opts = ctx.options
        if node.op == "Upsample" or ctx.opset < 11:
            return self.skip(node, f"{node.op} at opset {ctx.opset} has no nearest_mode; convert to opset >= 11 first (target-opset)")
        if opts.nodes and node.name not in opts.nodes:
            return self.skip(node, "not selected (nodes=)")
        if node.name in opts.exclude:
            return self.skip(node, "excluded (exclude=)")
        mode = _text(node.attrs.get("mode", "nearest"))
        if mode == "nearest":
            return self.skip(node, "already nearest")
        if mode not in ("linear", "cubic"):
            return self.skip(node, f"unknown mode {mode!r}")
        before = _text(node.attrs.get("coordinate_transformation_mode", "half_pixel"))
        out_shape = None
        if before == "pytorch_half_pixel":  # only then do shapes matter: infer them only then
            dims = ctx.types().get(node.outputs[0].name, (0, None))[1]
            out_shape = tuple(dims) if dims is not None and all(isinstance(d, int) and d > 0 for d in dims) else None
        return Match(node_label(node), node=node, values={"mode": mode, "before": before, "out_shape": out_shape})

    def rewrite(self, match: Match, builder: GraphBuilder) -> str:
        node = match.node
        node.attrs = nearest_attrs(node, match["out_shape"])
        after = _text(node.attrs["coordinate_transformation_mode"])
        note = f"{match.target}: {match['mode']}/{match['before']} -> nearest/{after} {NEAREST_MODE}"
        if match["before"] == "pytorch_half_pixel" and after == match["before"]:
            note += " (output size unknown or 1 on a resized axis: pytorch_half_pixel kept)"
        return note


@register
class ResizeNearest(RulePass):
    """Switches linear/cubic Resize nodes to nearest with alignment-keeping modes.

    Contract: only the `mode`, `nearest_mode` and (pytorch_half_pixel -> half_pixel, where equal)
    `coordinate_transformation_mode` attributes change; inputs, outputs and names stay.
    Node-selecting (`candidates`/`with_nodes`): the candidates are the named linear/cubic Resize nodes.

    Raises:
        PassError: `nodes` or `exclude` names a node that is not a Resize of the model (the message lists
            the Resize nodes there are).
    """

    name = "resize-nearest"
    summary = "Resize linear/cubic -> nearest, keeping alignment (all or selected nodes)"
    kind = PassKind.APPROXIMATE
    Options = ResizeNearestOptions

    def validate(self) -> None:
        both = sorted(set(self.options.nodes) & set(self.options.exclude))
        if both:
            raise PipelineError(f"pass 'resize-nearest': {', '.join(both)} both selected (nodes=) and excluded (exclude=)")

    def rules(self) -> list[Rule]:
        return [ToNearest()]

    def nothing_to_do(self, ctx: RuleContext) -> str:
        return "no Resize nodes"

    def extra_stats(self, ctx: RuleContext, counts: dict[str, int], rewritten: list[str]) -> dict[str, str]:
        return {"rewritten": ", ".join(rewritten)}

    def candidates(self, model: onnx.ModelProto) -> list[str]:
        """Names of the Resize nodes this pass would rewrite (linear/cubic, opset >= 11), in graph order."""
        opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        if opset < 11:
            return []
        out = []
        for n in model.graph.node:
            if n.op_type != "Resize" or not n.name or n.domain not in ("", "ai.onnx") or n.name in self.options.exclude:
                continue
            mode = next((a.s.decode() for a in n.attribute if a.name == "mode"), "nearest")
            if mode in ("linear", "cubic") and (not self.options.nodes or n.name in self.options.nodes):
                out.append(n.name)
        return out

    def with_nodes(self, names: Sequence[str]) -> "ResizeNearest":
        """This pass limited to the Resize nodes `names` (non-empty; its `exclude=` kept)."""
        if not names:
            raise ValueError("with_nodes needs at least one node name (an empty nodes= selects every Resize)")
        return replace_options(self, nodes=tuple(names))
