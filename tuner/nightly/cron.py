"""Cron expressions and fire times (APScheduler 3 ``CronTrigger``), with crontab's weekday
numbers.

An expression has five fields, ``minute hour day-of-month month day-of-week`` (system cron), or
six with ``second`` first (useful to fire a few seconds ahead in tests and demos). Weekday
numbers follow crontab (0 or 7 = Sunday, 1 = Monday), not APScheduler 3's own numbering (0 =
Monday), which ``CronTrigger.from_crontab`` passes through unchanged (APScheduler issue 286);
names (``mon-fri``) mean the same in both.

When both day-of-month and day-of-week are restricted (neither starts with ``*``), crontab
runs the job when *either* matches (``0 2 1 * mon``: the 1st of the month and every Monday),
while APScheduler's ``CronTrigger`` requires both; such an expression becomes an ``OrTrigger``
of the two, so it fires exactly when crontab would.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

FIELDS_5 = "minute hour day-of-month month day-of-week"


def cron_trigger(expr: str, timezone: str) -> BaseTrigger:
    """A trigger for ``expr`` in ``timezone`` (an IANA name) with crontab's semantics (see the
    module docs); ``ValueError`` if invalid."""
    fields = expr.split()
    if len(fields) == 5:
        second, (minute, hour, day, month, dow) = "0", fields
    elif len(fields) == 6:
        second, minute, hour, day, month, dow = fields
    else:
        raise ValueError(f"expected 5 fields ({FIELDS_5}) or 6 (second first), got {len(fields)}")
    zone = ZoneInfo(timezone)
    weekdays = _weekdays(dow)

    def trigger(day: str, day_of_week: str) -> CronTrigger:
        return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                           day_of_week=day_of_week, timezone=zone)

    if day.startswith("*") or dow.startswith("*"):
        return trigger(day, weekdays)
    # crontab: either the day of the month or the day of the week matches
    return OrTrigger([trigger(day, "*"), trigger("*", weekdays)])


def _weekdays(field: str) -> str:
    """A crontab day-of-week field in APScheduler 3's numbering."""
    if field == "*":
        return field
    out: list[str] = []
    for part in field.split(","):
        if re.search(r"[A-Za-z]", part):
            out.append(part.lower())
            continue
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if span == "*":
            low, high = 0, 6
        elif "-" in span:
            low, high = (int(x) for x in span.split("-", 1))
        else:
            low = high = int(span)
            if step_text:
                high = 6
        if not (0 <= low <= 7 and 0 <= high <= 7 and low <= high and step >= 1):
            raise ValueError(f"day of week {part!r}: use 0-7 (0 and 7 are Sunday) or names")
        out += [str((d - 1) % 7) for d in range(low, high + 1, step)]
    return ",".join(dict.fromkeys(out))


def last_fire_time(trigger: BaseTrigger, now: datetime) -> datetime | None:
    """The latest fire time of ``trigger`` at or before ``now`` (aware), or ``None`` if there
    was none in the last five years. Looks back in doubling windows, so it costs a few dozen
    trigger evaluations for any expression."""
    window = timedelta(minutes=1)
    while window <= timedelta(days=5 * 366):
        fire = trigger.get_next_fire_time(None, now - window)
        if fire is not None and fire <= now:
            while True:
                following = trigger.get_next_fire_time(fire, now)
                if following is None or following > now or following <= fire:
                    return fire
                fire = following
        window *= 2
    return None


def night_of(fire: datetime, timezone: str) -> date:
    """The night (date in the schedule's timezone) a fire time belongs to."""
    return fire.astimezone(ZoneInfo(timezone)).date()
