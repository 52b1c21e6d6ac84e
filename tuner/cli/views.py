"""Rich tables shared by several commands."""

from __future__ import annotations

import math
from typing import Any

import optuna
from rich.console import Console
from rich.table import Table

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


def config_table(params: dict[str, Any], title: str = "configuration") -> Table:
    table = Table(title=title, show_header=False, title_justify="left", box=None, padding=(0, 2))
    table.add_column("key", style="cyan")
    table.add_column("value")
    for key, value in params.items():
        table.add_row(key, fmt(value, 6) if isinstance(value, float) else str(value))
    return table


def top_table(study: optuna.Study, study_file: Any, k: int) -> Table:
    metric, _ = metric_direction(study)
    table = Table(title=f"top {k} trials", title_justify="left")
    for col in ("#", metric, "optimizer", "lr (ref)", "peak lr", "batch", "scaling", "warmup",
                "decay", "extra"):
        table.add_column(col, justify="right" if col in ("#", metric, "lr (ref)", "peak lr",
                                                        "batch", "warmup") else "left")
    for trial in results.top_trials(study, k):
        p = resolved_params(trial, study_file)
        searched = flat_params(trial, study_file)  # 'extra' lists what the study file sets
        shown = {"optimizer", "lr", "batch_size", "batch_scaling", "warmup_epochs", "decay",
                 "base_batch_size", "loss"}
        extra = ", ".join(f"{key}={fmt(v, 3)}" for key, v in searched.items()
                          if key not in shown and not isinstance(v, list))
        table.add_row(str(trial.number), fmt(trial.value), str(p.get("optimizer")),
                      fmt(p.get("lr"), 3), fmt(trial.user_attrs.get("peak_lr"), 3),
                      str(p.get("batch_size")), str(p.get("batch_scaling")),
                      fmt(p.get("warmup_epochs"), 2), str(p.get("decay")), extra)
    return table


def group_table(study: optuna.Study, study_file: Any, key: str) -> Table:
    metric, _ = metric_direction(study)
    table = Table(title=f"best {metric} per {key}", title_justify="left")
    for col in (key, "best", "trial", "median", "IQR", "complete", "pruned", "diverged"):
        table.add_column(col, justify="left" if col == key else "right")
    for g in results.best_by(study, key, study_file):
        table.add_row(str(g.value), fmt(g.best), "-" if g.best_trial < 0 else f"#{g.best_trial}",
                      fmt(g.median), f"{fmt(g.q25)}-{fmt(g.q75)}", str(g.n), str(g.pruned),
                      str(g.diverged))
    return table


def importance_table(imp: dict[str, float]) -> Table:
    table = Table(title="parameter importances (PED-ANOVA)", title_justify="left")
    table.add_column("parameter")
    table.add_column("importance", justify="right")
    table.add_column("")
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
        for key in results.GROUP_KEYS:
            table = group_table(study, study_file, key)
            if table.row_count:
                console.print(table)
    if show_importances:
        imp = results.importances(study)
        if imp:
            console.print(importance_table(imp))


def plain_top_table(study: optuna.Study, k: int) -> Table:
    """Top trials of a study not made by tuner: number, value and parameters."""
    metric, _ = metric_direction(study)
    table = Table(title=f"top {k} trials", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column(metric, justify="right")
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
    table = Table(title=f"Pareto-optimal trials ({len(front)}, first {min(top, len(front))})",
                  title_justify="left")
    table.add_column("#", justify="right")
    for i, direction in enumerate(directions):
        table.add_column(f"value {i} ({direction[:3]})", justify="right")
    table.add_column("parameters")
    for trial in front[:top]:
        table.add_row(str(trial.number), *[fmt(v) for v in trial.values],
                      ", ".join(f"{k}={fmt(v, 3)}" for k, v in trial.params.items()))
    console.print(table)
