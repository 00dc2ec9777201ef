"""MobileNetV2 for CIFAR, as in the CRD / mdistiller model zoos.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (CVPR 2018), in the CIFAR variant of
Tian et al., "Contrastive Representation Distillation" (ICLR 2020): expansion ``t = 6``, stride-2 stem, the
second stage kept at stride 1, an expansion 1x1 conv in every block (also for ``t = 1``), plain ReLU, a 1280-wide
head, and width multiplier 0.5 (``mobile_half``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from deepkd.models._registry import register_model
from deepkd.models.common import ClassifierNet, init_weights

__all__ = ["CifarMobileNetV2", "InvertedResidual"]


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, linear 1x1 projection; identity shortcut when stride 1 and shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_residual = stride == 1 and in_ch == out_ch
        self.conv = nn.Sequential(
            *_conv_bn_relu(in_ch, hidden, 1),
            *_conv_bn_relu(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(ClassifierNet):
    """CIFAR MobileNetV2 with expansion ``expand_ratio`` and width multiplier ``width_mult``."""

    def __init__(self, num_classes: int, expand_ratio: int = 6, width_mult: float = 0.5, in_channels: int = 3) -> None:
        # (expansion, channels, blocks, first stride); the second stage's stride is 1 for 32x32 inputs.
        setting = [
            (1, 16, 1, 1),
            (expand_ratio, 24, 2, 1),
            (expand_ratio, 32, 3, 2),
            (expand_ratio, 64, 4, 2),
            (expand_ratio, 96, 3, 1),
            (expand_ratio, 160, 3, 2),
            (expand_ratio, 320, 1, 1),
        ]
        last_channel = math.ceil(1280 * width_mult / 8) * 8 if width_mult > 1.0 else 1280
        super().__init__(num_classes, last_channel)
        self.width_mult = width_mult
        in_ch = int(32 * width_mult)
        layers: list[nn.Module] = _conv_bn_relu(in_channels, in_ch, 3, stride=2)
        for t, c, n, s in setting:
            out_ch = int(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        layers += _conv_bn_relu(in_ch, last_channel, 1)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last_channel, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return torch.flatten(self.avgpool(self.features(x)), 1)


@register_model("mobilenetv2")
@register_model("mobile_half")
def mobilenetv2(
    num_classes: int, width_mult: float = 0.5, expand_ratio: int = 6, in_channels: int = 3
) -> CifarMobileNetV2:
    """CIFAR MobileNetV2 of the KD literature, width 0.5 by default (CRD's ``mobile_half``, ~0.81M params)."""
    return CifarMobileNetV2(num_classes, expand_ratio, width_mult, in_channels)
