"""The command line of the algorithm checks: one check per call, its JSON and markdown report written to ``--out``."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks import provenance
from benchmarks.algorithm import cliff, collapse, common, estimator

CHECKS: dict[str, Callable[[bool], tuple[dict[str, Any], str]]] = {
    "estimator": estimator.run,
    "collapse": collapse.run,
    "cliff": cliff.run,
}
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "docs" / "algorithm-checks"


def main(argv: Sequence[str] | None = None) -> tuple[Path, Path]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.algorithm", description=__doc__)
    parser.add_argument("check", choices=sorted(CHECKS))
    parser.add_argument("--quick", action="store_true", help="small data, seconds: the structure, not the effects")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report folder (default {DEFAULT_OUT})")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start, origin = time.perf_counter(), provenance.provenance()  # the code that runs is the commit checked out now
    result, body = CHECKS[args.check](args.quick)
    seconds = time.perf_counter() - start
    result["seconds"] = round(seconds, 1)
    body += f"\n\nThe check took {seconds:.0f} s."
    paths = common.write(args.out, args.check, args.quick, result, body, origin)
    common.log(f"{args.check}: {seconds:.0f} s; wrote {paths[0]} and {paths[1]}")
    return paths
