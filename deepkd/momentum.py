r"""Heavy-ball momentum over gradient groups: the ``sgd``, ``dot``, ``fixed`` and ``gsnr`` strategies.

Every strategy keeps one momentum buffer per *group* of loss parts. With the PyTorch convention, for each buffer
:math:`v` with coefficient :math:`m` and gradient :math:`g`,

.. math:: v \leftarrow m\,v + (1 - \text{dampening})\,g \quad(\text{first step: } v \leftarrow g),
          \qquad \theta \leftarrow \theta - \mathrm{lr} \sum_{\text{buffers}} d,

where :math:`d = v`, or :math:`d = g + m\,v` with Nesterov. Weight decay adds :math:`\mathrm{wd}\,\theta_t` to the
gradient of the group that holds the ``task`` part. Coefficients are :math:`m = \mu + \text{offset}`, with
:math:`\mu` the optimizer's ``momentum`` and the offsets set by the strategy:

- ``sgd``: one buffer for the summed gradient; equals :class:`torch.optim.SGD`.
- ``dot`` (Zhao et al., "DOT: A Distillation-Oriented Trainer", ICCV 2023): task :math:`-\Delta`, distillation
  (TCKD + NCKD) :math:`+\Delta`.
- ``fixed`` (DeepKD, arXiv 2505.15133): task, TCKD and NCKD buffers with offsets :math:`\delta_{TOG},
  \delta_{TCG}, \delta_{NCG}`. ``reference_quirks=True`` reproduces the official code instead: the task buffer uses
  the TCKD coefficient, weight decay joins the TCKD gradient at the parameter after the task and NCKD updates of
  the same step, and updates apply in the order task, NCKD, TCKD.
- ``gsnr`` (deepkd's own): the offsets follow the measured GSNR of each component (:mod:`deepkd.gsnr`).

Groups whose coefficients are equal for the whole run share one buffer and one gradient product, because their
buffers would be identical in sum; the official-code weight-decay placement forbids that, as do GSNR coefficients
(they change during the run and need each component's gradient).

Each update has a per-tensor reference path and a ``torch._foreach_*`` path, tested equal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple, Protocol

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from deepkd.errors import ConfigError
from deepkd.gsnr import allocate
from deepkd.registry import register_momentum
from deepkd.validators import integer, real

__all__ = [
    "DOT",
    "GSNR",
    "SGD",
    "Fixed",
    "MomentumState",
    "MomentumStrategy",
    "Plan",
    "init",
    "update",
    "update_reference_quirks",
]

Grads = Sequence[Sequence[Tensor]]  # [group][param]


class MomentumState(NamedTuple):
    """Buffers ``[group][param]`` and the number of updates applied (0 before the first step)."""

    step: Tensor  # int64 scalar
    buffers: tuple[tuple[Tensor, ...], ...]


def init(params: Sequence[Tensor], groups: int) -> MomentumState:
    """Zero buffers for ``groups`` groups over ``params``; shapes stay fixed for the whole run."""
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    device = params[0].device if params else "cpu"
    return MomentumState(
        step=torch.zeros((), dtype=torch.int64, device=device),
        buffers=tuple(
            tuple(torch.zeros_like(p, memory_format=torch.preserve_format) for p in params) for _ in range(groups)
        ),
    )


def _check(state: MomentumState, params: Sequence[Tensor], grads: Grads, coefficients: Sequence[float]) -> None:
    if not (len(grads) == len(state.buffers) == len(coefficients)):
        raise ValueError(
            f"got {len(grads)} gradient groups and {len(coefficients)} coefficients for {len(state.buffers)} buffers"
        )
    for g in grads:
        if len(g) != len(params):
            raise ValueError(f"got {len(g)} gradients for {len(params)} parameters")


def update(
    state: MomentumState,
    params: Sequence[Tensor],
    grads: Grads,
    coefficients: Sequence[float],
    *,
    lr: float,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    decay_group: int = 0,
    foreach: bool = False,
) -> MomentumState:
    """One step: update each group's buffer with its coefficient and move the parameters in place.

    Args:
        params: the parameters (updated in place).
        grads: one gradient per group and parameter.
        coefficients: one momentum coefficient per group.
        decay_group: the group whose gradient receives the weight-decay term (the one holding ``task``).
        foreach: use the multi-tensor ``torch._foreach_*`` kernels.
    """
    _check(state, params, grads, coefficients)
    first = int(state.step) == 0
    kernel = _update_foreach if foreach else _update_single
    with torch.no_grad():
        kernel(params, grads, state.buffers, coefficients, lr, dampening, weight_decay, nesterov, decay_group, first)
    return state._replace(step=state.step + 1)


def _update_single(
    params: Sequence[Tensor],
    grads: Grads,
    buffers: Sequence[Sequence[Tensor]],
    coefficients: Sequence[float],
    lr: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    decay_group: int,
    first: bool,
) -> None:
    for i, p in enumerate(params):
        directions = []
        for b, m in enumerate(coefficients):  # every buffer first: weight decay sees the parameter before the step
            g = grads[b][i]
            if b == decay_group and weight_decay != 0:
                g = g.add(p, alpha=weight_decay)
            buf = buffers[b][i]
            if first or m == 0:  # torch.optim.SGD without momentum moves by the raw gradient
                buf.copy_(g)
            else:
                buf.mul_(m).add_(g, alpha=1 - dampening)
            directions.append(g.add(buf, alpha=m) if nesterov else buf)
        for d in directions:  # in place, one buffer at a time: no temporary for the sum
            p.add_(d, alpha=-lr)


def _update_foreach(
    params: Sequence[Tensor],
    grads: Grads,
    buffers: Sequence[Sequence[Tensor]],
    coefficients: Sequence[float],
    lr: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    decay_group: int,
    first: bool,
) -> None:
    params = list(params)
    if not params:
        return
    directions = []
    for b, m in enumerate(coefficients):
        g = list(grads[b])
        if b == decay_group and weight_decay != 0:
            g = list(torch._foreach_add(g, params, alpha=weight_decay))
        buf = list(buffers[b])
        if first or m == 0:  # torch.optim.SGD without momentum moves by the raw gradient
            torch._foreach_copy_(buf, g)
        else:
            torch._foreach_mul_(buf, m)
            torch._foreach_add_(buf, g, alpha=1 - dampening)
        directions.append(list(torch._foreach_add(g, buf, alpha=m)) if nesterov else buf)
    for d in directions:
        torch._foreach_add_(params, d, alpha=-lr)


def update_reference_quirks(
    state: MomentumState,
    params: Sequence[Tensor],
    grads: Grads,
    coefficients: Sequence[float],
    *,
    lr: float,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    foreach: bool = False,
) -> MomentumState:
    """The official DeepKD code's update, for groups ``(task, tckd, nckd)`` with coefficients ``(m_TOG, m_TCG,
    m_NCG)``: the task buffer uses ``m_TCG``; updates apply task, NCKD, TCKD in that order, each moving the
    parameters; weight decay joins the TCKD gradient at the parameter reached after the first two.
    """
    _check(state, params, grads, coefficients)
    if len(coefficients) != 3:
        raise ValueError("the official-code update needs exactly three groups: task, tckd, nckd")
    first = int(state.step) == 0
    m_tcg, m_ncg = coefficients[1], coefficients[2]
    kernel = _update_foreach if foreach else _update_single
    with torch.no_grad():
        for group, m, decay in ((0, m_tcg, 0.0), (2, m_ncg, 0.0), (1, m_tcg, weight_decay)):
            kernel(params, [grads[group]], [state.buffers[group]], [m], lr, dampening, decay, nesterov, 0, first)
    return state._replace(step=state.step + 1)


# --------------------------------------------------------------------------------------------------------------
# Strategies: frozen configs whose ``plan`` says which parts share a buffer and with which coefficient offsets.


@attrs.frozen
class Plan:
    """How a momentum strategy treats a loss's parts.

    Attributes:
        groups: the parts that share each buffer (and one gradient product).
        offsets: each buffer's coefficient offset from the optimizer's ``momentum`` (initial values for ``gsnr``).
        decay_group: the buffer whose gradient receives weight decay (the one holding ``task``).
        offset_range: the smallest and largest offsets the strategy can ever use, so that the optimizer can check
            that every coefficient ``momentum + offset`` lies in [0, 1).
        gsnr: the GSNR strategy that re-allocates the offsets during the run, or ``None`` for static offsets.
        quirks: apply the official DeepKD code's update (:func:`update_reference_quirks`).
    """

    groups: tuple[tuple[str, ...], ...]
    offsets: tuple[float, ...]
    decay_group: int
    offset_range: tuple[float, float]
    gsnr: GSNR | None = None
    quirks: bool = False


class MomentumStrategy(Protocol):
    """What a registered momentum strategy provides."""

    def plan(self, parts: Sequence[str]) -> Plan: ...


def merged_plan(parts: Sequence[str], offsets: Mapping[str, float]) -> Plan:
    """Merge the parts with equal (static) offsets into one group each, keeping the parts' order."""
    groups: dict[float, list[str]] = {}
    for part in parts:
        groups.setdefault(float(offsets[part]), []).append(part)
    names = tuple(tuple(g) for g in groups.values())
    offs = tuple(groups)
    decay = next((i for i, g in enumerate(names) if "task" in g), 0)
    return Plan(names, offs, decay, (min(offs, default=0.0), max(offs, default=0.0)))


_delta = real(gt=-1.0, lt=1.0)


@register_momentum("sgd")
@attrs.frozen(kw_only=True)
class SGD:
    """One buffer for the summed gradient: plain SGD with momentum, identical to :class:`torch.optim.SGD`."""

    def plan(self, parts: Sequence[str]) -> Plan:
        return merged_plan(parts, {p: 0.0 for p in parts})


@register_momentum("dot")
@attrs.frozen(kw_only=True)
class DOT:
    """DOT (ICCV 2023): task momentum μ − Δ, distillation momentum μ + Δ. CIFAR Δ = 0.075, ImageNet Δ = 0.09."""

    delta: float = attrs.field(default=0.075, validator=_delta)

    def plan(self, parts: Sequence[str]) -> Plan:
        return merged_plan(parts, {p: (-self.delta if p == "task" else self.delta) for p in parts})


@register_momentum("fixed")
@attrs.frozen(kw_only=True)
class Fixed:
    """DeepKD with configured offsets: μ + δ_TOG, μ + δ_TCG, μ + δ_NCG (official defaults +.075, −.075, +.075).

    ``reference_quirks=True`` reproduces the official code (see :func:`update_reference_quirks`); δ_TOG then has no
    effect and the three buffers are never merged.
    """

    tog: float = attrs.field(default=0.075, validator=_delta)
    tcg: float = attrs.field(default=-0.075, validator=_delta)
    ncg: float = attrs.field(default=0.075, validator=_delta)
    reference_quirks: bool = attrs.field(default=False, validator=v.instance_of(bool))

    def plan(self, parts: Sequence[str]) -> Plan:
        offsets = {"task": self.tog, "tckd": self.tcg, "nckd": self.ncg}
        unknown = [p for p in parts if p not in offsets]
        if unknown:
            raise ConfigError(f"fixed momentum knows the parts task, tckd, nckd; the loss has {unknown}")
        if not self.reference_quirks:
            return merged_plan(parts, offsets)
        if tuple(parts) != ("task", "tckd", "nckd"):
            raise ConfigError(
                f"reference_quirks needs a loss with the parts ('task', 'tckd', 'nckd'), got {tuple(parts)}"
            )
        offs = (self.tog, self.tcg, self.ncg)
        return Plan((("task",), ("tckd",), ("nckd",)), offs, 1, (min(offs), max(offs)), quirks=True)


@register_momentum("gsnr")
@attrs.frozen(kw_only=True)
class GSNR:
    """DeepKD's GSNR-driven momentum: each component's coefficient rises with its measured GSNR (:mod:`deepkd.gsnr`).

    Attributes:
        delta: Δ, the largest offset from μ.
        interval: estimate GSNR and re-allocate the coefficients every ``interval`` steps (all use μ before the first
            estimate).
        estimator: ``"stream"`` (default: moving averages of every step's gradients on a ``fraction`` of the
            coordinates; it reads the gradient's drift along the run as noise) or ``"split"`` (at fixed parameters,
            from ``splits`` disjoint parts of the batch at each estimation step). The default was chosen on
            validation accuracy in the long benchmark (``docs/benchmarks.md``): stream +1.1 and +0.7 pp over
            split on the two Fashion-MNIST sets.
        splits: parts of the batch for the split estimator (each costs one gradient product per component, at
            estimation steps only).
        allocation: ``"tanh"`` (default: Δ·tanh((log r_c − mean log r) / scale), rank-free and continuous) or
            ``"minmax"`` (the highest GSNR gets +Δ, the lowest −Δ, whatever their ratio).
        scale: s of the tanh allocation, in natural-log units of GSNR (ln 10: one decade above the mean gives
            about 0.76 Δ).
        beta: decay of the moving average over estimates (split) or steps (stream); ``None``: 0.5 for split,
            0.98 for stream.
        fraction: share of each tensor's coordinates sampled by the stream estimator (1 = all); the split estimator
            always uses every coordinate (it stores two numbers per component).
        seed: seed of the stream estimator's coordinate subset.
    """

    delta: float = attrs.field(default=0.075, validator=real(ge=0.0, lt=1.0))
    interval: int = attrs.field(default=200, validator=integer(ge=1))
    estimator: Literal["split", "stream"] = attrs.field(default="stream", validator=v.in_(("split", "stream")))
    splits: int = attrs.field(default=2, validator=integer(ge=2))
    allocation: Literal["tanh", "minmax"] = attrs.field(default="tanh", validator=v.in_(("tanh", "minmax")))
    scale: float = attrs.field(default=math.log(10.0), validator=real(gt=0.0))
    beta: float | None = attrs.field(default=None, validator=v.optional(real(ge=0.0, lt=1.0)))
    fraction: float = attrs.field(default=0.005, validator=real(gt=0.0, le=1.0))
    seed: int = attrs.field(default=0, validator=integer(ge=0, lt=2**63))

    @property
    def decay(self) -> float:
        """``beta``, or the estimator's default when it is ``None``."""
        if self.beta is not None:
            return float(self.beta)
        return 0.5 if self.estimator == "split" else 0.98

    def plan(self, parts: Sequence[str]) -> Plan:
        groups = tuple((p,) for p in parts)
        decay = next((i for i, g in enumerate(groups) if "task" in g), 0)
        return Plan(groups, (0.0,) * len(groups), decay, (-float(self.delta), float(self.delta)), gsnr=self)

    def allocate(self, ratios: Tensor) -> tuple[float, ...]:
        """Offsets from the GSNR of each group."""
        return tuple(float(o) for o in allocate(ratios, self.delta, self.allocation, self.scale))
