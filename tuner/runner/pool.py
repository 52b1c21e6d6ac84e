"""The runner's view of its worker processes: a process handle per worker and the claimed
trials ("jobs") it holds."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import optuna

from tuner.runner.worker import worker_main
from tuner.train import Plan


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or taskset's limit),
    which the worker count and their BLAS threads are sized against."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass
class Job:
    """A claimed trial and where it is in its life."""

    trial: optuna.Trial
    params: dict[str, Any]
    seed: int
    plan: Plan
    started: bool = False
    epoch: int = 0
    prune_at: int | None = None
    lost: bool = False  # another runner failed it as stale: discard its result
    finished: bool = False  # its worker reported the end (done/error); saving it may be pending
    cancelled: bool = False  # not to be run after all (timeout, fail-fast): back to the queue
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def number(self) -> int:
        return self.trial.number

    @property
    def trial_id(self) -> int:
        return self.trial._trial_id


class Worker:
    """One worker process and the (at most two) jobs it holds: running and next."""

    def __init__(self, ctx: Any, index: int, blas_threads: int) -> None:
        """Start the process; it waits for :meth:`send` ``("data", handle)`` (so it can start
        while the runner is still loading the data)."""
        self.index = index
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child, blas_threads),
                                   daemon=True, name=f"tuner-worker-{index}")
        with _main_module_hidden(), _sigint_ignored_by_children():
            self.process.start()
        child.close()
        self.current: Job | None = None
        self.queued: Job | None = None
        self.deferred: list[tuple] = []  # messages held back while a claim is in progress
        self.ready = False

    def jobs(self) -> list[Job]:
        return [j for j in (self.current, self.queued) if j is not None]

    def send(self, *message: Any) -> bool:
        """Send ``message`` to the process; ``False`` if it has died (the runner learns that
        from its sentinel and fails or re-queues its jobs, so a send must never raise)."""
        try:
            self.conn.send(message)
            return True
        except OSError:  # BrokenPipeError, ConnectionResetError, or our end already closed
            return False

    def stop(self, timeout: float = 2.0) -> None:
        if self.process.is_alive() and self.ready:
            self.send("exit")
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1.0)
        self.conn.close()


@contextmanager
def _sigint_ignored_by_children() -> Iterator[None]:
    """A process started inside ignores SIGINT from its first instruction (an ignored signal
    survives exec, and Python keeps it ignored), so a Ctrl-C while it still imports numba prints
    no traceback: the runner stops its workers itself. (Main thread only: the runner's.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start processes without the parent's ``__main__``: a spawned child otherwise imports
    it again (the ``tuner`` script with the whole CLI, or a user's script: 0.3-1 s per worker)
    although a worker needs only :func:`worker_main`'s module."""
    main = sys.modules["__main__"]
    saved = {key: main.__dict__[key] for key in ("__file__", "__spec__") if key in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)
