"""Experiments: one config file describing a whole run (recipe, training, data, models), and :func:`run`.

The config classes and their loading are :mod:`deepkd.experiment_config`'s (re-exported here); what ``deepkd train``
checks and sets before training is :mod:`deepkd.startup`'s.

A config file, e.g. ``baselines/configs/fashion_mnist/student_deepkd.toml``::

    run_dir = "runs/fashion_mnist/student_deepkd"
    seed = 0

    [recipe]
    loss = {name = "dkd", warmup = 1}
    momentum = "gsnr"
    mask = "dynamic"

    [train]
    epochs = 3
    lr = 0.05
    schedule = {name = "cosine", warmup = 0, min_factor = 0.0}

    [data]
    name = "fashion_mnist"
    batch_size = 128

    [student]
    name = "tiny_cnn"

    [teacher]
    name = "small_cnn"  # the model baselines/configs/fashion_mnist/teacher.toml trains
    checkpoint = "runs/fashion_mnist/teacher/student.pt"

Training a teacher is a run whose loss needs no teacher (``loss = "ce"``). Relative paths (``run_dir``, ``root``,
``checkpoint``) are relative to the working directory. A torchvision model can instead take torchvision's published
weights by name (``pretrained = "IMAGENET1K_V1"``), read from torchvision's download cache, never downloaded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import attrs
from torch import nn
from torch.utils.data import DataLoader

from deepkd import config as cfg
from deepkd.callbacks import Callback
from deepkd.checkpoint import check_state_dict, load_checkpoint, read_state_dict
from deepkd.data import IndexedDataset, Loader, device_loaders, get_dataset, make_loaders
from deepkd.distributed import rank, world_size
from deepkd.errors import CheckpointError, ConfigError
from deepkd.experiment_config import (
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    apply_overrides,
    load_experiment,
    parse_override,
)
from deepkd.launch import process_group
from deepkd.metrics import History, evaluate
from deepkd.models import build_model
from deepkd.models.legacy import upgrade_state_dict
from deepkd.models.torchvision_models import pretrained_state_dict
from deepkd.progress import note
from deepkd.startup import check_files, models_line, needed_teacher, with_threads
from deepkd.trainer import Trainer
from deepkd.utils import resolve_device, seed_everything

__all__ = [
    "DataConfig",
    "ExperimentConfig",
    "ModelConfig",
    "apply_overrides",
    "build_student",
    "check_files",
    "evaluate_checkpoint",
    "load_experiment",
    "load_weights",
    "parse_override",
    "run",
]

def load_weights(model: nn.Module, spec: ModelConfig, role: str = "model") -> nn.Module:
    """Load ``spec``'s weights (``checkpoint`` or ``pretrained``) into ``model`` (built from ``spec``), strictly,
    after mapping deepkd's earlier parameter names (:func:`deepkd.models.legacy.upgrade_state_dict`); ``role``
    (``"teacher"``, ``"student"``) names it in errors. Returns ``model``.

    Raises:
        ConfigError: ``spec`` has no weights.
        CheckpointError: the file is missing or unreadable, or its keys or shapes differ from the model's (the first
            few missing and unexpected keys and shape mismatches named).
    """
    if spec.pretrained is not None:
        weights = pretrained_state_dict(spec.name, spec.pretrained)
        what = f"{role} {spec.name!r}: torchvision's {spec.pretrained} weights"
    elif spec.checkpoint is not None:
        weights = read_state_dict(spec.checkpoint)
        what = f"{role} checkpoint {spec.checkpoint!r} (model {spec.name!r})"
    else:
        raise ConfigError(f"the {role} {spec.name!r} has no weights: set checkpoint or pretrained")
    _load_state_dict(model, spec.name, weights, what)
    return model


def _load_state_dict(model: nn.Module, name: str, weights: dict[str, Any], what: str) -> None:
    weights = upgrade_state_dict(name, weights, model)
    check_state_dict(model, weights, what=what)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:  # e.g. a tensor that cannot be copied into its parameter
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{what} does not fit this model: {' '.join(s.strip() for s in first[:3])}") from None


def build_student(spec: ModelConfig, num_classes: int) -> nn.Module:
    """The model of ``spec`` with ``num_classes`` outputs, initialised from ``spec.checkpoint`` or
    ``spec.pretrained`` when set."""
    model = build_model(spec.name, num_classes, **spec.kwargs)
    if spec.checkpoint is not None or spec.pretrained is not None:
        load_weights(model, spec, "student")
    return model


def _build_teacher(spec: ModelConfig | None, num_classes: int) -> nn.Module:
    spec = needed_teacher(spec)
    return load_weights(build_model(spec.name, num_classes, **spec.kwargs), spec, "teacher")


def _datasets(data: DataConfig) -> tuple[Any, Any, Any]:
    options = dict(data.options)
    if data.root is not None:
        options["root"] = data.root
    return get_dataset(data.name, **options)


def run(
    config: ExperimentConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    allow_changes: bool = False,
    callbacks: Sequence[Callback] = (),
    source: str | os.PathLike[str] | None = None,
) -> History:
    """Build data, models and the :class:`~deepkd.trainer.Trainer` of ``config`` and train; returns the history.

    ``resume=True`` continues ``config.run_dir/latest.pt`` when it exists, else starts fresh; settings that differ
    from the run's are refused unless ``allow_changes=True``; an existing run is otherwise refused unless
    ``overwrite=True``. ``source`` is the config file, for the hint of an error (the teacher config to run first).

    Before the data is read, the weights files the config names are checked (:func:`check_files`). Each step of the
    start-up is announced on stderr (``train.progress = false`` silences it), and torch's CPU threads are set as
    ``train.threads`` says or chosen for the machine (:func:`deepkd.utils.choose_threads`); a resumed run keeps the
    count it started with (its ``config.toml``), so that it continues bit for bit.

    Under ``torchrun`` (``WORLD_SIZE > 1``) it starts the process group (:func:`deepkd.launch.process_group`), gives
    each rank its shard of the training set (``data.batch_size`` per rank) and of the test set, trains, and destroys
    the group; every rank returns the same history. ``history.interrupted`` tells a run stopped by a signal.
    With ``data.on_device`` the loaders hold the data on ``train.device`` (:func:`deepkd.data.device_loaders`).
    """
    check_files(config, source)
    shown = config.train.progress
    with process_group(config.train.dist_timeout, config.train.device):
        train = with_threads(config.train, config.run_dir, resume=resume and not overwrite)
        config = attrs.evolve(config, train=train)
        seed_everything(config.seed, config.deterministic)  # the same seed on every rank: the same initial student
        started = time.monotonic()
        note(f"reading the {config.data.name} data set", shown)
        train_set, test_set, info = _datasets(config.data)
        note(f"{config.data.name}: {len(train_set):,} training and {len(test_set):,} test samples, "
             f"{info.num_classes} classes ({time.monotonic() - started:.1f}s)", shown)  # fmt: skip
        if config.train.cache_teacher:
            train_set = IndexedDataset(train_set)
        train_loader, test_loader = _loaders(config, train_set, test_set)
        student = build_student(config.student, info.num_classes)
        teacher = _build_teacher(config.teacher, info.num_classes) if config.recipe.loss.needs_teacher else None
        note(models_line(config, student, teacher), shown)
        trainer = Trainer(
            student,
            teacher,
            config.recipe,
            config.train,
            run_dir=config.run_dir,
            seed=config.seed,
            callbacks=callbacks,
            run_config=config,
        )
        return trainer.fit(
            train_loader, test_loader, resume=resume, overwrite=overwrite, allow_changes=allow_changes
        )


def _loaders(config: ExperimentConfig, train_set: Any, test_set: Any) -> tuple[Loader, Loader]:
    shared: dict[str, Any] = {
        "seed": config.seed,
        "drop_last": config.data.drop_last,
        "test_batch_size": config.data.test_batch_size,
        "rank": rank(),
        "world_size": world_size(),
    }
    if config.data.on_device:  # num_workers does not apply
        device = config.train.resolved_device()
        return device_loaders(train_set, test_set, config.data.batch_size, device=device, **shared)
    return make_loaders(train_set, test_set, config.data.batch_size, num_workers=config.data.num_workers, **shared)


def evaluate_checkpoint(
    path: str | os.PathLike[str] | None,
    *,
    config: ExperimentConfig | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    model: str = "student",
) -> dict[str, Any]:
    """Test loss, top-1 and top-5 of a model's weights on its config's test set.

    ``model`` (``"student"`` or ``"teacher"``) chooses which of the config's models to build. ``path`` is a
    ``latest.pt``/``best.pt`` (which carry their config, so ``config`` may be left out for their student) or, with
    ``config``, a weights file in any layout :func:`deepkd.checkpoint.read_state_dict` reads (``student.pt``, a
    CRD / mdistiller ``ckpt_epoch_240.pth``...); ``path=None`` evaluates the model's own ``checkpoint`` or
    ``pretrained`` weights from ``config``. Returns the metrics plus ``epoch`` (``None`` unless read from a training
    checkpoint's own config), ``samples``, ``model`` (the model's name) and ``role`` (``model``).

    Raises:
        ConfigError: no config, no such model in it, or no weights to evaluate.
        CheckpointError: the weights are missing, unreadable or do not fit the model.
    """
    if model not in ("student", "teacher"):
        raise ConfigError(f"model must be 'student' or 'teacher', got {model!r}")
    epoch, saved = None, None
    if config is None:
        if path is None:
            raise ConfigError("nothing to evaluate: give a checkpoint, or a config whose model has weights")
        if model != "student":
            raise ConfigError(
                f"a training checkpoint such as {str(path)!r} holds its student; to evaluate a teacher, pass the "
                "config (--config) and the teacher's weights file, or only the config to use [teacher]'s checkpoint "
                "or pretrained weights"
            )
        state = load_checkpoint(path)
        epoch, saved = state["epoch"], state["student"]
        try:
            config = cfg.structure(state["config"], ExperimentConfig)
        except ConfigError as exc:
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds no experiment config (was it written by a bare Trainer?); pass one "
                f"with --config: {exc.lines[0]}"
            ) from None
    spec = config.student if model == "student" else config.teacher
    if spec is None:
        raise ConfigError("the config has no [teacher] table to evaluate @ $.teacher")
    _, test_set, info = _datasets(config.data)
    net = build_model(spec.name, info.num_classes, **spec.kwargs)
    if path is None:
        if spec.checkpoint is None and spec.pretrained is None:
            raise ConfigError(
                f"nothing to evaluate: give a weights file, or set checkpoint or pretrained @ $.{model}.checkpoint"
            )
        load_weights(net, spec, model)
    else:
        weights = saved if saved is not None else read_state_dict(path)
        _load_state_dict(net, spec.name, weights, f"{str(path)!r} (as {model} {spec.name!r})")
    dev = resolve_device(device)
    loader = DataLoader(test_set, batch_size=batch_size or config.data.test_batch_size or config.data.batch_size)
    metrics = evaluate(net.to(dev), loader, device=dev, name="test set")
    return {**metrics, "epoch": epoch, "samples": len(test_set), "model": spec.name, "role": model}
