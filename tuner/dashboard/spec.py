"""Dashboard files: which panels a dashboard shows, in what order, with which options.

A dashboard is a TOML file, ``<name>.toml``, in a dashboards folder::

    title = "{study}: optimizers and schedules"   # {study} is replaced by the study name

    [[panel]]
    type = "learning_curves"   # a registered panel name (see `tuner dashboard --list-panels`)
    top_k = 10                 # panel options
    title = "Top 10"           # optional: replaces the figure's title
    width = "half"             # "full" (default) or "half" of the page width
    height = 520               # pixels on the tuner pages and in reports
    attach = true              # also store it with the study for optuna-dashboard (default)

``include = ["study"]`` (top level) appends the panels of other dashboards, found by name in the
same folders (so a user's own ``study.toml`` is what a ``nightly`` dashboard includes): the
nightly dashboard is its trend views followed by every study view, without repeating them.

Folders are searched in order: the one given with ``--dashboards`` / ``$TUNER_DASHBOARDS``,
then the bundled defaults (``tuner/_dashboards`` in an installed wheel, ``dashboards/`` of a
source checkout). A name can also be a path to a ``.toml`` file.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tuner.errors import TunerError
from tuner.params import literal

ENV_DASHBOARDS = "TUNER_DASHBOARDS"
GENERIC_KEYS = ("type", "title", "width", "height", "attach")
TOP_KEYS = ("title", "description", "include", "panel")
MAX_INCLUDE_DEPTH = 8
WIDTHS = ("full", "half")


class DashboardError(TunerError):
    """A dashboard file is missing or invalid, or names a panel nobody registered."""


@dataclass(frozen=True)
class PanelSpec:
    """One ``[[panel]]`` entry."""

    type: str
    index: int
    options: dict[str, Any] = field(default_factory=dict)
    title: str | None = None
    width: str = "full"
    height: int | None = None
    attach: bool = True
    origin: str | None = None  # the file of an included panel, and its number there
    number: int | None = None

    def where(self, source: str) -> str:
        return f"{self.origin or source}: panel {self.number or self.index + 1} ({self.type!r})"


@dataclass(frozen=True)
class DashboardSpec:
    name: str
    source: str
    panels: tuple[PanelSpec, ...]
    title: str = "{study}"
    description: str = ""
    files: tuple[str, ...] = ()  # this file and every file it includes

    def title_for(self, study_name: str) -> str:
        return self.title.replace("{study}", study_name)


def bundled_dir() -> Path:
    """The dashboards shipped with tuner: ``tuner/_dashboards`` inside an installed wheel
    (hatch ``force-include``), else the ``dashboards/`` folder of the source checkout."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "_dashboards"
    if installed.is_dir():
        return installed
    return package.parent / "dashboards"


def search_path(folder: str | Path | None = None) -> list[Path]:
    """Folders to look for ``<name>.toml`` in: the user's (argument, else ``$TUNER_DASHBOARDS``),
    then the bundled one."""
    user = folder if folder is not None else os.environ.get(ENV_DASHBOARDS) or None
    dirs: list[Path] = []
    if user is not None:
        path = Path(user).expanduser()
        if not path.is_dir():
            raise DashboardError(f"dashboards folder {path} does not exist",
                                 hint=f"create it, or unset --dashboards / ${ENV_DASHBOARDS} to use "
                                      f"the bundled dashboards in {bundled_dir()}")
        dirs.append(path)
    dirs.append(bundled_dir())
    return dirs


def find_dashboard(name: str, folder: str | Path | None = None) -> Path:
    if name.endswith(".toml") or os.sep in name or "/" in name:
        path = Path(name).expanduser()
        if not path.is_file():
            raise DashboardError(f"dashboard file {path} does not exist")
        return path
    dirs = search_path(folder)
    for d in dirs:
        path = d / f"{name}.toml"
        if path.is_file():
            return path
    known = sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.toml")})
    raise DashboardError(f"no dashboard named {name!r} (looked in {', '.join(map(str, dirs))})",
                         hint=f"available: {', '.join(known) or 'none'}")


def available_dashboards(folder: str | Path | None = None) -> dict[str, Path]:
    """Every dashboard name in the search path and the file that wins for it."""
    found: dict[str, Path] = {}
    for d in search_path(folder):
        if d.is_dir():
            for path in sorted(d.glob("*.toml")):
                found.setdefault(path.stem, path)
    return found


def load_dashboard(name: str, folder: str | Path | None = None, *,
                   _including: tuple[str, ...] = ()) -> DashboardSpec:
    """Read and check a dashboard file and the dashboards it includes (panel names are checked
    when it is rendered)."""
    path = find_dashboard(name, folder)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise DashboardError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise DashboardError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_dashboard(raw, name=path.stem, source=str(path), folder=folder,
                           _including=(*_including, str(path.resolve())))


def parse_dashboard(raw: dict[str, Any], *, name: str, source: str = "<memory>",
                    folder: str | Path | None = None,
                    _including: tuple[str, ...] = ()) -> DashboardSpec:
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise DashboardError(f"{source}: unknown key(s) {', '.join(unknown)}",
                             hint="a dashboard file has title, description, include and [[panel]] "
                                  "tables")
    title = raw.get("title", "{study}")
    description = raw.get("description", "")
    for key, value in (("title", title), ("description", description)):
        if not isinstance(value, str):
            raise DashboardError(f"{source}: {key} must be a string, got {literal(value)}")
    include = raw.get("include", [])
    if isinstance(include, str):
        include = [include]
    if not isinstance(include, list) or not all(isinstance(x, str) and x for x in include):
        raise DashboardError(f"{source}: include must be a dashboard name or a list of names, "
                             f"got {literal(include)}", hint='e.g. include = ["study"]')
    entries = raw.get("panel", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise DashboardError(f"{source}: panels are [[panel]] tables (an array of tables)")
    if not entries and not include:
        raise DashboardError(f"{source}: no [[panel]] entries",
                             hint='add at least one, e.g. [[panel]] type = "history"')
    panels = [_panel(e, i, source) for i, e in enumerate(entries)]
    files = [source]
    for other in include:
        try:
            target = str(find_dashboard(other, folder).resolve())
        except DashboardError as exc:
            raise DashboardError(f"{source}: include {other!r}: {exc.message}", hint=exc.hint) from None
        if target in _including or len(_including) >= MAX_INCLUDE_DEPTH:
            raise DashboardError(f"{source}: include {other!r} includes itself "
                                 f"({' -> '.join(Path(f).name for f in (*_including, target))})")
        sub = load_dashboard(other, folder, _including=_including)
        files += sub.files
        for p in sub.panels:
            panels.append(replace(p, index=len(panels), origin=p.origin or sub.source,
                                  number=p.number or p.index + 1))
    return DashboardSpec(name, source, tuple(panels), title, description, tuple(files))


def _panel(entry: dict[str, Any], index: int, source: str) -> PanelSpec:
    where = f"{source}: panel {index + 1}"
    kind = entry.get("type")
    if not isinstance(kind, str) or not kind:
        raise DashboardError(f"{where}: missing type = \"<panel name>\"",
                             hint="see `tuner dashboard --list-panels` for the panel names")
    title = entry.get("title")
    if title is not None and not isinstance(title, str):
        raise DashboardError(f"{where} ({kind!r}): title must be a string, got {literal(title)}")
    width = entry.get("width", "full")
    if width not in WIDTHS:
        raise DashboardError(f"{where} ({kind!r}): width must be one of {', '.join(WIDTHS)}, "
                             f"got {literal(width)}")
    height = entry.get("height")
    if height is not None and (isinstance(height, bool) or not isinstance(height, int)
                               or not 150 <= height <= 3000):
        raise DashboardError(f"{where} ({kind!r}): height must be whole pixels in 150..3000, "
                             f"got {literal(height)}")
    attach = entry.get("attach", True)
    if not isinstance(attach, bool):
        raise DashboardError(f"{where} ({kind!r}): attach must be true or false, got {literal(attach)}")
    options = {k: v for k, v in entry.items() if k not in GENERIC_KEYS}
    return PanelSpec(kind, index, options, title, width, height, attach)
