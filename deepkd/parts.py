r"""Loss strategies: a recipe's loss split into named parts ``task``, ``tckd`` and ``nckd``.

The gradient of each part with respect to the student's parameters is one gradient component: ``task`` gives the
task-oriented gradient (TOG), ``tckd`` the target-class gradient (TCG) and ``nckd`` the non-target-class gradient
(NCG). Parts are batch means (float32 scalars) and add up to the recipe's total loss.

- ``ce``: cross-entropy alone (no teacher).
- ``kd``: ``w_ce·CE + w_kd·KD``, split exactly per sample into ``tckd = w_kd·mean_i TCKD_i`` and
  ``nckd = w_kd·mean_i[(1 − p^T_{y,i})·NCKD_i]`` (the factor detached), so the parts add up to the KD loss.
  ``split="official"`` reproduces the official DeepKD code, which multiplies batch means instead
  (``tckd = mean_i TCKD_i``, ``nckd = mean_i(1 − p^T_{y,i})·mean_i NCKD_i``), so its parts do not add up to KD.
  That code's KD path never reads its KD weight, so under ``split="official"`` the distillation weight is 1 and
  ``w_kd`` has no effect (only ``task = w_ce·CE`` is weighted).
- ``dkd``: ``w_ce·CE + warm(e)·(α·TCKD + β·NCKD)`` with ``warm(e) = min(e / warmup, 1)``, epochs counted from 1.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Protocol

import attrs
from attrs import validators as v
from torch import Tensor

from deepkd import losses as L
from deepkd.registry import register_loss
from deepkd.validators import integer, real

__all__ = ["CE", "DKD", "KD", "LossStrategy", "PART_NAMES"]

PART_NAMES = ("task", "tckd", "nckd")

_nonneg = real(ge=0.0)
_positive = real(gt=0.0)


class LossStrategy(Protocol):
    """What a registered loss strategy provides."""

    part_names: ClassVar[tuple[str, ...]]
    needs_teacher: ClassVar[bool]
    # whether ``parts`` depends on ``epoch``; the optimizer then refuses a step without it (assumed True if absent)
    uses_epoch: bool

    def parts(
        self, student: Tensor, teacher: Tensor | None, target: Tensor, *, epoch: int, keep: Tensor | L.Keep | None
    ) -> dict[str, Tensor]: ...


@register_loss("ce")
@attrs.frozen(kw_only=True)
class CE:
    """Cross-entropy only: the no-teacher baseline."""

    w_ce: float = attrs.field(default=1.0, validator=_nonneg)

    part_names: ClassVar[tuple[str, ...]] = ("task",)
    needs_teacher: ClassVar[bool] = False
    uses_epoch: ClassVar[bool] = False

    def parts(
        self,
        student: Tensor,
        teacher: Tensor | None,
        target: Tensor,
        *,
        epoch: int = 1,
        keep: Tensor | L.Keep | None = None,
    ) -> dict[str, Tensor]:
        return {"task": self.w_ce * L.ce(student, target, reduction="mean")}


@register_loss("kd")
@attrs.frozen(kw_only=True)
class KD:
    """Hinton KD split into TCKD and weighted NCKD parts. CIFAR defaults: T = 4, w_ce = 0.1, w_kd = 0.9.

    ``split="exact"`` (default): ``tckd = w_kd·mean_i TCKD_i``, ``nckd = w_kd·mean_i[(1 − p^T_{y,i})·NCKD_i]``, so
    ``task + tckd + nckd = w_ce·CE + w_kd·KD``. ``split="official"`` reproduces the official DeepKD code
    (github.com/haiduo/DeepKD, afb5964, ``Distiller.deepkd_plugin``): ``tckd = mean_i TCKD_i`` and
    ``nckd = mean_i(1 − p^T_{y,i})·mean_i NCKD_i``, a product of batch means, and **no** ``w_kd``: that code's KD path
    never reads ``KD_WEIGHT``, so its distillation weight is 1 whatever ``w_kd`` says (``w_ce`` still weights CE).
    """

    temperature: float = attrs.field(default=4.0, validator=_positive)
    w_ce: float = attrs.field(default=0.1, validator=_nonneg)
    w_kd: float = attrs.field(default=0.9, validator=_nonneg)
    standardize: bool = attrs.field(default=False, validator=v.instance_of(bool))
    split: Literal["exact", "official"] = attrs.field(default="exact", validator=v.in_(("exact", "official")))

    part_names: ClassVar[tuple[str, ...]] = PART_NAMES
    needs_teacher: ClassVar[bool] = True
    uses_epoch: ClassVar[bool] = False

    def parts(
        self,
        student: Tensor,
        teacher: Tensor | None,
        target: Tensor,
        *,
        epoch: int = 1,
        keep: Tensor | L.Keep | None = None,
    ) -> dict[str, Tensor]:
        assert teacher is not None
        t, std = self.temperature, self.standardize
        tc = L.tckd(student, teacher, target, t, standardized=std)
        nc = L.nckd(student, teacher, target, t, keep=keep, standardized=std)
        rest = 1.0 - L.target_prob(teacher.detach(), target, t, standardized=std)
        if self.split == "exact":
            tckd, nckd = self.w_kd * tc.mean(), self.w_kd * (rest * nc).mean()
        else:  # the official code: batch means multiplied, and its KD weight never read (weight 1)
            tckd, nckd = tc.mean(), rest.mean() * nc.mean()
        return {
            "task": self.w_ce * L.ce(student, target, reduction="mean"),
            "tckd": tckd,
            "nckd": nckd,
        }


@register_loss("dkd")
@attrs.frozen(kw_only=True)
class DKD:
    """Decoupled KD (Zhao et al., CVPR 2022). CIFAR defaults: α = 1, β = 8, T = 4, warm-up 20 epochs, w_ce = 1."""

    alpha: float = attrs.field(default=1.0, validator=_nonneg)
    beta: float = attrs.field(default=8.0, validator=_nonneg)
    temperature: float = attrs.field(default=4.0, validator=_positive)
    warmup: int = attrs.field(default=20, validator=integer(ge=0))
    w_ce: float = attrs.field(default=1.0, validator=_nonneg)
    standardize: bool = attrs.field(default=False, validator=v.instance_of(bool))

    part_names: ClassVar[tuple[str, ...]] = PART_NAMES
    needs_teacher: ClassVar[bool] = True

    @property
    def uses_epoch(self) -> bool:
        """Whether the parts depend on the epoch (a warm-up longer than zero epochs)."""
        return self.warmup > 0

    def warm(self, epoch: int) -> float:
        """The warm-up factor min(epoch / warmup, 1), epochs counted from 1."""
        return 1.0 if self.warmup == 0 else min(max(epoch, 0) / self.warmup, 1.0)

    def parts(
        self,
        student: Tensor,
        teacher: Tensor | None,
        target: Tensor,
        *,
        epoch: int = 1,
        keep: Tensor | L.Keep | None = None,
    ) -> dict[str, Tensor]:
        assert teacher is not None
        t, std, w = self.temperature, self.standardize, self.warm(epoch)
        return {
            "task": self.w_ce * L.ce(student, target, reduction="mean"),
            "tckd": self.alpha * w * L.tckd(student, teacher, target, t, standardized=std, reduction="mean"),
            "nckd": self.beta * w * L.nckd(student, teacher, target, t, keep=keep, standardized=std, reduction="mean"),
        }
