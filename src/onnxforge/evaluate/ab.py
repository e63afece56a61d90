"""The per-pass A/B evaluator behind `onnxforge report`, `optimize --auto` and the demo.

Contract of `run_report` (and `decide_pipeline`, its file-less core):
- The baseline and every stage run on the same inputs and backend. Stages are cumulative by default
  (one pass-manager run with `ABInstrument` measuring after each pass: stage i = passes 1..i) or
  isolated (each pass alone on the baseline). `per_node=PASS` adds one stage per node PASS selects
  (`PASS.candidates(model)`, `PASS.with_nodes(names)`), alone on the baseline, and a stage of the nodes
  whose accuracy stayed within budget.
- Each stage is verified by the pass manager (exact passes numerically), evaluated for accuracy and
  agreement with the baseline; then all stages are timed together, serially, in interleaved rounds
  with an A/A copy of the baseline measuring the noise floor (`evaluate.timing`), adaptively.
- Verdicts follow `history.judge_accuracy` + `history.decide`: two axes (accuracy within/over budget;
  speed faster/same/slower than the parent, with its interval). Deterministic for the same samples.
- The combined stage is the pipeline of every kept pass, applied to the baseline, measured against it;
  if it is kept it is `best.onnx`; if not, the exact kept passes alone (``combined-exact``) are tried
  the same way; else the baseline is best.onnx (and the report says why).
- A meaningless baseline (chance-level accuracy, exported without a checkpoint, a class-count
  mismatch) switches judging to agreement with the baseline, and the report says so at the top.
- Outputs are written all or nothing (`modelio.staging_dir`): the input model is never modified;
  on an error or Ctrl-C nothing of the new run is left and an existing report stays as it was.
"""

from __future__ import annotations

import logging
import tempfile
import platform
import shlex
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from onnxforge.backends import Backend
from onnxforge.errors import ForgeError, OutputPathError, PassError
from onnxforge.evaluate.history import Budget, StageEval, decide, fill_deltas, judge_accuracy, model_sha256, primary_metric
from onnxforge.evaluate.timing import TimingPolicy, Timings, analyse, measure_interleaved
from onnxforge.modelio import load_model
from onnxforge.numerics import DEFAULT_SEED
from onnxforge.passes import Pass, PassManager, parse_pipeline
from onnxforge.passes.manager import Instrument, RunContext, StageRecord
from onnxforge.passes.pipeline import Pipeline

log = logging.getLogger(__name__)

#: (phase, done, total) — e.g. ("evaluate 2-resize-nearest", 3, 10)
Progress = Callable[[str, int, int], None]

#: Export writes this metadata key; "none" means deterministic weights (no checkpoint given).
CHECKPOINT_METADATA_KEY = "onnxforge.checkpoint"
#: The A/A copy of the baseline timed in the same rounds (its ratio to the baseline is the noise floor).
AA_NAME = "baseline (A/A copy)"
#: Default timing for reports: adaptive, bounded (the demo passes a tighter time limit).
DEFAULT_TIMING = TimingPolicy(min_rounds=10, max_rounds=200, max_seconds=30.0)
KEEP_STAGES = ("best", "all", "none")

#: Agreement metric a meaningless baseline is judged on, by the primary metric it replaces.
_AGREEMENT_FOR = {"mIoU": "miou_vs_reference", "top1": "top1_agreement", "IoU": "pixel_agreement",
                  "pixAcc": "pixel_agreement"}


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
    """Evaluates stage models against one baseline (kept for agreement)."""

    def __init__(self, baseline: onnx.ModelProto, data: DataSource, backend: str | Backend, threads: int,
                 progress: Progress | None) -> None:
        self.baseline = baseline
        self.data = data
        self.backend = backend
        self.threads = threads
        self.progress = progress
        self.model_classes = _classes_of(baseline)
        self.num_classes = data.num_classes or self.model_classes
        self.per_image: dict[str, object] = {}  # stage name -> EvalResult.per_image (for the bootstrap)
        self.dataset_classes: int | None = None  # as the baseline's evaluation reported it

    def measure(self, stage: StageEval, model: onnx.ModelProto, with_reference: bool) -> None:
        from onnxforge.evaluate.evaluator import evaluate

        cb = (lambda d, t: self.progress(f"evaluate {stage.name}", d, t)) if self.progress else None
        result = evaluate(
            model, self.data.dataset, self.data.data_root, preset=self.data.preset, backend=self.backend,
            limit=self.data.limit, progress=cb, reference=self.baseline if with_reference else None,
            num_classes=self.num_classes, per_image=True,
        )
        if result.per_image is not None:
            self.per_image[stage.name] = result.per_image
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
    """The A/B evaluator as a pass-manager instrument: after each pass, the model becomes a stage
    (named `{index}-{pass}`, parent the previous stage) whose accuracy and agreement are measured.

    One manager run with this instrument is a cumulative report's measurement; timing comes after, for
    all stages together (never one at a time while the manager runs)."""

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
        self.runner.measure(stage, model, with_reference=True)
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
    """Why the baseline's accuracy says nothing (empty when it is meaningful)."""
    why = []
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get(CHECKPOINT_METADATA_KEY) == "none":
        why.append("the model was exported without a checkpoint (deterministic weights)")
    data_classes = runner.data.num_classes or runner.dataset_classes
    if data_classes and runner.model_classes and data_classes != runner.model_classes and data_classes > 1:
        why.append(f"the model predicts {runner.model_classes} classes but the data has {data_classes}")
    metric = primary_metric(base.accuracy)
    k = runner.num_classes
    if metric and k and k >= 3 and base.accuracy[metric] <= 1.0 / k:
        why.append(f"baseline {metric} {base.accuracy[metric]:.4f} is at chance level for {k} classes "
                   f"(<= 1/{k}: no better than one class everywhere)")
    return why


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
) -> Decision:
    """Measures the baseline and every stage, decides each, and measures the combined stage.

    Args:
        backend: a backend spec (``onnxruntime{device=cuda,threads=2}``) or Backend; every stage is
            evaluated and timed on it (`threads`, when not 0, fills its threads option).
        candidates_factory: builds the timing candidates from {name: model} (default: a backend session
            per model, see `backend_candidates`); tests pass fake runners with a fake `clock`.

    Raises:
        ForgeError: bad budget, timing policy or per-node pass; the backend cannot run a model.
    """
    budget = Budget.parse(budget)
    timing.validate()
    pipe = pipeline if isinstance(pipeline, Pipeline) else parse_pipeline(pipeline)
    node_pass = _node_protocol(per_node) if per_node else None
    backend = resolve_backend(backend, threads)
    runner = StageRunner(model, data, backend, threads, progress)
    base = _stage_from("baseline", None, "", None, model)
    base.verdict, base.reason = "baseline", "the input model"
    runner.measure(base, model, with_reference=False)
    stages, models, passes, node_of = [base], {"baseline": model}, {}, {}  # node_of: per-node stage -> node

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

    warnings = _meaningless(base, model, runner)
    meaningless = bool(warnings)
    metric = primary_metric(base.accuracy)
    judged = {"metric": metric or "", "source": "accuracy"}
    if warnings and metric in _AGREEMENT_FOR:
        judged = {"metric": _AGREEMENT_FOR[metric], "source": "agreement"}
        warnings.append(f"accuracy is not meaningful: judging on {judged['metric']} (agreement with the baseline) instead")
    for s in stages[1:]:
        if s.verdict != "rejected":
            judge_accuracy(s, base, budget, judged["metric"] or None, judged["source"])

    if node_pass is not None:
        stages += _per_node(node_pass, model, base, runner, budget, judged, seed, verify, models, passes, node_of)

    factory = candidates_factory or (lambda ms: backend_candidates(ms, backend))
    timed = [s for s in stages if s.name in models]
    t1 = _time(timed, models, timing, factory, clock, progress, "timing all stages (interleaved)")
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
                                           verify, timing, factory, clock, progress, t1)
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
    return Decision(stages, best, best_model, combined, chosen, models, judged, warnings, timings)


def _per_node(node_pass, model, base, runner, budget, judged, seed, verify, models, passes, node_of) -> list[StageEval]:
    """One stage per node the pass selects (that node alone, on the baseline), then the nodes within budget."""
    with tempfile.TemporaryDirectory(prefix="onnxforge-per-node-") as tmp:
        return _per_node_stages(node_pass, _shared(node_pass, model, tmp), model, base, runner, budget, judged, seed, verify,
                                models, passes, node_of)


def _shared(node_pass, model, directory):
    """The pass the per-node variants run: `node_pass.sharing_calibration(model, directory)` where the pass
    has that hook (quantize: one calibration for every variant), else `node_pass` itself."""
    share = getattr(node_pass, "sharing_calibration", None)
    if share is None:
        return node_pass
    try:
        return share(model, directory)
    except PassError as exc:  # nothing to calibrate, bad data: each variant reports it as before
        log.warning("per-node %s: no shared calibration: %s", node_pass.name, exc)
        return node_pass


def _per_node_stages(node_pass, runs, model, base, runner, budget, judged, seed, verify, models, passes, node_of) -> list[StageEval]:
    """`_per_node` with `runs` the pass the variants execute (a calibration-sharing copy of `node_pass`);
    stages record `node_pass`'s selections, which name no temporary file."""
    out: list[StageEval] = []
    keep: list[str] = []
    names = list(node_pass.candidates(model))
    for node in names:
        p = node_pass.with_nodes([node])
        name = f"node-{_slug(node)}"
        try:
            result = PassManager([runs.with_nodes([node])], verify=verify, seed=seed).run(model)
        except PassError as exc:
            log.warning("per-node %s: %s", node, exc)
            continue
        _restamp(result.model, runs.with_nodes([node]), p)
        stage = _stage_from(name, p, str(p), "baseline", result.model, result.stages[0])
        if not stage.modified:
            continue
        runner.measure(stage, result.model, with_reference=True)
        judge_accuracy(stage, base, budget, judged["metric"] or None, judged["source"])
        out.append(stage)
        models[name], passes[name] = result.model, p
        node_of[name] = node
        if stage.accuracy_verdict == "within":
            keep.append(node)
    if keep and len(keep) != len(names):
        p = node_pass.with_nodes(keep)
        try:
            result = PassManager([runs.with_nodes(keep)], verify=verify, seed=seed).run(model)
        except PassError as exc:
            log.warning("per-node combination %s: %s", p, exc)
            return out
        _restamp(result.model, runs.with_nodes(keep), p)
        stage = _stage_from("nodes-within-budget", p, str(p), "baseline", result.model, result.stages[0])
        runner.measure(stage, result.model, with_reference=True)
        judge_accuracy(stage, base, budget, judged["metric"] or None, judged["source"])
        out.append(stage)
        models[stage.name], passes[stage.name] = result.model, p
    return out


def _restamp(model: onnx.ModelProto, ran: Pass, recorded: Pass) -> None:
    """The model's pipeline metadata names `recorded` where `ran` (its calibration-sharing copy) ran."""
    if str(ran) == str(recorded):
        return
    from onnxforge.passes.manager import PIPELINE_METADATA_KEY

    for prop in model.metadata_props:
        if prop.key == PIPELINE_METADATA_KEY and prop.value.endswith(str(ran)):
            prop.value = prop.value[: len(prop.value) - len(str(ran))] + str(recorded)


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


def _combined(name, kept, model, base, stages, models, runner, budget, judged, seed, verify, timing, factory, clock, progress, t1):
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
        tim = analyse(t1.samples_ms, [(same.name, "baseline")], t1.policy, aa=t1.aa, stopped_by=t1.stopped_by)
        _fill_speed(stage, tim, "baseline", name=same.name)
    else:
        runner.measure(stage, cm, with_reference=True)
        t2 = _time([base, stage], {"baseline": model, name: cm}, timing, factory, clock, progress,
                   f"timing the {name} stage")
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
          progress: Progress | None, phase: str) -> Timings:
    """Times the stages' models (plus an A/A copy of the baseline) in one interleaved run."""
    named = {s.name: models[s.name] for s in stages}
    named[AA_NAME] = models["baseline"]
    pairs = [(s.name, s.parent or "baseline") for s in stages if s.name != "baseline"]
    decision_pairs = [p for p in pairs if p[1] in named] or [(AA_NAME, "baseline")]
    cb = (lambda d, t: progress(phase, d, t)) if progress else None
    cands = factory(named)
    try:
        t = measure_interleaved(cands, decision_pairs, policy, aa=(AA_NAME, "baseline"), clock=clock, progress=cb)
    finally:
        close = getattr(cands, "close", None)
        if close:
            close()
    extra = [(s.name, "baseline") for s in stages if s.name != "baseline"]
    # a stage whose graph equals its parent's (a pass with nothing to do) is one more A/A measurement
    digest = {n: _graph_sha256(m) for n, m in named.items() if n != AA_NAME}
    identical = [(a, b) for a, b in decision_pairs if a != AA_NAME and digest[a] == digest[b]]
    return analyse(t.samples_ms, list(dict.fromkeys(decision_pairs + extra)), policy, aa=t.aa,
                   stopped_by=t.stopped_by, elapsed_s=t.elapsed_s, identical=identical)


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
) -> ReportResult:
    """Decides every stage (`decide_pipeline`) and writes the report directory all or nothing.

    `keep_stages`: ``best`` (default) keeps the baseline and best.onnx, ``all`` every stage model under
    stages/, ``none`` no model at all (the report names the command that rebuilds best.onnx).
    Throughput at batch sizes after the first is timed round-robin on the decided stages.

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
                        progress=progress, clock=clock, candidates_factory=candidates_factory)
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
        "seconds": 0.0,
        "commands": [c for c in (command or _report_command(model_path, pipe, out_dir, data, isolated, per_node, budget), best_cmd) if c],
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
        report["seconds"] = round(time.perf_counter() - t0, 2)
        report["disk_bytes"] = disk_usage(tmp)
        write_report_files(tmp, report, stages)
    files = {k: out_dir / v for k, v in {"json": "report.json", "md": "report.md", "html": "report.html",
                                          "plot": "accuracy_vs_latency.png"}.items()}
    if keep_stages != "none":
        files["best"] = out_dir / "best.onnx"
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
