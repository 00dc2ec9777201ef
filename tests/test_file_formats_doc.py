"""docs/reference/file-formats.md: every key its tables name is in the files a real (tiny) run writes.

A teacher run and a distillation run (DKD, GSNR momentum, dynamic mask: every key of a step record is filled) of one
epoch each on synthetic data, through the command line; then each documented key, a dotted path, is looked up in a
real metrics.jsonl record, in latest.pt and in config.toml.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch

import deepkd
from deepkd.checkpoint import FORMAT, load_checkpoint
from deepkd.cli import main
from deepkd.logs import read_metrics
from tests.test_cli import write_config  # the same small teacher and student runs as the CLI tests

PAGE = Path(__file__).resolve().parents[1] / "docs" / "reference" / "file-formats.md"


def documented_keys(heading: str) -> list[str]:
    """The backticked first cells of the table under ``heading`` (the section up to the next heading)."""
    text = PAGE.read_text(encoding="utf-8")
    start = text.index(f"\n{heading}\n")
    section = re.split(r"\n#+ ", text[start + len(heading) + 2 :], maxsplit=1)[0]
    keys = re.findall(r"^\| `([\w.]+)` \|", section, flags=re.M)
    assert keys, f"no keys under {heading!r}"
    return keys


def lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        assert isinstance(data, dict) and part in data, f"{dotted!r}: no {part!r} in {sorted(data)}"
        data = data[part]
    return data


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("formats")

    assert main(["train", str(write_config(root, "teacher", "ce"))]) == 0
    teacher = (root / "runs" / "teacher" / "student.pt").as_posix()
    assert main(["train", str(write_config(root, "student", "dkd", teacher))]) == 0
    return root / "runs" / "student"


def test_the_documented_metrics_keys_are_in_a_real_metrics_file(run_dir: Path) -> None:
    records = read_metrics(run_dir / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert steps and epochs
    for key in documented_keys("### Step records"):
        lookup(steps[-1], key)
    for key in documented_keys("### Epoch records"):
        lookup(epochs[-1], key)
    # and nothing undocumented at the top level
    assert set(steps[-1]) == {k for k in documented_keys("### Step records") if "." not in k}
    assert set(epochs[-1]) == {k for k in documented_keys("### Epoch records") if "." not in k}
    # the types the page gives
    assert isinstance(steps[-1]["skipped"], bool) and isinstance(epochs[-1]["skipped"], int)
    assert set(steps[-1]["loss"]) == {"task", "tckd", "nckd", "total"}
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["kind"] == "step"


def test_the_documented_checkpoint_keys_are_in_a_real_checkpoint(run_dir: Path) -> None:
    for name in ("latest.pt", "best.pt"):
        state = torch.load(run_dir / name, weights_only=True)
        keys = documented_keys("## Checkpoints: latest.pt and best.pt")
        for key in keys:
            lookup(state, key)
        assert set(state) == set(keys)
        for key in documented_keys("### The optimizer's state"):
            lookup(state["optimizer"], key)
        assert set(state["optimizer"]["deepkd"]) == {
            k.split(".")[1] for k in documented_keys("### The optimizer's state") if k.startswith("deepkd.")
        }
        assert state["format"] == FORMAT == "deepkd-checkpoint"
        assert state["version"] == deepkd.__version__
        (saved,), logged = state["history"]["epochs"], read_metrics(run_dir / "metrics.jsonl")[-1]
        assert set(saved) == set(logged) and saved["test_top1"] == logged["test_top1"]  # NaN where the file has null
        load_checkpoint(run_dir / name)
    student = torch.load(run_dir / "student.pt", weights_only=True)
    assert "format" not in student and all(isinstance(v, torch.Tensor) for v in student.values())


def test_the_documented_config_keys_are_in_a_real_config_file(run_dir: Path) -> None:
    config = tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
    keys = documented_keys("## config.toml")
    for key in keys:
        lookup(config, key)
    assert set(config) == {k for k in keys if "." not in k}
