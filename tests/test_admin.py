"""``tuner init`` as a real subprocess against real SQLite files and PostgreSQL databases:
creates the schema once (idempotent, concurrent runs agree), never touches an older schema (says
`optuna storage upgrade` is needed, exit 4, and the real upgrade then makes it pass), waits for a
database that comes up late, gives up after ``--wait`` on one that never does, fails at once on
what waiting cannot fix, and never prints the password. Also: the command help texts (no line
breaks inside a paragraph, which typer's rich output keeps as stray breaks)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from conftest import free_port, run_tuner, tuner_env

SECRET = "init-S3cret-pw"
OLD_SCHEMA = "v3.0.0.d"      # the revision before Optuna 5's head v3.2.0.a (which adds one index)
HEAD_INDEX = "ix_trials_study_id"


def init(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_tuner("init", *args, env=env, timeout=timeout)


def text_of(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def with_password(url: str, password: str = SECRET) -> str:
    """``url`` with a password: the test server trusts 127.0.0.1, so any password logs in."""
    parsed = make_url(url)
    if parsed.password:
        return url
    return parsed.set(password=password).render_as_string(hide_password=False)


def table_names(url: str) -> set[str]:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            return set(sqlalchemy.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def make_old_schema(url: str) -> None:
    """Turn a fresh Optuna 5 schema into what Optuna 3.0 left (revision v3.0.0.d): the only
    difference of the head v3.2.0.a is an index on trials.study_id."""
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f"DROP INDEX {HEAD_INDEX}"))
        conn.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = :v"), {"v": OLD_SCHEMA})
        conn.execute(sqlalchemy.text("UPDATE version_info SET library_version = '3.0.6'"))
    engine.dispose()


def schema_state(url: str) -> tuple[str, list[str]]:
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        version = conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()
        indexes = [i["name"] for i in sqlalchemy.inspect(conn).get_indexes("trials")]
    engine.dispose()
    return version, indexes


class LateForwarder:
    """A TCP forwarder to the real PostgreSQL server that starts listening only ``delay``
    seconds after :meth:`open_soon`: a database that is still starting (connection refused
    until then)."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target, self.delay = target, delay
        self.port = free_port()
        self.stopping = threading.Event()
        self.opening = threading.Event()
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def open_soon(self) -> None:
        self.opening.set()

    def _serve(self) -> None:
        while not self.opening.wait(0.1):
            if self.stopping.is_set():
                return
        if self.stopping.wait(self.delay):
            return
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", self.port))
            server.listen(16)
            server.settimeout(0.2)
            while not self.stopping.is_set():
                try:
                    client, _ = server.accept()
                except TimeoutError:
                    continue
                self.accepted += 1
                upstream = socket.create_connection(self.target)
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)


# --- SQLite ---------------------------------------------------------------------------------


def test_init_creates_then_reports_up_to_date_on_sqlite(sqlite_url: str, tmp_path: Path):
    first = init("--storage", sqlite_url)
    assert first.returncode == 0, text_of(first)
    assert f"database: SQLite {tmp_path / 'tuner.db'}" in first.stdout
    assert "created the Optuna tables (schema v3.2.0.a" in first.stdout
    assert {"studies", "trials", "alembic_version", "version_info"} <= table_names(sqlite_url)
    again = init("--json", env=tuner_env(TUNER_STORAGE=sqlite_url))  # the URL from the environment
    assert again.returncode == 0, text_of(again)
    data = json.loads(again.stdout)
    assert data["status"] == "up_to_date" and data["schema_version"] == "v3.2.0.a"
    assert data["backend"] == "sqlite" and data["studies"] == 0
    # the storage is usable by the rest of tuner
    listed = run_tuner("ls", "--storage", sqlite_url, "--json")
    assert listed.returncode == 0, text_of(listed)


def test_init_missing_sqlite_folder_is_a_clear_error(tmp_path: Path):
    proc = init("--storage", f"sqlite:///{tmp_path / 'missing' / 'tuner.db'}", "--wait", "30")
    assert proc.returncode == 3, text_of(proc)
    assert "folder" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in text_of(proc)


def test_init_rejects_a_non_database_url():
    proc = init("--storage", f"mysql://root:{SECRET}@127.0.0.1/x")
    assert proc.returncode == 3, text_of(proc)
    assert "unsupported storage" in proc.stderr
    assert SECRET not in text_of(proc)


def test_init_on_an_old_sqlite_schema_changes_nothing(sqlite_url: str):
    assert init("--storage", sqlite_url).returncode == 0
    make_old_schema(sqlite_url)
    proc = init("--storage", sqlite_url)
    assert proc.returncode == 4, text_of(proc)
    stderr = " ".join(proc.stderr.split())
    assert f"older Optuna schema {OLD_SCHEMA} (set up by optuna 3.0.6)" in stderr
    assert "`optuna storage upgrade` is needed, nothing was changed" in stderr
    assert "copy the file" in stderr
    assert schema_state(sqlite_url) == (OLD_SCHEMA, [])
    # any other command: the same way out (exit 3, a storage it cannot use), with a URL that
    # connects ("$TUNER_STORAGE", never a masked password)
    proc = run_tuner("ls", env=tuner_env(TUNER_STORAGE=sqlite_url))
    assert proc.returncode == 3, text_of(proc)
    stderr = " ".join(proc.stderr.split())
    assert "has an older Optuna schema than this Optuna" in stderr, stderr
    assert ('copy the file), then run `optuna storage upgrade --storage "$TUNER_STORAGE"` with '
            "this Optuna version, then `tuner init` again") in stderr, stderr


# --- PostgreSQL -----------------------------------------------------------------------------


@pytest.mark.postgres
def test_concurrent_inits_on_a_fresh_postgres_database_all_succeed(pg_url: str):
    url = with_password(pg_url)
    procs = [subprocess.Popen([sys.executable, "-m", "tuner", "init", "--storage", url, "--json"],
                              env=tuner_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    for code, out, errs in results:
        assert code == 0, out + errs
        assert SECRET not in out + errs
        assert json.loads(out)["storage"].endswith(f"postgres:***@{make_url(pg_url).host}:"
                                                   f"{make_url(pg_url).port}/{make_url(pg_url).database}")
    assert {"studies", "trials", "alembic_version"} <= table_names(pg_url)
    again = init("--storage", url)
    assert again.returncode == 0, text_of(again)
    assert "schema up to date (v3.2.0.a" in again.stdout and "0 studies" in again.stdout
    assert "postgres:***@" in again.stdout and SECRET not in text_of(again)


@pytest.mark.postgres
def test_init_waits_for_a_table_creation_in_progress_instead_of_calling_it_old(pg_url: str):
    """Deterministic form of the race above: another process holds the schema lock and has
    committed some tables but not yet the schema version (Optuna creates them in several
    transactions). ``tuner init`` must wait for it, then find the schema up to date."""
    from tuner.storage import SCHEMA_LOCK_KEY, open_storage

    open_storage(pg_url).backend.engine.dispose()
    with sqlalchemy.create_engine(pg_url).begin() as conn:  # the moment before the stamp
        conn.execute(sqlalchemy.text("DELETE FROM alembic_version"))
    holder = sqlalchemy.create_engine(pg_url, poolclass=sqlalchemy.pool.NullPool)
    with holder.connect() as lock_conn:
        lock_conn.execute(sqlalchemy.select(sqlalchemy.func.pg_advisory_lock(SCHEMA_LOCK_KEY)))
        lock_conn.commit()
        proc = subprocess.Popen([sys.executable, "-m", "tuner", "init", "--storage", pg_url],
                                env=tuner_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        assert proc.poll() is None, "init did not wait for the schema lock: " + proc.communicate()[1]
        with sqlalchemy.create_engine(pg_url).begin() as conn:  # the creator finishes
            conn.execute(sqlalchemy.text("INSERT INTO alembic_version VALUES ('v3.2.0.a')"))
        lock_conn.execute(sqlalchemy.select(sqlalchemy.func.pg_advisory_unlock(SCHEMA_LOCK_KEY)))
        lock_conn.commit()
        out, errs = proc.communicate(timeout=60)
    holder.dispose()
    assert proc.returncode == 0, out + errs
    assert "schema up to date (v3.2.0.a" in out


@pytest.mark.postgres
def test_old_postgres_schema_needs_upgrade_then_passes(pg_url: str):
    assert init("--storage", pg_url).returncode == 0
    make_old_schema(pg_url)
    proc = init(env=tuner_env(TUNER_STORAGE=with_password(pg_url)))
    assert proc.returncode == 4, text_of(proc)
    stderr = " ".join(proc.stderr.split())
    assert f"older Optuna schema {OLD_SCHEMA}" in stderr and "nothing was changed" in stderr
    assert 'optuna storage upgrade --storage "$TUNER_STORAGE"' in stderr
    assert "pg_dump" in stderr and SECRET not in text_of(proc)
    assert schema_state(pg_url) == (OLD_SCHEMA, [])  # nothing created, nothing stamped
    # what the message says to do works: the real Optuna upgrade, then init passes
    optuna_cli = shutil.which("optuna", path=str(Path(sys.executable).parent))
    assert optuna_cli, "the optuna CLI is installed with optuna"
    upgrade = subprocess.run([optuna_cli, "storage", "upgrade", "--storage", pg_url],
                             capture_output=True, text=True, timeout=120, env=tuner_env())
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    assert schema_state(pg_url)[0] == "v3.2.0.a"
    after = init("--storage", pg_url)
    assert after.returncode == 0, text_of(after)
    assert "schema up to date" in after.stdout


@pytest.mark.postgres
def test_newer_postgres_schema_is_refused(pg_url: str):
    assert init("--storage", pg_url).returncode == 0
    engine = sqlalchemy.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = 'v9.0.0.a'"))
    engine.dispose()
    proc = init("--storage", pg_url)
    assert proc.returncode == 4, text_of(proc)
    assert "written by a newer Optuna" in " ".join(proc.stderr.split())


@pytest.mark.postgres
def test_init_waits_for_a_database_that_comes_up_late(pg_url: str):
    parsed = make_url(pg_url)
    forwarder = LateForwarder((parsed.host or "127.0.0.1", parsed.port or 5432), delay=2.0)
    try:
        late = parsed.set(host="127.0.0.1", port=forwarder.port, password=SECRET)
        child = subprocess.Popen([sys.executable, "-m", "tuner", "init", "--storage",
                                  late.render_as_string(hide_password=False), "--wait", "60"],
                                 env=tuner_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        # the database comes up 2 s after init first found it refusing connections (however
        # long this busy machine took to start init)
        first = child.stderr.readline()
        refused = time.monotonic()
        forwarder.open_soon()
        out, rest = child.communicate(timeout=120)
        elapsed = time.monotonic() - refused
        proc = subprocess.CompletedProcess(child.args, child.returncode, out, first + rest)
    finally:
        forwarder.close()
    assert proc.returncode == 0, text_of(proc)
    assert "waiting up to 60 s for PostgreSQL" in first and "Connection refused" in proc.stderr
    assert "created the Optuna tables" in proc.stdout and "waited" in proc.stdout
    assert forwarder.accepted >= 1
    assert 2.0 <= elapsed < 30, elapsed
    assert SECRET not in text_of(proc)


def test_init_gives_up_after_wait_on_an_unreachable_database():
    url = f"postgresql+psycopg://tuner:{SECRET}@127.0.0.1:{free_port()}/tuner"
    started = time.monotonic()
    proc = init("--storage", url, "--wait", "2")
    elapsed = time.monotonic() - started
    assert proc.returncode == 3, text_of(proc)
    stderr = " ".join(proc.stderr.split())
    assert "cannot connect to PostgreSQL tuner@127.0.0.1" in stderr and "gave up after" in stderr
    assert "postgresql+psycopg://tuner:***@127.0.0.1" in stderr
    assert SECRET not in text_of(proc) and "Traceback" not in text_of(proc)
    assert 2 <= elapsed < 20, elapsed


@pytest.mark.postgres
def test_init_does_not_wait_for_what_waiting_cannot_fix(pg_url: str):
    parsed = make_url(pg_url)
    no_role = parsed.set(username="no_such_role", password=SECRET).render_as_string(hide_password=False)
    no_db = parsed.set(database="no_such_database_xyz", password=SECRET).render_as_string(hide_password=False)
    for url, expected in ((no_role, 'role "no_such_role" does not exist'),
                          (no_db, 'database "no_such_database_xyz" does not exist')):
        started = time.monotonic()
        proc = init("--storage", url, "--wait", "60")
        assert proc.returncode == 3, text_of(proc)
        assert time.monotonic() - started < 20
        assert expected in proc.stderr and "waiting" not in proc.stderr
        assert SECRET not in text_of(proc)


# --- help texts ------------------------------------------------------------------------------

def test_help_paragraphs_have_no_stray_line_breaks():
    """typer (rich markup) keeps a docstring's line breaks: a paragraph written over several
    source lines shows as lines broken mid-sentence in `tuner --help` and `tuner CMD --help`."""
    import inspect

    from tuner.cli import app

    for info in app.registered_commands:
        name = info.name or info.callback.__name__
        text = inspect.cleandoc(info.help or inspect.getdoc(info.callback) or "")
        paragraphs = text.split("\n\n")
        assert "\n" not in paragraphs[0], (name, paragraphs[0])  # the line in `tuner --help`
        if info.callback.__module__ in ("tuner.cli.doctor", "tuner.cli.nightly", "tuner.cli.dashboard"):
            assert not [p for p in paragraphs if "\n" in p], (name, paragraphs)
    wide = run_tuner("--help", env=tuner_env(COLUMNS="200"))
    assert wide.returncode == 0
    doctor = next(line for line in wide.stdout.splitlines() if "│ doctor " in line)
    assert "(exit code 1 if stale trials remain)." in doctor
