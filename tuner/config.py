"""Study files: a validated TOML description of one tuning study.

Sections: ``[study]`` (name, metric, budget, sampler, pruner, reliability), ``[data]`` (dataset
and split), ``[model]`` (loss, reg, epochs, dtype) and ``[space]`` (the search space, see
:mod:`tuner.space`). Every error names the file, the key path and what is allowed, and is raised
as :class:`~tuner.errors.ConfigError`. ``docs/study-files.md`` documents every key.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuner.data import BUILTIN_DATASETS, FILE_FORMATS, check_dataset_name, split_size_problem
from tuner.errors import ConfigError, DataError, closest, did_you_mean
from tuner.params import literal

METRICS: dict[str, str] = {"val_accuracy": "maximize", "val_loss": "minimize"}
PRUNER_KEYS: dict[str, tuple[str, ...]] = {
    "none": (),
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps"),
    "percentile": ("percentile", "n_startup_trials", "n_warmup_steps", "interval_steps"),
    "successive_halving": ("min_resource", "reduction_factor"),
    "hyperband": ("min_resource", "reduction_factor"),
}
SAMPLER_KEYS: dict[str, tuple[str, ...]] = {
    "tpe": ("n_startup_trials", "group"),
    "random": (),
    "qmc": (),
}
SYNTHETIC_KEYS: tuple[str, ...] = ("n", "d", "classes", "difficulty")


class _Section(BaseModel):
    # strict: `epochs = true`, `n_trials = "3"` or `batch = 64.0` are errors, not conversions
    # (an int is still accepted where a float is expected)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SamplerConfig(_Section):
    """``[study.sampler]``: ``tpe`` (Optuna 5 defaults: multivariate, constant liar),
    ``random`` or ``qmc`` (Sobol). ``group = true`` makes TPE model each branch of the
    conditional space jointly (better for optimizer-specific parameters, ~2x the sampling cost)."""

    type: Literal["tpe", "random", "qmc"] = "tpe"
    n_startup_trials: int = Field(10, ge=0)
    group: bool = False

    @model_validator(mode="after")
    def _keys_apply(self) -> SamplerConfig:
        return _keys_of_type(self, "sampler", SAMPLER_KEYS)


class PrunerConfig(_Section):
    """``[study.pruner]``. Steps are epochs; no trial is pruned inside its own warmup."""

    type: Literal["none", "median", "percentile", "successive_halving", "hyperband"] = "median"
    n_startup_trials: int = Field(5, ge=0)
    n_warmup_steps: int = Field(0, ge=0)
    interval_steps: int = Field(1, ge=1)
    percentile: float = Field(25.0, gt=0.0, lt=100.0)
    min_resource: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2)

    @model_validator(mode="after")
    def _keys_apply(self) -> PrunerConfig:
        return _keys_of_type(self, "pruner", PRUNER_KEYS)


def _keys_of_type(section: Any, what: str, keys_by_type: dict[str, tuple[str, ...]]) -> Any:
    """``section`` (a sampler or pruner) sets only the options its ``type`` takes."""
    allowed = keys_by_type[section.type]
    stray = sorted(k for k in section.model_fields_set if k != "type" and k not in allowed)
    if stray:
        takes = f"it takes: {', '.join(allowed)}" if allowed else "it takes no options"
        if len(stray) == 1:
            raise ValueError(f"{stray[0]}: does not apply to {what} {section.type!r}; {takes}")
        raise ValueError(f"{', '.join(stray)} do not apply to {what} {section.type!r}; {takes}")
    return section


class ReliabilityConfig(_Section):
    """``[study.reliability]``: heartbeat-based stale-trial detection and retries.

    A RUNNING trial whose heartbeat is older than ``grace_period`` seconds is failed and re-run
    with the same parameters, at most ``max_retry`` times. ``fail_fast``: stop the run when
    that many trials failed with an exception and none succeeded (0 disables).
    ``max_db_outage``: how long (seconds) a runner waits for a lost database to come back before
    it gives up with an error (finished trials are never lost either way).
    """

    heartbeat_interval: int = Field(5, ge=1)
    grace_period: int | None = Field(None, ge=1)
    max_retry: int = Field(2, ge=0)
    fail_fast: int = Field(5, ge=0)
    max_db_outage: float = Field(120.0, gt=0)

    @property
    def grace(self) -> int:
        return self.grace_period if self.grace_period is not None else 4 * self.heartbeat_interval

    @model_validator(mode="after")
    def _grace_exceeds_interval(self) -> ReliabilityConfig:
        if self.grace <= self.heartbeat_interval:
            raise ValueError(f"grace_period: {self.grace} must be longer than heartbeat_interval "
                             f"({self.heartbeat_interval})")
        return self


class StudySection(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=200)
    metric: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    n_trials: int = Field(ge=1)
    timeout: float | None = Field(None, gt=0, description="seconds")
    seed: int = Field(0, ge=0)
    storage: str | None = None
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()
    reliability: ReliabilityConfig = ReliabilityConfig()

    @property
    def direction(self) -> str:
        return METRICS[self.metric]

    @model_validator(mode="after")
    def _storage_kind(self) -> StudySection:
        if self.storage is not None:
            scheme = self.storage.partition("://")[0].split("+")[0].lower()
            if scheme not in ("sqlite", "postgresql", "postgres"):
                raise ValueError(f"storage: unsupported database {scheme or self.storage[:20]!r}; "
                                 "use sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB")
            if scheme == "sqlite":
                from sqlalchemy.engine import make_url
                from sqlalchemy.exc import ArgumentError

                from tuner.storage.urls import is_in_memory

                try:
                    memory = is_in_memory(make_url(self.storage))
                except (ArgumentError, ValueError):
                    memory = False  # reported when the storage is opened
                if memory:
                    raise ValueError(f"storage: {self.storage!r} is an in-memory SQLite database; a "
                                     "study there would be lost when the command ends: use a file, "
                                     "e.g. sqlite:///tuner.db")
        return self


class DataSection(_Section):
    """``[data]``: a built-in dataset, ``synthetic``, or a path (relative to the study file)."""

    dataset: str
    target: str | None = None
    delimiter: str | None = Field(None, description="a CSV/TSV file's field separator")
    val_size: float = Field(0.2, gt=0, description="the search scores trials on this split")
    test_size: float = Field(0.2, ge=0)
    seed: int = Field(0, ge=0)
    standardize: bool = True
    n: int = Field(51000, ge=4)
    d: int = Field(3072, ge=1)
    classes: int = Field(10, ge=2)
    difficulty: float = Field(0.5, ge=0.0, le=1.0)

    @field_validator("val_size", "test_size")
    @classmethod
    def _fraction_or_count(cls, value: float) -> float:
        problem = split_size_problem(value)
        if problem:
            raise ValueError(f"{problem}; use e.g. 0.2 or 300")
        return value

    @field_validator("dataset")
    @classmethod
    def _could_be_a_dataset(cls, value: str) -> str:
        """A name no file could make a dataset (``mnist``, ``data.xlsx``) fails here, without
        loading anything (``tuner check --no-data`` too)."""
        try:
            check_dataset_name(value)
        except DataError as exc:
            raise ValueError(exc.message + (f" ({exc.hint})" if exc.hint else "")) from None
        return value

    @model_validator(mode="after")
    def _keys_apply(self) -> DataSection:
        if self.dataset != "synthetic":
            stray = sorted(set(SYNTHETIC_KEYS) & self.model_fields_set)
            if stray:
                if len(stray) == 1:
                    raise ValueError(f"{stray[0]}: applies only to dataset = \"synthetic\"")
                raise ValueError(f"{', '.join(stray)} apply only to dataset = \"synthetic\"")
        kind = FILE_FORMATS.get(Path(self.dataset).suffix.lower())
        is_table = kind in ("csv", "parquet")
        if is_table and self.target is None:
            raise ValueError("target: the label column is required for CSV, TSV and Parquet data")
        if self.target is not None and (self.is_builtin() or kind == "npz"):
            raise ValueError("target: only applies to CSV, TSV and Parquet data")
        if self.delimiter is not None:
            if kind != "csv":
                raise ValueError("delimiter: only applies to CSV and TSV files")
            if (len(self.delimiter) != 1 or self.delimiter in "\"\r\n.-+"
                    or self.delimiter.isalnum()):
                raise ValueError(f"delimiter: {self.delimiter!r} is not a field separator; use "
                                 "one character such as \";\", \"|\" or \"\\t\" (a tab)")
        return self

    def is_builtin(self) -> bool:
        return self.dataset in BUILTIN_DATASETS or self.dataset == "synthetic"


class ModelSection(_Section):
    """``[model]``: ``loss``, ``reg`` and ``init_scale`` may also be searched (a list or a
    range), like any key of ``[space]``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, arbitrary_types_allowed=True)

    epochs: int = Field(ge=1, le=100_000)
    dtype: Literal["float32", "float64"] = "float32"
    loss: Any = None
    reg: Any = None
    init_scale: Any = None


class RegressionRule(_Section):
    """``[schedule.regression]``: when tonight's best counts as a regression. ``tolerance`` is
    in metric units (accuracy points as a fraction, or loss); differences within it are noise.
    The baseline is the value of each of the last ``baseline_nights`` nights (the better of its
    sweep's best and its re-trained incumbent); the margin of noise is ``max(tolerance,
    min(spread_factor * spread, 5 % of the baseline level))`` where the spread is 1.4826 x the
    median absolute deviation of those values (``spread_factor = 0``: the tolerance alone). See
    ``docs/nightly.md`` and :mod:`tuner.nightly.regression`."""

    tolerance: float = Field(0.005, ge=0)
    baseline_nights: int = Field(3, ge=1)
    spread_factor: float = Field(2.0, ge=0)


class ScheduleSection(_Section):
    """``[schedule]``: nightly sweeps of this study file (``tuner nightly``, ``tuner scheduler``).
    Each night is its own study, ``<study.name>-YYYY-MM-DD`` (the date in ``timezone``).
    ``n_trials``/``timeout`` are one night's budget (default: ``[study]``'s); ``warm_start``:
    how many of the previous night's best configurations start the night. Cron weekday numbers
    follow crontab (0 = Sunday). See ``docs/nightly.md``."""

    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    n_trials: int | None = Field(None, ge=1)
    timeout: float | None = Field(None, gt=0)
    warm_start: int = Field(5, ge=0)
    regression: RegressionRule = RegressionRule()

    @model_validator(mode="after")
    def _valid_cron(self) -> ScheduleSection:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        from tuner.nightly.cron import cron_trigger

        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone: unknown timezone {self.timezone!r}; use an IANA name such as "
                             "'UTC' or 'Europe/Berlin'") from None
        try:
            cron_trigger(self.cron, self.timezone)
        except ValueError as exc:
            raise ValueError(f"cron: invalid cron expression {self.cron!r} ({exc}); use five fields: "
                             "minute hour day-of-month month day-of-week, e.g. '0 2 * * *' "
                             "(or six, with seconds first)") from None
        return self


class StudyFile(BaseModel):
    """A parsed, validated study file. ``space`` is the compiled :class:`tuner.space.SearchSpace`."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    study: StudySection
    data: DataSection
    model: ModelSection
    space: Any
    schedule: ScheduleSection | None = None
    raw: dict[str, Any] = Field(repr=False)
    source: str = "<memory>"
    base_dir: str | None = None
    #: keys the command line set (``--study-name`` ...; ``schedule.n_trials`` for another
    #: section than [study]): errors name the option
    overrides: dict[str, Any] = Field(default_factory=dict, repr=False)

    @property
    def direction(self) -> str:
        return self.study.direction

    def to_json(self) -> str:
        """The study file's content, to store with the study (replay needs no file), with any
        password in ``study.storage`` masked: whoever can read the study must not learn it."""
        return json.dumps({"raw": self.public_raw(), "source": self.source, "base_dir": self.base_dir},
                          sort_keys=True)

    def public_raw(self) -> dict[str, Any]:
        """:attr:`raw` with the password of ``study.storage`` masked (safe to store and print)."""
        from tuner.storage.urls import mask_url

        raw = json.loads(json.dumps(self.raw))
        if raw.get("study", {}).get("storage"):
            raw["study"]["storage"] = mask_url(raw["study"]["storage"])
        return raw

    @classmethod
    def from_json(cls, text: str) -> StudyFile:
        blob = json.loads(text)
        raw = blob["raw"]
        # a study stored before TPE-only keys were refused for the other samplers: drop them
        # (they never applied)
        sampler = raw.get("study", {}).get("sampler")
        if isinstance(sampler, dict):
            takes = SAMPLER_KEYS.get(sampler.get("type", "tpe"), ())
            for key in [k for k in sampler if k != "type" and k not in takes]:
                del sampler[key]
        return parse_study_dict(raw, source=blob["source"], base_dir=blob.get("base_dir"),
                                stored=True)

    def with_overrides(self, *, section: str = "study", **overrides: Any) -> StudyFile:
        """A copy with keys of ``[section]`` replaced (``--study-name``, ``--n-trials``, ...),
        validated like the file's own (a bad value raises :class:`ConfigError` naming
        ``section.key``). ``None`` values are not overrides."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if not given:
            return self
        raw = json.loads(json.dumps(self.raw))
        raw.setdefault(section, {}).update(given)
        parsed = parse_study_dict(raw, source=self.source, base_dir=self.base_dir)
        named = given if section == "study" else {f"{section}.{k}": v for k, v in given.items()}
        return parsed.model_copy(update={"overrides": {**self.overrides, **named}})


_SECTIONS = {"study": StudySection, "data": DataSection, "model": ModelSection,
             "schedule": ScheduleSection}
_OPTIONAL = ("schedule",)


def _toml_error(path: Path, text: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    """A TOML syntax error with the line it is on (tomllib gives only its number) and, for a
    key set twice, which key."""
    message = str(exc)
    found = re.search(r"\(at line (\d+), column \d+\)", message)
    lines = text.splitlines()
    if found is None or not 0 < int(found[1]) <= len(lines):
        return ConfigError(f"{path}: invalid TOML: {message}")
    number, line = int(found[1]), lines[int(found[1]) - 1].strip()
    hint = None
    if message.startswith(("Cannot overwrite a value", "Cannot declare")) and line.startswith("["):
        hint = _table_header_hint(line, lines[:number - 1])
    elif message.startswith("Cannot overwrite a value"):
        key = line.split("=", 1)[0].strip()
        hint = f"{key} is set twice in its table: keep one of the two"
    return ConfigError(f"{path}: invalid TOML: {message}; line {number} is: {line}", hint=hint)


#: The tables a study file may have below its sections.
SUBTABLES = ("study.sampler", "study.pruner", "study.reliability", "space.optimizers",
             "space.decays", "schedule.regression")


def _table_header_hint(line: str, before: list[str]) -> str | None:
    """Why a ``[table]`` header cannot be used: the table appears twice, or a part of its name
    is a key with a value (``[space.optimizer.adam]`` after ``optimizer = [...]``: did you mean
    ``[space.optimizers.adam]``?)."""
    header = line.split("#", 1)[0].strip().strip("[]").strip()
    if any(earlier.split("#", 1)[0].strip() == f"[{header}]" for earlier in before):
        return f"[{header}] appears twice: merge the two tables into one"
    try:
        table: Any = tomllib.loads("\n".join(before))
    except tomllib.TOMLDecodeError:
        return None
    parts = [p.strip().strip('"') for p in header.split(".")]
    for i, part in enumerate(parts):
        if not isinstance(table, dict) or part not in table:
            return None
        table = table[part]
        if not isinstance(table, dict):
            key = ".".join(parts[:i + 1])
            if key in SUBTABLES:
                return (f"{key} is set to a value above and is a table here: write it one way, "
                        f"as the table [{key}] with its keys")
            parent = ".".join(parts[:i])  # a table of the same section, by its own name
            siblings = [t.rpartition(".")[2] for t in SUBTABLES if t.rpartition(".")[0] == parent]
            close = closest(part, siblings)
            mean = f"; did you mean [{'.'.join([*parts[:i], close, *parts[i + 1:]])}]?" if close else ""
            return f"{key} is a key set to a value, so [{header}] cannot make it a table{mean}"
    # the whole path is a table already, set inline ({low = ..., high = ...}) or by dotted keys
    return f"{header} is set above as a value: add its keys there, or write it only as [{header}]"


def load_study_file(path: str | Path) -> StudyFile:
    """Read and validate a study file; raises :class:`ConfigError` naming the file and key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: study file not found",
                          hint="the shipped study files are in studies/ (e.g. studies/digits.toml)")
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _toml_error(path, text, exc) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read study file: {exc}") from None
    return parse_study_dict(raw, source=str(path), base_dir=str(path.resolve().parent))


def parse_study_dict(raw: dict[str, Any], *, source: str = "<memory>",
                     base_dir: str | None = None, stored: bool = False) -> StudyFile:
    """Validate an already-parsed study file (``source`` is used in error messages).
    ``stored``: the file a study holds; rules between keys that came after it was stored are
    not applied to it (the study must stay readable: show, export, delete)."""
    from tuner.space import build_space

    allowed = ("study", "data", "model", "space", *_OPTIONAL)
    stray = sorted(set(raw) - set(allowed))
    loose = [k for k in stray if not isinstance(raw[k], dict)]
    if loose:  # keys above the first [section] header, e.g. a missing [study] line
        fits = {name: sum(k in model.model_fields for k in loose) for name, model in _SECTIONS.items()}
        home = max(fits, key=fits.__getitem__)  # the first of the best: [study] before [schedule]
        where = (f"they belong under [{home}]" if fits[home] == len(loose)
                 else f"put them in a section: [{'], ['.join(allowed)}]")
        raise ConfigError(f"{source}: key(s) {', '.join(loose)} outside any section; {where}",
                          hint="keys before the first [section] line belong to no section: "
                               "is a section header missing?")
    if stray:
        raise ConfigError(f"{source}: unknown section(s) [{'], ['.join(stray)}]; "
                          f"allowed sections: [{'], ['.join(allowed)}]")
    for name in allowed:
        if name not in raw:
            if name in _OPTIONAL:
                continue
            raise ConfigError(f"{source}: missing section [{name}]")
        if not isinstance(raw[name], dict):
            raise ConfigError(f"{source}: {name} must be a table ([{name}])")
    sections: dict[str, Any] = {}
    for name, model in _SECTIONS.items():
        if name not in raw:
            continue
        try:
            sections[name] = model.model_validate(raw[name])
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(source, name, model, exc)) from None
    space = build_space(raw["space"], sections["model"], source=source)
    if not stored:
        _check_metric_compares_like_with_like(sections["study"].metric, space, raw, source)
    return StudyFile(study=sections["study"], data=sections["data"], model=sections["model"],
                     space=space, schedule=sections.get("schedule"), raw=raw, source=source,
                     base_dir=base_dir)


def _check_metric_compares_like_with_like(metric: str, space: Any, raw: dict[str, Any],
                                          source: str) -> None:
    """A loss metric cannot rank trials trained with different losses: softmax cross-entropy
    and the multiclass hinge (svm) loss are on different scales."""
    losses = sorted(set(space.losses()))
    if metric != "val_loss" or len(losses) < 2:
        return
    where = "model.loss" if "loss" in raw.get("model", {}) else "space.loss"
    raise ConfigError(f"{source}: study.metric = \"val_loss\" with {where} = {losses}: "
                      "softmax (cross-entropy) and svm (hinge) loss values are on different "
                      "scales, so they cannot rank trials against each other (the sampler, the "
                      "pruner and the best trial would)",
                      hint=f'use metric = "val_accuracy" to compare the losses, or set {where} '
                           "to one of them")


def key_home(key: str, section: str) -> str | None:
    """Where a key written in the wrong section belongs ("it belongs in [space]", "set it per
    optimizer in [space.optimizers.adam], ..."), or ``None`` if no section takes it."""
    from tuner import params as P

    if key in P.OPTIMIZER_KEYS:
        where = ", ".join(f"[space.optimizers.{o}]" for o in sorted(P.PARAMS[key].optimizers or ()))
        return f"{key!r} is an optimizer hyperparameter; set it per optimizer in {where}"
    if key in P.DECAY_KEYS:
        where = ", ".join(f"[space.decays.{d}]" for d in sorted(P.PARAMS[key].decays or ()))
        return f"{key!r} is a decay parameter; set it per decay in {where}"
    homes = [name for name, model in _SECTIONS.items() if name != section and key in model.model_fields]
    if section != "space" and key in P.GENERAL_KEYS and not homes:
        homes.append("space")
    return f"it belongs in [{'] or ['.join(homes)}]" if homes else None


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) section at ``loc``, for 'unknown key' messages."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            break
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            current = annotation
        else:
            break
    return list(getattr(current, "model_fields", {}))


def _format_validation_error(source: str, section: str, model: type[BaseModel],
                             exc: ValidationError) -> str:
    """One line per error: ``FILE: section.key: what is wrong (got VALUE)``. Unknown keys come
    first (a typo also makes the key it meant "missing"), with the closest allowed key."""
    lines = []
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    meant_keys = set()  # "n_trails: did you mean n_trials?" already says n_trials is missing
    for err in errors:
        loc = tuple(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        # a section-wide check names its key first ("target: ..."): report it at that key
        named = re.match(r"([a-z_]+): (.*)", msg, re.DOTALL)
        if named and isinstance(err.get("input"), dict) and named.group(1) in _allowed_keys(model, loc):
            loc, msg = (*loc, named.group(1)), named.group(2)
        key = ".".join(str(p) for p in (section, *loc))
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1])
            home = key_home(str(loc[-1]), section) if len(loc) == 1 else None
            meant = f"{home}; " if home else did_you_mean(str(loc[-1]), allowed)
            if not home:
                meant_keys.add((*loc[:-1], closest(str(loc[-1]), allowed)))
            lines.append(f"{source}: {key}: unknown key in [{section}]; {meant}allowed keys: "
                         f"{', '.join(allowed)}" if home else
                         f"{source}: {key}: unknown key; {meant}allowed keys: {', '.join(allowed)}")
        elif err["type"] == "missing":
            if loc not in meant_keys:
                lines.append(f"{source}: {key}: required key is missing")
        elif err["type"] in ("model_type", "dict_type"):
            allowed = _allowed_keys(model, loc)
            lines.append(f"{source}: {key}: must be a table ([{key}]) with keys: "
                         f"{', '.join(allowed)} (got {literal(err.get('input'))})")
        else:
            if err["type"] == "string_pattern_mismatch":
                msg = ("must start with a letter or digit and contain only letters, digits, "
                       "'_', '.' and '-'")
            msg = msg.replace("Input should be", "must be")
            shown = err.get("input")
            said = isinstance(shown, str) and repr(shown) in msg  # ("unknown dataset 'mnist'")
            got = "" if isinstance(shown, dict) or shown is None or said else f" (got {literal(shown)})"
            lines.append(f"{source}: {key}: {msg}{got}")
    return "\n".join(lines)
