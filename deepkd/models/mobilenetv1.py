"""MobileNetV1 for ImageNet, in the parameter layout of the distillation literature's zoo (mdistiller).

Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications" (2017): a
stride-2 3x3 stem and 13 depthwise-separable blocks (3x3 depthwise conv, BN, ReLU, 1x1 pointwise conv, BN, ReLU),
width 32 -> 1024, global average pooling and one linear layer. It is the student of the ResNet50 -> MobileNetV1
ImageNet pair of the KD, DKD and DOT papers.

The layers sit in one ``nn.Sequential`` named ``model`` (index 0 the stem, 1-13 the blocks, each itself a
``Sequential`` of six layers) and the classifier is ``fc``, exactly as in megvii-research/mdistiller
``mdistiller/models/imagenet/mobilenetv1.py``, so the weights that code base releases load strictly. One
difference: the final pooling is adaptive (one value per channel for any input size) where mdistiller's is a fixed
7x7 window; on 224x224 inputs the two are the same and neither has parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deepkd.models._registry import register_model
from deepkd.models.common import ClassifierNet, init_weights

__all__ = ["MobileNetV1", "mobilenet_v1"]

# (output channels, stride) of the 13 depthwise-separable blocks
_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


def _stem(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
    )


def _separable(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=False),
        nn.BatchNorm2d(in_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_ch, out_ch, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(ClassifierNet):
    """ImageNet MobileNetV1 (width 1.0, 4.2M parameters with 1000 classes) in mdistiller's parameter layout."""

    classifier_attr = "fc"

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__(num_classes, _BLOCKS[-1][0])
        layers: list[nn.Module] = [_stem(in_channels, 32, 2)]
        in_ch = 32
        for out_ch, stride in _BLOCKS:
            layers.append(_separable(in_ch, out_ch, stride))
            in_ch = out_ch
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return torch.flatten(self.model(x), 1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc(self.forward_features(x))
        return out


@register_model("mobilenet_v1")
@register_model("MobileNetV1")
def mobilenet_v1(num_classes: int, in_channels: int = 3) -> MobileNetV1:
    """ImageNet MobileNetV1 (alias ``MobileNetV1``, mdistiller's name), randomly initialised."""
    return MobileNetV1(num_classes, in_channels)
