"""Run-level helpers: seeding, random-number-generator state as plain data, process rank, device choice.

>>> seed_everything(0)
>>> state = rng_state()
>>> a = torch.rand(2)
>>> set_rng_state(state)
>>> torch.equal(a, torch.rand(2))
True
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from deepkd.errors import CheckpointError, ConfigError

__all__ = ["get_rank", "is_main_process", "resolve_device", "rng_state", "seed_everything", "set_rng_state"]


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python's ``random``, NumPy and torch (every CUDA device too).

    ``deterministic=True`` also makes torch choose deterministic kernels (``torch.use_deterministic_algorithms``,
    cuDNN deterministic, no cuDNN benchmarking) and sets ``CUBLAS_WORKSPACE_CONFIG`` as CUDA requires; ops without a
    deterministic kernel then raise. Runs on one CPU are reproducible without it.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device as well
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def get_rank() -> int:
    """This process's rank under ``torch.distributed`` (0 when it is not initialised)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """Whether this process logs and writes checkpoints: rank 0, or the only process."""
    return get_rank() == 0


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; other names go to :class:`torch.device`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}: {exc} @ $.train.device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but CUDA is not available @ $.train.device")
    return device


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """The state of every random-number generator a run draws from, as tensors and plain values.

    Holds Python's ``random``, NumPy's global generator, torch's CPU and CUDA generators, and ``generator`` (e.g. a
    DataLoader's) when given. Loads with ``torch.load(weights_only=True)``.
    """
    version, internal, gauss_next = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": None if generator is None else generator.get_state(),
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` captured; raises :class:`CheckpointError` when it is malformed."""
    try:
        py, npy = state["python"], state["numpy"]
        random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss_next"]))
        keys = npy["keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        if generator is not None and state["generator"] is not None:
            generator.set_state(state["generator"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(f"the saved random-number-generator state is malformed: {exc!r}") from None
