"""Shared conformance suite over every registered strategy, in the style of optax's shared optimizer tests.

The parametrisations iterate the registries (``deepkd.MOMENTA``, ``deepkd.MASKS``, ``deepkd.LOSSES``) at collection
time, so a strategy registered before the tests are collected is checked by the same contract as the built-ins:

- momentum: state shapes and dtypes stay fixed, updates are finite, parameters move, the step counter advances,
  the buffers follow ``v <- m v + g`` with the coefficients the step reports, and a checkpoint saved with
  ``torch.save`` and loaded with ``weights_only=True`` resumes bit for bit;
- mask: ``init(C)`` gives K in [1, C - 1]; ``observe`` never lowers K or the phase; kept sets only grow;
- loss: parts are finite float32 scalars named by ``part_names`` and differentiable w.r.t. the student.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import deepkd
from deepkd import gsnr as G
from deepkd import masks as M
from deepkd import momentum as MO
from deepkd.decompose import decompose
from deepkd.errors import ConfigError
from deepkd.registry import name_of

from .conftest import logits_batch

C = 5  # classes of the toy problem
FEATURES = 8
BATCH = 32
STEPS = 5


# ----------------------------------------------------------------------------------------------- parametrisations
def _momentum_variants() -> list:
    """Every registered momentum strategy with its defaults, plus the non-default modes of the built-ins."""
    out = [pytest.param(deepkd.MOMENTA.get(n)(), id=n) for n in deepkd.MOMENTA.names()]
    if "fixed" in deepkd.MOMENTA:
        out.append(pytest.param(deepkd.FixedOffsets(reference_quirks=True), id="fixed-quirks"))
        out.append(pytest.param(deepkd.FixedOffsets(tog=0.05, tcg=0.05, ncg=0.05), id="fixed-equal"))
    if "gsnr" in deepkd.MOMENTA:
        # interval=2 makes the coefficients re-allocate inside the short run (and across the checkpoint)
        out.append(pytest.param(deepkd.GSNR(interval=2), id="gsnr-interval2"))
        out.append(pytest.param(deepkd.GSNR(interval=2, estimator="stream", fraction=1.0), id="gsnr-stream-exact"))
        out.append(pytest.param(deepkd.GSNR(interval=2, estimator="split"), id="gsnr-split"))
        split3 = deepkd.GSNR(interval=2, estimator="split", splits=3, allocation="minmax")
        out.append(pytest.param(split3, id="gsnr-split3-minmax"))
    if "dot" in deepkd.MOMENTA:
        out.append(pytest.param(deepkd.DOT(delta=0.0), id="dot-zero"))
    return out


def _mask_variants() -> list:
    out = [pytest.param(deepkd.MASKS.get(n)(), id=n) for n in deepkd.MASKS.names()]
    if "static" in deepkd.MASKS:
        out.append(pytest.param(deepkd.StaticMask(k=3), id="static-k3"))
        out.append(pytest.param(deepkd.StaticMask(k=1000), id="static-k1000"))
        out.append(pytest.param(deepkd.StaticMask(k=2, form="renormalize"), id="static-renormalize"))
    if "dynamic" in deepkd.MASKS:
        out.append(pytest.param(deepkd.DynamicMask(horizon=1), id="dynamic-horizon1"))
        out.append(pytest.param(deepkd.DynamicMask(horizon=1, form="renormalize"), id="dynamic-renormalize"))
        out.append(pytest.param(deepkd.DynamicMask(thresholds=(0.4, 0.7), easy=0.2, hard=0.5), id="dynamic-imagenet"))
    return out


def _loss_names() -> list:
    return [pytest.param(n, id=n) for n in deepkd.LOSSES.names()]


MOMENTA = _momentum_variants()
MASKS = _mask_variants()
LOSSES = _loss_names()
TEACHER_LOSSES = [p for p in LOSSES if deepkd.LOSSES.get(p.values[0]).needs_teacher][:2] or LOSSES[:1]

# Built-in momentum variants that refuse the teacher-free ``ce`` loss (anything else must accept it).
CE_REFUSED = {"fixed-quirks"}


# ----------------------------------------------------------------------------------------------- the toy problem
def _problem(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module, list]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    student = torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.ReLU(), torch.nn.Linear(16, C))
    teacher = torch.nn.Linear(FEATURES, C)
    with torch.no_grad():
        teacher.weight.copy_(torch.randn(C, FEATURES, generator=gen) * 2.0)
        teacher.bias.zero_()
    teacher.eval().requires_grad_(False)
    batches = []
    for _ in range(STEPS + 2):
        x = torch.randn(BATCH, FEATURES, generator=gen)
        with torch.no_grad():
            t = teacher(x)
        noise = torch.randint(0, C, (BATCH,), generator=gen)
        y = torch.where(torch.rand(BATCH, generator=gen) < 0.8, t.argmax(1), noise)
        batches.append((x, t, y))
    return student, teacher, batches


def _snapshot(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _check_states_stable(opt: deepkd.DistillOptimizer, params: list[torch.Tensor], n_groups: int) -> None:
    (state,) = opt.momentum_states
    assert isinstance(state, MO.MomentumState)
    assert len(state.buffers) == n_groups
    assert isinstance(state.step, int)  # a host-side count: deciding the first step reads nothing back
    for group in state.buffers:
        assert len(group) == len(params)
        for buf, p in zip(group, params):
            assert buf.shape == p.shape and buf.dtype == p.dtype and buf.device == p.device
            assert torch.isfinite(buf).all()


def _run(recipe: deepkd.Recipe, *, teacher_free: bool = False, steps: int = STEPS, **opt_kwargs):
    student, _, batches = _problem()
    kwargs = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, track_gsnr=True)
    kwargs.update(opt_kwargs)
    opt = deepkd.DistillOptimizer(student.parameters(), recipe, **kwargs)
    params = list(student.parameters())
    n_groups = len(recipe.plan().groups)
    outs = []
    for i, (x, t, y) in enumerate(batches[:steps]):
        before = _snapshot(student)
        out = opt.distill_step(student(x), None if teacher_free else t, y, epoch=1)
        outs.append(out)
        assert not out.skipped
        assert out.step == i + 1 == opt.steps
        assert opt.momentum_states[0].step == i + 1
        assert math.isfinite(out.loss)
        assert set(out.parts) == set(recipe.loss.part_names)
        assert all(math.isfinite(v) for v in out.parts.values())
        assert math.isclose(out.loss, sum(out.parts.values()), rel_tol=1e-6, abs_tol=1e-6)
        assert set(out.momenta) == set(recipe.loss.part_names)
        assert all(0.0 <= m < 1.0 for m in out.momenta.values())
        after = _snapshot(student)
        deltas = [a - b for a, b in zip(after, before)]
        assert all(torch.isfinite(d).all() for d in deltas), "update is not finite"
        assert any(bool((d != 0).any()) for d in deltas), f"step {i + 1} did not move the parameters"
        _check_states_stable(opt, params, n_groups)
        assert out.gsnr is not None and set(out.gsnr) == {"+".join(g) for g in recipe.plan().groups}
    return student, opt, batches, outs


# ----------------------------------------------------------------------------------------------- momentum
@pytest.mark.parametrize("loss", TEACHER_LOSSES)
@pytest.mark.parametrize("momentum", MOMENTA)
def test_momentum_run_and_checkpoint(momentum: object, loss: str) -> None:
    recipe = deepkd.compose(loss=loss, momentum=momentum, mask="static")
    student, opt, batches, _ = _run(recipe)
    start = _snapshot(_problem()[0])
    assert any(not torch.equal(a, b) for a, b in zip(_snapshot(student), start))

    # checkpoint -> bytes -> weights_only load -> fresh optimizer on a copy of the model
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    twin = copy.deepcopy(student)
    opt2 = deepkd.DistillOptimizer(twin.parameters(), recipe, lr=0.1, momentum=0.9, weight_decay=5e-4, track_gsnr=True)
    opt2.load_state_dict(loaded)
    assert opt2.steps == opt.steps == STEPS
    assert opt2.coefficients() == opt.coefficients()

    x, t, y = batches[STEPS]
    out1 = opt.distill_step(student(x), t, y, epoch=1)
    out2 = opt2.distill_step(twin(x), t, y, epoch=1)
    for a, b in zip(student.parameters(), twin.parameters()):
        assert torch.equal(a, b), "a resumed optimizer must take exactly the same next step"
    for ga, gb in zip(opt.momentum_states[0].buffers, opt2.momentum_states[0].buffers):
        assert all(torch.equal(a, b) for a, b in zip(ga, gb))
    assert out1.step == out2.step == STEPS + 1
    assert out1.momenta == out2.momenta and out1.k == out2.k and out1.phase == out2.phase
    assert out1.gsnr == pytest.approx(out2.gsnr, nan_ok=True)


def _buffer_recursion(recipe: deepkd.Recipe, teacher_free: bool) -> None:
    """With wd = 0, every buffer follows v <- m v + g (first step v = g) with the coefficient the step reports."""
    student, _, batches = _problem()
    opt = deepkd.DistillOptimizer(student.parameters(), recipe, lr=0.1, momentum=0.9)
    params = list(student.parameters())
    groups = opt.plan.groups
    for i, (x, t, y) in enumerate(batches[:STEPS]):
        teacher = None if teacher_free else t
        parts = recipe.loss.parts(student(x), teacher, y, epoch=1, keep=None)
        grads = decompose(parts, groups, params)
        old = [[b.clone() for b in bufs] for bufs in opt.momentum_states[0].buffers]
        out = opt.distill_step(student(x), teacher, y, epoch=1)
        new = opt.momentum_states[0].buffers
        for gi, group in enumerate(groups):
            m = out.momenta[group[0]]
            assert all(out.momenta[p] == m for p in group)
            for b_old, b_new, g in zip(old[gi], new[gi], grads[gi]):
                expected = g if i == 0 else m * b_old + g
                torch.testing.assert_close(
                    b_new,
                    expected,
                    rtol=1e-5,
                    atol=1e-6,
                    msg=lambda s, gi=gi, i=i: f"group {groups[gi]} step {i + 1}: {s}",
                )


@pytest.mark.parametrize("loss", TEACHER_LOSSES)
@pytest.mark.parametrize("momentum", MOMENTA)
def test_momentum_buffers_follow_reported_coefficients(momentum: object, loss: str) -> None:
    _buffer_recursion(deepkd.compose(loss=loss, momentum=momentum, mask="none"), teacher_free=False)


@pytest.mark.parametrize("momentum", MOMENTA)
def test_teacher_free_ce_with_every_momentum(momentum: object, request: pytest.FixtureRequest) -> None:
    variant = request.node.callspec.id
    try:
        recipe = deepkd.compose(loss="ce", momentum=momentum, mask="none")
    except ConfigError as exc:
        # a refusal must be a ConfigError that explains itself, and only where we expect one for built-ins
        assert "task" in str(exc) or "part" in str(exc)
        builtin = type(momentum).__module__.startswith("deepkd.")
        assert not builtin or variant in CE_REFUSED, f"{variant} unexpectedly refuses the ce loss: {exc}"
        return
    assert variant not in CE_REFUSED, f"{variant} should refuse the ce loss (it needs task, tckd and nckd)"
    assert recipe.plan().groups == (("task",),)
    _run(recipe, teacher_free=True)
    if not variant.startswith("gsnr-interval"):
        _buffer_recursion(recipe, teacher_free=True)


def test_momentum_variants_cover_every_registered_name() -> None:
    covered = {name_of(p.values[0]) for p in MOMENTA}
    assert covered == set(deepkd.MOMENTA.names())
    assert {name_of(p.values[0]) for p in MASKS} == set(deepkd.MASKS.names())
    assert {p.values[0] for p in LOSSES} == set(deepkd.LOSSES.names())


@pytest.mark.parametrize("momentum", MOMENTA)
def test_raw_states_survive_weights_only_save(momentum: object) -> None:
    """MomentumState, GSNRState and MaskState saved as ``_asdict()`` load back with ``weights_only=True``."""
    recipe = deepkd.compose(loss=TEACHER_LOSSES[0].values[0], momentum=momentum, mask="dynamic")
    _, opt, _, _ = _run(recipe, steps=2)
    mom = opt.momentum_states[0]
    params = [p for g in opt.param_groups for p in g["params"]]
    gsnr = G.stream_init(params, len(recipe.plan().groups), fraction=0.3, seed=1)
    gsnr = G.stream_update(gsnr, [[torch.randn_like(p) for p in params] for _ in recipe.plan().groups])
    mask = opt.mask_state
    assert mask is not None
    for state, cls in ((mom, MO.MomentumState), (gsnr, G.GSNRState), (mask, M.MaskState)):
        buf = io.BytesIO()
        torch.save(state._asdict(), buf)
        buf.seek(0)
        back = cls(**torch.load(buf, weights_only=True))
        flat_a, flat_b = _flat(state), _flat(back)
        assert len(flat_a) == len(flat_b) > 0
        for a, b in zip(flat_a, flat_b):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert torch.equal(a, b) or (
                a.is_floating_point()
                and torch.equal(a.isnan(), b.isnan())
                and torch.equal(a.nan_to_num(), b.nan_to_num())
            )


def _flat(obj: object) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, tuple):
        return [t for x in obj for t in _flat(x)]
    return []


# ----------------------------------------------------------------------------------------------- masks
@pytest.mark.parametrize("mask", MASKS)
@given(
    classes=st.integers(2, 150),
    accuracies=st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=10),
    seed=st.integers(0, 2**16),
)
def test_mask_init_and_monotone_observe(mask: object, classes: int, accuracies: list[float], seed: int) -> None:
    state = mask.init(classes)
    assert isinstance(state, M.MaskState)
    k0 = int(state.k)
    assert 1 <= k0 <= classes - 1, f"init({classes}) gave K = {k0}"
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(4, classes, generator=gen)
    target = torch.randint(0, classes, (4,), generator=gen)
    prev_keep = _kept(state, teacher, target)
    for acc in accuracies:
        new = mask.observe(state, torch.tensor(round(acc * 100.0)), 100, classes)
        assert new.k.dtype == torch.int64 and new.phase.dtype == torch.int64
        assert int(new.k) >= int(state.k), f"K decreased from {int(state.k)} to {int(new.k)} at accuracy {acc}"
        assert int(new.phase) >= int(state.phase), f"phase decreased at accuracy {acc}"
        assert 1 <= int(new.k) <= classes - 1
        keep = _kept(new, teacher, target)
        assert not keep[torch.arange(4), target].any(), "the target class must never be kept"
        assert (keep.sum(1) == min(int(new.k), classes - 1)).all()
        assert not (prev_keep & ~keep).any(), "a later kept set must contain the earlier one"
        state, prev_keep = new, keep


def _kept(state: M.MaskState, teacher: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    keep = M.topk_keep_mask(teacher, target, int(state.k))
    if keep is None:  # no masking: every non-target class is kept
        keep = torch.ones_like(teacher, dtype=torch.bool).scatter(1, target[:, None], False)
    return keep


@pytest.mark.parametrize("mask", MASKS)
def test_mask_inside_optimizer(mask: object) -> None:
    recipe = deepkd.compose(loss=TEACHER_LOSSES[0].values[0], momentum="sgd", mask=mask)
    student, _, batches = _problem()
    opt = deepkd.DistillOptimizer(student.parameters(), recipe, lr=0.5)
    ks, phases = [], []
    for epoch, (x, t, y) in enumerate(batches, start=1):
        out = opt.distill_step(student(x), t, y, epoch=epoch)
        assert 1 <= out.k <= C - 1
        assert out.phase in M.PHASE_NAMES.values()
        ks.append(out.k)
        phases.append(next(k for k, v in M.PHASE_NAMES.items() if v == out.phase))
    assert ks == sorted(ks) and phases == sorted(phases)
    assert ks[0] >= int(mask.init(C).k)
    if isinstance(mask, deepkd.DynamicMask):
        steps = [b - a for a, b in zip([int(mask.init(C).k), *ks], ks)]
        assert max(steps) <= M.max_k_step(C, mask)


# ----------------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("loss_name", LOSSES)
@given(batch=logits_batch(min_classes=2, max_classes=12), epoch=st.integers(0, 40), k=st.integers(0, 12))
def test_loss_parts_are_finite_named_scalars(loss_name: str, batch: tuple, epoch: int, k: int) -> None:
    student, teacher, target = batch
    loss = deepkd.LOSSES.get(loss_name)()
    student = student.clone().requires_grad_(True)
    keep = M.topk_keep_mask(teacher, target, min(k, student.shape[1] - 1))
    teachers = [teacher] if loss.needs_teacher else [None, teacher]
    for t in teachers:
        parts = loss.parts(student, t, target, epoch=epoch, keep=keep)
        assert set(parts) == set(type(loss).part_names)
        for name, value in parts.items():
            assert isinstance(value, torch.Tensor) and value.dim() == 0, name
            assert value.dtype == torch.float32, name
            assert torch.isfinite(value), f"part {name} = {value}"
            assert value.requires_grad, f"part {name} must be differentiable w.r.t. the student"
        (grad,) = torch.autograd.grad(sum(parts.values()), student)
        assert torch.isfinite(grad).all()
