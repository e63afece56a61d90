from __future__ import annotations

import json

import numpy as np
import pytest

from onnxforge.errors import EvaluationError
from onnxforge.evaluate.timing import (
    FASTER, SAME, SLOWER, STOP_MAX_ROUNDS, STOP_STABLE, STOP_TIME_LIMIT,
    TimingPolicy, analyse, measure_interleaved, verdict_of,
)


class FakeClock:
    """A clock that only moves when a fake candidate 'runs'."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_candidates(clock: FakeClock, means_ms: dict[str, float], noise: float, seed: int = 1,
                    order: list | None = None):
    """Candidates whose run advances the clock by mean * (1 + noise * N(0, 1)) ms, with a shared drift."""
    rng = np.random.default_rng(seed)
    state = {"calls": 0}

    def make(name: str, mean: float):
        def run() -> None:
            state["calls"] += 1
            drift = 1.0 + 0.05 * np.sin(state["calls"] / 7.0)  # slow machine drift hits everyone alike
            if order is not None:
                order.append(name)
            clock.now += mean * drift * max(0.1, 1.0 + noise * rng.standard_normal()) / 1000.0
        return run

    return {n: make(n, m) for n, m in means_ms.items()}


def run(means_ms, pairs, aa=("copy", "base"), noise=0.02, policy=TimingPolicy(min_rounds=10, max_rounds=60),
        seed=1, progress=None):
    clock = FakeClock()
    return measure_interleaved(fake_candidates(clock, means_ms, noise, seed), pairs, policy, aa=aa,
                               clock=clock, progress=progress)


def test_same_input_three_times_gives_identical_decisions():
    means = {"base": 10.0, "copy": 10.0, "fast": 9.0, "slow": 11.5}
    pairs = [("fast", "base"), ("slow", "base")]
    dicts = [run(means, pairs).to_dict() for _ in range(3)]
    assert dicts[0] == dicts[1] == dicts[2]
    t = run(means, pairs)
    assert t.verdict("fast", "base") == FASTER and t.verdict("slow", "base") == SLOWER
    # the same samples analysed again give the same intervals and verdicts
    again = analyse(t.samples_ms, pairs, t.policy, aa=t.aa, stopped_by=t.stopped_by, elapsed_s=t.elapsed_s)
    assert again.to_dict() == t.to_dict()


@pytest.mark.parametrize("seed", range(8))
def test_an_aa_pair_is_never_faster_and_sets_the_floor(seed):
    t = run({"base": 10.0, "copy": 10.0}, [("copy", "base")], noise=0.05, seed=seed,
            policy=TimingPolicy(min_rounds=5, max_rounds=30, seed=seed))
    aa = t.ratio("copy", "base")
    assert aa.is_aa and aa.verdict == SAME and t.floor_source == "aa"
    assert t.floor == max(aa.high - aa.low, 1 - aa.low, aa.high - 1, abs(aa.ratio - 1), t.policy.min_floor)


def test_a_twenty_percent_faster_stage_with_small_noise_is_faster():
    t = run({"base": 10.0, "copy": 10.0, "fast": 8.0}, [("fast", "base")], noise=0.01)
    r = t.ratio("fast", "base")
    assert r.verdict == FASTER and r.high < 1 - t.floor
    assert r.ratio == pytest.approx(0.8, abs=0.02)
    assert r.speedup == pytest.approx(1 / r.ratio) and r.speedup_low <= r.speedup <= r.speedup_high
    assert t.stopped_by == STOP_STABLE and t.rounds == t.policy.min_rounds


def test_a_one_percent_difference_under_three_percent_noise_is_same():
    # A run that stops once the floor is under 6%: within that floor a 1% gain is no claim. (Run long
    # enough, a real 1% gain can become measurable; that is not what this checks.)
    for seed in range(10):
        t = run({"base": 10.0, "copy": 10.0, "near": 9.9}, [("near", "base")], noise=0.03, seed=seed,
                policy=TimingPolicy(min_rounds=10, max_rounds=40, seed=seed, target_floor=0.06))
        assert t.verdict("near", "base") == SAME, t.to_dict()


def test_without_an_aa_pair_the_floor_is_the_minimum_and_says_so():
    t = run({"base": 10.0, "fast": 8.0}, [("fast", "base")], aa=None, noise=0.01)
    assert t.floor == t.policy.min_floor and t.floor_source == "min_floor" and t.aa is None
    assert t.verdict("fast", "base") == FASTER


def undecided(clock: FakeClock):
    """base and its copy take 10 ms; 'odd' alternates 8 and 12 ms: its interval straddles every boundary."""
    calls = {"n": 0}

    def tick(ms: float) -> None:
        clock.now += ms / 1000.0

    def odd() -> None:
        calls["n"] += 1
        tick(8.0 if calls["n"] % 2 else 12.0)

    return {"base": lambda: tick(10.0), "copy": lambda: tick(10.0), "odd": odd}


def test_stops_at_max_rounds_when_the_verdict_stays_unstable():
    clock, progress = FakeClock(), []
    t = measure_interleaved(undecided(clock), [("odd", "base")],
                            TimingPolicy(min_rounds=5, max_rounds=25, max_seconds=1e9), aa=("copy", "base"),
                            clock=clock, progress=lambda d, n: progress.append((d, n)))
    assert t.stopped_by == STOP_MAX_ROUNDS and t.rounds == 25
    assert not t.ratio("odd", "base").stable and t.verdict("odd", "base") == SAME
    assert progress[0] == (1, 25) and progress[-1] == (25, 25) and len(progress) == 25
    assert all(s.samples == 25 for s in t.candidates.values())


def test_stops_at_the_time_limit_after_min_rounds():
    # each round takes 30 ms of fake time; 0.5 s allows 16 rounds, 2 of them warmup
    clock = FakeClock()
    t = measure_interleaved(undecided(clock), [("odd", "base")],
                            TimingPolicy(min_rounds=5, max_rounds=1000, max_seconds=0.5), aa=("copy", "base"), clock=clock)
    assert t.stopped_by == STOP_TIME_LIMIT and t.rounds == 15
    assert t.elapsed_s >= 0.5


def test_min_rounds_run_even_past_the_time_limit():
    clock = FakeClock()
    t = measure_interleaved(undecided(clock), [("odd", "base")],
                            TimingPolicy(min_rounds=8, max_rounds=100, max_seconds=1e-6), aa=("copy", "base"), clock=clock)
    assert t.rounds == 8 and t.stopped_by == STOP_TIME_LIMIT


def test_rounds_interleave_in_a_rotating_seeded_order():
    clock, order = FakeClock(), []
    cands = fake_candidates(clock, {"a": 1.0, "b": 1.0, "c": 1.0}, 0.0, order=order)
    measure_interleaved(cands, [("b", "a")], TimingPolicy(min_rounds=6, max_rounds=6, warmup=0), clock=clock)
    rounds = [order[i:i + 3] for i in range(0, len(order), 3)]
    assert len(rounds) == 6 and all(sorted(r) == ["a", "b", "c"] for r in rounds)
    # every candidate takes every position once per block of 3 rounds
    for block in (rounds[:3], rounds[3:]):
        for pos in range(3):
            assert sorted(r[pos] for r in block) == ["a", "b", "c"]
    clock2, order2 = FakeClock(), []
    measure_interleaved(fake_candidates(clock2, {"a": 1.0, "b": 1.0, "c": 1.0}, 0.0, order=order2),
                        [("b", "a")], TimingPolicy(min_rounds=6, max_rounds=6, warmup=0), clock=clock2)
    assert order2 == order


def test_a_candidate_may_report_its_own_time():
    clock = FakeClock()
    t = measure_interleaved({"base": lambda: 0.010, "fast": lambda: 0.005}, [("fast", "base")],
                            TimingPolicy(min_rounds=3, max_rounds=3, warmup=0), clock=clock)
    assert t.candidates["base"].median_ms == pytest.approx(10.0)
    assert t.ratio("fast", "base").ratio == pytest.approx(0.5)


def test_results_serialise_to_plain_json():
    t = run({"base": 10.0, "copy": 10.0, "fast": 8.0}, [("fast", "base")], noise=0.01)
    d = json.loads(json.dumps(t.to_dict()))
    assert set(d) >= {"candidates", "pairs", "floor", "floor_source", "aa", "rounds", "stopped_by", "policy"}
    assert set(d["candidates"]["base"]) == {"name", "median_ms", "p10_ms", "p90_ms", "samples"}
    fast = next(p for p in d["pairs"] if p["stage"] == "fast")
    assert set(fast) >= {"ratio", "low", "high", "speedup", "speedup_low", "speedup_high", "verdict"}
    assert fast["verdict"] == FASTER and [p["aa"] for p in d["pairs"]] == [False, True]


def test_verdict_rules():
    assert verdict_of(0.9, 0.85, 0.95, 0.02) == FASTER
    assert verdict_of(0.99, 0.985, 0.995, 0.02) == SAME   # interval below 1 but inside the floor
    assert verdict_of(0.9, 0.8, 1.01, 0.02) == SAME       # interval includes 1
    assert verdict_of(1.1, 1.05, 1.15, 0.02) == SLOWER
    assert verdict_of(1.01, 1.005, 1.015, 0.02) == SAME


@pytest.mark.parametrize("field, value", [
    ("min_rounds", 0), ("min_rounds", -3), ("max_rounds", 1), ("max_seconds", 0), ("confidence", 1.0),
    ("confidence", 0), ("resamples", 5), ("min_floor", -0.1), ("warmup", -1),
])
def test_bad_policy_values_are_one_line_errors(field, value):
    with pytest.raises(EvaluationError, match=field) as err:
        TimingPolicy(**{field: value}).validate()
    assert "\n" not in str(err.value)


def test_bad_names_are_errors():
    clock = FakeClock()
    with pytest.raises(EvaluationError, match="unknown candidate 'nope'"):
        measure_interleaved({"a": lambda: 0.001}, [("nope", "a")], clock=clock)
    with pytest.raises(EvaluationError, match="itself"):
        measure_interleaved({"a": lambda: 0.001}, [("a", "a")], clock=clock)
    with pytest.raises(EvaluationError, match="non-positive"):
        measure_interleaved({"a": lambda: 0.0, "b": lambda: 0.001}, [("b", "a")],
                            TimingPolicy(min_rounds=2, max_rounds=2, warmup=0), clock=clock)
    t = run({"base": 10.0, "copy": 10.0}, [])
    with pytest.raises(EvaluationError, match="no timing comparison x/base"):
        t.ratio("x", "base")


def test_a_runner_callback_instead_of_callables():
    clock, seen = FakeClock(), []

    def runner(name: str) -> float:
        seen.append(name)
        return {"base": 0.010, "fast": 0.006}[name]

    t = measure_interleaved(["base", "fast"], [("fast", "base")], TimingPolicy(min_rounds=3, max_rounds=3, warmup=1),
                            clock=clock, runner=runner)
    assert sorted(seen) == ["base"] * 4 + ["fast"] * 4
    assert t.ratio("fast", "base").ratio == pytest.approx(0.6) and t.verdict("fast", "base") == FASTER
    with pytest.raises(EvaluationError, match="need a runner"):
        measure_interleaved(["base", "fast"], [("fast", "base")], clock=clock)
    with pytest.raises(EvaluationError, match="not both"):
        measure_interleaved({"base": lambda: 0.01}, [], clock=clock, runner=runner)


def test_summary_says_what_stopped_the_rounds_and_where_the_floor_came_from():
    t = run({"base": 10.0, "copy": 10.0, "fast": 8.0}, [("fast", "base")], noise=0.01)
    assert t.summary().startswith(f"{t.rounds} rounds (stopped: stable), noise floor ")
    assert "(A/A copy/base)" in t.summary() and "95% intervals" in t.summary()
    t = run({"base": 10.0, "fast": 8.0}, [("fast", "base")], aa=None, noise=0.01)
    assert "no A/A pair measured" in t.summary()


def test_identical_pairs_widen_the_floor_and_read_same():
    # baseline and its A/A copy agree closely; a stage that runs the very same model drifted 8% in this
    # run. As an A/A measurement it must widen the floor, so it and a real 5% change both read `same`.
    rng = np.random.default_rng(3)
    base = 10 + rng.normal(0, 0.05, 40)
    samples = {"baseline": base, "copy": base * (1 + rng.normal(0, 0.002, 40)),
               "unchanged": base * 1.08, "five": base * 0.95}
    pairs = [("unchanged", "baseline"), ("five", "baseline")]
    policy = TimingPolicy(min_rounds=5, max_rounds=40)
    plain = analyse(samples, pairs, policy, aa=("copy", "baseline"))
    assert plain.verdict("five", "baseline") == "faster"
    widened = analyse(samples, pairs, policy, aa=("copy", "baseline"), identical=[("unchanged", "baseline")])
    assert widened.floor >= 0.08
    assert widened.verdict("unchanged", "baseline") == "same"
    assert widened.verdict("five", "baseline") == "same"


def test_a_wide_floor_is_not_stable_the_run_goes_on_to_its_limit():
    # an A/A copy 30% noisier than it should be: every pair sits inside the floor (all `same`), which
    # must not count as a stable answer while the floor is above the target
    rng = np.random.default_rng(5)
    noise = iter(rng.normal(0, 0.3, 10_000))
    calls = {"n": 0}

    def make(scale):
        def run():
            calls["n"] += 1
            return abs(10 * scale * (1 + next(noise))) / 1000 + 1e-4
        return run

    cands = {"baseline": make(1.0), "copy": make(1.0), "stage": make(1.0)}
    policy = TimingPolicy(min_rounds=5, max_rounds=30, max_seconds=1e9, warmup=0)
    t = measure_interleaved(cands, [("stage", "baseline")], policy, aa=("copy", "baseline"))
    assert t.floor > policy.target_floor
    assert t.stopped_by == "max_rounds" and t.rounds == 30
