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
from collections.abc import Callable, Mapping, Sequence
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
from benchmarks.accuracy.profiles import (
    BATCH,
    LONG_REPORT,
    LR,
    LR_GRID,
    MODELS,
    PROFILES,
    ROOT,
    model,
    schedule_for,
    schedule_text,
)
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
    p.add_argument(
        "--device", default="cpu", help="cpu (default) or cuda: runs one at a time there, the data held on the GPU"
    )
    p.add_argument(
        "--render", type=Path, metavar="DIR", help="rewrite DIR's report from its accuracy.json; runs nothing"
    )
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


def setup(
    dataset: str, split: Split, profile: Mapping[str, Any], cache: Path, schedule: Any, device: str = "cpu"
) -> Prepared:
    """The teacher (trained or from the cache), its logits, every method's recipe and the data set's record."""
    train, val, test, classes = split.train, split.val, split.test, split.classes
    data = (train, test, classes)
    teacher = teacher_for(dataset, profile, cache, (split.teacher_train, test, classes), device)
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


def _jobs(
    dataset: str,
    ready: Prepared,
    methods: list[str],
    profile: Mapping[str, Any],
    schedule: Any,
    seeds: range,
    lrs: Callable[[str], Sequence[float]],
    device: str = "cpu",
) -> list[Job]:
    """Every seed of ``seeds`` of every method (of ``methods``) that has a recipe, at each of its learning rates
    ``lrs(method)``, seed by seed."""
    book, epochs, evaluate = ready.book, profile["epochs"], profile.get("evaluate", "epoch")
    return [
        Job(dataset, m, book[m], seed, epochs, schedule, lr, evaluate, device)
        for seed in seeds
        for m in methods
        if m in book
        for lr in lrs(m)
    ]


def _meta(args: argparse.Namespace, arguments: list[str], workers: int, threads: int) -> dict[str, Any]:
    """The report's record of this invocation, before any data set is prepared."""
    return {
        "profile": args.profile,
        "machine": provenance.machine(),
        "workers": workers,
        "device": args.device,
        "threads_per_run": threads if workers > 1 else torch.get_num_threads(),
        "datasets": {},
        "skipped": {},
        "skipped_candidates": {},
        "provenance": {**provenance.provenance(), "arguments": arguments},
    }


def choose_lrs(selection: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per data set and method, the learning rate whose run has the highest final VALIDATION top-1 (a diverged run
    counts as the lowest; on a tie the smaller rate). No test figure enters the choice."""
    best: dict[str, dict[str, tuple[float, float]]] = {}
    for r in selection:
        score = r.get("final_val_top1", -1.0) if "error" not in r else -1.0
        current = best.setdefault(r["dataset"], {}).get(r["method"])
        if current is None or (score, -r["lr"]) > (current[0], -current[1]):
            best[r["dataset"]][r["method"]] = (score, r["lr"])
    return {d: {m: lr for m, (_, lr) in methods.items()} for d, methods in best.items()}


def lr_for(chosen: Mapping[str, Mapping[str, float]] | None, dataset: str, method: str) -> float:
    """The learning rate of ``method`` on ``dataset``: the long profile's choice when there is one, else :data:`LR`."""
    return float(chosen.get(dataset, {}).get(method, LR)) if chosen else LR


def chosen_lrs() -> dict[str, dict[str, float]] | None:
    """The learning rates the committed long-profile report chose on validation (:data:`LONG_REPORT`), or None (and
    a note) when that report is absent."""
    if not LONG_REPORT.exists():
        _log(f"[accuracy] {LONG_REPORT} not found: every method at lr {LR}")
        return None
    return json.loads(LONG_REPORT.read_text())["meta"]["lr_choice"]


def render(out: Path) -> dict[str, Any]:
    """Rewrite ``out``'s ``accuracy.md``, ``accuracy.csv`` and plots from its ``accuracy.json`` (nothing is run)."""
    report = json.loads((out / "accuracy.json").read_text())
    return write(out, report["meta"], report["runs"], report.get("selection", []))


def write(
    out: Path, meta: dict[str, Any], runs: list[dict[str, Any]], selection: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Write ``accuracy.csv``, the plots, ``accuracy.json`` and ``accuracy.md`` (also printed); returns the report.

    ``runs`` are the runs the figures come from (each method at its learning rate); ``selection`` the runs that
    chose the learning rates on validation, when the profile chose them."""
    report: dict[str, Any] = {"meta": meta, "runs": runs}
    if selection:
        report["selection"] = selection
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "accuracy.csv", runs)
    if runs:
        summary = summarise(runs)
        md = markdown(summary, meta, selection or [])
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
    if args.render:
        return render(args.render)
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
    if args.device != "cpu":
        workers = 1  # one process drives the accelerator; the runs go one after the other
    threads = max(1, torch.get_num_threads() // max(1, workers))
    schedule = schedule_for(profile)
    meta = _meta(args, sys.argv[1:] if argv is None else list(argv), workers, threads)
    prepared: dict[str, Prepared] = {}
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
        ready = setup(dataset, split, profile, args.cache, schedule, args.device)
        meta["skipped_candidates"].update(ready.skipped)
        meta["datasets"][dataset] = ready.info
        contexts[dataset] = ready.context
        prepared[dataset] = ready
        labels.update({m: label(m, ready.book) for m in methods if m in ready.book})
    if args.profile == "long" or profile.get("val_share"):
        meta["labels"] = labels
    meta["setup_seconds"] = time.perf_counter() - setup_start
    log(f"[accuracy] {workers} worker(s) of {meta['threads_per_run']} thread(s)")
    run_start = time.perf_counter()
    lr_mode = profile.get("lr")

    def run(seeds: range, lrs: Callable[[str, str], Sequence[float]]) -> list[dict[str, Any]]:
        jobs = [
            job
            for dataset, ready in prepared.items()
            for job in _jobs(
                dataset, ready, methods, profile, schedule, seeds, lambda m, d=dataset: lrs(d, m), args.device
            )
        ]
        log(f"[accuracy] {len(jobs)} runs")
        return execute(jobs, contexts, workers, threads, log) if jobs else []

    selection: list[dict[str, Any]] = []
    if lr_mode == "grid":
        selection = run(range(1), lambda d, m: LR_GRID)
        choice = choose_lrs(selection)
        meta["lr_grid"], meta["lr_choice"] = list(LR_GRID), choice
        runs = [r for r in selection if r["lr"] == choice[r["dataset"]][r["method"]]]
        runs += run(range(1, profile["seeds"]), lambda d, m: [choice[d][m]])
    else:
        chosen = chosen_lrs() if lr_mode == "chosen" else None
        if chosen is not None:
            meta["lr_choice"], meta["lr_source"] = chosen, str(LONG_REPORT.relative_to(ROOT))
        runs = run(range(profile["seeds"]), lambda d, m: [lr_for(chosen, d, m)])
    meta["runs_seconds"] = time.perf_counter() - run_start
    return write(args.out, meta, runs, selection)
