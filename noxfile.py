"""Developer sessions: ``nox -s tests``, ``nox -s lint`` and ``nox -s bench``.

Every session installs from ``constraints.txt`` with pip, so torch and torchvision come from the local pins.
"""

from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

CONSTRAINTS = ("-c", "constraints.txt")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (hypothesis profile ``ci`` under CI, ``dev`` otherwise)."""
    session.install(*CONSTRAINTS, "-e", ".[test]")
    profile = "ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev")
    session.run("pytest", f"--hypothesis-profile={profile}", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff (style and common bugs) and mypy (types) over the package."""
    session.install(*CONSTRAINTS, "-e", ".[lint]")
    session.run("ruff", "check", "deepkd", "tests", "baselines", "benchmarks", "noxfile.py")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Speed and accuracy benchmarks; ``nox -s bench -- --profile smoke|default|full`` (report in bench-results/)."""
    session.install(*CONSTRAINTS, "-e", ".[bench]")
    session.run("python", "-m", "benchmarks.run", *session.posargs)
