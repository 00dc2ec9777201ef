"""The CIFAR zoo speaks mdistiller's layout: ResNets, WRNs, VGGs and the CIFAR ResNet-18/34/50.

``tests/data/zoo/<model>.json`` records, for 100 classes, what the reference definitions in megvii-research/mdistiller
(``mdistiller/models/cifar/{resnet,wrn,vgg,resnetv2}.py``) give: the ``state_dict`` keys and shapes in order, the
parameter count, and the logits of the reference model on a fixed input after loading :func:`filled_state_dict`
(deterministic weights). ``tests/data/zoo/legacy/<model>.json`` records the keys and shapes of deepkd 0.1's
definitions, which must still load through :mod:`deepkd.models.legacy`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from deepkd.models import MODELS as MODEL_REGISTRY
from deepkd.models import build_model, count_parameters
from deepkd.models.legacy import LEGACY_KEYS, upgrade_state_dict

DATA = Path(__file__).parent / "data" / "zoo"
# the models whose names changed since deepkd 0.1: their old layouts are recorded in data/zoo/legacy/
LEGACY = (
    *(f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)),
    "resnet8x4",
    "resnet32x4",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    "vgg8",
    "vgg11",
    "vgg13",
)
MODELS = (*LEGACY, "wrn_16_1", "vgg16", "vgg19", "resnet18_cifar", "resnet34_cifar", "resnet50_cifar")
ALIASES = {"ResNet18": "resnet18_cifar", "ResNet34": "resnet34_cifar", "ResNet50": "resnet50_cifar"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _layout(sd: dict[str, Tensor]) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in sd.items()]


def _recorded_layout(data: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(shape)) for k, shape in data["state_dict"]]


def filled_state_dict(layout: list[tuple[str, tuple[int, ...]]], seed: int = 0) -> dict[str, Tensor]:
    """Deterministic, well-scaled weights for the keys and shapes ``layout`` (the reference's logits in the data
    files were computed with the same filling): fan-in scaled normals for conv / linear weights, scales in
    [0.25, 0.75) for the BN weights, small shifts for biases and running means, variances in [0.5, 1.5)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for key, shape in layout:
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(1, dtype=torch.long)
        elif len(shape) > 1:
            fan_in = int(torch.Size(shape[1:]).numel())
            out[key] = torch.randn(shape, generator=g) / fan_in**0.5
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("weight"):
            out[key] = torch.rand(shape, generator=g) * 0.5 + 0.25
        else:
            out[key] = torch.randn(shape, generator=g) * 0.1
    return out


def reference_input() -> Tensor:
    """The input the recorded reference logits were computed on."""
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_the_data_covers_the_families() -> None:
    for name in MODELS:
        assert (DATA / f"{name}.json").is_file(), name
    for name in LEGACY:
        assert (DATA / "legacy" / f"{name}.json").is_file(), name
        assert name in LEGACY_KEYS, name


@pytest.mark.parametrize("name", MODELS)
def test_layout_count_and_logits_match_the_reference(name: str) -> None:
    data = _load(DATA / f"{name}.json")
    assert data["model"] == name and data["num_classes"] == 100
    model = build_model(name, num_classes=100)
    # the same keys, in the same order, with the same shapes (buffers included)
    assert _layout(model.state_dict()) == _recorded_layout(data)
    assert count_parameters(model) == data["parameters"]

    sd = filled_state_dict(_recorded_layout(data))
    model.load_state_dict(sd, strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, sd[key]), key
    model.eval()
    with torch.no_grad():
        logits = model(reference_input())
    assert isinstance(logits, Tensor) and logits.shape == (2, 100)
    expected = torch.tensor(data["logits"])
    assert expected.abs().max() > 0.1  # the filling keeps the logits informative
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("alias", "name"), sorted(ALIASES.items()))
def test_literature_names_are_aliases(alias: str, name: str) -> None:
    assert MODEL_REGISTRY.get(alias) is MODEL_REGISTRY.get(name)


def test_torchvision_resnets_keep_their_names() -> None:
    imagenet = build_model("resnet18", num_classes=10)
    cifar = build_model("resnet18_cifar", num_classes=10)
    assert imagenet.state_dict()["conv1.weight"].shape == (64, 3, 7, 7)
    assert cifar.state_dict()["conv1.weight"].shape == (64, 3, 3, 3)
    assert "linear.weight" in cifar.state_dict() and "fc.weight" in imagenet.state_dict()


@pytest.mark.parametrize("name", LEGACY)
def test_deepkd_0_1_weights_upgrade_and_load_strictly(name: str) -> None:
    old = _load(DATA / "legacy" / f"{name}.json")
    assert old["model"] == name
    old_sd = filled_state_dict(_recorded_layout(old), seed=2)
    model = build_model(name, num_classes=100)
    assert set(old_sd) != set(model.state_dict())  # the names did change

    new_sd = upgrade_state_dict(name, old_sd, model)
    model.load_state_dict(new_sd, strict=True)
    key_map = LEGACY_KEYS[name]
    assert len({key_map(k) for k in old_sd}) == len(old_sd)
    loaded = model.state_dict()
    for key, value in old_sd.items():
        assert torch.equal(loaded[key_map(key)], value), key


@pytest.mark.parametrize("name", LEGACY)
def test_current_weights_pass_the_upgrade_unchanged(name: str) -> None:
    model: nn.Module = build_model(name, num_classes=100)
    sd = model.state_dict()
    assert upgrade_state_dict(name, sd, model).keys() == sd.keys()
    assert all(LEGACY_KEYS[name](k) == k for k in sd)
