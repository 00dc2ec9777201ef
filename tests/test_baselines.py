"""The presets in baselines/ build valid recipes with the published numbers."""

from __future__ import annotations

import pytest

import deepkd
from baselines import presets


@pytest.mark.parametrize("method", presets.METHODS)
@pytest.mark.parametrize("pair", list(presets.CIFAR100_DEEPKD_KD))
def test_cifar100_presets_round_trip(method, pair):
    recipe = presets.cifar100(method, *pair)
    assert deepkd.Recipe.from_dict(recipe.to_dict()) == recipe
    assert recipe.name == method


@pytest.mark.parametrize("method", ["kd", "dkd", "dot", "deepkd", "deepkd_gsnr"])
def test_imagenet_presets(method):
    recipe = presets.imagenet(method)
    assert deepkd.Recipe.from_dict(recipe.to_dict()) == recipe


def test_published_numbers():
    r = presets.cifar100("deepkd", "wrn_40_2", "wrn_16_2")
    assert r.momentum == deepkd.Fixed(tog=0.075, tcg=-0.075, ncg=0.085)
    assert (r.loss.w_ce, r.loss.w_kd) == (0.6, 0.4)
    assert r.mask == deepkd.DynamicMask()
    r = presets.cifar100("deepkd", "resnet32x4", "resnet8x4")
    assert (r.loss.w_ce, r.loss.w_kd) == (0.5, 0.5)
    assert presets.cifar100("deepkd", "resnet56", "resnet20").loss.w_kd == 0.9
    assert presets.cifar100("dot").momentum == deepkd.DOT(delta=0.075)
    assert presets.imagenet("dot").momentum == deepkd.DOT(delta=0.09)
    assert presets.cifar100("dkd", "resnet56", "resnet20").loss.beta == 2.0
    assert presets.cifar100("dkd", "wrn_40_2", "wrn_16_2").loss.beta == 6.0
    official = presets.cifar100("deepkd_official")
    assert official.plan().quirks and official.loss.split == "official"
    with pytest.raises(ValueError, match="known"):
        presets.cifar100("dkt")
