"""A worker process: trains the configurations the runner sends it, and nothing else.

Protocol (tuples over a ``multiprocessing`` pipe). Runner -> worker: first ``("data",
SharedData)``, then ``("run", job_id, params,
seed, epochs, dtype, sync_from)``, ``("ack", job_id, epoch)``, ``("stop", job_id)``,
``("exit",)``. Worker -> runner: ``("ready", pid)``, ``("epochs", job_id, [metrics, ...])``
with the epochs finished since the last such message (at most ``SEND_EVERY`` seconds apart:
one message per millisecond-short epoch would cost more than the epoch), then ``("done",
job_id, outcome)`` or ``("error", job_id, type, message, traceback)``. A ``stop`` for a job
that has not started yet (the runner's next one, which it no longer wants run: its timeout
passed) cancels it: it is answered with ``("skipped", job_id)`` instead of being trained.
The worker does not wait for the runner's answer to an epoch report, except that from epoch
``sync_from`` on (where the pruner may act; ``None``: never) it stays at most one epoch or
``LAG_SECONDS`` of training, whichever is more, ahead of the acknowledged epochs: a pruned trial
trains at most that much past its pruning point, and a trial of small epochs (digits: well under
a millisecond each) never waits for a round trip per epoch.
Workers ignore SIGINT and SIGTERM (the runner decides when they stop) and die with the runner (Linux
``PR_SET_PDEATHSIG``), so a killed runner leaves no orphan training behind.

Fault injection for reliability tests: ``TUNER_INJECT_FAULT=exception:P`` makes a trial raise
inside the worker with probability ``P`` (drawn from the trial's seed, so it is reproducible).
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import sys
import time
import traceback
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from tuner.runner.shared import SharedData
from tuner.train import FitResult, fit

LAG_SECONDS = 0.05
SEND_EVERY = 0.01


def outcome(result: FitResult) -> dict[str, Any]:
    """The picklable part of a :class:`FitResult` the runner stores with the trial."""
    return {
        "history": result.history,
        "divergence": result.divergence,
        "stopped_early": result.stopped_early,
        "steps": result.steps,
        "samples_seen": result.samples_seen,
        "wall_time": result.wall_time - result.callback_time,  # training, not reporting
    }


def worker_main(conn: Connection, blas_threads: int = 1) -> None:
    # a Ctrl-C, `timeout` or `kill -TERM -PGID` signals the whole process group: the runner
    # alone decides, and fails and re-queues the trial as interrupted (not as a dead worker)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    from threadpoolctl import threadpool_limits

    threadpool_limits(blas_threads)  # K workers share the cores instead of oversubscribing them
    from tuner import kernels

    kernels.set_threads(blas_threads)
    try:
        first = conn.recv()
    except (EOFError, ConnectionResetError):
        return
    if first[0] != "data":
        return  # "exit" before any work
    data: SharedData = first[1]
    arrays, blocks = data.attach()
    inbox: deque[tuple] = deque()
    cancelled: set[int] = set()  # jobs stopped before they started
    try:
        kernels.warm_up(arrays["X_train"].dtype)
        conn.send(("ready", os.getpid()))
        while True:
            message = inbox.popleft() if inbox else conn.recv()
            if message[0] == "exit":
                break
            if message[0] == "stop":
                cancelled.add(message[1])
            elif message[0] == "run" and (message[1] in cancelled or ("stop", message[1]) in inbox):
                cancelled.discard(message[1])
                conn.send(("skipped", message[1]))
            elif message[0] == "run":
                _run(conn, inbox, arrays, *message[1:])
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the runner is gone
    finally:
        for block in blocks:
            block.close()
    # Asked to exit: skip the interpreter's teardown (half a second with numba loaded, which
    # the runner would wait for); there is nothing left to save but our own output.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _maybe_inject_fault(seed: int) -> None:
    spec = os.environ.get("TUNER_INJECT_FAULT", "")
    kind, _, probability = spec.partition(":")
    if kind == "exception" and random.Random(seed).random() < float(probability or 1.0):
        raise RuntimeError(f"injected fault (TUNER_INJECT_FAULT={spec})")


def _die_with_parent() -> None:
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() == 1:  # the runner died before prctl took effect
        os._exit(1)


def _run(conn: Connection, inbox: deque, arrays: dict, job_id: int, params: dict, seed: int,
         epochs: int, dtype: str, sync_from: int | None) -> None:
    acked = 0  # the runner has decided on epochs up to this one

    def handle(message: tuple) -> bool:
        nonlocal acked
        if message[0] in ("ack", "stop") and message[1] == job_id:
            acked = max(acked, message[2]) if message[0] == "ack" else acked
            return message[0] == "stop"
        if message[0] == "ack":
            return False  # a late answer about an earlier job
        inbox.append(message)  # the next job, a stop for it, or "exit"
        return message[0] == "exit"

    started = sent_at = time.perf_counter()
    waited = 0.0  # blocked on the runner's decisions: not training time
    unsent: list[dict[str, float]] = []

    def send_epochs() -> None:
        nonlocal sent_at
        if unsent:
            conn.send(("epochs", job_id, unsent[:]))
            unsent.clear()
        sent_at = time.perf_counter()

    def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
        nonlocal waited
        unsent.append(metrics)
        now = time.perf_counter()
        # Where the pruner may act, run ahead of its decisions by at most one epoch or
        # LAG_SECONDS of training, whichever is more.
        lag = max(1, int(LAG_SECONDS * epoch / max(now - started - waited, 1e-9)))
        pruner_acts = sync_from is not None and epoch >= sync_from
        if now - sent_at >= SEND_EVERY or (pruner_acts and acked < epoch - lag):
            send_epochs()
        stop = False
        while conn.poll():
            stop = handle(conn.recv()) or stop
        if not stop and pruner_acts and acked < epoch - lag:
            blocked = time.perf_counter()
            while not stop and acked < epoch - lag:
                stop = handle(conn.recv())
            waited += time.perf_counter() - blocked
        return stop

    try:
        _maybe_inject_fault(seed)
        result = fit(params, arrays["X_train"], arrays["y_train"], arrays["X_val"], arrays["y_val"],
                     epochs=epochs, seed=seed, dtype=dtype, on_epoch=on_epoch)
        send_epochs()  # the runner reports every epoch before the trial's end
    except (BrokenPipeError, ConnectionResetError, EOFError):
        raise  # the runner is gone: nobody to report to
    except Exception as exc:  # a bug or a bad value: the runner fails this trial and goes on
        send_epochs()
        conn.send(("error", job_id, type(exc).__name__, str(exc), traceback.format_exc()[-4000:]))
        return
    conn.send(("done", job_id, outcome(result)))
