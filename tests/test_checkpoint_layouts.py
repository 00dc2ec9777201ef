"""The field's teacher checkpoints load: every common file layout, deepkd's earlier parameter names, torchvision's
published weights from its cache (never downloaded), and ``deepkd eval`` of a student or teacher weights file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from deepkd._version import __version__
from deepkd.checkpoint import FORMAT, REQUIRED_KEYS, read_state_dict
from deepkd.cli import main
from deepkd.data import get_dataset
from deepkd.errors import CheckpointError, ConfigError
from deepkd.experiment import ModelConfig, evaluate_checkpoint, load_experiment, load_weights
from deepkd.models import build_model
from deepkd.models.legacy import LEGACY_KEYS, legacy_keys
from deepkd.models.torchvision_models import pretrained_path, pretrained_state_dict

MLP = {"in_features": 8, "hidden": [16]}

CONFIG = """
run_dir = "{run_dir}"
seed = 1

[recipe]
loss = "{loss}"
momentum = "sgd"
mask = "none"

[train]
epochs = 1
lr = 0.1
schedule = "constant"
progress = false

[data]
name = "synthetic"
batch_size = 16
options = {{ num_samples = 64, num_test_samples = 32, num_classes = 10, shape = [8] }}

[student]
name = "mlp"
kwargs = {{ in_features = 8, hidden = [16] }}
"""


def write_config(tmp_path: Path, loss: str = "ce", teacher: str = "", student: str = "") -> Path:
    text = CONFIG.format(run_dir=(tmp_path / "runs" / "x").as_posix(), loss=loss) + student
    if teacher:
        text += f'\n[teacher]\nname = "mlp"\nkwargs = {{ in_features = 8, hidden = [16] }}\n{teacher}\n'
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", 10, **MLP)


def assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _deepkd_checkpoint(weights: dict[str, torch.Tensor]) -> dict[str, object]:
    state: dict[str, object] = {k: {} for k in REQUIRED_KEYS}
    return {**state, "format": FORMAT, "version": __version__, "epoch": 3, "global_step": 12, "student": weights}


def _prefixed(weights: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in weights.items()}


# the layouts of the field's released checkpoints, as functions of the weights
LAYOUTS = {
    "bare": lambda w: w,
    # CRD / mdistiller ckpt_epoch_240.pth: the weights next to the optimizer and plain numbers
    "model": lambda w: {"model": w, "optimizer": {"state": {}, "param_groups": []}, "epoch": 240, "accuracy": 71.5},
    "state_dict": lambda w: {"state_dict": w, "epoch": 90, "arch": "resnet"},
    "net": lambda w: {"net": w, "acc": 95.3, "epoch": 199},
    "model_state_dict": lambda w: {"model_state_dict": w, "loss": 0.1},
    "module. prefix": _prefixed,
    "module. prefix under model": lambda w: {"model": _prefixed(w), "epoch": 240},
    "torch.compile prefix": lambda w: _prefixed(w, "_orig_mod."),
    "DDP of a compiled model": lambda w: _prefixed(_prefixed(w, "_orig_mod.")),
    "nested": lambda w: {"state_dict": {"model": w}, "epoch": 1},
    "deepkd checkpoint": _deepkd_checkpoint,
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_common_layout_loads_weights_only(tmp_path, layout):
    weights = mlp().state_dict()
    torch.save(LAYOUTS[layout](weights), tmp_path / "ckpt.pth")
    assert_same(read_state_dict(tmp_path / "ckpt.pth"), weights)
    torch.load(tmp_path / "ckpt.pth", weights_only=True)  # the layouts themselves are weights-only files


def test_only_a_prefix_on_every_key_is_stripped(tmp_path):
    weights = {"module.weight": torch.zeros(2), "bias": torch.zeros(2)}
    torch.save(weights, tmp_path / "w.pt")
    assert list(read_state_dict(tmp_path / "w.pt")) == ["module.weight", "bias"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            {"epoch": 240, "optimizer": {"state": {}}, "best_acc": 71.2},
            "holds no model weights: its top-level keys are 'epoch', 'optimizer', 'best_acc'; expected a state_dict",
        ),
        ({"model": {"epoch": 3}}, "its top-level keys are 'model'; expected a state_dict"),
        ({}, "holds an empty dict"),
        ([1, 2, 3], "holds a list"),
        (torch.zeros(3), "holds a Tensor"),
    ],
)
def test_a_file_without_weights_names_what_it_holds(tmp_path, content, message):
    torch.save(content, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="'model', 'state_dict', 'net' or 'model_state_dict'") as info:
        read_state_dict(tmp_path / "x.pt")
    assert message in str(info.value)


def test_a_file_weights_only_refuses_says_how_to_convert_and_is_never_loaded_unsafely(tmp_path, monkeypatch):
    np = pytest.importorskip("numpy")
    torch.save({"model": mlp().state_dict(), "best_acc": np.float64(71.5)}, tmp_path / "np.pth")
    calls: list[object] = []
    load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(tmp_path / "np.pth")
    message = str(info.value)
    assert "not a weights-only torch file" in message and "weights_only=True" in message
    assert "numpy" in message and "never loads a file unsafely" in message
    assert "torch.save(torch.load(path, weights_only=False)['model'], 'weights.pt')" in message
    assert calls == [True]
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint" * 10)  # not a refusal: a foreign file
    with pytest.raises(CheckpointError, match="corrupt, truncated or not a weights-only torch file"):
        read_state_dict(tmp_path / "garbage.pth")


# --------------------------------------------------------------------------------------------------------------
# deepkd's earlier parameter names


@pytest.fixture
def legacy_mlp():
    """A throw-away legacy map for ``mlp``: its earlier names said ``fc`` where it now says ``classifier``."""
    before = dict(LEGACY_KEYS)
    legacy_keys("mlp")(lambda key: key.replace("fc.", "classifier."))
    yield lambda weights: {k.replace("classifier.", "fc."): v for k, v in weights.items()}
    LEGACY_KEYS.clear()
    LEGACY_KEYS.update(before)


def test_old_layout_weights_are_upgraded_before_strict_loading(tmp_path, legacy_mlp):
    weights = mlp().state_dict()
    torch.save({"model": legacy_mlp(weights)}, tmp_path / "old.pth")
    spec = ModelConfig(name="mlp", kwargs=MLP, checkpoint=str(tmp_path / "old.pth"))
    assert_same(load_weights(mlp(seed=1), spec, "teacher").state_dict(), weights)


def test_a_mismatch_names_the_first_missing_unexpected_and_reshaped_keys(tmp_path):
    weights = mlp().state_dict()
    odd = {k.replace("classifier.", "fc."): v for k, v in weights.items()}
    odd["hidden.0.weight"] = torch.zeros(3, 8)
    torch.save(odd, tmp_path / "odd.pt")
    spec = ModelConfig(name="mlp", kwargs=MLP, checkpoint=str(tmp_path / "odd.pt"))
    with pytest.raises(CheckpointError) as info:
        load_weights(mlp(), spec, "teacher")
    message = str(info.value)
    assert message.startswith(f"teacher checkpoint {str(tmp_path / 'odd.pt')!r} (model 'mlp') does not fit this model")
    for part in ("missing classifier.weight", "unexpected fc.weight", "hidden.0.weight: saved (3, 8), model (16, 8)"):
        assert part in message
    assert "[2 missing, 2 unexpected, 1 of another shape]" in message


def test_training_loads_old_layout_teacher_and_student_weights(tmp_path, legacy_mlp, capsys):
    torch.save({"model": legacy_mlp(mlp(0).state_dict())}, tmp_path / "teacher.pth")
    torch.save(legacy_mlp(mlp(1).state_dict()), tmp_path / "init.pt")
    teacher = f'checkpoint = "{(tmp_path / "teacher.pth").as_posix()}"'
    student = f'checkpoint = "{(tmp_path / "init.pt").as_posix()}"\n'
    assert main(["train", str(write_config(tmp_path, "kd", teacher=teacher, student=student))]) == 0
    assert "best test top-1" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------------
# torchvision's published weights, from its cache


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache under ``tmp_path`` (through ``TORCH_HOME``, as a user would move it)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert Path(torch.hub.get_dir()) == tmp_path / "torch" / "hub"  # nobody called torch.hub.set_dir
    return tmp_path / "torch" / "hub" / "checkpoints"


def _cache(torch_home: Path, name: str = "mobilenet_v3_small", num_classes: int = 1000) -> dict[str, torch.Tensor]:
    """A randomly initialised model saved where torchvision would have downloaded its ImageNet weights."""
    torch.manual_seed(0)
    weights = build_model(name, num_classes).state_dict()
    torch_home.mkdir(parents=True, exist_ok=True)
    torch.save(weights, torch_home / "mobilenet_v3_small-047dcff4.pth")
    return weights


def test_pretrained_weights_come_from_torchvisions_cache(torch_home):
    assert pretrained_path("mobilenet_v3_small", "IMAGENET1K_V1") == torch_home / "mobilenet_v3_small-047dcff4.pth"
    weights = _cache(torch_home)
    assert_same(pretrained_state_dict("mobilenet_v3_small", "DEFAULT"), weights)
    spec = ModelConfig(name="mobilenet_v3_small", pretrained="IMAGENET1K_V1")
    loaded = load_weights(build_model("mobilenet_v3_small", 1000), spec, "teacher")
    assert_same(loaded.state_dict(), weights)


def test_pretrained_weights_need_the_imagenet_classifier(torch_home):
    _cache(torch_home)
    spec = ModelConfig(name="mobilenet_v3_small", pretrained="IMAGENET1K_V1")
    with pytest.raises(CheckpointError, match=r"classifier.3.weight: saved \(1000, 1024\), model \(10, 1024\)"):
        load_weights(build_model("mobilenet_v3_small", 10), spec, "teacher")


def test_missing_pretrained_weights_say_which_file_to_put_where(torch_home, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("deepkd must never download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    with pytest.raises(CheckpointError) as info:
        pretrained_state_dict("resnet34", "IMAGENET1K_V1")
    message = str(info.value)
    assert "https://download.pytorch.org/models/resnet34-b627a593.pth" in message
    assert repr(str(torch_home / "resnet34-b627a593.pth")) in message
    assert "TORCH_HOME" in message and "never downloads" in message


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ['teacher.name="resnet34"', 'teacher.pretrained="IMAGENET1K_V2"'],
            "'resnet34' has no pretrained weights 'IMAGENET1K_V2'; torchvision's are IMAGENET1K_V1 (or DEFAULT) "
            "@ $.teacher.pretrained",
        ),
        (
            ['teacher.pretrained="IMAGENET1K_V1"'],
            "pretrained weights exist only for the torchvision models (resnet18, ",
        ),
        (
            ['teacher.name="resnet18"', 'teacher.pretrained="IMAGENET1K_V1"', 'teacher.checkpoint="t.pt"'],
            "set checkpoint or pretrained, not both",
        ),
        (["teacher.pretrained=1"], "expected a string, got 1 @ $.teacher.pretrained"),
    ],
)
def test_bad_pretrained_settings_are_config_errors_at_their_path(tmp_path, overrides, message):
    path = write_config(tmp_path, "kd", teacher="# weights: in the overrides")
    with pytest.raises(ConfigError) as info:
        load_experiment(path, overrides)
    assert message in str(info.value) and "@ $.teacher.pretrained" in str(info.value)


def _pretrained_config(tmp_path: Path) -> Path:
    text = CONFIG.format(run_dir=(tmp_path / "runs" / "x").as_posix(), loss="kd")
    text = text.replace("shape = [8]", "shape = [3, 32, 32]").replace("num_classes = 10", "num_classes = 1000")
    text = text.replace("num_test_samples = 32", "num_test_samples = 8")
    text = text.replace("kwargs = { in_features = 8, hidden = [16] }", "kwargs = { in_features = 3072, hidden = [] }")
    text += '\n[teacher]\nname = "mobilenet_v3_small"\npretrained = "IMAGENET1K_V1"\n'
    path = tmp_path / "imagenet_like.toml"
    path.write_text(text)
    return path


def test_eval_of_a_pretrained_teacher_from_the_cache(tmp_path, torch_home, capsys):
    path = _pretrained_config(tmp_path)
    assert load_experiment(path).teacher == ModelConfig(name="mobilenet_v3_small", pretrained="IMAGENET1K_V1")
    assert main(["eval", "--config", str(path), "--model", "teacher"]) == 2
    assert "mobilenet_v3_small-047dcff4.pth" in error_line(capsys)
    _cache(torch_home)
    assert main(["eval", "--config", str(path), "--model", "teacher", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("teacher mobilenet_v3_small: top-1 ") and "top-5 " in out and "(8 test images)" in out


# --------------------------------------------------------------------------------------------------------------
# deepkd eval


def _expected(model: nn.Module) -> tuple[str, str]:
    _, test_set, _ = get_dataset("synthetic", num_samples=64, num_test_samples=32, num_classes=10, shape=[8])
    inputs, targets = zip(*(test_set[i] for i in range(len(test_set))), strict=True)
    with torch.no_grad():
        logits = model.eval()(torch.stack(inputs))
    targets_t = torch.as_tensor(targets)
    top1 = (logits.argmax(1) == targets_t).float().mean().item()
    top5 = (logits.topk(5, 1).indices == targets_t[:, None]).any(1).float().mean().item()
    return f"top-1 {100 * top1:.2f}%", f"top-5 {100 * top5:.2f}%"


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_eval_prints_top1_and_top5_of_a_crd_style_checkpoint(tmp_path, capsys, role):
    model = mlp(seed=3)
    ckpt = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": _prefixed(model.state_dict()), "optimizer": {}, "epoch": 240, "accuracy": 0.5}, ckpt)
    config = write_config(tmp_path, "kd", teacher='checkpoint = "unused.pt"')
    assert main(["eval", str(ckpt), "--config", str(config), "--model", role]) == 0
    out = capsys.readouterr().out
    top1, top5 = _expected(model)
    assert out.startswith(f"{role} mlp: {top1}  {top5}  loss ") and "(32 test images)" in out


def test_eval_of_the_configs_own_teacher_weights(tmp_path, capsys):
    model = mlp(seed=4)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "teacher.pth")
    config = write_config(tmp_path, "kd", teacher=f'checkpoint = "{(tmp_path / "teacher.pth").as_posix()}"')
    assert main(["eval", "--config", str(config), "--model", "teacher"]) == 0
    assert capsys.readouterr().out.startswith(f"teacher mlp: {'  '.join(_expected(model))}")
    metrics = evaluate_checkpoint(None, config=load_experiment(config), model="teacher")
    assert metrics["model"] == "mlp" and metrics["role"] == "teacher" and metrics["epoch"] is None


def test_eval_refuses_what_it_cannot_evaluate(tmp_path, capsys):
    no_teacher = write_config(tmp_path)
    assert main(["eval", "--config", str(no_teacher), "--model", "teacher"]) == 2
    assert "no [teacher] table to evaluate @ $.teacher" in error_line(capsys)
    assert main(["eval", "--config", str(no_teacher)]) == 2
    assert "nothing to evaluate" in error_line(capsys)
    assert main(["eval"]) == 2
    assert "nothing to evaluate" in error_line(capsys)
    torch.save(_deepkd_checkpoint(mlp().state_dict()), tmp_path / "latest.pt")
    assert main(["eval", str(tmp_path / "latest.pt"), "--model", "teacher"]) == 2
    assert "holds its student; to evaluate a teacher, pass the config" in error_line(capsys)
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    assert main(["eval", str(tmp_path / "empty.pth"), "--config", str(no_teacher)]) == 2
    assert "holds no model weights: its top-level keys are 'epoch'" in error_line(capsys)
