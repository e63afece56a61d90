"""`onnxforge evaluate`, `onnxforge bench` and `onnxforge compile`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from onnxforge.cli import console
from onnxforge.cli.common import (
    cache_dir_option, cache_latency_option, cache_line, cache_size_option, executor_from_cli, executor_option, no_cache_option,
    open_cache, ray_address_option, workers_option,
)
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


def _backend_option_help(default: str) -> str:
    """`--backend` help generated from the registry: the grammar, then one line per backend."""
    from onnxforge.backends import backend_help

    return (f"Backend spec: NAME or NAME{{key=value,...}} (default {default}), e.g. 'onnxruntime{{device=cuda,threads=2}}', "
            f"'atc{{soc_version=Ascend910}}'.\n\n" + backend_help().replace("\n", "\n\n"))


#: bench/compile flags that are shorthands for backend spec options: flag -> option
BENCH_SHORTHANDS = {"--threads": "threads", "--device": "device"}
COMPILE_SHORTHANDS = {
    "--soc-version": "soc_version", "--max-opset": "max_opset", "--cann": "cann",
    "--precision-mode": "precision_mode", "--precision-mode-v2": "precision_mode_v2",
    "--dynamic-batch-sizes": "dynamic_batch_sizes", "--dynamic-image-sizes": "dynamic_image_sizes",
    "--atc-arg": "extra_args", "--aipp": "insert_op_conf", "--precision-config": "precision_config",
}
DEVICE_HELP = ("Shorthand for the spec option device (onnxruntime: cpu | cuda | tensorrt | cann | auto); with ais_bench "
               "the spec option devices: NPU ids such as 0,1,2,3, one ais_bench process each, the work split between them "
               "and the throughputs summed (ais_bench --device).")
EVALUATE_SHORTHANDS = {"--threads": "threads", "--device": "device", "--soc-version": "soc_version"}


def _backend(spec: str, shorthands: dict[str, str], values: dict[str, object]):
    """The backend `spec` names, with the shorthand flags that were given filling its options (a flag the
    backend has no option for, or one contradicting the spec, is an error). ``--device`` is the ``devices``
    list (``0,1,2,3``) for a backend that splits work across devices (ais_bench), else its ``device``."""
    from onnxforge.backends import parse_backend

    shorthands, values = dict(shorthands), dict(values)
    if values.get("--device") is not None and "--device" in shorthands:
        shorthands["--device"], values["--device"] = device_option(spec, str(values["--device"]))
    flags = {option: flag for flag, option in shorthands.items()}
    return parse_backend(spec, {shorthands[f]: v for f, v in values.items()}, flags=flags)


def device_option(spec: str, text: str) -> tuple[str, object]:
    """(option, value) that ``--device TEXT`` fills on the backend `spec` names: ``devices`` as a tuple of
    ids (``0,1,2,3``; a repeated id is an error) where the backend has that option, else ``device``."""
    from dataclasses import fields

    from onnxforge.backends import parse_backend

    names = {f.name for f in fields(parse_backend(spec).Options)}
    if "devices" not in names:
        return "device", text
    from onnxforge.backends.ascend import check_devices

    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        return "device", text  # not NPU ids (e.g. cuda): the backend has no such option, which parse_backend says
    return "devices", check_devices([int(p) for p in parts], "--device")


def evaluate(
    model: Path = typer.Argument(..., help="ONNX model (or the backend's compiled artifact: .om with --backend ais_bench).", show_default=False),
    dataset: str = typer.Option(..., "--dataset", "-d", help=f"Dataset: {DATASETS_HELP}.", show_default=False),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset folder in its real layout (synthetic: optional, generated in memory without it)."),
    preset: Optional[str] = typer.Option(None, "--preset", help=f"Model whose preprocessing and metric to use: {PRESETS_HELP} (with synthetic data: its preprocessing, at the model's input size)."),
    backend: str = typer.Option("onnxruntime", "--backend", help=_backend_option_help("onnxruntime"), show_default=False),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate the first N samples only."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Images per run (a static batch must match)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the result as JSON (atomically)."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Folder of outputs from ais_bench (<image>_0.bin) or benchmark (<image>_1.bin): score those instead of running the model. Any level of ais_bench's --output layout (OUT, OUT/TS, OUT/TS/device<k>); several devices' folders are read as one set and their summaries' throughputs summed."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Baseline model: adds agreement with its predictions."),
    soc_version: Optional[str] = typer.Option(None, "--soc-version", help="Shorthand for the spec option soc_version (atc/ais_bench target SoC, default Ascend310P3)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Shorthand for the spec option threads (onnxruntime intra-op threads; 0: one per core)."),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Classes the model predicts, where its output does not say (an integer label map) and no preset does."),
    gears: Optional[str] = typer.Option(None, "--gears", help="Image-size gears HxW,... (as compile --dynamic-image-sizes; `onnxforge shapes` proposes them): each image runs at the smallest gear holding it. Needs a model with dynamic H and W and a whole-image preset (fastscnn) or none."),
    gear_policy: str = typer.Option("pad", "--gear-policy", help="With --gears: pad (bottom/right with the mean colour; the prediction is cropped back to the image) or resize (to the gear, the prediction resized back)."),
    no_cache: bool = no_cache_option(),
    cache_dir: Optional[Path] = cache_dir_option(),
    cache_size: str = cache_size_option(),
    cache_latency: bool = cache_latency_option(),
    workers: int = workers_option(),
    executor: str = executor_option(),
    ray_address: Optional[str] = ray_address_option(),
) -> None:
    """Score a model on a dataset with the metric its upstream used (mIoU, pixAcc, top-1/5, IoU).

    Images are read in the dataset's real layout, preprocessed as the preset's guide did, run on the
    backend, and mapped back to the labels' geometry. Metrics are printed as percentages; --json writes
    fractions in [0, 1]. --threads, --device and --soc-version fill the backend spec's options; one
    that contradicts the spec, or that the backend has no option for, is an error. The result is cached
    by content (model, data, backend, metric, reference, version) and reused on a rerun; its timings
    only with --cache-latency (--no-cache to evaluate again). With --workers N (or --executor ray) the
    image list is split into N contiguous shards scored in parallel and merged (mIoU from the summed
    confusion statistics: the same numbers as one run, and the same cache entry).
    """
    from onnxforge.evaluate.evaluator import evaluate as run_evaluate

    if num_classes is not None and num_classes < 1:
        raise ForgeError(f"--num-classes: expected a positive class count, got {num_classes}")
    be = _backend(backend, EVALUATE_SHORTHANDS, {"--threads": threads, "--device": device, "--soc-version": soc_version})
    if json_path is not None:
        from onnxforge.modelio import check_output_path

        check_output_path(model, json_path)
    cache = open_cache(no_cache, cache_dir, cache_size)
    with executor_from_cli(executor, workers, ray_address, be.non_default_options().get("threads")) as ex:
        sharded = not getattr(ex, "in_process", False)
        if sharded and (predictions is not None or be.is_artifact(model) or gears):
            raise ForgeError("--workers/--executor shard the images of an ONNX model run here: not with --predictions, "
                             "--gears or a compiled artifact")
        bar, update = _progress(f"evaluating {model.name}" + (f" ({ex.describe()})" if sharded else ""))
        with bar:
            if sharded:
                from onnxforge.evaluate.executor import evaluate_sharded

                result = evaluate_sharded(model, dataset, data_root, ex, preset=preset, backend=be, limit=limit,
                                          reference=reference, num_classes=num_classes, progress=update,
                                          batch_size=batch_size, cache=cache)
            else:
                result = run_evaluate(
                    model, dataset, data_root, preset=preset, backend=be, limit=limit, batch_size=batch_size,
                    progress=update, reference=reference, predictions=predictions, num_classes=num_classes,
                    gears=_comma_list(gears, "--gears") or (), gear_policy=gear_policy,
                    cache=cache, cache_latency=cache_latency,
                )
    console.out.print(render_result(result))
    for note in result.notes:
        console.out.print(f"note: {note}")
    line = cache_line(cache, "evaluation" if cache is not None and cache.stats.lookups == 1 else "evaluations")
    if line:
        console.out.print(line, markup=False, highlight=False, soft_wrap=True)
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
    backend: str = typer.Option("onnxruntime", "--backend", help=_backend_option_help("onnxruntime"), show_default=False),
    batch_sizes: str = typer.Option("1,4,8,16", "--batch-sizes", help="Comma-separated batch sizes."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Shorthand for the spec option threads (onnxruntime intra-op threads; 0: one per core)."),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    warmup: int = typer.Option(5, "--warmup", help="Untimed runs first."),
    iters: int = typer.Option(20, "--iters", help="Timed runs per batch size."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the records as JSON (atomically)."),
) -> None:
    """Latency (p50/p90/p99 per run) and throughput per batch size, on seeded inputs.

    A model exported with a static batch runs other batch sizes on a copy whose batch dimension is
    fixed to that size; the table says so. --threads and --device fill the spec's threads and device
    options; giving one that contradicts the spec is an error.
    """
    from onnxforge.evaluate.bench import benchmark, static_batch
    from onnxforge.modelio import load_model

    sizes = console.parse_int_list(batch_sizes, "--batch-sizes")
    be = _backend(backend, BENCH_SHORTHANDS, {"--threads": threads, "--device": device})
    if json_path is not None:
        from onnxforge.modelio import check_output_path

        check_output_path(model, json_path)
    proto = load_model(model)
    bar, update = _progress(f"benchmarking {model.name}")
    with bar:
        records = benchmark(proto, sizes, backend=be, warmup=warmup, iters=iters, progress=update)
    fixed = static_batch(proto)
    table = Table(title=f"{model.name} on {be}")
    for col in ("batch", "p50 ms", "p90 ms", "p99 ms", "images/s", "note"):
        table.add_column(col, justify="right" if col != "note" else "left", overflow="fold")
    for r in records:
        if r.error:
            table.add_row(str(r.batch_size), "-", "-", "-", "-", f"[red]{r.error}[/]")
            continue
        note = f"batch fixed on a copy (model is static at {fixed})" if r.fixed_batch else ""
        if r.devices:
            note = "; ".join(filter(None, [note, f"devices {','.join(map(str, r.devices))} at once: images/s summed from ais_bench's summaries"]))
        table.add_row(str(r.batch_size), f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.throughput:.1f}", note)
    console.out.print(table)
    if fixed is not None and any(r.fixed_batch for r in records):
        console.out.print(f"note: {model.name} has a static batch of {fixed}; other batch sizes ran on copies with the batch dimension fixed")
    if json_path is not None:
        from onnxforge.modelio import write_text_atomic

        write_text_atomic(json_path, json.dumps({"model": str(model), "backend": str(be),
                                                 "records": [r.to_dict() for r in records]}, indent=2) + "\n")
        console.out.print(f"wrote {json_path}")
    if all(r.error for r in records):
        raise ForgeError(f"{model}: no batch size could run ({records[0].error})")


def _cann_help() -> str:
    from onnxforge.cann import DEFAULT_CANN, profiles

    lines = [f"{p.version} ({p.line}): opset {p.min_opset}..{p.max_opset}, ONNX {p.onnx_version}"
             + ("" if p.ops is not None else ", no op list") for p in profiles().values()]
    return (f"CANN version whose profile applies (spec option cann); default: the installed CANN (ASCEND_TOOLKIT_HOME), "
            f"else {DEFAULT_CANN}. Profiles: " + "; ".join(lines) + ".")


def _max_opset_help() -> str:
    from onnxforge.cann import profiles

    ranges = ", ".join(f"{p.line}: {p.max_opset}" for p in profiles().values())
    return f"Shorthand for the spec option max_opset: highest ai.onnx opset atc accepts (default: the CANN profile's; {ranges})."


def _comma_list(text: Optional[str], flag: str) -> Optional[tuple[str, ...]]:
    if text is None:
        return None
    items = tuple(part.strip() for part in text.split(","))
    if not all(items):
        raise ForgeError(f"{flag}: expected a comma-separated list, got {text!r}")
    return items


def compile_(
    model: Path = typer.Argument(..., help="ONNX model.", show_default=False),
    backend: str = typer.Option("atc", "--backend", help=_backend_option_help("atc") + "\n\nOnly backends that write a file (atc, ais_bench) have a compile step.", show_default=False),
    soc_version: Optional[str] = typer.Option(None, "--soc-version", help="atc --soc_version (spec option soc_version): target Ascend SoC, e.g. Ascend310, Ascend310P3 (default), Ascend910."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output path (the backend's suffix, e.g. .om, is added if missing; default: next to the model)."),
    cann: Optional[str] = typer.Option(None, "--cann", help=_cann_help(), show_default=False),
    max_opset: Optional[int] = typer.Option(None, "--max-opset", help=_max_opset_help()),
    precision_mode: Optional[str] = typer.Option(None, "--precision-mode", help="atc --precision_mode=VALUE (spec option precision_mode), e.g. force_fp16, allow_mix_precision."),
    precision_mode_v2: Optional[str] = typer.Option(None, "--precision-mode-v2", help="atc --precision_mode_v2=VALUE (CANN 8.x and later), e.g. fp16, origin."),
    dynamic_batch_sizes: Optional[str] = typer.Option(None, "--dynamic-batch-sizes", help="Batch gears, e.g. 1,4,8,16: atc --dynamic_batch_size=\"1,4,8,16\" with -1 as every input's batch in --input_shape. The export batch must be one of them."),
    dynamic_image_sizes: Optional[str] = typer.Option(None, "--dynamic-image-sizes", help="HxW gears, e.g. 512x512,1024x2048: atc --dynamic_image_size=\"512,512;1024,2048\" with -1 as H and W. The export size must be one of them."),
    atc_arg: Optional[list[str]] = typer.Option(None, "--atc-arg", help="One argument appended to the atc command verbatim, e.g. --atc-arg=--op_select_implmode=high_performance (repeatable; spec option extra_args)."),
    aipp: Optional[str] = typer.Option(None, "--aipp", help=f"Preset whose normalisation becomes static AIPP ({PRESETS_HELP}): writes NAME.aipp.cfg (RGB888_U8 input) and passes atc --insert_op_conf=NAME.aipp.cfg. Only presets normalising RGB uint8 as (x/255-mean)/std can."),
    precision_config: Optional[Path] = typer.Option(None, "--precision-config", help="Mixed-precision directory written by 'onnxforge report ... --per-node fp16' (REPORT/precision): atc --keep_dtype=DIR/keep_dtype.cfg, the precision mode keep_dtype goes with for the CANN line (--precision_mode_v2=fp16 on 8.x and later, else --precision_mode=force_fp16; an explicit --precision-mode[-v2] wins), and --op_precision_mode=DIR/op_precision.ini where present. The keep-set must name nodes of this model.", show_default=False),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the exact atc command and write it to NAME.atc.sh beside the output; run nothing."),
) -> None:
    """Compile an ONNX model ahead of time for the backend (an Ascend NPU with CANN's atc).

    The command line is derived from the model: input shapes from the graph, --output_type=FP16 when
    the outputs are float16 (fp16-output), --input_fp16_nodes for float16 inputs (fp16-input). The
    opset and every op are checked against the selected CANN profile before atc runs; an option the
    profile lacks (--precision-mode-v2 with --cann 5.0) is an error. Flags fill the spec's options of
    the same name; one that contradicts the spec is an error. The command is recorded in NAME.om.json.
    """
    values = {
        "--soc-version": soc_version, "--max-opset": max_opset, "--cann": cann,
        "--precision-mode": precision_mode, "--precision-mode-v2": precision_mode_v2,
        "--dynamic-batch-sizes": (tuple(console.parse_int_list(dynamic_batch_sizes, "--dynamic-batch-sizes"))
                                  if dynamic_batch_sizes is not None else None),
        "--dynamic-image-sizes": _comma_list(dynamic_image_sizes, "--dynamic-image-sizes"),
        "--atc-arg": tuple(atc_arg) if atc_arg else None,
        "--precision-config": str(precision_config) if precision_config is not None else None,
    }
    be = _backend(backend, COMPILE_SHORTHANDS, values)
    if be.artifact_suffix is None:
        raise ForgeError(f"compile: backend '{be.name}' has no compile step (it runs the ONNX model as it is); use --backend atc")
    if output is None:
        output = be.artifact_path(model.parent, model.stem)
    elif not str(output).endswith(be.artifact_suffix):
        output = output.with_name(output.name + be.artifact_suffix)
    from onnxforge.modelio import check_output_path, write_text_atomic

    check_output_path(model, output)
    if aipp is not None:
        from onnxforge.backends.base import model_inputs
        from onnxforge.backends.cann.aipp import aipp_for
        from onnxforge.frontends import get_spec
        from onnxforge.modelio import load_model

        ev = get_spec(aipp).eval
        first = model_inputs(load_model(model))[0]
        cfg_path = output.with_name(output.name[: -len(be.artifact_suffix)] + ".aipp.cfg")
        aipp_text = aipp_for(ev.preprocess, ev.mean, ev.std, tuple(int(d) for d in first.shape[2:4])).text()
        be = _backend(str(be), COMPILE_SHORTHANDS, {"--aipp": str(cfg_path)})
        be.plan(model, output)  # every check before anything is written
        write_text_atomic(cfg_path, aipp_text)
        console.out.print(f"wrote {cfg_path}")
    if dry_run:
        plan = be.plan(model, output)
        script = output.with_name(output.name[: -len(be.artifact_suffix)] + ".atc.sh")
        write_text_atomic(script, "#!/bin/sh\n# written by onnxforge compile --dry-run\n" + plan.shell() + "\n")
        console.out.print(plan.shell(), markup=False, highlight=False, soft_wrap=True)
        console.out.print(f"wrote {script}")
        return
    with console.err.status(f"{be.name}: compiling {model.name} ({be}) ..."):
        artifact = be.compile(model, output)
    for line in be.compile_notes():
        console.out.print(line)
    console.out.print(f"wrote {artifact}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
    app.command("bench")(bench)
    app.command("compile")(compile_)
