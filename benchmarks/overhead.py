"""How much of a study's wall time is spent outside training, for tuner's runner and for a plain
Optuna loop doing the same training.

For the digits default study (studies/digits.toml: same space, sampler, pruner, epochs), each
configuration runs ``--trials`` trials into a fresh storage and reports:

- wall time (the whole run: opening the storage, loading the data, starting workers, all trials);
- training time: the sum over trials of ``fit``'s own wall time without its epoch callbacks
  (recorded per trial as ``wall_time``);
- overhead = 1 - training / (wall x workers): the share of worker time not spent training
  (sampler, storage, process start-up and hand-offs, idle waits);
- trials per minute, and the ratio against the plain loop measured in the same process.

The plain loop is what a user would write without tuner: ``optuna.create_study(storage=
"sqlite:///...")`` (Optuna's defaults: no WAL) and ``study.optimize`` with an objective that
suggests the same configuration, trains it with ``tuner.train.fit``, reports every epoch, asks
the pruner, and stores the same user attributes.

    .venv/bin/python benchmarks/overhead.py                 # 300 trials per configuration
    .venv/bin/python benchmarks/overhead.py --trials 100    # quicker
    .venv/bin/python benchmarks/overhead.py --configs sqlite1,pg1   # some configurations only
PostgreSQL configurations use a fresh database on TUNER_TEST_POSTGRES_URL (an admin URL,
default postgresql+psycopg://postgres@127.0.0.1:5432/postgres) and are skipped if unreachable.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import sqlalchemy

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tuner.config import load_study_file  # noqa: E402
from tuner.params import resolve  # noqa: E402
from tuner.runner.coordinator import Runner  # noqa: E402
from tuner.study import derive_seed, load_data, make_pruner, make_sampler  # noqa: E402
from tuner.train import fit, make_plan  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.ERROR)
PG_ADMIN = os.environ.get("TUNER_TEST_POSTGRES_URL",
                          "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def training_seconds(url: str, name: str) -> tuple[float, int]:
    storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True)
    trials = storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False)
    storage.engine.dispose()
    done = [t for t in trials if t.state.is_finished()]
    return sum(t.user_attrs.get("wall_time", 0.0) for t in done), \
        sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in done)


def run_tuner(sf, url: str, workers: int) -> dict:
    started = time.perf_counter()
    Runner(sf, storage_url=url, workers=workers, quiet=True).run()
    wall = time.perf_counter() - started
    train, finished = training_seconds(url, sf.study.name)
    return {"wall": wall, "train": train, "finished": finished, "workers": workers}


def run_plain(sf, url: str) -> dict:
    """A plain Optuna loop with the same space, sampler, pruner and training."""
    started = time.perf_counter()
    splits = load_data(sf)
    study = optuna.create_study(study_name=sf.study.name, storage=url, direction=sf.direction,
                                sampler=make_sampler(sf, sf.study.seed), pruner=make_pruner(sf))
    metric = sf.study.metric

    def objective(trial: optuna.Trial) -> float:
        params = sf.space.suggest(trial)
        seed = derive_seed(sf.study.seed, trial.number)
        plan = make_plan(resolve(params), len(splits.y_train), sf.model.epochs)
        for key, value in {"seed": seed, "config": params, "peak_lr": plan.peak_lr,
                           "total_steps": plan.total_steps, "warmup_steps": plan.warmup_steps}.items():
            trial.set_user_attr(key, value)

        def on_epoch(epoch: int, metrics: dict) -> bool:
            trial.report(metrics[metric], epoch)
            return plan.warmup_epochs_done(epoch) and epoch < sf.model.epochs and trial.should_prune()

        result = fit(params, splits.X_train, splits.y_train, splits.X_val, splits.y_val,
                     epochs=sf.model.epochs, seed=seed, dtype=sf.model.dtype, on_epoch=on_epoch)
        trial.set_user_attr("wall_time", result.wall_time - result.callback_time)
        trial.set_user_attr("curve", {k: [h[k] for h in result.history]
                                      for k in ("train_loss", "val_loss", "val_accuracy", "lr")})
        if result.diverged or result.stopped_early:
            raise optuna.TrialPruned()
        return result.history[-1][metric]

    study.optimize(objective, n_trials=sf.study.n_trials)
    wall = time.perf_counter() - started
    train, finished = training_seconds(url, sf.study.name)
    return {"wall": wall, "train": train, "finished": finished, "workers": 1}


CONFIGS = ("plain", "sqlite1", "sqlite2", "pg1", "pg2")


def fresh_pg() -> str | None:
    name = f"tuner_bench_{uuid.uuid4().hex[:8]}"
    try:
        admin = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT",
                                         connect_args={"connect_timeout": 3})
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception as exc:  # unreachable server: skip those rows
        print(f"(PostgreSQL skipped: {type(exc).__name__})")
        return None
    return str(sqlalchemy.engine.make_url(PG_ADMIN).set(drivername="postgresql+psycopg",
                                                        database=name).render_as_string(False))


def drop_pg(url: str) -> None:
    """Drop a database made by :func:`fresh_pg` (the benchmark leaves nothing behind)."""
    name = sqlalchemy.engine.make_url(url).database
    admin = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--study", default=str(REPO / "studies" / "digits.toml"))
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated, from {', '.join(CONFIGS)} (default: all); without "
                             "plain there is no trials/min ratio")
    args = parser.parse_args()
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    base = load_study_file(args.study)
    tmp = Path(tempfile.mkdtemp(prefix="tuner-bench-"))
    rows = []

    def study(tag: str):
        return base.with_overrides(name=f"bench-{tag}", n_trials=args.trials)

    print(f"{args.trials} trials of {args.study}, {base.model.epochs} epochs each; "
          f"{os.cpu_count()} CPUs")
    if "plain" in configs:
        rows.append(("plain Optuna loop, SQLite (default journal)",
                     run_plain(study("plain"), f"sqlite:///{tmp / 'plain.db'}")))
    for workers in (1, 2):
        if f"sqlite{workers}" in configs:
            rows.append((f"tuner run, SQLite (WAL), {workers} worker(s)",
                         run_tuner(study(f"sqlite{workers}"), f"sqlite:///{tmp / f'w{workers}.db'}",
                                   workers)))
    for workers in (1, 2):
        url = fresh_pg() if f"pg{workers}" in configs else None
        if url is not None:
            try:
                rows.append((f"tuner run, PostgreSQL, {workers} worker(s)",
                             run_tuner(study(f"pg{workers}"), url, workers)))
            finally:
                drop_pg(url)
    shutil.rmtree(tmp, ignore_errors=True)
    plain_rate = None
    if "plain" in configs:
        plain = rows[0][1]
        plain_rate = plain["finished"] / plain["wall"] * 60
    print(f"\n{'configuration':<46} {'wall s':>7} {'train s':>8} {'overhead':>9} "
          f"{'trials/min':>10} {'vs plain':>9}")
    for label, r in rows:
        overhead = 1 - r["train"] / (r["wall"] * r["workers"])
        rate = r["finished"] / r["wall"] * 60
        print(f"{label:<46} {r['wall']:>7.1f} {r['train']:>8.1f} {overhead:>8.1%} "
              f"{rate:>10.0f} " + (f"{rate / plain_rate:>8.2f}x" if plain_rate else f"{'-':>9}"))


if __name__ == "__main__":
    main()
