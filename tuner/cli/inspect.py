"""``tuner ls``, ``show``, ``export``, ``delete``, ``replay`` and ``best``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tuner.cli.app import (
    JsonOpt,
    StorageOpt,
    StudyArg,
    app,
    err,
    names_folder,
    open_existing,
    out,
    output_file,
    print_json,
    warn,
)
from tuner.errors import ConfigError, TunerError

if TYPE_CHECKING:
    import optuna

    from tuner.config import StudyFile


def _load(name: str, storage: str | None) -> tuple[optuna.Study, StudyFile | None, str]:
    from tuner.study import load_study

    store, url = open_existing(storage)
    study, sf = load_study(name, store)
    return study, sf, url


def _need_file(sf: StudyFile | None, name: str) -> StudyFile:
    if sf is None:
        raise TunerError(f"study {name!r} was not created by tuner (no study file stored with it)")
    return sf


def stale_note(study: str, stale: int, url: str) -> str:
    """What ``stale`` RUNNING trials without a heartbeat mean, and what fails them."""
    from tuner.storage.urls import storage_flag

    return (f"{stale} RUNNING trial(s) without a heartbeat for longer than the grace period: "
            f"their runner is gone; the study's next run fails and re-queues them, or now: "
            f"tuner doctor {study} --fail-stale{storage_flag(url)}")


@app.command("ls")
def list_studies(storage: StorageOpt = None, json_out: JsonOpt = False) -> None:
    """List studies with trial counts by state, best value and last activity."""
    from tuner import results
    from tuner.cli.views import FitTable, fmt
    from tuner.storage import describe
    from tuner.storage.urls import storage_flag, storage_note

    store, url = open_existing(storage)
    rows = results.list_studies(store)
    if json_out:
        print_json([r.as_dict() for r in rows])
        return
    if not rows:
        note = storage_note(url)
        out.print(escape(f"no studies in {describe(url)}; start one with: tuner run "
                         f"studies/digits.toml{storage_flag(url)}{' ' + note if note else ''}"),
                  highlight=False, soft_wrap=True)
        return
    table = FitTable(title=f"studies in {describe(url)}", title_justify="left")
    # a narrow terminal keeps the names and best values whole and leaves out (in this order)
    # states no study is in, the last activity, the metric, the other states, COMPLETE, the
    # best trial's number
    drops = {"RUNNING": 4, "WAITING": 4, "FAIL": 3, "PRUNED": 3}
    table.add_column("study", key=True)
    table.add_column("metric", drop=5)
    table.add_column("best", justify="right", key=True)
    table.add_column("trial", justify="right", key=True, drop=1)
    for state in results.STATES:
        table.add_column(state.lower(), justify="right", key=True,
                         drop=(9 if not any(r.counts[state] for r in rows) else drops.get(state, 2)))
    table.add_column("last activity (UTC)", drop=6)  # folds between the date and the time
    for r in rows:
        table.add_row(r.name, f"{r.metric} ({r.short_directions})", fmt(r.best_value),
                      "-" if r.best_trial is None else f"#{r.best_trial}",
                      *[f"{r.counts[s]} ({r.stale} stale)" if s == "RUNNING" and r.stale
                        else str(r.counts[s]) for s in results.STATES],
                      r.last_activity.strftime("%Y-%m-%d %H:%M:%S") if r.last_activity else "-")
    out.print(table)
    for r in rows:
        if r.stale:
            out.print(escape(f"{r.name}: {stale_note(r.name, r.stale, url)}"), highlight=False,
                      soft_wrap=True)


@app.command()
def show(study: StudyArg, storage: StorageOpt = None,
         top: Annotated[int, typer.Option(min=1, help="Rows of the top-trials table.")] = 10,
         json_out: JsonOpt = False) -> None:
    """Best trial, top trials, best per optimizer / decay / scaling rule, importances."""
    from tuner import results
    from tuner.cli.views import group_keys, study_report
    from tuner.storage import describe
    from tuner.study import is_multi_objective, metric_direction

    st, sf, url = _load(study, storage)
    counts: dict[str, int] = {}
    for t in st.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    stale = results.stale_running(st._storage, st._study_id, sf)[0] if counts.get("RUNNING") else 0
    if json_out:
        metric, direction = metric_direction(st)
        best = None
        try:
            if not is_multi_objective(st):
                best = results.trial_record(st.best_trial, sf)
        except ValueError:
            best = None
        print_json({
            "study": study, "metric": metric, "direction": direction, "counts": counts,
            "stale": stale, "best": best,
            "top": [results.trial_record(t, sf) for t in results.top_trials(st, top)],
            "by": {key: [g.as_dict() for g in results.best_by(st, key, sf)]
                   for key in group_keys(sf)},
            "importances": results.importances(st),
            **({"pareto_front": [results.trial_record(t, sf) for t in st.best_trials]}
               if is_multi_objective(st) else {}),
        })
        return
    states = ", ".join(f"{n} {state.lower()}" + (f" ({stale} stale)" if state == "RUNNING" and stale
                                                   else "")
                       for state, n in sorted(counts.items(), key=lambda kv: results.STATES.index(kv[0])
                                              if kv[0] in results.STATES else 99))
    out.print(f"study [bold]{escape(study)}[/] in {escape(describe(url))}: {states or 'no trials'}",
              highlight=False)
    if stale:
        out.print(escape(stale_note(study, stale, url)), style="yellow", highlight=False,
                  soft_wrap=True)
    study_report(out, st, sf, top=top)


EXPORT_FORMATS = ("csv", "parquet", "json")


@app.command()
def export(study: StudyArg, storage: StorageOpt = None,
           format_: Annotated[str | None, typer.Option(
               "--format", "-f", help="csv, parquet or json (json includes learning curves) "
                                      "\\[default: from the --output suffix, else csv].",
               show_default=False)] = None,
           output: Annotated[str | None, typer.Option(
               "--output", "-o", help="File to write, a folder to write STUDY.FORMAT in, or - for "
                                      "stdout \\[default: STUDY.FORMAT].",
               show_default=False)] = None) -> None:
    """Export every trial: parameters, values, states, user attributes (and curves in json)."""
    import io
    import sys

    import pandas as pd

    from tuner import results

    format_ = format_.lower() if format_ is not None else None  # CSV, Parquet, ...
    if format_ is not None and format_ not in EXPORT_FORMATS:
        raise ConfigError(f"--format {format_!r}: use csv, parquet or json")
    suffix = "" if output in (None, "-") or names_folder(output) else \
        Path(output).suffix.lower().lstrip(".")
    inferred = suffix if suffix in EXPORT_FORMATS else None
    if format_ is not None and inferred is not None and format_ != inferred:
        raise ConfigError(f"--format {format_} but --output {output} ends in .{suffix}: "
                          "drop one of them or make them agree")
    if format_ is None and suffix and inferred is None:
        raise ConfigError(f"--output {output}: .{suffix} is not a format tuner writes; name the "
                          "file .csv, .parquet or .json, or add --format to write that name")
    fmt = format_ or inferred or "csv"
    if output == "-" and fmt == "parquet" and sys.stdout.isatty():
        raise ConfigError("parquet is binary: not written to a terminal; redirect stdout "
                          "(tuner export STUDY -f parquet -o - > FILE) or give a file name")
    st, sf, _ = _load(study, storage)
    records = [results.trial_record(t, sf, curves=fmt == "json")
               for t in st.get_trials(deepcopy=False)]
    if fmt == "json":
        data: bytes = json.dumps({"study": study, "trials": records}, indent=1,
                                 default=str).encode()
    else:
        table = pd.DataFrame.from_records(
            [{k: results.table_cell(v) for k, v in r.items()} for r in records],
            columns=results.record_columns(records))
        if "retry_of" in table:  # a trial number, or empty (not 1.0)
            table["retry_of"] = table["retry_of"].astype("Int64")
        if fmt == "csv":
            data = table.to_csv(index=False).encode()
        else:  # typed columns: the times as timestamps (CSV has only text)
            for column in ("datetime_start", "datetime_complete"):
                table[column] = pd.to_datetime(table[column])
            buffer = io.BytesIO()
            table.to_parquet(buffer, index=False)
            data = buffer.getvalue()
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        err.print(f"wrote {len(records)} trials to stdout ({fmt})")
        return
    path = output_file(output, f"{study}.{fmt}")
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise TunerError(f"cannot write {path}: {exc.strerror or exc}") from None
    err.print(f"wrote {len(records)} trials to {escape(str(path))}")


@app.command()
def delete(study: StudyArg, storage: StorageOpt = None,
           yes: Annotated[bool, typer.Option("--yes", "-y",
                                             help="Do not ask for confirmation.")] = False,
           force: Annotated[bool, typer.Option(
               "--force", help="Delete even while a runner is running the study (it stops with "
                               "'study was deleted').")] = False) -> None:
    """Delete a study and all its trials (asks first; refuses while the study is running)."""
    import contextlib

    from tuner.errors import LockHeldError
    from tuner.storage import describe
    from tuner.storage.coordination import delete_study, heartbeat_ages, runner_lock
    from tuner.study import load_study

    store, url = open_existing(storage)
    st, sf = load_study(study, store)
    grace = sf.study.reliability.grace if sf is not None else 60.0
    with contextlib.ExitStack() as stack:
        running = []
        sqlite = store.backend.engine.dialect.name == "sqlite"
        if sqlite:
            # one runner owns a SQLite study, holding this lock; holding it ourselves also keeps
            # a runner from starting while we delete
            lock = runner_lock(store, study)
            try:
                stack.enter_context(lock)
            except LockHeldError:
                running.append(f"a runner holds its lock ({lock.holder})")
        # with SQLite, holding the runner lock means no runner is left: a fresh heartbeat is
        # that of a runner killed a moment ago (its trials are orphans `doctor` fails)
        live = [] if sqlite and not running else [
            age for age in heartbeat_ages(store, st._study_id).values() if age <= grace]
        if live:
            running.append(f"{len(live)} RUNNING trial(s) with a heartbeat in the last {grace:g} s")
        if running and not force:
            raise LockHeldError(f"study {study!r} is running ({'; '.join(running)}): deleting it "
                                "now would stop its runner(s) mid-trial",
                                hint="stop the run first (Ctrl-C or SIGTERM), or add --force")
        n = len(st.get_trials(deepcopy=False))
        warning = " It is RUNNING now." if running else ""
        if not yes:
            try:
                confirmed = typer.confirm(f"delete study {study!r} ({n} trials) from "
                                          f"{describe(url)}?{warning}")
            except typer.Abort:  # no answer: stdin at its end (/dev/null, cron)
                raise ConfigError(f"not deleting study {study!r} ({n} trials): no answer to "
                                  "confirm it", hint="add --yes to delete without asking") from None
            if not confirmed:
                err.print("nothing deleted")
                raise typer.Exit(1)
        n = delete_study(store, st._study_id)
    err.print(f"deleted study {study!r} ({n} trials)")


@app.command()
def replay(study: StudyArg, trial: Annotated[int, typer.Argument(help="Trial number.")],
           storage: StorageOpt = None, json_out: JsonOpt = False) -> None:
    """Retrain a trial and check that it reproduces its stored learning curve exactly.

    The trial is retrained from its stored configuration and seed; every per-epoch value
    (train loss, validation loss and accuracy, lr) must match bit for bit, and a diverged
    trial must diverge at the same update. Exits 0 on a match, 1 on a mismatch."""
    from tuner.cli.views import fmt
    from tuner.kernels import engine_id
    from tuner.storage.urls import storage_flag
    from tuner.study import changed_data, flat_params, load_data, trial_study_file
    from tuner.train import fit

    st, sf, url = _load(study, storage)
    sf = _need_file(sf, study)
    frozen = next((t for t in st.get_trials(deepcopy=False) if t.number == trial), None)
    if frozen is None:
        raise TunerError(f"study {study!r} has no trial #{trial}")
    sf = trial_study_file(st, frozen, sf)
    stored = frozen.user_attrs.get("curve")
    if stored is None or "seed" not in frozen.user_attrs:
        retries = [t.number for t in st.get_trials(deepcopy=False)
                   if trial in t.system_attrs.get("retry_history", ()) and t.user_attrs.get("curve")]
        reason = frozen.user_attrs.get("fail_reason")
        partial = len(frozen.intermediate_values)
        what = (f"only {partial} epoch(s) of intermediate values, no final learning curve"
                if partial and "seed" in frozen.user_attrs else "no stored learning curve or seed")
        raise TunerError(f"trial #{trial} has {what} to compare with "
                         f"(state {frozen.state.name}{': ' + str(reason) if reason else ''})",
                         hint=f"its retry #{retries[0]} trained the same configuration: tuner replay "
                              f"{study} {retries[0]}{storage_flag(url)}" if retries else None)
    if why := changed_data(frozen, sf):
        raise TunerError(f"{why}: a replay on other data cannot reproduce its history",
                         hint="restore the data file the trial trained on to replay it")
    splits = load_data(sf)
    params = flat_params(frozen, sf)
    epochs_done = len(stored["epoch"])
    diverged = bool(frozen.user_attrs.get("diverged"))
    # The trial's own schedule spans its model.epochs (total updates fix the decay); a pruned trial
    # stopped early, so the replay stops after the same number of epochs (a diverged one stops
    # by itself).
    result = fit(params, splits.X_train, splits.y_train, splits.X_val, splits.y_val,
                 epochs=sf.model.epochs, seed=frozen.user_attrs["seed"], dtype=sf.model.dtype,
                 on_epoch=None if diverged else lambda epoch, _m: epoch >= epochs_done)
    keys = [k for k in ("train_loss", "val_loss", "val_accuracy", "lr") if stored.get(k)]
    rows = []
    mismatches = 0
    for i in range(max(epochs_done, len(result.history))):
        old = {k: stored[k][i] if i < epochs_done else None for k in keys}
        new = {k: result.history[i].get(k) if i < len(result.history) else None for k in keys}
        same = all(old[k] == new[k] for k in keys)
        mismatches += not same
        rows.append((i + 1, old, new, same))
    stored_step = frozen.user_attrs.get("divergence_step")
    divergence_same = not diverged or (result.divergence is not None
                                       and result.divergence["step"] == stored_step)
    match = mismatches == 0 and divergence_same
    engine = {"stored": frozen.user_attrs.get("engine"), "replayed": engine_id()}
    if json_out:
        print_json({"study": study, "trial": trial, "match": match, "epochs": len(rows),
                    "mismatched_epochs": mismatches, "seed": frozen.user_attrs["seed"],
                    "engine": engine, "stored": stored, "replayed": result.history,
                    "divergence": result.divergence})
    else:
        table = Table(title=f"trial #{trial} replayed (seed {frozen.user_attrs['seed']})",
                      title_justify="left")
        table.add_column("epoch", justify="right")
        for k in keys:
            table.add_column(f"{k} stored", justify="right")
            table.add_column("replayed", justify="right")
        table.add_column("")
        # a long trial: its first and last epochs and every mismatch (--json has them all)
        shown = [r for i, r in enumerate(rows) if len(rows) <= 20 or i < 5 or i >= len(rows) - 5
                 or not r[3]][:45]
        previous = 0
        for epoch, old, new, same in shown:
            if epoch > previous + 1:
                table.add_row("…", f"[dim]{epoch - previous - 1} epochs[/]",
                              *[""] * (2 * len(keys) - 1), "[green]=[/]")
            table.add_row(str(epoch), *[c for k in keys for c in (fmt(old[k], 6), fmt(new[k], 6))],
                          "[green]=[/]" if same else "[red]≠[/]")
            previous = epoch
        out.print(table)
        if diverged:
            def nth(step: Any) -> Any:  # the update's number, counted from 1 (stored: from 0)
                return step + 1 if isinstance(step, int) else step

            out.print(f"stored divergence at update {nth(frozen.user_attrs.get('divergence_step'))}, "
                      f"replayed: {nth(result.divergence and result.divergence['step'])}")
        out.print("[green]match: the replay reproduces the stored history exactly[/]" if match else
                  f"[red]mismatch in {mismatches} epoch(s)[/]")
        if not match and engine["stored"] != engine["replayed"]:
            out.print(f"the trial ran on {engine['stored'] or 'an unrecorded engine'}, the replay on "
                      f"{engine['replayed']}: bit-for-bit replays need the same tuner and numba "
                      "versions on the same kind of CPU (differences in the last bits are expected "
                      "otherwise)", highlight=False)
    raise typer.Exit(0 if match else 1)


@app.command()
def best(study: StudyArg, storage: StorageOpt = None,
         test: Annotated[bool, typer.Option("--test", help="Retrain the best configuration on "
                                            "train+validation and report test accuracy.")] = False,
         seed: Annotated[int | None, typer.Option(min=0, help="Training seed for --test \\[default: the "
                                                 "trial's].")] = None,
         json_out: JsonOpt = False) -> None:
    """The best configuration; with --test, its test accuracy beside LogisticRegression's."""
    import numpy as np

    from tuner.cli.views import fmt
    from tuner.model import evaluate
    from tuner.reference import logistic_regression_accuracy
    from tuner.study import (
        changed_data,
        flat_params,
        is_multi_objective,
        load_data,
        metric_direction,
        trial_study_file,
    )
    from tuner.train import fit

    st, sf, _ = _load(study, storage)
    if is_multi_objective(st):
        raise TunerError(f"study {study!r} is multi-objective ({len(st.directions)} objectives; not "
                         "created by tuner): it has no single best trial",
                         hint=f"`tuner show {study}` lists its Pareto-optimal trials")
    try:
        trial = st.best_trial
    except ValueError:
        raise TunerError(f"study {study!r} has no COMPLETE trial yet") from None
    params = flat_params(trial, sf)
    metric, _ = metric_direction(st)
    summary = {"study": study, "trial": trial.number, metric: trial.value, "config": params,
               "peak_lr": trial.user_attrs.get("peak_lr")}
    if test:
        sf = trial_study_file(st, trial, _need_file(sf, study))
        splits = load_data(sf)
        if why := changed_data(trial, sf):
            warn(f"{why}: the test accuracy below is that of its configuration on the data as it "
                 "is now")
            summary["data_changed"] = why
        if len(splits.y_test) == 0:
            raise TunerError(f"study {study!r} has no test split (data.test_size = 0 in its study "
                             "file), so there is no test accuracy to report")
        X = np.concatenate([splits.X_train, splits.X_val])
        y = np.concatenate([splits.y_train, splits.y_val])
        result = fit(params, X, y, epochs=sf.model.epochs,
                     seed=trial.user_attrs.get("seed", 0) if seed is None else seed, dtype=sf.model.dtype)
        if result.diverged:
            raise TunerError(f"retraining trial #{trial.number} on train+validation diverged: "
                             f"{result.divergence['reason']}")
        _, summary["test_accuracy"] = evaluate(result.W, splits.X_test, splits.y_test,
                                               result.params["loss"])
        summary["reference_test_accuracy"] = logistic_regression_accuracy(
            X, y, {"test": (splits.X_test, splits.y_test)})["test"]
        summary["n_train"] = len(y)
        summary["n_test"] = len(splits.y_test)
        summary["epochs"] = sf.model.epochs
    if json_out:
        print_json(summary)
        return
    out.print(f"best trial [bold]#{trial.number}[/] of {study!r}: {metric} = "
              f"[bold green]{fmt(trial.value)}[/]")
    from tuner.cli.views import config_table

    out.print(config_table(params, title="configuration"))
    if test:
        gap = summary["test_accuracy"] - summary["reference_test_accuracy"]
        out.print(f"retrained on train+validation ({summary['n_train']} examples, "
                  f"{summary['epochs']} epochs): test accuracy "
                  f"[bold]{summary['test_accuracy']:.4f}[/] on {summary['n_test']} examples")
        out.print(f"scikit-learn LogisticRegression, same data: test accuracy "
                  f"{summary['reference_test_accuracy']:.4f} (gap {gap:+.4f})")
