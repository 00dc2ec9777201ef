"""Operators dispatched per training step, for each variant of :mod:`benchmarks.gpu`: the host's work, on any device.

On a GPU a small or mid-size model's eager step is bound by the host launching kernels (on the H200 of
``docs/benchmarks.md``: plain KD at batch 64 runs 9.5 ms eagerly and 3.9 ms captured), so the number of operators a
step dispatches predicts its eager time there; it does not depend on the batch size or on the device, so this
counts it on the CPU, where it costs seconds. Counted with :mod:`torch.profiler`: every ``aten::`` operator called
from Python or from autograd (not the operators it calls itself), without pure views (``view``, ``t``,
``unsqueeze``...), which launch no kernel. A ``torch._foreach_*`` operator counts once, as its CUDA fast path
launches once for a few dozen tensors (``tests/test_no_sync.py`` checks that deepkd's get that path).

Run: ``python -m benchmarks.ops [--setups cifar64,imagenet] [--out DIR]`` (tiny batches; under a minute on a CPU).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.gpu import SETUPS, build_models, official_recipe, step_variants

VIEWS = frozenset(
    "aten::" + name
    for name in [
        "view", "t", "unsqueeze", "squeeze", "select", "slice", "expand", "expand_as", "detach", "alias", "as_strided",
        "reshape", "_unsafe_view", "permute", "transpose", "unbind", "split", "chunk", "narrow", "lift_fresh",
        "_reshape_alias", "empty", "empty_like", "empty_strided", "resolve_conj", "resolve_neg", "contiguous",
        "numpy_T",
    ]
)


def count_ops(step: Any, x: torch.Tensor, y: torch.Tensor, steps: int = 3) -> tuple[float, dict[str, float]]:
    """Operators per step of ``step(x, y)`` (after two warm-up steps), and the most frequent ones."""
    for _ in range(2):
        step(x, y)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(x, y)
    names: collections.Counter[str] = collections.Counter()
    for event in prof.events():
        parent = event.cpu_parent
        if not event.name.startswith("aten::") or event.name in VIEWS:
            continue
        if parent is not None and parent.name.startswith("aten::"):
            continue  # called by another operator, not launched by the host's Python or autograd itself
        if event.name == "aten::to" and not event.cpu_children:
            continue  # a conversion to the dtype the tensor has: nothing runs
        names[event.name] += 1
    return sum(names.values()) / steps, {k: v / steps for k, v in names.most_common(12)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--setups", default="cifar64,imagenet")
    parser.add_argument("--out", type=Path, default=Path("bench-results/ops"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    for name in [s for s in args.setups.split(",") if s]:
        setup = SETUPS[name]
        shape = (3, 64, 64) if name == "imagenet" else setup.shape  # the operator count does not depend on sizes
        small = type(setup)(**{**setup.__dict__, "batch": 2, "shape": shape})
        models = build_models(small, torch.device("cpu"))
        rows = {}
        variants = step_variants(models, official_recipe(name), captured=False, foreach=True)  # as on CUDA
        for variant, make in variants.items():
            total, top = count_ops(make().step, models.x, models.y)
            rows[variant] = {"ops": total, "top": top}
            print(f"[ops] {name} {variant}: {total:.0f}", file=sys.stderr, flush=True)
        results[name] = rows
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ops.json").write_text(json.dumps(results, indent=2))
    lines = ["| variant | " + " | ".join(results) + " |", "| --- |" + " ---: |" * len(results)]
    for variant in next(iter(results.values())):
        lines.append(f"| {variant} | " + " | ".join(f"{rows[variant]['ops']:.0f}" for rows in results.values()) + " |")
    md = "\n".join(lines)
    (args.out / "ops.md").write_text(md + "\n")
    print(md)
    return results


if __name__ == "__main__":
    main()
