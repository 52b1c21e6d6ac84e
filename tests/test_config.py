"""Study files (tuner.config): every error case names the file, the key path and what is
allowed; defaults; overrides; the JSON copy stored with a study; the shipped study files; and the
documentation of every key (docs/study-files.md)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from tuner import params as P
from tuner.cli.run import parse_sets, resolve_train_config
from tuner.config import (
    DataSection,
    ModelSection,
    PrunerConfig,
    RegressionRule,
    ReliabilityConfig,
    SamplerConfig,
    ScheduleSection,
    StudyFile,
    StudySection,
    load_study_file,
    parse_study_dict,
)
from tuner.errors import ConfigError

from conftest import REPO, STUDIES, run_tuner

BASE = """\
[study]
name = "t"
n_trials = 5

[data]
dataset = "digits"

[model]
epochs = 5

[space]
optimizer = ["sgd", "adam"]
lr = {low = 1e-3, high = 0.5, log = true}
"""


def write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_study_file(path)
    return str(info.value)


def edit(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


LR = "lr = {low = 1e-3, high = 0.5, log = true}"

# (id, study file text, key path the message must name, what-is-allowed fragments)
ERROR_CASES = [
    # unknown keys, at every level
    ("unknown-study-key", edit("n_trials = 5", "n_trials = 5\ntrials = 5"), "study.trials",
     ["unknown key", "allowed keys: name, metric, n_trials"]),
    ("misspelt-study-key", edit("n_trials = 5", "n_trial = 5"), "study.n_trial",
     ["unknown key; did you mean n_trials? allowed keys: name"]),
    ("fractional-count", edit('dataset = "digits"', 'dataset = "digits"\nval_size = 1.5'),
     "data.val_size", ["neither a fraction (below 1) nor a count of examples", "(got 1.5)"]),
    ("unknown-space-key", BASE + "learning_rate = 0.1\n", "space.learning_rate",
     ["unknown key", "allowed keys: optimizer, lr, batch_size"]),
    ("unknown-model-key", edit("epochs = 5", "epochs = 5\nlayers = 2"), "model.layers",
     ["unknown key", "epochs, dtype, loss, reg, init_scale"]),
    # a key of another section names its section
    ("space-key-in-model", edit("epochs = 5", "epochs = 5\nwarmup_epochs = 1"), "model.warmup_epochs",
     ["unknown key in [model]; it belongs in [space]; allowed keys: epochs"]),
    ("optimizer-key-in-model", edit("epochs = 5", "epochs = 5\nbeta1 = 0.9"), "model.beta1",
     ["unknown key in [model]; 'beta1' is an optimizer hyperparameter; set it per optimizer in "
      "[space.optimizers.adam]"]),
    ("model-key-in-space", BASE + "epochs = 3\n", "space.epochs",
     ["unknown key in [space]; it belongs in [model]; allowed keys: optimizer"]),
    ("model-key-in-study", edit("n_trials = 5", "n_trials = 5\nepochs = 3"), "study.epochs",
     ["unknown key in [study]; it belongs in [model]"]),
    ("tpe-key-for-random-sampler",
     edit("n_trials = 5", "n_trials = 5\n[study.sampler]\ntype = 'random'\nn_startup_trials = 5"),
     "study.sampler.n_startup_trials", ["does not apply to sampler 'random'; it takes no options"]),
    ("space-typo", BASE + "batchsize = 32\n", "space.batchsize",
     ["unknown key; did you mean batch_size? allowed keys: optimizer, lr"]),
    ("space-other-tools-name", BASE + "learning_rate = 0.1\n", "space.learning_rate",
     ["unknown key; did you mean lr? allowed keys"]),
    ("optimizer-key-typo", BASE + "[space.optimizers.adam]\nbeta_1 = 0.8\n",
     "space.optimizers.adam.beta_1", ["'beta_1' does not apply to optimizer 'adam'; did you mean "
                                      "beta1? it takes: beta1, beta2, eps, amsgrad"]),
    ("optimizer-name-typo", BASE + "[space.optimizers.adma]\nbeta1 = 0.8\n",
     "space.optimizers.adma", ["unknown optimizer; did you mean adam? valid: sgd, momentum"]),
    ("unknown-data-key", edit('dataset = "digits"', 'dataset = "digits"\nshuffle = true'),
     "data.shuffle", ["unknown key", "dataset, target, delimiter, val_size"]),
    ("unknown-pruner-key", edit("n_trials = 5", "n_trials = 5\n[study.pruner]\npatience = 3"),
     "study.pruner.patience", ["unknown key", "type, n_startup_trials, n_warmup_steps"]),
    ("unknown-sampler-key", edit("n_trials = 5", "n_trials = 5\n[study.sampler]\nkind = 'tpe'"),
     "study.sampler.kind", ["unknown key", "type, n_startup_trials, group"]),
    ("unknown-range-key", edit(LR, "lr = {low = 1e-3, high = 0.5, scale = 'log'}"),
     "space.lr.scale", ["allowed keys: low, high, log, step"]),
    ("unknown-optimizer-section", BASE + "[space.optimizers.lion]\nbeta1 = 0.9\n",
     "space.optimizers.lion", ["unknown optimizer", "sgd, momentum, nesterov, adagrad, rmsprop"]),
    ("unknown-decay-section", BASE + "[space.decays.exponential]\ngamma = 0.9\n",
     "space.decays.exponential", ["unknown decay", "constant, step, cosine, linear, inv_sqrt"]),
    # wrong types
    ("wrong-type-n_trials", edit("n_trials = 5", 'n_trials = "five"'), "study.n_trials",
     ["must be a valid integer", "'five'"]),
    ("wrong-type-epochs", edit("epochs = 5", "epochs = 2.5"), "model.epochs", ["integer"]),
    ("wrong-type-lr", edit(LR, 'lr = "fast"'), "space.lr", ["'fast' is not a number in (0, inf)"]),
    ("wrong-type-batch_size", BASE + "batch_size = 1.5\n", "space.batch_size", ["not an integer"]),
    ("wrong-type-choice-item", BASE + 'batch_size = [32, "big"]\n', "space.batch_size[1]",
     ["'big' is not an integer in [1, inf)"]),
    ("wrong-type-log", edit(LR, 'lr = {low = 1e-3, high = 0.5, log = "yes"}'), "space.lr.log",
     ["not true/false"]),
    ("wrong-type-section", edit("n_trials = 5", 'n_trials = 5\nsampler = "tpe"'), "study.sampler",
     ["must be a table ([study.sampler])", "type, n_startup_trials, group"]),
    ("space-not-a-table", 'space = "all"\n' + BASE.split("[space]")[0], "space",
     ["space must be a table ([space])"]),
    ("range-for-a-choice-key", BASE + 'decay = {low = 0, high = 1}\n', "space.decay",
     ["a table ({low, high} range) is not allowed here",
      "'constant', 'step', 'cosine', 'linear', 'inv_sqrt'"]),
    ("range-for-milestones", BASE + 'decay = "step"\n[space.decays.step]\n'
     "milestones = {low = 0.1, high = 0.9}\n", "space.decays.step.milestones",
     ["increasing list of numbers strictly between 0 and 1", "not searchable"]),
    # bounds
    ("low-greater-than-high", edit(LR, "lr = {low = 0.5, high = 1e-3}"), "space.lr",
     ["low (0.5) is greater than high (0.001)"]),
    ("step-does-not-divide", BASE + "batch_size = {low = 16, high = 60, step = 16}\n",
     "space.batch_size.high", ["60 is not low + a multiple of step", "high = 48 or 64"]),
    ("log-with-low-zero", BASE + "reg = {low = 0.0, high = 0.1, log = true}\n", "space.reg.low",
     ["a log range needs low > 0"]),
    ("log-with-negative-low", BASE + "init_scale = {low = -1.0, high = 0.1, log = true}\n",
     "space.init_scale.low", ["out of range", "(0, inf)"]),
    ("lr-low-zero", edit(LR, "lr = {low = 0.0, high = 0.5}"), "space.lr.low",
     ["out of range; use a number in (0, inf)"]),
    ("bound-above-catalogue", BASE.replace('["sgd", "adam"]', '["sgd", "momentum"]')
     + "[space.optimizers.momentum]\nmomentum = {low = 0.5, high = 1.0}\n",
     "space.optimizers.momentum.momentum.high", ["a number in [0, 1)"]),
    ("step-with-log", edit(LR, "lr = {low = 1e-3, high = 0.5, log = true, step = 0.1}"),
     "space.lr.step", ["step and log cannot be combined"]),
    ("fractional-int-step", BASE + "batch_size = {low = 16, high = 256, step = 1.5}\n",
     "space.batch_size.step", ["'batch_size' is an integer key"]),
    ("missing-range-bound", edit(LR, "lr = {low = 1e-3}"), "space.lr.high",
     ["required key of a range is missing"]),
    ("empty-choice", BASE + "batch_size = []\n", "space.batch_size", ["give at least one value"]),
    ("duplicate-choice", BASE + "batch_size = [64, 64]\n", "space.batch_size", ["duplicate choices"]),
    ("bad-choice-value", edit('["sgd", "adam"]', '["sgd", "lion"]'), "space.optimizer[1]",
     ["'lion' is not allowed", "'sgd', 'momentum', 'nesterov', 'adagrad', 'rmsprop', 'adam', 'adamw'"]),
    ("bad-metric", edit("n_trials = 5", 'n_trials = 5\nmetric = "accuracy"'), "study.metric",
     ["'val_accuracy' or 'val_loss'"]),
    ("bad-study-name", edit('name = "t"', 'name = "my study"'), "study.name",
     ["letters, digits, '_', '.' and '-'"]),
    ("n_trials-zero", edit("n_trials = 5", "n_trials = 0"), "study.n_trials",
     ["greater than or equal to 1"]),
    ("bad-sampler", edit("n_trials = 5", 'n_trials = 5\n[study.sampler]\ntype = "cmaes"'),
     "study.sampler.type", ["'tpe', 'random' or 'qmc'"]),
    ("warmup-too-long", BASE + "warmup_epochs = {low = 0, high = 5}\n", "space.warmup_epochs",
     ["keep it below 5"]),
    # conditional parameters in the wrong place
    ("optimizer-not-in-choices", BASE + "[space.optimizers.momentum]\nmomentum = 0.9\n",
     "space.optimizers.momentum", ["not among space.optimizer choices (sgd, adam)"]),
    ("parameter-of-another-optimizer", BASE + "[space.optimizers.adam]\nmomentum = 0.9\n",
     "space.optimizers.adam.momentum", ["does not apply to optimizer 'adam'",
                                        "it takes: beta1, beta2, eps, amsgrad"]),
    ("optimizer-parameter-at-top", BASE + "beta1 = 0.9\n", "space.beta1",
     ["optimizer hyperparameter", "[space.optimizers.adam], [space.optimizers.adamw]"]),
    ("decay-not-chosen", BASE + 'decay = ["constant", "cosine"]\n[space.decays.step]\ngamma = 0.5\n',
     "space.decays.step", ["not among space.decay choices (constant, cosine)"]),
    ("decay-section-without-decay-key", BASE + "[space.decays.cosine]\nmin_lr_factor = 0.1\n",
     "space.decays.cosine", ["not among space.decay choices (constant)"]),
    ("parameter-of-another-decay", BASE + 'decay = "cosine"\n[space.decays.cosine]\ngamma = 0.5\n',
     "space.decays.cosine.gamma", ["does not apply to decay 'cosine'", "it takes: min_lr_factor"]),
    ("milestones-and-step_epochs", BASE + 'decay = "step"\n[space.decays.step]\n'
     "milestones = [0.5]\nstep_epochs = 2\n", "space.decays.step",
     ["either milestones", "or step_epochs", "not both"]),
    # nesterov needs momentum > 0 (torch and tuner.optim.SGD raise on every trial otherwise)
    ("nesterov-momentum-zero-choice", edit('["sgd", "adam"]', '["sgd", "nesterov"]')
     + "[space.optimizers.nesterov]\nmomentum = [0.0, 0.9]\n",
     "space.optimizers.nesterov.momentum[0]",
     ["0.0 is not allowed for nesterov", "momentum > 0", "use a number in (0, 1)"]),
    ("nesterov-momentum-zero-range", edit('["sgd", "adam"]', '["sgd", "nesterov"]')
     + "[space.optimizers.nesterov]\nmomentum = {low = 0, high = 0.9}\n",
     "space.optimizers.nesterov.momentum.low", ["not allowed for nesterov", "momentum > 0"]),
    ("nesterov-momentum-zero-fixed", edit('["sgd", "adam"]', '"nesterov"')
     + "[space.optimizers.nesterov]\nmomentum = 0.0\n",
     "space.optimizers.nesterov.momentum", ["not allowed for nesterov", "momentum > 0"]),
    ("decay-parameter-at-top", BASE + "gamma = 0.5\n", "space.gamma",
     ["decay parameter", "[space.decays.step]"]),
    ("pruner-option-not-applying", edit("n_trials = 5", 'n_trials = 5\n[study.pruner]\n'
                                        'type = "hyperband"\nn_warmup_steps = 2'),
     "study.pruner.n_warmup_steps", ["does not apply to pruner 'hyperband'",
                      "it takes: min_resource, reduction_factor"]),
    ("synthetic-key-on-builtin", edit('dataset = "digits"', 'dataset = "digits"\nn = 100'),
     "data.n", ['applies only to dataset = "synthetic"']),
    ("csv-without-target", edit('dataset = "digits"', 'dataset = "my.csv"'), "data.target",
     ["the label column is required"]),
    ("delimiter-on-builtin", edit('dataset = "digits"', 'dataset = "digits"\ndelimiter = ";"'),
     "data.delimiter", ["only applies to CSV and TSV files"]),
    ("delimiter-two-characters", edit('dataset = "digits"', 'dataset = "my.csv"\ntarget = "y"\n'
                                      'delimiter = ";;"'),
     "data.delimiter", ["';;' is not a field separator", "one character such as"]),
    ("delimiter-inside-numbers", edit('dataset = "digits"', 'dataset = "my.csv"\ntarget = "y"\n'
                                      'delimiter = "."'),
     "data.delimiter", ["'.' is not a field separator"]),
    ("reg-in-model-and-space", edit("epochs = 5", "epochs = 5\nreg = 0.1") + "reg = 0.2\n",
     "space.reg", ["also set in [model]"]),
    ("grace-not-longer-than-heartbeat", edit("n_trials = 5", "n_trials = 5\n[study.reliability]\n"
                                            "heartbeat_interval = 10\ngrace_period = 5"),
     "study.reliability.grace_period", ["must be longer than heartbeat_interval"]),
    ("bad-cron", BASE + '[schedule]\ncron = "every night"\n', "schedule.cron",
     ["invalid cron expression", "five fields"]),
    ("bad-timezone", BASE + '[schedule]\ntimezone = "Mars/Olympus"\n', "schedule.timezone",
     ["unknown timezone", "IANA"]),
    # sections
    ("unknown-section", BASE + "[training]\nepochs = 3\n", "[training]",
     ["unknown section", "allowed sections: [study], [data], [model], [space], [schedule]"]),
    ("missing-section", BASE.replace('[data]\ndataset = "digits"\n', ""), "[data]",
     ["missing section"]),
    ("missing-key", edit("n_trials = 5\n", ""), "study.n_trials", ["required key is missing"]),
    ("missing-lr", edit(LR + "\n", ""), "space.lr", ["required key is missing",
                                                      "reference learning rate"]),
    ("missing-optimizer", edit('optimizer = ["sgd", "adam"]\n', ""), "space.optimizer",
     ["required key is missing"]),
    ("missing-dataset", edit('dataset = "digits"\n', ""), "data.dataset", ["required key is missing"]),
    # wrong types are errors, not conversions (TOML has real types)
    ("bool-epochs", edit("epochs = 5", "epochs = true"), "model.epochs", ["integer"]),
    ("string-n_trials", edit("n_trials = 5", 'n_trials = "3"'), "study.n_trials", ["integer"]),
    ("string-standardize", edit('dataset = "digits"', 'dataset = "digits"\nstandardize = "yes"'),
     "data.standardize", ["boolean"]),
    ("string-val_size", edit('dataset = "digits"', 'dataset = "digits"\nval_size = "0.3"'),
     "data.val_size", ["number"]),
    ("float-batch_size", BASE + "batch_size = 64.0\n", "space.batch_size",
     ["is a float", "'batch_size' is an integer key (write 64)"]),
    ("float-batch_size-bound", BASE + "batch_size = {low = 16.0, high = 256}\n",
     "space.batch_size.low", ["is a float", "integer key"]),
    ("unsupported-storage", edit("n_trials = 5", 'n_trials = 5\nstorage = "mysql://u:pw@h/db"'),
     "study", ["unsupported database 'mysql'", "sqlite:///PATH or postgresql+psycopg://"]),
    ("in-memory-storage", edit("n_trials = 5", 'n_trials = 5\nstorage = "sqlite:///:memory:"'),
     "study", ["in-memory SQLite database", "sqlite:///tuner.db"]),
    ("in-memory-storage-bare", edit("n_trials = 5", 'n_trials = 5\nstorage = "sqlite://"'),
     "study", ["in-memory SQLite database"]),
]


@pytest.mark.parametrize("text, key, allowed", [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_error_names_file_key_and_what_is_allowed(tmp_path, text, key, allowed):
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"{path}: "), message
    assert key in message, message
    for fragment in allowed:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_a_misspelt_required_key_is_one_error_not_two(tmp_path):
    """'n_trial: did you mean n_trials?' already says n_trials is missing."""
    message = error_of(write(tmp_path, edit("n_trials = 5", "n_trial = 5")))
    assert "did you mean n_trials?" in message and "required key is missing" not in message
    message = error_of(write(tmp_path, edit("n_trials = 5", "budget = 5")))
    assert "study.n_trials: required key is missing" in message  # no suggestion: still said
    # a key of another section where a required one should be: both are said
    message = error_of(write(tmp_path, edit("epochs = 5", "warmup_epochs = 2")))
    assert "model.warmup_epochs" in message and "model.epochs: required key is missing" in message


def test_invalid_toml_names_file_and_line(tmp_path):
    path = write(tmp_path, BASE.replace("[model]", "[model"))
    message = error_of(path)
    assert message.startswith(f"{path}: invalid TOML")
    assert "line 8" in message and "line 8 is: [model" in message  # the line itself


def test_a_key_set_twice_is_named(tmp_path):
    path = write(tmp_path, BASE.replace("[model]", "[model]\nepochs = 3\nepochs = 4", 1))
    with pytest.raises(ConfigError) as info:
        load_study_file(path)
    assert "Cannot overwrite a value" in info.value.message
    assert "line 10 is: epochs = 4" in info.value.message, info.value.message
    assert info.value.hint == "epochs is set twice in its table: keep one of the two"


@pytest.mark.parametrize("extra, hint", [
    ('optimizer = "adam"\n[space.optimizer.adam]\nbeta1 = 0.8\n',
     "space.optimizer is a key set to a value, so [space.optimizer.adam] cannot make it a table; "
     "did you mean [space.optimizers.adam]?"),
    ('decay = ["cosine", "step"]\n[space.decay.step]\ngamma = 0.5\n',
     "space.decay is a key set to a value, so [space.decay.step] cannot make it a table; did you "
     "mean [space.decays.step]?"),
    ('[space.decays.step]\ngamma = 0.5\n[space.decays.step]\ngamma = 0.2\n',
     "[space.decays.step] appears twice: merge the two tables into one"),
    ("[space.lr]\nlow = 1\n",  # lr = {low = ..., high = ...} in [space]
     "space.lr is set above as a value: add its keys there, or write it only as [space.lr]"),
    ('batch_size = 32\n[space.batch_size]\nlow = 1\n',  # no table of [space] is like it
     "space.batch_size is a key set to a value, so [space.batch_size] cannot make it a table"),
])
def test_a_table_header_that_cannot_be_a_table_says_why(tmp_path, extra, hint):
    """A typo of [space.optimizers.adam] as [space.optimizer.adam] was told "is set twice in
    its table: keep one of the two": nothing was set twice."""
    base = BASE.replace('optimizer = ["sgd", "adam"]\n', "") if "optimizer =" in extra else BASE
    with pytest.raises(ConfigError) as info:
        load_study_file(write(tmp_path, base + extra))
    assert "invalid TOML" in info.value.message
    assert info.value.hint == hint


def test_keys_above_the_first_section_are_named_with_the_section_they_belong_to(tmp_path):
    """A missing [study] line: `name` and `n_trials` end up in no section (they were reported
    as 'unknown section(s) [n_trials], [name]')."""
    message = error_of(write(tmp_path, BASE.replace("[study]\n", "", 1)))
    assert "key(s) n_trials, name outside any section; they belong under [study]" in message
    message = error_of(write(tmp_path, "shuffle = true\n" + BASE))
    assert "key(s) shuffle outside any section; put them in a section: [study], [data]" in message


def test_missing_file(tmp_path):
    message = error_of(tmp_path / "nope.toml")
    assert "nope.toml: study file not found" in message
    assert "studies/digits.toml" in message  # the hint


def test_several_pydantic_errors_are_all_reported(tmp_path):
    path = write(tmp_path, edit("n_trials = 5", 'n_trials = -1\nmetric = "acc"\nseeds = 1'))
    lines = error_of(path).splitlines()
    assert {line.split(": ")[1] for line in lines} == {"study.n_trials", "study.metric", "study.seeds"}
    assert all(line.startswith(str(path)) for line in lines)


def test_valid_file_defaults(tmp_path):
    sf = load_study_file(write(tmp_path, BASE))
    assert sf.source == str(tmp_path / "study.toml")
    assert sf.base_dir == str(tmp_path)
    s = sf.study
    assert (s.metric, s.direction, s.seed, s.timeout, s.storage) == ("val_accuracy", "maximize", 0,
                                                                      None, None)
    assert (s.sampler.type, s.sampler.n_startup_trials, s.sampler.group) == ("tpe", 10, False)
    assert (s.pruner.type, s.pruner.n_startup_trials, s.pruner.n_warmup_steps,
            s.pruner.interval_steps) == ("median", 5, 0, 1)
    assert (s.reliability.heartbeat_interval, s.reliability.grace, s.reliability.max_retry,
            s.reliability.fail_fast) == (5, 20, 2, 5)
    d = sf.data
    assert (d.val_size, d.test_size, d.seed, d.standardize, d.target) == (0.2, 0.2, 0, True, None)
    assert (sf.model.dtype, sf.model.loss, sf.model.reg) == ("float32", None, None)
    assert sf.schedule is None


def test_val_loss_is_minimized(tmp_path):
    sf = load_study_file(write(tmp_path, edit("n_trials = 5", 'n_trials = 5\nmetric = "val_loss"')))
    assert sf.direction == "minimize"


def test_val_loss_cannot_rank_trials_of_different_losses(tmp_path):
    """Cross-entropy and hinge values were ranked together (the best 'val_loss' was whichever
    loss is smaller by nature); one loss, or val_accuracy, is fine."""
    text = edit("n_trials = 5", 'n_trials = 5\nmetric = "val_loss"')
    message = error_of(write(tmp_path, text.replace("epochs = 5", 'epochs = 5\nloss = ["softmax", "svm"]')))
    assert "study.toml: study.metric = \"val_loss\" with model.loss = ['softmax', 'svm']" in message
    assert "different scales" in message
    message = error_of(write(tmp_path, text + 'loss = ["svm", "softmax"]\n'))
    assert "with space.loss = ['softmax', 'svm']" in message
    assert load_study_file(write(tmp_path, text.replace("epochs = 5", 'epochs = 5\nloss = ["svm"]')))
    both = BASE.replace("epochs = 5", 'epochs = 5\nloss = ["softmax", "svm"]')
    assert load_study_file(write(tmp_path, both)).direction == "maximize"
    # a study stored before the rule stays readable (show, export, delete load its file)
    raw = load_study_file(write(tmp_path, both)).raw
    raw["study"]["metric"] = "val_loss"
    stored = StudyFile.from_json(json.dumps({"raw": raw, "source": "old.toml", "base_dir": None}))
    assert stored.direction == "minimize"


def test_with_overrides_revalidates(tmp_path):
    sf = load_study_file(write(tmp_path, BASE))
    other = sf.with_overrides(name="other", n_trials=9, timeout=None)
    assert (other.study.name, other.study.n_trials) == ("other", 9)
    assert sf.study.name == "t"  # the original is unchanged
    with pytest.raises(ConfigError, match="study.n_trials"):
        sf.with_overrides(n_trials=0)


def test_int_is_accepted_where_a_number_is_expected(tmp_path):
    sf = load_study_file(write(tmp_path, edit('dataset = "digits"', 'dataset = "digits"\nval_size = 300')))
    assert sf.data.val_size == 300.0


def test_stored_study_file_masks_the_storage_password(tmp_path):
    url = "postgresql+psycopg://alice:TopSecret@db.example:5432/tuner"
    sf = load_study_file(write(tmp_path, edit("n_trials = 5", f'n_trials = 5\nstorage = "{url}"')))
    stored = sf.to_json()
    assert "TopSecret" not in stored and "alice:***@db.example" in stored
    assert sf.study.storage == url  # the run itself still connects with it
    checked = run_tuner("check", write(tmp_path, edit("n_trials = 5", f'n_trials = 5\nstorage = "{url}"'),
                                       "c.toml"), "--json", "--no-data", check=True)
    assert "TopSecret" not in checked.stdout and "alice:***@db.example" in checked.stdout


def test_json_round_trip_keeps_source_and_base_dir(tmp_path):
    sf = load_study_file(write(tmp_path, BASE + 'decay = ["constant", "cosine"]\n'))
    again = type(sf).from_json(sf.to_json())
    assert again.raw == sf.raw
    assert (again.source, again.base_dir) == (sf.source, sf.base_dir)
    assert again.space.fingerprint() == sf.space.fingerprint()


def test_data_paths_are_relative_to_the_study_file(tmp_path):
    """A CSV study file works from any working directory (tuner check loads the data)."""
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "tiny.csv").write_text(
        "a,b,label\n" + "".join(f"{i},{i % 3},{'xyz'[i % 3]}\n" for i in range(60)))
    study = write(folder, edit('dataset = "digits"', 'dataset = "data/tiny.csv"\ntarget = "label"'))
    proc = run_tuner("check", study, "--json", cwd=tmp_path, check=True)
    assert "tiny.csv: 2 features, 3 classes" in proc.stdout


# --- --set (tuner train) --------------------------------------------------------------------


def test_parse_sets_reads_toml_values():
    assert parse_sets(["lr=1e-3", "optimizer=adam", "amsgrad=true", "milestones=[0.3, 0.6]",
                       "batch_size = 32"]) == {"lr": 1e-3, "optimizer": "adam", "amsgrad": True,
                                               "milestones": [0.3, 0.6], "batch_size": 32}
    # what a shell user types: True for true, a list without its brackets
    assert parse_sets(["amsgrad=True", "centered=FALSE", "milestones=0.3,0.6", "optimizer=sgd"]) == {
        "amsgrad": True, "centered": False, "milestones": [0.3, 0.6], "optimizer": "sgd"}


@pytest.mark.parametrize("item, fragments", [
    ("lr", ["--set 'lr': expected key=value", "--set lr=0.01"]),
    ("=0.1", ["expected key=value"]),
    ("learning_rate=0.1", ["--set learning_rate: unknown training parameter", "valid: optimizer, lr"]),
])
def test_bad_set_syntax(item, fragments):
    with pytest.raises(ConfigError) as info:
        parse_sets([item])
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize("sets, fragments", [
    (["lr=fast"], ["configuration to train: lr: 'fast' is not a number"]),
    (["optimizer=sgd", "beta1=0.9"], ["'beta1' does not apply to optimizer 'sgd'",
                                       "it applies to adam, adamw"]),
    (["batch_size=0"], ["batch_size: 0 is out of range; use an integer in [1, inf)"]),
    (["optimizer=lion"], ["optimizer: 'lion' is not allowed"]),
])
def test_bad_set_values_name_the_file_and_key(tmp_path, sets, fragments):
    path = write(tmp_path, BASE)
    sf = load_study_file(path)
    with pytest.raises(ConfigError) as info:
        resolve_train_config(sf, parse_sets(sets))
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message


def test_train_config_sources(tmp_path):
    sf = load_study_file(write(tmp_path, BASE + "batch_size = [32, 64]\n"))
    params, sources = resolve_train_config(sf, {"optimizer": "adam", "lr": 0.01})
    assert params["optimizer"] == "adam" and params["lr"] == 0.01 and params["batch_size"] == 32
    assert params["beta1"] == 0.9  # engine default for adam
    assert sources["lr"] == "--set"
    assert sources["batch_size"] == "default: first choice"
    assert sources["beta1"] == "engine default"
    assert params["batch_scaling"] == "sqrt" and sources["batch_scaling"] == "engine default for adam"
    assert resolve_train_config(sf, {"optimizer": "sgd", "lr": 0.1, "batch_scaling": "none"})[1][
        "batch_scaling"] == "--set"
    params, sources = resolve_train_config(sf, {})
    assert params["lr"] == pytest.approx((1e-3 * 0.5) ** 0.5)  # geometric middle of a log range
    assert sources["lr"] == "default: middle of the range"


# --- shipped study files and documentation -------------------------------------------------


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_study_files_are_valid(path):
    sf = load_study_file(path)
    assert sf.study.name
    assert sf.space.optimizer_choices


def test_digits_study_covers_everything_the_issue_asks_for():
    sf = load_study_file(STUDIES / "digits.toml")
    assert set(sf.space.optimizer_choices) == set(P.OPTIMIZERS)
    assert set(sf.space.decay_choices) == set(P.DECAYS)
    assert set(sf.space.general["batch_scaling"].choices) == set(P.SCALING_RULES)


def test_cifar_shaped_study_is_cifar_shaped():
    d = load_study_file(STUDIES / "cifar-shaped.toml").data
    assert (d.dataset, d.n, d.d, d.classes, d.val_size, d.test_size) == (
        "synthetic", 51000, 3072, 10, 1000, 1000)


def test_csv_example_data_is_reproducible(tmp_path):
    """studies/data/machines.csv is exactly what its generator script writes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_machines", STUDIES / "data" / "make_machines.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.make_rows()
    lines = (STUDIES / "data" / "machines.csv").read_text().splitlines()
    assert len(lines) == len(rows) + 1 == 361
    assert lines[0].split(",")[-1] == "state"
    first = dict(zip(lines[0].split(","), lines[1].split(","), strict=True))
    assert first == {k: str(v) for k, v in rows[0].items()}


DOC = REPO / "docs" / "study-files.md"


def test_docs_describe_every_key():
    """docs/study-files.md names every section, every key of every section and every training
    parameter of the catalogue (so the documentation cannot silently fall behind the code)."""
    text = DOC.read_text()
    sections = {"study": StudySection, "study.sampler": SamplerConfig, "study.pruner": PrunerConfig,
                "study.reliability": ReliabilityConfig, "data": DataSection, "model": ModelSection,
                "schedule": ScheduleSection, "schedule.regression": RegressionRule}
    for section, model in sections.items():
        assert f"[{section}]" in text, section
        for key, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                assert f"[{section}.{key}]" in text, f"[{section}.{key}] is not documented"
            else:
                assert f"`{key}`" in text, f"{section}.{key} is not documented"
    for key in P.PARAMS:
        assert f"`{key}`" in text, f"training parameter {key} is not documented"
    for name in (*P.OPTIMIZERS, *P.DECAYS, *P.SCALING_RULES):
        assert f"`{name}`" in text, name
    for section in ("[space]", "[space.optimizers.<name>]", "[space.decays.<name>]"):
        assert section in text


def test_docs_examples_are_valid(tmp_path):
    """Every complete study file in docs/study-files.md (a ```toml block with [study]) parses."""
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), flags=re.S)
    complete = [b for b in blocks if "[study]" in b and "[space]" in b]
    assert complete
    for block in complete:
        parse_study_dict(tomllib.loads(block), source="docs")


def test_a_study_stored_with_tpe_keys_for_another_sampler_still_loads(tmp_path):
    """Studies stored before TPE-only options were refused for random/qmc samplers keep
    loading (show, replay, warm start): the options never applied and are dropped."""
    import json

    from tuner.config import StudyFile

    sf = load_study_file(write(tmp_path, edit("n_trials = 5", "n_trials = 5\n[study.sampler]\n"
                                                               "type = 'random'")))
    blob = json.loads(sf.to_json())
    blob["raw"]["study"]["sampler"].update(n_startup_trials=5, group=True)
    loaded = StudyFile.from_json(json.dumps(blob))
    assert loaded.study.sampler.type == "random" and "group" not in loaded.raw["study"]["sampler"]
