"""One training loop for every recipe, read top to bottom as named steps: setup, start_epoch, training_step, end_epoch.

The loop never looks at the method: a recipe's loss, momentum and mask are data run by its
:class:`~deepkd.optim.DistillOptimizer`, and a loss that needs no teacher simply gets ``teacher=None``.

>>> import torch, deepkd
>>> from torch.utils.data import DataLoader
>>> loader = DataLoader(deepkd.data.synthetic(64, 4, (8,), seed=0), batch_size=16, shuffle=True)
>>> teacher, student = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
>>> config = TrainConfig(epochs=2, lr=0.1, schedule=deepkd.schedules.Constant(), progress=False)
>>> recipe = deepkd.compose(loss="kd", momentum="dot", mask="none")
>>> history = Trainer(student, teacher, recipe, config).fit(loader, loader)
>>> len(history), sorted(history.epochs[-1]["loss"])
(2, ['nckd', 'task', 'tckd', 'total'])

Semantics worth knowing:

- The teacher is frozen (``requires_grad=False``), runs under ``torch.no_grad`` and is put back in eval mode before
  every forward pass, so neither ``trainer.student.train()`` nor a stray ``teacher.train()`` changes its outputs.
  The student trains in train mode (its BatchNorm updates) and is evaluated in eval mode.
- The learning rate follows ``config.schedule`` per step (:mod:`deepkd.schedules`); the DKD warm-up gets the epoch
  (from 1); the dynamic mask follows a moving average of the training accuracy over steps.
- Data order is a pure function of ``(seed, epoch)``: the loader's generator (and its sampler's) is re-seeded with
  ``seed * 1000003 + epoch`` before each epoch, so resuming needs no loader state. With a ``run_dir``, each epoch
  ends with ``latest.pt``, ``best.pt`` and ``student.pt`` written atomically (:mod:`deepkd.checkpoint`), and
  ``fit(resume=True)`` continues from ``latest.pt`` reproducing the uninterrupted run bit for bit on CPU (with
  ``num_workers=0`` or data without random augmentation; :mod:`deepkd.resume`). A crash mid-epoch loses that epoch
  only, or at most ``checkpoint_every_steps`` steps; SIGTERM, SIGUSR1 and Ctrl-C checkpoint at the next step and
  stop (:mod:`deepkd.preemption`). Resuming with other settings than the checkpoint's is refused, listing them,
  unless ``fit(..., allow_changes=True)``.
- Under ``torchrun`` (``torch.distributed`` initialised) each rank trains on its loader's shard; the optimizer
  synchronises the ranks, metrics are summed over ranks, rank 0 logs and writes (``docs/distributed.md``).
- ``cache_teacher=True`` computes every training sample's teacher logits once, in a first pass in data-set order,
  and reads them by sample index afterwards; the training loader must yield ``(x, y, index)`` (wrap its data set in
  :class:`~deepkd.data.IndexedDataset`) and must not augment randomly.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from deepkd import resume
from deepkd.callbacks import Callback, Checkpointer, TrainerView
from deepkd.capture import CapturedStep
from deepkd.checkpoint import CONFIG_FILE, RunDir
from deepkd.data import Loader, count_batches, seed_loader, steps_per_epoch, unpack
from deepkd.distributed import broadcast_module_, is_main_process, world_size
from deepkd.errors import ConfigError, DeepKDError
from deepkd.launch import sync_batchnorm
from deepkd.logs import loggers
from deepkd.metrics import EpochMeter, History, evaluate
from deepkd.models import extract_logits
from deepkd.optim import DistillOptimizer
from deepkd.preemption import Interrupts
from deepkd.recipe import Recipe
from deepkd.schedules import lr_scheduler
from deepkd.teacher import TeacherSource, teacher_for
from deepkd.train_config import TrainConfig, autocast
from deepkd.types import StepOutput

__all__ = ["CONFIG_FILE", "History", "TrainConfig", "Trainer", "evaluate"]


class Trainer:
    """Trains ``student`` with ``recipe`` (distilling from ``teacher`` when the recipe's loss needs one).

    Args:
        student: any module returning logits (or a tuple/list/mapping holding them, see
            :func:`~deepkd.models.as_logits_model`).
        teacher: the teacher, or ``None`` for losses without a teacher (it is ignored for those).
        recipe: the method (:func:`deepkd.compose`).
        config: the :class:`TrainConfig`.
        run_dir: where checkpoints, ``metrics.jsonl`` and ``config.toml`` go; ``None`` writes nothing.
        seed: the seed of the data order (``seed * 1000003 + epoch`` per epoch).
        callbacks: extra :class:`~deepkd.callbacks.Callback` objects, called after the built-in loggers.
        run_config: the config of the whole run (e.g. an :class:`~deepkd.experiment.ExperimentConfig`), saved as
            ``config.toml`` and in checkpoints; defaults to ``{recipe, train}``.
        teacher_logits: precomputed teacher logits ``[len(train set), classes]`` in data-set index order, as
            ``cache_teacher`` would compute them (e.g. shared by several runs on the same data); needs
            ``cache_teacher = true``.

    Attributes:
        epoch: the epoch being trained (from 1), or the last one done; 0 before training.
        global_step: optimizer steps taken (skipped non-finite steps included).
        history: the :class:`History` so far. ``should_stop``: set to True to stop after the current epoch.
        student_forward: the module the loop calls: the student, or its ``torch.compile`` wrapper (same weights).
        checkpointer: the :class:`~deepkd.callbacks.Checkpointer` that writes every checkpoint (``None`` without a
            run directory).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        recipe: Recipe,
        config: TrainConfig | None = None,
        *,
        run_dir: str | Path | None = None,
        seed: int = 0,
        callbacks: Sequence[Callback] = (),
        run_config: object | None = None,
        teacher_logits: Tensor | None = None,
    ) -> None:
        self.config = config = config if config is not None else TrainConfig()
        self.recipe, self.seed = recipe, seed
        self._run = RunDir(run_dir) if run_dir is not None else None
        self.run_dir = self._run.path if self._run is not None else None
        self.device = config.resolved_device()
        self.teacher = teacher_for(recipe.loss, teacher, self.device)
        self.student = sync_batchnorm(student, config.sync_batchnorm).to(self.device)
        self.student_forward: nn.Module = torch.compile(self.student) if config.compile else self.student  # type: ignore[assignment]
        config.check_recipe(recipe)  # train.momentum against the strategy's offsets, named as in a config file
        kwargs = config.optimizer_kwargs(world_size())  # the learning rate scaled as config.scale_lr asks
        self.optimizer = DistillOptimizer(self.student.parameters(), recipe, **kwargs)
        self.scheduler: LambdaLR | None = None  # built by fit(), which knows the steps per epoch
        self.run_config = run_config if run_config is not None else {"recipe": recipe, "train": config}
        self.history = History()
        self.epoch = self.global_step = self.steps_per_epoch = self.num_classes = 0
        self.last_lr, self.should_stop = kwargs["lr"], False
        self.teacher_source = TeacherSource(
            self.teacher, self.device, config.precision, cache_teacher=config.cache_teacher, logits=teacher_logits,
            progress=config.progress,
        )  # fmt: skip
        # the epoch in progress: its meter, whether it is under way, when it started, and the loader's generator
        self._meter = EpochMeter(self.device, recipe.loss.part_names)
        self._in_epoch, self._started = False, 0.0
        self._generator: torch.Generator | None = None
        self._resume: resume.ResumePoint | None = None  # set when fit() resumes from inside an epoch
        self._interrupts = Interrupts(enabled=self._run is not None)
        self._captured: CapturedStep | None = None  # built by setup() when config.capture asks for it
        self.checkpointer = Checkpointer(self._run, config.checkpoint_every_steps) if self._run else None
        # the checkpointer runs last: it saves what the other callbacks did
        self.callbacks: list[Callback] = [*loggers(config, self.run_dir), *callbacks]
        self.callbacks += [self.checkpointer] if self.checkpointer else []

    # ------------------------------------------------------------------ the loop
    def fit(
        self,
        train_loader: Loader,
        eval_loader: Loader | None = None,
        *,
        resume: bool = False,
        overwrite: bool = False,
        allow_changes: bool = False,
    ) -> History:
        """Train for ``config.epochs`` epochs, evaluating on ``eval_loader`` after each; returns the history.

        ``resume=True`` continues from ``run_dir/latest.pt`` when it exists (else starts fresh); settings that differ
        from the checkpoint's are refused, listed, unless ``allow_changes=True`` (then they are printed). Without
        ``resume``, a ``run_dir`` that already holds a checkpoint is refused unless ``overwrite=True``.

        Raises:
            DataError: a loader is empty. InputError: bad labels or logits, or teacher and student disagree on the
            class count. ConfigError: e.g. ``cache_teacher`` with random augmentation, or changed settings.
            CheckpointError: ``latest.pt`` is corrupt or belongs to another recipe or model (nothing on disk is
            changed), or a checkpoint cannot be written (the message says why).
        """
        self.setup(train_loader, eval_loader, resume=resume, overwrite=overwrite, allow_changes=allow_changes)
        self._call("on_fit_start")
        with self._interrupts.installed():
            while self.epoch < self.config.epochs and not self.should_stop:
                self.epoch += 1
                if not self.train_epoch(self.start_epoch(train_loader)):
                    break  # a stop signal ended the epoch early; its checkpoint is written
                self._call("on_epoch_end", self.end_epoch(eval_loader))  # loggers, callbacks, then the checkpointer
                if not self.history.interrupted and self._interrupts.requested():  # a signal during evaluation
                    self._stop(inside_epoch=False)
        self._call("on_fit_end")
        return self.history

    def setup(
        self,
        train_loader: Loader,
        eval_loader: Loader | None = None,
        *,
        resume: bool,
        overwrite: bool,
        allow_changes: bool = False,
    ) -> None:
        """Before the first epoch: check the loaders and models (one probe batch), build the scheduler, open the run
        directory (loading ``latest.pt`` when resuming) and fill the teacher-logit cache. On a distributed run every
        rank starts from rank 0's student (broadcast), then from ``latest.pt`` when resuming."""
        self.steps_per_epoch = steps = steps_per_epoch(train_loader)
        if eval_loader is not None:
            count_batches(eval_loader, "eval_loader")
        self.num_classes = self.teacher_source.probe_class_count(self.student, train_loader)
        self.scheduler = lr_scheduler(self.optimizer, self.config.schedule, steps, self.config.epochs)
        self._generator = getattr(train_loader, "generator", None)
        broadcast_module_(self.student)
        if self._run is not None:
            self._run.open(resume=resume, overwrite=overwrite, run_config=self.run_config, load=self.load_state_dict,
                           allow_changes=allow_changes)  # fmt: skip
        elif resume:
            raise ConfigError("resume=True needs a run_dir to find the checkpoint in")
        self.teacher_source.prepare(train_loader, self.num_classes)
        if self.config.capture:
            self._captured = CapturedStep(self.step_function, self.optimizer)

    def start_epoch(self, train_loader: Loader) -> Iterator[Any]:
        """Train mode, this epoch's data order (from ``(seed, epoch)``) and a fresh meter; then ``on_epoch_start``.
        Returns the epoch's batches: after a mid-epoch checkpoint, those not yet trained (:func:`resume.skip_done`)."""
        self._started = time.perf_counter()
        self.student.train()
        seed_loader(train_loader, self.seed, self.epoch)
        self._meter, self._in_epoch = EpochMeter(self.device, self.recipe.loss.part_names), True
        self._call("on_epoch_start")
        batches = iter(train_loader)
        if self._resume is not None:
            meter = resume.skip_done(batches, self._resume, self._generator, progress=self.config.progress)
            if meter is not None:
                self._meter.load_state_dict(meter)
            self._resume = None
        return batches

    def train_epoch(self, batches: Iterator[Any]) -> bool:
        """Train on ``batches``; ``False`` when a stop signal ended the epoch before its last step (its checkpoint
        is written), ``True`` when the epoch ran to its end."""
        for batch in batches:
            self._call("on_step_end", self.training_step(batch))
            if self._interrupts.requested():  # any rank got a stop signal: every rank stops at this step
                return not self._stop(inside_epoch=self.batches_done < self.steps_per_epoch)
        return True

    @property
    def batches_done(self) -> int:
        """Steps taken in the epoch in progress (or the last one)."""
        return self.global_step - (self.epoch - 1) * self.steps_per_epoch

    def training_step(self, batch: Any) -> StepOutput:
        """One optimizer step: the student's logits, the teacher's, the distillation step, the learning-rate step
        (the first three replayed as one CUDA graph with ``config.capture``)."""
        x, y, index = unpack(batch, self.device)
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        if self._captured is None:
            out, logits = self.step_function(x, y, index, epoch=self.epoch)
        else:
            inputs = (x, y) if index is None else (x, y, index.to(self.device, non_blocking=True))
            out, logits = self._captured(*inputs, epoch=self.epoch)
        self.lr_scheduler.step()
        self.global_step += 1
        self._meter.update(out, logits, y)
        if self.global_step % self.config.log_every == 0:  # a NaN loss under nonfinite="raise" surfaces here
            self.optimizer.check_finite()
        return out

    def step_function(self, x: Any, y: Tensor, index: Tensor | None = None, *, epoch: int) -> tuple[StepOutput, Tensor]:
        """The step's device work: the student's logits, the teacher's, the distillation step (what ``capture``
        records as a graph)."""
        with autocast(self.device, self.config.precision, cache=not self.config.capture):
            logits = extract_logits(self.student_forward(x))
        teacher_logits = self.teacher_source(x, index)
        return self.optimizer.distill_step(logits, teacher_logits, y, epoch=epoch), logits

    def end_epoch(self, eval_loader: Loader | None = None) -> dict[str, Any]:
        """The epoch's record (training summary, evaluation on ``eval_loader``, wall time), appended to the history."""
        self.optimizer.check_finite()
        metrics = {"kind": "epoch", "epoch": self.epoch, "step": self.global_step, "lr": self.last_lr}
        metrics.update(self._meter.summary())
        self._in_epoch = False
        if eval_loader is not None:
            metrics.update(self.evaluate(eval_loader))
        metrics["time"] = time.perf_counter() - self._started
        self.history.epochs.append(metrics)
        return metrics

    def _stop(self, *, inside_epoch: bool) -> bool:
        """A stop signal reached every rank: stop, with ``latest.pt`` written now when inside an epoch (an epoch's
        end writes its own); says so on stderr. Returns ``inside_epoch``."""
        self.history.interrupted = self.should_stop = True
        self.history.stopped_by = self._interrupts.signal_name or "a signal to another rank"
        if inside_epoch and self.checkpointer is not None:
            self.checkpointer.save_latest(self)
        if is_main_process():
            print(
                f"deepkd: stopped by {self.history.stopped_by} after step {self.global_step} (epoch {self.epoch}, "
                f"batch {self.batches_done}/{self.steps_per_epoch}); checkpoint in {self.run_dir}/latest.pt; "
                "continue with --resume",
                file=sys.stderr,
                flush=True,
            )
        return inside_epoch

    # ------------------------------------------------------------------ state
    @property
    def lr_scheduler(self) -> LambdaLR:
        """The learning-rate scheduler, built by :meth:`fit` (which knows the steps per epoch)."""
        if self.scheduler is None:
            raise DeepKDError("the trainer has no learning-rate scheduler before fit() (or setup()) builds it")
        return self.scheduler

    @property
    def in_epoch(self) -> bool:
        """Whether an epoch is under way (a checkpoint now is a mid-epoch one)."""
        return self._in_epoch

    @property
    def generator(self) -> torch.Generator | None:
        """The training loader's generator (its state is saved with the run's), or ``None``."""
        return self._generator

    @property
    def meter(self) -> EpochMeter:
        """The metric sums of the epoch in progress."""
        return self._meter

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run (the content of ``latest.pt``, :func:`resume.capture`). Collective
        on distributed runs: call it on every rank. Raises :class:`DeepKDError` before :meth:`fit`."""
        return resume.capture(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint made by :meth:`state_dict` (:func:`resume.restore`), checked before anything
        is changed: raises :class:`~deepkd.errors.CheckpointError` for another recipe, other model shapes, another
        number of steps per epoch, or junk."""
        restored = resume.restore(self, state)
        self.epoch, self.global_step, self.history, self._resume = restored
        self.last_lr = self.optimizer.param_groups[0]["lr"]

    # ------------------------------------------------------------------ helpers
    def evaluate(self, loader: Loader) -> dict[str, float]:
        """Test loss, top-1 and top-5 of the student on ``loader`` (see :func:`evaluate`), summed over the ranks'
        shards on a distributed run (every rank must call it)."""
        dev, precision = self.device, self.config.precision
        return evaluate(self.student_forward, loader, device=dev, precision=precision, over_ranks=True,
                        progress=self.config.progress)  # fmt: skip

    def compute_teacher_logits(self, loader: Loader) -> Tensor:
        """The teacher's logits for every sample of ``loader``'s data set, in index order (what ``cache_teacher``
        computes; pass it as ``teacher_logits`` to other runs on the same data)."""
        self.num_classes = self.num_classes or self.teacher_source.probe_class_count(self.student, loader)
        return self.teacher_source.compute(loader, self.num_classes)

    def _call(self, hook: str, *args: Any) -> None:
        view: TrainerView = self  # what callbacks may rely on (mypy checks that the trainer provides it)
        for callback in self.callbacks:
            fn = getattr(callback, hook, None)
            if fn is not None:
                fn(view, *args)
