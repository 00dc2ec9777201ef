"""The speed benchmark at realistic sizes on a CUDA GPU (sized to finish within 10 minutes on one H100/H200).

Setups: the CIFAR pair (resnet8x4 student, resnet32x4 teacher, 32×32) at batch 64 and 256, and torchvision
ResNet18 (student) / ResNet34 (teacher) at 224×224, batch 64 and 256. Every variant of :mod:`benchmarks.speed`
runs, side by side: each recipe's step against KD, the DeepKD step against its three-product floor and the official
code's pattern, batched against sequential decomposition, ``torch._foreach_*`` against per-tensor updates (the
optimizer picks foreach on CUDA by default), cached teacher logits, bf16 autocast; the report adds peak CUDA memory.

Run on a CUDA machine: ``python -m benchmarks.gpu --out bench-results/gpu``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks import speed

# (label, base setup, batch, input shape or None for the setup's own, repeats, steps)
GPU_SETUPS: list[tuple[str, str, int, tuple[int, int, int] | None, int, int]] = [
    ("cifar-b64", "cifar", 64, None, 7, 10),
    ("cifar-b256", "cifar", 256, None, 7, 5),
    ("resnet18-224-b64", "resnet18", 64, (3, 224, 224), 5, 5),
    ("resnet18-224-b256", "resnet18", 256, (3, 224, 224), 3, 3),
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/gpu"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--only", nargs="*", help="labels to run: " + ", ".join(s[0] for s in GPU_SETUPS))
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run this script on a GPU machine (or pass --device cpu to try it)")
    torch.backends.cudnn.benchmark = True
    results = []
    for label, base, batch, shape, repeats, steps in GPU_SETUPS:
        if args.only and label not in args.only:
            continue
        print(f"[gpu] {label} ...", file=sys.stderr, flush=True)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        profile = {
            "setups": {base: (batch, repeats, steps)},
            "overrides": {base: {"shape": shape}} if shape else {},
        }
        res = speed.bench_setup(base, profile, device=args.device)
        res["setup"] = label
        results.append(res)
    report = {"machine": {**speed.machine(), "device": args.device}, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2))
    md = speed.markdown(results)
    for res in results:
        if res.get("cuda_peak_bytes"):
            md += f"\n- {res['setup']}: peak CUDA memory {res['cuda_peak_bytes'] / 2**30:.2f} GiB (all variants)"
    (args.out / "gpu.md").write_text(md + "\n")
    print(md)
    return report


if __name__ == "__main__":
    main()
