"""Static AIPP (atc ``--insert_op_conf``) from a preset's normalisation, and its CPU equivalent.

AIPP normalises on the NPU: ``out = (pixel - mean_chn_i - min_chn_i) * var_reci_chn_i`` per channel
(CANN 8.0.0 ATC guide, "Normalization Configuration", hiascend.com canncommercial/800 devaids/atc
atlasatc_16_0022; the RGB888_U8 template: atlasatc_16_0029). A preprocessing of the form
``(pixel/255 - mean) / std`` on RGB uint8 (policies ``full`` and ``resize-crop``, the resize being done
on the host before) is that with ``mean_chn_i = 0``, ``min_chn_i = 255*mean_i``,
``var_reci_chn_i = 1/(255*std_i)``. Other policies (BGR reads, float resizing, padding after
normalising) are refused: they cannot be expressed in static AIPP exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxforge.errors import BackendError

#: Preprocessing policies (onnxforge.evaluate.preprocess) AIPP can express exactly.
AIPP_POLICIES = ("full", "resize-crop")


@dataclass(frozen=True)
class AippConfig:
    """Static AIPP for an RGB888_U8 input of `size` (H, W): per-channel min and reciprocal variance."""

    size: tuple[int, int]
    min_chn: tuple[float, float, float]
    var_reci_chn: tuple[float, float, float]

    def text(self) -> str:
        """The aipp.cfg file atc reads with --insert_op_conf."""
        h, w = self.size
        lines = ["aipp_op {", "    aipp_mode: static", "    related_input_rank: 0", "    input_format: RGB888_U8",
                 f"    src_image_size_w: {w}", f"    src_image_size_h: {h}", "    csc_switch: false",
                 "    rbuv_swap_switch: false", "    crop: false"]
        for i in range(3):
            lines.append(f"    mean_chn_{i}: 0")
        for i, v in enumerate(self.min_chn):
            lines.append(f"    min_chn_{i}: {v!r}")
        for i, v in enumerate(self.var_reci_chn):
            lines.append(f"    var_reci_chn_{i}: {v!r}")
        return "\n".join(lines + ["}"]) + "\n"

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """What AIPP computes: uint8 NHWC RGB -> float32 NCHW (the documented formula, in float32)."""
        x = pixels.astype(np.float32).transpose(0, 3, 1, 2)
        lo = np.asarray(self.min_chn, np.float32).reshape(1, 3, 1, 1)
        k = np.asarray(self.var_reci_chn, np.float32).reshape(1, 3, 1, 1)
        return (x - lo) * k


def _units01(values) -> np.ndarray:
    arr = np.asarray(values, np.float64)
    return arr / 255.0 if arr.max() > 1.0 else arr


def aipp_for(policy: str, mean, std, size: tuple[int, int]) -> AippConfig:
    """The static AIPP equivalent to `policy`'s normalisation with `mean`/`std` ([0, 1] or 0..255 units).

    Raises:
        BackendError: the policy's preprocessing cannot be expressed in static AIPP.
    """
    if policy not in AIPP_POLICIES:
        raise BackendError(f"preprocessing '{policy}' cannot be expressed in static AIPP "
                           f"(only {', '.join(AIPP_POLICIES)}: RGB uint8, /255, (x-mean)/std)")
    m, s = _units01(mean), _units01(std)
    if m.shape != (3,) or s.shape != (3,) or np.any(s <= 0):
        raise BackendError("AIPP needs three channel means and three positive stds")
    return AippConfig(tuple(int(d) for d in size), tuple(float(v) for v in 255.0 * m),
                      tuple(float(v) for v in 1.0 / (255.0 * s)))


def prepend_aipp(model: onnx.ModelProto, cfg: AippConfig) -> onnx.ModelProto:
    """A copy of `model` whose first input takes uint8 NHWC RGB and runs `cfg`'s arithmetic first
    (the CPU stand-in for the .om with AIPP, to check the arithmetic against the float pipeline)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inp = g.input[0]
    name = inp.name
    raw = f"{name}__aipp_u8"
    h, w = cfg.size
    n = inp.type.tensor_type.shape.dim[0].dim_value or 1
    for node in g.node:
        node.input[:] = [f"{name}__aipp" if i == name else i for i in node.input]
    lo = numpy_helper.from_array(np.asarray(cfg.min_chn, np.float32).reshape(1, 3, 1, 1), f"{name}__aipp_min")
    k = numpy_helper.from_array(np.asarray(cfg.var_reci_chn, np.float32).reshape(1, 3, 1, 1), f"{name}__aipp_var_reci")
    nodes = [
        helper.make_node("Transpose", [raw], [f"{name}__aipp_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", [f"{name}__aipp_nchw"], [f"{name}__aipp_f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", [f"{name}__aipp_f", lo.name], [f"{name}__aipp_c"]),
        helper.make_node("Mul", [f"{name}__aipp_c", k.name], [f"{name}__aipp"]),
    ]
    old = list(g.node)
    del g.node[:]
    g.node.extend(nodes + old)
    g.initializer.extend([lo, k])
    g.input[0].CopyFrom(helper.make_tensor_value_info(raw, TensorProto.UINT8, [n, h, w, 3]))
    return out
