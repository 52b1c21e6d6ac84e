"""Warm start: tonight's study begins with the previous night's best configurations.

Rules (``docs/nightly.md``):

- The *previous night* is the most recent earlier night of the same base name that has at least
  one COMPLETE trial (a night that produced nothing is passed over).
- Its COMPLETE trials are ranked by value; identical configurations count once; the first
  ``schedule.warm_start`` are candidates.
- A candidate is mapped onto **tonight's** search space from its full training configuration
  (the trial's ``config`` attribute), so a key that was fixed yesterday and is searched tonight
  (or the reverse) carries over. It is enqueued (Optuna ``enqueue_trial``: a WAITING trial the
  runner runs before any sampled one) only if it is a point of tonight's space
  (:meth:`tuner.space.SearchSpace.check_optuna_params`) *and* tonight's space would train
  exactly the same configuration; otherwise it is skipped with the reasons.
- It happens once per night: the outcome is stored as the study user attribute
  ``tuner.nightly.warm_start``, and a resumed night does not enqueue again. (If a run died
  between enqueueing and storing that attribute, the trials already enqueued are recognized by
  their ``warm_start`` user attribute and not enqueued twice.)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner import params as P
from tuner.config import StudyFile
from tuner.nightly.nights import ATTR_WARM_START, NightRef, list_nights
from tuner.results import top_trials
from tuner.space import SearchSpace
from tuner.storage import BufferedStorage
from tuner.study import flat_params, load_study


@dataclass
class WarmStart:
    """What a night's warm start did. ``enqueued``/``skipped`` entries name the previous
    night's trial (``trial``) and its ``value``; skipped ones carry ``reasons``."""

    source: str | None
    k: int
    enqueued: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    resumed: bool = False  # done by an earlier run of this night; nothing enqueued now

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "k": self.k, "enqueued": self.enqueued,
                "skipped": self.skipped}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, resumed: bool = False) -> WarmStart:
        return cls(data.get("source"), int(data.get("k", 0)), list(data.get("enqueued", [])),
                   list(data.get("skipped", [])), resumed)

    def lines(self) -> list[str]:
        """Human-readable summary, one line per fact."""
        if self.k == 0:
            return ["warm start: off (schedule.warm_start = 0)"]
        if self.source is None:
            if self.resumed:
                return ["warm start: none (when this night first ran, no earlier night had a "
                        "COMPLETE trial)"]
            return ["warm start: no earlier night with a COMPLETE trial; starting cold"]
        again = " (done by the first run of this night)" if self.resumed else ""
        out = [f"warm start from {self.source}{again}: {len(self.enqueued)} of its top "
               f"{self.k} configuration(s) enqueued, {len(self.skipped)} skipped"]
        for item in self.skipped:
            out.append(f"  skipped #{item['trial']} ({_fmt(item.get('value'))}): "
                       + "; ".join(item["reasons"]))
        return out


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def previous_night(storage: BufferedStorage, base: str, day: date) -> NightRef | None:
    """The most recent night of ``base`` before ``day`` with at least one COMPLETE trial."""
    for night in reversed([n for n in list_nights(storage, base) if n.date < day]):
        if storage.get_all_trials(night.study_id, deepcopy=False, states=(TrialState.COMPLETE,)):
            return night
    return None


class _ConfigTrial:
    """Answers ``suggest_*`` from a flat training configuration (by training key) and records
    the Optuna parameters that tonight's space asks for."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.params: dict[str, Any] = {}
        self.missing: list[str] = []

    def _take(self, name: str, fallback: Any) -> Any:
        key = name.rsplit(".", 1)[-1]  # "adam.beta1" -> "beta1"
        if key not in self.config:
            self.missing.append(key)
            return fallback
        self.params[name] = self.config[key]
        return self.config[key]

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        return self._take(name, choices[0])

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False,
                      step: float | None = None) -> float:
        return self._take(name, low)

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False, step: int = 1) -> int:
        return self._take(name, low)


SELECTORS = ("optimizer", "decay")  # keys that decide which other keys apply


def map_config(space: SearchSpace, config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Tonight's Optuna parameters for a previous night's training configuration, and the
    reasons it is not a configuration of tonight's space (empty: it can be enqueued).

    Every reason is given, one per key, in catalogue order with the optimizer and the decay
    first: they decide which other keys apply. When one of them cannot be kept (fixed to
    another value tonight, or no longer set), what follows from that alone is not repeated: the
    keys only one of the two optimizers (decays) uses (``reg`` for ``adamw`` -> ``sgd``), and
    the optimizer's own defaults (``batch_scaling``) when tonight's space does not set them."""
    try:  # a key the configuration left out trained with the engine's default: that is its value
        trial = _ConfigTrial({**P.resolve(config), **config})
    except ValueError:
        trial = _ConfigTrial(config)
    try:
        rebuilt = space.suggest(trial)
    except (ValueError, KeyError) as exc:
        return {}, [str(exc)]
    reasons: dict[str, str] = {}  # training key -> why
    for key in trial.missing:
        reasons.setdefault(key, f"{key} is searched tonight but the configuration has no value "
                                "for it")
    by_name = {d.name: d for d in space.dimensions()}
    for name, value in trial.params.items():  # as SearchSpace.check_optuna_params words them
        dim = by_name[name]
        if not dim.contains(value):
            where = "not" if dim.kind == "choice" else "outside"
            shown = _short(value, lambda v, dim=dim: not dim.contains(v))
            reasons.setdefault(name.rsplit(".", 1)[-1], f"{name}={shown} is {where} {dim.describe()}")
    try:
        old, new = P.resolve(config), P.resolve(rebuilt)
    except ValueError as exc:
        return trial.params, _ordered(reasons) or [f"the configuration is not valid tonight: {exc}"]
    fixed = {d.key: d.value for d in space.dimensions() if d.kind == "fixed"}
    inherited: set[str] = set()  # "no longer sets it": tonight's default, not tonight's choice
    for key in set(old) | set(new):
        if key in reasons or old.get(key) == new.get(key):
            continue
        if key in fixed:
            reasons[key] = (f"{key} is fixed to {P.literal(new.get(key))} tonight (was "
                            f"{P.literal(old.get(key))})")
        else:
            inherited.add(key)
            was = _short(old.get(key), lambda v, now=new.get(key): v != now)
            reasons[key] = (f"{key} would be {P.literal(new.get(key))} tonight (was {was}): "
                            "tonight's space no longer sets it")
    if any(key in reasons for key in SELECTORS):
        def selectors(c: dict[str, Any]) -> tuple[Any, Any]:
            return (c.get("optimizer"), c.get("decay", P.PARAMS["decay"].default))

        was, now = selectors(old), selectors(new)
        for key in [k for k in reasons if k not in SELECTORS and k in P.PARAMS]:
            spec = P.PARAMS[key]
            follows = (spec.applies(*was) != spec.applies(*now)
                       or (key in inherited and was[0] != now[0]
                           and isinstance(spec.default, Mapping))
                       # the optimizer (decay) cannot be used tonight: its own keys neither
                       or ("optimizer" in reasons and (spec.optimizers is not None
                                                       or isinstance(spec.default, Mapping)))
                       or ("decay" in reasons and spec.decays is not None))
            if follows:
                del reasons[key]
    return trial.params, _ordered(reasons)


def _short(value: Any, still_true: Callable[[Any], bool]) -> str:
    """A float in four significant digits when the rounded value says the same
    (``still_true(rounded)``: still outside the range, still another value), else in full;
    anything else as :func:`tuner.params.literal` shows it."""
    if isinstance(value, float) and not isinstance(value, bool):
        rounded = float(f"{value:.4g}")
        if still_true(rounded):
            return repr(rounded)
    return P.literal(value)


def _ordered(reasons: dict[str, str]) -> list[str]:
    """The reasons, the optimizer's and the decay's first, then in catalogue order."""
    order = {key: i for i, key in enumerate((*SELECTORS, *(k for k in P.PARAMS if k not in SELECTORS)))}
    return [reasons[k] for k in sorted(reasons, key=lambda k: (order.get(k, len(order)), k))]


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def warm_start(study: optuna.Study, sf: StudyFile, storage: BufferedStorage, *, base: str,
               day: date, k: int) -> WarmStart:
    """Enqueue the previous night's top-``k`` configurations that are valid in tonight's
    space into ``study`` (tonight's night study), once per night; see the module docs."""
    stored = study.user_attrs.get(ATTR_WARM_START)
    if stored is not None:
        return WarmStart.from_dict(stored, resumed=True)
    if k <= 0:
        result = WarmStart(None, 0)
        study.set_user_attr(ATTR_WARM_START, result.as_dict())
        return result
    source = previous_night(storage, base, day)
    if source is None:
        result = WarmStart(None, k)
        study.set_user_attr(ATTR_WARM_START, result.as_dict())
        return result
    prev_study, prev_sf = load_study(source.name, storage)
    result = WarmStart(source.name, k)
    already = {(t.user_attrs["warm_start"].get("night"), t.user_attrs["warm_start"].get("trial"))
               for t in study.get_trials(deepcopy=False)
               if isinstance(t.user_attrs.get("warm_start"), dict)}
    seen: set[str] = set()
    for trial in top_trials(prev_study, len(prev_study.trials)):
        if len(result.enqueued) + len(result.skipped) >= k:
            break
        config = flat_params(trial, prev_sf)
        if _key(config) in seen:
            continue
        seen.add(_key(config))
        entry: dict[str, Any] = {"trial": trial.number, "value": trial.value}
        params, reasons = map_config(sf.space, config)
        if reasons:
            result.skipped.append({**entry, "reasons": reasons, "config": config})
            continue
        result.enqueued.append({**entry, "params": params})
        if (source.name, trial.number) not in already:
            study.enqueue_trial(params, user_attrs={"warm_start": {
                "night": source.name, "trial": trial.number, "value": trial.value}})
    study.set_user_attr(ATTR_WARM_START, result.as_dict())
    return result
