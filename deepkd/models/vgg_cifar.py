"""VGG networks with batch norm for CIFAR.

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition" (ICLR 2015), in the
CIFAR variant of the CRD / mdistiller model zoos (Tian et al., ICLR 2020): five conv blocks (3x3 conv with bias,
BN, ReLU), max pooling between them, global average pooling and a single 512 -> classes linear layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from deepkd.models._registry import register_model
from deepkd.models.common import ClassifierNet, init_weights

__all__ = ["VGG_CONFIGS", "CifarVGG"]

VGG_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def _conv_block(in_channels: int, widths: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        in_channels = w
    return nn.Sequential(*layers)


class CifarVGG(ClassifierNet):
    """CIFAR VGG-BN: five conv blocks; 2x2 max pooling after the first three (and after the fourth when its map
    is at least 8x8, i.e. for inputs of 64x64 and up, as in the reference), then global average pooling."""

    def __init__(self, cfg: Sequence[Sequence[int]], num_classes: int, in_channels: int = 3) -> None:
        if len(cfg) != 5:
            raise ValueError(f"a VGG config has five blocks, got {len(cfg)}")
        super().__init__(num_classes, cfg[-1][-1])
        blocks: list[nn.Module] = []
        for widths in cfg:
            blocks.append(_conv_block(in_channels, widths))
            in_channels = widths[-1]
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.MaxPool2d(2, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < 3 or (i == 3 and min(x.shape[-2:]) >= 8):
                x = self.pool(x)
        return torch.flatten(self.avgpool(x), 1)


@register_model("vgg8")
def vgg8(num_classes: int, in_channels: int = 3) -> CifarVGG:
    """VGG-8 with BN for CIFAR (~3.97M parameters with 100 classes)."""
    return CifarVGG(VGG_CONFIGS["vgg8"], num_classes, in_channels)


@register_model("vgg11")
def vgg11(num_classes: int, in_channels: int = 3) -> CifarVGG:
    """VGG-11 with BN for CIFAR (~9.28M parameters with 100 classes)."""
    return CifarVGG(VGG_CONFIGS["vgg11"], num_classes, in_channels)


@register_model("vgg13")
def vgg13(num_classes: int, in_channels: int = 3) -> CifarVGG:
    """VGG-13 with BN for CIFAR (~9.46M parameters with 100 classes)."""
    return CifarVGG(VGG_CONFIGS["vgg13"], num_classes, in_channels)
