"""Evaluation at scale: one report's decisions (6 stages, 100 synthetic images) serial vs a pool vs Ray.

    .venv/bin/python benchmarks/eval_scale.py [--images 100] [--workers 2] [--no-ray] [--json results/eval_scale.json]

Each contender runs `decide_pipeline` (baseline + 6 cumulative stages, accuracy and agreement on the same
100 images, then the interleaved timing with a fixed number of rounds, serial in this process whatever the
executor) on the same model in the same process, one after the other; the ratios are wall times against the
serial run of this run. Every contender's accuracy, agreement and accuracy verdict per stage must equal the serial ones (checked;
speed verdicts come from real timings, which differ from run to run).

Contenders: ``serial`` (one process), ``pool`` (`--workers` processes, cores // workers threads each; the
pool's start-up is inside its time), ``ray`` (a local Ray cluster with `--workers` CPUs; its start-up is
reported apart and not inside its time, as a cluster is started once for many runs). ``warm-cache``: the
slot for the result cache (issue 16 item 1, another branch): `CONTENDERS` gets it once the cache is on main;
until then the row says it was not measured.
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
from onnxforge.evaluate.executor import PoolExecutor, RayExecutor, SerialExecutor
from onnxforge.evaluate.timing import TimingPolicy

PIPELINE = "simplify,transdata-align,resize-nearest,merge-casts,constant-reshape,fp16-output"  # 6 stages
TIMING = TimingPolicy(min_rounds=5, max_rounds=5, max_seconds=60.0)  # fixed: the same timing cost for everyone
H, W, C = 128, 256, 8


def model():
    """Conv 3->16 /2, Relu, Conv 16->C, bilinear x2: a small segmenter whose evaluation is not free."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(0.1 * rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(0.1 * rng.standard_normal((C, 16, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1.0] + [0.0] * (C - 1), np.float32), "b2"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [helper.make_node("Conv", ["image", "w1"], ["f1"], strides=[2, 2], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["f1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["f2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Resize", ["f2", "", "scales"], ["logits"], mode="linear", name="up",
                              coordinate_transformation_mode="half_pixel")]
    g = helper.make_graph(nodes, "eval_scale", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, H, W])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, C, H, W])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def decisions(d) -> list:
    """What must not depend on the executor: every stage's accuracy, agreement and accuracy verdict (the speed
    verdicts, and so the kept pipeline, come from real timings and may differ between runs)."""
    return [(s.name, s.accuracy, s.agreement, s.accuracy_verdict) for s in d.stages if not s.name.startswith("combined")]


def run(executor, images: int):
    t0 = time.perf_counter()
    d = decide_pipeline(model(), PIPELINE, DataSource("synthetic", None, None, images), timing=TIMING, executor=executor)
    return d, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "eval_scale.json")
    args = ap.parse_args()
    load_before = os.getloadavg()
    rows, base, ref = [], None, None
    serial_d, serial_s = run(SerialExecutor(), args.images)
    base, ref = serial_s, decisions(serial_d)
    stages = len(serial_d.stages) - 1 - sum(s.name.startswith("combined") for s in serial_d.stages)
    rows.append({"contender": "serial", "wall_s": round(serial_s, 2), "vs_serial": 1.0, "startup_s": 0.0, "same": True})
    with PoolExecutor(args.workers) as pool:
        d, s = run(pool, args.images)
        rows.append({"contender": f"pool ({pool.describe()})", "wall_s": round(s, 2), "vs_serial": round(base / s, 3),
                     "startup_s": None, "same": decisions(d) == ref})
    rows.append({"contender": "warm-cache", "wall_s": None, "vs_serial": None, "startup_s": None, "same": None,
                 "note": "not measured: the result cache (issue 16 item 1) is not on this branch"})
    if not args.no_ray:
        t0 = time.perf_counter()
        ray_ex = RayExecutor(workers=args.workers, num_cpus=args.workers)
        start = time.perf_counter() - t0
        try:
            d, s = run(ray_ex, args.images)
        finally:
            ray_ex.close()
        rows.append({"contender": f"ray ({ray_ex.describe()})", "wall_s": round(s, 2), "vs_serial": round(base / s, 3),
                     "startup_s": round(start, 2), "same": decisions(d) == ref})
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    result = {"command": f"benchmarks/eval_scale.py --images {args.images} --workers {args.workers}",
              "pipeline": PIPELINE, "stages": stages, "images": args.images, "environment": environment(),
              "load_before": [round(x, 2) for x in load_before], "uptime_after": uptime, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{stages} stages + baseline, {args.images} synthetic images {H}x{W}; load before {load_before}; {uptime}")
    print(md_table(["contender", "wall s", "speedup vs serial", "startup s", "same decisions"],
                   [[r["contender"], r["wall_s"] if r["wall_s"] is not None else "-", r["vs_serial"] or "-",
                     r["startup_s"] if r["startup_s"] is not None else "-",
                     {True: "yes", False: "NO", None: "-"}[r["same"]]] for r in rows]))
    if any(r["same"] is False for r in rows):
        raise SystemExit("a parallel run decided differently from the serial one")


if __name__ == "__main__":
    main()
