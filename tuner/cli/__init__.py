"""The ``tuner`` command line. Every command lives in a module of this package; ``main`` turns
user mistakes (:class:`~tuner.errors.TunerError`) into a one-line message and an exit code.

Command modules import only typer, rich and the standard library at the top; Optuna, NumPy,
SQLAlchemy, pydantic and scikit-learn are imported inside the commands that use them, so help
and light commands start fast (``benchmarks/startup.py``)."""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import time
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperCommand

# Importing a command module registers its commands (help lists them in this order).
from tuner.cli import run
from tuner.cli import inspect
from tuner.cli import doctor
from tuner.cli import nightly  # noqa: F401, I001
from tuner.cli import dashboard  # noqa: F401, I001  (tuner dashboard, tuner report)
from tuner.cli import admin  # noqa: F401, I001  (tuner init)
from tuner.cli.app import JSON_ASKED, Command, app, err
from tuner.errors import TunerError


def _reflow(doc: str) -> str:
    """A docstring as help text: its paragraphs as single lines, so the terminal wraps them
    (rich help keeps line breaks: source lines broke mid-sentence in a narrow terminal)."""
    import inspect as _inspect

    return "\n\n".join(" ".join(line.strip() for line in paragraph.splitlines())
                        for paragraph in _inspect.cleandoc(doc).split("\n\n"))


for _command in app.registered_commands:  # flags without a "<bool>" label in help
    if _command.cls in (None, TyperCommand):
        _command.cls = Command
    if _command.help is None and _command.callback is not None and _command.callback.__doc__:
        _command.help = _reflow(_command.callback.__doc__)


def version() -> str:
    """The installed package's version (the source tree's when it is not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("tuner")
    except PackageNotFoundError:
        from tuner import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        print(f"tuner {version()}")
        raise typer.Exit()


@app.callback()
def _before_any_command(
        _version: Annotated[bool, typer.Option(
            "--version", callback=_print_version, is_eager=True, expose_value=True,
            help="Print tuner's version and exit.")] = False) -> None:
    # Runs before every command (click also calls it before `tuner CMD --help` is shown).
    # Command modules import Optuna, NumPy and scikit-learn only when a command runs, so
    # help answers at once.
    if {"--help", "-h"} & set(sys.argv[1:]):
        return
    import optuna

    # tuner reports what matters itself (retries, failures); Optuna's own warnings repeat it
    optuna.logging.set_verbosity(optuna.logging.ERROR)


class _Output:
    """``sys.stdout`` or ``sys.stderr``, except that a reader that goes away (``tuner nightly
    ... | head``, ``tuner run ... 2>&1 | head``) does not stop the work: once a write finds the
    pipe closed, later output is dropped (the descriptor then points at /dev/null, so the
    interpreter's last flush has nothing to say)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.pipe_closed = False

    def write(self, text: str) -> int:
        if not self.pipe_closed:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._drop()
        return len(text)

    def flush(self) -> None:
        if not self.pipe_closed:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._drop()

    def _drop(self) -> None:
        self.pipe_closed = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _CliFormatter(logging.Formatter):
    """``warning: text`` / ``error: text``, the form of the CLI's own messages."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {super().format(record)}"


def _caused_by_ctrl_c(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while handling a KeyboardInterrupt (not ``from None``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, KeyboardInterrupt):
            return True
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return False


def main() -> None:
    if not isinstance(sys.stdout, _Output) and sys.stdout is not None:
        sys.stdout = _Output(sys.stdout)
    if not isinstance(sys.stderr, _Output) and sys.stderr is not None:
        sys.stderr = _Output(sys.stderr)
    # Optuna 5 stores naive UTC in RDB storages and converts with the local zone: pin UTC so
    # workers, dashboards and schedulers on different hosts agree (reference notes 1.2).
    os.environ["TZ"] = "UTC"
    time.tzset()
    # log records read like the CLI's own messages ("warning: ..."), not "WARNING tuner.study: ..."
    handler = logging.StreamHandler()
    handler.setFormatter(_CliFormatter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    # psycopg warns about the clean-up of a statement that failed and was handled (two runners
    # storing the same views: "error ignored terminating <psycopg.Pipeline ...>"): not news
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack
    try:
        app()
    except TunerError as exc:
        # messages quote study-file sections ("[space.optimizers.adam]"): not rich markup
        # one line per message, however long (paths and URLs stay copy-pastable)
        err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
        if exc.hint:
            err.print(f"  [dim]hint:[/] {escape(exc.hint)}", highlight=False, soft_wrap=True)
        if JSON_ASKED:  # a script reading stdout gets a JSON answer either way
            import json

            sys.stdout.write(json.dumps({"error": exc.message, "hint": exc.hint,
                                         "exit_code": exc.exit_code}, indent=2) + "\n")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except SystemExit as exc:  # typer turns Ctrl-C into a silent exit 130
        if exc.code == 130 and _caused_by_ctrl_c(exc):
            err.print("interrupted")
        raise
    except Exception as exc:
        read_only = _read_only_database(exc)
        if not read_only:
            raise  # a bug in tuner: the traceback is what a report needs
        from tuner.storage import READ_ONLY_HINT

        err.print(f"[bold red]error:[/] the SQLite database is read-only: {escape(read_only)}",
                  highlight=False, soft_wrap=True)
        err.print(f"  [dim]hint:[/] {escape(READ_ONLY_HINT)}", highlight=False, soft_wrap=True)
        sys.exit(3)  # StorageError's code


def _read_only_database(exc: BaseException | None) -> str:
    """The message of SQLite's SQLITE_READONLY error behind ``exc`` (through ``raise ... from``
    and SQLAlchemy's ``.orig``: a command that only meant to read, or a file that became
    read-only mid-run), else ``""``. Only an explicit cause counts: a bug raised while such an
    error was being handled keeps its traceback."""
    import sqlite3

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if (isinstance(exc, sqlite3.OperationalError)
                and str(getattr(exc, "sqlite_errorname", "")).startswith("SQLITE_READONLY")):
            return " ".join(str(exc).split())
        exc = getattr(exc, "orig", None) or exc.__cause__
    return ""
