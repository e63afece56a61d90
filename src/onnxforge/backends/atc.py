"""atc backend: compiles ONNX models to Ascend offline models (.om) with CANN's `atc`.

The command is derived from the model itself:

    atc --framework=5 --model=M.onnx --output=OUT --input_shape=image:1,3,1024,2048
        --soc_version=Ascend310P3 [--output_type=FP16] [--input_fp16_nodes=image]
        --input_format=NCHW --log=error

- ``--output`` has no ``.om`` suffix: atc appends it.
- ``--input_shape`` comes from the graph's (static) input shapes; several inputs are joined with ``;``.
- ``--output_type=FP16`` when the graph outputs are float16 (after the ``fp16-output`` pass);
  ``--input_fp16_nodes=NAME`` for every float16 graph input (after ``fp16-input``). The graph is the
  source of truth; the pipeline recorded by the pass manager in ``metadata_props['onnxforge.pipeline']``
  is read, reported, and a disagreement with the graph is logged.

Before calling atc the model is checked against what atc accepts: the ai.onnx opset (CANN 5.0.4's ATC
guide: "ONNX 1.8.0, Opset v9~v13"; CANN 7.0's: "Opset v9~v18"; default 9..13, override with
``max_opset``) and every op type against the ONNX operator list of the same CANN 5.0.4 documentation
("支持ONNX算子清单", hiascend.com canncommercial/5046 reference/fwoperatorlist).
A missing atc is BackendUnavailable with the exact fix; a failing atc is a BackendError quoting its
first error-code line (``E10001: ...``) and pointing at the full log written next to the output.

The atc backend runs its .om artifacts through ais_bench (see `ais_bench.py`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from onnxforge.backends.base import Backend, Runner, load_model_arg, model_inputs, model_outputs
from onnxforge.errors import BackendError, BackendUnavailable
from onnxforge.modelio import write_text_atomic

log = logging.getLogger(__name__)

PIPELINE_KEY = "onnxforge.pipeline"
DEFAULT_SOC_VERSION = "Ascend310P3"
MIN_OPSET = 9
MAX_OPSET = 13

ATC_MISSING = "atc not found on PATH: install the CANN toolkit and run 'source /usr/local/Ascend/ascend-toolkit/set_env.sh'"

#: ONNX ops the CANN 5.0.4 ATC documentation lists as supported (ai.onnx domain), in ONNX spelling.
ATC_ONNX_OPS: frozenset[str] = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization BitShift Cast
Ceil Celu Clip Compress Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
Det Div Dropout Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual HardSigmoid Hardmax HardSwish
Identity If InstanceNormalization LRN LSTM LeakyRelu Less LessOrEqual Log LogSoftmax LpNormalization
LpPool MatMul Max MaxPool MaxRoiPool MaxUnpool Mean MeanVarianceNormalization Min Mod Mul Multinomial
Neg NonMaxSuppression NonZero Not OneHot Or PRelu Pad Pow RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign Round
Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tanh TfIdfVectorizer ThresholdedRelu Tile TopK
Transpose Unsqueeze Where Xor
""".split())

_ERROR_CODE = re.compile(r"\b[EW]\d{5}\b")


@dataclass(frozen=True)
class AtcPlan:
    """What `compile` will run, and why."""

    command: list[str]
    fp16_outputs: bool
    fp16_inputs: tuple[str, ...]
    pipeline: str | None  # as recorded in metadata_props, if any
    notes: tuple[str, ...] = field(default_factory=tuple)


def recorded_pipeline(model: onnx.ModelProto) -> str | None:
    """The pipeline the pass manager recorded in the model's metadata_props, or None."""
    for prop in model.metadata_props:
        if prop.key == PIPELINE_KEY:
            return prop.value
    return None


def _pipeline_passes(pipeline: str | None) -> set[str]:
    if not pipeline:
        return set()
    # drop {options} blocks (they may contain commas), then split on commas
    flat = re.sub(r"\{[^}]*\}", "", pipeline)
    return {p.strip() for p in flat.split(",") if p.strip()}


def ai_onnx_opset(model: onnx.ModelProto) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def check_model_for_atc(model: onnx.ModelProto, min_opset: int = MIN_OPSET, max_opset: int = MAX_OPSET,
                        extra_ops: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Everything atc would reject, as readable lines (empty when the model looks acceptable)."""
    problems: list[str] = []
    opset = ai_onnx_opset(model)
    if opset is None:
        problems.append("model imports no ai.onnx opset")
    elif not (min_opset <= opset <= max_opset):
        problems.append(
            f"ai.onnx opset {opset} is outside what atc accepts ({min_opset}..{max_opset}); convert it first, "
            f"e.g. --passes 'target-opset{{opset=11}}'"
        )
    allowed = ATC_ONNX_OPS | set(extra_ops)
    bad: dict[str, list[str]] = {}
    for i, node in enumerate(model.graph.node):
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


def plan_atc(model: onnx.ModelProto, model_path: str | Path, output: str | Path,
             soc_version: str = DEFAULT_SOC_VERSION, atc: str = "atc", log_level: str = "error",
             extra_args: tuple[str, ...] = ()) -> AtcPlan:
    """The exact atc command line for `model` (saved at `model_path`), writing `output` (+ '.om')."""
    out = str(output)
    if out.endswith(".om"):
        out = out[: -len(".om")]
    inputs = model_inputs(model)
    shapes = []
    for inp in inputs:
        if not inp.is_static:
            raise BackendError(f"{model_path}: input '{inp.name}' has dynamic shape {list(inp.shape)}; atc needs static shapes")
        shapes.append(f"{inp.name}:{','.join(str(d) for d in inp.shape)}")
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


class AtcBackend(Backend):
    """Compiles with CANN atc; runs the .om through ais_bench (see the module docstring)."""

    name = "atc"
    artifact_kind = "file"

    def __init__(self, soc_version: str = DEFAULT_SOC_VERSION, min_opset: int = MIN_OPSET,
                 max_opset: int = MAX_OPSET, check: bool = True, extra_ops: tuple[str, ...] = (),
                 extra_args: tuple[str, ...] = (), log_level: str = "error", device_id: int = 0,
                 timeout_s: float | None = None, **options: Any) -> None:
        super().__init__(soc_version=soc_version, **options)
        self.soc_version = soc_version
        self.min_opset = min_opset
        self.max_opset = max_opset
        self.check = check
        self.extra_ops = frozenset(extra_ops)
        self.extra_args = tuple(extra_args)
        self.log_level = log_level
        self.device_id = device_id
        self.timeout_s = timeout_s
        self.last_result: CompileResult | None = None

    def atc_path(self) -> str:
        found = shutil.which("atc")
        if not found:
            raise BackendUnavailable(ATC_MISSING)
        return found

    def check_available(self) -> None:
        self.atc_path()

    def compile(self, model: str | Path | onnx.ModelProto, output: str | Path | None = None) -> Path:
        """Runs atc; returns the .om path. `output` may end in .om or not; default: next to the model.

        Raises:
            BackendError: the model fails the opset/op checks, or atc fails (first error-code line quoted).
            BackendUnavailable: atc is not on PATH.
        """
        return self.compile_full(model, output).om_path

    def compile_full(self, model: str | Path | onnx.ModelProto, output: str | Path | None = None) -> CompileResult:
        """`compile`, returning the command line and log path as well."""
        proto = load_model_arg(model)
        label = str(model) if not isinstance(model, onnx.ModelProto) else (proto.graph.name or "<model>")
        if self.check:
            problems = check_model_for_atc(proto, self.min_opset, self.max_opset, self.extra_ops)
            if problems:
                more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
                raise BackendError(f"{label}: atc would reject this model: {problems[0]}{more}")
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
            plan = plan_atc(proto, model_path, out_base, self.soc_version, atc, self.log_level, self.extra_args)
            log.info("atc: %s", " ".join(plan.command))
            try:
                proc = subprocess.run(plan.command, capture_output=True, text=True, timeout=self.timeout_s,
                                      env=dict(os.environ))
            except subprocess.TimeoutExpired:
                raise BackendError(f"{label}: atc did not finish within {self.timeout_s:.0f} s") from None
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
        return self.last_result

    def runner(self, artifact: str | Path) -> Runner:
        from onnxforge.backends.ais_bench import AisBenchRunner

        return AisBenchRunner(Path(artifact), device_id=self.device_id)
