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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from deepkd.data.base import IndexedDataset, LabeledTensorDataset, ShardSampler, make_loaders
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

#: what ``data.on_device`` can hold, for error messages
SUPPORTED = (
    "torchvision's CIFAR-10/CIFAR-100 (or any set with a uint8 .data array [N, H, W, C] or [N, H, W], .targets and "
    "a [RandomCrop] [RandomHorizontalFlip] ToTensor [Normalize] transform), fashion_mnist, fashion_mnist_pairs, "
    "digits, synthetic and other in-memory tensor sets (LabeledTensorDataset), or an IndexedDataset or Subset of one"
)


def _refuse(dataset: object, reason: str) -> ConfigError:
    return ConfigError(
        f"the data set {type(dataset).__name__} cannot be held on the device: {reason}; data.on_device takes "
        f"{SUPPORTED} @ $.data.on_device"
    )


# ------------------------------------------------------------------ augmentation
@dataclass(frozen=True)
class Augmentation:
    """torchvision's ``RandomCrop`` then ``RandomHorizontalFlip``, applied to uint8 images on the device.

    ``padding`` is ``(left, top, right, bottom)``, filled with ``fill`` (one value, or one per channel); ``size`` is
    the crop's ``(height, width)`` (``None``: the image's); ``flip`` is the probability of a horizontal flip. The
    crop comes first, the flip mirrors the cropped image, as in the CIFAR pipeline.
    """

    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    size: tuple[int, int] | None = None
    fill: tuple[int, ...] = (0,)
    flip: float = 0.0

    def crop_size(self, height: int, width: int) -> tuple[int, int]:
        """The output ``(height, width)`` for images of ``height × width``."""
        return self.size if self.size is not None else (height, width)

    def positions(self, height: int, width: int) -> tuple[int, int]:
        """How many crop offsets there are vertically and horizontally for images of ``height × width``."""
        th, tw = self.crop_size(height, width)
        left, top, right, bottom = self.padding
        return height + top + bottom - th + 1, width + left + right - tw + 1


def draw_augmentation(
    count: int, augmentation: Augmentation, height: int, width: int, generator: torch.Generator
) -> Tensor:
    """Crop offsets and flips of ``count`` samples, int64 ``[3, count]``: the top offset, the left offset (into the
    padded image, uniform over its positions, as ``RandomCrop.get_params`` draws them) and 1 to flip (with
    probability ``augmentation.flip``), drawn from ``generator`` on the CPU.

    >>> draw_augmentation(4, Augmentation((4, 4, 4, 4), flip=0.5), 32, 32, torch.Generator().manual_seed(0)).shape
    torch.Size([3, 4])
    """
    rows, cols = augmentation.positions(height, width)
    top = torch.randint(0, rows, (count,), generator=generator)
    left = torch.randint(0, cols, (count,), generator=generator)
    flip = (torch.rand(count, generator=generator) < augmentation.flip).long()
    return torch.stack([top, left, flip])


class ToTensorNormalize:
    """uint8 images ``[..., C, H, W]`` to float32 as torchvision's ``ToTensor`` and ``Normalize(mean, std)`` compute
    them, in the same order (``x / 255``, then ``- mean``, then ``/ std``), so results match bit for bit. Without
    ``mean`` and ``std`` only ``/ 255``. Every divisor is a tensor on the images' device: CUDA divides by a
    Python number as a multiplication by its reciprocal, one bit off the CPU's division."""

    def __init__(self, mean: Tensor | None = None, std: Tensor | None = None, scale: Tensor | None = None) -> None:
        if (mean is None) != (std is None):
            raise ConfigError("Normalize needs both mean and std")
        self.mean, self.std = mean, std
        self.scale = scale if scale is not None else torch.tensor(255.0)

    @classmethod
    def of(cls, mean: Sequence[float] | float | None, std: Sequence[float] | float | None) -> ToTensorNormalize:
        """From ``Normalize``'s ``mean`` and ``std`` (as torchvision shapes them: one value per channel)."""
        if mean is None or std is None:
            return cls()
        m, s = (torch.as_tensor(v, dtype=torch.float32) for v in (mean, std))
        if bool((s == 0).any()):
            raise ConfigError(f"Normalize's std holds a zero: {std}")
        return cls(m.view(-1, 1, 1) if m.dim() == 1 else m, s.view(-1, 1, 1) if s.dim() == 1 else s)

    def to(self, device: torch.device) -> ToTensorNormalize:
        """The same normalisation with its constants on ``device``."""
        mean, std = (
            (None, None) if self.mean is None or self.std is None else (self.mean.to(device), self.std.to(device))
        )
        return ToTensorNormalize(mean, std, self.scale.to(device))

    def __call__(self, pixels: Tensor) -> Tensor:
        x = pixels.float().div_(self.scale)
        if self.mean is not None and self.std is not None:
            x = x.sub_(self.mean).div_(self.std)
        return x

    def __repr__(self) -> str:
        if self.mean is None or self.std is None:
            return "ToTensorNormalize()"
        return f"ToTensorNormalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


# ------------------------------------------------------------------ the data on the device
class DeviceData:
    """A data set's samples on a device: ``inputs`` (uint8 pixels ``[N, C, H, W]``, or any tensor used as is),
    int64 ``targets``, ``normalise`` (how a batch of pixels becomes float inputs) and ``augmentation`` (the random
    crop and flip the source's pipeline asks for, or ``None``).

    Build one from a data set with :meth:`from_dataset`; :meth:`batch` gives the inputs of some samples.
    """

    def __init__(
        self,
        inputs: Tensor,
        targets: Tensor,
        *,
        device: torch.device | str = "cpu",
        normalise: Callable[[Tensor], Tensor] | None = None,
        augmentation: Augmentation | None = None,
    ) -> None:
        self.device = torch.device(device)
        if len(inputs) != len(targets) or targets.dim() != 1:
            raise ConfigError(f"{len(inputs)} inputs but targets of shape {list(targets.shape)}")
        if augmentation is not None and (inputs.dim() != 4 or inputs.dtype != torch.uint8):
            raise ConfigError(
                f"crops and flips need uint8 images [N, C, H, W], got {inputs.dtype} {list(inputs.shape)}"
            )
        self.inputs = inputs.to(self.device).contiguous()  # [N, C, H, W] rows, whatever the source's layout
        self.targets = targets.to(self.device, torch.long)
        to = getattr(normalise, "to", None)
        self.normalise = to(self.device) if callable(to) else normalise
        self.augmentation = augmentation
        if augmentation is not None:  # the constants of every step, on the device once
            channels, height, width = inputs.shape[1:]
            th, tw = augmentation.crop_size(height, width)
            if min(augmentation.positions(height, width)) < 1:
                raise ConfigError(
                    f"a {th}x{tw} crop does not fit {height}x{width} images padded by {augmentation.padding}"
                )
            fill = augmentation.fill
            if len(fill) not in (1, channels):
                raise ConfigError(f"RandomCrop's fill {fill} must be one value or one per channel ({channels})")
            dev = self.device
            self._channels = torch.arange(channels, device=dev)[None, :, None, None]
            self._rows = torch.arange(th, device=dev) - augmentation.padding[1]
            self._cols = torch.arange(tw, device=dev)
            self._fill = torch.tensor(fill, dtype=torch.uint8, device=dev).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` of the stored images."""
        return int(self.inputs.shape[-2]), int(self.inputs.shape[-1])

    @classmethod
    def from_dataset(cls, dataset: Dataset[Any], device: torch.device | str = "cpu") -> DeviceData:
        """Hold ``dataset`` on ``device`` (see the module docstring for what it can be).

        Raises:
            ConfigError: the data set cannot be held (the message names it and those that can), ending with
                ``@ $.data.on_device``.
        """
        inputs, targets, normalise, augmentation = _host_data(dataset)
        return cls(inputs, targets, device=device, normalise=normalise, augmentation=augmentation)

    def batch(self, index: Tensor, params: Tensor | None = None) -> Tensor:
        """The model inputs of samples ``index`` (on the device): gathered, cropped and flipped as ``params`` says
        (``[3, len(index)]`` from :func:`draw_augmentation`; ``None``: as stored) and normalised."""
        x = self.inputs.index_select(0, index) if params is None else self._crop_and_flip(index, params)
        return (self.normalise(x) if self.normalise is not None else x).contiguous()

    def _crop_and_flip(self, index: Tensor, params: Tensor) -> Tensor:
        # out[b, c, i, j] = padded[index[b], c, top[b] + i, left[b] + (tw - 1 - j if flip[b] else j)], as one gather
        # from the unpadded images: positions that fall in the padding are clamped, then replaced by the fill.
        assert self.augmentation is not None
        height, width = self.image_size
        rows = params[0, :, None] + self._rows  # [B, th] source rows
        cols = torch.where(params[2, :, None] != 0, self._cols.flip(0), self._cols)
        cols = cols + (params[1, :, None] - self.augmentation.padding[0])  # [B, tw] source columns
        inside = ((rows >= 0) & (rows < height))[:, None, :, None] & ((cols >= 0) & (cols < width))[:, None, None, :]
        x = self.inputs[
            index[:, None, None, None],
            self._channels,
            rows.clamp(0, height - 1)[:, None, :, None],
            cols.clamp(0, width - 1)[:, None, None, :],
        ]
        return torch.where(inside, x, self._fill)

    def __repr__(self) -> str:
        return (
            f"DeviceData(n={len(self)}, inputs={self.inputs.dtype} {list(self.inputs.shape[1:])}, "
            f"device={self.device}, augmentation={self.augmentation})"
        )


_Host = tuple[Tensor, Tensor, Callable[[Tensor], Tensor] | None, Augmentation | None]


def _host_data(dataset: Any) -> _Host:
    """``(inputs, targets, normalise, augmentation)`` of a data set, as CPU tensors."""
    if isinstance(dataset, IndexedDataset):
        return _host_data(dataset.dataset)
    if isinstance(dataset, Subset):
        inputs, targets, normalise, augmentation = _host_data(dataset.dataset)
        index = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        return inputs[index], targets[index], normalise, augmentation
    if isinstance(dataset, TensorDataset):
        return _tensor_data(dataset)
    if getattr(dataset, "data", None) is not None:
        return _pixel_data(dataset)
    raise _refuse(dataset, "it has neither tensors nor a uint8 .data array of images")


def _tensor_data(dataset: TensorDataset) -> _Host:
    if type(dataset).__getitem__ is not TensorDataset.__getitem__ or len(dataset.tensors) != 2:
        raise _refuse(dataset, "only tensor sets whose items are (inputs[i], targets[i]) can be")
    if getattr(dataset, "random_augmentation", False) is True:
        raise _refuse(dataset, "it is marked random_augmentation = True, and its augmentation cannot run there")
    inputs, targets = dataset.tensors
    if targets.dim() != 1 or targets.dtype.is_floating_point:
        raise _refuse(dataset, f"its targets are {targets.dtype} {list(targets.shape)}, not class indices [N]")
    pixels = getattr(dataset, "pixels", None)
    normalise = getattr(dataset, "normalise_pixels", None)
    if isinstance(dataset, LabeledTensorDataset) and pixels is not None and normalise is not None:
        return pixels, targets, normalise, None  # 1 byte per pixel; normalise gives `inputs` exactly
    return inputs, targets, None, None


def _pixel_data(dataset: Any) -> _Host:
    data = dataset.data
    array = torch.from_numpy(data) if isinstance(data, np.ndarray) else data
    if not isinstance(array, Tensor) or array.dtype != torch.uint8:
        raise _refuse(dataset, f"its .data is {getattr(data, 'dtype', type(data).__name__)}, not uint8 images")
    if array.dim() == 3:  # [N, H, W]: grey images (torchvision's MNIST family)
        array = array.unsqueeze(-1)
    if array.dim() != 4 or array.shape[-1] not in (1, 3):
        raise _refuse(dataset, f"its .data has shape {list(array.shape)}, not [N, H, W, C] with C = 1 or 3")
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise _refuse(dataset, "it has no .targets")
    targets = torch.as_tensor(targets)
    if targets.shape != (len(array),) or targets.dtype.is_floating_point:
        raise _refuse(dataset, f"its .targets ({targets.dtype} {list(targets.shape)}) are not one class per image")
    if getattr(dataset, "target_transform", None) is not None:
        raise _refuse(dataset, "it has a target_transform")
    augmentation, normalise = _parse_transform(dataset, getattr(dataset, "transform", None), int(array.shape[-1]))
    return array.permute(0, 3, 1, 2), targets, normalise, augmentation


def _parse_transform(dataset: object, transform: Any, channels: int) -> tuple[Augmentation | None, ToTensorNormalize]:
    """The augmentation and normalisation of a ``[RandomCrop] [RandomHorizontalFlip] ToTensor [Normalize]``
    pipeline (a ``Compose`` or a single ``ToTensor``)."""
    try:
        from torchvision import transforms as T
    except ImportError:  # pragma: no cover - torchvision sets need torchvision
        raise _refuse(dataset, "torchvision is not installed") from None
    if transform is None:
        raise _refuse(dataset, "it has no transform (its items are PIL images)")
    steps = list(transform.transforms) if type(transform) is T.Compose else [transform]
    crop: Any = None
    flip: Any = None
    normalize: Any = None
    to_tensor = False
    for step in steps:
        kind = type(step)
        if kind is T.RandomCrop and not to_tensor and crop is None and flip is None:
            crop = step
        elif kind is T.RandomHorizontalFlip and not to_tensor and flip is None:
            flip = step
        elif kind is T.ToTensor and not to_tensor:
            to_tensor = True
        elif kind is T.Normalize and to_tensor and normalize is None:
            normalize = step
        else:
            raise _refuse(
                dataset,
                f"its transform step {step!r} is not one of RandomCrop, RandomHorizontalFlip, ToTensor, Normalize in "
                "that order",
            )
    if not to_tensor:
        raise _refuse(dataset, "its transform has no ToTensor")
    normalise = ToTensorNormalize.of(normalize.mean, normalize.std) if normalize is not None else ToTensorNormalize()
    if crop is None and flip is None:
        return None, normalise
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    size: tuple[int, int] | None = None
    fill: tuple[int, ...] = (0,)
    if crop is not None:
        if crop.padding_mode != "constant":
            raise _refuse(dataset, f"RandomCrop pads with padding_mode={crop.padding_mode!r}; only 'constant' can be")
        padding = _padding(dataset, crop.padding)
        size = (int(crop.size[0]), int(crop.size[1]))
        fill = _fill(dataset, crop.fill, channels)
    augmentation = Augmentation(padding, size, fill, float(flip.p) if flip is not None else 0.0)
    return augmentation, normalise


def _padding(dataset: object, padding: Any) -> tuple[int, int, int, int]:
    if padding is None:
        return 0, 0, 0, 0
    values = [int(padding)] if isinstance(padding, (int, np.integer)) else [int(p) for p in padding]
    if len(values) == 1:
        return values[0], values[0], values[0], values[0]
    if len(values) == 2:
        return values[0], values[1], values[0], values[1]
    if len(values) == 4:
        return values[0], values[1], values[2], values[3]
    raise _refuse(dataset, f"RandomCrop's padding {padding!r} is not 1, 2 or 4 numbers")


def _fill(dataset: object, fill: Any, channels: int) -> tuple[int, ...]:
    values = (fill,) if isinstance(fill, (int, float, np.number)) else tuple(fill)
    if not all(float(v).is_integer() and 0 <= float(v) <= 255 for v in values) or len(values) not in (1, channels):
        raise _refuse(dataset, f"RandomCrop's fill {fill!r} is not one 8-bit value or one per channel")
    return tuple(int(v) for v in values)


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
