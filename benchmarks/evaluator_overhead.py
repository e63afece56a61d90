"""Evaluator overhead and memory on VOC-sized images.

    .venv/bin/python benchmarks/evaluator_overhead.py [--images 50] [--memory-counts 100,1000]

1. Overhead: `evaluate` with the pspnet preset (keep-ratio resize + pad to 500x500, mmseg mIoU) on
   synthetic images of VOC's typical 500x375 size written in the VOC2012 layout, against the backend's
   own inference time in the same run (`EvalResult.inference_s`), and against `benchmark()`'s raw
   throughput of the same model. Two models: the real PSPNet R50-D8 export (what users run) and a tiny
   21-class segmenter (the worst case: almost no inference time to hide the evaluator's work behind).
2. Memory: peak RSS of a fresh process evaluating the tiny model on 100 vs 1000 images (it must not
   grow with the dataset: the evaluator streams).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from common import ROOT, THREADS, environment, md_table

from onnxforge.evaluate.bench import benchmark
from onnxforge.evaluate.evaluator import evaluate
from onnxforge.evaluate.synthetic import write_synthetic
from onnxforge.modelio import save_model


def tiny_voc_model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(0.05 * rng.standard_normal((21, 3, 8, 8)).astype(np.float32), "w")
    sizes = numpy_helper.from_array(np.array([1, 21, 500, 500], np.int64), "sizes")
    nodes = [helper.make_node("Conv", ["input", "w"], ["f"], strides=[8, 8]),
             helper.make_node("Resize", ["f", "", "", "sizes"], ["output"], mode="linear")]
    g = helper.make_graph(nodes, "tiny_voc", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 500, 500])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 21, 500, 500])], [w, sizes])
    return save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def overhead(model: Path, root: Path, images: int) -> dict:
    res = evaluate(model, "voc2012", root, preset="pspnet", limit=images, backend_options={"threads": THREADS})
    raw = benchmark(model, [1], threads=THREADS, iters=10)[0]
    eval_ips = res.images / (res.total_s - res.setup_s)
    return {
        "images": res.images, "total_s": round(res.total_s, 2), "inference_s": round(res.inference_s, 2),
        "overhead_s": round(res.overhead_s, 2), "overhead_pct": round(100 * res.overhead_s / res.inference_s, 1),
        "eval_images_per_s": round(eval_ips, 2), "raw_images_per_s": round(raw.throughput, 2),
        "eval_vs_raw": round(eval_ips / raw.throughput, 3),
    }


MEMORY_SNIPPET = """
import resource, sys
from onnxforge.evaluate.evaluator import evaluate
evaluate(sys.argv[1], "voc2012", sys.argv[2], preset="pspnet", limit=int(sys.argv[3]))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mb(model: Path, root: Path, n: int) -> float:
    out = subprocess.run([sys.executable, "-c", MEMORY_SNIPPET, str(model), str(root), str(n)], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--memory-counts", default="100,1000")
    ap.add_argument("--skip-pspnet", action="store_true")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "evaluator_overhead.json"))
    args = ap.parse_args()
    print(f"environment: {environment()}\n")
    counts = [int(c) for c in args.memory_counts.split(",") if c]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = write_synthetic(tmp / "voc", n=max(counts + [args.images]), size=(375, 500), classes=21)
        tiny = tiny_voc_model(tmp / "tiny.onnx")
        results = {"overhead": {}, "memory_mb": {}}
        models = {"tiny 21-class segmenter": tiny}
        if not args.skip_pspnet:
            from onnxforge.frontends.export import export_model

            models["PSPNet R50-D8 500x500"] = export_model("pspnet", tmp / "pspnet.onnx").path
        rows = []
        for name, path in models.items():
            r = overhead(path, root, args.images)
            results["overhead"][name] = r
            rows.append([name, r["images"], r["inference_s"], r["overhead_s"], f"{r['overhead_pct']}%",
                         r["eval_images_per_s"], r["raw_images_per_s"], f"{r['eval_vs_raw']:.2f}"])
            print(name, r, flush=True)
        print("\n" + md_table(["model", "images", "inference s", "overhead s", "overhead / inference", "evaluate img/s",
                               "raw backend img/s", "evaluate / raw"], rows))
        mem_rows = []
        for n in counts:
            mb = peak_rss_mb(tiny, root, n)
            results["memory_mb"][str(n)] = round(mb, 1)
            mem_rows.append([n, f"{mb:.0f} MB"])
        print("\n" + md_table(["images", "peak RSS (fresh process)"], mem_rows))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"environment": environment(), **results}, indent=2))


if __name__ == "__main__":
    main()
