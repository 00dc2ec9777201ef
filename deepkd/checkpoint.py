"""Checkpoint files: atomic writes, strict reads, and student weights for other code.

A run directory holds, rewritten after every epoch:

- ``latest.pt``: everything needed to continue the run bit for bit (student, optimizer with its strategy state,
  scheduler, random-number-generator states, epoch, global step, best metric, history, the resolved config as
  plain data, and the library version);
- ``best.pt``: the same, from the epoch with the best test top-1 so far;
- ``student.pt``: the latest student's plain ``state_dict`` (``model.load_state_dict(torch.load(path))``).

Each file is written to a temporary file in the same directory, flushed to disk, then renamed over the old one, so a
crash leaves either the old or the new file, never a torn one. Every file loads with
``torch.load(weights_only=True)``. Reading a corrupt, truncated or foreign file raises
:class:`~deepkd.errors.CheckpointError` and never changes anything on disk.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from deepkd.errors import CheckpointError

__all__ = [
    "BEST",
    "FORMAT",
    "LATEST",
    "STUDENT",
    "copy_atomic",
    "load_checkpoint",
    "read_state_dict",
    "save_atomic",
]

FORMAT = "deepkd-checkpoint"
LATEST, BEST, STUDENT = "latest.pt", "best.pt", "student.pt"
REQUIRED_KEYS = (
    "format",
    "version",
    "epoch",
    "global_step",
    "student",
    "optimizer",
    "scheduler",
    "rng",
    "best",
    "history",
    "recipe",
    "config",
)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj)`` to ``path`` atomically: temporary file in the same directory, fsync, rename."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def copy_atomic(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Make ``dst`` a copy of ``src`` atomically (a hard link where the file system allows, else a byte copy)."""
    src, dst = Path(src), Path(dst)
    tmp = _temporary(dst)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(dst.parent)


def _read(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for torn or foreign files; all mean "unreadable"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r}: it is corrupt, truncated or not a weights-only torch file "
            f"({type(exc).__name__}: {reason[:200]})"
        ) from None


def _major(version: str) -> str:
    return str(version).split(".", 1)[0]


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a full deepkd checkpoint (``latest.pt`` / ``best.pt``), on the CPU.

    Raises:
        CheckpointError: the file is missing, unreadable, not a deepkd checkpoint, lacks keys, or was written by
            another major version of deepkd.
    """
    from deepkd import __version__

    path = Path(path)
    data = _read(path)
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a deepkd training checkpoint (no format={FORMAT!r} entry); a plain state_dict "
            "such as student.pt holds weights only"
        )
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {', '.join(missing)}")
    if _major(data["version"]) != _major(__version__):
        raise CheckpointError(
            f"checkpoint {str(path)!r} was written by deepkd {data['version']}, which is incompatible with this "
            f"deepkd {__version__} (major versions differ)"
        )
    return dict(data)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Model weights from a file: a plain ``state_dict`` (``student.pt``, torchvision ``.pth``), a deepkd
    checkpoint (its student), or a dict holding the weights under ``"model"`` or ``"state_dict"``."""
    path = Path(path)
    data = _read(path)
    if isinstance(data, Mapping) and data.get("format") == FORMAT:
        data = load_checkpoint(path)["student"]
    elif isinstance(data, Mapping) and not _is_state_dict(data):
        data = next((data[k] for k in ("model", "state_dict") if _is_state_dict(data.get(k))), data)
    if not _is_state_dict(data):
        raise CheckpointError(f"{str(path)!r} holds no model weights (expected a state_dict of tensors)")
    return dict(data)


def _is_state_dict(data: object) -> bool:
    return (
        isinstance(data, Mapping)
        and len(data) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items())
    )
