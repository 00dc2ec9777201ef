"""The distillation optimizer: a :class:`torch.optim.Optimizer` that runs a recipe inside any training loop.

Where a plain loop calls ``loss.backward(); opt.step()``, a distillation loop calls::

    out = opt.distill_step(student_logits, teacher_logits, target, epoch=epoch)

which builds the recipe's loss parts, decomposes their gradients (one product per group of parts), updates the mask
schedule, the GSNR estimate and the momentum buffers, and moves the parameters. ``out`` carries the loss parts, the
current momentum coefficients, GSNR values, K and phase. Param groups, ``torch.optim.lr_scheduler`` and
``state_dict``/``load_state_dict`` work as with any optimizer.

``epoch`` (counted from 1) is required when the recipe's loss depends on it (DKD's warm-up): a missing epoch raises
instead of silently holding the warm-up at its first value. The mask schedule and the GSNR estimates follow steps
and need no epoch.

>>> import torch, deepkd
>>> student = torch.nn.Linear(8, 5)
>>> opt = deepkd.compose(loss="kd", momentum="dot", mask="none").optimizer(student.parameters(), lr=0.1)
>>> x, y = torch.randn(16, 8), torch.randint(0, 5, (16,))
>>> out = opt.distill_step(student(x), torch.randn(16, 5), y, epoch=1)
>>> sorted(out.parts), out.momenta
(['nckd', 'task', 'tckd'], {'task': 0.825, 'tckd': 0.975, 'nckd': 0.975})
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs
import torch
import torch.distributed as dist
from torch import Tensor

from deepkd import gsnr as G
from deepkd import masks as M
from deepkd import momentum as MO
from deepkd.compose import same_method
from deepkd.config import unstructure
from deepkd.decompose import Mode, decompose
from deepkd.errors import CheckpointError, ConfigError, DeepKDError, InputError, NonFiniteLossError
from deepkd.losses import Keep, validate_logits

if TYPE_CHECKING:
    from deepkd.compose import Recipe

__all__ = ["DistillOptimizer", "StepOutput"]


@attrs.frozen
class StepOutput:
    """What one :meth:`DistillOptimizer.distill_step` did.

    Attributes:
        step: the optimizer step count after this step (skipped steps do not count).
        loss: the total loss (sum of the parts).
        parts: each loss part's value.
        momenta: each part's momentum coefficient (first param group).
        gsnr: each gradient group's GSNR estimate (per sample), when GSNR is tracked (NaN before the first
            estimate).
        k: the mask's K (C − 1 when no masking) and ``phase`` its phase name.
        correct: top-1 hits of this batch (a 0-dim tensor, not synchronised).
        skipped: True when a non-finite loss was skipped under ``nonfinite="skip"``.
    """

    step: int
    loss: float
    parts: dict[str, float]
    momenta: dict[str, float]
    gsnr: dict[str, float] | None
    k: int
    phase: str
    correct: Tensor
    skipped: bool = False


class DistillOptimizer(torch.optim.Optimizer):
    """Runs a :class:`~deepkd.compose.Recipe`'s gradient decomposition, momentum, GSNR and mask.

    Args:
        params: parameters or param-group dicts, as for :class:`torch.optim.SGD`.
        recipe: the recipe to run.
        lr, momentum, dampening, weight_decay, nesterov: per-group hyperparameters with the meaning of
            :class:`torch.optim.SGD`; ``momentum`` is μ, around which the strategy places each buffer's coefficient.
        decomposition: ``"sequential"`` or ``"batched"`` gradient products (:mod:`deepkd.decompose`).
        foreach: use the ``torch._foreach_*`` update kernels; ``None`` picks them for CUDA parameters.
        track_gsnr: estimate GSNR per gradient group for logging even when the strategy does not use it (with
            the default :class:`~deepkd.momentum.GSNR` estimator settings).
        nonfinite: ``"raise"`` (default) raises :class:`NonFiniteLossError` naming the step and the part;
            ``"skip"`` leaves parameters and buffers untouched and reports ``skipped=True``.
        sync_grads: all-reduce (average) each group's gradients across ranks; ``None`` does so when
            ``torch.distributed`` is initialised with more than one rank.
        check_inputs: validate logit shapes and label range on every step.
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
        check_inputs: bool = True,
    ) -> None:
        if decomposition not in ("sequential", "batched"):
            raise ConfigError(f"decomposition must be 'sequential' or 'batched', got {decomposition!r}")
        if nonfinite not in ("raise", "skip"):
            raise ConfigError(f"nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
        self.recipe = recipe
        self.plan = recipe.plan()
        self.decomposition: Mode = decomposition
        self.foreach = foreach
        self.nonfinite = nonfinite
        self.sync_grads = sync_grads
        self.check_inputs = check_inputs
        gsnr_cfg = self.plan.gsnr if self.plan.gsnr is not None else (MO.GSNR() if track_gsnr else None)
        self._gsnr_cfg: MO.GSNR | None = gsnr_cfg
        self._momentum_states: list[MO.MomentumState] = []
        self._gsnr_states: list[G.GSNRState] = []  # the stream estimator's moments, one state per param group
        self._split_state: G.SplitState | None = (
            G.split_init(len(self.plan.groups)) if gsnr_cfg is not None and gsnr_cfg.estimator == "split" else None
        )
        self.offsets: tuple[float, ...] = self.plan.offsets
        self.mask_state: M.MaskState | None = None
        self._pending: tuple[list[list[list[Tensor]]], list[list[bool]]] | None = None
        self._steps = 0
        self.last_gsnr: Tensor | None = None
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ param groups and validation
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._validate_group(group, len(self.param_groups) - 1)
        params = group["params"]
        self._momentum_states.append(MO.init(params, len(self.plan.groups)))
        if self._gsnr_cfg is not None and self._gsnr_cfg.estimator == "stream":
            cfg = self._gsnr_cfg
            self._gsnr_states.append(
                G.init(params, len(self.plan.groups), fraction=cfg.fraction, seed=cfg.seed + len(self._gsnr_states))
            )

    def _validate_group(self, group: dict[str, Any], index: int) -> None:
        where = f"param group {index}"

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
        lo, hi = self.plan.offset_range
        if not (mu + lo >= 0.0 and mu + hi < 1.0):
            name = getattr(self.recipe.momentum, "strategy_name", type(self.recipe.momentum).__name__)
            raise ConfigError(
                f"momentum={mu} with the {name!r} strategy's offsets in [{lo:+.4g}, {hi:+.4g}] gives coefficients in "
                f"[{mu + lo:.4g}, {mu + hi:.4g}] for {where}; every coefficient must lie in [0, 1) "
                "@ $.optimizer.momentum"
            )

    # ------------------------------------------------------------------ the step
    def coefficients(self, group: int = 0) -> tuple[float, ...]:
        """The current momentum coefficient of each gradient group, for one param group."""
        mu = self.param_groups[group]["momentum"]
        return tuple(mu + o for o in self.offsets)

    def part_momenta(self, group: int = 0) -> dict[str, float]:
        """The current momentum coefficient of each loss part (parts in one gradient group share it)."""
        coeffs = self.coefficients(group)
        if self.plan.quirks:  # the task buffer runs on the TCKD coefficient
            coeffs = (coeffs[1], coeffs[1], coeffs[2])
        return {part: round(c, 12) for g, c in zip(self.plan.groups, coeffs) for part in g}

    def distill_step(
        self, student_logits: Tensor, teacher_logits: Tensor | None, target: Tensor, *, epoch: int | None = None
    ) -> StepOutput:
        """Build the loss parts, decompose their gradients, and apply one update. See the module docstring.

        ``epoch`` counts from 1; it is required when the loss depends on it (``uses_epoch``, e.g. DKD's warm-up).
        """
        loss_cfg, mask_cfg = self.recipe.loss, self.recipe.mask
        epoch = self._check_epoch(epoch)
        if self.check_inputs:
            validate_logits(student_logits, teacher_logits, target)
        if teacher_logits is None and loss_cfg.needs_teacher:
            raise InputError(f"the {loss_cfg.strategy_name!r} loss needs teacher logits, got None")  # type: ignore[attr-defined]
        classes = student_logits.shape[1]
        if self.mask_state is None:
            self.mask_state = mask_cfg.init(classes)
        elif self.check_inputs and int(self.mask_state.k) > classes - 1 and self.mask_state.phase.item() != M.HARD:
            raise InputError(f"this optimizer was set up for more classes than the {classes} of these logits")
        keep = None if teacher_logits is None else M.keep_mask(self.mask_state, teacher_logits, target, mask_cfg.form)
        parts = loss_cfg.parts(student_logits, teacher_logits, target, epoch=epoch, keep=keep)
        names = list(parts)
        values = torch.stack([parts[n].detach().float() for n in names]).tolist()
        bad = [n for n, val in zip(names, values) if not math.isfinite(val)]
        correct = (student_logits.detach().argmax(dim=1) == target).sum()
        if bad:
            if self.nonfinite == "raise":
                raise NonFiniteLossError(
                    f"step {self._steps + 1} (epoch {epoch}): loss part {bad[0]!r} is "
                    f"{values[names.index(bad[0])]} (parts: {dict(zip(names, values))}); pass nonfinite='skip' to "
                    "skip such steps"
                )
            return StepOutput(
                self._steps,
                math.nan,
                dict(zip(names, values)),
                self.part_momenta(),
                self._gsnr_dict(),
                int(self.mask_state.k),
                M.PHASE_NAMES[int(self.mask_state.phase)],
                correct,
                True,
            )

        if self._split_state is not None and (self._steps + 1) % self._gsnr_cfg.interval == 0:  # type: ignore[union-attr]
            self._estimate_gsnr(student_logits, teacher_logits, target, epoch, keep)
        self._pending = self._gradients(parts)
        self.step()
        momenta = self.part_momenta()  # the coefficients this step used (GSNR may just have re-allocated them)
        self.mask_state = mask_cfg.observe(self.mask_state, correct, target.numel(), classes)
        return StepOutput(
            step=self._steps,
            loss=float(sum(values)),
            parts=dict(zip(names, values)),
            momenta=momenta,
            gsnr=self._gsnr_dict(),
            k=int(self.mask_state.k),
            phase=M.PHASE_NAMES[int(self.mask_state.phase)],
            correct=correct,
        )

    def _check_epoch(self, epoch: int | None) -> int:
        if epoch is None:
            if getattr(self.recipe.loss, "uses_epoch", True):
                name = getattr(self.recipe.loss, "strategy_name", type(self.recipe.loss).__name__)
                raise InputError(
                    f"the {name!r} loss depends on the epoch (e.g. DKD's warm-up): pass "
                    "distill_step(..., epoch=e) with e counted from 1"
                )
            return 1
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise InputError(f"epoch must be an integer >= 1 (epochs count from 1), got {epoch!r}")
        return epoch

    def _estimate_gsnr(
        self, student: Tensor, teacher: Tensor | None, target: Tensor, epoch: int, keep: Keep | None
    ) -> None:
        """The split estimator: each gradient group's gradient on disjoint parts of the batch, same parameters."""
        cfg = self._gsnr_cfg
        assert cfg is not None and self._split_state is not None
        n = target.shape[0]
        if n < cfg.splits:
            return
        _, flat = self._trainable()
        chunks = torch.arange(n, device=target.device).chunk(cfg.splits)
        grads = []
        for idx in chunks:
            sub_keep = None if keep is None else keep._replace(mask=keep.mask[idx])
            sub_teacher = None if teacher is None else teacher[idx]
            parts = self.recipe.loss.parts(student[idx], sub_teacher, target[idx], epoch=epoch, keep=sub_keep)
            grads.append(decompose(parts, self.plan.groups, flat, mode=self.decomposition, retain_graph=True))
        signal, noise = G.split_sums(grads, [len(i) for i in chunks])
        if self._should_sync():  # every rank must allocate the same coefficients
            sums = torch.stack([signal, noise]).to(flat[0].device if flat else "cpu")
            dist.all_reduce(sums)
            signal, noise = (sums / dist.get_world_size()).double().cpu()
        self._split_state = G.split_update(self._split_state, signal, noise, beta=cfg.decay)

    def _trainable(self) -> tuple[list[list[bool]], list[Tensor]]:
        """Which parameters of each param group take gradients now, and those parameters as one flat list."""
        active = [[bool(p.requires_grad) for p in g["params"]] for g in self.param_groups]
        flat = [p for g, act in zip(self.param_groups, active) for p, a in zip(g["params"], act) if a]
        return active, flat

    def _gradients(self, parts: dict[str, Tensor]) -> tuple[list[list[list[Tensor]]], list[list[bool]]]:
        active, flat = self._trainable()
        grads = decompose(parts, self.plan.groups, flat, mode=self.decomposition)
        if self._should_sync():
            for group_grads in grads:
                _all_reduce_mean(group_grads)
        # split [plan group][flat param] into [param group][plan group][param]
        out: list[list[list[Tensor]]] = []
        start = 0
        for act in active:
            n = sum(act)
            out.append([g[start : start + n] for g in grads])
            start += n
        return out, active

    def _should_sync(self) -> bool:
        if self.sync_grads is not None:
            return self.sync_grads
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        """Apply the gradients computed by :meth:`distill_step` (which calls this); not for direct use."""
        if self._pending is None:
            raise DeepKDError(
                "DistillOptimizer.step() applies the gradients of distill_step(); call "
                "opt.distill_step(student_logits, teacher_logits, target, epoch=e) instead of loss.backward() "
                "followed by opt.step()"
            )
        grads, active = self._pending
        self._pending = None
        if self._gsnr_states:
            beta = self._gsnr_cfg.decay  # type: ignore[union-attr]
            for i, (gstate, act) in enumerate(zip(self._gsnr_states, active)):
                if all(act):
                    self._gsnr_states[i] = G.update(gstate, grads[i], beta=beta)
                else:
                    full = [
                        [_fill(g, p) for g, p in zip(_expand(gs, act), self.param_groups[i]["params"])]
                        for gs in grads[i]
                    ]
                    self._gsnr_states[i] = G.update(gstate, full, beta=beta)
        self._steps += 1
        if self.plan.gsnr is not None and self._steps % self.plan.gsnr.interval == 0:
            self.last_gsnr = self.gsnr()
            if self.last_gsnr is not None:
                self.offsets = self.plan.gsnr.allocate(self.last_gsnr)
        for i, group in enumerate(self.param_groups):
            act = active[i]
            params = [p for p, a in zip(group["params"], act) if a]
            state = self._momentum_states[i]
            sub = (
                state
                if all(act)
                else state._replace(buffers=tuple(tuple(b for b, a in zip(bufs, act) if a) for bufs in state.buffers))
            )
            foreach = self.foreach if self.foreach is not None else bool(params and params[0].is_cuda)
            coeffs = self.coefficients(i)
            kwargs = dict(
                lr=group["lr"],
                dampening=group["dampening"],
                weight_decay=group["weight_decay"],
                nesterov=group["nesterov"],
                foreach=foreach,
            )
            if self.plan.quirks:
                new = MO.update_reference_quirks(sub, params, grads[i], coeffs, **kwargs)
            else:
                new = MO.update(sub, params, grads[i], coeffs, decay_group=self.plan.decay_group, **kwargs)
            self._momentum_states[i] = state._replace(step=new.step)

    # ------------------------------------------------------------------ read-outs
    def gsnr(self) -> Tensor | None:
        """The current GSNR estimate of each gradient group over all parameters (float64), or ``None``."""
        if self._split_state is not None:
            return G.split_ratios(self._split_state, beta=self._gsnr_cfg.decay)  # type: ignore[union-attr]
        if not self._gsnr_states:
            return None
        beta = self._gsnr_cfg.decay  # type: ignore[union-attr]
        sums = [G.sums(s, beta=beta) for s in self._gsnr_states]
        return G.ratio(sum(s for s, _ in sums), sum(n for _, n in sums))  # type: ignore[arg-type]

    def _gsnr_dict(self) -> dict[str, float] | None:
        if not self._gsnr_states and self._split_state is None:
            return None
        r = self.gsnr() if self.plan.gsnr is None else self.last_gsnr
        if r is None:
            return {"+".join(g): math.nan for g in self.plan.groups}
        return {"+".join(g): float(x) for g, x in zip(self.plan.groups, r.tolist())}

    @property
    def momentum_states(self) -> tuple[MO.MomentumState, ...]:
        return tuple(self._momentum_states)

    @property
    def steps(self) -> int:
        return self._steps

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["deepkd"] = {
            "recipe": unstructure(self.recipe),
            "steps": self._steps,
            "offsets": list(self.offsets),
            "momentum": [_plain(s) for s in self._momentum_states],
            "gsnr": [_plain(s) for s in self._gsnr_states],
            "gsnr_split": None if self._split_state is None else _plain(self._split_state),
            "last_gsnr": self.last_gsnr,
            "mask": None if self.mask_state is None else _plain(self.mask_state),
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ours = state_dict.get("deepkd") if isinstance(state_dict, dict) else None
        if not isinstance(ours, dict):
            raise CheckpointError("this optimizer state was not saved by a deepkd DistillOptimizer (no 'deepkd' entry)")
        mine = unstructure(self.recipe)
        saved = ours.get("recipe")
        if not isinstance(saved, dict) or not same_method(saved, mine):
            raise CheckpointError(
                f"the optimizer state belongs to another recipe: saved {saved}, this optimizer runs {mine}"
            )
        try:
            momentum = [MO.MomentumState(**s) for s in ours["momentum"]]
            gsnr = [G.GSNRState(**s) for s in ours["gsnr"]]
            split = None if ours["gsnr_split"] is None else G.SplitState(**ours["gsnr_split"])
            mask = None if ours["mask"] is None else M.MaskState(**ours["mask"])
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"the optimizer state is incomplete or malformed: {exc}") from None
        if len(momentum) != len(self._momentum_states) or len(gsnr) != len(self._gsnr_states):
            raise CheckpointError(
                f"the optimizer state has {len(momentum)} param groups; this optimizer has {len(self.param_groups)}"
            )
        for old, new in zip(self._momentum_states, momentum):
            _check_shapes(old, new, "momentum buffer")
        for old_g, new_g in zip(self._gsnr_states, gsnr):
            _check_shapes(old_g, new_g, "GSNR state")
        if (split is None) != (self._split_state is None) or (
            split is not None and self._split_state is not None and split.signal.shape != self._split_state.signal.shape
        ):
            raise CheckpointError("the saved GSNR estimator state does not match this optimizer's GSNR estimator")
        try:
            super().load_state_dict({"state": {}, "param_groups": state_dict["param_groups"]})
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"the optimizer state does not match these parameters: {exc}") from None
        device = lambda s: s.step.device
        self._momentum_states = [_to(new, device(old)) for old, new in zip(self._momentum_states, momentum)]
        self._gsnr_states = [_to(new, device(old)) for old, new in zip(self._gsnr_states, gsnr)]
        self._split_state = split
        self.mask_state = mask
        self._steps = int(ours["steps"])
        self.offsets = tuple(float(o) for o in ours["offsets"])
        self.last_gsnr = ours["last_gsnr"]
        self._pending = None


def _expand(grads: Sequence[Tensor], active: Sequence[bool]) -> list[Tensor | None]:
    it = iter(grads)
    return [next(it) if a else None for a in active]


def _fill(g: Tensor | None, p: Tensor) -> Tensor:
    return g if g is not None else torch.zeros_like(p)


def _all_reduce_mean(tensors: list[Tensor]) -> None:
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def _plain(state: Any) -> dict[str, Any]:
    return dict(state._asdict())


def _flat_tensors(obj: Any) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for x in obj for t in _flat_tensors(x)]
    return []


def _check_shapes(old: Any, new: Any, what: str) -> None:
    a, b = _flat_tensors(tuple(old)), _flat_tensors(tuple(new))
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise CheckpointError(f"the saved {what} shapes do not match this model's parameters")


def _to(state: Any, device: torch.device) -> Any:
    def move(x: Any) -> Any:
        if isinstance(x, Tensor):
            return x.to(device)
        if isinstance(x, tuple):
            return tuple(move(y) for y in x)
        return x

    return type(state)(*(move(x) for x in state))
