"""Checkpoint files: atomic writes that never tear the old file, strict reads, weights for other code."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepkd.checkpoint import FORMAT, copy_atomic, load_checkpoint, read_state_dict, save_atomic
from deepkd.errors import CheckpointError


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full")  # stands in for any failure half-way through torch.save


def test_save_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "latest.pt"
    save_atomic({"a": torch.ones(2)}, path)
    save_atomic({"a": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(2))
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def test_a_failed_save_keeps_the_old_file_intact(tmp_path):
    path = tmp_path / "best.pt"
    save_atomic({"a": torch.ones(2)}, path)
    old = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        save_atomic({"a": Unpicklable()}, path)
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_copy_atomic_survives_a_later_rewrite_of_its_source(tmp_path):
    save_atomic({"epoch": 1}, tmp_path / "best.pt")
    copy_atomic(tmp_path / "best.pt", tmp_path / "latest.pt")
    save_atomic({"epoch": 2}, tmp_path / "latest.pt")  # rename over the (hard-linked) copy
    assert torch.load(tmp_path / "best.pt", weights_only=True) == {"epoch": 1}
    assert torch.load(tmp_path / "latest.pt", weights_only=True) == {"epoch": 2}


def test_read_state_dict_accepts_plain_wrapped_and_deepkd_files(tmp_path):
    weights = nn.Linear(3, 2).state_dict()
    torch.save(weights, tmp_path / "student.pt")
    torch.save({"model": weights, "epoch": 240}, tmp_path / "mdistiller.pth")
    for name in ("student.pt", "mdistiller.pth"):
        got = read_state_dict(tmp_path / name)
        assert got.keys() == weights.keys() and all(torch.equal(got[k], weights[k]) for k in weights)


def test_read_state_dict_strips_the_data_parallel_prefix_and_finds_net_and_state_dict(tmp_path):
    weights = nn.Linear(3, 2).state_dict()
    torch.save({"net": {f"module.{k}": v for k, v in weights.items()}, "acc": 93.1}, tmp_path / "a.pth")
    torch.save({"state_dict": weights, "epoch": 5}, tmp_path / "b.pth")
    for name in ("a.pth", "b.pth"):
        got = read_state_dict(tmp_path / name)
        assert got.keys() == weights.keys() and all(torch.equal(got[k], weights[k]) for k in weights)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"epoch": 3}, "holds no model weights: its top-level keys are 'epoch'"),
        ([1, 2, 3], "holds no model weights: it holds a list"),
    ],
)
def test_read_state_dict_refuses_files_without_weights(tmp_path, content, message):
    torch.save(content, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=message):
        read_state_dict(tmp_path / "x.pt")


def test_load_checkpoint_refuses_missing_pickled_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "latest.pt")
    torch.save({"format": FORMAT, "thing": nn.Linear(2, 2)}, tmp_path / "pickled.pt")  # needs weights_only=False
    with pytest.raises(CheckpointError, match="not a weights-only torch file"):
        load_checkpoint(tmp_path / "pickled.pt")
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "student.pt")
    with pytest.raises(CheckpointError, match="not a deepkd training checkpoint"):
        load_checkpoint(tmp_path / "student.pt")


@pytest.mark.parametrize(
    ("saved", "resumable"),
    [("0.3.0", True), ("0.3.7", True), ("0.2.0", False), ("0.4.0", False), ("1.0.0", False)],
)
def test_a_training_state_resumes_within_its_series_and_its_weights_load_from_any(tmp_path, saved, resumable):
    """Before 1.0 a minor release may change the training state's format (0.2 did: the optimizer's strategy state
    and the CIFAR zoo's parameter names; 0.3 did: strategy states on the device, host-side step counts), so a
    checkpoint resumes only within its major.minor series; its student weights load whatever version wrote them."""
    from deepkd.checkpoint import REQUIRED_KEYS

    weights = nn.Linear(2, 2).state_dict()
    state = {key: {} for key in REQUIRED_KEYS} | {"format": FORMAT, "version": saved, "student": weights}
    save_atomic(state, tmp_path / "latest.pt")
    if resumable:
        assert load_checkpoint(tmp_path / "latest.pt")["version"] == saved
    else:
        with pytest.raises(CheckpointError, match=rf"deepkd {saved}.*cannot resume.*start a new run.*latest\.pt"):
            load_checkpoint(tmp_path / "latest.pt")
    assert read_state_dict(tmp_path / "latest.pt").keys() == weights.keys()
