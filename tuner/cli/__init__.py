"""The ``tuner`` command line. Every command lives in a module of this package; ``main`` turns
user mistakes (:class:`~tuner.errors.TunerError`) into a one-line message and an exit code."""

from __future__ import annotations

import logging
import os
import sys
import time

from tuner.cli import inspect, run  # noqa: F401, I001  (registers the commands, in help order)
from tuner.cli.app import app, err
from tuner.errors import TunerError


def main() -> None:
    # Optuna 5 stores naive UTC in RDB storages and converts with the local zone: pin UTC so
    # workers, dashboards and schedulers on different hosts agree (reference notes 1.2).
    os.environ["TZ"] = "UTC"
    time.tzset()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except TunerError as exc:
        err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        if exc.hint:
            err.print(f"  [dim]hint:[/] {exc.hint}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
