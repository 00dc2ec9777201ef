"""GPU speed benchmark: deepkd's step against plain-PyTorch references, syncs per step, and the epoch time.

Sized to finish in under 4 minutes on one H100/H200 with the default arguments (a time budget, ``--budget``,
shortens the timing rounds and skips what no longer fits, recorded as skipped). Three parts (``--parts``):

``steps``: milliseconds per training step, median of 5 rounds × 10 steps after 5 warm-up steps, every variant
timed round-robin in one process (each round times every variant once, so the machine's drift hits all alike),
with ``torch.cuda.Event``s (wall clock on the CPU); each variant trains its own copy of the student on one random
batch made once on the device. Setups (``--setups``): ``cifar64`` and ``cifar256``: CIFAR resnet32x4 → resnet8x4,
100 classes, 32×32, fp32, batch 64 / 256; ``imagenet``: torchvision ResNet34 → ResNet18, 1000 classes, 224×224,
batch 128, bf16 autocast, channels_last. Variants:

- ``plain KD``: the reference written without deepkd: teacher forward under no_grad, student forward, mdistiller's
  KD loss (0.1·CE + 0.9·T²·KL, T = 4), ``backward()``, ``torch.optim.SGD(foreach=True).step()``, ``zero_grad``;
- ``floor-3``: DeepKD's floor without deepkd: the same forwards, DKD's three parts in plain torch (CE, TCKD, 8·NCKD),
  three ``torch.autograd.grad`` calls, three momentum buffers updated with ``torch._foreach_*``;
- the deepkd recipes through ``DistillOptimizer.distill_step``: ``kd``, ``dkd``, ``dot``, ``deepkd`` (the default
  ``deepkd.compose()``: DKD loss, GSNR momentum, dynamic mask), ``deepkd[batched]`` and ``official`` (the
  ``deepkd_official`` preset of baselines/presets.py, the CIFAR or the ImageNet one);
- ``[captured]`` versions of plain KD and floor-3 (a manual ``torch.cuda.CUDAGraph``: warm-up on a side stream,
  static inputs, state updated in place) and of ``kd`` and ``deepkd`` (:class:`deepkd.capture.CapturedStep`).

``syncs``: host-device synchronisations per step of every non-captured variant (cifar64, 20 steps after warm-up,
counted as the warnings of ``torch.cuda.set_sync_debug_mode("warn")``, the first locations kept). CUDA only.

``epochs``: one epoch of resnet32x4 → resnet8x4 at batch 64 over 50,000 synthetic CIFAR-shaped images (uint8,
100 classes, the real CIFAR augmentation): ``deepkd.Trainer`` with KD and the default DeepKD, eager and with
``capture=True``, and the plain-PyTorch KD loop (eager and captured), each over a CPU DataLoader (8 workers,
pinned memory) and over deepkd's device-resident loader. Each variant first runs one untimed epoch over 1,024
images (cuDNN's algorithm choice, lazy initialisation, worker start-up); the timed epoch is the wall time of
``fit`` (or of the loop) between two ``torch.cuda.synchronize()``, one-off set-up and capture included, so that
240 × it bounds a 240-epoch run from above; ``steady`` extrapolates the steps after the 20th to a whole epoch.

Run on a CUDA machine: ``python -m benchmarks.gpu --out bench-results/gpu``; on any machine, a smoke run in
seconds: ``python -m benchmarks.gpu --device cpu --quick --out /tmp/gpu-smoke`` (tiny models and sizes, few
steps; the CUDA-only variants are recorded as errors). Writes ``gpu.json`` (every number, machine, versions,
commit, command) and ``gpu.md`` into ``--out`` and prints the tables last.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

import deepkd
from deepkd.callbacks import Callback
from deepkd.capture import CaptureWarning
from deepkd.data import unpack
from deepkd.errors import NonFiniteLossError
from deepkd.models import build_model
from deepkd.trainer import TrainConfig

LR, MOMENTUM, WD, T = 0.05, 0.9, 5e-4, 4.0
EPOCH = 30  # past DKD's 20 warm-up epochs
FLOOR_MOMENTA = (0.975, 0.825, 0.975)  # task, TCKD, NCKD buffers (DeepKD-like; the cost is the same for any)
ROOT = Path(__file__).resolve().parents[1]

Body = Callable[..., Any]  # body(x, y): one whole training step on a batch


@dataclass(frozen=True)
class Setup:
    teacher: str
    student: str
    classes: int
    shape: tuple[int, int, int]
    batch: int
    amp: bool = False  # bf16 autocast
    channels_last: bool = False

    def describe(self) -> str:
        precision = "bf16 autocast" if self.amp else "fp32"
        layout = ", channels_last" if self.channels_last else ""
        size = "×".join(map(str, self.shape))
        pair = f"{self.teacher} → {self.student}, {self.classes} classes"
        return f"{pair}, {size}, batch {self.batch}, {precision}{layout}"


SETUPS: dict[str, Setup] = {
    "cifar64": Setup("resnet32x4", "resnet8x4", 100, (3, 32, 32), 64),
    "cifar256": Setup("resnet32x4", "resnet8x4", 100, (3, 32, 32), 256),
    "imagenet": Setup("resnet34", "resnet18", 1000, (3, 224, 224), 128, amp=True, channels_last=True),
}
QUICK_SETUPS: dict[str, Setup] = {  # --quick: the same code paths at CPU-smoke sizes
    "cifar64": Setup("resnet14", "resnet8", 100, (3, 32, 32), 8),
    "cifar256": Setup("resnet14", "resnet8", 100, (3, 32, 32), 16),
    "imagenet": Setup("resnet14", "resnet8", 100, (3, 32, 32), 4, amp=True, channels_last=True),
}
# the share of --budget each setup's timing rounds may take (warm-up excluded; at least one round always runs)
STEP_SLICES = {"cifar64": 0.08, "cifar256": 0.08, "imagenet": 0.22}
RECIPES: dict[str, deepkd.Recipe] = {
    "kd": deepkd.compose(loss="kd", momentum="sgd", mask="none"),
    "dkd": deepkd.compose(loss="dkd", momentum="sgd", mask="none"),
    "dot": deepkd.compose(loss="kd", momentum="dot", mask="none"),
    "deepkd": deepkd.compose(),
}
CAPTURED = ("plain KD", "floor-3", "kd", "deepkd")


def official_recipe(setup_name: str) -> deepkd.Recipe:
    from baselines import presets

    return presets.imagenet("deepkd_official") if setup_name == "imagenet" else presets.cifar100("deepkd_official")


# ---------------------------------------------------------------------------------------------------- budget
class Deadline:
    """The script's wall-clock budget, counted from its start."""

    def __init__(self, seconds: float) -> None:
        self.start, self.seconds = time.perf_counter(), seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def allows(self, seconds: float) -> bool:
        return self.left() >= seconds


def log(deadline: Deadline, message: str) -> None:
    print(f"[gpu {deadline.elapsed():6.1f}s] {message}", flush=True)


def error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------- the steps
def forward_fn(teacher: nn.Module, student: nn.Module, amp: bool) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """Teacher (no_grad) and student forwards, under bf16 autocast when ``amp`` (its weight cache off, as a graph
    capture needs)."""
    device_type = next(student.parameters()).device.type

    def forwards(x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
            with torch.no_grad():
                t = teacher(x)
            s = student(x)
        return s, t

    return forwards


def kd_loss(s: Tensor, t: Tensor, y: Tensor) -> Tensor:
    """mdistiller's KD: 0.1·CE + 0.9·T²·KL(softmax(t/T) ‖ softmax(s/T)), T = 4."""
    kl = F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1), reduction="none").sum(1).mean()
    return 0.1 * F.cross_entropy(s, y) + 0.9 * T**2 * kl


def dkd_parts(s: Tensor, t: Tensor, y: Tensor, beta: float = 8.0) -> tuple[Tensor, Tensor, Tensor]:
    """DKD's three parts (mdistiller): CE; TCKD, T²·KL of the binary [p_y, 1 − p_y]; NCKD, β·T²·KL over the
    non-target classes (the target logit masked out)."""
    gt = torch.zeros_like(s).scatter_(1, y[:, None], 1.0)  # mdistiller's target mask
    ps, pt = F.softmax(s / T, dim=1), F.softmax(t / T, dim=1)
    ps_y, pt_y = (ps * gt).sum(1, keepdim=True), (pt * gt).sum(1, keepdim=True)
    bs, bt = torch.cat([ps_y, 1 - ps_y], 1), torch.cat([pt_y, 1 - pt_y], 1)
    tckd = F.kl_div(bs.clamp_min(1e-12).log(), bt, reduction="batchmean") * T**2
    log_ps2 = F.log_softmax(s / T - 1000.0 * gt, dim=1)
    pt2 = F.softmax(t / T - 1000.0 * gt, dim=1)
    nckd = beta * T**2 * F.kl_div(log_ps2, pt2, reduction="batchmean")
    return F.cross_entropy(s, y), tckd, nckd


def plain_kd(student: nn.Module, forwards: Callable[[Tensor], tuple[Tensor, Tensor]]) -> Body:
    """The plain-PyTorch KD step: one backward, ``torch.optim.SGD`` (foreach; its lr a float, so capturable)."""
    opt = torch.optim.SGD(student.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD, foreach=True)

    def body(x: Tensor, y: Tensor) -> None:
        s, t = forwards(x)
        kd_loss(s.float(), t.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return body


def floor3(student: nn.Module, forwards: Callable[[Tensor], tuple[Tensor, Tensor]]) -> Body:
    """DeepKD's floor in plain torch: three gradient products and three momentum buffers, foreach updates."""
    params = [p for p in student.parameters() if p.requires_grad]
    bufs = [[torch.zeros_like(p) for p in params] for _ in range(3)]

    def body(x: Tensor, y: Tensor) -> None:
        s, t = forwards(x)
        parts = dkd_parts(s.float(), t.float(), y)
        grads = [list(torch.autograd.grad(part, params, retain_graph=i < 2)) for i, part in enumerate(parts)]
        with torch.no_grad():
            grads[0] = torch._foreach_add(grads[0], params, alpha=WD)  # weight decay on the task gradient
            for buf, g, mu in zip(bufs, grads, FLOOR_MOMENTA):
                torch._foreach_mul_(buf, mu)
                torch._foreach_add_(buf, g)
                torch._foreach_add_(params, buf, alpha=-LR)

    return body


def deepkd_body(
    student: nn.Module, forwards: Callable[[Tensor], tuple[Tensor, Tensor]], recipe: deepkd.Recipe, **kwargs: Any
) -> tuple[Body, deepkd.DistillOptimizer]:
    opt = deepkd.DistillOptimizer(student.parameters(), recipe, lr=LR, momentum=MOMENTUM, weight_decay=WD, **kwargs)

    def body(x: Tensor, y: Tensor, *, epoch: int = EPOCH) -> deepkd.StepOutput:
        s, t = forwards(x)
        return opt.distill_step(s, t, y, epoch=epoch)

    return body, opt


class ManualGraph:
    """A step replayed as a hand-made CUDA graph: its first ``warmup`` calls run eagerly on a side stream, the next
    is captured (static copies of its inputs) and replayed; later calls copy their batch into the static inputs and
    replay, a batch of another shape runs eagerly."""

    def __init__(self, body: Body, warmup: int = 3) -> None:
        self.body, self.warmup, self.calls, self.replays, self.eager = body, warmup, 0, 0, 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[Tensor, Tensor] | None = None

    def __call__(self, x: Tensor, y: Tensor) -> None:
        if not x.is_cuda:
            raise RuntimeError("a CUDA graph needs a CUDA device")
        if self.graph is None and self.calls < self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.body(x, y)
            torch.cuda.current_stream().wait_stream(side)
            self.calls += 1
        elif self.graph is None:
            self.static = (x.clone(), y.clone())
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: a DataLoader's pin-memory thread may allocate while this thread captures
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.body(*self.static)
            self.graph.replay()
        elif self.static is not None and x.shape != self.static[0].shape:
            self.body(x, y)
            self.eager += 1
        else:
            assert self.static is not None
            self.static[0].copy_(x, non_blocking=True)
            self.static[1].copy_(y, non_blocking=True)
            self.graph.replay()
            self.replays += 1

    def info(self) -> dict[str, Any]:
        return {"captured": self.graph is not None, "replays": self.replays, "eager_after_capture": self.eager}


def captured_deepkd(body: Body, opt: deepkd.DistillOptimizer) -> tuple[Body, Callable[[], dict[str, Any]]]:
    """deepkd's own capture (:class:`deepkd.capture.CapturedStep`); kept in one place in case its API moves."""
    from deepkd.capture import CapturedStep

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CaptureWarning)  # the reason is recorded instead
        step = CapturedStep(body, opt)

    def run(x: Tensor, y: Tensor) -> Any:
        return step(x, y, epoch=EPOCH)

    def info() -> dict[str, Any]:
        return {"reason": step.reason, "captures": step.captures, "replays": step.replays}

    return run, info


# ---------------------------------------------------------------------------------------------------- the models
@dataclass
class Models:
    setup: Setup
    device: torch.device
    teacher: nn.Module
    student: nn.Module  # the initial student; every variant trains its own copy
    x: Tensor
    y: Tensor

    def student_copy(self) -> nn.Module:
        return copy.deepcopy(self.student)

    def forwards(self, student: nn.Module) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        return forward_fn(self.teacher, student, self.setup.amp)


def build_models(setup: Setup, device: torch.device, seed: int = 0) -> Models:
    torch.manual_seed(seed)
    fmt = torch.channels_last if setup.channels_last else torch.contiguous_format
    teacher = build_model(setup.teacher, setup.classes).to(device, memory_format=fmt).eval()
    teacher.requires_grad_(False)
    student = build_model(setup.student, setup.classes).to(device, memory_format=fmt).train()
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(setup.batch, *setup.shape, device=device, generator=gen).contiguous(memory_format=fmt)
    y = torch.randint(0, setup.classes, (setup.batch,), device=device, generator=gen)
    return Models(setup, device, teacher, student, x, y)


@dataclass
class Variant:
    step: Body  # step(x, y)
    info: Callable[[], dict[str, Any]] = lambda: {}
    student: nn.Module | None = None


def step_variants(
    m: Models, official: deepkd.Recipe, captured: bool = True, **optimizer: Any
) -> dict[str, Callable[[], Variant]]:
    """Factories of every step variant, each on its own copy of the student (``optimizer``: extra arguments of
    deepkd's optimizer, e.g. ``foreach=True`` to count a CUDA step's operators on the CPU)."""

    def reference(make: Callable[..., Body], capture: bool) -> Callable[[], Variant]:
        def build() -> Variant:
            student = m.student_copy()
            body = make(student, m.forwards(student))
            if not capture:
                return Variant(body, student=student)
            graph = ManualGraph(body)
            return Variant(graph, graph.info, student)

        return build

    def recipe(rec: deepkd.Recipe, capture: bool = False, **kwargs: Any) -> Callable[[], Variant]:
        def build() -> Variant:
            student = m.student_copy()
            body, opt = deepkd_body(student, m.forwards(student), rec, **optimizer, **kwargs)
            return Variant(*captured_deepkd(body, opt), student) if capture else Variant(body, student=student)

        return build

    out = {"plain KD": reference(plain_kd, False), "floor-3": reference(floor3, False)}
    out.update({name: recipe(rec) for name, rec in RECIPES.items()})
    out["deepkd[batched]"] = recipe(RECIPES["deepkd"], decomposition="batched")
    out["official"] = recipe(official)
    if captured:
        out["plain KD[captured]"] = reference(plain_kd, True)
        out["floor-3[captured]"] = reference(floor3, True)
        out["kd[captured]"] = recipe(RECIPES["kd"], True)
        out["deepkd[captured]"] = recipe(RECIPES["deepkd"], True)
        out["deepkd[batched][captured]"] = recipe(RECIPES["deepkd"], True, decomposition="batched")
    return out


def finite(student: nn.Module | None) -> bool | None:
    if student is None:
        return None
    return bool(all(torch.isfinite(p).all() for p in student.parameters()))


# ---------------------------------------------------------------------------------------------------- part 1: steps
@dataclass
class RoundRobin:
    """Warms every variant up, then times them round-robin: each round runs every variant's ``steps`` steps once,
    between CUDA events recorded on an idle device (wall clock on the CPU); rounds stop at ``rounds`` or, after the
    first, at ``stop_at`` (``time.perf_counter()``)."""

    device: torch.device
    rounds: int
    steps: int
    warmup: int
    stop_at: float = float("inf")
    say: Callable[[str], None] = print
    errors: dict[str, str] = field(default_factory=dict)

    def warm(self, factories: dict[str, Callable[[], Variant]], x: Tensor, y: Tensor) -> dict[str, Variant]:
        live = {}
        for name, make in factories.items():
            start = time.perf_counter()
            try:
                variant = make()
                for _ in range(self.warmup):
                    variant.step(x, y)
                synchronize(self.device)
                live[name] = variant
                self.say(f"{name}: warm ({time.perf_counter() - start:.1f} s)")
            except Exception as exc:
                self.errors[name] = error_text(exc)
                self.say(f"{name}: {self.errors[name]}")
        return live

    def _time(self, fn: Callable[[], Any]) -> Callable[[], float]:
        """Run ``fn`` ``steps`` times; returns the reader of the ms per step (read after the round's sync)."""
        synchronize(self.device)
        if self.device.type != "cuda":
            start = time.perf_counter()
            for _ in range(self.steps):
                fn()
            ms = (time.perf_counter() - start) * 1e3 / self.steps
            return lambda: ms
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(self.steps):
            fn()
        end.record()
        return lambda: begin.elapsed_time(end) / self.steps

    def run(self, live: dict[str, Variant], x: Tensor, y: Tensor) -> dict[str, list[float]]:
        times: dict[str, list[float]] = {name: [] for name in live}
        for r in range(self.rounds):
            if r and time.perf_counter() > self.stop_at:
                break
            readers = {}
            for name, variant in list(live.items()):
                try:
                    readers[name] = self._time(lambda v=variant: v.step(x, y))
                except Exception as exc:
                    self.errors[name] = error_text(exc)
                    del live[name], times[name]
            synchronize(self.device)
            for name, read in readers.items():
                times[name].append(read())
        return times


def bench_steps(name: str, setup: Setup, args: argparse.Namespace, deadline: Deadline) -> dict[str, Any]:
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    m = build_models(setup, dev)
    factories = step_variants(m, official_recipe(name))
    bench = RoundRobin(dev, args.rounds, args.steps, args.warmup, say=lambda msg: log(deadline, f"steps/{name}: {msg}"))
    live = bench.warm(factories, m.x, m.y)
    log(deadline, f"steps/{name}: {len(live)} variants warm, {len(bench.errors)} failed; timing")
    bench.stop_at = time.perf_counter() + STEP_SLICES[name] * args.budget
    times = bench.run(live, m.x, m.y)
    ms = {k: statistics.median(v) for k, v in times.items() if v}
    info = {k: v.info() for k, v in live.items() if v.info()}
    res = {
        "setup": name,
        "describe": setup.describe(),
        "config": asdict(setup),
        "student_params": sum(p.numel() for p in m.student.parameters()),
        "rounds": len(next(iter(times.values()), [])),
        "steps_per_round": args.steps,
        "warmup_steps": args.warmup,
        "timer": "cuda events" if dev.type == "cuda" else "wall clock",
        "variants": list(factories),
        "ms_per_step": ms,
        "ms_per_round": times,
        "ratios": step_ratios(ms),
        "errors": bench.errors,
        "capture": info,
        "finite_after": {k: finite(v.student) for k, v in live.items()},
        "cuda_peak_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
    }
    del live, factories, m
    return res


def ratio(ms: dict[str, float], a: str, b: str) -> float | None:
    return ms[a] / ms[b] if a in ms and b in ms and ms[b] > 0 else None


def step_ratios(ms: dict[str, float]) -> dict[str, float | None]:
    out = {
        "deepkd / floor-3": ratio(ms, "deepkd", "floor-3"),
        "deepkd kd / plain KD": ratio(ms, "kd", "plain KD"),
        "deepkd / plain KD": ratio(ms, "deepkd", "plain KD"),
        "batched / sequential deepkd": ratio(ms, "deepkd[batched]", "deepkd"),
        "official / deepkd": ratio(ms, "official", "deepkd"),
    }
    for name in CAPTURED:
        out[f"{name} captured / plain"] = ratio(ms, f"{name}[captured]", name)
    out["deepkd captured / floor-3 captured"] = ratio(ms, "deepkd[captured]", "floor-3[captured]")
    out["kd captured / plain KD captured"] = ratio(ms, "kd[captured]", "plain KD[captured]")
    out["batched / sequential deepkd, captured"] = ratio(ms, "deepkd[batched][captured]", "deepkd[captured]")
    return out


# ---------------------------------------------------------------------------------------------------- part 2: syncs
def count_syncs(step: Callable[[], Any], steps: int) -> tuple[float, list[str]]:
    """Synchronisations per step of ``step`` (CUDA's sync debug mode, as warnings) and where the first happen."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    where: list[str] = []
    for w in syncs:
        text = f"{w.filename}:{w.lineno}: {str(w.message).strip().splitlines()[0][:200]}"
        if text not in where and len(where) < 5:
            where.append(text)
    return len(syncs) / steps, where


def bench_syncs(args: argparse.Namespace, deadline: Deadline, steps: int = 20) -> dict[str, Any]:
    dev = torch.device(args.device)
    if dev.type != "cuda":
        return {"skipped": "n/a: sync counting needs CUDA"}
    name = "cifar64"
    m = build_models(setups(args)[name], dev)
    bench = RoundRobin(dev, 1, 1, args.warmup, say=lambda msg: log(deadline, f"syncs: {msg}"))
    live = bench.warm(step_variants(m, official_recipe(name), captured=False), m.x, m.y)
    rows: dict[str, Any] = {}
    for vname, variant in live.items():
        try:
            per_step, where = count_syncs(lambda v=variant: v.step(m.x, m.y), steps)
            rows[vname] = {"syncs_per_step": per_step, "first": where}
        except Exception as exc:
            rows[vname] = {"error": error_text(exc)}
    rows.update({k: {"error": e} for k, e in bench.errors.items()})
    log(deadline, "syncs: " + ", ".join(f"{k} {v.get('syncs_per_step', 'err')}" for k, v in rows.items()))
    return {"setup": name, "describe": m.setup.describe(), "steps": steps, "variants": rows}


# ---------------------------------------------------------------------------------------------------- part 3: epochs
class SyntheticCIFAR(Dataset):
    """CIFAR-shaped random images, laid out as torchvision's CIFAR100 (``data``: uint8 NHWC, ``targets``: list)."""

    def __init__(self, n: int, classes: int = 100, seed: int = 0, transform: Any = None) -> None:
        rng = np.random.default_rng(seed)
        self.data = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        self.targets: list[int] = rng.integers(0, classes, n).tolist()
        self.classes = [str(c) for c in range(classes)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        img: Any = Image.fromarray(self.data[i])
        return (self.transform(img) if self.transform is not None else img), self.targets[i]


def cpu_loader(data: Dataset, batch: int, device: torch.device, workers: int) -> DataLoader:
    return DataLoader(
        data,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),
    )


def device_loader(train: Dataset, test: Dataset, batch: int, device: torch.device) -> Iterable[Any]:
    """deepkd's device-resident training loader (:mod:`deepkd.data.device`): the one call to fix if it moves."""
    from deepkd.data.device import device_loaders

    train_loader, _test_loader = device_loaders(train, test, batch, device=device, seed=0)
    return train_loader


class Clock:
    """The timed epoch: wall time between synchronisations, and from step ``skip`` on (the steady rate)."""

    def __init__(self, device: torch.device, skip: int) -> None:
        self.device, self.skip, self.steps = device, skip, 0
        self.start = self.mark = self.end = 0.0

    def begin(self) -> None:
        synchronize(self.device)
        self.start = time.perf_counter()

    def step(self, n: int) -> None:
        self.steps = n
        if n == self.skip:
            synchronize(self.device)
            self.mark = time.perf_counter()

    def finish(self) -> dict[str, Any]:
        synchronize(self.device)
        self.end = time.perf_counter()
        epoch = self.end - self.start
        steady = (self.end - self.mark) * self.steps / (self.steps - self.skip) if self.steps > self.skip else None
        return {
            "steps": self.steps,
            "epoch_s": epoch,
            "steady_epoch_s": steady,
            "projected_240_min": 240 * epoch / 60,
            "projected_240_steady_min": 240 * steady / 60 if steady is not None else None,
        }


class ClockCallback(Callback):
    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def on_step_end(self, trainer: Any, out: Any) -> None:
        self.clock.step(trainer.global_step)


@dataclass
class EpochContext:
    device: torch.device
    teacher: nn.Module
    student: nn.Module
    train: SyntheticCIFAR
    warm: SyntheticCIFAR
    test: SyntheticCIFAR
    batch: int
    workers: int
    skip: int

    def student_copy(self) -> nn.Module:
        return copy.deepcopy(self.student)

    def loader(self, kind: str, data: SyntheticCIFAR) -> Iterable[Any]:
        if kind == "cpu":
            return cpu_loader(data, self.batch, self.device, self.workers)
        return device_loader(data, self.test, self.batch, self.device)


def trainer_epoch(ctx: EpochContext, method: str, capture: bool, loader: Iterable[Any], clock: Clock | None) -> dict:
    cfg = TrainConfig(
        epochs=1, lr=LR, device=ctx.device.type, progress=False, log_every=10**9, track_gsnr=False, capture=capture
    )
    callbacks = [ClockCallback(clock)] if clock is not None else []
    trainer = deepkd.Trainer(ctx.student_copy(), ctx.teacher, RECIPES[method], cfg, seed=0, callbacks=callbacks)
    if clock is not None:
        clock.begin()
    out: dict[str, Any] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CaptureWarning)  # its reason is recorded below
            trainer.fit(loader)
    except NonFiniteLossError as exc:  # raised at the epoch's end, after its steps: the time still counts
        out["nonfinite"] = error_text(exc)
    captured = getattr(trainer, "_captured", None)
    if captured is not None:
        out["capture_info"] = {"reason": captured.reason, "captures": captured.captures, "replays": captured.replays}
    return out


def reference_epoch(ctx: EpochContext, capture: bool, loader: Iterable[Any], clock: Clock | None) -> dict:
    student = ctx.student_copy()
    body = plain_kd(student, forward_fn(ctx.teacher, student, amp=False))
    step = ManualGraph(body) if capture else body
    if clock is not None:
        clock.begin()
    for i, batch in enumerate(loader, 1):
        x, y, _ = unpack(batch, ctx.device)
        step(x, y)
        if clock is not None:
            clock.step(i)
    return {"capture_info": step.info()} if isinstance(step, ManualGraph) else {}


def epoch_variant(ctx: EpochContext, method: str, capture: bool, kind: str) -> dict[str, Any]:
    """One untimed epoch over the warm-up set, then the timed epoch over the whole set."""
    run = (
        (lambda loader, clock: reference_epoch(ctx, capture, loader, clock))
        if method == "plain KD"
        else (lambda loader, clock: trainer_epoch(ctx, method, capture, loader, clock))
    )
    start = time.perf_counter()
    run(ctx.loader(kind, ctx.warm), None)
    synchronize(ctx.device)
    warm_s = time.perf_counter() - start
    clock = Clock(ctx.device, ctx.skip)
    info = run(ctx.loader(kind, ctx.train), clock)
    return {**clock.finish(), "warmup_s": warm_s, **info}


EPOCH_VARIANTS = [(capture, method) for capture in (False, True) for method in ("plain KD", "kd", "deepkd")]


def epoch_context(args: argparse.Namespace) -> EpochContext:
    from deepkd.data.vision import cifar100_transforms

    dev = torch.device(args.device)
    teacher_name, student_name = ("resnet14", "resnet8") if args.quick else ("resnet32x4", "resnet8x4")
    torch.manual_seed(0)
    teacher = build_model(teacher_name, 100).to(dev).eval().requires_grad_(False)
    student = build_model(student_name, 100).to(dev)
    train_tf, test_tf = cifar100_transforms(train=True), cifar100_transforms(train=False)
    warm_images = 64 if args.quick else 1024
    return EpochContext(
        dev,
        teacher,
        student,
        SyntheticCIFAR(args.epoch_images, seed=0, transform=train_tf),
        SyntheticCIFAR(warm_images, seed=1, transform=train_tf),
        SyntheticCIFAR(256 if args.quick else 1000, seed=2, transform=test_tf),
        batch=64,
        workers=2 if args.quick else 8,
        skip=2 if args.quick else 20,
    )


def bench_epochs(args: argparse.Namespace, deadline: Deadline) -> dict[str, Any]:
    ctx = epoch_context(args)
    rows: list[dict[str, Any]] = []
    for kind, (capture, method) in ((kind, v) for kind in args.loaders for v in EPOCH_VARIANTS):
        row: dict[str, Any] = {"variant": method + ("[captured]" if capture else ""), "loader": kind}
        rows.append(row)
        done = [r["epoch_s"] + r["warmup_s"] for r in rows if "epoch_s" in r]
        need = 1.5 * max(done) if done else 0.0
        if not deadline.allows(need):
            row["error"] = f"skipped: time budget ({deadline.left():.0f} s left, about {need:.0f} s needed)"
            continue
        try:
            row.update(epoch_variant(ctx, method, capture, kind))
            log(deadline, f"epochs: {row['variant']} / {kind} loader: {row['epoch_s']:.2f} s")
        except Exception as exc:
            row["error"] = error_text(exc)
            log(deadline, f"epochs: {row['variant']} / {kind} loader: {row['error']}")
    return {
        "images": args.epoch_images,
        "batch": ctx.batch,
        "teacher_student": "resnet14 → resnet8" if args.quick else "resnet32x4 → resnet8x4",
        "cpu_loader_workers": ctx.workers,
        "pin_memory": ctx.device.type == "cuda",
        "warmup_images": len(ctx.warm),
        "steady_from_step": ctx.skip,
        "variants": rows,
    }


# ---------------------------------------------------------------------------------------------------- report
def _git(*cmd: str) -> str | None:
    try:
        done = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True)
        return done.stdout.strip()
    except Exception:
        return None


def machine(device: torch.device, argv: list[str]) -> dict[str, Any]:
    import torchvision

    cuda = device.type == "cuda"
    props = torch.cuda.get_device_properties(device) if cuda else None
    status = _git("status", "--porcelain")
    return {
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "gpu_memory_gib": props.total_memory / 2**30 if props else None,
        "gpu_capability": f"{props.major}.{props.minor}" if props else None,
        "device": str(device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "deepkd": deepkd.__version__,
        "git_commit": os.environ.get("DEEPKD_COMMIT") or _git("rev-parse", "HEAD"),
        "git_dirty": (bool(status) if status is not None else None) if not os.environ.get("DEEPKD_COMMIT") else False,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, "-m", "benchmarks.gpu", *argv]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def steps_markdown(results: list[dict[str, Any]]) -> list[str]:
    names = list(dict.fromkeys(k for r in results for k in r["variants"]))
    rounds = ", ".join(f"{r['setup']} {r['rounds']}×{r['steps_per_round']}" for r in results)
    lines = [f"## Step time (ms / step, median over rounds × steps: {rounds}; timer: {results[0]['timer']})", ""]
    lines += [f"- {r['setup']}: {r['describe']}" for r in results] + [""]
    lines += ["| variant | " + " | ".join(r["setup"] for r in results) + " |"]
    lines += ["| --- |" + " ---: |" * len(results)]
    for name in names:
        cells = [fmt(r["ms_per_step"].get(name)) if name not in r["errors"] else "error" for r in results]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| ratio | " + " | ".join(r["setup"] for r in results) + " |"]
    lines += ["| --- |" + " ---: |" * len(results)]
    for key in results[0]["ratios"]:
        lines.append(f"| {key} | " + " | ".join(fmt(r["ratios"].get(key), 3) for r in results) + " |")
    notes = [f"- {r['setup']} / {k}: {v}" for r in results for k, v in r["capture"].items()]
    notes += [f"- {r['setup']} / {k}: **{v}**" for r in results for k, v in r["errors"].items()]
    return [*lines, "", *(["Capture and errors:", "", *notes, ""] if notes else [])]


def syncs_markdown(syncs: dict[str, Any]) -> list[str]:
    if "variants" not in syncs:
        return ["## Syncs per step", "", syncs.get("skipped") or syncs.get("error", "n/a"), ""]
    lines = [f"## Syncs per step ({syncs['setup']}, {syncs['steps']} steps after warm-up)", ""]
    lines += ["| variant | syncs / step | first sync at |", "| --- | ---: | --- |"]
    for name, row in syncs["variants"].items():
        where = row.get("error") or "<br>".join(row["first"]) or "–"
        lines.append(f"| {name} | {fmt(row.get('syncs_per_step'))} | {where} |")
    return [*lines, ""]


def epochs_markdown(ep: dict[str, Any]) -> list[str]:
    pinned = ", pinned memory" if ep["pin_memory"] else ""
    lines = [
        f"## Epoch time ({ep['teacher_student']}, batch {ep['batch']}, {ep['images']:,} synthetic CIFAR images)",
        "",
        f"CPU loader: {ep['cpu_loader_workers']} workers{pinned}. Each variant first runs an untimed epoch of "
        f'{ep["warmup_images"]} images. "epoch" is the whole fit (set-up and capture included); "steady" '
        f"extrapolates the steps after step {ep['steady_from_step']}.",
        "",
        "| variant | loader | s / epoch | steady s / epoch | 240 epochs (min) | steady 240 (min) | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in ep["variants"]:
        note = r.get("error") or r.get("nonfinite") or json.dumps(r.get("capture_info", "")).strip('"')
        lines.append(
            f"| {r['variant']} | {r['loader']} | {fmt(r.get('epoch_s'))} | {fmt(r.get('steady_epoch_s'))} | "
            f"{fmt(r.get('projected_240_min'), 1)} | {fmt(r.get('projected_240_steady_min'), 1)} | {note} |"
        )
    return [*lines, ""]


def markdown(report: dict[str, Any]) -> str:
    mc = report["machine"]
    lines = [
        f"# GPU benchmark: {mc['gpu'] or mc['device']}",
        "",
        f"torch {mc['torch']}, CUDA {mc['cuda']}, deepkd {mc['deepkd']}, "
        f"commit {(mc['git_commit'] or 'unknown')[:10]}{' (dirty)' if mc['git_dirty'] else ''}.",
        "",
        f"`{mc['command']}`, {mc['date']}, {report['wall_s']:.0f} s",
        "",
    ]
    if report.get("steps"):
        lines += steps_markdown(report["steps"])
    if "syncs" in report:
        lines += syncs_markdown(report["syncs"])
    if "epochs" in report:
        lines += epochs_markdown(report["epochs"]) if "variants" in report["epochs"] else [str(report["epochs"])]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main
def setups(args: argparse.Namespace) -> dict[str, Setup]:
    return QUICK_SETUPS if args.quick else SETUPS


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/gpu"))
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny models and sizes, few steps (a smoke run)")
    parser.add_argument("--parts", default="steps,syncs,epochs", help="comma-separated: steps, syncs, epochs")
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated: " + ", ".join(SETUPS))
    parser.add_argument("--budget", type=float, help="seconds for the whole run (default 225; --quick 60)")
    parser.add_argument("--rounds", type=int, help="timing rounds per setup (default 5; --quick 2)")
    parser.add_argument("--steps", type=int, help="steps per timed round (default 10; --quick 2)")
    parser.add_argument("--warmup", type=int, help="warm-up steps per variant (default 5; --quick 2)")
    parser.add_argument("--epoch-images", type=int, help="images in the timed epoch (default 50000; --quick 256)")
    parser.add_argument("--loaders", default="device,cpu", help="comma-separated, in this order: device, cpu")
    args = parser.parse_args(argv)
    q = args.quick
    for name, full, quick in (
        ("budget", 225.0, 60.0),
        ("rounds", 5, 2),
        ("steps", 10, 2),
        ("warmup", 5, 2),
        ("epoch_images", 50_000, 256),
    ):
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    args.parts = [p for p in args.parts.split(",") if p]
    args.setups = [s for s in args.setups.split(",") if s]
    args.loaders = [s for s in args.loaders.split(",") if s]
    if sorted({*args.loaders} - {"device", "cpu"}):
        parser.error(f"unknown loader in {args.loaders}: device, cpu")
    unknown = sorted({*args.parts} - {"steps", "syncs", "epochs"}) + sorted({*args.setups} - {*SETUPS})
    if unknown:
        parser.error(f"unknown part or setup: {', '.join(unknown)}")
    return args


def save(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(report, indent=2, default=str))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    deadline = Deadline(args.budget)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run this on a GPU machine, or pass --device cpu --quick")
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    report: dict[str, Any] = {"machine": machine(dev, argv), "args": {**vars(args), "out": str(args.out)}}
    log(deadline, f"{report['machine']['gpu'] or args.device}, torch {torch.__version__}, parts {args.parts}")
    if "steps" in args.parts:
        report["steps"] = []
        for name in args.setups:
            if report["steps"] and not deadline.allows(0.3 * args.budget):
                report["steps"].append({"setup": name, "skipped": "time budget"})
                continue
            try:
                res = bench_steps(name, setups(args)[name], args, deadline)
                log(deadline, f"steps/{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in res["ms_per_step"].items()))
            except Exception as exc:
                res = {"setup": name, "error": error_text(exc)}
                log(deadline, f"steps/{name}: {res['error']}")
            report["steps"].append(res)
            gc.collect()  # the variants' graphs, buffers and students
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            save(report | {"wall_s": deadline.elapsed()}, args.out)
        report["steps"] = [r for r in report["steps"] if "ms_per_step" in r] + [
            r for r in report["steps"] if "ms_per_step" not in r
        ]
    for part, fn in (("syncs", bench_syncs), ("epochs", bench_epochs)):
        if part not in args.parts:
            continue
        try:
            report[part] = fn(args, deadline)
        except Exception as exc:
            report[part] = {"error": error_text(exc)}
            log(deadline, f"{part}: {report[part]['error']}")
        save(report | {"wall_s": deadline.elapsed()}, args.out)
    report["wall_s"] = deadline.elapsed()
    save(report, args.out)
    md = markdown({**report, "steps": [r for r in report.get("steps", []) if "ms_per_step" in r]})
    failed = [r for r in report.get("steps", []) if "ms_per_step" not in r]
    md += "".join(f"\n- steps/{r['setup']}: {r.get('error') or r.get('skipped')}" for r in failed)
    (args.out / "gpu.md").write_text(md + "\n")
    log(deadline, f"wrote {args.out / 'gpu.json'} and {args.out / 'gpu.md'}")
    print(md, flush=True)
    return report


if __name__ == "__main__":
    main()
