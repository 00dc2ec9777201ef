"""``nox -s bench``: the speed and accuracy benchmarks, and one report.

Profiles: ``smoke`` (under a minute; CI runs it to keep the benchmark alive), ``default`` (at most ~15 minutes on a
2-core CPU: a miniature of ``long``), ``full`` (more epochs, data and seeds, one learning rate), ``long`` (about 50
minutes on a 2-core CPU: converged teachers, 24-epoch students with a step schedule, each method's learning rate
chosen on a validation split, 5 seeds, deepkd's default recipe with its ablations; its speed section is reduced to
the small CNN). Results go to ``--out`` (default ``bench-results/``):

- ``report.md``: where it comes from (machine, versions, commit, date, command line) and both tables;
- ``speed.json`` / ``speed.md``: time per step of each recipe and the side-by-side comparisons;
- ``accuracy.json`` (every run: config, seed, durations, curves; the machine, versions, commit, date and command
  line), ``accuracy.csv``, ``accuracy.md``;
- ``run.json``: where the report comes from and how long each part took (``--render`` rebuilds ``report.md``
  from it, ``speed.md`` and ``accuracy.json``, running nothing);
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


def _accuracy_section(out: Path) -> str:
    plots = "\n\n![test top-1 of each method (per epoch, or after the last epoch where only that was evaluated)]"
    plots += "(plots/accuracy.png)\n"
    if (out / "plots" / "dynamics.png").exists():
        plots += "\n![K, momenta and GSNR of the DeepKD rows](plots/dynamics.png)\n"
    return "## Accuracy\n\n" + (out / "accuracy.md").read_text() + plots


def write_report(out: Path, run: dict[str, Any]) -> Path:
    """``report.md`` from ``run`` (what :func:`main` records in ``run.json``) and the sections' files in ``out``."""
    sections = []
    if "speed" in run["timings"]:
        sections.append("## Speed\n\n" + (out / "speed.md").read_text())
    if "accuracy" in run["timings"]:
        sections.append(_accuracy_section(out))
    header = report_header(run["profile"], run["origin"], run["machine"], run["elapsed"], run["timings"])
    path = out / "report.md"
    path.write_text(header + "\n" + "\n\n".join(sections) + "\n")
    return path


def render(out: Path) -> Path:
    """Rebuild ``out``'s accuracy report and ``report.md`` from the files a run left there; runs nothing."""
    run = json.loads((out / "run.json").read_text())
    if "accuracy" in run["timings"]:
        accuracy.main(["--render", str(out)])
    return write_report(out, run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="deepkd benchmarks: speed and accuracy")
    parser.add_argument("--profile", choices=list(accuracy.PROFILES), default="default")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--only", choices=["speed", "accuracy"], help="run one of the two benchmarks")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--workers", type=int, help="accuracy runs in this many processes (default: the profile's)")
    parser.add_argument("--render", type=Path, metavar="DIR", help="rebuild DIR's reports from its files; run nothing")
    args = parser.parse_args(argv)
    if args.render:
        print(f"report: {render(args.render)}", file=sys.stderr)
        return 0
    common = ["--profile", args.profile, "--out", str(args.out)]
    if args.threads:
        common += ["--threads", str(args.threads)]
    start = time.perf_counter()
    run: dict[str, Any] = {"profile": args.profile, "machine": provenance.machine(), "origin": provenance.provenance()}
    timings: dict[str, float] = {}
    if args.only in (None, "speed"):
        print(f"== speed benchmark ({args.profile}) ==", file=sys.stderr, flush=True)
        speed_section(args.profile, args.out, args.threads)
        timings["speed"] = time.perf_counter() - start
    if args.only in (None, "accuracy"):
        print(f"== accuracy benchmark ({args.profile}) ==", file=sys.stderr, flush=True)
        t = time.perf_counter()
        accuracy.main(common + (["--workers", str(args.workers)] if args.workers is not None else []))
        timings["accuracy"] = time.perf_counter() - t
    run.update(elapsed=time.perf_counter() - start, timings=timings)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "run.json").write_text(json.dumps(run, indent=2, default=str))
    path = write_report(args.out, run)
    print(f"report: {path} ({run['elapsed']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
