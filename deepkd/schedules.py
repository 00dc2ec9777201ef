r"""Learning-rate schedules as functions of training progress, run by :class:`torch.optim.lr_scheduler.LambdaLR`.

A schedule is a frozen attrs config with ``factor(t, epochs) -> float``: the multiplier of the base learning rate
after ``t`` epochs of training (``t`` is fractional, ``t = step / steps_per_epoch``; 0 at the first step). In a
config file it is tagged by name like a recipe's strategies: ``schedule = {name = "step", milestones = [150, 180,
210]}``.

- ``constant``: 1.
- ``step``: ``gamma ** (number of milestones <= t)``, optionally after a linear warm-up. With integer milestones the
  rate is constant within an epoch, so this equals mdistiller's per-epoch rule (CIFAR-100: 0.05, ×0.1 from epoch
  151, 181 and 211 counted from 1; ImageNet: 0.2, ×0.1 at 30/60/90).
- ``cosine``: a linear warm-up from ``warmup_factor`` to 1 over ``warmup`` epochs, then
  :math:`f = f_{min} + \tfrac12(1 - f_{min})(1 + \cos(\pi\,(t - W)/(E - W)))` down to ``min_factor`` at the last
  epoch. This is DeepKD's ImageNet schedule (warm-up 20 epochs from 0.1·lr, minimum 5e-5 = 2.5e-4·0.2) evaluated
  at every step; the official code evaluates it once per epoch, at ``t = epoch`` counted from 1.

>>> s = Step(milestones=(150, 180, 210))
>>> [round(0.05 * s.factor(t, 240), 8) for t in (0, 149.9, 150, 180, 210)]
[0.05, 0.05, 0.005, 0.0005, 5e-05]
>>> c = Cosine(warmup=20, warmup_factor=0.1, min_factor=0.0)
>>> [round(c.factor(t, 100), 4) for t in (0, 10, 20, 60, 100)]
[0.1, 0.55, 1.0, 0.5, 0.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from deepkd import config as cfg
from deepkd.registry import C, Registry
from deepkd.types import ScheduleStrategy
from deepkd.validators import real

__all__ = [
    "SCHEDULES",
    "Constant",
    "Cosine",
    "Step",
    "lr_lambda",
    "lr_scheduler",
    "register_schedule",
]


SCHEDULES: Registry[type] = Registry("schedule")


def register_schedule(name: str, *, replace: bool = False) -> Callable[[C], C]:
    """Register a schedule class (a frozen attrs class with ``factor(t, epochs)``) under ``name``."""
    return SCHEDULES.register_class(name, replace=replace)


def _warm(t: float, warmup: float, start: float) -> float | None:
    """The linear warm-up factor from ``start`` to 1, or ``None`` once warm-up is over."""
    if t >= warmup:
        return None
    return start + (1.0 - start) * t / warmup


def _increasing(instance: object, attribute: attrs.Attribute, value: tuple[int, ...]) -> None:  # type: ignore[type-arg]
    if any(not isinstance(m, int) or isinstance(m, bool) or m < 1 for m in value):
        raise ValueError(f"milestones must be positive whole epochs, got {list(value)}")
    if list(value) != sorted(set(value)):
        raise ValueError(f"milestones must be strictly increasing, got {list(value)}")


_fraction = real(ge=0.0, le=1.0)
_epochs = real(ge=0.0)


@register_schedule("constant")
@attrs.frozen(kw_only=True)
class Constant:
    """The base learning rate throughout."""

    def factor(self, t: float, epochs: int) -> float:
        return 1.0


@register_schedule("step")
@attrs.frozen(kw_only=True)
class Step:
    """Multiply by ``gamma`` at each milestone epoch, after an optional linear warm-up of ``warmup`` epochs from
    ``warmup_factor``. The defaults are the CIFAR-100 recipe (×0.1 at 150/180/210)."""

    milestones: tuple[int, ...] = attrs.field(default=(150, 180, 210), converter=tuple, validator=_increasing)
    gamma: float = attrs.field(default=0.1, validator=real(gt=0.0))
    warmup: float = attrs.field(default=0.0, validator=_epochs)
    warmup_factor: float = attrs.field(default=0.1, validator=_fraction)

    def factor(self, t: float, epochs: int) -> float:
        warm = _warm(t, self.warmup, self.warmup_factor)
        if warm is not None:
            return warm
        return float(self.gamma ** sum(t >= m for m in self.milestones))


@register_schedule("cosine")
@attrs.frozen(kw_only=True)
class Cosine:
    """Linear warm-up from ``warmup_factor`` over ``warmup`` epochs, then cosine decay to ``min_factor`` at the end
    of training. The defaults are DeepKD's ImageNet schedule (20 warm-up epochs from 0.1, minimum 5e-5 / 0.2)."""

    warmup: float = attrs.field(default=20.0, validator=_epochs)
    warmup_factor: float = attrs.field(default=0.1, validator=_fraction)
    min_factor: float = attrs.field(default=2.5e-4, validator=_fraction)

    def factor(self, t: float, epochs: int) -> float:
        warm = _warm(t, self.warmup, self.warmup_factor)
        if warm is not None:
            return warm
        progress = min(max((t - self.warmup) / max(epochs - self.warmup, 1e-12), 0.0), 1.0)
        return self.min_factor + 0.5 * (1.0 - self.min_factor) * (1.0 + math.cos(math.pi * progress))


cfg.register_axis(ScheduleStrategy, SCHEDULES)


def lr_lambda(schedule: ScheduleStrategy, steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    """The ``LambdaLR`` factor of the global step (0-based) for ``schedule``."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")

    def factor(step: int) -> float:
        return schedule.factor(step / steps_per_epoch, epochs)

    return factor


def lr_scheduler(optimizer: Optimizer, schedule: ScheduleStrategy, steps_per_epoch: int, epochs: int) -> LambdaLR:
    """A :class:`LambdaLR` stepping ``schedule`` once per optimizer step (call ``scheduler.step()`` after each)."""
    return LambdaLR(optimizer, lr_lambda(schedule, steps_per_epoch, epochs))
