"""CIFAR ResNets (basic blocks, 32x32 inputs) of the distillation literature.

He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), sec. 4.2, in the variant used by the
CRD / mdistiller model zoos (Tian et al., "Contrastive Representation Distillation", ICLR 2020): 1x1-conv + BN
projection shortcuts whenever the shape changes, and the ``x4`` models with a 32-channel stem and stage widths
64/128/256 instead of 16 / 16/32/64.

The parameter names are those of mdistiller's ``mdistiller/models/cifar/resnet.py`` (``conv1``, ``bn1``,
``layer1.0.downsample.0``..., ``fc``), so the released CRD / mdistiller CIFAR-100 checkpoints load strictly; weights
saved by deepkd before 0.2 (``classifier.*``) are mapped by :mod:`deepkd.models.legacy`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from deepkd.models._registry import register_model
from deepkd.models.common import ClassifierNet, init_weights
from deepkd.models.legacy import legacy_keys

__all__ = ["BasicBlock", "CifarResNet"]


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with an identity (or 1x1-conv + BN projection) shortcut, ReLU after the sum."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.downsample(x))


class CifarResNet(ClassifierNet):
    """CIFAR ResNet of depth ``6n + 2``: a 3x3 stem, three stages of ``n`` basic blocks, global average pooling.

    ``widths`` is ``(stem, stage1, stage2, stage3)``: ``(16, 16, 32, 64)`` for resnet8..resnet110 and
    ``(32, 64, 128, 256)`` for resnet8x4 / resnet32x4. The last layer is ``fc``, as in the reference; the global
    average pooling is adaptive: the reference's 8x8 pooling on 32x32 inputs, and other input sizes work too.
    """

    classifier_attr = "fc"

    def __init__(self, depth: int, widths: Sequence[int], num_classes: int, in_channels: int = 3) -> None:
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        if len(widths) != 4:
            raise ValueError(f"widths must be (stem, stage1, stage2, stage3), got {tuple(widths)}")
        super().__init__(num_classes, widths[3])
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = widths[0]
        stages: list[nn.Module] = []
        for i, planes in enumerate(widths[1:]):
            blocks: list[nn.Module] = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.avgpool(x), 1)


_BASE = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


@legacy_keys(
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4", "resnet32x4"
)
def _legacy_key(key: str) -> str:
    """deepkd < 0.2 named the last layer ``classifier``; everything else already had the reference's name."""
    return "fc." + key.removeprefix("classifier.") if key.startswith("classifier.") else key


@register_model("resnet8")
def resnet8(num_classes: int, in_channels: int = 3) -> CifarResNet:
    """ResNet-8 for CIFAR (~0.08M parameters with 100 classes)."""
    return CifarResNet(8, _BASE, num_classes, in_channels)


@register_model("resnet14")
def resnet14(num_classes: int, in_channels: int = 3) -> CifarResNet:
    """ResNet-14 for CIFAR (~0.18M parameters with 100 classes)."""
    return CifarResNet(14, _BASE, num_classes, in_channels)


@register_model("resnet20")
def resnet20(num_classes: int, in_channels: int = 3) -> CifarResNet:
    """ResNet-20 for CIFAR (~0.28M parameters with 100 classes)."""
    return CifarResNet(20, _BASE, num_classes, in_channels)


@register_model("resnet32")
def resnet32(num_classes: int, in_channels: int = 3) -> CifarResNet:
    """ResNet-32 for CIFAR (~0.47M parameters with 100 classes)."""
    return CifarResNet(32, _BASE, num_classes, in_channels)


@register_model("resnet44")
def resnet44(num_classes: int, in_channels: int = 3) -> CifarResNet:
    """ResNet-44 for CIFAR (~0.67M parameters with 100 classes)."""
    return CifarResNet(44, _BASE, num_classes, in_channels)


@register_model("resnet56")
def resnet56(num_classes: int, in_channels: int = 3) -> CifarResNet:
    """ResNet-56 for CIFAR (~0.86M parameters with 100 classes)."""
    return CifarResNet(56, _BASE, num_classes, in_channels)


@register_model("resnet110")
def resnet110(num_classes: int, in_channels: int = 3) -> CifarResNet:
    """ResNet-110 for CIFAR (~1.74M parameters with 100 classes)."""
    return CifarResNet(110, _BASE, num_classes, in_channels)


@register_model("resnet8x4")
def resnet8x4(num_classes: int, in_channels: int = 3) -> CifarResNet:
    """ResNet-8x4 for CIFAR, 4x wider (~1.23M parameters with 100 classes)."""
    return CifarResNet(8, _X4, num_classes, in_channels)


@register_model("resnet32x4")
def resnet32x4(num_classes: int, in_channels: int = 3) -> CifarResNet:
    """ResNet-32x4 for CIFAR, 4x wider (~7.43M parameters with 100 classes)."""
    return CifarResNet(32, _X4, num_classes, in_channels)
