"""The optimizer's param groups: their hyperparameters checked once, each step's coefficients, and one update of
every group (what :class:`torch.optim.SGD`'s constructor and ``step`` do, for a :class:`~deepkd.types.Plan`).

:class:`~deepkd.optim.DistillOptimizer` calls these; a strategy never does. :func:`step_param_groups` is the
param-group driver: it runs the plan's update (:mod:`deepkd.kernels`) on each group's trainable parameters, and in a
distributed run with ``sync="step"`` writes every group's step direction into one flat buffer that the optimizer
averages with its one collective of ``|θ|`` floats before moving the parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from deepkd.distributed import flat_like
from deepkd.errors import ConfigError
from deepkd.kernels import Coefficient, Grads, MomentumState, apply_directions
from deepkd.types import Offsets, Plan

__all__ = [
    "check_hyperparameters",
    "lr_tensors",
    "momentum_problem", "step_coefficients", "step_param_groups", "step_scales"]


def momentum_problem(mu: float, offset_range: tuple[float, float], strategy: str) -> str | None:
    """Why momentum ``mu`` cannot run with a strategy whose offsets lie in ``offset_range`` (every coefficient
    ``mu + offset`` must lie in [0, 1)), or ``None`` when it can; the reason reads after the momentum's name.

    >>> "momentum=0.95 " + momentum_problem(0.95, (-0.075, 0.075), "gsnr")
    "momentum=0.95 with the 'gsnr' strategy's offsets in [-0.075, +0.075] gives coefficients in [0.875, 1.025]"
    >>> momentum_problem(0.9, (-0.075, 0.075), "gsnr") is None
    True
    """
    lo, hi = offset_range
    if mu + lo >= 0.0 and mu + hi < 1.0:
        return None
    return (
        f"with the {strategy!r} strategy's offsets in [{lo:+.4g}, {hi:+.4g}] gives coefficients in "
        f"[{mu + lo:.4g}, {mu + hi:.4g}]"
    )


def check_hyperparameters(
    group: Mapping[str, Any], where: str, offset_range: tuple[float, float], strategy: str
) -> None:
    """Raise :class:`ConfigError` naming the argument unless ``group``'s ``lr``, ``momentum``, ``dampening``,
    ``weight_decay`` and ``nesterov`` are valid, and every coefficient ``momentum + offset`` for offsets in
    ``offset_range`` (the ``strategy``'s) lies in [0, 1). ``where`` names the group (``"param group 0"``).

    The optimizer's arguments are checked here, whoever built them; a config file's ``[train]`` values are checked
    earlier, when the file is loaded, with their ``$.train`` paths."""

    def bad(key: str, valid: str) -> ConfigError:
        return ConfigError(f"{key}={group[key]!r} is invalid for {where}: {valid}")

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
    problem = momentum_problem(mu, offset_range, strategy)
    if problem is not None:
        raise ConfigError(
            f"momentum={mu} {problem} for {where}; every coefficient must lie in [0, 1): lower momentum or the "
            "strategy's offsets"
        )


def step_coefficients(
    plan: Plan, param_groups: Sequence[Mapping[str, Any]], offsets: Offsets
) -> tuple[list[list[Coefficient]], list[list[Coefficient]] | None]:
    """Each param group's coefficients ``momentum + offset`` for this step (numbers, or 0-dim device tensors for
    offsets on the device, computed there and never read), and with ``plan.preserve_step`` each buffer's gradient
    factor (:func:`step_scales`)."""
    coefficients: list[list[Coefficient]] = []
    scales: list[list[Coefficient]] | None = [] if plan.preserve_step else None
    for group in param_groups:
        mu = group["momentum"]
        # in the parameters' dtype: a multi-tensor kernel whose scalar tensor has another dtype falls back to one
        # launch per tensor (the update computes in float32 either way, so the numbers do not change)
        dtype = next((p.dtype for p in group["params"]), torch.float32)
        dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        each: list[Coefficient] = list(offsets.unbind()) if isinstance(offsets, Tensor) else list(offsets)
        if isinstance(offsets, Tensor):
            coefficients.append(list((offsets + mu).to(dtype).unbind()))
        else:
            coefficients.append([mu + o for o in offsets])
        if scales is not None:
            scales.append(step_scales(plan, mu, each, dtype))
    return coefficients, scales


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
    parameters are left as they are). ``gate`` and ``grad_scales[i]`` (param group ``i``'s) as in
    :func:`~deepkd.kernels.update`.

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


def lr_tensors(param_groups: Sequence[Mapping[str, Any]], cache: list[tuple[float, Tensor]]) -> list[Tensor]:
    """Each param group's learning rate in a 0-dim tensor on its parameters' device (what a captured step reads),
    rewritten (one fill on the device, no copy from the host) when the group's ``lr`` changes; ``cache`` holds
    ``(lr last written, tensor)`` per group and is updated."""
    while len(cache) < len(param_groups):
        device = param_groups[len(cache)]["params"][0].device
        cache.append((math.nan, torch.zeros((), dtype=torch.float32, device=device)))
    out = []
    for i, group in enumerate(param_groups):
        seen, tensor = cache[i]
        if group["lr"] != seen:
            tensor.fill_(group["lr"])
            cache[i] = (group["lr"], tensor)
        out.append(tensor)
    return out
