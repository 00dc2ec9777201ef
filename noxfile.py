"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s docs`` and ``nox -s bench``.

The sessions share one virtual environment, ``.nox/deepkd``. torch and torchvision take about 5.5 GB on disk, so
one environment per session would need three copies of them; the sessions differ only in which extras they add,
and pip adds those to the shared environment in a few seconds. Every install goes through ``constraints.txt``, so
torch and torchvision come from the local pins.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox
from nox.command import CommandFailed

nox.options.sessions = ["tests", "lint"]

ROOT = Path(__file__).resolve().parent
ENV = ROOT / ".nox" / "deepkd"
BIN = ENV / ("Scripts" if sys.platform == "win32" else "bin")


def _environment(session: nox.Session, *extras: str) -> dict[str, str]:
    """Create the shared environment if needed, install deepkd with ``extras`` into it, return its variables."""
    python = BIN / "python"
    if not python.exists():
        session.log(f"creating the shared environment {ENV}")
        session.run(sys.executable, "-m", "venv", str(ENV), external=True)
    spec = f".[{','.join(extras)}]" if extras else "."
    try:
        session.run(str(python), "-m", "pip", "install", "--quiet", "-c", "constraints.txt", "-e", spec, external=True)
    except CommandFailed:
        session.error(f"pip could not install {spec} into {ENV}; if that venv is damaged, remove it and run again")
    return {"VIRTUAL_ENV": str(ENV), "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")])}


def _run(session: nox.Session, env: dict[str, str], *args: str) -> None:
    session.run(str(BIN / args[0]), *args[1:], env=env, external=True)


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """Run the test suite (hypothesis profile ``ci`` under CI, ``dev`` otherwise)."""
    env = _environment(session, "test")
    profile = "ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev")
    _run(session, env, "pytest", f"--hypothesis-profile={profile}", *session.posargs)


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """Ruff (style and common bugs) and mypy (types) over the package."""
    env = _environment(session, "lint")
    _run(session, env, "ruff", "check", "deepkd", "tests", "baselines", "benchmarks", "noxfile.py")
    _run(session, env, "mypy")


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Speed and accuracy benchmarks; ``nox -s bench -- --profile smoke|default|long|full`` (bench-results/)."""
    env = _environment(session, "bench")
    _run(session, env, "python", "-m", "benchmarks.run", *session.posargs)


@nox.session(venv_backend="none")
def docs(session: nox.Session) -> None:
    """The documentation site (Sphinx + MyST) in docs/_build/html; any warning fails the build (``-W``).

    ``nox -s docs -- -b linkcheck`` (or any other sphinx-build options) is passed through after the defaults.
    """
    env = _environment(session, "docs")
    sphinx = ("python", "-m", "sphinx", "-W", "--keep-going", "-b", "html")
    _run(session, env, *sphinx, *session.posargs, "docs", "docs/_build/html")
    session.log("the site is in docs/_build/html/index.html")
