"""The whole strategy contract, in one file: what a registered strategy provides, the values it builds and receives,
and what one step reports.

A strategy is a frozen attrs class registered on its axis (:mod:`deepkd.registry`); the config is the data and its
methods are functions of it. The protocols say which methods each axis calls; the types below them are what those
methods take and return:

- a loss (:class:`LossStrategy`) builds its named parts, optionally with their logit gradients
  (:class:`PartsAndGrads`), for a top-K mask (:class:`Keep`, whose :data:`MaskForm` says what NCKD does with the
  masked classes);
- a momentum strategy (:class:`MomentumStrategy`) returns a :class:`Plan`: which parts share a buffer, its offsets
  and how they move (an :class:`OffsetRule`, called with a :class:`StepContext`), and its update
  (:class:`deepkd.kernels.Update`);
- a mask (:class:`MaskStrategy`) keeps its K in a :class:`MaskState`;
- a step reports a :class:`StepOutput`.

Rule and mask states are state-passing, changed in place: a function receives the state and returns it, and the
tensors that change during a run are changed where they are (``copy_``, ``add_``), never replaced, because a
captured step (:mod:`deepkd.capture`) replays the same memory. That is torch.optim's convention, not optax's pure
functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal, NamedTuple, Protocol

import attrs
from torch import Tensor

from deepkd.kernels import LINEAR, Update, UpdateFn

__all__ = [
    "MASK_FORMS",
    "Keep",
    "LossStrategy",
    "MaskForm",
    "MaskState",
    "MaskStrategy",
    "MomentumStrategy",
    "NoState",
    "OffsetRule",
    "Offsets",
    "PartsAndGrads",
    "Plan",
    "ScheduleStrategy",
    "StepContext",
    "StepOutput",
    "static_offsets",
]

# --------------------------------------------------------------------------------------------------------------
# Losses

#: what NCKD does with the classes a top-K mask drops: one "rest" bin (``"bucket"``) or nothing (``"renormalize"``)
MaskForm = Literal["bucket", "renormalize"]
MASK_FORMS: tuple[MaskForm, ...] = ("bucket", "renormalize")


class Keep(NamedTuple):
    """A top-K mask for NCKD: which non-target classes are kept, and what happens to the others.

    Attributes:
        mask: boolean ``[B, C]``, True for the kept non-target classes (the same set for teacher and student).
        form: ``"bucket"`` (the masked classes become one "rest" bin in both distributions) or ``"renormalize"``
            (NCKD over the kept classes alone, the masked ones dropped).
    """

    mask: Tensor
    form: MaskForm = "bucket"


class PartsAndGrads(NamedTuple):
    """A loss strategy's parts (0-dim float32 tensors, without autograd history) and each part's gradient with
    respect to the student logits (``[B, C]`` float32): what ``parts_and_grads`` returns."""

    values: dict[str, Tensor]
    grads: dict[str, Tensor]


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
    ) -> dict[str, Tensor]:
        """The loss's parts (``part_names``), 0-dim tensors whose sum is the loss. A loss may also define
        ``parts_and_grads(student, teacher, target, *, epoch, keep) -> PartsAndGrads | None`` (each part's value and
        its gradient with respect to ``student``, without autograd; ``None`` falls back to ``parts``)."""
        ...


# --------------------------------------------------------------------------------------------------------------
# Momentum: how a strategy's coefficient offsets evolve during a run, as an optax-style pair of functions over a
# state. The optimizer calls them the same way for every strategy.

ParamGrads = Sequence[Sequence[Sequence[Tensor]]]  # [param group][gradient group][param]
SplitGradients = Callable[[int], "tuple[list[list[list[Tensor]]], list[int]] | None"]
Offsets = tuple[float, ...] | Tensor  # numbers, or a float64 tensor [groups] on the parameters' device


class StepContext(NamedTuple):
    """What the optimizer shows an offset rule at one step.

    Attributes:
        step: the step being taken, counted from 1 (every call of ``distill_step``, skipped steps included).
        grads: this step's gradients ``[param group][gradient group][param]``, with zeros for parameters that take
            no gradient this step and zeros everywhere on a skipped step (``ok`` False); ``None`` while probing
            (before they are taken). In a distributed run they are this rank's own when ``local_grads`` is true,
            else averaged over ranks.
        split_gradients: ``split_gradients(m)`` takes each gradient group's gradient on ``m`` disjoint parts of the
            batch at the current parameters and returns ``([part][gradient group][trainable param], part sizes)``,
            or ``None`` when the batch has fewer than ``m`` samples. It costs ``m`` gradient products per group:
            call it only on the steps that need it (and only while probing).
        mean_over_ranks: the mean of a tensor over the processes of a distributed run (identity in a single one).
        local_grads: whether ``grads`` are this rank's own gradients (the optimizer's default ``sync="step"``, which
            all-reduces only the step direction) rather than their mean over ranks (``sync="grads"``, or a single
            process).
        ok: a 0-dim bool tensor on the device, False on a step that is skipped (a non-finite loss): a rule must
            then leave its state as it is (``torch.where(ctx.ok, new, old)``); ``None`` means the step is applied.
            The optimizer never reads it back, so neither should a rule.
        flat: per param group, its gradients as one ``[gradient groups, numel]`` tensor in the parameters' memory
            order (the optimizer's gradient buffer, see :func:`deepkd.gsnr.memory_positions`), or ``None``.
        sample: the mean over ranks of what the rule's ``sample`` returned for this step (see :class:`OffsetRule`);
            ``None`` for a rule without one.

    Contract: every rank must return the same offsets, equal to one process's on the global batch. A rule that
    derives anything from ``grads`` while ``local_grads`` is true must average it over ranks: through ``sample``
    (the values ride on the step's one small collective) or ``mean_over_ranks`` (a collective of its own); split
    gradients are always local, so what is derived from them must be reduced too.
    """

    step: int
    grads: ParamGrads | None
    split_gradients: SplitGradients
    mean_over_ranks: Callable[[Tensor], Tensor]
    local_grads: bool = False
    ok: Tensor | None = None
    flat: Sequence[Tensor] | None = None
    sample: Tensor | None = None


def _unchanged(state: Any, ctx: StepContext) -> Any:
    return state


def _never(step: int) -> bool:
    return False


class OffsetRule(NamedTuple):
    """A strategy's coefficient offsets as functions of a state (optax's ``init``/``update`` pattern, the state
    changed in place).

    Attributes:
        init: ``init(params)``, with ``params[i]`` the parameters of param group ``i``, returns the rule's state:
            a NamedTuple of tensors (nested NamedTuples, tuples and ``None`` allowed), saved in the optimizer's
            ``state_dict``. Tensors that change during the run must be changed in place, never replaced (a
            captured step replays the same memory; the optimizer refuses to capture a rule that replaces them).
        update: ``update(state, ctx) -> (offsets, state)``, called once per step after the gradients are taken;
            the offsets (one per gradient group) set this step's coefficients ``momentum + offset``: a tuple of
            numbers, or a float64 tensor on the device for offsets computed from the gradients (never read back).
        probe: ``probe(state, ctx) -> state``, called once per step before the gradients are taken, at the same
            parameters; for measurements that need extra gradients (``ctx.split_gradients``).
        report_gsnr: ``report_gsnr(state)``, the GSNR per gradient group that the rule reports with each step
            (``StepOutput.gsnr``; a tensor the rule updates in place), or ``None`` for a rule that measures none.
        sample: ``sample(state, ctx) -> Tensor | None``, called after the gradients are taken and before
            ``update``: values linear in this rank's gradients that every rank must agree on. The optimizer
            averages them over ranks together with the step's other small values (one collective) and hands the
            result to ``update`` as ``ctx.sample``.
        special: ``special(step) -> bool``: whether ``probe`` or ``update`` does at ``step`` what it does not at
            other steps (a GSNR estimate, a re-allocation): a captured graph of an ordinary step cannot stand in
            for such a step, so it runs eagerly.
    """

    init: Callable[[Sequence[Sequence[Tensor]]], Any]
    update: Callable[[Any, StepContext], tuple[Offsets, Any]]
    probe: Callable[[Any, StepContext], Any] = _unchanged
    report_gsnr: Callable[[Any], Tensor] | None = None
    sample: Callable[[Any, StepContext], Tensor | None] | None = None
    special: Callable[[int], bool] = _never


class NoState(NamedTuple):
    """The state of a rule that keeps none."""


def static_offsets(offsets: Sequence[float]) -> OffsetRule:
    """Offsets that stay as they are for the whole run (``sgd``, ``dot``, ``fixed``)."""
    fixed = tuple(float(o) for o in offsets)
    return OffsetRule(init=lambda params: NoState(), update=lambda state, ctx: (fixed, state))


def _task_group(plan: Plan) -> int:
    return next((i for i, group in enumerate(plan.groups) if "task" in group), 0)


@attrs.frozen
class Plan:
    r"""How a momentum strategy treats a loss's parts: its buffers, its offsets and how they move, its update.

    >>> plan = Plan((("task",), ("tckd", "nckd")), (-0.075, 0.075), (-0.075, 0.075))
    >>> plan.decay_group, plan.direction is not None
    (0, True)

    Attributes:
        groups: the parts that share each buffer (and one gradient product).
        offsets: each buffer's coefficient offset from the optimizer's ``momentum`` before the first step.
        offset_range: the smallest and largest offsets the strategy can ever use, so that every coefficient
            ``momentum + offset`` can be checked to lie in [0, 1) before the run.
        rule: how the offsets evolve (:class:`OffsetRule`); by default they stay ``offsets``.
        update: the parameter update, with its step direction and effective coefficients
            (:class:`~deepkd.kernels.Update`): :data:`~deepkd.kernels.LINEAR` (default) or the official code's
            :data:`~deepkd.kernels.OFFICIAL`.
        decay_group: the buffer whose gradient receives weight decay; by default the one holding ``task``.
        preserve_step: multiply each buffer's gradient by :math:`(1 - m_b)/(1 - \mu)`, so that an offset changes how
            the buffer smooths its gradient but not how far it moves the parameters: a constant gradient moves them
            :math:`\mathrm{lr}/(1 - \mu)` per step whatever the offset (at :math:`\mu + 0.075 = 0.975` an
            unscaled buffer moves them 4× as far as one at :math:`\mu = 0.9`).

    ``apply``, ``direction`` and ``effective`` read ``update``'s parts.
    """

    groups: tuple[tuple[str, ...], ...]
    offsets: tuple[float, ...]
    offset_range: tuple[float, float]
    rule: OffsetRule = attrs.field(
        default=attrs.Factory(lambda self: static_offsets(self.offsets), takes_self=True), eq=False
    )
    update: Update = attrs.field(default=LINEAR, eq=False)
    decay_group: int = attrs.field(default=attrs.Factory(_task_group, takes_self=True))
    preserve_step: bool = False

    @property
    def apply(self) -> UpdateFn:
        """The parameter update (``update.apply``)."""
        return self.update.apply

    @property
    def direction(self) -> UpdateFn | None:
        """The update's summed step direction, or ``None`` when it is not linear in the gradients."""
        return self.update.direction

    def effective(self, coefficients: tuple[float, ...]) -> tuple[float, ...]:
        """The coefficients the buffers' updates actually use (reported per part)."""
        return self.update.effective(coefficients)


class MomentumStrategy(Protocol):
    """A momentum strategy (``deepkd.register_momentum``): its :class:`Plan` for a loss's parts."""

    def plan(self, parts: Sequence[str]) -> Plan: ...


# --------------------------------------------------------------------------------------------------------------
# Masks


class MaskState(NamedTuple):
    """State of a mask strategy: the current K and phase, and the smoothed training accuracy. The optimizer moves it
    to the logits' device at the first step; strategies change its tensors in place (a captured step replays the
    same memory)."""

    k: Tensor  # int64 scalar; K >= C - 1 means no masking
    phase: Tensor  # int64 scalar; NO_PHASE (-1), EASY (0), TRANSITION (1) or HARD (2), see deepkd.masks
    accuracy: Tensor  # float64 scalar: moving average of the training top-1 accuracy (0 before the first step)
    steps: Tensor  # int64 scalar: steps observed


class MaskStrategy(Protocol):
    """A mask (``deepkd.register_mask``): which K the NCKD top-K mask keeps, as a state the steps move."""

    @property
    def form(self) -> MaskForm:
        """``"bucket"`` or ``"renormalize"``: what NCKD does with the masked classes."""
        ...

    def init(self, num_classes: int) -> MaskState: ...

    def observe(self, state: MaskState, hits: Tensor, samples: Tensor | int, num_classes: int) -> MaskState:
        """The state after one training step with ``hits`` correct top-1 predictions out of ``samples`` (tensors on
        the device; zero ``samples`` for a step that was skipped, which should change nothing).

        The counts are the global batch's: in a distributed run the optimizer sums them over ranks in the step's one
        small collective (none under ``sync="off"``, where ranks train apart), so a mask never talks to other ranks
        and every rank's state moves alike. Change the state's tensors in place and never read them back (the step
        must not wait for the device). A strategy may also define ``keep(state, teacher, target) -> Keep | None``,
        the kept classes of this step (by default the teacher's top ``state.k`` non-target classes, computed on the
        device), and ``observes = False`` when ``observe`` never changes anything (the optimizer then skips it)."""
        ...


# --------------------------------------------------------------------------------------------------------------
# Schedules and what a step reports


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
