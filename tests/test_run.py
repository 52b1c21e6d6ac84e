"""`tuner run` end to end, as real subprocesses against real SQLite files and the real
PostgreSQL server: create and resume, the per-study budget across restarts and concurrent
runners, 4 workers on SQLite, the one-runner lock on SQLite, Ctrl-C, pruning (never inside a
trial's warmup), divergence, replay, export, `best --test`, and the shipped study files.

The database is always read back with plain Optuna (not tuner's own storage layer), so the
assertions check what is really stored."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import sqlalchemy
from optuna.trial import TrialState

from tuner.runner.signals import SAME_SIGNAL_S

from conftest import STUDIES, descendants, flat, run_tuner, tuner_env, write_study

optuna.logging.set_verbosity(optuna.logging.WARNING)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


# --- helpers --------------------------------------------------------------------------------


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def states(url: str, name: str) -> Counter:
    return Counter(t.state.name for t in load(url, name).trials)


def finished(url: str, name: str) -> int:
    c = states(url, name)
    return c["COMPLETE"] + c["PRUNED"]


def assert_clean(proc: subprocess.CompletedProcess) -> None:
    """No Python traceback and no SQLite lock error anywhere in the output."""
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text
    assert "database is locked" not in text, text


def tuner(*args: object, **kwargs) -> subprocess.CompletedProcess:
    proc = run_tuner(*args, **kwargs)
    assert_clean(proc)
    return proc


def popen_tuner(*args: object, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tuner", *map(str, args)], cwd=cwd,
                            env=tuner_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_running(url: str, name: str, proc: subprocess.Popen, timeout: float = 120, *,
                     training: bool = False) -> None:
    """Block until the study has a RUNNING trial (read straight from the database); with
    ``training``, one that has reported an epoch (a RUNNING trial may only be claimed: on a
    loaded machine its worker can still be starting)."""
    engine = sqlalchemy.create_engine(url)
    query = sqlalchemy.text(
        "SELECT count(*) FROM trials JOIN studies USING (study_id) "
        + ("JOIN trial_intermediate_values USING (trial_id) " if training else "")
        + "WHERE studies.study_name = :n AND trials.state = 'RUNNING'")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"runner exited early: {proc.communicate()}"
            try:
                with engine.connect() as conn:
                    if conn.execute(query, {"n": name}).scalar():
                        return
            except sqlalchemy.exc.DBAPIError:
                pass  # the runner has not created the tables yet
            time.sleep(0.1)
        raise AssertionError(f"no RUNNING trial in {name!r} after {timeout} s")
    finally:
        engine.dispose()


# A trial that takes a noticeable time (batch size 1 on digits: ~0.03 s per epoch); LONG_EPOCHS
# of it keep a trial in training for many seconds, for tests that act on a running study.
LONG_EPOCHS = 600
TIMED_EPOCHS = 400  # a trial of SLOW_SPACE: 5-10 s
SLOW_SPACE = '''optimizer = ["sgd", "adam"]
lr = {low = 1e-3, high = 1e-2, log = true}
batch_size = 1'''
NO_PRUNER = '[study.pruner]\ntype = "none"'


# --- create, resume and the budget ----------------------------------------------------------


@pytest.mark.slow
def test_create_then_resume_keeps_an_exact_budget(storage_url, tmp_path):
    study = write_study(tmp_path / "s.toml", name="budget", n_trials=5, epochs=3)
    first = tuner("run", study, "--storage", storage_url, "--json", check=True)
    assert json.loads(first.stdout)["stopped"] == "done"
    assert finished(storage_url, "budget") == 5

    tuner("run", study, "--storage", storage_url, "-n", "8", check=True)  # resume: 3 more
    trials = load(storage_url, "budget").trials
    assert [t.number for t in trials] == list(range(8))
    assert all(t.state in FINISHED for t in trials)

    again = tuner("run", study, "--storage", storage_url, "-n", "8", check=True)  # nothing to do
    assert "reached its target of 8 trials" in flat(again.stderr)
    assert len(load(storage_url, "budget").trials) == 8

    attrs = load(storage_url, "budget").user_attrs
    assert {"tuner.config", "tuner.space", "tuner.metric", "tuner.data"} <= set(attrs)
    assert attrs["tuner.metric"] == "val_accuracy"
    assert attrs["tuner.data"]["n_train"] == 1079

    listed = json.loads(tuner("ls", "--storage", storage_url, "--json", check=True).stdout)
    assert [row["name"] for row in listed] == ["budget"]
    assert listed[0]["counts"]["COMPLETE"] + listed[0]["counts"]["PRUNED"] == 8
    best = load(storage_url, "budget").best_trial
    assert (listed[0]["best_trial"], listed[0]["best_value"]) == (best.number, best.value)


def test_study_name_override_and_metric_clash(sqlite_url, tmp_path):
    study = write_study(tmp_path / "s.toml", name="one", n_trials=2, epochs=2)
    tuner("run", study, "--storage", sqlite_url, "--study-name", "two", "-q", check=True)
    names = {s.study_name for s in optuna.get_all_study_summaries(sqlite_url)}
    assert names == {"two"}

    clash = write_study(tmp_path / "c.toml", name="two", n_trials=2, epochs=2,
                        extra_study='metric = "val_loss"')
    proc = tuner("run", clash, "--storage", sqlite_url)
    assert proc.returncode == 2
    assert "already exists with metric 'val_accuracy', not 'val_loss'" in flat(proc.stderr)
    assert "--study-name" in flat(proc.stderr)  # the hint


def _open(study_file: Path, url: str, **overrides) -> optuna.Study:
    """What `tuner run` does first, in this process: open (or refuse) the study."""
    from tuner.config import load_study_file
    from tuner.storage import open_storage
    from tuner.study import open_study

    return open_study(load_study_file(study_file).with_overrides(**overrides), open_storage(url))


def test_an_existing_non_tuner_study_is_never_taken_over(sqlite_url, tmp_path):
    """A plain Optuna study of the same name: with trials, or optimizing the other way, or with
    several objectives, `tuner run` refuses (it used to count the foreign trials in the budget
    and report one as the best); the read-only commands show such studies without a traceback."""
    from tuner.errors import ConfigError

    foreign = optuna.create_study(study_name="digits", storage=sqlite_url, direction="minimize")
    foreign.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    multi = optuna.create_study(study_name="multi", storage=sqlite_url,
                                directions=["minimize", "maximize"])
    multi.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_int("y", 0, 3)), n_trials=3)
    optuna.create_study(study_name="wrongway", storage=sqlite_url, direction="minimize")
    optuna.create_study(study_name="adopted", storage=sqlite_url, direction="maximize")
    study = write_study(tmp_path / "s.toml", name="digits", n_trials=2, epochs=1)
    proc = tuner("run", study, "--storage", sqlite_url, "-n", "12")
    assert proc.returncode == 2, proc.stderr
    assert f"{study}: study.name: a study named 'digits' already exists in SQLite" in flat(proc.stderr)
    assert "was not created by tuner (2 trial(s), minimize)" in flat(proc.stderr)
    assert (f"tuner run {study} --study-name NEW --storage {sqlite_url} (or delete the old study "
            f"first: tuner delete digits --storage {sqlite_url})") in flat(proc.stderr)
    # named on the command line: the error names the option, not the file's key
    proc = tuner("run", study, "--storage", sqlite_url, "--study-name", "wrongway")
    assert proc.returncode == 2 and "--study-name wrongway: a study named 'wrongway' already " \
        "exists" in flat(proc.stderr), proc.stderr
    for name, fragment in (("multi", "with 2 objectives (minimize, maximize)"),
                           ("wrongway", "is set to minimize, but study.metric = 'val_accuracy' "
                                        "is to maximize")):
        with pytest.raises(ConfigError, match="--study-name NEW") as refused:
            _open(study, sqlite_url, name=name)
        assert fragment in refused.value.message
    assert states(sqlite_url, "digits") == {"COMPLETE": 2}  # nothing added
    assert states(sqlite_url, "multi") == {"COMPLETE": 3}
    # an empty study with the right direction is simply adopted
    _open(study, sqlite_url, name="adopted")
    assert load(sqlite_url, "adopted").user_attrs["tuner.metric"] == "val_accuracy"

    listed = {r["name"]: r for r in json.loads(tuner("ls", "--storage", sqlite_url, "--json",
                                                     check=True).stdout)}
    assert listed["multi"]["metric"] == "2 objectives" and listed["multi"]["best_value"] is None
    assert listed["digits"]["best_value"] == pytest.approx(foreign.best_value)
    shown = tuner("show", "multi", "--storage", sqlite_url, check=True)
    assert "multi-objective study (2 objectives: minimize, maximize)" in flat(shown.stdout)
    assert "Pareto-optimal trials" in shown.stdout
    front = json.loads(tuner("show", "multi", "--storage", sqlite_url, "--json", check=True).stdout)
    assert front["best"] is None and front["pareto_front"]
    shown = tuner("show", "digits", "--storage", sqlite_url, check=True)
    assert f"best trial #{foreign.best_trial.number}" in shown.stdout
    assert "not created by tuner" in shown.stdout
    best = tuner("best", "multi", "--storage", sqlite_url)
    assert best.returncode == 2 and "no single best trial" in flat(best.stderr)
    tuner("export", "multi", "--storage", sqlite_url, "-o", tmp_path / "m.csv", check=True)
    frame = pd.read_csv(tmp_path / "m.csv")
    assert list(frame["value.1"]) == [t.values[1] for t in multi.trials]


def test_an_edited_choice_list_is_refused_before_any_trial_runs(sqlite_url, tmp_path):
    """Optuna cannot change a categorical parameter's choices within a study: every trial of
    the rerun failed. The rerun is refused up front, naming the file and the key; a range whose
    bounds change is fine (Optuna allows it), a range that changes its log scale is not."""
    from tuner.errors import ConfigError

    space = '''optimizer = ["sgd", "momentum", "adam"]
lr = {low = 1e-3, high = 0.5, log = true}
batch_size = [64, 128]

[space.optimizers.adam]
beta1 = [0.8, 0.9]'''
    first = write_study(tmp_path / "s.toml", name="edit", n_trials=2, epochs=1, space=space)
    tuner("run", first, "--storage", sqlite_url, "-q", check=True)
    cut = write_study(tmp_path / "cut.toml", name="edit", n_trials=4, epochs=1,
                      space=space.replace('["sgd", "momentum", "adam"]', '["sgd", "adam"]'))
    proc = tuner("run", cut, "--storage", sqlite_url)
    assert proc.returncode == 2, proc.stderr
    assert f"{cut}: space.optimizer: choices ['sgd', 'adam'] differ from the ['sgd', 'momentum', " \
           "'adam'] the study's trials used" in flat(proc.stderr)
    assert f"tuner run {cut} --study-name NEW --storage {sqlite_url}" in flat(proc.stderr)
    # a study that has spent its budget samples nothing from the edited space: no refusal
    spent = write_study(tmp_path / "cut.toml", name="edit", n_trials=2, epochs=1,
                        space=space.replace('["sgd", "momentum", "adam"]', '["sgd", "adam"]'))
    proc = tuner("run", spent, "--storage", sqlite_url, check=True)
    assert "reached its target of 2 trials" in flat(proc.stdout + proc.stderr)
    for old, new, key in (('["sgd", "momentum", "adam"]', '["adam", "momentum", "sgd"]',
                           "space.optimizer"),
                          ("[64, 128]", "[64, 128, 256]", "space.batch_size"),
                          ("beta1 = [0.8, 0.9]", "beta1 = [0.8, 0.95]", "space.optimizers.adam.beta1"),
                          ("beta1 = [0.8, 0.9]", "beta1 = {low = 0.8, high = 0.9}",
                           "space.optimizers.adam.beta1"),
                          ("log = true", "log = false", "space.lr")):
        edited = write_study(tmp_path / "e.toml", name="edit", n_trials=4, epochs=1,
                             space=space.replace(old, new))
        with pytest.raises(ConfigError, match="cannot take this search space") as refused:
            _open(edited, sqlite_url)
        assert refused.value.message.startswith(f"{edited}: {key}:"), refused.value.message
    assert states(sqlite_url, "edit") == {"COMPLETE": 2}  # no trial ran, none failed
    widened = write_study(tmp_path / "w.toml", name="edit", n_trials=3, epochs=1,
                          space=space.replace("low = 1e-3, high = 0.5", "low = 1e-4, high = 0.9"))
    from tuner.config import load_study_file

    study = _open(widened, sqlite_url)  # accepted, and Optuna takes its trials' parameters
    for _ in range(3):
        trial = study.ask()
        load_study_file(widened).space.suggest(trial)
        study.tell(trial, 0.5)
    assert states(sqlite_url, "edit") == {"COMPLETE": 5}


def test_delete_refuses_a_running_study_and_force_stops_its_runner_cleanly(storage_url, tmp_path):
    """`tuner delete` of a study that is running is refused (SQLite: the runner's lock;
    PostgreSQL: RUNNING trials with live heartbeats); with --force the runner stops with "was
    deleted" instead of a KeyError traceback and leaked shared memory."""
    study = write_study(tmp_path / "s.toml", name="busy", n_trials=30, epochs=LONG_EPOCHS,
                        space=SLOW_SPACE, extra_study=NO_PRUNER)
    runner = popen_tuner("run", study, "--storage", storage_url, "--workers", "2", "-q", cwd=tmp_path)
    try:
        wait_for_running(storage_url, "busy", runner)
        refused = tuner("delete", "busy", "--storage", storage_url, "--yes")
        assert refused.returncode == 75, refused.stderr
        assert "study 'busy' is running" in flat(refused.stderr) and "--force" in refused.stderr
        assert "busy" in {s.study_name for s in optuna.get_all_study_summaries(storage_url)}
        forced = tuner("delete", "busy", "--storage", storage_url, "--yes", "--force", check=True)
        assert "deleted study 'busy'" in forced.stderr
        out, err = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 1, err
    assert "study 'busy' was deleted while this run was using it" in flat(err)
    assert "Traceback" not in err and "leaked" not in err, err


def test_force_delete_amid_short_trials_leaves_no_row_behind(storage_url, tmp_path):
    """`delete --force` while a runner creates a trial every few milliseconds: the study and
    every row of its trials are gone, nothing is written after the delete, and a new study in
    the same storage (SQLite reuses the ids) starts clean. Optuna's delete_study deleted nothing
    on PostgreSQL here (a trial created meanwhile broke it, silently) and left RUNNING trials on
    SQLite that the next study took over."""
    study = write_study(tmp_path / "s.toml", name="busy", n_trials=2000, epochs=2)
    runner = popen_tuner("run", study, "--storage", storage_url, "-q", cwd=tmp_path)
    engine = sqlalchemy.create_engine(storage_url)
    try:
        wait_for_running(storage_url, "busy", runner)
        time.sleep(2.0)  # well into a stream of short trials
        forced = tuner("delete", "busy", "--storage", storage_url, "--yes", "--force", check=True)
        assert "deleted study 'busy'" in forced.stderr
        out, err = runner.communicate(timeout=60)
        assert runner.returncode == 1 and "was deleted while this run was using it" in flat(err), err
        with engine.connect() as conn:
            for table in ("studies", "trials", "trial_params", "trial_values", "trial_user_attributes",
                          "trial_system_attributes", "trial_intermediate_values", "trial_heartbeats",
                          "study_directions", "study_user_attributes", "study_system_attributes"):
                assert conn.execute(sqlalchemy.text(f"SELECT count(*) FROM {table}")).scalar() == 0, (
                    table, conn.execute(sqlalchemy.text(f"SELECT * FROM {table}")).all()[:5], err)
    finally:
        engine.dispose()
        if runner.poll() is None:
            runner.kill()
    fresh = write_study(tmp_path / "f.toml", name="fresh", n_trials=3, epochs=2)
    proc = tuner("run", fresh, "--storage", storage_url, check=True)
    assert "recovered" not in proc.stdout + proc.stderr
    assert states(storage_url, "fresh") == {"COMPLETE": 3}


def test_timeout_stops_starting_trials(sqlite_url, tmp_path):
    study = write_study(tmp_path / "s.toml", name="short", n_trials=50, epochs=2)
    proc = tuner("run", study, "--storage", sqlite_url, "--timeout", "0.001", "--json", check=True)
    result = json.loads(proc.stdout)
    assert result["stopped"] == "timeout"
    assert sum(result["counts"].get(s, 0) for s in ("COMPLETE", "PRUNED")) < 50
    assert states(sqlite_url, "short")["RUNNING"] == 0


def test_timeout_starts_no_claimed_trial_and_puts_it_back(sqlite_url, tmp_path):
    """At the timeout the trial in training finishes; those already claimed (the worker's next
    one, sent ahead, and the spare) are not trained but go back to the queue for the next run."""
    study = write_study(tmp_path / "s.toml", name="tmo", n_trials=5, epochs=TIMED_EPOCHS,
                        space=SLOW_SPACE, extra_study=NO_PRUNER)
    proc = tuner("run", study, "--storage", sqlite_url, "--timeout", "3", "--json", check=True)
    assert json.loads(proc.stdout)["stopped"] == "timeout"
    trials = load(sqlite_url, "tmo").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] + [TrialState.WAITING] * 2, trials
    assert all(t.intermediate_values == {} and t.params for t in trials[1:])  # untrained, kept


def test_sampling_does_not_depend_on_how_fast_claims_and_trials_are(tmp_path):
    """TPE models the study from its second trial on (n_startup_trials = 1). Whether the first
    trial had finished when the third was sampled used to depend on timing: a slow database
    (claims slower than a trial) and a fast one sampled different configurations from the
    same seed. Finished trials now wait until the start-up claims are made."""
    study = write_study(tmp_path / "s.toml", name="rep", n_trials=8, epochs=20,
                        extra_study=NO_PRUNER + '\n\n[study.sampler]\ntype = "tpe"\nn_startup_trials = 1')
    runs = []
    for delay in ("0", "0.5"):  # 0.5 s: far longer than a trial of 20 digits epochs
        url = f"sqlite:///{tmp_path / f'delay-{delay}.db'}"
        tuner("run", study, "--storage", url, "-q", check=True,
              env=tuner_env(TUNER_INJECT_CLAIM_DELAY=delay))
        runs.append([t.params for t in load(url, "rep").trials])
    assert runs[0] == runs[1]


# --- several runners and workers -----------------------------------------------------------


@pytest.mark.slow
def test_concurrent_runners_share_one_postgres_study(pg_url, tmp_path):
    study = write_study(tmp_path / "s.toml", name="shared", n_trials=12, epochs=8,
                        space=SLOW_SPACE, extra_study=NO_PRUNER)
    # started together on an empty database: they also race to create the tables and the study
    runners = [popen_tuner("run", study, "--storage", pg_url, "-q", "--json"),
               popen_tuner("run", study, "--storage", pg_url, "-q", "--json"),
               popen_tuner("run", study, "--storage", pg_url, "-q", "--json", "--workers", "2")]
    for proc in runners:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "Traceback" not in out + err
        assert json.loads(out)["stopped"] == "done"
    trials = load(pg_url, "shared").trials
    assert len(trials) == 12  # exactly the budget: no runner over-claimed
    assert sorted(t.number for t in trials) == list(range(12))
    assert all(t.state == TrialState.COMPLETE for t in trials)  # nothing failed or left behind
    assert all(len(t.user_attrs["curve"]["epoch"]) == 8 for t in trials)
    runner_ids = Counter(t.user_attrs["runner"] for t in trials)
    assert len(runner_ids) >= 2, runner_ids  # the study really was shared


def test_first_use_of_an_empty_postgres_database_from_concurrent_clients(pg_url):
    """Clients creating the tables of an empty database at the same moment do not race
    (regression: 'UniqueViolation ... pg_type' from concurrent CREATE TYPE)."""
    from tuner.storage import open_storage

    barrier = threading.Barrier(4)
    errors: list[str] = []

    def client() -> None:
        barrier.wait()
        try:
            open_storage(pg_url).backend.engine.dispose()
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_sqlite_with_four_workers(sqlite_url, tmp_path):
    study = write_study(tmp_path / "s.toml", name="four", n_trials=16, epochs=4,
                        space=SLOW_SPACE, extra_study=NO_PRUNER)
    proc = tuner("run", study, "--storage", sqlite_url, "--workers", "4", check=True)
    assert "4 worker(s)" in flat(proc.stderr)
    trials = load(sqlite_url, "four").trials
    assert len(trials) == 16
    assert all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:  # each trial trained once, start to end
        assert t.user_attrs["curve"]["epoch"] == [1, 2, 3, 4]
        assert sorted(t.intermediate_values) == [1, 2, 3, 4]
        assert t.user_attrs["samples_processed"] == 4 * 1079
    # each trial finished exactly once in the run's log
    lines = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("trial ")]
    assert sorted(map(int, lines)) == list(range(16))


def test_workers_beyond_the_trials_left_are_not_started(sqlite_url, tmp_path):
    """`--workers 6` with one trial left starts no more workers than that one trial needs
    (beyond the one per CPU started early, while the storage opens), and says so; on a finished
    study it starts none of the extra (`--workers 100` there took 24 s, spawning them all)."""
    study = write_study(tmp_path / "s.toml", name="few", n_trials=2, epochs=2)
    tuner("run", study, "--storage", sqlite_url, check=True)
    proc = tuner("run", study, "--storage", sqlite_url, "--n-trials", "3", "--workers", "6",
                 check=True)
    err = flat(proc.stderr)
    early = min(6, os.cpu_count() or 1)
    assert f"1 trial(s) left: {early} of the 6 workers asked for are enough" in err, err
    assert f"{early} worker(s)" in err
    assert finished(sqlite_url, "few") == 3
    done = tuner("run", study, "--storage", sqlite_url, "--n-trials", "3", "--workers", "100",
                 check=True)
    assert "reached its target of 3 trials" in flat(done.stderr)
    assert "worker(s)" not in flat(done.stderr)


@pytest.mark.slow
def test_a_second_runner_on_a_running_sqlite_study_is_refused(sqlite_url, tmp_path):
    study = write_study(tmp_path / "s.toml", name="solo", n_trials=3, epochs=LONG_EPOCHS,
                        space=SLOW_SPACE, extra_study=NO_PRUNER)
    first = popen_tuner("run", study, "--storage", sqlite_url)
    try:
        wait_for_running(sqlite_url, "solo", first)
        second = tuner("run", study, "--storage", sqlite_url, "--workers", "2")
        assert second.returncode == 75
        assert "study 'solo'" in flat(second.stderr)
        assert "is already running in another process" in flat(second.stderr)
        assert "pid" in flat(second.stderr)
        # read-only commands still work while it runs
        assert tuner("ls", "--storage", sqlite_url).returncode == 0
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert first.returncode == 130


@pytest.mark.slow
def test_ctrl_c_fails_and_requeues_the_running_trial_and_rerun_completes(storage_url, tmp_path):
    study = write_study(tmp_path / "s.toml", name="ctrlc", n_trials=2, epochs=30,
                        space=SLOW_SPACE, extra_study=NO_PRUNER)
    proc = popen_tuner("run", study, "--storage", storage_url)
    wait_for_running(storage_url, "ctrlc", proc)
    time.sleep(0.5)  # let the worker get into training
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err
    assert "interrupted by SIGINT" in flat(err) and "run the same command to continue" in flat(err)

    trials = load(storage_url, "ctrlc").trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1
    interrupted = failed[0]
    assert interrupted.user_attrs["fail_reason"] == "interrupted by SIGINT"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == interrupted.number]
    assert len(retries) == 1 and retries[0].state == TrialState.WAITING
    assert retries[0].params == interrupted.params

    rerun = tuner("run", study, "--storage", storage_url, check=True)
    assert "reached its target of 2 trials" in flat(rerun.stderr)
    trials = load(storage_url, "ctrlc").trials
    c = Counter(t.state for t in trials)
    assert c[TrialState.COMPLETE] + c[TrialState.PRUNED] == 2
    assert c[TrialState.RUNNING] == c[TrialState.WAITING] == 0
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == interrupted.number)
    assert retry.state == TrialState.COMPLETE
    assert retry.params == interrupted.params
    # replaying the interrupted trial points at the retry that trained its configuration
    proc = tuner("replay", "ctrlc", str(interrupted.number), "--storage", storage_url)
    assert proc.returncode == 2 and re.search(
        rf"trial #{interrupted.number} has (only \d+ epoch\(s\) of intermediate values, no final "
        rf"learning curve|no stored learning curve or seed) to compare with \(state FAIL: "
        rf"interrupted by SIGINT\) hint: its retry #{retry.number} trained the same "
        rf"configuration: tuner replay ctrlc {retry.number}", flat(proc.stderr)), proc.stderr
    assert retry.user_attrs["seed"] == interrupted.user_attrs["seed"]  # trains exactly like it


def test_progress_and_end_messages_of_interrupted_and_resumed_runs(sqlite_url, tmp_path):
    """The first progress line of a resumed run shows the study's real count (it said 0/N
    before the counts were read); an interrupt before anything finished prints "(0/N done)"
    (not "(0/N done: )"); a second Ctrl-C skips the clean-up but still ends with a message
    that says which trials stay RUNNING (it printed nothing)."""
    quick = write_study(tmp_path / "q.toml", name="msgs", n_trials=2, epochs=1, space=SLOW_SPACE)
    tuner("run", quick, "--storage", sqlite_url, "-q", check=True)
    # epochs reach the database with the runner's periodic flush (every 5 s): trials long
    # enough that none finishes before that (an sgd one of LONG_EPOCHS took 5 s here)
    study = write_study(tmp_path / "s.toml", name="msgs", n_trials=6, epochs=10 * LONG_EPOCHS,
                        space=SLOW_SPACE, extra_study=NO_PRUNER)
    proc = popen_tuner("run", study, "--storage", sqlite_url, "--workers", "2")
    wait_for_running(sqlite_url, "msgs", proc, training=True)  # SIGINT must find one training
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "study 'msgs' on SQLite" in err and ": 2/6 trials done, 2 worker(s)" in flat(err)
    assert re.search(r"interrupted by SIGINT: trials? #\d+(, #\d+)? (was|were) marked FAIL and "
                     r"re-queued", flat(err)), err
    assert "(2/6 done: 2 complete" in flat(err)

    big = write_study(tmp_path / "b.toml", name="big", n_trials=6, epochs=1,
                      data='dataset = "synthetic"\nn = 400000\nd = 200')  # seconds to generate
    # an existing study loads its data after opening it (a new one, before creating it): the
    # study file stored when it is opened is the sign that the data is being generated now
    optuna.create_study(study_name="big", storage=sqlite_url, direction="maximize")
    proc = popen_tuner("run", big, "--storage", sqlite_url)
    deadline = time.monotonic() + 60
    while "tuner.config" not in optuna.load_study(study_name="big", storage=sqlite_url).user_attrs:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # while its data is generated: nothing claimed yet
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "(0/6 done)" in flat(err) and "done: )" not in err, err
    assert "interrupted by SIGINT: no trial was training; run the same command" in flat(err), err

    fresh = write_study(tmp_path / "f.toml", name="fresh", n_trials=6, epochs=LONG_EPOCHS,
                        space=SLOW_SPACE, extra_study=NO_PRUNER)

    # (claims slowed: the clean-up after the first Ctrl-C waits for one, so it is still under
    # way at the second, which comes later than SAME_SIGNAL_S: not one signal delivered twice)
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "run", str(fresh), "--storage",
                             sqlite_url, "--workers", "2"], env=tuner_env(TUNER_INJECT_CLAIM_DELAY="3"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_running(sqlite_url, "fresh", proc)
    time.sleep(1.0)  # the next trials are being claimed
    proc.send_signal(signal.SIGINT)
    time.sleep(SAME_SIGNAL_S + 0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "leaked" not in err, err
    text = flat(err)
    assert "interrupted by SIGINT twice: clean-up skipped" in text, err
    assert "stay RUNNING until the next `tuner run`" in text or "nothing was left running" in text
    rerun = tuner("run", fresh, "--storage", sqlite_url, "--timeout", "0.001", "-q")
    assert rerun.returncode == 0, rerun.stderr
    assert states(sqlite_url, "fresh")["RUNNING"] == 0  # recovered as orphans

    # twice during a (slowed) claim: the claim is abandoned, and the message says it may leave
    # a trial RUNNING too
    slow = write_study(tmp_path / "c.toml", name="claims", n_trials=6, epochs=LONG_EPOCHS,
                       space=SLOW_SPACE, extra_study=NO_PRUNER)
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "run", str(slow), "--storage", sqlite_url],
                            env=tuner_env(TUNER_INJECT_CLAIM_DELAY="3"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_running(sqlite_url, "claims", proc)  # the first claim
    time.sleep(1.0)  # the next one is under way (it takes 3 s)
    proc.send_signal(signal.SIGINT)
    time.sleep(SAME_SIGNAL_S + 0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "(and maybe the trial of a claim that was in progress) stay RUNNING" in flat(err), err
    rerun = tuner("run", slow, "--storage", sqlite_url, "--timeout", "0.001", "-q")
    assert states(sqlite_url, "claims")["RUNNING"] == 0, rerun.stderr


def test_a_reader_of_both_streams_that_goes_away_does_not_stop_the_run(sqlite_url, tmp_path):
    """`tuner run ... 2>&1 | head -3`: the progress lines go to stderr, and the first write to
    the closed pipe ended the run with exit 1, no message, and a trial left WAITING."""
    study = write_study(tmp_path / "s.toml", name="piped", n_trials=4, epochs=2)
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "run", str(study), "--storage",
                             sqlite_url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=tuner_env(), cwd=tmp_path)
    proc.stdout.close()  # nobody reads either stream
    assert proc.wait(timeout=300) == 0
    assert states(sqlite_url, "piped") == Counter({"COMPLETE": 4})


def test_one_signal_delivered_twice_is_one_interruption(sqlite_url, tmp_path):
    """GNU `timeout` sends its signal to the runner, then to its whole process group: the runner
    got it twice within microseconds, took it for a second Ctrl-C, skipped the clean-up and left
    its trials RUNNING (recovered later as orphans, using their retries)."""
    study = write_study(tmp_path / "s.toml", name="once", n_trials=6, epochs=LONG_EPOCHS,
                        space=SLOW_SPACE, extra_study=NO_PRUNER)
    proc = popen_tuner("run", study, "--storage", sqlite_url, "--workers", "2")
    wait_for_running(sqlite_url, "once", proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    text = flat(err)
    failed = [t.number for t in load(sqlite_url, "once").trials if t.state == TrialState.FAIL]
    assert (f"interrupted by SIGINT: {'trial' if len(failed) == 1 else 'trials'} "
            f"{', '.join(f'#{n}' for n in failed)} {'was' if len(failed) == 1 else 'were'} marked "
            "FAIL and re-queued") in text, err
    assert "twice" not in text
    counts = states(sqlite_url, "once")
    assert counts["RUNNING"] == 0 and counts["FAIL"] >= 1 and counts["WAITING"] >= counts["FAIL"]
    # the WAITING trials: a retry per failed trial, and the claimed ones the message counts
    back = re.search(r"; (\d+) claimed trials? went back to the queue \(WAITING\)", text)
    assert counts["WAITING"] == counts["FAIL"] + (int(back.group(1)) if back else 0), (counts, err)
    for t in load(sqlite_url, "once").trials:
        if t.state == TrialState.FAIL:
            assert t.user_attrs["fail_reason"] == "interrupted by SIGINT", t.user_attrs


def test_the_live_panel_tells_training_from_claimed_and_other_runners_trials():
    """"running 5" with 2 workers counted claimed-but-not-started trials (and other runners')."""
    from rich.console import Console

    from tuner.runner.progress import Display, Snapshot

    snap = Snapshot(study="s", storage="SQLite x", metric="val_accuracy", n_trials=10, workers=2,
                    elsewhere=1, training=2, queued_here=2)
    console = Console(record=True, width=200)
    console.print(Display(snap, console=console, live=False)._render())
    text = console.export_text()
    assert "training 2 · next 2 · 1 in other runners" in text and "running 5" not in text


def test_the_live_panel_header_wraps_between_items_at_80_columns():
    """The header was a grid: at 80 columns each cell wrapped into a column of single words."""
    from rich.console import Console

    from tuner.runner.progress import Display, Snapshot

    snap = Snapshot(study="s", storage="SQLite x", metric="val_accuracy", n_trials=300, workers=2,
                    complete=250, pruned=40, failed=1, elsewhere=3, training=2, queued_here=2)
    console = Console(record=True, width=80)
    console.print(Display(snap, console=console, live=False)._render())
    lines = [line.strip("│ ") for line in console.export_text().splitlines()]
    assert "290/300 done  complete 250  pruned 40  failed 1" in lines, lines
    assert any(line.startswith("training 2 · next 2 · 3 in other runners  elapsed") for line in lines)


# --- pruning and divergence -----------------------------------------------------------------

# SGD/momentum with lr 500 diverges on the first update; lr 0.05 trains fine. The random sampler
# (seeded) mixes both, the median pruner prunes some of the rest, and the warmup choice puts
# some trials inside a 2-epoch warmup while the pruner is already active.
MIXED = '''optimizer = ["sgd", "momentum"]
lr = [0.05, 500.0]
batch_size = [32, 64]
warmup_epochs = [0, 2]
decay = ["constant", "step"]

[space.decays.step]
gamma = {low = 0.1, high = 0.5}
milestones = [0.5, 0.75]  # a list-valued parameter (exported as JSON text in tables)'''
MIXED_STUDY = '''[study.sampler]
type = "random"

[study.pruner]
type = "median"
n_startup_trials = 2
n_warmup_steps = 1'''


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A finished SQLite study with COMPLETE, pruned and diverged trials: (url, study file)."""
    folder = tmp_path_factory.mktemp("mixed")
    url = f"sqlite:///{folder / 'mixed.db'}"
    study = write_study(folder / "mixed.toml", name="mixed", n_trials=16, epochs=6, space=MIXED,
                        extra_study=MIXED_STUDY, model="reg = [0.0, 0.5]")
    tuner("run", study, "--storage", url, check=True)
    return url, study


def test_diverged_trials_are_pruned_with_the_reason_and_never_best(mixed):
    url, _ = mixed
    study = load(url, "mixed")
    trials = study.trials
    assert len(trials) == 16 and all(t.state in FINISHED for t in trials)
    diverged = [t for t in trials if t.user_attrs.get("diverged")]
    assert diverged, "the space forces some divergence"
    assert all(t.params["lr"] == 500.0 for t in diverged)
    # without warmup and with L2, lr 500 always blows up on the first updates
    assert all(t in diverged for t in trials if t.params["lr"] == 500.0
               and t.params["warmup_epochs"] == 0 and t.params["reg"] == 0.5)
    for t in diverged:
        assert t.state == TrialState.PRUNED
        assert t.user_attrs["diverged"] is True
        assert isinstance(t.user_attrs["divergence_step"], int)
        assert t.user_attrs["divergence_step"] < t.user_attrs["total_steps"]
        assert "exceeded 100x the first loss" in t.user_attrs["divergence_reason"] \
            or "non-finite" in t.user_attrs["divergence_reason"]
        assert all(math.isfinite(v) for v in t.intermediate_values.values())  # never NaN/inf
    assert not study.best_trial.user_attrs.get("diverged")
    assert study.best_trial.params["lr"] == 0.05


def test_a_space_where_everything_diverges(sqlite_url, tmp_path):
    study = write_study(tmp_path / "s.toml", name="boom", n_trials=3, epochs=3,
                        space='optimizer = "sgd"\nlr = {low = 1e3, high = 1e4, log = true}',
                        model="reg = 1.0")
    proc = tuner("run", study, "--storage", sqlite_url)
    assert proc.returncode == 1, proc.stderr  # a script must not take it for a result
    assert ("reached its target of 3 trials, but none completed: every trial diverged or was "
            "pruned (exit code 1)") in flat(proc.stderr)
    assert "no COMPLETE trial yet" in proc.stdout
    assert "3 of 3 pruned trial(s) diverged" in flat(proc.stdout)
    assert "learning rates tried are too large for this data; lower space.lr" in flat(proc.stdout)
    trials = load(sqlite_url, "boom").trials
    assert len(trials) == 3
    assert all(t.state == TrialState.PRUNED and t.user_attrs["diverged"] for t in trials)
    assert all(t.user_attrs["divergence_epoch"] == 1 for t in trials)
    best = tuner("best", "boom", "--storage", sqlite_url)
    assert best.returncode == 2 and "study 'boom' has no COMPLETE trial yet" in flat(best.stderr)
    shown = json.loads(tuner("show", "boom", "--storage", sqlite_url, "--json", check=True).stdout)
    assert shown["best"] is None and shown["counts"] == {"PRUNED": 3}
    assert shown["by"]["optimizer"][0]["diverged"] == 3


def test_a_diverged_trial_never_looks_better_than_a_finished_one_on_val_loss(sqlite_url, tmp_path):
    """With metric val_loss a diverged trial reported 100x its own worst loss: a trial that blew
    up at a small loss beat finished trials whose losses were large (for the pruner, and for
    TPE among pruned trials). It now reports 10x the worst loss any non-diverged trial reported
    (at least 100x its own), and other diverged trials do not compound it."""
    from tuner.runner.outcome import DivergedValue
    from tuner.storage import open_storage

    study = optuna.create_study(storage=open_storage(sqlite_url), study_name="loss")
    diverged_value = DivergedValue(direction="minimize", metric="val_loss")
    dist = {"lr": optuna.distributions.FloatDistribution(1e-3, 0.5, log=True)}
    for value, curve in ((500.0, {1: 800.0, 2: 500.0}), (40.0, {1: 60.0, 2: 40.0})):
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE, value=value, params={"lr": 0.01}, distributions=dist,
            intermediate_values=curve))
    worst = diverged_value(study, [{"val_loss": 2.0}])  # blew up early, at a small loss
    assert worst == 8000.0  # 10x the worst loss any finished trial reported
    assert worst > max(v for t in study.trials for v in t.intermediate_values.values())
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.PRUNED, params={"lr": 0.5}, distributions=dist,
        intermediate_values={1: worst}, user_attrs={"diverged": True}))
    assert diverged_value(study, [{"val_loss": 2.0}]) == 8000.0  # not 10x the last divergence
    assert diverged_value(study, [{"val_loss": 1e5}]) == 1e7  # its own worst, 100x, if larger
    assert DivergedValue(direction="maximize", metric="val_accuracy")(study, []) == 0.0


def test_pruning_never_happens_inside_a_trials_warmup(mixed):
    url, _ = mixed
    pruned = [t for t in load(url, "mixed").trials if "pruned_at_epoch" in t.user_attrs]
    assert pruned, "the median pruner pruned something"
    assert any(t.user_attrs["warmup_steps"] > 0 for t in pruned)
    for t in pruned:
        epoch = t.user_attrs["pruned_at_epoch"]
        assert t.state == TrialState.PRUNED
        assert epoch >= 1  # study.pruner.n_warmup_steps = 1: at the end of epoch 1 at the earliest
        assert epoch * t.user_attrs["steps_per_epoch"] >= t.user_attrs["warmup_steps"]
        assert epoch < 6  # a trial that reached its last epoch completes
        assert max(t.intermediate_values) == epoch  # the pruner saw nothing after its decision
        curve = t.user_attrs["curve"]  # what the pruner saw, whatever the worker trained past it
        assert len(curve["epoch"]) == epoch
        assert curve["epoch"][:epoch] == list(range(1, epoch + 1))
        assert curve["val_accuracy"][:epoch] == [t.intermediate_values[e] for e in range(1, epoch + 1)]
        # the work counters stand for that curve too, not for epochs trained past the decision
        assert t.user_attrs["steps_done"] == epoch * t.user_attrs["steps_per_epoch"] == curve["step"][-1]
        assert t.user_attrs["samples_processed"] == epoch * 1079  # digits train split


@pytest.mark.parametrize("pruner", [
    'type = "percentile"\npercentile = 50.0\nn_startup_trials = 2\nn_warmup_steps = 2',
    'type = "successive_halving"\nmin_resource = 1\nreduction_factor = 2',
    'type = "hyperband"\nmin_resource = 1\nreduction_factor = 2',
    'type = "none"',
], ids=["percentile", "successive_halving", "hyperband", "none"])
def test_every_pruner_type_runs_and_respects_warmup(sqlite_url, tmp_path, pruner):
    study = write_study(tmp_path / "s.toml", name="p", n_trials=10, epochs=6,
                        space=MIXED.replace("[0.05, 500.0]", "{low = 1e-4, high = 0.5, log = true}"),
                        extra_study=f'[study.sampler]\ntype = "random"\n\n[study.pruner]\n{pruner}')
    tuner("run", study, "--storage", sqlite_url, "-q", check=True)
    trials = load(sqlite_url, "p").trials
    assert len(trials) == 10 and all(t.state in FINISHED for t in trials)
    for t in trials:
        epoch = t.user_attrs.get("pruned_at_epoch")
        if epoch is None:
            continue
        assert pruner != 'type = "none"'
        assert epoch * t.user_attrs["steps_per_epoch"] >= t.user_attrs["warmup_steps"]
        if "percentile" in pruner:
            assert epoch >= 2


# --- replay, export, best -------------------------------------------------------------------


def pick(url: str, kind: str) -> optuna.trial.FrozenTrial:
    trials = load(url, "mixed").trials
    if kind == "complete":
        return next(t for t in trials if t.state == TrialState.COMPLETE)
    if kind == "pruned":  # stopped early, with a decay whose shape depends on the total length
        return next(t for t in trials if "pruned_at_epoch" in t.user_attrs
                    and len(t.user_attrs["curve"]["epoch"]) < 6 and t.params["decay"] == "step")
    return next(t for t in trials if t.user_attrs.get("diverged"))


@pytest.mark.parametrize("kind", ["complete", "pruned", "diverged"])
def test_replay_reproduces_the_stored_history(mixed, kind):
    url, _ = mixed
    trial = pick(url, kind)
    data = json.loads(tuner("replay", "mixed", trial.number, "--storage", url, "--json",
                            check=True).stdout)
    assert data["match"] is True and data["mismatched_epochs"] == 0
    assert data["seed"] == trial.user_attrs["seed"]
    assert data["stored"] == trial.user_attrs["curve"]
    if kind == "diverged":
        assert data["divergence"]["step"] == trial.user_attrs["divergence_step"]
        text = tuner("replay", "mixed", trial.number, "--storage", url, check=True).stdout
        assert "match: the replay reproduces the stored history exactly" in text
        assert f"stored divergence at update {trial.user_attrs['divergence_step'] + 1}" in text


def test_replay_mismatch_names_the_engine_that_ran_the_trial(mixed, tmp_path):
    """A trial run by another engine (here: its stored curve altered and its engine renamed, as
    after an upgrade) fails the replay with both engines named."""
    import shutil

    import sqlalchemy

    from tuner.kernels import engine_id

    url, _ = mixed
    trial = pick(url, "complete")
    assert trial.user_attrs["engine"] == engine_id()
    copy = tmp_path / "copy.db"
    shutil.copy(url.removeprefix("sqlite:///"), copy)
    curve = dict(trial.user_attrs["curve"])
    curve["val_loss"] = [v + 1e-9 for v in curve["val_loss"]]
    engine = sqlalchemy.create_engine(f"sqlite:///{copy}")
    with engine.begin() as conn:
        for key, value in (("curve", curve), ("engine", "tuner 0.0.1, numba 0.1, pentium")):
            conn.execute(sqlalchemy.text("UPDATE trial_user_attributes SET value_json = :v "
                                         "WHERE trial_id = :t AND key = :k"),
                         {"v": json.dumps(value), "t": trial._trial_id, "k": key})
    engine.dispose()
    proc = tuner("replay", "mixed", trial.number, "--storage", f"sqlite:///{copy}")
    assert proc.returncode == 1
    text = flat(proc.stdout)
    assert f"mismatch in {len(curve['epoch'])} epoch(s)" in text
    assert (f"the trial ran on tuner 0.0.1, numba 0.1, pentium, the replay on {engine_id()}: "
            "bit-for-bit replays need the same tuner and numba versions") in text


def test_replay_of_a_long_trial_shows_its_ends_and_every_mismatch(tmp_path):
    import sqlalchemy

    url = f"sqlite:///{tmp_path / 'long.db'}"
    study = write_study(tmp_path / "long.toml", name="long", n_trials=1, epochs=30,
                        extra_study=NO_PRUNER)
    tuner("run", study, "--storage", url, "-q", check=True)
    rows = [line for line in tuner("replay", "long", "0", "--storage", url, check=True).stdout
            .splitlines() if line.startswith("│")]
    assert [r.split("│")[1].strip() for r in rows] == ["1", "2", "3", "4", "5", "…", "26", "27",
                                                        "28", "29", "30"], rows
    assert "20 epochs" in rows[5]
    trial = load(url, "long").trials[0]
    curve = dict(trial.user_attrs["curve"])
    curve["val_loss"] = [v + (1e-9 if i == 14 else 0.0) for i, v in enumerate(curve["val_loss"])]
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE trial_user_attributes SET value_json = :v "
                                     "WHERE trial_id = :t AND key = 'curve'"),
                     {"v": json.dumps(curve), "t": trial._trial_id})
    engine.dispose()
    proc = tuner("replay", "long", "0", "--storage", url)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("│")]
    assert proc.returncode == 1
    assert [r.split("│")[1].strip() for r in rows] == ["1", "2", "3", "4", "5", "…", "15", "…",
                                                        "26", "27", "28", "29", "30"], rows
    assert "≠" in rows[6] and "mismatch in 1 epoch(s)" in proc.stdout


def test_replay_of_an_unknown_trial(mixed):
    url, _ = mixed
    proc = tuner("replay", "mixed", 999, "--storage", url)
    assert proc.returncode == 2 and "study 'mixed' has no trial #999" in flat(proc.stderr)


def test_ctrl_c_while_workers_start_prints_no_traceback(sqlite_url, tmp_path):
    """Ctrl-C reaches the whole foreground process group: workers still importing their
    libraries ignore it (the runner stops them), so no KeyboardInterrupt traceback."""
    study = write_study(tmp_path / "s.toml", name="early", n_trials=50)
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "run", str(study), "--storage",
                             sqlite_url, "--workers", "2"], env=tuner_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    def spawned_workers() -> int:  # processes started by multiprocessing's spawn
        found = 0
        for pid in descendants(proc.pid):
            with contextlib.suppress(OSError):
                found += b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        return found

    deadline = time.monotonic() + 60
    while spawned_workers() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)  # while they import numpy and numba
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err, err
    assert proc.returncode == 130, out + err


def test_replay_and_best_retrain_under_the_file_each_trial_ran_with(sqlite_url, tmp_path):
    """A study run again with an edited [model] (more epochs): its new trials trained for 3
    epochs, so replay and best --test retrain them for 3 epochs, the old ones for 1."""
    space = 'optimizer = "adam"\nlr = {low = 1e-3, high = 1e-2, log = true}\nbatch_size = 128'
    study = write_study(tmp_path / "e.toml", name="e", n_trials=2, epochs=1, space=space)
    tuner("run", study, "--storage", sqlite_url, "-q", check=True)
    write_study(study, name="e", n_trials=4, epochs=3, space=space)
    proc = tuner("run", study, "--storage", sqlite_url, "-q", check=True)
    assert "model.epochs: 1 -> 3" in flat(proc.stderr)
    trials = load(sqlite_url, "e").trials
    assert [len(t.user_attrs["curve"]["epoch"]) for t in trials] == [1, 1, 3, 3]
    for trial in trials[1:3]:
        data = json.loads(tuner("replay", "e", trial.number, "--storage", sqlite_url, "--json",
                                check=True).stdout)
        assert data["match"] is True and data["epochs"] == len(trial.user_attrs["curve"]["epoch"])
    best = max(trials, key=lambda t: (t.value, -t.number))
    data = json.loads(tuner("best", "e", "--storage", sqlite_url, "--test", "--json",
                            check=True).stdout)
    assert data["trial"] == best.number and data["epochs"] == len(best.user_attrs["curve"]["epoch"])


def test_a_data_file_edited_in_place_is_told_apart(sqlite_url, tmp_path):
    """The CSV a study trains on was rewritten under the same name: the next run joined the
    study without a word, replay reported a bare mismatch and best --test used the new data
    silently. Each trial now records which contents of the file it trained on."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 4))
    y = np.argmax(X[:, :3] + 0.3 * rng.standard_normal((300, 3)), axis=1)
    data = tmp_path / "d.csv"
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(4)]).assign(label=y)
    frame.to_csv(data, index=False)
    space = 'optimizer = "adam"\nlr = {low = 1e-3, high = 1e-2, log = true}\nbatch_size = 64'
    study = write_study(tmp_path / "c.toml", name="c", n_trials=2, epochs=1, space=space,
                        data='dataset = "d.csv"\ntarget = "label"')
    proc = tuner("run", study, "--storage", sqlite_url, "-q", check=True)
    assert "changed" not in proc.stderr
    first = {t.user_attrs["data_digest"] for t in load(sqlite_url, "c").trials}
    assert len(first) == 1 and all(len(d) == 12 for d in first)
    original = data.read_bytes()
    frame.loc[0, "f0"] += 1.0  # one value edited in place
    frame.to_csv(data, index=False)
    write_study(study, name="c", n_trials=3, epochs=1, space=space,
                data='dataset = "d.csv"\ntarget = "label"')
    proc = tuner("run", study, "--storage", sqlite_url, "-q", check=True)
    assert "the data file of" in proc.stderr and "changed since study 'c' last trained on it" \
        in flat(proc.stderr), proc.stderr
    trials = load(sqlite_url, "c").trials
    assert trials[2].user_attrs["data_digest"] not in first
    proc = tuner("replay", "c", "0", "--storage", sqlite_url)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "the data file d.csv changed since trial #0 trained on it" in flat(proc.stderr)
    assert "cannot reproduce" in flat(proc.stderr)
    tuner("replay", "c", "2", "--storage", sqlite_url, check=True)  # trained on today's file
    best = max(trials, key=lambda t: (t.value, -t.number))
    proc = tuner("best", "c", "--storage", sqlite_url, "--test", "--json", check=True)
    changed = json.loads(proc.stdout).get("data_changed")
    assert (changed is not None) == (best.number < 2), (best.number, proc.stdout)
    # back to the first contents: the last run trained on others, so it warns again
    data.write_bytes(original)
    proc = tuner("run", study, "--storage", sqlite_url, "-n", "4", "-q", check=True)
    assert "changed since study 'c' last trained on it" in flat(proc.stderr), proc.stderr
    assert load(sqlite_url, "c").trials[3].user_attrs["data_digest"] in first


def _expected_rows(url: str) -> dict[int, optuna.trial.FrozenTrial]:
    return {t.number: t for t in load(url, "mixed").trials}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_table_round_trip(mixed, tmp_path, fmt):
    url, _ = mixed
    out = tmp_path / f"mixed.{fmt}"
    proc = tuner("export", "mixed", "--storage", url, "--format", fmt.upper(), "--output", out,
                 check=True)
    assert f"wrote 16 trials to {out}" in flat(proc.stderr)
    frame = pd.read_csv(out) if fmt == "csv" else pd.read_parquet(out)
    if fmt == "parquet":  # typed: the times are timestamps
        assert pd.api.types.is_datetime64_any_dtype(frame["datetime_start"])
        started = {t.number: t.datetime_start for t in load(url, "mixed").trials}
        assert all(row["datetime_start"].to_pydatetime() == started[row["number"]]
                   for row in frame.to_dict("records"))
    # grouped: the trial's fields, its parameters (gamma: step decay's only), its attributes
    groups = [c.startswith("param.") + 2 * c.startswith("attr.") for c in frame.columns]
    assert groups == sorted(groups) and "param.gamma" in frame.columns, list(frame.columns)
    expected = _expected_rows(url)
    assert sorted(frame["number"]) == sorted(expected)
    for row in frame.to_dict("records"):
        t = expected[row["number"]]
        assert row["state"] == t.state.name
        if t.value is None:
            assert pd.isna(row["value"])
        else:
            assert row["value"] == t.value  # exact: floats survive the round trip
        config = t.user_attrs["config"]
        for key, value in config.items():
            cell = json.loads(row[f"param.{key}"]) if isinstance(value, list) else row[f"param.{key}"]
            assert cell == value, key
        assert row["attr.seed"] == t.user_attrs["seed"]
        assert row["attr.peak_lr"] == t.user_attrs["peak_lr"]
        assert (row.get("attr.diverged") in (True,)) == bool(t.user_attrs.get("diverged"))


def test_export_columns_keep_a_parameter_only_later_trials_have_with_the_parameters():
    from tuner.results import record_columns

    records = [{"number": 0, "state": "COMPLETE", "param.optimizer": "adam", "attr.seed": 1},
               {"number": 1, "state": "PRUNED", "param.optimizer": "momentum", "attr.seed": 2,
                "param.momentum": 0.9, "attr.pruned_at_epoch": 3}]
    assert record_columns(records) == ["number", "state", "param.optimizer", "param.momentum",
                                       "attr.seed", "attr.pruned_at_epoch"]


def test_export_json_round_trip_with_curves(mixed, tmp_path):
    url, _ = mixed
    out = tmp_path / "mixed.json"
    tuner("export", "mixed", "--storage", url, "--format", "json", "-o", out, check=True)
    data = json.loads(out.read_text())
    assert data["study"] == "mixed"
    expected = _expected_rows(url)
    assert sorted(r["number"] for r in data["trials"]) == sorted(expected)
    for record in data["trials"]:
        t = expected[record["number"]]
        assert record["state"] == t.state.name
        assert record["value"] == t.value
        assert record["curve"] == t.user_attrs["curve"]
        assert record["intermediate_values"] == {str(k): v for k, v in t.intermediate_values.items()}
        assert {k[len("param."):]: v for k, v in record.items() if k.startswith("param.")} == \
            t.user_attrs["config"]
        if t.user_attrs.get("diverged"):
            assert record["attr.divergence_reason"] == t.user_attrs["divergence_reason"]


def test_export_default_file_name_and_bad_format(mixed, tmp_path):
    url, _ = mixed
    tuner("export", "mixed", "--storage", url, cwd=tmp_path, check=True)
    assert (tmp_path / "mixed.csv").exists()
    proc = tuner("export", "mixed", "--storage", url, "--format", "xlsx", cwd=tmp_path)
    assert proc.returncode == 2 and "--format 'xlsx': use csv, parquet or json" in flat(proc.stderr)
    for fmt in ("csv", "json"):
        proc = tuner("export", "mixed", "--storage", url, "-f", fmt, "-o", tmp_path / "no" / f"x.{fmt}")
        assert proc.returncode == 2 and f"cannot write {tmp_path / 'no' / f'x.{fmt}'}" in flat(proc.stderr)
    # a folder: STUDY.FORMAT in it (it said "cannot write out: Is a directory")
    (tmp_path / "out").mkdir()
    tuner("export", "mixed", "--storage", url, "-f", "json", "-o", tmp_path / "out", check=True)
    assert json.loads((tmp_path / "out" / "mixed.json").read_text())["study"] == "mixed"
    proc = tuner("export", "mixed", "--storage", url, "-o", f"{tmp_path / 'new'}/")
    assert proc.returncode == 2 and f"folder {tmp_path / 'new'} does not exist" in flat(proc.stderr)


def test_export_format_follows_the_output_suffix_and_dash_is_stdout(mixed, tmp_path):
    """`-o out.parquet` without --format wrote CSV text into the .parquet file."""
    url, _ = mixed
    tuner("export", "mixed", "--storage", url, "-o", tmp_path / "out.parquet", check=True)
    assert len(pd.read_parquet(tmp_path / "out.parquet")) == 16
    tuner("export", "mixed", "--storage", url, "-o", tmp_path / "out.json", check=True)
    assert len(json.loads((tmp_path / "out.json").read_text())["trials"]) == 16
    clash = tuner("export", "mixed", "--storage", url, "-f", "csv", "-o", tmp_path / "x.json")
    assert clash.returncode == 2 and "--format csv but --output" in flat(clash.stderr)
    assert not (tmp_path / "x.json").exists()
    unknown = tuner("export", "mixed", "--storage", url, "-o", tmp_path / "x.xlsx")
    assert unknown.returncode == 2 and ".xlsx is not a format tuner writes" in flat(unknown.stderr)
    assert not (tmp_path / "x.xlsx").exists()
    tuner("export", "mixed", "--storage", url, "-f", "csv", "-o", tmp_path / "x.txt", check=True)
    assert (tmp_path / "x.txt").read_text().startswith("number,state,value")
    piped = tuner("export", "mixed", "--storage", url, "-o", "-", check=True)
    assert piped.stdout.splitlines()[0].startswith("number,state,value")
    assert len(piped.stdout.splitlines()) == 17 and "wrote 16 trials to stdout" in piped.stderr
    piped = tuner("export", "mixed", "--storage", url, "-o", "-", "-f", "json", check=True)
    assert len(json.loads(piped.stdout)["trials"]) == 16


def test_best_with_test_reports_test_accuracy_and_the_reference(mixed):
    url, _ = mixed
    best = load(url, "mixed").best_trial
    data = json.loads(tuner("best", "mixed", "--storage", url, "--test", "--json", check=True).stdout)
    assert data["trial"] == best.number and data["val_accuracy"] == best.value
    assert data["config"] == best.user_attrs["config"]
    assert 0.8 < data["test_accuracy"] <= 1.0
    assert 0.9 < data["reference_test_accuracy"] <= 1.0
    assert (data["n_train"], data["n_test"]) == (1079 + 359, 359)  # train+validation; test
    text = tuner("best", "mixed", "--storage", url, "--test", check=True).stdout
    assert f"best trial #{best.number}" in text
    assert f"test accuracy {data['test_accuracy']:.4f}" in flat(text)
    assert f"LogisticRegression, same data: test accuracy {data['reference_test_accuracy']:.4f}" \
        in flat(text)


def test_show_reports_pruned_and_diverged_per_group(mixed):
    url, _ = mixed
    data = json.loads(tuner("show", "mixed", "--storage", url, "--json", check=True).stdout)
    trials = load(url, "mixed").trials
    assert sum(data["counts"].values()) == 16
    by_optimizer = {g["value"]: g for g in data["by"]["optimizer"]}
    for name, group in by_optimizer.items():
        mine = [t for t in trials if t.params["optimizer"] == name]
        assert group["n"] == sum(t.state == TrialState.COMPLETE for t in mine)
        assert group["pruned"] == sum(t.state == TrialState.PRUNED for t in mine)
        assert group["diverged"] == sum(bool(t.user_attrs.get("diverged")) for t in mine)
    # the per-optimizer default (spec section 3), recorded with each trial: linear for SGD
    assert [g["value"] for g in data["by"]["batch_scaling"]] == ["linear"]
    assert data["best"]["number"] == load(url, "mixed").best_trial.number
    text = tuner("show", "mixed", "--storage", url, check=True).stdout
    for title in ("best trial #", "top 10 trials", "best val_accuracy per optimizer",
                  "best val_accuracy per decay", "best val_accuracy per batch_scaling"):
        assert title in text


# --- the shipped study files ----------------------------------------------------------------


def test_digits_study_runs(tmp_path):
    url = f"sqlite:///{tmp_path / 'd.db'}"
    tuner("run", STUDIES / "digits.toml", "--storage", url, "-n", "4", "-q", check=True)
    assert finished(url, "digits") == 4


def test_csv_example_study_runs_from_any_folder(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    proc = tuner("run", STUDIES / "csv-example.toml", "--storage", url, "-n", "2", cwd=tmp_path,
                 check=True)
    assert "machines.csv: 6 features, 3 classes" in flat(proc.stderr)
    assert finished(url, "csv-example") == 2


def test_cifar_shaped_study_on_smaller_synthetic_data(tmp_path):
    """The CIFAR-shaped study file with its data shrunk (same space, sampler, pruner)."""
    text = (STUDIES / "cifar-shaped.toml").read_text()
    for old, new in (("n = 51000", "n = 1200"), ("d = 3072", "d = 48"), ("val_size = 1000", "val_size = 200"),
                     ("test_size = 1000", "test_size = 200"), ("epochs = 8", "epochs = 4")):
        assert old in text
        text = text.replace(old, new)
    study = tmp_path / "cifar-small.toml"
    study.write_text(text)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    proc = tuner("run", study, "--storage", url, "-n", "2", check=True)
    assert "synthetic(n=1200, d=48, classes=10" in flat(proc.stderr)
    assert finished(url, "cifar-shaped") == 2


def test_data_errors_at_run_time_are_reported_without_a_traceback(sqlite_url, tmp_path):
    study = write_study(tmp_path / "s.toml", data='dataset = "missing.csv"\ntarget = "y"')
    proc = tuner("run", study, "--storage", sqlite_url)
    assert proc.returncode == 2
    assert f"{tmp_path / 'missing.csv'}: data file not found" in flat(proc.stderr)


def test_storage_folder_must_exist(tmp_path):
    study = write_study(tmp_path / "s.toml")
    proc = tuner("run", study, "--storage", f"sqlite:///{tmp_path / 'nope' / 'x.db'}")
    assert proc.returncode == 3
    assert f"folder {tmp_path / 'nope'} does not exist" in flat(proc.stderr)


def test_a_finished_sqlite_study_can_be_run_again(tmp_path):
    """The runner lock is released at the end: the next run of the study is not refused."""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    study = write_study(tmp_path / "s.toml", name="again", n_trials=1, epochs=1)
    tuner("run", study, "--storage", url, "-q", check=True)
    tuner("run", study, "--storage", url, "-n", "2", "-q", check=True)
    assert finished(url, "again") == 2
    # a target below what earlier runs finished: said so, not "2/1 done"
    proc = tuner("run", study, "--storage", url, "-q", check=True)
    assert ("study 'again' is past its target of 1 trial: earlier runs had a larger one (2 done: "
            "2 complete)") in flat(proc.stderr), proc.stderr
