"""Nightly sweeps, in-process: the verdict rule on constructed numbers, cron and catch-up with a
fake clock, warm-start mapping across search-space changes, and the [schedule] section."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from tuner.config import RegressionRule, load_study_file, parse_study_dict
from tuner.errors import ConfigError, TunerError
from tuner.nightly.cron import _weekdays, cron_trigger, last_fire_time, night_of
from tuner.nightly.figures import broken_at_gaps, date_axis, log_ticks, verdict_key
from tuner.nightly.nights import (
    ATTR_NIGHT,
    ATTR_VERDICT,
    base_of,
    list_nights,
    night_date,
    night_name,
    night_study_file,
    schedule_lines,
    schedule_summary,
    sweep_base,
    today,
    verdict_label,
)
from tuner.nightly.regression import EXIT_CODES, _message, judge, noise_margin
from tuner.nightly.scheduler import (
    Scan,
    SchedulerService,
    catch_up,
    collect_study_files,
    due_night,
    make_sweeps,
    start_sweeps,
)
from tuner.nightly.warmstart import map_config
from tuner.storage import open_storage
from tuner.study import open_study

RULE = RegressionRule(tolerance=0.005, baseline_nights=3, spread_factor=2.0)


def catch_up_night(sweep, now: datetime):
    """The night :func:`catch_up` would run, or ``None``."""
    return catch_up(sweep, now)[0]


# --- the verdict rule ------------------------------------------------------------------------

def test_noisy_equal_night_is_not_flagged():
    # tonight 0.952 vs nightly bests 0.957 / 0.951 / 0.955: the max would say -0.005, but the
    # median (0.955) and a spread-aware margin say noise
    j = judge("maximize", 0.952, [0.957, 0.951, 0.955], RULE,
              incumbent_stored=0.957, incumbent_tonight=0.955)
    assert j.verdict == "ok" and j.cause is None
    assert j.level == pytest.approx(0.955)
    # spread: 1.4826 x the median absolute deviation (|0.002|, |0.004|, 0 -> 0.002)
    assert j.spread == pytest.approx(1.4826 * 0.002)
    assert j.margin == pytest.approx(max(0.005, 2 * 1.4826 * 0.002))
    # noisier nights widen the margin, so an equal night stays unflagged
    noisy = judge("maximize", 0.94, [0.957, 0.935, 0.95, 0.941, 0.962], RULE,
                  incumbent_stored=0.962, incumbent_tonight=0.958)
    assert noisy.verdict == "ok" and noisy.margin > 0.005


def test_one_bad_night_does_not_blind_the_check():
    """The audit's case: two nights at 0.9638 and one at 0.8468. The standard deviation (0.0675)
    made the margin 0.135, so tonight's 0.90 (the incumbent itself lost 0.064 on tonight's data)
    was 'ok'; the median absolute deviation ignores the outlier."""
    j = judge("maximize", 0.90, [0.9638, 0.9638, 0.8468], RULE,
              incumbent_stored=0.9638, incumbent_tonight=0.90)
    assert (j.verdict, j.cause) == ("regression", "data"), j
    assert j.spread == 0.0 and j.margin == RULE.tolerance and j.level == pytest.approx(0.9638)
    without = judge("maximize", 0.90, [0.9638, 0.9638], RULE, incumbent_stored=0.9638,
                    incumbent_tonight=0.90)
    assert (without.verdict, without.cause) == ("regression", "data")
    # with two bad nights out of three the median itself moves, but the incumbent's own drop
    # beyond the margin is still a data regression
    dragged = judge("maximize", 0.90, [0.9638, 0.8468, 0.8902], RULE, incumbent_stored=0.9638,
                    incumbent_tonight=0.90)
    assert dragged.delta >= -dragged.margin and (dragged.verdict, dragged.cause) == ("regression", "data")
    assert "the incumbent lost 0.0638 on tonight's data, more than the margin" in \
        _message(dragged)
    # an incumbent drop within the margin (noise) stays ok
    small = judge("maximize", 0.96, [0.9638, 0.9638, 0.8468], RULE, incumbent_stored=0.9638,
                  incumbent_tonight=0.9610)
    assert (small.verdict, small.cause) == ("ok", None)


def test_the_margin_has_a_floor_and_a_cap():
    # floor: identical nights (spread 0) still allow the tolerance
    flat = judge("maximize", 0.953, [0.955, 0.955, 0.955], RULE)
    assert flat.margin == RULE.tolerance and flat.verdict == "ok"
    # cap: two wildly different nights (a spread of 0.12) widen the margin to 5 % of the level
    # at most: a 0.07 drop is still flagged
    wild = judge("maximize", 0.81, [0.96, 0.80], RULE)
    assert wild.verdict == "regression" and wild.delta == pytest.approx(-0.07)
    assert wild.spread == pytest.approx(1.4826 * 0.08)
    assert wild.margin == pytest.approx(0.05 * 0.88)
    assert noise_margin(0.88, 1.0, RULE) == pytest.approx(0.044)
    assert noise_margin(0.01, 1.0, RULE) == RULE.tolerance  # the cap never goes below the floor
    assert judge("maximize", 0.83, [0.96, 0.90, 0.93], RULE).verdict == "regression"


def test_a_search_shortfall_is_reported_distinctly():
    j = judge("maximize", 0.80, [0.957, 0.951, 0.955], RULE,
              incumbent_stored=0.957, incumbent_tonight=0.957)
    assert (j.verdict, j.cause) == ("ok", "search") and EXIT_CODES[j.verdict] == 0
    assert _message(j).startswith("search shortfall: tonight's sweep is -0.1550")


def test_an_ok_night_held_by_the_incumbent_says_so():
    """Tonight's sweep fell a little short, within the margin; what passed is the incumbent
    re-trained on tonight's data: the message says which."""
    j = judge("maximize", 0.9585, [0.9610, 0.9600, 0.9615], RULE,
              incumbent_stored=0.9610, incumbent_tonight=0.9610)
    assert (j.verdict, j.cause) == ("ok", None)
    assert _message(j) == ("within the margin of the baseline (+0.0000, margin 0.0050), by the "
                           "incumbent re-trained on tonight's data (0.9610; tonight's sweep is "
                           "-0.0025)"), _message(j)
    own = judge("maximize", 0.9612, [0.9610, 0.9600, 0.9615], RULE,
                incumbent_stored=0.9610, incumbent_tonight=0.9610)
    assert _message(own) == "within the margin of the baseline (+0.0002, margin 0.0050)"


def test_genuinely_worse_night_is_a_regression_from_data_drift():
    j = judge("maximize", 0.90, [0.957, 0.951, 0.955], RULE,
              incumbent_stored=0.957, incumbent_tonight=0.905)
    assert (j.verdict, j.cause) == ("regression", "data")
    assert j.drift == pytest.approx(-0.052)
    assert j.delta == pytest.approx(0.905 - 0.955)
    assert EXIT_CODES[j.verdict] == 4


def test_what_changed_tells_data_drift_from_code_and_set_up_drift():
    """The same drift reads as data drift on a changed data file, as code drift on the same
    bytes (the engine is deterministic), as set-up drift when the study file's [data]/[model]
    changed, and stays undecided when nothing is known."""
    worse = judge("maximize", 0.90, [0.957, 0.951, 0.955], RULE,
                  incumbent_stored=0.957, incumbent_tonight=0.905)
    assert _message(worse).endswith("data (or code) drift")
    assert _message(worse, {"setup_changes": []}).endswith("data (or code) drift")
    assert _message(worse, {"changed": True}).endswith("data drift (the data file changed)")
    assert _message(worse, {"changed": False}).endswith(
        "code drift (the data file is unchanged: the code or its environment changed)")
    assert _message(worse, {"changed": False, "setup_changes": ["model.epochs: 4 -> 1"]}).endswith(
        "set-up drift (the study file's training set-up changed: model.epochs: 4 -> 1)")
    easier = judge("maximize", 0.99, [0.957, 0.951, 0.955], RULE,
                   incumbent_stored=0.957, incumbent_tonight=0.985)
    assert _message(easier).endswith("the data got easier")
    assert _message(easier, {"changed": False}).endswith("the code changed (the data file is unchanged)")


def test_search_shortfall_is_not_a_regression_when_the_incumbent_still_holds():
    j = judge("maximize", 0.90, [0.957, 0.951, 0.955], RULE,
              incumbent_stored=0.957, incumbent_tonight=0.957)
    assert (j.verdict, j.cause) == ("ok", "search")
    assert j.sweep_delta == pytest.approx(0.90 - 0.955)
    assert j.available == pytest.approx(0.957)


def test_improvement_by_search_and_by_easier_data():
    by_search = judge("maximize", 0.99, [0.957, 0.951, 0.955], RULE,
                      incumbent_stored=0.957, incumbent_tonight=0.957)
    assert (by_search.verdict, by_search.cause) == ("improvement", "search")
    by_data = judge("maximize", 0.99, [0.957, 0.951, 0.955], RULE,
                    incumbent_stored=0.957, incumbent_tonight=0.985)
    assert (by_data.verdict, by_data.cause) == ("improvement", "data")
    assert EXIT_CODES["improvement"] == 0


def test_the_incumbent_alone_is_no_improvement():
    """The incumbent is the best baseline night, above the median by itself: re-trained on
    unchanged data it is no news. A sweep far below is a search shortfall (a regression (space)
    where the space no longer holds the incumbent), one between the median and the incumbent is
    'the incumbent holds', and only a sweep better than the incumbent is an improvement."""
    tight = RegressionRule(tolerance=0.002, baseline_nights=3)
    nights = [0.9610, 0.9638, 0.9610]
    short = judge("maximize", 0.9248, nights, tight, incumbent_stored=0.9638, incumbent_tonight=0.9638)
    assert (short.verdict, short.cause) == ("ok", "search")
    between = judge("maximize", 0.9635, nights, tight, incumbent_stored=0.9638,
                    incumbent_tonight=0.9638)
    assert (between.verdict, between.cause) == ("ok", None)
    assert _message(between) == ("the incumbent holds: re-trained on tonight's data it scores 0.9638 "
                                 "(+0.0028 from the baseline's median, margin 0.0020); tonight's "
                                 "sweep (+0.0025) found nothing better")
    better = judge("maximize", 0.9666, nights, tight, incumbent_stored=0.9638,
                   incumbent_tonight=0.9638)
    assert (better.verdict, better.cause) == ("improvement", "search")
    tie = judge("maximize", 0.9638, nights, tight, incumbent_stored=0.9638, incumbent_tonight=0.9638)
    assert (tie.verdict, tie.cause) == ("ok", None)  # (digits moves in steps of 1/360: ties happen)
    assert _message(tie).startswith("the incumbent holds: re-trained on tonight's data it scores "
                                    "0.9638 (+0.0028 from the baseline's median"), _message(tie)


def test_the_incumbents_configuration_with_another_seed_is_seed_noise():
    """A warm-started copy of the incumbent scoring higher with tonight's seed is not a better
    configuration."""
    j = judge("maximize", 0.9638, [0.9415], RULE, incumbent_stored=0.9415, incumbent_tonight=0.9415,
              same_config=True)
    assert (j.verdict, j.cause) == ("ok", None)
    assert _message(j) == ("tonight's best (+0.0223 from the baseline, margin 0.0050) is the "
                           "incumbent's configuration trained with another seed: seed noise, not a "
                           "better configuration")
    assert judge("maximize", 0.9638, [0.9415], RULE, incumbent_stored=0.9415,
                 incumbent_tonight=0.9415).verdict == "improvement"
    # the lucky copy on top does not hide a new configuration that beats the incumbent too
    hidden = judge("maximize", 0.9638, [0.9415], RULE, incumbent_stored=0.9415,
                   incumbent_tonight=0.9415, same_config=True, best_new=0.9610)
    assert (hidden.verdict, hidden.cause) == ("improvement", "search")


def test_minimized_metric_signs():
    worse = judge("minimize", 0.40, [0.30, 0.31, 0.29], RULE,
                  incumbent_stored=0.29, incumbent_tonight=0.41)
    assert (worse.verdict, worse.cause) == ("regression", "data")
    assert worse.delta < 0 and worse.drift < 0
    better = judge("minimize", 0.20, [0.30, 0.31, 0.29], RULE,
                   incumbent_stored=0.29, incumbent_tonight=0.29)
    assert better.verdict == "improvement"


def test_spread_widens_the_margin_and_spread_factor_zero_disables_it():
    noisy = [0.90, 0.95, 0.93]  # scaled MAD 0.0297, margin min(0.059, cap 0.0465)
    assert judge("maximize", 0.89, noisy, RULE).verdict == "ok"
    strict = RegressionRule(tolerance=0.005, baseline_nights=3, spread_factor=0.0)
    assert judge("maximize", 0.89, noisy, strict).verdict == "regression"


def test_edge_cases_first_night_no_result_and_unknown_cause():
    assert (judge("maximize", 0.9, [], RULE).verdict, judge("maximize", 0.9, [], RULE).cause) == \
        ("ok", "no_baseline")
    assert judge("maximize", None, [0.9], RULE).verdict == "no_result"
    # no result tonight: the baseline it would have been compared with is still computed
    none = judge("maximize", None, [0.9638, 0.9666, 0.9610], RULE)
    assert (none.verdict, none.level, none.delta) == ("no_result", pytest.approx(0.9638), None)
    assert none.spread == pytest.approx(1.4826 * 0.0028) and none.margin == pytest.approx(0.0083, abs=1e-4)
    assert judge("maximize", None, [], RULE).level is None
    assert EXIT_CODES["no_result"] == 1
    unknown = judge("maximize", 0.5, [0.9, 0.9], RULE, incumbent_stored=0.9)
    assert (unknown.verdict, unknown.cause) == ("regression", "unknown")
    diverged = judge("maximize", 0.5, [0.9, 0.9], RULE, incumbent_stored=0.9,
                     incumbent_diverged=True)
    assert (diverged.verdict, diverged.cause) == ("regression", "data")


def test_a_no_result_verdict_stored_without_baseline_numbers_reads_sensibly():
    """A no_result verdict stored before such verdicts kept the baseline's numbers: no
    "trial #None", and the median says why it is missing rather than "-"."""
    from types import SimpleNamespace

    from tuner.nightly.figures import verdict_markdown
    from tuner.nightly.regression import Verdict

    stored = {"verdict": "no_result", "cause": None, "message": "tonight has no COMPLETE trial: "
              "nothing to compare", "metric": "val_accuracy", "direction": "maximize",
              "tonight": None, "tonight_trial": None, "incumbent": None, "delta": None,
              "drift": None, "available": None, "computed_at": "2026-11-28T02:00:00+00:00",
              "baseline": {"nights": [{"night": f"nd-2026-11-2{d}", "date": f"2026-11-2{d}",
                                       "best": v, "trial": 0, "value": v}
                                      for d, v in ((5, 0.9638), (6, 0.9666), (7, 0.9610))],
                           "level": None, "best": 0.9666, "spread": None, "margin": None,
                           "tolerance": 0.01, "spread_factor": 2.0, "baseline_nights": 3}}
    lines = Verdict.from_dict(stored).lines()
    assert lines[0] == "tonight's best val_accuracy: none (no COMPLETE trial)"
    assert lines[1].endswith("best 0.9666 (median, spread and margin not computed: tonight has "
                             "no result) (tolerance 0.0100)"), lines
    study = SimpleNamespace(study_name="nd-2026-11-28", user_attrs={ATTR_VERDICT: stored})
    text = verdict_markdown(SimpleNamespace(study=study, study_file=None, storage=None, options={}))
    assert "#None" not in text and "| tonight's best | – (no COMPLETE trial) |" in text, text
    assert "| baseline: median of 3 nights | – (not computed: tonight has no result) |" in text
    assert "| baseline best | 0.9666 |" in text


def test_an_incumbent_that_diverges_on_tonights_data_is_said_to_have_diverged(monkeypatch):
    """Re-trained on tonight's data, the incumbent diverged (or its metric is not finite): the
    verdict says so in words, never 'lost -inf' or a nan."""
    from types import SimpleNamespace

    from tuner.nightly import regression
    from tuner.nightly.figures import verdict_markdown
    from tuner.nightly.regression import Verdict

    for incumbent in ({"incumbent_diverged": True}, {"incumbent_tonight": float("nan")},
                      {"incumbent_tonight": float("-inf")}):
        j = judge("maximize", 0.5, [0.9, 0.9], RULE, incumbent_stored=0.9, **incumbent)
        assert (j.verdict, j.cause) == ("regression", "data") and j.incumbent_diverged, incumbent
        message = _message(j)
        assert message.startswith("the incumbent diverged when re-trained on tonight's data")
        assert "below the baseline" in message and "inf" not in message and "nan" not in message
    within = judge("maximize", 0.9, [0.9, 0.9], RULE, incumbent_stored=0.9, incumbent_diverged=True)
    assert (within.verdict, within.cause) == ("regression", "data")
    assert "although tonight is +0.0000 from the baseline" in _message(within)
    better = judge("maximize", 0.99, [0.9, 0.9], RULE, incumbent_stored=0.9, incumbent_diverged=True)
    assert better.verdict == "improvement" and "the incumbent diverged" in _message(better)

    inc = {"night": "d-2026-11-24", "trial": 3, "value": 0.9, "tonight": None, "diverged": True,
           "error": "diverged: loss became non-finite at update 12"}
    verdict = Verdict(verdict=j.verdict, cause=j.cause, message=_message(j),
                      metric="val_accuracy", direction="maximize", tonight=0.5, tonight_trial=1,
                      baseline={}, incumbent=inc, delta=j.delta, drift=j.drift,
                      available=j.available, computed_at="2026-11-25T03:00:00+00:00")
    lines = "\n".join(verdict.lines())
    assert "re-trained on tonight's data: diverged: loss became non-finite at update 12" in lines
    assert "inf" not in lines.replace("non-finite", "")
    assert verdict.as_dict()["drift"] is None
    study = SimpleNamespace(study_name="d-2026-11-25", user_attrs={
        ATTR_VERDICT: verdict.as_dict(), ATTR_NIGHT: {"base": "d", "date": "2026-11-25"}})
    md = verdict_markdown(SimpleNamespace(study=study, options={}))
    assert "| incumbent drift | none: it diverged |" in md
    assert "| incumbent re-trained on tonight's data | diverged: loss became non-finite" in md

    # a metric that is not finite although training did not flag a divergence is one too
    result = SimpleNamespace(diverged=False, history=[{"val_loss": float("inf")}])
    monkeypatch.setattr(regression, "fit", lambda *a, **k: result)
    sf = SimpleNamespace(model=SimpleNamespace(epochs=1, dtype="float64"),
                         study=SimpleNamespace(metric="val_loss"))
    splits = SimpleNamespace(X_train=None, y_train=None, X_val=None, y_val=None)
    assert regression.reevaluate({}, 0, sf, splits) == (
        None, True, "diverged: its final val_loss is inf")


# --- trend axes -------------------------------------------------------------------------------

def test_trend_axes_show_whole_days_and_uncrowded_log_ticks():
    week = [f"2026-11-{d}" for d in range(19, 26)]
    axis = date_axis(week)
    assert axis["tickformat"] == "%Y-%m-%d" and axis["dtick"] == 86_400_000 and axis["type"] == "date"
    year = date_axis(["2026-01-01", "2026-12-31"])
    assert year["dtick"] % 86_400_000 == 0 and 365 / (year["dtick"] / 86_400_000) <= 14
    assert date_axis(["2026-11-25"]) == {"type": "category"}
    # within a decade: 1, 2, 5; over several: powers of ten only, at most 7 labels
    assert log_ticks([0.012, 0.05])["ticktext"] == ["0.01", "0.02", "0.05", "0.1"]
    wide = log_ticks([1e-6, 0.02, 3.0])
    assert all(t in ("1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1", "1", "10") for t in wide["ticktext"])
    assert len(wide["tickvals"]) <= 7
    assert log_ticks([None, float("nan")]) == {}
    assert verdict_key({"verdict": "ok", "cause": "search"}) == "ok (sweep fell short)"
    assert verdict_key({"verdict": "regression", "cause": "data"}) == "regression"


def test_trend_lines_break_where_nights_are_missing():
    """A line straight across missing nights (11-24 -> 12-03) looked like data; a weekly
    sweep's 7 days are its usual interval, not a gap."""
    daily = ["2026-11-20", "2026-11-21", "2026-11-22", "2026-11-23", "2026-12-03"]
    xs, ys = broken_at_gaps(daily, [1, 2, 3, 4, 5])
    assert ys == [1, 2, 3, 4, None, 5] and xs[4] == "2026-11-28"
    weekly = ["2026-11-01", "2026-11-08", "2026-11-15", "2026-11-22"]
    assert broken_at_gaps(weekly, [1, 2, 3, 4]) == (weekly, [1, 2, 3, 4])
    assert broken_at_gaps(["2026-11-01"], [1]) == (["2026-11-01"], [1])
    # with the sweep's schedule: a weekday sweep's weekend is no gap, a missed Tuesday is
    weekdays = parse_study_dict({"study": {"name": "w", "n_trials": 2}, "data": {"dataset": "iris"},
                                 "model": {"epochs": 1}, "space": {"optimizer": "sgd", "lr": 0.1},
                                 "schedule": {"cron": "0 2 * * 1-5", "timezone": "UTC"}}).schedule
    nights = ["2026-11-19", "2026-11-20", "2026-11-23", "2026-11-25"]  # Thu, Fri, Mon, Wed
    assert broken_at_gaps(nights, [1, 2, 3, 4], weekdays) == (
        ["2026-11-19", "2026-11-20", "2026-11-23", "2026-11-24", "2026-11-25"], [1, 2, 3, None, 4])


def test_one_verdict_label_for_every_place_that_shows_a_verdict():
    """The study list, `tuner history`, the printed verdict, the scheduler's log and the report
    all name a verdict with :func:`verdict_label`."""
    from tuner.nightly.regression import Verdict
    from tuner.nightly.scheduler import describe_night

    assert verdict_label({"verdict": "ok", "cause": "search"}) == "ok (search)"
    assert verdict_label({"verdict": "regression", "cause": "data"}, upper=True) == "REGRESSION (data)"
    assert verdict_label({"verdict": "improvement", "cause": None}) == "improvement"
    assert verdict_label(None) == "no verdict yet" and verdict_label({}, missing="-") == "-"
    v = Verdict(verdict="ok", cause="search", message="search shortfall: ...", metric="m",
                direction="maximize", tonight=0.9, tonight_trial=1, baseline={}, incumbent=None,
                delta=0.0, drift=None, available=0.9, computed_at="2026-11-25T03:00:00+00:00")
    assert v.lines()[-1] == "verdict: OK (search) — search shortfall: ..."
    line = describe_night("d", date(2026, 11, 25), 0, 1.0, {"verdict": v.as_dict(), "counts": {}})
    assert line.endswith("verdict OK (search): search shortfall: ...")


def test_a_night_that_did_not_run_is_logged_as_an_error():
    """Every night's end was logged at INFO: an alert on ERROR lines missed failed nights."""
    from tuner.nightly.scheduler import night_level

    assert night_level(0) == night_level(75) == night_level(None) == logging.INFO
    assert night_level(4) == night_level(130) == night_level(143) == logging.WARNING
    assert night_level(1) == night_level(2) == night_level(3) == night_level(-9) == logging.ERROR
    # SIGTERM forwarded while the night started up (before it handled signals): an interruption
    assert night_level(-15) == night_level(-2) == logging.WARNING


def test_a_night_that_failed_on_an_error_is_logged_with_the_error(tmp_path):
    """A failed night's --json stdout is {error, hint, exit_code}: the scheduler's log line
    said "ended ... with exit code 3; None; trials: " with it."""
    import subprocess
    import sys

    from tuner.nightly.scheduler import _parse_json, describe_night

    from conftest import REPO, tuner_env

    url = f"sqlite:///{tmp_path / 'missing' / 'x.db'}"  # its folder does not exist: exit 3
    proc = subprocess.run([sys.executable, "-m", "tuner", "nightly", str(REPO / "studies" /
                           "nightly-digits.toml"), "--storage", url, "--json"],
                          capture_output=True, text=True, env=tuner_env(), timeout=120)
    assert proc.returncode == 3, proc.stderr
    line = describe_night("nightly-digits", date(2026, 11, 25), 3, 1.0, _parse_json(proc.stdout))
    assert line.startswith("nightly-digits: night nightly-digits-2026-11-25 ended after 1.0 s with "
                           "exit code 3: ") and "does not exist" in line, line
    assert "None" not in line


def test_a_nights_output_is_logged_line_by_line_at_its_level(caplog):
    import io

    from tuner.nightly.scheduler import _relay

    stream = io.StringIO("data: digits\nwarning: the file changed\n\nerror: no database\n")
    with caplog.at_level(logging.INFO, logger="tuner.scheduler"):
        _relay(stream, "d [2026-11-25]")
    got = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "tuner.scheduler"]
    assert got == [(logging.INFO, "d [2026-11-25]: data: digits"),
                   (logging.WARNING, "d [2026-11-25]: the file changed"),
                   (logging.ERROR, "d [2026-11-25]: no database")], got


def test_a_night_killed_by_a_signal_is_described_by_the_signal():
    from tuner.nightly.scheduler import describe_night

    early = describe_night("d", date(2026, 11, 25), -15, 0.8, None)
    assert early == ("d: night d-2026-11-25 was stopped by SIGTERM after 0.8 s, while it started "
                     "(no trial was running; the next run does the night)")
    again = describe_night("d", date(2026, 11, 25), 0, 2.0,
                           {"stopped": "done", "ran": 0, "counts": {"COMPLETE": 5}})
    assert "done earlier (no trial ran now); trials: 5 complete" in again
    killed = describe_night("d", date(2026, 11, 25), -9, 30.0, None)
    assert killed.startswith("d: night d-2026-11-25 was stopped by SIGKILL after 30.0 s: it did "
                             "not finish (killed from outside: out of memory?)")


# --- names and dates -------------------------------------------------------------------------

def test_night_names_and_dates():
    assert night_name("digits", date(2026, 11, 25)) == "digits-2026-11-25"
    assert night_date("digits-2026-11-25", "digits") == date(2026, 11, 25)
    assert night_date("digits-x-2026-11-25", "digits") is None
    assert night_date("digits-2026-13-45", "digits") is None
    assert base_of("my-sweep-2026-01-02") == "my-sweep"
    # the sweep a study's nightly views show (the panels and the dashboard's page cache agree)
    assert sweep_base("my-sweep-2026-01-02") == "my-sweep" and sweep_base("plain") is None
    assert sweep_base("renamed-2026-01-02", {"base": "digits"}) == "digits"
    assert sweep_base("renamed-2026-01-02", {"base": "digits"}, "other") == "other"
    sched = parse_study_dict(_raw(schedule={"timezone": "Pacific/Auckland"})).schedule
    # 2026-11-25 12:30 UTC is already the 26th in Auckland
    assert today(sched, datetime(2026, 11, 25, 12, 30, tzinfo=UTC)) == date(2026, 11, 26)


def test_schedule_summary_for_tuner_check():
    example = load_study_file(Path(__file__).resolve().parents[1] / "studies" / "nightly-digits.toml")
    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    info = schedule_summary(example, now)
    assert info["n_trials"] == example.schedule.n_trials != example.study.n_trials
    assert info["next"] == {"at": "2026-11-26T02:00:00+01:00", "local": "2026-11-26 02:00 CET",
                            "night": "nightly-digits-2026-11-26"}
    lines = schedule_lines(example, now)
    assert lines[0] == ("schedule: cron '0 2 * * *' in Europe/Berlin; next night "
                        "nightly-digits-2026-11-26 at 2026-11-26 02:00 CET")
    assert lines[1].startswith(f"nightly budget: {example.schedule.n_trials} trials per night "
                               f"([study] n_trials = {example.study.n_trials} applies to tuner run only)")
    assert schedule_lines(parse_study_dict(_raw())) == []


def test_night_study_file_budget_and_seed():
    sf = parse_study_dict(_raw(schedule={"n_trials": 7}))
    a, b = night_study_file(sf, date(2026, 1, 1)), night_study_file(sf, date(2026, 1, 2))
    assert a.study.name == "u-2026-01-01" and a.study.n_trials == 7
    assert a.study.seed != b.study.seed  # nights explore independently
    assert night_study_file(sf, date(2026, 1, 1)).study.seed == a.study.seed  # reruns reproduce


# --- cron, fire times, catch-up with a fake clock --------------------------------------------

def test_cron_weekdays_follow_crontab():
    assert _weekdays("0") == "6" and _weekdays("7") == "6"  # Sunday
    assert _weekdays("1-5") == "0,1,2,3,4"  # Monday..Friday
    assert _weekdays("mon-fri") == "mon-fri"
    trigger = cron_trigger("30 3 * * 0", "UTC")
    fire = last_fire_time(trigger, datetime(2026, 11, 25, 12, tzinfo=UTC))  # a Wednesday
    assert fire == datetime(2026, 11, 22, 3, 30, tzinfo=UTC) and fire.strftime("%a") == "Sun"


def test_cron_day_of_month_or_day_of_week_as_in_crontab():
    # crontab: both restricted -> either matches (the 1st of the month *or* a Monday)
    trigger = cron_trigger("0 2 1 * mon", "UTC")
    fires, t = [], datetime(2026, 11, 25, tzinfo=UTC)  # a Wednesday
    for _ in range(5):
        t = trigger.get_next_fire_time(None, t)
        fires.append(t.date())
        t = t.replace(minute=1)
    assert fires == [date(2026, 11, 30), date(2026, 12, 1), date(2026, 12, 7), date(2026, 12, 14),
                     date(2026, 12, 21)]
    assert last_fire_time(trigger, datetime(2026, 12, 3, tzinfo=UTC)) == datetime(2026, 12, 1, 2, tzinfo=UTC)
    # numeric weekdays keep crontab's numbering inside the OR (1 = Monday, 0 = Sunday)
    assert cron_trigger("0 2 15 * 0", "UTC").get_next_fire_time(
        None, datetime(2026, 11, 25, tzinfo=UTC)).date() == date(2026, 11, 29)
    # a field starting with * is unrestricted: then both must match, as in crontab
    every_other = cron_trigger("0 2 */2 * mon", "UTC")
    nxt = every_other.get_next_fire_time(None, datetime(2026, 11, 25, tzinfo=UTC))
    assert nxt.strftime("%a") == "Mon" and nxt.day % 2 == 1
    # the study file accepts it and its scheduler sweep fires the same way
    sched = parse_study_dict(_raw(schedule={"cron": "0 2 1 * mon"})).schedule
    assert sched.cron == "0 2 1 * mon"


def test_last_fire_time_with_seconds_and_timezones():
    now = datetime(2026, 11, 25, 10, 0, 7, tzinfo=UTC)
    assert last_fire_time(cron_trigger("*/5 * * * * *", "UTC"), now) == now.replace(second=5)
    berlin = cron_trigger("30 0 * * *", "Europe/Berlin")  # 23:30 UTC the day before
    fire = last_fire_time(berlin, datetime(2026, 11, 24, 23, 45, tzinfo=UTC))
    assert fire.astimezone(UTC) == datetime(2026, 11, 24, 23, 30, tzinfo=UTC)
    assert night_of(fire, "Europe/Berlin") == date(2026, 11, 25)
    yearly = cron_trigger("0 2 1 1 *", "UTC")
    assert last_fire_time(yearly, now) == datetime(2026, 1, 1, 2, tzinfo=UTC)


def _sweep(tmp_path: Path, url: str, cron: str = "0 2 * * *", timezone: str = "UTC"):
    path = tmp_path / "c.toml"
    path.write_text(_toml(schedule=f'cron = "{cron}"\ntimezone = "{timezone}"'))
    return make_sweeps(collect_study_files([path]).files, storage=url)[0]


def _make_night(url: str, sweep, day: date, *, verdict: bool) -> None:
    storage = open_storage(url)
    study = open_study(night_study_file(sweep.sf, day), storage)
    study.set_user_attr(ATTR_NIGHT, {"base": sweep.base, "date": day.isoformat()})
    if verdict:
        study.set_user_attr(ATTR_VERDICT, {"verdict": "ok"})


def test_catch_up_after_downtime_with_a_fake_clock(storage_url, tmp_path):
    sweep = _sweep(tmp_path, storage_url)
    for day in (20, 21, 22):
        _make_night(storage_url, sweep, date(2026, 11, day), verdict=True)
    # down from the 22nd's run until the 25th at 10:00: the 23rd, 24th and 25th were missed,
    # and only the latest is caught up (once, not once per missed night)
    assert catch_up_night(sweep, datetime(2026, 11, 25, 10, tzinfo=UTC)) == date(2026, 11, 25)
    # back at 01:00 on the 23rd, before that night's 02:00: nothing was missed
    assert catch_up_night(sweep, datetime(2026, 11, 23, 1, tzinfo=UTC)) is None
    # back at 01:00 on the 24th: the 23rd was missed (today's run comes at 02:00)
    assert catch_up_night(sweep, datetime(2026, 11, 24, 1, tzinfo=UTC)) == date(2026, 11, 23)
    # a night that started but has no verdict (interrupted) is resumed
    _make_night(storage_url, sweep, date(2026, 11, 23), verdict=False)
    assert catch_up_night(sweep, datetime(2026, 11, 24, 1, tzinfo=UTC)) == date(2026, 11, 23)
    _make_night(storage_url, sweep, date(2026, 11, 23), verdict=True)
    assert catch_up_night(sweep, datetime(2026, 11, 24, 1, tzinfo=UTC)) is None
    assert [n.date.day for n in list_nights(open_storage(storage_url), sweep.base)] == [20, 21, 22, 23]
    # the night a scheduled run is for: its fire time's date in the schedule's timezone
    assert due_night(sweep, datetime(2026, 11, 25, 2, 0, 1, tzinfo=UTC)) == date(2026, 11, 25)


def test_no_catch_up_before_the_first_night(sqlite_url, tmp_path):
    sweep = _sweep(tmp_path, sqlite_url)
    # an empty storage: the sweep never ran, so nothing was missed (a first start, e.g. the first
    # `docker compose up`, does not start a sweep at once); its first night runs at 02:00
    day, why = catch_up(sweep, datetime(2026, 11, 25, 10, tzinfo=UTC))
    assert day is None and "no night of c in SQLite" in why and "none was missed" in why
    _make_night(sqlite_url, sweep, date(2026, 11, 20), verdict=True)
    day, why = catch_up(sweep, datetime(2026, 11, 25, 10, tzinfo=UTC))
    assert day == date(2026, 11, 25) and why == "the night of 2026-11-25 was missed (it never ran)"


def test_no_catch_up_of_a_night_older_than_one_that_ran(sqlite_url, tmp_path):
    """A night run by hand (`tuner nightly`, dated by its day) after a 23:00 fire: the fire's
    earlier night is not back-filled before it."""
    sweep = _sweep(tmp_path, sqlite_url, cron="0 23 * * *")
    _make_night(sqlite_url, sweep, date(2026, 12, 5), verdict=True)
    day, why = catch_up(sweep, datetime(2026, 12, 5, 1, 19, tzinfo=UTC))
    assert day is None
    assert why == "a later night (2026-12-05) has run, so the night of 2026-12-04 is not back-filled"


def test_catch_up_uses_the_schedule_timezone(sqlite_url, tmp_path):
    sweep = _sweep(tmp_path, sqlite_url, cron="30 0 * * *", timezone="Europe/Berlin")
    _make_night(sqlite_url, sweep, date(2026, 11, 20), verdict=True)
    # 23:40 UTC on the 24th is 00:40 on the 25th in Berlin: the 25th's night (00:30) is due
    assert catch_up_night(sweep, datetime(2026, 11, 24, 23, 40, tzinfo=UTC)) == date(2026, 11, 25)


# --- warm start across search-space changes --------------------------------------------------

SPACE = {"optimizer": ["sgd", "adam"], "lr": {"low": 1e-3, "high": 0.5, "log": True},
         "batch_size": [64, 128], "decay": ["constant", "cosine"]}


def _space(**changes):
    space = dict(SPACE)
    for key, value in changes.items():
        if value is None:
            space.pop(key, None)
        else:
            space[key] = value
    return parse_study_dict(_raw(space=space)).space


def test_map_config_valid_and_invalid_points():
    space = _space()
    good = {"optimizer": "adam", "lr": 0.01, "batch_size": 64, "decay": "cosine"}
    params, reasons = map_config(space, good)
    assert reasons == [] and params == good
    params, reasons = map_config(space, {**good, "optimizer": "momentum"})
    assert reasons == ["optimizer='momentum' is not one of 'sgd', 'adam'"]
    _, reasons = map_config(space, {**good, "lr": 0.9})
    assert reasons == ["lr=0.9 is outside log float [0.001, 0.5]"]


def test_map_config_follows_fixed_and_searched_keys():
    config = {"optimizer": "adam", "lr": 0.01, "batch_size": 64, "decay": "cosine"}
    # a key fixed tonight to the same value is fine; to another value is not
    assert map_config(_space(decay="cosine"), config)[1] == []
    assert map_config(_space(batch_size=128), config)[1] == [
        "batch_size is fixed to 128 tonight (was 64)"]
    # a key that was fixed yesterday (so not an Optuna parameter) and is searched tonight
    params, reasons = map_config(_space(decay=["constant", "cosine", "step"]), config)
    assert reasons == [] and params["decay"] == "cosine"
    # a key yesterday's configuration set that tonight's space no longer sets
    _, reasons = map_config(_space(warmup_epochs=None), {**config, "warmup_epochs": 2.0})
    assert reasons == ["warmup_epochs would be 0.0 tonight (was 2.0): tonight's space no longer sets it"]
    # a key searched tonight that the configuration left out: it trained with the default
    params, reasons = map_config(_space(warmup_epochs=[0.0, 1.0]), config)
    assert reasons == [] and params["warmup_epochs"] == 0.0
    _, reasons = map_config(_space(warmup_epochs={"low": 1, "high": 2}), config)
    assert reasons == ["warmup_epochs=0.0 is outside float [1, 2]"]


def test_map_config_gives_every_reason_the_deciding_key_first():
    """Every reason a configuration cannot be enqueued, the optimizer's (which decides which
    other keys apply) first; what follows from the optimizer change alone is not a reason."""
    adamw = {"optimizer": "adamw", "lr": 0.01, "batch_size": 64, "batch_scaling": "sqrt",
             "decay": "cosine", "beta1": 0.9, "weight_decay": 0.01}

    def space(**changes):
        raw = _raw(space={**SPACE, "optimizer": ["sgd", "adam", "adamw"], **changes})
        raw["model"]["reg"] = {"low": 1e-6, "high": 1e-2, "log": True}  # not used by adamw
        return parse_study_dict(raw).space

    assert map_config(space(), adamw)[1] == []
    # sgd fixed tonight: it has reg (searched), adamw has none, but the reason is the optimizer
    assert map_config(space(optimizer="sgd"), adamw)[1] == [
        "optimizer is fixed to 'sgd' tonight (was 'adamw')"]
    assert map_config(space(optimizer="adam"), adamw)[1] == [
        "optimizer is fixed to 'adam' tonight (was 'adamw')"]
    # the optimizer, lr and batch_size all changed: all three, the optimizer first
    changed = space(optimizer=["sgd", "adam"], lr={"low": 1e-3, "high": 5e-3, "log": True},
                    batch_size=128)
    assert map_config(changed, adamw)[1] == [
        "optimizer='adamw' is not one of 'sgd', 'adam'",
        "lr=0.01 is outside log float [0.001, 0.005]",
        "batch_size is fixed to 128 tonight (was 64)"]
    assert map_config(space(lr=0.5, batch_size=128, decay="constant"), adamw)[1] == [
        "decay is fixed to 'constant' tonight (was 'cosine')",
        "lr is fixed to 0.5 tonight (was 0.01)",
        "batch_size is fixed to 128 tonight (was 64)"]
    # an optimizer no longer in the list: its own keys (momentum) follow from that alone
    momentum = {"optimizer": "momentum", "lr": 0.05361941994777587, "batch_size": 64,
                "batch_scaling": "linear", "decay": "cosine", "momentum": 0.9641234567, "reg": 1e-4}
    assert map_config(space(), momentum)[1] == ["optimizer='momentum' is not one of 'sgd', "
                                                "'adam', 'adamw'"]
    # floats as four significant digits, unless those would read as inside the range
    narrow = space(optimizer=["momentum"], lr={"low": 1e-3, "high": 0.05, "log": True})
    assert map_config(narrow, momentum)[1][0] == "lr=0.05362 is outside log float [0.001, 0.05]"
    assert map_config(narrow, {**momentum, "lr": 0.0500001})[1][0] == (
        "lr=0.0500001 is outside log float [0.001, 0.05]")


# --- the [schedule] section --------------------------------------------------------------------

def test_schedule_section_validation(tmp_path):
    assert parse_study_dict(_raw(schedule={"cron": "*/10 * * * * *"})).schedule.cron == "*/10 * * * * *"
    with pytest.raises(ConfigError, match="invalid cron expression"):
        parse_study_dict(_raw(schedule={"cron": "0 2 * *"}))
    with pytest.raises(ConfigError, match="unknown timezone"):
        parse_study_dict(_raw(schedule={"timezone": "Mars/Olympus"}))
    with pytest.raises(ConfigError, match="spread_factor"):
        parse_study_dict(_raw(schedule={"regression": {"spread_factor": -1}}))
    example = load_study_file(Path(__file__).resolve().parents[1] / "studies" / "nightly-digits.toml")
    assert example.schedule is not None and example.schedule.warm_start == 3


def test_collect_study_files_from_a_folder(tmp_path):
    (tmp_path / "a.toml").write_text(_toml(name="a", schedule='cron = "0 3 * * *"'))
    (tmp_path / "b.toml").write_text(_toml(name="b"))
    scan = collect_study_files([tmp_path])
    assert [sf.study.name for _, sf in scan.files] == ["a"] and scan.unscheduled == [tmp_path / "b.toml"]
    assert scan.broken == {}
    with pytest.raises(ConfigError, match="no \\[schedule\\] section"):
        collect_study_files([tmp_path / "b.toml"])
    # an empty folder, or one with nothing scheduled, is no error: the service waits for files
    empty = tmp_path / "empty"
    empty.mkdir()
    assert collect_study_files([empty]) == Scan([], [], {}, {})
    (empty / "plain.toml").write_text(_toml(name="p"))  # an ordinary study: not scheduled
    assert collect_study_files([empty]) == Scan([], [empty / "plain.toml"], {}, {})


def test_a_duplicate_study_name_in_a_folder_skips_that_file_not_the_service(tmp_path):
    """Two folder files naming the same study: the first in path order is scheduled, the other
    is reported (the same text a rescan logs, so it is not logged again), the rest scheduled;
    two such files named explicitly are an error (each must be scheduled)."""
    folder = tmp_path / "sched"
    folder.mkdir()
    for name, study in (("b.toml", "nd"), ("a.toml", "nd"), ("c.toml", "other")):
        (folder / name).write_text(_toml(name=study, schedule='cron = "0 3 * * *"'))
    scan = collect_study_files([folder])
    assert [(p.name, sf.study.name) for p, sf in scan.files] == [("a.toml", "nd"), ("c.toml", "other")]
    assert scan.refused == {folder / "b.toml": (
        f"{folder / 'b.toml'} names its study 'nd' like {folder / 'a.toml'}, which is scheduled; "
        "not scheduling it (their nights would be the same studies)")}
    assert scan.broken == {}
    # a file given explicitly comes first; the same file through its folder counts once
    scan = collect_study_files([folder / "b.toml", folder])
    assert [p.name for p, _ in scan.files] == ["b.toml", "c.toml"]
    assert list(scan.refused) == [folder / "a.toml"]
    with pytest.raises(ConfigError, match="both name their study 'nd'"):
        collect_study_files([folder / "a.toml", folder / "b.toml"])


def test_a_folder_file_whose_storage_cannot_be_opened_is_refused_not_fatal(tmp_path, monkeypatch):
    """At start, a folder file with a study.storage that loads but cannot be used (a PostgreSQL
    URL without a database) is refused and named, like a rescan does; the other files are
    scheduled. Given by name, it is an error."""
    monkeypatch.delenv("TUNER_STORAGE", raising=False)
    folder = tmp_path / "sched"
    folder.mkdir()
    (folder / "a.toml").write_text(_toml(name="a", schedule='cron = "0 3 * * *"'))
    bad = _toml(name="b", schedule='cron = "0 3 * * *"').replace(
        'n_trials = 4', 'n_trials = 4\nstorage = "postgresql+psycopg://u@db.example.com"')
    (folder / "b.toml").write_text(bad)
    scan = collect_study_files([folder])
    sweeps = start_sweeps(scan, [folder])
    assert [s.base for s in sweeps] == ["a"]
    assert list(scan.refused) == [folder / "b.toml"]
    assert scan.refused[folder / "b.toml"].startswith(f"{folder / 'b.toml'}: ")
    assert "names no database" in scan.refused[folder / "b.toml"]
    with pytest.raises(TunerError, match="names no database"):
        start_sweeps(collect_study_files([folder / "b.toml"]), [folder / "b.toml"])


def test_a_broken_folder_file_is_skipped_and_scheduled_once_fixed(sqlite_url, tmp_path):
    (tmp_path / "a.toml").write_text(_toml(name="a", schedule='cron = "0 3 * * *"'))
    (tmp_path / "bad.toml").write_text("[study\nname = ")
    (tmp_path / "worse.toml").write_text(_toml(name="w", schedule='cron = "0 3 * * * * *"'))
    # work in progress on an ordinary study: broken, but no [schedule], so not the scheduler's
    (tmp_path / "draft.toml").write_text(_toml(name="d").replace("[data]", "[data]\nbogus = 1"))
    scan = collect_study_files([tmp_path])
    assert [sf.study.name for _, sf in scan.files] == ["a"]
    assert set(scan.broken) == {tmp_path / "bad.toml", tmp_path / "worse.toml"}
    assert "invalid TOML" in scan.broken[tmp_path / "bad.toml"]
    assert "invalid cron expression" in scan.broken[tmp_path / "worse.toml"]
    # named explicitly, a broken file still fails at once
    with pytest.raises(ConfigError, match="invalid TOML"):
        collect_study_files([tmp_path / "bad.toml"])
    # only broken files: not an error for folders (the service waits for them to be fixed)
    only = tmp_path / "only"
    only.mkdir()
    (only / "bad.toml").write_text("[study\n")
    assert collect_study_files([only]).files == []

    # the service's rescan schedules a file once it is fixed, and logs it once while broken
    service = SchedulerService(make_sweeps(scan.files, storage=sqlite_url), catch_up=False,
                               folders=[tmp_path], broken=scan.broken)
    try:
        service.start()
        assert service.rescan() == []
        (tmp_path / "bad.toml").write_text(_toml(name="b", schedule='cron = "0 4 * * *"'))
        added = service.rescan()
        assert [s.base for s in added] == ["b"] and service.scheduler.get_job("nightly:b") is not None
        assert service.rescan() == []  # scheduled once
        # a new file naming a scheduled study is refused, not scheduled twice
        (tmp_path / "copy.toml").write_text(_toml(name="b", schedule='cron = "0 5 * * *"'))
        assert service.rescan() == [] and "copy.toml" in str(service._refused)
    finally:
        service.stop()


def _next_fire(service: SchedulerService, job: str) -> tuple[int, int]:
    fire = service.scheduler.get_job(job).trigger.get_next_fire_time(None, datetime.now(UTC))
    return fire.hour, fire.minute


def test_a_rescan_follows_edited_removed_and_renamed_folder_files(sqlite_url, tmp_path, caplog):
    """The cron time of a folder file was read once at start (an edit needed a restart), and a
    deleted file stayed scheduled, so a copy refused for its study name never took its place."""
    folder = tmp_path / "studies"
    folder.mkdir()
    (folder / "a.toml").write_text(_toml(name="n", schedule='cron = "0 3 * * *"'))
    (folder / "b.toml").write_text(_toml(name="n", schedule='cron = "0 5 * * *"'))  # a copy
    (folder / "c.toml").write_text(_toml(name="c", schedule='cron = "0 1 * * *"'))
    given = tmp_path / "given.toml"
    given.write_text(_toml(name="g", schedule='cron = "0 6 * * *"'))
    scan = collect_study_files([folder, given])
    assert set(scan.refused) == {folder / "b.toml"}
    service = SchedulerService(make_sweeps(scan.files, storage=sqlite_url), catch_up=False,
                               folders=[folder], refused=scan.refused, given=[given],
                               storage_override=sqlite_url)
    caplog.set_level(logging.INFO, logger="tuner.scheduler")
    try:
        service.start()
        assert _next_fire(service, "nightly:n") == (3, 0)
        (folder / "a.toml").write_text(_toml(name="n", schedule='cron = "30 4 * * *"'))
        assert service.rescan() == []
        assert _next_fire(service, "nightly:n") == (4, 30)
        assert "rescheduled n" in caplog.text and "was '0 3 * * *' UTC" in caplog.text
        assert service.sweeps["nightly:n"].cron == "30 4 * * *"
        # a.toml removed: unscheduled (at the second rescan that misses it: the first may catch
        # an editor mid-save), and the refused copy takes its study name
        (folder / "a.toml").write_text("")  # truncated mid-save: kept
        assert service.rescan() == [] and "nightly:n" in service.sweeps
        (folder / "a.toml").write_text(_toml(name="n", schedule='cron = "30 4 * * *"'))
        assert service.rescan() == []
        (folder / "a.toml").unlink()
        assert service.rescan() == [] and service.sweeps["nightly:n"].path.name == "a.toml"
        service._deferred["nightly:n"] = date(2026, 11, 26)  # a fire came during a night
        added = service.rescan()
        assert "the deferred night of 2026-11-26 will not run" in caplog.text
        assert [(s.base, s.path.name) for s in added] == [("n", "b.toml")]
        assert _next_fire(service, "nightly:n") == (5, 0)
        assert "unscheduled n" in caplog.text and "its file is gone" in caplog.text
        assert service._refused == {}
        # c.toml now names another study: the old one is unscheduled, the new one scheduled
        (folder / "c.toml").write_text(_toml(name="c2", schedule='cron = "0 1 * * *"'))
        assert service.rescan() == [] and "nightly:c" in service.sweeps
        assert [s.base for s in service.rescan()] == ["c2"]
        assert service.scheduler.get_job("nightly:c") is None and "nightly:c" not in service.sweeps
        service._job("nightly:c")  # a fire that raced the unschedule runs nothing
        assert not service.completed and not service._children
        # c.toml loses its [schedule]: unscheduled
        (folder / "c.toml").write_text(_toml(name="c2"))
        assert service.rescan() == [] and service.rescan() == []
        assert service.scheduler.get_job("nightly:c2") is None
        assert "no [schedule] section any more" in caplog.text
        # a broken scheduled file stays scheduled (its nights say why), a given file is read once
        (folder / "b.toml").write_text("[study\n")
        given.unlink()
        assert service.rescan() == []
        assert service.rescan() == []
        assert {j.id for j in service.scheduler.get_jobs() if j.id != "rescan"} == {"nightly:n", "nightly:g"}
        # an edit whose storage cannot be used is logged once; the sweep keeps its schedule
        (folder / "b.toml").write_text(_toml(name="n", schedule='cron = "0 5 * * *"').replace(
            "n_trials = 4", 'n_trials = 4\nstorage = "postgresql+psycopg://u@h"'))
        service.storage_override = None
        caplog.clear()
        assert service.rescan() == [] and service.rescan() == []
        assert caplog.text.count("will fail until it is fixed") == 1, caplog.text
        assert "nightly:n" in service.sweeps
    finally:
        service.stop()


def _raw(*, schedule: dict | None = None, space: dict | None = None) -> dict:
    raw = {"study": {"name": "u", "n_trials": 4}, "data": {"dataset": "digits"},
           "model": {"epochs": 3}, "space": space or dict(SPACE)}
    if schedule is not None:
        raw["schedule"] = schedule
    return raw


def _toml(*, name: str = "c", schedule: str | None = None) -> str:
    text = f"""
[study]
name = "{name}"
n_trials = 4
[data]
dataset = "digits"
[model]
epochs = 3
[space]
optimizer = ["sgd", "adam"]
lr = {{low = 1e-3, high = 0.5, log = true}}
"""
    if schedule is not None:
        text += f"[schedule]\n{schedule}\n"
    return text
