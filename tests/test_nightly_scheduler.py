"""``tuner scheduler`` as a real subprocess: a cron job fired a few seconds ahead, catch-up of
the latest missed night after downtime (fake clock via the hidden ``--now``), a fire during a
running night deferred (not dropped) and run after it, SIGTERM in the middle of a night leaving
no trial RUNNING, a broken file in a scheduled folder skipped and picked up once fixed, and the
storage password never on a child's command line."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import optuna
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from test_nightly import DAY, add_night, done, nightly, nightly_file, study_of
from test_nightly_units import _toml

from tuner.nightly.nights import ATTR_VERDICT

from conftest import descendants, tuner_env

DEADLINE_S = 180.0


def start_scheduler(tmp_path: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / "scheduler.log"
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "scheduler", *args],
                            stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env or tuner_env(),
                            cwd=tmp_path)
    return proc, log


def past_night(url: str, path: Path, day: date) -> None:
    """A finished earlier night, so the sweep has run before (a first start catches nothing up)."""
    name = add_night(url, path, day, [({"optimizer": "adam", "lr": 0.01, "batch_size": 64,
                                        "decay": "constant"}, 0.9, 1)])
    optuna.load_study(study_name=name, storage=url).set_user_attr(ATTR_VERDICT, {"verdict": "ok"})


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


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
    proc, log = start_scheduler(tmp_path, str(path), "--storage", storage_url, "--cron", cron)
    try:
        wait_for("the fired night to finish", lambda: "fire: next night at" in log.read_text(),
                 proc, log)  # logged after the night's end
    finally:
        text = stop(proc, log)
    assert proc.returncode == 0, text
    assert f"scheduled fire ({path}): cron '{cron}' UTC" in text
    assert "--cron given: missed nights are not caught up (add --catch-up for that)" in text
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
    # a --cron try-out does not catch up the files' missed night (it wrote real nights)
    later = f"{(DAY + timedelta(days=1)).isoformat()}T10:00:00+00:00"
    proc, log = start_scheduler(tmp_path, str(path), "--storage", storage_url, "--now", later,
                                "--cron", "0 2 * * *")
    try:
        wait_for("the sweep to be scheduled", lambda: f"scheduled cu ({path})" in log.read_text(),
                 proc, log)
    finally:
        text = stop(proc, log)
    assert "--cron given: missed nights are not caught up" in text
    assert "catching it up now" not in text, text
    assert f"cu-{DAY + timedelta(days=1)}" not in optuna.get_all_study_names(storage=storage_url)


def test_scheduler_sigterm_leaves_no_trial_running(storage_url, tmp_path):
    # unpruned trials of a second or more: the SIGTERM lands while one is training, not in the
    # instant between two trials (a claimed, unstarted trial is re-queued without a FAIL)
    path = nightly_file(tmp_path / "s.toml", name="st", n_trials=400, epochs=1000)
    path.write_text(path.read_text().replace("seed = 0", 'seed = 0\npruner = {type = "none"}'))
    past_night(storage_url, path, DAY - timedelta(days=2))
    # the fake clock makes the night due now (catch-up), so it starts at once
    proc, log = start_scheduler(tmp_path, str(path), "--storage", storage_url, "--now",
                                f"{DAY.isoformat()}T10:00:00+00:00")
    name = f"st-{DAY}"

    seen: dict[int, float] = {}

    def running() -> bool:
        """A trial RUNNING for half a second: it is training (a claim is started at once)."""
        try:
            study = study_of(storage_url, name)
        except Exception:
            return False
        now = time.monotonic()
        for t in study.trials:
            if t.state == TrialState.RUNNING and now - seen.setdefault(t.number, now) >= 0.5:
                return True
        return False

    try:
        wait_for("a RUNNING trial", running, proc, log)
    finally:
        text = stop(proc, log)
    assert proc.returncode == 0, text
    assert "forwarding SIGTERM to 1 running night(s)" in text
    assert "exit code 143: interrupted before its verdict; trials it was training, if any, were " \
        "re-queued" in text
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


def test_a_fire_during_a_running_night_is_deferred_not_dropped(sqlite_url, tmp_path):
    """The catch-up night is still running when the cron fires (every 2 s): the fire is not
    dropped (APScheduler's max_instances would skip it) but run once the night ends, and two
    nights of the same file never run at once."""
    path = nightly_file(tmp_path / "d.toml", name="df", n_trials=4)
    past_night(sqlite_url, path, DAY - timedelta(days=1))
    proc, log = start_scheduler(tmp_path, str(path), "--storage", sqlite_url, "--cron",
                                "*/2 * * * * *", "--catch-up", "--now",
                                f"{DAY.isoformat()}T10:00:00+00:00")
    try:
        wait_for("a deferred night to run", lambda: "running the deferred night of" in log.read_text(),
                 proc, log)
        deferred = re.search(r"running the deferred night of (\S+) now", log.read_text()).group(1)
        wait_for("the deferred night to finish",
                 lambda: has_verdict(sqlite_url, f"df-{deferred}"), proc, log)
    finally:
        text = stop(proc, log)
    assert proc.returncode == 0, text
    assert re.search(rf"df: a fire for the night of {deferred} came while the night of {DAY} is "
                     "still running: deferred, it runs when that night ends", text), text
    assert "maximum number of running instances" not in text  # nothing dropped by APScheduler
    assert deferred == str(datetime.now(UTC).date()) or deferred == str(DAY)
    assert has_verdict(sqlite_url, f"df-{DAY}") and has_verdict(sqlite_url, f"df-{deferred}")
    # never two nights of the file at once: every start is followed by its end before the next
    events = [("start", m.group(1)) if m.re.pattern.startswith("running") else ("end", m.group(1))
              for line in text.splitlines()
              for m in [re.search(r"running the night of (\S+) \(pid", line)
                        or re.search(r"night df-(\S+) ended after", line)] if m]
    assert [kind for kind, _ in events[:4]] == ["start", "end", "start", "end"], events
    assert all(a[0] != b[0] for a, b in zip(events, events[1:], strict=False)), events
    assert events[0] == ("start", str(DAY)) and events[2] == ("start", deferred)


def test_a_broken_file_in_a_folder_does_not_stop_the_scheduler(sqlite_url, tmp_path):
    folder = tmp_path / "studies"
    folder.mkdir()
    nightly_file(folder / "good.toml", name="good")
    (folder / "broken.toml").write_text("[study\nname = ")
    proc, log = start_scheduler(tmp_path, str(folder), "--storage", sqlite_url, "--no-catch-up",
                                "--rescan-interval", "1")
    try:
        wait_for("the good file to be scheduled", lambda: "scheduled good" in log.read_text(), proc, log)
        text = log.read_text()
        assert f"skipping {folder / 'broken.toml'}: cannot load it ({folder / 'broken.toml'}: " \
               "invalid TOML" in text
        (folder / "broken.toml").write_text(_toml(name="fixed", schedule='cron = "0 4 * * *"'))
        wait_for("the fixed file to be scheduled", lambda: "scheduled fixed" in log.read_text(), proc, log)
    finally:
        text = stop(proc, log)
    assert proc.returncode == 0, text
    assert f"{folder / 'broken.toml'} loads again" in text
    # named explicitly, a broken file stops the scheduler at once (exit 2)
    explicit = subprocess.run([sys.executable, "-m", "tuner", "scheduler", str(folder / "nope.toml")],
                              capture_output=True, text=True, env=tuner_env(), timeout=60)
    assert explicit.returncode == 2 and "nope.toml: no such study file or folder" in explicit.stderr


def test_a_duplicate_study_name_or_an_empty_folder_does_not_stop_the_scheduler(sqlite_url, tmp_path):
    """Two files of a folder naming the same study at start: the first (path order) is
    scheduled, the other logged once as an error (not again at every rescan), the other sweeps
    scheduled, as a rescan does. A folder with nothing to schedule yet is waited on (as one with
    only broken files is), not exit 2: under a restart policy that was a restart loop."""
    folder = tmp_path / "sched"
    folder.mkdir()
    nightly_file(folder / "a.toml", name="nd")
    (folder / "b.toml").write_text((folder / "a.toml").read_text())
    nightly_file(folder / "c.toml", name="other-sweep")
    empty = tmp_path / "empty"
    empty.mkdir()
    proc, log = start_scheduler(tmp_path, str(folder), str(empty), "--storage", sqlite_url,
                                "--no-catch-up", "--rescan-interval", "1")
    try:
        wait_for("both sweeps to be scheduled", lambda: "scheduled other-sweep" in log.read_text()
                 and "scheduled nd " in log.read_text(), proc, log)
        time.sleep(3.5)  # a few rescans
    finally:
        text = stop(proc, log)
    assert proc.returncode == 0, text
    assert f"scheduled nd ({folder / 'a.toml'})" in text
    duplicate = (f"ERROR {folder / 'b.toml'} names its study 'nd' like {folder / 'a.toml'}, which "
                 "is scheduled; not scheduling it")
    assert text.count(duplicate) == 1, text
    assert "both name their study" not in text and "loads again" not in text, text

    # only an empty folder: the service runs, says so, and schedules a file once it appears
    proc, log = start_scheduler(tmp_path, str(empty), "--storage", sqlite_url, "--no-catch-up",
                                "--rescan-interval", "1")
    try:
        wait_for("the warning", lambda: "no study file can be scheduled yet" in log.read_text(),
                 proc, log)
        nightly_file(empty / "late.toml", name="late")
        wait_for("the new file to be scheduled", lambda: "scheduled late" in log.read_text(),
                 proc, log)
    finally:
        text = stop(proc, log)
    assert proc.returncode == 0, text


def test_the_storage_password_never_reaches_a_childs_command_line(pg_url, tmp_path):
    secret = "TopS3cretPw"
    url = make_url(pg_url).set(password=secret).render_as_string(hide_password=False)
    path = nightly_file(tmp_path / "p.toml", name="pw", n_trials=3)
    past_night(url, path, DAY - timedelta(days=1))
    # as under compose: the URL in TUNER_STORAGE (the scheduler's own command line is clean too)
    proc, log = start_scheduler(tmp_path, str(path), "--now", f"{DAY.isoformat()}T10:00:00+00:00",
                                env=tuner_env(TUNER_STORAGE=url))
    seen: dict[int, str] = {}
    try:
        def finished() -> bool:
            for pid in descendants(proc.pid):
                seen.setdefault(pid, cmdline(pid))
            return has_verdict(url, f"pw-{DAY}")

        wait_for("the night to finish", finished, proc, log)
    finally:
        text = stop(proc, log)
    assert proc.returncode == 0, text
    nights = [c for c in seen.values() if " nightly " in c]
    assert nights and str(path) in nights[0] and "--storage" not in nights[0], seen
    leaks = {pid: c for pid, c in seen.items() if secret in c}
    assert not leaks, f"the password is on a command line: {leaks}"
    assert secret not in text
