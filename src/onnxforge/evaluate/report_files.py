"""Report views over the run history: report.json, report.md, report.html and the accuracy-vs-latency plot.

Every file is written atomically, and the report directory as a whole is built beside its target and
swapped in at the end (`modelio.staging_dir`). The HTML page is rendered from a jinja2 template
(`templates/report.html.j2`) and embeds the plot (base64 PNG), so it is self-contained. It opens with
the answer: keep/reject per pass, the combined command, its speed-up with the interval, its accuracy cost.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from onnxforge.evaluate.history import StageEval, primary_metric, speed_text
from onnxforge.modelio import write_bytes_atomic, write_text_atomic


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _interval(sp: dict[str, Any]) -> str:
    if not sp.get("verdict"):
        return "-"
    return f"{sp['speedup']:.2f}x [{sp['speedup_low']:.2f}, {sp['speedup_high']:.2f}]"


def _judged(stages: list[StageEval], judged_on: dict[str, str] | None) -> tuple[str | None, str]:
    if judged_on and judged_on.get("metric"):
        return judged_on["metric"], judged_on.get("source", "accuracy")
    return (primary_metric(stages[0].accuracy) if stages else None), "accuracy"


def decision_rows(stages: list[StageEval], judged_on: dict[str, str] | None = None) -> tuple[list[str], list[list[str]]]:
    """The decision table (terminal, Markdown, HTML): per stage, both axes and the verdict."""
    metric, source = _judged(stages, judged_on)
    header = ["stage", "pass", "kind", metric or "accuracy", "Δ vs baseline", "accuracy", "speed vs parent",
              "speed", "verdict"]
    rows = []
    for s in stages:
        values = s.agreement if source == "agreement" else s.accuracy
        value = values.get(metric) if metric else None
        if value is None and source == "agreement" and s.name == "baseline":
            value = 1.0
        rel = s.delta.get(f"{metric}_rel") if metric else None
        rows.append([
            s.name, s.pass_ or "-", s.kind or "-", _fmt(value), f"{rel:+.2%}" if rel is not None else "-",
            s.accuracy_verdict or "-", _interval(s.speed), s.speed.get("verdict", "-"),
            {"accepted": "keep", "rejected": "reject"}.get(s.verdict, s.verdict),
        ])
    return header, rows


def table_rows(stages: list[StageEval], judged_on: dict[str, str] | None = None) -> tuple[list[str], list[list[str]]]:
    """The full table: the decision columns first, then nodes, size, agreement, latencies, verification."""
    header, rows = decision_rows(stages, judged_on)
    agree_key = next(iter(stages[-1].agreement), None) if stages and stages[-1].agreement else None
    header = header + ["nodes", "size MB", agree_key or "agreement", "p50 ms", "p90 ms", "vs baseline", "verification"]
    for s, r in zip(stages, rows):
        vb = s.speed.get("vs_baseline") or (s.speed if s.speed.get("vs") == "baseline" else {})
        r += [
            str(s.nodes), f"{s.size_bytes / 1e6:.2f}" if s.size_bytes else "-",
            _fmt(s.agreement.get(agree_key)) if agree_key else "-",
            _fmt(s.latency_ms.get("p50"), 2), _fmt(s.latency_ms.get("p90"), 2),
            f"{vb['speedup']:.2f}x" if vb.get("speedup") else "-",
            s.verification.get("status", "-") if s.verification else "-",
        ]
    return header, rows


def pareto(stages: list[StageEval], points: dict[str, tuple[float, float]]) -> list[str]:
    """Names of the stages no other stage beats on both latency and the judged metric (fastest first);
    `points` maps a stage name to (latency, metric)."""
    pts = [(points[s.name][0], points[s.name][1], s.name) for s in stages if s.name in points]
    front, best = [], float("-inf")
    for lat, acc, name in sorted(pts, key=lambda t: (t[0], -t[1])):
        if acc > best:
            front.append(name)
            best = acc
    return front


def plot_png(stages: list[StageEval], title: str, budget_floor: float | None = None, best: str | None = None,
             judged_on: dict[str, str] | None = None) -> bytes:
    """The judged metric (accuracy, or agreement with the baseline) against p50 latency: one numbered
    point per stage with p10-p90 error bars, a grey edge from each stage's parent, the Pareto front,
    the budget line (`budget_floor`: the lowest accepted value) and the best stage ringed; a key names
    the numbers."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, source = _judged(stages, judged_on)
    metric = metric or "accuracy"
    colours = {"baseline": "#1f77b4", "accepted": "#2ca02c", "rejected": "#d62728"}

    def value(s: StageEval) -> float | None:
        if source == "agreement":
            return 1.0 if s.name == "baseline" else s.agreement.get(metric)
        return s.accuracy.get(metric)

    points = {s.name: (s.latency_ms.get("p50"), value(s)) for s in stages}
    points = {k: v for k, v in points.items() if v[0] is not None and v[1] is not None}
    fig = plt.figure(figsize=(10, 5.2), dpi=110)
    ax = fig.add_axes((0.08, 0.11, 0.52, 0.78))
    for s in stages:
        if s.name in points and s.parent in points:
            (x0, y0), (x1, y1) = points[s.parent], points[s.name]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="->", color="#bbbbbb", lw=1), zorder=1)
    front = [points[n] for n in pareto(stages, points)]
    if len(front) > 1:
        ax.plot([x for x, _ in front], [y for _, y in front], "--", color="#9467bd", lw=1, zorder=2, label="Pareto front")
    if budget_floor is not None:
        ax.axhline(budget_floor, color="#ff7f0e", lw=1, ls=":", zorder=2, label="accuracy budget")
    key = []
    for i, s in enumerate(stages):
        if s.name not in points:
            continue
        x, y = points[s.name]
        lo, hi = s.latency_ms.get("p10", x), s.latency_ms.get("p90", x)
        ax.errorbar([x], [y], xerr=[[max(x - lo, 0)], [max(hi - x, 0)]], fmt="none", ecolor="#888888", lw=0.8, zorder=2)
        ax.scatter([x], [y], s=80, color=colours.get(s.verdict, "#7f7f7f"), zorder=3, edgecolor="black", linewidth=0.5)
        if s.name == best:
            ax.scatter([x], [y], s=260, facecolors="none", edgecolors="#000000", linewidths=1.5, zorder=4, label="best")
        ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8, zorder=5)
        key.append(f"{i}  {s.name} ({s.verdict})")
    for verdict, colour in colours.items():
        ax.scatter([], [], color=colour, label=verdict, edgecolor="black", linewidth=0.5)
    fig.legend(loc="lower left", bbox_to_anchor=(0.63, 0.02), fontsize=8, title="legend", title_fontsize=8)
    ax.set_xlabel("latency p50 (ms, p10-p90 bars; lower is better)")
    ax.set_ylabel(f"{metric}{' (agreement with the baseline)' if source == 'agreement' else ''} (higher is better)")
    ax.grid(True, alpha=0.3)
    ax.ticklabel_format(axis="y", useOffset=False)
    fig.suptitle("\n".join(textwrap.wrap(title, 95)), fontsize=9)
    wrapped = []
    for line in key[:24]:
        wrapped += textwrap.wrap(line, 58, subsequent_indent="     ")
    if len(key) > 24:
        wrapped.append(f"... and {len(key) - 24} more (see the table)")
    fig.text(0.63, 0.89, "\n".join(wrapped), fontsize=7, va="top", family="monospace")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The answer in a few lines: warnings first, then what to run and what it buys (plain text)."""
    lines = [f"warning: {w}" for w in report.get("warnings", [])]
    best = report["best"]
    sp = best.get("speed") or {}
    if best.get("command"):
        acc = best.get("accuracy_cost") or "none measured"
        lines.append(f"keep {report['kept_pipeline']}: {_interval(sp)} vs the baseline ({sp.get('verdict')}), accuracy cost {acc}")
        lines.append(f"reproduce: {best['command']}")
    else:
        lines.append("no pass pays within the budget: best.onnx is the baseline")
    return lines


def markdown(report: dict[str, Any], stages: list[StageEval]) -> str:
    header, rows = table_rows(stages, report.get("judged_on"))
    lines = [f"# onnxforge report: {report['model']}", ""]
    lines += [f"> **{ln}**" if ln.startswith("warning") else f"> {ln}" for ln in summary_lines(report)] + [""]
    lines += [f"- pipeline: `{report['pipeline']}` ({report['mode']})",
              f"- data: {report['data']}",
              f"- backend: {report['backend']} ({report['environment'].get('threads')} threads), batch sizes {report['batch_sizes']}",
              f"- accuracy budget: {report.get('budget_text', report['budget'])}",
              f"- timing: {timing_text(report)}",
              f"- best stage: **{report['best']['stage']}** -> `{report['best']['model']}`", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    lines += ["", "![accuracy vs latency](accuracy_vs_latency.png)", "", "## Verdicts", ""]
    lines += [f"- **{s.name}** ({s.verdict}): {s.reason}" + "".join(f" **flag: {f}**" for f in s.flags) for s in stages]
    for search in report.get("keep_searches", []):
        k_header, k_rows = keep_search_rows(search)
        lines += ["", f"## Keep-set search: {search['pass']}", ""] + [f"- {ln}" for ln in keep_search_lines(search)] + [""]
        lines.append("| " + " | ".join(k_header) + " |")
        lines.append("|" + "|".join("---" for _ in k_header) + "|")
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in k_rows]
        if report.get("precision_config") and search["pass"] == "fp16":
            lines += ["", f"atc config: `{report['precision_config']}/` (keep_dtype.cfg, precision.json): "
                      f"`onnxforge compile MODEL --backend atc --precision-config {report['precision_config']}`"]
    if report.get("dropped"):
        lines += ["", "## Dropped by --auto", ""] + [f"- `{d['pass']}`: {d['reason']}" for d in report["dropped"]]
    lines += ["", "## Reproduce", ""] + [f"    {c}" for c in report["commands"]]
    if report.get("compile_commands"):  # what the backend's compiler (atc) ran for each stage, exactly
        lines += ["", "## Compile commands", ""]
        for c in report["compile_commands"]:
            lines += [f"- **{c['stage']}** ({c.get('tool', 'compiler')}" + (f", CANN profile {c['cann_profile']}" if c.get("cann_profile") else "")
                      + "):", "", f"      {c['shell']}", ""]
    env = report["environment"]
    lines += ["", "## Environment", ""] + [f"- {k}: {v}" for k, v in env.items()]
    return "\n".join(lines) + "\n"


def keep_search_rows(search: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The per-node table of one keep-set search (`--per-node fp16|quantize`): each group's score with only
    it kept in high precision, with only it in low precision (fp16), overflow/underflow counts of its
    outputs (fp16), and whether the search kept it. Rows in ranking order."""
    fp16 = search.get("pass") == "fp16"
    header = ["group", "nodes", "score, only this kept high"] + (["score, only this low", "overflow", "underflow"] if fp16 else []) + ["kept"]
    rows = []
    for r in search.get("rows", []):
        row = [r["group"], " ".join(r["nodes"]), _fmt(r.get("score_kept"))]
        if fp16:
            row += [_fmt(r.get("score_alone")), str(r.get("overflow", 0)), str(r.get("underflow", 0))]
        rows.append(row + ["yes" if r.get("kept") else ""])
    return header, rows


def keep_search_lines(search: dict[str, Any]) -> list[str]:
    """What one keep-set search did, in plain lines (evaluations, images, the result)."""
    s = search.get("search", {})
    lines = [search.get("summary", "")]
    lines.append(f"judged on {search.get('metric')} ({search.get('source')}); {search.get('method')}; "
                 f"{search.get('evaluations_subset')} evaluations on {search.get('subset_images')} images"
                 + (f", {s.get('confirm_evaluations', 0)} on the full data" if "confirm_evaluations" in s else ""))
    if s.get("note"):
        lines.append(s["note"])
    return [ln for ln in lines if ln]


def timing_text(report: dict[str, Any]) -> str:
    parts = []
    for t in report.get("timing", []):
        parts.append(f"{t['rounds']} interleaved rounds of {len(t['candidates'])} candidates, stopped by {t['stopped_by']}, "
                     f"noise floor +-{t['floor']:.1%} ({'A/A pair' if t['floor_source'] == 'aa' else 'minimum'})")
    return "; ".join(parts) or "-"


def histogram_rows(stages: list[StageEval]) -> tuple[list[str], list[list[str]]]:
    """Op-type counts per stage (rows: op types of any stage; a stage's cell shows its change vs the baseline)."""
    ops = sorted({op for s in stages for op in s.op_histogram})
    base = stages[0].op_histogram if stages else {}
    header = ["op"] + [s.name for s in stages]
    rows = []
    for op in ops:
        row = [op]
        for s in stages:
            n, b = s.op_histogram.get(op, 0), base.get(op, 0)
            row.append(str(n) if s is stages[0] or n == b else f"{n} ({n - b:+d})")
        rows.append(row)
    return header, rows


def html_page(report: dict[str, Any], stages: list[StageEval], png: bytes) -> str:
    """The decision page, rendered from templates/report.html.j2."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("onnxforge.evaluate", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    d_header, d_rows = decision_rows(stages, report.get("judged_on"))
    header, rows = table_rows(stages, report.get("judged_on"))
    h_header, h_rows = histogram_rows(stages)
    return env.get_template("report.html.j2").render(
        report=report, stages=stages, summary=summary_lines(report), decision_header=d_header,
        decision=list(zip(stages, d_rows)), header=header, rows=list(zip(stages, rows)), timing=timing_text(report),
        hist_header=h_header, hist_rows=h_rows, png=base64.b64encode(png).decode(), speed_text=speed_text,
        keep_searches=[(k, keep_search_lines(k), *keep_search_rows(k)) for k in report.get("keep_searches", [])],
    )


def write_report_files(out_dir: Path, report: dict[str, Any], stages: list[StageEval]) -> dict[str, Path]:
    """Writes report.json, report.md, report.html and accuracy_vs_latency.png; returns their paths."""
    png = plot_png(stages, f"{report['model']}: {report['pipeline']}", report.get("budget_floor"), report["best"]["stage"],
                   report.get("judged_on"))
    paths = {
        "json": out_dir / "report.json",
        "md": out_dir / "report.md",
        "html": out_dir / "report.html",
        "plot": out_dir / "accuracy_vs_latency.png",
    }
    write_bytes_atomic(paths["plot"], png)
    payload = dict(report)
    payload["stages"] = [s.to_dict() for s in stages]
    write_text_atomic(paths["json"], json.dumps(payload, indent=2, default=str))
    write_text_atomic(paths["md"], markdown(report, stages))
    write_text_atomic(paths["html"], html_page(report, stages, png))
    return paths


def disk_usage(directory: Path) -> int:
    """Bytes of every file under `directory`."""
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())
