"""Every preset trains: a short run of each ``baselines.presets.METHODS`` recipe against a CE-only baseline.

A collapse (a preset whose student ends far below what cross-entropy alone reaches with the same student, seed and
steps, as the "paper intent" DeepKD preset once fell to 12 % on 100 classes) must fail here rather than only in the
benchmark. The test is parametrised over ``presets.METHODS``, so a new preset is covered without editing this file.

Setup (everything seeded; about 1-2 s per preset on a 2-core CPU):

- Data: scikit-learn's 8x8 digits (10 classes) with deepkd's fixed stratified 75/25 split (1347 / 450 images).
- Teacher: ``small_cnn`` (width 16), trained once per module with cross-entropy (plain ``torch.optim.SGD``), in eval
  mode; its logits on the training set are computed once (there is no augmentation, so they never change).
- Student: ``tiny_cnn`` (width 8, about a fifth of the teacher's parameters), the same initial weights and the same
  batch order for every preset and for the baseline.
- Loop: ``DistillOptimizer.distill_step(student_logits, teacher_logits, target, epoch=e)``, 10 epochs of batch 64,
  SGD momentum 0.9, weight decay 5e-4, lr 0.05 (the published CIFAR-100 lr these recipes come with) decayed to 0 by a
  per-step cosine. The CE-only baseline is the same loop with ``torch.optim.SGD`` and ``F.cross_entropy``.

What is changed in the presets, and why (nothing else is touched):

- ``presets.cifar100(method)`` gives the CIFAR-100 recipes (resnet32x4 -> resnet8x4, 240 epochs of 782 steps).
  Settings counted in epochs or steps are scaled to the same share of this run: DKD's warm-up of 20 of 240 epochs
  becomes ``max(1, round(10 * 20 / 240))`` = 1 epoch (with warm(e) = min(e / W, 1) and e counted from 1, that is no
  warm-up at all: harsher than the recipe, never gentler), and GSNR's re-estimation every 200 of an epoch's 782
  steps becomes every ``round(22 * 200 / 782)`` = 6 steps (unscaled, the first estimate would come at step 200 of
  220 and the GSNR momentum would go untested). The dynamic mask's accuracy horizon (in steps) is kept: it then
  averages over the same number of samples as on CIFAR-100.
- lr 0.05 rather than the benchmark's 0.1: at 0.1 the published DKD recipe itself (β 8, T 4, no room for a
  warm-up in a 10-epoch run) ends 7 pp below CE here (7-12 pp over other student seeds), so the test would flag
  DKD's known sensitivity to the step size instead of a method's collapse. With 0.05 every preset ended within 5 pp
  of CE over six student seeds (worst: the DKD-based DeepKD preset -4.7 pp, dkd -4.0 pp; within 2.2 pp for the seed
  used here), and a collapse shows as tens of points.

The margin (5 pp below the CE baseline's final test top-1) is a collapse detector, not a ranking: distillation
does not beat CE on a 10-class set where the student nearly matches the teacher. It is a floor for every preset,
not a substitute for the 100-class benchmark: the renormalised top-K mask's collapse on 100 classes does not occur
on 10 (the "paper intent" ``deepkd_paper`` preset reached 98 % here with the code that fell to 12 % on 100 classes).
"""

from __future__ import annotations

import math

import attrs
import pytest
import torch
import torch.nn.functional as F

import deepkd
from baselines import presets
from deepkd.data import digits
from deepkd.models import build_model

EPOCHS = 10
BATCH = 64
LR = 0.05
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
MARGIN = 0.05  # a preset may end at most 5 pp below the CE-only baseline
# the length of the published CIFAR-100 runs these recipes come with: 240 epochs of ceil(50000 / 64) steps
CIFAR_EPOCHS, CIFAR_STEPS_PER_EPOCH = 240, 782


@attrs.frozen
class Setup:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    teacher_logits: torch.Tensor  # on the training set, in eval mode
    teacher_top1: float

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.y_train) / BATCH)


def _batches(n: int, epoch: int) -> list[torch.Tensor]:
    """The same shuffled batches for every preset (seeded by the epoch)."""
    return list(torch.randperm(n, generator=torch.Generator().manual_seed(1000 + epoch)).split(BATCH))


def _top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        hits = (model(x).argmax(dim=1) == y).float().mean().item()
    model.train(was_training)
    return hits


def _model(name: str, width: int, seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the global generator
        torch.manual_seed(seed)
        return build_model(name, 10, in_channels=1, width=width)


def _cosine(opt: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, total_steps)


def _student() -> torch.nn.Module:
    return _model("tiny_cnn", width=8, seed=0)


@pytest.fixture(scope="module")
def setup() -> Setup:
    train, test = digits(train=True, seed=0), digits(train=False, seed=0)
    x, y = train.inputs, train.targets
    teacher = _model("small_cnn", width=16, seed=0)
    opt = torch.optim.SGD(teacher.parameters(), lr=0.1, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    epochs = 8
    sched = _cosine(opt, epochs * math.ceil(len(y) / BATCH))
    for epoch in range(epochs):
        for idx in _batches(len(y), epoch):
            opt.zero_grad()
            F.cross_entropy(teacher(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    teacher.eval()
    with torch.no_grad():
        logits = teacher(x)
    return Setup(x, y, test.inputs, test.targets, logits, _top1(teacher, test.inputs, test.targets))


@pytest.fixture(scope="module")
def ce_baseline(setup: Setup) -> list[float]:
    """Test top-1 after each epoch of the same student trained with cross-entropy and torch.optim.SGD."""
    student = _student()
    opt = torch.optim.SGD(student.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    sched = _cosine(opt, EPOCHS * setup.steps_per_epoch)
    curve = []
    for epoch in range(EPOCHS):
        for idx in _batches(len(setup.y_train), epoch):
            opt.zero_grad()
            F.cross_entropy(student(setup.x_train[idx]), setup.y_train[idx]).backward()
            opt.step()
            sched.step()
        curve.append(_top1(student, setup.x_test, setup.y_test))
    return curve


def short_run(recipe: deepkd.Recipe, epochs: int, steps_per_epoch: int) -> deepkd.Recipe:
    """``recipe`` with its epoch- and step-counted settings scaled from the CIFAR-100 run to this one."""
    changes = {}
    if isinstance(recipe.loss, deepkd.DKD):
        warmup = max(1, round(epochs * recipe.loss.warmup / CIFAR_EPOCHS))
        changes["loss"] = attrs.evolve(recipe.loss, warmup=warmup)
    if isinstance(recipe.momentum, deepkd.GSNR):
        interval = max(1, round(steps_per_epoch * recipe.momentum.interval / CIFAR_STEPS_PER_EPOCH))
        changes["momentum"] = attrs.evolve(recipe.momentum, interval=interval)
    return recipe.replace(**changes)


def test_setup_is_meaningful(setup, ce_baseline):
    """The teacher is good and the CE student learns, so "within 5 pp of CE" is a real bar."""
    assert setup.teacher_top1 >= 0.95
    assert ce_baseline[-1] >= 0.9


# A known weakness, recorded rather than hidden: the official code's DKD-based DeepKD (resnet32x4 -> resnet8x4: DKD
# β 8 under the official update order, NCKD buffer at μ + 0.05) ends 23 pp below CE here (74.7 % against 98.2 %;
# 58-80 % over three student seeds). This short run has no room for DKD's warm-up; the same deltas without the
# official update order reached 80-85 %, the official order with zero deltas 93-95 %, and β 2 94-97 %. The preset
# follows the official file, so the test keeps it as an expected failure: strict, so it is reported once it passes.
KNOWN_BELOW_CE = {"deepkd_dkd_official"}


@pytest.mark.parametrize(
    "method",
    [
        pytest.param(m, marks=pytest.mark.xfail(raises=AssertionError, strict=True, reason="see KNOWN_BELOW_CE"))
        if m in KNOWN_BELOW_CE
        else m
        for m in presets.METHODS
    ],
)
def test_preset_short_run_is_not_below_ce(method, setup, ce_baseline):
    recipe = short_run(presets.cifar100(method), EPOCHS, setup.steps_per_epoch)
    student = _student()
    opt = deepkd.DistillOptimizer(student.parameters(), recipe, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    sched = _cosine(opt, EPOCHS * setup.steps_per_epoch)
    curve = []
    for epoch in range(1, EPOCHS + 1):
        for idx in _batches(len(setup.y_train), epoch - 1):
            teacher = setup.teacher_logits[idx] if recipe.loss.needs_teacher else None
            out = opt.distill_step(student(setup.x_train[idx]), teacher, setup.y_train[idx], epoch=epoch)
            assert not out.skipped
            assert math.isfinite(out.loss) and all(math.isfinite(v) for v in out.parts.values()), out.parts
            sched.step()
        curve.append(_top1(student, setup.x_test, setup.y_test))
    assert all(torch.isfinite(p).all() for p in student.parameters())
    final, baseline = curve[-1], ce_baseline[-1]
    assert final >= baseline - MARGIN, (
        f"{method}: final test top-1 {final:.1%} is more than {MARGIN:.0%} below CE only ({baseline:.1%}); "
        f"per epoch {[round(a, 3) for a in curve]}, CE {[round(a, 3) for a in ce_baseline]}, recipe:\n{recipe}"
    )
