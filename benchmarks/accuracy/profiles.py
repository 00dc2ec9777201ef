"""What each profile runs, and what every run shares: the models per data set, the training settings and the
students' learning-rate schedule.

A profile is plain data: ``datasets`` (name -> sizes: ``train``, ``test``, and optionally ``val`` (a count held out
of the whole training split) and ``teacher_train`` (a count, or ``"all"``: every training image that does not
validate); a count or None for all), ``seeds``, ``epochs``, ``teacher_epochs``, ``methods`` (names from
:mod:`benchmarks.accuracy.methods`, or None for its ``METHODS``), and optionally ``teacher_lr``, ``schedule``
(``"cosine"``, the default, or ``"step"``), ``val_share`` (a validation split carved from the students' draw, when
``val`` is not given), ``lr`` (None: every method at :data:`LR`; ``"grid"``: each method's rate chosen on validation
from :data:`LR_GRID`; ``"chosen"``: the rates the committed long report chose), ``evaluate`` (``"epoch"``, the
default, or ``"final"``), ``workers`` (processes for the runs) and ``cache_timing`` (time the teacher-logit cache;
default True).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from benchmarks.accuracy.methods import LONG_METHODS
from deepkd.models import build_model
from deepkd.schedules import Cosine, Step
from deepkd.trainer import TrainConfig

BATCH = 128
LR = 0.1

# The learning rates a profile with ``"lr": "grid"`` tries for each method, seed 0, on validation. The baselines'
# validation figures in a pilot never chose 0.025 and CE on the pairs still gained at 0.4, hence 0.05-0.8.
LR_GRID = (0.05, 0.1, 0.2, 0.4, 0.8)

ROOT = Path(__file__).resolve().parents[2]
# the committed report of the long profile: README's and docs/benchmarks.md's tables come from it, and the default
# profile (``"lr": "chosen"``) runs each method at the learning rate it chose
LONG_REPORT = ROOT / "docs" / "bench-report-long.json"

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "datasets": {"digits": {"train": None, "test": None}},
        "seeds": 1,
        "epochs": 5,
        "teacher_epochs": 6,
        "methods": ["ce", "kd", "dkd", "dot", "deepkd_fixed", "deepkd_gsnr", "deepkd_official"],
    },
    # A miniature of the long profile (same converged teachers, validation split and methods; half the students'
    # images, half the epochs, 3 seeds), each method at the learning rate the long profile chose for it on validation.
    "default": {
        "datasets": {
            "fashion_mnist": {"train": 1700, "val": 2000, "test": 5000, "teacher_train": "all"},
            "fashion_mnist_pairs": {"train": 1700, "val": 2000, "test": 5000, "teacher_train": "all"},
        },
        "seeds": 3,
        "epochs": 12,
        "teacher_epochs": 10,
        "teacher_lr": 0.05,
        "schedule": "step",
        "workers": 2,
        "evaluate": "final",
        "lr": "chosen",
        "methods": LONG_METHODS,
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
    # The distillation regime (issue: a benchmark that ranks the baselines as the literature does). Teachers
    # (small_cnn, 66-72k parameters) train 10 epochs (lr 0.05, cosine) on the whole training split less 2,000
    # validation images, and ship with the repository (benchmarks/teachers/); students (tiny_cnn width 8, 4-5k
    # parameters, ~14x smaller) train 24 epochs on 3,400 of the rest with CIFAR's step schedule, scaled. Each method's
    # learning rate is chosen on the final validation top-1 of seed 0 from LR_GRID, and seeds 0-4 at that rate give
    # the test figures. Sizes and epochs were chosen on the baselines' (CE, KD, DKD, DOT) validation figures only
    # (docs/benchmarks.md). Measured on a 2-core Xeon, one thread a run: 15-35 s a run on fashion_mnist and twice
    # that on the pairs; 110 selection and 88 further runs in 2 workers: 51 minutes in all (docs/bench-report-long.md).
    "long": {
        "datasets": {
            "fashion_mnist": {"train": 3400, "val": 2000, "test": None, "teacher_train": "all"},
            "fashion_mnist_pairs": {"train": 3400, "val": 2000, "test": None, "teacher_train": "all"},
        },
        "seeds": 5,
        "epochs": 24,
        "teacher_epochs": 10,
        "teacher_lr": 0.05,
        "schedule": "step",  # CIFAR's 240-epoch step schedule, scaled: x0.1 after epochs 15, 18 and 21 of 24
        "workers": 2,  # two processes of one torch thread each: ~1.2x the throughput of one process of two threads
        "cache_timing": False,  # the teacher-logit cache's speed-up is measured by the full profile
        "evaluate": "final",  # test and validation top-1 after the last epoch only (per-epoch curves cost ~40 %)
        "lr": "grid",
        "methods": LONG_METHODS,
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


def train_config(epochs: int, cache: bool, schedule: Any = None, lr: float = LR, device: str = "cpu") -> TrainConfig:
    """The training settings of every teacher and student (SGD at ``lr``, momentum 0.9, weight decay 5e-4, on
    ``device``); ``schedule`` defaults to a cosine to zero."""
    return TrainConfig(
        epochs=epochs,
        lr=lr,
        momentum=0.9,
        weight_decay=5e-4,
        schedule=schedule if schedule is not None else Cosine(warmup=0.0, min_factor=0.0),
        cache_teacher=cache,
        progress=False,
        device=device,
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
