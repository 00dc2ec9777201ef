"""Momentum: equivalence with torch.optim.SGD, foreach ≡ per-tensor, first steps, official-code regression."""

from __future__ import annotations

import copy

import attrs
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import deepkd
from deepkd import momentum as MO


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))


def _data(steps: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.nn.Linear(6, 4)
    with torch.no_grad():
        teacher.weight.copy_(torch.randn(4, 6, generator=gen) * 2)
    for _ in range(steps):
        x = torch.randn(10, 6, generator=gen)
        with torch.no_grad():
            t = teacher(x)
        yield x, t, torch.randint(0, 4, (10,), generator=gen)


def _param_groups(model, lr, wd, split):
    params = list(model.parameters())
    if not split:
        return [{"params": params}]
    return [{"params": params[:2]}, {"params": params[2:], "lr": lr * 0.5, "weight_decay": wd * 2}]


def _train_sgd(loss_cfg, steps, lr, mu, wd, nesterov, dampening, split):
    model = _model()
    opt = torch.optim.SGD(
        _param_groups(model, lr, wd, split), lr=lr, momentum=mu, weight_decay=wd, nesterov=nesterov, dampening=dampening
    )
    for epoch, (x, t, y) in enumerate(_data(steps), start=1):
        opt.zero_grad()
        logits = model(x)
        # the loss's gradient with respect to the logits in closed form, as DistillOptimizer takes it (it equals
        # autograd's through loss_cfg.parts to rounding: tests/test_losses.py), so the updates compare bit for bit
        logits.backward(sum(loss_cfg.parts_and_grads(logits, t, y, epoch=epoch, keep=None).grads.values()))
        opt.step()
    return model


def _train_deepkd(recipe, steps, lr, mu, wd, nesterov, dampening, split, foreach=False):
    model = _model()
    opt = deepkd.DistillOptimizer(
        _param_groups(model, lr, wd, split),
        recipe,
        lr=lr,
        momentum=mu,
        weight_decay=wd,
        nesterov=nesterov,
        dampening=dampening,
        foreach=foreach,
    )
    for epoch, (x, t, y) in enumerate(_data(steps), start=1):
        opt.distill_step(model(x), t, y, epoch=epoch)
    return model, opt


settings_space = dict(
    steps=st.integers(1, 6),
    lr=st.sampled_from([0.01, 0.1, 0.5]),
    mu=st.sampled_from([0.0, 0.5, 0.9]),
    wd=st.sampled_from([0.0, 5e-4, 0.05]),
    nesterov=st.booleans(),
    dampening=st.sampled_from([0.0, 0.3]),
    split=st.booleans(),
)


def _valid(mu, nesterov, dampening):
    return not nesterov or (mu > 0 and dampening == 0)


@given(**settings_space, momentum=st.sampled_from(["sgd", "dot0", "fixed_equal"]), foreach=st.booleans())
def test_merged_strategies_equal_torch_sgd_exactly(steps, lr, mu, wd, nesterov, dampening, split, momentum, foreach):
    """Invariant 5: sgd ≡ torch.optim.SGD; dot(Δ=0) and fixed with equal deltas merge into one buffer and match it
    bit for bit, weight decay and param groups included."""
    if not _valid(mu, nesterov, dampening):
        return
    strategy = {
        "sgd": deepkd.PlainMomentum(),
        "dot0": deepkd.DOT(delta=0.0),
        "fixed_equal": deepkd.FixedOffsets(tog=0.0, tcg=0.0, ncg=0.0),
    }[momentum]
    recipe = deepkd.compose(loss="kd", momentum=strategy, mask="none")
    assert len(recipe.plan().groups) == 1
    ref = _train_sgd(recipe.loss, steps, lr, mu, wd, nesterov, dampening, split)
    ours, _ = _train_deepkd(recipe, steps, lr, mu, wd, nesterov, dampening, split, foreach)
    for a, b in zip(ref.parameters(), ours.parameters()):
        assert torch.equal(a, b)


@given(**settings_space, momentum=st.sampled_from(["gsnr0", "fixed_shifted"]))
def test_three_buffers_with_equal_coefficients_match_sgd(steps, lr, mu, wd, nesterov, dampening, split, momentum):
    """Three separate buffers with one coefficient add up to SGD's single buffer (to rounding)."""
    if not _valid(mu, nesterov, dampening):
        return
    strategy = (
        deepkd.GSNR(delta=0.0, interval=3)
        if momentum == "gsnr0"
        else deepkd.FixedOffsets(tog=0.05, tcg=0.05, ncg=0.05, reference_quirks=False)
    )
    mu_ref = mu if momentum == "gsnr0" else mu + 0.05
    if mu_ref >= 1:
        return
    recipe = deepkd.compose(loss="dkd", momentum=strategy, mask="none")
    ref = _train_sgd(recipe.loss, steps, lr, mu_ref, wd, nesterov, dampening, split)
    ours, _ = _train_deepkd(recipe, steps, lr, mu, wd, nesterov, dampening, split)
    for a, b in zip(ref.parameters(), ours.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@given(**settings_space, momentum=st.sampled_from(["dot", "fixed", "gsnr", "quirks"]))
def test_foreach_matches_per_tensor(steps, lr, mu, wd, nesterov, dampening, split, momentum):
    if not _valid(mu, nesterov, dampening) or mu < 0.1 or mu > 0.9:
        return
    strategy = {
        "dot": deepkd.DOT(),
        "fixed": deepkd.FixedOffsets(),
        "gsnr": deepkd.GSNR(interval=2),
        "quirks": deepkd.FixedOffsets(reference_quirks=True),
    }[momentum]
    recipe = deepkd.compose(loss="kd", momentum=strategy, mask="none")
    a, _ = _train_deepkd(recipe, steps, lr, mu, wd, nesterov, dampening, split, foreach=False)
    b, _ = _train_deepkd(recipe, steps, lr, mu, wd, nesterov, dampening, split, foreach=True)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("momentum", ["sgd", "dot", "fixed", "gsnr"])
def test_first_step_buffers_equal_gradients(momentum):
    recipe = deepkd.compose(loss="dkd", momentum=momentum, mask="none")
    model = _model()
    opt = deepkd.DistillOptimizer(model.parameters(), recipe, lr=0.1, weight_decay=0.0)
    x, t, y = next(_data(1))
    probe = copy.deepcopy(model)
    parts = recipe.loss.parts(probe(x), t, y, epoch=1, keep=None)
    expected = deepkd.decompose.decompose(parts, recipe.plan().groups, list(probe.parameters()))
    opt.distill_step(model(x), t, y, epoch=1)
    for group_buffers, group_grads in zip(opt.momentum_states[0].buffers, expected):
        for buf, g in zip(group_buffers, group_grads):
            torch.testing.assert_close(buf, g)


@pytest.mark.parametrize("foreach", [False, True])
def test_official_code_regression_values(foreach):
    """§3 of the spec: p₀ = 0, lr = 0.1, wd = 0, m = (TOG .5, TCG .25, NCG .75)."""
    for quirks, v_tog in ((True, 27.75), (False, 32.5)):
        p = [torch.zeros(())]
        state = MO.init(p, 3)
        for task, tcg, ncg in ((19.0, 11.0, 3.0), (23.0, 13.0, 5.0)):
            grads = [[torch.tensor(task)], [torch.tensor(tcg)], [torch.tensor(ncg)]]
            fn = MO.update_reference_quirks if quirks else MO.update
            state = fn(state, p, grads, (0.5, 0.25, 0.75), lr=0.1, foreach=foreach)
        assert [b[0].item() for b in state.buffers] == [v_tog, 15.75, 7.25]


def test_official_code_weight_decay_is_applied_after_task_and_nckd_updates():
    p = [torch.tensor(1.0)]
    state = MO.init(p, 3)
    grads = [[torch.tensor(2.0)], [torch.tensor(3.0)], [torch.tensor(5.0)]]
    MO.update_reference_quirks(state, p, grads, (0.9, 0.9, 0.9), lr=0.1, weight_decay=0.5)
    p_mid = 1.0 - 0.1 * 2.0 - 0.1 * 5.0  # after the task and NCKD updates
    assert state.buffers[1][0].item() == pytest.approx(3.0 + 0.5 * p_mid)
    assert state.buffers[0][0].item() == pytest.approx(2.0)  # no weight decay on the task gradient
    assert p[0].item() == pytest.approx(p_mid - 0.1 * (3.0 + 0.5 * p_mid))


def test_dot_coefficients_and_weight_decay_group():
    plan = deepkd.DOT(delta=0.075).plan(("task", "tckd", "nckd"))
    assert plan.groups == (("task",), ("tckd", "nckd"))
    assert plan.offsets == (-0.075, 0.075) and plan.decay_group == 0


@pytest.mark.parametrize(
    ("strategy", "products"),
    [
        (deepkd.PlainMomentum(), 1),
        (deepkd.DOT(), 2),
        (deepkd.DOT(delta=0.0), 1),
        (deepkd.FixedOffsets(), 2),  # δ_TOG = δ_NCG = +0.075 share a buffer
        (deepkd.FixedOffsets(tog=0.075, tcg=0.075, ncg=-0.05), 2),
        (deepkd.FixedOffsets(tog=0.1, tcg=0.0, ncg=-0.1), 3),
        (deepkd.FixedOffsets(tog=0.0, tcg=0.0, ncg=0.0), 1),
        (deepkd.FixedOffsets(reference_quirks=True), 3),  # weight-decay placement forbids merging
        (deepkd.GSNR(), 3),
    ],
)
def test_products_per_step(strategy, products):
    assert len(strategy.plan(("task", "tckd", "nckd")).groups) == products


def test_gsnr_coefficients_follow_measured_gsnr():
    gsnr = deepkd.GSNR(interval=5, estimator="stream", fraction=1.0, allocation="minmax")
    recipe = deepkd.compose(loss="kd", momentum=gsnr, mask="none")
    model, opt = _train_deepkd(recipe, 4, 0.05, 0.9, 0.0, False, 0.0, False)
    assert opt.coefficients() == (0.9, 0.9, 0.9)  # before the first estimate all use μ
    for epoch, (x, t, y) in enumerate(_data(6, seed=7), start=1):
        out = opt.distill_step(model(x), t, y, epoch=epoch)
    r = opt.gsnr()
    assert r is not None and torch.isfinite(r).all()
    coeffs = opt.coefficients()
    order = torch.argsort(r)
    assert coeffs[int(order[-1])] == pytest.approx(0.975) and coeffs[int(order[0])] == pytest.approx(0.825)
    assert set(out.gsnr) == {"task", "tckd", "nckd"}
    assert all(0 <= c < 1 for c in coeffs)


@given(
    steps=st.integers(1, 4),
    mu=st.sampled_from([0.0, 0.5, 0.9]),
    wd=st.sampled_from([0.0, 0.05]),
    nesterov=st.booleans(),
    dampening=st.sampled_from([0.0, 0.3]),
    foreach=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_direction_is_the_update_and_is_linear_across_ranks(steps, mu, wd, nesterov, dampening, foreach, seed):
    """``direction`` updates the buffers as ``update`` does and returns the step ``update`` applies; with each of two
    "ranks" feeding its own gradients, the mean of their buffers and directions is the one process's on the mean."""
    if not _valid(mu, nesterov, dampening):
        return
    gen = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (4,), ()]
    coeffs = (max(mu - 0.1, 0.0), mu, min(mu + 0.05, 0.95))
    hyper = dict(dampening=dampening, weight_decay=wd, nesterov=nesterov, decay_group=1, foreach=foreach)
    theta = [torch.randn(s, generator=gen) for s in shapes]
    whole, ranks = MO.init(theta, 3), [MO.init(theta, 3) for _ in range(2)]
    for _ in range(steps):
        local = [[[torch.randn(s, generator=gen) for s in shapes] for _ in coeffs] for _ in ranks]
        mean = [[(a + b) / 2 for a, b in zip(ga, gb)] for ga, gb in zip(*local)]
        moved = [p.clone() for p in theta]
        before = whole._replace(buffers=tuple(tuple(b.clone() for b in bs) for bs in whole.buffers))
        whole = MO.update(whole, moved, mean, coeffs, lr=0.1, **hyper)
        out = [torch.empty(s) for s in shapes]
        again = MO.direction(before, theta, mean, coeffs, out=out, **hyper)  # the same buffers, theta unchanged
        outs = [[torch.empty(s) for s in shapes] for _ in ranks]
        ranks = [MO.direction(st_, theta, g, coeffs, out=o, **hyper) for st_, g, o in zip(ranks, local, outs)]
        for b_whole, b_again, b0, b1 in zip(whole.buffers, again.buffers, *(r.buffers for r in ranks)):
            for w, a, x, y in zip(b_whole, b_again, b0, b1):
                torch.testing.assert_close(a, w, atol=0, rtol=0)
                torch.testing.assert_close((x + y) / 2, w, atol=1e-6, rtol=1e-5)
        for p, p_moved, d, d0, d1 in zip(theta, moved, out, *outs):
            torch.testing.assert_close(p - 0.1 * d, p_moved, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close((d0 + d1) / 2, d, atol=1e-5, rtol=1e-5)
            p.copy_(p_moved)
        assert int(whole.step) == int(again.step) == int(ranks[0].step)


def test_only_the_linear_update_has_a_direction():
    assert deepkd.DOT().plan(("task", "tckd", "nckd")).direction is MO.direction
    assert deepkd.GSNR().plan(("task", "tckd", "nckd")).direction is MO.direction
    assert deepkd.FixedOffsets(reference_quirks=True).plan(("task", "tckd", "nckd")).direction is None


@pytest.mark.parametrize("foreach", [False, True])
def test_preserve_step_keeps_each_buffer_at_the_step_size_of_mu(foreach):
    """With (1 − m)/(1 − μ)-scaled gradients, a constant gradient leaves every buffer at g/(1 − μ) whatever its
    coefficient: the offsets change the smoothing, not the step."""
    mu, coeffs = 0.9, (0.825, 0.975)
    p = [torch.zeros(3)]
    state = MO.init(p, 2)
    g = [[torch.tensor([1.0, -2.0, 0.5])], [torch.tensor([3.0, 0.0, -1.0])]]
    scales = [(1 - m) / (1 - mu) for m in coeffs]
    for _ in range(600):
        state = MO.update(state, p, g, coeffs, lr=0.0, grad_scales=scales, foreach=foreach)
    for bufs, grads in zip(state.buffers, g):
        torch.testing.assert_close(bufs[0], grads[0] / (1 - mu), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "strategy", [deepkd.DOT(delta=0.0, preserve_step=True), deepkd.GSNR(delta=0.0, preserve_step=True)]
)
def test_preserve_step_with_equal_coefficients_is_plain_momentum(strategy):
    recipe = deepkd.compose(loss="kd", momentum=strategy, mask="none")
    plain = deepkd.compose(loss="kd", momentum=attrs.evolve(strategy, preserve_step=False), mask="none")
    a, _ = _train_deepkd(recipe, 4, 0.1, 0.9, 5e-4, False, 0.0, False)
    b, _ = _train_deepkd(plain, 4, 0.1, 0.9, 5e-4, False, 0.0, False)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_preserve_step_with_dot_moves_less_than_dot_on_the_distillation_buffer():
    recipe = deepkd.compose(loss="kd", momentum=deepkd.DOT(preserve_step=True), mask="none")
    assert recipe.plan().preserve_step and deepkd.Recipe.from_dict(recipe.to_dict()) == recipe
    model, _ = _train_deepkd(recipe, 6, 0.1, 0.9, 0.0, False, 0.0, False)
    assert all(torch.isfinite(p).all() for p in model.parameters())
