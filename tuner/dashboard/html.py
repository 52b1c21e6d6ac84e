"""HTML for the tuner pages (study list, study views) and the self-contained report.

Pages are plain HTML with one ``<script>`` per figure calling ``Plotly.newPlot``; plotly.js is
either referenced once (served by ``tuner dashboard``) or embedded once (the offline report).
Everything user-controlled (study names, parameter values, error messages) is escaped.
"""

from __future__ import annotations

import functools
import html
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from tuner.dashboard.context import PanelContext
from tuner.dashboard.panels import fmt, generated_at
from tuner.dashboard.render import RenderedPanel
from tuner.nightly.nights import verdict_label

DEFAULT_HEIGHT = {"full": 480, "half": 440}
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")

CSS = """
:root { --fg: #1d2330; --muted: #667085; --line: #e4e7ec; --bg: #f6f7f9; --accent: #2457c5; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--fg); background: var(--bg); }
header.top { background: #fff; border-bottom: 1px solid var(--line); padding: 14px 24px; }
header.top h1 { margin: 0 0 4px; font-size: 20px; }
header.top .meta { color: var(--muted); }
header.top nav a { margin-right: 14px; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
main { padding: 16px 24px 40px; }
.facts { display: flex; flex-wrap: wrap; gap: 10px; margin: 10px 0 0; }
.fact { background: #f0f3f9; border-radius: 6px; padding: 6px 10px; }
.fact b { font-size: 16px; }
.grid { display: flex; flex-wrap: wrap; gap: 16px; }
.panel { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px;
         flex: 1 1 100%; min-width: 0; }
.panel.half { flex: 1 1 calc(50% - 8px); min-width: 420px; }
.panel h2 { font-size: 15px; margin: 0 0 8px; }
.panel .plot { width: 100%; }
.panel.error { border-color: #f1b5b5; background: #fff7f7; }
.panel.error pre { white-space: pre-wrap; color: #a11; }
.md { display: flex; flex-wrap: wrap; gap: 0 28px; align-items: flex-start; }
.md > :not(table) { flex: 1 1 100%; margin: 4px 0 8px; }
.md table, table.list { border-collapse: collapse; margin: 8px 0 14px; }
.md th, .md td, table.list th, table.list td { border: 1px solid var(--line); padding: 4px 9px; }
.md th, table.list th { background: #f3f5f8; text-align: left; }
.md td, table.list td { font-variant-numeric: tabular-nums; }
table.list { background: #fff; width: 100%; }
table.list td.num, table.list th.num { text-align: right; }
.muted { color: var(--muted); }
.warn, td.stale { color: #a15c00; }
footer { color: var(--muted); padding: 0 24px 24px; font-size: 12px; }
"""


@dataclass
class StudyHeader:
    """What the top of a study page says about the study."""

    name: str
    study_id: int
    metric: str
    direction: str
    counts: dict[str, int]
    best_value: float | None
    best_trial: int | None
    last_activity: datetime | None
    data: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def study_header(ctx: PanelContext) -> StudyHeader:
    f = ctx.frame()
    counts = {s: int(n) for s, n in f["state"].value_counts().items()}
    done = ctx.complete()
    best_value = best_trial = None
    if not done.empty:
        best_value, best_trial = float(done.iloc[0]["value"]), int(done.iloc[0]["number"])
    stamps = [t.datetime_complete or t.datetime_start for t in ctx.trials()]
    stamps = [s for s in stamps if s is not None]
    data = (ctx.data_summary() or {}).get("description")
    extra = _stale_running(ctx) if counts.get("RUNNING") else {}
    return StudyHeader(ctx.study.study_name, ctx.study._study_id, ctx.metric,
                       "maximize" if ctx.maximize else "minimize", counts, best_value, best_trial,
                       max(stamps) if stamps else None, data, extra)


def _stale_running(ctx: PanelContext) -> dict[str, Any]:
    """``{"stale": n, "grace": seconds}`` for RUNNING trials whose heartbeat is older than the
    study file's grace period (their runner is gone: ``tuner doctor --fail-stale``, or the next
    ``tuner run``, fails and re-queues them); empty when none is or it cannot be told."""
    from tuner.results import stale_running

    if getattr(ctx.study._storage, "backend", None) is None:
        return {}
    try:
        stale, grace = stale_running(ctx.study._storage, ctx.study._study_id, ctx.study_file)
    except Exception:  # a courtesy of the page: never fail it
        return {}
    return {"stale": stale, "grace": grace} if stale else {}


@functools.lru_cache(maxsize=1)
def plotly_js() -> str:
    """The plotly.js bundle that ships with the plotly package (works offline)."""
    from plotly.offline import get_plotlyjs

    return _script_safe(get_plotlyjs())


def plotly_version() -> str:
    m = re.search(r"plotly\.js v([0-9][^\s*]*)", plotly_js()[:400])
    return m.group(1) if m else "unknown"


def _script_safe(text: str) -> str:
    return re.sub(r"</(script)", r"<\\/\1", text, flags=re.IGNORECASE)


@functools.lru_cache(maxsize=1)
def _markdown() -> Any:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


def markdown_html(text: str) -> str:
    """Markdown to HTML, with raw HTML in the source escaped (never passed through)."""
    return _markdown().render(text)


def figure_json(fig: Any, height: int) -> str:
    fig = fig.update_layout(height=height, autosize=True)
    return _script_safe(fig.to_json())


def panel_html(panel: RenderedPanel, *, height: int | None = None) -> str:
    spec = panel.spec
    width = "half" if spec.width == "half" else "full"
    h = height or spec.height or DEFAULT_HEIGHT[width]
    attrs = (f'class="panel {width}{" error" if panel.error else ""}" id="{html.escape(panel.key)}" '
             f'data-panel="{html.escape(panel.type)}"')
    title = f"<h2>{html.escape(panel.title)}</h2>"
    if panel.error:
        return (f"<section {attrs}>{title}<p>This view could not be built:</p>"
                f"<pre>{html.escape(panel.error)}</pre></section>")
    if panel.markdown is not None:
        return f'<section {attrs}><div class="md">{markdown_html(panel.markdown)}</div></section>'
    div = html.escape(f"plot-{panel.key}")  # the figure's own title is the heading
    # the figure is drawn by DRAW_SCRIPT once the whole page is laid out (a half-width panel
    # drawn before its neighbour exists would take the full width)
    return (f'<section {attrs} aria-label="{html.escape(panel.title)}"><div class="plot" id="{div}" '
            f'style="height:{h}px"></div><script type="application/json" data-plot="{div}">'
            f"{figure_json(panel.figure, h)}</script></section>")


DRAW_SCRIPT = """<script>
document.querySelectorAll("script[data-plot]").forEach(function (el) {
  var f = JSON.parse(el.textContent);
  Plotly.newPlot(el.getAttribute("data-plot"), f.data, f.layout, {responsive: true, displaylogo: false});
});
</script>"""


def _head(title: str, plotly: str | None) -> str:
    """``plotly``: ``"inline"`` embeds plotly.js, a URL references it, ``None`` omits it."""
    if plotly == "inline":
        script = f"<script>{plotly_js()}</script>"
    elif plotly:
        script = f'<script src="{html.escape(plotly)}"></script>'
    else:
        script = ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style>{script}</head>")


def _facts(header: StudyHeader) -> str:
    best = "-" if header.best_value is None else fmt(header.best_value)
    trial = "" if header.best_trial is None else f" (trial #{header.best_trial})"
    counts = ", ".join(f"{header.counts.get(s, 0)} {s.lower()}" for s in STATES if header.counts.get(s))
    items = [f'best {html.escape(header.metric)} <b id="best-value">{best}</b>{trial}',
             f"{html.escape(header.direction)}",
             f'<span id="trial-counts">{sum(header.counts.values())} trials: {counts or "none"}</span>']
    if header.extra.get("stale"):
        items.append(f'<span id="stale" class="warn">{header.extra["stale"]} of them stale (no '
                     f'heartbeat for over {header.extra["grace"]:g} s: its runner is gone): '
                     f'<code>tuner doctor {html.escape(header.name)} --fail-stale</code></span>')
    if header.last_activity is not None:
        items.append(f"last activity {header.last_activity:%Y-%m-%d %H:%M:%S}")
    if header.data:
        items.append(html.escape(header.data))
    return '<div class="facts">' + "".join(f'<span class="fact">{i}</span>' for i in items) + "</div>"


def study_page(title: str, header: StudyHeader, panels: list[RenderedPanel], *, plotly: str,
               nav: list[tuple[str, str]] | None = None, description: str = "",
               note: str | None = None) -> str:
    """A study's views: a header with the key numbers, then every panel in order."""
    links = "".join(f'<a href="{html.escape(href)}">{html.escape(text)}</a>' for text, href in nav or ())
    body = "".join(panel_html(p) for p in panels)
    desc = f'<p class="muted">{html.escape(description)}</p>' if description else ""
    foot = note or ""
    return (f"{_head(title, plotly)}<body>"
            f'<header class="top"><h1 id="study-name" data-study="{html.escape(header.name)}">'
            f"{html.escape(title)}</h1>{f'<nav>{links}</nav>' if links else ''}{_facts(header)}{desc}"
            f'</header><main><div class="grid">{body}</div></main>{DRAW_SCRIPT}'
            f"<footer>Generated by tuner at {generated_at()} · plotly.js {plotly_version()}"
            f"{' · ' + html.escape(foot) if foot else ''}</footer></body></html>\n")


VERDICT_COLORS = {"regression": "#b42318", "improvement": "#067647", "ok": "#344054",
                  "no_result": "#b54708"}


def _count_cell(row: Any, state: str) -> str:
    """A study list cell: the trials in ``state``; RUNNING ones whose runner is gone marked."""
    n = row.counts.get(state, 0)
    if state != "RUNNING" or not row.stale:
        return f"<td class=num>{n}</td>"
    return (f'<td class="num stale" title="RUNNING without a heartbeat for longer than the grace '
            f'period: their runner is gone; tuner doctor --fail-stale fails and re-queues them">'
            f"{n} ({row.stale} stale)</td>")


def list_page(rows: list[Any], *, storage: str, ids: dict[str, int], dashboards: list[str],
              nights: dict[str, dict[str, Any] | None] | None = None) -> str:
    """The study list: best value, trial counts by state, the verdict of each night of a
    nightly sweep, last activity per study, with links to the tuner views and to
    optuna-dashboard. ``nights``: study name -> its stored verdict (``None``: none yet), for
    the night studies only; they open on the ``nightly`` dashboard, and only they offer it."""
    nights = nights or {}
    head = ("<tr><th>study</th><th>metric</th><th class=num>best</th><th class=num>best trial</th>"
            + "".join(f"<th class=num>{s.lower()}</th>" for s in STATES)
            + "<th>verdict</th><th>last activity</th><th>views</th></tr>")
    body = []
    for r in rows:
        name = html.escape(r.name)
        q = quote(r.name, safe="")
        night = r.name in nights
        offered = [d for d in dashboards if night or d != "nightly"]
        if night and "nightly" in offered:
            offered = ["nightly"] + [d for d in offered if d != "nightly"]
        views = " · ".join(
            f'<a href="/tuner/studies/{q}?dashboard={quote(d)}">{html.escape(d)}</a>' for d in offered)
        sid = ids.get(r.name)
        optuna_link = f' · <a href="/dashboard/studies/{sid}">optuna-dashboard</a>' if sid is not None else ""
        best = "-" if r.best_value is None or (isinstance(r.best_value, float) and math.isnan(r.best_value)) \
            else fmt(r.best_value)
        trial = "-" if r.best_trial is None else f"#{r.best_trial}"
        last = f"{r.last_activity:%Y-%m-%d %H:%M:%S}" if r.last_activity else "-"
        counts = "".join(_count_cell(r, s) for s in STATES)
        verdict = ""
        if night:
            v = nights[r.name] or {}
            color = VERDICT_COLORS.get(v.get("verdict", ""), "#667085")
            title = html.escape(str(v.get("message", "")), quote=True)
            verdict = (f'<span style="color:{color};font-weight:600" title="{title}">'
                       f"{html.escape(verdict_label(nights[r.name]))}</span>")
        body.append(f'<tr data-study="{name}"><td><a href="/tuner/studies/{q}">{name}</a></td>'
                    f"<td>{html.escape(r.metric)} ({html.escape(r.short_directions)})</td>"
                    f'<td class="num best">{best}</td><td class=num>{trial}</td>{counts}'
                    f'<td class="verdict">{verdict}</td><td>{last}</td><td>{views}{optuna_link}</td></tr>')
    table = (f'<table class="list" id="studies"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'
             if rows else '<p id="studies">No studies yet. Start one with <code>tuner run '
                          'studies/digits.toml</code>.</p>')
    return (f"{_head('tuner studies', None)}<body><header class=\"top\"><h1>Studies</h1>"
            f'<div class="meta">{html.escape(storage)} · <a href="/dashboard">optuna-dashboard</a> · '
            f'<a href="/tuner/api/studies">JSON</a></div></header><main>{table}</main>'
            f"<footer>tuner · {len(rows)} studies · {generated_at()}</footer></body></html>\n")

