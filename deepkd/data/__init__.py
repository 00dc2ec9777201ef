"""Data sets for distillation experiments, all loaded from local files or built in memory (nothing downloads).

* :func:`fashion_mnist`, :func:`fashion_mnist_pairs` (100 classes), :func:`digits`, :func:`synthetic`: in-memory
  tensor sets, no augmentation;
* :func:`cifar10`, :func:`cifar100`, :func:`imagenet`: torchvision sets with the standard augmentation, for users
  who have them;
* :func:`get_dataset` picks one by name; :func:`make_loaders` wraps a pair of sets in seeded DataLoaders;
  :func:`device_loaders` holds them on the GPU instead, in the same order, augmenting there (:class:`DeviceLoader`);
* :class:`IndexedDataset` and :func:`augments_randomly` serve the teacher-logit cache;
* :func:`unpack`, :func:`count_batches`, :func:`steps_per_epoch` and :func:`seed_loader` are the training loop's
  batch handling.
"""

from deepkd.data.base import (
    IndexedDataset,
    LabeledTensorDataset,
    Loader,
    ShardSampler,
    augments_randomly,
    count_batches,
    make_loaders,
    seed_loader,
    steps_per_epoch,
    unpack,
)
from deepkd.data.catalog import DATASETS, DatasetInfo, get_dataset
from deepkd.data.device import DeviceLoader, device_loaders
from deepkd.data.fashion import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    PairDataset,
    fashion_mnist,
    fashion_mnist_pairs,
    find_fashion_mnist,
)
from deepkd.data.idx import read_idx, write_idx
from deepkd.data.small import digits, synthetic
from deepkd.data.vision import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    cifar10,
    cifar10_transforms,
    cifar100,
    cifar100_transforms,
    imagenet,
    imagenet_transforms,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DatasetInfo",
    "DeviceLoader",
    "IndexedDataset",
    "LabeledTensorDataset",
    "Loader",
    "PairDataset",
    "ShardSampler",
    "augments_randomly",
    "cifar10",
    "cifar10_transforms",
    "cifar100",
    "cifar100_transforms",
    "count_batches",
    "device_loaders",
    "digits",
    "fashion_mnist",
    "fashion_mnist_pairs",
    "find_fashion_mnist",
    "get_dataset",
    "imagenet",
    "imagenet_transforms",
    "make_loaders",
    "read_idx",
    "seed_loader",
    "steps_per_epoch",
    "synthetic",
    "unpack",
    "write_idx",
]
