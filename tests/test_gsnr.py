"""GSNR estimation: scale invariance, growth with signal, unbiased subsampling, coefficient allocation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from deepkd import gsnr as G


def _stream(signal: float, steps: int, seed: int, n: int = 400) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=gen)
    return [[signal * base + torch.randn(n, generator=gen)] for _ in range(steps)]


def _run(grads: list[list[torch.Tensor]], fraction: float = 1.0, beta: float = 0.9) -> torch.Tensor:
    params = [torch.zeros_like(grads[0][0])]
    state = G.init(params, components=1, fraction=fraction)
    for g in grads:
        state = G.update(state, [g], beta=beta)
    return G.ratios(state, beta=beta)


@given(st.floats(1e-3, 1e3), st.integers(0, 1000))
def test_scale_invariance(scale, seed):
    grads = _stream(0.5, 20, seed)
    r = _run(grads)
    r_scaled = _run([[scale * g[0]] for g in grads])
    assert r_scaled.item() == pytest.approx(r.item(), rel=1e-6)


@given(st.integers(0, 1000))
def test_grows_with_added_constant_signal(seed):
    gen = torch.Generator().manual_seed(seed)
    noise = [[torch.randn(300, generator=gen)] for _ in range(30)]
    signal = torch.randn(300, generator=gen)
    r0 = _run(noise)
    r1 = _run([[g[0] + 0.5 * signal] for g in noise])
    r2 = _run([[g[0] + 2.0 * signal] for g in noise])
    assert r0 < r1 < r2


def test_subsampled_sums_are_unbiased():
    """Over random coordinate subsets, the mean of the weighted sums approaches the exact sums."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(40, 30), (30,), (7, 5, 3)]
    stream = [
        [torch.randn(s, generator=gen) + 0.3 * torch.arange(math.prod(s)).reshape(s) / 100 for s in shapes]
        for _ in range(10)
    ]
    params = [torch.zeros(s) for s in shapes]

    def sums(fraction, seed):
        state = G.init(params, 1, fraction=fraction, seed=seed)
        for g in stream:
            state = G.update(state, [g], beta=0.9)
        return G.sums(state, beta=0.9)

    exact_signal, exact_noise = sums(1.0, 0)
    draws = [sums(0.1, seed) for seed in range(300)]
    mean_signal = torch.stack([d[0] for d in draws]).mean()
    mean_noise = torch.stack([d[1] for d in draws]).mean()
    assert mean_signal.item() == pytest.approx(exact_signal.item(), rel=0.03)
    assert mean_noise.item() == pytest.approx(exact_noise.item(), rel=0.03)


def test_default_memory_is_under_ten_percent_of_parameters():
    params = [torch.zeros(256, 128), torch.zeros(128), torch.zeros(64, 64, 3, 3)]
    state = G.init(params, components=3)
    state_bytes = sum(t.numel() * t.element_size() for t in (state.m1, state.m2, state.weight, *state.coords))
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    assert state_bytes <= 0.10 * param_bytes


def test_nan_before_first_update_and_zero_variance():
    params = [torch.zeros(10)]
    state = G.init(params, 2)
    assert torch.isnan(G.ratios(state)).all()
    state = G.update(state, [[torch.ones(10)], [torch.zeros(10)]])
    r = G.ratios(state)
    assert r[0] >= 1e29  # a constant gradient: infinite GSNR, clipped
    assert torch.isnan(r[1])  # an exactly zero gradient has no GSNR


def test_allocate_ignores_components_without_gsnr():
    off = G.allocate(torch.tensor([1.0, 100.0, float("nan")]), 0.075)
    assert off.tolist() == [-0.075, 0.075, 0.0]
    assert G.allocate(torch.tensor([5.0, float("nan"), float("nan")]), 0.075).tolist() == [0.0, 0.0, 0.0]


@given(st.lists(st.floats(1e-6, 1e6), min_size=2, max_size=4), st.floats(0, 0.1))
def test_allocate_monotone_and_bounded(ratios, delta):
    """Invariant 6: m_c is non-decreasing in r_c; offsets lie in [−Δ, Δ]; extremes get ±Δ."""
    r = torch.tensor(ratios, dtype=torch.float64)
    off = G.allocate(r, delta)
    assert (off.abs() <= delta + 1e-12).all()
    order = torch.argsort(r)
    assert (off[order].diff() >= -1e-12).all()
    if r.max() / r.min() > 1 + 1e-9:
        assert off[r.argmax()].item() == pytest.approx(delta)
        assert off[r.argmin()].item() == pytest.approx(-delta)


def test_allocate_equal_ratios_gives_zero():
    assert G.allocate(torch.tensor([3.0, 3.0, 3.0]), 0.075).tolist() == [0.0, 0.0, 0.0]
    assert G.allocate(torch.tensor([float("nan")] * 3), 0.075).tolist() == [0.0, 0.0, 0.0]
