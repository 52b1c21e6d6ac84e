"""Linear classifier losses (spec section 5), vectorized over the batch.

Shapes: ``X`` is ``(N, D)`` and already carries the bias column the caller added (see
:func:`tuner.data.add_bias`); ``W`` is ``(D, C)``; ``y`` holds integer labels in ``0..C-1``.
Both losses are the batch mean plus ``reg * sum(W**2)`` with gradient ``2*reg*W`` (the
CS231n 2017+ convention; torch's ``weight_decay`` equals ``2*reg``). The bias row is
regularized too, as in CS231n. Arrays keep their dtype: float32 in, float32 out.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

LossFn = Callable[[np.ndarray, np.ndarray, np.ndarray, float], tuple[float, np.ndarray]]


def softmax_loss(W: np.ndarray, X: np.ndarray, y: np.ndarray,
                 reg: float) -> tuple[float, np.ndarray]:
    """Softmax cross-entropy ``-mean(log p[i, y_i]) + reg*sum(W**2)`` and its gradient.

    Uses the shifted log-sum-exp, so scores of any magnitude give finite values.
    At ``W = 0`` the loss is ``ln C``. One ``(N, C)`` work array, reused in place.
    """
    n = X.shape[0]
    rows = np.arange(n)
    scores = X @ W
    scores -= scores.max(axis=1, keepdims=True)
    correct = scores[rows, y]
    probs = np.exp(scores, out=scores)
    sums = probs.sum(axis=1)
    loss = float(np.log(sums).sum() - correct.sum()) / n
    probs *= ((1.0 / n) / sums)[:, None]  # softmax / n
    probs[rows, y] -= 1.0 / n  # dL/dscores of the batch mean
    return add_l2(loss, X.T @ probs, W, reg)


def svm_loss(W: np.ndarray, X: np.ndarray, y: np.ndarray,
             reg: float) -> tuple[float, np.ndarray]:
    """Multiclass hinge (Weston-Watkins / CS231n, margin 1) and its subgradient.

    ``L_i = sum_{j != y_i} max(0, s_j - s_{y_i} + 1)``; a margin counts in the subgradient only
    when strictly positive. At ``W = 0`` the loss is ``C - 1``. Note that torch's
    ``multi_margin_loss`` divides by ``C``.
    """
    n = X.shape[0]
    rows = np.arange(n)
    scores = X @ W
    margins = scores - scores[rows, y][:, None]
    margins += 1.0
    margins[rows, y] = 0.0
    np.maximum(margins, 0.0, out=margins)
    loss = float(margins.sum()) / n
    coef = (margins > 0).astype(W.dtype)
    coef[rows, y] = -coef.sum(axis=1)
    coef /= n
    return add_l2(loss, X.T @ coef, W, reg)


def add_l2(loss: float, dW: np.ndarray, W: np.ndarray, reg: float) -> tuple[float, np.ndarray]:
    """Add ``reg * sum(W**2)`` to the loss and ``2*reg*W`` to its gradient (in place; any
    layout, ``dW`` shaped like ``W``)."""
    reg = float(reg)
    if reg:
        loss += reg * float(np.vdot(W, W))
        dW += (2.0 * reg) * W
    return loss, dW


LOSS_FUNCTIONS: dict[str, LossFn] = {"softmax": softmax_loss, "svm": svm_loss}


def evaluate(W: np.ndarray, X: np.ndarray, y: np.ndarray, loss: str) -> tuple[float, float]:
    """Mean data loss (no regularizer) and accuracy of ``W`` on ``(X, y)``, from one ``X @ W``."""
    scores = X @ W
    n = X.shape[0]
    rows = np.arange(n)
    accuracy = float(np.mean(np.argmax(scores, axis=1) == y))
    if loss == "softmax":
        scores -= scores.max(axis=1, keepdims=True)
        value = float(np.log(np.exp(scores).sum(axis=1)).sum() - scores[rows, y].sum()) / n
    else:
        margins = scores - scores[rows, y][:, None] + 1.0
        margins[rows, y] = 0.0
        value = float(np.maximum(margins, 0.0).sum()) / n
    return value, accuracy

