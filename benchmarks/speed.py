"""Speed benchmark: time per training step of each recipe, side by side in one process.

Every variant runs on the same models and batch; variants are timed round-robin (each repeat times every variant
once) and the median over repeats is reported, so slow drifts of a shared machine hit all variants alike. Ratios
are to the KD step (one gradient product, plain SGD) of the same setup.

What is measured, per setup:
- each recipe's full step (student forward, teacher forward, loss parts, gradient products, update);
- the DeepKD step's *floor*: student forward + teacher forward + the loss parts + three gradient products, no
  optimizer work;
- the official code's pattern: three ``backward(retain_graph=True)`` calls and a per-parameter momentum loop;
- sequential against batched decomposition; ``torch._foreach_*`` against per-tensor updates (and the update alone);
- teacher logits precomputed (the teacher-logit cache) against a teacher forward; bf16 autocast against float32;
- the per-step input checks: every step, the default (``auto``), and none;
- memory per recipe, counted exactly: momentum buffers and GSNR state (kept between steps) and the per-group
  gradients a step holds, against the parameters' own memory;
- the GSNR estimator's cost: a step that estimates GSNR (``interval=1``: the split estimator's extra gradient
  products on every step) against the same recipe between estimates; the amortised cost at an interval of N steps
  is the difference divided by N, as a share of the step.

Run: ``python -m benchmarks.speed --profile smoke`` (or via ``nox -s bench``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

import deepkd
from deepkd import decompose as D
from deepkd import momentum as MO
from deepkd.models import build_model

PROFILES: dict[str, dict[str, Any]] = {
    # per setup: batch size, repeats (rounds of the round robin) and steps per timing
    "smoke": {"setups": {"small": (32, 2, 1)}},
    "default": {"setups": {"small": (128, 7, 3), "cifar": (32, 3, 2), "resnet18": (16, 3, 2)}},
    "full": {"setups": {"small": (128, 15, 5), "cifar": (64, 7, 3), "resnet18": (32, 7, 3)}},
}

SETUPS: dict[str, dict[str, Any]] = {
    "small": dict(student="small_cnn", teacher="small_resnet", shape=(1, 28, 28), classes=10, batch=128),
    "cifar": dict(student="resnet8x4", teacher="resnet32x4", shape=(3, 32, 32), classes=100, batch=64),
    # torchvision ResNet18 student and ResNet34 teacher; 64x64 inputs keep a CPU run in minutes (224 on a GPU).
    "resnet18": dict(student="resnet18", teacher="resnet34", shape=(3, 64, 64), classes=100, batch=32),
}

RECIPES: dict[str, deepkd.Recipe] = {
    "kd": deepkd.compose(loss="kd", momentum="sgd", mask="none"),
    "dkd": deepkd.compose(loss="dkd", momentum="sgd", mask="none"),
    "dot": deepkd.compose(loss="kd", momentum="dot", mask="none"),
    # official deltas (+.075, -.075, +.075): task and NCKD share a coefficient, so two products
    "deepkd_fixed": deepkd.compose(loss="kd", momentum="fixed", mask="none"),
    # three distinct deltas: three products, no GSNR: the baseline against which GSNR's cost is measured
    "deepkd_fixed3": deepkd.compose(
        loss="kd", momentum=deepkd.FixedOffsets(tog=0.075, tcg=-0.075, ncg=0.05), mask="none"
    ),
    "deepkd_gsnr": deepkd.compose(loss="dkd", momentum="gsnr", mask="dynamic"),
    "deepkd_official": deepkd.compose(
        loss=deepkd.KD(split="official"), momentum=deepkd.FixedOffsets(reference_quirks=True), mask="none"
    ),
}


class Bench:
    """Round-robin timer of named step functions."""

    def __init__(self, repeats: int, steps: int, sync: Callable[[], None] = lambda: None) -> None:
        self.repeats, self.steps, self.sync = repeats, steps, sync
        self.variants: dict[str, Callable[[], None]] = {}

    def add(self, name: str, fn: Callable[[], None]) -> None:
        self.variants[name] = fn

    def run(self) -> dict[str, float]:
        for fn in self.variants.values():  # warm-up (allocator, lazy init, kernel selection)
            fn()
        self.sync()
        times: dict[str, list[float]] = {name: [] for name in self.variants}
        for _ in range(self.repeats):
            for name, fn in self.variants.items():
                start = time.perf_counter()
                for _ in range(self.steps):
                    fn()
                self.sync()  # CUDA runs asynchronously: wait for the work before reading the clock
                times[name].append((time.perf_counter() - start) / self.steps)
        return {name: statistics.median(ts) for name, ts in times.items()}


def _official_pattern(
    student: nn.Module, lr: float, mu: float, wd: float
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]:
    """The official DeepKD code's step: three backward(retain_graph=True) calls, gradients copied out of .grad,
    then a per-parameter momentum loop (task, NCKD, TCKD buffers)."""
    params = [p for p in student.parameters() if p.requires_grad]
    bufs: list[list[torch.Tensor | None]] = [[None] * len(params) for _ in range(3)]
    loss_cfg = deepkd.KD(split="official")
    coeffs = (mu - 0.075, mu + 0.075, mu - 0.075)  # m_TCG for task and TCKD, m_NCG for NCKD

    def step(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> None:
        parts = loss_cfg.parts(student(x), t, y)
        grads = []
        for i, name in enumerate(("task", "nckd", "tckd")):
            for p in params:
                p.grad = None
            parts[name].backward(retain_graph=i < 2)
            grads.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params])
        with torch.no_grad():
            for b, (m, gs) in enumerate(zip(coeffs, grads)):
                for j, (p, g) in enumerate(zip(params, gs)):
                    if b == 2 and wd:
                        g = g.add(p, alpha=wd)
                    buf = bufs[b][j]
                    if buf is None:
                        buf = bufs[b][j] = g.clone()
                    else:
                        buf.mul_(m).add_(g)
                    p.add_(buf, alpha=-lr)

    return step


def _state_bytes(opt: deepkd.DistillOptimizer) -> tuple[int, int]:
    def size(ts: Any) -> int:
        if isinstance(ts, torch.Tensor):
            return ts.numel() * ts.element_size()
        if isinstance(ts, (tuple, list)):
            return sum(size(t) for t in ts)
        return 0

    momentum = sum(size(s.buffers) for s in opt.momentum_states)
    return momentum, size(opt.rule_state)  # the offset rule's state: the GSNR estimates, when measured


def bench_setup(name: str, profile: dict[str, Any], seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """Time every variant on one setup (``SETUPS[name]``, sizes from ``profile``) on ``device``."""
    cfg = {**SETUPS[name], **profile.get("overrides", {}).get(name, {})}
    dev = torch.device(device)
    torch.manual_seed(seed)
    classes = cfg["classes"]
    in_ch = cfg["shape"][0]
    kwargs = {"in_channels": in_ch} if not cfg["student"].startswith("resnet1") else {}
    student = build_model(cfg["student"], classes, **kwargs).to(dev)
    teacher = build_model(cfg["teacher"], classes, **kwargs).to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    batch, repeats, steps = profile["setups"][name]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *cfg["shape"], generator=gen).to(dev)
    y = torch.randint(0, classes, (batch,), generator=gen).to(dev)
    with torch.no_grad():
        t_cached = teacher(x)
    params = [p for p in student.parameters()]
    param_bytes = sum(p.numel() * p.element_size() for p in params)

    bench = Bench(repeats, steps, sync=torch.cuda.synchronize if dev.type == "cuda" else lambda: None)
    opts: dict[str, deepkd.DistillOptimizer] = {}

    def recipe_step(opt: deepkd.DistillOptimizer, cached: bool = False, amp: bool = False) -> Callable[[], None]:
        def step() -> None:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                if cached:
                    t = t_cached
                else:
                    with torch.inference_mode():
                        t = teacher(x)
                    t = t.clone()
                s = student(x)
            opt.distill_step(s, t, y, epoch=1)

        return step

    for rname, recipe in RECIPES.items():
        opts[rname] = deepkd.DistillOptimizer(student.parameters(), recipe, lr=1e-4, weight_decay=5e-4)
        bench.add(rname, recipe_step(opts[rname]))
    gsnr_recipe = RECIPES["deepkd_gsnr"]
    bench.add(
        "deepkd_gsnr[batched]",
        recipe_step(deepkd.DistillOptimizer(student.parameters(), gsnr_recipe, lr=1e-4, decomposition="batched")),
    )
    bench.add(
        "deepkd_gsnr[foreach]",
        recipe_step(deepkd.DistillOptimizer(student.parameters(), gsnr_recipe, lr=1e-4, foreach=True)),
    )
    every = gsnr_recipe.replace(momentum=attrs.evolve(gsnr_recipe.momentum, interval=1))
    bench.add(
        "deepkd_gsnr[estimate every step]", recipe_step(deepkd.DistillOptimizer(student.parameters(), every, lr=1e-4))
    )
    bench.add(
        "kd[cached teacher]",
        recipe_step(deepkd.DistillOptimizer(student.parameters(), RECIPES["kd"], lr=1e-4), cached=True),
    )
    bench.add(
        "deepkd_gsnr[cached teacher]",
        recipe_step(deepkd.DistillOptimizer(student.parameters(), gsnr_recipe, lr=1e-4), cached=True),
    )
    bench.add("kd[bf16]", recipe_step(deepkd.DistillOptimizer(student.parameters(), RECIPES["kd"], lr=1e-4), amp=True))
    # input checks: the default ("auto", the "kd" row) reads the labels back every step on the CPU and on the first
    # step only on CUDA; True reads them every step, False checks nothing
    for check in (True, False):
        opt = deepkd.DistillOptimizer(student.parameters(), RECIPES["kd"], lr=1e-4, check_inputs=check)
        bench.add(f"kd[check_inputs={check}]", recipe_step(opt))
    bench.add(
        "deepkd_gsnr[bf16]", recipe_step(deepkd.DistillOptimizer(student.parameters(), gsnr_recipe, lr=1e-4), amp=True)
    )

    floor_loss = deepkd.DKD()
    groups = (("task",), ("tckd",), ("nckd",))

    def floor() -> None:
        with torch.inference_mode():
            t = teacher(x)
        t = t.clone()
        parts = floor_loss.parts(student(x), t, y, epoch=1, keep=None)
        D.decompose(parts, groups, params)

    bench.add("floor[3 products]", floor)
    official = _official_pattern(student, lr=1e-4, mu=0.9, wd=5e-4)

    def official_step() -> None:
        with torch.inference_mode():
            t = teacher(x)
        official(x, t.clone(), y)

    bench.add("official pattern", official_step)

    # the update alone: three buffers over the student's parameters
    fake = [[torch.randn_like(p) for p in params] for _ in range(3)]
    shadow = [p.detach().clone() for p in params]
    states = {fe: MO.init(shadow, 3) for fe in (False, True)}

    def update(fe: bool) -> Callable[[], None]:
        def run() -> None:
            states[fe] = MO.update(
                states[fe], shadow, fake, (0.975, 0.825, 0.975), lr=1e-6, weight_decay=5e-4, foreach=fe
            )

        return run

    bench.add("update only[per-tensor]", update(False))
    bench.add("update only[foreach]", update(True))

    times = bench.run()
    kd = times["kd"]
    mom_bytes, gsnr_bytes = _state_bytes(opts["deepkd_gsnr"])
    memory = {}
    for rname, opt in opts.items():
        m, g = _state_bytes(opt)
        memory[rname] = {"state": m + g, "gradients": len(opt.plan.groups) * param_bytes}
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    return {
        "setup": name,
        "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        "cuda_peak_bytes": peak,
        "student": cfg["student"],
        "teacher": cfg["teacher"],
        "batch": batch,
        "input": list(cfg["shape"]),
        "student_params": sum(p.numel() for p in params),
        "seconds_per_step": times,
        "ratio_to_kd": {k: v / kd for k, v in times.items()},
        "products": {k: len(r.plan().groups) for k, r in RECIPES.items()},
        "param_bytes": param_bytes,
        "gsnr_state_bytes": gsnr_bytes,
        "momentum_state_bytes": mom_bytes,
        "memory": memory,
    }


def markdown(results: list[dict[str, Any]]) -> str:
    lines = []
    for res in results:
        lines.append(
            f"### {res['setup']} ({res.get('device', 'cpu')}): {res['student']} ← {res['teacher']}, "
            f"batch {res['batch']}, input {'×'.join(map(str, res['input']))}"
        )
        lines.append("")
        lines.append("| variant | products | ms / step | × KD step |")
        lines.append("| --- | ---: | ---: | ---: |")
        for name, sec in res["seconds_per_step"].items():
            base = name.split("[")[0]
            prods = res["products"].get(base, "")
            if name.startswith("floor"):
                prods = 3
            lines.append(f"| {name} | {prods} | {sec * 1e3:.2f} | {res['ratio_to_kd'][name]:.3f} |")
        t = res["seconds_per_step"]
        lines.append("")
        lines.append(f"- DeepKD (GSNR) step / its floor: **{t['deepkd_gsnr'] / t['floor[3 products]']:.3f}**")
        lines.append(
            f"- DeepKD (GSNR) step / official pattern: **{t['deepkd_gsnr'] / t['official pattern']:.3f}**; "
            f"official-code recipe / official pattern: "
            f"{t['deepkd_official'] / t['official pattern']:.3f}"
        )
        lines.append(
            f"- GSNR cost: gsnr step / fixed 3-product step = {t['deepkd_gsnr'] / t['deepkd_fixed3']:.3f}; "
            f"GSNR state = {100 * res['gsnr_state_bytes'] / res['param_bytes']:.2f}% of parameter memory"
        )
        extra = t["deepkd_gsnr[estimate every step]"] / t["deepkd_gsnr"] - 1
        interval = deepkd.GSNR().interval
        lines.append(
            f"- GSNR estimate: a step that estimates costs {1 + extra:.3f}× one that does not; amortised over the "
            f"default interval of {interval} steps: {100 * extra / interval:+.2f}% of a DeepKD step"
        )
        lines.append(
            f"- batched / sequential: {t['deepkd_gsnr[batched]'] / t['deepkd_gsnr']:.3f}; "
            f"foreach / per-tensor (step): {t['deepkd_gsnr[foreach]'] / t['deepkd_gsnr']:.3f}; "
            f"(update only): {t['update only[foreach]'] / t['update only[per-tensor]']:.3f}"
        )
        lines.append(
            f"- cached teacher / teacher forward: KD {t['kd[cached teacher]'] / t['kd']:.3f}, "
            f"DeepKD {t['deepkd_gsnr[cached teacher]'] / t['deepkd_gsnr']:.3f}; "
            f"bf16 / fp32: KD {t['kd[bf16]'] / t['kd']:.3f}, DeepKD {t['deepkd_gsnr[bf16]'] / t['deepkd_gsnr']:.3f}"
        )
        mib = 2**20
        mem = ", ".join(f"{k} {(v['state'] + v['gradients']) / mib:.1f}" for k, v in res["memory"].items())
        lines.append(
            f"- optimizer memory (MiB; state kept between steps + per-group gradients of a step), "
            f"parameters {res['param_bytes'] / mib:.1f}: {mem}"
        )
        lines.append("")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "deepkd": deepkd.__version__,
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
        "device": "cpu",
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=list(PROFILES), default="default")
    parser.add_argument("--setups", nargs="*", help="subset of setups: " + ", ".join(SETUPS))
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = PROFILES[args.profile]
    results = []
    for setup in args.setups or list(profile["setups"]):
        print(f"[speed] {setup} ...", file=sys.stderr, flush=True)
        res = bench_setup(setup, profile)
        results.append(res)
    report = {"machine": machine(), "profile": args.profile, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(report, indent=2))
    md = markdown(results)
    (args.out / "speed.md").write_text(md)
    print(md)
    return report


if __name__ == "__main__":
    main()
