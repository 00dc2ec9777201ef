"""``nox -s bench``: the speed and accuracy benchmarks, and one report.

Profiles: ``smoke`` (under a minute; CI runs it to keep the benchmark alive), ``default`` (at most ~15 minutes on a
2-core CPU), ``full`` (more epochs, data and seeds). Results go to ``--out`` (default ``bench-results/``):

- ``report.md``: the machine, the commands, and both tables;
- ``speed.json`` / ``speed.md``: time per step of each recipe and the side-by-side comparisons;
- ``accuracy.json`` (every run: config, seed, durations, curves), ``accuracy.csv``, ``accuracy.md``;
- ``plots/``: ``accuracy.png``, ``gsnr.png``, ``momentum.png``, ``mask.png``.

A missing data set is reported with its install command and skipped; the rest still runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks import accuracy, speed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="deepkd benchmarks: speed and accuracy")
    parser.add_argument("--profile", choices=["smoke", "default", "full"], default="default")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--only", choices=["speed", "accuracy"], help="run one of the two benchmarks")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args(argv)
    common = ["--profile", args.profile, "--out", str(args.out)]
    if args.threads:
        common += ["--threads", str(args.threads)]
    start = time.perf_counter()
    sections = []
    machine = speed.machine()
    if args.only in (None, "speed"):
        print(f"== speed benchmark ({args.profile}) ==", file=sys.stderr, flush=True)
        report = speed.main(common)
        sections.append("## Speed\n\n" + speed.markdown(report["results"]))
    if args.only in (None, "accuracy"):
        print(f"== accuracy benchmark ({args.profile}) ==", file=sys.stderr, flush=True)
        accuracy.main(common)
        sections.append(
            "## Accuracy\n\n"
            + (args.out / "accuracy.md").read_text()
            + "\n\n![test accuracy per epoch](plots/accuracy.png)\n"
        )
    elapsed = time.perf_counter() - start
    header = (
        f"# deepkd benchmark report ({args.profile})\n\n"
        f"Machine: {machine['cpu']}, {machine['threads']} torch threads, Python {machine['python']}, "
        f"torch {machine['torch']}, deepkd {machine['deepkd']}. Wall time {elapsed / 60:.1f} min.\n\n"
        f"Command: `nox -s bench -- --profile {args.profile}`\n"
    )
    (args.out / "report.md").write_text(header + "\n" + "\n\n".join(sections) + "\n")
    print(f"report: {args.out / 'report.md'} ({elapsed:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
