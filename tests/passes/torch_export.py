"""Real `torch.onnx.export` outputs of tiny modules for pass tests (dynamo and the legacy exporter)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Sequence

import onnx


def export(
    module,
    inputs: tuple,
    path: Path,
    *,
    dynamo: bool,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    opset: int | None = None,
    dynamic_axes: dict | None = None,
) -> onnx.ModelProto:
    """Exports `module` in eval mode at the static shapes of `inputs` and returns the loaded model.

    dynamo=True is torch 2.x's default exporter (opset 18 unless given); dynamo=False the TorchScript one
    (opset 17 unless given); `dynamic_axes` as torch.onnx.export takes it. The exporters' progress chatter
    is silenced.
    """
    import torch

    module.eval()
    opset = opset or (18 if dynamo else 17)
    quiet = logging.getLogger("torch")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, inputs, str(path), dynamo=dynamo, opset_version=opset, verbose=False,
                input_names=list(input_names) if input_names else None,
                output_names=list(output_names) if output_names else None,
                external_data=False, dynamic_axes=dynamic_axes,
            )
    finally:
        quiet.setLevel(level)
    return onnx.load(str(path))
