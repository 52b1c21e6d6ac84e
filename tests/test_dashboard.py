"""Dashboard views on a real study: every figure builder checked against the trials it draws,
the dashboard files (search path, errors, panels registered later), the views stored with the
study by `tuner run` and refreshed by the runner hook (replaced, not accumulated), the fast trial
reader, `tuner report`, a large study, and the bundled dashboards in a built wheel.

The study is made by a real `tuner run` on digits (random sampler, LRs up to 3000 so some
trials diverge, median pruner) and read back with plain Optuna where values are compared."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from tuner import params as P
from tuner import results
from tuner.dashboard import (
    ATTR_REFERENCE,
    DashboardError,
    check_panels,
    load_dashboard,
    parse_dashboard,
    register_panel,
    render_dashboard,
    unregister_panel,
)
from tuner.dashboard.attach import (
    NOTE_MARKER,
    TUNER_PLOT_PREFIX,
    DashboardHook,
    attach_views,
    tuner_graph_object_ids,
)
from tuner.dashboard.context import PanelContext
from tuner.dashboard.html import list_page
from tuner.dashboard.reader import forget, read_trials
from tuner.dashboard.spec import ENV_DASHBOARDS, bundled_dir
from tuner.reference import reference_on_split
from tuner.storage import open_storage
from tuner.study import load_data, load_study
from tuner.train import make_plan

from conftest import REPO, flat, run_tuner, tuner_env, write_study

optuna.logging.set_verbosity(optuna.logging.WARNING)

STUDY_NAME = "dash"
STUDY_TOML = """
[study]
name = "{name}"
n_trials = {n_trials}
seed = 3
sampler = {{type = "random"}}
pruner = {{type = "median", n_startup_trials = 12, n_warmup_steps = 3}}

[data]
dataset = "digits"

[model]
epochs = 8

[space]
optimizer = ["sgd", "momentum", "adam"]
lr = {{low = 1e-3, high = 3000.0, log = true}}
batch_size = [32, 64, 128]
base_batch_size = 64
batch_scaling = ["none", "linear", "sqrt"]
warmup_epochs = {{low = 0, high = 2, step = 1}}
decay = ["constant", "cosine", "step"]

[space.decays.step]
gamma = {{low = 0.1, high = 0.5}}
milestones = [0.5, 0.75]
"""
STUDY_PANELS = ["summary", "learning_curves", "lr_schedule", "group_best", "scaling_rules",
                "effective_lr", "reference_gap", "importances", "history"]
_MADE: dict[str, tuple[str, Path]] = {}


def make_study(tmp_dir: Path, *, name: str = STUDY_NAME, n_trials: int = 40,
               url: str | None = None) -> tuple[str, Path]:
    """Run a real study with `tuner run` (which also stores the views with it)."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    path = tmp_dir / f"{name}.toml"
    path.write_text(STUDY_TOML.format(name=name, n_trials=n_trials))
    url = url or f"sqlite:///{tmp_dir / 'dash.db'}"
    proc = run_tuner("run", path, "--storage", url, "-q", cwd=tmp_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return url, path


def shared_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One real study for the whole session (used by the server and browser tests too)."""
    if "main" not in _MADE:
        _MADE["main"] = make_study(tmp_path_factory.mktemp("dashboard-study"))
    return _MADE["main"]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    url, _ = shared_study(tmp_path_factory)
    storage = open_storage(url)
    study, sf = load_study(STUDY_NAME, storage)
    plain = optuna.load_study(study_name=STUDY_NAME, storage=url)  # read back with plain Optuna
    return {"url": url, "storage": storage, "study": study, "sf": sf, "plain": plain,
            "trials": plain.get_trials(deepcopy=False)}


@pytest.fixture(scope="module")
def panels(real):
    spec = load_dashboard("study")
    out = render_dashboard(spec, real["study"], real["sf"], real["storage"])
    return {p.type: p for p in out}


def complete(real) -> list[optuna.trial.FrozenTrial]:
    return [t for t in real["trials"] if t.state == TrialState.COMPLETE]


def top(real, k: int) -> list[optuna.trial.FrozenTrial]:
    return sorted(complete(real), key=lambda t: (-t.value, t.number))[:k]


def traces(fig, kind: str | None = None) -> list:
    return [t for t in fig.data if kind is None or (t.meta and t.meta[-1] == kind)]


# --- the study itself ------------------------------------------------------------------------


def test_the_study_has_what_the_views_are_about(real):
    states = {s: sum(t.state == s for t in real["trials"]) for s in (TrialState.COMPLETE, TrialState.PRUNED)}
    assert states[TrialState.COMPLETE] >= 5 and states[TrialState.PRUNED] >= 5
    assert any(t.user_attrs.get("diverged") for t in real["trials"]), "no diverged trial to mark"


def test_every_panel_builds_without_error(panels):
    assert list(panels) == STUDY_PANELS
    for p in panels.values():
        assert p.error is None, (p.type, p.error)
        assert (p.figure is not None) != (p.markdown is not None)


# --- figure builders: values in the figure match the trials ----------------------------------


def test_learning_curves_are_the_top_k_trials_coloured_by_optimizer(real, panels):
    fig = panels["learning_curves"].figure
    best = top(real, 10)
    acc = traces(fig, "val_accuracy")
    loss = traces(fig, "val_loss")
    assert [t.meta[0] for t in acc] == [t.number for t in best]
    assert [t.meta[0] for t in loss] == [t.number for t in best]
    colors = {}
    for tr, trial in zip(acc, best, strict=True):
        curve = trial.user_attrs["curve"]
        assert list(tr.x) == curve["epoch"]
        assert np.allclose(tr.y, curve["val_accuracy"])
        assert tr.legendgroup == trial.params["optimizer"]
        colors.setdefault(tr.legendgroup, set()).add(tr.line.color)
    for tr, trial in zip(loss, best, strict=True):
        assert np.allclose(tr.y, trial.user_attrs["curve"]["val_loss"])
    assert all(len(c) == 1 for c in colors.values())  # one colour per optimizer
    assert len({next(iter(c)) for c in colors.values()}) == len(colors)
    assert acc[0].line.width > acc[-1].line.width  # the best trial is drawn thick


def test_lr_schedule_is_the_schedule_each_top_trial_trained_with(real, panels):
    fig = panels["lr_schedule"].figure
    lr_traces = traces(fig, "lr")
    best = top(real, 5)
    assert [t.meta[0] for t in lr_traces] == [t.number for t in best]
    n_train = real["study"].user_attrs["tuner.data"]["n_train"]
    epochs = real["sf"].model.epochs
    warmup_seen = decay_seen = False
    for tr, trial in zip(lr_traces, best, strict=True):
        a = trial.user_attrs
        plan = make_plan(P.resolve(a["config"]), n_train, epochs)
        assert plan.total_steps == a["total_steps"] and plan.warmup_steps == a["warmup_steps"]
        assert math.isclose(plan.peak_lr, a["peak_lr"])
        # the trace is the schedule the worker used: it matches the lr recorded every epoch
        curve = a["curve"]
        for step, lr in zip(curve["step"], curve["lr"], strict=True):
            assert math.isclose(plan.schedule(step - 1), lr, rel_tol=1e-9, abs_tol=1e-15)
        x, y = np.asarray(tr.x), np.asarray(tr.y)
        assert x[0] == 0 and x[-1] == a["total_steps"] - 1
        assert np.allclose(y, [plan.schedule(int(t)) for t in x])
        assert math.isclose(y.max(), a["peak_lr"], rel_tol=1e-9)
        if a["warmup_steps"] > 1:  # linear warmup from 0 (warmup_start_factor 0) to the peak
            w = a["warmup_steps"]
            assert y[0] == 0.0 and w in x and math.isclose(y[list(x).index(w)], a["peak_lr"])
            warmup_seen = True
        if a["config"]["decay"] != "constant":
            assert y[-1] < a["peak_lr"]
            decay_seen = True
        # the loss curves below use the same step axis and colour
        val = [t for t in traces(fig, "val_loss") if t.meta[0] == trial.number][0]
        assert list(val.x) == curve["step"] and val.line.color == tr.line.color
    assert warmup_seen or decay_seen


def test_group_best_matches_the_trials_and_results_best_by(real, panels):
    fig = panels["group_best"].figure
    for key in ("optimizer", "decay", "batch_scaling"):
        best_tr = [t for t in fig.data if list(t.meta or ()) == [key, "best"]][0]
        box = [t for t in fig.data if list(t.meta or ()) == [key, "spread"]][0]
        expected = {str(g.value): g for g in results.best_by(real["plain"], key, real["sf"]) if g.n > 0}
        assert list(best_tr.x) == list(expected)  # the order of `tuner show`, ties included
        assert list(best_tr.y) == sorted(best_tr.y, reverse=True)  # best group first
        for i, label in enumerate(best_tr.x):
            group = [t.value for t in complete(real) if str(t.user_attrs["config"][key]) == label]
            g = expected[label]
            assert math.isclose(best_tr.y[i], max(group)) and math.isclose(g.best, max(group))
            assert best_tr.text[i] == f"#{g.best_trial}"
            assert math.isclose(box.median[i], float(np.median(group)))
            assert math.isclose(box.q1[i], float(np.percentile(group, 25)))
            assert math.isclose(box.q3[i], float(np.percentile(group, 75)))
            assert math.isclose(box.lowerfence[i], min(group)) and math.isclose(box.upperfence[i], max(group))
            # hover data: complete / pruned / diverged counts of the group
            assert list(best_tr.customdata[i][1:4]) == [g.n, g.pruned, g.diverged]


def test_scaling_rules_compare_linear_and_sqrt_at_each_batch_size(real, panels):
    fig = panels["scaling_rules"].figure
    for rule in ("linear", "sqrt"):
        tr = [t for t in fig.data if list(t.meta or ()) == [rule, "best"]]
        trials = [t for t in complete(real) if t.user_attrs["config"]["batch_scaling"] == rule]
        if not trials:
            assert not tr
            continue
        by_batch: dict[int, list[float]] = {}
        for t in trials:
            by_batch.setdefault(t.user_attrs["config"]["batch_size"], []).append(t.value)
        assert list(tr[0].x) == sorted(by_batch)
        assert np.allclose(tr[0].y, [max(by_batch[b]) for b in sorted(by_batch)])
        med = [t for t in fig.data if list(t.meta or ()) == [rule, "median"]][0]
        assert np.allclose(med.y, [np.median(by_batch[b]) for b in sorted(by_batch)])


def test_scaling_rules_say_when_one_rule_has_nothing_to_compare(tmp_path):
    """A study that only trains with linear scaling: the difference plot says why it is empty
    (it was a blank plot titled "best linear − best sqrt")."""
    from optuna.distributions import CategoricalDistribution

    from tuner.config import load_study_file
    from tuner.dashboard.panels import scaling_rules
    from tuner.study import open_study

    path = write_study(tmp_path / "s.toml", name="one_rule", space=(
        'optimizer = "sgd"\nlr = 0.1\nbatch_scaling = "linear"\nbatch_size = [32, 64]'))
    sf = load_study_file(path)
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = open_study(sf, storage)
    for batch, value in ((32, 0.9), (64, 0.92)):
        study.add_trial(optuna.trial.create_trial(
            params={"batch_size": batch}, value=value,
            distributions={"batch_size": CategoricalDistribution([32, 64])},
            user_attrs={"config": {"optimizer": "sgd", "lr": 0.1, "batch_scaling": "linear",
                                   "batch_size": batch}, "peak_lr": 0.1}))
    fig = scaling_rules(PanelContext(study, sf, storage))
    texts = [a.text for a in fig.layout.annotations]
    assert texts == ["no COMPLETE trial with batch_scaling = sqrt: nothing to compare"], texts
    assert "yaxis2" not in fig.layout  # one plot: no empty difference plot under it
    assert fig.layout.xaxis.title.text == "batch size"
    [best] = [t for t in fig.data if list(t.meta or ()) == ["linear", "best"]]
    assert list(best.y) == [0.9, 0.92]
    # a sqrt trial at another batch size: two rules, but no batch size to compare them at
    study.add_trial(optuna.trial.create_trial(
        params={"batch_size": 32}, value=0.8,
        distributions={"batch_size": CategoricalDistribution([32, 64])},
        user_attrs={"config": {"optimizer": "sgd", "lr": 0.1, "batch_scaling": "sqrt",
                               "batch_size": 128}, "peak_lr": 0.1}))
    fig = scaling_rules(PanelContext(study, sf, storage))
    texts = [a.text for a in fig.layout.annotations]
    assert "linear and sqrt share no batch size: nothing to compare" in texts, texts


def test_effective_lr_shows_every_finished_trial_and_marks_pruned_and_diverged(real, panels):
    fig = panels["effective_lr"].figure
    seen: dict[int, tuple[str, str, float]] = {}
    for tr in fig.data:
        rule, kind = tr.meta
        for number, y in zip(tr.customdata[:, 0], tr.y, strict=True):
            seen[int(number)] = (rule, kind, y)
        assert tr.marker.color == {"none": "#7f7f7f", "linear": "#0072b2", "sqrt": "#e69f00"}[rule]
    finished = [t for t in real["trials"] if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert set(seen) == {t.number for t in finished}
    for t in finished:
        rule, kind, y = seen[t.number]
        expected = "diverged" if t.user_attrs.get("diverged") else t.state.name.lower()
        assert (rule, kind) == (t.user_attrs["config"]["batch_scaling"], expected)
        assert math.isclose(y, t.user_attrs["peak_lr"])
    symbols = {tr.meta[1]: tr.marker.symbol for tr in fig.data}
    assert len(set(symbols.values())) == len(symbols)  # complete / pruned / diverged look different


def test_the_reference_needs_no_test_split(tmp_path):
    """`test_size = 0` is valid; the reference failed on the empty test split ("Found array
    with 0 sample(s)"), and the summary and reference-gap views said "not available"."""
    from tuner.config import load_study_file

    path = write_study(tmp_path / "s.toml", data='dataset = "digits"\ntest_size = 0')
    ref = reference_on_split(load_data(load_study_file(path)))
    assert ref["test"] is None and 0.9 < ref["val"] <= 1.0


def test_reference_gap_uses_logistic_regression_on_the_same_split_cached_in_the_study(real, panels):
    fig = panels["reference_gap"].figure
    expected = reference_on_split(load_data(real["sf"]))["val"]
    cached = optuna.load_study(study_name=STUDY_NAME, storage=real["url"]).user_attrs[ATTR_REFERENCE]
    assert math.isclose(cached["val_accuracy"], expected)
    best = top(real, 1)[0]
    meta = fig.layout.meta
    assert math.isclose(meta["reference"], expected)
    assert meta["best_trial"] == best.number and math.isclose(meta["best_accuracy"], best.value)
    assert fig.layout.title.text == (f"Gap to LogisticRegression<br><span style='font-size:13px'>"
                                     f"best trial #{best.number}: {best.value:.4f} "
                                     f"({(best.value - expected) * 100:+.2f} points)</span>")
    [label] = [a for a in fig.layout.annotations if a.text.startswith("LogisticRegression")]
    assert label.text == f"LogisticRegression {expected:.4f}" and label.y == 0.0
    # the label reads away from the nearer edge: never cut
    middle = sum(fig.layout.xaxis.range) / 2
    assert label.xanchor == ("right" if expected > middle else "left")
    bars = fig.data[0]
    per_opt = {}
    for t in complete(real):
        per_opt[t.params["optimizer"]] = max(per_opt.get(t.params["optimizer"], 0), t.value)
    assert dict(zip(bars.y, bars.x, strict=True)) == pytest.approx(per_opt)


def test_reference_is_computed_once_then_read_from_the_study(real, monkeypatch):
    import tuner.dashboard.context as context

    def boom(*_a, **_k):
        raise AssertionError("the cached reference should have been used")

    monkeypatch.setattr(context, "compute_reference", boom)
    study, sf = load_study(STUDY_NAME, open_storage(real["url"]))
    ref = PanelContext(study, sf, study._storage).reference()
    assert "val_accuracy" in ref


def test_a_study_page_reads_the_trials_once_for_its_header_and_its_views(real, monkeypatch):
    """The header and the summary of a page told different counts while a study ran: the views
    read the trials into a dict of their own, and the header read them again."""
    import tuner.dashboard.reader as reader
    from tuner.dashboard.report import render_study_view

    reads = []
    real_read = reader.read_trials

    def counted(*args, **kwargs):
        reads.append(args)
        return real_read(*args, **kwargs)

    monkeypatch.setattr(reader, "read_trials", counted)
    view = render_study_view(real["storage"], STUDY_NAME)
    assert len(reads) == 1, reads
    assert sum(view.header.counts.values()) == len(real["trials"])


def test_the_summary_of_a_study_where_everything_diverged_says_what_to_change(tmp_path):
    from optuna.distributions import FloatDistribution

    from tuner.config import load_study_file
    from tuner.dashboard.panels import summary
    from tuner.study import open_study

    path = write_study(tmp_path / "s.toml", name="boom")
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = open_study(load_study_file(path), storage)
    for lr in (1e3, 1e4):
        study.add_trial(optuna.trial.create_trial(
            params={"lr": lr}, distributions={"lr": FloatDistribution(1e-3, 1e5, log=True)},
            state=TrialState.PRUNED, intermediate_values={1: 0.1},
            user_attrs={"diverged": True, "config": {"optimizer": "sgd", "lr": lr}}))
    text = summary(PanelContext(study, load_study_file(path), storage))
    assert "no COMPLETE trial yet" in text
    assert ("2 of 2 pruned trial(s) diverged (loss not finite or blowing up): the learning rates "
            "tried are too large for this data; lower space.lr") in text, text


def test_a_study_page_marks_running_trials_whose_runner_is_gone(tmp_path):
    """A runner killed mid-trial leaves its trials RUNNING: the page said "3 running" for
    ever; it says which are stale and what fails them."""
    import sqlalchemy
    from optuna.storages._rdb import models

    from tuner.config import load_study_file
    from tuner.dashboard.report import render_study_view
    from tuner.study import open_study

    path = write_study(tmp_path / "s.toml", name="gone", extra_study=(
        "[study.reliability]\nheartbeat_interval = 1\ngrace_period = 600"))
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = open_study(load_study_file(path), storage)
    study.ask()  # RUNNING, and nobody beats its heart
    fresh = render_study_view(storage, "gone")
    assert fresh.header.counts == {"RUNNING": 1} and not fresh.header.extra
    trials = models.TrialModel.__table__  # started (and last seen) an hour ago
    with storage.backend.engine.begin() as conn:
        started = conn.execute(sqlalchemy.select(trials.c.datetime_start)).scalar_one()
        conn.execute(sqlalchemy.update(trials).values(datetime_start=started - timedelta(hours=1)))
    later = render_study_view(storage, "gone")
    assert later.header.extra == {"stale": 1, "grace": 600}
    text = re.sub(r"<[^>]+>", "", later.html)
    assert ("1 of them stale (no heartbeat for over 600 s: its runner is gone): tuner doctor gone "
            "--fail-stale") in text
    # ... and so do the study lists: tuner ls, the dashboard's list and its JSON
    row, = results.list_studies(storage)
    assert (row.counts["RUNNING"], row.stale, row.as_dict()["stale"]) == (1, 1, 1)
    listed = list_page([row], storage="s.db", ids={"gone": 1}, dashboards=["study"])
    assert re.search(r'<td class="num stale"[^>]*>1 \(1 stale\)</td>', listed)
    shown = run_tuner("ls", "--storage", f"sqlite:///{tmp_path / 's.db'}")
    assert shown.returncode == 0 and "1 (1 stale)" in shown.stdout, shown.stdout
    assert ("gone: 1 RUNNING trial(s) without a heartbeat for longer than the grace period: their "
            "runner is gone; the study's next run fails and re-queues them, or now: tuner doctor "
            "gone --fail-stale") in " ".join(shown.stdout.split())
    shown = run_tuner("show", "gone", "--storage", f"sqlite:///{tmp_path / 's.db'}", check=True)
    assert f"study gone in SQLite {tmp_path / 's.db'}: 1 running (1 stale)" in flat(shown.stdout)
    assert "1 RUNNING trial(s) without a heartbeat for longer than the grace period" in flat(shown.stdout)
    assert json.loads(run_tuner("show", "gone", "--storage", f"sqlite:///{tmp_path / 's.db'}",
                                "--json", check=True).stdout)["stale"] == 1
    # doctor tells a trial that saved epochs (was training) from one that saved none (claimed
    # ahead of its worker's current trial, or in its first seconds)
    gone_url = f"sqlite:///{tmp_path / 's.db'}"
    row = json.loads(run_tuner("doctor", "gone", "--storage", gone_url, "--json").stdout)["running"][0]
    assert row["epochs_saved"] == 0 and row["stale"] is True
    assert "none (claimed ahead, or starting)" in flat(run_tuner("doctor", "gone", "--storage",
                                                                  gone_url).stdout)
    trial_id = optuna.load_study(study_name="gone", storage=gone_url).trials[0]._trial_id
    storage.set_trial_intermediate_value(trial_id, 1, 0.5)
    storage.set_trial_intermediate_value(trial_id, 2, 0.6)
    storage.flush(trial_id)
    row = json.loads(run_tuner("doctor", "gone", "--storage", gone_url, "--json").stdout)["running"][0]
    assert row["epochs_saved"] == 2
    # a study made with Optuna directly beats no heartbeat: its running trials cannot be told
    # stale (a live Optuna process may be training them), by ls nor by doctor on SQLite
    plain = optuna.create_study(study_name="plain", storage=storage)
    plain.ask()
    with storage.backend.engine.begin() as conn:
        conn.execute(sqlalchemy.update(trials).values(datetime_start=started - timedelta(hours=1)))
    rows = {r.name: r for r in results.list_studies(storage)}
    assert (rows["plain"].counts["RUNNING"], rows["plain"].stale) == (1, 0)
    plain_url = f"sqlite:///{tmp_path / 's.db'}"
    report = json.loads(run_tuner("doctor", "plain", "--storage", plain_url, "--json").stdout)
    assert report["runner_alive"] is None and report["running"][0]["stale"] is False, report
    assert report["running"][0]["epochs_saved"] is None  # (tuner's runners save epochs; Optuna's?)
    said = flat(run_tuner("doctor", "plain", "--storage", plain_url, check=True).stdout)
    assert "1 running, 0 stale (not created by tuner: its trials beat no heartbeat" in said, said
    refused = run_tuner("doctor", "plain", "--storage", plain_url, "--fail-stale")
    assert refused.returncode == 2 and "was not created by tuner" in flat(refused.stderr)
    assert optuna.load_study(study_name="plain", storage=plain_url).trials[0].state == TrialState.RUNNING


def test_importances_and_history_match_optuna(real, panels):
    imp = panels["importances"].figure.data[0]
    expected = results.importances(real["plain"])
    assert dict(zip(imp.y, imp.x, strict=True)) == pytest.approx(expected)
    # over the parameters every COMPLETE trial has: not an optimizer's own (a subset's spread)
    params = [set(t.params) for t in complete(real)]
    assert set(expected) == set.intersection(*params) and set.union(*params) - set(expected)
    few = optuna.create_study()
    for value in (0.1, 0.2, 0.3):
        few.add_trial(optuna.trial.create_trial(
            params={"lr": value}, distributions={"lr": optuna.distributions.FloatDistribution(0, 1)},
            value=value))
    assert results.importances(few) == {}  # 3 trials: noise, not importances
    hist = panels["history"].figure
    points = {n: v for tr in traces(hist, "trials") for n, v in zip(tr.x, tr.y, strict=True)}
    assert points == {t.number: t.value for t in complete(real)}
    line = [t for t in hist.data if list(t.meta or ()) == ["best", "line"]][0]
    values = [t.value for t in sorted(complete(real), key=lambda t: t.number)]
    assert np.allclose(line.y, np.maximum.accumulate(values))


def test_summary_states_the_best_trial_counts_reference_gap_and_per_optimizer_table(real, panels):
    md = panels["summary"].markdown
    best = top(real, 1)[0]
    assert f"**Best trial #{best.number}**" in md and f"**{best.value:.4f}**" in md
    n_div = sum(1 for t in real["trials"] if t.user_attrs.get("diverged"))
    assert f"({n_div} diverged)" in md
    ref = reference_on_split(load_data(real["sf"]))["val"]
    assert f"**{(best.value - ref) * 100:+.2f} points**" in md
    for g in results.best_by(real["plain"], "optimizer", real["sf"]):
        if g.n:
            assert re.search(rf"\| {g.value} \| {g.best:.4f} \| #{g.best_trial} \|", md), g
    for key in best.user_attrs["config"]:
        assert f"| {key} |" in md


# --- the trial reader -------------------------------------------------------------------------


def test_fast_reader_returns_what_optuna_returns(real):
    forget(real["storage"], real["study"]._study_id)
    fast = read_trials(real["storage"], real["study"]._study_id)
    slow = real["trials"]
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow, strict=True):
        for attr in ("number", "state", "values", "datetime_start", "datetime_complete", "params",
                     "distributions", "user_attrs", "system_attrs", "_trial_id"):
            assert getattr(a, attr) == getattr(b, attr), (a.number, attr)


def test_fast_reader_picks_up_new_and_changed_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    storage = open_storage(url)
    study = optuna.create_study(study_name="r", storage=storage, direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    running = study.ask()
    running.suggest_float("x", 0, 1)
    assert [t.state for t in read_trials(storage, study._study_id)] == [TrialState.COMPLETE] * 3 + [
        TrialState.RUNNING]
    study.tell(running, 0.5)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    trials = read_trials(storage, study._study_id)
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state == TrialState.COMPLETE for t in trials) and trials[3].value == 0.5


# --- dashboard files and the registry ---------------------------------------------------------


def test_bundled_dashboards_list_the_study_and_nightly_panels():
    study = load_dashboard("study")
    assert [p.type for p in study.panels] == STUDY_PANELS
    nightly = load_dashboard("nightly")
    # a night gets the nightly views and, included from study.toml, every study view
    assert [p.type for p in nightly.panels] == ["nightly_trend", "nightly_choices",
                                                "nightly_verdicts", *STUDY_PANELS]
    folder = REPO / "dashboards"
    assert nightly.files == (str(folder / "nightly.toml"), str(folder / "study.toml"))
    included = nightly.panels[3 + STUDY_PANELS.index("lr_schedule")]
    where = f"{REPO / 'dashboards' / 'study.toml'}: panel 3 ('lr_schedule')"
    assert included.where(nightly.source) == where
    assert bundled_dir() == REPO / "dashboards"


def test_include_follows_the_users_folder_and_rejects_cycles(tmp_path):
    (tmp_path / "study.toml").write_text('[[panel]]\ntype = "history"\n')
    nightly = load_dashboard("nightly", tmp_path)  # the bundled nightly.toml, the user's study.toml
    assert [p.type for p in nightly.panels] == ["nightly_trend", "nightly_choices", "nightly_verdicts",
                                                "history"]
    (tmp_path / "a.toml").write_text('include = "b"\n')
    (tmp_path / "b.toml").write_text('include = ["a"]\n[[panel]]\ntype = "history"\n')
    with pytest.raises(DashboardError, match="include 'a' includes itself \\(a.toml -> b.toml -> a.toml\\)"):
        load_dashboard("a", tmp_path)
    (tmp_path / "c.toml").write_text('include = ["nope"]\n')
    with pytest.raises(DashboardError, match="c.toml: include 'nope': no dashboard named 'nope'"):
        load_dashboard("c", tmp_path)
    with pytest.raises(DashboardError, match="include must be a dashboard name"):
        parse_dashboard({"include": [3], "panel": [{"type": "history"}]}, name="x")


def test_unknown_panel_names_are_a_clear_error_when_rendering(real):
    spec = parse_dashboard({"panel": [{"type": "history"}, {"type": "no_such_panel"}]}, name="x",
                           source="my.toml")
    with pytest.raises(DashboardError) as info:
        render_dashboard(spec, real["study"], real["sf"], real["storage"])
    assert "my.toml: panel 2 ('no_such_panel'): unknown panel type" in info.value.message
    assert "history" in info.value.hint and "learning_curves" in info.value.hint


def test_unknown_or_mistyped_options_are_errors(real):
    spec = parse_dashboard({"panel": [{"type": "learning_curves", "topk": 3}]}, name="x", source="a.toml")
    with pytest.raises(DashboardError, match="unknown option 'topk'.*top_k"):
        render_dashboard(spec, real["study"], real["sf"], real["storage"])
    spec = parse_dashboard({"panel": [{"type": "learning_curves", "top_k": "ten"}]}, name="x",
                           source="a.toml")
    with pytest.raises(DashboardError, match="top_k must be an integer"):
        render_dashboard(spec, real["study"], real["sf"], real["storage"])


# What a new user wrote (each was accepted and drew a wrong or empty view, or failed inside the
# panel), and the one error each now is: the file, the panel's number and type, the option, the
# value and what is allowed, before any panel is built.
BAD_VALUES = [
    ({"type": "learning_curves", "top_k": -4}, "option top_k must be an integer >= 1, got -4"),
    ({"type": "learning_curves", "top_k": 0}, "option top_k must be an integer >= 1, got 0"),
    ({"type": "learning_curves", "max_points": 1}, "option max_points must be an integer >= 2, got 1"),
    ({"type": "group_best", "keys": ["optimiser"]},
     "option keys must be a non-empty list of distinct names among optimizer, lr, batch_size, "
     "base_batch_size, batch_scaling, warmup_epochs, decay, reg, loss, got ['optimiser']: "
     "'optimiser' is not among them (did you mean 'optimizer'?)"),
    ({"type": "group_best", "keys": []}, "option keys must be a non-empty list .*, got []: it is empty"),
    ({"type": "scaling_rules", "rules": ["linear", "sqr"]},
     "option rules must be a non-empty list of distinct names among none, linear, sqrt, got "
     "['linear', 'sqr']: 'sqr' is not among them (did you mean 'sqrt'?)"),
    ({"type": "scaling_rules", "rules": ["sqrt", "sqrt"]},
     "option rules must be .*, got ['sqrt', 'sqrt']: 'sqrt' appears more than once"),
    ({"type": "summary", "groups": ["optimizers"]},
     "option groups must be a list of distinct names among optimizer, .*, got ['optimizers']: "
     "'optimizers' is not among them (did you mean 'optimizer'?)"),
    ({"type": "summary", "top_k": -1},
     "option top_k must be an integer >= 0 (0: no top-trials table), got -1"),
    ({"type": "effective_lr", "max_points": -5}, "option max_points must be an integer >= 1, got -5"),
    ({"type": "reference_gap", "by": "nonsense"},
     "option by must be one of optimizer, lr, batch_size, base_batch_size, batch_scaling, "
     "warmup_epochs, decay, reg, loss, got 'nonsense'"),
    ({"type": "reference_gap", "by": "optimiser"},
     "option by must be one of .*, got 'optimiser': did you mean 'optimizer'?"),
    ({"type": "lr_schedule", "lr_axis": "logarithmic"},
     "option lr_axis must be one of auto, linear, log, got 'logarithmic'"),
    ({"type": "lr_schedule", "top_k": 0}, "option top_k must be an integer >= 1, got 0"),
    ({"type": "lr_schedule", "points": 0}, "option points must be an integer >= 2, got 0"),
    ({"type": "importances", "top": 0}, "option top must be an integer >= 1, got 0"),
    ({"type": "nightly_trend", "last": -2}, "option last must be an integer >= 0 (0: every night), got -2"),
    ({"type": "nightly_verdicts", "last": -1}, "option last must be an integer >= 0 .*, got -1"),
]


@pytest.mark.parametrize(("entry", "message"), BAD_VALUES,
                         ids=[f"{e['type']}.{k}={v}" for e, _ in BAD_VALUES
                              for k, v in e.items() if k != "type"])
def test_option_values_out_of_range_or_unknown_are_errors(entry, message):
    spec = parse_dashboard({"panel": [{"type": "history"}, entry]}, name="x", source="bd/study.toml")
    with pytest.raises(DashboardError) as info:
        check_panels(spec)
    pattern = ".*".join(map(re.escape, message.split(".*")))  # the whole message, ".*": anything
    assert re.fullmatch(f"bd/study.toml: panel 2 \\({entry['type']!r}\\): {pattern}", info.value.message), \
        info.value.message
    assert info.value.hint is None  # "registered panels: ..." is for unknown panel types


def test_every_allowed_value_error_is_raised_before_any_panel_is_built(real, tmp_path):
    """The values are checked with the dashboard file, as unknown options are: `tuner report`
    writes nothing and says what is wrong (exit 2), where it used to draw "the top -4 trials"
    or show a KeyError in the panel."""
    spec = parse_dashboard({"panel": [{"type": "history"}, {"type": "reference_gap", "by": "nonsense"},
                                      {"type": "learning_curves", "top_k": -4}]},
                           name="x", source="bd/study.toml")
    with pytest.raises(DashboardError) as info:
        render_dashboard(spec, real["study"], real["sf"], real["storage"])
    assert info.value.message == (
        "bd/study.toml: panel 2 ('reference_gap'): option by must be one of optimizer, lr, batch_size, "
        "base_batch_size, batch_scaling, warmup_epochs, decay, reg, loss, got 'nonsense'; "
        "bd/study.toml: panel 3 ('learning_curves'): option top_k must be an integer >= 1, got -4")
    folder = tmp_path / "bd"
    folder.mkdir()
    (folder / "study.toml").write_text('[[panel]]\ntype = "history"\n\n'
                                       '[[panel]]\ntype = "scaling_rules"\nrules = ["linear", "sqr"]\n')
    out = tmp_path / "x.html"
    proc = run_tuner("report", STUDY_NAME, "--dashboards", folder, "-o", out, "--storage", real["url"])
    assert proc.returncode == 2 and not out.exists(), proc.stdout + proc.stderr
    assert (f"error: {folder / 'study.toml'}: panel 2 ('scaling_rules'): option rules must be a non-empty "
            "list of distinct names among none, linear, sqrt, got ['linear', 'sqr']: 'sqr' is not among "
            "them (did you mean 'sqrt'?)") in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_smallest_allowed_values_are_honoured(real):
    spec = parse_dashboard({"panel": [
        {"type": "summary", "top_k": 0, "groups": []},
        {"type": "learning_curves", "top_k": 1, "max_points": 3},
        {"type": "summary", "groups": ["batch_size", "loss"]},
        {"type": "reference_gap", "by": "decay"},
    ]}, name="x")
    out = render_dashboard(spec, real["study"], real["sf"], real["storage"])
    assert [p.error for p in out] == [None] * len(out)
    assert "**Best trial #" in out[0].markdown
    assert not re.search(r"\| top \d+ \|", out[0].markdown) and "| best val_accuracy |" not in out[0].markdown
    curves = out[1].figure.data
    assert {t.meta[0] for t in curves} == {top(real, 1)[0].number}
    assert all(len(t.x) == 3 for t in curves)  # max_points below 20 is no longer raised to 20
    assert "| batch_size | best" in out[2].markdown and "| loss | best" in out[2].markdown
    decays = {t.params.get("decay") for t in complete(real)}
    assert set(out[3].figure.data[0].y) == decays


def test_a_panels_own_allowed_values_are_checked_and_its_declaration_too(real):
    from tuner.dashboard import Allowed

    seen = []
    register_panel("bins_for_test", lambda ctx: seen.append(ctx.options) or None,
                   options={"bins": (int, 30, Allowed(low=1, high=500)),
                            "by": (str, "optimizer", Allowed(names=("optimizer", "decay")))})
    try:
        for entry, message in (({"bins": 0}, "option bins must be an integer in 1..500, got 0"),
                               ({"bins": 501}, "option bins must be an integer in 1..500, got 501"),
                               ({"by": "lr"}, "option by must be one of optimizer, decay, got 'lr'")):
            spec = parse_dashboard({"panel": [{"type": "bins_for_test", **entry}]}, name="x", source="a.toml")
            where = "a.toml: panel 1 ('bins_for_test')"
            with pytest.raises(DashboardError, match=re.escape(f"{where}: {message}")):
                render_dashboard(spec, real["study"], real["sf"], real["storage"])
        spec = parse_dashboard({"panel": [{"type": "bins_for_test", "bins": 500, "by": "decay"}]}, name="x")
        render_dashboard(spec, real["study"], real["sf"], real["storage"])
        assert seen == [{"bins": 500, "by": "decay"}]
    finally:
        unregister_panel("bins_for_test")
    with pytest.raises(ValueError, match="the default 0 is not an integer >= 1"):
        register_panel("bad_default_for_test", lambda ctx: None, options={"n": (int, 0, Allowed(low=1))})
    with pytest.raises(TypeError, match="must be an Allowed"):
        register_panel("bad_default_for_test", lambda ctx: None, options={"n": (int, 0, (1, 2))})
    from tuner.dashboard import get_panel

    assert get_panel("bad_default_for_test") is None


@pytest.mark.parametrize(("raw", "message"), [
    ({}, "no \\[\\[panel\\]\\] entries"),
    ({"panel": [{"title": "x"}]}, "missing type"),
    ({"panel": [{"type": "history", "width": "wide"}]}, "width must be one of"),
    ({"panel": [{"type": "history", "height": 10}]}, "height must be"),
    ({"panels": []}, "unknown key"),
])
def test_invalid_dashboard_files(raw, message):
    with pytest.raises(DashboardError, match=message):
        parse_dashboard(raw, name="x", source="x.toml")


def test_invalid_toml_names_the_file(tmp_path):
    (tmp_path / "study.toml").write_text("[[panel]\ntype=")
    with pytest.raises(DashboardError, match=r"study.toml: invalid TOML"):
        load_dashboard("study", tmp_path)


def test_user_folder_overrides_the_bundled_dashboards(tmp_path, monkeypatch):
    (tmp_path / "study.toml").write_text('title = "mine"\n[[panel]]\ntype = "history"\n')
    assert load_dashboard("study", tmp_path).title == "mine"
    monkeypatch.setenv(ENV_DASHBOARDS, str(tmp_path))
    assert load_dashboard("study").title == "mine"
    assert [p.type for p in load_dashboard("nightly").panels][0] == "nightly_trend"  # falls back
    with pytest.raises(DashboardError, match="does not exist"):
        load_dashboard("study", tmp_path / "missing")
    with pytest.raises(DashboardError, match="no dashboard named 'nope'"):
        load_dashboard("nope")


def test_panels_registered_later_render_with_the_same_context(real):
    spec = parse_dashboard({"panel": [{"type": "later_trend"}, {"type": "later_choices"},
                                      {"type": "later_verdicts"}]}, name="later")
    with pytest.raises(DashboardError, match="unknown panel type 'later_trend'"):
        render_dashboard(spec, real["study"], real["sf"], real["storage"])
    seen = []

    def trend(ctx):
        seen.append((ctx.study.study_name, ctx.study_file is not None, ctx.storage is not None, ctx.options))
        import plotly.graph_objects as go

        return go.Figure(go.Scatter(x=[1, 2], y=[0.9, 0.95]), layout={"title": {"text": "trend"}})

    try:
        register_panel("later_trend", trend)
        register_panel("later_choices", lambda ctx: "**choices**")
        register_panel("later_verdicts", lambda ctx: None)
        with pytest.raises(ValueError, match="already registered"):
            register_panel("later_trend", lambda ctx: None)
        out = render_dashboard(spec, real["study"], real["sf"], real["storage"])
        assert [p.error for p in out] == [None] * len(out)
        assert out[0].title == "trend" and out[1].markdown == "**choices**"
        assert out[2].markdown == "*Nothing to show yet.*"
        assert seen == [(STUDY_NAME, True, True, {})]
    finally:
        for name in ("later_trend", "later_choices", "later_verdicts"):
            unregister_panel(name)


def test_the_nightly_panels_are_registered():
    from tuner.dashboard import get_panel

    for name in ("nightly_trend", "nightly_choices", "nightly_verdicts"):
        assert get_panel(name) is not None, name
    check_panels(load_dashboard("nightly"))


def test_a_failing_builder_is_reported_in_its_panel_only(real):
    register_panel("broken_for_test", lambda ctx: 1 / 0)
    try:
        spec = parse_dashboard({"panel": [{"type": "broken_for_test"}, {"type": "history"}]}, name="x")
        out = render_dashboard(spec, real["study"], real["sf"], real["storage"])
        assert out[0].error == "ZeroDivisionError: division by zero"
        assert out[1].error is None and out[1].figure is not None
    finally:
        unregister_panel("broken_for_test")


def test_every_panel_copes_with_a_study_without_complete_trials(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'e.db'}")
    study = optuna.create_study(study_name="empty", storage=storage, direction="maximize")
    t = study.ask()
    t.suggest_categorical("optimizer", ["sgd"])
    study.tell(t, state=TrialState.FAIL)
    out = render_dashboard(load_dashboard("study"), study, None, storage)
    assert [p.error for p in out] == [None] * len(out)
    assert "no COMPLETE trial yet" in out[0].markdown


# --- the views stored with the study ---------------------------------------------------------


def test_tuner_run_stored_the_views_with_the_study(real):
    plain = optuna.load_study(study_name=STUDY_NAME, storage=real["url"])
    ids = tuner_graph_object_ids(plain)
    assert ids == sorted(f"tuner-{p}" for p in STUDY_PANELS if p != "summary")
    import optuna_dashboard

    note = optuna_dashboard.get_note(plain)
    best = top(real, 1)[0]
    assert note.startswith(NOTE_MARKER)
    assert f"**Best trial #{best.number}**" in note


def _plot_rows(study: optuna.Study) -> dict[str, str]:
    attrs = study._storage.get_study_system_attrs(study._study_id)
    return {k: v for k, v in attrs.items() if k.startswith(TUNER_PLOT_PREFIX)}


def test_refreshing_replaces_the_stored_views_and_keeps_the_users_note(tmp_path):
    url, _ = make_study(tmp_path, name="refresh", n_trials=15)
    storage = open_storage(url)
    study, sf = load_study("refresh", storage)
    import optuna_dashboard
    import plotly.graph_objects as go
    from optuna_dashboard._custom_plot_data import get_plotly_graph_objects

    optuna_dashboard.save_plotly_graph_object(study, go.Figure(), graph_object_id="users-own")
    body = optuna_dashboard.get_note(study)
    optuna_dashboard.save_note(study, "my own words\n\n" + body)
    before = _plot_rows(study)
    full = render_dashboard(load_dashboard("study"), study, sf, storage)
    for _ in range(3):
        attach_views(study, full)
    assert _plot_rows(study) == before  # same views: the same rows, nothing piled up
    small = parse_dashboard({"panel": [{"type": "history"}, {"type": "summary", "top_k": 1}]}, name="s")
    attach_views(study, render_dashboard(small, study, sf, storage))
    assert tuner_graph_object_ids(study) == ["tuner-history"]
    rows = _plot_rows(study)
    assert all(k.startswith(TUNER_PLOT_PREFIX + "history:") for k in rows)
    objects = get_plotly_graph_objects(study._storage.get_study_system_attrs(study._study_id))
    assert set(objects) == {"tuner-history", "users-own"}  # the user's own graph object is kept
    note = optuna_dashboard.get_note(study)
    assert note.startswith("my own words\n\n" + NOTE_MARKER) and note.count(NOTE_MARKER) == 1
    assert "| top 1 |" in note


def test_the_runner_hook_refreshes_periodically_only_when_trials_finished(tmp_path):
    url, _ = make_study(tmp_path, name="hook", n_trials=12)
    storage = open_storage(url)
    study, _ = load_study("hook", storage)
    small = tmp_path / "dashboards"
    small.mkdir()
    (small / "study.toml").write_text('[[panel]]\ntype = "history"\n[[panel]]\ntype = "summary"\n')
    hook = DashboardHook(folder=str(small))
    hook.on_start(study)
    hook._thread.join(60)
    # the run that made the study ended normally: its views are current, no render at start
    assert hook.refreshes == 0 and study.user_attrs["tuner.views_of"] == [12, 12]
    hook.periodic(study)
    hook._thread.join(60)
    assert hook.refreshes == 0  # nothing finished since the stored views: no re-render
    study.enqueue_trial({"optimizer": "adam"})
    t = study.ask()
    study.tell(t, 0.5)
    hook.periodic(study)
    hook._thread.join(60)
    assert hook.refreshes == 1 and tuner_graph_object_ids(study) == ["tuner-history"]
    hook.periodic(study)
    hook._thread.join(60)
    assert hook.refreshes == 1  # nothing finished since: no re-render
    hook.on_end(study)
    assert hook.refreshes == 1  # nor at the end
    t = study.ask()
    study.tell(t, 0.75)
    hook.on_end(study)
    assert hook.refreshes == 2
    assert "tuner summary" in __import__("optuna_dashboard").get_note(study)
    # a trial finished after the last render (an interrupted run, another runner): the next
    # run's start renders again
    t = study.ask()
    study.tell(t, 0.25)
    late = DashboardHook(folder=str(small))
    late.on_start(study)
    late._thread.join(60)
    assert late.refreshes == 1 and study.user_attrs["tuner.views_of"] == [15, 15]


def test_the_hook_warns_once_about_a_broken_dashboard_file(tmp_path, caplog):
    """A dashboard file that breaks while a study runs: one warning, not one per refresh; a
    different failure is warned about again."""
    url, _ = make_study(tmp_path, name="broken", n_trials=4)
    study, _ = load_study("broken", open_storage(url))
    folder = tmp_path / "dashboards"
    folder.mkdir()
    (folder / "study.toml").write_text('[[panel]]\ntype = "histroy"\n')
    hook = DashboardHook(folder=str(folder))
    with caplog.at_level("WARNING", logger="tuner"):
        for value in (0.1, 0.2, 0.3):
            trial = study.ask()
            study.tell(trial, value)
            hook._refresh(study)
        (folder / "study.toml").write_text('[[panel]]\ntype = "sumary"\n')
        trial = study.ask()
        study.tell(trial, 0.4)
        hook._refresh(study)
    warned = [r.getMessage() for r in caplog.records if "refreshing the dashboard views" in r.getMessage()]
    assert len(warned) == 2 and "histroy" in warned[0] and "sumary" in warned[1], warned
    assert hook.refreshes == 0


def test_the_hook_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_DASHBOARD_VIEWS", "0")
    storage = open_storage(f"sqlite:///{tmp_path / 'h.db'}")
    study = optuna.create_study(study_name="h", storage=storage)
    hook = DashboardHook()
    hook.on_start(study)
    hook.periodic(study)
    hook.on_end(study)
    assert hook._thread is None and hook.refreshes == 0


def test_the_hook_loads_no_plotting_library_until_it_renders():
    """`tuner run` builds its DashboardHook before any trial: the package and the hook's module
    import neither plotly nor pandas (1.5 s), and the built-in panels register on first lookup."""
    code = ("import sys, tuner.dashboard, tuner.dashboard.attach; "
            "print(sorted({'plotly', 'pandas'} & set(sys.modules))); "
            "from tuner.dashboard import panel_names; print('history' in panel_names(), "
            "'nightly_trend' in panel_names())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split("\n")[:2] == ["[]", "True True"], proc.stdout


def test_a_panel_registered_under_a_built_in_name_replaces_it_before_any_lookup():
    """The built-ins load lazily: a user's replacement registered first must still win, and
    the other built-ins must still be there."""
    code = ("from tuner.dashboard.registry import get_panel, panel_names, register_panel, "
            "unregister_panel\n"
            "def mine(ctx): return 'mine'\n"
            "register_panel('history', mine, replace=True)\n"
            "unregister_panel('importances')\n"
            "print(get_panel('history').builder is mine, 'summary' in panel_names(), "
            "'importances' in panel_names())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["True", "True", "False"], proc.stdout + proc.stderr


# --- tuner report -----------------------------------------------------------------------------


def test_report_is_one_self_contained_file(real, tmp_path):
    out = tmp_path / "report.html"
    proc = run_tuner("report", STUDY_NAME, "-o", out, "--storage", real["url"])
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout.replace("\n", "")
    html = out.read_text()
    assert html.count("* plotly.js v") == 1  # plotly.js embedded once, not per figure
    assert html.count("<script type=\"application/json\" data-plot=") == len(STUDY_PANELS) - 1
    shell = re.sub(r"(?s)<script>.*?</script>", "<script></script>", html)  # the page minus inline code
    assert "src=" not in shell and "<link" not in shell and "http" not in shell  # nothing to fetch
    for p in STUDY_PANELS:
        assert f'data-panel="{p}"' in html
    best = top(real, 1)[0]
    assert f'id="best-value">{best.value:.4f}<' in html


def test_report_errors(real, tmp_path):
    proc = run_tuner("report", "nope", "--storage", real["url"])
    assert proc.returncode == 2 and "no study named 'nope'" in proc.stderr
    proc = run_tuner("report", STUDY_NAME, "--storage", f"sqlite:///{tmp_path / 'none.db'}")
    assert proc.returncode == 3 and "no database at" in proc.stderr
    assert not (tmp_path / "none.db").exists()  # never creates an empty database
    broken = tmp_path / "broken.toml"
    broken.write_text('[[panel]]\ntype = "no_such_panel"\n')
    proc = run_tuner("report", STUDY_NAME, "--storage", real["url"], "--dashboard", broken,
                     "-o", tmp_path / "n.html")
    assert proc.returncode == 2 and "unknown panel type 'no_such_panel'" in proc.stderr
    # only HTML is written, and under that name (it wrote HTML into x.pdf)
    proc = run_tuner("report", STUDY_NAME, "--storage", real["url"], "-o", tmp_path / "x.pdf")
    assert proc.returncode == 2 and "tuner report writes one HTML file; name it .html, or give an " \
        "existing folder to write STUDY.html in" in flat(proc.stderr)
    assert not (tmp_path / "x.pdf").exists()
    # a folder: STUDY.html in it; a folder that does not exist is said to be one
    proc = run_tuner("report", STUDY_NAME, "--storage", real["url"], "-o", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / f"{STUDY_NAME}.html").stat().st_size > 0
    proc = run_tuner("report", STUDY_NAME, "--storage", real["url"], "-o", f"{tmp_path / 'out'}/")
    assert proc.returncode == 2 and f"--output {tmp_path / 'out'}/: folder {tmp_path / 'out'} does " \
        "not exist" in flat(proc.stderr), proc.stderr


def test_report_with_a_user_dashboard_folder(real, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "study.toml").write_text('title = "Just {study}"\n[[panel]]\ntype = "history"\n')
    out = tmp_path / "r.html"
    proc = run_tuner("report", STUDY_NAME, "-o", out, "--storage", real["url"],
                     env=tuner_env(TUNER_DASHBOARDS=str(folder)))
    assert proc.returncode == 0, proc.stderr
    html = out.read_text()
    assert "Just dash" in html and html.count("data-plot=") == 1


# --- a large study ----------------------------------------------------------------------------


def _bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_dashboard", REPO / "benchmarks" / "dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LARGE_TRIALS = 5_000
LARGE_BOUND_S = 20.0  # ~3 s here; a regression to "minutes" fails even on a loaded CI machine


def test_a_large_study_renders_in_seconds(tmp_path):
    """Issue 5: the views of a 5,000-trial study build in seconds. The trials are written with
    bulk inserts (benchmarks/dashboard.py, ~3 s), then read cold and rendered."""
    url = f"sqlite:///{tmp_path / 'big.db'}"
    _bench().create_study(url, LARGE_TRIALS, name="big")
    storage = open_storage(url)  # a new storage object: nothing cached
    started = time.perf_counter()
    study, sf = load_study("big", storage)
    study.set_user_attr(ATTR_REFERENCE, {"val_accuracy": 0.96})  # the reference is timed elsewhere
    out = render_dashboard(load_dashboard("study"), study, sf, storage)
    elapsed = time.perf_counter() - started
    assert [p.error for p in out] == [None] * len(out)
    fig = {p.type: p for p in out}["effective_lr"].figure
    assert sum(len(t.x) for t in fig.data) == LARGE_TRIALS
    assert elapsed < LARGE_BOUND_S, f"{elapsed:.1f} s for {LARGE_TRIALS:,} trials"


# --- packaging --------------------------------------------------------------------------------


def test_bundled_dashboards_are_in_the_wheel_and_found_there(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path, REPO],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "hatchling" in proc.stderr and "No matching distribution" in proc.stderr:
        pytest.skip("hatchling not available to build the wheel")
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("tuner-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert {"tuner/_dashboards/study.toml", "tuner/_dashboards/nightly.toml"} <= names
        zf.extractall(tmp_path / "site")
    code = ("from tuner.dashboard.spec import bundled_dir, load_dashboard; "
            "print(bundled_dir()); print(len(load_dashboard('study').panels))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**tuner_env(), "PYTHONPATH": str(tmp_path / "site")})
    assert proc.returncode == 0, proc.stderr
    where, count = proc.stdout.split()
    assert Path(where) == tmp_path / "site" / "tuner" / "_dashboards" and int(count) == len(STUDY_PANELS)


def test_keys_the_study_file_left_out_show_the_engine_default():
    """A study without batch_scaling / warmup in its space: the summary showed scaling "None"
    (and "none" is a real rule) and warmup "-"; those trials trained with the defaults."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from tuner.dashboard.context import trial_frame

    trial = create_trial(value=0.9, params={"lr": 0.01},
                         distributions={"lr": FloatDistribution(1e-4, 1.0, log=True)},
                         user_attrs={"config": {"optimizer": "adam", "lr": 0.01, "batch_size": 64}})
    row = trial_frame([trial]).iloc[0]
    assert (row.batch_scaling, row.warmup_epochs, row.decay, row.base_batch_size) == (
        "none", 0.0, "constant", 256)


def test_report_of_a_multi_objective_study_is_a_clear_error(tmp_path):
    """A study made with Optuna directly with two objectives has no single best trial for the
    views to rank by: one error line and a hint (exit 2), no traceback, no file."""
    url = f"sqlite:///{tmp_path / 'multi.db'}"
    study = optuna.create_study(directions=["maximize", "minimize"], storage=url, study_name="multi")
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=4)
    out = tmp_path / "multi.html"
    proc = run_tuner("report", "multi", "-o", out, "--storage", url, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    first, hint = proc.stderr.strip().splitlines()
    assert first.startswith("error: study 'multi' is multi-objective (2 objectives: maximize, "
                            "minimize; not created by tuner)"), first
    assert "tuner show multi" in hint
    assert not out.exists() and not list(tmp_path.glob("*.html"))
