"""Scheduled nightly sweeps: one dated study per night, warm-started from the previous night,
checked for regressions against the last nights, with a scheduler service and trend views.

- :mod:`tuner.nightly.nights`: naming (``<study.name>-YYYY-MM-DD``), listing nights.
- :mod:`tuner.nightly.warmstart`: enqueue the previous night's top-k valid configurations.
- :mod:`tuner.nightly.regression`: baseline, incumbent re-evaluation, verdict, exit codes.
- :mod:`tuner.nightly.run`: one night start to finish (``tuner nightly``), under a DB lock.
- :mod:`tuner.nightly.cron` and :mod:`tuner.nightly.scheduler`: ``tuner scheduler``.
- :mod:`tuner.nightly.history` and :mod:`tuner.nightly.figures`: ``tuner history``, dashboard
  and report views (``trend_figure``, ``choices_figure``, ``verdict_markdown``).

This package imports nothing at import time (``tuner.config`` uses :mod:`tuner.nightly.cron`
to validate ``[schedule]``). ``docs/nightly.md`` is the user guide.
"""
