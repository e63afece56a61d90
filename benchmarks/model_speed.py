"""Model speed: each seed model's plain export vs the peers' outputs vs onnxforge's pipeline stages.

    .venv/bin/python benchmarks/model_speed.py [--models fastscnn,pspnet,...] [--rounds 10]

For every configuration: the plain export (torch 2.13's default dynamo exporter, what a user gets),
onnxsim, onnxslim, onnxoptimizer, onnxruntime's ORT_ENABLE_ALL offline model, and each cumulative
stage of the onnxforge pipeline, all timed round-robin in one process on onnxruntime CPU with fixed
threads. Ratios are against the plain export and the best peer measured in the same run; accuracy cost
is agreement with the plain export on a seeded input (weights are deterministic, BatchNorm calibrated).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import (PEERS, ROOT, agreement, environment, export_plain, md_table, outputs_of, peer_ort_offline,
                    time_interleaved)

from onnxforge.frontends import get_spec
from onnxforge.frontends.export import calibrate_batchnorm
from onnxforge.numerics import seeded_inputs
from onnxforge.passes import PassManager, parse_pipeline


class MmsegExportHead(torch.nn.Module):
    """What mmseg 0.x's pytorch2onnx exports for PSPNet: softmax, argmax, (1, N, H, W) int64 labels."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        logits = self.model(x)
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        return torch.softmax(logits, dim=1).argmax(dim=1).unsqueeze(0)


# name -> (model, input shape, wrapper, onnxforge pipeline)
CONFIGS = {
    "fastscnn": ("fastscnn", (1, 3, 1024, 2048), None, "simplify,adaptive-pool,label-upsample"),
    "pspnet": ("pspnet", (1, 3, 500, 500), MmsegExportHead, "simplify,adaptive-pool,drop-softmax-argmax"),
    "refinenet": ("refinenet", (1, 3, 500, 500), None, "simplify"),
    "unetpp-b1": ("unetpp", (1, 3, 96, 96), None, "simplify,resize-nearest"),
    "unetpp-b16": ("unetpp", (16, 3, 96, 96), None, "simplify,resize-nearest"),
    "vovnet39-b1": ("vovnet39", (1, 3, 224, 224), None, "simplify"),
    "vovnet39-b16": ("vovnet39", (16, 3, 224, 224), None, "simplify"),
}


def build(model_name: str, shape, wrapper):
    spec = get_spec(model_name)
    torch.manual_seed(0)
    module = spec.build("upstream").eval()
    calibrate_batchnorm(module, shape)
    if wrapper is not None:
        module = wrapper(module).eval()
    return spec, module


def bench_config(key: str, rounds: int, tmp: Path) -> dict:
    model_name, shape, wrapper, pipeline = CONFIGS[key]
    spec, module = build(model_name, shape, wrapper)
    t = time.perf_counter()
    plain = export_plain(module, shape, spec.input_name, None)
    export_s = time.perf_counter() - t
    feeds = seeded_inputs(plain)
    models = {"plain export": plain, "ort ORT_ENABLE_ALL": peer_ort_offline(plain, tmp)}
    peer_seconds = {}
    for name, fn in PEERS.items():
        t = time.perf_counter()
        models[name] = fn(plain)
        peer_seconds[name] = time.perf_counter() - t
    stages = {}
    current = plain
    for p in parse_pipeline(pipeline).passes:
        result = PassManager([p]).run(current)
        current = result.model
        label = f"onnxforge +{p}"
        models[label] = current
        stages[label] = result.stages[0].verification.status
    timings = time_interleaved(models, rounds=rounds)
    ref = outputs_of(plain, feeds)
    peers = [k for k in models if k not in ("plain export",) and not k.startswith("onnxforge")]
    best_peer = min(peers, key=lambda k: timings[k].p50)
    rows = []
    for name, model in models.items():
        tm = timings[name]
        rows.append({
            "model": name,
            "nodes": len(model.graph.node),
            "p50_ms": round(tm.p50, 2),
            "p90_ms": round(tm.p90, 2),
            "vs_plain": round(timings["plain export"].p50 / tm.p50, 3),
            "vs_best_peer": round(timings[best_peer].p50 / tm.p50, 3),
            "agreement": agreement(ref, outputs_of(model, feeds)),
            "verification": stages.get(name, ""),
        })
    return {"config": key, "shape": list(shape), "pipeline": pipeline, "best_peer": best_peer,
            "export_seconds": round(export_s, 1), "peer_seconds": {k: round(v, 2) for k, v in peer_seconds.items()},
            "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(CONFIGS))
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "model_speed.json"))
    args = ap.parse_args()
    print(f"environment: {environment()}\n")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models.split(","):
            res = bench_config(key, args.rounds, Path(tmp))
            results.append(res)
            print(f"### {key} {'x'.join(map(str, res['shape']))}  pipeline `{res['pipeline']}`  (best peer: {res['best_peer']})\n")
            print(md_table(["model", "nodes", "p50 ms", "p90 ms", "vs plain", "vs best peer", "agreement vs plain", "verify"],
                           [[r["model"], r["nodes"], r["p50_ms"], r["p90_ms"], f"{r['vs_plain']:.2f}x", f"{r['vs_best_peer']:.2f}x",
                             r["agreement"], r["verification"]] for r in res["rows"]]))
            print(flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"environment": environment(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
