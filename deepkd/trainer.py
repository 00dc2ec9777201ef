"""One training loop for every recipe: data, forward passes, the distillation step, evaluation, checkpoints, hooks.

The loop never looks at the method: a recipe's loss, momentum and mask are data run by its
:class:`~deepkd.optim.DistillOptimizer`, and a loss that needs no teacher simply gets ``teacher=None``.

>>> import torch, deepkd
>>> from torch.utils.data import DataLoader
>>> from deepkd.data import synthetic
>>> data = synthetic(64, 4, (8,), seed=0)
>>> loader = DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator())
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
  ``num_workers=0`` or data without random augmentation). A crash mid-epoch loses that epoch only.
- ``cache_teacher=True`` computes every training sample's teacher logits once, in a first pass in data-set order,
  and reads them by sample index afterwards; the training loader must yield ``(x, y, index)`` (wrap its data set in
  :class:`~deepkd.data.IndexedDataset`) and must not augment randomly.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import torch
from attrs import validators as v
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, RandomSampler

from deepkd import config as cfg
from deepkd.callbacks import Callback
from deepkd.checkpoint import BEST, FORMAT, LATEST, STUDENT, copy_atomic, load_checkpoint, save_atomic
from deepkd.compose import Recipe, same_method
from deepkd.data import augments_randomly
from deepkd.errors import CheckpointError, ConfigError, DataError, InputError
from deepkd.logs import JsonlLogger, ProgressBar, TensorBoardLogger
from deepkd.losses import validate_logits
from deepkd.models import extract_logits
from deepkd.optim import StepOutput
from deepkd.schedules import SCHEDULES, ScheduleProtocol, Step, lr_scheduler
from deepkd.utils import is_main_process, resolve_device, rng_state, set_rng_state
from deepkd.validators import integer, real

__all__ = ["CONFIG_FILE", "History", "TrainConfig", "Trainer", "evaluate"]

CONFIG_FILE = "config.toml"


def _registered_schedule(instance: object, attribute: attrs.Attribute, value: object) -> None:  # type: ignore[type-arg]
    if type(value) not in {SCHEDULES.get(n) for n in SCHEDULES.names()}:
        raise TypeError(f"schedule must be a registered schedule ({', '.join(SCHEDULES.names())}), got {value!r}")


@attrs.frozen(kw_only=True)
class TrainConfig:
    """How to train. The defaults are the CIFAR-100 recipe of mdistiller (SGD, μ = 0.9, wd 5e-4, lr 0.05, 240
    epochs, ×0.1 at 150/180/210).

    Attributes:
        epochs: number of epochs.
        lr, momentum, weight_decay, dampening, nesterov: the optimizer's hyperparameters (μ = ``momentum``).
        schedule: learning-rate multiplier per step (:mod:`deepkd.schedules`), e.g. ``{name = "cosine"}``.
        decomposition: ``"sequential"`` or ``"batched"`` gradient products.
        track_gsnr: estimate and log each gradient group's GSNR even when the momentum strategy does not use it.
        nonfinite: ``"raise"`` on a NaN/inf loss part (naming step and part) or ``"skip"`` such steps.
        precision: ``"fp32"``, ``"bf16"`` (autocast on CPU or CUDA) or ``"fp16"`` (CUDA only; without loss scaling,
            since the optimizer takes its own gradients: prefer bf16). Losses are computed in float32 either way.
        compile: run the student through ``torch.compile``.
        cache_teacher: compute the teacher's logits once per sample (data without random augmentation only).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        log_every: write a step record every this many steps.
        progress: show a progress bar (``None``: only when stderr is a terminal).
        tensorboard: also write TensorBoard scalars (needs the ``tensorboard`` package).
    """

    epochs: int = attrs.field(default=240, validator=integer(ge=1))
    lr: float = attrs.field(default=0.05, validator=real(gt=0.0))
    momentum: float = attrs.field(default=0.9, validator=real(ge=0.0, lt=1.0))
    weight_decay: float = attrs.field(default=5e-4, validator=real(ge=0.0))
    dampening: float = attrs.field(default=0.0, validator=real(ge=0.0, le=1.0))
    nesterov: bool = attrs.field(default=False, validator=v.instance_of(bool))
    schedule: ScheduleProtocol = attrs.field(factory=Step, validator=_registered_schedule)
    decomposition: Literal["sequential", "batched"] = attrs.field(
        default="sequential", validator=v.in_(("sequential", "batched"))
    )
    track_gsnr: bool = attrs.field(default=True, validator=v.instance_of(bool))
    nonfinite: Literal["raise", "skip"] = attrs.field(default="raise", validator=v.in_(("raise", "skip")))
    precision: Literal["fp32", "bf16", "fp16"] = attrs.field(default="fp32", validator=v.in_(("fp32", "bf16", "fp16")))
    compile: bool = attrs.field(default=False, validator=v.instance_of(bool))
    cache_teacher: bool = attrs.field(default=False, validator=v.instance_of(bool))
    device: str = attrs.field(default="auto", validator=v.instance_of(str))
    log_every: int = attrs.field(default=50, validator=integer(ge=1))
    progress: bool | None = attrs.field(default=None, validator=v.optional(v.instance_of(bool)))
    tensorboard: bool = attrs.field(default=False, validator=v.instance_of(bool))


@attrs.define
class History:
    """Per-epoch records of a run (the ``"kind": "epoch"`` lines of ``metrics.jsonl``).

    ``history["test_top1"]`` lists one metric over epochs; ``best_top1``/``best_epoch`` and ``final_top1`` give the
    test top-1 that papers report (best over epochs) and the last one.
    """

    epochs: list[dict[str, Any]] = attrs.Factory(list)

    def __len__(self) -> int:
        return len(self.epochs)

    def __getitem__(self, key: str) -> list[Any]:
        return [record.get(key) for record in self.epochs]

    def _tested(self) -> list[tuple[float, int]]:
        return [(r["test_top1"], r["epoch"]) for r in self.epochs if _finite(r.get("test_top1"))]

    @property
    def best_top1(self) -> float | None:
        """The best test top-1 so far (the first epoch reaching it on ties), or ``None`` before any evaluation."""
        tested = self._tested()
        return max(tested, key=lambda a: (a[0], -a[1]))[0] if tested else None

    @property
    def best_epoch(self) -> int | None:
        tested = self._tested()
        return max(tested, key=lambda a: (a[0], -a[1]))[1] if tested else None

    @property
    def final_top1(self) -> float | None:
        return self.epochs[-1].get("test_top1") if self.epochs else None

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": [dict(r) for r in self.epochs]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> History:
        return cls([dict(r) for r in data["epochs"]])


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _hits(logits: Tensor, target: Tensor) -> Tensor:
    """Top-1 and top-5 hit counts of a batch (top-min(5, C) when there are fewer classes), as a 2-vector."""
    top = logits.detach().topk(min(5, logits.shape[1]), dim=1).indices
    match = top == target[:, None]
    return torch.stack([match[:, 0].sum(), match.any(dim=1).sum()])


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _unpack(batch: Any, device: torch.device) -> tuple[Any, Tensor, Tensor | None]:
    """``(x, y[, index])`` of a batch, inputs and targets moved to ``device`` (the index stays where it is)."""
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise InputError(
            f"batches must be (inputs, targets) or (inputs, targets, index) sequences, got {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        )
    x, y = batch[0], batch[1]
    x = x.to(device, non_blocking=True) if isinstance(x, Tensor) else x
    return x, torch.as_tensor(y).to(device, non_blocking=True), batch[2] if len(batch) == 3 else None


def _count_batches(loader: Iterable[Any], name: str) -> int | None:
    """``len(loader)``, raising :class:`DataError` when it is 0; ``None`` for loaders without a length."""
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None
    if n == 0:
        raise DataError(f"the {name} is empty: it yields no batches (check the data set and batch_size/drop_last)")
    return n


def _seed_loader(loader: Iterable[Any], seed: int, epoch: int) -> None:
    """Make this epoch's data order a pure function of ``(seed, epoch)``."""
    sampler = getattr(loader, "sampler", None)
    set_epoch = getattr(sampler, "set_epoch", None)
    if callable(set_epoch):  # DistributedSampler and friends derive their order from the epoch
        set_epoch(epoch)
    if isinstance(sampler, RandomSampler) and sampler.generator is None:
        sampler.generator = torch.Generator()  # otherwise it draws its seed from the global RNG
    generators = {id(g): g for g in (getattr(loader, "generator", None), getattr(sampler, "generator", None))}
    for g in generators.values():
        if isinstance(g, torch.Generator):
            g.manual_seed(seed * 1000003 + epoch)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    name: str = "eval_loader",
) -> dict[str, float]:
    """Test loss (mean cross-entropy), top-1 and top-5 accuracy of ``model`` over ``loader``, in eval mode.

    The model's train/eval mode is restored afterwards. Raises :class:`InputError` for labels outside
    ``[0, classes)`` and :class:`DataError` for an empty loader.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=device)
    hits = torch.zeros(2, dtype=torch.int64, device=device)
    seen = 0
    try:
        for batch in loader:
            x, y, _ = _unpack(batch, device)
            with _autocast(device, precision):
                logits = extract_logits(model(x)).float()
            try:
                validate_logits(logits, None, y)
            except InputError as exc:
                raise InputError(f"{name}: {exc}") from None
            loss += F.cross_entropy(logits, y, reduction="sum").double()
            hits += _hits(logits, y)
            seen += len(y)
    finally:
        model.train(was_training)
    if seen == 0:
        raise DataError(f"the {name} is empty: it yields no samples")
    top1, top5 = (h / seen for h in hits.tolist())
    return {"test_loss": loss.item() / seen, "test_top1": top1, "test_top5": top5}


class _EpochMeter:
    """Sample-weighted means of the loss parts and the train top-1/top-5 of one epoch."""

    def __init__(self, device: torch.device) -> None:
        self.parts: dict[str, float] = {}
        self.hits = torch.zeros(2, dtype=torch.int64, device=device)
        self.samples = 0
        self.skipped = 0
        self.last: StepOutput | None = None

    def update(self, out: StepOutput, logits: Tensor, target: Tensor) -> None:
        self.last = out
        if out.skipped:
            self.skipped += 1
            return
        n = len(target)
        for part, value in {**out.parts, "total": out.loss}.items():
            self.parts[part] = self.parts.get(part, 0.0) + value * n
        self.hits += _hits(logits, target)
        self.samples += n

    def summary(self) -> dict[str, Any]:
        n = self.samples or math.nan
        top1, top5 = (h / n for h in self.hits.tolist())
        last = self.last
        assert last is not None
        return {
            "loss": {k: s / n for k, s in self.parts.items()} or {"total": math.nan},
            "train_top1": top1,
            "train_top5": top5,
            "momentum": dict(last.momenta),
            "gsnr": None if last.gsnr is None else dict(last.gsnr),
            "k": last.k,
            "phase": last.phase,
            "skipped": self.skipped,
        }


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
        callbacks: extra :class:`~deepkd.callbacks.Callback` objects, called after the built-in ones.
        run_config: the config of the whole run (e.g. an :class:`~deepkd.experiment.ExperimentConfig`), saved as
            ``config.toml`` and in checkpoints; defaults to ``{recipe, train}``.
        teacher_logits: precomputed teacher logits ``[len(train set), classes]`` in data-set index order, as
            ``cache_teacher`` would compute them (e.g. shared by several runs on the same data); needs
            ``cache_teacher = true``.

    Attributes:
        epoch: the epoch being trained (from 1), or the last one done; 0 before training.
        global_step: optimizer steps taken (skipped non-finite steps included).
        history: the :class:`History` so far. ``should_stop``: set to True to stop after the current epoch.
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
        self.recipe = recipe
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.seed = seed
        self.device = resolve_device(config.device)
        if config.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError(
                f"precision 'fp16' needs a CUDA device, not {self.device}; use 'bf16' @ $.train.precision"
            )
        needs_teacher = recipe.loss.needs_teacher
        if needs_teacher and teacher is None:
            name = getattr(recipe.loss, "strategy_name", type(recipe.loss).__name__)
            raise ConfigError(f"the {name!r} loss distils from a teacher, but teacher is None @ $.teacher")
        self.student = student.to(self.device)
        self.teacher = _freeze(teacher.to(self.device)) if needs_teacher and teacher is not None else None
        self.forward: nn.Module = torch.compile(self.student) if config.compile else self.student  # type: ignore[assignment]
        self.optimizer = recipe.optimizer(
            self.student.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            dampening=config.dampening,
            nesterov=config.nesterov,
            decomposition=config.decomposition,
            track_gsnr=config.track_gsnr,
            nonfinite=config.nonfinite,
        )
        self.scheduler: LambdaLR | None = None
        self.run_config = run_config if run_config is not None else {"recipe": recipe, "train": config}
        self.history = History()
        self.epoch = 0
        self.global_step = 0
        self.steps_per_epoch = 0
        self.num_classes = 0
        self.last_lr = config.lr
        self.should_stop = False
        self.callbacks: list[Callback] = [*self._builtin_callbacks(), *callbacks]
        self._generator: torch.Generator | None = None
        self._teacher_cache: Tensor | None = None
        if teacher_logits is not None:
            if not config.cache_teacher:
                raise ConfigError("teacher_logits are a teacher-logit cache: set cache_teacher = true to use them")
            if teacher_logits.dim() != 2:
                raise InputError(f"teacher_logits must be [samples, classes], got {tuple(teacher_logits.shape)}")
            self._teacher_cache = teacher_logits.detach().float().to(self.device)

    def _builtin_callbacks(self) -> list[Callback]:
        if not is_main_process():
            return []
        callbacks: list[Callback] = [ProgressBar(self.config.progress)]
        if self.config.tensorboard and self.run_dir is None:
            raise ConfigError("tensorboard = true needs a run directory to write to @ $.train.tensorboard")
        if self.run_dir is not None:
            callbacks.append(JsonlLogger(self.run_dir, self.config.log_every))
            if self.config.tensorboard:
                callbacks.append(TensorBoardLogger(self.run_dir, self.config.log_every))
        return callbacks

    # ------------------------------------------------------------------ the loop
    def fit(
        self,
        train_loader: Iterable[Any],
        eval_loader: Iterable[Any] | None = None,
        *,
        resume: bool = False,
        overwrite: bool = False,
    ) -> History:
        """Train for ``config.epochs`` epochs, evaluating on ``eval_loader`` after each; returns the history.

        ``resume=True`` continues from ``run_dir/latest.pt`` when it exists (else starts fresh). Without it, a
        ``run_dir`` that already holds a checkpoint is refused unless ``overwrite=True``.

        Raises:
            DataError: a loader is empty. InputError: bad labels or logits, or teacher and student disagree on the
            class count. ConfigError: e.g. ``cache_teacher`` with random augmentation. CheckpointError: ``latest.pt``
            is corrupt or belongs to another recipe or model (nothing on disk is changed).
        """
        steps = _count_batches(train_loader, "train_loader")
        if steps is None:
            raise ConfigError("the train_loader must have a length (the learning-rate schedule counts steps)")
        if eval_loader is not None:
            _count_batches(eval_loader, "eval_loader")
        if self.config.cache_teacher and self.teacher is not None and augments_randomly(train_loader):
            raise ConfigError(
                "cache_teacher = true needs training data without random augmentation (the teacher's logits would "
                "change with every draw); turn augmentation off or set cache_teacher = false @ $.train.cache_teacher"
            )
        self.steps_per_epoch = steps
        self.num_classes = self._check_models(train_loader)
        self.scheduler = lr_scheduler(self.optimizer, self.config.schedule, steps, self.config.epochs)
        self._generator = getattr(train_loader, "generator", None)
        self._open_run_dir(resume, overwrite)
        if self.config.cache_teacher and self.teacher is not None:
            if self._teacher_cache is None:
                self._teacher_cache = self._compute_teacher_cache(train_loader)
            else:
                self._check_teacher_cache(train_loader)

        self._call("on_fit_start")
        while self.epoch < self.config.epochs and not self.should_stop:
            self.epoch += 1
            start = time.perf_counter()
            metrics = self._train_epoch(train_loader)
            if eval_loader is not None:
                metrics.update(self.evaluate(eval_loader))
            metrics["time"] = time.perf_counter() - start
            best = self.history.best_top1
            is_best = _finite(metrics.get("test_top1")) and (best is None or metrics["test_top1"] > best)
            self.history.epochs.append(metrics)
            self._call("on_epoch_end", metrics)
            self._save(is_best)
        self._call("on_fit_end")
        return self.history

    def _train_epoch(self, loader: Iterable[Any]) -> dict[str, Any]:
        self.student.train()
        _seed_loader(loader, self.seed, self.epoch)
        self._call("on_epoch_start")
        meter = _EpochMeter(self.device)
        assert self.scheduler is not None
        for batch in loader:
            x, y, index = _unpack(batch, self.device)
            with _autocast(self.device, self.config.precision):
                logits = extract_logits(self.forward(x))
            teacher_logits = self._teacher_logits(x, index)
            self.last_lr = self.optimizer.param_groups[0]["lr"]
            out = self.optimizer.distill_step(logits, teacher_logits, y, epoch=self.epoch)
            self.scheduler.step()
            self.global_step += 1
            meter.update(out, logits, y)
            self._call("on_step_end", out)
        if meter.last is None:
            raise DataError("the train_loader yielded no batches this epoch")
        return {"kind": "epoch", "epoch": self.epoch, "step": self.global_step, "lr": self.last_lr, **meter.summary()}

    def evaluate(self, loader: Iterable[Any]) -> dict[str, float]:
        """Test loss, top-1 and top-5 of the student on ``loader`` (see :func:`evaluate`)."""
        return evaluate(self.forward, loader, device=self.device, precision=self.config.precision)

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            fn = getattr(callback, hook, None)
            if fn is not None:
                fn(self, *args)

    # ------------------------------------------------------------------ teacher
    def _teacher_forward(self, x: Any) -> Tensor:
        assert self.teacher is not None
        self.teacher.eval()  # re-asserted every call: whatever .train() calls happened, the teacher stays in eval
        with torch.no_grad(), _autocast(self.device, self.config.precision):
            return extract_logits(self.teacher(x)).float()

    def _teacher_logits(self, x: Any, index: Tensor | None) -> Tensor | None:
        if self.teacher is None:
            return None
        if self._teacher_cache is not None:
            assert index is not None
            return self._teacher_cache[index.to(self.device)]
        return self._teacher_forward(x)

    def _check_teacher_cache(self, loader: Iterable[Any]) -> None:
        assert self._teacher_cache is not None
        size = len(getattr(loader, "dataset", ()))
        expected = (size, self.num_classes)
        if tuple(self._teacher_cache.shape) != expected:
            raise InputError(
                f"teacher_logits have shape {tuple(self._teacher_cache.shape)}, but the training set needs {expected} "
                "(one row per sample, in data-set index order)"
            )

    def compute_teacher_logits(self, loader: Iterable[Any]) -> Tensor:
        """The teacher's logits for every sample of ``loader``'s data set, in index order (what ``cache_teacher``
        computes; pass it as ``teacher_logits`` to other runs on the same data)."""
        self.num_classes = self.num_classes or self._check_models(loader)
        return self._compute_teacher_cache(loader)

    def _compute_teacher_cache(self, loader: Iterable[Any]) -> Tensor:
        """Every training sample's teacher logits, in one pass over the data set in index order."""
        dataset = getattr(loader, "dataset", None)
        if dataset is None:
            raise ConfigError("cache_teacher = true needs a DataLoader (its data set is read in order once)")
        ordered = DataLoader(
            dataset,
            batch_size=getattr(loader, "batch_size", None) or 256,
            shuffle=False,
            num_workers=getattr(loader, "num_workers", 0),
            collate_fn=getattr(loader, "collate_fn", None),
            generator=torch.Generator(),  # keeps the global RNG untouched, so resumed runs stay exact
        )
        cache = torch.full((len(dataset), self.num_classes), math.nan, device=self.device)
        for batch in ordered:
            x, _, index = _unpack(batch, self.device)
            assert index is not None  # checked by _check_models
            cache[index.to(self.device)] = self._teacher_forward(x)
        return cache

    def _check_models(self, loader: Iterable[Any]) -> int:
        """Run one batch through student and teacher (eval mode, no side effects); returns the class count."""
        try:
            batch = next(iter(loader))
        except StopIteration:
            raise DataError("the train_loader is empty: it yields no batches") from None
        x, _, index = _unpack(batch, self.device)
        if self.config.cache_teacher and self.teacher is not None and index is None:
            raise ConfigError(
                "cache_teacher = true needs batches (x, y, index): wrap the training set in "
                "deepkd.data.IndexedDataset @ $.train.cache_teacher"
            )
        probe = x[:2] if isinstance(x, Tensor) else x
        was_training = self.student.training
        self.student.eval()
        try:
            with torch.no_grad(), _autocast(self.device, self.config.precision):
                student = extract_logits(self.student(probe))
        finally:
            self.student.train(was_training)
        if student.dim() != 2:
            raise InputError(f"the student must return logits of shape [batch, classes], got {tuple(student.shape)}")
        if self.teacher is not None:
            teacher = self._teacher_forward(probe)
            if teacher.shape[1:] != student.shape[1:]:
                raise InputError(
                    f"teacher/student class-count mismatch: the teacher predicts {teacher.shape[1]} classes "
                    f"(logits {tuple(teacher.shape)}), the student {student.shape[1]} (logits {tuple(student.shape)})"
                )
        return int(student.shape[1])

    # ------------------------------------------------------------------ checkpoints
    def _open_run_dir(self, resume: bool, overwrite: bool) -> None:
        if self.run_dir is None:
            if resume:
                raise ConfigError("resume=True needs a run_dir to find the checkpoint in")
            return
        latest = self.run_dir / LATEST
        if latest.exists():
            if resume:
                self.load_state_dict(load_checkpoint(latest))
            elif not overwrite:
                raise ConfigError(
                    f"{str(self.run_dir)!r} already holds a run ({LATEST}); resume it (resume=True, "
                    "`deepkd train --resume`), start over (overwrite=True, `--overwrite`), or choose another run_dir"
                )
        if is_main_process():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.dump(self.run_config, self.run_dir / CONFIG_FILE)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run (the content of ``latest.pt``); plain data and tensors only."""
        from deepkd import __version__

        assert self.scheduler is not None, "state_dict() is available once fit() has started"
        return {
            "format": FORMAT,
            "version": __version__,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "student": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(self._generator),
            "best": {"top1": self.history.best_top1, "epoch": self.history.best_epoch},
            "history": self.history.to_dict(),
            "recipe": cfg.unstructure(self.recipe),
            "config": cfg.unstructure(self.run_config),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint made by :meth:`state_dict` (checked before anything is changed).

        Raises:
            CheckpointError: another recipe, other model shapes, another number of steps per epoch, or malformed.
        """
        assert self.scheduler is not None, "load_state_dict() is available once fit() has started"
        mine = cfg.unstructure(self.recipe)
        if not isinstance(state["recipe"], Mapping) or not same_method(state["recipe"], mine):
            raise CheckpointError(
                f"the checkpoint was written by another recipe: saved {state['recipe']}, this run uses {mine}"
            )
        _check_state_dict(self.student, state["student"])
        epoch, step = int(state["epoch"]), int(state["global_step"])
        if step != epoch * self.steps_per_epoch:
            raise CheckpointError(
                f"the checkpoint took {step} steps in {epoch} epochs, but this train_loader has {self.steps_per_epoch} "
                "batches per epoch (did the data set, batch_size or drop_last change?)"
            )
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        try:
            self.scheduler.load_state_dict(dict(state["scheduler"]))
            self.history = History.from_dict(state["history"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"the checkpoint's scheduler or history is malformed: {exc!r}") from None
        set_rng_state(state["rng"], self._generator)
        self.epoch, self.global_step = epoch, step
        self.last_lr = self.optimizer.param_groups[0]["lr"]

    def _save(self, is_best: bool) -> None:
        """Write this epoch's checkpoints; ``best.pt`` first, so a crash never leaves it behind ``latest.pt``."""
        if self.run_dir is None or not is_main_process():
            return
        state = self.state_dict()
        if is_best:
            save_atomic(state, self.run_dir / BEST)
            copy_atomic(self.run_dir / BEST, self.run_dir / LATEST)
        else:
            save_atomic(state, self.run_dir / LATEST)
        save_atomic(state["student"], self.run_dir / STUDENT)


def _freeze(teacher: nn.Module) -> nn.Module:
    teacher.requires_grad_(False)
    return teacher.eval()


def _check_state_dict(model: nn.Module, saved: Mapping[str, Any]) -> None:
    """Raise :class:`CheckpointError` unless ``saved`` has exactly ``model``'s keys and shapes."""
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"the checkpoint's student weights are malformed ({type(saved).__name__})")
    own = model.state_dict()
    problems = [f"missing {k}" for k in own if k not in saved]
    problems += [f"unexpected {k}" for k in saved if k not in own]
    problems += [
        f"{k}: saved {tuple(saved[k].shape)}, model {tuple(t.shape)}"
        for k, t in own.items()
        if k in saved and isinstance(saved[k], Tensor) and saved[k].shape != t.shape
    ]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CheckpointError(f"the checkpoint's student does not fit this model: {'; '.join(problems[:5])}{more}")
