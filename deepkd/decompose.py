r"""Gradient decomposition: one gradient per group of loss parts, with one vector–Jacobian product per group.

Given named loss parts (``task``, ``tckd``, ``nckd``) built on the same forward pass and a grouping of them, returns
:math:`\nabla_\theta \sum_{p \in G} \mathcal L_p` for every group :math:`G`. By linearity the group gradients add up
to the gradient of the total loss. ``.grad`` is never read or written.

Two paths, tested equal:

- ``sequential``: one :func:`torch.autograd.grad` call per group, the graph retained between calls.
- ``batched``: a single call with ``is_grads_batched=True``: the group losses are stacked and the backward pass is
  vectorised (vmap) over one-hot output gradients. It is not faster: measured on an H200 it was 1.18× slower than
  sequential products on the CIFAR pair at batch 64, 1.05× at batch 256 and at parity on a ResNet18 at 224²
  (``docs/benchmarks.md``); where launches cost, capture the step instead (:mod:`deepkd.capture`). Some operators
  have no batching rule, in which case ``batched`` fails with PyTorch's error.

A loss whose gradients with respect to the logits are known in closed form takes :func:`decompose_logits` instead:
one product of the network per group and no backward pass through the loss.

>>> import torch
>>> w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
>>> parts = {"a": (w**2).sum(), "b": 3 * w.sum()}
>>> [g[0].tolist() for g in decompose(parts, (("a",), ("b",)), [w])]
[[2.0, 4.0], [3.0, 3.0]]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:
    from deepkd.types import Keep, LossStrategy

__all__ = [
    "GradientBuffer",
    "Mode",
    "by_param_group",
    "decompose",
    "decompose_logits",
    "decompose_splits",
    "group_losses",
    "no_split",
    "on_samples",
    "trainable",
    "zero_filled",
]

Mode = Literal["sequential", "batched"]


def group_losses(parts: Mapping[str, Tensor], groups: Sequence[Sequence[str]]) -> list[Tensor]:
    """The summed loss of each group (parts missing from ``parts`` are an error)."""
    out = []
    for group in groups:
        missing = [name for name in group if name not in parts]
        if missing:
            raise KeyError(f"loss parts {missing} are missing; the loss produced {sorted(parts)}")
        total = parts[group[0]]
        for name in group[1:]:
            total = total + parts[name]
        out.append(total)
    return out


def decompose(
    parts: Mapping[str, Tensor],
    groups: Sequence[Sequence[str]],
    params: Sequence[Tensor],
    *,
    mode: Mode = "sequential",
    retain_graph: bool = False,
) -> list[list[Tensor]]:
    """Return ``grads[group][param]``, the gradient of each group's summed loss w.r.t. each parameter.

    Parameters the loss does not reach get zeros. ``retain_graph`` keeps the graph alive after the last product.
    """
    params = list(params)
    losses = group_losses(parts, groups)
    if not params:
        return [[] for _ in losses]
    if mode == "sequential":
        grads = []
        for i, loss in enumerate(losses):
            keep = retain_graph or i < len(losses) - 1
            g = torch.autograd.grad(loss, params, retain_graph=keep, allow_unused=True)
            grads.append([torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, params)])
        return grads
    if mode == "batched":
        if len(losses) == 1:
            return decompose(parts, groups, params, mode="sequential", retain_graph=retain_graph)
        stacked = torch.stack(losses)
        eye = torch.eye(len(losses), dtype=stacked.dtype, device=stacked.device)
        g = torch.autograd.grad(
            stacked, params, grad_outputs=eye, retain_graph=retain_graph, allow_unused=True, is_grads_batched=True
        )
        per_param = [
            torch.zeros((len(losses), *p.shape), dtype=p.dtype, device=p.device) if gi is None else gi
            for gi, p in zip(g, params)
        ]
        return [[gp[i] for gp in per_param] for i in range(len(losses))]
    raise ValueError(f"mode must be 'sequential' or 'batched', got {mode!r}")


def decompose_logits(
    logits: Tensor,
    grads: Sequence[Tensor],
    params: Sequence[Tensor],
    *,
    mode: Mode = "sequential",
    retain_graph: bool = False,
) -> list[list[Tensor]]:
    """:func:`decompose` for losses whose gradients with respect to the ``logits`` are known (``grads[group]``,
    ``[B, C]``, see :meth:`deepkd.losses.KD.parts_and_grads`): one vector–Jacobian product of the network per
    group, ``torch.autograd.grad(logits, params, grad_outputs=grads[group])``, and no backward pass through the
    loss. ``batched`` takes every group's product in one vectorised call."""
    params = list(params)
    outputs = [g.to(logits.dtype) for g in grads]
    if not params:
        return [[] for _ in outputs]
    if mode == "batched" and len(outputs) > 1:
        g = torch.autograd.grad(
            logits, params, grad_outputs=torch.stack(outputs), retain_graph=retain_graph, allow_unused=True,
            is_grads_batched=True,
        )  # fmt: skip
        per_param = [
            torch.zeros((len(outputs), *p.shape), dtype=p.dtype, device=p.device) if gi is None else gi
            for gi, p in zip(g, params)
        ]
        return [[gp[i] for gp in per_param] for i in range(len(outputs))]
    if mode not in ("sequential", "batched"):
        raise ValueError(f"mode must be 'sequential' or 'batched', got {mode!r}")
    out = []
    for i, grad in enumerate(outputs):
        keep = retain_graph or i < len(outputs) - 1
        g = torch.autograd.grad(logits, params, grad_outputs=grad, retain_graph=keep, allow_unused=True)
        out.append([torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, params)])
    return out


def decompose_splits(
    parts_of: Callable[[Tensor], Mapping[str, Tensor]],
    batch: int,
    splits: int,
    groups: Sequence[Sequence[str]],
    params: Sequence[Tensor],
    *,
    mode: Mode = "sequential",
    device: torch.device | str = "cpu",
) -> tuple[list[list[list[Tensor]]], list[int]] | None:
    """Each group's gradient on ``splits`` disjoint, contiguous parts of a batch of ``batch`` samples.

    ``parts_of(index)`` builds the loss parts of the samples ``index`` (on ``device``) from the batch's forward pass,
    whose graph is kept for the step's own gradients. Returns ``(grads[part][group][param], part sizes)``, or
    ``None`` when the batch has fewer than ``splits`` samples.
    """
    if batch < splits:
        return None
    chunks = torch.arange(batch, device=device).chunk(splits)
    grads = [decompose(parts_of(idx), groups, params, mode=mode, retain_graph=True) for idx in chunks]
    return grads, [len(idx) for idx in chunks]


def no_split(splits: int) -> None:
    """What a rule's ``ctx.split_gradients`` is after the step's gradients are taken, when the batch's graph is
    gone: an error."""
    from deepkd.errors import DeepKDError

    raise DeepKDError("split gradients are available while probing, before the step's gradients are taken")


def on_samples(
    loss: LossStrategy, student: Tensor, teacher: Tensor | None, target: Tensor, epoch: int, keep: Keep | None
) -> Callable[[Tensor], dict[str, Tensor]]:
    """``parts_of(index)``: ``loss``'s parts on the samples ``index`` of a batch (for gradients on batch splits)."""

    def parts_of(idx: Tensor) -> dict[str, Tensor]:
        sub_keep = None if keep is None else keep._replace(mask=keep.mask[idx])
        sub_teacher = None if teacher is None else teacher[idx]
        return loss.parts(student[idx], sub_teacher, target[idx], epoch=epoch, keep=sub_keep)

    return parts_of


def by_param_group(grads: Sequence[Sequence[Tensor]], active: Sequence[Sequence[bool]]) -> list[list[list[Tensor]]]:
    """Cut ``grads[group][param]`` over the trainable parameters of all param groups into
    ``[param group][group][param]``; ``active[i]`` says which parameters of param group ``i`` are trainable."""
    out, start = [], 0
    for act in active:
        n = sum(act)
        out.append([list(g[start : start + n]) for g in grads])
        start += n
    return out


def trainable(param_groups: Sequence[Mapping[str, Any]]) -> tuple[list[list[bool]], list[Tensor]]:
    """Which parameters of each param group take gradients now, and those parameters as one flat list."""
    active = [[bool(p.requires_grad) for p in g["params"]] for g in param_groups]
    flat = [p for g, act in zip(param_groups, active) for p, a in zip(g["params"], act) if a]
    return active, flat


def zero_filled(
    grads: Sequence[Sequence[Tensor]], active: Sequence[bool], params: Sequence[Tensor]
) -> list[list[Tensor]]:
    """One param group's ``grads[group][trainable param]`` with zeros for its parameters that take no gradient."""
    if all(active):
        return [list(g) for g in grads]
    filled = []
    for group in grads:
        it = iter(group)
        filled.append([next(it) if a else torch.zeros_like(p) for a, p in zip(active, params)])
    return filled


class GradientBuffer:
    """Every gradient group's gradients over the parameters of every param group, held in one ``[groups, numel]``
    tensor that lives for the whole run: per parameter a view that shares the parameter's strides (so the
    ``torch._foreach_*`` kernels keep their fast path), and per param group a ``[groups, numel]`` slice in the
    parameters' memory order (:func:`deepkd.gsnr.memory_positions`).

    :meth:`load` copies a step's gradients in (one multi-tensor copy per group, zeros for parameters that take no
    gradient this step); :meth:`sanitize` zeroes them all on a step the optimizer skips, on the device, without
    reading anything back (``0 · NaN`` is NaN, so a skipped step's gradients must be zeros, not scaled). Parameters
    of mixed dtypes or devices have no common buffer, and by default (``flat=None``) neither have parameters on the
    CPU, where one launch instead of many saves nothing and the copy costs memory traffic: the step's own gradient
    tensors are used (and zeroed one by one on a skipped step) instead.

    >>> w, b = torch.nn.Parameter(torch.ones(2, 3)), torch.nn.Parameter(torch.ones(3))
    >>> buf = GradientBuffer([[w, b]], groups=2, flat=True)
    >>> views = buf.load([[torch.full((2, 3), 2.0), torch.ones(3)], [torch.zeros(2, 3), torch.full((3,), 5.0)]],
    ...                  [[True, True]])
    >>> buf.data.shape, views[0][1][1].tolist()
    (torch.Size([2, 9]), [5.0, 5.0, 5.0])
    >>> _ = buf.sanitize(torch.tensor(True)); float(buf.data.abs().sum())
    0.0
    """

    def __init__(self, param_groups: Sequence[Sequence[Tensor]], groups: int, *, flat: bool | None = None) -> None:
        from deepkd.gsnr import dense_strides

        self.groups = groups
        self.param_groups = [list(ps) for ps in param_groups]
        params = [p for ps in self.param_groups for p in ps]
        uniform = bool(params) and all(p.dtype == params[0].dtype and p.device == params[0].device for p in params)
        if flat is None:  # on a CPU the copy costs memory traffic and saves no launch: use the step's own tensors
            flat = bool(params) and params[0].device.type != "cpu"
        uniform = uniform and flat
        self.data: Tensor | None = None
        self.views: list[list[Tensor]] = []  # [group][param], every param of every param group
        self.flat: list[Tensor] | None = None  # per param group: [groups, numel] slices
        self._cache: dict[tuple[tuple[bool, ...], ...], Any] = {}
        if not uniform:
            return
        total = sum(p.numel() for p in params)
        self.data = torch.zeros(groups, total, dtype=params[0].dtype, device=params[0].device)
        base = self.data.storage_offset()
        for b in range(groups):
            views, start = [], base + b * total
            for p in params:
                views.append(torch.as_strided(self.data, tuple(p.shape), dense_strides(p), start))
                start += p.numel()
            self.views.append(views)
        self.flat, start = [], 0
        for ps in self.param_groups:
            n = sum(p.numel() for p in ps)
            self.flat.append(self.data[:, start : start + n])
            start += n

    def _layout(self, active: Sequence[Sequence[bool]]) -> Any:
        """For one pattern of trainable parameters: the views to copy into, those to zero, and both per param
        group (trainable only, and all with zeros for the others)."""
        key = tuple(tuple(a) for a in active)
        if key not in self._cache:
            flags = [a for act in active for a in act]
            into = [[v for v, a in zip(views, flags) if a] for views in self.views]
            zero = [v for views in self.views for v, a in zip(views, flags) if not a]
            per_group, full, start = [], [], 0
            for act in active:
                n = len(act)
                full.append([views[start : start + n] for views in self.views])
                per_group.append([[v for v, a in zip(views[start : start + n], act) if a] for views in self.views])
                start += n
            self._cache[key] = (into, zero, per_group, full)
        return self._cache[key]

    def load(
        self, grads: Sequence[Sequence[Tensor]], active: Sequence[Sequence[bool]]
    ) -> list[list[list[Tensor]]]:
        """Copy ``grads[group][trainable param]`` in; returns the gradients ``[param group][group][trainable
        param]`` the update reads (views of the buffer, or ``grads`` themselves without one)."""
        if self.data is None:
            return by_param_group([list(g) for g in grads], active)
        into, zero, per_group, _ = self._layout(active)
        for views, g in zip(into, grads):
            if views:
                torch._foreach_copy_(views, list(g))
        if zero:
            torch._foreach_zero_(zero)
        return per_group  # type: ignore[no-any-return]

    def full(
        self, grads: Sequence[Sequence[Sequence[Tensor]]], active: Sequence[Sequence[bool]]
    ) -> list[list[list[Tensor]]]:
        """The gradients of every parameter ``[param group][group][param]``, zeros for those that take none (what
        an offset rule sees); ``grads`` is what :meth:`load` returned."""
        if self.data is None:
            return [zero_filled(g, act, ps) for g, act, ps in zip(grads, active, self.param_groups)]
        return self._layout(active)[3]  # type: ignore[no-any-return]

    def sanitize(self, skip: Tensor, grads: Sequence[Sequence[Sequence[Tensor]]] = ()) -> Tensor | None:
        """Zero every gradient where the 0-dim bool ``skip`` is True (on the device); returns the buffer (``None``
        without one, when the tensors in ``grads`` are zeroed one by one instead)."""
        if self.data is not None:
            return self.data.masked_fill_(skip, 0)
        for per_group in grads:
            for group in per_group:
                for g in group:
                    g.masked_fill_(skip, 0)
        return None
