"""`onnxforge report` (A/B accuracy vs speed per pass) and `onnxforge demo` (the whole job, embedded)."""

from __future__ import annotations

import shlex
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from onnxforge.cli import console
from onnxforge.errors import ForgeError


def parse_budget(text: str) -> float:
    """'1%' -> 0.01, '0.5%' -> 0.005, '0.02' -> 0.02."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ForgeError(f"--budget: expected a percentage like 1% or a fraction like 0.01, got {text!r}") from None
    if not 0 <= value < 1:
        raise ForgeError(f"--budget: must be between 0% and 100%, got {text!r}")
    return value


@contextmanager
def progress_bars():
    """A rich progress display on stderr; yields a callback (phase, done, total)."""
    bars = Progress(TextColumn("{task.description:<36}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console.err, transient=False)
    tasks: dict[str, int] = {}

    def update(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = bars.add_task(phase, total=total)
        bars.update(tasks[phase], completed=done, total=total)

    with bars:
        yield update


def data_source(dataset: Optional[str], data_root: Optional[Path], synthetic: Optional[int], preset: Optional[str], limit: Optional[int]):
    from onnxforge.evaluate.ab import DataSource

    if synthetic is not None and dataset is not None:
        raise ForgeError("give either --dataset/--data-root or --synthetic N, not both")
    if synthetic is not None:
        if synthetic <= 0:
            raise ForgeError(f"--synthetic: expected a positive image count, got {synthetic}")
        return DataSource("synthetic", None, preset, synthetic)
    if dataset is None:
        raise ForgeError("accuracy needs data: give --dataset NAME --data-root DIR (with --preset MODEL), or --synthetic N")
    return DataSource(dataset, data_root, preset, limit)


def render_report(result) -> Table:
    from onnxforge.evaluate.report_files import table_rows

    header, rows = table_rows(result.stages)
    table = Table(title=f"{result.report['model']}: {result.report['pipeline']} ({result.report['mode']})")
    for h in header:
        table.add_column(h, overflow="fold")
    style = {"accepted": "green", "rejected": "red", "baseline": "cyan"}
    for s, r in zip(result.stages, rows):
        table.add_row(*r, style=style.get(s.verdict))
    return table


def report(
    model: Path = typer.Argument(..., help="Baseline ONNX model."),
    passes: str = typer.Option(..., "--passes", "-p", help="Pipeline to evaluate stage by stage."),
    output: Path = typer.Option(..., "-o", "--output", help="Report directory (report.json/.md/.html, plot, stage models, best.onnx)."),
    dataset: Optional[str] = typer.Option(None, help="voc2012 | imagenet | cityscapes | dsb2018 | synthetic"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset folder in its real layout."),
    synthetic: Optional[int] = typer.Option(None, "--synthetic", help="Use N synthetic images generated in memory instead of a dataset."),
    preset: Optional[str] = typer.Option(None, help="Model preset for preprocessing and metric (refinenet, vovnet39, pspnet, unetpp, fastscnn)."),
    limit: Optional[int] = typer.Option(None, help="Evaluate only the first N images of the dataset."),
    backend: str = typer.Option("onnxruntime", help="Backend that runs every stage."),
    batch_sizes: str = typer.Option("1", "--batch-sizes", help="Batch sizes to time, e.g. 1,4 (latency columns use the first)."),
    isolated: bool = typer.Option(False, "--isolated", help="Apply each pass alone to the baseline instead of cumulatively."),
    budget: str = typer.Option("1%", help="Largest accepted relative accuracy drop, e.g. 1% or 0.5%."),
    per_node: Optional[str] = typer.Option(None, "--per-node", help="Also measure each node of this pass alone (resize-nearest)."),
    threads: int = typer.Option(0, help="onnxruntime intra-op threads (0: onnxruntime's default)."),
    iters: int = typer.Option(20, help="Timed runs per stage and batch size."),
) -> None:
    """Evaluate the baseline and every stage of a pipeline: accuracy, agreement, latency, verdict.

    Writes report.json, report.md, a self-contained report.html with an accuracy-vs-latency plot, every
    stage model, and best.onnx (the fastest stage within the accuracy budget).
    """
    from onnxforge.cli.console import parse_int_list
    from onnxforge.evaluate.ab import run_report

    sizes = parse_int_list(batch_sizes, "--batch-sizes")
    source = data_source(dataset, data_root, synthetic, preset, limit)
    command = "onnxforge " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with progress_bars() as update:
        result = run_report(model, passes, output, source, backend=backend, batch_sizes=sizes, isolated=isolated,
                            budget=parse_budget(budget), per_node=per_node, threads=threads, iters=iters,
                            progress=update, command=command)
    console.out.print(render_report(result))
    console.out.print(f"best accepted stage: [bold]{result.best.name}[/] -> {result.files['best']}")
    console.out.print(f"report: {result.files['html']} (also report.md, report.json, {result.files['plot'].name})")


def demo(
    output: Path = typer.Option(Path("demo-out"), "-o", "--output", help="Directory for the model, weights note and report."),
    images: int = typer.Option(24, help="Synthetic evaluation images."),
    threads: int = typer.Option(2, help="onnxruntime threads for every stage."),
) -> None:
    """The whole job on the embedded default: Fast-SCNN trained on the project's synthetic data, exported,
    optimized pass by pass, every stage evaluated and timed, and the A/B report written.
    """
    from onnxforge.demo import DEMO_PIPELINE, run_demo

    with progress_bars() as update:
        def train_progress(step: int, total: int, loss: float) -> None:
            update("training Fast-SCNN on synthetic data", step, total)

        result = run_demo(output, train_progress, update, images=images, threads=threads)
    console.out.print(f"weights: {result.weights} ({result.weights_source}); model: {result.model}")
    console.out.print(render_report(result.report))
    console.out.print(f"pipeline: {DEMO_PIPELINE}")
    console.out.print(f"best accepted stage: [bold]{result.report.best.name}[/] -> {result.report.files['best']}")
    console.out.print(f"report written to {result.report.files['html']}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
    app.command("demo")(demo)
