"""The per-pass A/B evaluator behind `onnxforge report`, `optimize --auto` and the demo.

Contract of `run_report` (and `decide_pipeline`, its file-less core):
- The baseline and every stage run on the same inputs and backend. Stages are cumulative by default
  (one pass-manager run with `ABInstrument` keeping the model after each pass: stage i = passes 1..i) or
  isolated (each pass alone on the baseline). `per_node=PASS` adds one stage per node PASS selects
  (`PASS.candidates(model)`, `PASS.with_nodes(names)`), alone on the baseline, and a stage of the nodes
  whose accuracy stayed within budget. For ``fp16`` and ``quantize`` it is a keep-set search instead
  (`evaluate.keep_search`, via `fp16_search.search_fp16` / `int8_search.keep_in_float`) on the model
  before that pass, on the first SEARCH_IMAGES images, confirmed on the full data, judged on the
  report's judged metric; when everything in low precision is over budget a ``mixed-precision``
  (``fp16{keep=...}``) or ``quantize-keep-set`` (``quantize{exclude=...}``) stage follows the pass's
  own, judged like any stage; `Decision.searches` holds the per-node tables, and `run_report` writes
  the fp16 keep-set for atc under ``precision/``. Without it, an over-budget fp16/quantize stage adds a
  warning naming the flag.
- Each stage is verified by the pass manager (exact passes numerically). Every stage model is produced
  first; then the baseline, the stages and the per-node variants are evaluated for accuracy and agreement
  with the baseline as independent work units on an executor (`evaluate.executor`: serial by default, a
  process pool or Ray; results in input order, identical whichever runs them), each looked up in the
  evaluation cache first where one is given. Then all stages are timed together, serially in this
  process, in interleaved rounds with an A/A copy of the baseline measuring the noise floor
  (`evaluate.timing`), adaptively; never concurrent with an evaluation.
- Verdicts follow `history.judge_accuracy` + `history.decide`: two axes (accuracy within/over budget;
  speed faster/same/slower than the parent, with its interval). Deterministic for the same samples.
- The combined stage is the pipeline of every kept pass, applied to the baseline, measured against it;
  if it is kept it is `best.onnx`; if not, the exact kept passes alone (``combined-exact``) are tried
  the same way; else the baseline is best.onnx (and the report says why).
- A meaningless baseline (chance-level accuracy, exported without a checkpoint, a class-count
  mismatch) switches judging to agreement with the baseline, and the report says so at the top.
- Outputs are written all or nothing (`modelio.staging_dir`): the input model is never modified;
  on an error or Ctrl-C nothing of the new run is left and an existing report stays as it was.
- With an `EvalCache` (`cache=`), every evaluation (baseline, stages, per-node and combined stages) is
  looked up by content before it runs and stored as soon as it has run, so a rerun with the same inputs
  reuses them and a run interrupted after some stages resumes from them; the cache's `stats` count the
  reuse. Timing runs are reused only with `cache_latency=True` (timings depend on the machine's state).
"""

from __future__ import annotations

import logging
import platform
import shlex
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from onnxforge.backends import Backend
from onnxforge.errors import ForgeError, OutputPathError, PassError
from onnxforge.evaluate.cache import EvalCache
from onnxforge.evaluate.evaluator import REUSED_NOTE
from onnxforge.evaluate.executor import EvalUnit, Executor, ModelBlob, SerialExecutor, run_eval_unit
from onnxforge.evaluate.history import (
    AGREEMENT_FOR, Budget, StageEval, decide, fill_deltas, judge_accuracy, meaningless_reasons, model_sha256, primary_metric,
)
from onnxforge.evaluate.timing import TimingPolicy, Timings, analyse, measure_interleaved
from onnxforge.modelio import load_model
from onnxforge.numerics import DEFAULT_SEED
from onnxforge.passes import Pass, PassManager, parse_pipeline
from onnxforge.passes.manager import Instrument, RunContext, StageRecord
from onnxforge.passes.pipeline import Pipeline

log = logging.getLogger(__name__)

#: (phase, done, total) — e.g. ("evaluate 2-resize-nearest", 3, 10)
Progress = Callable[[str, int, int], None]

#: The A/A copy of the baseline timed in the same rounds (its ratio to the baseline is the noise floor).
AA_NAME = "baseline (A/A copy)"
#: Default timing for reports: adaptive, bounded (the demo passes a tighter time limit).
DEFAULT_TIMING = TimingPolicy(min_rounds=10, max_rounds=200, max_seconds=30.0)
KEEP_STAGES = ("best", "all", "none")
#: where `--per-node fp16` writes the atc precision config in the report directory
PRECISION_DIR = "precision"

#: Agreement metric a meaningless baseline is judged on, by the primary metric it replaces.


@dataclass
class DataSource:
    """Where accuracy comes from: a dataset on disk (with a preset) or N synthetic images in memory."""

    dataset: str = "synthetic"
    data_root: Path | None = None
    preset: str | None = None
    limit: int | None = None
    num_classes: int | None = None  # classes the data has, where the model cannot tell (`--num-classes`)

    def describe(self) -> str:
        if self.dataset == "synthetic" and self.data_root is None:
            return f"{self.limit} synthetic images generated in memory (seed fixed)"
        return f"{self.dataset} at {self.data_root}" + (f", first {self.limit} images" if self.limit else "") + (
            f", preset {self.preset}" if self.preset else "")


@dataclass
class Decision:
    """What `decide_pipeline` found: every stage (the combined one last), the best stage and its model."""

    stages: list[StageEval]
    best: StageEval
    best_model: onnx.ModelProto
    combined: StageEval | None  # the combined stage that became best (None: best is the baseline)
    kept: list[Pass]  # the pipeline of best.onnx, in pipeline order (empty: best is the baseline)
    models: dict[str, onnx.ModelProto]
    judged_on: dict[str, str]  # {"metric": ..., "source": accuracy|agreement}
    warnings: list[str]
    timing: list[dict]  # Timings.to_dict() of each timing run
    #: what the backend ran to compile each evaluated stage (`Backend.compile_record`: atc's exact argv...), by stage
    compiled: dict[str, dict] = field(default_factory=dict)
    #: each stage's evaluation split across devices (`EvalResult.devices`: argv and throughput per device, their sum)
    device_runs: dict[str, dict] = field(default_factory=dict)
    searches: list[dict] = field(default_factory=list)  # keep-set searches (--per-node fp16|quantize)
    precision: Any = None  # the fp16 search's MixedPrecision (written as precision/ by run_report)

    @property
    def kept_pipeline(self) -> str:
        return ",".join(str(p) for p in self.kept)


@dataclass
class ReportResult:
    stages: list[StageEval]
    best: StageEval
    files: dict[str, Path]
    report: dict
    dropped: list[dict] = field(default_factory=list)
    disk_bytes: int = 0


def _classes_of(model: onnx.ModelProto) -> int | None:
    out = model.graph.output[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in out.shape.dim]
    if out.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and len(dims) in (2, 4) and dims[1] and dims[1] > 1:
        return int(dims[1])
    return None


class StageRunner:
    """Evaluates stage models against one baseline (kept for agreement), through `cache` where given, as
    work units on an executor.

    `measure_all` scores many stages in input order, so results do not depend on the executor. In this
    process (the serial executor) the baseline's outputs are recorded while it is evaluated
    (`evaluator.RecordedOutputs`, bounded in memory) and serve as the reference of every stage, so the
    baseline runs once. On a pool or Ray each stage is an `executor.EvalUnit` (the stage's bytes, the
    baseline's bytes as reference, the data description, the backend spec, the thread budget and the
    cache, which the worker reads and writes; the counts come back here from the results)."""

    def __init__(self, baseline: onnx.ModelProto, data: DataSource, backend: str | Backend, threads: int,
                 progress: Progress | None, cache: EvalCache | None = None, cache_latency: bool = False,
                 executor: Executor | None = None) -> None:
        self.baseline = baseline
        self.cache = cache
        self.cache_latency = cache_latency
        from onnxforge.evaluate.evaluator import RecordedOutputs

        self.reference = RecordedOutputs(baseline)
        self.data = data
        self.backend = backend
        self.threads = threads
        self.progress = progress
        self.executor = executor if executor is not None else SerialExecutor()
        self.model_classes = _classes_of(baseline)
        self.num_classes = data.num_classes or self.model_classes
        self.per_image: dict[str, object] = {}  # stage name -> EvalResult.per_image (for the bootstrap)
        self.compiled: dict[str, dict] = {}  # stage name -> Backend.compile_record() of its evaluation
        self.device_runs: dict[str, dict] = {}  # stage name -> EvalResult.devices (evaluation split across devices)
        self.dataset_classes: int | None = None  # as the baseline's evaluation reported it
        self._reference = ModelBlob.of(baseline)

    def unit(self, stage: StageEval, model: onnx.ModelProto, with_reference: bool) -> EvalUnit:
        """The evaluation of `model` as a pure work unit (what an executor runs and a cache can key)."""
        from onnxforge.evaluate.evaluator import data_files

        d = self.data
        if self.cache is not None:
            data_files(self.cache, d.data_root)  # once, here: the units carry it to their workers
        return EvalUnit(model=self._reference if model is self.baseline else ModelBlob.of(model), dataset=d.dataset,
                        data_root=None if d.data_root is None else str(d.data_root), preset=d.preset, limit=d.limit,
                        num_classes=self.num_classes, backend=str(self.backend), threads=self.executor.threads,
                        reference=self._reference if with_reference else None, per_image=True, label=stage.name,
                        cache=self.cache)

    def measure(self, stage: StageEval, model: onnx.ModelProto, with_reference: bool) -> None:
        self.measure_all([(stage, model, with_reference)])

    def _evaluate_here(self, stage: StageEval, model: onnx.ModelProto, with_reference: bool):
        from onnxforge.evaluate.evaluator import evaluate

        cb = (lambda d, t: self.progress(f"evaluate {stage.name}", d, t)) if self.progress else None
        return evaluate(
            model, self.data.dataset, self.data.data_root, preset=self.data.preset, backend=self.backend,
            limit=self.data.limit, progress=cb, reference=self.reference if with_reference else None,
            num_classes=self.num_classes, per_image=True, cache=self.cache, cache_latency=self.cache_latency,
            record=None if with_reference else self.reference,
        )

    def measure_all(self, items: Sequence[tuple[StageEval, onnx.ModelProto, bool]]) -> None:
        """Scores every (stage, model, with_reference) and fills the stages' accuracy and agreement.

        The baseline's unit (with_reference False) must be among the first call's items: it sets the
        dataset's and model's class counts the judging reads."""
        if not items:
            return
        if getattr(self.executor, "in_process", False):  # per-image progress, the recorded baseline, the cache here
            results = [self._evaluate_here(s, m, r) for s, m, r in items]
        else:
            units = [self.unit(s, m, r) for s, m, r in items]
            phase = f"evaluate {len(units)} stages on {self.executor.describe()}"
            cb = (lambda d, t: self.progress(phase, d, t)) if self.progress else None
            results = self.executor.map(run_eval_unit, units, cb)
            if self.cache is not None:
                for result in results:
                    self.cache.count(hit=any(n.startswith(REUSED_NOTE) for n in result.notes))
        for (stage, _, with_reference), result in zip(items, results):
            self._fill(stage, result, with_reference)

    def _fill(self, stage: StageEval, result, with_reference: bool) -> None:
        if result.per_image is not None:
            self.per_image[stage.name] = result.per_image
        if result.compiled:
            self.compiled[stage.name] = result.compiled
        if result.devices:
            self.device_runs[stage.name] = result.devices
        if not with_reference:
            self.dataset_classes = result.dataset_classes
            self.model_classes = result.model_classes or self.model_classes
        stage.accuracy = {k: float(v) for k, v in result.metrics.items() if v is not None}
        stage.agreement = {k: float(v) for k, v in (result.agreement or {}).items() if v is not None}


def _stage_from(name: str, p: Pass | None, pipeline: str, parent: str | None, model: onnx.ModelProto,
                record: StageRecord | None = None) -> StageEval:
    stage = StageEval(
        name=name, pipeline=pipeline, pass_=str(p) if p else None, kind=p.effective_kind().value if p else None,
        parent=parent, model_sha256=model_sha256(model), nodes=len(model.graph.node),
        size_bytes=model.ByteSize(), op_histogram=dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
    )
    if record is not None:
        stage.modified = record.modified
        stage.pass_stats = dict(record.stats)
        stage.pass_notes = list(record.notes)
        stage.verification = {"status": record.verification.status, "detail": record.verification.detail}
    return stage


def _failed_stage(name: str, p: Pass, pipeline: str, parent: str, parent_model: onnx.ModelProto, exc: Exception) -> StageEval:
    stage = _stage_from(name, p, pipeline, parent, parent_model)
    stage.verification = {"status": "failed", "detail": str(exc)}
    stage.accuracy_verdict = "unmeasured"
    stage.verdict, stage.reason = "rejected", f"pass failed: {exc}"
    return stage


class ABInstrument(Instrument):
    """The A/B evaluator's pass-manager instrument: after each pass, the model becomes a stage (named
    `{index}-{pass}`, parent the previous stage) with its model kept for measuring.

    Stages are measured after the manager run, all together (`StageRunner.measure_all`: one executor map,
    so independent stages can run in parallel); timing comes after that, for all stages together (never
    one at a time while the manager runs)."""

    def __init__(self, runner: StageRunner, parent: str = "baseline", offset: int = 0,
                 pipeline_prefix: Sequence[str] = (), parent_model: onnx.ModelProto | None = None) -> None:
        self.runner = runner
        self.parent = parent
        self.parent_model = parent_model if parent_model is not None else runner.baseline
        self.offset = offset
        self.applied = list(pipeline_prefix)
        self.stages: list[StageEval] = []
        self.models: dict[str, onnx.ModelProto] = {}
        self.passes: dict[str, Pass] = {}

    def after_pass(self, ctx: RunContext, p: Pass, state, record: StageRecord) -> None:
        model = state.view()
        name = f"{self.offset + record.index}-{p.name}"
        self.applied.append(str(p))
        stage = _stage_from(name, p, ",".join(self.applied), self.parent, model, record)
        self.stages.append(stage)
        self.models[name], self.passes[name] = model, p
        self.parent, self.parent_model = name, model

    def on_failure(self, ctx: RunContext, p: Pass, index: int, error: ForgeError) -> None:
        name = f"{self.offset + index}-{p.name}"
        self.stages.append(_failed_stage(name, p, ",".join(self.applied + [str(p)]), self.parent, self.parent_model, error))
        self.passes[name] = p


def _node_protocol(pass_name: str):
    """The per-node protocol of `pass_name`: an instance with `candidates(model)` and `with_nodes(names)`."""
    from onnxforge.passes import all_passes
    from onnxforge.passes.registry import get_pass, node_selecting

    if get_pass(pass_name) is None:
        raise ForgeError(f"--per-node: unknown pass {pass_name!r} (known: {', '.join(sorted(all_passes()))})")
    if not node_selecting(pass_name):
        which = ", ".join(n for n in sorted(all_passes()) if node_selecting(n))
        raise ForgeError(f"--per-node {pass_name}: that pass does not select nodes (passes that do: {which})")
    return get_pass(pass_name)()


def _meaningless(base: StageEval, model: onnx.ModelProto, runner: StageRunner) -> list[str]:
    """Why the baseline's accuracy says nothing (empty when it is meaningful): `history.meaningless_reasons`."""
    return meaningless_reasons(model, base.accuracy, runner.num_classes, runner.data.num_classes or runner.dataset_classes,
                               runner.model_classes)


def decide_pipeline(
    model: onnx.ModelProto,
    pipeline: str | Pipeline,
    data: DataSource,
    backend: str | Backend = "onnxruntime",
    budget: Budget | str | float = "1%",
    isolated: bool = False,
    per_node: str | None = None,
    threads: int = 0,
    seed: int = DEFAULT_SEED,
    timing: TimingPolicy = DEFAULT_TIMING,
    verify: bool = True,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.perf_counter,
    candidates_factory: Callable[..., dict] | None = None,
    cache: EvalCache | None = None,
    cache_latency: bool = False,
    executor: Executor | None = None,
) -> Decision:
    """Measures the baseline and every stage, decides each, and measures the combined stage.

    Every stage model is produced first (pass manager), then the baseline, the stages and the per-node
    variants are scored in one `executor` map (default: serially in this process); results and decisions
    do not depend on the executor. Timing runs after that, serially, in this process.

    Args:
        backend: a backend spec (``onnxruntime{device=cuda,threads=2}``) or Backend; every stage is
            evaluated and timed on it (`threads`, when not 0, fills its threads option).
        candidates_factory: builds the timing candidates from {name: model} (default: a backend session
            per model, see `backend_candidates`); tests pass fake runners with a fake `clock`.
        cache: reuse and store every evaluation by content (see the module docstring); None: evaluate all.
        cache_latency: also reuse and store the interleaved timing runs (keyed by the timed models, the
            backend, the policy and the seed).
        executor: where accuracy evaluations run (`evaluate.executor`; the caller closes it).

    Raises:
        ForgeError: bad budget, timing policy or per-node pass; the backend cannot run a model.
    """
    budget = Budget.parse(budget)
    timing.validate()
    pipe = pipeline if isinstance(pipeline, Pipeline) else parse_pipeline(pipeline)
    node_pass = _node_protocol(per_node) if per_node else None
    searched = per_node if per_node in KEEP_SEARCH_PASSES else None
    if searched:
        node_pass = None  # a keep-set search replaces the one-stage-per-node measurement
    backend = resolve_backend(backend, threads)
    runner = StageRunner(model, data, backend, threads, progress, cache, cache_latency, executor)
    timing_cache = (cache, str(backend)) if cache is not None and cache_latency else None
    base = _stage_from("baseline", None, "", None, model)
    base.verdict, base.reason = "baseline", "the input model"
    stages, models, passes, node_of = [base], {"baseline": model}, {}, {}  # node_of: per-node stage -> node

    # every stage model first (the pass manager, serially), then all of them scored in one executor map
    if isolated:
        for i, p in enumerate(pipe.passes, start=1):
            inst = ABInstrument(runner, offset=i - 1)
            try:
                PassManager([p], verify=verify, seed=seed, instruments=[inst]).run(model)
            except PassError:
                pass  # recorded by the instrument
            stages += inst.stages
            models.update(inst.models)
            passes.update(inst.passes)
    else:
        remaining, offset, parent, parent_model, prefix = list(pipe.passes), 0, "baseline", model, []
        while remaining:
            inst = ABInstrument(runner, parent, offset, prefix, parent_model)
            try:
                PassManager(remaining, verify=verify, seed=seed, instruments=[inst]).run(parent_model)
                done = len(remaining)
            except PassError:
                done = len(inst.stages)  # the failed pass is the last stage recorded
            stages += inst.stages
            models.update(inst.models)
            passes.update(inst.passes)
            good = [s for s in inst.stages if s.name in inst.models]
            if good:
                parent, parent_model, prefix = good[-1].name, inst.models[good[-1].name], good[-1].pipeline.split(",")
            offset += done
            remaining = remaining[done:]
    node_stages = _node_variants(node_pass, model, seed, verify) if node_pass is not None else []
    runner.measure_all([(base, model, False)] + [(s, models[s.name], True) for s in stages[1:] if s.name in models]
                       + [(s, m, True) for s, m, _, _ in node_stages])

    warnings = _meaningless(base, model, runner)
    meaningless = bool(warnings)
    metric = primary_metric(base.accuracy)
    judged = {"metric": metric or "", "source": "accuracy"}
    if warnings and metric in AGREEMENT_FOR:
        judged = {"metric": AGREEMENT_FOR[metric], "source": "agreement"}
        warnings.append(f"accuracy is not meaningful: judging on {judged['metric']} (agreement with the baseline) instead")
    for s in stages[1:]:
        if s.verdict != "rejected":
            judge_accuracy(s, base, budget, judged["metric"] or None, judged["source"])

    if node_pass is not None:
        stages += _per_node(node_pass, model, node_stages, base, runner, budget, judged, seed, verify, models, passes, node_of)
    searches: list[dict] = []
    precision = None
    if searched:
        precision = _keep_set_stage(searched, model, stages, models, passes, base, runner, budget, judged, seed,
                                    verify, warnings, searches)
    else:
        for s in stages[1:]:
            if s.accuracy_verdict == "over" and s.pass_ and s.pass_.split("{")[0] in KEEP_SEARCH_PASSES:
                name = s.pass_.split("{")[0]
                warnings.append(f"{s.name} is over the budget: --per-node {name} searches the nodes to keep in "
                                f"{'float32' if name == 'fp16' else 'float'} and adds a {KEEP_SEARCH_PASSES[name]} stage")

    factory = candidates_factory or (lambda ms: backend_candidates(ms, backend))
    timed = [s for s in stages if s.name in models]
    t1 = _time(timed, models, timing, factory, clock, progress, "timing all stages (interleaved)", timing_cache)
    for s in stages[1:]:
        if s.name in models:
            _fill_speed(s, t1, s.parent or "baseline")
        fill_deltas(s, base)
        decide(s, next((p for p in stages if p.name == s.parent), None))
    _fill_latency(stages, t1)
    timings = [t1.to_dict()]

    kept = _kept_passes(pipe, stages, passes, node_pass, node_of)
    combined, best, best_model, chosen = None, base, model, []
    # the kept passes together; if that does not pay, the exact ones among them (they cost no accuracy)
    attempts = [("combined", kept)]
    exact = [p for p in kept if p.effective_kind().value == "exact"]
    if exact and len(exact) < len(kept):
        attempts.append(("combined-exact", exact))
    for name, group in attempts if kept else []:
        stage, stage_model, t2 = _combined(name, group, model, base, stages, models, runner, budget, judged, seed,
                                           verify, timing, factory, clock, progress, t1, timing_cache)
        if t2 is not None:
            timings.append(t2.to_dict())
        stages.append(stage)
        if stage_model is not None:
            models[name] = stage_model
        if stage.verdict == "accepted":
            combined, best, best_model, chosen = stage, stage, stage_model, list(group)
            break
        warnings.append(f"{'the kept passes' if name == 'combined' else 'the exact kept passes'} together "
                        f"({stage.pipeline}) were not kept: {stage.reason}")
    if kept and combined is None:
        warnings.append("best.onnx is the baseline")
    noise = bootstrap_noise(runner.per_image.get("baseline"), primary_metric(base.accuracy), seed)
    for s in stages[1:]:
        flag_suspicious_gain(s, base, meaningless, noise)
    return Decision(stages, best, best_model, combined, chosen, models, judged, warnings, timings, dict(runner.compiled),
                    dict(runner.device_runs), searches, precision)


#: passes whose --per-node is a keep-set search (evaluate.keep_search), and the stage it adds
KEEP_SEARCH_PASSES = {"fp16": "mixed-precision", "quantize": "quantize-keep-set"}
#: images of the calibration subset the keep-set search runs on (then confirmed on the full data)
SEARCH_IMAGES = 8


def _keep_set_stage(pass_name, model, stages, models, passes, base, runner, budget, judged, seed, verify,
                    warnings, searches):
    """`--per-node fp16|quantize`: the keep-set search on the model before that pass (the baseline if the
    pipeline has no such pass), on the first SEARCH_IMAGES images, confirmed on the full data; then a
    stage with the keep-set (`mixed-precision` / `quantize-keep-set`), right after the pass's own stage,
    when everything in low precision is over budget. Returns the fp16 result (MixedPrecision) or None."""
    from onnxforge.evaluate.keep_search import task_scorer

    lossy = next((s for s in stages[1:] if s.pass_ and s.pass_.split("{")[0] == pass_name and s.name in models), None)
    configured = passes.get(lossy.name) if lossy is not None else None
    p = configured if configured is not None else _node_protocol(pass_name)
    parent = lossy.parent if lossy is not None else "baseline"
    parent_model = models.get(parent, model)
    data = runner.data
    subset = min(SEARCH_IMAGES, data.limit) if data.limit else SEARCH_IMAGES
    metric, source = judged["metric"] or None, judged["source"]
    scorer = task_scorer(parent_model, data.dataset, data.data_root, data.preset, limit=subset, backend=runner.backend,
                         num_classes=runner.num_classes, metric=metric, source=source)
    confirm_base = 1.0 if source == "agreement" else base.accuracy.get(metric or "", scorer.baseline_value)

    def confirm(m: onnx.ModelProto) -> float:
        probe = _stage_from(f"{KEEP_SEARCH_PASSES[pass_name]} (confirming)", None, "", "baseline", m)
        runner.measure(probe, m, with_reference=True)
        values = probe.agreement if source == "agreement" else probe.accuracy
        return float(values.get(metric or "", 0.0))

    search = _KEEP_SEARCHES[pass_name]
    found = search(p, parent_model, scorer, budget, confirm, confirm_base, data, subset)
    record = found.record
    record.update({"metric": metric or "", "source": source, "baseline_subset": scorer.baseline_value,
                   "method": "greedy over the sensitivity ranking"})
    searches.append(record)
    keep, item, within, note, all_low = found.keep, found.item, found.within, found.note, found.score_all
    what = "float32" if pass_name == "fp16" else "float"
    if not keep and within:
        record["summary"] = (f"{pass_name}: every candidate in low precision is within the {budget} budget on {scorer.images} "
                             f"images ({all_low:.4f} vs {scorer.baseline_value:.4f}): nothing to keep in {what}")
        return found.precision
    if not within:
        warnings.append(f"{pass_name} keep-set search: {note}")
    record["summary"] = (f"{pass_name}: keep {len(keep)} node(s) in {what} ({', '.join(keep[:6])}{', ...' if len(keep) > 6 else ''}): "
                         f"{item}")
    kp = parse_pipeline(item).passes[0]
    name = KEEP_SEARCH_PASSES[pass_name]
    prefix = next((s.pipeline for s in stages if s.name == parent), "")
    try:
        result = PassManager([kp], verify=verify, seed=seed).run(parent_model)
    except PassError as exc:
        stage = _failed_stage(name, kp, ",".join(x for x in (prefix, str(kp)) if x), parent, parent_model, exc)
    else:
        stage = _stage_from(name, kp, ",".join(x for x in (prefix, str(kp)) if x), parent, result.model, result.stages[0])
        runner.measure(stage, result.model, with_reference=True)
        judge_accuracy(stage, base, budget, metric, source)
        models[name], passes[name] = result.model, kp
    stage.pass_notes.append(record["summary"])
    at = stages.index(lossy) + 1 if lossy is not None else len(stages)
    stages.insert(at, stage)
    return found.precision


@dataclass
class _Searched:
    """What one keep-set search returns to the report (`_KEEP_SEARCHES`)."""

    record: dict  # the JSON of the search: item, keep, rows (the per-node table), search details
    keep: list[str]
    item: str  # the pipeline item with the keep-set
    within: bool
    note: str
    score_all: float
    precision: Any = None  # fp16: the MixedPrecision written as precision/


def _search_fp16(p, model, scorer, budget, confirm, confirm_base, data, subset) -> _Searched:
    from onnxforge.evaluate.fp16_search import search_fp16

    found = search_fp16(model, scorer, scorer.baseline_value, budget, fp16=p, confirm=confirm, confirm_baseline=confirm_base,
                        stats_feeds=_stat_feeds(model, data, subset), subset_images=scorer.images, full_images=data.limit)
    r = found.search
    record = {"pass": "fp16", **found.to_dict(), "evaluations_subset": r.evaluations}
    return _Searched(record, found.keep, found.item, r.within_budget, r.note, r.score_all, found)


def _search_int8(p, model, scorer, budget, confirm, confirm_base, data, subset) -> _Searched:
    from onnxforge.evaluate.int8_search import keep_in_float

    q = keep_in_float(model, [], budget, quantize=p, scorer=scorer, baseline=scorer.baseline_value, confirm=confirm,
                      confirm_baseline=confirm_base)
    record = {"pass": "quantize", "item": q.item, "keep": q.keep, "subset_images": scorer.images, "full_images": data.limit,
              "search": q.to_dict(), "evaluations_subset": q.evaluations,
              "rows": [{"group": n, "nodes": [n], "score_kept": v, "kept": n in q.keep} for n, v in q.ranking]}
    return _Searched(record, q.keep, q.item, q.within_budget, q.note, q.score_all)


#: pass name -> its keep-set search (the per-node protocol of `report --per-node` for low-precision passes)
_KEEP_SEARCHES: dict[str, Callable[..., _Searched]] = {"fp16": _search_fp16, "quantize": _search_int8}


def _stat_feeds(model: onnx.ModelProto, data: "DataSource", count: int) -> list[dict[str, np.ndarray]]:
    """Calibration inputs for the fp16 range statistics (the data's preprocessing, calibration images
    apart from the evaluation ones for synthetic data), one dict per run at the model's batch."""
    from onnxforge.evaluate.bench import static_batch
    from onnxforge.evaluate.calibration import calibration_inputs

    try:
        arrays = calibration_inputs(model, data.dataset, data.data_root, data.preset, count=count, classes=data.num_classes)
    except ForgeError as exc:
        log.warning("fp16 range statistics skipped: %s", exc)
        return []
    (name, rows), = arrays.items()
    b = static_batch(model) or 1
    return [{name: rows[i:i + b]} for i in range(0, len(rows) - b + 1, b)]


def _node_variants(node_pass, model, seed, verify) -> list[tuple[StageEval, onnx.ModelProto, Pass, str]]:
    """One (stage, model, pass, node) per node the pass selects and changes: that node alone, on the baseline."""
    out = []
    for node in list(node_pass.candidates(model)):
        p = node_pass.with_nodes([node])
        try:
            result = PassManager([p], verify=verify, seed=seed).run(model)
        except PassError as exc:
            log.warning("per-node %s: %s", node, exc)
            continue
        stage = _stage_from(f"node-{_slug(node)}", p, str(p), "baseline", result.model, result.stages[0])
        if stage.modified:
            out.append((stage, result.model, p, node))
    return out


def _per_node(node_pass, model, variants, base, runner, budget, judged, seed, verify, models, passes, node_of) -> list[StageEval]:
    """Judges the measured per-node `variants` (`_node_variants`), then measures the nodes within budget together."""
    out: list[StageEval] = []
    keep: list[str] = []
    names = list(node_pass.candidates(model))
    for stage, stage_model, p, node in variants:
        judge_accuracy(stage, base, budget, judged["metric"] or None, judged["source"])
        out.append(stage)
        models[stage.name], passes[stage.name] = stage_model, p
        node_of[stage.name] = node
        if stage.accuracy_verdict == "within":
            keep.append(node)
    if keep and len(keep) != len(names):
        p = node_pass.with_nodes(keep)
        try:
            result = PassManager([p], verify=verify, seed=seed).run(model)
        except PassError as exc:
            log.warning("per-node combination %s: %s", p, exc)
            return out
        stage = _stage_from("nodes-within-budget", p, str(p), "baseline", result.model, result.stages[0])
        runner.measure(stage, result.model, with_reference=True)
        judge_accuracy(stage, base, budget, judged["metric"] or None, judged["source"])
        out.append(stage)
        models[stage.name], passes[stage.name] = result.model, p
    return out


def _kept_passes(pipe: Pipeline, stages: list[StageEval], passes: dict[str, Pass], node_pass, node_of: dict[str, str]) -> list[Pass]:
    """The kept passes in pipeline order; a kept node selection replaces its pass (or is appended)."""
    kept_names = {s.name for s in stages if s.verdict == "accepted"}
    main = [s for s in stages if s.name in passes and not s.name.startswith("node") and s.name != "nodes-within-budget"]
    kept = [passes[s.name] for s in main if s.name in kept_names]
    node_stages = [s for s in stages if (s.name.startswith("node-") or s.name == "nodes-within-budget") and s.name in kept_names]
    if node_pass is not None and node_stages and not any(p.name == node_pass.name for p in kept):
        nwb = [s for s in node_stages if s.name == "nodes-within-budget"]
        sel = passes[nwb[0].name] if nwb else node_pass.with_nodes([node_of[s.name] for s in node_stages])
        order = [p.name for p in pipe.passes]
        slot = order.index(node_pass.name) if node_pass.name in order else len(order)
        before = [i for i, p in enumerate(kept) if p.name in order[:slot]]
        kept.insert(before[-1] + 1 if before else 0, sel)
    return kept


def _combined(name, kept, model, base, stages, models, runner, budget, judged, seed, verify, timing, factory, clock, progress, t1,
              timing_cache=None):
    """A combined stage `name`: the passes `kept` on the baseline, judged against the baseline."""
    pipe = Pipeline(tuple(kept))
    try:
        result = PassManager(pipe, verify=verify, seed=seed).run(model)
    except PassError as exc:
        stage = _failed_stage(name, kept[-1], str(pipe), "baseline", model, exc)
        stage.pass_ = str(pipe)
        return stage, None, None
    cm = result.model
    stage = _stage_from(name, None, str(pipe), "baseline", cm)
    stage.pass_, stage.kind = str(pipe), "exact" if all(p.effective_kind().value == "exact" for p in kept) else "approximate"
    stage.modified = any(r.modified for r in result.stages)
    statuses = [r.verification.status for r in result.stages if r.modified]
    stage.verification = {"status": "failed" if "failed" in statuses else ("passed" if statuses and all(s == "passed" for s in statuses) else ",".join(sorted(set(statuses))) or "unchanged"),
                          "detail": f"{len(result.stages)} passes"}
    # the same graph measured already (metadata aside: the manager records the pipeline only at the end)
    key = _graph_sha256(cm)
    same = next((s for s in stages if s.name in models and s.name != "baseline" and _graph_sha256(models[s.name]) == key), None)
    t2 = None
    if same is not None:
        stage.accuracy, stage.agreement = dict(same.accuracy), dict(same.agreement)
        stage.reason = f"same model as {same.name}"
        if same.name in runner.compiled:  # not compiled again: the same graph's command stands for it
            runner.compiled[name] = runner.compiled[same.name]
        tim = analyse(t1.samples_ms, [(same.name, "baseline")], t1.policy, aa=t1.aa, stopped_by=t1.stopped_by)
        _fill_speed(stage, tim, "baseline", name=same.name)
    else:
        runner.measure(stage, cm, with_reference=True)
        t2 = _time([base, stage], {"baseline": model, name: cm}, timing, factory, clock, progress,
                   f"timing the {name} stage", timing_cache)
        _fill_speed(stage, t2, "baseline")
        # placed on the first run's scale (baseline latency there times the measured ratio), so the plot
        # and the table compare it with the other stages; the raw numbers of its own run are kept too
        c, b2 = t2.candidates[name], t2.candidates["baseline"]
        scale = (base.latency_ms.get("p50") or b2.median_ms) / b2.median_ms
        stage.latency_ms = {"p10": round(c.p10_ms * scale, 3), "p50": round(c.median_ms * scale, 3), "p90": round(c.p90_ms * scale, 3)}
        stage.speed["measured_ms"] = {name: round(c.median_ms, 3), "baseline": round(b2.median_ms, 3)}
    if same is not None:
        stage.latency_ms = dict(same.latency_ms)
    judge_accuracy(stage, base, budget, judged["metric"] or None, judged["source"])
    fill_deltas(stage, base)
    decide(stage, base)
    if stage.verdict == "accepted" and not any(r.modified for r in result.stages):
        stage.verdict, stage.reason = "rejected", "the kept passes change nothing together"
    return stage, cm, t2


def _graph_sha256(model: onnx.ModelProto) -> str:
    """A hash of the graph that ignores an explicitly empty name on attribute tensors (onnx-graphsurgeon's
    import sets one on the caller's Constant nodes, so the same graph can serialise two ways)."""
    import hashlib

    h = hashlib.sha256()
    g = model.graph
    for node in g.node:
        if any(a.HasField("t") and a.t.HasField("name") and not a.t.name for a in node.attribute):
            node = _without_empty_tensor_names(node)
        h.update(node.SerializeToString(deterministic=True))
    for part in (g.initializer, g.input, g.output):
        for item in part:
            h.update(item.SerializeToString(deterministic=True))
    return h.hexdigest()


def _without_empty_tensor_names(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    for a in copy.attribute:
        if a.HasField("t") and a.t.HasField("name") and not a.t.name:
            a.t.ClearField("name")
    return copy


def _time(stages: list[StageEval], models: dict[str, onnx.ModelProto], policy: TimingPolicy, factory, clock,
          progress: Progress | None, phase: str, timing_cache: tuple[EvalCache, str] | None = None) -> Timings:
    """Times the stages' models (plus an A/A copy of the baseline) in one interleaved run; with
    `timing_cache` (cache, backend spec) the run's samples are reused from and stored in the cache."""
    named = {s.name: models[s.name] for s in stages}
    named[AA_NAME] = models["baseline"]
    pairs = [(s.name, s.parent or "baseline") for s in stages if s.name != "baseline"]
    decision_pairs = [p for p in pairs if p[1] in named] or [(AA_NAME, "baseline")]
    cb = (lambda d, t: progress(phase, d, t)) if progress else None
    key, raw = None, None
    if timing_cache is not None:
        key = _timing_key(named, decision_pairs, policy, timing_cache[1])
        entry = timing_cache[0].get(key)
        if entry is not None:
            v = entry.value
            raw = ({n: tuple(x) for n, x in v["samples_ms"].items()}, tuple(v["aa"]) if v["aa"] else None,
                   v["stopped_by"], float(v["elapsed_s"]))
    if raw is None:
        cands = factory(named)
        try:
            t = measure_interleaved(cands, decision_pairs, policy, aa=(AA_NAME, "baseline"), clock=clock, progress=cb)
        finally:
            close = getattr(cands, "close", None)
            if close:
                close()
        raw = (t.samples_ms, t.aa, t.stopped_by, t.elapsed_s)
        if timing_cache is not None:
            timing_cache[0].put(key, {"samples_ms": {n: list(x) for n, x in t.samples_ms.items()},
                                      "aa": list(t.aa) if t.aa else None, "stopped_by": t.stopped_by, "elapsed_s": t.elapsed_s})
    samples_ms, aa, stopped_by, elapsed_s = raw
    extra = [(s.name, "baseline") for s in stages if s.name != "baseline"]
    # a stage whose graph equals its parent's (a pass with nothing to do) is one more A/A measurement
    digest = {n: _graph_sha256(m) for n, m in named.items() if n != AA_NAME}
    identical = [(a, b) for a, b in decision_pairs if a != AA_NAME and digest[a] == digest[b]]
    return analyse(samples_ms, list(dict.fromkeys(decision_pairs + extra)), policy, aa=aa,
                   stopped_by=stopped_by, elapsed_s=elapsed_s, identical=identical)


def _timing_key(named: dict[str, onnx.ModelProto], pairs: list[tuple[str, str]], policy: TimingPolicy, backend: str) -> str:
    """The cache key of one interleaved timing run: every timed model by name and hash, the pairs, the policy."""
    from dataclasses import asdict

    from onnxforge.evaluate.cache import evaluation_key

    models = sorted((n, model_sha256(m)) for n, m in named.items())
    return evaluation_key(model_sha256=f"timing:{models}", dataset_fingerprint="seeded inputs", backend=backend,
                          metric="latency", extra={"pairs": [list(p) for p in pairs], "policy": asdict(policy)})


def _fill_speed(stage: StageEval, t: Timings, vs: str, name: str | None = None) -> None:
    r = t.ratio(name or stage.name, vs)
    stage.speed = {"vs": vs, "ratio": round(r.ratio, 4), "low": round(r.low, 4), "high": round(r.high, 4),
                   "speedup": round(r.speedup, 4), "speedup_low": round(r.speedup_low, 4),
                   "speedup_high": round(r.speedup_high, 4), "verdict": r.verdict, "floor": round(r.floor, 4),
                   "rounds": t.rounds, "stopped_by": t.stopped_by}
    if vs != "baseline":
        try:
            rb = t.ratio(name or stage.name, "baseline")
            stage.speed["vs_baseline"] = {"speedup": round(rb.speedup, 4), "low": round(rb.speedup_low, 4),
                                          "high": round(rb.speedup_high, 4), "verdict": rb.verdict}
        except ForgeError:
            pass


def _fill_latency(stages: list[StageEval], t: Timings) -> None:
    for s in stages:
        c = t.candidates.get(s.name)
        if c is not None:
            s.latency_ms = {"p10": round(c.p10_ms, 3), "p50": round(c.median_ms, 3), "p90": round(c.p90_ms, 3)}


def _metric_of(kind: str, values: np.ndarray, keys: tuple[str, ...], metric: str) -> float:
    """The metric over a set of images from their per-image contributions (see `evaluator.PerImage`)."""
    if kind == "confusion":
        cm = values.sum(axis=0).astype(np.float64)
        if metric == "pixAcc":
            return float(np.trace(cm) / cm.sum()) if cm.sum() else 0.0
        inter = np.diag(cm)
        union = cm.sum(axis=0) + cm.sum(axis=1) - inter
        present = union > 0
        return float((inter[present] / union[present]).mean()) if present.any() else 0.0
    if kind == "hits":
        col = keys.index(metric) if metric in keys else 0
        return float(values[:, col].mean())
    return float(np.mean(values))


def bootstrap_noise(per_image, metric: str | None, seed: int = DEFAULT_SEED, resamples: int = 500,
                    confidence: float = 0.95) -> float | None:
    """The evaluation's own noise: half-width of the bootstrap interval (images resampled, seeded) of the
    baseline's metric, i.e. how much it moves by the choice of images alone. None without per-image data."""
    if per_image is None or metric is None:
        return None
    values = np.asarray(per_image.values)
    n = len(values)
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    got = [_metric_of(per_image.kind, values[rng.integers(0, n, n)], tuple(per_image.keys), metric) for _ in range(resamples)]
    lo, hi = np.quantile(got, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(hi - lo) / 2


def flag_suspicious_gain(stage: StageEval, base: StageEval, meaningless: bool, noise: float | None = None) -> None:
    """Flags an approximate stage that 'improves' accuracy beyond the evaluation's own noise.

    The noise is `noise` (`bootstrap_noise`: the baseline metric's spread over resampled images) where
    known, else what the agreement with the baseline can explain (the metric moved by more than the
    fraction of predictions that changed). On a meaningless baseline (chance level, no checkpoint) any gain is flagged: it is noise."""
    metric = primary_metric(base.accuracy)
    if stage.kind != "approximate" or not metric or metric not in stage.accuracy:
        return
    gain = stage.accuracy[metric] - base.accuracy[metric]
    if gain <= 0:
        return
    changed = 1.0 - stage.agreement.get("pixel_agreement", stage.agreement.get("top1_agreement", 1.0))
    bound = noise if noise is not None else changed
    if meaningless or gain > max(bound, 1e-9):
        why = "the baseline's accuracy is not meaningful" if meaningless else f"beyond the evaluation's noise ({bound:.4f})"
        stage.flags.append(f"an approximate pass improved {metric} by {gain:+.4f} ({stage.delta.get(metric + '_rel', 0):+.1%}): "
                           f"{why}; check the data and the baseline")


def resolve_backend(backend: str | Backend, threads: int = 0) -> Backend:
    """A configured Backend from a spec (``onnxruntime{device=cuda,threads=2}``) or a Backend; `threads`
    (0: not given) fills the spec's threads option."""
    from onnxforge.backends import parse_backend

    return parse_backend(backend, {"threads": threads or None}, flags={"threads": "--threads"})


def backend_candidates(models: dict[str, onnx.ModelProto], backend: str | Backend, batch: int | None = None) -> dict:
    """Timing candidates: one session per model on the backend as `Backend.interleaved()` configures it
    (the A/A copy gets its own session), each running seeded inputs; the returned mapping has `close()`
    to release the sessions (and any compiled files)."""
    import contextlib
    import tempfile

    from onnxforge.evaluate.bench import static_batch, with_batch
    from onnxforge.numerics import seeded_inputs

    be = resolve_backend(backend).interleaved()
    be.check_available()

    class _Candidates(dict):
        def close(self) -> None:
            stack.close()

    stack = contextlib.ExitStack()
    out = _Candidates()
    try:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="onnxforge-ab-"))
        for k, (name, model) in enumerate(models.items()):
            b = batch or static_batch(model) or 1
            m = model if static_batch(model) in (None, b) else with_batch(model, b)
            r = stack.enter_context(be.runner(be.compile(m, be.artifact_path(tmp, f"m{k}_b{b}"))))
            feeds = seeded_inputs(m, overrides={"batch": b})

            def run(r=r, f=feeds) -> float:
                r.infer(f)
                return r.last_inference_s

            out[name] = run
    except BaseException:
        stack.close()
        raise
    return out


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_" else "-" for c in text)
    return keep.strip("-")[:60]


def run_report(
    model_path: str | Path,
    pipeline: str | Pipeline,
    out_dir: str | Path,
    data: DataSource,
    backend: str | Backend = "onnxruntime",
    batch_sizes: Sequence[int] = (1,),
    isolated: bool = False,
    budget: Budget | str | float = "1%",
    per_node: str | None = None,
    threads: int = 0,
    seed: int = DEFAULT_SEED,
    timing: TimingPolicy = DEFAULT_TIMING,
    keep_stages: str = "best",
    progress: Progress | None = None,
    command: str | None = None,
    clock: Callable[[], float] = time.perf_counter,
    candidates_factory: Callable[..., dict] | None = None,
    cache: EvalCache | None = None,
    cache_latency: bool = False,
    executor: Executor | None = None,
) -> ReportResult:
    """Decides every stage (`decide_pipeline`) and writes the report directory all or nothing.

    `keep_stages`: ``best`` (default) keeps the baseline and best.onnx, ``all`` every stage model under
    stages/, ``none`` no model at all (the report names the command that rebuilds best.onnx).
    Throughput at batch sizes after the first is timed round-robin on the decided stages (never cached).
    `cache`/`cache_latency`: as `decide_pipeline`; an interrupted run rerun with the same cache resumes
    from the evaluations it stored.

    Raises:
        OutputPathError: `out_dir` exists and is not a directory.
        ForgeError: bad budget, rounds, keep_stages or per-node pass (before anything is written).
    """
    from onnxforge.evaluate.bench import round_robin
    from onnxforge.evaluate.report_files import disk_usage, write_report_files
    from onnxforge.modelio import save_model, staging_dir

    model_path, out_dir = Path(model_path), Path(out_dir)
    pipe = pipeline if isinstance(pipeline, Pipeline) else parse_pipeline(pipeline)
    budget = Budget.parse(budget)
    timing.validate()
    if keep_stages not in KEEP_STAGES:
        raise ForgeError(f"--keep-stages: expected one of {', '.join(KEEP_STAGES)}, got {keep_stages!r}")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputPathError(f"{out_dir}: exists and is not a directory")
    if per_node:
        _node_protocol(per_node)
    backend = resolve_backend(backend, threads)
    baseline_model = load_model(model_path)
    t0 = time.perf_counter()
    d = decide_pipeline(baseline_model, pipe, data, backend, budget, isolated, per_node, threads, seed, timing,
                        progress=progress, clock=clock, candidates_factory=candidates_factory, cache=cache,
                        cache_latency=cache_latency, executor=executor)
    stages, best = d.stages, d.best
    for bi, b in enumerate(batch_sizes):
        if bi == 0:
            for s in stages:
                if s.latency_ms.get("p50"):
                    s.throughput[str(b)] = round(b * 1000.0 / s.latency_ms["p50"], 2)
            continue
        timed = [s for s in stages if s.name in d.models]
        samples = round_robin([d.models[s.name] for s in timed], b, backend, 0, 2, timing.min_rounds)
        for s, times in zip(timed, samples):
            s.throughput[str(b)] = round(b * 1000.0 / float(np.median(times)), 2)

    metric = d.judged_on["metric"]
    source = best.agreement if d.judged_on["source"] == "agreement" else best.accuracy
    cost = None
    if d.combined is not None and metric in source:
        rel = best.delta.get(f"{metric}_rel")
        cost = f"{metric} {source[metric]:.4f} ({rel:+.2%} vs the baseline)" if rel is not None else f"{metric} {source[metric]:.4f}"
    base_value = 1.0 if d.judged_on["source"] == "agreement" else stages[0].accuracy.get(metric)
    best_cmd = (f"onnxforge optimize {shlex.quote(str(model_path))} -o best.onnx --passes {shlex.quote(d.kept_pipeline)}"
                if d.combined is not None else None)
    report = {
        "model": str(model_path),
        "pipeline": str(pipe),
        "mode": "isolated" if isolated else "cumulative",
        "data": data.describe(),
        "backend": str(backend),
        "batch_sizes": list(batch_sizes),
        "budget": str(budget),
        "budget_text": budget.describe(d.judged_on["metric"]),
        "metric": primary_metric(stages[0].accuracy),
        "judged_on": d.judged_on,
        "warnings": d.warnings,
        "kept_pipeline": d.kept_pipeline,
        "best": {"stage": best.name, "pipeline": best.pipeline, "model": "best.onnx",
                 "latency_ms": best.latency_ms, "accuracy": best.accuracy, "speed": best.speed,
                 "command": best_cmd, "accuracy_cost": cost},
        "budget_floor": (base_value - budget.allowed_drop(base_value)) if base_value is not None else None,
        "timing": d.timing,
        "keep_stages": keep_stages,
        "environment": environment(str(backend), threads, seed),
        # the exact command the backend's compiler ran for each evaluated stage (atc's argv; empty for onnxruntime)
        "compile_commands": [{"stage": s.name, **d.compiled[s.name]} for s in stages if s.name in d.compiled],
        # evaluations split across devices (ais_bench devices): every device's argv and throughput, and their sum
        "device_runs": [{"stage": s.name, **d.device_runs[s.name]} for s in stages if s.name in d.device_runs],
        "seconds": 0.0,
        "commands": [c for c in (command or _report_command(model_path, pipe, out_dir, data, isolated, per_node, budget), best_cmd) if c],
        "keep_searches": d.searches,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(out_dir) as tmp:
        if keep_stages != "none":
            save_model(d.best_model, tmp / "best.onnx")
            keep = [s for s in stages if s.name in d.models and (keep_stages == "all" or s.name == "baseline")]
            for i, s in enumerate(keep):
                rel = Path("stages") / f"{i:02d}_{_slug(s.name)}.onnx"
                (tmp / "stages").mkdir(exist_ok=True)
                save_model(d.models[s.name], tmp / rel)
                s.model_file = str(rel)
        else:
            report["best"]["model"] = None
        if d.precision is not None:  # the fp16 keep-set, written for atc (compile --precision-config DIR)
            from onnxforge.evaluate.fp16_search import write_precision_config

            cann = getattr(getattr(backend, "options", None), "cann", None)
            write_precision_config(tmp / PRECISION_DIR, d.precision, cann, model=str(model_path))
            report["precision_config"] = PRECISION_DIR
            report["commands"].append(f"onnxforge compile {shlex.quote(str(model_path))} --backend atc "
                                      f"--precision-config {shlex.quote(str(out_dir / PRECISION_DIR))}")
        report["seconds"] = round(time.perf_counter() - t0, 2)
        report["disk_bytes"] = disk_usage(tmp)
        write_report_files(tmp, report, stages)
    files = {k: out_dir / v for k, v in {"json": "report.json", "md": "report.md", "html": "report.html",
                                          "plot": "accuracy_vs_latency.png"}.items()}
    if keep_stages != "none":
        files["best"] = out_dir / "best.onnx"
    if d.precision is not None:
        files["precision"] = out_dir / PRECISION_DIR
    return ReportResult(stages, best, files, report, disk_bytes=report["disk_bytes"])


def _report_command(model_path: Path, pipe: Pipeline, out_dir: Path, data: DataSource, isolated: bool,
                    per_node: str | None, budget: Budget) -> str:
    """The `onnxforge report` command for a library call (the CLI passes the command it ran)."""
    q = shlex.quote
    src = (f"--synthetic {data.limit}" if data.dataset == "synthetic" and data.data_root is None else
           f"--dataset {q(data.dataset)} --data-root {q(str(data.data_root))}" + (f" --preset {q(data.preset)}" if data.preset else "")
           + (f" --limit {data.limit}" if data.limit else ""))
    return (f"onnxforge report {q(str(model_path))} --passes {q(str(pipe))} {src} --budget {budget}"
            + (" --isolated" if isolated else "") + (f" --per-node {q(per_node)}" if per_node else "") + f" -o {q(str(out_dir))}")


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
