"""Data on the device (deepkd.data.device), checked on the CPU: the order of make_loaders, the CPU pipeline's pixels
for the same crops and flips, exact mid-epoch resume, uniform augmentation draws, what can and cannot go there."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset, TensorDataset
from torchvision import transforms as T
from torchvision.transforms import functional as TF

import deepkd.data as D
from deepkd import config as cfg
from deepkd.data.device import Augmentation, DeviceData, DeviceLoader, device_loaders, draw_augmentation
from deepkd.data.fashion import normalise_pixels
from deepkd.errors import ConfigError
from deepkd.experiment import ExperimentConfig, run
from deepkd.resume import ResumePoint, skip_done
from deepkd.teacher import compute_teacher_logits
from deepkd.utils import rng_state

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class FakeCIFAR(Dataset[tuple[Any, int]]):
    """What torchvision's CIFAR sets look like to a loader: uint8 ``.data`` [N, H, W, C], ``.targets`` and
    ``.transform``; items go through PIL like theirs. ``[N, H, W]`` data are grey images, as in its MNIST sets."""

    def __init__(self, n: int, transform: Any, *, shape: tuple[int, ...] = (32, 32, 3), seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.data = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        self.targets = [int(t) for t in rng.integers(0, 10, n)]
        self.transform, self.target_transform = transform, None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def cifar(n: int, train: bool = True, seed: int = 0) -> FakeCIFAR:
    return FakeCIFAR(n, D.cifar100_transforms(train=train), seed=seed)


def tensor_set(n: int, seed: int = 0) -> D.LabeledTensorDataset:
    return D.synthetic(n, 5, (3, 4, 4), seed=seed)


def rendered(image: np.ndarray, pipeline: Any, top: int, left: int, flip: bool) -> torch.Tensor:
    """The CPU pipeline's output for one image with the given crop offsets and flip (torchvision's functional ops)."""
    crop = next((t for t in pipeline.transforms if isinstance(t, T.RandomCrop)), None)
    img = Image.fromarray(image)
    if crop is not None:
        img = TF.crop(TF.pad(img, crop.padding, crop.fill), top, left, *crop.size)
    if flip:
        img = TF.hflip(img)
    x = TF.to_tensor(img)
    normalize = next((t for t in pipeline.transforms if isinstance(t, T.Normalize)), None)
    return TF.normalize(x, normalize.mean, normalize.std) if normalize is not None else x


def batches(loader: Any) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(batch) for batch in loader]


def assert_same_batches(got: list[tuple[torch.Tensor, ...]], expected: list[tuple[torch.Tensor, ...]]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            assert u.dtype == v.dtype and torch.equal(u, v)


# ---------------------------------------------------------------- order


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("drop_last", [False, True])
def test_order_is_make_loaders_order(world_size: int, drop_last: bool) -> None:
    train, test = D.IndexedDataset(tensor_set(23)), tensor_set(11, seed=1)
    for rank in range(world_size):
        for seed in (0, 3):
            common: dict[str, Any] = {"seed": seed, "drop_last": drop_last, "rank": rank, "world_size": world_size}
            ref_train, ref_test = D.make_loaders(train, test, 4, test_batch_size=3, **common)
            dev_train, dev_test = device_loaders(train, test, 4, device="cpu", test_batch_size=3, **common)
            assert len(dev_train) == len(ref_train) and len(dev_test) == len(ref_test)
            for epoch in (1, 2, 5):
                D.seed_loader(ref_train, seed, epoch)
                D.seed_loader(dev_train, seed, epoch)
                assert_same_batches(batches(dev_train), batches(ref_train))  # indices, inputs and targets
            torch.manual_seed(9)
            expected, after_ref = batches(ref_test), torch.rand(3)
            torch.manual_seed(9)
            got, after_dev = batches(dev_test), torch.rand(3)
            assert_same_batches(got, expected)
            assert torch.equal(after_dev, after_ref)  # the same draw from the global generator as the DataLoader's


def test_order_without_seed_loader_follows_the_generator() -> None:
    train, test = tensor_set(10), tensor_set(4)
    ref, _ = D.make_loaders(D.IndexedDataset(train), test, 3, seed=4)
    dev, _ = device_loaders(D.IndexedDataset(train), test, 3, device="cpu", seed=4)
    first, second = batches(dev), batches(dev)
    assert_same_batches(first, batches(ref))
    assert_same_batches(second, batches(ref))
    assert not torch.equal(first[0][2], second[0][2])


# ---------------------------------------------------------------- pixels


@pytest.mark.parametrize(
    ("pipeline", "shape"),
    [
        (D.cifar100_transforms(train=True), (32, 32, 3)),
        (D.cifar10_transforms(train=True), (32, 32, 3)),
        (
            T.Compose(
                [
                    T.RandomCrop((28, 30), padding=(2, 3, 4, 1), fill=(10, 20, 30)),
                    T.RandomHorizontalFlip(0.3),
                    T.ToTensor(),
                ]
            ),
            (32, 32, 3),
        ),
        (T.Compose([T.RandomCrop(28, padding=2), T.ToTensor(), T.Normalize((0.5,), (0.25,))]), (28, 28)),
        (T.Compose([T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))]), (8, 6, 3)),
    ],
)
def test_pixels_are_the_cpu_pipelines(pipeline: Any, shape: tuple[int, ...]) -> None:
    ds = FakeCIFAR(8, pipeline, shape=shape)
    data = DeviceData.from_dataset(ds, "cpu")
    assert data.inputs.dtype == torch.uint8 and data.augmentation is not None
    params = draw_augmentation(8, data.augmentation, *data.image_size, torch.Generator().manual_seed(1))
    corners = torch.tensor([[0, 0, 0], [0, 0, 1]]).T  # the smallest offsets, both flips; the largest, below
    rows, cols = data.augmentation.positions(*data.image_size)
    params[:, :2], params[:, 2:4] = corners, corners + torch.tensor([[rows - 1], [cols - 1], [0]])
    index = torch.tensor([5, 0, 3, 1, 7, 2, 6, 4])
    x = data.batch(index, params)
    assert x.dtype == torch.float32 and x.is_contiguous()
    for b, i in enumerate(index.tolist()):
        top, left, flip = params[:, b].tolist()
        assert torch.equal(x[b], rendered(ds.data[i], pipeline, top, left, bool(flip))), (b, top, left, flip)


def test_pixels_without_augmentation_are_the_cpu_pipelines() -> None:
    ds = cifar(6, train=False)
    x = DeviceData.from_dataset(ds, "cpu").batch(torch.tensor([4, 1]))
    assert torch.equal(x, torch.stack([ds[4][0], ds[1][0]])) and x.is_contiguous()
    train = cifar(6)
    assert torch.equal(DeviceData.from_dataset(train, "cpu").batch(torch.tensor([4, 1])), x)  # no params: as stored


def test_each_batch_uses_its_epochs_draws() -> None:
    ds = D.IndexedDataset(cifar(10))
    loader = DeviceLoader(ds, 4, shuffle=True, seed=2)
    assert loader.random_augmentation and D.augments_randomly(loader)
    D.seed_loader(loader, 2, 1)
    epoch = iter(loader)
    assert epoch.params is not None and len(epoch) == 3
    position = 0
    for x, y, index in epoch:
        assert x.shape[1:] == (3, 32, 32) and x.is_contiguous() and y.dtype == index.dtype == torch.int64
        for b, i in enumerate(index.tolist()):
            assert i == int(epoch.order[position]) and y[b] == ds.targets[i]
            top, left, flip = epoch.params[:, position].tolist()
            assert torch.equal(x[b], rendered(ds.data[i], ds.transform, top, left, bool(flip)))
            position += 1
    assert position == 10


# ---------------------------------------------------------------- augmentation draws


def test_resume_mid_epoch_is_exact() -> None:
    for world_size in (1, 2):
        for rank in range(world_size):
            make = functools.partial(
                DeviceLoader, D.IndexedDataset(cifar(20)), 3, shuffle=True, seed=7, rank=rank, world_size=world_size
            )
            whole = make()
            D.seed_loader(whole, 7, 3)
            expected = batches(whole)
            for done in (0, 1, 3, len(expected) - 1):
                resumed = (
                    make()
                )  # a new process: the probe batch, then the epoch replayed and its first batches dropped
                next(iter(resumed))
                D.seed_loader(resumed, 7, 3)
                saved = rng_state(torch.Generator().manual_seed(123))  # a generator state from mid-epoch
                epoch = iter(resumed)
                skip_done(epoch, ResumePoint(done, [{"rng": saved, "meter": None}] * world_size), resumed.generator)
                assert_same_batches(batches(epoch), expected[done:])


def test_draws_are_a_function_of_seed_epoch_and_rank() -> None:
    ds = cifar(12)

    def params(seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        loader = DeviceLoader(ds, 4, shuffle=True, seed=seed, rank=rank, world_size=world_size)
        D.seed_loader(loader, seed, epoch)
        drawn = iter(loader).params
        assert drawn is not None
        return drawn

    assert torch.equal(params(0, 1), params(0, 1))
    assert not torch.equal(params(0, 1), params(0, 2)) and not torch.equal(params(0, 1), params(1, 1))
    assert not torch.equal(params(0, 1, 0, 2), params(0, 1, 1, 2))
    loader = DeviceLoader(ds, 4, shuffle=True)
    first, second = iter(loader).params, iter(loader).params  # no seed_loader: the next epoch draws anew
    assert first is not None and second is not None and not torch.equal(first, second)
    state = torch.get_rng_state()
    D.seed_loader(loader, 0, 1)
    list(loader)
    assert torch.equal(torch.get_rng_state(), state)  # never the global generator


def test_crops_and_flips_are_uniform() -> None:
    n = 81 * 2 * 100
    ds = FakeCIFAR(n, T.Compose([T.RandomCrop(8, padding=4), T.RandomHorizontalFlip(), T.ToTensor()]), shape=(8, 8))
    loader = DeviceLoader(ds, 4096, shuffle=True, seed=0)
    D.seed_loader(loader, 0, 1)
    params = iter(loader).params
    assert params is not None and params.shape == (3, n)
    cells = torch.bincount(params[0] * 18 + params[1] * 2 + params[2], minlength=162).double()
    assert len(cells) == 162 and bool((cells > 0).all())
    expected = n / 162
    assert float(((cells - expected) ** 2 / expected).sum()) < 222.19  # chi-square, 161 dof, p = 0.001
    for counts, k in ((torch.bincount(params[0]), 9), (torch.bincount(params[1]), 9)):
        e = n / k
        assert len(counts) == k and float(((counts.double() - e) ** 2 / e).sum()) < 26.12  # 8 dof, p = 0.001
    flips = int(params[2].sum())
    assert abs(flips - n / 2) < 4.5 * (n / 4) ** 0.5
    assert float(draw_augmentation(4000, Augmentation(flip=0.0), 8, 8, torch.Generator()).abs().sum()) == 0


# ---------------------------------------------------------------- sources


def write_fashion(root: Path, n_train: int = 40, n_test: int = 20) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        D.write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        D.write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))


def test_fashion_mnist_is_held_as_uint8(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    sets = [
        (D.fashion_mnist(tmp_path, True), D.fashion_mnist(tmp_path, False)),
        (D.fashion_mnist_pairs(tmp_path, True, size=100), D.fashion_mnist_pairs(tmp_path, False, size=100)),
    ]
    for train, test in sets:
        assert train.pixels is not None and train.normalise_pixels is not None
        assert torch.equal(train.normalise_pixels(train.pixels), train.inputs)
        ref = D.make_loaders(train, test, 8, seed=1)
        dev = device_loaders(train, test, 8, device="cpu", seed=1)
        assert dev[0].data.inputs.dtype == torch.uint8 and not dev[0].random_augmentation
        for r, d in zip(ref, dev, strict=True):
            D.seed_loader(r, 1, 2)
            D.seed_loader(d, 1, 2)
            assert_same_batches(batches(d), batches(r))


def test_tensor_sets_are_held_as_they_are() -> None:
    train = tensor_set(9)
    data = DeviceData.from_dataset(train, "cpu")
    assert data.inputs is train.inputs and data.augmentation is None and data.normalise is None
    plain = TensorDataset(torch.randn(6, 2), torch.arange(6, dtype=torch.int32))
    x, y = next(iter(DeviceLoader(Subset(plain, [4, 1, 2]), 2)))
    assert torch.equal(x, plain.tensors[0][[4, 1]]) and y.tolist() == [4, 1] and y.dtype == torch.int64
    loaders = device_loaders(train, D.IndexedDataset(train), 4, device="cpu")
    assert loaders[0].data is loaders[1].data  # one copy when the test set is the training set
    with pytest.raises(ConfigError, match="batch_size"):
        device_loaders(train, train, 0, device="cpu")


def test_what_cannot_go_on_the_device(tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    for wnid in ("n01", "n02"):
        (tmp_path / wnid).mkdir()
        Image.new("RGB", (5, 4)).save(tmp_path / wnid / "a.png")
    with pytest.raises(ConfigError) as info:
        device_loaders(ImageFolder(str(tmp_path), transform=T.ToTensor()), tensor_set(4), 2, device="cpu")
    message = str(info.value)
    assert "ImageFolder" in message and "CIFAR-10/CIFAR-100" in message and "fashion_mnist" in message
    assert message.endswith(" @ $.data.on_device")

    class Marked(D.LabeledTensorDataset):
        random_augmentation = True

    class Custom(TensorDataset):
        def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
            return self.tensors[0][i] * 2, self.tensors[1][i]

    svhn_like = cifar(4)
    svhn_like.data = np.zeros((4, 3, 32, 32), np.uint8)
    refused = {
        "ColorJitter": FakeCIFAR(4, T.Compose([T.ColorJitter(0.4), T.ToTensor()])),
        "RandomCrop": FakeCIFAR(4, T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(32, 4), T.ToTensor()])),
        "no ToTensor": FakeCIFAR(4, T.Compose([T.RandomHorizontalFlip()])),
        "no transform": FakeCIFAR(4, None),
        "padding_mode": FakeCIFAR(4, T.Compose([T.RandomCrop(32, 4, padding_mode="reflect"), T.ToTensor()])),
        "shape": svhn_like,
        "random_augmentation": Marked(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), 1),
        "inputs[i], targets[i]": Custom(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)),
    }
    for reason, ds in refused.items():
        with pytest.raises(ConfigError, match=r"@ \$\.data\.on_device$") as info:
            DeviceLoader(ds, 2)
        assert reason in str(info.value), str(info.value)


# ---------------------------------------------------------------- with the rest of deepkd


def test_teacher_cache_from_a_device_loader() -> None:
    train = D.IndexedDataset(tensor_set(13))
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 5))
    cpu_loader, _ = D.make_loaders(train, train, 4, seed=0)
    dev_loader, _ = device_loaders(train, train, 4, device="cpu", seed=0)
    assert not D.augments_randomly(dev_loader)
    state = torch.get_rng_state()
    cache = compute_teacher_logits(teacher, dev_loader, 5, device=torch.device("cpu"), precision="fp32")
    assert torch.equal(torch.get_rng_state(), state)
    expected = compute_teacher_logits(teacher, cpu_loader, 5, device=torch.device("cpu"), precision="fp32")
    assert torch.equal(cache, expected) and not cache.isnan().any()
    augmenting, evaluation = device_loaders(D.IndexedDataset(cifar(4)), cifar(4, train=False), 2, device="cpu")
    assert D.augments_randomly(augmenting) and not D.augments_randomly(evaluation)


def experiment(tmp_path: Path, name: str, **data: Any) -> ExperimentConfig:
    plain = {
        "run_dir": str(tmp_path / name),
        "seed": 1,
        "recipe": {"loss": "ce", "momentum": "gsnr", "mask": "dynamic"},
        "train": {"epochs": 2, "lr": 0.1, "schedule": "constant", "progress": False, "device": "cpu"},
        "data": {
            "name": "synthetic",
            "batch_size": 16,
            "options": {"num_samples": 56, "num_test_samples": 24, "num_classes": 4, "shape": [8]},
            **data,
        },
        "student": {"name": "mlp", "kwargs": {"in_features": 8, "hidden": [16]}},
    }
    return cfg.structure(plain, ExperimentConfig)


def test_run_on_device_trains_as_the_cpu_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[DeviceLoader] = []

    def recording(*args: Any, **kwargs: Any) -> tuple[DeviceLoader, DeviceLoader]:
        loaders = device_loaders(*args, **kwargs)
        built.extend(loaders)
        return loaders

    monkeypatch.setattr("deepkd.experiment.device_loaders", recording)
    assert experiment(tmp_path, "a").data.on_device is False
    cpu = run(experiment(tmp_path, "cpu"))
    assert not built
    dev = run(experiment(tmp_path, "dev", on_device=True, num_workers=2))  # workers do not apply: ignored
    assert len(built) == 2 and built[0].device == torch.device("cpu")
    assert len(cpu) == len(dev) == 2
    for a, b in zip(cpu.epochs, dev.epochs, strict=True):  # bit for bit (as JSON, where NaN equals NaN)
        assert json.dumps({**a, "time": 0}, sort_keys=True) == json.dumps({**b, "time": 0}, sort_keys=True)


# ---------------------------------------------------------------- on a GPU


@needs_cuda
def test_cuda_batches_equal_the_cpu_ones_and_never_wait() -> None:
    ds = D.IndexedDataset(cifar(300))
    cpu, cpu_test = device_loaders(ds, cifar(50, train=False), 64, device="cpu", seed=5)
    gpu, gpu_test = device_loaders(ds, cifar(50, train=False), 64, device="cuda", seed=5)
    assert gpu.data.inputs.is_cuda and gpu.data.inputs.dtype == torch.uint8
    pixels = torch.randint(0, 256, (70, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    grey = D.LabeledTensorDataset(
        normalise_pixels(pixels), torch.arange(70) % 10, 10, pixels=pixels, normalise_pixels=normalise_pixels
    )
    pairs = [(cpu, gpu), (cpu_test, gpu_test)]
    pairs.append(
        (DeviceLoader(grey, 16, shuffle=True, seed=5), DeviceLoader(grey, 16, device="cuda", shuffle=True, seed=5))
    )
    for a, b in pairs:
        D.seed_loader(a, 5, 2)
        D.seed_loader(b, 5, 2)
        epoch = iter(b)  # the epoch's one host-to-device copy
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any step that waits for the device raises
        try:
            on_gpu = [tuple(t for t in batch) for batch in epoch]
        finally:
            torch.cuda.set_sync_debug_mode("default")
        expected = batches(a)
        assert len(on_gpu) == len(expected)
        for got, want in zip(on_gpu, expected, strict=True):
            assert all(t.is_cuda for t in got) and got[0].is_contiguous()
            assert all(torch.equal(g.cpu(), w) for g, w in zip(got, want, strict=True))
