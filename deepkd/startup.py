"""What ``deepkd train`` does before it trains, so that it fails early and says what it does: the weights files a
config names are checked before any data is read (:func:`check_files`), torch's CPU threads are set as
``train.threads`` says or chosen for the machine (:func:`with_threads`), and the models are announced.

>>> import torch
>>> from deepkd.train_config import TrainConfig
>>> with_threads(TrainConfig(threads=torch.get_num_threads(), progress=False), "nowhere", resume=False).threads
1
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import torch

from deepkd.checkpoint import CONFIG_FILE
from deepkd.errors import ConfigError
from deepkd.launch import launched_world_size
from deepkd.models import count_parameters
from deepkd.progress import note
from deepkd.utils import choose_threads

if TYPE_CHECKING:
    from torch import nn

    from deepkd.experiment_config import ExperimentConfig, ModelConfig
    from deepkd.train_config import TrainConfig

__all__ = ["check_files", "models_line", "needed_teacher", "with_threads"]


def with_threads(train: TrainConfig, run_dir: str | os.PathLike[str], *, resume: bool) -> TrainConfig:
    """``train`` with ``threads`` resolved (a resumed run: the count in its run directory's ``config.toml``, so that
    it continues bit for bit; else chosen for the machine, :func:`~deepkd.utils.choose_threads`), torch's threads set
    to it, and the choice printed. Unchanged where torch's choice stays (a GPU run, ``OMP_NUM_THREADS``)."""
    requested = train.threads
    saved = Path(run_dir) / CONFIG_FILE
    if requested is None and resume and saved.is_file():
        with contextlib.suppress(OSError, tomllib.TOMLDecodeError, AttributeError):
            requested = tomllib.loads(saved.read_text()).get("train", {}).get("threads")
    device = train.resolved_device()
    threads, why = choose_threads(requested if isinstance(requested, int) else None, device, launched_world_size())
    if threads is None:
        return train
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    note(f"{threads} CPU thread{'s' if threads > 1 else ''} for torch ({why}); set train.threads to choose",
         train.progress)  # fmt: skip
    return attrs.evolve(train, threads=threads)


def needed_teacher(spec: ModelConfig | None) -> ModelConfig:
    """The [teacher] table of a run whose loss distils, once checked to name weights."""
    if spec is None:
        raise ConfigError("this recipe's loss distils from a teacher: add a [teacher] table @ $.teacher")
    if spec.checkpoint is None and spec.pretrained is None:
        raise ConfigError(
            f"the teacher {spec.name!r} needs trained weights: set checkpoint to an earlier run's student.pt (or any "
            "weights file), or pretrained to torchvision's weights of a torchvision model @ $.teacher.checkpoint"
        )
    return spec


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
    if config.recipe.loss.needs_teacher:
        roles.append(("teacher", needed_teacher(config.teacher)))
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
