"""Data on the device: a loader that holds a whole data set in accelerator memory and augments it there.

For data sets that fit in GPU memory (CIFAR-10/100: 150 MB of uint8 pixels; Fashion-MNIST: 47 MB), feeding a small
student through a CPU DataLoader (PIL, per-sample transforms, collation, a host-to-device copy per step) can take
longer than the step itself. :class:`DeviceLoader` copies the samples to the device once (uint8 pixels where the
source has them, the tensors as they are otherwise); each step is then a gather by index on the device, for training
sets with the CIFAR recipe a random crop with zero padding and a horizontal flip, and the data set's ``/ 255`` and
normalisation: exactly the CPU pipeline's result for the same crop offsets and flips.

* **Order.** The loader yields the samples of the DataLoader that :func:`~deepkd.data.make_loaders` builds for the
  same seed, epoch, rank, world size, batch size and ``drop_last``, batch for batch: it keeps such a DataLoader over
  sample positions, exposes its ``generator`` and ``sampler`` (so :func:`~deepkd.data.seed_loader` works unchanged)
  and reads each epoch's order from it when iterated (drawing from the generator just as that DataLoader does).
* **Augmentation.** Each epoch's crop offsets and flips are drawn on the CPU when the loader is iterated, from a
  generator seeded with a hash of the order generator's state, the sampler's epoch and the rank, never from the
  global random-number generator: after ``seed_loader(loader, seed, epoch)`` they are a pure function of ``(seed,
  epoch, rank)``, so a resumed run (a fresh iterator advanced past the batches done) continues with exactly the
  batches of the uninterrupted run. Order and parameters reach the device in one copy per epoch; a step reads
  nothing back from the device, and a batch is only computed when it is asked for.
* **Sources** (:class:`DeviceData`): torchvision's CIFAR-10/100 and any set with a uint8 ``.data`` array ``[N, H,
  W, C]`` (``C`` 1 or 3) or ``[N, H, W]``, ``.targets`` and a ``[RandomCrop] [RandomHorizontalFlip] ToTensor
  [Normalize]`` transform; deepkd's Fashion-MNIST sets (their uint8 ``pixels``); in-memory tensor sets such as
  ``synthetic`` and ``digits`` (as they are); and an :class:`~deepkd.data.IndexedDataset` or ``Subset`` of one.
  Anything else (ImageNet's image folders...) raises :class:`~deepkd.errors.ConfigError`.

>>> from deepkd.data import synthetic
>>> train, test = device_loaders(synthetic(10, 2, (3, 4, 4)), synthetic(4, 2, (3, 4, 4), train=False), 4, device="cpu")
>>> len(train), [len(y) for x, y in train], next(iter(test))[0].shape
(3, [4, 4, 2], torch.Size([4, 3, 4, 4]))
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from deepkd.data.base import IndexedDataset, ShardSampler, make_loaders
from deepkd.data.device_data import Augmentation, DeviceData, ToTensorNormalize, draw_augmentation
from deepkd.errors import ConfigError

__all__ = [
    "Augmentation",
    "DeviceData",
    "DeviceEpoch",
    "DeviceLoader",
    "ToTensorNormalize",
    "device_loaders",
    "draw_augmentation",
]

# ------------------------------------------------------------------ the loader
class _Positions(Dataset[int]):
    """Sample positions ``0..n-1``: the data set of the DataLoader that gives a device loader its order."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return int(index)

    def __getitems__(self, indices: list[int]) -> list[int]:  # one call per batch, no per-sample calls
        return list(indices)


def _order_loader(
    size: int,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    drop_last: bool,
    rank: int,
    world_size: int,
    generator: torch.Generator | None = None,
) -> DataLoader[Any]:
    """The DataLoader over sample positions that :func:`make_loaders` would build: its training loader when
    ``shuffle``, else its evaluation loader (``generator`` the one it draws its base seed from; ``None``: the global
    generator, as a DataLoader without one does)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    positions = _Positions(size)
    if shuffle:
        return make_loaders(
            positions, positions, batch_size, seed=seed, drop_last=drop_last, rank=rank, world_size=world_size
        )[0]
    sampler = ShardSampler(size, rank, world_size) if world_size > 1 else None
    return DataLoader(
        positions, batch_size=batch_size, shuffle=False, sampler=sampler, drop_last=drop_last, generator=generator
    )


def _seed_of(*parts: object) -> int:
    digest = hashlib.blake2b(b"|".join(p if isinstance(p, bytes) else repr(p).encode() for p in parts), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1


class DeviceLoader:
    """Batches ``(x, y)``, or ``(x, y, index)`` for an :class:`~deepkd.data.IndexedDataset`, of a data set held
    on ``device``: x float32 (``[B, C, H, W]`` for images), y int64, index int64, all on the device.

    Args:
        dataset: the data set (see :class:`DeviceData` for what it can be); kept as ``loader.dataset``.
        batch_size: samples per batch (per rank).
        device: where the data set is held and the batches computed.
        shuffle: the order of :func:`~deepkd.data.make_loaders`' training loader (a new permutation each epoch,
            from ``seed``, or :class:`~torch.utils.data.DistributedSampler`'s share when ``world_size > 1``);
            otherwise its evaluation loader's (index order, or rank ``rank``'s :class:`~deepkd.data.ShardSampler`
            share).
        seed, drop_last, rank, world_size: as for :func:`~deepkd.data.make_loaders`.
        augment: ``None``: crop and flip as the data set's transform asks; ``False``: never.
        data: the data set already on the device (shared with another loader), instead of copying it again.
        order: the DataLoader over sample positions whose batches give each epoch's order, instead of the one built
            from ``shuffle``, ``seed``, ``drop_last``, ``rank`` and ``world_size``.

    ``len(loader)`` is the number of batches per epoch; ``loader.generator`` and ``loader.sampler`` are those of the
    order's DataLoader, for :func:`~deepkd.data.seed_loader`; ``loader.random_augmentation`` tells whether it crops
    and flips (:func:`~deepkd.data.augments_randomly` reads it).
    """

    num_workers = 0

    def __init__(
        self,
        dataset: Dataset[Any],
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        augment: bool | None = None,
        data: DeviceData | None = None,
        order: DataLoader[Any] | None = None,
    ) -> None:
        self.dataset = dataset
        self.data = data if data is not None else DeviceData.from_dataset(dataset, device)
        self.device = self.data.device
        if len(self.data) != len(dataset):  # type: ignore[arg-type]
            raise ConfigError(f"the device data holds {len(self.data)} samples, the data set {len(dataset)}")  # type: ignore[arg-type]
        self.indexed = isinstance(dataset, IndexedDataset)
        self.batch_size, self.drop_last, self.seed = batch_size, drop_last, int(seed)
        self.rank, self.world_size = rank, world_size
        self.random_augmentation = self.data.augmentation is not None and augment is not False
        if order is None:
            order = _order_loader(
                len(self.data),
                batch_size,
                shuffle=shuffle,
                seed=int(seed),
                drop_last=drop_last,
                rank=rank,
                world_size=world_size,
            )
        self.order = order
        self.sampler = order.sampler
        self.generator = order.generator
        self._fallback = torch.Generator().manual_seed(_seed_of("deepkd.device", int(seed), rank))

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> DeviceEpoch:
        augmentation = self.data.augmentation if self.random_augmentation else None
        generator = self._augmentation_generator() if augmentation is not None else None  # before the order's draws
        batches = [torch.as_tensor(b, dtype=torch.long) for b in self.order]
        order = torch.cat(batches) if batches else torch.zeros(0, dtype=torch.long)
        params = None
        if augmentation is not None and generator is not None:
            params = draw_augmentation(len(order), augmentation, *self.data.image_size, generator)
        return DeviceEpoch(self, order, [len(b) for b in batches], params)

    def _augmentation_generator(self) -> torch.Generator:
        """This epoch's generator of crops and flips: seeded from the order generator's state (a pure function of
        ``(seed, epoch)`` after :func:`~deepkd.data.seed_loader`), the sampler's epoch and the rank; without an order
        generator, one generator of the loader's, drawn on across epochs."""
        if self.generator is None:
            return self._fallback
        state = self.generator.get_state().numpy().tobytes()
        epoch = getattr(self.sampler, "epoch", 0)
        return torch.Generator().manual_seed(_seed_of(state, epoch, self.rank))

    def in_order(self, rank: int = 0, world_size: int = 1) -> DeviceLoader:
        """The same data (no copy) in index order, without augmentation and with the same batch size; rank
        ``rank``'s :class:`~deepkd.data.ShardSampler` share when ``world_size > 1``. It leaves the global
        random-number generator alone (for :func:`deepkd.teacher.compute_teacher_logits`)."""
        order = _order_loader(
            len(self.data),
            self.batch_size,
            shuffle=False,
            seed=self.seed,
            drop_last=False,
            rank=rank,
            world_size=world_size,
            generator=torch.Generator(),
        )
        return DeviceLoader(
            self.dataset,
            self.batch_size,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
            augment=False,
            data=self.data,
            order=order,
        )

    def __repr__(self) -> str:
        return (
            f"DeviceLoader({type(self.dataset).__name__}, batch_size={self.batch_size}, batches={len(self)}, "
            f"device={self.device}, random_augmentation={self.random_augmentation}, indexed={self.indexed})"
        )


class DeviceEpoch(Iterator[tuple[Tensor, ...]]):
    """One pass over a :class:`DeviceLoader`: ``order`` (CPU int64) holds the epoch's sample indices, ``sizes``
    the batch sizes and ``params`` (CPU ``[3, n]`` or ``None``) the crop offsets and flips of each position. Both
    go to the device in one copy; each batch is computed there when :func:`next` asks for it."""

    def __init__(self, loader: DeviceLoader, order: Tensor, sizes: list[int], params: Tensor | None) -> None:
        self.order, self.sizes, self.params = order, sizes, params
        plan = order[None] if params is None else torch.cat([order[None], params])
        self._plan = plan.to(loader.device)  # the epoch's one host-to-device copy
        self._data, self._indexed = loader.data, loader.indexed
        self._bounds = list(itertools.accumulate(sizes, initial=0))
        self._next = 0

    def __iter__(self) -> DeviceEpoch:
        return self

    def __len__(self) -> int:
        return len(self.sizes) - self._next

    def __next__(self) -> tuple[Tensor, ...]:
        k = self._next
        if k >= len(self.sizes):
            raise StopIteration
        self._next = k + 1
        columns = self._plan[:, self._bounds[k] : self._bounds[k + 1]]
        index = columns[0]
        x = self._data.batch(index, columns[1:] if self.params is not None else None)
        y = self._data.targets.index_select(0, index)
        return (x, y, index) if self._indexed else (x, y)


def device_loaders(
    train_set: Dataset[Any],
    test_set: Dataset[Any],
    batch_size: int,
    *,
    device: torch.device | str,
    seed: int = 0,
    drop_last: bool = False,
    test_batch_size: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[DeviceLoader, DeviceLoader]:
    """:func:`~deepkd.data.make_loaders` with the data held on ``device``: a training :class:`DeviceLoader` in the
    order of make_loaders' training loader, cropping and flipping as the training set's transform asks, and an
    evaluation loader in index order (rank ``rank``'s :class:`~deepkd.data.ShardSampler` share when ``world_size >
    1``) that never augments. There are no worker processes. A test set that is the training set (or an
    :class:`~deepkd.data.IndexedDataset` of it) shares its copy.

    Raises:
        ConfigError: ``batch_size < 1``, or a data set that cannot be held on the device (``@ $.data.on_device``).
    """
    for size in (batch_size, test_batch_size or batch_size):
        if size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {size}")
    device = torch.device(device)
    train_data = DeviceData.from_dataset(train_set, device)
    same = _unwrap(test_set) is _unwrap(train_set)
    test_data = train_data if same else DeviceData.from_dataset(test_set, device)
    common: dict[str, Any] = {"seed": seed, "rank": rank, "world_size": world_size}
    train = DeviceLoader(train_set, batch_size, shuffle=True, drop_last=drop_last, data=train_data, **common)
    test = DeviceLoader(test_set, test_batch_size or batch_size, augment=False, data=test_data, **common)
    return train, test


def _unwrap(dataset: Any) -> Any:
    return _unwrap(dataset.dataset) if isinstance(dataset, IndexedDataset) else dataset
