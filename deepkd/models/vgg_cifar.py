"""VGG networks with batch norm for CIFAR.

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition" (ICLR 2015), in the
CIFAR variant of the CRD / mdistiller model zoos (Tian et al., ICLR 2020): five conv blocks (3x3 conv with bias,
BN, ReLU), max pooling between them, global average pooling and a single 512 -> classes linear layer.

The parameter names are those of mdistiller's ``mdistiller/models/cifar/vgg.py`` (``block0.0``, ``block0.1``...,
``classifier``), so the released CRD / mdistiller CIFAR-100 checkpoints load strictly; weights saved by deepkd
before 0.2 (``blocks.0.*``) are mapped by :mod:`deepkd.models.legacy`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from deepkd.models._registry import register_model
from deepkd.models.common import ClassifierNet, init_weights
from deepkd.models.legacy import legacy_keys

__all__ = ["VGG_CONFIGS", "CifarVGG"]

VGG_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def _conv_block(in_channels: int, widths: Sequence[int]) -> nn.Sequential:
    """conv-BN-ReLU per width, without the last ReLU (applied in ``forward``, as in the reference)."""
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        in_channels = w
    return nn.Sequential(*layers[:-1])


class CifarVGG(ClassifierNet):
    """CIFAR VGG-BN: five conv blocks ``block0`` ... ``block4``; 2x2 max pooling after the first three (and after
    the fourth when its map is at least 8x8, i.e. for inputs of 64x64 and up, as in the reference), then global
    average pooling."""

    block0: nn.Sequential
    block1: nn.Sequential
    block2: nn.Sequential
    block3: nn.Sequential
    block4: nn.Sequential

    def __init__(self, cfg: Sequence[Sequence[int]], num_classes: int, in_channels: int = 3) -> None:
        if len(cfg) != 5:
            raise ValueError(f"a VGG config has five blocks, got {len(cfg)}")
        super().__init__(num_classes, cfg[-1][-1])
        for i, widths in enumerate(cfg):
            self.add_module(f"block{i}", _conv_block(in_channels, widths))
            in_channels = widths[-1]
        self.pool0 = nn.MaxPool2d(2, 2)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.pool3 = nn.MaxPool2d(2, 2)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.pool0(torch.relu(self.block0(x)))
        x = self.pool1(torch.relu(self.block1(x)))
        x = self.pool2(torch.relu(self.block2(x)))
        x = torch.relu(self.block3(x))
        if min(x.shape[-2:]) >= 8:
            x = self.pool3(x)
        x = torch.relu(self.block4(x))
        return torch.flatten(self.pool4(x), 1)


_OLD_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@legacy_keys("vgg8", "vgg11", "vgg13")
def _legacy_key(key: str) -> str:
    """deepkd < 0.2 held the conv blocks in a list: ``blocks.0.*`` -> ``block0.*``."""
    return _OLD_BLOCK.sub(r"block\1.", key)


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


@register_model("vgg16")
def vgg16(num_classes: int, in_channels: int = 3) -> CifarVGG:
    """VGG-16 with BN for CIFAR (~14.8M parameters with 100 classes)."""
    return CifarVGG(VGG_CONFIGS["vgg16"], num_classes, in_channels)


@register_model("vgg19")
def vgg19(num_classes: int, in_channels: int = 3) -> CifarVGG:
    """VGG-19 with BN for CIFAR (~20.1M parameters with 100 classes)."""
    return CifarVGG(VGG_CONFIGS["vgg19"], num_classes, in_channels)
