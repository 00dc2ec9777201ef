"""A step never waits for the device: ``distill_step`` reads no tensor value back, for every recipe.

On a GPU, every read of a device value (``.item()``, ``bool(t)``, ``.tolist()``, ``.cpu()``...) makes the host wait
for the device, and a step that waits cannot queue the next step's kernels while the device works. There is no GPU
here, so the test catches the reads themselves: a ``TorchFunctionMode`` sees every call of those methods during the
steps, on any tensor (stricter than needed on the CPU, where reading is free: what it proves holds on CUDA, where the
same code runs). ``check_inputs=False`` because the label check reads the labels by design (every step on the CPU,
the first step only on CUDA); that read is tested on its own below.
"""

from __future__ import annotations

import itertools
import math
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

import deepkd
from deepkd.trainer import TrainConfig, Trainer

READS = {
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "__format__",
    "__repr__",
    "__array__",
    "item",
    "tolist",
    "numpy",
    "cpu",
}
C, BATCH, STEPS = 7, 12, 6


class _ReadCounter(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in READS:
            where = traceback.extract_stack(limit=2)[0]  # the caller of the read
            self.reads.append(f"{name} at {where.filename.rsplit('/', 1)[-1]}:{where.lineno}")
        return func(*args, **(kwargs or {}))


@contextmanager
def counting_reads() -> Iterator[list[str]]:
    """The tensor reads made inside the block, each named with where it happened."""
    mode = _ReadCounter()
    with mode:
        yield mode.reads


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, C))


def _batches(n: int, nan_at: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        x, t = torch.randn(BATCH, 5, generator=gen), torch.randn(BATCH, C, generator=gen) * 3
        if i == nan_at:  # one bad input row makes the student's logits, hence every batch-mean part, NaN
            x[0] = math.nan
        out.append((x, t, torch.randint(0, C, (BATCH,), generator=gen)))
    return out


RECIPES: dict[str, Callable[[], deepkd.Recipe]] = {
    "kd": lambda: deepkd.compose(loss="kd", momentum="sgd", mask="none"),
    "dkd": lambda: deepkd.compose(loss="dkd", momentum="sgd", mask="none"),
    "dot": lambda: deepkd.compose(loss="kd", momentum="dot", mask="none"),
    "deepkd": lambda: deepkd.compose(momentum=deepkd.GSNR(interval=2), mask=deepkd.DynamicMask(horizon=2)),
    "deepkd-split": lambda: deepkd.compose(momentum=deepkd.GSNR(interval=2, estimator="split")),
    "deepkd-minmax": lambda: deepkd.compose(momentum=deepkd.GSNR(interval=2, allocation="minmax")),
    "deepkd-renormalize": lambda: deepkd.compose(
        momentum=deepkd.GSNR(interval=2), mask=deepkd.DynamicMask(horizon=2, form="renormalize")
    ),
    "static-bucket": lambda: deepkd.compose(loss="kd", momentum="fixed", mask=deepkd.StaticMask(k=3)),
    "static-renormalize": lambda: deepkd.compose(mask=deepkd.StaticMask(k=3, form="renormalize")),
    "paper": lambda: deepkd.compose(loss="kd", momentum="fixed", mask="dynamic"),
    "official": lambda: deepkd.compose(
        loss=deepkd.KD(split="official"), momentum=deepkd.FixedOffsets(reference_quirks=True), mask="none"
    ),
    "ce": lambda: deepkd.compose(loss="ce", momentum="dot", mask="none"),
    "deepkd-preserve-step": lambda: deepkd.compose(momentum=deepkd.GSNR(interval=2, preserve_step=True)),
}


def _steps(opt: deepkd.DistillOptimizer, model: torch.nn.Module, batches: list[Any], ce: bool) -> list[Any]:
    return [opt.distill_step(model(x), None if ce else t, y, epoch=1 + i // 3) for i, (x, t, y) in enumerate(batches)]


@pytest.fixture(params=[None, True], ids=["own-gradients", "flat-buffer"])
def flat(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool | None:
    """Both gradient layouts: the CPU's default (the step's own tensors) and CUDA's (one flat buffer)."""
    monkeypatch.setattr(deepkd.optim, "FLAT_GRADIENTS", request.param)
    return request.param  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", list(RECIPES))
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"track_gsnr": True, "foreach": True, "nonfinite": "skip"},
        {"decomposition": "batched", "nesterov": True},
    ],
    ids=["plain", "tracked-foreach-skip", "batched-nesterov"],
)
def test_a_step_reads_nothing_back(name: str, options: dict[str, Any], flat: bool | None) -> None:
    model = _model()
    params = list(model.parameters())
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.05, "dampening": 0.0}]
    kwargs = {"lr": 0.1, "weight_decay": 5e-4, "check_inputs": False, **options}
    opt = deepkd.DistillOptimizer(groups, RECIPES[name](), **kwargs)
    ce = name == "ce"
    batches = _batches(STEPS, nan_at=3 if options.get("nonfinite") == "skip" else None)
    with counting_reads() as reads:
        outs = _steps(opt, model, batches, ce)
    assert reads == [], f"{name}: the step read back {reads}"
    assert opt.steps == STEPS  # ... and it did run: interval-2 GSNR estimates, a skipped step, the mask's moves
    assert [o.skipped for o in outs] == [i == 3 and "nonfinite" in options for i in range(STEPS)]


def test_a_captured_style_step_reads_nothing_back_with_the_learning_rate_on_the_device() -> None:
    model = _model()
    opt = deepkd.DistillOptimizer(model.parameters(), RECIPES["deepkd"](), lr=0.1, check_inputs=False)
    opt.capturable = True
    batches = _batches(STEPS)
    _steps(opt, model, batches[:1], False)  # the first write of the learning rate into its tensor
    with counting_reads() as reads:
        _steps(opt, model, batches[1:], False)
    assert reads == []


def test_a_frozen_parameter_and_a_reading_user_are_fine() -> None:
    """Freezing a layer mid-run reads nothing either; reading a step's values reads them all once."""
    model = _model()
    opt = deepkd.DistillOptimizer(model.parameters(), RECIPES["deepkd"](), lr=0.1, check_inputs=False)
    batches = _batches(STEPS)
    _steps(opt, model, batches[:2], False)
    model[0].weight.requires_grad_(False)
    with counting_reads() as reads:
        outs = _steps(opt, model, batches[2:], False)
    assert reads == []
    with counting_reads() as reads:
        values = outs[-1].as_dict()
    assert [r.split(" ")[0] for r in reads] == ["tolist"]  # one read for every value of the step and the record
    assert set(values["parts"]) == {"task", "tckd", "nckd"} and values["k"] >= 1


def test_the_default_input_check_reads_only_the_labels() -> None:
    model = _model()
    opt = deepkd.DistillOptimizer(model.parameters(), RECIPES["kd"](), lr=0.1)
    batches = _batches(3)
    _steps(opt, model, batches[:1], False)
    with counting_reads() as reads:
        _steps(opt, model, batches[1:], False)
    # on the CPU the label range is read every step (on CUDA the first step only): min and max, nothing else
    assert len(reads) == 4 and all(r.startswith("__int__ at inputs.py") for r in reads)


def test_a_trainer_epoch_reads_only_every_log_every_steps() -> None:
    """The Trainer reads a step's values every ``log_every`` steps (and at the epoch's end), not every step."""
    from torch.utils.data import DataLoader, TensorDataset

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 5, generator=gen), torch.randint(0, C, (96,), generator=gen)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True, generator=torch.Generator())
    teacher = _model()
    config = TrainConfig(epochs=1, lr=0.1, log_every=4, progress=False, device="cpu")
    trainer = Trainer(_model(), teacher, RECIPES["deepkd"](), config)
    trainer.optimizer.check_inputs = False
    seen: list[int] = []

    class Spy(deepkd.callbacks.Callback):
        def on_step_end(self, t: Any, out: Any) -> None:
            seen.append(len(reads))

    trainer.callbacks.append(Spy())
    with counting_reads() as reads:
        trainer.fit(loader)
    per_step = [b - a for a, b in itertools.pairwise(seen)]  # from step 2: set-up's one-batch probe reads first
    assert len(per_step) == 7
    assert [n > 0 for n in per_step] == [(i + 2) % 4 == 0 for i in range(7)]  # the check at steps 4 and 8 only


class _ForeachScalars(TorchFunctionMode):
    """Records each ``torch._foreach_*`` call whose scalar tensor has another dtype than its tensor list: on CUDA such
    a call falls back from one multi-tensor launch to one launch per tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.mismatches: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name.startswith("_foreach") and len(args) > 1 and isinstance(args[0], (list, tuple)) and args[0]:
            scalar = args[1]
            if isinstance(scalar, torch.Tensor) and scalar.dim() == 0 and scalar.dtype != args[0][0].dtype:
                self.mismatches.append(f"{name}({args[0][0].dtype} list, {scalar.dtype} scalar)")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["kd", "dot", "deepkd", "deepkd-split", "official", "deepkd-preserve-step"])
@pytest.mark.parametrize("capturable", [False, True])
def test_multi_tensor_kernels_get_scalars_of_their_lists_dtype(name: str, capturable: bool) -> None:
    model = _model()
    opt = deepkd.DistillOptimizer(model.parameters(), RECIPES[name](), lr=0.1, foreach=True, nesterov=True)
    opt.capturable = capturable
    batches = _batches(STEPS)
    _steps(opt, model, batches[:1], False)
    mode = _ForeachScalars()
    with mode:
        _steps(opt, model, batches[1:], False)
    assert mode.mismatches == []


@pytest.mark.parametrize("name", ["dot", "deepkd", "deepkd-split", "official"])
def test_the_flat_gradient_buffer_changes_nothing(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA's flat gradient buffer (one copy, one zeroing kernel, one gather for the GSNR samples) and the CPU's own
    gradient tensors give the same trajectory bit for bit, a skipped step and GSNR estimates included."""
    runs = []
    for layout in (False, True):
        monkeypatch.setattr(deepkd.optim, "FLAT_GRADIENTS", layout)
        model = _model()
        opt = deepkd.DistillOptimizer(model.parameters(), RECIPES[name](), lr=0.1, nonfinite="skip", track_gsnr=True)
        outs = _steps(opt, model, _batches(STEPS, nan_at=2), False)
        runs.append((model, [o.as_dict() for o in outs], opt.gsnr()))
    (a, out_a, r_a), (b, out_b, r_b) = runs
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert out_a == out_b or str(out_a) == str(out_b)  # NaN parts compare unequal; their text does not
    assert torch.allclose(r_a, r_b, rtol=0, atol=0, equal_nan=True)
