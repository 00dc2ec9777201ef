"""MobileNetV2 for CIFAR, in the layout of the CRD / mdistiller model zoos.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (CVPR 2018), in the CIFAR variant of
Tian et al., "Contrastive Representation Distillation" (ICLR 2020): expansion ``t = 6``, stride-2 stem, the
second stage kept at stride 1, an expansion 1x1 conv in every block (also for ``t = 1``), plain ReLU, a 1280-wide
head, and width multiplier 0.5 (``mobile_half``, mdistiller's ``MobileNetV2``).

Parameter names follow mdistiller's ``mobilenetv2.py`` (``conv1.0``, ``blocks.<stage>.<block>.conv.<i>``,
``conv2.0``, ``classifier.0``), so the released CIFAR-100 checkpoints load with ``strict=True``; weights saved by
deepkd's earlier layout (one flat ``features`` sequence, a bare ``classifier``) are mapped by
:func:`deepkd.models.legacy.upgrade_state_dict`.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from deepkd.models._registry import register_model
from deepkd.models.common import ClassifierNet, init_weights
from deepkd.models.legacy import legacy_keys

__all__ = ["CifarMobileNetV2", "InvertedResidual"]

# Blocks per stage, as (expansion, channels, blocks, first stride); ``None`` stands for the model's expansion.
# The second stage keeps stride 1 for 32x32 inputs.
_STAGES: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, linear 1x1 projection; identity shortcut when stride 1 and shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_residual = stride == 1 and in_ch == out_ch
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(ClassifierNet):
    """CIFAR MobileNetV2 with expansion ``expand_ratio`` and width multiplier ``width_mult``.

    ``conv1`` (stride-2 stem), ``blocks`` (one ``nn.Sequential`` of :class:`InvertedResidual` per stage), ``conv2``
    (1x1 to the head width), global average pooling and ``classifier`` (a ``nn.Sequential`` holding the linear
    layer, as in mdistiller).
    """

    def __init__(self, num_classes: int, expand_ratio: int = 6, width_mult: float = 0.5, in_channels: int = 3) -> None:
        last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        super().__init__(num_classes, last_channel)
        self.width_mult = width_mult
        in_ch = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_channels, in_ch, 3, stride=2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in _STAGES:
            out_ch = int(c * width_mult)
            stage: list[nn.Module] = []
            for i in range(n):
                stage.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, expand_ratio if t is None else t))
                in_ch = out_ch
            self.blocks.append(nn.Sequential(*stage))
        self.conv2 = _conv_bn_relu(in_ch, last_channel, 1)
        # mdistiller pools the 2x2 map of a 32x32 input with AvgPool2d(2, ceil_mode=True): the same global mean there.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last_channel, num_classes))
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        return torch.flatten(self.avgpool(self.conv2(x)), 1)


def _legacy_block_names() -> dict[str, str]:
    """deepkd's earlier flat ``features.<i>`` index of each layer -> its mdistiller module path (the stem's conv,
    BN and ReLU were ``features.0..2``, then one entry per block, then the head's conv and BN)."""
    names = {"0": "conv1.0", "1": "conv1.1"}
    index = 3
    for stage, (_, _, n, _) in enumerate(_STAGES):
        for block in range(n):
            names[str(index)] = f"blocks.{stage}.{block}"
            index += 1
    names[str(index)], names[str(index + 1)] = "conv2.0", "conv2.1"
    return names


_LEGACY_FEATURES = _legacy_block_names()
_LEGACY_KEY = re.compile(r"features\.(\d+)\.(.*)")


@legacy_keys("mobilenetv2", "mobile_half", "MobileNetV2")
def _legacy_mobilenetv2(key: str) -> str:
    """``features.0.weight -> conv1.0.weight``, ``features.3.conv.3.weight -> blocks.0.0.conv.3.weight``,
    ``features.20.weight -> conv2.0.weight``, ``classifier.weight -> classifier.0.weight``."""
    match = _LEGACY_KEY.fullmatch(key)
    if match and match[1] in _LEGACY_FEATURES:
        return f"{_LEGACY_FEATURES[match[1]]}.{match[2]}"
    if key in ("classifier.weight", "classifier.bias"):
        return key.replace("classifier.", "classifier.0.")
    return key


@register_model("mobilenetv2")
@register_model("mobile_half")
@register_model("MobileNetV2")
def mobilenetv2(
    num_classes: int, width_mult: float = 0.5, expand_ratio: int = 6, in_channels: int = 3
) -> CifarMobileNetV2:
    """CIFAR MobileNetV2 of the KD literature, width 0.5 by default (mdistiller's ``mobile_half``, 812,836 params
    with 100 classes)."""
    return CifarMobileNetV2(num_classes, expand_ratio, width_mult, in_channels)
