"""The errors modtrans raises on purpose about a job, which the CLI reports in one line."""

from __future__ import annotations

import signal
import threading
from typing import Any


class NonFiniteError(ValueError):
    """A NaN or infinite value met where numbers enter or leave (a store, a loss, weights);
    nothing non-finite was saved."""


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM stopped a job after what it had done was written; ``--resume``
    continues it."""


class StopOnSignal:
    """While active, SIGINT and SIGTERM ask a job to stop at its next safe point instead of
    killing it mid-write: ``received`` names the signal once one came; a second one acts at
    once. Outside the main thread (where handlers cannot be set) it does nothing."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._handlers: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._handlers[signum] = signal.signal(signum, self._stop)
        return self

    def _stop(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name
        signal.signal(signum, self._handlers[signum])

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers.clear()
