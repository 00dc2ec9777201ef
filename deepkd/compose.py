"""Recipes: a loss, a momentum strategy and a mask, composed by name or by config.

>>> import deepkd
>>> r = deepkd.compose(momentum="gsnr", mask="dynamic")
>>> r.momentum.estimator, r.momentum.allocation, r.mask.form
('stream', 'tanh', 'bucket')
>>> deepkd.compose(loss="kd", momentum="sgd", mask="none").plan().groups
(('task', 'tckd', 'nckd'),)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from deepkd import config as cfg
from deepkd.masks import DynamicMask, MaskStrategy
from deepkd.momentum import GSNR, MomentumStrategy, Plan
from deepkd.parts import DKD, LossStrategy
from deepkd.registry import LOSSES, MASKS, MOMENTA, Registry

if TYPE_CHECKING:
    import torch

    from deepkd.optim import DistillOptimizer

__all__ = ["Recipe", "build", "compose", "same_method"]

cfg.register_axis(LossStrategy, LOSSES)
cfg.register_axis(MomentumStrategy, MOMENTA)
cfg.register_axis(MaskStrategy, MASKS)


def _registered(registry: Registry[type]) -> Any:
    def check(instance: object, attribute: attrs.Attribute, value: object) -> None:  # type: ignore[type-arg]
        known = {registry.get(n) for n in registry.names()}
        if type(value) not in known:
            raise TypeError(
                f"{attribute.name} must be an instance of a registered {registry.axis} strategy "
                f"({', '.join(registry.names())}), got {value!r}"
            )

    return check


def _describe(strategy: object) -> str:
    name = getattr(type(strategy), "strategy_name", type(strategy).__name__)
    fields = [f for f in attrs.fields(type(strategy)) if f.init]  # type: ignore[arg-type]
    args = ", ".join(f"{f.name}={getattr(strategy, f.name)!r}" for f in fields)
    return f"{name}({args})"


@attrs.frozen(kw_only=True)
class Recipe:
    """A distillation method as data: which loss parts, how their gradients get momentum, how NCKD is masked.

    The defaults are DeepKD: DKD loss, GSNR-driven momentum and the dynamic top-K mask.
    """

    loss: LossStrategy = attrs.field(factory=DKD, validator=_registered(LOSSES))
    momentum: MomentumStrategy = attrs.field(factory=GSNR, validator=_registered(MOMENTA))
    mask: MaskStrategy = attrs.field(factory=DynamicMask, validator=_registered(MASKS))
    name: str | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.instance_of(str)))

    def __attrs_post_init__(self) -> None:
        self.plan()  # a momentum strategy may refuse the loss's parts (e.g. official-code quirks without tckd)

    def plan(self) -> Plan:
        """How the momentum strategy groups this loss's parts."""
        return self.momentum.plan(self.loss.part_names)

    def __str__(self) -> str:
        plan = self.plan()
        groups = " | ".join("+".join(g) for g in plan.groups)
        title = f"Recipe {self.name!r}" if self.name else "Recipe"
        return (
            f"{title}\n"
            f"  loss     = {_describe(self.loss)}\n"
            f"  momentum = {_describe(self.momentum)}\n"
            f"  mask     = {_describe(self.mask)}\n"
            f"  gradient groups = {groups} ({len(plan.groups)} product{'s' if len(plan.groups) != 1 else ''} a step)"
        )

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some fields changed (names, dicts or configs, as in :func:`compose`)."""
        current: dict[str, Any] = {"loss": self.loss, "momentum": self.momentum, "mask": self.mask, "name": self.name}
        current.update(changes)
        return compose(**current)

    def to_dict(self) -> dict[str, Any]:
        return cfg.unstructure(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        return cfg.structure(data, cls)

    def dumps(self, fmt: str = "toml") -> str:
        return cfg.dumps(self, fmt)

    def save(self, path: str | Path) -> None:
        cfg.dump(self, path)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        return cfg.load(path, cls)

    def optimizer(
        self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], *, lr: float, **kwargs: Any
    ) -> DistillOptimizer:
        """A :class:`~deepkd.optim.DistillOptimizer` running this recipe (see there for the keyword arguments)."""
        from deepkd.optim import DistillOptimizer

        return DistillOptimizer(params, self, lr=lr, **kwargs)


def same_method(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two recipes' plain data (:meth:`Recipe.to_dict`) describe the same method; the ``name`` label aside."""
    return {k: v for k, v in a.items() if k != "name"} == {k: v for k, v in b.items() if k != "name"}


def _resolve(value: Any, registry: Registry[type], field: str) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        return registry.get(value)()
    if isinstance(value, Mapping):
        return getattr(cfg.structure({field: value}, _Partial), field)
    return value


@attrs.frozen
class _Partial:
    """Helper for structuring a single axis with the right ``$.field`` path."""

    loss: LossStrategy | None = None
    momentum: MomentumStrategy | None = None
    mask: MaskStrategy | None = None


def compose(loss: Any = None, momentum: Any = None, mask: Any = None, *, name: str | None = None) -> Recipe:
    """Build a :class:`Recipe` from strategy names (``"gsnr"``), configs (``deepkd.GSNR(delta=0.1)``) or dicts
    (``{"name": "gsnr", "delta": 0.1}``); anything left out takes DeepKD's default (``dkd``, ``gsnr``, ``dynamic``).

    Raises:
        UnknownStrategyError: a name is not registered (the message lists the known names and the closest one).
        ConfigError: a dict holds unknown keys or invalid values.
    """
    values = {
        "loss": _resolve(loss, LOSSES, "loss"),
        "momentum": _resolve(momentum, MOMENTA, "momentum"),
        "mask": _resolve(mask, MASKS, "mask"),
    }
    return Recipe(name=name, **{k: v for k, v in values.items() if v is not None})


def build(config: Recipe | Mapping[str, Any] | str | Path) -> Recipe:
    """A recipe from a recipe, a plain dict, or a ``.toml``/``.json`` file path."""
    if isinstance(config, Recipe):
        return config
    if isinstance(config, Mapping):
        return Recipe.from_dict(config)
    return Recipe.load(config)
