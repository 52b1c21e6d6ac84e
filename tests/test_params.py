"""The hyperparameter catalogue (tuner.params): resolution of flat training params, defaults
that depend on the optimizer, and the name lists it shares with the numerics modules."""

from __future__ import annotations

import pytest

from tuner import params as P


def test_nesterov_with_zero_momentum_is_refused_by_resolve():
    with pytest.raises(ValueError, match=r"momentum: 0\.0 is not allowed for nesterov.*momentum > 0"):
        P.resolve({"optimizer": "nesterov", "lr": 0.1, "momentum": 0.0})
    assert P.resolve({"optimizer": "nesterov", "lr": 0.1, "momentum": 0.5})["momentum"] == 0.5
    # momentum = 0 stays allowed where it means something: plain heavy-ball off, rmsprop
    assert P.resolve({"optimizer": "momentum", "lr": 0.1, "momentum": 0.0})["momentum"] == 0.0
    assert P.resolve({"optimizer": "rmsprop", "lr": 0.1, "momentum": 0.0})["momentum"] == 0.0


def test_name_lists_agree_with_the_modules_that_implement_them():
    from tuner import kernels, model, optim, schedules

    assert P.OPTIMIZERS == optim.OPTIMIZER_NAMES
    assert P.DECAYS == schedules.DECAY_TYPES
    assert P.SCALING_RULES == tuple(schedules.SCALING_RULES)
    assert P.LOSSES == tuple(model.LOSS_FUNCTIONS) == tuple(kernels.LOSS_KINDS)
    assert set(P.DECOUPLED_DECAY_OPTIMIZERS) <= set(P.OPTIMIZERS)
    # every optimizer key of the catalogue names an optimizer that exists
    for spec in P.PARAMS.values():
        assert set(spec.optimizers or ()) <= set(P.OPTIMIZERS), spec.name
        assert set(spec.decays or ()) <= set(P.DECAYS), spec.name


def test_per_optimizer_batch_scaling_default_follows_the_spec():
    assert P.BATCH_SCALING_DEFAULTS == {
        "sgd": "linear", "momentum": "linear", "nesterov": "linear",
        "adagrad": "sqrt", "rmsprop": "sqrt", "adam": "sqrt", "adamw": "sqrt"}
    for optimizer, rule in P.BATCH_SCALING_DEFAULTS.items():
        assert P.PARAMS["batch_scaling"].default_for(optimizer) == rule
        assert P.resolve({"optimizer": optimizer, "lr": 0.1})["batch_scaling"] == rule


def test_a_stored_config_without_batch_scaling_trained_with_none():
    """Configurations stored before the per-optimizer default (which trials now record) trained
    with "none": display and replay must keep that, not apply today's default."""
    legacy = {"optimizer": "adam", "lr": 0.01, "batch_size": 64}
    assert P.with_defaults(legacy)["batch_scaling"] == "none"
    assert P.resolve(P.stored_config(legacy))["batch_scaling"] == "none"
    recorded = {**legacy, "batch_scaling": "sqrt"}
    assert P.with_defaults(recorded)["batch_scaling"] == "sqrt"
    assert P.stored_config(recorded) == recorded
    assert P.with_defaults(legacy)["decay"] == "constant"
