"""Ctrl-C never loses work: it checkpoints at the next step like SIGTERM, the resumed run ends with the weights of an
uninterrupted one, and a second Ctrl-C stops at once. In one process (a callback sends the signal at a chosen step)
and through ``python -m deepkd train`` (a real SIGINT while it trains)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import deepkd
from deepkd.checkpoint import load_checkpoint, read_state_dict
from deepkd.cli import main
from deepkd.data import make_loaders, synthetic
from deepkd.schedules import Constant
from deepkd.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]


def _trainer(run_dir: Path) -> tuple[Trainer, object, object]:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 4))
    train, test = make_loaders(synthetic(96, 4, (8,), 0), synthetic(40, 4, (8,), 0, train=False), 16, seed=2)
    recipe = deepkd.compose(loss="ce", momentum=deepkd.GSNR(interval=2), mask="none")
    config = TrainConfig(epochs=2, lr=0.1, schedule=Constant(), progress=False)
    return Trainer(student, None, recipe, config, run_dir=run_dir, seed=2), train, test


@pytest.fixture(autouse=True)
def ctrl_c_reaches_this_process():
    """Python's own Ctrl-C handler for each test, whatever the test run was started with (a run started in the
    background, ``&`` or ``nohup``, ignores SIGINT, and deepkd leaves an ignored signal ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_signal_the_process_ignores_stays_ignored(tmp_path):
    from deepkd.preemption import Interrupts

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    interrupts = Interrupts(enabled=True)
    with interrupts.installed():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == interrupts._handle
        os.kill(os.getpid(), signal.SIGINT)
    assert interrupts.received is None and signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_ctrl_c_inside_an_epoch_checkpoints_and_resume_ends_with_the_uninterrupted_weights(tmp_path, capfd):
    reference, train, test = _trainer(tmp_path / "ref")
    reference.fit(train, test)
    trainer, train, test = _trainer(tmp_path / "run")
    trainer.callbacks.append(
        deepkd.LambdaCallback(on_step_end=lambda t, out: t.global_step == 9 and os.kill(os.getpid(), signal.SIGINT))
    )
    history = trainer.fit(train, test)
    assert history.interrupted and history.stopped_by == "SIGINT" and trainer.global_step == 9
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's own handler is back
    err = capfd.readouterr().err
    assert "deepkd: Ctrl-C: stopping after this step and saving a checkpoint (Ctrl-C again stops at once" in err
    assert "deepkd: stopped by SIGINT after step 9 (epoch 2, batch 3/6); checkpoint in" in err
    state = load_checkpoint(tmp_path / "run" / "latest.pt")
    assert (state["epoch"], state["global_step"], state["batches_done"]) == (1, 9, 3)

    resumed, train, test = _trainer(tmp_path / "run")
    history = resumed.fit(train, test, resume=True)
    assert not history.interrupted and len(history) == 2
    for a, b in zip(resumed.student.state_dict().values(), reference.student.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(tmp_path):
    def twice(t: Trainer, out: object) -> None:
        if t.global_step == 4:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # the second raises KeyboardInterrupt here

    trainer, train, test = _trainer(tmp_path)
    trainer.callbacks.append(deepkd.LambdaCallback(on_step_end=twice))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(train, test)
    assert not (tmp_path / "latest.pt").exists()  # nothing was saved: the first epoch had not ended
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_stop_signal_is_written_by_the_checkpointer(tmp_path, monkeypatch):
    """The Checkpointer owns every write; preemption only says "stop now"."""
    writes: list[int] = []
    original = deepkd.callbacks.Checkpointer.save_latest

    def counting(self: deepkd.callbacks.Checkpointer, trainer: Trainer) -> None:
        writes.append(trainer.global_step)
        original(self, trainer)

    monkeypatch.setattr(deepkd.callbacks.Checkpointer, "save_latest", counting)
    trainer, train, test = _trainer(tmp_path)
    trainer.callbacks.append(
        deepkd.LambdaCallback(on_step_end=lambda t, out: t.global_step == 2 and os.kill(os.getpid(), signal.SIGTERM))
    )
    trainer.fit(train, test)
    assert writes == [2] and load_checkpoint(tmp_path / "latest.pt")["global_step"] == 2


CONFIG = """
run_dir = "{run_dir}"
seed = 3

[recipe]
loss = "ce"
momentum = {{ name = "gsnr", interval = 7 }}
mask = "none"

[train]
epochs = 3
lr = 0.05
schedule = "cosine"
progress = false
log_every = 1

[data]
name = "synthetic"
batch_size = 16
options = {{ num_samples = 4000, num_test_samples = 64, num_classes = 4, shape = [8] }}

[student]
name = "mlp"
kwargs = {{ in_features = 8, hidden = [32] }}
"""


def _config(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(CONFIG.format(run_dir=(tmp_path / name).as_posix()))
    return path


def _steps_logged(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line)["step"] for line in lines if line.endswith("}")]
    return max(steps, default=0)


def test_ctrl_c_on_the_command_line_checkpoints_exits_130_and_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    assert main(["train", str(_config(tmp_path, "reference"))]) == 0
    config = _config(tmp_path, "run")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepkd", "train", str(config)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while _steps_logged(tmp_path / "run") < 300 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # into the second epoch (250 steps an epoch)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "deepkd: stopped by SIGINT after step" in err and "Traceback" not in err
    assert f"interrupted; continue with: deepkd train {config} --resume" in out
    state = load_checkpoint(tmp_path / "run" / "latest.pt")
    assert state["epoch"] == 1 and 0 < state["batches_done"] < 250  # inside the second epoch, its work kept

    assert main(["train", str(config), "--resume"]) == 0
    resumed = read_state_dict(tmp_path / "run" / "student.pt")
    reference = read_state_dict(tmp_path / "reference" / "student.pt")
    assert resumed.keys() == reference.keys() and all(torch.equal(resumed[k], reference[k]) for k in reference)
