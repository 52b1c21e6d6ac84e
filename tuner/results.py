"""Reading results out of studies: the study list, top trials, best per optimizer / decay /
scaling rule, importances and exports. Shared by the CLI, the dashboards and nightly sweeps."""

from __future__ import annotations

import json
import math
import statistics
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import optuna
import sqlalchemy
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState

from tuner.storage import BufferedStorage
from tuner.storage.buffered import earliest_with_value
from tuner.study import ATTR_CONFIG, ATTR_METRIC, flat_params, is_multi_objective, resolved_params

GROUP_KEYS = ("optimizer", "decay", "batch_scaling")
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


@dataclass
class StudyRow:
    """One line of the study list."""

    name: str
    direction: str
    metric: str
    counts: dict[str, int]
    best_value: float | None
    best_trial: int | None
    last_activity: datetime | None
    stale: int = 0  # RUNNING trials without a heartbeat for longer than the grace period

    @property
    def short_directions(self) -> str:
        """``max``, ``min`` or ``max, min`` (several objectives), for the study lists."""
        return ", ".join(d[:3] for d in self.direction.split(",")) or "-"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "direction": self.direction, "metric": self.metric,
                "counts": self.counts, "best_value": self.best_value, "best_trial": self.best_trial,
                "stale": self.stale,
                "last_activity": self.last_activity.isoformat() if self.last_activity else None}


def list_studies(storage: BufferedStorage) -> list[StudyRow]:
    """Every study with its trial counts by state, best value, last activity and stale RUNNING
    trials, from a few aggregate queries (fast for any number of trials)."""
    engine = storage.backend.engine
    studies = models.StudyModel.__table__
    trials = models.TrialModel.__table__
    values = models.TrialValueModel.__table__
    directions = models.StudyDirectionModel.__table__
    attrs = models.StudyUserAttributeModel.__table__
    with engine.connect() as conn:
        names = dict(conn.execute(sqlalchemy.select(studies.c.study_id, studies.c.study_name)).all())
        dirs: dict[int, dict[int, Any]] = {}
        for sid, obj, d in conn.execute(sqlalchemy.select(
                directions.c.study_id, directions.c.objective, directions.c.direction)).all():
            dirs.setdefault(sid, {})[obj] = d
        metrics = dict(conn.execute(sqlalchemy.select(attrs.c.study_id, attrs.c.value_json)
                                    .where(attrs.c.key == ATTR_METRIC)).all())
        counts: dict[int, dict[str, int]] = {}
        last: dict[int, datetime] = {}
        for sid, state, n, started, completed in conn.execute(sqlalchemy.select(
                trials.c.study_id, trials.c.state, sqlalchemy.func.count(),
                sqlalchemy.func.max(trials.c.datetime_start),
                sqlalchemy.func.max(trials.c.datetime_complete)).group_by(
                trials.c.study_id, trials.c.state)).all():
            name = state.name if isinstance(state, TrialState) else str(state)
            counts.setdefault(sid, {})[name] = n
            for stamp in (started, completed):
                if stamp is not None and (sid not in last or stamp > last[sid]):
                    last[sid] = stamp
        best: dict[int, tuple[float | None, float | None]] = {}
        for sid, lo, hi in conn.execute(sqlalchemy.select(
                trials.c.study_id, sqlalchemy.func.min(values.c.value), sqlalchemy.func.max(values.c.value))
                .join(values, values.c.trial_id == trials.c.trial_id)
                .where(trials.c.state == TrialState.COMPLETE, values.c.objective == 0)
                .group_by(trials.c.study_id)).all():
            best[sid] = (lo, hi)
        running = {sid for sid, c in counts.items() if c.get("RUNNING")}
        configs = dict(conn.execute(sqlalchemy.select(attrs.c.study_id, attrs.c.value_json).where(
            attrs.c.key == ATTR_CONFIG, attrs.c.study_id.in_(sorted(running)))).all()) if running else {}
        rows, ids = [], sorted(names, key=names.__getitem__)
        for sid in ids:
            name = names[sid]
            objectives = dirs.get(sid, {})
            names_by_objective = [getattr(d, "name", str(d)).lower()
                                  for _, d in sorted(objectives.items())]
            direction_name = ",".join(names_by_objective)
            lo, hi = best.get(sid, (None, None))
            value = hi if direction_name == "maximize" else lo
            if len(objectives) > 1:
                value = None  # multi-objective: no single best value
            earliest = earliest_with_value(conn, sid, value)
            best_number = None if earliest is None else earliest[1]
            metric = _json(metrics.get(sid)) or ("value" if len(objectives) <= 1
                                                 else f"{len(objectives)} objectives")
            stamp = last.get(sid)
            rows.append(StudyRow(name, direction_name, metric,
                                 {s: counts.get(sid, {}).get(s, 0) for s in STATES}, value, best_number,
                                 _utc_to_local(stamp) if stamp else None))
    for row, sid in zip(rows, ids, strict=True):
        if sid in running:
            row.stale = stale_running(storage, sid, _study_file(_json(configs.get(sid))))[0]
    return rows


def stale_running(storage: BufferedStorage, study_id: int, study_file: Any) -> tuple[int, int]:
    """``(n, grace)``: how many RUNNING trials of the study have had no heartbeat for longer
    than its study file's grace period (seconds). Their runner is gone: the study's next run
    or ``tuner doctor --fail-stale`` fails and re-queues them. ``(0, 0)`` for a study without
    a study file: made by Optuna directly, its trials need not beat at all."""
    from tuner.storage.coordination import stale_trial_ids

    if study_file is None:
        return 0, 0
    grace = study_file.study.reliability.grace
    return len(stale_trial_ids(storage, study_id, grace)), grace


def _study_file(text: str | None) -> Any:
    """The study file stored with a study, or ``None`` (none, or one this version cannot read)."""
    from tuner.config import StudyFile

    try:
        return StudyFile.from_json(text) if text else None
    except Exception:
        return None


def _json(text: str | None) -> Any:
    import json

    return None if text is None else json.loads(text)


def _utc_to_local(stamp: datetime) -> datetime:

    return stamp.replace(tzinfo=UTC).astimezone().replace(tzinfo=None)


def completed(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def top_trials(study: optuna.Study, k: int = 10) -> list[FrozenTrial]:
    """The ``k`` best COMPLETE trials, best first (none for a multi-objective study)."""
    if is_multi_objective(study):
        return []
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    trials = [t for t in completed(study) if t.value is not None and math.isfinite(t.value)]
    return sorted(trials, key=lambda t: (-t.value if maximize else t.value, t.number))[:k]


@dataclass
class GroupStats:
    """Best and spread of the metric over COMPLETE trials with ``key == value``."""

    key: str
    value: Any
    n: int
    best: float
    best_trial: int
    median: float
    q25: float
    q75: float
    pruned: int
    diverged: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def best_by(study: optuna.Study, key: str, study_file: Any = None) -> list[GroupStats]:
    """Per value of ``key`` (e.g. ``optimizer``): count, best, median and quartiles of the
    metric over COMPLETE trials, and how many were pruned or diverged; best group first
    (none for a multi-objective study)."""
    if is_multi_objective(study):
        return []
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    groups: dict[Any, list[FrozenTrial]] = {}
    stopped: dict[Any, list[FrozenTrial]] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        value = resolved_params(trial, study_file).get(key)
        if value is None:
            continue
        (groups if trial.state == TrialState.COMPLETE else stopped).setdefault(value, []).append(trial)
    out = []
    for value in set(groups) | set(stopped):
        done = [t for t in groups.get(value, []) if t.value is not None]
        halted = stopped.get(value, [])
        diverged = sum(1 for t in halted if t.user_attrs.get("diverged"))
        if not done:
            out.append(GroupStats(key, value, 0, math.nan, -1, math.nan, math.nan, math.nan,
                                  len(halted), diverged))
            continue
        vals = sorted(t.value for t in done)
        best = (max if maximize else min)(done, key=lambda t: t.value)
        q = _quartiles(vals)
        out.append(GroupStats(key, value, len(done), best.value, best.number, statistics.median(vals),
                              q[0], q[1], len(halted), diverged))
    # equal bests: the group whose best trial came first, as the best trial is the earliest
    out.sort(key=lambda g: (math.isnan(g.best), -g.best if maximize else g.best, g.best_trial,
                            str(g.value)))
    return out


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    qs = statistics.quantiles(values, n=4, method="inclusive")
    return qs[0], qs[2]


def divergence_note(trials: list[FrozenTrial]) -> str | None:
    """For a study without a COMPLETE trial: how many of its pruned trials diverged and, when
    all did, what to change (``None`` when none diverged)."""
    stopped = [t for t in trials if t.state == TrialState.PRUNED]
    diverged = sum(1 for t in stopped if t.user_attrs.get("diverged"))
    if not diverged:
        return None
    advice = (": the learning rates tried are too large for this data; lower space.lr (or its "
              "range), add warmup, or try adaptive optimizers (adam, adagrad, rmsprop)"
              ) if diverged == len(stopped) else ""
    return (f"{diverged} of {len(stopped)} pruned trial(s) diverged (loss not finite or blowing "
            f"up){advice}")


MIN_IMPORTANCE_TRIALS = 10
"""Fewer COMPLETE trials than this: no importances (with 2 trials, lr came out at 0.92)."""


def importances(study: optuna.Study) -> dict[str, float]:
    """Parameter importances (Optuna 5 default evaluator, PED-ANOVA) over the parameters all
    COMPLETE trials share (``adam.beta1``, used by some trials only, is left out: its spread
    over a subset would be ranked with the others'); empty with fewer than
    :data:`MIN_IMPORTANCE_TRIALS` COMPLETE trials."""
    done = completed(study)
    if len(done) < MIN_IMPORTANCE_TRIALS or is_multi_objective(study):
        return {}
    shared = set.intersection(*(set(t.params) for t in done))
    if not shared:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            found = optuna.importance.get_param_importances(study, params=sorted(shared))
        except (ValueError, RuntimeError):
            return {}
    # equal importances (often 0.0) in name order: the same table on every call
    return dict(sorted(found.items(), key=lambda kv: (-kv[1], kv[0])))


def table_cell(value: Any) -> Any:
    """A record's value as a CSV or Parquet cell: lists as JSON text (``"[0.5, 0.75]"``)."""
    return json.dumps(value) if isinstance(value, list | dict) else value


def record_columns(records: list[dict[str, Any]]) -> list[str]:
    """The columns of a table of :func:`trial_record` s: the trial's own fields, then values,
    parameters and attributes, each group in order of first appearance (a parameter that only
    later trials have, such as ``momentum``, sits with the parameters, not after the
    attributes)."""
    groups = ("value.", "param.", "attr.")
    seen = dict.fromkeys(key for record in records for key in record)
    return sorted(seen, key=lambda key: next((i + 1 for i, prefix in enumerate(groups)
                                              if key.startswith(prefix)), 0))


def trial_record(trial: FrozenTrial, study_file: Any = None, *, curves: bool = False) -> dict[str, Any]:
    """A flat, JSON-friendly description of a trial for exports and ``--json`` output (a
    list-valued parameter, step decay's ``milestones``, stays a list: :func:`table_cell`
    writes it into a table)."""
    record: dict[str, Any] = {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.values[0] if trial.values and len(trial.values) == 1 else None,
        "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
        "datetime_complete": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
        "duration_s": trial.duration.total_seconds() if trial.duration else None,
        "retry_of": trial.system_attrs.get("failed_trial"),
    }
    if trial.values and len(trial.values) > 1:  # a multi-objective study (not made by tuner)
        record.update({f"value.{i}": v for i, v in enumerate(trial.values)})
    record.update({f"param.{k}": v for k, v in flat_params(trial, study_file).items()})
    for key, value in trial.user_attrs.items():
        if key not in ("config", "curve"):  # (the parameters above; the curve with curves)
            record[f"attr.{key}"] = value  # a list or dict (warm_start) as JSON in a table
    if curves:
        record["curve"] = trial.user_attrs.get("curve")
        record["intermediate_values"] = {str(k): v for k, v in trial.intermediate_values.items()}
    return record
