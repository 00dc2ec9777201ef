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


@pytest.mark.parametrize("method", [m for m in presets.METHODS if m != "ce"])
@pytest.mark.parametrize("pair", presets.IMAGENET_PAIRS)
def test_imagenet_presets(method, pair):
    if method == "deepkd_dkd_official" and pair not in presets.IMAGENET_DEEPKD_DKD:
        # DeepKD's only DKD-based ResNet50 config distils a MobileNetV2, not this MobileNetV1
        with pytest.raises(ValueError, match="MobileNetV2"):
            presets.imagenet(method, *pair)
        return
    recipe = presets.imagenet(method, *pair)
    assert deepkd.Recipe.from_dict(recipe.to_dict()) == recipe
    assert recipe.name == method


def test_the_pairs_and_their_learning_rates():
    assert set(presets.CIFAR100_PAIRS) == set(presets.CIFAR100_DEEPKD_KD)
    assert set(presets.CIFAR100_DEEPKD_DKD) == set(presets.CIFAR100_PAIRS)
    assert set(presets.IMAGENET_DEEPKD_DKD) == {("resnet34", "resnet18")}
    assert presets.cifar100_lr("shufflenetv1") == presets.cifar100_lr("mobilenetv2") == 0.01
    assert presets.cifar100_lr("resnet8x4") == presets.cifar100_lr("wrn_16_2") == 0.05
    # the ResNet50 teacher of the CIFAR pairs is mdistiller's CIFAR ResNet50, not torchvision's ImageNet one
    assert ("resnet50_cifar", "mobilenetv2") in presets.CIFAR100_PAIRS
    assert presets.imagenet("dkd", "resnet50", "mobilenet_v1").loss.beta == 2.0
    assert presets.imagenet("dkd").loss.beta == 0.5
    with pytest.raises(ValueError, match="known pairs"):
        presets.imagenet("kd", "resnet50", "resnet18")


def test_published_numbers():
    r = presets.cifar100("deepkd_paper", "wrn_40_2", "wrn_16_2")
    assert r.momentum == deepkd.FixedOffsets(tog=0.075, tcg=-0.075, ncg=0.085)
    assert (r.loss.w_ce, r.loss.w_kd) == (0.6, 0.4)
    assert r.mask == deepkd.DynamicMask()  # the bucket form: the literal renormalised mask collapses
    r = presets.cifar100("deepkd_paper", "resnet32x4", "resnet8x4")
    assert (r.loss.w_ce, r.loss.w_kd) == (0.5, 0.5)
    assert presets.cifar100("deepkd_paper", "resnet56", "resnet20").loss.w_kd == 0.9
    official = presets.cifar100("deepkd_official", "wrn_40_2", "wrn_16_2")
    assert official.momentum == deepkd.FixedOffsets(tog=0.075, tcg=-0.075, ncg=0.085, reference_quirks=True)
    assert official.mask == deepkd.NoMask()
    recommended = presets.cifar100("deepkd")
    assert (recommended.momentum, recommended.mask) == (deepkd.GSNR(), deepkd.DynamicMask())
    assert presets.imagenet("deepkd").mask.thresholds == (0.4, 0.7)
    assert presets.cifar100("dot").momentum == deepkd.DOT(delta=0.075)
    assert presets.imagenet("dot").momentum == deepkd.DOT(delta=0.09)
    assert presets.cifar100("dkd", "resnet56", "resnet20").loss.beta == 2.0
    assert presets.cifar100("dkd", "wrn_40_2", "wrn_16_2").loss.beta == 6.0
    assert presets.cifar100("dkd", "wrn_40_2", "wrn_40_1").loss.beta == 6.0
    assert presets.cifar100("dkd", "vgg13", "mobilenetv2").loss.beta == 6.0
    assert presets.cifar100("dkd", "resnet32x4", "shufflenetv2").loss.beta == 8.0
    official = presets.cifar100("deepkd_official")
    assert official.plan().apply is deepkd.momentum.update_reference_quirks and official.loss.split == "official"
    with pytest.raises(ValueError, match="known"):
        presets.cifar100("dkt")


# mdistiller a08d46f configs/cifar100/dkd/*.yaml: BETA where the file sets it, else its default 8
MDISTILLER_DKD_BETA = {
    ("resnet110", "resnet32"): 2.0,
    ("resnet32x4", "resnet8x4"): 8.0,
    ("resnet32x4", "shufflenetv1"): 8.0,
    ("resnet32x4", "shufflenetv2"): 8.0,
    ("resnet50_cifar", "mobilenetv2"): 8.0,
    ("resnet56", "resnet20"): 2.0,
    ("vgg13", "mobilenetv2"): 6.0,
    ("vgg13", "vgg8"): 6.0,
    ("wrn_40_2", "shufflenetv1"): 8.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0,
}


@pytest.mark.parametrize("pair", sorted(MDISTILLER_DKD_BETA))
def test_dkd_beta_per_pair_and_deepkd_uses_it(pair):
    """DKD's β follows mdistiller's per-pair configs, and the DKD-based DeepKD preset uses the same DKD loss, so
    ``deepkd`` and ``dkd`` differ only in momentum and mask."""
    dkd = presets.cifar100("dkd", *pair)
    assert dkd.loss == deepkd.DKD(alpha=1.0, beta=MDISTILLER_DKD_BETA[pair], temperature=4.0, warmup=20, w_ce=1.0)
    assert presets.cifar100("deepkd", *pair).loss == dkd.loss


# DeepKD afb5964 configs/cifar100/ours/dkd/*.yaml, the settings that differ from most pairs, typed in from the files
def test_dkd_based_deepkd_presets_carry_the_official_values():
    for pair, s in presets.CIFAR100_DEEPKD_DKD.items():
        r = presets.cifar100("deepkd_dkd_official", *pair)
        # DKD's own split: CE 1, alpha * warm * TCKD, beta * warm * NCKD; T 4 and warm-up 20 (no file sets them)
        assert r.loss == deepkd.DKD(alpha=s.alpha, beta=s.beta, temperature=4.0, warmup=20, w_ce=1.0)
        assert r.momentum == deepkd.FixedOffsets(tog=0.075, tcg=s.tcg, ncg=s.ncg, reference_quirks=True)
        assert r.mask == deepkd.NoMask() and r.plan().apply is deepkd.momentum.update_reference_quirks
        assert s.alpha == 1.0  # only wrn_40_2_MobileNetV2.yaml (not a deepkd pair) sets ALPHA
        assert s.lr == (0.04 if pair == ("wrn_40_2", "wrn_16_2") else presets.cifar100_lr(pair[1]))
    table = presets.CIFAR100_DEEPKD_DKD
    assert table[("resnet110", "resnet32")][:4] == (1.0, 3.0, -0.075, 0.0)  # DELTA_NCG 0.0, BETA 3.0
    assert table[("vgg13", "mobilenetv2")][:4] == (1.0, 1.0, -0.075, 0.08)  # BETA 1.0
    assert table[("resnet56", "resnet20")][:4] == (1.0, 0.5, -0.075, 0.075)  # BETA 0.5
    assert table[("resnet32x4", "resnet8x4")][:4] == (1.0, 8.0, -0.075, 0.05)  # BETA not set
    wrn = table[("wrn_40_2", "wrn_16_2")]  # LR 0.04, EPOCHS 480, LR_DECAY_STAGES [180, 300, 420], BETA not set
    assert (wrn.beta, wrn.tcg, wrn.ncg, wrn.lr, wrn.epochs, wrn.milestones) == (
        8.0,
        -0.1,
        0.05,
        0.04,
        480,
        (180, 300, 420),
    )
    assert all(
        s.epochs == 240 and s.milestones == (150, 180, 210) for p, s in table.items() if p != ("wrn_40_2", "wrn_16_2")
    )
    # ImageNet r34_r18/deepkd_dkd.yaml: BETA 1 (the DKD baseline's is 0.5), T 1, WARMUP 1, DELTA_NCG 0.05
    r = presets.imagenet("deepkd_dkd_official")
    assert r.loss == deepkd.DKD(alpha=1.0, beta=1.0, temperature=1.0, warmup=1, w_ce=1.0)
    assert r.momentum == deepkd.FixedOffsets(tog=0.075, tcg=-0.075, ncg=0.05, reference_quirks=True)
    with pytest.raises(ValueError, match="no DKD-based config"):
        presets.cifar100("deepkd_dkd_official", "resnet32x4", "wrn_16_2")


def test_the_dkd_based_preset_changes_no_other_preset():
    """The KD-based official preset and the recommended DKD-based one keep their own losses and momenta."""
    official = presets.cifar100("deepkd_official", "resnet110", "resnet32")
    assert official.momentum == deepkd.FixedOffsets(tog=0.075, tcg=-0.1, ncg=0.05, reference_quirks=True)
    assert official.loss.split == "official"
    assert presets.cifar100("deepkd", "resnet110", "resnet32").loss.beta == 2.0  # mdistiller's DKD β, not DeepKD's 3


def test_imagenet_deepkd_uses_the_imagenet_dkd_loss():
    assert presets.imagenet("deepkd").loss == presets.imagenet("dkd").loss
