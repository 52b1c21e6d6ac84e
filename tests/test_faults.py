"""Fault injection against real runners, real worker processes and real PostgreSQL servers:
SIGKILL / SIGTERM of runners and workers, dropped connections, a server restart, a killed SQLite
owner, and a soak with random kills. No trial may be lost or left RUNNING, and the study's trial
count must come out exact."""

from __future__ import annotations

import functools
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from conftest import REPO, PrivatePostgres, create_pg_database, drop_pg_database, run_tuner, tuner_env

optuna.logging.set_verbosity(optuna.logging.WARNING)

STUDY = """
[study]
name = "{name}"
n_trials = {n_trials}
seed = {seed}

[study.pruner]
type = "none"

[study.reliability]
heartbeat_interval = 1
grace_period = 3
max_retry = 3
max_db_outage = 60

[data]
dataset = "synthetic"
n = 4000
d = 200
classes = 5
val_size = 0.2
test_size = 0.1

[model]
epochs = {epochs}

[space]
optimizer = ["sgd", "momentum", "adam"]
lr = {{low = 1e-3, high = 0.1, log = true}}
batch_size = 16
decay = ["constant", "cosine"]
"""
# 175 updates per epoch: ~6 ms per epoch here, so epochs=150 is about a second per trial.
EXPLAINED = ("stale heartbeat", "interrupted by", "worker process died", "orphaned", "exception:")


def study_file(tmp_path: Path, *, name: str = "faults", n_trials: int = 8, epochs: int = 150,
               seed: int = 0) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(STUDY.format(name=name, n_trials=n_trials, epochs=epochs, seed=seed))
    return path


def start_runner(path: Path, url: str, log: Path, *args: str, env: dict | None = None,
                 session: bool = False) -> subprocess.Popen:
    """``session``: in a process group of its own (its pid is the group's id), as a service
    manager or `timeout` starts it, so a signal can go to the runner and its workers at once."""
    handle = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "tuner", "run", str(path), "--storage", url,
                             "--quiet", *args], stdout=handle, stderr=subprocess.STDOUT,
                            env=env or tuner_env(), cwd=path.parent, start_new_session=session)


def read_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True)
    try:
        study_id = storage.get_study_id_from_name(name)
        return storage.get_all_trials(study_id, deepcopy=False)
    except KeyError:
        return []
    finally:
        storage.engine.dispose()


def counts(trials: list) -> Counter:
    return Counter(t.state for t in trials)


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def owned_running(url: str, name: str, pid: int) -> list:
    """RUNNING trials claimed by the runner with this pid (and already flushed)."""
    return [t for t in read_trials(url, name) if t.state == TrialState.RUNNING
            and str(t.user_attrs.get("runner", "")).endswith(f":{pid}") and t.params]


def finish(proc: subprocess.Popen, timeout: float, log: Path) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # every thread's stack into the log
        time.sleep(1.0)
        proc.kill()
        tail = log.read_text()[-6000:]
        raise AssertionError(f"runner did not finish within {timeout} s:\n{tail}") from None


def root_of(trial) -> int:
    return trial.system_attrs.get("failed_trial", trial.number)


def assert_retried(trials: list, failed_numbers: list[int]) -> None:
    """Every failed trial has a retry with the same parameters that finished."""
    by_number = {t.number: t for t in trials}
    for number in failed_numbers:
        failed = by_number[number]
        assert failed.state == TrialState.FAIL, f"#{number} is {failed.state.name}"
        retries = [t for t in trials if number in t.system_attrs.get("retry_history", [])]
        assert retries, f"#{number} was not re-queued"
        assert all(r.params == failed.params for r in retries)
        assert any(r.state in (TrialState.COMPLETE, TrialState.PRUNED) for r in retries), \
            f"no retry of #{number} finished: {[(r.number, r.state.name) for r in retries]}"


def unexplained_duplicate_groups(trials: list) -> list[list[int]]:
    """Trials with the same parameters that are not one retry chain (no ``failed_trial`` link).
    Trials without parameters are left out: a runner killed (or cut off) between creating a
    trial and saving its sampled parameters leaves a trial with none, failed later as stale
    with nothing to retry; two of them are not a duplicate configuration. (The one "unexplained
    duplicate" the soak reported on 2026-11-25, #17 and #106, was most likely such a pair: the
    check counted every parameter-less FAIL as the same parameter set ``{}``.)"""
    by_params: dict[str, list] = defaultdict(list)
    for t in trials:
        if t.params:
            by_params[json.dumps(t.params, sort_keys=True)].append(t)
    return [[t.number for t in group] for group in by_params.values()
            if len(group) > 1 and len({root_of(t) for t in group}) > 1]


def terminate_connections(url: str) -> int:
    """``pg_terminate_backend`` every client connection to ``url``'s database; how many."""
    database = sqlalchemy.engine.make_url(url).database
    admin = sqlalchemy.create_engine(
        sqlalchemy.engine.make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            return len(conn.execute(sqlalchemy.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": database}).all())
    finally:
        admin.dispose()


def worker_pids(runner_pid: int) -> list[int]:
    """The runner's worker processes (not multiprocessing's resource tracker)."""
    out = subprocess.run(["pgrep", "-P", str(runner_pid)], capture_output=True, text=True).stdout
    pids = []
    for pid in map(int, out.split()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            pids.append(pid)
    return pids


# Kill tests must tell a worker that is starting (imports, loading the compiled kernels) from one
# that has started training: three start-up deaths in a row stop the runner, by design. A
# worker's start-up CPU time is measured once, here, on this machine and under its current load
# (0.6 s on one machine, 1.1-1.5 s on another): a fixed threshold was wrong on one of them, and
# wall-clock ages were not enough either (on a loaded machine a 2 s old worker could still be
# starting).
WORKER_STARTUP = """
import os, numpy as np
from threadpoolctl import threadpool_limits
threadpool_limits(1)
from tuner import kernels
kernels.set_threads(1)
import tuner.runner.worker
kernels.warm_up(np.dtype("float32"))
t = os.times()
print(t.user + t.system)
"""


@functools.cache
def startup_cpu_s() -> float:
    """CPU seconds of a worker's start-up here (the largest of two runs)."""
    return max(float(subprocess.run([sys.executable, "-c", WORKER_STARTUP], check=True, text=True,
                                    capture_output=True, cwd=REPO).stdout) for _ in range(2))


def started_cpu_s() -> float:
    """Past this much CPU a worker is certainly past start-up: kills at any moment of its
    working life."""
    return 1.5 * startup_cpu_s() + 0.3


def grown_cpu_s() -> float:
    """Past this much CPU a worker has been training for a while."""
    return 2.0 * startup_cpu_s() + 0.5


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_soak_duplicate_check_ignores_trials_killed_before_their_parameters(tmp_path):
    """Two runners killed mid-claim (trial row created, parameters not yet saved) leave two
    parameter-less trials, failed as stale with nothing to retry: not a duplicate (the soak's
    check flagged such pairs). Two trials with the same parameters and no retry link are."""
    from tuner.storage import open_storage
    from tuner.storage.coordination import enqueue_retry, fail_stale_trials

    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    storage = open_storage(url)
    study = optuna.create_study(study_name="s", storage=storage)
    for _ in range(2):  # killed mid-claim
        storage.release(storage.create_new_trial(study._study_id))
    failed = fail_stale_trials(study, storage, grace_seconds=0, max_retry=2, all_running=True)
    assert [f.no_retry for f in failed] == ["no parameters to retry: it failed before its "
                                            "configuration was saved"] * 2
    trials = read_trials(url, "s")
    assert [t.params for t in trials] == [{}, {}] and unexplained_duplicate_groups(trials) == []

    lr = {"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)}
    for state in (TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL):
        study.add_trial(optuna.trial.create_trial(state=state, params={"lr": 0.01}, distributions=lr,
                                                  value=0.5 if state == TrialState.COMPLETE else None,
                                                  user_attrs={"fail_reason": "stale heartbeat: t"}))
    assert unexplained_duplicate_groups(read_trials(url, "s")) == [[2, 3, 4]]
    assert enqueue_retry(study, storage.backend.get_trial(study.trials[4]._trial_id), 2)
    linked = [t for t in read_trials(url, "s") if t.number != 3]  # #2 apart, #4 and its retry
    assert unexplained_duplicate_groups(linked) == [[2, 4, 5]]
    assert unexplained_duplicate_groups([t for t in linked if t.number != 2]) == []


def claimer(tmp_path: Path, url: str):
    """The claimer of a one-trial study, to call ``_claim_once`` on directly (no thread, no
    workers needed)."""
    from tuner.config import load_study_file
    from tuner.runner.claims import Claimer
    from tuner.storage import open_storage
    from tuner.storage.resilience import Resilient
    from tuner.study import open_study

    sf = load_study_file(study_file(tmp_path, n_trials=1))
    storage = open_storage(url)

    def bad_config(trial_id: int, number: int, exc: Exception) -> None:
        raise AssertionError(f"trial {number}: {exc}")

    c = Claimer(sf, storage, open_study(sf, storage), Resilient(url), on_bad_config=bad_config)
    c._n_train = 3000
    return c


@pytest.mark.postgres
def test_a_claim_whose_budget_lock_connection_drops_is_given_back(tmp_path, pg_url):
    """The budget lock is an advisory lock on one connection: when that connection is cut in
    the middle of a claim, the server releases the lock and another runner can count the
    study's trials before the claim's trial exists: both claimed the last slot (a soak ended
    with 241 of 240 trials). Deterministic form: runner A's lock connection is terminated just
    as A starts creating its trial, and runner B claims meanwhile; A must give its trial back."""
    from tuner.errors import StorageError

    a, b = claimer(tmp_path, pg_url), claimer(tmp_path, pg_url)
    claimed_by_b = []

    def during_as_claim(conn, cursor, statement, parameters, context, executemany) -> None:
        # the moment A's ask() starts creating its trial (it locks the study row first)
        text = " ".join(statement.split()).upper()
        if text.startswith("SELECT STUDIES.") and text.endswith("FOR UPDATE") and not claimed_by_b:
            admin = sqlalchemy.create_engine(pg_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:  # cut the connection holding A's budget lock (in this database)
                assert c.execute(sqlalchemy.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())")).scalar() == 1
            admin.dispose()
            claimed_by_b.append(b._claim_once())

    sqlalchemy.event.listen(a.storage.backend.engine, "before_cursor_execute", during_as_claim)
    with pytest.raises(StorageError, match="budget lock") as raised:
        a._claim_once()
    assert raised.value.transient  # the runner claims again
    assert claimed_by_b and claimed_by_b[0] is not None
    c = counts(read_trials(pg_url, "faults"))
    assert c[TrialState.RUNNING] == 1 and c[TrialState.WAITING] == 1  # B's, and A's given back
    sqlalchemy.event.remove(a.storage.backend.engine, "before_cursor_execute", during_as_claim)
    assert a._claim_once() is None  # claiming again: the one slot is B's


@pytest.mark.postgres
def test_a_failed_trial_keeps_its_budget_slot_until_its_retry_is_queued(tmp_path, pg_url):
    """Failing a trial and queuing its retry are two transactions. A claim in between used to
    see a free slot and start a new configuration; the retry, queued next, then stayed WAITING
    once the budget was full (a CI run: 8 trials finished, the killed trial's retry never ran).
    Deterministic form: runner A holds the study's only slot; B fails it as stale (with a retry
    wanted) but has not queued the retry yet; a claim now gets nothing; once the retry is
    queued, the claim gets the retry."""
    from tuner.storage.coordination import enqueue_retry, fail_trial

    a, b = claimer(tmp_path, pg_url), claimer(tmp_path, pg_url)
    sf = a.sf
    job = a._claim_once()
    assert job is not None and b._claim_once() is None  # the budget is one trial
    assert fail_trial(b.storage, job.trial_id, "stale heartbeat: its runner stopped responding",
                      retry=True, max_retry=sf.study.reliability.max_retry)
    assert b._claim_once() is None  # the slot is the retry's, not a new configuration's
    assert enqueue_retry(b.study, b.storage.backend.get_trial(job.trial_id),
                         sf.study.reliability.max_retry)
    retry = b._claim_once()
    assert retry is not None and retry.params == job.params
    trials = read_trials(pg_url, "faults")
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.FAIL), (1, TrialState.RUNNING)]
    assert trials[1].user_attrs["retry_of"] == 0


# --- 1. SIGKILL a runner mid-trial -------------------------------------------------------

@pytest.mark.postgres
def test_sigkill_runner_mid_trial_is_detected_failed_and_retried(tmp_path, pg_url):
    path = study_file(tmp_path, n_trials=8)
    a = start_runner(path, pg_url, tmp_path / "a.log")
    b = start_runner(path, pg_url, tmp_path / "b.log")
    victims = wait_for(lambda: owned_running(pg_url, "faults", a.pid), 60, what="runner A's trial")
    time.sleep(0.3)  # into the middle of training
    victims = owned_running(pg_url, "faults", a.pid)
    os.kill(a.pid, signal.SIGKILL)
    a.wait(10)
    killed = [t.number for t in victims]
    assert killed

    assert finish(b, 180, tmp_path / "b.log") == 0
    trials = read_trials(pg_url, "faults")
    c = counts(trials)
    assert c[TrialState.COMPLETE] + c[TrialState.PRUNED] == 8
    assert c[TrialState.RUNNING] == 0
    assert_retried(trials, killed)
    for t in trials:
        if t.number in killed:
            assert "stale heartbeat" in t.user_attrs["fail_reason"]
    # the survivor says what it did (it went quiet, then counted failures it never explained)
    said = " ".join((tmp_path / "b.log").read_text().split())
    # said by each sweep that failed some (a trial claimed just before the kill beat last, so
    # it can go stale one heartbeat later than the others)
    swept = re.findall(r"failed (\d+) trial\(s\) of a runner that is gone \(no heartbeat for", said)
    assert sum(map(int, swept)) == len(killed), said


@pytest.mark.postgres
def test_trials_another_runner_failed_as_stale_are_stopped_and_their_retries_run(tmp_path, pg_url):
    """A runner cut off from the database longer than the grace period finds, once back, that
    another runner failed its trials as stale: it stops training them (with a pruner, a worker
    whose epochs go unacknowledged would wait for ever), discards their results, and finishes
    the budget with their retries, not with new samples (they were queued moments ago, within
    its cache's refresh interval)."""
    from tuner.storage import open_storage
    from tuner.storage.coordination import enqueue_retry, fail_trial

    path = study_file(tmp_path, n_trials=2, epochs=600)
    path.write_text(path.read_text().replace('type = "none"', 'type = "median"'))  # acks on
    log = tmp_path / "a.log"
    runner = start_runner(path, pg_url, log)
    wait_for(lambda: owned_running(pg_url, "faults", runner.pid), 60, what="a claimed trial")
    time.sleep(0.5)  # into its training
    victims = owned_running(pg_url, "faults", runner.pid)  # and the one claimed next, if any
    storage = open_storage(pg_url)
    try:
        study = optuna.load_study(study_name="faults", storage=storage)
        failed = []
        for victim in victims:  # what another runner's stale-trial sweep does
            if fail_trial(storage, victim._trial_id, "stale heartbeat (test)", retry=True,
                          max_retry=3):  # (False: it finished in the meantime)
                enqueue_retry(study, storage.backend.get_trial(victim._trial_id), 3)
                failed.append(victim.number)
    finally:
        storage.backend.engine.dispose()
    assert failed

    assert finish(runner, 120, log) == 0
    trials = read_trials(pg_url, "faults")
    c = counts(trials)
    assert c[TrialState.COMPLETE] + c[TrialState.PRUNED] == 2 and c[TrialState.RUNNING] == 0, \
        [(t.number, t.state.name, t.system_attrs.get("retry_history")) for t in trials]
    assert_retried(trials, failed)
    said = " ".join(log.read_text().split())
    # (stopped mid-training if the runner's next flush found it failed; discarded at its end
    # if it finished first)
    assert ("was failed by another runner (stale heartbeat); its retry will run it" in said
            or "was finished as FAIL by another process; its result is discarded" in said), said


# --- 2. SIGTERM a runner ---------------------------------------------------------------

@pytest.mark.postgres
def test_sigterm_fails_the_running_trial_at_once_and_its_retry_completes(tmp_path, pg_url):
    path = study_file(tmp_path, n_trials=4)
    runner = start_runner(path, pg_url, tmp_path / "a.log")
    victims = wait_for(lambda: owned_running(pg_url, "faults", runner.pid), 60, what="a running trial")
    time.sleep(0.3)
    started = time.monotonic()
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(15) == 143
    exited_after = time.monotonic() - started
    trials = read_trials(pg_url, "faults")
    assert counts(trials)[TrialState.RUNNING] == 0, "a trial stayed RUNNING after SIGTERM"
    by_number = {t.number: t for t in trials}
    # The trial in training is failed and re-queued; the one claimed next (never started) goes
    # back to the queue as it was.
    # (a trial seen RUNNING may have finished normally in the moment before the signal)
    victims = [v for v in victims if not by_number[v.number].state.is_finished()
               or by_number[v.number].state == TrialState.FAIL]
    interrupted = [v.number for v in victims if by_number[v.number].state == TrialState.FAIL]
    put_back = [v.number for v in victims if by_number[v.number].state == TrialState.WAITING]
    assert len(interrupted) == 1 and len(interrupted) + len(put_back) == len(victims)
    assert by_number[interrupted[0]].user_attrs["fail_reason"] == "interrupted by SIGTERM"
    assert exited_after < 10

    again = run_tuner("run", path, "--storage", pg_url, "--quiet", cwd=tmp_path, check=True)
    assert again.returncode == 0
    trials = read_trials(pg_url, "faults")
    c = counts(trials)
    assert c[TrialState.COMPLETE] + c[TrialState.PRUNED] == 4 and c[TrialState.RUNNING] == 0
    assert_retried(trials, interrupted)
    assert all(t.state == TrialState.COMPLETE for t in trials if t.number in put_back)


# --- 3. connections dropped server-side ------------------------------------------------

@pytest.mark.postgres
def test_terminated_connections_fail_no_trial(tmp_path, pg_url):
    path = study_file(tmp_path, n_trials=16, epochs=40)
    runner = start_runner(path, pg_url, tmp_path / "a.log", "--workers", "2")
    wait_for(lambda: counts(read_trials(pg_url, "faults"))[TrialState.COMPLETE] >= 1, 60,
             what="a first trial")
    dropped = 0
    for _ in range(6):
        dropped += terminate_connections(pg_url)
        time.sleep(0.6)
    assert finish(runner, 180, tmp_path / "a.log") == 0
    trials = read_trials(pg_url, "faults")
    c = counts(trials)
    assert dropped >= 6
    assert c[TrialState.FAIL] == 0, [t.user_attrs for t in trials if t.state == TrialState.FAIL]
    assert c[TrialState.COMPLETE] == 16 and c[TrialState.RUNNING] == 0


# --- 4. the PostgreSQL server restarts -------------------------------------------------

@pytest.fixture
def throwaway_pg():
    """A PostgreSQL server this test owns, to stop and restart: (URL of its database, pg_ctl)."""
    server = PrivatePostgres()
    try:
        server.pg_ctl("start")
        admin = sqlalchemy.create_engine(
            f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/postgres",
            isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text("CREATE DATABASE tuner"))
        admin.dispose()
        yield f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/tuner", server.pg_ctl
    finally:
        server.close()


@pytest.mark.postgres
def test_workers_wait_through_a_server_restart_and_finish(tmp_path, throwaway_pg):
    url, pg_ctl = throwaway_pg
    path = study_file(tmp_path, n_trials=14, epochs=60)
    runner = start_runner(path, url, tmp_path / "a.log")
    wait_for(lambda: counts(read_trials(url, "faults"))[TrialState.COMPLETE] >= 2, 60,
             what="two finished trials")
    pg_ctl("stop", "-m", "fast")
    time.sleep(3)  # the runner keeps training and retries its database calls
    pg_ctl("start")
    assert finish(runner, 180, tmp_path / "a.log") == 0
    trials = read_trials(url, "faults")
    c = counts(trials)
    assert c[TrialState.COMPLETE] == 14 and c[TrialState.RUNNING] == 0
    assert c[TrialState.FAIL] == 0, [t.user_attrs for t in trials if t.state == TrialState.FAIL]
    assert "database unavailable" in (tmp_path / "a.log").read_text()


@pytest.mark.postgres
def test_an_outage_longer_than_the_grace_period_fails_no_live_trial(tmp_path, throwaway_pg):
    """Two runners lose the server for more than twice the grace period (3 s). When it is back,
    the other runner's heartbeats are as old as one's own were: neither may take the other's
    trials, finished ones waiting to be saved among them, for a dead runner's."""
    url, pg_ctl = throwaway_pg
    path = study_file(tmp_path, n_trials=16, epochs=150)
    runners = [start_runner(path, url, tmp_path / f"{i}.log") for i in range(2)]
    wait_for(lambda: all(owned_running(url, "faults", r.pid) for r in runners), 60,
             what="a trial running in each runner")
    pg_ctl("stop", "-m", "fast")
    time.sleep(7)
    pg_ctl("start")
    for i, runner in enumerate(runners):
        assert finish(runner, 180, tmp_path / f"{i}.log") == 0
    trials = read_trials(url, "faults")
    c = counts(trials)
    assert c[TrialState.COMPLETE] == 16 and c[TrialState.RUNNING] == 0
    assert c[TrialState.FAIL] == 0, [t.user_attrs.get("fail_reason") for t in trials
                                     if t.state == TrialState.FAIL]


@pytest.mark.postgres
def test_a_persistent_outage_ends_the_runner_after_max_db_outage(tmp_path, throwaway_pg):
    """One outage clock for every database operation of a runner: with max_db_outage = 4 and
    the server gone for good, the runner gives up about 4 s after the outage began (each
    operation used to start its own window: 8 s allowed, 42 s taken), skips the writes it can
    no longer make at shutdown, and its message says what was left unsaved (it used to log
    "could not save finished trials" and then hint "finished trials are saved")."""
    url, pg_ctl = throwaway_pg
    path = study_file(tmp_path, n_trials=40, epochs=150)
    text = path.read_text().replace("max_db_outage = 60", "max_db_outage = 4")
    path.write_text(text)
    log = tmp_path / "a.log"
    runner = start_runner(path, url, log, "--workers", "2")
    wait_for(lambda: len(owned_running(url, "faults", runner.pid)) >= 2, 60, what="two trials")
    pg_ctl("stop", "-m", "fast")
    stopped = time.monotonic()
    code = finish(runner, 120, log)
    took = time.monotonic() - stopped
    output = log.read_text()
    assert code == 3, output[-3000:]
    assert "did not come back within 4 s" in output, output[-3000:]
    assert took < 4 + 8, f"the runner took {took:.1f} s to give up:\n{output[-3000:]}"
    assert "could not save finished trials" not in output and "finished trials are saved" not in output
    assert "stay RUNNING in the database" in output and "--fail-stale" in output
    assert "Traceback" not in output
    lines = output.splitlines()
    beats = [i for i, line in enumerate(lines) if "heartbeat failed" in line]
    assert beats, output[-3000:]  # one line each, scrubbed, no SQLAlchemy background link
    assert all("sqlalche.me" not in lines[i] and not lines[i + 1][:1].isspace()
               and not lines[i + 1].startswith("(Background") for i in beats), output[-3000:]


# --- 5. SQLite: the owning process is killed, the command is rerun --------------------------

def test_sqlite_owner_killed_then_rerun_fails_and_retries_the_orphan(tmp_path):
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    path = study_file(tmp_path, n_trials=5)
    runner = start_runner(path, url, tmp_path / "a.log")
    wait_for(lambda: owned_running(url, "faults", runner.pid), 60, what="a running trial")
    time.sleep(0.3)
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait(10)
    # what it was training when it died (read after the kill: trials are short, one read
    # before it could name a trial that finished in between)
    victims = owned_running(url, "faults", runner.pid)
    assert victims, "the crash should leave its trials RUNNING until recovery"

    again = run_tuner("run", path, "--storage", url, cwd=tmp_path, check=True)
    assert "recovered" in again.stderr
    trials = read_trials(url, "faults")
    c = counts(trials)
    assert c[TrialState.COMPLETE] + c[TrialState.PRUNED] == 5 and c[TrialState.RUNNING] == 0
    assert_retried(trials, [v.number for v in victims])
    for t in trials:
        if t.number in {v.number for v in victims}:
            assert t.user_attrs["fail_reason"].startswith("orphaned")


def _long_trials(tmp_path: Path, max_retry: int) -> Path:
    path = study_file(tmp_path, n_trials=2, epochs=3000)  # trials of many seconds
    path.write_text(path.read_text().replace("max_retry = 3", f"max_retry = {max_retry}"))
    return path


def _kill_once_running(path: Path, url: str, log: Path, sig: int, *, group: bool = False) -> list:
    """Start a runner, wait until it trains a trial, send ``sig`` (``group``: to its process
    group, workers included, as `kill -TERM -PGID` or `timeout` does); its trials with params."""
    runner = start_runner(path, url, log, session=group)
    wait_for(lambda: owned_running(url, "faults", runner.pid), 60, what="a running trial")
    victims = owned_running(url, "faults", runner.pid)
    if group:
        os.killpg(runner.pid, sig)
    else:
        runner.send_signal(sig)
    runner.wait(30)
    return victims


def test_a_configuration_is_retried_at_most_max_retry_times_and_doctor_says_why(tmp_path):
    """max_retry = 1: the trials of a SIGKILLed runner are retried once; killed again, they
    are failed without a retry, and the FAIL and `tuner doctor` say why."""
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    path = _long_trials(tmp_path, max_retry=1)
    first = _kill_once_running(path, url, tmp_path / "a.log", signal.SIGKILL)
    second = _kill_once_running(path, url, tmp_path / "b.log", signal.SIGKILL)  # recovers first
    roots = {root_of(t) for t in second}
    assert roots <= {t.number for t in first}, "the second runner ran the retries first"
    fixed = run_tuner("doctor", "faults", "--storage", url, "--fail-stale")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    text = " ".join(fixed.stdout.split())
    for t in second:
        assert f"#{t.number} not re-queued (retry limit reached: its configuration failed 2 times " \
               "(max_retry = 1, interruptions not counted))" in text, text
    assert "failed trials that were not re-queued" in text
    trials = read_trials(url, "faults")
    by_number = {t.number: t for t in trials}
    for t in second:
        assert by_number[t.number].user_attrs["no_retry"].startswith("retry limit reached")
        assert not [r for r in trials if r.user_attrs.get("retry_of") == t.number]
    assert counts(trials)[TrialState.RUNNING] == 0


def test_interruptions_do_not_use_the_retry_budget(tmp_path):
    """max_retry = 0, and a trial interrupted twice by SIGTERM is still re-queued each time
    (Ctrl-C / SIGTERM used to count, so a configuration interrupted three times was dropped).
    The last SIGTERM goes to the whole process group: the workers get it too, and their trial is
    still an interruption, not a dead worker (which would use a retry)."""
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    path = _long_trials(tmp_path, max_retry=0)
    # run 1 trains #0 (next: #1); run 2 trains #1, put back; run 3 trains #0's retry
    for i in range(3):
        _kill_once_running(path, url, tmp_path / f"{i}.log", signal.SIGTERM, group=i == 2)
    trials = read_trials(url, "faults")
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert len(interrupted) == 3
    assert all(t.user_attrs["fail_reason"] == "interrupted by SIGTERM" for t in interrupted)
    assert all("no_retry" not in t.user_attrs for t in interrupted)
    for t in interrupted:  # every one re-queued, the retry of a retry too
        assert [r for r in trials if r.user_attrs.get("retry_of") == t.number]
    assert any(t.system_attrs.get("retry_history") for t in interrupted)


# --- exceptions inside trials ------------------------------------------------------------

def test_trial_exceptions_fail_only_that_trial_and_the_study_goes_on(tmp_path):
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    path = study_file(tmp_path, n_trials=10, epochs=5)
    proc = run_tuner("run", path, "--storage", url, "--quiet", cwd=tmp_path,
                     env=tuner_env(TUNER_INJECT_FAULT="exception:0.3"))
    assert proc.returncode == 0, proc.stderr
    trials = read_trials(url, "faults")
    c = counts(trials)
    assert c[TrialState.COMPLETE] == 10
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed, "with p=0.3 some trials should have failed"
    for t in failed:
        assert t.user_attrs["error_type"] == "RuntimeError"
        assert "injected fault" in t.user_attrs["error"]
        assert t.user_attrs["fail_reason"].startswith("exception:")


def test_a_study_whose_trials_all_fail_stops_early_with_the_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    path = study_file(tmp_path, n_trials=50, epochs=5)
    proc = run_tuner("run", path, "--storage", url, cwd=tmp_path,
                     env=tuner_env(TUNER_INJECT_FAULT="exception:1.0"))
    assert proc.returncode == 1
    assert "every trial failed" in proc.stderr and "injected fault" in proc.stderr
    assert "Traceback" not in proc.stderr
    c = counts(read_trials(url, "faults"))
    assert c[TrialState.FAIL] < 10 and c[TrialState.RUNNING] == 0


# --- worker processes killed under a live runner --------------------------------------------

def test_killed_worker_process_fails_and_requeues_its_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    path = study_file(tmp_path, n_trials=6)
    runner = start_runner(path, url, tmp_path / "a.log", "--workers", "2")
    victims = wait_for(lambda: owned_running(url, "faults", runner.pid), 60, what="a running trial")
    worker = wait_for(lambda: worker_pids(runner.pid), 30, what="worker processes")[0]
    time.sleep(0.3)
    os.kill(worker, signal.SIGKILL)
    assert finish(runner, 180, tmp_path / "a.log") == 0
    trials = read_trials(url, "faults")
    c = counts(trials)
    assert c[TrialState.COMPLETE] + c[TrialState.PRUNED] == 6 and c[TrialState.RUNNING] == 0
    died = [t for t in trials if t.state == TrialState.FAIL]
    assert died and all("worker process died (signal SIGKILL)" == t.user_attrs["fail_reason"]
                        for t in died)
    assert_retried(trials, [t.number for t in died])
    assert victims


def _kill_workers(runner: subprocess.Popen, *, grown: bool, timeout: float) -> int:
    """SIGKILL each of the runner's worker processes (as the OOM killer would), at once or once
    it has started training (``grown``), until the runner exits; how many were killed."""
    kills = 0
    deadline = time.monotonic() + timeout
    while runner.poll() is None and time.monotonic() < deadline:
        for pid in worker_pids(runner.pid):
            if not grown or cpu_seconds(pid) >= grown_cpu_s():
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
        time.sleep(0.02)
    return kills


def test_trials_that_kill_their_worker_stop_the_run_by_fail_fast(tmp_path):
    """Every trial kills its worker (OOM): worker deaths with no success count toward fail_fast
    (they were not counted, and the run re-queued and re-ran them forever)."""
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    path = study_file(tmp_path, n_trials=20, epochs=3000)  # trials of many seconds
    path.write_text(path.read_text().replace("max_retry = 3", "max_retry = 3\nfail_fast = 3"))
    runner = start_runner(path, url, tmp_path / "a.log")
    # past a worker's start-up, or its death counts as a start-up failure instead (the run's
    # other stop, tested below)
    kills = _kill_workers(runner, grown=True, timeout=90)
    code = finish(runner, 30, tmp_path / "a.log")
    output = (tmp_path / "a.log").read_text()
    assert code == 1, output[-3000:]
    assert "stopped early: every trial killed its worker process (worker process died (signal " \
           "SIGKILL)" in " ".join(output.split())
    assert "Traceback" not in output
    assert 3 <= kills <= 5
    c = counts(read_trials(url, "faults"))
    assert c[TrialState.RUNNING] == 0 and c[TrialState.FAIL] >= 3


def test_workers_that_die_at_start_up_end_the_run_with_a_clear_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    path = study_file(tmp_path, n_trials=4)
    runner = start_runner(path, url, tmp_path / "a.log")
    _kill_workers(runner, grown=False, timeout=90)
    code = finish(runner, 30, tmp_path / "a.log")
    output = (tmp_path / "a.log").read_text()
    assert code == 1, output[-3000:]
    assert "error: worker processes keep dying at start-up (3 in a row, the last by signal SIGKILL)" \
        in " ".join(output.split()), output[-3000:]
    assert "Traceback" not in output
    assert counts(read_trials(url, "faults"))[TrialState.RUNNING] == 0


@pytest.mark.postgres
def test_workers_killed_at_any_moment_never_end_the_runner(tmp_path, pg_url):
    """Kills land between a worker's message and the runner's reply, mid-claim and mid-send:
    the runner replaces the worker, re-queues its trial and goes on (it never exits). Before
    this was fixed, a reply to a dead worker ended the runner with exit code 1 and no message
    (typer exits silently on EPIPE) in most runs of this test on PostgreSQL, whose slower claims
    leave replies deferred longer."""
    url = pg_url
    # long enough for 8+ kills: a worker is only killed once it is training (400 trials: 7 in
    # a CI run)
    path = study_file(tmp_path, n_trials=600, epochs=8)
    log = tmp_path / "a.log"
    runner = start_runner(path, url, log, "--workers", "2")
    rng = random.Random(3)
    kills = 0
    deadline = time.monotonic() + 120
    while kills < 40 and runner.poll() is None and time.monotonic() < deadline:
        # workers past start-up only: three deaths in a row at start-up stop the runner, by design
        grown = [pid for pid in worker_pids(runner.pid) if cpu_seconds(pid) >= started_cpu_s()]
        if grown:
            victim = rng.choice(grown)
            try:
                os.kill(victim, signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
        time.sleep(rng.uniform(0.0, 0.1))
    assert finish(runner, 180, log) == 0, log.read_text()[-3000:]
    assert kills >= 8, f"the study ended after {kills} kills"
    trials = read_trials(url, "faults")
    c = counts(trials)
    assert c[TrialState.COMPLETE] + c[TrialState.PRUNED] == 600 and c[TrialState.RUNNING] == 0
    died = [t for t in trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs["fail_reason"].startswith("worker process died") for t in died)
    assert_retried(trials, [t.number for t in died])


# --- doctor ------------------------------------------------------------------------------

def test_doctor_reports_and_fails_stale_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    path = study_file(tmp_path, n_trials=4)
    runner = start_runner(path, url, tmp_path / "a.log")
    wait_for(lambda: owned_running(url, "faults", runner.pid), 60, what="a running trial")
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait(10)
    # Within the grace period, but no runner holds the SQLite study's lock: every RUNNING
    # trial is an orphan (doctor called them "alive" until their heartbeats aged).
    # (a grace of 30 s, not the file's 3: a loaded machine took 3 s to start doctor)
    report = run_tuner("doctor", "faults", "--storage", url, "--json", "--grace", "30")
    copy_of = _copy(url, tmp_path / "copy.db")  # as the runner left it
    assert report.returncode == 1
    data = json.loads(report.stdout)
    assert data["runner_alive"] is False
    assert data["running"] and all(r["stale"] for r in data["running"]), data
    assert min(r["heartbeat_age_s"] for r in data["running"]) < 30  # within --grace
    shown = run_tuner("doctor", "faults", "--storage", url)
    assert "orphaned (no runner)" in shown.stdout and "alive" not in shown.stdout
    # the hint names the study and its storage, ready to paste
    assert f"tuner doctor faults --storage {url} --fail-stale" in " ".join(shown.stderr.split())
    fixed = run_tuner("doctor", "faults", "--storage", url, "--fail-stale")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert f"failed {len(data['running'])} stale trial(s): " in fixed.stdout
    assert " re-queued" in fixed.stdout
    trials = read_trials(url, "faults")
    assert counts(trials)[TrialState.RUNNING] == 0
    assert any(t.state == TrialState.WAITING for t in trials)
    _delete_with_fresh_heartbeats_is_not_refused(tmp_path, copy_of)


def _copy(url: str, copy: Path) -> Path:
    import sqlite3

    with sqlite3.connect(url.removeprefix("sqlite:///")) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    return copy


def _delete_with_fresh_heartbeats_is_not_refused(tmp_path: Path, copy: Path) -> None:
    """`tuner delete` on a copy of the killed runner's SQLite study, its heartbeats made fresh:
    no runner holds the lock, so nothing is running and the delete goes ahead."""
    import sqlalchemy
    from optuna.storages._rdb import models

    engine = sqlalchemy.create_engine(f"sqlite:///{copy}")
    with engine.begin() as conn:
        beat = models.TrialHeartbeatModel
        assert conn.execute(sqlalchemy.update(beat).values(heartbeat=sqlalchemy.func.now())).rowcount
    engine.dispose()
    proc = run_tuner("delete", "faults", "--storage", f"sqlite:///{copy}", "--yes")
    assert proc.returncode == 0 and "deleted study 'faults'" in proc.stderr, proc.stderr


# --- 6. soak ---------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.postgres
def test_soak_random_kills_lose_nothing(tmp_path):
    url = create_pg_database("tuner_soak")
    try:
        _soak(tmp_path, url)
    finally:
        drop_pg_database(url)


def _trial_story(t: optuna.trial.FrozenTrial) -> dict:
    """What a failing soak needs to show about a trial to be diagnosed afterwards."""
    return {"number": t.number, "state": t.state.name, "params": t.params,
            "system_attrs": {k: v for k, v in t.system_attrs.items() if k != "heartbeat"},
            "user_attrs": {k: t.user_attrs.get(k) for k in ("runner", "retry_of", "fail_reason",
                                                            "no_retry", "retry_wanted")},
            "start": str(t.datetime_start), "end": str(t.datetime_complete)}


def _soak(tmp_path: Path, url: str, n_trials: int = 240, max_kills: int = 24,
          deadline_s: float = 420) -> None:
    rng = random.Random(7)
    path = study_file(tmp_path, name="soak", n_trials=n_trials, epochs=12)
    env = tuner_env(TUNER_INJECT_FAULT="exception:0.03")
    incarnation = [0, 0, 0]

    def log(i: int) -> Path:
        return tmp_path / f"runner{i}-{incarnation[i]}.log"

    args = [("--workers", "2"), (), ()]
    runners = [start_runner(path, url, log(i), *args[i], env=env) for i in range(3)]
    events: Counter = Counter()
    started = time.monotonic()
    next_action = started + 2.0
    while time.monotonic() - started < deadline_s:
        if all(p.poll() == 0 for p in runners):
            break
        now = time.monotonic()
        if now >= next_action and sum(v for k, v in events.items() if k.startswith("kill")) < max_kills:
            i = rng.randrange(3)
            proc = runners[i]
            action = rng.choice(["kill runner", "term runner", "kill worker", "drop connections"])
            if action == "drop connections":
                events["connections dropped"] += terminate_connections(url)
                events["drop rounds"] += 1
            elif proc.poll() is None:
                if action == "kill worker":
                    workers = worker_pids(proc.pid)
                    if workers:
                        os.kill(rng.choice(workers), signal.SIGKILL)
                        events["kill worker"] += 1
                else:
                    proc.send_signal(signal.SIGKILL if action == "kill runner" else signal.SIGTERM)
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.send_signal(signal.SIGUSR1)  # stacks into the log, then fail
                        time.sleep(1)
                        proc.kill()
                        raise AssertionError(f"runner ignored {action}:\n"
                                             f"{log(i).read_text()[-6000:]}") from None
                    events["kill runner (SIGKILL)" if action == "kill runner" else
                           "kill runner (SIGTERM)"] += 1
            next_action = now + rng.uniform(1.0, 3.0)
        for i, proc in enumerate(runners):  # a supervisor restarts what died
            if proc.poll() not in (None, 0):
                events[f"runner exit {proc.returncode}"] += 1
                if proc.returncode not in (-9, -15, 143):
                    print(f"runner {i} exited {proc.returncode}:\n{log(i).read_text()[-3000:]}")
                incarnation[i] += 1
                runners[i] = start_runner(path, url, log(i), *args[i], env=env)
        time.sleep(0.2)
    for i, proc in enumerate(runners):
        finish(proc, 180, log(i))
    trials = read_trials(url, "soak")
    c = counts(trials)
    finished = c[TrialState.COMPLETE] + c[TrialState.PRUNED]

    unexplained = [t.number for t in trials if t.state == TrialState.FAIL
                   and not str(t.user_attrs.get("fail_reason", "")).startswith(EXPLAINED)]
    unexplained_duplicates = unexplained_duplicate_groups(trials)
    chains: dict[int, list] = defaultdict(list)
    for t in trials:
        chains[root_of(t)].append(t)
    lost = []
    for chain in chains.values():
        states = {t.state for t in chain}
        if states & {TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING}:
            continue
        last = max(chain, key=lambda t: t.number)
        if str(last.user_attrs.get("fail_reason", "")).startswith("exception"):
            continue  # the attempt that ran raised: exceptions are not retried, by design
        # a trial that failed before its parameters were sampled has nothing to retry (the
        # budget simply claims a new trial in its place), and a configuration that used up
        # max_retry is dropped: both are recorded on the FAIL (no_retry)
        if any(t.params for t in chain) and not last.user_attrs.get("no_retry"):
            lost.append([(t.number, t.state.name, t.user_attrs.get("fail_reason"), bool(t.params),
                          t.system_attrs.get("retry_history")) for t in chain])
    figures = {
        "trials_target": n_trials, "finished": finished, "trials_total": len(trials),
        "states": {s.name: n for s, n in c.items()}, "events": dict(events),
        "fail_reasons": dict(Counter(str(t.user_attrs.get("fail_reason", "")).split(":")[0]
                                     for t in trials if t.state == TrialState.FAIL)),
        "retried_trials": sum(1 for t in trials if t.system_attrs.get("retry_history")),
        "failed_without_parameters": sum(1 for t in trials
                                         if t.state == TrialState.FAIL and not t.params),
        "not_retried": dict(Counter(str(t.user_attrs["no_retry"]).split(":")[0]
                                    for t in trials if t.user_attrs.get("no_retry"))),
        "trials_lost": len(lost), "lost": lost, "unexplained_failures": len(unexplained),
        "unexplained_duplicates": len(unexplained_duplicates),
        # a configuration finishes once: two finished trials in one retry chain are a trial
        # that was run again although it had finished (and the budget overshoots)
        "finished_twice": [[_trial_story(t) for t in chain] for chain in chains.values()
                           if sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                                  for t in chain) > 1],
        "wall_time_s": round(time.monotonic() - started, 1),
    }
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "reliability-soak.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
    assert not figures["finished_twice"], figures["finished_twice"]
    assert finished == n_trials, figures
    assert c[TrialState.RUNNING] == 0, figures
    assert not unexplained, unexplained
    by_number = {t.number: t for t in trials}
    assert not unexplained_duplicates, [[_trial_story(by_number[n]) for n in group]
                                        for group in unexplained_duplicates]
    assert not lost, lost
    assert sum(v for k, v in events.items() if k.startswith("kill")) >= 5, figures
    # nothing but our own kills ended a runner (a dropped connection must not); -15 is a
    # SIGTERM that arrived while Python was still importing, before tuner handles signals
    assert set(k for k in events if k.startswith("runner exit")) <= {
        "runner exit -9", "runner exit -15", "runner exit 143"}, figures
