"""What several runners need to agree on: trial counts, heartbeats, stale trials, retries and
locks. All of it lives in the study's database, so it works across processes and machines.

- Counts come from one ``GROUP BY`` query (exact, never from a cache).
- Heartbeats of all trials a runner owns are refreshed in one ``UPDATE``.
- A RUNNING trial is *stale* when its heartbeat (or, before its first heartbeat, its start) is
  older than the grace period by the database clock. Stale trials are failed with
  ``fail_reason`` recorded and re-queued with the same parameters (:func:`enqueue_retry`).
- :class:`NamedLock`: an exclusive lock on a name, a PostgreSQL advisory lock (released by the
  server if the holder dies) or, for SQLite, an ``flock`` on a file next to the database.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.dialects import postgresql as postgresql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.orm import selectinload

from tuner.errors import LockHeldError
from tuner.storage.buffered import BufferedStorage, rdb_backend, trial_state, upsert, utcnow

RETRY_KEYS = ("failed_trial", "retry_history", "fixed_params")
ATTR_RETRY_WANTED = "retry_wanted"
ATTR_NO_RETRY = "no_retry"
# system attribute of a retry: failures of its configuration that used the retry budget
ATTR_FAILURES = "tuner.failures"
# user attribute of a FAIL by Ctrl-C / SIGTERM (uses no retry budget)
ATTR_INTERRUPTED = "interrupted"
INTERRUPTED_PREFIX = "interrupted by"


def state_counts(storage: BufferedStorage, study_id: int) -> Counter[TrialState]:
    """Exact number of trials per state, read from the database."""
    model = models.TrialModel
    query = (sqlalchemy.select(model.state, sqlalchemy.func.count())
             .where(model.study_id == study_id).group_by(model.state))
    with storage.backend.engine.connect() as conn:
        rows = conn.execute(query).all()
    counts: Counter[TrialState] = Counter()
    for state, count in rows:
        counts[trial_state(state)] += count
    return counts


def touch_heartbeats(storage: BufferedStorage, trial_ids: list[int]) -> None:
    """Set the heartbeat of ``trial_ids`` to the database's ``now()``, in one statement."""
    if not trial_ids:
        return
    beat = models.TrialHeartbeatModel
    with storage.backend.engine.begin() as conn:
        conn.execute(sqlalchemy.update(beat).where(beat.trial_id.in_(trial_ids))
                     .values(heartbeat=sqlalchemy.func.now()))


def heartbeat_ages(storage: BufferedStorage, study_id: int) -> dict[int, float]:
    """Seconds since each RUNNING trial's last heartbeat (or its start, if it never beat), by
    the database clock: ``{trial_id: age}``."""
    with _create_scoped_session(storage.backend.scoped_session) as session:
        now = session.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
        now = now.replace(tzinfo=None) if isinstance(now, datetime) else datetime.fromisoformat(str(now))
        running = (session.query(models.TrialModel)
                   .options(selectinload(models.TrialModel.heartbeats))
                   .filter(models.TrialModel.study_id == study_id,
                           models.TrialModel.state == TrialState.RUNNING).all())
        ages = {}
        for trial in running:
            last = trial.heartbeats[0].heartbeat if trial.heartbeats else trial._datetime_start_utc
            ages[trial.trial_id] = float("inf") if last is None else (now - last).total_seconds()
        return ages


def stale_trial_ids(storage: BufferedStorage, study_id: int, grace_seconds: float,
                    *, all_running: bool = False) -> list[int]:
    """RUNNING trials whose heartbeat (or start, if they never beat) is older than the grace
    period; every RUNNING trial when ``all_running`` (their owner is known to be gone)."""
    return [trial_id for trial_id, age in heartbeat_ages(storage, study_id).items()
            if all_running or age > grace_seconds]


def retry_decision(trial: FrozenTrial, max_retry: int, *,
                   interrupted: bool | None = None) -> str | None:
    """Why ``trial`` (failed by an infrastructure fault) gets no retry, or ``None`` if it does.

    The retry budget counts the failures of a configuration's chain that were not
    interruptions: a trial failed by Ctrl-C / SIGTERM (``interrupted by ...``) is re-queued
    without using it, so a configuration interrupted three times is not dropped, while a stale
    heartbeat, an orphaned trial or a dead worker each use one of ``max_retry`` retries.
    ``interrupted``: whether ``trial``'s own failure is an interruption, for a trial that is
    being failed (``None``: as its stored FAIL says)."""
    if not trial.params:
        return "no parameters to retry: it failed before its configuration was saved"
    used = _failures_counted(trial, interrupted)
    if used > max_retry:
        return (f"retry limit reached: its configuration failed {used} times "
                f"(max_retry = {max_retry}, interruptions not counted)")
    return None


def is_interruption(reason: str) -> bool:
    """Whether a ``fail_reason`` is a Ctrl-C / SIGTERM interruption (``interrupted by ...``)."""
    return reason.startswith(INTERRUPTED_PREFIX)


def _failures_counted(trial: FrozenTrial, interrupted: bool | None = None) -> int:
    """Budget-using failures of ``trial``'s chain, ``trial``'s own included. ``interrupted``:
    whether ``trial``'s own failure was an interruption; ``None``: as its FAIL recorded it
    (:data:`ATTR_INTERRUPTED`, or for trials failed by an older tuner its ``fail_reason``)."""
    before = trial.system_attrs.get(ATTR_FAILURES)
    if before is None:  # a retry queued by an older tuner (or Optuna): every failure counted
        before = len(trial.system_attrs.get("retry_history", []))
    if interrupted is None:
        interrupted = bool(trial.user_attrs.get(
            ATTR_INTERRUPTED, is_interruption(str(trial.user_attrs.get("fail_reason", "")))))
    return int(before) + (0 if interrupted else 1)


def fail_trial(storage: BufferedStorage, trial_id: int, reason: str, *, retry: bool = False,
               max_retry: int | None = None, interrupted: bool | None = None,
               **attrs: Any) -> bool:
    """Mark a RUNNING trial FAIL with ``fail_reason`` (and ``attrs``) as user attributes, in one
    transaction. Returns ``False`` if it was no longer RUNNING (someone else finished it).
    ``retry``: the caller queues a retry next. Whether it will (``retry_wanted``) or why not
    (``no_retry``: no parameters, or the retry limit) is recorded with the FAIL, so
    :func:`requeue_missing_retries` can queue it if the connection drops in between, and
    `tuner doctor` can say why a configuration was dropped. ``interrupted``: the failure is a
    Ctrl-C / SIGTERM interruption, which uses no retry budget (recorded as
    :data:`ATTR_INTERRUPTED`); ``None``: when ``reason`` says ``interrupted by ...``."""
    if interrupted is None:
        interrupted = is_interruption(reason)
    if interrupted or is_interruption(reason):  # (so that the stored FAIL says what was decided)
        attrs[ATTR_INTERRUPTED] = interrupted
    if retry:
        # (a cached trial may be the cache's own object: read it, never write to it)
        why_not = retry_decision(storage.get_trial(trial_id),
                                 max_retry if max_retry is not None else 10**9,
                                 interrupted=interrupted)
        if why_not is None:
            attrs[ATTR_RETRY_WANTED] = True
        else:
            attrs[ATTR_NO_RETRY] = why_not
    if trial_id in storage.owned_trial_ids():
        for key, value in {"fail_reason": reason, **attrs}.items():
            storage.set_trial_user_attr(trial_id, key, value)
        try:
            return storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            storage.release(trial_id)
            return False
    trials = models.TrialModel.__table__
    with storage.backend.engine.begin() as conn:
        # The state check and the write are one statement, which also locks the row (SQLite:
        # takes the write lock). A read first, then the write, lost a race on SQLite (no FOR
        # UPDATE there; pysqlite begins at the first write): a runner's COMPLETE committed in
        # between was overwritten with FAIL.
        if conn.execute(trials.update().where(
                trials.c.trial_id == trial_id, trials.c.state == TrialState.RUNNING).values(
                state=TrialState.FAIL, datetime_complete=utcnow())).rowcount != 1:
            if conn.execute(sqlalchemy.select(trials.c.trial_id)
                            .where(trials.c.trial_id == trial_id)).first() is None:
                raise KeyError(models.NOT_FOUND_MSG)
            return False  # someone else finished it
        upsert(conn, models.TrialUserAttributeModel, ("trial_id", "key"), [
            {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
            for key, value in {"fail_reason": reason, **attrs}.items()])
    return True


def enqueue_retry(study: optuna.Study, failed: FrozenTrial, max_retry: int) -> bool:
    """Queue a WAITING copy of ``failed``'s parameters, unless it has none or its chain has
    used up ``max_retry`` (see :func:`retry_decision`). Uses Optuna's ``failed_trial`` /
    ``retry_history`` system attributes, so ``RetryHeartbeatStaleTrialCallback.retry_history``
    works on our trials. Idempotent across processes: under the study's budget lock, in the
    lock's own transaction, it looks for a trial with ``retry_of`` = ``failed.number`` (queued by
    another runner's sweep, or by our own earlier attempt whose commit we did not hear about)
    and inserts the retry only if there is none; a connection dropped in between aborts both.
    Returns whether ``failed`` has a retry."""
    if retry_decision(failed, max_retry) is not None:
        return False
    system_attrs = {k: v for k, v in failed.system_attrs.items() if k in RETRY_KEYS}
    history = [*system_attrs.get("retry_history", []), failed.number]
    system_attrs.update(failed_trial=history[0], retry_history=history)
    system_attrs[ATTR_FAILURES] = _failures_counted(failed)
    storage = study._storage
    study_id = study._study_id
    with BudgetLock(storage, study_id) as lock, lock.transaction(_engine(storage)) as conn:
        _lock_study_row(conn, study_id)
        if _retry_of(conn, study_id, failed.number) is None:
            _insert_waiting_trial(conn, study_id, failed, system_attrs,
                                  {"retry_of": failed.number})
    if isinstance(storage, BufferedStorage):
        storage.refresh(study_id)
    return True


def _lock_study_row(conn: sqlalchemy.Connection, study_id: int) -> None:
    """Lock the study's row for this transaction with a no-op write: the lock Optuna's trial
    creation waits for on PostgreSQL, and SQLite's write lock taken at once. ``KeyError`` (as
    Optuna raises for a missing record) if the study is gone."""
    studies = models.StudyModel.__table__
    if not conn.execute(studies.update().where(studies.c.study_id == study_id)
                        .values(study_name=studies.c.study_name)).rowcount:
        raise KeyError(f"study {study_id} no longer exists (deleted)")


def _retry_of(conn: sqlalchemy.Connection, study_id: int, number: int) -> int | None:
    """The number of a trial of the study whose ``retry_of`` is ``number``, if any."""
    trials, users = models.TrialModel.__table__, models.TrialUserAttributeModel.__table__
    return conn.execute(sqlalchemy.select(trials.c.number)
                        .join(users, users.c.trial_id == trials.c.trial_id)
                        .where(trials.c.study_id == study_id, users.c.key == "retry_of",
                               users.c.value_json == json.dumps(number)).limit(1)).scalar()


def _insert_waiting_trial(conn: sqlalchemy.Connection, study_id: int, source: FrozenTrial,
                          system_attrs: dict[str, Any], user_attrs: dict[str, Any]) -> None:
    """A WAITING trial with ``source``'s parameters, numbered as Optuna numbers trials (the
    count of the study's trials before it; the study row is locked by the caller)."""
    trials = models.TrialModel.__table__
    trial_id = conn.execute(trials.insert().values(
        study_id=study_id, number=None, state=TrialState.WAITING)
        .returning(trials.c.trial_id)).scalar_one()
    earlier = sqlalchemy.select(sqlalchemy.func.count()).select_from(trials).where(
        trials.c.study_id == study_id, trials.c.trial_id < trial_id).scalar_subquery()
    conn.execute(trials.update().where(trials.c.trial_id == trial_id).values(number=earlier))
    params = [{"trial_id": trial_id, "param_name": name,
               "param_value": source.distributions[name].to_internal_repr(value),
               "distribution_json": optuna.distributions.distribution_to_json(
                   source.distributions[name])}
              for name, value in source.params.items()]
    if params:
        conn.execute(models.TrialParamModel.__table__.insert(), params)
    for model, attrs in ((models.TrialSystemAttributeModel, system_attrs),
                         (models.TrialUserAttributeModel, user_attrs)):
        if attrs:
            conn.execute(model.__table__.insert(), [
                {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                for key, value in attrs.items()])


def _engine(storage: Any) -> sqlalchemy.engine.Engine:
    """The engine of a :class:`BufferedStorage`, of a plain ``RDBStorage`` or of Optuna's
    cache over one."""
    backend = rdb_backend(storage)
    if backend is None:
        raise TypeError(f"tuner needs a database storage (SQLite or PostgreSQL), not {storage!r}")
    return backend.engine


class RetryCallback(RetryHeartbeatStaleTrialCallback):
    """Optuna's stale-trial retry, with tuner's rules (no user attributes copied), so that
    ``optuna.storages.fail_stale_trials`` run by any tool behaves like tuner's own janitor."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        enqueue_retry(study, trial, self._max_retry if self._max_retry is not None else 10**9)


def _awaiting_retry(study_id: int) -> sqlalchemy.Select:
    """``(trial_id, number)`` of the study's FAIL trials recorded with ``retry_wanted`` whose
    retry is not queued yet."""
    trials, users = models.TrialModel.__table__, models.TrialUserAttributeModel.__table__
    retries, retry_trials = users.alias("retries"), trials.alias("retry_trials")
    has_retry = (sqlalchemy.select(retries.c.trial_id)
                 .join(retry_trials, retry_trials.c.trial_id == retries.c.trial_id)
                 .where(retry_trials.c.study_id == study_id, retries.c.key == "retry_of",
                        retries.c.value_json == sqlalchemy.cast(trials.c.number, sqlalchemy.String)))
    return (sqlalchemy.select(trials.c.trial_id, trials.c.number)
            .join(users, users.c.trial_id == trials.c.trial_id)
            .where(trials.c.study_id == study_id, trials.c.state == TrialState.FAIL,
                   users.c.key == ATTR_RETRY_WANTED, users.c.value_json == "true",
                   ~has_retry.exists()))


def retries_being_queued(storage: BufferedStorage, study_id: int, within_seconds: float) -> int:
    """How many trials failed in the last ``within_seconds`` still wait for the retry their
    runner is about to queue. A claim counts them as taken: failing a trial and queuing its
    retry are two transactions, and a claim between the two would otherwise spend the failed
    trial's budget slot on a new configuration, leaving the retry WAITING once the budget is
    full. (Older ones are :func:`requeue_missing_retries`'s to queue, so a retry that can never
    be queued cannot hold a slot for ever.)"""
    trials = models.TrialModel.__table__
    query = _awaiting_retry(study_id).where(
        trials.c.datetime_complete > utcnow() - timedelta(seconds=within_seconds))
    with storage.backend.engine.connect() as conn:
        return conn.execute(sqlalchemy.select(sqlalchemy.func.count())
                            .select_from(query.subquery())).scalar_one()


def requeue_missing_retries(study: optuna.Study, storage: BufferedStorage, *, max_retry: int,
                            older_than: float) -> list[int]:
    """Queue the retry of every trial failed with ``retry_wanted`` at least ``older_than``
    seconds ago that has none: failing a trial and queuing its retry are two transactions, and a
    connection dropped between them must not lose the retry. (The age keeps this sweep from
    doing the work of the runner that is about to queue it; :func:`enqueue_retry` is idempotent,
    so a race queues one retry all the same.) Returns the numbers re-queued."""
    trials = models.TrialModel.__table__
    study_id = study._study_id
    with storage.backend.engine.connect() as conn:  # usually no row: one cheap query per sweep
        wanted = conn.execute(_awaiting_retry(study_id).where(
            trials.c.datetime_complete <= utcnow() - timedelta(seconds=older_than))).all()
    queued = [number for trial_id, number in wanted
              if enqueue_retry(study, storage.backend.get_trial(trial_id), max_retry)]
    if queued:
        storage.refresh(study_id)
    return queued


_TRIAL_TABLES = (models.TrialParamModel, models.TrialValueModel, models.TrialIntermediateValueModel,
                 models.TrialUserAttributeModel, models.TrialSystemAttributeModel,
                 models.TrialHeartbeatModel)
_STUDY_TABLES = (models.StudyDirectionModel, models.StudyUserAttributeModel,
                 models.StudySystemAttributeModel)


def delete_study(storage: Any, study_id: int) -> int:
    """Delete a study, its trials and everything stored with them, in one transaction that
    first locks the study row; returns how many trials it had.

    Safe while a runner still runs the study (``tuner delete --force``): Optuna's trial creation
    locks the same row, so no trial can be added between counting and deleting (Optuna's own
    ``delete_study`` read the trials first and deleted them one by one: a trial created
    meanwhile left it with a foreign-key violation, which it ignores silently, deleting nothing
    on PostgreSQL, and an orphan trial on SQLite that the next study to reuse the id took over).
    The runner's next write then finds its trial or its study gone and stops. A transaction
    that loses a deadlock or a foreign-key race (a study attribute written meanwhile) is
    retried whole."""
    for attempt in range(_DELETE_ATTEMPTS):
        try:
            return _delete_study_once(_engine(storage), study_id)
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as exc:
            if attempt == _DELETE_ATTEMPTS - 1 or not _is_lock_race(exc):
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


_DELETE_ATTEMPTS = 5


def _is_lock_race(exc: sqlalchemy.exc.DBAPIError) -> bool:
    """A deadlock (PostgreSQL 40P01), a serialization failure (40001) or a foreign-key
    violation (23503): a concurrent writer won, and the same transaction again will succeed."""
    return getattr(exc.orig, "sqlstate", None) in ("40P01", "40001", "23503")


def _delete_study_once(engine: sqlalchemy.engine.Engine, study_id: int) -> int:
    studies, trials = models.StudyModel.__table__, models.TrialModel.__table__
    with engine.begin() as conn:
        # No ``FOR UPDATE`` on the study row: a runner that updates its trial twice in one
        # transaction re-checks the trial's foreign key (a KEY SHARE lock on the study row)
        # while holding the trial's row, which we are about to lock: a deadlock. The no-op
        # write's lock is enough to stop Optuna's trial creation (``FOR UPDATE`` there).
        _lock_study_row(conn, study_id)
        # and the trials' rows: a runner's write to a trial (its attributes, values) waits,
        # then finds the trial gone, instead of adding rows between two of our deletes
        conn.execute(sqlalchemy.select(trials.c.trial_id).where(trials.c.study_id == study_id)
                     .with_for_update())
        of_study = sqlalchemy.select(trials.c.trial_id).where(trials.c.study_id == study_id)
        for model in _TRIAL_TABLES:
            table = model.__table__
            conn.execute(table.delete().where(table.c.trial_id.in_(of_study)))
        n_trials = conn.execute(trials.delete().where(trials.c.study_id == study_id)).rowcount
        for model in _STUDY_TABLES:
            table = model.__table__
            conn.execute(table.delete().where(table.c.study_id == study_id))
        conn.execute(studies.delete().where(studies.c.study_id == study_id))
    return n_trials


@dataclass
class Failed:
    """A trial a stale-trial sweep failed: its number, and why it was not re-queued (``None``:
    it was)."""

    number: int
    no_retry: str | None = None


def fail_stale_trials(study: optuna.Study, storage: BufferedStorage, *, grace_seconds: float,
                      max_retry: int, all_running: bool = False,
                      reason: str = "stale heartbeat: its runner stopped responding") -> list[Failed]:
    """Fail stale RUNNING trials of ``study`` and queue their retries (and any retry an earlier
    call lost to a dropped connection); returns the trials failed. ``all_running``: the
    caller holds the study's only runner lock (SQLite), so every RUNNING trial that is not its
    own is an orphan, and no other process can be queuing a retry right now either."""
    requeue_missing_retries(study, storage, max_retry=max_retry,
                            older_than=0.0 if all_running else grace_seconds)
    failed = []
    for trial_id in stale_trial_ids(storage, study._study_id, grace_seconds, all_running=all_running):
        if trial_id in storage.owned_trial_ids():
            continue  # ours and alive: the heartbeat thread is just late
        if fail_trial(storage, trial_id, reason, retry=True, max_retry=max_retry):
            frozen = storage.backend.get_trial(trial_id)
            queued = enqueue_retry(study, frozen, max_retry)
            failed.append(Failed(frozen.number, None if queued else
                                 frozen.user_attrs.get(ATTR_NO_RETRY, "not re-queued")))
    if failed:
        storage.refresh(study._study_id)
    return failed


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class NamedLock:
    """An exclusive, non-blocking lock on ``name`` for this process's lifetime (or until
    :meth:`release`). PostgreSQL: ``pg_try_advisory_lock`` on a dedicated connection. SQLite:
    ``flock`` on ``<database>.locks/<name>.lock``, which records the holder's host and pid."""

    def __init__(self, storage: BufferedStorage, name: str, *, what: str) -> None:
        self.storage, self.name, self.what = storage, name, what
        self.holder: str | None = None  # who holds it, after a failed :meth:`acquire`
        self._conn: Any = None
        self._fd: int | None = None

    def acquire(self) -> NamedLock:
        engine = self.storage.backend.engine
        if engine.dialect.name == "postgresql":
            conn = engine.connect()
            try:
                got = conn.execute(sqlalchemy.select(sqlalchemy.func.pg_try_advisory_lock(
                    _lock_key(self.name)))).scalar()
                conn.commit()
            except BaseException:
                conn.close()
                raise
            if not got:
                conn.close()
                self.holder = "PostgreSQL advisory lock held"
                raise LockHeldError(f"{self.what} is already running in another process "
                                    f"({self.holder})")
            self._conn = conn
            return self
        path = _sqlite_lock_path(engine, self.name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.holder = Path(path).read_text(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockHeldError(f"{self.what} is already running in another process "
                                f"({self.holder})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self._fd = fd
        return self

    def still_held(self) -> bool:
        """Whether the lock is certainly still ours. PostgreSQL: it lives on its connection; if
        that was cut (a server restart, a failover) the server released it, and another process
        may hold it now. SQLite: an ``flock`` of this process, held until released."""
        if self._conn is None:
            return self._fd is not None
        try:
            return bool(self._conn.execute(sqlalchemy.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND pid = pg_backend_pid()")).scalar())
        except sqlalchemy.exc.SQLAlchemyError:
            return False
        finally:
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                self._conn.rollback()

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute(sqlalchemy.select(sqlalchemy.func.pg_advisory_unlock(
                    _lock_key(self.name))))
                self._conn.commit()
            except sqlalchemy.exc.SQLAlchemyError:
                pass  # the connection is gone, and with it the lock
            finally:
                self._conn.close()
                self._conn = None
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> NamedLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def runner_lock(storage: BufferedStorage, study_name: str, *, what: str | None = None) -> NamedLock:
    """The lock a runner holds on a SQLite study while it runs it (a SQLite study has exactly
    one runner): `tuner run` takes it, `tuner doctor` tries it (free: every RUNNING trial is an
    orphan), `tuner delete` holds it (no runner starts meanwhile)."""
    return NamedLock(storage, f"run-{study_name}", what=what or f"study {study_name!r}")


class BudgetLock:
    """Serializes 'count the study's trials, then claim one' across runners on PostgreSQL: a
    transaction-level advisory lock (``pg_advisory_xact_lock``), held for the few milliseconds of
    a claim and released by the transaction's end, however the claim ends (even if the
    connection drops). A wait longer than ``lock_timeout`` is an error the caller retries, never
    a hang. SQLite: an ``flock`` next to the database (a study has one runner, but `tuner
    doctor` may queue retries beside it). Also serializes queuing retries
    (:func:`enqueue_retry`)."""

    LOCK_TIMEOUT = "60s"

    def __init__(self, storage: Any, study_id: int) -> None:
        self.engine = _engine(storage)
        self.study_id = study_id
        self.key = _lock_key(f"tuner:budget:{study_id}")
        self._conn: Any = None
        self._trans: Any = None
        self._file: Any = None

    def __enter__(self) -> BudgetLock:
        if self.engine.dialect.name == "sqlite":
            if self.engine.url.database not in (None, "", ":memory:"):
                self._file = sqlite_file_lock(Path(self.engine.url.database),
                                              f"budget-{self.study_id}")
                self._file.__enter__()
            return self
        if self.engine.dialect.name == "postgresql":
            self._conn = self.engine.connect()
            try:
                self._trans = self._conn.begin()
                self._conn.execute(sqlalchemy.text(f"SET LOCAL lock_timeout = '{self.LOCK_TIMEOUT}'"))
                self._conn.execute(sqlalchemy.select(sqlalchemy.func.pg_advisory_xact_lock(self.key)))
            except BaseException:
                self._release()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()

    def still_held(self) -> bool:
        """Whether the lock is certainly still ours. On PostgreSQL it lives on one connection:
        if that connection was cut (``pg_terminate_backend``, a failover), the server released
        the lock and another runner may have counted the study's trials meanwhile."""
        if self._conn is None:
            return True  # SQLite: an flock of this process
        try:
            self._conn.execute(sqlalchemy.select(1))
            return True
        except sqlalchemy.exc.SQLAlchemyError:
            return False

    @contextlib.contextmanager
    def transaction(self, engine: sqlalchemy.engine.Engine) -> Iterator[sqlalchemy.Connection]:
        """A connection to write on while the lock is held, committed at the end: on PostgreSQL
        the locked transaction itself (its commit releases the lock), on SQLite a new one."""
        if self._conn is None:
            with engine.begin() as conn:
                yield conn
            return
        yield self._conn
        self._trans.commit()
        self._trans = None

    def _release(self) -> None:
        if self._file is not None:
            self._file.__exit__(None, None, None)
            self._file = None
        if self._conn is None:
            return
        try:
            if self._trans is not None:
                self._trans.rollback()  # ends the transaction, and with it the lock
        except sqlalchemy.exc.SQLAlchemyError:
            pass  # the connection is gone, and with it the lock
        finally:
            self._conn.close()
            self._conn = self._trans = None


def claim_run_index(storage: BufferedStorage, study_id: int, key: str) -> int:
    """Read and increment the study's run counter (user attribute ``key``) in one transaction,
    under the budget lock on PostgreSQL: the index is read and written on the connection that
    holds the lock, so a connection dropped in between can neither hand two runners the same
    index (a lock released mid-way) nor leave a half-done increment."""
    attrs = models.StudyUserAttributeModel.__table__
    engine = storage.backend.engine
    with BudgetLock(storage, study_id) as lock, lock.transaction(engine) as conn:
        text = conn.execute(sqlalchemy.select(attrs.c.value_json).where(
            attrs.c.study_id == study_id, attrs.c.key == key)).scalar()
        runs = int(json.loads(text)) if text is not None else 0
        dialect = sqlite_dialect if engine.dialect.name == "sqlite" else postgresql_dialect
        statement = dialect.insert(attrs).values(study_id=study_id, key=key,
                                                 value_json=json.dumps(runs + 1))
        conn.execute(statement.on_conflict_do_update(
            index_elements=["study_id", "key"], set_={"value_json": statement.excluded.value_json}))
    return runs


def _sqlite_lock_path(engine: sqlalchemy.engine.Engine, name: str) -> str:
    return str(sqlite_lock_file(Path(engine.url.database or ""), name))


def sqlite_lock_file(database: Path, name: str) -> Path:
    """``<database>.locks/<name>.lock`` (the folder is created)."""
    database = Path(database).expanduser().resolve()
    base = database.with_name(database.name + ".locks")
    base.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return base / f"{safe}.lock"


@contextlib.contextmanager
def sqlite_file_lock(database: Path, name: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<database>.locks/<name>.lock``, waiting for it (for
    short critical sections shared by processes: table creation, enqueueing a retry)."""
    fd = os.open(sqlite_lock_file(database, name), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
