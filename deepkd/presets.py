"""Recipes of the published methods (sources in each entry) and the per-pair DeepKD settings.

They ship with deepkd (``from deepkd import presets``), so they import wherever deepkd is installed;
``baselines.presets`` is the same module under its earlier name. In a checkout, ``python -m baselines.make_configs``
writes ``baselines/configs/{cifar100,imagenet}/**`` from these presets.

Sources:
- KD: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015; CIFAR settings from mdistiller
  (T = 4, w_ce = 0.1, w_kd = 0.9), ImageNet T = 1, 0.5 / 0.5.
- DKD: Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022 (α = 1, β = 8 unless the pair's config sets it,
  T = 4, 20 warm-up epochs on CIFAR-100; ImageNet T = 1, 1 warm-up epoch, β = 0.5 for ResNet34 → ResNet18 and 2 for
  ResNet50 → MobileNetV1).
- DOT: Zhao et al., "DOT: A Distillation-Oriented Trainer", ICCV 2023 (KD base, Δ = 0.075 CIFAR, 0.09 ImageNet).
- DeepKD: Huang et al., "DeepKD: A Deeply Decoupled and Denoised Knowledge Distillation Trainer",
  arXiv 2505.15133, and its official code (github.com/haiduo/DeepKD, commit afb5964): per-pair momentum deltas, on
  the KD base (configs/cifar100/ours/kd) and on the DKD base (configs/cifar100/ours/dkd, "DKD+Ours").
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from deepkd.compose import compose
from deepkd.losses import CE, DKD, KD
from deepkd.masks import DynamicMask
from deepkd.momentum import DOT, GSNR, FixedOffsets
from deepkd.recipe import Recipe

__all__ = [
    "CIFAR100_DEEPKD_DKD",
    "CIFAR100_DEEPKD_KD",
    "CIFAR100_DOT_DELTA",
    "CIFAR100_PAIRS",
    "DKD_BETA",
    "IMAGENET_DEEPKD_DKD",
    "IMAGENET_DKD_BETA",
    "IMAGENET_PAIRS",
    "LOW_LR_STUDENTS",
    "METHODS",
    "DeepKDOnDKD",
    "cifar100",
    "cifar100_lr",
    "imagenet",
]

Method = Literal["ce", "kd", "dkd", "dot", "deepkd", "deepkd_paper", "deepkd_official", "deepkd_dkd_official"]
METHODS: tuple[str, ...] = (
    "ce",
    "kd",
    "dkd",
    "dot",
    "deepkd",
    "deepkd_paper",
    "deepkd_official",
    "deepkd_dkd_official",
)

# The CIFAR-100 (teacher, student) pairs of the DKD, DOT and DeepKD papers, in the order of their tables (DKD's
# same-architecture pairs, DeepKD's extra resnet110 -> resnet20, then the cross-architecture pairs). ``resnet50_cifar``
# is the CIFAR ResNet50 of mdistiller's ``resnetv2.py`` (its ``ResNet50``), not torchvision's ``resnet50``.
CIFAR100_PAIRS: tuple[tuple[str, str], ...] = (
    ("resnet56", "resnet20"),
    ("resnet110", "resnet32"),
    ("resnet110", "resnet20"),
    ("resnet32x4", "resnet8x4"),
    ("wrn_40_2", "wrn_16_2"),
    ("wrn_40_2", "wrn_40_1"),
    ("vgg13", "vgg8"),
    ("resnet32x4", "shufflenetv1"),
    ("resnet32x4", "shufflenetv2"),
    ("wrn_40_2", "shufflenetv1"),
    ("vgg13", "mobilenetv2"),
    ("resnet50_cifar", "mobilenetv2"),
)

# The ImageNet pairs of the DKD and DOT papers; the teachers are torchvision's ImageNet weights.
IMAGENET_PAIRS: tuple[tuple[str, str], ...] = (("resnet34", "resnet18"), ("resnet50", "mobilenet_v1"))

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
    ("resnet50_cifar", "mobilenetv2"): (-0.1, 0.025, 0.1),
}

# The DKD baseline's β per pair (mdistiller a08d46f configs/cifar100/dkd/*.yaml); 8 (mdistiller's default) for pairs
# not listed, as for its res32x4_res8x4, res32x4_shuv1/shuv2, res50_mv2 and wrn40_2_shuv1 configs, which leave BETA
# at that default. resnet110 -> resnet20 has no DKD config anywhere (DeepKD's pair): it gets the default 8 too, an
# unpublished value.
DKD_BETA: dict[tuple[str, str], float] = {
    ("resnet32x4", "resnet8x4"): 8.0,
    ("resnet56", "resnet20"): 2.0,
    ("resnet110", "resnet32"): 2.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0,
    ("vgg13", "vgg8"): 6.0,
    ("vgg13", "mobilenetv2"): 6.0,
}


class DeepKDOnDKD(NamedTuple):
    """One official DeepKD-on-DKD ("DKD+Ours") config: the DKD loss's α, β, T and warm-up (epochs), the fixed
    momentum deltas (δ_TOG, δ_TCG, δ_NCG, added to the base momentum 0.9) and the solver's lr, epochs and step-decay
    milestones (x0.1 at each)."""

    alpha: float
    beta: float
    tcg: float
    ncg: float
    lr: float
    epochs: int = 240
    milestones: tuple[int, ...] = (150, 180, 210)
    temperature: float = 4.0
    warmup: int = 20
    tog: float = 0.075


# DeepKD on the DKD base, CIFAR-100, as the official code runs it (DeepKD afb5964 configs/cifar100/ours/dkd/<file>:
# DISTILLER.TYPE "DKD", SOLVER.TRAINER "deepkd", SOLVER.DEEPKD.DKD True, DELTA_TOG 0.075 in every file). The files set
# LR, EPOCHS, LR_DECAY_STAGES and the deltas; BETA where noted, else mdistiller/engine/cfg.py's CFG.DKD.BETA 8; none
# sets DKD.ALPHA, T, WARMUP or CE_WEIGHT (cfg.py: 1, 4, 20, 1) or SOLVER.DEEPKD.TOPK (0: no mask); all use batch 64,
# weight decay 5e-4, momentum 0.9. Per pair, (teacher, student) -> (α, β, δ_TCG, δ_NCG, lr[, epochs, milestones]),
# with the file it is read from:
CIFAR100_DEEPKD_DKD: dict[tuple[str, str], DeepKDOnDKD] = {
    ("resnet56", "resnet20"): DeepKDOnDKD(1.0, 0.5, -0.075, 0.075, 0.05),  # resnet56_resnet20.yaml, BETA 0.5
    ("resnet110", "resnet32"): DeepKDOnDKD(1.0, 3.0, -0.075, 0.0, 0.05),  # resnet110_resnet32.yaml, BETA 3
    ("resnet110", "resnet20"): DeepKDOnDKD(1.0, 2.0, -0.1, 0.05, 0.05),  # resnet110_resnet20.yaml, BETA 2
    ("resnet32x4", "resnet8x4"): DeepKDOnDKD(1.0, 8.0, -0.075, 0.05, 0.05),  # resnet32x4_resnet8x4.yaml
    # wrn_40_2_wrn_16_2.yaml: lr 0.04, 480 epochs, x0.1 at 180/300/420 (twice the other pairs' run)
    ("wrn_40_2", "wrn_16_2"): DeepKDOnDKD(1.0, 8.0, -0.1, 0.05, 0.04, 480, (180, 300, 420)),
    ("wrn_40_2", "wrn_40_1"): DeepKDOnDKD(1.0, 4.0, -0.1, 0.05, 0.05),  # wrn_40_2_wrn_40_1.yaml, BETA 4
    ("vgg13", "vgg8"): DeepKDOnDKD(1.0, 6.0, -0.075, 0.025, 0.05),  # vgg13_vgg8.yaml, BETA 6
    ("resnet32x4", "shufflenetv1"): DeepKDOnDKD(1.0, 8.0, -0.075, 0.085, 0.01),  # resnet32x4_ShuffleV1.yaml
    ("resnet32x4", "shufflenetv2"): DeepKDOnDKD(1.0, 8.0, -0.075, 0.075, 0.01),  # resnet32x4_ShuffleV2.yaml
    ("wrn_40_2", "shufflenetv1"): DeepKDOnDKD(1.0, 8.0, -0.075, 0.085, 0.01),  # wrn_40_2_ShuffleV1.yaml
    ("vgg13", "mobilenetv2"): DeepKDOnDKD(1.0, 1.0, -0.075, 0.08, 0.01),  # vgg13_MobileNetV2.yaml, BETA 1
    ("resnet50_cifar", "mobilenetv2"): DeepKDOnDKD(1.0, 2.0, -0.1, 0.025, 0.01),  # ResNet50_MobileNetv2.yaml, BETA 2
}

# DeepKD on the DKD base, ImageNet (DeepKD afb5964 configs/imagenet/r34_r18/deepkd_dkd.yaml: DKD CE_WEIGHT 1, ALPHA 1,
# BETA 1, T 1, WARMUP 1; DELTA_TOG 0.075, DELTA_TCG -0.075, DELTA_NCG 0.05; batch 512, 100 epochs, lr 0.2, LR_COS).
# Its r50_mv2/deepkd_dkd.yaml (BETA 2, DELTA_NCG 0.075) distils a MobileNetV2, not the MobileNetV1 of the
# ResNet50 pair deepkd ships, so that pair has no DKD-based DeepKD preset.
IMAGENET_DEEPKD_DKD: dict[tuple[str, str], DeepKDOnDKD] = {
    ("resnet34", "resnet18"): DeepKDOnDKD(1.0, 1.0, -0.075, 0.05, 0.2, 100, (30, 60, 90), temperature=1.0, warmup=1),
}


def _deepkd_on_dkd(settings: DeepKDOnDKD) -> Recipe:
    s = settings
    return compose(
        loss=DKD(alpha=s.alpha, beta=s.beta, temperature=s.temperature, warmup=s.warmup, w_ce=1.0),
        momentum=FixedOffsets(tog=s.tog, tcg=s.tcg, ncg=s.ncg, reference_quirks=True),
        mask="none",
        name="deepkd_dkd_official",
    )


# The DOT momentum offset Δ on CIFAR-100: mdistiller's three DOT configs (res32x4_res8x4, vgg13_vgg8, res32x4_shuv2)
# all use 0.075, its default; the other pairs have no published DOT config and use that default.
CIFAR100_DOT_DELTA = 0.075

# The DKD β on ImageNet per pair (mdistiller a08d46f configs/imagenet/r34_r18/dkd.yaml, r50_mv1/dkd.yaml).
IMAGENET_DKD_BETA: dict[tuple[str, str], float] = {("resnet34", "resnet18"): 0.5, ("resnet50", "mobilenet_v1"): 2.0}

# Students that the published recipes train with lr 0.01 instead of 0.05.
LOW_LR_STUDENTS = ("shufflenetv1", "shufflenetv2", "mobilenetv2")


def cifar100_lr(student: str) -> float:
    """The published CIFAR-100 learning rate for ``student``: 0.01 for ShuffleNet and MobileNet students, else 0.05
    (mdistiller's and DeepKD's per-pair configs)."""
    return 0.01 if student in LOW_LR_STUDENTS else 0.05


def cifar100(method: str, teacher: str = "resnet32x4", student: str = "resnet8x4") -> Recipe:
    """The CIFAR-100 recipe of ``method`` for a teacher/student pair (per-pair settings where published).

    The three DeepKD presets:

    - ``deepkd``: deepkd's default DeepKD, ``compose()``'s defaults on the pair's DKD loss (β included,
      so that it differs from ``dkd`` only in momentum and mask): GSNR momentum with the default ``stream``
      estimator (a running estimate over steps, which reads the parameters' drift as noise too) and the tanh
      allocation, and the dynamic top-K mask in its bucket form. On deepkd's CPU benchmark it does not beat DKD
      (``docs/benchmarks.md``).
    - ``deepkd_paper``: the paper's description on the KD base: the published fixed deltas (task buffer at
      μ + δ_TOG = μ + 0.075) and the dynamic top-K mask. Its authors never ran this: their code runs the task buffer
      at the TCKD coefficient and never masks. With the literal renormalised mask and deepkd 0.1.0's per-epoch K
      schedule it collapsed on a 100-class benchmark (12 % where KD reached 33 %: ``docs/bench-report-default-0.1.0
      .md``), so the preset uses the mask's bucket form, with which it trains.
    - ``deepkd_official``: the official code's behaviour, for reproducing the published numbers: its NCKD split
      (distillation weight 1), its weight-decay placement and update order, no mask.
    - ``deepkd_dkd_official``: the official code on the DKD base (the paper's "DKD+Ours" rows): DKD's loss split as
      DKD splits it (CE 1, α·warm·TCKD, β·warm·NCKD), the official update as in ``deepkd_official``, no mask, with the
      pair's official α, β and deltas (:data:`CIFAR100_DEEPKD_DKD`, which also holds the pair's lr and schedule: its
      wrn_40_2 -> wrn_16_2 run is lr 0.04 over 480 epochs). The official trainer is the same for both bases: only the
      three losses it is given differ.
    """
    pair = (teacher, student)
    kd = KD(temperature=4.0, w_ce=0.1, w_kd=0.9)
    dkd = DKD(alpha=1.0, beta=DKD_BETA.get(pair, 8.0), temperature=4.0, warmup=20, w_ce=1.0)
    if method == "ce":
        return compose(loss=CE(), momentum="sgd", mask="none", name="ce")
    if method == "kd":
        return compose(loss=kd, momentum="sgd", mask="none", name="kd")
    if method == "dkd":
        return compose(loss=dkd, momentum="sgd", mask="none", name="dkd")
    if method == "dot":
        return compose(loss=kd, momentum=DOT(delta=CIFAR100_DOT_DELTA), mask="none", name="dot")
    if method == "deepkd":
        return compose(loss=dkd, momentum="gsnr", mask="dynamic", name="deepkd")
    if method == "deepkd_dkd_official":
        if pair not in CIFAR100_DEEPKD_DKD:
            raise ValueError(f"DeepKD publishes no DKD-based config for {teacher} -> {student}")
        return _deepkd_on_dkd(CIFAR100_DEEPKD_DKD[pair])
    tcg, ncg, w_ce = CIFAR100_DEEPKD_KD.get(pair, (-0.075, 0.075, 0.1))
    w_kd = 0.9 if w_ce == 0.1 else round(1.0 - w_ce, 6)
    deep_kd = KD(temperature=4.0, w_ce=w_ce, w_kd=w_kd)
    if method == "deepkd_paper":
        return compose(
            loss=deep_kd, momentum=FixedOffsets(tog=0.075, tcg=tcg, ncg=ncg), mask="dynamic", name="deepkd_paper"
        )
    if method == "deepkd_official":
        return compose(
            loss=KD(temperature=4.0, w_ce=w_ce, w_kd=w_kd, split="official"),
            momentum=FixedOffsets(tog=0.075, tcg=tcg, ncg=ncg, reference_quirks=True),
            mask="none",
            name="deepkd_official",
        )
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


def imagenet(method: str, teacher: str = "resnet34", student: str = "resnet18") -> Recipe:
    """The ImageNet recipe of ``method`` for a pair of :data:`IMAGENET_PAIRS` (KD: T = 1, 0.5 / 0.5; DKD: the pair's
    β, T 1, warm-up 1; DOT Δ = 0.09; DeepKD Δ = 0.09 and the ImageNet mask thresholds (0.40, 0.70)); the DeepKD
    presets as in :func:`cifar100`. The fixed DeepKD deltas are the official ResNet34 → ResNet18 ones for both pairs
    (DeepKD publishes no ResNet50 → MobileNetV1 config; its ResNet50 → MobileNetV2 config uses the same deltas).
    ``deepkd_dkd_official`` exists for ResNet34 → ResNet18 only (:data:`IMAGENET_DEEPKD_DKD`: its β is 1, not the DKD
    baseline's 0.5); for ResNet50 → MobileNetV1 it raises ``ValueError``."""
    if (teacher, student) not in IMAGENET_DKD_BETA:
        pairs = ", ".join(f"{t} -> {s}" for t, s in IMAGENET_PAIRS)
        raise ValueError(f"no ImageNet recipe for {teacher} -> {student}; known pairs: {pairs}")
    kd = KD(temperature=1.0, w_ce=0.5, w_kd=0.5)
    beta = IMAGENET_DKD_BETA[(teacher, student)]
    dkd = DKD(alpha=1.0, beta=beta, temperature=1.0, warmup=1, w_ce=1.0)
    mask = DynamicMask(thresholds=(0.4, 0.7))  # type: ignore[arg-type]  # attrs types the converter's input as Iterable[_T]
    if method == "kd":
        return compose(loss=kd, momentum="sgd", mask="none", name="kd")
    if method == "dkd":
        return compose(loss=dkd, momentum="sgd", mask="none", name="dkd")
    if method == "dot":
        return compose(loss=kd, momentum=DOT(delta=0.09), mask="none", name="dot")
    if method == "deepkd":
        return compose(loss=dkd, momentum=GSNR(delta=0.09), mask=mask, name="deepkd")
    if method == "deepkd_paper":
        return compose(
            loss=kd, momentum=FixedOffsets(tog=0.075, tcg=-0.075, ncg=0.075), mask=mask, name="deepkd_paper"
        )
    if method == "deepkd_official":
        return compose(
            loss=KD(temperature=1.0, w_ce=0.5, w_kd=0.5, split="official"),
            momentum=FixedOffsets(tog=0.075, tcg=-0.075, ncg=0.075, reference_quirks=True),
            mask="none",
            name="deepkd_official",
        )
    if method == "deepkd_dkd_official":
        if (teacher, student) not in IMAGENET_DEEPKD_DKD:
            raise ValueError(
                f"DeepKD publishes no DKD-based config for ImageNet {teacher} -> {student} (its ResNet50 config, "
                "r50_mv2/deepkd_dkd.yaml, distils a MobileNetV2)"
            )
        return _deepkd_on_dkd(IMAGENET_DEEPKD_DKD[(teacher, student)])
    known = ("kd", "dkd", "dot", "deepkd", "deepkd_paper", "deepkd_official", "deepkd_dkd_official")
    raise ValueError(f"unknown ImageNet method {method!r}; known: {', '.join(known)}")
