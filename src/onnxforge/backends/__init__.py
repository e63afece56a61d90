"""Backends: compile a model, then run it through a runner (onnxruntime, atc, ais_bench).

`get_backend(name, **options)` returns one; `backend_names()` lists them.
"""

from __future__ import annotations

from onnxforge.backends.base import Backend, Runner, TensorInfo, backend_names, get_backend, register_backend

__all__ = ["Backend", "Runner", "TensorInfo", "backend_names", "get_backend", "register_backend"]
