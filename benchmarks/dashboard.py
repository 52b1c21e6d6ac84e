"""How long the dashboard views take on a large study (issue 5: "seconds, not minutes").

Builds a 5,000-trial study shaped like a real `tuner run` of studies/digits.toml (same search
space, same study and trial attributes: config, peak_lr, total/warmup steps, a 40-epoch
learning curve per trial, 40 intermediate values, pruned and diverged trials) and times, each in
a new storage object so nothing is cached:

* reading the study (``load_study`` + ``get_trials(deepcopy=False)``, cold) and building the
  trial table the panels share;
* every panel of dashboards/study.toml (the scikit-learn reference is computed first and timed
  on its own: it is computed once per study and cached with it);
* the whole study page, the self-contained report, storing the views with the study for
  optuna-dashboard, and a warm re-render.

The trials are written with bulk SQL inserts (a few seconds; ``study.add_trials`` commits
every trial, ~10 ms each). Configurations come from the real search space with a seeded random
sampler; values and curves are synthetic but realistic (an optimum LR per optimizer, noise,
pruning, divergence at too-high effective LRs).

    .venv/bin/python benchmarks/dashboard.py                        # 5,000 trials, SQLite in a temp dir
    .venv/bin/python benchmarks/dashboard.py --trials 1000
    .venv/bin/python benchmarks/dashboard.py --storage postgresql+psycopg://postgres@127.0.0.1/bench
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy
from optuna import distributions as D
from optuna.storages._rdb import models
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]
STUDY_FILE = REPO / "studies" / "digits.toml"
N_TRAIN = 1079  # digits train split (studies/digits.toml)
EPOCHS = 40
OPTIMUM_LR = {"sgd": 0.5, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.1, "rmsprop": 0.003,
              "adam": 0.005, "adamw": 0.005}
BEST_ACC = {"sgd": 0.955, "momentum": 0.962, "nesterov": 0.963, "adagrad": 0.945, "rmsprop": 0.958,
            "adam": 0.966, "adamw": 0.965}


class RandomTrial:
    """Answers the search space's ``suggest_*`` calls at random and records the Optuna
    parameters and distributions (what a sampled trial stores)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.params: dict[str, Any] = {}
        self.distributions: dict[str, D.BaseDistribution] = {}

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        value = choices[int(self.rng.integers(len(choices)))]
        self.params[name], self.distributions[name] = value, D.CategoricalDistribution(choices)
        return value

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False,
                      step: float | None = None) -> float:
        if log:
            value = float(math.exp(self.rng.uniform(math.log(low), math.log(high))))
        else:
            value = float(self.rng.uniform(low, high))
        if step is not None:
            value = low + round((value - low) / step) * step
        self.params[name] = value
        self.distributions[name] = D.FloatDistribution(low, high, log=log, step=step)
        return value

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False, step: int = 1) -> int:
        value = int(self.rng.integers(low, high + 1))
        value = low + (value - low) // step * step
        self.params[name], self.distributions[name] = value, D.IntDistribution(low, high, log=log, step=step)
        return value


def synthetic_trial(number: int, space: Any, rng: np.random.Generator) -> dict[str, Any]:
    """One finished trial: Optuna params, state, value, user attributes, intermediate values."""
    from tuner import params as P
    from tuner.train import make_plan

    rt = RandomTrial(rng)
    config = space.suggest(rt)
    resolved = P.resolve(config)
    plan = make_plan(resolved, N_TRAIN, EPOCHS)
    opt = config["optimizer"]
    miss = abs(math.log10(plan.peak_lr / OPTIMUM_LR[opt]))
    final = BEST_ACC[opt] - 0.012 * miss ** 2 - 0.004 * (config["decay"] == "constant") \
        - abs(rng.normal(0, 0.006))
    final = float(min(max(final, 0.1), 0.99))
    diverge_at = None
    if miss > 1.2 and plan.peak_lr > OPTIMUM_LR[opt] and rng.random() < 0.6:
        diverge_at = int(rng.integers(1, 6))
    prune_at = None
    if diverge_at is None and number > 20 and final < 0.95 and rng.random() < 0.8:
        prune_at = int(rng.integers(5, 16))
    epochs = diverge_at or (prune_at + int(rng.integers(0, 4)) if prune_at else EPOCHS)
    tau = 1.5 + 4 * miss
    e = np.arange(1, epochs + 1)
    acc = final - (final - 0.1) * np.exp(-e / tau) + rng.normal(0, 0.002, len(e))
    val_loss = 0.08 + 2.2 * np.exp(-e / tau) + 0.2 * miss + rng.normal(0, 0.003, len(e))
    train_loss = val_loss * 0.9
    if diverge_at:
        val_loss[-1] = float("nan")
        train_loss[-1] = 1e6
    spe = plan.steps_per_epoch
    curve = {"epoch": e.tolist(), "step": (e * spe).tolist(), "train_loss": np.round(train_loss, 6).tolist(),
             "val_loss": [None if math.isnan(v) else round(float(v), 6) for v in val_loss],
             "val_accuracy": np.round(np.clip(acc, 0, 1), 6).tolist(),
             "lr": [plan.schedule(int(s) - 1) for s in e * spe]}
    attrs: dict[str, Any] = {
        "config": config, "seed": int(rng.integers(2**32)), "peak_lr": plan.peak_lr,
        "total_steps": plan.total_steps, "warmup_steps": plan.warmup_steps, "steps_per_epoch": spe,
        "curve": curve, "wall_time": 0.001 * epochs * spe / 10, "samples_processed": int(epochs * N_TRAIN),
        "steps_done": int(epochs * spe), "runner": "bench:1"}
    if diverge_at:
        state, value = TrialState.PRUNED, None
        attrs.update(diverged=True, divergence_step=int(diverge_at * spe - 3), divergence_epoch=diverge_at,
                     divergence_reason="loss is not finite (nan)")
    elif prune_at:
        state, value = TrialState.PRUNED, None
        attrs["pruned_at_epoch"] = prune_at
    else:
        state, value = TrialState.COMPLETE, float(curve["val_accuracy"][-1])
    intermediate = {int(i): float(a) for i, a in zip(e, curve["val_accuracy"], strict=True)}
    return {"number": number, "state": state, "value": value, "params": rt.params,
            "distributions": rt.distributions, "user_attrs": attrs, "intermediate": intermediate}


def create_study(url: str, n_trials: int, *, name: str = "digits-5k", seed: int = 0,
                 batch: int = 500) -> float:
    """Create study ``name`` at ``url`` with ``n_trials`` synthetic trials (bulk inserts);
    returns the seconds it took."""
    from tuner.config import load_study_file
    from tuner.storage import open_storage
    from tuner.study import ATTR_CONFIG, ATTR_DATA, ATTR_METRIC, ATTR_SPACE

    started = time.perf_counter()
    sf = load_study_file(STUDY_FILE).with_overrides(name=name, n_trials=n_trials)
    storage = open_storage(url)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr(ATTR_CONFIG, sf.to_json())
    study.set_user_attr(ATTR_SPACE, sf.space.fingerprint())
    study.set_user_attr(ATTR_METRIC, "val_accuracy")
    study.set_user_attr(ATTR_DATA, {"description": "digits: 64 features, 10 classes, train/val/test = "
                                                   "1079/359/359", "n_train": N_TRAIN, "n_val": 359,
                                    "n_test": 359, "n_features": 64, "n_classes": 10})
    rng = np.random.default_rng(seed)
    engine = storage.backend.engine
    t = {key: model.__table__ for key, model in (
        ("trials", models.TrialModel), ("params", models.TrialParamModel),
        ("values", models.TrialValueModel), ("attrs", models.TrialUserAttributeModel),
        ("inter", models.TrialIntermediateValueModel))}
    t0 = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=6)
    with engine.connect() as conn:
        last = conn.execute(sqlalchemy.select(sqlalchemy.func.max(t["trials"].c.trial_id))).scalar()
    next_id = (last or 0) + 1
    for start in range(0, n_trials, batch):
        rows: dict[str, list[dict[str, Any]]] = {k: [] for k in t}
        for number in range(start, min(start + batch, n_trials)):
            tr = synthetic_trial(number, sf.space, rng)
            tid = next_id + number
            began = t0 + timedelta(seconds=4 * number)
            rows["trials"].append({"trial_id": tid, "number": number, "study_id": study._study_id,
                                   "state": tr["state"], "datetime_start": began,
                                   "datetime_complete": began + timedelta(seconds=3)})
            for pname, value in tr["params"].items():
                dist = tr["distributions"][pname]
                rows["params"].append({"trial_id": tid, "param_name": pname,
                                       "param_value": dist.to_internal_repr(value),
                                       "distribution_json": D.distribution_to_json(dist)})
            if tr["value"] is not None:
                rows["values"].append({"trial_id": tid, "objective": 0, "value": tr["value"],
                                       "value_type": models.TrialValueModel.TrialValueType.FINITE})
            for key, value in tr["user_attrs"].items():
                rows["attrs"].append({"trial_id": tid, "key": key, "value_json": json.dumps(value)})
            for step, value in tr["intermediate"].items():
                rows["inter"].append({
                    "trial_id": tid, "step": step, "intermediate_value": value,
                    "intermediate_value_type":
                        models.TrialIntermediateValueModel.TrialIntermediateValueType.FINITE})
        with engine.begin() as conn:
            for key in ("trials", "params", "values", "attrs", "inter"):
                if rows[key]:
                    conn.execute(sqlalchemy.insert(t[key]), rows[key])
    return time.perf_counter() - started


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def run(url: str, n_trials: int, name: str) -> list[tuple[str, float, str]]:
    from tuner.dashboard import load_dashboard, render_dashboard
    from tuner.dashboard.attach import attach_views
    from tuner.dashboard.context import study_reference, trial_frame
    from tuner.dashboard.reader import forget, read_trials
    from tuner.dashboard.report import render_study_view, write_report
    from tuner.storage import open_storage
    from tuner.study import load_study

    rows: list[tuple[str, float, str]] = []
    created = create_study(url, n_trials, name=name)
    rows.append((f"create the {n_trials:,}-trial study (bulk SQL, not part of the views)", created, ""))

    baseline = open_storage(url)
    study, _ = load_study(name, baseline)
    trials, t_optuna = _timed(study.get_trials, deepcopy=False)
    rows.append(("for comparison: Optuna `get_trials(deepcopy=False)`, cold (ORM, not used by the views)",
                 t_optuna, f"{len(trials):,} trials"))
    del trials, study, baseline

    storage = open_storage(url)  # new storage object and reader cache: nothing cached
    forget(storage, 1)
    (study, sf), t_load = _timed(load_study, name, storage)
    trials, t_trials = _timed(read_trials, storage, study._study_id)
    rows.append(("load_study", t_load, ""))
    rows.append(("read the trials (`tuner.dashboard.reader`, SQLAlchemy Core), cold", t_trials,
                 f"{len(trials):,} trials"))
    frame, t_frame = _timed(trial_frame, trials, sf)
    rows.append(("trial table (pandas) shared by the panels", t_frame, f"{len(frame):,} rows"))
    ref, t_ref = _timed(study_reference, study, sf)
    rows.append(("LogisticRegression reference (once per study, then cached)", t_ref,
                 f"val accuracy {ref['val_accuracy']:.4f}"))

    spec = load_dashboard("study")
    shared: dict[str, Any] = {"trials": trials, "by_number": {t.number: t for t in trials}, "frame": frame}
    started = time.perf_counter()
    panels = render_dashboard(spec, study, sf, storage, shared=shared)
    total = time.perf_counter() - started
    for p in panels:
        size = len(p.figure.to_json()) if p.figure is not None else len(p.markdown or "")
        note = f"{size / 1e3:,.0f} kB" + (f" ERROR {p.error}" if p.error else "")
        rows.append((f"panel {p.type}", p.seconds, note))
    rows.append(("all panels of dashboards/study.toml", total, ""))
    stats, t_attach = _timed(attach_views, study, panels)
    rows.append(("store the views with the study (graph objects + note)", t_attach,
                 f"{stats['figures']} figures, {stats['bytes'] / 1e3:,.0f} kB"))

    cold = open_storage(url)
    forget(storage, study._study_id)
    view, t_page = _timed(render_study_view, cold, name, plotly="/tuner/static/plotly.min.js")
    rows.append(("study page from a cold storage (read + all panels + HTML)", t_page,
                 f"{len(view.html) / 1e6:.1f} MB HTML"))
    view, t_warm = _timed(render_study_view, cold, name, plotly="/tuner/static/plotly.min.js")
    rows.append(("study page again (finished trials cached)", t_warm, ""))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.html"
        forget(storage, study._study_id)
        _, t_report = _timed(write_report, open_storage(url), name, out)
        rows.append(("`tuner report` file from a cold storage", t_report,
                     f"{out.stat().st_size / 1e6:.1f} MB"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5000)
    parser.add_argument("--storage", help="database URL (default: a SQLite file in a temporary folder); "
                                          "the study name must not exist there yet")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    name = args.name or f"bench-{args.trials}"
    with tempfile.TemporaryDirectory() as tmp:
        url = args.storage or f"sqlite:///{Path(tmp) / 'bench.db'}"
        rows = run(url, args.trials, name)
    kind = url.split(":", 1)[0]
    print(f"# dashboard views, {args.trials:,} trials, {kind}; Python {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs, optuna {optuna.__version__}, "
          f"plotly {__import__('plotly').__version__}, pandas {__import__('pandas').__version__}")
    print()
    print("| step | seconds | notes |")
    print("|---|---:|---|")
    for what, secs, note in rows:
        print(f"| {what} | {secs:.2f} | {note} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
