"""PSPNet R50-D8 (mmsegmentation 0.x ``pspnet_r50-d8_512x512_20k_voc12aug``, VOC 21 classes).

An ``EncoderDecoder`` with a ResNetV1c-50 backbone (deep stem, dilations 1/1/2/4 with contracted first
blocks, output stride 8), a PSPHead and an FCN auxiliary head, written after mmseg v0.18.0 and mmcv
1.3.x naming (``ConvModule`` children ``conv``/``bn``; SyncBN is plain BatchNorm2d for inference).

Contract (see shared/reference/models/pspnet.md and pspnet.keys.json):
- ``state_dict()`` keys, shapes and order equal the upstream model exactly (370 entries, 48,977,034
  parameters, ``auxiliary_head`` included), so the released mmcv checkpoints (``{'meta', 'state_dict'}``)
  load strictly; ``with_aux`` only adds the auxiliary head's output.
- Input ``input`` N x 3 x H x W, any size. Output ``output``: ``encode_decode``'s logits, N x 21 x H x W
  (the decode head's stride-8 logits resized bilinearly, align_corners=False, to the input size).
  The guide's graph went on to softmax + argmax (1 x N x H x W int64); the ``argmax-output`` pass does that.
- With aux, ``aux`` is the FCN head's logits resized the same way (as mmseg does for the loss).

Variants:
- ``upstream``: AdaptiveAvgPool2d(1, 2, 3, 6) (made exact and static at export).
- ``guide``: mmcv 1.3.10's ONNX symbolic for adaptive_avg_pool2d, i.e. what the guide's ONNX/om
  computed: AveragePool(k = in-(out-1)*floor(in/out), s = floor(in/out)). At 500x500 (a 63x63 feature)
  it differs from PyTorch in the scale-6 branch only; it needs the stride-8 feature to be at least 6x6.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onnxforge.errors import FrontendError
from onnxforge.frontends.adaptive import EmulatedAdaptiveAvgPool2d
from onnxforge.frontends.base import EvalSpec, ModelSpec
from onnxforge.frontends.resnet import Bottleneck

logger = logging.getLogger(__name__)

NUM_CLASSES = 21
POOL_SCALES = (1, 2, 3, 6)
VARIANTS: dict[str, str] = {
    "upstream": "mmseg PSPNet R50-D8: exact adaptive average pooling in the PPM",
    "guide": "mmcv ONNX symbolic used by the guide: AveragePool k=in-(out-1)*floor(in/out), s=floor(in/out)",
}


class ConvModule(nn.Module):
    """mmcv ConvModule (conv without bias -> BN -> ReLU), children named `conv`, `bn`, `activate`."""

    def __init__(self, cin: int, cout: int, kernel: int, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.bn(self.conv(x)))


def _res_layer(inplanes: int, planes: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
    """mmseg ResLayer with contract_dilation=True: the first block uses dilation/2 when dilation > 1."""
    downsample = None
    if stride != 1 or inplanes != planes * Bottleneck.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * Bottleneck.expansion, 1, stride, bias=False),
            nn.BatchNorm2d(planes * Bottleneck.expansion),
        )
    first_dilation = dilation // 2 if dilation > 1 else dilation
    layers = [Bottleneck(inplanes, planes, stride, first_dilation, downsample)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes, 1, dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNetV1c(nn.Module):
    """ResNetV1c-50 with deep stem; strides (1,2,1,1), dilations (1,1,2,4): output stride 8."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _res_layer(64, 64, 3, 1, 1)
        self.layer2 = _res_layer(256, 128, 4, 2, 1)
        self.layer3 = _res_layer(512, 256, 6, 1, 2)
        self.layer4 = _res_layer(1024, 512, 3, 1, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = self.maxpool(self.stem(x))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return c1, c2, c3, c4


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """mmseg.ops.resize as used here: size-based bilinear, align_corners=False."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PSPHead(nn.Module):
    """mmseg PSPHead on the layer4 feature (in_index 3); `conv_seg` first, as BaseDecodeHead creates it."""

    def __init__(self, emulate: bool, in_channels: int = 2048, channels: int = 512, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(0.1)
        pool = EmulatedAdaptiveAvgPool2d if emulate else nn.AdaptiveAvgPool2d
        self.psp_modules = nn.ModuleList(
            [nn.Sequential(pool(s), ConvModule(in_channels, channels, 1)) for s in POOL_SCALES]
        )
        self.bottleneck = ConvModule(in_channels + len(POOL_SCALES) * channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        size = (int(x.shape[2]), int(x.shape[3]))
        outs = [x] + [_resize(ppm(x), size) for ppm in self.psp_modules]
        out = self.bottleneck(torch.cat(outs, dim=1))
        return self.conv_seg(self.dropout(out))


class FCNHead(nn.Module):
    """mmseg FCNHead as the auxiliary head: one 3x3 ConvModule (1024->256) then conv_seg (in_index 2)."""

    def __init__(self, in_channels: int = 1024, channels: int = 256, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(0.1)
        self.convs = nn.Sequential(ConvModule(in_channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_seg(self.dropout(self.convs(x)))


class PSPNet(nn.Module):
    """mmseg EncoderDecoder(ResNetV1c-50, PSPHead, FCNHead aux); forward = encode_decode logits at input size.

    forward(x) returns ``(logits,)`` or ``(logits, aux_logits)``, each N x 21 x H x W.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, with_aux: bool = False, emulate_pooling: bool = False) -> None:
        super().__init__()
        self.with_aux = with_aux
        self.backbone = ResNetV1c()
        self.decode_head = PSPHead(emulate_pooling, num_classes=num_classes)
        self.auxiliary_head = FCNHead(num_classes=num_classes)

    def forward(self, img: Tensor) -> tuple[Tensor, ...]:
        size = (int(img.shape[2]), int(img.shape[3]))
        feats = self.backbone(img)
        outputs = [_resize(self.decode_head(feats[3]), size)]
        if self.with_aux:
            outputs.append(_resize(self.auxiliary_head(feats[2]), size))
        return tuple(outputs)


def build(variant: str = "upstream", with_aux: bool = False) -> PSPNet:
    """PSPNet R50-D8 for `variant` (upstream | guide); the aux head always exists, `with_aux` adds its output."""
    if variant not in VARIANTS:
        raise FrontendError(f"pspnet: unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return PSPNet(NUM_CLASSES, with_aux=with_aux, emulate_pooling=variant == "guide")


SPEC = ModelSpec(
    name="pspnet",
    summary="PSPNet R50-D8 (mmsegmentation), PASCAL VOC 21 classes, logits at input size",
    build=build,
    variants=VARIANTS,
    input_name="input",
    output_names=("output", "aux"),
    size_multiple=1,
    eval=EvalSpec(
        task="segmentation",
        num_classes=NUM_CLASSES,
        dataset="voc2012",
        input_size=(500, 500),
        preprocess="keep-ratio-pad",
        mean=(123.675, 116.28, 103.53),  # 0..255 units (mmcv imnormalize), RGB order
        std=(58.395, 57.12, 57.375),
        metric="miou-mmseg",
        ignore_index=255,
        output_layout="logits-nchw",
        reported={"miou": 0.7618},
        notes=(
            "Guide pipeline: BGR read, keep-ratio resize to fit 500x500 (floor sizes), normalise, centre "
            "zero pad after normalisation; predictions cropped and resized nearest to the original size; "
            "mmseg mIoU (ignore 255, nanmean). 0.7618 is the guide's om (its graph used mmcv's AveragePool "
            "emulation: --variant guide); mmseg reports 0.7678 for the PyTorch model at 2048x512 keep-ratio."
        ),
    ),
    keys_reference="pspnet.keys.json",
)
