"""The nightly sweep's views as dashboard panels (``dashboards/nightly.toml``)."""

from __future__ import annotations

from tuner.dashboard.registry import Allowed, register_panel
from tuner.nightly.figures import choices_figure, trend_figure, verdict_markdown

# base: the sweep whose nights are shown ("": the night's own sweep; any name is a sweep name);
# last: how many of its latest nights are shown
_OPTIONS = {"base": (str, ""), "last": (int, 0, Allowed(low=0, note="0: every night"))}


def register() -> None:
    """Register the nightly panels (called once by the registry, on its first use)."""
    register_panel("nightly_trend", trend_figure, title="Best value per night",
                   description="Best value per night with the baseline band, the incumbent "
                               "re-trained on each night's data and verdict markers.",
                   options=_OPTIONS)
    register_panel("nightly_choices", choices_figure, title="Chosen configuration per night",
                   description="Optimizer, decay, batch-size scaling rule and learning rate of "
                               "each night's best trial.", options=_OPTIONS)
    register_panel("nightly_verdicts", verdict_markdown, title="Verdict",
                   description="The night's regression verdict with its numbers, and its warm "
                               "start (base: another sweep's latest night; last: a table of the "
                               "last nights' verdicts below it).", options=_OPTIONS)
