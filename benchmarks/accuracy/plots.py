"""The figures: test (and validation) accuracy per epoch, GSNR and momentum over training, the dynamic mask's K and
phase, and K, momenta and GSNR of every DeepKD row side by side (``dynamics.png``)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks.accuracy.methods import CANDIDATES

GSNR_FLOOR = 1e-6  # GSNR read-outs below this (a signal estimate at or under zero) are drawn at it
# the DeepKD rows whose K, momenta and GSNR are plotted over training
DYNAMICS = ("deepkd_default", "deepkd_gsnr", "deepkd_fixed", "deepkd_official", *CANDIDATES)
# the methods drawn with solid lines in the accuracy plots (the others dashed)
SOLID = ("kd", "dkd", "dot", "deepkd_fixed", "deepkd_gsnr", "deepkd_default", "ce")
PHASES = {"easy": 0, "transition": 1, "hard": 2, "none": -1}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


class Canvas:
    """The successful runs to draw, their data sets (one column each), pyplot, and the folder for the figures."""

    def __init__(self, runs: list[dict[str, Any]], out: Path, plt: Any) -> None:
        self.runs = [r for r in runs if "error" not in r]
        self.datasets = list(dict.fromkeys(r["dataset"] for r in self.runs))
        self.out, self.plt = out, plt

    def grid(self, title: str) -> tuple[Any, Any]:
        """A figure of one plot per data set, side by side."""
        fig, axes = self.plt.subplots(1, len(self.datasets), figsize=(6.5 * len(self.datasets), 4.5), squeeze=False)
        fig.suptitle(title)
        return fig, axes[0]

    def by(self, dataset: str, method: str) -> list[dict[str, Any]]:
        """``method``'s runs on ``dataset``, lowest seed first."""
        runs = (r for r in self.runs if r["dataset"] == dataset and r["method"] == method)
        return sorted(runs, key=lambda r: r["seed"])

    def first(self, dataset: str, *methods: str) -> str:
        """The first of ``methods`` that ran on ``dataset`` (the first of them if none did)."""
        return next((m for m in methods if self.by(dataset, m)), methods[0])


def curves_plot(c: Canvas, key: str, title: str, ylabel: str, filename: str) -> Path:
    """A per-epoch curve (``key`` of each run) of every method, mean over seeds; where the runs were evaluated after
    their last epoch only (``evaluate = "final"``), each method's figure instead (:func:`final_plot`)."""
    if all(len(r.get(key) or ()) <= 1 for r in c.runs):
        return final_plot(c, key, ylabel.replace(" (%)", "") + " after the last epoch", filename)
    fig, axes = c.grid(title)
    for ax, dataset in zip(axes, c.datasets):
        for method in dict.fromkeys(r["method"] for r in c.runs if r["dataset"] == dataset):
            curves = [r[key] for r in c.by(dataset, method) if r.get(key)]
            if not curves:
                continue
            mean = [100 * statistics.fmean(curve[i] for curve in curves) for i in range(min(map(len, curves)))]
            style = "-" if method in SOLID else "--"
            ax.plot(range(1, len(mean) + 1), mean, style, marker="o", ms=3, label=method)
        ax.set(title=dataset, xlabel="epoch", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    return _save(fig, c.out / filename)


def final_plot(c: Canvas, key: str, what: str, filename: str) -> Path:
    """Each method's ``key`` after its last epoch, one row per method: every seed a dot, the mean ± standard deviation
    over seeds a bar. For runs evaluated once, where a curve per epoch would be one point."""
    fig, axes = c.grid(f"{what[0].upper()}{what[1:]} (each seed a dot; mean ± std over seeds)")
    for ax, dataset in zip(axes, c.datasets):
        methods = list(dict.fromkeys(r["method"] for r in c.runs if r["dataset"] == dataset))
        for row, method in enumerate(methods):
            values = [100 * r[key][-1] for r in c.by(dataset, method) if r.get(key)]
            if not values:
                continue
            color = f"C{row % 10}"
            ax.plot(values, [row] * len(values), "o", ms=3, alpha=0.45, color=color)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            ax.errorbar(statistics.fmean(values), row, xerr=std, fmt="D", ms=5, capsize=3, color=color)
        ax.set_yticks(range(len(methods)), methods)
        ax.invert_yaxis()  # the first method on top
        ax.set(title=dataset, xlabel=f"{what} (%)")
        ax.grid(alpha=0.3, axis="x")
    return _save(fig, c.out / filename)


def trace_plot(c: Canvas, prefix: str, title: str, ylabel: str, log: bool, filename: str) -> Path:
    """The trace's ``prefix*`` read-outs (one line per part or group) of the main DeepKD row's lowest seed."""
    fig, axes = c.grid(title)
    for ax, dataset in zip(axes, c.datasets):
        method = c.first(dataset, "deepkd_gsnr", "deepkd_default")
        runs_m = c.by(dataset, method)
        if runs_m and runs_m[0]["trace"]:
            rows = runs_m[0]["trace"]
            for key in [k for k in rows[0] if k.startswith(prefix)]:
                pts = [(r["step"], r[key]) for r in rows if key in r and _finite(r[key])]
                if pts:
                    ax.plot(*zip(*pts), label=key[len(prefix) :])
            if log:
                ax.set_yscale("log")
        ax.set(title=f"{dataset} ({method}, seed {runs_m[0]['seed'] if runs_m else 0})", xlabel="step")
        ax.set(ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, c.out / filename)


def mask_plot(c: Canvas) -> Path:
    """K over training of the main DeepKD row and of its plain-momentum counterpart, and the main row's phase."""
    fig, axes = c.grid("Dynamic mask: K and phase over training")
    for ax, dataset in zip(axes, c.datasets):
        main = c.first(dataset, "deepkd_gsnr", "deepkd_default")
        for method in (main, c.first(dataset, "dynamic_sgd", "default_no_gsnr")):
            runs_m = c.by(dataset, method)
            if runs_m:
                rows = runs_m[0]["trace"]
                ax.step([r["step"] for r in rows], [r["k"] for r in rows], where="post", label=f"K ({method})")
        ax2 = ax.twinx()
        runs_m = c.by(dataset, main)
        if runs_m:
            rows = runs_m[0]["trace"]
            ax2.step(
                [r["step"] for r in rows], [PHASES.get(r["phase"], -1) for r in rows], "k:", where="post", alpha=0.6
            )
            ax2.set_yticks([0, 1, 2], ["easy", "transition", "hard"])
            ax2.set_ylim(-0.3, 2.3)
        ax.set(title=dataset, xlabel="step", ylabel="K (kept non-target classes)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="center right")
    return _save(fig, c.out / "mask.png")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_plots(c: Canvas) -> list[Path]:
    """Test top-1 (``accuracy.png``) and, with a validation split, validation top-1 (``validation.png``): per epoch,
    or per method where the runs were evaluated once."""
    paths = [curves_plot(c, "test_top1", "Test top-1 per epoch (mean over seeds)", "test top-1 (%)", "accuracy.png")]
    if any(r.get("val_top1") for r in c.runs):
        title = "Validation top-1 per epoch (mean over seeds)"
        paths.append(curves_plot(c, "val_top1", title, "validation top-1 (%)", "validation.png"))
    return paths


def redraw_accuracy(runs: list[dict[str, Any]], out: Path) -> list[Path]:
    """:func:`accuracy_plots` alone, from runs without traces (a committed report's slim JSON)."""
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    paths = accuracy_plots(Canvas(runs, out, plt))
    plt.close("all")
    return paths


def plots(runs: list[dict[str, Any]], out: Path) -> list[Path]:
    """Test (and validation) accuracy per epoch, GSNR and momentum coefficients over training, K and phase over
    training, and K, momenta and GSNR of every DeepKD row side by side (``dynamics.png``)."""
    plt = _pyplot()
    c = Canvas(runs, out, plt)
    out.mkdir(parents=True, exist_ok=True)
    paths = accuracy_plots(c)
    paths.append(trace_plot(c, "gsnr_", "GSNR per gradient component", "GSNR", True, "gsnr.png"))
    paths.append(trace_plot(c, "m_", "Momentum coefficient per component", "momentum", False, "momentum.png"))
    paths.append(mask_plot(c))
    dyn = dynamics_plot(c.runs, c.datasets, out / "dynamics.png", plt)
    if dyn is not None:
        paths.append(dyn)
    plt.close("all")
    return paths


def _dynamics_column(axes: tuple[Any, Any, Any], runs: list[dict[str, Any]], present: list[str], colors: Any) -> Any:
    """One data set's column of ``dynamics.png``: K, momenta and GSNR of each present row's lowest seed. Returns the
    line style of each part or group, and the steps where the learning rate drops."""
    ax_k, ax_m, ax_g = axes
    styles = ["-", "--", ":", "-."]
    parts: dict[str, str] = {}
    drops: list[int] = []
    for method in present:
        runs_m = sorted((r for r in runs if r["method"] == method), key=lambda r: r["seed"])
        if not runs_m or not runs_m[0]["trace"]:
            continue
        rows, color = runs_m[0]["trace"], colors[method]
        ax_k.step([r["step"] for r in rows], [r["k"] for r in rows], where="post", color=color, label=method)
        for prefix, ax, log in (("m_", ax_m, False), ("gsnr_", ax_g, True)):
            for key in dict.fromkeys(k for r in rows for k in r if k.startswith(prefix)):
                style = parts.setdefault(key[len(prefix) :], styles[len(parts) % len(styles)])
                pts = [(r["step"], max(r[key], GSNR_FLOOR) if log else r[key]) for r in rows if _finite(r.get(key))]
                if pts:
                    ax.plot(*zip(*pts), style, color=color, lw=1.2)
        if not drops:
            lrs = [(r["step"], r.get("lr")) for r in rows if _finite(r.get("lr"))]
            drops = [s for (s, lr), (_, prev) in zip(lrs[1:], lrs) if lr < prev * 0.5]
    return parts, drops


def dynamics_plot(runs: list[dict[str, Any]], datasets: list[str], path: Path, plt: Any) -> Path | None:
    """K, the momentum coefficient of each part and the GSNR of each gradient group over training steps, for every
    DeepKD row (``DYNAMICS``: default, paper-intent, official code, candidates), seed 0 (the lowest seed run);
    one column per data set; dotted vertical lines where the learning rate drops."""
    from matplotlib.lines import Line2D

    present = [m for m in DYNAMICS if any(r["method"] == m and r.get("trace") for r in runs)]
    if not present:
        return None
    fig, axes = plt.subplots(3, len(datasets), figsize=(7.5 * len(datasets), 12), squeeze=False, sharex="col")
    fig.suptitle("DeepKD rows over training (lowest seed): K, momentum per part, GSNR per group")
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(present)}
    for col, dataset in enumerate(datasets):
        ax_k, ax_m, ax_g = axes[0][col], axes[1][col], axes[2][col]
        mine = [r for r in runs if r["dataset"] == dataset]
        parts, drops = _dynamics_column((ax_k, ax_m, ax_g), mine, present, colors)
        for ax in (ax_k, ax_m, ax_g):
            for s in drops:
                ax.axvline(s, color="grey", ls=":", lw=1)
            ax.grid(alpha=0.3)
        ax_k.set(title=dataset, ylabel="K (kept non-target classes)")
        ax_k.legend(fontsize=7)
        ax_m.set(ylabel="momentum coefficient")
        ax_g.set(ylabel=f"GSNR (below {GSNR_FLOOR:g} drawn at {GSNR_FLOOR:g})", xlabel="step")
        if any(line.get_xydata().size for line in ax_g.get_lines()):
            ax_g.set_yscale("log")
        handles = [Line2D([], [], color="k", ls=s, label=p) for p, s in parts.items()]
        if handles:
            ax_m.legend(handles=handles, fontsize=7, title="part / group (colour: method)")
    return _save(fig, path)
