"""The ``deepkd`` command line.

::

    deepkd train CONFIG.toml [key=value ...] [--resume [--allow-changes] | --overwrite]
    deepkd eval [CHECKPOINT] [--config CONFIG.toml] [--model student|teacher] [--device DEVICE] [--batch-size N]

``deepkd eval`` prints the test top-1, top-5 and loss of a ``latest.pt``/``best.pt`` (which carry their config) or,
with ``--config``, of any weights file (a plain state_dict, CRD / mdistiller's ``{"model": ...}``...) loaded into the
config's student or, with ``--model teacher``, its teacher; without a CHECKPOINT it evaluates that model's own
``checkpoint`` or ``pretrained`` weights.

Overrides are dotted keys into the config (``train.epochs=3 recipe.momentum.delta=0.05 data.name=digits``); values
are read as TOML literals (``3``, ``0.05``, ``true``, ``[1, 2]``, ``{name = "kd"}``) and otherwise taken as strings.
Unknown keys are rejected with the valid ones listed. Configuration, data and checkpoint problems end the command
with exit status 2 and one line on stderr, without a traceback. ``python -m deepkd`` is the same command.

``deepkd train`` never loses work: Ctrl-C, SIGTERM and SIGUSR1 save ``latest.pt`` at the next step and stop (exit
status 130 after Ctrl-C, 0 after the others; continue with ``--resume``); a second Ctrl-C stops at once. A resume
whose config or overrides differ from the run's is refused with the differences listed, unless
``--allow-changes``. It never goes silent: the start-up steps are announced, and off a terminal a line reports the
training every few seconds (``train.progress = false`` silences both).

``torchrun --nproc_per_node=N -m deepkd train CONFIG.toml`` trains on N processes (``docs/distributed.md``): only
rank 0 prints; a rank that fails prints one line naming itself (rank, host, pid) before its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from deepkd.errors import DeepKDError
from deepkd.launch import failure_message, launched_rank, launched_world_size

__all__ = ["main"]

#: the exit status of a command stopped by Ctrl-C, as a shell reports one (128 + SIGINT)
INTERRUPTED = 130


def _train(args: argparse.Namespace) -> int:
    from deepkd.experiment import load_experiment, run

    config = load_experiment(args.config, args.overrides)
    history = run(
        config, resume=args.resume, overwrite=args.overwrite, allow_changes=args.allow_changes, source=args.config
    )
    if launched_rank() != 0:
        return INTERRUPTED if history.stopped_by == "SIGINT" else 0
    if history.interrupted:
        print(f"interrupted; continue with: deepkd train {args.config} --resume (run directory: {config.run_dir})")
        return INTERRUPTED if history.stopped_by == "SIGINT" else 0  # Ctrl-C: a script must not go on
    best, final = history.best_top1, history.final_top1
    if best is not None and final is not None:
        print(f"best test top-1 {100 * best:.2f}% (epoch {history.best_epoch}), final {100 * final:.2f}%")
    print(f"run directory: {config.run_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from deepkd.experiment import evaluate_checkpoint, load_experiment

    config = load_experiment(args.config) if args.config else None
    m = evaluate_checkpoint(
        args.checkpoint, config=config, device=args.device, batch_size=args.batch_size, model=args.model
    )
    epoch = "" if m["epoch"] is None else f", epoch {m['epoch']}"
    print(
        f"{m['role']} {m['model']}: top-1 {100 * m['test_top1']:.2f}%  top-5 {100 * m['test_top5']:.2f}%  "
        f"loss {m['test_loss']:.4f}  ({m['samples']} test images{epoch})"
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepkd", description="Knowledge distillation with composable recipes.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a student (or a teacher) from an experiment config")
    train.add_argument("config", help="experiment config (.toml or .json)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=3")
    mode = train.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue run_dir/latest.pt if it exists")
    mode.add_argument("--overwrite", action="store_true", help="start over even if run_dir holds a run")
    train.add_argument(
        "--allow-changes",
        action="store_true",
        help="with --resume: continue even where the config or overrides differ from the run's (they are listed)",
    )
    train.set_defaults(func=_train)

    ev = commands.add_parser("eval", help="evaluate a checkpoint (student or teacher) on its test set (top-1/top-5)")
    ev.add_argument(
        "checkpoint",
        nargs="?",
        default=None,
        help="latest.pt or best.pt, or with --config any weights file (student.pt, {'model': ...}, ...); "
        "left out: the --model's own checkpoint or pretrained weights from --config",
    )
    ev.add_argument("--config", help="experiment config, for weights-only files such as student.pt")
    ev.add_argument(
        "--model",
        choices=("student", "teacher"),
        default="student",
        help="which of the config's models to evaluate (default student)",
    )
    ev.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1...")
    ev.add_argument("--batch-size", type=int, default=None, help="evaluation batch size")
    ev.set_defaults(func=_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for configuration, data and checkpoint errors)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)  # overrides may come after options: collect them from `extra`
    unknown = [a for a in extra if args.command != "train" or a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "train":
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.func(args))
    except DeepKDError as exc:
        message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        where = f"rank {launched_rank()}: " if launched_world_size() > 1 else ""
        print(f"deepkd: error: {where}{message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deepkd: interrupted (no checkpoint was written by this Ctrl-C)", file=sys.stderr)
        return INTERRUPTED
    except Exception as exc:
        if launched_world_size() > 1:  # say which rank failed, then the traceback
            print(failure_message(exc), file=sys.stderr, flush=True)
        raise
