"""Losses: the KD = TCKD + (1 − p_y)·NCKD identity, analytic gradients, numerical safety, the part splits."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import deepkd
from deepkd import losses as L
from deepkd.masks import topk_keep_mask

from .conftest import logits_batch, temperatures


@given(logits_batch(), temperatures, st.booleans())
def test_kd_identity_per_sample(batch, temperature, standardized):
    s, t, y = batch
    pt_y = L.target_prob(t, y, temperature, standardized=standardized)
    kd = L.kd(s, t, temperature, standardized=standardized)
    rhs = L.tckd(s, t, y, temperature, standardized=standardized) + (1 - pt_y) * L.nckd(
        s, t, y, temperature, standardized=standardized
    )
    assert kd.shape == (s.shape[0],)
    torch.testing.assert_close(kd, rhs, atol=1e-4 * temperature**2, rtol=1e-4)


@given(logits_batch(), temperatures)
def test_losses_nonnegative_and_zero_at_teacher(batch, temperature):
    s, t, y = batch
    for loss in (L.kd(s, t, temperature), L.tckd(s, t, y, temperature), L.nckd(s, t, y, temperature)):
        assert (loss >= -1e-6 * temperature**2).all()  # float32 rounding, scaled by T²
    for loss in (L.kd(t, t, temperature), L.tckd(t, t, y, temperature), L.nckd(t, t, y, temperature)):
        torch.testing.assert_close(loss, torch.zeros_like(loss), atol=1e-5, rtol=0)


def _tckd_float64(s, t, y, temperature):
    """TCKD in float64 from float64 log-softmaxes: the reference for the float32 implementation."""

    def binary(z):
        log_p = torch.log_softmax(z.double() / temperature, dim=1)
        onehot = torch.nn.functional.one_hot(y, z.shape[1]).bool()
        log_py = log_p[onehot]
        return torch.stack([log_py, torch.logsumexp(log_p.masked_fill(onehot, -torch.inf), dim=1)], dim=1)

    bt, bs = binary(t), binary(s)
    pt = bt.exp()
    return temperature**2 * torch.where(pt > 0, pt * (bt - bs), 0.0).sum(dim=1)


@pytest.mark.parametrize("scale", [10.0, 46.0, 100.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 8.0])
def test_tckd_small_target_probability_matches_float64(scale, temperature):
    """p_y ≪ 1 with large logits: log(1 − p_y) as lse(non-target) − lse(all) cancels in float32 (at |z| ≈ 46, T = 2
    TCKD came out −4.27e-6 where float64 gives +1.06e-6); log1p(−p_y) does not. The student is near the teacher, so
    TCKD is tiny and the cancellation (≈ 1e-6·T² and more) would dominate it."""
    gen = torch.Generator().manual_seed(int(scale * 10 + temperature))
    b, c = 256, 10
    y = torch.randint(0, c, (b,), generator=gen)
    onehot = torch.nn.functional.one_hot(y, c).bool()
    t = torch.randn(b, c, generator=gen, dtype=torch.float64) * scale
    top = t.masked_fill(onehot, -torch.inf).max(dim=1).values
    # the target 7–16 temperature units below the best non-target class: p^T_y ≤ e^-7 ≈ 1e-3
    t[torch.arange(b), y] = top - temperature * (7 + 9 * torch.rand(b, generator=gen, dtype=torch.float64))
    s = t + 0.5 * temperature * torch.randn(b, c, generator=gen, dtype=torch.float64)
    s, t = s.float(), t.float()  # the float64 reference sees exactly the float32 inputs
    assert (L.target_prob(t, y, temperature) < 1e-2).all() and (L.target_prob(s, y, temperature) < 0.5).all()
    expected = _tckd_float64(s, t, y, temperature)
    s = s.requires_grad_()
    got = L.tckd(s, t, y, temperature)
    assert (got >= 0).all()
    torch.testing.assert_close(got.double(), expected, atol=1e-7 * temperature**2, rtol=1e-2)
    (grad,) = torch.autograd.grad(got.sum(), s)
    s64 = s.detach().double().requires_grad_()
    (grad64,) = torch.autograd.grad(_tckd_float64(s64, t, y, temperature).sum(), s64)
    torch.testing.assert_close(grad.double(), grad64, atol=1e-6 * temperature, rtol=1e-3)


@pytest.mark.parametrize("scale", [1e2, 1e3, 1e4])
def test_tckd_gradient_finite_at_both_ends_of_the_target_probability(scale):
    """Student p_y → 1 and p_y → 0 (both log(1 − p_y) forms in use), one-hot teachers right and wrong."""
    c = 10
    y = torch.arange(8) % c
    right = torch.full((8, c), -scale)
    right[torch.arange(8), y] = scale
    wrong = torch.full((8, c), -scale)
    wrong[torch.arange(8), (y + 1) % c] = scale
    for student in (right, wrong, torch.cat([right[:4], wrong[4:]])):
        for teacher in (right, wrong):
            s = student.clone().requires_grad_()
            value = L.tckd(s, teacher, y, 4.0)
            assert torch.isfinite(value).all() and (value >= 0).all()
            (g,) = torch.autograd.grad(value.sum(), s)
            assert torch.isfinite(g).all()


def _p(z, temperature):
    return torch.softmax(z.double() / temperature, dim=1)


@given(logits_batch(scale=3.0), temperatures)
def test_analytic_gradients_wrt_logits(batch, temperature):
    """TOG, TCG and NCG w.r.t. the student logits match §2 of the spec (per sample, before 1/B and T² scaling)."""
    s, t, y = batch
    s = s.double().requires_grad_()
    t = t.double()
    b, c = s.shape
    onehot = torch.nn.functional.one_hot(y, c).bool()
    ps, pt = _p(s.detach(), 1.0), None
    (g_ce,) = torch.autograd.grad(L.ce(s, y).sum(), s)
    torch.testing.assert_close(g_ce, ps - onehot.double(), atol=1e-6, rtol=1e-5)  # CE runs in float32

    ps, pt = _p(s.detach(), temperature), _p(t, temperature)
    psy, pty = ps[onehot], pt[onehot]
    hat_s = ps.masked_fill(onehot, 0) / (1 - psy)[:, None]
    hat_t = pt.masked_fill(onehot, 0) / (1 - pty)[:, None]
    (g_tc,) = torch.autograd.grad(L.tckd(s, t, y, temperature).sum(), s)
    expected_tc = -temperature * (psy - pty)[:, None] * hat_s
    expected_tc[onehot] = temperature * (psy - pty)
    torch.testing.assert_close(g_tc.double(), expected_tc, atol=1e-5, rtol=1e-4)
    (g_nc,) = torch.autograd.grad(L.nckd(s, t, y, temperature).sum(), s)
    torch.testing.assert_close(g_nc.double(), temperature * (hat_s - hat_t), atol=1e-5, rtol=1e-4)
    for g in (g_ce, g_tc, g_nc):  # each row sums to zero over classes
        torch.testing.assert_close(g.sum(dim=1), torch.zeros(b, dtype=g.dtype), atol=1e-5, rtol=0)


@given(logits_batch(min_classes=4), st.integers(1, 10))
def test_nckd_gradient_is_zero_on_masked_classes(batch, k):
    s, t, y = batch
    keep = topk_keep_mask(t, y, k)
    s = s.clone().requires_grad_()
    (g,) = torch.autograd.grad(L.nckd(s, t, y, 4.0, keep=keep, form="renormalize").sum(), s)
    if keep is None:
        assert k >= s.shape[1] - 1
        return
    assert (g[~keep] == 0).all()
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("scale", [1e2, 1e3, 1e4])
@pytest.mark.parametrize("standardized", [False, True])
def test_finite_for_extreme_logits_and_one_hot_teachers(scale, standardized):
    gen = torch.Generator().manual_seed(0)
    s = (torch.randn(8, 10, generator=gen) * scale).requires_grad_()
    y = torch.arange(8) % 10
    one_hot_teacher = torch.full((8, 10), -scale)
    one_hot_teacher[torch.arange(8), y] = scale
    wrong_teacher = torch.full((8, 10), -scale)
    wrong_teacher[torch.arange(8), (y + 1) % 10] = scale
    keep = topk_keep_mask(wrong_teacher, y, 3)
    for t in (one_hot_teacher, wrong_teacher):
        for value in (
            L.kd(s, t, 4.0, standardized=standardized),
            L.tckd(s, t, y, 4.0, standardized=standardized),
            L.nckd(s, t, y, 4.0, standardized=standardized),
            L.nckd(s, t, y, 4.0, keep=keep, standardized=standardized),
            L.ce(s, y),
        ):
            assert torch.isfinite(value).all()
            (g,) = torch.autograd.grad(value.sum(), s)
            assert torch.isfinite(g).all()


def test_half_precision_inputs_are_computed_in_float32():
    s = torch.randn(4, 6, dtype=torch.bfloat16)
    t = torch.randn(4, 6, dtype=torch.bfloat16)
    y = torch.tensor([0, 1, 2, 3])
    assert L.kd(s, t).dtype == torch.float32
    assert L.tckd(s, t, y).dtype == torch.float32
    torch.testing.assert_close(L.nckd(s, t, y), L.nckd(s.float(), t.float(), y))


def test_dkd_function_weights_parts():
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    y = torch.tensor([0, 1, 2, 3, 4])
    expected = 2.0 * L.tckd(s, t, y) + 3.0 * L.nckd(s, t, y)
    torch.testing.assert_close(L.dkd(s, t, y, alpha=2.0, beta=3.0), expected)
    torch.testing.assert_close(L.dkd(s, t, y, alpha=2.0, beta=3.0, reduction="mean"), expected.mean())


def test_standardize_zero_mean_unit_std():
    z = torch.randn(3, 10) * 7 + 2
    out = L.standardize(z)
    torch.testing.assert_close(out.mean(dim=1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=1), torch.ones(3), atol=1e-5, rtol=0)


@given(logits_batch(), temperatures, st.floats(0, 2), st.floats(0, 2), st.booleans())
def test_kd_split_adds_up_to_kd_loss(batch, temperature, w_ce, w_kd, standardize):
    """Invariant 2: task + tckd + nckd = w_ce·CE + w_kd·KD when no mask is active."""
    s, t, y = batch
    cfg = deepkd.KD(temperature=temperature, w_ce=w_ce, w_kd=w_kd, standardize=standardize)
    parts = cfg.parts(s, t, y, epoch=1, keep=None)
    total = w_ce * L.ce(s, y).mean() + w_kd * L.kd(s, t, temperature, standardized=standardize).mean()
    torch.testing.assert_close(sum(parts.values()), total, atol=1e-4 * temperature**2, rtol=1e-4)


def test_official_split_multiplies_batch_means():
    """The official code: tckd = mean TCKD, nckd = mean(1 − p^T_y)·mean NCKD, task = w_ce·CE, and its KD path never
    reads the KD weight, so the distillation weight is 1 whatever w_kd says."""
    gen = torch.Generator().manual_seed(3)
    s, t = torch.randn(6, 5, generator=gen) * 3, torch.randn(6, 5, generator=gen) * 3
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    official = deepkd.KD(split="official").parts(s, t, y)
    rest = 1 - L.target_prob(t, y, 4.0)
    torch.testing.assert_close(official["tckd"], L.tckd(s, t, y).mean())
    torch.testing.assert_close(official["nckd"], rest.mean() * L.nckd(s, t, y).mean())
    torch.testing.assert_close(official["task"], 0.1 * L.ce(s, y).mean())
    for w_kd in (0.0, 0.2, 0.5, 2.0):  # w_kd changes nothing; w_ce still weights the task part
        other = deepkd.KD(split="official", w_kd=w_kd, w_ce=0.5).parts(s, t, y)
        torch.testing.assert_close(other["tckd"], official["tckd"], rtol=0, atol=0)
        torch.testing.assert_close(other["nckd"], official["nckd"], rtol=0, atol=0)
        torch.testing.assert_close(other["task"], 0.5 * L.ce(s, y).mean())
    exact = deepkd.KD().parts(s, t, y)
    assert not torch.allclose(official["nckd"], exact["nckd"])  # the official split does not add up to KD


@given(st.integers(0, 60), st.integers(0, 30))
def test_dkd_warmup(epoch, warmup):
    cfg = deepkd.DKD(warmup=warmup)
    expected = 1.0 if warmup == 0 else min(epoch / warmup, 1.0)
    assert cfg.warm(epoch) == pytest.approx(expected)


def test_dkd_parts_scale_with_alpha_beta_and_warmup():
    gen = torch.Generator().manual_seed(4)
    s, t = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    parts = deepkd.DKD(alpha=2.0, beta=8.0, warmup=20, w_ce=0.5).parts(s, t, y, epoch=5)
    torch.testing.assert_close(parts["task"], 0.5 * L.ce(s, y).mean())
    torch.testing.assert_close(parts["tckd"], 2.0 * 0.25 * L.tckd(s, t, y).mean())
    torch.testing.assert_close(parts["nckd"], 8.0 * 0.25 * L.nckd(s, t, y).mean())


# ---------------------------------------------------------------------------------------------- the closed-form head
def _keep(teacher: torch.Tensor, target: torch.Tensor, k: int | None, form: str) -> L.Keep | None:
    if k is None:
        return None
    mask = topk_keep_mask(teacher, target, k)
    return L.Keep(~L.target_mask(teacher, target) if mask is None else mask, form)  # type: ignore[arg-type]


@given(
    logits_batch(min_classes=3),
    temperatures,
    st.one_of(st.none(), st.integers(1, 12)),
    st.sampled_from(["bucket", "renormalize"]),
)
def test_the_closed_form_head_gives_the_values_and_autograds_gradients(batch, temperature, k, form):
    """head_terms: TCKD and NCKD exactly as tckd/nckd compute them, and their gradients with respect to the student
    logits equal autograd's through those functions (to rounding), with or without a mask of either form."""
    s, t, y = batch
    keep = _keep(t, y, k, form)
    s = s.requires_grad_()
    tc, nc = L.tckd(s, t, y, temperature), L.nckd(s, t, y, temperature, keep=keep)
    g_tc, g_nc = (torch.autograd.grad(v.sum(), s, retain_graph=True)[0] for v in (tc, nc))
    h = L.head_terms(s, t, y, temperature, keep)
    assert torch.equal(h.tckd, tc) and torch.equal(h.nckd, nc)
    scale = 1 + s.detach().abs().max().item()
    torch.testing.assert_close(h.d_tckd, g_tc, atol=1e-5 * scale, rtol=1e-4)
    torch.testing.assert_close(h.d_nckd, g_nc, atol=1e-5 * scale, rtol=1e-4)
    assert torch.allclose(h.d_tckd.sum(1), torch.zeros(len(y)), atol=1e-4)  # each row sums to 0 over classes
    assert torch.allclose(h.d_nckd.sum(1), torch.zeros(len(y)), atol=1e-4)


@pytest.mark.parametrize(
    "loss",
    [
        deepkd.KD(),
        deepkd.KD(split="official", w_ce=0.5),
        deepkd.DKD(beta=6.0, warmup=4),
        deepkd.CE(w_ce=0.7),
    ],
    ids=["kd", "kd-official", "dkd", "ce"],
)
@given(
    logits_batch(min_classes=3), st.one_of(st.none(), st.integers(1, 12)), st.sampled_from(["bucket", "renormalize"])
)
def test_a_strategys_parts_and_grads_match_its_autograd_parts(loss, batch, k, form):
    s, t, y = batch
    keep = _keep(t, y, k, form)
    s = s.requires_grad_()
    parts = loss.parts(s, t, y, epoch=2, keep=keep)
    closed = loss.parts_and_grads(s, t, y, epoch=2, keep=keep)
    assert list(closed.values) == list(parts) == list(loss.part_names)
    for name, value in parts.items():
        torch.testing.assert_close(closed.values[name], value.detach(), atol=1e-6, rtol=1e-5)
        assert not closed.values[name].requires_grad and not closed.grads[name].requires_grad
        grad = torch.autograd.grad(value, s, retain_graph=True, allow_unused=True)[0]
        grad = torch.zeros_like(s) if grad is None else grad
        scale = 1 + s.detach().abs().max().item()
        torch.testing.assert_close(closed.grads[name], grad, atol=1e-6 * scale, rtol=1e-4)


def test_standardized_logits_are_left_to_autograd():
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    assert deepkd.KD(standardize=True).parts_and_grads(s, t, y) is None
    assert deepkd.DKD(standardize=True).parts_and_grads(s, t, y) is None


def test_the_closed_form_head_stays_finite_for_one_hot_teachers_and_huge_logits():
    s = torch.tensor([[1e4, -1e4, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    t = torch.tensor([[-1e4, 1e4, -1e4, -1e4], [50.0, -50.0, 0.0, 1.0]])
    y = torch.tensor([1, 0])
    for k, form in ((None, "bucket"), (1, "bucket"), (2, "renormalize")):
        h = L.head_terms(s, t, y, 4.0, _keep(t, y, k, form))
        assert all(torch.isfinite(x).all() for x in h)
