"""Scores a model on a dataset in two steps: plan what to run, then score a source of predictions.

**Planning** (`plan_evaluation`) decides everything that does not depend on *which* model variant is
scored: the dataset (opened and its layout checked first, so a wrong folder fails before any model is
loaded or compiled), the evaluation spec (a preset: ``onnxforge.frontends.get_spec(name).eval`` or an
EvalSpec; without one, a dataset that generates its data, ``synthetic``, is scored generically with the
task read from the model's output), the preprocessing canvas, and the checks against the model's I/O.
Every error names the model (its file, or the `label` given).

**Scoring** (`score`) streams the planned dataset through a `PredictionSource` — a backend runner
(`ModelRunner`) or a folder of outputs written on an NPU host (`PredictionFolder`) — in batches of the
model's batch size (a static batch is honoured: the last batch is padded with copies of its last image
and the padded results are dropped), postprocesses, and accumulates the metric and, with a reference
source, agreement. Memory does not grow with the dataset. One plan can score many models (the stages
of a report): each source is checked against the plan before it runs.

`evaluate(...)` is the two steps composed, for one model.

Synthetic data serves every task: multi-class segmentation (mIoU against the generated label maps),
binary segmentation (objects vs background, binary IoU) and classification (the class covering the most
object pixels, top-1/top-5; with a reference, top-1 agreement). With a preset, synthetic images are
preprocessed as the preset says (at the model's own input size). `EvalResult` reports the classes the
dataset has next to the model's, so a caller can tell a baseline that cannot be meaningful.

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
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, Tuple, Union

import numpy as np
import onnx

from onnxforge.backends import Backend, backend_class, backend_names, parse_backend
from onnxforge.backends.base import TensorInfo, model_inputs, model_outputs
from onnxforge.errors import EvaluationError
from onnxforge.evaluate.agreement import Agreement
from onnxforge.evaluate.catalog import dataset_class, open_dataset
from onnxforge.evaluate.datasets import Dataset
from onnxforge.evaluate.metrics import make_metric
from onnxforge.evaluate.postprocess import prediction_for, split_batch
from onnxforge.evaluate.predictions import PredictionDir
from onnxforge.evaluate.preprocess import IMAGENET_MEAN, IMAGENET_STD, Prepared, prepare
from onnxforge.frontends.base import EvalSpec

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
#: a model's (inputs, outputs), where no ONNX graph is at hand (a compiled artifact's runner)
ModelIO = Tuple[Sequence[TensorInfo], Sequence[TensorInfo]]
ModelLike = Union[str, Path, onnx.ModelProto]

#: the generator's class-count limit (class indices are stored in uint8, 255 = void)
_MAX_GENERATED_CLASSES = 255


@dataclass
class PerImage:
    """Each image's contribution to the metric, in dataset order, so that a bootstrap can resample images.

    `kind` says what `values` holds:
    - ``confusion`` (segmentation metrics): (N, C, C) int64, rows = target class, columns = predicted
      class, over pixels whose target and prediction are both in 0..C-1;
    - ``hits`` (``topk``): (N, len(keys)) bool, whether the label is within the top-k, k per `keys`;
    - ``score`` (``binary-iou``): (N,) float, each image's IoU (the metric is their mean).
    `agreement`, with a reference: (N,) per-image pixel agreement (segmentation) or top-1 equality
    (classification, as 0/1). `metrics_of(indices)` recomputes the metric on any selection of images
    (a bootstrap resample, repeats allowed) with the upstream's formula.
    """

    names: list[str]
    kind: str
    values: np.ndarray
    keys: tuple[str, ...] = ()
    agreement: np.ndarray | None = None
    metric: Any = field(default=None, repr=False)  # the Metric that kept them (not serialised)

    def metrics_of(self, indices: Sequence[int]) -> dict[str, float | None]:
        """The metric's result on the images at `indices` (positions in `names`)."""
        return self.metric.result_from(self.values[np.asarray(indices, dtype=np.int64)])


@dataclass
class EvalResult:
    """What `evaluate` measured. Metric values are fractions in [0, 1] (None where undefined).

    `dataset_classes` is how many classes the dataset's labels use (1 for binary segmentation, as
    DSB2018), `model_classes` how many the model predicts (None where its output does not say, e.g. a
    label map); a classifier scored on synthetic labels of fewer classes than it predicts, or a model
    never trained on the data, is at chance level: compare against a reference instead.
    """

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
    task: str | None = None
    dataset_classes: int | None = None
    model_classes: int | None = None
    per_image: PerImage | None = None
    #: the metric and agreement accumulators (`Metric`, `Agreement` or None), for `merge_results`; not serialised
    state: tuple[Any, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def overhead_s(self) -> float:
        """Wall time not spent in the backend (reading, pre/postprocessing, metrics)."""
        return max(self.total_s - self.setup_s - self.inference_s - self.reference_s, 0.0)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (`evaluate --json`); per-image contributions are left out."""
        from onnxforge import __version__

        return {
            "metrics": dict(self.metrics),
            "metric": self.metric,
            "task": self.task,
            "dataset": self.dataset,
            "dataset_classes": self.dataset_classes,
            "model_classes": self.model_classes,
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


# ------------------------------------------------------------------------------------------- specs
#: task -> (metric, output layout, what the generic spec scores)
_GENERIC = {
    "segmentation": ("miou-mmseg", "logits-nchw", "generic segmentation: whole image, ImageNet mean/std, mIoU ignoring 255 (nanmean over classes)"),
    "binary-segmentation": ("binary-iou", "logits-nchw", "generic binary segmentation: whole image, ImageNet mean/std, logit > 0, IoU per image averaged"),
    "classification": ("topk", "logits-nc", "generic classification: whole image, ImageNet mean/std, top-1/top-5"),
}


def generic_spec(dataset: str, num_classes: int, input_size: tuple[int, int], task: str = "segmentation") -> EvalSpec:
    """The preset-less spec of `task` (used for the synthetic dataset): whole images, ImageNet mean/std."""
    metric, layout, notes = _GENERIC[task]
    return EvalSpec(
        task=task, num_classes=num_classes, dataset=dataset, input_size=tuple(input_size), preprocess="full",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, metric=metric, ignore_index=255 if task == "segmentation" else None,
        output_layout=layout, notes=notes,
    )


def resolve_preset(preset: str | EvalSpec | None) -> tuple[EvalSpec | None, str | None]:
    """(EvalSpec, name) of a preset name, an EvalSpec, or None."""
    if preset is None:
        return None, None
    if isinstance(preset, EvalSpec):
        return preset, "custom"
    from onnxforge.frontends import get_spec

    return get_spec(preset).eval, preset


def _image_input(inputs: Sequence[TensorInfo], label: str) -> TensorInfo:
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


def _static_batch(inp: TensorInfo) -> int | None:
    return inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None


def _check_output(spec: EvalSpec, preset: str | None, outputs: Sequence[TensorInfo], label: str) -> None:
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


def _check_input_size(spec: EvalSpec, preset: str | None, inp: TensorInfo, label: str) -> None:
    hw = _spatial(inp)
    if hw is not None and tuple(hw) != tuple(spec.input_size):
        raise EvaluationError(
            f"{label}: input '{inp.name}' is {hw[0]}x{hw[1]} (HxW) but preset {preset} evaluates at "
            f"{spec.input_size[0]}x{spec.input_size[1]}; export the model at that size"
        )


def model_classes(outputs: Sequence[TensorInfo]) -> int | None:
    """The class count the first output states: C of float (N, C[, 1, 1]) or (N, C, H, W) logits (1: a binary head).

    None for integer label maps, whose class count the output does not carry.
    """
    if not outputs:
        return None
    out = outputs[0]
    if out.dtype.kind != "f" or len(out.shape) < 2 or not isinstance(out.shape[1], int):
        return None
    if len(out.shape) == 2 or (len(out.shape) == 4 and tuple(out.shape[2:]) == (1, 1)):
        return int(out.shape[1])
    if len(out.shape) == 4:
        return int(out.shape[1])
    return None


def infer_task(outputs: Sequence[TensorInfo], num_classes: int | None, label: str) -> tuple[str, int | None]:
    """(task, classes) read from the first output, for scoring without a preset.

    Float (N, C) or (N, C, 1, 1): classification with C classes; float (N, 1, H, W): binary segmentation
    (unless `num_classes` > 1 says it is a label map stored as floats); float (N, C, H, W): segmentation
    with C classes; integer (N, 1, H, W) or (N, H, W): a label map, whose class count only `num_classes`
    (or the dataset) can give.
    """
    if not outputs:
        raise EvaluationError(f"{label}: the model has no outputs")
    out = outputs[0]
    shape = list(out.shape)
    c = shape[1] if len(shape) >= 2 and isinstance(shape[1], int) else None
    if out.dtype.kind == "f" and (len(shape) == 2 or (len(shape) == 4 and shape[2:] == [1, 1])):
        if c is None:
            raise EvaluationError(f"{label}: output '{out.name}' {shape} has a dynamic class axis; pass --num-classes N")
        return "classification", c
    if out.dtype.kind == "f" and len(shape) == 4:
        if c == 1:
            return ("segmentation", num_classes) if num_classes and num_classes > 1 else ("binary-segmentation", 1)
        return "segmentation", num_classes or c
    if out.dtype.kind in "iu" and len(shape) in (3, 4):
        return "segmentation", num_classes
    raise EvaluationError(
        f"{label}: cannot score output '{out.name}' {shape} ({out.dtype.name}) without a preset: expected "
        "(N, C) class logits, (N, 1, H, W) binary logits, (N, C, H, W) class logits or an integer label map"
    )


def _artifact_owners(path: Path) -> list[str]:
    """The backends whose compiled artifacts end like `path` (none for .onnx files)."""
    if path.suffix in ("", ".onnx"):
        return []
    return [n for n in backend_names() if backend_class(n).artifact_suffix == path.suffix]


def _label_of(model: Any, label: str | None) -> str:
    if label:
        return label
    if isinstance(model, onnx.ModelProto):
        return model.graph.name or "model"
    if isinstance(model, (str, Path)):
        return str(model)
    return "model"


def _io_of(model: ModelLike | ModelIO | Callable[[], ModelIO], label: str) -> tuple[list[TensorInfo], list[TensorInfo]]:
    if callable(model):
        model = model()
    if isinstance(model, tuple):
        return list(model[0]), list(model[1])
    if isinstance(model, onnx.ModelProto):
        return model_inputs(model), model_outputs(model)
    if _artifact_owners(Path(model)):
        raise EvaluationError(f"{label}: a compiled {Path(model).suffix} has no graph to plan from: give the ONNX model, "
                              "or the runner's (inputs, outputs)")
    from onnxforge.modelio import load_model

    proto = load_model(model)
    return model_inputs(proto), model_outputs(proto)


# -------------------------------------------------------------------------------------------- plan
@dataclass
class EvalPlan:
    """What to run: the dataset, the spec, the preprocessing canvas and the model I/O it was planned for.

    Build it with `plan_evaluation`; score any number of models against it with `score` (each is
    checked with `check` first). `dataset_classes` and `model_classes` are what `EvalResult` reports.
    """

    spec: EvalSpec
    preset: str | None
    dataset_name: str
    dataset: Dataset
    canvas: tuple[int, int]
    whole_images: bool  # dynamic H, W with the ``full`` policy: each image at its own size
    batch_size: int | None  # requested; None: the model's static batch, else 1
    model_classes: int | None
    label: str
    generic: bool  # scored without a preset
    notes: list[str] = field(default_factory=list)

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def dataset_classes(self) -> int | None:
        return self.dataset.num_classes

    def check(self, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], label: str) -> TensorInfo:
        """The image input of a model to score against this plan; EvaluationError naming `label` if it does not fit."""
        inp = _image_input(inputs, label)
        hw = _spatial(inp)
        if hw is not None and not self.whole_images and tuple(hw) != tuple(self.canvas):
            raise EvaluationError(
                f"{label}: input '{inp.name}' is {hw[0]}x{hw[1]} (HxW) but this evaluation was planned at "
                f"{self.canvas[0]}x{self.canvas[1]}"
            )
        _check_output(self.spec, self.preset if not self.generic else "generic", outputs, label)
        return inp

    def batch_for(self, inp: TensorInfo, label: str) -> int:
        """Images per run for a model with image input `inp`."""
        static = _static_batch(inp)
        if static is not None and self.batch_size is not None and self.batch_size != static:
            raise EvaluationError(
                f"{label}: the model's batch is fixed at {static}; --batch-size {self.batch_size} does not match "
                f"(re-export with --batch-size {self.batch_size} or use static-shape{{batch={self.batch_size}}})"
            )
        batch = static or self.batch_size or 1
        if self.whole_images and batch > 1 and static is None:
            log.info("dynamic spatial input with whole images: running one image at a time")
            batch = 1
        return batch


def plan_evaluation(
    model: ModelLike | ModelIO | Callable[[], ModelIO],
    dataset: str,
    data_root: str | Path | None,
    preset: str | EvalSpec | None = None,
    *,
    limit: int | None = None,
    batch_size: int | None = None,
    num_classes: int | None = None,
    synthetic_seed: int | None = None,
    label: str | None = None,
) -> EvalPlan:
    """Plans an evaluation of `model` (an ONNX file, a ModelProto, or its (inputs, outputs)) on `dataset`.

    Args:
        model: what the plan checks against: its single NCHW float image input and first output; also
            a callable returning (inputs, outputs), called once the dataset layout is checked.
        dataset: a registered dataset name (`onnxforge.evaluate.catalog.dataset_names()`).
        data_root: the dataset folder (None for synthetic: generated in memory at the model's size).
        preset: a frontend name or an EvalSpec; required except for a dataset that generates its data.
        limit: the first `limit` samples only.
        batch_size: images per run; must equal a static batch.
        num_classes: the class count where the model's output does not carry it (a label map).
        synthetic_seed: seed of in-memory synthetic data (default scenes.EVAL_SEED).
        label: how errors and results name the model (default: its path, or the graph name).

    Raises:
        DatasetError: unknown dataset or wrong layout (checked before the model is loaded).
        EvaluationError: the model does not fit the preset or the data.
    """
    label = _label_of(model, label)
    cls = dataset_class(dataset)
    generated = getattr(cls, "generated", False)
    if preset is None and not generated:
        from onnxforge.frontends import known_names

        raise EvaluationError(f"dataset {dataset} needs --preset MODEL (one of {known_names()})")
    # the layout is checked first: a wrong folder should fail before a model is loaded or compiled
    ds: Dataset | None = None
    if not generated or data_root is not None:
        ds = open_dataset(dataset, data_root, limit=limit)
    spec, preset_name = resolve_preset(preset)
    if spec is not None and dataset != spec.dataset and not generated:
        raise EvaluationError(f"preset {preset_name} evaluates on {spec.dataset}, not {dataset}: use --dataset {spec.dataset}")

    inputs, outputs = _io_of(model, label)
    inp = _image_input(inputs, label)
    hw = _spatial(inp)
    classes_out = model_classes(outputs)
    notes: list[str] = []
    if spec is None:
        spec = _generic_spec_for(dataset, ds, inp, outputs, hw, num_classes, label)
    else:
        if not generated:
            _check_input_size(spec, preset_name, inp, label)
        _check_output(spec, preset_name, outputs, label)
    canvas = tuple(hw or spec.input_size)
    whole_images = hw is None and spec.preprocess == "full"

    if generated:
        ds = _generated_dataset(dataset, data_root, ds, spec, canvas, limit, synthetic_seed, label, notes)
    assert ds is not None
    return EvalPlan(spec=spec, preset=preset_name, dataset_name=dataset, dataset=ds, canvas=canvas,
                    whole_images=whole_images, batch_size=batch_size, model_classes=classes_out, label=label,
                    generic=preset_name is None, notes=notes)


def _generic_spec_for(dataset: str, ds: Dataset | None, inp: TensorInfo, outputs: Sequence[TensorInfo], hw,
                      num_classes: int | None, label: str) -> EvalSpec:
    task, classes = infer_task(outputs, num_classes, label)
    if classes is None and ds is not None and task == "segmentation":
        classes = ds.num_classes  # a label-map output scored on a written synthetic set: its synthetic.json
    if classes is None:
        out = outputs[0]
        raise EvaluationError(
            f"{label}: cannot tell the number of classes from output '{out.name}' {list(out.shape)} "
            "(a label map does not carry it): pass --num-classes N"
        )
    if hw is None:
        meta = getattr(ds, "meta", None)
        if meta is None:
            raise EvaluationError(f"{label}: input '{inp.name}' has dynamic height/width; in-memory synthetic data needs a static size")
        hw = tuple(meta["size"])
    return generic_spec(dataset, classes, tuple(hw), task)


def _generated_dataset(dataset: str, data_root, ds: Dataset | None, spec: EvalSpec, canvas: tuple[int, int],
                       limit: int | None, seed: int | None, label: str, notes: list[str]) -> Dataset:
    """The synthetic set for `spec`'s task: generated in memory at `canvas`, or the written one relabelled."""
    ignore = (255 if spec.ignore_index is None else spec.ignore_index) if spec.task == "segmentation" else None
    if ds is not None:  # written by write_synthetic: its labels, in the task's form
        ds = open_dataset(dataset, data_root, limit=limit, task=spec.task, ignore_index=ignore)
        written = getattr(ds, "classes", ds.num_classes)
        if spec.task == "segmentation" and written != spec.num_classes:
            raise EvaluationError(
                f"{label}: the model predicts {spec.num_classes} classes but the synthetic set at {data_root} has {written}"
            )
        if spec.task == "classification" and written > spec.num_classes:
            raise EvaluationError(
                f"{label}: the model predicts {spec.num_classes} classes but the synthetic set at {data_root} labels {written}"
            )
        return ds
    if spec.task == "segmentation":
        classes = spec.num_classes
    elif spec.task == "classification":
        classes = min(spec.num_classes, _MAX_GENERATED_CLASSES)
    else:
        from onnxforge.scenes import DEFAULT_CLASSES

        classes = DEFAULT_CLASSES
    if classes < 2 or classes > _MAX_GENERATED_CLASSES:
        raise EvaluationError(f"{label}: synthetic data has 2..255 classes; the model predicts {spec.num_classes}")
    ds = open_dataset(dataset, None, limit=limit, size=canvas, classes=classes, seed=seed, task=spec.task,
                      ignore_index=ignore)
    what = {"segmentation": f"{classes} classes", "binary-segmentation": "objects vs background",
            "classification": f"label: the class covering most pixels, of {classes}"}[spec.task]
    notes.append(f"synthetic data generated in memory: {len(ds)} images {canvas[0]}x{canvas[1]}, {what}, seed {ds.seed}")
    if spec.task == "classification" and classes < spec.num_classes:
        notes.append(f"the synthetic labels use {classes} of the model's {spec.num_classes} classes: a model not trained "
                     "on these scenes scores at chance level; compare with a reference model (--reference)")
    return ds


# ------------------------------------------------------------------------------------------ sources
class PredictionSource(ABC):
    """Where a model's first output per image comes from: a backend runner or a folder of outputs."""

    label: str = "model"
    setup_s: float = 0.0

    @property
    @abstractmethod
    def backend_label(self) -> str:
        """How the result names the source (``onnxruntime``, ``predictions (ais_bench)``)."""

    @property
    def inference_s(self) -> float:
        """Backend time spent so far (0 for a folder)."""
        return 0.0

    @abstractmethod
    def io(self) -> tuple[list[TensorInfo], list[TensorInfo]]:
        """The model's inputs and outputs."""

    def batch_for(self, plan: EvalPlan, inp: TensorInfo) -> int:
        return plan.batch_for(inp, self.label)

    def prepare_for(self, plan: EvalPlan) -> list[str]:
        """Checks this source can serve `plan` before anything runs; returns notes for the result."""
        return []

    @abstractmethod
    def predict(self, prepared: list[Prepared], inp: TensorInfo, output: str, batch: int) -> list[np.ndarray]:
        """The first output of each prepared sample, in order."""


def _refuse_foreign_artifact(path: Path, backend: Backend, label: str) -> None:
    """EvaluationError when `path` is another backend's compiled artifact (an .om given to onnxruntime)."""
    owners = _artifact_owners(path)
    if owners:
        raise EvaluationError(f"{label}: an {path.suffix} model is compiled for {' / '.join(owners)}, not {backend.name}: "
                              f"use --backend {owners[0]}")


def _stack(prepared: list[Prepared], batch: int, dtype: np.dtype) -> np.ndarray:
    arrays = [p.input for p in prepared]
    arrays += [arrays[-1]] * (batch - len(arrays))
    return np.stack(arrays).astype(dtype, copy=False)


class ModelRunner(PredictionSource, contextlib.AbstractContextManager):
    """A model compiled and run on a backend. A context manager: the runner exists inside `with` only.

    `model` is an ONNX file, a ModelProto, or a compiled artifact of the backend (a path ending in its
    `artifact_suffix`, e.g. an .om for ais_bench). `backend` is a spec (``onnxruntime{threads=2}``) or
    a Backend; `backend_options` fill options the spec leaves at their default. `setup_s` is the
    compile and session time.
    """

    def __init__(self, model: ModelLike, backend: str | Backend = "onnxruntime", backend_options: dict | None = None, *,
                 label: str | None = None) -> None:
        self.label = _label_of(model, label)
        self.backend = parse_backend(backend, backend_options or None)
        self.is_artifact = self.backend.is_artifact(model)
        if not self.is_artifact and not isinstance(model, onnx.ModelProto):
            _refuse_foreign_artifact(Path(model), self.backend, self.label)
        if self.is_artifact:
            self.proto = None
        elif isinstance(model, onnx.ModelProto):
            self.proto = model
        else:
            from onnxforge.modelio import load_model

            self.proto = load_model(model)
        self.source = model
        self.runner = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> ModelRunner:
        t0 = time.perf_counter()
        try:
            if self.is_artifact:
                artifact = self.backend.compile(self.source, None)
            elif self.backend.artifact_suffix is not None:  # compiled to a file: in a folder that lives as long as the runner
                workdir = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="onnxforge-eval-")))
                artifact = self.backend.compile(self.proto, self.backend.artifact_path(workdir, "model"))
            else:
                artifact = self.backend.compile(self.proto, None)
            self.runner = self._stack.enter_context(self.backend.runner(artifact))
        except BaseException:
            self._stack.close()
            raise
        self.setup_s = time.perf_counter() - t0
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @property
    def backend_label(self) -> str:
        return str(self.backend)

    @property
    def inference_s(self) -> float:
        return self.runner.total_inference_s if self.runner is not None else 0.0

    def io(self) -> tuple[list[TensorInfo], list[TensorInfo]]:
        if self.proto is not None:
            return model_inputs(self.proto), model_outputs(self.proto)
        if self.runner is None:
            raise EvaluationError(f"{self.label}: a compiled model's inputs are known once it is opened (use `with`)")
        return self.runner.inputs(), self.runner.outputs()

    def predict(self, prepared: list[Prepared], inp: TensorInfo, output: str, batch: int) -> list[np.ndarray]:
        if self.runner is None:
            raise EvaluationError(f"{self.label}: open the runner first (`with ModelRunner(...) as source`)")
        results: list[np.ndarray] = []
        for start in range(0, len(prepared), batch):
            group = prepared[start:start + batch]
            out = self.runner.infer({inp.name: _stack(group, batch, inp.dtype)}, [output])[0]
            results.extend(split_batch(out, batch)[: len(group)])
        return results


class PredictionFolder(PredictionSource):
    """Outputs written by ais_bench/benchmark on an NPU host (see `predictions.py`); the model is not run.

    `model` is the ONNX model (file or ModelProto) or its (inputs, outputs): its first output's shape
    and dtype say how to read the files.
    """

    def __init__(self, directory: str | Path, model: ModelLike | ModelIO, *, label: str | None = None) -> None:
        self.label = _label_of(model, label)
        if not isinstance(model, (tuple, onnx.ModelProto)) and not callable(model) and _artifact_owners(Path(model)):
            raise EvaluationError(f"--predictions needs the ONNX model (for its output shape and dtype), not the {Path(model).suffix}")
        self.directory = directory
        self._io = _io_of(model, self.label)
        if not self._io[1]:
            raise EvaluationError(f"{self.label}: the model has no outputs")
        self.dir = PredictionDir(directory, self._io[1][0])

    @property
    def backend_label(self) -> str:
        return f"predictions ({self.dir.convention})"

    def io(self) -> tuple[list[TensorInfo], list[TensorInfo]]:
        return self._io

    def batch_for(self, plan: EvalPlan, inp: TensorInfo) -> int:
        return 1

    def prepare_for(self, plan: EvalPlan) -> list[str]:
        self.dir.check_complete(plan.dataset.names())
        return [f"outputs read from {self.directory} ({self.dir.convention} naming <image>_{self.dir.index}.bin)"]

    def predict(self, prepared: list[Prepared], inp: TensorInfo, output: str, batch: int) -> list[np.ndarray]:
        return [split_batch(self.dir.read(p.name), 1)[0] for p in prepared]


# ------------------------------------------------------------------------------------------- score
def _batched(it: Iterator, n: int) -> Iterator[list]:
    while True:
        chunk = list(itertools.islice(it, n))
        if not chunk:
            return
        yield chunk


def score(plan: EvalPlan, source: PredictionSource, *, reference: PredictionSource | None = None,
          progress: Progress | None = None, per_image: bool = False) -> EvalResult:
    """Scores `source` on `plan`'s dataset with its spec's metric (and agreement with `reference`).

    Sources must be open (a `ModelRunner` inside its `with`). `total_s` covers this call plus the
    sources' setup; `per_image` keeps each image's contribution (`EvalResult.per_image`).

    Raises:
        EvaluationError: the source does not fit the plan, or its outputs cannot be read.
    """
    t_start = time.perf_counter()
    spec, ds = plan.spec, plan.dataset
    inputs, outputs = source.io()
    inp = plan.check(inputs, outputs, source.label)
    batch = source.batch_for(plan, inp)
    notes = list(plan.notes) + source.prepare_for(plan)
    if not isinstance(source, PredictionFolder) and len(ds) % batch:
        notes.append(f"last batch padded from {len(ds) % batch} to {batch} images; the padded results are dropped")

    ref_inp, ref_batch, ref_out = None, 1, ""
    if reference is not None:
        r_inputs, r_outputs = reference.io()
        ref_inp = _image_input(r_inputs, reference.label)
        ref_out = r_outputs[0].name
        ref_batch = _static_batch(ref_inp)
    metric = make_metric(spec.metric, spec.num_classes, spec.ignore_index)
    if per_image:
        metric.keep_per_image()
    agree = Agreement(2 if spec.task == "binary-segmentation" else spec.num_classes) if reference is not None else None
    names: list[str] = []
    image_agreement: list[float] = []
    total = len(ds)
    done = 0
    for chunk in _batched(iter(ds), batch):
        prepared = [
            prepare(spec.preprocess, s, s.image.shape[:2] if plan.whole_images else plan.canvas, spec.mean, spec.std,
                    spec.resize_short, spec.ignore_index)
            for s in chunk
        ]
        first = source.predict(prepared, inp, outputs[0].name, batch)
        ref_first = None
        if reference is not None:
            ref_first = reference.predict(prepared, ref_inp, ref_out, ref_batch or len(prepared))
        for i, p in enumerate(prepared):
            target_shape = p.target.shape if isinstance(p.target, np.ndarray) else None
            pred = prediction_for(first[i], p.geometry, spec.task, spec.num_classes, target_shape, spec.threshold)
            metric.update(pred, p.target)
            if per_image:
                names.append(p.name)
            if agree is not None:
                rpred = prediction_for(ref_first[i], p.geometry, spec.task, spec.num_classes, target_shape, spec.threshold)
                if spec.task == "classification":
                    agree.update_logits(pred, rpred)
                    image_agreement.append(float(np.argmax(pred) == np.argmax(rpred)))
                else:
                    agree.update_labels(pred, rpred)
                    image_agreement.append(float((pred == rpred).mean()) if pred.size else 1.0)
                agree.update_raw(np.asarray(first[i]), np.asarray(ref_first[i]))
        done += len(chunk)
        if progress is not None:
            progress(done, total)

    if done == 0:
        raise EvaluationError(f"{plan.dataset_name}: no samples to evaluate")
    setup_s = source.setup_s + (reference.setup_s if reference is not None else 0.0)
    kept = None
    if per_image:
        kept = PerImage(names=names, kind=metric.per_image_kind, values=metric.per_image(), keys=tuple(metric.keys),
                        agreement=np.asarray(image_agreement) if reference is not None else None, metric=metric)
    return EvalResult(
        metrics=metric.result(),
        metric=spec.metric,
        dataset=plan.dataset_name,
        preset=plan.preset,
        backend=source.backend_label,
        images=done,
        batch_size=batch,
        total_s=time.perf_counter() - t_start + setup_s,
        inference_s=source.inference_s,
        setup_s=setup_s,
        reference_s=reference.inference_s if reference is not None else 0.0,
        model=source.label,
        per_class_iou=metric.per_class(),
        agreement=agree.result() if agree is not None else None,
        predictions=str(source.directory) if isinstance(source, PredictionFolder) else None,
        notes=notes,
        task=spec.task,
        dataset_classes=plan.dataset_classes,
        model_classes=model_classes(outputs) if outputs else plan.model_classes,
        per_image=kept,
        state=(metric, agree),
    )


def merge_results(parts: Sequence[EvalResult], note: str | None = None) -> EvalResult:
    """One result from the results of contiguous shards of one evaluation, given in dataset order.

    The metric is recomputed from the merged accumulators (`Metric.merge`: segmentation from the summed
    per-class areas / confusion matrices, never a mean of the shards' mIoU), agreement likewise
    (`Agreement.merge`), per-image contributions are concatenated in order; times add up (`total_s` is the
    caller's to set to the wall time). Equal to the unsharded result in every metric.

    Raises:
        EvaluationError: no parts, or a part without its accumulators (`state`).
    """
    import copy

    if not parts:
        raise EvaluationError("merge_results: no shard results")
    if any(p.state is None for p in parts):
        raise EvaluationError("merge_results: a shard result has no accumulators (made by score)")
    first = parts[0]
    metric, agree = copy.deepcopy(first.state[0]), copy.deepcopy(first.state[1])
    for p in parts[1:]:
        metric.merge(p.state[0])
        if agree is not None:
            agree.merge(p.state[1])
    per_image = None
    if all(p.per_image is not None for p in parts):
        pis = [p.per_image for p in parts]
        per_image = PerImage(names=[n for pi in pis for n in pi.names], kind=pis[0].kind,
                             values=np.concatenate([np.asarray(pi.values) for pi in pis]) if pis[0].values is not None else None,
                             keys=pis[0].keys,
                             agreement=(np.concatenate([pi.agreement for pi in pis]) if pis[0].agreement is not None else None),
                             metric=metric)
    notes = list(dict.fromkeys(n for p in parts for n in p.notes))
    if note:
        notes.append(note)
    return replace(
        first, metrics=metric.result(), images=sum(p.images for p in parts), total_s=sum(p.total_s for p in parts),
        inference_s=sum(p.inference_s for p in parts), setup_s=sum(p.setup_s for p in parts),
        reference_s=sum(p.reference_s for p in parts), per_class_iou=metric.per_class(),
        agreement=agree.result() if agree is not None else None, notes=notes, per_image=per_image, state=(metric, agree),
    )


# ---------------------------------------------------------------------------------------- evaluate
def evaluate(
    model_path_or_proto: str | Path | onnx.ModelProto,
    dataset: str,
    data_root: str | Path | None,
    preset: str | EvalSpec | None = None,
    backend: str | Backend = "onnxruntime",
    limit: int | None = None,
    batch_size: int | None = None,
    progress: Progress | None = None,
    reference: str | Path | onnx.ModelProto | None = None,
    *,
    predictions: str | Path | None = None,
    backend_options: dict | None = None,
    num_classes: int | None = None,
    synthetic_seed: int | None = None,
    model_label: str | None = None,
    per_image: bool = False,
    shard: tuple[int, int] | None = None,
) -> EvalResult:
    """Evaluates a model on `dataset` (read from `data_root`): `plan_evaluation`, then `score`.

    Args:
        model_path_or_proto: an ONNX file or ModelProto, or the backend's compiled artifact (an .om with ais_bench).
        dataset: a registered dataset name (voc2012, imagenet, cityscapes, dsb2018, synthetic).
        data_root: the dataset folder (None for synthetic: generated in memory at the model's size).
        preset: a frontend name (`get_spec(name).eval`) or an EvalSpec; required except for synthetic.
        backend: a backend spec (``onnxruntime``, ``onnxruntime{threads=2}``, ``ais_bench{device_id=1}``) or a
            Backend; `backend_options` fill options the spec leaves at their default.
        limit: evaluate the first `limit` samples only.
        batch_size: images per run; must equal a static batch; default: the static batch, else 1.
        progress: called as progress(done, total) after each batch.
        reference: a baseline model run on the same inputs; adds agreement metrics.
        predictions: a folder of outputs written by ais_bench/benchmark; the model is not run.
        num_classes: class count where the model cannot tell it (label-map outputs on synthetic data).
        synthetic_seed: seed of in-memory synthetic data (default scenes.EVAL_SEED).
        model_label: how errors and the result name the model (default: its path, or the graph name).
        per_image: keep each image's metric contribution (`EvalResult.per_image`).
        shard: ``(start, stop)``: score images start..stop-1 of the planned dataset only (planned, checked and
            noted as the whole dataset; `merge_results` joins the shards).

    Raises:
        EvaluationError: the model does not fit the preset, or predictions are missing/wrong.
        DatasetError: the dataset layout is wrong (naming the file).
        BackendError / BackendUnavailable: the backend cannot compile or run the model.
    """
    t_start = time.perf_counter()
    options = dict(limit=limit, batch_size=batch_size, num_classes=num_classes, synthetic_seed=synthetic_seed,
                   label=model_label)
    be = parse_backend(backend, backend_options or None)
    is_artifact = be.is_artifact(model_path_or_proto)
    if not is_artifact and not isinstance(model_path_or_proto, onnx.ModelProto):
        _refuse_foreign_artifact(Path(model_path_or_proto), be, _label_of(model_path_or_proto, model_label))
    if predictions is not None and is_artifact:
        raise EvaluationError(f"--predictions needs the ONNX model (for its output shape and dtype), not the {be.artifact_suffix}")
    with contextlib.ExitStack() as stack:
        if is_artifact:  # no graph to plan from: the runner says what the model takes
            dataset_class(dataset)
            source: PredictionSource = stack.enter_context(
                ModelRunner(model_path_or_proto, be, label=model_label))
            plan = plan_evaluation(source.io(), dataset, data_root, preset, **{**options, "label": source.label})
        else:
            label = _label_of(model_path_or_proto, model_label)
            loaded: list[onnx.ModelProto] = []

            def load_io() -> ModelIO:  # loaded once, after the dataset layout is checked
                if isinstance(model_path_or_proto, onnx.ModelProto):
                    loaded.append(model_path_or_proto)
                else:
                    from onnxforge.modelio import load_model

                    loaded.append(load_model(model_path_or_proto))
                return model_inputs(loaded[0]), model_outputs(loaded[0])

            plan = plan_evaluation(load_io, dataset, data_root, preset, **{**options, "label": label})
            proto = loaded[0]
            if predictions is not None:
                source = PredictionFolder(predictions, proto, label=plan.label)
            else:
                source = stack.enter_context(ModelRunner(proto, be, label=plan.label))
        if shard is not None:
            plan = replace(plan, dataset=plan.dataset.shard(*shard))
        ref = stack.enter_context(ModelRunner(reference, be)) if reference is not None else None
        result = score(plan, source, reference=ref, progress=progress, per_image=per_image)
    return replace(result, total_s=time.perf_counter() - t_start)
