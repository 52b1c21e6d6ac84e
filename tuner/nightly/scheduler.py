"""``tuner scheduler``: a long-running service that runs each study file's nightly sweep at its
cron time, in its timezone (APScheduler 3, ``BackgroundScheduler``).

Design:

- **Each night runs in a subprocess**, ``python -m tuner nightly FILE --date D --json``. The
  runner's SIGTERM handling (fail and re-queue running trials, stop the workers) needs the main
  thread of its process, which a scheduler thread is not; a subprocess also isolates failures
  (a crash, a memory leak or a bad study file costs one night, not the service) and picks up
  edits to the study file every night. Children get their own session, so a terminal's Ctrl-C
  or a process-group signal does not reach them twice: the service forwards **one** SIGTERM.
- **Overlap**: one APScheduler job per study file with ``max_instances=1`` and
  ``coalesce=True``; the catch-up run goes through the same job. Across hosts and processes the
  night's database lock (``tuner nightly`` exits 75) prevents a second run of the same night.
- **Catch-up**: on start, for each file, the latest fire time at or before *now* is compared
  with the night studies that exist. If that night has no study with a verdict (never ran, or
  was interrupted), it is run once, now, for *that* date. Only the latest missed night is run,
  never one per missed night.
- **Shutdown** (SIGTERM/SIGINT): no new night starts; running nights get SIGTERM (their running
  trials are failed and re-queued; ``tuner nightly`` resumes them next time); the service waits
  for them, then exits 0. Nothing is left RUNNING.
- **Logs** (stderr): what was scheduled and when it fires next, what ran, how it ended, and
  what it found (trial counts, best value and configuration, warm start, verdict).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from tuner.config import StudyFile, load_study_file
from tuner.errors import ConfigError, LockHeldError, TunerError
from tuner.nightly.cron import cron_trigger, last_fire_time, night_of
from tuner.nightly.nights import find_night
from tuner.storage import describe, open_storage, resolve_url

log = logging.getLogger("tuner.scheduler")

STOP_TIMEOUT_S = 120.0


@dataclass
class Sweep:
    """One study file the scheduler runs."""

    path: Path
    sf: StudyFile
    trigger: CronTrigger
    cron: str
    timezone: str
    storage_url: str

    @property
    def base(self) -> str:
        return self.sf.study.name

    @property
    def id(self) -> str:
        return f"nightly:{self.base}"


def collect_study_files(paths: list[Path]) -> tuple[list[tuple[Path, StudyFile]], list[Path]]:
    """Study files to schedule: every given file (it must have a ``[schedule]`` section) and
    every ``*.toml`` of a given folder that has one. Returns (files, skipped folder files)."""
    if not paths:
        raise ConfigError("give at least one study file or folder, e.g. tuner scheduler studies/")
    found: list[tuple[Path, StudyFile]] = []
    skipped: list[Path] = []
    for path in paths:
        if path.is_dir():
            for file in sorted(path.glob("*.toml")):
                sf = load_study_file(file)
                (found.append((file, sf)) if sf.schedule is not None else skipped.append(file))
        else:
            sf = load_study_file(path)
            if sf.schedule is None:
                raise ConfigError(f"{path}: no [schedule] section, so it has no cron time",
                                  hint="add [schedule] with cron = \"0 2 * * *\" (see docs/nightly.md)")
            found.append((path, sf))
    if not found:
        raise ConfigError(f"no study file with a [schedule] section in {', '.join(map(str, paths))}")
    names: dict[str, Path] = {}
    for path, sf in found:
        other = names.setdefault(sf.study.name, path)
        if other != path:
            raise ConfigError(f"{path} and {other} both name their study {sf.study.name!r}; "
                              "their nights would be the same studies")
    return found, skipped


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


def catch_up_night(sweep: Sweep, now: datetime, storage: Any = None) -> date | None:
    """The night to run on start-up because it was missed, or ``None``: the night of the
    latest fire time at or before ``now``, if it has no study with a verdict yet."""
    fire = last_fire_time(sweep.trigger, now)
    if fire is None:
        return None
    day = night_of(fire, sweep.timezone)
    storage = storage if storage is not None else open_storage(sweep.storage_url)
    night = find_night(storage, sweep.base, day)
    if night is not None and night.verdict is not None:
        return None
    return day


def due_night(sweep: Sweep, now: datetime) -> date:
    """The night a run starting at ``now`` is for: that of the latest fire time."""
    fire = last_fire_time(sweep.trigger, now)
    return night_of(fire or now, sweep.timezone)


class SchedulerService:
    """Runs ``sweeps`` at their cron times until :meth:`stop`. ``clock`` is *now* for the
    catch-up decision (tests inject a fake clock); ``python`` runs ``-m tuner nightly``."""

    def __init__(self, sweeps: list[Sweep], *, workers: int = 1, catch_up: bool = True,
                 clock: Callable[[], datetime] | None = None, python: str | None = None,
                 storage_override: str | None = None) -> None:
        self.sweeps = {s.id: s for s in sweeps}
        self.workers = workers
        self.catch_up = catch_up
        self.clock = clock or (lambda: datetime.now(UTC))
        self.python = python or sys.executable
        self.storage_override = storage_override
        self._lock = threading.Lock()
        self._pending: dict[str, date] = {}
        self._children: dict[int, subprocess.Popen] = {}
        self._stopping = False
        self.scheduler = BackgroundScheduler(timezone=UTC, job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": None})
        self.completed: list[dict[str, Any]] = []

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        for sweep in self.sweeps.values():
            extra: dict[str, Any] = {}
            if self.catch_up:
                try:
                    day = catch_up_night(sweep, self.clock())
                except TunerError as exc:  # e.g. the database is not up yet: the cron runs retry
                    log.error("%s: cannot check for a missed night (%s); not catching up",
                              sweep.base, exc)
                    day = None
                if day is not None:
                    self._pending[sweep.id] = day
                    extra["next_run_time"] = datetime.now(UTC)
                    log.info("%s: the night of %s was missed (no finished study %s-%s); "
                             "catching it up now", sweep.base, day, sweep.base, day)
            self.scheduler.add_job(self._job, trigger=sweep.trigger, args=(sweep.id,),
                                   id=sweep.id, name=f"nightly {sweep.base}", **extra)
        self.scheduler.start()
        for sweep in self.sweeps.values():
            job = self.scheduler.get_job(sweep.id)
            following = sweep.trigger.get_next_fire_time(None, datetime.now(UTC))
            log.info("scheduled %s (%s): cron '%s' %s, %s; next night at %s", sweep.base, sweep.path,
                     sweep.cron, sweep.timezone, describe(sweep.storage_url),
                     following.isoformat() if following else "never")
            if job is None:
                log.warning("%s: the job was not scheduled", sweep.base)

    def stop(self, why: str = "stop requested", timeout: float = STOP_TIMEOUT_S) -> None:
        """Start nothing new, SIGTERM the running nights, wait for them (their trials are
        failed and re-queued by their runners), shut the scheduler down."""
        with self._lock:
            self._stopping = True
            children = [p for p in self._children.values() if p.poll() is None]
        if not self.scheduler.running:
            return
        self.scheduler.pause()
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
        sweep = self.sweeps[sweep_id]
        with self._lock:
            day = self._pending.pop(sweep_id, None)
        if day is None:
            day = due_night(sweep, datetime.now(UTC))
        try:
            self.run_night(sweep, day)
        except Exception:  # never let one night take the service down
            log.exception("%s: the night of %s failed to run", sweep.base, day)

    def command(self, sweep: Sweep, day: date) -> list[str]:
        cmd = [self.python, "-m", "tuner", "nightly", str(sweep.path), "--date", day.isoformat(),
               "--workers", str(self.workers), "--json"]
        if self.storage_override:
            cmd += ["--storage", self.storage_override]
        return cmd

    def run_night(self, sweep: Sweep, day: date) -> int | None:
        """Run ``tuner nightly`` for ``sweep`` and ``day`` in a subprocess; returns its exit
        code (``None`` if the service is stopping)."""
        env = {**os.environ, "TZ": "UTC", "PYTHONUNBUFFERED": "1"}
        with self._lock:
            if self._stopping:
                log.info("%s: not starting the night of %s: the scheduler is stopping", sweep.base, day)
                return None
            started = time.monotonic()
            proc = subprocess.Popen(self.command(sweep, day), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env,
                                    start_new_session=True)
            self._children[proc.pid] = proc
        log.info("%s: running the night of %s (pid %d)", sweep.base, day, proc.pid)
        try:
            stdout, stderr = proc.communicate()
        finally:
            with self._lock:
                self._children.pop(proc.pid, None)
        code = proc.returncode
        elapsed = time.monotonic() - started
        summary = _parse_json(stdout)
        for line in (stderr or "").strip().splitlines()[-20:]:
            log.info("%s [%s]: %s", sweep.base, day, line)
        log.info("%s", describe_night(sweep.base, day, code, elapsed, summary))
        self.completed.append({"base": sweep.base, "date": day.isoformat(), "exit_code": code,
                               "summary": summary})
        return code


def _parse_json(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    start = text.find("{")
    try:
        return json.loads(text[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        return None


def describe_night(base: str, day: date, code: int | None, elapsed: float,
                   summary: dict[str, Any] | None) -> str:
    """One log line: how a night ended and what it found."""
    head = f"{base}: night {base}-{day} ended after {elapsed:.1f} s with exit code {code}"
    if code == LockHeldError.exit_code:
        return f"{head}: skipped, this night is already running in another process"
    if code in (130, 143):
        return f"{head}: interrupted; its running trials were re-queued (the next run resumes it)"
    if summary is None:
        return f"{head}: no summary (see the lines above)"
    counts = summary.get("counts") or {}
    parts = [head, f"{summary.get('stopped')}; trials: "
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
        cause = f" ({verdict['cause']})" if verdict.get("cause") else ""
        parts.append(f"verdict {verdict['verdict'].upper()}{cause}: {verdict.get('message')}")
    return "; ".join(parts)


def describe_config(config: dict[str, Any]) -> str:
    """``adam, cosine, sqrt scaling, lr 0.0123``."""
    lr = config.get("lr")
    lr_text = f"lr {lr:.3g}" if isinstance(lr, int | float) else "lr ?"
    return (f"{config.get('optimizer')}, {config.get('decay', 'constant')}, "
            f"{config.get('batch_scaling', 'none')} scaling, {lr_text}")


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
