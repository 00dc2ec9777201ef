"""GSNR estimation (split and stream): scale invariance, growth with signal, convergence on a closed-form case,
unbiased subsampling; coefficient allocation (tanh and min–max)."""

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
    state = G.stream_init(params, components=1, fraction=fraction)
    for g in grads:
        state = G.stream_update(state, [g], beta=beta)
    return G.stream_ratios(state, beta=beta)


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
        state = G.stream_init(params, 1, fraction=fraction, seed=seed)
        for g in stream:
            state = G.stream_update(state, [g], beta=0.9)
        return G.stream_sums(state, beta=0.9)

    exact_signal, exact_noise = sums(1.0, 0)
    draws = [sums(0.1, seed) for seed in range(300)]
    mean_signal = torch.stack([d[0] for d in draws]).mean()
    mean_noise = torch.stack([d[1] for d in draws]).mean()
    assert mean_signal.item() == pytest.approx(exact_signal.item(), rel=0.03)
    assert mean_noise.item() == pytest.approx(exact_noise.item(), rel=0.03)


def test_default_memory_is_under_ten_percent_of_parameters():
    params = [torch.zeros(256, 128), torch.zeros(128), torch.zeros(64, 64, 3, 3)]
    state = G.stream_init(params, components=3)
    state_bytes = sum(t.numel() * t.element_size() for t in (state.m1, state.m2, state.weight, *state.coords))
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    assert state_bytes <= 0.10 * param_bytes


def test_nan_before_first_update_and_zero_variance():
    params = [torch.zeros(10)]
    state = G.stream_init(params, 2)
    assert torch.isnan(G.stream_ratios(state)).all()
    state = G.stream_update(state, [[torch.ones(10)], [torch.zeros(10)]])
    r = G.stream_ratios(state)
    assert r[0] >= 1e29  # a constant gradient: infinite GSNR, clipped
    assert torch.isnan(r[1])  # an exactly zero gradient has no GSNR


def test_allocate_ignores_components_without_gsnr():
    off = G.allocate(torch.tensor([1.0, 100.0, float("nan")]), 0.075, "minmax")
    assert off.tolist() == [-0.075, 0.075, 0.0]
    off = G.allocate(torch.tensor([1.0, 100.0, float("nan")]), 0.075)
    assert off[0] == -off[1] and 0 < off[1] < 0.075 and off[2] == 0.0
    for rule in ("tanh", "minmax"):
        assert G.allocate(torch.tensor([5.0, float("nan"), float("nan")]), 0.075, rule).tolist() == [0.0, 0.0, 0.0]


@given(st.lists(st.floats(1e-6, 1e6), min_size=2, max_size=4), st.floats(0, 0.1))
def test_minmax_allocation_monotone_and_bounded(ratios, delta):
    """Invariant 6 for min–max: m_c is non-decreasing in r_c; offsets lie in [−Δ, Δ]; extremes get ±Δ."""
    r = torch.tensor(ratios, dtype=torch.float64)
    off = G.allocate(r, delta, "minmax")
    assert (off.abs() <= delta + 1e-12).all()
    order = torch.argsort(r)
    assert (off[order].diff() >= -1e-12).all()
    if r.max() / r.min() > 1 + 1e-9:
        assert off[r.argmax()].item() == pytest.approx(delta)
        assert off[r.argmin()].item() == pytest.approx(-delta)


@given(
    st.lists(st.floats(1e-3, 1e3), min_size=2, max_size=4),  # times the factor, inside the clip range [1e-8, 1e8]
    st.floats(0.001, 0.1),
    st.floats(1e-3, 1e3),
    st.floats(0.1, 5.0),
)
def test_tanh_allocation_monotone_continuous_and_scale_free(ratios, delta, factor, scale):
    """Invariant 6 for tanh: non-decreasing in r_c, within (−Δ, Δ), unchanged when every r_c is multiplied by one
    constant, and continuous: a 1 % change of one GSNR moves its offset by at most Δ·0.01/s."""
    r = torch.tensor(ratios, dtype=torch.float64)
    off = G.allocate(r, delta, "tanh", scale)
    assert (off.abs() < delta + 1e-12).all()
    order = torch.argsort(r)
    assert (off[order].diff() >= -1e-12).all()
    torch.testing.assert_close(G.allocate(r * factor, delta, "tanh", scale), off, atol=1e-12, rtol=1e-9)
    nudged = r.clone()
    nudged[0] *= 1.01
    change = (G.allocate(nudged, delta, "tanh", scale) - off).abs().max().item()
    assert change <= delta * math.log(1.01) / scale + 1e-12


def test_tanh_does_not_hand_out_the_extremes_for_a_small_difference():
    """The min–max mapping gives ±Δ (0.975 against 0.825) to two GSNRs 2 % apart; tanh gives almost nothing."""
    r = torch.tensor([0.756, 0.741])
    assert G.allocate(r, 0.075, "minmax").tolist() == [0.075, -0.075]
    assert G.allocate(r, 0.075).abs().max().item() < 0.001
    decade = G.allocate(torch.tensor([10.0, 1.0]), 0.075)  # one decade apart: ±0.5 decade from the mean
    assert decade[0].item() == pytest.approx(0.075 * math.tanh(0.5))


def test_allocate_equal_ratios_gives_zero():
    for rule in ("tanh", "minmax"):
        assert G.allocate(torch.tensor([3.0, 3.0, 3.0]), 0.075, rule).tolist() == [0.0, 0.0, 0.0]
        assert G.allocate(torch.tensor([float("nan")] * 3), 0.075, rule).tolist() == [0.0, 0.0, 0.0]


# ------------------------------------------------------------------------------------------------ split estimator


def _regression_probe(w: torch.Tensor, w_star: torch.Tensor, sigma: float, n: int, parts: int, gen):
    """Per-part mean gradients of ½(x·w − y)² with x ~ N(0, I), y = x·w* + N(0, σ²), at fixed w."""
    x = torch.randn(n, w.numel(), generator=gen, dtype=torch.float64)
    y = x @ w_star + sigma * torch.randn(n, generator=gen, dtype=torch.float64)
    g = x * (x @ w - y)[:, None]  # per-sample gradients
    return [[[chunk.mean(0)]] for chunk in g.chunk(parts)], [len(c) for c in g.chunk(parts)]


@pytest.mark.parametrize("parts", [2, 3])
def test_split_estimator_converges_on_linear_regression(parts):
    """Invariant 6: at fixed parameters the estimate converges to the closed form
    r = ‖d‖² / (D‖d‖² + ‖d‖² + Dσ²), d = w − w* (E[g] = d, Var[g_j] = ‖d‖² + d_j² + σ² for Gaussian x)."""
    gen = torch.Generator().manual_seed(0)
    dim, sigma = 20, 1.0
    w_star = torch.randn(dim, generator=gen, dtype=torch.float64)
    d = torch.randn(dim, generator=gen, dtype=torch.float64)
    d = d / d.norm()  # ‖d‖ = 1
    true = 1.0 / (dim + 1 + dim * sigma**2)
    state = G.split_init(1)
    for _ in range(600):
        grads, sizes = _regression_probe(w_star + d, w_star, sigma, 256 + parts - 1, parts, gen)
        state = G.split_update(state, *G.split_sums(grads, sizes), beta=0.995)
    assert G.split_ratios(state, beta=0.995).item() == pytest.approx(true, rel=0.1)


def test_split_sums_are_unbiased_for_unequal_parts():
    """E[Σ n_m (g_m − ḡ)²] = (M − 1) σ² for any part sizes; the signal estimate is unbiased for E[g]²."""
    gen = torch.Generator().manual_seed(1)
    mean, sd = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    sizes = [3, 7, 22]
    signals, noises = [], []
    for _ in range(4000):
        grads = [[[mean + sd * torch.randn(3, generator=gen, dtype=torch.float64) / m**0.5]] for m in sizes]
        s, n = G.split_sums(grads, sizes)
        signals.append(s)
        noises.append(n)
    assert torch.stack(noises).mean().item() == pytest.approx(sd.square().sum().item(), rel=0.05)
    assert torch.stack(signals).mean().item() == pytest.approx(mean.square().sum().item(), rel=0.05)


@given(st.floats(1e-3, 1e3), st.integers(0, 1000))
def test_split_estimate_is_scale_invariant_and_grows_with_signal(scale, seed):
    gen = torch.Generator().manual_seed(seed)
    noise = [[[[torch.randn(300, generator=gen)]] for _ in range(2)] for _ in range(5)]
    signal = torch.randn(300, generator=gen)

    def estimate(add: float, factor: float = 1.0) -> float:
        state = G.split_init(1)
        for probe in noise:
            grads = [[[factor * (g[0][0] + add * signal)]] for g in probe]
            state = G.split_update(state, *G.split_sums(grads, [64, 64]))
        return G.split_ratios(state).item()

    assert estimate(0.5, scale) == pytest.approx(estimate(0.5), rel=1e-6)
    assert estimate(0.0) < estimate(0.5) < estimate(2.0)


def test_split_estimate_is_nan_before_the_first_estimate_and_for_a_zero_component():
    state = G.split_init(2)
    assert torch.isnan(G.split_ratios(state)).all()
    grads = [[[torch.ones(4) + i], [torch.zeros(4)]] for i in range(2)]
    state = G.split_update(state, *G.split_sums(grads, [8, 8]))
    r = G.split_ratios(state)
    assert r[0] > 0 and torch.isnan(r[1])
