"""Trend views of a nightly sweep for the dashboard and ``tuner report``.

Plain builder functions; each takes a context ``ctx`` with attributes ``study`` (an
``optuna.Study``: one night of the sweep, or any study when ``options["base"]`` names the
sweep), ``study_file``, ``storage`` (a ``BufferedStorage``, an Optuna RDB storage, a database
URL, or ``None`` to use the study's own storage) and ``options`` (a dict; ``base`` overrides
the sweep's base name, ``last`` limits the nights shown). They do not import the dashboard.

- :func:`trend_figure` (plotly Figure): best value per night with the baseline band (median
  of the baseline nights' bests +- margin), the incumbent re-trained on each night's data, and
  verdict markers.
- :func:`choices_figure` (plotly Figure): the best configuration's optimizer, decay,
  batch-size scaling rule and learning rate per night.
- :func:`verdict_markdown` (str): the night's verdict with its numbers, and its warm start.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tuner.dashboard.panels import log_ticks
from tuner.nightly.cron import cron_trigger, night_of
from tuner.nightly.history import NightRecord, night_history
from tuner.nightly.nights import ATTR_NIGHT, ATTR_VERDICT, ATTR_WARM_START, sweep_base, verdict_label
from tuner.storage import BufferedStorage, rdb_backend

VERDICT_STYLE = {
    "regression": {"color": "#d62728", "symbol": "x", "size": 14},
    "improvement": {"color": "#2ca02c", "symbol": "triangle-up", "size": 14},
    "ok": {"color": "#7f7f7f", "symbol": "circle", "size": 9},
    "ok (sweep fell short)": {"color": "#e3a008", "symbol": "circle-open", "size": 13},
    "no_result": {"color": "#ff7f0e", "symbol": "square", "size": 10},
}
DAY_MS = 86_400_000
MAX_DATE_TICKS = 14


def verdict_key(verdict: dict[str, Any] | None) -> str:
    """The :data:`VERDICT_STYLE` entry of a stored verdict (a search shortfall is its own)."""
    v = verdict or {}
    if v.get("verdict") == "ok" and v.get("cause") in ("search", "space"):
        return "ok (sweep fell short)"  # search luck, or an accepted edit of the space
    return str(v.get("verdict", ""))


def date_axis(dates: list[str]) -> dict[str, Any]:
    """A date axis for one value per night: whole days (``%Y-%m-%d``), one tick a day, or one
    every few days so that at most :data:`MAX_DATE_TICKS` show (plotly's own ticks for a few
    days are hours); a single night is a category."""
    if len(dates) <= 1:
        return {"type": "category"}
    from datetime import date as _date

    days = (_date.fromisoformat(max(dates)) - _date.fromisoformat(min(dates))).days + 1
    step = max(1, math.ceil(days / MAX_DATE_TICKS))
    return {"type": "date", "tickformat": "%Y-%m-%d", "hoverformat": "%Y-%m-%d",
            "dtick": step * DAY_MS, "tick0": min(dates)}


def base_name(ctx: Any) -> str | None:
    """The sweep a context is about: ``options["base"]``, else the night study's stored base,
    else its name without the ``-YYYY-MM-DD`` suffix."""
    options = getattr(ctx, "options", None) or {}
    study = getattr(ctx, "study", None)
    if study is None:
        return str(options["base"]) if options.get("base") else None
    return sweep_base(study.study_name, study.user_attrs.get(ATTR_NIGHT), options.get("base"))


def _storage(ctx: Any) -> BufferedStorage:
    from tuner.storage import open_storage

    candidate = getattr(ctx, "storage", None)
    if isinstance(candidate, str):
        return open_storage(candidate)
    if candidate is None and getattr(ctx, "study", None) is not None:
        candidate = ctx.study._storage
    if isinstance(candidate, BufferedStorage):
        return candidate
    backend = rdb_backend(candidate)
    if backend is None:
        raise ValueError("nightly views need a database storage (SQLite or PostgreSQL)")
    return BufferedStorage(backend)


def _records(ctx: Any) -> tuple[str | None, list[NightRecord]]:
    base = base_name(ctx)
    if base is None:
        return None, []
    records = night_history(_storage(ctx), base)
    last = (getattr(ctx, "options", None) or {}).get("last")
    if last:
        records = records[-int(last):]
    return base, records


def _empty(title: str, text: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_layout(title=title, xaxis={"visible": False}, yaxis={"visible": False})
    return fig


def _current_date(ctx: Any) -> str | None:
    study = getattr(ctx, "study", None)
    night = study.user_attrs.get(ATTR_NIGHT) if study is not None else None
    return night.get("date") if isinstance(night, dict) else None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def broken_at_gaps(dates: list[str], values: list[Any], schedule: Any = None
                   ) -> tuple[list[str], list[Any]]:
    """``dates`` and ``values`` with a break (a ``None`` value between them) where nights are
    missing: where the sweep's ``schedule`` (cron, timezone) had a night between two nights;
    without one, where two nights are more than 1.5x the usual (median) interval apart. A line
    drawn straight across missing nights looks like data; a weekday sweep's weekends and a
    weekly sweep's weeks are no gap."""
    days = [date.fromisoformat(d) for d in dates]
    steps = [(b - a).days for a, b in zip(days, days[1:], strict=False)]
    if not steps:
        return list(dates), list(values)
    usual = max(1.0, statistics.median(steps))
    missing = _missed_nights(schedule)
    xs, ys = [dates[0]], [values[0]]
    for a, b, step, value in zip(days, days[1:], steps, values[1:], strict=False):
        if missing(a, b) if missing is not None else step > 1.5 * usual:
            xs.append((a + (b - a) / 2).isoformat())
            ys.append(None)
        xs.append(b.isoformat())
        ys.append(value)
    return xs, ys


def _missed_nights(schedule: Any) -> Callable[[date, date], bool] | None:
    """``missed(a, b)``: whether ``schedule`` has a night strictly between nights ``a`` and
    ``b``; ``None`` without a usable schedule."""
    try:
        trigger = cron_trigger(schedule.cron, schedule.timezone)
        zone = ZoneInfo(schedule.timezone)
    except Exception:  # no schedule (or one this version cannot read): fall back
        return None

    def missed(a: date, b: date) -> bool:
        after = datetime.combine(a + timedelta(days=1), time.min, tzinfo=zone)
        fire = trigger.get_next_fire_time(None, after)
        return fire is not None and night_of(fire, schedule.timezone) < b

    return missed


def trend_figure(ctx: Any) -> go.Figure:
    """Best value per night, baseline band, incumbent re-evaluations and verdict markers."""
    base, records = _records(ctx)
    title = f"nightly trend: {base}" if base else "nightly trend"
    if not records:
        return _empty(title, "no nights yet (night studies are named BASE-YYYY-MM-DD)")
    metric = records[-1].metric
    dates = [r.date.isoformat() for r in records]
    fig = go.Figure()
    band = [(r.date.isoformat(), (r.verdict or {}).get("baseline") or {}) for r in records]
    band = [(d, b) for d, b in band if _num(b.get("level")) is not None and _num(b.get("margin")) is not None]
    if len(band) == 1:  # one night with a baseline: a line of one point draws nothing
        (x, b), = band
        fig.add_trace(go.Scatter(x=[x], y=[b["level"]], mode="markers", name="baseline ± margin",
                                 marker={"color": "#1f77b4", "symbol": "line-ew-open", "size": 14},
                                 error_y={"type": "data", "array": [b["margin"]], "width": 8,
                                          "color": "rgba(31,119,180,0.6)"},
                                 hovertemplate="%{x}: baseline %{y:.4f}<extra></extra>"))
    elif band:
        xs = [d for d, _ in band]
        lows = [b["level"] - b["margin"] for _, b in band]
        highs = [b["level"] + b["margin"] for _, b in band]
        fig.add_trace(go.Scatter(x=xs, y=lows, mode="lines", line={"width": 0}, showlegend=False,
                                 hoverinfo="skip", name="baseline low"))
        fig.add_trace(go.Scatter(x=xs, y=highs, mode="lines", line={"width": 0}, fill="tonexty",
                                 fillcolor="rgba(31,119,180,0.15)", name="baseline ± margin",
                                 hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=xs, y=[b["level"] for _, b in band], mode="lines",
                                 line={"dash": "dash", "color": "#1f77b4"},
                                 name="baseline (median of the nights)"))
    schedule = getattr(getattr(ctx, "study_file", None), "schedule", None)
    xs, ys = broken_at_gaps(dates, [r.best_value for r in records], schedule)
    _, text = broken_at_gaps(dates, [f"{r.study} #{r.best_trial}" for r in records], schedule)
    fig.add_trace(go.Scatter(
        x=xs, y=ys, mode="lines+markers", name="best of the night", line={"color": "#1f77b4"},
        marker={"size": 6}, text=text, hovertemplate="%{x}: %{y:.4f} (%{text})<extra></extra>"))
    inc = [(r.date.isoformat(), ((r.verdict or {}).get("incumbent") or {})) for r in records]
    inc = [(d, i) for d, i in inc if _num(i.get("tonight")) is not None]
    if inc:
        fig.add_trace(go.Scatter(
            x=[d for d, _ in inc], y=[i["tonight"] for _, i in inc], mode="markers",
            name="incumbent re-trained on the night's data",
            marker={"symbol": "diamond-open", "size": 10, "color": "#9467bd"},
            text=[f"{i.get('night')} #{i.get('trial')} (stored {i.get('value')})" for _, i in inc],
            hovertemplate="%{x}: %{y:.4f} %{text}<extra></extra>"))
    for verdict, style in VERDICT_STYLE.items():
        hits = [r for r in records if verdict_key(r.verdict) == verdict]
        if not hits:
            continue
        fig.add_trace(go.Scatter(
            x=[r.date.isoformat() for r in hits],
            y=[r.best_value if r.best_value is not None else (r.verdict or {}).get("available")
               for r in hits],
            mode="markers", name=verdict, marker={"symbol": style["symbol"], "size": style["size"],
                                                   "color": style["color"], "line": {"width": 2}},
            text=[(r.verdict or {}).get("message", "") for r in hits],
            hovertemplate=f"%{{x}}: {verdict}<br>%{{text}}<extra></extra>"))
    current = _current_date(ctx)
    if current in dates:
        fig.add_vline(x=current, line={"dash": "dot", "color": "#555"})
    fig.update_layout(title=title, template="plotly_white", xaxis_title="night",
                      yaxis_title=metric, hovermode="closest",
                      legend={"orientation": "h", "y": -0.2})
    fig.update_xaxes(**date_axis(dates))
    return fig


def choices_figure(ctx: Any) -> go.Figure:
    """The best configuration's optimizer, decay, scaling rule and learning rate per night."""
    base, records = _records(ctx)
    title = f"best configuration per night: {base}" if base else "best configuration per night"
    records = [r for r in records if r.config]
    if not records:
        return _empty(title, "no night with a COMPLETE trial yet")
    rows = (("optimizer", "optimizer"), ("decay", "decay"), ("batch_scaling", "batch-size scaling"))
    fig = make_subplots(rows=4, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[label for _, label in rows] + ["learning rate (lr)"])
    dates = [r.date.isoformat() for r in records]
    colors = [VERDICT_STYLE.get(verdict_key(r.verdict), {}).get("color", "#1f77b4") for r in records]
    for i, (key, label) in enumerate(rows, start=1):
        values = [str(r.choice(key) if r.choice(key) is not None else "-") for r in records]
        fig.add_trace(go.Scatter(x=dates, y=values, mode="markers+lines", name=label,
                                 line={"color": "rgba(0,0,0,0.15)"},
                                 marker={"size": 11, "color": colors},
                                 hovertemplate=f"%{{x}}: {label} %{{y}}<extra></extra>"),
                      row=i, col=1)
        fig.update_yaxes(type="category", categoryorder="category ascending", row=i, col=1)
    lrs = [_num(r.choice("lr")) for r in records]
    schedule = getattr(getattr(ctx, "study_file", None), "schedule", None)
    xs, ys = broken_at_gaps(dates, lrs, schedule)
    lr_colors = [c or "rgba(0,0,0,0)" for c in broken_at_gaps(dates, colors, schedule)[1]]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers+lines", name="lr",
                             marker={"size": 9, "color": lr_colors},
                             hovertemplate="%{x}: lr %{y:.3g}<extra></extra>"), row=4, col=1)
    fig.update_yaxes(type="log", row=4, col=1, **log_ticks(lrs))
    fig.update_xaxes(**date_axis(dates))
    fig.update_layout(title=title, template="plotly_white", showlegend=False, height=720)
    return fig


def _f(value: Any, signed: bool = False) -> str:
    number = _num(value)
    if number is None:
        return "–"
    return f"{number:+.4f}" if signed else f"{number:.4f}"


def verdict_markdown(ctx: Any) -> str:
    """The night's verdict with its numbers, and what its warm start did (Markdown). Options:
    ``base``, a sweep other than the study's own: the verdict of that sweep's latest night;
    ``last`` > 0: a table of the verdicts of the sweep's last nights below it."""
    study = getattr(ctx, "study", None)
    options = getattr(ctx, "options", None) or {}
    own = None if study is None else sweep_base(study.study_name, study.user_attrs.get(ATTR_NIGHT))
    records: list[NightRecord] | None = None  # the sweep's nights, once read
    if options.get("base") and options["base"] != own:
        base, records = _records(ctx)
        if not records:
            return f"_No nights of `{base}` yet._"
        night = records[-1]
        text = _verdict_text(night.study, {ATTR_NIGHT: {"base": base}, ATTR_VERDICT: night.verdict,
                                           ATTR_WARM_START: night.warm_start}, base)
    elif study is None:
        return "_No study selected._"
    else:
        text = _verdict_text(study.study_name, study.user_attrs, base_name(ctx))
    if int(options.get("last") or 0) > 0:
        if records is None:
            base, records = _records(ctx)
        rows = [f"| {r.date} | {verdict_label(r.verdict, missing='–')} | {_f(r.best_value)} | "
                f"{_f((r.verdict or {}).get('delta'), signed=True)} |" for r in records]
        text += "\n".join(["", "", f"Last {len(rows)} night(s) of `{base}`:", "",
                           "| night | verdict | best | best available − baseline |",
                           "|---|---|---|---|", *rows])
    return text


def _verdict_text(name: str, attrs: dict[str, Any], base: str | None) -> str:
    """:func:`verdict_markdown` of the night study ``name`` with user attributes ``attrs``."""
    verdict = attrs.get(ATTR_VERDICT)
    if verdict is None:
        if ATTR_NIGHT not in attrs:
            hint = f" The nights of `{base}` are studies `{base}-YYYY-MM-DD`." if base else ""
            return f"_`{name}` is not a night of a nightly sweep._{hint}"
        return (f"_No verdict for `{name}` yet: the night is running or was "
                "interrupted (rerun `tuner nightly` to resume it)._")
    v, b, inc = verdict, verdict.get("baseline") or {}, verdict.get("incumbent") or {}
    no_result = v.get("verdict") == "no_result"
    if _num(v.get("tonight")) is None:
        tonight = ["| tonight's best | – (no COMPLETE trial) |" if no_result
                   else f"| tonight's best | {_f(v.get('tonight'))} |"]
    else:
        trial = f" (trial #{v['tonight_trial']})" if v.get("tonight_trial") is not None else ""
        tonight = [f"| tonight's best{trial} | {_f(v.get('tonight'))} |"]
    lines = [f"### Nightly verdict for `{name}`: **{verdict_label(v, upper=True)}**",
             "", str(v.get("message", "")), "",
             f"| {v.get('metric', 'value')} | value |", "|---|---|", *tonight]
    nights = b.get("nights") or []
    if nights:
        def number(key: str) -> str:
            # a no_result verdict stored before it kept the baseline's numbers has none of them
            why = " (not computed: tonight has no result)" if no_result and b.get(key) is None else ""
            return f"{_f(b.get(key))}{why}"

        lines += [f"| baseline: median of {len(nights)} night{'' if len(nights) == 1 else 's'} | "
                  f"{number('level')} |",
                  f"| baseline best | {_f(b.get('best'))} |",
                  f"| spread (1.4826 × median absolute deviation) | {number('spread')} |",
                  f"| margin = max(tolerance {_f(b.get('tolerance'))}, "
                  f"{b.get('spread_factor')} × spread, capped) | {number('margin')} |",
                  "| best available tonight (sweep or incumbent) − baseline | "
                  + ("– (nothing to compare: tonight has no result)" if no_result
                     else _f(v.get("delta"), signed=True)) + " |"]
    if inc:
        again = (_f(inc.get("tonight")) if inc.get("tonight") is not None
                 else (inc.get("error") or "–"))
        scored = f" on `{inc['scored_on']}`'s data" if inc.get("scored_on") else ", stored"
        lines += [f"| incumbent `{inc.get('night')}` #{inc.get('trial')}{scored} | "
                  f"{_f(inc.get('value'))} |",
                  f"| incumbent re-trained on tonight's data | {again} |",
                  "| incumbent drift | "
                  + ("none: it diverged" if inc.get("diverged") else _f(v.get("drift"), signed=True))
                  + " |"]
    data = v.get("data") or {}
    if data.get("setup_changes"):
        lines.append(f"| study file [data]/[model] since `{data.get('since')}` | changed: "
                     + "; ".join(data["setup_changes"]).replace("|", "\\|") + " |")
    if data.get("changed") is not None:
        lines.append(f"| data file since `{data.get('since')}` | "
                     + (f"changed (`{data.get('incumbent')}` → `{data.get('tonight')}`)"
                        if data["changed"] else f"unchanged (`{data.get('incumbent')}`)") + " |")
    if nights:
        lines += ["", "Baseline nights: " + ", ".join(
            f"{n['date']} ({_f(n.get('value', n.get('best')))})" for n in nights)]
    warm = attrs.get(ATTR_WARM_START) or {}
    if warm.get("source"):
        lines += ["", f"Warm start from `{warm['source']}`: {len(warm.get('enqueued', []))} "
                      f"configuration(s) enqueued, {len(warm.get('skipped', []))} skipped."]
        for item in warm.get("skipped", []):
            lines.append(f"- skipped #{item.get('trial')}: " + "; ".join(item.get("reasons", [])))
    return "\n".join(lines)
