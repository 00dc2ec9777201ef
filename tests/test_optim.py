"""The distillation optimizer in a training loop: schedulers, resume, masks, frozen parameters, teacher safety."""

from __future__ import annotations

import io
import itertools
import math
import warnings

import pytest
import torch

import deepkd
from deepkd import masks as M


def _setup(recipe, seed=0, **kwargs):
    torch.manual_seed(seed)
    student = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 10)
    )
    opt = deepkd.DistillOptimizer(student.parameters(), recipe, lr=kwargs.pop("lr", 0.1), weight_decay=5e-4, **kwargs)
    return student, opt


def _batches(n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.nn.Linear(8, 10)
    for _ in range(n):
        x = torch.randn(16, 8, generator=gen)
        y = torch.randint(0, 10, (16,), generator=gen)
        with torch.no_grad():
            t = teacher(x) * 3
        yield x, t, y


RECIPES = {
    "deepkd": deepkd.compose(momentum=deepkd.GSNR(interval=3), mask=deepkd.DynamicMask(horizon=2)),
    "deepkd-split": deepkd.compose(momentum=deepkd.GSNR(interval=3, estimator="split"), mask="dynamic"),
    "dot": deepkd.compose(loss="kd", momentum="dot", mask="none"),
    "quirks": deepkd.compose(loss="kd", momentum=deepkd.FixedOffsets(reference_quirks=True), mask="static"),
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_resume_from_state_dict_is_bit_exact(name):
    recipe = RECIPES[name]
    data = list(_batches(10))
    student, opt = _setup(recipe)
    for i, (x, t, y) in enumerate(data):
        opt.distill_step(student(x), t, y, epoch=1 + i // 4)
    uninterrupted = [p.detach().clone() for p in student.parameters()]

    student, opt = _setup(recipe)
    for i, (x, t, y) in enumerate(data[:5]):
        opt.distill_step(student(x), t, y, epoch=1 + i // 4)
    buf = io.BytesIO()
    torch.save({"model": student.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    student, opt = _setup(recipe, seed=123)  # different init: everything must come from the checkpoint
    student.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    for i, (x, t, y) in enumerate(data[5:], start=5):
        opt.distill_step(student(x), t, y, epoch=1 + i // 4)
    for a, b in zip(uninterrupted, student.parameters()):
        assert torch.equal(a, b)


def test_lr_scheduler_drives_the_learning_rate():
    recipe = deepkd.compose(loss="kd", momentum="sgd", mask="none")
    student, opt = _setup(recipe, lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for x, t, y in _batches(4):
            opt.distill_step(student(x), t, y, epoch=1)
            sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)


def test_lr_zero_freezes_parameters():
    student, opt = _setup(deepkd.compose(), lr=0.0)
    before = [p.detach().clone() for p in student.parameters()]
    for x, t, y in _batches(3):
        opt.distill_step(student(x), t, y, epoch=1)
    assert all(torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_frozen_parameters_are_untouched():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    student[0].weight.requires_grad_(False)
    frozen = student[0].weight.detach().clone()
    opt = deepkd.DistillOptimizer(student.parameters(), deepkd.compose(), lr=0.1, weight_decay=0.1)
    for x, t, y in _batches(3):
        opt.distill_step(student(x), t, y, epoch=1)
    assert torch.equal(student[0].weight, frozen)
    assert not torch.equal(student[2].weight, torch.zeros_like(student[2].weight))


def test_teacher_gets_no_gradient():
    teacher = torch.nn.Linear(8, 10)
    before = teacher.weight.detach().clone()
    student, opt = _setup(deepkd.compose())
    for x, _, y in _batches(3):
        opt.distill_step(student(x), teacher(x), y, epoch=1)  # teacher logits carrying a graph on purpose
    assert teacher.weight.grad is None
    assert torch.equal(teacher.weight, before)


def test_dynamic_mask_follows_training_accuracy():
    recipe = deepkd.compose(loss="kd", momentum="sgd", mask=deepkd.DynamicMask(horizon=1))
    opt = deepkd.DistillOptimizer([torch.nn.Parameter(torch.zeros(1))], recipe, lr=0.0)
    y = torch.arange(10)
    teacher = torch.randn(10, 10)
    hits = {0.0: 0, 0.5: 5, 1.0: 10}
    seen = []
    for acc in (0.0, 0.5, 0.0, 1.0):
        logits = torch.nn.functional.one_hot((y + (torch.arange(10) >= hits[acc]).long()) % 10, 10).float()
        logits = logits + 0 * opt.param_groups[0]["params"][0]  # attach to a parameter
        out = opt.distill_step(logits, teacher, y, epoch=1)
        seen.append((out.k, out.phase))
    # horizon 1: K follows each step's accuracy: 0 → easy (K=1); 0.5 → transition; back to 0 → no decrease; 1 → hard
    assert seen[0] == (1, "easy")
    assert seen[1][1] == "transition" and seen[2] == seen[1]
    assert seen[3] == (9, "hard")


def test_dynamic_k_grows_smoothly_and_ignores_the_epoch():
    """K follows a moving average of the training accuracy over steps: no jump, whatever the epoch numbers say."""
    cfg = deepkd.DynamicMask(horizon=4)
    recipe = deepkd.compose(loss="kd", momentum="sgd", mask=cfg)
    student, opt = _setup(recipe)
    ks = [int(opt.recipe.mask.init(10).k)]
    for i, (x, t, _) in enumerate(_batches(20)):
        with torch.no_grad():
            y = student(x).argmax(1)  # the student is right on every sample
        ks.append(opt.distill_step(student(x), t, y, epoch=1 + 5 * i).k)  # epoch jumps change nothing
    steps = [b - a for a, b in itertools.pairwise(ks)]
    assert ks[-1] == 9 and min(steps) >= 0 and max(steps) <= M.max_k_step(10, cfg)
    assert max(steps) < 9 - ks[0]  # never from K_min to K_max in one step
    assert float(opt.mask_state.accuracy) == pytest.approx(1 - 0.75**20)


def test_an_epoch_dependent_loss_needs_the_epoch():
    student, opt = _setup(deepkd.compose(loss="dkd", momentum="sgd", mask="none"))
    x, t, y = next(_batches(1))
    with pytest.raises(deepkd.InputError, match="epoch="):
        opt.distill_step(student(x), t, y)
    assert opt.steps == 0  # nothing was applied
    for bad in (0, 1.5, True):
        with pytest.raises(deepkd.InputError, match="epoch must be an integer >= 1"):
            opt.distill_step(student(x), t, y, epoch=bad)
    no_warmup = deepkd.compose(loss=deepkd.DKD(warmup=0), momentum="sgd", mask="none")
    for recipe in (deepkd.compose(loss="kd", momentum="dot", mask="dynamic"), no_warmup):
        student, opt = _setup(recipe)
        assert opt.distill_step(student(x), t, y).step == 1  # KD and an un-warmed DKD do not depend on it


def test_static_mask_reaches_the_kd_loss():
    """The official code never applies the mask on its KD path; deepkd does."""
    x, t, y = next(_batches(1))
    outs = {}
    for mask in ("none", deepkd.StaticMask(k=1)):
        student, opt = _setup(deepkd.compose(loss="kd", momentum="sgd", mask=mask))
        outs[str(mask)] = opt.distill_step(student(x), t, y, epoch=1).parts["nckd"]
    a, b = outs.values()
    assert a != b


def test_step_output_reports_parts_momenta_and_gsnr():
    recipe = deepkd.compose(momentum=deepkd.GSNR(interval=2))
    student, opt = _setup(recipe)
    outs = [opt.distill_step(student(x), t, y, epoch=1) for x, t, y in _batches(4)]
    out = outs[-1]
    assert out.step == 4 and set(out.parts) == {"task", "tckd", "nckd"}
    assert out.loss == pytest.approx(sum(out.parts.values()), rel=1e-6)
    assert set(out.momenta) == {"task", "tckd", "nckd"}
    assert all(0.825 - 1e-9 <= m <= 0.975 + 1e-9 for m in out.momenta.values())
    assert out.gsnr is not None and all(out.gsnr[p] > 0 for p in ("task", "tckd", "nckd"))
    assert out.k == M.static_k(10, fraction=0.1) and out.phase == "easy"  # K = 1: NCKD is top-1 against the rest


@pytest.mark.parametrize("estimator", ["stream", "split"])
def test_a_component_without_gradient_keeps_mu(estimator):
    """Renormalised NCKD over a single kept class is identically zero: it has no GSNR and keeps μ."""
    gsnr = deepkd.GSNR(interval=2, estimator=estimator)
    recipe = deepkd.compose(momentum=gsnr, mask=deepkd.StaticMask(k=1, form="renormalize"))
    student, opt = _setup(recipe)
    gen = torch.Generator().manual_seed(1)
    teacher = torch.nn.Linear(8, 10)
    for _ in range(4):  # batches large enough, and labels learnable, for a signal above the noise
        x = torch.randn(256, 8, generator=gen)
        with torch.no_grad():
            t = teacher(x) * 3
        out = opt.distill_step(student(x), t, t.argmax(1), epoch=1)
    assert math.isnan(out.gsnr["nckd"]) and 1e-4 < out.gsnr["task"] < 1e4 and 1e-4 < out.gsnr["tckd"] < 1e4
    assert out.momenta["nckd"] == 0.9 and out.momenta["task"] != 0.9
    assert out.momenta["task"] - 0.9 == pytest.approx(0.9 - out.momenta["tckd"])  # tanh about the mean log-GSNR


def test_track_gsnr_for_strategies_that_do_not_use_it():
    student, opt = _setup(deepkd.compose(loss="kd", momentum="dot", mask="none"), track_gsnr=True)
    outs = [opt.distill_step(student(x), t, y, epoch=1) for x, t, y in _batches(3)]
    assert set(outs[-1].gsnr) == {"task", "tckd+nckd"}


def test_batched_decomposition_matches_sequential_in_the_optimizer():
    recipe = deepkd.compose(momentum="fixed", mask="static")
    results = []
    for mode in ("sequential", "batched"):
        student, opt = _setup(recipe, decomposition=mode)
        student.eval()  # batched backward needs no BatchNorm running-stat updates to match exactly
        for x, t, y in _batches(3):
            opt.distill_step(student(x), t, y, epoch=1)
        results.append([p.detach().clone() for p in student.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_ce_recipe_needs_no_teacher():
    student, opt = _setup(deepkd.compose(loss="ce", momentum="sgd", mask="none"))
    out = opt.distill_step(student(torch.randn(4, 8)), None, torch.tensor([0, 1, 2, 3]), epoch=1)
    assert set(out.parts) == {"task"}
