r"""Top-K masks over the non-target classes for NCKD, and the dynamic (DTM) schedule of K.

The teacher's non-target logits are ranked (the target excluded, ties broken by class index) and the first K are
kept; the same kept set masks teacher and student inside NCKD. Because the ranking is a fixed total order, the kept
set for K is contained in the kept set for K + 1. K ≥ C − 1 means no masking.

What happens to the masked classes is the mask's ``form`` (:data:`deepkd.types.MaskForm`, :func:`deepkd.losses.nckd`):
``"bucket"`` (default) merges them into one "rest" bin in both distributions, so the teacher's total mass on its
tail still constrains the student; ``"renormalize"`` drops them (the literal reading of the paper), which leaves the
student's mass on them without a gradient (``python -m benchmarks.algorithm collapse``: in a designed case it stays
where it started; in short training runs it drifted little).

The dynamic top-K mask of DeepKD (arXiv 2505.15133, §3.3) grows K with the student's training top-1 accuracy,
smoothed over steps (an exponential moving average with a time constant of ``horizon`` steps, starting at 0):

- Easy (``acc < a1``): K = K_min = round(easy · C) (at least 1; at least 2 for ``renormalize``, where NCKD over a
  single class is identically zero)
- Transition (``a1 ≤ acc < a2``): K grows linearly in ``acc`` from K_min to K_max
- Hard (``acc ≥ a2``): K = K_max = round(hard · C), clipped to C − 1 (the default ``hard = 1`` means no masking)

K is updated every step, on the device (the optimizer never reads it back), and never decreases. Because the
smoothed accuracy moves by at most 1/``horizon`` per step, K grows by at most ⌈(K_max − K_min) / ((a2 − a1) ·
horizon)⌉ + 1 classes per step (the + 1 for rounding): the NCKD term never switches on at full weight in one
step. The paper gives no K values; these are deepkd's own. Rounding is half up everywhere.

>>> import torch
>>> teacher = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
>>> topk_keep_mask(teacher, torch.tensor([1]), 2)
tensor([[False, False,  True,  True]])
>>> dynamic_k(0.45, 100, thresholds=(0.3, 0.6))
(55, 1)
"""

from __future__ import annotations

import math
from typing import ClassVar

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from deepkd.registry import register_mask
from deepkd.types import MASK_FORMS, Keep, MaskForm, MaskState
from deepkd.validators import integer, real

__all__ = [
    "DynamicMask",
    "NoMask",
    "StaticMask",
    "EASY",
    "HARD",
    "NO_PHASE",
    "PHASE_NAMES",
    "TRANSITION",
    "MaskState",  # deepkd.types.MaskState, at its earlier import path
    "dynamic_k",
    "dynamic_k_of",
    "k_range",
    "rank_keep_mask",
    "phase_of",
    "round_half_up",
    "static_k",
    "topk_keep_mask",
]

NO_PHASE, EASY, TRANSITION, HARD = -1, 0, 1, 2
PHASE_NAMES = {NO_PHASE: "none", EASY: "easy", TRANSITION: "transition", HARD: "hard"}


def round_half_up(x: float) -> int:
    """Round to the nearest integer, halves up (Python's ``round`` sends halves to the even neighbour).

    >>> round_half_up(2.5), round(2.5)
    (3, 2)
    """
    return math.floor(x + 0.5)


def new_state(k: int, phase: int, device: torch.device | str | None = None) -> MaskState:
    """A fresh :class:`MaskState` with no accuracy observed yet."""
    return MaskState(
        torch.tensor(k, dtype=torch.int64, device=device),
        torch.tensor(phase, dtype=torch.int64, device=device),
        torch.zeros((), dtype=torch.float64, device=device),
        torch.zeros((), dtype=torch.int64, device=device),
    )


def topk_keep_mask(teacher: Tensor, target: Tensor, k: int) -> Tensor | None:
    """Boolean ``[B, C]`` mask of the teacher's top-``k`` non-target classes, or ``None`` when ``k ≥ C − 1``.

    The target is never kept; exactly ``min(k, C − 1)`` classes are kept per row; ties are broken by class index,
    so ``kept(k) ⊆ kept(k + 1)``.
    """
    classes = teacher.shape[1]
    if k >= classes - 1:
        return None
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    z = teacher.detach().float().scatter(1, target.long()[:, None], float("-inf"))
    order = torch.sort(z, dim=1, descending=True, stable=True).indices
    keep = torch.zeros_like(z, dtype=torch.bool)
    keep.scatter_(1, order[:, :k], True)
    return keep


def rank_keep_mask(teacher: Tensor, target: Tensor, k: Tensor) -> Tensor:
    """:func:`topk_keep_mask` for a K held on the device (a 0-dim integer tensor), without reading it back: each
    class's rank in the teacher's order (target excluded, ties by class index) compared with K. The same kept set
    as ``topk_keep_mask(teacher, target, int(k))``, all non-target classes when ``k ≥ C − 1``."""
    classes = teacher.shape[1]
    z = teacher.detach().float().scatter(1, target.long()[:, None], float("-inf"))
    order = torch.sort(z, dim=1, descending=True, stable=True).indices
    positions = torch.arange(classes, device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    return (rank < k).scatter_(1, target.long()[:, None], False)


def static_k(num_classes: int, k: int | None = None, fraction: float = 0.25) -> int:
    """The K of a static mask: ``k`` if given, else round(``fraction`` · C) (half up); clipped to ``[1, C − 1]``."""
    raw = k if k is not None else round_half_up(fraction * num_classes)
    return int(min(max(raw, 1), num_classes - 1))


def k_range(num_classes: int, easy: float, hard: float, form: MaskForm = "bucket") -> tuple[int, int]:
    """``(K_min, K_max)`` of the dynamic schedule for ``C`` classes.

    K_min = round(easy · C), at least 1 (at least 2 for ``renormalize``: NCKD over one class is identically zero);
    K_max = round(hard · C), at least K_min; both clipped to C − 1.

    >>> k_range(10, 0.1, 1.0), k_range(10, 0.1, 1.0, "renormalize"), k_range(100, 0.1, 0.3)
    ((1, 9), (2, 9), (10, 30))
    """
    floor = 2 if form == "renormalize" else 1
    top = num_classes - 1
    k_min = min(max(round_half_up(easy * num_classes), floor), top)
    k_max = min(max(round_half_up(hard * num_classes), k_min), top)
    return k_min, k_max


def phase_of(accuracy: float, thresholds: tuple[float, float]) -> int:
    """EASY, TRANSITION or HARD for a training accuracy and thresholds ``(a1, a2)``."""
    a1, a2 = thresholds
    if accuracy < a1:
        return EASY
    return TRANSITION if accuracy < a2 else HARD


def dynamic_k(
    accuracy: float,
    num_classes: int,
    thresholds: tuple[float, float] = (0.30, 0.60),
    easy: float = 0.1,
    hard: float = 1.0,
    form: MaskForm = "bucket",
) -> tuple[int, int]:
    """``(K, phase)`` of the dynamic schedule for one accuracy reading (before the never-decrease rule)."""
    a1, a2 = thresholds
    k_min, k_max = k_range(num_classes, easy, hard, form)
    phase = phase_of(accuracy, thresholds)
    if phase == EASY:
        return k_min, phase
    if phase == HARD:
        return k_max, phase
    frac = (accuracy - a1) / (a2 - a1)
    return round_half_up(k_min + frac * (k_max - k_min)), phase


def dynamic_k_of(
    accuracy: Tensor,
    num_classes: int,
    thresholds: tuple[float, float] = (0.30, 0.60),
    easy: float = 0.1,
    hard: float = 1.0,
    form: MaskForm = "bucket",
) -> tuple[Tensor, Tensor]:
    """:func:`dynamic_k` of an accuracy held on the device (a float64 0-dim tensor): ``(K, phase)`` as int64
    tensors on its device, the same numbers, computed without reading anything back."""
    a1, a2 = thresholds
    k_min, k_max = k_range(num_classes, easy, hard, form)
    frac = (accuracy - a1) / (a2 - a1)
    k_mid = torch.floor(frac * (k_max - k_min) + k_min + 0.5).to(torch.int64)
    easy_phase, hard_phase = accuracy < a1, accuracy >= a2
    k = torch.where(easy_phase, k_min, torch.where(hard_phase, k_max, k_mid))
    phase = torch.where(easy_phase, EASY, torch.where(hard_phase, HARD, TRANSITION))
    return k, phase


def max_k_step(num_classes: int, cfg: DynamicMask) -> int:
    """The most K can grow in one step under ``cfg`` (the smoothed accuracy moves by at most 1/horizon a step)."""
    k_min, k_max = k_range(num_classes, cfg.easy, cfg.hard, cfg.form)
    a1, a2 = cfg.thresholds
    return math.ceil((k_max - k_min) / ((a2 - a1) * cfg.horizon)) + 1


def smooth_accuracy(state: MaskState, hits: Tensor, samples: Tensor | int, horizon: int) -> MaskState:
    """Fold one batch's training top-1 ``hits`` out of ``samples`` into the moving average (time constant
    ``horizon`` steps), in place. The optimizer passes the counts of the global batch in a distributed run, and zero
    samples on a skipped step, which observes nothing."""
    acc = state.accuracy
    batch_acc = hits.to(acc) / (samples.to(acc).clamp_min(1.0) if isinstance(samples, Tensor) else max(samples, 1))
    delta = (batch_acc - acc) / horizon
    seen = samples > 0
    acc.add_(torch.where(seen, delta, 0.0) if isinstance(seen, Tensor) else (delta if seen else 0.0))
    state.steps.add_(seen if isinstance(seen, Tensor) else int(seen))
    return state


# --------------------------------------------------------------------------------------------------------------
# Strategies


def keep_mask(state: MaskState, teacher: Tensor, target: Tensor, form: MaskForm = "bucket") -> Keep | None:
    """The :class:`~deepkd.types.Keep` mask for the state's current K, held on the device (all non-target classes
    once K ≥ C − 1: NCKD then equals the unmasked one up to rounding). Strategies whose K is fixed know it on the
    host and say so with a ``keep`` method of their own."""
    return Keep(rank_keep_mask(teacher, target, state.k), form)


_form = v.in_(MASK_FORMS)


@register_mask("none")
@attrs.frozen(kw_only=True)
class NoMask:
    """No masking: NCKD over every non-target class."""

    form: MaskForm = attrs.field(default="bucket", init=False)
    observes: ClassVar[bool] = False  # its state never changes: the optimizer need not count hits for it

    def init(self, num_classes: int) -> MaskState:
        return new_state(num_classes - 1, NO_PHASE)

    def keep(self, state: MaskState, teacher: Tensor, target: Tensor) -> Keep | None:
        return None

    def observe(self, state: MaskState, hits: Tensor, samples: Tensor | int, num_classes: int) -> MaskState:
        return state


@register_mask("static")
@attrs.frozen(kw_only=True)
class StaticMask:
    """A fixed top-K mask: ``k`` classes, or by default round(``fraction`` · C), clipped to [1, C − 1].

    ``form``: ``"bucket"`` (masked classes as one rest bin, default) or ``"renormalize"`` (dropped).
    """

    k: int | None = attrs.field(default=None, validator=v.optional(integer(ge=1)))
    fraction: float = attrs.field(default=0.25, validator=real(gt=0.0, le=1.0))
    form: MaskForm = attrs.field(default="bucket", validator=_form)
    observes: ClassVar[bool] = False

    def init(self, num_classes: int) -> MaskState:
        return new_state(static_k(num_classes, self.k, self.fraction), NO_PHASE)

    def keep(self, state: MaskState, teacher: Tensor, target: Tensor) -> Keep | None:
        mask = topk_keep_mask(teacher, target, static_k(teacher.shape[1], self.k, self.fraction))
        return None if mask is None else Keep(mask, self.form)

    def observe(self, state: MaskState, hits: Tensor, samples: Tensor | int, num_classes: int) -> MaskState:
        return state


def _thresholds(instance: object, attribute: attrs.Attribute, value: tuple[float, float]) -> None:  # type: ignore[type-arg]
    ok = isinstance(value, tuple) and len(value) == 2
    ok = ok and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in value)
    if not ok or not 0.0 <= value[0] < value[1] <= 1.0:
        raise ValueError(f"thresholds must be two accuracies 0 <= a1 < a2 <= 1, got {value!r}")


@register_mask("dynamic")
@attrs.frozen(kw_only=True)
class DynamicMask:
    """DeepKD's dynamic top-K mask: K grows through Easy, Transition and Hard phases with training accuracy.

    Attributes:
        thresholds: ``(a1, a2)``; (0.30, 0.60) for CIFAR-100-like data, (0.40, 0.70) for ImageNet.
        easy: K_min = round(easy · C), the K of the Easy phase and the start of Transition.
        hard: K_max = round(hard · C) (clipped to C − 1), reached at the end of Transition and kept in Hard;
            1.0 means no masking in the Hard phase.
        horizon: time constant, in steps, of the moving average of the training accuracy that drives K.
        form: ``"bucket"`` (masked classes as one rest bin, default) or ``"renormalize"`` (dropped).
    """

    thresholds: tuple[float, float] = attrs.field(default=(0.30, 0.60), converter=tuple, validator=_thresholds)
    easy: float = attrs.field(default=0.1, validator=real(gt=0.0, le=1.0))
    hard: float = attrs.field(default=1.0, validator=real(gt=0.0, le=1.0))
    horizon: int = attrs.field(default=100, validator=integer(ge=1))
    form: MaskForm = attrs.field(default="bucket", validator=_form)

    def __attrs_post_init__(self) -> None:
        if self.hard < self.easy:
            raise ValueError(f"hard ({self.hard}) must be >= easy ({self.easy})")

    def init(self, num_classes: int) -> MaskState:
        return new_state(k_range(num_classes, self.easy, self.hard, self.form)[0], EASY)

    def keep(self, state: MaskState, teacher: Tensor, target: Tensor) -> Keep | None:
        return keep_mask(state, teacher, target, self.form)

    def observe(self, state: MaskState, hits: Tensor, samples: Tensor | int, num_classes: int) -> MaskState:
        state = smooth_accuracy(state, hits, samples, self.horizon)
        k, phase = dynamic_k_of(state.accuracy, num_classes, self.thresholds, self.easy, self.hard, self.form)
        state.k.copy_(torch.maximum(state.k, k))
        state.phase.copy_(torch.maximum(state.phase, phase))
        return state
