"""Tiny data sets that need no files: scikit-learn's 8x8 digits and a synthetic Gaussian-blob set."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from deepkd.data.base import LabeledTensorDataset
from deepkd.errors import ConfigError, DataError

__all__ = ["DIGITS_MEAN", "DIGITS_STD", "digits", "synthetic"]

# Pixel mean and std of all 1,797 digits after scaling to [0, 1].
DIGITS_MEAN = 0.3053
DIGITS_STD = 0.3760


def digits(train: bool = True, test_fraction: float = 0.25, seed: int = 0) -> LabeledTensorDataset:
    """scikit-learn's bundled handwritten digits (1,797 images, 8x8, 10 classes) with a stratified split.

    Pixels (0..16) are scaled to [0, 1] and normalised with :data:`DIGITS_MEAN` / :data:`DIGITS_STD`. The split
    is per class: each class's images are shuffled with ``seed`` and the first ``round(test_fraction · n_class)``
    go to the test set, so train and test are disjoint and together cover every image.

    Returns:
        A :class:`LabeledTensorDataset` of float images ``[N, 1, 8, 8]`` and int64 labels.

    Raises:
        DataError: scikit-learn is not installed.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError("the digits data set ships with scikit-learn: `pip install scikit-learn`") from exc
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1)
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    g = torch.Generator().manual_seed(int(seed))
    chosen = []
    for k in range(10):
        members = (labels == k).nonzero().squeeze(1)
        members = members[torch.randperm(len(members), generator=g)]
        n_test = round(test_fraction * len(members))
        chosen.append(members[n_test:] if train else members[:n_test])
    index = torch.cat(chosen).sort().values
    x = images[index].div_(16).sub_(DIGITS_MEAN).div_(DIGITS_STD)
    return LabeledTensorDataset(x, labels[index], 10, tuple(str(d) for d in range(10)))


def synthetic(
    num_samples: int,
    num_classes: int,
    shape: Sequence[int] = (3, 32, 32),
    seed: int = 0,
    *,
    train: bool = True,
    noise: float = 1.0,
) -> LabeledTensorDataset:
    """A learnable synthetic classification set: ``x = mean[y] + noise · ε`` with ``ε ~ N(0, I)``.

    The class means (``N(0, 1)`` per element) depend only on ``seed``, so the ``train=True`` and ``train=False``
    sets of one seed share them (and are learnable from each other) while drawing different labels and noise.
    Labels are balanced (counts differ by at most one) and shuffled. Fully deterministic.

    >>> ds = synthetic(8, 4, (2,), seed=1)
    >>> ds.inputs.shape, sorted(ds.targets.tolist())
    (torch.Size([8, 2]), [0, 0, 1, 1, 2, 2, 3, 3])
    """
    if num_samples < 1 or num_classes < 1:
        raise ConfigError(f"synthetic needs num_samples >= 1 and num_classes >= 1, got {num_samples}, {num_classes}")
    shape = tuple(int(s) for s in shape)
    means = torch.randn((num_classes, *shape), generator=torch.Generator().manual_seed(int(seed)))
    g = torch.Generator().manual_seed(int(seed) * 2 + (1 if train else 2) + 0x5EED)
    labels = (torch.arange(num_samples) % num_classes)[torch.randperm(num_samples, generator=g)]
    x = means[labels] + noise * torch.randn((num_samples, *shape), generator=g)
    return LabeledTensorDataset(x, labels, num_classes)
