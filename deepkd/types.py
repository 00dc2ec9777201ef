"""The types deepkd's parts agree on: what a registered strategy provides, and what one step reports.

A strategy is a frozen attrs class registered on its axis (:mod:`deepkd.registry`); the config is the data and its
methods are pure functions of it. The protocols below say which methods each axis calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol

import attrs
from torch import Tensor

if TYPE_CHECKING:
    from deepkd.losses import Keep, MaskForm
    from deepkd.masks import MaskState
    from deepkd.momentum import Plan

__all__ = ["LossStrategy", "MaskStrategy", "MomentumStrategy", "ScheduleStrategy", "StepOutput"]


class LossStrategy(Protocol):
    """A loss (``deepkd.register_loss``): its named parts, built from student and teacher logits."""

    part_names: ClassVar[tuple[str, ...]]
    needs_teacher: ClassVar[bool]
    # whether ``parts`` depends on ``epoch``; the optimizer then refuses a step without it (assumed True if absent)
    uses_epoch: bool

    def parts(
        self, student: Tensor, teacher: Tensor | None, target: Tensor, *, epoch: int, keep: Tensor | Keep | None
    ) -> dict[str, Tensor]: ...


class MomentumStrategy(Protocol):
    """A momentum strategy (``deepkd.register_momentum``): its :class:`~deepkd.momentum.Plan` for a loss's parts."""

    def plan(self, parts: Sequence[str]) -> Plan: ...


class MaskStrategy(Protocol):
    """A mask (``deepkd.register_mask``): which K the NCKD top-K mask keeps, as a state the steps move."""

    @property
    def form(self) -> MaskForm:
        """``"bucket"`` or ``"renormalize"``: what NCKD does with the masked classes."""
        ...

    def init(self, num_classes: int) -> MaskState: ...

    def observe(self, state: MaskState, hits: Tensor, samples: int, num_classes: int) -> MaskState:
        """The state after one training step with ``hits`` correct top-1 predictions out of ``samples``."""
        ...


class ScheduleStrategy(Protocol):
    """A learning-rate schedule (``deepkd.schedules.register_schedule``)."""

    def factor(self, t: float, epochs: int) -> float:
        """The learning-rate multiplier after ``t`` (fractional) epochs of an ``epochs``-epoch run."""
        ...


@attrs.frozen(kw_only=True)
class StepOutput:
    """What one :meth:`~deepkd.optim.DistillOptimizer.distill_step` did.

    Attributes:
        step: the optimizer step count after this step (skipped steps do not count).
        loss: the total loss (sum of the parts).
        parts: each loss part's value (in a distributed run, the mean over ranks: the global batch's).
        momenta: each part's momentum coefficient (first param group).
        gsnr: each gradient group's GSNR (per sample) when the strategy or ``track_gsnr`` measures it (NaN before
            the first estimate).
        k: the mask's K (C − 1 when no masking) and ``phase`` its phase name.
        correct: top-1 hits of this batch (a 0-dim tensor, not synchronised).
        skipped: True when a non-finite loss was skipped under ``nonfinite="skip"``.
    """

    step: int
    loss: float
    parts: dict[str, float]
    momenta: dict[str, float]
    gsnr: dict[str, float] | None
    k: int
    phase: str
    correct: Tensor
    skipped: bool = False
