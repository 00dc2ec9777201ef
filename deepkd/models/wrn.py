"""Wide residual networks for CIFAR (pre-activation basic blocks).

Zagoruyko & Komodakis, "Wide Residual Networks" (BMVC 2016), as used in the CRD / mdistiller model zoos
(Tian et al., ICLR 2020): WRN-d-k has ``(d - 4) / 6`` blocks per stage and widths 16k / 32k / 64k.

The parameter names are those of mdistiller's ``mdistiller/models/cifar/wrn.py`` (``block1.layer.0.bn1``...,
``convShortcut``, the final ``bn1``, ``fc``), so the released CRD / mdistiller CIFAR-100 checkpoints load strictly;
weights saved by deepkd before 0.2 (``block1.0.*``, ``shortcut``, ``bn``, ``classifier``) are mapped by
:mod:`deepkd.models.legacy`.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from deepkd.models._registry import register_model
from deepkd.models.common import ClassifierNet, init_weights
from deepkd.models.legacy import legacy_keys

__all__ = ["WideBasicBlock", "WideResNet", "WideStage"]


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
        # The reference's name (camel case), kept so that its checkpoints load.
        self.convShortcut: nn.Module | None = (
            None if self.equal_in_out else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        pre = torch.relu(self.bn1(x))
        out = torch.relu(self.bn2(self.conv1(pre)))
        out2: Tensor = self.conv2(self.dropout(out))
        # As in the reference implementation, the projection shortcut sees the pre-activated input.
        shortcut: Tensor = x if self.convShortcut is None else self.convShortcut(pre)
        return out2 + shortcut


class WideStage(nn.Module):
    """One stage of ``n`` blocks, the first at ``stride``, held in ``self.layer`` (the reference's layout)."""

    def __init__(self, n: int, in_planes: int, planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBasicBlock(in_planes if j == 0 else planes, planes, stride if j == 0 else 1, drop_rate)
                for j in range(n)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.layer(x)
        return out


class WideResNet(ClassifierNet):
    """WRN-depth-widen_factor: 3x3 stem (16 channels), three stages of pre-activation blocks, BN-ReLU, pool, FC.

    The last layer is ``fc``, as in the reference; the global average pooling is adaptive: the reference's 8x8
    pooling on 32x32 inputs, and other input sizes work too.
    """

    classifier_attr = "fc"

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
        self.block1 = WideStage(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = WideStage(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = WideStage(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = torch.relu(self.bn1(x))
        return torch.flatten(self.avgpool(x), 1)


_OLD_BLOCK = re.compile(r"^(block\d+)\.(\d+)\.")


@legacy_keys("wrn_16_2", "wrn_40_1", "wrn_40_2")
def _legacy_key(key: str) -> str:
    """deepkd < 0.2: ``block1.0.shortcut.*`` -> ``block1.layer.0.convShortcut.*``, ``bn.*`` -> ``bn1.*``,
    ``classifier.*`` -> ``fc.*``."""
    if _OLD_BLOCK.match(key):
        key = _OLD_BLOCK.sub(r"\1.layer.\2.", key).replace(".shortcut.", ".convShortcut.")
    elif key.startswith("bn."):
        key = "bn1." + key.removeprefix("bn.")
    elif key.startswith("classifier."):
        key = "fc." + key.removeprefix("classifier.")
    return key


@register_model("wrn_16_1")
def wrn_16_1(num_classes: int, drop_rate: float = 0.0, in_channels: int = 3) -> WideResNet:
    """WRN-16-1 for CIFAR (~0.18M parameters with 100 classes)."""
    return WideResNet(16, 1, num_classes, drop_rate, in_channels)


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
