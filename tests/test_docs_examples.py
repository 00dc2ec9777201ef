"""Every ```python block of README.md and docs/*.md runs, and the shell commands of the docs name files that exist.

The blocks of one page run in order in one fresh Python process (so a later block can use an earlier one's names,
as a reader would), in an empty working directory, on the CPU, with this checkout first on ``sys.path``. A block
that must not run (one that needs a data set or a trained teacher this machine may not have, or a fragment) says
so on the line just before its fence, with the reason::

    <!-- docs-test: skip (needs Fashion-MNIST and the teacher of the first run) -->

The marker is an HTML comment, so neither GitHub nor the docs site shows it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\b(.*?)-->")


def blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """``(line, code, skip reason or None)`` of each ```python block of ``page``."""
    text = page.read_text(encoding="utf-8")
    out = []
    for match in FENCE.finditer(text):
        before = [line for line in text[: match.start()].splitlines() if line.strip()]
        marker = SKIP.search(before[-1]) if before else None
        reason = (marker.group(1).strip(" ()") or "no reason given") if marker else None
        out.append((text.count("\n", 0, match.start()) + 1, match.group(1), reason))
    return out


RUNNABLE = [page for page in PAGES if any(reason is None for _, _, reason in blocks(page))]


def run_blocks(page: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = "\n".join(
        f"# --- {page.name}:{line}\n{textwrap.dedent(source)}" for line, source, skip in blocks(page) if skip is None
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # CPU, and gentle on a shared machine
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_python_blocks_of_a_page_run(page, tmp_path):
    result = run_blocks(page, tmp_path)
    assert result.returncode == 0, f"{page.name}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def test_every_skipped_block_says_why():
    for page in PAGES:
        for line, _, reason in blocks(page):
            assert reason != "no reason given", f"{page.name}:{line}: a skipped block must give its reason"


def test_the_pages_with_python_blocks_are_found():
    names = {p.name for p in RUNNABLE}
    assert {"README.md", "own-loop.md", "own-data.md", "extending.md"} <= names


CONFIG_PATH = re.compile(r"baselines/configs/[\w./-]+?\.toml")


def test_the_config_files_the_docs_name_exist():
    missing = []
    for page in PAGES:
        for line_no, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            missing += [f"{page.name}:{line_no}: {p}" for p in CONFIG_PATH.findall(line) if not (ROOT / p).is_file()]
    assert not missing, "\n".join(missing)


def test_own_data_page_runs_from_the_command_line_as_written(tmp_path, monkeypatch):
    """docs/own-data.md: its my_project.py and my_run.toml, then `deepkd train my_run.toml --import my_project`."""
    from deepkd.cli import import_user_code, main
    from deepkd.data import DATASETS
    from deepkd.models import MODELS

    text = (ROOT / "docs" / "own-data.md").read_text(encoding="utf-8")
    module = re.search(r"```python\n(# my_project\.py\n.*?)```", text, re.S)
    config = re.search(r"```toml\n(# my_run\.toml\n.*?)```", text, re.S)
    commands = re.findall(r"^\$ (deepkd .*?)(?:\s+#.*)?$", text, re.M)
    assert module and config and commands
    (tmp_path / "my_project.py").write_text(module.group(1))
    (tmp_path / "my_run.toml").write_text(config.group(1).replace("epochs = 10", "epochs = 2"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        # the teacher checkpoint the config names: any weights of the right shape
        import_user_code(["my_project"])
        project = sys.modules["my_project"]
        torch.save(project.two_layer(4, hidden=64).state_dict(), "teacher.pt")
        for command in commands:
            assert main(command.split()[1:]) == 0, command
        assert (tmp_path / "runs" / "blobs" / "student" / "student.pt").exists()
    finally:
        for registry, key in ((MODELS, "two_layer"), (DATASETS, "blobs")):
            if key in registry.names():
                registry.unregister(key)
        sys.modules.pop("my_project", None)
