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

import onnx_graphsurgeon as gs

from onnxforge.errors import PassError, PipelineError
from onnxforge.passes._graph import inferred_types, node_label
from onnxforge.passes.base import ModelState, Pass, PassKind, PassResult, Skip, option
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


@register
class ResizeNearest(Pass):
    """Switches linear/cubic Resize nodes to nearest with alignment-keeping modes.

    Contract: only the `mode`, `nearest_mode` and (pytorch_half_pixel -> half_pixel, where equal)
    `coordinate_transformation_mode` attributes change; inputs, outputs and names stay.

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

    def run(self, state: ModelState) -> PassResult:
        # Shapes only decide pytorch_half_pixel -> half_pixel; infer them (before state.graph, which is
        # what gets rewritten) only when such a Resize exists.
        view = state.view()
        needs_shapes = any(
            n.op_type == "Resize" and any(a.name == "coordinate_transformation_mode" and a.s == b"pytorch_half_pixel" for a in n.attribute)
            for n in view.graph.node
        )
        types = inferred_types(view) if needs_shapes else {}
        graph = state.graph
        resizes = [n for n in graph.nodes if n.op in ("Resize", "Upsample")]
        names = {n.name for n in resizes if n.name}
        unknown = [n for n in (*self.options.nodes, *self.options.exclude) if n not in names]
        if unknown:
            available = ", ".join(sorted(names)) or "none"
            raise PassError(f"no Resize node named {', '.join(repr(u) for u in unknown)}; Resize nodes: {available}")
        selected, excluded = set(self.options.nodes), set(self.options.exclude)
        skipped: list[Skip] = []
        done: list[str] = []
        notes: list[str] = []
        for node in resizes:
            label = node_label(node)
            if node.op == "Upsample" or state.opset < 11:
                skipped.append(Skip(label, f"{node.op} at opset {state.opset} has no nearest_mode; convert to opset >= 11 first (target-opset)"))
                continue
            if selected and node.name not in selected:
                skipped.append(Skip(label, "not selected (nodes=)"))
                continue
            if node.name in excluded:
                skipped.append(Skip(label, "excluded (exclude=)"))
                continue
            mode = _text(node.attrs.get("mode", "nearest"))
            if mode == "nearest":
                skipped.append(Skip(label, "already nearest"))
                continue
            if mode not in ("linear", "cubic"):
                skipped.append(Skip(label, f"unknown mode {mode!r}"))
                continue
            before = _text(node.attrs.get("coordinate_transformation_mode", "half_pixel"))
            dims = types.get(node.outputs[0].name, (0, None))[1]
            out_shape = tuple(dims) if dims is not None and all(isinstance(d, int) and d > 0 for d in dims) else None
            node.attrs = nearest_attrs(node, out_shape)
            after = _text(node.attrs["coordinate_transformation_mode"])
            done.append(label)
            notes.append(f"{label}: {mode}/{before} -> nearest/{after} {NEAREST_MODE}")
            if before == "pytorch_half_pixel" and after == before:
                notes[-1] += " (output size unknown or 1 on a resized axis: pytorch_half_pixel kept)"
        if not done:
            return PassResult(False, {"resize_rewritten": 0}, skipped=skipped, notes=[] if resizes else ["no Resize nodes"])
        return PassResult(True, {"resize_rewritten": len(done), "rewritten": ", ".join(done)}, skipped=skipped, notes=notes)
