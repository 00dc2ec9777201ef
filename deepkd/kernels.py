r"""The heavy-ball update as torch.optim's functional layer: state, ``init``, per-tensor and ``torch._foreach_*``
kernels, the summed step direction, and the official DeepKD code's update.

Every buffer :math:`v` with coefficient :math:`m` and gradient :math:`g` follows the PyTorch convention,

.. math:: v \leftarrow m\,v + (1 - \text{dampening})\,g \quad(\text{first step: } v \leftarrow g),
          \qquad \theta \leftarrow \theta - \mathrm{lr} \sum_{\text{buffers}} d,

where :math:`d = v`, or :math:`d = g + m\,v` with Nesterov. Weight decay adds :math:`\mathrm{wd}\,\theta_t` to the
gradient of one buffer (``decay_group``, the one holding the ``task`` part). The state is a NamedTuple of tensors
changed in place (a captured step replays the same memory), as torch.optim's buffers are.

Each update has a per-tensor reference path and a ``torch._foreach_*`` path, tested equal. :func:`direction` runs
the same kernels but writes the summed step direction instead of moving the parameters: the update is linear in the
gradients, so in a distributed run every rank can keep local buffers fed by its local gradients and average only
that direction. :data:`LINEAR` and :data:`OFFICIAL` bundle an update with its direction and the coefficients it
really uses: what a :class:`~deepkd.types.Plan` names as its ``update``.

This module imports nothing else from deepkd.

>>> import torch
>>> p = torch.zeros(2)
>>> state = init([p], groups=2)
>>> state = update(state, [p], [[torch.ones(2)], [torch.ones(2)]], [0.9, 0.5], lr=0.1)
>>> p.tolist(), state.step
([-0.20000000298023224, -0.20000000298023224], 1)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "LINEAR",
    "OFFICIAL",
    "Coefficient",
    "Grads",
    "Hyper",
    "MomentumState",
    "Update",
    "apply_directions",
    "direction",
    "init",
    "update",
    "update_reference_quirks",
]

Grads = Sequence[Sequence[Tensor]]  # [group][param]


class Hyper(NamedTuple):
    """The hyperparameters every kernel reads, as :class:`torch.optim.SGD` names them (``decay_group``: the buffer
    whose gradient receives weight decay)."""

    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    decay_group: int = 0


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
    hyper = Hyper(dampening, weight_decay, nesterov, decay_group)
    return _buffers_step(state, params, grads, coefficients, lr, hyper, foreach=foreach, out=None, gate=gate,
                         scales=grad_scales)  # fmt: skip


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
    hyper = Hyper(dampening, weight_decay, nesterov, decay_group)
    return _buffers_step(state, params, grads, coefficients, 0.0, hyper, foreach=foreach, out=out, gate=gate,
                         scales=grad_scales)  # fmt: skip


def _buffers_step(
    state: MomentumState,
    params: Sequence[Tensor],
    grads: Grads,
    coefficients: Sequence[Coefficient],
    lr: float | Tensor,
    hyper: Hyper,
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
        directions = kernel(params, grads, state.buffers, coefficients, hyper, state.step == 0, gate, scales)
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
    hyper: Hyper,
    first: bool,
    gate: Tensor | None,
    scales: Sequence[Coefficient] | None = None,
) -> list[list[Tensor]]:
    """Per-tensor buffer update; returns each group's step direction ``[group][param]`` (the buffers themselves,
    or Nesterov's ``g + m·v``). Weight decay sees the parameters before the step."""
    dampening, weight_decay, nesterov, decay_group = hyper
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
    hyper: Hyper,
    first: bool,
    gate: Tensor | None,
    scales: Sequence[Coefficient] | None = None,
) -> list[list[Tensor]]:
    """:func:`_update_single` with the multi-tensor ``torch._foreach_*`` kernels."""
    dampening, weight_decay, nesterov, decay_group = hyper
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
            hyper = Hyper(dampening, weight_decay if group == decay_group else 0.0, nesterov, 0)
            scale = None if grad_scales is None else [grad_scales[group]]
            d = kernel(params, [grads[group]], [state.buffers[group]], [m], hyper, first, gate, scale)
            apply_directions(params, d, lr, gate, foreach)
    return state._replace(step=state.step + 1)


UpdateFn = Callable[..., MomentumState]


def _same(coefficients: tuple[float, ...]) -> tuple[float, ...]:
    return coefficients


def _official_coefficients(coefficients: tuple[float, ...]) -> tuple[float, ...]:
    return (coefficients[1], coefficients[1], coefficients[2])  # the official code's task buffer runs on m_TCG


class Update(NamedTuple):
    """A parameter update as one value: the update itself, its summed step direction, and what it does to the
    buffers' coefficients.

    Attributes:
        apply: the update (:func:`update`'s arguments): moves the parameters.
        direction: ``apply``'s buffer update with its summed step direction written into ``out`` instead of applied
            (:func:`direction`), when ``apply`` is linear in the gradients, so that distributed ranks may keep local
            buffers and average only the direction; ``None`` when it is not (ranks then average every gradient
            group).
        effective: maps the buffers' coefficients to the ones their updates actually use (reported per part).
    """

    apply: UpdateFn
    direction: UpdateFn | None
    effective: Callable[[tuple[float, ...]], tuple[float, ...]]


#: the heavy-ball update of every strategy: :func:`update`, linear in the gradients
LINEAR = Update(update, direction, _same)
#: the official DeepKD code's update (:func:`update_reference_quirks`): not linear (it reads a partly updated
#: parameter), and its task buffer runs on the TCKD coefficient
OFFICIAL = Update(update_reference_quirks, None, _official_coefficients)
