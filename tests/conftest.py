"""Shared fixtures: real SQLite files, a fresh PostgreSQL database per test, the CLI as a real
subprocess.

PostgreSQL is found through ``TUNER_TEST_POSTGRES_URL`` (an admin URL, e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``; that default is tried when the variable
is unset). Each test gets its own database, dropped afterwards, so tests never see each other's
studies. Without a reachable server the PostgreSQL tests are skipped with the reason, except
under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import sqlalchemy

REPO = Path(__file__).resolve().parents[1]
STUDIES = REPO / "studies"
DEFAULT_PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
IN_CI = os.environ.get("CI", "").lower() == "true"


def _pg_admin_url() -> str:
    return os.environ.get("TUNER_TEST_POSTGRES_URL", DEFAULT_PG_ADMIN)


def _pg_unavailable_reason() -> str | None:
    url = _pg_admin_url()
    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
        engine.dispose()
    except Exception as exc:  # any failure means "not reachable"
        return f"PostgreSQL not reachable at TUNER_TEST_POSTGRES_URL ({type(exc).__name__}: " \
               f"{str(exc).splitlines()[0][:200]})"
    return None


_PG_REASON: list[str | None] = []


def pg_reason() -> str | None:
    if not _PG_REASON:
        _PG_REASON.append(_pg_unavailable_reason())
    return _PG_REASON[0]


def _admin_engine() -> sqlalchemy.engine.Engine:
    return sqlalchemy.create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")


def create_pg_database(prefix: str = "tuner_test") -> str:
    """Create a fresh database; returns its psycopg URL."""
    reason = pg_reason()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = _admin_engine()
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return sqlalchemy.engine.make_url(_pg_admin_url()).set(
        drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    name = sqlalchemy.engine.make_url(url).database
    engine = _admin_engine()
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> "
            "pg_backend_pid()"), {"n": name})
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
    engine.dispose()


@pytest.fixture
def pg_url():
    """A fresh, empty PostgreSQL database for this test."""
    url = create_pg_database()
    yield url
    drop_pg_database(url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file in this test's temporary folder."""
    return f"sqlite:///{tmp_path / 'tuner.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path):
    """Each test runs once on a SQLite file and once on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tuner.db'}"
    else:
        url = create_pg_database()
        yield url
        drop_pg_database(url)


def tuner_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TUNER_STORAGE"}
    env.update({"TZ": "UTC", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def flat(text: str) -> str:
    """``text`` with every run of whitespace (line wraps included) as one space."""
    return " ".join(text.split())


def run_tuner(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
              timeout: float = 300, check: bool | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m tuner ARGS`` as a real subprocess and capture its output."""
    proc = subprocess.run([sys.executable, "-m", "tuner", *map(str, args)], cwd=cwd,
                          env=env or tuner_env(), capture_output=True, text=True, timeout=timeout)
    if check is True and proc.returncode != 0:
        raise AssertionError(f"tuner {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def write_study(path: Path, *, name: str = "t", n_trials: int = 6, epochs: int = 5,
                extra_study: str = "", space: str | None = None, data: str | None = None,
                model: str = "") -> Path:
    """A small, fast study file on digits for tests."""
    path.write_text(f"""
[study]
name = "{name}"
n_trials = {n_trials}
seed = 0
{extra_study}

[data]
{data or 'dataset = "digits"'}

[model]
epochs = {epochs}
{model}

[space]
{space or '''optimizer = ["sgd", "momentum", "adam"]
lr = {low = 1e-3, high = 0.5, log = true}
batch_size = [64, 128]
decay = ["constant", "cosine"]'''}
""")
    return path


def descendants(*roots: int) -> list[int]:
    """Every live process below ``roots`` (children, grandchildren, ...), from /proc."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], list(roots)
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parent.items() if pp == pid]
        found += kids
        frontier += kids
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bindir() -> Path | None:
    """The folder of the PostgreSQL server programs (initdb, pg_ctl), if installed."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    return None


class PrivatePostgres:
    """A PostgreSQL server that a test starts, stops and restarts itself (``initdb`` and
    ``pg_ctl`` in a temporary folder, as the ``postgres`` OS user when the tests run as root,
    since initdb refuses root), on a free port of 127.0.0.1. Trust authentication, or
    scram-sha-256 for user ``postgres`` with ``password``. Skips the test when it cannot."""

    def __init__(self, *, password: str | None = None) -> None:
        bindir = pg_bindir()
        if bindir is None:
            pytest.skip("no PostgreSQL server programs (initdb) to start a private server")
        self.folder = Path(tempfile.mkdtemp(prefix="tuner-pg-"))
        as_postgres: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                pytest.skip("running as root without runuser: initdb refuses to run as root")
            shutil.chown(self.folder, "postgres", "postgres")
            as_postgres = ["runuser", "-u", "postgres", "--"]
        auth = ["--auth=trust"]
        if password is not None:
            pwfile = self.folder / "pw"
            pwfile.write_text(password + "\n")
            if as_postgres:
                shutil.chown(pwfile, "postgres")
            auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        self.port = free_port()
        data = self.folder / "data"
        init = subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                               "-N", *auth], capture_output=True, text=True)
        if init.returncode != 0:
            self.close()
            pytest.skip(f"initdb failed: {init.stderr.strip()[:300]}")
        self._ctl = [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-l",
                     str(self.folder / "log"), "-w", "-o",
                     f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"]
        self._started = False

    def pg_ctl(self, *args: str) -> None:
        """``pg_ctl start``, ``pg_ctl stop -m fast``, ... on this server."""
        subprocess.run([*self._ctl, *args], check=True, capture_output=True, timeout=60)
        self._started = True

    def close(self) -> None:
        if self._started:
            subprocess.run([*self._ctl, "stop", "-m", "immediate"], capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)
