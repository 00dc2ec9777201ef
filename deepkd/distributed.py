"""Collectives for runs under ``torchrun``: when to synchronise, and the means and sums every rank must share.

Each function is the identity in a single process, so callers need no ``if distributed`` of their own. Tensors are
reduced on the device the process group's backend works on (the current CUDA device for NCCL, the CPU otherwise)
and returned on the device they came from.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_reduce_mean_", "flat_like", "is_distributed", "mean_over_ranks", "sum_over_ranks", "world_size"]


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """The number of processes (1 without ``torch.distributed``)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _backend_device(like: Tensor) -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return like.device if like.device.type == "cpu" else torch.device("cpu")


def sum_over_ranks(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over all processes (a new tensor on ``tensor``'s device); ``tensor`` itself alone."""
    if not is_distributed():
        return tensor
    work = tensor.detach().to(_backend_device(tensor), copy=True)
    dist.all_reduce(work)
    return work.to(tensor.device)


def mean_over_ranks(tensor: Tensor) -> Tensor:
    """The mean of ``tensor`` over all processes (a new tensor on ``tensor``'s device); ``tensor`` itself alone."""
    if not is_distributed():
        return tensor
    return sum_over_ranks(tensor) / dist.get_world_size()


def all_reduce_mean_(tensors: Sequence[Tensor]) -> None:
    """Average ``tensors`` over all processes in place, with one collective for all of them (same dtype); a single
    contiguous tensor (the buffer of :func:`flat_like`) is reduced where it is, without a copy."""
    if not tensors or not is_distributed():
        return
    if len(tensors) == 1 and tensors[0].is_contiguous():
        dist.all_reduce(tensors[0])
        tensors[0].div_(dist.get_world_size())
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def flat_like(tensors: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Uninitialised tensors shaped like ``tensors``, and what to pass to :func:`all_reduce_mean_` to average them all
    with one collective: the one flat buffer they are views into when they share a dtype and device, else
    themselves."""
    if not tensors:
        return [], []
    first = tensors[0]
    if any(t.dtype != first.dtype or t.device != first.device for t in tensors):
        out = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in tensors]
        return out, out
    flat = torch.empty(sum(t.numel() for t in tensors), dtype=first.dtype, device=first.device)
    return [c.view_as(t) for c, t in zip(flat.split([t.numel() for t in tensors]), tensors)], [flat]
