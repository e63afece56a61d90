"""argmax-output: a segmentation output leaves the device as a label map instead of C float channels.

Before -> After::

    ... -> logits (float[N,C,H,W], graph output "out")
    ... -> logits' -> ArgMax<axis=1, keepdims=1> [-> Cast<to=INT32>] -> "out" (int64|int32 [N,1,H,W])

What mmseg's export did for PSPNet: the host reads N*H*W labels instead of N*C*H*W floats. The output
keeps its name. Applies to 4-D float outputs whose class axis is not statically 1; integer outputs
(already labels) and outputs of another rank are skipped with the reason. By default only the first
graph output is converted: further outputs are usually auxiliary heads (PSPNet's aux FCN) that a
deployment drops or keeps as they are; `outputs=` picks others.

Exact (labels): the manager checks the new outputs against ArgMax of the previous stage's logits
(`expected_outputs`), ties resolved to the first index as onnxruntime and numpy both do. `int32`
adds a Cast after the ArgMax (atc emits int32 labels); class indices fit easily.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxforge.passes._build import GraphBuilder
from onnxforge.passes._rewrite import GraphIORule, Rule, RuleContext, RulePass
from onnxforge.passes.base import PassKind, option
from onnxforge.passes.registry import register


@dataclass(frozen=True)
class ArgmaxOutputOptions:
    axis: int = option(1, "the class axis of the N,C,H,W output")
    keepdims: bool = option(True, "keep the class axis as size 1 (N,1,H,W); false gives N,H,W")
    dtype: Literal["int64", "int32"] = option("int64", "label dtype (int32 through a Cast: what atc outputs)")
    outputs: tuple[str, ...] = option((), "graph outputs to convert (default: the first output only; auxiliary heads stay)")


class LabelOutput(GraphIORule):
    """A float N,C,H,W graph output becomes ArgMax over the class axis [+ Cast], under the same name."""

    name = "outputs_labelled"
    side = "output"
    option = "outputs"
    hint = "logits"

    def __init__(self, options: ArgmaxOutputOptions) -> None:
        self.options = options

    def default_selection(self, tensors: list[gs.Tensor]) -> list[gs.Tensor]:
        return tensors[:1]

    def why_not(self, out: gs.Tensor, ctx: RuleContext) -> str:
        dtype = np.dtype(out.dtype) if out.dtype is not None else None
        if dtype is None:
            return "dtype unknown"
        if dtype.kind in "iub":
            return f"already labels ({dtype.name})"
        if dtype.kind != "f":
            return f"dtype is {dtype.name}, not float"
        if out.shape is None or len(out.shape) != 4:
            return f"rank {len(out.shape) if out.shape is not None else 'unknown'}, not an N,C,H,W map"
        if not -4 <= self.options.axis < 4:
            return f"axis {self.options.axis} is out of range for rank 4"
        classes = out.shape[self.options.axis]
        if isinstance(classes, (int, np.integer)) and classes <= 1:
            return f"{classes} channel(s) on axis {self.options.axis}: nothing to choose between"
        return ""

    def replace(self, out: gs.Tensor, builder: GraphBuilder) -> gs.Variable:
        axis = self.options.axis % 4
        shape = list(out.shape)
        if self.options.keepdims:
            shape[axis] = 1
        else:
            del shape[axis]
        labels = builder.op("ArgMax", [out], {"axis": axis, "keepdims": int(self.options.keepdims)}, dtype=np.int64, shape=shape, hint="labels")
        if self.options.dtype == "int64":
            return labels
        return builder.cast(labels, onnx.TensorProto.INT32, out=gs.Variable(builder.name("labels"), shape=shape), hint="Cast")


@register
class ArgmaxOutput(RulePass):
    name = "argmax-output"
    summary = "appends ArgMax over the class axis to segmentation outputs (labels leave the device)"
    kind = PassKind.EXACT
    Options = ArgmaxOutputOptions

    def rules(self) -> list[Rule]:
        return [LabelOutput(self.options)]

    def extra_stats(self, ctx: RuleContext, counts: dict[str, int], rewritten: list[str]) -> dict[str, str]:
        return {"dtype": self.options.dtype}

    def expected_outputs(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The previous logits through the same ArgMax, for the outputs `run` converts."""
        expected = dict(outputs)
        wanted = self.options.outputs or tuple(outputs)[:1]
        dtype = np.int64 if self.options.dtype == "int64" else np.int32
        for name in wanted:
            value = expected.get(name)
            if value is None or value.dtype.kind != "f" or value.ndim != 4 or value.shape[self.options.axis] <= 1:
                continue
            labels = np.argmax(value, axis=self.options.axis)
            if self.options.keepdims:
                labels = np.expand_dims(labels, self.options.axis)
            expected[name] = labels.astype(dtype)
        return expected
