"""Losses (spec section 5): central-difference gradient checks, sanity values, stability, dtypes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tuner.model import evaluate, softmax_loss, svm_loss

LOSSES = {"softmax": softmax_loss, "svm": svm_loss}


def make_problem(n=12, d=7, c=5, seed=0, dtype=np.float64, scale=0.5):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    X[:, -1] = 1.0  # bias column, as the caller adds it
    y = rng.integers(0, c, n)
    y[:c] = np.arange(c)  # every class present
    W = (scale * rng.standard_normal((d, c))).astype(dtype)
    return W, X, y


def numerical_gradient(f, W, h=1e-5):
    """Central differences ``(f(W + h e) - f(W - h e)) / 2h`` for every entry of ``W``."""
    grad = np.zeros_like(W)
    for ij in np.ndindex(W.shape):
        old = W[ij]
        W[ij] = old + h
        plus = f(W)
        W[ij] = old - h
        minus = f(W)
        W[ij] = old
        grad[ij] = (plus - minus) / (2 * h)
    return grad


def reference_softmax(W, X, y, reg):
    """Per-sample loop straight from the definition (not vectorized, no shortcuts)."""
    total = 0.0
    for x, label in zip(X, y, strict=True):
        s = [float(v) for v in x @ W]
        top = max(s)
        lse = top + math.log(sum(math.exp(v - top) for v in s))
        total += lse - s[label]
    return total / len(y) + reg * float(np.sum(W * W))


def reference_svm(W, X, y, reg):
    total = 0.0
    for x, label in zip(X, y, strict=True):
        s = x @ W
        total += sum(max(0.0, s[j] - s[label] + 1.0) for j in range(len(s)) if j != label)
    return total / len(y) + reg * float(np.sum(W * W))


REFERENCES = {"softmax": reference_softmax, "svm": reference_svm}


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("reg", [0.0, 0.1, 3.0])
def test_gradient_matches_central_differences(name, reg):
    loss_fn = LOSSES[name]
    W, X, y = make_problem(seed=1)
    loss, dW = loss_fn(W, X, y, reg)
    num = numerical_gradient(lambda w: loss_fn(w, X, y, reg)[0], W.copy())
    assert dW.shape == W.shape
    rel = np.max(np.abs(dW - num)) / max(np.max(np.abs(num)), 1e-12)
    assert rel < 1e-7, rel


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("reg", [0.0, 0.25])
def test_loss_matches_per_sample_reference(name, reg):
    W, X, y = make_problem(n=20, seed=2)
    loss, _ = LOSSES[name](W, X, y, reg)
    assert isinstance(loss, float)
    assert loss == pytest.approx(REFERENCES[name](W, X, y, reg), rel=1e-12)


def test_svm_gradient_check_away_from_kinks():
    """Hinge is piecewise linear: the central difference is exact when no margin is near 0."""
    W, X, y = make_problem(n=30, seed=3, scale=2.0)
    scores = X @ W
    margins = scores - scores[np.arange(len(y)), y][:, None] + 1.0
    margins[np.arange(len(y)), y] = 5.0
    assert np.min(np.abs(margins)) > 1e-3  # no kink within h of the point
    _, dW = svm_loss(W, X, y, 0.5)
    num = numerical_gradient(lambda w: svm_loss(w, X, y, 0.5)[0], W.copy())
    np.testing.assert_allclose(dW, num, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("c", [2, 3, 10])
def test_sanity_values_at_zero_weights(c):
    _, X, y = make_problem(n=40, d=6, c=c, seed=4)
    W = np.zeros((X.shape[1], c))
    loss, _ = softmax_loss(W, X, y, 0.0)
    assert loss == pytest.approx(math.log(c), rel=1e-14)
    loss, _ = svm_loss(W, X, y, 0.0)
    assert loss == pytest.approx(c - 1, rel=1e-14)
    assert softmax_loss(W, X, y, 2.0)[0] == pytest.approx(math.log(c))  # sum(W**2) = 0


def test_ln10_at_small_random_weights():
    """The CS231n sanity check: W ~ 1e-3 * randn gives loss close to ln(10) = 2.3026."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((500, 33))
    y = rng.integers(0, 10, 500)
    W = 1e-3 * rng.standard_normal((33, 10))
    assert softmax_loss(W, X, y, 0.0)[0] == pytest.approx(math.log(10), abs=0.01)
    assert svm_loss(W, X, y, 0.0)[0] == pytest.approx(9.0, abs=0.1)


def test_regularizer_is_sum_of_squares_with_gradient_2_reg_w():
    W, X, y = make_problem(seed=6)
    base, g0 = softmax_loss(W, X, y, 0.0)
    loss, g = softmax_loss(W, X, y, 0.7)
    assert loss - base == pytest.approx(0.7 * np.sum(W**2), rel=1e-12)
    np.testing.assert_allclose(g - g0, 1.4 * W, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", LOSSES)
def test_huge_scores_stay_finite(name, dtype):
    """Scores of 1000 (exp overflows above 88.7 in float32, 709.8 in float64) give finite values."""
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=dtype)
    y = np.array([0, 1, 2])
    W = np.array([[1000.0, -1000.0, 0.0], [0.0, 1000.0, -1000.0]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow is fine
        loss, dW = LOSSES[name](W, X, y, 0.0)
    assert math.isfinite(loss)
    assert np.isfinite(dW).all()
    if name == "softmax":
        # row 2: scores (1000, 0, -1000) with label 2: loss 2000 (exactly, to rounding)
        assert loss == pytest.approx(2000.0 / 3, rel=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_float32_in_float32_out(name):
    W, X, y = make_problem(dtype=np.float32)
    loss, dW = LOSSES[name](W, X, y, 0.1)
    assert dW.dtype == np.float32
    assert isinstance(loss, float)
    W64, X64 = W.astype(np.float64), X.astype(np.float64)
    loss64, dW64 = LOSSES[name](W64, X64, y, 0.1)
    assert loss == pytest.approx(loss64, rel=1e-5)
    np.testing.assert_allclose(dW, dW64, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_inputs_are_not_modified(name):
    W, X, y = make_problem(seed=7)
    W0, X0, y0 = W.copy(), X.copy(), y.copy()
    LOSSES[name](W, X, y, 0.3)
    np.testing.assert_array_equal(W, W0)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)


@pytest.mark.parametrize("name", LOSSES)
def test_evaluate_is_data_loss_and_accuracy(name):
    W, X, y = make_problem(n=50, seed=8)
    value, acc = evaluate(W, X, y, name)
    assert value == pytest.approx(LOSSES[name](W, X, y, 0.0)[0], rel=1e-12)
    assert acc == pytest.approx(np.mean(np.argmax(X @ W, axis=1) == y))
