"""onnxruntime backend: runs ONNX models on the CPU by default, CUDA or TensorRT where installed.

`compile` is the identity (onnxruntime optimises at session creation); the runner owns one
InferenceSession. Options:
- ``device``: ``cpu`` (default), ``cuda``, ``tensorrt``, or ``auto`` (TensorRT, then CUDA, then CPU,
  whatever this onnxruntime build offers). Asking for a provider the build lacks is BackendUnavailable.
- ``threads``: intra-op threads (0 = onnxruntime's default, one per core); ``inter_op_threads``.
- ``optimize``: False disables onnxruntime's graph optimisations (what the verifier wants).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from onnxforge.backends.base import Backend, Runner, TensorInfo, load_model_arg, model_inputs, model_outputs
from onnxforge.errors import BackendError, BackendUnavailable

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
    """One InferenceSession over an in-memory model."""

    def __init__(self, model: onnx.ModelProto, providers: list[str], threads: int = 0,
                 inter_op_threads: int = 0, optimize: bool = True, spin: bool = True) -> None:
        super().__init__()
        self.spin = spin
        self.model = model
        self.providers = providers
        self.threads = threads
        self.inter_op_threads = inter_op_threads
        self.optimize = optimize
        self.session = None
        self._inputs = model_inputs(model)
        self._outputs = model_outputs(model)

    def activate(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if self.threads:
            opts.intra_op_num_threads = int(self.threads)
        if self.inter_op_threads:
            opts.inter_op_num_threads = int(self.inter_op_threads)
        elif self.threads:
            opts.inter_op_num_threads = 1
        if not self.optimize:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if not self.spin:
            no_spinning(opts)
        try:
            self.session = ort.InferenceSession(self.model.SerializeToString(), opts, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeException types
            raise BackendError(f"onnxruntime cannot load the model: {_first_line(exc)}") from None
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
            raise BackendError(f"onnxruntime failed to run the model: {_first_line(exc)}") from None
        return list(values), time.perf_counter() - start


class OnnxruntimeBackend(Backend):
    """onnxruntime on CPU (default) or CUDA/TensorRT; see the module docstring for options."""

    name = "onnxruntime"
    artifact_kind = "model"

    def __init__(self, device: str = "cpu", threads: int = 0, inter_op_threads: int = 0,
                 optimize: bool = True, spin: bool = True, **options: Any) -> None:
        super().__init__(device=device, threads=threads, inter_op_threads=inter_op_threads, optimize=optimize, spin=spin, **options)
        self.spin = spin
        self.device = device
        self.threads = int(threads or 0)
        self.inter_op_threads = int(inter_op_threads or 0)
        self.optimize = optimize

    def check_available(self) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from None
        resolve_providers(self.device)

    def compile(self, model: str | Path | onnx.ModelProto, output: str | Path | None = None) -> onnx.ModelProto:
        """Loads the model; onnxruntime needs no ahead-of-time step. `output` is ignored."""
        return load_model_arg(model)

    def runner(self, artifact: onnx.ModelProto | str | Path) -> OnnxruntimeRunner:
        model = load_model_arg(artifact)
        return OnnxruntimeRunner(model, resolve_providers(self.device), self.threads, self.inter_op_threads, self.optimize,
                                 self.spin)


def no_spinning(opts) -> None:
    """Worker threads sleep instead of spin-waiting after a run. Needed when several sessions are timed
    in turn on few cores: a session's spinning threads would steal the cores from the next one's run."""
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(exc).__name__
