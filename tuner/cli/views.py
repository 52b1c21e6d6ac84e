"""Rich tables shared by several commands."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from rich.console import Console, ConsoleOptions, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from tuner import params as P
from tuner import results
from tuner.study import (
    ATTR_METRIC,
    flat_params,
    is_multi_objective,
    metric_direction,
    resolved_params,
)


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        # significant digits below 0.1 (0.00351 stays 0.00351, not 0.004), fixed above
        return f"{value:.{digits}g}" if 0 < abs(value) < 0.1 or abs(value) >= 1e4 \
            else f"{value:.{digits}f}"
    return str(value)


@dataclass
class _Col:
    header: str
    justify: str
    key: bool
    drop: int
    kwargs: dict[str, Any] = field(default_factory=dict)


class FitTable:
    """A rich :class:`~rich.table.Table` that fits the terminal instead of squeezing every column
    to ``0.96…``: built for the width it is printed at.

    * ``key`` columns (names, dates, trial numbers, values) never shrink: they are as wide as
      their longest cell and never wrap (a name longer than the whole terminal folds, never
      ``…``); their header may wrap.
    * other columns fold (wrap, then break long words) rather than end in ``…``;
    * when the columns cannot all fit without cutting words, those with the highest ``drop``
      (> 0) go first, until the rest fits. ``drop=0`` columns always stay. A caption under the
      table names the columns left out (a reader must not take a missing column for none).

    Same interface as ``Table`` for what tuner uses: ``add_column``, ``add_row``,
    ``row_count``."""

    def __init__(self, **table_kwargs: Any) -> None:
        self.table_kwargs = table_kwargs
        self.columns: list[_Col] = []
        self.rows: list[tuple[Any, ...]] = []

    def add_column(self, header: str = "", *, justify: str = "left", key: bool = False,
                   drop: int = 0, **kwargs: Any) -> None:
        self.columns.append(_Col(header, justify, key, drop, kwargs))

    def add_row(self, *cells: Any) -> None:
        self.rows.append(cells)

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def dropped(self, console: Console, width: int | None = None) -> list[str]:
        """The headers of the columns left out at ``width`` (default: the console's)."""
        kept = self._fit(console, console.options.update_width(width or console.width))[1]
        return [c.header for i, c in enumerate(self.columns) if i not in kept]

    def build(self, console: Console, options: ConsoleOptions) -> Table:
        return self._fit(console, options)[0]

    def _fit(self, console: Console, options: ConsoleOptions) -> tuple[Table, list[int]]:
        """The table for ``options.max_width`` and the columns it kept. Column widths are set
        here rather than by rich (which, short of room, narrows every column alike): a key
        column gets its longest cell, the others at least their longest word and a share of
        what is left in proportion to what they would need on one line."""
        unbounded = options.update_width(100_000)  # Measurement.get caps at the width
        sizes = [self._sizes(console, unbounded, i) for i in range(len(self.columns))]
        kept = list(range(len(self.columns)))
        while True:
            table = self._table(kept)
            room = options.max_width - _frame_width(table)
            need = sum(sizes[i][0] for i in kept)
            droppable = [i for i in kept if self.columns[i].drop > 0]
            if need <= room or not droppable:
                break
            kept.remove(max(droppable, key=lambda i: (self.columns[i].drop, i)))
        if need > room:  # even the columns that always stay are too wide: let them fold
            table = self._table(kept, fold_keys=True)
        hidden = [" ".join(self.columns[i].header.split()) or "(untitled)"
                  for i in range(len(self.columns)) if i not in kept]
        if hidden:
            table.caption = (f"not shown at {options.max_width} columns: {', '.join(hidden)} "
                             "(widen the terminal, or use --json)")
            table.caption_justify, table.caption_style = "left", "dim"
        if need <= room < sum(sizes[i][1] for i in kept):
            spare = room - need
            wanted = {i: sizes[i][1] - sizes[i][0] for i in kept if not self.columns[i].key}
            total = sum(wanted.values()) or 1
            extra = {i: spare * w // total for i, w in wanted.items()}
            for i in sorted(wanted, key=lambda i: -wanted[i])[:spare - sum(extra.values())]:
                extra[i] += 1  # the rounding remainder
            for column, i in zip(table.columns, kept, strict=True):
                column.width = sizes[i][0] + extra.get(i, 0)
        return table, kept

    def _sizes(self, console: Console, options: ConsoleOptions, i: int) -> tuple[int, int]:
        """The least and the natural content width of column ``i``: a key column needs its
        longest cell whole (its header may wrap); another, its longest word."""
        col = self.columns[i]
        cells = [console.render_str(c) if isinstance(c, str) else c
                 for c in (row[i] if i < len(row) else None for row in self.rows) if c is not None]
        found = [Measurement.get(console, options, c) for c in cells]
        header = Measurement.get(console, options, Text(col.header))
        natural = max([m.maximum for m in found] + [header.maximum])
        if col.key:
            least = max([m.maximum for m in found] + [header.minimum])
            return least, natural
        return max([m.minimum for m in found] + [header.minimum]), natural

    def _table(self, kept: list[int], fold_keys: bool = False) -> Table:
        """The table of the ``kept`` columns; ``fold_keys``: key cells fold too (rich would cut
        a cell that must stay on one line: ``0.9554`` shown as ``0.955``)."""
        table = Table(**self.table_kwargs)
        for i in kept:
            col = self.columns[i]
            kwargs = {"overflow": "fold", **col.kwargs}
            header: Any = col.header
            if col.key and not fold_keys:  # the cells stay on one line
                kwargs["no_wrap"] = True
                header = Text(col.header, no_wrap=False, overflow="fold")  # the header may wrap
            table.add_column(header, justify=col.justify, **kwargs)  # type: ignore[arg-type]
        for row in self.rows:
            table.add_row(*[row[i] if i < len(row) else None for i in kept])
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.build(console, options)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.build(console, options))


def done_of(done: int, target: int, unit: str = "") -> str:
    """``12/50 done`` (``unit="trials "``: ``12/50 trials done``); ``17 done (target 5)`` when
    earlier runs went past a target lowered since (``17/5`` read as a broken count)."""
    if done <= target:
        return f"{done}/{target} {unit}done"
    return f"{done} {unit}done (target {target})"


def _frame_width(table: Table) -> int:
    """What ``table`` adds to its columns' contents: borders and cell padding."""
    _top, right, _bottom, left = table.padding
    n = len(table.columns)
    pads = (left + right) * n - ((left + right) if not table.pad_edge and n else 0)
    borders = ((2 if table.show_edge else 0) + max(n - 1, 0)) if table.box else 0
    return pads + borders


def config_table(params: dict[str, Any], title: str = "configuration") -> FitTable:
    table = FitTable(title=title, show_header=False, title_justify="left", box=None, padding=(0, 2))
    table.add_column("key", style="cyan", key=True)
    table.add_column("value")
    order = {key: i for i, key in enumerate(P.PARAMS)}  # the catalogue's: optimizer, lr, ...
    for key in sorted(params, key=lambda k: order.get(k, len(order))):
        value = params[key]
        table.add_row(key, f"{value:.6g}" if isinstance(value, float) else fmt(value))
    return table


def searched_keys(study_file: Any) -> set[str]:
    """The training keys the study file searches (a choice or a range, not a fixed value)."""
    space = getattr(study_file, "space", None)
    return {key for key, dim in (space.general if space else {}).items() if dim.kind != "fixed"}


def _fixed(study_file: Any, key: str, params: dict[str, Any]) -> bool:
    """Whether the study file fixes ``key`` (for the optimizer and decay in ``params``)."""
    space = getattr(study_file, "space", None)
    if space is None:
        return False
    dim = (space.general.get(key) or space.optimizers.get(params.get("optimizer"), {}).get(key)
           or space.decays.get(params.get("decay"), {}).get(key))
    return dim is not None and dim.kind == "fixed"


def group_keys(study_file: Any) -> tuple[str, ...]:
    """The keys ``tuner show`` breaks the best value down by: optimizer, decay and scaling rule,
    and the loss when the study searches it."""
    return results.GROUP_KEYS + (("loss",) if "loss" in searched_keys(study_file) else ())


def top_table(study: optuna.Study, study_file: Any, k: int) -> FitTable:
    metric, _ = metric_direction(study)
    shown = {"optimizer", "lr", "batch_size", "batch_scaling", "warmup_epochs", "decay",
             "base_batch_size"} | ({"loss"} - searched_keys(study_file))
    rows = []
    for trial in results.top_trials(study, k):
        p = resolved_params(trial, study_file)
        searched = flat_params(trial, study_file)  # 'extra': what the study file searches
        extra = ", ".join(f"{key}={fmt(v, 3)}" for key, v in searched.items()
                          if key not in shown and not isinstance(v, list)
                          and not _fixed(study_file, key, p))
        rows.append((str(trial.number), fmt(trial.value), str(p.get("optimizer")),
                     fmt(p.get("lr"), 3), fmt(trial.user_attrs.get("peak_lr"), 3),
                     str(p.get("batch_size")), str(p.get("batch_scaling")),
                     "-" if p.get("warmup_epochs") is None else f"{p['warmup_epochs']:.3g}",
                     str(p.get("decay")), extra))
    table = FitTable(title=f"top {k} trials", title_justify="left")
    # key: never shrink; drop: left out first (highest) when the terminal is too narrow; the
    # extra column only when some trial has something in it
    columns = (("#", True, 0), (metric, True, 0), ("optimizer", True, 0),
               ("lr (ref)", True, 0), ("peak lr", True, 4), ("batch", True, 2),
               ("scaling", False, 3), ("warmup", False, 5), ("decay", False, 1),
               ("extra", False, 0))
    if not any(row[-1] for row in rows):
        columns, rows = columns[:-1], [row[:-1] for row in rows]
    for col, key, drop in columns:
        table.add_column(col, key=key, drop=drop,
                         justify="right" if col in ("#", metric, "lr (ref)", "peak lr", "batch",
                                                    "warmup") else "left")
    for row in rows:
        table.add_row(*row)
    return table


def group_table(study: optuna.Study, study_file: Any, key: str) -> FitTable:
    metric, _ = metric_direction(study)
    table = FitTable(title=f"best {metric} per {key}", title_justify="left")
    for col, drop in ((key, 0), ("best", 0), ("trial", 1), ("median", 3), ("IQR", 6),
                      ("complete", 2), ("pruned", 4), ("diverged", 5)):
        table.add_column(col, justify="left" if col == key else "right", key=True, drop=drop)
    for g in results.best_by(study, key, study_file):
        table.add_row(str(g.value), fmt(g.best), "-" if g.best_trial < 0 else f"#{g.best_trial}",
                      fmt(g.median), "-" if g.n == 0 else f"{fmt(g.q25)}-{fmt(g.q75)}", str(g.n),
                      str(g.pruned),
                      str(g.diverged))
    return table


def importance_table(imp: dict[str, float]) -> FitTable:
    table = FitTable(title="parameter importances (PED-ANOVA)", title_justify="left")
    table.add_column("parameter", key=True)
    table.add_column("importance", justify="right", key=True)
    table.add_column("", key=True, drop=1)
    for name, value in imp.items():
        table.add_row(name, f"{value:.3f}", bar(value))
    return table


def bar(fraction: float, width: int = 30) -> str:
    """A horizontal bar of ``fraction`` (0..1) of ``width`` cells, in eighths of a cell: empty
    for 0, at least a sliver for anything above it."""
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    if eighths == 0 and fraction > 0:
        eighths = 1
    return "█" * (eighths // 8) + ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")[eighths % 8]


def study_report(console: Console, study: optuna.Study, study_file: Any, *, top: int = 10,
                 groups: bool = True, show_importances: bool = True) -> None:
    """Best trial, top-k, best per optimizer/decay/scaling rule and importances (for a
    multi-objective study made with Optuna directly: its Pareto front)."""
    metric, direction = metric_direction(study)
    if is_multi_objective(study):
        pareto_report(console, study, top=top)
        return
    try:
        best = study.best_trial
    except ValueError:
        console.print("[yellow]no COMPLETE trial yet[/]")
        note = results.divergence_note(study.get_trials(deepcopy=False))
        if note:
            console.print(escape(note), style="yellow", highlight=False)
        return
    foreign = study_file is None and ATTR_METRIC not in study.user_attrs
    if foreign:  # made with Optuna directly: no training configuration to break down
        console.print(f"[yellow]not created by tuner[/]: [bold]best trial #{best.number}[/]: "
                      f"{metric} = [bold green]{fmt(best.value)}[/] ({direction})")
        console.print(config_table(dict(best.params), title="best parameters"))
        console.print(plain_top_table(study, top))
    else:
        console.print(f"[bold]best trial #{best.number}[/]: {metric} = [bold green]{fmt(best.value)}"
                      f"[/] ({direction}), effective peak lr {fmt(best.user_attrs.get('peak_lr'), 4)}")
        console.print(config_table(flat_params(best, study_file), title="best configuration"))
        console.print(top_table(study, study_file, top))
    if groups and not foreign:
        for key in group_keys(study_file):
            table = group_table(study, study_file, key)
            if table.row_count:
                console.print(table)
    if show_importances:
        imp = results.importances(study)
        if imp:
            console.print(importance_table(imp))
        elif not foreign:
            n = len(results.completed(study))
            console.print(f"parameter importances: after {results.MIN_IMPORTANCE_TRIALS} COMPLETE "
                          f"trials ({n} so far)" if n < results.MIN_IMPORTANCE_TRIALS else
                          "parameter importances: none (the searched parameters are not shared by "
                          "every COMPLETE trial, or do not vary)", style="dim", highlight=False)


def plain_top_table(study: optuna.Study, k: int) -> FitTable:
    """Top trials of a study not made by tuner: number, value and parameters."""
    metric, _ = metric_direction(study)
    table = FitTable(title=f"top {k} trials", title_justify="left")
    table.add_column("#", justify="right", key=True)
    table.add_column(metric, justify="right", key=True)
    table.add_column("parameters")
    for trial in results.top_trials(study, k):
        table.add_row(str(trial.number), fmt(trial.value),
                      ", ".join(f"{key}={fmt(v, 3)}" for key, v in trial.params.items()))
    return table


def pareto_report(console: Console, study: optuna.Study, *, top: int = 10) -> None:
    """A multi-objective study (not made by tuner): its directions and Pareto-optimal trials."""
    directions = [d.name.lower() for d in study.directions]
    console.print(f"[yellow]multi-objective study ({len(directions)} objectives: "
                  f"{', '.join(directions)}), not created by tuner:[/] it has no single best trial")
    front = sorted(study.best_trials, key=lambda t: t.number)
    if not front:
        console.print("[yellow]no COMPLETE trial yet[/]")
        return
    table = FitTable(title=f"Pareto-optimal trials ({len(front)}, first {min(top, len(front))})",
                     title_justify="left")
    table.add_column("#", justify="right", key=True)
    for i, direction in enumerate(directions):
        table.add_column(f"value {i} ({direction[:3]})", justify="right", key=True)
    table.add_column("parameters")
    for trial in front[:top]:
        table.add_row(str(trial.number), *[fmt(v) for v in trial.values],
                      ", ".join(f"{k}={fmt(v, 3)}" for k, v in trial.params.items()))
    console.print(table)
