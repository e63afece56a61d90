"""What a frontend declares: how to build the model, and everything the evaluator needs to use it.

Every seed model module (`frontends/<model>.py`) defines one `ModelSpec` named `SPEC`. `evaluate
--preset MODEL` reads only the spec, so task, classes, input size, preprocessing, output layout and
metric live here, next to the model definition, and nowhere else.

Preprocessing policies (implemented in `onnxforge.evaluate.preprocess`, keyed by name):
- ``full``: no resize, no pad; RGB, /255, (x-mean)/std (Fast-SCNN / SegmenTron testval).
- ``longest-pad``: RGB; longest side resized to `input_size` (bilinear, albumentations LongestMaxSize),
  centred pad to `input_size` with the mean colour (value mean*255, label 255), /255, (x-mean)/std;
  the metric is computed on the padded canvas (RefineNet guide).
- ``keep-ratio-pad``: BGR read, keep-ratio resize to fit `input_size` with floor sizes, normalise with
  mean/std in 0..255 units then BGR->RGB, centred zero pad after normalisation; predictions are
  cropped back and resized nearest to the original size (PSPNet guide).
- ``resize-crop``: RGB; shorter side to `resize_short` (bilinear), centre crop `input_size`,
  /255, (x-mean)/std (VoVNet / torchvision ImageNet).
- ``resize-bgr-double-scale``: BGR read, resize to `input_size`, (x/255-mean)/std on BGR order,
  then a further /255 (UNet++ upstream quirk).

Metric names (implemented in `onnxforge.evaluate.metrics`):
- ``miou-segmentron``: ignore label -1, IoU summed over the dataset, plain mean over all classes; pixAcc.
- ``miou-mmseg``: ignore 255, summed histograms, nanmean over classes; aAcc as pixAcc.
- ``miou-densetorch``: confusion over gt < C (255 ignored), mean over classes with IU <= 1.
- ``topk``: top-1 and top-5 accuracy over logits.
- ``binary-iou``: logit threshold, IoU = (|A&B|+1e-5)/(|A|B|+1e-5) per image, averaged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

Task = Literal["segmentation", "classification", "binary-segmentation"]
Preprocess = Literal["full", "longest-pad", "keep-ratio-pad", "resize-crop", "resize-bgr-double-scale"]
Metric = Literal["miou-segmentron", "miou-mmseg", "miou-densetorch", "topk", "binary-iou"]
OutputLayout = Literal["logits-nchw", "logits-nc", "labels"]


@dataclass(frozen=True)
class EvalSpec:
    """Everything `evaluate --preset` needs to turn images into the model's input and outputs into a score."""

    task: Task
    num_classes: int
    dataset: str  # voc2012 | imagenet | cityscapes | dsb2018
    input_size: tuple[int, int]  # (H, W) of the exported graph by default
    preprocess: Preprocess
    mean: tuple[float, float, float]  # in [0, 1] units unless the policy says otherwise
    std: tuple[float, float, float]
    metric: Metric
    ignore_index: int | None
    output_layout: OutputLayout
    resize_short: int | None = None  # resize-crop only
    threshold: float = 0.0  # binary-iou: logit threshold (0.0 == sigmoid > 0.5)
    reported: dict[str, float] = field(default_factory=dict)  # what the seed guide reports, as fractions
    notes: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """A seed model: how to build it, its variants, export names and its evaluation contract."""

    name: str  # CLI name: refinenet | vovnet39 | pspnet | unetpp | fastscnn
    summary: str
    build: Callable[..., object]  # build(variant: str = "upstream", with_aux: bool = False) -> torch.nn.Module
    variants: dict[str, str]  # variant name -> one-line description; always contains "upstream"
    input_name: str
    output_names: tuple[str, ...]  # prediction first; aux outputs after it when --with-aux
    size_multiple: int  # input H and W must be multiples of this (1 = any)
    eval: EvalSpec
    keys_reference: str  # file name in shared/reference/models describing the state_dict
