"""Accuracy benchmark: distil a much smaller student with every method, over seeds, on real data.

Per data set, a teacher is trained once and cached by the content hash of everything that determines it (data set,
sizes, model, training settings, seed, library versions); later runs reuse it. Then each method distils the same
student architecture from it, over several seeds (a seed sets the student's initial weights and the data order).
The teacher's logits are computed once per sample (the data are not augmented).

Methods (``METHODS``): CE only (no teacher), KD, DKD, DOT, DeepKD as the paper describes it (KD base, the official
fixed deltas, the dynamic mask), DeepKD with GSNR momentum and the dynamic mask on the DKD base, DeepKD as the
official code behaves (no mask), and the ablations that show each axis alone:
GSNR momentum without masking, the dynamic mask with plain SGD momentum, and static masks keeping 10/20/30 % of the
classes (K = 10, 20, 30 on the 100-class pairs set). Hyperparameters are the published CIFAR-100 ones, with two
length adjustments that apply to every method alike: DKD's warm-up lasts the same share of the run as 20 of 240
epochs, and GSNR coefficients are re-estimated four times per epoch.

Reported per method: mean ± std over seeds of the best and final test top-1, and the difference from KD
(paired by seed: mean ± standard error).

Run: ``python -m benchmarks.accuracy --profile smoke`` (or via ``nox -s bench``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

import deepkd
from deepkd.callbacks import Callback
from deepkd.data import IndexedDataset, get_dataset
from deepkd.errors import DataError
from deepkd.models import build_model, count_parameters
from deepkd.schedules import Cosine
from deepkd.trainer import TrainConfig, Trainer

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "datasets": {"digits": {"train": None, "test": None}},
        "seeds": 1,
        "epochs": 5,
        "teacher_epochs": 6,
        "methods": ["ce", "kd", "dkd", "dot", "deepkd_fixed", "deepkd_gsnr", "deepkd_official"],
    },
    "default": {
        "datasets": {
            "fashion_mnist": {"train": 20000, "test": 5000},
            "fashion_mnist_pairs": {"train": 20000, "test": 5000},
        },
        "seeds": 3,
        "epochs": 3,
        "teacher_epochs": 3,
        "methods": None,
    },
    "full": {
        "datasets": {
            "fashion_mnist": {"train": None, "test": None},
            "fashion_mnist_pairs": {"train": 30000, "test": None},
            "digits": {"train": None, "test": None},
        },
        "seeds": 5,
        "epochs": 10,
        "teacher_epochs": 10,
        "methods": None,
    },
}

# teacher and student per data set: the student is 5-20x smaller than the teacher
MODELS: dict[str, dict[str, Any]] = {
    "digits": {"teacher": ("mlp", {"hidden": (256, 256)}), "student": ("mlp", {"hidden": (16,)})},
    "fashion_mnist": {"teacher": ("small_cnn", {}), "student": ("tiny_cnn", {"width": 8})},
    "fashion_mnist_pairs": {"teacher": ("small_cnn", {}), "student": ("tiny_cnn", {"width": 8})},
}

BATCH = 128
LR = 0.1
METHODS = (
    "ce",
    "kd",
    "dkd",
    "dot",
    "deepkd_fixed",
    "deepkd_gsnr",
    "deepkd_official",
    "gsnr_nomask",
    "dynamic_sgd",
    "static_10",
    "static_20",
    "static_30",
)


def recipes(classes: int, epochs: int, steps_per_epoch: int) -> dict[str, deepkd.Recipe]:
    """Every method's recipe for a run of ``epochs`` epochs of ``steps_per_epoch`` steps."""
    kd = deepkd.KD(temperature=4.0, w_ce=0.1, w_kd=0.9)
    dkd = deepkd.DKD(alpha=1.0, beta=8.0, temperature=4.0, warmup=max(1, round(epochs * 20 / 240)), w_ce=1.0)
    gsnr = deepkd.GSNR(interval=max(1, steps_per_epoch // 4))

    def static(share: float) -> deepkd.StaticMask:
        return deepkd.StaticMask(k=max(1, round(share * classes)))

    return {
        "ce": deepkd.compose(loss="ce", momentum="sgd", mask="none", name="ce"),
        "kd": deepkd.compose(loss=kd, momentum="sgd", mask="none", name="kd"),
        "dkd": deepkd.compose(loss=dkd, momentum="sgd", mask="none", name="dkd"),
        "dot": deepkd.compose(loss=kd, momentum=deepkd.DOT(delta=0.075), mask="none", name="dot"),
        "deepkd_fixed": deepkd.compose(
            loss=kd, momentum=deepkd.Fixed(), mask=deepkd.DynamicMask(), name="deepkd_fixed"
        ),
        "deepkd_gsnr": deepkd.compose(loss=dkd, momentum=gsnr, mask=deepkd.DynamicMask(), name="deepkd_gsnr"),
        "deepkd_official": deepkd.compose(
            loss=deepkd.KD(temperature=4.0, w_ce=0.1, w_kd=0.9, split="official"),
            momentum=deepkd.Fixed(reference_quirks=True),
            mask="none",
            name="deepkd_official",
        ),
        "gsnr_nomask": deepkd.compose(loss=dkd, momentum=gsnr, mask="none", name="gsnr_nomask"),
        "dynamic_sgd": deepkd.compose(loss=dkd, momentum="sgd", mask=deepkd.DynamicMask(), name="dynamic_sgd"),
        "static_10": deepkd.compose(loss=dkd, momentum="sgd", mask=static(0.1), name="static_10"),
        "static_20": deepkd.compose(loss=dkd, momentum="sgd", mask=static(0.2), name="static_20"),
        "static_30": deepkd.compose(loss=dkd, momentum="sgd", mask=static(0.3), name="static_30"),
    }


def _subset(data: Any, n: int | None, seed: int) -> TensorDataset:
    x, y = data.tensors if isinstance(data, TensorDataset) else (data.inputs, data.targets)
    if n is not None and n < len(y):
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        x, y = x[idx], y[idx]
    return TensorDataset(x.contiguous(), y.contiguous())


def load(name: str, sizes: dict[str, int | None]) -> tuple[TensorDataset, TensorDataset, int]:
    train, test, info = get_dataset(name)
    return _subset(train, sizes["train"], 1), _subset(test, sizes["test"], 2), int(info["num_classes"])


def _model(dataset: str, role: str, classes: int, example: torch.Tensor) -> torch.nn.Module:
    name, kwargs = MODELS[dataset][role]
    kwargs = dict(kwargs)
    if name == "mlp":
        kwargs["in_features"] = int(example[0].numel())
    else:
        kwargs["in_channels"] = int(example.shape[1])
    return build_model(name, classes, **kwargs)


def _loaders(train: TensorDataset, test: TensorDataset, indexed: bool) -> tuple[DataLoader, DataLoader]:
    train_set: Any = IndexedDataset(train) if indexed else train
    gen = torch.Generator()
    return (
        DataLoader(train_set, batch_size=BATCH, shuffle=True, generator=gen),
        DataLoader(test, batch_size=512),
    )


def _config(epochs: int, cache: bool) -> TrainConfig:
    return TrainConfig(
        epochs=epochs,
        lr=LR,
        momentum=0.9,
        weight_decay=5e-4,
        schedule=Cosine(warmup=0.0, min_factor=0.0),
        cache_teacher=cache,
        progress=False,
        device="cpu",
        track_gsnr=False,
    )


def teacher_for(dataset: str, profile: dict[str, Any], cache_dir: Path, data: tuple[Any, Any, int]) -> torch.nn.Module:
    """Train the data set's teacher, or load it from the cache (keyed by a hash of everything that determines it)."""
    train, test, classes = data
    epochs = profile["teacher_epochs"]
    sizes = profile["datasets"][dataset]
    key_data = {
        "dataset": dataset,
        "sizes": sizes,
        "model": MODELS[dataset]["teacher"],
        "epochs": epochs,
        "lr": LR,
        "batch": BATCH,
        "seed": 0,
        "deepkd": deepkd.__version__,
        "torch": torch.__version__.split("+")[0],
        "data": hashlib.sha256(train.tensors[0][:256].numpy().tobytes()).hexdigest()[:16],
    }
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = cache_dir / f"teacher-{dataset}-{key}.pt"
    teacher = _model(dataset, "teacher", classes, train.tensors[0][:1])
    if path.exists():
        try:
            teacher.load_state_dict(torch.load(path, weights_only=True))
            print(f"[accuracy] {dataset}: teacher from cache {path}", file=sys.stderr, flush=True)
            return teacher.eval()
        except Exception as exc:  # a corrupt cache entry is retrained, never used
            print(f"[accuracy] ignoring unreadable cached teacher {path}: {exc}", file=sys.stderr)
    print(f"[accuracy] {dataset}: training the teacher ({epochs} epochs)", file=sys.stderr, flush=True)
    torch.manual_seed(0)
    teacher = _model(dataset, "teacher", classes, train.tensors[0][:1])
    train_loader, test_loader = _loaders(train, test, indexed=False)
    recipe = deepkd.compose(loss="ce", momentum="sgd", mask="none")
    history = Trainer(teacher, None, recipe, _config(epochs, cache=False), seed=0).fit(train_loader, test_loader)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(teacher.state_dict(), tmp)
    os.replace(tmp, path)
    (path.with_suffix(".json")).write_text(json.dumps({"key": key_data, "test_top1": history.final_top1}, indent=2))
    return teacher.eval()


class Trace(Callback):
    """Records the optimizer's read-outs every few steps: momenta, GSNR, K and phase."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.rows: list[dict[str, Any]] = []

    def on_step_end(self, trainer: Trainer, out: deepkd.StepOutput) -> None:
        if trainer.global_step % self.every == 0:
            row = {"step": trainer.global_step, "epoch": trainer.epoch, "k": out.k, "phase": out.phase}
            row.update({f"m_{k}": v for k, v in out.momenta.items()})
            row.update({f"gsnr_{k}": v for k, v in (out.gsnr or {}).items()})
            self.rows.append(row)


def run_method(
    dataset: str,
    method: str,
    recipe: deepkd.Recipe,
    seed: int,
    teacher: torch.nn.Module | None,
    data: Any,
    epochs: int,
    teacher_logits: torch.Tensor | None = None,
) -> dict[str, Any]:
    train, test, classes = data
    torch.manual_seed(1000 + seed)
    student = _model(dataset, "student", classes, train.tensors[0][:1])
    needs_teacher = recipe.loss.needs_teacher
    train_loader, test_loader = _loaders(train, test, indexed=needs_teacher)
    trace = Trace(every=max(1, len(train_loader) // 20))
    start = time.perf_counter()
    trainer = Trainer(
        student,
        teacher if needs_teacher else None,
        recipe,
        _config(epochs, cache=needs_teacher),
        seed=seed,
        callbacks=[trace],
        teacher_logits=teacher_logits if needs_teacher else None,
    )
    history = trainer.fit(train_loader, test_loader)
    return {
        "dataset": dataset,
        "method": method,
        "seed": seed,
        "recipe": recipe.to_dict(),
        "student_params": count_parameters(student),
        "best_top1": history.best_top1,
        "final_top1": history.final_top1,
        "test_top1": history["test_top1"],
        "train_top1": history["train_top1"],
        "epoch_time": history["time"],
        "seconds": time.perf_counter() - start,
        "trace": trace.rows,
    }


def cache_speedup(dataset: str, data: Any, teacher: torch.nn.Module, teacher_logits: torch.Tensor) -> dict[str, float]:
    """Seconds for one KD epoch with the teacher-logit cache and without it (teacher forward every step), and for
    the one-time pass that fills the cache; the same student, data and seed."""
    train, test, classes = data
    recipe = recipes(classes, 1, 1)["kd"]
    out: dict[str, float] = {}
    for label, cache in (("cached", True), ("teacher_forward", False)):
        torch.manual_seed(1000)
        student = _model(dataset, "student", classes, train.tensors[0][:1])
        loader, _ = _loaders(train, test, indexed=cache)
        trainer = Trainer(
            student, teacher, recipe, _config(1, cache=cache), teacher_logits=teacher_logits if cache else None
        )
        start = time.perf_counter()
        trainer.fit(loader)
        out[label] = time.perf_counter() - start
    start = time.perf_counter()
    probe = Trainer(_model(dataset, "student", classes, train.tensors[0][:1]), teacher, recipe, _config(1, cache=True))
    probe.compute_teacher_logits(_loaders(train, test, indexed=True)[0])
    out["cache_pass"] = time.perf_counter() - start
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def summarise(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per data set and method: mean ± std of best/final top-1 and the paired difference from KD."""
    out: dict[str, list[dict[str, Any]]] = {}
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        rows = []
        by_method: dict[str, dict[int, dict[str, Any]]] = {}
        for r in runs:
            if r["dataset"] == dataset:
                by_method.setdefault(r["method"], {})[r["seed"]] = r
        kd = by_method.get("kd", {})
        for method, seeds in by_method.items():
            best = [r["best_top1"] for r in seeds.values()]
            final = [r["final_top1"] for r in seeds.values()]
            diffs = [seeds[s]["best_top1"] - kd[s]["best_top1"] for s in seeds if s in kd]
            d_mean, d_std = _mean_std(diffs) if diffs else (math.nan, math.nan)
            rows.append(
                {
                    "method": method,
                    "runs": len(seeds),
                    "best": _mean_std(best),
                    "final": _mean_std(final),
                    "vs_kd": (d_mean, d_std / math.sqrt(len(diffs)) if diffs else math.nan),
                    "epoch_seconds": statistics.fmean(t for r in seeds.values() for t in r["epoch_time"]),
                }
            )
        out[dataset] = rows
    return out


def _pm(pair: tuple[float, float], scale: float = 100.0, sign: bool = False) -> str:
    mean, spread = pair
    if math.isnan(mean):
        return "–"
    text = f"{mean * scale:+.2f}" if sign else f"{mean * scale:.2f}"
    return text if math.isnan(spread) else f"{text} ± {spread * scale:.2f}"


def markdown(summary: dict[str, list[dict[str, Any]]], meta: dict[str, Any]) -> str:
    lines = []
    for dataset, rows in summary.items():
        info = meta["datasets"].get(dataset, {})
        lines.append(
            f"### {dataset}: {info.get('teacher')} teacher ({info.get('teacher_top1', math.nan):.2%} test "
            f"top-1) → {info.get('student')} student, {info.get('epochs')} epochs, "
            f"{info.get('train')} train / {info.get('test')} test images"
        )
        lines.append("")
        lines.append("| method | runs | best top-1 (%) | final top-1 (%) | best − KD (pp) | s / epoch |")
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            lines.append(
                f"| {r['method']} | {r['runs']} | {_pm(r['best'])} | {_pm(r['final'])} | "
                f"{_pm(r['vs_kd'], sign=True) if r['method'] != 'kd' else '0'} | {r['epoch_seconds']:.1f} |"
            )
        lines.append("")
    lines.append("Mean ± std over seeds; best − KD is paired by seed, mean ± standard error.")
    for dataset, info in meta["datasets"].items():
        t = info.get("kd_epoch_seconds")
        if t:
            lines.append(
                f"\nTeacher-logit cache, {dataset}: one KD epoch takes {t['cached']:.2f} s with cached logits and "
                f"{t['teacher_forward']:.2f} s with a teacher forward per step "
                f"({t['teacher_forward'] / t['cached']:.2f}x); "
                f"filling the cache once takes {t['cache_pass']:.2f} s."
            )
    return "\n".join(lines)


def plots(runs: list[dict[str, Any]], out: Path) -> list[Path]:
    """Test accuracy per epoch, GSNR and momentum coefficients over training, K and phase over training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in runs))
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    def grid(title: str) -> tuple[Any, Any]:
        fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.5), squeeze=False)
        fig.suptitle(title)
        return fig, axes[0]

    def by(dataset: str, method: str) -> list[dict[str, Any]]:
        return [r for r in runs if r["dataset"] == dataset and r["method"] == method]

    fig, axes = grid("Test top-1 per epoch (mean over seeds)")
    for ax, dataset in zip(axes, datasets):
        for method in dict.fromkeys(r["method"] for r in runs if r["dataset"] == dataset):
            curves = [r["test_top1"] for r in by(dataset, method)]
            mean = [100 * statistics.fmean(c[i] for c in curves) for i in range(len(curves[0]))]
            style = "-" if method in ("kd", "dkd", "dot", "deepkd_fixed", "deepkd_gsnr", "ce") else "--"
            ax.plot(range(1, len(mean) + 1), mean, style, marker="o", ms=3, label=method)
        ax.set(title=dataset, xlabel="epoch", ylabel="test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    paths.append(_save(fig, out / "accuracy.png"))

    def trace_plot(method: str, prefix: str, title: str, ylabel: str, log: bool, filename: str) -> None:
        fig, axes = grid(title)
        for ax, dataset in zip(axes, datasets):
            runs_m = by(dataset, method)
            if runs_m and runs_m[0]["trace"]:
                rows = runs_m[0]["trace"]
                keys = [k for k in rows[0] if k.startswith(prefix)]
                for key in keys:
                    pts = [(r["step"], r[key]) for r in rows if key in r and _finite(r[key])]
                    if pts:
                        ax.plot(*zip(*pts), label=key[len(prefix) :])
                if log:
                    ax.set_yscale("log")
            ax.set(title=f"{dataset} ({method}, seed 0)", xlabel="step", ylabel=ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        paths.append(_save(fig, out / filename))

    trace_plot("deepkd_gsnr", "gsnr_", "GSNR per gradient component", "GSNR", True, "gsnr.png")
    trace_plot("deepkd_gsnr", "m_", "Momentum coefficient per component", "momentum", False, "momentum.png")

    fig, axes = grid("Dynamic mask: K and phase over training")
    for ax, dataset in zip(axes, datasets):
        for method in ("deepkd_gsnr", "dynamic_sgd"):
            runs_m = by(dataset, method)
            if runs_m:
                rows = runs_m[0]["trace"]
                ax.step([r["step"] for r in rows], [r["k"] for r in rows], where="post", label=f"K ({method})")
        ax2 = ax.twinx()
        runs_m = by(dataset, "deepkd_gsnr")
        if runs_m:
            phases = {"easy": 0, "transition": 1, "hard": 2, "none": -1}
            rows = runs_m[0]["trace"]
            ax2.step([r["step"] for r in rows], [phases[r["phase"]] for r in rows], "k:", where="post", alpha=0.6)
            ax2.set_yticks([0, 1, 2], ["easy", "transition", "hard"])
            ax2.set_ylim(-0.3, 2.3)
        ax.set(title=dataset, xlabel="step", ylabel="K (kept non-target classes)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="center right")
    paths.append(_save(fig, out / "mask.png"))
    plt.close("all")
    return paths


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv: list[str] | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=list(PROFILES), default="default")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "deepkd" / "bench",
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--methods", nargs="*", help="subset of methods: " + ", ".join(METHODS))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = PROFILES[args.profile]
    methods = args.methods or profile["methods"] or list(METHODS)
    runs: list[dict[str, Any]] = []
    from benchmarks.speed import machine

    meta: dict[str, Any] = {"profile": args.profile, "machine": machine(), "datasets": {}, "skipped": {}}
    for dataset, sizes in profile["datasets"].items():
        try:
            data = load(dataset, sizes)
        except DataError as exc:
            print(f"[accuracy] skipping {dataset}: {exc}", file=sys.stderr, flush=True)
            meta["skipped"][dataset] = str(exc)
            continue
        train, test, classes = data
        teacher = teacher_for(dataset, profile, args.cache, data)
        from deepkd.trainer import evaluate

        t_acc = evaluate(teacher, DataLoader(test, batch_size=512), device=torch.device("cpu"))["test_top1"]
        # the teacher's logits for every training sample, once: every run reads them by sample index
        probe = Trainer(
            _model(dataset, "student", classes, train.tensors[0][:1]),
            teacher,
            recipes(classes, 1, 1)["kd"],
            _config(1, cache=True),
        )
        teacher_logits = probe.compute_teacher_logits(_loaders(train, test, indexed=True)[0])
        steps = math.ceil(len(train) / BATCH)
        book = recipes(classes, profile["epochs"], steps)
        timing = cache_speedup(dataset, data, teacher, teacher_logits)
        meta["datasets"][dataset] = {
            "teacher": MODELS[dataset]["teacher"][0],
            "student": MODELS[dataset]["student"][0],
            "teacher_params": count_parameters(teacher),
            "student_params": count_parameters(_model(dataset, "student", classes, train.tensors[0][:1])),
            "teacher_top1": t_acc,
            "epochs": profile["epochs"],
            "train": len(train),
            "test": len(test),
            "classes": classes,
            "kd_epoch_seconds": timing,
        }
        for seed in range(profile["seeds"]):
            for method in methods:
                res = run_method(dataset, method, book[method], seed, teacher, data, profile["epochs"], teacher_logits)
                print(
                    f"[accuracy] {dataset} {method} seed {seed}: best {res['best_top1']:.4f} "
                    f"final {res['final_top1']:.4f} ({res['seconds']:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
                runs.append(res)
    report: dict[str, Any] = {"meta": meta, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accuracy.json").write_text(json.dumps(report, indent=2, default=str))
    with open(args.out / "accuracy.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["dataset", "method", "seed", "best_top1", "final_top1", "seconds", "student_params"])
        for r in runs:
            writer.writerow(
                [
                    r["dataset"],
                    r["method"],
                    r["seed"],
                    r["best_top1"],
                    r["final_top1"],
                    f"{r['seconds']:.2f}",
                    r["student_params"],
                ]
            )
    if runs:
        summary = summarise(runs)
        md = markdown(summary, meta)
        report["summary"] = summary
        report["plots"] = [str(p) for p in plots(runs, args.out / "plots")]
    else:
        md = "No accuracy runs: " + "; ".join(f"{k}: {v}" for k, v in meta["skipped"].items())
    for dataset, why in meta["skipped"].items():
        md += f"\n\n**{dataset} skipped**: {why}"
    (args.out / "accuracy.md").write_text(md + "\n")
    print(md)
    return report


if __name__ == "__main__":
    main()
