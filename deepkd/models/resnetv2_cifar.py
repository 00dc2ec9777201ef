"""ImageNet-depth ResNets (18 / 34 / 50) adapted to 32x32 inputs, as in the distillation literature.

He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), in the CIFAR variant of the CRD / mdistiller
model zoos (Tian et al., "Contrastive Representation Distillation", ICLR 2020; mdistiller's
``mdistiller/models/cifar/resnetv2.py``): a stride-1 3x3 stem with no max pooling, four stages of basic (18, 34) or
bottleneck (50) blocks at widths 64/128/256/512 (the last three starting at stride 2), 1x1-conv + BN projection
shortcuts whenever the shape changes, global average pooling and one linear layer.

The parameter names are the reference's (``conv1``, ``bn1``, ``layer1.0.shortcut.0``..., ``linear``), so its
released CIFAR-100 checkpoints load strictly. Registered as ``resnet18_cifar`` / ``resnet34_cifar`` /
``resnet50_cifar`` with the literature's names ``ResNet18`` / ``ResNet34`` / ``ResNet50`` as aliases; deepkd's
``resnet18`` / ``resnet50`` are torchvision's ImageNet models.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from deepkd.models._registry import register_model
from deepkd.models.common import ClassifierNet, init_weights

__all__ = ["CifarResNetV2", "ResNetV2BasicBlock", "ResNetV2Bottleneck"]


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Identity (an empty ``Sequential``) when the shape is kept, else a strided 1x1 conv + BN projection."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


class ResNetV2BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers (the first at ``stride``), the shortcut added before the last ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetV2Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (at ``stride``), 1x1 expand to ``4 * planes``, each with BN; shortcut added before the ReLU."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNetV2(ClassifierNet):
    """CIFAR ResNet-18/34/50: 64-channel stride-1 3x3 stem + BN + ReLU, four stages of ``blocks`` blocks at widths
    64/128/256/512 (times the block's expansion), global average pooling, ``linear`` (the reference's name)."""

    classifier_attr = "linear"

    def __init__(
        self,
        block: type[ResNetV2BasicBlock | ResNetV2Bottleneck],
        blocks: Sequence[int],
        num_classes: int,
        in_channels: int = 3,
    ) -> None:
        if len(blocks) != 4 or any(b < 1 for b in blocks):
            raise ValueError(f"blocks must be four positive block counts, got {tuple(blocks)}")
        super().__init__(num_classes, 512 * block.expansion)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages: list[nn.Sequential] = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            units: list[nn.Module] = []
            for j in range(n):
                units.append(block(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512 * block.expansion, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


@register_model("resnet18_cifar")
@register_model("ResNet18")
def resnet18_cifar(num_classes: int, in_channels: int = 3) -> CifarResNetV2:
    """ResNet-18 for CIFAR (the literature's ``ResNet18``; ~11.2M parameters with 100 classes)."""
    return CifarResNetV2(ResNetV2BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


@register_model("resnet34_cifar")
@register_model("ResNet34")
def resnet34_cifar(num_classes: int, in_channels: int = 3) -> CifarResNetV2:
    """ResNet-34 for CIFAR (the literature's ``ResNet34``; ~21.3M parameters with 100 classes)."""
    return CifarResNetV2(ResNetV2BasicBlock, (3, 4, 6, 3), num_classes, in_channels)


@register_model("resnet50_cifar")
@register_model("ResNet50")
def resnet50_cifar(num_classes: int, in_channels: int = 3) -> CifarResNetV2:
    """ResNet-50 for CIFAR (the literature's ``ResNet50``; ~23.7M parameters with 100 classes)."""
    return CifarResNetV2(ResNetV2Bottleneck, (3, 4, 6, 3), num_classes, in_channels)
