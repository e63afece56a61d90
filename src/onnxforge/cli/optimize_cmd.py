"""`onnxforge passes` and `onnxforge optimize`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from onnxforge.cli import console
from onnxforge.cli.common import cache_dir_option, cache_latency_option, cache_size_option, no_cache_option
from onnxforge.cli.common import executor_option, ray_address_option, workers_option


def passes(
    tag: Optional[str] = typer.Option(None, "--tag", help="Only passes with this tag (e.g. ascend: the Ascend knowledges)."),
    fmt: console.OutputFormat = console.format_option(),
    quiet: bool = console.quiet_option(),
) -> None:
    """List every pass: name, kind, tags, options and summary.

    A tag that is not a pass name is also a pipeline shortcut for its exact passes, in this order:
    `--passes simplify,ascend,target-opset`.
    """
    from onnxforge.errors import PipelineError
    from onnxforge.passes import all_passes
    from onnxforge.passes.pipeline import option_docs

    listed = {n: c for n, c in all_passes().items() if tag is None or tag in c.tags}
    if not listed:
        known = sorted({t for c in all_passes().values() for t in c.tags})
        raise PipelineError(f"no pass has tag '{tag}' (tags: {', '.join(known) or 'none'})")
    table = Table(title="onnxforge passes" + (f" tagged {tag}" if tag else ""), show_lines=False)
    table.add_column("name", style="bold")
    table.add_column("kind")
    table.add_column("tags")
    table.add_column("options")
    table.add_column("summary")
    for name, cls in listed.items():
        opts = "\n".join(f"{n}: {t} = {d}  {h}" for n, t, d, h in option_docs(cls)) or "-"
        table.add_row(name, cls.kind.value, ",".join(cls.tags) or "-", opts, cls.summary)
    out = console.Output(fmt, quiet)
    out.table(table)
    if fmt == console.OutputFormat.text:
        out.line("Pipeline syntax: name{key=value,...},name2  (list values: a|b); a tag expands to its exact passes")


def optimize(
    model: Path = typer.Argument(..., help="Input ONNX model (never modified)."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the optimized model."),
    passes_: str = typer.Option(..., "--passes", "-p", help="Pipeline, e.g. 'simplify,resize-nearest{nodes=up1|up2},fp16-output'."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the checker and the numeric check after each pass."),
    dump_dir: Optional[Path] = typer.Option(None, "--dump-dir", help="Write every stage as NNN_<pass>.onnx (and a reproducer on failure)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the per-pass records as JSON."),
    verify_shape: Optional[List[str]] = typer.Option(None, "--verify-shape", help="Concrete shape a dynamic input is verified at, NAME:1x3x640x640 (repeatable). Default: batch 1, 3 channels, the smallest of 32/64/128/224/256/512/640 that runs."),
    verify_inputs: Optional[List[str]] = typer.Option(None, "--verify-inputs", help="Verify on your own data: an .npz keyed by input name, or an .npy (NAME=a.npy, or a.npy for a one-input model); repeatable."),
    atol: Optional[float] = typer.Option(None, "--atol", help="Absolute tolerance of the exact-pass check, times max(1, max|output|) (default per dtype: fp32 1e-4)."),
    rtol: Optional[float] = typer.Option(None, "--rtol", help="Relative tolerance of the exact-pass check (default per dtype: fp32 1e-4)."),
    auto: bool = typer.Option(False, "--auto", help="Keep only the passes that pay on the backend within the accuracy budget (needs data)."),
    budget: str = typer.Option("1%", help="--auto: largest accepted accuracy drop (1% relative, 0.5pt absolute)."),
    dataset: Optional[str] = typer.Option(None, help="--auto: dataset name (with --data-root and --preset)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="--auto: dataset folder."),
    preset: Optional[str] = typer.Option(None, help="--auto: model preset for preprocessing and metric."),
    synthetic: Optional[int] = typer.Option(None, "--synthetic", help="--auto: N synthetic images instead of a dataset."),
    limit: Optional[int] = typer.Option(None, help="--auto: evaluate only the first N images."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="--auto: classes the data has, where the model cannot tell."),
    backend: str = typer.Option("onnxruntime", help="--auto: backend spec the stages are evaluated and timed on, e.g. 'onnxruntime{device=cuda}'."),
    threads: int = typer.Option(0, help="--auto: onnxruntime threads."),
    min_rounds: int = typer.Option(10, "--min-rounds", help="--auto: interleaved timing rounds always run (>= 2)."),
    max_rounds: int = typer.Option(200, "--max-rounds", help="--auto: most timing rounds."),
    max_seconds: float = typer.Option(30.0, "--max-seconds", help="--auto: time limit of one timing run (seconds)."),
    no_cache: bool = no_cache_option(),
    cache_dir: Optional[Path] = cache_dir_option(),
    cache_size: str = cache_size_option(),
    cache_latency: bool = cache_latency_option(),
    workers: int = workers_option(),
    executor: str = executor_option(),
    ray_address: Optional[str] = ray_address_option(),
    fmt: console.OutputFormat = console.format_option(),
    quiet: bool = console.quiet_option(),
) -> None:
    """Apply a pipeline of named rewrites to an ONNX model, verifying the model after each pass.

    Exact passes must keep the outputs (checked with onnxruntime on seeded inputs against the previous
    stage); approximate passes are measured. The output is written only when every pass succeeded.
    With --auto, evaluations are cached by content and reused on a rerun (--no-cache to evaluate all again).
    """
    from onnxforge.passes import DumpStages, PassManager, Verifier, parse_pipeline
    from onnxforge.modelio import check_output_path, load_model, save_model
    from onnxforge.numerics import load_input_arrays, parse_shape_spec

    pipeline = parse_pipeline(passes_)
    shapes = dict(parse_shape_spec(item) for item in verify_shape or [])
    check_output_path(model, output)
    if json_path is not None:
        check_output_path(model, json_path)
    proto = load_model(model)
    arrays = load_input_arrays(proto, verify_inputs) if verify_inputs else {}
    verifier = Verifier(shapes=shapes, inputs=arrays, atol=atol, rtol=rtol)
    auto_record = None
    if auto:
        from onnxforge.cli.common import data_source, executor_from_cli, open_cache, parse_budget, timing_policy

        with executor_from_cli(executor, workers, ray_address, threads) as ex:
            pipeline, auto_record = _optimize_auto(proto, model, pipeline, parse_budget(budget), timing_policy(min_rounds, max_rounds, max_seconds),
                                                   data_source(dataset, data_root, synthetic, preset, limit, num_classes), backend, threads,
                                                   not no_verify, open_cache(no_cache, cache_dir, cache_size), cache_latency, ex)
    out = console.Output(fmt, quiet)
    with out.progress(f"optimize {model.name}") as reporter:
        instruments = [_PassProgress(reporter)] + ([DumpStages(dump_dir)] if dump_dir else [])
        result = PassManager(pipeline, verify=not no_verify, instruments=instruments, verifier=verifier).run(proto)
    save_model(result.model, output)
    out.table(render_stages(result, title=f"{model.name} -> {output.name}: {pipeline}"), data=[s.to_dict() for s in result.stages])
    out.line(f"wrote {output} ({result.nodes_before} -> {result.nodes_after} nodes, {result.seconds:.2f} s)")
    if json_path is not None:
        import json

        from onnxforge.modelio import write_text_atomic

        payload = {
            "input": str(model), "output": str(output), "pipeline": str(pipeline),
            "nodes_before": result.nodes_before, "nodes_after": result.nodes_after, "seconds": result.seconds,
            "stages": [s.to_dict() for s in result.stages],
        }
        if auto_record is not None:
            payload["auto"] = auto_record
        write_text_atomic(json_path, json.dumps(payload, indent=2, default=str))


def _optimize_auto(proto, model, pipeline, budget, policy, source, backend, threads, verify, cache=None, cache_latency=False,
                   executor=None):
    """--auto: decide every pass on evidence (`evaluate.ab.decide_pipeline`, cumulative), print the
    decision table, and return the kept pipeline (which the plain path then applies and writes, so
    --dump-dir, --json and --no-verify apply to exactly what is stored) and the decisions for --json."""
    from onnxforge.cli.common import cache_line, decision_table
    from onnxforge.evaluate.ab import decide_pipeline
    from onnxforge.passes.pipeline import Pipeline

    with console.progress("--auto") as update:
        decision = decide_pipeline(proto, pipeline, source, backend=backend, budget=budget, threads=threads,
                                   timing=policy, verify=verify, progress=update, cache=cache,
                                   cache_latency=cache_latency, executor=executor)
    console.Output().table(decision_table(decision.stages, f"{model.name}: --auto over {pipeline}", decision.judged_on, full=False))
    for w in decision.warnings:
        console.err.print(f"warning: {w}", style="bold yellow", markup=False)
    for s in decision.stages[1:]:
        if s.verdict != "accepted":
            console.out.print(f"dropped {s.name}: {s.reason}", markup=False)
    kept = decision.kept_pipeline
    console.out.print(f"kept: {kept or 'nothing (the model is written unchanged)'}", markup=False)
    line = cache_line(cache)
    if line:
        console.out.print(line, markup=False, highlight=False, soft_wrap=True)
    record = {
        "kept_pipeline": kept, "judged_on": decision.judged_on, "warnings": decision.warnings,
        "timing": decision.timing, "stages": [s.to_dict() for s in decision.stages],
    }
    return (Pipeline(tuple(decision.kept)) if kept else Pipeline(())), record


class _PassProgress:
    """A pass-manager instrument that shows each pass as it finishes (the CLI's view of the run)."""

    def __init__(self, reporter) -> None:
        self.reporter = reporter

    def run_start(self, ctx, state) -> None:
        self.reporter.step(str(ctx.pipeline.passes[0]) if len(ctx.pipeline) else "done", 0, len(ctx.pipeline))

    def after_pass(self, ctx, p, state, record) -> None:
        n = len(ctx.pipeline)
        nxt = str(ctx.pipeline.passes[record.index]) if record.index < n else "done"
        self.reporter.step(nxt, record.index, n)

    def on_failure(self, ctx, p, index, error) -> None:
        pass

    def run_end(self, ctx, result) -> None:
        pass


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
        if v.outputs:
            verdict = v.status + "".join(f"\n{o}" for o in v.outputs) + (f"\non {v.inputs}" if v.inputs else "")
            if v.status == "failed":
                verdict += f"\n{v.detail}"
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
