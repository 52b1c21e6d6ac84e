"""``tuner doctor``: stale RUNNING trials, retries and failures of a study, and a way to fail
stale trials on demand."""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated, Any

import typer
from rich.table import Table

from tuner.cli.app import JsonOpt, StorageOpt, StudyArg, app, err, open_existing, out, print_json
from tuner.errors import LockHeldError


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
               help="Seconds without heartbeat after which a RUNNING trial is stale "
                    "\\[default: the study file's reliability.grace_period].")] = None,
           json_out: JsonOpt = False) -> None:
    from optuna.trial import TrialState

    from tuner.storage.coordination import NamedLock, fail_stale_trials, heartbeat_ages
    from tuner.study import load_study

    store, url = open_existing(storage)
    st, sf = load_study(study, store)
    rel = sf.study.reliability if sf is not None else None
    grace_s = grace if grace is not None else (rel.grace if rel is not None else 60.0)
    max_retry = rel.max_retry if rel is not None else 2

    fixed: list[int] = []
    if fail_stale:
        all_running = False
        if store.backend.engine.dialect.name == "sqlite":
            # With SQLite, one runner owns a study; if its lock is free, nobody runs it.
            try:
                with NamedLock(store, f"run-{study}", what=f"study {study!r}"):
                    all_running = True
            except LockHeldError:
                all_running = False
        fixed = fail_stale_trials(st, store, grace_seconds=grace_s, max_retry=max_retry,
                                  all_running=all_running,
                                  reason="stale heartbeat: failed by tuner doctor")
    trials = st.get_trials(deepcopy=False)
    by_id = {t._trial_id: t for t in trials}
    ages = heartbeat_ages(store, st._study_id)
    running = [(by_id[tid].number, age, age > grace_s) for tid, age in ages.items() if tid in by_id]
    stale = [r for r in running if r[2]]

    chains: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for t in trials:
        history = t.system_attrs.get("retry_history")
        if history:
            chains[history[0]].append((t.number, t.state.name))
    failures: dict[str, list[int]] = defaultdict(list)
    for t in trials:
        if t.state == TrialState.FAIL:
            failures[_fail_reason(t.user_attrs)].append(t.number)

    report = {
        "study": study, "grace_seconds": grace_s,
        "running": [{"trial": n, "heartbeat_age_s": round(a, 1), "stale": s} for n, a, s in running],
        "failed_now": fixed,
        "retries": {str(root): [{"trial": n, "state": s} for n, s in chain]
                    for root, chain in sorted(chains.items())},
        "failures": {reason: numbers for reason, numbers in failures.items()},
    }
    if json_out:
        print_json(report)
    else:
        _print(report, stale)
    raise typer.Exit(1 if stale else 0)


def _print(report: dict[str, Any], stale: list) -> None:
    out.print(f"study [bold]{report['study']}[/]: {len(report['running'])} running, "
              f"{len(stale)} stale (no heartbeat for > {report['grace_seconds']:g} s)")
    if report["failed_now"]:
        out.print(f"[yellow]failed and re-queued {len(report['failed_now'])} stale trial(s):[/] "
                  + ", ".join(f"#{n}" for n in report["failed_now"]))
    if report["running"]:
        table = Table(title="RUNNING trials", title_justify="left")
        for col in ("trial", "last heartbeat", "status"):
            table.add_column(col)
        for row in report["running"]:
            table.add_row(f"#{row['trial']}", f"{row['heartbeat_age_s']:g} s ago",
                          "[red]stale[/]" if row["stale"] else "[green]alive[/]")
        out.print(table)
    if report["retries"]:
        table = Table(title="retries (original trial -> retries)", title_justify="left")
        table.add_column("original")
        table.add_column("retries")
        for root, chain in report["retries"].items():
            table.add_row(f"#{root}", ", ".join(f"#{c['trial']} {c['state']}" for c in chain))
        out.print(table)
    if report["failures"]:
        table = Table(title="failed trials by reason", title_justify="left")
        for col in ("reason", "count", "trials"):
            table.add_column(col)
        for reason, numbers in sorted(report["failures"].items(), key=lambda kv: -len(kv[1])):
            shown = ", ".join(f"#{n}" for n in numbers[:12]) + (" ..." if len(numbers) > 12 else "")
            table.add_row(reason, str(len(numbers)), shown)
        out.print(table)
    if stale and not report["failed_now"]:
        err.print("  hint: `tuner doctor STUDY --fail-stale` fails them and re-queues their "
                  "parameters (only if their runners are really gone)")
    if not (report["running"] or report["retries"] or report["failures"]):
        out.print("[green]healthy: no running, retried or failed trials[/]")



