r"""Gradient signal-to-noise ratio (GSNR) of gradient components, estimated from the stream of mini-batch gradients.

For a parameter coordinate :math:`j`, :math:`r_j = E[g_j]^2 / \mathrm{Var}[g_j]` (Liu et al., "Understanding Why
Neural Networks Generalize Well Through GSNR of Parameters", ICLR 2020). deepkd keeps, per component :math:`c`
(task, target-class and non-target-class gradients), bias-corrected exponential moving averages
:math:`m_1 = E[g]` and :math:`m_2 = E[g^2]` and reports the ratio of sums

.. math:: r_c = \frac{\sum_j w_j\, m_{1,j}^2}{\sum_j w_j\, (m_{2,j} - m_{1,j}^2)},

which stays finite when single coordinates have zero variance. Two estimators:

- ``exact``: every coordinate, :math:`w_j = 1` (memory: 2 moments × components × parameters).
- ``subsampled`` (default): a fixed random subset of each parameter tensor, stratified per tensor: tensor
  :math:`p` with :math:`n_p` coordinates contributes :math:`k_p = \lceil f\,n_p \rceil` coordinates drawn uniformly
  without replacement, each weighted :math:`w_j = n_p / k_p`. Each weighted sum is then an unbiased estimate of the
  exact sum over all coordinates (numerator and denominator separately; the ratio itself is a ratio estimator).
  Memory per sampled coordinate: 2 float32 moments per component, an int64 index (``torch.take`` gathers with it
  fastest) and a float32 weight: with the default fraction, about 4.5% of the parameters' memory.

The estimate is invariant to scaling a component's gradients by a constant and grows when a constant signal is
added to noisy gradients.

>>> import torch
>>> params = [torch.zeros(1000)]
>>> state = init(params, components=2, fraction=1.0)
>>> gen = torch.Generator().manual_seed(0)
>>> for _ in range(200):
...     noise = torch.randn(1000, generator=gen)
...     state = update(state, [[noise + 3.0], [noise]], beta=0.95)
>>> r = ratios(state, beta=0.95)
>>> bool(r[0] > 10 * r[1])
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["GSNRState", "allocate", "init", "ratio", "ratios", "sample", "sums", "update"]

_R_MIN, _R_MAX = 1e-30, 1e30
_RESOLUTION = 8 * torch.finfo(torch.float32).eps


class GSNRState(NamedTuple):
    """Moments of the sampled coordinates, one row per component."""

    step: Tensor  # int64 scalar: gradients folded in so far
    m1: Tensor  # float32 [components, n]: EMA of g
    m2: Tensor  # float32 [components, n]: EMA of g²
    coords: tuple[Tensor, ...]  # int64 per parameter: sampled flat coordinates (all of them in exact mode)
    weight: Tensor  # float32 [n]: n_p / k_p for each sampled coordinate


def init(
    params: Sequence[Tensor],
    components: int,
    *,
    fraction: float = 0.005,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> GSNRState:
    """Sample the coordinates (``fraction = 1`` is the exact estimator) and allocate zero moments."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    if components < 1:
        raise ValueError(f"components must be >= 1, got {components}")
    device = device if device is not None else (params[0].device if params else "cpu")
    gen = torch.Generator().manual_seed(seed)
    index, weight = [], []
    for p in params:
        n = p.numel()
        k = n if fraction >= 1.0 else min(n, max(1, math.ceil(fraction * n)))
        idx = torch.arange(n) if k == n else torch.randperm(n, generator=gen)[:k].sort().values
        index.append(idx.to(device=device, dtype=torch.int64))
        weight.append(torch.full((k,), n / k))
    total = sum(int(i.numel()) for i in index)
    return GSNRState(
        step=torch.zeros((), dtype=torch.int64, device=device),
        m1=torch.zeros(components, total, device=device),
        m2=torch.zeros(components, total, device=device),
        coords=tuple(index),
        weight=(torch.cat(weight) if weight else torch.zeros(0)).to(device=device, dtype=torch.float32),
    )


def sample(state: GSNRState, grads: Sequence[Tensor]) -> Tensor:
    """The sampled coordinates of one component's per-parameter gradients, as one float32 vector."""
    if len(grads) != len(state.coords):
        raise ValueError(f"expected gradients for {len(state.coords)} parameters, got {len(grads)}")
    parts = [
        g.detach().reshape(-1).float() if idx.numel() == g.numel() else torch.take(g.detach(), idx).float()
        for g, idx in zip(grads, state.coords)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, device=state.m1.device)


def update(state: GSNRState, components: Sequence[Sequence[Tensor]], *, beta: float = 0.98) -> GSNRState:
    """Fold one mini-batch gradient per component into the moments (in place on the state's buffers)."""
    if len(components) != state.m1.shape[0]:
        raise ValueError(f"expected {state.m1.shape[0]} components, got {len(components)}")
    x = torch.stack([sample(state, grads) for grads in components])
    state.m1.mul_(beta).add_(x, alpha=1.0 - beta)
    state.m2.mul_(beta).addcmul_(x, x, value=1.0 - beta)
    return state._replace(step=state.step + 1)


def sums(state: GSNRState, *, beta: float = 0.98) -> tuple[Tensor, Tensor]:
    """The weighted signal and noise sums ``(Σ w m1², Σ w (m2 − m1²))`` per component, bias-corrected.

    Sums from states over disjoint parameter sets (one per parameter group) add up.
    """
    steps = int(state.step)
    if steps == 0:
        nan = torch.full((state.m1.shape[0],), float("nan"), dtype=torch.float64)
        return nan, nan.clone()
    correction = 1.0 - beta**steps
    m1 = state.m1.double() / correction
    m2 = state.m2.double() / correction
    w = state.weight.double()
    signal = (m1.square() * w).sum(dim=1)
    # The moments are stored in float32: a variance below float32 resolution of m2 is rounding, not noise.
    var = m2 - m1.square()
    var = torch.where(var > _RESOLUTION * m2, var, torch.zeros_like(var))
    noise = (var * w).sum(dim=1)
    return signal.cpu(), noise.cpu()


def ratios(state: GSNRState, *, beta: float = 0.98) -> Tensor:
    """The GSNR :math:`r_c` of each component (float64 ``[components]``), clipped to [1e-30, 1e30].

    Returns NaN for every component before the first update.
    """
    return ratio(*sums(state, beta=beta))


def ratio(signal: Tensor, noise: Tensor) -> Tensor:
    """``signal / noise``, clipped to [1e-30, 1e30].

    NaN where nothing is known: before the first update, and for a component whose gradient has been exactly zero
    (a masked-out NCKD with K = 1, a part with weight 0), which has no GSNR at all.
    """
    r = torch.where(noise > 0, signal / noise.clamp_min(1e-300), torch.full_like(signal, _R_MAX))
    r = torch.where((signal > 0) | (noise > 0), r.clamp(_R_MIN, _R_MAX), torch.full_like(signal, float("nan")))
    return r.cpu()


def allocate(r: Tensor, delta: float) -> Tensor:
    r"""Momentum offsets :math:`\Delta\, s_c` from GSNR values: the highest GSNR gets :math:`+\Delta`, the lowest
    :math:`-\Delta`, the others linearly in :math:`\log r`; all zero when every :math:`r_c` is equal. Components with
    an unknown GSNR (NaN) get 0 and take no part in the scaling.

    >>> allocate(torch.tensor([1.0, 10.0, 100.0]), 0.075).tolist()
    [-0.075, 0.0, 0.075]
    """
    log_r = torch.as_tensor(r, dtype=torch.float64).clamp(_R_MIN, _R_MAX).log()
    known = torch.isfinite(log_r)
    out = torch.zeros(log_r.shape, dtype=torch.float64)
    if int(known.sum()) < 2:
        return out
    lo, hi = log_r[known].min(), log_r[known].max()
    if float(hi - lo) <= 1e-12:
        return out
    out[known] = delta * (2.0 * (log_r[known] - lo) / (hi - lo) - 1.0)
    return out
