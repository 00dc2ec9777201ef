r"""Whether renormalised NCKD under a top-K mask lets the student's mass drift onto the masked classes, and whether
the bucket form holds it.

**Training runs.** On a 100-class set a student is distilled with DKD (α 1, β 8, T 4) and plain SGD momentum under
a static mask keeping the teacher's top K = 10 non-target classes, in each form (``renormalize``, ``bucket``), and
without a mask, over a few seeds. After training, on every training sample: the share of the student's non-target
probability (T = 1) on the 89 masked classes, and whether its argmax over all classes is a masked class; and the
final test top-1. The teacher's own share on those classes is given for reference.

**Designed case** (no network, runs in a moment): free student logits over C = 100 classes start with most of their
non-target mass on the classes the mask drops, and follow gradient descent on NCKD alone (K = 10) towards a teacher
that puts little mass there. ``renormalize`` gives the masked classes no gradient, so their mass stays where it
started; ``bucket`` pulls it to the teacher's.
"""

from __future__ import annotations

import copy
import statistics
from typing import Any

import torch
from torch import Tensor

import deepkd
from benchmarks.algorithm import common
from deepkd.losses import DKD, nckd
from deepkd.masks import StaticMask, topk_keep_mask

FORMS = ("none", "renormalize", "bucket")

FULL = {
    "data": "fashion_mnist_pairs",
    "train": 8000,
    "test": 5000,
    "teacher": {"arch": "small_cnn", "epochs": 3, "train": 16000},
    "student": {"arch": "tiny_cnn", "width": 16},
    "k": 10,
    "epochs": 8,
    "seeds": [0, 1],
    "warmup": 2,
}
QUICK = {
    "data": "synthetic100",
    "train": 2000,
    "test": 1000,
    "teacher": {"arch": "small_cnn", "epochs": 6, "train": None, "width": 16},
    "student": {"arch": "tiny_cnn", "width": 8},
    "k": 10,
    "epochs": 3,
    "seeds": [0],
    "warmup": 1,
}


def settings(quick: bool) -> dict[str, Any]:
    return copy.deepcopy(QUICK if quick else FULL)


def recipe(form: str, k: int, warmup: int) -> deepkd.Recipe:
    mask: Any = "none" if form == "none" else StaticMask(k=k, form=form)  # type: ignore[arg-type]
    return deepkd.compose(loss=DKD(warmup=warmup), momentum="sgd", mask=mask)


def masked_share(student_logits: Tensor, teacher_logits: Tensor, y: Tensor, k: int) -> dict[str, float]:
    """On each sample, the student's non-target probability (T = 1) on the classes the teacher's top-``k`` mask
    drops, and whether its argmax over all classes is one of them; means over the samples. Also the teacher's
    own non-target share there."""
    keep = topk_keep_mask(teacher_logits, y, k)
    assert keep is not None
    non_target = torch.ones_like(keep).scatter_(1, y[:, None], False)
    dropped = non_target & ~keep

    def share(z: Tensor) -> Tensor:
        p = torch.softmax(z.float(), 1) * non_target
        return (p * dropped).sum(1) / p.sum(1).clamp_min(1e-30)

    argmax_dropped = dropped.gather(1, student_logits.argmax(1, keepdim=True))[:, 0]
    return {
        "student_masked_share": float(share(student_logits).mean()),
        "student_argmax_masked": float(argmax_dropped.float().mean()),
        "teacher_masked_share": float(share(teacher_logits).mean()),
        "masked_classes": int(dropped[0].sum()),
    }


def designed(classes: int = 100, k: int = 10, samples: int = 64, steps: int = 300, lr: float = 0.5) -> dict[str, Any]:
    """The designed case: per form, the student's non-target share on the masked classes before and after gradient
    descent on NCKD alone, and the teacher's."""
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, classes, (samples,), generator=gen)
    teacher = torch.randn(samples, classes, generator=gen)
    ranks = torch.arange(classes, dtype=torch.float32).expand(samples, classes)
    teacher = teacher + 6.0 * (ranks < k + 1)  # the teacher's mass sits on its first K + 1 classes
    keep = topk_keep_mask(teacher, y, k)
    assert keep is not None
    start = torch.randn(samples, classes, generator=gen) + 4.0 * ~keep  # the student's on the classes dropped
    out: dict[str, Any] = {"classes": classes, "k": k, "steps": steps, "lr": lr}
    for form in ("renormalize", "bucket"):
        z = start.clone().requires_grad_(True)
        for _ in range(steps):
            loss = nckd(z, teacher, y, 4.0, keep=keep, form=form, reduction="mean")
            (g,) = torch.autograd.grad(loss, z)
            with torch.no_grad():
                z -= lr * samples * g
        before, after = masked_share(start, teacher, y, k), masked_share(z.detach(), teacher, y, k)
        out[form] = {"before": before["student_masked_share"], "after": after["student_masked_share"]}
        out["teacher_masked_share"] = after["teacher_masked_share"]
    return out


def run(quick: bool) -> tuple[dict[str, Any], str]:
    cfg = settings(quick)
    tcfg, scfg = cfg["teacher"], cfg["student"]
    data = common.load(cfg["data"], cfg["train"], cfg["test"])
    tdata = data if tcfg["train"] in (None, cfg["train"]) else common.load(cfg["data"], tcfg["train"], cfg["test"])
    extra = {k: v for k, v in tcfg.items() if k not in ("arch", "epochs", "train")}
    teacher, tinfo = common.teacher(tdata, tcfg["arch"], tcfg["epochs"], cache=not quick, **extra)
    t_logits = common.logits(teacher, data.x)
    runs = []
    for form in FORMS:
        for seed in cfg["seeds"]:
            common.log(f"collapse: form {form}, seed {seed}")
            torch.manual_seed(seed)
            student = common.model(scfg["arch"], data.classes, data.x[:1], width=scfg["width"])
            history, _ = common.train(
                student, recipe(form, cfg["k"], cfg["warmup"]), data, t_logits, epochs=cfg["epochs"], seed=seed
            )
            shares = masked_share(common.logits(student, data.x), t_logits, data.y, cfg["k"])
            runs.append(
                {
                    "form": form,
                    "seed": seed,
                    "final_test_top1": history[-1]["test_top1"],
                    "best_test_top1": max(h["test_top1"] for h in history),
                    "history": history,
                    **shares,
                }
            )
    result = {"settings": cfg, "teacher": tinfo, "runs": runs, "designed": designed(k=cfg["k"])}
    return result, markdown(result)


def _range(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return common.pct(lo, 1) if len(values) == 1 else f"{100 * lo:.1f}–{100 * hi:.1f} %"


def summary(runs: list[dict[str, Any]], form: str) -> dict[str, Any]:
    mine = [r for r in runs if r["form"] == form]
    return {
        "final": [r["final_test_top1"] for r in mine],
        "best": [r["best_test_top1"] for r in mine],
        "share": statistics.mean(r["student_masked_share"] for r in mine),
        "argmax": statistics.mean(r["student_argmax_masked"] for r in mine),
        "teacher_share": statistics.mean(r["teacher_masked_share"] for r in mine),
    }


def markdown(result: dict[str, Any]) -> str:
    cfg, t, d = result["settings"], result["teacher"], result["designed"]
    masked = result["runs"][0]["masked_classes"]
    lines = [
        f"Students `{cfg['student']['arch']}` (width {cfg['student']['width']}) distilled on {cfg['train']} training "
        f"samples of `{cfg['data']}` ({cfg['epochs']} epochs, batch "
        f"{common.BATCH}, lr {common.LR} cosine, SGD momentum 0.9) from a `{t['arch']}` teacher ({t['epochs']} epochs "
        f"on {t['train']} samples, test top-1 {common.pct(t['test_top1'])}), with DKD (α 1, β 8, T 4, warm-up "
        f"{cfg['warmup']} epochs) and a static mask keeping the teacher's top K = {cfg['k']} non-target classes "
        f"({masked} masked), seeds {cfg['seeds']}. Shares are on the training samples after training, "
        "the student's probabilities at T = 1, means over samples and seeds.",
        "",
        "| NCKD form | final test top-1 | best test top-1 | student's non-target mass on the masked classes | "
        "student's argmax on a masked class | teacher's non-target mass there |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for form in FORMS:
        s = summary(result["runs"], form)
        lines.append(
            f"| {form if form != 'none' else 'no mask'} | {_range(s['final'])} | {_range(s['best'])} | "
            f"{common.pct(s['share'])} | {common.pct(s['argmax'])} | {common.pct(s['teacher_share'])} |"
        )
    lines += [
        "",
        f"Designed case ({d['classes']} classes, K = {d['k']}, free logits, {d['steps']} steps of gradient descent "
        "on NCKD alone): the student's non-target mass on the masked classes, before → after; the teacher's is "
        f"{common.pct(d['teacher_masked_share'])}.",
        "",
        f"- renormalize: {common.pct(d['renormalize']['before'])} → {common.pct(d['renormalize']['after'])}",
        f"- bucket: {common.pct(d['bucket']['before'])} → {common.pct(d['bucket']['after'])}",
    ]
    return "\n".join(lines)
