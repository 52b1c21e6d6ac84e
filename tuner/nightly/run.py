"""One night's sweep, start to finish (``tuner nightly``).

1. Take the night's lock (:class:`tuner.storage.coordination.NamedLock` on
   ``nightly:<night>``: a PostgreSQL advisory lock, or an ``flock`` next to the SQLite file), so
   two schedulers or cron hosts never run the same night at once: the second one gets
   :class:`~tuner.errors.LockHeldError` (exit code 75).
2. Create or resume the night's study ``<name>-<date>`` (the budget is the study's, so a rerun
   only runs what is missing: idempotent).
3. Warm start from the previous night (once per night, :mod:`tuner.nightly.warmstart`).
4. Run the sweep with the ordinary :class:`tuner.runner.coordinator.Runner`.
5. Check for a regression (:mod:`tuner.nightly.regression`) and store the verdict.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from optuna.trial import TrialState

from tuner.config import StudyFile
from tuner.errors import LockHeldError, TunerError
from tuner.nightly.nights import (
    ATTR_NIGHT,
    ATTR_VERDICT,
    list_nights,
    night_name,
    night_study_file,
    schedule_of,
)
from tuner.nightly.regression import (
    EXIT_NO_RESULT,
    LOOK_BACK,
    TRAINING,
    Verdict,
    check_night,
    setup_sections,
)
from tuner.nightly.warmstart import WarmStart, warm_start
from tuner.storage import describe, open_storage
from tuner.storage.coordination import NamedLock, state_counts
from tuner.storage.urls import storage_flag
from tuner.study import (
    ATTR_CONFIG,
    ATTR_DATA_FILE,
    ATTR_LAST_FILE,
    changed_keys,
    data_digest,
    flat_params,
    open_study,
)

INTERRUPTED = ("SIGINT", "SIGTERM")


@dataclass
class NightResult:
    base: str
    date: date
    study: str
    storage: str
    n_trials: int
    reason: str
    counts: dict[str, int]
    warm_start: WarmStart
    verdict: Verdict | None
    exit_code: int
    best: dict[str, Any] | None = None
    ran: int = 0  # trials this run finished (0: the night was done before it, or interrupted)
    notes: list[str] = field(default_factory=list)  # what the verdict's reader should know

    def as_dict(self) -> dict[str, Any]:
        return {"base": self.base, "date": self.date.isoformat(), "study": self.study,
                "storage": self.storage, "n_trials": self.n_trials, "stopped": self.reason,
                "ran": self.ran, "counts": self.counts, "warm_start": self.warm_start.as_dict(),
                "verdict": None if self.verdict is None else self.verdict.as_dict(),
                "best": self.best, "notes": self.notes, "exit_code": self.exit_code}


def run_night(sf: StudyFile, *, day: date, storage_url: str, workers: int = 1, quiet: bool = False,
              console: Any = None, say: Callable[[str], None] | None = None,
              n_trials: int | None = None, timeout: float | None = None) -> NightResult:
    """Run (or resume) the night ``day`` of study file ``sf``; see the module docs. ``say``
    receives progress lines (warm start, notes). ``n_trials`` / ``timeout`` replace the
    file's nightly budget for this run (``tuner nightly --n-trials``); the warm start takes at
    most ``n_trials`` configurations, so nothing is left WAITING past the night's target."""
    from tuner.dashboard.attach import DashboardHook
    from tuner.runner.coordinator import EXIT_CODES, Runner
    from tuner.study import load_data, study_exists

    said = say or (lambda _line: None)
    notes: list[str] = []

    def note(line: str) -> None:  # said, and kept for the summary (--json, the scheduler's log)
        notes.append(line)
        said(line)

    schedule = schedule_of(sf)
    base = sf.study.name
    night_sf = night_study_file(sf, day)
    if n_trials is not None:
        night_sf = night_sf.with_overrides(n_trials=n_trials)
    name = night_name(base, day)
    storage = open_storage(storage_url)
    lock = NamedLock(storage, f"nightly:{name}", what=f"the nightly sweep {name!r}")
    lock.acquire()
    try:
        # a new night: data that cannot load must not leave an empty night (the runner gets
        # the loaded splits)
        existed = study_exists(storage, name)
        splits = None if existed else load_data(night_sf)
        flag = storage_flag(storage_url)
        study = open_study(night_sf, storage, edited_hint=(
            f"the night ran trials with the search space it started with: finish it with those "
            f"values, or delete the night and run it again: tuner delete {name}{flag}, then "
            f"tuner nightly {sf.source} --date {day.isoformat()}{flag}"))
        if ATTR_NIGHT not in study.user_attrs:
            study.set_user_attr(ATTR_NIGHT, {"base": base, "date": day.isoformat(),
                                             "timezone": schedule.timezone, "cron": schedule.cron,
                                             "source": sf.source})
        warm = warm_start(study, night_sf, storage, base=base, day=day,
                          k=min(schedule.warm_start, night_sf.study.n_trials))
        for line in warm.lines():
            said(line)
        views = _nightly_views_enabled(name)
        runner = Runner(night_sf, storage_url=storage_url, workers=workers,
                        timeout=timeout if timeout is not None else schedule.timeout,
                        quiet=quiet, console=console, splits=splits,
                        hooks=[DashboardHook(dashboard="nightly")] if views else [])
        result = runner.run()
        counts = {state.name: n for state, n in result.counts.items()}
        verdict = None
        # a signal that came as the last trial finished ends the run as "done", but the night
        # was asked to stop: its verdict is left to the next run
        reason = result.signal or result.reason
        exit_code = EXIT_CODES.get(reason, 1) if result.signal else result.exit_code
        if reason not in INTERRUPTED:
            _keep_the_night(lock)
            storage.refresh(study._study_id)  # the runner wrote through its own connection
            judged_sf, verdict = night_sf, None
            if existed and result.reason == "done" and not result.finished_here:
                judged_sf, verdict = _finished_night(study, night_sf, note, flag=flag,
                                                     source=sf.source, day=day)
            if verdict is None:
                verdict = check_night(study, judged_sf, storage, base=base, day=day,
                                      rule=schedule.regression)
            exit_code = verdict.exit_code if result.exit_code == 0 else max(result.exit_code,
                                                                             EXIT_NO_RESULT)
            _note_later_nights(storage, base, day, verdict, schedule.regression.baseline_nights,
                               sf.source, storage_url, note, setup_sections(judged_sf, TRAINING))
            if views:
                _attach_nightly_views(study, judged_sf)
        best = None
        if verdict is not None and verdict.tonight_trial is not None:
            trial = next(t for t in study.get_trials(deepcopy=False)
                         if t.number == verdict.tonight_trial)
            best = {"trial": trial.number, "value": trial.value,
                    "config": flat_params(trial, night_sf)}
        return NightResult(base, day, name, describe(storage_url), night_sf.study.n_trials,
                           reason, counts, warm, verdict, exit_code, best, result.finished_here,
                           notes)
    finally:
        lock.release()


def _finished_night(study: Any, night_sf: StudyFile, say: Callable[[str], None], *, flag: str,
                    source: str, day: date) -> tuple[StudyFile, Verdict | None]:
    """A night that had finished before this run is judged again as it ran: with the study
    file it last ran (not today's edit of it; the regression rule is today's) and only on the
    data it trained on. Returns that file, and the stored verdict when the data file has
    changed or gone since (it stands: the incumbent cannot be re-trained on the night's data
    any more)."""
    attrs = study.user_attrs
    own = _last_file(attrs) or night_sf
    edits = changed_keys(own.public_raw(), night_sf.public_raw())
    if edits:
        shown = "; ".join(edits[:4]) + (f"; {len(edits) - 4} more" if len(edits) > 4 else "")
        say(f"night {study.study_name} had finished: judged with the study file it ran, not "
            f"with {source} as it is now ({shown})")
    then = attrs.get(ATTR_DATA_FILE)
    try:
        now = data_digest(own)
    except (TunerError, OSError) as exc:  # moved, renamed or unreadable since
        why = (f"the data file {own.data.dataset} it trained on cannot be read now "
               f"({exc.message if isinstance(exc, TunerError) else exc})")
    else:
        if then is None or now is None or then == now:
            return own, None
        why = (f"the data file {own.data.dataset} changed since night {study.study_name} "
               f"trained on it (contents {then}, now {now})")
    stored = attrs.get(ATTR_VERDICT)
    if stored is not None:
        say(f"not judged again: {why}; its stored verdict stands")
        return own, Verdict.from_dict(stored)
    raise TunerError(f"cannot judge night {study.study_name}: {why}",
                     hint=f"put back the file it trained on, or delete the night and run it "
                          f"again: tuner delete {study.study_name}{flag}, then tuner nightly "
                          f"{source} --date {day.isoformat()}{flag}")


def _last_file(attrs: dict[str, Any]) -> StudyFile | None:
    """The study file a night last ran (from its user attributes ``attrs``): the edit a run
    stored, else the file it was created with; ``None`` if neither can be read."""
    for key in (ATTR_LAST_FILE, ATTR_CONFIG):
        if attrs.get(key):
            try:
                return StudyFile.from_json(attrs[key])
            except TunerError:  # stored by another version of tuner, which this one cannot read
                continue
    return None


def _note_later_nights(storage: Any, base: str, day: date, verdict: Verdict, n: int,
                       source: str, storage_url: str, say: Callable[[str], None],
                       training: dict[str, Any] | None) -> None:
    """A night run after later ones (a back-fill, or a rerun that changed its result) is in
    their baselines from now on, but their stored verdicts counted it otherwise or not at all:
    say which, and how to judge them again without running more trials."""
    mine = verdict.available if verdict.available is not None else verdict.tonight
    if mine is None:  # no COMPLETE trial: no baseline counts this night
        return
    stale = []
    later = [x for x in list_nights(storage, base) if x.date > day and x.verdict]
    # as far back as a baseline looks, and only nights of this night's set-up (another set-up
    # leaves it out of their baselines)
    for night in later[:LOOK_BACK * n]:
        nights = (night.verdict.get("baseline") or {}).get("nights") or []
        used = next((b for b in nights if b.get("date") == day.isoformat()), None)
        if used is not None:
            if used.get("value") != mine:
                stale.append((night, f"with its earlier value {used.get('value'):.4f}"))
        elif setup_sections(_last_file(night.user_attrs), TRAINING) == training and (
                len(nights) < n or day.isoformat() > min(str(b.get("date")) for b in nights)):
            stale.append((night, "without this one"))
    if not stale:
        return
    first = stale[0][0]
    counts = state_counts(storage, first.study_id)
    done = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    said = "; ".join(f"{x.date.isoformat()} {how}" for x, how in stale)
    keep = f" -n {done}" if done else ""  # (-n: judge again, do not top it up to the file's budget)
    say(f"note: later night(s) were judged before this result ({said}); to judge one again "
        f"without running more trials: tuner nightly {source} --date {first.date.isoformat()}"
        f"{keep}{storage_flag(storage_url)}")


def _keep_the_night(lock: NamedLock) -> None:
    """Before the verdict: make sure the night's lock is still ours. Its connection may have
    been cut during the sweep (the runner rides out a restart or failover), and the server then
    released it: take it again, or stop if another process has taken the night over (it
    finishes the night and stores the verdict)."""
    if lock.still_held():
        return
    lock.release()
    try:
        lock.acquire()
    except LockHeldError:
        raise LockHeldError(f"lost the lock on {lock.what} (its database connection was cut) "
                            "and another process has taken the night over; it stores the "
                            "verdict") from None


def _nightly_views_enabled(name: str) -> bool:
    """Whether the night's views are stored with its study (the runner's dashboard hook while
    the sweep runs, :func:`_attach_nightly_views` after the verdict): not with
    ``TUNER_DASHBOARD_VIEWS=0``, nor when the ``nightly`` dashboard file (``$TUNER_DASHBOARDS``)
    is broken. That is checked once, here, and said once: every refresh would fail with the same
    error (a broken view must not fail the night)."""
    from tuner.dashboard.attach import views_enabled

    if not views_enabled():
        return False
    try:
        from tuner.dashboard.render import check_panels
        from tuner.dashboard.spec import load_dashboard

        check_panels(load_dashboard("nightly"))
    except Exception as exc:
        logging.getLogger("tuner.nightly").warning(
            "the dashboard views of %s will not be stored (the night runs without them): %s: %s",
            name, type(exc).__name__, getattr(exc, "message", exc))
        return False
    return True


def _attach_nightly_views(study: Any, night_sf: StudyFile) -> None:
    """Store the night's views with its study for optuna-dashboard, now that the verdict
    exists: ``dashboards/nightly.toml``, i.e. the trend, choices and verdict and (included) every
    study view (learning curves, LR schedules, reference gap, ...). A view that fails to render
    must not fail the night."""
    from tuner.dashboard.attach import refresh_study_views

    try:
        refresh_study_views(study, night_sf, dashboard="nightly")
    except Exception as exc:  # a broken view must not fail the night
        logging.getLogger("tuner.nightly").warning("storing the nightly views failed: %s: %s",
                                                   type(exc).__name__, exc)
