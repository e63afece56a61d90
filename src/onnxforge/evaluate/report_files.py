"""Report views over the run history: report.json, report.md, report.html and the accuracy-vs-latency plot.

Every file is written atomically; the HTML embeds the plot (base64 PNG) so it is self-contained.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from onnxforge.evaluate.history import StageEval, primary_metric
from onnxforge.modelio import write_bytes_atomic, write_text_atomic


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table_rows(stages: list[StageEval]) -> tuple[list[str], list[list[str]]]:
    """The summary table shared by the terminal, Markdown and HTML views."""
    metric = primary_metric(stages[0].accuracy) if stages else None
    agree_key = next(iter(stages[-1].agreement), None) if stages and stages[-1].agreement else None
    header = ["stage", "pass", "kind", "nodes", metric or "accuracy", "Δ vs baseline", agree_key or "agreement",
              "p50 ms", "p90 ms", "speedup", "verification", "verdict"]
    rows = []
    for s in stages:
        rel = s.delta.get(f"{metric}_rel") if metric else None
        rows.append([
            s.name,
            s.pass_ or "-",
            s.kind or "-",
            str(s.nodes),
            _fmt(s.accuracy.get(metric)) if metric else "-",
            f"{rel:+.2%}" if rel is not None else "-",
            _fmt(s.agreement.get(agree_key)) if agree_key else "-",
            _fmt(s.latency_ms.get("p50"), 2),
            _fmt(s.latency_ms.get("p90"), 2),
            f"{s.delta['speedup']:.2f}x" if "speedup" in s.delta else "-",
            s.verification.get("status", "-") if s.verification else "-",
            s.verdict,
        ])
    return header, rows


def plot_png(stages: list[StageEval], title: str) -> bytes:
    """Accuracy (primary metric) against p50 latency: one numbered point per stage, a grey edge from
    each stage's parent to it, and a key naming the numbers."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = primary_metric(stages[0].accuracy) or "accuracy"
    colours = {"baseline": "#1f77b4", "accepted": "#2ca02c", "rejected": "#d62728"}
    points = {s.name: (s.latency_ms.get("p50"), s.accuracy.get(metric)) for s in stages}
    points = {k: v for k, v in points.items() if v[0] is not None and v[1] is not None}
    fig = plt.figure(figsize=(10, 5.2), dpi=110)
    ax = fig.add_axes((0.08, 0.11, 0.52, 0.78))
    for s in stages:
        if s.name in points and s.parent in points:
            (x0, y0), (x1, y1) = points[s.parent], points[s.name]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="->", color="#bbbbbb", lw=1), zorder=1)
    key = []
    for i, s in enumerate(stages):
        if s.name not in points:
            continue
        x, y = points[s.name]
        ax.scatter([x], [y], s=80, color=colours.get(s.verdict, "#7f7f7f"), zorder=3, edgecolor="black", linewidth=0.5)
        ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8, zorder=4)
        key.append(f"{i}  {s.name} ({s.verdict})")
    for verdict, colour in colours.items():
        ax.scatter([], [], color=colour, label=verdict, edgecolor="black", linewidth=0.5)
    fig.legend(loc="lower left", bbox_to_anchor=(0.63, 0.1), fontsize=8, title="verdict", title_fontsize=8)
    ax.set_xlabel("latency p50 (ms, lower is better)")
    ax.set_ylabel(f"{metric} (higher is better)")
    ax.grid(True, alpha=0.3)
    ax.ticklabel_format(axis="y", useOffset=False)
    fig.suptitle("\n".join(textwrap.wrap(title, 95)), fontsize=9)
    wrapped = []
    for line in key:
        wrapped += textwrap.wrap(line, 58, subsequent_indent="     ")
    fig.text(0.63, 0.89, "\n".join(wrapped), fontsize=7, va="top", family="monospace")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def markdown(report: dict[str, Any], stages: list[StageEval]) -> str:
    header, rows = table_rows(stages)
    lines = [f"# onnxforge report: {report['model']}", ""]
    lines += [f"- pipeline: `{report['pipeline']}` ({report['mode']})",
              f"- data: {report['data']}",
              f"- backend: {report['backend']} ({report['environment'].get('threads')} threads), batch sizes {report['batch_sizes']}",
              f"- accuracy budget: {report['budget']:.2%} relative drop of {report['metric']}",
              f"- best accepted stage: **{report['best']['stage']}** -> `{report['best']['model']}`", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    lines += ["", "![accuracy vs latency](accuracy_vs_latency.png)", "", "## Verdicts", ""]
    lines += [f"- **{s.name}** ({s.verdict}): {s.reason}" for s in stages]
    if report.get("dropped"):
        lines += ["", "## Dropped by --auto", ""] + [f"- `{d['pass']}`: {d['reason']}" for d in report["dropped"]]
    lines += ["", "## Reproduce", ""] + [f"    {c}" for c in report["commands"]]
    env = report["environment"]
    lines += ["", "## Environment", ""] + [f"- {k}: {v}" for k, v in env.items()]
    return "\n".join(lines) + "\n"


def html_page(report: dict[str, Any], stages: list[StageEval], png: bytes) -> str:
    header, rows = table_rows(stages)
    esc = html.escape
    colour = {"accepted": "#e6f4ea", "rejected": "#fce8e6", "baseline": "#e8f0fe"}
    body = ["<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for s, r in zip(stages, rows):
        body.append(f'<tr style="background:{colour.get(s.verdict, "#fff")}">' + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>")
    body.append("</tbody></table>")
    verdicts = "".join(f"<li><b>{esc(s.name)}</b> ({esc(s.verdict)}): {esc(s.reason)}</li>" for s in stages)
    commands = "\n".join(esc(c) for c in report["commands"])
    env = "".join(f"<li>{esc(str(k))}: {esc(str(v))}</li>" for k, v in report["environment"].items())
    img = base64.b64encode(png).decode()
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>onnxforge report: {esc(report['model'])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}} th{{background:#f3f3f3}} pre{{background:#f6f8fa;padding:1em}}</style>
</head><body>
<h1>onnxforge report: {esc(report['model'])}</h1>
<p>pipeline <code>{esc(report['pipeline'])}</code> ({esc(report['mode'])}) on {esc(report['data'])};
backend {esc(report['backend'])}; budget {report['budget']:.2%} relative drop of {esc(str(report['metric']))};
best accepted stage: <b>{esc(report['best']['stage'])}</b> (<code>{esc(report['best']['model'])}</code>).</p>
{''.join(body)}
<h2>Accuracy vs latency</h2>
<img alt="accuracy vs latency" src="data:image/png;base64,{img}">
<h2>Verdicts</h2><ul>{verdicts}</ul>
<h2>Reproduce</h2><pre>{commands}</pre>
<h2>Environment</h2><ul>{env}</ul>
</body></html>
"""


def write_report_files(out_dir: Path, report: dict[str, Any], stages: list[StageEval]) -> dict[str, Path]:
    """Writes report.json, report.md, report.html and accuracy_vs_latency.png; returns their paths."""
    png = plot_png(stages, f"{report['model']}: {report['pipeline']}")
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
