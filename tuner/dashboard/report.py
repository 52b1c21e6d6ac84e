"""A study's dashboard as one HTML page: served by ``tuner dashboard`` (plotly.js referenced)
or written by ``tuner report`` (plotly.js embedded once, works offline, no database needed)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.dashboard.context import PanelContext
from tuner.dashboard.html import StudyHeader, study_header, study_page
from tuner.dashboard.render import RenderedPanel, render_dashboard
from tuner.dashboard.spec import DashboardSpec, load_dashboard
from tuner.errors import TunerError


class MultiObjectiveError(TunerError):
    """The tuner views are for single-objective studies; a multi-objective study (made with
    Optuna directly) has no single best trial to show. ``study_id``: for a link to
    optuna-dashboard, which plots its Pareto front."""

    def __init__(self, message: str, *, hint: str | None = None, study_id: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.study_id = study_id


@dataclass
class StudyView:
    html: str
    panels: list[RenderedPanel]
    header: StudyHeader
    spec: DashboardSpec
    seconds: float

    @property
    def errors(self) -> dict[str, str]:
        return {p.key: p.error for p in self.panels if p.error}


def render_study_view(storage: Any, study_name: str, *, dashboard: str = "study",
                      folder: str | Path | None = None, plotly: str = "inline",
                      nav: list[tuple[str, str]] | None = None, spec: DashboardSpec | None = None,
                      study: Any = None, study_file: Any = None) -> StudyView:
    """Render ``dashboard`` for the study ``study_name`` into a complete HTML page."""
    from tuner.study import load_study

    started = time.perf_counter()
    spec = spec or load_dashboard(dashboard, folder)
    if study is None:
        study, study_file = load_study(study_name, storage)
    check_single_objective(study)
    shared: dict[str, Any] = {}
    panels = render_dashboard(spec, study, study_file, storage, shared=shared)
    header = study_header(PanelContext(study, study_file, storage, shared=shared))
    page = study_page(spec.title_for(study.study_name), header, panels, plotly=plotly, nav=nav,
                      description=spec.description,
                      note=f"dashboard {spec.name} ({Path(spec.source).name})")
    return StudyView(page, panels, header, spec, time.perf_counter() - started)


def check_single_objective(study: Any) -> None:
    """A :class:`MultiObjectiveError` for a study with several objectives (every view ranks
    trials by one value)."""
    directions = [d.name.lower() for d in study.directions]
    if len(directions) > 1:
        raise MultiObjectiveError(
            f"study {study.study_name!r} is multi-objective ({len(directions)} objectives: "
            f"{', '.join(directions)}; not created by tuner): the tuner views need a single "
            "objective", hint=f"`tuner show {study.study_name}` lists its Pareto-optimal trials; "
                              "optuna-dashboard (tuner dashboard) plots its Pareto front",
            study_id=study._study_id)


def write_report(storage: Any, study_name: str, output: str | Path, *, dashboard: str = "study",
                 folder: str | Path | None = None) -> StudyView:
    """Write the self-contained report file (plotly.js embedded once)."""
    view = render_study_view(storage, study_name, dashboard=dashboard, folder=folder, plotly="inline")
    path = Path(output)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(view.html, encoding="utf-8")
    tmp.replace(path)
    return view
