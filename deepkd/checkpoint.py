"""Checkpoint files: atomic writes, strict reads, and student weights for other code.

A run directory holds, rewritten after every epoch:

- ``latest.pt``: everything needed to continue the run bit for bit (student, optimizer with its strategy state,
  scheduler, random-number-generator states, epoch, global step, best metric, history, the resolved config as
  plain data, and the library version); also written inside an epoch by ``train.checkpoint_every_steps`` and on a
  stop signal (:mod:`deepkd.preemption`), with ``batches_done`` and the epoch's partial metric sums;
- ``best.pt``: the same, from the epoch with the best test top-1 so far;
- ``student.pt``: the latest student's plain ``state_dict`` (``model.load_state_dict(torch.load(path))``).

and, written once when the run starts, ``config.toml`` (the run's config, :data:`CONFIG_FILE`).

Each file is written to a temporary file in the same directory, flushed to disk, then renamed over the old one, so a
crash leaves either the old or the new file, never a torn one. A write that fails (no space, no permission, a
read-only file system) raises :class:`~deepkd.errors.CheckpointError` naming the file, the bytes needed and free,
and that the previous file is intact; no temporary file is left. Every file loads with
``torch.load(weights_only=True)``. Reading a corrupt, truncated or foreign file raises
:class:`~deepkd.errors.CheckpointError` and never changes anything on disk.

:class:`~deepkd.run_dir.RunDir` is that directory as the trainer sees it.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from deepkd import config as cfg
from deepkd._version import __version__
from deepkd.atomic import copy_atomic, save_atomic, save_text_atomic, write_failure
from deepkd.distributed import is_main_process
from deepkd.errors import CheckpointError, ConfigError
from deepkd.recipe import same_method

__all__ = [
    "BEST",
    "CONFIG_FILE",
    "FORMAT",
    "HARMLESS_CHANGES",
    "LATEST",
    "STUDENT",
    "WEIGHTS_KEYS",
    "WRAPPER_PREFIXES",
    "RunDir",
    "check_resumable",
    "check_state_dict",
    "config_changes",
    "copy_atomic",
    "load_checkpoint",
    "pack_state",
    "read_state_dict",
    "save_atomic",
    "save_text_atomic",
    "unpack_state",
    "write_failure",
]

T = TypeVar("T")

FORMAT = "deepkd-checkpoint"
LATEST, BEST, STUDENT = "latest.pt", "best.pt", "student.pt"
CONFIG_FILE = "config.toml"
REQUIRED_KEYS = (
    "format",
    "version",
    "epoch",
    "global_step",
    "student",
    "optimizer",
    "scheduler",
    "rng",
    "best",
    "history",
    "recipe",
    "config",
)


_UNSAFE = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _read(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _UNSAFE.search(str(exc))  # a well-formed pickle of an object weights_only does not allow
        if found is None:  # a torn or foreign file
            raise CheckpointError(_unreadable(path, exc)) from None
        raise CheckpointError(
            f"{str(path)!r} is not a weights-only torch file: torch.load(weights_only=True) refuses it because it "
            f"holds a {found.group(1)} object (e.g. a NumPy scalar or a pickled model next to the weights), and "
            "deepkd never loads a file unsafely. If you trust the file, convert it once: "
            "`torch.save(torch.load(path, weights_only=False)['model'], 'weights.pt')` (the state_dict, under "
            "whichever key it is) and use weights.pt"
        ) from None
    except Exception as exc:  # torch.load raises many types for torn or foreign files; all mean "unreadable"
        raise CheckpointError(_unreadable(path, exc)) from None


def _unreadable(path: Path, exc: Exception) -> str:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"cannot read checkpoint {str(path)!r}: it is corrupt, truncated or not a weights-only torch file "
        f"({type(exc).__name__}: {reason[:200]})"
    )


def _series(version: str) -> str:
    """The part of a version that must match to resume a training state: the major version, and the minor one
    before 1.0 (0.x releases may change the state's format, as 0.2 did)."""
    parts = str(version).split(".")
    return ".".join(parts[:2]) if parts[0] == "0" else parts[0]


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a full deepkd checkpoint (``latest.pt`` / ``best.pt``), on the CPU.

    Raises:
        CheckpointError: the file is missing, unreadable, not a deepkd checkpoint, lacks keys, or was written by
            a deepkd whose training state this one cannot resume (another major version; before 1.0, another minor
            one). Its student weights still load, through :func:`read_state_dict`.
    """
    path = Path(path)
    data = _read(path)
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a deepkd training checkpoint (no format={FORMAT!r} entry); a plain state_dict "
            "such as student.pt holds weights only"
        )
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {', '.join(missing)}")
    if _series(data["version"]) != _series(__version__):
        raise CheckpointError(
            f"checkpoint {str(path)!r} was written by deepkd {data['version']}, whose training state this deepkd "
            f"{__version__} cannot resume (major versions differ, or minor ones before 1.0): start a new run; its "
            f"student weights still load as a teacher or a starting point (checkpoint = {str(path)!r})"
        )
    return dict(data)


#: keys under which training scripts keep a model's weights: CRD / mdistiller (``"model"``), PyTorch Lightning and
#: many others (``"state_dict"``), pytorch-cifar style scripts (``"net"``), PyTorch's tutorial (``"model_state_dict"``)
WEIGHTS_KEYS = ("model", "state_dict", "net", "model_state_dict")
#: prefixes that wrappers add to every key: DataParallel / DistributedDataParallel, ``torch.compile``
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Model weights from a file in any of the field's common layouts, read with ``torch.load(weights_only=True)``:

    - a plain ``state_dict`` (``student.pt``, torchvision's ``.pth``);
    - a dict holding it under ``"model"`` (CRD / mdistiller ``ckpt_epoch_240.pth``, next to ``"optimizer"``,
      ``"epoch"``, ``"best_acc"``...), ``"state_dict"``, ``"net"`` or ``"model_state_dict"`` (:data:`WEIGHTS_KEYS`);
    - a deepkd training checkpoint (``latest.pt`` / ``best.pt``): its student.

    A ``module.`` prefix on every key (saved from DataParallel / DistributedDataParallel) and ``torch.compile``'s
    ``_orig_mod.`` are removed.

    Raises:
        CheckpointError: the file is missing or unreadable, ``weights_only`` refuses it (the message says how to
            convert it), or it holds none of these layouts (the message names its top-level keys).
    """
    path = Path(path)
    data = _read(path)
    if isinstance(data, Mapping) and data.get("format") == FORMAT:  # its student, whichever deepkd wrote it
        if not isinstance(data.get("student"), Mapping):
            raise CheckpointError(f"deepkd checkpoint {str(path)!r} holds no student weights")
        data = data["student"]
    top = data
    for _ in range(3):  # {"model": ...}, and at most two levels of such wrapping
        if _is_state_dict(data) or not isinstance(data, Mapping):
            break
        found = [data[k] for k in WEIGHTS_KEYS if isinstance(data.get(k), Mapping)]
        data = next((d for d in found if _is_state_dict(d)), found[0] if found else None)
    if not _is_state_dict(data):
        raise CheckpointError(f"{str(path)!r} holds no model weights: {_describe_top(top)}")
    return _strip_prefixes(data)


def _describe_top(data: object) -> str:
    expected = (
        "expected a state_dict (parameter names -> tensors), or one under "
        f"{', '.join(repr(k) for k in WEIGHTS_KEYS[:-1])} or {WEIGHTS_KEYS[-1]!r}"
    )
    if not isinstance(data, Mapping):
        return f"it holds a {type(data).__name__}; {expected}"
    if not data:
        return f"it holds an empty dict; {expected}"
    keys = [str(k) for k in data]
    shown = ", ".join(repr(k) for k in keys[:12]) + (f" (and {len(keys) - 12} more)" if len(keys) > 12 else "")
    return f"its top-level keys are {shown}; {expected}"


def _strip_prefixes(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(weights)
    while prefix := next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in out)), None):
        out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def _is_state_dict(data: object) -> bool:
    return (
        isinstance(data, Mapping)
        and len(data) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items())
    )


def check_state_dict(model: nn.Module, saved: Mapping[str, Any], what: str = "the checkpoint's student") -> None:
    """Raise :class:`CheckpointError` unless ``saved`` has exactly ``model``'s keys and shapes; the message names
    ``what`` was saved and the first few missing keys, unexpected keys and shape mismatches."""
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"{what}'s weights are malformed ({type(saved).__name__})")
    own = model.state_dict()
    missing = [f"missing {k}" for k in own if k not in saved]
    unexpected = [f"unexpected {k}" for k in saved if k not in own]
    shapes = [
        f"{k}: saved {tuple(saved[k].shape)}, model {tuple(t.shape)}"
        for k, t in own.items()
        if k in saved and isinstance(saved[k], torch.Tensor) and saved[k].shape != t.shape
    ]
    problems = missing + unexpected + shapes
    if problems:
        shown = missing[:3] + unexpected[:3] + shapes[:3]  # a few of each kind
        more = f" (and {len(problems) - len(shown)} more)" if len(problems) > len(shown) else ""
        counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} of another shape"
        raise CheckpointError(f"{what} does not fit this model: {'; '.join(shown)}{more} [{counts}]")


def check_recipe(saved: object, mine: Mapping[str, Any], what: str) -> None:
    """Raise :class:`CheckpointError` unless ``saved`` (a recipe as plain data) describes the same method as
    ``mine`` (:func:`~deepkd.recipe.same_method`: the ``name`` label aside); ``what`` names the saved thing."""
    if not isinstance(saved, Mapping) or not same_method(saved, mine):
        raise CheckpointError(f"{what} was written by another recipe: saved {saved}, this run uses {mine}")


def check_resumable(state: Mapping[str, Any], student: nn.Module, steps_per_epoch: int) -> tuple[int, int]:
    """``(epoch, global_step)`` of a training checkpoint, once checked to fit ``student`` (:func:`check_state_dict`)
    and a train_loader of ``steps_per_epoch`` batches (the schedule and data order count steps). ``epoch`` counts
    completed epochs; a mid-epoch checkpoint adds ``batches_done`` steps of the next one to ``global_step``.

    Raises:
        CheckpointError: the student's keys or shapes differ, or the step count does not match the epochs.
    """
    check_state_dict(student, state["student"])
    epoch, step = int(state["epoch"]), int(state["global_step"])
    done = int(state.get("batches_done") or 0)  # a mid-epoch checkpoint: batches of epoch + 1 already trained
    if not 0 <= done < steps_per_epoch or step != epoch * steps_per_epoch + done:
        raise CheckpointError(
            f"the checkpoint took {step} steps in {epoch} epochs, but this train_loader has {steps_per_epoch} "
            "batches per epoch (did the data set, batch_size or drop_last change?)"
        )
    return epoch, step


#: settings that never change what a resumed run computes: a resume may change them without being told to
HARMLESS_CHANGES = (
    "run_dir",
    "train.progress",
    "train.log_every",
    "train.tensorboard",
    "train.checkpoint_every_steps",
    "train.dist_timeout",
    "train.threads",
)


def config_changes(saved: Any, current: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Every setting that differs between two configs as plain data: ``(dotted key, saved, current)``.

    >>> config_changes({"train": {"epochs": 3, "lr": 0.1}}, {"train": {"epochs": 2, "lr": 0.1}})
    [('train.epochs', 3, 2)]
    """
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        out = []
        for key in [*saved, *(k for k in current if k not in saved)]:
            name = f"{prefix}.{key}" if prefix else str(key)
            out += config_changes(saved.get(key), current.get(key), name)
        return out
    return [] if saved == current else [(prefix or "$", saved, current)]


def _describe_changes(changes: list[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)


class RunDir:
    """A run directory: where ``latest.pt``, ``best.pt``, ``student.pt`` and ``config.toml`` live. Every file is
    written atomically, and a failed write says why (:mod:`deepkd.atomic`).

    >>> RunDir("runs/a").path.name
    'a'
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def open(
        self,
        *,
        resume: bool,
        overwrite: bool,
        run_config: object,
        load: Callable[[dict[str, Any]], None],
        allow_changes: bool = False,
    ) -> None:
        """Start or continue the run: with ``resume``, pass ``latest.pt`` (when it exists) to ``load`` (on every rank
        of a distributed run: each reads the file); without it, refuse a directory that holds a run unless
        ``overwrite``. Then (main process only) create the directory and write ``config.toml``, so a refused or
        failed resume leaves every file as it was.

        A resume whose ``run_config`` differs from the checkpoint's is refused with the differences listed, unless
        ``allow_changes`` (then they are printed on stderr); changes of :data:`HARMLESS_CHANGES` are printed only.

        Raises:
            ConfigError: the directory holds a run and neither ``resume`` nor ``overwrite`` is set; a resume would
                change the run's settings and ``allow_changes`` is not set.
            CheckpointError: ``latest.pt`` is unreadable (or ``load`` refuses it).
        """
        latest = self.path / LATEST
        if latest.exists():
            if resume:
                state = load_checkpoint(latest)
                load(state)  # checks the recipe and the model first: another one is a CheckpointError
                self._check_changes(state["config"], cfg.unstructure(run_config), allow_changes)
            elif not overwrite:
                raise ConfigError(
                    f"{str(self.path)!r} already holds a run ({LATEST}); resume it (resume=True, "
                    "`deepkd train --resume`), start over (overwrite=True, `--overwrite`), or choose another run_dir"
                )
        if is_main_process():
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise write_failure(self.path / CONFIG_FILE, exc, None) from None
            save_text_atomic(cfg.dumps(run_config, CONFIG_FILE.rpartition(".")[2]), self.path / CONFIG_FILE)

    def _check_changes(self, saved: Any, current: Any, allow: bool) -> None:
        changes = config_changes(saved, current)
        harmless = [c for c in changes if c[0] in HARMLESS_CHANGES]
        real = [c for c in changes if c[0] not in HARMLESS_CHANGES]
        if real and not allow:
            raise ConfigError(
                f"the run in {str(self.path)!r} was started with other settings; resuming would change "
                f"{_describe_changes(real)}. Resume with the run's own settings (its {CONFIG_FILE}), start over "
                "(--overwrite), or accept the changes (--resume --allow-changes; fit(..., allow_changes=True))"
            )
        if changes and is_main_process():
            print(f"deepkd: resuming with changed settings: {_describe_changes(real + harmless)}", file=sys.stderr)
    def save(self, state: Mapping[str, Any], best: bool) -> None:
        """Write one epoch's checkpoints, on the main process only (elsewhere it does nothing: on a distributed run
        every rank builds ``state``, which may take a collective, and rank 0 writes it). ``best.pt`` comes first and
        ``latest.pt`` is a copy of it, so a crash never leaves ``best.pt`` behind ``latest.pt``; ``student.pt``
        (``state["student"]``) comes last."""
        if not is_main_process():
            return
        if best:
            save_atomic(state, self.path / BEST)
            copy_atomic(self.path / BEST, self.path / LATEST)
        else:
            save_atomic(state, self.path / LATEST)
        save_atomic(state["student"], self.path / STUDENT)

    def save_latest(self, state: Mapping[str, Any]) -> None:
        """Write a mid-epoch ``latest.pt`` only (main process only, like :meth:`save`)."""
        if is_main_process():
            save_atomic(state, self.path / LATEST)




# --------------------------------------------------------------------------------------------------------------
# Strategy states (NamedTuples of tensors, possibly nested) as plain data inside an optimizer's state_dict.


def pack_state(state: Any) -> Any:
    """A strategy state as plain data loadable with ``weights_only=True``: NamedTuples become dicts of their fields,
    tuples lists; tensors, numbers and ``None`` stay as they are."""
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return {name: pack_state(value) for name, value in zip(state._fields, state)}
    if isinstance(state, (tuple, list)):
        return [pack_state(value) for value in state]
    return state


def unpack_state(data: Any, like: T, what: str) -> T:
    """The state saved by :func:`pack_state`, rebuilt in the structure of ``like`` (the state this run built),
    with every tensor checked against ``like``'s shape and moved to its device.

    Raises:
        CheckpointError: the saved state has other fields, lengths or tensor shapes than ``like``.
    """

    def rebuild(saved: Any, ref: Any, path: str) -> Any:
        if isinstance(ref, tuple) and hasattr(ref, "_fields"):
            if not isinstance(saved, Mapping) or set(saved) != set(ref._fields):
                names = set(saved) if isinstance(saved, Mapping) else set()
                missing, extra = sorted(set(ref._fields) - names), sorted(names - set(ref._fields))
                raise CheckpointError(
                    f"the saved {what} is incomplete or malformed at {path}: missing {missing}, unexpected {extra}"
                )
            return type(ref)(*(rebuild(saved[f], getattr(ref, f), f"{path}.{f}") for f in ref._fields))
        if isinstance(ref, tuple):
            if not isinstance(saved, (list, tuple)) or len(saved) != len(ref):
                got = f"{len(saved)} entries" if isinstance(saved, (list, tuple)) else type(saved).__name__
                raise CheckpointError(
                    f"the saved {what} shapes do not match this model's parameters at {path}: "
                    f"saved {got}, expected {len(ref)} entries"
                )
            return tuple(rebuild(s, r, f"{path}[{i}]") for i, (s, r) in enumerate(zip(saved, ref)))
        if isinstance(ref, torch.Tensor):
            if not isinstance(saved, torch.Tensor) or saved.shape != ref.shape:
                shape = tuple(saved.shape) if isinstance(saved, torch.Tensor) else type(saved).__name__
                raise CheckpointError(
                    f"the saved {what} shapes do not match this model's parameters at {path}: "
                    f"saved {shape}, expected {tuple(ref.shape)}"
                )
            return saved.to(ref.device)
        if (ref is None) != (saved is None):
            raise CheckpointError(f"the saved {what} does not match this configuration at {path}")
        return saved

    return rebuild(data, like, "$")  # type: ignore[no-any-return]
