"""The Ascend backends: `atc` compiles ONNX to offline models (.om), `ais_bench` runs them on an NPU.

Both live here so that neither imports the other: they share `AscendOptions` (compile options for atc,
the device for ais_bench), compile the same way (CANN's `atc`) and run the same way (ais_bench's
InferSession). They differ in what they need installed: `atc` checks for the atc tool (compiling is
what it is for), `ais_bench` for the ais_bench package (running is what it is for).

Compiling (atc). The command is derived from the model itself:

    atc --framework=5 --model=M.onnx --output=OUT --input_shape=image:1,3,1024,2048
        --soc_version=Ascend310P3 [--output_type=FP16] [--input_fp16_nodes=image]
        --input_format=NCHW --log=error

- ``--output`` has no ``.om`` suffix: atc appends it.
- ``--input_shape`` comes from the graph's (static) input shapes; several inputs are joined with ``;``.
- ``--output_type=FP16`` when the graph outputs are float16 (after the ``fp16-output`` pass);
  ``--input_fp16_nodes=NAME`` for every float16 graph input (after ``fp16-input``). The graph is the
  source of truth; the pipeline recorded by the pass manager in ``metadata_props['onnxforge.pipeline']``
  is read, reported, and a disagreement with the graph is logged.

Before calling atc the model is checked against what the selected CANN profile says atc accepts
(`onnxforge.cann`: one JSON file per CANN line, sources inside; option ``cann``, default the
installed CANN, else 5.0): the ai.onnx opset range (overridable with ``min_opset``/``max_opset``) and,
where the profile records an op list (5.0), every op type. atc options the profile does not list
(``precision_mode_v2`` on 5.0) are refused before anything runs.

Gears: ``dynamic_batch_sizes`` (atc ``--dynamic_batch_size="1,4,8"``) puts -1 in every input's batch
dimension, ``dynamic_image_sizes`` (``--dynamic_image_size="512,512;1024,2048"``) in every 4-D input's
H and W; the export shape must be one of the gears, and atc wants 2..100 of them, not both kinds.
Mixed precision: option ``precision_config`` (``compile --precision-config DIR``, written by ``report
--per-node fp16``; see `backends.cann.precision`) adds ``--keep_dtype=DIR/keep_dtype.cfg``, the global
mode keep_dtype goes with for the CANN line (``--precision_mode_v2=fp16`` on 8.x and later, else
``--precision_mode=force_fp16``; an explicit mode wins) and ``--op_precision_mode=DIR/op_precision.ini``
where the directory has one; the keep-set is checked against the model's node names first.
A successful compile writes ``NAME.om.json`` beside the .om with the exact command and the profile.
A missing atc is BackendUnavailable with the exact fix; a failing atc is a BackendError quoting its
first error-code line (``E10001: ...``) and pointing at the full log written next to the output.

Running (ais_bench). Needs ``ais_bench`` and ``aclruntime`` (CANN's inference tools) on an Ascend host;
anywhere else the runner raises BackendUnavailable saying so. A path that already ends in ``.om`` is
not compiled again. On a machine without an NPU, run the model on the Ascend host with ais_bench and
give its output directory to ``onnxforge evaluate --predictions DIR``: accuracy is then computed here.

Many devices (option ``devices``, ``--device 0,1,2,3``). The work is split as ais_bench's own multi-device
run splits it (contiguous chunks of ceil(n / devices) input files, in order) and one ais_bench process
runs per device, all at once (`run_ais_bench_devices`)::

    python -m ais_bench --model M.om --input IN/device0 --output OUT --output_dirname TS/device0 --outfmt BIN --device 0

so the outputs land where ``ais_bench --device 0,1`` itself puts them (ais_bench 0.0.2, Ascend/tools
ais-bench_workload/tool/ais_bench README and ``infer/__main__.py``): ``OUT/TS/device<k>/<name>_<i>.bin``
and ``OUT/TS/device<k>_summary.json``, TS the run's ``%Y_%m_%d-%H_%M_%S`` stamp. Throughput is the sum of
the devices' ``throughput`` as their summaries report it (ais_bench's "summary throughput"). Timing
rounds (`runner`) stay serial on the first device. ais_bench runs in this interpreter (``sys.executable
-m ais_bench``), so it must be importable here.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import importlib.util
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Optional, Sequence

import numpy as np
import onnx

from onnxforge import spec
from onnxforge.cann import DEFAULT_CANN, CannProfile, profile as cann_profile, select_profile
from onnxforge.backends.cann.precision import PrecisionConfig, read_precision_config
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
from onnxforge.modelio import write_text_atomic
from onnxforge.spec import option

log = logging.getLogger(__name__)

PIPELINE_KEY = "onnxforge.pipeline"
DEFAULT_SOC_VERSION = "Ascend310P3"
_DEFAULT_PROFILE = cann_profile(DEFAULT_CANN)
MIN_OPSET = _DEFAULT_PROFILE.min_opset
MAX_OPSET = _DEFAULT_PROFILE.max_opset

ATC_MISSING = "atc not found on PATH: install the CANN toolkit and run 'source /usr/local/Ascend/ascend-toolkit/set_env.sh'"

#: ONNX ops the CANN 5.0.4 ATC documentation lists as supported (ai.onnx domain): the 5.0 profile's list.
ATC_ONNX_OPS: frozenset[str] = _DEFAULT_PROFILE.ops or frozenset()

_ERROR_CODE = re.compile(r"\b[EW]\d{5}\b")
_RECORDED = spec.Grammar(what="recorded pipeline", item="a pass name", error=BackendError)


@dataclass(frozen=True)
class AtcPlan:
    """What `compile` will run, and why."""

    command: list[str]
    fp16_outputs: bool
    fp16_inputs: tuple[str, ...]
    pipeline: str | None  # as recorded in metadata_props, if any
    notes: tuple[str, ...] = field(default_factory=tuple)

    def shell(self) -> str:
        """The command as one shell line (quoted as a POSIX shell needs)."""
        return shlex.join(self.command)


def recorded_pipeline(model: onnx.ModelProto) -> str | None:
    """The pipeline the pass manager recorded in the model's metadata_props, or None."""
    for prop in model.metadata_props:
        if prop.key == PIPELINE_KEY:
            return prop.value
    return None


def _pipeline_passes(pipeline: str | None) -> set[str]:
    """The pass names of a recorded pipeline (read with the pipeline grammar; unreadable: none, logged)."""
    if not pipeline:
        return set()
    try:
        return {item.name for item in spec.parse_items(pipeline, _RECORDED)}
    except BackendError as exc:
        log.warning("atc: cannot read the recorded pipeline: %s", exc)
        return set()


def ai_onnx_opset(model: onnx.ModelProto) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def check_model_for_atc(model: onnx.ModelProto, min_opset: int | None = None, max_opset: int | None = None,
                        extra_ops: frozenset[str] | set[str] = frozenset(),
                        profile: CannProfile | None = None) -> list[str]:
    """Everything atc would reject, as readable lines (empty when the model looks acceptable).

    Args:
        profile: the CANN profile (default: the 5.0 one); `min_opset`/`max_opset` override its range.
            A profile without an op list skips the op check.
    """
    prof = profile or _DEFAULT_PROFILE
    min_opset = prof.min_opset if min_opset is None else min_opset
    max_opset = prof.max_opset if max_opset is None else max_opset
    problems: list[str] = []
    opset = ai_onnx_opset(model)
    if opset is None:
        problems.append("model imports no ai.onnx opset")
    elif not (min_opset <= opset <= max_opset):
        # the profile's default opset (what export and target-opset aim at), unless the range was narrowed past it
        target = prof.default_opset if min_opset <= prof.default_opset <= max_opset else min(max(opset, min_opset), max_opset)
        problems.append(
            f"ai.onnx opset {opset} is outside what atc accepts ({min_opset}..{max_opset}) in the CANN {prof.line} profile; "
            f"convert it first, e.g. --passes 'target-opset{{opset={target}}}'"
        )
    bad: dict[str, list[str]] = {}
    nodes = model.graph.node if prof.ops is not None else []
    allowed = (prof.ops or frozenset()) | set(extra_ops)
    for i, node in enumerate(nodes):
        domain = node.domain or ""
        key = node.op_type if domain in ("", "ai.onnx") else f"{domain}::{node.op_type}"
        if domain in ("", "ai.onnx") and node.op_type in allowed:
            continue
        bad.setdefault(key, []).append(node.name or f"#{i}")
    for op, names in sorted(bad.items()):
        problems.append(f"op {op} is not supported by atc ({len(names)} node{'s' if len(names) > 1 else ''}, first: {names[0]})")
    for inp in model_inputs(model):
        if not inp.is_static:
            problems.append(
                f"input '{inp.name}' has dynamic shape {list(inp.shape)}; atc needs static shapes: "
                f"--passes 'static-shape{{shape={inp.name}:...}}'"
            )
    return problems


def parse_image_size(text: str) -> tuple[int, int]:
    """``"512x1024"`` -> (512, 1024) (height x width)."""
    h, sep, w = str(text).strip().lower().partition("x")
    if not sep or not h.isdigit() or not w.isdigit() or int(h) <= 0 or int(w) <= 0:
        raise BackendError(f"image size '{text}' is not HEIGHTxWIDTH, e.g. 512x1024")
    return int(h), int(w)


def _check_gears(kind: str, gears: Sequence[object]) -> None:
    if len(set(gears)) != len(gears):
        raise BackendError(f"{kind}: a gear is given twice ({', '.join(map(str, gears))})")
    if not 2 <= len(gears) <= 100:
        raise BackendError(f"{kind}: atc needs 2 to 100 gears, got {len(gears)}")


def plan_atc(model: onnx.ModelProto, model_path: str | Path, output: str | Path,
             soc_version: str = DEFAULT_SOC_VERSION, atc: str = "atc", log_level: str = "error",
             extra_args: tuple[str, ...] = (), *, precision_mode: str | None = None,
             precision_mode_v2: str | None = None, dynamic_batch_sizes: Sequence[int] = (),
             dynamic_image_sizes: Sequence[str] = (), insert_op_conf: str | None = None,
             keep_dtype: str | None = None, op_precision_mode: str | None = None) -> AtcPlan:
    """The exact atc command line for `model` (saved at `model_path`), writing `output` (+ '.om').

    Raises:
        BackendError: a dynamic input; gears that are malformed, both kinds at once, or do not include
            the model's export shape.
    """
    out = str(output)
    if out.endswith(".om"):
        out = out[: -len(".om")]
    inputs = model_inputs(model)
    shapes = []
    for inp in inputs:
        if not inp.is_static:
            raise BackendError(f"{model_path}: input '{inp.name}' has dynamic shape {list(inp.shape)}; atc needs static shapes")
    if dynamic_batch_sizes and dynamic_image_sizes:
        raise BackendError("atc takes --dynamic_batch_size or --dynamic_image_size, not both")
    batch = [int(b) for b in dynamic_batch_sizes]
    images = [parse_image_size(t) for t in dynamic_image_sizes]
    if batch:
        _check_gears("dynamic batch sizes", batch)
    if images:
        _check_gears("dynamic image sizes", [f"{h}x{w}" for h, w in images])
    for inp in inputs:
        dims = [int(d) for d in inp.shape]
        if batch:
            if not dims or dims[0] not in batch:
                raise BackendError(f"{model_path}: input '{inp.name}' was exported with batch {dims[0] if dims else '-'}, "
                                   f"which the batch gears {','.join(map(str, batch))} do not include")
            dims[0] = -1
        if images and len(dims) == 4:
            if (dims[2], dims[3]) not in images:
                raise BackendError(f"{model_path}: input '{inp.name}' was exported at {dims[2]}x{dims[3]}, which the image "
                                   f"gears {','.join(f'{h}x{w}' for h, w in images)} do not include")
            dims[2] = dims[3] = -1
        shapes.append(f"{inp.name}:{','.join(str(d) for d in dims)}")
    if images and not any(len(i.shape) == 4 for i in inputs):
        raise BackendError(f"{model_path}: dynamic image sizes need a 4-D (NCHW) input")
    float_outputs = [o for o in model_outputs(model) if o.dtype.kind == "f"]
    fp16_outputs = bool(float_outputs) and all(o.dtype.itemsize == 2 for o in float_outputs)
    fp16_inputs = tuple(i.name for i in inputs if i.dtype.kind == "f" and i.dtype.itemsize == 2)

    pipeline = recorded_pipeline(model)
    passes = _pipeline_passes(pipeline)
    notes = []
    if ("fp16-output" in passes or "fp16" in passes) and not fp16_outputs:
        notes.append("the recorded pipeline has fp16 outputs but the graph's outputs are not float16; following the graph")
    if "fp16-output" not in passes and "fp16" not in passes and fp16_outputs and pipeline is not None:
        notes.append("the graph's outputs are float16 though the recorded pipeline has no fp16-output; following the graph")
    if ("fp16-input" in passes or "fp16" in passes) and not fp16_inputs:
        notes.append("the recorded pipeline has fp16 inputs but the graph's inputs are not float16; following the graph")
    if any(o.dtype.kind == "f" and o.dtype.itemsize == 2 for o in float_outputs) and not fp16_outputs:
        notes.append("graph outputs mix float16 and float32; atc is not given --output_type")
    for note in notes:
        log.warning("atc: %s", note)

    cmd = [
        atc,
        "--framework=5",
        f"--model={model_path}",
        f"--output={out}",
        f"--input_shape={';'.join(shapes)}",
        f"--soc_version={soc_version}",
    ]
    if fp16_outputs:
        cmd.append("--output_type=FP16")
    if fp16_inputs:
        cmd.append(f"--input_fp16_nodes={';'.join(fp16_inputs)}")
    cmd += ["--input_format=NCHW", f"--log={log_level}"]
    if precision_mode:
        cmd.append(f"--precision_mode={precision_mode}")
    if precision_mode_v2:
        cmd.append(f"--precision_mode_v2={precision_mode_v2}")
    if keep_dtype:
        cmd.append(f"--keep_dtype={keep_dtype}")
    if op_precision_mode:
        cmd.append(f"--op_precision_mode={op_precision_mode}")
    if insert_op_conf:
        if fp16_inputs:
            raise BackendError(f"{model_path}: AIPP (--insert_op_conf) cannot feed a float16 input (--input_fp16_nodes); "
                               "leave out fp16-input")
        cmd.append(f"--insert_op_conf={insert_op_conf}")
    if batch:
        cmd.append(f"--dynamic_batch_size={','.join(map(str, batch))}")
    if images:
        cmd.append(f"--dynamic_image_size={';'.join(f'{h},{w}' for h, w in images)}")
    cmd.extend(extra_args)
    return AtcPlan(cmd, fp16_outputs, fp16_inputs, pipeline, tuple(notes))


def summarize_atc_failure(text: str) -> str:
    """The first line a person needs from atc's output: an error-code line, else 'ATC run failed', else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        m = _ERROR_CODE.search(ln)
        if m and m.group(0).startswith("E"):
            return ln[m.start():][:300]
    for ln in lines:
        if "ATC run failed" in ln or "[ERROR]" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


@dataclass(frozen=True)
class CompileResult:
    om_path: Path
    command: list[str]
    log_path: Path | None
    plan: AtcPlan


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


AIS_BENCH_CLI_MISSING = (
    f"a run split across devices needs 'python -m ais_bench' in this interpreter ({sys.executable}), and the ais_bench "
    "package is not installed here: install the aclruntime and ais_bench wheels from Ascend's ait/ais_bench tools on an "
    "Ascend host with CANN, or run the model there and evaluate its outputs here with --predictions DIR"
)


def check_ais_bench_module() -> None:
    """BackendUnavailable (with the fix) unless ``python -m ais_bench`` can run in this interpreter."""
    try:
        found = importlib.util.find_spec("ais_bench")
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise BackendUnavailable(AIS_BENCH_CLI_MISSING)


def check_devices(devices: Sequence[int], what: str = "devices") -> tuple[int, ...]:
    """The device ids as a tuple, or BackendError naming a negative or repeated id."""
    ids = tuple(int(d) for d in devices)
    for d in ids:
        if d < 0 or d > 255:  # ais_bench's own range check
            raise BackendError(f"{what}: device id {d} is outside 0..255")
    seen = [d for i, d in enumerate(ids) if d in ids[:i]]
    if seen:
        raise BackendError(f"{what}: device {seen[0]} is given twice ({','.join(map(str, ids))}); give each NPU once")
    return ids


def split_work(names: Sequence[str], devices: Sequence[int]) -> dict[int, list[str]]:
    """Which names each device runs: contiguous chunks of ceil(n / len(devices)), in order, as ais_bench's
    multi-device run splits its input files (a device may get none when there are fewer names)."""
    per = max(1, math.ceil(len(names) / len(devices))) if devices else 0
    return {d: list(names[i * per:(i + 1) * per]) for i, d in enumerate(devices)}


def ais_bench_command(om: str | Path, output: str | Path, output_dirname: str, device: int,
                      input_dir: str | Path | None = None, *, loop: int = 1, warmup: int = 1,
                      python: str | None = None) -> list[str]:
    """The ``python -m ais_bench`` argv of one device's run (no `input_dir`: pure inference on zeros)."""
    cmd = [python or sys.executable, "-m", "ais_bench", "--model", str(om)]
    if input_dir is not None:
        cmd += ["--input", str(input_dir)]
    cmd += ["--output", str(output), "--output_dirname", output_dirname, "--outfmt", "BIN", "--device", str(device)]
    if loop != 1:
        cmd += ["--loop", str(loop)]
    if warmup != 1:
        cmd += ["--warmup_count", str(warmup)]
    return cmd


@dataclass(frozen=True)
class DeviceRun:
    """One device's ais_bench run: its argv, output folder, log and summary (``<folder>_summary.json``)."""

    device: int
    command: list[str]
    folder: Path
    log: Path
    summary: dict

    @property
    def throughput(self) -> float:
        return float(self.summary.get("throughput") or 0.0)

    @property
    def compute_ms(self) -> list[float]:
        """The NPU compute time of every run, in milliseconds (``npu_compute_time_list``)."""
        return [float(t) for t in self.summary.get("npu_compute_time_list") or []]


@dataclass(frozen=True)
class SplitRun:
    """A workload split across devices: `root` is ``OUT/TS`` (what ``evaluate --predictions`` reads)."""

    root: Path
    runs: tuple[DeviceRun, ...]

    @property
    def throughput(self) -> float:
        """The sum of the devices' throughputs as their summaries report them (ais_bench's summary throughput)."""
        return sum(r.throughput for r in self.runs)

    @property
    def compute_s(self) -> float:
        """NPU compute seconds over all devices and runs."""
        return sum(sum(r.compute_ms) for r in self.runs) / 1000.0

    def to_dict(self) -> dict:
        return {"root": str(self.root), "throughput": self.throughput,
                "devices": [{"device": r.device, "command": r.command, "folder": str(r.folder), "throughput": r.throughput,
                             "runs": len(r.compute_ms)} for r in self.runs]}


def run_ais_bench_devices(om: str | Path, output: str | Path, devices: Sequence[int],
                          inputs: Mapping[int, Path] | None = None, *, loop: int = 1, warmup: int = 1,
                          timestamp: str | None = None, timeout_s: float | None = None) -> SplitRun:
    """Runs one ais_bench process per device at once, writing ais_bench's multi-device layout under `output`.

    Args:
        inputs: device -> folder of that device's input files (`split_work`); None: pure inference.
        timestamp: the run's folder name (default: now, as ais_bench names it).

    Raises:
        BackendUnavailable: ais_bench is not importable here.
        BackendError: a repeated device, a process that fails (its last error line and log quoted) or
            writes no summary.
    """
    devices = check_devices(devices)
    check_ais_bench_module()
    out = Path(output)
    stamp = timestamp or time.strftime("%Y_%m_%d-%H_%M_%S")
    root = out / stamp
    root.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        for d in devices:
            in_dir = inputs.get(d) if inputs is not None else None
            if inputs is not None and (in_dir is None or not any(Path(in_dir).iterdir())):
                continue  # fewer inputs than devices: this one has nothing to do
            cmd = ais_bench_command(om, out, f"{stamp}/device{d}", d, in_dir, loop=loop, warmup=warmup)
            log_path = root / f"device{d}.log"
            handle = open(log_path, "w", encoding="utf-8")
            log.info("ais_bench: %s", shlex.join(cmd))
            procs.append((d, cmd, log_path, handle, subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT,
                                                                       env=dict(os.environ))))
        for d, cmd, log_path, handle, proc in procs:
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise BackendError(f"ais_bench on device {d} did not finish within {timeout_s:.0f} s; log: {log_path}") from None
    finally:
        for _, _, _, handle, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            handle.close()
    runs = []
    for d, cmd, log_path, _, proc in procs:
        if proc.returncode != 0:
            text = log_path.read_text(encoding="utf-8", errors="replace")
            raise BackendError(f"ais_bench on device {d} failed (exit {proc.returncode}): {summarize_atc_failure(text)}; "
                               f"log: {log_path}")
        summary_path = root / f"device{d}_summary.json"
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise BackendError(f"ais_bench on device {d} wrote no readable {summary_path}; log: {log_path}") from None
        runs.append(DeviceRun(d, cmd, root / f"device{d}", log_path, summary))
    return SplitRun(root, tuple(runs))


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


@dataclass(frozen=True)
class AscendOptions:
    """Options of the atc and ais_bench backends (`atc{soc_version=Ascend310P3,max_opset=18}`)."""

    soc_version: str = option(DEFAULT_SOC_VERSION, "target Ascend SoC (atc --soc_version), e.g. Ascend310, Ascend310P3, Ascend910")
    device_id: int = option(0, "NPU the .om runs on (ais_bench)")
    devices: tuple[int, ...] = option((), "NPUs to split evaluate/bench work across, one ais_bench process each (e.g. 0|1|2|3; timing rounds use the first)")
    ais_bench_output: Optional[str] = option(None, "folder that keeps a devices run's inputs and ais_bench outputs (none: a temporary folder)")
    cann: Optional[str] = option(None, f"CANN version whose profile applies, e.g. 8.0 (none: the installed CANN, else {DEFAULT_CANN})")
    min_opset: Optional[int] = option(None, "lowest ai.onnx opset atc accepts (none: the CANN profile's)")
    max_opset: Optional[int] = option(None, "highest ai.onnx opset atc accepts (none: the CANN profile's)")
    check: bool = option(True, "check opset, ops and static shapes before atc runs")
    extra_ops: tuple[str, ...] = option((), "op types to accept beyond the CANN profile's op list")
    precision_mode: Optional[str] = option(None, "atc --precision_mode, e.g. force_fp16, allow_mix_precision")
    precision_mode_v2: Optional[str] = option(None, "atc --precision_mode_v2 (CANN 8.x and later), e.g. fp16, origin")
    dynamic_batch_sizes: tuple[int, ...] = option((), "batch gears, atc --dynamic_batch_size (e.g. 1|4|8)")
    dynamic_image_sizes: tuple[str, ...] = option((), "HxW gears, atc --dynamic_image_size (e.g. 512x512|1024x2048)")
    insert_op_conf: Optional[str] = option(None, "AIPP config file, atc --insert_op_conf (compile --aipp PRESET writes one)")
    precision_config: Optional[str] = option(None, "a mixed-precision directory (keep_dtype.cfg, precision.json; report --per-node fp16 writes one): atc --keep_dtype, the matching precision mode, --op_precision_mode")
    extra_args: tuple[str, ...] = option((), "arguments appended to the atc command line as given")
    log_level: Literal["debug", "info", "warning", "error", "null"] = option("error", "atc --log level")
    timeout_s: Optional[float] = option(None, "seconds atc may run (none: no limit)")


class _AscendBackend(Backend):
    """Compiles with CANN atc and runs the .om through ais_bench (see the module docstring)."""

    Options = AscendOptions
    artifact_suffix = ".om"

    def __init__(self, options: AscendOptions | None = None, **kwargs: object) -> None:
        super().__init__(options, **kwargs)
        self.last_result: CompileResult | None = None

    @property
    def profile(self) -> CannProfile:
        """The CANN profile the options select (option ``cann``, else the installed CANN, else the default)."""
        return select_profile(self.options.cann)

    def opset_range(self) -> tuple[int, int]:
        """(min_opset, max_opset): the options where given, else the profile's."""
        o, prof = self.options, self.profile
        return (prof.min_opset if o.min_opset is None else o.min_opset,
                prof.max_opset if o.max_opset is None else o.max_opset)

    def validate(self) -> None:
        o = self.options
        check_non_negative(self, "device_id", *[n for n in ("min_opset", "max_opset") if getattr(o, n) is not None])
        try:
            check_devices(o.devices)
        except BackendError as exc:
            raise BackendError(f"backend '{self.name}': {exc}") from None
        try:
            prof = self.profile
        except BackendError as exc:
            raise BackendError(f"backend '{self.name}': {exc}") from None
        low, high = self.opset_range()
        if low > high:
            raise BackendError(f"backend '{self.name}': min_opset {low} is above max_opset {high}")
        if o.timeout_s is not None and o.timeout_s <= 0:
            raise BackendError(f"backend '{self.name}': option 'timeout_s' must be positive, got {o.timeout_s}")
        for name in ("precision_mode", "precision_mode_v2"):
            if getattr(o, name) and not prof.has_option(name):
                raise BackendError(f"backend '{self.name}': atc --{name} does not exist in CANN {prof.line} "
                                   f"(profile {prof.version}); choose another --cann or leave it out")
        if o.precision_mode and o.precision_mode_v2:
            raise BackendError(f"backend '{self.name}': atc takes --precision_mode or --precision_mode_v2, not both")
        for name, flag in (("dynamic_batch_sizes", "dynamic_batch_size"), ("dynamic_image_sizes", "dynamic_image_size")):
            if getattr(o, name) and not prof.has_option(flag):
                raise BackendError(f"backend '{self.name}': atc --{flag} is not in the CANN {prof.line} profile")
        if any(b <= 0 for b in o.dynamic_batch_sizes):
            raise BackendError(f"backend '{self.name}': batch gears must be positive, got {'|'.join(map(str, o.dynamic_batch_sizes))}")
        for text in o.dynamic_image_sizes:
            try:
                parse_image_size(text)
            except BackendError as exc:
                raise BackendError(f"backend '{self.name}': {exc}") from None

    def atc_path(self) -> str:
        found = shutil.which("atc")
        if not found:
            raise BackendUnavailable(ATC_MISSING)
        return found

    def compile(self, model: str | Path | onnx.ModelProto, output: str | Path | None = None) -> Path:
        """Runs atc; returns the .om path. `output` may end in .om or not; default: next to the model.
        A path that already is an .om is returned unchanged.

        Raises:
            BackendError: the model fails the opset/op checks, or atc fails (first error-code line quoted).
            BackendUnavailable: atc is not on PATH.
        """
        if self.is_artifact(model):
            return Path(model)  # type: ignore[arg-type]
        return self.compile_full(model, output).om_path

    def _check(self, proto: onnx.ModelProto, label: str) -> None:
        if not self.options.check:
            return
        low, high = self.opset_range()
        problems = check_model_for_atc(proto, low, high, frozenset(self.options.extra_ops), self.profile)
        if problems:
            more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
            raise BackendError(f"{label}: atc would reject this model: {problems[0]}{more}")

    def precision_config(self, proto: onnx.ModelProto) -> PrecisionConfig | None:
        """The option ``precision_config`` read and checked against `proto` and the CANN profile (None: not set).

        Raises:
            BackendError: files missing, a node the model lacks, an option the CANN line lacks, or a
                precision mode given with it under which atc ignores keep_dtype (origin, must_keep_origin_dtype).
        """
        o = self.options
        if not o.precision_config:
            return None
        config = read_precision_config(o.precision_config, [n.name for n in proto.graph.node], self.profile)
        if o.precision_mode == "must_keep_origin_dtype" or o.precision_mode_v2 == "origin":
            raise BackendError(f"backend '{self.name}': atc ignores --keep_dtype under "
                               f"{'--precision_mode=must_keep_origin_dtype' if o.precision_mode else '--precision_mode_v2=origin'}; "
                               "leave the precision mode out with --precision-config")
        return config

    def _plan(self, proto: onnx.ModelProto, model_path: Path, out_base: Path, atc: str) -> AtcPlan:
        o = self.options
        config = self.precision_config(proto)
        mode, mode_v2 = o.precision_mode, o.precision_mode_v2
        if config is not None and not (mode or mode_v2):  # the mode keep_dtype goes with, by CANN line
            mode, mode_v2 = config.precision_mode, config.precision_mode_v2
        return plan_atc(proto, model_path, out_base, o.soc_version, atc, o.log_level, o.extra_args,
                        precision_mode=mode, precision_mode_v2=mode_v2,
                        dynamic_batch_sizes=o.dynamic_batch_sizes, dynamic_image_sizes=o.dynamic_image_sizes,
                        insert_op_conf=o.insert_op_conf,
                        keep_dtype=str(config.keep_dtype) if config else None,
                        op_precision_mode=str(config.op_precision) if config and config.op_precision else None)

    def plan(self, model: str | Path, output: str | Path | None = None) -> AtcPlan:
        """The atc command `compile` would run for the model file, without running it (a dry run).

        Checks the model as `compile` does; atc need not be installed (the command then says ``atc``).

        Raises:
            BackendError: the model fails the checks, or the gears do not fit it.
        """
        proto = load_model_arg(model)
        self._check(proto, str(model))
        out = Path(output) if output is not None else Path(model).with_suffix(".om")
        out_base = Path(str(out)[:-3] if str(out).endswith(".om") else str(out))
        return self._plan(proto, Path(model), out_base, shutil.which("atc") or "atc")

    def compile_full(self, model: str | Path | onnx.ModelProto, output: str | Path | None = None) -> CompileResult:
        """`compile`, returning the command line and log path as well; writes ``NAME.om.json`` (the command,
        the CANN profile, the recorded pipeline) beside the .om."""
        o = self.options
        proto = load_model_arg(model)
        label = str(model) if not isinstance(model, onnx.ModelProto) else (proto.graph.name or "<model>")
        self._check(proto, label)
        self.precision_config(proto)  # a bad precision config fails before atc is looked for
        atc = self.atc_path()
        if output is None:
            if isinstance(model, onnx.ModelProto):
                raise BackendError("atc: an output path is needed when compiling an in-memory model")
            output = Path(model).with_suffix(".om")
        out_base = Path(str(output)[:-3] if str(output).endswith(".om") else str(output))
        if not out_base.parent.is_dir():
            raise BackendError(f"{out_base.parent}: output directory does not exist")
        om_path = out_base.with_name(out_base.name + ".om")

        with tempfile.TemporaryDirectory(prefix="onnxforge-atc-") as tmp:
            if isinstance(model, onnx.ModelProto):
                model_path = Path(tmp) / "model.onnx"
                onnx.save_model(proto, str(model_path))
            else:
                model_path = Path(model)
            plan = self._plan(proto, model_path, out_base, atc)
            log.info("atc: %s", " ".join(plan.command))
            try:
                proc = subprocess.run(plan.command, capture_output=True, text=True, timeout=o.timeout_s,
                                      env=dict(os.environ))
            except subprocess.TimeoutExpired:
                raise BackendError(f"{label}: atc did not finish within {o.timeout_s:.0f} s") from None
            except OSError as exc:
                raise BackendError(f"{label}: cannot run atc ({atc}): {exc}") from None
        text = (proc.stdout or "") + ("\n" if proc.stdout and proc.stderr else "") + (proc.stderr or "")
        log_path = out_base.with_name(out_base.name + ".atc.log")
        try:
            write_text_atomic(log_path, " ".join(plan.command) + "\n\n" + text)
        except OSError:
            log_path = None
        if proc.returncode != 0:
            where = f"; full log: {log_path}" if log_path else ""
            raise BackendError(f"{label}: atc failed (exit {proc.returncode}): {summarize_atc_failure(text)}{where}")
        if not om_path.is_file():
            raise BackendError(f"{label}: atc exited 0 but wrote no {om_path}")
        self.last_result = CompileResult(om_path, plan.command, log_path, plan)
        record = {"model": label, **(self.compile_record() or {})}
        write_text_atomic(om_path.with_name(om_path.name + ".json"), json.dumps(record, indent=2) + "\n")
        return self.last_result

    def _precision_record(self) -> dict | None:
        """What the sidecar records of a precision config: its directory and the files' contents."""
        if not self.options.precision_config:
            return None
        d = Path(self.options.precision_config)
        files = {f.name: f.read_text() for f in sorted(d.iterdir()) if f.is_file() and f.suffix in (".cfg", ".ini")}
        return {"directory": str(d), "files": files}

    def compile_notes(self) -> list[str]:
        """The atc command line of the last compile, and the pipeline recorded in the model, if any."""
        result = self.last_result
        if result is None:
            return []
        lines = [f"command: {result.plan.shell()}", f"CANN profile: {self.profile.version} ({self.profile.line})"]
        if result.plan.pipeline:
            lines.append(f"pipeline recorded in the model: {result.plan.pipeline}")
        return lines

    def compile_record(self) -> dict[str, object] | None:
        """The last compile as the .om's sidecar JSON and the A/B report record it: the exact atc argv, its
        shell form, the .om, the CANN profile, the pipeline recorded in the model and the planner's notes."""
        result = self.last_result
        if result is None:
            return None
        return {"tool": "atc", "om": str(result.om_path), "command": list(result.command), "shell": result.plan.shell(),
                "cann_profile": self.profile.version, "pipeline": result.plan.pipeline, "notes": list(result.plan.notes),
                "precision_config": self._precision_record()}

    def runner(self, artifact: str | Path) -> AisBenchRunner:
        """An ais_bench runner on an .om (BackendUnavailable without the ais_bench package); with ``devices``
        it runs on the first of them."""
        import_infer_session()
        o = self.options
        return AisBenchRunner(Path(artifact), device_id=o.devices[0] if o.devices else o.device_id)

    def split_devices(self) -> tuple[int, ...]:
        return tuple(self.options.devices)

    def split_work(self, names: Sequence[str]) -> dict[int, list[str]]:
        """`split_work` on ``devices``; BackendUnavailable first where ais_bench cannot run here."""
        check_ais_bench_module()
        return split_work(names, self.options.devices)

    def run_split(self, om: str | Path, output: str | Path, inputs: Mapping[int, Path] | None = None, *,
                  loop: int = 1, warmup: int = 1) -> SplitRun:
        """`run_ais_bench_devices` on this backend's ``devices`` (see the module docstring)."""
        return run_ais_bench_devices(om, output, self.options.devices, inputs, loop=loop, warmup=warmup,
                                     timeout_s=self.options.timeout_s)


class AtcBackend(_AscendBackend):
    """Compiles with CANN atc (needs atc on PATH); runs the .om through ais_bench."""

    name = "atc"
    summary = "compiles ONNX to an Ascend .om with CANN's atc (opset and ops checked first); runs it with ais_bench."

    def check_available(self) -> None:
        self.atc_path()


class AisBenchBackend(_AscendBackend):
    """Runs .om models with ais_bench (needs the package); compiles ONNX with atc first."""

    name = "ais_bench"
    summary = "runs Ascend .om models on an NPU with ais_bench; an ONNX model is compiled with atc first."

    def check_available(self) -> None:
        if self.options.devices:  # a devices run is `python -m ais_bench`, one process per device
            check_ais_bench_module()
        else:
            import_infer_session()
