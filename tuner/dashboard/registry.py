"""The panel registry: panel name -> builder function.

A builder takes a :class:`~tuner.dashboard.context.PanelContext` (``ctx.study``,
``ctx.study_file``, ``ctx.storage``, ``ctx.options``) and returns a plotly ``Figure``, a markdown
string, or ``None`` (nothing to show yet). The built-in panels (:mod:`tuner.dashboard.panels`,
:mod:`tuner.nightly.panels`) are registered on the registry's first use, so what only needs
the package (the runner's hook) does not import plotly; anything else (a user's own) can be added
at any time with :func:`register_panel`, before a dashboard that names it is rendered.
Unknown names in a dashboard file are reported when it is rendered, not when it is loaded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Builder = Callable[[Any], Any]


@dataclass(frozen=True)
class PanelInfo:
    """A registered panel. ``options`` (name -> (type, default)), when given, lists every
    option the panel accepts, so a typo in a dashboard file is an error, not silently ignored."""

    name: str
    builder: Builder
    title: str
    description: str = ""
    options: Mapping[str, tuple[type | tuple[type, ...], Any]] | None = None
    tags: tuple[str, ...] = field(default=())


_PANELS: dict[str, PanelInfo] = {}
_LOCK = threading.Lock()
_BUILTINS = ("tuner.dashboard.panels", "tuner.nightly.panels")
_LOAD_LOCK = threading.RLock()
_builtins_loaded = False
_loading = False


def _load_builtins() -> None:
    """Register the built-in panels once (each module's ``register()``), before any lookup or
    (re-, un-)registration, so a user's panel named like a built-in replaces it whenever it is
    registered. Importing those modules registers nothing, so an import elsewhere never
    waits for this lock while holding its module's import lock. Other threads wait for the
    load; the built-ins' own registrations (same thread, during the load) pass through."""
    global _builtins_loaded, _loading
    if _builtins_loaded:
        return
    with _LOAD_LOCK:
        if _builtins_loaded or _loading:
            return
        _loading = True
        try:
            import importlib

            for module in _BUILTINS:
                importlib.import_module(module).register()
            _builtins_loaded = True
        finally:
            _loading = False


def register_panel(name: str, builder: Builder, *, title: str | None = None, description: str = "",
                   options: Mapping[str, tuple[type | tuple[type, ...], Any]] | None = None,
                   replace: bool = False) -> PanelInfo:
    """Make ``builder`` available to dashboard files as ``type = "<name>"``.

    Registering a name twice is an error unless ``replace=True`` (or it is the same function
    again, so re-importing a module is harmless)."""
    if not name or not all(c.isalnum() or c in "_-." for c in name):
        raise ValueError(f"panel name {name!r}: use letters, digits, '_', '-' or '.'")
    if not callable(builder):
        raise TypeError(f"panel {name!r}: builder must be callable, got {type(builder).__name__}")
    _load_builtins()
    info = PanelInfo(name, builder, title or name.replace("_", " ").capitalize(), description,
                     dict(options) if options is not None else None)
    with _LOCK:
        old = _PANELS.get(name)
        if old is not None and not replace and old.builder is not builder:
            raise ValueError(f"a panel named {name!r} is already registered "
                             f"({old.builder.__module__}.{old.builder.__qualname__}); "
                             "pass replace=True to override it")
        _PANELS[name] = info
    return info


def panel(name: str, **kwargs: Any) -> Callable[[Builder], Builder]:
    """Decorator form of :func:`register_panel`."""

    def wrap(fn: Builder) -> Builder:
        register_panel(name, fn, **kwargs)
        return fn

    return wrap


def unregister_panel(name: str) -> None:
    _load_builtins()
    with _LOCK:
        _PANELS.pop(name, None)


def get_panel(name: str) -> PanelInfo | None:
    _load_builtins()
    with _LOCK:
        return _PANELS.get(name)


def panel_names() -> list[str]:
    _load_builtins()
    with _LOCK:
        return sorted(_PANELS)
