"""Fast-SCNN (SegmenTron, Cityscapes 19 classes) as in LikeLy-Journey/SegmenTron `models/fast_scnn.py`.

Contract (see shared/reference/models/fastscnn.md and fastscnn.keys.json):
- ``state_dict()`` keys, shapes and order equal the upstream AUX=True model exactly (284 entries,
  1,209,961 parameters): the auxiliary layers always exist, so the released checkpoints (flat
  state_dicts with aux) load strictly; ``with_aux`` only decides whether the forward returns them.
- Input N x 3 x H x W with H and W multiples of 32 (the feature-fusion x4 upsample must meet the 1/8
  branch). Output: ``output1`` N x 19 x H x W logits, then ``aux1``, ``aux2`` (same shape) with aux.
- Every resize is bilinear with ``align_corners=True``. The first conv has padding 0 (1024 -> 511).
- The FFM's ``scale_factor=4`` upsample is written as ``size = 4 x input size``: with align_corners=True
  PyTorch's source coordinates depend only on the sizes ((in-1)/(out-1)), so both are the same
  computation, and the size form exports as a static Resize.

Variants:
- ``upstream``: AdaptiveAvgPool2d(1, 2, 3, 6) in the pyramid pooling (made exact and static at export).
- ``guide``: the Ascend guide's ``module.patch``: AvgPool2d(k = in-(out-1)*floor(in/out),
  s = floor(in/out)) per branch, computed from the input size. Differs from adaptive pooling where the
  windows differ (at 1024x2048, the 32x64 feature: 32->3, 32->6, 64->6); needs the 1/32 feature to be
  at least 6x6 (input >= 192x192).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onnxforge.errors import FrontendError
from onnxforge.frontends.adaptive import EmulatedAdaptiveAvgPool2d
from onnxforge.frontends.base import EvalSpec, ModelSpec

logger = logging.getLogger(__name__)

NUM_CLASSES = 19
POOL_SIZES = (1, 2, 3, 6)
VARIANTS: dict[str, str] = {
    "upstream": "SegmenTron Fast-SCNN: exact adaptive average pooling in the pyramid pooling module",
    "guide": "Ascend guide module.patch: AvgPool2d(k=in-(out-1)*floor(in/out), s=floor(in/out)) emulation",
}


class ConvBNReLU(nn.Module):
    """SegmenTron `_ConvBNReLU`: conv (no bias) -> BN -> ReLU (ReLU6 with relu6=True)."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1, relu6: bool = False
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU6(inplace=True) if relu6 else nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class SeparableConv2d(nn.Module):
    """SegmenTron `SeparableConv2d` (relu_first=False): depthwise 3x3 -> BN -> ReLU -> pointwise -> BN -> ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.block = nn.Sequential(
            OrderedDict(
                depthwise=nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
                bn_depth=nn.BatchNorm2d(cin),
                relu1=nn.ReLU(inplace=True),
                pointwise=nn.Conv2d(cin, cout, 1, bias=False),
                bn_point=nn.BatchNorm2d(cout),
                relu2=nn.ReLU(inplace=True),
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 project + BN; residual if shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            ConvBNReLU(cin, hidden, 1, relu6=True),
            ConvBNReLU(hidden, hidden, 3, stride, 1, groups=hidden, relu6=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class LearningToDownsample(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = ConvBNReLU(3, 32, 3, 2, padding=0)  # padding 0 upstream: 1024 -> 511
        self.dsconv1 = SeparableConv2d(32, 48, 2)
        self.dsconv2 = SeparableConv2d(48, 64, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.dsconv2(self.dsconv1(self.conv(x)))


class PyramidPooling(nn.Module):
    """Pools to 1/2/3/6, 1x1 conv each, bilinear (align_corners=True) back, concatenated after the input."""

    def __init__(self, channels: int, emulate: bool) -> None:
        super().__init__()
        pool = EmulatedAdaptiveAvgPool2d if emulate else nn.AdaptiveAvgPool2d
        self.avgpools = nn.ModuleList([pool(s) for s in POOL_SIZES])
        self.convs = nn.ModuleList([ConvBNReLU(channels, channels // 4, 1) for _ in POOL_SIZES])

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[2:]
        feats = [x]
        for pool, conv in zip(self.avgpools, self.convs):
            feats.append(F.interpolate(conv(pool(x)), size, mode="bilinear", align_corners=True))
        return torch.cat(feats, dim=1)


class GlobalFeatureExtractor(nn.Module):
    def __init__(self, emulate: bool) -> None:
        super().__init__()
        self.bottleneck1 = _layer(64, 64, 3, 2)
        self.bottleneck2 = _layer(64, 96, 3, 2)
        self.bottleneck3 = _layer(96, 128, 3, 1)
        self.ppm = PyramidPooling(128, emulate)
        self.out = ConvBNReLU(256, 128, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bottleneck3(self.bottleneck2(self.bottleneck1(x)))
        return self.out(self.ppm(x))


def _layer(cin: int, cout: int, blocks: int, stride: int, t: int = 6) -> nn.Sequential:
    return nn.Sequential(*[InvertedResidual(cin if i == 0 else cout, cout, stride if i == 0 else 1, t) for i in range(blocks)])


class FeatureFusionModule(nn.Module):
    """Lower branch x4 (bilinear, align_corners=True) -> 1x1 ConvBNReLU -> 1x1 conv+BN; plus higher 1x1 conv+BN; ReLU."""

    def __init__(self, higher: int = 64, lower: int = 128, out: int = 128, scale_factor: int = 4) -> None:
        super().__init__()
        self.scale_factor = scale_factor
        self.dwconv = ConvBNReLU(lower, out, 1)  # 1x1 despite the name (upstream)
        self.conv_lower_res = nn.Sequential(nn.Conv2d(out, out, 1), nn.BatchNorm2d(out))
        self.conv_higher_res = nn.Sequential(nn.Conv2d(higher, out, 1), nn.BatchNorm2d(out))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, higher: Tensor, lower: Tensor) -> Tensor:
        # size-based: identical to scale_factor=4 under align_corners=True (see module docstring)
        size = (int(lower.shape[2]) * self.scale_factor, int(lower.shape[3]) * self.scale_factor)
        lower = F.interpolate(lower, size=size, mode="bilinear", align_corners=True)
        lower = self.conv_lower_res(self.dwconv(lower))
        return self.relu(self.conv_higher_res(higher) + lower)


class Classifer(nn.Module):  # upstream spelling
    def __init__(self, channels: int = 128, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.dsconv1 = SeparableConv2d(channels, channels)
        self.dsconv2 = SeparableConv2d(channels, channels)
        self.conv = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(channels, num_classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.dsconv2(self.dsconv1(x)))


def _aux(cin: int, num_classes: int = NUM_CLASSES) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        nn.Dropout2d(0.1),
        nn.Conv2d(32, num_classes, 1),
    )


class FastSCNN(nn.Module):
    """Fast-SCNN with both auxiliary layers present; `with_aux` selects the outputs.

    forward(x) returns ``(main,)`` or ``(main, aux1, aux2)``, each N x 19 x H x W logits.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, with_aux: bool = False, emulate_pooling: bool = False) -> None:
        super().__init__()
        self.with_aux = with_aux
        self.learning_to_downsample = LearningToDownsample()
        self.global_feature_extractor = GlobalFeatureExtractor(emulate_pooling)
        self.feature_fusion = FeatureFusionModule()
        self.classifier = Classifer(128, num_classes)
        self.auxlayer1 = _aux(64, num_classes)
        self.auxlayer2 = _aux(128, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        h, w = int(x.shape[2]), int(x.shape[3])
        if h % 32 or w % 32:
            raise FrontendError(f"fastscnn: input size {h}x{w} must be a multiple of 32")
        size = (h, w)
        higher = self.learning_to_downsample(x)
        lower = self.global_feature_extractor(higher)
        y = self.classifier(self.feature_fusion(higher, lower))
        outputs = [F.interpolate(y, size, mode="bilinear", align_corners=True)]
        if self.with_aux:
            outputs.append(F.interpolate(self.auxlayer1(higher), size, mode="bilinear", align_corners=True))
            outputs.append(F.interpolate(self.auxlayer2(lower), size, mode="bilinear", align_corners=True))
        return tuple(outputs)


def build(variant: str = "upstream", with_aux: bool = False) -> FastSCNN:
    """Fast-SCNN for `variant` (upstream | guide); the aux layers always exist, `with_aux` adds their outputs."""
    if variant not in VARIANTS:
        raise FrontendError(f"fastscnn: unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return FastSCNN(NUM_CLASSES, with_aux=with_aux, emulate_pooling=variant == "guide")


SPEC = ModelSpec(
    name="fastscnn",
    summary="Fast-SCNN (SegmenTron), Cityscapes 19 classes, logits at input size",
    build=build,
    variants=VARIANTS,
    input_name="image",
    output_names=("output1", "aux1", "aux2"),
    size_multiple=32,
    eval=EvalSpec(
        task="segmentation",
        num_classes=NUM_CLASSES,
        dataset="cityscapes",
        input_size=(1024, 2048),
        preprocess="full",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        metric="miou-segmentron",
        ignore_index=-1,
        output_layout="logits-nchw",
        reported={"miou": 0.6446, "pixacc": 0.9388},
        notes=(
            "Cityscapes val (500 images) at full 1024x2048, no resize; labelIds -> trainIds with void = -1. "
            "Reported figures are the guide's pth results with its NPU-trained checkpoint (om fp16 output: "
            "pixAcc 0.9429, mIoU 0.6443). The guide's ONNX/om used the module.patch pooling emulation "
            "(--variant guide). Its postprocess read the third graph output (possibly aux2); onnxforge "
            "scores output1, the main head."
        ),
    ),
    keys_reference="fastscnn.keys.json",
)
