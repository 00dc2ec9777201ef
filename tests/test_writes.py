"""Writes that fail say why, and lose nothing: a checkpoint that cannot be written (no space, no permission, a
read-only file system, a file-size limit) raises CheckpointError naming the file, the bytes needed and free, and that
the previous file is intact; no temporary file is left, every file left loads, and the run resumes once the cause is
gone. metrics.jsonl never keeps half a line."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

import deepkd.atomic
from deepkd.atomic import copy_atomic, save_atomic, save_text_atomic
from deepkd.checkpoint import load_checkpoint
from deepkd.errors import CheckpointError
from deepkd.logs import JsonlLogger, read_metrics

ROOT = Path(__file__).resolve().parents[1]


class _Disk:
    """``open`` for deepkd.atomic whose files take at most ``room`` more bytes, then fail with ``code``."""

    def __init__(self, room: int, code: int = errno.ENOSPC) -> None:
        self.room, self.code = room, code

    def __call__(self, path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        real = open(path, mode, *args, **kwargs)  # noqa: SIM115
        disk = self

        class Limited(io.RawIOBase):
            def writable(self) -> bool:
                return True

            def write(self, data: Any) -> int:
                if len(data) > disk.room:
                    raise OSError(disk.code, os.strerror(disk.code))
                disk.room -= len(data)
                return real.write(data)

            def flush(self) -> None:
                if not real.closed:
                    real.flush()

            def fileno(self) -> int:
                return real.fileno()

            def close(self) -> None:
                super().close()
                real.close()

        return Limited()


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (errno.ENOSPC, "no space left on the device"),
        (errno.EDQUOT, "the disk quota is exceeded"),
        (errno.EACCES, "no permission to write there"),
        (errno.EROFS, "the file system is read-only"),
    ],
)
def test_a_failed_checkpoint_write_says_why_and_leaves_the_previous_file(tmp_path, monkeypatch, code, reason):
    path = tmp_path / "latest.pt"
    save_atomic({"w": torch.zeros(3)}, path)
    state = {"w": torch.randn(5000)}
    monkeypatch.setattr(deepkd.atomic, "open", _Disk(room=1000, code=code), raising=False)
    with pytest.raises(CheckpointError) as info:
        save_atomic(state, path)
    message = str(info.value)
    needed = len(_bytes_of(state))
    assert message.startswith(f"cannot write {str(path)!r}: {reason} ({needed:,} bytes needed, ")
    assert f" free in {str(tmp_path)!r}); the previous latest.pt is intact, and no temporary file is left" in message
    assert "unexpected pos" not in message
    assert message.endswith("then continue the run with --resume (fit(resume=True))")
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.zeros(3))


def test_a_first_write_that_fails_says_there_was_none_before(tmp_path, monkeypatch):
    monkeypatch.setattr(deepkd.atomic, "open", _Disk(room=10), raising=False)
    with pytest.raises(CheckpointError, match=r"there was no best\.pt before, and none was written"):
        save_atomic({"w": torch.randn(100)}, tmp_path / "best.pt")
    monkeypatch.setattr(deepkd.atomic, "open", _Disk(room=2), raising=False)
    with pytest.raises(CheckpointError, match=r"no space left on the device \(5 bytes needed"):
        save_text_atomic("hello", tmp_path / "config.toml")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_copy_says_why(tmp_path, monkeypatch):
    src = tmp_path / "best.pt"
    save_atomic({"w": torch.zeros(2)}, src)

    def fail(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(deepkd.atomic.os, "link", fail)
    monkeypatch.setattr(deepkd.atomic.shutil, "copyfile", fail)
    with pytest.raises(CheckpointError, match=r"cannot write .*latest\.pt.*no space left on the device"):
        copy_atomic(src, tmp_path / "latest.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_torchs_own_errors_are_not_taken_for_a_full_disk(tmp_path):
    with pytest.raises(Exception) as info:  # an object torch.save cannot pickle: a programming error, passed on
        save_atomic({"f": lambda: 0}, tmp_path / "x.pt")
    assert not isinstance(info.value, CheckpointError)
    assert list(tmp_path.iterdir()) == []


def test_metrics_jsonl_never_keeps_half_a_line(tmp_path, monkeypatch):
    logger = JsonlLogger(tmp_path)
    logger._write({"kind": "epoch", "epoch": 1, "step": 6})
    real_open = open

    class HalfWrite(io.FileIO):
        def write(self, data: Any) -> int:
            if len(data) > 10:
                return super().write(bytes(data[:10]))  # a short write; the next one finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")

    def opener(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        return HalfWrite(path, mode) if "a" in mode else real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("deepkd.logs.open", opener, raising=False)
    with pytest.raises(CheckpointError, match=r"cannot write .*metrics\.jsonl.*no space left on the device"):
        logger._write({"kind": "epoch", "epoch": 2, "step": 12, "loss": {"total": 0.5}})
    monkeypatch.undo()
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1  # the half line is gone
    logger._write({"kind": "epoch", "epoch": 2, "step": 12})
    assert [r["epoch"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]


RUN = """
import resource, signal, sys, torch
from torch import nn
import deepkd
from deepkd.data import make_loaders, synthetic
from deepkd.schedules import Constant
from deepkd.trainer import TrainConfig, Trainer

torch.set_num_threads(1)
limit = int(sys.argv[2])


def full_disk(trainer, metrics):  # from the second epoch's checkpoint on, files may not grow past `limit` bytes
    if limit and trainer.epoch == 2:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, not a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


torch.manual_seed(0)
student = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))
train, test = make_loaders(synthetic(96, 4, (8,), 0), synthetic(40, 4, (8,), 0, train=False), 16, seed=2)
config = TrainConfig(epochs=3, lr=0.1, schedule=Constant(), progress=False)
trainer = Trainer(student, None, deepkd.compose(loss="ce", momentum="sgd", mask="none"), config,
                  run_dir=sys.argv[1], seed=2, callbacks=[deepkd.LambdaCallback(on_epoch_end=full_disk)])
try:
    trainer.fit(train, test, resume=True)
except deepkd.CheckpointError as exc:
    print("ERROR", exc)
print("EPOCHS", len(trainer.history))
"""


def _run(run_dir: Path, limit: int) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RUN), str(run_dir), str(limit)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_run_whose_writes_fail_loses_nothing_and_resumes_once_they_work(tmp_path):
    reference = _run(tmp_path / "reference", 0)
    assert "EPOCHS 3" in reference
    size = (tmp_path / "reference" / "latest.pt").stat().st_size
    out = _run(tmp_path / "run", size // 2)  # the second epoch's checkpoint does not fit under the limit
    assert "ERROR cannot write" in out and "the file is larger than this process may write (ulimit -f)" in out
    assert "is intact" in out and "unexpected pos" not in out and "EPOCHS 2" in out
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temporary file
    assert load_checkpoint(tmp_path / "run" / "latest.pt")["epoch"] == 1  # every file left loads
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 1
    torch.load(tmp_path / "run" / "student.pt", weights_only=True)
    assert "EPOCHS 3" in _run(tmp_path / "run", 0)  # room again: the run resumes, and ends like the reference
    assert torch.equal(
        torch.load(tmp_path / "run" / "student.pt", weights_only=True)["2.weight"],
        torch.load(tmp_path / "reference" / "student.pt", weights_only=True)["2.weight"],
    )


def _bytes_of(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()
