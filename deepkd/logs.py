"""Logging callbacks: a JSONL metrics file, a tqdm progress bar, and optional TensorBoard scalars.

``metrics.jsonl`` holds one JSON object per line with ``"kind": "step"`` (every ``log_every`` steps) or
``"kind": "epoch"``; both carry ``epoch`` (from 1) and ``step`` (the global step after that step or epoch). Step
records hold ``lr``, ``loss`` (each part and ``total``), ``momentum`` (each part's coefficient), ``gsnr`` (each
gradient group's estimate, or null), ``k``, ``phase`` and ``skipped``; epoch records add train and test top-1/top-5,
test loss and wall time (see :class:`~deepkd.trainer.Trainer`). Non-finite numbers are written as ``null``. When a run
resumes, records past the checkpoint's global step (from the interrupted epoch) are dropped first, so the file reads
as one uninterrupted run.

:func:`loggers` builds the loggers a :class:`~deepkd.train_config.TrainConfig` asks for; the trainer runs them before
the user's callbacks. They read the trainer through :class:`~deepkd.callbacks.TrainerView` only.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from deepkd.callbacks import Callback, TrainerView
from deepkd.errors import ConfigError
from deepkd.utils import is_main_process

if TYPE_CHECKING:
    from deepkd.train_config import TrainConfig
    from deepkd.types import StepOutput

__all__ = [
    "METRICS_FILE",
    "JsonlLogger",
    "ProgressBar",
    "TensorBoardLogger",
    "loggers",
    "read_metrics",
    "step_record",
]

METRICS_FILE = "metrics.jsonl"


def step_record(trainer: TrainerView, out: StepOutput) -> dict[str, Any]:
    """The ``"kind": "step"`` record of one optimizer step."""
    return {
        "kind": "step",
        "epoch": trainer.epoch,
        "step": trainer.global_step,
        "lr": trainer.last_lr,
        "loss": {**out.parts, "total": out.loss},
        "momentum": dict(out.momenta),
        "gsnr": None if out.gsnr is None else dict(out.gsnr),
        "k": out.k,
        "phase": out.phase,
        "skipped": out.skipped,
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (a torn last line, from a crash, is skipped)."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


class JsonlLogger(Callback):
    """Appends step and epoch records to ``run_dir/metrics.jsonl``; each line is written and flushed at once."""

    def __init__(self, run_dir: str | os.PathLike[str], log_every: int = 50) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.log_every = log_every

    def on_fit_start(self, trainer: TrainerView) -> None:
        kept = []
        if trainer.global_step > 0 and self.path.exists():  # resuming: drop what the lost epoch logged
            kept = [r for r in read_metrics(self.path) if r.get("step", math.inf) <= trainer.global_step]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(json.dumps(_json_safe(r)) + "\n" for r in kept))
        os.replace(tmp, self.path)

    def on_step_end(self, trainer: TrainerView, out: StepOutput) -> None:
        if trainer.global_step % self.log_every == 0:
            self._write(step_record(trainer, out))

    def on_epoch_end(self, trainer: TrainerView, metrics: dict[str, Any]) -> None:
        self._write(metrics)

    def _write(self, record: Mapping[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(_json_safe(record)) + "\n")


def _flatten(record: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{name}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch", "step"):
            yield name, float(value)


class TensorBoardLogger(Callback):
    """Writes every numeric entry of the step and epoch records as TensorBoard scalars (``loss/tckd``,
    ``momentum/nckd``, ``epoch/test_top1``...). Needs the ``tensorboard`` package (``pip install
    'deepkd[tensorboard]'``); it is imported when the logger is made."""

    def __init__(self, run_dir: str | os.PathLike[str], log_every: int = 50) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "tensorboard = true needs the tensorboard package: pip install 'deepkd[tensorboard]' "
                "(or set train.tensorboard = false) @ $.train.tensorboard"
            ) from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        self.log_every = log_every

    def on_step_end(self, trainer: TrainerView, out: StepOutput) -> None:
        if trainer.global_step % self.log_every == 0:
            for name, value in _flatten(step_record(trainer, out)):
                self.writer.add_scalar(name, value, trainer.global_step)

    def on_epoch_end(self, trainer: TrainerView, metrics: dict[str, Any]) -> None:
        for name, value in _flatten(metrics, "epoch/"):
            self.writer.add_scalar(name, value, trainer.epoch)
        self.writer.flush()

    def on_fit_end(self, trainer: TrainerView) -> None:
        self.writer.close()


def _pct(value: float | None) -> str:
    return "  n/a" if value is None or not math.isfinite(value) else f"{100 * value:5.2f}%"


class ProgressBar(Callback):
    """A tqdm bar per epoch on stderr and a one-line summary after each epoch.

    ``enabled=None`` shows the bar only when stderr is a terminal (tqdm's ``disable=None``); the summaries are
    printed unless ``enabled=False``.
    """

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def on_epoch_start(self, trainer: TrainerView) -> None:
        disable = None if self.enabled is None else not self.enabled
        self.bar = tqdm(
            total=trainer.steps_per_epoch,
            desc=f"epoch {trainer.epoch}/{trainer.config.epochs}",
            unit="step",
            leave=False,
            dynamic_ncols=True,
            disable=disable,
            file=sys.stderr,
        )

    def on_step_end(self, trainer: TrainerView, out: StepOutput) -> None:
        if self.bar is None:
            return
        self.bar.update()
        if not self.bar.disable and trainer.global_step % trainer.config.log_every == 0:  # reading waits for the device
            self.bar.set_postfix(loss=f"{out.loss:.4f}", k=out.k, lr=f"{trainer.last_lr:.3g}", refresh=False)

    def on_epoch_end(self, trainer: TrainerView, metrics: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.enabled is False:
            return
        best = trainer.history.best_top1
        tqdm.write(
            f"epoch {metrics['epoch']}/{trainer.config.epochs}  loss {metrics['loss']['total']:.4f}  "
            f"train {_pct(metrics['train_top1'])}  test {_pct(metrics.get('test_top1'))} (best {_pct(best)})  "
            f"lr {metrics['lr']:.3g}  K {metrics['k']} {metrics['phase']}  {metrics['time']:.1f}s",
            file=sys.stderr,
        )


def loggers(config: TrainConfig, run_dir: str | os.PathLike[str] | None) -> list[Callback]:
    """The logging callbacks of ``config``: a :class:`ProgressBar`, and with a ``run_dir`` a :class:`JsonlLogger`
    (and a :class:`TensorBoardLogger` when ``config.tensorboard``). Only the main process logs: elsewhere, none.

    Raises:
        ConfigError: ``tensorboard = true`` without a run directory, or without the tensorboard package.
    """
    if not is_main_process():
        return []
    callbacks: list[Callback] = [ProgressBar(config.progress)]
    if config.tensorboard and run_dir is None:
        raise ConfigError("tensorboard = true needs a run directory to write to @ $.train.tensorboard")
    if run_dir is not None:
        callbacks.append(JsonlLogger(run_dir, config.log_every))
        if config.tensorboard:
            callbacks.append(TensorBoardLogger(run_dir, config.log_every))
    return callbacks
