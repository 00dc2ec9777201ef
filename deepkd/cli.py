"""The ``deepkd`` command line.

::

    deepkd [--version] [--import MODULE ...] COMMAND ...
    deepkd train CONFIG.toml [key=value ...] [--resume [--allow-changes] | --overwrite] [--import MODULE ...]
    deepkd eval [CHECKPOINT] [--config CONFIG.toml] [--model student|teacher] [--device DEVICE] [--batch-size N]

``--import MODULE`` (repeatable, before or after the command) imports a module of your own before the config is
read, so that the models, data sets and strategies it registers (:func:`deepkd.models.register_model`,
``deepkd.data.DATASETS.register``, :func:`deepkd.register_momentum`...) can be named in the config: a dotted module
name, found from the working directory first, or a path to a ``.py`` file.

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
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from deepkd._version import __version__
from deepkd.errors import ConfigError, DeepKDError
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


SITE = "docs/index.md (build the site with: nox -s docs)"

EPILOG = f"""\
examples:
  deepkd train baselines/configs/fashion_mnist/teacher.toml
  deepkd train baselines/configs/fashion_mnist/student_deepkd.toml train.epochs=5 recipe.momentum.delta=0.05
  deepkd train my_config.toml --import my_project.models     # models/data sets your module registers
  deepkd eval runs/fashion_mnist/student_deepkd/best.pt
  torchrun --nproc_per_node=2 -m deepkd train CONFIG.toml

Run 'deepkd COMMAND --help' for a command's options. Documentation: {SITE}.
"""

TRAIN_EPILOG = """\
examples:
  deepkd train baselines/configs/fashion_mnist/student_kd.toml train.epochs=5 recipe.loss.temperature=2
  deepkd train CONFIG.toml --resume                 # continue run_dir/latest.pt
  deepkd train my_config.toml --import my_models.py # a file that registers a model or data set

Overrides are dotted keys (train.epochs=3); values are TOML literals, otherwise strings.
Exit status: 0 on success or after SIGTERM/SIGUSR1, 2 for config/data/checkpoint errors, 130 after Ctrl-C.
"""

EVAL_EPILOG = """\
examples:
  deepkd eval runs/fashion_mnist/student_deepkd/best.pt
  deepkd eval weights.pt --config baselines/configs/cifar100/resnet32x4_resnet8x4/kd.toml --model teacher
"""


def import_user_code(specs: Sequence[str]) -> None:
    """Import each of ``specs`` (a dotted module name, or a path to a ``.py`` file) so that what it registers can be
    named in a config. A module name is looked up from the working directory first, as ``python -m`` would.

    Raises :class:`~deepkd.errors.ConfigError` naming the module when it cannot be found or fails to import.
    """
    if not specs:
        return
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    for spec in specs:
        path = Path(spec)
        try:
            if spec.endswith(".py") or os.sep in spec:
                if not path.is_file():
                    raise ConfigError(f"--import {spec}: no such file")
                module_spec = importlib.util.spec_from_file_location(path.stem, path)
                if module_spec is None or module_spec.loader is None:
                    raise ConfigError(f"--import {spec}: not a Python file")
                module = importlib.util.module_from_spec(module_spec)
                sys.modules[path.stem] = module
                module_spec.loader.exec_module(module)
            else:
                importlib.import_module(spec)
        except DeepKDError:
            raise
        except ModuleNotFoundError as exc:
            if exc.name is not None and spec.startswith(exc.name):
                raise ConfigError(
                    f"--import {spec}: no module named {exc.name!r} (looked in the working directory {cwd} and on "
                    "sys.path; give a path to a .py file, or install the package)"
                ) from None
            raise


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepkd",
        description="Knowledge distillation with composable recipes (KD, DKD, DOT, DeepKD).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"deepkd {__version__}")
    import_help = (
        "import MODULE (a dotted name, or a .py file) first, so that the models, data sets and strategies it "
        "registers can be named in the config; repeatable"
    )
    # before the command and after it: two destinations, so that neither list replaces the other
    parser.add_argument(
        "--import", dest="global_imports", action="append", default=[], metavar="MODULE", help=import_help
    )
    imports = argparse.ArgumentParser(add_help=False)
    imports.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE", help=import_help)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a student (or a teacher) from an experiment config",
        parents=[imports],
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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

    ev = commands.add_parser(
        "eval",
        help="evaluate a checkpoint (student or teacher) on its test set (top-1/top-5)",
        parents=[imports],
        epilog=EVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
        import_user_code([*args.global_imports, *args.imports])
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
