"""Data-set plumbing shared by every loader: an in-memory tensor set, an index-returning wrapper, a test for random
augmentation, seeded DataLoaders, and the batch handling of the training loop (:func:`unpack`,
:func:`count_batches`, :func:`seed_loader`)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, TensorDataset

from deepkd.errors import ConfigError, DataError, InputError

__all__ = [
    "IndexedDataset",
    "LabeledTensorDataset",
    "Loader",
    "ShardSampler",
    "augments_randomly",
    "count_batches",
    "make_loaders",
    "seed_loader",
    "steps_per_epoch",
    "unpack",
]

Loader = Iterable[Any]  # what the training loop takes: a DataLoader, or any iterable of (x, y[, index]) batches


class LabeledTensorDataset(TensorDataset):
    """A :class:`~torch.utils.data.TensorDataset` of ``(inputs, targets)`` held in memory, with class metadata.

    Items are ``(inputs[i], targets[i])``; no transform runs, so the set never augments randomly.

    A set built from 8-bit images may also keep them: ``pixels`` (uint8 ``[N, C, H, W]``) with ``normalise_pixels``,
    the function that turns any batch of them into the matching rows of ``inputs`` exactly. A loader that holds the
    data on the GPU (:class:`deepkd.data.DeviceLoader`) then stores one byte per pixel instead of four.
    """

    random_augmentation = False

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        num_classes: int,
        classes: Sequence[str] | None = None,
        *,
        pixels: torch.Tensor | None = None,
        normalise_pixels: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__(inputs, targets)
        self.num_classes = int(num_classes)
        self.classes: tuple[str, ...] | None = tuple(classes) if classes is not None else None
        if (pixels is None) != (normalise_pixels is None):
            raise InputError("pixels and normalise_pixels go together: give both or neither")
        if pixels is not None and (pixels.dtype != torch.uint8 or pixels.dim() != 4 or len(pixels) != len(inputs)):
            raise InputError(
                f"pixels must be uint8 [N, C, H, W] with N = {len(inputs)}, got {pixels.dtype} {list(pixels.shape)}"
            )
        self.pixels = pixels
        self.normalise_pixels = normalise_pixels

    @property
    def inputs(self) -> torch.Tensor:
        return self.tensors[0]

    @property
    def targets(self) -> torch.Tensor:
        return self.tensors[1]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={len(self)}, input_shape={tuple(self.inputs.shape[1:])}, "
            f"num_classes={self.num_classes})"
        )


class IndexedDataset(Dataset[tuple[Any, ...]]):
    """Wraps a map-style data set so that each item also carries its index: ``(x, y) -> (x, y, index)``.

    Tuple items get the index appended (``(*item, index)``); any other item becomes ``(item, index)``. Negative
    indices are normalised, so the index is always the sample's position in ``[0, len)`` (a stable cache key).
    Other attributes (``targets``, ``num_classes``...) are forwarded to the wrapped set.

    >>> ds = IndexedDataset(LabeledTensorDataset(torch.zeros(3, 2), torch.tensor([0, 1, 0]), 2))
    >>> ds[-1][1:]
    (tensor(0), 2)
    """

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        n = len(self)
        index = int(index)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index out of range for a data set of {n} samples")
        item = self.dataset[index]
        return (*item, index) if isinstance(item, tuple) else (item, index)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (e.g. while unpickling in a worker): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __repr__(self) -> str:
        return f"IndexedDataset({self.dataset!r})"


# Transform classes that draw random numbers although their names do not start with "Random".
RANDOM_TRANSFORMS = frozenset(
    {
        "AugMix",
        "AutoAugment",
        "ColorJitter",
        "CutMix",
        "ElasticTransform",
        "GaussianBlur",
        "GaussianNoise",
        "MixUp",
        "RandAugment",
        "ScaleJitter",
        "TrivialAugmentWide",
    }
)


_TRANSFORM_ATTRS = ("transform", "target_transform", "transforms")


def _is_random_transform(obj: object) -> bool:
    if getattr(obj, "random_augmentation", False) is True:
        return True
    return any(c.__name__.startswith("Random") or c.__name__ in RANDOM_TRANSFORMS for c in type(obj).__mro__[:-1])


def _transform_randomly(transform: object, seen: set[int]) -> bool:
    if transform is None or id(transform) in seen:
        return False
    seen.add(id(transform))
    if _is_random_transform(transform):
        return True
    if isinstance(transform, (list, tuple)):
        return any(_transform_randomly(t, seen) for t in transform)
    children: list[object] = []
    for attr in _TRANSFORM_ATTRS:  # Compose, RandomApply, StandardTransform...
        child = getattr(transform, attr, None)
        if child is not None and not isinstance(child, (str, bytes)):
            children.extend(child if isinstance(child, (list, tuple)) else [child])
    if isinstance(transform, torch.nn.Module):  # nn.Sequential, v2.Compose...
        children.extend(transform.children())
    return any(_transform_randomly(c, seen) for c in children)


def augments_randomly(data: object) -> bool:
    """Whether a data set (or a DataLoader's data set) can return a different input for the same index.

    The rule, applied recursively:

    * a DataLoader is replaced by its ``dataset``; wrappers are unwrapped through their ``dataset`` attribute
      (Subset, :class:`IndexedDataset`) or ``datasets`` attribute (ConcatDataset): any random part makes it random;
    * a set with the attribute ``random_augmentation = True`` is random;
    * a set is random when its ``transform``, ``target_transform`` or ``transforms`` contains, at any depth (Compose,
      RandomApply, nn.Sequential, lists), a transform whose class (or a base class) is named ``Random*`` or is one of
      :data:`RANDOM_TRANSFORMS` (AutoAugment, RandAugment, ColorJitter, GaussianBlur...), or that itself carries
      ``random_augmentation = True``;
    * everything else is deterministic: plain tensor sets, ToTensor/Normalize/Resize/CenterCrop pipelines, and opaque
      callables such as ``Lambda`` or plain functions. Mark a custom random transform or set with
      ``random_augmentation = True``.

    >>> augments_randomly(LabeledTensorDataset(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), 1))
    False
    """
    seen: set[int] = set()
    stack: list[object] = [data.dataset if isinstance(data, DataLoader) else data]
    while stack:
        ds = stack.pop()
        if ds is None or id(ds) in seen:
            continue
        seen.add(id(ds))
        if getattr(ds, "random_augmentation", False) is True:
            return True
        if any(_transform_randomly(getattr(ds, a, None), set()) for a in _TRANSFORM_ATTRS):
            return True
        inner = ds.__dict__.get("dataset") if hasattr(ds, "__dict__") else None
        if inner is not None:
            stack.append(inner)
        many = getattr(ds, "datasets", None)
        if isinstance(many, Iterable) and not isinstance(many, (str, bytes)):
            stack.extend(many)
    return False


def _seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a DataLoader worker from the worker's torch seed (itself from the generator)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class ShardSampler(Sampler[int]):
    """Rank ``rank``'s share of ``size`` samples in order, ``rank, rank + world, rank + 2·world...``, without
    padding: the shards cover every sample exactly once (their sizes differ by at most one), so metrics summed over
    ranks are those of the whole set.

    >>> [list(ShardSampler(5, r, 2)) for r in range(2)]
    [[0, 2, 4], [1, 3]]
    """

    def __init__(self, size: int, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in [0, {world_size})")
        self.size, self.rank, self.world_size = size, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))


def make_loaders(
    train_set: Dataset[Any],
    test_set: Dataset[Any],
    batch_size: int,
    *,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
    test_batch_size: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """Build a shuffled training loader and an ordered evaluation loader, reproducible for a given ``seed``.

    Shuffling draws from a ``torch.Generator`` seeded with ``seed``; worker processes (if any) derive their seeds
    from it too. ``drop_last`` applies to the training loader only; ``test_batch_size`` defaults to ``batch_size``.

    With ``world_size > 1`` (one loader pair per rank of a distributed run) the training loader draws from a
    :class:`~torch.utils.data.DistributedSampler`: each epoch one permutation of the whole set, seeded with
    ``seed * 1000003 + epoch`` (:func:`seed_loader` tells it the epoch), padded by repetition to a multiple of
    ``world_size`` and dealt out to the ranks, so every rank takes the same number of steps; ``batch_size`` is per
    rank (the global batch is ``batch_size × world_size``). The evaluation loader reads rank ``rank``'s
    :class:`ShardSampler` share of the test set, unpadded.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    generator = torch.Generator().manual_seed(int(seed))
    common: dict[str, Any] = {
        "num_workers": num_workers,
        "worker_init_fn": _seed_worker if num_workers else None,
        "persistent_workers": num_workers > 0,
    }
    shuffle: dict[str, Any] = {"shuffle": True}
    test_shard: dict[str, Any] = {}
    if world_size > 1:
        sampler: DistributedSampler[Any] = DistributedSampler(train_set, world_size, rank, seed=int(seed) * 1000003)
        shuffle = {"sampler": sampler}
        test_shard = {"sampler": ShardSampler(len(test_set), rank, world_size)}  # type: ignore[arg-type]
    train = DataLoader(train_set, batch_size=batch_size, drop_last=drop_last, generator=generator, **shuffle, **common)
    test = DataLoader(
        test_set, batch_size=test_batch_size or batch_size, shuffle=False, drop_last=False, **test_shard, **common
    )
    return train, test


# ------------------------------------------------------------------ batches in the training loop
def unpack(batch: Any, device: torch.device) -> tuple[Any, Tensor, Tensor | None]:
    """``(x, y[, index])`` of a batch, inputs and targets moved to ``device`` (the index stays where it is).

    >>> x, y, index = unpack((torch.zeros(2, 3), [0, 1]), torch.device("cpu"))
    >>> y, index
    (tensor([0, 1]), None)
    """
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise InputError(
            f"batches must be (inputs, targets) or (inputs, targets, index) sequences, got {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        )
    x, y = batch[0], batch[1]
    x = x.to(device, non_blocking=True) if isinstance(x, Tensor) else x
    return x, torch.as_tensor(y).to(device, non_blocking=True), batch[2] if len(batch) == 3 else None


def count_batches(loader: Loader, name: str) -> int | None:
    """``len(loader)``, raising :class:`~deepkd.errors.DataError` (naming the loader ``name``) when it is 0;
    ``None`` for loaders without a length."""
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None
    if n == 0:
        raise DataError(f"the {name} is empty: it yields no batches (check the data set and batch_size/drop_last)")
    return n


def steps_per_epoch(loader: Loader) -> int:
    """The number of batches of a training loader, which must have a length (the learning-rate schedule counts
    steps); raises :class:`~deepkd.errors.ConfigError` without one, :class:`~deepkd.errors.DataError` for 0."""
    steps = count_batches(loader, "train_loader")
    if steps is None:
        raise ConfigError("the train_loader must have a length (the learning-rate schedule counts steps)")
    return steps


def seed_loader(loader: Loader, seed: int, epoch: int) -> None:
    """Make this epoch's data order a pure function of ``(seed, epoch)``: the loader's generator and its sampler's
    are re-seeded with ``seed * 1000003 + epoch``, and a sampler with ``set_epoch`` is told the epoch."""
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
