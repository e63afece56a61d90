"""Evaluation at scale: one report's decisions (6 stages, 100 synthetic images) serial vs a pool vs Ray.

    .venv/bin/python benchmarks/eval_scale.py [--images 100] [--workers 2] [--no-ray] [--json results/eval_scale.json]

Each contender runs `decide_pipeline` (baseline + 6 cumulative stages, accuracy and agreement on the same
100 images, then the interleaved timing with a fixed number of rounds, serial in this process whatever the
executor) on the same model in the same process, one after the other; the ratios are wall times against the
serial run of this run. Every contender's accuracy, agreement and accuracy verdict per stage must equal the serial ones (checked;
speed verdicts come from real timings, which differ from run to run).

Contenders: ``serial`` (one process, onnxruntime's default threads: one per core), ``serial, 1 thread``
(one process with the pool's per-session thread count, so the pool's gain is not a thread-count effect), ``pool`` (`--workers` processes, cores // workers threads each; the
``ray`` (a local Ray cluster with `--workers` CPUs). The pool's and the cluster's start-up (spawning or
starting workers, imports, a first session: a one-image unit per worker) is reported apart ("start s") and
not inside their times, as an executor is started once per command. ``warm-cache``: the
slot for the result cache (issue 16 item 1, another branch): once the cache is on main, the placeholder row in
`main` becomes a second run of the serial contender against a cache warmed by the first (then expect only the
pass manager and the timing rounds); until then the row says it was not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from common import ROOT, environment, md_table

from onnxforge.evaluate.ab import DataSource, decide_pipeline
from onnxforge.evaluate.executor import EvalUnit, ModelBlob, PoolExecutor, RayExecutor, SerialExecutor, run_eval_unit
from onnxforge.evaluate.timing import TimingPolicy

PIPELINE = "simplify,transdata-align,resize-nearest,merge-casts,constant-reshape,fp16-output"  # 6 stages
TIMING = TimingPolicy(min_rounds=5, max_rounds=5, max_seconds=60.0)  # fixed: the same timing cost for everyone
H, W, C = 256, 512, 8


def model():
    """Conv 3->32 /2, Relu, Conv 32->32, Relu, Conv 32->C, bilinear x2 at 256x512: a small segmenter whose
    evaluation costs more than a worker's start-up."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(0.1 * rng.standard_normal((32, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(0.05 * rng.standard_normal((32, 32, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(0.05 * rng.standard_normal((C, 32, 3, 3)).astype(np.float32), "w3"),
             numpy_helper.from_array(np.array([1.0] + [0.0] * (C - 1), np.float32), "b3"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [helper.make_node("Conv", ["image", "w1"], ["f1"], strides=[2, 2], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["f1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["f2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["f2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["f3"], pads=[1, 1, 1, 1], name="conv3"),
             helper.make_node("Resize", ["f3", "", "scales"], ["logits"], mode="linear", name="up",
                              coordinate_transformation_mode="half_pixel")]
    g = helper.make_graph(nodes, "eval_scale", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, H, W])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, C, H, W])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def warm(executor) -> float:
    """Starts the executor's workers (imports, a first session) on two one-image units; its wall seconds."""
    unit = EvalUnit(model=ModelBlob.of(model()), dataset="synthetic", limit=1, threads=executor.threads)
    t0 = time.perf_counter()
    executor.map(run_eval_unit, [unit] * max(executor.workers, 1))
    return time.perf_counter() - t0


def decisions(d) -> list:
    """What must not depend on the executor: every stage's accuracy, agreement and accuracy verdict (the speed
    verdicts, and so the kept pipeline, come from real timings and may differ between runs)."""
    return [(s.name, s.accuracy, s.agreement, s.accuracy_verdict) for s in d.stages if not s.name.startswith("combined")]


class Timed:
    """An executor that adds up the wall time of its `map` calls (the evaluations; the rest of a report, the
    pass manager and the timing rounds, is the same work for every contender)."""

    def __init__(self, inner) -> None:
        self.inner, self.map_s = inner, 0.0
        self.name, self.workers, self.threads = inner.name, inner.workers, inner.threads

    def map(self, fn, units, progress=None):
        t0 = time.perf_counter()
        try:
            return self.inner.map(fn, units, progress)
        finally:
            self.map_s += time.perf_counter() - t0

    def describe(self) -> str:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()


def run(executor, images: int):
    """(decision, report wall s, evaluation wall s)."""
    timed = Timed(executor)
    t0 = time.perf_counter()
    d = decide_pipeline(model(), PIPELINE, DataSource("synthetic", None, None, images), timing=TIMING, executor=timed)
    return d, time.perf_counter() - t0, timed.map_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "eval_scale.json")
    args = ap.parse_args()
    run(SerialExecutor(), 2)  # warm-up, not measured: imports (onnxsim, onnxslim) and first sessions
    load_before = os.getloadavg()
    rows = []

    def row(name, d, total, evals, startup=None):
        rows.append({"contender": name, "report_s": round(total, 2), "evaluation_s": round(evals, 2),
                     "evaluation_vs_serial": round(rows[0]["evaluation_s"] / evals, 3) if rows else 1.0,
                     "report_vs_serial": round(rows[0]["report_s"] / total, 3) if rows else 1.0,
                     "startup_s": startup, "same": decisions(d) == ref})

    serial_d, total, evals = run(SerialExecutor(), args.images)
    ref = decisions(serial_d)
    stages = len(serial_d.stages) - 1 - sum(s.name.startswith("combined") for s in serial_d.stages)
    row("serial", serial_d, total, evals)
    d, total, evals = run(SerialExecutor(threads=1), args.images)  # the pool's per-session threads, one process
    row("serial, 1 thread per session", d, total, evals)
    with PoolExecutor(args.workers) as pool:
        start = warm(pool)
        d, total, evals = run(pool, args.images)
        row(f"pool ({pool.describe()})", d, total, evals, round(start, 2))
    # SLOT: the result cache (issue 16 item 1). Replace with run(SerialExecutor(), ...) on a warm cache.
    rows.append({"contender": "warm-cache", "note": "not measured: the result cache (issue 16 item 1) is not on this branch"})
    if not args.no_ray:
        t0 = time.perf_counter()
        ray_ex = RayExecutor(workers=args.workers, num_cpus=args.workers)
        try:
            start = time.perf_counter() - t0 + warm(ray_ex)
            d, total, evals = run(ray_ex, args.images)
        finally:
            ray_ex.close()
        row(f"ray ({ray_ex.describe()})", d, total, evals, round(start, 2))
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    result = {"command": f"benchmarks/eval_scale.py --images {args.images} --workers {args.workers}",
              "pipeline": PIPELINE, "stages": stages, "images": args.images, "environment": environment(),
              "load_before": [round(x, 2) for x in load_before], "uptime_after": uptime, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{stages} stages + baseline, {args.images} synthetic images {H}x{W}; load before {load_before}; {uptime}")
    print(md_table(["contender", "evaluations s", "vs serial", "whole decision s", "vs serial", "start s", "same results"],
                   [[r["contender"], r.get("evaluation_s", "-"), r.get("evaluation_vs_serial", "-"), r.get("report_s", "-"),
                     r.get("report_vs_serial", "-"), r.get("startup_s") if r.get("startup_s") is not None else "-",
                     {True: "yes", False: "NO", None: "-"}[r.get("same")]] for r in rows]))
    if any(r.get("same") is False for r in rows):
        raise SystemExit("a parallel run decided differently from the serial one")


if __name__ == "__main__":
    main()
