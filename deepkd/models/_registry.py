"""The model registry shared by every model module (kept apart from ``__init__`` to avoid import cycles)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from deepkd.registry import Registry

__all__ = ["MODELS", "ModelBuilder", "register_model"]

ModelBuilder = Callable[..., nn.Module]

MODELS: Registry[ModelBuilder] = Registry("model", kind="model")


def register_model(name: str, *, replace: bool = False) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator registering a model builder ``builder(num_classes=..., **kwargs) -> nn.Module`` as ``name``."""
    return MODELS.register(name, replace=replace)
