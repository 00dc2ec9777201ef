"""Logging callbacks: a JSONL metrics file, the progress of each epoch, and optional TensorBoard scalars.

``metrics.jsonl`` holds one JSON object per line with ``"kind": "step"`` (every ``log_every`` steps) or
``"kind": "epoch"``; both carry ``epoch`` (from 1) and ``step`` (the global step after that step or epoch). Step
records hold ``lr``, ``loss`` (each part and ``total``), ``momentum`` (each part's coefficient), ``gsnr`` (each
gradient group's estimate, or null), ``k``, ``phase`` and ``skipped``; epoch records add train and test top-1/top-5,
test loss and wall time (see :class:`~deepkd.trainer.Trainer`). Non-finite numbers are written as ``null``. When a run
resumes, records past the checkpoint's global step (from the interrupted epoch) are dropped first, so the file reads
as one uninterrupted run. A line whose write fails (a full disk) is undone, so the file never holds half a record,
and the run stops with a :class:`~deepkd.errors.CheckpointError` that says why.

:func:`loggers` builds the loggers a :class:`~deepkd.train_config.TrainConfig` asks for; the trainer runs them before
the user's callbacks. They read the trainer through :class:`~deepkd.callbacks.TrainerView` only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from deepkd.atomic import save_text_atomic, write_failure
from deepkd.callbacks import Callback, TrainerView
from deepkd.distributed import is_main_process
from deepkd.errors import ConfigError
from deepkd.masks import NoMask
from deepkd.progress import Progress

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
        save_text_atomic("".join(json.dumps(_json_safe(r)) + "\n" for r in kept), self.path)

    def on_step_end(self, trainer: TrainerView, out: StepOutput) -> None:
        if trainer.global_step % self.log_every == 0:
            self._write(step_record(trainer, out))

    def on_epoch_end(self, trainer: TrainerView, metrics: dict[str, Any]) -> None:
        self._write(metrics)

    def _write(self, record: Mapping[str, Any]) -> None:
        """Append one line; a write that fails is undone (the file never keeps half a line) and raises
        :class:`~deepkd.errors.CheckpointError` saying why."""
        data = (json.dumps(_json_safe(record)) + "\n").encode("utf-8")
        with open(self.path, "ab", buffering=0) as f:
            start = f.tell()
            try:
                written = 0
                while written < len(data):  # a short write is followed by one that raises (no space...)
                    written += f.write(data[written:]) or 0
            except OSError as exc:
                with contextlib.suppress(OSError):
                    f.truncate(start)
                raise write_failure(self.path, exc, len(data)) from None


def _flatten(record: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{name}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch", "step"):
            yield name, float(value)


class TensorBoardLogger(Callback):
    """Writes every numeric entry of the step and epoch records as TensorBoard scalars (``loss/tckd``,
    ``momentum/nckd``, ``epoch/test_top1``...). Needs the ``tensorboard`` package (``pip install tensorboard``, or
    ``pip install -e '.[tensorboard]'`` in deepkd's clone); it is imported when the logger is made."""

    def __init__(self, run_dir: str | os.PathLike[str], log_every: int = 50) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "tensorboard = true needs the tensorboard package: pip install tensorboard "
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
    """Each epoch's progress on stderr (:class:`~deepkd.progress.Progress`: a tqdm bar on a terminal, a line every
    :data:`~deepkd.progress.HEARTBEAT` seconds off one) and a one-line summary after each epoch.

    The loss, K and learning rate it shows are read every ``log_every`` steps (reading a step's values waits for the
    device: never more often); between reads it shows the steps taken and their rate, which the host knows.
    ``enabled=None`` (default) shows a bar on a terminal and lines elsewhere; ``False`` shows nothing.
    """

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = enabled
        self.progress: Progress | None = None

    def on_epoch_start(self, trainer: TrainerView) -> None:
        done = max(trainer.global_step - (trainer.epoch - 1) * trainer.steps_per_epoch, 0)  # a resumed epoch
        desc = f"epoch {trainer.epoch}/{trainer.config.epochs}"
        self.progress = Progress(trainer.steps_per_epoch, desc, "step", enabled=self.enabled, initial=done)

    def on_step_end(self, trainer: TrainerView, out: StepOutput) -> None:
        if self.progress is None:
            return
        info: dict[str, Any] = {}
        if self.progress.shown and trainer.global_step % trainer.config.log_every == 0:  # reading waits for the device
            info = {
                "loss": f"{out.loss:.4f}",
                **({"k": out.k} if _masks(trainer) else {}),
                "lr": f"{trainer.last_lr:.3g}",
            }
        self.progress.update(**info)

    def on_epoch_end(self, trainer: TrainerView, metrics: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None
        if self.enabled is False:
            return
        best = trainer.history.best_top1
        mask = f"K {metrics['k']} {metrics['phase']}  " if _masks(trainer) else ""  # a run without a mask: no K
        tqdm.write(
            f"epoch {metrics['epoch']}/{trainer.config.epochs}  loss {metrics['loss']['total']:.4f}  "
            f"train {_pct(metrics['train_top1'])}  test {_pct(metrics.get('test_top1'))} (best {_pct(best)})  "
            f"lr {metrics['lr']:.3g}  {mask}{metrics['time']:.1f}s",
            file=sys.stderr,
        )

    def on_fit_end(self, trainer: TrainerView) -> None:
        if self.progress is not None:  # a run stopped inside an epoch
            self.progress.close()
            self.progress = None


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


def _masks(trainer: TrainerView) -> bool:
    """Whether the run's recipe masks NCKD (its lines then show K and the phase)."""
    return not isinstance(getattr(getattr(trainer.optimizer, "recipe", None), "mask", None), NoMask)
