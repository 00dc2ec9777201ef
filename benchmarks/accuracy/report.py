"""The written report: ``accuracy.md`` (a table per data set, the defaults chosen on validation, notes) and
``accuracy.csv`` (a row per run)."""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.accuracy.methods import ABLATIONS, CANDIDATES, describe_change
from benchmarks.accuracy.stats import paired_difference

Rows = list[dict[str, Any]]  # a data set's rows of :func:`benchmarks.accuracy.stats.summarise`

VALIDATED_COLUMNS = (
    "Columns: *best test* is the test top-1 of each run's best epoch on test (an oracle choice of epoch, "
    "as published 'best' figures are); *final test* is the test top-1 after the last epoch; *final val* is "
    "the top-1 after the last epoch on the validation split, carved from the training data (the only "
    "figure any choice is made on). Mean ± std over seeds; *final test − KD* and *final test − DKD* are "
    "differences of the final test top-1 paired by seed, mean ± standard error."
)
PLAIN_COLUMNS = "Mean ± std over seeds; best − KD is paired by seed, mean ± standard error."
SELECTION_INTRO = (
    "Each row is deepkd's default recipe with one setting changed (the ablations switch one axis off). The choice "
    "between a row and the default is made on the final **validation** top-1 only: *val* is its mean ± std over "
    "seeds, *Δ val* the row minus the default, paired by seed (mean ± s.e.). No test figure enters this "
    "table; the rows' test figures are in the tables above, for the record only."
)
CSV_COLUMNS = ["dataset", "method", "seed", "best_top1", "final_top1", "final_val_top1", "seconds", "student_params"]


def pm(pair: tuple[float, float] | list[float], scale: float = 100.0, sign: bool = False) -> str:
    """``mean ± spread`` in percent (``–`` for no figure; the mean alone without a spread)."""
    mean, spread = pair
    if mean is None or math.isnan(mean):
        return "–"
    text = f"{mean * scale:+.2f}" if sign else f"{mean * scale:.2f}"
    return text if spread is None or math.isnan(spread) else f"{text} ± {spread * scale:.2f}"


def _has_val(rows: Rows) -> bool:
    return any(not math.isnan(r["val_final"][0]) for r in rows)


def _runs(row: Mapping[str, Any]) -> str:
    return f"{row['runs']}" + (f" ({row['failed']} failed)" if row.get("failed") else "")


def _dataset_heading(dataset: str, info: Mapping[str, Any], own_lr: bool = False) -> str:
    val = f" / {info['val']} validation" if info.get("val") else ""
    if info.get("teacher_train") and info.get("teacher_train") != info.get("train"):
        val += f" (the teacher: {info['teacher_train']} training images, none of them validation images)"
    text = (
        f"### {dataset}: {info.get('teacher')} teacher ({info.get('teacher_top1', math.nan):.2%} test "
        f"top-1) → {info.get('student')} student, {info.get('epochs')} epochs, "
        f"{info.get('train')} train{val} / {info.get('test')} test images"
    )
    extras = []
    if info.get("schedule"):
        schedule = info["schedule"]
        if own_lr:  # each method starts from its own rate (column *lr*); the schedule's shape is shared
            schedule = re.sub(r"^lr [0-9.e-]+, ", "each method's own (column *lr*), ", schedule)
        extras.append(f"learning rate: {schedule}")
    if info.get("dkd_warmup") is not None:
        w = info["dkd_warmup"]
        extras.append(
            "DKD warm-up: none (1 epoch: full weight from epoch 1)"
            if w <= 1
            else f"DKD warm-up: {w} epochs (weight {1 / w:.2f} in epoch 1)"
        )
    return text + ("\n\n" + "; ".join(extras) + "." if extras else "")


def _validated_table(rows: Rows, lrs: Mapping[str, float] | None = None) -> list[str]:
    lines = [
        "| method | lr | runs | best test top-1 (%) | final test top-1 (%) | final val top-1 (%) | "
        "final test − KD (pp) | final test − DKD (pp) | s / epoch |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lr = (lrs or {}).get(r["method"], r.get("lr"))
        lines.append(
            f"| {r['method']} | {'–' if lr is None else f'{lr:g}'} | {_runs(r)} | {pm(r['best'])} | {pm(r['final'])} | "
            f"{pm(r['val_final'])} | "
            f"{pm(r['final_vs_kd'], sign=True) if r['method'] != 'kd' else '0'} | "
            f"{pm(r['final_vs_dkd'], sign=True) if r['method'] != 'dkd' else '0'} | "
            f"{r['epoch_seconds']:.1f} |"
        )
    return lines


def _plain_table(rows: Rows) -> list[str]:
    lines = [
        "| method | runs | best top-1 (%) | final top-1 (%) | best − KD (pp) | s / epoch |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {_runs(r)} | {pm(r['best'])} | {pm(r['final'])} | "
            f"{pm(r['vs_kd'], sign=True) if r['method'] != 'kd' else '0'} | {r['epoch_seconds']:.1f} |"
        )
    return lines


def _notes(meta: Mapping[str, Any]) -> list[str]:
    """The notes under the tables: workers, what each method is, the teacher-logit cache, candidates not run."""
    lines = []
    if meta.get("workers", 1) > 1:
        lines.append(
            f"\nRuns in {meta['workers']} worker processes of {meta.get('threads_per_run')} torch thread(s) each "
            f"({meta.get('runs_seconds', math.nan) / 60:.1f} min for the runs, "
            f"{meta.get('setup_seconds', math.nan) / 60:.1f} min for data, teachers and their logits)."
        )
    if meta.get("labels"):
        lines += ["", "Methods:", ""]
        lines += [f"- `{m}`: {text}" for m, text in meta["labels"].items()]
    for dataset, info in meta["datasets"].items():
        t = info.get("kd_epoch_seconds")
        if t:
            lines.append(
                f"\nTeacher-logit cache, {dataset}: one KD epoch takes {t['cached']:.2f} s with cached logits and "
                f"{t['teacher_forward']:.2f} s with a teacher forward per step "
                f"({t['teacher_forward'] / t['cached']:.2f}x); "
                f"filling the cache once takes {t['cache_pass']:.2f} s."
            )
    for name, why in meta.get("skipped_candidates", {}).items():
        lines.append(f"\nCandidate `{name}` not run: {why}.")
    return lines


def markdown(summary: dict[str, Rows], meta: dict[str, Any], selection: list[dict[str, Any]] | None = None) -> str:
    """``accuracy.md``: per data set its heading and table (with validation columns when measured), what the
    columns mean, the questions table (paired differences), the learning rates chosen on validation, the selection
    table of the default's alternatives (on validation), and the notes."""
    lines = []
    validated = any(_has_val(rows) for rows in summary.values())
    for dataset, rows in summary.items():
        lines.append(_dataset_heading(dataset, meta["datasets"].get(dataset, {}), bool(meta.get("lr_choice"))))
        lines.append("")
        lines += (
            _validated_table(rows, meta.get("lr_choice", {}).get(dataset)) if _has_val(rows) else _plain_table(rows)
        )
        lines.append("")
    if validated:
        lines.append(VALIDATED_COLUMNS)
        questions = questions_table(summary)
        if questions:
            lines += ["", "### Paired differences", "", QUESTIONS_INTRO, "", questions]
        if selection:
            lines += ["", "### Learning rates chosen on validation", "", LR_INTRO, "", lr_table(selection, meta)]
        chosen = selection_table(summary)
        if chosen:
            lines += ["", chosen]
    else:
        lines.append(PLAIN_COLUMNS)
    return "\n".join(lines + _notes(meta))


# The comparisons every validated report answers: (method, reference, what the difference measures)
QUESTIONS = (
    ("kd", "ce", "KD − CE"),
    ("dkd", "kd", "DKD − KD"),
    ("dot", "kd", "DOT − KD"),
    ("deepkd_default", "dkd", "DeepKD default − DKD"),
    ("deepkd_default", "kd", "DeepKD default − KD"),
    ("deepkd_official", "dkd", "DeepKD official − DKD"),
    ("deepkd_fixed", "kd", "DeepKD paper intent − KD"),
    ("default_no_gsnr", "deepkd_default", "GSNR axis: default with plain momentum − default"),
    ("default_no_mask", "deepkd_default", "mask axis: default without a mask − default"),
    ("default_preserve_step", "deepkd_default", "step size: default with step-preserving offsets − default"),
    ("dot_preserve_step", "dot", "step size: DOT with step-preserving offsets − DOT"),
)
QUESTIONS_INTRO = (
    "Final test top-1, each method at its own learning rate, differences paired by seed: mean ± standard error "
    "(pp), and the mean in standard errors (*z*); |*z*| > 2 is a difference these seeds resolve."
)
LR_INTRO = (
    "Final validation top-1 (%) of seed 0 at each learning rate of the grid; the chosen rate (**bold**) is the "
    "highest. No test figure enters the choice."
)


def paired(rows: Mapping[str, Mapping[str, Any]], method: str, reference: str) -> tuple[float, float, int]:
    """``method − reference`` in final test top-1 paired by seed: (mean, s.e., pairs); NaNs when either is absent."""
    a, b = rows.get(method), rows.get(reference)
    if a is None or b is None:
        return math.nan, math.nan, 0
    return paired_difference(a["final_by_seed"], b["final_by_seed"])


def questions_table(summary: dict[str, Rows]) -> str:
    """The :data:`QUESTIONS` per data set: paired difference ± s.e. and *z*; "" when no question has both methods."""
    datasets = list(summary)
    rows = {d: {r["method"]: r for r in summary[d]} for d in datasets}
    body = []
    for method, reference, text in QUESTIONS:
        cells = []
        for d in datasets:
            mean, se, n = paired(rows[d], method, reference)
            z = mean / se if n > 1 and se > 0 else math.nan
            cells.append(
                "–"
                if n == 0
                else f"{pm((mean, se), sign=True)} | {z:+.1f}"
                if not math.isnan(z)
                else f"{pm((mean, se), sign=True)} | –"
            )
        if any(c != "–" for c in cells):
            body.append(f"| {text} | " + " | ".join(c if c != "–" else "– | –" for c in cells) + " |")
    if not body:
        return ""
    head = "| difference |" + "".join(f" {d} (pp) | {d} z |" for d in datasets)
    return "\n".join([head, "| --- |" + " ---: | ---: |" * len(datasets), *body]) + power(rows)


def power(rows: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """A sentence on the power reached: per data set the median standard error of the :data:`QUESTIONS`'
    differences, and twice it, the smallest difference those seeds resolve."""
    parts = []
    for d, by_method in rows.items():
        ses = sorted(se for m, r, _ in QUESTIONS for _, se, n in [paired(by_method, m, r)] if n > 1 and se == se)
        seeds = max((r["runs"] for r in by_method.values()), default=0)
        if ses:
            median = statistics.median(ses)
            parts.append(
                f"{d}: {seeds} seeds, median s.e. {100 * median:.2f} pp, so differences above about "
                f"{200 * median:.1f} pp are resolved"
            )
    return "\n\nPower: " + "; ".join(parts) + "." if parts else ""


def lr_table(selection: list[dict[str, Any]], meta: Mapping[str, Any]) -> str:
    """Per method and data set, the validation top-1 of each learning rate of the grid, the chosen one in bold."""
    grid = meta.get("lr_grid") or sorted({r["lr"] for r in selection})
    choice = meta.get("lr_choice", {})
    datasets = list(dict.fromkeys(r["dataset"] for r in selection))
    score = {(r["dataset"], r["method"], r["lr"]): r.get("final_val_top1") for r in selection}
    methods = list(dict.fromkeys(r["method"] for r in selection))
    lines = []
    for d in datasets:
        lines += [f"{d}:", "", "| method |" + "".join(f" lr {lr:g} |" for lr in grid) + " chosen |"]
        lines.append("| --- |" + " ---: |" * (len(grid) + 1))
        for m in methods:
            cells = []
            for lr in grid:
                v = score.get((d, m, lr))
                text = "diverged" if (d, m, lr) in score and v is None else "–" if v is None else f"{100 * v:.2f}"
                cells.append(f"**{text}**" if choice.get(d, {}).get(m) == lr else text)
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {choice.get(d, {}).get(m, '–')} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def _selection_row(method: str, rows: Mapping[str, Mapping[str, Any]], default_recipe: Any) -> str:
    """An alternative's row: its change from the default, and per data set its val and Δ val; then the mean Δ."""
    recipe = next((rows[d][method]["recipe"] for d in rows if method in rows[d]), None)
    change = describe_change(default_recipe, recipe) if recipe and default_recipe else "?"
    line = f"| `{method}` | {change} |"
    deltas = []
    for d in rows:
        r = rows[d].get(method)
        if r is None:
            line += " – | – |"
            continue
        line += f" {pm(r['val_final'])} | {pm(r['val_vs_default'], sign=True)} |"
        if not math.isnan(r["val_vs_default"][0]):
            deltas.append(r["val_vs_default"][0])
    return line + f" {pm((statistics.fmean(deltas), math.nan), sign=True) if deltas else '–'} |"


def selection_table(summary: dict[str, Rows]) -> str:
    """The default against each alternative (its ablations and the candidates) on final VALIDATION top-1 only."""
    datasets = [d for d, rows in summary.items() if any(r["method"] == "deepkd_default" for r in rows)]
    if not datasets:
        return ""
    rows = {d: {r["method"]: r for r in summary[d]} for d in datasets}
    alternatives = [m for m in (*ABLATIONS, *CANDIDATES) if any(m in rows[d] for d in datasets)]
    if not alternatives:
        return ""
    default_recipe = next(rows[d]["deepkd_default"]["recipe"] for d in datasets)
    head = "| alternative to `deepkd_default` | changed setting |" + "".join(
        f" {d}: val (%) | {d}: Δ val (pp) |" for d in datasets
    )
    rule = "| --- | --- |" + " ---: | ---: |" * len(datasets)
    first = "| `deepkd_default` (the default) | — |" + "".join(
        f" {pm(rows[d]['deepkd_default']['val_final'])} | 0 |" for d in datasets
    )
    lines = ["### Defaults chosen on validation", "", SELECTION_INTRO, "", head + " mean Δ val (pp) |"]
    lines += [rule + " ---: |", first + " 0 |"]
    lines += [_selection_row(m, rows, default_recipe) for m in alternatives]
    return "\n".join(lines)


def write_csv(path: Path, runs: list[dict[str, Any]]) -> None:
    """``accuracy.csv``: a row per run (``error`` for the figures of a failed run)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for r in runs:
            writer.writerow(
                [
                    r["dataset"],
                    r["method"],
                    r["seed"],
                    r.get("best_top1", "error"),
                    r.get("final_top1", "error"),
                    r.get("final_val_top1", ""),
                    f"{r['seconds']:.2f}" if "seconds" in r else "",
                    r.get("student_params", ""),
                ]
            )
