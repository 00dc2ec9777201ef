r"""Gradient signal-to-noise ratio (GSNR) of gradient components, and the momentum allocation that uses it.

For a parameter coordinate :math:`j`, :math:`r_j = E[g_j]^2 / \mathrm{Var}[g_j]` over the per-sample gradient
distribution at fixed parameters (Liu et al., "Understanding Why Neural Networks Generalize Well Through GSNR of
Parameters", ICLR 2020). deepkd reports one scalar per component :math:`c` (task, target-class and
non-target-class gradients), the ratio of sums

.. math:: r_c = \frac{\sum_j E[g_j]^2}{\sum_j \mathrm{Var}[g_j]},

the variance-weighted mean of the per-coordinate GSNRs, which stays finite when single coordinates have zero
variance. Two estimators:

- ``split``, at fixed parameters: at an estimation step the batch of :math:`n` samples is split into
  :math:`M` disjoint parts, and each component's gradient :math:`g_m` is taken on each part (same parameters).
  With :math:`\bar g = \sum_m n_m g_m / n` (the step's gradient), the per-sample variance is estimated without bias
  by :math:`\hat\sigma^2_j = \sum_m n_m (g_{m,j} - \bar g_j)^2 / (M - 1)` and the signal by
  :math:`\bar g_j^2 - \hat\sigma^2_j / n` (unbiased for :math:`E[g_j]^2`). Both sums over every coordinate are
  smoothed over successive estimates with a bias-corrected moving average; nothing per coordinate is stored.
- ``stream``: moving averages of :math:`g` and :math:`g^2` over the mini-batch gradients of every step, on a fixed
  random subset of coordinates (``subsampled``) or all of them. The parameters move between those gradients, so
  this reads the drift of the gradient along the trajectory as noise: in ``python -m benchmarks.algorithm
  estimator`` (``docs/algorithm-checks/estimator.md``) its NCKD GSNR read 0.014 mid-run where 400 batches at the
  same, frozen parameters gave 5.5, its floor being near 0.01. Even so, it is the default of
  :class:`~deepkd.momentum.GSNR`: it won on validation accuracy in the long benchmark (``docs/benchmarks.md``).

Stream subsampling is stratified per tensor: tensor :math:`p` with :math:`n_p` coordinates contributes
:math:`k_p = \lceil f\,n_p \rceil` coordinates drawn uniformly without replacement, each weighted
:math:`w_j = n_p / k_p`, so each weighted sum is an unbiased estimate of the exact sum.

Both estimates are invariant to scaling a component's gradients by a constant and grow when a constant signal is
added to noisy gradients.

**Allocation** (:func:`allocate`): offsets :math:`\Delta \tanh((\log r_c - \overline{\log r}) / s)`, the mean over
the components with a GSNR (``tanh``, default, rank-free and continuous; :math:`s = \ln 10` gives
:math:`\approx 0.76\,\Delta` one decade above the mean), or the min–max mapping of earlier versions (``minmax``:
always :math:`\pm\Delta` for the extremes, however close they are).

>>> import torch
>>> gen = torch.Generator().manual_seed(0)
>>> state = split_init(2)
>>> for _ in range(20):
...     halves = [[[torch.randn(1000, generator=gen) + 3.0], [torch.randn(1000, generator=gen)]] for _ in range(2)]
...     signal, noise = split_sums(halves, [64, 64])
...     state = split_update(state, signal, noise, beta=0.5)
>>> r = split_ratios(state, beta=0.5)
>>> bool(r[0] > 10 * r[1])
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "GSNRState",
    "SplitState",
    "allocate",
    "ratio",
    "split_init",
    "split_ratios",
    "split_sums",
    "split_update",
    "stream_fold",
    "stream_init",
    "stream_ratios",
    "dense_strides",
    "memory_positions",
    "stream_sample",
    "stream_sample_flat",
    "stream_sums",
    "stream_update",
]

_R_MIN, _R_MAX = 1e-30, 1e30
_RESOLUTION = 8 * torch.finfo(torch.float32).eps
_ALLOC_MIN, _ALLOC_MAX = 1e-8, 1e8  # GSNR beyond these bounds is allocated as if at the bound


class GSNRState(NamedTuple):
    """Moments of the sampled coordinates, one row per component. Every tensor lives on the parameters' device and
    is updated in place (a captured step replays the same memory)."""

    step: Tensor  # int64 scalar: gradients folded in so far
    m1: Tensor  # float32 [components, n]: EMA of g
    m2: Tensor  # float32 [components, n]: EMA of g²
    coords: tuple[Tensor, ...]  # int64 per parameter: sampled flat coordinates (all of them in exact mode)
    weight: Tensor  # float32 [n]: n_p / k_p for each sampled coordinate
    positions: Tensor  # int64 [n]: where each sampled coordinate lies in the parameters' memory, end to end


def dense_strides(p: Tensor) -> tuple[int, ...]:
    """The strides under which ``p``'s elements fill ``p.numel()`` consecutive memory slots: its own for a dense
    tensor (contiguous or channels-last), else the contiguous ones."""
    formats = (torch.contiguous_format, torch.channels_last, torch.channels_last_3d)
    for fmt in formats:
        if (fmt is torch.channels_last and p.dim() != 4) or (fmt is torch.channels_last_3d and p.dim() != 5):
            continue
        if p.is_contiguous(memory_format=fmt):
            return tuple(p.stride())
    strides, step = [], 1
    for size in reversed(p.shape):
        strides.append(step)
        step *= max(int(size), 1)
    return tuple(reversed(strides))


def memory_positions(p: Tensor) -> Tensor:
    """For each element of ``p`` in row-major (logical) order, its slot among ``p.numel()`` consecutive memory slots
    laid out with :func:`dense_strides` (the layout of the optimizer's flat gradient buffer)."""
    n = p.numel()
    return torch.arange(n, dtype=torch.int64).as_strided(tuple(p.shape), dense_strides(p)).reshape(-1)


def stream_init(
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
    index, weight, positions, base = [], [], [], 0
    for p in params:
        n = p.numel()
        k = n if fraction >= 1.0 else min(n, max(1, math.ceil(fraction * n)))
        idx = torch.arange(n) if k == n else torch.randperm(n, generator=gen)[:k].sort().values
        index.append(idx.to(device=device, dtype=torch.int64))
        weight.append(torch.full((k,), n / k))
        positions.append(memory_positions(p)[idx] + base)
        base += n
    total = sum(int(i.numel()) for i in index)
    return GSNRState(
        step=torch.zeros((), dtype=torch.int64, device=device),
        m1=torch.zeros(components, total, device=device),
        m2=torch.zeros(components, total, device=device),
        coords=tuple(index),
        weight=(torch.cat(weight) if weight else torch.zeros(0)).to(device=device, dtype=torch.float32),
        positions=(torch.cat(positions) if positions else torch.zeros(0, dtype=torch.int64)).to(device),
    )


def stream_sample(state: GSNRState, grads: Sequence[Tensor]) -> Tensor:
    """The sampled coordinates of one component's per-parameter gradients, as one float32 vector."""
    if len(grads) != len(state.coords):
        raise ValueError(f"expected gradients for {len(state.coords)} parameters, got {len(grads)}")
    parts = [
        g.detach().reshape(-1).float() if idx.numel() == g.numel() else torch.take(g.detach(), idx).float()
        for g, idx in zip(grads, state.coords)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, device=state.m1.device)


def stream_sample_flat(state: GSNRState, flat: Tensor) -> Tensor:
    """:func:`stream_sample` of every component at once, from their gradients laid end to end in memory order
    (``flat``: ``[components, Σ numel]``, the optimizer's gradient buffer): one gather, ``[components, n]``."""
    return flat.index_select(1, state.positions).float()


def stream_update(state: GSNRState, components: Sequence[Sequence[Tensor]], *, beta: float = 0.98) -> GSNRState:
    """Fold one mini-batch gradient per component into the moments (in place on the state's buffers)."""
    if len(components) != state.m1.shape[0]:
        raise ValueError(f"expected {state.m1.shape[0]} components, got {len(components)}")
    return stream_fold(state, torch.stack([stream_sample(state, grads) for grads in components]), beta=beta)


def stream_fold(state: GSNRState, x: Tensor, *, beta: float = 0.98, gate: Tensor | None = None) -> GSNRState:
    """Fold pre-sampled gradients ``x`` (``[components, n]``, one :func:`stream_sample` per component) into the
    moments, in place. Distributed ranks that hold their own gradients fold the mean of their samples over ranks:
    sampling is linear, so that is the sample of the global batch's gradient. Where ``gate`` (a 0-dim bool tensor)
    is False nothing changes, whatever ``x`` holds."""
    if x.shape != state.m1.shape:
        raise ValueError(f"expected samples of shape {tuple(state.m1.shape)}, got {tuple(x.shape)}")
    keep: float | Tensor = beta
    if gate is not None:
        keep, x = torch.where(gate, beta, 1.0), torch.where(gate, x, 0.0)
    state.m1.mul_(keep).add_(x, alpha=1.0 - beta)
    state.m2.mul_(keep).addcmul_(x, x, value=1.0 - beta)
    state.step.add_(1 if gate is None else gate)
    return state


def _nan_like(x: Tensor) -> Tensor:
    return torch.full_like(x, float("nan"))


def stream_sums(state: GSNRState, *, beta: float = 0.98) -> tuple[Tensor, Tensor]:
    """The weighted signal and noise sums ``(Σ w m1², Σ w (m2 − m1²))`` per component, bias-corrected (float64,
    on the state's device; NaN before the first update).

    Sums from states over disjoint parameter sets (one per parameter group) add up.
    """
    steps = state.step.double()
    correction = 1.0 - torch.pow(torch.full_like(steps, beta), steps)
    m1 = state.m1.double() / correction.clamp_min(1e-300)
    m2 = state.m2.double() / correction.clamp_min(1e-300)
    w = state.weight.double()
    signal = (m1.square() * w).sum(dim=1)
    # The moments are stored in float32: a variance below float32 resolution of m2 is rounding, not noise.
    var = m2 - m1.square()
    var = torch.where(var > _RESOLUTION * m2, var, torch.zeros_like(var))
    noise = (var * w).sum(dim=1)
    empty = steps == 0
    return torch.where(empty, _nan_like(signal), signal), torch.where(empty, _nan_like(noise), noise)


def stream_ratios(state: GSNRState, *, beta: float = 0.98) -> Tensor:
    """The GSNR :math:`r_c` of each component (float64 ``[components]``), clipped to [1e-30, 1e30].

    Returns NaN for every component before the first update.
    """
    return ratio(*stream_sums(state, beta=beta))


def ratio(signal: Tensor, noise: Tensor) -> Tensor:
    """``signal / noise``, clipped to [1e-30, 1e30], on the inputs' device.

    NaN where nothing is known: before the first update, and for a component whose gradient has been exactly zero
    (a masked-out NCKD with K = 1, a part with weight 0), which has no GSNR at all.
    """
    r = torch.where(noise > 0, signal / noise.clamp_min(1e-300), torch.full_like(signal, _R_MAX))
    return torch.where((signal > 0) | (noise > 0), r.clamp(_R_MIN, _R_MAX), _nan_like(signal))


def allocate(r: Tensor, delta: float, rule: str = "tanh", scale: float = math.log(10.0)) -> Tensor:
    r"""Momentum offsets from GSNR values; components with an unknown GSNR (NaN) get 0 and take no part.

    - ``tanh`` (default): :math:`\Delta \tanh((\log r_c - \overline{\log r}) / s)`, the mean over the known
      components: non-decreasing in :math:`r_c`, continuous, 0 for all when every :math:`r_c` is equal, and
      unchanged when every :math:`r_c` is multiplied by the same constant.
    - ``minmax``: the highest GSNR gets :math:`+\Delta`, the lowest :math:`-\Delta`, the others linearly in
      :math:`\log r`.

    GSNRs are clipped to [1e-8, 1e8] first (an estimate whose signal is below its noise reads as 1e-8). With fewer
    than two known components every offset is 0. Computed on ``r``'s device without reading anything back (float64).

    >>> allocate(torch.tensor([1.0, 10.0, 100.0]), 0.075, "minmax").tolist()
    [-0.075, 0.0, 0.075]
    >>> [round(x, 4) for x in allocate(torch.tensor([1.0, 10.0, 100.0]), 0.075).tolist()]
    [-0.0571, 0.0, 0.0571]
    """
    if rule not in ("tanh", "minmax"):
        raise ValueError(f"rule must be 'tanh' or 'minmax', got {rule!r}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    log_r = torch.as_tensor(r, dtype=torch.float64).clamp(_ALLOC_MIN, _ALLOC_MAX).log()
    known = torch.isfinite(log_r)
    zero = torch.zeros_like(log_r)
    count = known.sum()
    if rule == "tanh":
        mean = torch.where(known, log_r, zero).sum() / count.clamp_min(1)
        out = delta * torch.tanh((log_r - mean) / scale)
    else:
        lo = torch.where(known, log_r, torch.full_like(log_r, math.inf)).min()
        hi = torch.where(known, log_r, torch.full_like(log_r, -math.inf)).max()
        spread = hi - lo
        out = delta * (2.0 * (log_r - lo) / torch.where(spread > 1e-12, spread, 1.0) - 1.0)
        out = torch.where(spread > 1e-12, out, zero)
    return torch.where(known & (count >= 2), out, zero)


# --------------------------------------------------------------------------------------------------------------
# The split estimator: at fixed parameters, from disjoint parts of one batch.


class SplitState(NamedTuple):
    """Moving averages of the split estimator's sums, one entry per component (on the parameters' device)."""

    step: Tensor  # int64 scalar: estimates folded in so far
    signal: Tensor  # float64 [components]: moving average of Σ_j (ḡ_j² − σ̂_j² / n)
    noise: Tensor  # float64 [components]: moving average of Σ_j σ̂_j² (per-sample variance)


def split_init(components: int, device: torch.device | str | None = None) -> SplitState:
    """An empty split-estimator state for ``components`` components."""
    if components < 1:
        raise ValueError(f"components must be >= 1, got {components}")
    zeros = torch.zeros(components, dtype=torch.float64, device=device)
    return SplitState(torch.zeros((), dtype=torch.int64, device=device), zeros, zeros.clone())


def split_sums(splits: Sequence[Sequence[Sequence[Tensor]]], sizes: Sequence[int]) -> tuple[Tensor, Tensor]:
    r"""Signal and per-sample noise sums of each component from its gradients on disjoint parts of one batch.

    Args:
        splits: ``splits[m][c][param]``, component ``c``'s gradient (of its batch-mean loss on part ``m``).
        sizes: the number of samples in each part (at least two parts, each non-empty).

    Returns:
        float64 ``[components]`` tensors :math:`\sum_j (\bar g_j^2 - \hat\sigma_j^2 / n)` and
        :math:`\sum_j \hat\sigma_j^2`, on the gradients' device; both unbiased for any part sizes.
    """
    parts = len(splits)
    if parts < 2 or len(sizes) != parts or min(sizes) < 1:
        raise ValueError(f"need at least two non-empty parts, got sizes {list(sizes)}")
    n = float(sum(sizes))
    signal, noise = [], []
    for c in range(len(splits[0])):
        s_c: Tensor | float = 0.0
        v_c: Tensor | float = 0.0
        for j in range(len(splits[0][c])):
            rows = [splits[m][c][j].detach().reshape(-1).double() for m in range(parts)]
            mean = torch.stack([float(size) * row for size, row in zip(sizes, rows)]).sum(dim=0) / n
            var = torch.stack([float(size) * (row - mean).square() for size, row in zip(sizes, rows)]).sum(0)
            var = var / (parts - 1)
            s_c = s_c + (mean.square() - var / n).sum()
            v_c = v_c + var.sum()
        signal.append(torch.as_tensor(s_c, dtype=torch.float64))
        noise.append(torch.as_tensor(v_c, dtype=torch.float64))
    return torch.stack(signal), torch.stack(noise)


def split_update(
    state: SplitState, signal: Tensor, noise: Tensor, *, beta: float = 0.5, gate: Tensor | None = None
) -> SplitState:
    """Fold one estimate's sums into the moving averages, in place. An estimate with a non-finite sum (a batch
    whose loss was NaN), or one where ``gate`` is False, changes nothing."""
    if signal.shape != state.signal.shape or noise.shape != state.noise.shape:
        raise ValueError(f"expected sums of {state.signal.numel()} components, got {tuple(signal.shape)}")
    signal, noise = signal.to(state.signal), noise.to(state.noise)
    ok = torch.isfinite(signal).all() & torch.isfinite(noise).all()
    if gate is not None:
        ok = ok & gate
    keep = torch.where(ok, beta, 1.0)
    state.signal.mul_(keep).add_(torch.where(ok, signal, 0.0) * (1.0 - beta))
    state.noise.mul_(keep).add_(torch.where(ok, noise, 0.0) * (1.0 - beta))
    state.step.add_(ok)
    return state


def split_ratios(state: SplitState, *, beta: float = 0.5) -> Tensor:
    """The per-sample GSNR :math:`r_c` of each component from the smoothed sums (NaN before the first estimate and
    for a component whose gradient has been exactly zero), on the state's device."""
    steps = state.step.double()
    correction = (1.0 - torch.pow(torch.full_like(steps, beta), steps)).clamp_min(1e-300)
    signal, noise = state.signal / correction, state.noise / correction
    known = ((signal != 0) | (noise > 0)) & (steps > 0)
    r = ratio(signal.clamp_min(0.0), noise)
    return torch.where(known, r.clamp_min(_R_MIN), _nan_like(r))
