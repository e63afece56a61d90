"""onnxruntime backend: runs ONNX models on the CPU by default, CUDA, TensorRT or CANN where installed.

`compile` is the identity (onnxruntime optimises at session creation); the runner owns one
InferenceSession, built by `onnxforge.numerics.make_session` (the one place sessions are made).
Options (`OnnxruntimeOptions`; spec ``onnxruntime{device=cuda,threads=2}``):
- ``device``: ``cpu`` (default), ``cuda``, ``tensorrt``, ``cann`` (Huawei Ascend NPUs through onnxruntime's
  CANN execution provider, the ``onnxruntime-cann`` build), or ``auto`` (TensorRT, then CUDA, then CPU,
  whatever this onnxruntime build offers). Asking for a provider the build lacks is BackendUnavailable.
- CANN provider options (``device=cann`` only), passed as the provider's options as onnxruntime's CANN
  execution provider page documents them (onnxruntime.ai, execution-providers/community-maintained/
  CANN-ExecutionProvider, the page listing onnxruntime 1.20.0-1.22.1 with CANN 8.2.0): ``device_id``,
  ``precision_mode`` (force_fp32, force_fp16, allow_fp32_to_fp16, must_keep_origin_dtype, allow_mix_precision),
  ``op_select_impl_mode`` (high_performance, high_precision), ``npu_mem_limit`` (bytes of the provider's
  arena), ``enable_cann_graph``. The CPU provider follows it for what CANN does not run. Not run on an NPU
  here: only the provider list and options handed to the session are tested.
- ``threads``: intra-op threads (0 = onnxruntime's default, one per core); ``inter_op_threads``.
- ``optimize``: False disables onnxruntime's graph optimisations (what the verifier wants).
- ``spin``: False stops idle worker threads spin-waiting (`interleaved()` sets it for round-robin timing).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Optional, Sequence, Union

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
    "cann": ["CANNExecutionProvider", "CPUExecutionProvider"],
}
#: what to install for a device's provider
_INSTALL = {
    "cann": "install onnxruntime-cann (onnxruntime built with the CANN execution provider) on an Ascend host with CANN "
            "and run 'source /usr/local/Ascend/ascend-toolkit/set_env.sh'",
}
#: Options handed to the CANN execution provider (onnxruntime's CANN EP page): option field -> provider key
CANN_PROVIDER_OPTIONS = {
    "device_id": "device_id", "precision_mode": "precision_mode", "op_select_impl_mode": "op_select_impl_mode",
    "npu_mem_limit": "npu_mem_limit", "enable_cann_graph": "enable_cann_graph",
}
#: a provider name, or (name, its options) as InferenceSession takes them
Provider = Union[str, tuple[str, dict[str, str]]]


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
        fix = _INSTALL.get(device, "install onnxruntime-gpu with a matching CUDA/TensorRT")
        raise BackendUnavailable(
            f"onnxruntime: {wanted[0]} is not in this onnxruntime build (available: {', '.join(have)}); "
            f"{fix}, or use --device cpu"
        )
    return [p for p in wanted if p in have]


def provider_options(options: "OnnxruntimeOptions") -> dict[str, dict[str, str]]:
    """Per-provider options from the backend options: the CANN provider's where ``device=cann`` (values as
    the strings onnxruntime takes; ``enable_cann_graph`` as 0/1), else none."""
    if options.device != "cann":
        return {}
    cann: dict[str, str] = {}
    for field_name, key in CANN_PROVIDER_OPTIONS.items():
        value = getattr(options, field_name)
        if value is None:
            continue
        cann[key] = str(int(value)) if isinstance(value, bool) else str(value)
    return {"CANNExecutionProvider": cann}


def session_providers(options: "OnnxruntimeOptions") -> list[Provider]:
    """The providers list `make_session` hands to InferenceSession: names, with (name, options) where a
    provider has options. Raises BackendUnavailable where the device's provider is absent."""
    extra = provider_options(options)
    return [(p, extra[p]) if p in extra else p for p in resolve_providers(options.device)]


class OnnxruntimeRunner(Runner):
    """One InferenceSession over an in-memory model (built by `numerics.make_session`)."""

    def __init__(self, model: onnx.ModelProto, providers: Sequence[Provider], threads: int = 0,
                 inter_op_threads: int = 0, optimize: bool = True, spin: bool = True) -> None:
        super().__init__()
        self.model = model
        self.providers = list(providers)
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

    device: Literal["cpu", "cuda", "tensorrt", "cann", "auto"] = option(
        "cpu", "execution provider: cpu, cuda, tensorrt, cann (Ascend NPU, onnxruntime-cann), or auto (TensorRT, then CUDA, then CPU, as installed)")
    threads: int = option(0, "intra-op threads (0: onnxruntime's default, one per core)")
    inter_op_threads: int = option(0, "inter-op threads (0: 1 when threads is set, else onnxruntime's default)")
    optimize: bool = option(True, "onnxruntime graph optimisations (false: run the graph as written)")
    spin: bool = option(True, "worker threads spin-wait between runs (false when sessions are timed in turn)")
    device_id: int = option(0, "NPU the CANN provider runs on (device=cann)")
    precision_mode: Optional[Literal["force_fp32", "force_fp16", "allow_fp32_to_fp16", "must_keep_origin_dtype",
                                     "allow_mix_precision"]] = option(None, "CANN provider precision_mode (device=cann; none: the provider's default)")
    op_select_impl_mode: Optional[Literal["high_performance", "high_precision"]] = option(
        None, "CANN provider op_select_impl_mode (device=cann)")
    npu_mem_limit: Optional[int] = option(None, "CANN provider arena limit in bytes (device=cann; none: no limit)")
    enable_cann_graph: Optional[bool] = option(None, "CANN provider runs the graph with CANN's graph engine (device=cann)")


class OnnxruntimeBackend(Backend):
    """onnxruntime on CPU (default) or CUDA/TensorRT; see the module docstring for options."""

    name = "onnxruntime"
    summary = "runs ONNX in onnxruntime (CPU, or CUDA/TensorRT/CANN where installed); no compile step."
    Options = OnnxruntimeOptions
    artifact_suffix = None

    def validate(self) -> None:
        o = self.options
        check_non_negative(self, "threads", "inter_op_threads", "device_id",
                           *(["npu_mem_limit"] if o.npu_mem_limit is not None else []))
        if o.device not in ("auto", *_DEVICE_PROVIDERS):
            raise BackendError(f"onnxruntime: unknown device '{o.device}'; choose one of auto, {', '.join(_DEVICE_PROVIDERS)}")
        if o.device != "cann":
            given = [n for n in CANN_PROVIDER_OPTIONS if (o.device_id != 0 if n == "device_id" else getattr(o, n) is not None)]
            if given:
                raise BackendError(f"backend 'onnxruntime': option '{given[0]}' is a CANN provider option; "
                                   f"it needs device=cann (device is {o.device})")

    def check_available(self) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from None
        session_providers(self.options)

    def compile(self, model: str | Path | onnx.ModelProto, output: str | Path | None = None) -> onnx.ModelProto:
        """Loads the model; onnxruntime needs no ahead-of-time step. `output` is ignored."""
        return load_model_arg(model)

    def runner(self, artifact: onnx.ModelProto | str | Path) -> OnnxruntimeRunner:
        o = self.options
        return OnnxruntimeRunner(load_model_arg(artifact), session_providers(o), o.threads, o.inter_op_threads,
                                 o.optimize, o.spin)

    def interleaved(self) -> "OnnxruntimeBackend":
        """Without spin-waiting: see `Backend.interleaved`."""
        return self.with_options(spin=False)  # type: ignore[return-value]
