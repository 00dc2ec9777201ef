"""deepkd: knowledge distillation of image classifiers, with the DeepKD trainer as its flagship.

DeepKD (arXiv 2505.15133) decouples the student's gradient into task, target-class and non-target-class components,
gives each its own GSNR-driven momentum, and masks low-confidence non-target classes with a dynamic top-K schedule.
KD, DKD, DOT, DeepKD and their mixes are recipes: ``deepkd.compose(loss=..., momentum=..., mask=...)``.
"""

from deepkd import losses
from deepkd._version import __version__
from deepkd.compose import build, compose
from deepkd.config import dump, load
from deepkd.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DeepKDError,
    InputError,
    NonFiniteLossError,
    UnknownStrategyError,
)
from deepkd.losses import CE, DKD, KD
from deepkd.masks import DynamicMask, NoMask, StaticMask
from deepkd.momentum import DOT, GSNR, FixedOffsets, PlainMomentum
from deepkd.optim import DistillOptimizer, StepOutput
from deepkd.recipe import Recipe
from deepkd.registry import LOSSES, MASKS, MOMENTA, register_loss, register_mask, register_momentum

# The training loop pulls in the model zoo and data sets (and so torchvision); it loads on first use.
_LAZY = {
    "Trainer": "deepkd.trainer",
    "TrainConfig": "deepkd.train_config",
    "History": "deepkd.metrics",
    "Callback": "deepkd.callbacks",
    "LambdaCallback": "deepkd.callbacks",
    "ExperimentConfig": "deepkd.experiment",
    "DataConfig": "deepkd.experiment",
    "ModelConfig": "deepkd.experiment",
    "run": "deepkd.experiment",
    "load_experiment": "deepkd.experiment",
    "seed_everything": "deepkd.utils",
    "is_main_process": "deepkd.distributed",
    "SCHEDULES": "deepkd.schedules",
    "register_schedule": "deepkd.schedules",
    "schedules": None,
    "models": None,
    "data": None,
    "presets": None,
}


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'deepkd' has no attribute {name!r}")
    import importlib

    module = _LAZY[name]
    value = (
        importlib.import_module(f"deepkd.{name}") if module is None else getattr(importlib.import_module(module), name)
    )
    globals()[name] = value
    return value


__all__ = [
    "CE",
    "SCHEDULES",
    "Callback",
    "DataConfig",
    "ExperimentConfig",
    "History",
    "LambdaCallback",
    "ModelConfig",
    "TrainConfig",
    "Trainer",
    "data",
    "is_main_process",
    "load_experiment",
    "models",
    "presets",
    "register_schedule",
    "run",
    "schedules",
    "seed_everything",
    "DKD",
    "DOT",
    "GSNR",
    "KD",
    "LOSSES",
    "MASKS",
    "MOMENTA",
    "PlainMomentum",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DeepKDError",
    "DistillOptimizer",
    "DynamicMask",
    "FixedOffsets",
    "InputError",
    "NoMask",
    "NonFiniteLossError",
    "Recipe",
    "StaticMask",
    "StepOutput",
    "UnknownStrategyError",
    "__version__",
    "build",
    "compose",
    "dump",
    "load",
    "losses",
    "register_loss",
    "register_mask",
    "register_momentum",
]
