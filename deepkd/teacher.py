"""The teacher side of a run: freezing it, where each step's teacher logits come from, and the one-batch probe.

- :func:`teacher_for` picks the teacher a loss needs (none for losses without one); :func:`freeze` turns gradients
  off and puts the teacher in eval mode; :func:`teacher_forward` puts it back in eval mode before *every* forward
  pass (run under ``torch.no_grad`` and the run's autocast), so neither a ``student.train()`` nor a stray
  ``teacher.train()`` changes its outputs.
- :class:`TeacherSource` gives the trainer a step's teacher logits: a live forward pass, or, with
  ``cache_teacher = true``, a row of a cache read by sample index. The cache is every training sample's logits,
  computed once (:func:`compute_teacher_logits`, in data-set order) or passed in precomputed; either way it must be
  ``[len(train set), classes]`` (:func:`check_cache`). Caching needs batches ``(x, y, index)``
  (:class:`~deepkd.data.IndexedDataset`) and data without random augmentation.
- :func:`probe_class_count` runs one batch through student and teacher before training, so a class-count mismatch
  or a missing index is reported before anything is written.

>>> teacher = freeze(torch.nn.Linear(3, 2).train())
>>> teacher.training, teacher.weight.requires_grad
(False, False)
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from deepkd.data.base import ShardSampler, augments_randomly, unpack
from deepkd.distributed import is_distributed, rank, sum_over_ranks, world_size
from deepkd.errors import ConfigError, DataError, InputError
from deepkd.models import extract_logits
from deepkd.progress import Progress, note
from deepkd.registry import name_of
from deepkd.train_config import autocast

if TYPE_CHECKING:
    from deepkd.types import LossStrategy

__all__ = [
    "TeacherSource",
    "check_cache",
    "compute_teacher_logits",
    "freeze",
    "probe_class_count",
    "teacher_for",
    "teacher_forward",
]


def freeze(teacher: nn.Module) -> nn.Module:
    """``teacher`` with gradients off, in eval mode (the same module, changed in place)."""
    teacher.requires_grad_(False)
    return teacher.eval()


def teacher_for(loss: LossStrategy, teacher: nn.Module | None, device: torch.device) -> nn.Module | None:
    """The teacher of a run with ``loss``: ``teacher`` frozen on ``device`` when the loss distils, else ``None`` (a
    teacher given to a loss that needs none is ignored).

    Raises:
        ConfigError: the loss distils from a teacher, but ``teacher`` is ``None``.
    """
    if not loss.needs_teacher:
        return None
    if teacher is None:
        raise ConfigError(f"the {name_of(loss)!r} loss distils from a teacher, but teacher is None @ $.teacher")
    return freeze(teacher.to(device))


def teacher_forward(teacher: nn.Module, x: Any, device: torch.device, precision: str) -> Tensor:
    """The teacher's float32 logits for ``x``: eval mode, no gradients, the run's autocast."""
    teacher.eval()  # re-asserted every call: whatever .train() calls happened, the teacher stays in eval
    with torch.no_grad(), autocast(device, precision):
        return extract_logits(teacher(x)).float()


def compute_teacher_logits(
    teacher: nn.Module,
    loader: Iterable[Any],
    num_classes: int,
    *,
    device: torch.device,
    precision: str,
    progress: bool | None = False,
) -> Tensor:
    """Every sample's teacher logits ``[len(data set), num_classes]``, in one pass over ``loader``'s data set in
    index order (the loader's batches must carry the index, see :class:`~deepkd.data.IndexedDataset`).

    On a distributed run each rank runs the teacher on its :class:`~deepkd.data.ShardSampler` share of the data set
    only, and one all-reduce gives every rank the whole cache (the samples a rank draws change with the epoch).
    A loader that holds its data on the device (:class:`~deepkd.data.DeviceLoader`) is read in order there, through
    its ``in_order(rank, world_size)``. ``progress`` shows the pass (:class:`~deepkd.progress.Progress`; ``None``:
    a bar on a terminal, a line every few seconds elsewhere)."""
    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        raise ConfigError("cache_teacher = true needs a DataLoader (its data set is read in order once)")
    distributed = is_distributed()
    in_order = getattr(loader, "in_order", None)
    ordered: Iterable[Any]
    if callable(in_order):
        ordered = in_order(rank(), world_size()) if distributed else in_order()
    else:
        ordered = DataLoader(
            dataset,
            batch_size=getattr(loader, "batch_size", None) or 256,
            sampler=ShardSampler(len(dataset), rank(), world_size()) if distributed else None,
            shuffle=False,
            num_workers=getattr(loader, "num_workers", 0),
            collate_fn=getattr(loader, "collate_fn", None),
            generator=torch.Generator(),  # keeps the global RNG untouched, so resumed runs stay exact
        )
    cache = torch.full((len(dataset), num_classes), 0.0 if distributed else math.nan, device=device)
    total = len(ordered) if hasattr(ordered, "__len__") else None  # type: ignore[arg-type]
    shown = Progress(total, f"teacher logits of {len(dataset):,} training samples", enabled=progress)
    started = time.monotonic()
    note(f"computing the teacher's logits of the {len(dataset):,} training samples once (cache_teacher)", progress)
    for batch in ordered:
        x, _, index = unpack(batch, device)
        if index is None:
            raise ConfigError("cache_teacher = true needs batches (x, y, index): wrap the data set in IndexedDataset")
        cache[index.to(device)] = teacher_forward(teacher, x, device, precision)
        shown.update()
    shown.close()
    note(f"teacher logits cached in {time.monotonic() - started:.1f}s", progress)
    return sum_over_ranks(cache) if distributed else cache  # each row comes from exactly one rank


def check_cache(cache: Tensor, loader: Iterable[Any], num_classes: int) -> None:
    """Raise :class:`~deepkd.errors.InputError` unless ``cache`` has one row of ``num_classes`` logits per sample
    of ``loader``'s data set."""
    size = len(getattr(loader, "dataset", ()))
    expected = (size, num_classes)
    if tuple(cache.shape) != expected:
        raise InputError(
            f"teacher_logits have shape {tuple(cache.shape)}, but the training set needs {expected} "
            "(one row per sample, in data-set index order)"
        )


def probe_class_count(
    student: nn.Module,
    teacher: nn.Module | None,
    loader: Iterable[Any],
    *,
    device: torch.device,
    precision: str,
    needs_index: bool = False,
) -> int:
    """Run one batch (two samples of it) through student and teacher, in eval mode and without side effects;
    returns the class count.

    Raises:
        DataError: the loader is empty. ConfigError: ``needs_index`` and the batches carry no index. InputError: the
        student's output is not ``[batch, classes]``, or teacher and student disagree on the class count.
    """
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise DataError("the train_loader is empty: it yields no batches") from None
    x, _, index = unpack(batch, device)
    if needs_index and index is None:
        raise ConfigError(
            "cache_teacher = true needs batches (x, y, index): wrap the training set in "
            "deepkd.data.IndexedDataset @ $.train.cache_teacher"
        )
    probe = x[:2] if isinstance(x, Tensor) else x
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad(), autocast(device, precision):
            logits = extract_logits(student(probe))
    finally:
        student.train(was_training)
    if logits.dim() != 2:
        raise InputError(f"the student must return logits of shape [batch, classes], got {tuple(logits.shape)}")
    if teacher is not None:
        taught = teacher_forward(teacher, probe, device, precision)
        if taught.shape[1:] != logits.shape[1:]:
            raise InputError(
                f"teacher/student class-count mismatch: the teacher predicts {taught.shape[1]} classes "
                f"(logits {tuple(taught.shape)}), the student {logits.shape[1]} (logits {tuple(logits.shape)})"
            )
    return int(logits.shape[1])


class TeacherSource:
    """Where a training step's teacher logits come from: ``None`` without a teacher, a live :func:`teacher_forward`,
    or (``cache_teacher``) the cache row of each sample index.

    Args:
        teacher: the frozen teacher, or ``None`` when the loss needs none.
        device, precision: where and how the teacher runs.
        cache_teacher: read logits from a cache filled once by :meth:`prepare` (ignored without a teacher).
        logits: a precomputed cache ``[samples, classes]``; needs ``cache_teacher``.
        progress: show the caching pass (``train.progress``, see :mod:`deepkd.progress`).
    """

    def __init__(
        self,
        teacher: nn.Module | None,
        device: torch.device,
        precision: str,
        *,
        cache_teacher: bool = False,
        logits: Tensor | None = None,
        progress: bool | None = False,
    ) -> None:
        self.teacher, self.device, self.precision, self.progress = teacher, device, precision, progress
        self.caching = cache_teacher and teacher is not None
        self.cache: Tensor | None = None
        if logits is not None:
            if not cache_teacher:
                raise ConfigError("teacher_logits are a teacher-logit cache: set cache_teacher = true to use them")
            if logits.dim() != 2:
                raise InputError(f"teacher_logits must be [samples, classes], got {tuple(logits.shape)}")
            self.cache = logits.detach().float().to(device)

    def probe_class_count(self, student: nn.Module, loader: Iterable[Any]) -> int:
        """The class count of ``student`` and this teacher, from one batch of ``loader`` (see
        :func:`probe_class_count`); when caching, also checks that ``loader`` can be cached: no random augmentation,
        batches that carry the sample index."""
        if self.caching and augments_randomly(loader):
            raise ConfigError(
                "cache_teacher = true needs training data without random augmentation (the teacher's logits would "
                "change with every draw); turn augmentation off or set cache_teacher = false @ $.train.cache_teacher"
            )
        return probe_class_count(
            student, self.teacher, loader, device=self.device, precision=self.precision, needs_index=self.caching
        )

    def prepare(self, loader: Iterable[Any], num_classes: int) -> None:
        """When caching: fill the cache from ``loader``'s data set, or check the one given against it."""
        if not self.caching:
            return
        if self.cache is None:
            self.cache = self.compute(loader, num_classes)
        else:
            check_cache(self.cache, loader, num_classes)

    def compute(self, loader: Iterable[Any], num_classes: int) -> Tensor:
        """Every sample's teacher logits (see :func:`compute_teacher_logits`)."""
        if self.teacher is None:
            raise ConfigError("this run's loss needs no teacher, so there are no teacher logits to compute")
        return compute_teacher_logits(
            self.teacher, loader, num_classes, device=self.device, precision=self.precision, progress=self.progress
        )

    def __call__(self, x: Any, index: Tensor | None) -> Tensor | None:
        """The teacher logits of a batch ``x`` whose samples have data-set indices ``index``."""
        if self.teacher is None:
            return None
        if self.cache is not None:
            if index is None:
                raise InputError("the teacher-logit cache is read by sample index: the batch carries none")
            return self.cache[index.to(self.device)]
        return teacher_forward(self.teacher, x, self.device, self.precision)
