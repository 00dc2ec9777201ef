"""Weights saved by deepkd's earlier CIFAR zoo, read into the literature's layout.

Before deepkd 0.2 the CIFAR models had deepkd's own parameter names (``classifier.*``, ``blocks.0.*``...). The zoo
now has the CRD / mdistiller layout, so the field's released checkpoints load strictly; a model family registers
here how its old names map to the new ones, and :func:`upgrade_state_dict` applies the map when a state_dict has the
old names.

>>> import torch
>>> @legacy_keys("example_net")
... def _example(key: str) -> str:
...     return key.replace("classifier.", "fc.")
>>> model = torch.nn.Module(); model.fc = torch.nn.Linear(2, 2)
>>> sorted(upgrade_state_dict("example_net", {"classifier.weight": torch.zeros(2, 2),
...                                           "classifier.bias": torch.zeros(2)}, model))
['fc.bias', 'fc.weight']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import Tensor, nn

__all__ = ["LEGACY_KEYS", "legacy_keys", "upgrade_state_dict"]

KeyMap = Callable[[str], str]

# model name -> the map from its earlier deepkd parameter names to its current ones
LEGACY_KEYS: dict[str, KeyMap] = {}


def legacy_keys(*names: str) -> Callable[[KeyMap], KeyMap]:
    """Register a key map from deepkd's earlier parameter names to the current ones, for the models ``names``."""

    def decorator(fn: KeyMap) -> KeyMap:
        for name in names:
            LEGACY_KEYS[name] = fn
        return fn

    return decorator


def upgrade_state_dict(name: str, state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """``state_dict`` in ``model``'s layout: returned as it is when its keys are already the model's, with the keys
    mapped when model ``name`` has a legacy map and the mapped keys are exactly the model's; otherwise unchanged
    (strict loading then names what differs)."""
    own = set(model.state_dict())
    if set(state_dict) == own or name not in LEGACY_KEYS:
        return dict(state_dict)
    mapped = {LEGACY_KEYS[name](k): v for k, v in state_dict.items()}
    return mapped if set(mapped) == own else dict(state_dict)
