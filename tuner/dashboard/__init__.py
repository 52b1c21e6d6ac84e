"""Dashboards: domain views of tuner studies, rendered with plotly.

Which panels a dashboard shows is declared in TOML files (``dashboards/*.toml``, see
:mod:`tuner.dashboard.spec`); what each panel draws is a builder in the panel registry
(:func:`register_panel`; the built-in ones are in :mod:`tuner.dashboard.panels`). The same
rendered panels are served by ``tuner dashboard`` next to optuna-dashboard, stored with each study
for optuna-dashboard (:mod:`tuner.dashboard.attach`), and written as a self-contained HTML report
(``tuner report``).
"""

import importlib
from typing import Any

#: public name -> the module that defines it; imported on first use (PEP 562), so importing
#: the package (or :mod:`tuner.dashboard.attach` for the runner's hook) loads neither plotly
#: nor pandas
_EXPORTS = {
    "ATTR_REFERENCE": "context", "PanelContext": "context",
    "DashboardHook": "attach", "attach_views": "attach", "refresh_study_views": "attach",
    "Allowed": "registry", "get_panel": "registry", "panel": "registry", "panel_names": "registry",
    "register_panel": "registry", "unregister_panel": "registry",
    "RenderedPanel": "render", "check_panels": "render", "render_dashboard": "render",
    "DashboardError": "spec", "DashboardSpec": "spec", "PanelSpec": "spec",
    "load_dashboard": "spec", "parse_dashboard": "spec",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tuner.dashboard' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tuner.dashboard.{module}"), name)
