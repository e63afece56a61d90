"""The per-pass A/B evaluator behind `onnxforge report`, `optimize --auto` and the demo.

Contract of `run_report`:
- The baseline and every stage run on the same inputs and backend. Stages are cumulative by default
  (stage i = passes 1..i) or isolated (each pass alone on the baseline); `per_node="resize-nearest"`
  adds one stage per Resize node (that node alone made nearest) and a combined stage of the nodes whose
  cost stayed within budget.
- Each stage is verified by the pass manager (exact passes numerically), evaluated for accuracy
  (labels where the data has them) and agreement with the baseline, and timed.
- Verdicts follow `history.judge`: approximate passes are never accepted without an accuracy measurement.
- A pass that fails in cumulative mode is recorded as rejected and the next stage continues from the
  last good one.
- Outputs (report.json/.md/.html, the plot, stage models and `best.onnx`) are written atomically under
  `out_dir`; the input model is never modified.
"""

from __future__ import annotations

import logging
import platform
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import onnx

from onnxforge.errors import ForgeError, OutputPathError, PassError
from onnxforge.evaluate.history import StageEval, best_accepted, fill_deltas, judge, model_sha256, primary_metric
from onnxforge.modelio import load_model, save_model
from onnxforge.numerics import DEFAULT_SEED
from onnxforge.passes import Pass, PassManager, parse_pipeline
from onnxforge.passes.pipeline import Pipeline

log = logging.getLogger(__name__)

#: (phase, done, total) — e.g. ("evaluate 2-resize-nearest", 3, 10)
Progress = Callable[[str, int, int], None]


@dataclass
class DataSource:
    """Where accuracy comes from: a dataset on disk (with a preset) or N synthetic images in memory."""

    dataset: str = "synthetic"
    data_root: Path | None = None
    preset: str | None = None
    limit: int | None = None

    def describe(self) -> str:
        if self.dataset == "synthetic" and self.data_root is None:
            return f"{self.limit} synthetic images generated in memory (seed fixed)"
        return f"{self.dataset} at {self.data_root}" + (f", first {self.limit} images" if self.limit else "") + (
            f", preset {self.preset}" if self.preset else "")


@dataclass
class ReportResult:
    stages: list[StageEval]
    best: StageEval
    files: dict[str, Path]
    report: dict
    dropped: list[dict] = field(default_factory=list)


class StageRunner:
    """Evaluates and times stage models against one baseline (kept for agreement)."""

    def __init__(self, baseline: onnx.ModelProto, data: DataSource, backend: str, batch_sizes: Sequence[int],
                 threads: int, progress: Progress | None, iters: int = 20) -> None:
        self.baseline = baseline
        self.data = data
        self.backend = backend
        self.batch_sizes = list(batch_sizes)
        self.threads = threads
        self.progress = progress
        self.iters = iters
        self.num_classes = _classes_of(baseline)

    def measure(self, stage: StageEval, model: onnx.ModelProto, with_reference: bool) -> None:
        from onnxforge.evaluate.evaluator import evaluate

        cb = (lambda d, t: self.progress(f"evaluate {stage.name}", d, t)) if self.progress else None
        result = evaluate(
            model, self.data.dataset, self.data.data_root, preset=self.data.preset, backend=self.backend,
            limit=self.data.limit, progress=cb, reference=self.baseline if with_reference else None,
            num_classes=self.num_classes, backend_options={"threads": self.threads} if self.backend == "onnxruntime" and self.threads else None,
        )
        stage.accuracy = {k: float(v) for k, v in result.metrics.items() if v is not None}
        stage.agreement = {k: float(v) for k, v in (result.agreement or {}).items() if v is not None}

    def time_all(self, pairs: Sequence[tuple[StageEval, onnx.ModelProto]], warmup: int = 3) -> None:
        """Times every stage round-robin per batch size (`bench.round_robin`); fills `latency_ms` (first
        batch size) and `throughput`."""
        import numpy as np

        from onnxforge.evaluate.bench import round_robin

        n = len(self.batch_sizes)
        for bi, b in enumerate(self.batch_sizes):
            cb = (lambda d, t, bi=bi: self.progress("timing all stages (round-robin)", bi * t + d, n * t)) if self.progress else None
            samples = round_robin([m for _, m in pairs], b, self.backend, self.threads, warmup, self.iters, cb)
            for (stage, _), times in zip(pairs, samples):
                p50, p90 = (float(v) for v in np.percentile(times, [50, 90]))
                if bi == 0:
                    stage.latency_ms = {"p50": round(p50, 3), "p90": round(p90, 3)}
                stage.throughput[str(b)] = round(b * 1000.0 / p50, 2)


def _classes_of(model: onnx.ModelProto) -> int | None:
    out = model.graph.output[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in out.shape.dim]
    if out.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and len(dims) == 4 and dims[1] and dims[1] > 1:
        return int(dims[1])
    return None


def _stage_from(name: str, p: Pass | None, pipeline: str, parent: str | None, model: onnx.ModelProto, record=None) -> StageEval:
    stage = StageEval(
        name=name, pipeline=pipeline, pass_=str(p) if p else None, kind=p.effective_kind().value if p else None,
        parent=parent, model_sha256=model_sha256(model), nodes=len(model.graph.node),
    )
    if record is not None:
        stage.modified = record.modified
        stage.pass_stats = dict(record.stats)
        stage.pass_notes = list(record.notes)
        stage.verification = {"status": record.verification.status, "detail": record.verification.detail}
    return stage


def _apply(p: Pass, model: onnx.ModelProto, seed: int):
    result = PassManager([p], seed=seed).run(model)
    return result.model, result.stages[0]


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_" else "-" for c in text)
    return keep.strip("-")[:60]


def run_report(
    model_path: str | Path,
    pipeline: str | Pipeline,
    out_dir: str | Path,
    data: DataSource,
    backend: str = "onnxruntime",
    batch_sizes: Sequence[int] = (1,),
    isolated: bool = False,
    budget: float = 0.01,
    per_node: str | None = None,
    threads: int = 0,
    seed: int = DEFAULT_SEED,
    iters: int = 20,
    progress: Progress | None = None,
    command: str | None = None,
) -> ReportResult:
    """Runs the baseline and every stage, judges them, and writes the report under `out_dir`."""
    from onnxforge.evaluate.report_files import write_report_files

    model_path = Path(model_path)
    out_dir = Path(out_dir)
    pipe = pipeline if isinstance(pipeline, Pipeline) else parse_pipeline(pipeline)
    if per_node not in (None, "resize-nearest"):
        raise ForgeError(f"--per-node supports resize-nearest only, not {per_node!r}")
    if budget < 0:
        raise ForgeError(f"budget must be >= 0, got {budget}")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputPathError(f"{out_dir}: exists and is not a directory")
    baseline_model = load_model(model_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "stages").mkdir(exist_ok=True)
    t0 = time.perf_counter()

    runner = StageRunner(baseline_model, data, backend, batch_sizes, threads, progress, iters)
    base = _stage_from("baseline", None, "", None, baseline_model)
    base.verdict, base.reason = "baseline", "the input model"
    base.model_file = str(save_model(baseline_model, out_dir / "stages" / "00_baseline.onnx").relative_to(out_dir))
    runner.measure(base, baseline_model, with_reference=False)
    stages = [base]
    models = {"baseline": baseline_model}

    current, current_name, applied = baseline_model, "baseline", []
    for i, p in enumerate(pipe.passes, start=1):
        parent_model, parent_name = (baseline_model, "baseline") if isolated else (current, current_name)
        name = f"{i}-{p.name}"
        stage_pipeline = str(p) if isolated else ",".join(applied + [str(p)])
        try:
            model, record = _apply(p, parent_model, seed)
        except PassError as exc:
            stage = _stage_from(name, p, stage_pipeline, parent_name, parent_model)
            stage.verification = {"status": "failed", "detail": str(exc)}
            stage.verdict, stage.reason = "rejected", f"pass failed: {exc}"
            stages.append(stage)
            continue
        stage = _stage_from(name, p, stage_pipeline, parent_name, model, record)
        stage.model_file = str(save_model(model, out_dir / "stages" / f"{i:02d}_{_slug(p.name)}.onnx").relative_to(out_dir))
        runner.measure(stage, model, with_reference=True)
        stages.append(stage)
        models[name] = model
        if not isolated:
            current, current_name = model, name
            applied.append(str(p))

    if per_node == "resize-nearest":
        stages += _per_node_resize(baseline_model, base, runner, out_dir, budget, seed, models)

    runner.time_all([(s, models[s.name]) for s in stages if s.name in models])
    for s in stages[1:]:
        if s.verdict:
            fill_deltas(s, base)  # judged on accuracy before timing (per-node): add the speed now
        else:
            judge(s, base, budget)
    best = best_accepted(stages)
    best_file = save_model(models[best.name], out_dir / "best.onnx")
    env = environment(backend, threads, seed)
    report = {
        "model": str(model_path),
        "pipeline": str(pipe),
        "mode": "isolated" if isolated else "cumulative",
        "data": data.describe(),
        "backend": backend,
        "batch_sizes": list(batch_sizes),
        "budget": budget,
        "metric": primary_metric(base.accuracy),
        "best": {"stage": best.name, "pipeline": best.pipeline, "model": str(best_file.relative_to(out_dir)),
                 "latency_ms": best.latency_ms, "accuracy": best.accuracy},
        "environment": env,
        "seconds": round(time.perf_counter() - t0, 2),
        "commands": [c for c in (command,
                                 f"onnxforge optimize {shlex.quote(str(model_path))} -o best.onnx --passes {shlex.quote(best.pipeline)}" if best.pipeline else None) if c],
    }
    files = write_report_files(out_dir, report, stages)
    files["best"] = best_file
    return ReportResult(stages, best, files, report)


def _per_node_resize(baseline_model, base, runner, out_dir, budget, seed, models) -> list[StageEval]:
    """One stage per Resize node (that node alone nearest), then the combination of the cheap ones."""
    from onnxforge.passes.registry import get_pass

    cls = get_pass("resize-nearest")
    names = [n.name for n in baseline_model.graph.node if n.op_type == "Resize" and n.name]
    out: list[StageEval] = []
    keep: list[str] = []
    for j, node in enumerate(names, start=1):
        p = cls(nodes=(node,))
        name = f"node-{_slug(node)}"
        try:
            model, record = _apply(p, baseline_model, seed)
        except PassError as exc:
            log.warning("per-node %s: %s", node, exc)
            continue
        stage = _stage_from(name, p, str(p), "baseline", model, record)
        if not stage.modified:
            continue
        stage.model_file = str(save_model(model, out_dir / "stages" / f"node{j:02d}_{_slug(node)}.onnx").relative_to(out_dir))
        runner.measure(stage, model, with_reference=True)
        judge(stage, base, budget)  # accuracy verdict now (to choose nodes); speed is filled in later
        out.append(stage)
        models[name] = model
        if stage.verdict == "accepted":
            keep.append(node)
    if keep and len(keep) != len(names):
        p = cls(nodes=tuple(keep))
        model, record = _apply(p, baseline_model, seed)
        stage = _stage_from("nodes-within-budget", p, str(p), "baseline", model, record)
        stage.model_file = str(save_model(model, out_dir / "stages" / "nodes_within_budget.onnx").relative_to(out_dir))
        runner.measure(stage, model, with_reference=True)
        out.append(stage)
        models[stage.name] = model
    return out


def environment(backend: str, threads: int, seed: int) -> dict[str, str]:
    import numpy
    import onnxruntime

    import onnxforge

    env = {
        "onnxforge": onnxforge.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "backend": backend,
        "threads": str(threads or "default"),
        "seed": str(seed),
    }
    try:
        import onnxsim

        env["onnxsim"] = getattr(onnxsim, "__version__", "?")
    except ImportError:
        pass
    return env


def auto_select(
    model: onnx.ModelProto,
    pipeline: str | Pipeline,
    data: DataSource,
    backend: str = "onnxruntime",
    budget: float = 0.01,
    threads: int = 0,
    seed: int = DEFAULT_SEED,
    min_gain: float = 0.02,
    iters: int = 20,
    progress: Progress | None = None,
) -> tuple[onnx.ModelProto, list[StageEval], list[dict]]:
    """Greedy in pipeline order: keep a pass when accuracy stays within budget and it pays.

    An exact pass is kept unless it makes the model slower by more than `min_gain`; an approximate pass
    is kept only if it is faster by at least `min_gain` (relative p50) and within budget. Returns the
    final model, the stage records, and the dropped passes with reasons.
    """
    pipe = pipeline if isinstance(pipeline, Pipeline) else parse_pipeline(pipeline)
    runner = StageRunner(model, data, backend, (1,), threads, progress, iters)
    base = _stage_from("baseline", None, "", None, model)
    base.verdict, base.reason = "baseline", "the input model"
    runner.measure(base, model, with_reference=False)
    runner.time_all([(base, model)])
    stages, dropped = [base], []
    current, current_stage, kept = model, base, []
    for i, p in enumerate(pipe.passes, start=1):
        name = f"{i}-{p.name}"
        try:
            cand, record = _apply(p, current, seed)
        except PassError as exc:
            dropped.append({"pass": str(p), "reason": f"failed: {exc}"})
            continue
        stage = _stage_from(name, p, ",".join(kept + [str(p)]), current_stage.name, cand, record)
        if not stage.modified:
            dropped.append({"pass": str(p), "reason": "changed nothing: " + "; ".join(stage.pass_notes)})
            continue
        runner.measure(stage, cand, with_reference=True)
        runner.time_all([(current_stage, current), (stage, cand)])
        judge(stage, base, budget)
        gain = current_stage.latency_ms["p50"] / stage.latency_ms["p50"] - 1.0
        stages.append(stage)
        if stage.verdict != "accepted":
            dropped.append({"pass": str(p), "reason": stage.reason})
            continue
        if stage.kind == "exact" and gain < -min_gain:
            stage.verdict, stage.reason = "rejected", f"exact but {-gain:.1%} slower on {backend}"
        elif stage.kind != "exact" and gain < min_gain:
            stage.verdict, stage.reason = "rejected", f"costs accuracy but gains only {gain:+.1%} latency on {backend} (need {min_gain:.0%})"
        if stage.verdict == "rejected":
            dropped.append({"pass": str(p), "reason": stage.reason})
            continue
        current, current_stage = cand, stage
        kept.append(str(p))
    return current, stages, dropped
