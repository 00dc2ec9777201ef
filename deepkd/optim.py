"""The distillation optimizer: a :class:`torch.optim.Optimizer` that runs a recipe inside any training loop.

Where a plain loop calls ``loss.backward(); opt.step()``, a distillation loop calls::

    out = opt.distill_step(student_logits, teacher_logits, target, epoch=epoch)

which builds the loss parts, takes one gradient per group of parts, lets the momentum strategy's offset rule move
the coefficients, updates buffers and parameters (:mod:`deepkd.param_groups`), and lets the mask observe the step:
the same code for every strategy, whose differences are all in its :class:`~deepkd.types.Plan`. Param groups, LR
schedulers and ``state_dict``/``load_state_dict`` work as with any optimizer. ``epoch`` (from 1) is required when
the loss depends on it (DKD's warm-up).

**A step never waits for the device.** Loss parts, coefficients, GSNR, K and the smoothed accuracy stay on the
device, and a step whose loss is not finite is skipped there. ``out`` (a :class:`~deepkd.types.StepOutput`) reads
the step's values back when a field is first read, which waits for the device as ``loss.item()`` would: read them
every few steps (the :class:`~deepkd.trainer.Trainer` reads them every ``log_every`` steps).

Collectives per step in a distributed run (``torch.distributed`` with more than one process):

===============  ==========================================================  ============================
``sync``         what is all-reduced each step                               size
===============  ==========================================================  ============================
``"step"``       the step's small values (loss parts, the mask's hit and     P + 2 (+ GSNR samples) floats,
                 sample counts, the GSNR estimator's samples), then the      then ``|θ|``
                 summed step direction
``"grads"``      the small values, then every gradient group                 P + 2 (+ samples), k · ``|θ|``
``"off"``        nothing: ranks train independently                          0
===============  ==========================================================  ============================

The split GSNR estimator adds one collective of ``2k`` floats at its estimation steps only.

>>> import torch, deepkd
>>> student = torch.nn.Linear(8, 5)
>>> opt = deepkd.DistillOptimizer(student.parameters(), deepkd.compose(loss="kd", momentum="dot", mask="none"), lr=0.1)
>>> x, y = torch.randn(16, 8), torch.randint(0, 5, (16,))
>>> out = opt.distill_step(student(x), torch.randn(16, 5), y, epoch=1)
>>> sorted(out.parts), out.momenta
(['nckd', 'task', 'tckd'], {'task': 0.825, 'tckd': 0.975, 'nckd': 0.975})
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from deepkd import distributed, optim_state
from deepkd.checkpoint import check_recipe, pack_state, unpack_state
from deepkd.config import unstructure
from deepkd.decompose import (
    Mode,
    decompose,
    decompose_logits,
    decompose_splits,
    group_losses,
    no_split,
    on_samples,
    trainable,
)
from deepkd.errors import CheckpointError, DeepKDError
from deepkd.inputs import check_call, validate_logits
from deepkd.kernels import MomentumState, init
from deepkd.masks import keep_mask
from deepkd.momentum import GSNR, tracking_gsnr
from deepkd.optim_state import OwnState, Runtime
from deepkd.param_groups import check_hyperparameters, lr_tensors, step_coefficients, step_param_groups
from deepkd.registry import name_of
from deepkd.types import Keep, MaskState, StepContext, StepOutput
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
        decomposition: ``"sequential"`` (default) or ``"batched"`` gradient products (:mod:`deepkd.decompose`:
            equal results; batched is not faster on any GPU setup measured).
        foreach: use the ``torch._foreach_*`` update kernels; ``None`` picks them for CUDA parameters.
        track_gsnr: measure each gradient group's GSNR for the logs when the strategy does not (default settings).
        nonfinite: ``"raise"`` or ``"skip"``: what a step whose loss is NaN or infinite does. Either way it is not
            applied, on the device. ``"skip"`` goes on training (``out.skipped`` tells, :attr:`skipped_steps`
            counts); ``"raise"`` applies no later step either and raises :class:`NonFiniteLossError`, naming the
            first such step and its parts, at the next read of a step's values, :meth:`check_finite` or
            :meth:`state_dict` (the parameters are those from before that step).
        sync: what the ranks of a distributed run (``torch.distributed`` with more than one rank) average each step.
            ``"step"`` (default): each rank keeps local momentum buffers fed by its local gradients, and one
            all-reduce of the summed step direction (``|θ|`` floats) moves every rank as one process on the global
            batch would (the update is linear in the gradients; :meth:`state_dict` averages the buffers).
            ``"grads"``: one all-reduce of every gradient group (k·``|θ|`` floats); buffers are global on every rank.
            A plan whose update is not linear (``Plan.direction`` is ``None``: the official code's) takes
            ``"grads"``; :attr:`sync_path` says what runs. ``"off"``: ranks train independently. The step's loss
            parts and the mask's counts ride on one small collective before either (see the module docstring).
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
        self.offsets: tuple[float, ...] | Tensor = self.plan.offsets
        self.mask_state: MaskState | None = None  # built at the first step, when the class count is known
        self.momentum_states: list[MomentumState] = []  # one per param group
        self.num_classes, self._labels_checked = 0, False
        self.steps = 0  # distill_step calls so far (a skipped step counts: it is skipped on the device)
        #: read a number-valued ``lr`` each step (False), or keep every group's learning rate in a tensor on the
        #: device that the update multiplies by (True: what a captured step needs; see :mod:`deepkd.capture`)
        self.capturable = False
        self._runtime: Runtime | None = None
        self._lrs: list[tuple[float, Tensor]] = []  # per param group: the lr last written, its device tensor
        self._epochs: list[tuple[int, int]] = []  # (first step, epoch), for naming a bad step's epoch
        # the gradients distill_step() hands to step(): LR schedulers and optimizer hooks wrap Optimizer.step, so the
        # update runs there, never on its own
        self._pending: tuple[list[list[list[Tensor]]], list[list[bool]], StepContext] | None = None
        self._hits: Tensor | None = None  # the last step's top-1 hits, on the device
        self._replay_step = 0
        self._readers: tuple[Any, Any] = (None, None)  # (layout, reader) of the last step's packed values
        #: bumped whenever the state's tensors are replaced (a loaded state): a captured graph then holds stale ones
        self.state_version = 0
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

    # ------------------------------------------------------------------ coefficients
    def coefficients(self, group: int = 0) -> tuple[float, ...]:
        """The current momentum coefficient of each gradient group, for one param group (reads the device when the
        strategy moves them there)."""
        mu = self.param_groups[group]["momentum"]
        offsets = self.offsets.tolist() if isinstance(self.offsets, Tensor) else self.offsets
        return tuple(mu + o for o in offsets)

    def part_momenta(self, group: int = 0) -> dict[str, float]:
        """The momentum coefficient each loss part's update uses (parts in one gradient group share it)."""
        return self._momenta(self.coefficients(group))

    def _momenta(self, coefficients: Sequence[float]) -> dict[str, float]:
        coeffs = self.plan.effective(tuple(coefficients))
        return {part: round(c, 12) for g, c in zip(self.plan.groups, coeffs) for part in g}

    # ------------------------------------------------------------------ the step
    def distill_step(
        self, student_logits: Tensor, teacher_logits: Tensor | None, target: Tensor, *, epoch: int | None = None
    ) -> StepOutput:
        """Build the loss parts, take their gradients, and apply one update. See the module docstring.

        ``epoch`` counts from 1; it is required when the loss depends on it (``uses_epoch``, e.g. DKD's warm-up).
        """
        loss_cfg = self.recipe.loss
        epoch = check_call(loss_cfg, teacher_logits, epoch)
        if self.check_inputs is not False:  # "auto": the labels (read back from the device) once on CUDA
            labels = self.check_inputs is True or not target.is_cuda or not self._labels_checked
            validate_logits(student_logits, teacher_logits, target, labels=labels, classes=self.num_classes or None)
            self._labels_checked = True
        rt = self._runtime if self._runtime is not None else self._start(student_logits)
        step = self._begin(epoch)
        values = self._device_step(rt, student_logits, teacher_logits, target, epoch, step)
        self._end(step)
        return self._output(step, values)

    def _begin(self, epoch: int) -> int:
        """The host's part of a step before its device work: the step's number, its epoch noted (for naming a bad
        step's epoch), the learning-rate tensors brought up to date (outside any captured graph)."""
        step = self.steps + 1
        if not self._epochs or self._epochs[-1][1] != epoch:
            self._epochs.append((step, epoch))
        if self.capturable:
            lr_tensors(self.param_groups, self._lrs)
        return step

    def _end(self, step: int) -> None:
        """The host's part of a step after its device work: the step counts."""
        self.steps = step
        self.momentum_states = [s._replace(step=step) for s in self.momentum_states]

    def replayed(self, packed: Tensor, hits: Tensor | None) -> StepOutput:
        """The host's part of a step whose device work a captured graph replays (:mod:`deepkd.capture`): call
        :meth:`begin_replay` before the replay and this after it, with the graph's step values (cloned)."""
        step = self._replay_step
        self._end(step)
        return StepOutput(step=step, tensor=packed, reader=self._reader(), correct=hits)

    def begin_replay(self, epoch: int) -> None:
        """See :meth:`replayed`: the host's part of a step before the replay of its captured device work."""
        self._replay_step = self._begin(epoch)

    def special_step(self) -> bool:
        """Whether the next step does what an ordinary one does not (the first step, a GSNR estimate or
        re-allocation): a captured graph of an ordinary step cannot stand in for it."""
        return self.steps == 0 or self.rule.special(self.steps + 1)

    def _start(self, student_logits: Tensor) -> Runtime:
        """First-step set-up: the class count, the mask state on the logits' device, the runtime record."""
        self.num_classes = student_logits.shape[1]
        return self._new_runtime(self.recipe.mask.init(self.num_classes), student_logits.device)

    def _new_runtime(self, mask_state: MaskState, device: torch.device) -> Runtime:
        self.mask_state = MaskState(*(t.to(device) for t in mask_state))
        params = [[p for p in g["params"]] for g in self.param_groups]
        groups, parts = len(self.plan.groups), len(self.recipe.loss.part_names)
        self._runtime = optim_state.new_runtime(params, groups, parts, device, self.steps, flat=FLAT_GRADIENTS)
        return self._runtime

    def _mask_state(self) -> MaskState:
        if self.mask_state is None:
            raise DeepKDError("the mask state is built by the first distill_step()")
        return self.mask_state

    def _keep(self, teacher: Tensor, target: Tensor) -> Keep | None:
        own = getattr(self.recipe.mask, "keep", None)
        if own is not None:
            return own(self._mask_state(), teacher, target)  # type: ignore[no-any-return]
        return keep_mask(self._mask_state(), teacher, target, self.recipe.mask.form)

    def _device_step(
        self, rt: Runtime, student: Tensor, teacher: Tensor | None, target: Tensor, epoch: int, step: int
    ) -> Tensor:
        """Everything one step does on the device, without reading anything back; returns the step's values
        packed in one float64 vector (see :meth:`_output`)."""
        loss_cfg, mask_cfg = self.recipe.loss, self.recipe.mask
        keep = None if teacher is None else self._keep(teacher, target)
        fused = getattr(loss_cfg, "parts_and_grads", None)  # values and logit gradients in closed form
        closed = fused(student, teacher, target, epoch=epoch, keep=keep) if fused is not None else None
        if closed is not None:
            stacked = torch.stack([closed.values[name] for name in loss_cfg.part_names]).float()
        else:
            parts = loss_cfg.parts(student, teacher, target, epoch=epoch, keep=keep)
            stacked = torch.stack([p.detach().float() for p in parts.values()])
        halts = self.nonfinite == "raise"  # then every step from the first non-finite one on is not applied
        ok = torch.isfinite(stacked).all()
        applied = ok & rt.clean if halts else ok
        parts_of = on_samples(loss_cfg, student, teacher, target, epoch, keep)

        def split(m: int) -> Any:  # the gradient groups on m parts of this batch, for the rule's probe
            flat = trainable(self.param_groups)[1]
            return decompose_splits(parts_of, len(target), m, self.plan.groups, flat, mode=self.decomposition)

        self.rule_state = self.rule.probe(self.rule_state, self._context(step, None, split, ok=applied))
        active, flat_params = trainable(self.param_groups)
        if closed is not None:  # one product of the network per group, no backward pass through the loss
            logit_grads = group_losses(closed.grads, self.plan.groups)  # the sum of each group's logit gradients
            raw = decompose_logits(student, logit_grads, flat_params, mode=self.decomposition)
        else:
            raw = decompose(parts, self.plan.groups, flat_params, mode=self.decomposition)
        grads = rt.grads.load(raw, active)
        hits = (student.detach().argmax(dim=1) == target).sum()
        samples: Tensor | int = target.numel()
        ctx = self._context(step, rt.grads.full(grads, active), ok=applied, flat=rt.grads.flat)
        sample = self.rule.sample(self.rule_state, ctx) if self.rule.sample is not None else None
        path = self.sync_path
        if path is not None:  # the global batch's parts and counts; a NaN on one rank makes every rank skip
            stacked, hits, samples, sample = optim_state.mean_small_values(stacked, hits, len(target), sample)
            ok = torch.isfinite(stacked).all()
            applied = ok & rt.clean if halts else ok
        if path == "grads":  # one collective of k·|θ|
            distributed.all_reduce_mean_(
                [rt.grads.data] if rt.grads.data is not None else [g for pg in grads for gs in pg for g in gs]
            )
        skip = ~applied
        rt.grads.sanitize(skip, grads)
        self._pending = (grads, active, ctx._replace(ok=applied, sample=sample))
        self.step()
        mask_state = self._mask_state()
        if getattr(mask_cfg, "observes", True):  # the global batch's counts; a skipped step observes no samples
            self.mask_state = mask_state = mask_cfg.observe(mask_state, hits * applied, samples * applied,
                                                           self.num_classes)  # fmt: skip
        optim_state.record_step(rt, stacked, ok, skip)
        self._hits = hits
        offsets = self.offsets if isinstance(self.offsets, Tensor) else None
        return optim_state.pack(stacked, offsets, self.gsnr(), mask_state, skip)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        """Apply the gradients computed by :meth:`distill_step` (which calls this); not for direct use. The update
        runs here rather than inside ``distill_step`` because LR schedulers and optimizer hooks wrap
        ``Optimizer.step``."""
        if self._pending is None:
            call = "opt.distill_step(student_logits, teacher_logits, target, epoch=e)"
            raise DeepKDError(f"step() applies distill_step()'s gradients: call {call}, not backward() and step()")
        grads, active, ctx = self._pending
        self._pending = None
        offsets, self.rule_state = self.rule.update(self.rule_state, ctx)
        self.offsets = offsets
        reduce = distributed.all_reduce_mean_ if self.sync_path == "step" else None  # one all-reduce of |θ| a step
        coefficients, scales = step_coefficients(self.plan, self.param_groups, offsets)
        self.momentum_states = step_param_groups(
            self.plan,
            self.momentum_states,
            self.param_groups,
            grads,
            active,
            coefficients,
            self.foreach,
            reduce,
            gate=ctx.ok,
            lrs=[tensor for _, tensor in self._lrs] if self.capturable else None,
            grad_scales=scales,
        )

    def _output(self, step: int, packed: Tensor) -> StepOutput:
        return StepOutput(step=step, tensor=packed, reader=self._reader(), correct=self._hits)

    def _reader(self) -> Any:
        """How a step's packed values (:func:`~deepkd.optim_state.pack`) read back: one function per layout."""
        dynamic = isinstance(self.offsets, Tensor)
        key = (dynamic, self.param_groups[0]["momentum"], None if dynamic else tuple(self.offsets))
        if self._readers[0] != key:
            mu, check = self.param_groups[0]["momentum"], self.nonfinite == "raise"
            self._readers = (key, optim_state.reader(
                list(self.recipe.loss.part_names),
                ["+".join(g) for g in self.plan.groups],
                static_momenta=None if dynamic else self.part_momenta(),
                momenta_of=lambda offsets: self._momenta([mu + o for o in offsets]),
                reports_gsnr=self.rule.report_gsnr is not None,
                record=(lambda: optim_state.finite_record(self._runtime)) if check else None,
                check=self._raise_if_bad,
            ))  # fmt: skip
        return self._readers[1]

    @property
    def sync_path(self) -> Literal["step", "grads"] | None:
        """What the ranks all-reduce each step (see ``sync``), or ``None`` when nothing is (a single process)."""
        if self.sync == "off" or not distributed.is_distributed():
            return None
        return "step" if self.sync == "step" and self.plan.direction is not None else "grads"

    def _context(
        self,
        step: int,
        grads: list[list[list[Tensor]]] | None,
        split: Any = None,
        *,
        ok: Tensor | None = None,
        flat: Sequence[Tensor] | None = None,
    ) -> StepContext:
        mean: Any = distributed.mean_over_ranks if self.sync_path else (lambda t: t)
        split = split if split is not None else no_split
        return StepContext(step, grads, split, mean, local_grads=self.sync_path == "step", ok=ok, flat=flat)

    # ------------------------------------------------------------------ reading back
    def gsnr(self) -> Tensor | None:
        """The GSNR of each gradient group that the strategy (or ``track_gsnr``) reports (float64, on the device),
        or ``None``."""
        return None if self.rule.report_gsnr is None else self.rule.report_gsnr(self.rule_state)

    @property
    def skipped_steps(self) -> int:
        """Steps not applied because their loss was not finite (reads the device)."""
        return 0 if self._runtime is None else int(self._runtime.skipped)

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` when ``nonfinite="raise"`` and a step's loss was not finite, naming the
        first such step, its epoch and its parts (reads the device: one synchronisation). Under ``"skip"`` it
        does nothing."""
        record = optim_state.finite_record(self._runtime) if self.nonfinite == "raise" else None
        if record is not None:
            self._raise_if_bad(record.tolist())

    def _raise_if_bad(self, record: Sequence[float]) -> None:
        optim_state.raise_if_bad(record, self._epochs, self.recipe.loss.part_names)

    # ------------------------------------------------------------------ state
    def _own_state(self) -> OwnState:
        momentum = tuple(self.momentum_states)
        offsets = tuple(self.offsets.tolist()) if isinstance(self.offsets, Tensor) else tuple(self.offsets)
        return OwnState(self.steps, offsets, momentum, self.rule_state, self.num_classes, self.mask_state)

    def state_dict(self) -> dict[str, Any]:
        """The state with the global momentum buffers. Under ``sync_path == "step"`` this averages the ranks' local
        buffers in place (one collective: **every rank must call it**); only their mean enters the update, so the
        run goes on bit for bit as one resumed from this state, on any world size. Raises
        :class:`NonFiniteLossError` when ``nonfinite="raise"`` and a step's loss was not finite."""
        self.check_finite()
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
        self.steps, offsets, momentum, self.rule_state, self.num_classes, mask_state = own
        self.offsets = tuple(offsets)
        self.momentum_states, self._pending = list(momentum), None
        self.mask_state, self._runtime, self._lrs = mask_state, None, []
        self.state_version += 1
        if mask_state is not None:  # on the parameters' device, where the steps will run
            self._new_runtime(mask_state, self.param_groups[0]["params"][0].device)


#: whether the optimizer copies each step's gradients into one flat buffer (one multi-tensor launch to copy, one
#: kernel to zero a skipped step, one gather for the GSNR samples): ``None`` does on CUDA, not on the CPU
FLAT_GRADIENTS: bool | None = None
