"""What a run saves to continue, and how it continues: the content of ``latest.pt`` (:func:`capture`), checking and
loading it (:func:`restore`), and finding the place inside an epoch (:func:`skip_done`). The files themselves are
:mod:`deepkd.checkpoint`'s; when they are written is the :class:`~deepkd.callbacks.Checkpointer`'s.

A checkpoint taken inside an epoch (``train.checkpoint_every_steps``, a stop signal) holds the completed epochs,
``batches_done`` of the epoch in progress, the partial epoch sums of the training metrics, and every rank's
random-number-generator states. Resuming replays the epoch's data order (a pure function of ``(seed, epoch)`` and
the rank), drops the batches already done, and only then restores the random-number generators, so the run
continues as if never stopped.

On a distributed run every rank builds the state (the optimizer averages its buffers over ranks, each rank's
generator states and partial metric sums are gathered) and rank 0 writes it; every rank reads the same
``latest.pt`` to resume.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from deepkd import config as cfg
from deepkd._version import __version__
from deepkd.checkpoint import FORMAT, check_recipe, check_resumable
from deepkd.distributed import gather_objects, rank, world_size
from deepkd.errors import CheckpointError
from deepkd.metrics import History
from deepkd.progress import Progress
from deepkd.utils import rng_state, set_rng_state

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.optim.lr_scheduler import LambdaLR

    from deepkd.metrics import EpochMeter
    from deepkd.optim import DistillOptimizer
    from deepkd.recipe import Recipe

__all__ = ["ResumePoint", "Restored", "TrainingRun", "capture", "restore", "skip_done"]


class ResumePoint(NamedTuple):
    """Where a checkpoint taken inside an epoch resumes: the batches of that epoch already trained, and every saved
    rank's ``{"rng": ..., "meter": ...}`` (random-number-generator states, partial metric sums), in rank order."""

    batches_done: int
    ranks: list[dict[str, Any]]


class Restored(NamedTuple):
    """What :func:`restore` read: the completed epochs, the global step, the history, and where inside the next
    epoch to continue (``None`` after a whole epoch: the generators are then restored already)."""

    epoch: int
    global_step: int
    history: History
    point: ResumePoint | None


class TrainingRun(Protocol):
    """What :func:`capture` and :func:`restore` read of a run (a :class:`~deepkd.trainer.Trainer`)."""

    epoch: int
    global_step: int
    steps_per_epoch: int
    student: nn.Module
    optimizer: DistillOptimizer
    history: History
    recipe: Recipe
    run_config: object

    @property
    def in_epoch(self) -> bool: ...

    @property
    def generator(self) -> torch.Generator | None: ...

    @property
    def meter(self) -> EpochMeter: ...

    @property
    def lr_scheduler(self) -> LambdaLR: ...


def capture(run: TrainingRun) -> dict[str, Any]:
    """Everything needed to continue ``run`` (the content of ``latest.pt``); plain data and tensors only. Inside an
    epoch, ``epoch`` counts the completed ones and ``batches_done`` the rest. Collective on distributed runs (the
    optimizer's buffers and each rank's generators are gathered): call it on every rank."""
    scheduler = run.lr_scheduler
    epoch = run.epoch - 1 if run.in_epoch else run.epoch
    own = {"rng": rng_state(run.generator), "meter": run.meter.state_dict() if run.in_epoch else None}
    return {
        "format": FORMAT,
        "version": __version__,
        "epoch": epoch,
        "global_step": run.global_step,
        "batches_done": run.global_step - epoch * run.steps_per_epoch,
        "ranks": gather_objects(own),
        "student": run.student.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": own["rng"],
        "best": {"top1": run.history.best_top1, "epoch": run.history.best_epoch},
        "history": run.history.to_dict(),
        "recipe": cfg.unstructure(run.recipe),
        "config": cfg.unstructure(run.run_config),
    }


def restore(run: TrainingRun, state: Mapping[str, Any]) -> Restored:
    """Load a checkpoint made by :func:`capture` into ``run``'s student, optimizer and scheduler, checked before
    anything is changed: raises :class:`CheckpointError` for another recipe, other model shapes, another number of
    steps per epoch, or junk. After a whole epoch the generators are restored here; inside one, the returned
    :class:`ResumePoint` is for :func:`skip_done` (the generators come after the skip)."""
    check_recipe(state["recipe"], cfg.unstructure(run.recipe), "the checkpoint")
    epoch, step = check_resumable(state, run.student, run.steps_per_epoch)
    try:
        history = History.from_dict(state["history"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's history is malformed: {exc!r}") from None
    run.student.load_state_dict(state["student"])
    run.optimizer.load_state_dict(state["optimizer"])
    try:
        run.lr_scheduler.load_state_dict(dict(state["scheduler"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's scheduler is malformed: {exc!r}") from None
    ranks = list(state.get("ranks") or [{"rng": state["rng"], "meter": None}])
    if step > epoch * run.steps_per_epoch:
        return Restored(epoch, step, history, ResumePoint(step - epoch * run.steps_per_epoch, ranks))
    set_rng_state(ranks[rank()]["rng"] if len(ranks) == world_size() else state["rng"], run.generator)
    return Restored(epoch, step, history, None)


def skip_done(
    batches: Iterator[Any], point: ResumePoint, generator: torch.Generator | None, *, progress: bool | None = False
) -> dict[str, Any] | None:
    """Drop the ``point.batches_done`` batches of the epoch already trained from ``batches`` (the epoch's
    deterministic order; reading them can take a while, which ``progress`` shows), then restore this rank's
    random-number generators from ``point.ranks``; returns this rank's saved partial metric sums. On another world
    size, rank 0 takes rank 0's generators and every rank's sums (the epoch's metrics stay whole), the others start
    their sums from zero."""
    shown = Progress(point.batches_done, "skipping the batches already trained", enabled=progress)
    for _ in range(point.batches_done):
        next(batches)
        shown.update()
    shown.close()
    ranks, me = point.ranks, rank()
    if len(ranks) == world_size():
        own = ranks[me]
        set_rng_state(own["rng"], generator)
        return None if own["meter"] is None else dict(own["meter"])
    set_rng_state(ranks[0]["rng"], generator)
    meters = [r["meter"] for r in ranks]
    if me != 0 or any(m is None for m in meters):
        return None
    merged = dict(meters[0])
    for key in ("samples", "skipped"):
        merged[key] = sum(m[key] for m in meters)
    merged["hits"] = [sum(m["hits"][i] for m in meters) for i in range(2)]
    merged["parts"] = {k: sum(m["parts"].get(k, 0.0) for m in meters) for k in meters[0]["parts"]}
    return merged
