"""A captured training step: one CUDA graph replays the whole step, so the host launches one graph, not hundreds of
kernels.

A small model's step on a fast GPU is *launch-bound*: the GPU finishes each kernel before the host has queued the
next, and the step takes as long as the host needs to launch its few hundred kernels. A CUDA graph records those
launches once and replays them with one call. :class:`CapturedStep` wraps a step function (student forward, teacher
logits, ``distill_step``) whose shapes stay fixed:

>>> import torch, deepkd
>>> student = torch.nn.Linear(8, 5)
>>> opt = deepkd.DistillOptimizer(student.parameters(), deepkd.compose(loss="kd", momentum="dot", mask="none"), lr=0.1)
>>> import warnings; warnings.simplefilter("ignore", CaptureWarning)
>>> step = CapturedStep(lambda x, t, y, epoch: opt.distill_step(student(x), t, y, epoch=epoch), opt)
>>> out = step(torch.randn(16, 8), torch.randn(16, 5), torch.randint(0, 5, (16,)), epoch=1)
>>> step.reason  # on the CPU nothing is captured: every step runs as it is
'CUDA graphs need CUDA tensors; the parameters are on cpu'

What it does, step by step: the first ``warmup`` ordinary steps run eagerly (on a side stream, as graph capture
requires), while it checks that the optimizer changes its state tensors in place; the next ordinary step is captured
and replayed; every later one copies its inputs into the graph's input tensors and replays the graph. The optimizer's
host-side bookkeeping (its step count, the learning rate written into a device tensor) runs around each replay.
Steps a graph of an ordinary step cannot stand in for run eagerly: the first step, the steps where the GSNR
strategy estimates and re-allocates (every ``interval`` steps), a batch of another shape (a smaller last batch), and
an epoch whose loss differs (DKD's warm-up: a new graph is captured for it). The trajectory is the eager one up to
float rounding (the learning rate is multiplied on the device instead of being a kernel argument).

Where capture is impossible the step runs eagerly and :attr:`CapturedStep.reason` says why (also warned once with
:class:`CaptureWarning`): not CUDA, a distributed run, inputs that are not tensors, a strategy that replaces its state
tensors instead of updating them in place, or an operation that cannot be captured (for instance one that reads a
value back to the host), whose error is quoted.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from deepkd.distributed import is_distributed
from deepkd.types import StepOutput

if TYPE_CHECKING:
    from deepkd.optim import DistillOptimizer

__all__ = ["CaptureWarning", "CapturedStep", "state_tensors"]


class CaptureWarning(UserWarning):
    """A step meant to be captured runs eagerly; the message says why."""


def state_tensors(optimizer: DistillOptimizer) -> list[tuple[str, Tensor]]:
    """Every tensor of the optimizer's state that a step reads or writes, with a name for messages: momentum
    buffers, the offset rule's state, the mask state, the gradient buffer and the non-finite record."""
    out: list[tuple[str, Tensor]] = []

    def walk(name: str, obj: Any) -> None:
        if isinstance(obj, Tensor):
            out.append((name, obj))
        elif isinstance(obj, tuple) and hasattr(obj, "_fields"):
            for field, value in zip(obj._fields, obj):
                walk(f"{name}.{field}", value)
        elif isinstance(obj, (tuple, list)):
            for i, value in enumerate(obj):
                walk(f"{name}[{i}]", value)

    walk("momentum", optimizer.momentum_states)
    walk("rule", optimizer.rule_state)
    walk("mask", optimizer.mask_state)
    runtime = optimizer._runtime
    if runtime is not None:
        walk("runtime", tuple(runtime)[1:])
        if runtime.grads.data is not None:
            out.append(("gradients", runtime.grads.data))
    return out


def _pointers(optimizer: DistillOptimizer) -> dict[str, int]:
    return {name: t.data_ptr() for name, t in state_tensors(optimizer)}


class CapturedStep:
    """Run ``fn`` as a CUDA graph where it can be, eagerly where it cannot (see the module docstring).

    Args:
        fn: ``fn(*inputs, epoch=e)``: one training step on tensors ``inputs`` that calls
            ``optimizer.distill_step`` exactly once and returns its :class:`~deepkd.types.StepOutput`, or a tuple
            whose first item is it (the other items must be tensors, e.g. the student's logits).
        optimizer: the :class:`~deepkd.optim.DistillOptimizer` that ``fn`` steps.
        warmup: ordinary eager steps before the first capture (lazy initialisation, cuDNN's algorithm choice).
        enabled: ``False`` runs every step eagerly (``reason`` says so).

    Calling it returns what ``fn`` returns, its tensors detached. After a replay the StepOutput's values are copies;
    the other tensors are the graph's own outputs, overwritten by the next replay (copy what you keep). Attributes:
    ``reason`` (why the steps run eagerly, or ``None``), ``captures`` and ``replays`` (counts).
    """

    def __init__(
        self,
        fn: Callable[..., StepOutput | tuple[Any, ...]],
        optimizer: DistillOptimizer,
        *,
        warmup: int = 3,
        enabled: bool = True,
    ) -> None:
        self.fn, self.optimizer, self.warmup = fn, optimizer, warmup
        self.reason: str | None = None if enabled else "capture is off"
        self.captures = self.replays = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._key: tuple[Hashable, Hashable] | None = None
        self._inputs: list[Tensor] = []
        self._result: Any = None
        self._warm: dict[tuple[Hashable, Hashable], int] = {}
        self._pointers: dict[str, int] | None = None
        self._version = optimizer.state_version
        self._stream: torch.cuda.Stream | None = None
        if enabled:
            self._refuse(self._unsupported())
        if self.reason is None:
            optimizer.capturable = True  # the learning rate lives in a device tensor the graph reads

    def _unsupported(self) -> str | None:
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if not params or not all(p.is_cuda for p in params):
            where = params[0].device if params else "nowhere (no parameters)"
            return f"CUDA graphs need CUDA tensors; the parameters are on {where}"
        if is_distributed():
            return "a distributed run (torchrun) is not captured: its collectives run eagerly"
        return None

    def _refuse(self, reason: str | None) -> None:
        if reason is None or self.reason is not None:
            return
        self.reason = reason
        self._graph, self._result, self._inputs = None, None, []
        if reason != "capture is off":
            warnings.warn(f"deepkd: the training step is not captured ({reason}); it runs eagerly", CaptureWarning,
                          stacklevel=3)  # fmt: skip

    # ------------------------------------------------------------------ one step
    def __call__(self, *inputs: Any, epoch: int) -> Any:
        opt = self.optimizer
        if self.reason is not None:
            return _detached(self.fn(*inputs, epoch=epoch))
        if not all(isinstance(t, Tensor) and t.is_cuda for t in inputs):
            self._refuse("the step's inputs are not all CUDA tensors")
            return _detached(self.fn(*inputs, epoch=epoch))
        if opt.state_version != self._version:  # a loaded state: its tensors are new
            self._version, self._graph, self._pointers, self._warm = opt.state_version, None, None, {}
        key = (tuple((tuple(t.shape), t.dtype) for t in inputs), _epoch_key(opt, epoch))
        if opt.special_step():
            return self._eager(inputs, epoch, key, count=False)
        if self._graph is not None and key == self._key:
            return self._replay(inputs, epoch)
        if self._graph is not None and self._key is not None and key[0] != self._key[0]:  # another shape
            return self._eager(inputs, epoch, key, count=False)
        if self._warm.get(key, 0) < self.warmup and self.captures == 0:
            return self._eager(inputs, epoch, key, count=True)
        return self._capture(inputs, epoch, key)

    def _eager(self, inputs: Sequence[Tensor], epoch: int, key: tuple[Hashable, Hashable], *, count: bool) -> Any:
        """One step run as it is, then a check that the optimizer kept its state tensors where they were. Until the
        first capture every step runs on a side stream, as graph capture requires of the steps before it (lazy
        initialisation off the default stream)."""
        if self.captures:
            result = self.fn(*inputs, epoch=epoch)
        else:
            stream = self._stream = self._stream or torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                result = self.fn(*inputs, epoch=epoch)
            torch.cuda.current_stream().wait_stream(stream)
        if count:
            self._warm[key] = self._warm.get(key, 0) + 1
        self._check_pointers()
        return _detached(result)

    def _check_pointers(self) -> None:
        now = _pointers(self.optimizer)
        before, self._pointers = self._pointers, now
        if before is None:
            return
        moved = [name for name, ptr in now.items() if before.get(name, ptr) != ptr]
        if moved:
            self._refuse(
                f"the optimizer's state tensor {moved[0]} was replaced by a step instead of updated in place (a "
                "strategy's state must change in place for a graph to replay it)"
            )

    def _capture(self, inputs: Sequence[Tensor], epoch: int, key: tuple[Hashable, Hashable]) -> Any:
        opt = self.optimizer
        host = _host_state(opt)
        statics = [t.clone() for t in inputs]
        self._graph, self._result, self._inputs = None, None, []  # an earlier graph (another epoch key) goes first
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                result = _detached(self.fn(*statics, epoch=epoch))
        except Exception as exc:  # an operation that cannot be captured: undo the host's bookkeeping, run eagerly
            _restore_host_state(opt, host)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self._refuse(f"capturing it failed: {first}")
            torch.cuda.synchronize()
            return _detached(self.fn(*inputs, epoch=epoch))
        self._graph, self._key, self._inputs, self._result = graph, key, statics, result
        self.captures += 1
        graph.replay()  # capturing recorded the step; this runs it
        return _with_output(result, _copy(_out_of(result)))

    def _replay(self, inputs: Sequence[Tensor], epoch: int) -> Any:
        assert self._graph is not None
        for static, new in zip(self._inputs, inputs):
            static.copy_(new, non_blocking=True)
        self.optimizer.begin_replay(epoch)
        self._graph.replay()
        self.replays += 1
        captured = _out_of(self._result)
        out = self.optimizer.replayed(captured.tensor.clone(), _clone(captured.correct))
        return _with_output(self._result, out)


def _detached(result: Any) -> Any:
    """``fn``'s result with its tensors detached: a reference to a step's autograd graph that outlives the step (the
    logits, say) keeps its gradient accumulators alive on the stream they were made on, and a later capture of the
    backward then waits across streams, which ends the capture."""
    if isinstance(result, tuple):
        return tuple(r.detach() if isinstance(r, Tensor) else r for r in result)
    return result


def _with_output(result: Any, out: StepOutput) -> Any:
    """``fn``'s result with its StepOutput replaced by ``out``."""
    return out if isinstance(result, StepOutput) else (out, *result[1:])


def _copy(out: StepOutput) -> StepOutput:
    """``out`` with its values copied out of the graph's memory."""
    return StepOutput(step=out.step, tensor=out.tensor.clone(), reader=out._reader, correct=_clone(out.correct))


def _out_of(result: Any) -> StepOutput:
    out = result if isinstance(result, StepOutput) else result[0]
    if not isinstance(out, StepOutput):
        raise TypeError(f"a captured step function must return a StepOutput or a tuple starting with one, got {out!r}")
    return out


def _clone(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clone()


def _epoch_key(optimizer: DistillOptimizer, epoch: int) -> Hashable:
    """What of the epoch the loss's parts depend on: a graph captured at one epoch serves every epoch with the same
    key. A loss may say with ``epoch_key(epoch)`` (DKD: its warm-up factor); otherwise the epoch itself when the
    loss depends on it, else nothing."""
    loss = optimizer.recipe.loss
    own = getattr(loss, "epoch_key", None)
    if own is not None:
        return own(epoch)  # type: ignore[no-any-return]
    return epoch if getattr(loss, "uses_epoch", True) else None


def _host_state(optimizer: DistillOptimizer) -> dict[str, Any]:
    names = ("steps", "momentum_states", "rule_state", "mask_state", "offsets", "_epochs", "_labels_checked", "_hits")
    return {name: (list(value) if isinstance(value := getattr(optimizer, name), list) else value) for name in names}


def _restore_host_state(optimizer: DistillOptimizer, state: dict[str, Any]) -> None:
    for name, value in state.items():
        setattr(optimizer, name, value)
