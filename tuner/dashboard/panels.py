"""The built-in panels of the study dashboard.

Every builder reads the trials once through the shared context (``get_trials(deepcopy=False)``,
one pandas table), aggregates with pandas/numpy, and only touches per-trial learning curves for
the top-k trials, so a 5,000-trial study renders in about a second (``benchmarks/dashboard.py``).
"""

from __future__ import annotations

import copy
import logging
import math
import textwrap
from datetime import UTC, datetime
from typing import Any

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tuner import params as P
from tuner.dashboard.context import FRAME_PARAMS, REFERENCE_MODEL, PanelContext
from tuner.dashboard.registry import Allowed, register_panel

log = logging.getLogger("tuner.dashboard")

SUMMARY_HEADING = "### tuner summary"
GROUP_KEYS = ("optimizer", "decay", "batch_scaling")
#: what trials can be grouped by (summary ``groups``, group_best ``keys``, reference_gap ``by``):
#: the parameters of the trial table
GROUPABLE: tuple[str, ...] = FRAME_PARAMS
LR_AXES = ("auto", "linear", "log")
OPTIMIZER_COLORS = {"sgd": "#1f77b4", "momentum": "#ff7f0e", "nesterov": "#2ca02c",
                    "adagrad": "#d62728", "rmsprop": "#9467bd", "adam": "#8c564b",
                    "adamw": "#e377c2"}
RULE_COLORS = {"none": "#7f7f7f", "linear": "#0072b2", "sqrt": "#e69f00"}
RULE_OFFSETS = {"none": -0.12, "linear": 0.0, "sqrt": 0.12}  # log2 jitter of the batch size
TRIAL_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
                "#e377c2", "#bcbd22", "#7f7f7f")
EXTRA_COLORS = ("#17becf", "#bcbd22", "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a")
OUTCOMES = ("complete", "pruned", "diverged")
OUTCOME_MARKERS = {"complete": ("circle", 7, 0.85), "pruned": ("circle-open", 6, 0.55),
                   "diverged": ("x-thin-open", 8, 0.9)}


# --- helpers -------------------------------------------------------------------------------

def color_for(value: Any, palette: dict[str, str]) -> str:
    if value in palette:
        return palette[value]
    return EXTRA_COLORS[sum(map(ord, str(value))) % len(EXTRA_COLORS)]


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float | np.floating):
        value = float(value)
        if math.isnan(value):
            return "-"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
            return f"{value:.{digits - 1}e}"
        if value != 0 and abs(value) < 0.1:  # significant digits: 0.00351, not 0.0035
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}"
    return str(value)


def style(fig: go.Figure, title: str, *, legend: bool = True) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 16}},
        template="plotly_white", margin={"l": 60, "r": 20, "t": 64, "b": 48},
        showlegend=legend, hoverlabel={"namelength": -1},
        legend={"orientation": "v", "x": 1.01, "y": 1, "font": {"size": 11}, "groupclick": "togglegroup"},
    )
    return fig


def log_ticks(values: list[float | None]) -> dict[str, Any]:
    """Tick values and labels for a log axis over ``values`` that never crowd: powers of ten,
    with 2 and 5 between them only when the data span at most one decade (plotly's own log
    ticks label 2..9 of every decade, which overlap in a short subplot)."""
    finite = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not finite:
        return {}
    low, high = math.floor(math.log10(min(finite))), math.ceil(math.log10(max(finite)))
    high = max(high, low + 1)
    mantissas = (1, 2, 5) if high - low <= 1 else (1,)
    step = max(1, math.ceil((high - low + 1) / 6))
    ticks = [m * 10.0 ** e for e in range(low, high + 1, step if mantissas == (1,) else 1)
             for m in mantissas]
    ticks = [t for t in ticks if 10.0 ** low <= t <= 10.0 ** high]
    return {"tickvals": ticks, "ticktext": [f"{t:g}" for t in ticks], "minor": {"showgrid": False}}


def sig(value: Any, digits: int = 6) -> str:
    """A parameter value: floats with ``digits`` significant digits, the rest as text."""
    if isinstance(value, float | np.floating):
        return "-" if math.isnan(value) else f"{float(value):.{digits}g}"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def empty_figure(title: str, message: str) -> go.Figure:
    """A figure with no data: ``message`` in its middle, in lines that fit a half-width panel."""
    fig = go.Figure()
    fig.add_annotation(text="<br>".join(textwrap.wrap(message, 56)), x=0.5, y=0.5, xref="paper",
                       yref="paper", showarrow=False,
                       font={"size": 14, "color": "#666"})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return style(fig, title, legend=False)


def sample_index(n: int, budget: int) -> np.ndarray:
    """At most ``budget`` evenly spread indices of ``range(n)``, always keeping the last."""
    if n <= budget:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max(budget, 2)).round().astype(int))


def metric_label(ctx: PanelContext) -> str:
    return ctx.metric.replace("_", " ")


def group_stats(ctx: PanelContext, key: str) -> pd.DataFrame:
    """Per value of ``key``: COMPLETE count, best (and its trial), median, quartiles, min, max
    of the metric, and how many PRUNED / diverged trials; best group first."""
    cache = ctx.shared.setdefault("group_stats", {})
    if key in cache:
        return cache[key]
    f = ctx.frame()
    f = f[f[key].notna() & f["state"].isin(("COMPLETE", "PRUNED"))]
    done = f[(f["state"] == "COMPLETE") & np.isfinite(f["value"])]
    g = done.groupby(key, sort=False)["value"]
    best_idx = g.idxmax() if ctx.maximize else g.idxmin()
    stats = pd.DataFrame({
        "n": g.size(), "best": g.max() if ctx.maximize else g.min(),
        "best_trial": done.loc[best_idx.values, "number"].set_axis(best_idx.index),
        "median": g.median(), "q25": g.quantile(0.25), "q75": g.quantile(0.75),
        "lo": g.min(), "hi": g.max()})
    stopped = f[f["state"] == "PRUNED"].groupby(key, sort=False).agg(
        pruned=("number", "size"), diverged=("diverged", "sum"))
    out = stats.join(stopped, how="outer")
    out[["n", "pruned", "diverged"]] = out[["n", "pruned", "diverged"]].fillna(0).astype(int)
    out["best_trial"] = out["best_trial"].fillna(-1).astype(int)
    # equal bests: the group whose best trial came first (as `tuner show` orders them)
    out = out.sort_values(["best", "best_trial"], ascending=[not ctx.maximize, True],
                          na_position="last", kind="stable")
    out.index.name = key
    cache[key] = out
    return out


def accuracy_column(ctx: PanelContext) -> str:
    """The column holding each trial's validation accuracy (the metric itself, or the last
    epoch's accuracy when the study optimizes the loss)."""
    return "value" if ctx.metric == "val_accuracy" else "final_val_accuracy"


# --- summary (markdown) ----------------------------------------------------------------------

def summary(ctx: PanelContext) -> str:
    """Best configuration, counts, reference gap, per-optimizer table and top trials."""
    top_k = ctx.option("top_k", 5, int)
    groups = ctx.option("groups", ["optimizer"], list)
    f = ctx.frame()
    counts = f["state"].value_counts()
    n_div = int(f["diverged"].sum())
    count_text = (f"{len(f)} trials: {counts.get('COMPLETE', 0)} complete, "
                  f"{counts.get('PRUNED', 0)} pruned ({n_div} diverged), {counts.get('FAIL', 0)} failed, "
                  f"{counts.get('RUNNING', 0)} running, {counts.get('WAITING', 0)} waiting")
    direction = "maximize" if ctx.maximize else "minimize"
    lines = [SUMMARY_HEADING, ""]
    done = ctx.complete()
    if done.empty:
        from tuner.results import divergence_note

        lines += [f"Study **{ctx.study.study_name}** ({ctx.metric}, {direction}): no COMPLETE trial "
                  f"yet. {count_text}.", ""]
        note = divergence_note(ctx.trials())
        if note:  # the views below are empty: say why, and what to change
            lines += [f"**{_md(note)}**", ""]
        return "\n".join(lines)
    best = done.iloc[0]
    trial = ctx.trial(int(best["number"]))
    attrs = trial.user_attrs
    lines += [f"**Best trial #{int(best['number'])}**: {ctx.metric} = **{fmt(best['value'])}** "
              f"({direction}) · {count_text}.", ""]
    ref_line = _reference_line(ctx, best)
    if ref_line:
        lines += [ref_line, ""]
    lines += ["| best configuration | value |", "|---|---|"]
    config = attrs.get("config") or dict(trial.params)
    for key, value in config.items():
        lines.append(f"| {key} | {_md(sig(value))} |")
    for key in ("peak_lr", "warmup_steps", "total_steps", "steps_per_epoch"):
        if key in attrs:
            label = "effective peak lr" if key == "peak_lr" else key.replace("_", " ")
            lines.append(f"| *{label}* | {sig(attrs[key])} |")
    lines.append("")
    for key in groups:
        if key not in f.columns:
            continue
        stats = group_stats(ctx, key)
        if stats.empty:
            continue
        lines += [f"| {key} | best {ctx.metric} | trial | median | IQR | complete | pruned | diverged |",
                  "|---|---:|---:|---:|---|---:|---:|---:|"]
        for row in stats.itertuples():
            trial_ref = "-" if row.best_trial < 0 else f"#{row.best_trial}"
            lines.append(f"| {_md(row.Index)} | {fmt(row.best)} | {trial_ref} | {fmt(row.median)} | "
                         f"{_range(row.q25, row.q75)} | {row.n} | {row.pruned} | {row.diverged} |")
        lines.append("")
    if top_k > 0:
        lines += [f"| top {top_k} | {ctx.metric} | optimizer | lr | peak lr | batch | scaling | warmup "
                  "| decay |", "|---|---:|---|---:|---:|---:|---|---:|---|"]
        for row in ctx.top(top_k).itertuples(index=False):
            lines.append(f"| #{row.number} | {fmt(row.value)} | {_md(row.optimizer)} | {sig(row.lr, 3)} | "
                         f"{sig(row.peak_lr, 3)} | {_md(row.batch_size)} | {_md(row.batch_scaling)} | "
                         f"{sig(row.warmup_epochs)} | {_md(row.decay)} |")
        lines.append("")
    return "\n".join(lines)


def _reference_line(ctx: PanelContext, best: pd.Series) -> str | None:
    ref = ctx.reference()
    if ref is None:
        return None
    if "error" in ref:
        return f"Reference (LogisticRegression on the same split): not available ({ref['error']})."
    acc = best[accuracy_column(ctx)]
    if not np.isfinite(acc):
        return None
    gap = (acc - ref["val_accuracy"]) * 100
    return (f"**Reference gap**: best validation accuracy {fmt(acc)} vs {fmt(ref['val_accuracy'])} "
            f"for scikit-learn LogisticRegression on the same split: **{gap:+.2f} points**.")


def _md(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


# --- learning curves --------------------------------------------------------------------------

def learning_curves(ctx: PanelContext) -> go.Figure:
    """Validation accuracy and loss per epoch of the top-k trials, coloured by optimizer."""
    k = ctx.option("top_k", 10, int)
    budget = ctx.option("max_points", 200, int)
    title = f"Learning curves of the top {k} trials"
    top = ctx.top(k)
    if top.empty:
        return empty_figure(title, "no COMPLETE trial yet")
    budget = min(budget, max(20, 40_000 // len(top)))  # many curves: fewer points each, >= 20
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("validation accuracy", "validation loss"))
    seen: set[str] = set()
    last_epoch = 0.0
    for rank, row in enumerate(top.itertuples(index=False)):
        curve = ctx.trial(row.number).user_attrs.get("curve") or {}
        epochs = np.asarray(curve.get("epoch") or [], dtype=float)
        if epochs.size == 0:
            continue
        last_epoch = max(last_epoch, float(epochs.max()))
        idx = sample_index(len(epochs), budget)
        opt = str(row.optimizer)
        color = color_for(opt, OPTIMIZER_COLORS)
        for r, key in ((1, "val_accuracy"), (2, "val_loss")):
            y = np.asarray(curve.get(key) or [math.nan] * len(epochs), dtype=float)
            fig.add_trace(go.Scatter(
                x=epochs[idx], y=y[idx], mode="lines", name=opt, legendgroup=opt,
                showlegend=r == 1 and opt not in seen,
                line={"color": color, "width": 3 if rank == 0 else 1.4},
                opacity=1.0 if rank == 0 else 0.8, meta=[int(row.number), key],
                hovertemplate=f"#{row.number} {opt} ({fmt(row.value)})<br>epoch %{{x}}<br>"
                              f"{key} %{{y:.4f}}<extra></extra>"), row=r, col=1)
        seen.add(opt)
    fig.update_xaxes(title_text="epoch", row=2, col=1)
    fig.update_xaxes(tickformat="d", **({"dtick": 1} if last_epoch <= 12 else {}))  # whole epochs
    style(fig, title + " (thick: best)")
    fig.update_layout(legend_title_text="optimizer")
    return fig


# --- learning-rate schedules ----------------------------------------------------------------

def lr_schedule(ctx: PanelContext) -> go.Figure:
    """The actual learning rate of every update of the top-k trials (warmup and decay as
    trained), above their loss curves on the same step axis."""
    from tuner.train import make_plan

    k = ctx.option("top_k", 5, int)
    points = ctx.option("points", 400, int)
    axis = ctx.option("lr_axis", "auto", str)
    train_loss = ctx.option("train_loss", True, bool)
    title = f"Learning-rate schedule and loss of the top {k} trials"
    top = ctx.top(k)
    if top.empty:
        return empty_figure(title, "no COMPLETE trial yet")
    n_train = (ctx.data_summary() or {}).get("n_train")
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.07,
                        row_heights=[0.45, 0.55],
                        subplot_titles=("learning rate of each update", "loss (solid: validation, dotted: "
                                        "training)" if train_loss else "validation loss"))
    for rank, row in enumerate(top.itertuples(index=False)):
        trial = ctx.trial(row.number)
        attrs = trial.user_attrs
        try:
            params = P.resolve(attrs.get("config") or {})
            spe = attrs.get("steps_per_epoch")
            total = attrs.get("total_steps")
            epochs = total // spe if spe and total else ctx.study_file.model.epochs
            n = n_train or (spe or 1) * int(params["batch_size"])
            plan = make_plan(params, int(n), int(epochs))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.info("trial %s: cannot rebuild its schedule: %s", row.number, exc)
            continue
        steps = schedule_steps(plan, params, points)
        lrs = np.fromiter((plan.schedule(int(t)) for t in steps), dtype=float, count=len(steps))
        color = TRIAL_COLORS[rank % len(TRIAL_COLORS)]
        label = f"#{row.number} {row.optimizer} · {row.decay} · {row.batch_scaling} · b={sig(row.batch_size)}"
        group = f"t{row.number}"
        fig.add_trace(go.Scatter(
            x=steps, y=lrs, mode="lines", name=label, legendgroup=group, line={"color": color,
                                                                             "width": 2},
            meta=[int(row.number), "lr"],
            hovertemplate=f"#{row.number}<br>update %{{x}}<br>lr %{{y:.4g}}<extra></extra>"),
            row=1, col=1)
        curve = attrs.get("curve") or {}
        x = np.asarray(curve.get("step") or [], dtype=float)
        if x.size:
            idx = sample_index(len(x), points)
            series = [("val_loss", "solid")] + ([("train_loss", "dot")] if train_loss else [])
            for key, dash in series:
                y = np.asarray(curve.get(key) or [math.nan] * len(x), dtype=float)
                fig.add_trace(go.Scatter(
                    x=x[idx], y=y[idx], mode="lines", name=f"{label} {key}", legendgroup=group,
                    showlegend=False, line={"color": color, "width": 1.6, "dash": dash},
                    meta=[int(row.number), key],
                    hovertemplate=f"#{row.number}<br>update %{{x}}<br>{key} %{{y:.4f}}<extra></extra>"),
                    row=2, col=1)
    peaks = top["peak_lr"].to_numpy(dtype=float)
    peaks = peaks[np.isfinite(peaks) & (peaks > 0)]
    if axis == "auto":  # log when the peaks are too far apart to see the small ones on a linear axis
        axis = "log" if peaks.size and peaks.max() / peaks.min() > 20 else "linear"
    fig.update_xaxes(title_text="update (step)", row=2, col=1)
    fig.update_yaxes(type="log" if axis == "log" else "linear", title_text="lr", row=1, col=1)
    fig.update_yaxes(title_text="loss", row=2, col=1)
    style(fig, title)
    # (the legend below the x-axis title, which it covered at half width)
    fig.update_layout(legend={"orientation": "h", "x": 0, "y": -0.2, "yanchor": "top"},
                      margin={"b": 110})
    return fig


def schedule_steps(plan: Any, params: dict[str, Any], points: int) -> np.ndarray:
    """Update indices to draw ``plan.schedule`` at: evenly spread, plus both sides of the end
    of warmup and of every step-decay drop, so the shapes are exact at their corners."""
    total, warm = plan.total_steps, plan.warmup_steps
    marks = [0, warm - 1, warm, total - 1]
    if params.get("decay") == "step":
        decay_len = total - warm
        if params.get("step_epochs"):
            size = max(1, round(params["step_epochs"] * plan.steps_per_epoch))
            drops = [warm + i * size for i in range(1, min(decay_len // size, 200) + 1)]
        else:
            drops = [warm + round(f * decay_len) for f in params.get("milestones") or ()]
        for d in drops:
            marks += [d - 1, d]
    base = np.linspace(0, total - 1, min(points, total)).round().astype(int)
    steps = np.unique(np.concatenate([base, np.asarray(marks, dtype=int)]))
    return steps[(steps >= 0) & (steps < total)]


# --- best per group ---------------------------------------------------------------------------

def group_best(ctx: PanelContext) -> go.Figure:
    """Best value per optimizer, per decay and per batch-scaling rule, with the spread (box:
    quartiles and min-max of COMPLETE trials; diamond: the best trial)."""
    keys = ctx.option("keys", list(GROUP_KEYS), list)
    names = " / ".join(k.replace("batch_scaling", "scaling rule") for k in keys)
    title = f"Best {metric_label(ctx)} per {names}"
    if ctx.complete().empty:
        return empty_figure(title, "no COMPLETE trial yet")
    fig = make_subplots(rows=1, cols=len(keys), shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[f"per {k}" for k in keys])
    for col, key in enumerate(keys, start=1):
        stats = group_stats(ctx, key) if key in ctx.frame().columns else pd.DataFrame()
        stats = stats[stats["n"] > 0] if not stats.empty else stats
        if stats.empty:
            continue
        labels = [str(v) for v in stats.index]
        palette = OPTIMIZER_COLORS if key == "optimizer" else RULE_COLORS if key == "batch_scaling" \
            else {}
        colors = [color_for(v, palette) if palette else "#4c78a8" for v in stats.index]
        fig.add_trace(go.Box(
            x=labels, q1=stats["q25"], median=stats["median"], q3=stats["q75"],
            lowerfence=stats["lo"], upperfence=stats["hi"], name=key, boxpoints=False,
            marker_color="#4c78a8", fillcolor="rgba(76,120,168,0.25)", line={"width": 1.2},
            showlegend=False, meta=[key, "spread"]), row=1, col=col)
        custom = np.stack([stats["best_trial"], stats["n"], stats["pruned"], stats["diverged"],
                           stats["median"]], axis=1)
        fig.add_trace(go.Scatter(
            x=labels, y=stats["best"], mode="markers+text", text=[f"#{t}" for t in stats["best_trial"]],
            textposition="top center", textfont={"size": 10},
            marker={"symbol": "diamond", "size": 11, "color": colors, "line": {"width": 1, "color": "#333"}},
            customdata=custom, showlegend=False, name=f"best per {key}", meta=[key, "best"],
            hovertemplate=(f"{key} = %{{x}}<br>best %{{y:.4f}} (trial #%{{customdata[0]}})<br>"
                           "median %{customdata[4]:.4f}<br>%{customdata[1]} complete, "
                           "%{customdata[2]} pruned (%{customdata[3]} diverged)<extra></extra>")),
            row=1, col=col)
    fig.update_yaxes(title_text=metric_label(ctx), row=1, col=1)
    return style(fig, title, legend=False)


# --- linear vs sqrt at each batch size --------------------------------------------------------

def scaling_rules(ctx: PanelContext) -> go.Figure:
    """Batch-size LR scaling rules compared at each batch size: best (solid) and median with
    interquartile range (dashed) of the metric, and the difference of the bests."""
    rules = ctx.option("rules", ["linear", "sqrt"], list)
    title = f"{' vs '.join(map(str, rules))} scaling at each batch size"
    done = ctx.complete()
    done = done[done["batch_scaling"].isin(rules) & done["batch_size"].notna()]
    if done.empty:
        return empty_figure(title, f"no COMPLETE trial with batch_scaling in {rules}")
    # the difference of the bests, in a second row, needs a best of each of the two rules
    missing = [r for r in rules if not (done["batch_scaling"] == r).any()]
    diff = len(rules) == 2 and not missing
    fig = make_subplots(rows=2 if diff else 1, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        row_heights=[0.7, 0.3] if diff else [1.0],
                        subplot_titles=(f"{metric_label(ctx)} by batch size",
                                        f"best {rules[0]} − best {rules[1]}") if diff else None)
    bests: dict[str, pd.Series] = {}
    for rule in rules:
        sub = done[done["batch_scaling"] == rule]
        if sub.empty:
            continue
        g = sub.groupby("batch_size")["value"]
        best = g.max() if ctx.maximize else g.min()
        best_idx = g.idxmax() if ctx.maximize else g.idxmin()
        numbers = sub.loc[best_idx.values, "number"].to_numpy()
        med, q25, q75, n = g.median(), g.quantile(0.25), g.quantile(0.75), g.size()
        bests[rule] = best
        color = color_for(rule, RULE_COLORS)
        x = best.index.to_numpy(dtype=float)
        fig.add_trace(go.Scatter(
            x=x, y=best.to_numpy(), mode="lines+markers", name=f"{rule}: best", legendgroup=rule,
            line={"color": color, "width": 2.5}, marker={"size": 8}, meta=[rule, "best"],
            customdata=np.stack([numbers, n.to_numpy()], axis=1),
            hovertemplate=f"{rule}, batch %{{x}}<br>best %{{y:.4f}} (#%{{customdata[0]}}, "
                          "%{customdata[1]} complete)<extra></extra>"), row=1, col=1)
        fig.add_trace(go.Scatter(
            x=x * 2 ** (0.04 if rule == rules[-1] else -0.04), y=med.to_numpy(), mode="lines+markers",
            name=f"{rule}: median, IQR", legendgroup=rule, meta=[rule, "median"],
            line={"color": color, "width": 1.2, "dash": "dash"}, marker={"size": 5},
            error_y={"type": "data", "symmetric": False, "array": (q75 - med).to_numpy(),
                     "arrayminus": (med - q25).to_numpy(), "thickness": 1, "width": 3},
            hovertemplate=f"{rule}, batch %{{x:.0f}}<br>median %{{y:.4f}}<extra></extra>"), row=1, col=1)
    both = bests[rules[0]].index.intersection(bests[rules[1]].index) if diff else None
    if diff and len(both):
        a, b = bests[rules[0]], bests[rules[1]]
        delta = (a[both] - b[both]).to_numpy()
        better = delta >= 0 if ctx.maximize else delta <= 0
        xs = both.to_numpy(dtype=float)
        fig.add_trace(go.Bar(
            x=xs, y=delta, width=xs * 0.3,  # the same visual width on the log axis
            name=f"{rules[0]} − {rules[1]}", showlegend=False,
            marker_color=[color_for(rules[0] if w else rules[1], RULE_COLORS) for w in better],
            meta=["difference", "best"],
            hovertemplate="batch %{x}<br>difference %{y:+.4f}<extra></extra>"), row=2, col=1)
        fig.update_yaxes(title_text="Δ best", zeroline=True, row=2, col=1)
    elif diff:
        fig.add_annotation(text=f"{rules[0]} and {rules[1]} share no batch size: nothing to compare",
                           x=0.5, y=0.12, xref="paper", yref="paper", showarrow=False,
                           font={"size": 12, "color": "#666"})
        fig.update_yaxes(visible=False, row=2, col=1)
    elif len(rules) == 2:
        fig.add_annotation(text=f"no COMPLETE trial with batch_scaling = {' and '.join(missing)}: "
                                "nothing to compare", x=0.5, y=1.0, yanchor="bottom", xref="paper",
                           yref="paper", showarrow=False, font={"size": 12, "color": "#666"})
    sizes = sorted(done["batch_size"].unique())
    # (labels on every subplot: the difference row may be empty, a note instead of bars)
    fig.update_xaxes(type="log", tickvals=sizes, ticktext=[str(s) for s in sizes], showticklabels=True)
    fig.update_xaxes(title_text="batch size", row=2 if diff else 1, col=1)
    fig.update_yaxes(title_text=metric_label(ctx), row=1, col=1)
    return style(fig, title)


# --- effective LR vs batch size ---------------------------------------------------------------

def effective_lr(ctx: PanelContext) -> go.Figure:
    """Effective (scaled) peak learning rate against batch size, coloured by scaling rule;
    pruned trials hollow, diverged trials crossed."""
    max_points = ctx.option("max_points", 5000, int)
    f = ctx.frame()
    f = f[f["state"].isin(("COMPLETE", "PRUNED")) & np.isfinite(f["peak_lr"]) & (f["peak_lr"] > 0)
          & f["batch_size"].notna()]
    title = "Effective peak learning rate vs batch size"
    if f.empty:
        return empty_figure(title, "no finished trial yet")
    shown = len(f)
    if len(f) > max_points:  # keep every COMPLETE trial first, then a seeded sample of the rest
        done = f[f["state"] == "COMPLETE"]
        rest = f[f["state"] != "COMPLETE"]
        keep = max(max_points - len(done), 0)
        f = pd.concat([done.head(max_points), rest.sample(n=min(keep, len(rest)), random_state=0)])
        shown = len(f)
        title += f" ({shown} of {len(ctx.frame())} trials shown)"
    outcome = np.where(f["diverged"], "diverged", np.where(f["state"] == "COMPLETE", "complete", "pruned"))
    rules = [r for r in ("none", "linear", "sqrt") if (f["batch_scaling"] == r).any()]
    rules += sorted(set(f["batch_scaling"].dropna().astype(str)) - set(rules))
    traces = []
    for rule in rules:
        for kind in OUTCOMES:
            mask = (f["batch_scaling"] == rule).to_numpy() & (outcome == kind)
            if not mask.any():
                continue
            sub = f[mask]
            symbol, size, opacity = OUTCOME_MARKERS[kind]
            x = sub["batch_size"].to_numpy(dtype=float) * 2 ** RULE_OFFSETS.get(rule, 0.0)
            reason = sub["divergence_reason"].fillna("").astype(str).str.slice(0, 60)
            custom = np.stack([sub["number"].to_numpy(), sub["value"].to_numpy(),
                               sub["optimizer"].astype(str).to_numpy(), sub["lr"].to_numpy(),
                               sub["batch_size"].to_numpy(), reason.to_numpy()], axis=1)
            traces.append(go.Scatter(
                x=x, y=sub["peak_lr"].to_numpy(), mode="markers", name=f"{rule} · {kind} ({mask.sum()})",
                legendgroup=rule, meta=[rule, kind],
                marker={"symbol": symbol, "size": size, "opacity": opacity,
                        "color": color_for(rule, RULE_COLORS),
                        "line": {"width": 1.5 if kind != "complete" else 0.5,
                                 "color": color_for(rule, RULE_COLORS) if kind != "complete" else "white"}},
                customdata=custom,
                hovertemplate=(f"#%{{customdata[0]}} {kind} ({rule})<br>%{{customdata[2]}}, batch "
                               "%{customdata[4]}<br>peak lr %{y:.4g} (lr %{customdata[3]:.3g})<br>"
                               f"{ctx.metric} %{{customdata[1]:.4f}}<br>%{{customdata[5]}}<extra></extra>")))
    fig = go.Figure(traces)
    sizes = sorted(f["batch_size"].unique())
    fig.update_xaxes(type="log", tickvals=sizes, ticktext=[str(s) for s in sizes], title_text="batch size")
    fig.update_yaxes(type="log", title_text="effective peak lr", **log_ticks(list(f["peak_lr"])))
    return style(fig, title)


# --- gap to the convex reference --------------------------------------------------------------

def reference_gap(ctx: PanelContext) -> go.Figure:
    """Best validation accuracy (overall and per optimizer) against scikit-learn's
    LogisticRegression trained on the same split."""
    key = ctx.option("by", "optimizer", str)
    col = accuracy_column(ctx)
    done = ctx.complete()
    done = done[np.isfinite(done[col])]
    ref = ctx.reference()
    title = "Gap to LogisticRegression (same split)"
    if done.empty:
        return empty_figure(title, "no COMPLETE trial yet")
    best = done.loc[done[col].idxmax()]
    per = done.loc[done.groupby(key, sort=False)[col].idxmax()].sort_values(col)
    labels = [str(v) for v in per[key]]
    ref_acc = ref.get("val_accuracy") if isinstance(ref, dict) else None
    if ref_acc is not None:
        gaps = (per[col].to_numpy() - ref_acc) * 100
        text = [f"{a:.4f} ({g:+.2f} pts)" for a, g in zip(per[col], gaps, strict=True)]
        # two short lines: the plot's toolbar covers the right end of a long title
        title = (f"Gap to LogisticRegression<br><span style='font-size:13px'>best trial "
                 f"#{int(best['number'])}: {best[col]:.4f} ({(best[col] - ref_acc) * 100:+.2f} "
                 f"points)</span>")
    else:
        text = [f"{a:.4f}" for a in per[col]]
    palette = OPTIMIZER_COLORS if key == "optimizer" else RULE_COLORS if key == "batch_scaling" else {}
    fig = go.Figure(go.Bar(
        y=labels, x=per[col].to_numpy(), orientation="h", text=text, textposition="inside",
        insidetextanchor="end", textfont={"color": "white"},
        marker_color=[color_for(v, palette) for v in per[key]], name=f"best per {key}",
        customdata=per["number"].to_numpy(), meta=[key, "best_accuracy"],
        hovertemplate=f"{key} %{{y}}<br>best val accuracy %{{x:.4f}} (#%{{customdata}})<extra></extra>"))
    values = list(per[col]) + ([] if ref_acc is None else [ref_acc])
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.5, 0.005)
    x_range = [max(0.0, lo - 2 * pad), min(1.0, hi + pad)]
    fig.update_xaxes(range=x_range, title_text="validation accuracy")
    if ref_acc is not None:
        fig.add_vline(x=ref_acc, line={"color": "#222", "dash": "dash", "width": 2})
        # at the foot of the line, inside the plot (above it, a long title ran into it), reading
        # away from the nearer edge so it is never cut
        right = ref_acc > sum(x_range) / 2
        fig.add_annotation(x=ref_acc, y=0.0, yref="paper", yanchor="bottom",
                           xanchor="right" if right else "left", xshift=-4 if right else 4,
                           showarrow=False, text=f"LogisticRegression {ref_acc:.4f}",
                           font={"size": 11}, bgcolor="rgba(255,255,255,0.85)")
    elif isinstance(ref, dict) and "error" in ref:
        fig.add_annotation(text=f"reference not available: {ref['error']}"[:120], x=0.5, y=-0.18,
                           xref="paper", yref="paper", showarrow=False, font={"color": "#a33"})
    fig.update_layout(uniformtext={"minsize": 9, "mode": "show"})
    fig.layout.meta = {"reference": ref_acc, "model": REFERENCE_MODEL, "best_trial": int(best["number"]),
                       "best_accuracy": float(best[col])}
    style(fig, title, legend=False)
    fig.update_layout(margin={"t": 84})
    return fig


# --- importances and history ------------------------------------------------------------------

def importances(ctx: PanelContext) -> go.Figure:
    """Parameter importances (Optuna's default evaluator, PED-ANOVA)."""
    top = ctx.option("top", 20, int)
    title = "Parameter importances (PED-ANOVA)"
    imp = study_importances(ctx)
    if not imp:
        from tuner.results import MIN_IMPORTANCE_TRIALS

        return empty_figure(title, f"fewer than {MIN_IMPORTANCE_TRIALS} COMPLETE trials (or none "
                                   "searched parameters all of them share): not computed")
    items = sorted(imp.items(), key=lambda kv: kv[1], reverse=True)[:top][::-1]
    fig = go.Figure(go.Bar(
        x=[v for _, v in items], y=[k for k, _ in items], orientation="h", marker_color="#4c78a8",
        text=[f"{v:.3f}" for _, v in items], textposition="outside", name="importance",
        hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_xaxes(title_text="importance", range=[0, max(v for _, v in items) * 1.15 + 1e-9])
    return style(fig, title, legend=False)


class TrialsView:
    """Just enough of ``optuna.Study`` for ``optuna.importance`` (``directions``,
    ``get_trials``): the trials already read for this render, so importances cost no second
    read of a large study."""

    def __init__(self, study: optuna.Study, trials: list[Any]) -> None:
        self.study_name = study.study_name
        self.directions = study.directions
        self._trials = trials

    @property
    def direction(self) -> optuna.study.StudyDirection:
        return self.directions[0]

    def _is_multi_objective(self) -> bool:
        return len(self.directions) > 1

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[Any]:
        trials = self._trials if states is None else [t for t in self._trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else list(trials)

    @property
    def trials(self) -> list[Any]:
        return self.get_trials()


def study_importances(ctx: PanelContext) -> dict[str, float]:
    """``tuner.results.importances`` over the trials already read for this render."""
    from tuner import results

    if "importances" not in ctx.shared:
        try:
            ctx.shared["importances"] = results.importances(TrialsView(ctx.study, ctx.trials()))
        except (AttributeError, TypeError):  # an Optuna that wants more of a Study: the real one
            ctx.shared["importances"] = results.importances(ctx.study)
    return ctx.shared["importances"]


def history(ctx: PanelContext) -> go.Figure:
    """Optimization history: each COMPLETE trial's value by trial number (coloured by
    optimizer) and the best value so far."""
    title = f"Optimization history ({metric_label(ctx)})"
    f = ctx.frame()
    done = f[(f["state"] == "COMPLETE") & np.isfinite(f["value"])].sort_values("number")
    if done.empty:
        return empty_figure(title, "no COMPLETE trial yet")
    fig = go.Figure()
    for opt, sub in done.groupby("optimizer", sort=True):
        fig.add_trace(go.Scatter(
            x=sub["number"].to_numpy(), y=sub["value"].to_numpy(), mode="markers", name=str(opt),
            marker={"size": 6, "color": color_for(opt, OPTIMIZER_COLORS), "opacity": 0.75},
            meta=[str(opt), "trials"],
            hovertemplate=f"#%{{x}} {opt}<br>{ctx.metric} %{{y:.4f}}<extra></extra>"))
    values = done["value"].to_numpy()
    best = np.maximum.accumulate(values) if ctx.maximize else np.minimum.accumulate(values)
    fig.add_trace(go.Scatter(
        x=done["number"].to_numpy(), y=best, mode="lines", name="best so far", meta=["best", "line"],
        line={"color": "#222", "width": 2, "shape": "hv"},
        hovertemplate="after #%{x}: best %{y:.4f}<extra></extra>"))
    pruned = int((f["state"] == "PRUNED").sum())
    fig.update_xaxes(title_text="trial number", tickformat="d",  # whole numbers, never 0.2
                     dtick=None if len(f) > 10 else 1)
    fig.update_yaxes(title_text=metric_label(ctx))
    return style(fig, f"{title}: {len(done)} complete, {pruned} pruned")


def _range(low: Any, high: Any) -> str:
    """``low–high``, or ``-`` when there is none (a group without a COMPLETE trial)."""
    if low is None or high is None or (isinstance(low, float) and math.isnan(low)):
        return "-"
    return f"{fmt(low)}–{fmt(high)}"


def generated_at() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


AT_LEAST_1 = Allowed(low=1)
GROUPS = Allowed(names=GROUPABLE, min_items=1)
# each panel's options: name -> (type, default, the values allowed), checked when a dashboard file
# is checked (tuner.dashboard.render.check_panels), before any panel is built
BUILTIN = {
    "summary": (summary, "Summary", {
        "top_k": (int, 5, Allowed(low=0, note="0: no top-trials table")),
        "groups": (list, ["optimizer"], Allowed(names=GROUPABLE, note="[]: no per-group table"))}),
    "learning_curves": (learning_curves, "Learning curves of the top-k trials", {
        "top_k": (int, 10, AT_LEAST_1), "max_points": (int, 200, Allowed(low=2))}),
    "lr_schedule": (lr_schedule, "Learning-rate schedules over loss curves", {
        "top_k": (int, 5, AT_LEAST_1), "points": (int, 400, Allowed(low=2)),
        "lr_axis": (str, "auto", Allowed(names=LR_AXES)), "train_loss": (bool, True)}),
    "group_best": (group_best, "Best value per optimizer, decay and scaling rule", {
        "keys": (list, list(GROUP_KEYS), GROUPS)}),
    "scaling_rules": (scaling_rules, "Linear vs sqrt scaling at each batch size", {
        "rules": (list, ["linear", "sqrt"], Allowed(names=P.SCALING_RULES, min_items=1))}),
    "effective_lr": (effective_lr, "Effective LR vs batch size", {
        "max_points": (int, 5000, AT_LEAST_1)}),
    "reference_gap": (reference_gap, "Gap to LogisticRegression", {
        "by": (str, "optimizer", Allowed(names=GROUPABLE))}),
    "importances": (importances, "Parameter importances", {"top": (int, 20, AT_LEAST_1)}),
    "history": (history, "Optimization history", {}),
}


def register() -> None:
    """Register the built-in panels (called once by the registry, on its first use)."""
    for name, (fn, title, options) in BUILTIN.items():
        register_panel(name, fn, title=title, description=" ".join((fn.__doc__ or "").split()),
                       options=options)
