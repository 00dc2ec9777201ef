"""The trainer's parts on their own: the run directory, the checkpointer's place among the callbacks, the view
callbacks get, the teacher source, the loop's batch handling, and the config's optimizer arguments."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import deepkd
from deepkd.callbacks import Callback, Checkpointer, LambdaCallback, TrainerView
from deepkd.checkpoint import CONFIG_FILE, LATEST, RunDir, check_resumable, check_state_dict, load_checkpoint
from deepkd.data import IndexedDataset, count_batches, seed_loader, steps_per_epoch, synthetic, unpack
from deepkd.errors import CheckpointError, ConfigError, DataError, InputError
from deepkd.logs import METRICS_FILE, JsonlLogger, ProgressBar, read_metrics
from deepkd.metrics import History
from deepkd.optim import DistillOptimizer
from deepkd.schedules import Constant
from deepkd.teacher import TeacherSource, freeze, probe_class_count, teacher_for
from deepkd.trainer import TrainConfig, Trainer

CPU = torch.device("cpu")
KD = deepkd.compose("kd", "sgd", "none")


def _loader(n: int = 32, classes: int = 3, indexed: bool = False) -> DataLoader:
    data = synthetic(n, classes, (4,), seed=0)
    return DataLoader(
        IndexedDataset(data) if indexed else data, batch_size=8, shuffle=True, generator=torch.Generator()
    )


def _config(**changes: Any) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "lr": 0.1, "schedule": Constant(), "progress": False, **changes})


# ------------------------------------------------------------------ run directory
def test_run_dir_refuses_an_existing_run_without_resume_or_overwrite(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / LATEST).write_bytes(b"a run")
    loaded = []
    with pytest.raises(ConfigError, match="already holds a run"):
        run.open(resume=False, overwrite=False, run_config={"a": 1}, load=loaded.append)
    assert not (tmp_path / CONFIG_FILE).exists() and not loaded  # refused before writing anything
    run.open(resume=False, overwrite=True, run_config={"a": 1}, load=loaded.append)
    assert (tmp_path / CONFIG_FILE).read_text().strip() == "a = 1" and not loaded


def test_run_dir_loads_before_it_writes_the_config(tmp_path):
    trainer = Trainer(nn.Linear(4, 3), nn.Linear(4, 3), KD, _config(), run_dir=tmp_path)
    trainer.fit(_loader())
    old_config = (tmp_path / CONFIG_FILE).read_text()

    def refuse(state: dict[str, Any]) -> None:
        assert state["epoch"] == 2
        raise CheckpointError("no")

    with pytest.raises(CheckpointError, match="no"):
        RunDir(tmp_path).open(resume=True, overwrite=False, run_config={"other": 1}, load=refuse)
    assert (tmp_path / CONFIG_FILE).read_text() == old_config


def test_run_dir_writes_best_then_latest_then_student(tmp_path, monkeypatch):
    import deepkd.checkpoint as ckpt

    writes = []
    monkeypatch.setattr(ckpt, "save_atomic", lambda obj, path: writes.append(("save", Path(path).name)))
    monkeypatch.setattr(ckpt, "copy_atomic", lambda src, dst: writes.append(("copy", Path(dst).name)))
    RunDir(tmp_path).save({"student": {}}, best=True)
    RunDir(tmp_path).save({"student": {}}, best=False)
    assert writes == [
        ("save", "best.pt"),
        ("copy", "latest.pt"),
        ("save", "student.pt"),
        ("save", "latest.pt"),
        ("save", "student.pt"),
    ]


def test_check_resumable_names_the_shape_and_step_mismatches():
    student = nn.Linear(4, 3)
    state = {"student": student.state_dict(), "epoch": 2, "global_step": 8}
    assert check_resumable(state, student, steps_per_epoch=4) == (2, 8)
    with pytest.raises(CheckpointError, match="8 steps in 2 epochs, but this train_loader has 5 batches"):
        check_resumable(state, student, steps_per_epoch=5)
    with pytest.raises(CheckpointError, match=r"weight: saved \(3, 4\), model \(2, 4\)"):
        check_state_dict(nn.Linear(4, 2), state["student"])
    with pytest.raises(CheckpointError, match="malformed"):
        check_state_dict(student, [1, 2])  # type: ignore[arg-type]


# ------------------------------------------------------------------ the checkpointer runs after the callbacks
def test_the_checkpointer_runs_last_and_saves_what_the_callbacks_added(tmp_path):
    seen_on_disk = []

    def annotate(trainer, metrics):
        latest = tmp_path / LATEST
        seen_on_disk.append(load_checkpoint(latest)["epoch"] if latest.exists() else None)
        metrics["note"] = f"epoch {trainer.epoch}"
        trainer.should_stop = True  # stops after this epoch, whose checkpoint is still written

    user = LambdaCallback(on_epoch_end=annotate)
    trainer = Trainer(nn.Linear(4, 3), nn.Linear(4, 3), KD, _config(), run_dir=tmp_path, callbacks=[user])
    assert isinstance(trainer.callbacks[-1], Checkpointer) and trainer.callbacks[-2] is user
    trainer.fit(_loader(), _loader())
    assert seen_on_disk == [None]  # the user callback ran before epoch 1 was saved
    saved = load_checkpoint(tmp_path / LATEST)
    assert saved["epoch"] == 1 and saved["history"]["epochs"][-1]["note"] == "epoch 1"


def test_no_run_dir_means_no_checkpointer():
    trainer = Trainer(nn.Linear(4, 3), None, deepkd.compose("ce", "sgd", "none"), _config())
    assert not any(isinstance(c, Checkpointer) for c in trainer.callbacks)


# ------------------------------------------------------------------ what callbacks see
def test_the_trainer_is_a_trainer_view():
    trainer = Trainer(nn.Linear(4, 3), nn.Linear(4, 3), KD, _config())
    assert isinstance(trainer, TrainerView)


class FakeView:
    """Only what :class:`TrainerView` promises: enough to drive the built-in callbacks without a trainer."""

    def __init__(self, run_dir: Path) -> None:
        self.epoch, self.global_step, self.last_lr, self.steps_per_epoch = 1, 4, 0.1, 4
        self.should_stop = False
        self.config = TrainConfig(epochs=3)
        self.history = History()
        self.run_dir = run_dir
        self.student, self.teacher = nn.Linear(2, 2), None
        self.optimizer = DistillOptimizer(self.student.parameters(), deepkd.compose("ce", "sgd", "none"), lr=0.1)

    def evaluate(self, loader: Any) -> dict[str, float]:
        return {"test_top1": 1.0}

    def state_dict(self) -> dict[str, Any]:
        return {"student": self.student.state_dict(), "epoch": self.epoch, "history": self.history.to_dict()}


def test_callbacks_need_nothing_but_a_trainer_view(tmp_path, capsys):
    view = FakeView(tmp_path)
    assert isinstance(view, TrainerView)
    record = {"kind": "epoch", "epoch": 1, "step": 4, "lr": 0.1, "loss": {"total": 1.0}, "train_top1": 0.5}
    record |= {"k": 2, "phase": "easy", "time": 0.1, "test_top1": 0.75}
    view.history.epochs.append(record)

    class Stop(Callback):
        def on_epoch_end(self, trainer: TrainerView, metrics: dict[str, Any]) -> None:
            trainer.should_stop = trainer.evaluate(None)["test_top1"] > 0.9

    callbacks = [ProgressBar(enabled=False), JsonlLogger(tmp_path), Stop(), Checkpointer(RunDir(tmp_path))]
    for callback in callbacks:
        callback.on_fit_start(view)
        callback.on_epoch_start(view)
    for callback in callbacks:
        callback.on_epoch_end(view, record)
    assert view.should_stop
    assert read_metrics(tmp_path / METRICS_FILE) == [record]
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 1  # epoch 1 holds the best top-1
    assert (tmp_path / "latest.pt").exists() and (tmp_path / "student.pt").exists()


# ------------------------------------------------------------------ the teacher
def test_teacher_for_freezes_the_teacher_a_loss_needs_and_drops_the_others():
    teacher = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5)).train()
    assert teacher_for(deepkd.CE(), teacher, CPU) is None
    frozen = teacher_for(deepkd.KD(), teacher, CPU)
    assert frozen is teacher and not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ConfigError, match="'kd' loss distils from a teacher"):
        teacher_for(deepkd.KD(), None, CPU)


def test_teacher_source_reads_the_cache_by_index_or_runs_the_teacher_in_eval_mode():
    teacher = freeze(nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.9)))
    x = torch.randn(5, 4)
    live = TeacherSource(teacher, CPU, "fp32")
    teacher.train()  # a stray train() changes nothing: every call puts it back in eval mode
    assert torch.equal(live(x, None), live(x, None)) and not live.caching
    assert TeacherSource(None, CPU, "fp32", cache_teacher=True)(x, torch.arange(5)) is None
    cache = torch.arange(12.0).reshape(4, 3)
    cached = TeacherSource(teacher, CPU, "fp32", cache_teacher=True, logits=cache)
    assert torch.equal(cached(x, torch.tensor([3, 0])), cache[[3, 0]])
    with pytest.raises(ConfigError, match="set cache_teacher = true"):
        TeacherSource(teacher, CPU, "fp32", logits=cache)
    with pytest.raises(InputError, match=r"must be \[samples, classes\]"):
        TeacherSource(teacher, CPU, "fp32", cache_teacher=True, logits=torch.zeros(4))


def test_teacher_source_fills_the_cache_in_data_set_order_and_checks_a_given_one():
    teacher = freeze(nn.Linear(4, 3))
    loader = _loader(indexed=True)
    source = TeacherSource(teacher, CPU, "fp32", cache_teacher=True)
    source.prepare(loader, 3)
    assert source.cache is not None
    torch.testing.assert_close(source.cache, teacher(synthetic(32, 3, (4,), seed=0).inputs))
    wrong = TeacherSource(teacher, CPU, "fp32", cache_teacher=True, logits=torch.zeros(31, 3))
    with pytest.raises(InputError, match=r"\(31, 3\).*needs \(32, 3\)"):
        wrong.prepare(loader, 3)


def test_probe_class_count_leaves_the_student_as_it_was_and_names_the_problems():
    student = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).train()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    assert probe_class_count(student, nn.Linear(4, 3), _loader(), device=CPU, precision="fp32") == 3
    assert student.training and all(torch.equal(v, before[k]) for k, v in student.state_dict().items())
    with pytest.raises(InputError, match="the teacher predicts 5 classes"):
        probe_class_count(student, nn.Linear(4, 5), _loader(), device=CPU, precision="fp32")
    with pytest.raises(ConfigError, match="IndexedDataset"):
        probe_class_count(student, None, _loader(), device=CPU, precision="fp32", needs_index=True)
    with pytest.raises(DataError, match="the train_loader is empty"):
        probe_class_count(student, None, [], device=CPU, precision="fp32")


# ------------------------------------------------------------------ batches
def test_seed_loader_makes_the_order_a_function_of_seed_and_epoch():
    def order(loader: DataLoader, seed: int, epoch: int) -> list[int]:
        seed_loader(loader, seed, epoch)
        return [int(i) for _, _, index in loader for i in index]

    a, b = _loader(indexed=True), _loader(indexed=True)
    torch.rand(7, generator=b.generator)  # whatever state a generator was left in
    assert order(a, 3, 2) == order(b, 3, 2) != order(a, 3, 1)
    unseeded = DataLoader(IndexedDataset(synthetic(32, 3, (4,), seed=0)), batch_size=8, shuffle=True)
    first = order(unseeded, 3, 2)
    torch.rand(7)  # the sampler got a generator of its own: the global RNG does not matter
    assert order(unseeded, 3, 2) == first != order(unseeded, 3, 1)


def test_unpack_and_the_batch_counts_refuse_what_the_loop_cannot_use():
    _, y, index = unpack([torch.zeros(2, 4), [1, 0], torch.tensor([5, 6])], CPU)
    assert y.tolist() == [1, 0] and index is not None and index.tolist() == [5, 6]
    with pytest.raises(InputError, match="got list of length 1"):
        unpack([torch.zeros(2)], CPU)
    empty = DataLoader(TensorDataset(torch.zeros(0, 4), torch.zeros(0)), batch_size=2)
    with pytest.raises(DataError, match="the eval_loader is empty"):
        count_batches(empty, "eval_loader")
    assert count_batches(iter([]), "eval_loader") is None and steps_per_epoch(_loader()) == 4
    with pytest.raises(ConfigError, match="the train_loader must have a length"):
        steps_per_epoch(iter([]))


# ------------------------------------------------------------------ the config
def test_optimizer_kwargs_are_distill_optimizer_arguments_set_from_the_config():
    config = TrainConfig(lr=0.2, momentum=0.5, nesterov=True, nonfinite="skip")
    kwargs = config.optimizer_kwargs()
    assert set(kwargs) <= set(inspect.signature(DistillOptimizer).parameters)
    assert kwargs == {
        "lr": 0.2,
        "momentum": 0.5,
        "weight_decay": config.weight_decay,
        "dampening": 0.0,
        "nesterov": True,
        "decomposition": "sequential",
        "track_gsnr": True,
        "nonfinite": "skip",
        "sync": "step",
    }
    trainer = Trainer(nn.Linear(4, 3), None, deepkd.compose("ce", "sgd", "none"), _config(lr=0.3, weight_decay=0.0))
    group = trainer.optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"], trainer.optimizer.nonfinite) == (0.3, 0.0, "raise")
    assert not math.isnan(group["momentum"])


# ------------------------------------------------------------------ one object, composed
def test_every_attribute_of_the_trainer_is_created_in_init(tmp_path):
    trainer = Trainer(nn.Linear(4, 3), nn.Linear(4, 3), KD, _config(), run_dir=tmp_path)
    before = set(vars(trainer))
    trainer.fit(_loader(), _loader())
    assert set(vars(trainer)) == before
    assert not any(base is not object for base in Trainer.__mro__[1:])  # no mixin: the state half is composed


def test_the_trainer_state_before_fit_is_a_clear_error():
    trainer = Trainer(nn.Linear(4, 3), nn.Linear(4, 3), KD, _config())
    with pytest.raises(deepkd.DeepKDError, match=r"no learning-rate scheduler before fit\(\)"):
        trainer.state_dict()


def test_resuming_with_other_settings_is_refused_listed_or_accepted_and_printed(tmp_path, capsys):
    Trainer(nn.Linear(4, 3), nn.Linear(4, 3), KD, _config(), run_dir=tmp_path).fit(_loader())
    saved = (tmp_path / CONFIG_FILE).read_text()
    more = Trainer(nn.Linear(4, 3), nn.Linear(4, 3), KD, _config(epochs=3, lr=0.2), run_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"would change train\.epochs: 2 -> 3; train\.lr: 0\.1 -> 0\.2\. Resume"):
        more.fit(_loader(), resume=True)
    assert (tmp_path / CONFIG_FILE).read_text() == saved  # refused: nothing changed on disk
    capsys.readouterr()
    harmless = Trainer(nn.Linear(4, 3), nn.Linear(4, 3), KD, _config(log_every=7), run_dir=tmp_path)
    harmless.fit(_loader(), resume=True)  # a setting that changes no number: said, not refused
    assert "deepkd: resuming with changed settings: train.log_every: 50 -> 7" in capsys.readouterr().err
    allowed = Trainer(nn.Linear(4, 3), nn.Linear(4, 3), KD, _config(epochs=3), run_dir=tmp_path)
    history = allowed.fit(_loader(), resume=True, allow_changes=True)
    assert len(history) == 3 and "train.epochs: 2 -> 3" in capsys.readouterr().err


def test_momentum_out_of_range_for_the_strategy_names_the_train_setting():
    gsnr = deepkd.compose("kd", "gsnr", "none")
    with pytest.raises(ConfigError, match=r"momentum = 0\.95 with the 'gsnr' strategy's.*@ \$\.train\.momentum"):
        Trainer(nn.Linear(4, 3), nn.Linear(4, 3), gsnr, _config(momentum=0.95))
