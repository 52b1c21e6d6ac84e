"""A worker process: trains the configurations the runner sends it, and nothing else.

Protocol (tuples over a ``multiprocessing`` pipe). Runner -> worker: ``("run", job_id, params,
seed, epochs, dtype)``, ``("stop", job_id)``, ``("exit",)``. Worker -> runner: ``("ready",
pid)``, ``("epoch", job_id, metrics)`` after every epoch, then ``("done", job_id, outcome)`` or
``("error", job_id, type, message, traceback)``. The worker never waits for an answer to an
epoch report: a ``stop`` is picked up at the next epoch end, so training runs at full speed.
Workers ignore SIGINT; the runner decides when they stop.
"""

from __future__ import annotations

import os
import signal
import traceback
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from tuner.runner.shared import SharedData
from tuner.train import FitResult, fit


def outcome(result: FitResult) -> dict[str, Any]:
    """The picklable part of a :class:`FitResult` the runner stores with the trial."""
    return {
        "history": result.history,
        "divergence": result.divergence,
        "stopped_early": result.stopped_early,
        "steps": result.steps,
        "samples_seen": result.samples_seen,
        "wall_time": result.wall_time,
    }


def worker_main(conn: Connection, data: SharedData) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    arrays, blocks = data.attach()
    inbox: deque[tuple] = deque()
    conn.send(("ready", os.getpid()))
    try:
        while True:
            try:
                message = inbox.popleft() if inbox else conn.recv()
            except EOFError:
                return  # the runner is gone
            if message[0] == "exit":
                return
            if message[0] == "run":
                _run(conn, inbox, arrays, *message[1:])
    finally:
        for block in blocks:
            block.close()


def _run(conn: Connection, inbox: deque, arrays: dict, job_id: int, params: dict, seed: int,
         epochs: int, dtype: str) -> None:
    def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
        conn.send(("epoch", job_id, metrics))
        stop = False
        while conn.poll():
            message = conn.recv()
            if message[0] == "stop" and message[1] == job_id:
                stop = True
            elif message[0] != "stop":
                inbox.append(message)
                stop = stop or message[0] == "exit"
        return stop

    try:
        result = fit(params, arrays["X_train"], arrays["y_train"], arrays["X_val"], arrays["y_val"],
                     epochs=epochs, seed=seed, dtype=dtype, on_epoch=on_epoch)
    except Exception as exc:  # a bug or a bad value: the runner fails this trial and goes on
        conn.send(("error", job_id, type(exc).__name__, str(exc), traceback.format_exc()[-4000:]))
        return
    conn.send(("done", job_id, outcome(result)))
