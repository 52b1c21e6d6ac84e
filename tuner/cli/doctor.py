"""``tuner doctor``: stale RUNNING trials, retries and failures of a study, and a way to fail
stale trials on demand."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Annotated, Any

import typer
from rich.markup import escape

from tuner.cli.app import (
    JsonOpt,
    StorageOpt,
    StudyArg,
    app,
    err,
    open_existing,
    out,
    print_json,
    storage_flag,
)
from tuner.errors import LockHeldError, TunerError


def _fail_reason(attrs: dict[str, Any]) -> str:
    reason = attrs.get("fail_reason")
    if reason:
        return str(reason).split(":")[0] if str(reason).startswith("exception") else str(reason)
    return "unknown (failed outside tuner)"


@app.command(help="Health of a study: stale RUNNING trials, retries and failures (exit code 1 "
                  "if stale trials remain).")
def doctor(study: StudyArg, storage: StorageOpt = None,
           fail_stale: Annotated[bool, typer.Option(
               "--fail-stale", help="Fail stale RUNNING trials now and re-queue them.")] = False,
           grace: Annotated[float | None, typer.Option(
               min=0,
               help="Seconds without heartbeat after which a RUNNING trial is stale; longer than "
                    "the study's heartbeat interval \\[default: reliability.grace_period of the "
                    "study file the study was run with].")] = None,
           json_out: JsonOpt = False) -> None:
    from optuna.trial import TrialState

    from tuner.storage.coordination import fail_stale_trials, heartbeat_ages, runner_lock
    from tuner.study import load_study

    store, url = open_existing(storage)
    st, sf = load_study(study, store)
    rel = sf.study.reliability if sf is not None else None
    grace_s = grace if grace is not None else (rel.grace if rel is not None else 60.0)
    if grace is not None and rel is not None and grace <= rel.heartbeat_interval:
        harm = "--fail-stale would fail them, and lose their work" if fail_stale else \
            "they would be reported stale"
        raise TunerError(
            f"--grace {grace:g}: must be longer than the heartbeat interval of study {study!r} "
            f"({rel.heartbeat_interval} s): a live runner's trials beat only every "
            f"{rel.heartbeat_interval} s, so {harm}",
            hint=f"leave --grace out (the study file's grace period, {rel.grace} s), or give a "
                 f"few heartbeat intervals, e.g. --grace {3 * rel.heartbeat_interval}")
    max_retry = rel.max_retry if rel is not None else 2
    if sf is None and fail_stale:
        raise TunerError(f"study {study!r} was not created by tuner: its trials beat no tuner "
                         "heartbeat, so whether their process is gone cannot be told",
                         hint="fail a trial whose process you know is gone with Optuna: "
                              "storage.set_trial_state_values(trial_id, TrialState.FAIL)")

    # With SQLite, one runner owns a study and holds its lock: if the lock is free, nobody
    # runs it, and every RUNNING trial is an orphan (whatever its heartbeat's age).
    # The lock is held until the report is read: a runner starting meanwhile would otherwise
    # have its live trials failed as orphans.
    # A study made with Optuna directly has no tuner runner to hold that lock.
    no_runner = False
    with contextlib.ExitStack() as held:
        if store.backend.engine.dialect.name == "sqlite" and sf is not None:
            try:
                held.enter_context(runner_lock(store, study))
                no_runner = True
            except LockHeldError:
                no_runner = False
        fixed: list[Any] = []
        if fail_stale:
            fixed = fail_stale_trials(st, store, grace_seconds=grace_s, max_retry=max_retry,
                                      all_running=no_runner,
                                      reason="stale heartbeat: failed by tuner doctor")
        # (the RUNNING trials first: a trial of a few milliseconds, claimed after the trials
        # were read, would be missing from them)
        ages = heartbeat_ages(store, st._study_id)
        trials = st.get_trials(deepcopy=False)
    by_id = {t._trial_id: t for t in trials}
    # epochs saved so far (a runner saves them every few seconds): none for a trial claimed
    # ahead of its worker's current one, or one in its first seconds of training
    running = sorted((by_id[tid].number, age, sf is not None and (no_runner or age > grace_s),
                      len(by_id[tid].intermediate_values), by_id[tid].user_attrs.get("runner"))
                     for tid, age in ages.items()
                     if tid in by_id and by_id[tid].state == TrialState.RUNNING)
    stale = [r for r in running if r[2]]

    chains: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for t in trials:
        history = t.system_attrs.get("retry_history")
        if history:
            chains[history[0]].append((t.number, t.state.name))
    failures: dict[str, list[int]] = defaultdict(list)
    not_retried: dict[int, str] = {}
    for t in trials:
        if t.state == TrialState.FAIL:
            failures[_fail_reason(t.user_attrs)].append(t.number)
            if t.user_attrs.get("no_retry"):
                not_retried[t.number] = str(t.user_attrs["no_retry"])

    report = {
        "study": study, "tuner_study": sf is not None, "grace_seconds": grace_s,
        "runner_alive": None if store.backend.engine.dialect.name != "sqlite" or sf is None
        else not no_runner,
        "running": [{"trial": n, "heartbeat_age_s": round(a, 1), "stale": s,
                     "epochs_saved": e if sf is not None else None, "runner": r}
                    for n, a, s, e, r in running],
        "failed_now": [f.number for f in fixed],
        "requeued_now": [f.number for f in fixed if f.no_retry is None],
        "not_requeued_now": {str(f.number): f.no_retry for f in fixed if f.no_retry is not None},
        "not_retried": {str(n): why for n, why in sorted(not_retried.items())},
        "retries": {str(root): [{"trial": n, "state": s} for n, s in chain]
                    for root, chain in sorted(chains.items())},
        "failures": {reason: numbers for reason, numbers in failures.items()},
    }
    if json_out:
        print_json(report)
    else:
        _print(report, stale, storage_flag(url))
    raise typer.Exit(1 if stale else 0)


def _print(report: dict[str, Any], stale: list, flag: str) -> None:
    from tuner.cli.views import FitTable

    orphans = report["runner_alive"] is False
    why = "no runner holds the study's lock" if orphans else \
        f"no heartbeat for > {report['grace_seconds']:g} s"
    if not report["tuner_study"]:
        why = "not created by tuner: its trials beat no heartbeat, stale cannot be told"
    out.print(f"study [bold]{report['study']}[/]: {len(report['running'])} running, "
              f"{len(stale)} stale ({why})")
    if report["failed_now"]:
        parts = []
        if report["requeued_now"]:
            parts.append(", ".join(f"#{n}" for n in report["requeued_now"]) + " re-queued")
        parts += [f"#{n} not re-queued ({reason})" for n, reason in report["not_requeued_now"].items()]
        out.print(f"[yellow]failed {len(report['failed_now'])} stale trial(s):[/] " + "; ".join(parts),
                  highlight=False)
    if report["running"]:
        table = FitTable(title="RUNNING trials", title_justify="left")
        for col in ("trial", "runner (host:pid)", "last heartbeat", "epochs saved", "status"):
            table.add_column(col, key=True, drop=col.startswith("runner"))  # (first to go)
        for row in report["running"]:
            status = "[green]alive[/]" if report["tuner_study"] else "unknown"
            if row["stale"]:
                status = "[red]orphaned (no runner)[/]" if orphans else "[red]stale[/]"
            saved = ("-" if row["epochs_saved"] is None else str(row["epochs_saved"])
                     if row["epochs_saved"] else "none (claimed ahead, or starting)")
            table.add_row(f"#{row['trial']}", row["runner"] or "-", f"{row['heartbeat_age_s']:g} s ago",
                          saved, status)
        out.print(table)
    if report["retries"]:
        table = FitTable(title="retries", title_justify="left")
        table.add_column("original", key=True)
        table.add_column("retries")
        for root, chain in report["retries"].items():
            table.add_row(f"#{root}", ", ".join(f"#{c['trial']} {c['state']}" for c in chain))
        out.print(table)
    if report["not_retried"]:
        table = FitTable(title="failed trials that were not re-queued", title_justify="left")
        table.add_column("trial", key=True)
        table.add_column("why")
        for number, reason in report["not_retried"].items():
            table.add_row(f"#{number}", reason)
        out.print(table)
    if report["failures"]:
        table = FitTable(title="failed trials by reason", title_justify="left")
        for col in ("reason", "count", "trials"):
            table.add_column(col, key=col == "count")
        for reason, numbers in sorted(report["failures"].items(), key=lambda kv: -len(kv[1])):
            shown = ", ".join(f"#{n}" for n in numbers[:12]) + (" ..." if len(numbers) > 12 else "")
            table.add_row(reason, str(len(numbers)), shown)
        out.print(table)
    if stale and not report["failed_now"]:
        err.print(escape(f"  hint: `tuner doctor {report['study']}{flag} --fail-stale` fails "
                         "them and re-queues their parameters (only if their runners are really "
                         "gone)"), soft_wrap=True)
    if not (report["running"] or report["retries"] or report["failures"]):
        out.print("[green]healthy: no running, retried or failed trials[/]")



