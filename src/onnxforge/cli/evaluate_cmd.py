"""`onnxforge evaluate`, `onnxforge bench` and `onnxforge compile`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from onnxforge.cli import console
from onnxforge.errors import ForgeError
from onnxforge.evaluate.catalog import dataset_help
from onnxforge.frontends import MODELS

DATASETS_HELP = dataset_help()
PRESETS_HELP = " | ".join(MODELS)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}%"


def _progress(label: str):
    """A rich progress bar on stderr and the callback that drives it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console.err,
                   transient=True)
    task = bar.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, update


def evaluate(
    model: Path = typer.Argument(..., help="ONNX model (or .om with --backend ais_bench).", show_default=False),
    dataset: str = typer.Option(..., "--dataset", "-d", help=f"Dataset: {DATASETS_HELP}.", show_default=False),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset folder in its real layout (synthetic: optional, generated in memory without it)."),
    preset: Optional[str] = typer.Option(None, "--preset", help=f"Model whose preprocessing and metric to use: {PRESETS_HELP} (with synthetic data: its preprocessing, at the model's input size)."),
    backend: str = typer.Option("onnxruntime", "--backend", help="onnxruntime | atc | ais_bench."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate the first N samples only."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Images per run (a static batch must match)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the result as JSON (atomically)."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Folder of outputs from ais_bench (<image>_0.bin) or benchmark (<image>_1.bin): score those instead of running the model."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Baseline model: adds agreement with its predictions."),
    soc_version: Optional[str] = typer.Option(None, "--soc-version", help="atc/ais_bench: target SoC (default Ascend310P3)."),
    threads: int = typer.Option(0, "--threads", help="onnxruntime intra-op threads (0: one per core)."),
    device: str = typer.Option("cpu", "--device", help="onnxruntime device: cpu | cuda | tensorrt | auto."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Classes the model predicts, where its output does not say (an integer label map) and no preset does."),
) -> None:
    """Score a model on a dataset with the metric its upstream used (mIoU, pixAcc, top-1/5, IoU).

    Images are read in the dataset's real layout, preprocessed as the preset's guide did, run on the
    backend, and mapped back to the labels' geometry. Metrics are printed as percentages; --json writes
    fractions in [0, 1].
    """
    from onnxforge.evaluate.evaluator import evaluate as run_evaluate

    if num_classes is not None and num_classes < 1:
        raise ForgeError(f"--num-classes: expected a positive class count, got {num_classes}")
    if json_path is not None:
        from onnxforge.modelio import check_output_path

        check_output_path(model, json_path)
    options: dict = {}
    if backend == "onnxruntime":
        options = {"threads": threads, "device": device}
    if soc_version and backend in ("atc", "ais_bench"):
        options["soc_version"] = soc_version
    bar, update = _progress(f"evaluating {model.name}")
    with bar:
        result = run_evaluate(
            model, dataset, data_root, preset=preset, backend=backend, limit=limit, batch_size=batch_size,
            progress=update, reference=reference, predictions=predictions, backend_options=options,
            num_classes=num_classes,
        )
    console.out.print(render_result(result))
    for note in result.notes:
        console.out.print(f"note: {note}")
    if json_path is not None:
        from onnxforge.modelio import write_text_atomic

        write_text_atomic(json_path, json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n")
        console.out.print(f"wrote {json_path}")


def render_result(result) -> Table:
    title = f"{result.model} on {result.dataset}" + (f" (preset {result.preset})" if result.preset else "")
    table = Table(title=title)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for key, value in result.metrics.items():
        table.add_row(key, _pct(value))
    for key, value in (result.agreement or {}).items():
        shown = _pct(value) if key in ("pixel_agreement", "miou_vs_reference", "top1_agreement") else (
            "-" if value is None else f"{value:.6g}")
        table.add_row(f"vs reference: {key}", shown)
    table.add_row("images", str(result.images))
    table.add_row("backend", f"{result.backend} (batch {result.batch_size})")
    per_image = 1000.0 * result.inference_s / result.images if result.images else 0.0
    table.add_row("inference", f"{result.inference_s:.3f} s ({per_image:.2f} ms/image)")
    table.add_row("evaluator overhead", f"{result.overhead_s:.3f} s")
    table.add_row("total", f"{result.total_s:.3f} s")
    return table


def bench(
    model: Path = typer.Argument(..., help="ONNX model.", show_default=False),
    backend: str = typer.Option("onnxruntime", "--backend", help="onnxruntime | atc | ais_bench."),
    batch_sizes: str = typer.Option("1,4,8,16", "--batch-sizes", help="Comma-separated batch sizes."),
    threads: int = typer.Option(0, "--threads", help="onnxruntime intra-op threads (0: one per core)."),
    device: str = typer.Option("cpu", "--device", help="onnxruntime device: cpu | cuda | tensorrt | auto."),
    warmup: int = typer.Option(5, "--warmup", help="Untimed runs first."),
    iters: int = typer.Option(20, "--iters", help="Timed runs per batch size."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the records as JSON (atomically)."),
) -> None:
    """Latency (p50/p90/p99 per run) and throughput per batch size, on seeded inputs.

    A model exported with a static batch runs other batch sizes on a copy whose batch dimension is
    fixed to that size; the table says so.
    """
    from onnxforge.evaluate.bench import benchmark, static_batch
    from onnxforge.modelio import load_model

    sizes = console.parse_int_list(batch_sizes, "--batch-sizes")
    if json_path is not None:
        from onnxforge.modelio import check_output_path

        check_output_path(model, json_path)
    proto = load_model(model)
    bar, update = _progress(f"benchmarking {model.name}")
    with bar:
        records = benchmark(proto, sizes, backend=backend, threads=threads, warmup=warmup, iters=iters, progress=update,
                            backend_options={"device": device} if backend == "onnxruntime" else None)
    fixed = static_batch(proto)
    table = Table(title=f"{model.name} on {backend}" + (f" (threads {threads})" if threads else ""))
    for col in ("batch", "p50 ms", "p90 ms", "p99 ms", "images/s", "note"):
        table.add_column(col, justify="right" if col != "note" else "left", overflow="fold")
    for r in records:
        if r.error:
            table.add_row(str(r.batch_size), "-", "-", "-", "-", f"[red]{r.error}[/]")
            continue
        note = f"batch fixed on a copy (model is static at {fixed})" if r.fixed_batch else ""
        table.add_row(str(r.batch_size), f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.throughput:.1f}", note)
    console.out.print(table)
    if fixed is not None and any(r.fixed_batch for r in records):
        console.out.print(f"note: {model.name} has a static batch of {fixed}; other batch sizes ran on copies with the batch dimension fixed")
    if json_path is not None:
        from onnxforge.modelio import write_text_atomic

        write_text_atomic(json_path, json.dumps({"model": str(model), "backend": backend,
                                                 "records": [r.to_dict() for r in records]}, indent=2) + "\n")
        console.out.print(f"wrote {json_path}")
    if all(r.error for r in records):
        raise ForgeError(f"{model}: no batch size could run ({records[0].error})")


def compile_(
    model: Path = typer.Argument(..., help="ONNX model.", show_default=False),
    backend: str = typer.Option("atc", "--backend", help="atc (the only backend with an ahead-of-time step)."),
    soc_version: str = typer.Option("Ascend310P3", "--soc-version", help="Target Ascend SoC, e.g. Ascend310, Ascend310P3, Ascend910."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output .om path (default: next to the model)."),
    max_opset: int = typer.Option(13, "--max-opset", help="Highest ai.onnx opset this CANN's atc accepts (CANN 5.x: 13, 7.0: 18)."),
) -> None:
    """Compile an ONNX model for an Ascend NPU with CANN's atc.

    The command line is derived from the model: input shapes from the graph, --output_type=FP16 when
    the outputs are float16 (fp16-output), --input_fp16_nodes for float16 inputs (fp16-input). The
    opset and every op are checked against what atc accepts before atc runs.
    """
    if backend != "atc":
        raise ForgeError(f"compile: backend '{backend}' has no compile step; use --backend atc (onnxruntime and ais_bench need none)")
    from onnxforge.backends.atc import AtcBackend

    if output is not None:
        from onnxforge.modelio import check_output_path

        check_output_path(model, output)
    be = AtcBackend(soc_version=soc_version, max_opset=max_opset)
    with console.err.status(f"atc: compiling {model.name} for {soc_version} ..."):
        result = be.compile_full(model, output)
    console.out.print(f"command: {' '.join(result.command)}")
    if result.plan.pipeline:
        console.out.print(f"pipeline recorded in the model: {result.plan.pipeline}")
    console.out.print(f"wrote {result.om_path}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
    app.command("bench")(bench)
    app.command("compile")(compile_)
