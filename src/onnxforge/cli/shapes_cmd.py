"""`onnxforge shapes`: the image size distribution of a dataset and the image-size gears to compile for it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from onnxforge.cli import console
from onnxforge.errors import ForgeError
from onnxforge.evaluate.catalog import dataset_help
from onnxforge.frontends import MODELS


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100.0 * v:.2f}%"


def shapes(
    dataset: str = typer.Option(..., "--dataset", "-d", help=f"Dataset: {dataset_help()}.", show_default=False),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset folder in its real layout."),
    preset: Optional[str] = typer.Option(None, "--preset", help=f"Model whose resize policy applies: {' | '.join(MODELS)} (default: whole images, as the 'full' policy feeds them)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Read the first N images only."),
    max_gears: int = typer.Option(4, "--max-gears", "-k", help="Most image gears to propose (atc takes 2..100; 1: one static size)."),
    multiple: int = typer.Option(32, "--multiple", help="Gear sides are multiples of this (the network's stride)."),
    model: Optional[Path] = typer.Option(None, "--model", help="A dynamic-H/W ONNX model: evaluate it at the proposed gears with --gear-policy pad and resize (onnxruntime) and report the accuracy of each."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="With --model: classes the model predicts, where its output does not say."),
    fmt: console.OutputFormat = console.format_option(),
    quiet: bool = console.quiet_option(),
) -> None:
    """Image size distribution of a dataset and the image-size gears that cover it with least padding.

    Sizes are read from the image headers (nothing is decoded). With a preset that resizes every image
    to one size (refinenet, pspnet, vovnet39, unetpp) one gear suffices; for whole-image presets
    (fastscnn) and preset-less datasets each image goes to the smallest gear holding it, padded at the
    bottom/right, and the K gears minimising the padded pixels are chosen: exactly (every set of
    candidate gears) where that is small enough, else greedily with swap passes (the output says
    which). Prints the distribution, the gears with their mean padded fraction and a batch suggestion,
    and the `onnxforge compile --dynamic-image-sizes` line to paste (atc --dynamic_image_size).
    """
    from onnxforge.evaluate.gears import analyse_shapes, compare_policies

    report = analyse_shapes(dataset, data_root, preset, limit=limit, max_gears=max_gears, multiple=multiple)
    comparison = None
    if model is not None and report.proposal.fixed:
        g = report.proposal.gears[0]
        raise ForgeError(f"--model: preset {report.preset} makes every image {g.text} ({report.policy}): one gear, no padding "
                         "against resizing to measure")
    if model is not None:
        with console.progress(f"evaluating {model.name} at the gears", quiet=quiet) as update:
            comparison = compare_policies(model, dataset, data_root, report.proposal.sizes, preset, limit=limit,
                                          num_classes=num_classes, progress=update)
    out = console.Output(fmt, quiet)
    data = report.to_dict()
    if comparison is not None:
        data["policies"] = {p: {"metrics": r.metrics, "images": r.images, "metric": r.metric} for p, r in comparison.items()}
    if out.is_json:
        out.json(data)
        return

    dist = Table(title=f"{report.images} images of {dataset}" + (f" (preset {report.preset}, {report.policy})" if report.preset else ""))
    for col in ("", "min", "p50", "p90", "p99", "max"):
        dist.add_column(col, justify="right")
    for key, q in report.quantiles.items():
        shown = (lambda v: f"{v:.3f}") if key == "megapixels" else (lambda v: f"{v:.0f}")
        dist.add_row(key, *(shown(q[k]) for k in ("min", "p50", "p90", "p99", "max")))
    out.table(dist)

    common = Table(title="most common sizes (HxW)")
    common.add_column("size")
    common.add_column("images", justify="right")
    for (h, w), n in report.sizes[:10]:
        common.add_row(f"{h}x{w}", str(n))
    if len(report.sizes) > 10:
        common.add_row(f"{len(report.sizes) - 10} other sizes", str(sum(n for _, n in report.sizes[10:])))
    out.table(common)

    p = report.proposal
    padded = "the preset's own padding" if p.fixed else f"padded {_pct(p.padded_fraction)} of the gear pixels"
    gears = Table(title=f"gears: {p.method}; {padded}")
    for col in ("gear (HxW)", "images", "mean padded", "batch"):
        gears.add_column(col, justify="left" if col.startswith("gear") else "right")
    for g in p.gears:
        gears.add_row(g.text, str(g.images), _pct(g.padded_fraction), str(g.batch))
    out.table(gears)
    if comparison is not None:
        acc = Table(title=f"{model.name} at these gears (onnxruntime)")
        keys = list(comparison["pad"].metrics)
        acc.add_column("policy")
        for k in keys:
            acc.add_column(k, justify="right")
        for policy, r in comparison.items():
            acc.add_row(policy, *(_pct(r.metrics[k]) for k in keys))
        out.table(acc)
    for note in report.notes:
        out.line(f"note: {note}")
    out.line(report.compile_line())


def register(app: typer.Typer) -> None:
    app.command("shapes")(shapes)
