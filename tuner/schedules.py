"""Learning-rate schedules as pure functions of the update index, and batch-size scaling.

Spec section 2.2 (the recommended convention), with ``t`` the 0-based index of the update being
applied, ``a0`` the peak lr, ``T`` the total number of updates, ``W`` warmup updates::

    lr(t) = a0 * (s0 + (1 - s0) * t / W)        if t < W      (linear warmup from s0*a0)
    lr(t) = a0 * decay(uc)                       otherwise
    u = t - W,  Td = T - W,  uc = min(max(u, 0), Td)           (decay clock starts at W, clamped)

    constant : 1
    step     : gamma ** floor(uc / step_size)            or gamma ** bisect_right(milestones, uc)
    cosine   : a + (1 - a) * 0.5 * (1 + cos(pi * uc / Td)),   a = min_lr / a0
    linear   : a + (1 - a) * (1 - uc / Td)
    inv_sqrt : sqrt(tau / (uc + tau)),  tau = timescale, default max(W, 1)

With ``s0 = 0`` the first update is a no-op (as in HF, optax and torch). Step sizes and
milestones are in updates, counted on the decay clock ``u``. Every function returns a Python
``float`` so float32 weights stay float32 (spec 1.7). Each ``*_decay`` factory takes the decay
length ``Td`` first, used or not, so :func:`make_schedule` builds any of them the same way.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

Schedule = Callable[[int], float]
Multiplier = Callable[[int], float]

SCALING_RULES: dict[str, float] = {"none": 0.0, "linear": 1.0, "sqrt": 0.5}


def constant_decay(decay_steps: int) -> Multiplier:
    """``decay(u) = 1``."""
    return lambda u: 1.0


def step_decay(decay_steps: int, *, gamma: float = 0.1, step_size: int | None = None,
               milestones: Sequence[int] | None = None) -> Multiplier:
    """``gamma ** floor(u / step_size)`` (torch StepLR) or ``gamma ** bisect_right(milestones, u)``
    (torch MultiStepLR: the factor applies *at* the milestone). Exactly one of ``step_size`` and
    ``milestones`` (both in updates) must be given."""
    if (step_size is None) == (milestones is None):
        raise ValueError("step decay takes exactly one of step_size or milestones (in updates)")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    if step_size is not None:
        if step_size < 1:
            raise ValueError(f"step_size must be >= 1 update, got {step_size!r}")
        return lambda u: gamma ** (u // step_size)
    marks = sorted(int(m) for m in milestones or ())
    return lambda u: gamma ** bisect.bisect_right(marks, u)


def cosine_decay(decay_steps: int, *, floor: float = 0.0) -> Multiplier:
    """``a + (1 - a) * 0.5 * (1 + cos(pi * u / Td))`` with ``a = floor`` (= min_lr / peak_lr)."""
    td = max(decay_steps, 1)
    return lambda u: floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * u / td))


def linear_decay(decay_steps: int, *, floor: float = 0.0) -> Multiplier:
    """``a + (1 - a) * (1 - u / Td)``: reaches ``a`` at ``t = T``, one past the last update."""
    td = max(decay_steps, 1)
    return lambda u: floor + (1.0 - floor) * (1.0 - u / td)


def inv_sqrt_decay(decay_steps: int, *, timescale: float) -> Multiplier:
    """``sqrt(tau / (u + tau))``: ``1/sqrt(t+1)`` for ``tau = 1`` without warmup, and fairseq /
    HF ``inverse_sqrt`` (``sqrt(W / t)``) for ``tau = W``."""
    if timescale <= 0:
        raise ValueError(f"timescale must be > 0, got {timescale!r}")
    return lambda u: math.sqrt(timescale / (u + timescale))


def make_schedule(decay: str, *, peak_lr: float, total_steps: int, warmup_steps: int = 0,
                  warmup_start_factor: float = 0.0,
                  **decay_params: float | Sequence[int]) -> Schedule:
    """Build ``lr(t)`` for ``decay`` in ``constant, step, cosine, linear, inv_sqrt``.

    ``decay_params``: step takes ``gamma`` and ``step_size`` or ``milestones`` (updates);
    cosine and linear take ``min_lr`` (absolute, default 0); inv_sqrt takes ``timescale``
    (updates, default ``max(warmup_steps, 1)``). Unknown decays or parameters raise
    ``ValueError`` listing the valid ones.
    """
    peak_lr, s0 = float(peak_lr), float(warmup_start_factor)
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps!r}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], "
                         f"got {warmup_steps!r}")
    if not 0.0 <= s0 <= 1.0:
        raise ValueError(f"warmup_start_factor must be in [0, 1], got {s0!r}")
    decay_steps = total_steps - warmup_steps
    multiplier = _make_multiplier(decay, decay_steps, peak_lr, warmup_steps, dict(decay_params))

    def schedule(t: int) -> float:
        if t < warmup_steps:
            value = peak_lr * (s0 + (1.0 - s0) * t / warmup_steps)
        else:
            value = peak_lr * multiplier(min(max(t - warmup_steps, 0), decay_steps))
        return float(value)  # a numpy-integer t must not give a numpy scalar (spec 1.7)

    return schedule


_DECAY_PARAMS: dict[str, tuple[str, ...]] = {
    "constant": (),
    "step": ("gamma", "step_size", "milestones"),
    "cosine": ("min_lr",),
    "linear": ("min_lr",),
    "inv_sqrt": ("timescale",),
}
DECAY_TYPES: tuple[str, ...] = tuple(_DECAY_PARAMS)


def _make_multiplier(decay: str, decay_steps: int, peak_lr: float, warmup_steps: int,
                     params: dict) -> Multiplier:
    if decay not in _DECAY_PARAMS:
        raise ValueError(f"unknown decay {decay!r}; valid decays: {', '.join(DECAY_TYPES)}")
    unknown = sorted(set(params) - set(_DECAY_PARAMS[decay]))
    if unknown:
        valid = ", ".join(_DECAY_PARAMS[decay]) or "none"
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for decay {decay!r}; "
                         f"valid: {valid}")
    if decay == "constant":
        return constant_decay(decay_steps)
    if decay == "step":
        return step_decay(decay_steps, **params)
    if decay in ("cosine", "linear"):
        min_lr = float(params.get("min_lr", 0.0))
        if not 0.0 <= min_lr <= peak_lr:
            raise ValueError(f"min_lr must be in [0, peak_lr={peak_lr:g}], got {min_lr!r}")
        floor = min_lr / peak_lr if peak_lr > 0 else 0.0
        return (cosine_decay if decay == "cosine" else linear_decay)(decay_steps, floor=floor)
    timescale = float(params.get("timescale", max(warmup_steps, 1)))
    return inv_sqrt_decay(decay_steps, timescale=timescale)


def scale_lr(lr_ref: float, batch_size: int, *, base_batch_size: int = 256, rule: str) -> float:
    """Peak lr for ``batch_size``: ``lr_ref * (batch_size / base_batch_size) ** p`` with
    ``p = 1`` (linear, Goyal et al. 2017), ``0.5`` (sqrt, Krizhevsky 2014 / Malladi et al. 2022)
    or ``0`` (none). ``lr_ref`` is the learning rate at ``base_batch_size``."""
    if rule not in SCALING_RULES:
        raise ValueError(f"unknown batch scaling rule {rule!r}; valid: {', '.join(SCALING_RULES)}")
    if batch_size < 1 or base_batch_size < 1:
        raise ValueError("batch_size and base_batch_size must be >= 1")
    return float(lr_ref) * (batch_size / base_batch_size) ** SCALING_RULES[rule]
