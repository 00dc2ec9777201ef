"""Preemption and mid-epoch checkpoints: what the trainer does at each step boundary, and how a resumed run finds
its place inside an epoch.

While a run with a run directory trains, SIGTERM and SIGUSR1 (what SLURM and most schedulers send before they
stop a job) only set a flag. At the next step boundary every rank learns whether any rank got one (one tiny
all-reduce, so all ranks stop at the same step and none waits forever for the others); then each rank builds the
checkpoint (``Trainer.state_dict`` may be collective), rank 0 writes ``latest.pt``, and ``fit`` returns with
``history.interrupted`` set: ``deepkd train`` then exits with status 0 after one line on stderr. With
``train.checkpoint_every_steps = K``, ``latest.pt`` is also written every ``K`` steps inside an epoch, so even
``kill -9`` loses at most ``K`` steps.

A mid-epoch checkpoint holds the completed epochs, ``batches_done`` (of the epoch in progress), the partial
epoch sums of the training metrics, and every rank's random-number-generator states. Resuming replays the epoch's
data order (a pure function of ``(seed, epoch)`` and the rank), drops the batches already done, and only then
restores the random-number generators, so the run continues as if never stopped.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from deepkd.distributed import is_distributed
from deepkd.launch import any_rank
from deepkd.utils import get_rank, is_main_process, set_rng_state

if TYPE_CHECKING:
    from collections.abc import Mapping

    from deepkd.callbacks import TrainerView
    from deepkd.checkpoint import RunDir

__all__ = ["SIGNALS", "Interrupts", "gather_rank_states", "restore_position", "resume_epoch"]

#: the signals that ask a run to checkpoint and stop
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Interrupts:
    """The stop flag of a run and its step boundaries: set by :data:`SIGNALS` while :meth:`installed`, agreed on
    by all ranks in :meth:`requested`, acted on by :meth:`after_step`. Without a run directory to save to, the
    signals are left alone."""

    def __init__(self, run: RunDir | None, every_steps: int = 0) -> None:
        self.run, self.every_steps, self.enabled = run, every_steps, run is not None
        self.received: int | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Catch :data:`SIGNALS` for the duration (main thread only); the previous handlers come back after."""
        if not self.enabled or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def requested(self) -> bool:
        """Whether any rank got a stop signal (a collective on distributed runs: every rank must ask at the same
        step boundary)."""
        return self.enabled and any_rank(self.received is not None)

    def after_step(self, trainer: TrainerView) -> bool:
        """At a step boundary: every ``every_steps`` steps write a mid-epoch ``latest.pt``; on a stop signal to any
        rank, write it and return True (the loop stops at once), or after the epoch's last step let the epoch end
        (its own checkpoint) and stop then. Collective on distributed runs with a run directory."""
        stop, every, steps = self.requested(), self.every_steps, trainer.steps_per_epoch
        done = trainer.global_step - (trainer.epoch - 1) * steps
        mid = done < steps
        if self.run is not None and mid and (stop or (every and trainer.global_step % every == 0)):
            self.run.save_latest(trainer.state_dict())  # built on every rank, written by rank 0
        if stop:
            trainer.history.interrupted = trainer.should_stop = True
            if is_main_process():
                name = signal.Signals(self.received).name if self.received is not None else "a signal to another rank"
                print(
                    f"deepkd: stopped by {name} after step {trainer.global_step} (epoch {trainer.epoch}, batch "
                    f"{done}/{steps}); checkpoint in {trainer.run_dir}/latest.pt; continue with --resume",
                    file=sys.stderr,
                    flush=True,
                )
        return stop and mid


def gather_rank_states(own: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's ``own`` (random-number-generator states, partial metric sums), in rank order; ``[own]`` in a
    single process. Collective on distributed runs."""
    if not is_distributed():
        return [own]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, own)
    return out


def restore_position(
    state: Mapping[str, Any], epoch: int, step: int, steps_per_epoch: int, generator: torch.Generator | None
) -> tuple[int, list[dict[str, Any]]] | None:
    """Where a checkpoint resumes: after an epoch, restore this rank's generators now and return ``None``; inside
    one, return ``(batches_done, every rank's states)`` for :func:`resume_epoch` (generators come after the skip)."""
    ranks = list(state.get("ranks") or [{"rng": state["rng"], "meter": None}])
    if step > epoch * steps_per_epoch:
        return step - epoch * steps_per_epoch, ranks
    world = dist.get_world_size() if is_distributed() else 1
    set_rng_state(ranks[get_rank()]["rng"] if len(ranks) == world else state["rng"], generator)
    return None


def resume_epoch(
    batches: Iterator[Any], done: int, ranks: list[dict[str, Any]], generator: torch.Generator | None
) -> dict[str, Any] | None:
    """Drop the ``done`` batches of the epoch already trained from ``batches`` (the epoch's deterministic order),
    then restore this rank's random-number generators from ``ranks`` (saved by every rank of the run); returns this
    rank's saved partial metric sums. On another world size, rank 0 takes rank 0's generators and every rank's sums
    (the epoch's metrics stay whole), the others start their sums from zero."""
    for _ in range(done):
        next(batches)
    world = dist.get_world_size() if is_distributed() else 1
    rank = get_rank()
    if len(ranks) == world:
        own = ranks[rank]
        set_rng_state(own["rng"], generator)
        return None if own["meter"] is None else dict(own["meter"])
    set_rng_state(ranks[0]["rng"], generator)
    meters = [r["meter"] for r in ranks]
    if rank != 0 or any(m is None for m in meters):
        return None
    merged = dict(meters[0])
    for key in ("samples", "skipped"):
        merged[key] = sum(m[key] for m in meters)
    merged["hits"] = [sum(m["hits"][i] for m in meters) for i in range(2)]
    merged["parts"] = {k: sum(m["parts"].get(k, 0.0) for m in meters) for k in meters[0]["parts"]}
    return merged
