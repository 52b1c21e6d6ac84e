"""The deployment files, proven without a Docker engine.

1. ``docker-compose.yml`` is executed as it is written: each service's command (the image's
   ENTRYPOINT plus the service's ``command``, after compose's variable interpolation) runs as a
   local process with the service's environment, in dependency order, against a fresh local
   PostgreSQL database standing in for the ``postgres`` service: the ``init`` job, two
   ``worker`` replicas (they must finish the study together with the exact trial count), the
   ``dashboard`` (answers over HTTP with the study; its compose healthcheck passes) and the
   ``scheduler`` (up, runs a night, stops cleanly on SIGTERM within its stop grace period). The
   only translations are explicit, the ones Docker itself would do: the image's paths (from the
   Dockerfile's WORKDIR and COPY lines) to the repository's, each container's own ``/tmp`` to a
   folder of its own, the image's ``tuner`` to this interpreter's, the ``postgres`` host name to
   the test server, and the dashboard's published port to a free one. The database password
   must appear in no output and on no command line of any process of the stack (children
   included: ``/proc/PID/cmdline`` is readable by every user).
2. Static checks of the compose file, ``.env.example``, the Dockerfile and ``.dockerignore``.
3. The Kubernetes manifests in ``deploy/k8s/`` parse and use the same image, commands and
   variables as the compose file.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
import yaml
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from conftest import REPO, _pg_admin_url, descendants, free_port, tuner_env

COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
ENV_EXAMPLE = REPO / ".env.example"
K8S = REPO / "deploy" / "k8s"
DEPLOY_DOC = REPO / "docs" / "deploy.md"
SECRET = "Compose-Test-S3cret"      # the local server trusts 127.0.0.1: any password logs in
TUNER_SERVICES = ("init", "worker", "dashboard", "scheduler")
SCALE = {"worker": 2}
# about 4 s of digits trials for one worker: longer than the two workers' start-up skew, so
# both take part (with 12, one finished them all before the other had started, in one CI run)
N_TRIALS = 60
# documented connection budgets per process (docs/deploy.md), checked against measured peaks
BUDGET = {"tuner-init": 3, "tuner-worker": 6, "tuner-dashboard": 6, "tuner-scheduler": 9}


# --- compose: loading and variable interpolation (compose's rules) -------------------------

VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)"
                 r"(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")


class MissingVariable(Exception):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("named")
        op, arg = m.group("op"), m.group("arg") or ""
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op in (":?", "?"):
            if value is None or (op == ":?" and value == ""):
                raise MissingVariable(f"{name}: {arg}")
            return value
        if op == ":+":
            return arg if value else ""
        if op == "+":
            return arg if value is not None else ""
        return value or ""

    return VAR.sub(sub, text)


def interpolate_all(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_all(x, env) for x in node]
    if isinstance(node, dict):
        return {k: interpolate_all(v, env) for k, v in node.items()}
    return node


def strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [s for x in node for s in strings(x)]
    if isinstance(node, dict):
        return [s for x in node.values() for s in strings(x)]
    return []


def references(node: Any) -> list[re.Match]:
    """Every ${VAR} / $VAR reference in the values of ``node`` (comments are not values)."""
    return [m for s in strings(node) for m in VAR.finditer(s) if not m.group("escaped")]


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())  # YAML anchors and << merges resolved


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            values[key.strip()] = value.strip()
    return values


def example_values(**overrides: str) -> dict[str, str]:
    """.env.example's values, with the password a user must set (it is empty there)."""
    return {**read_env_file(ENV_EXAMPLE), "POSTGRES_PASSWORD": "set-by-the-user", **overrides}


def duration_s(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(text))
    assert parts and "".join(a + u for a, u in parts) == str(text), f"not a compose duration: {text!r}"
    return sum(float(a) * units[u] for a, u in parts)


# --- Dockerfile: the final image's layout --------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Stage]:
    logical, current = [], ""
    for raw in path.read_text().splitlines():
        if raw.strip().startswith("#"):
            continue  # comments (also inside continued instructions)
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip():
            logical.append(current.strip())
        current = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), ""), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        else:
            stages[-1].instructions.append((keyword, rest))
    return stages


@dataclass
class ImageLayout:
    """The final stage's files and settings, and how they map onto this checkout."""

    workdir: str
    copies: dict[str, Path]          # absolute path in the image -> repository path
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    user: str

    def materialize(self, root: Path) -> Path:
        """A folder that stands for the image's file system: each COPY destination is a link to
        the repository path it was copied from."""
        for dest, src in self.copies.items():
            target = root / dest.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(src, target_is_directory=src.is_dir())
        (root / self.workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        return root

    def local_path(self, value: str, root: Path) -> str:
        """An absolute image path under a COPY destination or the WORKDIR, seen from ``root``."""
        for prefix in [*self.copies, self.workdir]:
            if value == prefix or value.startswith(prefix.rstrip("/") + "/"):
                return str(root / value.lstrip("/"))
        return value


def image_layout() -> ImageLayout:
    final = parse_dockerfile()[-1]
    workdir = final.all("WORKDIR")[-1]
    copies: dict[str, Path] = {}
    for rest in final.all("COPY"):
        words = shlex.split(rest)
        if any(w.startswith("--from") for w in words):
            continue  # from the builder stage: the interpreter (mapped to this one)
        *sources, dest = [w for w in words if not w.startswith("--")]
        for src in sources:
            dest_abs = dest if dest.startswith("/") else f"{workdir}/{dest}"
            copies[dest_abs.rstrip("/")] = REPO / src.rstrip("/")
    env: dict[str, str] = {}
    for rest in final.all("ENV"):
        for token in shlex.split(rest):
            key, _, value = token.partition("=")
            env[key] = value
    return ImageLayout(workdir, copies, env, json.loads(final.all("ENTRYPOINT")[-1]),
                       json.loads(final.all("CMD")[-1]), final.all("USER")[-1])


def local_tuner(layout: ImageLayout) -> list[str]:
    """The image's ENTRYPOINT ``tuner`` is the console script of this project, installed in
    /opt/venv (on PATH): here, this interpreter's ``python -m tuner``."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert layout.entrypoint == ["tuner"] and scripts["tuner"] == "tuner.cli:main"
    assert layout.env["PATH"].startswith("/opt/venv/bin:")
    return [sys.executable, "-m", "tuner"]


# --- running the services -------------------------------------------------------------------


@dataclass
class Proc:
    service: str
    popen: subprocess.Popen
    out: Path
    err: Path

    def text(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")


class Stack:
    """Starts compose services as local processes and cleans them up."""

    def __init__(self, compose: dict[str, Any], layout: ImageLayout, root: Path, logs: Path,
                 storage_host: tuple[str, int], port_maps: dict[str, dict[int, int]]) -> None:
        self.compose, self.layout, self.root, self.logs = compose, layout, root, logs
        self.storage_host, self.port_maps = storage_host, port_maps
        self.procs: list[Proc] = []

    def env(self, service: str) -> dict[str, str]:
        env = tuner_env()
        for key, value in self.layout.env.items():
            if key not in ("PATH", "VIRTUAL_ENV"):  # the interpreter: mapped to this one
                env[key] = self.layout.local_path(value, self.root)
        for key, value in self.compose["services"][service].get("environment", {}).items():
            env[key] = self.translate_url(str(value))
        return env

    def translate_url(self, value: str) -> str:
        """``postgres`` (the compose service) is the local test server."""
        if "://" not in value:
            return value
        url = make_url(value)
        if url.host not in self.compose["services"]:
            return value
        assert url.host == "postgres" and url.port == 5432, value
        host, port = self.storage_host
        return url.set(host=host, port=port).render_as_string(hide_password=False)

    def command(self, service: str) -> list[str]:
        spec = self.compose["services"][service]
        args = [self.translate_port(service, a) for a in spec.get("command", self.layout.cmd)]
        return local_tuner(self.layout) + [self.translate_tmp(service, self.layout.local_path(a, self.root))
                                           for a in args]

    def translate_tmp(self, service: str, text: str) -> str:
        """Each container has a /tmp of its own (a service's heartbeat file is its own)."""
        if "/tmp/" not in text:
            return text
        own = self.root / f"tmp-{service}"
        own.mkdir(exist_ok=True)
        return text.replace("/tmp/", f"{own}/")

    def translate_port(self, service: str, arg: str) -> str:
        """A service's published container port is served on its host port here, on the host
        address it is published on (there is no container network)."""
        for container, host in self.port_maps.get(service, {}).items():
            arg = re.sub(rf"(?<=127\.0\.0\.1:){container}\b", str(host), arg)
            if arg == str(container):
                arg = str(host)
            if arg == "0.0.0.0":
                arg = "127.0.0.1"
        return arg

    def start(self, service: str, index: int = 1) -> Proc:
        out = self.logs / f"{service}-{index}.out"
        err = self.logs / f"{service}-{index}.err"
        popen = subprocess.Popen(self.command(service), env=self.env(service),
                                 cwd=self.root / self.layout.workdir.lstrip("/"),
                                 stdout=out.open("w"), stderr=err.open("w"), start_new_session=True)
        proc = Proc(service, popen, out, err)
        self.procs.append(proc)
        return proc

    def healthcheck(self, service: str, timeout: float) -> None:
        """Run the service's compose healthcheck command until it passes."""
        test = self.compose["services"][service]["healthcheck"]["test"]
        kind, *argv = test
        if kind == "CMD-SHELL":
            argv = ["sh", "-c", argv[0]]
        else:
            assert kind == "CMD", test
        argv = [sys.executable if a == "python" else
                self.translate_tmp(service, self.translate_port(service, a)) for a in argv]
        deadline = time.monotonic() + timeout
        while True:
            proc = subprocess.run(argv, env=self.env(service), capture_output=True, text=True, timeout=30)
            if proc.returncode == 0:
                return
            assert time.monotonic() < deadline, f"{service} healthcheck failing: {proc.stderr[-2000:]}"
            time.sleep(0.5)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.terminate()
        for proc in self.procs:
            try:
                proc.popen.wait(30)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(10)


def dependency_order(services: dict[str, Any]) -> list[str]:
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...] = ()) -> None:
        assert name not in path, f"dependency cycle {path}"
        if name in order:
            return
        for dep in services[name].get("depends_on", {}):
            visit(dep, (*path, name))
        order.append(name)

    for name in services:
        visit(name)
    return order


class ConnectionPeaks:
    """Peak number of server connections per application_name (PGAPPNAME) on one database."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._engine = sqlalchemy.create_engine(_pg_admin_url(), poolclass=sqlalchemy.pool.NullPool)
        self._thread.start()

    def _poll(self) -> None:
        query = sqlalchemy.text("SELECT application_name, count(*) FROM pg_stat_activity "
                                "WHERE datname = :d GROUP BY 1")
        with self._engine.connect() as conn:
            while not self._stop.wait(0.01):
                for app, n in conn.execute(query, {"d": self.database}).all():
                    self.peaks[app] = max(self.peaks.get(app, 0), n)
                conn.rollback()

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join(10)
        self._engine.dispose()
        return self.peaks


class CommandLines:
    """Every command line of the processes below ``roots`` (children and grandchildren, e.g. a
    scheduler's `tuner nightly` and its training processes), sampled from /proc while the stack
    runs."""

    def __init__(self) -> None:
        self.roots: list[int] = []
        self.seen: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            self.sample()

    def sample(self) -> None:
        for pid in descendants(*self.roots):
            if pid not in self.seen:
                try:
                    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    raw = b""
                if raw:
                    self.seen[pid] = raw.replace(b"\0", b" ").decode(errors="replace")

    def stop(self) -> dict[int, str]:
        self._stop.set()
        self._thread.join(10)
        return self.seen


def past_night(url: str, study_file: Path, days_ago: int = 2) -> str:
    """An earlier night of the study file's sweep (as if the stack ran it, then was down), so
    the scheduler has a night to catch up on start (a sweep that never ran has missed none)."""
    from datetime import date, timedelta

    from tuner.nightly.nights import ATTR_NIGHT, ATTR_VERDICT, night_name

    base = tomllib.loads(study_file.read_text())["study"]["name"]
    day = date.today() - timedelta(days=days_ago)
    name = night_name(base, day)
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    study.set_user_attr(ATTR_NIGHT, {"base": base, "date": day.isoformat()})
    study.set_user_attr(ATTR_VERDICT, {"verdict": "ok"})
    return name


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        assert response.status == 200
        return json.loads(response.read())


def trials_by_state(url: str) -> dict[str, dict[str, int]]:
    storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True, skip_table_creation=True)
    try:
        result = {}
        for summary in storage.get_all_studies():
            states: dict[str, int] = {}
            for t in storage.get_all_trials(summary._study_id, deepcopy=False):
                states[t.state.name] = states.get(t.state.name, 0) + 1
            result[summary.study_name] = states
        return result
    finally:
        storage.engine.dispose()


# --- 1. the compose file, run without Docker ------------------------------------------------


@pytest.mark.postgres
def test_compose_services_run_as_declared_without_docker(pg_url: str, tmp_path: Path):
    pg = make_url(pg_url)
    password = pg.password or SECRET
    dashboard_port = free_port()
    values = example_values(POSTGRES_USER=pg.username or "postgres", POSTGRES_DB=pg.database,
                            POSTGRES_PASSWORD=password, TUNER_N_TRIALS=str(N_TRIALS),
                            DASHBOARD_PORT=str(dashboard_port))
    compose = interpolate_all(load_compose(), values)
    services = compose["services"]
    layout = image_layout()
    root = layout.materialize(tmp_path / "image")
    logs = tmp_path / "logs"
    logs.mkdir()
    # the published port "127.0.0.1:HOST:CONTAINER" of the dashboard
    host_ip, host_port, container_port = services["dashboard"]["ports"][0].split(":")
    assert host_ip == "127.0.0.1" and host_port == str(dashboard_port)
    stack = Stack(compose, layout, root, logs, (pg.host or "127.0.0.1", pg.port or 5432),
                  {"dashboard": {int(container_port): dashboard_port}})
    peaks = ConnectionPeaks(pg.database)
    cmdlines = CommandLines()
    order = dependency_order(services)
    assert order.index("postgres") < order.index("init") < min(order.index(s) for s in
                                                                ("worker", "dashboard", "scheduler"))
    started: dict[str, list[Proc]] = {}
    completed: set[str] = set()
    healthy: set[str] = set()
    try:
        for name in order:
            spec = services[name]
            for dep, rule in spec.get("depends_on", {}).items():
                wanted = {"service_healthy": healthy, "service_completed_successfully": completed}
                assert dep in wanted[rule["condition"]], f"{name} needs {dep} {rule['condition']}"
            if name == "postgres":
                # the official image stands for the local server; its healthcheck runs against it
                assert spec["image"].startswith("postgres:")
                if shutil.which("pg_isready") and pg.host in ("127.0.0.1", "localhost"):
                    env = {**os.environ, **spec["environment"], "PGPORT": str(pg.port or 5432)}
                    check = subprocess.run(["sh", "-c", spec["healthcheck"]["test"][1]], env=env,
                                           capture_output=True, text=True, timeout=30)
                    assert check.returncode == 0, check.stdout + check.stderr
                healthy.add(name)
                continue
            one_shot = any(s.get("depends_on", {}).get(name, {}).get("condition")
                           == "service_completed_successfully" for s in services.values())
            if one_shot:
                proc = stack.start(name)
                cmdlines.roots.append(proc.popen.pid)
                code = proc.popen.wait(timeout=120)
                assert code == 0, f"{name} exited {code}:\n{proc.text()}"
                completed.add(name)
                started[name] = [proc]
                continue
            if name == "scheduler":  # the stack ran an earlier night, then was down
                scheduled = [p for p in (root / "app" / spec["command"][1]).glob("*.toml")
                             if "schedule" in tomllib.loads(p.read_text())]
                past_night(pg_url, scheduled[0])
            started[name] = [stack.start(name, i + 1) for i in range(SCALE.get(name, 1))]
            cmdlines.roots += [p.popen.pid for p in started[name]]
            if "healthcheck" in spec:
                stack.healthcheck(name, timeout=90)
                healthy.add(name)

        # init: the schema exists and the masked URL was printed
        init_text = started["init"][0].text()
        assert "created the Optuna tables" in init_text
        assert f"postgresql+psycopg://{pg.username}:***@{pg.host}:{pg.port}/{pg.database}" in init_text

        # worker x2: both exit 0 once the study has exactly N_TRIALS finished trials
        workers = started["worker"]
        for proc in workers:
            code = proc.popen.wait(timeout=300)
            assert code == 0, f"worker exited {code}:\n{proc.text()}"
        study_file = tomllib.loads((root / "app" / values["TUNER_STUDY_FILE"]).read_text())
        name = study_file["study"]["name"]
        study = optuna.load_study(study_name=name, storage=pg_url)
        trials = study.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(finished) == N_TRIALS, [t.state for t in trials]
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.FAIL)]
        runners = {t.user_attrs["runner"].rsplit(":", 1)[1] for t in finished}
        assert runners == {str(p.popen.pid) for p in workers}, "both workers contributed trials"
        for proc in workers:
            assert f"study '{name}' reached its target of {N_TRIALS} trials" in proc.text()
        # a replica started after the study is done (a late Job pod, a restart) exits 0 at once
        late = stack.start("worker", len(workers) + 1)
        started["late worker"] = [late]
        assert late.popen.wait(timeout=120) == 0, late.text()
        assert len(optuna.load_study(study_name=name, storage=pg_url).get_trials(deepcopy=False)) \
            == len(trials)

        # dashboard: answers on the published port with the study
        base = f"http://127.0.0.1:{dashboard_port}"
        summaries = http_json(f"{base}/api/studies")["study_summaries"]
        assert name in [s["study_name"] for s in summaries]
        rows = {row["name"]: row for row in http_json(f"{base}/tuner/api/studies")}
        counts = rows[name]["counts"]
        assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == N_TRIALS
        assert rows[name]["best_value"] == pytest.approx(study.best_value)
        with urllib.request.urlopen(f"{base}/", timeout=60) as response:
            assert name in response.read().decode()

        # scheduler: up (healthy: its heartbeat), catches up tonight's missed night on start
        scheduler = started["scheduler"][0]
        deadline = time.monotonic() + 120
        while len([s for s in trials_by_state(pg_url) if s.startswith("nightly-digits-")]) < 2 or \
                not [c for c in cmdlines.seen.values() if " nightly " in c]:
            assert scheduler.popen.poll() is None, f"scheduler exited:\n{scheduler.text()}"
            assert time.monotonic() < deadline, f"no night started:\n{scheduler.text()}"
            time.sleep(0.5)
        time.sleep(3)
        assert scheduler.popen.poll() is None, scheduler.text()
        assert "was missed" in scheduler.text() and "catching it up now" in scheduler.text()

        # SIGTERM (docker stop): each service exits cleanly within its stop_grace_period
        for service in ("scheduler", "dashboard"):
            proc = started[service][0]
            grace = duration_s(services[service]["stop_grace_period"])
            began = time.monotonic()
            proc.popen.send_signal(signal.SIGTERM)
            code = proc.popen.wait(timeout=grace + 30)
            assert time.monotonic() - began < grace, f"{service} took longer than {grace} s"
            assert code == 0, f"{service} exited {code} after SIGTERM:\n{proc.text()}"
        states = trials_by_state(pg_url)
        assert not [(s, c) for s, c in states.items() if c.get("RUNNING")], states  # nothing RUNNING
        assert "Traceback" not in "".join(p.text() for procs in started.values() for p in procs)
    finally:
        stack.stop_all()
        measured = peaks.stop()
        seen = cmdlines.stop()

    # nothing printed the password, and no process of the stack had it on its command line
    for procs in started.values():
        for proc in procs:
            assert password not in proc.text(), f"{proc.service} printed the database password"
    assert [c for c in seen.values() if " nightly " in c], "the scheduler's night was sampled"
    assert [c for c in seen.values() if "multiprocessing" in c], "training processes were sampled"
    leaks = {pid: c for pid, c in seen.items() if password in c}
    assert not leaks, f"the database password is on a command line: {leaks}"
    # database connections stay within the documented budget per process (docs/deploy.md)
    for app, budget in BUDGET.items():
        replicas = SCALE.get(app.removeprefix("tuner-"), 1)
        assert measured.get(app, 0) <= budget * replicas, (app, measured)
    assert measured.get("tuner-worker", 0) >= 2  # the measurement saw the workers


# --- 2. static checks -----------------------------------------------------------------------


def test_every_compose_variable_is_documented_in_env_example():
    compose = load_compose()
    documented = read_env_file(ENV_EXAMPLE)
    used = {m.group("braced") or m.group("named") for m in references(compose)}
    assert used - set(documented) == set(), "undocumented in .env.example"
    assert set(documented) - used == set(), ".env.example lists variables compose does not use"
    # the defaults written in compose are the values .env.example shows
    for m in references(compose):
        if m.group("op") == ":-":
            assert documented[m.group("braced")] == m.group("arg"), m.group(0)
    # required: only the secret, with a message that says where to set it
    required = {m.group("braced") for m in references(compose) if m.group("op") in (":?", "?")}
    assert required == {"POSTGRES_PASSWORD"}
    with pytest.raises(MissingVariable, match="set POSTGRES_PASSWORD in .env"):
        interpolate_all(compose, {k: v for k, v in documented.items() if k != "POSTGRES_PASSWORD"})


def test_every_service_command_is_a_valid_tuner_invocation():
    compose = interpolate_all(load_compose(), example_values())
    layout = image_layout()
    for name in TUNER_SERVICES:
        spec = compose["services"][name]
        assert spec["image"] == "tuner:latest" and spec["build"] == "."
        command = spec["command"]
        assert isinstance(command, list) and all(isinstance(a, str) for a in command), name
        help_text = subprocess.run(local_tuner(layout) + [command[0], "--help"], env=tuner_env(),
                                   capture_output=True, text=True, timeout=60)
        assert help_text.returncode == 0, (name, help_text.stderr)
        for option in (a for a in command if a.startswith("--")):
            assert re.search(rf"{re.escape(option)}\b", help_text.stdout), (name, option)
    # the study files the commands name exist in the image and are valid
    worker = compose["services"]["worker"]["command"]
    check = subprocess.run(local_tuner(layout) + ["check", worker[1], "--no-data", "--samples", "1"],
                           cwd=REPO, env=tuner_env(), capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert any(str(REPO / worker[1]).startswith(str(src)) for src in layout.copies.values())
    scheduled = [p for p in (REPO / compose["services"]["scheduler"]["command"][1]).glob("*.toml")
                 if "schedule" in tomllib.loads(p.read_text())]
    assert [p.name for p in scheduled] == ["nightly-digits.toml"]


def test_compose_healthchecks_dependencies_and_restarts():
    compose = interpolate_all(load_compose(), example_values())
    services = compose["services"]
    assert set(services) == {"postgres", *TUNER_SERVICES}
    pg = services["postgres"]
    assert re.fullmatch(r"postgres:\d+", pg["image"]), "the official image"
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert "ports" not in pg, "the database is not published"
    volume, mount = pg["volumes"][0].split(":")[:2]
    assert mount == "/var/lib/postgresql/data" and volume in compose["volumes"], "a named volume"
    for name in TUNER_SERVICES:
        deps = services[name]["depends_on"]
        assert deps["postgres"] == {"condition": "service_healthy"}, name
        if name != "init":
            assert deps["init"] == {"condition": "service_completed_successfully"}, name
    assert services["init"]["restart"] == "no"
    worker = services["worker"]
    assert worker["restart"] == "on-failure:5", "restarted, but not forever (exit 2 repeats)"
    assert "container_name" not in worker and "ports" not in worker, "scalable with --scale"
    assert duration_s(worker["stop_grace_period"]) >= 30
    dashboard = services["dashboard"]
    assert "healthcheck" in dashboard and "/tuner/health" in " ".join(dashboard["healthcheck"]["test"])
    assert all(p.startswith("127.0.0.1:") for p in dashboard["ports"]), "published on localhost only"
    from tuner.nightly.scheduler import STOP_TIMEOUT_S

    assert duration_s(services["scheduler"]["stop_grace_period"]) > STOP_TIMEOUT_S
    for name in ("worker", "scheduler", "dashboard"):
        assert services[name]["restart"].split(":")[0] in ("on-failure", "unless-stopped",
                                                           "always"), name
    # services whose PID 1 spawns processes run under an init that reaps them and forwards signals
    for name in ("worker", "scheduler"):
        assert services[name].get("init") is True, name
    scheduler = services["scheduler"]
    heartbeat = scheduler["command"][scheduler["command"].index("--heartbeat") + 1]
    assert heartbeat in " ".join(scheduler["healthcheck"]["test"]), "the healthcheck reads the heartbeat"


PASSWORDISH = re.compile(r"pass(word)?|secret|token|api[_-]?key|credential", re.IGNORECASE)
ONLY_REFERENCE = re.compile(r"^\$\{[A-Za-z_]\w*(:?[-?][^}]*)?\}$")


def _no_secret_literals(node: Any, where: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str) and PASSWORDISH.search(str(key)):
                assert ONLY_REFERENCE.match(value), f"{where}.{key} is a literal: use ${{VAR}}"
            _no_secret_literals(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _no_secret_literals(value, f"{where}[{i}]")
    elif isinstance(node, str):
        for m in re.finditer(r"://[^/:@\s]+:([^@\s]+)@", node):
            assert ONLY_REFERENCE.match(m.group(1)), f"{where}: password literal in a URL"


def test_no_secret_literals_anywhere():
    compose = load_compose()
    _no_secret_literals(compose, "docker-compose.yml")
    example = read_env_file(ENV_EXAMPLE)
    assert example["POSTGRES_PASSWORD"] == "", ".env.example leaves the password to the user"
    # copied as is, it stops compose instead of running with a password everyone knows
    with pytest.raises(MissingVariable, match="set POSTGRES_PASSWORD in .env"):
        interpolate_all(compose, example)
    assert ".env" in (REPO / ".gitignore").read_text().split()
    assert ".env" in DOCKERIGNORE.read_text().split(), "the build context never holds .env"
    for path in K8S.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] == "Secret":
                assert path.name == "secret.example.yaml"
                url = make_url(doc["stringData"]["url"])
                assert url.password == "CHANGE-ME" and url.host.endswith(".example.internal")
                continue
            for s in strings(doc):
                assert not re.search(r"://[^/:@\s]+:[^@\s]+@", s), f"{path.name}: credentials in {s!r}"


def test_dockerfile_is_multi_stage_slim_non_root_without_build_tools():
    stages = parse_dockerfile()
    assert len(stages) >= 2, "multi-stage"
    builder, final = stages[0], stages[-1]
    for stage in stages:
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", stage.base), stage.base
    # dependencies come from the project's own pyproject.toml, built into wheels in the builder
    builder_runs = " ".join(builder.all("RUN"))
    assert "pyproject.toml" in builder_runs and "pip wheel" in builder_runs
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    copied = " ".join(builder.all("COPY"))
    bundled = meta["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    for needed in ("pyproject.toml", meta["project"]["readme"], "tuner/", *(f"{s}/" for s in bundled)):
        assert needed in copied, f"the builder needs {needed} to build the wheel"
    # the final stage: no compilers or build tools, a non-root user, TZ=UTC, tuner as entrypoint
    final_runs = " ".join(final.all("RUN")).lower()
    for tool in ("build-essential", "gcc", "g++", "clang", "make ", "-dev", "cmake", "rustc", "cargo"):
        assert tool not in final_runs, f"{tool} in the final stage"
    assert all(not rest.startswith("--from") or "/opt/venv" in rest for rest in final.all("COPY"))
    layout = image_layout()
    assert layout.user.split(":")[0] not in ("root", "0", ""), "non-root"
    assert layout.env["TZ"] == "UTC"
    assert layout.entrypoint == ["tuner"]
    assert {"/app/studies", "/app/dashboards"} <= set(layout.copies)
    assert layout.workdir == "/app"
    assert layout.env["TUNER_DASHBOARDS"] in layout.copies, "the copied dashboards are the ones served"


def test_dockerignore_keeps_what_the_build_needs():
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines()
                if p.strip() and not p.startswith("#") and not p.startswith("!")]
    needed = {"pyproject.toml", "README.md", "tuner", "dashboards", "studies"}
    for stage in parse_dockerfile():
        for rest in stage.all("COPY"):
            words = [w for w in shlex.split(rest) if not w.startswith("--")]
            if not rest.startswith("--from"):
                needed |= {w.rstrip("/").split("/")[0] for w in words[:-1]}
    for name in needed:
        assert (REPO / name).exists(), name
        assert not any(fnmatch.fnmatch(name, p.rstrip("/")) for p in patterns), f"{name} is ignored"
    for must_ignore in (".env", ".git", ".venv", "*.db"):
        assert must_ignore in patterns


# --- 3. Kubernetes manifests -----------------------------------------------------------------


def k8s_docs() -> dict[str, list[dict[str, Any]]]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        docs[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        for doc in docs[path.name]:
            assert doc.get("apiVersion") and doc.get("kind"), path.name
            assert doc["kind"] == "Kustomization" or doc["metadata"]["name"], path.name
    return docs


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def k8s_form(command: list[str]) -> list[str]:
    """A compose command in Kubernetes' syntax: ${VAR:-default} becomes $(VAR)."""
    return [VAR.sub(lambda m: f"$({m.group('braced') or m.group('named')})", a) for a in command]


def test_k8s_manifests_parse_and_match_the_compose_file():
    docs = k8s_docs()
    kustomization = docs.pop("kustomization.yaml")[0]
    assert sorted(kustomization["resources"]) == sorted(n for n in docs if n != "secret.example.yaml")
    compose = load_compose()
    compose_image = interpolate(compose["x-tuner"]["image"], example_values())
    image = kustomization["images"][0]
    assert f"{image['newName']}:{image['newTag']}" == compose_image
    config = next(d for d in docs["configmap.yaml"] if d["kind"] == "ConfigMap")
    documented = read_env_file(ENV_EXAMPLE)
    assert set(config["data"]) - {"TZ"} <= set(documented), "the same variables as compose"
    for key, value in config["data"].items():  # ... and the same defaults
        assert key == "TZ" or value == documented[key], (key, value, documented[key])
    assert config["data"]["TZ"] == "UTC"
    by_component = {"init-job.yaml": "init", "worker-job.yaml": "worker", "dashboard.yaml": "dashboard"}
    containers = {}
    for name, manifests in docs.items():
        for doc in manifests:
            if doc["kind"] in ("Job", "CronJob", "Deployment"):
                spec = pod_spec(doc)
                assert spec["securityContext"]["runAsNonRoot"] is True
                for c in spec["containers"]:
                    assert c["image"] == image["name"], f"{name}: the kustomize image name"
                    env = {e["name"]: e for e in c.get("env", [])}
                    secret = env["TUNER_STORAGE"]["valueFrom"]["secretKeyRef"]
                    assert secret == {"name": "tuner-db", "key": "url"}, name
                    assert c["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
                    for ref in re.findall(r"\$\((\w+)\)", " ".join(c["args"])):
                        assert ref in env or ref in config["data"], f"{name}: $({ref}) is not defined"
                    containers[name] = (doc, c)
    for manifest, service in by_component.items():
        _, container = containers[manifest]
        spec = compose["services"][service]
        assert container["args"] == k8s_form(spec["command"]), f"{manifest} must run compose's {service}"
        pg_app = {e["name"]: e.get("value") for e in container["env"]}["PGAPPNAME"]
        assert pg_app == spec["environment"]["PGAPPNAME"]
    # the worker Job: N parallel pods, restarts per podFailurePolicy, time for SIGTERM cleanup
    job, _ = containers["worker-job.yaml"]
    assert job["spec"]["parallelism"] >= 2 and job["spec"]["completions"] == job["spec"]["parallelism"]
    assert pod_spec(job)["restartPolicy"] == "Never" and job["spec"]["podFailurePolicy"]["rules"]
    assert pod_spec(job)["terminationGracePeriodSeconds"] >= duration_s(
        compose["services"]["worker"]["stop_grace_period"])
    # the init Job: an upgrade-needed schema (exit 4) is not retried
    init_job, _ = containers["init-job.yaml"]
    fail = [r for r in init_job["spec"]["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert fail[0]["onExitCodes"]["values"] == [4]
    # the CronJob: tuner nightly on the study file's own schedule; 4 and 75 are not retried
    cron, container = containers["nightly-cronjob.yaml"]
    study_file = REPO / container["args"][1]
    schedule = tomllib.loads(study_file.read_text())["schedule"]
    assert cron["spec"]["schedule"] == schedule["cron"] and cron["spec"]["timeZone"] == schedule["timezone"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    rules = cron["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    no_retry = {code for r in rules if r["action"] == "FailJob" for code in r["onExitCodes"]["values"]}
    assert {4, 75} <= no_retry
    nightly_help = subprocess.run(local_tuner(image_layout()) + ["nightly", "--help"], env=tuner_env(),
                                  capture_output=True, text=True, timeout=60)
    assert "4 regression" in " ".join(nightly_help.stdout.split()) and "75" in nightly_help.stdout
    for option in (a for a in container["args"] if a.startswith("--")):
        assert option in nightly_help.stdout
    # the dashboard: same port as compose's container port, probes on /tuner/health, ClusterIP
    deployment, container = containers["dashboard.yaml"]
    container_port = int(compose["services"]["dashboard"]["ports"][0].rsplit(":", 1)[1])
    assert container["ports"][0]["containerPort"] == container_port
    assert container["readinessProbe"]["httpGet"]["path"] == "/tuner/health"  # SELECT 1
    assert container["livenessProbe"]["httpGet"]["path"] == "/tuner/live"  # no restarts for a DB outage
    service = next(d for d in docs["dashboard.yaml"] if d["kind"] == "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_kustomize_renders_the_manifests_with_the_compose_image():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (kubectl kustomize renders offline)")
    proc = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rendered = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert {d["kind"] for d in rendered} == {"ConfigMap", "Job", "CronJob", "Deployment", "Service"}
    images = {c["image"] for d in rendered if d["kind"] in ("Job", "CronJob", "Deployment")
              for c in pod_spec(d)["containers"]}
    assert images == {interpolate(load_compose()["x-tuner"]["image"], example_values())}


# --- docs -----------------------------------------------------------------------------------


def test_deploy_doc_pool_figures_match_the_code():
    """docs/deploy.md computes max_connections from the pool settings: keep them in sync."""
    from tuner.storage import open_storage

    pool_size = inspect.signature(open_storage).parameters["pool_size"].default
    source = inspect.getsource(open_storage)
    max_overflow = int(re.search(r'"max_overflow":\s*(\d+)', source).group(1))
    text = " ".join(DEPLOY_DOC.read_text().split())
    per_runner = pool_size + max_overflow + 1
    assert f"pool_size {pool_size} + max_overflow {max_overflow} + 1 = {per_runner}" in text
    assert BUDGET["tuner-worker"] == per_runner
    for needed in ("docker compose up", "--scale worker=", "pg_dump", "pg_restore",
                   "optuna storage upgrade", "max_connections", "gRPC", "deploy/k8s/"):
        assert needed in text, needed
