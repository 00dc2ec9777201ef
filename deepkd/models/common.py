"""Shared building blocks of the model zoo: the :class:`ClassifierNet` base class and weight initialisation."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

__all__ = ["ClassifierNet", "init_weights"]


class ClassifierNet(nn.Module):
    """Base class of deepkd's own classifiers: ``forward(x)`` returns logits ``[B, num_classes]`` only.

    Subclasses build ``self.classifier`` (the last linear layer) and implement :meth:`forward_features`, which
    returns the pooled penultimate embedding ``[B, feature_dim]`` (handy for feature-based distillation). A model
    whose reference layout names its last layer otherwise (``fc``, ``linear``) sets :attr:`classifier_attr` to that
    name, so its ``state_dict`` keeps the reference's keys.
    """

    #: the attribute holding the last layer, applied by :meth:`forward` to the output of :meth:`forward_features`
    classifier_attr: ClassVar[str] = "classifier"
    num_classes: int
    feature_dim: int
    classifier: nn.Module

    def __init__(self, num_classes: int, feature_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = feature_dim

    def forward_features(self, x: Tensor) -> Tensor:
        """Return the pooled penultimate embedding ``[B, feature_dim]``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits ``[B, num_classes]``."""
        out: Tensor = getattr(self, self.classifier_attr)(self.forward_features(x))
        return out


def init_weights(module: nn.Module) -> None:
    """He-normal (fan-out) convolutions, unit/zero batch norms, zero linear biases, as in the CRD code base."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
