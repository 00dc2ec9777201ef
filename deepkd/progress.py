"""Progress a person can see, so that no run goes silent: a bar on a terminal, a line every few seconds off one.

Everything a run does that takes long shows progress on stderr, on the main process only: the training steps
(:class:`~deepkd.logs.ProgressBar`), the teacher-logit cache and evaluation (:class:`Progress`), and the start-up
work of ``deepkd train`` (:func:`note`: the data set, the models, the thread count). On a terminal a tqdm bar moves
with every step; off a terminal (a log file, a scheduler's output) a line is printed at most every
:data:`HEARTBEAT` seconds, and never less often while work goes on. ``enabled=False`` (``train.progress = false``)
prints nothing; ``None`` (the default) shows bars only on a terminal and lines elsewhere.

Progress counts what the host already knows (steps taken, batches read, seconds): it never reads a value from the
device, so it never makes a step wait for the GPU.

>>> p = Progress(3, "demo", enabled=False)
>>> for _ in range(3):
...     p.update()
>>> p.done
3
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

from deepkd.distributed import is_main_process

__all__ = ["HEARTBEAT", "Progress", "note", "on_terminal"]

#: the longest silence, in seconds, of a run whose output is not a terminal
HEARTBEAT = 10.0


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (stderr by default) is a terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def note(message: str, enabled: bool | None = None) -> None:
    """Print one line of ``deepkd: message`` on stderr (main process only; nothing when ``enabled`` is False), without
    breaking a progress bar."""
    if enabled is False or not is_main_process():
        return
    tqdm.write(f"deepkd: {message}", file=sys.stderr)
    sys.stderr.flush()


class Progress:
    """``done`` of ``total`` units of work (``total=None``: unknown), shown as a tqdm bar on a terminal, as a line
    every :data:`HEARTBEAT` seconds elsewhere; call :meth:`update` per unit and :meth:`close` at the end.

    Args:
        total: the units of work, or ``None``.
        desc: what the work is (``"epoch 1/3"``, ``"teacher logits"``).
        unit: what a unit is (``"step"``, ``"batch"``).
        enabled: ``False`` shows nothing; ``None`` or ``True`` show it (a bar only on a terminal).
        every: seconds between lines off a terminal (default :data:`HEARTBEAT`, read when the progress starts).
        leave: keep the bar on the terminal when it closes.
        initial: units already done (a resumed epoch).
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "batch",
        *,
        enabled: bool | None = None,
        every: float | None = None,
        leave: bool = False,
        initial: int = 0,
    ) -> None:
        self.total, self.desc, self.unit, self.done, self.initial = total, desc, unit, initial, initial
        self.shown = enabled is not False and is_main_process()
        self.every = HEARTBEAT if every is None else every
        self.start = self.last = time.monotonic()
        self.info: dict[str, Any] = {}
        self.bar: Any = None
        if self.shown and on_terminal():
            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True, file=sys.stderr,
                            initial=initial)  # fmt: skip

    def update(self, n: int = 1, **info: Any) -> None:
        """``n`` more units done; ``info`` (values the host already has, e.g. the last loss read) shown with them."""
        self.done += n
        if info:
            self.info.update(info)
        if not self.shown:
            return
        if self.bar is not None:
            self.bar.update(n)
            if info:
                self.bar.set_postfix(self.info, refresh=False)
            return
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            print(self.line(now), file=sys.stderr, flush=True)

    def line(self, now: float | None = None) -> str:
        """The line printed off a terminal: ``desc  done/total unit  rate  info``."""
        elapsed = (time.monotonic() if now is None else now) - self.start
        of = f"/{self.total}" if self.total is not None else ""
        rate = f"  {(self.done - self.initial) / elapsed:.3g} {self.unit}/s" if elapsed > 0 else ""
        extra = "".join(f"  {k} {v}" for k, v in self.info.items())
        return f"{self.desc}  {self.unit} {self.done}{of}{rate}  {elapsed:.0f}s{extra}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
