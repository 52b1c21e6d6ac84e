"""Regression detection: is tonight's best configuration still as good as the last nights'?

After a night's sweep, tonight is compared with a **baseline**: the last
``regression.baseline_nights`` earlier nights that have a COMPLETE trial.

- *Night value*: what each baseline night had available, i.e. its stored ``available`` (the
  better of its sweep's best and the incumbent re-trained on its data), or its best value when
  it has no verdict. A "search shortfall" night (its sweep fell short, its incumbent held)
  therefore enters the baseline at the incumbent's value, not at its unlucky sweep's.
- *Level*: the median of the night values (robust to one lucky or unlucky night; the max of
  several noisy nights would be biased upwards and flag equal nights).
- *Spread*: ``1.4826 x`` the median absolute deviation of the night values (MAD, scaled to
  estimate the standard deviation of normal noise; ``0`` with fewer than two nights). Unlike the
  standard deviation, one outlying night does not inflate it: with nights 0.9638, 0.9638 and
  0.8468 the spread is 0, where the standard deviation (0.0675) made the margin 0.135 and
  blinded the check.
- *Margin* (noise): ``max(tolerance, min(spread_factor x spread, cap))``, the cap being
  ``max(tolerance, MAX_NOISE_FRACTION x |level|)`` (5 % of the level): the tolerance is the
  floor, and however noisy the nights, the spread never widens the margin past 5 % of the level.
  Differences within the margin are noise.
- *Incumbent*: the configuration behind the best night value (that night's best trial, or the
  incumbent that night re-trained, when that is where its value came from). It is **re-trained
  on tonight's data** with its stored configuration and seed (``tuner.train.fit``, the engine is
  bit-for-bit deterministic), outside tonight's study. With the same data and code the
  re-evaluation reproduces its value exactly, so ``drift = re-evaluated - value`` measures what
  changed in the data (or code) and nothing else: no seed noise, no search luck. (Enqueueing it
  as a trial of tonight's study would give it a new seed, a slot of the budget, and a pruner
  that may stop it.)
- *Available tonight*: the better of tonight's best and the re-evaluated incumbent: the best
  configuration the team could ship this morning.
- *What changed*: the ``[data]`` and ``[model]`` sections of the study file the incumbent's
  value was scored under are compared with tonight's (an edit of ``model.epochs`` changes the
  re-trained value as surely as new data does), and for a sweep that trains on a data file,
  the digest of the file's bytes (``data`` in the verdict). A drift under an edited set-up is
  *set-up drift* (cause ``setup`` where it would be ``data``); on a changed file, *data
  drift*; on the same file and set-up it can only come from the code or its environment (the
  engine is deterministic), and the verdict says which. Bundled and synthetic datasets follow
  from the study file: only the set-up is compared.
- An incumbent that *diverges* on tonight's data (or whose metric is not finite) has no value:
  its drift is ``-inf`` (a data regression, unless tonight is an improvement) and the message
  says that it diverged, never a number.

Verdict (signs are such that positive is better, for maximized and minimized metrics alike),
checked in this order:

- ``improvement`` when available - level > margin and either the incumbent itself improved on
  tonight's data by more than the tolerance (cause ``data``: the data got easier) or tonight's
  sweep is above level + margin *and* better than the incumbent re-trained tonight (cause
  ``search``). The incumbent is the best baseline night, above the median by itself: its value
  alone is no news (``ok``, "the incumbent holds"), nor is the incumbent's own configuration
  scoring higher with tonight's seed (``ok``: seed noise).
- ``regression`` with cause ``data`` when the incumbent lost more than the margin on tonight's
  data (drift < -margin), even if the level (dragged down by bad nights) is still within
  reach: the best known configuration got measurably worse on tonight's data.
- ``ok`` when available is within the margin of the level. Cause ``search`` ("search
  shortfall") when tonight's sweep fell below level - margin but the incumbent still holds on
  tonight's data: search luck, not a regression (exit 0; printed as a warning, and the night
  enters later baselines at the incumbent's value).
- ``regression`` with cause ``space`` instead, when ``[space]`` was edited since the
  incumbent's night and tonight's space no longer holds the incumbent (``optimizer``
  narrowed, ``lr`` moved): the sweep fell short because of the edit, which no budget makes
  up for (exit 4, once: the night of the edit). The nights after it, under the same space,
  are ``ok`` with cause ``space``: the shortfall is the accepted edit's, not luck (the
  incumbent still holds on the night's data, and each night enters later baselines at its
  value, as a search shortfall does).
- ``regression`` when available < level - margin: tonight's sweep found nothing as good *and*
  the incumbent lost on tonight's data too. Cause ``data``, or ``unknown`` when the incumbent
  could not be re-evaluated (no stored configuration).
- ``no_result`` when tonight has no COMPLETE trial (the baseline's level, spread and margin
  are still computed and stored: the numbers tonight would have been compared with).

The first night (no baseline) is ``ok`` with cause ``no_baseline``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.config import RegressionRule, StudyFile
from tuner.data import Splits
from tuner.jsonsafe import jsonable
from tuner.nightly.nights import ATTR_VERDICT, NightRef, list_nights, verdict_label
from tuner.nightly.warmstart import map_config
from tuner.storage import BufferedStorage
from tuner.study import (
    ATTR_DATA_DIGEST,
    ATTR_DATA_FILE,
    changed_keys,
    data_digest,
    flat_params,
    load_data,
    load_study,
    trial_study_file,
)
from tuner.train import fit

EXIT_OK = 0
EXIT_NO_RESULT = 1
EXIT_REGRESSION = 4
EXIT_CODES = {"ok": EXIT_OK, "improvement": EXIT_OK, "regression": EXIT_REGRESSION,
              "no_result": EXIT_NO_RESULT}


@dataclass
class Judgement:
    """The pure outcome of :func:`judge` (numbers in metric units)."""

    verdict: str
    cause: str | None
    level: float | None
    spread: float | None
    margin: float | None
    delta: float | None  # available tonight - level, positive = better
    sweep_delta: float | None  # tonight's sweep best - level, positive = better
    drift: float | None  # incumbent re-evaluated - incumbent stored, positive = better
    available: float | None
    incumbent_diverged: bool = False  # re-trained on tonight's data, it diverged: no value
    same_config: bool = False  # tonight's best is the incumbent's configuration (another seed)


MAD_SCALE = 1.4826  # MAD x this estimates the standard deviation of normal noise
MAX_NOISE_FRACTION = 0.05  # the spread never widens the margin past 5 % of the level


def robust_spread(values: list[float]) -> float:
    """``MAD_SCALE x`` the median absolute deviation of ``values`` (0 for fewer than two)."""
    if len(values) < 2:
        return 0.0
    center = statistics.median(values)
    return MAD_SCALE * statistics.median(abs(v - center) for v in values)


def noise_margin(level: float, spread: float, rule: RegressionRule) -> float:
    """``max(tolerance, min(spread_factor x spread, cap))`` with ``cap = max(tolerance,
    MAX_NOISE_FRACTION x |level|)``: the tolerance is the floor; the spread widens the margin,
    never past the cap."""
    cap = max(rule.tolerance, MAX_NOISE_FRACTION * abs(level))
    return max(rule.tolerance, min(rule.spread_factor * spread, cap))


def judge(direction: str, tonight: float | None, baseline: list[float], rule: RegressionRule, *,
          incumbent_stored: float | None = None, incumbent_tonight: float | None = None,
          incumbent_diverged: bool = False, same_config: bool = False,
          best_new: float | None = None) -> Judgement:
    """The verdict from the numbers (see the module docs). ``baseline``: the value of each
    baseline night; ``incumbent_*``: the incumbent's value on its night's data and re-trained
    on tonight's data (``None``: not re-evaluated). A non-finite re-evaluation is a divergence:
    the incumbent is as bad as it gets on tonight's data (drift ``-inf``), not a number.
    ``same_config``: tonight's best trial trained the incumbent's configuration (warm-started,
    with another seed): whatever it scored, that is no better configuration; ``best_new`` is
    then the best value of tonight's other configurations (``None``: none), which may be."""
    sign = 1.0 if direction == "maximize" else -1.0
    if incumbent_tonight is not None and not math.isfinite(incumbent_tonight):
        incumbent_tonight, incumbent_diverged = None, True
    drift = None
    if incumbent_diverged and incumbent_stored is not None:
        drift = -math.inf
    elif incumbent_stored is not None and incumbent_tonight is not None:
        drift = sign * (incumbent_tonight - incumbent_stored)
    candidates = [v for v in (tonight, incumbent_tonight) if v is not None and math.isfinite(v)]
    available = (max if sign > 0 else min)(candidates) if candidates else None
    diverged = incumbent_diverged and incumbent_stored is not None
    level = statistics.median(baseline) if baseline else None
    spread = robust_spread(baseline) if baseline else None
    margin = noise_margin(level, spread, rule) if level is not None and spread is not None else None
    if tonight is None:  # nothing to compare, but what it would have been compared with
        return Judgement("no_result", None, level, spread, margin, None, None, drift, available,
                         diverged)
    if level is None or spread is None or margin is None:
        return Judgement("ok", "no_baseline", None, None, None, None, None, drift, available,
                         diverged)
    sweep_delta = sign * (tonight - level)
    delta = sign * (available - level)
    tol = rule.tolerance
    easier = drift is not None and drift > tol
    # the sweep found better than the typical night *and* than the incumbent can do tonight
    # (the incumbent is the best baseline night: above the median by itself, it is no news)
    new = best_new if same_config else tonight
    found = (new is not None and sign * (new - level) > margin
             and (incumbent_tonight is None or sign * (new - incumbent_tonight) > 0))
    if delta > margin and (found or easier):
        verdict, cause = "improvement", ("data" if easier else "search")
    elif drift is not None and drift < -margin:
        verdict, cause = "regression", "data"
    elif delta >= -margin:
        verdict, cause = "ok", ("search" if sweep_delta < -margin else None)
    else:
        verdict = "regression"
        cause = "data" if drift is not None and drift < -tol else "unknown"
    return Judgement(verdict, cause, level, spread, margin, delta, sweep_delta, drift, available,
                     diverged, same_config)


@dataclass
class Verdict:
    """A night's regression check, as stored in the study user attribute
    ``tuner.nightly.verdict`` (``as_dict``) and printed (``lines``)."""

    verdict: str
    cause: str | None
    message: str
    metric: str
    direction: str
    tonight: float | None
    tonight_trial: int | None
    baseline: dict[str, Any]
    incumbent: dict[str, Any] | None
    delta: float | None
    drift: float | None
    available: float | None
    computed_at: str
    data: dict[str, Any] | None = None  # what changed since the incumbent's night (see check_night)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.verdict, EXIT_NO_RESULT)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["exit_code"] = self.exit_code
        return jsonable(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        fields = {k: data.get(k) for k in cls.__dataclass_fields__}
        return cls(**fields)

    def lines(self) -> list[str]:
        f = _fmt
        out = []
        if self.tonight is None:
            out.append(f"tonight's best {self.metric}: none (no COMPLETE trial)")
        else:
            trial = f" (trial #{self.tonight_trial})" if self.tonight_trial is not None else ""
            out.append(f"tonight's best {self.metric}: {f(self.tonight)}{trial}")
        b = self.baseline
        if b.get("nights"):
            dates = ", ".join(n["date"] for n in b["nights"])
            if b.get("level") is None:  # stored before no_result verdicts kept the numbers
                numbers = (f"best {f(b.get('best'))} (median, spread and margin not computed: "
                           "tonight has no result)")
            else:
                numbers = (f"median {f(b['level'])}, best {f(b.get('best'))}, spread (scaled MAD) "
                           f"{f(b.get('spread'))}, margin {f(b.get('margin'))}")
            out.append(f"baseline ({len(b['nights'])} night(s): {dates}): {numbers} (tolerance "
                       f"{f(b.get('tolerance'))})")
        inc = self.incumbent
        if inc:
            if inc.get("tonight") is not None:
                again = f"{f(inc['tonight'])} (drift {signed(self.drift)})"
            elif inc.get("diverged"):
                again = inc.get("error") or "diverged"
            else:
                again = f"not re-evaluated ({inc.get('error')})"
            on = f" on {inc['scored_on']}'s data" if inc.get("scored_on") else ""
            out.append(f"incumbent {inc['night']} #{inc['trial']} ({f(inc['value'])}{on}) re-trained "
                       f"on tonight's data: {again}")
        d = self.data or {}
        if d.get("baseline_left_out"):
            out.append(f"baseline: only nights with tonight's [data]/[model] set-up "
                       f"({d['baseline_left_out']} night(s) with another passed over)")
        if d.get("setup_changes"):
            out.append(f"study file: [data]/[model] changed since {d['since']}: "
                       + "; ".join(d["setup_changes"]))
        if d.get("changed") is not None:
            out.append(f"data file: {'changed' if d['changed'] else 'unchanged'} since "
                       f"{d['since']} (contents {d['incumbent']}"
                       + (f", tonight {d['tonight']})" if d["changed"] else ")"))
        out.append(f"verdict: {verdict_label(vars(self), upper=True)} — {self.message}")
        return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def signed(value: float | None) -> str:
    """A signed difference as every nightly output shows it (``+0.0000``, ``-0.0446``)."""
    if value is None:
        return "-"
    return f"{value:+.4f}" if math.isfinite(value) else ("-inf" if value < 0 else "+inf")


def _size(value: float | None) -> str:
    """The size of a change whose direction the sentence says ("0.0301 below")."""
    return signed(value) if value is None or not math.isfinite(value) else f"{abs(value):.4f}"


DIVERGED = "the incumbent diverged when re-trained on tonight's data"


def _drift_words(data: dict[str, Any] | None) -> str:
    """What a drift of the incumbent comes from, as far as the study files and the data
    file's digests tell (``data``: :attr:`Verdict.data`)."""
    data = data or {}
    setup, changed = data.get("setup_changes"), data.get("changed")
    if setup:
        shown = "; ".join(setup[:3]) + (f"; {len(setup) - 3} more" if len(setup) > 3 else "")
        return (f"set-up drift (the study file's training set-up changed: {shown}"
                + ("; the data file changed too)" if changed else ")"))
    if changed is None:
        return "data (or code) drift"
    if changed:
        return "data drift (the data file changed)"
    return "code drift (the data file is unchanged: the code or its environment changed)"


def _message(j: Judgement, data: dict[str, Any] | None = None,
             outside: list[str] | None = None) -> str:
    """``outside``: why the incumbent is not a configuration of tonight's search space."""
    drift_words = _drift_words(data)
    changed = (data or {}).get("changed")
    if j.verdict == "no_result":
        return "tonight has no COMPLETE trial: nothing to compare"
    if j.cause == "no_baseline":
        return "no earlier night to compare with (first night)"
    d, m = signed(j.delta), _fmt(j.margin)
    if j.verdict == "improvement":
        if j.cause == "data":
            return (f"{_size(j.delta)} above the baseline (margin {m}); the incumbent itself "
                    f"improved by {_size(j.drift)} on tonight's data: "
                    + (drift_words if (data or {}).get("setup_changes")
                       else "the code changed (the data file is unchanged)" if changed is False
                       else "the data got easier"))
        return (f"{_size(j.delta)} above the baseline (margin {m}): tonight's sweep found a "
                "better configuration"
                + (f"; {DIVERGED}" if j.incumbent_diverged else ""))
    if j.verdict == "ok":
        if j.cause == "search" and outside:
            shown = "; ".join(outside[:3]) + (f"; {len(outside) - 3} more" if len(outside) > 3 else "")
            edited = (data or {}).get("space_changes")
            if edited:
                keys = "; ".join(edited[:3]) + (f"; {len(edited) - 3} more" if len(edited) > 3 else "")
                return (f"tonight's sweep is {signed(j.sweep_delta)} from the baseline (margin {m}): "
                        f"[space] was edited ({keys}) and no longer holds the incumbent ({shown}); "
                        f"that edit, not search luck, and no budget makes up for it. The incumbent "
                        f"still scores {_fmt(j.available)} on tonight's data. Restore those keys to "
                        f"search it again; kept, the next nights are judged under this space "
                        f"(exit 0)")
            return (f"tonight's sweep is {signed(j.sweep_delta)} from the baseline (margin {m}): "
                    f"tonight's search space does not hold the incumbent ({shown}), so no budget "
                    f"finds it. The incumbent still scores {_fmt(j.available)} on tonight's data")
        if j.cause == "search":
            return (f"search shortfall: tonight's sweep is {signed(j.sweep_delta)} from the baseline "
                    f"(margin {m}), but the incumbent still scores {_fmt(j.available)} on tonight's "
                    "data (search luck, not a regression; if it recurs, raise the nightly budget)")
        if j.same_config and j.sweep_delta is not None and j.sweep_delta > j.margin:
            return (f"tonight's best ({signed(j.sweep_delta)} from the baseline, margin {m}) is the "
                    f"incumbent's configuration trained with another seed: seed noise, not a "
                    f"better configuration")
        held = (j.available is not None and j.sweep_delta is not None and j.delta is not None
                and j.delta > j.sweep_delta)  # the incumbent, not tonight's sweep, is that close
        if j.delta is not None and j.delta > j.margin:  # above, but not by a new configuration
            return (f"the incumbent holds: re-trained on tonight's data it scores "
                    f"{_fmt(j.available)} ({d} from the baseline's median, margin {m}); tonight's "
                    f"sweep ({signed(j.sweep_delta)}) found nothing better")
        return (f"within the margin of the baseline ({d}, margin {m})"
                + (f", by the incumbent re-trained on tonight's data ({_fmt(j.available)}; "
                   f"tonight's sweep is {signed(j.sweep_delta)})" if held else ""))
    if j.cause == "data" and j.incumbent_diverged:
        return (f"{DIVERGED}, so it has no value to compare: {drift_words}"
                + (f", although tonight is {d} from the baseline (margin {m})"
                   if j.delta is not None and j.delta >= -j.margin
                   else f"; tonight is {_size(j.delta)} below the baseline (margin {m})"))
    if j.cause == "data" and j.delta is not None and j.delta >= -j.margin:
        return (f"the incumbent lost {_size(j.drift)} on tonight's data, more than the margin "
                f"({m}): {drift_words}, although tonight is {d} from the baseline")
    if j.cause == "data":
        return (f"{_size(j.delta)} below the baseline (margin {m}), and the incumbent also lost "
                f"{_size(j.drift)} on tonight's data: {drift_words}")
    return (f"{_size(j.delta)} below the baseline (margin {m}); the incumbent could not be re-evaluated, so "
            "drift and search luck cannot be told apart")


@dataclass
class BaselineNight:
    """One baseline night: its best trial, its value for the baseline (see the module docs) and
    the configuration behind that value (``carrier``: night, trial, value, config, seed)."""

    name: str
    date: date
    best: FrozenTrial
    study_file: StudyFile | None  # the file its best trial trained under
    value: float
    carrier: dict[str, Any]


def baseline_nights(storage: BufferedStorage, base: str, day: date, n: int, *,
                    training: dict[str, Any] | None = None) -> tuple[list[BaselineNight], int]:
    """The last ``n`` nights before ``day`` that have a COMPLETE trial, oldest first, and how
    many such nights were passed over on the way for another set-up.

    ``training``: tonight's ``[data]``/``[model]`` sections (:func:`setup_sections` with
    :data:`TRAINING`). Then the baseline is the last ``n`` nights trained under that set-up,
    looked for among the last ``LOOK_BACK * n`` nights; if none was, the last ``n`` nights
    whatever their set-up (the night of an edit is judged against the nights before it)."""
    same: list[BaselineNight] = []
    recent: list[BaselineNight] = []  # whatever their set-up: the fallback
    passed = looked = 0
    for night in reversed([x for x in list_nights(storage, base) if x.date < day]):
        if len(same) >= n or looked >= LOOK_BACK * n:
            break
        b = _baseline_night(storage, night)
        if b is None:
            continue
        looked += 1
        if len(recent) < n:
            recent.append(b)
        if training is None or setup_sections(b.study_file, TRAINING) == training:
            same.append(b)
        else:
            passed += 1
    if same:
        return same[::-1], passed
    return recent[::-1], 0


LOOK_BACK = 4  # baseline_nights: how far back (in baseline lengths) nights of tonight's set-up are looked for


def _baseline_night(storage: BufferedStorage, night: NightRef) -> BaselineNight | None:
    """A night as a baseline member (``None`` without a COMPLETE trial): its value is the
    better of its sweep's best and its incumbent re-trained on its data."""
    study, sf = load_study(night.name, storage)
    best = _best(study)
    if best is None:
        return None
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    config = flat_params(best, sf) if (best.user_attrs.get("config") is not None
                                       or sf is not None) else None
    # the file its best trial trained under (a night resumed with an edited file has two):
    # its set-up is what the night enters a baseline with
    own = None if sf is None else trial_study_file(study, best, sf)
    carrier = {"night": night.name, "date": night.date.isoformat(), "trial": best.number,
               "value": best.value, "config": config, "seed": best.user_attrs.get("seed"),
               "data_digest": best.user_attrs.get(ATTR_DATA_DIGEST), "setup": setup_sections(own)}
    value = best.value
    inc = (night.verdict or {}).get("incumbent") or {}
    again = inc.get("tonight")
    if (isinstance(again, int | float) and math.isfinite(again) and sign * (again - value) > 0
            and inc.get("config") is not None and inc.get("seed") is not None):
        # its incumbent, re-trained on its data, did better than its sweep: that is what
        # the night had available
        value = float(again)
        carrier = {"night": inc.get("night"), "date": inc.get("date"), "trial": inc.get("trial"),
                   "value": value, "config": inc["config"], "seed": inc["seed"],
                   "scored_on": night.name,
                   "data_digest": study.user_attrs.get(ATTR_DATA_FILE), "setup": setup_sections(own)}
    return BaselineNight(night.name, night.date, best, own, value, carrier)


TRAINING = ("data", "model")  # the sections that decide how a configuration trains and scores


def setup_sections(sf: StudyFile | None, sections: tuple[str, ...] = (*TRAINING, "space")
           ) -> dict[str, Any] | None:
    """Those ``sections`` of a study file (by default also the search space a configuration
    was found in), or ``None``."""
    if sf is None:
        return None
    raw = sf.public_raw()
    return {section: raw.get(section, {}) for section in sections}


def _best(study: optuna.Study, keep: Callable[[FrozenTrial], bool] | None = None) -> FrozenTrial | None:
    """The best COMPLETE trial with a finite value (of those ``keep`` keeps), lowest number first."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value) and (keep is None or keep(t))]
    if not done:
        return None
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    return max(done, key=lambda t: (sign * t.value, -t.number))


def _resolved(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stored configuration with the engine's defaults filled in (as it trains), so two that
    train the same way compare equal; ``None`` for none."""
    from tuner.params import resolve

    if not config:
        return None
    try:
        return resolve(config)
    except ValueError:
        return config


def reevaluate(config: dict[str, Any], seed: int, sf: StudyFile,
               splits: Splits) -> tuple[float | None, bool, str | None]:
    """Train ``config`` with ``seed`` on ``splits`` (tonight's data, tonight's epochs and
    dtype); returns (metric value, diverged, error)."""
    try:
        result = fit(config, splits.X_train, splits.y_train, splits.X_val, splits.y_val,
                     epochs=sf.model.epochs, seed=seed, dtype=sf.model.dtype)
    except ValueError as exc:
        return None, False, f"cannot train it tonight: {exc}"
    if result.diverged:
        return None, True, f"diverged: {result.divergence['reason']}"
    value = float(result.history[-1][sf.study.metric])
    if not math.isfinite(value):
        return None, True, f"diverged: its final {sf.study.metric} is {value}"
    return value, False, None


def check_night(study: optuna.Study, sf: StudyFile, storage: BufferedStorage, *, base: str,
                day: date, rule: RegressionRule, splits: Splits | None = None,
                store: bool = True) -> Verdict:
    """Compare night ``study`` (of ``base``, dated ``day``; ``sf`` is its study file) with its
    baseline, re-train the incumbent on tonight's data, store the verdict with the study."""
    direction, metric = sf.direction, sf.study.metric
    best = _best(study)
    # After a [data]/[model] edit, the nights trained under the new set-up are the baseline:
    # the edit is judged (and flagged) once, on its first night, not on every night until the
    # old nights have left the baseline.
    setup = setup_sections(sf)
    nights, left_out = baseline_nights(storage, base, day, rule.baseline_nights,
                                       training={section: setup[section] for section in TRAINING})
    values = [b.value for b in nights]
    incumbent: dict[str, Any] | None = None
    outside: list[str] = []  # why the incumbent is not a configuration of tonight's space
    inc_stored = inc_tonight = None
    inc_diverged = False
    data: dict[str, Any] | None = None
    if nights:
        sign = 1.0 if direction == "maximize" else -1.0
        holder = max(reversed(nights), key=lambda b: sign * b.value)
        carrier = holder.carrier
        inc_stored = carrier["value"]
        config, seed = carrier.get("config"), carrier.get("seed")
        incumbent = {**carrier, "tonight": None, "diverged": False, "error": None}
        if config is None or seed is None:
            incumbent["error"] = "no stored configuration and seed"
        else:
            splits = splits if splits is not None else load_data(sf)
            inc_tonight, inc_diverged, error = reevaluate(config, int(seed), sf, splits)
            incumbent.update(tonight=inc_tonight, diverged=inc_diverged, error=error)
        if config is not None:
            outside = map_config(sf.space, config)[1]
        data = {"since": carrier.get("scored_on") or carrier["night"], "setup_changes": (
            [] if carrier.get("setup") is None
            else changed_keys(carrier["setup"], setup, sections=TRAINING)),
            "space_changes": ([] if not (carrier.get("setup") or {}).get("space")
                              else changed_keys(carrier["setup"], setup, sections=("space",)))}
        then, now = carrier.get("data_digest"), data_digest(sf)
        if then is not None and now is not None:
            data.update(tonight=now, incumbent=then, changed=then != now)
        if left_out:
            data["baseline_left_out"] = left_out
    inc_config = _resolved((incumbent or {}).get("config"))
    same = best is not None and inc_config is not None and _resolved(flat_params(best, sf)) == inc_config
    new = _best(study, lambda t: _resolved(flat_params(t, sf)) != inc_config) if same else best
    j = judge(direction, None if best is None else best.value, values, rule,
              incumbent_stored=inc_stored, incumbent_tonight=inc_tonight,
              incumbent_diverged=inc_diverged, same_config=same,
              best_new=None if new is None else new.value)
    baseline = {"nights": [{"night": b.name, "date": b.date.isoformat(), "best": b.best.value,
                            "trial": b.best.number, "value": b.value} for b in nights],
                "level": j.level, "best": (None if not values else
                                           (max if direction == "maximize" else min)(values)),
                "spread": j.spread, "margin": j.margin, "tolerance": rule.tolerance,
                "spread_factor": rule.spread_factor, "baseline_nights": rule.baseline_nights}
    cause = "setup" if j.cause == "data" and data and data["setup_changes"] else j.cause
    name = j.verdict
    if j.verdict == "ok" and j.cause == "search" and outside:  # not luck: the space
        name, cause = ("regression" if data and data["space_changes"] else "ok"), "space"
    verdict = Verdict(verdict=name, cause=cause, message=_message(j, data, outside), metric=metric,
                      direction=direction, tonight=None if best is None else best.value,
                      tonight_trial=None if best is None else best.number, baseline=baseline,
                      incumbent=incumbent, delta=j.delta, drift=j.drift, available=j.available,
                      computed_at=datetime.now(UTC).isoformat(timespec="seconds"), data=data)
    if store:
        study.set_user_attr(ATTR_VERDICT, verdict.as_dict())
    return verdict
