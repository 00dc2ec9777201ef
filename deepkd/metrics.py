"""What a run measures: top-k hits, the test metrics of :func:`evaluate`, the per-epoch training summary, and the
:class:`History` of epoch records.

Accuracies count hits over samples (never means of per-batch means), so the batch size does not change them;
losses are sample-weighted means. Top-5 is top-``min(5, classes)`` when there are fewer classes.

>>> logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
>>> topk_hits(logits, torch.tensor([1, 1, 1])).tolist()
[2, 3]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from deepkd.data.base import unpack
from deepkd.distributed import is_distributed, sum_over_ranks
from deepkd.errors import DataError, InputError
from deepkd.inputs import validate_logits
from deepkd.models import extract_logits
from deepkd.progress import Progress
from deepkd.train_config import autocast

if TYPE_CHECKING:
    from deepkd.types import StepOutput

__all__ = ["EpochMeter", "History", "evaluate", "topk_hits"]


@attrs.define
class History:
    """Per-epoch records of a run (the ``"kind": "epoch"`` lines of ``metrics.jsonl``).

    ``history["test_top1"]`` lists one metric over epochs; ``best_top1``/``best_epoch`` and ``final_top1`` give the
    test top-1 that papers report (best over epochs) and the last one. ``interrupted`` is set when a stop signal
    ended the run early (its checkpoint was saved; see :mod:`deepkd.preemption`), and ``stopped_by`` names it.
    """

    epochs: list[dict[str, Any]] = attrs.Factory(list)
    interrupted: bool = attrs.field(default=False, eq=False)
    stopped_by: str | None = attrs.field(default=None, eq=False)  # the stop signal's name ("SIGINT"...)

    def __len__(self) -> int:
        return len(self.epochs)

    def __getitem__(self, key: str) -> list[Any]:
        return [record.get(key) for record in self.epochs]

    def _tested(self) -> list[tuple[float, int]]:
        return [(r["test_top1"], r["epoch"]) for r in self.epochs if _finite(r.get("test_top1"))]

    @property
    def best_top1(self) -> float | None:
        """The best test top-1 so far (the first epoch reaching it on ties), or ``None`` before any evaluation."""
        tested = self._tested()
        return max(tested, key=lambda a: (a[0], -a[1]))[0] if tested else None

    @property
    def best_epoch(self) -> int | None:
        tested = self._tested()
        return max(tested, key=lambda a: (a[0], -a[1]))[1] if tested else None

    @property
    def final_top1(self) -> float | None:
        return self.epochs[-1].get("test_top1") if self.epochs else None

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": [dict(r) for r in self.epochs]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> History:
        return cls([dict(r) for r in data["epochs"]])


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def topk_hits(logits: Tensor, target: Tensor) -> Tensor:
    """Top-1 and top-5 hit counts of a batch (top-min(5, C) when there are fewer classes), as a 2-vector."""
    top = logits.detach().topk(min(5, logits.shape[1]), dim=1).indices
    match = top == target[:, None]
    return torch.stack([match[:, 0].sum(), match.any(dim=1).sum()])


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    name: str = "eval_loader",
    over_ranks: bool = False,
    progress: bool | None = False,
) -> dict[str, float]:
    """Test loss (mean cross-entropy), top-1 and top-5 accuracy of ``model`` over ``loader``, in eval mode.

    ``over_ranks=True`` on a distributed run sums the loss, hits and sample counts of every rank's ``loader`` (a
    shard of the test set each, e.g. :class:`~deepkd.data.ShardSampler`) before dividing, so the metrics are those of
    the whole test set, exactly, whatever the shards' sizes (collective: every rank must call it).

    ``progress`` shows the pass (:class:`~deepkd.progress.Progress`; ``None``: a bar on a terminal, a line every few
    seconds elsewhere). The model's train/eval mode is restored afterwards. Raises :class:`InputError` for labels
    outside ``[0, classes)`` and :class:`DataError` for an empty loader.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=device)
    hits = torch.zeros(2, dtype=torch.int64, device=device)
    seen = 0
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    shown = Progress(total, f"evaluating ({name})", enabled=progress)
    try:
        for batch in loader:
            x, y, _ = unpack(batch, device)
            with autocast(device, precision):
                logits = extract_logits(model(x)).float()
            try:
                validate_logits(logits, None, y)
            except InputError as exc:
                raise InputError(f"{name}: {exc}") from None
            loss += F.cross_entropy(logits, y, reduction="sum").double()
            hits += topk_hits(logits, y)
            seen += len(y)
            shown.update()
    finally:
        shown.close()
        model.train(was_training)
    totals = torch.stack([loss, *hits.double(), torch.tensor(float(seen), dtype=torch.float64, device=device)])
    if over_ranks:
        totals = sum_over_ranks(totals)
    loss_sum, top1_hits, top5_hits, count = totals.tolist()
    if count == 0:
        raise DataError(f"the {name} is empty: it yields no samples")
    return {"test_loss": loss_sum / count, "test_top1": top1_hits / count, "test_top5": top5_hits / count}


class EpochMeter:
    """Sample-weighted means of the loss parts and the train top-1/top-5 of one epoch, and the last step's
    read-outs (momenta, GSNR, K, phase). Skipped non-finite steps are counted, not averaged.

    The sums stay on the device and are read once, by :meth:`summary` (or a mid-epoch :meth:`state_dict`), so
    metering a step never waits for the device. On a distributed run :meth:`summary` sums the parts, hits and
    samples of every rank (collective), so the means are those of the global batch."""

    def __init__(self, device: torch.device, part_names: Sequence[str] = ()) -> None:
        self.names = list(part_names)
        # [Σ n·part..., top-1 hits, top-5 hits, samples, skipped steps], float64 on the device
        self.sums = torch.zeros(len(self.names) + 4, dtype=torch.float64, device=device)
        self.last: StepOutput | None = None

    def update(self, out: StepOutput, logits: Tensor, target: Tensor) -> None:
        """Add one step's values (``out.tensor`` starts with the step's loss parts and ends with its skipped flag);
        nothing is read back."""
        self.last = out
        values = out.tensor
        applied = values[-1] == 0
        weight = torch.where(applied, float(len(target)), 0.0)
        losses = torch.where(applied, values[: len(self.names)], 0.0) * weight
        hits = topk_hits(logits, target).double() * applied
        self.sums += torch.cat([losses, hits, weight.view(1), (~applied).double().view(1)])

    def _read(self, over_ranks: bool = False) -> tuple[dict[str, float], list[float], int, int]:
        sums = sum_over_ranks(self.sums) if over_ranks and is_distributed() else self.sums
        values = sums.tolist()
        k = len(self.names)
        parts = dict(zip(self.names, values[:k]))
        parts["total"] = sum(values[:k])
        return parts, values[k : k + 2], int(values[k + 2]), int(values[k + 3])

    def state_dict(self) -> dict[str, Any]:
        """The sums so far, as plain data (for mid-epoch checkpoints)."""
        parts, hits, samples, skipped = self._read()
        return {"parts": parts, "hits": [int(h) for h in hits], "samples": samples, "skipped": skipped}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""
        parts = {str(k): float(v) for k, v in state["parts"].items()}
        values = [parts.get(name, 0.0) for name in self.names]
        values += [float(h) for h in state["hits"]] + [float(state["samples"]), float(state["skipped"])]
        self.sums.copy_(torch.tensor(values, dtype=torch.float64))

    def summary(self) -> dict[str, Any]:
        """The training half of an epoch record (NaN means when every step was skipped).

        Raises:
            DataError: no step was taken (the train_loader yielded no batches).
        """
        last = self.last
        if last is None:
            raise DataError("the train_loader yielded no batches this epoch")
        sums, hits, samples, skipped = self._read(over_ranks=True)
        n = samples or math.nan
        top1_hits, top5_hits = hits
        parts = {name: s / n for name, s in sums.items()} if samples else {"total": math.nan}
        return {
            "loss": parts,
            "train_top1": top1_hits / n,
            "train_top5": top5_hits / n,
            "momentum": dict(last.momenta),
            "gsnr": None if last.gsnr is None else dict(last.gsnr),
            "k": last.k,
            "phase": last.phase,
            "skipped": int(skipped),
        }
