"""What a :class:`~deepkd.trainer.Trainer` saves and restores: the content of ``latest.pt`` (see
:mod:`deepkd.checkpoint` for the files and :mod:`deepkd.preemption` for mid-epoch checkpoints).

On a distributed run every rank builds the state (the optimizer averages its buffers over ranks, each rank's
random-number-generator states and partial metric sums are gathered) and rank 0 writes it; every rank reads the
same ``latest.pt`` to resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from deepkd import config as cfg
from deepkd._version import __version__
from deepkd.checkpoint import FORMAT, check_recipe, check_resumable
from deepkd.errors import CheckpointError
from deepkd.metrics import History
from deepkd.preemption import gather_rank_states, restore_position
from deepkd.utils import rng_state

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.optim.lr_scheduler import LambdaLR

    from deepkd.metrics import EpochMeter
    from deepkd.optim import DistillOptimizer
    from deepkd.recipe import Recipe

__all__ = ["TrainerState"]


class TrainerState:
    """The checkpoint half of :class:`~deepkd.trainer.Trainer` (a mixin: the trainer sets these attributes)."""

    epoch: int
    global_step: int
    steps_per_epoch: int
    last_lr: float
    student: nn.Module
    optimizer: DistillOptimizer
    scheduler: LambdaLR | None
    history: History
    recipe: Recipe
    run_config: object
    _in_epoch: bool
    _generator: torch.Generator | None
    _meter: EpochMeter
    _resume: tuple[int, list[dict[str, Any]]] | None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run (the content of ``latest.pt``); plain data and tensors only.
        Inside an epoch, ``epoch`` counts the completed ones and ``batches_done`` the rest. Collective on distributed
        runs (the optimizer's buffers and each rank's generators are gathered): call it on every rank."""
        assert self.scheduler is not None, "state_dict() is available once fit() has started"
        epoch = self.epoch - 1 if self._in_epoch else self.epoch
        own = {"rng": rng_state(self._generator), "meter": self._meter.state_dict() if self._in_epoch else None}
        return {
            "format": FORMAT,
            "version": __version__,
            "epoch": epoch,
            "global_step": self.global_step,
            "batches_done": self.global_step - epoch * self.steps_per_epoch,
            "ranks": gather_rank_states(own),
            "student": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": own["rng"],
            "best": {"top1": self.history.best_top1, "epoch": self.history.best_epoch},
            "history": self.history.to_dict(),
            "recipe": cfg.unstructure(self.recipe),
            "config": cfg.unstructure(self.run_config),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint made by :meth:`state_dict`, checked before anything is changed: raises
        :class:`CheckpointError` for another recipe, other model shapes, another number of steps per epoch, or junk."""
        assert self.scheduler is not None, "load_state_dict() is available once fit() has started"
        check_recipe(state["recipe"], cfg.unstructure(self.recipe), "the checkpoint")
        epoch, step = check_resumable(state, self.student, self.steps_per_epoch)
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        try:
            self.scheduler.load_state_dict(dict(state["scheduler"]))
            self.history = History.from_dict(state["history"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"the checkpoint's scheduler or history is malformed: {exc!r}") from None
        self._resume = restore_position(state, epoch, step, self.steps_per_epoch, self._generator)
        self.epoch, self.global_step = epoch, step
        self.last_lr = self.optimizer.param_groups[0]["lr"]
