"""Run-level helpers: seeding, random-number-generator state as plain data, device choice.

>>> seed_everything(0)
>>> state = rng_state()
>>> a = torch.rand(2)
>>> set_rng_state(state)
>>> torch.equal(a, torch.rand(2))
True
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from deepkd.distributed import is_main_process
from deepkd.distributed import rank as get_rank
from deepkd.errors import CheckpointError, ConfigError

__all__ = [
    "busy_cores",
    "choose_threads",
    "get_rank",  # deepkd.distributed.rank, at its earlier import path
    "is_main_process",  # deepkd.distributed.is_main_process, likewise
    "resolve_device",
    "rng_state",
    "seed_everything",
    "set_rng_state",
]


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


def busy_cores(window: float = 0.3) -> float:
    """How many cores other processes keep busy now: the CPU time of the cores this process may use over ``window``
    seconds (Linux's ``/proc/stat``) less this process's own (``/proc/self/stat``), in cores. Elsewhere the load
    average of the last minute (``os.getloadavg``), or 0.

    Measured now rather than read from the load average because that average lags: for a minute after a run ends it
    still counts the run, and the next command (a student right after its teacher) would take a busy machine for an
    idle one's half.
    """
    try:
        before = _cpu_ticks()
        start = time.monotonic()
        time.sleep(window)
        after = _cpu_ticks()
        elapsed = time.monotonic() - start
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    others = (after[0] - before[0]) - (after[1] - before[1])
    return max(others / os.sysconf("SC_CLK_TCK") / elapsed, 0.0)


def _cpu_ticks() -> tuple[int, int]:
    """(busy ticks of the cores this process may run on, ticks of this process): Linux's ``/proc/stat`` and
    ``/proc/self/stat``."""
    mine = {f"cpu{i}" for i in os.sched_getaffinity(0)} if hasattr(os, "sched_getaffinity") else None
    busy = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if not name.startswith("cpu") or name == "cpu" or (mine is not None and name not in mine):
                continue
            ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
            busy += sum(ticks) - ticks[3] - ticks[4]
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return busy, int(own[11]) + int(own[12])  # utime, stime


def choose_threads(
    requested: int | None,
    device: torch.device,
    processes: int = 1,
    *,
    cores: int | None = None,
    load: float | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[int | None, str]:
    """How many intra-op threads torch should use on this machine: ``(threads, why)``, ``threads`` ``None`` to keep
    torch's choice. What ``deepkd train`` does with ``train.threads`` (``None``: choose).

    torch starts one thread per core whatever else runs. On a machine that other work keeps busy, each of its
    parallel operations then waits for threads the system has given to someone else: a tiny model's step measured
    130 ms with torch's default threads and 2 ms with one. So: ``requested`` threads when set; the environment's when
    ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` is set (torch follows it); else, on the CPU, the cores this process
    may use (shared by the ``processes`` a launcher started on this node) less those other processes keep busy now
    (``load``, measured by :func:`busy_cores` when not given), rounded, at least one. On a GPU the host's threads only
    feed it: torch's choice stays.

    >>> choose_threads(None, torch.device("cpu"), cores=2, load=1.9, env={})
    (1, 'the machine is busy: others use 1.9 of 2 cores')
    >>> choose_threads(None, torch.device("cpu"), cores=8, load=0.2, env={})
    (8, '8 cores free')
    >>> choose_threads(3, torch.device("cpu"))
    (3, 'train.threads')
    """
    if requested is not None:
        return requested, "train.threads"
    env = os.environ if env is None else env
    named = next((name for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if env.get(name)), None)
    if named is not None:
        return None, f"{named}={env[named]}"
    if device.type != "cpu":
        return None, f"torch's choice (the model runs on {device.type})"
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if load is None:
        load = busy_cores()
    share = max(cores // max(processes, 1), 1)
    free = max(math.floor(cores - load + 0.5), 1)
    threads = max(min(share, free), 1)
    if threads < share:
        return threads, f"the machine is busy: others use {load:.2g} of {cores} cores"
    return threads, f"{threads} cores free" + (f" for each of {processes} processes" if processes > 1 else "")
