"""Ranks and collectives, in one place: which process this is, and everything the ranks of a ``torchrun`` run
exchange.

Each function is the identity (or the obvious answer) in a single process, so callers need no ``if distributed`` of
their own. Tensors are reduced on the device the process group's backend works on (the current CUDA device for
NCCL, the CPU otherwise) and returned on the device they came from. Starting and ending the process group is
:mod:`deepkd.launch`'s; no strategy module (losses, momentum, masks) imports this one: the optimizer reduces what
a strategy needs and hands it the result.

Where the collectives run: the optimizer's step (:class:`~deepkd.optim.DistillOptimizer`'s docstring lists them per
step), its ``state_dict`` (:func:`all_reduce_mean_` of the buffers), the trainer's stop-signal agreement
(:func:`any_rank`), checkpoints (:func:`gather_objects` of each rank's generators), the initial weights
(:func:`broadcast_module_`), the metrics and the teacher-logit cache (:func:`sum_over_ranks`).

>>> rank(), is_main_process(), world_size(), any_rank(True), gather_objects({"a": 1})
(0, True, 1, True, [{'a': 1}])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "all_reduce_mean_",
    "any_rank",
    "broadcast_module_",
    "flat_like",
    "gather_objects",
    "is_distributed",
    "is_main_process",
    "mean_over_ranks",
    "rank",
    "sum_over_ranks",
    "world_size",
]


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """The number of processes (1 without ``torch.distributed``)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank under ``torch.distributed`` (0 when it is not initialised)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """Whether this process logs and writes checkpoints: rank 0, or the only process."""
    return rank() == 0


def _backend_device(like: Tensor | None = None) -> torch.device:
    """Where the backend reduces: the current CUDA device for NCCL, else ``like``'s CPU device (or the CPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return like.device if like is not None and like.device.type == "cpu" else torch.device("cpu")


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


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (one tiny all-reduce; ``flag`` itself in a single process)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_backend_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_module_(module: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (in place; nothing in a single process), so that ranks
    whose models were initialised differently start from the same weights."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def gather_objects(own: Any) -> list[Any]:
    """Every rank's ``own`` (picklable: e.g. random-number-generator states, partial metric sums), in rank order;
    ``[own]`` in a single process."""
    if not is_distributed():
        return [own]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, own)
    return out
