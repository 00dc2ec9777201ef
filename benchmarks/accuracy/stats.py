"""The statistics of the report: means and standard deviations over seeds, and differences paired by seed.

A run is a dict of :func:`benchmarks.accuracy.runs.run_method` (or a failed run: ``"error"`` instead of figures).
Failed runs are counted but left out of every figure.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

# Seed -> run, per method, of one data set
ByMethod = Mapping[str, Mapping[int, Mapping[str, Any]]]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for one value; both NaN for none)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> tuple[float, float, int]:
    """``a − b`` paired by seed over the seeds both have: (mean, standard error of the mean, number of pairs).

    The standard error is the sample std of the differences over √n (NaN for one pair; everything NaN for none)."""
    diffs = [a[s] - b[s] for s in a if s in b]
    if not diffs:
        return math.nan, math.nan, 0
    mean, std = mean_std(diffs)
    return mean, std / math.sqrt(len(diffs)), len(diffs)


def group(runs: list[dict[str, Any]], dataset: str) -> tuple[dict[str, dict[int, dict[str, Any]]], dict[str, int]]:
    """``dataset``'s runs: seed -> run per method (a method whose runs all failed has none), and failures per
    method; methods in the order of their first run."""
    by_method: dict[str, dict[int, dict[str, Any]]] = {}
    failed: dict[str, int] = {}
    for r in runs:
        if r["dataset"] == dataset:
            if "error" in r:
                failed[r["method"]] = failed.get(r["method"], 0) + 1
                by_method.setdefault(r["method"], {})
            else:
                by_method.setdefault(r["method"], {})[r["seed"]] = r
    return by_method, failed


def metric(by_method: ByMethod, method: str, key: str) -> dict[int, float]:
    """Seed -> ``key`` of ``method``'s runs (runs without it left out)."""
    return {s: r[key] for s, r in by_method.get(method, {}).items() if r.get(key) is not None}


def method_row(method: str, by_method: ByMethod, failed: int) -> dict[str, Any]:
    """One method's row: mean ± std of its figures, and its paired differences (mean, s.e.) from the references."""
    seeds = by_method[method]

    def spread(key: str) -> tuple[float, float]:
        return mean_std(list(metric(by_method, method, key).values()))

    def versus(key: str, reference: str) -> tuple[float, float]:
        mean, se, _ = paired_difference(metric(by_method, method, key), metric(by_method, reference, key))
        return mean, se

    times = [t for r in seeds.values() for t in r.get("epoch_time", [])]
    return {
        "method": method,
        "runs": len(seeds),
        "failed": failed,
        "recipe": next((r.get("recipe") for r in seeds.values()), None),
        "best": spread("best_top1"),
        "final": spread("final_top1"),
        "val_final": spread("final_val_top1"),
        "val_best": spread("best_val_top1"),
        "test_at_best_val": spread("test_at_best_val"),
        "vs_kd": versus("best_top1", "kd"),
        "final_vs_kd": versus("final_top1", "kd"),
        "final_vs_dkd": versus("final_top1", "dkd"),
        "val_vs_default": versus("final_val_top1", "deepkd_default"),
        "epoch_seconds": statistics.fmean(times) if times else math.nan,
        "lr": next((r["lr"] for r in seeds.values() if "lr" in r), None),
        "final_by_seed": metric(by_method, method, "final_top1"),
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per data set and method: mean ± std of best/final test top-1 (and validation top-1 when measured), paired
    differences (mean ± s.e.) from KD (best and final test top-1), from DKD (final test top-1), and from
    ``deepkd_default`` (final validation top-1). Failed runs are counted but left out of every figure."""
    out: dict[str, list[dict[str, Any]]] = {}
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        by_method, failed = group(runs, dataset)
        out[dataset] = [method_row(method, by_method, failed.get(method, 0)) for method in by_method]
    return out
