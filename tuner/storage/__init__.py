"""Opening study storage: embedded SQLite (WAL) or PostgreSQL (psycopg 3, pre-ping), with
errors that say which database could not be reached and what to try, never a password."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage

from tuner.errors import StorageError
from tuner.storage.buffered import BufferedStorage, rdb_backend
from tuner.storage.coordination import RetryCallback, sqlite_file_lock
from tuner.storage.urls import (
    describe,
    mask_url,
    normalize_url,
    parse,
    resolve_url,
    scrub,
    sqlite_path,
)

__all__ = ["open_storage", "resolve_url", "mask_url", "describe", "BufferedStorage", "rdb_backend"]

SQLITE_BUSY_TIMEOUT_S = 30.0
SCHEMA_LOCK_KEY = 0x7475_6E65_7273_6368  # "tunersch": one advisory lock for table creation


def _absolute_hint(url: str, fits: Any) -> str | None:
    """``did you mean sqlite:////tmp/x.db?`` when ``url`` names a relative path
    (``sqlite:///tmp/x.db``) and the absolute one would do (``fits(Path)``)."""
    raw = url.split(":///", 1)[1] if ":///" in url else ""
    if not raw or raw.startswith("/"):
        return None
    absolute = Path("/" + raw.split("?", 1)[0])
    if not fits(absolute):
        return None
    return (f"did you mean sqlite:////{raw}? (sqlite:/// then a relative path; an absolute "
            "path takes a fourth slash)")


def open_storage(url: str, *, heartbeat_interval: int | None = None,
                 grace_period: int | None = None, max_retry: int = 2,
                 pool_size: int = 3, must_exist: bool = False) -> BufferedStorage:
    """Open (and on first use create) the Optuna tables at ``url``.

    SQLite files get ``journal_mode=WAL`` and ``synchronous=NORMAL`` (half the per-trial
    overhead of the default journal, reference notes 3.1) and a 30 s busy timeout. PostgreSQL
    gets ``pool_pre_ping`` (a dropped connection is replaced, not raised), a 10 s connect
    timeout and sessions in UTC. With ``heartbeat_interval`` the storage is heartbeat-enabled
    for Optuna's own tools too (``optuna.storages.fail_stale_trials``). With ``must_exist``
    (commands that only read), a missing SQLite file is an error instead of a new empty database.
    """
    url = normalize_url(url)
    parsed = parse(url)
    engine_kwargs: dict[str, Any]
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_path(url)
        if path is not None and must_exist and not path.exists():
            raise StorageError(f"no database at {path} (from {mask_url(url)})",
                               hint=_absolute_hint(url, lambda p: p.exists())
                               or "run a study first (tuner run studies/digits.toml) or pass "
                                  "--storage / TUNER_STORAGE")
        if path is not None and path.is_dir():
            raise StorageError(f"{path} (from {mask_url(url)}) is a folder, not a database file",
                               hint=f"name a file in it, e.g. sqlite:///{path / 'tuner.db'}")
        if path is not None and not path.parent.is_dir():
            raise StorageError(f"cannot create {describe(url)}: folder {path.parent} does not exist",
                               hint=_absolute_hint(url, lambda p: p.parent.is_dir()))
        if path is not None and not must_exist:
            _refuse_a_read_only_file(path, url)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    else:
        engine_kwargs = {
            "pool_pre_ping": True,
            "pool_size": pool_size,
            "max_overflow": 2,
            "pool_recycle": 1800,
            # TCP keepalives: a server that vanished without closing the connection is noticed
            # in about a minute instead of a query waiting forever
            "connect_args": {"connect_timeout": 10, "options": "-c timezone=UTC",
                             "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                             "keepalives_count": 3},
        }
    sqlite = parsed.get_backend_name() == "sqlite"
    try:
        # a command that only reads a SQLite file that has the tables creates nothing: no
        # schema lock (its lock file) and no journal-mode change, so a read-only copy works
        reading = must_exist and sqlite and _refuse_a_foreign_database(url, engine_kwargs)
        with warnings.catch_warnings(), (
                contextlib.nullcontext() if reading else _schema_lock(url, engine_kwargs)):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if (must_exist or sqlite) and not reading:
                _refuse_a_foreign_database(url, engine_kwargs)
            if sqlite and sqlite_path(url) is not None and not reading:
                _enable_wal(sqlite_path(url))
            callback = RetryCallback(max_retry=max_retry) if heartbeat_interval else None
            backend = RDBStorage(url, engine_kwargs=engine_kwargs,
                                 heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                                 heartbeat_stale_trial_callback=callback,
                                 skip_table_creation=bool(reading))
    except StorageError:
        raise
    except Exception as exc:  # driver, SQLAlchemy and Optuna raise many types here
        raise storage_error(exc, url) from None
    if sqlite:
        sqlalchemy.event.listen(backend.engine, "connect", _sqlite_pragmas)
        backend.engine.dispose()  # reconnect with the pragmas
    return BufferedStorage(backend)


def _refuse_a_read_only_file(path: Path, url: str) -> None:
    """Commands that write need the file and its folder writable: SQLite writes its
    ``-wal``/``-shm`` files and tuner its ``.locks`` folder beside the database."""
    if path.exists() and not os.access(path, os.W_OK):
        raise StorageError(f"{path} (from {mask_url(url)}) is read-only",
                           hint=READ_ONLY_HINT)
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise StorageError(f"cannot write in {path.parent}, the folder of {describe(url)}",
                           hint=READ_ONLY_HINT)


READ_ONLY_HINT = ("make the file and its folder writable (SQLite writes <file>-wal and "
                  "<file>-shm beside it), or use a copy in a writable folder")


def _refuse_a_foreign_database(url: str, engine_kwargs: dict[str, Any]) -> bool:
    """Never add Optuna's tables to another application's database (``--storage`` pointing at
    the wrong one): a database with tables, none of them Optuna's, is an error for every
    command on SQLite (a file belongs to one application; WAL mode would change it too) and for
    the commands that only read on PostgreSQL (where a shared database may be deliberate). An
    empty one is fine (a dashboard may start before the first run). Returns whether Optuna's
    tables are there and complete (their schema version stamped)."""
    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        tables = set(sqlalchemy.inspect(engine).get_table_names())
        complete = "studies" in tables and "alembic_version" in tables and _stamped(engine)
    finally:
        engine.dispose()
    if tables and "studies" not in tables:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise StorageError(f"{describe(url)} is not a tuner database: it has tables ({shown}) "
                           "but none of Optuna's", hint="check --storage / TUNER_STORAGE (a "
                           "study's first `tuner run` creates the tables in an empty database)")
    return complete


def _stamped(engine: sqlalchemy.Engine) -> bool:
    """Whether Optuna finished creating its tables: it stamps the schema version last."""
    with engine.connect() as conn:
        return conn.execute(sqlalchemy.text("SELECT count(*) FROM alembic_version")).scalar() > 0


@contextlib.contextmanager
def _schema_lock(url: str, engine_kwargs: dict[str, Any]) -> Iterator[None]:
    """Serialize table creation across processes. PostgreSQL: an advisory lock (runners started
    together on a fresh database would otherwise race in ``CREATE TYPE``, "duplicate key ...
    pg_type"). SQLite: an ``flock`` on ``<database>.locks/schema.lock`` (they raced in
    ``CREATE TABLE`` / the alembic stamp: "table studies already exists", "UNIQUE constraint
    failed: alembic_version.version_num")."""
    if parse(url).get_backend_name() == "sqlite":
        path = sqlite_path(url)
        if path is None:
            yield
            return
        with sqlite_file_lock(path, "schema"):
            yield
        return
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args=engine_kwargs["connect_args"])
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.select(sqlalchemy.func.pg_advisory_lock(SCHEMA_LOCK_KEY)))
            try:
                yield
            finally:
                conn.execute(sqlalchemy.select(sqlalchemy.func.pg_advisory_unlock(SCHEMA_LOCK_KEY)))
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise storage_error(exc, url) from None
    finally:
        engine.dispose()


def _enable_wal(path: Any) -> None:
    try:
        with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open SQLite database {path}: {exc}",
                           hint="check that the file is a SQLite database and the folder is "
                                "writable") from None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    # Enforce Optuna's foreign keys, as PostgreSQL does: Python's sqlite3 starts a transaction
    # at the first write, so Optuna's "the study exists, then insert its trial" is two
    # transactions here, and a trial created just after `tuner delete --force` would outlive
    # its study (and join the next study that reuses the id)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


_TRANSIENT_TEXT = ("terminating connection", "server closed the connection",
                   "the database system is starting up", "the database system is shutting down",
                   "the database system is in recovery mode", "consuming input failed")


def storage_error(exc: BaseException, url: str) -> StorageError:
    """Translate a driver/SQLAlchemy/Optuna error into a :class:`StorageError` that names the
    database (password masked) and suggests a fix."""
    where = describe(url)
    root: BaseException = exc
    while root.__cause__ is not None or getattr(root, "orig", None) is not None:
        root = getattr(root, "orig", None) or root.__cause__  # type: ignore[assignment]
    text = scrub(" ".join(str(root).split()), url)
    lowered = text.lower()
    masked = mask_url(url)
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        return StorageError(f"cannot log in to {where}: {text}",
                            hint=f"check the user and password in --storage / TUNER_STORAGE "
                                 f"(given as {masked})")
    if "role" in lowered and "does not exist" in lowered:
        return StorageError(f"cannot log in to {where}: {text}",
                            hint=f"check the user name in --storage / TUNER_STORAGE (given as {masked}), "
                                 "or create the role")
    if any(s in lowered for s in _TRANSIENT_TEXT) or type(root).__name__ == "AdminShutdown":
        return StorageError(f"lost the connection to {where}: {text}",
                            hint="the server is restarting or dropped the connection; retry",
                            transient=True)
    if "does not exist" in lowered and "database" in lowered:
        name = parse(url).database
        return StorageError(f"cannot open {where}: {text}",
                            hint=f"create the database first, e.g. `createdb {name}`")
    if any(s in lowered for s in ("connection refused", "could not connect", "timeout expired",
                                  "could not translate host", "name or service not known",
                                  "connection failed", "is the server running")):
        return StorageError(f"cannot connect to {where}: {text}",
                            hint=f"is the server running and reachable? the URL was {masked}")
    if "readonly database" in lowered:
        return StorageError(f"{where} is read-only: {text}", hint=READ_ONLY_HINT)
    if isinstance(root, RuntimeError) and "upgrade" in lowered:
        from tuner.storage.urls import upgrade_hint

        return StorageError(f"{where} has an older Optuna schema than this Optuna "
                            f"({optuna.__version__}) needs: {text}", hint=upgrade_hint(url))
    if isinstance(root, ImportError):
        return StorageError(f"no database driver for {masked}: {text}",
                            hint="PostgreSQL needs psycopg 3: pip install 'psycopg[binary]'")
    return StorageError(f"cannot use {where}: {type(root).__name__}: {text}",
                        hint=f"the storage URL was {masked}")
