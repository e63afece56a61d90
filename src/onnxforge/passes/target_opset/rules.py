"""Down-conversion as data: schema versions that only widened types, and attributes added later.

`TYPE_ONLY[op]` lists the schema versions after opset 11 that only widened the allowed tensor types;
crossing one needs no rewrite, but a tensor of a type the target lacks is still refused (or cast around
by a converter) by `onnxforge.passes.target_opset.registry.DownConverter`. `ATTR_RULES[op]` lists the
attributes added at a version, each droppable only at the value that reproduces the old behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx_graphsurgeon as gs

from onnxforge.passes._graph import const_value

# Schema versions after opset 11 that only widened the allowed tensor types (bfloat16, int8/16, float8,
# int4, ...). Checked against the schemas' signatures with onnx 1.23 (inputs, outputs, attributes and
# type constraints unchanged except for added types). Add/Sub/Mul/Div-14 (8- and 16-bit integers) are not
# here: a converter computes those in a wider integer (`elementwise`); nor AveragePool/MaxPool-22,
# which changed how ceil_mode counts the last window (`pools`).
TYPE_ONLY: dict[str, frozenset[int]] = {
    op: frozenset(versions)
    for op, versions in {
        "Abs": (13,), "Acos": (22,), "Acosh": (22,), "Add": (13,), "ArgMax": (13,), "ArgMin": (13,),
        "Asin": (22,), "Asinh": (22,), "Atan": (22,), "Atanh": (22,),
        "BatchNormalization": (15,), "Cast": (13, 21, 23, 25), "Ceil": (13,), "Clip": (12, 13),
        "Concat": (13,), "Constant": (13, 19, 21, 23, 24, 25), "ConstantOfShape": (20, 21, 23, 24, 25),
        "Conv": (22,), "ConvTranspose": (22,), "Cos": (22,), "Cosh": (22,), "CumSum": (14,),
        "DepthToSpace": (13,), "Div": (13,), "Dropout": (13, 22), "Elu": (22,), "Equal": (13, 19),
        "Erf": (13,), "Exp": (13,), "Expand": (13,), "EyeLike": (22,), "Flatten": (13, 21, 23, 24, 25),
        "Floor": (13,), "GRU": (22,), "Gather": (13,), "GatherElements": (13,), "GatherND": (13,),
        "Gemm": (13,), "GlobalAveragePool": (22,), "GlobalLpPool": (22,), "GlobalMaxPool": (22,),
        "Greater": (13,), "GreaterOrEqual": (16,), "HardSigmoid": (22,), "HardSwish": (22,),
        "Identity": (13, 14, 16, 19, 21, 23, 24, 25), "InstanceNormalization": (22,), "IsInf": (20,),
        "IsNaN": (13, 20), "LRN": (13,), "LSTM": (22,), "LeakyRelu": (16,), "Less": (13,),
        "LessOrEqual": (16,), "Log": (13,), "LpNormalization": (22,), "LpPool": (22,), "MatMul": (13,),
        "Max": (12, 13), "MaxPool": (12,), "MaxRoiPool": (22,), "MaxUnpool": (22,), "Mean": (13,),
        "MeanVarianceNormalization": (13,), "Min": (12, 13), "Mish": (22,), "Mod": (13,), "Mul": (13,),
        "Neg": (13,), "NonZero": (13,), "PRelu": (16,), "Pad": (13, 21, 23, 24, 25), "Pow": (12, 13, 15),
        "RNN": (22,), "RandomNormal": (22,), "RandomNormalLike": (22,), "RandomUniform": (22,),
        "RandomUniformLike": (22,), "Reciprocal": (13,), "ReduceL1": (13,), "ReduceL2": (13,),
        "ReduceLogSum": (13,), "ReduceLogSumExp": (13,), "ReduceMax": (12, 13, 20), "ReduceMean": (13,),
        "ReduceMin": (12, 13, 20), "ReduceProd": (13,), "ReduceSumSquare": (13,), "Relu": (13, 14),
        "Reshape": (13, 19, 21, 23, 24, 25), "RoiAlign": (22,), "Round": (22,), "ScatterElements": (13, 18),
        "ScatterND": (13, 18), "Selu": (22,), "Shape": (13, 19, 21, 23, 24, 25), "Sigmoid": (13,),
        "Sign": (13,), "Sin": (22,), "Sinh": (22,), "Size": (13, 19, 21, 23, 24, 25), "Slice": (13,),
        "Softplus": (22,), "Softsign": (22,), "SpaceToDepth": (13,), "Sqrt": (13,),
        "Squeeze": (21, 23, 24, 25), "Sub": (13,), "Sum": (13,), "Tan": (22,), "Tanh": (13,),
        "ThresholdedRelu": (22,), "Tile": (13,), "TopK": (24,), "Transpose": (13, 21, 23, 24, 25),
        "Unsqueeze": (21, 23, 24, 25), "Where": (16,),
    }.items()
}


@dataclass(frozen=True)
class AttrRule:
    """An attribute added at `version`: droppable when `keeps_old(value, node)` holds."""

    version: int
    attr: str
    keeps_old: Callable[[Any, gs.Node], bool]
    old_behaviour: str


def _ones(value: Any, node: gs.Node) -> bool:
    return all(int(v) == 1 for v in value)


def _equals(expected: Any) -> Callable[[Any, gs.Node], bool]:
    def check(value: Any, node: gs.Node) -> bool:
        if isinstance(value, bytes):
            value = value.decode()
        return value == expected

    return check


def _reshape_zero_free(value: Any, node: gs.Node) -> bool:
    if int(value) == 0:
        return True
    shape = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    return shape is not None and not (np.asarray(shape) == 0).any()  # allowzero only matters for 0s


ATTR_RULES: dict[str, tuple[AttrRule, ...]] = {
    "ArgMax": (AttrRule(12, "select_last_index", _equals(0), "select_last_index=0"),),
    "ArgMin": (AttrRule(12, "select_last_index", _equals(0), "select_last_index=0"),),
    "GatherND": (AttrRule(12, "batch_dims", _equals(0), "batch_dims=0"),),
    "BatchNormalization": (AttrRule(14, "training_mode", _equals(0), "training_mode=0"),),
    "AveragePool": (AttrRule(19, "dilations", _ones, "dilations of 1"),),
    "LpPool": (AttrRule(18, "dilations", _ones, "dilations of 1"), AttrRule(18, "ceil_mode", _equals(0), "ceil_mode=0")),
    "Reshape": (AttrRule(14, "allowzero", _reshape_zero_free, "allowzero=0 (or a shape without zeros)"),),
    "Cast": (AttrRule(19, "saturate", lambda v, n: True, "saturate (float8 only)"), AttrRule(24, "round_mode", _equals("up"), "round_mode=up")),
    "GRU": (AttrRule(14, "layout", _equals(0), "layout=0"),),
    "LSTM": (AttrRule(14, "layout", _equals(0), "layout=0"),),
    "RNN": (AttrRule(14, "layout", _equals(0), "layout=0"),),
    "ScatterElements": (AttrRule(16, "reduction", _equals("none"), "reduction=none"),),
    "ScatterND": (AttrRule(16, "reduction", _equals("none"), "reduction=none"),),
    "RoiAlign": (AttrRule(16, "coordinate_transformation_mode", _equals("output_half_pixel"), "coordinate_transformation_mode=output_half_pixel"),),
}
# RoiAlign-16's default is half_pixel while RoiAlign-10 behaves as output_half_pixel: an absent
# attribute means half_pixel, which the old op cannot express.
ATTR_DEFAULTS: dict[tuple[str, str], Any] = {("RoiAlign", "coordinate_transformation_mode"): "half_pixel"}
