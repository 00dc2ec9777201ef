"""Learning-rate schedules: the published recipes' values, warm-up, LambdaLR with DistillOptimizer, configs."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch

import deepkd
from deepkd import config as cfg
from deepkd.errors import ConfigError
from deepkd.schedules import SCHEDULES, Constant, Cosine, Step, lr_lambda, lr_scheduler
from deepkd.trainer import TrainConfig


def _lr(schedule, base, epoch, epochs, steps_per_epoch=10, step_in_epoch=0):
    """The learning rate used during ``epoch`` (counted from 1) at a step inside it."""
    step = (epoch - 1) * steps_per_epoch + step_in_epoch
    return base * lr_lambda(schedule, steps_per_epoch, epochs)(step)


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(1, 0.05), (150, 0.05), (151, 0.005), (180, 0.005), (181, 0.0005), (210, 0.0005), (211, 0.00005), (240, 5e-5)],
)
def test_cifar_step_decay_matches_mdistiller(epoch, expected):
    # mdistiller: lr = 0.05 * 0.1 ** sum(epoch > [150, 180, 210]), epochs counted from 1
    schedule = Step(milestones=(150, 180, 210), gamma=0.1)
    for step_in_epoch in (0, 9):  # constant within an epoch
        assert _lr(schedule, 0.05, epoch, 240, step_in_epoch=step_in_epoch) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("epoch", "expected"), [(30, 0.2), (31, 0.02), (61, 0.002), (91, 0.0002), (100, 0.0002)])
def test_imagenet_step_decay(epoch, expected):
    assert _lr(Step(milestones=(30, 60, 90)), 0.2, epoch, 100) == pytest.approx(expected, rel=1e-12)


def test_cosine_matches_deepkd_official_per_epoch_formula():
    # DeepKD's adjust_learning_rate (LR_COS): epoch n from 1, warm-up 20 epochs from 0.1 * lr, min_lr 5e-5.
    lr, min_lr, warmup, epochs = 0.2, 5e-5, 20, 100

    def official(n):
        if n < warmup:
            return lr * 0.1 + (lr - lr * 0.1) * n / warmup
        progress = (n - warmup) / (epochs - warmup)
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))

    schedule = Cosine()  # defaults are this recipe
    factor = lr_lambda(schedule, steps_per_epoch=7, epochs=epochs)
    for n in range(0, epochs + 1):
        assert lr * factor(7 * n) == pytest.approx(official(n), rel=1e-12, abs=1e-15)


def test_cosine_warmup_is_linear_per_step_and_ends_at_the_minimum():
    schedule = Cosine(warmup=20, warmup_factor=0.1, min_factor=0.0)
    factor = lr_lambda(schedule, steps_per_epoch=4, epochs=100)
    assert factor(0) == pytest.approx(0.1)
    assert factor(2) == pytest.approx(0.1 + 0.9 * 0.5 / 20)  # half-way through epoch 1
    assert factor(40) == pytest.approx(0.55)  # epoch 10 of 20
    assert factor(80) == pytest.approx(1.0)
    assert factor(240) == pytest.approx(0.5)  # half-way through the cosine
    assert factor(400) == pytest.approx(0.0, abs=1e-15)
    values = [factor(s) for s in range(400)]
    assert values[:80] == sorted(values[:80]) and values[80:] == sorted(values[80:], reverse=True)


def test_step_warmup_then_decay():
    factor = lr_lambda(Step(milestones=(10,), warmup=5, warmup_factor=0.2), steps_per_epoch=1, epochs=20)
    assert [round(factor(s), 6) for s in (0, 1, 5, 9, 10)] == [0.2, 0.36, 1.0, 1.0, 0.1]


def test_lambdalr_drives_distill_optimizer_without_warnings():
    model = torch.nn.Linear(4, 3)
    opt = deepkd.DistillOptimizer(model.parameters(), deepkd.compose(loss="kd", momentum="dot", mask="none"), lr=0.05)
    sched = lr_scheduler(opt, Step(milestones=(2,)), steps_per_epoch=3, epochs=3)
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for _ in range(9):
            seen.append(opt.param_groups[0]["lr"])
            x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
            opt.distill_step(model(x), torch.randn(5, 3), y, epoch=1)
            sched.step()
    assert seen == pytest.approx([0.05] * 6 + [0.005] * 3)


def test_schedules_are_tagged_configs():
    train = cfg.loads('schedule = {name = "step", milestones = [150, 180, 210]}', TrainConfig)
    assert train.schedule == Step(milestones=(150, 180, 210))
    assert cfg.loads(cfg.dumps(train), TrainConfig) == train
    assert cfg.loads('schedule = "cosine"', TrainConfig).schedule == Cosine()
    assert set(SCHEDULES.names()) == {"constant", "cosine", "step"}
    assert Constant().factor(3.5, 10) == 1.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('schedule = {name = "cosin"}', "Did you mean 'cosine'?"),
        (
            'schedule = {name = "step", milestones = [180, 150]}',
            "strictly increasing, got [180, 150] @ $.schedule.milestones",
        ),
        ('schedule = {name = "step", milestone = [150]}', "unknown key 'milestone'"),
        ('schedule = {name = "cosine", warmup_factor = 2.0}', "@ $.schedule.warmup_factor"),
    ],
)
def test_bad_schedule_configs_are_rejected(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        cfg.loads(text, TrainConfig)


def test_refused_schedule_registration_leaves_the_class_untouched():
    """A schedule whose registration is refused (the name is taken) keeps the name it was registered under."""
    import attrs

    from deepkd.registry import name_of
    from deepkd.schedules import register_schedule

    @attrs.frozen(kw_only=True)
    class Mine:
        def factor(self, t: float, epochs: int) -> float:
            return 1.0

    register_schedule("mine")(Mine)
    try:
        with pytest.raises(ValueError, match="'step' is already registered"):
            register_schedule("step")(Mine)
        assert SCHEDULES.get("step") is Step and name_of(Mine) == "mine"
        assert vars(Mine).get("strategy_name", "mine") == "mine"  # and the class tag, while there is one
        assert cfg.unstructure(TrainConfig(schedule=Mine()))["schedule"] == {"name": "mine"}
        assert cfg.loads('schedule = "mine"', TrainConfig).schedule == Mine()  # registered after import
    finally:
        SCHEDULES.unregister("mine")
