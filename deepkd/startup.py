"""Torch's CPU threads for ``deepkd train``: as ``train.threads`` says, or chosen for the machine, and said.

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
from deepkd.launch import launched_world_size
from deepkd.progress import note
from deepkd.utils import choose_threads

if TYPE_CHECKING:
    from deepkd.train_config import TrainConfig

__all__ = ["with_threads"]


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
