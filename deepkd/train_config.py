"""How to train: :class:`TrainConfig` (the ``[train]`` table of a config file) and the autocast it asks for.

:class:`TrainConfig` is re-exported by :mod:`deepkd.trainer`, its historical home: ``from deepkd.trainer import
TrainConfig`` keeps working.

>>> TrainConfig(epochs=3).optimizer_kwargs()["lr"]
0.05
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Literal

import attrs
import torch
from attrs import validators as v

from deepkd.errors import ConfigError
from deepkd.launch import lr_factor, rank_device
from deepkd.param_groups import momentum_problem
from deepkd.registry import name_of
from deepkd.schedules import SCHEDULES, Step
from deepkd.types import ScheduleStrategy
from deepkd.utils import resolve_device
from deepkd.validators import integer, real

if TYPE_CHECKING:
    from deepkd.recipe import Recipe

__all__ = ["TrainConfig", "autocast"]


@attrs.frozen(kw_only=True)
class TrainConfig:
    """How to train. The defaults are the CIFAR-100 recipe of mdistiller (SGD, μ = 0.9, wd 5e-4, lr 0.05, 240
    epochs, ×0.1 at 150/180/210).

    Attributes:
        epochs: number of epochs.
        lr, momentum, weight_decay, dampening, nesterov: the optimizer's hyperparameters (μ = ``momentum``).
        schedule: learning-rate multiplier per step (:mod:`deepkd.schedules`), e.g. ``{name = "cosine"}``.
        decomposition: ``"sequential"`` or ``"batched"`` gradient products (equal results; batched is not faster
            on any GPU setup measured, see ``docs/benchmarks.md``).
        track_gsnr: estimate and log each gradient group's GSNR even when the momentum strategy does not use it.
        nonfinite: ``"raise"`` on a NaN/inf loss part (naming step and part) or ``"skip"`` such steps.
        precision: ``"fp32"``, ``"bf16"`` (autocast on CPU or CUDA) or ``"fp16"`` (CUDA only; without loss scaling,
            since the optimizer takes its own gradients: prefer bf16). Losses are computed in float32 either way.
        compile: run the student through ``torch.compile``.
        capture: replay each training step (student and teacher forwards, the distillation step) as one CUDA graph
            (:mod:`deepkd.capture`): on a GPU a small model's step is bound by kernel launches, which a graph
            removes. The first steps, GSNR estimation steps and batches of another shape run eagerly; on the CPU,
            in a distributed run or where an operation cannot be captured, every step runs eagerly, with a
            warning that says why.
        cache_teacher: compute the teacher's logits once per sample (data without random augmentation only).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        log_every: write a step record every this many steps.
        progress: show a progress bar (``None``: only when stderr is a terminal).
        tensorboard: also write TensorBoard scalars (needs the ``tensorboard`` package).
        checkpoint_every_steps: also write ``latest.pt`` every this many steps inside an epoch (0: at epoch ends
            only), so a crash loses at most that many steps; resuming from it is exact.
        dist_timeout: seconds a collective of a distributed run (``torchrun``) may wait for the other ranks before
            it fails, so a dead or stuck rank ends the run instead of hanging it.
        scale_lr: on ``N`` processes, multiply ``lr`` by ``N`` (``"linear"``), ``sqrt(N)`` (``"sqrt"``) or nothing
            (``"none"``, the default); the global batch is ``data.batch_size × N``.
        sync: what the ranks of a distributed run all-reduce each step (:class:`~deepkd.optim.DistillOptimizer`):
            ``"step"`` (default) one step direction, ``"grads"`` every gradient group (global momentum buffers on
            every rank, so a resumed run repeats the uninterrupted one bit for bit).
        sync_batchnorm: on a distributed CUDA run, normalise with statistics over the global batch
            (:class:`torch.nn.SyncBatchNorm`) instead of each rank's own.
        threads: torch's intra-op CPU threads for ``deepkd train`` (:func:`deepkd.experiment.run`); unset: chosen
            for the machine (:func:`deepkd.utils.choose_threads`: on a busy CPU fewer than torch's one per core,
            which can make each step many times slower) and printed. A :class:`~deepkd.trainer.Trainer` of your
            own leaves torch's setting alone.
    """

    epochs: int = attrs.field(default=240, validator=integer(ge=1))
    lr: float = attrs.field(default=0.05, validator=real(gt=0.0))
    momentum: float = attrs.field(default=0.9, validator=real(ge=0.0, lt=1.0))
    weight_decay: float = attrs.field(default=5e-4, validator=real(ge=0.0))
    dampening: float = attrs.field(default=0.0, validator=real(ge=0.0, le=1.0))
    nesterov: bool = attrs.field(default=False, validator=v.instance_of(bool))
    schedule: ScheduleStrategy = attrs.field(factory=Step, validator=SCHEDULES.validator())
    decomposition: Literal["sequential", "batched"] = attrs.field(
        default="sequential", validator=v.in_(("sequential", "batched"))
    )
    track_gsnr: bool = attrs.field(default=True, validator=v.instance_of(bool))
    nonfinite: Literal["raise", "skip"] = attrs.field(default="raise", validator=v.in_(("raise", "skip")))
    precision: Literal["fp32", "bf16", "fp16"] = attrs.field(default="fp32", validator=v.in_(("fp32", "bf16", "fp16")))
    compile: bool = attrs.field(default=False, validator=v.instance_of(bool))
    capture: bool = attrs.field(default=False, validator=v.instance_of(bool))
    cache_teacher: bool = attrs.field(default=False, validator=v.instance_of(bool))
    device: str = attrs.field(default="auto", validator=v.instance_of(str))
    log_every: int = attrs.field(default=50, validator=integer(ge=1))
    progress: bool | None = attrs.field(default=None, validator=v.optional(v.instance_of(bool)))
    tensorboard: bool = attrs.field(default=False, validator=v.instance_of(bool))
    checkpoint_every_steps: int = attrs.field(default=0, validator=integer(ge=0))
    dist_timeout: float = attrs.field(default=1800.0, validator=real(gt=0.0))
    scale_lr: Literal["none", "linear", "sqrt"] = attrs.field(
        default="none", validator=v.in_(("none", "linear", "sqrt"))
    )
    sync: Literal["step", "grads"] = attrs.field(default="step", validator=v.in_(("step", "grads")))
    sync_batchnorm: bool = attrs.field(default=False, validator=v.instance_of(bool))
    threads: int | None = attrs.field(default=None, validator=v.optional(integer(ge=1)))

    def check_recipe(self, recipe: Recipe) -> None:
        """Raise :class:`ConfigError` (``@ $.train.momentum``) unless ``momentum`` plus every offset the recipe's
        momentum strategy can use lies in [0, 1): the settings of two tables checked together, when a config is
        loaded, before any data or model is built."""
        problem = momentum_problem(self.momentum, recipe.plan().offset_range, name_of(recipe.momentum))
        if problem is not None:
            raise ConfigError(
                f"momentum = {self.momentum} {problem}; every coefficient must lie in [0, 1): lower train.momentum "
                "or the momentum strategy's offsets (recipe.momentum) @ $.train.momentum"
            )

    def optimizer_kwargs(self, world_size: int = 1) -> dict[str, Any]:
        """The keyword arguments of :class:`~deepkd.optim.DistillOptimizer` that this config sets, the learning
        rate scaled for ``world_size`` processes as ``scale_lr`` asks."""
        return {
            "lr": self.lr * lr_factor(self.scale_lr, world_size),
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "dampening": self.dampening,
            "nesterov": self.nesterov,
            "decomposition": self.decomposition,
            "track_gsnr": self.track_gsnr,
            "nonfinite": self.nonfinite,
            "sync": self.sync,
        }

    def resolved_device(self) -> torch.device:
        """The device to train on (``"auto"`` resolved, see :func:`~deepkd.utils.resolve_device`), checked against
        ``precision``: fp16 autocast needs CUDA. A distributed run maps ``cuda`` to ``cuda:LOCAL_RANK``."""
        device = rank_device(resolve_device(self.device))
        if self.precision == "fp16" and device.type != "cuda":
            raise ConfigError(f"precision 'fp16' needs a CUDA device, not {device}; use 'bf16' @ $.train.precision")
        return device


def autocast(device: torch.device, precision: str, *, cache: bool = True) -> contextlib.AbstractContextManager[Any]:
    """The autocast context of a ``precision`` (a no-op for ``"fp32"``): every forward pass of a run goes through it.
    ``cache=False`` turns off autocast's cache of cast weights (what a captured CUDA graph needs)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)
