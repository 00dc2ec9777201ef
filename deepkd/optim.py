"""The distillation optimizer: a :class:`torch.optim.Optimizer` that runs a recipe inside any training loop.

Where a plain loop calls ``loss.backward(); opt.step()``, a distillation loop calls::

    out = opt.distill_step(student_logits, teacher_logits, target, epoch=epoch)

which builds the loss parts, takes one gradient per group of parts, lets the momentum strategy's offset rule move
the coefficients, updates buffers and parameters, and lets the mask observe the step: the same code for every
strategy, whose differences are all in its :class:`~deepkd.momentum.Plan`. ``out`` reports parts, coefficients,
GSNR, K and phase. Param groups, LR schedulers and ``state_dict``/``load_state_dict`` work as with any optimizer.
``epoch`` (from 1) is required when the loss depends on it (DKD's warm-up); the mask and GSNR follow steps.

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
from deepkd.momentum import GSNR, StepContext, check_hyperparameters, init, no_split, step_param_groups, tracking_gsnr
from deepkd.registry import name_of
from deepkd.types import StepOutput
from deepkd.validators import check_choice

if TYPE_CHECKING:
    from deepkd.momentum import MomentumState
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
        track_gsnr: measure each gradient group's GSNR for the logs when the strategy does not (default settings).
        nonfinite: ``"raise"`` (:class:`NonFiniteLossError`, naming step and part) or ``"skip"`` (``skipped=True``).
        sync: what the ranks of a distributed run (``torch.distributed`` with more than one rank) average each step.
            ``"step"`` (default): each rank keeps local momentum buffers fed by its local gradients, and one
            all-reduce of the summed step direction (|θ| floats) moves every rank as one process on the global
            batch would (the update is linear in the gradients; :meth:`state_dict` averages the buffers).
            ``"grads"``: one all-reduce of every gradient group (k·|θ| floats); buffers are global on every rank.
            A plan whose update is not linear (``Plan.direction`` is ``None``: the official code's) takes
            ``"grads"``; :attr:`sync_path` says what runs. ``"off"``: ranks train independently.
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
        sync: Literal["step", "grads", "off"] = "step",
        check_inputs: bool | Literal["auto"] = "auto",
    ) -> None:
        check_choice("decomposition", decomposition, ("sequential", "batched"))
        check_choice("nonfinite", nonfinite, ("raise", "skip"))
        check_choice("check_inputs", check_inputs, (True, False, "auto"))
        check_choice("sync", sync, ("step", "grads", "off"))
        self.recipe, self.plan = recipe, recipe.plan()
        self.rule = tracking_gsnr(self.plan.rule, GSNR(), len(self.plan.groups)) if track_gsnr else self.plan.rule
        self.decomposition: Mode = decomposition
        self.foreach, self.nonfinite, self.sync, self.check_inputs = foreach, nonfinite, sync, check_inputs
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
        epoch = check_call(loss_cfg, teacher_logits, epoch)
        if self.check_inputs is not False:  # "auto": the labels (read back from the device) once on CUDA
            labels = self.check_inputs is True or not target.is_cuda or not self._labels_checked
            validate_logits(student_logits, teacher_logits, target, labels=labels, classes=self.num_classes or None)
            self._labels_checked = True
        if self.mask_state is None:
            self.num_classes, self.mask_state = student_logits.shape[1], mask_cfg.init(student_logits.shape[1])
        keep = None if teacher_logits is None else keep_mask(self.mask_state, teacher_logits, target, mask_cfg.form)
        parts = loss_cfg.parts(student_logits, teacher_logits, target, epoch=epoch, keep=keep)
        stacked = torch.stack([p.detach().float() for p in parts.values()])
        if self.sync_path is not None:  # the global batch's parts; a NaN on one rank makes every rank skip or raise
            stacked = distributed.mean_over_ranks(stacked)
        values = dict(zip(parts, stacked.tolist()))
        correct = (student_logits.detach().argmax(dim=1) == target).sum()
        bad = not all(math.isfinite(value) for value in values.values())
        if bad and self.nonfinite == "raise":
            raise NonFiniteLossError.at(self.steps + 1, epoch, values)
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
            skipped=bad,
        )

    @property
    def sync_path(self) -> Literal["step", "grads"] | None:
        """What the ranks all-reduce each step (see ``sync``), or ``None`` when nothing is (a single process)."""
        if self.sync == "off" or not distributed.is_distributed():
            return None
        return "step" if self.sync == "step" and self.plan.direction is not None else "grads"

    def _context(self, grads: list[list[list[Tensor]]] | None, split: Any = no_split) -> StepContext:
        mean: Any = distributed.mean_over_ranks if self.sync_path else (lambda t: t)
        return StepContext(self.steps + 1, grads, split, mean, local_grads=self.sync_path == "step")

    def _gradients(self, parts: dict[str, Tensor]) -> tuple[list[list[list[Tensor]]], list[list[bool]]]:
        active, flat = trainable(self.param_groups)
        grads = decompose(parts, self.plan.groups, flat, mode=self.decomposition)
        if self.sync_path == "grads":
            distributed.all_reduce_mean_([g for group in grads for g in group])  # one collective of k·|θ| a step
        return by_param_group(grads, active), active

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        """Apply the gradients computed by :meth:`distill_step` (which calls this); not for direct use."""
        if self._pending is None:
            call = "opt.distill_step(student_logits, teacher_logits, target, epoch=e)"
            raise DeepKDError(f"step() applies distill_step()'s gradients: call {call}, not backward() and step()")
        grads, active = self._pending
        self._pending = None
        full = [zero_filled(gs, act, g["params"]) for gs, act, g in zip(grads, active, self.param_groups)]
        self.offsets, self.rule_state = self.rule.update(self.rule_state, self._context(full))
        self.steps += 1
        coefficients = [self.coefficients(i) for i in range(len(self.param_groups))]
        reduce = distributed.all_reduce_mean_ if self.sync_path == "step" else None  # one all-reduce of |θ| a step
        self.momentum_states = step_param_groups(
            self.plan, self.momentum_states, self.param_groups, grads, active, coefficients, self.foreach, reduce
        )

    def gsnr(self) -> Tensor | None:
        """The GSNR of each gradient group that the strategy (or ``track_gsnr``) reports (float64), or ``None``."""
        return None if self.rule.report_gsnr is None else self.rule.report_gsnr(self.rule_state)

    def _own_state(self) -> _OwnState:
        momentum = tuple(self.momentum_states)
        return _OwnState(self.steps, self.offsets, momentum, self.rule_state, self.num_classes, self.mask_state)

    def state_dict(self) -> dict[str, Any]:
        """The state with the global momentum buffers. Under ``sync_path == "step"`` this averages the ranks' local
        buffers in place (one collective: **every rank must call it**); only their mean enters the update, so the
        run goes on bit for bit as one resumed from this state, on any world size."""
        sd = super().state_dict()
        if self.sync_path == "step":  # in place: every rank goes on from the mean, as a resumed run does
            distributed.all_reduce_mean_([b for s in self.momentum_states for bufs in s.buffers for b in bufs])
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
