"""Every config under baselines/configs loads, validates and describes a runnable experiment (no data needed)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import deepkd
from deepkd.data import DATASETS
from deepkd.experiment import ExperimentConfig, load_experiment
from deepkd.models import MODELS

CONFIGS = Path(__file__).resolve().parents[1] / "baselines" / "configs"
FILES = sorted(CONFIGS.rglob("*.toml"))
CIFAR_PAIRS = ["resnet32x4_resnet8x4", "resnet56_resnet20", "wrn_40_2_wrn_16_2", "vgg13_vgg8"]
METHODS = ["kd", "dkd", "dot", "deepkd", "deepkd_paper", "deepkd_official"]
FASHION_METHODS = ["kd", "dkd", "dot", "deepkd"]


def test_the_published_recipes_are_all_shipped():
    names = {f.relative_to(CONFIGS).as_posix() for f in FILES}
    expected = {f"cifar100/{pair}/{m}.toml" for pair in CIFAR_PAIRS for m in METHODS}
    expected |= {f"imagenet/resnet34_resnet18/{m}.toml" for m in METHODS}
    expected |= {"fashion_mnist/teacher.toml"} | {f"fashion_mnist/student_{m}.toml" for m in FASHION_METHODS}
    assert expected <= names


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
        assert config.teacher.checkpoint
    assert config.run_dir.startswith("runs/") and path.stem in config.run_dir


@pytest.mark.parametrize(
    ("pair", "w_ce", "tcg", "ncg"),
    [
        ("resnet32x4_resnet8x4", 0.5, -0.075, 0.075),
        ("resnet56_resnet20", 0.1, -0.075, 0.025),
        ("wrn_40_2_wrn_16_2", 0.6, -0.075, 0.085),
        ("vgg13_vgg8", 0.1, -0.075, 0.05),
    ],
)
def test_cifar_deepkd_configs_carry_the_published_deltas(pair, w_ce, tcg, ncg):
    official = load_experiment(CONFIGS / "cifar100" / pair / "deepkd_official.toml").recipe
    assert official.momentum == deepkd.FixedOffsets(tog=0.075, tcg=tcg, ncg=ncg, reference_quirks=True)
    assert official.loss.split == "official" and official.mask == deepkd.NoMask()
    config = load_experiment(CONFIGS / "cifar100" / pair / "deepkd_paper.toml")
    assert config.recipe.momentum == deepkd.FixedOffsets(tog=0.075, tcg=tcg, ncg=ncg)
    assert config.recipe.loss.w_ce == w_ce == official.loss.w_ce
    train = config.train
    assert (train.epochs, train.lr, train.momentum, train.weight_decay) == (240, 0.05, 0.9, 5e-4)
    assert train.schedule.milestones == (150, 180, 210) and config.data.batch_size == 64


def test_imagenet_recipes():
    load = lambda m: load_experiment(CONFIGS / "imagenet" / "resnet34_resnet18" / f"{m}.toml")
    assert load("dot").recipe.momentum == deepkd.DOT(delta=0.09)
    assert load("kd").recipe.loss == deepkd.KD(temperature=1.0, w_ce=0.5, w_kd=0.5)
    assert load("kd").train.schedule.milestones == (30, 60, 90)
    cosine = load("deepkd").train.schedule
    assert (cosine.warmup, cosine.warmup_factor) == (20, 0.1) and 0.2 * cosine.min_factor == pytest.approx(5e-5)
    assert all(load(m).data.batch_size == 512 and load(m).train.lr == 0.2 for m in METHODS)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pair", CIFAR_PAIRS)
def test_cifar_configs_agree_with_the_python_presets(pair, method):
    """baselines/configs and baselines.presets describe the same published recipes."""
    from baselines import presets

    config = load_experiment(CONFIGS / "cifar100" / pair / f"{method}.toml")
    expected = presets.cifar100(method, config.teacher.name, config.student.name)
    assert config.recipe.replace(name=None) == expected.replace(name=None)


@pytest.mark.parametrize("method", METHODS)
def test_imagenet_configs_agree_with_the_python_presets(method):
    from baselines import presets

    config = load_experiment(CONFIGS / "imagenet" / "resnet34_resnet18" / f"{method}.toml")
    assert config.recipe.replace(name=None) == presets.imagenet(method).replace(name=None)
