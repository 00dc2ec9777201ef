r"""The "cliff": what a mask whose K jumps at an epoch boundary does to a 10-class student, against deepkd's schedule.

deepkd's first dynamic mask read the training accuracy once per epoch and set K by the paper's phases: Easy K =
round(0.1·C) (1 on 10 classes), Transition K linear in accuracy up to round(0.3·C), Hard K = C − 1, never
decreasing. A fast student passes 60 % training accuracy in its first epoch, so K went from 1 to 9 in one step at
the first epoch boundary; with the renormalised form NCKD over one class is identically zero, so the whole NCKD term
(β = 8) switched on in that step. This check rebuilds that schedule (:class:`EpochMask`, set by the loop at each
epoch's end) and trains, with DKD (α 1, β 8, T 4, no warm-up) and plain SGD momentum:

- ``epoch_renorm_k1``: the earlier schedule, renormalised (K 1 → 9 at the first boundary);
- ``epoch_renorm_k2``: the same with Easy K = 2 (2 → 9);
- ``epoch_renorm_k1_ramped``: 1 → 9 with the NCKD weight ramped in linearly over one epoch after K grows;
- ``epoch_bucket_k1``: the earlier schedule with the bucket form (1 → 9; with K = 1 bucketed NCKD is a two-bin KL);
- ``dynamic_renorm`` and ``dynamic_bucket``: deepkd's :class:`~deepkd.masks.DynamicMask` (K follows the training
  accuracy smoothed over steps, at most a few classes a step; K_min 2 for the renormalised form);
- ``no_mask``: DKD without a mask.

The test top-1 is read on a fixed test subset every few steps, so the drop right after the jump is seen; the report
gives, per variant, the largest K increase in one step, the test top-1 just before K first grows, the lowest in the
epoch after, and the final test top-1 on the whole test set.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import statistics
from collections.abc import Iterator
from typing import Any, ClassVar

import attrs
import torch
from torch import Tensor

import deepkd
from benchmarks.algorithm import common
from deepkd.losses import DKD
from deepkd.masks import EASY, DynamicMask, new_state, round_half_up, topk_keep_mask
from deepkd.registry import LOSSES, MASKS
from deepkd.types import Keep, MaskState

VARIANTS = (
    "epoch_renorm_k1",
    "epoch_renorm_k2",
    "epoch_renorm_k1_ramped",
    "epoch_bucket_k1",
    "dynamic_renorm",
    "dynamic_bucket",
    "no_mask",
)

FULL = {
    "data": "fashion_mnist",
    "train": 10000,
    "test": 5000,
    "eval_subset": 1000,
    "teacher": {"arch": "small_cnn", "epochs": 3, "train": 20000},
    "student": {"arch": "tiny_cnn", "width": 16},
    "epochs": 5,
    "eval_every": 13,
    "seeds": [0, 1],
    "horizon": 100,
}
QUICK = {
    "data": "digits",
    "train": None,
    "test": None,
    "eval_subset": 450,
    "teacher": {"arch": "small_cnn", "epochs": 8, "train": None, "width": 16},
    "student": {"arch": "tiny_cnn", "width": 8},
    "epochs": 4,
    "eval_every": 2,
    "seeds": [0],
    "horizon": 10,
}
THRESHOLDS = (0.30, 0.60)


def settings(quick: bool) -> dict[str, Any]:
    return copy.deepcopy(QUICK if quick else FULL)


def earlier_k(accuracy: float, classes: int, k_min: int) -> int:
    """The earlier per-epoch rule's K for one epoch's training accuracy: Easy ``k_min``, Transition linear up to
    round(0.3·C), Hard C − 1."""
    a1, a2 = THRESHOLDS
    k_end = max(round_half_up(0.3 * classes), k_min)
    if accuracy < a1:
        return k_min
    if accuracy >= a2:
        return classes - 1
    return round_half_up(k_min + (accuracy - a1) / (a2 - a1) * (k_end - k_min))


@attrs.frozen(kw_only=True)
class EpochMask:
    """A top-K mask whose K the training loop sets at each epoch's end (the earlier schedule); the optimizer's
    per-step observation changes nothing."""

    form: str = "renormalize"
    k_min: int = 1
    observes: ClassVar[bool] = False

    def init(self, num_classes: int) -> MaskState:
        return new_state(self.k_min, EASY)

    def keep(self, state: MaskState, teacher: Tensor, target: Tensor) -> Keep | None:
        mask = topk_keep_mask(teacher, target, int(state.k))
        return None if mask is None else Keep(mask, self.form)  # type: ignore[arg-type]

    def observe(self, state: MaskState, hits: Tensor, samples: Tensor | int, num_classes: int) -> MaskState:
        return state


@attrs.frozen(kw_only=True)
class RampedDKD(DKD):
    """DKD whose NCKD part is multiplied by ``ramp[0]`` (set by the training loop)."""

    ramp: list[float] = attrs.field(factory=lambda: [1.0], eq=False)

    def parts(self, student: Tensor, teacher: Tensor | None, target: Tensor, *, epoch: int = 1, keep: Any = None):  # type: ignore[no-untyped-def]
        parts = super().parts(student, teacher, target, epoch=epoch, keep=keep)
        parts["nckd"] = parts["nckd"] * self.ramp[0]
        return parts

    def parts_and_grads(self, *args: Any, **kwargs: Any) -> None:
        return None  # the ramp is applied by autograd through parts()


@contextlib.contextmanager
def registered() -> Iterator[None]:
    """:class:`EpochMask` and :class:`RampedDKD` registered for the run only (a recipe takes registered strategies)."""
    MASKS.register("algorithm_epoch_mask", replace=True)(EpochMask)
    LOSSES.register("algorithm_ramped_dkd", replace=True)(RampedDKD)
    try:
        yield
    finally:
        MASKS.unregister("algorithm_epoch_mask")
        LOSSES.unregister("algorithm_ramped_dkd")


def recipe(variant: str, horizon: int = 100) -> deepkd.Recipe:
    loss = RampedDKD(warmup=0) if variant.endswith("ramped") else DKD(warmup=0)
    mask: Any
    if variant.startswith("epoch_"):
        mask = EpochMask(form="bucket" if "bucket" in variant else "renormalize", k_min=2 if "k2" in variant else 1)
    elif variant == "dynamic_renorm":
        mask = DynamicMask(thresholds=THRESHOLDS, horizon=horizon, form="renormalize")  # type: ignore[arg-type]
    elif variant == "dynamic_bucket":
        mask = DynamicMask(thresholds=THRESHOLDS, horizon=horizon)  # type: ignore[arg-type]
    else:
        mask = "none"
    return deepkd.compose(loss=loss, momentum="sgd", mask=mask)


def one_run(variant: str, seed: int, cfg: dict[str, Any], data: common.Data, t_logits: Tensor) -> dict[str, Any]:
    """One student; its K at every step and the test top-1 on the subset every ``eval_every`` steps."""
    torch.manual_seed(seed)
    scfg = cfg["student"]
    student = common.model(scfg["arch"], data.classes, data.x[:1], width=scfg["width"])
    rec = recipe(variant, cfg["horizon"])
    ramp = rec.loss.ramp if isinstance(rec.loss, RampedDKD) else None
    steps_per_epoch = len(data.y) // common.BATCH
    sub_x, sub_y = data.test_x[: cfg["eval_subset"]], data.test_y[: cfg["eval_subset"]]
    ks: list[int] = []
    curve: list[dict[str, Any]] = []
    grown_at: list[int] = []

    def on_step(opt: Any, epoch: int, step: int, out: Any) -> None:
        assert opt.mask_state is not None
        ks.append(int(opt.mask_state.k))
        if ramp is not None and grown_at:
            ramp[0] = min(1.0, (opt.steps - grown_at[0]) / steps_per_epoch)
        if opt.steps % cfg["eval_every"] == 0:
            curve.append(
                {"step": opt.steps, "epoch": epoch, "k": ks[-1], "test_top1": common.top1(student, sub_x, sub_y)}
            )

    def on_epoch(opt: Any, epoch: int, record: dict[str, Any]) -> None:
        if not variant.startswith("epoch_"):
            return
        assert opt.mask_state is not None
        old = int(opt.mask_state.k)
        new = max(old, earlier_k(record["train_top1"], data.classes, rec.mask.k_min))  # type: ignore[attr-defined]
        opt.mask_state.k.fill_(new)
        if new > old and not grown_at:
            grown_at.append(opt.steps)
            if ramp is not None:
                ramp[0] = 0.0

    history, _ = common.train(
        student, rec, data, t_logits, epochs=cfg["epochs"], seed=seed, on_step=on_step, on_epoch=on_epoch
    )
    return {"variant": variant, "seed": seed, "history": history, "curve": curve, **jump(ks, curve, steps_per_epoch)}


def jump(ks: list[int], curve: list[dict[str, Any]], steps_per_epoch: int) -> dict[str, Any]:
    """The largest K increase in one step, where K first grows, the test top-1 just before and the lowest in the
    following epoch."""
    steps = [0, *ks]  # K before the first step is the initial K
    rises = [b - a for a, b in itertools.pairwise(steps)]
    out: dict[str, Any] = {
        "k_first": ks[0] if ks else None,
        "k_last": ks[-1] if ks else None,
        "max_k_rise": max(rises[1:], default=0),
    }
    grown = [i for i in range(1, len(ks)) if ks[i] > ks[i - 1]]  # the steps taken before each rise of K
    first = grown[0] if grown else None
    out["k_rises_after_steps"] = grown
    out["steps_per_epoch"] = steps_per_epoch
    out["k_grows_at_step"] = first
    if first is None:
        out["before_top1"] = out["after_min_top1"] = None
        return out
    before = [c["test_top1"] for c in curve if c["step"] <= first]
    after = [c["test_top1"] for c in curve if first < c["step"] <= first + steps_per_epoch]
    out["before_top1"] = before[-1] if before else None
    out["after_min_top1"] = min(after) if after else None
    return out


def run(quick: bool) -> tuple[dict[str, Any], str]:
    cfg = settings(quick)
    tcfg = cfg["teacher"]
    data = common.load(cfg["data"], cfg["train"], cfg["test"])
    tdata = data if tcfg["train"] in (None, cfg["train"]) else common.load(cfg["data"], tcfg["train"], cfg["test"])
    extra = {k: v for k, v in tcfg.items() if k not in ("arch", "epochs", "train")}
    teacher, tinfo = common.teacher(tdata, tcfg["arch"], tcfg["epochs"], cache=not quick, **extra)
    t_logits = common.logits(teacher, data.x)
    runs = []
    with registered():
        for variant in VARIANTS:
            for seed in cfg["seeds"]:
                common.log(f"cliff: {variant}, seed {seed}")
                runs.append(one_run(variant, seed, cfg, data, t_logits))
    result = {"settings": cfg, "thresholds": THRESHOLDS, "teacher": tinfo, "runs": runs}
    return result, markdown(result)


def _cell(values: list[Any]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "–"
    return " / ".join(f"{100 * v:.1f}" for v in known) + " %"


def markdown(result: dict[str, Any]) -> str:
    cfg, t = result["settings"], result["teacher"]
    lines = [
        f"Students `{cfg['student']['arch']}` (width {cfg['student']['width']}) distilled on "
        f"{cfg['train'] or 'all'} training images of `{cfg['data']}` ({cfg['epochs']} epochs, batch {common.BATCH}, "
        f"lr {common.LR} cosine, SGD momentum 0.9) from a `{t['arch']}` teacher ({t['epochs']} epochs on "
        f"{t['train']} images, test top-1 {common.pct(t['test_top1'])}), with DKD (α 1, β 8, T 4, no warm-up); "
        f"phase thresholds {result['thresholds']}; seeds {cfg['seeds']} (figures per seed, separated by /). "
        f"Test top-1 on the first {cfg['eval_subset']} test images every {cfg['eval_every']} steps; final on the "
        "whole test set.",
        "",
        "| variant | K start → end | largest K rise in one step | test top-1 before K grows | lowest in the epoch "
        "after | final test top-1 |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for variant in VARIANTS:
        mine = [r for r in result["runs"] if r["variant"] == variant]
        ks = f"{mine[0]['k_first']} → {mine[0]['k_last']}"
        lines.append(
            f"| {variant} | {ks} | {max(r['max_k_rise'] for r in mine)} | {_cell([r['before_top1'] for r in mine])} | "
            f"{_cell([r['after_min_top1'] for r in mine])} | "
            f"{_cell([r['history'][-1]['test_top1'] for r in mine])} |"
        )
    finals = {
        v: statistics.mean(r["history"][-1]["test_top1"] for r in result["runs"] if r["variant"] == v) for v in VARIANTS
    }
    lines += ["", "Mean final test top-1: " + ", ".join(f"{v} {100 * f:.1f} %" for v, f in finals.items()) + "."]
    return "\n".join(lines)
