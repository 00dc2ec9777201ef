"""ImageNet-style classifiers from torchvision, built from scratch (``weights=None``: nothing is ever downloaded).

He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016); Sandler et al., "MobileNetV2" (CVPR
2018); Ma et al., "ShuffleNet V2" (ECCV 2018); Howard et al., "Searching for MobileNetV3" (ICCV 2019).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torchvision.models as tvm  # type: ignore[import-untyped, unused-ignore]
from torch import nn

from deepkd.errors import ConfigError
from deepkd.models._registry import register_model

__all__ = ["TORCHVISION_MODELS", "build_torchvision"]

#: registered name -> torchvision builder name
TORCHVISION_MODELS: dict[str, str] = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "resnet101": "resnet101",
    "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3_small": "mobilenet_v3_small",
    "shufflenet_v2_x1_0": "shufflenet_v2_x1_0",
}

_FORBIDDEN = ("weights", "weights_backbone", "pretrained", "progress")


def build_torchvision(tv_name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build ``torchvision.models.<tv_name>(weights=None, num_classes=num_classes, **kwargs)``."""
    bad = [k for k in _FORBIDDEN if k in kwargs]
    if bad:
        raise ConfigError(
            f"model {tv_name!r}: {', '.join(bad)} not supported; deepkd never downloads pretrained weights"
        )
    builder: Callable[..., nn.Module] = getattr(tvm, tv_name)
    try:
        model = builder(weights=None, num_classes=num_classes, **kwargs)
    except TypeError as exc:  # an unknown keyword argument
        raise ConfigError(f"model {tv_name!r}: {exc}") from None
    model.num_classes = num_classes  # type: ignore[assignment]  # torchvision models lack the attribute
    return model


def _make_builder(name: str, tv_name: str) -> Callable[..., nn.Module]:
    def builder(num_classes: int, **kwargs: Any) -> nn.Module:
        return build_torchvision(tv_name, num_classes, **kwargs)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"torchvision ``{tv_name}`` with random initialisation (``weights=None``)."
    return builder


for _name, _tv_name in TORCHVISION_MODELS.items():
    register_model(_name)(_make_builder(_name, _tv_name))
