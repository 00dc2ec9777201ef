"""The types deepkd's parts agree on: what a registered strategy provides, and what one step reports.

A strategy is a frozen attrs class registered on its axis (:mod:`deepkd.registry`); the config is the data and its
methods are pure functions of it. The protocols below say which methods each axis calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

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
    # whether ``parts`` depends on ``epoch``; the optimizer then refuses a step without it (assumed True if absent).
    # A loss may also define ``epoch_key(epoch)``: what of the epoch its parts depend on (DKD: the warm-up factor),
    # so that a captured step (:mod:`deepkd.capture`) is reused across epochs with the same key.
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

    def observe(self, state: MaskState, hits: Tensor, samples: Tensor | int, num_classes: int) -> MaskState:
        """The state after one training step with ``hits`` correct top-1 predictions out of ``samples``: counts of
        the global batch (summed over ranks by the optimizer in a distributed run), on the device, and zero
        ``samples`` for a step that was skipped, which should change nothing. Change the state's tensors in place
        and never read them back (the step must not wait for the device). A strategy may also define
        ``keep(state, teacher, target) -> Keep | None``, the kept classes of this step (by default the teacher's
        top ``state.k`` non-target classes, computed on the device)."""
        ...


class ScheduleStrategy(Protocol):
    """A learning-rate schedule (``deepkd.schedules.register_schedule``)."""

    def factor(self, t: float, epochs: int) -> float:
        """The learning-rate multiplier after ``t`` (fractional) epochs of an ``epochs``-epoch run."""
        ...


class StepOutput:
    """What one :meth:`~deepkd.optim.DistillOptimizer.distill_step` did.

    The step's values stay on the device until one of them is first read; then all of them are read back together
    (on CUDA one synchronisation, the same wait as ``loss.item()``). Reading them every step makes every step wait
    for the device: read them every few steps, as the :class:`~deepkd.trainer.Trainer` does every ``log_every``
    steps, or keep :attr:`tensor` (the values as one float64 tensor on the device) and read it later.

    Attributes:
        step: the optimizer's step count after this step (every call counts, a skipped one too).
        correct: top-1 hits of this batch (a 0-dim tensor on the device, not read back).
        loss: the total loss (sum of the parts).
        parts: each loss part's value (in a distributed run, the mean over ranks: the global batch's).
        momenta: each part's momentum coefficient (first param group).
        gsnr: each gradient group's GSNR (per sample) when the strategy or ``track_gsnr`` measures it (NaN before
            the first estimate), else ``None``.
        k: the mask's K (C − 1 when no masking) and ``phase`` its phase name.
        skipped: True when the step's loss was not finite and the step was not applied.

    Reading a value raises :class:`~deepkd.errors.NonFiniteLossError` when the optimizer runs with
    ``nonfinite="raise"`` and a step's loss was not finite.
    """

    __slots__ = ("_reader", "_values", "correct", "step", "tensor")

    def __init__(
        self, *, step: int, tensor: Tensor, reader: Callable[[Tensor], dict[str, Any]], correct: Tensor | None = None
    ) -> None:
        self.step, self.tensor, self.correct = step, tensor, correct
        self._reader = reader
        self._values: dict[str, Any] | None = None

    def _get(self) -> dict[str, Any]:
        if self._values is None:
            self._values = self._reader(self.tensor)
        return self._values

    @property
    def loss(self) -> float:
        return self._get()["loss"]  # type: ignore[no-any-return]

    @property
    def parts(self) -> dict[str, float]:
        return self._get()["parts"]  # type: ignore[no-any-return]

    @property
    def momenta(self) -> dict[str, float]:
        return self._get()["momenta"]  # type: ignore[no-any-return]

    @property
    def gsnr(self) -> dict[str, float] | None:
        return self._get()["gsnr"]  # type: ignore[no-any-return]

    @property
    def k(self) -> int:
        return self._get()["k"]  # type: ignore[no-any-return]

    @property
    def phase(self) -> str:
        return self._get()["phase"]  # type: ignore[no-any-return]

    @property
    def skipped(self) -> bool:
        return self._get()["skipped"]  # type: ignore[no-any-return]

    def as_dict(self) -> dict[str, Any]:
        """Every value (read back once): ``step``, ``loss``, ``parts``, ``momenta``, ``gsnr``, ``k``, ``phase``,
        ``skipped``."""
        return {"step": self.step, **self._get()}

    def __repr__(self) -> str:
        if self._values is None:
            return f"StepOutput(step={self.step}, <values on {self.tensor.device}, not read yet>)"
        return "StepOutput(" + ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items()) + ")"
