"""Mini-batch training of a linear classifier: :func:`fit`.

One epoch visits every training example once, in a fresh seeded permutation, in
``steps_per_epoch = ceil(N / batch_size)`` updates (the last batch may be partial). The budget is
in epochs, so ``T = epochs * steps_per_epoch`` shrinks as the batch grows (spec section 3). The
peak lr is ``scale_lr(lr, B, base_batch_size, batch_scaling)`` with ``B = min(batch_size, N)``,
the batch actually used, and the lr of update ``t`` is ``make_schedule(...)(t)``.

Reported per epoch (1-based): ``train_loss`` (mean over the epoch's batches of the mini-batch
objective, regularizer included), ``val_loss`` (data loss only), ``val_accuracy``, ``lr`` (the
lr of the epoch's last update) and ``step`` (updates done).

Divergence guard (spec section 5): after every update the run stops if the loss is not finite,
the weights are not finite, or the loss exceeds ``100 x`` the first batch's loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuner import kernels
from tuner import params as P
from tuner.model import add_l2
from tuner.optim import Optimizer, make_optimizer
from tuner.schedules import Schedule, make_schedule, scale_lr

DIVERGENCE_FACTOR = 100.0

EpochCallback = Callable[[int, dict[str, float]], bool | None]


@dataclass(frozen=True)
class Plan:
    """The update budget and learning-rate schedule of one run, derived from ``params``."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    schedule: Schedule
    batch_size: int  # the batch used: batch_size, at most the whole training set

    def warmup_epochs_done(self, epoch: int) -> bool:
        """Whether warmup is over by the end of (1-based) ``epoch``."""
        return epoch * self.steps_per_epoch >= self.warmup_steps


@dataclass
class FitResult:
    """Outcome of :func:`fit`.

    ``history`` has one dict per completed epoch. ``divergence`` is ``None`` or
    ``{"step", "epoch", "reason", "loss"}``; ``step`` is the 0-based index of the update after
    which the guard fired. ``wall_time`` (seconds) includes ``callback_time``, the part spent in
    ``on_epoch``.
    """

    W: np.ndarray
    history: list[dict[str, float]]
    params: dict[str, Any]
    plan: Plan
    divergence: dict[str, Any] | None = None
    stopped_early: bool = False
    steps: int = 0
    samples_seen: int = 0
    wall_time: float = 0.0
    callback_time: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def diverged(self) -> bool:
        return self.divergence is not None

    @property
    def final(self) -> dict[str, float] | None:
        return self.history[-1] if self.history else None


def make_plan(params: Mapping[str, Any], n_train: int, epochs: int) -> Plan:
    """Budget and schedule for resolved ``params`` on ``n_train`` examples over ``epochs``."""
    batch = min(int(params["batch_size"]), n_train)
    spe = math.ceil(n_train / batch)
    total = epochs * spe
    warmup = round(params["warmup_epochs"] * spe)
    if warmup > total:  # study files are refused earlier (space._check_warmup)
        raise ValueError(
            f"warmup_epochs = {params['warmup_epochs']:g} ({warmup} updates) is longer than "
            f"training: epochs = {epochs} is {total} updates ({spe} per epoch, batch {batch} of "
            f"{n_train} examples); use warmup_epochs <= epochs")
    peak = scale_lr(params["lr"], batch,  # the batch used: at most the whole training set
                    base_batch_size=int(params["base_batch_size"]), rule=params["batch_scaling"])
    decay = params["decay"]
    decay_params: dict[str, Any] = {}
    if decay == "step":
        decay_params["gamma"] = params["gamma"]
        if params.get("step_epochs") is not None:
            decay_params["step_size"] = max(1, round(params["step_epochs"] * spe))
        else:
            decay_params["milestones"] = milestone_steps(params["milestones"], total - warmup)
    elif decay in ("cosine", "linear"):
        decay_params["min_lr"] = params["min_lr_factor"] * peak
    elif decay == "inv_sqrt" and params.get("timescale_epochs") is not None:
        decay_params["timescale"] = max(1.0, params["timescale_epochs"] * spe)
    schedule = make_schedule(decay, peak_lr=peak, total_steps=total, warmup_steps=warmup,
                             warmup_start_factor=warmup_start_factor(params, peak), **decay_params)
    return Plan(spe, total, warmup, peak, schedule, batch)


def warmup_start_factor(params: Mapping[str, Any], peak_lr: float) -> float:
    """The warmup's start factor ``s0`` (spec section 2: warmup runs from ``s0 * a0`` to ``a0``).

    ``warmup_start_factor``; with ``warmup_from_unscaled``, where scaling raised the peak above
    the unscaled ``lr``, at least the unscaled lr's share of the peak, ``lr / a0 = kappa**-p``
    (spec section 3, Goyal et al.: the warmup starts from the lr at ``base_batch_size``,
    ``s0 = 1/kappa`` under the linear rule). A peak at or below ``lr`` (rule ``none``, a batch
    up to ``base_batch_size``) has nothing to warm up from and keeps ``warmup_start_factor``."""
    s0 = float(params["warmup_start_factor"])
    lr = float(params["lr"])
    if params.get("warmup_from_unscaled") and lr < peak_lr:
        s0 = max(s0, lr / peak_lr)
    return s0


def milestone_steps(fractions: Any, decay_steps: int) -> list[int]:
    """Step-decay milestones as updates of the decay clock ``u``: ``max(1, floor(f*Td + 0.5))``
    for each fraction ``f`` of the decay length ``Td``. Rounded half up (Python's ``round``
    rounds half to even), and never 0: a milestone at ``u = 0`` would fire at the first decay
    update, so the peak lr would never be used. Fractions that land on the same update apply
    together (``gamma**2`` at once, as torch's MultiStepLR with a repeated milestone); one at
    ``Td`` or later never fires (the last update has ``u = Td - 1``)."""
    return [max(1, math.floor(f * decay_steps + 0.5)) for f in fractions]


def make_run_optimizer(params: Mapping[str, Any]) -> Optimizer:
    """The optimizer of resolved ``params`` (flat keys mapped to PyTorch keywords)."""
    name = params["optimizer"]
    kwargs = {k: params[k] for k in P.keys_for_optimizer(name) if k not in ("beta1", "beta2")}
    if name in ("adam", "adamw"):
        kwargs["betas"] = (params["beta1"], params["beta2"])
    return make_optimizer(name, **kwargs)


def fit(params: Mapping[str, Any], X_train: np.ndarray, y_train: np.ndarray,
        X_val: np.ndarray | None = None, y_val: np.ndarray | None = None, *, epochs: int,
        seed: int = 0, dtype: str = "float32", on_epoch: EpochCallback | None = None) -> FitResult:
    """Train a linear classifier with the flat hyperparameters ``params`` (see
    :mod:`tuner.params`; unknown or inapplicable keys raise ``ValueError``).

    ``X_*`` already carry the bias column. ``seed`` fixes the initial weights and every epoch's
    shuffle: the same params, seed and data give bit-identical results. ``on_epoch(epoch,
    metrics)`` runs after each epoch; returning ``True`` stops training (``stopped_early``).
    For ``adamw`` the L2 term ``reg`` is not used: its decay is decoupled (``weight_decay``).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}")
    resolved = P.resolve(params)
    dt = np.dtype(dtype)
    X_train = np.ascontiguousarray(X_train, dtype=dt)
    y_train = np.asarray(y_train, dtype=np.intp)
    if X_val is not None:
        X_val = np.ascontiguousarray(X_val, dtype=dt)
        y_val = np.asarray(y_val, dtype=np.intp)
    n, d = X_train.shape
    n_classes = int(max(y_train.max(), -1 if y_val is None or len(y_val) == 0 else y_val.max())) + 1

    plan = make_plan(resolved, n, epochs)
    batch = plan.batch_size
    reg = resolved.get("reg", 0.0)
    loss_and_grad = kernels.BatchLossGrad(resolved["loss"], X_train, y_train, n_classes, batch)
    evaluator = None  # the validation split's buffers and thread choice, built once
    if X_val is not None and y_val is not None and len(y_val):
        evaluator = kernels.Evaluator(X_val, y_val, resolved["loss"], n_classes)
    optimizer = make_run_optimizer(resolved)

    init_seq, shuffle_seq = np.random.SeedSequence(seed).spawn(2)
    init_rng, shuffle_rng = np.random.default_rng(init_seq), np.random.default_rng(shuffle_seq)
    W0 = resolved["init_scale"] * init_rng.standard_normal((d, n_classes))
    # trained transposed, (C, D): the kernels' layout; the optimizers are elementwise
    Wt = np.ascontiguousarray(W0.T, dtype=dt)

    result = FitResult(W=Wt.T, history=[], params=resolved, plan=plan)
    started = time.perf_counter()
    t = 0
    first_loss: float | None = None
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for epoch in range(1, epochs + 1):
            order = shuffle_rng.permutation(n)
            loss_sum = 0.0
            lr_t = 0.0
            for start in range(0, n, batch):
                idx = order[start:start + batch]
                loss, grad = add_l2(*loss_and_grad(Wt, idx), Wt, reg)
                lr_t = plan.schedule(t)
                optimizer.step(Wt, grad, lr_t)
                if first_loss is None:
                    first_loss = loss
                reason = _divergence_reason(loss, Wt, first_loss)
                if reason is not None:
                    result.divergence = {"step": t, "epoch": epoch, "reason": reason,
                                         "loss": loss if math.isfinite(loss) else None}
                    t += 1
                    result.samples_seen += len(idx)
                    break
                loss_sum += loss
                t += 1
                result.samples_seen += len(idx)
            if result.divergence is not None:
                break
            metrics: dict[str, float] = {"epoch": epoch, "step": t,
                                         "train_loss": loss_sum / plan.steps_per_epoch, "lr": lr_t}
            if evaluator is not None:
                metrics["val_loss"], metrics["val_accuracy"] = evaluator(Wt)
            result.history.append(metrics)
            if on_epoch is not None:
                before = time.perf_counter()
                stop = on_epoch(epoch, metrics)
                result.callback_time += time.perf_counter() - before
                if stop:
                    result.stopped_early = epoch < epochs
                    break
    result.W = np.ascontiguousarray(Wt.T)
    result.steps = t
    result.wall_time = time.perf_counter() - started
    return result


def _divergence_reason(loss: float, W: np.ndarray, first_loss: float) -> str | None:
    if not math.isfinite(loss):
        return "non-finite loss"
    if not np.isfinite(W).all():
        return "non-finite weights"
    if loss > DIVERGENCE_FACTOR * first_loss:
        return f"loss {loss:.4g} exceeded {DIVERGENCE_FACTOR:g}x the first loss {first_loss:.4g}"
    return None
