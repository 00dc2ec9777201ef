"""A data set held on the device (:class:`DeviceData`): its samples copied there once, uint8 pixels where the source
has them, with the transform it had on the CPU parsed into an :class:`Augmentation` (random crop with zero padding,
horizontal flip) and a :class:`ToTensorNormalize`, applied on the device. :class:`~deepkd.data.device.DeviceLoader`
batches it; see :mod:`deepkd.data.device` for the guarantees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from deepkd.data.base import IndexedDataset, LabeledTensorDataset
from deepkd.errors import ConfigError

__all__ = ["SUPPORTED", "Augmentation", "DeviceData", "ToTensorNormalize", "draw_augmentation"]

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


