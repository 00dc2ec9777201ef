"""Small models for quick CPU runs: Fashion-MNIST (28x28x1) and sklearn digits (8x8x1).

All convolutional ones accept any input of at least 8x8 (adaptive average pooling before the classifier) and
any number of input channels (``in_channels``). ``small_resnet`` follows He et al., "Deep Residual Learning for
Image Recognition" (CVPR 2016); the others are plain conv / fully-connected stacks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from deepkd.errors import InputError
from deepkd.models._registry import register_model
from deepkd.models.common import ClassifierNet, init_weights
from deepkd.models.resnet_cifar import BasicBlock

__all__ = ["MLP", "SmallCNN", "SmallResNet", "TinyCNN"]


def _conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class _ConvStack(ClassifierNet):
    """``features`` (a conv stack ending in a flattened global average pool) followed by one linear layer."""

    def __init__(self, num_classes: int, feature_dim: int, layers: Sequence[nn.Module]) -> None:
        super().__init__(num_classes, feature_dim)
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(feature_dim, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        out: Tensor = self.features(x)
        return out


class SmallCNN(_ConvStack):
    """Four 3x3 conv-BN-ReLU layers (``w, w, 2w, 2w`` channels) with 2x2 max pooling after the 2nd and 4th,
    global average pooling and a linear layer (~66k parameters at ``width=32``, 10 classes)."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32) -> None:
        layers = [
            *_conv_bn_relu(in_channels, width),
            *_conv_bn_relu(width, width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(width, 2 * width),
            *_conv_bn_relu(2 * width, 2 * width),
            nn.MaxPool2d(2),
        ]
        super().__init__(num_classes, 2 * width, layers)


class TinyCNN(_ConvStack):
    """Three 3x3 conv-BN-ReLU layers (``w, 2w, 2w`` channels) with max pooling between them, global average
    pooling and a linear layer: a deliberately small student (~15k parameters at ``width=16``, 10 classes)."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 16) -> None:
        layers = [
            *_conv_bn_relu(in_channels, width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(2 * width, 2 * width),
        ]
        super().__init__(num_classes, 2 * width, layers)


class SmallResNet(ClassifierNet):
    """A small ResNet for 28x28 inputs: stride-1 3x3 stem, three stages of basic blocks (widths ``w, 2w, 4w``,
    the last two at stride 2), global average pooling, linear (~0.31M parameters at ``width=32``, 10 classes)."""

    def __init__(
        self, num_classes: int, in_channels: int = 1, width: int = 32, blocks: Sequence[int] = (1, 1, 1)
    ) -> None:
        if len(blocks) != 3 or any(b < 1 for b in blocks):
            raise ValueError(f"blocks must be three positive block counts, got {tuple(blocks)}")
        widths = (width, 2 * width, 4 * width)
        super().__init__(num_classes, widths[-1])
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, width))
        in_planes = width
        stages: list[nn.Module] = []
        for i, (planes, n) in enumerate(zip(widths, blocks)):
            units: list[nn.Module] = []
            for j in range(n):
                units.append(BasicBlock(in_planes, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(*units))
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[-1], num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return torch.flatten(self.avgpool(self.layers(self.stem(x))), 1)


class MLP(ClassifierNet):
    """Flatten, then ``Linear-ReLU(-Dropout)`` hidden layers, then a linear classifier (e.g. for 8x8 digits)."""

    def __init__(
        self,
        num_classes: int,
        in_features: int = 64,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
    ) -> None:
        hidden = tuple(hidden)
        if in_features < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"in_features and hidden sizes must be positive, got {in_features} and {hidden}")
        super().__init__(num_classes, hidden[-1] if hidden else in_features)
        self.in_features = in_features
        layers: list[nn.Module] = []
        prev = in_features
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = h
        self.hidden = nn.Sequential(*layers)
        self.classifier = nn.Linear(prev, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        x = torch.flatten(x, 1)
        if x.shape[1] != self.in_features:
            raise InputError(
                f"mlp expects {self.in_features} features per sample (pass in_features=...), "
                f"got input of shape {tuple(x.shape)} with {x.shape[1]}"
            )
        out: Tensor = self.hidden(x)
        return out


@register_model("small_cnn")
def small_cnn(num_classes: int, in_channels: int = 1, width: int = 32) -> SmallCNN:
    """Small conv net for 28x28 / 8x8 grey images (~66k parameters, 10 classes)."""
    return SmallCNN(num_classes, in_channels, width)


@register_model("tiny_cnn")
def tiny_cnn(num_classes: int, in_channels: int = 1, width: int = 16) -> TinyCNN:
    """Tiny conv net, a much smaller student than ``small_cnn`` (~15k parameters, 10 classes)."""
    return TinyCNN(num_classes, in_channels, width)


@register_model("small_resnet")
def small_resnet(
    num_classes: int, in_channels: int = 1, width: int = 32, blocks: Sequence[int] = (1, 1, 1)
) -> SmallResNet:
    """Small ResNet for 28x28 grey images (~0.31M parameters, 10 classes)."""
    return SmallResNet(num_classes, in_channels, width, blocks)


@register_model("mlp")
def mlp(num_classes: int, in_features: int = 64, hidden: Sequence[int] = (256, 128), dropout: float = 0.0) -> MLP:
    """Multi-layer perceptron on flattened inputs (defaults fit the 8x8 sklearn digits)."""
    return MLP(num_classes, in_features, hidden, dropout)
