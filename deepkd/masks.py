r"""Top-K masks over the non-target classes for NCKD, and the dynamic (DTM) schedule of K.

The teacher's non-target logits are ranked (the target excluded, ties broken by class index) and the first K are
kept; the same kept set masks teacher and student inside NCKD. Because the ranking is a fixed total order, the kept
set for K is contained in the kept set for K + 1. K ≥ C − 1 means no masking.

The dynamic top-K mask of DeepKD (arXiv 2505.15133, §3.3) grows K through three phases driven by the student's
training top-1 accuracy ``acc``:

- Easy (``acc < a1``): K = round(easy · C)
- Transition (``a1 ≤ acc < a2``): K grows linearly in ``acc`` from round(easy · C) to round(transition_end · C)
- Hard (``acc ≥ a2``): K = C − 1 (no masking)

The paper gives no numbers for K; the defaults ``easy = 0.1``, ``transition_end = 0.3`` are deepkd's own, chosen so
that the Transition phase ends in the K ≈ 20–30 range the paper's ablation found best on CIFAR-100. K and the phase
never decrease during a run.

>>> import torch
>>> teacher = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
>>> topk_keep_mask(teacher, torch.tensor([1]), 2)
tensor([[False, False,  True,  True]])
>>> dynamic_k(0.45, 100, thresholds=(0.3, 0.6))
(20, 1)
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import attrs
import torch
import torch.distributed as dist
from attrs import validators as v
from torch import Tensor

from deepkd.registry import register_mask
from deepkd.validators import integer, real

__all__ = [
    "DynamicMask",
    "MaskStrategy",
    "NoMask",
    "StaticMask",
    "EASY",
    "HARD",
    "NO_PHASE",
    "PHASE_NAMES",
    "TRANSITION",
    "MaskState",
    "dynamic_k",
    "phase_of",
    "static_k",
    "topk_keep_mask",
]

NO_PHASE, EASY, TRANSITION, HARD = -1, 0, 1, 2
PHASE_NAMES = {NO_PHASE: "none", EASY: "easy", TRANSITION: "transition", HARD: "hard"}


class MaskState(NamedTuple):
    """State of a mask strategy: the current K and phase, and the accuracy counts of the open window."""

    k: Tensor  # int64 scalar; K >= C - 1 means no masking
    phase: Tensor  # int64 scalar; NO_PHASE, EASY, TRANSITION or HARD
    correct: Tensor  # float64 scalar: correct training predictions in the open window
    seen: Tensor  # float64 scalar: training samples in the open window
    accuracy: Tensor  # float64 scalar: accuracy of the last closed window (NaN before the first)


def new_state(k: int, phase: int, device: torch.device | str | None = None) -> MaskState:
    """A fresh :class:`MaskState` with empty accuracy counts."""
    i64 = dict(dtype=torch.int64, device=device)
    f64 = dict(dtype=torch.float64, device=device)
    return MaskState(
        torch.tensor(k, **i64),  # type: ignore[arg-type]
        torch.tensor(phase, **i64),  # type: ignore[arg-type]
        torch.zeros((), **f64),  # type: ignore[arg-type]
        torch.zeros((), **f64),  # type: ignore[arg-type]
        torch.full((), float("nan"), **f64),  # type: ignore[arg-type]
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


def static_k(num_classes: int, k: int | None = None, fraction: float = 0.25) -> int:
    """The K of a static mask: ``k`` if given, else ``round(fraction · C)``; clipped to ``[1, C − 1]``."""
    raw = k if k is not None else round(fraction * num_classes)
    return int(min(max(raw, 1), num_classes - 1))


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
    transition_end: float = 0.3,
) -> tuple[int, int]:
    """``(K, phase)`` of the dynamic schedule for one accuracy reading (before the never-decrease rule)."""
    a1, a2 = thresholds
    k_easy = static_k(num_classes, fraction=easy)
    k_end = max(static_k(num_classes, fraction=transition_end), k_easy)
    phase = phase_of(accuracy, thresholds)
    if phase == EASY:
        return k_easy, phase
    if phase == HARD:
        return num_classes - 1, phase
    frac = (accuracy - a1) / (a2 - a1)
    return round(k_easy + frac * (k_end - k_easy)), phase


def accumulate(state: MaskState, hits: Tensor, samples: int) -> MaskState:
    """Add one batch's training top-1 ``hits`` (a 0-dim tensor, kept on its device: no synchronisation) out of
    ``samples`` to the open window."""
    return state._replace(correct=state.correct + hits.to(state.correct), seen=state.seen + samples)


def close_window(state: MaskState) -> tuple[MaskState, float | None]:
    """Close the accuracy window (all-reduced across ranks when torch.distributed is initialised).

    Returns the reset state and the window's accuracy, or ``None`` when the window saw no samples.
    """
    counts = torch.stack([state.correct, state.seen])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts)
    correct, seen = (float(v) for v in counts.tolist())
    zero = torch.zeros_like(state.correct)
    reset = state._replace(correct=zero, seen=zero.clone())
    if seen <= 0:
        return reset, None
    acc = correct / seen
    return reset._replace(accuracy=torch.full_like(state.accuracy, acc)), acc


# --------------------------------------------------------------------------------------------------------------
# Strategies


class MaskStrategy(Protocol):
    """What a registered mask strategy provides."""

    @property
    def window(self) -> int | None:
        """Steps per accuracy window, ``None`` for one window per epoch."""
        ...

    def init(self, num_classes: int) -> MaskState: ...

    def advance(self, state: MaskState, accuracy: float, num_classes: int) -> MaskState: ...


def keep_mask(state: MaskState, teacher: Tensor, target: Tensor) -> Tensor | None:
    """The keep-mask for the state's current K (``None`` when K ≥ C − 1)."""
    return topk_keep_mask(teacher, target, int(state.k))


@register_mask("none")
@attrs.frozen(kw_only=True)
class NoMask:
    """No masking: NCKD over every non-target class."""

    window: int | None = attrs.field(default=None, init=False)

    def init(self, num_classes: int) -> MaskState:
        return new_state(num_classes - 1, NO_PHASE)

    def advance(self, state: MaskState, accuracy: float, num_classes: int) -> MaskState:
        return state


@register_mask("static")
@attrs.frozen(kw_only=True)
class StaticMask:
    """A fixed top-K mask: ``k`` classes, or by default round(``fraction`` · C), clipped to [1, C − 1]."""

    k: int | None = attrs.field(default=None, validator=v.optional(integer(ge=1)))
    fraction: float = attrs.field(default=0.25, validator=real(gt=0.0, le=1.0))
    window: int | None = attrs.field(default=None, init=False)

    def init(self, num_classes: int) -> MaskState:
        return new_state(static_k(num_classes, self.k, self.fraction), NO_PHASE)

    def advance(self, state: MaskState, accuracy: float, num_classes: int) -> MaskState:
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
        easy: K = round(easy · C) in the Easy phase and at the start of Transition.
        transition_end: K reaches round(transition_end · C) at the end of Transition.
        window: steps per accuracy reading; ``None`` reads the accuracy once per epoch.
    """

    thresholds: tuple[float, float] = attrs.field(default=(0.30, 0.60), converter=tuple, validator=_thresholds)
    easy: float = attrs.field(default=0.1, validator=real(gt=0.0, le=1.0))
    transition_end: float = attrs.field(default=0.3, validator=real(gt=0.0, le=1.0))
    window: int | None = attrs.field(default=None, validator=v.optional(integer(ge=1)))

    def __attrs_post_init__(self) -> None:
        if self.transition_end < self.easy:
            raise ValueError(f"transition_end ({self.transition_end}) must be >= easy ({self.easy})")

    def init(self, num_classes: int) -> MaskState:
        return new_state(static_k(num_classes, fraction=self.easy), EASY)

    def advance(self, state: MaskState, accuracy: float, num_classes: int) -> MaskState:
        k, phase = dynamic_k(accuracy, num_classes, self.thresholds, self.easy, self.transition_end)
        return state._replace(k=torch.clamp(state.k, min=k), phase=torch.clamp(state.phase, min=phase))
