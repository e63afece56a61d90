"""`onnxforge report` (A/B accuracy vs speed per pass) and `onnxforge demo` (the whole job, embedded)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from onnxforge.cli import console
from onnxforge.cli.common import (
    cache_dir_option, cache_latency_option, cache_line, cache_size_option, data_source, decision_table, executor_from_cli,
    executor_option, no_cache_option, open_cache, parse_budget, ray_address_option, timing_policy, workers_option,
)
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
    per_node: Optional[str] = typer.Option(None, "--per-node", help="Also measure each node this pass selects, alone (any pass with candidates/with_nodes, e.g. resize-nearest). For fp16 and quantize: a keep-set search instead (each node or Conv+BN+activation group scored kept in high precision and, for fp16, alone in float16 by Cast-pair simulation; fp16 overflow/underflow counts; greedy over that ranking on the first 8 images, confirmed on all), a per-node table, and, when everything in low precision is over the budget, a 'mixed-precision' (fp16{keep=...}) or 'quantize-keep-set' (quantize{exclude=...}) stage. fp16 also writes precision/ (keep_dtype.cfg, precision.json) for 'compile --precision-config'."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Classes the data has, where the model cannot tell (a mismatch with the model switches judging to agreement)."),
    threads: int = typer.Option(0, help="onnxruntime intra-op threads (0: onnxruntime's default)."),
    device: Optional[str] = typer.Option(None, "--device", help="Shorthand for the backend's device option; with ais_bench "
                                         "the NPUs (0,1,2,3) every stage's evaluation is split across, one ais_bench process "
                                         "each (timing rounds stay on the first)."),
    min_rounds: int = typer.Option(10, "--min-rounds", help="Interleaved timing rounds always run (>= 2)."),
    max_rounds: int = typer.Option(200, "--max-rounds", help="Most timing rounds; timing stops earlier once every verdict is stable."),
    max_seconds: float = typer.Option(30.0, "--max-seconds", help="Time limit of one timing run (seconds)."),
    keep_stages: str = typer.Option("best", "--keep-stages", help="Models kept: best (the baseline and best.onnx), all (every stage), none."),
    no_cache: bool = no_cache_option(),
    cache_dir: Optional[Path] = cache_dir_option(),
    cache_size: str = cache_size_option(),
    cache_latency: bool = cache_latency_option(),
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
    Evaluations are cached by content (model, data, backend, metric, version): a rerun, or a run after
    Ctrl-C, reuses those already done and says how many (--no-cache to evaluate all again).

    With --workers N (or --executor ray) the stages' and per-node variants' evaluations run in parallel,
    with results identical to a serial run; timing stays serial and interleaved in this process.
    """
    from onnxforge.cli.console import parse_int_list
    from onnxforge.evaluate.ab import run_report

    sizes = parse_int_list(batch_sizes, "--batch-sizes")
    if device is not None:
        from onnxforge.backends import parse_backend
        from onnxforge.cli.evaluate_cmd import device_option

        key, value = device_option(backend, device)
        backend = str(parse_backend(backend, {key: value}, flags={key: "--device"}))
    source = data_source(dataset, data_root, synthetic, preset, limit, num_classes)
    policy = timing_policy(min_rounds, max_rounds, max_seconds)
    cache = open_cache(no_cache, cache_dir, cache_size)
    command = "onnxforge " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    out = console.Output(fmt, quiet)
    with executor_from_cli(executor, workers, ray_address, threads) as ex, out.progress("report") as update:
        result = run_report(model, passes, output, source, backend=backend, batch_sizes=sizes, isolated=isolated,
                            budget=parse_budget(budget), per_node=per_node, threads=threads, timing=policy,
                            keep_stages=keep_stages, progress=update, command=command, cache=cache,
                            cache_latency=cache_latency, executor=ex)
    print_result(result, out)
    line = cache_line(cache)
    if line:
        out.line(line)


def print_result(result, out: console.Output) -> None:
    """The decision table, the answer (warnings also on stderr), and where the files are; with
    --format json the report as report.json holds it."""
    import json

    from onnxforge.evaluate.report_files import keep_search_lines, summary_lines

    r = result.report
    for line in summary_lines(r):
        if line.startswith("warning"):
            console.err.print(line, style="bold yellow", markup=False)
    data = json.loads(result.files["json"].read_text())
    out.table(decision_table(result.stages, f"{r['model']}: {r['pipeline']} ({r['mode']})", r.get("judged_on")), data=data)
    for line in summary_lines(r):
        out.line(line)
    for search in r.get("keep_searches", []):
        for line in keep_search_lines(search):
            out.line(f"keep-set search ({search['pass']}): {line}")
    if "precision" in result.files:
        out.line(f"atc precision config: {result.files['precision']} (onnxforge compile MODEL --backend atc --precision-config "
                 f"{result.files['precision']})")
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
