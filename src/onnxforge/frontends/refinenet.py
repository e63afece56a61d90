"""RefineNet-101 for PASCAL VOC (21 classes), as in DrSleep/refinenet-pytorch `rf101`.

Contract (see shared/reference/models/refinenet.md and refinenet.keys.json):
- `state_dict()` keys, shapes and order equal the upstream model exactly (712 entries, 118,052,437
  parameters), so an upstream checkpoint loads strictly once its wrapper and `module.` prefix are gone.
- Input N x 3 x H x W (any H, W >= 1), output N x 21 x ceil(H/4) x ceil(W/4) logits at stride 4 (the
  size of ResNet's layer1 output); there is no upsampling back to the input size inside the model.
- The three decoder upsamplings are bilinear with align_corners=True and take their target size from
  the skip tensor (16->32->63->125 at 500x500 input, not a clean 2x), never a scale factor.

Variants:
- ``upstream``: the original forward (5x5 max pools in every chained residual pooling block).
- ``guide``: the Ascend porting guide's RefineNet.patch: the last CRP block (`mflow_conv_g4_pool`)
  pools with an identity MaxPool2d(kernel_size=1). The guide's NPU-trained checkpoint needs it; the
  keys are identical either way.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onnxforge.errors import FrontendError
from onnxforge.frontends.base import EvalSpec, ModelSpec
from onnxforge.frontends.resnet import Bottleneck

logger = logging.getLogger(__name__)

NUM_CLASSES = 21
VARIANTS: dict[str, str] = {
    "upstream": "DrSleep refinenet-pytorch rf101: 5x5 max pools in every CRP block",
    "guide": "Ascend guide RefineNet.patch: identity (k=1) max pool in mflow_conv_g4_pool; for its 910 checkpoint",
}


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=bias)


class CRPBlock(nn.Module):
    """Chained residual pooling: `top = conv(pool(top)); x = x + top`, `n_stages` times, no ReLU inside.

    Conv attributes are named `1_outvar_dimred` ... `{n}_outvar_dimred` (digit-leading, hence setattr).
    `max_pooling=False` swaps the 5x5 pool for the guide's identity MaxPool2d(kernel_size=1).
    """

    def __init__(self, in_planes: int, out_planes: int, n_stages: int, max_pooling: bool = True) -> None:
        super().__init__()
        self.n_stages = n_stages
        for i in range(n_stages):
            setattr(self, f"{i + 1}_outvar_dimred", _conv3x3(in_planes if i == 0 else out_planes, out_planes))
        if max_pooling:
            self.maxpool = nn.MaxPool2d(kernel_size=5, stride=1, padding=2)
        else:
            self.maxpool = nn.MaxPool2d(kernel_size=1, stride=1, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        top = x
        for i in range(self.n_stages):
            top = self.maxpool(top)
            top = getattr(self, f"{i + 1}_outvar_dimred")(top)
            x = top + x
        return x


class RCUBlock(nn.Module):
    """Residual conv units: per block `x = x + conv(relu(...conv(relu(x))))`.

    Stage 0 of block i is `{i+1}_conv` (with bias), later stages `{i+1}_conv_relu_varout_dimred` (no bias).
    """

    def __init__(self, in_planes: int, out_planes: int, n_blocks: int, n_stages: int) -> None:
        super().__init__()
        self.n_blocks = n_blocks
        self.n_stages = n_stages
        for i in range(n_blocks):
            for j in range(n_stages):
                name = f"{i + 1}_conv" if j == 0 else f"{i + 1}_conv_relu_varout_dimred"
                conv = _conv3x3(in_planes if (i == 0 and j == 0) else out_planes, out_planes, bias=(j == 0))
                setattr(self, name, conv)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(self.n_blocks):
            residual = x
            for j in range(self.n_stages):
                name = f"{i + 1}_conv" if j == 0 else f"{i + 1}_conv_relu_varout_dimred"
                x = getattr(self, name)(F.relu(x))
            x = x + residual
        return x


def _up_to(x: Tensor, skip: Tensor) -> Tensor:
    """Bilinear, align_corners=True, to the skip tensor's spatial size (upstream's in-forward nn.Upsample)."""
    return F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=True)


class RefineNet(nn.Module):
    """RefineNet with a ResNet-101 encoder (no fc/avgpool) and four RefineNet decoder paths."""

    def __init__(self, num_classes: int = NUM_CLASSES, layers: tuple[int, ...] = (3, 4, 23, 3),
                 last_pool_identity: bool = False) -> None:
        super().__init__()
        self.inplanes = 64
        self.do = nn.Dropout(p=0.5)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)

        self.p_ims1d2_outl1_dimred = _conv3x3(2048, 512)
        self.adapt_stage1_b = nn.Sequential(RCUBlock(512, 512, 2, 2))
        self.mflow_conv_g1_pool = nn.Sequential(CRPBlock(512, 512, 4))
        self.mflow_conv_g1_b = nn.Sequential(RCUBlock(512, 512, 3, 2))
        self.mflow_conv_g1_b3_joint_varout_dimred = _conv3x3(512, 256)

        self.p_ims1d2_outl2_dimred = _conv3x3(1024, 256)
        self.adapt_stage2_b = nn.Sequential(RCUBlock(256, 256, 2, 2))
        self.adapt_stage2_b2_joint_varout_dimred = _conv3x3(256, 256)
        self.mflow_conv_g2_pool = nn.Sequential(CRPBlock(256, 256, 4))
        self.mflow_conv_g2_b = nn.Sequential(RCUBlock(256, 256, 3, 2))
        self.mflow_conv_g2_b3_joint_varout_dimred = _conv3x3(256, 256)

        self.p_ims1d2_outl3_dimred = _conv3x3(512, 256)
        self.adapt_stage3_b = nn.Sequential(RCUBlock(256, 256, 2, 2))
        self.adapt_stage3_b2_joint_varout_dimred = _conv3x3(256, 256)
        self.mflow_conv_g3_pool = nn.Sequential(CRPBlock(256, 256, 4))
        self.mflow_conv_g3_b = nn.Sequential(RCUBlock(256, 256, 3, 2))
        self.mflow_conv_g3_b3_joint_varout_dimred = _conv3x3(256, 256)

        self.p_ims1d2_outl4_dimred = _conv3x3(256, 256)
        self.adapt_stage4_b = nn.Sequential(RCUBlock(256, 256, 2, 2))
        self.adapt_stage4_b2_joint_varout_dimred = _conv3x3(256, 256)
        self.mflow_conv_g4_pool = nn.Sequential(CRPBlock(256, 256, 4, max_pooling=not last_pool_identity))
        self.mflow_conv_g4_b = nn.Sequential(RCUBlock(256, 256, 3, 2))

        self.clf_conv = nn.Conv2d(256, num_classes, kernel_size=3, stride=1, padding=1, bias=True)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample=downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        l1 = self.layer1(x)
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        l4 = self.layer4(l3)
        l4 = self.do(l4)
        l3 = self.do(l3)

        x4 = self.p_ims1d2_outl1_dimred(l4)
        x4 = self.relu(self.adapt_stage1_b(x4))
        x4 = self.mflow_conv_g1_pool(x4)
        x4 = self.mflow_conv_g1_b(x4)
        x4 = self.mflow_conv_g1_b3_joint_varout_dimred(x4)
        x4 = _up_to(x4, l3)

        x3 = self.p_ims1d2_outl2_dimred(l3)
        x3 = self.adapt_stage2_b(x3)
        x3 = self.adapt_stage2_b2_joint_varout_dimred(x3)
        x3 = F.relu(x3 + x4)
        x3 = self.mflow_conv_g2_pool(x3)
        x3 = self.mflow_conv_g2_b(x3)
        x3 = self.mflow_conv_g2_b3_joint_varout_dimred(x3)
        x3 = _up_to(x3, l2)

        x2 = self.p_ims1d2_outl3_dimred(l2)
        x2 = self.adapt_stage3_b(x2)
        x2 = self.adapt_stage3_b2_joint_varout_dimred(x2)
        x2 = F.relu(x2 + x3)
        x2 = self.mflow_conv_g3_pool(x2)
        x2 = self.mflow_conv_g3_b(x2)
        x2 = self.mflow_conv_g3_b3_joint_varout_dimred(x2)
        x2 = _up_to(x2, l1)

        x1 = self.p_ims1d2_outl4_dimred(l1)
        x1 = self.adapt_stage4_b(x1)
        x1 = self.adapt_stage4_b2_joint_varout_dimred(x1)
        x1 = F.relu(x1 + x2)
        x1 = self.mflow_conv_g4_pool(x1)
        x1 = self.mflow_conv_g4_b(x1)
        x1 = self.do(x1)
        return self.clf_conv(x1)


def build(variant: str = "upstream", with_aux: bool = False) -> nn.Module:
    """Builds RefineNet-101 in eval mode with deterministic weights (seed 0; the global RNG is untouched).

    Raises FrontendError for an unknown variant or `with_aux=True` (the model has no auxiliary head).
    """
    if variant not in VARIANTS:
        raise FrontendError(f"refinenet: unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    if with_aux:
        raise FrontendError("refinenet has no auxiliary head; --with-aux does not apply")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = RefineNet(NUM_CLASSES, last_pool_identity=(variant == "guide"))
    logger.debug("built refinenet variant=%s", variant)
    return model.eval()


SPEC = ModelSpec(
    name="refinenet",
    summary="RefineNet-101 (DrSleep refinenet-pytorch), PASCAL VOC 21 classes, logits at stride 4",
    build=build,
    variants=VARIANTS,
    input_name="input",
    output_names=("output",),
    size_multiple=1,
    eval=EvalSpec(
        task="segmentation",
        num_classes=NUM_CLASSES,
        dataset="voc2012",
        input_size=(500, 500),
        preprocess="longest-pad",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        metric="miou-densetorch",
        ignore_index=255,
        output_layout="logits-nchw",
        reported={"miou": 0.7861},
        notes=(
            "Output is at stride 4 (125x125 for 500x500); the guide resizes logits bilinearly "
            "(align_corners=False) to the 500x500 padded label and scores on the padded canvas. "
            "Reported mIoU 0.7861 is the guide's 910 checkpoint with the 500-pad preprocessing "
            "(variant 'guide'); upstream-style full-image evaluation gave 0.7844."
        ),
    ),
    keys_reference="refinenet.keys.json",
)
