"""`onnxforge compare-dump`: an NPU dump compared op by op with the ONNX model run in onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from onnxforge.cli import console


def _num(v: float | None, fmt: str = ".6f") -> str:
    return "-" if v is None else format(v, fmt)


def compare_dump(
    model: Path = typer.Argument(..., help="The ONNX model the .om was compiled from.", show_default=False),
    dump_dir: Path = typer.Argument(..., help="ais_bench --dump / msit dump folder (any level) holding the dump converted to .npy (msaccucmp.py convert: {op_type}.{op_name}.{task_id}.{stream_id}.{timestamp}.output.N.npy).", show_default=False),
    inputs: List[str] = typer.Option(..., "--inputs", "-i", help="The input the NPU ran on: x.npy (one-input model), NAME=x.npy, or an .npz keyed by input name (repeatable).", show_default=False),
    fusion_map: Optional[Path] = typer.Option(None, "--fusion-map", help="JSON {\"dump op\": [\"onnx node\", ...]}, or the om's JSON (atc --mode=1) with _datadump_original_op_names: which ONNX nodes a fused op holds."),
    only_failing: bool = typer.Option(False, "--only-failing", help="List only the ops beyond a threshold (and the unmatched ones)."),
    fmt: console.OutputFormat = console.format_option(),
    quiet: bool = console.quiet_option(),
) -> None:
    """Compare an NPU dump with the ONNX model layer by layer: cosine, relative distance, max abs, RMSE per op.

    The ONNX model runs in onnxruntime on the same inputs with every intermediate output exposed; each
    dumped op output is matched to the ONNX node of the same name (with '.', '/', '\\' and spaces as '_',
    as the dump names them), a fused op (its name joins several node names, or --fusion-map says so) to
    its last node. An op fails, as in msit/ait debug compare, when cosine < 0.99, relative Euclidean
    distance > 0.05 or RMSE > 1.0; the first failing op in graph order is marked FIRST FAIL and named
    on the last line. Raw binary dump files are not parsed (convert them with msaccucmp.py convert
    first); the layout is checked against CANN 8.0.0/8.5.0 and msit documentation only, never against
    a real NPU dump.
    """
    from onnxforge.evaluate.dump_compare import compare_dump as run_compare

    result = run_compare(model, dump_dir, inputs, fusion_map=fusion_map)
    out = console.Output(fmt, quiet)
    if out.is_json:
        out.json(result.to_dict())
        return
    first = result.first_failing
    table = Table(title=f"{result.dump_dir} against {model.name} (onnxruntime)")
    for col in ("#", "dump op", "type", "out", "onnx nodes", "cosine", "rel. dist", "max abs", "rmse", "verdict"):
        table.add_column(col, justify="right" if col in ("#", "out", "cosine", "rel. dist", "max abs", "rmse") else "left")
    n = 0
    for r in result.rows:
        if only_failing and r.passed:
            continue
        n += 1
        if r.onnx_output is None:
            verdict = f"unmatched: {r.reason}"
        elif r.passed:
            verdict = "ok" + (f" ({r.reason})" if r.reason else "")
        else:
            verdict = ("FIRST FAIL: " if r is first else "fail: ") + r.reason
        style = None if r.passed else ("bold red" if r is first else "red") if r.onnx_output is not None else "yellow"
        table.add_row(str(n), r.op_name, r.op_type, str(r.index), ",".join(r.onnx_nodes) or "-", _num(r.cosine),
                      _num(r.relative_distance), _num(r.max_abs, ".4g"), _num(r.rmse, ".4g"), verdict, style=style)
    out.table(table)
    for note in result.notes:
        out.line(f"note: {note}")
    compared = sum(r.onnx_output is not None for r in result.rows)
    failing = sum(r.onnx_output is not None and not r.passed for r in result.rows)
    t = result.thresholds
    out.line(f"{compared} ops compared, {failing} beyond the thresholds (cosine >= {t['cosine_min']}, relative distance <= "
             f"{t['relative_distance_max']}, RMSE <= {t['rmse_max']})")
    if first is not None:
        out.line(f"first failing op: {first.op_name} (ONNX {first.onnx_nodes[-1]} output {first.onnx_output}): {first.reason}")
    else:
        out.line("no op beyond the thresholds")


def register(app: typer.Typer) -> None:
    app.command("compare-dump")(compare_dump)
