"""Recipes of the published methods (sources in each entry) and the per-pair DeepKD settings.

Sources:
- KD: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015; CIFAR settings from mdistiller
  (T = 4, w_ce = 0.1, w_kd = 0.9), ImageNet T = 1, 0.5 / 0.5.
- DKD: Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022 (α = 1, β = 8, T = 4, 20 warm-up epochs on
  CIFAR-100; ImageNet β = 0.5, T = 1).
- DOT: Zhao et al., "DOT: A Distillation-Oriented Trainer", ICCV 2023 (KD base, Δ = 0.075 CIFAR, 0.09 ImageNet).
- DeepKD: Huang et al., "DeepKD: A Deeply Decoupled and Denoised Knowledge Distillation Trainer",
  arXiv 2505.15133, and its official code (github.com/haiduo/DeepKD, commit afb5964): per-pair momentum deltas.
"""

from __future__ import annotations

from typing import Literal

import deepkd

__all__ = ["CIFAR100_DEEPKD_DKD", "CIFAR100_DEEPKD_KD", "DKD_BETA", "METHODS", "cifar100", "imagenet"]

Method = Literal["ce", "kd", "dkd", "dot", "deepkd", "deepkd_paper", "deepkd_official"]
METHODS: tuple[str, ...] = ("ce", "kd", "dkd", "dot", "deepkd", "deepkd_paper", "deepkd_official")

# DeepKD on the KD base, CIFAR-100: (teacher, student) -> (δ_TCG, δ_NCG, w_ce); δ_TOG = +0.075 everywhere. Where the
# official config raises the CE weight above 0.1, it sets the KD weight to 1 − w_ce (e.g. resnet32x4 → resnet8x4:
# CE 0.5 / KD 0.5; wrn_40_2 → wrn_16_2: CE 0.6 / KD 0.4); elsewhere the weights are KD's 0.1 / 0.9.
CIFAR100_DEEPKD_KD: dict[tuple[str, str], tuple[float, float, float]] = {
    ("resnet32x4", "resnet8x4"): (-0.075, 0.075, 0.5),
    ("resnet56", "resnet20"): (-0.075, 0.025, 0.1),
    ("resnet110", "resnet32"): (-0.1, 0.05, 0.1),
    ("resnet110", "resnet20"): (-0.1, -0.05, 0.1),
    ("wrn_40_2", "wrn_16_2"): (-0.075, 0.085, 0.6),
    ("wrn_40_2", "wrn_40_1"): (-0.1, 0.05, 0.1),
    ("vgg13", "vgg8"): (-0.075, 0.05, 0.1),
    ("resnet32x4", "shufflenetv1"): (-0.075, 0.075, 0.1),
    ("resnet32x4", "shufflenetv2"): (-0.075, 0.075, 0.1),
    ("wrn_40_2", "shufflenetv1"): (-0.075, 0.085, 0.1),
    ("vgg13", "mobilenetv2"): (-0.075, 0.095, 0.8),
    ("resnet50", "mobilenetv2"): (-0.1, 0.025, 0.1),
}

# The DKD baseline's β per pair (mdistiller a08d46f configs/cifar100/dkd/*.yaml); 8 (mdistiller's default) for pairs
# not listed, as for its res32x4_res8x4, res32x4_shuv1/shuv2, res50_mv2 and wrn40_2_shuv1 configs.
DKD_BETA: dict[tuple[str, str], float] = {
    ("resnet32x4", "resnet8x4"): 8.0,
    ("resnet56", "resnet20"): 2.0,
    ("resnet110", "resnet32"): 2.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0,
    ("vgg13", "vgg8"): 6.0,
    ("vgg13", "mobilenetv2"): 6.0,
}

# DeepKD on the DKD base, CIFAR-100: (teacher, student) -> (β, δ_TCG, δ_NCG).
CIFAR100_DEEPKD_DKD: dict[tuple[str, str], tuple[float, float, float]] = {
    ("resnet32x4", "resnet8x4"): (8.0, -0.075, 0.05),
    ("resnet56", "resnet20"): (0.5, -0.075, 0.075),
    ("vgg13", "vgg8"): (6.0, -0.075, 0.025),
    ("wrn_40_2", "wrn_40_1"): (4.0, -0.1, 0.05),
}

# Students that the published recipes train with lr 0.01 instead of 0.05.
LOW_LR_STUDENTS = ("shufflenetv1", "shufflenetv2", "mobilenetv2")


def cifar100(method: str, teacher: str = "resnet32x4", student: str = "resnet8x4") -> deepkd.Recipe:
    """The CIFAR-100 recipe of ``method`` for a teacher/student pair (per-pair settings where published).

    The three DeepKD presets:

    - ``deepkd``: deepkd's recommended DeepKD, ``deepkd.compose()``'s defaults on the pair's DKD loss (β included,
      so that it differs from ``dkd`` only in momentum and mask): GSNR momentum measured at fixed parameters with
      the tanh allocation, and the dynamic top-K mask in its bucket form (``docs/benchmarks.md`` has the evidence).
    - ``deepkd_paper``: the paper's description on the KD base: the published fixed deltas (task buffer at
      μ + δ_TOG = μ + 0.075) and the dynamic top-K mask. Its authors never ran this: their code runs the task buffer
      at the TCKD coefficient and never masks. With the literal renormalised mask it collapsed on 100 classes
      (12 % where KD reached 33 %), so the preset uses the mask's bucket form, with which it trains.
    - ``deepkd_official``: the official code's behaviour, for reproducing the published numbers: its NCKD split
      (distillation weight 1), its weight-decay placement and update order, no mask.
    """
    pair = (teacher, student)
    kd = deepkd.KD(temperature=4.0, w_ce=0.1, w_kd=0.9)
    dkd = deepkd.DKD(alpha=1.0, beta=DKD_BETA.get(pair, 8.0), temperature=4.0, warmup=20, w_ce=1.0)
    if method == "ce":
        return deepkd.compose(loss=deepkd.CE(), momentum="sgd", mask="none", name="ce")
    if method == "kd":
        return deepkd.compose(loss=kd, momentum="sgd", mask="none", name="kd")
    if method == "dkd":
        return deepkd.compose(loss=dkd, momentum="sgd", mask="none", name="dkd")
    if method == "dot":
        return deepkd.compose(loss=kd, momentum=deepkd.DOT(delta=0.075), mask="none", name="dot")
    if method == "deepkd":
        return deepkd.compose(loss=dkd, momentum="gsnr", mask="dynamic", name="deepkd")
    tcg, ncg, w_ce = CIFAR100_DEEPKD_KD.get(pair, (-0.075, 0.075, 0.1))
    w_kd = 0.9 if w_ce == 0.1 else round(1.0 - w_ce, 6)
    deep_kd = deepkd.KD(temperature=4.0, w_ce=w_ce, w_kd=w_kd)
    if method == "deepkd_paper":
        return deepkd.compose(
            loss=deep_kd, momentum=deepkd.FixedOffsets(tog=0.075, tcg=tcg, ncg=ncg), mask="dynamic", name="deepkd_paper"
        )
    if method == "deepkd_official":
        return deepkd.compose(
            loss=deepkd.KD(temperature=4.0, w_ce=w_ce, w_kd=w_kd, split="official"),
            momentum=deepkd.FixedOffsets(tog=0.075, tcg=tcg, ncg=ncg, reference_quirks=True),
            mask="none",
            name="deepkd_official",
        )
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


def imagenet(method: str) -> deepkd.Recipe:
    """The ImageNet ResNet34 → ResNet18 recipe of ``method`` (KD: T = 1, 0.5 / 0.5; DKD β 0.5, T 1; DOT Δ = 0.09;
    DeepKD Δ = 0.09 and the ImageNet mask thresholds (0.40, 0.70)); the DeepKD presets as in :func:`cifar100`."""
    kd = deepkd.KD(temperature=1.0, w_ce=0.5, w_kd=0.5)
    dkd = deepkd.DKD(alpha=1.0, beta=0.5, temperature=1.0, warmup=1, w_ce=1.0)
    mask = deepkd.DynamicMask(thresholds=(0.4, 0.7))
    if method == "kd":
        return deepkd.compose(loss=kd, momentum="sgd", mask="none", name="kd")
    if method == "dkd":
        return deepkd.compose(loss=dkd, momentum="sgd", mask="none", name="dkd")
    if method == "dot":
        return deepkd.compose(loss=kd, momentum=deepkd.DOT(delta=0.09), mask="none", name="dot")
    if method == "deepkd":
        return deepkd.compose(loss=dkd, momentum=deepkd.GSNR(delta=0.09), mask=mask, name="deepkd")
    if method == "deepkd_paper":
        return deepkd.compose(
            loss=kd, momentum=deepkd.FixedOffsets(tog=0.075, tcg=-0.075, ncg=0.075), mask=mask, name="deepkd_paper"
        )
    if method == "deepkd_official":
        return deepkd.compose(
            loss=deepkd.KD(temperature=1.0, w_ce=0.5, w_kd=0.5, split="official"),
            momentum=deepkd.FixedOffsets(tog=0.075, tcg=-0.075, ncg=0.075, reference_quirks=True),
            mask="none",
            name="deepkd_official",
        )
    known = ("kd", "dkd", "dot", "deepkd", "deepkd_paper", "deepkd_official")
    raise ValueError(f"unknown ImageNet method {method!r}; known: {', '.join(known)}")
