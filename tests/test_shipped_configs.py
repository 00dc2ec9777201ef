"""Every config under baselines/configs loads, validates and describes a runnable experiment (no data needed)."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
import torch

import deepkd
from baselines import make_configs, presets
from deepkd.data import DATASETS
from deepkd.experiment import ExperimentConfig, load_experiment
from deepkd.models import MODELS, build_model

CONFIGS = Path(__file__).resolve().parents[1] / "baselines" / "configs"
ZOO = Path(__file__).resolve().parent / "data" / "zoo"
FILES = sorted(CONFIGS.rglob("*.toml"))
CIFAR_PAIRS = [f"{t}_{s}" for t, s in presets.CIFAR100_PAIRS]
IMAGENET_PAIRS = [f"{t}_{s}" for t, s in presets.IMAGENET_PAIRS]
CIFAR_TEACHERS = sorted({t for t, _ in presets.CIFAR100_PAIRS})
METHODS = ["kd", "dkd", "dot", "deepkd", "deepkd_paper", "deepkd_official"]
DKD_BASED = "deepkd_dkd_official"  # every CIFAR-100 pair, and ImageNet resnet34 -> resnet18 only
CIFAR_METHODS = [*METHODS, DKD_BASED]
IMAGENET_CASES = [(pair, m) for pair in IMAGENET_PAIRS for m in METHODS] + [("resnet34_resnet18", DKD_BASED)]
FASHION_METHODS = ["kd", "dkd", "dot", "deepkd"]
DOT_PUBLISHED = ("resnet32x4_resnet8x4", "vgg13_vgg8", "resnet32x4_shufflenetv2")  # mdistiller configs/cifar100/dot


def test_the_published_recipes_are_all_shipped():
    names = {f.relative_to(CONFIGS).as_posix() for f in FILES}
    expected = {f"cifar100/{pair}/{m}.toml" for pair in CIFAR_PAIRS for m in CIFAR_METHODS}
    expected |= {f"cifar100/teachers/{t}.toml" for t in CIFAR_TEACHERS}
    expected |= {f"imagenet/{pair}/{m}.toml" for pair, m in IMAGENET_CASES}
    expected |= {"fashion_mnist/teacher.toml"} | {f"fashion_mnist/student_{m}.toml" for m in FASHION_METHODS}
    assert expected <= names
    assert len(CIFAR_PAIRS) == 12 and "resnet110_resnet20" in CIFAR_PAIRS and "resnet50_mobilenet_v1" in IMAGENET_PAIRS
    # DeepKD's only ResNet50 DKD-based config distils a MobileNetV2 (r50_mv2/deepkd_dkd.yaml): no row is made up
    assert f"imagenet/resnet50_mobilenet_v1/{DKD_BASED}.toml" not in names


def test_the_shipped_configs_are_what_the_generator_writes():
    """baselines/configs/{cifar100,imagenet} cannot drift from baselines.presets: rerun
    ``python -m baselines.make_configs`` after changing a preset."""
    files = make_configs.render_all()
    shipped = {
        f.relative_to(CONFIGS).as_posix() for f in FILES if f.relative_to(CONFIGS).parts[0] in ("cifar100", "imagenet")
    }
    assert shipped == set(files), "run python -m baselines.make_configs"
    stale = [path for path, text in files.items() if (CONFIGS / path).read_text() != text]
    assert not stale, f"edited by hand or stale (run python -m baselines.make_configs): {stale}"
    assert make_configs.main(["--check"]) == 0


def test_every_file_names_its_sources_and_its_command():
    for path, text in make_configs.render_all().items():
        header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
        assert f"#   deepkd train baselines/configs/{path}\n" in header
        assert "Source" in header or "Not published" in header or "teachers/" in path
    unpinned = dict(make_configs.unpinned())
    # the values no published config pins down, each said so in its file's header
    assert set(unpinned) == {
        "cifar100/resnet110_resnet20/dkd.toml",
        "cifar100/resnet110_resnet20/deepkd.toml",
        "imagenet/resnet50_mobilenet_v1/deepkd_paper.toml",
        "imagenet/resnet50_mobilenet_v1/deepkd_official.toml",
    } | {f"cifar100/{p}/dot.toml" for p in CIFAR_PAIRS if p not in DOT_PUBLISHED}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_shipped_config_is_valid(path):
    config = load_experiment(path)
    assert isinstance(config, ExperimentConfig)
    config.recipe.plan()
    assert path.read_text().lstrip().startswith("#"), "say where the hyperparameters come from"
    # the data set and models exist and take the given options (checked by signature; nothing is built)
    inspect.signature(DATASETS.get(config.data.name)).bind(
        **config.data.options, **({"root": config.data.root} if config.data.root else {})
    )
    models = [config.student] + ([config.teacher] if config.teacher else [])
    for model in models:
        inspect.signature(MODELS.get(model.name)).bind(num_classes=10, **model.kwargs)
    needs_teacher = config.recipe.loss.needs_teacher
    assert (config.teacher is not None) == needs_teacher
    if needs_teacher:
        assert config.teacher.checkpoint or config.teacher.pretrained
    assert config.run_dir.startswith("runs/") and path.stem in config.run_dir


@pytest.mark.parametrize("pair", presets.CIFAR100_PAIRS, ids="_".join)
def test_cifar_deepkd_configs_carry_the_published_deltas(pair):
    tcg, ncg, w_ce = presets.CIFAR100_DEEPKD_KD[pair]
    folder = CONFIGS / "cifar100" / "_".join(pair)
    official = load_experiment(folder / "deepkd_official.toml").recipe
    assert official.momentum == deepkd.FixedOffsets(tog=0.075, tcg=tcg, ncg=ncg, reference_quirks=True)
    assert official.loss.split == "official" and official.mask == deepkd.NoMask()
    config = load_experiment(folder / "deepkd_paper.toml")
    assert config.recipe.momentum == deepkd.FixedOffsets(tog=0.075, tcg=tcg, ncg=ncg)
    assert config.recipe.loss.w_ce == w_ce == official.loss.w_ce
    lr = 0.01 if pair[1] in ("shufflenetv1", "shufflenetv2", "mobilenetv2") else 0.05
    for method in METHODS:
        train = load_experiment(folder / f"{method}.toml").train
        assert (train.epochs, train.lr, train.momentum, train.weight_decay) == (240, lr, 0.9, 5e-4)
    assert train.schedule.milestones == (150, 180, 210) and config.data.batch_size == 64


# Spot checks against mdistiller a08d46f and DeepKD afb5964, typed in from the files themselves.
PUBLISHED = {
    ("resnet56_resnet20", "deepkd_official"): {"lr": 0.05, "tcg": -0.075, "ncg": 0.025, "w_ce": 0.1},
    ("resnet110_resnet20", "deepkd_official"): {"lr": 0.05, "tcg": -0.1, "ncg": -0.05, "w_ce": 0.1},
    ("resnet32x4_resnet8x4", "deepkd_official"): {"lr": 0.05, "tcg": -0.075, "ncg": 0.075, "w_ce": 0.5},
    ("vgg13_mobilenetv2", "deepkd_official"): {"lr": 0.01, "tcg": -0.075, "ncg": 0.095, "w_ce": 0.8},
    ("resnet50_cifar_mobilenetv2", "deepkd_official"): {"lr": 0.01, "tcg": -0.1, "ncg": 0.025, "w_ce": 0.1},
    ("resnet32x4_shufflenetv1", "dkd"): {"lr": 0.01, "beta": 8.0},
    ("resnet110_resnet32", "dkd"): {"lr": 0.05, "beta": 2.0},
    ("vgg13_mobilenetv2", "dkd"): {"lr": 0.01, "beta": 6.0},
    ("resnet32x4_shufflenetv2", "dot"): {"lr": 0.01, "delta": 0.075},
}


@pytest.mark.parametrize(("pair", "method"), sorted(PUBLISHED), ids="/".join)
def test_spot_checks_against_the_published_files(pair, method):
    config = load_experiment(CONFIGS / "cifar100" / pair / f"{method}.toml")
    want = PUBLISHED[(pair, method)]
    assert config.train.lr == want["lr"]
    recipe = config.recipe
    if "tcg" in want:
        assert (recipe.momentum.tcg, recipe.momentum.ncg, recipe.loss.w_ce) == (want["tcg"], want["ncg"], want["w_ce"])
        assert recipe.loss.w_kd == (0.9 if want["w_ce"] == 0.1 else pytest.approx(1 - want["w_ce"]))
    if "beta" in want:
        assert recipe.loss.beta == want["beta"]
    if "delta" in want:
        assert recipe.momentum == deepkd.DOT(delta=want["delta"])


# DeepKD afb5964 configs/cifar100/ours/dkd/<file>, typed in from the files (DISTILLER.TYPE DKD, TRAINER deepkd,
# DEEPKD.DKD True and DELTA_TOG 0.075 in all; BETA where the file sets it, else cfg.py's CFG.DKD.BETA 8; no file sets
# DKD.ALPHA, T, WARMUP, CE_WEIGHT or DEEPKD.TOPK: 1, 4, 20, 1, 0): pair -> (file, alpha, beta, DELTA_TCG, DELTA_NCG,
# LR, EPOCHS, LR_DECAY_STAGES)
OFFICIAL_DKD_BASED = {
    "resnet56_resnet20": ("resnet56_resnet20.yaml", 1.0, 0.5, -0.075, 0.075, 0.05, 240, (150, 180, 210)),
    "resnet110_resnet32": ("resnet110_resnet32.yaml", 1.0, 3.0, -0.075, 0.0, 0.05, 240, (150, 180, 210)),
    "resnet110_resnet20": ("resnet110_resnet20.yaml", 1.0, 2.0, -0.1, 0.05, 0.05, 240, (150, 180, 210)),
    "resnet32x4_resnet8x4": ("resnet32x4_resnet8x4.yaml", 1.0, 8.0, -0.075, 0.05, 0.05, 240, (150, 180, 210)),
    "wrn_40_2_wrn_16_2": ("wrn_40_2_wrn_16_2.yaml", 1.0, 8.0, -0.1, 0.05, 0.04, 480, (180, 300, 420)),
    "wrn_40_2_wrn_40_1": ("wrn_40_2_wrn_40_1.yaml", 1.0, 4.0, -0.1, 0.05, 0.05, 240, (150, 180, 210)),
    "vgg13_vgg8": ("vgg13_vgg8.yaml", 1.0, 6.0, -0.075, 0.025, 0.05, 240, (150, 180, 210)),
    "resnet32x4_shufflenetv1": ("resnet32x4_ShuffleV1.yaml", 1.0, 8.0, -0.075, 0.085, 0.01, 240, (150, 180, 210)),
    "resnet32x4_shufflenetv2": ("resnet32x4_ShuffleV2.yaml", 1.0, 8.0, -0.075, 0.075, 0.01, 240, (150, 180, 210)),
    "wrn_40_2_shufflenetv1": ("wrn_40_2_ShuffleV1.yaml", 1.0, 8.0, -0.075, 0.085, 0.01, 240, (150, 180, 210)),
    "vgg13_mobilenetv2": ("vgg13_MobileNetV2.yaml", 1.0, 1.0, -0.075, 0.08, 0.01, 240, (150, 180, 210)),
    "resnet50_cifar_mobilenetv2": ("ResNet50_MobileNetv2.yaml", 1.0, 2.0, -0.1, 0.025, 0.01, 240, (150, 180, 210)),
}


def test_every_pair_has_its_official_dkd_based_config():
    assert set(OFFICIAL_DKD_BASED) == set(CIFAR_PAIRS)


@pytest.mark.parametrize("pair", sorted(OFFICIAL_DKD_BASED))
def test_cifar_dkd_based_deepkd_carries_the_official_values(pair):
    """deepkd_dkd_official.toml is the official DKD-based run: DKD's own split (CE 1, alpha * warm * TCKD,
    beta * warm * NCKD, T 4, warm-up 20) under the official update, with the file's deltas and solver."""
    file, alpha, beta, tcg, ncg, lr, epochs, milestones = OFFICIAL_DKD_BASED[pair]
    path = CONFIGS / "cifar100" / pair / f"{DKD_BASED}.toml"
    config = load_experiment(path)
    assert config.recipe.loss == deepkd.DKD(alpha=alpha, beta=beta, temperature=4.0, warmup=20, w_ce=1.0)
    assert config.recipe.momentum == deepkd.FixedOffsets(tog=0.075, tcg=tcg, ncg=ncg, reference_quirks=True)
    assert config.recipe.mask == deepkd.NoMask()
    assert config.recipe.plan().apply is deepkd.momentum.update_reference_quirks
    train = config.train
    assert (train.epochs, train.lr, train.momentum, train.weight_decay) == (epochs, lr, 0.9, 5e-4)
    assert train.schedule.milestones == milestones and train.schedule.gamma == 0.1 and config.data.batch_size == 64
    header = " ".join(line[2:] for line in path.read_text().splitlines() if line.startswith("# "))
    assert f"haiduo/DeepKD (commit afb5964) configs/cifar100/ours/dkd/{file}" in header


def test_imagenet_dkd_based_deepkd_carries_the_official_values():
    """DeepKD afb5964 configs/imagenet/r34_r18/deepkd_dkd.yaml: DKD CE_WEIGHT 1, ALPHA 1, BETA 1, T 1, WARMUP 1;
    DELTA_TOG 0.075, DELTA_TCG -0.075, DELTA_NCG 0.05; batch 512, 100 epochs, lr 0.2, LR_COS."""
    path = CONFIGS / "imagenet" / "resnet34_resnet18" / f"{DKD_BASED}.toml"
    config = load_experiment(path)
    assert config.recipe.loss == deepkd.DKD(alpha=1.0, beta=1.0, temperature=1.0, warmup=1, w_ce=1.0)
    assert config.recipe.momentum == deepkd.FixedOffsets(tog=0.075, tcg=-0.075, ncg=0.05, reference_quirks=True)
    assert config.recipe.mask == deepkd.NoMask()
    assert (config.train.epochs, config.train.lr, config.data.batch_size) == (100, 0.2, 512)
    assert config.train.schedule == load_experiment(path.with_name("deepkd_official.toml")).train.schedule
    assert "configs/imagenet/r34_r18/deepkd_dkd.yaml" in path.read_text()


@pytest.mark.parametrize("pair", presets.CIFAR100_PAIRS, ids="_".join)
def test_cifar_teachers_are_mdistillers_released_checkpoints(pair):
    """The teacher checkpoint is where mdistiller's cifar_teachers.tar, unpacked in the working directory, puts it."""
    released = {"resnet50_cifar": "ResNet50"}.get(pair[0], pair[0])
    for method in CIFAR_METHODS:
        teacher = load_experiment(CONFIGS / "cifar100" / "_".join(pair) / f"{method}.toml").teacher
        assert teacher.name == pair[0]
        assert teacher.checkpoint == f"download_ckpts/cifar_teachers/{released}_vanilla/ckpt_epoch_240.pth"
    teacher_run = load_experiment(CONFIGS / "cifar100" / "teachers" / f"{pair[0]}.toml")
    assert teacher_run.student.name == pair[0] and teacher_run.teacher is None and teacher_run.train.lr == 0.05


@pytest.mark.parametrize("pair", IMAGENET_PAIRS)
def test_imagenet_recipes(pair):
    load = lambda m: load_experiment(CONFIGS / "imagenet" / pair / f"{m}.toml")
    assert load("dot").recipe.momentum == deepkd.DOT(delta=0.09)
    assert load("kd").recipe.loss == deepkd.KD(temperature=1.0, w_ce=0.5, w_kd=0.5)
    assert load("kd").train.schedule.milestones == (30, 60, 90)
    assert load("dkd").recipe.loss.beta == {"resnet34_resnet18": 0.5, "resnet50_mobilenet_v1": 2.0}[pair]
    cosine = load("deepkd").train.schedule
    assert (cosine.warmup, cosine.warmup_factor) == (20, 0.1) and 0.2 * cosine.min_factor == pytest.approx(5e-5)
    assert all(load(m).data.batch_size == 512 and load(m).train.lr == 0.2 for m in METHODS)
    # the teachers are torchvision's ImageNet weights, named, never a path to download
    assert all((load(m).teacher.pretrained, load(m).teacher.checkpoint) == ("IMAGENET1K_V1", None) for m in METHODS)


def test_mobilenet_v1_has_mdistillers_imagenet_layout():
    """The ResNet50 -> MobileNetV1 student's keys and shapes are those of mdistiller's MobileNetV1, recorded from the
    reference definition in tests/data/zoo/mobilenet_v1.json, so its released weights load strictly."""
    record = json.loads((ZOO / "mobilenet_v1.json").read_text())
    model = build_model("mobilenet_v1", record["num_classes"])
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == record["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == record["parameters"]
    assert MODELS.get("MobileNetV1") is MODELS.get("mobilenet_v1")
    model.load_state_dict({k: torch.zeros(s) for k, s in record["state_dict"]}, strict=True)
    assert build_model("mobilenet_v1", 10).eval()(torch.randn(2, 3, 64, 64)).shape == (2, 10)


@pytest.mark.parametrize("method", CIFAR_METHODS)
@pytest.mark.parametrize("pair", CIFAR_PAIRS)
def test_cifar_configs_agree_with_the_python_presets(pair, method):
    """baselines/configs and baselines.presets describe the same published recipes."""
    config = load_experiment(CONFIGS / "cifar100" / pair / f"{method}.toml")
    expected = presets.cifar100(method, config.teacher.name, config.student.name)
    assert config.recipe.replace(name=None) == expected.replace(name=None)


@pytest.mark.parametrize(("pair", "method"), IMAGENET_CASES, ids="/".join)
def test_imagenet_configs_agree_with_the_python_presets(pair, method):
    config = load_experiment(CONFIGS / "imagenet" / pair / f"{method}.toml")
    expected = presets.imagenet(method, config.teacher.name, config.student.name)
    assert config.recipe.replace(name=None) == expected.replace(name=None)


def test_docs_reproduce_lists_a_command_for_every_published_row():
    """docs/reproduce.md's commands name shipped configs, and every pair's KD, DKD, DOT and official DeepKD (on the KD
    base, and on the DKD base where DeepKD publishes a config) is there."""
    text = (CONFIGS.parents[1] / "docs" / "reproduce.md").read_text()
    named = set(re.findall(r"deepkd train baselines/configs/(\S+\.toml)", text))
    assert named and all((CONFIGS / path).is_file() for path in named)
    for dataset, pairs in (("cifar100", CIFAR_PAIRS), ("imagenet", IMAGENET_PAIRS)):
        for pair in pairs:
            assert {f"{dataset}/{pair}/{m}.toml" for m in ("kd", "dkd", "dot", "deepkd_official")} <= named
    assert {f"cifar100/{pair}/{DKD_BASED}.toml" for pair in CIFAR_PAIRS} <= named
    assert f"imagenet/resnet34_resnet18/{DKD_BASED}.toml" in named
