"""``tuner dashboard``: optuna-dashboard and the tuner views from one threaded WSGI server.

Routes (everything else goes to optuna-dashboard, whose UI is under ``/dashboard``):

* ``/`` and ``/tuner/``: the study list, with best value, trial counts by state and last
  activity per study (one set of aggregate queries, fast for any number of trials);
* ``/tuner/studies/<name>[?dashboard=<name>]``: a study's tuner views (by default
  ``dashboards/nightly.toml`` for a night of a nightly sweep, else ``dashboards/study.toml``;
  ``dashboard`` is only ever the name of a ``*.toml`` file of the dashboards folders, never a
  path: anything else is a 404 that lists the names);
* ``/tuner/studies/<name>/report.html``: the same as a self-contained file (``tuner report``);
* ``/tuner/api/studies``: the study list as JSON;
* ``/tuner/health``: ``ok`` once ``SELECT 1`` answers (a lost database is a 503, so a container
  healthcheck or a Kubernetes readiness probe sees it); ``/tuner/live``: ``ok`` without touching
  the database (a liveness probe: restarting the dashboard would not bring a database back);
* ``/tuner/static/plotly.min.js``: plotly.js (cached by the browser, gzip when accepted).

Rendered pages are cached per study and dashboard until what they show changes, which a few
cheap queries decide (:meth:`TunerViews.fingerprint`; no trial is read, a hit takes 2-3 ms on a
3,000-trial study): the study's trials (per state: count, last id, start and completion), its
user attributes (their values, e.g. a night's verdict), the
dashboard files, and for a dashboard with nightly panels the sweep's nights (which exist, their
trials, verdicts and warm starts).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import html
import json
import logging
import signal
import socket
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import sqlalchemy

from tuner.dashboard.html import list_page, plotly_js, plotly_version
from tuner.dashboard.report import MultiObjectiveError, render_study_view
from tuner.dashboard.spec import DashboardError, available_dashboards, load_dashboard
from tuner.errors import StudyNotFoundError, TunerError
from tuner.jsonsafe import jsonable
from tuner.storage.resilience import first_line
from tuner.storage.urls import mask_url

log = logging.getLogger("tuner.dashboard")

StartResponse = Callable[..., Any]
HTML = "text/html; charset=utf-8"
STALE_CHECK_S = 15  # a study page with RUNNING trials is rebuilt at most this often when idle


class DashboardNotFoundError(DashboardError):
    """A ``?dashboard=`` value that is not the name of a dashboard in the server's folders."""


class SweepNotStudyError(StudyNotFoundError):
    """A study page asked for by a nightly sweep's base name, which is no study: ``link`` is
    the same page of its latest night."""

    def __init__(self, message: str, *, hint: str, link: tuple[str, str]) -> None:
        super().__init__(message, hint=hint)
        self.link = link


class TunerViews:
    """The WSGI application of the tuner routes."""

    def __init__(self, storage: Any, storage_text: str, folder: str | Path | None = None,
                 cache_size: int = 32) -> None:
        self.storage = storage
        # shown on every page and by the health check: never a password, even if given a URL
        self.storage_text = mask_url(storage_text) if "://" in storage_text else storage_text
        self.folder = folder
        self._cache: OrderedDict[tuple[str, str], tuple[Any, str]] = OrderedDict()
        self._cache_size = cache_size
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()
        self._js: dict[str, bytes] = {}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = _path(environ)
        if method not in ("GET", "HEAD"):
            return self._send(start_response, "405 Method Not Allowed", "method not allowed\n",
                              "text/plain; charset=utf-8", method, [("Allow", "GET, HEAD")])
        try:
            status, body, ctype, headers = self._route(path, environ)
        except StudyNotFoundError as exc:
            page = _error_page("Study not found", exc.message, exc.hint,
                               link=exc.link if isinstance(exc, SweepNotStudyError) else None)
            status, body, ctype, headers = "404 Not Found", page, HTML, []
        except DashboardNotFoundError as exc:
            page = _error_page("Dashboard not found", exc.message, exc.hint)
            status, body, ctype, headers = "404 Not Found", page, HTML, []
        except MultiObjectiveError as exc:  # a study the views cannot show: say so, point on
            link = None if exc.study_id is None else \
                (f"/dashboard/studies/{exc.study_id}", "its Pareto front in optuna-dashboard")
            page = _error_page("No tuner views for a multi-objective study", exc.message, exc.hint,
                               link=link)
            status, body, ctype, headers = "200 OK", page, HTML, [("Cache-Control", "no-store")]
        except TunerError as exc:
            page = _error_page("Cannot show this page", exc.message, exc.hint)
            status, body, ctype, headers = "500 Internal Server Error", page, HTML, []
        except Exception as exc:  # a bug: log it, answer with a page rather than a dropped connection
            log.error("GET %s failed:\n%s", path, traceback.format_exc())
            status, body, ctype, headers = ("500 Internal Server Error",
                                            _error_page("Internal error",
                                                        f"{type(exc).__name__}: {self._scrubbed(exc)}",
                                                        "see the server's log"), HTML, [])
        return self._send(start_response, status, body, ctype, method, headers)

    # --- routing ----------------------------------------------------------------------------

    def _route(self, path: str, environ: dict[str, Any]) -> tuple[str, Any, str, list]:
        if path in ("", "/", "/tuner", "/tuner/", "/tuner/studies", "/tuner/studies/"):
            return "200 OK", self.list_html(), HTML, [("Cache-Control", "no-store")]
        if path == "/tuner/health":
            return self.health()
        if path == "/tuner/live":  # the process answers (no database query): a liveness probe
            return "200 OK", "ok\n", "text/plain; charset=utf-8", [("Cache-Control", "no-store")]
        if path == "/tuner/api/studies":
            return "200 OK", json.dumps(self.list_json(), indent=1), "application/json", \
                [("Cache-Control", "no-store")]
        if path == "/tuner/static/plotly.min.js":
            return self._plotly(environ)
        if path.startswith("/tuner/studies/"):
            rest = path[len("/tuner/studies/"):]
            query = parse_qs(environ.get("QUERY_STRING", ""))
            dashboard = (query.get("dashboard") or [None])[0]
            report = rest.endswith("/report.html")
            name = rest[: -len("/report.html")] if report else rest.rstrip("/")
            try:
                if report:
                    dashboard = dashboard or self.default_dashboard(name)
                    page = self.study_html(name, dashboard, plotly="inline")
                    filename = quote(f"{name}-{dashboard}.html", safe="")
                    return "200 OK", page, HTML, [
                        ("Content-Disposition", f"attachment; filename*=UTF-8''{filename}")]
                return "200 OK", self.study_html(name, dashboard), HTML, [("Cache-Control", "no-store")]
            except StudyNotFoundError as exc:
                raise self._sweep_hint(name, exc, report) from None
        return "404 Not Found", _error_page("Not found", f"no page at {path}"), HTML, []

    def _send(self, start_response: StartResponse, status: str, body: Any, ctype: str, method: str,
              headers: list | None = None) -> Iterable[bytes]:
        data = body if isinstance(body, bytes) else body.encode("utf-8")
        out = [("Content-Type", ctype), ("Content-Length", str(len(data))),
               ("X-Content-Type-Options", "nosniff")]
        out += headers or []
        start_response(status, out)
        return [b""] if method == "HEAD" else [data]

    # --- pages ----------------------------------------------------------------------------------

    def list_rows(self) -> list[Any]:
        from tuner import results

        return results.list_studies(self.storage)

    def health(self) -> tuple[str, Any, str, list]:
        """``ok`` if the database answers ``SELECT 1``, else 503 with the reason."""
        backend = getattr(self.storage, "backend", None)
        try:
            if backend is not None:
                with backend.engine.connect() as conn:
                    conn.execute(sqlalchemy.text("SELECT 1"))
        except Exception as exc:
            reason = self._scrubbed(exc)
            log.warning("health check: %s does not answer: %s", self.storage_text, reason)
            return ("503 Service Unavailable", f"database unreachable: {self.storage_text}: {reason}\n",
                    "text/plain; charset=utf-8", [("Cache-Control", "no-store")])
        return "200 OK", "ok\n", "text/plain; charset=utf-8", [("Cache-Control", "no-store")]

    def _scrubbed(self, exc: BaseException) -> str:
        """What may be shown of ``exc`` to anyone who can reach the server: the first line of
        the error it wraps, with the storage's password (and any other credentials) masked.
        Driver errors can span lines (SQL, parameters, connection details)."""
        backend = getattr(self.storage, "backend", None)
        engine = getattr(backend, "engine", None)
        url = engine.url.render_as_string(hide_password=False) if engine is not None else ""
        return first_line(exc, url) or type(exc).__name__

    def nights(self) -> dict[int, dict[str, Any]]:
        """Study id -> ``{"night": ..., "verdict": ...}`` for every night of a nightly sweep (one
        query over the two study user attributes)."""
        from optuna.storages._rdb import models

        from tuner.nightly.nights import ATTR_NIGHT, ATTR_VERDICT

        attrs = models.StudyUserAttributeModel.__table__
        found: dict[int, dict[str, Any]] = {}
        with self.storage.backend.engine.connect() as conn:
            for sid, key, value in conn.execute(sqlalchemy.select(
                    attrs.c.study_id, attrs.c.key, attrs.c.value_json)
                    .where(attrs.c.key.in_([ATTR_NIGHT, ATTR_VERDICT]))).all():
                found.setdefault(sid, {})["night" if key == ATTR_NIGHT else "verdict"] = json.loads(value)
        return {sid: info for sid, info in found.items() if "night" in info}

    def list_json(self) -> list[dict[str, Any]]:
        ids = {s.study_name: s._study_id for s in self.storage.get_all_studies()}
        nights = self.nights()
        out = []
        for row in self.list_rows():
            sid = ids.get(row.name)
            night = nights.get(sid) if sid is not None else None
            item = jsonable(row.as_dict())
            item["study_id"] = sid
            item["views"] = f"/tuner/studies/{quote(row.name, safe='')}"
            item["dashboard"] = "nightly" if night is not None else "study"
            item["optuna_dashboard"] = f"/dashboard/studies/{sid}"
            item["night"] = None if night is None else night["night"]
            item["verdict"] = None if night is None else jsonable(night.get("verdict"))
            out.append(item)
        return out

    def list_html(self) -> str:
        ids = {s.study_name: s._study_id for s in self.storage.get_all_studies()}
        names = list(available_dashboards(self.folder))
        names = ["study"] + [n for n in names if n != "study"]
        by_id = self.nights()
        nights = {name: by_id[sid].get("verdict") for name, sid in ids.items() if sid in by_id}
        return list_page(self.list_rows(), storage=self.storage_text, ids=ids, dashboards=names,
                         nights=nights)

    def default_dashboard(self, name: str) -> str:
        """``nightly`` for a night of a nightly sweep (when that dashboard exists), else ``study``."""
        backend = getattr(self.storage, "backend", None)
        if backend is None:
            return "study"
        with backend.engine.connect() as conn:
            _sid, own = _study_attrs(conn, name)
        return self._default_for(own)

    def _default_for(self, attrs: dict[str, str]) -> str:
        from tuner.nightly.nights import ATTR_NIGHT

        return "nightly" if ATTR_NIGHT in attrs and "nightly" in available_dashboards(self.folder) \
            else "study"

    def study_html(self, name: str, dashboard: str | None = None, *,
                   plotly: str = "/tuner/static/plotly.min.js") -> str:
        if not name:
            raise StudyNotFoundError("no study name in the address")
        backend = getattr(self.storage, "backend", None)
        # a cache hit costs one connection and three small queries (no trial is read)
        with backend.engine.connect() if backend is not None else contextlib.nullcontext() as conn:
            facts = _study_attrs(conn, name) if conn is not None else None
            default = "study" if facts is None else self._default_for(facts[1])
            dashboard = dashboard or default
            spec = load_dashboard(str(self.dashboard_file(dashboard)), self.folder)
            fingerprint = None if facts is None else _fingerprint(conn, name, *facts, spec)
        files = tuple((f, Path(f).stat().st_mtime_ns) for f in spec.files)
        # with RUNNING trials, a page is rebuilt every STALE_CHECK_S even if nothing else
        # changed: a runner that died leaves its trials RUNNING and the marks still
        running = fingerprint is not None and "RUNNING" in str(fingerprint[1])
        stamp = (fingerprint, files, plotly,
                 int(time.time() // STALE_CHECK_S) if running else None)
        key = (name, f"{dashboard}|{plotly}")
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one render per study and dashboard at a time; the others wait for it
            cached = self._cache.get(key)
            if cached is not None and fingerprint is not None and cached[0] == stamp:
                self._cache.move_to_end(key)
                return cached[1]
            night = default == "nightly"
            q = quote(name, safe="")
            nav = [("all studies", "/"), ("optuna-dashboard", f"/dashboard/studies/{self._study_id(name)}"),
                   ("download report", f"/tuner/studies/{q}/report.html?dashboard={quote(dashboard)}")]
            nav += [(f"{d} views", f"/tuner/studies/{q}?dashboard={quote(d)}")
                    for d in available_dashboards(self.folder)
                    if d != dashboard and (night or d != "nightly")]
            view = render_study_view(self.storage, name, spec=spec, plotly=plotly, nav=nav)
            if view.errors:
                log.warning("study %s: %d view(s) failed: %s", name, len(view.errors), view.errors)
            self._cache[key] = (stamp, view.html)
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return view.html

    def _sweep_hint(self, name: str, exc: StudyNotFoundError, report: bool) -> StudyNotFoundError:
        """``exc`` (no study ``name``), or when ``name`` is a nightly sweep's base name, the
        same error pointing to its nights (as ``tuner report`` / ``tuner show`` hint), with a
        link to the same page of its latest night."""
        from tuner.study import nights_of

        try:
            nights = nights_of(name, self.storage) if name else []
        except Exception as lookup:  # the hint is a courtesy: never hide the 404 behind it
            log.warning("looking up the nights of %r: %s", name, self._scrubbed(lookup))
            return exc
        if not nights:
            return exc
        latest = nights[-1]
        href = f"/tuner/studies/{quote(latest, safe='')}" + ("/report.html" if report else "")
        count = f"{len(nights)} night{'s' if len(nights) > 1 else ''}"
        return SweepNotStudyError(
            exc.message, hint=f"{name!r} is a nightly sweep; its nights are the studies "
                              f"{name}-YYYY-MM-DD ({count}, latest: {latest}; all of them are in "
                              "the study list)",
            link=(href, f"its latest night, {latest}"))

    def dashboard_file(self, name: str) -> Path:
        """The file of the dashboard called ``name`` in the server's folders. The one check of
        ``?dashboard=``: only a known name is accepted, never a path (unlike ``tuner report
        --dashboard``, which a local user may point at any file), so a request cannot make the
        server read, or report parse errors of, any other file."""
        found = available_dashboards(self.folder)
        path = found.get(name)
        if path is None:
            raise DashboardNotFoundError(f"no dashboard named {name!r}",
                                         hint=f"available dashboards: {', '.join(found) or 'none'}")
        return path

    def _study_id(self, name: str) -> int | str:
        try:
            return self.storage.get_study_id_from_name(name)
        except KeyError:
            raise StudyNotFoundError(f"no study named {name!r} in this storage") from None

    def fingerprint(self, name: str, spec: Any = None) -> tuple | None:
        """What the pages of study ``name`` show, in a few cheap queries: it changes whenever a
        trial of the study is added or changes state, a study user attribute changes value
        (e.g. the night's verdict), and, for a dashboard ``spec`` with nightly panels, when a
        night of the sweep appears or its trials, verdict or warm start change. ``None``:
        unknown, do not cache."""
        backend = getattr(self.storage, "backend", None)
        if backend is None:
            return None
        with backend.engine.connect() as conn:
            return _fingerprint(conn, name, *_study_attrs(conn, name), spec)
    def _plotly(self, environ: dict[str, Any]) -> tuple[str, Any, str, list]:
        etag = f'"plotly-{plotly_version()}"'
        headers = [("Cache-Control", "public, max-age=86400"), ("ETag", etag), ("Vary", "Accept-Encoding")]
        if environ.get("HTTP_IF_NONE_MATCH") == etag:
            return "304 Not Modified", b"", "application/javascript", headers
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            if "gzip" not in self._js:
                self._js["gzip"] = gzip.compress(plotly_js().encode("utf-8"), compresslevel=6)
            return "200 OK", self._js["gzip"], "application/javascript; charset=utf-8", \
                headers + [("Content-Encoding", "gzip")]
        if "plain" not in self._js:
            self._js["plain"] = plotly_js().encode("utf-8")
        return "200 OK", self._js["plain"], "application/javascript; charset=utf-8", headers


def _digest(rows: Any) -> str:
    return hashlib.sha1(repr(rows).encode("utf-8")).hexdigest()


def _study_attrs(conn: Any, name: str) -> tuple[int, dict[str, str]]:
    """The id of study ``name`` and its user attributes (key -> JSON text), or
    :class:`StudyNotFoundError`."""
    from optuna.storages._rdb import models

    studies = models.StudyModel.__table__
    attrs = models.StudyUserAttributeModel.__table__
    sid = conn.execute(sqlalchemy.select(studies.c.study_id)
                       .where(studies.c.study_name == name)).scalar()
    if sid is None:
        raise StudyNotFoundError(f"no study named {name!r} in this storage")
    return sid, dict(conn.execute(sqlalchemy.select(attrs.c.key, attrs.c.value_json)
                                  .where(attrs.c.study_id == sid)).all())


def _fingerprint(conn: Any, name: str, sid: int, attrs: dict[str, str], spec: Any) -> tuple:
    """:meth:`TunerViews.fingerprint` on an open connection."""
    bases = _sweep_bases(spec, name, attrs) if spec is not None else set()
    sweep = tuple(_sweep_marks(conn, base) for base in sorted(bases)) if bases else None
    return (sid, _trial_marks(conn, [sid]).get(sid), _digest(sorted(attrs.items())), sweep)


def _trial_marks(conn: Any, study_ids: list[int]) -> dict[int, tuple]:
    """Per study and trial state: the count, last trial id, last start and last completion (one
    aggregate query, no trial read). A trial added or changing state changes the counts of its
    states, whatever the clock of the runner that stamped its times."""
    from optuna.storages._rdb import models

    trials = models.TrialModel.__table__
    func = sqlalchemy.func
    rows = conn.execute(sqlalchemy.select(
        trials.c.study_id, trials.c.state, func.count(), func.max(trials.c.trial_id),
        func.max(trials.c.datetime_start), func.max(trials.c.datetime_complete))
        .where(trials.c.study_id.in_(study_ids))
        .group_by(trials.c.study_id, trials.c.state)).all()
    marks: dict[int, list[tuple]] = {}
    for sid, *rest in rows:
        marks.setdefault(sid, []).append(tuple(str(v) for v in rest))
    return {sid: tuple(sorted(by_state)) for sid, by_state in marks.items()}


def _sweep_bases(spec: Any, name: str, attrs: dict[str, str]) -> set[str]:
    """The nightly sweeps the nightly panels of ``spec`` show for study ``name`` (its user
    attributes ``attrs`` as JSON text), by the rule the panels use (:func:`sweep_base`)."""
    from tuner.nightly.nights import ATTR_NIGHT, sweep_base

    night = json.loads(attrs[ATTR_NIGHT]) if ATTR_NIGHT in attrs else None
    bases = {sweep_base(name, night, p.options.get("base"))
             for p in spec.panels if p.type.startswith("nightly_")}
    return {base for base in bases if base}


def _sweep_marks(conn: Any, base: str) -> tuple:
    """The nights of ``base``: which exist, their trials, verdicts, warm starts and night info."""
    from optuna.storages._rdb import models

    from tuner.nightly.nights import ATTR_NIGHT, ATTR_VERDICT, ATTR_WARM_START, night_date

    studies = models.StudyModel.__table__
    attrs = models.StudyUserAttributeModel.__table__
    nights = {sid: study_name for sid, study_name in conn.execute(
        sqlalchemy.select(studies.c.study_id, studies.c.study_name)
        .where(studies.c.study_name.startswith(f"{base}-", autoescape=True))).all()
        if night_date(study_name, base) is not None}
    if not nights:
        return (base,)
    ids = sorted(nights)
    marks = _trial_marks(conn, ids)
    values = conn.execute(sqlalchemy.select(attrs.c.study_id, attrs.c.key, attrs.c.value_json).where(
        attrs.c.study_id.in_(ids), attrs.c.key.in_([ATTR_NIGHT, ATTR_VERDICT, ATTR_WARM_START]))).all()
    return (base, tuple((sid, nights[sid], marks.get(sid)) for sid in ids), _digest(sorted(values)))


def _path(environ: dict[str, Any]) -> str:
    raw = environ.get("PATH_INFO", "") or ""
    try:  # WSGI gives the URL-decoded path as latin-1 code points of the UTF-8 bytes
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


def _error_page(title: str, message: str, hint: str | None = None,
                link: tuple[str, str] | None = None) -> str:
    hint_html = f"<p class=muted>{html.escape(hint)}</p>" if hint else ""
    link_html = "" if link is None else \
        f'<a href="{html.escape(link[0])}">{html.escape(link[1])}</a> · '
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            "<style>body{font:15px system-ui,sans-serif;margin:40px;color:#1d2330}"
            "pre{white-space:pre-wrap;background:#fff7f7;border:1px solid #f1b5b5;padding:10px}"
            ".muted{color:#667085}</style></head>"
            f'<body><h1>{html.escape(title)}</h1><pre id="error">{html.escape(message)}</pre>{hint_html}'
            f'<p>{link_html}<a href="/">all studies</a> · <a href="/dashboard">optuna-dashboard</a></p>'
            '</body></html>')


def make_app(storage: Any, storage_text: str, folder: str | Path | None = None) -> Callable:
    """One WSGI application: the tuner routes next to optuna-dashboard (same storage)."""
    import optuna_dashboard

    dashboard = optuna_dashboard.wsgi(storage)
    views = TunerViews(storage, storage_text, folder)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        if path == "/" or path == "/tuner" or path.startswith("/tuner/"):
            return views(environ, start_response)
        # optuna-dashboard reads the header unguarded: without it (curl, probes, some proxies)
        # its static files answered 500 with a traceback in the log
        environ.setdefault("HTTP_ACCEPT_ENCODING", "")
        return dashboard(environ, start_response)

    app.views = views  # type: ignore[attr-defined]
    return app


def create_server(app: Callable, host: str, port: int, threads: int = 8) -> Any:
    """A waitress server bound to ``host:port`` (``port=0``: any free port), or a
    :class:`TunerError` that says why it cannot listen."""
    import waitress

    try:
        return waitress.create_server(app, host=host, port=port, threads=threads, ident="tuner",
                                      channel_timeout=120, clear_untrusted_proxy_headers=True)
    except (socket.gaierror, ValueError) as exc:  # waitress wraps a gaierror in a ValueError
        cause = exc if isinstance(exc, socket.gaierror) else exc.__context__
        why = cause.strerror if isinstance(cause, socket.gaierror) else str(exc)
        raise TunerError(f"cannot listen on {host}:{port}: unknown host {host!r} ({why})",
                         hint="use an address of this machine, e.g. --host 127.0.0.1 (a host "
                              "name or IP address, not a URL)") from None
    except OSError as exc:
        where = f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise TunerError(f"cannot listen on {where}: the port is already in use",
                             hint="stop the other server, or pick another port with --port "
                                  "(--port 0 picks a free one)") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise TunerError(f"cannot listen on {where}: permission denied",
                             hint="ports below 1024 need privileges; use e.g. --port 8080") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise TunerError(f"cannot listen on {where}: {host} is not an address of this machine",
                             hint="use --host 127.0.0.1 (this machine only) or --host 0.0.0.0 (all "
                                  "interfaces)") from None
        raise TunerError(f"cannot listen on {where}: {exc.strerror or exc}") from None


def listen_addresses(server: Any) -> list[tuple[str, int]]:
    if hasattr(server, "effective_listen"):
        return [(str(h), int(p)) for h, p in server.effective_listen]
    return [(str(server.effective_host), int(server.effective_port))]


def url_for(host: str, port: int) -> str:
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def run_server(server: Any) -> None:
    """Serve until Ctrl-C (SIGINT) or SIGTERM, then close the listening sockets.

    Both handlers are installed explicitly: a process started in the background by a
    non-interactive shell (``tuner dashboard &`` in a script) inherits SIGINT *ignored*, and
    Python then leaves it ignored."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        def _stop(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = ["DashboardError", "DashboardNotFoundError", "TunerViews", "create_server", "listen_addresses",
           "make_app", "run_server", "url_for"]
