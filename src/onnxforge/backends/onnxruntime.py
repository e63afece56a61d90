"""onnxruntime backend: runs ONNX models on the CPU by default, CUDA or TensorRT where installed.

`compile` is the identity (onnxruntime optimises at session creation); the runner owns one
InferenceSession, built by `onnxforge.numerics.make_session` (the one place sessions are made).
Options (`OnnxruntimeOptions`; spec ``onnxruntime{device=cuda,threads=2}``):
- ``device``: ``cpu`` (default), ``cuda``, ``tensorrt``, or ``auto`` (TensorRT, then CUDA, then CPU,
  whatever this onnxruntime build offers). Asking for a provider the build lacks is BackendUnavailable.
- ``threads``: intra-op threads (0 = onnxruntime's default, one per core); ``inter_op_threads``.
- ``optimize``: False disables onnxruntime's graph optimisations (what the verifier wants).
- ``spin``: False stops idle worker threads spin-waiting (`interleaved()` sets it for round-robin timing).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np
import onnx

from onnxforge.backends.base import (
    Backend,
    Runner,
    TensorInfo,
    check_non_negative,
    load_model_arg,
    model_inputs,
    model_outputs,
)
from onnxforge.errors import BackendError, BackendUnavailable
from onnxforge.numerics import first_line, make_session
from onnxforge.spec import option

_DEVICE_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def resolve_providers(device: str) -> list[str]:
    """The provider list for a device name, checked against this onnxruntime build."""
    have = available_providers()
    if device == "auto":
        return [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider") if p in have]
    if device not in _DEVICE_PROVIDERS:
        raise BackendError(f"onnxruntime: unknown device '{device}'; choose one of auto, {', '.join(_DEVICE_PROVIDERS)}")
    wanted = _DEVICE_PROVIDERS[device]
    if wanted[0] not in have:
        raise BackendUnavailable(
            f"onnxruntime: {wanted[0]} is not in this onnxruntime build (available: {', '.join(have)}); "
            "install onnxruntime-gpu with a matching CUDA/TensorRT, or use --device cpu"
        )
    return [p for p in wanted if p in have]


class OnnxruntimeRunner(Runner):
    """One InferenceSession over an in-memory model (built by `numerics.make_session`)."""

    def __init__(self, model: onnx.ModelProto, providers: list[str], threads: int = 0,
                 inter_op_threads: int = 0, optimize: bool = True, spin: bool = True) -> None:
        super().__init__()
        self.model = model
        self.providers = providers
        self.threads = threads
        self.inter_op_threads = inter_op_threads
        self.optimize = optimize
        self.spin = spin
        self.session = None
        self._inputs = model_inputs(model)
        self._outputs = model_outputs(model)

    def activate(self) -> None:
        self.session = make_session(self.model, threads=self.threads, inter_op_threads=self.inter_op_threads,
                                    providers=self.providers, optimize=self.optimize, spin=self.spin)
        self._names = [o.name for o in self.session.get_outputs()]

    def deactivate(self) -> None:
        self.session = None

    def inputs(self) -> list[TensorInfo]:
        return list(self._inputs)

    def outputs(self) -> list[TensorInfo]:
        return list(self._outputs)

    def _infer(self, feeds: Mapping[str, np.ndarray], names: Sequence[str] | None) -> tuple[list[np.ndarray], float | None]:
        assert self.session is not None
        start = time.perf_counter()
        try:
            values = self.session.run(list(names) if names is not None else self._names, dict(feeds))
        except Exception as exc:  # onnxruntime's own exception types
            raise BackendError(f"onnxruntime failed to run the model: {first_line(exc)}") from None
        return list(values), time.perf_counter() - start


@dataclass(frozen=True)
class OnnxruntimeOptions:
    """Options of the onnxruntime backend (`onnxruntime{device=cuda,threads=2}`)."""

    device: Literal["cpu", "cuda", "tensorrt", "auto"] = option(
        "cpu", "execution provider: cpu, cuda, tensorrt, or auto (TensorRT, then CUDA, then CPU, as installed)")
    threads: int = option(0, "intra-op threads (0: onnxruntime's default, one per core)")
    inter_op_threads: int = option(0, "inter-op threads (0: 1 when threads is set, else onnxruntime's default)")
    optimize: bool = option(True, "onnxruntime graph optimisations (false: run the graph as written)")
    spin: bool = option(True, "worker threads spin-wait between runs (false when sessions are timed in turn)")


class OnnxruntimeBackend(Backend):
    """onnxruntime on CPU (default) or CUDA/TensorRT; see the module docstring for options."""

    name = "onnxruntime"
    summary = "runs ONNX in onnxruntime (CPU, or CUDA/TensorRT where installed); no compile step."
    Options = OnnxruntimeOptions
    artifact_suffix = None

    def validate(self) -> None:
        check_non_negative(self, "threads", "inter_op_threads")
        if self.options.device not in ("auto", *_DEVICE_PROVIDERS):
            raise BackendError(f"onnxruntime: unknown device '{self.options.device}'; choose one of auto, {', '.join(_DEVICE_PROVIDERS)}")

    def check_available(self) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from None
        resolve_providers(self.options.device)

    def compile(self, model: str | Path | onnx.ModelProto, output: str | Path | None = None) -> onnx.ModelProto:
        """Loads the model; onnxruntime needs no ahead-of-time step. `output` is ignored."""
        return load_model_arg(model)

    def runner(self, artifact: onnx.ModelProto | str | Path) -> OnnxruntimeRunner:
        o = self.options
        return OnnxruntimeRunner(load_model_arg(artifact), resolve_providers(o.device), o.threads, o.inter_op_threads,
                                 o.optimize, o.spin)

    def interleaved(self) -> "OnnxruntimeBackend":
        """Without spin-waiting: see `Backend.interleaved`."""
        return self.with_options(spin=False)  # type: ignore[return-value]
