"""Storage URLs: which one to use, how to show it (password masked), what kind it is."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from tuner.errors import StorageError

DEFAULT_URL = "sqlite:///tuner.db"
ENV_VAR = "TUNER_STORAGE"
SUPPORTED = "sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"
ESCAPE_HINT = "percent-encode @ : / in the password (@ as %40, : as %3A, / as %2F)"


def resolve_url(cli_url: str | None = None, file_url: str | None = None) -> str:
    """The storage to use: ``--storage``, else ``$TUNER_STORAGE``, else the study file's
    ``study.storage``, else the embedded SQLite file ``./tuner.db``. An empty ``--storage`` is
    an error, not the default: it is what ``--storage "$TUNER_STORAGE"`` pasted from a hint
    becomes when the variable is not set, and falling back would open another database."""
    if cli_url is not None and not cli_url.strip():
        raise StorageError("--storage is empty (an unset $TUNER_STORAGE?)",
                           hint=f"export {ENV_VAR}='<the storage URL, with its password>' first, "
                                f"or drop --storage to use {DEFAULT_URL} in this folder")
    url = cli_url or os.environ.get(ENV_VAR) or file_url or DEFAULT_URL
    return normalize_url(url)


def normalize_url(url: str) -> str:
    """Validate ``url`` and pin PostgreSQL URLs to the psycopg 3 driver. An in-memory SQLite
    database is refused: it lives and dies with one connection of one process, so a study in it
    would vanish (and the runner's own connections would not even see each other's tables)."""
    parsed = parse(url)
    if is_in_memory(parsed):
        raise StorageError(f"{_scrub_free_text(url)} is an in-memory SQLite database: a study there would "
                           "be lost when the command ends",
                           hint="use a file, e.g. sqlite:///tuner.db (the default), or PostgreSQL")
    if parsed.get_backend_name() == "postgresql":
        # libpq would pick one itself (the user's name), unless a service file names it
        if not parsed.database and not {"dbname", "service"} & set(parsed.query):
            raise StorageError(f"{mask_url(url)} names no database",
                               hint="add one after the host, e.g. "
                                    "postgresql+psycopg://USER:PASS@HOST:5432/tuner")
        if parsed.get_driver_name() != "psycopg":
            parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def parse(url: str) -> URL:
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if _ambiguous(url):
        raise StorageError(f"malformed database URL {_scrub_free_text(url)}: '@' appears more "
                           "than once before the host", hint=ESCAPE_HINT)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        path = "://" not in url and not any(c in url for c in "@:?") and bool(url.strip())
        raise StorageError(f"not a valid database URL: {_scrub_free_text(url)!r}",
                           hint=f"did you mean sqlite:///{os.path.expanduser(url)}? (a SQLite file is "
                                "named by a URL: "
                                "sqlite:///relative/path.db, sqlite:////absolute/path.db)" if path
                           else f"use {SUPPORTED}; {ESCAPE_HINT}") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StorageError(f"unsupported storage {parsed.get_backend_name()!r} in "
                           f"{mask_url(url)}", hint=f"use {SUPPORTED}")
    return parsed


# query parameters that carry a secret: libpq takes ``password`` and ``sslpassword`` in the URL
# query too (``?password=...``); anything named like a secret is masked as well
SECRET_QUERY_KEYS = ("password", "sslpassword")
_SECRET_KEY = re.compile(r"pass|secret|token", re.IGNORECASE)


def _secret_key(key: str) -> bool:
    return key.lower() in SECRET_QUERY_KEYS or bool(_SECRET_KEY.search(key))


def mask_url(url: str) -> str:
    """``url`` with its password (in the user part or in the query, ``?password=``) replaced by
    ``***`` (safe to print and log)."""
    if _ambiguous(url):
        return _scrub_free_text(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return _scrub_free_text(url)
    secret = [k for k in parsed.query if _secret_key(k)]
    if secret:
        parsed = parsed.update_query_dict({k: "***" for k in secret})
    return parsed.render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


def has_password(url: str) -> bool:
    """Whether ``url`` carries a password (user part or query): printing it needs ``***``."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return True  # cannot tell: assume so
    return bool(parsed.password) or any(_secret_key(k) for k in parsed.query)


def _ambiguous(url: str) -> bool:
    """More than one ``@`` in a server URL (before its query): make_url would take part of the
    password for the host name (an unescaped ``@`` in the password)."""
    if url.startswith("sqlite"):
        return False  # a file path may hold any number of '@'
    return url.partition("://")[2].split("?", 1)[0].count("@") > 1


def scrub(text: str, url: str) -> str:
    """Remove ``url``'s password (user part or query) from ``text`` (error messages from
    drivers)."""
    secrets: list[str] = []
    try:
        parsed = make_url(url)
        secrets = [str(parsed.password or "")]
        for key, value in parsed.query.items():
            if _secret_key(key):
                secrets += [value] if isinstance(value, str) else list(value)
    except (ArgumentError, ValueError):
        pass
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return _scrub_free_text(text)


_TOKEN = re.compile(r"""[^\s'"<>()]+@[^\s'"<>()]*""")
_SCHEME = re.compile(r"[A-Za-z][\w+.-]*(?::/+|//+)")  # postgresql://, also postgresql:/ and //


def _mask_userinfo(token: str) -> str:
    """``token`` (a URL, maybe malformed) with everything between the user's ``:`` and the
    last ``@`` masked: ``postgresql:/u:se/cr@t@h/db`` -> ``postgresql:/u:***@h/db``."""
    before, _, after = token.rpartition("@")
    scheme = _SCHEME.search(before)
    start = scheme.end() if scheme else 0
    user, colon, _ = before[start:].partition(":")
    return f"{before[:start]}{user}:***@{after}" if colon else token


def _scrub_free_text(text: str) -> str:
    """Mask ``user:PASSWORD@`` in any URL in ``text`` (the password runs to the last ``@`` of
    the URL, so one with an unescaped ``@`` or ``/`` is masked whole, as are malformed URLs:
    ``postgresql//u:p@h``, ``postgresql:/u:p@h``, ``u:p@h/db``), and the value of any
    ``password=`` / ``sslpassword=`` (URL query or libpq ``key=value`` string)."""
    text = _TOKEN.sub(lambda m: _mask_userinfo(m.group(0)), text)
    return re.sub(r"(\b[\w-]*(?:pass|secret|token)[\w-]*=)('[^']*'|[^&\s'\"]+)", r"\1***",
                  text, flags=re.IGNORECASE)


def is_in_memory(parsed: URL) -> bool:
    """``sqlite://``, ``sqlite:///:memory:`` or a ``file::memory:`` / ``mode=memory`` URI."""
    if parsed.get_backend_name() != "sqlite":
        return False
    database = parsed.database or ""
    return (database in ("", ":memory:") or database.startswith("file::memory:")
            or parsed.query.get("mode") == "memory" or "mode=memory" in database)


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (``None`` for in-memory databases)."""
    parsed = parse(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser().resolve()


def describe(url: str) -> str:
    """A short, password-free description: ``SQLite /abs/tuner.db`` or ``PostgreSQL u@h:p/db``."""
    parsed = parse(url)
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite {sqlite_path(url) or ':memory:'}"
    host = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
    return f"PostgreSQL {parsed.username or ''}{'@' if parsed.username else ''}{host}/{parsed.database}"


def storage_flag(url: str) -> str:
    """`` --storage URL`` for a follow-up command hint, or ``""`` when that command would find
    ``url`` by itself ($TUNER_STORAGE or the default ./tuner.db). A URL with a password is never
    printed, and a masked one (``:***@``) could not be pasted: the hint then reads
    ``--storage "$TUNER_STORAGE"`` (see :func:`storage_note`)."""
    if _found_by_itself(url):
        return ""
    if has_password(url):
        return f' --storage "${ENV_VAR}"'
    return f" --storage {shlex.quote(url)}"


def _found_by_itself(url: str) -> bool:
    """Whether a command without --storage would open ``url`` ($TUNER_STORAGE or the default;
    not when $TUNER_STORAGE is itself invalid: it was overridden with --storage)."""
    try:
        return url == resolve_url()
    except StorageError:
        return False


def storage_note(url: str) -> str:
    """What a hint with :func:`storage_flag` needs said once: how to set ``$TUNER_STORAGE``
    when the URL has a password (``""`` otherwise)."""
    if _found_by_itself(url) or not has_password(url):
        return ""
    return f"(first `export {ENV_VAR}='<the storage URL, with its password>'`)"


def upgrade_hint(url: str) -> str:
    """How to upgrade the Optuna schema of storage ``url``: back it up, ``optuna storage
    upgrade`` (naming the URL as the user gave it: ``"$TUNER_STORAGE"``, never a masked
    password that would not connect), then ``tuner init``."""
    if os.environ.get(ENV_VAR):
        target = f'"${ENV_VAR}"'
    else:
        target = f"'{mask_url(url)}'" + (" (with the real password)" if has_password(url) else "")
    backup = "copy the file" if sqlite_path(url) is not None else "pg_dump, see docs/deploy.md"
    return (f"back the database up first ({backup}), then run `optuna storage upgrade --storage "
            f"{target}` with this Optuna version, then `tuner init` again")
