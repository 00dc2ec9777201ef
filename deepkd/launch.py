"""Starting processes under ``torchrun``: the process group, each rank's device, learning-rate scaling,
SyncBatchNorm, and per-rank failure reports (ranks and collectives themselves are :mod:`deepkd.distributed`'s).

``torchrun --nproc_per_node=N -m deepkd train CONFIG.toml`` sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` for every process; :func:`process_group` starts the process group from them
(``env://``) only when ``WORLD_SIZE > 1`` (gloo for CPU runs, NCCL for CUDA runs, with ``train.dist_timeout``
seconds for every collective) and destroys it at the end. A single process never touches ``torch.distributed``.
See ``docs/distributed.md``.

>>> lr_factor("linear", 4), lr_factor("none", 4), lr_factor("sqrt", 4)
(4.0, 1.0, 2.0)
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from deepkd.distributed import is_distributed
from deepkd.errors import ConfigError
from deepkd.utils import resolve_device

__all__ = [
    "failure_message",
    "launched_rank",
    "launched_world_size",
    "local_rank",
    "lr_factor",
    "process_group",
    "rank_device",
    "sync_batchnorm",
]


def launched_world_size() -> int:
    """The number of processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's global rank as the launcher set it (``RANK``; 0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``; 0 without a launcher)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


@contextlib.contextmanager
def process_group(timeout_s: float, device: str = "auto") -> Iterator[bool]:
    """Start the process group from the ``env://`` variables when ``WORLD_SIZE > 1`` and none is running, and
    destroy it on the way out; yields whether it started one. A CUDA run takes the NCCL backend and the device
    ``cuda:LOCAL_RANK``; a CPU run gloo. ``timeout_s`` bounds every collective (and the rendezvous), so a rank that
    waits for a dead or stuck peer fails after it instead of hanging."""
    if launched_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        yield False
        return
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    cuda = resolve_device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    try:
        yield True
    finally:
        dist.destroy_process_group()


def rank_device(device: torch.device) -> torch.device:
    """``device`` with ``cuda`` (no index) mapped to ``cuda:LOCAL_RANK`` on distributed runs."""
    if device.type == "cuda" and device.index is None and is_distributed():
        return torch.device("cuda", local_rank())
    return device


def lr_factor(scale: str, world: int) -> float:
    """The learning-rate multiplier of ``train.scale_lr`` for ``world`` processes: ``"none"`` 1, ``"linear"``
    ``world`` (Goyal et al. 2017), ``"sqrt"`` ``sqrt(world)``."""
    return {"none": 1.0, "linear": float(world), "sqrt": float(world) ** 0.5}[scale]


def sync_batchnorm(module: nn.Module, enabled: bool) -> nn.Module:
    """``module`` with its BatchNorm layers converted to :class:`torch.nn.SyncBatchNorm` when ``enabled`` on a
    distributed run (the same module otherwise: in one process they are the same thing).

    Raises:
        ConfigError: the run is distributed but not on CUDA (SyncBatchNorm needs CUDA tensors and NCCL).
    """
    if not enabled or not is_distributed():
        return module
    if dist.get_backend() != "nccl":
        raise ConfigError(
            "train.sync_batchnorm = true needs CUDA devices and the NCCL backend (torch's SyncBatchNorm does not run "
            f"on {dist.get_backend()}/CPU); set it to false: each rank then normalises with its own batch "
            "statistics @ $.train.sync_batchnorm"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def failure_message(exc: BaseException) -> str:
    """One line naming the rank, host and process that failed, and why (for the stderr of a distributed run)."""
    rank, world = os.environ.get("RANK", "?"), os.environ.get("WORLD_SIZE", "?")
    reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    hint = ""
    if "gloo" in type(exc).__name__.lower() or "Dist" in type(exc).__name__ or "collective" in reason.lower():
        hint = " (a collective failed: another rank probably died or hung; see its message above or below)"
    return (
        f"deepkd: rank {rank} of {world} (host {socket.gethostname()}, pid {os.getpid()}) failed: "
        f"{type(exc).__name__}: {reason}{hint}"
    )
