"""The backend contract: compile a model into an artifact, then run it through a runner.

A backend turns a model (an ONNX file or ModelProto) into whatever it executes (`compile`), and opens a
`Runner` on that artifact. Runners are context managers: resources (sessions, device memory) exist
between `__enter__` and `__exit__` only, and every `infer` call records its own inference time, so the
evaluator can separate the backend's time from its own overhead (Polygraphy's loader/runner split).

Contract every backend keeps:
- `compile` never modifies its input; it returns a new artifact (a ModelProto for onnxruntime, an
  ``.om`` path for atc).
- `Runner.infer(feeds)` takes numpy arrays by input name and returns the outputs in graph order, as
  numpy arrays; `last_inference_s` and `total_inference_s` cover the backend call only.
- A backend whose tool or package is missing raises `BackendUnavailable` with the exact fix; any other
  failure to compile or run is a `BackendError` naming the model.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx

from onnxforge.errors import BackendError
from onnxforge.numerics import TensorInfo  # noqa: F401  (re-exported: backends describe I/O with it)

log = logging.getLogger(__name__)

def tensor_infos(values: Sequence[onnx.ValueInfoProto], skip: set[str] | None = None) -> list[TensorInfo]:
    """TensorInfo of graph inputs or outputs (initializers listed in `skip` are left out)."""
    from onnxforge.numerics import declared_dims, np_dtype

    return [TensorInfo(vi.name, declared_dims(vi), np_dtype(vi.type.tensor_type.elem_type))
            for vi in values if not (skip and vi.name in skip)]


def model_inputs(model: onnx.ModelProto) -> list[TensorInfo]:
    """Graph inputs that are not initializers."""
    return tensor_infos(model.graph.input, {t.name for t in model.graph.initializer})


def model_outputs(model: onnx.ModelProto) -> list[TensorInfo]:
    return tensor_infos(model.graph.output)


class Runner(ABC):
    """Runs one compiled artifact. Use as a context manager; `infer` is valid only inside it."""

    def __init__(self) -> None:
        self.last_inference_s = 0.0
        self.total_inference_s = 0.0
        self.calls = 0
        self._active = False

    def __enter__(self) -> "Runner":
        self.activate()
        self._active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._active = False
        self.deactivate()

    @property
    def is_active(self) -> bool:
        return self._active

    @abstractmethod
    def activate(self) -> None:
        """Acquires the session / device resources."""

    @abstractmethod
    def deactivate(self) -> None:
        """Releases everything `activate` acquired."""

    @abstractmethod
    def inputs(self) -> list[TensorInfo]:
        """The artifact's inputs (valid once active)."""

    @abstractmethod
    def outputs(self) -> list[TensorInfo]:
        """The artifact's outputs, in order (valid once active)."""

    @abstractmethod
    def _infer(self, feeds: Mapping[str, np.ndarray], names: Sequence[str] | None) -> tuple[list[np.ndarray], float | None]:
        """Runs once; returns the outputs (all, or `names` in that order) and, if the backend measures it
        itself, the inference seconds."""

    def infer(self, feeds: Mapping[str, np.ndarray], names: Sequence[str] | None = None) -> list[np.ndarray]:
        """Runs the artifact on `feeds` (name -> array) and returns its outputs in graph order, or only the
        outputs in `names`, in that order (so large unused outputs, e.g. aux heads, need not be copied)."""
        if not self._active:
            raise BackendError(f"{type(self).__name__}.infer called outside its 'with' block")
        start = time.perf_counter()
        outputs, measured = self._infer(feeds, names)
        wall = time.perf_counter() - start
        self.last_inference_s = wall if measured is None else measured
        self.total_inference_s += self.last_inference_s
        self.calls += 1
        return outputs


class Backend(ABC):
    """A way to compile and run models. Subclasses set `name` and implement the three methods."""

    name: str = ""
    #: what `compile` produces: "model" (an in-memory ModelProto) or "file" (a path on disk)
    artifact_kind: str = "model"

    def __init__(self, **options: Any) -> None:
        self.options = dict(options)

    @abstractmethod
    def check_available(self) -> None:
        """Raises BackendUnavailable (with the fix) when this backend cannot run here."""

    @abstractmethod
    def compile(self, model: str | Path | onnx.ModelProto, output: str | Path | None = None) -> Any:
        """Turns a model into this backend's artifact; never modifies the input."""

    @abstractmethod
    def runner(self, artifact: Any) -> Runner:
        """A runner on a compiled artifact (enter it before calling `infer`)."""


_REGISTRY: dict[str, Callable[..., Backend]] = {}


def register_backend(name: str, factory: Callable[..., Backend]) -> None:
    """Makes `get_backend(name)` return `factory(**options)`."""
    _REGISTRY[name] = factory


def backend_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_backend(name: str, **options: Any) -> Backend:
    """The backend registered as `name`, constructed with `options`.

    Raises:
        BackendError: unknown name (one line listing the known names).
    """
    _load_builtin()
    if name not in _REGISTRY:
        raise BackendError(f"unknown backend '{name}'; known backends: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**options)


def _load_builtin() -> None:
    if _REGISTRY:
        return
    from onnxforge.backends import ais_bench, atc, onnxruntime

    register_backend("onnxruntime", onnxruntime.OnnxruntimeBackend)
    register_backend("atc", atc.AtcBackend)
    register_backend("ais_bench", ais_bench.AisBenchBackend)


def load_model_arg(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """A ModelProto from a path or a proto (paths go through modelio's checked loader)."""
    if isinstance(model, onnx.ModelProto):
        return model
    from onnxforge.modelio import load_model

    return load_model(model)
