"""The A/B run history: one record per stage (baseline and each pass), and the verdict on each.

A stage records its parent, the pass that made it, the cumulative pipeline, the model hash, node
count, size, op histogram, accuracy, agreement with the baseline, deltas, latency and throughput, its
speed against its parent (a ratio with an interval from interleaved rounds), and a verdict on two
axes. Reports (JSON, Markdown, HTML, plot) are views over this history.

Decision rules (`judge_accuracy` then `decide`), deterministic for the same measurements:
- accuracy axis: ``within`` the budget (relative ``1%`` or absolute ``0.5pt`` drop of the judged metric
  against the baseline), ``over`` it, or ``unmeasured`` (an exact, verified pass then counts as within);
- speed axis: ``faster`` / ``same`` / ``slower`` than the stage's parent, from the timing verdict;
- kept (verdict ``accepted``) = within budget and (faster, or exact and smaller at the same speed).
  An approximate pass is never kept on a tie; a slower stage is never kept.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

from onnxforge.errors import ForgeError


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
    verdict: str = ""  # baseline | accepted (kept) | rejected
    reason: str = ""
    accuracy_verdict: str = ""  # within | over | unmeasured
    speed: dict[str, Any] = field(default_factory=dict)  # vs parent: ratio, low, high, speedup.., verdict
    size_bytes: int = 0
    op_histogram: dict[str, int] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)  # warnings a reader must see (suspicious gains...)

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


#: metadata key the frontends write: "none" when the model was exported without a checkpoint
CHECKPOINT_METADATA_KEY = "onnxforge.checkpoint"
#: the agreement metric judged instead of each accuracy metric when the baseline's accuracy says nothing
AGREEMENT_FOR = {"mIoU": "miou_vs_reference", "top1": "top1_agreement", "IoU": "pixel_agreement",
                 "pixAcc": "pixel_agreement"}


def meaningless_reasons(model: onnx.ModelProto, accuracy: dict[str, float], num_classes: int | None,
                        data_classes: int | None = None, model_classes: int | None = None) -> list[str]:
    """Why a baseline's accuracy says nothing (empty when it is meaningful): a model exported without a
    checkpoint, a model predicting another number of classes than the data has, or a headline metric at
    chance level (<= 1/k for k >= 3 classes). `report` and `bisect` then judge on agreement instead."""
    why = []
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get(CHECKPOINT_METADATA_KEY) == "none":
        why.append("the model was exported without a checkpoint (deterministic weights)")
    if data_classes and model_classes and data_classes != model_classes and data_classes > 1:
        why.append(f"the model predicts {model_classes} classes but the data has {data_classes}")
    metric = primary_metric(accuracy)
    k = num_classes
    if metric and k and k >= 3 and accuracy[metric] <= 1.0 / k:
        why.append(f"baseline {metric} {accuracy[metric]:.4f} is at chance level for {k} classes "
                   f"(<= 1/{k}: no better than one class everywhere)")
    return why


def fill_deltas(stage: StageEval, baseline: StageEval) -> None:
    """Accuracy (absolute and relative) and speed deltas of `stage` against the baseline, as far as measured."""
    metric = primary_metric(baseline.accuracy)
    if metric and metric in stage.accuracy:
        base, value = baseline.accuracy[metric], stage.accuracy[metric]
        stage.delta[metric] = value - base
        stage.delta[f"{metric}_rel"] = (value - base) / base if base else 0.0
    if baseline.latency_ms.get("p50") and stage.latency_ms.get("p50"):
        stage.delta["speedup"] = baseline.latency_ms["p50"] / stage.latency_ms["p50"]


@dataclass(frozen=True)
class Budget:
    """The largest accepted accuracy drop: relative (``1%`` = 0.01 of the baseline's value) or absolute
    in metric points (``0.5pt`` = 0.005 of a metric in [0, 1], as the guides speak of mIoU 64.46 -> 60.41)."""

    value: float
    unit: str = "rel"  # rel | pt

    def __post_init__(self) -> None:
        if self.unit not in ("rel", "pt"):
            raise ForgeError(f"budget unit must be rel or pt, got {self.unit!r}")
        if not 0 <= self.value < (1 if self.unit == "rel" else 100):
            raise ForgeError(f"budget must be between 0 and {'100%' if self.unit == 'rel' else '100pt'}, got {self}")

    @classmethod
    def parse(cls, text: str | float | Budget) -> Budget:
        """'1%' -> 1% relative, '0.02' -> 2% relative, '0.5pt' -> 0.5 metric points absolute.

        Raises:
            ForgeError: anything else, or a value outside [0, 100%) / [0, 100pt).
        """
        if isinstance(text, Budget):
            return text
        if isinstance(text, (int, float)):
            return cls(float(text))
        t = str(text).strip().lower()
        try:
            if t.endswith("pt"):
                return cls(float(t[:-2]), "pt")
            if t.endswith("%"):
                return cls(float(t[:-1]) / 100)
            return cls(float(t))
        except ValueError:
            raise ForgeError(f"budget: expected a relative drop like 1% (or 0.01) or metric points like 0.5pt, got {text!r}") from None

    def allowed_drop(self, base_value: float) -> float:
        """The largest drop of a metric (fraction units) from `base_value` that is within budget."""
        return self.value / 100 if self.unit == "pt" else self.value * abs(base_value)

    def over(self, base: float, got: float) -> bool:
        """Whether `got` lost more than the budget allows against `base` (higher is better)."""
        return (base - got) > self.allowed_drop(base) + 1e-12

    def __str__(self) -> str:
        return f"{self.value:g}pt" if self.unit == "pt" else f"{self.value:.2%}"

    def describe(self, metric: str | None) -> str:
        what = metric or "the metric"
        return f"{self} absolute drop of {what}" if self.unit == "pt" else f"{self} relative drop of {what}"


def judge_accuracy(stage: StageEval, baseline: StageEval, budget: Budget, metric: str | None = None,
                   source: str = "accuracy") -> None:
    """The accuracy axis: sets `accuracy_verdict` (and deltas). A failed verification rejects outright.

    `metric` is the judged metric (default: the baseline's primary metric) taken from `stage.accuracy`,
    or from `stage.agreement` with `source="agreement"` (the baseline is then 1.0 by definition: agreement
    with itself), which is how a meaningless baseline (chance level, no checkpoint) is judged.
    """
    fill_deltas(stage, baseline)
    status = stage.verification.get("status")
    if status == "failed":
        stage.accuracy_verdict = "unmeasured"
        stage.verdict, stage.reason = "rejected", f"verification failed: {stage.verification.get('detail', '')}"
        return
    values = stage.agreement if source == "agreement" else stage.accuracy
    metric = metric or primary_metric(baseline.accuracy)
    if metric is None or metric not in values:
        stage.accuracy_verdict = "unmeasured"
        return
    base = 1.0 if source == "agreement" else baseline.accuracy[metric]
    value = values[metric]
    drop = base - value
    rel = (value - base) / base if base else 0.0
    if source == "agreement":
        stage.delta[f"{metric}_rel"] = rel
    within = drop <= budget.allowed_drop(base) + 1e-12
    stage.accuracy_verdict = "within" if within else "over"
    shown = f"{metric} {value:.4f} vs {base:.4f} ({rel:+.2%}{', agreement with the baseline' if source == 'agreement' else ''})"
    stage.reason = f"{shown} {'within' if within else 'exceeds'} the {budget} budget"


def decide(stage: StageEval, parent: StageEval | None) -> None:
    """The verdict from both axes (see the module docstring); needs `judge_accuracy` and `speed` first."""
    if stage.verdict == "rejected" and stage.verification.get("status") == "failed":
        return
    acc = stage.accuracy_verdict
    # "off": verification was turned off (--no-verify), so the pass's declared kind is trusted
    exact_verified = stage.kind == "exact" and stage.verification.get("status") in ("passed", "unchanged", "off")
    if not stage.modified:
        stage.verdict, stage.reason = "rejected", "changed nothing: " + "; ".join(stage.pass_notes)
        return
    if acc == "over":
        stage.verdict = "rejected"
        return
    if acc == "unmeasured" and not exact_verified:
        stage.verdict, stage.reason = "rejected", "no accuracy measurement for an approximate pass"
        return
    acc_text = stage.reason if acc == "within" else "exact: outputs verified equal to the parent"
    speed = stage.speed.get("verdict")
    shown = speed_text(stage)
    if speed == "faster":
        stage.verdict, stage.reason = "accepted", f"{acc_text}; {shown}"
    elif speed == "slower":
        stage.verdict, stage.reason = "rejected", f"{shown}; {acc_text}"
    elif speed == "same" and exact_verified and parent is not None and _smaller(stage, parent):
        stage.verdict, stage.reason = "accepted", f"{acc_text}; {shown}, exact and smaller ({parent.nodes} -> {stage.nodes} nodes)"
    elif speed == "same":
        why = "an approximate pass is never kept on a tie" if not exact_verified else "exact but not smaller"
        stage.verdict, stage.reason = "rejected", f"{shown}: {why}; {acc_text}"
    else:
        stage.verdict, stage.reason = "rejected", f"not timed; {acc_text}"


def _smaller(stage: StageEval, parent: StageEval) -> bool:
    return stage.nodes < parent.nodes or (stage.nodes == parent.nodes and 0 < stage.size_bytes < parent.size_bytes)


def speed_text(stage: StageEval) -> str:
    """'1.23x faster [1.18, 1.29]' style, from `stage.speed` ('-' when not timed)."""
    sp = stage.speed
    if not sp.get("verdict"):
        return "not timed"
    interval = f"{sp['speedup']:.2f}x [{sp['speedup_low']:.2f}, {sp['speedup_high']:.2f}]"
    word = {"faster": "faster than", "slower": "slower than", "same": "same speed as"}[sp["verdict"]]
    return f"{word} {sp.get('vs', 'the parent')}: {interval}"
