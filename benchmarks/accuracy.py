"""Accuracy benchmark: distil a much smaller student with every method, over seeds, on real data.

Per data set, a teacher is trained once and cached by the content hash of everything that determines it (data set,
sizes, model, training settings, seed, library versions); later runs reuse it. Then each method distils the same
student architecture from it, over several seeds (a seed sets the student's initial weights and the data order).
The teacher's logits are computed once per sample (the data are not augmented).

Methods (``recipes()``; ``METHODS`` for the smoke/default/full profiles): CE only (no teacher), KD, DKD, DOT, DeepKD
as the paper describes it (KD base, the official fixed deltas, the dynamic mask), DeepKD with GSNR momentum and the
dynamic mask on the DKD base, DeepKD as the official code behaves (no mask), and the ablations that show each axis
alone: GSNR momentum without masking, the dynamic mask with plain SGD momentum, and static masks keeping 10/20/30 %
of the classes (K = 10, 20, 30 on the 100-class pairs set). Hyperparameters are the published CIFAR-100 ones, with
two length adjustments that apply to every method alike: DKD's warm-up lasts the same share of the run as 20 of
240 epochs (:func:`dkd_warmup`; whole epochs, so runs under 18 epochs get none), and GSNR coefficients are
re-estimated four times per epoch.

The ``long`` profile (``LONG_METHODS`` + ``LONG_CANDIDATES``) runs long enough for DeepKD's phases and momenta to
matter: 24 epochs with CIFAR's step schedule shape (x0.1 at 62.5/75/87.5 % of the run, :func:`step_schedule`), a
validation split carved from the training data (:func:`prepare`), and deepkd's default recipe
(``deepkd.compose()``, run-length adjusted) with each of its three axes switched off alone and with candidate
changes of single settings. Choices of a default are made on validation accuracy only (the "defaults chosen on
validation" table); test accuracy is what is reported.

Reported per method: mean ± std over seeds of the best and final test top-1 (and the final validation top-1 when
there is a validation split), and differences from KD and from DKD paired by seed (mean ± standard error).

Run: ``python -m benchmarks.accuracy --profile smoke`` (or via ``nox -s bench``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, NamedTuple

import attrs
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

import deepkd
from deepkd.callbacks import Callback
from deepkd.data import IndexedDataset, get_dataset
from deepkd.errors import DataError, DeepKDError, NonFiniteLossError
from deepkd.models import build_model, count_parameters
from deepkd.schedules import Cosine, Step
from deepkd.trainer import TrainConfig, Trainer, evaluate

BATCH = 128
LR = 0.1
VAL_SEED = 3  # the validation split's seed: one fixed split for every method and every run seed

# the methods of the smoke/default/full profiles (``methods: None`` runs all of these)
METHODS = (
    "ce",
    "kd",
    "dkd",
    "dot",
    "deepkd_fixed",
    "deepkd_gsnr",
    "deepkd_official",
    "gsnr_nomask",
    "dynamic_sgd",
    "static_10",
    "static_20",
    "static_30",
)

# the long profile: the published methods, deepkd's default recipe, and the default with each axis switched off alone
ABLATIONS = ("default_no_gsnr", "default_no_mask", "default_kd_loss")
LONG_METHODS = ("ce", "kd", "dkd", "dot", "deepkd_fixed", "deepkd_official", "deepkd_default", *ABLATIONS)

# Candidate defaults, run by the long profile and compared with ``deepkd_default`` on VALIDATION accuracy only.
# Each is the default recipe (``deepkd.compose()`` with the run-length adjustments) with ONE setting changed:
# ``name: (axis, change)``, where ``axis`` is "loss", "momentum" or "mask" and ``change`` is either a dict of field
# values for ``attrs.evolve`` of that axis's strategy (``{"easy": 0.2}``) or a whole strategy (a registered name, a
# config or a dict, as ``deepkd.compose`` takes them). To add a candidate, add one line here. A candidate this deepkd
# cannot build (a field it lacks) or that equals the default is left out and named in the report (and
# tests/test_benchmarks.py fails). The long profile is sized for these 6; each further one adds ~2.4 minutes.
CANDIDATES: dict[str, tuple[str, Any]] = {
    "cand_mask_easy_0.2": ("mask", {"easy": 0.2}),  # the dynamic mask starting from K = 20 % of the classes
    "cand_gsnr_delta_0.05": ("momentum", {"delta": 0.05}),  # GSNR offsets within ±0.05 instead of ±0.075
    "cand_mask_renormalize": ("mask", {"form": "renormalize"}),  # masked classes dropped, not pooled in one bin
    "cand_mask_kmax_0.3": ("mask", {"hard": 0.3}),  # K grows to 30 % of the classes at most, not to C - 1
    "cand_gsnr_split": ("momentum", {"estimator": "split"}),  # GSNR at fixed parameters, from split batches
    "cand_gsnr_minmax": ("momentum", {"allocation": "minmax"}),  # ±Δ for the extremes instead of Δ·tanh
}
LONG_CANDIDATES: tuple[str, ...] = tuple(CANDIDATES)

# what each method is, for the report (candidates are described by their change from the default)
LABELS: dict[str, str] = {
    "ce": "cross-entropy only, no teacher",
    "kd": "KD (T = 4, CE 0.1 / KD 0.9), SGD",
    "dkd": "DKD (α = 1, β = 8, T = 4), SGD",
    "dot": "KD with DOT momentum (Δ = 0.075)",
    "deepkd_fixed": "DeepKD paper-intent: KD base, fixed deltas (+.075, −.075, +.075), dynamic mask",
    "deepkd_gsnr": "DKD base, GSNR momentum, dynamic mask",
    "deepkd_official": "DeepKD as the official code behaves: its NCKD split, weight-decay placement, no mask",
    "gsnr_nomask": "DKD base, GSNR momentum, no mask",
    "dynamic_sgd": "DKD base, plain momentum, dynamic mask",
    "static_10": "DKD base, plain momentum, static mask of 10 % of the classes",
    "static_20": "DKD base, plain momentum, static mask of 20 % of the classes",
    "static_30": "DKD base, plain momentum, static mask of 30 % of the classes",
    "deepkd_default": "DeepKD default: `deepkd.compose()` (run-length adjusted)",
    "default_no_gsnr": "the default with plain momentum (`momentum = sgd`)",
    "default_no_mask": "the default without a mask (`mask = none`)",
    "default_kd_loss": "the default with the KD loss (T = 4, CE 0.1 / KD 0.9) instead of DKD",
}

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "datasets": {"digits": {"train": None, "test": None}},
        "seeds": 1,
        "epochs": 5,
        "teacher_epochs": 6,
        "methods": ["ce", "kd", "dkd", "dot", "deepkd_fixed", "deepkd_gsnr", "deepkd_official"],
    },
    "default": {
        "datasets": {
            "fashion_mnist": {"train": 20000, "test": 5000},
            "fashion_mnist_pairs": {"train": 20000, "test": 5000},
        },
        "seeds": 3,
        "epochs": 3,
        "teacher_epochs": 3,
        "methods": None,
    },
    "full": {
        "datasets": {
            "fashion_mnist": {"train": None, "test": None},
            "fashion_mnist_pairs": {"train": 30000, "test": None},
            "digits": {"train": None, "test": None},
        },
        "seeds": 5,
        "epochs": 10,
        "teacher_epochs": 10,
        "methods": None,
    },
    # At most 45 minutes for the whole `nox -s bench -- --profile long` on a 2-core CPU, sized for 16 methods (the 10
    # of LONG_METHODS and 6 candidates). Measured on a 2-core Xeon (`--seeds 1` of this profile at 3,500 images:
    # 2,975 training, 525 validation, 2,000 test), seconds a 24-epoch run on one thread, fashion_mnist / pairs: ce,
    # kd, dkd, default_no_gsnr 16-17 / 32-36; dot, deepkd_fixed 21-22 / 45-46; deepkd_official 27 / 54;
    # deepkd_default, default_no_mask, default_kd_loss and the candidates 28-31 / 57-61. Sum: 857 s a seed for 12
    # methods, + 86 s a seed for each further candidate; teachers, data and logits 174 s. At 4,000 images (3,400
    # training) runs cost ~11.5 % more: 3 seeds of 16 methods in 2 workers ~2,030 s, + setup ~180 s, speed ~50 s,
    # report ~20 s: ~38 min (12 methods: ~28 min). Each further candidate adds ~2.4 min.
    "long": {
        "datasets": {
            # "train" is drawn from the training split; val_share of it validates, the rest trains the students;
            # the teacher trains on "teacher_train" images of the same draw, none of them a validation image
            "fashion_mnist": {"train": 4000, "test": 2000, "teacher_train": 20000},
            "fashion_mnist_pairs": {"train": 4000, "test": 2000, "teacher_train": 20000},
        },
        "seeds": 3,
        "epochs": 24,
        "teacher_epochs": 3,
        "schedule": "step",  # CIFAR's 240-epoch step schedule, scaled: x0.1 after epochs 15, 18 and 21 of 24
        "val_share": 0.15,
        "workers": 2,  # two processes of one torch thread each: ~1.2x the throughput of one process of two threads
        "cache_timing": False,  # the teacher-logit cache's speed-up is measured by the default profile
        "methods": [*LONG_METHODS, *LONG_CANDIDATES],
    },
}

# teacher and student per data set: the student is 5-20x smaller than the teacher
MODELS: dict[str, dict[str, Any]] = {
    "digits": {"teacher": ("mlp", {"hidden": (256, 256)}), "student": ("mlp", {"hidden": (16,)})},
    "fashion_mnist": {"teacher": ("small_cnn", {}), "student": ("tiny_cnn", {"width": 8})},
    "fashion_mnist_pairs": {"teacher": ("small_cnn", {}), "student": ("tiny_cnn", {"width": 8})},
}


# ---------------------------------------------------------------------------------------------- run-length scaling
def dkd_warmup(epochs: int) -> int:
    """DKD's warm-up in whole epochs: the share of the run that 20 of CIFAR's 240 epochs are, at least 1.

    DKD weights its KD parts by ``warm(e) = min(e / warmup, 1)``, epochs counted from 1, so ``warmup = 1`` is no
    warm-up at all: that is what runs under 18 epochs get (the smoke/default/full profiles). The long profile's
    24 epochs give 2 epochs: 0.5 in epoch 1, 1 from epoch 2 (CIFAR: 20 epochs, 0.05 in epoch 1).
    """
    return max(1, round(epochs * 20 / 240))


def gsnr_interval(steps_per_epoch: int) -> int:
    """GSNR re-estimation interval: four estimates per epoch."""
    return max(1, steps_per_epoch // 4)


def step_schedule(epochs: int) -> Step:
    """CIFAR's step schedule (x0.1 after epochs 150, 180 and 210 of 240) scaled to ``epochs``: milestones at 62.5,
    75 and 87.5 % of the run, rounded to whole epochs (24 epochs: 15, 18, 21)."""
    milestones = sorted({min(max(1, round(epochs * m / 240)), epochs) for m in (150, 180, 210)})
    return Step(milestones=tuple(milestones), gamma=0.1)


def schedule_for(profile: Mapping[str, Any]) -> Any:
    """The students' learning-rate schedule: ``"cosine"`` (to zero, no warm-up; the default) or ``"step"``."""
    kind = profile.get("schedule", "cosine")
    if kind == "step":
        return step_schedule(profile["epochs"])
    if kind == "cosine":
        return Cosine(warmup=0.0, min_factor=0.0)
    raise ValueError(f"unknown schedule {kind!r} (cosine or step)")


def _has_field(strategy: object, name: str) -> bool:
    return attrs.has(type(strategy)) and any(f.name == name and f.init for f in attrs.fields(type(strategy)))


def run_length(recipe: deepkd.Recipe, epochs: int, steps_per_epoch: int) -> deepkd.Recipe:
    """``recipe`` with the run-length adjustments every method here gets: a loss with a ``warmup`` (DKD) warms up
    for :func:`dkd_warmup` epochs, a momentum with an ``interval`` (GSNR) re-estimates four times per epoch."""
    changes: dict[str, Any] = {}
    if _has_field(recipe.loss, "warmup"):
        changes["loss"] = attrs.evolve(recipe.loss, warmup=dkd_warmup(epochs))
    if _has_field(recipe.momentum, "interval"):
        changes["momentum"] = attrs.evolve(recipe.momentum, interval=gsnr_interval(steps_per_epoch))
    return recipe.replace(**changes) if changes else recipe


def candidate(default: deepkd.Recipe, name: str, epochs: int, steps_per_epoch: int) -> deepkd.Recipe:
    """``CANDIDATES[name]`` built from the (run-length adjusted) default recipe: one setting changed."""
    axis, change = CANDIDATES[name]
    if axis not in ("loss", "momentum", "mask"):
        raise ValueError(f"candidate {name!r}: axis must be loss, momentum or mask, got {axis!r}")
    if isinstance(change, Mapping) and "name" not in change:
        return default.replace(**{axis: attrs.evolve(getattr(default, axis), **change)}, name=name)
    return run_length(default.replace(**{axis: change}, name=name), epochs, steps_per_epoch)


def _same(a: deepkd.Recipe, b: deepkd.Recipe) -> bool:
    return _plain(a) == _plain(b)


def _plain(recipe: deepkd.Recipe) -> dict[str, Any]:
    return {k: v for k, v in recipe.to_dict().items() if k != "name"}


def recipes(
    classes: int, epochs: int, steps_per_epoch: int, skipped: dict[str, str] | None = None
) -> dict[str, deepkd.Recipe]:
    """Every method's recipe for a run of ``epochs`` epochs of ``steps_per_epoch`` steps.

    A candidate that this version of deepkd cannot build (a field it lacks), or that equals the default, is left
    out; ``skipped`` (when given) receives why.
    """
    kd = deepkd.KD(temperature=4.0, w_ce=0.1, w_kd=0.9)
    dkd = deepkd.DKD(alpha=1.0, beta=8.0, temperature=4.0, warmup=dkd_warmup(epochs), w_ce=1.0)
    gsnr = deepkd.GSNR(interval=gsnr_interval(steps_per_epoch))
    # deepkd's default recipe, whatever the library's defaults are, with the same run-length adjustments
    default = run_length(deepkd.compose(name="deepkd_default"), epochs, steps_per_epoch)

    def static(share: float) -> deepkd.StaticMask:
        return deepkd.StaticMask(k=max(1, round(share * classes)))

    book = {
        "ce": deepkd.compose(loss="ce", momentum="sgd", mask="none", name="ce"),
        "kd": deepkd.compose(loss=kd, momentum="sgd", mask="none", name="kd"),
        "dkd": deepkd.compose(loss=dkd, momentum="sgd", mask="none", name="dkd"),
        "dot": deepkd.compose(loss=kd, momentum=deepkd.DOT(delta=0.075), mask="none", name="dot"),
        # DeepKD paper-intent
        "deepkd_fixed": deepkd.compose(
            loss=kd, momentum=deepkd.FixedOffsets(), mask=deepkd.DynamicMask(), name="deepkd_fixed"
        ),
        "deepkd_gsnr": deepkd.compose(loss=dkd, momentum=gsnr, mask=deepkd.DynamicMask(), name="deepkd_gsnr"),
        "deepkd_official": deepkd.compose(
            loss=deepkd.KD(temperature=4.0, w_ce=0.1, w_kd=0.9, split="official"),
            momentum=deepkd.FixedOffsets(reference_quirks=True),
            mask="none",
            name="deepkd_official",
        ),
        "gsnr_nomask": deepkd.compose(loss=dkd, momentum=gsnr, mask="none", name="gsnr_nomask"),
        "dynamic_sgd": deepkd.compose(loss=dkd, momentum="sgd", mask=deepkd.DynamicMask(), name="dynamic_sgd"),
        "static_10": deepkd.compose(loss=dkd, momentum="sgd", mask=static(0.1), name="static_10"),
        "static_20": deepkd.compose(loss=dkd, momentum="sgd", mask=static(0.2), name="static_20"),
        "static_30": deepkd.compose(loss=dkd, momentum="sgd", mask=static(0.3), name="static_30"),
        "deepkd_default": default,
        "default_no_gsnr": default.replace(momentum="sgd", name="default_no_gsnr"),
        "default_no_mask": default.replace(mask="none", name="default_no_mask"),
        "default_kd_loss": default.replace(loss=kd, name="default_kd_loss"),
    }
    for name in CANDIDATES:
        try:
            recipe = candidate(default, name, epochs, steps_per_epoch)
        except (TypeError, ValueError, AttributeError, LookupError, DeepKDError) as exc:
            if skipped is not None:
                skipped[name] = f"cannot be built with this deepkd: {exc}"
            continue
        if _same(recipe, default):
            if skipped is not None:
                skipped[name] = "equals the default recipe"
            continue
        book[name] = recipe
    return book


def describe_change(default: Mapping[str, Any], other: Mapping[str, Any]) -> str:
    """What differs between two recipes' plain data (:meth:`deepkd.Recipe.to_dict`), e.g. ``mask.easy: 0.1 → 0.2``."""
    changes = []
    for axis in ("loss", "momentum", "mask"):
        a, b = default.get(axis, {}), other.get(axis, {})
        if a.get("name") != b.get("name"):
            changes.append(f"{axis}: {a.get('name')} → {b.get('name')}")
            continue
        for key in dict.fromkeys([*a, *b]):
            if a.get(key) != b.get(key):
                changes.append(f"{axis}.{key}: {a.get(key)} → {b.get(key)}")
    return "; ".join(changes) or "none"


# ---------------------------------------------------------------------------------------------------- data
def _tensors(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return data.tensors if isinstance(data, TensorDataset) else (data.inputs, data.targets)


def _indices(total: int, n: int | None, seed: int) -> torch.Tensor:
    """The sorted indices of a seeded draw of ``n`` of ``total`` samples (all when ``n`` is None or too large). Draws
    of different ``n`` with one seed are nested: the first ``n`` of one permutation."""
    if n is None or n >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def _subset(data: Any, n: int | None, seed: int) -> TensorDataset:
    x, y = _tensors(data)
    idx = _indices(len(y), n, seed)
    return TensorDataset(x[idx].contiguous(), y[idx].contiguous())


def load(name: str, sizes: dict[str, int | None]) -> tuple[TensorDataset, TensorDataset, int]:
    train, test, info = get_dataset(name)
    return _subset(train, sizes["train"], 1), _subset(test, sizes["test"], 2), int(info["num_classes"])


class Split(NamedTuple):
    """A data set's parts for one profile: the students' training part, validation (or None), test, and the
    teacher's training set."""

    train: TensorDataset
    val: TensorDataset | None
    test: TensorDataset
    teacher_train: TensorDataset
    classes: int


def prepare(name: str, sizes: Mapping[str, int | None], val_share: float = 0.0) -> Split:
    """Load a data set and cut it for a profile.

    ``sizes["train"]`` images are drawn from the training split (seeded); ``val_share`` of them, stratified
    (:func:`validation_indices`), validate and the rest train the students. The teacher trains on the students'
    part, or on ``sizes["teacher_train"]`` images of the same draw (a superset) when given; either way without the
    validation images, and for the pairs set without any pair sharing a source image with a validation pair. The
    test set is ``sizes["test"]`` images of the test split. Without a validation split this is :func:`load`.
    """
    raw_train, raw_test, info = get_dataset(name)
    x, y = _tensors(raw_train)
    idx = _indices(len(y), sizes["train"], 1)
    if val_share:
        local_train, local_val = validation_indices(y[idx], val_share)
        train_idx, val_idx = idx[local_train], idx[local_val]
    else:
        train_idx, val_idx = idx, idx[:0]
    teacher_idx = train_idx if sizes.get("teacher_train") is None else _indices(len(y), sizes["teacher_train"], 1)
    keep = ~torch.isin(teacher_idx, val_idx)
    sources = getattr(raw_train, "source_indices", None)
    if sources is not None and len(val_idx):
        keep &= ~torch.isin(sources[teacher_idx], sources[val_idx].flatten()).any(dim=1)
    teacher_idx = teacher_idx[keep]

    def part(index: torch.Tensor) -> TensorDataset:
        return TensorDataset(x[index].contiguous(), y[index].contiguous())

    return Split(
        part(train_idx),
        part(val_idx) if val_share else None,
        _subset(raw_test, sizes["test"], 2),
        part(teacher_idx),
        int(info["num_classes"]),
    )


def validation_indices(labels: torch.Tensor, share: float, seed: int = VAL_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, validation)`` that split a labelled set: in each class, ``round(share · n_c)`` samples,
    drawn by a generator seeded with ``seed``, validate (stratified: the class mix of both parts is the set's). Both
    index tensors are sorted, disjoint and together cover every sample; the split depends only on the labels,
    ``share`` and ``seed``."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the validation share must be in [0, 1), got {share}")
    gen = torch.Generator().manual_seed(seed)
    held = torch.zeros(len(labels), dtype=torch.bool)
    for c in torch.unique(labels).tolist():
        members = (labels == c).nonzero().flatten()
        take = round(share * len(members))
        if take:
            held[members[torch.randperm(len(members), generator=gen)[:take]]] = True
    return (~held).nonzero().flatten(), held.nonzero().flatten()


def split_validation(
    data: TensorDataset, share: float, seed: int = VAL_SEED
) -> tuple[TensorDataset, TensorDataset | None]:
    """``(rest, validation)``: a stratified, seeded ``share`` of ``data`` carved out to validate on (see
    :func:`validation_indices`); ``(data, None)`` when ``share`` is 0."""
    if share == 0:
        return data, None
    x, y = data.tensors
    train_idx, val_idx = validation_indices(y, share, seed)
    return TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[val_idx], y[val_idx])


def _model(dataset: str, role: str, classes: int, example: torch.Tensor) -> torch.nn.Module:
    name, kwargs = MODELS[dataset][role]
    kwargs = dict(kwargs)
    if name == "mlp":
        kwargs["in_features"] = int(example[0].numel())
    else:
        kwargs["in_channels"] = int(example.shape[1])
    return build_model(name, classes, **kwargs)


def _loaders(train: TensorDataset, test: TensorDataset, indexed: bool) -> tuple[DataLoader, DataLoader]:
    train_set: Any = IndexedDataset(train) if indexed else train
    gen = torch.Generator()
    return (
        DataLoader(train_set, batch_size=BATCH, shuffle=True, generator=gen),
        DataLoader(test, batch_size=512),
    )


def _config(epochs: int, cache: bool, schedule: Any = None) -> TrainConfig:
    return TrainConfig(
        epochs=epochs,
        lr=LR,
        momentum=0.9,
        weight_decay=5e-4,
        schedule=schedule if schedule is not None else Cosine(warmup=0.0, min_factor=0.0),
        cache_teacher=cache,
        progress=False,
        device="cpu",
        track_gsnr=False,
    )


def teacher_for(dataset: str, profile: dict[str, Any], cache_dir: Path, data: tuple[Any, Any, int]) -> torch.nn.Module:
    """Train the data set's teacher, or load it from the cache (keyed by a hash of everything that determines it).

    ``data`` is ``(the teacher's training set, test, classes)``; that set never holds a validation image
    (:func:`prepare`).
    """
    train, test, classes = data
    epochs = profile["teacher_epochs"]
    sizes = profile["datasets"][dataset]
    key_data = {
        "dataset": dataset,
        "sizes": sizes,
        "model": MODELS[dataset]["teacher"],
        "epochs": epochs,
        "lr": LR,
        "batch": BATCH,
        "seed": 0,
        "deepkd": deepkd.__version__,
        "torch": torch.__version__.split("+")[0],
        "data": hashlib.sha256(train.tensors[0][:256].numpy().tobytes()).hexdigest()[:16],
    }
    if profile.get("val_share"):  # only when set, so the other profiles' cached teachers keep their keys
        key_data["val_share"] = profile["val_share"]
        key_data["train_size"] = len(train)
        key_data["checksum"] = hashlib.sha256(train.tensors[1].numpy().tobytes()).hexdigest()[:16]
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = cache_dir / f"teacher-{dataset}-{key}.pt"
    teacher = _model(dataset, "teacher", classes, train.tensors[0][:1])
    if path.exists():
        try:
            teacher.load_state_dict(torch.load(path, weights_only=True))
            print(f"[accuracy] {dataset}: teacher from cache {path}", file=sys.stderr, flush=True)
            return teacher.eval()
        except Exception as exc:  # a corrupt cache entry is retrained, never used
            print(f"[accuracy] ignoring unreadable cached teacher {path}: {exc}", file=sys.stderr)
    print(f"[accuracy] {dataset}: training the teacher ({epochs} epochs)", file=sys.stderr, flush=True)
    torch.manual_seed(0)
    teacher = _model(dataset, "teacher", classes, train.tensors[0][:1])
    train_loader, test_loader = _loaders(train, test, indexed=False)
    recipe = deepkd.compose(loss="ce", momentum="sgd", mask="none")
    history = Trainer(teacher, None, recipe, _config(epochs, cache=False), seed=0).fit(train_loader, test_loader)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(teacher.state_dict(), tmp)
    os.replace(tmp, path)
    (path.with_suffix(".json")).write_text(json.dumps({"key": key_data, "test_top1": history.final_top1}, indent=2))
    return teacher.eval()


# ---------------------------------------------------------------------------------------------------- one run
class Trace(Callback):
    """Records the optimizer's read-outs every few steps: momenta, GSNR, K, phase and learning rate."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.rows: list[dict[str, Any]] = []

    def on_step_end(self, trainer: Trainer, out: deepkd.StepOutput) -> None:
        if trainer.global_step % self.every == 0:
            row = {"step": trainer.global_step, "epoch": trainer.epoch, "k": out.k, "phase": out.phase}
            row["lr"] = getattr(trainer, "last_lr", None)
            row.update({f"m_{k}": v for k, v in out.momenta.items()})
            row.update({f"gsnr_{k}": v for k, v in (out.gsnr or {}).items()})
            self.rows.append(row)


class Validate(Callback):
    """Evaluates the student on the validation split after every epoch (``val_top1``/``val_loss`` in its record).

    Evaluation runs in eval mode under ``no_grad`` and draws no random numbers, so it leaves training unchanged."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        res = trainer.evaluate(self.loader)
        metrics["val_top1"], metrics["val_loss"] = res["test_top1"], res["test_loss"]


def run_method(
    dataset: str,
    method: str,
    recipe: deepkd.Recipe,
    seed: int,
    teacher: torch.nn.Module | None,
    data: Any,
    epochs: int,
    teacher_logits: torch.Tensor | None = None,
    *,
    val: TensorDataset | None = None,
    schedule: Any = None,
) -> dict[str, Any]:
    """Distil one student with ``recipe``; test top-1 after every epoch, and validation top-1 when ``val`` is given.

    ``data`` is ``(train, test, classes)``; the seed sets the student's initial weights and the data order."""
    train, test, classes = data
    torch.manual_seed(1000 + seed)
    student = _model(dataset, "student", classes, train.tensors[0][:1])
    needs_teacher = recipe.loss.needs_teacher
    train_loader, test_loader = _loaders(train, test, indexed=needs_teacher)
    # about 20 read-outs an epoch, and at most about 200 a run
    trace = Trace(every=max(1, len(train_loader) // 20, math.ceil(len(train_loader) * epochs / 200)))
    callbacks: list[Callback] = [trace]
    if val is not None:
        callbacks.append(Validate(DataLoader(val, batch_size=512)))
    start, cpu = time.perf_counter(), time.process_time()
    trainer = Trainer(
        student,
        teacher if needs_teacher else None,
        recipe,
        _config(epochs, cache=needs_teacher, schedule=schedule),
        seed=seed,
        callbacks=callbacks,
        teacher_logits=teacher_logits if needs_teacher else None,
    )
    history = trainer.fit(train_loader, test_loader)
    result = {
        "dataset": dataset,
        "method": method,
        "seed": seed,
        "recipe": recipe.to_dict(),
        "student_params": count_parameters(student),
        "best_top1": history.best_top1,
        "final_top1": history.final_top1,
        "test_top1": history["test_top1"],
        "train_top1": history["train_top1"],
        "epoch_time": history["time"],
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "threads": torch.get_num_threads(),
        "trace": trace.rows,
    }
    if val is not None:
        curve = history["val_top1"]
        best = max(range(len(curve)), key=lambda i: (curve[i], -i))  # the first epoch reaching the best
        result.update(
            val_top1=curve,
            best_val_top1=curve[best],
            final_val_top1=curve[-1],
            best_val_epoch=best + 1,
            test_at_best_val=result["test_top1"][best],
        )
    return result


def cache_speedup(dataset: str, data: Any, teacher: torch.nn.Module, teacher_logits: torch.Tensor) -> dict[str, float]:
    """Seconds for one KD epoch with the teacher-logit cache and without it (teacher forward every step), and for
    the one-time pass that fills the cache; the same student, data and seed."""
    train, test, classes = data
    recipe = recipes(classes, 1, 1)["kd"]
    out: dict[str, float] = {}
    for label, cache in (("cached", True), ("teacher_forward", False)):
        torch.manual_seed(1000)
        student = _model(dataset, "student", classes, train.tensors[0][:1])
        loader, _ = _loaders(train, test, indexed=cache)
        trainer = Trainer(
            student, teacher, recipe, _config(1, cache=cache), teacher_logits=teacher_logits if cache else None
        )
        start = time.perf_counter()
        trainer.fit(loader)
        out[label] = time.perf_counter() - start
    start = time.perf_counter()
    probe = Trainer(_model(dataset, "student", classes, train.tensors[0][:1]), teacher, recipe, _config(1, cache=True))
    probe.compute_teacher_logits(_loaders(train, test, indexed=True)[0])
    out["cache_pass"] = time.perf_counter() - start
    return out


# ------------------------------------------------------------------------------------- runs in worker processes
# Each worker is a fresh (spawned) process with its own torch threads; a data set's tensors, teacher weights and
# teacher logits travel once per worker as NumPy arrays (pickled through the pipe, no shared memory needed).
_WORKER: dict[str, Any] = {}


def _pack(dataset: str, data: Any, val: TensorDataset | None, teacher: torch.nn.Module, logits: torch.Tensor) -> Any:
    train, test, classes = data

    def arrays(ds: TensorDataset | None) -> Any:
        return None if ds is None else tuple(t.numpy() for t in ds.tensors)

    return {
        "dataset": dataset,
        "train": arrays(train),
        "test": arrays(test),
        "val": arrays(val),
        "classes": classes,
        "teacher": {k: v.detach().numpy() for k, v in teacher.state_dict().items()},
        "logits": logits.numpy(),
    }


def _unpack(p: Mapping[str, Any]) -> dict[str, Any]:
    def ds(arrays: Any) -> TensorDataset | None:
        return None if arrays is None else TensorDataset(*(torch.from_numpy(np.array(a)) for a in arrays))

    train, test = ds(p["train"]), ds(p["test"])
    assert train is not None and test is not None
    teacher = _model(p["dataset"], "teacher", p["classes"], train.tensors[0][:1])
    teacher.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in p["teacher"].items()})
    return {
        "data": (train, test, p["classes"]),
        "val": ds(p["val"]),
        "teacher": teacher.eval(),
        "logits": torch.from_numpy(np.array(p["logits"])),
    }


def _worker_init(threads: int, payloads: dict[str, Any]) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(payloads=payloads, ready={})


def _worker_run(job: tuple[str, str, deepkd.Recipe, int, int, Any]) -> dict[str, Any]:
    dataset, method, recipe, seed, epochs, schedule = job
    ready = _WORKER["ready"]
    if dataset not in ready:
        ready[dataset] = _unpack(_WORKER["payloads"][dataset])
    d = ready[dataset]
    return _guarded(dataset, method, recipe, seed, d["teacher"], d["data"], epochs, d["logits"], d["val"], schedule)


def _guarded(
    dataset: str,
    method: str,
    recipe: deepkd.Recipe,
    seed: int,
    teacher: torch.nn.Module | None,
    data: Any,
    epochs: int,
    logits: torch.Tensor | None,
    val: TensorDataset | None,
    schedule: Any,
) -> dict[str, Any]:
    """:func:`run_method`, with a diverged run (a non-finite loss) recorded as failed instead of ending the benchmark;
    any other error is a bug and propagates."""
    try:
        return run_method(dataset, method, recipe, seed, teacher, data, epochs, logits, val=val, schedule=schedule)
    except NonFiniteLossError as exc:
        return {"dataset": dataset, "method": method, "seed": seed, "recipe": recipe.to_dict(), "error": repr(exc)}


def execute(
    jobs: list[tuple[str, str, deepkd.Recipe, int, int, Any]],
    contexts: Mapping[str, Mapping[str, Any]],
    workers: int,
    threads: int,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Run every job ``(dataset, method, recipe, seed, epochs, schedule)``; results in job order.

    ``workers <= 1``: one after the other in this process. Otherwise in ``workers`` spawned processes of
    ``threads`` torch threads each. A run's result depends only on its job and the thread count, not on which
    worker runs it or when (each run seeds the student's weights and the data order itself)."""
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    start = time.perf_counter()

    def report(i: int, res: dict[str, Any], done: int) -> None:
        elapsed = time.perf_counter() - start
        eta = elapsed / done * (len(jobs) - done)
        what = (
            f"FAILED {res['error']}"
            if "error" in res
            else f"best {res['best_top1']:.4f} final {res['final_top1']:.4f}"
            + (f" val {res['final_val_top1']:.4f}" if "final_val_top1" in res else "")
            + f" ({res['seconds']:.1f} s)"
        )
        log(
            f"[accuracy] {done}/{len(jobs)} {res['dataset']} {res['method']} seed {res['seed']}: {what}; "
            f"{elapsed / 60:.1f} min elapsed, ~{eta / 60:.1f} min left"
        )

    if workers <= 1:
        for i, (dataset, method, recipe, seed, epochs, schedule) in enumerate(jobs):
            c = contexts[dataset]
            res = _guarded(
                dataset, method, recipe, seed, c["teacher"], c["data"], epochs, c["logits"], c["val"], schedule
            )
            results[i] = res
            report(i, res, i + 1)
        return [r for r in results if r is not None]
    payloads = {name: _pack(name, c["data"], c["val"], c["teacher"], c["logits"]) for name, c in contexts.items()}
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(threads, payloads),
    )

    def cost(i: int) -> float:  # the longest runs go first, so that no long run is left alone at the end
        dataset, _, recipe, _, epochs, _ = jobs[i]
        x = contexts[dataset]["data"][0].tensors[0]
        return float(x.numel() * epochs * (1 + len(recipe.plan().groups)))

    try:
        futures = {pool.submit(_worker_run, jobs[i]): i for i in sorted(range(len(jobs)), key=cost, reverse=True)}
        for done, future in enumerate(as_completed(futures), 1):
            i = futures[future]
            results[i] = future.result()
            report(i, results[i], done)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # a failed run ends the benchmark without the queued ones
        raise
    pool.shutdown()
    return [r for r in results if r is not None]


# ---------------------------------------------------------------------------------------------------- statistics
def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[float, float, int]:
    """``a − b`` paired by seed over the seeds both have: (mean, standard error of the mean, number of pairs).

    The standard error is the sample std of the differences over √n (NaN for one pair; everything NaN for none)."""
    diffs = [a[s] - b[s] for s in a if s in b]
    if not diffs:
        return math.nan, math.nan, 0
    mean, std = _mean_std(diffs)
    return mean, std / math.sqrt(len(diffs)), len(diffs)


def summarise(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per data set and method: mean ± std of best/final test top-1 (and validation top-1 when measured), paired
    differences (mean ± s.e.) from KD (best and final test top-1), from DKD (final test top-1), and from
    ``deepkd_default`` (final validation top-1). Failed runs are counted but left out of every figure."""
    out: dict[str, list[dict[str, Any]]] = {}
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        rows = []
        by_method: dict[str, dict[int, dict[str, Any]]] = {}
        failed: dict[str, int] = {}
        for r in runs:
            if r["dataset"] == dataset:
                if "error" in r:
                    failed[r["method"]] = failed.get(r["method"], 0) + 1
                    by_method.setdefault(r["method"], {})
                else:
                    by_method.setdefault(r["method"], {})[r["seed"]] = r

        def metric(method: str, key: str, runs_of: Mapping[str, Mapping[int, Any]] = by_method) -> dict[int, float]:
            """Seed -> ``key`` of ``method``'s runs."""
            return {s: r[key] for s, r in runs_of.get(method, {}).items() if r.get(key) is not None}

        for method, seeds in by_method.items():
            best, final = metric(method, "best_top1"), metric(method, "final_top1")
            val_final, val_best = metric(method, "final_val_top1"), metric(method, "best_val_top1")
            kd_diff = paired_difference(best, metric("kd", "best_top1"))
            times = [t for r in seeds.values() for t in r.get("epoch_time", [])]
            rows.append(
                {
                    "method": method,
                    "runs": len(seeds),
                    "failed": failed.get(method, 0),
                    "recipe": next((r.get("recipe") for r in seeds.values()), None),
                    "best": _mean_std(list(best.values())),
                    "final": _mean_std(list(final.values())),
                    "val_final": _mean_std(list(val_final.values())),
                    "val_best": _mean_std(list(val_best.values())),
                    "test_at_best_val": _mean_std(list(metric(method, "test_at_best_val").values())),
                    "vs_kd": kd_diff[:2],
                    "final_vs_kd": paired_difference(final, metric("kd", "final_top1"))[:2],
                    "final_vs_dkd": paired_difference(final, metric("dkd", "final_top1"))[:2],
                    "val_vs_default": paired_difference(val_final, metric("deepkd_default", "final_val_top1"))[:2],
                    "epoch_seconds": statistics.fmean(times) if times else math.nan,
                }
            )
        out[dataset] = rows
    return out


# ---------------------------------------------------------------------------------------------------- report
def _pm(pair: tuple[float, float] | list[float], scale: float = 100.0, sign: bool = False) -> str:
    mean, spread = pair
    if mean is None or math.isnan(mean):
        return "–"
    text = f"{mean * scale:+.2f}" if sign else f"{mean * scale:.2f}"
    return text if spread is None or math.isnan(spread) else f"{text} ± {spread * scale:.2f}"


def _has_val(rows: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(r["val_final"][0]) for r in rows)


def _dataset_heading(dataset: str, info: Mapping[str, Any]) -> str:
    val = f" / {info['val']} validation" if info.get("val") else ""
    if info.get("teacher_train") and info.get("teacher_train") != info.get("train"):
        val += f" (the teacher: {info['teacher_train']} training images, none of them validation images)"
    text = (
        f"### {dataset}: {info.get('teacher')} teacher ({info.get('teacher_top1', math.nan):.2%} test "
        f"top-1) → {info.get('student')} student, {info.get('epochs')} epochs, "
        f"{info.get('train')} train{val} / {info.get('test')} test images"
    )
    extras = []
    if info.get("schedule"):
        extras.append(f"learning rate: {info['schedule']}")
    if info.get("dkd_warmup") is not None:
        w = info["dkd_warmup"]
        extras.append(
            "DKD warm-up: none (1 epoch: full weight from epoch 1)"
            if w <= 1
            else f"DKD warm-up: {w} epochs (weight {1 / w:.2f} in epoch 1)"
        )
    return text + ("\n\n" + "; ".join(extras) + "." if extras else "")


def markdown(summary: dict[str, list[dict[str, Any]]], meta: dict[str, Any]) -> str:
    lines = []
    validated = any(_has_val(rows) for rows in summary.values())
    for dataset, rows in summary.items():
        info = meta["datasets"].get(dataset, {})
        lines.append(_dataset_heading(dataset, info))
        lines.append("")
        if _has_val(rows):
            lines.append(
                "| method | runs | best test top-1 (%) | final test top-1 (%) | final val top-1 (%) | "
                "final test − KD (pp) | final test − DKD (pp) | s / epoch |"
            )
            lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for r in rows:
                lines.append(
                    f"| {r['method']} | {_runs(r)} | {_pm(r['best'])} | {_pm(r['final'])} | {_pm(r['val_final'])} | "
                    f"{_pm(r['final_vs_kd'], sign=True) if r['method'] != 'kd' else '0'} | "
                    f"{_pm(r['final_vs_dkd'], sign=True) if r['method'] != 'dkd' else '0'} | "
                    f"{r['epoch_seconds']:.1f} |"
                )
        else:
            lines.append("| method | runs | best top-1 (%) | final top-1 (%) | best − KD (pp) | s / epoch |")
            lines.append("| --- | ---: | ---: | ---: | ---: | ---: |")
            for r in rows:
                lines.append(
                    f"| {r['method']} | {_runs(r)} | {_pm(r['best'])} | {_pm(r['final'])} | "
                    f"{_pm(r['vs_kd'], sign=True) if r['method'] != 'kd' else '0'} | {r['epoch_seconds']:.1f} |"
                )
        lines.append("")
    if validated:
        lines.append(
            "Columns: *best test* is the test top-1 of each run's best epoch on test (an oracle choice of epoch, "
            "as published 'best' figures are); *final test* is the test top-1 after the last epoch; *final val* is "
            "the top-1 after the last epoch on the validation split, carved from the training data (the only "
            "figure any choice is made on). Mean ± std over seeds; *final test − KD* and *final test − DKD* are "
            "differences of the final test top-1 paired by seed, mean ± standard error."
        )
        selection = selection_table(summary)
        if selection:
            lines += ["", selection]
    else:
        lines.append("Mean ± std over seeds; best − KD is paired by seed, mean ± standard error.")
    if meta.get("workers", 1) > 1:
        lines.append(
            f"\nRuns in {meta['workers']} worker processes of {meta.get('threads_per_run')} torch thread(s) each "
            f"({meta.get('runs_seconds', math.nan) / 60:.1f} min for the runs, "
            f"{meta.get('setup_seconds', math.nan) / 60:.1f} min for data, teachers and their logits)."
        )
    if meta.get("labels"):
        lines += ["", "Methods:", ""]
        lines += [f"- `{m}`: {text}" for m, text in meta["labels"].items()]
    for dataset, info in meta["datasets"].items():
        t = info.get("kd_epoch_seconds")
        if t:
            lines.append(
                f"\nTeacher-logit cache, {dataset}: one KD epoch takes {t['cached']:.2f} s with cached logits and "
                f"{t['teacher_forward']:.2f} s with a teacher forward per step "
                f"({t['teacher_forward'] / t['cached']:.2f}x); "
                f"filling the cache once takes {t['cache_pass']:.2f} s."
            )
    for name, why in meta.get("skipped_candidates", {}).items():
        lines.append(f"\nCandidate `{name}` not run: {why}.")
    return "\n".join(lines)


def _runs(row: Mapping[str, Any]) -> str:
    return f"{row['runs']}" + (f" ({row['failed']} failed)" if row.get("failed") else "")


def selection_table(summary: dict[str, list[dict[str, Any]]]) -> str:
    """The default against each alternative (its ablations and the candidates) on final VALIDATION top-1 only."""
    datasets = [d for d, rows in summary.items() if any(r["method"] == "deepkd_default" for r in rows)]
    if not datasets:
        return ""
    rows = {d: {r["method"]: r for r in summary[d]} for d in datasets}
    alternatives = [m for m in (*ABLATIONS, *CANDIDATES) if any(m in rows[d] for d in datasets)]
    if not alternatives:
        return ""
    default_recipe = next(rows[d]["deepkd_default"]["recipe"] for d in datasets)
    head = "| alternative to `deepkd_default` | changed setting |"
    rule = "| --- | --- |"
    for d in datasets:
        head += f" {d}: val (%) | {d}: Δ val (pp) |"
        rule += " ---: | ---: |"
    head += " mean Δ val (pp) |"
    rule += " ---: |"
    lines = [
        "### Defaults chosen on validation",
        "",
        "Each row is deepkd's default recipe with one setting changed (the ablations switch one axis off). The choice "
        "between a row and the default is made on the final **validation** top-1 only: *val* is its mean ± std over "
        "seeds, *Δ val* the row minus the default, paired by seed (mean ± s.e.). No test figure enters this "
        "table; the rows' test figures are in the tables above, for the record only.",
        "",
        head,
        rule,
    ]
    first = "| `deepkd_default` (the default) | — |"
    for d in datasets:
        first += f" {_pm(rows[d]['deepkd_default']['val_final'])} | 0 |"
    lines.append(first + " 0 |")
    for m in alternatives:
        recipe = next((rows[d][m]["recipe"] for d in datasets if m in rows[d]), None)
        change = describe_change(default_recipe, recipe) if recipe and default_recipe else "?"
        line = f"| `{m}` | {change} |"
        deltas = []
        for d in datasets:
            r = rows[d].get(m)
            if r is None:
                line += " – | – |"
                continue
            line += f" {_pm(r['val_final'])} | {_pm(r['val_vs_default'], sign=True)} |"
            if not math.isnan(r["val_vs_default"][0]):
                deltas.append(r["val_vs_default"][0])
        line += f" {_pm((statistics.fmean(deltas), math.nan), sign=True) if deltas else '–'} |"
        lines.append(line)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- plots
GSNR_FLOOR = 1e-6  # GSNR read-outs below this (a signal estimate at or under zero) are drawn at it
# the DeepKD rows whose K, momenta and GSNR are plotted over training
DYNAMICS = ("deepkd_default", "deepkd_gsnr", "deepkd_fixed", "deepkd_official", *CANDIDATES)


def plots(runs: list[dict[str, Any]], out: Path) -> list[Path]:
    """Test (and validation) accuracy per epoch, GSNR and momentum coefficients over training, K and phase over
    training, and K, momenta and GSNR of every DeepKD row side by side (``dynamics.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in runs if "error" not in r]
    datasets = list(dict.fromkeys(r["dataset"] for r in runs))
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    def grid(title: str) -> tuple[Any, Any]:
        fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.5), squeeze=False)
        fig.suptitle(title)
        return fig, axes[0]

    def by(dataset: str, method: str) -> list[dict[str, Any]]:
        return sorted((r for r in runs if r["dataset"] == dataset and r["method"] == method), key=lambda r: r["seed"])

    def first(dataset: str, *methods: str) -> str:
        return next((m for m in methods if by(dataset, m)), methods[0])

    def curves_plot(key: str, title: str, ylabel: str, filename: str) -> None:
        fig, axes = grid(title)
        for ax, dataset in zip(axes, datasets):
            for method in dict.fromkeys(r["method"] for r in runs if r["dataset"] == dataset):
                curves = [r[key] for r in by(dataset, method) if r.get(key)]
                if not curves:
                    continue
                mean = [100 * statistics.fmean(c[i] for c in curves) for i in range(min(map(len, curves)))]
                style = (
                    "-"
                    if method in ("kd", "dkd", "dot", "deepkd_fixed", "deepkd_gsnr", "deepkd_default", "ce")
                    else "--"
                )
                ax.plot(range(1, len(mean) + 1), mean, style, marker="o", ms=3, label=method)
            ax.set(title=dataset, xlabel="epoch", ylabel=ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
        paths.append(_save(fig, out / filename))

    curves_plot("test_top1", "Test top-1 per epoch (mean over seeds)", "test top-1 (%)", "accuracy.png")
    if any(r.get("val_top1") for r in runs):
        curves_plot(
            "val_top1", "Validation top-1 per epoch (mean over seeds)", "validation top-1 (%)", "validation.png"
        )

    def trace_plot(prefix: str, title: str, ylabel: str, log: bool, filename: str) -> None:
        fig, axes = grid(title)
        for ax, dataset in zip(axes, datasets):
            method = first(dataset, "deepkd_gsnr", "deepkd_default")
            runs_m = by(dataset, method)
            if runs_m and runs_m[0]["trace"]:
                rows = runs_m[0]["trace"]
                keys = [k for k in rows[0] if k.startswith(prefix)]
                for key in keys:
                    pts = [(r["step"], r[key]) for r in rows if key in r and _finite(r[key])]
                    if pts:
                        ax.plot(*zip(*pts), label=key[len(prefix) :])
                if log:
                    ax.set_yscale("log")
            ax.set(title=f"{dataset} ({method}, seed {runs_m[0]['seed'] if runs_m else 0})", xlabel="step")
            ax.set(ylabel=ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        paths.append(_save(fig, out / filename))

    trace_plot("gsnr_", "GSNR per gradient component", "GSNR", True, "gsnr.png")
    trace_plot("m_", "Momentum coefficient per component", "momentum", False, "momentum.png")

    fig, axes = grid("Dynamic mask: K and phase over training")
    for ax, dataset in zip(axes, datasets):
        main = first(dataset, "deepkd_gsnr", "deepkd_default")
        for method in (main, first(dataset, "dynamic_sgd", "default_no_gsnr")):
            runs_m = by(dataset, method)
            if runs_m:
                rows = runs_m[0]["trace"]
                ax.step([r["step"] for r in rows], [r["k"] for r in rows], where="post", label=f"K ({method})")
        ax2 = ax.twinx()
        runs_m = by(dataset, main)
        if runs_m:
            phases = {"easy": 0, "transition": 1, "hard": 2, "none": -1}
            rows = runs_m[0]["trace"]
            ax2.step(
                [r["step"] for r in rows], [phases.get(r["phase"], -1) for r in rows], "k:", where="post", alpha=0.6
            )
            ax2.set_yticks([0, 1, 2], ["easy", "transition", "hard"])
            ax2.set_ylim(-0.3, 2.3)
        ax.set(title=dataset, xlabel="step", ylabel="K (kept non-target classes)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="center right")
    paths.append(_save(fig, out / "mask.png"))

    dyn = dynamics_plot(runs, datasets, out / "dynamics.png", plt)
    if dyn is not None:
        paths.append(dyn)
    plt.close("all")
    return paths


def dynamics_plot(runs: list[dict[str, Any]], datasets: list[str], path: Path, plt: Any) -> Path | None:
    """K, the momentum coefficient of each part and the GSNR of each gradient group over training steps, for every
    DeepKD row (``DYNAMICS``: default, paper-intent, official code, candidates), seed 0 (the lowest seed run);
    one column per data set; dotted vertical lines where the learning rate drops."""
    from matplotlib.lines import Line2D

    present = [m for m in DYNAMICS if any(r["method"] == m and r.get("trace") for r in runs)]
    if not present:
        return None
    fig, axes = plt.subplots(3, len(datasets), figsize=(7.5 * len(datasets), 12), squeeze=False, sharex="col")
    fig.suptitle("DeepKD rows over training (lowest seed): K, momentum per part, GSNR per group")
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(present)}
    styles = ["-", "--", ":", "-."]
    for col, dataset in enumerate(datasets):
        ax_k, ax_m, ax_g = axes[0][col], axes[1][col], axes[2][col]
        parts: dict[str, str] = {}
        drops: list[int] = []
        for method in present:
            runs_m = sorted(
                (r for r in runs if r["dataset"] == dataset and r["method"] == method), key=lambda r: r["seed"]
            )
            if not runs_m or not runs_m[0]["trace"]:
                continue
            rows, c = runs_m[0]["trace"], colors[method]
            steps = [r["step"] for r in rows]
            ax_k.step(steps, [r["k"] for r in rows], where="post", color=c, label=method)
            for prefix, ax, log in (("m_", ax_m, False), ("gsnr_", ax_g, True)):
                for key in dict.fromkeys(k for r in rows for k in r if k.startswith(prefix)):
                    name = key[len(prefix) :]
                    style = parts.setdefault(name, styles[len(parts) % len(styles)])
                    pts = [(r["step"], max(r[key], GSNR_FLOOR) if log else r[key]) for r in rows if _finite(r.get(key))]
                    if pts:
                        ax.plot(*zip(*pts), style, color=c, lw=1.2)
            if not drops:
                lrs = [(r["step"], r.get("lr")) for r in rows if _finite(r.get("lr"))]
                drops = [s for (s, lr), (_, prev) in zip(lrs[1:], lrs) if lr < prev * 0.5]
        for ax in (ax_k, ax_m, ax_g):
            for s in drops:
                ax.axvline(s, color="grey", ls=":", lw=1)
            ax.grid(alpha=0.3)
        ax_k.set(title=dataset, ylabel="K (kept non-target classes)")
        ax_k.legend(fontsize=7)
        ax_m.set(ylabel="momentum coefficient")
        ax_g.set(ylabel=f"GSNR (below {GSNR_FLOOR:g} drawn at {GSNR_FLOOR:g})", xlabel="step")
        if any(line.get_xydata().size for line in ax_g.get_lines()):
            ax_g.set_yscale("log")
        handles = [Line2D([], [], color="k", ls=s, label=p) for p, s in parts.items()]
        if handles:
            ax_m.legend(handles=handles, fontsize=7, title="part / group (colour: method)")
    return _save(fig, path)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


# ---------------------------------------------------------------------------------------------------- main
def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    log = log or _log
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=list(PROFILES), default="default")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "deepkd" / "bench",
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads in all (default: torch's choice)")
    parser.add_argument(
        "--workers", type=int, help="runs in this many processes, threads split among them (default: the profile's)"
    )
    parser.add_argument("--seeds", type=int, help="number of seeds (default: the profile's)")
    parser.add_argument("--methods", nargs="*", help="subset of methods: " + ", ".join(_all_methods()))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = dict(PROFILES[args.profile])
    if args.seeds:
        profile["seeds"] = args.seeds
    methods = args.methods or profile["methods"] or list(METHODS)
    unknown = [m for m in methods if m not in _all_methods()]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join(_all_methods())}")
    workers = args.workers if args.workers is not None else profile.get("workers", 1)
    threads = max(1, torch.get_num_threads() // max(1, workers))
    schedule = schedule_for(profile)
    from benchmarks.speed import machine

    meta: dict[str, Any] = {
        "profile": args.profile,
        "machine": machine(),
        "workers": workers,
        "threads_per_run": threads if workers > 1 else torch.get_num_threads(),
        "datasets": {},
        "skipped": {},
        "skipped_candidates": {},
    }
    jobs: list[tuple[str, str, deepkd.Recipe, int, int, Any]] = []
    contexts: dict[str, dict[str, Any]] = {}
    labels: dict[str, str] = {}
    setup_start = time.perf_counter()
    for dataset, sizes in profile["datasets"].items():
        try:
            split = prepare(dataset, sizes, profile.get("val_share", 0.0))
        except DataError as exc:
            log(f"[accuracy] skipping {dataset}: {exc}")
            meta["skipped"][dataset] = str(exc)
            continue
        train, val, test, classes = split.train, split.val, split.test, split.classes
        data = (train, test, classes)
        teacher = teacher_for(dataset, profile, args.cache, (split.teacher_train, test, classes))
        test_loader = DataLoader(test, batch_size=512)
        t_acc = evaluate(teacher, test_loader, device=torch.device("cpu"))["test_top1"]
        # the teacher's logits for every training sample, once: every run reads them by sample index
        probe = Trainer(
            _model(dataset, "student", classes, train.tensors[0][:1]),
            teacher,
            recipes(classes, 1, 1)["kd"],
            _config(1, cache=True),
        )
        teacher_logits = probe.compute_teacher_logits(_loaders(train, test, indexed=True)[0])
        steps = math.ceil(len(train) / BATCH)
        skipped: dict[str, str] = {}
        book = recipes(classes, profile["epochs"], steps, skipped)
        meta["skipped_candidates"].update(skipped)
        meta["datasets"][dataset] = {
            "teacher": MODELS[dataset]["teacher"][0],
            "student": MODELS[dataset]["student"][0],
            "teacher_params": count_parameters(teacher),
            "student_params": count_parameters(_model(dataset, "student", classes, train.tensors[0][:1])),
            "teacher_top1": t_acc,
            "epochs": profile["epochs"],
            "train": len(train),
            "val": len(val) if val is not None else 0,
            "teacher_train": len(split.teacher_train),
            "test": len(test),
            "classes": classes,
            "schedule": _schedule_text(schedule, profile["epochs"]),
            "dkd_warmup": book["dkd"].loss.warmup,
        }
        if val is not None:
            meta["datasets"][dataset]["teacher_val_top1"] = evaluate(
                teacher, DataLoader(val, batch_size=512), device=torch.device("cpu")
            )["test_top1"]
        if profile.get("cache_timing", True):
            meta["datasets"][dataset]["kd_epoch_seconds"] = cache_speedup(dataset, data, teacher, teacher_logits)
        contexts[dataset] = {"data": data, "val": val, "teacher": teacher, "logits": teacher_logits}
        for seed in range(profile["seeds"]):
            for method in methods:
                if method in book:
                    jobs.append((dataset, method, book[method], seed, profile["epochs"], schedule))
        for method in methods:
            if method in book:
                labels[method] = LABELS.get(method) or "the default with " + describe_change(
                    book["deepkd_default"].to_dict(), book[method].to_dict()
                )
    if args.profile == "long" or profile.get("val_share"):
        meta["labels"] = labels
    meta["setup_seconds"] = time.perf_counter() - setup_start
    log(f"[accuracy] {len(jobs)} runs, {workers} worker(s) of {meta['threads_per_run']} thread(s)")
    run_start = time.perf_counter()
    runs = execute(jobs, contexts, workers, threads, log) if jobs else []
    meta["runs_seconds"] = time.perf_counter() - run_start
    report: dict[str, Any] = {"meta": meta, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "accuracy.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["dataset", "method", "seed", "best_top1", "final_top1", "final_val_top1", "seconds", "student_params"]
        )
        for r in runs:
            writer.writerow(
                [
                    r["dataset"],
                    r["method"],
                    r["seed"],
                    r.get("best_top1", "error"),
                    r.get("final_top1", "error"),
                    r.get("final_val_top1", ""),
                    f"{r['seconds']:.2f}" if "seconds" in r else "",
                    r.get("student_params", ""),
                ]
            )
    if runs:
        summary = summarise(runs)
        md = markdown(summary, meta)
        report["summary"] = summary
        report["plots"] = [str(p) for p in plots(runs, args.out / "plots")]
    else:
        md = "No accuracy runs: " + "; ".join(f"{k}: {v}" for k, v in meta["skipped"].items())
    for dataset, why in meta["skipped"].items():
        md += f"\n\n**{dataset} skipped**: {why}"
    (args.out / "accuracy.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "accuracy.md").write_text(md + "\n")
    print(md)
    return report


def _all_methods() -> list[str]:
    return list(dict.fromkeys([*METHODS, *LONG_METHODS, *CANDIDATES]))


def _schedule_text(schedule: Any, epochs: int) -> str:
    if isinstance(schedule, Step):
        drops = ", ".join(str(m) for m in schedule.milestones if m < epochs)
        return f"lr {LR}, x{schedule.gamma:g} after epochs {drops} of {epochs} (step)"
    return f"lr {LR}, cosine to 0"


if __name__ == "__main__":
    main()
