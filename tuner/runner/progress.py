"""Live progress of a run: a refreshing panel on a terminal, one line per trial otherwise."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from tuner.params import with_defaults


@dataclass
class Snapshot:
    """What the display shows; the runner updates it."""

    study: str
    storage: str
    metric: str
    n_trials: int
    workers: int
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    elsewhere: int = 0  # RUNNING in the study but claimed by other runners
    waiting: int = 0
    training: int = 0  # this runner's trials in training
    queued_here: int = 0  # this runner's claimed trials waiting for a worker
    best_value: float | None = None
    best_number: int | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    finished_this_run: int = 0
    started: float = field(default_factory=time.monotonic)
    jobs: list[tuple[int, str, int, int]] = field(default_factory=list)  # number, what, epoch, epochs
    note: str = ""

    @property
    def done(self) -> int:
        return self.complete + self.pruned

    def eta_seconds(self) -> float | None:
        elapsed = time.monotonic() - self.started
        if self.finished_this_run == 0 or elapsed <= 0:
            return None
        return max(0, self.n_trials - self.done) * elapsed / self.finished_this_run


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


class Display:
    """Renders :class:`Snapshot` s. ``live`` is used on a terminal unless ``quiet``."""

    def __init__(self, snapshot: Snapshot, *, console: Console | None = None, quiet: bool = False,
                 live: bool | None = None) -> None:
        self.snap = snapshot
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.live_mode = (self.console.is_terminal if live is None else live) and not quiet
        self._live: Live | None = None
        self._last = 0.0

    def __enter__(self) -> Display:
        if self.live_mode:
            self._live = Live(self._render(), console=self.console, refresh_per_second=4,
                              transient=False)
            self._live.__enter__()
        elif not self.quiet:
            s = self.snap
            self.console.print(f"study {s.study!r} on {s.storage}: {s.done}/{s.n_trials} trials "
                               f"done, {s.workers} worker(s)")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(None, None, None)
            self._live = None

    def refresh(self) -> None:
        now = time.monotonic()
        if self._live is not None and now - self._last >= 0.25:
            self._live.update(self._render())
            self._last = now

    def trial_finished(self, number: int, state: str, value: float | None, params: dict,
                       note: str = "") -> None:
        if self.live_mode or self.quiet:
            self.refresh()
            return
        s = self.snap
        shown = "-" if value is None else f"{value:.4f}"
        what = compact_config(params)
        best = "-" if s.best_value is None else f"{s.best_value:.4f} (#{s.best_number})"
        self.console.print(f"trial {number:>4} {state:<8} {s.metric}={shown:<7} {what}"
                           f"{'  ' + note if note else ''}  [{s.done}/{s.n_trials}, best {best}]",
                           highlight=False)

    def message(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False)

    def _render(self) -> Panel:
        s = self.snap
        elapsed = time.monotonic() - s.started
        head = _packed([
            Text(f"{s.done}/{s.n_trials} done", style="bold"),
            Text(f"complete {s.complete}", style="green"),
            Text(f"pruned {s.pruned}", style="yellow"),
            Text(f"failed {s.failed}", style="red" if s.failed else "dim"),
            Text(_running_text(s)),
            Text(f"elapsed {_fmt_seconds(elapsed)}  ETA {_fmt_seconds(s.eta_seconds())}"),
        ], self.console.width - 4)  # inside the panel's border and padding
        best = Text("best: -") if s.best_value is None else Text(
            f"best {s.metric} = {s.best_value:.4f} (trial #{s.best_number}): "
            + ", ".join(f"{k}={_short(v)}" for k, v in s.best_params.items()), style="bold cyan")
        jobs = Table(show_header=True, header_style="dim", box=None, padding=(0, 1))
        jobs.add_column("trial", no_wrap=True)
        jobs.add_column("configuration", overflow="fold")  # wraps, never cut to "beta…"
        jobs.add_column("epoch", no_wrap=True)
        for number, what, epoch, epochs in s.jobs:
            jobs.add_row(f"#{number}", what, f"{epoch}/{epochs}")
        parts: list[Any] = [head, best]
        if s.jobs:
            parts.append(jobs)
        if s.note:
            parts.append(Text(s.note, style="dim"))
        return Panel(Group(*parts), title=f"tuner run: {s.study}", subtitle=s.storage,
                     border_style="blue")


def _packed(items: list[Text], width: int, gap: str = "  ") -> Text:
    """``items`` on as few lines of ``width`` columns as they fit, never cut inside an item (a
    grid squeezed into 80 columns wrapped each cell into a narrow column of words)."""
    out, used = Text(), 0
    for item in items:
        if used and used + len(gap) + len(item) > width:
            out.append("\n")
            used = 0
        elif used:
            out.append(gap)
            used += len(gap)
        out.append_text(item)
        used += len(item)
    return out


def _running_text(s: Snapshot) -> str:
    """``training 2 · next 2`` (this runner), ``· 3 in other runners`` if any."""
    text = f"training {s.training}" + (f" · next {s.queued_here}" if s.queued_here else "")
    return text + (f" · {s.elsewhere} in other runners" if s.elsewhere > 0 else "")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def compact_config(params: dict[str, Any]) -> str:
    """``adam lr=0.003 bs=64 sqrt warmup=1 cosine``: a configuration on one line."""
    params = with_defaults(params)
    return (f"{params.get('optimizer', '?')} lr={params.get('lr', float('nan')):.3g} "
            f"bs={params['batch_size']} {params['batch_scaling']} "
            f"warmup={params['warmup_epochs']:g} {params['decay']}")
