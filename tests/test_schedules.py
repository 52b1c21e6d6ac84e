"""LR schedules (spec section 2.2) against hand-computed values, and batch-size scaling (section 3).

Notation as in the spec: ``a0`` peak lr, ``T`` total updates, ``W`` warmup updates, ``t`` the
0-based update index, decay clock ``u = t - W`` clamped to ``[0, T - W]``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tuner.schedules import make_schedule, scale_lr

A0 = 0.1


def values(schedule, T):
    return [schedule(t) for t in range(T + 1)]


def test_constant_without_warmup():
    lr = make_schedule("constant", peak_lr=A0, total_steps=10)
    assert values(lr, 10) == [A0] * 11
    assert lr(1000) == A0


def test_warmup_starts_at_zero_and_first_update_is_a_no_op():
    lr = make_schedule("constant", peak_lr=A0, total_steps=100, warmup_steps=20)
    assert lr(0) == 0.0  # s0 = 0: the first update uses lr 0 (HF / optax / torch behaviour)
    assert lr(1) == pytest.approx(A0 / 20)
    assert lr(10) == pytest.approx(A0 / 2)
    assert lr(19) == pytest.approx(A0 * 19 / 20)
    assert lr(20) == A0
    assert lr(99) == A0


def test_warmup_start_factor():
    lr = make_schedule("constant", peak_lr=A0, total_steps=50, warmup_steps=10,
                       warmup_start_factor=0.25)
    expected = [A0 * (0.25 + 0.75 * t / 10) for t in range(10)] + [A0] * 41
    np.testing.assert_allclose(values(lr, 50), expected, rtol=1e-15)
    assert lr(0) == pytest.approx(0.025)
    full = make_schedule("cosine", peak_lr=A0, total_steps=50, warmup_steps=10,
                         warmup_start_factor=1.0)
    assert full(0) == full(9) == full(10) == A0


def test_cosine_hand_values_with_warmup_and_min_lr():
    T, W, min_lr = 120, 20, 0.01
    lr = make_schedule("cosine", peak_lr=A0, total_steps=T, warmup_steps=W, min_lr=min_lr)
    a = min_lr / A0
    for t in range(W, T + 1):
        expected = A0 * (a + (1 - a) * 0.5 * (1 + math.cos(math.pi * (t - W) / (T - W))))
        assert lr(t) == pytest.approx(expected, rel=1e-14, abs=1e-17)
    assert lr(W) == A0  # decay clock starts at W
    assert lr(W + 50) == pytest.approx(A0 * (a + (1 - a) * 0.5))  # half-way: the mean
    assert lr(T) == pytest.approx(min_lr, rel=1e-14)
    assert lr(T - 1) > min_lr  # the last update still has lr > min_lr


def test_cosine_clamps_after_total_steps_no_rebound():
    lr = make_schedule("cosine", peak_lr=A0, total_steps=100, warmup_steps=10, min_lr=1e-3)
    tail = [lr(t) for t in range(100, 400)]
    assert tail == [pytest.approx(1e-3)] * 300
    assert max(tail) == lr(100)  # the unclamped torch/HF cosine would rise again
    zero = make_schedule("cosine", peak_lr=A0, total_steps=100)
    assert zero(100) == pytest.approx(0.0, abs=1e-18) and zero(150) == zero(100)


def test_cosine_is_monotone_over_the_run():
    lr = make_schedule("cosine", peak_lr=A0, total_steps=200, warmup_steps=30)
    vs = values(lr, 400)
    assert all(b >= a for a, b in zip(vs[:30], vs[1:31], strict=True))
    assert all(b <= a for a, b in zip(vs[30:-1], vs[31:], strict=True))


def test_linear_reaches_min_lr_only_at_total_steps():
    T, W, min_lr = 50, 10, 0.02
    lr = make_schedule("linear", peak_lr=A0, total_steps=T, warmup_steps=W, min_lr=min_lr)
    a = min_lr / A0
    for t in range(W, T + 1):
        assert lr(t) == pytest.approx(A0 * (a + (1 - a) * (1 - (t - W) / (T - W))), rel=1e-14)
    assert lr(T - 1) == pytest.approx(min_lr + (A0 - min_lr) / 40)  # last update > min_lr
    assert lr(T) == pytest.approx(min_lr)
    assert lr(T + 10) == lr(T)  # clamped
    zero = make_schedule("linear", peak_lr=A0, total_steps=4)
    assert values(zero, 5) == pytest.approx([0.1, 0.075, 0.05, 0.025, 0.0, 0.0])


def test_step_decay_with_step_size():
    lr = make_schedule("step", peak_lr=A0, total_steps=100, gamma=0.5, step_size=10)
    assert [lr(t) for t in (0, 9, 10, 19, 20, 29, 30, 99)] == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125, 0.1 * 0.5**9])
    assert lr(100) == pytest.approx(0.1 * 0.5**10)
    assert lr(500) == lr(100)  # clamped at T


def test_step_decay_counts_from_the_end_of_warmup():
    lr = make_schedule("step", peak_lr=A0, total_steps=60, warmup_steps=10, gamma=0.1, step_size=20)
    assert lr(0) == 0.0
    assert lr(10) == A0 and lr(29) == A0
    assert lr(30) == pytest.approx(0.01)
    assert lr(50) == pytest.approx(0.001)


def test_multistep_factor_applies_at_the_milestone():
    lr = make_schedule("step", peak_lr=A0, total_steps=100, gamma=0.1, milestones=[30, 60, 90])
    assert lr(29) == A0
    assert lr(30) == pytest.approx(0.01)  # AT the milestone (torch MultiStepLR, bisect_right)
    assert lr(59) == pytest.approx(0.01)
    assert lr(60) == pytest.approx(0.001)
    assert lr(90) == pytest.approx(1e-4)
    warm = make_schedule("step", peak_lr=A0, total_steps=100, warmup_steps=5, gamma=0.1,
                         milestones=[60, 30])  # unsorted: milestones are on the decay clock u
    assert warm(34) == A0 and warm(35) == pytest.approx(0.01) and warm(65) == pytest.approx(0.001)


def test_inv_sqrt_without_warmup_is_a0_over_sqrt_t_plus_1():
    lr = make_schedule("inv_sqrt", peak_lr=A0, total_steps=1000)
    for t in (0, 1, 3, 8, 99, 999):
        assert lr(t) == pytest.approx(A0 / math.sqrt(t + 1), rel=1e-14)


def test_inv_sqrt_after_warmup_is_a0_sqrt_w_over_t():
    """Default tau = W: fairseq inverse_sqrt / HF get_inverse_sqrt_schedule."""
    W = 40
    lr = make_schedule("inv_sqrt", peak_lr=A0, total_steps=1000, warmup_steps=W)
    assert lr(0) == 0.0
    assert lr(20) == pytest.approx(A0 / 2)
    assert lr(W) == A0
    for t in (41, 80, 160, 999, 1000):
        assert lr(t) == pytest.approx(A0 * math.sqrt(W / t), rel=1e-14)


def test_inv_sqrt_explicit_timescale():
    lr = make_schedule("inv_sqrt", peak_lr=A0, total_steps=100, warmup_steps=10, timescale=4)
    for t in range(10, 101):
        assert lr(t) == pytest.approx(A0 * math.sqrt(4 / (t - 10 + 4)), rel=1e-14)


@pytest.mark.parametrize("decay, extra", [
    ("constant", {}), ("step", {"step_size": 3}), ("step", {"milestones": [5]}),
    ("cosine", {"min_lr": 1e-3}), ("linear", {}), ("inv_sqrt", {}),
])
def test_schedules_return_python_floats(decay, extra):
    lr = make_schedule(decay, peak_lr=np.float32(0.1), total_steps=20, warmup_steps=4, **extra)
    for t in range(25):
        assert type(lr(t)) is float
        assert type(lr(np.int64(t))) is float  # numpy scalars would upcast float32 weights


def test_warmup_equal_to_total_steps():
    lr = make_schedule("cosine", peak_lr=A0, total_steps=10, warmup_steps=10)
    assert values(lr, 9) == pytest.approx([A0 * t / 10 for t in range(10)])
    assert lr(10) == A0 and lr(20) == A0


@pytest.mark.parametrize("kwargs, match", [
    ({"decay": "exponential"},
     "unknown decay 'exponential'.*constant, step, cosine, linear, inv_sqrt"),
    ({"decay": "cosine", "gamma": 0.1}, "unknown parameter.*gamma.*valid: min_lr"),
    ({"decay": "constant", "min_lr": 0.1}, "valid: none"),
    ({"decay": "step"}, "exactly one of step_size or milestones"),
    ({"decay": "step", "step_size": 5, "milestones": [3]}, "exactly one of"),
    ({"decay": "step", "step_size": 0}, "step_size must be >= 1"),
    ({"decay": "step", "step_size": 5, "gamma": 1.5}, "gamma must be in"),
    ({"decay": "step", "step_size": 5, "gamma": 0.0}, "gamma must be in"),
    ({"decay": "cosine", "min_lr": 0.5}, "min_lr must be in"),
    ({"decay": "linear", "min_lr": -0.1}, "min_lr must be in"),
    ({"decay": "inv_sqrt", "timescale": 0}, "timescale must be > 0"),
    ({"decay": "constant", "total_steps": 0}, "total_steps must be >= 1"),
    ({"decay": "constant", "warmup_steps": 200}, "warmup_steps must be in"),
    ({"decay": "constant", "warmup_steps": -1}, "warmup_steps must be in"),
    ({"decay": "constant", "warmup_start_factor": 1.5}, "warmup_start_factor must be in"),
])
def test_invalid_schedule_arguments(kwargs, match):
    args = {"peak_lr": A0, "total_steps": 100, **kwargs}
    decay = args.pop("decay")
    with pytest.raises(ValueError, match=match):
        make_schedule(decay, **args)


def test_scale_lr_rules():
    assert scale_lr(0.1, 256, rule="none") == 0.1
    assert scale_lr(0.1, 1024, rule="none") == 0.1
    assert scale_lr(0.1, 1024, rule="linear") == pytest.approx(0.4)
    assert scale_lr(0.1, 64, rule="linear") == pytest.approx(0.025)
    assert scale_lr(0.1, 1024, rule="sqrt") == pytest.approx(0.2)
    assert scale_lr(0.1, 64, rule="sqrt") == pytest.approx(0.05)
    assert scale_lr(0.1, 256, rule="linear") == 0.1  # kappa = 1 at the reference batch
    assert scale_lr(1e-3, 100, base_batch_size=25, rule="sqrt") == pytest.approx(2e-3)
    assert scale_lr(0.1, 8192, rule="linear") == pytest.approx(0.1 * 32)  # Goyal et al. 8k
    assert type(scale_lr(np.float32(0.1), 512, rule="sqrt")) is float


@pytest.mark.parametrize("kwargs, match", [
    ({"rule": "cubic"}, "unknown batch scaling rule 'cubic'; valid: none, linear, sqrt"),
    ({"rule": "linear", "batch_size": 0}, "must be >= 1"),
    ({"rule": "linear", "base_batch_size": 0}, "must be >= 1"),
])
def test_scale_lr_invalid(kwargs, match):
    args = {"batch_size": 64, **kwargs}
    with pytest.raises(ValueError, match=match):
        scale_lr(0.1, **args)
