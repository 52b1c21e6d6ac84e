"""The search space of a study file, and its define-by-run suggestion code.

Any searchable key is *fixed* (``decay = "cosine"``), a *choice* (``decay = ["cosine",
"step"]``) or a *range* (``lr = {low = 1e-5, high = 1.0, log = true}``, optional ``step``).
General keys live in ``[space]`` (``loss``, ``reg`` and ``init_scale`` may live in ``[model]``);
an optimizer's own hyperparameters live in ``[space.optimizers.<name>]`` and a decay's in
``[space.decays.<name>]``, and are suggested **only** for trials that picked that optimizer or
decay. Optuna parameter names are the key (``lr``) or ``<optimizer>.<key>`` / ``<decay>.<key>``
(``adam.beta1``, ``step.gamma``); fixed keys are not Optuna parameters.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tuner import params as P
from tuner.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    import optuna

    from tuner.config import ModelSection

MODEL_LEVEL_KEYS: tuple[str, ...] = ("loss", "reg", "init_scale")


@dataclass(frozen=True)
class Dimension:
    """One key of the space. ``name`` is the Optuna parameter name, ``key`` the training key."""

    key: str
    name: str
    kind: str  # "fixed" | "choice" | "range"
    value: Any = None
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    integer: bool = False

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        """Suggest this key's value on ``trial`` (fixed keys return their value)."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)

    def distribution(self) -> optuna.distributions.BaseDistribution | None:
        """The Optuna distribution :meth:`suggest` uses (``None`` for a fixed key)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "fixed":
            return None
        if self.kind == "choice":
            return CategoricalDistribution(list(self.choices))
        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a value this dimension could produce."""
        if self.kind == "fixed":
            return value == self.value
        if self.kind == "choice":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not self.low <= value <= self.high:
            return False
        if self.integer and not float(value).is_integer():
            return False
        if self.step is not None:
            k = (value - self.low) / self.step
            return math.isclose(k, round(k), abs_tol=1e-8)
        return True

    def describe(self) -> str:
        if self.kind == "fixed":
            return P.literal(self.value)
        if self.kind == "choice":
            return "one of " + ", ".join(P.literal(c) for c in self.choices)
        scale = "log " if self.log else ""
        step = f" step {self.step:g}" if self.step is not None else ""
        kind = "int" if self.integer else "float"
        return f"{scale}{kind} [{self.low:g}, {self.high:g}]{step}"


@dataclass(frozen=True)
class SearchSpace:
    """General dimensions (in catalogue order) plus per-optimizer and per-decay dimensions."""

    general: dict[str, Dimension]
    optimizers: dict[str, dict[str, Dimension]]
    decays: dict[str, dict[str, Dimension]]

    @property
    def optimizer_choices(self) -> tuple[str, ...]:
        return values_of(self.general["optimizer"])

    @property
    def decay_choices(self) -> tuple[str, ...]:
        return values_of(self.general.get("decay")) or (P.PARAMS["decay"].default,)

    def losses(self) -> tuple[str, ...]:
        """The losses the space trains with (empty: the engine's default)."""
        return values_of(self.general.get("loss"))

    def suggest(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        """Define-by-run: suggest one configuration on ``trial``; returns flat training params
        (engine defaults fill any key the space does not mention). ``batch_scaling`` is always
        there: its default depends on the optimizer and has changed (it was ``"none"`` for
        every optimizer), so a trial records the rule it trains with and replays stay exact."""
        optimizer = self.general["optimizer"].suggest(trial)
        params: dict[str, Any] = {"optimizer": optimizer}
        for key, dim in self.general.items():
            if key != "optimizer" and P.PARAMS[key].applies(optimizer, params.get("decay", "")):
                params[key] = dim.suggest(trial)
        if "batch_scaling" not in params:
            params["batch_scaling"] = P.PARAMS["batch_scaling"].default_for(optimizer)
        for key, dim in self.optimizers.get(optimizer, {}).items():
            params[key] = dim.suggest(trial)
        for key, dim in self.decays.get(params.get("decay", "constant"), {}).items():
            params[key] = dim.suggest(trial)
        return params

    def dimensions(self) -> list[Dimension]:
        dims = list(self.general.values())
        for group in (*self.optimizers.values(), *self.decays.values()):
            dims.extend(group.values())
        return dims

    def key_path(self, name: str, model_keys: Any = ()) -> str:
        """Where the parameter ``name`` is set in a study file: ``space.optimizer``,
        ``space.optimizers.adam.beta1``, ``space.decays.step.gamma`` (``model.loss`` for a
        key in ``model_keys``, the searchable keys given in ``[model]``)."""
        for group, section in ((self.optimizers, "optimizers"), (self.decays, "decays")):
            for owner, dims in group.items():
                for key, dim in dims.items():
                    if dim.name == name:
                        return f"space.{section}.{owner}.{key}"
        return f"model.{name}" if name in model_keys else f"space.{name}"

    def incompatible_with(self, stored: dict[str, list[optuna.distributions.BaseDistribution]]
                          ) -> list[tuple[str, str]]:
        """``(parameter, why)`` for each parameter of this space whose distribution Optuna would
        refuse next to ``stored`` (the distributions a study's trials already used): a
        categorical parameter's choices (and their order) cannot change within a study, nor can
        a parameter's kind (choice / int / float) or its log scale. A range's bounds and step
        may change."""
        from optuna.distributions import CategoricalDistribution, check_distribution_compatibility

        problems = []
        for dim in self.dimensions():
            new = dim.distribution()
            for old in stored.get(dim.name, []) if new is not None else []:
                try:
                    check_distribution_compatibility(old, new)
                except ValueError:
                    if isinstance(old, CategoricalDistribution) and isinstance(new, CategoricalDistribution):
                        why = (f"choices {list(new.choices)!r} differ from the {list(old.choices)!r} "
                               "the study's trials used (Optuna cannot change a categorical "
                               "parameter's choices, or their order, within a study)")
                    else:
                        why = (f"{_describe_distribution(new)} cannot replace the "
                               f"{_describe_distribution(old)} the study's trials used (Optuna "
                               "cannot change a parameter's kind, or a range's log scale, within "
                               "a study; bounds and step may change)")
                    problems.append((dim.name, why))
                    break
        return problems

    def params_from_optuna(self, optuna_params: dict[str, Any]) -> dict[str, Any]:
        """Flat training params of a trial from its Optuna params (fixed keys filled in)."""
        from optuna.trial import FixedTrial

        return self.suggest(FixedTrial(optuna_params))

    def check_optuna_params(self, optuna_params: dict[str, Any]) -> list[str]:
        """Reasons why ``optuna_params`` (from another study) is not a point of this space;
        an empty list means it is valid here."""
        from optuna.trial import FixedTrial

        by_name = {d.name: d for d in self.dimensions()}
        reasons: list[str] = []
        for name, value in optuna_params.items():
            dim = by_name.get(name)
            if dim is None:
                reasons.append(f"{name} is not a parameter of this search space")
            elif dim.kind == "fixed":
                reasons.append(f"{name} is fixed to {P.literal(dim.value)} here")
            elif not dim.contains(value):
                where = "not" if dim.kind in ("fixed", "choice") else "outside"
                reasons.append(f"{name}={P.literal(value)} is {where} {dim.describe()}")
        if reasons:
            return reasons
        trial = FixedTrial(optuna_params)
        try:
            self.suggest(trial)
        except ValueError as exc:  # FixedTrial: a parameter this configuration needs is missing
            missing = re.search(r"parameter '([^']+)' is not found", str(exc))
            if missing is None:
                return [str(exc)]
            name = missing.group(1)
            return [f"{name} is missing (this configuration needs it: {by_name[name].describe()})"]
        unused = sorted(set(optuna_params) - set(trial.params))
        return [f"{name} does not apply to this configuration" for name in unused]

    def fingerprint(self) -> str:
        """A short hash identifying this space (stored with each study)."""
        blob = json.dumps([d.__dict__ for d in self.dimensions()], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def rows(self) -> list[tuple[str, str, str]]:
        """(parameter, applies when, values) rows for display."""
        decoupled = sorted(set(self.optimizer_choices) & P.DECOUPLED_DECAY_OPTIMIZERS)
        reg_when = (f"optimizer is not {' or '.join(decoupled)}" if decoupled else "always")
        out = [(d.name, reg_when if k == "reg" else "always", d.describe())
               for k, d in self.general.items()]
        for opt, group in self.optimizers.items():
            out += [(d.name, f"optimizer == {opt}", d.describe()) for d in group.values()]
        for decay, group in self.decays.items():
            out += [(d.name, f"decay == {decay}", d.describe()) for d in group.values()]
        return out


def _describe_distribution(dist: Any) -> str:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return f"choice of {list(dist.choices)!r}"
    kind = "int" if isinstance(dist, IntDistribution) else "float"
    return f"{'log ' if dist.log else ''}{kind} range [{dist.low:g}, {dist.high:g}]"


def values_of(dim: Dimension | None) -> tuple[Any, ...]:
    """The values a fixed or choice dimension takes (none for ``None``)."""
    if dim is None:
        return ()
    return (dim.value,) if dim.kind == "fixed" else dim.choices


def build_space(raw: dict[str, Any], model: ModelSection, *, source: str) -> SearchSpace:
    """Compile ``[space]`` (plus the searchable keys of ``[model]``) into a :class:`SearchSpace`,
    raising :class:`ConfigError` with the file and key path on any mistake."""
    from tuner.config import key_home  # (config imports this module lazily, too)

    def fail(path: str, message: str) -> ConfigError:
        return ConfigError(f"{source}: {path}: {message}")

    general_keys = [k for k in P.GENERAL_KEYS]
    allowed_top = [k for k in general_keys if k not in MODEL_LEVEL_KEYS] + list(MODEL_LEVEL_KEYS)
    allowed_top += ["optimizers", "decays"]
    general: dict[str, Dimension] = {}
    for key, value in raw.items():
        path = f"space.{key}"
        if key in ("optimizers", "decays"):
            continue
        if key in P.OPTIMIZER_KEYS or key in P.DECAY_KEYS:
            raise fail(path, key_home(key, "space"))
        if key not in general_keys:
            home = key_home(key, "space")
            raise fail(path, f"unknown key{f' in [space]; {home}' if home else ''}; "
                             f"{'' if home else did_you_mean(key, allowed_top)}allowed keys: "
                             f"{', '.join(allowed_top)}")
        general[key] = _dimension(key, key, value, path, fail)
    for key in MODEL_LEVEL_KEYS:
        value = getattr(model, key)
        if value is None:
            continue
        if key in general:
            raise fail(f"space.{key}", f"{key!r} is also set in [model]; set it in one place")
        general[key] = _dimension(key, key, value, f"model.{key}", fail)
    for key in ("optimizer", "lr"):
        if key not in general:
            raise fail(f"space.{key}", f"required key is missing ({P.PARAMS[key].doc})")
    general = {k: general[k] for k in general_keys if k in general}

    optimizers_in_play = values_of(general["optimizer"])
    decays_in_play = values_of(general.get("decay")) or ("constant",)
    optimizers = _conditional(raw.get("optimizers", {}), "optimizers", P.OPTIMIZERS,
                              optimizers_in_play, "optimizer", P.keys_for_optimizer, fail)
    decays = _conditional(raw.get("decays", {}), "decays", P.DECAYS, decays_in_play, "decay",
                          P.keys_for_decay, fail)
    _check_warmup(general.get("warmup_epochs"), model.epochs, fail)
    return SearchSpace(general=general, optimizers=optimizers, decays=decays)


def _conditional(raw: Any, section: str, names: tuple[str, ...], in_play: tuple[str, ...],
                 what: str, keys_for: Any, fail: Any) -> dict[str, dict[str, Dimension]]:
    if not isinstance(raw, dict):
        raise fail(f"space.{section}", f"must be a table of [space.{section}.<{what}>] sections")
    out: dict[str, dict[str, Dimension]] = {}
    for name, table in raw.items():
        path = f"space.{section}.{name}"
        if name not in names:
            raise fail(path, f"unknown {what}; {did_you_mean(name, names)}valid: {', '.join(names)}")
        if name not in in_play:
            raise fail(path, f"{what} {name!r} is not among space.{what} choices "
                             f"({', '.join(in_play)}); remove this section or add it there")
        if not isinstance(table, dict):
            raise fail(path, "must be a table of parameters")
        allowed = keys_for(name)
        group: dict[str, Dimension] = {}
        for key, value in table.items():
            if key not in allowed:
                raise fail(f"{path}.{key}", f"{key!r} does not apply to {what} {name!r}; "
                                            f"{did_you_mean(key, allowed)}"
                                            f"it takes: {', '.join(allowed) or 'no parameters'}")
            group[key] = _dimension(key, f"{name}.{key}", value, f"{path}.{key}", fail)
            if what == "optimizer":
                _check_for_optimizer(name, group[key], f"{path}.{key}", fail)
        if "milestones" in group and "step_epochs" in group:
            raise fail(path, "step decay takes either milestones (fractions of the decay length) "
                             "or step_epochs (decay every so many epochs), not both")
        out[name] = group
    return out


def _check_for_optimizer(optimizer: str, dim: Dimension, path: str, fail: Any) -> None:
    """Values in the key's range that this optimizer still refuses (nesterov with momentum 0):
    every value the dimension can produce is checked, a range by its low end (the lowest)."""
    if dim.kind == "fixed":
        values = [(path, dim.value)]
    elif dim.kind == "choice":
        values = [(f"{path}[{i}]", v) for i, v in enumerate(dim.choices)]
    else:
        values = [(f"{path}.low", dim.low)]
    for where, value in values:
        reason = P.optimizer_constraint(optimizer, dim.key, value)
        if reason:
            raise fail(where, reason)


def _dimension(key: str, name: str, value: Any, path: str, fail: Any) -> Dimension:
    spec = P.PARAMS[key]
    if spec.kind == "fractions":
        reason = spec.check(value)
        if reason:
            raise fail(path, f"{reason}; use {spec.bounds_text()} (not searchable)")
        return Dimension(key, name, "fixed", value=list(value))
    if isinstance(value, dict):
        if spec.kind in ("choice", "bool") or not spec.searchable:
            raise fail(path, f"a table ({{low, high}} range) is not allowed here; give a value or "
                             f"a list of choices, e.g. {key} = [...] ({spec.bounds_text()})")
        return _range(spec, key, name, value, path, fail)
    if isinstance(value, list):
        if not value:
            raise fail(path, "an empty list of choices; give at least one value")
        checked = tuple(_scalar(spec, v, f"{path}[{i}]", fail) for i, v in enumerate(value))
        if len(set(checked)) != len(checked):
            raise fail(path, f"duplicate choices in {P.literal(value)}")
        if len(checked) == 1:
            return Dimension(key, name, "fixed", value=checked[0])
        return Dimension(key, name, "choice", choices=checked)
    return Dimension(key, name, "fixed", value=_scalar(spec, value, path, fail))


def _scalar(spec: P.ParamSpec, value: Any, path: str, fail: Any) -> Any:
    if isinstance(value, dict | list):
        raise fail(path, f"expected a single value ({spec.bounds_text()})")
    if spec.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if spec.kind == "int" and isinstance(value, float):
        raise fail(path, f"{value!r} is a float; {spec.name!r} is an integer key (write "
                         f"{int(value)})" if value.is_integer() else
                         f"{value!r} is not an integer; {spec.name!r} is an integer key")
    reason = spec.check(value)
    if reason:
        raise fail(path, reason)
    return value


def _range(spec: P.ParamSpec, key: str, name: str, table: dict, path: str, fail: Any) -> Dimension:
    allowed = ("low", "high", "log", "step")
    stray = sorted(set(table) - set(allowed))
    if stray:
        raise fail(f"{path}.{stray[0]}", f"unknown key in a range; allowed keys: {', '.join(allowed)}")
    for bound in ("low", "high"):
        if bound not in table:
            raise fail(f"{path}.{bound}", "required key of a range is missing")
        if spec.kind == "int" and isinstance(table[bound], float):
            raise fail(f"{path}.{bound}", f"{table[bound]!r} is a float; {key!r} is an integer key")
        reason = spec.check(float(table[bound]) if spec.kind == "float" and _is_num(table[bound])
                            else table[bound])
        if reason:
            raise fail(f"{path}.{bound}", reason)
    low, high = table["low"], table["high"]
    log, step = table.get("log", False), table.get("step")
    if not isinstance(log, bool):
        raise fail(f"{path}.log", f"{log!r} is not true/false")
    if low > high:
        raise fail(path, f"low ({low!r}) is greater than high ({high!r})")
    if log and low <= 0:
        raise fail(f"{path}.low", f"a log range needs low > 0 (got {low!r})")
    if step is not None:
        if not _is_num(step) or step <= 0:
            raise fail(f"{path}.step", f"{step!r} is not a positive number")
        if log:
            raise fail(f"{path}.step", "step and log cannot be combined (Optuna does not support it)")
        if spec.kind == "int" and not float(step).is_integer():
            raise fail(f"{path}.step", f"{step!r} is not an integer; {key!r} is an integer key")
        n = (high - low) / step
        if not math.isclose(n, round(n), rel_tol=0, abs_tol=1e-9):
            fit = low + math.floor(n + 1e-9) * step
            raise fail(f"{path}.high", f"{high!r} is not low + a multiple of step ({low!r} + k * "
                                       f"{step!r}); e.g. high = {fit:g} or {fit + step:g}")
    integer = spec.kind == "int"
    return Dimension(key, name, "range", low=float(low) if not integer else int(low),
                     high=float(high) if not integer else int(high), log=log,
                     step=None if step is None else (int(step) if integer else float(step)),
                     integer=integer)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_warmup(dim: Dimension | None, epochs: int, fail: Any) -> None:
    if dim is None:
        return
    largest = dim.value if dim.kind == "fixed" else max(dim.choices) if dim.kind == "choice" else dim.high
    if largest >= epochs:
        raise fail("space.warmup_epochs", f"warmup of up to {largest:g} epochs leaves no decay "
                                          f"within model.epochs = {epochs}; keep it below {epochs}")
