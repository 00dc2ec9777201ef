"""A published CIFAR-100 row end to end, on the CPU, as docs/reproduce.md tells a user to run it.

The working directory is laid out as the shipped configs expect: CIFAR-100 in torchvision's on-disk layout under
``data/cifar100/cifar-100-python/`` (a few dozen random images instead of 60,000) and the teacher as mdistiller's
``cifar_teachers.tar`` unpacks it, ``download_ckpts/cifar_teachers/<model>_vanilla/ckpt_epoch_240.pth`` holding
``{"model": state_dict}`` (randomly initialised here). Then ``deepkd train <shipped config>`` with overrides for the
length of the run only, and ``deepkd eval`` on the result. Nothing is downloaded.

torchvision checks the MD5 sums of the real CIFAR-100 files before reading them; the test points those sums at its
tiny files, so the integrity check and the reader both run as they do on the real archive.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR100  # type: ignore[import-untyped, unused-ignore]

from deepkd.cli import main
from deepkd.experiment import load_experiment
from deepkd.models import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "baselines" / "configs"
CONFIG = CONFIGS / "cifar100" / "resnet56_resnet20" / "deepkd_official.toml"
SHORT = [
    "train.epochs=1",
    "train.progress=false",
    "data.batch_size=16",
    "data.test_batch_size=16",
    "data.num_workers=0",
]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_tiny_cifar100(root: Path, monkeypatch: pytest.MonkeyPatch, n_train: int = 48, n_test: int = 24) -> None:
    """``root/cifar-100-python/{train,test,meta}`` as in the python version of CIFAR-100: pickled dicts with the
    images as uint8 rows of 3072 values (R, G, B planes of 32x32) and the labels under ``fine_labels``."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        entry = {
            "filenames": [f"{name}_{i}.png" for i in range(n)],
            "batch_label": f"{name} batch",
            "fine_labels": [int(v) for v in rng.integers(0, 100, n)],
            "coarse_labels": [int(v) for v in rng.integers(0, 20, n)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    meta = {"fine_label_names": [f"class_{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}
    with open(folder / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    monkeypatch.setattr(CIFAR100, "train_list", [["train", _md5(folder / "train")]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", _md5(folder / "test")]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": _md5(folder / "meta")})


def test_a_shipped_cifar_config_trains_from_a_released_style_teacher_and_evaluates(tmp_path, monkeypatch, capsys):
    config = load_experiment(CONFIG)
    assert config.teacher is not None and config.teacher.checkpoint is not None and config.data.root is not None
    monkeypatch.chdir(tmp_path)  # the shipped relative paths (data, teacher, run directory) resolve here
    write_tiny_cifar100(tmp_path / config.data.root, monkeypatch)
    teacher_file = tmp_path / config.teacher.checkpoint
    teacher_file.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save({"model": build_model(config.teacher.name, 100).state_dict()}, teacher_file)  # mdistiller's layout

    assert main(["train", str(CONFIG), *SHORT]) == 0
    out = capsys.readouterr().out
    assert re.search(r"best test top-1 \d+\.\d\d% \(epoch 1\), final \d+\.\d\d%", out), out
    run_dir = tmp_path / config.run_dir
    assert {"config.toml", "metrics.jsonl", "latest.pt", "best.pt", "student.pt"} <= {p.name for p in run_dir.iterdir()}
    resolved = load_experiment(run_dir / "config.toml")
    assert resolved.recipe == config.recipe and resolved.train.epochs == 1

    assert main(["eval", str(run_dir / "best.pt")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"top-1 \d+\.\d\d%  top-5 \d+\.\d\d%  loss \d+\.\d+  \(24 test images, epoch 1\)", out), out


def test_a_teacher_file_of_another_architecture_is_refused_before_training(tmp_path, monkeypatch, capsys):
    config = load_experiment(CONFIG)
    assert config.teacher is not None and config.teacher.checkpoint is not None and config.data.root is not None
    monkeypatch.chdir(tmp_path)
    write_tiny_cifar100(tmp_path / config.data.root, monkeypatch, n_train=8, n_test=8)
    teacher_file = tmp_path / config.teacher.checkpoint
    teacher_file.parent.mkdir(parents=True)
    torch.save({"model": build_model("resnet20", 100).state_dict()}, teacher_file)  # the student's shape, not resnet56

    assert main(["train", str(CONFIG), *SHORT]) == 2
    err = capsys.readouterr().err
    assert "teacher checkpoint" in err and "resnet56" in err and "Traceback" not in err
    assert not (tmp_path / config.run_dir / "latest.pt").exists()
