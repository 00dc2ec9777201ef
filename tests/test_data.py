"""Tests of deepkd.data on tiny files written here; the real Fashion-MNIST is used only when installed."""

from __future__ import annotations

import gzip
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

import deepkd.data as D
from deepkd.errors import ConfigError, DataError, InputError, UnknownStrategyError

MEAN, STD = 0.2860, 0.3530
TRAIN_MARK, TEST_MARK = 200, 100  # pixel [0, 0] of every source image says which split it came from
REAL_ROOT = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX encoding written independently of deepkd (struct, big-endian)."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    code = codes[array.dtype]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, array: np.ndarray, gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    path.with_name(path.name + (".gz" if gz else "")).write_bytes(gzip.compress(data) if gz else data)


def tiny_split(per_class: int, mark: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose pixel [0, 0] is the split mark and pixel [0, 1] the image's index; labels cycle 0..9."""
    n = 10 * per_class
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 0, 0] = mark
    images[:, 0, 1] = np.arange(n)
    images[:, 5:20, 5:20] = (labels * 20 + 10)[:, None, None]
    return images, labels


def write_fashion(directory: Path, gz: bool = True, train_per_class: int = 6, test_per_class: int = 3) -> None:
    for prefix, per_class, mark in (("train", train_per_class, TRAIN_MARK), ("t10k", test_per_class, TEST_MARK)):
        images, labels = tiny_split(per_class, mark)
        write(directory / f"{prefix}-images-idx3-ubyte", images, gz)
        write(directory / f"{prefix}-labels-idx1-ubyte", labels, gz)


@pytest.fixture
def flat_root(tmp_path: Path) -> Path:
    write_fashion(tmp_path / "flat", gz=True)
    return tmp_path / "flat"


def raw(x: torch.Tensor) -> torch.Tensor:
    """Undo the Fashion-MNIST normalisation back to integer pixels."""
    return (x * STD + MEAN).mul(255).round().to(torch.int64)


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_read_idx_round_trip(tmp_path: Path, gz: bool, dtype: type) -> None:
    array = (
        (np.arange(2 * 3 * 4) * 7 - 20).reshape(2, 3, 4).astype(dtype)
        if dtype != np.uint8
        else (np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    )
    write(tmp_path / "a.idx", array, gz)
    out = D.read_idx(tmp_path / ("a.idx.gz" if gz else "a.idx"))
    assert out.dtype == torch.from_numpy(array).dtype
    assert torch.equal(out, torch.from_numpy(array))


def test_write_idx_matches_the_format(tmp_path: Path) -> None:
    array = np.array([[1, -2], [300, 4]], dtype=np.int32)
    D.write_idx(tmp_path / "x.idx", array)
    assert (tmp_path / "x.idx").read_bytes() == idx_bytes(array)
    D.write_idx(tmp_path / "x.idx.gz", array)
    assert gzip.decompress((tmp_path / "x.idx.gz").read_bytes()) == idx_bytes(array)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=4),
    dtype=st.sampled_from(["uint8", "int16", "float64"]),
    gz=st.booleans(),
)
def test_idx_round_trip_property(
    tmp_path_factory: pytest.TempPathFactory, shape: list[int], dtype: str, gz: bool
) -> None:
    path = tmp_path_factory.mktemp("idx") / ("p.idx.gz" if gz else "p.idx")
    tensor = torch.arange(int(np.prod(shape)), dtype=torch.float64).reshape(shape).to(getattr(torch, dtype))
    D.write_idx(path, tensor)
    assert torch.equal(D.read_idx(path), tensor)


@pytest.mark.parametrize(
    ("content", "fault"),
    [
        (b"\x00\x00", "truncated"),
        (b"\x01\x02\x08\x01" + struct.pack(">I", 3) + b"abc", "magic"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 3) + b"abc", "magic"),
        (b"\x00\x00\x08\x02" + struct.pack(">I", 3), "header"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"abc", "truncated"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 2) + b"abc", "longer"),
        (gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 256) + bytes(range(256)))[:60], "gzip"),
        (b"\x1f\x8b" + bytes(30), "gzip"),
    ],
)
def test_corrupt_idx_raises_data_error(tmp_path: Path, content: bytes, fault: str) -> None:
    path = tmp_path / "bad-idx1-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=fault) as info:
        D.read_idx(path)
    assert "bad-idx1-ubyte.gz" in str(info.value)


def test_missing_idx_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.gz"):
        D.read_idx(tmp_path / "nope.gz")


# ---------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_flat_gz_layout(flat_root: Path) -> None:
    train, test = D.fashion_mnist(flat_root), D.fashion_mnist(flat_root, train=False)
    assert train.inputs.shape == (60, 1, 28, 28) and test.inputs.shape == (30, 1, 28, 28)
    assert train.inputs.dtype == torch.float32 and train.targets.dtype == torch.int64
    assert train.targets.tolist() == [i % 10 for i in range(60)]
    assert train.num_classes == 10 and train.classes is not None and train.classes[9] == "Ankle boot"
    assert torch.allclose(train.inputs[0, 0, 27, 27], torch.tensor(-MEAN / STD))
    assert (raw(train.inputs[:, 0, 0, 0]) == TRAIN_MARK).all() and (raw(test.inputs[:, 0, 0, 0]) == TEST_MARK).all()
    x, y = train[7]
    assert x.shape == (1, 28, 28) and int(y) == 7


def test_fashion_mnist_torchvision_raw_layout(tmp_path: Path, flat_root: Path) -> None:
    write_fashion(tmp_path / "tv" / "FashionMNIST" / "raw", gz=False)
    a, b = D.fashion_mnist(tmp_path / "tv"), D.fashion_mnist(flat_root)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)


def test_fashion_mnist_root_from_environment(flat_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPKD_FASHION_MNIST", str(flat_root))
    assert len(D.fashion_mnist(train=False)) == 30


def test_fashion_mnist_missing_files_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as info:
        D.fashion_mnist(tmp_path / "absent")
    assert isinstance(info.value, FileNotFoundError) and "root=" in str(info.value)


def test_fashion_mnist_rejects_wrong_shapes(tmp_path: Path, flat_root: Path) -> None:
    write(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 10, 10), np.uint8), gz=False)
    write(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8), gz=False)
    with pytest.raises(DataError, match=r"\[N, 28, 28\]"):
        D.fashion_mnist(tmp_path)
    write(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8), gz=False)
    write(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, np.uint8), gz=False)
    with pytest.raises(DataError, match="labels"):
        D.fashion_mnist(tmp_path)


def test_fashion_mnist_rereads_a_rewritten_file(tmp_path: Path) -> None:
    write_fashion(tmp_path, gz=False)
    assert len(D.fashion_mnist(tmp_path)) == 60
    write_fashion(tmp_path, gz=False, train_per_class=2)
    assert len(D.fashion_mnist(tmp_path)) == 20


# ---------------------------------------------------------------- pairs


def test_pairs_labels_come_from_the_two_halves(flat_root: Path) -> None:
    pairs = D.fashion_mnist_pairs(flat_root, size=300, seed=3)
    assert pairs.inputs.shape == (300, 1, 28, 56) and pairs.num_classes == 100
    pixels = raw(pairs.inputs[:, 0])
    sources = torch.stack([pixels[:, 0, 1], pixels[:, 0, 29]], dim=1)  # image index written in each half
    assert torch.equal(sources, pairs.source_indices)
    left_label, right_label = sources[:, 0] % 10, sources[:, 1] % 10  # tiny_split labels cycle 0..9
    assert torch.equal(pairs.targets, 10 * left_label + right_label)
    # the halves are whole, unmodified source images
    images = raw(D.fashion_mnist(flat_root).inputs[:, 0])
    assert torch.equal(pixels[:, :, :28], images[sources[:, 0]])
    assert torch.equal(pixels[:, :, 28:], images[sources[:, 1]])


def test_pairs_use_disjoint_sources(flat_root: Path) -> None:
    train = raw(D.fashion_mnist_pairs(flat_root, train=True, size=200).inputs[:, 0])
    test = raw(D.fashion_mnist_pairs(flat_root, train=False, size=200).inputs[:, 0])
    assert (train[:, 0, 0] == TRAIN_MARK).all() and (train[:, 0, 28] == TRAIN_MARK).all()
    assert (test[:, 0, 0] == TEST_MARK).all() and (test[:, 0, 28] == TEST_MARK).all()


def test_pairs_cover_all_classes_evenly(flat_root: Path) -> None:
    counts = torch.bincount(D.fashion_mnist_pairs(flat_root, size=250).targets, minlength=100)
    assert len(counts) == 100 and counts.min() == 2 and counts.max() == 3 and counts.sum() == 250
    assert (torch.bincount(D.fashion_mnist_pairs(flat_root, size=100).targets, minlength=100) == 1).all()


def test_pairs_default_size_and_determinism(flat_root: Path) -> None:
    a, b = D.fashion_mnist_pairs(flat_root, size=150, seed=1), D.fashion_mnist_pairs(flat_root, size=150, seed=1)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.targets, D.fashion_mnist_pairs(flat_root, size=150, seed=2).targets)
    # 60 training sources < 100 classes: the default size needs >= 100 sources, asked for explicitly here
    with pytest.raises(InputError, match="100"):
        D.fashion_mnist_pairs(flat_root)


def test_pairs_default_size_is_the_source_count(tmp_path: Path) -> None:
    write_fashion(tmp_path, train_per_class=12, test_per_class=10)
    assert len(D.fashion_mnist_pairs(tmp_path)) == 120 and len(D.fashion_mnist_pairs(tmp_path, train=False)) == 100


def test_pairs_use_sources_evenly(tmp_path: Path) -> None:
    write_fashion(tmp_path, train_per_class=10)
    use = torch.bincount(D.fashion_mnist_pairs(tmp_path, size=100).source_indices.flatten(), minlength=100)
    assert use.min() >= 1 and use.max() <= 3 and use.sum() == 200


# ---------------------------------------------------------------- digits, synthetic


def test_digits_split() -> None:
    pytest.importorskip("sklearn")
    train, test = D.digits(train=True), D.digits(train=False)
    assert len(train) + len(test) == 1797 and abs(len(test) - 0.25 * 1797) < 10
    assert train.inputs.shape[1:] == (1, 8, 8) and train.targets.dtype == torch.int64
    assert set(test.targets.tolist()) == set(range(10))
    assert torch.equal(D.digits(train=False).inputs, test.inputs)  # deterministic
    assert not torch.equal(D.digits(train=False, seed=1).targets, test.targets)
    rows = {tuple(r) for r in train.inputs.flatten(1).tolist()}
    overlap = sum(tuple(r) in rows for r in test.inputs.flatten(1).tolist())
    assert overlap < 5  # disjoint split (a handful of digits are exact duplicates in the source)
    assert abs(float(train.inputs.mean())) < 0.1 and abs(float(train.inputs.std()) - 1) < 0.1


def test_digits_without_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match="pip install scikit-learn"):
        D.digits()


def test_synthetic_is_deterministic_balanced_and_learnable() -> None:
    a, b = D.synthetic(200, 5, (3, 4, 4), seed=7), D.synthetic(200, 5, (3, 4, 4), seed=7)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert a.inputs.shape == (200, 3, 4, 4) and torch.bincount(a.targets).tolist() == [40] * 5
    assert not torch.equal(a.inputs, D.synthetic(200, 5, (3, 4, 4), seed=8).inputs)
    test = D.synthetic(100, 5, (3, 4, 4), seed=7, train=False)
    assert not torch.equal(test.inputs[:10], a.inputs[:10])
    means = torch.stack([a.inputs[a.targets == k].mean(0) for k in range(5)]).flatten(1)
    predicted = torch.cdist(test.inputs.flatten(1), means).argmin(1)
    assert (predicted == test.targets).float().mean() > 0.9


# ---------------------------------------------------------------- torchvision sets


def names(compose: object) -> list[str]:
    return [type(t).__name__ for t in compose.transforms]  # type: ignore[attr-defined]


def test_cifar100_transforms() -> None:
    train = D.cifar100_transforms(train=True, augment=True)
    assert names(train) == ["RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert train.transforms[0].size == (32, 32) and train.transforms[0].padding == 4
    normalize = train.transforms[-1]
    assert tuple(normalize.mean) == (0.5071, 0.4867, 0.4408) and tuple(normalize.std) == (0.2675, 0.2565, 0.2761)
    assert names(D.cifar100_transforms(train=False)) == ["ToTensor", "Normalize"]
    assert names(D.cifar100_transforms(train=True, augment=False)) == ["ToTensor", "Normalize"]
    cifar10 = D.cifar10_transforms(train=True)
    assert names(cifar10) == names(train) and cifar10.transforms[0].padding == 4
    assert tuple(cifar10.transforms[-1].mean) == (0.4914, 0.4822, 0.4465)
    assert tuple(cifar10.transforms[-1].std) == (0.2470, 0.2435, 0.2616)


def test_imagenet_transforms() -> None:
    train = D.imagenet_transforms(train=True)
    assert names(train) == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert train.transforms[0].size == (224, 224)
    test = D.imagenet_transforms(train=False)
    assert names(test) == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert test.transforms[0].size == 256 and test.transforms[1].size == (224, 224)
    assert tuple(test.transforms[-1].mean) == (0.485, 0.456, 0.406)
    assert tuple(test.transforms[-1].std) == (0.229, 0.224, 0.225)


def test_cifar100_and_imagenet_missing_data(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-100-python") as info:
        D.cifar100(tmp_path)
    message = str(info.value)
    assert f"CIFAR-100 not found: {str(tmp_path / 'cifar-100-python')!r} does not exist (data.root = " in message
    assert "relative paths start in the working directory" in message and "deepkd never downloads" in message
    assert "download=True" not in message and "cifar-100-python.tar.gz" in message
    with pytest.raises(DataError, match=r"CIFAR-10 not found.*cifar-10-batches-py"):
        D.get_dataset("cifar10", root=str(tmp_path))
    with pytest.raises(DataError, match="train/<wnid>"):
        D.imagenet(tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or created


def test_imagenet_folder_layout(tmp_path: Path) -> None:
    from PIL import Image

    for wnid in ("n01", "n02"):
        (tmp_path / "val" / wnid).mkdir(parents=True)
        Image.new("RGB", (300, 260), (10, 20, 30)).save(tmp_path / "val" / wnid / "a.JPEG")
    val = D.imagenet(tmp_path, train=False)
    x, y = val[1]
    assert x.shape == (3, 224, 224) and y == 1 and not D.augments_randomly(val)


# ---------------------------------------------------------------- augments_randomly, IndexedDataset


class TransformSet(Dataset):
    def __init__(self, transform: object = None) -> None:
        self.transform = transform

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.zeros(3, 8, 8), 0


def test_augments_randomly() -> None:
    from torchvision import transforms as T
    from torchvision.transforms import v2

    class MyCrop(T.RandomCrop):
        pass

    class Jitter:
        random_augmentation = True

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return x

    plain = D.synthetic(8, 2, (3, 8, 8))
    deterministic = TransformSet(T.Compose([T.Resize(8), T.CenterCrop(8), T.Lambda(lambda x: x), T.Normalize(0, 1)]))
    assert not D.augments_randomly(plain) and not D.augments_randomly(deterministic)
    assert not D.augments_randomly(TransformSet(D.cifar100_transforms(train=False)))
    assert not D.augments_randomly(DataLoader(Subset(D.IndexedDataset(plain), [0, 1])))
    random_sets = [
        TransformSet(D.cifar100_transforms(train=True)),
        TransformSet(D.imagenet_transforms(train=True)),
        TransformSet(T.Compose([T.ToTensor(), T.RandomApply([T.ColorJitter(0.4)])])),
        TransformSet(T.RandomErasing()),
        TransformSet(T.AutoAugment()),
        TransformSet(MyCrop(8)),
        TransformSet(Jitter()),
        TransformSet(v2.Compose([v2.ToImage(), v2.RandAugment()])),
        TransformSet(torch.nn.Sequential(T.CenterCrop(8), T.GaussianBlur(3))),
    ]
    for ds in random_sets:
        assert D.augments_randomly(ds), ds.transform
    marked = D.synthetic(4, 2, (2,))
    marked.random_augmentation = True
    assert D.augments_randomly(marked)
    wrapped: ConcatDataset[object] = ConcatDataset(
        [plain, Subset(D.IndexedDataset(TransformSet(T.RandomHorizontalFlip())), [0])]
    )
    assert D.augments_randomly(wrapped) and D.augments_randomly(DataLoader(D.IndexedDataset(wrapped)))


def test_indexed_dataset() -> None:
    base = D.synthetic(10, 3, (2,), seed=1)
    ds = D.IndexedDataset(base)
    assert len(ds) == 10 and ds.num_classes == 3 and torch.equal(ds.targets, base.targets)
    x, y, i = ds[4]
    assert torch.equal(x, base.inputs[4]) and y == base.targets[4] and i == 4
    assert ds[-1][2] == 9
    with pytest.raises(IndexError):
        ds[10]
    xb, yb, ib = next(iter(DataLoader(ds, batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(0))))
    assert torch.equal(xb, base.inputs[ib]) and torch.equal(yb, base.targets[ib]) and ib.dtype == torch.int64
    assert pickle.loads(pickle.dumps(ds))[3][2] == 3


# ---------------------------------------------------------------- catalogue and loaders


def test_get_dataset() -> None:
    train, test, info = D.get_dataset("synthetic", num_samples=30, num_test_samples=12, num_classes=3, shape=[2, 4])
    assert isinstance(train, D.LabeledTensorDataset) and isinstance(test, D.LabeledTensorDataset)
    assert (len(train), len(test)) == (30, 12)
    assert info.name == "synthetic" and info.num_classes == 3 and info["input_shape"] == (2, 4)
    assert train.inputs.shape[1:] == info.input_shape
    assert set(D.DATASETS.names()) == {
        "cifar10",
        "cifar100",
        "digits",
        "fashion_mnist",
        "fashion_mnist_pairs",
        "imagenet",
        "synthetic",
    }


def test_get_dataset_pairs_and_fashion(flat_root: Path) -> None:
    train, test, info = D.get_dataset("fashion_mnist_pairs", root=flat_root, size=100, test_size=100)
    assert isinstance(train, D.PairDataset) and isinstance(test, D.PairDataset)
    assert info.num_classes == 100 and info.input_shape == (1, 28, 56) == train.inputs.shape[1:]
    assert len(test) == 100
    _, test, info = D.get_dataset("fashion_mnist", root=flat_root)
    assert isinstance(test, D.LabeledTensorDataset)
    assert len(test) == 30 and info.input_shape == (1, 28, 28)


def test_get_dataset_errors() -> None:
    with pytest.raises(UnknownStrategyError, match="Did you mean 'digits'") as info:
        D.get_dataset("digit")
    for name in ("fashion_mnist", "fashion_mnist_pairs", "cifar10", "cifar100", "imagenet", "synthetic"):
        assert name in str(info.value)
    with pytest.raises(ConfigError, match="num_classes"):
        D.get_dataset("synthetic", num_clases=3)
    with pytest.raises(ConfigError, match="root"):
        D.get_dataset("cifar100")


def test_make_loaders_are_reproducible() -> None:
    train, test = D.synthetic(50, 5, (2,)), D.synthetic(20, 5, (2,), train=False)

    def order(seed: int) -> list[int]:
        loader, _ = D.make_loaders(D.IndexedDataset(train), test, 8, seed=seed)
        return [i for epoch in range(2) for _, _, idx in loader for i in idx.tolist()]

    assert order(0) == order(0) and order(0) != order(1)
    assert order(0)[:50] != order(0)[50:]  # each epoch reshuffles
    loader, test_loader = D.make_loaders(train, test, 8, seed=0, drop_last=True)
    assert len(loader) == 6 and len(test_loader) == 3
    assert torch.equal(torch.cat([y for _, y in test_loader]), test.targets)  # evaluation keeps the order
    with pytest.raises(ConfigError):
        D.make_loaders(train, test, 0, seed=0)


# ---------------------------------------------------------------- the real files, when installed


@pytest.mark.skipif(not (REAL_ROOT / "t10k-labels-idx1-ubyte.gz").exists(), reason="dataset-fashion-mnist absent")
def test_real_fashion_mnist() -> None:
    train, test = D.fashion_mnist(REAL_ROOT), D.fashion_mnist(REAL_ROOT, train=False)
    assert train.inputs.shape == (60000, 1, 28, 28) and test.inputs.shape == (10000, 1, 28, 28)
    assert train.targets.min() == 0 and train.targets.max() == 9
    assert torch.bincount(test.targets).tolist() == [1000] * 10
    assert abs(float(train.inputs.mean())) < 0.01 and abs(float(train.inputs.std()) - 1) < 0.01
