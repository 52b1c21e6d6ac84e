"""SIGINT and SIGTERM during a run: stop, hurry, or stop at once.

The first signal asks the run to stop: the running trials are failed and re-queued, claimed
ones put back, then the process exits. A second one asks it to hurry: the clean-up writes
nothing more to the database (trials left RUNNING are failed as stale later). A third raises
``KeyboardInterrupt`` wherever the main thread is.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

#: The same signal again within this many seconds is the same signal delivered twice (GNU
#: `timeout` sends it to its child, then to its whole process group), not a second Ctrl-C.
SAME_SIGNAL_S = 1.0
HANDLED = (signal.SIGINT, signal.SIGTERM)


class Signals:
    """Catches SIGINT/SIGTERM while in its ``with`` block (main thread only; elsewhere it
    catches nothing) and records them: :attr:`received` is the first signal's name,
    :attr:`hurry` is set by a second one. ``on_note`` is told what the run will do now."""

    def __init__(self, on_note: Callable[[str], None]) -> None:
        self.received: str | None = None
        self.hurry = False
        self._on_note = on_note
        self._at = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self.received is not None:
            if name == self.received and now - self._at < SAME_SIGNAL_S:
                return  # one signal delivered twice
            if self.hurry:
                raise KeyboardInterrupt  # a third: stop at once, whatever is in progress
            self.hurry = True
            self._on_note(f"{name} again: skipping the clean-up")
            return
        self.received, self._at = name, now
        self._on_note(f"{name} received: failing and re-queueing running trials, then exiting")
