"""Where a benchmark report comes from: the commit, the date, the command line, the machine and the versions.

:func:`machine` extends :func:`benchmarks.speed.machine` (Python, torch and deepkd versions, torch threads) with the
CPU model, the core count and the torchvision and NumPy versions; :func:`provenance` adds the commit, whether the
tree had uncommitted changes, the date and the exact command line. ``DEEPKD_COMMIT`` names the commit where the
checkout has no git history (a copy on another machine); whether that copy was changed is then unknown.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True)
        return done.stdout.strip()
    except Exception:
        return None


def commit() -> tuple[str | None, bool | None]:
    """The checkout's commit and whether its tree differs from it (None where unknown)."""
    named = os.environ.get("DEEPKD_COMMIT")
    if named:
        return named, None
    status = _git("status", "--porcelain")
    return _git("rev-parse", "HEAD"), (bool(status) if status is not None else None)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """:func:`benchmarks.speed.machine` and the CPU model, logical cores, torchvision and NumPy versions."""
    import numpy
    import torchvision

    from benchmarks import speed

    return {
        **speed.machine(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
    }


def provenance() -> dict[str, Any]:
    """The commit (and whether the tree was dirty), the date (UTC) and this process's exact command line."""
    sha, dirty = commit()
    return {
        "git_commit": sha,
        "git_dirty": dirty,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(sys.orig_argv),
    }


def markdown(origin: dict[str, Any], mc: dict[str, Any]) -> str:
    """Three report lines: the machine and versions, the commit and date, the command."""
    notes = {True: " (with uncommitted changes)", False: "", None: " (uncommitted changes unknown)"}
    dirty = notes[origin["git_dirty"]]
    return (
        f"Machine: {mc['cpu_model']} ({mc['cpu']}, {mc['cores']} cores), {mc['threads']} torch threads; "
        f"Python {mc['python']}, torch {mc['torch']}, torchvision {mc['torchvision']}, NumPy {mc['numpy']}, "
        f"deepkd {mc['deepkd']}.\n\n"
        f"Commit: {origin['git_commit'] or 'unknown'}{dirty}; {origin['date']}.\n\n"
        f"Command: `{origin['command']}`\n"
    )
