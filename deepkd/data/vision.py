"""CIFAR-10, CIFAR-100 and ImageNet through torchvision, for users who have the files, with the standard transforms.

Nothing is downloaded: a missing data set raises :class:`~deepkd.errors.DataError` that says where the files go.
torchvision is imported only when one of these functions is called.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from deepkd.errors import DataError

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "cifar10",
    "cifar10_transforms",
    "cifar100",
    "cifar100_transforms",
    "imagenet",
    "imagenet_transforms",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _transforms() -> Any:
    try:
        from torchvision import transforms
    except ImportError as exc:
        raise DataError("CIFAR-10, CIFAR-100 and ImageNet need torchvision: `pip install torchvision`") from exc
    return transforms


def _cifar_transforms(mean: tuple[float, ...], std: tuple[float, ...], train: bool, augment: bool) -> Any:
    T = _transforms()
    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train and augment else []
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


def cifar10_transforms(train: bool = True, augment: bool = True) -> Any:
    """The CIFAR-10 pipeline: as :func:`cifar100_transforms`, normalised with :data:`CIFAR10_MEAN`,
    :data:`CIFAR10_STD`."""
    return _cifar_transforms(CIFAR10_MEAN, CIFAR10_STD, train, augment)


def cifar100_transforms(train: bool = True, augment: bool = True) -> Any:
    """The CIFAR-100 pipeline: train with augment = RandomCrop(32, padding=4) + RandomHorizontalFlip, then always
    ToTensor + Normalize(:data:`CIFAR100_MEAN`, :data:`CIFAR100_STD`)."""
    return _cifar_transforms(CIFAR100_MEAN, CIFAR100_STD, train, augment)


def imagenet_transforms(train: bool = True, augment: bool = True) -> Any:
    """The ImageNet pipeline: train with augment = RandomResizedCrop(224) + RandomHorizontalFlip, otherwise
    Resize(256) + CenterCrop(224); then ToTensor + Normalize(:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`)."""
    T = _transforms()
    if train and augment:
        steps = [T.RandomResizedCrop(224), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(256), T.CenterCrop(224)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def cifar10(root: str | os.PathLike[str], train: bool = True, augment: bool = True) -> Any:
    """CIFAR-10 (``torchvision.datasets.CIFAR10``) from ``root/cifar-10-batches-py/``, with :func:`cifar10_transforms`.

    Raises:
        DataError: the files are not there; the message says where to put them.
    """
    from torchvision import datasets

    transform = cifar10_transforms(train, augment)
    try:
        return datasets.CIFAR10(str(Path(root).expanduser()), train=train, transform=transform, download=False)
    except (RuntimeError, FileNotFoundError, OSError) as exc:
        files = "data_batch_1 to data_batch_5, test_batch and batches.meta"
        raise _cifar_missing("CIFAR-10", root, "cifar-10-batches-py", files, "cifar-10-python.tar.gz") from exc


def cifar100(root: str | os.PathLike[str], train: bool = True, augment: bool = True) -> Any:
    """CIFAR-100 (``torchvision.datasets.CIFAR100``) from ``root/cifar-100-python/``, with :func:`cifar100_transforms`.

    Raises:
        DataError: the files are not there; the message says where to put them.
    """
    from torchvision import datasets

    transform = cifar100_transforms(train, augment)
    try:
        return datasets.CIFAR100(str(Path(root).expanduser()), train=train, transform=transform, download=False)
    except (RuntimeError, FileNotFoundError, OSError) as exc:
        files = "train, test and meta"
        raise _cifar_missing("CIFAR-100", root, "cifar-100-python", files, "cifar-100-python.tar.gz") from exc


def _cifar_missing(name: str, root: str | os.PathLike[str], folder: str, files: str, archive: str) -> DataError:
    """The error of a CIFAR set that is not where the config says: what, where (the path as written and where it
    leads), and what to do; never torchvision's "You can use download=True", an option deepkd does not have."""
    where = Path(root).expanduser().resolve() / folder
    state = "is incomplete or corrupted" if where.is_dir() else "does not exist"
    return DataError(
        f"{name} not found: {str(where)!r} {state} (data.root = {str(root)!r}; relative paths start in the working "
        f"directory). It must hold {files}: download {archive} (the python version) from "
        f"https://www.cs.toronto.edu/~kriz/cifar.html and extract it in that root (`tar xzf {archive} -C "
        f"{where.parent}`), or set data.root to the directory that holds {folder}/. deepkd never downloads data."
    )


def imagenet(root: str | os.PathLike[str], train: bool = True, augment: bool = True) -> Any:
    """ImageNet-1k (ILSVRC 2012) with :func:`imagenet_transforms`, from either layout:

    * torchvision's: ``root`` holds ``meta.bin`` or ``ILSVRC2012_devkit_t12.tar.gz`` and the extracted ``train/``
      and ``val/`` class folders (``torchvision.datasets.ImageNet``);
    * a plain folder layout: ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG`` (``ImageFolder``).

    Raises:
        DataError: neither layout is there; the message says where the files go.
    """
    from torchvision import datasets

    base = Path(root).expanduser()
    split = "train" if train else "val"
    transform = imagenet_transforms(train, augment)
    try:
        if (base / "meta.bin").is_file() or (base / "ILSVRC2012_devkit_t12.tar.gz").is_file():
            return datasets.ImageNet(str(base), split=split, transform=transform)
        if (base / split).is_dir():
            return datasets.ImageFolder(str(base / split), transform=transform)
        raise FileNotFoundError(f"no {split}/ folder and no meta.bin or devkit archive")
    except (RuntimeError, FileNotFoundError, OSError) as exc:
        raise DataError(
            f"ImageNet {split} split not found under {str(root)!r} ({exc}). Put the ILSVRC 2012 images in "
            f"root/{split}/<wnid>/*.JPEG (one folder per class; val too, not flat), optionally with "
            "ILSVRC2012_devkit_t12.tar.gz in root for torchvision's class names, and pass that root."
        ) from exc
