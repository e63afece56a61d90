"""Where the time goes: onnxruntime's per-node profile of a seed model, summed by op type.

    .venv/bin/python benchmarks/op_profile.py unetpp [--shape 1,3,96,96] [--runs 20]

Explains where no rewrite can pay on the CPU (a model whose time is all in convolutions).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import onnxruntime as ort

from common import THREADS, environment, export_plain, md_table
from model_speed import CONFIGS, build

from onnxforge.numerics import seeded_inputs


def profile(model, runs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "prof")
        opts.intra_op_num_threads = THREADS
        opts.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        feeds = seeded_inputs(model)
        for _ in range(runs):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for ev in events:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            per_op[ev["args"]["op_name"]] += ev["dur"] / 1000.0 / runs
    return dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", choices=sorted(CONFIGS))
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    model_name, shape, wrapper, _ = CONFIGS[args.config]
    spec, module = build(model_name, shape, wrapper)
    plain = export_plain(module, shape, spec.input_name)
    per_op = profile(plain, args.runs)
    total = sum(per_op.values())
    print(f"environment: {environment()}\n\n{args.config} {'x'.join(map(str, shape))}: {total:.2f} ms of kernel time per run\n")
    print(md_table(["op", "ms per run", "share"], [[op, f"{ms:.2f}", f"{ms / total:.1%}"] for op, ms in per_op.items()]))


if __name__ == "__main__":
    main()
