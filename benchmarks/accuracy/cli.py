"""The command line: ``python -m benchmarks.accuracy --profile smoke|default|long|full`` (or ``nox -s bench``).

:func:`main` prepares each data set of the profile (data, teacher, teacher logits, recipes), runs every method
over the seeds, and writes ``accuracy.json`` (every run, the summary, and where the report comes from),
``accuracy.csv``, ``accuracy.md`` and ``plots/`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader

import deepkd
from benchmarks import provenance
from benchmarks.accuracy.data import Split, prepare
from benchmarks.accuracy.methods import METHODS, all_methods, label, recipes
from benchmarks.accuracy.plots import plots
from benchmarks.accuracy.pool import Job, execute
from benchmarks.accuracy.profiles import BATCH, MODELS, PROFILES, model, schedule_for, schedule_text
from benchmarks.accuracy.report import markdown, write_csv
from benchmarks.accuracy.runs import cache_speedup
from benchmarks.accuracy.stats import summarise
from benchmarks.accuracy.teachers import teacher_for, teacher_logits
from deepkd.errors import DataError
from deepkd.models import count_parameters
from deepkd.trainer import evaluate


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def parser() -> argparse.ArgumentParser:
    """The command line's options (``--profile``, ``--out``, ``--cache``, ``--threads``, ``--workers``, ``--seeds``,
    ``--methods``)."""
    import benchmarks.accuracy as package

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "deepkd" / "bench"
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.accuracy", description=(package.__doc__ or "").splitlines()[0]
    )
    p.add_argument("--profile", choices=list(PROFILES), default="default")
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument("--cache", type=Path, default=cache)
    p.add_argument("--threads", type=int, help="torch intra-op threads in all (default: torch's choice)")
    p.add_argument(
        "--workers", type=int, help="runs in this many processes, threads split among them (default: the profile's)"
    )
    p.add_argument("--seeds", type=int, help="number of seeds (default: the profile's)")
    p.add_argument("--methods", nargs="*", help="subset of methods: " + ", ".join(all_methods()))
    return p


class Prepared(NamedTuple):
    """A data set made ready for its runs: the runs' context (see :mod:`benchmarks.accuracy.pool`), its record for
    the report, every method's recipe, and the candidates left out (with why)."""

    context: dict[str, Any]
    info: dict[str, Any]
    book: dict[str, deepkd.Recipe]
    skipped: dict[str, str]


def _evaluate(net: torch.nn.Module, data: Any) -> float:
    return evaluate(net, DataLoader(data, batch_size=512), device=torch.device("cpu"))["test_top1"]


def _info(dataset: str, split: Split, teacher: torch.nn.Module, teacher_top1: float, profile: Mapping[str, Any]) -> Any:
    """A data set's record for the report: its models, sizes and teacher accuracy (schedule and warm-up added
    by the caller)."""
    train, val = split.train, split.val
    return {
        "teacher": MODELS[dataset]["teacher"][0],
        "student": MODELS[dataset]["student"][0],
        "teacher_params": count_parameters(teacher),
        "student_params": count_parameters(model(dataset, "student", split.classes, train.tensors[0][:1])),
        "teacher_top1": teacher_top1,
        "epochs": profile["epochs"],
        "train": len(train),
        "val": len(val) if val is not None else 0,
        "teacher_train": len(split.teacher_train),
        "test": len(split.test),
        "classes": split.classes,
    }


def setup(dataset: str, split: Split, profile: Mapping[str, Any], cache: Path, schedule: Any) -> Prepared:
    """The teacher (trained or from the cache), its logits, every method's recipe and the data set's record."""
    train, val, test, classes = split.train, split.val, split.test, split.classes
    data = (train, test, classes)
    teacher = teacher_for(dataset, profile, cache, (split.teacher_train, test, classes))
    teacher_top1 = _evaluate(teacher, test)
    logits = teacher_logits(dataset, data, teacher)
    skipped: dict[str, str] = {}
    book = recipes(classes, profile["epochs"], math.ceil(len(train) / BATCH), skipped)
    info = _info(dataset, split, teacher, teacher_top1, profile)
    info["schedule"] = schedule_text(schedule, profile["epochs"])
    dkd: Any = book["dkd"].loss
    info["dkd_warmup"] = dkd.warmup
    if val is not None:
        info["teacher_val_top1"] = _evaluate(teacher, val)
    if profile.get("cache_timing", True):
        info["kd_epoch_seconds"] = cache_speedup(dataset, data, teacher, logits)
    context = {"data": data, "val": val, "teacher": teacher, "logits": logits}
    return Prepared(context, info, book, skipped)


def _jobs(dataset: str, ready: Prepared, methods: list[str], profile: Mapping[str, Any], schedule: Any) -> list[Job]:
    """Every seed of every method (of ``methods``) that has a recipe, seed by seed."""
    book, epochs, seeds = ready.book, profile["epochs"], range(profile["seeds"])
    return [Job(dataset, m, book[m], seed, epochs, schedule) for seed in seeds for m in methods if m in book]


def _meta(args: argparse.Namespace, arguments: list[str], workers: int, threads: int) -> dict[str, Any]:
    """The report's record of this invocation, before any data set is prepared."""
    return {
        "profile": args.profile,
        "machine": provenance.machine(),
        "workers": workers,
        "threads_per_run": threads if workers > 1 else torch.get_num_threads(),
        "datasets": {},
        "skipped": {},
        "skipped_candidates": {},
        "provenance": {**provenance.provenance(), "arguments": arguments},
    }


def write(out: Path, meta: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Write ``accuracy.csv``, the plots, ``accuracy.json`` and ``accuracy.md`` (also printed); returns the report."""
    report: dict[str, Any] = {"meta": meta, "runs": runs}
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "accuracy.csv", runs)
    if runs:
        summary = summarise(runs)
        md = markdown(summary, meta)
        report["summary"] = summary
        report["plots"] = [str(p) for p in plots(runs, out / "plots")]
    else:
        md = "No accuracy runs: " + "; ".join(f"{k}: {v}" for k, v in meta["skipped"].items())
    for dataset, why in meta["skipped"].items():
        md += f"\n\n**{dataset} skipped**: {why}"
    (out / "accuracy.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "accuracy.md").write_text(md + "\n")
    print(md)
    return report


def main(argv: list[str] | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the accuracy benchmark as the command line ``argv`` (default: ``sys.argv``) asks; returns the report."""
    log = log or _log
    cli = parser()
    args = cli.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = dict(PROFILES[args.profile])
    if args.seeds:
        profile["seeds"] = args.seeds
    methods = args.methods or profile["methods"] or list(METHODS)
    unknown = [m for m in methods if m not in all_methods()]
    if unknown:
        cli.error(f"unknown methods {unknown}; known: {', '.join(all_methods())}")
    workers = args.workers if args.workers is not None else profile.get("workers", 1)
    threads = max(1, torch.get_num_threads() // max(1, workers))
    schedule = schedule_for(profile)
    meta = _meta(args, sys.argv[1:] if argv is None else list(argv), workers, threads)
    jobs: list[Job] = []
    contexts: dict[str, dict[str, Any]] = {}
    labels: dict[str, str] = {}
    setup_start = time.perf_counter()
    for dataset, sizes in profile["datasets"].items():
        try:
            split = prepare(dataset, sizes, profile.get("val_share", 0.0))
        except DataError as exc:
            log(f"[accuracy] skipping {dataset}: {exc}")
            meta["skipped"][dataset] = str(exc)
            continue
        ready = setup(dataset, split, profile, args.cache, schedule)
        meta["skipped_candidates"].update(ready.skipped)
        meta["datasets"][dataset] = ready.info
        contexts[dataset] = ready.context
        jobs += _jobs(dataset, ready, methods, profile, schedule)
        labels.update({m: label(m, ready.book) for m in methods if m in ready.book})
    if args.profile == "long" or profile.get("val_share"):
        meta["labels"] = labels
    meta["setup_seconds"] = time.perf_counter() - setup_start
    log(f"[accuracy] {len(jobs)} runs, {workers} worker(s) of {meta['threads_per_run']} thread(s)")
    run_start = time.perf_counter()
    runs = execute(jobs, contexts, workers, threads, log) if jobs else []
    meta["runs_seconds"] = time.perf_counter() - run_start
    return write(args.out, meta, runs)
