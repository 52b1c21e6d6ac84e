"""The ``tuner`` command-line application object and the options its commands share."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup


def _flags_take_no_value(command: TyperCommand | TyperGroup, ctx: Any) -> None:
    """typer 0.29 labels every flag ``<bool>`` in help, as if it took a value: a flag takes
    none, so it gets an empty label."""
    for param in command.get_params(ctx):
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


class _FlagsTakeNoValue:
    """Help that shows flags without a value label."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _flags_take_no_value(self, ctx)  # type: ignore[arg-type]
        super().format_help(ctx, formatter)  # type: ignore[misc]


class Command(_FlagsTakeNoValue, TyperCommand):
    """A tuner command."""


class _Group(_FlagsTakeNoValue, TyperGroup):
    """The tuner command group."""


app = typer.Typer(
    cls=_Group,
    name="tuner",
    help="Find the optimizer, learning rate, warmup, decay and batch-size scaling rule that train "
         "a linear classifier best, with Optuna, stored in SQLite or PostgreSQL.\n\n"
         "Start with: tuner run studies/digits.toml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

out = Console()
err = Console(stderr=True)
for _console in (out, err):
    if not _console.is_terminal and "COLUMNS" not in os.environ:  # piped or logged (cron mail)
        _console.soft_wrap = True  # lines are not broken
        _console.width = 200  # tables: rich's 80 columns would cut values to "0.95…"

# no word longer than the narrowest help column at 80 columns (rich cuts it with an ellipsis)
_STORAGE_HELP = ("Database URL: sqlite:///PATH, or postgresql+psycopg:// followed by "
                 "USER:PASS@HOST:PORT/DB ")
StorageOpt = Annotated[str | None, typer.Option(
    "--storage", "-s", envvar="TUNER_STORAGE", show_envvar=True,
    help=_STORAGE_HELP + "\\[default: sqlite:///tuner.db]")]
# for commands that read a study file, whose study.storage comes before the default
FileStorageOpt = Annotated[str | None, typer.Option(
    "--storage", "-s", envvar="TUNER_STORAGE", show_envvar=True,
    help=_STORAGE_HELP + "\\[default: the study file's study.storage, else sqlite:///tuner.db]")]
#: Whether the running command was given --json (its errors are then JSON on stdout too).
JSON_ASKED: list[bool] = []


def _json_asked(value: bool) -> bool:
    if value:
        JSON_ASKED.append(True)
    return value


JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.",
                                       callback=_json_asked)]
StudyArg = Annotated[str, typer.Argument(help="Study name (see `tuner ls`).")]
StudyFileArg = Annotated[Path, typer.Argument(help="Study file, e.g. studies/digits.toml.",
                                              show_default=False)]


def open_existing(storage: str | None) -> tuple[Any, str]:
    """The storage ``--storage`` names (resolved as usual), opened for reading: a SQLite file
    must already exist (never create an empty one). Returns it and its URL."""
    from tuner.storage import open_storage, resolve_url

    url = resolve_url(storage)
    return open_storage(url, must_exist=True), url


def storage_flag(url: str) -> str:
    """:func:`tuner.storage.urls.storage_flag`, imported when used (``--help`` loads no
    storage libraries)."""
    from tuner.storage.urls import storage_flag as flag

    return flag(url)


def storage_note(url: str) -> str:
    """:func:`tuner.storage.urls.storage_note`, imported when used."""
    from tuner.storage.urls import storage_note as note

    return note(url)


def warn(text: str) -> None:
    """A warning on stderr, one line however long (it names files and keys)."""
    from rich.markup import escape

    err.print(f"[yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)


def names_folder(output: str) -> bool:
    """Whether an ``--output`` value names a folder: an existing one, or a name ending in ``/``."""
    return output.endswith(("/", os.sep)) or Path(output).is_dir()


def output_file(output: str | None, default: str) -> Path:
    """Where a command writes its file: ``output``; or the file name ``default`` in the folder
    ``output`` names (an existing folder, or a name ending in ``/``); by default in the current
    folder. A folder that does not exist is an error, not a file of that name."""
    from tuner.errors import TunerError

    if output is None:
        return Path(default)
    path = Path(output)
    if names_folder(output):
        if not path.is_dir():
            raise TunerError(f"--output {output}: folder {path} does not exist",
                             hint=f"create it first (mkdir -p {path}), or name a file")
        return path / default
    if not path.parent.is_dir():
        raise TunerError(f"cannot write {path}: folder {path.parent} does not exist")
    return path


def print_json(data: Any) -> None:
    """Write ``data`` as JSON on stdout (NaN and infinities become null)."""
    from tuner.jsonsafe import jsonable  # numpy: not loaded for --help
    sys.stdout.write(json.dumps(jsonable(data), indent=2, default=str) + "\n")

