"""The CIFAR zoo speaks mdistiller's layout: ResNets, WRNs, VGGs and the CIFAR ResNet-18/34/50.

``tests/data/zoo/<model>.json`` records, for 100 classes, what the reference definitions in megvii-research/mdistiller
(``mdistiller/models/cifar/{resnet,wrn,vgg,resnetv2}.py``) give: the ``state_dict`` keys and shapes in order, the
parameter count, and the logits of the reference model on a fixed input after loading :func:`filled_state_dict`
(deterministic weights). ``tests/data/zoo/legacy/<model>.json`` records the keys and shapes of deepkd 0.1's
definitions, which must still load through :mod:`deepkd.models.legacy`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from deepkd.models import MODELS as MODEL_REGISTRY
from deepkd.models import build_model, count_parameters
from deepkd.models.legacy import LEGACY_KEYS, upgrade_state_dict

from .zoo import filled_state_dict, layout, record, reference_input

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


def _layout(sd: dict[str, Tensor]) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in sd.items()]


def test_the_data_covers_the_families() -> None:
    for name in MODELS:
        assert (DATA / f"{name}.json").is_file(), name
    for name in LEGACY:
        assert (DATA / "legacy" / f"{name}.json").is_file(), name
        assert name in LEGACY_KEYS, name


@pytest.mark.parametrize("name", MODELS)
def test_layout_count_and_logits_match_the_reference(name: str) -> None:
    data = record(DATA / f"{name}.json")
    assert data["model"] == name and data["num_classes"] == 100
    model = build_model(name, num_classes=100)
    # the same keys, in the same order, with the same shapes (buffers included)
    assert _layout(model.state_dict()) == layout(data)
    assert count_parameters(model) == data["parameters"]

    sd = filled_state_dict(layout(data))
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
    old = record(DATA / "legacy" / f"{name}.json")
    assert old["model"] == name
    old_sd = filled_state_dict(layout(old), seed=2)
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
