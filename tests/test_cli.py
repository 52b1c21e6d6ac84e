"""The `tuner` commands as real subprocesses: help, check, train, ls, show, delete, --json output,
study-file and --set errors as the user sees them, and storage errors (an unreachable server, a
wrong password against a real password-checking PostgreSQL server): a clear message, the exit
code, no traceback, and never the password."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from conftest import REPO, STUDIES, PrivatePostgres, flat, run_tuner, tuner_env, write_study

MY_COMMANDS = ("check", "train", "run", "ls", "show", "export", "delete", "replay", "best")
SECRET = "s3cret-Pa55-word"


def assert_user_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    text = proc.stdout + proc.stderr
    assert proc.returncode == code, text
    assert "Traceback" not in text, text
    assert "error:" in proc.stderr, text
    stderr = " ".join(proc.stderr.split())
    for fragment in fragments:
        assert fragment in stderr, f"{fragment!r} not in {proc.stderr!r}"


# --- help -----------------------------------------------------------------------------------


def test_help_lists_every_command_with_one_sentence():
    proc = run_tuner("--help", check=True)
    for command in MY_COMMANDS:
        assert f" {command} " in proc.stdout
    assert "<bool>" not in proc.stdout  # a flag takes no value: no type label
    for command in MY_COMMANDS:
        text = run_tuner(command, "--help", check=True).stdout
        assert "<bool>" not in text, command
        lines = [line.strip(" │") for line in text.splitlines()]
        usage = next(i for i, line in enumerate(lines) if line.startswith("Usage:"))
        summary = next(line for line in lines[usage + 1:] if line)
        assert summary.endswith("."), (command, summary)
        assert summary.count(". ") == 0, (command, summary)  # one sentence


def test_help_cuts_no_word_at_80_columns():
    """rich ends a word wider than its help column with an ellipsis: the storage URL's format
    was cut to 'postgresql+psycopg://USER:PASS@HO…' in a terminal of 80 columns."""
    for command in ("", *MY_COMMANDS):
        text = run_tuner(*command.split(), "--help", env=tuner_env(COLUMNS="80"), check=True).stdout
        assert "…" not in text, (command, [line for line in text.splitlines() if "…" in line])


def test_help_imports_no_numerics_or_storage_libraries():
    """Command modules import their heavy dependencies when a command runs, so `tuner --help`
    starts in a fraction of a second (benchmarks/startup.py measures it)."""
    code = ("import sys, tuner.cli; heavy = {'numpy', 'optuna', 'sqlalchemy', 'sklearn', 'pandas', "
            "'pydantic'}; print(sorted(heavy & set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout


def test_no_arguments_shows_help():
    proc = run_tuner()
    assert "Usage:" in proc.stdout + proc.stderr
    assert "tuner run studies/digits.toml" in proc.stdout + proc.stderr


# --- check ----------------------------------------------------------------------------------


def test_check_shows_the_space_and_samples():
    proc = run_tuner("check", STUDIES / "digits.toml", "--samples", "4", check=True)
    out = proc.stdout
    assert "digits.toml is valid" in out
    assert "digits: 64 features, 10 classes, train/val/test = 1079/359/359" in out
    assert "search space" in out and "4 sampled configurations" in out
    for row in ("adam.beta1", "optimizer == adam", "adamw.weight_decay", "optimizer == adamw",
                "step.gamma", "decay == step", "optimizer is not adamw", "log float [0.0001, 3]"):
        assert row in out, row


def test_check_names_the_scaling_defaults_a_file_leaves_to_the_engine(tmp_path):
    """lr is the rate at base_batch_size: where the file sets neither the rule nor the base,
    check says what they are (a user's lr 0.0028 trained at a peak of 0.00035 at batch 32)."""
    study = write_study(tmp_path / "s.toml")  # sgd, momentum, adam; batch_size 64 or 128
    proc = run_tuner("check", study, "--samples", "1", check=True)
    assert ("not set, so engine defaults: batch_scaling (sgd: linear, momentum: linear, adam: "
            "sqrt); base_batch_size 256: lr is the rate at base_batch_size, scaled to each batch "
            "size by the rule") in flat(proc.stdout), proc.stdout
    data = json.loads(run_tuner("check", study, "--samples", "1", "--json", check=True).stdout)
    assert data["scaling_defaults"] == {"batch_scaling": {"sgd": "linear", "momentum": "linear",
                                                          "adam": "sqrt"}, "base_batch_size": 256}
    assert "not set" not in run_tuner("check", STUDIES / "digits.toml", "--samples", "1",
                                      check=True).stdout  # it sets both
    unscaled = write_study(tmp_path / "u.toml", space='optimizer = "adam"\nlr = [0.01, 0.1]\n'
                                                     'batch_scaling = "none"')
    assert "not set" not in run_tuner("check", unscaled, "--samples", "1", check=True).stdout  # no base


def test_jsonable_makes_plain_json_of_results():
    import numpy as np

    from tuner.jsonsafe import jsonable

    data = {1: (np.float32(0.5), np.int64(3), float("nan"), -float("inf"), np.float64("inf")),
            "nested": [{"x": float("nan"), "y": "text", "z": None, "ok": True}]}
    out = jsonable(data)
    assert out == {"1": [0.5, 3, None, None, None],
                   "nested": [{"x": None, "y": "text", "z": None, "ok": True}]}
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    assert type(out["1"][0]) is float and type(out["1"][1]) is int


def test_check_json_samples_respect_the_conditions():
    proc = run_tuner("check", STUDIES / "digits.toml", "--samples", "60", "--json", check=True)
    data = json.loads(proc.stdout)
    assert data["study"]["name"] == "digits" and data["study"]["n_trials"] == 300
    names = {row["parameter"] for row in data["space"]}
    assert {"optimizer", "lr", "momentum.momentum", "adam.beta1", "step.gamma"} <= names
    assert len(data["samples"]) == 60
    for config in data["samples"]:
        opt, decay = config["optimizer"], config["decay"]
        assert ("momentum" in config) == (opt in ("momentum", "nesterov"))
        assert ("beta1" in config) == (opt in ("adam", "adamw"))
        assert ("weight_decay" in config) == (opt == "adamw")
        assert ("alpha" in config) == (opt == "rmsprop")
        assert ("reg" in config) == (opt != "adamw")
        assert ("gamma" in config) == (decay == "step")
        assert ("min_lr_factor" in config) == (decay in ("cosine", "linear"))


def test_check_without_data_and_for_cifar_shaped():
    proc = run_tuner("check", STUDIES / "digits.toml", "--no-data", "--json", check=True)
    assert json.loads(proc.stdout)["data"] == "not loaded (--no-data)"
    proc = run_tuner("check", STUDIES / "cifar-shaped.toml", check=True)
    assert "synthetic 51000 x 3072, 10 classes (not generated by check)" in proc.stdout


def test_check_without_data_still_checks_the_data_file_and_the_storage_url(tmp_path):
    """--no-data reads no data, but a missing data file or a storage URL that `run` would
    refuse is an error already (the password masked)."""
    space = 'optimizer = "sgd"\nlr = 0.1'
    missing = write_study(tmp_path / "m.toml", data='dataset = "nope.csv"\ntarget = "y"', space=space)
    proc = run_tuner("check", missing, "--no-data")
    assert_user_error(proc, 2, f"{missing}: data.dataset: {tmp_path / 'nope.csv'}: data file not found")
    url = f"postgresql+psycopg//bob:{SECRET}@127.0.0.1:5999/tuner"
    broken = write_study(tmp_path / "b.toml", extra_study=f'storage = "{url}"', space=space)
    proc = run_tuner("check", broken, "--no-data")
    assert_user_error(proc, 2, f"{broken}: study.storage: not a valid database URL",
                      "bob:***@127.0.0.1:5999")
    assert_secret_hidden(proc)
    (tmp_path / "nope.csv").write_text("a,y\n1,0\n")
    assert run_tuner("check", missing, "--no-data").returncode == 0


def test_check_shows_a_nightly_files_schedule():
    """A night runs the [schedule] budget, not [study] n_trials: check says so, with the next
    night; a file without [schedule] shows none."""
    out = run_tuner("check", STUDIES / "nightly-digits.toml", "--no-data", check=True).stdout
    assert "schedule: cron '" in out and "next night nightly-digits-" in out
    assert "nightly budget: 24 trials per night ([study] n_trials = 40 applies to tuner run only)" \
        in " ".join(out.split())
    data = json.loads(run_tuner("check", STUDIES / "nightly-digits.toml", "--no-data", "--json",
                                check=True).stdout)
    assert data["schedule"]["n_trials"] == 24 and data["schedule"]["study_n_trials"] == 40
    assert data["schedule"]["next"]["night"].startswith("nightly-digits-")
    plain = json.loads(run_tuner("check", STUDIES / "digits.toml", "--no-data", "--json",
                                 check=True).stdout)
    assert plain["schedule"] is None


def test_check_errors_keep_section_names_intact(tmp_path):
    """Study-file sections in messages ("[space.optimizers.momentum]") are printed as they are
    (regression: rich used to swallow them as markup tags)."""
    study = write_study(tmp_path / "s.toml", space='optimizer = ["sgd", "adam"]\nlr = 0.1\n'
                                                  "momentum = 0.9")
    proc = run_tuner("check", study)
    assert_user_error(proc, 2, f"{study}: space.momentum:", "[space.optimizers.momentum]",
                      "[space.optimizers.nesterov]", "[space.optimizers.rmsprop]")
    bad = tmp_path / "bad.toml"
    bad.write_text("[study]\nname = 'x'\nn_trials = 1\n[data]\ndataset='digits'\n[model]\nepochs=1\n"
                   "[space]\noptimizer='sgd'\nlr=0.1\n[extra]\n")
    assert_user_error(run_tuner("check", bad), 2,
                      "unknown section(s) [extra]; allowed sections: [study], [data], [model]")


@pytest.mark.parametrize("text, fragments", [
    ("[study\n", ["invalid TOML", "line 1"]),
    ("", ["missing section [study]"]),
])
def test_check_reports_broken_files(tmp_path, text, fragments):
    path = tmp_path / "broken.toml"
    path.write_text(text)
    assert_user_error(run_tuner("check", path), 2, str(path), *fragments)


def test_check_missing_file(tmp_path):
    assert_user_error(run_tuner("check", tmp_path / "nope.toml"), 2, "nope.toml: study file not found",
                      "hint:")


# --- train ----------------------------------------------------------------------------------


def test_train_one_configuration(tmp_path):
    study = write_study(tmp_path / "s.toml")
    proc = run_tuner("train", study, "--set", "optimizer=adam", "--set", "lr=0.01", "--epochs", "3",
                     check=True)
    out = proc.stdout
    assert "data: digits" in out and "configuration" in out
    assert "--set" in out and "engine default" in out and "default: first choice" in out
    assert "Validation accuracy" in out and "test accuracy" in out and "LogisticRegression" in out
    data = json.loads(run_tuner("train", study, "--set", "optimizer=momentum", "--set", "lr=0.05",
                                "--epochs", "3", "--json", check=True).stdout)
    assert data["config"]["optimizer"] == "momentum" and data["config"]["momentum"] == 0.9
    assert [h["epoch"] for h in data["history"]] == [1, 2, 3]
    assert data["divergence"] is None
    assert 0.8 < data["val_accuracy"] <= 1 and 0.8 < data["test_accuracy"] <= 1
    assert set(data["reference"]) == {"val", "test"}
    # a batch larger than the training set is the training set: the plan says so
    big = run_tuner("train", study, "--set", "optimizer=sgd", "--set", "lr=0.01", "--set",
                    "batch_size=4096", "--set", "base_batch_size=32", "--set", "batch_scaling=linear",
                    "--epochs", "1", check=True).stdout
    n_train = int(re.search(r"train/val/test = (\d+)/", big)[1])
    assert (f"peak lr {0.01 * n_train / 32:.4g} (linear scaling of lr 0.01 at batch 32 to batch "
            f"{n_train}; batch_size 4096 is capped to the {n_train} training examples)") in flat(big), big


def test_train_says_how_to_pick_an_optimizer_a_set_key_applies_to(tmp_path):
    """--set momentum=0.5 where nobody picked the optimizer (sgd, the first choice)."""
    study = write_study(tmp_path / "s.toml")  # optimizer = ["sgd", "momentum", "adam"]
    proc = run_tuner("train", study, "--set", "momentum=0.5", "--epochs", "1")
    assert_user_error(proc, 2, "'momentum' does not apply to optimizer 'sgd'", "hint: the optimizer "
                      "is sgd (default: first choice); pick one momentum applies to: --set "
                      "optimizer=momentum (or --set momentum.momentum=...)")


def test_train_says_where_a_ctrl_c_stopped_it(tmp_path):
    import signal
    import time

    study = write_study(tmp_path / "s.toml")
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "train", str(study), "--set",
                             "optimizer=sgd", "--set", "lr=0.01", "--epochs", "1000000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=tuner_env())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None \
            and proc.stdout.readline().split()[:1] != ["1"]:
        pass  # until the first epoch's line
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert re.search(r"interrupted after epoch \d+ of 1000000 \(tuner train stores nothing\)\n$",
                     stderr), stderr


def test_train_rejects_a_non_positive_epoch_count(tmp_path):
    proc = run_tuner("train", write_study(tmp_path / "s.toml"), "--epochs", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--epochs" in proc.stderr


def test_train_reports_divergence(tmp_path):
    study = write_study(tmp_path / "s.toml")
    args = ("train", study, "--set", "optimizer=sgd", "--set", "lr=1e4", "--set", "reg=1.0",
            "--epochs", "2")
    proc = run_tuner(*args)
    assert proc.returncode == 1 and "diverged at update" in proc.stdout, proc.stdout + proc.stderr
    proc = run_tuner(*args, "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["divergence"]["step"] >= 1


@pytest.mark.parametrize("sets, fragments", [
    (["lr"], ["--set 'lr': expected key=value"]),
    (["speed=3"], ["--set speed: unknown training parameter", "valid: optimizer, lr"]),
    (["lr=fast"], ["configuration to train: lr: 'fast' is not a number"]),
    (["optimizer=sgd", "beta2=0.99"], ["'beta2' does not apply to optimizer 'sgd'",
                                       "it applies to adam, adamw"]),
    (["warmup_epochs=10"], ["--set warmup_epochs=10 leaves no epoch after the warmup of the 1 trained"]),
    (["lr=0.1", "lr=0.2"], ["--set lr is given twice; keep one"]),
    (["optimizer=sgd", "adam.beta1=0.8"], ["--set optimizer=sgd but a --set key names adam"]),
    (["sgd.speed=1"], ["--set sgd.speed: unknown training parameter", "e.g. adam.beta1, step.gamma"]),
    (["optimizer=adamw", "reg=5"], ["--set reg=5: adamw decays the weights itself",
                                    "hint: set its decoupled decay instead: --set "
                                    "adamw.weight_decay=..."]),
])
def test_train_bad_set(tmp_path, sets, fragments):
    study = write_study(tmp_path / "s.toml")
    args = [a for s in sets for a in ("--set", s)]
    assert_user_error(run_tuner("train", study, *args, "--epochs", "1"), 2, *fragments)


def test_train_takes_the_names_of_the_results_and_fits_its_own_choices(tmp_path):
    """``--set adam.beta1`` (as results and importances name it) picks Adam; ``step_epochs``
    replaces the file's milestones; a warmup tuner chose (middle of the file's range) is lowered
    below a short ``--epochs`` instead of refused."""
    study = write_study(tmp_path / "s.toml", space='optimizer = ["sgd", "adam"]\nlr = 0.01\n'
                        'decay = ["cosine", "step"]\nwarmup_epochs = {low = 2, high = 4}\n'
                        '[space.decays.step]\nmilestones = [0.5]')
    data = json.loads(run_tuner("train", study, "--set", "adam.beta1=0.8", "--set", "step.gamma=0.5",
                                "--set", "step_epochs=1", "--epochs", "2", "--json", check=True).stdout)
    config = data["config"]
    assert config["optimizer"] == "adam" and config["beta1"] == 0.8
    assert config["decay"] == "step" and config["gamma"] == 0.5 and config["step_epochs"] == 1
    assert "milestones" not in config
    assert config["warmup_epochs"] == 1
    assert "lowered below the 2 epochs" in data["sources"]["warmup_epochs"]


def test_no_test_split(tmp_path):
    """data.test_size = 0: train reports validation only; best --test says why it cannot."""
    study = write_study(tmp_path / "s.toml", name="notest", n_trials=1, epochs=1,
                        data='dataset = "digits"\ntest_size = 0')
    data = json.loads(run_tuner("train", study, "--json", check=True).stdout)
    assert "val_accuracy" in data and "test_accuracy" not in data
    assert set(data["reference"]) == {"val"}
    assert "Traceback" not in run_tuner("train", study, check=True).stderr
    url = f"sqlite:///{tmp_path / 'n.db'}"
    run_tuner("run", study, "--storage", url, "-q", check=True)
    assert_user_error(run_tuner("best", "notest", "--storage", url, "--test"), 2,
                      "study 'notest' has no test split (data.test_size = 0")


# --- ls, show, delete -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A SQLite file with two small finished studies."""
    folder = tmp_path_factory.mktemp("small")
    url = f"sqlite:///{folder / 'small.db'}"
    for name in ("alpha", "beta"):
        study = write_study(folder / f"{name}.toml", name=name, n_trials=3, epochs=2)
        run_tuner("run", study, "--storage", url, "-q", check=True)
    return url


def test_run_given_a_study_name_points_at_the_study_file_it_ran_from(small, tmp_path):
    """`tuner run alpha` (a study, not a file) was sent to look in studies/."""
    folder = Path(small.removeprefix("sqlite:///")).parent
    proc = run_tuner("run", "alpha", "--storage", small, cwd=tmp_path)
    assert_user_error(proc, 2, "alpha: study file not found", "hint: 'alpha' is a study in SQLite "
                      f"{folder / 'small.db'}; tuner run takes a study file: to continue it, tuner "
                      f"run {folder / 'alpha.toml'} --storage {small}")
    proc = run_tuner("run", "gamma", "--storage", small, cwd=tmp_path)  # no such study either
    assert_user_error(proc, 2, "gamma: study file not found", "hint: the shipped study files")
    # a study run under --study-name: the command names it
    url = f"sqlite:///{tmp_path / 'o.db'}"
    study = write_study(tmp_path / "o.toml", name="in_file", n_trials=1, epochs=1)
    run_tuner("run", study, "--study-name", "other", "--storage", url, "-q", check=True)
    proc = run_tuner("run", "other", "--storage", url, cwd=tmp_path)
    assert_user_error(proc, 2, f"to continue it, tuner run {study} --study-name other --storage {url}")


def test_ls(small, tmp_path):
    out = run_tuner("ls", "--storage", small, check=True).stdout
    assert "alpha" in out and "beta" in out and "val_accuracy (max)" in out
    rows = json.loads(run_tuner("ls", "--storage", small, "--json", check=True).stdout)
    assert [r["name"] for r in rows] == ["alpha", "beta"]
    for row in rows:
        assert row["counts"]["COMPLETE"] + row["counts"]["PRUNED"] == 3
        assert row["counts"]["RUNNING"] == row["counts"]["FAIL"] == 0
        assert row["last_activity"] and row["direction"] == "maximize"
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    optuna.storages.RDBStorage(empty).engine.dispose()  # a database without studies
    shown = flat(run_tuner("ls", "--storage", empty, check=True).stdout)
    assert "no studies in SQLite" in shown and f"digits.toml --storage {empty}" in shown
    assert json.loads(run_tuner("ls", "--storage", empty, "--json", check=True).stdout) == []


def test_read_only_commands_do_not_create_a_database(tmp_path):
    missing = tmp_path / "typo.db"
    for command in (["ls"], ["show", "x"]):
        assert_user_error(run_tuner(*command, "--storage", f"sqlite:///{missing}"), 3,
                          f"no database at {missing}", "run a study first")
    assert not missing.exists()


def test_read_only_commands_leave_another_applications_database_alone(storage_url, tmp_path):
    """`--storage` pointing at another application's database: a read-only command says so and
    adds nothing (Optuna's constructor created its twelve tables there)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(storage_url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE invoices (id INTEGER PRIMARY KEY)"))
    for command in (["ls"], ["show", "x"], ["doctor", "x"], ["report", "x"], ["history", "x"]):
        assert_user_error(run_tuner(*command, "--storage", storage_url, cwd=tmp_path), 3,
                          "is not a tuner database: it has tables (invoices) but none of Optuna's")
    assert sqlalchemy.inspect(engine).get_table_names() == ["invoices"]
    engine.dispose()


def test_storage_from_the_environment(small):
    proc = run_tuner("ls", "--json", env=tuner_env(TUNER_STORAGE=small), check=True)
    assert [r["name"] for r in json.loads(proc.stdout)] == ["alpha", "beta"]


def test_show(small):
    out = run_tuner("show", "alpha", "--storage", small, "--top", "2", check=True).stdout
    assert "study alpha in SQLite" in out and "best trial #" in out and "top 2 trials" in out
    complete = sum(t.state == TrialState.COMPLETE
                   for t in optuna.load_study(study_name="alpha", storage=small).trials)
    assert f"parameter importances: after 10 COMPLETE trials ({complete} so far)" in out  # not silence
    data = json.loads(run_tuner("show", "alpha", "--storage", small, "--json", check=True).stdout)
    assert data["study"] == "alpha" and data["metric"] == "val_accuracy"
    assert data["direction"] == "maximize"
    assert set(data["by"]) == {"optimizer", "decay", "batch_scaling"}
    assert data["top"][0]["number"] == data["best"]["number"]


def test_show_breaks_down_a_searched_loss(tmp_path):
    """A searched loss was in neither the top trials nor a per-loss table."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    space = ('optimizer = "adam"\nlr = {low = 1e-3, high = 0.5, log = true}\n'
             '[space.optimizers.adam]\nbeta1 = 0.85\nbeta2 = [0.99, 0.999]')
    study = write_study(tmp_path / "l.toml", name="losses", n_trials=4, epochs=1, space=space,
                        model='loss = ["softmax", "svm"]', extra_study='[study.sampler]\ntype = "random"')
    run_tuner("run", study, "--storage", url, "-q", check=True)
    data = json.loads(run_tuner("show", "losses", "--storage", url, "--json", check=True).stdout)
    assert set(data["by"]) == {"optimizer", "decay", "batch_scaling", "loss"}
    assert sum(g["n"] + g["pruned"] for g in data["by"]["loss"]) == 4
    out = run_tuner("show", "losses", "--storage", url, env=tuner_env(COLUMNS="200"), check=True).stdout
    assert "best val_accuracy per loss" in out
    assert re.search(r"loss=(softmax|svm)", out), out
    # the extra column lists what the file searches (beta2), not what it fixes (beta1)
    assert re.search(r"beta2=0\.99", out) and "beta1=" not in out, out


def test_unknown_study_names_the_storage_it_looked_in(small, tmp_path):
    where = f"in SQLite {Path(small.removeprefix('sqlite:///')).resolve()}"
    for command in (["show", "gamma"], ["replay", "gamma", "0"], ["delete", "gamma", "--yes"],
                    ["best", "gamma"], ["export", "gamma"], ["doctor", "gamma"],
                    ["report", "gamma", "-o", tmp_path / "g.html"]):
        assert_user_error(run_tuner(*command, "--storage", small, cwd=tmp_path), 2,
                          f"no study named 'gamma' {where} (studies: alpha, beta)")
    assert not list(tmp_path.iterdir())


# --- tables at a terminal's width -------------------------------------------------------------


LONG = "nightly-digits-sweep-2026-11-20"


@pytest.fixture(scope="module")
def long_named(tmp_path_factory):
    """A SQLite file with one small finished study with a long (night-like) name."""
    folder = tmp_path_factory.mktemp("long")
    url = f"sqlite:///{folder / 'long.db'}"
    study = write_study(folder / "long.toml", name=LONG, n_trials=4, epochs=2)
    run_tuner("run", study, "--storage", url, "-q", check=True)
    return url


def test_ls_and_show_keep_names_values_and_numbers_whole_at_80_columns(long_named):
    narrow = tuner_env(COLUMNS="80")
    [row] = json.loads(run_tuner("ls", "--storage", long_named, "--json", check=True).stdout)
    out = run_tuner("ls", "--storage", long_named, env=narrow, check=True).stdout
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert "…" not in out, out
    assert LONG in out and f"{row['best_value']:.4f}" in out and f"#{row['best_trial']}" in out

    data = json.loads(run_tuner("show", LONG, "--storage", long_named, "--json", check=True).stdout)
    out = run_tuner("show", LONG, "--storage", long_named, env=narrow, check=True).stdout
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert "…" not in out, out
    lines = out.splitlines()
    for trial in data["top"]:  # each top trial's row: its number and its whole value
        assert any(re.match(rf"│ +{trial['number']} │ +{trial['value']:.4f} │", line)
                   for line in lines), (trial, out)


def test_wide_tables_leave_out_minor_columns_before_cutting_key_ones():
    import io

    from rich.console import Console

    from tuner.cli.views import FitTable

    table = FitTable(title="t")
    table.add_column("date", key=True)
    table.add_column("best val_accuracy", justify="right", key=True)
    table.add_column("notes")  # folds
    for name in ("minor", "less"):
        table.add_column(name, key=True, drop=1 if name == "less" else 2)
    table.add_row("2026-11-20", "0.966573", "a long note that can wrap over lines", "x" * 20, "y" * 20)
    for width, dropped in ((200, []), (80, ["minor"]), (50, ["minor", "less"])):
        console = Console(file=io.StringIO(), width=width, color_system=None)
        console.print(table)
        text = console.file.getvalue()
        assert "2026-11-20" in text and "0.966573" in text and "…" not in text, text
        assert table.dropped(console) == dropped
        assert max(map(len, text.splitlines())) <= width, text
        flat = " ".join(text.split())
        assert (f"not shown at {width} columns: {', '.join(dropped)}" in flat) == bool(dropped), text
    console = Console(file=io.StringIO(), width=30, color_system=None)
    console.print(table)  # too narrow for the key columns: they fold, never "…"
    text = console.file.getvalue()
    assert "…" not in text
    # nothing cut: what does not fit goes on the next line (rich cut the cells that had to
    # stay on one line, "2026-11-", and left the notes column no room at all)
    assert "-20" in text.replace("2026-11-20", "") and "lines" in text, text


def test_narrow_terminals_leave_out_columns_rather_than_cut_numbers(long_named):
    data = json.loads(run_tuner("show", LONG, "--storage", long_named, "--json", check=True).stdout)
    [row] = json.loads(run_tuner("ls", "--storage", long_named, "--json", check=True).stdout)
    for width in ("44",):
        out = run_tuner("ls", "--storage", long_named, env=tuner_env(COLUMNS=width), check=True).stdout
        assert f"{row['best_value']:.4f}" in out and "not shown at" in out, out
        show = run_tuner("show", LONG, "--storage", long_named, env=tuner_env(COLUMNS=width),
                         check=True).stdout
        for group in data["by"]["optimizer"]:  # the per-optimizer table keeps best values whole
            assert re.search(rf"│ {group['value']} +│ +{group['best']:.4f} │", show), (group, show)


# --- small things -----------------------------------------------------------------------------


def test_version_and_short_help():
    from tuner import __version__

    proc = run_tuner("--version", check=True)
    assert proc.stdout.strip() == f"tuner {__version__}"
    assert "tuner [OPTIONS] COMMAND [ARGS]" in run_tuner("-h", check=True).stdout
    assert "tuner show [OPTIONS]" in run_tuner("show", "-h", check=True).stdout


def test_doctor_refuses_a_grace_a_live_runner_could_not_meet(small):
    """A grace period within the heartbeat interval makes a live runner's trials look stale:
    --fail-stale with --grace 0 failed trials that were training and threw their work away."""
    proc = run_tuner("doctor", "alpha", "--grace", "-5", "--storage", small)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Invalid value for '--grace'" in proc.stderr and "greater than or equal to 0" in proc.stderr
    for grace in ("0", "5"):  # the study file's heartbeat_interval is the default, 5 s
        proc = run_tuner("doctor", "alpha", "--grace", grace, "--fail-stale", "--storage", small)
        text = " ".join(proc.stderr.split())
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert (f"--grace {grace}: must be longer than the heartbeat interval of study 'alpha' (5 s): a "
                "live runner's trials beat only every 5 s, so --fail-stale would fail them, and "
                "lose their work") in text, text
        assert "hint: leave --grace out (the study file's grace period, 20 s), or give a few " \
               "heartbeat intervals, e.g. --grace 15" in text
    assert run_tuner("doctor", "alpha", "--grace", "6", "--storage", small).returncode == 0


def test_a_study_file_given_for_a_study_name_gets_the_name_as_hint(small, tmp_path):
    study = write_study(tmp_path / "a.toml", name="alpha")
    assert_user_error(run_tuner("show", study, "--storage", small), 2,
                      "takes a study's name (study.name in its file), not the file: alpha")


def test_delete_asks_first(tmp_path):
    url = f"sqlite:///{tmp_path / 'd.db'}"
    for name in ("keep", "drop"):
        run_tuner("run", write_study(tmp_path / f"{name}.toml", name=name, n_trials=1, epochs=1),
                  "--storage", url, "-q", check=True)
    silent = subprocess.run([sys.executable, "-m", "tuner", "delete", "drop", "--storage", url],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            env=tuner_env(), timeout=120)  # cron, CI: nobody to answer
    assert_user_error(silent, 2, "not deleting study 'drop' (1 trials): no answer to confirm it",
                      "add --yes to delete without asking")
    no = _delete_answering("n", "drop", url)
    assert no.returncode == 1 and "nothing deleted" in no.stderr
    assert "delete study 'drop' (1 trials)" in no.stdout + no.stderr
    assert {s.study_name for s in optuna.get_all_study_summaries(url)} == {"keep", "drop"}
    yes = _delete_answering("y", "drop", url)
    assert yes.returncode == 0 and "deleted study 'drop' (1 trials)" in yes.stderr
    assert {s.study_name for s in optuna.get_all_study_summaries(url)} == {"keep"}
    forced = run_tuner("delete", "keep", "--storage", url, "--yes", check=True)
    assert "deleted study 'keep'" in forced.stderr
    assert optuna.get_all_study_summaries(url) == []


def _delete_answering(answer: str, study: str, url: str) -> subprocess.CompletedProcess:
    """`tuner delete STUDY` with ``answer`` typed at its prompt."""
    return subprocess.run([sys.executable, "-m", "tuner", "delete", study, "--storage", url],
                          input=f"{answer}\n", capture_output=True, text=True, env=tuner_env(),
                          timeout=120)


def test_rerun_with_a_changed_file_warns_and_hints_name_the_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'other.db'}"
    first = run_tuner("run", write_study(tmp_path / "a.toml", name="drift", n_trials=2, epochs=1),
                      "--storage", url, cwd=tmp_path, check=True)
    # the follow-up commands it suggests work as printed: not ./tuner.db
    assert f"inspect: tuner show drift --storage {url}" in " ".join(first.stdout.split())
    assert "differs from" not in first.stderr
    changed = write_study(tmp_path / "b.toml", name="drift", n_trials=3, epochs=2,
                          space='optimizer = "sgd"\nlr = 0.1')
    second = run_tuner("run", changed, "--storage", url, cwd=tmp_path, check=True)
    stderr = " ".join(second.stderr.split())
    assert "differs from the file study 'drift' was created with" in stderr, second.stderr
    assert "(3/3 done: 3 complete; 1 by this run)" in stderr, stderr  # the other 2: the first run
    assert "model.epochs: 1 -> 2" in stderr
    assert 'space.optimizer: ["sgd", "momentum", "adam"] -> "sgd"' in stderr
    assert "--study-name NEW" in stderr
    # said once per edit: the same file again runs quietly; another edit is compared with it
    third = run_tuner("run", changed, "--storage", url, "-n", "4", cwd=tmp_path, check=True)
    assert "differs from" not in third.stderr, third.stderr
    changed.write_text(changed.read_text().replace("epochs = 2", "epochs = 3"))
    fourth = run_tuner("run", changed, "--storage", url, "-n", "5", cwd=tmp_path, check=True)
    stderr = " ".join(fourth.stderr.split())
    assert "differs from the file study 'drift' last ran (model.epochs: 2 -> 3)" in stderr, stderr


def test_edits_that_make_values_incomparable_are_refused(tmp_path):
    """A study ranked by val_loss cannot take trials of another loss (hinge and cross-entropy
    values are on different scales), nor any study data of another shape; nothing is added."""
    url = f"sqlite:///{tmp_path / 'edits.db'}"
    loss = write_study(tmp_path / "l.toml", name="by_loss", n_trials=2, epochs=1,
                       extra_study='metric = "val_loss"', model='loss = "softmax"')
    run_tuner("run", loss, "--storage", url, check=True)
    loss.write_text(loss.read_text().replace('loss = "softmax"', 'loss = "svm"')
                    .replace("n_trials = 2", "n_trials = 4"))
    refused = run_tuner("run", loss, "--storage", url)
    said = flat(refused.stderr)
    assert refused.returncode == 2, refused.stderr
    assert (f"{loss}: model.loss: the study 'by_loss' ranks its trials by val_loss, and they were "
            "scored with softmax loss; svm loss values are on another scale") in said, said
    assert f"tuner run {loss} --study-name NEW --storage {url}" in said
    assert len(optuna.load_study(study_name="by_loss", storage=url).trials) == 2

    rng = np.random.default_rng(0)
    for name, features in (("a.csv", 4), ("b.csv", 5)):
        frame = pd.DataFrame(rng.standard_normal((90, features)),
                             columns=[f"f{i}" for i in range(features)])
        frame["label"] = np.arange(90) % 3
        frame.to_csv(tmp_path / name, index=False)
    data = write_study(tmp_path / "d.toml", name="by_data", n_trials=2, epochs=1,
                       data='dataset = "a.csv"\ntarget = "label"')
    run_tuner("run", data, "--storage", url, check=True)
    before = optuna.load_study(study_name="by_data", storage=url).user_attrs
    data.write_text(data.read_text().replace("a.csv", "b.csv").replace("n_trials = 2", "n_trials = 4"))
    refused = run_tuner("run", data, "--storage", url)
    said = flat(refused.stderr)
    assert refused.returncode == 2, refused.stderr
    assert (f"{data}: data: the study 'by_data' has 2 trial(s) scored on data with 4 features and "
            "3 classes; b.csv has 5 features and 3 classes") in said, said
    assert "Traceback" not in refused.stderr
    assert "join the old ones" not in said  # no "its new trials join" before the refusal
    study = optuna.load_study(study_name="by_data", storage=url)
    assert len(study.trials) == 2 and all(t.state == TrialState.COMPLETE for t in study.trials)
    # ... and leaves no trace: not recorded as the file the study last ran, nor as a run
    assert study.user_attrs == before
    data.write_text(data.read_text().replace("b.csv", "a.csv"))  # back to the study's data
    again = run_tuner("run", data, "--storage", url, check=True)
    assert "differs from" not in again.stderr, again.stderr  # only n_trials changed


# --- storage errors -------------------------------------------------------------------------


def _study_with_short_outage(tmp_path: Path) -> Path:
    """Runners ride out database outages for study.reliability.max_db_outage seconds; keep the
    tests short."""
    return write_study(tmp_path / "s.toml", extra_study="[study.reliability]\nmax_db_outage = 1")


def assert_secret_hidden(proc: subprocess.CompletedProcess) -> None:
    assert SECRET not in proc.stdout + proc.stderr


def test_unreachable_database(tmp_path):
    url = f"postgresql+psycopg://tuner:{SECRET}@127.0.0.1:1/tuner"
    for command in (["ls"], ["show", "x"]):
        proc = run_tuner(*command, "--storage", url)
        assert_user_error(proc, 3, "cannot connect to PostgreSQL tuner@127.0.0.1:1/tuner",
                          "Connection refused", "is the server running and reachable?",
                          "postgresql+psycopg://tuner:***@127.0.0.1:1/tuner")
        assert_secret_hidden(proc)
    proc = run_tuner("run", _study_with_short_outage(tmp_path), "--storage", url)
    assert_user_error(proc, 3, "PostgreSQL tuner@127.0.0.1:1/tuner", "Connection refused")
    assert_secret_hidden(proc)


def test_bad_storage_urls(tmp_path):
    proc = run_tuner("ls", "--storage", f"mysql://root:{SECRET}@localhost/db")
    assert_user_error(proc, 3, "unsupported storage 'mysql'", "mysql://root:***@localhost/db",
                      "sqlite:///PATH or postgresql+psycopg://")
    assert_secret_hidden(proc)
    proc = run_tuner("ls", "--storage", "not a url")
    assert_user_error(proc, 3, "not a valid database URL")
    proc = run_tuner("ls", "--storage", "my tuner.db")  # a path given for a URL
    assert_user_error(proc, 3, "not a valid database URL", "did you mean sqlite:///my tuner.db?")
    # an unescaped '@' in the password: nothing of the password may show up as a host name
    proc = run_tuner("ls", "--storage", f"postgresql+psycopg://alice:ab@{SECRET}@host.invalid:5432/db")
    assert_user_error(proc, 3, "'@' appears more than once", "alice:***@host.invalid",
                      "percent-encode", "%40")
    assert_secret_hidden(proc)
    proc = run_tuner("ls", "--storage", f"postgresql+psycopg://alice:{SECRET}@127.0.0.1:notaport/db")
    assert_user_error(proc, 3, "not a valid database URL", "alice:***@127.0.0.1:notaport")
    assert_secret_hidden(proc)
    proc = run_tuner("ls", "--storage", f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    assert_user_error(proc, 3, f"no database at {tmp_path / 'missing' / 'x.db'}")
    # three slashes before an absolute path: relative to the current folder, and said so
    (tmp_path / "there.db").write_bytes(b"")
    relative = str(tmp_path / "there.db").lstrip("/")
    proc = run_tuner("ls", "--storage", f"sqlite:///{relative}", cwd=tmp_path)
    assert_user_error(proc, 3, f"no database at {tmp_path / relative}",
                      f"did you mean sqlite:////{relative}? (sqlite:/// then a relative path; an "
                      "absolute path takes a fourth slash)")
    # malformed URLs (no "://") still have their password masked
    for broken in (f"postgresql+psycopg//alice:{SECRET}@127.0.0.1:5999/db",
                   f"postgresql+psycopg:/alice:{SECRET}@127.0.0.1:5999/db",
                   f"alice:{SECRET}@127.0.0.1:5999/db",
                   f"postgresql+psycopg:/alice:{SECRET}/x@127.0.0.1:5999/db",  # unescaped /
                   f"postgresql+psycopg://alice:x/{SECRET}@y@127.0.0.1:5999/db"):  # and @
        proc = run_tuner("ls", "--storage", broken)
        assert proc.returncode == 3 and "alice:***@127.0.0.1:5999" in proc.stderr, proc.stderr
        assert_secret_hidden(proc)


def test_a_password_in_the_url_query_is_masked_everywhere(tmp_path):
    """libpq also takes the password as a query parameter (``?password=``, ``sslpassword=``)."""
    from tuner.storage.urls import has_password, mask_url, scrub

    url = (f"postgresql+psycopg://tuner@127.0.0.1:1/tuner?sslmode=disable&password={SECRET}"
           f"&sslpassword={SECRET}2")
    masked = mask_url(url)
    assert masked.startswith("postgresql+psycopg://tuner@127.0.0.1:1/tuner?")
    assert set(masked.split("?")[1].split("&")) == {"sslmode=disable", "password=***",
                                                    "sslpassword=***"}
    assert SECRET not in scrub(f"failed: {url} (dsn: password={SECRET} sslpassword='{SECRET}2')", url)
    assert has_password(url) and not has_password("postgresql+psycopg://tuner@h/db?sslmode=require")
    for command in (["ls"], ["show", "x"]):
        proc = run_tuner(*command, "--storage", url)
        assert_user_error(proc, 3, "cannot connect to PostgreSQL tuner@127.0.0.1:1/tuner",
                          "password=***")
        assert_secret_hidden(proc)
    proc = run_tuner("run", _study_with_short_outage(tmp_path), "--storage", url)
    assert_user_error(proc, 3, "PostgreSQL tuner@127.0.0.1:1/tuner")
    assert_secret_hidden(proc)


def test_in_memory_sqlite_is_refused_with_a_clear_message(tmp_path):
    for args in (["ls", "--storage", "sqlite://"],
                 ["run", write_study(tmp_path / "s.toml"), "--storage", "sqlite:///:memory:"]):
        proc = run_tuner(*args, timeout=60)
        assert_user_error(proc, 3, "in-memory SQLite database", "sqlite:///tuner.db")
        assert "lost the connection" not in proc.stderr


def test_follow_up_hints_never_print_a_masked_password():
    """A hint with `--storage 'postgresql+psycopg://u:***@...'` cannot be pasted: a URL with a
    password is referred to as "$TUNER_STORAGE", with a note on how to set it."""
    from tuner.cli.app import storage_flag, storage_note

    url = f"postgresql+psycopg://tuner:{SECRET}@db.example.com:5432/tuner"
    assert storage_flag(url) == ' --storage "$TUNER_STORAGE"'
    assert "export TUNER_STORAGE=" in storage_note(url) and SECRET not in storage_note(url)
    query = "postgresql+psycopg://tuner@db.example.com/tuner?password=x"
    assert storage_flag(query) == ' --storage "$TUNER_STORAGE"'
    plain = "postgresql+psycopg://tuner@db.example.com:5432/tuner"
    assert storage_flag(plain) == f" --storage {plain}" and storage_note(plain) == ""


def test_an_invalid_tuner_storage_does_not_break_a_run_given_storage(tmp_path):
    """--storage overrides a broken $TUNER_STORAGE: resuming a study (whose hints name the
    storage) must not trip over the variable."""
    study = write_study(tmp_path / "s.toml", n_trials=1, epochs=1,
                        space='optimizer = "sgd"\nlr = 0.1\nbatch_size = 128')
    url = f"sqlite:///{tmp_path / 'x.db'}"
    env = tuner_env(TUNER_STORAGE="postgresql+psycopg://u@db.example.com")
    for n in ("1", "2"):  # create, then resume
        proc = run_tuner("run", study, "--storage", url, "-n", n, "-q", env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_run_options_are_validated_like_the_study_file(tmp_path):
    study = write_study(tmp_path / "s.toml")
    for args, fragment in ((["--timeout", "-5"], "--timeout -5.0: must be greater than 0"),
                           (["--n-trials", "0"], "--n-trials 0: must be greater than or equal to 1"),
                           (["--study-name", "a b"], "--study-name a b: must start with a letter")):
        proc = run_tuner("run", study, "--storage", f"sqlite:///{tmp_path / 'x.db'}", *args)
        assert_user_error(proc, 2, fragment)
    assert not (tmp_path / "x.db").exists()
    shown = " ".join(run_tuner("run", "--help").stdout.split())
    assert "[default: the study file's study.n_trials]" in shown
    assert "[default: the study file's study.timeout, else none]" in shown


def test_check_warns_about_a_batch_larger_than_the_training_set(tmp_path):
    study = write_study(tmp_path / "s.toml", space='optimizer = "sgd"\nlr = 0.1\n'
                                                  'batch_size = [64, 2048]\nbatch_scaling = "linear"')
    proc = run_tuner("check", study, "--samples", "1", check=True)
    text = " ".join(proc.stderr.split())
    assert f"warning: {study}: space.batch_size: 2048 is larger than the training set (1079 " \
           "examples)" in text and "the same as batch_size = " in text
    data = json.loads(run_tuner("check", study, "--samples", "1", "--json", check=True).stdout)
    assert len(data["warnings"]) == 1
    fine = run_tuner("check", write_study(tmp_path / "f.toml"), "--samples", "1", check=True)
    assert "warning" not in fine.stderr
    # tuner run says it on the study's first run, not on every resume
    url = f"sqlite:///{tmp_path / 'w.db'}"
    first = run_tuner("run", study, "--storage", url, "-n", "1", "-q", check=True)
    assert "space.batch_size: 2048 is larger" in first.stderr
    again = run_tuner("run", study, "--storage", url, "-n", "2", "-q", check=True)
    assert "space.batch_size" not in again.stderr, again.stderr


@pytest.mark.parametrize(("pruner", "epochs", "said"), [
    ('type = "median"\nn_warmup_steps = 50', 5, "n_warmup_steps = 50 is not below model.epochs = 5"),
    ('type = "successive_halving"\nmin_resource = 5', 5, "min_resource = 5 is not below model.epochs = 5"),
    ('type = "hyperband"', 1, "model.epochs = 1 leaves no epoch to decide after"),
])
def test_a_pruner_that_can_never_act_is_warned_about(tmp_path, pruner, epochs, said):
    study = write_study(tmp_path / "s.toml", epochs=epochs, extra_study=f"[study.pruner]\n{pruner}")
    text = " ".join(run_tuner("check", study, "--samples", "1", "--no-data", check=True).stderr.split())
    fix = "raise model.epochs" if epochs == 1 else "lower it"  # (epochs cannot be lowered below 1)
    assert f"warning: {study}: study.pruner: {said}, so no trial is ever pruned; {fix}" in text, text
    fine = write_study(tmp_path / "f.toml", epochs=60, extra_study=f"[study.pruner]\n{pruner}")
    assert "study.pruner" not in run_tuner("check", fine, "--samples", "1", "--no-data").stderr


def test_a_space_with_nothing_to_search_is_warned_about(tmp_path):
    study = write_study(tmp_path / "s.toml", n_trials=5, space='optimizer = "adam"\nlr = 0.01')
    text = " ".join(run_tuner("check", study, "--samples", "1", check=True).stderr.split())
    assert (f"warning: {study}: space: every key is fixed, so the 5 trials train one configuration "
            "with 5 seeds (a measure of seed noise, not a search)") in text, text
    one = write_study(tmp_path / "one.toml", n_trials=5, space='optimizer = ["adam"]\nlr = 0.01\n'
                                                              'decay = ["cosine", "linear"]')
    assert "every key is fixed" not in run_tuner("check", one, "--samples", "1", check=True).stderr


def test_a_tiny_validation_set_is_warned_about(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.standard_normal((30, 3)), columns=["a", "b", "c"])
    frame["label"] = np.arange(30) % 2
    frame.to_csv(tmp_path / "tiny.csv", index=False)
    study = write_study(tmp_path / "t.toml", data='dataset = "tiny.csv"\ntarget = "label"')
    text = " ".join(run_tuner("check", study, "--samples", "1", check=True).stderr.split())
    assert (f"warning: {study}: data: the validation set has 6 examples: val_accuracy moves in "
            "steps of 0.167, so trials are ranked mostly by noise") in text, text
    assert "a larger data.val_size (now 0.2)" in text
    # ranked by val_loss, which does not move in steps: no such warning
    by_loss = write_study(tmp_path / "l.toml", data='dataset = "tiny.csv"\ntarget = "label"',
                          extra_study='metric = "val_loss"')
    assert "validation set has" not in run_tuner("check", by_loss, "--samples", "1", check=True).stderr


def test_missing_postgres_database(pg_url):
    url = pg_url.rsplit("/", 1)[0] + "/no_such_database_here"
    assert_user_error(run_tuner("ls", "--storage", url), 3, 'database "no_such_database_here" does '
                      "not exist", "createdb no_such_database_here")


@pytest.fixture(scope="module")
def password_server():
    """A private PostgreSQL server that checks passwords (scram-sha-256), started for these
    tests only (the shared test server trusts every local connection). Yields its port; the
    user ``postgres`` has the password ``SECRET``."""
    server = PrivatePostgres(password=SECRET)
    try:
        server.pg_ctl("start")
        yield server.port
    finally:
        server.close()


def test_right_password_works(password_server):
    url = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:{password_server}/postgres"
    proc = run_tuner("ls", "--storage", url, check=True)
    assert "no studies in PostgreSQL postgres@127.0.0.1" in proc.stdout
    assert 'tuner run studies/digits.toml --storage "$TUNER_STORAGE"' in flat(proc.stdout)
    assert_secret_hidden(proc)


def test_wrong_password(password_server, tmp_path):
    wrong = SECRET[::-1]
    url = f"postgresql+psycopg://postgres:{wrong}@127.0.0.1:{password_server}/postgres"
    for command in (["ls"], ["show", "x"]):
        proc = run_tuner(*command, "--storage", url)
        assert_user_error(proc, 3, f"cannot log in to PostgreSQL postgres@127.0.0.1:{password_server}"
                          "/postgres", "password authentication failed for user",
                          "check the user and password", "postgres:***@127.0.0.1")
        assert wrong not in proc.stdout + proc.stderr
    # the password also stays hidden when it comes from the environment
    proc = run_tuner("ls", env=tuner_env(TUNER_STORAGE=url))
    assert_user_error(proc, 3, "cannot log in")
    assert wrong not in proc.stdout + proc.stderr


def test_wrong_password_for_run_is_hidden(password_server, tmp_path):
    wrong = SECRET[::-1]
    url = f"postgresql+psycopg://postgres:{wrong}@127.0.0.1:{password_server}/postgres"
    proc = run_tuner("run", _study_with_short_outage(tmp_path), "--storage", url)
    assert_user_error(proc, 3, "password authentication failed")
    assert wrong not in proc.stdout + proc.stderr


def test_wrong_password_for_run_fails_at_once_with_the_login_hint(password_server, tmp_path):
    url = f"postgresql+psycopg://postgres:wrong@127.0.0.1:{password_server}/postgres"
    proc = run_tuner("run", _study_with_short_outage(tmp_path), "--storage", url)
    assert "retrying" not in proc.stderr
    assert "cannot log in" in proc.stderr and "check the user and password" in proc.stderr


def test_importance_bars_are_empty_for_zero_and_exact_in_eighths():
    from tuner.cli.views import bar

    assert bar(0.0) == ""
    assert bar(1e-9) == "▏"  # above zero: a sliver, never nothing
    assert bar(1.0) == "█" * 30
    assert bar(0.5) == "█" * 15
    assert bar(0.05) == "█▌"  # 1.5 cells of 30
    assert bar(2.0) == bar(1.0)


def test_the_cli_reference_is_what_help_says(tmp_path):
    """docs/cli.md is generated from the commands' --help: it lists every option there is."""
    out = tmp_path / "cli.md"
    subprocess.run([sys.executable, "-m", "typer", "tuner.cli", "utils", "docs", "--name", "tuner",
                    "--output", str(out)], check=True, capture_output=True, env=tuner_env())
    committed = (REPO / "docs" / "cli.md").read_text()
    assert out.read_text() == committed, (
        "docs/cli.md is out of date: python -m typer tuner.cli utils docs --name tuner --output "
        "docs/cli.md")

