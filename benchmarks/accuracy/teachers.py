"""The teachers: trained once per data set and profile, cached on disk, and their logits computed once.

A teacher is cached by the content hash of everything that determines it (data set, sizes, model, training
settings, seed, library versions, a fingerprint of its training data); later runs reuse it. A cache entry that
cannot be read is retrained, never used. The teacher's logits for every training sample are computed once per
data set (the data are not augmented) and every run reads them by sample index.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

import deepkd
from benchmarks.accuracy.data import loaders
from benchmarks.accuracy.methods import recipes
from benchmarks.accuracy.profiles import BATCH, LR, MODELS, model, train_config
from deepkd.trainer import Trainer


def _fingerprint(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.numpy().tobytes()).hexdigest()[:16]


# Teachers that ship with deepkd's repository, looked up before the cache: the distillation regime's converged
# teachers (long and default profiles), so that a fresh clone's ``nox -s bench`` does not spend minutes training them.
SHIPPED = Path(__file__).resolve().parent.parent / "teachers"


def cache_key(dataset: str, profile: Mapping[str, Any], train: TensorDataset) -> dict[str, Any]:
    """Everything that determines ``dataset``'s teacher under ``profile``, trained on ``train``."""
    if profile["datasets"][dataset].get("val"):
        # the distillation regime: the teacher's set is the whole training split less validation, whatever the
        # students' size, so the key names the teacher's own settings and data only (profiles share the teacher)
        return {
            "dataset": dataset,
            "model": MODELS[dataset]["teacher"],
            "epochs": profile["teacher_epochs"],
            "lr": profile.get("teacher_lr", LR),
            "schedule": "cosine",
            "batch": BATCH,
            "seed": 0,
            "torch": torch.__version__.split("+")[0],
            "train_size": len(train),
            "data": _fingerprint(train.tensors[0][:256]),
            "checksum": _fingerprint(train.tensors[1]),
        }
    key = {
        "dataset": dataset,
        "sizes": profile["datasets"][dataset],
        "model": MODELS[dataset]["teacher"],
        "epochs": profile["teacher_epochs"],
        "lr": LR,
        "batch": BATCH,
        "seed": 0,
        "deepkd": deepkd.__version__,
        "torch": torch.__version__.split("+")[0],
        "data": _fingerprint(train.tensors[0][:256]),
    }
    if profile.get("val_share"):  # only when set, so the other profiles' cached teachers keep their keys
        key["val_share"] = profile["val_share"]
        key["train_size"] = len(train)
        key["checksum"] = _fingerprint(train.tensors[1])
    return key


def _load(teacher: torch.nn.Module, path: Path, dataset: str) -> bool:
    """Load a cached teacher into ``teacher``; False (and a note) when the entry cannot be read."""
    try:
        teacher.load_state_dict(torch.load(path, weights_only=True))
        print(f"[accuracy] {dataset}: teacher from cache {path}", file=sys.stderr, flush=True)
        return True
    except Exception as exc:  # a corrupt cache entry is retrained, never used
        print(f"[accuracy] ignoring unreadable cached teacher {path}: {exc}", file=sys.stderr)
        return False


def _train(
    dataset: str, epochs: int, data: tuple[Any, Any, int], lr: float = LR, device: str = "cpu"
) -> tuple[torch.nn.Module, float | None]:
    """A teacher trained with cross-entropy from seed 0 (SGD at ``lr``, cosine to 0), and its final test top-1."""
    train, test, classes = data
    print(f"[accuracy] {dataset}: training the teacher ({epochs} epochs)", file=sys.stderr, flush=True)
    torch.manual_seed(0)
    teacher = model(dataset, "teacher", classes, train.tensors[0][:1])
    train_loader, test_loader = loaders(train, test, indexed=False, device=device)
    recipe = deepkd.compose(loss="ce", momentum="sgd", mask="none")
    trainer = Trainer(teacher, None, recipe, train_config(epochs, cache=False, lr=lr, device=device), seed=0)
    history = trainer.fit(train_loader, test_loader)
    return teacher, history.final_top1


def _store(teacher: torch.nn.Module, path: Path, key: dict[str, Any], top1: float | None) -> None:
    """Write a trained teacher (atomically) and, beside it, its key and test top-1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(teacher.state_dict(), tmp)
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps({"key": key, "test_top1": top1}, indent=2))


def teacher_for(
    dataset: str, profile: Mapping[str, Any], cache_dir: Path, data: tuple[Any, Any, int], device: str = "cpu"
) -> torch.nn.Module:
    """Train the data set's teacher, or load it from :data:`SHIPPED` or the cache (keyed by a hash of everything
    that determines it).

    ``data`` is ``(the teacher's training set, test, classes)``; that set never holds a validation image
    (:func:`benchmarks.accuracy.data.prepare`).
    """
    train, _, classes = data
    key = cache_key(dataset, profile, train)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    name = f"teacher-{dataset}-{digest}.pt"
    path = cache_dir / name
    teacher = model(dataset, "teacher", classes, train.tensors[0][:1])
    for where in (SHIPPED / name, path):
        if where.exists() and _load(teacher, where, dataset):
            return teacher.eval()
    teacher, top1 = _train(dataset, profile["teacher_epochs"], data, profile.get("teacher_lr", LR), device)
    teacher = teacher.cpu()
    _store(teacher, path, key, top1)
    return teacher.eval()


def teacher_logits(dataset: str, data: tuple[Any, Any, int], teacher: torch.nn.Module) -> torch.Tensor:
    """The teacher's logits for every sample of the students' training set ``data[0]``, in sample order."""
    train, test, classes = data
    probe = Trainer(
        model(dataset, "student", classes, train.tensors[0][:1]),
        teacher,
        recipes(classes, 1, 1)["kd"],
        train_config(1, cache=True),
    )
    return probe.compute_teacher_logits(loaders(train, test, indexed=True)[0])
