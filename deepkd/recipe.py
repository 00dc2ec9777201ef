"""A recipe: a loss, a momentum strategy and a mask, as one frozen config (build one with :func:`deepkd.compose`).

>>> r = Recipe().replace(loss="kd", momentum={"name": "dot", "delta": 0.1})
>>> r.momentum, r.plan().groups
(DOT(delta=0.1, preserve_step=False), (('task',), ('tckd', 'nckd')))
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from deepkd import config as cfg
from deepkd.losses import DKD
from deepkd.masks import DynamicMask
from deepkd.momentum import GSNR
from deepkd.registry import LOSSES, MASKS, MOMENTA, Registry, name_of
from deepkd.types import LossStrategy, MaskStrategy, MomentumStrategy, Plan

__all__ = ["Recipe", "same_method"]

# A recipe's axes: the protocol of each field and the registry of its strategies (a tagged union in a config).
_AXES: dict[str, tuple[Any, Registry[type]]] = {
    "loss": (LossStrategy, LOSSES),
    "momentum": (MomentumStrategy, MOMENTA),
    "mask": (MaskStrategy, MASKS),
}
for _protocol, _registry in _AXES.values():
    cfg.register_axis(_protocol, _registry)


def _strategy(axis: str, value: Any) -> Any:
    """The ``axis`` strategy that ``value`` names (``"gsnr"``), describes (``{"name": "gsnr", "delta": 0.1}``) or is.

    Raises:
        UnknownStrategyError: an unknown name. ConfigError: a dict with unknown keys or invalid values.
    """
    protocol, registry = _AXES[axis]
    if isinstance(value, str):
        return registry.get(value)()
    if isinstance(value, Mapping):
        return cfg.structure(value, protocol, path=f"$.{axis}")
    return value


def _describe(obj: object) -> str:
    fields = [f for f in attrs.fields(type(obj)) if f.init]  # type: ignore[arg-type]
    return f"{name_of(obj)}({', '.join(f'{f.name}={getattr(obj, f.name)!r}' for f in fields)})"


@attrs.frozen(kw_only=True)
class Recipe:
    """A distillation method as data: which loss parts, how their gradients get momentum, how NCKD is masked.

    The defaults are DeepKD: DKD loss, GSNR-driven momentum and the dynamic top-K mask.
    """

    loss: LossStrategy = attrs.field(factory=DKD, validator=LOSSES.validator())
    momentum: MomentumStrategy = attrs.field(factory=GSNR, validator=MOMENTA.validator())
    mask: MaskStrategy = attrs.field(factory=DynamicMask, validator=MASKS.validator())
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
        """A copy with some fields changed: names, dicts or configs, as in :func:`~deepkd.compose.compose` (where
        ``None`` means the default)."""
        values = {"loss": self.loss, "momentum": self.momentum, "mask": self.mask, **changes}
        name = values.pop("name", self.name)
        fields = {k: _strategy(k, v) if k in _AXES else v for k, v in values.items() if v is not None}
        return Recipe(name=name, **fields)

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


def same_method(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two recipes' plain data (:meth:`Recipe.to_dict`) describe the same method; the ``name`` label aside."""
    return {k: v for k, v in a.items() if k != "name"} == {k: v for k, v in b.items() if k != "name"}
