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

Each update has a per-tensor reference path and a ``torch._foreach_*`` path, tested equal. :func:`direction` runs
the same kernels but writes the summed step direction instead of moving the parameters: the update is linear in the
gradients, so in a distributed run every rank can keep local buffers fed by its local gradients and all-reduce only
that direction (:class:`~deepkd.optim.DistillOptimizer`'s ``sync="step"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from deepkd.distributed import flat_like
from deepkd.errors import ConfigError, DeepKDError
from deepkd.gsnr import (
    GSNRState,
    SplitState,
    allocate,
    ratio,
    split_init,
    split_ratios,
    split_sums,
    split_update,
    stream_fold,
    stream_init,
    stream_sample,
    stream_sample_flat,
    stream_sums,
)
from deepkd.registry import register_momentum
from deepkd.validators import integer, real

__all__ = [
    "DOT",
    "GSNR",
    "PlainMomentum",
    "FixedOffsets",
    "MomentumState",
    "OffsetRule",
    "Coefficient",
    "Plan",
    "StepContext",
    "apply_directions",
    "check_hyperparameters",
    "direction",
    "gsnr_offsets",
    "init",
    "merged_plan",
    "no_split",
    "static_offsets",
    "step_param_groups",
    "step_scales",
    "tracking_gsnr",
    "update",
    "update_reference_quirks",
]

Grads = Sequence[Sequence[Tensor]]  # [group][param]


class MomentumState(NamedTuple):
    """Buffers ``[group][param]`` and the number of updates taken so far (0 before the first step; a host-side
    count, so that deciding the first step never reads the device)."""

    step: int
    buffers: tuple[tuple[Tensor, ...], ...]


#: a momentum coefficient: a number, or a 0-dim tensor on the parameters' device (coefficients a rule moves during
#: the run stay on the device, so that no step waits to read them)
Coefficient = float | Tensor


def init(params: Sequence[Tensor], groups: int) -> MomentumState:
    """Zero buffers for ``groups`` groups over ``params``; shapes stay fixed for the whole run."""
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    return MomentumState(
        step=0,
        buffers=tuple(
            tuple(torch.zeros_like(p, memory_format=torch.preserve_format) for p in params) for _ in range(groups)
        ),
    )


def _check(state: MomentumState, params: Sequence[Tensor], grads: Grads, coefficients: Sequence[Coefficient]) -> None:
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
    coefficients: Sequence[Coefficient],
    *,
    lr: float | Tensor,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    decay_group: int = 0,
    foreach: bool = False,
    gate: Tensor | None = None,
    grad_scales: Sequence[Coefficient] | None = None,
) -> MomentumState:
    r"""One step: update each group's buffer with its coefficient and move the parameters in place.

    Args:
        params: the parameters (updated in place).
        grads: one gradient per group and parameter.
        coefficients: one momentum coefficient per group: a number or a 0-dim tensor on the parameters' device.
        lr: a number, or a 0-dim tensor on the parameters' device (what a captured step, whose graph cannot hold a
            number that changes, reads).
        decay_group: the group whose gradient receives the weight-decay term (the one holding ``task``).
        foreach: use the multi-tensor ``torch._foreach_*`` kernels.
        gate: a 0-dim bool tensor on the device: where it is False, buffers and parameters keep their values (a
            step skipped on the device, without reading anything back). The gradients of such a step must be finite
            (the optimizer zeroes them): ``0 · NaN`` is NaN.
        grad_scales: one factor per group multiplying its gradient (weight decay included) before the buffer
            update, e.g. :math:`(1 - m_b)/(1 - \mu)` so that a coefficient changes how a buffer smooths its gradient
            but not how far it moves the parameters (``Plan.preserve_step``).
    """
    hyper = (dampening, weight_decay, nesterov, decay_group)
    return _buffers_step(
        state, params, grads, coefficients, lr, *hyper, foreach=foreach, out=None, gate=gate, scales=grad_scales
    )


def direction(
    state: MomentumState,
    params: Sequence[Tensor],
    grads: Grads,
    coefficients: Sequence[Coefficient],
    *,
    out: Sequence[Tensor],
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    decay_group: int = 0,
    foreach: bool = False,
    gate: Tensor | None = None,
    grad_scales: Sequence[Coefficient] | None = None,
) -> MomentumState:
    r""":func:`update`'s buffer update, with the summed direction :math:`\sum_b d_b` written into ``out`` (one tensor
    per parameter) instead of applied: :func:`update` moves each parameter by ``-lr`` times it. The parameters are
    read (weight decay), not changed. Every step of it is linear in ``grads`` and the buffers, so the mean over
    ranks of directions and buffers fed by each rank's own gradients equals those of one process on all of them.
    With a ``gate`` the buffers keep their values where it is False; ``out`` is written either way (the caller
    gates the parameters' move).
    """
    if len(out) != len(params):
        raise ValueError(f"got {len(out)} direction tensors for {len(params)} parameters")
    hyper = (dampening, weight_decay, nesterov, decay_group)
    return _buffers_step(
        state, params, grads, coefficients, 0.0, *hyper, foreach=foreach, out=out, gate=gate, scales=grad_scales
    )


def _buffers_step(
    state: MomentumState,
    params: Sequence[Tensor],
    grads: Grads,
    coefficients: Sequence[Coefficient],
    lr: float | Tensor,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    decay_group: int,
    *,
    foreach: bool,
    out: Sequence[Tensor] | None,
    gate: Tensor | None,
    scales: Sequence[Coefficient] | None = None,
) -> MomentumState:
    """What :func:`update` and :func:`direction` share: the checks, the kernel choice and the step count."""
    _check(state, params, grads, coefficients)
    kernel = _update_foreach if foreach else _update_single
    with torch.no_grad():
        directions = kernel(
            params, grads, state.buffers, coefficients, dampening, weight_decay, nesterov, decay_group,
            state.step == 0, gate, scales,
        )  # fmt: skip
        if out is not None:
            _sum_into(out, directions, foreach)
        else:
            apply_directions(params, directions, lr, gate, foreach)
    return state._replace(step=state.step + 1)


def _buffer_coefficient(m: Coefficient, gate: Tensor | None) -> Coefficient:
    """The coefficient a buffer is multiplied by: ``m``, or 1 where the step is gated off (its gradient is zero)."""
    return m if gate is None else torch.where(gate, m, 1.0)


def _update_single(
    params: Sequence[Tensor],
    grads: Grads,
    buffers: Sequence[Sequence[Tensor]],
    coefficients: Sequence[Coefficient],
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    decay_group: int,
    first: bool,
    gate: Tensor | None,
    scales: Sequence[Coefficient] | None = None,
) -> list[list[Tensor]]:
    """Per-tensor buffer update; returns each group's step direction ``[group][param]`` (the buffers themselves,
    or Nesterov's ``g + m·v``). Weight decay sees the parameters before the step."""
    directions: list[list[Tensor]] = []
    for b, m in enumerate(coefficients):
        m_buf = _buffer_coefficient(m, gate)
        group = []
        for i, p in enumerate(params):
            g = grads[b][i]
            if b == decay_group and weight_decay != 0:
                g = g.add(p, alpha=weight_decay)
            if scales is not None:
                g = g * scales[b]
            buf = buffers[b][i]
            if first or (not isinstance(m, Tensor) and m == 0):  # torch.optim.SGD without momentum: the raw gradient
                buf.copy_(g)
            elif isinstance(m, Tensor) and dampening != 0:  # a coefficient of 0 on the device: the raw gradient too
                buf.mul_(m_buf).add_(g * torch.where(m == 0, 1.0, 1 - dampening))
            else:
                buf.mul_(m_buf).add_(g, alpha=1 - dampening)
            group.append(_nesterov(g, buf, m) if nesterov else buf)
        directions.append(group)
    return directions


def _nesterov(g: Tensor, buf: Tensor, m: Coefficient) -> Tensor:
    return g.add(buf, alpha=m) if not isinstance(m, Tensor) else g + buf * m


def _update_foreach(
    params: Sequence[Tensor],
    grads: Grads,
    buffers: Sequence[Sequence[Tensor]],
    coefficients: Sequence[Coefficient],
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    decay_group: int,
    first: bool,
    gate: Tensor | None,
    scales: Sequence[Coefficient] | None = None,
) -> list[list[Tensor]]:
    """:func:`_update_single` with the multi-tensor ``torch._foreach_*`` kernels."""
    params = list(params)
    directions: list[list[Tensor]] = []
    if not params:
        return [[] for _ in coefficients]
    for b, m in enumerate(coefficients):
        g = list(grads[b])
        if b == decay_group and weight_decay != 0:
            g = list(torch._foreach_add(g, params, alpha=weight_decay))
        if scales is not None:
            g = list(torch._foreach_mul(g, scales[b]))
        buf = list(buffers[b])
        if first or (not isinstance(m, Tensor) and m == 0):  # torch.optim.SGD without momentum: the raw gradient
            torch._foreach_copy_(buf, g)
        elif isinstance(m, Tensor) and dampening != 0:  # a coefficient of 0 on the device: the raw gradient too
            torch._foreach_mul_(buf, _buffer_coefficient(m, gate))
            torch._foreach_add_(buf, torch._foreach_mul(g, torch.where(m == 0, 1.0, 1 - dampening)))
        else:
            torch._foreach_mul_(buf, _buffer_coefficient(m, gate))
            torch._foreach_add_(buf, g, alpha=1 - dampening)
        if not nesterov:
            directions.append(buf)
        elif isinstance(m, Tensor):
            d = list(torch._foreach_mul(buf, m))
            torch._foreach_add_(d, g)
            directions.append(d)
        else:
            directions.append(list(torch._foreach_add(g, buf, alpha=m)))
    return directions


def _sum_into(out: Sequence[Tensor], directions: Sequence[Sequence[Tensor]], foreach: bool) -> None:
    """``out[i] = Σ_b directions[b][i]``."""
    if foreach and out:
        torch._foreach_copy_(list(out), list(directions[0]))
        for d in directions[1:]:
            torch._foreach_add_(list(out), list(d))
        return
    for i, o in enumerate(out):
        o.copy_(directions[0][i])
        for d in directions[1:]:
            o.add_(d[i])


def apply_directions(
    params: Sequence[Tensor],
    directions: Sequence[Sequence[Tensor]],
    lr: float | Tensor,
    gate: Tensor | None = None,
    foreach: bool = False,
) -> None:
    """Move ``params`` by ``-lr`` times the sum of ``directions[b]`` (one list per buffer), in place.

    Ungated with a numeric ``lr`` each direction is added in turn with ``alpha=-lr``, exactly as
    :class:`torch.optim.SGD` moves its parameters. With a ``gate`` (0-dim bool tensor), the summed direction is
    multiplied by it first (by 1 or 0: exact), so a gated-off step leaves the parameters as they are. A tensor
    ``lr`` multiplies the direction on the device instead of being read.
    """
    params = list(params)
    if not params:
        return
    if gate is None and not isinstance(lr, Tensor):
        for d in directions:
            if foreach:
                torch._foreach_add_(params, list(d), alpha=-lr)
            else:
                for p, di in zip(params, d):
                    p.add_(di, alpha=-lr)
        return
    if isinstance(lr, Tensor):
        scale: Tensor = -lr if gate is None else torch.where(gate, -lr, 0.0)
        alpha = 1.0
    else:
        assert gate is not None
        scale, alpha = gate.to(params[0].dtype), -lr
    if foreach:
        total = list(torch._foreach_add(list(directions[0]), list(directions[1]))) if len(directions) > 1 else None
        for d in directions[2:]:
            torch._foreach_add_(total, list(d))  # type: ignore[arg-type]
        total = list(torch._foreach_mul(list(directions[0]), scale)) if total is None else total
        if len(directions) > 1:
            torch._foreach_mul_(total, scale)
        torch._foreach_add_(params, total, alpha=alpha)
        return
    for i, p in enumerate(params):  # one temporary per parameter: the sum, scaled in place
        step = directions[0][i] * scale if len(directions) == 1 else directions[0][i] + directions[1][i]
        for d in directions[2:]:
            step.add_(d[i])
        if len(directions) > 1:
            step.mul_(scale)
        p.add_(step, alpha=alpha)


def update_reference_quirks(
    state: MomentumState,
    params: Sequence[Tensor],
    grads: Grads,
    coefficients: Sequence[Coefficient],
    *,
    lr: float | Tensor,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    decay_group: int = 1,
    foreach: bool = False,
    gate: Tensor | None = None,
    grad_scales: Sequence[Coefficient] | None = None,
) -> MomentumState:
    """The official DeepKD code's update, for groups ``(task, tckd, nckd)`` with coefficients ``(m_TOG, m_TCG,
    m_NCG)``: the task buffer uses ``m_TCG``; updates apply task, NCKD, TCKD in that order, each moving the
    parameters; weight decay joins the gradient of ``decay_group`` (TCKD in the official code) at the parameter
    reached by the updates before it. ``gate`` as in :func:`update`.
    """
    _check(state, params, grads, coefficients)
    if len(coefficients) != 3:
        raise ValueError("the official-code update needs exactly three groups: task, tckd, nckd")
    first = state.step == 0
    m_tcg, m_ncg = coefficients[1], coefficients[2]
    kernel = _update_foreach if foreach else _update_single
    with torch.no_grad():
        for group, m in ((0, m_tcg), (2, m_ncg), (1, m_tcg)):
            decay = weight_decay if group == decay_group else 0.0
            scale = None if grad_scales is None else [grad_scales[group]]
            d = kernel(
                params, [grads[group]], [state.buffers[group]], [m], dampening, decay, nesterov, 0, first, gate, scale
            )
            apply_directions(params, d, lr, gate, foreach)
    return state._replace(step=state.step + 1)


def check_hyperparameters(
    group: Mapping[str, Any], where: str, offset_range: tuple[float, float], strategy: str
) -> None:
    """Raise :class:`ConfigError` (with its ``$.optimizer.<key>`` path) unless ``group``'s ``lr``, ``momentum``,
    ``dampening``, ``weight_decay`` and ``nesterov`` are valid, and every coefficient ``momentum + offset`` for
    offsets in ``offset_range`` (the ``strategy``'s) lies in [0, 1)."""

    def bad(key: str, valid: str) -> ConfigError:
        return ConfigError(f"{key}={group[key]!r} is invalid for {where}: {valid} @ $.optimizer.{key}")

    lr, mu = group["lr"], group["momentum"]
    if isinstance(lr, Tensor) or not isinstance(lr, (int, float)) or not lr >= 0:
        raise bad("lr", "expected a number >= 0")
    if not isinstance(mu, (int, float)) or not 0.0 <= mu < 1.0:
        raise bad("momentum", "expected 0 <= momentum < 1")
    if not 0.0 <= group["dampening"] <= 1.0:
        raise bad("dampening", "expected 0 <= dampening <= 1")
    if not group["weight_decay"] >= 0.0:
        raise bad("weight_decay", "expected weight_decay >= 0")
    if group["nesterov"] and (mu <= 0 or group["dampening"] != 0):
        raise bad(
            "nesterov",
            f"Nesterov momentum needs momentum > 0 and dampening = 0, got momentum={mu}, "
            f"dampening={group['dampening']}",
        )
    lo, hi = offset_range
    if not (mu + lo >= 0.0 and mu + hi < 1.0):
        raise ConfigError(
            f"momentum={mu} with the {strategy!r} strategy's offsets in [{lo:+.4g}, {hi:+.4g}] gives coefficients in "
            f"[{mu + lo:.4g}, {mu + hi:.4g}] for {where}; every coefficient must lie in [0, 1) @ $.optimizer.momentum"
        )


def step_scales(plan: Plan, mu: float, offsets: Sequence[Coefficient], dtype: torch.dtype) -> list[Coefficient]:
    r"""Each buffer's gradient factor under ``plan.preserve_step``: :math:`(1 - m_b)/(1 - \mu) = 1 - o_b/(1 - \mu)`
    for the offset :math:`o_b` each update actually uses (``Plan.effective``), exactly 1 for a buffer at
    :math:`\mu`; device offsets give device factors in ``dtype``."""
    used = plan.effective(tuple(offsets))  # type: ignore[arg-type]
    return [(1 - o / (1 - mu)).to(dtype) if isinstance(o, Tensor) else 1 - o / (1 - mu) for o in used]


def step_param_groups(
    plan: Plan,
    states: Sequence[MomentumState],
    param_groups: Sequence[Mapping[str, Any]],
    grads: Sequence[Grads],
    active: Sequence[Sequence[bool]],
    coefficients: Sequence[Sequence[Coefficient]],
    foreach: bool | None = None,
    reduce: Callable[[list[Tensor]], None] | None = None,
    *,
    gate: Tensor | None = None,
    lrs: Sequence[float | Tensor] | None = None,
    grad_scales: Sequence[Sequence[Coefficient]] | None = None,
) -> list[MomentumState]:
    """One update of every param group's trainable parameters (``active[i]`` flags them; ``grads[i]`` holds their
    gradients per buffer) with ``plan``'s update and each group's ``lr`` (or ``lrs[i]``, e.g. a tensor a captured
    step reads), ``dampening``, ``weight_decay`` and ``nesterov``; returns the new states (buffers of frozen
    parameters are left as they are). ``gate`` and ``grad_scales[i]`` (param group ``i``'s) as in :func:`update`.

    With ``reduce`` (an in-place mean over ranks), the buffers stay local: ``plan.direction`` computes every group's
    summed step direction into one flat buffer, ``reduce`` averages it with one collective, and the parameters move
    by ``-lr`` times the mean direction (the update is linear in the gradients). ``foreach=None`` picks the
    ``torch._foreach_*`` kernels for CUDA parameters.
    """
    params = [
        list(g["params"]) if all(act) else [p for p, a in zip(g["params"], act) if a]
        for g, act in zip(param_groups, active)
    ]
    directions, reduced = flat_like([p for ps in params for p in ps]) if reduce else ([], [])
    new_states, start = [], 0
    for i, (group, ps, act, state, g, coeffs) in enumerate(
        zip(param_groups, params, active, states, grads, coefficients)
    ):
        sub = state
        if not all(act):
            sub = state._replace(buffers=tuple(tuple(b for b, a in zip(bufs, act) if a) for bufs in state.buffers))
        hyper: dict[str, Any] = {k: group[k] for k in ("dampening", "weight_decay", "nesterov")}
        fe = foreach if foreach is not None else bool(ps and ps[0].is_cuda)
        hyper.update(decay_group=plan.decay_group, foreach=fe, gate=gate)
        if grad_scales is not None:
            hyper["grad_scales"] = grad_scales[i]
        if reduce is not None and plan.direction is not None:
            new = plan.direction(sub, ps, g, coeffs, out=directions[start : start + len(ps)], **hyper)
        else:
            new = plan.apply(sub, ps, g, coeffs, lr=group["lr"] if lrs is None else lrs[i], **hyper)
        new_states.append(state._replace(step=new.step))
        start += len(ps)
    if reduce is not None:
        reduce(reduced)
        for i, (group, ps) in enumerate(zip(param_groups, params)):
            lr = group["lr"] if lrs is None else lrs[i]
            apply_directions(ps, [directions[: len(ps)]], lr, gate, foreach=True)
            directions = directions[len(ps) :]
    return new_states


# --------------------------------------------------------------------------------------------------------------
# Offset rules: how a strategy's coefficient offsets evolve during a run, as an optax-style pair of pure functions
# over a state. The optimizer calls them the same way for every strategy.

ParamGrads = Sequence[Sequence[Sequence[Tensor]]]  # [param group][gradient group][param]
SplitGradients = Callable[[int], "tuple[list[list[list[Tensor]]], list[int]] | None"]


class StepContext(NamedTuple):
    """What the optimizer shows an offset rule at one step.

    Attributes:
        step: the step being taken, counted from 1 (every call of ``distill_step``, skipped steps included).
        grads: this step's gradients ``[param group][gradient group][param]``, with zeros for parameters that take
            no gradient this step and zeros everywhere on a skipped step (``ok`` False); ``None`` while probing
            (before they are taken). In a distributed run they are this rank's own when ``local_grads`` is true,
            else averaged over ranks.
        split_gradients: ``split_gradients(m)`` takes each gradient group's gradient on ``m`` disjoint parts of the
            batch at the current parameters and returns ``([part][gradient group][trainable param], part sizes)``,
            or ``None`` when the batch has fewer than ``m`` samples. It costs ``m`` gradient products per group:
            call it only on the steps that need it (and only while probing).
        mean_over_ranks: the mean of a tensor over the processes of a distributed run (identity in a single one).
        local_grads: whether ``grads`` are this rank's own gradients (the optimizer's default ``sync="step"``, which
            all-reduces only the step direction) rather than their mean over ranks (``sync="grads"``, or a single
            process).
        ok: a 0-dim bool tensor on the device, False on a step that is skipped (a non-finite loss): a rule must
            then leave its state as it is (``torch.where(ctx.ok, new, old)``); ``None`` means the step is applied.
            The optimizer never reads it back, so neither should a rule.
        flat: per param group, its gradients as one ``[gradient groups, numel]`` tensor in the parameters' memory
            order (the optimizer's gradient buffer, see :func:`deepkd.gsnr.memory_positions`), or ``None``.
        sample: the mean over ranks of what the rule's ``sample`` returned for this step (see :class:`OffsetRule`);
            ``None`` for a rule without one.

    Contract: every rank must return the same offsets, equal to one process's on the global batch. A rule that
    derives anything from ``grads`` while ``local_grads`` is true must average it over ranks: through ``sample``
    (the values ride on the step's one small collective) or ``mean_over_ranks`` (a collective of its own); split
    gradients are always local, so what is derived from them must be reduced too.
    """

    step: int
    grads: ParamGrads | None
    split_gradients: SplitGradients
    mean_over_ranks: Callable[[Tensor], Tensor]
    local_grads: bool = False
    ok: Tensor | None = None
    flat: Sequence[Tensor] | None = None
    sample: Tensor | None = None


def no_split(splits: int) -> None:
    """``StepContext.split_gradients`` after the step's gradients are taken, when the batch's graph is gone."""
    raise DeepKDError("split gradients are available while probing, before the step's gradients are taken")


def _unchanged(state: Any, ctx: StepContext) -> Any:
    return state


def _never(step: int) -> bool:
    return False


Offsets = tuple[float, ...] | Tensor  # numbers, or a float64 tensor [groups] on the parameters' device


class OffsetRule(NamedTuple):
    """A strategy's coefficient offsets as pure functions of a state (optax's ``init``/``update`` pattern).

    Attributes:
        init: ``init(params)``, with ``params[i]`` the parameters of param group ``i``, returns the rule's state:
            a NamedTuple of tensors (nested NamedTuples, tuples and ``None`` allowed), saved in the optimizer's
            ``state_dict``. Tensors that change during the run must be changed in place, never replaced (a
            captured step replays the same memory; the optimizer refuses to capture a rule that replaces them).
        update: ``update(state, ctx) -> (offsets, state)``, called once per step after the gradients are taken;
            the offsets (one per gradient group) set this step's coefficients ``momentum + offset``: a tuple of
            numbers, or a float64 tensor on the device for offsets computed from the gradients (never read back).
        probe: ``probe(state, ctx) -> state``, called once per step before the gradients are taken, at the same
            parameters; for measurements that need extra gradients (``ctx.split_gradients``).
        report_gsnr: ``report_gsnr(state)``, the GSNR per gradient group that the rule reports with each step
            (``StepOutput.gsnr``; a tensor the rule updates in place), or ``None`` for a rule that measures none.
        sample: ``sample(state, ctx) -> Tensor | None``, called after the gradients are taken and before
            ``update``: values linear in this rank's gradients that every rank must agree on. The optimizer
            averages them over ranks together with the step's other small values (one collective) and hands the
            result to ``update`` as ``ctx.sample``.
        special: ``special(step) -> bool``: whether ``probe`` or ``update`` does at ``step`` what it does not at
            other steps (a GSNR estimate, a re-allocation): a captured graph of an ordinary step cannot stand in
            for such a step, so it runs eagerly.
    """

    init: Callable[[Sequence[Sequence[Tensor]]], Any]
    update: Callable[[Any, StepContext], tuple[Offsets, Any]]
    probe: Callable[[Any, StepContext], Any] = _unchanged
    report_gsnr: Callable[[Any], Tensor] | None = None
    sample: Callable[[Any, StepContext], Tensor | None] | None = None
    special: Callable[[int], bool] = _never


class NoState(NamedTuple):
    """The state of a rule that keeps none."""


def static_offsets(offsets: Sequence[float]) -> OffsetRule:
    """Offsets that stay as they are for the whole run (``sgd``, ``dot``, ``fixed``)."""
    fixed = tuple(float(o) for o in offsets)
    return OffsetRule(init=lambda params: NoState(), update=lambda state, ctx: (fixed, state))


UpdateFn = Callable[..., MomentumState]


def _same(coefficients: tuple[float, ...]) -> tuple[float, ...]:
    return coefficients


def _official_coefficients(coefficients: tuple[float, ...]) -> tuple[float, ...]:
    return (coefficients[1], coefficients[1], coefficients[2])  # the official code's task buffer runs on m_TCG


@attrs.frozen
class Plan:
    r"""How a momentum strategy treats a loss's parts: its buffers, its offsets and how they move, its update.

    Attributes:
        groups: the parts that share each buffer (and one gradient product).
        offsets: each buffer's coefficient offset from the optimizer's ``momentum`` before the first step.
        decay_group: the buffer whose gradient receives weight decay (the one holding ``task``).
        offset_range: the smallest and largest offsets the strategy can ever use, so that the optimizer can check
            that every coefficient ``momentum + offset`` lies in [0, 1).
        rule: how the offsets evolve (:class:`OffsetRule`); static by default.
        apply: the parameter update, :func:`update` or :func:`update_reference_quirks` (same keyword arguments).
        direction: ``apply``'s buffer update with its summed step direction written out instead of applied
            (:func:`direction`, same arguments as ``apply`` but ``out`` for ``lr``), when ``apply`` is linear in
            the gradients, so that distributed ranks may update local buffers and all-reduce only the direction;
            ``None`` when it is not (the official code's update reads a partially updated parameter): ranks then
            all-reduce every gradient group instead. By default :func:`direction` when ``apply`` is :func:`update`,
            else ``None``.
        effective: maps the buffers' coefficients to the ones their updates actually use (reported per part).
        preserve_step: multiply each buffer's gradient by :math:`(1 - m_b)/(1 - \mu)`, so that an offset changes how
            the buffer smooths its gradient but not how far it moves the parameters: a constant gradient moves them
            :math:`\mathrm{lr}/(1 - \mu)` per step whatever the offset (at :math:`\mu + 0.075 = 0.975` an
            unscaled buffer moves them 4× as far as one at :math:`\mu = 0.9`).
    """

    groups: tuple[tuple[str, ...], ...]
    offsets: tuple[float, ...]
    decay_group: int
    offset_range: tuple[float, float]
    rule: OffsetRule = attrs.field(
        default=attrs.Factory(lambda self: static_offsets(self.offsets), takes_self=True), eq=False
    )
    apply: UpdateFn = attrs.field(default=update, eq=False)
    direction: UpdateFn | None = attrs.field(
        default=attrs.Factory(lambda self: direction if self.apply is update else None, takes_self=True), eq=False
    )
    effective: Callable[[tuple[float, ...]], tuple[float, ...]] = attrs.field(default=_same, eq=False)
    preserve_step: bool = False


def merged_plan(parts: Sequence[str], offsets: Mapping[str, float], *, preserve_step: bool = False) -> Plan:
    """Merge the parts with equal (static) offsets into one group each, keeping the parts' order."""
    groups: dict[float, list[str]] = {}
    for part in parts:
        groups.setdefault(float(offsets[part]), []).append(part)
    names = tuple(tuple(g) for g in groups.values())
    offs = tuple(groups)
    decay = next((i for i, g in enumerate(names) if "task" in g), 0)
    return Plan(names, offs, decay, (min(offs, default=0.0), max(offs, default=0.0)), preserve_step=preserve_step)


# --------------------------------------------------------------------------------------------------------------
# Strategies: frozen configs whose ``plan`` says which parts share a buffer, with which offsets and how they move.

_delta = real(gt=-1.0, lt=1.0)


@register_momentum("sgd")
@attrs.frozen(kw_only=True)
class PlainMomentum:
    """One buffer for the summed gradient: plain SGD with momentum, identical to :class:`torch.optim.SGD`."""

    def plan(self, parts: Sequence[str]) -> Plan:
        return merged_plan(parts, {p: 0.0 for p in parts})


@register_momentum("dot")
@attrs.frozen(kw_only=True)
class DOT:
    """DOT (ICCV 2023): task momentum μ − Δ, distillation momentum μ + Δ. CIFAR Δ = 0.075, ImageNet Δ = 0.09.

    ``preserve_step`` scales each buffer's gradient by (1 − m)/(1 − μ), so that the offsets change how the buffers
    smooth their gradients but not their step sizes (:attr:`Plan.preserve_step`); an ablation option.
    """

    delta: float = attrs.field(default=0.075, validator=_delta)
    preserve_step: bool = attrs.field(default=False, validator=v.instance_of(bool))

    def plan(self, parts: Sequence[str]) -> Plan:
        offsets = {p: (-self.delta if p == "task" else self.delta) for p in parts}
        return merged_plan(parts, offsets, preserve_step=self.preserve_step)


@register_momentum("fixed")
@attrs.frozen(kw_only=True)
class FixedOffsets:
    """DeepKD with configured offsets: μ + δ_TOG, μ + δ_TCG, μ + δ_NCG (official defaults +.075, −.075, +.075).

    ``reference_quirks=True`` reproduces the official code (see :func:`update_reference_quirks`); δ_TOG then has no
    effect and the three buffers are never merged. ``preserve_step`` scales each buffer's gradient by
    (1 − m)/(1 − μ), so that the offsets change how the buffers smooth their gradients but not their step sizes
    (:attr:`Plan.preserve_step`); an ablation option.
    """

    tog: float = attrs.field(default=0.075, validator=_delta)
    tcg: float = attrs.field(default=-0.075, validator=_delta)
    ncg: float = attrs.field(default=0.075, validator=_delta)
    reference_quirks: bool = attrs.field(default=False, validator=v.instance_of(bool))
    preserve_step: bool = attrs.field(default=False, validator=v.instance_of(bool))

    def plan(self, parts: Sequence[str]) -> Plan:
        offsets = {"task": self.tog, "tckd": self.tcg, "nckd": self.ncg}
        unknown = [p for p in parts if p not in offsets]
        if unknown:
            raise ConfigError(f"fixed momentum knows the parts task, tckd, nckd; the loss has {unknown}")
        if not self.reference_quirks:
            return merged_plan(parts, offsets, preserve_step=self.preserve_step)
        if tuple(parts) != ("task", "tckd", "nckd"):
            raise ConfigError(
                f"reference_quirks needs a loss with the parts ('task', 'tckd', 'nckd'), got {tuple(parts)}"
            )
        offs = (self.tog, self.tcg, self.ncg)
        groups = (("task",), ("tckd",), ("nckd",))
        return Plan(
            groups,
            offs,
            1,
            (min(offs), max(offs)),
            apply=update_reference_quirks,
            effective=_official_coefficients,
            preserve_step=self.preserve_step,
        )


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
        preserve_step: scale each buffer's gradient by (1 − m)/(1 − μ), so that the offsets change how the buffers
            smooth their gradients but not their step sizes (:attr:`Plan.preserve_step`); an ablation option.
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
    preserve_step: bool = attrs.field(default=False, validator=v.instance_of(bool))

    @property
    def decay(self) -> float:
        """``beta``, or the estimator's default when it is ``None``."""
        if self.beta is not None:
            return float(self.beta)
        return 0.5 if self.estimator == "split" else 0.98

    def plan(self, parts: Sequence[str]) -> Plan:
        groups = tuple((p,) for p in parts)
        decay = next((i for i, g in enumerate(groups) if "task" in g), 0)
        zeros = (0.0,) * len(groups)
        rule = gsnr_offsets(self, len(groups))
        bounds = (-float(self.delta), float(self.delta))
        return Plan(groups, zeros, decay, bounds, rule=rule, preserve_step=self.preserve_step)

    def allocate(self, ratios: Tensor) -> tuple[float, ...]:
        """Offsets from the GSNR of each group."""
        return tuple(float(o) for o in allocate(ratios, self.delta, self.allocation, self.scale))


# --------------------------------------------------------------------------------------------------------------
# GSNR measured during a run: the ``gsnr`` strategy's rule, and the tracker that logs GSNR for any other rule.


class GSNREstimate(NamedTuple):
    """A GSNR estimator's state: the stream moments (one per param group) or the split sums."""

    stream: tuple[GSNRState, ...]
    split: SplitState | None


class GSNRRuleState(NamedTuple):
    """The ``gsnr`` strategy's state: its estimate, the GSNR behind the current offsets and the offsets (tensors on
    the parameters' device, changed in place)."""

    estimate: GSNREstimate
    last: Tensor  # float64 [groups]: NaN before the first estimate
    offsets: Tensor  # float64 [groups]


class Tracked(NamedTuple):
    """The state of a rule wrapped by :func:`tracking_gsnr`: the rule's own, the estimate, and the GSNR of the last
    estimation step (NaN before the first)."""

    rule: Any
    estimate: GSNREstimate
    last: Tensor  # float64 [groups]


def _device(params: Sequence[Sequence[Tensor]]) -> torch.device:
    return next((p.device for ps in params for p in ps), torch.device("cpu"))


def _estimate_init(cfg: GSNR, groups: int, params: Sequence[Sequence[Tensor]]) -> GSNREstimate:
    if cfg.estimator == "split":
        return GSNREstimate((), split_init(groups, _device(params)))
    stream = tuple(stream_init(p, groups, fraction=cfg.fraction, seed=cfg.seed + i) for i, p in enumerate(params))
    return GSNREstimate(stream, None)


def _estimate_probe(cfg: GSNR, est: GSNREstimate, ctx: StepContext) -> GSNREstimate:
    """The split estimator measures at every ``interval``-th step, before the step's gradients."""
    if est.split is None or ctx.step % cfg.interval != 0:
        return est
    taken = ctx.split_gradients(cfg.splits)
    if taken is None:
        return est
    sums = ctx.mean_over_ranks(torch.stack(split_sums(*taken)))  # every rank must allocate the same offsets
    split_update(est.split, sums[0], sums[1], beta=cfg.decay, gate=ctx.ok)
    return est


def _estimate_sample(est: GSNREstimate, ctx: StepContext) -> Tensor | None:
    """The stream estimator's sample of this step's gradients, every param group's end to end (``None`` for the
    split estimator): one gather per param group from the optimizer's gradient buffer."""
    if not est.stream:
        return None
    if ctx.flat is not None:
        samples = [stream_sample_flat(s, flat) for s, flat in zip(est.stream, ctx.flat)]
    else:
        assert ctx.grads is not None
        samples = [torch.stack([stream_sample(s, g) for g in grads]) for s, grads in zip(est.stream, ctx.grads)]
    return samples[0].reshape(-1) if len(samples) == 1 else torch.cat([x.reshape(-1) for x in samples])


def _estimate_fold(cfg: GSNR, est: GSNREstimate, ctx: StepContext, sample: Tensor | None) -> GSNREstimate:
    """The stream estimator folds in every step's gradients: the sample of the global batch's gradient (the
    optimizer averages each rank's over ranks; a rule used on its own averages it here)."""
    if not est.stream:
        return est
    x = sample
    if x is None:
        x = _estimate_sample(est, ctx)
        assert x is not None
        if ctx.local_grads:
            x = ctx.mean_over_ranks(x)
    start = 0
    for s in est.stream:
        n = s.m1.numel()
        stream_fold(s, x[start : start + n].view_as(s.m1), beta=cfg.decay, gate=ctx.ok)
        start += n
    return est


def _estimate_ratios(cfg: GSNR, est: GSNREstimate) -> Tensor:
    if est.split is not None:
        return split_ratios(est.split, beta=cfg.decay)
    sums = [stream_sums(s, beta=cfg.decay) for s in est.stream]
    return ratio(sum(s for s, _ in sums), sum(n for _, n in sums))  # type: ignore[arg-type]


def gsnr_offsets(cfg: GSNR, groups: int) -> OffsetRule:
    """The ``gsnr`` strategy's rule: every ``interval`` steps, the offsets are re-allocated from the GSNR estimate,
    on the device (the coefficients are never read back)."""

    def init(params: Sequence[Sequence[Tensor]]) -> GSNRRuleState:
        device = _device(params)
        nan = torch.full((groups,), math.nan, dtype=torch.float64, device=device)
        zeros = torch.zeros(groups, dtype=torch.float64, device=device)
        return GSNRRuleState(_estimate_init(cfg, groups, params), nan, zeros)

    def probe(state: GSNRRuleState, ctx: StepContext) -> GSNRRuleState:
        _estimate_probe(cfg, state.estimate, ctx)
        return state

    def sample(state: GSNRRuleState, ctx: StepContext) -> Tensor | None:
        return _estimate_sample(state.estimate, ctx)

    def update(state: GSNRRuleState, ctx: StepContext) -> tuple[Offsets, GSNRRuleState]:
        _estimate_fold(cfg, state.estimate, ctx, ctx.sample)
        if ctx.step % cfg.interval == 0:
            last = _estimate_ratios(cfg, state.estimate)
            state.last.copy_(last)
            state.offsets.copy_(allocate(last, cfg.delta, cfg.allocation, cfg.scale))
        return state.offsets, state

    def special(step: int) -> bool:
        return step % cfg.interval == 0

    return OffsetRule(init, update, probe, lambda state: state.last, sample, special)


def tracking_gsnr(rule: OffsetRule, cfg: GSNR, groups: int) -> OffsetRule:
    """``rule``, also measuring each gradient group's GSNR with ``cfg``'s estimator for the logs (the offsets are
    ``rule``'s). The GSNR it reports is re-estimated every ``cfg.interval`` steps, as the ``gsnr`` strategy does
    (NaN before the first estimate). A rule that reports GSNR itself is returned as it is."""
    if rule.report_gsnr is not None:
        return rule
    inner_sample = rule.sample

    def init(params: Sequence[Sequence[Tensor]]) -> Tracked:
        nan = torch.full((groups,), math.nan, dtype=torch.float64, device=_device(params))
        return Tracked(rule.init(params), _estimate_init(cfg, groups, params), nan)

    def probe(state: Tracked, ctx: StepContext) -> Tracked:
        _estimate_probe(cfg, state.estimate, ctx)
        return state._replace(rule=rule.probe(state.rule, ctx))

    def own_size(state: Tracked) -> int:
        return sum(s.m1.numel() for s in state.estimate.stream)

    def sample(state: Tracked, ctx: StepContext) -> Tensor | None:
        own = _estimate_sample(state.estimate, ctx)
        theirs = None if inner_sample is None else inner_sample(state.rule, ctx)
        if theirs is None or own is None:
            return own if theirs is None else theirs
        return torch.cat([own, theirs])

    def update(state: Tracked, ctx: StepContext) -> tuple[Offsets, Tracked]:
        own = theirs = None
        if ctx.sample is not None:  # the optimizer's mean over ranks of sample(): ours first, then the rule's
            n = own_size(state)
            own = ctx.sample[:n] if n else None
            theirs = ctx.sample[n:] if inner_sample is not None else None
        offsets, inner = rule.update(state.rule, ctx._replace(sample=theirs))
        _estimate_fold(cfg, state.estimate, ctx, own)
        if ctx.step % cfg.interval == 0:
            state.last.copy_(_estimate_ratios(cfg, state.estimate))
        return offsets, state._replace(rule=inner)

    def special(step: int) -> bool:
        return rule.special(step) or step % cfg.interval == 0

    return OffsetRule(init, update, probe, lambda state: state.last, sample, special)
