"""The A/B run history: one record per stage (baseline and each pass), and the verdict on each.

A stage records its parent, the pass that made it, the cumulative pipeline, the model hash, node
count, accuracy, agreement with the baseline, deltas, latency and throughput, and a verdict against the
accuracy budget. Reports (JSON, Markdown, HTML, plot) are views over this history.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx


@dataclass
class StageEval:
    """One row of the run history."""

    name: str  # "baseline", "1-simplify", ...
    pipeline: str  # the cumulative pipeline that produced this stage ("" for the baseline)
    pass_: str | None  # the pass (with options) that made it from its parent
    kind: str | None  # exact | approximate
    parent: str | None
    model_sha256: str
    nodes: int
    model_file: str = ""
    modified: bool = True
    pass_stats: dict[str, Any] = field(default_factory=dict)
    pass_notes: list[str] = field(default_factory=list)
    verification: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)  # metric -> value (fractions)
    agreement: dict[str, float] = field(default_factory=dict)  # vs the baseline's predictions
    delta: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p90 at the first batch size
    throughput: dict[str, float] = field(default_factory=dict)  # batch size -> images/s
    verdict: str = ""
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pass"] = d.pop("pass_")
        return d


def model_sha256(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def primary_metric(accuracy: dict[str, float]) -> str | None:
    """The metric a verdict is judged on: the first of mIoU, top1, IoU, pixAcc present."""
    for key in ("mIoU", "top1", "IoU", "pixAcc"):
        if key in accuracy:
            return key
    return next(iter(accuracy), None)


def fill_deltas(stage: StageEval, baseline: StageEval) -> None:
    """Accuracy (absolute and relative) and speed deltas of `stage` against the baseline, as far as measured."""
    metric = primary_metric(baseline.accuracy)
    if metric and metric in stage.accuracy:
        base, value = baseline.accuracy[metric], stage.accuracy[metric]
        stage.delta[metric] = value - base
        stage.delta[f"{metric}_rel"] = (value - base) / base if base else 0.0
    if baseline.latency_ms.get("p50") and stage.latency_ms.get("p50"):
        stage.delta["speedup"] = baseline.latency_ms["p50"] / stage.latency_ms["p50"]


def judge(stage: StageEval, baseline: StageEval, budget: float) -> None:
    """Sets `verdict` and `reason` of a non-baseline stage (and its deltas against the baseline).

    Rules: a stage whose pass failed verification is rejected; an approximate pass is never accepted
    without an accuracy measurement; accepted when the primary metric dropped by at most `budget`
    (relative) against the baseline.
    """
    fill_deltas(stage, baseline)
    metric = primary_metric(baseline.accuracy)
    status = stage.verification.get("status")
    if status == "failed":
        stage.verdict, stage.reason = "rejected", f"verification failed: {stage.verification.get('detail', '')}"
        return
    if not stage.modified:
        stage.verdict, stage.reason = "accepted", "pass changed nothing: " + "; ".join(stage.pass_notes)
        return
    if metric is None or metric not in stage.accuracy:
        if stage.kind == "exact" and status == "passed":
            stage.verdict, stage.reason = "accepted", "exact: outputs verified equal to the previous stage"
        else:
            stage.verdict, stage.reason = "rejected", "no accuracy measurement for an approximate pass"
        return
    rel = stage.delta[f"{metric}_rel"]
    drop = -rel
    if drop <= budget + 1e-12:
        how = f"{metric} {stage.accuracy[metric]:.4f} vs {baseline.accuracy[metric]:.4f} ({rel:+.2%}), within the {budget:.2%} budget"
        if stage.kind == "exact" and status == "passed":
            how += "; outputs verified equal"
        stage.verdict, stage.reason = "accepted", how
    else:
        stage.verdict, stage.reason = "rejected", (
            f"{metric} {stage.accuracy[metric]:.4f} vs {baseline.accuracy[metric]:.4f} ({rel:+.2%}) exceeds the {budget:.2%} budget"
        )


#: Latencies within this fraction of the fastest are treated as equal: identical graphs timed
#: round-robin agree within about +-3% on the project's machine (benchmarks/RESULTS.md).
LATENCY_TIE = 0.03


def best_accepted(stages: list[StageEval]) -> StageEval:
    """The fastest stage that is the baseline or accepted.

    Stages within LATENCY_TIE of the fastest count as equally fast; among those the one that loses
    least accuracy wins, then an exact stage over an approximate one, then the smaller graph, then the
    later stage. So an approximate pass is never chosen for a speed gain that is only noise."""
    ok = [s for s in stages if s.verdict in ("baseline", "accepted") and s.latency_ms.get("p50")]
    if not ok:
        return stages[0]
    fastest = min(s.latency_ms["p50"] for s in ok)
    near = [(i, s) for i, s in enumerate(ok) if s.latency_ms["p50"] <= fastest * (1 + LATENCY_TIE)]

    def key(item: tuple[int, StageEval]):
        i, s = item
        drop = max(0.0, -min((v for k, v in s.delta.items() if k.endswith("_rel")), default=0.0))
        return (round(drop, 6), s.kind == "approximate", s.nodes, -i)

    return min(near, key=key)[1]
