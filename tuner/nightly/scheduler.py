"""``tuner scheduler``: a long-running service that runs each study file's nightly sweep at its
cron time, in its timezone (APScheduler 3, ``BackgroundScheduler``).

Design:

- **Each night runs in a subprocess**, ``python -m tuner nightly FILE --date D --json``. The
  runner's SIGTERM handling (fail and re-queue running trials, stop the workers) needs the main
  thread of its process, which a scheduler thread is not; a subprocess also isolates failures
  (a crash, a memory leak or a bad study file costs one night, not the service) and picks up
  edits to the study file every night. Children get their own session, so a terminal's Ctrl-C
  or a process-group signal does not reach them twice: the service forwards **one** SIGTERM.
  The storage URL reaches the child in its environment (``TUNER_STORAGE``), never on its
  command line, where ``ps`` and ``/proc/PID/cmdline`` would show the password to every user.
- **Overlap**: one APScheduler job per study file; the catch-up run goes through the same job.
  A fire that comes while a night of the same file is still running (a long catch-up, a night
  that overran) is **deferred**, not dropped: it is remembered (coalesced: at most one pending
  fire per file, the latest) and runs as soon as the current night ends, and the log says so.
  The service never runs two nights of one file at once. (APScheduler's own ``max_instances=1``
  would drop such a fire with a warning, so the job allows a few instances and the service
  keeps the guard itself.) Across hosts and processes the night's database lock
  (``tuner nightly`` exits 75) prevents a second run of the same night.
- **Catch-up**: on start, for each file, the latest fire time at or before *now* is compared
  with the night studies that exist. If that night has no study with a verdict (never ran, or
  was interrupted), it is run once, now, for *that* date. Only the latest missed night is run,
  never one per missed night, and never one older than a night that exists (e.g. one run by
  hand with ``tuner nightly``). A sweep with no night at all in the storage has missed nothing:
  its first night runs at its cron time (so a first ``docker compose up`` does not start a
  sweep at once).
- **Folders**: a ``*.toml`` of a folder argument that fails to load is logged and skipped, not
  fatal (one broken file must not stop every other sweep, or a container restart loop); so is
  one that names its study like a file scheduled before it (files in path order: the first is
  scheduled). A folder with nothing to schedule yet (empty, or only broken files) is not fatal
  either: the service runs and waits. Folders are rescanned every minute: a file that was
  fixed (or added) is scheduled once it loads; one whose cron or timezone was edited is
  rescheduled; one that was removed, lost its ``[schedule]`` or names another study now is
  unscheduled at the second rescan in a row that finds it so (which frees its study name for a
  copy that was refused). A study file named
  explicitly must load and be schedulable, or the service does not start; it is read once.
- **Shutdown** (SIGTERM/SIGINT): no new night starts; running nights get SIGTERM (their running
  trials are failed and re-queued; ``tuner nightly`` resumes them next time); the service waits
  for them, then exits 0. Nothing is left RUNNING.
- **Logs** (stderr): what was scheduled and when it fires next, what ran, how it ended, and
  what it found (trial counts, best value and configuration, warm start, verdict).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

from tuner.config import StudyFile, load_study_file
from tuner.errors import ConfigError, LockHeldError, TunerError
from tuner.nightly.cron import cron_trigger, last_fire_time, night_of
from tuner.nightly.nights import find_night, list_nights, verdict_label
from tuner.storage import describe, open_storage, resolve_url

log = logging.getLogger("tuner.scheduler")

STOP_TIMEOUT_S = 120.0
RESCAN_INTERVAL_S = 60.0
#: Rescans in a row that must find a scheduled folder file gone (or no longer scheduled, or
#: naming another study) before it is unscheduled: one may catch an editor mid-save.
ABSENT_RESCANS = 2
#: APScheduler instances allowed per job: one runs the night, the others only record a deferral
MAX_INSTANCES = 4


@dataclass
class Sweep:
    """One study file the scheduler runs."""

    path: Path
    sf: StudyFile
    trigger: BaseTrigger
    cron: str
    timezone: str
    storage_url: str

    @property
    def base(self) -> str:
        return self.sf.study.name

    @property
    def id(self) -> str:
        return f"nightly:{self.base}"


@dataclass
class Scan:
    """What :func:`collect_study_files` found: the study files to schedule, the folder files
    without a ``[schedule]`` section, the folder files that failed to load (path -> error) and
    the folder files that load but are not scheduled (path -> message): a file before them
    names the same study, or their sweep cannot be made (:func:`start_sweeps`)."""

    files: list[tuple[Path, StudyFile]]
    unscheduled: list[Path]
    broken: dict[Path, str]
    refused: dict[Path, str] = field(default_factory=dict)


def duplicate_message(file: Path, name: str, scheduled: Path) -> str:
    """The error logged for a folder file that names its study like a scheduled file (at start
    and by a rescan: the same text, so a rescan does not log it again)."""
    return (f"{file} names its study {name!r} like {scheduled}, which is scheduled; not "
            "scheduling it (their nights would be the same studies)")


def folder_study_files(folder: Path) -> Iterator[tuple[Path, StudyFile | None, str]]:
    """``(file, study file, "")`` for each ``*.toml`` of ``folder`` that loads, in name order,
    and ``(file, None, why)`` for each that does not and may be meant for the scheduler (a
    broken file without a ``[schedule]`` section, work in progress on an ordinary study, is
    none of its business)."""
    for file in sorted(folder.glob("*.toml")):
        try:
            yield file, load_study_file(file), ""
        except TunerError as exc:
            if _may_have_a_schedule(file):
                yield file, None, exc.message


def _may_have_a_schedule(file: Path) -> bool:
    """False only for a file that is valid TOML without a ``[schedule]`` table."""
    try:
        return "schedule" in tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return True


def collect_study_files(paths: list[Path]) -> Scan:
    """Study files to schedule: every given file (it must load and have a ``[schedule]``
    section, else :class:`ConfigError`) and every ``*.toml`` of a given folder that has one. A
    folder file that fails to load is returned in ``broken``, not raised: one broken file must
    not stop the other sweeps. Two files naming the same study cannot both be scheduled (their
    nights would be the same studies): the given files come first (two of them naming the same
    study is a :class:`ConfigError`), then each folder's files in path order; a folder file
    whose study is taken is returned in ``refused``. A folder with nothing to schedule is
    not an error (the service waits for files to appear)."""
    if not paths:
        raise ConfigError("give at least one study file or folder, e.g. tuner scheduler studies/")
    explicit: list[tuple[Path, StudyFile]] = []
    in_folders: list[tuple[Path, StudyFile]] = []
    skipped: list[Path] = []
    broken: dict[Path, str] = {}
    for path in paths:
        if path.is_dir():
            for file, sf, error in folder_study_files(path):
                if sf is None:
                    broken[file] = error
                else:
                    (in_folders.append((file, sf)) if sf.schedule is not None
                     else skipped.append(file))
        else:
            if not path.exists():
                raise ConfigError(f"{path}: no such study file or folder",
                                  hint="give study files (*.toml with a [schedule] section) or "
                                       "folders of them, e.g. tuner scheduler studies/")
            sf = load_study_file(path)
            if sf.schedule is None:
                raise ConfigError(f"{path}: no [schedule] section, so it has no cron time",
                                  hint="add [schedule] with cron = \"0 2 * * *\" (see docs/nightly.md)")
            explicit.append((path, sf))
    found: list[tuple[Path, StudyFile]] = []
    names: dict[str, Path] = {}
    seen: set[Path] = set()
    duplicates: dict[Path, str] = {}
    for path, sf in explicit:
        if path.resolve() in seen:
            continue
        other = names.get(sf.study.name)
        if other is not None:
            raise ConfigError(f"{path} and {other} both name their study {sf.study.name!r}; "
                              "their nights would be the same studies",
                              hint="give each study file its own [study] name")
        names[sf.study.name] = path
        seen.add(path.resolve())
        found.append((path, sf))
    for path, sf in in_folders:
        if path.resolve() in seen:  # also given explicitly, or a folder given twice
            continue
        other = names.get(sf.study.name)
        if other is not None:
            duplicates[path] = duplicate_message(path, sf.study.name, other)
            continue
        names[sf.study.name] = path
        seen.add(path.resolve())
        found.append((path, sf))
    return Scan(found, skipped, broken, duplicates)


def make_sweeps(files: list[tuple[Path, StudyFile]], *, storage: str | None = None,
                cron: str | None = None) -> list[Sweep]:
    """Sweeps for ``files``; ``cron`` overrides every file's ``schedule.cron`` (5 or 6 fields)."""
    sweeps = []
    for path, sf in files:
        schedule = sf.schedule
        assert schedule is not None
        expr = cron or schedule.cron
        try:
            trigger = cron_trigger(expr, schedule.timezone)
        except ValueError as exc:
            raise ConfigError(f"--cron {expr!r}: {exc}") from None
        sweeps.append(Sweep(path, sf, trigger, expr, schedule.timezone,
                            resolve_url(storage, sf.study.storage)))
    return sweeps


def start_sweeps(scan: Scan, paths: list[Path], *, storage: str | None = None,
                 cron: str | None = None) -> list[Sweep]:
    """Sweeps for the files of the start-up ``scan`` of ``paths``. A folder file whose sweep
    cannot be made (its ``study.storage`` is no URL tuner can open) is refused and logged, as a
    rescan does, so it cannot stop the service; for a file given by name it is an error."""
    given = {p.resolve() for p in paths if not p.is_dir()}
    sweeps = []
    for path, sf in scan.files:
        try:
            sweeps += make_sweeps([(path, sf)], storage=storage, cron=cron)
        except TunerError as exc:
            if path.resolve() in given:
                raise
            scan.refused[path] = f"{path}: {exc.message}"
            log.error("%s", scan.refused[path])
    return sweeps


def catch_up(sweep: Sweep, now: datetime, storage: Any = None) -> tuple[date | None, str]:
    """The night to run on start-up because it was missed (or ``None``), and why: the night of
    the latest fire time at or before ``now``, if it has no study with a verdict yet. A sweep
    that has no night at all in the storage has never run, so it missed nothing: its first
    night runs at its cron time."""
    fire = last_fire_time(sweep.trigger, now)
    if fire is None:
        return None, "no fire time in the last five years"
    day = night_of(fire, sweep.timezone)
    if storage is None:  # (the scheduler runs for months: give its connections back)
        storage = open_storage(sweep.storage_url)
        try:
            return _missed(sweep, day, storage)
        finally:
            storage.backend.engine.dispose()
    return _missed(sweep, day, storage)


def _missed(sweep: Sweep, day: date, storage: Any) -> tuple[date | None, str]:
    nights = list_nights(storage, sweep.base)
    if not nights:
        return None, (f"no night of {sweep.base} in {describe(sweep.storage_url)} yet, so none was "
                      "missed")
    if nights[-1].date > day:  # (a night run by hand, dated by its day rather than the cron's)
        return None, (f"a later night ({nights[-1].date}) has run, so the night of {day} is not "
                      "back-filled")
    night = find_night(storage, sweep.base, day)
    if night is not None and night.verdict is not None:
        return None, f"the night of {day} has run"
    why = "it was interrupted: no verdict" if night is not None else "it never ran"
    return day, f"the night of {day} was missed ({why})"


def due_night(sweep: Sweep, now: datetime) -> date:
    """The night a run starting at ``now`` is for: that of the latest fire time."""
    fire = last_fire_time(sweep.trigger, now)
    return night_of(fire or now, sweep.timezone)


class SchedulerService:
    """Runs ``sweeps`` at their cron times until :meth:`stop`. ``clock`` is *now* for the
    catch-up decision (tests inject a fake clock); ``python`` runs ``-m tuner nightly``;
    ``folders`` are rescanned every ``rescan_interval`` seconds (:meth:`rescan`; ``broken``: the
    folder files that failed to load at start; ``refused``: those that load but were not
    scheduled, e.g. a duplicate study name; both already logged; ``given``: files named
    explicitly, read once at start, whose sweeps a rescan leaves alone)."""

    def __init__(self, sweeps: list[Sweep], *, workers: int = 1, catch_up: bool = True,
                 clock: Callable[[], datetime] | None = None, python: str | None = None,
                 storage_override: str | None = None, cron: str | None = None,
                 folders: list[Path] | None = None, rescan_interval: float = RESCAN_INTERVAL_S,
                 broken: dict[Path, str] | None = None,
                 refused: dict[Path, str] | None = None,
                 given: list[Path] | None = None) -> None:
        self.sweeps = {s.id: s for s in sweeps}
        self.workers = workers
        self.catch_up = catch_up
        self.clock = clock or (lambda: datetime.now(UTC))
        self.python = python or sys.executable
        self.storage_override = storage_override
        self.cron = cron
        self.folders = list(folders or [])
        self.rescan_interval = rescan_interval
        self._broken: dict[Path, str] = dict(broken or {})  # fails to load: path -> error
        self._refused: dict[Path, str] = dict(refused or {})  # loads, not scheduled: -> why
        self._given = {p.resolve() for p in given or []}
        self._absent: dict[str, int] = {}  # sweep id -> rescans in a row that found it changed so
        self._unusable: dict[str, str] = {}  # sweep id -> why its edited file's sweep cannot be made
        self._lock = threading.Lock()
        self._pending: dict[str, date] = {}  # catch-up nights, taken by the job's first run
        self._running: dict[str, date] = {}  # sweep id -> the night running now
        self._deferred: dict[str, date] = {}  # sweep id -> the night of a fire that came meanwhile
        self._children: dict[int, subprocess.Popen] = {}
        self._stopping = False
        self.scheduler = BackgroundScheduler(timezone=UTC, job_defaults={
            "coalesce": True, "max_instances": MAX_INSTANCES, "misfire_grace_time": None})
        self.completed: deque[dict[str, Any]] = deque(maxlen=100)  # the latest nights run

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        for sweep in self.sweeps.values():
            self._add(sweep)
        if self.folders:
            self.scheduler.add_job(self.rescan, trigger="interval", seconds=self.rescan_interval,
                                   id="rescan", name="rescan study folders", max_instances=1)
        self.scheduler.start()
        if not self.sweeps:
            log.warning("no study file can be scheduled yet; rescanning %s every %.0f s",
                        ", ".join(map(str, self.folders)), self.rescan_interval)

    def healthy(self) -> bool:
        """The scheduler is running and its thread is alive (fires will be handled)."""
        thread = getattr(self.scheduler, "_thread", None)
        return bool(self.scheduler.running and (thread is None or thread.is_alive()))

    def _add(self, sweep: Sweep) -> None:
        """Schedule ``sweep`` (catching up its missed night if there is one) and log it."""
        extra: dict[str, Any] = {}
        if self.catch_up:
            try:
                day, why = catch_up(sweep, self.clock())
            except TunerError as exc:  # e.g. the database is not up yet: the cron runs retry
                log.error("%s: cannot check for a missed night (%s); not catching up",
                          sweep.base, exc)
                day, why = None, ""
            if day is not None:
                with self._lock:
                    self._pending[sweep.id] = day
                extra["next_run_time"] = datetime.now(UTC)
                log.info("%s: %s; catching it up now", sweep.base, why)
            elif why:
                log.info("%s: nothing to catch up (%s)", sweep.base, why)
        with self._lock:
            self.sweeps[sweep.id] = sweep
        self.scheduler.add_job(self._job, trigger=sweep.trigger, args=(sweep.id,), id=sweep.id,
                               name=f"nightly {sweep.base}", replace_existing=True, **extra)
        following = sweep.trigger.get_next_fire_time(None, datetime.now(UTC))
        log.info("scheduled %s (%s): cron '%s' %s, %s; next night at %s", sweep.base, sweep.path,
                 sweep.cron, sweep.timezone, describe(sweep.storage_url),
                 following.isoformat() if following else "never")

    def rescan(self) -> list[Sweep]:
        """Look at the folders again. A scheduled folder file that is gone, lost its
        ``[schedule]`` section or names another study now (at :data:`ABSENT_RESCANS` rescans in
        a row) is unscheduled (a night running goes on); one whose cron or timezone changed is
        rescheduled (a storage change applies from its next night). Then study files that load
        now and are not scheduled (fixed, new, or a copy whose study name is free again) are
        scheduled, and files that broke are logged. Returns the sweeps added."""
        with self._lock:
            if self._stopping:
                return []
        current = {file.resolve(): (file, sf, error) for folder in self.folders
                   for file, sf, error in folder_study_files(folder)}
        for sweep in list(self.sweeps.values()):
            if sweep.path.resolve() not in self._given:
                self._reconcile(sweep, current.get(sweep.path.resolve()))
        scheduled = {s.path.resolve() for s in self.sweeps.values()}
        names = {s.base: s.path for s in self.sweeps.values()}
        broken: dict[Path, str] = {}
        refused: dict[Path, str] = {}
        added: list[Sweep] = []
        for file, sf, error in current.values():
            if sf is None:
                broken[file] = error
                if self._broken.get(file) != error:
                    what = ("its nights will fail until it is fixed" if file.resolve() in scheduled
                            else "skipped until it is fixed")
                    log.error("%s: cannot load it (%s); %s", file, error, what)
                continue
            if file in self._broken:
                log.info("%s loads again", file)
            if file.resolve() in scheduled or sf.schedule is None:
                continue
            if sf.study.name in names:
                message = duplicate_message(file, sf.study.name, names[sf.study.name])
                refused[file] = message
                if self._refused.get(file) != message:
                    log.error("%s", message)
                continue
            try:
                sweep = make_sweeps([(file, sf)], storage=self.storage_override, cron=self.cron)[0]
            except TunerError as exc:
                refused[file] = f"{file}: {exc.message}"
                if self._refused.get(file) != refused[file]:
                    log.error("%s", refused[file])
                continue
            self._add(sweep)
            names[sweep.base] = file
            added.append(sweep)
        self._broken, self._refused = broken, refused
        return added

    def _reconcile(self, sweep: Sweep, now: tuple[Path, StudyFile | None, str] | None) -> None:
        """Bring a folder file's sweep in line with the file as it is ``now`` (``None``: not
        found as a scheduled file; a file that fails to load keeps its schedule, and
        :meth:`rescan` logs it)."""
        sf = now[1] if now is not None else None
        why = ""
        if now is None:
            why = ("its file is gone" if not sweep.path.exists() else
                   "its file is no study file with a [schedule] section any more")
        elif sf is not None and sf.schedule is None:
            why = "its file has no [schedule] section any more"
        elif sf is not None and sf.study.name != sweep.base:
            why = f"its file names its study {sf.study.name!r} now"
        if why:
            self._absent[sweep.id] = self._absent.get(sweep.id, 0) + 1
            if self._absent[sweep.id] >= ABSENT_RESCANS:
                self._remove(sweep, why)
            return
        self._absent.pop(sweep.id, None)
        if sf is None:
            return
        try:
            new = make_sweeps([(sweep.path, sf)], storage=self.storage_override, cron=self.cron)[0]
        except TunerError as exc:
            if self._unusable.get(sweep.id) != exc.message:
                log.error("%s (%s): %s; its nights keep the schedule they had and will fail until "
                          "it is fixed", sweep.base, sweep.path, exc.message)
            self._unusable[sweep.id] = exc.message
            return
        self._unusable.pop(sweep.id, None)
        with self._lock:
            self.sweeps[sweep.id] = new
        if (new.cron, new.timezone) != (sweep.cron, sweep.timezone):
            self.scheduler.reschedule_job(sweep.id, trigger=new.trigger)
            following = new.trigger.get_next_fire_time(None, datetime.now(UTC))
            log.info("rescheduled %s (%s): cron '%s' %s, was '%s' %s; next night at %s", new.base,
                     new.path, new.cron, new.timezone, sweep.cron, sweep.timezone,
                     following.isoformat() if following else "never")
        if new.storage_url != sweep.storage_url:
            log.info("%s (%s): its nights now use %s", new.base, new.path,
                     describe(new.storage_url))

    def _remove(self, sweep: Sweep, why: str) -> None:
        """Unschedule ``sweep`` (a night of it that is running goes on to its end)."""
        with contextlib.suppress(JobLookupError):
            self.scheduler.remove_job(sweep.id)
        self._absent.pop(sweep.id, None)
        self._unusable.pop(sweep.id, None)
        with self._lock:
            self.sweeps.pop(sweep.id, None)
            self._pending.pop(sweep.id, None)
            deferred = self._deferred.pop(sweep.id, None)
            running = self._running.get(sweep.id)
        log.info("unscheduled %s (%s): %s%s%s", sweep.base, sweep.path, why,
                 f"; its night of {running} goes on" if running else "",
                 f"; the deferred night of {deferred} will not run" if deferred else "")

    def stop(self, why: str = "stop requested", timeout: float = STOP_TIMEOUT_S) -> None:
        """Start nothing new, SIGTERM the running nights, wait for them (their trials are
        failed and re-queued by their runners), shut the scheduler down."""
        with self._lock:
            self._stopping = True
            children = [p for p in self._children.values() if p.poll() is None]
            dropped = dict(self._deferred)
            self._deferred.clear()
        if not self.scheduler.running:
            return
        self.scheduler.pause()
        for sweep_id, day in dropped.items():
            log.info("%s: the deferred night of %s will not run: the scheduler is stopping",
                     sweep_id.removeprefix("nightly:"), day)
        if children:
            log.info("stopping (%s): forwarding SIGTERM to %d running night(s) so they re-queue "
                     "their running trials", why, len(children))
        else:
            log.info("stopping (%s): no night is running", why)
        for proc in children:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        for proc in children:
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if proc.poll() is None:
                log.error("night process %d did not stop within %.0f s; killing it (its running "
                          "trials will be recovered as stale by the next run)", proc.pid, timeout)
                proc.kill()
        self.scheduler.shutdown(wait=True)
        log.info("scheduler stopped")

    # --- running one night -----------------------------------------------------------------

    def _job(self, sweep_id: str) -> None:
        """A fire of ``sweep_id``'s trigger (or its catch-up): run the night, unless a night of
        the same file is running; then defer it (coalesced) to when that one ends."""
        with self._lock:
            sweep = self.sweeps.get(sweep_id)
            if sweep is None:  # unscheduled by a rescan as it fired
                return
            day = self._pending.pop(sweep_id, None)
            if day is None:
                day = due_night(sweep, datetime.now(UTC))
            running = self._running.get(sweep_id)
            if running is not None:
                replaced = self._deferred.get(sweep_id)
                self._deferred[sweep_id] = day
                again = ("" if replaced is None else "; a fire was already deferred, the two run once"
                         if replaced == day else f"; it replaces the deferred night of {replaced} "
                         "(at most one fire waits)")
                log.info("%s: a fire for the night of %s came while the night of %s is still "
                         "running: deferred, it runs when that night ends%s", sweep.base, day,
                         running, again)
                return
            self._running[sweep_id] = day
        try:
            while True:
                try:
                    self.run_night(sweep, day)
                except Exception:  # never let one night take the service down
                    log.exception("%s: the night of %s failed to run", sweep.base, day)
                with self._lock:
                    deferred = self._deferred.pop(sweep_id, None)
                    sweep = self.sweeps.get(sweep_id)  # a rescan may have moved or unscheduled it
                    if deferred is None or self._stopping or sweep is None:
                        break
                    self._running[sweep_id] = day = deferred
                log.info("%s: running the deferred night of %s now", sweep.base, day)
        finally:
            with self._lock:
                self._running.pop(sweep_id, None)
                sweep = self.sweeps.get(sweep_id)
            if sweep is not None and not self._stopping:
                following = sweep.trigger.get_next_fire_time(None, datetime.now(UTC))
                log.info("%s: next night at %s", sweep.base,
                         following.isoformat() if following else "never")

    def command(self, sweep: Sweep, day: date) -> list[str]:
        """The night's command line: no storage URL (it carries the password), see :meth:`env`."""
        return [self.python, "-m", "tuner", "nightly", str(sweep.path), "--date", day.isoformat(),
                "--workers", str(self.workers), "--json"]

    def env(self) -> dict[str, str]:
        """The night's environment: the scheduler's, with ``--storage`` as ``TUNER_STORAGE``
        (where only the process's user and root can read it)."""
        env = {**os.environ, "TZ": "UTC", "PYTHONUNBUFFERED": "1"}
        if self.storage_override:
            env["TUNER_STORAGE"] = self.storage_override
        return env

    def run_night(self, sweep: Sweep, day: date) -> int | None:
        """Run ``tuner nightly`` for ``sweep`` and ``day`` in a subprocess; returns its exit
        code (``None`` if the service is stopping)."""
        with self._lock:
            if self._stopping:
                log.info("%s: not starting the night of %s: the scheduler is stopping", sweep.base, day)
                return None
            started = time.monotonic()
            proc = subprocess.Popen(self.command(sweep, day), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=self.env(),
                                    start_new_session=True)
            self._children[proc.pid] = proc
        log.info("%s: running the night of %s (pid %d)", sweep.base, day, proc.pid)
        # the night's warnings and errors are logged as they come (a long night said nothing
        # until it ended), each at its own level
        relay = threading.Thread(target=_relay, args=(proc.stderr, f"{sweep.base} [{day}]"),
                                 name="tuner-night-stderr", daemon=True)
        relay.start()
        lines: list[str] = []  # read on a thread: once the night has exited, a process it left
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()),  # holding the
                                  name="tuner-night-stdout", daemon=True)  # pipe cannot hang us
        reader.start()
        try:
            proc.wait()
            reader.join(10.0)
            relay.join(10.0)
            if reader.is_alive() or relay.is_alive():
                log.warning("%s: the night of %s exited, but a process it started still holds its "
                            "output open; not waiting for it", sweep.base, day)
        finally:
            with self._lock:
                self._children.pop(proc.pid, None)
        stdout = "".join(lines)
        code = proc.returncode
        elapsed = time.monotonic() - started
        summary = _parse_json(stdout)
        log.log(night_level(code), "%s", describe_night(sweep.base, day, code, elapsed, summary))
        self.completed.append({"base": sweep.base, "date": day.isoformat(), "exit_code": code,
                               "summary": summary})
        return code


MAX_RELAYED_LINES = 200  # a night that prints more is cut short in the log (its trials are not)


def _relay(stream: Any, where: str) -> None:
    """Log a night's stderr lines as they come: ``error: ...`` at ERROR, ``warning: ...`` at
    WARNING (the prefix said once, by the level), the rest at INFO."""
    if stream is None:
        return
    for count, raw in enumerate(stream):
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        if count == MAX_RELAYED_LINES:
            log.warning("%s: more output than %d lines; the rest is not logged", where,
                        MAX_RELAYED_LINES)
        if count >= MAX_RELAYED_LINES:
            continue
        level = logging.INFO
        for prefix, at in (("error: ", logging.ERROR), ("warning: ", logging.WARNING)):
            if line.startswith(prefix):
                line, level = line[len(prefix):], at
        log.log(level, "%s: %s", where, line)


def _parse_json(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    start = text.find("{")
    try:
        return json.loads(text[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        return None


def night_level(code: int | None) -> int:
    """The log level of a night that ended with exit code ``code``: INFO when it ran (or
    another process runs it), WARNING for a regression or an interruption, ERROR when it
    failed (a broken study file, an unreachable database, a crash), so an alert on ERROR
    lines catches every night that did not run."""
    from tuner.nightly.regression import EXIT_REGRESSION

    if code in (0, None, LockHeldError.exit_code):
        return logging.INFO
    if code in (EXIT_REGRESSION, 130, 143) or _stop_signal(code):
        return logging.WARNING
    return logging.ERROR


def _stop_signal(code: int | None) -> bool:
    """Whether the night died of SIGTERM/SIGINT itself (a negative exit code): the signal came
    while it started up, before it handled signals, so no trial was running."""
    return code is not None and -code in (signal.SIGTERM, signal.SIGINT)


def describe_night(base: str, day: date, code: int | None, elapsed: float,
                   summary: dict[str, Any] | None) -> str:
    """One log line: how a night ended and what it found."""
    head = f"{base}: night {base}-{day} ended after {elapsed:.1f} s with exit code {code}"
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        head = f"{base}: night {base}-{day} was stopped by {name} after {elapsed:.1f} s"
        if _stop_signal(code):
            return f"{head}, while it started (no trial was running; the next run does the night)"
        return (f"{head}: it did not finish (killed from outside: out of memory?); a trial it was "
                "training is failed as stale and retried by the next run")
    if code == LockHeldError.exit_code:
        return f"{head}: skipped, this night is already running in another process"
    if code in (130, 143):
        return (f"{head}: interrupted before its verdict; trials it was training, if any, were "
                f"re-queued (the next run resumes the night and judges it)")
    if summary is None:
        return f"{head}: no summary (see the lines above)"
    if "error" in summary:  # the night stopped on an error (--json prints it as JSON too)
        return f"{head}: {summary['error']}"
    counts = summary.get("counts") or {}
    stopped = summary.get("stopped")
    if stopped == "done" and summary.get("ran") == 0:  # a rerun of a finished night
        stopped = "done earlier (no trial ran now)"
    parts = [head, f"{stopped}; trials: "
             + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()) if n)]
    best = summary.get("best")
    if best and isinstance(best.get("value"), float):
        parts.append(f"best {best['value']:.4f} (#{best.get('trial')}: "
                     f"{describe_config(best.get('config') or {})})")
    warm = summary.get("warm_start") or {}
    if warm.get("source"):
        parts.append(f"warm start from {warm['source']}: {len(warm.get('enqueued', []))} enqueued, "
                     f"{len(warm.get('skipped', []))} skipped")
    verdict = summary.get("verdict")
    if verdict:
        parts.append(f"verdict {verdict_label(verdict, upper=True)}: {verdict.get('message')}")
    parts += [str(line) for line in summary.get("notes") or []]
    return "; ".join(parts)


def describe_config(config: dict[str, Any]) -> str:
    """``adam, cosine, sqrt batch scaling, lr 0.0123`` (``no batch scaling`` for ``none``)."""
    from tuner.params import with_defaults

    config = with_defaults(config)
    lr = config.get("lr")
    lr_text = f"lr {lr:.3g}" if isinstance(lr, int | float) else "lr ?"
    rule = config["batch_scaling"]
    scaling = "no batch scaling" if rule == "none" else f"{rule} batch scaling"
    return f"{config.get('optimizer')}, {config['decay']}, {scaling}, {lr_text}"


def configure_logging() -> None:
    """Log lines with UTC timestamps on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    aps = logging.getLogger("apscheduler")
    aps.handlers[:] = [handler]
    aps.setLevel(logging.WARNING)
    aps.propagate = False
