"""The "what you should see" of docs/training.md's first run, produced by running it.

Runs the tutorial's commands as a reader types them, in a scratch folder (``baselines/`` linked into it): the
Fashion-MNIST teacher, the four students (DeepKD, KD, DKD, DOT) and the student with cross-entropy alone, then
``deepkd eval`` of the DeepKD student. It records each command's wall time, its per-epoch times and test top-1 (from
its ``metrics.jsonl``), what the DeepKD run printed, the load of the machine and where the figures come from, in
``docs/first-run.json``; the blocks of docs/training.md and README.md between ``<!-- begin: benchmarks.first_run
NAME -->`` and ``<!-- end: ... -->`` are generated from that file and nothing else (``tests/test_doc_tables.py``
fails when they disagree)::

    python -m benchmarks.first_run --run            # run the commands (about 6 minutes on a 2-core CPU), then write
    python -m benchmarks.first_run --write          # rewrite the blocks from the committed docs/first-run.json
    python -m benchmarks.first_run                  # check: exit status 1, naming each block that differs

Needs Fashion-MNIST (``/usr/share/datasets/fashion-mnist`` or ``$DEEPKD_FASHION_MNIST``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from benchmarks import provenance, tables

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / "docs" / "first-run.json"
OWNER = "benchmarks.first_run"
CONFIGS = "baselines/configs/fashion_mnist"

# (row label, run directory, the command's arguments after `deepkd`), in the order they run
RUNS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("teacher `small_cnn`, CE", "teacher", ("train", f"{CONFIGS}/teacher.toml")),
    ("student `tiny_cnn`, DeepKD", "student_deepkd", ("train", f"{CONFIGS}/student_deepkd.toml")),
    ("student `tiny_cnn`, KD", "student_kd", ("train", f"{CONFIGS}/student_kd.toml")),
    ("student `tiny_cnn`, DKD", "student_dkd", ("train", f"{CONFIGS}/student_dkd.toml")),
    ("student `tiny_cnn`, DOT", "student_dot", ("train", f"{CONFIGS}/student_dot.toml")),
    (
        "`tiny_cnn` alone, CE (no teacher)",
        "student_ce",
        (
            "train",
            f"{CONFIGS}/student_kd.toml",
            "recipe.name=ce",
            "recipe.loss=ce",
            "train.cache_teacher=false",
            "run_dir=runs/fashion_mnist/student_ce",
        ),
    ),
)
EVAL = ("eval", "runs/fashion_mnist/student_deepkd/best.pt")
SHOWN = "student_deepkd"  # the run whose output the page shows


def _deepkd(args: tuple[str, ...], cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "deepkd", *args], cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"`deepkd {shlex.join(args)}` exited with {done.returncode}:\n{done.stderr[-3000:]}")
    return done, took


def run(scratch: Path) -> dict[str, Any]:
    """Run every command in ``scratch`` and return the record (see the module docstring)."""
    (scratch / "baselines").symlink_to(ROOT / "baselines")
    record: dict[str, Any] = {
        **provenance.provenance(),
        "machine": provenance.machine(),
        "load_at_start": os.getloadavg()[0],
        "runs": [],
    }
    for label, name, args in RUNS:
        print(f"[first_run] deepkd {shlex.join(args)}", file=sys.stderr, flush=True)
        done, took = _deepkd(args, scratch)
        metrics = scratch / "runs" / "fashion_mnist" / name / "metrics.jsonl"
        epochs = [r for r in map(json.loads, metrics.read_text().splitlines()) if r.get("kind") == "epoch"]
        record["runs"].append(
            {
                "label": label,
                "name": name,
                "command": "deepkd " + shlex.join(args),
                "wall_s": round(took, 1),
                "epoch_time": [round(r["time"], 2) for r in epochs],
                "test_top1": [r["test_top1"] for r in epochs],
                "stderr": done.stderr if name == SHOWN else None,
            }
        )
    done, _ = _deepkd(EVAL, scratch)
    record["eval"] = {"command": "deepkd " + shlex.join(EVAL), "stdout": done.stdout}
    record["load_at_end"] = os.getloadavg()[0]
    return record


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _span(times: list[float]) -> str:
    lo, hi = min(times), max(times)
    return f"{lo:.1f} s" if f"{lo:.1f}" == f"{hi:.1f}" else f"{lo:.1f}–{hi:.1f} s"


def source(record: Mapping[str, Any]) -> str:
    """One sentence: the machine, its load, the versions, the commit and date, and the command that measured it."""
    mc = record["machine"]
    dirty = " (with uncommitted changes)" if record.get("git_dirty") else ""
    return (
        f"Produced by `python -m benchmarks.first_run --run` on {record['date'][:10]} (commit "
        f"{(record['git_commit'] or 'unknown')[:7]}{dirty}; deepkd {mc['deepkd']}, torch {mc['torch']}) on a "
        f"{mc['cores']}-core CPU ({mc['cpu_model']}), no GPU, load {record['load_at_start']:.1f} at the start and "
        f"{record['load_at_end']:.1f} at the end; the numbers are in `docs/first-run.json`."
    )


def table(record: Mapping[str, Any]) -> str:
    """Each command's time per epoch, its test top-1 after the last epoch and its whole wall time."""
    lines = [
        "| run | time per epoch (train + test) | test top-1 after 3 epochs | whole command |",
        "| --- | --- | --- | --- |",
    ]
    for r in record["runs"]:
        lines.append(f"| {r['label']} | {_span(r['epoch_time'])} | {_pct(r['test_top1'][-1])} | {r['wall_s']:.0f} s |")
    # a row without a config of its own says which command it is (the others are the commands above)
    commands = [f"{r['label']}: `{r['command']}`." for r in record["runs"] if len(r["command"].split()) > 3]
    return "\n".join(lines) + "\n\n" + " ".join([*commands, source(record)])


def log(record: Mapping[str, Any]) -> str:
    """What the DeepKD student's command printed (to stderr: off a terminal, as in a log file)."""
    shown = next(r for r in record["runs"] if r["name"] == SHOWN)
    return f"```text\n{shown['stderr'].rstrip()}\n```\n\n(`{shown['command']} 2> log`, the run of the table below.)"


def evaluation(record: Mapping[str, Any]) -> str:
    """The ``deepkd eval`` command and what it printed."""
    ev = record["eval"]
    return f"```console\n$ {ev['command']}\n{ev['stdout'].rstrip()}\n```"


def times(record: Mapping[str, Any]) -> str:
    """README's sentence: how long the teacher and a student took."""
    walls = {r["name"]: r["wall_s"] for r in record["runs"]}
    students = [walls[n] for n in ("student_deepkd", "student_kd", "student_dkd", "student_dot")]
    return (
        f"On this project's 2-core CPU machine (load {record['load_at_start']:.1f}, {record['date'][:10]}; "
        f"`python -m benchmarks.first_run`) the teacher took {walls['teacher'] / 60:.1f} minutes and a student "
        f"{min(students) / 60:.1f}–{max(students) / 60:.1f} minutes."
    )


GENERATORS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "log": log,
    "table": table,
    "eval": evaluation,
    "times": times,
}
BLOCKS: dict[str, tuple[str, ...]] = {"docs/training.md": ("log", "table", "eval"), "README.md": ("times",)}


def load(path: Path = RECORD) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: python -m benchmarks.first_run --run")
    return json.loads(path.read_text())


def stale(root: Path = ROOT, record: Mapping[str, Any] | None = None) -> list[str]:
    """Every block whose text differs from what the record generates, as ``file: block`` (missing markers too)."""
    record = record if record is not None else load()
    out = []
    for file, names in BLOCKS.items():
        text = (root / file).read_text(encoding="utf-8")
        for name in names:
            current = tables.block(text, name, OWNER)
            if current is None:
                out.append(f"{file}: {name} (no markers)")
            elif current.rstrip("\n") != GENERATORS[name](record).rstrip("\n"):
                out.append(f"{file}: {name}")
    return out


def write(root: Path = ROOT, record: Mapping[str, Any] | None = None) -> None:
    """Rewrite every block from the record."""
    record = record if record is not None else load()
    for file, names in BLOCKS.items():
        path = root / file
        text = path.read_text(encoding="utf-8")
        for name in names:
            text = tables.replace(text, name, GENERATORS[name](record), OWNER)
        path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.first_run", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--run", action="store_true", help="run the commands, save docs/first-run.json, write")
    action.add_argument("--write", action="store_true", help="rewrite the blocks from docs/first-run.json")
    args = parser.parse_args(argv)
    if args.run:
        with tempfile.TemporaryDirectory(prefix="deepkd-first-run-") as scratch:
            record = run(Path(scratch))
        RECORD.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        write(record=record)
        return 0
    if args.write:
        write()
        return 0
    differ = stale()
    for what in differ:
        print(f"stale: {what} (python -m benchmarks.first_run --write)", file=sys.stderr)
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
