"""What deepkd checks of the tensors and arguments a training step is handed, before anything runs on them.

Every check raises :class:`~deepkd.errors.InputError` naming the bad value. Only the label range reads tensor values
(on a GPU it waits for the device); the optimizer checks it on the first step of a CUDA run and on every CPU step.

>>> import torch
>>> validate_logits(torch.zeros(4, 3), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
Traceback (most recent call last):
...
deepkd.errors.InputError: teacher/student class count mismatch: teacher logits (4, 2), student logits (4, 3)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from deepkd.errors import InputError
from deepkd.registry import name_of

if TYPE_CHECKING:
    from deepkd.types import LossStrategy

__all__ = ["check_call", "validate_logits"]


def validate_logits(
    student: Tensor, teacher: Tensor | None, target: Tensor | None, *, labels: bool = True, classes: int | None = None
) -> None:
    """Check shapes, class counts (``classes``, when given, is the expected one) and, with ``labels``, the label
    range, raising :class:`InputError` that names the bad value. Only the label range reads tensor values: on a GPU
    it waits for the device, the rest does not."""
    if student.dim() != 2:
        raise InputError(f"student logits must have shape [batch, classes], got {tuple(student.shape)}")
    if not student.is_floating_point():
        raise InputError(f"student logits must be floating point, got {student.dtype}")
    if classes is not None and student.shape[1] != classes:
        raise InputError(
            f"expected logits of {classes} classes (as on the first step), got shape {tuple(student.shape)}"
        )
    batch, classes = student.shape
    if classes < 2:
        raise InputError(f"distillation needs at least 2 classes, got logits of shape {tuple(student.shape)}")
    if teacher is not None and teacher.shape != student.shape:
        what = "class count" if teacher.dim() == 2 and teacher.shape[0] == batch else "shape"
        raise InputError(
            f"teacher/student {what} mismatch: teacher logits {tuple(teacher.shape)}, "
            f"student logits {tuple(student.shape)}"
        )
    if target is not None:
        if target.shape != (batch,):
            raise InputError(f"target must have shape [{batch}], got {tuple(target.shape)}")
        if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise InputError(f"target must hold integer class indices, got dtype {target.dtype}")
        if labels and batch:
            lo, hi = int(target.min()), int(target.max())
            if lo < 0 or hi >= classes:
                bad = lo if lo < 0 else hi
                raise InputError(
                    f"label {bad} is out of range: labels must lie in [0, {classes}) for {classes} classes"
                )


def check_call(loss: LossStrategy, teacher: Tensor | None, epoch: int | None) -> int:
    """The epoch to build ``loss``'s parts with (1 when it does not depend on the epoch and none is given).

    Raises:
        InputError: the loss needs a teacher and ``teacher`` is None; the loss depends on the epoch (DKD's
            warm-up; assumed for a strategy that does not say) and none is given; a bad epoch. The message names the
            loss by its registered name.
    """
    if epoch is None and getattr(loss, "uses_epoch", True):
        raise InputError(
            f"the {name_of(loss)!r} loss depends on the epoch (e.g. DKD's warm-up): pass distill_step(..., epoch=e) "
            "with e counted from 1"
        )
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1):
        raise InputError(f"epoch must be an integer >= 1 (epochs count from 1), got {epoch!r}")
    if teacher is None and loss.needs_teacher:
        raise InputError(f"the {name_of(loss)!r} loss needs teacher logits, got None")
    return 1 if epoch is None else epoch
