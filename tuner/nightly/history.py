"""The nights of a sweep so far (``tuner history``, the trend figures)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from typing import Any

from tuner import params as P
from tuner.config import StudyFile
from tuner.nightly.nights import ATTR_VERDICT, ATTR_WARM_START, list_nights
from tuner.results import list_studies
from tuner.storage import BufferedStorage
from tuner.study import ATTR_CONFIG, flat_params


@dataclass
class NightRecord:
    """One night: its best value and configuration, trial counts, verdict and warm start."""

    date: date
    study: str
    metric: str
    direction: str
    counts: dict[str, int]
    best_value: float | None
    best_trial: int | None
    config: dict[str, Any] | None
    verdict: dict[str, Any] | None
    warm_start: dict[str, Any] | None

    def choice(self, key: str) -> Any:
        """The night's best configuration's ``key``, as every run has it where the study file
        leaves it out (``decay`` is ``constant`` when not searched), ``None`` without a best."""
        return None if self.config is None else P.with_defaults(self.config).get(key)

    def as_dict(self) -> dict[str, Any]:
        return {"date": self.date.isoformat(), "study": self.study, "metric": self.metric,
                "direction": self.direction, "counts": self.counts, "best_value": self.best_value,
                "best_trial": self.best_trial, "config": self.config, "verdict": self.verdict,
                "warm_start": self.warm_start}


def night_history(storage: BufferedStorage, base: str) -> list[NightRecord]:
    """Every night of ``base``, oldest first (aggregate queries, plus one best-trial read per
    night)."""
    rows = {r.name: r for r in list_studies(storage)}
    out = []
    for night in list_nights(storage, base):
        row = rows.get(night.name)
        if row is None:
            continue
        config = None
        if row.best_trial is not None:
            try:
                best = storage.get_best_trial(night.study_id)
            except ValueError:
                best = None
            if best is not None:
                text = night.user_attrs.get(ATTR_CONFIG)
                sf = StudyFile.from_json(text) if text and "config" not in best.user_attrs else None
                config = flat_params(best, sf)
        value = row.best_value
        out.append(NightRecord(
            date=night.date, study=night.name, metric=row.metric, direction=row.direction,
            counts=dict(row.counts), best_value=value if value is None or math.isfinite(value) else None,
            best_trial=row.best_trial, config=config, verdict=night.user_attrs.get(ATTR_VERDICT),
            warm_start=night.user_attrs.get(ATTR_WARM_START)))
    return out
