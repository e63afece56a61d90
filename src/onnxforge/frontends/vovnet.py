"""VoVNet-39 for ImageNet (1000 classes), as in the VoVNet.pytorch copy the Ascend guide pins.

Contract (see shared/reference/models/vovnet39.md and vovnet39.keys.json):
- `state_dict()` keys, shapes and order equal the upstream model exactly (236 entries, 22,600,296
  parameters). Upstream names its conv/norm/relu submodules with a '/' (`stem.stem_1/conv.weight`);
  they are registered under those exact names, so checkpoints load without a key remap.
- Input N x 3 x H x W, output N x 1000 logits (no softmax). Stages 3-5 start with
  MaxPool2d(3, 2, ceil_mode=True), so odd feature sizes round up as upstream does.
- The head is a global average pool then `torch.flatten(x, 1)` (upstream used `.view(N, -1)`; same
  numbers, and it exports as GlobalAveragePool + Flatten instead of a Shape/Gather/Reshape chain).

Only the ``upstream`` variant exists: the guide exported the model unchanged.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onnxforge.errors import FrontendError
from onnxforge.frontends.base import EvalSpec, ModelSpec

logger = logging.getLogger(__name__)

NUM_CLASSES = 1000
VARIANTS: dict[str, str] = {
    "upstream": "VoVNet.pytorch vovnet39 (also what the Ascend guide exported, unchanged)",
}

# vovnet39 configuration: per stage 2..5.
STAGE_CH = (128, 160, 192, 224)
CONCAT_CH = (256, 512, 768, 1024)
BLOCKS_PER_STAGE = (1, 1, 2, 2)
LAYERS_PER_BLOCK = 5


def _conv_bn_relu(in_ch: int, out_ch: int, name: str, postfix: str, stride: int = 1,
                  kernel_size: int = 3) -> list[tuple[str, nn.Module]]:
    """Conv (no bias), BN, ReLU named `{name}_{postfix}/conv`, `/norm`, `/relu`, as (name, module) pairs."""
    prefix = f"{name}_{postfix}"
    return [
        (f"{prefix}/conv", nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)),
        (f"{prefix}/norm", nn.BatchNorm2d(out_ch)),
        (f"{prefix}/relu", nn.ReLU(inplace=True)),
    ]


def _seq(pairs: list[tuple[str, nn.Module]]) -> nn.Sequential:
    # Registers the '/' names verbatim, in upstream's order (the checkpoint keys depend on both).
    return nn.Sequential(OrderedDict(pairs))


class OSAModule(nn.Module):
    """One-shot aggregation: 5 chained 3x3 convs, concat [input, all 5 outputs], 1x1 conv.

    With `identity=True` (every module after the first in a stage) the input is added to the result;
    there is no ReLU after that add.
    """

    def __init__(self, in_ch: int, stage_ch: int, concat_ch: int, layers: int, name: str,
                 identity: bool = False) -> None:
        super().__init__()
        self.identity = identity
        self.layers = nn.ModuleList(
            _seq(_conv_bn_relu(in_ch if i == 0 else stage_ch, stage_ch, name, str(i))) for i in range(layers)
        )
        self.concat = _seq(_conv_bn_relu(in_ch + layers * stage_ch, concat_ch, name, "concat", kernel_size=1))

    def forward(self, x: Tensor) -> Tensor:
        identity_feat = x
        outputs = [x]
        for layer in self.layers:
            x = layer(x)
            outputs.append(x)
        xt = self.concat(torch.cat(outputs, dim=1))
        if self.identity:
            xt = xt + identity_feat
        return xt


class OSAStage(nn.Sequential):
    """`Pooling` (stages 3-5 only), then `OSA{n}_1` ... `OSA{n}_k`."""

    def __init__(self, in_ch: int, stage_ch: int, concat_ch: int, blocks: int, layers: int, stage_num: int) -> None:
        super().__init__()
        if stage_num != 2:
            self.add_module("Pooling", nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))
        for i in range(blocks):
            name = f"OSA{stage_num}_{i + 1}"
            self.add_module(name, OSAModule(in_ch if i == 0 else concat_ch, stage_ch, concat_ch, layers, name,
                                            identity=(i > 0)))


class VoVNet(nn.Module):
    """VoVNet backbone (stem + 4 OSA stages) with a global-pool + Linear classifier."""

    def __init__(self, stage_ch: tuple[int, ...] = STAGE_CH, concat_ch: tuple[int, ...] = CONCAT_CH,
                 blocks_per_stage: tuple[int, ...] = BLOCKS_PER_STAGE, layers_per_block: int = LAYERS_PER_BLOCK,
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        stem = _seq(
            _conv_bn_relu(3, 64, "stem", "1", stride=2)
            + _conv_bn_relu(64, 64, "stem", "2")
            + _conv_bn_relu(64, 128, "stem", "3", stride=2)
        )
        self.add_module("stem", stem)
        in_chs = (128,) + tuple(concat_ch[:-1])
        self.stage_names: list[str] = []
        for i in range(4):
            name = f"stage{i + 2}"
            self.stage_names.append(name)
            self.add_module(name, OSAStage(in_chs[i], stage_ch[i], concat_ch[i], blocks_per_stage[i],
                                           layers_per_block, i + 2))
        self.classifier = nn.Linear(concat_ch[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)


def build(variant: str = "upstream", with_aux: bool = False) -> nn.Module:
    """Builds VoVNet-39 in eval mode with deterministic weights (seed 0; the global RNG is untouched).

    Raises FrontendError for an unknown variant or `with_aux=True` (the model has no auxiliary head).
    """
    if variant not in VARIANTS:
        raise FrontendError(f"vovnet39: unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    if with_aux:
        raise FrontendError("vovnet39 has no auxiliary head; --with-aux does not apply")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = VoVNet()
    logger.debug("built vovnet39 variant=%s", variant)
    return model.eval()


SPEC = ModelSpec(
    name="vovnet39",
    summary="VoVNet-39 (VoVNet.pytorch), ImageNet 1000-class classifier",
    build=build,
    variants=VARIANTS,
    input_name="image",
    output_names=("class",),
    size_multiple=1,
    eval=EvalSpec(
        task="classification",
        num_classes=NUM_CLASSES,
        dataset="imagenet",
        input_size=(224, 224),
        preprocess="resize-crop",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        metric="topk",
        ignore_index=None,
        output_layout="logits-nc",
        resize_short=256,
        reported={"top1": 0.7678, "top5": 0.9343},
        notes="Reported figures are the guide's om results (upstream README: 76.77 / 93.43).",
    ),
    keys_reference="vovnet39.keys.json",
)
