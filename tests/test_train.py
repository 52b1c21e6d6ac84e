"""fit(): determinism, dtypes, the divergence guard (spec section 5), callbacks, params checks, and
the digits quality check against scikit-learn's LogisticRegression on the same split."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from tuner import params as P
from tuner.data import load_splits, strip_bias
from tuner.model import softmax_loss
from tuner.optim import make_optimizer
from tuner.schedules import make_schedule
from tuner.train import fit, make_plan, milestone_steps


@pytest.fixture(scope="module")
def digits():
    return load_splits("digits", dtype="float64", seed=0)


def small_problem(n=90, d=6, c=3, seed=0):
    rng = np.random.default_rng(seed)
    X = np.hstack([rng.standard_normal((n, d)), np.ones((n, 1))])
    y = np.arange(n) % c
    X[:, 0] += y  # learnable
    return X, y


ADAM = {"optimizer": "adam", "lr": 1e-2, "batch_size": 16, "decay": "cosine", "warmup_epochs": 1}


def assert_no_nan(history):
    for metrics in history:
        assert all(type(v) in (int, float) and math.isfinite(v) for v in metrics.values()), metrics


# --- determinism and dtypes -------------------------------------------------------------------

@pytest.mark.parametrize("params", [ADAM, {"optimizer": "momentum", "lr": 0.05, "reg": 1e-3,
                                           "batch_size": 7, "decay": "step", "step_epochs": 2}])
def test_same_params_and_seed_give_bit_identical_results(params):
    X, y = small_problem()
    a = fit(params, X[:60], y[:60], X[60:], y[60:], epochs=5, seed=3)
    b = fit(params, X[:60], y[:60], X[60:], y[60:], epochs=5, seed=3)
    np.testing.assert_array_equal(a.W, b.W)
    assert a.history == b.history
    c = fit(params, X[:60], y[:60], X[60:], y[60:], epochs=5, seed=4)
    assert not np.array_equal(a.W, c.W)
    assert a.history != c.history


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_weights_keep_the_requested_dtype(dtype):
    X, y = small_problem()
    for name in ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"):
        result = fit({"optimizer": name, "lr": 1e-2, "batch_size": 32, "decay": "cosine"},
                     X, y, X, y, epochs=2, dtype=dtype)
        assert result.W.dtype == np.dtype(dtype), name
        assert result.W.shape == (7, 3)
        assert not result.diverged
        for metrics in result.history:
            assert all(type(v) in (int, float) for v in metrics.values()), metrics


def test_float32_and_float64_runs_agree():
    X, y = small_problem()
    a = fit(ADAM, X, y, epochs=3, dtype="float32")
    b = fit(ADAM, X, y, epochs=3, dtype="float64")
    np.testing.assert_allclose(a.W, b.W, rtol=1e-3, atol=1e-4)


def test_matches_a_reference_training_loop():
    """Shuffled mini-batches without replacement (last batch partial), W0 = init_scale * randn,
    lr of update t = schedule(t), optimizer per step: rebuilt here from those pieces."""
    X, y = small_problem(n=50)
    params = {"optimizer": "nesterov", "lr": 0.2, "batch_size": 16, "batch_scaling": "sqrt",
              "base_batch_size": 64, "warmup_epochs": 1.0, "decay": "linear",
              "min_lr_factor": 0.1, "reg": 1e-2, "init_scale": 0.01}
    result = fit(params, X, y, epochs=4, seed=11, dtype="float64")

    init_rng, shuffle_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(11).spawn(2))
    W = 0.01 * init_rng.standard_normal((7, 3))
    peak = 0.2 * math.sqrt(16 / 64)
    spe = 4  # ceil(50 / 16): batches of 16, 16, 16, 2
    lr = make_schedule("linear", peak_lr=peak, total_steps=4 * spe, warmup_steps=spe,
                       min_lr=0.1 * peak)
    opt = make_optimizer("nesterov", momentum=0.9)
    t, losses = 0, []
    for _ in range(4):
        order = shuffle_rng.permutation(50)
        epoch_losses = []
        for start in range(0, 50, 16):
            idx = order[start:start + 16]
            loss, grad = softmax_loss(W, X[idx], y[idx], 1e-2)
            opt.step(W, grad, lr(t))
            epoch_losses.append(loss)
            t += 1
        losses.append(sum(epoch_losses) / spe)
    np.testing.assert_allclose(result.W, W, rtol=1e-12, atol=1e-15)
    assert [h["train_loss"] for h in result.history] == pytest.approx(losses, rel=1e-12)
    last_lrs = [lr(e * spe - 1) for e in (1, 2, 3, 4)]
    assert [h["lr"] for h in result.history] == pytest.approx(last_lrs)
    assert result.steps == 16 and result.samples_seen == 200
    assert result.plan.steps_per_epoch == 4 and result.plan.peak_lr == pytest.approx(peak)


def test_history_metrics():
    X, y = small_problem()
    result = fit(ADAM, X[:60], y[:60], X[60:], y[60:], epochs=3)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert [h["step"] for h in result.history] == [4, 8, 12]  # ceil(60 / 16) = 4 per epoch
    assert set(result.history[0]) == {"epoch", "step", "train_loss", "val_loss", "val_accuracy",
                                      "lr"}
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert 0.0 <= result.history[-1]["val_accuracy"] <= 1.0
    assert result.final is result.history[-1]
    no_val = fit(ADAM, X, y, epochs=1)
    assert "val_accuracy" not in no_val.history[0]


def test_batch_scaling_and_warmup_plan():
    params = {"lr": 0.1, "batch_size": 1024, "base_batch_size": 256, "batch_scaling": "linear",
              "warmup_epochs": 2.0, "warmup_start_factor": 0.25, "decay": "constant"}
    plan = make_plan(params, n_train=10_000, epochs=5)
    assert plan.steps_per_epoch == 10 and plan.total_steps == 50 and plan.warmup_steps == 20
    assert plan.peak_lr == pytest.approx(0.4)
    assert plan.schedule(0) == pytest.approx(0.1)  # Goyal: warm up from the unscaled lr
    assert plan.schedule(20) == pytest.approx(0.4)
    assert not plan.warmup_epochs_done(1) and plan.warmup_epochs_done(2)


@pytest.mark.parametrize("batch, rule, start_lr, peak", [
    (1024, "linear", 0.1, 0.4),    # Goyal: s0 = 1/kappa, from lr to kappa*lr
    (1024, "sqrt", 0.1, 0.2),      # s0 = kappa**-0.5
    (1024, "none", 0.0, 0.1),      # the peak is lr: the usual warmup from warmup_start_factor
    (64, "linear", 0.0, 0.025),    # a peak below lr: the same
])
def test_warmup_from_the_unscaled_lr(batch, rule, start_lr, peak):
    params = {"lr": 0.1, "batch_size": batch, "base_batch_size": 256, "batch_scaling": rule,
              "warmup_epochs": 2.0, "warmup_start_factor": 0.0, "warmup_from_unscaled": True,
              "decay": "constant"}
    plan = make_plan(params, n_train=10_240, epochs=5)
    warm = plan.warmup_steps
    assert plan.peak_lr == pytest.approx(peak)
    assert plan.schedule(0) == pytest.approx(start_lr)
    assert plan.schedule(warm // 2) == pytest.approx((start_lr + peak) / 2)
    assert plan.schedule(warm) == pytest.approx(peak)
    # a start factor above the unscaled lr's share wins: the warmup never starts lower
    plan = make_plan({**params, "warmup_start_factor": 0.9}, n_train=10_240, epochs=5)
    assert plan.schedule(0) == pytest.approx(max(0.9 * peak, start_lr))
    assert plan.schedule(warm - 1) < peak
    # off (the default): from warmup_start_factor * peak, as before
    off = {k: v for k, v in params.items() if k != "warmup_from_unscaled"}
    assert make_plan(off, n_train=10_240, epochs=5).schedule(0) == 0.0


def test_a_batch_larger_than_the_training_set_is_scaled_as_the_batch_used():
    params = {"lr": 0.1, "batch_size": 1024, "base_batch_size": 256, "batch_scaling": "linear",
              "warmup_epochs": 0.0, "warmup_start_factor": 0.0, "decay": "constant"}
    plan = make_plan(params, n_train=512, epochs=3)
    assert plan.steps_per_epoch == 1 and plan.total_steps == 3
    assert plan.peak_lr == pytest.approx(0.2)  # 512 examples per update, not 1024
    assert plan.peak_lr == make_plan({**params, "batch_size": 512}, n_train=512, epochs=3).peak_lr


# --- divergence guard ----------------------------------------------------------------------------

def test_spec_case_float64_explodes_without_ever_becoming_nan(digits):
    """Spec section 5: digits, plain SGD, lam = 1, lr = 1.05 (lr*lam > 1): unguarded full-batch
    descent reaches ~3e250 in 3000 steps and stays finite in float64."""
    X, y = digits.X_train, digits.y_train
    W = 1e-3 * np.random.default_rng(0).standard_normal((X.shape[1], 10))
    opt = make_optimizer("sgd")
    losses = []
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(3000):
            loss, grad = softmax_loss(W, X, y, 1.0)
            opt.step(W, grad, 1.05)
            losses.append(loss)
    assert all(math.isfinite(v) for v in losses) and np.isfinite(W).all()
    assert max(losses) > 1e200


@pytest.mark.parametrize("dtype, lr", [("float64", 1.05), ("float32", 1.05), ("float64", 1.5),
                                       ("float32", 1.5)])
def test_guard_stops_the_spec_case(digits, dtype, lr):
    params = {"optimizer": "sgd", "lr": lr, "reg": 1.0, "batch_size": len(digits.y_train)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning spam
        result = fit(params, digits.X_train, digits.y_train, digits.X_val, digits.y_val,
                     epochs=3000, dtype=dtype)
    assert result.diverged
    div = result.divergence
    assert "exceeded 100x the first loss" in div["reason"]
    assert 0 < div["step"] < 100  # long before float32 overflows (step 439 / 64 unguarded)
    assert div["epoch"] == div["step"] + 1  # one full-batch update per epoch
    assert math.isfinite(div["loss"]) and div["loss"] > 100 * math.log(10)
    assert result.steps == div["step"] + 1
    assert len(result.history) == div["step"]  # the diverged epoch is not reported
    assert_no_nan(result.history)
    assert result.W.dtype == np.dtype(dtype)


def test_guard_with_mini_batches_records_step_and_epoch(digits):
    result = fit({"optimizer": "sgd", "lr": 1.05, "reg": 1.0, "batch_size": 64,
                  "batch_scaling": "none"},
                 digits.X_train, digits.y_train, digits.X_val, digits.y_val, epochs=50)
    assert result.diverged
    spe = math.ceil(len(digits.y_train) / 64)
    assert result.divergence["epoch"] == result.divergence["step"] // spe + 1
    assert_no_nan(result.history)


def test_stable_rate_does_not_trip_the_guard(digits):
    result = fit({"optimizer": "sgd", "lr": 0.3, "reg": 1e-3, "batch_size": 64},
                 digits.X_train, digits.y_train, digits.X_val, digits.y_val, epochs=5)
    assert not result.diverged and len(result.history) == 5


def test_non_finite_weights_are_caught():
    X, y = small_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = fit({"optimizer": "sgd", "lr": 1e308, "reg": 1.0, "batch_size": 90,
                      "batch_scaling": "none", "init_scale": 1.0},
                     X, y, X, y, epochs=5, dtype="float64")
    assert result.divergence["reason"] == "non-finite weights"
    assert result.divergence["step"] == 0 and result.history == []
    assert math.isfinite(result.divergence["loss"])


def test_non_finite_loss_is_caught():
    X, y = small_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = fit({"optimizer": "sgd", "lr": 1e-9, "reg": 1.0, "init_scale": 1e200},
                     X, y, X, y, epochs=2, dtype="float64")
    assert result.divergence == {"step": 0, "epoch": 1, "reason": "non-finite loss", "loss": None}


# --- callback, adamw, params validation ---------------------------------------------------------

def test_on_epoch_can_stop_training():
    X, y = small_problem()
    seen = []

    def on_epoch(epoch, metrics):
        seen.append((epoch, dict(metrics)))
        return epoch == 3

    result = fit(ADAM, X[:60], y[:60], X[60:], y[60:], epochs=10, on_epoch=on_epoch)
    assert [e for e, _ in seen] == [1, 2, 3]
    assert seen[-1][1] == result.history[-1]
    assert len(result.history) == 3 and result.stopped_early and result.steps == 12
    full = fit(ADAM, X[:60], y[:60], X[60:], y[60:], epochs=3, on_epoch=lambda e, m: e == 3)
    assert not full.stopped_early  # asking to stop after the last epoch is not an early stop
    none_returned = fit(ADAM, X, y, epochs=4, on_epoch=lambda e, m: None)
    assert len(none_returned.history) == 4


def test_adamw_ignores_reg_and_uses_decoupled_decay():
    X, y = small_problem()
    base = {"optimizer": "adamw", "lr": 1e-2, "batch_size": 16, "weight_decay": 0.1}
    a = fit(base, X, y, epochs=3)
    b = fit({**base, "reg": 10.0}, X, y, epochs=3)
    np.testing.assert_array_equal(a.W, b.W)
    assert "reg" not in b.params
    c = fit({**base, "weight_decay": 0.0}, X, y, epochs=3)
    assert np.linalg.norm(c.W) > np.linalg.norm(a.W)  # the decoupled decay does act
    adam_l2 = fit({"optimizer": "adam", "lr": 1e-2, "batch_size": 16, "reg": 10.0}, X, y, epochs=3)
    adam = fit({"optimizer": "adam", "lr": 1e-2, "batch_size": 16}, X, y, epochs=3)
    assert np.linalg.norm(adam_l2.W) < np.linalg.norm(adam.W)  # reg is used by adam


@pytest.mark.parametrize("params, match", [
    ({"optimizer": "sgd", "lr": 0.1, "learning_rate": 0.1},
     "unknown training parameter\\(s\\) learning_rate; valid keys: optimizer, lr"),
    ({"optimizer": "sgd", "lr": 0.1, "beta1": 0.9},
     "'beta1' does not apply to optimizer 'sgd'; it applies to adam, adamw"),
    ({"optimizer": "adam", "lr": 0.1, "min_lr_factor": 0.1},
     "'min_lr_factor' does not apply to decay 'constant'; it applies to cosine, linear"),
    ({"optimizer": "sgd"}, "missing required training parameter 'lr'"),
    ({"lr": 0.1}, "missing required training parameter 'optimizer'"),
    ({"optimizer": "lion", "lr": 0.1}, "optimizer: 'lion' is not allowed"),
    ({"optimizer": "sgd", "lr": -1.0}, "lr: -1.0 is out of range"),
    ({"optimizer": "sgd", "lr": 0.1, "batch_size": 0}, "batch_size"),
    ({"optimizer": "momentum", "lr": 0.1, "momentum": 1.0}, "momentum"),
    ({"optimizer": "sgd", "lr": 0.1, "decay": "step", "milestones": [0.5], "step_epochs": 1.0},
     "either 'milestones' or 'step_epochs'"),
])
def test_params_validation(params, match):
    X, y = small_problem()
    with pytest.raises(ValueError, match=match):
        fit(params, X, y, epochs=1)


def test_epochs_must_be_positive():
    X, y = small_problem()
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        fit(ADAM, X, y, epochs=0)


# --- quality ------------------------------------------------------------------------------------

@pytest.mark.parametrize("params, dtype", [
    ({"optimizer": "adam", "lr": 1e-2, "batch_size": 64, "decay": "cosine"}, "float32"),
    ({"optimizer": "momentum", "lr": 0.1, "batch_size": 64, "decay": "cosine", "reg": 1e-4},
     "float64"),
])
def test_digits_quality_against_logistic_regression(digits, params, dtype):
    from sklearn.linear_model import LogisticRegression

    result = fit(params, digits.X_train, digits.y_train, digits.X_val, digits.y_val, epochs=30,
                 dtype=dtype)
    ours = result.history[-1]["val_accuracy"]
    reference = LogisticRegression(max_iter=5000).fit(strip_bias(digits.X_train), digits.y_train)
    theirs = reference.score(strip_bias(digits.X_val), digits.y_val)
    print(f"digits val accuracy: tuner {params['optimizer']} {ours:.4f}, "
          f"sklearn LogisticRegression {theirs:.4f}")
    assert not result.diverged
    assert ours >= 0.95
    assert ours >= theirs - 0.02  # within 2 points of the (near-)optimum of the same model class


# --- plan edge cases -----------------------------------------------------------------------------

def test_a_warmup_longer_than_training_is_an_error_not_squeezed():
    params = {"lr": 0.1, "batch_size": 100, "base_batch_size": 256, "batch_scaling": "none",
              "warmup_epochs": 6.0, "warmup_start_factor": 0.0, "decay": "cosine",
              "min_lr_factor": 0.0}
    with pytest.raises(ValueError, match=r"warmup_epochs = 6 \(60 updates\) is longer than "
                                         r"training: epochs = 5 is 50 updates"):
        make_plan(params, n_train=1000, epochs=5)
    X, y = small_problem()
    with pytest.raises(ValueError, match="warmup_epochs = 4 .* epochs = 3"):
        fit({**ADAM, "warmup_epochs": 4}, X, y, epochs=3)
    # all of training as warmup is still allowed (no decay), as the schedules allow it
    assert make_plan({**params, "warmup_epochs": 5.0}, n_train=1000, epochs=5).warmup_steps == 50


@pytest.mark.parametrize("fractions, decay_steps, expected", [
    ([0.1], 4, [1]),           # round(0.4) = 0 fired at the first decay update
    ([0.5, 0.75], 1, [1, 1]),  # round(0.5) = 0 (half to even)
    ([0.5], 5, [3]),           # round(2.5) = 2 (half to even); half up gives 3
    ([0.5, 0.75], 100, [50, 75]),
    ([0.25, 0.75], 2, [1, 2]),
])
def test_fractional_milestones_round_half_up_and_never_to_zero(fractions, decay_steps, expected):
    assert milestone_steps(fractions, decay_steps) == expected


def test_step_decay_uses_the_peak_lr_before_the_first_milestone():
    params = {"lr": 0.1, "batch_size": 250, "base_batch_size": 256, "batch_scaling": "none",
              "warmup_epochs": 0.0, "warmup_start_factor": 0.0, "decay": "step", "gamma": 0.5,
              "milestones": [0.1, 0.5]}
    plan = make_plan(params, n_train=1000, epochs=1)  # 4 updates: 0.1 * 4 = 0.4 rounded to 0
    assert [plan.schedule(t) for t in range(4)] == [0.1, 0.05, 0.025, 0.025]


# --- batch-size scaling defaults (spec section 3) ------------------------------------------------

@pytest.mark.parametrize("optimizer, rule, factor", [
    ("sgd", "linear", 0.25), ("momentum", "linear", 0.25), ("nesterov", "linear", 0.25),
    ("adagrad", "sqrt", 0.5), ("rmsprop", "sqrt", 0.5), ("adam", "sqrt", 0.5),
    ("adamw", "sqrt", 0.5),
])
def test_batch_scaling_defaults_to_the_spec_rule_per_optimizer(optimizer, rule, factor):
    resolved = P.resolve({"optimizer": optimizer, "lr": 0.1, "batch_size": 64})
    assert resolved["batch_scaling"] == rule
    plan = make_plan(resolved, n_train=6400, epochs=1)  # batch 64 against base 256
    assert plan.peak_lr == pytest.approx(0.1 * factor)
    # an explicit rule still wins
    explicit = P.resolve({"optimizer": optimizer, "lr": 0.1, "batch_scaling": "none"})
    assert explicit["batch_scaling"] == "none"
