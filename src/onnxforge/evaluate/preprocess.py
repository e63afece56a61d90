"""Preprocessing policies (names from `onnxforge.frontends.base`), exactly as each upstream/guide did it.

Every policy turns a `Sample` into a `Prepared`: the network input (3xHxW float32, already normalised),
the target in the space where the metric is computed, and the `Geometry` that maps the network's
prediction back into that space (`postprocess.py` uses it).

| policy | read | resize | pad / crop | normalise | metric space |
|---|---|---|---|---|---|
| ``full`` | RGB | none (image must be the input size) | none | /255, (x-mean)/std | original |
| ``longest-pad`` | RGB, float | longest side to H (cv2 linear, size = round(dim*scale)) | centred pad to HxW with mean*255 (label 255) | (x-255*mean)/(255*std) | padded canvas |
| ``keep-ratio-pad`` | BGR uint8 | keep-ratio fit, size = floor(dim*scale) (cv2 linear) | centred zero pad *after* normalising | BGR->RGB, (x-mean16)/std16, mean/std in 0..255 cast to float16 | original: crop the pad as the guide did, nearest back |
| ``resize-crop`` | RGB | shorter side to `resize_short` (PIL bilinear) | centre crop HxW | /255, (x-mean)/std | class label |
| ``resize-bgr-double-scale`` | BGR | to HxW (cv2 linear; label nearest) | none | (x-255*mean)/(255*std) on BGR, then /255 | input size |

With image-size gears (`prepare_gear`, for models compiled with several input sizes) the ``full``
policy runs each image at the smallest gear holding it: padded at the bottom/right (the prediction is
cropped back) or resized to the gear.

Mean/std are taken from the EvalSpec in [0, 1] units; values above 1 are read as 0..255 units (so a
spec may carry mmseg's (123.675, 116.28, 103.53) as it is).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxforge.errors import EvaluationError
from onnxforge.evaluate.datasets import Sample
from onnxforge.evaluate.imageops import resize_linear, resize_nearest

POLICIES = ("full", "longest-pad", "keep-ratio-pad", "resize-crop", "resize-bgr-double-scale")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Geometry:
    """Where the network input came from in the original image.

    `original` is the image's (H, W); `resized` its size after resizing; `pad` (top, left, bottom,
    right) what was added around it to reach `canvas` (the network's H, W); `crop` (top, left) what was
    cut (resize-crop). `metric_space` says which size the target has: "original", "canvas" or "class".
    """

    policy: str
    original: tuple[int, int]
    resized: tuple[int, int]
    canvas: tuple[int, int]
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    crop: tuple[int, int] = (0, 0)
    metric_space: str = "original"


@dataclass
class Prepared:
    """One preprocessed sample: network input, target in metric space, geometry."""

    name: str
    input: np.ndarray  # 3xHxW float32
    target: np.ndarray | int
    geometry: Geometry


def _units01(values: tuple[float, ...]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    return arr / 255.0 if arr.max() > 1.0 else arr


def _units255(values: tuple[float, ...]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    return arr if arr.max() > 1.0 else arr * 255.0


def _chw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def prepare(policy: str, sample: Sample, canvas: tuple[int, int], mean=IMAGENET_MEAN, std=IMAGENET_STD,
            resize_short: int | None = None, ignore_index: int | None = 255) -> Prepared:
    """Applies `policy` to `sample` for a network whose input is `canvas` = (H, W).

    Raises:
        EvaluationError: unknown policy, or the image does not fit the policy (``full`` with an image
            whose size is not the network's input size).
    """
    if policy == "full":
        return prepare_full(sample, canvas, mean, std)
    if policy == "longest-pad":
        return prepare_longest_pad(sample, canvas, mean, std, 255 if ignore_index is None else ignore_index)
    if policy == "keep-ratio-pad":
        return prepare_keep_ratio_pad(sample, canvas, mean, std)
    if policy == "resize-crop":
        return prepare_resize_crop(sample, canvas, mean, std, resize_short)
    if policy == "resize-bgr-double-scale":
        return prepare_resize_bgr_double_scale(sample, canvas, mean, std)
    raise EvaluationError(f"unknown preprocessing policy '{policy}'; known: {', '.join(POLICIES)}")


def prepare_full(sample: Sample, canvas: tuple[int, int], mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Prepared:
    """SegmenTron testval: no resize; ToTensor (/255) then Normalize(mean, std)."""
    h, w = sample.image.shape[:2]
    if (h, w) != tuple(canvas):
        where = sample.image_path or sample.name
        raise EvaluationError(
            f"{where}: image is {w}x{h} (WxH) but the model input is {canvas[1]}x{canvas[0]}; the 'full' "
            "policy feeds whole images: export the model at the dataset's image size"
        )
    x = (sample.image.astype(np.float32) / 255.0 - _units01(mean).astype(np.float32)) / _units01(std).astype(np.float32)
    geo = Geometry("full", (h, w), (h, w), (h, w))
    return Prepared(sample.name, _chw(x), sample.label, geo)


def longest_max_size(h: int, w: int, max_size: int) -> tuple[int, int]:
    """albumentations LongestMaxSize: scale = max_size/longest, new dims = round(dim*scale) (half to even)."""
    scale = max_size / float(max(h, w))
    if scale == 1.0:
        return h, w
    return int(round(h * scale)), int(round(w * scale))


def prepare_longest_pad(sample: Sample, canvas: tuple[int, int], mean=IMAGENET_MEAN, std=IMAGENET_STD,
                        label_pad: int = 255) -> Prepared:
    """RefineNet guide: float RGB -> LongestMaxSize(H) -> PadIfNeeded(H, W, constant mean*255, mask 255)
    -> Normalize(max_pixel_value=255). The label is resized (nearest) and padded the same way; the
    metric is computed on the padded canvas."""
    ch, cw = canvas
    h, w = sample.image.shape[:2]
    img = sample.image.astype(np.float32)  # the guide converts to float32 before any transform
    nh, nw = longest_max_size(h, w, max(ch, cw))
    img = resize_linear(img, (nh, nw))
    label = sample.label
    if isinstance(label, np.ndarray):
        label = resize_nearest(label, (nh, nw))
    m255 = (_units01(mean) * 255.0).astype(np.float32)
    s255 = (_units01(std) * 255.0).astype(np.float32)
    top, left = max(ch - nh, 0) // 2, max(cw - nw, 0) // 2
    bottom, right = max(ch - nh, 0) - top, max(cw - nw, 0) - left
    canvas_img = np.empty((nh + top + bottom, nw + left + right, 3), dtype=np.float32)
    canvas_img[:] = m255
    canvas_img[top:top + nh, left:left + nw] = img
    if canvas_img.shape[:2] != (ch, cw):
        raise EvaluationError(f"{sample.image_path or sample.name}: longest-pad gives {canvas_img.shape[:2]}, not {canvas}")
    x = (canvas_img - m255) * (1.0 / s255)
    if isinstance(label, np.ndarray):
        lab = np.full((ch, cw), label_pad, dtype=np.int32 if label_pad < 0 or label.dtype.kind == "i" else label.dtype)
        lab[top:top + nh, left:left + nw] = label
        label = lab
    geo = Geometry("longest-pad", (h, w), (nh, nw), (ch, cw), (top, left, bottom, right), metric_space="canvas")
    return Prepared(sample.name, _chw(x), label, geo)


def keep_ratio_size(h: int, w: int, canvas: tuple[int, int]) -> tuple[int, int]:
    """PSPNet guide: scale = min(W/w, H/h); new dims = floor(dim*scale)."""
    scale = min(canvas[1] / w, canvas[0] / h)
    return int(np.floor(h * scale)), int(np.floor(w * scale))


def prepare_keep_ratio_pad(sample: Sample, canvas: tuple[int, int], mean=(123.675, 116.28, 103.53),
                           std=(58.395, 57.12, 57.375)) -> Prepared:
    """PSPNet guide: BGR uint8 -> keep-ratio resize (floor sizes, cv2 linear) -> mmcv.imnormalize with
    float16-cast mean/std (BGR->RGB, subtract, multiply by 1/std) -> centred zero pad."""
    ch, cw = canvas
    h, w = sample.image.shape[:2]
    bgr = sample.image[..., ::-1]
    nh, nw = keep_ratio_size(h, w, canvas)
    img = resize_linear(np.ascontiguousarray(bgr), (nh, nw))
    mean16 = _units255(mean).astype(np.float16).astype(np.float64)
    stdinv = 1.0 / _units255(std).astype(np.float16).astype(np.float64)
    rgb = img[..., ::-1].astype(np.float32)
    x = ((rgb - mean16) * stdinv).astype(np.float32)
    top, left = (ch - nh) // 2, (cw - nw) // 2
    bottom, right = ch - nh - top, cw - nw - left
    out = np.zeros((ch, cw, 3), dtype=np.float32)
    out[top:top + nh, left:left + nw] = x
    geo = Geometry("keep-ratio-pad", (h, w), (nh, nw), (ch, cw), (top, left, bottom, right), metric_space="original")
    return Prepared(sample.name, _chw(out), sample.label, geo)


def resize_short_size(h: int, w: int, short: int) -> tuple[int, int]:
    """torchvision Resize(int): the shorter side becomes `short`, the longer int(short * long / short_side)."""
    if h <= w:
        return short, int(short * w / h)
    return int(short * h / w), short


def prepare_resize_crop(sample: Sample, canvas: tuple[int, int], mean=IMAGENET_MEAN, std=IMAGENET_STD,
                        resize_short: int | None = None) -> Prepared:
    """torchvision ImageNet eval: Resize(short) (PIL bilinear) -> CenterCrop(H, W) -> ToTensor -> Normalize."""
    from PIL import Image

    ch, cw = canvas
    short = resize_short or int(round(min(ch, cw) * 256 / 224))
    h, w = sample.image.shape[:2]
    nh, nw = resize_short_size(h, w, short)
    pil = Image.fromarray(sample.image, "RGB")
    if (nh, nw) != (h, w):
        pil = pil.resize((nw, nh), Image.BILINEAR)
    arr = np.asarray(pil)
    if nh < ch or nw < cw:  # torchvision pads with zeros when the crop is larger than the image
        padded = np.zeros((max(nh, ch), max(nw, cw), 3), dtype=np.uint8)
        pt, pl = (max(ch - nh, 0)) // 2, (max(cw - nw, 0)) // 2
        padded[pt:pt + nh, pl:pl + nw] = arr
        arr, nh2, nw2 = padded, padded.shape[0], padded.shape[1]
    else:
        nh2, nw2 = nh, nw
    top = int(round((nh2 - ch) / 2.0))
    left = int(round((nw2 - cw) / 2.0))
    crop = arr[top:top + ch, left:left + cw]
    x = (crop.astype(np.float32) / 255.0 - _units01(mean).astype(np.float32)) / _units01(std).astype(np.float32)
    geo = Geometry("resize-crop", (h, w), (nh, nw), (ch, cw), crop=(top, left), metric_space="class")
    return Prepared(sample.name, _chw(x), sample.label, geo)


def prepare_resize_bgr_double_scale(sample: Sample, canvas: tuple[int, int], mean=IMAGENET_MEAN,
                                    std=IMAGENET_STD) -> Prepared:
    """UNet++ (pytorch-nested-unet val): BGR uint8 -> albumentations Resize(H, W) (label nearest) ->
    Normalize() on the BGR order -> astype(float32) / 255 (the upstream double scaling)."""
    ch, cw = canvas
    h, w = sample.image.shape[:2]
    bgr = np.ascontiguousarray(sample.image[..., ::-1])
    img = resize_linear(bgr, (ch, cw))
    m255 = (_units01(mean) * 255.0).astype(np.float32)
    s255 = (_units01(std) * 255.0).astype(np.float32)
    x = (img.astype(np.float32) - m255) * (1.0 / s255)
    x = x.astype(np.float32) / 255.0
    label = sample.label
    if isinstance(label, np.ndarray):
        label = resize_nearest(label, (ch, cw))
    geo = Geometry("resize-bgr-double-scale", (h, w), (ch, cw), (ch, cw), metric_space="canvas")
    return Prepared(sample.name, _chw(x), label, geo)


# ------------------------------------------------------------------------------------------------ gears
#: how an image reaches the gear that holds it
GEAR_POLICIES = ("pad", "resize")


def route_gear(size: tuple[int, int], gears: tuple[tuple[int, int], ...]) -> tuple[int, int] | None:
    """The smallest gear (by area, then height) holding an image of `size` = (H, W); None if none does."""
    h, w = size
    holding = [g for g in gears if g[0] >= h and g[1] >= w]
    return min(holding, key=lambda g: (g[0] * g[1], g[0])) if holding else None


def prepare_gear(sample: Sample, gears: tuple[tuple[int, int], ...], gear_policy: str = "pad", mean=IMAGENET_MEAN,
                 std=IMAGENET_STD) -> Prepared:
    """The ``full`` policy at the smallest gear holding the image (`route_gear`), for a model compiled with gears.

    ``pad``: the normalised image is padded at the bottom and right to the gear with 0, i.e. the mean
    colour (the value ``longest-pad`` pads with); the prediction is cropped back to the image (`Geometry.pad`),
    which scores exactly as padding the label with the ignore index would. ``resize``: the image is
    resized (bilinear, half-pixel) to the gear and the prediction resized back to the label's size.

    Raises:
        EvaluationError: no gear holds the image, or an unknown policy.
    """
    if gear_policy not in GEAR_POLICIES:
        raise EvaluationError(f"unknown gear policy '{gear_policy}'; known: {', '.join(GEAR_POLICIES)}")
    h, w = sample.image.shape[:2]
    gear = route_gear((h, w), gears)
    if gear is None:
        raise EvaluationError(f"{sample.image_path or sample.name}: image is {h}x{w} (HxW), larger than every gear "
                              f"({', '.join(f'{g[0]}x{g[1]}' for g in gears)})")
    m01, s01 = _units01(mean).astype(np.float32), _units01(std).astype(np.float32)
    gh, gw = gear
    if gear_policy == "resize":
        img = resize_linear(sample.image.astype(np.float32), (gh, gw)) if (gh, gw) != (h, w) else sample.image.astype(np.float32)
        x = (img / 255.0 - m01) / s01
        return Prepared(sample.name, _chw(x), sample.label, Geometry("full", (h, w), (gh, gw), (gh, gw)))
    x = np.zeros((gh, gw, 3), dtype=np.float32)
    x[:h, :w] = (sample.image.astype(np.float32) / 255.0 - m01) / s01
    geo = Geometry("full", (h, w), (h, w), (gh, gw), pad=(0, 0, gh - h, gw - w))
    return Prepared(sample.name, _chw(x), sample.label, geo)
