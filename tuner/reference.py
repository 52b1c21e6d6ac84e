"""scikit-learn's ``LogisticRegression`` on the same split: the convex reference optimum a tuned
softmax classifier is compared with."""

from __future__ import annotations

import threading
import warnings

import numpy as np

from tuner.data import Splits, strip_bias

_ONE_AT_A_TIME = threading.Lock()


def logistic_regression_accuracy(X_train: np.ndarray, y_train: np.ndarray,
                                 evals: dict[str, tuple[np.ndarray, np.ndarray]],
                                 *, max_iter: int = 5000) -> dict[str, float]:
    """Fit ``LogisticRegression(max_iter=5000)`` (L2, C=1, lbfgs, its own intercept) on
    ``X_train`` (bias column removed) and return its accuracy on each named ``(X, y)``.

    BLAS runs on one thread: lbfgs makes many small products, and OpenBLAS's threads wait for
    a core whenever anything else runs (a study's workers, the dashboard). Measured on 2 cores
    (benchmarks/reference.py): digits 0.04-0.07 s on one thread against 0.5-0.7 s on two;
    49,000 x 3,072 4.0 s against 7.1 s with one core busy, 3.9 s against 3.4 s idle."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    model = LogisticRegression(max_iter=max_iter)
    # the limit is process-wide: two fits in two threads (the runner's hook, the dashboard)
    # must not restore each other's BLAS setting out of order
    with _ONE_AT_A_TIME, warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(strip_bias(X_train), y_train)
        return {name: float(model.score(strip_bias(X), y)) for name, (X, y) in evals.items()}


def reference_on_split(splits: Splits) -> dict[str, float | None]:
    """Reference accuracy trained on the training split: ``{"val": ..., "test": ...}``;
    ``None`` for an empty split (``test_size = 0``)."""
    named = {"val": (splits.X_val, splits.y_val), "test": (splits.X_test, splits.y_test)}
    scored = logistic_regression_accuracy(
        splits.X_train, splits.y_train, {k: xy for k, xy in named.items() if len(xy[1])})
    return {name: scored.get(name) for name in named}
