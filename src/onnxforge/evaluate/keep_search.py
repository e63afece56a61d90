"""One keep-set search for every lower-precision pass: which nodes stay in high precision so the model
is within the accuracy budget (fp16: `evaluate.fp16_search`; INT8: `evaluate.int8_search`).

The method (NNCF's accuracy control, made generic):

1. **All low**: score the model with every candidate in low precision (`build([])`). Within budget:
   done, the keep-set is empty (1 evaluation).
2. **Sensitivity**: for each candidate group (a node, a Conv with its BatchNorm/activation, or an op
   type: `Group`), score the model with *only that group* kept in high precision (`build(group)`);
   with `build_alone`, also the reverse, *only that group* in low precision (fp16's "everything fp32
   but this node"). N or 2N evaluations for N groups.
3. **Ranking**: groups by the score they recover when kept (descending), ties broken by the score
   they cost when alone in low precision (ascending), then by graph order.
4. **Greedy over the ranking**: keep groups in ranking order, one more each step, scoring after each,
   until the score is within budget or `max_keep` groups are kept. The first step reuses its
   sensitivity score (no new evaluation). Greedy, not bisection over the ranking prefix: with a good
   ranking the answer is a short prefix, and greedy finds the shortest one in as many steps as it is
   long, while bisection costs log2(max_keep) steps whatever the answer (and assumes the score grows
   monotonically with the prefix, which rounding effects do not guarantee).
5. **Confirm**: steps 1-4 run on `scorer` (a small calibration subset of the data, say 8 images);
   the chosen keep-set is then scored once with `confirm` (the full set). Over budget there: the
   greedy continues on the full set from where it stopped.

A budget no keep-set meets: `within_budget=False`, with the best score reached and the note that the
all-high-precision model (the baseline, every group kept) is the fallback.

Evaluations are counted (`evaluations` on the subset, `confirm_evaluations` on the full set). The
scorer is any ``model -> float`` (higher is better), so the task metric (mIoU or top-1 through the
evaluator's `score` on one plan: `task_scorer`) and agreement with the float model judge alike; the
budget is `history.Budget` (``1%`` relative, ``0.5pt`` absolute) against the scorer's baseline value.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from onnxforge.errors import EvaluationError, ForgeError
from onnxforge.evaluate.agreement import cosine_similarity, pixel_agreement, top1_agreement
from onnxforge.evaluate.evaluator import ModelRunner, RecordedOutputs, plan_evaluation, score, score_recorded
from onnxforge.evaluate.history import Budget, primary_metric
from onnxforge.numerics import cast_feeds, make_session

log = logging.getLogger(__name__)

#: keep (node names in high precision) -> the low-precision model with those nodes kept
Build = Callable[[Sequence[str]], onnx.ModelProto]
#: a model -> its score (higher is better)
Scorer = Callable[[onnx.ModelProto], float]


@dataclass(frozen=True)
class Group:
    """Candidates that stay in high precision together. `name` labels it (its first node, or
    ``OpType::Conv`` for an op-type group, `op_type` then set)."""

    name: str
    nodes: tuple[str, ...]
    op_type: str | None = None


@dataclass
class Sensitivity:
    """One group's evidence: the score with only it kept high (`kept`), and with only it low (`alone`)."""

    group: str
    nodes: list[str]
    kept: float
    alone: float | None = None
    op_type: str | None = None


@dataclass
class KeepSetResult:
    """What `search_keep_set` found. `keep` are node names, `groups` the group labels, in ranking order."""

    keep: list[str]
    groups: list[str]
    baseline: float
    score_all: float  # every candidate low precision, on the subset
    score: float  # with `keep` high, on the set that decided (the full set when confirmed)
    within_budget: bool
    budget: str
    ranking: list[Sensitivity] = field(default_factory=list)
    evaluations: int = 0  # models scored with `scorer` (the subset)
    confirm_evaluations: int = 0  # models scored with `confirm` (the full set)
    confirm_baseline: float | None = None
    method: str = "greedy over the sensitivity ranking"
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def search_keep_set(
    groups: Sequence[Group],
    build: Build,
    scorer: Scorer,
    baseline: float,
    budget: Budget | str | float,
    *,
    build_alone: Build | None = None,
    confirm: Scorer | None = None,
    confirm_baseline: float | None = None,
    max_keep: int = 8,
) -> KeepSetResult:
    """Searches the smallest keep-set of `groups` for which `scorer(build(keep))` is within `budget`.

    Args:
        groups: the candidates, in graph order (`Group`s; a node alone is a group of one).
        build: keep -> the low-precision model with the nodes `keep` in high precision.
        scorer: scores a model on the search data (the calibration subset); `baseline` is the
            high-precision model's score there.
        budget: the allowed drop from `baseline` (`history.Budget`).
        build_alone: nodes -> the model with only those nodes in low precision (the reverse
            sensitivity); None skips it.
        confirm: scores the chosen keep-set on the full data (`confirm_baseline` its baseline).
        max_keep: the most groups kept before the search gives up.

    Raises:
        ForgeError: bad budget or `max_keep`; whatever `build` or the scorers raise.
    """
    budget = Budget.parse(budget)
    if max_keep < 1:
        raise ForgeError(f"keep-set search: max_keep must be at least 1, got {max_keep}")
    if confirm is not None and confirm_baseline is None:
        raise ForgeError("keep-set search: confirm needs confirm_baseline")
    counts = {"sub": 0, "full": 0}

    def on_subset(keep: Sequence[str]) -> float:
        counts["sub"] += 1
        value = float(scorer(build(list(keep))))
        log.info("keep-set search: %d node(s) kept -> %.4f", len(keep), value)
        return value

    def on_full(keep: Sequence[str]) -> float:
        counts["full"] += 1
        return float(confirm(build(list(keep))))  # type: ignore[misc]

    def result(keep_groups: list[Group], score_all: float, score: float, within: bool, ranking, note="") -> KeepSetResult:
        nodes = [n for g in keep_groups for n in g.nodes]
        return KeepSetResult(nodes, [g.name for g in keep_groups], baseline, score_all, score, within, str(budget), ranking,
                             counts["sub"], counts["full"], confirm_baseline, note=note)

    score_all = on_subset([])
    if not budget.over(baseline, score_all):
        if confirm is None:
            return result([], score_all, score_all, True, [])
        full = on_full([])
        if not budget.over(confirm_baseline, full):  # type: ignore[arg-type]
            return result([], score_all, full, True, [])
    order = {g.name: i for i, g in enumerate(groups)}
    ranking: list[Sensitivity] = []
    for g in groups:
        s = Sensitivity(g.name, list(g.nodes), on_subset(g.nodes), op_type=g.op_type)
        if build_alone is not None:
            counts["sub"] += 1
            s.alone = float(scorer(build_alone(list(g.nodes))))
        ranking.append(s)
    ranking.sort(key=lambda s: (-s.kept, s.alone if s.alone is not None else 0.0, order[s.group]))
    by_name = {g.name: g for g in groups}
    ranked = [by_name[s.group] for s in ranking]

    keep: list[Group] = []
    best, best_keep = score_all, []
    for g in ranked[:max_keep]:
        keep.append(g)
        value = ranking[0].kept if len(keep) == 1 else on_subset([n for k in keep for n in k.nodes])
        if value >= best:  # ties: the longer set (the one the greedy reached)
            best, best_keep = value, list(keep)
        if not budget.over(baseline, value):
            break
    else:
        return result(best_keep, score_all, best, False, ranking, _unmet(budget, baseline, best, len(best_keep), max_keep))
    if confirm is None:
        return result(keep, score_all, value, True, ranking)
    # confirm on the full set; over budget there: the greedy goes on, judged on the full set
    base_full: float = confirm_baseline  # type: ignore[assignment]
    rest = ranked[len(keep):]
    full = on_full([n for k in keep for n in k.nodes])
    best, best_keep = full, list(keep)
    while budget.over(base_full, full) and rest and len(keep) < max_keep:
        keep.append(rest.pop(0))
        full = on_full([n for k in keep for n in k.nodes])
        if full > best:
            best, best_keep = full, list(keep)
    if budget.over(base_full, full):
        return result(best_keep, score_all, best, False, ranking, _unmet(budget, base_full, best, len(best_keep), max_keep)
                      + " (the subset was within budget, the full set is not)")
    return result(keep, score_all, full, True, ranking)


def _unmet(budget: Budget, baseline: float, best: float, kept: int, max_keep: int) -> str:
    return (f"no keep-set of up to {max_keep} group(s) meets the {budget} budget: the best reached is {best:.4f} "
            f"vs the baseline {baseline:.4f} ({kept} group(s) kept); the fallback is the all-float32 model (the baseline)")


# ------------------------------------------------------------------------------------------- scorers
Outputs = list[np.ndarray]  # the first output of each evaluation run


def agreement_score(reference: Outputs, candidate: Outputs) -> float:
    """Agreement of `candidate`'s first outputs with `reference`'s, in [0, 1]: top-1 agreement for
    (N, C) logits, pixel agreement of the argmax for (N, C, H, W) logits, equality for integer outputs,
    cosine similarity otherwise (a non-finite candidate, an fp16 overflow, agrees nowhere it is not finite)."""
    values = []
    for r, c in zip(reference, candidate):
        if r.dtype.kind in "iub":
            values.append(pixel_agreement(r, c))
        elif r.ndim == 2 and r.shape[1] > 1:
            values.append(top1_agreement(r, np.nan_to_num(c, nan=-np.inf)))
        elif r.ndim == 4 and r.shape[1] > 1:
            values.append(pixel_agreement(r.argmax(1), _argmax_finite(c)))
        else:
            values.append(cosine_similarity(r, np.nan_to_num(c, nan=0.0, posinf=0.0, neginf=0.0)))
    return float(np.mean(values)) if values else 1.0


def _argmax_finite(c: np.ndarray) -> np.ndarray:
    """argmax over the class axis; a pixel with any NaN gets -1 (agrees with no class)."""
    labels = np.nan_to_num(c, nan=-np.inf).argmax(1)
    bad = np.isnan(c).any(axis=1)
    return np.where(bad, -1, labels)


def first_outputs(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]], threads: int = 0) -> Outputs:
    """The model's first output for each feed dict (onnxruntime, one session)."""
    session = make_session(model, threads=threads)
    name = session.get_outputs()[0].name
    try:
        return [np.asarray(session.run([name], cast_feeds(model, f))[0]) for f in feeds]
    except Exception as exc:  # onnxruntime raises its own types
        raise ForgeError(f"onnxruntime failed to run the model: {str(exc).splitlines()[0][:300]}") from None


def agreement_scorer(reference: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]], threads: int = 0,
                     compare: Callable[[list[np.ndarray], list[np.ndarray]], float] | None = None) -> Scorer:
    """A scorer judging agreement with `reference` on `feeds` (no labels): the reference's first outputs
    are computed once and shared by every evaluation; the baseline value is 1.0.

    `compare(reference_outputs, candidate_outputs) -> float` defaults to `agreement_score`."""
    ref = first_outputs(reference, feeds, threads)
    fn = compare or agreement_score

    def scorer(model: onnx.ModelProto) -> float:
        return float(fn(ref, first_outputs(model, feeds, threads)))

    return scorer


@dataclass
class TaskScorer:
    """Scores models on one evaluation plan (the report's data) with the task metric, or with agreement
    with the baseline where the data has no labels or the caller judges on agreement.

    The baseline's outputs on the plan's images are recorded while its own score is taken and replayed
    as the reference of every later evaluation (shared, not recomputed): memory grows with the images,
    so use it on a subset (`limit`); `baseline_value` is the baseline's score.
    """

    baseline_model: onnx.ModelProto
    plan: Any
    backend: Any
    metric: str  # the key read from the result (a metric, or an agreement key)
    source: str  # accuracy | agreement
    baseline_value: float = 0.0
    images: int = 0
    _reference: Any = None

    def __call__(self, model: onnx.ModelProto) -> float:
        with ModelRunner(model, self.backend, label="candidate") as run:
            result = score(self.plan, run, reference=self._reference)
        return _value_of(result, self.metric, self.source)


def task_scorer(baseline: onnx.ModelProto, dataset: str, data_root: str | Path | None, preset: str | None = None, *,
                limit: int | None = None, backend: Any = "onnxruntime", num_classes: int | None = None,
                metric: str | None = None, source: str = "accuracy") -> TaskScorer:
    """A `TaskScorer` on the first `limit` images of `dataset` (see `evaluator.plan_evaluation`).

    `metric`: the key judged (default: the primary metric of the result); with `source="agreement"`
    an agreement key (``miou_vs_reference``, ``top1_agreement``...), whose baseline is 1.0. Data
    without labels (the metric is None) judges on agreement automatically.

    Raises:
        EvaluationError / DatasetError: as planning and scoring do.
    """
    plan = plan_evaluation(baseline, dataset, data_root, preset, limit=limit, num_classes=num_classes, label="baseline")
    replay = RecordedOutputs(baseline, max_bytes=sys.maxsize)  # the search's subset: kept whatever its size
    with ModelRunner(baseline, backend, label="baseline") as run:
        first = score_recorded(plan, run, replay)
    # the baseline against its own recorded outputs: agreement keys exist and equal 1
    own = score(plan, replay, reference=replay)
    key = metric or primary_metric({k: v for k, v in first.metrics.items() if v is not None})
    if source == "accuracy" and (key is None or first.metrics.get(key) is None):
        key, source = next(iter(k for k, v in (own.agreement or {}).items() if v is not None), None), "agreement"
    if key is None:
        raise EvaluationError(f"keep-set search: {dataset} gives no metric and no agreement to judge on")
    value = _value_of(own if source == "agreement" else first, key, source)
    return TaskScorer(baseline, plan, backend, key, source, value, first.images, replay)


def _value_of(result, metric: str, source: str) -> float:
    values = result.agreement if source == "agreement" else result.metrics
    value = (values or {}).get(metric)
    if value is None:
        raise EvaluationError(f"keep-set search: the evaluation gives no {metric} ({source})")
    return float(value)
