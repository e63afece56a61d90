"""UNet++ (NestedUNet, 1 class, deep_supervision=False) as in 4uiiurz1/pytorch-nested-unet `archs.py`.

Contract (see shared/reference/models/unetpp.md and unetpp.keys.json):
- `state_dict()` keys, shapes and order equal the upstream model exactly (212 entries, 9,163,329
  parameters); upstream checkpoints are flat state_dicts and load strictly.
- Input N x 3 x H x W with H and W multiples of 16 (four 2x2 max pools, then scale-2 upsamplings whose
  outputs are concatenated with the skips), output N x 1 x H x W logits (no sigmoid).
- Concatenation order is `[x{i}_0, ..., x{i}_{j-1}, up(x{i+1}_{j-1})]`.

Variants:
- ``upstream``: nn.Upsample(scale_factor=2, mode='bilinear', align_corners=True).
- ``guide``: the Ascend guide's nested_unet.diff: nearest upsampling (scale 2). The guide's checkpoint
  was retrained with it, so it must be run this way; the keys are identical.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from onnxforge.errors import FrontendError
from onnxforge.frontends.base import EvalSpec, ModelSpec

logger = logging.getLogger(__name__)

NB_FILTER = (32, 64, 128, 256, 512)
VARIANTS: dict[str, str] = {
    "upstream": "pytorch-nested-unet NestedUNet: bilinear (align_corners=True) x2 upsampling",
    "guide": "Ascend guide nested_unet.diff: nearest x2 upsampling; its checkpoint was retrained with it",
}


class VGGBlock(nn.Module):
    """conv3x3(bias) -> BN -> ReLU -> conv3x3(bias) -> BN -> ReLU, one shared ReLU module."""

    def __init__(self, in_channels: int, middle_channels: int, out_channels: int) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, middle_channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(middle_channels)
        self.conv2 = nn.Conv2d(middle_channels, out_channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(x)))


class NestedUNet(nn.Module):
    """UNet++ with nested dense skip paths and a single 1x1 `final` head (no deep supervision)."""

    def __init__(self, num_classes: int = 1, input_channels: int = 3, nearest_upsampling: bool = False) -> None:
        super().__init__()
        f = NB_FILTER
        self.pool = nn.MaxPool2d(2, 2)
        if nearest_upsampling:
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
        else:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)

        self.conv0_0 = VGGBlock(input_channels, f[0], f[0])
        self.conv1_0 = VGGBlock(f[0], f[1], f[1])
        self.conv2_0 = VGGBlock(f[1], f[2], f[2])
        self.conv3_0 = VGGBlock(f[2], f[3], f[3])
        self.conv4_0 = VGGBlock(f[3], f[4], f[4])

        self.conv0_1 = VGGBlock(f[0] + f[1], f[0], f[0])
        self.conv1_1 = VGGBlock(f[1] + f[2], f[1], f[1])
        self.conv2_1 = VGGBlock(f[2] + f[3], f[2], f[2])
        self.conv3_1 = VGGBlock(f[3] + f[4], f[3], f[3])

        self.conv0_2 = VGGBlock(f[0] * 2 + f[1], f[0], f[0])
        self.conv1_2 = VGGBlock(f[1] * 2 + f[2], f[1], f[1])
        self.conv2_2 = VGGBlock(f[2] * 2 + f[3], f[2], f[2])

        self.conv0_3 = VGGBlock(f[0] * 3 + f[1], f[0], f[0])
        self.conv1_3 = VGGBlock(f[1] * 3 + f[2], f[1], f[1])

        self.conv0_4 = VGGBlock(f[0] * 4 + f[1], f[0], f[0])

        self.final = nn.Conv2d(f[0], num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        cat, up, pool = torch.cat, self.up, self.pool
        x0_0 = self.conv0_0(x)
        x1_0 = self.conv1_0(pool(x0_0))
        x0_1 = self.conv0_1(cat([x0_0, up(x1_0)], 1))

        x2_0 = self.conv2_0(pool(x1_0))
        x1_1 = self.conv1_1(cat([x1_0, up(x2_0)], 1))
        x0_2 = self.conv0_2(cat([x0_0, x0_1, up(x1_1)], 1))

        x3_0 = self.conv3_0(pool(x2_0))
        x2_1 = self.conv2_1(cat([x2_0, up(x3_0)], 1))
        x1_2 = self.conv1_2(cat([x1_0, x1_1, up(x2_1)], 1))
        x0_3 = self.conv0_3(cat([x0_0, x0_1, x0_2, up(x1_2)], 1))

        x4_0 = self.conv4_0(pool(x3_0))
        x3_1 = self.conv3_1(cat([x3_0, up(x4_0)], 1))
        x2_2 = self.conv2_2(cat([x2_0, x2_1, up(x3_1)], 1))
        x1_3 = self.conv1_3(cat([x1_0, x1_1, x1_2, up(x2_2)], 1))
        x0_4 = self.conv0_4(cat([x0_0, x0_1, x0_2, x0_3, up(x1_3)], 1))

        return self.final(x0_4)


def build(variant: str = "upstream", with_aux: bool = False) -> nn.Module:
    """Builds NestedUNet in eval mode with deterministic weights (seed 0; the global RNG is untouched).

    Raises FrontendError for an unknown variant or `with_aux=True` (no deep-supervision heads).
    """
    if variant not in VARIANTS:
        raise FrontendError(f"unetpp: unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    if with_aux:
        raise FrontendError("unetpp has no auxiliary head (deep_supervision=False); --with-aux does not apply")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = NestedUNet(nearest_upsampling=(variant == "guide"))
    logger.debug("built unetpp variant=%s", variant)
    return model.eval()


SPEC = ModelSpec(
    name="unetpp",
    summary="UNet++ / NestedUNet (pytorch-nested-unet), DSB2018 nuclei, 1-channel logits",
    build=build,
    variants=VARIANTS,
    input_name="actual_input_1",
    output_names=("output1",),
    size_multiple=16,
    eval=EvalSpec(
        task="binary-segmentation",
        num_classes=1,
        dataset="dsb2018",
        input_size=(96, 96),
        preprocess="resize-bgr-double-scale",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        metric="binary-iou",
        ignore_index=None,
        output_layout="logits-nchw",
        threshold=0.0,
        reported={"iou": 0.8385},
        notes=(
            "Threshold 0.0 on logits is upstream's sigmoid > 0.5. The guide's postprocess thresholded "
            "the raw logits at 0.5 (== sigmoid > 0.6225) and averaged IoU per image; its reported "
            "0.8385 is the 'guide' variant (nearest upsampling, retrained) under that rule. "
            "Upstream README: IoU 0.842 (bilinear)."
        ),
    ),
    keys_reference="unetpp.keys.json",
)
