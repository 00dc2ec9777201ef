r"""Pure logit losses for distillation: ``ce``, ``kd``, ``tckd``, ``nckd`` and ``dkd``.

Every function takes raw logits ``[B, C]`` (any floating dtype; computed in float32 inside) and returns the loss per
sample ``[B]`` (``reduction="none"``, the default) or its batch mean (``reduction="mean"``). Teacher logits are
treated as constants (detached). Notation: :math:`p = \mathrm{softmax}(z / T)`, :math:`p_y` the target probability,
:math:`\hat p_i = p_i / (1 - p_y)` the distribution over the non-target classes.

- KD (Hinton et al., 2015): :math:`T^2\,\mathrm{KL}(p^T \| p^S)`.
- TCKD and NCKD (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022): the KL of the binary target/non-target
  distributions and of the non-target distributions, both scaled by :math:`T^2`, so that per sample
  :math:`\mathrm{KD}_i = \mathrm{TCKD}_i + (1 - p^T_{y,i})\,\mathrm{NCKD}_i`.

Numerical care: :math:`\log(1 - p_y)` is ``log1p(-p_y)`` for :math:`p_y < 1/2` and a logsumexp over the non-target
logits otherwise (never ``log(1 - p)``, which is −inf when :math:`p_y \to 1`), excluded
classes are masked with the dtype's lowest value (not ``-1000``), and zero-probability terms contribute exactly
zero, so values and gradients stay finite for logits up to ±1e4 and for one-hot teachers.

>>> import torch
>>> s, t, y = torch.randn(4, 10), torch.randn(4, 10), torch.randint(0, 10, (4,))
>>> pt_y = torch.softmax(t / 4, 1).gather(1, y[:, None])[:, 0]
>>> torch.allclose(kd(s, t, 4.0), tckd(s, t, y, 4.0) + (1 - pt_y) * nckd(s, t, y, 4.0), atol=1e-5)
True

Loss strategies (the ``loss`` axis of a recipe) split a loss into named parts ``task``, ``tckd`` and ``nckd``.
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

from typing import ClassVar, Literal

import attrs
import torch
import torch.nn.functional as F
from attrs import validators as v
from torch import Tensor

from deepkd.errors import InputError
from deepkd.head import HeadTerms, ce_terms, head_terms, kl_rows, log_rest, target_mask
from deepkd.registry import register_loss
from deepkd.types import MASK_FORMS, Keep, MaskForm, PartsAndGrads
from deepkd.validators import integer, real

__all__ = [
    "CE",
    "DKD",
    "KD",
    "PART_NAMES",
    "ce",
    "dkd",
    "kd",
    "nckd",
    "standardize",
    "target_prob",
    "tckd",
    # the closed-form head (deepkd.head) and the contract's types (deepkd.types), at their earlier import paths
    "HeadTerms",
    "Keep",
    "MaskForm",
    "PartsAndGrads",
    "ce_terms",
    "head_terms",
    "target_mask",
]

Reduction = Literal["none", "mean", "sum"]

def standardize(logits: Tensor, eps: float = 1e-7) -> Tensor:
    r"""Per-sample logit standardisation :math:`(z - \bar z) / (\sigma(z) + \epsilon)` (Sun et al., CVPR 2024).

    :math:`\sigma` is the unbiased standard deviation over classes.
    """
    z = logits.float()
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + eps)


def _scaled(logits: Tensor, temperature: float, standardized: bool) -> Tensor:
    z = standardize(logits) if standardized else logits.float()
    return z / temperature


def _reduce(x: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "none":
        return x
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def ce(student: Tensor, target: Tensor, *, reduction: Reduction = "none") -> Tensor:
    """Cross-entropy of the raw student logits (T = 1), computed in float32."""
    return _reduce(F.cross_entropy(student.float(), target, reduction="none"), reduction)


def kd(
    student: Tensor,
    teacher: Tensor,
    temperature: float = 4.0,
    *,
    standardized: bool = False,
    reduction: Reduction = "none",
) -> Tensor:
    r"""Hinton's KD loss :math:`T^2\,\mathrm{KL}(p^T \| p^S)` per sample."""
    log_ps = F.log_softmax(_scaled(student, temperature, standardized), dim=1)
    log_pt = F.log_softmax(_scaled(teacher.detach(), temperature, standardized), dim=1)
    return _reduce(temperature**2 * kl_rows(log_pt, log_ps), reduction)


def _binary_log_probs(z: Tensor, target: Tensor, target_mask: Tensor) -> Tensor:
    """[log p_y, log(1 - p_y)] per row.

    log(1 - p_y) is ``log1p(-p_y)`` where p_y < 1/2 and a logsumexp over the non-target logits minus the logsumexp
    over all of them where p_y ≥ 1/2. Each form is accurate where it is used: the difference of logsumexps cancels
    when p_y is tiny and the logits are large (at |z| ≈ 46, T = 2 it made TCKD negative), and ``log1p(-p_y)`` is
    −inf when p_y rounds to 1. The ``log1p`` branch sees log p_y clamped to ≤ log(1/2), so the branch that
    ``torch.where`` discards stays finite and passes no NaN or inf into the gradient.
    """
    lse_all = torch.logsumexp(z, dim=1)
    log_py = z.gather(1, target.long()[:, None])[:, 0] - lse_all
    lowest = torch.finfo(z.dtype).min
    log_rest_lse = torch.logsumexp(z.masked_fill(target_mask, lowest), dim=1) - lse_all
    return torch.stack([log_py, log_rest(log_py, log_rest_lse)], dim=1)


def _target_mask(z: Tensor, target: Tensor) -> Tensor:
    return F.one_hot(target.long(), z.shape[1]).bool()


def tckd(
    student: Tensor,
    teacher: Tensor,
    target: Tensor,
    temperature: float = 4.0,
    *,
    standardized: bool = False,
    reduction: Reduction = "none",
) -> Tensor:
    r"""Target-class KD: :math:`T^2\,\mathrm{KL}(b^T \| b^S)` with :math:`b = [p_y, 1 - p_y]`."""
    zs = _scaled(student, temperature, standardized)
    zt = _scaled(teacher.detach(), temperature, standardized)
    gt = _target_mask(zs, target)
    loss = kl_rows(_binary_log_probs(zt, target, gt), _binary_log_probs(zs, target, gt))
    return _reduce(temperature**2 * loss, reduction)


def nckd(
    student: Tensor,
    teacher: Tensor,
    target: Tensor,
    temperature: float = 4.0,
    *,
    keep: Tensor | Keep | None = None,
    form: MaskForm = "bucket",
    standardized: bool = False,
    reduction: Reduction = "none",
) -> Tensor:
    r"""Non-target-class KD: :math:`T^2\,\mathrm{KL}(\hat p^T \| \hat p^S)` over the non-target classes.

    With a top-K ``keep`` mask, two forms:

    - ``"bucket"`` (default): the masked classes are merged into one extra bin "rest" in both distributions, its
      probability the sum of their non-target probabilities (a logsumexp), and NCKD is the KL over the kept classes
      plus that bin. The teacher's shape over the tail is dropped, its total mass is kept, so the student cannot
      move mass onto the masked classes for free. Equals plain NCKD when nothing is masked.
    - ``"renormalize"``: both distributions renormalised over the kept classes alone (the literal reading of the
      DeepKD paper); the student's mass on the masked classes is then unconstrained.

    Args:
        keep: optional boolean ``[B, C]`` mask of the non-target classes to keep, or a :class:`Keep` that also
            names its form; the same set is used for teacher and student. The target is always excluded.
        form: the form for a bare boolean ``keep`` (a :class:`Keep` carries its own).

    >>> import torch
    >>> s, t, y = torch.randn(2, 5), torch.randn(2, 5), torch.tensor([0, 1])
    >>> everything = torch.ones(2, 5, dtype=torch.bool)
    >>> torch.allclose(nckd(s, t, y, keep=everything), nckd(s, t, y), atol=1e-6)
    True
    """
    mask: Tensor | None = keep.mask if isinstance(keep, Keep) else keep
    form = keep.form if isinstance(keep, Keep) else form
    if form not in MASK_FORMS:
        raise InputError(f"form must be 'bucket' or 'renormalize', got {form!r}")
    zs = _scaled(student, temperature, standardized)
    zt = _scaled(teacher.detach(), temperature, standardized)
    valid = ~_target_mask(zs, target)
    lowest = torch.finfo(zs.dtype).min
    if mask is not None:
        if mask.shape != zs.shape or mask.dtype != torch.bool:
            raise InputError(
                f"keep mask must be a bool tensor of shape {tuple(zs.shape)}, got {mask.dtype} {tuple(mask.shape)}"
            )
        if form == "bucket":
            return _reduce(temperature**2 * _bucket_kl(zs, zt, valid, valid & mask), reduction)
        valid = valid & mask
    log_ps = F.log_softmax(zs.masked_fill(~valid, lowest), dim=1)
    log_pt = F.log_softmax(zt.masked_fill(~valid, lowest), dim=1)
    return _reduce(temperature**2 * kl_rows(log_pt, log_ps, valid), reduction)


def _bucket_log_probs(z: Tensor, non_target: Tensor, rest: Tensor, rest_bin: Tensor) -> Tensor:
    """``[B, C + 1]``: log p̂ of each class (used where kept) and, last, log p̂ of the rest bin."""
    lowest = torch.finfo(z.dtype).min
    lse_nt = torch.logsumexp(z.masked_fill(~non_target, lowest), dim=1, keepdim=True)
    lse_rest = torch.logsumexp(z.masked_fill(~rest, lowest), dim=1, keepdim=True)
    # an empty rest bin: its logsumexp over lowest-valued entries is not -inf, so mask it explicitly
    lse_rest = torch.where(rest_bin, lse_rest, torch.full_like(lse_rest, float("-inf")))
    return torch.cat([z - lse_nt, lse_rest - lse_nt], dim=1)


def _bucket_kl(zs: Tensor, zt: Tensor, non_target: Tensor, kept: Tensor) -> Tensor:
    """KL over the kept non-target classes plus one "rest" bin holding the other non-target classes' mass."""
    rest = non_target & ~kept
    rest_bin = rest.any(dim=1, keepdim=True)
    valid = torch.cat([kept, rest_bin], dim=1)
    log_pt = _bucket_log_probs(zt, non_target, rest, rest_bin)
    return kl_rows(log_pt, _bucket_log_probs(zs, non_target, rest, rest_bin), valid)


def target_prob(logits: Tensor, target: Tensor, temperature: float = 1.0, *, standardized: bool = False) -> Tensor:
    """p_y = softmax(z / T)_y per sample, in float32."""
    z = _scaled(logits, temperature, standardized)
    return F.softmax(z, dim=1).gather(1, target.long()[:, None])[:, 0]


def dkd(
    student: Tensor,
    teacher: Tensor,
    target: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    keep: Tensor | Keep | None = None,
    standardized: bool = False,
    reduction: Reduction = "none",
) -> Tensor:
    r"""Decoupled KD without CE or warm-up: :math:`\alpha\,\mathrm{TCKD} + \beta\,\mathrm{NCKD}` (Zhao et al., 2022)."""
    t = tckd(student, teacher, target, temperature, standardized=standardized)
    n = nckd(student, teacher, target, temperature, keep=keep, standardized=standardized)
    return _reduce(alpha * t + beta * n, reduction)


def _needs(teacher: Tensor | None) -> Tensor:
    if teacher is None:
        raise InputError("this loss distils from a teacher: pass its logits, not None")
    return teacher


# --------------------------------------------------------------------------------------------------------------
# Loss strategies: frozen configs whose ``parts`` split the loss into the parts the momentum strategies group.

PART_NAMES = ("task", "tckd", "nckd")

_nonneg = real(ge=0.0)
_positive = real(gt=0.0)


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
        keep: Tensor | Keep | None = None,
    ) -> dict[str, Tensor]:
        return {"task": self.w_ce * ce(student, target, reduction="mean")}

    def parts_and_grads(
        self, student: Tensor, teacher: Tensor | None, target: Tensor, *, epoch: int = 1, keep: Keep | None = None
    ) -> PartsAndGrads:
        """:meth:`parts` and each part's gradient with respect to ``student`` (see :func:`ce_terms`)."""
        loss, grad = ce_terms(student, target)
        return PartsAndGrads({"task": self.w_ce * loss.mean()}, {"task": grad * (self.w_ce / len(target))})


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
        keep: Tensor | Keep | None = None,
    ) -> dict[str, Tensor]:
        teacher = _needs(teacher)
        t, std = self.temperature, self.standardize
        tc = tckd(student, teacher, target, t, standardized=std)
        nc = nckd(student, teacher, target, t, keep=keep, standardized=std)
        rest = 1.0 - target_prob(teacher.detach(), target, t, standardized=std)
        if self.split == "exact":
            tc_part, nc_part = self.w_kd * tc.mean(), self.w_kd * (rest * nc).mean()
        else:  # the official code: batch means multiplied, and its KD weight never read (weight 1)
            tc_part, nc_part = tc.mean(), rest.mean() * nc.mean()
        return {
            "task": self.w_ce * ce(student, target, reduction="mean"),
            "tckd": tc_part,
            "nckd": nc_part,
        }

    def parts_and_grads(
        self, student: Tensor, teacher: Tensor | None, target: Tensor, *, epoch: int = 1, keep: Keep | None = None
    ) -> PartsAndGrads | None:
        """:meth:`parts` and each part's gradient with respect to ``student`` in closed form (:func:`head_terms`);
        ``None`` with ``standardize`` (its Jacobian is left to autograd)."""
        if self.standardize:
            return None
        teacher = _needs(teacher)
        n = len(target)
        loss, d_ce = ce_terms(student, target)
        h = head_terms(student, teacher, target, self.temperature, keep)
        if self.split == "exact":  # the factor 1 − p^T_y is detached, as in parts()
            w = self.w_kd / n
            values = {"tckd": self.w_kd * h.tckd.mean(), "nckd": self.w_kd * (h.rest * h.nckd).mean()}
            grads = {"tckd": h.d_tckd * w, "nckd": h.d_nckd * (h.rest * w)[:, None]}
        else:  # the official code's product of batch means, at weight 1
            rest = h.rest.mean()
            values = {"tckd": h.tckd.mean(), "nckd": rest * h.nckd.mean()}
            grads = {"tckd": h.d_tckd / n, "nckd": h.d_nckd * (rest / n)}
        return PartsAndGrads(
            {"task": self.w_ce * loss.mean(), **values}, {"task": d_ce * (self.w_ce / n), **grads}
        )


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

    def epoch_key(self, epoch: int) -> float:
        """What of the epoch the parts depend on: the warm-up factor (a captured step serves every epoch after the
        warm-up)."""
        return self.warm(epoch)

    def parts(
        self,
        student: Tensor,
        teacher: Tensor | None,
        target: Tensor,
        *,
        epoch: int = 1,
        keep: Tensor | Keep | None = None,
    ) -> dict[str, Tensor]:
        teacher = _needs(teacher)
        t, std, w = self.temperature, self.standardize, self.warm(epoch)
        return {
            "task": self.w_ce * ce(student, target, reduction="mean"),
            "tckd": self.alpha * w * tckd(student, teacher, target, t, standardized=std, reduction="mean"),
            "nckd": self.beta * w * nckd(student, teacher, target, t, keep=keep, standardized=std, reduction="mean"),
        }

    def parts_and_grads(
        self, student: Tensor, teacher: Tensor | None, target: Tensor, *, epoch: int = 1, keep: Keep | None = None
    ) -> PartsAndGrads | None:
        """:meth:`parts` and each part's gradient with respect to ``student`` in closed form (:func:`head_terms`);
        ``None`` with ``standardize``."""
        if self.standardize:
            return None
        teacher = _needs(teacher)
        n, w = len(target), self.warm(epoch)
        loss, d_ce = ce_terms(student, target)
        h = head_terms(student, teacher, target, self.temperature, keep)
        a, b = self.alpha * w, self.beta * w
        return PartsAndGrads(
            {"task": self.w_ce * loss.mean(), "tckd": a * h.tckd.mean(), "nckd": b * h.nckd.mean()},
            {"task": d_ce * (self.w_ce / n), "tckd": h.d_tckd * (a / n), "nckd": h.d_nckd * (b / n)},
        )
