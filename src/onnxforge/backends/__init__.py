"""Backends: compile a model, then run it through a runner (onnxruntime, atc, ais_bench).

A backend is chosen by a spec in the pipeline grammar: ``parse_backend("onnxruntime{device=cuda,threads=2}")``
or ``parse_backend("atc{soc_version=Ascend310P3}")``; `str(backend)` gives the canonical spec back.
`get_backend(name, **options)` is the same with options as arguments; `backend_names()` lists the
registered names and `backend_help()` describes each (one line, with its options) for CLI help.

The registry maps names to modules imported on first lookup: importing this package imports neither
onnxruntime nor the Ascend module.
"""

from __future__ import annotations

from onnxforge.backends.base import Backend, Runner, TensorInfo
from onnxforge.backends.registry import (
    backend_class,
    backend_help,
    backend_names,
    get_backend,
    parse_backend,
    register_backend,
)
from onnxforge.spec import option

__all__ = [
    "Backend", "Runner", "TensorInfo", "backend_class", "backend_help", "backend_names", "get_backend", "option",
    "parse_backend", "register_backend",
]
