"""Atomic writes that say why they fail: the one way deepkd writes a file of a run directory.

Each file is written to a temporary file in the same directory, flushed to disk, then renamed over the old one, so a
crash leaves either the old or the new file, never a torn one. A write that fails (no space, a disk quota, no
permission, a read-only file system) raises :class:`~deepkd.errors.CheckpointError` naming the file, the bytes
needed and free, whether the previous file is intact, and what to do; the temporary file is removed. Without this,
a full disk surfaced as torch's ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos ...``.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
>>> save_text_atomic("hello", path); path.read_text()
'hello'
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from deepkd.errors import CheckpointError

__all__ = ["copy_atomic", "save_atomic", "save_text_atomic", "write_failure"]


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
    """``torch.save(obj)`` to ``path`` atomically: temporary file in the same directory, fsync, rename.

    Raises:
        CheckpointError: the write failed (no space, no permission, a read-only file system...): the message names
            the file, the bytes needed and free, and says that the previous file is intact (no temporary file is
            left behind).
    """
    path = Path(path)
    _write_atomic(path, lambda f: torch.save(obj, f), needed=lambda: _serialized_size(obj))


def save_text_atomic(text: str, path: str | os.PathLike[str]) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, as :func:`save_atomic` writes a checkpoint."""
    data = text.encode("utf-8")
    _write_atomic(Path(path), lambda f: f.write(data), needed=lambda: len(data))


def copy_atomic(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Make ``dst`` a copy of ``src`` atomically (a hard link where the file system allows, else a byte copy);
    a failed copy raises :class:`CheckpointError` as :func:`save_atomic` does."""
    src, dst = Path(src), Path(dst)
    tmp = _temporary(dst)
    try:
        try:
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, dst)
        except OSError as exc:
            raise write_failure(dst, exc, src.stat().st_size) from None
    finally:
        _remove(tmp)
    _fsync_dir(dst.parent)


def _write_atomic(path: Path, write: Callable[[Any], Any], needed: Callable[[], int]) -> None:
    tmp = _temporary(path)
    try:
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as exc:
            if _os_error(exc) is None:  # torch's own RuntimeError, not a failed write: not ours to explain
                raise
            raise write_failure(path, exc, needed()) from None
    finally:
        _remove(tmp)
    _fsync_dir(path.parent)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):  # e.g. a read-only file system, where nothing was created
        path.unlink(missing_ok=True)


class _Counter:
    """A file-like sink that only counts the bytes written to it."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def _serialized_size(obj: Any) -> int:
    counter = _Counter()
    torch.save(obj, counter)  # type: ignore[arg-type]
    return counter.size


def _os_error(exc: BaseException | None) -> OSError | None:
    """The OSError behind ``exc``: itself, or the one torch's writer hit (torch raises ``RuntimeError: [enforce fail
    at inline_container.cc] unexpected pos``, the OSError in its context)."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, OSError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "no permission to write there",
    errno.EPERM: "no permission to write there",
    errno.EROFS: "the file system is read-only",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f)",
}
_HINTS = {
    errno.ENOSPC: "free some space (or choose another run_dir)",
    errno.EDQUOT: "free some space (or choose another run_dir)",
    errno.EACCES: "make the directory writable (or choose another run_dir)",
    errno.EPERM: "make the directory writable (or choose another run_dir)",
    errno.EROFS: "choose a run_dir on a writable file system",
    errno.EFBIG: "raise the file-size limit",
}


def write_failure(path: Path, exc: BaseException, needed: int | None) -> CheckpointError:
    """The :class:`CheckpointError` of a failed write of ``path`` (``needed`` bytes): why, in words, with the
    bytes needed and free, whether an earlier version of the file is intact, and what to do."""
    os_error = _os_error(exc)
    code = os_error.errno if os_error is not None else None
    try:
        free: int | None = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if code not in _REASONS and needed is not None and free is not None and free < needed:
        code = errno.ENOSPC
    reason = _REASONS.get(code) if code is not None else None
    if reason is None:
        reason = os_error.strerror if os_error is not None and os_error.strerror else str(exc).strip()[:200]
    sizes = []
    if needed is not None:
        sizes.append(f"{needed:,} bytes needed")
    if free is not None:
        sizes.append(f"{free:,} free in {str(path.parent)!r}")
    kept = (
        f"the previous {path.name} is intact"
        if path.exists()
        else f"there was no {path.name} before, and none was written"
    )
    hint = _HINTS.get(code, "fix the cause") if code is not None else "fix the cause"
    return CheckpointError(
        f"cannot write {str(path)!r}: {reason} ({', '.join(sizes)}); {kept}, and no temporary file is left. "
        f"{hint[0].upper()}{hint[1:]}, then continue the run with --resume (fit(resume=True))"
    )
