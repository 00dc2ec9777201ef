"""The command line and experiment configs: train, overrides, typos, resume, eval, exit status 2 without traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepkd import config as cfg
from deepkd.checkpoint import read_state_dict
from deepkd.cli import main
from deepkd.errors import ConfigError
from deepkd.experiment import ExperimentConfig, apply_overrides, load_experiment, parse_override, run

CONFIG = """
run_dir = "{run_dir}"
seed = 1

[recipe]
loss = "{loss}"
momentum = "gsnr"
mask = "dynamic"

[train]
epochs = 1
lr = 0.1
schedule = "constant"
progress = false
log_every = 2

[data]
name = "synthetic"
batch_size = 16
options = {{ num_samples = 64, num_test_samples = 32, num_classes = 4, shape = [8] }}

[student]
name = "mlp"
kwargs = {{ in_features = 8, hidden = [16] }}
"""


def write_config(tmp_path: Path, name: str = "student", loss: str = "ce", teacher: str | None = None) -> Path:
    text = CONFIG.format(run_dir=(tmp_path / "runs" / name).as_posix(), loss=loss)
    if teacher is not None:
        text += f'\n[teacher]\nname = "mlp"\nkwargs = {{ in_features = 8, hidden = [16] }}\ncheckpoint = "{teacher}"\n'
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_train_with_overrides_writes_the_run_directory(tmp_path, capsys):
    path = write_config(tmp_path)
    assert main(["train", str(path), "train.epochs=2", "recipe.momentum.delta=0.05", "train.lr=0.05"]) == 0
    run_dir = tmp_path / "runs" / "student"
    assert {"latest.pt", "best.pt", "student.pt", "metrics.jsonl", "config.toml"} <= {p.name for p in run_dir.iterdir()}
    saved = cfg.load(run_dir / "config.toml", ExperimentConfig)
    assert saved == load_experiment(path, ["train.epochs=2", "recipe.momentum.delta=0.05", "train.lr=0.05"])
    assert saved.train.epochs == 2 and saved.recipe.momentum.delta == 0.05 and saved.train.lr == 0.05
    assert "best test top-1" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epochs=3", (["train", "epochs"], 3)),
        ("recipe.momentum.delta=0.05", (["recipe", "momentum", "delta"], 0.05)),
        ("data.name=digits", (["data", "name"], "digits")),
        ("train.progress=true", (["train", "progress"], True)),
        (
            'train.schedule={name = "step", milestones = [2]}',
            (["train", "schedule"], {"name": "step", "milestones": [2]}),
        ),
        ("run_dir=runs/a b", (["run_dir"], "runs/a b")),
    ],
)
def test_overrides_are_toml_literals_or_strings(override, expected):
    assert parse_override(override) == expected


def test_overriding_a_field_of_a_strategy_given_by_name():
    data = {"recipe": {"momentum": "gsnr"}}
    expected = {"recipe": {"momentum": {"name": "gsnr", "delta": 0.05}}}
    assert apply_overrides(data, ["recipe.momentum.delta=0.05"]) == expected
    assert data == {"recipe": {"momentum": "gsnr"}}  # the input is not modified


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epoch=3", "unknown key 'epoch' for TrainConfig; did you mean 'epochs'? Valid keys: epochs, lr"),
        ("recipe.momentum=gsnrr", "Did you mean 'gsnr'?"),
        ("train.epochs=three", "@ $.train.epochs"),
        ("epochs", "must look like key=value"),
        ("seed.value=1", "seed is 1, not a table"),
    ],
)
def test_typos_and_bad_values_exit_2_with_one_clear_line(tmp_path, capsys, override, message):
    assert main(["train", str(write_config(tmp_path)), override]) == 2
    line = error_line(capsys)
    assert line.startswith("deepkd: error: ") and message in line
    assert not (tmp_path / "runs").exists()


def test_missing_config_and_missing_data_exit_2(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml' does not exist" in error_line(capsys)
    path = write_config(tmp_path)
    assert main(["train", str(path), "data.name=fashion_mnist", "data.options={}", f"data.root={tmp_path}"]) == 2
    assert "Fashion-MNIST train files" in error_line(capsys)


def test_resume_and_overwrite_flags(tmp_path, capsys):
    path = write_config(tmp_path)
    assert main(["train", str(path)]) == 0
    assert main(["train", str(path)]) == 2
    assert "already holds a run" in error_line(capsys)
    assert main(["train", str(path), "--resume", "train.epochs=2"]) == 2  # a changed setting is refused, listed
    refused = error_line(capsys)
    assert "train.epochs: 1 -> 2" in refused and "--allow-changes" in refused
    assert main(["train", str(path), "--resume", "train.epochs=2", "--allow-changes"]) == 0  # overrides, then options
    assert "resuming with changed settings: train.epochs: 1 -> 2" in capsys.readouterr().err
    latest = torch.load(tmp_path / "runs" / "student" / "latest.pt", weights_only=True)
    assert latest["epoch"] == 2 and len(latest["history"]["epochs"]) == 2
    assert main(["train", str(path), "--overwrite"]) == 0
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(path), "--bogus"])
    assert exit_info.value.code == 2


def test_a_teacher_run_feeds_a_distillation_run_and_eval_reports_it(tmp_path, capsys):
    assert main(["train", str(write_config(tmp_path, "teacher"))]) == 0
    teacher_weights = (tmp_path / "runs" / "teacher" / "student.pt").as_posix()
    student = write_config(tmp_path, "student", loss="dkd", teacher=teacher_weights)
    assert main(["train", str(student)]) == 0
    capsys.readouterr()

    latest = tmp_path / "runs" / "student" / "latest.pt"
    assert main(["eval", str(latest)]) == 0
    out = capsys.readouterr().out
    final = torch.load(latest, weights_only=True)["history"]["epochs"][-1]
    assert f"top-1 {100 * final['test_top1']:.2f}%  top-5 {100 * final['test_top5']:.2f}%" in out
    assert "(32 test images, epoch 1)" in out

    plain = tmp_path / "runs" / "student" / "student.pt"
    assert main(["eval", str(plain)]) == 2
    assert "not a deepkd training checkpoint" in error_line(capsys)
    assert main(["eval", str(plain), "--config", str(student)]) == 0
    assert f"top-1 {100 * final['test_top1']:.2f}%" in capsys.readouterr().out
    assert read_state_dict(latest).keys() == read_state_dict(plain).keys()

    # the teacher: its weights file given, or the [teacher] checkpoint of the config
    teacher_final = torch.load(tmp_path / "runs" / "teacher" / "latest.pt", weights_only=True)["history"]["epochs"][-1]
    expected = (
        f"teacher mlp: top-1 {100 * teacher_final['test_top1']:.2f}%  top-5 {100 * teacher_final['test_top5']:.2f}%"
    )
    assert main(["eval", teacher_weights, "--config", str(student), "--model", "teacher"]) == 0
    assert capsys.readouterr().out.startswith(expected)
    assert main(["eval", "--config", str(student), "--model", "teacher"]) == 0
    assert capsys.readouterr().out.startswith(expected)


def test_a_distillation_run_needs_a_fitting_teacher(tmp_path, capsys):
    assert main(["train", str(write_config(tmp_path, "s1", loss="kd"))]) == 2
    assert "add a [teacher] table @ $.teacher" in error_line(capsys)
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.nn.Linear(3, 4).state_dict(), wrong)
    assert main(["train", str(write_config(tmp_path, "s2", loss="kd", teacher=wrong.as_posix()))]) == 2
    assert "teacher checkpoint" in error_line(capsys)


def test_run_returns_the_history(tmp_path):
    config = load_experiment(write_config(tmp_path), ["train.epochs=2"])
    history = run(config)
    assert len(history) == 2 and history.best_top1 is not None


def test_load_experiment_reports_every_problem_at_once(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_experiment(write_config(tmp_path), ["train.epoch=3", "data.batch_size=0"])
    assert len(info.value.lines) == 2


def test_python_dash_m_deepkd_exits_2_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "deepkd", "eval", str(tmp_path / "missing.pt")],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 2
    missing = str(tmp_path / "missing.pt")
    assert result.stderr.strip().splitlines() == [f"deepkd: error: checkpoint {missing!r} does not exist"]


# ------------------------------------------------------------------ errors that say what, where and what to do
def test_a_missing_teacher_checkpoint_names_the_teacher_its_path_and_the_run_that_writes_it(tmp_path, capsys):
    teacher_config = write_config(tmp_path, "teacher")
    missing = (tmp_path / "runs" / "teacher" / "student.pt").as_posix()
    student = write_config(tmp_path, "student", loss="kd", teacher=missing)
    options = "options = { num_samples = 64, num_test_samples = 32, num_classes = 4, shape = [8] }\n"
    text = student.read_text().replace(options, "").replace('"synthetic"', '"fashion_mnist"\nroot = "nowhere"')
    student.write_text(text)  # reading the data would fail: the teacher's file is checked before
    assert main(["train", str(student)]) == 2
    line = error_line(capsys)
    assert f"the teacher's checkpoint {missing!r} does not exist" in line
    assert "relative paths start in the working directory" in line
    assert f"train the teacher first: deepkd train {teacher_config}" in line and line.endswith("@ $.teacher.checkpoint")


def test_a_missing_teacher_checkpoint_without_a_config_to_train_it_says_how_to(tmp_path, capsys):
    student = write_config(tmp_path, "student", loss="kd", teacher="nowhere/teacher.pt")
    assert main(["train", str(student)]) == 2
    line = error_line(capsys)
    assert "the teacher's checkpoint 'nowhere/teacher.pt' does not exist" in line
    assert "train the teacher first (a run whose loss needs no teacher" in line


def test_momentum_and_the_strategys_offsets_are_checked_together_when_the_config_is_loaded(tmp_path, capsys):
    path = write_config(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_experiment(path, ["train.momentum=0.95"])  # gsnr's offsets reach 0.95 + 0.075
    (line,) = info.value.lines
    assert "momentum = 0.95 with the 'gsnr' strategy's offsets in [-0.075, +0.075]" in line
    assert "gives coefficients in [0.875, 1.025]" in line and " @ $.train.momentum (in " in line
    assert "$.optimizer" not in line
    assert main(["train", str(path), "train.momentum=0.95", "recipe.momentum.delta=0.04"]) == 0  # 0.99 < 1


# ------------------------------------------------------------------ a command line that never goes silent
def test_the_start_up_says_what_it_does_and_the_teacher_cache_shows_progress(tmp_path, capsys, monkeypatch):
    import deepkd.progress

    monkeypatch.setattr(deepkd.progress, "HEARTBEAT", 0.0)  # off a terminal: a line per unit of work
    assert main(["train", str(write_config(tmp_path, "teacher")), "train.progress=true"]) == 0
    teacher = (tmp_path / "runs" / "teacher" / "student.pt").as_posix()
    capsys.readouterr()
    student = write_config(tmp_path, "student", loss="kd", teacher=teacher)
    assert main(["train", str(student), "train.progress=true", "train.cache_teacher=true"]) == 0
    err = capsys.readouterr().err
    for expected in (
        "deepkd: reading the synthetic data set",
        "deepkd: synthetic: 64 training and 32 test samples, 4 classes",
        "deepkd: student mlp (",
        f"teacher mlp ({sum(p.numel() for p in read_state_dict(teacher).values()):,} parameters) from {teacher}",
        "deepkd: computing the teacher's logits of the 64 training samples once (cache_teacher)",
        "teacher logits of 64 training samples  batch 1/4",
        "deepkd: teacher logits cached in",
        "epoch 1/1  step 1/4",
        "evaluating (eval_loader)  batch 1/",
        "epoch 1/1  loss",
    ):
        assert expected in err, (expected, err)


def test_the_epoch_line_shows_k_only_for_a_recipe_that_masks(tmp_path, capsys):
    path = write_config(tmp_path)
    assert main(["train", str(path), "train.progress=true", "recipe.mask=none"]) == 0
    unmasked = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch 1/1  loss")]
    assert len(unmasked) == 1 and " K " not in unmasked[0], unmasked  # nothing is masked: K would say nothing
    assert main(["train", str(path), "train.progress=true", f"run_dir={tmp_path / 'masked'}"]) == 0
    masked = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch 1/1  loss")]
    assert len(masked) == 1 and re.search(r"  K \d+ (easy|transition|hard)  ", masked[0]), masked


def test_threads_are_chosen_for_a_busy_machine_and_said(tmp_path, capsys, monkeypatch):
    import deepkd.utils

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(deepkd.utils, "busy_cores", lambda: 64.0)  # every core taken by others
    before = torch.get_num_threads()
    try:
        assert main(["train", str(write_config(tmp_path)), "train.progress=true"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err
    assert "deepkd: 1 CPU thread for torch (the machine is busy: others use 64 of " in err
    assert "set train.threads to choose" in err
    saved = cfg.structure(__import__("tomllib").loads((tmp_path / "runs" / "student" / "config.toml").read_text()),
                          ExperimentConfig)  # fmt: skip
    assert saved.train.threads == 1  # kept for a resume, which must continue with the same arithmetic


def test_busy_cores_counts_other_processes_now_and_not_this_one(monkeypatch):
    import deepkd.utils

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert deepkd.utils.busy_cores(window=0.5) >= 0.5  # another process spinning on one core is seen now
    finally:
        spinner.kill()
        spinner.wait()
    # the arithmetic: the cores' busy ticks less this process's own, over the window in clock ticks
    ticks = iter([(1000, 50), (1000 + 60, 50 + 30)])
    monkeypatch.setattr(deepkd.utils, "_cpu_ticks", lambda: next(ticks))
    monkeypatch.setattr(deepkd.utils.time, "sleep", lambda s: None)
    clock = iter([0.0, 0.3])
    monkeypatch.setattr(deepkd.utils.time, "monotonic", lambda: next(clock))
    assert deepkd.utils.busy_cores() == pytest.approx(30 / deepkd.utils.os.sysconf("SC_CLK_TCK") / 0.3)

    def no_proc():
        raise OSError("no /proc")

    monkeypatch.setattr(deepkd.utils, "_cpu_ticks", no_proc)
    monkeypatch.setattr(deepkd.utils.os, "getloadavg", lambda: (1.5, 0.0, 0.0))
    assert deepkd.utils.busy_cores() == 1.5  # elsewhere: the last minute's load average


def test_a_torchvision_built_for_another_torch_is_reported_with_the_command_that_fixes_it(tmp_path):
    import os

    fake = tmp_path / "torchvision" / "models"
    fake.mkdir(parents=True)
    (fake.parent / "__init__.py").write_text("")
    # what a torchvision built for another torch does as it registers its operators
    (fake / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "deepkd", "train", "any.toml"], capture_output=True, text=True,
                            env=env, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"does not work with torch {torch.__version__} (RuntimeError: operator torchvision::nms does not exist)" \
        in result.stderr  # fmt: skip
    assert "pip install --force-reinstall 'torch==" in result.stderr
    library = subprocess.run([sys.executable, "-c", "import deepkd.models"], capture_output=True, text=True, env=env,
                             cwd=tmp_path)  # fmt: skip
    assert "deepkd.errors.InstallError: torchvision" in library.stderr  # an ImportError a library user can catch


def test_a_dependency_torchvision_lacks_is_named_not_blamed_on_the_torch_pairing():
    from deepkd.models.torchvision_models import _torchvision_mismatch

    message = _torchvision_mismatch(ModuleNotFoundError("No module named 'PIL'", name="PIL"))
    assert "needs the 'PIL' module, which is not installed" in message and "does not work with torch" not in message
    assert "pip install 'torchvision==" in message


def test_the_presets_import_wherever_deepkd_is_installed(tmp_path):
    code = (
        "from deepkd import presets; import importlib.util as u; "
        "print(presets.cifar100('deepkd_official').momentum.reference_quirks, u.find_spec('baselines') is None)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]  # outside the checkout: no baselines package, presets still
    from baselines import presets as old
    from deepkd import presets

    assert old.cifar100 is presets.cifar100 and old.__all__ == presets.__all__  # the earlier name still works


def test_data_options_and_model_arguments_are_checked_when_the_config_is_loaded(tmp_path):
    path = write_config(tmp_path)
    cases = {
        "data.name=synthetik": "unknown data set 'synthetik'. Did you mean 'synthetic'?",
        "data.options={ bogus = 1 }": "dataset 'synthetic': got an unexpected keyword argument 'bogus'",
        "student.name=mpl": "unknown model 'mpl'. Did you mean 'mlp'?",
        "student.kwargs={ depth = 3 }": "model 'mlp': got an unexpected keyword argument 'depth'",
    }
    paths = ["$.data.name", "$.data.options", "$.student.name", "$.student.kwargs"]
    for (override, message), where in zip(cases.items(), paths, strict=True):
        with pytest.raises(ConfigError) as info:
            load_experiment(path, [override])
        (line,) = info.value.lines
        assert message in line and f" @ {where} (in " in line, line
