"""``tuner nightly``, ``tuner scheduler`` and ``tuner history``: scheduled nightly sweeps."""

from __future__ import annotations

import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from tuner.cli.app import (
    FileStorageOpt,
    JsonOpt,
    StudyFileArg,
    app,
    err,
    out,
    print_json,
    storage_flag,
    storage_note,
    warn,
)
from tuner.errors import ConfigError, TunerError

EXIT_CODES_HELP = ("Exit codes: 0 ok or improvement; 1 the night produced no result (every "
                   "trial failed, or none completed); 2 invalid input; 3 storage unreachable; "
                   "4 regression; 75 this night is already running elsewhere; 130/143 "
                   "interrupted (running trials re-queued; rerun to resume).")


def is_study_file(target: str) -> bool:
    """Whether a STUDY argument names a study file (``*.toml``, or an existing file) rather
    than a study."""
    return target.endswith(".toml") or Path(target).is_file()


def open_target(target: str | None, storage: str | None) -> tuple[str | None, Any, str, Any]:
    """A study name or a study file, and the storage to read it from, resolved as ``tuner
    nightly`` and ``tuner run`` do: ``--storage``, else ``$TUNER_STORAGE``, else (for a study
    file) its ``study.storage``, else ``./tuner.db``. Returns (name, storage opened for
    reading, its URL, the study file or ``None``); the name is the file's ``study.name``
    (``target=None``: only the storage)."""
    from tuner.config import load_study_file
    from tuner.storage import open_storage, resolve_url

    sf = load_study_file(target) if target is not None and is_study_file(target) else None
    url = resolve_url(storage, sf.study.storage if sf is not None else None)
    return (sf.study.name if sf is not None else target), open_storage(url, must_exist=True), url, sf


class _Terminated(BaseException):
    """SIGTERM outside the runner (which handles it itself while trials run). Not an
    ``Exception``: code that carries on past a failed step (a view that cannot be built) must
    not swallow it and finish the night."""


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise _Terminated


@app.command(help="Run one night's sweep now (for system cron or a Kubernetes CronJob): the "
                  "study <study.name>-YYYY-MM-DD, warm-started from the previous night, then "
                  "checked for a regression against the last nights. Running it again for the "
                  "same night resumes it.\n\n" + EXIT_CODES_HELP)
def nightly(study_file: StudyFileArg,
            date: Annotated[str | None, typer.Option(
                "--date", help="The night, YYYY-MM-DD \\[default: today in the schedule's "
                               "timezone].")] = None,
            storage: FileStorageOpt = None,
            n_trials: Annotated[int | None, typer.Option(
                "--n-trials", "-n", help="This night's target of finished trials \\[default: "
                                         "the file's schedule.n_trials, else study.n_trials].",
                show_default=False)] = None,
            timeout: Annotated[float | None, typer.Option(
                help="Stop starting this night's trials after this many seconds \\[default: "
                     "the file's schedule.timeout, else study.timeout, else none].",
                show_default=False)] = None,
            workers: Annotated[int, typer.Option(
                "--workers", "-w", min=1, help="Worker processes on this machine.")] = 1,
            quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
            json_out: JsonOpt = False) -> None:
    from tuner.cli.run import with_cli_overrides
    from tuner.cli.views import fmt
    from tuner.config import load_study_file
    from tuner.nightly.nights import parse_date, schedule_of, today
    from tuner.nightly.run import run_night
    from tuner.storage import resolve_url

    sf = load_study_file(study_file)
    # validated like the file's [schedule] keys (errors name the option), passed on as values
    with_cli_overrides(sf, section="schedule", n_trials=n_trials, timeout=timeout)
    schedule = schedule_of(sf)
    now = today(schedule)
    day = parse_date(date) if date is not None else now
    if day > now:  # it would become every later command's "latest night"
        raise ConfigError(f"--date {day.isoformat()} is after today ({now.isoformat()} "
                          f"in {schedule.timezone}, the schedule's timezone)",
                          hint="a night can be run on its day or later (a missed night: its date)")
    if (now - day).days > 366 and not json_out:  # a typo of the year: it stays in every trend
        warn(f"--date {day.isoformat()} is {(now - day).days} days ago: the night will be part "
             "of the sweep's history and trend from now on (tuner delete it if the date is wrong)")
    url = resolve_url(storage, sf.study.storage)
    say = (lambda _line: None) if json_out else (lambda line: out.print(escape(line), highlight=False))
    if sf.schedule is None and not json_out:
        err.print(f"note: {escape(str(study_file))} has no \\[schedule] section; using its defaults "
                  "(see docs/nightly.md)")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        result = run_night(sf, day=day, storage_url=url, workers=workers,
                           quiet=quiet or json_out, console=err, say=say, n_trials=n_trials,
                           timeout=timeout)
    except _Terminated:
        err.print("terminated (SIGTERM) outside the sweep; no trial was running. Rerun to resume.")
        raise typer.Exit(143) from None
    if json_out:
        print_json(result.as_dict())
        raise typer.Exit(result.exit_code)
    from tuner.cli.views import done_of

    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(result.counts.items()) if n)
    done = result.counts.get("COMPLETE", 0) + result.counts.get("PRUNED", 0)
    out.print(f"night [bold]{result.study}[/] on {result.storage}: "
              f"{done_of(done, result.n_trials, 'trials ')} "
              f"({counts or 'none'}); stopped: {result.reason}")
    if result.best is not None:
        from tuner.nightly.scheduler import describe_config

        out.print(f"best: #{result.best['trial']} {fmt(result.best['value'])} "
                  f"({describe_config(result.best['config'])})", highlight=False)
    if result.verdict is None and done >= result.n_trials:
        out.print(f"[yellow]no verdict[/]: {result.reason} came as the night's last trial "
                  "finished; run the same command to judge it")
    elif result.verdict is None:
        out.print(f"[yellow]no verdict[/]: the night was interrupted ({result.reason}); running "
                  "trials were re-queued; run the same command to resume")
    else:
        style = {"regression": "bold red", "improvement": "bold green", "ok": "green"}.get(
            result.verdict.verdict, "yellow")
        if result.verdict.verdict == "ok" and result.verdict.cause in ("search", "space"):
            style = "bold yellow"  # a shortfall: exit 0, but worth a look
        for line in result.verdict.lines():
            if line.startswith("verdict:"):
                out.print(f"[{style}]{escape(line)}[/]", highlight=False)
            else:
                out.print(escape(line), highlight=False)

    flag, note = escape(storage_flag(url)), escape(storage_note(url))
    out.print(f"[dim]exit code {result.exit_code} · history: tuner history {result.base}{flag} · "
              f"report: tuner report {result.study}{flag}{' ' + note if note else ''}[/]",
              highlight=False)
    raise typer.Exit(result.exit_code)


@app.command(help="Run every study file's nightly sweep at its \\[schedule] cron time, in its "
                  "timezone, until SIGTERM or Ctrl-C. A night missed while the scheduler was "
                  "down is caught up once on start (not with --cron, unless --catch-up); a cron "
                  "fire during a running night of the "
                  "same file runs when it ends. Each night runs as `tuner nightly` in a "
                  "subprocess; SIGTERM is forwarded so no trial is left RUNNING. Folders are "
                  "rescanned every minute: a broken file is skipped until it loads, a file "
                  "naming the study of a file before it is skipped, an edited cron is "
                  "rescheduled, a removed file is unscheduled, and a folder with nothing "
                  "to schedule yet is waited on.")
def scheduler(paths: Annotated[list[Path], typer.Argument(
                  help="Study files and/or folders (their *.toml files with a \\[schedule] "
                       "section).", show_default=False)],
              storage: FileStorageOpt = None,
              workers: Annotated[int, typer.Option(
                  "--workers", "-w", min=1, help="Worker processes per night.")] = 1,
              cron: Annotated[str | None, typer.Option(
                  help="Override every file's schedule.cron: 5 fields, or 6 with seconds first "
                       "(e.g. '*/30 * * * * *' to try it out; every fire runs and judges a real "
                       "night, so try it on a scratch --storage). Implies --no-catch-up unless "
                       "--catch-up is given.")] = None,
              catch_up: Annotated[bool | None, typer.Option(
                  "--catch-up/--no-catch-up",
                  help="Run the latest missed night on start \\[default: yes, unless --cron].",
                  show_default=False)] = None,
              now: Annotated[str | None, typer.Option(
                  hidden=True, help="Pretend the current time is this ISO time when deciding "
                                    "what to catch up (tests).")] = None,
              heartbeat: Annotated[Path | None, typer.Option(
                  "--heartbeat", dir_okay=False,
                  help="Touch this file every 10 s while the scheduler is healthy (for a "
                       "container healthcheck: its age says whether the service is alive).",
                  show_default=False)] = None,
              rescan: Annotated[float, typer.Option(
                  "--rescan-interval", hidden=True, min=0.5,
                  help="Seconds between rescans of the folders (tests).")] = 60.0) -> None:
    from tuner.nightly.scheduler import (
        SchedulerService,
        collect_study_files,
        configure_logging,
        log,
        start_sweeps,
    )

    configure_logging()
    scan = collect_study_files(paths)
    for path in scan.unscheduled:
        log.info("skipping %s: no [schedule] section", path)
    for path, message in scan.broken.items():
        log.error("skipping %s: cannot load it (%s); it is scheduled once it loads (folders are "
                  "rescanned every %.0f s)", path, message, rescan)
    for message in scan.refused.values():
        log.error("%s", message)
    if cron is not None:  # a bad --cron is an error, not a reason to refuse every file
        from tuner.nightly.cron import cron_trigger

        try:
            cron_trigger(cron, "UTC")
        except ValueError as exc:
            raise ConfigError(f"--cron {cron!r}: {exc}") from None
        if catch_up is None:  # a try-out schedule: no night of the files' own schedule
            log.info("--cron given: missed nights are not caught up (add --catch-up for that)")
    catch_up = (cron is None) if catch_up is None else catch_up
    sweeps = start_sweeps(scan, paths, storage=storage, cron=cron)
    clock = None
    if now is not None:
        try:
            fake = datetime.fromisoformat(now)
        except ValueError:
            raise ConfigError(f"--now {now!r}: expected an ISO time") from None
        fake = fake if fake.tzinfo else fake.replace(tzinfo=UTC)
        clock = lambda: fake  # noqa: E731
    service = SchedulerService(sweeps, workers=workers, catch_up=catch_up, clock=clock,
                               storage_override=storage, cron=cron,
                               folders=[p for p in paths if p.is_dir()], rescan_interval=rescan,
                               broken=scan.broken, refused=scan.refused,
                               given=[p for p in paths if not p.is_dir()])
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        service.start()
        log.info("scheduler running with %d sweep(s); stop with SIGTERM or Ctrl-C", len(sweeps))
        beat = 0.0
        while not stop.wait(0.5):
            if heartbeat is not None and time.monotonic() - beat >= 10 and service.healthy():
                beat = time.monotonic()
                try:
                    heartbeat.touch()
                except OSError as exc:
                    log.error("cannot touch the heartbeat file %s: %s; not trying again",
                              heartbeat, exc.strerror or exc)
                    heartbeat = None
    finally:
        service.stop(received[0] if received else "exiting")
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@app.command(help="The nights of a nightly sweep so far: date, best value and configuration, "
                  "verdict and trial counts.")
def history(base: Annotated[str, typer.Argument(
                help="The sweep's base name (study.name of its study file), or the study file "
                     "itself (then its study.storage counts, as for tuner nightly).",
                show_default=False)],
            storage: FileStorageOpt = None, json_out: JsonOpt = False) -> None:
    from tuner.cli.views import FitTable, fmt
    from tuner.nightly.history import night_history
    from tuner.nightly.nights import verdict_label
    from tuner.storage import describe

    target = base
    name, store, url, _sf = open_target(target, storage)
    base = name or target
    records = night_history(store, base)
    if not records:  # the same error (exit 2) with --json: nothing on stdout
        file = target if is_study_file(target) else "STUDY_FILE"
        raise TunerError(f"no nights of {base!r} in {describe(url)} (night studies are named "
                         f"{base}-YYYY-MM-DD)", hint=_no_nights_hint(store, base, url, file))
    if json_out:
        print_json([r.as_dict() for r in records])
        return
    metric = records[-1].metric
    table = FitTable(title=f"nights of {base} in {describe(url)}", title_justify="left")
    # key: never shrinks; drop: left out first (highest) when the terminal is too narrow
    for col, key, drop in (("date", True, 0), (f"best {metric}", True, 0), ("trial", True, 0),
                           ("optimizer", True, 2), ("decay", True, 4), ("scaling", True, 6),
                           ("lr", True, 3), ("verdict", False, 0), ("incumbent drift", True, 5),
                           ("complete", True, 1), ("pruned", True, 7), ("fail", True, 8),
                           ("warm start", False, 9)):
        table.add_column(col, key=key, drop=drop,
                         justify="right" if col in ("trial", "complete", "pruned", "fail") else "left")
    styles = {"regression": "bold red", "improvement": "green", "ok": "", "no_result": "yellow",
              "ok (search)": "yellow"}
    for r in records:
        v = r.verdict or {}
        verdict = verdict_label(v, missing="-")
        style = styles.get(verdict, styles.get(v.get("verdict", ""), ""))
        unfinished = ", ".join(f"{r.counts[s]} {s.lower()}" for s in ("RUNNING", "WAITING")
                               if r.counts.get(s))
        if unfinished:  # a night still running, or cut short (rerun it to finish)
            verdict = f"{verdict} ({unfinished})"
        warm = r.warm_start or {}
        warm_text = (f"{len(warm.get('enqueued', []))} in, {len(warm.get('skipped', []))} skipped"
                     if warm.get("source") else "-")
        table.add_row(r.date.isoformat(), fmt(r.best_value),
                      "-" if r.best_trial is None else f"#{r.best_trial}",
                      str(r.choice("optimizer") or "-"), str(r.choice("decay") or "-"),
                      str(r.choice("batch_scaling") or "-"),
                      fmt(r.choice("lr"), 3) if r.choice("lr") is not None else "-",
                      f"[{style}]{verdict}[/]" if style else verdict,
                      _drift_cell(v),
                      str(r.counts.get("COMPLETE", 0)), str(r.counts.get("PRUNED", 0)),
                      str(r.counts.get("FAIL", 0)), warm_text)
    out.print(table)


def _drift_cell(verdict: dict[str, Any]) -> str:
    """The incumbent's drift as tuner nightly prints it, and whether the data file it was
    scored on changed (a drift on the same data comes from the code)."""
    from tuner.nightly.regression import signed

    drift, data = verdict.get("drift"), verdict.get("data") or {}
    text = "diverged" if (verdict.get("incumbent") or {}).get("diverged") else signed(drift)
    changed = data.get("changed")
    if data.get("setup_changes"):
        return f"{text} (set-up changed)"
    if changed:
        return f"{text} (new data)"
    if changed is False and drift:
        return f"{text} (same data)"
    return text


def _no_nights_hint(storage: Any, name: str, url: str, file: str) -> str:
    """What to do when ``name`` has no nights: it may be a night itself, or a plain study."""
    from tuner.nightly.nights import base_of, list_nights

    flag = storage_flag(url) + (f" {note}" if (note := storage_note(url)) else "")
    if name in {s.study_name for s in storage.get_all_studies()}:
        base = base_of(name)
        if base is not None and list_nights(storage, base):
            return f"{name!r} is one night of the sweep {base!r}: tuner history {base}{flag}"
        return (f"{name!r} is an ordinary study, not a nightly sweep: see it with tuner show "
                f"{name}{flag}")
    sweeps = sorted({b for s in storage.get_all_studies() if (b := base_of(s.study_name))})
    if sweeps:
        return (f"sweeps with nights here: {', '.join(sweeps)} (tuner history {sweeps[0]}{flag}); "
                f"or run one with: tuner nightly {file}{flag}")
    return f"run one with: tuner nightly {file}{flag}"

