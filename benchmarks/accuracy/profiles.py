"""What each profile runs, and what every run shares: the models per data set, the training settings and the
students' learning-rate schedule.

A profile is plain data: ``datasets`` (name -> sizes: ``train``, ``test`` and optionally ``teacher_train``, each a
count or None for all), ``seeds``, ``epochs``, ``teacher_epochs``, ``methods`` (names from
:mod:`benchmarks.accuracy.methods`, or None for its ``METHODS``), and optionally ``schedule`` (``"cosine"``, the
default, or ``"step"``), ``val_share`` (a validation split carved from the training draw), ``workers`` (processes
for the runs) and ``cache_timing`` (time the teacher-logit cache; default True).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from benchmarks.accuracy.methods import LONG_CANDIDATES, LONG_METHODS
from deepkd.models import build_model
from deepkd.schedules import Cosine, Step
from deepkd.trainer import TrainConfig

BATCH = 128
LR = 0.1

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "datasets": {"digits": {"train": None, "test": None}},
        "seeds": 1,
        "epochs": 5,
        "teacher_epochs": 6,
        "methods": ["ce", "kd", "dkd", "dot", "deepkd_fixed", "deepkd_gsnr", "deepkd_official"],
    },
    "default": {
        "datasets": {
            "fashion_mnist": {"train": 20000, "test": 5000},
            "fashion_mnist_pairs": {"train": 20000, "test": 5000},
        },
        "seeds": 3,
        "epochs": 3,
        "teacher_epochs": 3,
        "methods": None,
    },
    "full": {
        "datasets": {
            "fashion_mnist": {"train": None, "test": None},
            "fashion_mnist_pairs": {"train": 30000, "test": None},
            "digits": {"train": None, "test": None},
        },
        "seeds": 5,
        "epochs": 10,
        "teacher_epochs": 10,
        "methods": None,
    },
    # At most 45 minutes for the whole `nox -s bench -- --profile long` on a 2-core CPU, sized for 16 methods (the 10
    # of LONG_METHODS and 6 candidates). Measured on a 2-core Xeon (`--seeds 1` of this profile at 3,500 images:
    # 2,975 training, 525 validation, 2,000 test), seconds a 24-epoch run on one thread, fashion_mnist / pairs: ce,
    # kd, dkd, default_no_gsnr 16-17 / 32-36; dot, deepkd_fixed 21-22 / 45-46; deepkd_official 27 / 54;
    # deepkd_default, default_no_mask, default_kd_loss and the candidates 28-31 / 57-61. Sum: 857 s a seed for 12
    # methods, + 86 s a seed for each further candidate; teachers, data and logits 174 s. At 4,000 images (3,400
    # training) runs cost ~11.5 % more: 3 seeds of 16 methods in 2 workers ~2,030 s, + setup ~180 s, speed ~50 s,
    # report ~20 s: ~38 min (12 methods: ~28 min). Each further candidate adds ~2.4 min.
    "long": {
        "datasets": {
            # "train" is drawn from the training split; val_share of it validates, the rest trains the students;
            # the teacher trains on "teacher_train" images of the same draw, none of them a validation image
            "fashion_mnist": {"train": 4000, "test": 2000, "teacher_train": 20000},
            "fashion_mnist_pairs": {"train": 4000, "test": 2000, "teacher_train": 20000},
        },
        "seeds": 3,
        "epochs": 24,
        "teacher_epochs": 3,
        "schedule": "step",  # CIFAR's 240-epoch step schedule, scaled: x0.1 after epochs 15, 18 and 21 of 24
        "val_share": 0.15,
        "workers": 2,  # two processes of one torch thread each: ~1.2x the throughput of one process of two threads
        "cache_timing": False,  # the teacher-logit cache's speed-up is measured by the default profile
        "methods": [*LONG_METHODS, *LONG_CANDIDATES],
    },
}

# teacher and student per data set: the student is 5-20x smaller than the teacher
MODELS: dict[str, dict[str, Any]] = {
    "digits": {"teacher": ("mlp", {"hidden": (256, 256)}), "student": ("mlp", {"hidden": (16,)})},
    "fashion_mnist": {"teacher": ("small_cnn", {}), "student": ("tiny_cnn", {"width": 8})},
    "fashion_mnist_pairs": {"teacher": ("small_cnn", {}), "student": ("tiny_cnn", {"width": 8})},
}


def model(dataset: str, role: str, classes: int, example: torch.Tensor) -> torch.nn.Module:
    """A new (randomly initialised) ``role`` model, ``"teacher"`` or ``"student"``, of ``dataset``, sized for inputs
    like ``example`` (a batch)."""
    name, kwargs = MODELS[dataset][role]
    kwargs = dict(kwargs)
    if name == "mlp":
        kwargs["in_features"] = int(example[0].numel())
    else:
        kwargs["in_channels"] = int(example.shape[1])
    return build_model(name, classes, **kwargs)


def train_config(epochs: int, cache: bool, schedule: Any = None) -> TrainConfig:
    """The training settings of every teacher and student (SGD, lr :data:`LR`, momentum 0.9, weight decay 5e-4, on
    the CPU); ``schedule`` defaults to a cosine to zero."""
    return TrainConfig(
        epochs=epochs,
        lr=LR,
        momentum=0.9,
        weight_decay=5e-4,
        schedule=schedule if schedule is not None else Cosine(warmup=0.0, min_factor=0.0),
        cache_teacher=cache,
        progress=False,
        device="cpu",
        track_gsnr=False,
    )


def step_schedule(epochs: int) -> Step:
    """CIFAR's step schedule (x0.1 after epochs 150, 180 and 210 of 240) scaled to ``epochs``: milestones at 62.5,
    75 and 87.5 % of the run, rounded to whole epochs (24 epochs: 15, 18, 21)."""
    milestones = sorted({min(max(1, round(epochs * m / 240)), epochs) for m in (150, 180, 210)})
    # mypy's attrs plugin cannot type Step's ``converter=tuple``
    return Step(milestones=tuple(milestones), gamma=0.1)  # type: ignore[arg-type]


def schedule_for(profile: Mapping[str, Any]) -> Any:
    """The students' learning-rate schedule: ``"cosine"`` (to zero, no warm-up; the default) or ``"step"``."""
    kind = profile.get("schedule", "cosine")
    if kind == "step":
        return step_schedule(profile["epochs"])
    if kind == "cosine":
        return Cosine(warmup=0.0, min_factor=0.0)
    raise ValueError(f"unknown schedule {kind!r} (cosine or step)")


def schedule_text(schedule: Any, epochs: int) -> str:
    """The schedule in words, for the report."""
    if isinstance(schedule, Step):
        drops = ", ".join(str(m) for m in schedule.milestones if m < epochs)
        return f"lr {LR}, x{schedule.gamma:g} after epochs {drops} of {epochs} (step)"
    return f"lr {LR}, cosine to 0"
