"""Callbacks: behaviour added to :class:`~deepkd.trainer.Trainer` at named points, without editing the loop.

The trainer calls, in order::

    on_fit_start(trainer)                      after set-up (and after loading a checkpoint when resuming)
      on_epoch_start(trainer)                  trainer.epoch is the epoch about to run (from 1)
        on_step_end(trainer, out)              after each optimizer step; out is the StepOutput
      on_epoch_end(trainer, metrics)           metrics is the epoch's record (also in trainer.history)
    on_fit_end(trainer)

Each hook runs the callbacks in this order: the built-in loggers (progress bar, ``metrics.jsonl``, TensorBoard),
the user's callbacks, and last, with a run directory, the :class:`Checkpointer`, so an epoch's checkpoint is written
after every other callback has seen (and possibly annotated) its record.

Subclass :class:`Callback` and override what you need, or pass functions to :class:`LambdaCallback`. Setting
``trainer.should_stop = True`` ends training after the current epoch (its checkpoint is written). The
:class:`Checkpointer` writes every checkpoint, at epoch ends, every ``train.checkpoint_every_steps`` steps and when a
stop signal ends the run inside an epoch. What a callback
may read from the trainer is :class:`TrainerView`; callbacks depend on that protocol, never on the trainer module.

>>> seen = []
>>> cb = LambdaCallback(on_epoch_end=lambda trainer, metrics: seen.append(metrics["epoch"]))
>>> cb.on_epoch_end(None, {"epoch": 1}); seen
[1]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pathlib import Path

    from torch import nn

    from deepkd.checkpoint import RunDir
    from deepkd.metrics import History
    from deepkd.optim import DistillOptimizer
    from deepkd.train_config import TrainConfig
    from deepkd.types import StepOutput

__all__ = ["HOOKS", "Callback", "Checkpointer", "LambdaCallback", "TrainerView"]

HOOKS = ("on_fit_start", "on_epoch_start", "on_step_end", "on_epoch_end", "on_fit_end")


@runtime_checkable
class TrainerView(Protocol):
    """What callbacks see of the trainer: :class:`~deepkd.trainer.Trainer` satisfies it, and so may a test double.

    Attributes:
        epoch: the epoch being trained (from 1), or the last one done. global_step: optimizer steps taken.
        last_lr: the learning rate of the last step. steps_per_epoch: batches per epoch.
        should_stop: set to True to stop after the current epoch.
        config: the :class:`~deepkd.train_config.TrainConfig` (``config.epochs`` is the planned number of epochs).
        history: the :class:`~deepkd.metrics.History` so far. run_dir: the run directory, or ``None``.
        student, teacher, optimizer: the models (the teacher is ``None`` for losses without one) and the optimizer.
    """

    epoch: int
    global_step: int
    last_lr: float
    steps_per_epoch: int
    should_stop: bool

    @property
    def config(self) -> TrainConfig: ...

    @property
    def history(self) -> History: ...

    @property
    def run_dir(self) -> Path | None: ...

    @property
    def student(self) -> nn.Module: ...

    @property
    def teacher(self) -> nn.Module | None: ...

    @property
    def optimizer(self) -> DistillOptimizer: ...

    def evaluate(self, loader: Iterable[Any]) -> dict[str, float]:
        """Test loss, top-1 and top-5 of the student on ``loader``."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run (what ``latest.pt`` holds)."""
        ...


class Callback:
    """Base class with every hook as a no-op."""

    def on_fit_start(self, trainer: TrainerView) -> None:
        """Training is about to start (``trainer.epoch`` epochs are already done when resuming)."""

    def on_epoch_start(self, trainer: TrainerView) -> None:
        """Epoch ``trainer.epoch`` is about to start."""

    def on_step_end(self, trainer: TrainerView, out: StepOutput) -> None:
        """One optimizer step is done; ``trainer.global_step`` counts it."""

    def on_epoch_end(self, trainer: TrainerView, metrics: dict[str, Any]) -> None:
        """Epoch ``trainer.epoch`` is trained and evaluated; its checkpoint is written after the callbacks."""

    def on_fit_end(self, trainer: TrainerView) -> None:
        """Training is over."""


class LambdaCallback(Callback):
    """A callback made of plain functions, one per hook (any left out do nothing)."""

    def __init__(self, **hooks: Callable[..., Any]) -> None:
        unknown = set(hooks) - set(HOOKS)
        if unknown:
            raise TypeError(f"unknown hooks {sorted(unknown)}; the hooks are {', '.join(HOOKS)}")
        for name, fn in hooks.items():
            setattr(self, name, fn)


class Checkpointer(Callback):
    """Writes every checkpoint of a run to ``run_dir`` (:class:`~deepkd.checkpoint.RunDir`): the one writer.

    - after each epoch, ``latest.pt`` and ``student.pt``, and ``best.pt`` when this epoch holds the history's best
      test top-1 (strictly better than every earlier epoch; never without an evaluation);
    - every ``every_steps`` steps inside an epoch (``train.checkpoint_every_steps``), ``latest.pt`` alone, so a crash
      loses at most that many steps;
    - when the trainer stops on a signal inside an epoch, ``latest.pt`` (:meth:`save_latest`, which the trainer
      calls).

    The trainer runs it after every other callback it was built with, so an epoch's checkpoint holds what they did.
    Every rank of a distributed run builds the state (``trainer.state_dict()`` may take a collective: the optimizer
    averages its buffers over ranks), and the main process writes it. A callback of your own that calls
    ``trainer.state_dict()`` must do so on every rank too.
    """

    def __init__(self, run_dir: RunDir, every_steps: int = 0) -> None:
        self.run_dir, self.every_steps = run_dir, every_steps
        self._saved_step = -1  # the global step of the last mid-epoch latest.pt

    def on_step_end(self, trainer: TrainerView, out: StepOutput) -> None:
        step, every = trainer.global_step, self.every_steps
        inside = step - (trainer.epoch - 1) * trainer.steps_per_epoch < trainer.steps_per_epoch
        if every and step % every == 0 and inside:
            self.save_latest(trainer)

    def save_latest(self, trainer: TrainerView) -> None:
        """Write a mid-epoch ``latest.pt`` now (once per step; on every rank, as above)."""
        if self._saved_step != trainer.global_step:
            self.run_dir.save_latest(trainer.state_dict())
            self._saved_step = trainer.global_step

    def on_epoch_end(self, trainer: TrainerView, metrics: dict[str, Any]) -> None:
        state = trainer.state_dict()  # on every rank
        self.run_dir.save(state, best=trainer.history.best_epoch == trainer.epoch)  # writes on the main process
