"""`onnxforge report` (A/B accuracy vs speed per pass) and `onnxforge demo` (the whole job, embedded)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from onnxforge.cli import console
from onnxforge.cli.common import (data_source, decision_table, executor_from_cli, executor_option, parse_budget,
                                  ray_address_option, timing_policy, workers_option)
from onnxforge.cli.console import OutputFormat, format_option, quiet_option


def report(
    model: Path = typer.Argument(..., help="Baseline ONNX model."),
    passes: str = typer.Option(..., "--passes", "-p", help="Pipeline to evaluate stage by stage."),
    output: Path = typer.Option(..., "-o", "--output", help="Report directory (report.json/.md/.html, plot, stage models, best.onnx)."),
    dataset: Optional[str] = typer.Option(None, help="voc2012 | imagenet | cityscapes | dsb2018 | synthetic"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset folder in its real layout."),
    synthetic: Optional[int] = typer.Option(None, "--synthetic", help="Use N synthetic images generated in memory instead of a dataset."),
    preset: Optional[str] = typer.Option(None, help="Model preset for preprocessing and metric (refinenet, vovnet39, pspnet, unetpp, fastscnn)."),
    limit: Optional[int] = typer.Option(None, help="Evaluate only the first N images of the dataset."),
    backend: str = typer.Option("onnxruntime", help="Backend spec that evaluates and times every stage, e.g. 'onnxruntime{device=cuda,threads=2}'."),
    batch_sizes: str = typer.Option("1", "--batch-sizes", help="Batch sizes to time, e.g. 1,4 (latency columns use the first)."),
    isolated: bool = typer.Option(False, "--isolated", help="Apply each pass alone to the baseline instead of cumulatively."),
    budget: str = typer.Option("1%", help="Largest accepted accuracy drop: relative (1%, 0.5%) or in metric points (0.5pt)."),
    per_node: Optional[str] = typer.Option(None, "--per-node", help="Also measure each node this pass selects, alone (any pass with candidates/with_nodes, e.g. resize-nearest)."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Classes the data has, where the model cannot tell (a mismatch with the model switches judging to agreement)."),
    threads: int = typer.Option(0, help="onnxruntime intra-op threads (0: onnxruntime's default)."),
    min_rounds: int = typer.Option(10, "--min-rounds", help="Interleaved timing rounds always run (>= 2)."),
    max_rounds: int = typer.Option(200, "--max-rounds", help="Most timing rounds; timing stops earlier once every verdict is stable."),
    max_seconds: float = typer.Option(30.0, "--max-seconds", help="Time limit of one timing run (seconds)."),
    keep_stages: str = typer.Option("best", "--keep-stages", help="Models kept: best (the baseline and best.onnx), all (every stage), none."),
    workers: int = workers_option(),
    executor: str = executor_option(),
    ray_address: Optional[str] = ray_address_option(),
    fmt: OutputFormat = format_option(),
    quiet: bool = quiet_option(),
) -> None:
    """Evaluate the baseline and every stage of a pipeline and decide which passes to keep.

    Accuracy and agreement per stage; speed of each stage against its parent from interleaved rounds
    with an A/A noise floor (faster / same / slower, with an interval); a pass is kept when it is within
    the accuracy budget and faster (or exact and smaller at the same speed). The kept passes together
    are measured as the combined stage and written as best.onnx, with the command that rebuilds it.
    Writes report.json, report.md, a self-contained report.html and the plot, all or nothing.
    With --workers N (or --executor ray) the stages' and per-node variants' evaluations run in parallel,
    with results identical to a serial run; timing stays serial and interleaved in this process.
    """
    from onnxforge.cli.console import parse_int_list
    from onnxforge.evaluate.ab import run_report

    sizes = parse_int_list(batch_sizes, "--batch-sizes")
    source = data_source(dataset, data_root, synthetic, preset, limit, num_classes)
    policy = timing_policy(min_rounds, max_rounds, max_seconds)
    command = "onnxforge " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    out = console.Output(fmt, quiet)
    with executor_from_cli(executor, workers, ray_address, threads) as ex, out.progress("report") as update:
        result = run_report(model, passes, output, source, backend=backend, batch_sizes=sizes, isolated=isolated,
                            budget=parse_budget(budget), per_node=per_node, threads=threads, timing=policy,
                            keep_stages=keep_stages, progress=update, command=command, executor=ex)
    print_result(result, out)


def print_result(result, out: console.Output) -> None:
    """The decision table, the answer (warnings also on stderr), and where the files are; with
    --format json the report as report.json holds it."""
    import json

    from onnxforge.evaluate.report_files import summary_lines

    r = result.report
    for line in summary_lines(r):
        if line.startswith("warning"):
            console.err.print(line, style="bold yellow", markup=False)
    data = json.loads(result.files["json"].read_text())
    out.table(decision_table(result.stages, f"{r['model']}: {r['pipeline']} ({r['mode']})", r.get("judged_on")), data=data)
    for line in summary_lines(r):
        out.line(line)
    out.line(f"best stage: {result.best.name} -> {result.files.get('best', 'not written (--keep-stages none)')}")
    out.line(f"report: {result.files['html']} (also report.md, report.json, {result.files['plot'].name}); "
             f"{result.disk_bytes / 1e6:.1f} MB on disk")


def demo(
    output: Path = typer.Option(Path("demo-out"), "-o", "--output", help="Directory for the model, weights note and report."),
    images: int = typer.Option(24, help="Synthetic evaluation images."),
    threads: int = typer.Option(2, help="onnxruntime threads for every stage."),
    fmt: OutputFormat = format_option(),
    quiet: bool = quiet_option(),
) -> None:
    """The whole job on the embedded default: Fast-SCNN trained on the project's synthetic data, exported,
    optimized pass by pass, every stage evaluated and timed, and the A/B report written.
    """
    from onnxforge.demo import run_demo

    out = console.Output(fmt, quiet)
    with out.progress("demo") as update:
        def train_progress(step: int, total: int, loss: float) -> None:
            update("training Fast-SCNN on synthetic data", step, total)

        result = run_demo(output, train_progress, update, images=images, threads=threads)
    out.line(f"weights: {result.weights} ({result.weights_source}); model: {result.model}")
    print_result(result.report, out)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
    app.command("demo")(demo)
