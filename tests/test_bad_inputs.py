"""Bad inputs: each raises a specific deepkd error whose message names the bad value."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import deepkd
from deepkd.compose import Recipe
from deepkd.errors import CheckpointError, ConfigError, DeepKDError, InputError, NonFiniteLossError

C, B, F = 5, 8, 6


def _model(hidden: int = 7) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(F, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, C))


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, F, generator=gen)
    return x, torch.randn(B, C, generator=gen), torch.randint(0, C, (B,), generator=gen)


def _opt(recipe: Recipe | None = None, model: torch.nn.Module | None = None, **kwargs) -> deepkd.DistillOptimizer:
    recipe = recipe or deepkd.compose(loss="kd", momentum="gsnr", mask="dynamic")
    model = model or _model()
    return deepkd.DistillOptimizer(model.parameters(), recipe, lr=kwargs.pop("lr", 0.1), **kwargs)


def _step(student=None, teacher=..., target=None, recipe=None) -> None:
    model = _model()
    opt = _opt(recipe, model)
    x, t, y = _batch()
    opt.distill_step(
        model(x) if student is None else student,
        t if teacher is ... else teacher,
        y if target is None else target,
        epoch=1,
    )


def _label(value: int) -> torch.Tensor:
    y = _batch()[2].clone()
    y[3] = value
    return y


def _nan_at_step_3() -> None:
    model = _model()
    opt = _opt(model=model)
    for seed in range(2):
        x, t, y = _batch(seed)
        opt.distill_step(model(x), t, y, epoch=1)
    x, t, y = _batch(2)
    out = opt.distill_step(model(x) * torch.nan, t, y, epoch=1)  # skipped on the device; nothing read back yet
    x, t, y = _batch(3)
    opt.distill_step(model(x), t, y, epoch=1)  # not applied either: the run is halted at step 3
    _ = out.loss  # the first read of a value raises, naming the first bad step


def _checkpoint(recipe: Recipe | None = None, model: torch.nn.Module | None = None) -> dict:
    model = model or _model()
    opt = _opt(recipe, model)
    x, t, y = _batch()
    opt.distill_step(model(x), t, y, epoch=1)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _sgd_state_dict() -> dict:
    model = _model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(_batch()[0]).sum().backward()
    sgd.step()
    return sgd.state_dict()


def _write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


CASES = [
    # ---------------------------------------------------------------- tensors handed to distill_step
    pytest.param(lambda tmp: _step(target=_label(-1)), InputError, r"label -1\b", id="label-negative"),
    pytest.param(lambda tmp: _step(target=_label(C)), InputError, rf"label {C}\b.*\[0, {C}\)", id="label-C"),
    pytest.param(
        lambda tmp: _step(teacher=torch.randn(B, C + 1)),
        InputError,
        rf"class count.*\({B}, {C + 1}\).*\({B}, {C}\)",
        id="class-count-mismatch",
    ),
    pytest.param(
        lambda tmp: _step(student=torch.randn(C, requires_grad=True), teacher=torch.randn(C)),
        InputError,
        rf"\[batch, classes\].*\({C},\)",
        id="1d-logits",
    ),
    pytest.param(lambda tmp: _step(target=_label(1).float()), InputError, "integer.*float32", id="float-targets"),
    pytest.param(lambda tmp: _step(teacher=None), InputError, "'kd'.*teacher.*None", id="kd-without-teacher"),
    pytest.param(
        lambda tmp: _step(teacher=None, recipe=deepkd.compose(loss="dkd")),
        InputError,
        "'dkd'.*None",
        id="dkd-without-teacher",
    ),
    pytest.param(lambda tmp: _nan_at_step_3(), NonFiniteLossError, r"step 3\b.*'task' is nan", id="nan-student"),
    # ---------------------------------------------------------------- optimizer hyperparameters
    pytest.param(
        lambda tmp: _opt(momentum=0.95),
        ConfigError,
        r"momentum=0\.95.*'gsnr'.*1\.025.*\[0, 1\)",
        id="gsnr-coefficient-over-1",
    ),
    pytest.param(
        lambda tmp: _opt(deepkd.compose(momentum=deepkd.DOT(delta=0.5)), momentum=0.3),
        ConfigError,
        r"momentum=0\.3.*-0\.2",
        id="dot-coefficient-below-0",
    ),
    pytest.param(
        lambda tmp: _opt(lr=-0.1), ConfigError, r"lr=-0\.1 is invalid for param group 0: expected a number >= 0$",
        id="negative-lr",
    ),
    pytest.param(lambda tmp: _opt(lr=float("nan")), ConfigError, r"lr=nan", id="nan-lr"),
    pytest.param(lambda tmp: _opt(weight_decay=-1e-4), ConfigError, r"weight_decay=-0\.0001", id="negative-wd"),
    pytest.param(lambda tmp: _opt(momentum=1.0), ConfigError, r"momentum=1\.0", id="momentum-1"),
    pytest.param(
        lambda tmp: _opt(nesterov=True, dampening=0.1),
        ConfigError,
        r"nesterov=True.*dampening",
        id="nesterov-with-dampening",
    ),
    pytest.param(lambda tmp: _opt(decomposition="vmap"), ConfigError, "'vmap'", id="decomposition-vmap"),
    pytest.param(lambda tmp: _opt(nonfinite="ignore"), ConfigError, "'ignore'", id="nonfinite-ignore"),
    pytest.param(lambda tmp: _opt().step(), DeepKDError, r"distill_step", id="step-without-distill-step"),
    # ---------------------------------------------------------------- checkpoints
    pytest.param(
        lambda tmp: _opt(deepkd.compose(loss="kd", momentum="sgd")).load_state_dict(_checkpoint()),
        CheckpointError,
        r"another recipe.*'gsnr'.*'sgd'",
        id="checkpoint-other-recipe",
    ),
    pytest.param(
        lambda tmp: _opt(model=_model(hidden=9)).load_state_dict(_checkpoint()),
        CheckpointError,
        r"shapes do not match",
        id="checkpoint-other-shapes",
    ),
    pytest.param(
        lambda tmp: _opt(model=torch.nn.Linear(F, C)).load_state_dict(_checkpoint()),
        CheckpointError,
        r"shapes do not match",
        id="checkpoint-other-parameter-count",
    ),
    pytest.param(
        lambda tmp: _opt().load_state_dict(_sgd_state_dict()), CheckpointError, r"'deepkd'", id="checkpoint-plain-sgd"
    ),
    pytest.param(
        lambda tmp: _opt().load_state_dict({**_checkpoint(), "deepkd": {"recipe": _checkpoint()["deepkd"]["recipe"]}}),
        CheckpointError,
        r"incomplete or malformed.*'momentum'",
        id="checkpoint-truncated",
    ),
    # ---------------------------------------------------------------- config files
    pytest.param(
        lambda tmp: Recipe.load(tmp / "missing.toml"),
        ConfigError,
        r"missing\.toml.*does not exist",
        id="load-missing-file",
    ),
    pytest.param(
        lambda tmp: Recipe.load(_write(tmp, "r.yaml", "loss: kd\n")),
        ConfigError,
        r"\.toml or \.json.*r\.yaml",
        id="load-yaml",
    ),
    pytest.param(lambda tmp: deepkd.compose().save(tmp / "r.yaml"), ConfigError, r"r\.yaml", id="save-yaml"),
    pytest.param(
        lambda tmp: Recipe.load(_write(tmp, "bad.toml", '[loss\nname = "kd"\n')),
        ConfigError,
        r"cannot parse TOML.*line 1.*bad\.toml",
        id="load-malformed-toml",
    ),
    pytest.param(
        lambda tmp: deepkd.config.loads('loss = "kd\n', Recipe),
        ConfigError,
        r"cannot parse TOML.*line 1",
        id="loads-malformed-toml",
    ),
    pytest.param(
        lambda tmp: deepkd.config.loads('{"loss": }', Recipe, "json"),
        ConfigError,
        r"cannot parse JSON.*column 10",
        id="loads-malformed-json",
    ),
    pytest.param(
        lambda tmp: Recipe.load(_write(tmp, "r.toml", '[momentum]\nname = "gsnr"\ndelta = 2\n')),
        ConfigError,
        r"2\.0 @ \$\.momentum\.delta \(in .*r\.toml\)",
        id="load-invalid-value",
    ),
    pytest.param(lambda tmp: Recipe.load(tmp), ConfigError, r"test_bad_input_load_directory", id="load-directory"),
    pytest.param(
        lambda tmp: Recipe.load(_write_bytes(tmp / "bin.toml", b"\xff\xfe\x00")),
        ConfigError,
        r"bin\.toml",
        id="load-binary-file",
    ),
    pytest.param(
        lambda tmp: Recipe.from_dict({"momentum": {"name": "gsnr", "seed": 2**64}}),
        ConfigError,
        r"\$\.momentum\.seed",
        id="gsnr-seed-overflow-config",
    ),
]


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("action", "error", "pattern"), CASES)
def test_bad_input(action: Callable[[Path], object], error: type[Exception], pattern: str, tmp_path: Path) -> None:
    with pytest.raises(DeepKDError) as info:
        action(tmp_path)
    assert isinstance(info.value, error), f"expected {error.__name__}, got {type(info.value).__name__}: {info.value}"
    assert re.search(pattern, str(info.value), re.DOTALL), f"{pattern!r} not in message: {info.value}"


def test_constructors_reject_out_of_range_and_boolean_numbers() -> None:
    with pytest.raises(ValueError, match=r"'seed' must be < .*" + str(2**64)):
        deepkd.GSNR(seed=2**64)
    with pytest.raises(TypeError, match="'interval' must be an integer, got True"):
        deepkd.GSNR(interval=True)
    with pytest.raises(ValueError, match="'temperature' must be finite"):
        deepkd.KD(temperature=float("inf"))


# ---------------------------------------------------------------------------------------------- nonfinite="skip"
@pytest.mark.parametrize("momentum", ["sgd", "fixed", "gsnr"])
def test_skip_leaves_parameters_and_buffers_untouched(momentum: str) -> None:
    model = _model()
    recipe = deepkd.compose(loss="kd", momentum=momentum, mask="dynamic")
    opt = _opt(recipe, model, nonfinite="skip", track_gsnr=True)
    for seed in range(2):
        x, t, y = _batch(seed)
        assert not opt.distill_step(model(x), t, y, epoch=1).skipped
    params = [p.detach().clone() for p in model.parameters()]
    buffers = [b.clone() for bufs in opt.momentum_states[0].buffers for b in bufs]
    gsnr_before = opt.gsnr().clone()

    x, t, y = _batch(2)
    student = model(x)
    poisoned = student.clone()
    poisoned[0] = torch.nan  # one bad row is enough to make every batch-mean part NaN
    estimate = [t.clone() for t in _tensors(opt.rule_state)]
    out = opt.distill_step(poisoned, t, y, epoch=1)
    assert out.skipped and out.step == opt.steps == 3 and opt.skipped_steps == 1
    assert out.loss != out.loss  # NaN
    for before, after in zip(params, model.parameters()):
        assert torch.equal(before, after)
    after_buffers = [b for bufs in opt.momentum_states[0].buffers for b in bufs]
    for before, after in zip(buffers, after_buffers):
        assert torch.equal(before, after)
    for before, after in zip(estimate, _tensors(opt.rule_state)):  # the GSNR estimate did not fold the bad step
        assert torch.equal(before, after) or torch.allclose(before, after, rtol=0, atol=0, equal_nan=True)
    assert torch.allclose(opt.gsnr(), gsnr_before, rtol=0, atol=0, equal_nan=True)  # NaN: a component without GSNR

    # the next good step runs normally
    out = opt.distill_step(model(x), t, y, epoch=1)
    assert not out.skipped and out.step == 4
    assert any(not torch.equal(a, b) for a, b in zip(params, model.parameters()))


def _tensors(state: object) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, (tuple, list)):
        return [t for s in state for t in _tensors(s)]
    return []


def test_raise_halts_on_the_device_and_raises_at_the_next_read() -> None:
    model = _model()
    opt = _opt(model=model)
    before = [p.detach().clone() for p in model.parameters()]
    x, t, y = _batch()
    out = opt.distill_step(model(x) * torch.inf, t, y, epoch=4)  # nothing is read back: no error yet
    later = opt.distill_step(model(x), t, y, epoch=4)  # a good step after a bad one is not applied either
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert opt.steps == 2
    for read in (lambda: out.loss, lambda: later.parts, opt.check_finite, opt.state_dict):
        with pytest.raises(NonFiniteLossError, match=r"step 1 \(epoch 4\).*'task'"):
            read()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_errors_keep_builtin_bases() -> None:
    """Generic handlers keep working: each deepkd error is also the built-in exception users expect."""
    assert issubclass(InputError, ValueError)
    assert issubclass(ConfigError, ValueError)
    assert issubclass(CheckpointError, ValueError)
    assert issubclass(NonFiniteLossError, FloatingPointError)
    with pytest.raises(ValueError):
        _step(target=_label(-1))
