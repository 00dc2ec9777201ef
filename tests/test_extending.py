"""docs/extending.md: its worked example registers an adaptive momentum strategy and runs it, unchanged."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

import deepkd
from deepkd.data import synthetic

PAGE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


@pytest.fixture
def example() -> Iterator[dict[str, Any]]:
    """The namespace after running the page's code block (which trains 20 steps); the strategy is unregistered
    afterwards so that the registry is as the other tests expect it."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.DOTALL)
    (code,) = [block for block in blocks if '"follow_norms"' in block]  # the page's other blocks: the docs test
    namespace: dict[str, Any] = {"__name__": "extending_example"}
    torch.manual_seed(0)
    try:
        exec(compile(code, str(PAGE), "exec"), namespace)
        yield namespace
    finally:
        if "follow_norms" in deepkd.MOMENTA:
            deepkd.MOMENTA.unregister("follow_norms")


def _batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(32, 8, generator=gen),
            torch.randn(32, 5, generator=gen),
            torch.randint(0, 5, (32,), generator=gen),
        )
        for _ in range(n)
    ]


def test_the_coefficients_follow_the_gradients_and_stay_in_range(example: dict[str, Any]) -> None:
    opt, out = example["opt"], example["out"]
    assert opt.plan.groups == (("task",), ("tckd",), ("nckd",))
    offsets = opt.offsets.tolist()  # a tensor on the device, as the page's rule returns it
    assert len(set(offsets)) == 3 and all(0 < abs(o) <= 0.05 for o in offsets)
    assert set(out.momenta) == {"task", "tckd", "nckd"}
    assert all(0.85 <= m <= 0.95 for m in out.momenta.values()) and len(set(out.momenta.values())) == 3
    # the largest gradient gets the largest coefficient: the rule read this step's gradients
    assert int(opt.rule_state.steps) == 20
    norms = opt.rule_state.norms
    assert torch.argmax(norms) == max(range(3), key=lambda i: offsets[i])


def test_the_strategy_saves_and_resumes_bit_for_bit(example: dict[str, Any], tmp_path: Path) -> None:
    recipe = example["recipe"]
    recipe.save(tmp_path / "r.toml")
    assert "follow_norms" in (tmp_path / "r.toml").read_text() and deepkd.Recipe.load(tmp_path / "r.toml") == recipe

    def run(model: torch.nn.Module, opt: deepkd.DistillOptimizer, batches: list[Any]) -> None:
        for x, t, y in batches:
            opt.distill_step(model(x), t, y, epoch=1)

    torch.manual_seed(1)
    model = torch.nn.Linear(8, 5)
    opt = deepkd.DistillOptimizer(model.parameters(), recipe, lr=0.1)
    first, second = _batches(7, seed=2), _batches(6, seed=3)
    run(model, opt, first)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    run(model, opt, second)

    resumed = torch.nn.Linear(8, 5)
    resumed.load_state_dict(saved_model)
    opt2 = deepkd.DistillOptimizer(resumed.parameters(), recipe, lr=0.1)
    opt2.load_state_dict(saved_opt)
    assert int(opt2.rule_state.steps) == 7
    run(resumed, opt2, second)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert opt2.coefficients() == opt.coefficients()


def test_a_step_with_the_strategy_reads_nothing_back_and_keeps_its_state_in_place(example: dict[str, Any]) -> None:
    from deepkd.capture import state_tensors

    from .test_no_sync import counting_reads

    model = torch.nn.Linear(8, 5)
    opt = deepkd.DistillOptimizer(model.parameters(), example["recipe"], lr=0.1, check_inputs=False)
    batches = _batches(4, seed=5)
    x, t, y = batches[0]
    opt.distill_step(model(x), t, y, epoch=1)
    where = {name: tensor.data_ptr() for name, tensor in state_tensors(opt)}
    with counting_reads() as reads:
        for x, t, y in batches[1:]:
            opt.distill_step(model(x), t, y, epoch=1)
    assert reads == [] and {name: tensor.data_ptr() for name, tensor in state_tensors(opt)} == where


def test_the_trainer_runs_the_strategy(example: dict[str, Any]) -> None:
    data = synthetic(64, 5, (8,), seed=0)
    loader = DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator())
    config = deepkd.TrainConfig(epochs=2, lr=0.1, schedule=deepkd.schedules.Constant(), progress=False)
    trainer = deepkd.Trainer(torch.nn.Linear(8, 5), torch.nn.Linear(8, 5), example["recipe"], config)
    history = trainer.fit(loader, loader)
    assert len(history) == 2 and set(history.epochs[-1]["momentum"]) == {"task", "tckd", "nckd"}
    assert history.epochs[-1]["momentum"] != {"task": 0.9, "tckd": 0.9, "nckd": 0.9}
