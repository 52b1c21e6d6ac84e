"""The panel registry: panel name -> builder function.

A builder takes a :class:`~tuner.dashboard.context.PanelContext` (``ctx.study``,
``ctx.study_file``, ``ctx.storage``, ``ctx.options``) and returns a plotly ``Figure``, a markdown
string, or ``None`` (nothing to show yet). The built-in panels (:mod:`tuner.dashboard.panels`,
:mod:`tuner.nightly.panels`) are registered on the registry's first use, so what only needs
the package (the runner's hook) does not import plotly; anything else (a user's own) can be added
at any time with :func:`register_panel`, before a dashboard that names it is rendered.
Unknown names in a dashboard file are reported when it is rendered, not when it is loaded.

A panel declares its options as ``name -> (type, default)`` or ``(type, default, Allowed(...))``:
:func:`tuner.dashboard.render.check_panels` rejects an unknown option, a value of the wrong type
and a value :class:`Allowed` does not allow, each naming the file, the panel and the choices.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tuner.errors import closest

Builder = Callable[[Any], Any]
Kind = type | tuple[type, ...]


@dataclass(frozen=True)
class Allowed:
    """The values a panel option may take beyond its type, declared as the third element of
    the option (``{"top_k": (int, 10, Allowed(low=1))}``): a number from ``low`` to ``high``
    (either may be left open); or, with ``names``, a string option is one of them and a list
    option is a list of distinct names among them with at least ``min_items`` items. ``note``
    says what a special value means (``"0: every night"``)."""

    low: float | None = None
    high: float | None = None
    names: tuple[str, ...] | None = None
    min_items: int = 0
    note: str = ""

    def describe(self, kind: Kind) -> str:
        """What is allowed, as the error messages say it: ``an integer >= 1``,
        ``one of auto, linear, log``, ``a non-empty list of distinct names among ...``."""
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if self.names is not None:
            among = ", ".join(self.names)
            if list in kinds:
                size = {0: "a list", 1: "a non-empty list"}.get(
                    self.min_items, f"a list of at least {self.min_items}")
                text = f"{size} of distinct names among {among}"
            else:
                text = f"one of {among}"
        else:
            noun = "an integer" if int in kinds and float not in kinds else "a number"
            if self.low is not None and self.high is not None:
                text = f"{noun} in {self.low:g}..{self.high:g}"
            elif self.low is not None:
                text = f"{noun} >= {self.low:g}"
            elif self.high is not None:
                text = f"{noun} <= {self.high:g}"
            else:
                text = noun
        return f"{text} ({self.note})" if self.note else text

    def problem(self, value: Any) -> str | None:
        """``None`` when ``value`` (of the option's type) is allowed, else what is wrong with
        it beyond :meth:`describe` (``""`` when the description says it all)."""
        if self.names is not None:
            if isinstance(value, list):
                if len(value) < self.min_items:
                    return "it is empty" if not value else f"it has {len(value)}"
                for item in value:
                    if item not in self.names:
                        return f"{item!r} is not among them{self._guess(item)}"
                repeated = sorted({item for item in value if value.count(item) > 1})
                if repeated:
                    return f"{repeated[0]!r} appears more than once"
                return None
            return None if value in self.names else self._guess(value).strip(" ()")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                return ""
        return None

    def _guess(self, value: Any) -> str:
        close = closest(str(value), self.names or ())
        return f" (did you mean {close!r}?)" if close else ""


OptionSpec = tuple[Kind, Any] | tuple[Kind, Any, Allowed]


@dataclass(frozen=True)
class PanelInfo:
    """A registered panel. ``options`` (name -> ``(type, default)`` or ``(type, default,
    Allowed(...))``), when given, lists every option the panel accepts, so a typo or a value
    out of range in a dashboard file is an error, not silently ignored."""

    name: str
    builder: Builder
    title: str
    description: str = ""
    options: Mapping[str, OptionSpec] | None = None
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
                   options: Mapping[str, OptionSpec] | None = None,
                   replace: bool = False) -> PanelInfo:
    """Make ``builder`` available to dashboard files as ``type = "<name>"``.

    ``options``: name -> ``(type, default)`` or ``(type, default, Allowed(...))``. Registering
    a name twice is an error unless ``replace=True`` (or it is the same function again, so
    re-importing a module is harmless)."""
    if not name or not all(c.isalnum() or c in "_-." for c in name):
        raise ValueError(f"panel name {name!r}: use letters, digits, '_', '-' or '.'")
    if not callable(builder):
        raise TypeError(f"panel {name!r}: builder must be callable, got {type(builder).__name__}")
    for key, option in (options or {}).items():
        _check_declaration(name, key, option)
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


def _check_declaration(panel_name: str, key: str, option: Any) -> None:
    """An option declaration is ``(type, default)`` or ``(type, default, Allowed)`` whose
    default is allowed (a mistake here would only show when a dashboard file sets it)."""
    if not isinstance(option, tuple) or len(option) not in (2, 3):
        raise TypeError(f"panel {panel_name!r}: option {key!r} must be declared as (type, default) "
                        f"or (type, default, Allowed(...)), got {option!r}")
    if len(option) == 3:
        allowed = option[2]
        if not isinstance(allowed, Allowed):
            raise TypeError(f"panel {panel_name!r}: option {key!r}: the third element must be an "
                            f"Allowed, got {allowed!r}")
        if option[1] is not None and allowed.problem(option[1]) is not None:
            raise ValueError(f"panel {panel_name!r}: option {key!r}: the default {option[1]!r} is "
                             f"not {allowed.describe(option[0])}")


def allowed_of(option: OptionSpec) -> Allowed | None:
    """The :class:`Allowed` of an option declaration (``None``: any value of its type)."""
    return option[2] if len(option) == 3 else None  # type: ignore[misc]


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
