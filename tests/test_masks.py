"""Masks: the target is never kept, |kept| = min(K, C − 1), nesting in K, and a never-decreasing schedule."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

import deepkd
from deepkd import masks as M

from .conftest import logits_batch


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
    assert M.dynamic_k(0.45, 100) == (20, M.TRANSITION)
    assert M.dynamic_k(0.5999, 100)[1] == M.TRANSITION
    assert M.dynamic_k(0.60, 100) == (99, M.HARD)
    assert M.dynamic_k(0.5, 100, thresholds=(0.4, 0.7)) == (round(10 + (0.1 / 0.3) * 20), M.TRANSITION)


@given(st.lists(st.floats(0, 1), min_size=1, max_size=30), st.integers(3, 120))
def test_dynamic_schedule_never_decreases(accuracies, classes):
    """Invariant 4: K and phase never decrease, so the kept set at a later phase contains the earlier one."""
    cfg = deepkd.DynamicMask()
    state = cfg.init(classes)
    gen = torch.Generator().manual_seed(classes)
    t, y = torch.randn(3, classes, generator=gen), torch.randint(0, classes, (3,), generator=gen)
    prev_k, prev_phase = int(state.k), int(state.phase)
    prev_keep = M.keep_mask(state, t, y)
    for acc in accuracies:
        state = cfg.advance(state, acc, classes)
        k, phase = int(state.k), int(state.phase)
        assert k >= prev_k and phase >= prev_phase
        assert 1 <= k <= classes - 1
        keep = M.keep_mask(state, t, y)
        if keep is not None:
            assert prev_keep is not None and (prev_keep <= keep).all()
        prev_k, prev_phase, prev_keep = k, phase, keep if keep is not None else prev_keep


def test_static_k_default_and_clipping():
    assert M.static_k(100) == 25
    assert M.static_k(10, k=50) == 9
    assert M.static_k(4, fraction=0.01) == 1
    assert int(deepkd.StaticMask(k=20).init(100).k) == 20


def test_window_accumulate_and_close():
    state = deepkd.DynamicMask().init(10)
    logits = torch.eye(10)[:4] * 5
    hits = (logits.argmax(dim=1) == torch.tensor([0, 1, 0, 0])).sum()  # 2 of 4 right
    state = M.accumulate(state, hits, 4)
    state, acc = M.close_window(state)
    assert acc == 0.5 and float(state.seen) == 0 and float(state.accuracy) == 0.5
    state, acc = M.close_window(state)
    assert acc is None
