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

With image-size gears (``gears=``, a model with dynamic H and W and the ``full`` policy) each image runs
at the smallest gear holding it (`preprocess.prepare_gear`, padded or resized); the plan checks that the
gears hold every image (sizes read from the headers) before anything runs.

Synthetic data serves every task: multi-class segmentation (mIoU against the generated label maps),
binary segmentation (objects vs background, binary IoU) and classification (the class covering the most
object pixels, top-1/top-5; with a reference, top-1 agreement). With a preset, synthetic images are
preprocessed as the preset says (at the model's own input size). `EvalResult` reports the classes the
dataset has next to the model's, so a caller can tell a baseline that cannot be meaningful.

Results are fractions in [0, 1]. Timings separate the backend's own inference time from everything else
(`overhead_s`: reading, preprocessing, postprocessing, metrics), so the evaluator's cost is visible.
Progress is reported through ``progress(done, total)``; nothing is printed.

With an `EvalCache` (`evaluate(..., cache=)`; `cache_key`, `cached_result` and `store_result` for callers that
plan and score themselves, as bisect), a result is looked up under its content key (the model's hash, the
plan's data and preprocessing, the backend spec, the metric, the reference's hash, the version and code)
before anything runs, and stored after scoring; a reused result has
the metrics, agreement and per-image contributions of the stored one. Its timings are the stored ones only
with `cache_latency=True`; otherwise no timing is reused (``total_s`` is this call's, the rest 0) and a note
says the result came from the cache.
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
from onnxforge.errors import BackendError, EvaluationError
from onnxforge.evaluate.agreement import Agreement
from onnxforge.evaluate.cache import EvalCache, dataset_fingerprint, evaluation_key, files_fingerprint
from onnxforge.evaluate.history import model_sha256
from onnxforge.evaluate.catalog import dataset_class, open_dataset
from onnxforge.evaluate.datasets import Dataset
from onnxforge.evaluate.metrics import make_metric
from onnxforge.evaluate.postprocess import prediction_for, split_batch
from onnxforge.evaluate.predictions import PredictionDir
from onnxforge.evaluate.preprocess import GEAR_POLICIES, IMAGENET_MEAN, IMAGENET_STD, Prepared, prepare, prepare_gear, route_gear
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
    #: what the backend ran to compile the model (`Backend.compile_record`: atc's exact argv...), if anything
    compiled: dict[str, Any] | None = None
    #: a run split across devices (ais_bench ``devices``): per-device commands and throughputs, their sum
    devices: dict[str, Any] | None = None
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
            **({"compiled": self.compiled} if self.compiled else {}),
            **({"devices": self.devices} if self.devices else {}),
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
    gears: tuple[tuple[int, int], ...] = ()  # image-size gears (H, W): each image goes to the smallest holding it
    gear_policy: str = "pad"  # pad | resize (`preprocess.prepare_gear`)

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
        if self.gears and hw is not None:
            raise EvaluationError(f"{label}: input '{inp.name}' is static {hw[0]}x{hw[1]}; gears need a model with dynamic H and W")
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
    gears: Sequence[str | tuple[int, int]] = (),
    gear_policy: str = "pad",
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
        gears: image-size gears ("HxW" or (H, W)) of a model with dynamic H and W and the ``full``
            policy: each image runs at the smallest gear holding it (`preprocess.prepare_gear`).
        gear_policy: ``pad`` (bottom/right, prediction cropped back) or ``resize`` (to the gear and back).

    Raises:
        DatasetError: unknown dataset or wrong layout (checked before the model is loaded).
        EvaluationError: the model does not fit the preset or the data, or the gears do not cover the
            data or the model's export shape.
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
    gear_sizes = _plan_gears(gears, gear_policy, spec, preset_name, inp, ds, label, notes) if gears else ()
    return EvalPlan(spec=spec, preset=preset_name, dataset_name=dataset, dataset=ds, canvas=canvas,
                    whole_images=whole_images, batch_size=batch_size, model_classes=classes_out, label=label,
                    generic=preset_name is None, notes=notes, gears=gear_sizes, gear_policy=gear_policy)


def _plan_gears(gears: Sequence[str | tuple[int, int]], policy: str, spec: EvalSpec, preset: str | None, inp: TensorInfo,
                ds: Dataset, label: str, notes: list[str]) -> tuple[tuple[int, int], ...]:
    """The gears as (H, W), checked: the ``full`` policy, a dynamic H/W input, and every image held by one."""
    from onnxforge.backends.ascend import parse_image_size

    if policy not in GEAR_POLICIES:
        raise EvaluationError(f"--gear-policy: unknown policy '{policy}'; known: {', '.join(GEAR_POLICIES)}")
    try:
        sizes = tuple(g if isinstance(g, tuple) else parse_image_size(g) for g in gears)
    except BackendError as exc:
        raise EvaluationError(f"--gears: {exc}") from None
    shown = ",".join(f"{h}x{w}" for h, w in sizes)
    if len(set(sizes)) != len(sizes):
        raise EvaluationError(f"--gears: a gear is given twice ({shown})")
    if spec.preprocess != "full":
        raise EvaluationError(f"--gears: preset {preset}'s preprocessing ({spec.preprocess}) makes every image "
                              f"{spec.input_size[0]}x{spec.input_size[1]}: one gear suffices, gears apply to whole-image presets")
    hw = _spatial(inp)
    if hw is not None:
        if tuple(hw) not in sizes:
            raise EvaluationError(f"--gears: {label} was exported at {hw[0]}x{hw[1]}, which the gears {shown} do not include")
        raise EvaluationError(f"--gears: {label} has a static {hw[0]}x{hw[1]} input and runs only at that size; evaluate the "
                              "gears on the dynamic-H/W ONNX model (onnxruntime) before compiling it with --dynamic-image-sizes")
    counts = dict.fromkeys(sizes, 0)
    for name, size in ds.image_sizes():
        gear = route_gear(size, sizes)
        if gear is None:
            raise EvaluationError(f"--gears: image {name} is {size[0]}x{size[1]} (HxW), larger than every gear ({shown})")
        counts[gear] += 1
    notes.append(f"gears ({policy}): " + ", ".join(f"{h}x{w}: {n} images" for (h, w), n in counts.items()))
    return sizes


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
    #: what compiling the model ran (`Backend.compile_record`), for the result; None: nothing ran
    compiled: dict[str, Any] | None = None
    #: a run split across devices (see `EvalResult.devices`); None: not split
    devices: dict[str, Any] | None = None

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
            if not self.is_artifact:
                self.compiled = self.backend.compile_record()
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
        # consecutive inputs of one shape run together (images routed to different gears do not stack)
        for _, same in itertools.groupby(prepared, key=lambda p: p.input.shape):
            same = list(same)
            for start in range(0, len(same), batch):
                group = same[start:start + batch]
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
        notes = [f"outputs read from {self.directory} ({self.dir.convention} naming <image>_{self.dir.index}.bin)"]
        if self.dir.throughput is not None:
            n = len(self.dir.summaries)
            notes.append(f"ais_bench throughput {self.dir.throughput:.1f} images/s"
                         + (f" (the sum of {n} devices' summaries)" if n > 1 else " (its summary)"))
        return notes

    def predict(self, prepared: list[Prepared], inp: TensorInfo, output: str, batch: int) -> list[np.ndarray]:
        return [split_batch(self.dir.read(p.name), 1)[0] for p in prepared]


class RecordedOutputs(PredictionSource):
    """A model's first outputs, recorded while the model itself was scored, served again as a reference.

    `evaluate(..., record=rec)` fills it while scoring `model` (the baseline); `evaluate(..., reference=rec)`
    then compares a stage with those outputs instead of running the baseline again. It serves only a plan
    like the one it was recorded on (same data, canvas and spec) and only once complete; otherwise, or
    when the outputs would take more than `max_bytes` of memory (they are then dropped), `evaluate` runs
    `model` as the reference as usual. Either way the reference is the same model, so results are equal.
    """

    def __init__(self, model: onnx.ModelProto, max_bytes: int = 256 * 1024 ** 2, *, label: str = "baseline") -> None:
        self.model = model
        self.label = label
        self.max_bytes = max_bytes
        self.sha256 = model_sha256(model)
        self.outputs: dict[str, np.ndarray] = {}
        self.nbytes = 0
        self.overflow = False
        self.signature: tuple | None = None  # the plan recorded on, once complete

    @property
    def backend_label(self) -> str:
        return "recorded outputs"

    def io(self) -> tuple[list[TensorInfo], list[TensorInfo]]:
        return model_inputs(self.model), model_outputs(self.model)

    @staticmethod
    def _signature(plan: EvalPlan) -> tuple:
        return (plan.dataset_name, len(plan.dataset), tuple(plan.dataset.names()), tuple(plan.canvas), plan.whole_images,
                repr(plan.spec), plan.gears, plan.gear_policy)

    def serves(self, plan: EvalPlan) -> bool:
        """Whether every output `plan` needs was recorded (on a plan like it)."""
        return not self.overflow and self.signature is not None and self.signature == self._signature(plan)

    def _add(self, prepared: list[Prepared], outputs: list[np.ndarray]) -> None:
        if self.overflow:
            return
        for p, out in zip(prepared, outputs):
            kept = np.array(out, copy=True)
            self.nbytes += kept.nbytes
            if self.nbytes > self.max_bytes:
                log.info("the reference's outputs exceed %d bytes: it will run again for each comparison", self.max_bytes)
                self.outputs.clear()
                self.overflow = True
                return
            self.outputs[p.name] = kept

    def _start(self) -> None:
        self.outputs, self.nbytes, self.signature = {}, 0, None

    def _finish(self, plan: EvalPlan) -> None:
        if not self.overflow:
            self.signature = self._signature(plan)

    def predict(self, prepared: list[Prepared], inp: TensorInfo, output: str, batch: int) -> list[np.ndarray]:
        return [self.outputs[p.name] for p in prepared]


class _Recording(PredictionSource):
    """`inner` (an open ModelRunner) whose predictions are also added to a RecordedOutputs."""

    def __init__(self, inner: PredictionSource, store: RecordedOutputs) -> None:
        self.inner, self.store, self.label = inner, store, inner.label

    @property
    def backend_label(self) -> str:
        return self.inner.backend_label

    @property
    def setup_s(self) -> float:  # type: ignore[override]
        return self.inner.setup_s

    @property
    def compiled(self) -> dict | None:  # type: ignore[override]
        return self.inner.compiled

    @property
    def devices(self) -> dict | None:  # type: ignore[override]
        return self.inner.devices

    @property
    def inference_s(self) -> float:
        return self.inner.inference_s

    def io(self):
        return self.inner.io()

    def batch_for(self, plan: EvalPlan, inp: TensorInfo) -> int:
        return self.inner.batch_for(plan, inp)

    def prepare_for(self, plan: EvalPlan) -> list[str]:
        return self.inner.prepare_for(plan)

    def predict(self, prepared: list[Prepared], inp: TensorInfo, output: str, batch: int) -> list[np.ndarray]:
        out = self.inner.predict(prepared, inp, output, batch)
        self.store._add(prepared, out)
        return out


def score_recorded(plan: EvalPlan, source: PredictionSource, store: RecordedOutputs) -> EvalResult:
    """`score(plan, source)` with `source`'s outputs recorded into `store`, which then serves `plan` as a
    reference (`score(..., reference=store)`) without running the model again."""
    store._start()
    result = score(plan, _Recording(source, store))
    store._finish(plan)
    return result


class DeviceSplit(PredictionFolder):
    """The planned dataset run on several devices at once: each sample's preprocessed input is written as
    ``<image>.bin`` into the folder of the device that runs it (`Backend.split_work`), the model is compiled
    (atc), one process per device runs it (`Backend.run_split`: ais_bench, all at once), and the outputs are
    read back from ais_bench's layout exactly as ``--predictions`` reads them.

    `workdir` keeps ``model.om``, ``input/device<k>/`` and ``output/TS/...``; `devices` on the result holds
    every device's argv and throughput and their sum.
    """

    def __init__(self, proto: onnx.ModelProto, backend: Backend, plan: EvalPlan, workdir: Path, *,
                 label: str | None = None) -> None:
        self.label = _label_of(proto, label)
        self._io = model_inputs(proto), model_outputs(proto)
        inp = plan.check(*self._io, self.label)
        self.backend = backend
        workdir.mkdir(parents=True, exist_ok=True)
        by_name = {n: d for d, names in backend.split_work(plan.dataset.names()).items() for n in names}
        t0 = time.perf_counter()
        artifact = backend.compile(proto, backend.artifact_path(workdir, "model"))  # fails before any input is written
        self.compiled = backend.compile_record()
        folders = {d: workdir / "input" / f"device{d}" for d in backend.split_devices()}
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        for sample in plan.dataset:
            prepared = _prepare(plan, sample)
            arr = np.ascontiguousarray(prepared.input[None].astype(inp.dtype, copy=False))
            (folders[by_name[prepared.name]] / f"{prepared.name}.bin").write_bytes(arr.tobytes())
        run = backend.run_split(artifact, workdir / "output", folders)
        self.setup_s = time.perf_counter() - t0
        self.run = run
        self.devices = run.to_dict()
        self.directory = run.root
        self.dir = PredictionDir(run.root, self._io[1][0])

    @property
    def backend_label(self) -> str:
        return str(self.backend)

    @property
    def inference_s(self) -> float:
        return float(self.run.compute_s)

    def prepare_for(self, plan: EvalPlan) -> list[str]:
        notes = super().prepare_for(plan)
        per = ", ".join(f"device {r['device']}: {r['throughput']:.1f}" for r in self.devices["devices"])
        return notes + [f"split across devices {','.join(str(r['device']) for r in self.devices['devices'])} "
                        f"(one ais_bench process each; images/s {per})"]


def _split_workdir(backend: Backend, stack: contextlib.ExitStack) -> Path:
    """Where a devices run keeps its files: the backend's ``ais_bench_output`` option, else a temporary folder
    that lives as long as `stack`."""
    kept = getattr(backend.options, "ais_bench_output", None)
    if kept:
        return Path(kept)
    return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="onnxforge-devices-")))


def _load(path: str | Path) -> onnx.ModelProto:
    from onnxforge.modelio import load_model

    return load_model(path)


def _prepare(plan: EvalPlan, sample) -> Prepared:
    """One sample preprocessed as the plan's spec says (at its gear, the plan's canvas, or the image's own size)."""
    spec = plan.spec
    if plan.gears:
        return prepare_gear(sample, plan.gears, plan.gear_policy, spec.mean, spec.std)
    return prepare(spec.preprocess, sample, sample.image.shape[:2] if plan.whole_images else plan.canvas, spec.mean,
                   spec.std, spec.resize_short, spec.ignore_index)


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
        prepared = [_prepare(plan, s) for s in chunk]
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
        compiled=source.compiled,
        devices=source.devices,
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
    reference: str | Path | onnx.ModelProto | RecordedOutputs | None = None,
    *,
    predictions: str | Path | None = None,
    backend_options: dict | None = None,
    num_classes: int | None = None,
    synthetic_seed: int | None = None,
    model_label: str | None = None,
    per_image: bool = False,
    gears: Sequence[str | tuple[int, int]] = (),
    gear_policy: str = "pad",
    cache: EvalCache | None = None,
    cache_latency: bool = False,
    record: RecordedOutputs | None = None,
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
        reference: a baseline model run on the same inputs; adds agreement metrics. A `RecordedOutputs`
            (filled by an earlier `record=`) serves the baseline's outputs without running it again.
        predictions: a folder of outputs written by ais_bench/benchmark; the model is not run.
        num_classes: class count where the model cannot tell it (label-map outputs on synthetic data).
        synthetic_seed: seed of in-memory synthetic data (default scenes.EVAL_SEED).
        model_label: how errors and the result name the model (default: its path, or the graph name).
        per_image: keep each image's metric contribution (`EvalResult.per_image`).
        gears, gear_policy: image-size gears and how images reach them (see `plan_evaluation`).
        cache: reuse (and store) the result under its content key (`cache_key`); None: always evaluate.
        cache_latency: also store and reuse the timings (by default a reused result carries none).
        record: keep the model's first outputs in this `RecordedOutputs` (bounded), to serve as a reference later.
        shard: ``(start, stop)``: score images start..stop-1 of the planned dataset only (planned, checked and
            noted as the whole dataset; `merge_results` joins the shards).

    Raises:
        EvaluationError: the model does not fit the preset, or predictions are missing/wrong.
        DatasetError: the dataset layout is wrong (naming the file).
        BackendError / BackendUnavailable: the backend cannot compile or run the model.
    """
    t_start = time.perf_counter()
    if shard is not None:
        cache = None
    options = dict(limit=limit, batch_size=batch_size, num_classes=num_classes, synthetic_seed=synthetic_seed,
                   label=model_label, gears=tuple(gears), gear_policy=gear_policy)
    be = parse_backend(backend, backend_options or None)
    is_artifact = be.is_artifact(model_path_or_proto)
    if not is_artifact and not isinstance(model_path_or_proto, onnx.ModelProto):
        _refuse_foreign_artifact(Path(model_path_or_proto), be, _label_of(model_path_or_proto, model_label))
    if predictions is not None and is_artifact:
        raise EvaluationError(f"--predictions needs the ONNX model (for its output shape and dtype), not the {be.artifact_suffix}")
    if is_artifact and be.split_devices() and predictions is None:
        raise EvaluationError(f"{_label_of(model_path_or_proto, model_label)}: a run split across devices reads ais_bench's "
                              "files by the ONNX model's outputs: give the ONNX model (it is compiled first), not the "
                              f"{be.artifact_suffix}")
    with contextlib.ExitStack() as stack:
        if is_artifact:  # no graph to plan from: the runner says what the model takes
            dataset_class(dataset)
            source: PredictionSource = stack.enter_context(
                ModelRunner(model_path_or_proto, be, label=model_label))
            plan = plan_evaluation(source.io(), dataset, data_root, preset, **{**options, "label": source.label})
            model_sha = _file_sha256(Path(model_path_or_proto)) if cache is not None else ""
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
            model_sha = model_sha256(proto) if cache is not None else ""
            if predictions is not None:
                source = PredictionFolder(predictions, proto, label=plan.label)
            elif be.split_devices():
                source = None  # a devices run (below, unless the cache has the result)
            else:
                source = ModelRunner(proto, be, label=plan.label)  # opened below, unless the cache has the result
        ref: PredictionSource | None = None
        ref_proto: onnx.ModelProto | None = None
        recorders: list[tuple[PredictionSource, RecordedOutputs]] = []  # (source, what records it)
        if source is None and reference is not None and not be.is_artifact(getattr(reference, "model", reference)):
            # a devices run: the reference runs the same way, on the same split, so agreement compares like with like
            ref_proto = reference.model if isinstance(reference, RecordedOutputs) else (
                reference if isinstance(reference, onnx.ModelProto) else _load(reference))
        elif isinstance(reference, RecordedOutputs):
            if reference.serves(plan):
                ref = reference
            else:  # run it, and record it on the way for the next comparison
                ref = ModelRunner(reference.model, be, label=reference.label)
                if not reference.overflow:
                    recorders.append((ref, reference))
        elif reference is not None:
            ref = ModelRunner(reference, be)
        key = None
        if cache is not None:
            extra = {"per_image": per_image}
            if predictions is not None:
                extra["predictions"] = cache.memo(("files", str(predictions)), lambda: files_fingerprint(predictions))
            key = cache_key(cache, plan, data_root, model_sha, str(be) if predictions is None else "predictions",
                            model_sha256(ref_proto) if ref_proto is not None else _reference_sha(ref) if ref is not None else None,
                            extra)
            hit = cached_result(cache, key, plan, cache_latency)
            if hit is not None:
                took = hit.total_s if cache_latency and hit.total_s else time.perf_counter() - t_start
                return replace(hit, model=plan.label, total_s=took)
        if shard is not None:  # a shard of the planned dataset (never cached: the caller caches the merged result)
            plan = replace(plan, dataset=plan.dataset.shard(*shard))
        if source is None:
            source = DeviceSplit(proto, be, plan, _split_workdir(be, stack), label=plan.label)
            if ref_proto is not None:
                ref = DeviceSplit(ref_proto, be, plan, _split_workdir(be, stack) / "reference", label=_label_of(ref_proto, None))
        if isinstance(source, ModelRunner) and source.runner is None:
            stack.enter_context(source)
        if isinstance(ref, ModelRunner):
            stack.enter_context(ref)
        if record is not None and not record.overflow and isinstance(source, ModelRunner):
            recorders.append((source, record))
        wrapped = {id(src): _Recording(src, store) for src, store in recorders}
        for _, store in recorders:
            store._start()
        result = score(plan, wrapped.get(id(source), source), reference=wrapped.get(id(ref), ref) if ref is not None else None,
                       progress=progress, per_image=per_image)
        for _, store in recorders:
            store._finish(plan)
    result = replace(result, total_s=time.perf_counter() - t_start)
    if cache is not None:
        store_result(cache, key, result, cache_latency)
    return result


# ------------------------------------------------------------------------------------------- cache
def _file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _reference_sha(ref: PredictionSource) -> str:
    if isinstance(ref, RecordedOutputs):
        return ref.sha256
    return model_sha256(ref.proto) if ref.proto is not None else _file_sha256(Path(ref.source))


def plan_fingerprint(plan: EvalPlan, data_root: str | Path | None, *, files: str | None = None) -> str:
    """`cache.dataset_fingerprint` of what `plan` reads and how: the dataset and its files under `data_root`
    (None: generated in memory, keyed by its generator parameters), the samples it holds (the limit), the
    spec's preprocessing and metric, the canvas, the batch size and the image-size gears. `files`: `files_fingerprint(data_root)`
    if already computed."""
    from dataclasses import asdict

    spec = {k: v for k, v in asdict(plan.spec).items() if k not in ("reported", "notes")}
    synthetic = None
    if data_root is None:
        from onnxforge.scenes import GENERATOR_VERSION

        ds = plan.dataset
        synthetic = {k: getattr(ds, k, None) for k in ("count", "size", "classes", "seed", "void", "start", "task", "ignore_index")}
        synthetic["generator"] = GENERATOR_VERSION
    return dataset_fingerprint(plan.dataset_name, data_root, limit=len(plan.dataset), synthetic=synthetic, files=files, preprocessing={
        "spec": spec, "preset": plan.preset, "canvas": list(plan.canvas), "whole_images": plan.whole_images,
        "batch_size": plan.batch_size, "generic": plan.generic,
        "gears": [list(g) for g in plan.gears], "gear_policy": plan.gear_policy if plan.gears else None})


def data_files(cache: EvalCache, data_root: str | Path | None) -> str | None:
    """The fingerprint of the files under `data_root` (a stat per file: the one costly ingredient of a
    key), once per cache object; computing it before work units are made sends it with their pickled
    cache, so pool and Ray workers do not walk the dataset again."""
    if data_root is None:
        return None
    return cache.memo(("files", str(Path(data_root).resolve())), lambda: files_fingerprint(data_root))


def cache_key(cache: EvalCache, plan: EvalPlan, data_root: str | Path | None, model_sha: str, backend: str,
              reference_sha: str | None = None, extra: dict | None = None) -> str:
    """The content key of scoring the model hashed `model_sha` on `plan` with `backend` (and agreement with
    the reference hashed `reference_sha`); the data's fingerprint is computed once per cache object."""
    fp = plan_fingerprint(plan, data_root, files=data_files(cache, data_root))
    return evaluation_key(model_sha, fp, backend, f"{plan.spec.metric}/{plan.preset or 'generic'}",
                          reference_sha256=reference_sha, extra=extra)


_TIMING_FIELDS = ("total_s", "inference_s", "setup_s", "reference_s")
#: how a result reused from the cache says so in its notes (also how a worker's hit is counted by its caller)
REUSED_NOTE = "result reused from the evaluation cache"


def store_result(cache: EvalCache, key: str, result: EvalResult, cache_latency: bool = False) -> bool:
    """Stores `result` under `key`: its fields as JSON (timings only with `cache_latency`), the per-image
    contributions as arrays."""
    value = {k: getattr(result, k) for k in (
        "metrics", "metric", "dataset", "preset", "backend", "images", "batch_size", "model", "per_class_iou",
        "agreement", "predictions", "notes", "task", "dataset_classes", "model_classes")}
    if cache_latency:
        value["timings"] = {k: getattr(result, k) for k in _TIMING_FIELDS}
    arrays = {}
    if result.per_image is not None:
        pi = result.per_image
        value["per_image"] = {"names": list(pi.names), "kind": pi.kind, "keys": list(pi.keys)}
        arrays["values"] = np.asarray(pi.values)
        if pi.agreement is not None:
            arrays["agreement"] = np.asarray(pi.agreement)
    return cache.put(key, value, arrays)


def cached_result(cache: EvalCache, key: str, plan: EvalPlan, cache_latency: bool = False) -> EvalResult | None:
    """The result stored under `key`, rebuilt for `plan` (its per-image metric from the plan's spec), or None."""
    entry = cache.get(key)
    if entry is None:
        return None
    v = dict(entry.value)
    timings = v.pop("timings", None) or {}
    pi = v.pop("per_image", None)
    kept = None
    if pi is not None:
        spec = plan.spec
        kept = PerImage(names=list(pi["names"]), kind=pi["kind"], values=entry.arrays["values"], keys=tuple(pi["keys"]),
                        agreement=entry.arrays.get("agreement"),
                        metric=make_metric(spec.metric, spec.num_classes, spec.ignore_index))
    notes = list(v.pop("notes", [])) + [f"{REUSED_NOTE} (no inference ran; --no-cache evaluates again)"]
    times = {k: (float(timings.get(k, 0.0)) if cache_latency else 0.0) for k in _TIMING_FIELDS}
    return EvalResult(**v, **times, notes=notes, per_image=kept)
