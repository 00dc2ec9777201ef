"""`deepkd --version`, `--help` with examples, and `--import` of user code registering a model and a data set."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from deepkd import __version__
from deepkd.cli import main
from deepkd.data import DATASETS
from deepkd.models import MODELS

USER_MODULE = """
import torch
from torch import nn

from deepkd.data import DATASETS, DatasetInfo
from deepkd.models import register_model


@register_model("{model}")
def build(num_classes: int, width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Linear(width, num_classes))


@DATASETS.register("{dataset}")
def splits(n: int = 48):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    train = torch.utils.data.TensorDataset(x, y)
    test = torch.utils.data.TensorDataset(x[:16], y[:16])
    return train, test, DatasetInfo("{dataset}", 4, (6,))
"""

CONFIG = """
run_dir = "{run_dir}"

[recipe]
loss = "ce"
momentum = "sgd"
mask = "none"

[train]
epochs = 1
schedule = "constant"
progress = false

[data]
name = "{dataset}"
batch_size = 16

[student]
name = "{model}"
kwargs = {{ width = 4 }}
"""


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """A module file of the user's, in a working directory of its own; what it registers is removed afterwards."""
    name = f"user_{tmp_path.name.replace('-', '_')}"
    model, dataset = f"{name}_net", f"{name}_data"
    (tmp_path / f"{name}.py").write_text(USER_MODULE.format(model=model, dataset=dataset))
    config = tmp_path / "run.toml"
    config.write_text(CONFIG.format(run_dir=(tmp_path / "runs").as_posix(), model=model, dataset=dataset))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield name, config
    for registry, key in ((MODELS, model), (DATASETS, dataset)):
        if key in registry.names():
            registry.unregister(key)
    sys.modules.pop(name, None)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"deepkd {__version__}"


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["eval", "--help"]])
def test_help_has_examples(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    out = capsys.readouterr().out
    assert "examples:" in out and "deepkd " in out
    if argv == ["--help"]:
        assert "--import MODULE" in out and "nox -s docs" in out


@pytest.mark.parametrize("where", ["module_after", "module_before", "file"])
def test_import_registers_a_model_and_a_data_set_the_config_names(user_code, capsys, where):
    name, config = user_code
    argv = {
        "module_after": ["train", str(config), "--import", name],
        "module_before": ["--import", name, "train", str(config)],
        "file": ["train", str(config), "--import", f"./{name}.py"],
    }[where]
    assert main(argv) == 0, capsys.readouterr().err
    assert "best test top-1" in capsys.readouterr().out
    assert (config.parent / "runs" / "student.pt").exists()


def test_without_import_the_unknown_model_is_named(user_code, capsys):
    _, config = user_code
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "unknown" in err and "Traceback" not in err


@pytest.mark.parametrize("spec", ["no_such_module_xyz", "missing/file.py"])
def test_a_module_that_cannot_be_found_exits_2_naming_it(user_code, capsys, spec):
    _, config = user_code
    assert main(["train", str(config), "--import", spec]) == 2
    err = capsys.readouterr().err
    assert spec in err and "Traceback" not in err


def test_an_error_inside_the_users_module_is_not_hidden(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    Path("broken_user_mod.py").write_text(textwrap.dedent("import no_such_dependency_xyz\n"))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        main(["train", "x.toml", "--import", "broken_user_mod"])
    sys.modules.pop("broken_user_mod", None)
