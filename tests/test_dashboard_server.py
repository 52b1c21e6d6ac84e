"""`tuner dashboard` as a real subprocess answering real HTTP on a free port: optuna-dashboard's
API and UI, the tuner study list (best values, counts, last activity), the study views, the
report download, plotly.js, concurrent requests, live updates, and clear errors for a busy port
and a bad storage. On SQLite and on the real PostgreSQL server."""

from __future__ import annotations

import functools
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import optuna
import pytest
from test_dashboard import STUDY_NAME, STUDY_PANELS, make_study, shared_study
from test_nightly import DAY, add_night, nightly_file

from conftest import drop_pg_database, run_tuner, tuner_env, write_study

optuna.logging.set_verbosity(optuna.logging.WARNING)


class Dashboard:
    """``tuner dashboard --port 0`` in the background; ``.base`` is its address."""

    def __init__(self, url: str | None, *extra: str, cwd: Path | None = None, env: dict | None = None,
                 preexec: Any = None) -> None:
        storage = [] if url is None else ["--storage", url]
        self.proc = subprocess.Popen([sys.executable, "-m", "tuner", "dashboard", *storage,
                                      "--port", "0", *extra], cwd=cwd, env=env or tuner_env(),
                                     preexec_fn=preexec,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.base = self._wait_for_address()

    def _wait_for_address(self, timeout: float = 60) -> str:
        found: list[str] = []

        def read() -> None:
            for line in self.proc.stdout:
                m = re.search(r"serving (http://[^/\s]+)/", line)
                if m:
                    found.append(m.group(1))
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not found:
            self.stop()
            raise AssertionError(f"tuner dashboard did not start: {self.proc.stderr.read()}")
        return found[0]

    def get(self, path: str, headers: dict | None = None, method: str = "GET") -> tuple[int, Any, bytes]:
        req = urllib.request.Request(self.base + path, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    def text(self, path: str) -> str:
        status, _, body = self.get(path)
        assert status == 200, (path, status, body[:500])
        return body.decode("utf-8")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.stderr.read() if self.proc.stderr else ""

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc) -> None:
        stderr = self.stop()
        assert "Traceback" not in stderr, stderr


@pytest.fixture(scope="module")
def study_url(tmp_path_factory):
    return shared_study(tmp_path_factory)[0]


def best_of(url: str, name: str = STUDY_NAME) -> optuna.trial.FrozenTrial:
    return optuna.load_study(study_name=name, storage=url).best_trial


def check_server(dash: Dashboard, url: str, name: str) -> None:
    plain = optuna.load_study(study_name=name, storage=url)
    best = plain.best_trial
    # optuna-dashboard's API and UI
    summaries = json.loads(dash.text("/api/studies"))["study_summaries"]
    study_id = next(s["study_id"] for s in summaries if s["study_name"] == name)
    detail = json.loads(dash.text(f"/api/studies/{study_id}"))
    assert len(detail["trials"]) == len(plain.trials)
    assert detail["objective_names"] == ["val_accuracy"]  # not "Objective 0"
    graph_ids = {g["id"] for g in detail["plotly_graph_objects"]}
    assert {f"tuner-{p}" for p in STUDY_PANELS if p != "summary"} <= graph_ids
    assert f"**Best trial #{best.number}**" in detail["note"]["body"]
    ui = dash.text("/dashboard")
    assert "<div id=\"root\">" in ui or "bundle.js" in ui
    # its scripts answer a client that sends no Accept-Encoding (curl, probes): they gave 500
    for script in re.findall(r'<script[^>]+src="([^"]+)"', ui):
        conn = http.client.HTTPConnection(dash.base.split("//", 1)[1], timeout=60)
        conn.putrequest("GET", script, skip_accept_encoding=True)
        conn.endheaders()
        assert conn.getresponse().status == 200, script
        conn.close()
    # the tuner study list: best value, counts by state, last activity
    page = dash.text("/")
    row = re.search(rf'<tr data-study="{name}">(.*?)</tr>', page, re.S)
    assert row, page
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
    counts = {s: sum(t.state.name == s for t in plain.trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    assert cells[2] == f"{best.value:.4f}" and cells[3] == f"#{best.number}"
    assert cells[4:7] == [str(counts["COMPLETE"]), str(counts["PRUNED"]), str(counts["FAIL"])]
    last = max(t.datetime_complete for t in plain.trials if t.datetime_complete)
    assert cells[9] == ""  # the verdict column is for nights of a nightly sweep
    assert cells[10] == f"{last:%Y-%m-%d %H:%M:%S}"
    assert f'href="/dashboard/studies/{study_id}"' in cells[11]
    assert "dashboard=nightly" not in cells[11], "the nightly views are offered for nights only"
    rows = json.loads(dash.text("/tuner/api/studies"))
    item = next(r for r in rows if r["name"] == name)
    assert item["best_value"] == pytest.approx(best.value) and item["best_trial"] == best.number
    assert item["counts"]["COMPLETE"] == counts["COMPLETE"] and item["study_id"] == study_id
    assert item["night"] is None and item["verdict"] is None and item["dashboard"] == "study"
    # the study's tuner views
    view = dash.text(f"/tuner/studies/{name}")
    for p in STUDY_PANELS:
        assert f'data-panel="{p}"' in view
    assert f'id="best-value">{best.value:.4f}<' in view
    assert '<script src="/tuner/static/plotly.min.js">' in view


def test_dashboard_serves_optuna_dashboard_and_the_tuner_views(study_url):
    with Dashboard(study_url) as dash:
        assert dash.base.startswith("http://127.0.0.1:")  # localhost unless asked
        check_server(dash, study_url, STUDY_NAME)
        status, headers, body = dash.get(f"/tuner/studies/{STUDY_NAME}/report.html")
        assert status == 200 and "attachment" in headers["Content-Disposition"]
        assert body.count(b"* plotly.js v") == 1 and b"<script src=" not in body[:2000]
        status, headers, body = dash.get("/tuner/static/plotly.min.js", {"Accept-Encoding": "gzip"})
        assert status == 200 and headers["Content-Encoding"] == "gzip" and len(body) < 2_500_000
        status, headers, _ = dash.get("/tuner/static/plotly.min.js", {"If-None-Match": headers["ETag"]})
        assert status == 304
        status, _, body = dash.get("/tuner/studies/no-such-study")
        assert status == 404 and b"no study named" in body
        assert dash.get("/tuner/studies/x", method="POST")[0] == 405
        status, _, body = dash.get("/", method="HEAD")
        assert status == 200 and body == b""
        assert dash.text("/tuner/health") == "ok\n"


def test_health_says_when_the_database_is_gone(pg_url):
    optuna.create_study(study_name="h", storage=pg_url)
    with Dashboard(pg_url) as dash:
        assert dash.get("/tuner/health")[0] == 200
        drop_pg_database(pg_url)  # terminates the dashboard's connections too
        status, headers, body = dash.get("/tuner/health")
        assert status == 503, body
        assert body.startswith(b"database unreachable: PostgreSQL ")
        assert headers["Cache-Control"] == "no-store"
        assert dash.get("/tuner/live")[0] == 200  # alive: a restart would not help


def test_health_and_error_pages_show_one_line_of_an_error_and_no_credentials():
    """A driver error can span lines (SQL, parameters, connection details) and name the
    database with its password: the health check and the internal-error page show only its
    first line, with every credential masked, to anyone who can reach the server."""
    from types import SimpleNamespace

    import sqlalchemy

    from tuner.dashboard.server import TunerViews

    secret = "s3cr3t-pw"
    url = f"postgresql+psycopg://tuner:{secret}@db.internal:5432/studies"
    error = sqlalchemy.exc.OperationalError("SELECT 1", {}, RuntimeError(
        f'connection to "{url}" failed: FATAL: too many clients\n'
        f"DETAIL: dsn password={secret} host=db.internal\nHINT: raise max_connections"))

    def fail(*_args: Any) -> None:
        raise error

    engine = SimpleNamespace(url=sqlalchemy.engine.make_url(url), connect=fail)
    storage = SimpleNamespace(backend=SimpleNamespace(engine=engine), get_all_studies=fail)
    views = TunerViews(storage, url)  # even a URL given as the text shown is masked
    status, body, _, _ = views.health()
    assert status.startswith("503") and body.count("\n") == 1, body
    assert secret not in body and "DETAIL" not in body and "too many clients" in body
    assert "tuner:***@db.internal" in body
    seen: dict[str, Any] = {}
    page = b"".join(views({"PATH_INFO": "/tuner/api/studies", "REQUEST_METHOD": "GET"},
                          lambda status, headers: seen.update(status=status))).decode()
    assert seen["status"].startswith("500") and "too many clients" in page
    assert secret.encode() not in page.encode() and "DETAIL" not in page and "HINT" not in page


def test_the_page_cache_sees_a_trial_finish_while_another_starts_whatever_the_clocks(tmp_path):
    """The cached page is keyed on a few aggregates (no trial is read on a hit). A trial that
    finishes while a queued one starts, both stamped by runners whose clocks lag, left the
    trial count, the last start and completion and the number of RUNNING trials as they were:
    the page stayed stale. The counts per state change."""
    import sqlalchemy

    from tuner.dashboard.server import TunerViews
    from tuner.storage import open_storage

    url = f"sqlite:///{tmp_path / 'fp.db'}"
    study = optuna.create_study(study_name="fp", storage=url)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    running = study.ask()
    study.enqueue_trial({"x": 0.5})
    views = TunerViews(open_storage(url), "test")
    before = views.fingerprint("fp")
    assert views.fingerprint("fp") == before
    with views.storage.backend.engine.begin() as conn:  # two runners with lagging clocks
        conn.execute(sqlalchemy.text(
            "UPDATE trials SET state = 'COMPLETE', datetime_complete = '2000-01-01 00:00:00' "
            "WHERE trial_id = :id"), {"id": running._trial_id})
        conn.execute(sqlalchemy.text(
            "UPDATE trials SET state = 'RUNNING', datetime_start = '2000-01-01 00:00:00' "
            "WHERE state = 'WAITING'"))
    assert views.fingerprint("fp") != before


def test_the_dashboard_parameter_only_selects_a_dashboard_by_name(study_url, tmp_path):
    # files the server must never read for a request: a TOML file with a secret key, a non-TOML
    # file, both outside the dashboards folders, reachable by absolute and by relative paths
    (tmp_path / "secret.toml").write_text('secret_key = "hunter2"\n')
    (tmp_path / "shadow").write_text("root:$6$s3cr3thash:19000:0:99999:7:::\n")
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    leaks = (b"hunter2", b"secret_key", b"s3cr3thash", b"root:", b"invalid TOML", b"unknown key",
             b"Expected", b"does not exist")
    with Dashboard(study_url, cwd=cwd) as dash:
        base = f"/tuner/studies/{STUDY_NAME}"
        for value in (str(tmp_path / "secret.toml"), str(tmp_path / "shadow"), "/etc/passwd",
                      "../../secret.toml", "../../shadow", "..%2F..%2Fsecret.toml", "../../../../etc/passwd",
                      "study.toml", "./study", "../study", "nosuch", "%00"):
            for path in (f"{base}?dashboard={value}", f"{base}/report.html?dashboard={value}"):
                status, headers, body = dash.get(path)
                assert status == 404, (path, status, body[:500])
                assert headers["Content-Type"].startswith("text/html")
                assert b"Dashboard not found" in body and b"available dashboards: nightly, study" in body
                assert "Content-Disposition" not in headers
                for leak in leaks:
                    assert leak not in body, (path, leak, body)
        # the known names still work, the default and another one
        assert 'data-panel="summary"' in dash.text(f"{base}?dashboard=study")
        page = dash.text(f"{base}?dashboard=nightly")
        assert 'data-panel="nightly_trend"' in page and 'data-panel="nightly_verdicts"' in page
        status, headers, _ = dash.get(f"{base}/report.html?dashboard=nightly")
        assert status == 200 and f"{STUDY_NAME}-nightly.html" in headers["Content-Disposition"]


def test_a_study_file_names_the_storage_to_serve(study_url, tmp_path):
    # as tuner run and tuner nightly: the file's study.storage when neither --storage nor
    # $TUNER_STORAGE is given
    path = write_study(tmp_path / "s.toml", name="x", extra_study=f'storage = "{study_url}"')
    with Dashboard(None, str(path), cwd=tmp_path) as dash:
        assert STUDY_NAME in [r["name"] for r in json.loads(dash.text("/tuner/api/studies"))]
    assert not (tmp_path / "tuner.db").exists()


def test_requests_are_served_concurrently(study_url):
    with Dashboard(study_url, "--threads", "4") as dash:
        paths = ["/", "/api/studies", f"/tuner/studies/{STUDY_NAME}", "/tuner/api/studies"] * 4
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda p: dash.get(p)[0], paths))
        assert statuses == [200] * len(paths)


def test_pages_follow_a_running_study(tmp_path):
    url, _ = make_study(tmp_path, name="live", n_trials=10)
    with Dashboard(url) as dash:
        first = dash.text("/tuner/studies/live")
        assert re.search(r'id="trial-counts">10 trials', first)
        study = optuna.load_study(study_name="live", storage=url)
        model = study.trials[0]
        study.add_trial(optuna.trial.create_trial(  # a new best
            params=model.params, distributions=model.distributions, value=0.999,
            user_attrs=model.user_attrs))
        page = dash.text("/tuner/studies/live")
        assert 'id="best-value">0.9990<' in page and 'id="trial-counts">11 trials' in page
        assert re.search(r'<tr data-study="live">.*?<td class="num best">0.9990</td>', dash.text("/"), re.S)


def test_dashboard_on_postgresql(pg_url, tmp_path):
    make_study(tmp_path, name="pgdash", n_trials=14, url=pg_url)
    with Dashboard(pg_url) as dash:
        check_server(dash, pg_url, "pgdash")


def test_busy_port_is_a_clear_error(study_url):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    port = sock.getsockname()[1]
    try:
        proc = run_tuner("dashboard", "--storage", study_url, "--port", port, timeout=60)
    finally:
        sock.close()
    assert proc.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in proc.stderr
    assert "--port 0" in proc.stderr and "Traceback" not in proc.stderr
    for host in ("locahost", "http://127.0.0.1"):  # a typo, a URL: waitress raised ValueError
        proc = run_tuner("dashboard", "--storage", study_url, "--host", host, "--port", "0",
                         timeout=60)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"unknown host {host!r}" in proc.stderr and "--host 127.0.0.1" in proc.stderr


def test_bad_storage_is_a_clear_error_with_the_password_masked(tmp_path):
    proc = run_tuner("dashboard", "--storage", f"sqlite:///{tmp_path / 'missing.db'}", timeout=60)
    assert proc.returncode == 3 and "no database at" in proc.stderr
    assert not (tmp_path / "missing.db").exists()
    proc = run_tuner("dashboard", "--storage", "postgresql+psycopg://tuner:s3cr3tpw@127.0.0.1:1/nodb",
                     timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "cannot connect" in proc.stderr and "s3cr3tpw" not in proc.stdout + proc.stderr
    assert "***" in proc.stderr
    proc = run_tuner("dashboard", "--storage", "mysql://x@y/z", timeout=60)
    assert proc.returncode == 3 and "unsupported storage" in proc.stderr


def test_a_broken_dashboard_file_stops_the_server_at_start(study_url, tmp_path):
    (tmp_path / "study.toml").write_text("[[panel]\n")
    proc = run_tuner("dashboard", "--storage", study_url, "--dashboards", tmp_path, "--port", "0", timeout=60)
    assert proc.returncode == 2 and "invalid TOML" in proc.stderr
    # a panel option out of its range is refused at start too (it was shown on the page)
    (tmp_path / "study.toml").write_text('[[panel]]\ntype = "learning_curves"\ntop_k = 0\n')
    proc = run_tuner("dashboard", "--storage", study_url, "--dashboards", tmp_path, "--port", "0", timeout=60)
    assert proc.returncode == 2 and "option top_k must be" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "serving" not in proc.stdout


def test_list_panels(study_url):
    proc = run_tuner("dashboard", "--list-panels", timeout=60)
    assert proc.returncode == 0
    for p in STUDY_PANELS:
        assert f"{p}:" in proc.stdout


def test_ctrl_c_stops_the_server(study_url):
    # started as from a script's background job: SIGINT inherited as ignored
    dash = Dashboard(study_url, preexec=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert dash.get("/")[0] == 200
        dash.proc.send_signal(signal.SIGINT)
        assert dash.proc.wait(15) == 0
        assert "stopped" in dash.proc.stderr.read()
    finally:
        dash.stop()
    time.sleep(0.1)


def _verdict(verdict: str, cause: str | None = None, message: str = "") -> dict[str, Any]:
    return {"verdict": verdict, "cause": cause, "message": message, "metric": "val_accuracy",
            "direction": "maximize", "tonight": 0.95, "tonight_trial": 0,
            "baseline": {"nights": [], "level": 0.95, "margin": 0.01}, "incumbent": None}


def _set_verdict(url: str, name: str, verdict: dict[str, Any]) -> None:
    from tuner.nightly.nights import ATTR_VERDICT

    optuna.load_study(study_name=name, storage=url).set_user_attr(ATTR_VERDICT, verdict)


def test_a_nights_page_shows_its_verdict_and_follows_the_sweep(tmp_path):
    """A night opens on the nightly dashboard (its verdict, the trend, and the study views), and
    the cached page changes when the night's verdict, another night's verdict or the set of
    nights changes (the cache used to count attributes, not their values)."""
    url = f"sqlite:///{tmp_path / 'nights.db'}"
    path = nightly_file(tmp_path / "n.toml")
    config = {"optimizer": "adam", "lr": 0.01, "batch_size": 64, "decay": "constant"}
    for back, value in ((2, 0.95), (1, 0.96), (0, 0.955)):
        day = DAY - timedelta(days=back)
        add_night(url, path, day, [(config, value, 1), ({**config, "lr": 0.1}, value - 0.02, 2)])
        _set_verdict(url, f"nt-{day}", _verdict("ok", message=f"fine on {day}"))
    optuna.create_study(study_name="plain", storage=url).add_trial(optuna.trial.create_trial(
        params={"x": 1.0}, distributions={"x": optuna.distributions.FloatDistribution(0, 2)}, value=0.5))
    name = f"nt-{DAY}"
    with Dashboard(url) as dash:
        listing = dash.text("/")
        row = re.search(rf'<tr data-study="{name}">(.*?)</tr>', listing, re.S).group(1)
        assert re.search(r'<td class="verdict"><span[^>]*title="fine on 2026-11-25">ok</span></td>', row)
        assert f'href="/tuner/studies/{name}?dashboard=nightly"' in row
        plain = re.search(r'<tr data-study="plain">(.*?)</tr>', listing, re.S).group(1)
        assert "dashboard=nightly" not in plain and '<td class="verdict"></td>' in plain
        item = next(r for r in json.loads(dash.text("/tuner/api/studies")) if r["name"] == name)
        assert item["dashboard"] == "nightly" and item["night"]["date"] == str(DAY)
        assert item["verdict"]["verdict"] == "ok"

        page = dash.text(f"/tuner/studies/{name}")  # a night opens on the nightly views
        for panel in ("nightly_trend", "nightly_choices", "nightly_verdicts", *STUDY_PANELS):
            assert f'data-panel="{panel}"' in page, panel
        assert f"Nightly verdict for <code>{name}</code>: <strong>OK</strong>" in page
        assert "fine on 2026-11-25" in page and '"name":"regression"' not in page
        assert "nightly views" not in dash.text("/tuner/studies/plain")

        # the night's own verdict changes: the page follows at once
        _set_verdict(url, name, _verdict("regression", "data", "the incumbent lost 0.05"))
        page = dash.text(f"/tuner/studies/{name}")
        assert "<strong>REGRESSION (data)</strong>" in page and "the incumbent lost 0.05" in page
        assert "regression (data)" in dash.text("/")
        # another night's verdict changes: the trend on this night's page shows it
        _set_verdict(url, f"nt-{DAY - timedelta(days=1)}", _verdict("improvement", "search"))
        assert '"name":"improvement"' in dash.text(f"/tuner/studies/{name}")
        # a new night of the sweep appears: it is on the trend
        later = DAY + timedelta(days=1)
        assert str(later) not in dash.text(f"/tuner/studies/{name}")
        add_night(url, path, later, [(config, 0.97, 3)])
        assert str(later) in dash.text(f"/tuner/studies/{name}")
        # unchanged: served from the cache (the same page, byte for byte)
        assert dash.text(f"/tuner/studies/{name}") == dash.text(f"/tuner/studies/{name}")


def wsgi_get(app: Any, path: str) -> tuple[str, str]:
    """``GET path`` on a WSGI ``app`` in this process: (status, body)."""
    seen: dict[str, Any] = {}
    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "GET"},
                        lambda status, headers: seen.update(status=status)))
    return seen["status"], body.decode()


def test_a_multi_objective_study_is_listed_and_its_page_says_why_it_has_no_views(tmp_path):
    """The study list shows a multi-objective study made with Optuna directly; its views page
    (and its report download) explain, with a link to its Pareto front in optuna-dashboard,
    instead of an internal error."""
    from tuner.dashboard.server import TunerViews
    from tuner.storage import open_storage

    url = f"sqlite:///{tmp_path / 'multi.db'}"
    study = optuna.create_study(directions=["maximize", "minimize"], storage=url, study_name="multi")
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=4)
    views = TunerViews(open_storage(url, must_exist=True), url)

    get = functools.partial(wsgi_get, views)

    status, page = get("/")
    assert status == "200 OK" and 'href="/tuner/studies/multi"' in page
    assert "2 objectives (max, min)" in page
    [row] = views.list_json()
    assert row["name"] == "multi" and row["views"] == "/tuner/studies/multi"
    for path in ("/tuner/studies/multi", "/tuner/studies/multi/report.html"):
        status, page = get(path)
        assert status == "200 OK", (path, status, page)
        assert "multi-objective (2 objectives: maximize, minimize" in page
        assert f'href="/dashboard/studies/{study._study_id}"' in page and "Pareto front" in page
    status, page = get("/tuner/studies/nope")
    assert status.startswith("404") and "no study named &#x27;nope&#x27;" in page


def test_a_sweeps_base_name_is_a_404_that_points_to_its_nights(tmp_path):
    """`/tuner/studies/nt` for a nightly sweep `nt` (whose studies are `nt-YYYY-MM-DD`) said
    only "no study named 'nt'"; it now says it is a sweep and links to its latest night (the
    report download to the latest night's report). Other unknown names are unchanged."""
    from tuner.dashboard.server import TunerViews
    from tuner.storage import open_storage

    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    path = nightly_file(tmp_path / "n.toml")
    config = {"optimizer": "adam", "lr": 0.01, "batch_size": 64, "decay": "constant"}
    for back in (2, 1, 0):
        add_night(url, path, DAY - timedelta(days=back), [(config, 0.95, 1)])
    views = TunerViews(open_storage(url, must_exist=True), url)

    get = functools.partial(wsgi_get, views)

    latest = f"nt-{DAY}"
    for path, href in (("/tuner/studies/nt", f"/tuner/studies/{latest}"),
                       ("/tuner/studies/nt/", f"/tuner/studies/{latest}"),
                       ("/tuner/studies/nt/report.html", f"/tuner/studies/{latest}/report.html")):
        status, page = get(path)
        assert status.startswith("404"), (path, status)
        assert "no study named &#x27;nt&#x27;" in page
        assert (f"&#x27;nt&#x27; is a nightly sweep; its nights are the studies nt-YYYY-MM-DD "
                f"(3 nights, latest: {latest}; all of them are in the study list)") in page, page
        assert f'<a href="{href}">its latest night, {latest}</a>' in page
        assert get(href)[0] == "200 OK"
    status, page = get("/tuner/studies/nope")
    assert status.startswith("404") and "no study named &#x27;nope&#x27;" in page
    assert "nightly sweep" not in page and "latest night" not in page
