"""`onnxforge export`: a seed model (or a torch module factory) to static ONNX, checked against PyTorch."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Optional

import typer

from onnxforge.cann import DEFAULT_CANN, profile, profiles
from onnxforge.cli import console
from onnxforge.errors import ForgeError

#: The exporter's opset range (frontends.export.MIN_OPSET..MAX_OPSET; not imported here, that imports torch;
#: tests/cli/test_export_cli.py checks it).
EXPORT_OPSETS = (11, 20)
OPSET_HELP = (f"ONNX opset, {EXPORT_OPSETS[0]}..{EXPORT_OPSETS[1]} (default: the CANN profile's default opset; "
              f"{profile(DEFAULT_CANN).describe_opsets()}).")
CANN_HELP = (f"CANN version whose profile gives the --opset default (default: the installed CANN, else {DEFAULT_CANN}). "
             "Profiles: " + "; ".join(f"{p.version}: opset {p.min_opset}..{p.max_opset}, default {p.default_opset}"
                                      for p in profiles().values()) + ".")

# Static on purpose: building it from the specs would import torch for every command's --help.
# tests/cli/test_export_cli.py checks it against the registered specs.
MODELS_HELP = """\
MODEL is one of (variants after the colon; upstream is the default):

- [bold]refinenet[/bold]: upstream; guide = the last CRP block's pool is an identity (how the guide's checkpoint was trained)
- [bold]vovnet39[/bold]: upstream
- [bold]pspnet[/bold]: upstream = exact adaptive pooling; guide = mmcv's AveragePool emulation k=in-(out-1)*floor(in/out), s=floor(in/out)
- [bold]unetpp[/bold]: upstream = bilinear upsampling; guide = nearest upsampling (how the guide's checkpoint was trained)
- [bold]fastscnn[/bold]: upstream = exact adaptive pooling; guide = the module.patch AvgPool emulation (same formula)

or package.module:factory (any importable callable returning a torch.nn.Module; needs --input-shape).
"""


def export(
    model: str = typer.Argument(..., help="Model name (see above) or package.module:factory.", show_default=False),
    output: Path = typer.Option(..., "--output", "-o", help="ONNX file to write (atomically).", show_default=False),
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", "-c", help="Upstream .pth/.pth.tar checkpoint (state_dict / model / segmenter wrappers, module. prefix ok)."
    ),
    variant: str = typer.Option("upstream", "--variant", help="Model variant: upstream or guide (see above)."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", help="Static batch size."),
    input_size: Optional[str] = typer.Option(None, "--input-size", help="H,W (default: the model's evaluation size)."),
    opset: Optional[int] = typer.Option(None, "--opset", help=OPSET_HELP, show_default=False),
    cann: Optional[str] = typer.Option(None, "--cann", help=CANN_HELP, show_default=False),
    with_aux: bool = typer.Option(False, "--with-aux", help="Also export the auxiliary heads' outputs."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="Full input shape NxCxHxW (generic factories; or instead of --batch-size/--input-size)."),
) -> None:
    """Export MODEL to static ONNX, loading a user's checkpoint, and check it against PyTorch.

    The graph is verified with onnx.checker and onnxruntime on a seeded input (max abs difference to
    PyTorch is printed). Without --checkpoint the weights are deterministic, not trained: fine for
    checking passes and speed, meaningless for accuracy. Without --opset the opset is the CANN profile's
    default (--cann, else the installed CANN, else 5.0); an opset that profile's atc does not accept is
    exported with a note.
    """
    from onnxforge.frontends.export import export_model

    size = _parse_size(input_size) if input_size is not None else None
    shape = _parse_shape(input_shape) if input_shape is not None else None
    with console.progress("export") as reporter:
        result = export_model(
            model,
            output,
            checkpoint=checkpoint,
            variant=variant,
            batch_size=batch_size,
            input_size=size,
            opset=opset,
            with_aux=with_aux,
            input_shape=shape,
            progress=reporter.step,
            cann=cann,
        )
    _render(result)
    from onnxforge.cann import select_profile

    prof = select_profile(cann)
    if not prof.accepts_opset(result.opset):
        console.out.print(f"note: {prof.describe_opsets()}; convert before compiling: "
                          f"--passes 'target-opset{{opset={prof.default_opset}}}'", markup=False, highlight=False)


def _parse_size(text: str) -> tuple[int, int]:
    parts = [p for p in re.split(r"[,x]", text.strip()) if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 2 or any(v <= 0 for v in values):
        raise ForgeError(f"--input-size: expected H,W with positive integers, got {text!r}")
    return values[0], values[1]


def _parse_shape(text: str) -> tuple[int, ...]:
    parts = [p for p in re.split(r"[x,]", text.strip()) if p.strip()]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if not values or any(v <= 0 for v in values):
        raise ForgeError(f"--input-shape: expected positive integers like 1x3x224x224, got {text!r}")
    return values


def _render(result) -> None:
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("wrote", str(result.path))
    table.add_row("model", f"{result.model} ({result.variant}), opset {result.opset}")
    table.add_row("checkpoint", str(result.checkpoint) if result.checkpoint else "none")
    for name, shape in zip(result.input_names, result.input_shapes):
        table.add_row("input", f"{name} {'x'.join(map(str, shape))}")
    for name, shape in zip(result.output_names, result.output_shapes):
        table.add_row("output", f"{name} {'x'.join(map(str, shape))}")
    if result.pool_swaps:
        table.add_row("pools", f"{len(result.pool_swaps)} adaptive pools made static")
    table.add_row("vs PyTorch", f"max abs diff {result.max_abs_diff:.3g} (onnxruntime, seeded input)")
    console.out.print(table)


def register(app: typer.Typer) -> None:
    app.command("export", help=inspect.cleandoc(export.__doc__ or "") + "\n\n" + MODELS_HELP)(export)
