"""Every Ascend pass on every corpus graph (tests/corpus/build.py): applied or skipped (with the
reason), the node-count effect, and the verification of what applied.

    .venv/bin/python benchmarks/ascend_passes.py [--families smp,timm,onnx-node] [--node-stride 1] [--cases TEXT]
    .venv/bin/python benchmarks/ascend_passes.py --combine A.json B.json   (one table from separate runs)

The passes are the registry's `ascend`-tagged ones (`onnxforge passes --tag ascend`), so a pass
tagged later is included without touching this script. Each pass runs alone on the case after
`simplify` (what `--passes simplify,ascend` gives it), first without verification; where it changes
the graph it runs again with the verifier on (the case's own inputs for onnx-node, else the verifier's
default shapes), and that run's node count and verdict are recorded. A pass that raises a PassError
is `refused`; a verification mismatch or an exception that is no ForgeError is a bug and listed.
Writes benchmarks/results/ascend_passes.json and prints the markdown summary of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.corpus import build  # noqa: E402

LISTED = 12  # graphs named per pass in the summary


def _simplified(case: build.Case):
    """The case after `simplify` (unverified: the corpus test verifies simplify), or the export as is."""
    from onnxforge.errors import ForgeError
    from onnxforge.passes import PassManager

    model = case.load()
    try:
        return PassManager("simplify", verify=False).run(model).model, ""
    except ForgeError as exc:
        return model, f"simplify refused ({str(exc)[:120]}); the export as is"


def run_one(case: build.Case, model, name: str) -> dict:
    """One pass on one (simplified) case: status, reasons, node counts, statistics, verdict.

    A first run without verification gives what the pass did and why it skipped; where it changed the
    graph, `build.run_pass` (the corpus test's runner: verifier on, bugs told from refusals) verifies it."""
    from onnxforge.passes import PassManager

    row = {"case": case.name, "pass": name, "nodes_before": len(model.graph.node)}
    try:
        stage = PassManager(name, verify=False).run(model).stages[0]
    except Exception:  # noqa: BLE001 - classified by the verified run below
        stage = None
    if stage is not None and not stage.modified:
        return row | {"status": "skipped" if stage.skipped else "n/a", "skipped": list(stage.skipped), "reasons": list(stage.notes)}
    outcome = build.run_pass(case, name, model)
    row |= {"status": {"ok": "applied"}.get(outcome.status, outcome.status), "nodes_after": outcome.nodes_after,
            "seconds": round(outcome.seconds, 3), "skipped": list(stage.skipped) if stage is not None else []}
    if outcome.status == "ok":
        row["stats"] = {k: v for k, v in stage.stats.items() if v} if stage is not None else {}
        kind = stage.kind if stage is not None else ""
        row["verification"] = "off" if kind == "backend-only" else "not passed" if outcome.message.startswith("verification ") else "passed"
    row["reasons"] = [outcome.message] if outcome.message and (outcome.status != "ok" or row["verification"] == "not passed") else []
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="smp,timm,onnx-node")
    ap.add_argument("--node-stride", type=int, default=1, help="every Nth ONNX node test")
    ap.add_argument("--cases", default="", help="only cases whose name contains this text")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ascend_passes.json"))
    ap.add_argument("--combine", nargs="+", metavar="JSON", help="run nothing: merge these results (e.g. one run per family) into --out")
    args = ap.parse_args()
    if args.combine:
        parts = [json.loads(Path(f).read_text()) for f in args.combine]
        payload = {"versions": parts[0]["versions"], "command": " ; ".join(p["command"] for p in parts), "passes": parts[0]["passes"],
                   "cases": sum(p["cases"] for p in parts), "simplify_notes": {k: v for p in parts for k, v in p["simplify_notes"].items()},
                   "not_applicable": sum(p.get("not_applicable", 0) for p in parts),
                   "rows": [r for p in parts for r in p["rows"]]}
        _write(payload, args.out)
        print(render(payload))
        return
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    from onnx_graphsurgeon.logger import G_LOGGER

    G_LOGGER.severity = G_LOGGER.ERROR  # its opset warnings on the node tests go to stdout
    families = tuple(args.families.split(","))

    from onnxforge.passes.registry import tagged

    passes = tagged("ascend")
    zoo_families = tuple(f for f in families if f != "onnx-node")
    cases = [c for c in (build.zoo_cases(zoo_families) if zoo_families else []) if c.path is not None]
    if "onnx-node" in families:
        cases += [c for c in build.node_cases()[:: args.node_stride] if not build.oracle_problem(c)]
    cases = [c for c in cases if args.cases in c.name]
    rows, notes = [], {}
    for i, case in enumerate(cases, 1):
        model, note = _simplified(case)
        if note:
            notes[case.name] = note
        for name in passes:
            rows.append(run_one(case, model, name))
        print(f"[{i}/{len(cases)}] {case.name}: " + ", ".join(r["pass"] for r in rows[-len(passes):] if r["status"] == "applied"), file=sys.stderr)
    payload = {"versions": build.versions(), "command": " ".join(["benchmarks/ascend_passes.py", *sys.argv[1:]]),
               "passes": passes, "cases": len(cases), "simplify_notes": notes, "rows": rows}
    _write(payload, args.out)
    print(render(payload))


def _write(payload: dict, out: str) -> None:
    """The JSON, without the rows of passes that found nothing to look at (thousands: only counted)."""
    payload["not_applicable"] = payload.get("not_applicable", 0) + sum(r["status"] == "n/a" for r in payload["rows"])
    payload["rows"] = [r for r in payload["rows"] if r["status"] != "n/a"]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(payload, separators=(",", ":"), default=str))


def render(payload: dict) -> str:
    """Per pass: graphs applied / skipped with a reason / refused / bugs, total node delta, verdicts;
    then the graphs each pass applies to, and its most common skip reasons."""
    by: dict[str, list[dict]] = defaultdict(list)
    for r in payload["rows"]:
        by[r["pass"]].append(r)
    lines = [f"{payload['cases']} corpus graphs, each after `simplify`; every `ascend`-tagged pass alone on each.", "",
             "| pass | applies to | node delta (total) | verified | skipped with a reason | refused | bugs |",
             "|---|---|---|---|---|---|---|"]
    for name in payload["passes"]:
        rs = by[name]
        applied = [r for r in rs if r["status"] == "applied"]
        delta = sum(r["nodes_after"] - r["nodes_before"] for r in applied)
        verdicts = Counter(r.get("verification", "-") for r in applied)
        count = lambda s: sum(r["status"] == s for r in rs)  # noqa: E731
        lines.append(f"| `{name}` | {len(applied)} | {delta:+d} | {', '.join(f'{k} {v}' for k, v in sorted(verdicts.items())) or '-'} | "
                     f"{count('skipped')} | {count('refused')} | {count('mismatch') + count('crash')} |")
    lines += ["", "Where each applies (graph: nodes before -> after):", ""]
    for name in payload["passes"]:
        applied = [r for r in by[name] if r["status"] == "applied"]
        if applied:  # the zoo graphs first; a long list is cut (the JSON has every row)
            applied.sort(key=lambda r: r["case"].startswith("onnx-node/"))
            more = f"; and {len(applied) - LISTED} more" if len(applied) > LISTED else ""
            lines.append(f"- `{name}`: " + "; ".join(f"{r['case']} {r['nodes_before']}->{r['nodes_after']}" for r in applied[:LISTED]) + more)
    lines += ["", "Most common skip reasons (node names removed), per pass:", ""]
    for name in payload["passes"]:
        reasons = Counter(_reason(s) for r in by[name] for s in r.get("skipped", []))
        if reasons:
            lines.append(f"- `{name}`: " + "; ".join(f"{why} ({n}x)" for why, n in reasons.most_common(3)))
    bugs = [r for r in payload["rows"] if r["status"] in ("mismatch", "crash")]
    if bugs:
        lines += ["", "Bugs (case, pass, what):", ""] + [f"- `{r['case']}` `{r['pass']}`: {r['status']}: {r['reasons'][0][:200]}" for r in bugs]
    return "\n".join(lines)


def _reason(skip: str) -> str:
    """A skip line without the node it names (`X skipped: why` -> `why`), names in parentheses elided."""
    import re

    why = skip.split(" skipped: ", 1)[-1]
    return re.sub(r"\b[\w./:-]*\([^()]*\)", "…", why)


if __name__ == "__main__":
    main()
