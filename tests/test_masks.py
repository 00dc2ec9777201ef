"""Masks: the target is never kept, |kept| = min(K, C − 1), nesting in K, a never-decreasing schedule without
jumps, and the bucket form of masked NCKD."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import deepkd
from deepkd import masks as M

from .conftest import logits_batch, temperatures


@given(logits_batch(max_classes=30), st.integers(0, 40))
def test_keep_mask_size_and_target(batch, k):
    _, t, y = batch
    c = t.shape[1]
    keep = M.topk_keep_mask(t, y, k)
    if k >= c - 1:
        assert keep is None
        return
    assert keep is not None and keep.dtype == torch.bool
    assert not keep[torch.arange(len(y)), y].any()
    assert (keep.sum(dim=1) == min(k, c - 1)).all()


@given(logits_batch(max_classes=30), st.integers(0, 30))
def test_keep_masks_nest(batch, k):
    _, t, y = batch
    t = t.round()  # many ties: the order must still nest
    small, big = M.topk_keep_mask(t, y, k), M.topk_keep_mask(t, y, k + 1)
    if small is None:
        assert big is None
        return
    if big is not None:
        assert (small <= big).all()


def test_keep_mask_keeps_teacher_top_non_targets():
    t = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    keep = M.topk_keep_mask(t, torch.tensor([0]), 2)
    assert keep.tolist() == [[False, True, True, False, False]]


def test_masked_nckd_equals_plain_when_k_covers_all():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    y = torch.tensor([0, 1, 2, 3])
    full = torch.ones(4, 6, dtype=torch.bool)
    torch.testing.assert_close(deepkd.losses.nckd(s, t, y, keep=full), deepkd.losses.nckd(s, t, y))


def test_dynamic_k_phases_cifar100():
    assert M.dynamic_k(0.1, 100) == (10, M.EASY)
    assert M.dynamic_k(0.30, 100) == (10, M.TRANSITION)
    assert M.dynamic_k(0.45, 100) == (55, M.TRANSITION)  # 10 + 0.5 · (99 − 10) = 54.5, half up
    assert M.dynamic_k(0.45, 100, hard=0.3) == (20, M.TRANSITION)
    assert M.dynamic_k(0.5999, 100)[1] == M.TRANSITION
    assert M.dynamic_k(0.60, 100) == (99, M.HARD)
    assert M.dynamic_k(0.60, 100, hard=0.3) == (30, M.HARD)
    assert M.dynamic_k(0.5, 100, thresholds=(0.4, 0.7), hard=0.3) == (M.round_half_up(10 + (0.1 / 0.3) * 20), 1)


def test_k_range_floors_and_rounding():
    assert M.k_range(10, 0.1, 1.0) == (1, 9)  # bucket: K = 1 is top-1 against the rest, still informative
    assert M.k_range(10, 0.1, 1.0, "renormalize") == (2, 9)  # NCKD over one class would be identically zero
    assert M.k_range(15, 0.1, 1.0) == (2, 14)  # 1.5 rounds up
    assert M.k_range(25, 0.1, 0.3) == (3, 8)  # 2.5 → 3, 7.5 → 8
    assert M.k_range(100, 0.3, 0.1 + 0.2) == (30, 30)
    assert M.static_k(10) == 3  # round_half_up(2.5); Python's round would give 2
    assert [M.round_half_up(x) for x in (0.5, 1.5, 2.5, 2.4999)] == [1, 2, 3, 2]


def _observe(cfg, state, acc, classes, batch=10):
    hits = torch.tensor(float(round(acc * batch)))
    return cfg.observe(state, hits, batch, classes)


@given(
    st.lists(st.floats(0, 1), min_size=1, max_size=40),
    st.integers(3, 120),
    st.integers(1, 50),
    st.sampled_from(["bucket", "renormalize"]),
    st.floats(0.05, 1.0),
)
def test_dynamic_schedule_never_decreases_nor_jumps(accuracies, classes, horizon, form, hard):
    """Invariant 4: K and phase never decrease, so the kept set at a later phase contains the earlier one; and K
    grows by at most max_k_step per step (no cliff)."""
    cfg = deepkd.DynamicMask(horizon=horizon, form=form, hard=max(hard, 0.1))
    state = cfg.init(classes)
    gen = torch.Generator().manual_seed(classes)
    t, y = torch.randn(3, classes, generator=gen), torch.randint(0, classes, (3,), generator=gen)
    prev_k, prev_phase = int(state.k), int(state.phase)
    prev_keep = M.topk_keep_mask(t, y, prev_k)
    bound = M.max_k_step(classes, cfg)
    k_min, k_max = M.k_range(classes, cfg.easy, cfg.hard, form)
    for acc in accuracies:
        state = _observe(cfg, state, acc, classes, batch=1000)
        k, phase = int(state.k), int(state.phase)
        assert k >= prev_k and phase >= prev_phase
        assert k - prev_k <= bound
        assert k_min <= k <= k_max <= classes - 1
        keep = M.topk_keep_mask(t, y, k)
        if keep is not None:
            assert prev_keep is not None and (prev_keep <= keep).all()
        prev_k, prev_phase, prev_keep = k, phase, keep if keep is not None else prev_keep


def test_k_step_bound_is_small_for_a_long_horizon():
    assert M.max_k_step(100, deepkd.DynamicMask(horizon=100)) == 4  # ceil(89 / 30) + 1
    assert M.max_k_step(10, deepkd.DynamicMask(horizon=100)) == 2


def test_static_k_default_and_clipping():
    assert M.static_k(100) == 25
    assert M.static_k(10, k=50) == 9
    assert M.static_k(4, fraction=0.01) == 1
    assert int(deepkd.StaticMask(k=20).init(100).k) == 20


def test_accuracy_is_a_moving_average_over_steps():
    cfg = deepkd.DynamicMask(horizon=4)
    state = cfg.init(10)
    assert float(state.accuracy) == 0.0 and int(state.phase) == M.EASY
    state = _observe(cfg, state, 1.0, 10)
    assert float(state.accuracy) == pytest.approx(0.25) and int(state.steps) == 1
    state = _observe(cfg, state, 0.0, 10)
    assert float(state.accuracy) == pytest.approx(0.1875)
    for _ in range(40):
        state = _observe(cfg, state, 1.0, 10)
    assert float(state.accuracy) > 0.99 and int(state.k) == 9 and int(state.phase) == M.HARD


# ------------------------------------------------------------------------------------------------ bucket NCKD


@given(logits_batch(min_classes=3, max_classes=20), temperatures, st.data())
def test_bucket_nckd_is_nonnegative_and_plain_when_nothing_is_masked(batch, t, data):
    """Invariant 9: bucketed NCKD equals plain NCKD when nothing is masked, and is >= 0."""
    s, te, y = batch
    c = s.shape[1]
    everything = torch.ones_like(s, dtype=torch.bool)
    torch.testing.assert_close(
        deepkd.losses.nckd(s, te, y, t, keep=everything, form="bucket"),
        deepkd.losses.nckd(s, te, y, t),
        atol=1e-4,
        rtol=1e-4,
    )
    k = data.draw(st.integers(0, c - 2), label="k")
    keep = M.topk_keep_mask(te, y, k)
    loss = deepkd.losses.nckd(s, te, y, t, keep=keep, form="bucket")
    assert torch.isfinite(loss).all() and (loss >= -1e-5 * t**2).all()


@given(logits_batch(min_classes=4, max_classes=20, scale=3.0), st.data())
def test_bucket_nckd_is_zero_when_kept_classes_and_rest_mass_agree(batch, data):
    """Invariant 9: zero when student and teacher agree on the kept classes and on the rest bin's mass, however
    differently they spread that mass over the masked classes."""
    _, te, y = batch
    c = te.shape[1]
    k = data.draw(st.integers(1, c - 3), label="k")
    keep = M.topk_keep_mask(te, y, k)
    # the student: the teacher's logits, with the masked non-target logits replaced by ones of the same logsumexp
    rest = ~keep & ~torch.nn.functional.one_hot(y, c).bool()
    lse = torch.logsumexp(te.masked_fill(~rest, float("-inf")), dim=1, keepdim=True)
    noise = torch.randn(te.shape, generator=torch.Generator().manual_seed(k)) * 2
    shaped = noise.masked_fill(~rest, float("-inf"))
    shaped = shaped - torch.logsumexp(shaped, dim=1, keepdim=True) + lse
    student = torch.where(rest, shaped, te)
    bucket = deepkd.losses.nckd(student, te, y, 1.0, keep=keep, form="bucket")
    torch.testing.assert_close(bucket, torch.zeros_like(bucket), atol=1e-5, rtol=0)


def test_bucket_gradient_gives_each_masked_class_its_share_of_the_rest_bin():
    gen = torch.Generator().manual_seed(3)
    s = torch.randn(2, 6, generator=gen, requires_grad=True)
    te, y, temp = torch.randn(2, 6, generator=gen), torch.tensor([0, 3]), 2.0
    keep = M.topk_keep_mask(te, y, 2)
    loss = deepkd.losses.nckd(s, te, y, temp, keep=keep, form="bucket").sum()
    (grad,) = torch.autograd.grad(loss, s)
    nt = ~torch.nn.functional.one_hot(y, 6).bool()
    rest = nt & ~keep
    ps = torch.softmax((s.detach() / temp).masked_fill(~nt, float("-inf")), dim=1)  # p̂ of the student
    pt = torch.softmax((te / temp).masked_fill(~nt, float("-inf")), dim=1)
    ps_rest, pt_rest = (ps * rest).sum(1, keepdim=True), (pt * rest).sum(1, keepdim=True)
    expected = torch.where(keep, temp * (ps - pt), temp * (ps_rest - pt_rest) * ps / ps_rest)
    expected = torch.where(nt, expected, torch.zeros_like(expected))
    torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-4)


def test_bucket_with_one_kept_class_is_informative_where_renormalised_is_zero():
    gen = torch.Generator().manual_seed(0)
    s, te, y = torch.randn(4, 10, generator=gen), torch.randn(4, 10, generator=gen), torch.arange(4)
    keep = M.topk_keep_mask(te, y, 1)
    assert (deepkd.losses.nckd(s, te, y, keep=keep, form="renormalize") == 0).all()
    assert (deepkd.losses.nckd(s, te, y, keep=keep, form="bucket") > 0).all()


def test_masked_student_mass_is_constrained_only_by_the_bucket_form():
    """Moving the student's mass onto masked classes is free for the renormalised form, not for the bucket."""
    te = torch.tensor([[0.0, 4.0, 3.0, 0.0, 0.0, 0.0]])
    y = torch.tensor([0])
    keep = M.topk_keep_mask(te, y, 2)
    drifted = torch.tensor([[0.0, 4.0, 3.0, 9.0, 9.0, 9.0]])  # same kept shape, most mass on the masked classes
    assert deepkd.losses.nckd(drifted, te, y, keep=keep, form="renormalize").item() == pytest.approx(0.0, abs=1e-6)
    assert deepkd.losses.nckd(drifted, te, y, keep=keep, form="bucket").item() > 1.0


@given(logits_batch(min_classes=3, max_classes=20), temperatures)
def test_bucket_nckd_grows_with_k_and_is_never_switched_on_from_zero(batch, t):
    """No cliff in the NCKD term as K grows: the bucket form's KL over a coarser partition of the same
    distributions is never larger (data-processing inequality), so each step of K adds the KL of splitting classes
    out of the rest bin, starting from a two-bin KL at K = 1 that is already positive when the distributions
    differ; the renormalised form is identically zero at K = 1, which is why its K_min is 2."""
    s, te, y = batch
    c = s.shape[1]
    values = [deepkd.losses.nckd(s, te, y, t, keep=M.topk_keep_mask(te, y, k), form="bucket") for k in range(1, c - 1)]
    values.append(deepkd.losses.nckd(s, te, y, t))
    for small, big in itertools.pairwise(values):
        assert (big >= small - 1e-4 * t**2 * (1 + small.abs())).all()
    ones = M.topk_keep_mask(te, y, 1)
    if ones is not None:
        assert (deepkd.losses.nckd(s, te, y, t, keep=ones, form="renormalize") == 0).all()
