"""Adapters turning models with richer outputs (tuples, lists, dicts) into logits-only models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from deepkd.errors import InputError
from deepkd.models.common import ClassifierNet

__all__ = ["LogitsOnly", "as_logits_model"]


class LogitsOnly(nn.Module):
    """Wrap ``module`` so that ``forward`` returns only its logits tensor.

    Tensors pass through; from a tuple or list (named tuples included, e.g. torchvision's ``GoogLeNetOutputs``)
    the element at ``index`` is taken, from a mapping (e.g. a Hugging Face ``ModelOutput``) the entry ``key``.
    Anything else raises :class:`~deepkd.errors.InputError`.
    """

    def __init__(self, module: nn.Module, index: int = 0, key: str = "logits") -> None:
        super().__init__()
        self.module = module
        self.index = index
        self.key = key

    @property
    def num_classes(self) -> int | None:
        """The wrapped model's ``num_classes`` attribute, when it has one."""
        value = getattr(self.module, "num_classes", None)
        return value if isinstance(value, int) else None

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return extract_logits(self.module(*args, **kwargs), self.index, self.key, type(self.module).__name__)


def extract_logits(out: object, index: int = 0, key: str = "logits", source: str = "model") -> Tensor:
    """Return the logits tensor held by a model output (see :class:`LogitsOnly`)."""
    picked: object = out
    if isinstance(out, (tuple, list)):
        if not -len(out) <= index < len(out):
            raise InputError(f"{source} returned a {type(out).__name__} of length {len(out)}; no index {index}")
        picked = out[index]
    elif isinstance(out, Mapping):
        if key not in out:
            raise InputError(f"{source} returned a mapping without key {key!r}; keys: {sorted(map(str, out))}")
        picked = out[key]
    if not isinstance(picked, Tensor):
        where = "" if picked is out else f" (picked from its {type(out).__name__} output)"
        raise InputError(f"{source} must produce a logits tensor, got {type(picked).__name__}{where}")
    return picked


def _returns_tensor(module: nn.Module) -> bool:
    """Whether ``module`` is known to return a plain logits tensor without running it."""
    if isinstance(module, (LogitsOnly, ClassifierNet)):
        return True
    # torchvision's classifiers live in torchvision.models.<arch> (detection, segmentation... one level deeper);
    # of those, only GoogLeNet and Inception3 return (named) tuples, in training mode.
    package = type(module).__module__.rpartition(".")[0]
    return package == "torchvision.models" and type(module).__name__ not in {"GoogLeNet", "Inception3"}


def as_logits_model(module: nn.Module, example_input: Tensor | None = None) -> nn.Module:
    """Return ``module`` itself if it returns a logits tensor, else wrap it in :class:`LogitsOnly`.

    deepkd's own models and torchvision classifiers are recognised without running them. For other modules,
    ``example_input`` (if given) is run once under ``torch.no_grad()`` in the module's current mode to decide
    (its buffers, e.g. batch-norm running statistics, are restored afterwards); without it the module is
    wrapped, which is harmless for tensor outputs (they pass through) but prefixes its ``state_dict`` keys with
    ``module.``.
    """
    if _returns_tensor(module):
        return module
    if example_input is not None:
        saved = [(b, b.detach().clone()) for b in module.buffers()]
        with torch.no_grad():
            out = module(example_input)
            for buf, value in saved:
                buf.copy_(value)
        if isinstance(out, Tensor):
            return module
        extract_logits(out, source=type(module).__name__)  # fail early with a clear message
    return LogitsOnly(module)
