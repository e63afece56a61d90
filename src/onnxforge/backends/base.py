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

import dataclasses
import logging
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import onnx

from onnxforge.backends.registry import backend_names, get_backend, register_backend  # noqa: F401  (older import path)
from onnxforge.errors import BackendError
from onnxforge.numerics import TensorInfo, declared_dims, np_dtype
from onnxforge.spec import NoOptions, format_item, non_default_options

log = logging.getLogger(__name__)


def tensor_infos(values: Sequence[onnx.ValueInfoProto], skip: set[str] | None = None) -> list[TensorInfo]:
    """TensorInfo of graph inputs or outputs (initializers listed in `skip` are left out)."""
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
    """A way to compile and run models, configured by a frozen `Options` dataclass.

    Subclasses set `name` (the registry name), a one-line `summary`, `Options` (fields made with
    `onnxforge.spec.option(default, help)`: at once the keyword arguments, the `{key=value}` options of a
    backend spec and the CLI help) and `artifact_suffix` (".om" for a file `compile` writes, None for an
    in-memory ModelProto), and implement the three abstract methods. `str(backend)` is the canonical spec
    (only non-default options, in declaration order); `onnxforge.backends.parse_backend` reads it back.
    Options of a configured backend never change: `with_options` returns a new backend.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    #: suffix of the file `compile` writes (".om"), or None when the artifact is an in-memory ModelProto
    artifact_suffix: ClassVar[str | None] = None

    def __init__(self, options: Any | None = None, **kwargs: Any) -> None:
        """Give either an `Options` instance or its fields as keyword arguments.

        Raises:
            BackendError: an unknown option (listing the known ones) or a bad value (see `validate`).
        """
        if options is not None and kwargs:
            raise TypeError("give either an Options object or keyword arguments, not both")
        if options is None:
            names = [f.name for f in dataclasses.fields(self.Options)]
            unknown = [k for k in kwargs if k not in names]
            if unknown:
                raise BackendError(f"backend '{self.name}' has no option '{unknown[0]}' (options: {', '.join(names) or 'none'})")
            options = self.Options(**kwargs)
        elif not isinstance(options, self.Options):
            raise TypeError(f"backend '{self.name}' takes {self.Options.__name__}, got {type(options).__name__}")
        self.options = options
        self.validate()

    def validate(self) -> None:
        """Checks option values; raises BackendError naming the backend, option and value. Override where needed."""

    def __getattr__(self, item: str) -> Any:
        # option values read as attributes (backend.soc_version); only called when normal lookup fails
        if item != "options" and "options" in self.__dict__ and item in {f.name for f in dataclasses.fields(self.options)}:
            return getattr(self.options, item)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {item!r}")

    @property
    def artifact_kind(self) -> str:
        """"file" when `compile` writes a file (`artifact_suffix`), else "model" (kept for older callers)."""
        return "model" if self.artifact_suffix is None else "file"

    def artifact_path(self, directory: str | Path, stem: str) -> Path | None:
        """Where `compile` should write an artifact named `stem` in `directory` (None: it writes nothing)."""
        return None if self.artifact_suffix is None else Path(directory) / f"{stem}{self.artifact_suffix}"

    def is_artifact(self, model: str | Path | onnx.ModelProto) -> bool:
        """True when `model` is already a compiled artifact of this backend (a path ending in `artifact_suffix`)."""
        return (self.artifact_suffix is not None and not isinstance(model, onnx.ModelProto)
                and str(model).endswith(self.artifact_suffix))

    def non_default_options(self) -> dict[str, Any]:
        """The options that differ from their defaults, in declaration order."""
        return non_default_options(self.options)

    def with_options(self, **changes: Any) -> "Backend":
        """A new backend of the same kind with `changes` applied to a copy of the options.

        Raises:
            BackendError: an unknown option or a bad value.
        """
        names = [f.name for f in dataclasses.fields(self.options)]
        unknown = [k for k in changes if k not in names]
        if unknown:
            raise BackendError(f"backend '{self.name}' has no option '{unknown[0]}' (options: {', '.join(names) or 'none'})")
        return type(self)(dataclasses.replace(self.options, **changes))

    def interleaved(self) -> "Backend":
        """This backend configured for timing several models in turn on the same cores.

        Identity by default; onnxruntime turns off spin-waiting (idle threads of one session would steal
        the cores from the next one's run).
        """
        return self

    def compile_notes(self) -> list[str]:
        """Lines for a person about the last `compile` of this backend object (the command it ran, what it
        read from the model); empty by default."""
        return []

    def split_devices(self) -> tuple[int, ...]:
        """The devices this backend splits a workload across, one process each (ais_bench ``devices``); empty
        (the default) when it runs in this process through `runner`."""
        return ()

    def split_work(self, names: Sequence[str]) -> dict[int, list[str]]:
        """Which of `names` (input files, in order) each of `split_devices` runs; empty by default."""
        return {}

    def run_split(self, artifact: Any, output: str | Path, inputs: Mapping[int, Path] | None = None, *,
                  loop: int = 1, warmup: int = 1) -> Any:
        """Runs `artifact` on every `split_devices` device at once, each on its folder of `inputs` (None: pure
        inference, `loop` timed runs after `warmup`), writing under `output`. Only backends with devices."""
        raise BackendError(f"backend '{self.name}' does not split work across devices")

    def compile_record(self) -> dict[str, Any] | None:
        """What the last `compile` of this backend object ran, for reports (``{"command": [argv...], ...}``,
        JSON-ready); None when it runs no tool (the default) or has not compiled yet."""
        return None

    def __str__(self) -> str:
        return format_item(self.name, self.non_default_options())

    def __repr__(self) -> str:
        return f"<Backend {self}>"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.options == self.options  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.options))

    @abstractmethod
    def check_available(self) -> None:
        """Raises BackendUnavailable (with the fix) when this backend cannot run here."""

    @abstractmethod
    def compile(self, model: str | Path | onnx.ModelProto, output: str | Path | None = None) -> Any:
        """Turns a model into this backend's artifact; never modifies the input."""

    @abstractmethod
    def runner(self, artifact: Any) -> Runner:
        """A runner on a compiled artifact (enter it before calling `infer`)."""


def check_non_negative(backend: Backend, *names: str) -> None:
    """BackendError naming the backend and option when one of the integer options `names` is negative."""
    for name in names:
        value = getattr(backend.options, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BackendError(f"backend '{backend.name}': option '{name}' must be a non-negative integer, got {value!r}")


def load_model_arg(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """A ModelProto from a path or a proto (paths go through modelio's checked loader)."""
    if isinstance(model, onnx.ModelProto):
        return model
    from onnxforge.modelio import load_model

    return load_model(model)
