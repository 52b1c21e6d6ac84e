"""Rendering a dashboard file for one study: every panel built once, errors kept per panel."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import optuna
import plotly.graph_objects as go

from tuner.dashboard.context import PanelContext, _is_kind, _kind_name
from tuner.dashboard.registry import allowed_of, get_panel, panel_names
from tuner.dashboard.spec import DashboardError, DashboardSpec, PanelSpec
from tuner.params import literal

log = logging.getLogger("tuner.dashboard")


@dataclass
class RenderedPanel:
    """One rendered panel: a figure or markdown, or the error that stopped its builder."""

    spec: PanelSpec
    title: str
    key: str
    figure: go.Figure | None = None
    markdown: str | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def type(self) -> str:
        return self.spec.type


def check_panels(spec: DashboardSpec) -> None:
    """Every panel named in ``spec`` is registered and its options are known, typed and
    allowed (:class:`~tuner.dashboard.registry.Allowed`); otherwise a :class:`DashboardError`
    that names the file, the panel, the option, the value and the choices."""
    problems = []
    unknown_type = False
    for p in spec.panels:
        info = get_panel(p.type)
        if info is None:
            problems.append(f"{p.where(spec.source)}: unknown panel type {p.type!r}")
            unknown_type = True
            continue
        if info.options is None:
            continue
        for key, value in p.options.items():
            if key not in info.options:
                valid = ", ".join(sorted(info.options)) or "none"
                problems.append(f"{p.where(spec.source)}: unknown option {key!r} (options: {valid}; "
                                f"every panel also takes title, width, height, attach)")
                continue
            kind, allowed = info.options[key][0], allowed_of(info.options[key])
            if not _is_kind(value, kind):
                problems.append(f"{p.where(spec.source)}: option {key} must be "
                                f"{_kind_name(kind)}, got {literal(value)}")
            elif allowed is not None and (why := allowed.problem(value)) is not None:
                problems.append(f"{p.where(spec.source)}: option {key} must be "
                                f"{allowed.describe(kind)}, got {literal(value)}"
                                + (f": {why}" if why else ""))
    if problems:
        raise DashboardError("; ".join(problems), hint=f"registered panels: {', '.join(panel_names())}"
                             if unknown_type else None)


def render_dashboard(spec: DashboardSpec, study: optuna.Study, study_file: Any, storage: Any, *,
                     compute_reference: bool = True,
                     shared: dict[str, Any] | None = None) -> list[RenderedPanel]:
    """Build every panel of ``spec`` for ``study``, in order. A panel whose builder raises is
    returned with ``error`` set (and logged), so one broken view never hides the others;
    unknown panel names and bad options raise :class:`DashboardError` before anything runs."""
    check_panels(spec)
    base = PanelContext(study, study_file, storage, dashboard=spec.name,
                        shared={} if shared is None else shared,  # an empty one is the caller's too
                        compute_reference=compute_reference)
    dup = {p.type for p in spec.panels if sum(q.type == p.type for q in spec.panels) > 1}
    out = []
    for p in spec.panels:
        info = get_panel(p.type)
        assert info is not None
        options = {k: v[1] for k, v in (info.options or {}).items()}
        options.update(p.options)
        ctx = base.for_panel(p.type, options, p.where(spec.source))
        # a stable id: tuner-<type>, with the position when a type appears twice
        key = f"tuner-{p.type}-{p.index + 1}" if p.type in dup else f"tuner-{p.type}"
        item = RenderedPanel(p, p.title or info.title, key.replace(".", "-"))
        started = time.perf_counter()
        try:
            result = info.builder(ctx)
        except DashboardError:
            raise
        except Exception as exc:
            log.warning("panel %s of %s failed for study %s: %s: %s", p.type, spec.source,
                        study.study_name, type(exc).__name__, exc)
            log.debug("panel %s failed", p.type, exc_info=True)
            item.error = f"{type(exc).__name__}: {exc}"
        else:
            if isinstance(result, go.Figure):
                if p.title:
                    result.update_layout(title_text=p.title)
                else:
                    item.title = _figure_title(result) or item.title
                item.figure = result
            elif isinstance(result, str):
                item.markdown = result
            elif result is None:
                item.markdown = "*Nothing to show yet.*"
            else:
                item.error = (f"panel {p.type!r} returned {type(result).__name__}; a builder returns a "
                              "plotly Figure, a markdown string or None")
        item.seconds = time.perf_counter() - started
        out.append(item)
    return out


def _figure_title(fig: go.Figure) -> str | None:
    title = fig.layout.title
    return title.text if title is not None and title.text else None
