"""Finds every built-in pass module (one pass per module) and imports it, so that each registers itself.

Modules are discovered, so adding a pass is adding a module; `ORDER` fixes how `onnxforge passes`
lists them (unlisted passes come after, alphabetically). This module imports nothing from onnxforge
statically (the registry calls `load()`), so there is no import cycle registry -> catalog -> pass ->
registry: pass modules are imported by name, at the first registry lookup.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

ORDER = (
    "simplify", "unflatten-gemm", "whole-shape", "transpose-to-reshape", "static-shape", "target-opset", "adaptive-pool", "drop-softmax-argmax", "resize-nearest",
    "label-upsample", "argmax-output", "transdata-align",
    # the Ascend knowledges, in the order the `ascend` shortcut applies them: explicit shapes and types
    # first, then the merges they enable, then the splits of what atc cannot run in one piece; fix-topk
    # last (backend-only: its output is not standard ONNX, so the exact-only shortcut leaves it out)
    "constant-reshape", "narrow-types", "merge-casts", "drop-empty-slice", "merge-slices", "merge-concats", "split-qkv-matmul",
    "gather-to-split", "reflect-pad-to-slices", "fold-transpose-bn", "conv1d-to-conv2d", "split-large-pool", "split-large-conv",
    "fix-topk",
    "fp16-output", "fp16-input", "fp16", "quantize",
)
#: Infrastructure modules of the package, not passes (underscore modules are skipped too).
_INFRA = {"base", "registry", "pipeline", "manager", "catalog"}


def load() -> None:
    """Imports every pass module of this package (Python caches them: the second call is free)."""
    package = __name__.rpartition(".")[0]
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in _INFRA:
            continue
        importlib.import_module(f"{package}.{info.name}")
