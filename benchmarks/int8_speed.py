"""INT8 speed: fp32 vs static INT8 QDQ (all nodes, and the accuracy-controlled keep-set) on onnxruntime CPU.

    .venv/bin/python benchmarks/int8_speed.py [--models vovnet39,pspnet,fastscnn] [--rounds 10]
        [--images 8] [--eval 4] [--budget 0.01] [--search vovnet39]

For each model: `onnxforge export` at the seed input size (VoVNet-39 224, PSPNet 500x500, Fast-SCNN
1024x2048; Fast-SCNN with the project's trained synthetic weights, the others with deterministic
BatchNorm-calibrated weights), `simplify`, then `quantize{calibration=...}` calibrated on `--images`
synthetic images (the calibration seed, preprocessed as the evaluator does: whole image, ImageNet
mean/std), and, for the models in `--search`, `keep_in_float` for the `--budget` agreement drop. All
variants of a model are timed round-robin in one process (`evaluate.bench.round_robin`,
BENCH_THREADS threads). Agreement with fp32 is measured on `--eval` synthetic images of the
evaluation seed (not the calibration images): top-1 agreement for VoVNet, pixel agreement of the
argmax for the segmenters.

The script also prints the CPU's integer dot-product flags (/proc/cpuinfo: avx512_vnni, avx_vnni,
amx_int8) and which kernels onnxruntime ran for the INT8 model (session profiling: op types of the
executed nodes, so fused integer kernels such as QLinearConv show up by name). onnxruntime does not
report which MLAS instruction-set path it dispatched; see RESULTS.md for what can and cannot be said.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from common import ROOT, THREADS, environment, md_table, time_interleaved

from onnxforge.evaluate.agreement import cosine_similarity
from onnxforge.evaluate.calibration import calibration_inputs, write_calibration
from onnxforge.evaluate.int8_search import agreement_score, keep_in_float
from onnxforge.evaluate.synthetic import EVAL_SEED
from onnxforge.frontends.export import export_model
from onnxforge.numerics import make_session
from onnxforge.passes import PassManager
from onnxforge.passes.quantize import Quantize

DATA = ROOT / "src" / "onnxforge" / "data"
# name -> (frontend, (H, W), checkpoint or None, synthetic classes)
CONFIGS = {
    "vovnet39": ("vovnet39", (224, 224), None, None),
    "pspnet": ("pspnet", (500, 500), None, 21),
    "fastscnn": ("fastscnn", (1024, 2048), "fastscnn_synthetic", 19),
}


def cpu_flags() -> dict[str, bool]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
    out = {f: f in flags for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")}
    out["cpu"] = model  # type: ignore[assignment]
    return out


def executed_ops(model: onnx.ModelProto, feeds: dict) -> dict[str, int]:
    """Op types of the nodes onnxruntime executed in one profiled run (after its graph fusions)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "prof")
        opts.intra_op_num_threads = THREADS
        opts.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    counts: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            counts[e.get("args", {}).get("op_name", "?")] += 1
    return dict(counts.most_common())


def bench(key: str, args, tmp: Path) -> dict:
    frontend, hw, ckpt, classes = CONFIGS[key]
    checkpoint = next(DATA.glob(f"{ckpt}_*.pth"), None) if ckpt else None
    t = time.perf_counter()
    export_model(frontend, tmp / f"{key}.onnx", checkpoint=checkpoint, input_size=hw)
    fp32 = PassManager("simplify", verify=False).run(onnx.load(tmp / f"{key}.onnx")).model
    export_s = time.perf_counter() - t
    calib = write_calibration(tmp / f"{key}_calib.npz", fp32, "synthetic", None, count=args.images, classes=classes)
    name = fp32.graph.input[0].name
    evals = calibration_inputs(fp32, "synthetic", None, count=args.eval, seed=EVAL_SEED, classes=classes)[name]
    feeds = [{name: evals[i:i + 1]} for i in range(len(evals))]
    q = Quantize(calibration=str(calib), images=args.images)
    t = time.perf_counter()
    int8 = PassManager([q], verify=False).run(fp32).model
    quantize_s = time.perf_counter() - t
    models = {"fp32": fp32, "int8 all": int8}
    search = None
    if key in args.search.split(","):
        t = time.perf_counter()
        found = keep_in_float(fp32, feeds, budget=args.budget, quantize=q, max_keep=args.max_keep, threads=THREADS)
        search = {"keep": found.keep, "item": found.item, "score_all": found.score_all, "score": found.score,
                  "within_budget": found.within_budget, "quantizations": found.quantizations,
                  "seconds": round(time.perf_counter() - t, 1), "ranking_top5": found.ranking[:5]}
        if found.keep:
            models[f"int8 keep-set ({len(found.keep)} float)"] = PassManager(found.item, verify=False).run(fp32).model
    timings = time_interleaved(models, rounds=args.rounds)
    ref = [make_session(fp32, threads=THREADS).run(None, f)[0] for f in feeds]
    rows = []
    for label, model in models.items():
        sess = make_session(model, threads=THREADS)
        got = [sess.run(None, f)[0] for f in feeds]
        tm = timings[label]
        cos = cosine_similarity(np.concatenate([r.ravel() for r in ref]), np.concatenate([g.ravel() for g in got]))
        rows.append({"model": label, "nodes": len(model.graph.node), "p50_ms": round(tm.p50, 2), "p90_ms": round(tm.p90, 2),
                     "speedup": round(timings["fp32"].p50 / tm.p50, 2), "agreement": round(agreement_score(ref, got), 4),
                     "cosine": round(cos, 5)})
    return {"config": key, "input": [1, 3, *hw], "checkpoint": checkpoint.name if checkpoint else None,
            "calibration_images": args.images, "eval_images": args.eval, "export_simplify_s": round(export_s, 1),
            "quantize_s": round(quantize_s, 1), "pipeline": f"simplify,{q}".replace(str(calib), "calib.npz"), "rows": rows, "search": search,
            "int8_executed_ops": executed_ops(int8, feeds[0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(CONFIGS))
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--images", type=int, default=8, help="calibration images")
    ap.add_argument("--eval", type=int, default=4, help="evaluation images for agreement")
    ap.add_argument("--budget", type=float, default=0.01, help="agreement drop allowed to the keep-set search")
    ap.add_argument("--max-keep", type=int, default=4)
    ap.add_argument("--search", default="vovnet39", help="models to run keep_in_float on (comma list, '' for none)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "int8_speed.json"))
    args = ap.parse_args()
    flags = cpu_flags()
    print(f"environment: {environment()}\ncpu flags: {flags}\n", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models.split(","):
            res = bench(key, args, Path(tmp))
            results.append(res)
            print(f"### {key} {'x'.join(map(str, res['input']))}  (export+simplify {res['export_simplify_s']} s, quantize {res['quantize_s']} s)\n")
            print(f"pipeline `{res['pipeline']}`\n")
            print(md_table(["model", "nodes", "p50 ms", "p90 ms", "speedup vs fp32", "agreement vs fp32", "logit cosine"],
                           [[r["model"], r["nodes"], r["p50_ms"], r["p90_ms"], f"{r['speedup']:.2f}x", r["agreement"], r["cosine"]]
                            for r in res["rows"]]))
            if res["search"]:
                print(f"\nkeep_in_float: {res['search']}")
            print(f"\nINT8 model, executed op types: {res['int8_executed_ops']}\n", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"environment": environment(), "cpu_flags": flags, "threads": THREADS,
                                           "load_note": os.environ.get("BENCH_NOTE", ""), "results": results}, indent=2))


if __name__ == "__main__":
    main()
