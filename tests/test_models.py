"""Tests of the deepkd model zoo: parameter counts, forward shapes, registry errors and the logits adapter."""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torchvision.models import googlenet as tv_googlenet  # type: ignore[import-untyped, unused-ignore]

from deepkd.errors import ConfigError, InputError, UnknownStrategyError
from deepkd.models import (
    MODELS,
    ClassifierNet,
    LogitsOnly,
    as_logits_model,
    build_model,
    count_parameters,
    model_names,
    register_model,
)
from deepkd.models.torchvision_models import TORCHVISION_MODELS

# Parameter counts (millions, 100 classes) reported in the distillation literature (CRD, Tian et al. ICLR 2020,
# and the mdistiller / DKD model zoo); ours must agree within 3 %.
LITERATURE_M = {
    "resnet8": 0.08,
    "resnet14": 0.18,
    "resnet20": 0.28,
    "resnet32": 0.47,
    "resnet44": 0.67,
    "resnet56": 0.86,
    "resnet110": 1.74,
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "wrn_16_2": 0.70,
    "wrn_40_1": 0.57,
    "wrn_40_2": 2.26,
    "vgg8": 3.96,
    "vgg13": 9.46,
    "mobilenetv2": 0.81,
    "mobile_half": 0.81,
    "shufflenetv1": 0.95,
    "shufflenetv2": 1.36,
}

# torchvision's published counts for the ImageNet (1000-class) models.
TORCHVISION_1000 = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_small": 2_542_856,
    "shufflenet_v2_x1_0": 2_278_604,
}

SMALL_CONV = ("small_cnn", "small_resnet", "tiny_cnn")


REQUIRED = (
    *LITERATURE_M,
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v2",
    *SMALL_CONV,
    "mlp",
)


def _input_for(name: str, batch: int = 2) -> Tensor:
    """A small input batch of the size each family expects."""
    if name in TORCHVISION_MODELS:
        return torch.randn(batch, 3, 64, 64)
    if name in SMALL_CONV:
        return torch.randn(batch, 1, 28, 28)
    if name == "mlp":
        return torch.randn(batch, 1, 8, 8)
    return torch.randn(batch, 3, 32, 32)


def test_required_models_are_registered() -> None:
    missing = set(REQUIRED) - set(model_names())
    assert not missing
    assert list(model_names()) == sorted(model_names())


@pytest.mark.parametrize("name", sorted(LITERATURE_M))
def test_parameter_count_matches_literature(name: str) -> None:
    n = count_parameters(build_model(name, num_classes=100))
    # 3 %, or the +-0.005M rounding of the two-decimal figure the papers print (resnet8: 0.0839M -> "0.08M").
    assert n / 1e6 == pytest.approx(LITERATURE_M[name], rel=0.03, abs=0.005)


def test_exact_counts_of_reference_architectures() -> None:
    # Exact counts of the standard architectures (100 classes), pinned against accidental changes.
    assert count_parameters(build_model("resnet8", 100)) == 83_892
    assert count_parameters(build_model("resnet32x4", 100)) == 7_433_860
    assert count_parameters(build_model("wrn_40_2", 100)) == 2_255_156
    assert count_parameters(build_model("vgg8", 100)) == 3_965_028


@pytest.mark.parametrize("name", sorted(TORCHVISION_1000))
def test_torchvision_counts(name: str) -> None:
    assert count_parameters(build_model(name, num_classes=1000)) == TORCHVISION_1000[name]


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("small_cnn", 50_000, 150_000), ("small_resnet", 200_000, 700_000), ("tiny_cnn", 10_000, 30_000)],
)
def test_small_model_sizes(name: str, low: int, high: int) -> None:
    assert low <= count_parameters(build_model(name, num_classes=10)) <= high


def test_tiny_cnn_is_much_smaller_than_small_cnn() -> None:
    tiny = count_parameters(build_model("tiny_cnn", 10))
    assert 3 * tiny < count_parameters(build_model("small_cnn", 10))


@pytest.mark.parametrize("name", model_names())
def test_forward_train_and_eval(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=7)
    assert model.num_classes == 7
    x = _input_for(name)
    model.train()
    out = model(x)
    assert isinstance(out, Tensor) and out.shape == (2, 7)
    assert torch.isfinite(out).all()
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, Tensor) and out.shape == (2, 7)


@pytest.mark.parametrize("name", [n for n in model_names() if n not in TORCHVISION_MODELS])
def test_backward_and_features(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=5)
    assert isinstance(model, ClassifierNet)
    x = _input_for(name)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.feature_dim)
    model(x).logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", SMALL_CONV)
@settings(max_examples=8, deadline=None)
@given(h=st.integers(8, 40), w=st.integers(8, 40), channels=st.integers(1, 3))
def test_small_models_accept_any_size_from_8x8(name: str, h: int, w: int, channels: int) -> None:
    model = build_model(name, num_classes=10, in_channels=channels)
    assert model(torch.randn(2, channels, h, w)).shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_2", "vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2"])
def test_cifar_models_take_other_sizes_and_channels(name: str) -> None:
    model = build_model(name, num_classes=3, in_channels=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3)
    model = build_model(name, num_classes=3)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)


def test_mlp_for_digits_and_bad_width() -> None:
    model = build_model("mlp", num_classes=10, in_features=64, hidden=(32,))
    assert model(torch.randn(4, 64)).shape == (4, 10)
    assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    with pytest.raises(InputError, match="64 features"):
        model(torch.randn(4, 1, 28, 28))


def test_unknown_model_names_the_closest() -> None:
    with pytest.raises(UnknownStrategyError) as info:
        build_model("resnet8x5", num_classes=10)
    assert info.value.suggestion == "resnet8x4"
    assert "resnet8x4" in str(info.value) and "resnet8x5" in str(info.value)
    with pytest.raises(UnknownStrategyError, match="vgg13"):
        build_model("vgg_13", num_classes=10)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", None, True])
def test_bad_num_classes(bad: object) -> None:
    with pytest.raises(ConfigError, match="num_classes") as info:
        build_model("resnet8", num_classes=bad)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value)


def test_integer_like_num_classes_accepted() -> None:
    np = pytest.importorskip("numpy")
    model = build_model("tiny_cnn", num_classes=np.int64(4))
    value: object = model.num_classes
    assert value == 4 and type(value) is int


def test_bad_kwargs_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="in_channels"):
        build_model("resnet8", num_classes=10, in_chanels=1)
    with pytest.raises(ConfigError, match="weights"):
        build_model("resnet18", num_classes=10, weights="IMAGENET1K_V1")
    with pytest.raises(ConfigError, match="resnet18"):
        build_model("resnet18", num_classes=10, not_an_option=1)


def test_torchvision_never_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("attempted a download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    for name in TORCHVISION_MODELS:
        assert build_model(name, num_classes=3).num_classes == 3


def test_register_model_and_duplicates() -> None:
    @register_model("_test_linear")
    def builder(num_classes: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(4, num_classes))

    try:
        model = build_model("_test_linear", num_classes=2)
        assert model.num_classes == 2
        with pytest.raises(ValueError, match="already registered"):
            register_model("_test_linear")(lambda num_classes: nn.Identity())
    finally:
        MODELS.unregister("_test_linear")
    assert "_test_linear" not in model_names()


def test_count_parameters_trainable_only() -> None:
    model = build_model("tiny_cnn", num_classes=10)
    assert isinstance(model, ClassifierNet)
    total = count_parameters(model)
    for p in model.classifier.parameters():
        p.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - (32 * 10 + 10)
    assert count_parameters(model) == total


# ------------------------------------------------------------------------------------------------ adapter


class _Out(NamedTuple):
    logits: Tensor
    aux: Tensor | None


class _Pair(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(4)
        self.kind = kind
        self.num_classes = 3

    def forward(self, x: Tensor) -> object:
        logits = self.fc(self.bn(x))
        if self.kind == "tuple":
            return logits, [x]
        if self.kind == "list":
            return [x, logits]
        if self.kind == "dict":
            return OrderedDict(features=x, logits=logits)
        if self.kind == "named":
            return _Out(logits, None)
        if self.kind == "tensor":
            return logits
        return "not a tensor"


@pytest.mark.parametrize(("kind", "index"), [("tuple", 0), ("list", 1), ("list", -1), ("dict", 0), ("named", 0)])
def test_logits_only_unwraps(kind: str, index: int) -> None:
    inner = _Pair(kind)
    wrapped = LogitsOnly(inner, index=index)
    x = torch.randn(5, 4)
    out = wrapped(x)
    assert isinstance(out, Tensor) and out.shape == (5, 3)
    assert torch.equal(out, inner.fc(inner.bn(x)))
    torch.autograd.backward(out.sum())
    assert inner.fc.weight.grad is not None
    assert wrapped.num_classes == 3


def test_logits_only_custom_key_and_errors() -> None:
    x = torch.randn(5, 4)
    assert LogitsOnly(_Pair("dict"), key="features")(x).shape == (5, 4)
    with pytest.raises(InputError, match="without key 'scores'"):
        LogitsOnly(_Pair("dict"), key="scores")(x)
    with pytest.raises(InputError, match="no index 5"):
        LogitsOnly(_Pair("tuple"), index=5)(x)
    with pytest.raises(InputError, match="logits tensor, got list"):
        LogitsOnly(_Pair("tuple"), index=1)(x)
    with pytest.raises(InputError, match="logits tensor, got str"):
        LogitsOnly(_Pair("string"))(x)
    plain = _Pair("tensor")
    assert torch.equal(LogitsOnly(plain)(x), plain(x))


def test_as_logits_model() -> None:
    zoo = build_model("resnet8", num_classes=10)
    assert as_logits_model(zoo) is zoo
    tv = build_model("mobilenet_v3_small", num_classes=10)
    assert as_logits_model(tv) is tv
    wrapped = LogitsOnly(_Pair("tuple"))
    assert as_logits_model(wrapped) is wrapped

    googlenet = tv_googlenet(weights=None, num_classes=6, aux_logits=True, init_weights=True)
    adapted_net = as_logits_model(googlenet.train())
    assert isinstance(adapted_net, LogitsOnly)  # returns GoogLeNetOutputs(logits, aux2, aux1) in training
    assert adapted_net(torch.randn(2, 3, 64, 64)).shape == (2, 6)

    pair = _Pair("tuple")
    adapted = as_logits_model(pair)
    assert isinstance(adapted, LogitsOnly) and adapted.module is pair
    assert adapted(torch.randn(2, 4)).shape == (2, 3)

    plain = _Pair("tensor")
    assert plain.bn.running_mean is not None
    before = plain.bn.running_mean.clone()
    assert as_logits_model(plain, example_input=torch.randn(8, 4) + 5) is plain
    assert torch.equal(plain.bn.running_mean, before)  # probing leaves the BN statistics alone
    assert isinstance(as_logits_model(_Pair("dict"), example_input=torch.randn(2, 4)), LogitsOnly)
    with pytest.raises(InputError):
        as_logits_model(_Pair("string"), example_input=torch.randn(2, 4))
