"""`onnxforge bisect`: trace an accuracy loss to the pass and the nodes that cause it."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from onnxforge.cli import console
from onnxforge.cli.common import cache_dir_option, cache_line, cache_size_option, no_cache_option, open_cache
from onnxforge.cli.common import executor_from_cli, executor_option, ray_address_option, workers_option
from onnxforge.errors import ForgeError


def bisect(
    model: Path = typer.Argument(..., help="The ONNX model (the baseline)."),
    passes: str = typer.Option(..., "--passes", help="The pipeline whose final model loses accuracy."),
    dataset: Optional[str] = typer.Option(None, help="Dataset name (with --data-root)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="The dataset folder."),
    preset: Optional[str] = typer.Option(None, help="The model's evaluation preset."),
    synthetic: Optional[int] = typer.Option(None, "--synthetic", help="N synthetic images instead of a dataset."),
    limit: Optional[int] = typer.Option(None, help="Evaluate only the first N images."),
    budget: str = typer.Option("1%", help="Allowed loss: 1% (relative) or 0.5pt (metric points)."),
    output: Path = typer.Option(Path("bisect-out"), "-o", "--output", help="Reproducer directory (written when over budget)."),
    no_cache: bool = no_cache_option(),
    cache_dir: Optional[Path] = cache_dir_option(),
    cache_size: str = cache_size_option(),
    workers: int = workers_option(),
    executor: str = executor_option(),
    ray_address: Optional[str] = ray_address_option(),
) -> None:
    """Find the first pass that puts the model over the accuracy budget, then its smallest node set; write a reproducer.

    Evaluations are cached by content and reused on a rerun (--no-cache to evaluate all again). The search
    is sequential; with --workers N each evaluation's images are split into N shards scored in parallel and
    merged (the same scores)."""
    from onnxforge.cli.report_cmd import data_source
    from onnxforge.evaluate import bisect as bs
    from onnxforge.modelio import load_model

    want = bs.parse_budget(budget)
    if not passes.strip():
        raise ForgeError("--passes: the pipeline is empty")
    src = data_source(dataset, data_root, synthetic, preset, limit)
    cache = open_cache(no_cache, cache_dir, cache_size)
    proto = load_model(model)
    with executor_from_cli(executor, workers, ray_address) as ex:
        scorer, metric, plan = bs.make_scorer(proto, src.dataset, src.data_root, src.preset, limit=src.limit, cache=cache,
                                              executor=ex)
        result = bs.bisect(proto, passes, scorer, want, metric)
    table = Table(title=f"{model.name}: bisect {passes} (budget {want})")
    for col in ("stage", metric, "delta", "verdict"):
        table.add_column(col, overflow="fold")
    for s in result.stages:
        table.add_row(str(s.stage) if s.stage else "baseline", f"{s.metric:.4f}", f"{s.delta:+.4f}",
                      "over" if s.over else "within")
    console.out.print(table)
    console.out.print(f"{result.evaluations} evaluations", markup=False, highlight=False)
    line = cache_line(cache)
    if line:
        console.out.print(line, markup=False, highlight=False, soft_wrap=True)
    if not result.within:
        bs.write_reproducer(output, proto, result, passes, plan)
        console.out.print(f"wrote {output}: bisect.json, subgraph.onnx, command.txt", markup=False, highlight=False)
        console.out.print("repro: " + (output / "command.txt").read_text().strip(), markup=False, highlight=False)
    console.out.print(result.summary(), markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("bisect")(bisect)
