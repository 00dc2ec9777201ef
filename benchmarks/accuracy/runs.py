"""One run: distil one student with one recipe and one seed, recording its curves and the optimizer's read-outs.

The seed sets the student's initial weights and the data order, so a run's result depends only on its inputs and
the torch thread count, not on what ran before it or in which process.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

import deepkd
from benchmarks.accuracy.data import loaders
from benchmarks.accuracy.methods import recipes
from benchmarks.accuracy.profiles import LR, model, train_config
from deepkd.callbacks import Callback, TrainerView
from deepkd.errors import NonFiniteLossError
from deepkd.models import count_parameters
from deepkd.trainer import Trainer


class Trace(Callback):
    """Records the optimizer's read-outs every few steps: momenta, GSNR, K, phase and learning rate."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.rows: list[dict[str, Any]] = []

    def on_step_end(self, trainer: TrainerView, out: deepkd.StepOutput) -> None:
        if trainer.global_step % self.every == 0:
            row = {"step": trainer.global_step, "epoch": trainer.epoch, "k": out.k, "phase": out.phase}
            row["lr"] = getattr(trainer, "last_lr", None)
            row.update({f"m_{k}": v for k, v in out.momenta.items()})
            row.update({f"gsnr_{k}": v for k, v in (out.gsnr or {}).items()})
            self.rows.append(row)


class Validate(Callback):
    """Evaluates the student on the validation split after every epoch (``val_top1``/``val_loss`` in its record).

    Evaluation runs in eval mode under ``no_grad`` and draws no random numbers, so it leaves training unchanged."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def on_epoch_end(self, trainer: TrainerView, metrics: dict[str, Any]) -> None:
        res = trainer.evaluate(self.loader)
        metrics["val_top1"], metrics["val_loss"] = res["test_top1"], res["test_loss"]


def trace_every(steps_per_epoch: int, epochs: int) -> int:
    """The trace's interval in steps: about 20 read-outs an epoch, and at most about 200 a run."""
    return max(1, steps_per_epoch // 20, math.ceil(steps_per_epoch * epochs / 200))


def validation_figures(val_curve: list[float], test_curve: list[float]) -> dict[str, Any]:
    """A run's validation record: the curve, its best (the first epoch reaching it) and final values, and the test
    top-1 at the best validation epoch."""
    best = max(range(len(val_curve)), key=lambda i: (val_curve[i], -i))
    return {
        "val_top1": val_curve,
        "best_val_top1": val_curve[best],
        "final_val_top1": val_curve[-1],
        "best_val_epoch": best + 1,
        "test_at_best_val": test_curve[best],
    }


def run_method(
    dataset: str,
    method: str,
    recipe: deepkd.Recipe,
    seed: int,
    teacher: torch.nn.Module | None,
    data: Any,
    epochs: int,
    teacher_logits: torch.Tensor | None = None,
    *,
    val: TensorDataset | None = None,
    schedule: Any = None,
    lr: float = LR,
    evaluate: str = "epoch",
    device: str = "cpu",
) -> dict[str, Any]:
    """Distil one student with ``recipe`` from learning rate ``lr``; test top-1 (and validation top-1 when ``val``
    is given) after every epoch, or after the last one only when ``evaluate`` is ``"final"`` (the curves then hold
    one value each, and the best epoch is the last).

    ``data`` is ``(train, test, classes)``; the seed sets the student's initial weights and the data order."""
    if evaluate not in ("epoch", "final"):
        raise ValueError(f"evaluate must be 'epoch' or 'final', got {evaluate!r}")
    train, test, classes = data
    torch.manual_seed(1000 + seed)
    student = model(dataset, "student", classes, train.tensors[0][:1])
    needs_teacher = recipe.loss.needs_teacher
    train_loader, test_loader = loaders(train, test, indexed=needs_teacher, device=device)
    trace = Trace(every=trace_every(len(train_loader), epochs))
    callbacks: list[Callback] = [trace]
    val_loader = None if val is None else DataLoader(val, batch_size=512)
    if val_loader is not None and evaluate == "epoch":
        callbacks.append(Validate(val_loader))
    start, cpu = time.perf_counter(), time.process_time()
    trainer = Trainer(
        student,
        teacher if needs_teacher else None,
        recipe,
        train_config(epochs, cache=needs_teacher, schedule=schedule, lr=lr, device=device),
        seed=seed,
        callbacks=callbacks,
        teacher_logits=teacher_logits if needs_teacher else None,
    )
    history = trainer.fit(train_loader, test_loader if evaluate == "epoch" else None)
    if evaluate == "epoch":
        test_curve, val_curve = history["test_top1"], history["val_top1"] if val_loader is not None else []
    else:
        test_curve = [trainer.evaluate(test_loader)["test_top1"]]
        val_curve = [trainer.evaluate(val_loader)["test_top1"]] if val_loader is not None else []
    result: dict[str, Any] = {
        "dataset": dataset,
        "method": method,
        "seed": seed,
        "lr": lr,
        "evaluate": evaluate,
        "device": device,
        "recipe": recipe.to_dict(),
        "student_params": count_parameters(student),
        "best_top1": max(test_curve),
        "final_top1": test_curve[-1],
        "test_top1": test_curve,
        "train_top1": history["train_top1"],
        "epoch_time": history["time"],
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "threads": torch.get_num_threads(),
        "trace": trace.rows,
    }
    if val_curve:
        result.update(validation_figures(val_curve, test_curve))
    return result


def guarded(
    dataset: str,
    method: str,
    recipe: deepkd.Recipe,
    seed: int,
    teacher: torch.nn.Module | None,
    data: Any,
    epochs: int,
    logits: torch.Tensor | None,
    val: TensorDataset | None,
    schedule: Any,
    lr: float = LR,
    evaluate: str = "epoch",
    device: str = "cpu",
) -> dict[str, Any]:
    """:func:`run_method`, with a diverged run (a non-finite loss) recorded as failed instead of ending the benchmark;
    any other error is a bug and propagates."""
    try:
        return run_method(
            dataset,
            method,
            recipe,
            seed,
            teacher,
            data,
            epochs,
            logits,
            val=val,
            schedule=schedule,
            lr=lr,
            evaluate=evaluate,
            device=device,
        )
    except NonFiniteLossError as exc:
        failed = {"dataset": dataset, "method": method, "seed": seed, "lr": lr, "recipe": recipe.to_dict()}
        return {**failed, "error": repr(exc)}


def cache_speedup(dataset: str, data: Any, teacher: torch.nn.Module, teacher_logits: torch.Tensor) -> dict[str, float]:
    """Seconds for one KD epoch with the teacher-logit cache and without it (teacher forward every step), and for
    the one-time pass that fills the cache; the same student, data and seed."""
    train, test, classes = data
    recipe = recipes(classes, 1, 1)["kd"]
    out: dict[str, float] = {}
    for label, cache in (("cached", True), ("teacher_forward", False)):
        torch.manual_seed(1000)
        student = model(dataset, "student", classes, train.tensors[0][:1])
        loader, _ = loaders(train, test, indexed=cache)
        trainer = Trainer(
            student, teacher, recipe, train_config(1, cache=cache), teacher_logits=teacher_logits if cache else None
        )
        start = time.perf_counter()
        trainer.fit(loader)
        out[label] = time.perf_counter() - start
    start = time.perf_counter()
    probe = Trainer(model(dataset, "student", classes, train.tensors[0][:1]), teacher, recipe, train_config(1, True))
    probe.compute_teacher_logits(loaders(train, test, indexed=True)[0])
    out["cache_pass"] = time.perf_counter() - start
    return out
