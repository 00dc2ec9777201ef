"""The captured step: strategies keep their state tensors in place (what a replayed graph needs), capture falls back
with a reason where it cannot run, and on CUDA a captured run follows the eager one.

The CUDA tests are skipped without a GPU; they run on a machine with one (``pytest tests/test_capture.py``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import deepkd
from deepkd.capture import CapturedStep, CaptureWarning, state_tensors
from deepkd.trainer import TrainConfig, Trainer

C, BATCH = 7, 16
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA graphs need a CUDA device; this machine has none")

RECIPES = {
    "kd": lambda: deepkd.compose(loss="kd", momentum="sgd", mask="none"),
    "dkd": lambda: deepkd.compose(loss="dkd", momentum="sgd", mask="none"),
    "dot": lambda: deepkd.compose(loss="kd", momentum="dot", mask="none"),
    "deepkd": lambda: deepkd.compose(momentum=deepkd.GSNR(interval=3), mask=deepkd.DynamicMask(horizon=3)),
    "deepkd-split": lambda: deepkd.compose(momentum=deepkd.GSNR(interval=3, estimator="split")),
    "static": lambda: deepkd.compose(loss="kd", momentum="fixed", mask=deepkd.StaticMask(k=3)),
    "official": lambda: deepkd.compose(
        loss=deepkd.KD(split="official"), momentum=deepkd.FixedOffsets(reference_quirks=True), mask="none"
    ),
}


def _model(device: str = "cpu", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(), torch.nn.Linear(32, C)
    )
    return net.to(device)


def _batches(n: int, device: str = "cpu", batch: int = BATCH) -> list[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        x = torch.randn(batch, 6, generator=gen)
        t = torch.randn(batch, C, generator=gen) * 3
        y = torch.randint(0, C, (batch,), generator=gen)
        out.append((x.to(device), t.to(device), y.to(device)))
    return out


@pytest.mark.parametrize("name", list(RECIPES))
@pytest.mark.parametrize("track", [False, True])
def test_every_builtin_strategy_changes_its_state_tensors_in_place(
    name: str, track: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replayed graph reads and writes fixed memory: after the first step no state tensor may be replaced, not at
    GSNR estimation steps either (interval 3), nor on a skipped step."""
    monkeypatch.setattr(deepkd.optim, "FLAT_GRADIENTS", True)  # as on CUDA
    model = _model()
    opt = deepkd.DistillOptimizer(model.parameters(), RECIPES[name](), lr=0.1, track_gsnr=track, nonfinite="skip")
    batches = _batches(8)
    x, t, y = batches[0]
    opt.distill_step(model(x), t, y, epoch=1)
    before = {n: p.data_ptr() for n, p in state_tensors(opt)}
    assert len(before) > 3
    for i, (x, t, y) in enumerate(batches[1:], start=2):
        logits = model(x) * (math.nan if i == 5 else 1.0)
        opt.distill_step(logits, t, y, epoch=1)
    after = {n: p.data_ptr() for n, p in state_tensors(opt)}
    assert after == before


def test_capture_on_the_cpu_runs_every_step_as_it_is_and_says_why() -> None:
    model, twin = _model(), _model()
    recipe = RECIPES["deepkd"]()
    opt = deepkd.DistillOptimizer(model.parameters(), recipe, lr=0.1)
    ref = deepkd.DistillOptimizer(twin.parameters(), recipe, lr=0.1)
    with pytest.warns(CaptureWarning, match="need CUDA tensors; the parameters are on cpu"):
        step = CapturedStep(lambda x, t, y, epoch: opt.distill_step(model(x), t, y, epoch=epoch), opt)
    assert step.reason is not None and not opt.capturable
    for x, t, y in _batches(5):
        out = step(x, t, y, epoch=1)
        expected = ref.distill_step(twin(x), t, y, epoch=1)
        assert out.parts == expected.parts
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    assert step.captures == step.replays == 0
    assert CapturedStep(lambda *a, epoch: None, opt, enabled=False).reason == "capture is off"


def _loader(device: str = "cpu", n: int = 100) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 6, generator=gen), torch.randint(0, C, (n,), generator=gen)
    data = TensorDataset(x.to(device), y.to(device))
    return DataLoader(data, batch_size=BATCH, shuffle=True, generator=torch.Generator())


def _fit(capture: bool, device: str, recipe: deepkd.Recipe, epochs: int = 2) -> Trainer:
    config = TrainConfig(
        epochs=epochs, lr=0.05, device=device, capture=capture, progress=False, log_every=5, track_gsnr=True
    )
    trainer = Trainer(_model(device), _model(device, seed=1), recipe, config, seed=3)
    trainer.fit(_loader(device), _loader(device, 40))
    return trainer


def test_the_trainer_with_capture_on_the_cpu_trains_as_without() -> None:
    recipe = RECIPES["deepkd"]()
    with pytest.warns(CaptureWarning):
        captured = _fit(True, "cpu", recipe)
    plain = _fit(False, "cpu", recipe)
    for a, b in zip(captured.student.parameters(), plain.student.parameters()):
        assert torch.equal(a, b)
    assert captured.history.epochs[-1]["loss"] == plain.history.epochs[-1]["loss"]


# ---------------------------------------------------------------------------------------------- on CUDA
def _run_steps(recipe: deepkd.Recipe, capture: bool, steps: int, *, epochs_of: Any = lambda i: 1) -> tuple[Any, ...]:
    model = _model("cuda")
    opt = deepkd.DistillOptimizer(model.parameters(), recipe, lr=0.1, weight_decay=5e-4)

    def fn(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[Any, torch.Tensor]:
        logits = model(x)
        return opt.distill_step(logits, t, y, epoch=epoch), logits

    step = CapturedStep(fn, opt, enabled=capture)
    batches = _batches(steps, "cuda")
    batches[-2] = tuple(b[: BATCH // 2] for b in batches[-2])  # a smaller batch, as an epoch's last one
    losses = []
    for i, (x, t, y) in enumerate(batches):
        out, logits = step(x, t, y, epoch=epochs_of(i))  # held across steps, as a loop may: detached
        assert not logits.requires_grad
        losses.append(out.tensor)
    torch.cuda.synchronize()
    return model, opt, step, torch.stack([v[0] for v in losses]).cpu()


@needs_cuda
@pytest.mark.parametrize("name", list(RECIPES))
def test_a_captured_run_follows_the_eager_run(name: str) -> None:
    """Same trajectory up to float rounding, with GSNR estimation steps, a smaller batch and (DKD) warm-up epochs
    that each get their own graph."""
    epochs = (lambda i: 1 + i // 6) if name in ("dkd", "deepkd", "deepkd-split") else (lambda i: 1)
    eager_model, eager_opt, _, eager_losses = _run_steps(RECIPES[name](), False, 24, epochs_of=epochs)
    model, opt, step, losses = _run_steps(RECIPES[name](), True, 24, epochs_of=epochs)
    assert step.reason is None and step.captures >= 1 and step.replays >= 10
    torch.testing.assert_close(losses, eager_losses, atol=1e-4, rtol=1e-4)
    for a, b in zip(model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
    assert opt.steps == eager_opt.steps == 24
    assert opt.coefficients() == pytest.approx(eager_opt.coefficients(), abs=1e-6)


@needs_cuda
def test_a_captured_step_that_reads_back_falls_back_with_the_error() -> None:
    model = _model("cuda")
    opt = deepkd.DistillOptimizer(model.parameters(), RECIPES["kd"](), lr=0.1, check_inputs=True)
    step = CapturedStep(lambda x, t, y, epoch: opt.distill_step(model(x), t, y, epoch=epoch), opt, warmup=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for x, t, y in _batches(6, "cuda"):
            step(x, t, y, epoch=1)
    assert step.reason is not None and step.reason.startswith("capturing it failed")
    assert any(issubclass(w.category, CaptureWarning) for w in caught)
    assert opt.steps == 6  # the step whose capture failed was run eagerly, once


@needs_cuda
@pytest.mark.parametrize("name", ["kd", "dot", "deepkd", "official"])
def test_steady_state_steps_never_synchronise(name: str) -> None:
    model = _model("cuda")
    opt = deepkd.DistillOptimizer(model.parameters(), RECIPES[name](), lr=0.1)
    batches = _batches(8, "cuda")
    for x, t, y in batches[:2]:
        opt.distill_step(model(x), t, y, epoch=1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i, (x, t, y) in enumerate(batches[2:], start=3):
            if not opt.rule.special(i):
                opt.distill_step(model(x), t, y, epoch=1)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_trainer_captures_on_cuda_and_ends_where_the_eager_trainer_ends(precision: str) -> None:
    recipe = deepkd.compose(momentum=deepkd.GSNR(interval=7), mask=deepkd.DynamicMask(horizon=3))
    runs = {}
    for capture in (False, True):
        config = TrainConfig(
            epochs=3, lr=0.05, device="cuda", capture=capture, progress=False, log_every=5, precision=precision
        )
        trainer = Trainer(_model("cuda"), _model("cuda", seed=1), recipe, config, seed=3)
        trainer.fit(_loader("cuda", 200), _loader("cuda", 40))  # 13 steps an epoch, the last one smaller
        runs[capture] = trainer
    captured = runs[True]._captured
    assert captured is not None and captured.reason is None
    assert captured.captures >= 3 and captured.replays >= 15  # one graph per DKD warm-up factor (one per epoch)
    tol = 1e-3 if precision == "fp32" else 5e-2
    for a, b in zip(runs[True].student.parameters(), runs[False].student.parameters()):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)
    assert runs[True].history.epochs[-1]["train_top1"] == pytest.approx(
        runs[False].history.epochs[-1]["train_top1"], abs=0.05
    )
