"""Callbacks: behaviour added to :class:`~deepkd.trainer.Trainer` at named points, without editing the loop.

The trainer calls, in order::

    on_fit_start(trainer)                      after set-up (and after loading a checkpoint when resuming)
      on_epoch_start(trainer)                  trainer.epoch is the epoch about to run (from 1)
        on_step_end(trainer, out)              after each optimizer step; out is the StepOutput
      on_epoch_end(trainer, metrics)           metrics is the epoch's record (also in trainer.history)
    on_fit_end(trainer)

Subclass :class:`Callback` and override what you need, or pass functions to :class:`LambdaCallback`. Setting
``trainer.should_stop = True`` ends training after the current epoch (its checkpoint is written).

>>> seen = []
>>> cb = LambdaCallback(on_epoch_end=lambda trainer, metrics: seen.append(metrics["epoch"]))
>>> cb.on_epoch_end(None, {"epoch": 1}); seen
[1]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deepkd.optim import StepOutput
    from deepkd.trainer import Trainer

__all__ = ["HOOKS", "Callback", "LambdaCallback"]

HOOKS = ("on_fit_start", "on_epoch_start", "on_step_end", "on_epoch_end", "on_fit_end")


class Callback:
    """Base class with every hook as a no-op."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Training is about to start (``trainer.epoch`` epochs are already done when resuming)."""

    def on_epoch_start(self, trainer: Trainer) -> None:
        """Epoch ``trainer.epoch`` is about to start."""

    def on_step_end(self, trainer: Trainer, out: StepOutput) -> None:
        """One optimizer step is done; ``trainer.global_step`` counts it."""

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """Epoch ``trainer.epoch`` is trained and evaluated; its checkpoint is written after the callbacks."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """Training is over."""


class LambdaCallback(Callback):
    """A callback made of plain functions, one per hook (any left out do nothing)."""

    def __init__(self, **hooks: Callable[..., Any]) -> None:
        unknown = set(hooks) - set(HOOKS)
        if unknown:
            raise TypeError(f"unknown hooks {sorted(unknown)}; the hooks are {', '.join(HOOKS)}")
        for name, fn in hooks.items():
            setattr(self, name, fn)
