r"""What the ``stream`` GSNR estimator reads, against GSNR measured at frozen parameters, and its floor.

A student is distilled with DKD and ``GSNR(estimator="stream", fraction=1)`` momentum (every coordinate sampled, so
the figures carry no subsampling noise; the default ``fraction`` is an unbiased estimate of the same sums). At the
end of chosen epochs the check reads the stream estimate of each component (task, TCKD, NCKD) from the optimizer,
then freezes a copy of the student and takes each component's gradient on ``frozen_batches`` random training
batches at those parameters. From them:

- **frozen**: the GSNR of the mini-batch gradient at fixed parameters, :math:`\sum_j (\bar g_j^2 -
  s_j^2/N) / \sum_j s_j^2` over the N batches (:math:`s_j^2` the unbiased variance across batches). The stream
  estimator also folds mini-batch gradients, so both are in the same units (the per-sample GSNR is about the batch
  size times smaller);
- **stream at frozen parameters**: the same N gradients folded through a fresh stream estimator
  (:func:`deepkd.gsnr.stream_update`, its default decay 0.98): what the estimator's formula reads when nothing
  drifts;
- **floor, real gradients**: the same N gradients with their mean subtracted (a true GSNR of 0) through a fresh
  stream estimator;
- **floor, Gaussian noise**: zero-mean Gaussian "gradients" through a fresh stream estimator, and the analytic
  floor :math:`S/(1-S)`, :math:`S = \sum_i w_i^2` the squared weights of the bias-corrected moving average.

The gap between the stream reading in the run and the frozen one, when the frozen-parameter stream agrees with the
frozen one, is the drift of the gradient along the trajectory, read as noise.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

import deepkd
from benchmarks.algorithm import common
from deepkd.gsnr import ratio, stream_init, stream_ratios, stream_sums, stream_update
from deepkd.losses import DKD
from deepkd.momentum import GSNR

PARTS = ("task", "tckd", "nckd")
BETA = 0.98

FULL = {
    "data": "fashion_mnist",
    "train": 10000,
    "test": 5000,
    "teacher": {"arch": "small_cnn", "epochs": 3, "train": 20000},
    "student": {"arch": "tiny_cnn", "width": 16},
    "epochs": 6,
    "measure_at": [1, 3, 6],
    "frozen_batches": 400,
    "noise_steps": [200, 1000, 5000],
    "noise_dim": 20000,
    "interval": 200,
}
QUICK = {
    "data": "digits",
    "train": None,
    "test": None,
    "teacher": {"arch": "small_cnn", "epochs": 8, "train": None, "width": 16},
    "student": {"arch": "tiny_cnn", "width": 8},
    "epochs": 4,
    "measure_at": [2, 4],
    "frozen_batches": 40,
    "noise_steps": [200, 1000],
    "noise_dim": 2000,
    "interval": 5,
}


def settings(quick: bool) -> dict[str, Any]:
    return copy.deepcopy(QUICK if quick else FULL)


def recipe(interval: int) -> deepkd.Recipe:
    """DKD (α 1, β 8, T 4, no warm-up), stream-GSNR momentum on every coordinate, no mask."""
    return deepkd.compose(
        loss=DKD(warmup=0),
        momentum=GSNR(estimator="stream", fraction=1.0, interval=interval),
        mask="none",
    )


def stream_reading(opt: Any) -> list[float]:
    """The optimizer's current stream estimate of each component's GSNR (all param groups' sums together)."""
    sums = [stream_sums(s, beta=BETA) for s in opt.rule_state.estimate.stream]
    signal = sum(s for s, _ in sums)
    noise = sum(n for _, n in sums)
    return [float(r) for r in ratio(signal, noise)]  # type: ignore[arg-type]


def component_grads(student: nn.Module, loss: DKD, x: Tensor, t: Tensor, y: Tensor) -> list[Tensor]:
    """Each part's gradient (task, TCKD, NCKD) of one batch, flattened over every parameter."""
    params = [p for p in student.parameters() if p.requires_grad]
    parts = loss.parts(student(x), t, y, epoch=1)
    out = []
    for i, name in enumerate(PARTS):
        grads = torch.autograd.grad(parts[name], params, retain_graph=i < len(PARTS) - 1, allow_unused=True)
        out.append(
            torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])
        )
    return out


def frozen(
    student: nn.Module, loss: DKD, data: common.Data, t_logits: Tensor, batches: int, seed: int
) -> dict[str, Any]:
    """GSNR at frozen parameters (a copy of ``student``, in train mode as in training) over ``batches`` random
    training batches, and what the stream estimator reads from the same gradients, as they are and centred."""
    net = copy.deepcopy(student).train()
    gen = torch.Generator().manual_seed(seed)
    grads: list[list[Tensor]] = [[] for _ in PARTS]
    for _ in range(batches):
        idx = torch.randperm(len(data.y), generator=gen)[: common.BATCH]
        for c, g in enumerate(component_grads(net, loss, data.x[idx], t_logits[idx], data.y[idx])):
            grads[c].append(g.double())
    stacked = [torch.stack(g) for g in grads]  # [batches, coordinates] per component
    mean = [g.mean(0) for g in stacked]
    var = [g.var(0, unbiased=True) for g in stacked]
    signal = torch.stack([(m.square() - v / batches).sum() for m, v in zip(mean, var)])
    noise = torch.stack([v.sum() for v in var])
    gsnr = [float(r) for r in ratio(signal.clamp_min(0.0), noise)]
    return {
        "gsnr": gsnr,
        "stream_same_gradients": _stream_of([[g[i].float()] for g in stacked] for i in range(batches)),
        "stream_centred": _stream_of([[(g[i] - m).float()] for g, m in zip(stacked, mean)] for i in range(batches)),
    }


def _stream_of(steps: Any) -> list[float]:
    """What a fresh stream estimator (every coordinate, decay :data:`BETA`) reads after folding ``steps``: per step,
    one list of per-parameter gradients per component."""
    state = None
    for comps in steps:
        if state is None:
            state = stream_init([comps[0][0]], len(comps), fraction=1.0)
        stream_update(state, comps, beta=BETA)
    assert state is not None
    return [float(r) for r in stream_ratios(state, beta=BETA)]


def analytic_floor(steps: int, beta: float = BETA) -> float:
    """The expected reading of the bias-corrected moving averages on zero-mean noise after ``steps`` steps:
    S/(1 − S), S the sum of the squared weights (E[m1²] = S σ², E[m2 − m1²] = (1 − S) σ²)."""
    s = (1 - beta) ** 2 * (1 - beta ** (2 * steps)) / ((1 - beta**2) * (1 - beta**steps) ** 2)
    return s / (1 - s)


def noise_floor(steps: list[int], dim: int, seed: int = 0) -> list[dict[str, float]]:
    """The stream estimator's reading on zero-mean Gaussian gradients of ``dim`` coordinates (a true GSNR of 0)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for n in steps:
        state = stream_init([torch.zeros(dim)], 1, fraction=1.0)
        for _ in range(n):
            stream_update(state, [[torch.randn(dim, generator=gen)]], beta=BETA)
        rows.append({"steps": n, "read": float(stream_ratios(state, beta=BETA)[0]), "analytic": analytic_floor(n)})
    return rows


def order(values: list[float]) -> list[str]:
    """The components from the highest GSNR to the lowest."""
    return [PARTS[i] for i in sorted(range(len(values)), key=lambda i: -values[i])]


def run(quick: bool) -> tuple[dict[str, Any], str]:
    """Run the check; the result (settings, teacher, per measured epoch the readings) and its markdown."""
    cfg = settings(quick)
    tcfg = cfg["teacher"]
    cache = not quick
    data = common.load(cfg["data"], cfg["train"], cfg["test"])
    tdata = data if tcfg["train"] in (None, cfg["train"]) else common.load(cfg["data"], tcfg["train"], cfg["test"])
    extra = {k: v for k, v in tcfg.items() if k not in ("arch", "epochs", "train")}
    teacher, tinfo = common.teacher(tdata, tcfg["arch"], tcfg["epochs"], cache=cache, **extra)
    t_logits = common.logits(teacher, data.x)
    scfg = cfg["student"]
    student = common.model(scfg["arch"], data.classes, data.x[:1], width=scfg["width"])
    rec = recipe(cfg["interval"])
    loss = rec.loss
    assert isinstance(loss, DKD)
    points: list[dict[str, Any]] = []

    def measure(opt: Any, epoch: int, record: dict[str, Any]) -> None:
        if epoch not in cfg["measure_at"]:
            return
        common.log(f"estimator: epoch {epoch}, {cfg['frozen_batches']} batches at frozen parameters")
        stream = stream_reading(opt)
        fz = frozen(student, loss, data, t_logits, cfg["frozen_batches"], seed=100 + epoch)
        points.append(
            {
                "epoch": epoch,
                "steps": opt.steps,
                "train_top1": record["train_top1"],
                "test_top1": record["test_top1"],
                "stream_in_run": dict(zip(PARTS, stream)),
                "frozen": dict(zip(PARTS, fz["gsnr"])),
                "stream_at_frozen": dict(zip(PARTS, fz["stream_same_gradients"])),
                "stream_centred": dict(zip(PARTS, fz["stream_centred"])),
                "order_stream": order(stream),
                "order_frozen": order(fz["gsnr"]),
                "momenta": opt.part_momenta(),
            }
        )

    torch.manual_seed(0)
    common.log(f"estimator: distilling {scfg['arch']} for {cfg['epochs']} epochs")
    history, _ = common.train(student, rec, data, t_logits, epochs=cfg["epochs"], seed=0, on_epoch=measure)
    floor = noise_floor(cfg["noise_steps"], cfg["noise_dim"])
    result = {
        "settings": cfg,
        "recipe": str(rec),
        "teacher": tinfo,
        "history": history,
        "points": points,
        "noise_floor": floor,
        "batch": common.BATCH,
    }
    return result, markdown(result)


def _g(x: float) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.3g}"


def markdown(result: dict[str, Any]) -> str:
    cfg, t = result["settings"], result["teacher"]
    lines = [
        f"Student `{cfg['student']['arch']}` (width {cfg['student']['width']}) distilled from a `{t['arch']}` teacher "
        f"({t['epochs']} epochs on {t['train']} images, test top-1 {common.pct(t['test_top1'])}) "
        f"on {cfg['train'] or 'all'} training images of `{cfg['data']}`, {cfg['epochs']} epochs, "
        f"batch {result['batch']}, lr {common.LR} cosine; "
        "recipe:",
        "",
        "```",
        result["recipe"],
        "```",
        "",
        "GSNR of the mini-batch gradient of each component (batch "
        f"{result['batch']}; the per-sample GSNR is about {result['batch']}× smaller). *stream in run*: the "
        "optimizer's stream estimate at the epoch's end; *frozen*: "
        f"{cfg['frozen_batches']} random batches at the epoch's final parameters; *stream at frozen*: those same "
        "gradients folded through a fresh stream estimator; *stream, centred*: the same with their mean removed "
        "(a true GSNR of 0).",
        "",
        "| epoch | test top-1 | component | stream in run | frozen | stream at frozen | stream, centred |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for p in result["points"]:
        for i, part in enumerate(PARTS):
            head = f"| {p['epoch']} | {common.pct(p['test_top1'])} " if i == 0 else "| | "
            lines.append(
                f"{head}| {part} | {_g(p['stream_in_run'][part])} | {_g(p['frozen'][part])} | "
                f"{_g(p['stream_at_frozen'][part])} | {_g(p['stream_centred'][part])} |"
            )
    lines += ["", "Order of the components, highest GSNR first:", ""]
    for p in result["points"]:
        same = "same" if p["order_stream"] == p["order_frozen"] else "**differs**"
        lines.append(
            f"- epoch {p['epoch']}: stream {' > '.join(p['order_stream'])}; frozen {' > '.join(p['order_frozen'])} "
            f"({same})"
        )
    lines += [
        "",
        "Floor: the stream estimator (decay 0.98, bias-corrected) on zero-mean Gaussian gradients of "
        f"{cfg['noise_dim']} coordinates (true GSNR 0), and the analytic expectation S/(1 − S):",
        "",
        "| steps | read | analytic |",
        "| ---: | ---: | ---: |",
        *[f"| {r['steps']} | {r['read']:.4f} | {r['analytic']:.4f} |" for r in result["noise_floor"]],
    ]
    return "\n".join(lines)
