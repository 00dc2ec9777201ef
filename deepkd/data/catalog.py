"""Data sets by name: ``get_dataset(name, **options) -> (train_set, test_set, info)``."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from deepkd.data.fashion import fashion_mnist, fashion_mnist_pairs
from deepkd.data.small import digits, synthetic
from deepkd.data.vision import cifar10, cifar100, imagenet
from deepkd.errors import ConfigError
from deepkd.registry import Registry

__all__ = ["DATASETS", "DatasetInfo", "check_options", "get_dataset"]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a data set. Readable as attributes or as ``info["num_classes"]``."""

    name: str
    num_classes: int
    input_shape: tuple[int, ...]

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


Splits = tuple[Dataset[Any], Dataset[Any], DatasetInfo]
DATASETS: Registry[Callable[..., Splits]] = Registry("dataset", kind="data set")


@DATASETS.register("fashion_mnist")
def _fashion_mnist(root: str | os.PathLike[str] | None = None) -> Splits:
    return fashion_mnist(root, True), fashion_mnist(root, False), DatasetInfo("fashion_mnist", 10, (1, 28, 28))


@DATASETS.register("fashion_mnist_pairs")
def _fashion_mnist_pairs(
    root: str | os.PathLike[str] | None = None, size: int | None = None, test_size: int | None = None, seed: int = 0
) -> Splits:
    return (
        fashion_mnist_pairs(root, True, size, seed),
        fashion_mnist_pairs(root, False, test_size, seed),
        DatasetInfo("fashion_mnist_pairs", 100, (1, 28, 56)),
    )


@DATASETS.register("digits")
def _digits(test_fraction: float = 0.25, seed: int = 0) -> Splits:
    return digits(True, test_fraction, seed), digits(False, test_fraction, seed), DatasetInfo("digits", 10, (1, 8, 8))


@DATASETS.register("cifar10")
def _cifar10(root: str | os.PathLike[str], augment: bool = True) -> Splits:
    return cifar10(root, True, augment), cifar10(root, False, augment), DatasetInfo("cifar10", 10, (3, 32, 32))


@DATASETS.register("cifar100")
def _cifar100(root: str | os.PathLike[str], augment: bool = True) -> Splits:
    return cifar100(root, True, augment), cifar100(root, False, augment), DatasetInfo("cifar100", 100, (3, 32, 32))


@DATASETS.register("imagenet")
def _imagenet(root: str | os.PathLike[str], augment: bool = True) -> Splits:
    return imagenet(root, True, augment), imagenet(root, False, augment), DatasetInfo("imagenet", 1000, (3, 224, 224))


@DATASETS.register("synthetic")
def _synthetic(
    num_samples: int = 1024,
    num_test_samples: int = 256,
    num_classes: int = 10,
    shape: Sequence[int] = (3, 32, 32),
    seed: int = 0,
    noise: float = 1.0,
) -> Splits:
    shape = tuple(int(s) for s in shape)
    return (
        synthetic(num_samples, num_classes, shape, seed, train=True, noise=noise),
        synthetic(num_test_samples, num_classes, shape, seed, train=False, noise=noise),
        DatasetInfo("synthetic", num_classes, shape),
    )


def get_dataset(name: str, **options: Any) -> Splits:
    """Build the train and test sets registered as ``name`` and describe them.

    Names: ``fashion_mnist`` (root), ``fashion_mnist_pairs`` (root, size, test_size, seed), ``digits``
    (test_fraction, seed), ``cifar10`` and ``cifar100`` (root, augment), ``imagenet`` (root, augment), ``synthetic``
    (num_samples, num_test_samples, num_classes, shape, seed, noise).

    Raises:
        UnknownStrategyError: ``name`` is not registered (the message lists the names and the closest one).
        ConfigError: an option is unknown or a required one is missing.

    >>> train, test, info = get_dataset("synthetic", num_samples=20, num_test_samples=10, shape=(4,))
    >>> len(train), len(test), info.num_classes, info["input_shape"]
    (20, 10, 10, (4,))
    """
    check_options(name, options)
    return DATASETS.get(name)(**options)


def check_options(name: str, options: dict[str, Any]) -> None:
    """Raise as :func:`get_dataset` would for ``name`` and ``options``, without building anything (what a config
    file is checked with when it is loaded)."""
    build = DATASETS.get(name)
    try:
        inspect.signature(build).bind(**options)
    except TypeError as exc:
        valid = ", ".join(inspect.signature(build).parameters) or "(none)"
        raise ConfigError(f"dataset {name!r}: {exc}; its options are: {valid}") from None
