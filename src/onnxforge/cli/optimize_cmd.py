"""`onnxforge passes` and `onnxforge optimize`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from onnxforge.cli import console


def passes() -> None:
    """List every pass: name, kind, options and summary."""
    from onnxforge.passes import all_passes
    from onnxforge.passes.pipeline import option_docs

    table = Table(title="onnxforge passes", show_lines=False)
    table.add_column("name", style="bold")
    table.add_column("kind")
    table.add_column("options")
    table.add_column("summary")
    for name, cls in all_passes().items():
        opts = "\n".join(f"{n}: {t} = {d}  {h}" for n, t, d, h in option_docs(cls)) or "-"
        table.add_row(name, cls.kind.value, opts, cls.summary)
    console.out.print(table)
    console.out.print("Pipeline syntax: name{key=value,...},name2  (list values: a|b)")


def optimize(
    model: Path = typer.Argument(..., help="Input ONNX model (never modified)."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the optimized model."),
    passes_: str = typer.Option(..., "--passes", "-p", help="Pipeline, e.g. 'simplify,resize-nearest{nodes=up1|up2},fp16-output'."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the checker and the numeric check after each pass."),
    dump_dir: Optional[Path] = typer.Option(None, "--dump-dir", help="Write every stage as NNN_<pass>.onnx (and a reproducer on failure)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the per-pass records as JSON."),
) -> None:
    """Apply a pipeline of named rewrites to an ONNX model, verifying the model after each pass.

    Exact passes must keep the outputs (checked with onnxruntime on seeded inputs against the previous
    stage); approximate passes are measured. The output is written only when every pass succeeded.
    """
    from onnxforge.passes import DumpStages, PassManager, parse_pipeline
    from onnxforge.modelio import check_output_path, load_model, save_model

    pipeline = parse_pipeline(passes_)
    check_output_path(model, output)
    if json_path is not None:
        check_output_path(model, json_path)
    proto = load_model(model)
    instruments = [DumpStages(dump_dir)] if dump_dir else []
    with console.err.status(f"optimizing {model.name} ..."):
        result = PassManager(pipeline, verify=not no_verify, instruments=instruments).run(proto)
    save_model(result.model, output)
    console.out.print(render_stages(result, title=f"{model.name} -> {output.name}: {pipeline}"))
    console.out.print(
        f"wrote {output} ({result.nodes_before} -> {result.nodes_after} nodes, {result.seconds:.2f} s)"
    )
    if json_path is not None:
        import json

        from onnxforge.modelio import write_text_atomic

        payload = {
            "input": str(model), "output": str(output), "pipeline": str(pipeline),
            "nodes_before": result.nodes_before, "nodes_after": result.nodes_after, "seconds": result.seconds,
            "stages": [s.to_dict() for s in result.stages],
        }
        write_text_atomic(json_path, json.dumps(payload, indent=2, default=str))


def render_stages(result, title: str = "") -> Table:
    """The per-pass table: changed?, statistics, node count, time, verification."""
    table = Table(title=title or None)
    for col in ("#", "pass", "kind", "changed", "statistics / reason", "nodes", "time", "verification"):
        table.add_column(col, overflow="fold")
    for s in result.stages:
        stats = ", ".join(f"{k}={v}" for k, v in s.stats.items()) if s.modified else "; ".join(s.notes)
        if s.skipped and s.modified:
            stats += f" ({len(s.skipped)} skipped)"
        v = s.verification
        verdict = v.status if not v.detail or v.status in ("unchanged",) else f"{v.status}: {v.detail}"
        style = {"passed": "green", "failed": "red", "measured": "yellow"}.get(v.status, "")
        table.add_row(
            str(s.index), s.pipeline_item, s.kind, "yes" if s.modified else "no", stats,
            f"{s.nodes_before}->{s.nodes_after}", f"{s.seconds * 1000:.0f} ms",
            f"[{style}]{verdict}[/]" if style else verdict,
        )
    return table


def register(app: typer.Typer) -> None:
    app.command("passes")(passes)
    app.command("optimize")(optimize)
