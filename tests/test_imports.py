"""Every module of the package imports first, in a fresh interpreter: no import works only by luck of order.

A module that imports fine after the rest of the package may still fail first, e.g. when two modules import each
other at load time. Each module is imported two ways: as users do (``import deepkd.x`` runs ``deepkd/__init__.py``
first, which imports most of the package in a fixed order), and alone (the package root is set up but not run, so
only the module and what it imports load: the ``__init__`` order hides no cycle, and no module leans on the root).

One interpreter per module would take a minute (each imports torch), so one fresh interpreter imports the third-party
libraries only, then forks once per module: each child starts with no deepkd module loaded.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

_spec = importlib.util.find_spec("deepkd")
assert _spec is not None and _spec.origin is not None
ROOT = Path(_spec.origin).parent
MODULES = sorted(
    ".".join(("deepkd", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
    for path in ROOT.rglob("*.py")
)

_RUNNER = r"""
import importlib, json, os, subprocess, sys, traceback

for name in ("torch", "torchvision", "numpy", "attrs", "cattrs", "tomli_w", "tqdm"):  # third-party only
    try:
        importlib.import_module(name)
    except ImportError:
        pass
assert not any(m == "deepkd" or m.startswith("deepkd.") for m in sys.modules)


ALONE = sys.argv[1] == "alone"
SETUP = "import importlib.util as u, sys; sys.modules['deepkd'] = u.module_from_spec(u.find_spec('deepkd'))\n"


def first_import(module):
    # alone: the package root exists, with its __path__, but its code does not run
    code = (SETUP if ALONE and module != "deepkd" else "") + f"import {module}"
    if not hasattr(os, "fork"):  # e.g. Windows: a slow interpreter each
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        return proc.stderr if proc.returncode else ""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: import, report, leave without running the parent's exit handlers
        os.close(read)
        try:
            exec(code, {})
            report = ""
        except BaseException:
            report = traceback.format_exc()
        with os.fdopen(write, "w") as out:
            out.write(report)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as out:
        report = out.read()
    os.waitpid(pid, 0)
    return report


print(json.dumps({module: first_import(module) for module in sys.argv[2:]}))
"""


@functools.cache
def _reports(how: str) -> dict[str, str]:
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, how, *MODULES], cwd=ROOT.parent, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def test_every_module_is_listed() -> None:
    assert {"deepkd", "deepkd.config", "deepkd.models", "deepkd.data.base"} <= set(MODULES)


@pytest.mark.parametrize("how", ["via-package", "alone"])
@pytest.mark.parametrize("module", MODULES)
def test_module_imports_first(module: str, how: str) -> None:
    report = _reports(how)[module]
    assert not report, f"`import {module}` ({how}) fails in a fresh interpreter:\n{report}"
