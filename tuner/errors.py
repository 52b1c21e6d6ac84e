"""User-facing errors.

Every mistake a user can make (a broken study file, a bad dataset, an unreachable database)
raises a subclass of :class:`TunerError`. The CLI prints its message, without a traceback, and
exits with :attr:`TunerError.exit_code`. Anything else that escapes is a bug in tuner.
"""

from __future__ import annotations

from collections.abc import Iterable


class TunerError(Exception):
    """An error caused by the user's input or environment, reported without a traceback."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\n  hint: {self.hint}"


#: Names people bring from other tools, and the key tuner calls it.
ALIASES = {"learning_rate": "lr", "learningrate": "lr", "optimiser": "optimizer",
           "optimisers": "optimizers", "scheduler": "decay", "schedule": "decay",
           "lr_schedule": "decay", "warmup": "warmup_epochs", "warmup_steps": "warmup_epochs",
           "bs": "batch_size", "l2": "reg", "lambda": "reg", "weight_decay": "reg"}


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice ``word`` was most likely meant to be (a typo, or another tool's name for
    it), or ``None``."""
    import difflib

    choices = list(choices)
    alias = ALIASES.get(word.lower())
    if alias in choices:
        return alias
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"did you mean X? "`` for :func:`closest`, else ``""`` (to put before a list)."""
    meant = closest(word, choices)
    return f"did you mean {meant}? " if meant else ""


class ConfigError(TunerError):
    """A study file (or a ``--set`` override) is invalid."""


class DataError(TunerError):
    """A dataset cannot be loaded or split. ``key``: the ``[data]`` key the problem is with
    (``dataset``, ``target``), when one is."""

    def __init__(self, message: str, *, hint: str | None = None, key: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.key = key


class StorageError(TunerError):
    """The study storage cannot be reached or used. Messages never contain passwords.

    ``transient`` marks errors worth retrying (a connection that dropped or a server that is
    restarting), as opposed to a wrong URL, password or database name."""

    exit_code = 3

    def __init__(self, message: str, *, hint: str | None = None, transient: bool = False) -> None:
        super().__init__(message, hint=hint)
        self.transient = transient


class StudyNotFoundError(TunerError):
    """A study name does not exist in the storage."""


class LockHeldError(TunerError):
    """Another process holds the lock this command needs (a study runner, a nightly sweep)."""

    exit_code = 75  # EX_TEMPFAIL: try again later
