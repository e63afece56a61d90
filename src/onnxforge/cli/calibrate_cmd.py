"""`onnxforge calibrate`: write the calibration file of the `quantize` pass from a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from onnxforge.cli import console
from onnxforge.evaluate.catalog import dataset_help
from onnxforge.frontends import MODELS


def calibrate(
    model: Path = typer.Argument(..., help="The float ONNX model to be quantized (its image input fixes size and dtype)."),
    output: Path = typer.Option(..., "-o", "--output", help="The .npz to write (atomically), for quantize{calibration=FILE}."),
    dataset: str = typer.Option(..., "--dataset", "-d", help=f"Dataset: {dataset_help()}.", show_default=False),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset folder in its real layout (synthetic: optional, generated in memory without it)."),
    preset: Optional[str] = typer.Option(None, "--preset", help=f"Model whose preprocessing to use: {' | '.join(MODELS)} (required for a real dataset)."),
    images: int = typer.Option(16, "--images", help="Samples to take: the first N of the dataset."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of in-memory synthetic images (default: the calibration seed, distinct from the evaluation one)."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Class count of in-memory synthetic images (as the model was trained)."),
) -> None:
    """Preprocess the first N images of a dataset exactly as `evaluate` does and write them as the
    calibration file of `quantize{calibration=FILE,images=N}`.

    Use images the accuracy is not measured on (a training subset); in-memory synthetic images use
    their own seed, distinct from the evaluation seed.
    """
    from onnxforge.errors import ForgeError
    from onnxforge.evaluate.calibration import write_calibration
    from onnxforge.modelio import check_output_path, load_model

    if images < 1:
        raise ForgeError(f"--images: expected a positive sample count, got {images}")
    if num_classes is not None and num_classes < 1:
        raise ForgeError(f"--num-classes: expected a positive class count, got {num_classes}")
    check_output_path(model, output)
    proto = load_model(model)
    path = write_calibration(output, proto, dataset, data_root, preset, images, seed, num_classes)
    import numpy as np

    with np.load(path) as npz:
        shapes = ", ".join(f"{k} {'x'.join(map(str, npz[k].shape))} {npz[k].dtype}" for k in npz.files)
    source = f"{dataset}" + (f" at {data_root}" if data_root else " (in memory)") + (f", preset {preset}" if preset else "")
    console.out.print(f"wrote {path}: {shapes} from {source}", markup=False, highlight=False, soft_wrap=True)
    console.out.print(f"use: --passes 'simplify,quantize{{calibration={path},images={images}}}'", markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate)
