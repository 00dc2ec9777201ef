"""Gradient decomposition: components add up to the full gradient; sequential ≡ batched; .grad untouched."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import deepkd
from deepkd.decompose import decompose
from deepkd.masks import topk_keep_mask


def _net(seed: int, bn: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = [torch.nn.Conv2d(1, 4, 3, padding=1)]
    if bn:
        layers.append(torch.nn.BatchNorm2d(4))
    layers += [torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 7)]
    return torch.nn.Sequential(*layers)


GROUPINGS = [
    (("task",), ("tckd",), ("nckd",)),
    (("task", "tckd"), ("nckd",)),
    (("task",), ("tckd", "nckd")),
    (("task", "tckd", "nckd"),),
]


@given(
    seed=st.integers(0, 10_000),
    loss=st.sampled_from(["kd", "dkd"]),
    grouping=st.sampled_from(GROUPINGS),
    k=st.sampled_from([None, 2, 4]),
    epoch=st.integers(1, 30),
)
def test_components_sum_to_full_gradient(seed, loss, grouping, k, epoch):
    """Invariant 1: the group gradients add up to the gradient of the summed loss, for any split."""
    net = _net(seed % 7)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 1, 6, 6, generator=gen)
    teacher = torch.randn(5, 7, generator=gen) * 3
    y = torch.randint(0, 7, (5,), generator=gen)
    cfg = deepkd.LOSSES.get(loss)()
    params = list(net.parameters())
    keep = None if k is None else topk_keep_mask(teacher, y, k)
    parts = cfg.parts(net(x), teacher, y, epoch=epoch, keep=keep)
    comps = decompose(parts, grouping, params)
    full = torch.autograd.grad(sum(cfg.parts(net(x), teacher, y, epoch=epoch, keep=keep).values()), params)
    for i, g in enumerate(full):
        torch.testing.assert_close(sum(c[i] for c in comps), g, atol=1e-5, rtol=1e-4)
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("grouping", GROUPINGS)
def test_batched_equals_sequential(bn, grouping):
    net = _net(0, bn=bn)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 1, 6, 6, generator=gen)
    teacher = torch.randn(6, 7, generator=gen)
    y = torch.randint(0, 7, (6,), generator=gen)
    cfg = deepkd.KD()
    params = list(net.parameters())
    seq = decompose(cfg.parts(net(x), teacher, y), grouping, params, mode="sequential")
    bat = decompose(cfg.parts(net(x), teacher, y), grouping, params, mode="batched")
    for gs, gb in zip(seq, bat):
        for a, b in zip(gs, gb):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_unused_parameters_get_zeros():
    used, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    grads = decompose({"task": (used * 2).sum()}, (("task",),), [used, unused])
    assert torch.equal(grads[0][1], torch.zeros(2))
    assert torch.equal(grads[0][0], torch.full((3,), 2.0))


def test_missing_part_is_named():
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(KeyError, match="tckd"):
        decompose({"task": w.sum()}, (("task",), ("tckd",)), [w])
