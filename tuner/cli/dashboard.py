"""``tuner dashboard`` (optuna-dashboard plus the tuner views, one server) and ``tuner report``
(the views of one study as a self-contained HTML file)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from tuner.cli.app import FileStorageOpt, app, err, out, output_file
from tuner.errors import TunerError

DashboardsOpt = Annotated[str | None, typer.Option(
    "--dashboards", envvar="TUNER_DASHBOARDS", show_envvar=True,
    help="Folder with your own dashboard files (<name>.toml); dashboards not found there come "
         "from the bundled ones.")]


@app.command(help="Serve optuna-dashboard for the storage together with the tuner views: a study "
                  "list with best values, trial counts, last activity and the nights' verdicts, "
                  "and per-study views of optimizers, schedules and batch-size scaling (defined "
                  "in dashboards/*.toml).")
def dashboard(study_file: Annotated[Path | None, typer.Argument(
                  help="A study file: serve the storage it resolves to (--storage, else "
                       "$TUNER_STORAGE, else its study.storage), as tuner run and tuner nightly "
                       "do.", show_default=False, dir_okay=False)] = None,
              storage: FileStorageOpt = None,
              host: Annotated[str, typer.Option(
                  help="Address to listen on. 127.0.0.1 is this machine only; 0.0.0.0 exposes the "
                       "dashboard (which has no login and can delete studies) to the network."
              )] = "127.0.0.1",
              port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free port).")] = 8080,
              dashboards: DashboardsOpt = None,
              threads: Annotated[int, typer.Option(min=1, max=64, help="Request threads.")] = 8,
              list_panels: Annotated[bool, typer.Option(
                  "--list-panels", help="List the panel types dashboard files can use, and exit.")] = False,
              ) -> None:
    from tuner.cli.nightly import open_target
    from tuner.dashboard import panel_names
    from tuner.dashboard.registry import get_panel
    from tuner.dashboard.render import check_panels
    from tuner.dashboard.server import create_server, listen_addresses, make_app, run_server, url_for
    from tuner.dashboard.spec import available_dashboards, load_dashboard
    from tuner.storage import describe

    if list_panels:
        for name in panel_names():
            info = get_panel(name)
            options = ", ".join(f"{k}={v[1]!r}" for k, v in (info.options or {}).items())
            text = f"[cyan]{name}[/]: {info.description}"
            out.print(text + (f" [dim]options: {options}[/]" if options else ""), highlight=False)
        return
    found = available_dashboards(dashboards)
    for name in found:  # fail now on a broken file or a bad panel option, not at a page view
        check_panels(load_dashboard(name, dashboards))
    _name, store, url, _sf = open_target(None if study_file is None else str(study_file), storage)
    wsgi_app = make_app(store, describe(url), dashboards)
    server = create_server(wsgi_app, host, port, threads)
    addresses = listen_addresses(server)
    base = url_for(*addresses[0])
    err.print(f"tuner dashboard: {describe(url)} ({len(found)} dashboards: {', '.join(found)})",
              highlight=False)
    out.print(f"serving {base}/  (study list with best values)", highlight=False)
    out.print(f"optuna-dashboard {base}/dashboard", highlight=False)
    for h, p in addresses[1:]:
        out.print(f"also on {url_for(h, p)}/", highlight=False)
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print("[yellow]warning:[/] listening beyond this machine: anyone who can reach it can "
                  "read and delete studies (optuna-dashboard has no login)")
    err.print("Ctrl-C to stop", style="dim")
    out.file.flush()
    run_server(server)
    err.print("stopped")


@app.command(help="Write one study's views and summary as a single self-contained HTML file "
                  "(plotly.js embedded once; opens offline, no database needed) to share with "
                  "anyone.")
def report(study: Annotated[str, typer.Argument(
               help="Study name (see `tuner ls`), a nightly sweep's name (its latest night), or "
                    "a study file: its study, or for a file with a \\[schedule] its latest night "
                    "(the storage then resolves as for tuner nightly: --storage, $TUNER_STORAGE, "
                    "the file's study.storage).",
               show_default=False)],
           storage: FileStorageOpt = None,
           output: Annotated[str | None, typer.Option(
               "--output", "-o", help="HTML file to write, or a folder to write STUDY.html in "
                                      "\\[default: STUDY.html in the current folder].",
               show_default=False)] = None,
           dashboard_name: Annotated[str | None, typer.Option(
               "--dashboard", "-d", help="Which dashboard file: a name in the dashboards folders "
                                         "(study, nightly, ...) or a path to a .toml file "
                                         "\\[default: nightly for a night of `tuner nightly`, "
                                         "else study].", show_default=False)] = None,
           dashboards: DashboardsOpt = None,
           attach: Annotated[bool, typer.Option(
               "--attach", help="Also store the views with the study, for optuna-dashboard.")] = False,
           ) -> None:
    from tuner.cli.nightly import open_target
    from tuner.dashboard.attach import attach_views
    from tuner.dashboard.report import write_report
    from tuner.study import nights_of

    name, store, url, sf = open_target(study, storage)
    study = name or study
    if sf is not None and sf.schedule is not None or (
            sf is None and _study_id(store, study) is None and nights_of(study, store)):
        base, study = study, _latest_night(store, url, study)
        err.print(f"{escape(base)} is a nightly sweep: reporting its latest night, "
                  f"{escape(study)} (another night: tuner report {escape(base)}-YYYY-MM-DD)",
                  highlight=False)
    path = output_file(output, f"{study}.html")
    if path.suffix.lower() not in (".html", ".htm"):
        raise TunerError(f"--output {path}: tuner report writes one HTML file; name it .html, or "
                         "give an existing folder to write STUDY.html in",
                         hint="for a PDF, open the HTML file in a browser and print it to PDF")
    started = time.perf_counter()
    try:
        view = write_report(store, study, path, dashboard=dashboard_name or _default_dashboard(
            store, study), folder=dashboards)
    except OSError as exc:
        raise TunerError(f"cannot write {path}: {exc.strerror or exc}") from None
    size = path.stat().st_size
    out.print(f"wrote {escape(str(path))} ({size / 1e6:.1f} MB, {len(view.panels)} views, "
              f"{time.perf_counter() - started:.1f} s)", highlight=False)
    if attach:
        from tuner.study import load_study

        st, _ = load_study(study, store)
        stats = attach_views(st, view.panels)
        out.print(f"stored {stats['figures']} figures and the summary note with study {study!r}",
                  highlight=False)
    for key, error in view.errors.items():
        err.print(f"[red]view {key} failed:[/] {error}", highlight=False)
    if view.errors:
        raise typer.Exit(1)


def _latest_night(storage: Any, url: str, base: str) -> str:
    """The latest night of the sweep ``base`` (a study file with a [schedule] names its sweep)."""
    from tuner.storage import describe
    from tuner.study import nights_of

    nights = nights_of(base, storage)
    if not nights:
        raise TunerError(f"no nights of {base!r} in {describe(url)} yet (night studies are named "
                         f"{base}-YYYY-MM-DD)", hint="run one with: tuner nightly STUDY_FILE")
    return nights[-1]


def _study_id(storage: Any, name: str) -> int | None:
    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        return None


def _default_dashboard(storage: Any, study: str) -> str:
    """``nightly`` for a night of a nightly sweep (its trend over the nights), else ``study``."""
    from tuner.nightly.nights import ATTR_NIGHT

    study_id = _study_id(storage, study)
    if study_id is None:
        return "study"  # write_report says the study does not exist
    return "nightly" if ATTR_NIGHT in storage.get_study_user_attrs(study_id) else "study"
