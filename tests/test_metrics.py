"""Metrics: top-k hits, evaluation, the epoch meter and the history's best-epoch rules."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deepkd.errors import DataError, InputError
from deepkd.metrics import EpochMeter, History, evaluate, topk_hits


def test_topk_hits_counts_top1_and_top5_and_shrinks_to_the_class_count():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.2, 0.0], [0.3, 0.2, 0.5]])
    assert topk_hits(logits, torch.tensor([1, 1, 1])).tolist() == [1, 3]  # top-5 of 3 classes is top-3
    wide = torch.arange(10.0).repeat(3, 1)  # class 9 first, class 5 fifth, class 4 sixth
    assert topk_hits(wide, torch.tensor([9, 5, 4])).tolist() == [1, 2]


def _record(epoch: int, top1: float | None) -> dict:
    return {"epoch": epoch} if top1 is None else {"epoch": epoch, "test_top1": top1}


def test_history_best_is_the_first_epoch_reaching_the_highest_finite_top1():
    history = History([_record(1, 0.5), _record(2, 0.7), _record(3, math.nan), _record(4, 0.7), _record(5, None)])
    assert (history.best_top1, history.best_epoch) == (0.7, 2)
    assert history.final_top1 is None and history["epoch"] == [1, 2, 3, 4, 5]
    assert History.from_dict(history.to_dict()) == history
    empty = History()
    assert (empty.best_top1, empty.best_epoch, empty.final_top1, len(empty)) == (None, None, None, 0)


def _out(loss: float, *, skipped: bool = False) -> SimpleNamespace:  # the fields of a StepOutput the meter reads
    packed = torch.tensor([loss, 4.0, 0.0, float(skipped)], dtype=torch.float64)  # parts, k, phase, skipped
    return SimpleNamespace(tensor=packed, momenta={"task": 0.9}, gsnr=None, k=4, phase="easy")


def test_epoch_meter_weights_by_samples_and_counts_skipped_steps():
    meter = EpochMeter(torch.device("cpu"), ["task"])
    logits = torch.eye(5)
    meter.update(_out(1.0), logits[:4], torch.tensor([0, 1, 2, 0]))  # 3 of 4 right
    meter.update(_out(4.0), logits[:1], torch.tensor([0]))  # 1 of 1 right
    meter.update(_out(math.nan, skipped=True), logits, torch.arange(5))  # neither averaged nor counted as hits
    summary = meter.summary()
    assert summary["loss"] == {"task": pytest.approx(8 / 5), "total": pytest.approx(8 / 5)}
    assert summary["train_top1"] == pytest.approx(4 / 5) and summary["train_top5"] == 1.0
    assert summary["skipped"] == 1 and summary["k"] == 4 and summary["gsnr"] is None


def test_epoch_meter_of_only_skipped_steps_is_nan_and_of_no_step_an_error():
    meter = EpochMeter(torch.device("cpu"), ["task"])
    meter.update(_out(math.nan, skipped=True), torch.eye(2), torch.arange(2))
    summary = meter.summary()
    assert math.isnan(summary["loss"]["total"]) and math.isnan(summary["train_top1"])
    with pytest.raises(DataError, match="yielded no batches this epoch"):
        EpochMeter(torch.device("cpu"), ["task"]).summary()


def test_evaluate_restores_the_mode_and_names_the_loader_in_errors():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5)).train()
    x = torch.randn(10, 3)
    loader = DataLoader(TensorDataset(x, model[0](x).argmax(1).detach()), batch_size=4)
    metrics = evaluate(model, loader)  # in eval mode: dropout off, so the labels are exactly its predictions
    assert metrics["test_top1"] == 1.0 and model.training
    bad = DataLoader(TensorDataset(x, torch.full((10,), 9)), batch_size=4)
    with pytest.raises(InputError, match=r"^test set: label 9 is out of range"):
        evaluate(model, bad, name="test set")
    with pytest.raises(DataError, match="the eval_loader is empty"):
        evaluate(model, [])
