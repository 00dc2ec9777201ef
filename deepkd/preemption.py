"""Stop signals: what a run does when it is asked to stop, so that it never loses its work.

While a run with a run directory trains, SIGTERM and SIGUSR1 (what SLURM and most schedulers send before they stop
a job) and SIGINT (Ctrl-C) only set a flag. At the next step boundary every rank learns whether any rank got one
(one tiny all-reduce, so all ranks stop at the same step and none waits forever for the others); the trainer then
has its :class:`~deepkd.callbacks.Checkpointer` write ``latest.pt`` (mid-epoch: resumable exactly, see
:mod:`deepkd.resume`) and ``fit`` returns with ``history.interrupted`` set and ``history.stopped_by`` naming the
signal. A second Ctrl-C stops at once, without a checkpoint (a ``KeyboardInterrupt``). ``deepkd train`` exits with
status 0 after SIGTERM or SIGUSR1 (a scheduler's stop is no failure) and 130 after Ctrl-C, as an interrupted command
does, each after one line on stderr that says how to continue.

This module decides nothing about checkpoints and writes nothing: :meth:`Interrupts.requested` says "stop now".
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from deepkd.distributed import any_rank, is_main_process

__all__ = ["SIGNALS", "Interrupts"]

#: the signals that ask a run to checkpoint and stop (SIGINT is Ctrl-C; a second one stops at once)
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Interrupts:
    """The stop flag of a run: set by :data:`SIGNALS` while :meth:`installed`, agreed on by all ranks in
    :meth:`requested`. Without a run directory to save to (``enabled=False``), the signals are left alone (Ctrl-C
    raises ``KeyboardInterrupt`` as usual)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.received: int | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Catch :data:`SIGNALS` for the duration (main thread only); the previous handlers come back after. A signal
        this process was started ignoring stays ignored (a job started in the background with ``&`` or ``nohup``
        ignores Ctrl-C, as the shell meant)."""
        if not self.enabled or threading.current_thread() is not threading.main_thread():
            yield
            return
        caught = [sig for sig in SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN]
        previous = {sig: signal.signal(sig, self._handle) for sig in caught}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.received is None
        self.received = self.received or signum
        if signum == signal.SIGINT:  # the next Ctrl-C raises KeyboardInterrupt where the run is
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if first and is_main_process():  # os.write: print() may not be re-entered from a signal handler
                os.write(2, b"\ndeepkd: Ctrl-C: stopping after this step and saving a checkpoint "
                            b"(Ctrl-C again stops at once, without one)\n")  # fmt: skip

    @property
    def signal_name(self) -> str | None:
        """The name of the signal this process got (``"SIGINT"``...), or ``None``."""
        return None if self.received is None else signal.Signals(self.received).name

    def requested(self) -> bool:
        """Whether any rank got a stop signal (a collective on distributed runs: every rank must ask at the same
        step boundary)."""
        return self.enabled and any_rank(self.received is not None)
