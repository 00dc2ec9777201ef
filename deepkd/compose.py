"""Recipes: a loss, a momentum strategy and a mask, composed by name or by config.

>>> import deepkd
>>> r = deepkd.compose(momentum="gsnr", mask="dynamic")
>>> r.momentum.estimator, r.momentum.allocation, r.mask.form
('stream', 'tanh', 'bucket')
>>> deepkd.compose(loss="kd", momentum="sgd", mask="none").plan().groups
(('task', 'tckd', 'nckd'),)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deepkd.recipe import Recipe, same_method

__all__ = ["Recipe", "build", "compose", "same_method"]


def compose(loss: Any = None, momentum: Any = None, mask: Any = None, *, name: str | None = None) -> Recipe:
    """Build a :class:`Recipe` from strategy names (``"gsnr"``), configs (``deepkd.GSNR(delta=0.1)``) or dicts
    (``{"name": "gsnr", "delta": 0.1}``); anything left out takes DeepKD's default (``dkd``, ``gsnr``, ``dynamic``).

    Raises:
        UnknownStrategyError: a name is not registered (the message lists the known names and the closest one).
        ConfigError: a dict holds unknown keys or invalid values.
    """
    return Recipe().replace(loss=loss, momentum=momentum, mask=mask, name=name)


def build(config: Recipe | Mapping[str, Any] | str | Path) -> Recipe:
    """A recipe from a recipe, a plain dict, or a ``.toml``/``.json`` file path."""
    if isinstance(config, Recipe):
        return config
    if isinstance(config, Mapping):
        return Recipe.from_dict(config)
    return Recipe.load(config)
