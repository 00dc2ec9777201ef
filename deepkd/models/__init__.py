"""The deepkd model zoo: named classifier builders, each returning an ``nn.Module`` whose forward gives logits.

>>> from deepkd.models import build_model, count_parameters
>>> model = build_model("resnet8", num_classes=100)
>>> count_parameters(model)
83892

Families (see each module for the reference paper):

* CIFAR (32x32) models of the distillation literature (CRD / mdistiller zoos): ``resnet8`` ... ``resnet110``,
  ``resnet8x4``, ``resnet32x4``, ``resnet18_cifar`` / ``resnet34_cifar`` / ``resnet50_cifar`` (aliases
  ``ResNet18`` / ``ResNet34`` / ``ResNet50``), ``wrn_16_1``, ``wrn_16_2``, ``wrn_40_1``, ``wrn_40_2``, ``vgg8``,
  ``vgg11``, ``vgg13``, ``vgg16``, ``vgg19``, ``mobilenetv2`` (aliases ``mobile_half``, ``MobileNetV2``: width 0.5),
  ``shufflenetv1`` (alias ``ShuffleV1``), ``shufflenetv2`` (alias ``ShuffleV2``). Their parameter names are
  mdistiller's, so its released CIFAR-100 checkpoints load strictly; weights saved by deepkd's earlier zoo are
  mapped on read (:mod:`deepkd.models.legacy`).
* ImageNet models: torchvision's ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``, ``mobilenet_v2``,
  ``mobilenet_v3_small``, ``shufflenet_v2_x1_0`` (random weights, or torchvision's pretrained ones from its cache
  through a config's ``pretrained``), and ``mobilenet_v1`` (alias ``MobileNetV1``) in mdistiller's layout.
* small CPU models for 28x28 / 8x8 grey images: ``small_cnn``, ``small_resnet``, ``tiny_cnn``, ``mlp``.
"""

from __future__ import annotations

import inspect
import operator
from typing import Any

from torch import nn

from deepkd.errors import ConfigError
from deepkd.models import (  # noqa: F401  (imported to register their models)
    mobilenetv1,
    mobilenetv2_cifar,
    resnet_cifar,
    resnetv2_cifar,
    shufflenet_cifar,
    small,
    torchvision_models,
    vgg_cifar,
    wrn,
)
from deepkd.models._registry import MODELS, ModelBuilder, register_model
from deepkd.models.adapters import LogitsOnly, as_logits_model, extract_logits
from deepkd.models.common import ClassifierNet

__all__ = [
    "check_arguments",
    "MODELS",
    "ClassifierNet",
    "LogitsOnly",
    "ModelBuilder",
    "as_logits_model",
    "build_model",
    "count_parameters",
    "extract_logits",
    "model_names",
    "register_model",
]


def _check_num_classes(name: str, num_classes: object) -> int:
    if not isinstance(num_classes, bool):
        try:
            value = operator.index(num_classes)  # type: ignore[arg-type]
        except TypeError:
            pass
        else:
            if value > 0:
                return value
    raise ConfigError(
        f"model {name!r}: num_classes must be a positive integer, got {num_classes!r} ({type(num_classes).__name__})"
    )


def build_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with ``num_classes`` outputs; ``kwargs`` go to its builder.

    Raises :class:`~deepkd.errors.UnknownStrategyError` for an unknown name (naming the closest one) and
    :class:`~deepkd.errors.ConfigError` for a bad ``num_classes`` or keyword arguments the builder does not take.
    The returned module has a ``num_classes`` attribute.
    """
    n = _check_num_classes(name, num_classes)
    check_arguments(name, kwargs, n)
    model = MODELS.get(name)(num_classes=n, **kwargs)
    if getattr(model, "num_classes", None) != n:
        model.num_classes = n  # type: ignore[assignment]  # nn.Module.__setattr__ is typed for tensors/modules
    return model


def check_arguments(name: str, kwargs: dict[str, Any], num_classes: int = 10) -> None:
    """Raise as :func:`build_model` would for ``name`` and ``kwargs``, without building anything (what a config file
    is checked with when it is loaded)."""
    builder = MODELS.get(name)
    try:
        inspect.signature(builder).bind(num_classes=num_classes, **kwargs)
    except TypeError as exc:
        params = [p for p in inspect.signature(builder).parameters if p != "num_classes"]
        raise ConfigError(
            f"model {name!r}: {exc}; it accepts num_classes and {', '.join(params) or 'no other arguments'}"
        ) from None


def model_names() -> tuple[str, ...]:
    """The registered model names, sorted."""
    return MODELS.names()


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``model`` (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
