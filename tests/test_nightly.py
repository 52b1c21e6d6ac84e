"""``tuner nightly`` and ``tuner history`` end to end: real storage (SQLite and PostgreSQL),
the CLI as real subprocesses. Night histories are built with ``optuna.trial.create_trial`` /
``add_trial`` where a test needs particular past nights."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import plotly.graph_objects as go
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from tuner import params as P
from tuner.config import load_study_file
from tuner.nightly.figures import choices_figure, trend_figure, verdict_markdown
from tuner.nightly.nights import ATTR_NIGHT, ATTR_VERDICT, ATTR_WARM_START, night_study_file
from tuner.nightly.regression import check_night, reevaluate
from tuner.storage import open_storage
from tuner.storage.coordination import NamedLock
from tuner.study import load_data, open_study

from conftest import flat, run_tuner, tuner_env, write_study

DAY = date(2026, 11, 25)
POLL_DEADLINE_S = 120.0


def nightly_file(path: Path, *, name: str = "nt", n_trials: int = 4, epochs: int = 3,
                 space: str | None = None, warm_start: int = 3, tolerance: float = 0.01,
                 baseline_nights: int = 3, extra: str = "") -> Path:
    """A tiny digits study file with a [schedule] section."""
    write_study(path, name=name, n_trials=n_trials, epochs=epochs, space=space)
    with path.open("a") as fh:
        fh.write(f"""
[schedule]
cron = "0 2 * * *"
timezone = "UTC"
warm_start = {warm_start}
{extra}

[schedule.regression]
tolerance = {tolerance}
baseline_nights = {baseline_nights}
spread_factor = 2.0
""")
    return path


def nightly(path: Path, url: str, day: date = DAY, *args: str, **kwargs: Any) -> subprocess.CompletedProcess:
    return run_tuner("nightly", path, "--date", day.isoformat(), "--storage", url, *args, **kwargs)


def add_night(url: str, study_path: Path, day: date,
              trials: list[tuple[dict[str, Any], float, int]]) -> str:
    """A past night built directly: each (config, value, seed) becomes a COMPLETE trial with
    the ``config`` and ``seed`` attributes the runner stores (which always include the
    batch-scaling rule: the per-optimizer default where the study file fixes none)."""
    trials = [({"batch_scaling": P.BATCH_SCALING_DEFAULTS[c["optimizer"]], **c}, v, s)
              for c, v, s in trials]
    sf = night_study_file(load_study_file(study_path), day)
    study = open_study(sf, open_storage(url))
    study.set_user_attr(ATTR_NIGHT, {"base": load_study_file(study_path).study.name,
                                     "date": day.isoformat()})
    for config, value, seed in trials:
        params, dists = {}, {}
        for key, v in config.items():
            spec = P.PARAMS[key]
            params[key] = v
            if spec.kind in ("choice", "bool"):
                dists[key] = CategoricalDistribution(list(spec.choices or (False, True)))
            elif spec.kind == "int":
                dists[key] = IntDistribution(1, 4096)
            else:
                dists[key] = FloatDistribution(1e-9, 10.0, log=True)
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, value=value,
            user_attrs={"config": config, "seed": seed}))
    return sf.study.name


def study_of(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def done(study: optuna.Study) -> int:
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


# --- idempotent nights ------------------------------------------------------------------------

def test_same_night_twice_is_one_study_with_an_exact_budget(storage_url, tmp_path):
    path = nightly_file(tmp_path / "n.toml", n_trials=5)
    first = nightly(path, storage_url, DAY, "--json", check=True)
    summary = json.loads(first.stdout)
    assert summary["study"] == "nt-2026-11-25" and summary["exit_code"] == 0
    assert summary["verdict"]["verdict"] == "ok" and summary["verdict"]["cause"] == "no_baseline"
    assert summary["ran"] == 5
    second = nightly(path, storage_url, DAY, check=True)
    assert "nt-2026-11-25" in second.stdout and "5/5 trials done" in second.stdout
    names = optuna.get_all_study_names(storage=storage_url)
    assert names == ["nt-2026-11-25"]
    study = study_of(storage_url, "nt-2026-11-25")
    assert done(study) == 5 and len(study.trials) == 5
    assert study.user_attrs[ATTR_NIGHT]["base"] == "nt"
    assert study.user_attrs[ATTR_VERDICT]["verdict"] == "ok"
    # --n-trials replaces the night's budget: one more trial, in the same study
    third = json.loads(nightly(path, storage_url, DAY, "-n", "6", "--json", check=True).stdout)
    assert third["n_trials"] == 6 and third["study"] == "nt-2026-11-25" and third["ran"] == 1
    assert done(study_of(storage_url, "nt-2026-11-25")) == 6


def test_a_finished_night_is_re_judged_with_an_edited_file(sqlite_url, tmp_path):
    """A finished night samples nothing more, so an edited choice list does not stop its
    verdict from being recomputed; a night with trials left is refused with a hint that fits
    nightly sweeps (not `tuner run --study-name`)."""
    path = nightly_file(tmp_path / "n.toml", n_trials=3)
    nightly(path, sqlite_url, DAY, check=True)
    text = path.read_text().replace('["sgd", "momentum", "adam"]', '["sgd", "adam"]')
    path.write_text(text)
    again = nightly(path, sqlite_url, DAY, check=True)
    assert "3/3 trials done" in again.stdout
    more = nightly(path, sqlite_url, DAY, "-n", "4")
    assert more.returncode == 2, more.stdout + more.stderr
    shown = flat(more.stderr)
    assert "space.optimizer: choices ['sgd', 'adam'] differ" in shown
    assert (f"tuner delete nt-2026-11-25 --storage {sqlite_url}, then tuner nightly {path} "
            f"--date 2026-11-25 --storage {sqlite_url}") in shown
    assert "--study-name" not in shown
    assert done(study_of(sqlite_url, "nt-2026-11-25")) == 3


def test_two_concurrent_nightly_runs_of_the_same_night(storage_url, tmp_path):
    path = nightly_file(tmp_path / "n.toml", n_trials=30, epochs=10)
    cmd = [sys.executable, "-m", "tuner", "nightly", str(path), "--date", DAY.isoformat(),
           "--storage", storage_url, "--quiet"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=tuner_env())
    try:
        deadline = time.monotonic() + POLL_DEADLINE_S
        # the study is created under the night's lock: once it exists, the first run holds it
        while "nt-2026-11-25" not in _names(storage_url) and first.poll() is None:
            assert time.monotonic() < deadline, "the first run never created its study"
            time.sleep(0.05)
        second = run_tuner("nightly", path, "--date", DAY.isoformat(), "--storage", storage_url)
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert second.returncode == 75, second.stderr
    assert "nightly sweep 'nt-2026-11-25' is already running in another process" in second.stderr
    study = study_of(storage_url, "nt-2026-11-25")
    assert done(study) == 30 and len(study.trials) == 30


def test_night_lock_held_elsewhere_exits_75(storage_url, tmp_path):
    path = nightly_file(tmp_path / "n.toml")
    lock = NamedLock(open_storage(storage_url), "nightly:nt-2026-11-25", what="x").acquire()
    try:
        proc = nightly(path, storage_url)
    finally:
        lock.release()
    assert proc.returncode == 75
    assert "already running in another process" in proc.stderr
    assert "nt-2026-11-25" not in _names(storage_url)
    # with --json, stdout is JSON either way (it was empty): the error and the exit code
    lock = NamedLock(open_storage(storage_url), "nightly:nt-2026-11-25", what="x").acquire()
    try:
        proc = nightly(path, storage_url, DAY, "--json")
    finally:
        lock.release()
    answer = json.loads(proc.stdout)
    assert proc.returncode == answer["exit_code"] == 75
    assert "already running in another process" in answer["error"]


def _names(url: str) -> list[str]:
    try:
        return optuna.get_all_study_names(storage=url)
    except Exception:  # the tables may not exist yet
        return []


# --- warm start ---------------------------------------------------------------------------------

YESTERDAY_SPACE = '''optimizer = ["sgd", "momentum", "adam"]
lr = {low = 1e-3, high = 0.5, log = true}
batch_size = [64, 128]
decay = ["constant", "cosine"]'''
TONIGHT_SPACE = '''optimizer = ["sgd", "adam"]
lr = {low = 1e-3, high = 0.2, log = true}
batch_size = [64, 128]
decay = ["constant", "cosine"]'''


def test_warm_start_enqueues_yesterdays_valid_top_k_first(storage_url, tmp_path):
    yesterday = nightly_file(tmp_path / "y.toml", space=YESTERDAY_SPACE, warm_start=4)
    c = {"adam": {"optimizer": "adam", "lr": 0.01, "batch_size": 64, "decay": "constant"},
         "momentum": {"optimizer": "momentum", "lr": 0.05, "batch_size": 128, "decay": "cosine"},
         "sgd_hi": {"optimizer": "sgd", "lr": 0.3, "batch_size": 64, "decay": "cosine"},
         "sgd": {"optimizer": "sgd", "lr": 0.1, "batch_size": 128, "decay": "constant"},
         "sgd_lo": {"optimizer": "sgd", "lr": 0.002, "batch_size": 64, "decay": "constant"}}
    # the night before yesterday must not be used: yesterday is the most recent earlier night
    add_night(storage_url, yesterday, DAY - timedelta(days=2), [(c["sgd_lo"], 0.99, 1)])
    add_night(storage_url, yesterday, DAY - timedelta(days=1), [
        (c["adam"], 0.97, 1), (c["momentum"], 0.96, 2), (c["sgd_hi"], 0.95, 3),
        (c["adam"], 0.94, 4),  # the same configuration again: counted once
        (c["sgd"], 0.93, 5), (c["sgd_lo"], 0.50, 6)])
    tonight = nightly_file(tmp_path / "t.toml", space=TONIGHT_SPACE, warm_start=4, n_trials=4)
    # a short try (--n-trials 1) takes yesterday's top 1 only: nothing is left WAITING past
    # the night's target
    short = nightly(tonight, storage_url, DAY, "-n", "1")
    # (the made-up values of yesterday are above what 3 epochs reach: any verdict will do here)
    assert short.returncode in (0, 4), short.stderr
    assert "2026-11-24: 1 of its top 1 configuration(s) enqueued, 0 skipped" in short.stdout
    trials = study_of(storage_url, "nt-2026-11-25").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE], trials
    optuna.delete_study(study_name="nt-2026-11-25", storage=storage_url)
    first = nightly(tonight, storage_url, DAY)
    assert first.returncode in (0, 4), first.stderr
    assert ("warm start from nt-2026-11-24: 2 of its top 4 configuration(s) enqueued, "
            "2 skipped") in first.stdout
    assert "skipped #1 (0.96): optimizer='momentum' is not one of 'sgd', 'adam'" in first.stdout
    assert "skipped #2 (0.95): lr=0.3 is outside log float [0.001, 0.2]" in first.stdout

    study = study_of(storage_url, "nt-2026-11-25")
    first_two = sorted(study.trials, key=lambda t: t.number)[:2]
    assert [t.user_attrs["warm_start"]["trial"] for t in first_two] == [0, 4]
    assert [t.user_attrs["config"] for t in first_two] == [
        {**c["adam"], "batch_scaling": "sqrt"}, {**c["sgd"], "batch_scaling": "linear"}]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in first_two)
    stored = study.user_attrs[ATTR_WARM_START]
    assert stored["source"] == "nt-2026-11-24" and [e["trial"] for e in stored["enqueued"]] == [0, 4]
    assert {s["trial"]: s["reasons"] for s in stored["skipped"]} == {
        1: ["optimizer='momentum' is not one of 'sgd', 'adam'"],
        2: ["lr=0.3 is outside log float [0.001, 0.2]"]}
    assert done(study) == 4

    # resuming the night does not enqueue again
    again = nightly(tonight, storage_url, DAY)
    assert again.returncode in (0, 4), again.stderr
    assert "done by the first run of this night" in again.stdout
    study = study_of(storage_url, "nt-2026-11-25")
    assert sum("warm_start" in t.user_attrs for t in study.trials) == 2 and len(study.trials) == 4


# --- regression verdicts on constructed histories ----------------------------------------------

POOR_SPACE = '''optimizer = "sgd"
lr = {low = 1e-4, high = 3e-4, log = true}'''


def test_regression_verdicts_and_exit_codes(storage_url, tmp_path):
    """Tonight is a real sweep (plain SGD with a tiny learning rate, so its best is modest);
    the baseline nights are constructed around numbers measured on tonight's data."""
    path = nightly_file(tmp_path / "r.toml", space=POOR_SPACE, warm_start=0, tolerance=0.01)
    first = json.loads(nightly(path, storage_url, DAY, "--json", check=True).stdout)
    tonight = first["best"]["value"]
    best_config = first["best"]["config"]
    best_seed = study_of(storage_url, "nt-2026-11-25").trials[first["best"]["trial"]].user_attrs["seed"]
    sf = night_study_file(load_study_file(path), DAY)
    splits = load_data(sf)
    # the premise of the incumbent check: same configuration, seed and data give the same value
    assert reevaluate(best_config, best_seed, sf, splits)[0] == tonight
    good = {"optimizer": "adam", "lr": 0.05}
    bad = {"optimizer": "sgd", "lr": 1e-6}
    v_good = reevaluate(good, 7, sf, splits)[0]
    v_bad = reevaluate(bad, 7, sf, splits)[0]
    assert v_good > tonight + 0.05 and v_bad < tonight - 0.05  # preconditions of the scenarios

    rule = load_study_file(path).schedule.regression

    def scenario(bests: list[tuple], *, cli: bool = False, night_sf: Any = None,
                 night_file: Path = path) -> tuple[int, dict]:
        """Replace the baseline nights with ``bests`` (oldest first, one night each: config,
        value, seed and optionally the night's verdict) and check tonight again: in-process, or
        by rerunning ``tuner nightly`` (a resume)."""
        for name in optuna.get_all_study_names(storage=storage_url):
            if name != "nt-2026-11-25":
                optuna.delete_study(study_name=name, storage=storage_url)
        for i, (config, value, seed, *verdict) in enumerate(bests):
            name = add_night(storage_url, night_file, DAY - timedelta(days=len(bests) - i),
                             [(config, value, seed)])
            if verdict:  # the night's own stored verdict
                study_of(storage_url, name).set_user_attr(ATTR_VERDICT, verdict[0])
        if cli:
            proc = nightly(path, storage_url, DAY, "--json")
            verdict = json.loads(proc.stdout)["verdict"]
            assert study_of(storage_url, "nt-2026-11-25").user_attrs[ATTR_VERDICT] == verdict
            return proc.returncode, verdict
        storage = open_storage(storage_url)  # fresh: deleted studies' ids may be reused
        study = optuna.load_study(study_name="nt-2026-11-25", storage=storage)
        result = check_night(study, night_sf or sf, storage, base="nt", day=DAY, rule=rule,
                             splits=splits)
        assert study_of(storage_url, "nt-2026-11-25").user_attrs[ATTR_VERDICT] == result.as_dict()
        return result.exit_code, result.as_dict()

    # a noisy equal night: the baseline is tonight's own configuration a little above and below
    code, v = scenario([(best_config, tonight + 0.004, best_seed), (good, tonight - 0.003, 1),
                        (good, tonight + 0.002, 1)])
    assert (code, v["verdict"], v["cause"]) == (0, "ok", None), v
    assert v["incumbent"]["tonight"] == tonight and v["drift"] == pytest.approx(-0.004)

    # genuinely worse: the incumbent scored 0.06 more on the baseline nights' data than it does
    # tonight, and tonight's sweep found nothing better: data drift (exit code 4)
    code, v = scenario([(best_config, tonight + 0.06, best_seed), (good, tonight + 0.05, 1),
                        (good, tonight + 0.055, 1)], cli=True)
    assert (code, v["verdict"], v["cause"]) == (4, "regression", "data"), v
    assert v["drift"] == pytest.approx(-0.06)
    assert v["baseline"]["level"] == pytest.approx(tonight + 0.055)

    # search-shortfall nights do not drag the baseline down: each enters it at what it had
    # available (its incumbent re-trained on its data), not at its unlucky sweep's best. Here
    # two of the three baseline nights fell short (0.45 below) while the incumbent held at
    # tonight + 0.06; tonight the incumbent lost those 0.06. With the nights' sweep bests the
    # median was the shortfall and tonight looked like an improvement.
    held = {"verdict": "ok", "cause": "search", "available": tonight + 0.06, "incumbent": {
        "night": "nt-2026-11-22", "date": "2026-11-22", "trial": 0, "value": tonight + 0.06,
        "config": best_config, "seed": best_seed, "tonight": tonight + 0.06}}
    code, v = scenario([(best_config, tonight + 0.06, best_seed), (bad, v_bad, 7, held),
                        (bad, v_bad - 0.01, 8, held)])
    assert (code, v["verdict"], v["cause"]) == (4, "regression", "data"), v
    assert [n["value"] for n in v["baseline"]["nights"]] == pytest.approx([tonight + 0.06] * 3)
    assert [n["best"] for n in v["baseline"]["nights"]][1:] == pytest.approx([v_bad, v_bad - 0.01])
    assert v["baseline"]["spread"] == 0.0 and v["drift"] == pytest.approx(-0.06)
    assert v["incumbent"]["scored_on"] == "nt-2026-11-24" and v["incumbent"]["tonight"] == tonight

    # an improvement found by the search: the incumbent (a poor configuration) re-scores exactly
    # as stored, and tonight's sweep beats the baseline
    code, v = scenario([(bad, v_bad, 7), (bad, v_bad - 0.01, 8), (bad, v_bad - 0.005, 9)])
    assert (code, v["verdict"], v["cause"]) == (0, "improvement", "search"), v
    assert v["drift"] == pytest.approx(0.0)

    # [space] edited since the baseline nights (theirs held adam, lr 0.05; tonight's: sgd, lr
    # <= 3e-4): the sweep falls short because of the edit, not by luck, and no budget makes up
    # for it (it said "ok (search)", exit 0)
    wide = nightly_file(tmp_path / "wide.toml", space='optimizer = ["sgd", "adam"]\n'
                        'lr = {low = 1e-4, high = 0.1, log = true}', warm_start=0, tolerance=0.01)
    nights = [(good, v_good - 0.002, 8), (good, v_good, 7), (good, v_good - 0.001, 9)]
    code, v = scenario(nights, night_file=wide)
    assert (code, v["verdict"], v["cause"]) == (4, "regression", "space"), v
    assert v["incumbent"]["tonight"] == v_good and v["available"] == v_good
    assert "[space] was edited (space.lr.high: 0.1 -> 0.0003" in v["message"], v["message"]
    assert ("no longer holds the incumbent (optimizer is fixed to 'sgd' tonight (was 'adam')"
            in v["message"]) and "Restore those keys to search it again" in v["message"]

    # the nights after the edit, under the same space: the accepted edit's shortfall, exit 0
    code, v = scenario(nights)
    assert (code, v["verdict"], v["cause"]) == (0, "ok", "space"), v
    assert "tonight's search space does not hold the incumbent (optimizer is fixed" in v["message"]

    # search luck: the same nights under a space that holds the incumbent (as if the sweep of
    # this wide space had found only tonight's best): a shortfall, not a regression
    code, v = scenario(nights, night_file=wide, night_sf=night_study_file(load_study_file(wide), DAY))
    assert (code, v["verdict"], v["cause"]) == (0, "ok", "search"), v
    assert v["incumbent"]["tonight"] == v_good and v["available"] == v_good

    # its budget is spent: only the verdict again, and as the night ran (its own narrow space,
    # not the wide file's of this command: the sweep could not find the incumbent)
    proc = nightly(wide, storage_url, DAY)
    assert proc.returncode == 4, proc.stderr
    shown = flat(proc.stdout)
    assert (f"night nt-2026-11-25 had finished: judged with the study file it ran, not with {wide} "
            "as it is now (space.lr.high: 0.0003 -> 0.1") in shown, shown
    assert "verdict: REGRESSION (space)" in shown and "re-trained on tonight's data" in shown


def test_a_night_without_result_exits_1(sqlite_url, tmp_path):
    path = nightly_file(tmp_path / "f.toml", n_trials=3)
    proc = nightly(path, sqlite_url, DAY, "--json",
                   env=tuner_env(TUNER_INJECT_FAULT="exception"))
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["stopped"] == "fail_fast" and summary["verdict"]["verdict"] == "no_result"


def test_a_night_without_result_shows_its_baseline_sensibly(sqlite_url, tmp_path):
    """Every trial failed (NO_RESULT) after three nights: no "trial #None" and no blank
    median, in the printed verdict and in the dashboard's / report's verdict table."""
    path = nightly_file(tmp_path / "f.toml", n_trials=3)
    config = {"optimizer": "adam", "lr": 0.01, "batch_size": 64, "decay": "constant"}
    for back, value in ((3, 0.9638), (2, 0.9666), (1, 0.9610)):
        add_night(sqlite_url, path, DAY - timedelta(days=back), [(config, value, 1)])
    proc = nightly(path, sqlite_url, DAY, "--quiet", env=tuner_env(TUNER_INJECT_FAULT="exception"))
    assert proc.returncode == 1, proc.stderr
    out = " ".join(proc.stdout.split())
    assert "tonight's best val_accuracy: none (no COMPLETE trial)" in out, out
    assert ("(3 night(s): 2026-11-22, 2026-11-23, 2026-11-24): median 0.9638, best 0.9666, "
            "spread (scaled MAD) 0.0042, margin 0.0100 (tolerance 0.0100)") in out, out
    assert "#None" not in out and "median -" not in out
    verdict = study_of(sqlite_url, f"nt-{DAY}").user_attrs[ATTR_VERDICT]
    assert verdict["verdict"] == "no_result" and verdict["baseline"]["level"] == pytest.approx(0.9638)
    storage = open_storage(sqlite_url)
    study = optuna.load_study(study_name=f"nt-{DAY}", storage=storage)
    text = verdict_markdown(SimpleNamespace(study=study, study_file=None, storage=storage, options={}))
    assert "| tonight's best | – (no COMPLETE trial) |" in text, text
    assert "| baseline: median of 3 nights | 0.9638 |" in text, text
    assert ("| best available tonight (sweep or incumbent) − baseline | – (nothing to compare: "
            "tonight has no result) |") in text
    assert "#None" not in text


def test_dates_bad_future_back_filled_and_long_past(sqlite_url, tmp_path):
    proc = nightly(nightly_file(tmp_path / "n.toml"), sqlite_url, DAY, "--date", "25.11.2026")
    assert proc.returncode == 2 and "expected a date as YYYY-MM-DD" in proc.stderr
    # a night in the future would become every later command's "latest night"
    ahead = (date.today() + timedelta(days=400)).isoformat()
    proc = nightly(nightly_file(tmp_path / "n.toml"), sqlite_url, DAY, "--date", ahead)
    assert proc.returncode == 2 and f"--date {ahead} is after today" in proc.stderr
    for option, fragment in ((("-n", "0"), "--n-trials 0: must be greater than or equal to 1"),
                             (("--timeout", "-1"), "--timeout -1.0: must be greater than 0")):
        proc = nightly(nightly_file(tmp_path / "n.toml"), sqlite_url, DAY, *option)
        assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr
    # a night run after a later judged one (a back-fill) says that one did not count it
    path = nightly_file(tmp_path / "b.toml", name="bf", n_trials=1)
    quiet = tuner_env(TUNER_DASHBOARD_VIEWS="0")
    nightly(path, sqlite_url, DAY, check=True, env=quiet)
    back = nightly(path, sqlite_url, DAY - timedelta(days=1), check=True, env=quiet)
    hint = (f"note: later night(s) were judged before this result (2026-11-25 without this one); "
            f"to judge one again without running more trials: tuner nightly {path} --date "
            f"2026-11-25 -n 1 --storage {sqlite_url}")
    assert hint in flat(back.stdout), back.stdout
    again = nightly(path, sqlite_url, DAY, "-n", "1", "--json", check=True, env=quiet)
    judged = json.loads(again.stdout)["verdict"]
    assert [b["date"] for b in judged["baseline"]["nights"]] == ["2026-11-24"]
    assert done(study_of(sqlite_url, "bf-2026-11-25")) == 1  # re-judged, nothing more ran
    quiet_now = nightly(path, sqlite_url, DAY - timedelta(days=1), check=True, env=quiet)
    assert "note: later night(s)" not in quiet_now.stdout  # 11-25 counted it as it is
    for text, fragment in (("20261125", "expected a date as YYYY-MM-DD"),
                           ("2026-02-30", "--date 2026-02-30: not a date (day is out of range")):
        proc = nightly(path, sqlite_url, DAY, "--date", text)
        assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr
    # a year long past (a typo?) runs, with a warning: the night stays in every trend
    old = nightly(nightly_file(tmp_path / "n.toml", n_trials=1), sqlite_url, date(2020, 1, 1),
                  env=tuner_env(TUNER_DASHBOARD_VIEWS="0"))
    assert old.returncode == 0, old.stderr
    assert "warning: --date 2020-01-01 is" in flat(old.stderr) and "tuner delete it" in old.stderr


def test_a_broken_nightly_dashboard_file_is_reported_once(sqlite_url, tmp_path):
    """A broken ``nightly.toml`` in ``$TUNER_DASHBOARDS``: the night runs and gets its verdict,
    and the error is printed once (every refresh of the views, during the sweep and after the
    verdict, used to print it again)."""
    dashboards = tmp_path / "dashboards"
    dashboards.mkdir()
    (dashboards / "nightly.toml").write_text('[[panel]\ntype = "nightly_trend"\n')
    path = nightly_file(tmp_path / "n.toml", n_trials=3)
    proc = nightly(path, sqlite_url, DAY, "--quiet", env=tuner_env(TUNER_DASHBOARDS=str(dashboards)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("invalid TOML") == 1, proc.stderr
    assert (f"warning: the dashboard views of nt-{DAY} will not be stored (the night runs without "
            f"them): DashboardError: {dashboards / 'nightly.toml'}: invalid TOML") in proc.stderr
    assert study_of(sqlite_url, f"nt-{DAY}").user_attrs[ATTR_VERDICT]["verdict"] == "ok"


# --- history and trend views --------------------------------------------------------------------

def test_history_and_trend_views(sqlite_url, tmp_path):
    path = nightly_file(tmp_path / "h.toml", n_trials=3, warm_start=2, baseline_nights=2)
    for offset in (2, 1, 0):
        nightly(path, sqlite_url, DAY - timedelta(days=offset), "--quiet", check=True)
    proc = run_tuner("history", "nt", "--storage", sqlite_url, check=True)
    for day in ("2026-11-23", "2026-11-24", "2026-11-25"):
        assert day in proc.stdout
    assert "ok (no_baseline)" in proc.stdout and "2 in, 0 skipped" in proc.stdout
    records = json.loads(run_tuner("history", "nt", "--storage", sqlite_url, "--json",
                                   check=True).stdout)
    assert [r["date"] for r in records] == ["2026-11-23", "2026-11-24", "2026-11-25"]
    assert all(r["counts"]["COMPLETE"] + r["counts"]["PRUNED"] == 3 for r in records)
    assert all(r["config"]["optimizer"] in ("sgd", "momentum", "adam") for r in records)
    assert records[-1]["verdict"]["baseline"]["nights"][0]["date"] == "2026-11-23"
    missing = run_tuner("history", "nope", "--storage", sqlite_url)
    assert missing.returncode == 2 and "no nights of 'nope'" in missing.stderr
    assert "sweeps with nights here: nt (tuner history nt" in " ".join(missing.stderr.split())
    # a night with unfinished trials (cut short, or running) says so beside its verdict
    optuna.load_study(study_name="nt-2026-11-24", storage=sqlite_url).enqueue_trial(
        {"optimizer": "sgd"}, skip_if_exists=False)
    proc = run_tuner("history", "nt", "--storage", sqlite_url, check=True, env=tuner_env(COLUMNS="250"))
    row = next(line for line in proc.stdout.splitlines() if "2026-11-24" in line)
    assert "(1 waiting)" in row

    storage = open_storage(sqlite_url)
    study = optuna.load_study(study_name="nt-2026-11-25", storage=storage)
    ctx = SimpleNamespace(study=study, study_file=None, storage=storage, options={})
    trend = trend_figure(ctx)
    assert isinstance(trend, go.Figure)
    best = next(t for t in trend.data if t.name == "best of the night")
    assert list(best.x) == ["2026-11-23", "2026-11-24", "2026-11-25"]
    assert list(best.y) == [r["best_value"] for r in records]
    assert any(t.name == "baseline ± margin" for t in trend.data)
    assert any(t.name == "incumbent re-trained on the night's data" for t in trend.data)
    # daily data on a daily axis: whole dates, one tick a night (not plotly's hourly ticks)
    assert trend.layout.xaxis.tickformat == "%Y-%m-%d" and trend.layout.xaxis.dtick == 86_400_000
    choices = choices_figure(SimpleNamespace(study=study, study_file=None, storage=sqlite_url,
                                             options={"last": 2}))
    assert [list(t.y) for t in choices.data[:1]] == [[r["config"]["optimizer"] for r in records[-2:]]]
    assert choices.layout.xaxis4.tickformat == "%Y-%m-%d" and choices.layout.yaxis4.type == "log"
    assert choices.layout.yaxis4.tickvals, "the LR axis has explicit, uncrowded ticks"
    text = verdict_markdown(ctx)
    assert text.startswith("### Nightly verdict for `nt-2026-11-25`")
    assert "incumbent re-trained on tonight's data" in text
    # the night's study carries the nightly views *and* the study views for optuna-dashboard
    from optuna_dashboard import get_note

    from tuner.dashboard.attach import tuner_graph_object_ids

    stored = set(tuner_graph_object_ids(study))
    assert {"tuner-nightly_trend", "tuner-nightly_choices", "tuner-learning_curves",
            "tuner-lr_schedule", "tuner-group_best", "tuner-effective_lr", "tuner-reference_gap",
            "tuner-importances", "tuner-history"} <= stored, stored
    note = get_note(study)
    assert "Nightly verdict for `nt-2026-11-25`" in note and "Best trial #" in note
    other = SimpleNamespace(study=optuna.create_study(study_name="plain"), study_file=None,
                            storage=sqlite_url, options={"base": "nt"})
    assert [t.name for t in trend_figure(other).data] == [t.name for t in trend.data]
    # base: the verdict of that sweep's latest night; last: a table of its last nights' verdicts
    assert verdict_markdown(other).startswith("### Nightly verdict for `nt-2026-11-25`")
    other.options = {}
    assert "is not a night of a nightly sweep" in verdict_markdown(other)
    table = verdict_markdown(SimpleNamespace(study=study, study_file=None, storage=storage,
                                             options={"last": 2}))
    assert table.startswith("### Nightly verdict for `nt-2026-11-25`")
    assert "Last 2 night(s) of `nt`:" in table
    assert "| 2026-11-24 | ok" in table and "| 2026-11-25 |" in table and "2026-11-23 |" not in table


def test_history_shows_the_incumbent_drift_signed_as_tuner_nightly_does(sqlite_url, tmp_path):
    """One format for the drift column: signed, four decimals (``tuner nightly`` prints
    ``drift +0.0000``); it mixed ``0.0000`` and ``-0.04457``."""
    path = nightly_file(tmp_path / "h.toml")
    config = {"optimizer": "adam", "lr": 0.01, "batch_size": 64, "decay": "constant"}
    for back, drift in ((3, None), (2, 0.0), (1, -0.04457), (0, 0.0123)):
        name = add_night(sqlite_url, path, DAY - timedelta(days=back), [(config, 0.95, 1)])
        verdict = {"verdict": "ok", "drift": drift, "incumbent": None if drift is None else {}}
        study_of(sqlite_url, name).set_user_attr(ATTR_VERDICT, verdict)
    proc = run_tuner("history", "nt", "--storage", sqlite_url, check=True,
                     env=tuner_env(COLUMNS="250"))
    drifts = {day: next(line for line in proc.stdout.splitlines() if day in line)
              for day in ("2026-11-22", "2026-11-23", "2026-11-24", "2026-11-25")}
    assert "+0.0000" in drifts["2026-11-23"], proc.stdout
    assert "-0.0446" in drifts["2026-11-24"] and "-0.04457" not in proc.stdout, proc.stdout
    assert "+0.0123" in drifts["2026-11-25"], proc.stdout
    assert "0.0000" not in drifts["2026-11-22"], proc.stdout


def test_a_changed_data_file_is_told_apart_from_the_same_data(sqlite_url, tmp_path):
    """A sweep on a CSV file: the next night on the same bytes re-scores the incumbent exactly
    (data unchanged); after the file is edited (a third of the labels scrambled), the verdict
    says the data file changed, and the regression is data drift, in the verdict, the printed
    lines and tuner history."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import load_digits

    digits = load_digits()
    frame = pd.DataFrame(digits.data, columns=[f"p{i}" for i in range(64)])
    frame["digit"] = digits.target
    csv = tmp_path / "digits.csv"
    frame.to_csv(csv, index=False)
    path = nightly_file(tmp_path / "d.toml", n_trials=3, warm_start=1, baseline_nights=2)
    path.write_text(path.read_text().replace('dataset = "digits"',
                                             'dataset = "digits.csv"\ntarget = "digit"'))
    quick = tuner_env(TUNER_DASHBOARD_VIEWS="0")  # the views are not what this test is about
    nightly(path, sqlite_url, DAY - timedelta(days=2), "--quiet", check=True, env=quick)
    same = json.loads(nightly(path, sqlite_url, DAY - timedelta(days=1), "--json",
                              check=True, env=quick).stdout)["verdict"]
    assert same["data"]["changed"] is False and same["drift"] == 0.0, same
    assert same["data"]["since"] == "nt-2026-11-23"

    rng = np.random.default_rng(0)
    scrambled = rng.random(len(frame)) < 0.35
    frame.loc[scrambled, "digit"] = rng.integers(0, 10, scrambled.sum())
    frame.to_csv(csv, index=False)
    proc = nightly(path, sqlite_url, DAY, env=quick)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    shown = flat(proc.stdout)
    assert "data file: changed since nt-2026-11-" in shown, shown
    assert "data drift (the data file changed)" in shown, shown
    verdict = study_of(sqlite_url, "nt-2026-11-25").user_attrs[ATTR_VERDICT]
    assert verdict["data"]["changed"] is True and verdict["drift"] < -0.1
    assert verdict["data"]["tonight"] != verdict["data"]["incumbent"]
    history = run_tuner("history", "nt", "--storage", sqlite_url, check=True,
                        env=tuner_env(COLUMNS="250")).stdout
    rows = {day: next(line for line in history.splitlines() if day in line)
            for day in ("2026-11-24", "2026-11-25")}
    assert "(new data)" in rows["2026-11-25"] and "data)" not in rows["2026-11-24"], history
    ctx = SimpleNamespace(study=study_of(sqlite_url, "nt-2026-11-25"), study_file=None,
                          storage=sqlite_url, options={})
    assert "| data file since `nt-2026-11-2" in verdict_markdown(ctx)
    assert "changed (`" in verdict_markdown(ctx)
    # judging the clean night again: its data is gone, so its stored verdict stands
    before = study_of(sqlite_url, "nt-2026-11-24").user_attrs[ATTR_VERDICT]
    again = nightly(path, sqlite_url, DAY - timedelta(days=1), env=quick)
    assert again.returncode == 0, again.stdout + again.stderr
    shown = flat(again.stdout)
    assert ("not judged again: the data file digits.csv changed since night nt-2026-11-24 "
            "trained on it (contents ") in shown and "its stored verdict stands" in shown, shown
    assert study_of(sqlite_url, "nt-2026-11-24").user_attrs[ATTR_VERDICT] == before
    # the same when the file it trained on is gone (moved, and the study file edited to follow)
    csv.rename(tmp_path / "moved.csv")
    path.write_text(path.read_text().replace('"digits.csv"', '"moved.csv"'))
    again = nightly(path, sqlite_url, DAY - timedelta(days=1), env=quick)
    assert again.returncode == 0, again.stdout + again.stderr
    shown = flat(again.stdout)
    assert "not judged again: the data file digits.csv it trained on cannot be read now (" in shown, shown
    assert "data file not found); its stored verdict stands" in shown, shown


def test_an_edited_training_set_up_is_not_blamed_on_the_data(sqlite_url, tmp_path):
    """Fewer epochs tonight: the incumbent, re-trained with tonight's set-up, loses accuracy.
    That is the edit, not data drift: the verdict names the edited keys (cause setup), on the
    night of the edit only."""
    path = nightly_file(tmp_path / "e.toml", n_trials=3, epochs=5, space=POOR_SPACE,
                        warm_start=0)
    quick = tuner_env(TUNER_DASHBOARD_VIEWS="0")
    nightly(path, sqlite_url, DAY - timedelta(days=1), "--quiet", check=True, env=quick)
    path.write_text(path.read_text().replace("epochs = 5", "epochs = 1"))
    proc = nightly(path, sqlite_url, DAY, env=quick)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    shown = flat(proc.stdout)
    assert ("study file: [data]/[model] changed since nt-2026-11-24: model.epochs: 5 -> 1"
            in shown), shown
    assert "REGRESSION (setup)" in shown and "set-up drift (the study file's training set-up " \
        "changed: model.epochs: 5 -> 1)" in shown, shown
    verdict = study_of(sqlite_url, "nt-2026-11-25").user_attrs[ATTR_VERDICT]
    assert verdict["cause"] == "setup" and verdict["data"]["setup_changes"] == ["model.epochs: 5 -> 1"]
    assert "changed" not in verdict["data"]  # digits: no data file to compare
    # said once: the next night is judged against the nights under the new set-up
    after = nightly(path, sqlite_url, DAY + timedelta(days=1), env=quick)
    assert after.returncode == 0, after.stdout + after.stderr
    shown = flat(after.stdout)
    assert ("baseline: only nights with tonight's [data]/[model] set-up (1 night(s) with another "
            "passed over)") in shown and "nt-2026-11-25" in shown, shown
    # the edit reverted: judging the edited night again keeps its own set-up (and verdict) ...
    path.write_text(path.read_text().replace("epochs = 1", "epochs = 5"))
    again = nightly(path, sqlite_url, DAY, env=quick)
    assert again.returncode == 4, again.stdout + again.stderr
    shown = flat(again.stdout)
    assert (f"night nt-2026-11-25 had finished: judged with the study file it ran, not with "
            f"{path} as it is now (model.epochs: 1 -> 5)") in shown, shown
    assert "REGRESSION (setup)" in shown, shown
    # ... and the next night's baseline is the nights of its set-up, the two others passed over
    later = json.loads(nightly(path, sqlite_url, DAY + timedelta(days=2), "--json",
                               env=quick).stdout)["verdict"]
    assert [b["date"] for b in later["baseline"]["nights"]] == ["2026-11-24"], later
    assert later["data"]["baseline_left_out"] == 2, later


def test_sigterm_after_the_sweep_ends_the_night_with_143(sqlite_url, tmp_path):
    """SIGTERM while a finished night is re-judged and its views are rebuilt (a few seconds
    after its warm-start line) stops it with 143: a view that could not be built was caught as
    an ordinary error, and the night went on to exit 0."""
    path = nightly_file(tmp_path / "t.toml", n_trials=3)
    nightly(path, sqlite_url, DAY, "--quiet", check=True)
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "nightly", str(path), "--date",
                             DAY.isoformat(), "--storage", sqlite_url, "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=tuner_env())
    first = proc.stdout.readline()
    assert first.startswith("warm start:"), first
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=POLL_DEADLINE_S)
    assert proc.returncode == 143, (proc.returncode, first + out, err)
    said = flat(out + err)
    assert ("terminated (SIGTERM) outside the sweep" in said
            or "no verdict: SIGTERM came as the night's last trial finished" in said), said
    assert not [t for t in study_of(sqlite_url, f"nt-{DAY}").trials if t.state == TrialState.RUNNING]


# --- hints and study files carry the storage ---------------------------------------------------

def test_hints_carry_the_storage_and_commands_take_the_study_file(pg_url, tmp_path):
    """`tuner nightly` on a study file whose study.storage is not the default ends with a
    `tuner history` hint that works as printed; history, report and dashboard take the study
    file and find the same storage; a password never appears in a hint."""
    db = tmp_path / "elsewhere.db"
    path = nightly_file(tmp_path / "s.toml", n_trials=2)
    path.write_text(path.read_text().replace("[study]\n", f'[study]\nstorage = "sqlite:///{db}"\n', 1))
    proc = run_tuner("nightly", path, "--date", DAY.isoformat(), "--quiet", cwd=tmp_path, check=True)
    hint = next(line for line in proc.stdout.splitlines() if "history: tuner history" in line)
    command = hint.split("history: ", 1)[1].split(" · ")[0]
    assert command == f"tuner history nt --storage sqlite:///{db}", hint
    followed = run_tuner(*shlex.split(command)[1:], cwd=tmp_path, check=True)
    assert str(DAY) in followed.stdout
    # the study file in place of the name: its study.storage is used
    by_file = run_tuner("history", path, "--json", cwd=tmp_path, check=True)
    assert [r["date"] for r in json.loads(by_file.stdout)] == [str(DAY)]
    report = run_tuner("report", path, "-o", tmp_path / "night.html", cwd=tmp_path, check=True)
    assert "wrote" in report.stdout and 'data-panel="nightly_trend"' in (tmp_path / "night.html").read_text()
    # the sweep's name in place of a study's: report takes its latest night, others hint at it
    storage = ("--storage", f"sqlite:///{db}")
    by_base = run_tuner("report", "nt", *storage, "-o", tmp_path / "base.html", cwd=tmp_path,
                        check=True)
    assert "wrote" in by_base.stdout and f"nt-{DAY}" in (tmp_path / "base.html").read_text()
    assert f"nt is a nightly sweep: reporting its latest night, nt-{DAY}" in flat(by_base.stderr)
    show = run_tuner("show", "nt", *storage, cwd=tmp_path)
    assert show.returncode == 2 and "Traceback" not in show.stderr, show.stderr
    assert (f"'nt' is a nightly sweep; its nights are the studies nt-YYYY-MM-DD (latest: nt-{DAY})"
            in " ".join(show.stderr.split())), show.stderr
    assert f"every night: tuner history nt --storage sqlite:///{db}" in " ".join(show.stderr.split())
    night = run_tuner("history", f"nt-{DAY}", *storage, cwd=tmp_path)
    assert night.returncode == 2 and (f"'nt-{DAY}' is one night of the sweep 'nt': tuner history nt"
                                      in " ".join(night.stderr.split())), night.stderr
    assert not (tmp_path / "tuner.db").exists(), "nothing looked at the default storage"
    # a password is never printed, in a hint or anywhere else
    secret = "H1nt-S3cret"
    url = make_url(pg_url).set(password=secret).render_as_string(hide_password=False)
    proc = nightly(path, url, DAY, "--quiet", check=True)
    assert secret not in proc.stdout + proc.stderr
    assert "history: tuner history nt --storage" in proc.stdout


def test_a_reader_that_goes_away_does_not_stop_the_night(sqlite_url, tmp_path):
    """``tuner nightly ... | head -1`` (or a cron wrapper that stops reading): the first write to
    the closed pipe used to end the sweep with exit 1 and no verdict; now the output is dropped
    and the night finishes, its verdict stored and its exit code the verdict's."""
    path = nightly_file(tmp_path / "n.toml")
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "nightly", str(path), "--date",
                             DAY.isoformat(), "--storage", sqlite_url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=tuner_env(), cwd=tmp_path)
    proc.stdout.close()  # nobody reads the output
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    study = optuna.load_study(study_name="nt-2026-11-25", storage=sqlite_url)
    assert study.user_attrs[ATTR_VERDICT]["verdict"] == "ok"
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials) == 4
