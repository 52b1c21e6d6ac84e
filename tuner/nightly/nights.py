"""Nights: one dated study per night of a study file, ``<study.name>-YYYY-MM-DD``.

The date is the night's date in the schedule's timezone. A night's study is an ordinary tuner
study (``tuner show``, the dashboard and ``tuner replay`` work on it) with three extra study user
attributes: :data:`ATTR_NIGHT` (base name, date, timezone), :data:`ATTR_WARM_START` (what was
enqueued from the previous night and what was skipped, and why) and :data:`ATTR_VERDICT` (the
regression check, written at the end of every complete run of the night).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from tuner.config import ScheduleSection, StudyFile
from tuner.errors import ConfigError
from tuner.storage import BufferedStorage
from tuner.study import derive_seed

ATTR_NIGHT = "tuner.nightly"
ATTR_WARM_START = "tuner.nightly.warm_start"
ATTR_VERDICT = "tuner.nightly.verdict"

_DATE = r"(\d{4}-\d{2}-\d{2})"


def verdict_label(verdict: Mapping[str, Any] | None, *, upper: bool = False,
                  missing: str = "no verdict yet") -> str:
    """A night's verdict in a few words, everywhere it is shown: ``regression (data)``,
    ``ok (search)`` (a search shortfall), ``improvement``; ``REGRESSION (data)`` with ``upper``;
    ``missing`` for a night without one. ``verdict``: a stored verdict (the study user attribute
    :data:`ATTR_VERDICT`) or anything with its ``verdict`` and ``cause`` keys."""
    if not verdict:
        return missing
    name = str(verdict.get("verdict") or "?")
    cause = verdict.get("cause")
    return (name.upper() if upper else name) + (f" ({cause})" if cause else "")


def schedule_of(sf: StudyFile) -> ScheduleSection:
    """The study file's ``[schedule]``, or the defaults when it has none."""
    return sf.schedule if sf.schedule is not None else ScheduleSection()


def night_name(base: str, day: date) -> str:
    """``digits`` + 2026-11-25 -> ``digits-2026-11-25``."""
    return f"{base}-{day.isoformat()}"


def night_date(name: str, base: str) -> date | None:
    """The date of night study ``name`` of ``base``, or ``None`` if it is not one."""
    match = re.fullmatch(re.escape(base) + "-" + _DATE, name)
    if match is None:
        return None
    try:
        return date.fromisoformat(match.group(1))
    except ValueError:
        return None


def base_of(name: str) -> str | None:
    """``digits-2026-11-25`` -> ``digits`` (``None`` for a name without a date suffix)."""
    match = re.fullmatch(r"(.+)-" + _DATE, name)
    return match.group(1) if match else None


def sweep_base(study_name: str, night: Any = None, base: Any = None) -> str | None:
    """The sweep whose nights the nightly views of study ``study_name`` show: ``base`` when
    given (a panel's ``base`` option), else the base stored with the night (``night``: its
    :data:`ATTR_NIGHT` attribute), else the name without its ``-YYYY-MM-DD`` suffix."""
    if base:
        return str(base)
    if isinstance(night, dict) and night.get("base"):
        return str(night["base"])
    return base_of(study_name)


def parse_date(text: str) -> date:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):  # (Python 3.11 also takes 20261125)
        raise ConfigError(f"--date {text!r}: expected a date as YYYY-MM-DD, e.g. 2026-11-25")
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"--date {text}: not a date ({exc})") from None


def today(schedule: ScheduleSection, now: datetime | None = None) -> date:
    """Today's date in the schedule's timezone (``now``: an aware time, for tests)."""
    zone = ZoneInfo(schedule.timezone)
    return (now.astimezone(zone) if now is not None else datetime.now(zone)).date()


def night_study_file(sf: StudyFile, day: date) -> StudyFile:
    """The study file of one night: named ``<name>-<date>``, with the nightly budget, and a
    sampler/training seed derived from the study seed and the date, so nights explore
    independently (and the spread of their bests measures search noise) while a rerun of the
    same night is reproducible."""
    schedule = schedule_of(sf)
    night = sf.with_overrides(name=night_name(sf.study.name, day),
                              n_trials=schedule.n_trials or sf.study.n_trials,
                              seed=derive_seed(sf.study.seed, day.toordinal()))
    return night.model_copy(update={"overrides": sf.overrides})  # not the command line's


def schedule_summary(sf: StudyFile, now: datetime | None = None) -> dict[str, Any] | None:
    """What ``tuner check`` shows for a study file's ``[schedule]`` (``None`` without one):
    cron and timezone, the next fire time and the night it runs, one night's budget (which,
    not ``[study] n_trials``, is what a night runs), timeout, warm start and regression rule."""
    from tuner.nightly.cron import cron_trigger, night_of

    if sf.schedule is None:
        return None
    sched = sf.schedule
    zone = ZoneInfo(sched.timezone)
    now = now or datetime.now(zone)
    fire = cron_trigger(sched.cron, sched.timezone).get_next_fire_time(None, now)
    nxt = None
    if fire is not None:
        day = night_of(fire, sched.timezone)
        local = fire.astimezone(zone)
        nxt = {"at": local.isoformat(), "local": f"{local:%Y-%m-%d %H:%M %Z}",
               "night": night_name(sf.study.name, day)}
    return {"cron": sched.cron, "timezone": sched.timezone, "next": nxt,
            "n_trials": sched.n_trials or sf.study.n_trials, "study_n_trials": sf.study.n_trials,
            "timeout": sched.timeout if sched.timeout is not None else sf.study.timeout,
            "warm_start": sched.warm_start, "regression": sched.regression.model_dump()}


def schedule_lines(sf: StudyFile, now: datetime | None = None) -> list[str]:
    """:func:`schedule_summary` as lines for ``tuner check`` (empty without a ``[schedule]``)."""
    info = schedule_summary(sf, now)
    if info is None:
        return []
    nxt = info["next"]
    when = f"next night {nxt['night']} at {nxt['local']}" if nxt else "never fires"
    budget = f"{info['n_trials']} trials per night"
    if info["n_trials"] != info["study_n_trials"]:
        budget += f" ([study] n_trials = {info['study_n_trials']} applies to tuner run only)"
    timeout = f", stops starting trials after {info['timeout']:g} s" if info["timeout"] else ""
    rule = info["regression"]
    return [f"schedule: cron '{info['cron']}' in {info['timezone']}; {when}",
            f"nightly budget: {budget}{timeout}; warm start from the previous night's best "
            f"{info['warm_start']}",
            f"regression check: tolerance {rule['tolerance']:g}, baseline of the last "
            f"{rule['baseline_nights']} nights, spread factor {rule['spread_factor']:g}"]


@dataclass
class NightRef:
    """A night study found in the storage."""

    name: str
    date: date
    study_id: int
    user_attrs: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def verdict(self) -> dict[str, Any] | None:
        return self.user_attrs.get(ATTR_VERDICT)


def list_nights(storage: BufferedStorage, base: str) -> list[NightRef]:
    """Every night study of ``base`` in the storage, oldest first."""
    nights = []
    for frozen in storage.get_all_studies():
        day = night_date(frozen.study_name, base)
        if day is not None:
            nights.append(NightRef(frozen.study_name, day, frozen._study_id, dict(frozen.user_attrs)))
    return sorted(nights, key=lambda n: n.date)


def find_night(storage: BufferedStorage, base: str, day: date) -> NightRef | None:
    name = night_name(base, day)
    return next((n for n in list_nights(storage, base) if n.name == name), None)
