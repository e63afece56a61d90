"""ais_bench backend: runs Ascend offline models (.om) on an NPU through the ais_bench package.

Needs ``ais_bench`` and ``aclruntime`` (CANN's inference tools) on an Ascend host; anywhere else every
entry point raises BackendUnavailable saying so. `compile` turns an ONNX model into an .om with the atc
backend (same options) and passes an existing .om through unchanged.

On a machine without an NPU, run the model on the Ascend host with ais_bench and give its output
directory to ``onnxforge evaluate --predictions DIR``: accuracy is then computed here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from onnxforge.backends.base import Backend, Runner, TensorInfo
from onnxforge.errors import BackendError, BackendUnavailable

AIS_BENCH_MISSING = (
    "the ais_bench package is not installed here (from ais_bench.infer.interface import InferSession failed): "
    "install the aclruntime and ais_bench wheels from Ascend's ait/ais_bench tools on an Ascend host with CANN, "
    "or run the model there and evaluate its outputs here with --predictions DIR"
)

_DTYPES = {
    "float32": np.float32, "float16": np.float16, "float64": np.float64, "int64": np.int64,
    "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}


def import_infer_session():
    """The InferSession class, or BackendUnavailable with the fix."""
    try:
        from ais_bench.infer.interface import InferSession
    except (ImportError, OSError):  # OSError: the package is there but its native libraries are not
        raise BackendUnavailable(AIS_BENCH_MISSING) from None
    return InferSession


def _dtype_of(datatype: object) -> np.dtype:
    text = str(datatype).lower().rsplit(".", 1)[-1]
    for key, dt in _DTYPES.items():
        if key == text or text.endswith(key):
            return np.dtype(dt)
    return np.dtype(np.float32)


class AisBenchRunner(Runner):
    """An ais_bench InferSession on one .om file (device `device_id`)."""

    def __init__(self, om_path: Path, device_id: int = 0) -> None:
        super().__init__()
        self.om_path = Path(om_path)
        self.device_id = device_id
        self.session = None

    def activate(self) -> None:
        infer_session = import_infer_session()
        if not self.om_path.is_file():
            raise BackendError(f"{self.om_path}: no such .om file")
        self.session = infer_session(self.device_id, str(self.om_path))

    def deactivate(self) -> None:
        if self.session is not None:
            free = getattr(self.session, "free_resource", None)
            if callable(free):
                free()
        self.session = None

    def _infos(self, items) -> list[TensorInfo]:
        return [TensorInfo(t.name, tuple(int(d) for d in t.shape), _dtype_of(t.datatype)) for t in items]

    def inputs(self) -> list[TensorInfo]:
        assert self.session is not None
        return self._infos(self.session.get_inputs())

    def outputs(self) -> list[TensorInfo]:
        assert self.session is not None
        return self._infos(self.session.get_outputs())

    def _infer(self, feeds: Mapping[str, np.ndarray], names: Sequence[str] | None) -> tuple[list[np.ndarray], float | None]:
        assert self.session is not None
        ordered = [np.ascontiguousarray(feeds[i.name]) for i in self.inputs()]
        start = time.perf_counter()
        outputs = self.session.infer(ordered, mode="static")
        wall = time.perf_counter() - start
        measured = None
        summary = getattr(self.session, "summary", None)
        if callable(summary):
            times = getattr(summary(), "exec_time_list", None) or []
            if times:
                last = times[-1]
                # older releases store milliseconds, newer ones (start, end) pairs in milliseconds
                measured = (float(last[1]) - float(last[0])) / 1000.0 if isinstance(last, (tuple, list)) else float(last) / 1000.0
        arrays = [np.asarray(o) for o in outputs]
        if names is not None:
            order = [o.name for o in self.outputs()]
            missing = [n for n in names if n not in order]
            if missing:
                raise BackendError(f"{self.om_path}: no output named {missing[0]!r} (outputs: {', '.join(order)})")
            arrays = [arrays[order.index(n)] for n in names]
        return arrays, (measured if measured and measured > 0 else wall)


class AisBenchBackend(Backend):
    """Runs .om models with ais_bench; compiles ONNX with atc first (options go to the atc backend)."""

    name = "ais_bench"
    artifact_kind = "file"

    def __init__(self, device_id: int = 0, **options: Any) -> None:
        super().__init__(device_id=device_id, **options)
        self.device_id = device_id

    def check_available(self) -> None:
        import_infer_session()

    def compile(self, model: str | Path | onnx.ModelProto, output: str | Path | None = None) -> Path:
        if not isinstance(model, onnx.ModelProto) and str(model).endswith(".om"):
            return Path(model)
        from onnxforge.backends.atc import AtcBackend

        return AtcBackend(**self.options).compile(model, output)

    def runner(self, artifact: str | Path) -> AisBenchRunner:
        self.check_available()
        return AisBenchRunner(Path(artifact), device_id=self.device_id)
