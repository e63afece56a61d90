"""The third-party corpus (tests/corpus/build.py): graph size and optimizer time vs onnxsim and onnxslim,
and every pass on every case (exact: verified or refused; approximate: deviation).

    .venv/bin/python benchmarks/corpus.py [--families smp,timm,onnx-node] [--node-stride 1] [--no-matrix]

Per case: nodes of the export, of onnxforge's exact pipeline (`simplify,adaptive-pool`, verified), of
onnxsim and of onnxslim, and the time of each (onnxforge's with its verification). Times are measured
in one process, case by case (onnxsim, onnxforge, onnxforge, onnxsim: each the mean of its two runs),
so their ratio holds on a noisy machine. Writes
benchmarks/results/corpus.json and prints the markdown tables of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402

from tests.corpus import build  # noqa: E402

EXACT_PIPELINE = "simplify,adaptive-pool"


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def sizes(case: build.Case) -> dict:
    """One case's sizes and times. onnxsim and onnxforge are timed in the order onnxsim, onnxforge,
    onnxforge, onnxsim and each time is the mean of its two runs: whichever runs first on a model pays
    for cold caches, which on this machine made onnxsim up to 2x faster when run second."""
    import onnxsim
    import onnxslim

    from onnxforge.errors import ForgeError
    from onnxforge.passes import PassManager, Verifier

    model = case.load()
    row = {"case": case.name, "nodes": len(model.graph.node)}

    def sim():
        return _timed(lambda: onnxsim.simplify(model, check_n=0))

    def forge():
        return _timed(lambda: PassManager(EXACT_PIPELINE, verifier=Verifier(inputs=case.inputs)).run(model))

    try:
        (simplified, _), first = sim()
    except Exception as exc:  # the peer's failure is a data point
        row["onnxsim"], row["onnxsim_error"] = None, f"{type(exc).__name__}: {str(exc)[:150]}"
        simplified = None
    try:
        result, f1 = forge()
        _, f2 = forge()
        row["forge_s"] = (f1 + f2) / 2
        row["forge"] = result.nodes_after
        row["verified"] = "/".join(s.verification.status for s in result.stages)
        row["forge_passes_s"] = sum(s.seconds for s in result.stages)  # the rest of forge_s is verification
        simplify = next((s for s in result.stages if s.name == "simplify"), None)
        row["slim_runs"] = str(simplify.stats.get("onnxslim_runs", "")) if simplify else ""
        row["by"] = str(simplify.stats.get("by", "")) if simplify else ""
    except ForgeError as exc:
        row["forge"], row["forge_error"] = None, str(exc)[:200]
    if simplified is not None:
        _, second = sim()
        row["onnxsim_s"], row["onnxsim"] = (first + second) / 2, len(simplified.graph.node)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    try:
        slim, row["onnxslim_s"] = _timed(lambda: onnxslim.slim(copy))
        row["onnxslim"] = len(slim.graph.node)
    except Exception as exc:  # the peer's failure is a data point
        row["onnxslim"], row["onnxslim_error"] = None, f"{type(exc).__name__}: {str(exc)[:150]}"
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="smp,timm,onnx-node")
    ap.add_argument("--node-stride", type=int, default=1, help="every Nth ONNX node test")
    ap.add_argument("--no-matrix", action="store_true", help="sizes and times only, not every pass on every case")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "corpus.json"))
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    families = tuple(args.families.split(","))

    from onnxforge.passes import all_passes

    zoo = build.zoo_cases(tuple(f for f in families if f != "onnx-node"), progress=lambda m: print(m, file=sys.stderr)) if set(families) - {"onnx-node"} else []
    failed_exports = [c for c in zoo if c.path is None]
    cases = [c for c in zoo if c.path is not None]
    left_out = []
    if "onnx-node" in families:
        for c in build.node_cases()[:: args.node_stride]:
            why = build.oracle_problem(c)
            (left_out.append((c.name, why)) if why else cases.append(c))

    rows = []
    for c in cases:
        if c.family != "onnx-node":
            rows.append(sizes(c))
            print(json.dumps(rows[-1]), file=sys.stderr)
    outcomes = []
    if not args.no_matrix:
        items = list(all_passes())
        for c in cases:
            model = c.load()
            for item in items:
                if c.family == "onnx-node" and all_passes()[item]().effective_kind().value != "exact":
                    continue
                outcomes.append(build.run_pass(c, item, model))

    payload = {
        "versions": build.versions(), "command": " ".join(["benchmarks/corpus.py", *sys.argv[1:]]),
        "sizes": rows, "failed_exports": [(c.name, c.reason) for c in failed_exports],
        "left_out": left_out,
        # messages of passes that only said why they did nothing are dropped: thousands of them
        "outcomes": [dict(o.__dict__, message="" if o.status == "unchanged" else o.message, seconds=round(o.seconds, 3)) for o in outcomes],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, separators=(",", ":"), default=str))
    print(render(payload))


def render(payload: dict) -> str:
    lines = ["| case | nodes | onnxforge exact | onnxsim | onnxslim | onnxforge s (verified) | onnxsim s | onnxslim s |", "|---|---|---|---|---|---|---|---|"]
    tf = ts = tl = 0.0
    worse = []
    for r in payload["sizes"]:
        f = lambda k: "fail" if r.get(k) is None else str(r[k])  # noqa: E731
        t = lambda k: f"{r[k]:.2f}" if k in r else "-"  # noqa: E731
        lines.append(f"| {r['case']} | {r['nodes']} | {f('forge')} | {f('onnxsim')} | {f('onnxslim')} | {t('forge_s')} | {t('onnxsim_s')} | {t('onnxslim_s')} |")
        if all(k in r for k in ("forge_s", "onnxsim_s", "onnxslim_s")):
            tf, ts, tl = tf + r["forge_s"], ts + r["onnxsim_s"], tl + r["onnxslim_s"]
        peers = [r[k] for k in ("onnxsim", "onnxslim") if r.get(k) is not None]
        if r.get("forge") is not None and peers and r["forge"] > min(peers):
            worse.append(r["case"])
    lines.append(f"\nTotals over cases where all three ran: onnxforge {tf:.1f} s (with verification), onnxsim {ts:.1f} s, "
                 f"onnxslim {tl:.1f} s; onnxforge / onnxsim = {tf / ts if ts else float('nan'):.2f}x. "
                 f"Cases where onnxforge's graph is larger than a peer's: {', '.join(worse) or 'none'}.")
    timed = [r for r in payload["sizes"] if all(k in r for k in ("forge_s", "onnxsim_s", "onnxslim_s", "forge_passes_s"))]
    if timed and ts:
        slimmed = [r for r in timed if r.get("slim_runs", "").startswith(("after", "alone"))]
        won = [r for r in slimmed if r.get("by", "").endswith("onnxslim")]
        verify = sum(r["forge_s"] - r["forge_passes_s"] for r in timed)
        smaller = [r for r in timed if r.get("forge") is not None and all(r.get(k) is not None and r["forge"] < r[k] for k in ("onnxsim", "onnxslim"))]
        lines.append(f"Where the time goes: verification {verify:.1f} s ({verify / ts:.2f}x onnxsim), the passes {tf - verify:.1f} s. "
                     f"onnxslim itself ran on {len(slimmed)} graphs ({', '.join(r['case'] for r in slimmed) or 'none'}) and gave the "
                     f"result on {len(won)}. onnxforge's graph is smaller than both peers' on {len(smaller)} of {len(timed)}.")
    if payload["outcomes"]:
        by = {}
        for o in payload["outcomes"]:
            by.setdefault(o["pass_"], Counter())[o["status"]] += 1
        lines += ["", "| pass | ok | unchanged | refused | mismatch | crash |", "|---|---|---|---|---|---|"]
        for p, c in by.items():
            lines.append(f"| `{p}` | {c['ok']} | {c['unchanged']} | {c['refused']} | {c['mismatch']} | {c['crash']} |")
        bugs = [o for o in payload["outcomes"] if o["status"] in ("mismatch", "crash")]
        if bugs:
            lines += ["", "Bugs found (case, pass, what):", ""]
            lines += [f"- `{o['case']}` `{o['pass_']}`: {o['status']}: {o['message'][:200]}" for o in bugs]
    if payload["failed_exports"]:
        lines += ["", f"Exports that do not work ({len(payload['failed_exports'])}): "
                  + "; ".join(f"{n}: {r[:90]}" for n, r in payload["failed_exports"])]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
