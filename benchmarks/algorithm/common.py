"""What every check shares: the data, the models, a cached teacher, a plain training loop and the report files.

Full mode reads Fashion-MNIST (``fashion_mnist``, 10 classes) or its 100-class pairs (``fashion_mnist_pairs``) from
the local files (:func:`deepkd.data.get_dataset`; nothing is downloaded) and trains a ``small_cnn`` teacher for a
few epochs, cached under ``~/.cache/deepkd/algorithm`` (``DEEPKD_ALGORITHM_CACHE`` overrides) by a hash of every
setting that determines it. Quick mode uses scikit-learn's bundled digits or small synthetic tensors and caches
nothing. Students are ``tiny_cnn``; the loop is :class:`deepkd.DistillOptimizer` called by hand, so a check can read
and set the optimizer's state between steps.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

import deepkd
from benchmarks import provenance
from deepkd.data import get_dataset
from deepkd.models import build_model
from deepkd.optim import DistillOptimizer
from deepkd.recipe import Recipe
from deepkd.schedules import Constant, Cosine, lr_scheduler

BATCH = 128
LR = 0.1
CACHE = Path(os.environ.get("DEEPKD_ALGORITHM_CACHE", Path.home() / ".cache" / "deepkd" / "algorithm"))


def log(text: str) -> None:
    print(f"[algorithm] {text}", file=sys.stderr, flush=True)


class Data(NamedTuple):
    """Inputs and labels of the training and test parts, the class count and where they came from."""

    x: Tensor
    y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: int
    source: str


def _draw(x: Tensor, y: Tensor, n: int | None, seed: int) -> tuple[Tensor, Tensor]:
    if n is None or n >= len(y):
        return x, y
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return x[idx].contiguous(), y[idx].contiguous()


def _tensors(data: Any) -> tuple[Tensor, Tensor]:
    return data.inputs, data.targets


def load(name: str, train: int | None, test: int | None, seed: int = 1) -> Data:
    """A seeded draw of ``train`` training and ``test`` test samples of a data set.

    ``name``: ``fashion_mnist``, ``fashion_mnist_pairs`` (``train`` pairs are built, then all of them used),
    ``digits`` (all 1,797 images, split 75/25), or ``synthetic100`` (100 classes of 8x8 noise around class means).
    """
    if name == "fashion_mnist_pairs":
        tr, te, info = get_dataset(name, size=train, test_size=test, seed=0)
    elif name == "synthetic100":
        tr, te, info = get_dataset(
            "synthetic",
            num_samples=train or 2000,
            num_test_samples=test or 1000,
            num_classes=100,
            shape=(1, 8, 8),
            seed=seed,
            noise=1.0,
        )
    else:
        tr, te, info = get_dataset(name)
    x, y = _draw(*_tensors(tr), train, seed)
    tx, ty = _draw(*_tensors(te), test, seed + 1)
    return Data(x.float(), y.long(), tx.float(), ty.long(), int(info["num_classes"]), name)


def model(name: str, classes: int, example: Tensor, **kwargs: Any) -> nn.Module:
    """A registered model sized for inputs like ``example`` (a batch)."""
    return build_model(name, classes, in_channels=int(example.shape[1]), **kwargs)


def batches(n: int, batch: int, seed: int, epoch: int) -> Iterator[Tensor]:
    """The shuffled sample indices of one epoch, batch by batch (the last, short batch dropped), a pure function of
    ``(seed, epoch)``."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000003 + epoch))
    for start in range(0, n - batch + 1, batch):
        yield order[start : start + batch]


@torch.no_grad()
def logits(net: nn.Module, x: Tensor, batch: int = 1024) -> Tensor:
    """``net``'s logits for every row of ``x``, in eval mode."""
    was = net.training
    net.eval()
    out = torch.cat([net(x[i : i + batch]) for i in range(0, len(x), batch)])
    net.train(was)
    return out


def top1(net: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((logits(net, x).argmax(1) == y).float().mean())


StepHook = Callable[[DistillOptimizer, int, int, Any], None]  # (optimizer, epoch, step, StepOutput)
EpochHook = Callable[[DistillOptimizer, int, dict[str, Any]], None]  # (optimizer, epoch, the epoch's record)


def train(
    student: nn.Module,
    recipe: Recipe,
    data: Data,
    teacher_logits: Tensor | None,
    *,
    epochs: int,
    seed: int,
    lr: float = LR,
    schedule: Any = None,
    on_step: StepHook | None = None,
    on_epoch: EpochHook | None = None,
) -> tuple[list[dict[str, Any]], DistillOptimizer]:
    """Train ``student`` with ``recipe`` (SGD, momentum 0.9, weight decay 5e-4, batch :data:`BATCH`, a cosine to
    zero unless ``schedule`` says otherwise), and return one record per epoch (training and test top-1, the
    mask's K at the epoch's end) and the optimizer.

    ``on_step`` runs after every step, ``on_epoch`` after every epoch's record (before the next epoch starts).
    """
    torch.manual_seed(seed)
    opt = DistillOptimizer(student.parameters(), recipe, lr=lr, momentum=0.9, weight_decay=5e-4)
    steps = len(data.y) // BATCH
    sched = lr_scheduler(opt, schedule if schedule is not None else Cosine(warmup=0.0, min_factor=0.0), steps, epochs)
    history: list[dict[str, Any]] = []
    for epoch in range(1, epochs + 1):
        student.train()
        hits = seen = 0
        for step, idx in enumerate(batches(len(data.y), BATCH, seed, epoch)):
            out_logits = student(data.x[idx])
            t = None if teacher_logits is None else teacher_logits[idx]
            out = opt.distill_step(out_logits, t, data.y[idx], epoch=epoch)
            sched.step()
            hits += int((out_logits.detach().argmax(1) == data.y[idx]).sum())
            seen += len(idx)
            if on_step is not None:
                on_step(opt, epoch, step, out)
        record = {
            "epoch": epoch,
            "train_top1": hits / max(seen, 1),
            "test_top1": top1(student, data.test_x, data.test_y),
            "k": None if opt.mask_state is None else int(opt.mask_state.k),
        }
        history.append(record)
        if on_epoch is not None:
            on_epoch(opt, epoch, record)
    return history, opt


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def teacher(data: Data, arch: str, epochs: int, *, cache: bool, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """A teacher trained with cross-entropy from seed 0 (cosine schedule, lr :data:`LR`), and what it is: its
    settings, its test top-1 and whether it came from the cache. With ``cache``, it is stored under :data:`CACHE`
    keyed by a hash of every setting and a fingerprint of the data, and reused."""
    key = {
        "data": data.source,
        "train": len(data.y),
        "fingerprint": hashlib.sha256(data.x[:256].numpy().tobytes() + data.y.numpy().tobytes()).hexdigest()[:16],
        "arch": arch,
        "kwargs": kwargs,
        "epochs": epochs,
        "lr": LR,
        "batch": BATCH,
        "seed": 0,
        "deepkd": deepkd.__version__,
        "torch": torch.__version__.split("+")[0],
    }
    net = model(arch, data.classes, data.x[:1], **kwargs)
    path = CACHE / f"teacher-{data.source}-{_digest(key)}.pt"
    cached = False
    if cache and path.exists():
        try:
            net.load_state_dict(torch.load(path, weights_only=True))
            cached = True
            log(f"teacher from cache {path}")
        except Exception as exc:  # an unreadable entry is retrained, never used
            log(f"ignoring unreadable cached teacher {path}: {exc}")
    if not cached:
        log(f"training the teacher: {arch} on {len(data.y)} samples of {data.source}, {epochs} epochs")
        recipe = deepkd.compose(loss="ce", momentum="sgd", mask="none")
        train(net, recipe, data, None, epochs=epochs, seed=0)
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(net.state_dict(), tmp)
            os.replace(tmp, path)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    info = {**key, "test_top1": top1(net, data.test_x, data.test_y), "from_cache": cached}
    if cache:
        path.with_suffix(".json").write_text(json.dumps(info, indent=2))
    return net, info


def constant() -> Constant:
    return Constant()


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f} %"


def write(
    out: Path, check: str, quick: bool, result: dict[str, Any], body: str, origin: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``<check>[-quick].json`` (the result, where it comes from and the machine) and ``.md`` (``body`` under a
    heading, then the provenance lines) into ``out``. ``origin``: :func:`benchmarks.provenance.provenance` taken when
    the check started (the commit whose code ran), else now."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{check}-quick" if quick else check
    origin, mc = origin or provenance.provenance(), provenance.machine()
    payload = {"check": check, "quick": quick, "provenance": origin, "machine": mc, **result}
    jpath, mpath = out / f"{stem}.json", out / f"{stem}.md"
    jpath.write_text(json.dumps(payload, indent=2, default=_plain) + "\n")
    mode = " (quick mode: small data, the figures show the structure only)" if quick else ""
    mpath.write_text(f"# Algorithm check: {check}{mode}\n\n{body.rstrip()}\n\n{provenance.markdown(origin, mc)}")
    return jpath, mpath


def _plain(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)
