"""``nox -s bench``: the speed and accuracy benchmarks, and one report.

Profiles: ``smoke`` (under a minute; CI runs it to keep the benchmark alive), ``default`` (at most ~15 minutes on a
2-core CPU), ``full`` (more epochs, data and seeds), ``long`` (at most 45 minutes on a 2-core CPU: 24-epoch runs
with a step schedule, a validation split, deepkd's default recipe with its ablations and candidate settings; its
speed section is reduced to the small CNN). Results go to ``--out`` (default ``bench-results/``):

- ``report.md``: where it comes from (machine, versions, commit, date, command line) and both tables;
- ``speed.json`` / ``speed.md``: time per step of each recipe and the side-by-side comparisons;
- ``accuracy.json`` (every run: config, seed, durations, curves; the machine, versions, commit, date and command
  line), ``accuracy.csv``, ``accuracy.md``;
- ``plots/``: ``accuracy.png``, ``gsnr.png``, ``momentum.png``, ``mask.png``, ``dynamics.png`` (and
  ``validation.png`` with a validation split).

A missing data set is reported with its install command and skipped; the rest still runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import accuracy, provenance, speed

# the speed section of each profile: a profile of benchmarks.speed, or sizes of its own (setup: batch, rounds, steps)
SPEED: dict[str, str | dict[str, Any]] = {
    "smoke": "smoke",
    "default": "default",
    "full": "full",
    # the small CNN alone (the accuracy benchmark's kind of model), 5 rounds of 2 steps: under a minute on 2 cores
    "long": {"setups": {"small": (128, 5, 2)}},
}


def speed_section(profile: str, out: Path, threads: int | None) -> dict[str, Any]:
    """Run the speed benchmark as ``profile`` asks; writes ``speed.json``/``speed.md`` as ``benchmarks.speed`` does."""
    spec = SPEED.get(profile, profile)
    if isinstance(spec, str):
        return speed.main(["--profile", spec, "--out", str(out), *(["--threads", str(threads)] if threads else [])])
    if threads:
        import torch

        torch.set_num_threads(threads)
    results = []
    for setup in spec["setups"]:
        print(f"[speed] {setup} ...", file=sys.stderr, flush=True)
        results.append(speed.bench_setup(setup, spec))
    report = {"machine": speed.machine(), "profile": profile, "results": results}
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(report, indent=2))
    md = speed.markdown(results)
    (out / "speed.md").write_text(md)
    print(md)
    return report


def report_header(
    profile: str, origin: dict[str, Any], machine: dict[str, Any], elapsed: float, timings: dict[str, float]
) -> str:
    """``report.md``'s title and where the report comes from (:mod:`benchmarks.provenance`), then the wall time."""
    parts = ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items())
    return (
        f"# deepkd benchmark report ({profile})\n\n"
        + provenance.markdown(origin, machine)
        + f"\nWall time {elapsed / 60:.1f} min ({parts}).\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="deepkd benchmarks: speed and accuracy")
    parser.add_argument("--profile", choices=list(accuracy.PROFILES), default="default")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--only", choices=["speed", "accuracy"], help="run one of the two benchmarks")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--workers", type=int, help="accuracy runs in this many processes (default: the profile's)")
    args = parser.parse_args(argv)
    common = ["--profile", args.profile, "--out", str(args.out)]
    if args.threads:
        common += ["--threads", str(args.threads)]
    start = time.perf_counter()
    sections = []
    machine, origin = provenance.machine(), provenance.provenance()
    timings = {}
    if args.only in (None, "speed"):
        print(f"== speed benchmark ({args.profile}) ==", file=sys.stderr, flush=True)
        report = speed_section(args.profile, args.out, args.threads)
        sections.append("## Speed\n\n" + speed.markdown(report["results"]))
        timings["speed"] = time.perf_counter() - start
    if args.only in (None, "accuracy"):
        print(f"== accuracy benchmark ({args.profile}) ==", file=sys.stderr, flush=True)
        t = time.perf_counter()
        accuracy.main(common + (["--workers", str(args.workers)] if args.workers is not None else []))
        timings["accuracy"] = time.perf_counter() - t
        plots = "\n\n![test accuracy per epoch](plots/accuracy.png)\n"
        if (args.out / "plots" / "dynamics.png").exists():
            plots += "\n![K, momenta and GSNR of the DeepKD rows](plots/dynamics.png)\n"
        sections.append("## Accuracy\n\n" + (args.out / "accuracy.md").read_text() + plots)
    elapsed = time.perf_counter() - start
    header = report_header(args.profile, origin, machine, elapsed, timings)
    (args.out / "report.md").write_text(header + "\n" + "\n\n".join(sections) + "\n")
    print(f"report: {args.out / 'report.md'} ({elapsed:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
