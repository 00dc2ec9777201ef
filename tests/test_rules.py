"""Offset rules on their own, and the optimizer pieces around them: contexts, input checks, batch splits, packing."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import deepkd
from deepkd import momentum as MO
from deepkd.checkpoint import pack_state, unpack_state
from deepkd.decompose import by_param_group, decompose, decompose_splits, trainable, zero_filled
from deepkd.errors import CheckpointError, ConfigError, InputError
from deepkd.types import StepContext


def _context(step: int, grads: Any = None, split: Any = None) -> StepContext:
    return StepContext(step, grads, split or (lambda m: None), lambda t: t)


def _grads(scales: list[float], seed: int) -> list[list[list[torch.Tensor]]]:
    """One param group of two tensors; one gradient per component, noisy around a constant signal of ``scale``."""
    gen = torch.Generator().manual_seed(seed)
    return [[[s + torch.randn(30, generator=gen), s + torch.randn(4, 3, generator=gen)] for s in scales]]


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (deepkd.PlainMomentum(), (0.0,)),
        (deepkd.DOT(delta=0.05), (-0.05, 0.05)),
        (deepkd.FixedOffsets(), (0.075, -0.075)),
    ],
)
def test_static_rules_return_their_plan_offsets_at_every_step(strategy: Any, expected: tuple[float, ...]) -> None:
    plan = strategy.plan(("task", "tckd", "nckd"))
    assert plan.offsets == expected
    state = plan.rule.init([[torch.zeros(3)]])
    for step in (1, 2, 50):
        offsets, state = plan.rule.update(state, _context(step, _grads([1.0] * len(expected), step)))
        assert offsets == expected
    assert plan.rule.report_gsnr is None


def test_the_gsnr_rule_moves_its_offsets_only_every_interval_steps_towards_the_higher_gsnr() -> None:
    cfg = deepkd.GSNR(interval=4, estimator="stream", fraction=1.0, delta=0.05)
    plan = cfg.plan(("task", "tckd", "nckd"))
    params = [[torch.zeros(30), torch.zeros(4, 3)]]
    state = plan.rule.init(params)
    assert torch.isnan(plan.rule.report_gsnr(state)).all()
    seen = []
    for step in range(1, 13):
        offsets, state = plan.rule.update(state, _context(step, _grads([3.0, 0.3, 0.0], step)))
        assert offsets is state.offsets  # on the device, changed in place
        seen.append(tuple(offsets.tolist()))
    assert seen[0] == seen[2] == (0.0, 0.0, 0.0)  # μ until the first estimate, at step 4
    assert seen[3] == seen[6] != seen[2] and seen[7] != seen[6]  # re-allocated at steps 4 and 8 only
    task, tckd, nckd = seen[-1]
    assert task > tckd > nckd and all(abs(o) <= 0.05 for o in seen[-1])
    r = plan.rule.report_gsnr(state)
    assert r[0] > r[1] > r[2]


def test_the_split_estimator_probes_at_its_interval_only() -> None:
    cfg = deepkd.GSNR(interval=3, estimator="split", splits=2)
    rule = cfg.plan(("task", "tckd")).rule
    state = rule.init([[torch.zeros(5)]])
    calls: list[int] = []

    def split(m: int) -> Any:
        calls.append(m)
        gen = torch.Generator().manual_seed(len(calls))
        parts = [[[1.0 + torch.randn(5, generator=gen)], [torch.randn(5, generator=gen)]] for _ in range(m)]
        return parts, [8] * m

    for step in range(1, 7):
        state = rule.probe(state, _context(step, None, split))
    assert calls == [2, 2]  # steps 3 and 6
    assert int(state.estimate.split.step) == 2


def test_a_tracked_rule_keeps_its_offsets_and_reports_the_estimate_of_its_interval() -> None:
    plan = deepkd.DOT().plan(("task", "tckd", "nckd"))
    rule = MO.tracking_gsnr(plan.rule, deepkd.GSNR(fraction=1.0, interval=2), len(plan.groups))
    state = rule.init([[torch.zeros(30), torch.zeros(4, 3)]])
    reported = []
    for step in range(1, 6):
        offsets, state = rule.update(state, _context(step, _grads([1.0, 0.1], step)))
        assert offsets == plan.offsets
        reported.append(rule.report_gsnr(state).clone())
    assert torch.isnan(reported[0]).all()  # before the first estimate
    assert torch.isfinite(reported[1]).all() and torch.equal(reported[1], reported[2])  # held between estimates
    assert not torch.equal(reported[2], reported[3])  # re-estimated at step 4
    assert [rule.special(s) for s in range(1, 5)] == [False, True, False, True]
    assert MO.tracking_gsnr(deepkd.GSNR().plan(("task",)).rule, deepkd.GSNR(), 1).report_gsnr is not None


def test_nested_rule_states_pack_to_plain_data_and_unpack_checked() -> None:
    plan = deepkd.DOT().plan(("task", "tckd", "nckd"))
    rule = MO.tracking_gsnr(plan.rule, deepkd.GSNR(fraction=0.5), len(plan.groups))
    state = rule.init([[torch.zeros(30), torch.zeros(4, 3)]])
    _, state = rule.update(state, _context(1, _grads([1.0, 0.1], 1)))
    packed = pack_state(state)
    assert isinstance(packed, dict) and isinstance(packed["estimate"]["stream"], list)
    back = unpack_state(packed, state, "strategy state")
    assert type(back) is type(state) and torch.equal(back.estimate.stream[0].m1, state.estimate.stream[0].m1)
    other = rule.init([[torch.zeros(31), torch.zeros(4, 3)]])
    with pytest.raises(CheckpointError, match="shapes do not match"):
        unpack_state(packed, other, "strategy state")
    with pytest.raises(CheckpointError, match=r"incomplete or malformed.*'estimate'"):
        unpack_state({"rule": packed["rule"]}, state, "strategy state")


def test_batch_splits_add_up_to_the_batch_gradient() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4)
    x, y = torch.randn(10, 6), torch.randint(0, 4, (10,))
    logits = model(x)

    def parts_of(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"task": torch.nn.functional.cross_entropy(logits[idx], y[idx], reduction="sum")}

    grads, sizes = decompose_splits(parts_of, 10, 3, (("task",),), list(model.parameters()))
    assert sizes == [4, 4, 2]  # torch.chunk: contiguous, as even as it goes
    whole = decompose(parts_of(torch.arange(10)), (("task",),), list(model.parameters()))
    for j in range(2):
        assert torch.allclose(sum(g[0][j] for g in grads), whole[0][j], atol=1e-6)
    assert decompose_splits(parts_of, 2, 3, (("task",),), list(model.parameters())) is None


def test_frozen_parameters_get_zeros_for_the_rule_and_are_cut_per_param_group() -> None:
    a, b, c = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(1))
    b.requires_grad_(False)
    groups = [{"params": [a, b]}, {"params": [c]}]
    active, flat = trainable(groups)
    assert active == [[True, False], [True]] and flat == [a, c]
    grads = [[torch.full((2,), 1.0), torch.full((1,), 2.0)], [torch.full((2,), 3.0), torch.full((1,), 4.0)]]
    per_group = by_param_group(grads, active)
    assert [[len(g) for g in pg] for pg in per_group] == [[1, 1], [1, 1]]
    filled = zero_filled(per_group[0], active[0], groups[0]["params"])
    assert filled[1][0].tolist() == [3.0, 3.0] and filled[1][1].tolist() == [0.0, 0.0, 0.0]


def _step(opt: deepkd.DistillOptimizer, labels: torch.Tensor, classes: int = 5) -> None:
    model = torch.nn.Linear(4, classes)
    opt.distill_step(model(torch.randn(len(labels), 4)), torch.randn(len(labels), classes), labels, epoch=1)


@pytest.mark.parametrize("check", [True, "auto", False])
def test_input_checks_on_the_cpu(check: bool | str) -> None:
    model = torch.nn.Linear(4, 5)
    opt = deepkd.DistillOptimizer(
        model.parameters(), deepkd.compose(loss="kd", momentum="sgd", mask="none"), lr=0.1, check_inputs=check
    )
    bad = torch.tensor([0, 1, 5, 2])  # label 5 of 5 classes
    if check is False:
        with pytest.raises((IndexError, RuntimeError)):  # torch's own error, not deepkd's
            _step(opt, bad)
    else:  # CPU tensors: every step, whether "auto" or True
        _step(opt, torch.tensor([0, 1, 4, 2]))
        with pytest.raises(InputError, match=r"label 5 is out of range.*\[0, 5\)"):
            _step(opt, bad)
        with pytest.raises(InputError, match=r"expected logits of 5 classes.*\(4, 6\)"):
            _step(opt, torch.tensor([0, 1, 4, 2]), classes=6)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"check_inputs": "yes"}, r"check_inputs must be one of True, False, 'auto', got 'yes'"),
        ({"check_inputs": 1}, r"check_inputs must be one of .*got 1"),
        ({"decomposition": "vmap"}, r"decomposition must be one of 'sequential', 'batched', got 'vmap'"),
        ({"nonfinite": "ignore"}, r"nonfinite must be one of 'raise', 'skip', got 'ignore'"),
    ],
)
def test_bad_optimizer_options_are_named(kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        deepkd.DistillOptimizer(torch.nn.Linear(2, 2).parameters(), deepkd.compose(), lr=0.1, **kwargs)


def test_param_groups_join_before_the_first_step_only() -> None:
    a, b = torch.nn.Linear(4, 5), torch.nn.Linear(4, 5)
    opt = deepkd.DistillOptimizer(a.parameters(), deepkd.compose(loss="kd", mask="none"), lr=0.1, track_gsnr=True)
    opt.add_param_group({"params": list(b.parameters())})
    assert len(opt.rule_state.estimate.stream) == 2 and len(opt.momentum_states) == 2
    _step(opt, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(deepkd.DeepKDError, match="before the first step"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))]})


# ------------------------------------------------------------------ properties over any rule
_strategies = st.one_of(
    st.builds(deepkd.PlainMomentum),
    st.builds(deepkd.DOT, delta=st.floats(0.0, 0.09)),
    st.builds(
        deepkd.FixedOffsets, tog=st.floats(-0.09, 0.09), tcg=st.floats(-0.09, 0.09), ncg=st.floats(-0.09, 0.09)
    ),
    st.builds(
        deepkd.GSNR,
        delta=st.floats(0.0, 0.09),
        interval=st.integers(1, 3),
        allocation=st.sampled_from(["tanh", "minmax"]),
        fraction=st.sampled_from([0.5, 1.0]),
    ),
)


@given(strategy=_strategies, scales=st.lists(st.floats(0.0, 5.0), min_size=3, max_size=3), seed=st.integers(0, 99))
def test_any_rules_offsets_stay_in_its_plans_range_and_its_state_packs_and_unpacks(
    strategy: Any, scales: list[float], seed: int
) -> None:
    plan = strategy.plan(("task", "tckd", "nckd"))
    lo, hi = plan.offset_range
    params = [[torch.zeros(30), torch.zeros(4, 3)]]
    state = plan.rule.init(params)
    for step in range(1, 6):
        grads = _grads([scales[i % 3] for i in range(len(plan.groups))], seed + step)
        ctx = StepContext(step, grads, lambda m: None, lambda t: t)
        state = plan.rule.probe(state, ctx)
        sample = plan.rule.sample(state, ctx) if plan.rule.sample is not None else None
        offsets, state = plan.rule.update(state, ctx._replace(sample=sample))
        values = offsets.tolist() if isinstance(offsets, torch.Tensor) else list(offsets)
        assert len(values) == len(plan.groups)
        assert all(lo - 1e-12 <= o <= hi + 1e-12 for o in values), (values, plan.offset_range)
    again = unpack_state(pack_state(state), plan.rule.init(params), "rule state")
    flat = [t for t in torch.utils._pytree.tree_leaves(state) if isinstance(t, torch.Tensor)]
    back = [t for t in torch.utils._pytree.tree_leaves(again) if isinstance(t, torch.Tensor)]
    assert len(flat) == len(back)
    for a, b in zip(flat, back, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
