"""The distillation optimizer in a training loop: schedulers, resume, masks, frozen parameters, teacher safety."""

from __future__ import annotations

import io
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
    opt = recipe.optimizer(student.parameters(), lr=kwargs.pop("lr", 0.1), weight_decay=5e-4, **kwargs)
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
    "deepkd": deepkd.compose(momentum=deepkd.GSNR(interval=3), mask=deepkd.DynamicMask(window=2)),
    "dot": deepkd.compose(loss="kd", momentum="dot", mask="none"),
    "quirks": deepkd.compose(loss="kd", momentum=deepkd.Fixed(reference_quirks=True), mask="static"),
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
            opt.distill_step(student(x), t, y)
            sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)


def test_lr_zero_freezes_parameters():
    student, opt = _setup(deepkd.compose(), lr=0.0)
    before = [p.detach().clone() for p in student.parameters()]
    for x, t, y in _batches(3):
        opt.distill_step(student(x), t, y)
    assert all(torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_frozen_parameters_are_untouched():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    student[0].weight.requires_grad_(False)
    frozen = student[0].weight.detach().clone()
    opt = deepkd.compose().optimizer(student.parameters(), lr=0.1, weight_decay=0.1)
    for x, t, y in _batches(3):
        opt.distill_step(student(x), t, y)
    assert torch.equal(student[0].weight, frozen)
    assert not torch.equal(student[2].weight, torch.zeros_like(student[2].weight))


def test_teacher_gets_no_gradient():
    teacher = torch.nn.Linear(8, 10)
    before = teacher.weight.detach().clone()
    student, opt = _setup(deepkd.compose())
    for x, _, y in _batches(3):
        opt.distill_step(student(x), teacher(x), y)  # teacher logits carrying a graph on purpose
    assert teacher.weight.grad is None
    assert torch.equal(teacher.weight, before)


def test_dynamic_mask_follows_training_accuracy():
    recipe = deepkd.compose(loss="kd", momentum="sgd", mask=deepkd.DynamicMask(window=1))
    opt = recipe.optimizer([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    y = torch.arange(10)
    teacher = torch.randn(10, 10)
    hits = {0.0: 0, 0.5: 5, 1.0: 10}
    seen = []
    for acc in (0.0, 0.5, 0.0, 1.0):
        logits = torch.nn.functional.one_hot((y + (torch.arange(10) >= hits[acc]).long()) % 10, 10).float()
        logits = logits + 0 * opt.param_groups[0]["params"][0]  # attach to a parameter
        out = opt.distill_step(logits, teacher, y)
        seen.append((out.k, out.phase))
    # window closes after each step: acc 0 → easy (K=1); 0.5 → transition; back to 0 → no decrease; 1.0 → hard
    assert seen[0] == (1, "easy")
    assert seen[1][1] == "transition" and seen[2] == seen[1]
    assert seen[3] == (9, "hard")


def test_epoch_window_closes_when_the_epoch_changes():
    recipe = deepkd.compose(loss="dkd", momentum="sgd", mask="dynamic")
    student, opt = _setup(recipe)
    for x, t, _ in _batches(3):
        with torch.no_grad():
            y = student(x).argmax(1)  # the student is right on every sample
        out = opt.distill_step(student(x), t, y, epoch=1)
        assert out.phase == "easy"
    x, t, _ = next(_batches(1, seed=9))
    out = opt.distill_step(student(x), t, student(x).argmax(1), epoch=2)
    assert out.phase == "hard" and out.k == 9
    assert float(opt.mask_state.accuracy) == pytest.approx(1.0, abs=0.05)


def test_static_mask_reaches_the_kd_loss():
    """The official code never applies the mask on its KD path; deepkd does."""
    x, t, y = next(_batches(1))
    outs = {}
    for mask in ("none", deepkd.StaticMask(k=1)):
        student, opt = _setup(deepkd.compose(loss="kd", momentum="sgd", mask=mask))
        outs[str(mask)] = opt.distill_step(student(x), t, y).parts["nckd"]
    a, b = outs.values()
    assert a != b


def test_step_output_reports_parts_momenta_and_gsnr():
    recipe = deepkd.compose(momentum=deepkd.GSNR(interval=2))
    student, opt = _setup(recipe)
    outs = [opt.distill_step(student(x), t, y) for x, t, y in _batches(4)]
    out = outs[-1]
    assert out.step == 4 and set(out.parts) == {"task", "tckd", "nckd"}
    assert out.loss == pytest.approx(sum(out.parts.values()), rel=1e-6)
    assert set(out.momenta) == {"task", "tckd", "nckd"}
    assert all(0.825 - 1e-9 <= m <= 0.975 + 1e-9 for m in out.momenta.values())
    assert out.gsnr is not None and out.gsnr["task"] > 0 and out.gsnr["tckd"] > 0
    assert math.isnan(out.gsnr["nckd"])  # K = 1 of 10 classes in the Easy phase: NCKD is zero and has no GSNR
    assert out.k == M.static_k(10, fraction=0.1) and out.phase == "easy"


def test_track_gsnr_for_strategies_that_do_not_use_it():
    student, opt = _setup(deepkd.compose(loss="kd", momentum="dot", mask="none"), track_gsnr=True)
    outs = [opt.distill_step(student(x), t, y) for x, t, y in _batches(3)]
    assert set(outs[-1].gsnr) == {"task", "tckd+nckd"}


def test_batched_decomposition_matches_sequential_in_the_optimizer():
    recipe = deepkd.compose(momentum="fixed", mask="static")
    results = []
    for mode in ("sequential", "batched"):
        student, opt = _setup(recipe, decomposition=mode)
        student.eval()  # batched backward needs no BatchNorm running-stat updates to match exactly
        for x, t, y in _batches(3):
            opt.distill_step(student(x), t, y)
        results.append([p.detach().clone() for p in student.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_ce_recipe_needs_no_teacher():
    student, opt = _setup(deepkd.compose(loss="ce", momentum="sgd", mask="none"))
    out = opt.distill_step(student(torch.randn(4, 8)), None, torch.tensor([0, 1, 2, 3]))
    assert set(out.parts) == {"task"}
