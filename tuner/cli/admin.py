"""``tuner init``: create the Optuna tables once, before any worker starts (a compose init job,
a Kubernetes init Job, a deployment script), and say whether the schema needs an upgrade.

- **Waits for the database** with a bounded retry (``--wait SECONDS``): connection refused, an
  unknown host (a container not up yet), "the database system is starting up", too many
  clients... are retried with backoff until the deadline. A wrong user or password, a database
  that does not exist or a missing driver fail at once: waiting would not fix them.
- **Never touches an old schema.** The existing tables are inspected first (read-only). If they
  were written by an older Optuna schema, ``tuner init`` says so and exits 4 *without* creating
  anything: creating the newer tables first would make ``optuna storage upgrade`` fail later.
  A schema newer than this Optuna also exits 4.
- **Idempotent and safe to run concurrently**: tables are created by
  :func:`tuner.storage.open_storage`, which serializes creation on PostgreSQL with an advisory
  lock; a second run finds the schema up to date.
- Prints the database as a masked URL (``postgresql+psycopg://user:***@host:5432/db``); no
  message ever contains the password.

Exit codes: 0 ready (created or up to date); 2 usage error; 3 the database URL is invalid, or
the database cannot be reached or used (after ``--wait``); 4 the schema needs ``optuna storage
upgrade`` (or is newer than this Optuna).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tuner.cli.app import JsonOpt, StorageOpt, app, err, out, print_json
from tuner.errors import StorageError

if TYPE_CHECKING:
    import sqlalchemy

EXIT_SCHEMA = 4
MAX_BACKOFF_S = 5.0
CONNECT_TIMEOUT_S = 5
# failures that waiting cannot fix (matched in the driver's message, lower case)
PERMANENT = ("password authentication failed", "no password supplied", "does not exist",
             "pg_hba.conf", "permission denied", "unable to open database file")


class SchemaError(StorageError):
    """The tables were written by another Optuna schema version: nothing was changed."""

    exit_code = EXIT_SCHEMA


@dataclass
class Schema:
    """What the database holds before ``tuner init`` changes anything."""

    optuna_tables: bool          # any of Optuna's tables exist
    version: str | None          # alembic revision, None if not stamped (pre-alembic or fresh)
    library_version: str | None  # optuna version that set the schema up (version_info table)


def alembic_versions() -> tuple[str, list[str]]:
    """This Optuna's schema head and every schema revision it knows (oldest last)."""
    import optuna
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(Path(optuna.storages._rdb.__file__).parent / "alembic"))
    head = script.get_current_head()
    assert head is not None
    return head, [r.revision for r in script.walk_revisions()]


def _engine(url: str) -> sqlalchemy.engine.Engine:
    """A pool-less engine: ``tuner init`` holds at most one connection of its own at a time."""
    import sqlalchemy

    from tuner.storage.urls import parse

    connect_args: dict[str, Any] = {}
    if parse(url).get_backend_name() == "postgresql":
        connect_args = {"connect_timeout": CONNECT_TIMEOUT_S, "options": "-c timezone=UTC"}
    return sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, connect_args=connect_args)


def inspect_schema(url: str) -> Schema:
    """Read-only look at the tables at ``url`` (one short-lived connection).

    On PostgreSQL the look is taken under the advisory lock that serializes table creation
    (:data:`tuner.storage.SCHEMA_LOCK_KEY`): a concurrent ``tuner init`` or runner creates the
    tables in several transactions, and a look in between would see tables without their
    schema version and call them old."""
    import sqlalchemy

    from tuner.storage import SCHEMA_LOCK_KEY
    from tuner.storage.urls import parse

    engine = _engine(url)
    try:
        with engine.connect() as conn:
            if parse(url).get_backend_name() == "postgresql":
                # session-level: released when this pool-less connection closes
                conn.execute(sqlalchemy.select(sqlalchemy.func.pg_advisory_lock(SCHEMA_LOCK_KEY)))
            names = set(sqlalchemy.inspect(conn).get_table_names())
            version = library = None
            if "alembic_version" in names:
                version = conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()
            if "version_info" in names:
                library = conn.execute(sqlalchemy.text("SELECT library_version FROM version_info")).scalar()
        optuna_tables = bool(names & {"studies", "trials", "version_info", "alembic_version"})
        return Schema(optuna_tables, version, library)
    finally:
        engine.dispose()


def is_permanent(exc: BaseException) -> bool:
    """Whether waiting cannot fix ``exc`` (credentials, a missing database, no driver)."""
    import sqlalchemy

    if isinstance(exc, ImportError | sqlalchemy.exc.ArgumentError | sqlalchemy.exc.NoSuchModuleError):
        return True
    text = " ".join(str(exc).split()).lower()
    return any(p in text for p in PERMANENT)


def wait_for_schema(url: str, wait: float, *, say: Any) -> tuple[Schema, float]:
    """:func:`inspect_schema`, retried with backoff for up to ``wait`` seconds while the
    database is unreachable. Returns the schema and the seconds spent waiting."""
    from tuner.storage import describe, storage_error

    started = time.monotonic()
    deadline = started + wait
    delay = 0.5
    attempts = 0
    while True:
        attempts += 1
        try:
            return inspect_schema(url), time.monotonic() - started
        except Exception as exc:  # driver, SQLAlchemy: many types
            error = storage_error(exc, url)
            remaining = deadline - time.monotonic()
            if is_permanent(exc) or remaining <= 0:
                if attempts > 1:
                    error.message += f" (gave up after {attempts} attempts in " \
                                     f"{time.monotonic() - started:.0f} s)"
                raise error from None
            if attempts == 1:
                say(f"waiting up to {wait:g} s for {describe(url)}: {error.message}")
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, MAX_BACKOFF_S)


def check_schema(url: str, schema: Schema, head: str, known: list[str]) -> None:
    """Raise :class:`SchemaError` if the existing tables are not at this Optuna's head."""
    import optuna

    from tuner.storage import describe
    from tuner.storage.urls import upgrade_hint

    if not schema.optuna_tables or schema.version == head:
        return
    where = describe(url)
    by = f" (set up by optuna {schema.library_version})" if schema.library_version else ""
    if schema.version is None or schema.version in known:
        found = schema.version or "from before schema versioning"
        raise SchemaError(f"{where} has an older Optuna schema {found}{by}; optuna "
                          f"{optuna.__version__} needs {head}: `optuna storage upgrade` is needed, "
                          "nothing was changed", hint=upgrade_hint(url))
    raise SchemaError(f"{where} has Optuna schema {schema.version}{by}, which optuna "
                      f"{optuna.__version__} does not know (its newest is {head}): it was written by a "
                      "newer Optuna; nothing was changed",
                      hint="use a tuner image (or install) with that Optuna version or newer; never "
                           "downgrade a storage")


def count_studies(url: str) -> int:
    import sqlalchemy

    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sqlalchemy.text("SELECT count(*) FROM studies")).scalar() or 0)
    finally:
        engine.dispose()


@app.command()
def init(storage: StorageOpt = None,
         wait: Annotated[float, typer.Option(
             "--wait", min=0, help="Seconds to keep retrying while the database is unreachable "
                                   "(e.g. still starting); 0: try once.")] = 0,
         json_out: JsonOpt = False) -> None:
    """Create the Optuna tables in the storage (before workers start), or check they are up to date.

    Idempotent and safe to run concurrently. An older schema is never modified: it says that
    `optuna storage upgrade` is needed and exits 4.

    Exit codes: 0 ready; 2 usage error; 3 invalid URL, or database unreachable (after --wait);
    4 the schema needs `optuna storage upgrade` (or is newer than this Optuna)."""
    import optuna

    from tuner.storage import describe, mask_url, open_storage, resolve_url, storage_error
    from tuner.storage.urls import parse, sqlite_path

    started = time.monotonic()
    url = resolve_url(storage)
    masked = mask_url(url)

    def say(line: str) -> None:
        err.print(line, highlight=False, soft_wrap=True)

    if not json_out:
        out.print(f"database: {describe(url)} ({masked})", highlight=False, soft_wrap=True)
    path = sqlite_path(url)
    if path is not None and not path.parent.is_dir():
        raise StorageError(f"cannot create {describe(url)}: folder {path.parent} does not exist")
    schema, waited = wait_for_schema(url, wait, say=say)
    head, known = alembic_versions()
    check_schema(url, schema, head, known)
    try:
        open_storage(url).backend.engine.dispose()  # creates missing tables, checks compatibility
        studies = count_studies(url)
    except StorageError:
        raise
    except Exception as exc:
        raise storage_error(exc, url) from None
    status = "up_to_date" if schema.optuna_tables else "created"
    elapsed = time.monotonic() - started
    if json_out:
        print_json({"storage": masked, "backend": parse(url).get_backend_name(), "status": status,
                    "schema_version": head, "optuna": optuna.__version__, "studies": studies,
                    "waited_s": round(waited, 2), "elapsed_s": round(elapsed, 2)})
        return
    if status == "created":
        out.print(f"[green]✓[/] created the Optuna tables (schema {head}, optuna {optuna.__version__})",
                  highlight=False)
    else:
        out.print(f"[green]✓[/] schema up to date ({head}, optuna {optuna.__version__}): "
                  f"{studies} {'study' if studies == 1 else 'studies'}", highlight=False)
    waited_text = f", waited {waited:.1f} s for the database" if waited >= 0.5 else ""
    out.print(f"ready in {elapsed:.1f} s{waited_text}", highlight=False)
