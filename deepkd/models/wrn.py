"""Wide residual networks for CIFAR (pre-activation basic blocks).

Zagoruyko & Komodakis, "Wide Residual Networks" (BMVC 2016), as used in the CRD / mdistiller model zoos
(Tian et al., ICLR 2020): WRN-d-k has ``(d - 4) / 6`` blocks per stage and widths 16k / 32k / 64k.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deepkd.models._registry import register_model
from deepkd.models.common import ClassifierNet, init_weights

__all__ = ["WideBasicBlock", "WideResNet"]


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, plus a 1x1-conv shortcut on shape change."""

    def __init__(self, in_planes: int, planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.equal_in_out = in_planes == planes and stride == 1
        self.shortcut: nn.Module | None = (
            None if self.equal_in_out else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        pre = torch.relu(self.bn1(x))
        out = torch.relu(self.bn2(self.conv1(pre)))
        out2: Tensor = self.conv2(self.dropout(out))
        # As in the reference implementation, the projection shortcut sees the pre-activated input.
        shortcut: Tensor = x if self.shortcut is None else self.shortcut(pre)
        return out2 + shortcut


class WideResNet(ClassifierNet):
    """WRN-depth-widen_factor: 3x3 stem (16 channels), three stages of pre-activation blocks, BN-ReLU, pool, FC."""

    def __init__(
        self, depth: int, widen_factor: int, num_classes: int, drop_rate: float = 0.0, in_channels: int = 3
    ) -> None:
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        super().__init__(num_classes, widths[3])
        n = (depth - 4) // 6
        self.depth, self.widen_factor = depth, widen_factor
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        in_planes = widths[0]
        stages: list[nn.Module] = []
        for i, planes in enumerate(widths[1:]):
            blocks: list[nn.Module] = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(WideBasicBlock(in_planes, planes, stride, drop_rate))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(widths[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[3], num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = torch.relu(self.bn(x))
        return torch.flatten(self.avgpool(x), 1)


@register_model("wrn_16_2")
def wrn_16_2(num_classes: int, drop_rate: float = 0.0, in_channels: int = 3) -> WideResNet:
    """WRN-16-2 for CIFAR (~0.70M parameters with 100 classes)."""
    return WideResNet(16, 2, num_classes, drop_rate, in_channels)


@register_model("wrn_40_1")
def wrn_40_1(num_classes: int, drop_rate: float = 0.0, in_channels: int = 3) -> WideResNet:
    """WRN-40-1 for CIFAR (~0.57M parameters with 100 classes)."""
    return WideResNet(40, 1, num_classes, drop_rate, in_channels)


@register_model("wrn_40_2")
def wrn_40_2(num_classes: int, drop_rate: float = 0.0, in_channels: int = 3) -> WideResNet:
    """WRN-40-2 for CIFAR (~2.26M parameters with 100 classes)."""
    return WideResNet(40, 2, num_classes, drop_rate, in_channels)
