"""Data-set plumbing shared by every loader: an in-memory tensor set, an index-returning wrapper, a test for random
augmentation, and seeded DataLoaders."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from deepkd.errors import ConfigError

__all__ = ["IndexedDataset", "LabeledTensorDataset", "augments_randomly", "make_loaders"]


class LabeledTensorDataset(TensorDataset):
    """A :class:`~torch.utils.data.TensorDataset` of ``(inputs, targets)`` held in memory, with class metadata.

    Items are ``(inputs[i], targets[i])``; no transform runs, so the set never augments randomly.
    """

    random_augmentation = False

    def __init__(
        self, inputs: torch.Tensor, targets: torch.Tensor, num_classes: int, classes: Sequence[str] | None = None
    ) -> None:
        super().__init__(inputs, targets)
        self.num_classes = int(num_classes)
        self.classes: tuple[str, ...] | None = tuple(classes) if classes is not None else None

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


def make_loaders(
    train_set: Dataset[Any],
    test_set: Dataset[Any],
    batch_size: int,
    *,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
    test_batch_size: int | None = None,
) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """Build a shuffled training loader and an ordered evaluation loader, reproducible for a given ``seed``.

    Shuffling draws from a ``torch.Generator`` seeded with ``seed``; worker processes (if any) derive their seeds
    from it too. ``drop_last`` applies to the training loader only; ``test_batch_size`` defaults to ``batch_size``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    generator = torch.Generator().manual_seed(int(seed))
    common: dict[str, Any] = {
        "num_workers": num_workers,
        "worker_init_fn": _seed_worker if num_workers else None,
        "persistent_workers": num_workers > 0,
    }
    train = DataLoader(
        train_set, batch_size=batch_size, shuffle=True, drop_last=drop_last, generator=generator, **common
    )
    test = DataLoader(test_set, batch_size=test_batch_size or batch_size, shuffle=False, drop_last=False, **common)
    return train, test
