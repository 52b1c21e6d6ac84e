"""``tuner scheduler`` as a real subprocess: a cron job fired a few seconds ahead, catch-up of
the latest missed night after downtime (fake clock via the hidden ``--now``), and SIGTERM in the
middle of a night leaving no trial RUNNING."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import optuna
from optuna.trial import TrialState
from test_nightly import DAY, add_night, done, nightly, nightly_file, study_of

from tuner.nightly.nights import ATTR_VERDICT

from conftest import tuner_env

DEADLINE_S = 180.0


def start_scheduler(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / "scheduler.log"
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "scheduler", *args],
                            stdout=subprocess.DEVNULL, stderr=log.open("w"), env=tuner_env(),
                            cwd=tmp_path)
    return proc, log


def stop(proc: subprocess.Popen, log: Path) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return log.read_text()


def wait_for(what: str, condition, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the scheduler exited ({proc.returncode}) before {what}:\n"
                                 f"{log.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()}")
        time.sleep(0.1)


def has_verdict(url: str, name: str) -> bool:
    try:
        return ATTR_VERDICT in study_of(url, name).user_attrs
    except Exception:  # not created yet (or the tables do not exist yet)
        return False


def test_scheduler_fires_a_cron_job_a_few_seconds_ahead(storage_url, tmp_path):
    path = nightly_file(tmp_path / "f.toml", name="fire", n_trials=3)
    fire = datetime.now(UTC) + timedelta(seconds=5)
    cron = f"{fire.second} * * * * *"  # at that second of every minute: first fire in ~5 s
    proc, log = start_scheduler(tmp_path, str(path), "--storage", storage_url, "--cron", cron,
                                "--no-catch-up")
    try:
        wait_for("the fired night to finish", lambda: "verdict OK" in log.read_text(), proc, log)
    finally:
        text = stop(proc, log)
    assert proc.returncode == 0, text
    assert f"scheduled fire ({path}): cron '{cron}' UTC" in text
    ran = [line.split("running the night of ")[1][:10] for line in text.splitlines()
           if "running the night of" in line]
    assert ran, text
    night = date.fromisoformat(ran[0])
    assert night in (fire.date(), datetime.now(UTC).date())
    study = study_of(storage_url, f"fire-{night}")
    assert done(study) == 3 and len(study.trials) == 3
    assert study.user_attrs[ATTR_VERDICT]["verdict"] == "ok"
    assert f"night fire-{night} ended after" in text and "exit code 0" in text
    assert "best " in text and "scheduler stopped" in text


def test_scheduler_catches_up_the_latest_missed_night_once(storage_url, tmp_path):
    path = nightly_file(tmp_path / "c.toml", name="cu", n_trials=3)
    for back in (5, 4, 3):  # the scheduler ran these nights, then was down for three
        name = add_night(storage_url, path, DAY - timedelta(days=back),
                         [({"optimizer": "adam", "lr": 0.01, "batch_size": 64,
                            "decay": "constant"}, 0.9, 1)])
        optuna.load_study(study_name=name, storage=storage_url).set_user_attr(
            ATTR_VERDICT, {"verdict": "ok"})
    now = f"{DAY.isoformat()}T10:00:00+00:00"  # the fake clock: 8 hours after the night's 02:00
    proc, log = start_scheduler(tmp_path, str(path), "--storage", storage_url, "--now", now)
    try:
        wait_for("the caught-up night", lambda: has_verdict(storage_url, f"cu-{DAY}"), proc, log)
        wait_for("its log line", lambda: "ended after" in log.read_text(), proc, log)
    finally:
        text = stop(proc, log)
    assert proc.returncode == 0, text
    names = sorted(optuna.get_all_study_names(storage=storage_url))
    # only the latest missed night was run, not the two before it
    assert names == [f"cu-{DAY - timedelta(days=d)}" for d in (5, 4, 3, 0)]
    assert text.count("catching it up now") == 1
    assert f"the night of {DAY} was missed" in text
    assert done(study_of(storage_url, f"cu-{DAY}")) == 3


def test_scheduler_sigterm_leaves_no_trial_running(storage_url, tmp_path):
    path = nightly_file(tmp_path / "s.toml", name="st", n_trials=400, epochs=80)
    # the fake clock makes the night due now (catch-up), so it starts at once
    proc, log = start_scheduler(tmp_path, str(path), "--storage", storage_url, "--now",
                                f"{DAY.isoformat()}T10:00:00+00:00")
    name = f"st-{DAY}"

    def running() -> bool:
        try:
            study = study_of(storage_url, name)
        except Exception:
            return False
        return any(t.state == TrialState.RUNNING for t in study.trials) and done(study) >= 1

    try:
        wait_for("a RUNNING trial", running, proc, log)
    finally:
        text = stop(proc, log)
    assert proc.returncode == 0, text
    assert "forwarding SIGTERM to 1 running night(s)" in text
    assert "exit code 143: interrupted; its running trials were re-queued" in text
    study = study_of(storage_url, name)
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states
    assert TrialState.FAIL in states and TrialState.WAITING in states  # failed and re-queued
    assert ATTR_VERDICT not in study.user_attrs

    # the next run resumes the night: the re-queued trial runs first, the budget is exact
    finished = done(study)
    path.write_text(path.read_text().replace("n_trials = 400", f"n_trials = {finished + 2}"))
    resumed = nightly(path, storage_url, DAY, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    study = study_of(storage_url, name)
    assert done(study) == finished + 2
    assert TrialState.RUNNING not in [t.state for t in study.trials]
    assert ATTR_VERDICT in study.user_attrs
