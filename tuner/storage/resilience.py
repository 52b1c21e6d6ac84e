"""Riding out database outages: retry an operation whose connection dropped, with backoff.

A dropped connection (server restart, failover, ``pg_terminate_backend``, an idle connection
cut by a firewall) surfaces as ``OperationalError`` / ``InterfaceError`` from the driver, often
wrapped in Optuna's ``StorageInternalError``. Such an operation is retried with exponential
backoff (0.25 s doubling to 8 s) until it succeeds or the outage has lasted ``max_outage``
seconds; then :class:`~tuner.errors.StorageError` ends the runner with a clear message. Any other
error is raised at once. Only the in-flight operation is retried; callers make it idempotent.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy.exc

from tuner.errors import StorageError
from tuner.storage.urls import describe, scrub

T = TypeVar("T")
log = logging.getLogger("tuner.storage")

SQLITE_BUSY_TEXT = ("database is locked", "database table is locked", "database is busy")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is a lost or busy connection rather than a bug.

    On PostgreSQL an ``OperationalError`` is a connection problem (dropped, refused, server
    restarting). SQLite raises ``OperationalError`` for everything from a missing table to an
    unopenable file; only "database is locked"/"busy" is worth waiting for there."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StorageError):
            return current.transient  # already classified (raised "from None")
        sqlite_error = _sqlite_error(current)
        if sqlite_error is not None:
            return any(t in str(sqlite_error).lower() for t in SQLITE_BUSY_TEXT)
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            return True
        if isinstance(current, sqlalchemy.exc.DisconnectionError | sqlalchemy.exc.TimeoutError):
            return True
        module = type(current).__module__
        if module.startswith("psycopg") and type(current).__name__ in (
                "OperationalError", "InterfaceError", "AdminShutdown", "ConnectionTimeout"):
            return True
        current = current.__cause__ or current.__context__
    return False


def _sqlite_error(exc: BaseException) -> sqlite3.Error | None:
    """The ``sqlite3`` error ``exc`` is or wraps directly (SQLAlchemy keeps it as ``orig``)."""
    if isinstance(exc, sqlite3.Error):
        return exc
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, sqlite3.Error) else None


class Resilient:
    """Runs storage operations, retrying those that fail because the connection dropped.

    One outage clock is shared by every operation (and thread) of a runner: it starts at the
    first failure and is reset by any success, so a persistent outage ends the runner
    ``max_outage`` seconds after it began, however many operations are waiting on it (each
    used to start its own window: 8 s allowed, 42 s taken). After that every operation that
    fails gives up at once; :attr:`gave_up` says it happened."""

    def __init__(self, url: str, *, max_outage: float = 120.0,
                 on_retry: Callable[[str, BaseException, float], None] | None = None,
                 interrupted: Callable[[], bool] | None = None) -> None:
        self.url = url
        self.max_outage = max_outage
        self.on_retry = on_retry
        self.interrupted = interrupted or (lambda: False)
        self.retries = 0
        self.gave_up = False
        self._outage_since: float | None = None
        self._clock_lock = threading.Lock()

    def call(self, what: str, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        delay = 0.25
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                now = time.monotonic()
                with self._clock_lock:
                    if self._outage_since is None:
                        self._outage_since = now
                    waited = now - self._outage_since
                if self.interrupted():
                    raise StorageError(f"gave up waiting for {describe(self.url)} to {what}: "
                                       "interrupted") from None
                if waited >= self.max_outage:
                    self.gave_up = True
                    raise StorageError(
                        f"lost the connection to {describe(self.url)} while trying to {what}, and "
                        f"it did not come back within {self.max_outage:g} s: "
                        f"{first_line(exc, self.url)}",
                        hint="rerun the same command once the database is back") from None
                self.retries += 1
                if self.on_retry is not None:
                    self.on_retry(what, exc, delay)
                log.warning("database unavailable while trying to %s (%s: %s); retrying in %.2g s",
                            what, type(exc).__name__, first_line(exc, self.url), delay)
                pause = min(delay, max(0.0, self.max_outage - waited))
                deadline = time.monotonic() + pause
                while time.monotonic() < deadline and not self.interrupted():
                    time.sleep(min(0.05, pause))
                delay = min(delay * 2, 8.0)
            else:
                with self._clock_lock:
                    self._outage_since = None
                return result


def first_line(exc: BaseException, url: str) -> str:
    """The first line of the error ``exc`` wraps (the driver's, through SQLAlchemy's ``orig``
    and ``raise ... from``; no SQLAlchemy background link), without ``url``'s password or any
    other ``user:password@`` / ``password=``, at most 200 characters: for one-line log messages
    and anything shown to a user."""
    root, seen = exc, {id(exc)}
    while True:
        inner = getattr(root, "orig", None) or root.__cause__
        if not isinstance(inner, BaseException) or id(inner) in seen:
            break
        root = inner
        seen.add(id(root))
    lines = str(root).strip().splitlines()
    return scrub(lines[0] if lines else type(root).__name__, url)[:200]
