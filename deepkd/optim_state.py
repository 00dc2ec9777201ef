"""The :class:`~deepkd.optim.DistillOptimizer`'s own state besides its strategies': what a step leaves on the
device and how its values are read back, and what ``state_dict()["deepkd"]`` holds.

- the runtime record (gradient buffer, the device's step count, the non-finite record), kept between steps;
- a step's values packed in one tensor, the one small collective that averages them over ranks, and the reader
  that turns them into a :class:`~deepkd.types.StepOutput`'s fields;
- :class:`OwnState`, the saved state (step count, offsets, momentum buffers, rule and mask states).

Nothing here reads the device during a step: :func:`record_step` and :func:`pack` only launch work, and a
:class:`~deepkd.types.StepOutput` calls its reader the first time one of its fields is read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from deepkd import distributed
from deepkd.decompose import GradientBuffer
from deepkd.errors import NonFiniteLossError
from deepkd.kernels import MomentumState
from deepkd.masks import PHASE_NAMES
from deepkd.types import MaskState

__all__ = [
    "OwnState",
    "Runtime", "finite_record", "mean_small_values", "new_runtime", "pack", "raise_if_bad", "reader", "record_step"]


class Runtime(NamedTuple):
    """What the optimizer keeps on the device between steps besides strategy states (built at the first step)."""

    grads: GradientBuffer
    step: Tensor  # int64: steps taken (the device's count, which a captured step advances)
    bad_step: Tensor  # int64: the first step whose loss was not finite (0: none yet)
    bad_parts: Tensor  # float32 [parts]: that step's loss parts
    skipped: Tensor  # int64: steps not applied
    clean: Tensor  # bool: no step's loss has been non-finite yet


def new_runtime(
    params: list[list[Tensor]], groups: int, parts: int, device: torch.device, steps: int, *, flat: bool | None
) -> Runtime:
    """A fresh :class:`Runtime` for ``params`` (per param group), ``groups`` gradient groups and ``parts`` loss
    parts, counting from ``steps``; ``flat`` as :data:`deepkd.optim.FLAT_GRADIENTS`."""
    zero = torch.zeros((), dtype=torch.int64, device=device)
    clean = torch.ones((), dtype=torch.bool, device=device)
    return Runtime(GradientBuffer(params, groups, flat=flat), zero + steps, zero.clone(),
                   torch.zeros(parts, device=device), zero.clone(), clean)  # fmt: skip


def record_step(rt: Runtime, parts: Tensor, ok: Tensor, skip: Tensor) -> None:
    """The non-finite record, on the device: the first step whose parts were not finite, its parts, and the count
    of steps not applied."""
    rt.step.add_(1)
    first = rt.clean & ~ok
    torch.where(first, rt.step, rt.bad_step, out=rt.bad_step)  # masked_fill_ with a tensor value would read it
    torch.where(first, parts, rt.bad_parts, out=rt.bad_parts)
    rt.clean.logical_and_(ok)
    rt.skipped.add_(skip)


def finite_record(rt: Runtime | None) -> Tensor | None:
    """``[first bad step, its parts...]`` as one float64 tensor on the device, or ``None`` before any step."""
    return None if rt is None else torch.cat([rt.bad_step.view(1).double(), rt.bad_parts.double()])


def raise_if_bad(record: Sequence[float], epochs: Sequence[tuple[int, int]], part_names: Sequence[str]) -> None:
    """Raise :class:`NonFiniteLossError` for a read-back :func:`finite_record` that names a bad step; ``epochs``
    lists ``(first step, epoch)`` pairs, to name that step's epoch."""
    bad_step = int(record[0])
    if bad_step:
        epoch = next((e for first, e in reversed(epochs) if first <= bad_step), 1)
        raise NonFiniteLossError.at(bad_step, epoch, dict(zip(part_names, record[1:])))


def pack(parts: Tensor, offsets: Tensor | None, gsnr: Tensor | None, mask: MaskState, skip: Tensor) -> Tensor:
    """The step's values in one float64 vector: parts, the offsets (when on the device), GSNR (when reported), K,
    phase, skipped."""
    pieces = [parts]
    if offsets is not None:
        pieces.append(offsets)
    if gsnr is not None:
        pieces.append(gsnr)
    pieces += [mask.k.view(1), mask.phase.view(1), skip.view(1)]
    return torch.cat(pieces).double()


def reader(
    names: Sequence[str],
    groups: Sequence[str],
    *,
    static_momenta: dict[str, float] | None,
    momenta_of: Callable[[list[float]], dict[str, float]],
    reports_gsnr: bool,
    record: Callable[[], Tensor | None] | None,
    check: Callable[[Sequence[float]], None],
) -> Callable[[Tensor], dict[str, Any]]:
    """How a step's :func:`pack`-ed values read back: ``names`` the loss parts, ``groups`` the gradient groups'
    names; ``static_momenta`` the parts' coefficients when they never move, else ``momenta_of(coefficients)`` maps
    the packed coefficients; ``record`` (when the non-finite record is checked) gives :func:`finite_record`, read
    together with the values and handed to ``check``."""
    n, g = len(names), len(groups)

    def read(packed: Tensor) -> dict[str, Any]:
        extra = record() if record is not None else None
        values = (packed if extra is None else torch.cat([packed, extra])).tolist()  # one read for both
        if extra is not None:
            check(values[-extra.numel() :])
        parts = dict(zip(names, values[:n]))
        at = n
        momenta = static_momenta
        if momenta is None:
            momenta, at = momenta_of(values[at : at + g]), at + g
        gsnr = None
        if reports_gsnr:
            gsnr, at = dict(zip(groups, values[at : at + g])), at + g
        k, phase, skipped = values[at : at + 3]
        return {
            "loss": float(sum(parts.values())),
            "parts": parts,
            "momenta": dict(momenta),
            "gsnr": gsnr,
            "k": int(k),
            "phase": PHASE_NAMES[int(phase)],
            "skipped": bool(skipped),
        }

    return read


def mean_small_values(
    parts: Tensor, hits: Tensor, samples: int, sample: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """One collective for the step's small values: the mean of the loss parts and of the offset rule's sample over
    ranks, and the sums of the mask's hit and sample counts (a mask gets the global batch's counts)."""
    counts = torch.stack([hits.float(), hits.new_full((), float(samples), dtype=torch.float32)])
    pieces = [parts.float(), counts]
    if sample is not None:
        pieces.append(sample.float())
    small = distributed.sum_over_ranks(torch.cat(pieces))
    world = distributed.world_size()
    n = parts.numel()
    reduced_sample = None if sample is None else small[n + 2 :] / world
    return small[:n] / world, small[n], small[n + 1], reduced_sample


class OwnState(NamedTuple):
    """What ``state_dict()["deepkd"]`` holds besides the recipe (packed as plain data)."""

    steps: int
    offsets: tuple[float, ...]
    momentum: tuple[MomentumState, ...]
    rule: Any  # the offset rule's state
    classes: int  # 0 before the first step
    mask: MaskState | None
