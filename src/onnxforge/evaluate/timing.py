"""Latency comparisons with a confidence: interleaved rounds, an A/A noise floor, adaptive stopping.

Pure Python + numpy (no backend import); the clock is injectable so tests run on a fake timer.

How a comparison is measured (`measure_interleaved`):
- **Candidates** are named callables that run one inference. A callable may return the seconds the
  backend measured for that run (e.g. `runner.last_inference_s`); when it returns None the clock is
  read around the call. Build them like
  `def run(r=runner, f=feeds): r.infer(f); return r.last_inference_s`. Or pass the names and one
  `runner(name)` callback.
- **Rounds**: every candidate runs once per round. The order rotates every round through a seeded
  permutation (a fresh permutation every `len(candidates)` rounds), so each candidate takes each
  position equally often and machine drift hits all of them alike. `policy.warmup` untimed rounds
  come first.
- **Pairs** are `(stage, parent)` names. For each pair the per-round paired ratios
  `t_stage[r] / t_parent[r]` give the point estimate (their median) and a bootstrap percentile interval
  of that median (`policy.resamples` resamples, seeded with `policy.seed`, at `policy.confidence`).
  The same samples always give the same interval and the same verdict.
- **Noise floor from the run itself**: pass `aa=(copy, parent)` where `copy` is an identical copy of
  `parent` (a second session of the same model) timed in the same rounds. The floor is the larger of
  the A/A interval's width (the smallest change this many rounds can resolve) and the farthest distance
  from 1 of the A/A ratio or its interval (a bias between identical sessions), and never below
  `policy.min_floor` (default 1%). It shrinks as rounds accumulate.
  Without `aa` the floor is `policy.min_floor` and the result says so (`floor_source="min_floor"`).
- **Verdict** per pair (`verdict_of`): `faster` only when the interval lies entirely below 1 and the
  ratio is below `1 - floor`; `slower` when the interval lies entirely above 1 and the ratio is above
  `1 + floor`; otherwise `same`. The A/A pair is therefore always `same`.
- **Adaptive rounds**: at least `min_rounds`, then rounds continue until the floor is at most
  `target_floor` and every pair is stable (its
  interval lies wholly inside one verdict region: below `1 - floor`, within `[1 - floor, 1 + floor]`,
  or above `1 + floor`), or `max_rounds` rounds ran, or `max_seconds` (on the injected clock, warmup
  included) passed. The time limit is only checked once `min_rounds` rounds ran. Stability is checked
  at `min_rounds`, then every `max(1, rounds // 10)` rounds (the bootstrap is not free) and at the last
  round. `Timings.stopped_by` is `"stable"` (all pairs stable), `"max_rounds"` or `"time_limit"`
  (the limit was reached with some pair still unstable).

Results: `Timings` (per candidate `CandidateStats`: median/p10/p90 ms and sample count; per pair
`RatioCI`: ratio, low, high, speedup = 1/ratio with its interval, verdict; floor; rounds; stopped_by).
`Timings.to_dict()` is plain JSON for report.json. `analyse(samples_ms, pairs, ...)` computes the same
result from samples collected elsewhere.

Public API (stable; extend, don't rename): `TimingPolicy`, `measure_interleaved`, `analyse`,
`Timings` (`.ratio(stage, parent)`, `.verdict(stage, parent)`, `.summary()`, `.to_dict()`), `RatioCI`
(`.verdict`, `.speedup`, `.speedup_low`, `.speedup_high`, `.stable`, `.to_dict()`), `CandidateStats`,
`verdict_of`, the verdict constants `FASTER`/`SLOWER`/`SAME` and the stop reasons
`STOP_STABLE`/`STOP_MAX_ROUNDS`/`STOP_TIME_LIMIT`.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from onnxforge.errors import EvaluationError

log = logging.getLogger(__name__)

FASTER, SLOWER, SAME = "faster", "slower", "same"
STOP_STABLE, STOP_MAX_ROUNDS, STOP_TIME_LIMIT = "stable", "max_rounds", "time_limit"

#: A candidate runs one inference; it returns the seconds the backend measured, or None to use the clock.
Candidate = Callable[[], "float | None"]
#: (rounds done, max rounds), called after every timed round.
RoundProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class TimingPolicy:
    """How long to measure and how sure to be. Defaults suit CPU models of a few ms to a few 100 ms.

    Attributes:
        min_rounds: timed rounds always run (>= 2).
        max_rounds: hard cap on timed rounds (>= min_rounds).
        max_seconds: time budget on the clock, checked after `min_rounds` (> 0).
        confidence: level of every interval, in (0, 1).
        resamples: bootstrap resamples per interval (>= 100).
        seed: seeds the round order and the bootstrap.
        min_floor: the smallest noise floor, as a fraction of 1 (0.01 = 1%), in [0, 1).
        target_floor: the run counts as stable only once the measured floor is at most this (a floor of
            40% after a few noisy rounds makes every pair "stable" at `same` and says nothing), in
            [min_floor, 1).
        warmup: untimed rounds before the first timed one (>= 0).
    """

    min_rounds: int = 20
    max_rounds: int = 200
    max_seconds: float = 60.0
    confidence: float = 0.95
    resamples: int = 2000
    seed: int = 0
    min_floor: float = 0.01
    warmup: int = 2
    target_floor: float = 0.05

    def validate(self) -> None:
        """Raises EvaluationError naming the first bad field and its value."""
        checks = [
            ("min_rounds", isinstance(self.min_rounds, int) and self.min_rounds >= 2, "an integer >= 2"),
            ("max_rounds", isinstance(self.max_rounds, int) and self.max_rounds >= self.min_rounds,
             f"an integer >= min_rounds ({self.min_rounds})"),
            ("max_seconds", self.max_seconds > 0, "> 0"),
            ("confidence", 0 < self.confidence < 1, "in (0, 1)"),
            ("resamples", isinstance(self.resamples, int) and self.resamples >= 100, "an integer >= 100"),
            ("min_floor", 0 <= self.min_floor < 1, "in [0, 1)"),
            ("warmup", isinstance(self.warmup, int) and self.warmup >= 0, "an integer >= 0"),
            ("target_floor", self.min_floor <= self.target_floor < 1, f"in [min_floor ({self.min_floor}), 1)"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise EvaluationError(f"timing policy: {name} must be {want}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CandidateStats:
    """One candidate's latency distribution over the timed rounds, in milliseconds."""

    name: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    samples: int

    def to_dict(self) -> dict:
        return asdict(self)


def verdict_of(ratio: float, low: float, high: float, floor: float) -> str:
    """`faster`/`slower` only when the interval excludes 1 and the ratio is beyond the floor; else `same`."""
    if high < 1.0 and ratio < 1.0 - floor:
        return FASTER
    if low > 1.0 and ratio > 1.0 + floor:
        return SLOWER
    return SAME


@dataclass(frozen=True)
class RatioCI:
    """Latency ratio stage/parent (< 1: the stage is faster) with its interval and verdict."""

    stage: str
    parent: str
    ratio: float
    low: float
    high: float
    confidence: float
    floor: float
    is_aa: bool = False  # the A/A pair the floor was measured on

    @property
    def verdict(self) -> str:
        return verdict_of(self.ratio, self.low, self.high, self.floor)

    @property
    def speedup(self) -> float:
        """parent / stage latency (> 1: the stage is faster)."""
        return 1.0 / self.ratio

    @property
    def speedup_low(self) -> float:
        return 1.0 / self.high

    @property
    def speedup_high(self) -> float:
        return 1.0 / self.low

    @property
    def stable(self) -> bool:
        """The interval lies wholly inside one verdict region, so more rounds would not flip it."""
        lo_edge, hi_edge = 1.0 - self.floor, 1.0 + self.floor
        return self.high < lo_edge or self.low > hi_edge or (self.low >= lo_edge and self.high <= hi_edge)

    def to_dict(self) -> dict:
        return {"stage": self.stage, "parent": self.parent, "ratio": self.ratio, "low": self.low,
                "high": self.high, "confidence": self.confidence, "speedup": self.speedup,
                "speedup_low": self.speedup_low, "speedup_high": self.speedup_high,
                "verdict": self.verdict, "floor": self.floor, "aa": self.is_aa}


@dataclass(frozen=True)
class Timings:
    """The outcome of one interleaved measurement; `to_dict()` is what report.json stores."""

    candidates: dict[str, CandidateStats]
    pairs: tuple[RatioCI, ...]
    floor: float
    floor_source: str  # "aa" (measured) or "min_floor" (no A/A pair given)
    aa: tuple[str, str] | None
    rounds: int
    stopped_by: str
    elapsed_s: float
    policy: TimingPolicy
    samples_ms: dict[str, tuple[float, ...]] = field(repr=False, default_factory=dict)

    def ratio(self, stage: str, parent: str) -> RatioCI:
        """The comparison of `stage` with `parent`. Raises EvaluationError if it was not measured."""
        for p in self.pairs:
            if (p.stage, p.parent) == (stage, parent):
                return p
        known = ", ".join(f"{p.stage}/{p.parent}" for p in self.pairs)
        raise EvaluationError(f"no timing comparison {stage}/{parent} (measured: {known or 'none'})")

    def verdict(self, stage: str, parent: str) -> str:
        return self.ratio(stage, parent).verdict

    def summary(self) -> str:
        """One line for reports, e.g. '42 rounds (stopped: stable), noise floor 1.8% (A/A copy/base), 95% intervals'."""
        floor = f"noise floor {self.floor:.1%} " + (
            f"(A/A {self.aa[0]}/{self.aa[1]})" if self.aa else "(minimum; no A/A pair measured)")
        stop = {STOP_STABLE: "stable", STOP_MAX_ROUNDS: "round limit reached",
                STOP_TIME_LIMIT: "time limit reached"}.get(self.stopped_by, self.stopped_by)
        return f"{self.rounds} rounds (stopped: {stop}), {floor}, {self.policy.confidence:.0%} intervals"

    def to_dict(self) -> dict:
        return {
            "candidates": {n: s.to_dict() for n, s in self.candidates.items()},
            "pairs": [p.to_dict() for p in self.pairs],
            "floor": self.floor,
            "floor_source": self.floor_source,
            "aa": list(self.aa) if self.aa else None,
            "rounds": self.rounds,
            "stopped_by": self.stopped_by,
            "elapsed_s": self.elapsed_s,
            "policy": self.policy.to_dict(),
        }


def _median_ci(ratios: np.ndarray, policy: TimingPolicy) -> tuple[float, float, float]:
    """Median of the paired ratios and its seeded bootstrap percentile interval."""
    rng = np.random.default_rng(policy.seed)
    n = len(ratios)
    medians = np.median(ratios[rng.integers(0, n, size=(policy.resamples, n))], axis=1)
    alpha = (1.0 - policy.confidence) / 2.0
    low, high = np.quantile(medians, [alpha, 1.0 - alpha])
    return float(np.median(ratios)), float(low), float(high)


def _check_names(names: Sequence[str], pairs: Sequence[tuple[str, str]], aa: tuple[str, str] | None) -> None:
    if not names:
        raise EvaluationError("timing needs at least one candidate")
    known = set(names)
    for stage, parent in list(pairs) + ([aa] if aa else []):
        for n in (stage, parent):
            if n not in known:
                raise EvaluationError(f"timing pair {stage}/{parent}: unknown candidate {n!r} "
                                      f"(known: {', '.join(sorted(known))})")
        if stage == parent:
            raise EvaluationError(f"timing pair {stage}/{parent} compares a candidate with itself")


def analyse(
    samples_ms: Mapping[str, Sequence[float]],
    pairs: Sequence[tuple[str, str]],
    policy: TimingPolicy = TimingPolicy(),
    aa: tuple[str, str] | None = None,
    stopped_by: str = STOP_MAX_ROUNDS,
    elapsed_s: float = 0.0,
    identical: Sequence[tuple[str, str]] = (),
) -> Timings:
    """Statistics, ratios, floor and verdicts from per-round samples (round r of every candidate at index r).

    `identical` names further pairs known to run the same model (a stage a pass left unchanged): each is
    an A/A measurement too, so the floor covers the widest of them as well as `aa`'s; their verdicts are
    then `same` by construction, as the A/A pair's is.

    Raises:
        EvaluationError: unknown names, unequal sample counts, fewer than 2 rounds, non-positive times.
    """
    policy.validate()
    names = list(samples_ms)
    _check_names(names, pairs, aa)
    arrays = {n: np.asarray(samples_ms[n], dtype=np.float64) for n in names}
    counts = {len(a) for a in arrays.values()}
    if len(counts) != 1:
        raise EvaluationError(f"timing samples must have one per round for every candidate, got counts {sorted(counts)}")
    (rounds,) = counts
    if rounds < 2:
        raise EvaluationError(f"timing needs at least 2 rounds, got {rounds}")
    for n, a in arrays.items():
        if not np.all(np.isfinite(a)) or np.any(a <= 0):
            raise EvaluationError(f"timing candidate {n!r} reported a non-positive or non-finite time")
    stats = {}
    for n, a in arrays.items():
        med, p10, p90 = np.percentile(a, [50, 10, 90])
        stats[n] = CandidateStats(n, float(med), float(p10), float(p90), rounds)

    def interval(stage: str, parent: str) -> tuple[float, float, float]:
        return _median_ci(arrays[stage] / arrays[parent], policy)

    floor, source = policy.min_floor, "min_floor"
    for pair in ([tuple(aa)] if aa is not None else []) + [tuple(p) for p in identical]:
        r, lo, hi = interval(*pair)
        floor, source = max(floor, hi - lo, abs(r - 1.0), 1.0 - lo, hi - 1.0), "aa"
    wanted = list(dict.fromkeys([tuple(p) for p in pairs] + ([tuple(aa)] if aa else [])))
    results = tuple(RatioCI(s, p, *interval(s, p), policy.confidence, floor, is_aa=aa is not None and (s, p) == tuple(aa))
                    for s, p in wanted)
    return Timings(stats, results, floor, source, tuple(aa) if aa else None, rounds, stopped_by, elapsed_s,
                   policy, {n: tuple(float(x) for x in a) for n, a in arrays.items()})


def _orders(n: int, seed: int):
    """Round orders: a seeded permutation rotated by one each round, a fresh one every n rounds."""
    rng = random.Random(seed)
    while True:
        perm = rng.sample(range(n), n)
        for k in range(n):
            yield perm[k:] + perm[:k]


def measure_interleaved(
    candidates: Mapping[str, Candidate] | Sequence[str],
    pairs: Sequence[tuple[str, str]],
    policy: TimingPolicy = TimingPolicy(),
    aa: tuple[str, str] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    progress: RoundProgress | None = None,
    runner: Callable[[str], "float | None"] | None = None,
) -> Timings:
    """Times `candidates` in interleaved rounds until the verdicts of `pairs` are stable (module docstring).

    Args:
        candidates: name -> callable running one inference (returns seconds measured, or None); or just
            the names, with `runner`.
        pairs: (stage, parent) comparisons wanted; the A/A pair is added if missing.
        policy: rounds, time budget, confidence, seed, minimum floor.
        aa: (copy, parent) where `copy` is an identical copy of `parent`; it measures the noise floor.
        clock: seconds, monotonic; inject a fake one in tests.
        progress: called with (timed rounds done, policy.max_rounds) after every timed round.
        runner: `runner(name)` runs one inference of `name` (same return convention); required when
            `candidates` is a list of names, not allowed with callables.

    Raises:
        EvaluationError: a bad policy, unknown or self-compared names, a candidate reporting a
            non-positive time.
    """
    policy.validate()
    names = list(candidates)
    if isinstance(candidates, Mapping):
        if runner is not None:
            raise EvaluationError("timing: give candidates as callables or a runner, not both")
        runs = [candidates[n] for n in names]
    else:
        if runner is None:
            raise EvaluationError("timing: candidates given by name need a runner")
        runs = [functools.partial(runner, n) for n in names]
    _check_names(names, pairs, aa)
    samples: dict[str, list[float]] = {n: [] for n in names}
    orders = _orders(len(names), policy.seed)
    start = clock()

    def one_round(record: bool) -> None:
        for i in next(orders):
            t0 = clock()
            reported = runs[i]()
            seconds = clock() - t0 if reported is None else float(reported)
            if record:
                samples[names[i]].append(seconds * 1000.0)

    for _ in range(policy.warmup):
        one_round(record=False)
    rounds, next_check, stopped_by = 0, policy.min_rounds, STOP_MAX_ROUNDS
    while True:
        one_round(record=True)
        rounds += 1
        if progress is not None:
            progress(rounds, policy.max_rounds)
        if rounds < policy.min_rounds:
            continue
        out_of_time = clock() - start >= policy.max_seconds
        last = out_of_time or rounds >= policy.max_rounds
        if rounds >= next_check or last:
            current = analyse(samples, pairs, policy, aa)
            if current.floor <= policy.target_floor and all(p.stable for p in current.pairs):
                stopped_by = STOP_STABLE
                break
            next_check = rounds + max(1, rounds // 10)
        if last:
            stopped_by = STOP_TIME_LIMIT if out_of_time and rounds < policy.max_rounds else STOP_MAX_ROUNDS
            break
    elapsed = clock() - start
    log.info("timing: %d rounds of %d candidates, stopped by %s after %.1f s", rounds, len(names), stopped_by, elapsed)
    return analyse(samples, pairs, policy, aa, stopped_by=stopped_by, elapsed_s=elapsed)
