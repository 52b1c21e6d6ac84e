"""Dashboards: domain views of tuner studies, rendered with plotly.

Which panels a dashboard shows is declared in TOML files (``dashboards/*.toml``, see
:mod:`tuner.dashboard.spec`); what each panel draws is a builder in the panel registry
(:func:`register_panel`; the built-in ones are in :mod:`tuner.dashboard.panels`). The same
rendered panels are served by ``tuner dashboard`` next to optuna-dashboard, stored with each study
for optuna-dashboard (:mod:`tuner.dashboard.attach`), and written as a self-contained HTML report
(``tuner report``).
"""

from tuner.dashboard import panels as _panels  # noqa: F401  (registers the built-in panels)
from tuner.dashboard.attach import DashboardHook, attach_views, refresh_study_views
from tuner.dashboard.context import ATTR_REFERENCE, PanelContext
from tuner.dashboard.registry import get_panel, panel, panel_names, register_panel, unregister_panel
from tuner.dashboard.render import RenderedPanel, check_panels, render_dashboard
from tuner.dashboard.spec import DashboardError, DashboardSpec, PanelSpec, load_dashboard, parse_dashboard
from tuner.nightly import panels as _nightly_panels  # noqa: F401  (registers the nightly panels)

__all__ = ["ATTR_REFERENCE", "DashboardError", "DashboardHook", "DashboardSpec", "PanelContext",
           "PanelSpec", "RenderedPanel", "attach_views", "check_panels", "get_panel", "load_dashboard",
           "panel", "panel_names", "parse_dashboard", "refresh_study_views", "register_panel",
           "render_dashboard", "unregister_panel"]
