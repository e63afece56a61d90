"""Scores a model on a dataset: read, preprocess, run (or read predictions), postprocess, accumulate.

`evaluate` streams the dataset in batches of the model's batch size (a static batch is honoured: the
last batch is padded with copies of its last image and the padded results are dropped), so memory does
not grow with the dataset. A preset (``onnxforge.frontends.get_spec(name).eval``, or an EvalSpec)
says how; without one, the ``synthetic`` dataset is scored generically (full-size images, ImageNet
mean/std, mmseg-style mIoU ignoring 255, classes from the model's output).

Results are fractions in [0, 1]. Timings separate the backend's own inference time from everything else
(`overhead_s`: reading, preprocessing, postprocessing, metrics), so the evaluator's cost is visible.
Progress is reported through ``progress(done, total)``; nothing is printed.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import onnx

from onnxforge.backends.base import TensorInfo, get_backend, model_inputs, model_outputs
from onnxforge.errors import EvaluationError
from onnxforge.evaluate.agreement import Agreement
from onnxforge.evaluate.datasets import Dataset, open_dataset
from onnxforge.evaluate.metrics import make_metric
from onnxforge.evaluate.postprocess import prediction_for, split_batch
from onnxforge.evaluate.predictions import PredictionDir
from onnxforge.evaluate.preprocess import IMAGENET_MEAN, IMAGENET_STD, Prepared, prepare
from onnxforge.frontends.base import EvalSpec

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

#: metric name -> the keys its result() reports
METRIC_KEYS = {
    "miou-segmentron": ("mIoU", "pixAcc"),
    "miou-mmseg": ("mIoU", "pixAcc"),
    "miou-densetorch": ("mIoU", "pixAcc"),
    "topk": ("top1", "top5"),
    "binary-iou": ("IoU",),
}


@dataclass
class EvalResult:
    """What `evaluate` measured. Metric values are fractions in [0, 1] (None where undefined)."""

    metrics: dict[str, float | None]
    metric: str
    dataset: str
    preset: str | None
    backend: str
    images: int
    batch_size: int
    total_s: float
    inference_s: float
    setup_s: float = 0.0
    reference_s: float = 0.0
    model: str | None = None
    per_class_iou: list[float | None] | None = None
    agreement: dict[str, float | None] | None = None
    predictions: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def overhead_s(self) -> float:
        """Wall time not spent in the backend (reading, pre/postprocessing, metrics)."""
        return max(self.total_s - self.setup_s - self.inference_s - self.reference_s, 0.0)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (`evaluate --json`)."""
        from onnxforge import __version__

        return {
            "metrics": dict(self.metrics),
            "metric": self.metric,
            "dataset": self.dataset,
            "preset": self.preset,
            "backend": self.backend,
            "images": self.images,
            "batch_size": self.batch_size,
            "model": self.model,
            "predictions": self.predictions,
            "timings": {
                "total_s": self.total_s,
                "setup_s": self.setup_s,
                "inference_s": self.inference_s,
                "reference_s": self.reference_s,
                "overhead_s": self.overhead_s,
                "inference_per_image_ms": (1000.0 * self.inference_s / self.images) if self.images else None,
            },
            "per_class_iou": self.per_class_iou,
            "agreement": self.agreement,
            "notes": list(self.notes),
            "onnxforge_version": __version__,
        }


def generic_spec(dataset: str, num_classes: int, input_size: tuple[int, int]) -> EvalSpec:
    """The preset-less segmentation spec (used for the synthetic dataset)."""
    return EvalSpec(
        task="segmentation", num_classes=num_classes, dataset=dataset, input_size=input_size, preprocess="full",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, metric="miou-mmseg", ignore_index=255, output_layout="logits-nchw",
        notes="generic segmentation: whole image, ImageNet mean/std, mIoU ignoring 255 (nanmean over classes)",
    )


def resolve_preset(preset: str | EvalSpec | None) -> tuple[EvalSpec | None, str | None]:
    """(EvalSpec, name) of a preset name, an EvalSpec, or None."""
    if preset is None:
        return None, None
    if isinstance(preset, EvalSpec):
        return preset, "custom"
    from onnxforge.frontends import get_spec

    return get_spec(preset).eval, preset


def _image_input(inputs: list[TensorInfo], label: str) -> TensorInfo:
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise EvaluationError(f"{label}: evaluate feeds one image input; the model has inputs: {names}")
    inp = inputs[0]
    if len(inp.shape) != 4:
        raise EvaluationError(f"{label}: input '{inp.name}' has shape {list(inp.shape)}; expected NCHW images")
    if isinstance(inp.shape[1], int) and inp.shape[1] != 3:
        raise EvaluationError(f"{label}: input '{inp.name}' has {inp.shape[1]} channels; the images have 3")
    if inp.dtype.kind != "f":
        raise EvaluationError(f"{label}: input '{inp.name}' is {inp.dtype.name}; expected float32 or float16 images")
    return inp


def _spatial(inp: TensorInfo) -> tuple[int, int] | None:
    h, w = inp.shape[2], inp.shape[3]
    if isinstance(h, int) and h > 0 and isinstance(w, int) and w > 0:
        return h, w
    return None


def _check_against_spec(spec: EvalSpec, preset: str | None, inp: TensorInfo, outputs: list[TensorInfo], label: str) -> None:
    hw = _spatial(inp)
    if hw is not None and tuple(hw) != tuple(spec.input_size):
        raise EvaluationError(
            f"{label}: input '{inp.name}' is {hw[0]}x{hw[1]} (HxW) but preset {preset} evaluates at "
            f"{spec.input_size[0]}x{spec.input_size[1]}; export the model at that size"
        )
    if not outputs:
        raise EvaluationError(f"{label}: the model has no outputs")
    out = outputs[0]
    if out.dtype.kind != "f" or not out.shape:
        return
    if spec.task == "classification":
        if len(out.shape) >= 2 and isinstance(out.shape[1], int) and out.shape[1] != spec.num_classes:
            raise EvaluationError(
                f"{label}: output '{out.name}' has {out.shape[1]} classes; preset {preset} expects {spec.num_classes}"
            )
        return
    if len(out.shape) == 4 and isinstance(out.shape[1], int):
        want = 1 if spec.task == "binary-segmentation" else spec.num_classes
        # a single float channel on a multi-class task is a label map stored as floats: accepted
        if out.shape[1] != want and out.shape[1] != 1:
            raise EvaluationError(
                f"{label}: output '{out.name}' has {out.shape[1]} channels; preset {preset} expects {want} class logits"
            )


def _batched(it: Iterator, n: int) -> Iterator[list]:
    while True:
        chunk = list(itertools.islice(it, n))
        if not chunk:
            return
        yield chunk


def _stack(prepared: list[Prepared], batch: int, dtype: np.dtype) -> np.ndarray:
    arrays = [p.input for p in prepared]
    arrays += [arrays[-1]] * (batch - len(arrays))
    return np.stack(arrays).astype(dtype, copy=False)


def _run(runner, inp: TensorInfo, first_output: str, prepared: list[Prepared], batch: int) -> list[np.ndarray]:
    """First output per prepared sample, running in groups of `batch` (the last group padded)."""
    results: list[np.ndarray] = []
    for start in range(0, len(prepared), batch):
        group = prepared[start:start + batch]
        out = runner.infer({inp.name: _stack(group, batch, inp.dtype)}, [first_output])[0]
        results.extend(split_batch(out, batch)[: len(group)])
    return results


class _Model:
    """A model to run: its proto (if ONNX), its input/output infos, and a runner once entered."""

    def __init__(self, model: str | Path | onnx.ModelProto, backend: str, backend_options: dict, workdir: Path, tag: str) -> None:
        self.label = str(model) if not isinstance(model, onnx.ModelProto) else (model.graph.name or tag)
        self.is_om = not isinstance(model, onnx.ModelProto) and str(model).endswith(".om")
        if self.is_om:
            self.proto = None
        elif isinstance(model, onnx.ModelProto):
            self.proto = model
        else:
            from onnxforge.modelio import load_model

            self.proto = load_model(model)
        self.backend = get_backend(backend, **backend_options)
        self.source = model
        self.workdir = workdir
        self.tag = tag
        self.runner = None

    def static_infos(self) -> tuple[list[TensorInfo], list[TensorInfo]] | None:
        if self.proto is None:
            return None
        return model_inputs(self.proto), model_outputs(self.proto)

    def open(self, stack: contextlib.ExitStack) -> None:
        if self.is_om and self.backend.name == "onnxruntime":
            raise EvaluationError(f"{self.label}: an .om model runs on an Ascend NPU: use --backend ais_bench")
        if self.backend.artifact_kind == "file":
            artifact = self.backend.compile(self.source, self.workdir / f"{self.tag}.om")
        else:
            artifact = self.backend.compile(self.proto if self.proto is not None else self.source, None)
        self.runner = stack.enter_context(self.backend.runner(artifact))

    def infos(self) -> tuple[list[TensorInfo], list[TensorInfo]]:
        static = self.static_infos()
        if static is not None:
            return static
        assert self.runner is not None
        return self.runner.inputs(), self.runner.outputs()


def evaluate(
    model_path_or_proto: str | Path | onnx.ModelProto,
    dataset: str,
    data_root: str | Path | None,
    preset: str | EvalSpec | None = None,
    backend: str = "onnxruntime",
    limit: int | None = None,
    batch_size: int | None = None,
    progress: Progress | None = None,
    reference: str | Path | onnx.ModelProto | None = None,
    *,
    predictions: str | Path | None = None,
    backend_options: dict | None = None,
    num_classes: int | None = None,
    synthetic_seed: int | None = None,
) -> EvalResult:
    """Evaluates a model on `dataset` (read from `data_root`) and returns its metrics and timings.

    Args:
        model_path_or_proto: an ONNX file or ModelProto (an .om file with backend ais_bench).
        dataset: voc2012 | imagenet | cityscapes | dsb2018 | synthetic.
        data_root: the dataset folder (None for synthetic: generated in memory at the model's size).
        preset: a frontend name (`get_spec(name).eval`) or an EvalSpec; required except for synthetic.
        backend: onnxruntime | atc | ais_bench; `backend_options` go to its constructor.
        limit: evaluate the first `limit` samples only.
        batch_size: images per run; must equal a static batch; default: the static batch, else 1.
        progress: called as progress(done, total) after each batch.
        reference: a baseline model run on the same inputs; adds agreement metrics.
        predictions: a folder of outputs written by ais_bench/benchmark; the model is not run.
        num_classes: class count where the model cannot tell it (label-map outputs on synthetic data).
        synthetic_seed: seed of in-memory synthetic data (default synthetic.EVAL_SEED).

    Raises:
        EvaluationError: the model does not fit the preset, or predictions are missing/wrong.
        DatasetError: the dataset layout is wrong (naming the file).
        BackendError / BackendUnavailable: the backend cannot compile or run the model.
    """
    t_start = time.perf_counter()
    backend_options = dict(backend_options or {})
    if preset is None and dataset != "synthetic":
        raise EvaluationError(f"dataset {dataset} needs --preset MODEL (one of refinenet, vovnet39, pspnet, unetpp, fastscnn)")
    # the layout is checked first: a wrong folder should fail before a model is loaded or compiled
    ds: Dataset | None = None
    if dataset != "synthetic" or data_root is not None:
        ds = open_dataset(dataset, data_root, limit=limit)
    spec, preset_name = resolve_preset(preset)
    if spec is not None and dataset != spec.dataset:
        raise EvaluationError(
            f"preset {preset_name} evaluates on {spec.dataset}, not {dataset}: use --dataset {spec.dataset}"
            + ("" if dataset != "synthetic" else ", or drop --preset to score synthetic data generically")
        )
    if predictions is not None and isinstance(model_path_or_proto, (str, Path)) and str(model_path_or_proto).endswith(".om"):
        raise EvaluationError("--predictions needs the ONNX model (for its output shape and dtype), not the .om")

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="onnxforge-eval-")))
        cand = _Model(model_path_or_proto, backend, backend_options, workdir, "model")
        ref = _Model(reference, backend, backend_options, workdir, "reference") if reference is not None else None
        t_setup = time.perf_counter()
        if predictions is None:
            cand.open(stack)
        if ref is not None:
            ref.open(stack)
        setup_s = time.perf_counter() - t_setup

        inputs, outputs = cand.infos()
        inp = _image_input(inputs, cand.label)
        hw = _spatial(inp)
        if spec is None:
            spec = _synthetic_spec(dataset, data_root, inp, outputs, hw, num_classes, cand.label)
            preset_name = None
        else:
            _check_against_spec(spec, preset_name, inp, outputs, cand.label)
        canvas = hw or tuple(spec.input_size)

        notes: list[str] = []
        if ds is None:  # in-memory synthetic data at the model's size
            ds = open_dataset(dataset, None, limit=limit, size=canvas, classes=spec.num_classes, seed=synthetic_seed)
            notes.append(f"synthetic data generated in memory: {len(ds)} images {canvas[0]}x{canvas[1]}, "
                         f"{spec.num_classes} classes, seed {ds.seed}")
        if dataset == "synthetic" and ds.num_classes and ds.num_classes != spec.num_classes:
            raise EvaluationError(
                f"{cand.label}: the model predicts {spec.num_classes} classes but the synthetic set at {data_root} has {ds.num_classes}"
            )

        static_batch = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
        if static_batch is not None and batch_size is not None and batch_size != static_batch:
            raise EvaluationError(
                f"{cand.label}: the model's batch is fixed at {static_batch}; --batch-size {batch_size} does not match "
                f"(re-export with --batch-size {batch_size} or use static-shape{{batch={batch_size}}})"
            )
        batch = static_batch or batch_size or 1
        if hw is None and spec.preprocess == "full" and batch > 1 and static_batch is None:
            log.info("dynamic spatial input with whole images: running one image at a time")
            batch = 1
        pred_dir = None
        if predictions is not None:
            pred_dir = PredictionDir(predictions, outputs[0])
            pred_dir.check_complete(ds.names())
            batch = 1
            notes.append(f"outputs read from {predictions} ({pred_dir.convention} naming <image>_{pred_dir.index}.bin)")
        elif len(ds) % batch:
            notes.append(f"last batch padded from {len(ds) % batch} to {batch} images; the padded results are dropped")

        ref_inp, ref_batch, ref_out = None, None, ""
        if ref is not None:
            r_inputs, r_outputs = ref.infos()
            ref_inp = _image_input(r_inputs, ref.label)
            ref_out = r_outputs[0].name
            ref_batch = ref_inp.shape[0] if isinstance(ref_inp.shape[0], int) and ref_inp.shape[0] > 0 else None
        metric = make_metric(spec.metric, spec.num_classes, spec.ignore_index)
        agree = Agreement(2 if spec.task == "binary-segmentation" else spec.num_classes) if ref is not None else None
        total = len(ds)
        done = 0
        whole_images = hw is None and spec.preprocess == "full"  # dynamic H, W: each image at its own size
        for chunk in _batched(iter(ds), batch):
            prepared = [
                prepare(spec.preprocess, s, s.image.shape[:2] if whole_images else canvas, spec.mean, spec.std,
                        spec.resize_short, spec.ignore_index)
                for s in chunk
            ]
            if pred_dir is not None:
                first = split_batch(pred_dir.read(prepared[0].name), 1)
            else:
                first = _run(cand.runner, inp, outputs[0].name, prepared, batch)
            ref_first = None
            if ref is not None:
                ref_first = _run(ref.runner, ref_inp, ref_out, prepared, ref_batch or len(prepared))
            for i, p in enumerate(prepared):
                target_shape = p.target.shape if isinstance(p.target, np.ndarray) else None
                pred = prediction_for(first[i], p.geometry, spec.task, spec.num_classes, target_shape, spec.threshold)
                metric.update(pred, p.target)
                if agree is not None:
                    rpred = prediction_for(ref_first[i], p.geometry, spec.task, spec.num_classes, target_shape, spec.threshold)
                    if spec.task == "classification":
                        agree.update_logits(pred, rpred)
                    else:
                        agree.update_labels(pred, rpred)
                    agree.update_raw(np.asarray(first[i]), np.asarray(ref_first[i]))
            done += len(chunk)
            if progress is not None:
                progress(done, total)

        total_s = time.perf_counter() - t_start
        inference_s = cand.runner.total_inference_s if cand.runner is not None else 0.0
        reference_s = ref.runner.total_inference_s if ref is not None and ref.runner is not None else 0.0
        if done == 0:
            raise EvaluationError(f"{dataset}: no samples to evaluate")
        return EvalResult(
            metrics=metric.result(),
            metric=spec.metric,
            dataset=dataset,
            preset=preset_name,
            backend=backend if pred_dir is None else f"predictions ({pred_dir.convention})",
            images=done,
            batch_size=batch,
            total_s=total_s,
            inference_s=inference_s,
            setup_s=setup_s,
            reference_s=reference_s,
            model=cand.label,
            per_class_iou=metric.per_class(),
            agreement=agree.result() if agree is not None else None,
            predictions=str(predictions) if predictions is not None else None,
            notes=notes,
        )


def _synthetic_spec(dataset: str, data_root, inp: TensorInfo, outputs: list[TensorInfo], hw, num_classes: int | None,
                    label: str) -> EvalSpec:
    classes = num_classes
    out = outputs[0] if outputs else None
    if classes is None and out is not None and out.dtype.kind == "f" and len(out.shape) == 4 and isinstance(out.shape[1], int):
        classes = out.shape[1] if out.shape[1] > 1 else None
    if classes is None and data_root is not None:
        from onnxforge.evaluate.synthetic import read_meta

        classes = int(read_meta(data_root)["classes"])
    if classes is None:
        raise EvaluationError(
            f"{label}: cannot tell the number of classes from output {out.name if out else '?'} {list(out.shape) if out else ''}; "
            "pass num_classes (a label-map output does not carry it)"
        )
    if hw is None:
        if data_root is None:
            raise EvaluationError(f"{label}: input '{inp.name}' has dynamic height/width; in-memory synthetic data needs a static size")
        from onnxforge.evaluate.synthetic import read_meta

        hw = tuple(read_meta(data_root)["size"])
    return generic_spec(dataset, classes, tuple(hw))
