"""The Trainer: every recipe through one loop, a frozen teacher, exact resume, logs, bad inputs, cache, AMP."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import sys
import tomllib

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import deepkd
from deepkd import config as cfg
from deepkd.callbacks import Callback, LambdaCallback
from deepkd.checkpoint import load_checkpoint
from deepkd.data import IndexedDataset, synthetic
from deepkd.errors import CheckpointError, ConfigError, DataError, InputError, NonFiniteLossError
from deepkd.logs import read_metrics
from deepkd.schedules import Constant, Step
from deepkd.trainer import TrainConfig, Trainer
from deepkd.utils import seed_everything

CLASSES, FEATURES = 5, 8
DEEPKD = deepkd.compose(
    loss=deepkd.DKD(warmup=2),
    momentum=deepkd.GSNR(interval=2),
    mask=deepkd.DynamicMask(thresholds=(0.25, 0.5), horizon=2),
)


def mlp(seed: int, dropout: float = 0.0, classes: int = CLASSES) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(FEATURES, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, classes)
    )


def loaders(n: int = 96, batch_size: int = 16, indexed: bool = False, seed: int = 0):
    train, test = synthetic(n, CLASSES, (FEATURES,), seed), synthetic(48, CLASSES, (FEATURES,), seed, train=False)
    train_set = IndexedDataset(train) if indexed else train
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=torch.Generator())
    return train_loader, DataLoader(test, batch_size=32)


def config(**changes) -> TrainConfig:
    base = dict(epochs=2, lr=0.1, schedule=Constant(), progress=False, log_every=2)
    return TrainConfig(**{**base, **changes})


def fit(
    recipe=DEEPKD,
    *,
    epochs=2,
    run_dir=None,
    resume=False,
    overwrite=False,
    callbacks=(),
    student_seed=1,
    dropout=0.0,
    train_loader=None,
    **changes,
):
    teacher = mlp(0) if recipe.loss.needs_teacher else None
    trainer = Trainer(
        mlp(student_seed, dropout),
        teacher,
        recipe,
        config(epochs=epochs, **changes),
        run_dir=run_dir,
        seed=3,
        callbacks=callbacks,
    )
    train, test = loaders() if train_loader is None else (train_loader, loaders()[1])
    return trainer, trainer.fit(train, test, resume=resume, overwrite=overwrite)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ one loop for every recipe
@pytest.mark.parametrize(
    ("loss", "momentum", "mask"), list(itertools.product(deepkd.LOSSES, deepkd.MOMENTA, deepkd.MASKS))
)
def test_every_registered_recipe_trains(loss, momentum, mask):
    recipe = deepkd.compose(loss, momentum, mask)
    before = [p.detach().clone() for p in mlp(1).parameters()]
    trainer, history = fit(recipe)
    assert len(history) == 2 and trainer.global_step == 12
    last = history.epochs[-1]
    assert set(last["loss"]) == {*recipe.loss.part_names, "total"}
    assert all(math.isfinite(v) for v in last["loss"].values())
    assert set(last["momentum"]) == set(recipe.loss.part_names)
    assert 0 <= last["test_top1"] <= last["test_top5"] <= 1
    assert (trainer.teacher is None) == (not recipe.loss.needs_teacher)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.student.parameters()))


def test_the_optimizer_gets_the_epoch_counted_from_one():
    trainer = Trainer(mlp(1), mlp(0), DEEPKD, config(epochs=3))
    epochs = []
    step = trainer.optimizer.distill_step

    def spy(*args, epoch):
        epochs.append(epoch)
        return step(*args, epoch=epoch)

    trainer.optimizer.distill_step = spy
    trainer.fit(*loaders())
    assert epochs == [1] * 6 + [2] * 6 + [3] * 6


def test_teacher_is_ignored_when_the_loss_needs_none():
    trainer = Trainer(mlp(1), mlp(0), deepkd.compose("ce", "sgd", "none"), config())
    assert trainer.teacher is None


def test_a_distillation_loss_without_teacher_is_refused():
    with pytest.raises(ConfigError, match="'kd' loss distils from a teacher"):
        Trainer(mlp(1), None, deepkd.compose("kd", "sgd", "none"), config())


# ------------------------------------------------------------------ the teacher stays frozen
def test_teacher_never_changes_and_stays_in_eval_even_if_train_is_called():
    teacher, student = mlp(0, dropout=0.5), mlp(1)
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    modes = {"teacher": [], "student": []}
    teacher.register_forward_hook(lambda m, i, o: modes["teacher"].append(m.training))
    student.register_forward_hook(lambda m, i, o: modes["student"].append(m.training))

    def meddle(trainer, out):
        trainer.teacher.train()  # a user (or a careless callback) flips the teacher...
        trainer.student.train()

    trainer = Trainer(student, teacher, DEEPKD, config(), callbacks=[LambdaCallback(on_step_end=meddle)])
    trainer.fit(*loaders())
    assert modes["teacher"] and not any(modes["teacher"])  # ...yet every teacher forward ran in eval mode
    assert all(p.requires_grad is False and p.grad is None for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, frozen[key]), key  # BatchNorm statistics included
    # the student trained in train mode (evaluation switches it to eval) and its BatchNorm statistics moved
    assert modes["student"].count(True) >= trainer.global_step
    assert int(student[1].num_batches_tracked) == trainer.global_step


# ------------------------------------------------------------------ resume is exact
def _state(trainer: Trainer):
    opt = trainer.optimizer.state_dict()["deepkd"]
    return trainer.student.state_dict(), opt


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path):
    kw = dict(epochs=4, dropout=0.3, schedule=Step(milestones=(3,)))  # dropout draws from the global RNG
    seed_everything(0)
    full, history = fit(run_dir=tmp_path / "full", **kw)
    phases = {r["phase"] for r in history.epochs}
    assert len(phases) > 1 and len({tuple(r["momentum"].values()) for r in history.epochs}) > 1  # mask and GSNR moved

    def stop_after_two(trainer, metrics):
        trainer.should_stop = metrics["epoch"] == 2

    seed_everything(0)
    fit(run_dir=tmp_path / "split", callbacks=[LambdaCallback(on_epoch_end=stop_after_two)], **kw)
    seed_everything(123)  # nothing below may depend on the state of the process
    resumed, history2 = fit(run_dir=tmp_path / "split", resume=True, student_seed=99, **kw)
    assert resumed.global_step == full.global_step
    _assert_same(_state(full), _state(resumed))
    assert history2["test_top1"] == history["test_top1"]
    assert history2["loss"] == history["loss"]


def test_a_crash_mid_epoch_loses_at_most_that_epoch(tmp_path):
    kw = dict(epochs=3, run_dir=tmp_path / "run")
    full, _ = fit(run_dir=tmp_path / "full", epochs=3)

    def crash(trainer, out):
        if trainer.global_step == 6 + 6 + 3:  # half-way through epoch 3
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(callbacks=[LambdaCallback(on_step_end=crash)], **kw)
    assert load_checkpoint(tmp_path / "run" / "latest.pt")["epoch"] == 2
    resumed, _ = fit(resume=True, **kw)
    _assert_same(_state(full), _state(resumed))
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == list(range(2, 19, 2))  # the lost epoch's step records were dropped, none duplicated
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3]


def test_data_order_depends_only_on_seed_and_epoch():
    results = []
    for skip in (0, 5):
        train, test = loaders()
        torch.rand(skip, generator=train.generator)  # whatever state the loader's generator was left in
        trainer = Trainer(mlp(1), mlp(0), DEEPKD, config(), seed=3)
        trainer.fit(train, test)
        results.append(trainer.student.state_dict())
    _assert_same(*results)


def test_the_mask_sees_every_training_step():
    readings = []

    def read(trainer, metrics):
        state = trainer.optimizer.mask_state
        readings.append((int(state.steps), trainer.global_step, float(state.accuracy)))

    fit(callbacks=[LambdaCallback(on_epoch_end=read)])
    assert len(readings) == 2
    for steps, global_step, accuracy in readings:
        assert steps == global_step and 0.0 < accuracy < 1.0


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    _, history = fit(run_dir=tmp_path / "new", resume=True)
    assert len(history) == 2 and (tmp_path / "new" / "latest.pt").exists()


# ------------------------------------------------------------------ checkpoints and logs
def test_checkpoints_are_weights_only_and_complete(tmp_path):
    trainer, history = fit(run_dir=tmp_path, epochs=3)
    latest = torch.load(tmp_path / "latest.pt", weights_only=True)
    assert latest["epoch"] == 3 and latest["global_step"] == 18 and latest["version"] == deepkd.__version__
    assert latest["recipe"] == cfg.unstructure(DEEPKD)
    assert latest["config"]["train"]["epochs"] == 3 and isinstance(latest["config"], dict)
    assert set(latest["rng"]) == {"python", "numpy", "torch", "cuda", "generator"}
    assert latest["best"] == {"top1": history.best_top1, "epoch": history.best_epoch}
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["epoch"] == history.best_epoch
    student = mlp(5)
    student.load_state_dict(torch.load(tmp_path / "student.pt", weights_only=True))  # a plain state_dict
    _assert_same(student.state_dict(), trainer.student.state_dict())
    assert not list(tmp_path.glob(".*.tmp"))


def _nan_to_none(obj):
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return None if isinstance(obj, float) and math.isnan(obj) else obj


def test_metrics_jsonl_logs_every_part_momentum_gsnr_and_k(tmp_path):
    trainer, history = fit(run_dir=tmp_path, epochs=2, log_every=4)
    records = read_metrics(tmp_path / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == [4, 8, 12] and [r["epoch"] for r in steps] == [1, 2, 2]
    assert [r["step"] for r in epochs] == [6, 12]
    for r in steps + epochs:
        assert set(r["loss"]) == {"task", "tckd", "nckd", "total"}
        assert set(r["momentum"]) == {"task", "tckd", "nckd"}
        assert set(r["gsnr"]) == {"task", "tckd", "nckd"}
        assert isinstance(r["k"], int) and r["phase"] in {"easy", "transition", "hard"}
    # metrics.jsonl is strict JSON: NaN (e.g. the GSNR of an NCKD masked down to K = 1) is written as null
    assert epochs == _nan_to_none(json.loads(json.dumps(history.epochs)))
    saved = tomllib.loads((tmp_path / "config.toml").read_text())
    assert cfg.structure(saved["recipe"], deepkd.Recipe) == DEEPKD
    assert cfg.structure(saved["train"], TrainConfig) == trainer.config


def test_off_a_terminal_the_progress_is_a_line_every_heartbeat_and_no_bar(tmp_path, capsys, monkeypatch):
    import deepkd.progress

    bars = []
    probe = LambdaCallback(on_step_end=lambda t, out: bars.append(t.callbacks[0].progress.bar))
    monkeypatch.setattr(deepkd.progress, "HEARTBEAT", 0.0)  # a line at every step
    trainer = Trainer(mlp(1), mlp(0), DEEPKD, config(progress=None, log_every=2), callbacks=[probe])
    trainer.fit(*loaders())  # pytest captures stderr: not a terminal
    assert bars and all(bar is None for bar in bars)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch 1/2  step")]
    assert len(lines) == trainer.steps_per_epoch
    assert "step 1/" in lines[0] and "loss" not in lines[0]  # values are read only every log_every steps
    assert "loss" in lines[1] and " k " in lines[1] and "lr" in lines[1]


def test_progress_false_prints_nothing(tmp_path, capsys, monkeypatch):
    import deepkd.progress

    monkeypatch.setattr(deepkd.progress, "HEARTBEAT", 0.0)
    Trainer(mlp(1), mlp(0), DEEPKD, config(progress=False), run_dir=tmp_path).fit(*loaders())
    assert capsys.readouterr().err == ""


def test_training_without_eval_loader_has_no_best_checkpoint(tmp_path, capsys):
    trainer = Trainer(mlp(1), mlp(0), DEEPKD, config(progress=None), run_dir=tmp_path)
    history = trainer.fit(loaders()[0])
    assert history.best_top1 is None and "test_top1" not in history.epochs[-1]
    assert (tmp_path / "latest.pt").exists() and not (tmp_path / "best.pt").exists()
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "test   n/a (best   n/a)" in err


def test_tensorboard_gets_every_numeric_entry(tmp_path, monkeypatch):
    scalars = []

    class Writer:  # stands in for torch.utils.tensorboard.SummaryWriter
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, name, value, step):
            scalars.append((name, step))

        def flush(self):
            pass

        def close(self):
            scalars.append(("closed", None))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", type(sys)("fake"))
    sys.modules["torch.utils.tensorboard"].SummaryWriter = Writer
    fit(run_dir=tmp_path, tensorboard=True, log_every=3)
    names = {name for name, _ in scalars}
    assert {"loss/tckd", "momentum/nckd", "gsnr/task", "k", "lr"} <= names
    assert {"epoch/test_top1", "epoch/train_top5", "epoch/loss/total", "epoch/time"} <= names
    assert sorted({s for n, s in scalars if n == "loss/tckd"}) == [3, 6, 9, 12]
    assert scalars[-1] == ("closed", None)


def test_tensorboard_enabled_but_missing_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match="needs the tensorboard package: pip install tensorboard"):
        Trainer(mlp(1), mlp(0), DEEPKD, config(tensorboard=True), run_dir=tmp_path)


def test_callbacks_run_at_the_named_points():
    calls = []

    class Recorder(Callback):
        def on_fit_start(self, trainer):
            calls.append("fit_start")

        def on_epoch_start(self, trainer):
            calls.append(f"epoch_start {trainer.epoch}")

        def on_step_end(self, trainer, out):
            calls.append("step")

        def on_epoch_end(self, trainer, metrics):
            calls.append(f"epoch_end {metrics['epoch']}")

        def on_fit_end(self, trainer):
            calls.append("fit_end")

    fit(callbacks=[Recorder()])
    epoch = ["step"] * 6
    assert calls == [
        "fit_start",
        "epoch_start 1",
        *epoch,
        "epoch_end 1",
        "epoch_start 2",
        *epoch,
        "epoch_end 2",
        "fit_end",
    ]


# ------------------------------------------------------------------ bad input
def _tensor_loader(x, y, batch_size=16):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=torch.Generator())


def test_labels_out_of_range_are_refused():
    x = torch.randn(32, FEATURES)
    with pytest.raises(InputError, match=r"label 7 is out of range: labels must lie in \[0, 5\)"):
        fit(train_loader=_tensor_loader(x, torch.full((32,), 7)))
    trainer = Trainer(mlp(1), mlp(0), DEEPKD, config())
    with pytest.raises(InputError, match="eval_loader: label -1 is out of range"):
        trainer.fit(loaders()[0], _tensor_loader(x, torch.full((32,), -1)))


def test_teacher_student_class_count_mismatch_names_both_counts():
    trainer = Trainer(mlp(1), mlp(0, classes=7), DEEPKD, config())
    with pytest.raises(InputError, match=r"the teacher predicts 7 classes .* the student 5"):
        trainer.fit(*loaders())


def test_non_finite_loss_raises_naming_step_and_part_or_is_skipped():
    x, y = torch.randn(32, FEATURES), torch.randint(0, CLASSES, (32,))
    x[5] = math.inf
    with pytest.raises(NonFiniteLossError, match=r"step \d+ \(epoch 1\): loss part 'task' is nan"):
        fit(train_loader=_tensor_loader(x, y))
    trainer, history = fit(train_loader=_tensor_loader(x, y), nonfinite="skip")
    assert history["skipped"] == [1, 1]
    assert all(torch.isfinite(p).all() for p in trainer.student.parameters())
    assert trainer.optimizer.steps == trainer.global_step and trainer.optimizer.skipped_steps == 2


def test_empty_loaders_are_named():
    empty = DataLoader(TensorDataset(torch.zeros(0, FEATURES), torch.zeros(0, dtype=torch.long)), batch_size=4)
    trainer = Trainer(mlp(1), mlp(0), DEEPKD, config())
    with pytest.raises(DataError, match="the train_loader is empty"):
        trainer.fit(empty, loaders()[1])
    with pytest.raises(DataError, match="the eval_loader is empty"):
        trainer.fit(loaders()[0], empty)


def test_a_run_dir_with_a_run_is_not_overwritten_by_accident(tmp_path):
    fit(run_dir=tmp_path)
    before = {p.name: digest(p) for p in tmp_path.iterdir()}
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(run_dir=tmp_path)
    assert {p.name: digest(p) for p in tmp_path.iterdir()} == before
    _, history = fit(run_dir=tmp_path, overwrite=True, epochs=1)
    assert len(history) == 1 and len(read_metrics(tmp_path / "metrics.jsonl")) == 4  # 3 step records + 1 epoch


def _saved_run(tmp_path):
    fit(run_dir=tmp_path)
    return {p.name: digest(p) for p in tmp_path.iterdir()}


def test_resuming_another_recipe_or_model_is_refused_and_nothing_is_lost(tmp_path):
    before = _saved_run(tmp_path)
    with pytest.raises(CheckpointError, match="another recipe"):
        fit(deepkd.compose("kd", "dot", "none"), run_dir=tmp_path, resume=True)
    other_model = Trainer(nn.Linear(FEATURES, CLASSES), mlp(0), DEEPKD, config(), run_dir=tmp_path)
    with pytest.raises(CheckpointError, match="does not fit this model: missing weight"):
        other_model.fit(*loaders(), resume=True)
    with pytest.raises(CheckpointError, match="batches per epoch"):
        fit(run_dir=tmp_path, resume=True, train_loader=loaders(batch_size=32)[0])
    assert {p.name: digest(p) for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "corrupt, truncated"),
        (lambda p: p.write_bytes(b"\x00garbage" * 10), "corrupt, truncated"),
        (lambda p: torch.save({**torch.load(p, weights_only=True), "version": "9.0.0"}, p), "cannot resume"),
        (
            lambda p: torch.save({k: v for k, v in torch.load(p, weights_only=True).items() if k != "rng"}, p),
            "lacks rng",
        ),
    ],
    ids=["truncated", "garbage", "major-version", "missing-key"],
)
def test_a_damaged_checkpoint_is_refused_and_left_as_it_is(tmp_path, damage, message):
    _saved_run(tmp_path)
    damage(tmp_path / "latest.pt")
    before = {p.name: digest(p) for p in tmp_path.iterdir()}
    with pytest.raises(CheckpointError, match=message):
        fit(run_dir=tmp_path, resume=True, epochs=3)
    assert {p.name: digest(p) for p in tmp_path.iterdir()} == before


# ------------------------------------------------------------------ teacher cache, AMP, compile
def test_teacher_cache_gives_the_same_training_as_running_the_teacher():
    def run(cache: bool):
        trainer = Trainer(mlp(1), mlp(0), DEEPKD, config(cache_teacher=cache, epochs=3))
        history = trainer.fit(*loaders(indexed=True))
        return trainer, history

    plain, h1 = run(False)
    cached, h2 = run(True)
    for a, b in zip(plain.student.parameters(), cached.student.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert h1["test_top1"] == h2["test_top1"]


def test_teacher_cache_runs_the_teacher_once_per_sample():
    teacher = mlp(0)
    rows = []
    teacher.register_forward_hook(lambda m, i, o: rows.append(len(i[0])))
    trainer = Trainer(mlp(1), teacher, DEEPKD, config(cache_teacher=True, epochs=3))
    trainer.fit(*loaders(indexed=True))
    assert sum(rows) == 96 + 2  # one pass over the 96 samples (+ the 2-sample class-count probe)


def test_teacher_cache_is_refused_for_random_augmentation_or_missing_indices():
    class Augmented(TensorDataset):
        random_augmentation = True

    data = IndexedDataset(Augmented(torch.randn(32, FEATURES), torch.randint(0, CLASSES, (32,))))
    trainer = Trainer(mlp(1), mlp(0), DEEPKD, config(cache_teacher=True))
    with pytest.raises(ConfigError, match="without random augmentation"):
        trainer.fit(DataLoader(data, batch_size=8), loaders()[1])
    with pytest.raises(ConfigError, match="IndexedDataset"):
        trainer.fit(*loaders(indexed=False))


def test_bf16_autocast_runs_on_cpu():
    dtypes = []
    student = mlp(1)
    student[0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    trainer = Trainer(student, mlp(0), DEEPKD, config(precision="bf16"))
    history = trainer.fit(*loaders())
    assert torch.bfloat16 in dtypes
    assert all(math.isfinite(v) for v in history.epochs[-1]["loss"].values())
    assert all(p.dtype == torch.float32 for p in student.parameters())


def test_fp16_is_refused_on_cpu():
    with pytest.raises(ConfigError, match="'fp16' needs a CUDA device"):
        Trainer(mlp(1), mlp(0), DEEPKD, config(precision="fp16", device="cpu"))


def test_compile_flag_wraps_the_student_and_checkpoints_keep_plain_keys():
    trainer = Trainer(mlp(1), mlp(0), DEEPKD, config(compile=True))
    compiled = trainer.student_forward  # what the loop calls
    assert compiled is not trainer.student and type(compiled).__name__ == "OptimizedModule"
    assert set(trainer.student.state_dict()) == set(mlp(2).state_dict())


def test_seed_everything_can_ask_for_deterministic_algorithms():
    try:
        seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        a = torch.rand(3)
        seed_everything(0)
        assert torch.equal(a, torch.rand(3))
    finally:
        torch.use_deterministic_algorithms(False)


def test_precomputed_teacher_logits_equal_the_cache_and_are_checked():
    import deepkd
    from deepkd.data import IndexedDataset, synthetic
    from deepkd.errors import InputError
    from deepkd.trainer import TrainConfig, Trainer

    data = IndexedDataset(synthetic(48, 4, (6,), seed=0))

    def loader():
        return torch.utils.data.DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator())

    def models():
        torch.manual_seed(0)
        return torch.nn.Linear(6, 4), torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))

    recipe = deepkd.compose(loss="kd", momentum="sgd", mask="none")
    config = TrainConfig(epochs=2, lr=0.1, schedule=deepkd.schedules.Constant(), progress=False, cache_teacher=True)
    student, teacher = models()
    Trainer(student, teacher, recipe, config).fit(loader())
    student2, teacher2 = models()
    logits = Trainer(student2, teacher2, recipe, config).compute_teacher_logits(loader())
    assert logits.shape == (48, 4)
    Trainer(student2, teacher2, recipe, config, teacher_logits=logits).fit(loader())
    for a, b in zip(student.parameters(), student2.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(InputError, match=r"\(48, 4\)"):
        Trainer(*models(), recipe, config, teacher_logits=logits[:10]).fit(loader())
