"""The conditional search space (tuner.space): fixed / choice / range keys, optimizer and decay
parameters suggested only where they apply, Optuna parameter names, and the round trips between
Optuna parameters and training configurations."""

from __future__ import annotations

import tomllib

import optuna
import pytest

from tuner import params as P
from tuner.config import load_study_file, parse_study_dict
from tuner.space import Dimension, SearchSpace

from conftest import STUDIES

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # TPE group

# Every optimizer and decay, with every one of their parameters searched.
FULL = """
[study]
name = "full"
n_trials = 10

[data]
dataset = "digits"

[model]
epochs = 10
loss = ["softmax", "svm"]
reg = {low = 1e-6, high = 1e-2, log = true}

[space]
optimizer = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"]
lr = {low = 1e-4, high = 1.0, log = true}
batch_size = {low = 16, high = 256, step = 16}
base_batch_size = 128
batch_scaling = ["none", "linear", "sqrt"]
warmup_epochs = {low = 0, high = 3}
warmup_start_factor = [0.0, 0.1]
decay = ["constant", "step", "cosine", "linear", "inv_sqrt"]
init_scale = 1e-3

[space.optimizers.momentum]
momentum = {low = 0.5, high = 0.99}
dampening = [0.0, 0.1]

[space.optimizers.nesterov]
momentum = {low = 0.5, high = 0.99}

[space.optimizers.adagrad]
lr_decay = [0.0, 1e-3]
initial_accumulator_value = {low = 0.0, high = 0.1}
eps = 1e-10

[space.optimizers.rmsprop]
alpha = {low = 0.9, high = 0.999}
momentum = [0.0, 0.5]
centered = [false, true]
eps = {low = 1e-10, high = 1e-6, log = true}

[space.optimizers.adam]
beta1 = {low = 0.8, high = 0.95}
beta2 = [0.99, 0.999]
eps = {low = 1e-10, high = 1e-6, log = true}
amsgrad = [false, true]

[space.optimizers.adamw]
beta1 = {low = 0.8, high = 0.95}
beta2 = [0.99, 0.999]
weight_decay = {low = 1e-4, high = 1.0, log = true}
amsgrad = false

[space.decays.step]
gamma = {low = 0.1, high = 0.5}
milestones = [0.3, 0.6, 0.9]

[space.decays.cosine]
min_lr_factor = {low = 0.0, high = 0.1}

[space.decays.linear]
min_lr_factor = 0.0

[space.decays.inv_sqrt]
timescale_epochs = {low = 0.5, high = 2.0}
"""


@pytest.fixture(scope="module")
def full() -> SearchSpace:
    return parse_study_dict(tomllib.loads(FULL), source="full.toml").space


def sample(space: SearchSpace, n: int, sampler: optuna.samplers.BaseSampler):
    """``n`` (optuna params, training config) pairs from a real in-memory Optuna study."""
    study = optuna.create_study(sampler=sampler, direction="maximize")
    out = []
    for i in range(n):
        trial = study.ask()
        config = space.suggest(trial)
        out.append((dict(trial.params), config))
        study.tell(trial, float(i % 7) / 7)  # something for TPE to model
    return out


@pytest.fixture(scope="module")
def samples(full):
    random = sample(full, 400, optuna.samplers.RandomSampler(seed=1))
    tpe = sample(full, 80, optuna.samplers.TPESampler(seed=2, n_startup_trials=10, multivariate=True,
                                                      group=True, constant_liar=True))
    return random + tpe


def test_every_optimizer_and_decay_is_sampled(samples):
    assert {c["optimizer"] for _, c in samples} == set(P.OPTIMIZERS)
    assert {c["decay"] for _, c in samples} == set(P.DECAYS)


def test_optimizer_parameters_appear_only_where_they_apply(samples):
    for optuna_params, config in samples:
        opt = config["optimizer"]
        has = set(config)
        assert ("momentum" in has) == (opt in ("momentum", "nesterov", "rmsprop")), config
        assert ("dampening" in has) == (opt == "momentum"), config
        assert ({"beta1", "beta2", "amsgrad"} <= has) == (opt in ("adam", "adamw")), config
        assert not ({"beta1", "beta2", "amsgrad"} & has) or opt in ("adam", "adamw"), config
        assert ("weight_decay" in has) == (opt == "adamw"), config
        assert ({"alpha", "centered"} & has == {"alpha", "centered"}) == (opt == "rmsprop"), config
        assert ("lr_decay" in has) == (opt == "adagrad"), config
        assert ("eps" in has) == (opt in ("adagrad", "rmsprop", "adam")), config  # not set for adamw
        assert ("reg" in has) == (opt != "adamw"), config  # decoupled weight decay: no L2 term
        # Optuna names: "<optimizer>.<key>" for optimizer parameters, only for the chosen one
        prefixed = {name.split(".")[0] for name in optuna_params if "." in name}
        assert prefixed <= {opt, config["decay"]}, optuna_params


def test_decay_parameters_appear_only_with_their_decay(samples):
    for optuna_params, config in samples:
        decay = config["decay"]
        has = set(config)
        assert ({"gamma", "milestones"} <= has) == (decay == "step"), config
        assert ("min_lr_factor" in has) == (decay in ("cosine", "linear")), config
        assert ("timescale_epochs" in has) == (decay == "inv_sqrt"), config
        if decay == "step":
            assert "step.gamma" in optuna_params and "step.milestones" not in optuna_params  # fixed
        if decay == "cosine":
            assert "cosine.min_lr_factor" in optuna_params
        if decay == "linear":
            assert "linear.min_lr_factor" not in optuna_params  # fixed: not an Optuna parameter


def test_fixed_keys_are_not_optuna_parameters(samples, full):
    fixed = {d.name for d in full.dimensions() if d.kind == "fixed"}
    assert {"base_batch_size", "init_scale", "adagrad.eps", "adamw.amsgrad", "step.milestones",
            "linear.min_lr_factor"} <= fixed
    for optuna_params, config in samples:
        assert not fixed & set(optuna_params)
        assert config["base_batch_size"] == 128 and config["init_scale"] == 1e-3


def test_every_sampled_configuration_is_valid_for_the_engine(samples):
    for _, config in samples:
        resolved = P.resolve(config)  # raises on a key that does not apply or a bad value
        assert resolved["batch_size"] % 16 == 0 and 16 <= resolved["batch_size"] <= 256


def test_optuna_params_round_trip(samples, full):
    for optuna_params, config in samples:
        assert full.params_from_optuna(optuna_params) == config
        assert full.check_optuna_params(optuna_params) == []


@pytest.mark.parametrize("params, reason", [
    ({"optimizer": "adam", "lr": 0.01, "batch_size": 32, "batch_scaling": "none",
      "warmup_epochs": 1.0, "warmup_start_factor": 0.0, "decay": "constant", "loss": "softmax",
      "reg": 1e-4, "adam.beta1": 0.9, "adam.beta2": 0.999, "adam.eps": 1e-8,
      "adam.amsgrad": False, "momentum.momentum": 0.9},
     "momentum.momentum does not apply to this configuration"),
    ({"optimizer": "adam", "lr": 0.01},  # a parameter this configuration needs is missing
     "batch_size is missing (this configuration needs it: int [16, 256] step 16)"),
    ({"optimizer": "sgd", "lr": 10.0}, "lr=10.0 is outside log float [0.0001, 1]"),
    ({"optimizer": "lion"}, "optimizer='lion' is not one of 'sgd'"),
    ({"learning_rate": 0.1}, "learning_rate is not a parameter of this search space"),
    ({"base_batch_size": 128}, "base_batch_size is fixed to 128 here"),
    ({"batch_size": 17}, "batch_size=17 is outside int [16, 256] step 16"),
])
def test_check_optuna_params_explains_what_is_wrong(full, params, reason):
    reasons = full.check_optuna_params(params)
    assert reasons and any(reason in r for r in reasons), reasons


def test_params_from_optuna_fills_fixed_keys(full):
    params = {"optimizer": "adamw", "lr": 0.01, "batch_size": 64, "batch_scaling": "sqrt",
              "warmup_epochs": 0.5, "warmup_start_factor": 0.1, "decay": "linear", "loss": "svm",
              "adamw.beta1": 0.9, "adamw.beta2": 0.99, "adamw.weight_decay": 0.01}
    config = full.params_from_optuna(params)
    assert config == {"optimizer": "adamw", "lr": 0.01, "batch_size": 64, "base_batch_size": 128,
                      "batch_scaling": "sqrt", "warmup_epochs": 0.5, "warmup_start_factor": 0.1,
                      "decay": "linear", "loss": "svm", "init_scale": 1e-3, "beta1": 0.9,
                      "beta2": 0.99, "weight_decay": 0.01, "amsgrad": False, "min_lr_factor": 0.0}
    assert "reg" not in config  # adamw


def test_round_trip_through_a_real_sqlite_study(tmp_path):
    """Parameters stored by Optuna in a database come back as the same configuration."""
    sf = load_study_file(STUDIES / "digits.toml")
    storage = f"sqlite:///{tmp_path / 'rt.db'}"
    study = optuna.create_study(storage=storage, study_name="rt",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    configs = []
    for _ in range(30):
        trial = study.ask()
        configs.append(sf.space.suggest(trial))
        study.tell(trial, 0.5)
    stored = optuna.load_study(study_name="rt", storage=storage).trials
    for trial, config in zip(stored, configs, strict=True):
        assert sf.space.params_from_optuna(trial.params) == config
        assert sf.space.check_optuna_params(trial.params) == []


def test_reg_is_never_suggested_for_adamw():
    sf = load_study_file(STUDIES / "digits.toml")
    for _, config in sample(sf.space, 300, optuna.samplers.RandomSampler(seed=3)):
        assert ("reg" in config) == (config["optimizer"] != "adamw")


def test_rows_say_when_each_parameter_applies():
    rows = {name: (when, values) for name, when, values in
            load_study_file(STUDIES / "digits.toml").space.rows()}
    assert rows["reg"][0] == "optimizer is not adamw"
    assert rows["momentum.momentum"][0] == "optimizer == momentum"
    assert rows["adam.beta1"] == ("optimizer == adam", "float [0.8, 0.95]")
    assert rows["adamw.weight_decay"] == ("optimizer == adamw", "log float [0.0001, 1]")
    assert rows["step.gamma"][0] == "decay == step"
    assert rows["step.milestones"][1] == "[0.5, 0.75]"
    assert rows["lr"] == ("always", "log float [0.0001, 3]")
    assert rows["batch_size"] == ("always", "one of 16, 32, 64, 128, 256")


def test_fixed_choice_and_range_dimensions(full):
    dims = {d.name: d for d in full.dimensions()}
    assert dims["base_batch_size"].kind == "fixed"
    assert dims["batch_scaling"].kind == "choice"
    assert dims["lr"].kind == "range" and dims["lr"].log and not dims["lr"].integer
    bs = dims["batch_size"]
    assert (bs.kind, bs.integer, bs.low, bs.high, bs.step) == ("range", True, 16, 256, 16)
    assert bs.contains(48) and not bs.contains(50) and not bs.contains(272) and not bs.contains(True)
    assert dims["warmup_epochs"].contains(1.5) and not dims["warmup_epochs"].contains(-0.1)
    assert dims["adam.amsgrad"].contains(True) and not dims["adam.amsgrad"].contains(1.5)
    # booleans as the study file spells them, in `tuner check` and in warm-start reasons
    assert dims["adam.amsgrad"].describe() == "one of false, true"
    assert dims["adamw.amsgrad"].describe() == "false"


def test_a_one_element_list_is_fixed():
    sf = parse_study_dict(tomllib.loads(FULL.replace('loss = ["softmax", "svm"]', 'loss = ["svm"]')))
    loss = sf.space.general["loss"]
    assert (loss.kind, loss.value) == ("fixed", "svm")


def test_integer_valued_floats_stay_floats_and_ints_stay_ints():
    sf = parse_study_dict(tomllib.loads(FULL.replace("warmup_epochs = {low = 0, high = 3}",
                                                     "warmup_epochs = 2")))
    assert sf.space.general["warmup_epochs"].value == 2.0
    assert isinstance(sf.space.general["warmup_epochs"].value, float)
    assert isinstance(sf.space.general["base_batch_size"].value, int)


def test_fingerprint_is_stable_and_changes_with_the_space():
    a = parse_study_dict(tomllib.loads(FULL)).space.fingerprint()
    assert a == parse_study_dict(tomllib.loads(FULL)).space.fingerprint()
    b = parse_study_dict(tomllib.loads(FULL.replace("high = 0.95}", "high = 0.96}"))).space.fingerprint()
    assert a != b and len(a) == 12


def test_dimension_suggest_uses_optuna_distributions():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    ranged = Dimension("warmup_epochs", "warmup_epochs", "range", low=0.0, high=5.0, step=1.0)
    value = ranged.suggest(trial)
    assert value in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)
    dist = trial.distributions["warmup_epochs"]
    assert isinstance(dist, optuna.distributions.FloatDistribution) and dist.step == 1.0
    assert Dimension("base_batch_size", "base_batch_size", "fixed", value=64).suggest(trial) == 64
    assert "base_batch_size" not in trial.params


def test_a_suggested_configuration_records_its_batch_scaling_rule():
    """The default rule depends on the optimizer (and was "none" for all before): a trial's
    stored config names the rule it trained with, so a replay does not depend on the default."""
    raw = tomllib.loads(FULL.replace('batch_scaling = ["none", "linear", "sqrt"]\n', ""))
    sf = parse_study_dict(raw, source="full.toml")
    seen = {}
    for optimizer in P.OPTIMIZERS:
        trial = optuna.trial.FixedTrial({**_fixed_choices(sf.space, optimizer)})
        config = sf.space.suggest(trial)
        seen[optimizer] = config["batch_scaling"]
    assert seen == P.BATCH_SCALING_DEFAULTS
    assert set(P.BATCH_SCALING_DEFAULTS) == set(P.OPTIMIZERS)
    # a searched or fixed rule is kept as given
    fixed = parse_study_dict(tomllib.loads(FULL.replace(
        'batch_scaling = ["none", "linear", "sqrt"]', 'batch_scaling = "none"')), source="f.toml")
    trial = optuna.trial.FixedTrial(_fixed_choices(fixed.space, "adam"))
    assert fixed.space.suggest(trial)["batch_scaling"] == "none"


def _fixed_choices(space, optimizer):
    """Optuna params that make ``space`` suggest ``optimizer`` (lowest value of every range,
    first choice of every other key)."""
    params = {}
    for dim in [*space.general.values(), *space.optimizers.get(optimizer, {}).values(),
                *space.decays.get("constant", {}).values()]:
        if dim.kind == "choice":
            params[dim.name] = optimizer if dim.key == "optimizer" else (
                "constant" if dim.key == "decay" else dim.choices[0])
        elif dim.kind == "range":
            params[dim.name] = dim.low
    return params


def test_warmup_from_the_unscaled_lr_is_searchable_with_the_batch_size():
    """Goyal et al.'s warmup from the unscaled lr, with ``batch_size`` searched: each trial's
    plan starts its warmup at ``lr`` and reaches ``lr * kappa`` (linear rule)."""
    from tuner.train import make_plan

    raw = tomllib.loads(FULL.replace("warmup_start_factor = [0.0, 0.1]",
                                     "warmup_from_unscaled = [true, false]"))
    space = parse_study_dict(raw, source="full.toml").space
    assert space.general["warmup_from_unscaled"].kind == "choice"
    seen = set()
    for _, config in sample(space, 200, optuna.samplers.RandomSampler(seed=5)):
        P.resolve(config)  # valid for the engine
        seen.add(config["warmup_from_unscaled"])
        if config["warmup_from_unscaled"] and config["warmup_epochs"] >= 1:
            plan = make_plan(P.resolve(config), n_train=1437, epochs=10)
            unscaled = config["lr"] if config["lr"] < plan.peak_lr else 0.0
            assert plan.schedule(0) == pytest.approx(unscaled)
    assert seen == {True, False}
    with pytest.raises(Exception, match="warmup_from_unscaled"):
        parse_study_dict(tomllib.loads(FULL.replace("warmup_start_factor = [0.0, 0.1]",
                                                    'warmup_from_unscaled = "yes"')), source="f")


@pytest.mark.parametrize("space, expected", [
    ('batch_size = [16, 512]\nbase_batch_size = 128',
     ["space.batch_size: 512 is larger than the training set (240"]),
    ('base_batch_size = 256', ["space.base_batch_size: 256 is larger than the training set"]),
    ('', ["space.base_batch_size: 256 (the default) is larger than the training set"]),
    ('batch_scaling = "none"', []),  # no scaling: base_batch_size is not used
    ('base_batch_size = [64, 512]', ["space.base_batch_size: 512 is larger than the training"]),
    ('base_batch_size = {low = 64, high = 512}', ["space.base_batch_size: up to 512 is larger"]),
    ('base_batch_size = [64, 128]', []),
    ('base_batch_size = 64\nwarmup_from_unscaled = true',
     ["space.warmup_from_unscaled: true does nothing without a warmup"]),
    ('base_batch_size = 64\nwarmup_from_unscaled = true\nwarmup_epochs = [0, 1]', []),
    ('base_batch_size = 64', []),
    # reg with adamw alone: adamw adds no L2 term to its gradient
    ('base_batch_size = 64\noptimizer = "adamw"\nreg = {low = 1e-5, high = 1e-2, log = true}',
     ["reg: never used: adamw decays the weights itself (weight_decay)"]),
    ('base_batch_size = 64\noptimizer = ["adamw", "sgd"]\nreg = {low = 1e-5, high = 1e-2, log = true}',
     []),
])
def test_space_warnings_on_a_small_training_set(space, expected):
    from tuner.study import space_warnings

    text = ('[study]\nname = "w"\nn_trials = 5\n[data]\ndataset = "digits"\n[model]\nepochs = 5\n'
            f'[space]\nlr = [0.05, 0.1]\n{space}\n')  # (a space to search)
    if "optimizer" not in space:
        text += 'optimizer = "sgd"\n'

    warnings = space_warnings(parse_study_dict(tomllib.loads(text), source="w.toml"), 240)
    assert len(warnings) == len(expected), warnings
    for text, fragment in zip(warnings, expected, strict=True):
        assert text.startswith("w.toml: ") and fragment in text, text
