"""ShuffleNet V1 and V2 for CIFAR, as in the CRD / mdistiller model zoos.

Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile Devices" (CVPR 2018),
configuration g = 3 (stages 240/480/960, 4/8/4 units) with a 1x1 24-channel stem; and Ma et al., "ShuffleNet V2:
Practical Guidelines for Efficient CNN Architecture Design" (ECCV 2018), 1.0x (stages 116/232/464, 1024-wide
head) with a stride-1 3x3 stem; both without the stem max pool, for 32x32 inputs (Tian et al., ICLR 2020).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deepkd.models._registry import register_model
from deepkd.models.common import ClassifierNet, init_weights

__all__ = ["ShuffleNetV1", "ShuffleNetV2", "channel_shuffle"]


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` groups: ``[B, g*c, H, W] -> [B, c*g, H, W]``."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleV1Unit(nn.Module):
    """ShuffleNet unit: grouped 1x1, shuffle, 3x3 depthwise, grouped 1x1; add (stride 1) or concat an avg-pooled
    shortcut (stride 2)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int, first_group: int) -> None:
        super().__init__()
        mid = out_ch // 4
        self.stride, self.first_group = stride, first_group
        self.conv1 = nn.Conv2d(in_ch, mid, 1, groups=first_group, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_ch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        if self.first_group > 1:
            out = channel_shuffle(out, self.first_group)
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return torch.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(ClassifierNet):
    """CIFAR ShuffleNet V1 (g = 3 by default): 1x1 stem, three stages of shuffle units, pool, FC."""

    def __init__(
        self,
        num_classes: int,
        out_channels: tuple[int, int, int] = (240, 480, 960),
        num_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
        in_channels: int = 3,
    ) -> None:
        super().__init__(num_classes, out_channels[-1])
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_ch = 24
        stages: list[nn.Module] = []
        for out_ch, n in zip(out_channels, num_blocks):
            units: list[nn.Module] = []
            for i in range(n):
                # The first unit of a stage concatenates its input, so its branch only makes the difference.
                branch = out_ch - in_ch if i == 0 else out_ch
                units.append(ShuffleV1Unit(in_ch, branch, 2 if i == 0 else 1, groups, 1 if in_ch == 24 else groups))
                in_ch = out_ch
            stages.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(out_channels[-1], num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.avgpool(x), 1)


class ShuffleV2Unit(nn.Module):
    """ShuffleNet V2 basic unit: split the channels in halves, transform one (1x1, 3x3 dw, 1x1), concat, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.split = half  # (not `half`: that would shadow nn.Module.half())
        self.branch = nn.Sequential(
            nn.Conv2d(half, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False),
            nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = x[:, : self.split], x[:, self.split :]
        return channel_shuffle(torch.cat([x1, self.branch(x2)], 1), 2)


class ShuffleV2DownUnit(nn.Module):
    """ShuffleNet V2 down-sampling unit: two stride-2 branches, each producing half the output channels."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = out_ch // 2
        self.left = nn.Sequential(
            nn.Conv2d(in_ch, in_ch, 3, stride=2, padding=1, groups=in_ch, bias=False),
            nn.BatchNorm2d(in_ch),
            nn.Conv2d(in_ch, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
        )
        self.right = nn.Sequential(
            nn.Conv2d(in_ch, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.Conv2d(mid, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


class ShuffleNetV2(ClassifierNet):
    """CIFAR ShuffleNet V2 (1.0x by default): 3x3 stem, three stages (a down unit + ``n`` units), 1x1 head."""

    def __init__(
        self,
        num_classes: int,
        out_channels: tuple[int, int, int, int] = (116, 232, 464, 1024),
        num_blocks: tuple[int, int, int] = (3, 7, 3),
        in_channels: int = 3,
    ) -> None:
        super().__init__(num_classes, out_channels[-1])
        self.conv1 = nn.Conv2d(in_channels, 24, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_ch = 24
        stages: list[nn.Module] = []
        for out_ch, n in zip(out_channels[:3], num_blocks):
            stages.append(nn.Sequential(ShuffleV2DownUnit(in_ch, out_ch), *(ShuffleV2Unit(out_ch) for _ in range(n))))
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(in_ch, out_channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(out_channels[3], num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return torch.flatten(self.avgpool(x), 1)


@register_model("shufflenetv1")
def shufflenetv1(num_classes: int, in_channels: int = 3) -> ShuffleNetV1:
    """CIFAR ShuffleNet V1, g = 3 (~0.95M parameters with 100 classes)."""
    return ShuffleNetV1(num_classes, in_channels=in_channels)


@register_model("shufflenetv2")
def shufflenetv2(num_classes: int, in_channels: int = 3) -> ShuffleNetV2:
    """CIFAR ShuffleNet V2 1.0x (~1.36M parameters with 100 classes)."""
    return ShuffleNetV2(num_classes, in_channels=in_channels)
