"""The fp16 keep-set search: evaluations and time for Fast-SCNN (the demo's trained weights) and PSPNet.

    .venv/bin/python benchmarks/fp16_search.py [--models fastscnn,pspnet] [--subset 8] [--full 16]
        [--budget 1%] [--grouping chain] [--no-reverse] [--json benchmarks/results/fp16_search.json]

For each model: `export` (Fast-SCNN at the demo's 256x512 with the shipped synthetic-trained weights,
judged on mIoU; PSPNet-R50 at 160x160 with deterministic weights, judged on mIoU against the fp32
model's predictions, i.e. agreement), `simplify`, then `evaluate.fp16_search.search_fp16` exactly as
`report --per-node fp16` runs it: a `task_scorer` on the first `--subset` synthetic images (baseline
outputs recorded once and shared), confirmation on `--full` images, Conv+BN+activation groups, both
sensitivities, fp16 range statistics on `--subset` calibration images. Printed per model: candidates,
groups, evaluations on the subset and on the full set, seconds (search, range statistics, and per
evaluation), the keep-set, all-fp16 and mixed scores, and the overflow/underflow counts.

Measured on the shared 2-core machine while other jobs ran: absolute seconds are loaded figures,
evaluation counts are exact.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import onnx

from common import ROOT, THREADS, environment, md_table

from onnxforge.evaluate.calibration import calibration_inputs
from onnxforge.evaluate.fp16_search import fp16_groups, fp16_range_stats, search_fp16
from onnxforge.evaluate.keep_search import task_scorer
from onnxforge.frontends.export import export_model
from onnxforge.passes import PassManager
from onnxforge.passes.fp16 import Fp16

DATA = ROOT / "src" / "onnxforge" / "data"
# name -> (frontend, (H, W), checkpoint prefix or None, classes, judged on)
CONFIGS = {
    "fastscnn": ("fastscnn", (256, 512), "fastscnn_synthetic", 19, ("mIoU", "accuracy")),
    "pspnet": ("pspnet", (160, 160), None, 21, ("miou_vs_reference", "agreement")),
}


def bench(key: str, args, tmp: Path) -> dict:
    frontend, hw, ckpt, classes, (metric, source) = CONFIGS[key]
    checkpoint = next(DATA.glob(f"{ckpt}_*.pth"), None) if ckpt else None
    export_model(frontend, tmp / f"{key}.onnx", checkpoint=checkpoint, input_size=hw)
    fp32 = PassManager("simplify", verify=False).run(onnx.load(tmp / f"{key}.onnx")).model
    backend = f"onnxruntime{{threads={THREADS}}}"
    t = time.perf_counter()
    sub = task_scorer(fp32, "synthetic", None, limit=args.subset, backend=backend, num_classes=classes, metric=metric, source=source)
    full = task_scorer(fp32, "synthetic", None, limit=args.full, backend=backend, num_classes=classes, metric=metric, source=source)
    scorers_s = time.perf_counter() - t
    p = Fp16()
    candidates = p.candidates(fp32)
    groups = fp16_groups(fp32, candidates, args.grouping)
    t = time.perf_counter()
    name = fp32.graph.input[0].name
    rows = calibration_inputs(fp32, "synthetic", None, count=args.subset, classes=classes)[name]
    feeds = [{name: rows[i:i + 1]} for i in range(len(rows))]
    stats = fp16_range_stats(fp32, feeds, threads=THREADS)
    stats_s = time.perf_counter() - t
    t = time.perf_counter()
    found = search_fp16(fp32, sub, sub.baseline_value, args.budget, fp16=p, grouping=args.grouping, reverse=not args.no_reverse,
                        confirm=full, confirm_baseline=full.baseline_value, max_keep=args.max_keep,
                        subset_images=sub.images, full_images=full.images)
    search_s = time.perf_counter() - t
    # the ranking's cost when the search needs it: both sensitivities of the first --sweep groups, timed
    sweep = []
    t = time.perf_counter()
    for g in groups[:args.sweep]:
        kept = sub(p.__class__(dataclasses.replace(p.options, keep=g.nodes)).simulate(fp32))
        alone = sub(p.with_nodes(list(g.nodes)).simulate(fp32))
        sweep.append((g.name, round(kept, 4), round(alone, 4)))
    sweep_s = time.perf_counter() - t
    r = found.search
    evals = r.evaluations + r.confirm_evaluations
    over = sorted(((n, s.overflow) for n, s in stats.items() if s.overflow), key=lambda kv: -kv[1])
    under = sorted(((n, s.underflow) for n, s in stats.items() if s.underflow), key=lambda kv: -kv[1])
    return {
        "model": key, "input": [1, 3, *hw], "checkpoint": checkpoint.name if checkpoint else None, "judged_on": f"{metric} ({source})",
        "nodes": len(fp32.graph.node), "candidates": len(candidates), "groups": len(groups), "grouping": args.grouping,
        "subset_images": sub.images, "full_images": full.images, "evaluations_subset": r.evaluations,
        "evaluations_full": r.confirm_evaluations, "search_s": round(search_s, 1), "per_evaluation_s": round(search_s / max(evals, 1), 2),
        "scorers_s": round(scorers_s, 1), "range_stats_s": round(stats_s, 1), "baseline_subset": round(sub.baseline_value, 4),
        "baseline_full": round(full.baseline_value, 4), "score_all_fp16_subset": round(r.score_all, 4), "score": round(r.score, 4),
        "within_budget": r.within_budget, "keep": found.keep, "item": found.item, "note": r.note,
        "overflow_nodes": over[:5], "underflow_nodes": under[:5],
        "sweep_groups": len(sweep), "sweep_evaluations": 2 * len(sweep), "sweep_s": round(sweep_s, 1),
        "sweep_per_evaluation_s": round(sweep_s / max(2 * len(sweep), 1), 2),
        "full_ranking_evaluations": 1 + 2 * len(groups), "sweep_worst": sorted(sweep, key=lambda x: x[2])[:3],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(CONFIGS))
    ap.add_argument("--subset", type=int, default=8, help="images the search runs on")
    ap.add_argument("--full", type=int, default=16, help="images the keep-set is confirmed on")
    ap.add_argument("--budget", default="1%")
    ap.add_argument("--grouping", default="chain", choices=("chain", "node", "op"))
    ap.add_argument("--no-reverse", action="store_true", help="skip the 'only this group in fp16' sensitivity")
    ap.add_argument("--max-keep", type=int, default=8)
    ap.add_argument("--sweep", type=int, default=6, help="groups whose two sensitivities are timed even when the search needs no ranking")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models.split(","):
            results.append(bench(key, args, Path(tmp)))
            print(json.dumps(results[-1], indent=1), flush=True)
    header = ["model", "judged on", "candidates / groups", "evaluations (subset + full)", "images", "search s", "s/eval",
              "all-fp16 (subset)", "keep-set", "mixed score (full)", "ranking (1+2N evals)", "s/eval (sweep)"]
    rows = [[r["model"], r["judged_on"], f"{r['candidates']} / {r['groups']}", f"{r['evaluations_subset']} + {r['evaluations_full']}",
             f"{r['subset_images']} + {r['full_images']}", str(r["search_s"]), str(r["per_evaluation_s"]),
             f"{r['score_all_fp16_subset']} vs {r['baseline_subset']}", ", ".join(r["keep"]) or "(none)",
             f"{r['score']} vs {r['baseline_full']}", str(r["full_ranking_evaluations"]), str(r["sweep_per_evaluation_s"])]
            for r in results]
    print(environment())
    print(md_table(header, rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": environment(), "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
