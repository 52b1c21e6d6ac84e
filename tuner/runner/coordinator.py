"""The runner: one process owns the study and hands configurations to worker processes.

Only this process talks to the database; workers only train (:mod:`tuner.runner.worker`).
That is what makes several workers on one SQLite file safe (no trial popped twice, no "database
is locked"), and on PostgreSQL any number of runners on any number of machines join one study.

Per trial: claim (under the study's budget lock: count the trials by state, then ``ask``, which
pops a queued retry first), suggest the configuration (define-by-run, :mod:`tuner.space`),
flush parameters and a first heartbeat, train in a worker while epoch reports feed the pruner,
then write curve, attributes and final state in one transaction. Each worker gets its next
trial before the current one ends, so it never waits for the sampler or the database.

Budget: the study is done when COMPLETE + PRUNED trials reach ``n_trials``; a new trial is
claimed only while COMPLETE + PRUNED + RUNNING is below it, so failures and retries never make
the study exceed or fall short of its target, however many runners there are.

Failures: an exception in training fails the trial (error recorded) and the study goes on; a
worker that dies fails its trial and re-queues it; SIGINT/SIGTERM fail the running trials, re-
queue them and put never-started ones back in the queue; a heartbeat thread keeps this runner's
trials alive and fails other runners' stale ones. Database outages are ridden out
(:mod:`tuner.storage.resilience`). At the timeout the trials in training finish and those
claimed but not started go back to the queue.

Claims run on a thread (:mod:`tuner.runner.claims`), signals are caught by
:mod:`tuner.runner.signals`, and what a finished training run becomes in the study is
:mod:`tuner.runner.outcome`'s.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import threading
import time
import warnings
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, Protocol

import optuna
import sqlalchemy
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState

from tuner.config import StudyFile
from tuner.data import Splits
from tuner.errors import StorageError, TunerError
from tuner.kernels import engine_id
from tuner.runner.claims import Claimer
from tuner.runner.outcome import DivergedValue, trial_outcome
from tuner.runner.pool import Job, Worker, usable_cpus
from tuner.runner.progress import Display, Snapshot, compact_config
from tuner.runner.shared import SharedSplits
from tuner.runner.signals import Signals
from tuner.storage import describe, open_storage
from tuner.storage.coordination import (
    Failed,
    NamedLock,
    claim_run_index,
    enqueue_retry,
    fail_stale_trials,
    fail_trial,
    runner_lock,
    state_counts,
    touch_heartbeats,
)
from tuner.storage.resilience import Resilient, first_line
from tuner.study import (
    ATTR_DATA,
    ATTR_DATA_DIGEST,
    ATTR_TRAINING,
    check_same_data_shape,
    data_digest,
    data_summary,
    derive_seed,
    load_data,
    open_study,
    record_data_digest,
    record_study_file,
    space_warnings,
    study_exists,
    training_digest,
)

log = logging.getLogger("tuner.runner")
# We beat hearts ourselves (one UPDATE for all of a runner's trials), not through optimize().
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")

FLUSH_EVERY_S = 5.0
STARTING_NOTE = ("starting the worker processes (the first run on a machine also compiles the "
                 "training kernels, about 10 s)")
EXIT_CODES = {"done": 0, "timeout": 0, "SIGINT": 130, "SIGTERM": 143,
              "fail_fast": 1, "deleted": 1}


class RunHook(Protocol):
    """Something to do with the study at the start, every ``hook_interval`` seconds and at the
    end of a run that no signal interrupted (e.g. refresh the dashboard views stored with it:
    Ctrl-C must not wait for that). Errors are logged only."""

    def on_start(self, study: optuna.Study) -> None: ...

    def periodic(self, study: optuna.Study) -> None: ...

    def on_end(self, study: optuna.Study) -> None: ...


class WorkerStartError(TunerError):
    """Worker processes die before they can train (a broken install, no memory)."""

    exit_code = 1


@dataclass
class RunResult:
    study_name: str
    storage: str
    reason: str
    counts: Counter
    best: FrozenTrial | None
    db_retries: int = 0
    fail_fast_error: str | None = None
    unsaved: list[int] = field(default_factory=list)  # left RUNNING (clean-up skipped or failed)
    interrupted: list[int] = field(default_factory=list)  # training when stopped: FAIL, re-queued
    returned: int = 0  # claimed, not started when stopped: back in the queue (WAITING)
    hurried: bool = False  # a second signal skipped the clean-up
    claim_abandoned: bool = False  # a claim in progress was left: its trial may stay RUNNING
    signal: str | None = None  # SIGINT/SIGTERM received, also when it came as the study finished
    finished_here: int = 0  # trials this run finished (the others: earlier runs, other runners)

    @property
    def no_result(self) -> bool:
        """The budget is spent and no trial completed (every one diverged or was pruned): a
        script must not take that for a result."""
        return self.reason == "done" and not self.counts[TrialState.COMPLETE]

    @property
    def exit_code(self) -> int:
        return 1 if self.no_result else EXIT_CODES.get(self.reason, 1)


class Runner:
    """Runs a study file's trials on ``workers`` local worker processes until the study's
    budget is reached, ``timeout`` passes, or a signal arrives."""

    def __init__(self, study_file: StudyFile, *, storage_url: str, workers: int = 1,
                 timeout: float | None = None, quiet: bool = False, live: bool | None = None,
                 console: Any = None, max_outage: float | None = None, prefetch: bool = True,
                 hooks: list[RunHook] | None = None, hook_interval: float = 300.0,
                 splits: Splits | None = None) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.sf = study_file
        self.url = storage_url
        self._splits = splits  # already loaded by the caller (tuner nightly), else loaded here
        self.n_workers = workers
        self.timeout = timeout if timeout is not None else study_file.study.timeout
        self.prefetch = prefetch
        self.metric = study_file.study.metric
        self.rel = study_file.study.reliability
        self.engine = engine_id()  # stored with each trial (what an exact replay needs)
        self.training = training_digest(study_file)  # which study file a trial trained under, for replays
        self.data_digest: str | None = None  # which contents of its data file (set once loaded)
        self._waiting_said = 0  # RUNNING count last said to be waited for (said once per count)
        self._stale_failed: deque[str] = deque()  # from the heartbeat thread, said by the main loop
        self._shutting_down = False
        self.signals = Signals(on_note=self._note)
        self.resilient = Resilient(
            storage_url, on_retry=self._on_db_retry,
            max_outage=self.rel.max_db_outage if max_outage is None else max_outage,
            interrupted=lambda: self.signals.received is not None and (
                not self._shutting_down or self.signals.hurry))
        self.snap = Snapshot(study=study_file.study.name, storage=describe(storage_url),
                             metric=self.metric, n_trials=study_file.study.n_trials, workers=workers)
        self.display = Display(self.snap, console=console, quiet=quiet, live=live)
        self.stop_reason: str | None = None
        self.fail_fast_errors: Counter[str] = Counter()
        self.successes_this_run = 0
        self._unsaved: list[int] = []  # trials the shutdown left RUNNING in the database
        self._unsaved_finished = 0     # ... of which training had finished (results lost)
        self._interrupted: list[int] = []  # trials the shutdown failed and re-queued
        self._returned = 0  # claimed trials the shutdown put back in the queue
        self._claim_abandoned = False
        self._stop_event = threading.Event()
        self._beats_stop = threading.Event()  # set once the shutdown has written everything
        self.workers: list[Worker] = []
        self.startup_failures = 0
        self.claims: Claimer | None = None  # once the study is open
        self._ready: deque[Job] = deque()  # claimed, not yet handed to a worker
        self._finished_since_claim = False
        self._last_claim_empty = False  # the budget (or a failed suggestion) gave no trial
        self.diverged_value = DivergedValue(direction=study_file.direction, metric=self.metric)
        self.spare = 1 if prefetch else 0  # claimed trials beyond the workers' empty slots
        self._budget_full_at = -1e9
        self.hooks = list(hooks or [])
        self.hook_interval = hook_interval

    # --- public ------------------------------------------------------------------------

    def run(self) -> RunResult:
        with self.signals:  # caught until the clean-up is done; the final read is not held up
            deleted = self._run()
        return self._result(deleted)

    def _run(self) -> bool:
        """Set up, run the loop, shut down; ``True`` if the study was deleted meanwhile."""
        self._owner_lock: NamedLock | None = None
        self._shared: SharedSplits | None = None
        self._heartbeat: threading.Thread | None = None
        self.study: optuna.Study | None = None
        lost: StorageError | None = None
        deleted = False
        try:
            try:
                self._setup()
                if self.signals.received is None and self.stop_reason is None:
                    self.started = time.monotonic()
                    self._call_hooks("on_start")
                    self._update_counts()  # before the display's first line ("12/50 done")
                    with self.display:
                        self._loop()
                    if self.signals.received is None:  # interrupted: exit now; the next run refreshes
                        self._call_hooks("on_end")
            except StorageError as exc:
                if self.signals.received is None:
                    lost = exc
                    raise
            except Exception:
                # `tuner delete --force` while we run: the study's rows vanish under us
                # (KeyError: 'Record does not exist.', trials "no longer RUNNING")
                if not self._study_deleted():
                    raise
                deleted = True
            if self.signals.received is not None:
                self.stop_reason = self.signals.received
            elif deleted:
                self.stop_reason = "deleted"
        finally:
            self._stop_event.set()
            # (the heartbeats go on while the shutdown saves finished trials and fails the
            # others: another runner must not take them for a dead runner's meanwhile)
            try:
                self._shutdown(skip_writes=deleted or (lost is not None and self.resilient.gave_up))
            finally:
                self._beats_stop.set()
            if lost is not None and self.resilient.gave_up:
                lost.hint = self._outage_hint()
            if self._heartbeat is not None:
                self._heartbeat.join(5.0)
            if self._shared is not None:
                self._shared.close()
            if self._owner_lock is not None:
                self._owner_lock.release()
            if self.claims is not None:
                self.claims.close()
        return deleted

    def _result(self, deleted: bool) -> RunResult:
        counts: Counter = Counter()
        best = None
        if self.study is not None and not deleted:
            try:
                counts = self.resilient.call("count trials", state_counts, self.storage, self.study_id)
                best = self._best()
            except StorageError:
                if not self.signals.hurry:
                    raise
        if (self.stop_reason in ("SIGINT", "SIGTERM") and not self.signals.hurry and not self._unsaved
                and counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] >= self.sf.study.n_trials):
            self.stop_reason = "done"  # the signal came as the last trial finished: nothing to resume
        error = self.fail_fast_errors.most_common(1)[0][0] if self.stop_reason == "fail_fast" else None
        return RunResult(self.sf.study.name, describe(self.url), self.stop_reason or "done",
                         counts, best, self.resilient.retries, error,
                         unsaved=sorted(set(self._unsaved)), interrupted=sorted(self._interrupted),
                         returned=self._returned,
                         hurried=self.signals.hurry,
                         claim_abandoned=self._claim_abandoned, signal=self.signals.received,
                         finished_here=self.snap.finished_this_run)

    # --- setup ---------------------------------------------------------------------------

    def _setup(self) -> None:
        """Storage, runner lock (SQLite), study, orphan recovery, data in shared memory,
        worker processes and the heartbeat thread. Stops early if a signal arrives."""
        # up to one worker per CPU starts first (a fresh interpreter each, a second of imports)
        # while the storage opens and the data loads; a run with nothing to do stops them
        # unused, and the rest start once the trials left are known
        self._ctx = mp.get_context("spawn")
        cpus = usable_cpus()
        self.blas_threads = max(1, cpus // self.n_workers)
        self.workers = [Worker(self._ctx, i, self.blas_threads)
                        for i in range(min(self.n_workers, cpus))]
        self.storage = self.resilient.call("open the storage", open_storage, self.url,
                                           heartbeat_interval=self.rel.heartbeat_interval,
                                           grace_period=self.rel.grace,
                                           max_retry=self.rel.max_retry)
        self.engine_kind = self.storage.backend.engine.dialect.name
        if self.engine_kind == "sqlite":
            self._owner_lock = runner_lock(self.storage, self.sf.study.name,
                                           what=f"study {self.sf.study.name!r} on {describe(self.url)}")
            self._owner_lock.acquire()
        splits, self._splits = self._splits, None
        if splits is None and not self.resilient.call("look the study up", study_exists,
                                                      self.storage, self.sf.study.name):
            # a new study: data that cannot load (a missing file, one class) must not leave an
            # empty study behind; an existing one loads its data only if it has trials left
            splits = load_data(self.sf)
        self.study = self.resilient.call("open the study", open_study, self.sf, self.storage,
                                         sampler_seed=0)
        self.study_id = self.study._study_id
        self.claims = Claimer(self.sf, self.storage, self.study, self.resilient,
                              on_bad_config=self._bad_config)
        self._recover_orphans()
        counts = self.resilient.call("count trials", state_counts, self.storage, self.study_id)
        left = self.sf.study.n_trials - counts[TrialState.COMPLETE] - counts[TrialState.PRUNED]
        if left <= 0:
            self.stop_reason = "done"  # nothing to do: don't load the data
        if self.signals.received is not None or self.stop_reason is not None:
            return
        wanted = min(self.n_workers, left)
        if wanted < self.n_workers:
            self.display.message(f"{left} trial(s) left: {max(wanted, len(self.workers))} of "
                                 f"the {self.n_workers} workers asked for are enough")
        self.workers += [Worker(self._ctx, i, self.blas_threads)
                         for i in range(len(self.workers), wanted)]
        self.snap.workers = len(self.workers)
        if splits is None:
            splits = load_data(self.sf)
        self.n_train = len(splits.y_train)
        self.display.message(f"data: {splits.describe()}")
        attrs = self.resilient.call("read the study", lambda: self.study.user_attrs)
        check_same_data_shape(self.sf, self.storage, attrs.get(ATTR_DATA), splits,
                              counts[TrialState.COMPLETE] + counts[TrialState.PRUNED])
        # a run refused above leaves no trace: the study's file, run count and data stay as
        # its last run left them
        self.resilient.call("record the study file", record_study_file, self.study, self.sf)
        self.data_digest = data_digest(self.sf)
        self.resilient.call("record the data file", record_data_digest, self.study,
                            self.data_digest, self.sf.source)
        if not counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]:  # said on the first run
            for text in space_warnings(self.sf, self.n_train, len(splits.y_val)):
                log.warning("%s", text)
        if attrs.get(ATTR_DATA) != (summary := data_summary(splits)):  # new, or other data
            self.resilient.call("store the data sizes", self.study.set_user_attr, ATTR_DATA,
                                summary)
        self._shared = SharedSplits(splits)
        del splits
        for worker in self.workers:
            worker.send("data", self._shared.handle)
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="tuner-heartbeat",
                                           daemon=True)
        self._heartbeat.start()
        attrs = {"engine": self.engine, ATTR_TRAINING: self.training}
        if self.data_digest is not None:
            attrs[ATTR_DATA_DIGEST] = self.data_digest
        self.study.sampler = self.resilient.call("claim this run's index in the study",
                                                 self._seeded_sampler)
        self.claims.start(n_train=self.n_train, attrs=attrs)

    def _recover_orphans(self, by: str = "a stopped runner") -> None:
        """Fail trials left RUNNING by a runner that is gone. With SQLite we hold the study's
        only runner lock, so every RUNNING trial that is not ours is an orphan; with PostgreSQL
        only those whose heartbeat is older than the grace period."""
        failed = self.resilient.call(
            "recover stale trials", fail_stale_trials, self.study, self.storage,
            grace_seconds=self.rel.grace, max_retry=self.rel.max_retry,
            all_running=self.engine_kind == "sqlite",
            reason=f"orphaned: left RUNNING by {by}")
        if failed:
            self.display.message(f"recovered {len(failed)} trial(s) left RUNNING by {by} "
                                 f"(failed): {describe_failed(failed)}")

    def _seeded_sampler(self) -> optuna.samplers.BaseSampler:
        """Seed the sampler from the study seed and this run's index in the study (claimed
        under the budget lock), so a fresh single-runner study is reproducible while resumed
        runs and concurrent runners never repeat each other's random samples."""
        from tuner.study import ATTR_RUNS, make_sampler

        runs = claim_run_index(self.storage, self.study_id, ATTR_RUNS)
        return make_sampler(self.sf, derive_seed(self.sf.study.seed, runs))

    def _note(self, text: str) -> None:
        self.snap.note = text

    def _starting_note(self) -> None:
        """Say why nothing trains yet while no worker is ready (the first run on a machine
        compiles the training kernels), and take it back once one is."""
        if any(w.ready for w in self.workers):
            if self.snap.note == STARTING_NOTE:
                self.snap.note = ""
        elif not self.snap.note and time.monotonic() - self.started > 2.0:
            self.snap.note = STARTING_NOTE

    def _on_db_retry(self, what: str, exc: BaseException, delay: float) -> None:
        self.snap.note = f"database unavailable ({type(exc).__name__}) while trying to {what}; " \
                         f"retrying in {delay:.2g} s"
        self.display.refresh()

    # --- main loop -----------------------------------------------------------------------

    def _loop(self) -> None:
        last_flush = last_hook = time.monotonic()
        last_counts = 0.0
        while True:
            if self.signals.received is not None:
                self.stop_reason = self.signals.received
                return
            self._assign_jobs()
            in_flight = [j for w in self.workers for j in w.jobs()]
            if not in_flight and not self.claims.pending and not self._ready:
                self.snap.jobs = []
                counts = self.resilient.call("count trials", state_counts, self.storage, self.study_id)
                done = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
                if self.stop_reason is not None or done >= self.sf.study.n_trials:
                    self.stop_reason = self.stop_reason or "done"
                    return
                if any(w.ready for w in self.workers):  # (none yet: they are starting, not idle)
                    if self.engine_kind == "sqlite" and counts[TrialState.RUNNING]:
                        # no other runner (we hold the study's lock), none of ours in flight: an
                        # interrupted claim left it (Optuna's trial creation retries its commit)
                        self._recover_orphans("an interrupted claim of this runner")
                    elif counts[TrialState.RUNNING] and self._waiting_said != counts[TrialState.RUNNING]:
                        self._waiting_said = counts[TrialState.RUNNING]
                        self.display.message(
                            f"waiting for {counts[TrialState.RUNNING]} trial(s) running in other "
                            f"runners: the budget has no other trial left; a runner that is gone "
                            f"is noticed after {self.rel.grace} s without heartbeat and its trials "
                            f"re-run")
                    # other runners hold the remaining trials; wait for them to finish or go stale
                    self._stop_event.wait(0.5)
            self._starting_note()
            while self._stale_failed:  # failed by the heartbeat thread: said from this one,
                log.warning("%s", self._stale_failed.popleft())  # --quiet too
            self._dispatch(timeout=0.2)
            now = time.monotonic()
            if now - last_flush >= FLUSH_EVERY_S:
                lost = self.resilient.call("save learning curves", self.storage.flush_older_than,
                                           FLUSH_EVERY_S)
                self._stop_lost(lost)
                last_flush = now
            if now - last_counts >= 2.0:
                self._update_counts()
                last_counts = now
            if self.hooks and now - last_hook >= self.hook_interval:
                self._call_hooks("periodic")
                last_hook = now
            self.snap.jobs = [(w.current.number, compact_config(w.current.params), w.current.epoch,
                               self.sf.model.epochs) for w in self.workers if w.current is not None]
            self.snap.training = len(self.snap.jobs)
            self.snap.queued_here = sum(w.queued is not None for w in self.workers) + len(self._ready)
            self.display.refresh()

    def _stop_lost(self, trial_ids: list[int]) -> None:
        """Trials another runner failed as stale while we still ran them (we were cut off from
        the database longer than the grace period): their retries will run them, so stop
        training them; their results are discarded when they end."""
        for worker in self.workers:
            for job in worker.jobs():
                if job.trial_id in trial_ids:
                    log.warning("trial %d was failed by another runner (stale heartbeat); "
                                "its retry will run it", job.number)
                    job.lost = True
                    worker.send("stop", job.number)  # the next job: answered "skipped"

    def _may_claim(self) -> bool:
        """Whether another trial may be claimed; sets the stop reason once the timeout has
        passed or fail-fast applies."""
        if self.stop_reason is not None or self.signals.received is not None:
            return False
        if self.timeout is not None and time.monotonic() - self.started >= self.timeout:
            self.stop_reason = "timeout"
            return False
        fail_fast = self.rel.fail_fast
        if fail_fast and self.successes_this_run == 0 and sum(self.fail_fast_errors.values()) >= fail_fast:
            self.stop_reason = "fail_fast"
            return False
        return True

    def _assign_jobs(self) -> None:
        """Hand claimed trials to workers that need one (running, then next), and ask the
        claimer thread for another claim while fewer trials are claimed than the workers' empty
        slots plus one spare (it hides a slow claim behind a short trial).

        At most one trial finishes between two claim decisions, and none during a claim: each
        claim's sampler then sees a history that depends only on the order in which trials
        finished, so a single-runner, single-worker study samples the same configurations
        every time, however fast or slow its trials and claims are."""
        for result in self.claims.results():
            self._last_claim_empty = result is None
            if result is None:
                self._budget_full_at = time.monotonic()
            else:
                self._ready.append(result)
        if not self._may_claim() and self.stop_reason is not None:
            self._cancel_unstarted()
        while True:
            if not self.claims.pending:
                self._handle_deferred()
            self._hand_out()
            if (self._wanted() > len(self._ready) and not self.claims.pending
                    and self._may_claim() and time.monotonic() - self._budget_full_at >= 0.5):
                self.claims.request()
            self._finished_since_claim = False
            if self.claims.pending or not any(w.deferred for w in self.workers):
                return

    def _cancel_unstarted(self) -> None:
        """The run is ending (timeout, fail-fast): claimed trials that have not started go back
        to the queue instead of being trained; a worker's next one is cancelled."""
        while self._ready:
            self.claims.unclaim(self._ready.popleft())
        for worker in self.workers:
            job = worker.queued
            if job is not None and not job.cancelled:
                job.cancelled = True
                worker.send("stop", job.number)

    def _wanted(self) -> int:
        """How many claimed trials the workers' empty slots (running, next) and the spare call
        for; the spare only once a worker is ready (RUNNING should mean about to train)."""
        ready = [w for w in self.workers if w.ready]
        empty = sum((w.current is None) + (self.prefetch and w.queued is None) for w in ready)
        return empty + (self.spare if ready else 0)

    def _filling(self) -> bool:
        """Whether claims are still filling the pipeline (start-up, a replaced worker): a
        finished trial then waits until it is full, so which claims saw it does not depend on
        how fast the first trials and claims were."""
        return (self.stop_reason is None and self.signals.received is None and not self._last_claim_empty
                and self._wanted() > len(self._ready))

    def _hand_out(self) -> None:
        """Send ready jobs to workers with an empty slot (none once the run is ending)."""
        if self.stop_reason is not None:
            return
        for worker in self.workers:
            if not worker.ready:
                continue
            while self._ready and (worker.current is None or (self.prefetch and worker.queued is None)):
                job = self._ready.popleft()
                if not worker.send("run", job.number, job.params, job.seed, self.sf.model.epochs,
                                   self.sf.model.dtype, self._sync_from(job)):
                    self._ready.appendleft(job)  # died: its replacement gets the job
                    break
                if worker.current is None:
                    worker.current, job.started = job, True
                else:
                    worker.queued = job

    def _handle_deferred(self, workers: list[Worker] | None = None, *,
                         everything: bool = False) -> None:
        """Handle held-back messages in order, up to the next finished trial if one already
        finished since the last claim decision (unless ``everything``)."""
        for worker in self.workers if workers is None else workers:
            while worker.deferred:
                message = worker.deferred[0]
                if (not everything and message[0] in ("done", "error")
                        and (self._finished_since_claim or self._filling())):
                    return
                worker.deferred.pop(0)
                self._handle(worker, message, defer=False)

    def _dispatch(self, timeout: float) -> None:
        conns = {w.conn: w for w in self.workers}
        sentinels = {w.process.sentinel: w for w in self.workers}
        ready = wait([*conns, *sentinels, self.claims.wake], timeout=timeout)
        for item in ready:
            if item in conns:
                worker = conns[item]
                for message in self._receive(worker):
                    self._handle(worker, message)
        for worker in self.workers:
            if not worker.process.is_alive():
                self._worker_died(worker)

    @staticmethod
    def _receive(worker: Worker, seconds: float | None = None) -> list[tuple]:
        """Every message waiting from ``worker``; a dead worker's last ones included. A live
        one keeps sending: ``seconds`` bounds the reading."""
        messages = []
        until = None if seconds is None else time.monotonic() + seconds
        try:
            while (until is None or time.monotonic() < until) and worker.conn.poll():
                messages.append(worker.conn.recv())
        except (EOFError, OSError):
            pass  # it died: handled as a dead worker by _dispatch
        return messages

    def _handle(self, worker: Worker, message: tuple, *, defer: bool = True) -> None:
        kind = message[0]
        if kind == "ready":
            worker.ready = True
            self.startup_failures = 0  # counts start-up deaths in a row only
            return
        if defer and (worker.deferred or (kind in ("done", "error") and (
                self.claims.pending or self._finished_since_claim or self._filling()))):
            worker.deferred.append(message)  # see _assign_jobs: one finish per claim decision
            return
        job = worker.current
        if job is None or job.number != message[1]:
            return
        if job.lost and kind == "skipped":  # stopped before it started: nothing to discard
            job.finished = True
            self.claims.release(job.trial_id)
            self._advance(worker)
            return
        if job.cancelled:  # skipped, or stopped at once if it had started before the stop
            if kind in ("skipped", "done", "error"):
                self.claims.unclaim(job)
                self._advance(worker)
            return
        if kind == "epochs":
            self._on_epochs(worker, job, message[2])
        elif kind == "done":
            self._on_done(worker, job, message[2])
            self._finished_since_claim = True
        elif kind == "error":
            self._on_error(worker, job, *message[2:])
            self._finished_since_claim = True

    def _sync_from(self, job: Job) -> int | None:
        """First epoch at which the pruner may stop ``job`` (``None``: never): the end of its
        warmup. From there its worker runs ahead of our decisions by at most one epoch or
        :data:`~tuner.runner.worker.LAG_SECONDS` of training, whichever is more."""
        if self.sf.study.pruner.type == "none":
            return None
        spe = job.plan.steps_per_epoch
        return max(1, -(-job.plan.warmup_steps // spe))

    def _on_epochs(self, worker: Worker, job: Job, reports: list[dict[str, float]]) -> None:
        """Report each epoch to Optuna and ask the pruner, in order; answer the batch once:
        ``stop`` if the pruner stopped the trial at one of them, else ``ack`` of the last."""
        for metrics in reports:
            job.epoch = int(metrics["epoch"])
            job.history.append(metrics)
            if job.prune_at is not None or job.lost:
                continue
            job.trial.report(float(metrics[self.metric]), job.epoch)
            if (self.sf.study.pruner.type != "none" and job.plan.warmup_epochs_done(job.epoch)
                    and job.epoch < self.sf.model.epochs and self.resilient.call(
                        f"decide whether to prune trial {job.number}", job.trial.should_prune)):
                job.prune_at = job.epoch  # (never inside the trial's own warmup)
                worker.send("stop", job.number)
        if job.lost:  # (again, in case it started before the first stop reached it)
            worker.send("stop", job.number)
        elif job.prune_at is None:
            worker.send("ack", job.number, job.epoch)

    def _on_done(self, worker: Worker, job: Job, result: dict[str, Any]) -> None:
        job.finished = True
        if job.lost:
            self.claims.release(job.trial_id)
            self._advance(worker)
            return
        trial = job.trial
        outcome = trial_outcome(result, metric=self.metric, prune_at=job.prune_at,
                                n_train=self.n_train)
        if outcome.divergence is not None:
            worst = self.resilient.call("read the study's worst loss", self.diverged_value,
                                        self.study, outcome.history)
            trial.report(worst, int(outcome.divergence["epoch"]))
        for key, val in outcome.attrs.items():
            trial.set_user_attr(key, val)
        state, value = outcome.state, outcome.value
        if not self._finish(job, state, value):
            self._advance(worker)
            self.display.trial_finished(job.number, "FAIL", None, job.params,
                                        f"could not save its {self.metric} {value}")
            return
        self.successes_this_run += 1
        self.snap.finished_this_run += 1
        if state == TrialState.COMPLETE:
            self.snap.complete += 1
            best = self.snap.best_value
            if best is None or (value > best if self.sf.direction == "maximize" else value < best):
                self.snap.best_value, self.snap.best_number = value, job.number
                self.snap.best_params = dict(trial.params)
        else:
            self.snap.pruned += 1
        self._advance(worker)
        self.display.trial_finished(job.number, state.name, value, job.params, outcome.note)

    def _on_error(self, worker: Worker, job: Job, error_type: str, message: str, tb: str) -> None:
        job.finished = True
        if job.lost:
            self.claims.release(job.trial_id)
            self._advance(worker)
            return
        self._fail(job.trial_id, job.number, f"exception: {error_type}: {message}", retry=False,
                   error=message, error_type=error_type, traceback=tb)
        self.fail_fast_errors[f"{error_type}: {message}"] += 1
        self._advance(worker)
        self.display.trial_finished(job.number, "FAIL", None, job.params, f"{error_type}: {message}")

    def _advance(self, worker: Worker) -> None:
        worker.current, worker.queued = worker.queued, None
        if worker.current is not None and not worker.current.cancelled:
            worker.current.started = True

    def _finish(self, job: Job, state: TrialState, value: float | None) -> bool:
        """Save the trial's final state; ``False`` if Optuna refused its value (nothing was
        written): the trial is then failed with that error."""
        refused: list[ValueError] = []

        def tell() -> None:
            try:
                self.study.tell(job.trial, value, state=state)
            except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as exc:
                actual = self.storage.backend.get_trial(job.trial_id).state
                if actual == TrialState.RUNNING and isinstance(exc, ValueError):
                    refused.append(exc)  # a value tell() does not take (it checks before writing)
                    return
                # finished elsewhere: our earlier attempt committed before the connection
                # dropped, or another runner failed it as stale (its retry will run it)
                self.storage.release(job.trial_id)
                if actual != state:
                    log.warning("trial %d was finished as %s by another process; its result "
                                "is discarded (a retry re-runs it)", job.number, actual.name)
        self.resilient.call(f"save trial {job.number}", tell)
        if refused:
            self._fail(job.trial_id, job.number, f"exception: ValueError: {refused[0]}",
                       retry=False, error=str(refused[0]), error_type="ValueError")
            self.fail_fast_errors[f"ValueError: {refused[0]}"] += 1
            return False
        self.claims.release(job.trial_id)
        return True

    def _fail(self, trial_id: int, number: int, reason: str, *, retry: bool, **attrs: Any) -> bool:
        """Fail a RUNNING trial (and queue its retry); ``False`` if it was no longer RUNNING."""
        failed = False

        def do_fail() -> None:  # retried as a whole if the connection drops
            nonlocal failed
            failed = failed or fail_trial(self.storage, trial_id, reason, retry=retry,
                                          max_retry=self.rel.max_retry, **attrs)
            if failed and retry:
                enqueue_retry(self.study, self.storage.backend.get_trial(trial_id), self.rel.max_retry)
        self.resilient.call(f"fail trial {number}", do_fail)
        self.claims.release(trial_id)
        self.snap.failed += 1
        return failed

    def _bad_config(self, trial_id: int, number: int, exc: Exception) -> None:
        """A suggested configuration the engine cannot plan (claimer thread): fail the trial
        with the error; it counts toward fail-fast."""
        self._fail(trial_id, number, f"exception: {exc}", retry=False, error=str(exc),
                   error_type=type(exc).__name__)
        self.fail_fast_errors[f"{type(exc).__name__}: {exc}"] += 1

    def _fail_interrupted(self, job: Job, reason: str) -> None:
        """Fail and re-queue a trial the shutdown stopped mid-training."""
        if self._fail(job.trial_id, job.number, reason, retry=True):
            self._interrupted.append(job.number)

    def _return(self, job: Job) -> None:
        """Put a trial the shutdown found claimed but not started back in the queue."""
        self.claims.unclaim(job)
        self._returned += 1

    def _worker_died(self, worker: Worker) -> None:
        code = worker.process.exitcode
        why = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        for message in self._receive(worker):  # what it sent since _dispatch's wait, then died
            self._handle(worker, message)
        self._handle_deferred([worker], everything=True)  # what it finished before dying is kept
        if worker.current is not None and worker.current.cancelled:
            self.claims.unclaim(worker.current)
        elif worker.current is not None and self.signals.received is not None:
            # it died of the stop signal too (sent to the process group before it ignored it):
            # an interruption, which uses no retry and does not count toward fail-fast
            self._fail_interrupted(worker.current, f"interrupted by {self.signals.received}")
        elif worker.current is not None:
            job = worker.current
            self._fail(job.trial_id, job.number, f"worker process died ({why})", retry=True)
            # A trial that kills its worker (the OOM killer, a crash in native code) counts
            # toward fail-fast like an exception: if every configuration does, stop.
            self.fail_fast_errors[f"worker process died ({why})"] += 1
            self.display.trial_finished(job.number, "FAIL", None, job.params,
                                        f"worker died ({why}); re-queued")
        if worker.queued is not None:
            self.claims.unclaim(worker.queued)
        worker.current = worker.queued = None
        worker.conn.close()
        index = self.workers.index(worker)
        if not worker.ready and self.signals.received is None:  # (a stop signal is no failure)
            self.startup_failures += 1
            if self.startup_failures >= 3:
                raise WorkerStartError(
                    f"worker processes keep dying at start-up ({self.startup_failures} in a row, the "
                    f"last by {why}) before training anything; see their error above, if any",
                    hint="check free memory (each worker maps the data and its own copy of the "
                         "model) and that `python -m tuner train STUDY_FILE` works here")
        if self.signals.received is None:
            replacement = Worker(self._ctx, worker.index, self.blas_threads)
            replacement.send("data", self._shared.handle)
            self.workers[index] = replacement
        else:
            self.workers.pop(index)

    def _call_hooks(self, event: str) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, event)(self.study)
            except Exception as exc:  # a view that fails to render must not stop the study
                log.warning("%s.%s failed: %s: %s", type(hook).__name__, event,
                            type(exc).__name__, first_line(exc, self.url))

    # --- background: heartbeats and stale trials ------------------------------------------

    def _heartbeat_loop(self) -> None:
        """Every ``heartbeat_interval``: beat this runner's trials' hearts, and (PostgreSQL) fail
        other runners' stale trials. After this runner lost the database, others did too, and
        their beats are as old as ours were: their stale trials are looked for only once they
        had ``grace`` seconds to beat again (their finished trials' results are on the way)."""
        interval = self.rel.heartbeat_interval
        failing_since: float | None = None
        sweep_from = 0.0  # (monotonic) when stale trials may be looked for again
        last_logged = -1e9
        while not self._beats_stop.wait(interval):
            try:
                touch_heartbeats(self.storage, self.storage.owned_trial_ids())
                if failing_since is not None:
                    sweep_from = time.monotonic() + self.rel.grace
                if self.engine_kind != "sqlite" and time.monotonic() >= sweep_from \
                        and not self._stop_event.is_set():
                    failed = fail_stale_trials(self.study, self.storage, grace_seconds=self.rel.grace,
                                               max_retry=self.rel.max_retry)
                    if failed:
                        self._stale_failed.append(
                            f"failed {len(failed)} trial(s) of a runner that is gone (no "
                            f"heartbeat for {self.rel.grace} s): {describe_failed(failed)}")
                failing_since = None
            except Exception as exc:  # keep beating; the main loop reports persistent outages
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                if now - last_logged >= 30.0:  # one line, scrubbed; not one per beat
                    log.warning("heartbeat failed for %.0f s (%s: %s); will retry",
                                now - failing_since, type(exc).__name__, first_line(exc, self.url))
                    last_logged = now

    # --- shutdown ------------------------------------------------------------------------

    def _shutdown(self, *, skip_writes: bool = False) -> None:
        """Fail (and re-queue) trials that are mid-training, put never-started ones back in the
        queue, and stop the workers. Nothing stays RUNNING. If the database is gone (the outage
        outlasted ``max_db_outage``, or it goes at the first write here), nothing more is
        written: the trials' heartbeats stop, so any runner (or `tuner doctor --fail-stale`)
        fails and re-queues them later. ``skip_writes`` also when the study was deleted."""
        reason = f"interrupted by {self.signals.received}" if self.signals.received else "runner stopped"
        self._shutting_down = True
        self.resilient.max_outage = min(self.resilient.max_outage, 10.0)
        self._stop_event.set()
        if self.claims is not None:  # let a claim in progress finish, then re-queue it below
            # (one still in progress, hurried or hung, may leave its trial RUNNING: stale-trial
            # recovery fails and re-queues it like the unsaved ones)
            jobs, self._claim_abandoned = self.claims.stop(hurry=lambda: self.signals.hurry)
            self._ready.extend(jobs)
        lost = skip_writes

        def write(what: str, action: Any, job: Job) -> None:
            nonlocal lost
            lost = lost or self.signals.hurry
            if not lost:
                try:
                    action()
                    return
                except StorageError as exc:  # the first definitive failure: stop writing
                    log.error("could not %s trial %d: %s", what, job.number, exc.message)
                    lost = True
            self._unsaved.append(job.number)
            self._unsaved_finished += job.finished

        if self.signals.received is not None:  # exit promptly: the trials are re-queued anyway
            for worker in self.workers:
                # what it already sent first: a finished trial's result (thousands of epochs:
                # more than a pipe holds) would be cut off by the kill, and the trial failed
                worker.deferred += self._receive(worker, seconds=0.5)
                worker.process.kill()
        for worker in self.workers:  # trials that finished must be saved, not failed
            messages, worker.deferred = worker.deferred + self._receive(worker), []
            for message in messages:
                job = worker.current
                finishing = message[0] in ("done", "error") and job is not None \
                    and job.number == message[1]
                lost = lost or self.signals.hurry
                if not lost:
                    try:
                        self._handle(worker, message, defer=False)
                        continue
                    except StorageError as exc:  # the first definitive failure: stop writing
                        log.error("could not save trial %d: %s", message[1], exc.message)
                        lost = True
                if finishing:
                    job.finished = True  # (the job stays current: counted below)
        for job in self._ready:
            write("re-queue", lambda j=job: self._return(j), job)
        self._ready.clear()
        for worker in self.workers:
            for job in worker.jobs():
                if job.started:
                    write("fail", lambda j=job: self._fail_interrupted(j, reason), job)
                else:
                    write("re-queue", lambda j=job: self._return(j), job)
            worker.current = worker.queued = None
            worker.stop()
        self.workers = []
        if self.claims is not None and not (lost or self.signals.hurry or self._claim_abandoned):
            try:
                self.resilient.call("re-queue an interrupted claim", self.claims.put_back_stray_claims)
            except StorageError as exc:  # its heartbeat stops: stale-trial recovery takes it
                log.error("could not re-queue an interrupted claim: %s", exc.message)

    def _study_deleted(self) -> bool:
        """Whether our study is gone from the database (deleted while we ran it)."""
        if self.study is None:
            return False
        studies = models.StudyModel.__table__
        try:
            with self.storage.backend.engine.connect() as conn:
                name = conn.execute(sqlalchemy.select(studies.c.study_name)
                                    .where(studies.c.study_id == self.study_id)).scalar()
        except Exception:  # cannot tell: not deleted as far as we know
            return False
        return name != self.sf.study.name

    def _outage_hint(self) -> str:
        """What a runner that lost its database left behind, for the final error's hint."""
        unsaved = sorted(set(getattr(self, "_unsaved", [])))
        if not unsaved:
            return ("every finished trial was saved and none was left running; rerun the same "
                    "command once the database is back")
        finished = getattr(self, "_unsaved_finished", 0)
        results = f" ({finished} of them had finished training; those results are lost)" \
            if finished else ""
        return (f"{len(unsaved)} trial(s) could not be saved and stay RUNNING in the database"
                f"{results}: {', '.join(f'#{n}' for n in unsaved)}. Once the database is back, "
                f"rerunning the same command (or `tuner doctor {self.sf.study.name} --fail-stale`) "
                "fails them as stale and re-queues their parameters; trials finished earlier are saved")

    def _update_counts(self) -> None:
        counts = self.resilient.call("count trials", state_counts, self.storage, self.study_id)
        s = self.snap
        s.complete, s.pruned = counts[TrialState.COMPLETE], counts[TrialState.PRUNED]
        ours = self.claims.count()
        s.failed, s.waiting = counts[TrialState.FAIL], counts[TrialState.WAITING]
        s.elsewhere = max(0, counts[TrialState.RUNNING] - ours)
        best = self._best()
        if best is not None:
            s.best_value, s.best_number, s.best_params = best.value, best.number, dict(best.params)

    def _best(self) -> FrozenTrial | None:
        try:
            return self.resilient.call("read the best trial", lambda: self.study.best_trial)
        except ValueError:
            return None


def describe_failed(failed: list[Failed]) -> str:
    """``#3, #5 re-queued; #7 not re-queued (retry limit reached: ...)``: exactly what a
    stale-trial sweep did."""
    queued = [f"#{f.number}" for f in failed if f.no_retry is None]
    parts = [f"{', '.join(queued)} re-queued"] if queued else []
    parts += [f"#{f.number} not re-queued ({f.no_retry})" for f in failed if f.no_retry is not None]
    return "; ".join(parts)

