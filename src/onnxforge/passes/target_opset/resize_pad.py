"""Down-converters for Resize and Pad, whose inputs and modes changed across opsets 13-19.

    Resize(x, "", scales)           Resize(x, roi=[], scales)     (11: roi and scales required; 18+ attributes at defaults)
    Pad(x, pads, value, axes)       Pad(x, full pads, value)      (18: axes; 19: mode=wrap is refused)
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxforge.passes.target_opset.registry import DownConverter, Unsupported, attr_str, converter, truncate


@converter("Resize", versions=(13, 18, 19), needs_shape=True)
def _resize(c: DownConverter, node: gs.Node) -> bool:
    mode = attr_str(node, "coordinate_transformation_mode", "half_pixel")
    if c.target < 19 and mode == "half_pixel_symmetric":
        raise Unsupported("coordinate_transformation_mode=half_pixel_symmetric arrived in opset 19")
    if c.target < 18:
        if int(node.attrs.pop("antialias", 0)) != 0:
            raise Unsupported("antialias=1 arrived in opset 18")
        policy = node.attrs.pop("keep_aspect_ratio_policy", "stretch")
        if (policy.decode() if isinstance(policy, bytes) else policy) != "stretch":
            raise Unsupported("keep_aspect_ratio_policy other than stretch arrived in opset 18")
        axes = node.attrs.pop("axes", None)
        if axes is not None and list(axes) != list(range(c.rank(node.inputs[0], "Resize axes must be checked"))):
            raise Unsupported("Resize over a subset of axes arrived in opset 18")
    if c.target < 13:
        # Resize-11 takes roi and scales as required inputs: the builder writes empty tensors for "not given".
        ins = list(node.inputs) + [gs.Variable.empty()] * (4 - len(node.inputs))
        x, roi, scales, sizes = (t if t.name else None for t in ins[:4])
        attrs = dict(node.attrs)
        (y,) = c.detach(node)
        c.build.resize(x, roi=roi, scales=scales, sizes=sizes, out=y, **attrs)
        c.take_name(node, y)
    return True


@converter("Pad", versions=(18, 19), needs_shape=True)
def _pad(c: DownConverter, node: gs.Node) -> bool:
    if c.target < 19 and attr_str(node, "mode", "constant") == "wrap":
        raise Unsupported("mode=wrap arrived in opset 19")
    if c.target >= 18 or len(node.inputs) < 4 or not node.inputs[3].name:
        return False
    axes = c.const_ints(node, 3, "the axes input")
    pads = c.const_ints(node, 1, "the pads input")
    rank = c.rank(node.inputs[0], "Pad axes must be expanded to every axis")
    full = [0] * (2 * rank)
    for i, ax in enumerate(axes or []):
        full[ax % rank] = pads[i]
        full[rank + ax % rank] = pads[len(axes) + i]
    node.inputs[1] = c.build.ints(full, "pads")
    truncate(node.inputs, 3)
    return True
