"""The data each run sees: seeded draws of a data set's splits, the validation split, and the loaders.

Draws are seeded and nested: the training draw uses seed 1 and the test draw seed 2, and a draw of ``n`` images
is the first ``n`` of one permutation, so a larger draw (the teacher's) holds a smaller one (the students').
The validation split is stratified by class and uses its own fixed seed (:data:`VAL_SEED`): one split for every
method and every run seed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.accuracy.profiles import BATCH
from deepkd.data import IndexedDataset, device_loaders, get_dataset

VAL_SEED = 3  # the validation split's seed: one fixed split for every method and every run seed
TRAIN_DRAW, TEST_DRAW = 1, 2  # the seeds of the draws from the training and the test split


def _tensors(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of a data set (a ``TensorDataset`` or one of :func:`deepkd.data.get_dataset`)."""
    if isinstance(data, TensorDataset):
        x, y = data.tensors
        return x, y
    return data.inputs, data.targets


def _indices(total: int, n: int | None, seed: int) -> torch.Tensor:
    """The sorted indices of a seeded draw of ``n`` of ``total`` samples (all when ``n`` is None or too large). Draws
    of different ``n`` with one seed are nested: the first ``n`` of one permutation."""
    if n is None or n >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def _subset(data: Any, n: int | None, seed: int) -> TensorDataset:
    x, y = _tensors(data)
    idx = _indices(len(y), n, seed)
    return TensorDataset(x[idx].contiguous(), y[idx].contiguous())


def load(name: str, sizes: Mapping[str, int | None]) -> tuple[TensorDataset, TensorDataset, int]:
    """``(train, test, classes)``: seeded draws of ``sizes["train"]`` and ``sizes["test"]`` images."""
    train, test, info = get_dataset(name)
    return _subset(train, sizes["train"], TRAIN_DRAW), _subset(test, sizes["test"], TEST_DRAW), int(info["num_classes"])


class Split(NamedTuple):
    """A data set's parts for one profile: the students' training part, validation (or None), test, and the
    teacher's training set."""

    train: TensorDataset
    val: TensorDataset | None
    test: TensorDataset
    teacher_train: TensorDataset
    classes: int


def _teacher_indices(raw_train: Any, sizes: Mapping[str, int | None], train: torch.Tensor, val: torch.Tensor) -> Any:
    """The teacher's training images: the students' (``train``), or a larger draw of the same permutation when
    ``sizes["teacher_train"]`` is given; less every validation image, and for the pairs set less every pair that
    shares a source image with a validation pair."""
    total = len(_tensors(raw_train)[1])
    index = train if sizes.get("teacher_train") is None else _indices(total, sizes["teacher_train"], TRAIN_DRAW)
    keep = ~torch.isin(index, val)
    sources = getattr(raw_train, "source_indices", None)
    if sources is not None and len(val):
        keep &= ~torch.isin(sources[index], sources[val].flatten()).any(dim=1)
    return index[keep]


def _held_out(raw_train: Any, y: torch.Tensor, n_val: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rest, validation)`` indices of the whole training split: ``n_val`` images, stratified and seeded
    (:func:`validation_indices`), validate; ``rest`` is every other image, less (for the pairs set) every pair that
    shares a source image with a validation pair."""
    rest, val = validation_indices(y, n_val / len(y))
    sources = getattr(raw_train, "source_indices", None)
    if sources is not None and len(val):
        rest = rest[~torch.isin(sources[rest], sources[val].flatten()).any(dim=1)]
    return rest, val


def _split_from_whole(raw_train: Any, raw_test: Any, sizes: Mapping[str, Any], classes: int) -> Split:
    """:func:`prepare` with ``sizes["val"]``: validation held out of the whole training split first, then the
    students' draw from the rest, and the teacher's set the whole rest (``teacher_train: "all"``) or the students'."""
    x, y = _tensors(raw_train)
    rest, val = _held_out(raw_train, y, int(sizes["val"]))
    train = rest[_indices(len(rest), sizes["train"], TRAIN_DRAW)]
    teacher = rest if sizes.get("teacher_train") == "all" else train

    def part(index: torch.Tensor) -> TensorDataset:
        return TensorDataset(x[index].contiguous(), y[index].contiguous())

    return Split(part(train), part(val), _subset(raw_test, sizes["test"], TEST_DRAW), part(teacher), classes)


def prepare(name: str, sizes: Mapping[str, Any], val_share: float = 0.0) -> Split:
    """Load a data set and cut it for a profile.

    With ``sizes["val"]`` (the distillation regime of the long and default profiles): ``sizes["val"]`` images of
    the whole training split, stratified and seeded, validate; the students train on a seeded draw of
    ``sizes["train"]`` of the rest, and the teacher on all the rest (``sizes["teacher_train"] == "all"``). The
    validation split and the teacher's set do not depend on the students' size, so profiles share one teacher.

    Otherwise ``sizes["train"]`` images are drawn from the training split (seeded); ``val_share`` of them,
    stratified (:func:`validation_indices`), validate and the rest train the students. The teacher trains on the
    students' part, or on ``sizes["teacher_train"]`` images of the same draw (a superset) when given.

    Either way the teacher never sees a validation image, and for the pairs set no pair sharing a source image with a
    validation pair. The test set is ``sizes["test"]`` images of the test split (all for None).
    """
    raw_train, raw_test, info = get_dataset(name)
    if sizes.get("val"):
        return _split_from_whole(raw_train, raw_test, sizes, int(info["num_classes"]))
    x, y = _tensors(raw_train)
    idx = _indices(len(y), sizes["train"], TRAIN_DRAW)
    if val_share:
        local_train, local_val = validation_indices(y[idx], val_share)
        train_idx, val_idx = idx[local_train], idx[local_val]
    else:
        train_idx, val_idx = idx, idx[:0]
    teacher_idx = _teacher_indices(raw_train, sizes, train_idx, val_idx)

    def part(index: torch.Tensor) -> TensorDataset:
        return TensorDataset(x[index].contiguous(), y[index].contiguous())

    return Split(
        part(train_idx),
        part(val_idx) if val_share else None,
        _subset(raw_test, sizes["test"], TEST_DRAW),
        part(teacher_idx),
        int(info["num_classes"]),
    )


def validation_indices(labels: torch.Tensor, share: float, seed: int = VAL_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, validation)`` that split a labelled set: in each class, ``round(share · n_c)`` samples,
    drawn by a generator seeded with ``seed``, validate (stratified: the class mix of both parts is the set's). Both
    index tensors are sorted, disjoint and together cover every sample; the split depends only on the labels,
    ``share`` and ``seed``."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the validation share must be in [0, 1), got {share}")
    gen = torch.Generator().manual_seed(seed)
    held = torch.zeros(len(labels), dtype=torch.bool)
    for c in torch.unique(labels).tolist():
        members = (labels == c).nonzero().flatten()
        take = round(share * len(members))
        if take:
            held[members[torch.randperm(len(members), generator=gen)[:take]]] = True
    return (~held).nonzero().flatten(), held.nonzero().flatten()


def split_validation(
    data: TensorDataset, share: float, seed: int = VAL_SEED
) -> tuple[TensorDataset, TensorDataset | None]:
    """``(rest, validation)``: a stratified, seeded ``share`` of ``data`` carved out to validate on (see
    :func:`validation_indices`); ``(data, None)`` when ``share`` is 0."""
    if share == 0:
        return data, None
    x, y = data.tensors
    train_idx, val_idx = validation_indices(y, share, seed)
    return TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[val_idx], y[val_idx])


def loaders(
    train: TensorDataset, test: TensorDataset, indexed: bool, device: str = "cpu", on_device: bool | None = None
) -> tuple[Any, Any]:
    """A shuffled training loader of :data:`~benchmarks.accuracy.profiles.BATCH` (yielding sample indices too when
    ``indexed``, for cached teacher logits) and a test loader of 512.

    ``on_device`` (default: when ``device`` is not the CPU) holds both sets on ``device``
    (:func:`deepkd.data.device_loaders`: one copy, then a gather per step, no host work), in the order the CPU
    loaders would give for the same seed."""
    train_set: Any = IndexedDataset(train) if indexed else train
    if on_device if on_device is not None else device != "cpu":
        return device_loaders(train_set, test, BATCH, device=device, test_batch_size=512)
    gen = torch.Generator()
    return (
        DataLoader(train_set, batch_size=BATCH, shuffle=True, generator=gen),
        DataLoader(test, batch_size=512),
    )
