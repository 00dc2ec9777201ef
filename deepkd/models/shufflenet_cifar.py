"""ShuffleNet V1 and V2 for CIFAR, in the layout of the CRD / mdistiller model zoos.

Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile Devices" (CVPR 2018),
configuration g = 3 (stages 240/480/960, 4/8/4 units); and Ma et al., "ShuffleNet V2: Practical Guidelines for
Efficient CNN Architecture Design" (ECCV 2018), 1.0x (stages 116/232/464, 1024-wide head); both with a stride-1
1x1 24-channel stem and no stem max pool, for 32x32 inputs (Tian et al., ICLR 2020).

Parameter names follow mdistiller's ``ShuffleNetv1.py`` / ``ShuffleNetv2.py`` (``conv1``, ``bn1``,
``layer<k>.<i>.conv<j>`` / ``bn<j>``, ``linear``), so the released CIFAR-100 checkpoints load with ``strict=True``;
weights saved by deepkd's earlier layout (``classifier``, ``left`` / ``right`` / ``branch`` sequences) are mapped
by :func:`deepkd.models.legacy.upgrade_state_dict`. deepkd's earlier ShuffleNet V2 had a 3x3 stem: its weights
load into ``shufflenetv2(num_classes, stem_kernel=3)``.
"""

from __future__ import annotations

import re
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepkd.models._registry import register_model
from deepkd.models.common import ClassifierNet, init_weights
from deepkd.models.legacy import legacy_keys

__all__ = ["ShuffleNetV1", "ShuffleNetV2", "channel_shuffle"]


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` groups: ``[B, g*c, H, W] -> [B, c*g, H, W]``."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)


class ShuffleV1Unit(nn.Module):
    """ShuffleNet unit: grouped 1x1, shuffle, 3x3 depthwise, grouped 1x1; add (stride 1) or concat an avg-pooled
    shortcut (stride 2). ``first_group`` is the grouping of the first 1x1 (1 right after the stem)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int, first_group: int) -> None:
        super().__init__()
        mid = out_ch // 4
        self.stride, self.first_group = stride, first_group
        self.conv1 = _conv(in_ch, mid, 1, groups=first_group)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = _conv(mid, mid, 3, stride=stride, groups=mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = _conv(mid, out_ch, 1, groups=groups)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        if self.first_group > 1:
            out = channel_shuffle(out, self.first_group)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return F.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(ClassifierNet):
    """CIFAR ShuffleNet V1 (g = 3 by default): 1x1 stem, three stages of shuffle units, pool, ``linear``."""

    classifier_attr: ClassVar[str] = "linear"

    def __init__(
        self,
        num_classes: int,
        out_channels: tuple[int, int, int] = (240, 480, 960),
        num_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
        in_channels: int = 3,
    ) -> None:
        super().__init__(num_classes, out_channels[-1])
        stem = 24
        self.conv1 = _conv(in_channels, stem, 1)
        self.bn1 = nn.BatchNorm2d(stem)
        in_ch = stem
        stages: list[nn.Module] = []
        for out_ch, n in zip(out_channels, num_blocks):
            units: list[nn.Module] = []
            for i in range(n):
                # The first unit of a stage concatenates its pooled input, so its branch only makes the difference.
                branch = out_ch - in_ch if i == 0 else out_ch
                first_group = 1 if in_ch == stem else groups
                units.append(ShuffleV1Unit(in_ch, branch, 2 if i == 0 else 1, groups, first_group))
                in_ch = out_ch
            stages.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # mdistiller: avg_pool2d(4) of the 4x4 map, the same mean at 32x32
        self.linear = nn.Linear(out_channels[-1], num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.avgpool(x), 1)


class ShuffleV2Unit(nn.Module):
    """ShuffleNet V2 basic unit: split the channels in halves, transform the second (1x1, 3x3 dw, 1x1), concat,
    shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.split = half  # (not `half`: that would shadow nn.Module.half())
        self.conv1 = _conv(half, half, 1)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = _conv(half, half, 3, groups=half)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = _conv(half, half, 1)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = x[:, : self.split], x[:, self.split :]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([x1, out], 1), 2)


class ShuffleV2DownUnit(nn.Module):
    """ShuffleNet V2 down-sampling unit: two stride-2 branches, each producing half the output channels; the left
    one is ``conv1``/``conv2`` (3x3 dw, 1x1), the right one ``conv3``..``conv5`` (1x1, 3x3 dw, 1x1)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = out_ch // 2
        self.conv1 = _conv(in_ch, in_ch, 3, stride=2, groups=in_ch)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv2 = _conv(in_ch, mid, 1)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = _conv(in_ch, mid, 1)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = _conv(mid, mid, 3, stride=2, groups=mid)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = _conv(mid, mid, 1)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(ClassifierNet):
    """CIFAR ShuffleNet V2 (1.0x by default): stride-1 stem (1x1, as mdistiller's; ``stem_kernel=3`` for deepkd's
    earlier one), three stages (a down unit + ``n`` units), 1x1 head conv, pool, ``linear``."""

    classifier_attr: ClassVar[str] = "linear"

    def __init__(
        self,
        num_classes: int,
        out_channels: tuple[int, int, int, int] = (116, 232, 464, 1024),
        num_blocks: tuple[int, int, int] = (3, 7, 3),
        in_channels: int = 3,
        stem_kernel: int = 1,
    ) -> None:
        super().__init__(num_classes, out_channels[-1])
        self.conv1 = _conv(in_channels, 24, stem_kernel)
        self.bn1 = nn.BatchNorm2d(24)
        in_ch = 24
        stages: list[nn.Module] = []
        for out_ch, n in zip(out_channels[:3], num_blocks):
            stages.append(nn.Sequential(ShuffleV2DownUnit(in_ch, out_ch), *(ShuffleV2Unit(out_ch) for _ in range(n))))
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = _conv(in_ch, out_channels[3], 1)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # mdistiller: avg_pool2d(4) of the 4x4 map, the same mean at 32x32
        self.linear = nn.Linear(out_channels[3], num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return torch.flatten(self.avgpool(x), 1)


@legacy_keys("shufflenetv1", "ShuffleV1")
def _legacy_shufflenetv1(key: str) -> str:
    """``classifier.* -> linear.*`` (the rest of the layout is unchanged)."""
    return re.sub(r"^classifier\.", "linear.", key)


# deepkd's earlier ShuffleNet V2 units held sequences; their indices -> mdistiller's names.
_LEGACY_V2 = {
    "left": {"0": "conv1", "1": "bn1", "2": "conv2", "3": "bn2"},
    "right": {"0": "conv3", "1": "bn3", "3": "conv4", "4": "bn4", "5": "conv5", "6": "bn5"},
    "branch": {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "5": "conv3", "6": "bn3"},
}
_LEGACY_V2_KEY = re.compile(r"(layer\d+\.\d+)\.(left|right|branch)\.(\d+)\.(.*)")


@legacy_keys("shufflenetv2", "ShuffleV2")
def _legacy_shufflenetv2(key: str) -> str:
    """``layer1.0.left.2.weight -> layer1.0.conv2.weight``, ``layer1.1.branch.6.bias -> layer1.1.bn3.bias``...,
    ``classifier.* -> linear.*``. (Its 3x3 stem needs ``stem_kernel=3``.)"""
    match = _LEGACY_V2_KEY.fullmatch(key)
    if match and match[3] in _LEGACY_V2[match[2]]:
        return f"{match[1]}.{_LEGACY_V2[match[2]][match[3]]}.{match[4]}"
    return re.sub(r"^classifier\.", "linear.", key)


@register_model("shufflenetv1")
@register_model("ShuffleV1")
def shufflenetv1(num_classes: int, in_channels: int = 3) -> ShuffleNetV1:
    """CIFAR ShuffleNet V1, g = 3 (mdistiller's ``ShuffleV1``, 949,258 parameters with 100 classes)."""
    return ShuffleNetV1(num_classes, in_channels=in_channels)


@register_model("shufflenetv2")
@register_model("ShuffleV2")
def shufflenetv2(num_classes: int, in_channels: int = 3, stem_kernel: int = 1) -> ShuffleNetV2:
    """CIFAR ShuffleNet V2 1.0x (mdistiller's ``ShuffleV2``, 1,355,528 parameters with 100 classes);
    ``stem_kernel=3`` builds deepkd's earlier 3x3 stem, for its weights."""
    return ShuffleNetV2(num_classes, in_channels=in_channels, stem_kernel=stem_kernel)
