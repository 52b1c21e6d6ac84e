"""Creating and loading tuner studies: an Optuna study plus the study file it was made from.

Each study stores its study file (``tuner.config``), search-space fingerprint and metric as
study user attributes, so any command (``replay``, ``best --test``, ``show``, the dashboard) can
rebuild the data and training setup from the database alone. A study run again with an edited
file (other ``[data]`` or ``[model]`` settings) also stores that file, as
``tuner.file.<digest>``, and each trial names the one it trained under (its ``training``
attribute): :func:`trial_study_file`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner import __version__
from tuner import params as P
from tuner.config import METRICS, StudyFile
from tuner.data import Splits, data_file, load_splits
from tuner.errors import ConfigError, DataError, StudyNotFoundError
from tuner.storage import BufferedStorage

ATTR_CONFIG = "tuner.config"
ATTR_SPACE = "tuner.space"
log = logging.getLogger(__name__)
ATTR_METRIC = "tuner.metric"
ATTR_VERSION = "tuner.version"
ATTR_DATA = "tuner.data"
ATTR_RUNS = "tuner.runs"
ATTR_VIEWS = "tuner.views_of"  # [trials, finished trials] when the stored views were rendered
ATTR_FILE_PREFIX = "tuner.file."  # + training_digest(): an edited study file the study ran with
ATTR_TRAINING = "training"  # trial attribute: training_digest() of the file the trial trained under
ATTR_DATA_DIGEST = "data_digest"  # trial attribute: data_digest() of the data file it trained on
ATTR_DATA_FILE = "tuner.data_file"  # study attribute: data_digest() its latest run trained on
ATTR_LAST_FILE = "tuner.last_file"  # study attribute: the study file its latest run ran (JSON)

if optuna.logging.get_verbosity() < optuna.logging.WARNING:  # (the CLI has set ERROR: keep it)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_sampler(study_file: StudyFile, seed: int) -> optuna.samplers.BaseSampler:
    """The study file's sampler. TPE uses Optuna 5's defaults (multivariate, constant liar);
    ``group`` decomposes the conditional space into branches modelled jointly."""
    cfg = study_file.study.sampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if cfg.type == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if cfg.type == "qmc":
            return optuna.samplers.QMCSampler(seed=seed, scramble=True,
                                              warn_independent_sampling=False)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.n_startup_trials,
                                          multivariate=True, group=cfg.group, constant_liar=True)


def make_pruner(study_file: StudyFile) -> optuna.pruners.BasePruner:
    """The study file's pruner; steps are epochs. (Warmup protection is the runner's job.)"""
    cfg = study_file.study.pruner
    if cfg.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials,
                                           n_warmup_steps=cfg.n_warmup_steps,
                                           interval_steps=cfg.interval_steps)
    if cfg.type == "percentile":
        return optuna.pruners.PercentilePruner(cfg.percentile, n_startup_trials=cfg.n_startup_trials,
                                               n_warmup_steps=cfg.n_warmup_steps,
                                               interval_steps=cfg.interval_steps)
    if cfg.type == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=cfg.min_resource,
                                                      reduction_factor=cfg.reduction_factor)
    if cfg.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.min_resource,
                                              max_resource=study_file.model.epochs,
                                              reduction_factor=cfg.reduction_factor)
    return optuna.pruners.NopPruner()


def load_data(study_file: StudyFile) -> Splits:
    """The study's train/validation/test split, as its ``[data]`` section describes it
    (relative paths are resolved against the study file's folder)."""
    d = study_file.data
    source: dict[str, Any] = {"base_dir": Path(study_file.base_dir) if study_file.base_dir else None}
    if d.dataset == "synthetic":
        source.update(n=d.n, d=d.d, classes=d.classes, difficulty=d.difficulty)
    if d.target is not None:
        source["target"] = d.target
    if d.delimiter is not None:
        source["delimiter"] = d.delimiter
    with _naming_the_study_file(study_file):
        return load_splits(d.dataset, val_size=d.val_size, test_size=d.test_size, seed=d.seed,
                           dtype=study_file.model.dtype, standardize=d.standardize, **source)


def check_data_file(study_file: StudyFile) -> Path | None:
    """The data file the study file names, checked to exist and to have a supported format
    without reading it (``tuner check --no-data``); ``None`` for a bundled or synthetic set."""
    d = study_file.data
    if d.is_builtin() or d.dataset == "synthetic":
        return None
    with _naming_the_study_file(study_file):
        return data_file(d.dataset, Path(study_file.base_dir) if study_file.base_dir else None)


@contextlib.contextmanager
def _naming_the_study_file(study_file: StudyFile) -> Iterator[None]:
    """Data errors name the study file and section, as config errors do."""
    try:
        yield
    except DataError as exc:
        where = f"data.{exc.key}" if exc.key else "[data]"
        raise DataError(f"{study_file.source}: {where}: {exc.message}", hint=exc.hint,
                        key=exc.key) from None


MIN_VALIDATION = 50
"""Fewer validation examples than this: the metric moves in steps of more than 2 %, and trials
are ranked mostly by noise (a warning)."""


def space_warnings(study_file: StudyFile, n_train: int | None, n_val: int | None = None) -> list[str]:
    """Warnings about a valid study file whose search space probably does not do what was
    meant on a training set of ``n_train`` examples and a validation set of ``n_val``
    (``tuner check``, the first run of a study; ``None``: not loaded, those checks are skipped):

    * a validation set of fewer than :data:`MIN_VALIDATION` examples ranks trials by noise;

    * a batch size larger than the training set trains with one full batch per epoch (and its
      peak lr is scaled for that batch), the same configuration as ``batch_size = n_train``;
    * a ``base_batch_size`` larger than the training set: every batch is below it, so scaling
      can only lower the learning rate, and ``lr`` is the rate of a batch that cannot exist;
    * ``warmup_from_unscaled = true`` with no warmup does nothing;
    * a space whose every key is fixed searches nothing;
    * a pruner whose settings keep it from ever acting (:func:`_idle_pruner`)."""
    general = study_file.space.general
    where = study_file.source
    found: list[str] = []
    space = study_file.space
    dims = [*general.values(), *(d for group in (*space.optimizers.values(), *space.decays.values())
                                 for d in group.values())]
    n_trials = study_file.study.n_trials
    if n_trials > 1 and all(len(_extremes(d)) == 1 for d in dims):
        found.append(
            f"{where}: space: every key is fixed, so the {n_trials} trials train one configuration "
            f"with {n_trials} seeds (a measure of seed noise, not a search); make a key a list or "
            f"a range to search it")
    if n_val is not None and 0 < n_val < MIN_VALIDATION and study_file.study.metric == "val_accuracy":
        found.append(
            f"{where}: data: the validation set has {n_val} examples: val_accuracy moves in "
            f"steps of {1 / n_val:.3f}, so trials are ranked mostly by noise and the best one's "
            f"value flatters it; use more data, or a larger data.val_size (now "
            f"{study_file.data.val_size:g}), if the data allows")
    dim = general.get("batch_size")
    if dim is not None and n_train is not None:
        too_big = sorted({int(b) for b in _extremes(dim) if int(b) > n_train})
        if too_big:
            what = ("up to " + str(int(dim.high)) if dim.kind == "range"
                    else ", ".join(map(str, too_big)))
            found.append(
                f"{where}: space.batch_size: {what} is larger than the training set ({n_train} "
                f"examples): such a trial makes one full-batch update per epoch, the same as "
                f"batch_size = {n_train} (its peak lr is scaled for the batch used), so the "
                f"sampler spends trials on duplicates; keep batch_size <= {n_train}")
    base = general.get("base_batch_size")
    bases = _extremes(base) if base is not None else [P.PARAMS["base_batch_size"].default]
    rules = _extremes(general["batch_scaling"]) if "batch_scaling" in general else ["default"]
    too_big = sorted({int(b) for b in bases if n_train is not None and int(b) > n_train})
    if too_big and any(rule != "none" for rule in rules):
        what = ("up to " + str(int(base.high)) if base is not None and base.kind == "range"
                else ", ".join(map(str, too_big)))
        found.append(
            f"{where}: space.base_batch_size: {what}{'' if base is not None else ' (the default)'}"
            f" is larger than the training set ({n_train} examples): every batch is smaller, so "
            f"batch scaling only lowers the learning rate below lr; set base_batch_size to a "
            f"batch size you train with")
    unscaled, warmup = general.get("warmup_from_unscaled"), general.get("warmup_epochs")
    if (unscaled is not None and unscaled.kind == "fixed" and unscaled.value
            and (warmup is None or (warmup.kind == "fixed" and not warmup.value))):
        found.append(f"{where}: space.warmup_from_unscaled: true does nothing without a warmup "
                     f"(warmup_epochs is 0)")
    reg = general.get("reg")
    if (reg is not None and _extremes(reg) != [0.0] and space.optimizer_choices
            and set(space.optimizer_choices) <= P.DECOUPLED_DECAY_OPTIMIZERS):
        only = " and ".join(sorted(space.optimizer_choices))
        found.append(f"{where}: reg: never used: {only} decays the weights itself (weight_decay) "
                     f"and adds no L2 term to its gradient; remove reg, or search weight_decay")
    idle = _idle_pruner(study_file)
    if idle:
        fix = "raise model.epochs" if study_file.model.epochs == 1 else "lower it"
        found.append(f"{where}: study.pruner: {idle}, so no trial is ever pruned; {fix}, or "
                     f"set type = \"none\" to say so")
    return found


def _idle_pruner(study_file: StudyFile) -> str | None:
    """Why the pruner can never stop a trial, or ``None``. It is asked after epochs
    ``1 .. epochs-1``: median/percentile from step ``n_warmup_steps`` on; successive
    halving/hyperband from step ``min_resource`` on."""
    cfg, epochs = study_file.study.pruner, study_file.model.epochs
    if cfg.type == "none":
        return None
    if epochs == 1:
        return "model.epochs = 1 leaves no epoch to decide after"
    if cfg.type in ("median", "percentile"):
        if cfg.n_warmup_steps >= epochs:
            return f"n_warmup_steps = {cfg.n_warmup_steps} is not below model.epochs = {epochs}"
    elif cfg.min_resource >= epochs:
        return f"min_resource = {cfg.min_resource} is not below model.epochs = {epochs}"
    return None


def _extremes(dim: Any) -> list[Any]:
    """The values a dimension can take, or a range's two ends."""
    return ([dim.value] if dim.kind == "fixed" else list(dim.choices) if dim.kind == "choice"
            else [dim.low, dim.high])


def study_exists(storage: BufferedStorage, name: str) -> bool:
    """Whether a study named ``name`` is in ``storage``."""
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return False
    return True


def data_summary(splits: Splits) -> dict[str, Any]:
    """Sizes of the study's split (stored as ``tuner.data``; views need ``n_train`` to rebuild
    each trial's learning-rate schedule without loading the data)."""
    return {"description": splits.describe(), "n_train": len(splits.y_train),
            "n_val": len(splits.y_val), "n_test": len(splits.y_test),
            "n_features": splits.n_features, "n_classes": splits.n_classes}


def derive_seed(*parts: int) -> int:
    """A 32-bit seed derived from integers (NumPy ``SeedSequence``), stable across platforms."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def trial_seed(study_seed: int, trial: FrozenTrial) -> int:
    """Training seed of a trial: from the study seed and the number of the trial it retries
    (its own number if it is not a retry), so a retry trains exactly like the original."""
    root = trial.system_attrs.get("failed_trial", trial.number)
    return derive_seed(study_seed, root)


def _storage_flag(storage: BufferedStorage) -> tuple[str, str]:
    """For a follow-up command hint about ``storage``: `` --storage URL`` (``""`` where the
    command finds it by itself) and, for a URL with a password, `` (first `export ...`)``, said
    once at the end of the hint (else ``""``)."""
    from tuner.storage.urls import storage_flag, storage_note

    url = storage.backend.engine.url.render_as_string(hide_password=False)
    note = storage_note(url)
    return storage_flag(url), f" {note}" if note else ""


def _where(storage: BufferedStorage) -> str:
    """Which storage, for "no study named ..." (``SQLite /abs/tuner.db``, never a password)."""
    engine = getattr(getattr(storage, "backend", None), "engine", None)
    if engine is None:
        return "this storage"
    from tuner.storage.urls import describe

    return describe(engine.url.render_as_string(hide_password=False))


def open_study(study_file: StudyFile, storage: BufferedStorage, *, sampler_seed: int | None = None,
               create: bool = True, edited_hint: str | None = None) -> optuna.Study:
    """Create the study (first use) or load it, and check that it matches the study file
    (:func:`check_existing_study`). A run records the file once its data passed too
    (:func:`record_study_file`)."""
    name = study_file.study.name
    sampler = make_sampler(study_file, study_file.study.seed if sampler_seed is None else sampler_seed)
    existing = _study_names(storage)
    if name not in existing and not create:
        raise StudyNotFoundError(f"no study named {name!r} in {_where(storage)}")
    if name in existing:
        check_existing_study(study_file, storage, edited_hint=edited_hint)
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                pruner=make_pruner(study_file), direction=study_file.direction,
                                load_if_exists=True)
    attrs = study.user_attrs
    if ATTR_METRIC not in attrs:
        study.set_user_attr(ATTR_CONFIG, study_file.to_json())
        study.set_user_attr(ATTR_SPACE, study_file.space.fingerprint())
        study.set_user_attr(ATTR_METRIC, study_file.study.metric)
        study.set_user_attr(ATTR_VERSION, __version__)
        with warnings.catch_warnings():  # experimental in Optuna 5.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([study_file.study.metric])  # optuna-dashboard's "Objective 0"
    return study


def record_study_file(study: optuna.Study, study_file: StudyFile) -> None:
    """Note that ``study`` runs trials under ``study_file`` now: warn (once per edit) when it
    differs from the file the study last ran, and keep an edited file's training set-up, which
    replays of its trials need. Called once a run is sure to train (its data checked)."""
    name = study_file.study.name
    attrs = study.user_attrs
    if attrs.get(ATTR_CONFIG) and ATTR_METRIC in attrs:
        # said once per edit: against the file the study last ran, not the first one forever
        last = attrs.get(ATTR_LAST_FILE) or attrs[ATTR_CONFIG]
        changed = changed_keys(json.loads(last)["raw"], study_file.raw)
        if changed:
            shown = "; ".join(changed[:6]) + (f"; {len(changed) - 6} more" if len(changed) > 6 else "")
            ran = "last ran" if ATTR_LAST_FILE in attrs else "was created with"
            log.warning("%s differs from the file study %r %s (%s): its new trials join the old "
                        "ones in one study (to compare them apart, run with --study-name NEW)",
                        study_file.source, name, ran, shown)
            study.set_user_attr(ATTR_LAST_FILE, study_file.to_json())
        digest = training_digest(study_file)
        if (digest != training_digest(StudyFile.from_json(attrs[ATTR_CONFIG]))
                and ATTR_FILE_PREFIX + digest not in attrs):
            study.set_user_attr(ATTR_FILE_PREFIX + digest, study_file.to_json())


def training_digest(study_file: StudyFile) -> str:
    """A short digest of what trains a trial besides its configuration: the ``[data]`` and
    ``[model]`` sections as written, and the folder data paths are relative to."""
    raw = study_file.public_raw()
    blob = json.dumps({"data": raw.get("data", {}), "model": raw.get("model", {}),
                       "base_dir": study_file.base_dir}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def data_digest(study_file: StudyFile) -> str | None:
    """A short digest (SHA-256) of the bytes of the data file the study file names, or ``None``
    for a bundled or synthetic set (its data follows from the study file itself). A data file
    edited in place keeps its name: this tells its versions apart (so does a copy that differs
    only in its bytes, e.g. its line endings)."""
    path = check_data_file(study_file)
    if path is None:
        return None
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:12]


def record_data_digest(study: optuna.Study, digest: str | None, source: str) -> None:
    """Note that ``study`` trains on the data file with ``digest`` now, warning when its last
    run trained on other contents of it (the trials of both would be ranked together)."""
    if digest is None:
        return
    last = study.user_attrs.get(ATTR_DATA_FILE)
    if last == digest:
        return
    if last is not None:
        log.warning("the data file of %s changed since study %r last trained on it (its bytes "
                    "differ): new trials join trials scored on the old data in one study (to "
                    "compare them apart, run with --study-name NEW)", source, study.study_name)
    study.set_user_attr(ATTR_DATA_FILE, digest)


def changed_data(trial: FrozenTrial, study_file: StudyFile) -> str | None:
    """Why ``trial`` cannot be retrained on the same data now (its data file's contents
    changed since it trained), else ``None``."""
    then = trial.user_attrs.get(ATTR_DATA_DIGEST)
    if then is None:
        return None
    now = data_digest(study_file)
    if now is None or now == then:
        return None
    return (f"the data file {study_file.data.dataset} changed since trial #{trial.number} trained "
            f"on it (contents {then}, now {now})")


def trial_study_file(study: optuna.Study, trial: FrozenTrial, study_file: StudyFile) -> StudyFile:
    """The study file ``trial`` trained under: ``study_file`` (the one the study was created
    with), or the edited one a later run stored (``model.epochs``, the data, ... may differ)."""
    digest = trial.user_attrs.get(ATTR_TRAINING)
    if digest is None or digest == training_digest(study_file):
        return study_file
    text = study.user_attrs.get(ATTR_FILE_PREFIX + digest)
    if text is None:
        log.warning("trial #%d trained under a study file that study %r does not hold; using "
                    "the file it was created with", trial.number, study.study_name)
        return study_file
    return StudyFile.from_json(text)


def check_existing_study(study_file: StudyFile, storage: BufferedStorage, *,
                         edited_hint: str | None = None) -> None:
    """Refuse to run ``study_file`` on the existing study of the same name when that would go
    wrong: a study not created by tuner that already has trials (its trials would count toward
    the budget and could be reported as the best), a multi-objective study, one that optimizes
    in the other direction or another metric, or one whose trials used parameter distributions
    Optuna would refuse next to the file's search space (e.g. a choice list that was edited:
    every new trial would fail; ``edited_hint`` says what to do then), unless the study has
    spent its budget."""
    from tuner.storage import describe

    name = study_file.study.name
    metric, direction = study_file.study.metric, study_file.direction
    where = describe(storage.backend.engine.url.render_as_string(hide_password=False))
    study_id = storage.get_study_id_from_name(name)
    directions = [d.name.lower() for d in storage.get_study_directions(study_id)]
    attrs = storage.get_study_user_attrs(study_id)
    source = study_file.source
    flag, note = _storage_flag(storage)
    hint = new_study_hint(study_file, storage)
    named_by = f"--study-name {name}" if "name" in study_file.overrides else f"{source}: study.name"
    prefix = f"{named_by}: a study named {name!r} already exists in {where}"
    if len(directions) != 1:
        raise ConfigError(f"{prefix} with {len(directions)} objectives ({', '.join(directions)}); "
                          f"a tuner study has one ({metric}, {direction})", hint=hint)
    if ATTR_METRIC not in attrs:
        n = _count_trials(storage, study_id)
        if n:
            raise ConfigError(f"{prefix} and was not created by tuner ({n} trial(s), "
                              f"{directions[0]}): its trials would count toward this study's budget "
                              "and could be reported as its best", hint=hint)
    elif attrs[ATTR_METRIC] != metric:
        raise ConfigError(f"{source}: study.metric: the study {name!r} already exists with metric "
                          f"{attrs[ATTR_METRIC]!r}, not {metric!r}", hint=hint)
    if directions[0] != direction:
        raise ConfigError(f"{prefix} and is set to {directions[0]}, but study.metric = "
                          f"{metric!r} is to {direction}", hint=hint)
    from tuner.storage.coordination import state_counts

    counts = state_counts(storage, study_id)
    finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    if finished >= study_file.study.n_trials:
        return  # its budget is spent: no trial will be sampled from this search space
    if metric == "val_loss" and finished:
        ran, now = _losses_run(attrs), _losses(study_file)
        if len(ran | now) > 1:
            model_keys = tuple(study_file.raw.get("model", {}))
            raise ConfigError(
                f"{source}: {study_file.space.key_path('loss', model_keys)}: the study {name!r} "
                f"ranks its trials by val_loss, and they were scored with {' and '.join(sorted(ran))} "
                f"loss; {' and '.join(sorted(now - ran))} loss values are on another scale, so new "
                "trials could not be ranked with them", hint=hint)
    problems = study_file.space.incompatible_with(_stored_distributions(storage, study_id))
    if problems:
        model_keys = tuple(study_file.raw.get("model", {}))
        lines = "; ".join(f"{study_file.space.key_path(param, model_keys)}: {why}"
                          for param, why in problems)
        raise ConfigError(f"{source}: {lines}: the study {name!r} in {where} cannot take this "
                          "search space (its trials would all fail)",
                          hint=edited_hint or f"run this file as a new study: tuner run "
                                              f"{source} --study-name NEW{flag} (or restore the "
                                              f"old values){note}")


def new_study_hint(study_file: StudyFile, storage: BufferedStorage) -> str:
    """What to do when ``study_file`` cannot run on the existing study of its name."""
    flag, note = _storage_flag(storage)
    return (f"run this study file under a new name: tuner run {study_file.source} --study-name "
            f"NEW{flag} (or delete the old study first: tuner delete {study_file.study.name}"
            f"{flag}){note}")


def _losses(study_file: StudyFile) -> set[str]:
    """The losses ``study_file`` trains with."""
    return set(study_file.space.losses()) or {P.PARAMS["loss"].default}


def _losses_run(attrs: dict[str, Any]) -> set[str]:
    """The losses of every study file a study has run with (the one it was created with and
    the edited ones it stored)."""
    texts = [text for key, text in attrs.items()
             if key == ATTR_CONFIG or key.startswith(ATTR_FILE_PREFIX)]
    return {loss for text in texts for loss in _losses(StudyFile.from_json(text))}


def check_same_data_shape(study_file: StudyFile, storage: BufferedStorage, stored: dict[str, Any] | None,
                          splits: Splits, finished: int) -> None:
    """Refuse data with another number of features or classes than the data a study's ``finished`` trials
    were scored on (``stored``: its ``tuner.data`` sizes): their values cannot be ranked with
    new ones (other data of the same shape is a warning, :func:`record_data_digest`)."""
    if not stored or not finished:
        return
    was = (stored.get("n_features"), stored.get("n_classes"))
    now = (splits.n_features, splits.n_classes)
    if None in was or was == now:
        return
    raise ConfigError(
        f"{study_file.source}: data: the study {study_file.study.name!r} has {finished} trial(s) "
        f"scored on data with {was[0]} features and {was[1]} classes; {splits.name} has "
        f"{now[0]} features and {now[1]} classes: new trials could not be ranked with them",
        hint=new_study_hint(study_file, storage))


def _count_trials(storage: BufferedStorage, study_id: int) -> int:
    import sqlalchemy
    from optuna.storages._rdb import models

    trials = models.TrialModel.__table__
    with storage.backend.engine.connect() as conn:
        return int(conn.execute(sqlalchemy.select(sqlalchemy.func.count())
                                .where(trials.c.study_id == study_id)).scalar() or 0)


def _stored_distributions(storage: BufferedStorage, study_id: int
                          ) -> dict[str, list[optuna.distributions.BaseDistribution]]:
    """Every distinct distribution each parameter had in the study's trials (one query)."""
    import sqlalchemy
    from optuna.storages._rdb import models

    params, trials = models.TrialParamModel.__table__, models.TrialModel.__table__
    with storage.backend.engine.connect() as conn:
        rows = conn.execute(sqlalchemy.select(params.c.param_name, params.c.distribution_json)
                            .join(trials, trials.c.trial_id == params.c.trial_id)
                            .where(trials.c.study_id == study_id)
                            .group_by(params.c.param_name, params.c.distribution_json)).all()
    stored: dict[str, list[optuna.distributions.BaseDistribution]] = {}
    for name, text in rows:
        stored.setdefault(name, []).append(optuna.distributions.json_to_distribution(text))
    return stored


def changed_keys(old: dict[str, Any], new: dict[str, Any],
                 sections: tuple[str, ...] = ("data", "model", "space")) -> list[str]:
    """``key: old -> new`` for every key of ``sections`` that differs between two raw study
    files (the keys that change what a trial trains; ``[study]`` may change between runs)."""
    unset = object()

    def show(value: Any) -> str:
        return "(unset)" if value is unset else json.dumps(value)

    def diff(a: Any, b: Any, key: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [line for k in sorted(a.keys() | b.keys())
                    for line in diff(a.get(k, unset), b.get(k, unset), f"{key}.{k}")]
        return [] if a == b else [f"{key}: {show(a)} -> {show(b)}"]

    return [line for s in sections for line in diff(old.get(s, {}), new.get(s, {}), s)]


def _name_in_file(path: str) -> str | None:
    """``study.name`` of a readable study file, else ``None``."""
    import tomllib
    from pathlib import Path

    try:
        name = tomllib.loads(Path(path).read_text())["study"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) else None


def load_study(name: str, storage: BufferedStorage) -> tuple[optuna.Study, StudyFile | None]:
    """Load an existing study and the study file stored with it (``None`` for studies that
    were not created by tuner)."""
    names = _study_names(storage)
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        hint = None
        if name.endswith(".toml"):  # a study file where a study name goes
            in_file = _name_in_file(name)
            hint = ("this command takes a study's name (study.name in its file), not the file"
                    + (f": {in_file}" if in_file else ""))
        elif nights := nights_of(name, storage):
            hint = (f"{name!r} is a nightly sweep; its nights are the studies {name}-YYYY-MM-DD "
                    f"(latest: {nights[-1]}); every night: tuner history {name}"
                    f"{''.join(_storage_flag(storage))}")
        raise StudyNotFoundError(f"no study named {name!r} in {_where(storage)} (studies: {known})",
                                 hint=hint)
    study = optuna.load_study(study_name=name, storage=storage)
    text = study.user_attrs.get(ATTR_CONFIG)
    study_file = StudyFile.from_json(text) if text else None
    if study_file is not None:
        study.sampler = make_sampler(study_file, study_file.study.seed)
        study.pruner = make_pruner(study_file)
    return study, study_file


def _study_names(storage: BufferedStorage) -> set[str]:
    return {s.study_name for s in storage.get_all_studies()}


def nights_of(base: str, storage: BufferedStorage) -> list[str]:
    """The names of the night studies of nightly sweep ``base``, oldest first."""
    from tuner.nightly.nights import list_nights  # (nightly builds on this module)

    return [night.name for night in list_nights(storage, base)]


def is_multi_objective(study: optuna.Study) -> bool:
    """A study with several objectives (never a tuner study; one made with Optuna directly)."""
    return len(study.directions) > 1


def metric_direction(study: optuna.Study) -> tuple[str, str]:
    """``(metric, direction)``: ``("values", "minimize, maximize")`` for a multi-objective
    study, ``("value", ...)`` for another single-objective study not made by tuner."""
    if is_multi_objective(study):
        return "values", ", ".join(d.name.lower() for d in study.directions)
    metric = study.user_attrs.get(ATTR_METRIC, "value")
    return metric, METRICS.get(metric, study.direction.name.lower())


def flat_params(trial: FrozenTrial, study_file: StudyFile | None) -> dict[str, Any]:
    """The training configuration of a trial as the study file gives it: searched and fixed
    keys (the ``config`` attribute, or rebuilt); engine defaults are not filled in, except the
    batch-scaling rule of a configuration stored before it was always recorded ("none", what it
    trained with: :func:`tuner.params.stored_config`)."""
    from tuner.params import stored_config

    config = trial.user_attrs.get("config")
    if config is not None:
        return stored_config(config)
    if study_file is not None and trial.params:
        try:
            return study_file.space.params_from_optuna(trial.params)
        except ValueError:  # a trial from an older version of the space
            pass
    return dict(trial.params)


def resolved_params(trial: FrozenTrial, study_file: StudyFile | None) -> dict[str, Any]:
    """:func:`flat_params` with the engine's defaults filled in (``decay = "constant"``,
    ``loss = "softmax"``, ...): every key the trial trained with. Falls back to
    :func:`flat_params` for configurations the catalogue does not accept (foreign studies)."""
    from tuner.params import resolve

    params = flat_params(trial, study_file)
    try:
        return resolve(params)
    except (ValueError, KeyError, TypeError):
        return params
