"""Frontends: the seed models, checkpoint loading, and export to ONNX.

The registry maps each CLI model name to the module (under ``onnxforge.frontends``) that defines its
``SPEC: ModelSpec``. Modules are imported lazily so that importing this package (and the CLI) does not
import torch.

Contract:
- ``get_spec(name)`` returns the ModelSpec of a registered model or raises FrontendError naming the
  known models.
- ``list_specs()`` returns the specs of every registered model whose module is present, in registry order.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

from onnxforge.errors import FrontendError

if TYPE_CHECKING:
    from onnxforge.frontends.base import ModelSpec

logger = logging.getLogger(__name__)

#: CLI model name -> module under onnxforge.frontends defining `SPEC`.
MODELS: dict[str, str] = {
    "refinenet": "refinenet",
    "vovnet39": "vovnet",
    "pspnet": "pspnet",
    "unetpp": "unetpp",
    "fastscnn": "fastscnn",
}


def known_names() -> str:
    """The registered model names as one comma-separated string (for error messages and help)."""
    return ", ".join(MODELS)


def get_spec(name: str) -> ModelSpec:
    """The ModelSpec of model `name` (a key of MODELS).

    Raises:
        FrontendError: `name` is not registered, or its module is not installed.
    """
    if name not in MODELS:
        raise FrontendError(f"unknown model {name!r}; known models: {known_names()}")
    qualname = f"{__name__}.{MODELS[name]}"
    try:
        module = importlib.import_module(qualname)
    except ModuleNotFoundError as exc:
        if exc.name != qualname:  # a dependency of the module is missing: a real bug or install problem
            raise
        raise FrontendError(f"model {name!r} is registered but its frontend module {qualname} is not available") from None
    spec = getattr(module, "SPEC", None)
    if spec is None:
        raise FrontendError(f"frontend module {qualname} defines no SPEC")
    return spec


def list_specs() -> list[ModelSpec]:
    """The specs of all registered models whose frontend module is present, in registry order."""
    specs = []
    for name in MODELS:
        try:
            specs.append(get_spec(name))
        except FrontendError as exc:
            logger.debug("skipping %s: %s", name, exc)
    return specs
