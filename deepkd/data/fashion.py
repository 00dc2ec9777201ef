"""Fashion-MNIST from local IDX files, and a 100-class "pairs" set built from it.

Files are looked up in ``root`` (argument), else ``$DEEPKD_FASHION_MNIST``, else ``/usr/share/datasets/fashion-mnist``
(where Debian's ``dataset-fashion-mnist`` package puts them). Inside that directory both the flat layout
(``root/train-images-idx3-ubyte.gz``...) and torchvision's (``root/FashionMNIST/raw/...``) work, gzipped or not.
Nothing is ever downloaded.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from deepkd.data.base import LabeledTensorDataset
from deepkd.data.idx import read_idx
from deepkd.errors import DataError, InputError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "PairDataset",
    "fashion_mnist",
    "fashion_mnist_pairs",
    "find_fashion_mnist",
    "normalise_pixels",
]

FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
ENV_VAR = "DEEPKD_FASHION_MNIST"
DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
_STEMS = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _resolve_root(root: str | os.PathLike[str] | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser() if env else DEFAULT_ROOT


def find_fashion_mnist(root: str | os.PathLike[str] | None = None, train: bool = True) -> tuple[Path, Path]:
    """Return the ``(images, labels)`` IDX paths of one split, or raise :class:`DataError` saying how to get them."""
    base = _resolve_root(root)
    searched = [base, base / "FashionMNIST" / "raw", base / "raw"]
    for directory in searched:
        found = []
        for stem in _STEMS[train]:
            found += [p for p in (directory / f"{stem}.gz", directory / stem) if p.is_file()][:1]
        if len(found) == 2:
            return found[0], found[1]
    names = ", ".join(f"{s}[.gz]" for s in _STEMS[train])
    raise DataError(
        f"Fashion-MNIST {'train' if train else 'test'} files ({names}) not found in "
        f"{', '.join(str(d) for d in searched)}. Get them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu; "
        f"installs to {DEFAULT_ROOT}), or pass root= (or set ${ENV_VAR}) to a directory holding the standard IDX files "
        "(torchvision's FashionMNIST/raw layout works too)."
    )


@functools.lru_cache(maxsize=4)
def _load_cached(images: Path, labels: Path, stamp: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    del stamp  # only part of the cache key, so a rewritten file is read again
    x, y = read_idx(images), read_idx(labels)
    if x.dtype != torch.uint8 or x.ndim != 3 or tuple(x.shape[1:]) != (28, 28):
        raise DataError(f"{str(images)!r} should hold uint8 images of shape [N, 28, 28], got {x.dtype} {list(x.shape)}")
    if y.dtype != torch.uint8 or y.ndim != 1 or len(y) != len(x):
        raise DataError(
            f"{str(labels)!r} should hold {len(x)} uint8 labels to match {str(images)!r}, got {y.dtype} {list(y.shape)}"
        )
    if len(y) and int(y.max()) > 9:
        raise DataError(f"{str(labels)!r} holds label {int(y.max())}; Fashion-MNIST labels are 0..9")
    return x, y


def _load_raw(root: str | os.PathLike[str] | None, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 28, 28] and uint8 labels [N] of one split (cached; callers must not modify them)."""
    images, labels = find_fashion_mnist(root, train)
    stamp = tuple(int(v) for p in (images, labels) for v in (p.stat().st_mtime_ns, p.stat().st_size))
    return _load_cached(images.resolve(), labels.resolve(), stamp)


def normalise_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """Float inputs from uint8 images of any shape, on their device: ``(x / 255 - mean) / std`` in two passes."""
    return pixels.float().mul_(1 / (255 * FASHION_MNIST_STD)).sub_(FASHION_MNIST_MEAN / FASHION_MNIST_STD)


def fashion_mnist(root: str | os.PathLike[str] | None = None, train: bool = True) -> LabeledTensorDataset:
    """Fashion-MNIST (Xiao et al., 2017) as in-memory tensors: 10 classes of 28x28 grey images.

    Args:
        root: directory with the IDX files (see the module docstring for the default and accepted layouts).
        train: the 60,000-image training split, or the 10,000-image test split.

    Returns:
        A :class:`LabeledTensorDataset` of float images ``[N, 1, 28, 28]`` normalised with mean 0.2860 and
        std 0.3530, and int64 labels ``[N]``. No augmentation.

    Raises:
        DataError: the files are missing (the message says how to install them) or malformed.
    """
    images, labels = _load_raw(root, train)
    pixels = images.unsqueeze(1)  # a view of the cached images, kept for loaders that hold uint8 on the GPU
    inputs = normalise_pixels(pixels)
    return LabeledTensorDataset(
        inputs, labels.long(), 10, FASHION_MNIST_CLASSES, pixels=pixels, normalise_pixels=normalise_pixels
    )


class PairDataset(LabeledTensorDataset):
    """The in-memory set returned by :func:`fashion_mnist_pairs`; ``source_indices[i]`` holds the indices of pair
    ``i``'s left and right images in the source split."""

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        source_indices: torch.Tensor,
        classes: tuple[str, ...],
        pixels: torch.Tensor | None = None,
    ) -> None:
        super().__init__(
            inputs, targets, 100, classes, pixels=pixels, normalise_pixels=None if pixels is None else normalise_pixels
        )
        self.source_indices = source_indices


def fashion_mnist_pairs(
    root: str | os.PathLike[str] | None = None, train: bool = True, size: int | None = None, seed: int = 0
) -> PairDataset:
    """A 100-class set of Fashion-MNIST image pairs: left and right image side by side, label ``10·left + right``.

    Pair classes are balanced: the ``size`` labels cover the 100 classes as evenly as possible (each appears
    ``size // 100`` or one more times), in random order. Each pair's two images are then drawn from the source
    images of their classes, cycling through a fresh shuffle of each class so every source image is used about
    equally. Training pairs use only training images, test pairs only test images. The set is a function of
    ``(files, train, size, seed)``.

    Args:
        root: as for :func:`fashion_mnist`.
        train: build from the training split (else the test split).
        size: number of pairs, at least 100; default the number of source images (60,000 or 10,000).
        seed: the seed of the pairing.

    Returns:
        A :class:`PairDataset` of normalised float images ``[size, 1, 28, 56]`` and int64 labels in ``[0, 100)``.
    """
    images, labels = _load_raw(root, train)
    size = len(labels) if size is None else int(size)
    if size < 100:
        raise InputError(f"fashion_mnist_pairs needs size >= 100 so that all 100 classes occur, got {size}")
    present = torch.unique(labels)
    if len(present) != 10:
        raise DataError(f"Fashion-MNIST {'train' if train else 'test'} labels cover only classes {present.tolist()}")
    g = torch.Generator().manual_seed(int(seed))
    # Balanced pair classes: which classes get the size % 100 extra samples is random too.
    class_order = torch.randperm(100, generator=g)
    pair_class = class_order[torch.arange(size) % 100][torch.randperm(size, generator=g)]
    slots = torch.cat([pair_class // 10, pair_class % 10])  # the class wanted at each left, then each right slot
    source = torch.empty(2 * size, dtype=torch.long)
    for k in range(10):
        where = (slots == k).nonzero().squeeze(1)
        pool = (labels == k).nonzero().squeeze(1)
        rounds = max(1, -(-len(where) // len(pool)))
        draws = torch.cat([pool[torch.randperm(len(pool), generator=g)] for _ in range(rounds)])
        source[where] = draws[: len(where)]
    left, right = source[:size], source[size:]
    pixels = torch.cat([images[left], images[right]], dim=2).unsqueeze(1)
    names = tuple(f"{a} | {b}" for a in FASHION_MNIST_CLASSES for b in FASHION_MNIST_CLASSES)
    return PairDataset(normalise_pixels(pixels), pair_class.long(), torch.stack([left, right], dim=1), names, pixels)
