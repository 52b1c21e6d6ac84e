"""The catalogue of training hyperparameters: one entry per key of :func:`tuner.train.fit`'s
``params`` dict, with its type, default, valid range and where it applies.

This table is the single source of truth for the engine (which validates ``params``), for the
study-file schema (which keys may be searched and with which bounds) and for the search space
(which keys are suggested for which optimizer or decay). It knows nothing of Optuna.

Conventions: learning rates are per update; ``lr`` is the *reference* learning rate at
``base_batch_size`` (spec section 3); epoch-valued keys are converted to updates with
``steps_per_epoch = ceil(N_train / batch_size)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tuner.model import LOSS_FUNCTIONS
from tuner.optim import OPTIMIZER_NAMES
from tuner.schedules import DECAY_TYPES
from tuner.schedules import SCALING_RULES as _SCALING_EXPONENTS

# The names come from the modules that implement them (numpy-only imports: no numba here, so
# loading a study file stays fast); tuner.kernels.LOSS_KINDS is checked against LOSSES by
# tests/test_params.py, as importing the kernels would compile-load numba.
OPTIMIZERS: tuple[str, ...] = OPTIMIZER_NAMES
DECAYS: tuple[str, ...] = DECAY_TYPES
SCALING_RULES: tuple[str, ...] = tuple(_SCALING_EXPONENTS)
LOSSES: tuple[str, ...] = tuple(LOSS_FUNCTIONS)

#: Recommended batch-size scaling rule per optimizer (spec section 3): linear for the SGD family
#: (Goyal et al. 2017), sqrt for the adaptive ones (Malladi et al. 2022).
BATCH_SCALING_DEFAULTS: dict[str, str] = {
    "sgd": "linear", "momentum": "linear", "nesterov": "linear",
    "adagrad": "sqrt", "rmsprop": "sqrt", "adam": "sqrt", "adamw": "sqrt",
}

#: Optimizers whose weight decay is decoupled: the L2 term ``reg`` is not added to their gradient.
DECOUPLED_DECAY_OPTIMIZERS: frozenset[str] = frozenset({"adamw"})


def literal(value: Any) -> str:
    """A value as messages show it: ``true``/``false`` for booleans (as a study file spells
    them), NumPy scalars as the Python value they hold (``1``, not ``np.int64(1)``), lists
    element by element, else Python's ``repr``."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    return repr(value)


@dataclass(frozen=True)
class ParamSpec:
    """One training hyperparameter.

    ``kind`` is ``"float"``, ``"int"``, ``"bool"``, ``"choice"`` or ``"fractions"`` (a list of
    increasing numbers in (0, 1), never searchable). ``optimizers`` / ``decays`` restrict the
    key to those optimizers or decay types (``None`` means always applies). ``default`` may be
    a mapping optimizer -> default where the default depends on the optimizer.
    """

    name: str
    kind: str
    doc: str
    default: Any = None
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    optimizers: frozenset[str] | None = None
    decays: frozenset[str] | None = None
    required: bool = False
    searchable: bool = True
    extra_check: Callable[[Any], str | None] | None = field(default=None, compare=False)

    def applies(self, optimizer: str, decay: str) -> bool:
        """Whether this key is used by a run with this optimizer and decay type."""
        if self.optimizers is not None and optimizer not in self.optimizers:
            return False
        if self.decays is not None and decay not in self.decays:
            return False
        return True

    def default_for(self, optimizer: str) -> Any:
        if isinstance(self.default, Mapping):
            return self.default.get(optimizer)
        return self.default

    def bounds_text(self) -> str:
        """Human-readable allowed values, for error messages."""
        if self.choices is not None:
            return "one of " + ", ".join(literal(c) for c in self.choices)
        if self.kind == "bool":
            return "true or false"
        if self.kind == "fractions":
            return "an increasing list of numbers strictly between 0 and 1"
        lo = "(" if not self.low_inclusive else "["
        hi = ")" if not self.high_inclusive or self.high is None else "]"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        kind = "an integer" if self.kind == "int" else "a number"
        return f"{kind} in {lo}{low}, {high}{hi}"

    def check(self, value: Any) -> str | None:
        """Return ``None`` if ``value`` is valid for this key, else a reason."""
        if self.kind == "choice":
            if value not in (self.choices or ()):
                return f"{value!r} is not allowed; use {self.bounds_text()}"
            return None
        if self.kind == "bool":
            return None if isinstance(value, bool) else f"{value!r} is not true/false"
        if self.kind == "fractions":
            if not isinstance(value, list | tuple) or not value:
                return f"{value!r} is not a non-empty list"
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
                return f"{value!r} contains a non-number"
            if not all(0 < v < 1 for v in value) or list(value) != sorted(set(value)):
                return f"{value!r} is not {self.bounds_text()}"
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{value!r} is not {self.bounds_text()}"
        if self.kind == "int" and not float(value).is_integer():
            return f"{value!r} is not an integer"
        if not math.isfinite(value):
            return f"{value!r} is not finite"
        if self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive)):
            return f"{value!r} is out of range; use {self.bounds_text()}"
        if self.high is not None and (
            value > self.high or (value == self.high and not self.high_inclusive)
        ):
            return f"{value!r} is out of range; use {self.bounds_text()}"
        if self.extra_check is not None:
            return self.extra_check(value)
        return None


def _opts(*names: str) -> frozenset[str]:
    return frozenset(names)


_SPECS: list[ParamSpec] = [
    # --- what every run has -------------------------------------------------------------
    ParamSpec("optimizer", "choice", "update rule: one of the seven optimizers", choices=OPTIMIZERS,
              required=True),
    ParamSpec("lr", "float", "reference learning rate at base_batch_size", low=0.0,
              low_inclusive=False, required=True),
    ParamSpec("batch_size", "int", "mini-batch size (examples per update)", default=64, low=1),
    ParamSpec("base_batch_size", "int", "batch size at which lr is the peak lr",
              default=256, low=1),
    ParamSpec("batch_scaling", "choice", "how the peak lr scales with batch_size/base_batch_size",
              default=BATCH_SCALING_DEFAULTS, choices=SCALING_RULES),
    ParamSpec("warmup_epochs", "float", "linear warmup length, in epochs", default=0.0, low=0.0),
    ParamSpec("warmup_start_factor", "float", "warmup starts at this fraction of the peak lr",
              default=0.0, low=0.0, high=1.0),
    ParamSpec("warmup_from_unscaled", "bool",
              "warmup starts no lower than the unscaled lr where scaling raised the peak above "
              "it (Goyal et al. gradual warmup)", default=False),
    ParamSpec("decay", "choice", "learning-rate decay after warmup",
              default="constant", choices=DECAYS),
    ParamSpec("loss", "choice", "softmax cross-entropy or multiclass hinge (CS231n)",
              default="softmax", choices=LOSSES),
    ParamSpec("reg", "float", "L2 strength lam in L = mean(L_i) + lam*sum(W**2); not used by adamw",
              default=0.0, low=0.0,
              optimizers=frozenset(OPTIMIZERS) - DECOUPLED_DECAY_OPTIMIZERS),
    ParamSpec("init_scale", "float", "W0 = init_scale * standard normal", default=1e-3, low=0.0,
              low_inclusive=False),
    # --- decay parameters ---------------------------------------------------------------
    ParamSpec("gamma", "float", "step decay: lr multiplier at each milestone", default=0.1,
              low=0.0, high=1.0, low_inclusive=False, decays=_opts("step")),
    ParamSpec("milestones", "fractions", "step decay: milestones as fractions of the decay length",
              default=(0.5, 0.75), decays=_opts("step"), searchable=False),
    ParamSpec("step_epochs", "float", "step decay: decay every this many epochs (replaces milestones)",
              default=None, low=0.0, low_inclusive=False, decays=_opts("step")),
    ParamSpec("min_lr_factor", "float", "cosine/linear decay: final lr as a fraction of the peak lr",
              default=0.0, low=0.0, high=1.0, decays=_opts("cosine", "linear")),
    ParamSpec("timescale_epochs", "float",
              "inv_sqrt decay: timescale tau in epochs (default: max(warmup updates, 1) updates)",
              default=None, low=0.0, low_inclusive=False, decays=_opts("inv_sqrt")),
    # --- optimizer parameters (PyTorch names and defaults, spec section 1.6) ------------
    ParamSpec("momentum", "float", "momentum coefficient mu",
              default={"momentum": 0.9, "nesterov": 0.9, "rmsprop": 0.0},
              low=0.0, high=1.0, high_inclusive=False,
              optimizers=_opts("momentum", "nesterov", "rmsprop")),
    ParamSpec("dampening", "float", "SGD momentum dampening (not applied on the first step)",
              default=0.0, low=0.0, high=1.0, high_inclusive=False, optimizers=_opts("momentum")),
    ParamSpec("beta1", "float", "Adam first-moment decay", default=0.9, low=0.0, high=1.0,
              high_inclusive=False, optimizers=_opts("adam", "adamw")),
    ParamSpec("beta2", "float", "Adam second-moment decay", default=0.999, low=0.0, high=1.0,
              high_inclusive=False, optimizers=_opts("adam", "adamw")),
    ParamSpec("eps", "float", "term added to the denominator, outside the sqrt",
              default={"adam": 1e-8, "adamw": 1e-8, "rmsprop": 1e-8, "adagrad": 1e-10},
              low=0.0, low_inclusive=False, optimizers=_opts("adam", "adamw", "rmsprop", "adagrad")),
    ParamSpec("amsgrad", "bool", "use the running maximum of v (AMSGrad)", default=False,
              optimizers=_opts("adam", "adamw")),
    ParamSpec("weight_decay", "float", "AdamW decoupled weight decay: W *= 1 - lr_t*wd per update",
              default=1e-2, low=0.0, optimizers=_opts("adamw")),
    ParamSpec("alpha", "float", "RMSProp squared-gradient decay", default=0.99, low=0.0, high=1.0,
              high_inclusive=False, optimizers=_opts("rmsprop")),
    ParamSpec("centered", "bool", "centered RMSProp", default=False, optimizers=_opts("rmsprop")),
    ParamSpec("lr_decay", "float", "AdaGrad lr decay: lr / (1 + (k-1)*lr_decay)", default=0.0,
              low=0.0, optimizers=_opts("adagrad")),
    ParamSpec("initial_accumulator_value", "float", "AdaGrad initial accumulator", default=0.0,
              low=0.0, optimizers=_opts("adagrad")),
]

#: name -> spec, in a stable documentation order.
PARAMS: dict[str, ParamSpec] = {spec.name: spec for spec in _SPECS}

#: Keys that describe the optimizer's own hyperparameters (suggested per optimizer).
OPTIMIZER_KEYS: tuple[str, ...] = tuple(
    s.name for s in _SPECS if s.optimizers is not None and s.name != "reg"
)
#: Keys that parameterize a decay type (suggested per decay).
DECAY_KEYS: tuple[str, ...] = tuple(s.name for s in _SPECS if s.decays is not None)
#: Keys that every run has.
GENERAL_KEYS: tuple[str, ...] = tuple(
    s.name for s in _SPECS if s.name not in OPTIMIZER_KEYS and s.name not in DECAY_KEYS
)


def optimizer_constraint(optimizer: str, key: str, value: Any) -> str | None:
    """Why ``value`` of ``key`` is not allowed *for this optimizer* although it is in the key's
    range (``None`` if it is allowed): Nesterov momentum needs ``momentum > 0`` (spec 1.1; torch
    raises, and so does :class:`tuner.optim.SGD`)."""
    if optimizer == "nesterov" and key == "momentum" and not value > 0:
        return (f"{literal(value)} is not allowed for nesterov: Nesterov momentum needs "
                f"momentum > 0 (momentum = 0 is optimizer 'sgd'); use a number in (0, 1)")
    return None


def keys_for_optimizer(optimizer: str) -> tuple[str, ...]:
    """The optimizer hyperparameters that ``optimizer`` uses."""
    return tuple(k for k in OPTIMIZER_KEYS if optimizer in (PARAMS[k].optimizers or ()))


def keys_for_decay(decay: str) -> tuple[str, ...]:
    """The decay parameters that ``decay`` uses."""
    return tuple(k for k in DECAY_KEYS if decay in (PARAMS[k].decays or ()))


def resolve(params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a flat ``params`` dict and fill in defaults.

    Returns the complete dict of keys that apply to the chosen optimizer and decay. Raises
    ``ValueError`` naming the key and the allowed values for an unknown key, a missing required
    key, a value out of range, or a key that does not apply (``beta1`` with ``sgd``). ``reg`` is
    accepted and dropped for optimizers with decoupled weight decay (spec section 0).
    """
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise ValueError(
            f"unknown training parameter(s) {', '.join(unknown)}; valid keys: {', '.join(PARAMS)}"
        )
    for name, spec in PARAMS.items():
        if spec.required and name not in params:
            raise ValueError(f"missing required training parameter {name!r} ({spec.doc})")
    optimizer, decay = params["optimizer"], params.get("decay", PARAMS["decay"].default)
    for name in ("optimizer", "decay"):
        reason = PARAMS[name].check(params.get(name, PARAMS[name].default))
        if reason:
            raise ValueError(f"{name}: {reason}")

    resolved: dict[str, Any] = {}
    for name, spec in PARAMS.items():
        applies = spec.applies(optimizer, decay)
        if name in params and not applies:
            if name == "reg":
                continue  # decoupled decay: lam is dropped from the gradient
            where = sorted(spec.optimizers or spec.decays or ())
            what = "optimizer" if spec.optimizers is not None else "decay"
            raise ValueError(
                f"{name!r} does not apply to {what} "
                f"{optimizer if what == 'optimizer' else decay!r}; it applies to {', '.join(where)}"
            )
        if not applies:
            continue
        value = params.get(name, spec.default_for(optimizer))
        if value is None:
            resolved[name] = None
            continue
        if spec.kind == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)
        if spec.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        reason = spec.check(value) or optimizer_constraint(optimizer, name, value)
        if reason:
            raise ValueError(f"{name}: {reason}")
        resolved[name] = list(value) if spec.kind == "fractions" else value
    if resolved.get("step_epochs") is not None:
        if "milestones" in params:
            raise ValueError("step decay takes either 'milestones' or 'step_epochs', not both")
        del resolved["milestones"]  # replaced (and resolving the result again stays valid)
    return resolved


#: The rule a stored trial configuration *without* ``batch_scaling`` trained with. Trials record
#: their rule (:meth:`tuner.space.SearchSpace.suggest`) since its default became per-optimizer
#: (:data:`BATCH_SCALING_DEFAULTS`); a configuration stored before then trained with "none".
STORED_BATCH_SCALING_DEFAULT = "none"


def stored_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's stored configuration as :func:`tuner.train.fit` must get it to train as the
    trial did (``tuner replay``, ``best --test``): an older configuration without
    ``batch_scaling`` gets :data:`STORED_BATCH_SCALING_DEFAULT`, not today's per-optimizer
    default."""
    return {"batch_scaling": STORED_BATCH_SCALING_DEFAULT, **config}


def with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (a trial's stored configuration) with the keys every run has filled in where
    the study file left them out (batch size, scaling rule, warmup, decay, loss): what it
    trained with, for display. A stored configuration without ``batch_scaling`` predates the
    per-optimizer default and trained with "none" (:func:`stored_config`)."""
    keys = ("batch_size", "base_batch_size", "warmup_epochs", "decay", "loss")
    return {**{key: PARAMS[key].default for key in keys}, **stored_config(config)}
