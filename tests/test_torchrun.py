"""``torchrun -m deepkd train`` on two gloo ranks, and the preemption machinery: mid-epoch checkpoints, ``kill -9``
and exact resume, SIGTERM to the launcher, a rank that dies; then the same stop and resume in one process.

The runs use the synthetic data set and a tiny MLP (no files needed); two ranks on 127.0.0.1 with
``OMP_NUM_THREADS=1``. Each torchrun launch costs a few seconds of interpreter start-up, so the 2-rank reference run
is shared by the tests that resume."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import deepkd
from deepkd.checkpoint import load_checkpoint
from deepkd.data import ShardSampler, make_loaders, synthetic
from deepkd.experiment import evaluate_checkpoint, load_experiment
from deepkd.logs import read_metrics
from deepkd.models import build_model
from deepkd.schedules import Constant
from deepkd.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, SAMPLES, BATCH = 3, 4000, 16
STEPS = EPOCHS * -(-SAMPLES // 2 // BATCH)  # per rank: 125 a epoch

CONFIG = """
run_dir = "{run_dir}"
seed = 1

[recipe]
loss = "dkd"
momentum = "gsnr"
mask = "dynamic"

[train]
epochs = {epochs}
lr = 0.05
schedule = "cosine"
progress = false
log_every = 1
cache_teacher = true
checkpoint_every_steps = 5
dist_timeout = 20

[data]
name = "synthetic"
batch_size = {batch}
options = {{ num_samples = {samples}, num_test_samples = 101, num_classes = 4, shape = [8] }}

[student]
name = "mlp"
kwargs = {{ in_features = 8, hidden = [16] }}

[teacher]
name = "mlp"
kwargs = {{ in_features = 8, hidden = [16] }}
checkpoint = "{teacher}"
"""


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp: Path, name: str) -> Path:
    teacher = tmp / "teacher.pt"
    if not teacher.exists():
        torch.manual_seed(3)  # a random teacher is as good as any for checking the plumbing
        torch.save(build_model("mlp", 4, in_features=8, hidden=[16]).state_dict(), teacher)
    path = tmp / f"{name}.toml"
    run_dir, teacher_path = (tmp / name).as_posix(), teacher.as_posix()
    path.write_text(CONFIG.format(run_dir=run_dir, teacher=teacher_path, epochs=EPOCHS, batch=BATCH, samples=SAMPLES))
    return path


def _launch(config: Path, *args: str, nproc: int = 2) -> subprocess.Popen[str]:
    """``torchrun --nproc_per_node=2 -m deepkd train CONFIG``."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(_port()), "-m", "deepkd", "train", str(config)]
    return subprocess.Popen(
        [*command, *args],
        cwd=config.parent,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _workers(proc: subprocess.Popen[str]) -> dict[str, int]:
    """The pids of torchrun's worker processes by rank (torchrun starts them in sessions of their own)."""
    ranks = {}
    for child in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split():
        try:
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        rank = next((e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"RANK=")), None)
        if rank is not None:
            ranks[rank] = int(child)
    return ranks


def _kill_all(proc: subprocess.Popen[str]) -> None:
    """``kill -9`` the launcher and every rank at once, as a lost node would."""
    pids = [*_workers(proc).values(), proc.pid]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _finish(proc: subprocess.Popen[str], timeout: float = 180) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_all(proc)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within {timeout}s:\n{out[-3000:]}")
    return proc.returncode, out


def _wait_for(predicate, proc: subprocess.Popen[str], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {what}:\n{proc.communicate()[0][-3000:]}")
        if time.monotonic() > deadline:
            _kill_all(proc)
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def _steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return sum(r.get("kind") == "step" for r in read_metrics(path)) if path.exists() else 0


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def _record(epoch: dict) -> str:
    """An epoch record without its wall time, comparable with its NaNs."""
    return json.dumps({k: v for k, v in epoch.items() if k != "time"}, sort_keys=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2-rank run: (its config, its run directory, torchrun's output)."""
    tmp = tmp_path_factory.mktemp("reference")
    config = _config(tmp, "reference")
    code, out = _finish(_launch(config))
    assert code == 0, out[-3000:]
    return config, tmp / "reference", out


def test_two_ranks_shard_the_data_reduce_the_metrics_and_log_once(reference):
    config, run_dir, out = reference
    assert out.count("best test top-1") == 1 and "run directory" in out  # rank 0 only prints
    history = load_checkpoint(run_dir / "latest.pt")["history"]["epochs"]
    assert [r["step"] for r in history] == [STEPS // EPOCHS * e for e in range(1, EPOCHS + 1)]
    for record in history:  # every sample of the 4000 counted once (2 × 125 × 16 = 4000): sums over ranks
        assert (record["train_top1"] * SAMPLES) == pytest.approx(round(record["train_top1"] * SAMPLES), abs=1e-6)
    # the test set (101 samples, shards of 51 and 50) is evaluated once over the ranks: exactly the whole set's metrics
    whole = evaluate_checkpoint(run_dir / "student.pt", config=load_experiment(config), device="cpu")
    assert history[-1]["test_top1"] == pytest.approx(whole["test_top1"], abs=1e-12)
    assert history[-1]["test_loss"] == pytest.approx(whole["test_loss"], rel=1e-5)
    steps = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))  # one log, written by rank 0


def test_kill_9_mid_epoch_loses_at_most_checkpoint_every_steps_and_resumes_exactly(reference, tmp_path):
    _, ref_dir, _ = reference
    config = _config(tmp_path, "crash")
    run_dir = tmp_path / "crash"
    proc = _launch(config)

    def mid_epoch_checkpoint() -> bool:
        try:
            state = torch.load(run_dir / "latest.pt", weights_only=True)
        except Exception:  # not there yet
            return False
        return bool(state["batches_done"] > 0 and state["epoch"] >= 1)

    _wait_for(mid_epoch_checkpoint, proc, "a mid-epoch checkpoint in the second epoch")
    _kill_all(proc)
    proc.communicate()
    state = load_checkpoint(run_dir / "latest.pt")
    assert 0 < state["global_step"] < STEPS and state["global_step"] % 5 == 0
    code, out = _finish(_launch(config, "--resume"))
    assert code == 0, out[-3000:]
    _assert_same_weights(run_dir / "student.pt", ref_dir / "student.pt")
    resumed, ref = (load_checkpoint(d / "latest.pt")["history"]["epochs"] for d in (run_dir, ref_dir))
    for a, b in zip(resumed, ref, strict=True):
        assert _record(a) == _record(b)


def test_sigterm_to_torchrun_checkpoints_at_the_next_step_and_resume_continues_exactly(tmp_path):
    # A stop signal checkpoints at whatever step it arrives. Under the default sync = "step" each rank's local
    # momentum buffers are replaced by their mean at a checkpoint (only the mean enters the update), which the
    # uninterrupted run does not do at that step: equal up to float rounding. With sync = "grads" the buffers are
    # global on every rank, so this test can ask for bit-for-bit equality with an uninterrupted run.
    grads = "train.sync=grads"
    ref_config = _config(tmp_path, "reference_grads")
    code, out = _finish(_launch(ref_config, grads))
    assert code == 0, out[-3000:]
    ref_dir = tmp_path / "reference_grads"
    config = _config(tmp_path, "preempted")
    run_dir = tmp_path / "preempted"
    proc = _launch(config, grads)
    _wait_for(lambda: _steps_logged(run_dir) >= 140, proc, "step 140")
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
    code, out = _finish(proc, timeout=60)
    assert "deepkd: stopped by SIGTERM after step" in out, out[-3000:]
    state = load_checkpoint(run_dir / "latest.pt")
    assert 140 <= state["global_step"] < STEPS
    assert f"after step {state['global_step']} " in out  # the step at which the checkpoint was taken
    # the ranks exit with status 0; torchrun itself, signalled, raises its SignalException and exits with 1
    assert code == 1 and "SignalException" in out and f'File "{ROOT / "deepkd"}' not in out, out[-3000:]
    code, out = _finish(_launch(config, "--resume", grads))
    assert code == 0, out[-3000:]
    _assert_same_weights(run_dir / "student.pt", ref_dir / "student.pt")


def test_a_rank_that_dies_ends_the_run_with_an_error_instead_of_a_hang(tmp_path):
    config = _config(tmp_path, "dead")
    proc = _launch(config)
    run_dir = tmp_path / "dead"
    _wait_for(lambda: _steps_logged(run_dir) >= 20, proc, "step 20")
    ranks = _workers(proc)
    assert set(ranks) == {"0", "1"}, ranks
    start = time.monotonic()
    os.kill(ranks["1"], signal.SIGKILL)
    code, out = _finish(proc, timeout=90)
    assert code != 0
    assert time.monotonic() - start < 20 + 30  # within the collective timeout (and torchrun's 30 s grace)
    assert "SIGKILL" in out and "rank 0 of 2" in out, out[-3000:]  # torchrun names the dead one; rank 0 says why


# ------------------------------------------------------------------ the same in one process, in this interpreter
def _trainer(run_dir: Path, every: int = 0) -> tuple[Trainer, DataLoader, DataLoader]:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 4))
    train, test = make_loaders(synthetic(96, 4, (8,), 0), synthetic(40, 4, (8,), 0, train=False), 16, seed=2)
    recipe = deepkd.compose(loss="ce", momentum=deepkd.GSNR(interval=2), mask="none")
    config = TrainConfig(epochs=2, lr=0.1, schedule=Constant(), progress=False, checkpoint_every_steps=every)
    return Trainer(student, None, recipe, config, run_dir=run_dir, seed=2), train, test


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_a_stop_signal_checkpoints_mid_epoch_and_resume_is_bit_for_bit(tmp_path, sig):
    reference, train, test = _trainer(tmp_path / "ref")
    reference.fit(train, test)
    trainer, train, test = _trainer(tmp_path / "run")
    trainer.callbacks.append(
        deepkd.LambdaCallback(on_step_end=lambda t, out: t.global_step == 9 and os.kill(os.getpid(), sig))
    )
    history = trainer.fit(train, test)
    assert history.interrupted and trainer.global_step == 9 and len(history) == 1
    assert signal.getsignal(sig) != trainer._interrupts._handle  # the previous handler is back
    state = load_checkpoint(tmp_path / "run" / "latest.pt")
    assert (state["epoch"], state["global_step"], state["batches_done"]) == (1, 9, 3)
    resumed, train, test = _trainer(tmp_path / "run")
    history = resumed.fit(train, test, resume=True)
    assert not history.interrupted and len(history) == 2
    for a, b in zip(resumed.history.epochs, reference.history.epochs, strict=True):
        assert _record(a) == _record(b)
    for a, b in zip(resumed.student.state_dict().values(), reference.student.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_every_steps_writes_latest_mid_epoch(tmp_path):
    seen: list[int] = []

    def look(trainer: Trainer, out: object) -> None:
        if (tmp_path / "latest.pt").exists():
            seen.append(load_checkpoint(tmp_path / "latest.pt")["global_step"])

    trainer, train, test = _trainer(tmp_path, every=4)
    trainer.callbacks.append(deepkd.LambdaCallback(on_step_end=look))
    trainer.fit(train, test)
    # 6 steps an epoch: written after steps 4 and 8 (mid-epoch) and 6 and 12 (epoch ends; 12 is no mid-epoch copy)
    assert sorted(set(seen)) == [4, 6, 8] and load_checkpoint(tmp_path / "latest.pt")["global_step"] == 12


def test_shard_sampler_covers_every_sample_once():
    shards = [list(ShardSampler(11, r, 3)) for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(11)) and [len(s) for s in shards] == [4, 4, 3]


def test_sync_batchnorm_on_cpu_ranks_is_refused_with_a_clear_error(tmp_path):
    code, out = _finish(_launch(_config(tmp_path, "syncbn"), "train.sync_batchnorm=true"))
    assert code != 0 and "deepkd: error: rank 0: train.sync_batchnorm = true needs CUDA" in out, out[-3000:]


def test_learning_rate_scaling_is_explicit():
    assert TrainConfig(lr=0.1).optimizer_kwargs(4)["lr"] == 0.1
    assert TrainConfig(lr=0.1, scale_lr="linear").optimizer_kwargs(4)["lr"] == pytest.approx(0.4)
    assert TrainConfig(lr=0.1, scale_lr="sqrt").optimizer_kwargs(4)["lr"] == pytest.approx(0.2)
    student = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    assert deepkd.launch.sync_batchnorm(student, True) is student  # one process: nothing to synchronise
