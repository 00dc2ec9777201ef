"""The distillation optimizer: a :class:`torch.optim.Optimizer` that runs a recipe inside any training loop.

Where a plain loop calls ``loss.backward(); opt.step()``, a distillation loop calls::

    out = opt.distill_step(student_logits, teacher_logits, target, epoch=epoch)

which builds the loss parts, takes one gradient per group of parts, lets the momentum strategy's offset rule move
the coefficients, updates buffers and parameters, and lets the mask observe the step: the same code for every
strategy, whose differences are all in its :class:`~deepkd.momentum.Plan`. ``out`` reports parts, coefficients,
GSNR, K and phase. Param groups, LR schedulers and ``state_dict``/``load_state_dict`` work as with any optimizer.

``epoch`` (counted from 1) is required when the recipe's loss depends on it (DKD's warm-up): a missing epoch raises
instead of silently holding the warm-up at its first value. The mask schedule and the GSNR estimates follow steps.

>>> import torch, deepkd
>>> student = torch.nn.Linear(8, 5)
>>> opt = deepkd.DistillOptimizer(student.parameters(), deepkd.compose(loss="kd", momentum="dot", mask="none"), lr=0.1)
>>> x, y = torch.randn(16, 8), torch.randint(0, 5, (16,))
>>> out = opt.distill_step(student(x), torch.randn(16, 5), y, epoch=1)
>>> sorted(out.parts), out.momenta
(['nckd', 'task', 'tckd'], {'task': 0.825, 'tckd': 0.975, 'nckd': 0.975})
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch
from torch import Tensor

from deepkd import distributed
from deepkd.checkpoint import check_recipe, pack_state, unpack_state
from deepkd.config import unstructure
from deepkd.decompose import Mode, by_param_group, decompose, decompose_splits, trainable, zero_filled
from deepkd.errors import CheckpointError, DeepKDError, NonFiniteLossError
from deepkd.losses import check_call, on_samples, validate_logits
from deepkd.masks import PHASE_NAMES, MaskState, keep_mask
from deepkd.momentum import GSNR, MomentumState, StepContext, check_hyperparameters, init, tracking_gsnr
from deepkd.registry import name_of
from deepkd.types import StepOutput
from deepkd.validators import check_choice

if TYPE_CHECKING:
    from deepkd.recipe import Recipe

__all__ = ["DistillOptimizer", "StepOutput"]


class DistillOptimizer(torch.optim.Optimizer):
    """Runs a :class:`~deepkd.recipe.Recipe`: its loss parts, gradient groups, offset rule, momentum update and mask.

    Args:
        params: parameters or param-group dicts, as for :class:`torch.optim.SGD`.
        recipe: the recipe to run.
        lr, momentum, dampening, weight_decay, nesterov: per-group hyperparameters with the meaning of
            :class:`torch.optim.SGD`; ``momentum`` is μ, around which the strategy places each buffer's coefficient.
        decomposition: ``"sequential"`` or ``"batched"`` gradient products (:mod:`deepkd.decompose`).
        foreach: use the ``torch._foreach_*`` update kernels; ``None`` picks them for CUDA parameters.
        track_gsnr: also measure each gradient group's GSNR for the logs when the strategy does not (with the
            default :class:`~deepkd.momentum.GSNR` estimator settings).
        nonfinite: ``"raise"`` (default) raises :class:`NonFiniteLossError` naming the step and the part;
            ``"skip"`` leaves parameters and buffers untouched and reports ``skipped=True``.
        sync_grads: all-reduce (average) the gradients across ranks; ``None`` does so when ``torch.distributed`` is
            initialised with more than one rank.
        check_inputs: ``"auto"`` (default) checks shapes and dtypes every step, and the label range every step for
            CPU tensors but on the first step only for CUDA tensors (reading it back waits for the device);
            ``True`` checks everything every step; ``False`` nothing.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        recipe: Recipe,
        *,
        lr: float,
        momentum: float = 0.9,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        decomposition: Mode = "sequential",
        foreach: bool | None = None,
        track_gsnr: bool = False,
        nonfinite: Literal["raise", "skip"] = "raise",
        sync_grads: bool | None = None,
        check_inputs: bool | Literal["auto"] = "auto",
    ) -> None:
        check_choice("decomposition", decomposition, ("sequential", "batched"))
        check_choice("nonfinite", nonfinite, ("raise", "skip"))
        check_choice("check_inputs", check_inputs, (True, False, "auto"))
        self.recipe, self.plan = recipe, recipe.plan()
        self.rule = tracking_gsnr(self.plan.rule, GSNR(), len(self.plan.groups)) if track_gsnr else self.plan.rule
        self.decomposition: Mode = decomposition
        self.foreach, self.nonfinite, self.sync_grads, self.check_inputs = foreach, nonfinite, sync_grads, check_inputs
        self.offsets: tuple[float, ...] = self.plan.offsets
        self.mask_state: MaskState | None = None  # built at the first step, when the class count is known
        self.momentum_states: list[MomentumState] = []  # one per param group
        self.num_classes, self._labels_checked = 0, False
        self.steps = 0  # optimizer steps taken (skipped non-finite steps do not count)
        # from distill_step to step(): gradients [param group][gradient group][trainable param], and the trainable flags
        self._pending: tuple[list[list[list[Tensor]]], list[list[bool]]] | None = None
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.steps:
            raise DeepKDError("a DistillOptimizer takes its param groups before the first step (its strategy state)")
        super().add_param_group(param_group)
        group, index = self.param_groups[-1], len(self.param_groups) - 1
        check_hyperparameters(group, f"param group {index}", self.plan.offset_range, name_of(self.recipe.momentum))
        self.momentum_states.append(init(group["params"], len(self.plan.groups)))
        self.rule_state: Any = self.rule.init([g["params"] for g in self.param_groups])  # the rule sees every group

    def coefficients(self, group: int = 0) -> tuple[float, ...]:
        """The current momentum coefficient of each gradient group, for one param group."""
        return tuple(self.param_groups[group]["momentum"] + o for o in self.offsets)

    def part_momenta(self, group: int = 0) -> dict[str, float]:
        """The momentum coefficient each loss part's update uses (parts in one gradient group share it)."""
        coeffs = self.plan.effective(self.coefficients(group))
        return {part: round(c, 12) for g, c in zip(self.plan.groups, coeffs) for part in g}

    def distill_step(
        self, student_logits: Tensor, teacher_logits: Tensor | None, target: Tensor, *, epoch: int | None = None
    ) -> StepOutput:
        """Build the loss parts, take their gradients, and apply one update. See the module docstring.

        ``epoch`` counts from 1; it is required when the loss depends on it (``uses_epoch``, e.g. DKD's warm-up).
        """
        loss_cfg, mask_cfg = self.recipe.loss, self.recipe.mask
        epoch = check_call(loss_cfg, name_of(loss_cfg), teacher_logits, epoch)
        self._check_inputs(student_logits, teacher_logits, target)
        if self.mask_state is None:
            self.num_classes, self.mask_state = student_logits.shape[1], mask_cfg.init(student_logits.shape[1])
        keep = None if teacher_logits is None else keep_mask(self.mask_state, teacher_logits, target, mask_cfg.form)
        parts = loss_cfg.parts(student_logits, teacher_logits, target, epoch=epoch, keep=keep)
        values = dict(zip(parts, torch.stack([p.detach().float() for p in parts.values()]).tolist()))
        correct = (student_logits.detach().argmax(dim=1) == target).sum()
        bad = [n for n, value in values.items() if not math.isfinite(value)]
        if bad and self.nonfinite == "raise":
            raise NonFiniteLossError(
                f"step {self.steps + 1} (epoch {epoch}): loss part {bad[0]!r} is {values[bad[0]]} (parts: {values}); "
                "pass nonfinite='skip' to skip such steps"
            )
        if not bad:
            parts_of = on_samples(loss_cfg, student_logits, teacher_logits, target, epoch, keep)

            def split(m: int) -> Any:  # the gradient groups on m parts of this batch, for the rule's probe
                flat = trainable(self.param_groups)[1]
                return decompose_splits(parts_of, len(target), m, self.plan.groups, flat, mode=self.decomposition)

            self.rule_state = self.rule.probe(self.rule_state, self._context(None, split))
            self._pending = self._gradients(parts)
            self.step()
            self.mask_state = mask_cfg.observe(self.mask_state, correct, target.numel(), self.num_classes)
        gsnr = self.gsnr()
        return StepOutput(
            step=self.steps,
            loss=math.nan if bad else float(sum(values.values())),
            parts=values,
            momenta=self.part_momenta(),  # the coefficients this step used (the rule may just have moved them)
            gsnr=None if gsnr is None else {"+".join(g): float(r) for g, r in zip(self.plan.groups, gsnr.tolist())},
            k=int(self.mask_state.k),
            phase=PHASE_NAMES[int(self.mask_state.phase)],
            correct=correct,
            skipped=bool(bad),
        )

    def _check_inputs(self, student: Tensor, teacher: Tensor | None, target: Tensor) -> None:
        if self.check_inputs is not False:
            labels = self.check_inputs is True or not target.is_cuda or not self._labels_checked
            validate_logits(student, teacher, target, labels=labels, classes=self.num_classes or None)
            self._labels_checked = True

    def _sync(self) -> bool:
        return self.sync_grads if self.sync_grads is not None else distributed.is_distributed()

    def _context(self, grads: list[list[list[Tensor]]] | None, split: Any = None) -> StepContext:
        mean: Any = distributed.mean_over_ranks if self._sync() else (lambda t: t)
        return StepContext(self.steps + 1, grads, split or _no_split, mean)

    def _gradients(self, parts: dict[str, Tensor]) -> tuple[list[list[list[Tensor]]], list[list[bool]]]:
        active, flat = trainable(self.param_groups)
        grads = decompose(parts, self.plan.groups, flat, mode=self.decomposition)
        if self._sync():
            distributed.all_reduce_mean_([g for group in grads for g in group])  # one collective a step
        return by_param_group(grads, active), active

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        """Apply the gradients computed by :meth:`distill_step` (which calls this); not for direct use."""
        if self._pending is None:
            msg = "opt.distill_step(student_logits, teacher_logits, target, epoch=e) instead of loss.backward()"
            raise DeepKDError(
                f"DistillOptimizer.step() applies the gradients of distill_step(); call {msg} and opt.step()"
            )
        grads, active = self._pending
        self._pending = None
        full = [zero_filled(gs, act, g["params"]) for gs, act, g in zip(grads, active, self.param_groups)]
        self.offsets, self.rule_state = self.rule.update(self.rule_state, self._context(full))
        self.steps += 1
        for i, group in enumerate(self.param_groups):
            act, state = active[i], self.momentum_states[i]
            params = [p for p, a in zip(group["params"], act) if a]
            sub = state._replace(buffers=tuple(tuple(b for b, a in zip(bufs, act) if a) for bufs in state.buffers))
            foreach = self.foreach if self.foreach is not None else bool(params and params[0].is_cuda)
            hyper = {k: group[k] for k in ("lr", "dampening", "weight_decay", "nesterov")}
            new = self.plan.apply(
                sub, params, grads[i], self.coefficients(i), decay_group=self.plan.decay_group, foreach=foreach, **hyper
            )
            self.momentum_states[i] = state._replace(step=new.step)

    def gsnr(self) -> Tensor | None:
        """The GSNR of each gradient group that the strategy (or ``track_gsnr``) reports (float64), or ``None``."""
        return None if self.rule.report_gsnr is None else self.rule.report_gsnr(self.rule_state)

    def _own_state(self) -> _OwnState:
        return _OwnState(
            self.steps, self.offsets, tuple(self.momentum_states), self.rule_state, self.num_classes, self.mask_state
        )

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["deepkd"] = {"recipe": unstructure(self.recipe), **pack_state(self._own_state())}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`; checked (recipe, shapes, structure) before anything changes."""
        ours = state_dict.get("deepkd") if isinstance(state_dict, dict) else None
        if not isinstance(ours, dict):
            raise CheckpointError("this optimizer state was not saved by a deepkd DistillOptimizer (no 'deepkd' entry)")
        check_recipe(ours.get("recipe"), unstructure(self.recipe), "the optimizer state")
        classes = ours.get("classes")
        mask = self.recipe.mask.init(classes) if isinstance(classes, int) and classes > 1 else None
        like = self._own_state()._replace(mask=mask)
        own = unpack_state({k: v for k, v in ours.items() if k != "recipe"}, like, "optimizer state")
        try:
            super().load_state_dict({"state": {}, "param_groups": state_dict["param_groups"]})
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"the optimizer state does not match these parameters: {exc}") from None
        self.steps, self.offsets, momentum, self.rule_state, self.num_classes, self.mask_state = own
        self.momentum_states, self._pending = list(momentum), None


class _OwnState(NamedTuple):
    """What ``state_dict()["deepkd"]`` holds besides the recipe (packed as plain data)."""

    steps: int
    offsets: tuple[float, ...]
    momentum: tuple[MomentumState, ...]
    rule: Any  # the offset rule's state
    classes: int  # 0 before the first step
    mask: MaskState | None


def _no_split(splits: int) -> None:
    raise DeepKDError("split gradients are available while probing, before the step's gradients are taken")
