"""What a panel builder gets: the study, its study file, the storage, the panel's options, and
per-render caches shared by all panels (trials read once, one trial table, the reference)."""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial

from tuner import params as P
from tuner.dashboard.spec import DashboardError
from tuner.study import ATTR_DATA, ATTR_METRIC, flat_params

log = logging.getLogger("tuner.dashboard")

ATTR_REFERENCE = "tuner.reference"
REFERENCE_MODEL = "sklearn LogisticRegression(max_iter=5000), fit on the training split"
FRAME_PARAMS = ("optimizer", "lr", "batch_size", "base_batch_size", "batch_scaling", "warmup_epochs",
                "decay", "reg", "loss")
_REFERENCE_LOCKS: dict[tuple[int, int], threading.Lock] = {}
_REFERENCE_GUARD = threading.Lock()


@dataclass
class PanelContext:
    """The argument of every panel builder.

    ``options`` are the panel's keys from the dashboard file (minus ``type``, ``title``,
    ``width``, ``height``, ``attach``). The helpers (:meth:`trials`, :meth:`frame`,
    :meth:`reference`) cache their results for the whole render, so panels share one read."""

    study: optuna.Study
    study_file: Any
    storage: Any
    options: dict[str, Any] = field(default_factory=dict)
    dashboard: str = "study"
    panel: str = ""
    where: str = ""
    shared: dict[str, Any] = field(default_factory=dict)
    compute_reference: bool = True

    def for_panel(self, panel: str, options: dict[str, Any], where: str) -> PanelContext:
        return PanelContext(self.study, self.study_file, self.storage, dict(options), self.dashboard,
                            panel, where, self.shared, self.compute_reference)

    # --- options ----------------------------------------------------------------------

    def option(self, key: str, default: Any, kind: type | tuple[type, ...] | None = None) -> Any:
        """The panel option ``key`` (``default`` when absent), checked against ``kind``."""
        value = self.options.get(key, default)
        if kind is not None and value is not None and not _is_kind(value, kind):
            raise DashboardError(f"{self.where or self.panel}: option {key} must be "
                                 f"{_kind_name(kind)}, got {P.literal(value)}")
        return value

    # --- the study ----------------------------------------------------------------------

    @property
    def metric(self) -> str:
        return self.user_attrs().get(ATTR_METRIC, "value")

    @property
    def maximize(self) -> bool:
        return self.study.direction == optuna.study.StudyDirection.MAXIMIZE

    def user_attrs(self) -> dict[str, Any]:
        if "attrs" not in self.shared:
            self.shared["attrs"] = dict(self.study.user_attrs)
        return self.shared["attrs"]

    def trials(self) -> list[FrozenTrial]:
        """All trials of the study, read once per render, not copied (do not modify them).
        On RDB storages they come from :mod:`tuner.dashboard.reader` (no intermediate values)."""
        if "trials" not in self.shared:
            from tuner.dashboard.reader import read_trials

            trials = read_trials(self.study._storage, self.study._study_id)
            if trials is None:  # not an RDB storage
                trials = self.study.get_trials(deepcopy=False)
            self.shared["trials"] = trials
            self.shared["by_number"] = {t.number: t for t in trials}
        return self.shared["trials"]

    def trial(self, number: int) -> FrozenTrial:
        self.trials()
        return self.shared["by_number"][number]

    def frame(self) -> pd.DataFrame:
        """One row per trial: number, state, value, the main parameters, ``peak_lr``,
        ``diverged``, ``pruned_at_epoch``, ``final_val_accuracy``, ``epochs_done``."""
        if "frame" not in self.shared:
            self.shared["frame"] = trial_frame(self.trials(), self.study_file)
        return self.shared["frame"]

    def complete(self) -> pd.DataFrame:
        """COMPLETE trials with a finite value, best first (ties: lower number first)."""
        if "complete" not in self.shared:
            f = self.frame()
            done = f[(f["state"] == "COMPLETE") & np.isfinite(f["value"].astype(float))]
            self.shared["complete"] = done.sort_values(
                ["value", "number"], ascending=[not self.maximize, True], kind="stable")
        return self.shared["complete"]

    def top(self, k: int) -> pd.DataFrame:
        return self.complete().head(k)

    def data_summary(self) -> dict[str, Any] | None:
        return self.user_attrs().get(ATTR_DATA)

    def reference(self) -> dict[str, Any] | None:
        """scikit-learn ``LogisticRegression`` accuracy on the study's split, computed once
        per study and cached as the study user attribute ``tuner.reference``. ``None`` when
        the study has no study file; ``{"error": ...}`` when its data cannot be loaded here."""
        if "reference" not in self.shared:
            self.shared["reference"] = study_reference(self.study, self.study_file,
                                                       compute=self.compute_reference,
                                                       attrs=self.user_attrs())
        return self.shared["reference"]


def _is_kind(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    if float in kinds and isinstance(value, int):
        return True
    if list in kinds and isinstance(value, list):
        return True
    return isinstance(value, kinds)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "a list"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def trial_frame(trials: list[FrozenTrial], study_file: Any = None) -> pd.DataFrame:
    """The trial table the panels work on (one pass over the trials, no copies)."""
    rows: dict[str, list[Any]] = {key: [] for key in (
        "number", "state", "value", *FRAME_PARAMS, "peak_lr", "diverged", "divergence_reason",
        "pruned_at_epoch", "final_val_accuracy", "epochs_done", "duration_s", "datetime_complete")}
    for t in trials:
        attrs = t.user_attrs
        params = attrs.get("config")
        if params is None:
            params = flat_params(t, study_file)
        else:  # a key the study file left out trained with the engine's default
            params = P.with_defaults(params)
        curve = attrs.get("curve") or {}
        accs = curve.get("val_accuracy") or []
        rows["number"].append(t.number)
        rows["state"].append(t.state.name)
        value = t.values[0] if t.values else None
        rows["value"].append(math.nan if value is None else float(value))
        for key in FRAME_PARAMS:
            rows[key].append(params.get(key))
        peak = attrs.get("peak_lr")
        if peak is None:
            peak = _peak_lr(params)
        rows["peak_lr"].append(math.nan if peak is None else float(peak))
        rows["diverged"].append(bool(attrs.get("diverged", False)))
        rows["divergence_reason"].append(attrs.get("divergence_reason"))
        rows["pruned_at_epoch"].append(attrs.get("pruned_at_epoch"))
        last_acc = accs[-1] if accs else None
        rows["final_val_accuracy"].append(math.nan if last_acc is None else float(last_acc))
        rows["epochs_done"].append(len(accs))
        rows["duration_s"].append(t.duration.total_seconds() if t.duration else math.nan)
        rows["datetime_complete"].append(t.datetime_complete)
    frame = pd.DataFrame(rows)
    for key in ("value", "peak_lr", "lr", "warmup_epochs", "reg", "final_val_accuracy", "duration_s"):
        frame[key] = pd.to_numeric(frame[key], errors="coerce").astype(float)
    return frame


def _peak_lr(params: dict[str, Any]) -> float | None:
    from tuner.schedules import scale_lr

    try:
        return scale_lr(float(params["lr"]), int(params["batch_size"]),
                        base_batch_size=int(params.get("base_batch_size", 256)),
                        rule=params.get("batch_scaling", "none"))
    except (KeyError, TypeError, ValueError):
        return None


def study_reference(study: optuna.Study, study_file: Any, *, compute: bool = True,
                    attrs: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The cached ``tuner.reference`` attribute, computing and storing it on first use."""
    attrs = attrs if attrs is not None else study.user_attrs
    cached = attrs.get(ATTR_REFERENCE)
    if isinstance(cached, dict) and "val_accuracy" in cached:
        return cached
    if study_file is None:
        return None
    if not compute:
        return {"error": "not computed yet (tuner dashboard and tuner report compute it)"}
    key = (id(study._storage), study._study_id)
    with _REFERENCE_GUARD:
        lock = _REFERENCE_LOCKS.setdefault(key, threading.Lock())
    with lock:  # one computation per study at a time, even with many server threads
        cached = study.user_attrs.get(ATTR_REFERENCE)
        if isinstance(cached, dict) and "val_accuracy" in cached:
            attrs[ATTR_REFERENCE] = cached
            return cached
        try:
            value = compute_reference(study_file)
        except Exception as exc:  # data missing on this host, sklearn failure: show, don't crash
            log.warning("reference for study %s: %s: %s", study.study_name, type(exc).__name__, exc)
            return {"error": f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"}
        try:
            study.set_user_attr(ATTR_REFERENCE, value)
        except Exception as exc:  # read-only or unreachable database: keep it for this render only
            from tuner.storage.resilience import is_transient

            why = "the database connection was lost" if is_transient(exc) else str(exc)
            log.warning("cannot cache the reference in study %s (%s); it is computed again next "
                        "time", study.study_name, why)
        attrs[ATTR_REFERENCE] = value
        return value


def compute_reference(study_file: Any) -> dict[str, Any]:
    import time

    import sklearn

    from tuner.reference import reference_on_split
    from tuner.study import load_data

    started = time.perf_counter()
    splits = load_data(study_file)
    ref = reference_on_split(splits)
    return {"val_accuracy": ref["val"], "test_accuracy": ref["test"], "model": REFERENCE_MODEL,
            "sklearn": sklearn.__version__, "data": splits.describe(),
            "seconds": round(time.perf_counter() - started, 3)}

