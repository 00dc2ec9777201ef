"""The mobile CIFAR students (MobileNetV2, ShuffleNet V1/V2) in the mdistiller layout, and deepkd's earlier weights.

``tests/data/zoo/<model>.json`` records what mdistiller's definitions (``mdistiller/models/cifar/``) give for 100
classes: the ``state_dict`` keys and shapes in order, the parameter count, and the eval-mode logits on
:func:`reference_input` after loading :func:`filled_state_dict`. ``tests/data/zoo/legacy/<model>.json`` records the
keys and shapes of deepkd's earlier definitions. Both were generated from those definitions, not from deepkd's.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from deepkd.models import ClassifierNet, build_model, count_parameters
from deepkd.models.legacy import LEGACY_KEYS, upgrade_state_dict

from .zoo import ZOO, filled_state_dict, layout, record, reference_input

# deepkd name -> the recorded file (named after mdistiller's builder)
RECORDS = {
    "mobilenetv2": "mobile_half",
    "mobile_half": "mobile_half",
    "MobileNetV2": "mobile_half",
    "shufflenetv1": "ShuffleV1",
    "ShuffleV1": "ShuffleV1",
    "shufflenetv2": "ShuffleV2",
    "ShuffleV2": "ShuffleV2",
}
# options rebuilding deepkd's earlier architecture (its ShuffleNet V2 had a 3x3 stem; mdistiller's is 1x1)
LEGACY_OPTIONS: dict[str, dict[str, Any]] = {"shufflenetv2": {"stem_kernel": 3}, "ShuffleV2": {"stem_kernel": 3}}


def _build(name: str, **kwargs: Any) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, num_classes=100, **kwargs)


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_layout_and_parameter_count_match_mdistiller(name: str) -> None:
    data = record(ZOO / f"{RECORDS[name]}.json")
    model = _build(name)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == layout(data)
    assert count_parameters(model) == data["parameters"]
    assert isinstance(model, ClassifierNet) and model.num_classes == 100


@pytest.mark.parametrize("name", ["mobile_half", "ShuffleV1", "ShuffleV2"])
def test_a_checkpoint_in_the_reference_layout_loads_strictly_and_gives_its_logits(name: str) -> None:
    data = record(ZOO / f"{name}.json")
    state = filled_state_dict(layout(data))
    model = _build(name)
    model.load_state_dict(state, strict=True)  # as from mdistiller's ckpt_epoch_240.pth["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert upgrade_state_dict(name, state, model) == state  # already current: left alone
    model.eval()
    with torch.no_grad():
        logits = model(reference_input())
    expected = torch.tensor(data["logits"])
    assert expected.shape == (2, 100) and expected.abs().max() > 0.1  # the filling keeps the logits informative
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_aliases_build_the_same_architecture() -> None:
    for names in (
        ("mobilenetv2", "mobile_half", "MobileNetV2"),
        ("shufflenetv1", "ShuffleV1"),
        ("shufflenetv2", "ShuffleV2"),
    ):
        first = _build(names[0])
        for other in names[1:]:
            model = _build(other)
            assert type(model) is type(first)
            assert model.state_dict().keys() == first.state_dict().keys()


def test_the_last_layer_keeps_mdistillers_name() -> None:
    mobile = _build("mobile_half")
    assert isinstance(mobile, ClassifierNet) and mobile.classifier_attr == "classifier"
    assert isinstance(mobile.classifier, nn.Sequential) and isinstance(mobile.classifier[0], nn.Linear)
    for name in ("ShuffleV1", "ShuffleV2"):
        model = _build(name)
        assert isinstance(model, ClassifierNet) and model.classifier_attr == "linear"
        assert isinstance(model.linear, nn.Linear) and model.linear.in_features == model.feature_dim
        x = torch.randn(2, 3, 32, 32)
        model.eval()
        with torch.no_grad():
            assert torch.allclose(model(x), model.linear(model.forward_features(x)))


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_deepkds_earlier_weights_upgrade_and_load_strictly(name: str) -> None:
    old = filled_state_dict(layout(record(ZOO / "legacy" / f"{RECORDS[name]}.json")), seed=1)
    model = _build(name, **LEGACY_OPTIONS.get(name, {}))
    assert name in LEGACY_KEYS
    upgraded = upgrade_state_dict(name, old, model)
    assert upgraded.keys() == model.state_dict().keys()
    model.load_state_dict(upgraded, strict=True)
    # Every tensor moved, unchanged, to the key the map names, and no two old keys share one.
    key_map = LEGACY_KEYS[name]
    assert len({key_map(k) for k in old}) == len(old)
    current = model.state_dict()
    for key, value in old.items():
        assert torch.equal(current[key_map(key)], value), key


@pytest.mark.parametrize(
    ("name", "old", "new"),
    [
        ("mobile_half", "features.0.weight", "conv1.0.weight"),
        ("mobile_half", "features.1.running_var", "conv1.1.running_var"),
        ("mobile_half", "features.3.conv.0.weight", "blocks.0.0.conv.0.weight"),
        ("mobile_half", "features.5.conv.4.bias", "blocks.1.1.conv.4.bias"),
        ("mobile_half", "features.19.conv.7.weight", "blocks.6.0.conv.7.weight"),
        ("mobile_half", "features.20.weight", "conv2.0.weight"),
        ("mobile_half", "features.21.num_batches_tracked", "conv2.1.num_batches_tracked"),
        ("mobile_half", "classifier.bias", "classifier.0.bias"),
        ("mobile_half", "classifier.0.bias", "classifier.0.bias"),
        ("ShuffleV1", "layer2.3.conv1.weight", "layer2.3.conv1.weight"),
        ("ShuffleV1", "classifier.weight", "linear.weight"),
        ("ShuffleV2", "layer1.0.left.0.weight", "layer1.0.conv1.weight"),
        ("ShuffleV2", "layer1.0.left.3.running_mean", "layer1.0.bn2.running_mean"),
        ("ShuffleV2", "layer3.0.right.5.weight", "layer3.0.conv5.weight"),
        ("ShuffleV2", "layer2.7.branch.6.bias", "layer2.7.bn3.bias"),
        ("ShuffleV2", "conv2.weight", "conv2.weight"),
        ("ShuffleV2", "classifier.weight", "linear.weight"),
    ],
)
def test_legacy_key_examples(name: str, old: str, new: str) -> None:
    assert LEGACY_KEYS[name](old) == new


def test_earlier_shufflenetv2_weights_need_the_3x3_stem() -> None:
    # deepkd's earlier ShuffleNet V2 stem was a 3x3 conv; mdistiller's (the default now) is 1x1: a different
    # function, so those weights load only into the model built with stem_kernel=3.
    old = filled_state_dict(layout(record(ZOO / "legacy" / "ShuffleV2.json")))
    model = _build("shufflenetv2")
    with pytest.raises(RuntimeError, match=r"size mismatch for conv1\.weight"):
        model.load_state_dict(upgrade_state_dict("shufflenetv2", old, model), strict=True)
    legacy = _build("shufflenetv2", stem_kernel=3)
    assert count_parameters(legacy) == record(ZOO / "legacy" / "ShuffleV2.json")["parameters"]


@pytest.mark.parametrize("name", ["mobile_half", "ShuffleV1", "ShuffleV2"])
def test_global_pool_is_mdistillers_fixed_pool_on_32x32(name: str) -> None:
    # mdistiller pools with AvgPool2d(2, ceil_mode=True) (MobileNetV2) or avg_pool2d(4) (ShuffleNets) sized for
    # 32x32 inputs; deepkd's adaptive pool is the same mean there and also takes other sizes.
    model = _build(name)
    assert isinstance(model, ClassifierNet)
    model.eval()
    maps: list[Tensor] = []
    pool = model.avgpool
    assert isinstance(pool, nn.Module)
    handle = pool.register_forward_hook(lambda _m, inputs, _out: maps.append(inputs[0]))
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 3, 32, 32))
    handle.remove()
    (fmap,) = maps
    assert fmap.shape[-2:] == ((2, 2) if name == "mobile_half" else (4, 4))
    assert torch.allclose(feats, fmap.mean((2, 3)))
