r"""The momentum strategies ``sgd``, ``dot``, ``fixed`` and ``gsnr``, and their offset rules.

Every strategy keeps one momentum buffer per *group* of loss parts (the heavy-ball update of
:mod:`deepkd.kernels`), with coefficients :math:`m = \mu + \text{offset}`: :math:`\mu` is the optimizer's
``momentum``, the offsets are the strategy's :class:`~deepkd.types.Plan`:

- ``sgd``: one buffer for the summed gradient; equals :class:`torch.optim.SGD`.
- ``dot`` (Zhao et al., "DOT: A Distillation-Oriented Trainer", ICCV 2023): task :math:`-\Delta`, distillation
  (TCKD + NCKD) :math:`+\Delta`.
- ``fixed`` (DeepKD, arXiv 2505.15133): task, TCKD and NCKD buffers with offsets :math:`\delta_{TOG},
  \delta_{TCG}, \delta_{NCG}`. ``reference_quirks=True`` reproduces the official code instead
  (:func:`deepkd.kernels.update_reference_quirks`).
- ``gsnr`` (deepkd's own): the offsets follow the measured GSNR of each component (:mod:`deepkd.gsnr`), moved by
  the rule :func:`gsnr_offsets`; :func:`tracking_gsnr` measures GSNR for the logs under any other rule.

Groups whose coefficients are equal for the whole run share one buffer and one gradient product, because their
buffers would be identical in sum (:func:`merged_plan`); the official-code weight-decay placement forbids that, as do
GSNR coefficients (they change during the run and need each component's gradient).

The contract these strategies implement (``Plan``, ``OffsetRule``, ``StepContext``) is in :mod:`deepkd.types`; the
update kernels are in :mod:`deepkd.kernels`. Both are re-exported here under their earlier import paths.

>>> GSNR().plan(("task", "tckd", "nckd")).groups
(('task',), ('tckd',), ('nckd',))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from deepkd.errors import ConfigError
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
from deepkd.kernels import OFFICIAL, MomentumState, direction, init, update, update_reference_quirks
from deepkd.registry import register_momentum
from deepkd.types import NoState, OffsetRule, Offsets, Plan, StepContext, static_offsets
from deepkd.validators import integer, real

__all__ = [
    "DOT",
    "GSNR",
    "FixedOffsets",
    "PlainMomentum",
    "gsnr_offsets",
    "merged_plan",
    "tracking_gsnr",
    # earlier import paths of the contract (deepkd.types) and the kernels (deepkd.kernels)
    "MomentumState",
    "NoState",
    "OffsetRule",
    "Plan",
    "StepContext",
    "direction",
    "init",
    "static_offsets",
    "update",
    "update_reference_quirks",
]

def merged_plan(parts: Sequence[str], offsets: Mapping[str, float], *, preserve_step: bool = False) -> Plan:
    """Merge the parts with equal (static) offsets into one group each, keeping the parts' order."""
    groups: dict[float, list[str]] = {}
    for part in parts:
        groups.setdefault(float(offsets[part]), []).append(part)
    offs = tuple(groups)
    bounds = (min(offs, default=0.0), max(offs, default=0.0))
    return Plan(tuple(tuple(g) for g in groups.values()), offs, bounds, preserve_step=preserve_step)


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

    ``reference_quirks=True`` reproduces the official code (:func:`~deepkd.kernels.update_reference_quirks`);
    δ_TOG then has no effect and the three buffers are never merged. ``preserve_step`` scales each buffer's gradient
    by (1 − m)/(1 − μ), so that the offsets change how the buffers smooth their gradients but not their step sizes
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
        return Plan(  # weight decay joins the TCKD gradient, as in the official code
            groups, offs, (min(offs), max(offs)), update=OFFICIAL, decay_group=1, preserve_step=self.preserve_step
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
        bounds = (-float(self.delta), float(self.delta))
        rule = gsnr_offsets(self, len(groups))
        return Plan(groups, (0.0,) * len(groups), bounds, rule=rule, preserve_step=self.preserve_step)

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
