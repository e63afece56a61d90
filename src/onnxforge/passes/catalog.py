"""Imports every built-in pass module (one pass per module) so that each registers itself.

Modules are discovered, so adding a pass is adding a module; `ORDER` fixes how `onnxforge passes`
lists them (unlisted passes come after, alphabetically).
"""

from __future__ import annotations

import importlib
import pkgutil

import onnxforge.passes as _pkg

ORDER = (
    "simplify", "static-shape", "target-opset", "adaptive-pool", "drop-softmax-argmax", "resize-nearest",
    "label-upsample", "argmax-output", "transdata-align", "fp16-output", "fp16-input", "fp16",
)
_INFRA = {"base", "registry", "pipeline", "manager", "catalog"}

for _info in sorted(pkgutil.iter_modules(_pkg.__path__), key=lambda m: m.name):
    if _info.name.startswith("_") or _info.name in _INFRA:
        continue
    importlib.import_module(f"onnxforge.passes.{_info.name}")
