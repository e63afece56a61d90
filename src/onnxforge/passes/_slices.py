"""A Slice's constant arguments in either of its forms (attributes before opset 10, inputs from 10)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxforge.passes._graph import const_value


@dataclass(frozen=True)
class SliceParams:
    """A Slice's constant arguments, axes explicit (as written: possibly negative)."""

    starts: list[int]
    ends: list[int]
    axes: list[int]
    steps: list[int]


def slice_params(node: gs.Node, opset: int) -> SliceParams | str:
    """The Slice's constant arguments, or why they are not constant."""
    if opset < 10 or "starts" in node.attrs:
        starts = [int(v) for v in node.attrs.get("starts", [])]
        ends = [int(v) for v in node.attrs.get("ends", [])]
        axes = [int(v) for v in node.attrs.get("axes", range(len(starts)))]
        return SliceParams(starts, ends, axes, [1] * len(starts))
    values = []
    for i, what in enumerate(("starts", "ends", "axes", "steps"), start=1):
        tensor = node.inputs[i] if len(node.inputs) > i and node.inputs[i].name else None
        if tensor is None:
            values.append(None)
            continue
        value = const_value(tensor)
        if value is None:
            return f"its {what} are computed at run time"
        values.append([int(v) for v in np.asarray(value).reshape(-1)])
    starts, ends, axes, steps = values
    if starts is None or ends is None:
        return "it has no starts or ends"
    return SliceParams(starts, ends, axes if axes is not None else list(range(len(starts))), steps if steps is not None else [1] * len(starts))
