r"""The loss head in closed form: each part's value and its gradient with respect to the student's logits, in one
pass without autograd, and the row-wise numerics it shares with :mod:`deepkd.losses`.

A step then needs no backward pass through the loss head, only one vector-Jacobian product of the network per
gradient group (``torch.autograd.grad(logits, params, grad_outputs=G)``, :func:`deepkd.decompose.decompose_logits`):
on a GPU, where a small model's step is bound by kernel launches, that removes most of the head's launches. The
values are computed with the same formulas as :func:`~deepkd.losses.tckd` and :func:`~deepkd.losses.nckd`, so they
are the same numbers; ``tests/test_losses.py`` checks the gradients against autograd.

>>> import torch
>>> s, y = torch.randn(3, 5), torch.tensor([0, 1, 2])
>>> loss, grad = ce_terms(s, y)
>>> torch.allclose(grad.sum(dim=1), torch.zeros(3), atol=1e-6)
True
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from deepkd.types import Keep

__all__ = ["HeadTerms", "ce_terms", "head_terms", "kl_rows", "log_rest", "target_mask"]

LOG_HALF = -math.log(2.0)


def kl_rows(log_p: Tensor, log_q: Tensor, valid: Tensor | None = None) -> Tensor:
    """Σ_i p_i (log p_i - log q_i) per row, with entries where p_i = 0 or ``valid`` is False contributing 0."""
    p = log_p.exp()
    keep = p > 0 if valid is None else valid & (p > 0)
    zero = torch.zeros((), dtype=log_p.dtype, device=log_p.device)
    diff = torch.where(keep, log_p, zero) - torch.where(keep, log_q, zero)
    return torch.where(keep, p * diff, zero).sum(dim=1)



class HeadTerms(NamedTuple):
    """Per-sample TCKD and NCKD (:math:`T^2` included), :math:`1 - p^T_y`, and the gradients of TCKD and NCKD of
    each sample with respect to the raw student logits (``[B, C]``, float32)."""

    tckd: Tensor
    nckd: Tensor
    rest: Tensor
    d_tckd: Tensor
    d_nckd: Tensor


def target_mask(logits: Tensor, target: Tensor) -> Tensor:
    """Boolean ``[B, C]``: True at each row's target class."""
    return torch.zeros(logits.shape, dtype=torch.bool, device=logits.device).scatter_(1, target.long()[:, None], True)


@torch.no_grad()
def head_terms(
    student: Tensor, teacher: Tensor, target: Tensor, temperature: float, keep: Tensor | Keep | None = None
) -> HeadTerms:
    r""":class:`HeadTerms` of a batch, computed as :func:`tckd` and :func:`nckd` compute the values (the same
    formulas, so the same numbers), with the gradients in closed form (Zhao et al., 2022; DeepKD, §2 of deepkd's
    specification): for :math:`u = z^S / T`,

    - TCKD: :math:`T (p^S_y - p^T_y)` at the target, :math:`-T (p^S_y - p^T_y)\,\hat p^S_j` elsewhere;
    - NCKD: :math:`T (\hat p^S_j - \hat p^T_j)` on the non-target classes, 0 at the target. With a ``"bucket"``
      mask a masked class gets its share of the rest bin: :math:`T (\hat p^S_j - Q^T \hat p^S_j / Q^S)`, with
      :math:`Q` the rest bin's mass; with ``"renormalize"`` the kept classes' renormalised difference and 0 on
      the masked ones.
    """
    T = temperature
    u = student.detach().float() / T
    v = teacher.detach().float() / T
    gt = target_mask(u, target)
    lowest = torch.finfo(u.dtype).min
    tgt = target.long()[:, None]
    lse_u, lse_v = torch.logsumexp(u, dim=1), torch.logsumexp(v, dim=1)
    u_nt, v_nt = u.masked_fill(gt, lowest), v.masked_fill(gt, lowest)
    nt_u, nt_v = torch.logsumexp(u_nt, dim=1, keepdim=True), torch.logsumexp(v_nt, dim=1, keepdim=True)
    ls_y, lt_y = u.gather(1, tgt)[:, 0] - lse_u, v.gather(1, tgt)[:, 0] - lse_v
    ls_r = log_rest(ls_y, nt_u[:, 0] - lse_u)
    lt_r = log_rest(lt_y, nt_v[:, 0] - lse_v)
    tc = T**2 * kl_rows(torch.stack([lt_y, lt_r], dim=1), torch.stack([ls_y, ls_r], dim=1))
    ps_y, pt_y = ls_y.exp(), lt_y.exp()
    mask: Tensor | None = keep.mask if isinstance(keep, Keep) else keep
    form = keep.form if isinstance(keep, Keep) else "bucket"
    valid = ~gt
    log_hat_s, log_hat_t = F.log_softmax(u_nt, dim=1), F.log_softmax(v_nt, dim=1)  # p̂ (the target: masked below)
    p_hat_s = log_hat_s.exp().masked_fill(gt, 0.0)
    if mask is None:
        nc = T**2 * kl_rows(log_hat_t, log_hat_s, valid)
        d_nc = T * (p_hat_s - log_hat_t.exp().masked_fill(gt, 0.0))
    elif form == "bucket":  # nckd's bucket numbers, its logsumexps shared with the gradient
        kept = valid & mask
        rest = valid & ~kept
        rest_bin = rest.any(dim=1, keepdim=True)
        out_of_rest = ~rest
        rest_u = torch.logsumexp(u.masked_fill(out_of_rest, lowest), dim=1, keepdim=True)
        rest_v = torch.logsumexp(v.masked_fill(out_of_rest, lowest), dim=1, keepdim=True)
        none = torch.full_like(rest_u, float("-inf"))  # an empty rest bin (its logsumexp is not -inf)
        log_q_u = torch.cat([u - nt_u, torch.where(rest_bin, rest_u, none) - nt_u], dim=1)
        log_q_v = torch.cat([v - nt_v, torch.where(rest_bin, rest_v, none) - nt_v], dim=1)
        nc = T**2 * kl_rows(log_q_v, log_q_u, torch.cat([kept, rest_bin], dim=1))
        within_rest_s = (u - rest_u).exp().masked_fill(out_of_rest, 0.0)  # the student's shares inside its bin
        rest_mass_t = log_q_v[:, -1:].exp()  # the teacher's rest bin (0 when empty)
        target_dist = torch.where(kept, log_q_v[:, :-1].exp(), rest_mass_t * within_rest_s).masked_fill(gt, 0.0)
        d_nc = T * (p_hat_s - target_dist)
    else:
        kept = valid & mask
        log_s = F.log_softmax(u.masked_fill(~kept, lowest), dim=1)
        log_t = F.log_softmax(v.masked_fill(~kept, lowest), dim=1)
        nc = T**2 * kl_rows(log_t, log_s, kept)
        d_nc = T * (log_s.exp() - log_t.exp()).masked_fill(~kept, 0.0)
    d_tc = (T * (ps_y - pt_y))[:, None] * (gt.float() - p_hat_s)
    return HeadTerms(tc, nc, 1.0 - pt_y, d_tc, d_nc)


def log_rest(log_py: Tensor, log_rest_lse: Tensor) -> Tensor:
    """log(1 − p_y) as :func:`deepkd.losses.tckd` computes it (``log1p`` below p_y = 1/2, the logsumexp above)."""
    log_rest_log1p = torch.log1p(-torch.exp(log_py.clamp(max=LOG_HALF)))
    return torch.where(log_py < LOG_HALF, log_rest_log1p, log_rest_lse)


@torch.no_grad()
def ce_terms(student: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    r"""Per-sample cross-entropy (:func:`ce`) and its gradient with respect to the student logits,
    :math:`\mathrm{softmax}(z) - \mathbb 1[y]` (float32)."""
    z = student.detach().float()
    log_p = F.log_softmax(z, dim=1)
    loss = -log_p.gather(1, target.long()[:, None])[:, 0]
    return loss, log_p.exp() - target_mask(z, target).float()

