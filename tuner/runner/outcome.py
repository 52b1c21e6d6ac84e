"""What a finished training run becomes in the study: state, value, user attributes, and the
finite value a diverged trial reports (spec 5)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

CURVE_KEYS = ("epoch", "step", "train_loss", "val_loss", "val_accuracy", "lr")


@dataclass
class Outcome:
    """A trial's final state and value (``None`` unless COMPLETE), the user attributes to store
    with it, a one-line note for the progress display, and the divergence (epoch, step,
    reason) if it diverged before any pruning decision."""

    state: TrialState
    value: float | None
    attrs: dict[str, Any]
    note: str
    divergence: dict[str, Any] | None
    history: list[dict[str, float]]


def trial_outcome(result: dict[str, Any], *, metric: str, prune_at: int | None,
                  n_train: int) -> Outcome:
    """Turn a worker's ``done`` message (``history``, ``steps``, ``samples_seen``,
    ``wall_time``, ``divergence``) into an :class:`Outcome`.

    A pruned trial keeps the curve the pruner saw (its worker may have trained on before the
    ``stop`` reached it) and is charged the work up to the pruning epoch; a divergence after
    the pruner's decision does not count. A diverged trial is PRUNED with ``diverged=True``,
    its step, epoch and reason; otherwise the value is the metric at the last epoch."""
    history = result["history"][:prune_at]
    steps, samples = result["steps"], result["samples_seen"]
    if prune_at is not None:
        steps, samples = int(history[-1]["step"]), prune_at * n_train
    attrs: dict[str, Any] = {
        "curve": {key: [h.get(key) for h in history] for key in CURVE_KEYS},
        "wall_time": result["wall_time"],
        "samples_processed": samples,
        "steps_done": steps,
    }
    divergence = result["divergence"] if prune_at is None else None
    if prune_at is not None:
        attrs["pruned_at_epoch"] = prune_at
        return Outcome(TrialState.PRUNED, None, attrs, f"pruned at epoch {prune_at}", None, history)
    if divergence is not None:
        attrs.update(diverged=True, divergence_step=divergence["step"],
                     divergence_epoch=divergence["epoch"], divergence_reason=divergence["reason"])
        note = f"diverged at update {divergence['step'] + 1}: {divergence['reason']}"  # (1-based)
        return Outcome(TrialState.PRUNED, None, attrs, note, divergence, history)
    return Outcome(TrialState.COMPLETE, float(history[-1][metric]), attrs, "", None, history)


class DivergedValue:
    """The value a diverged trial reports: finite (never NaN/inf: spec 5) and worse than every
    value any finished trial of the study has reported. Accuracy: 0. Loss: 10x the worst loss
    reported by a trial that did not diverge (finals and every epoch), and at least 100x this
    trial's own worst loss (100x its own worst alone could beat a finished trial whose losses
    are large). Other diverged trials' values are left out of the study-wide worst, or each
    divergence would multiply the next one's by 10.

    Keeps the study-wide worst between calls: a finished trial's values never change, so each
    is read once."""

    def __init__(self, *, direction: str, metric: str) -> None:
        self.direction = direction
        self.metric = metric
        self._worst = 0.0
        self._seen: set[int] = set()

    def __call__(self, study: optuna.Study, history: list[dict[str, float]]) -> float:
        if self.direction == "maximize":
            return 0.0
        own = [h[self.metric] for h in history if math.isfinite(h.get(self.metric, math.nan))]
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if trial._trial_id in self._seen:
                continue
            self._seen.add(trial._trial_id)
            if trial.user_attrs.get("diverged"):
                continue
            for value in (*trial.intermediate_values.values(), *(trial.values or ())):
                if math.isfinite(value):
                    self._worst = max(self._worst, value)
        return max(100.0 * max(own + [math.log(10.0)]), 10.0 * self._worst)
