"""Claiming trials: under the study's budget lock, on a background thread.

A claim counts the study's trials by state under :class:`~tuner.storage.coordination.BudgetLock`,
asks Optuna for a trial (a queued retry first), suggests its configuration (define-by-run,
:mod:`tuner.space`), and saves its parameters, seed and training plan with a first heartbeat.
That takes 5-50 ms of sampling and writes, so it runs on a thread while the runner's main loop
keeps answering its workers. Only a trial whose claim finished is *claimed*: anything this
process owns but has not claimed (a claim a dropped connection cut short) is put back in the
queue before the next claim.

Timing injection for tests: ``TUNER_INJECT_CLAIM_DELAY=S`` makes every claim take ``S`` seconds
longer (a slow database), to prove sampling does not depend on how fast claims are.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner.config import StudyFile
from tuner.errors import StorageError
from tuner.params import resolve
from tuner.runner.pool import Job
from tuner.storage.coordination import BudgetLock, retries_being_queued, state_counts
from tuner.storage.resilience import Resilient, is_transient
from tuner.study import trial_seed
from tuner.train import make_plan

#: ``on_bad_config(trial_id, number, exc)``: a suggested configuration could not be planned.
BadConfig = Callable[[int, int, Exception], None]


class Claimer:
    """The trials this runner has claimed, and the thread that claims more on request.

    The main loop calls :meth:`request`, waits on :attr:`wake` with its workers' pipes, and
    takes each claim's result from :meth:`results`: a :class:`Job`, or ``None`` when the
    budget has no trial left (or the suggested configuration failed: ``on_bad_config``)."""

    def __init__(self, sf: StudyFile, storage: Any, study: optuna.Study, resilient: Resilient,
                 *, on_bad_config: BadConfig) -> None:
        self.sf = sf
        self.storage = storage
        self.study = study
        self.resilient = resilient
        self.on_bad_config = on_bad_config
        self.pending = False  # a claim was requested and its result not yet taken
        self._claimed: set[int] = set()  # trial ids claimed and not yet finished
        self._lock = threading.Lock()
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._results: queue.Queue[Job | None | BaseException] = queue.Queue()
        self.wake, self._wake_w = mp.Pipe(duplex=False)
        self._thread: threading.Thread | None = None
        self._n_train = 0
        self._attrs: dict[str, Any] = {}

    def start(self, *, n_train: int, attrs: dict[str, Any]) -> None:
        """Start claiming: trials are planned for ``n_train`` training rows and get ``attrs``
        (engine, study-file and data digests) as user attributes besides their own."""
        self._n_train = n_train
        self._attrs = {**attrs, "runner": f"{socket.gethostname()}:{os.getpid()}"}
        self._thread = threading.Thread(target=self._loop, name="tuner-claimer", daemon=True)
        self._thread.start()

    # --- main-loop side ----------------------------------------------------------------

    def request(self) -> None:
        """Ask the thread for one more claim."""
        self.pending = True
        self._wanted.set()

    def results(self) -> Iterator[Job | None]:
        """The claims finished since the last call; a claim's error is raised here."""
        while True:
            try:
                result = self._results.get_nowait()
            except queue.Empty:
                break
            self.pending = False
            if isinstance(result, BaseException):
                raise result
            yield result
        while self.wake.poll():
            self.wake.recv_bytes()

    def count(self) -> int:
        with self._lock:
            return len(self._claimed)

    def release(self, trial_id: int) -> None:
        """The trial is finished (or put back): no longer ours."""
        with self._lock:
            self._claimed.discard(trial_id)

    def unclaim(self, job: Job) -> None:
        """Put a claimed but never started trial back in the queue (WAITING, params kept)."""
        self.resilient.call(f"re-queue trial {job.number}", self._put_back, job.trial_id)
        self.release(job.trial_id)

    def stop(self, *, hurry: Callable[[], bool], wait_s: float = 30.0) -> tuple[list[Job], bool]:
        """Stop the thread, letting a claim in progress finish (up to ``wait_s``, unless
        ``hurry()``). Returns the jobs claimed and not yet taken, and whether a claim was
        abandoned in progress (its trial may stay RUNNING until stale-trial recovery)."""
        self._stopping.set()
        self._wanted.set()
        deadline = time.monotonic() + wait_s
        while self._thread is not None and self._thread.is_alive() and time.monotonic() < deadline \
                and not hurry():
            self._thread.join(0.1)
        jobs = []
        while not self._results.empty():
            result = self._results.get_nowait()
            if isinstance(result, Job):
                jobs.append(result)
            self.pending = False
        abandoned = self.pending and self._thread is not None and self._thread.is_alive()
        self.pending = False
        return jobs, abandoned

    def close(self) -> None:
        self.wake.close()
        self._wake_w.close()

    def put_back_stray_claims(self) -> None:
        """Re-queue trials a claim interrupted by a database error left owned but unclaimed, or
        RUNNING but not known to be ours (the claim's commit or the read after it failed); runs
        on the thread before its next claim, and at shutdown."""
        self.storage.put_back_unsettled_claims()
        with self._lock:
            stray = set(self.storage.owned_trial_ids()) - self._claimed
        for trial_id in stray:
            self._put_back(trial_id)

    # --- the thread ----------------------------------------------------------------------

    def _loop(self) -> None:
        """One claim per request, its result (or error) back to the main loop."""
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stopping.is_set():
                return
            try:
                result: Job | None | BaseException = self.resilient.call("claim a trial", self._claim)
            except BaseException as exc:  # re-raised in the main loop
                result = exc
            self._results.put(result)
            try:
                self._wake_w.send_bytes(b"c")
            except OSError:
                return

    def _claim(self) -> Job | None:
        """Claim the next trial if the study's budget allows one (exact across runners)."""
        for _ in range(5):
            try:
                return self._claim_once()
            except optuna.exceptions.UpdateFinishedTrialError:
                # the trial was failed as stale (we were cut off longer than the grace period)
                # or claimed by another runner before we saved its parameters: not ours any
                # more; claim another one
                self.put_back_stray_claims()
        return None

    def _claim_once(self) -> Job | None:
        delay = float(os.environ.get("TUNER_INJECT_CLAIM_DELAY") or 0.0)
        if delay > 0:
            time.sleep(delay)
        self.put_back_stray_claims()
        n_trials, grace = self.sf.study.n_trials, self.sf.study.reliability.grace
        study_id = self.study._study_id
        with BudgetLock(self.storage, study_id) as lock:
            counts = state_counts(self.storage, study_id)
            taken = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] + counts[TrialState.RUNNING]
            if taken < n_trials and counts[TrialState.FAIL]:
                taken += retries_being_queued(self.storage, study_id, grace)
            if taken >= n_trials:
                return None
            if counts[TrialState.WAITING]:  # a retry another runner queued within the cache's
                self.storage.refresh(study_id)  # refresh interval: run it, not a new sample
            trial = self.study.ask()
            if not lock.still_held():
                # The lock's connection was cut: the server released the lock, and another
                # runner may have counted without our trial (the soak overshot by one). Give
                # the trial back and claim again under a lock that holds.
                self._put_back(trial._trial_id)
                raise StorageError("the budget lock's connection dropped during a claim",
                                   transient=True)
        try:
            params = self.sf.space.suggest(trial)
            plan = make_plan(resolve(params), self._n_train, self.sf.model.epochs)
        except Exception as exc:
            if isinstance(exc, StorageError) or is_transient(exc):
                raise  # the sampler read the database (TPE): a blip, not a bad configuration
            self.on_bad_config(trial._trial_id, trial.number, exc)
            return None
        seed = trial_seed(self.sf.study.seed, self.storage.get_trial(trial._trial_id))
        attrs = {"seed": seed, "config": params, "peak_lr": plan.peak_lr,
                 "total_steps": plan.total_steps, "warmup_steps": plan.warmup_steps,
                 "steps_per_epoch": plan.steps_per_epoch, **self._attrs}
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        self.storage.flush(trial._trial_id)
        # Only now is it claimed: if anything above failed (a dropped connection), the trial is
        # owned but unclaimed, and the next claim puts it back in the queue.
        with self._lock:
            self._claimed.add(trial._trial_id)
        return Job(trial=trial, params=params, seed=seed, plan=plan)

    def _put_back(self, trial_id: int) -> None:
        """Our trial back in the queue (WAITING, params kept), unless another process has
        finished it meanwhile; either way it is no longer ours."""
        try:
            self.storage.set_trial_state_values(trial_id, TrialState.WAITING)
        except optuna.exceptions.UpdateFinishedTrialError:
            self.storage.release(trial_id)

