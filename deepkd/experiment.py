"""Experiments: one config file describing a whole run (recipe, training, data, models), and :func:`run`.

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
    name = "small_resnet"
    checkpoint = "runs/fashion_mnist/teacher/student.pt"

Training a teacher is a run whose loss needs no teacher (``loss = "ce"``). Relative paths (``run_dir``, ``root``,
``checkpoint``) are relative to the working directory. A torchvision model can instead take torchvision's published
weights by name (``pretrained = "IMAGENET1K_V1"``), read from torchvision's download cache, never downloaded.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from attrs import validators as v
from torch import nn
from torch.utils.data import DataLoader

from deepkd import config as cfg
from deepkd.callbacks import Callback
from deepkd.checkpoint import check_state_dict, load_checkpoint, read_state_dict
from deepkd.data import IndexedDataset, Loader, device_loaders, get_dataset, make_loaders
from deepkd.distributed import rank, world_size
from deepkd.errors import CheckpointError, ConfigError
from deepkd.launch import process_group
from deepkd.metrics import History, evaluate
from deepkd.models import build_model, count_parameters
from deepkd.models.legacy import upgrade_state_dict
from deepkd.models.torchvision_models import check_pretrained, pretrained_state_dict
from deepkd.progress import note
from deepkd.recipe import Recipe
from deepkd.startup import with_threads
from deepkd.train_config import TrainConfig
from deepkd.trainer import Trainer
from deepkd.utils import resolve_device, seed_everything
from deepkd.validators import integer

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

_positive_int = integer(ge=1)


@attrs.frozen(kw_only=True)
class DataConfig:
    """Which data set (:func:`deepkd.data.get_dataset`) and how to load it.

    ``options`` go to the data set's builder (e.g. ``{num_samples = 512}`` for ``synthetic``); ``root`` too, when set.
    ``on_device = true`` holds both sets on the training device and augments there
    (:func:`deepkd.data.device_loaders`: CIFAR-10/100, Fashion-MNIST and in-memory tensor sets); ``num_workers``
    then does not apply and is ignored (no worker processes run).
    """

    name: str = attrs.field(validator=v.instance_of(str))
    root: str | None = attrs.field(default=None, validator=v.optional(v.instance_of(str)))
    batch_size: int = attrs.field(default=64, validator=_positive_int)
    test_batch_size: int | None = attrs.field(default=None, validator=v.optional(_positive_int))
    num_workers: int = attrs.field(default=0, validator=integer(ge=0))
    drop_last: bool = attrs.field(default=False, validator=v.instance_of(bool))
    on_device: bool = attrs.field(default=False, validator=v.instance_of(bool))
    options: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class ModelConfig:
    """A registered model (:func:`deepkd.models.build_model`) with builder ``kwargs`` and optional weights.

    ``checkpoint`` is a weights file in any common layout (:func:`deepkd.checkpoint.read_state_dict`): a
    ``student.pt``, ``best.pt`` or ``latest.pt`` of an earlier run, a plain state_dict, a CRD / mdistiller
    ``ckpt_epoch_240.pth`` (``{"model": ...}``), ``{"state_dict": ...}``, ``{"net": ...}``, with or without
    DataParallel's ``module.`` prefix. ``pretrained`` names torchvision's published weights of a torchvision model
    (``"IMAGENET1K_V1"``), read from torchvision's cache (:func:`deepkd.models.torchvision_models.pretrained_path`).
    A teacher needs one of the two, a student uses it as its initialisation; they are exclusive.
    """

    name: str = attrs.field(validator=v.instance_of(str))
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    checkpoint: str | None = attrs.field(default=None, validator=v.optional(v.instance_of(str)))
    pretrained: str | None = attrs.field(default=None, validator=v.optional(v.instance_of(str)))

    def __attrs_post_init__(self) -> None:
        if self.pretrained is None:
            return
        if self.checkpoint is not None:
            raise ConfigError(
                f"set checkpoint or pretrained, not both (checkpoint = {self.checkpoint!r}, pretrained = "
                f"{self.pretrained!r}) @ $.pretrained"
            )
        try:
            check_pretrained(self.name, self.pretrained)
        except ConfigError as exc:
            raise ConfigError([f"{line} @ $.pretrained" for line in exc.lines]) from None


@attrs.frozen(kw_only=True)
class ExperimentConfig:
    """A whole run: recipe, training, data, student, teacher, run directory and seed.

    ``deterministic`` asks torch for deterministic kernels (:func:`deepkd.utils.seed_everything`).
    """

    recipe: Recipe = attrs.field(factory=Recipe)
    train: TrainConfig = attrs.field(factory=TrainConfig)
    data: DataConfig
    student: ModelConfig
    teacher: ModelConfig | None = None
    run_dir: str = attrs.field(default="runs/deepkd", validator=v.instance_of(str))
    seed: int = attrs.field(default=0, validator=integer(ge=0, lt=2**63))
    deterministic: bool = attrs.field(default=False, validator=v.instance_of(bool))

    def __attrs_post_init__(self) -> None:  # settings of several tables, checked together when the file is loaded
        self.train.check_recipe(self.recipe)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=3"`` -> ``(["train", "epochs"], 3)``; the value is read as a TOML literal, else a string."""
    key, sep, raw = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ConfigError(f"override {text!r} must look like key=value, e.g. train.epochs=3 or data.name=digits")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return path, value


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of plain config data with dotted ``key=value`` overrides applied.

    A strategy given by name (``momentum = "gsnr"``) becomes a table (``{name = "gsnr"}``) when an override sets one
    of its fields, so ``recipe.momentum.delta=0.05`` works either way.
    """
    out = copy.deepcopy(dict(data))
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, key in enumerate(path[:-1]):
            child = node.get(key)
            if isinstance(child, str):
                child = {"name": child}
            elif child is None:
                child = {}
            elif not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"cannot set {'.'.join(path)}: {where} is {child!r}, not a table @ $.{where}")
            node[key] = child
            node = child
        node[path[-1]] = value
    return out


def load_experiment(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read a ``.toml`` (or ``.json``) experiment config, apply dotted overrides, and validate it strictly.

    Raises:
        ConfigError: unreadable file, malformed override, unknown keys (with the valid ones listed), bad values.
    """
    overrides = list(overrides)
    return cfg.load(Path(path), ExperimentConfig, transform=lambda data: apply_overrides(data, overrides))


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
    if spec is None:
        raise ConfigError("this recipe's loss distils from a teacher: add a [teacher] table @ $.teacher")
    if spec.checkpoint is None and spec.pretrained is None:
        raise ConfigError(
            f"the teacher {spec.name!r} needs trained weights: set checkpoint to an earlier run's student.pt (or any "
            "weights file), or pretrained to torchvision's weights of a torchvision model @ $.teacher.checkpoint"
        )
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


def models_line(config: ExperimentConfig, student: nn.Module, teacher: nn.Module | None) -> str:
    """The start-up line that names the models and where the teacher's weights come from."""
    line = f"student {config.student.name} ({count_parameters(student):,} parameters)"
    if teacher is not None and config.teacher is not None:
        weights = config.teacher.checkpoint or f"torchvision's {config.teacher.pretrained}"
        line += f", teacher {config.teacher.name} ({count_parameters(teacher):,} parameters) from {weights}"
    return line


def check_files(config: ExperimentConfig, source: str | os.PathLike[str] | None = None) -> None:
    """Raise :class:`ConfigError` when a weights file the config names does not exist, before any data is read: the
    message says whose file it is, where relative paths start, and for a teacher, how to train it (the config in
    ``source``'s folder whose run writes it, when there is one)."""
    roles = [("student", config.student)]
    if config.recipe.loss.needs_teacher and config.teacher is not None:
        roles.append(("teacher", config.teacher))
    for role, spec in roles:
        if spec.checkpoint is None or Path(spec.checkpoint).expanduser().is_file():
            continue
        message = (
            f"the {role}'s checkpoint {spec.checkpoint!r} does not exist (relative paths start in the working "
            f"directory, {os.getcwd()})"
        )
        if role == "teacher":
            maker = _run_that_writes(Path(spec.checkpoint), source)
            message += (
                f"; train the teacher first: deepkd train {maker}"
                if maker is not None
                else "; train the teacher first (a run whose loss needs no teacher, e.g. loss = \"ce\"; its run_dir "
                "then holds student.pt), or point checkpoint at its weights"
            )
        raise ConfigError(f"{message} @ $.{role}.checkpoint")


def _run_that_writes(checkpoint: Path, source: str | os.PathLike[str] | None) -> str | None:
    """The config file beside ``source`` whose ``run_dir`` is ``checkpoint``'s folder, if any."""
    if source is None:
        return None
    for candidate in sorted(Path(source).parent.glob("*.toml")):
        with contextlib.suppress(OSError, tomllib.TOMLDecodeError):
            run_dir = tomllib.loads(candidate.read_text()).get("run_dir")
            if isinstance(run_dir, str) and Path(run_dir).resolve() == checkpoint.parent.resolve():
                return str(candidate)
    return None


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
