"""An experiment config: one file describing a whole run (recipe, training, data, models), read strictly.

:func:`load_experiment` reads a ``.toml`` or ``.json`` file, applies ``key=value`` overrides and checks everything
at once, each problem one ``message @ $.path`` line: unknown keys and names, bad values, a data set's options and a
model's arguments against their builders, and the settings that only make sense together (``train.momentum``
against the momentum strategy's offsets). :mod:`deepkd.experiment` runs such a config and re-exports these names.
"""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
from attrs import validators as v

from deepkd import config as cfg
from deepkd.data.catalog import check_options
from deepkd.errors import ConfigError, UnknownStrategyError
from deepkd.models import check_arguments
from deepkd.models.torchvision_models import check_pretrained
from deepkd.recipe import Recipe
from deepkd.train_config import TrainConfig
from deepkd.validators import integer

__all__ = ["DataConfig", "ExperimentConfig", "ModelConfig", "apply_overrides", "load_experiment", "parse_override"]

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

    def __attrs_post_init__(self) -> None:  # the name and options checked when the file is loaded
        options = {**self.options, **({"root": self.root} if self.root is not None else {})}
        _at_paths(lambda: check_options(self.name, options), "name", "options")


def _at_paths(check: Callable[[], None], name: str, arguments: str) -> None:
    """Run a registry check, its errors placed at the config keys a user wrote: an unknown name at ``name``, bad
    arguments at ``arguments``."""
    try:
        check()
    except UnknownStrategyError as exc:
        raise ConfigError(f"{exc} @ $.{name}") from None
    except ConfigError as exc:
        raise ConfigError([f"{line} @ $.{arguments}" for line in exc.lines]) from None


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

    def __attrs_post_init__(self) -> None:  # the builder's arguments checked when the file is loaded
        _at_paths(lambda: check_arguments(self.name, self.kwargs), "name", "kwargs")
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
