"""Calibration inputs for the `quantize` pass, taken from a dataset with the dataset's own preprocessing.

The pass sits below the evaluator and reads calibration data from an .npz of preprocessed network
inputs (`quantize{calibration=calib.npz,images=16}`). This module writes that file: it reads the first
`count` samples of a dataset in its real layout and turns each into the network input exactly as the
evaluator does (the preset's preprocessing policy, mean/std, resize and pad; the model's input size),
so INT8 ranges are calibrated on what the model will see.

File format: one float array per graph input, named after it, of shape (count, C, H, W) (the
model's input shape without the batch axis, one sample per row).

Calibration images should not be the images the accuracy is measured on. For the in-memory synthetic
dataset the default seed is `CALIBRATION_SEED`, distinct from the evaluation seed (`EVAL_SEED`) and
the training seed, so the three sets never overlap. For a real dataset take a split or a slice the
evaluation does not use (`data_root` of a training subset).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx

from onnxforge.errors import DatasetError, EvaluationError
from onnxforge.evaluate.catalog import open_dataset
from onnxforge.evaluate.preprocess import IMAGENET_MEAN, IMAGENET_STD, prepare
from onnxforge.modelio import load_model, write_bytes_atomic
from onnxforge.numerics import TensorInfo, input_specs

#: Seed of in-memory synthetic calibration images (TRAIN_SEED = 0 and EVAL_SEED = 1 are taken).
CALIBRATION_SEED = 2


def calibration_inputs(
    model: onnx.ModelProto | str | Path,
    dataset: str,
    data_root: str | Path | None = None,
    preset: str | None = None,
    count: int = 8,
    seed: int | None = None,
    classes: int | None = None,
) -> dict[str, np.ndarray]:
    """The first `count` samples of `dataset`, preprocessed for `model`, by input name.

    Args:
        model: the float model to be quantized (its image input fixes the size and dtype).
        dataset: voc2012 | imagenet | cityscapes | dsb2018 | synthetic.
        data_root: the dataset folder (None for synthetic: generated in memory at the model's size).
        preset: a frontend name whose preprocessing to use (required except for synthetic, which
            without one uses the evaluator's generic policy: the whole image, ImageNet mean/std).
        count: how many samples.
        seed: seed of in-memory synthetic images (default CALIBRATION_SEED).
        classes: class count of in-memory synthetic images (default: the generator's), as the model was trained.

    Raises:
        EvaluationError: no preset for a real dataset, or the model has no single 4-D float image input.
        DatasetError: the dataset layout is wrong, or it holds fewer than `count` samples.
    """
    if count < 1:
        raise EvaluationError(f"calibration: count must be at least 1, got {count}")
    proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
    inp = _image_input(proto)
    if preset is None and dataset != "synthetic":
        raise EvaluationError(f"calibration on {dataset} needs a preset (the model whose preprocessing to use)")
    if preset is not None:
        from onnxforge.frontends import get_spec

        spec = get_spec(preset).eval
        policy, mean, std, resize_short, ignore = spec.preprocess, spec.mean, spec.std, spec.resize_short, spec.ignore_index
    else:
        policy, mean, std, resize_short, ignore = "full", IMAGENET_MEAN, IMAGENET_STD, None, 255
    canvas = (int(inp.shape[2]), int(inp.shape[3]))
    if data_root is None and dataset == "synthetic":
        ds = open_dataset(dataset, None, size=canvas, count=count, seed=CALIBRATION_SEED if seed is None else seed, classes=classes)
    else:
        ds = open_dataset(dataset, data_root)
    if len(ds) < count:
        raise DatasetError(f"calibration: {dataset} at {data_root} has {len(ds)} samples, {count} requested")
    rows = []
    for i, sample in enumerate(ds):
        if i == count:
            break
        rows.append(prepare(policy, sample, canvas, mean, std, resize_short, ignore).input)
    return {inp.name: np.stack(rows).astype(inp.dtype, copy=False)}


def write_calibration(path: str | Path, model: onnx.ModelProto | str | Path, dataset: str, data_root: str | Path | None = None,
                      preset: str | None = None, count: int = 8, seed: int | None = None, classes: int | None = None) -> Path:
    """Writes `calibration_inputs(...)` to `path` (.npz, atomically; nothing is written on error).

    Returns:
        The path written.
    """
    arrays = calibration_inputs(model, dataset, data_root, preset, count, seed, classes)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = Path(path)
    if not (path.parent if str(path.parent) else Path(".")).is_dir():
        raise EvaluationError(f"{path}: output directory {path.parent} does not exist")
    write_bytes_atomic(path, buf.getvalue())
    return path


def _image_input(model: onnx.ModelProto) -> TensorInfo:
    specs = input_specs(model)
    if len(specs) != 1 or len(specs[0].shape) != 4 or specs[0].dtype.kind != "f":
        found = ", ".join(f"{s.name} {list(s.shape)}" for s in specs) or "none"
        raise EvaluationError(f"calibration: the model needs one 4-D float image input (N,3,H,W); it has {found}")
    spec = specs[0]
    if not all(isinstance(d, int) and d > 0 for d in spec.shape[1:]):
        raise EvaluationError(f"calibration: input {spec.name!r} has dynamic dims {list(spec.shape)}; fix its size first "
                              f"(static-shape{{shape={spec.name}:1x3xHxW}})")
    return spec
