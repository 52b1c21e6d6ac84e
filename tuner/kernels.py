"""Fused mini-batch loss and gradient for :func:`tuner.train.fit` (numba).

:class:`BatchLossGrad` computes exactly what ``LOSS_FUNCTIONS[loss](W, X[idx], y[idx], 0)`` of
:mod:`tuner.model` computes (the batch-mean loss and its gradient), without copying the batch
``X[idx]`` out of the training set and with both passes over the batch fused:

    for each block of 4 rows x_r = X[idx[r]] of the batch:
        s_r  = Wt @ x_r                      # scores, one pass over the block's features
        L_r, d_r = row loss and dL_r/ds_r     # softmax: p - onehot; hinge: margin indicators
        G   += sum_r (d_r / B) outer x_r      # gradient, a second pass while the block is in cache

The features are walked in tiles of :data:`TILE` so a block's rows stay in the L1 cache across
the ``C`` classes. That is what makes training memory-bound instead of gather-bound:
``docs/benchmarks.md`` has the figures (numpy's gather + two skinny GEMMs cost 3x more).

Conventions. Weights are stored **transposed**, ``Wt`` of shape ``(C, D)`` (``Wt = W.T``),
so that every inner loop runs over contiguous features; the gradient comes back in the same
layout. The reference losses in :mod:`tuner.model` stay the definition (they are checked
against finite differences, these kernels against them). A batch is split into :data:`PARTS`
fixed row ranges whose gradients are summed in a fixed order, so the result is bit-identical
whether the parts run on one thread or several. Only reassociation and FMA contraction are
allowed (``fastmath``), never "no NaN / no inf": a non-finite loss must stay non-finite for
the divergence guard (spec section 5).
"""

from __future__ import annotations

import threading

import numba
import numpy as np
from numba import njit, prange

TILE = 512  # features per cache tile: 4 rows x 512 float32 = 8 KiB, a fraction of L1
PARTS = 4  # fixed row partition of a batch; results never depend on the thread count
PARALLEL_MIN_WORK = 1 << 19  # batch x features x classes below which threads cost more than they give
LOSS_KINDS = {"softmax": 0, "svm": 1}

_FASTMATH = {"reassoc", "contract"}


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def _block_scores(x0, x1, x2, x3, Wt, S, j0, j1):
    """``S[k, c] += Wt[c, j0:j1] . x_k[j0:j1]`` for the block's four rows."""
    y0, y1, y2, y3 = x0[j0:j1], x1[j0:j1], x2[j0:j1], x3[j0:j1]
    for c in range(Wt.shape[0]):
        w = Wt[c, j0:j1]
        a0 = a1 = a2 = a3 = np.float32(0.0)  # widens to float64 with float64 data
        for j in range(w.shape[0]):
            wj = w[j]
            a0 += y0[j] * wj
            a1 += y1[j] * wj
            a2 += y2[j] * wj
            a3 += y3[j] * wj
        S[0, c] += a0
        S[1, c] += a1
        S[2, c] += a2
        S[3, c] += a3


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def _block_grad(x0, x1, x2, x3, S, G, j0, j1):
    """``G[c, j0:j1] += sum_k S[k, c] * x_k[j0:j1]`` for the block's four rows."""
    y0, y1, y2, y3 = x0[j0:j1], x1[j0:j1], x2[j0:j1], x3[j0:j1]
    for c in range(G.shape[0]):
        d0, d1, d2, d3 = S[0, c], S[1, c], S[2, c], S[3, c]
        g = G[c, j0:j1]
        for j in range(g.shape[0]):
            g[j] += d0 * y0[j] + d1 * y1[j] + d2 * y2[j] + d3 * y3[j]


@njit(cache=True, inline="always")
def _softmax_row(s, yi, inv_n):
    """Row loss ``log(sum exp s) - s[yi]`` (shifted by ``max s``); ``s`` becomes
    ``(softmax(s) - onehot(yi)) * inv_n``."""
    m = s[0]
    for c in range(1, s.shape[0]):
        if s[c] > m:
            m = s[c]
    correct = s[yi] - m
    total = np.float32(0.0)
    for c in range(s.shape[0]):
        e = np.exp(s[c] - m)
        s[c] = e
        total += e
    loss = np.log(total) - correct
    scale = inv_n / total
    for c in range(s.shape[0]):
        s[c] *= scale
    s[yi] -= inv_n
    return loss


@njit(cache=True, inline="always")
def _hinge_row(s, yi, inv_n):
    """Row loss ``sum_{c != yi} max(0, s[c] - s[yi] + 1)``; ``s`` becomes the subgradient
    ``inv_n * [margin_c > 0]``, with ``-inv_n * (number of positive margins)`` at ``yi``."""
    correct = s[yi]
    loss = 0.0
    count = 0
    for c in range(s.shape[0]):
        if c == yi:
            continue
        margin = s[c] - correct + np.float32(1.0)  # in the data's dtype, as the reference
        if margin > 0.0:
            loss += margin
            count += 1
            s[c] = inv_n
        else:
            s[c] = 0.0
            if margin != margin:  # NaN: propagate it, as np.maximum does
                loss += margin
    s[yi] = -count * inv_n
    return loss


@njit(fastmath=_FASTMATH, cache=True)
def _part(X, idx, y, Wt, lo, hi, inv_n, kind, S, G):
    """Loss sum of the rows ``idx[lo:hi]``; their gradient (scaled by ``inv_n``) into ``G``."""
    G.fill(0.0)
    D = Wt.shape[1]
    last = hi - 1
    loss = 0.0
    for r in range(lo, hi, 4):
        # a block past the part's end repeats its last row, with a zero coefficient
        x0 = X[idx[r]]
        x1 = X[idx[min(r + 1, last)]]
        x2 = X[idx[min(r + 2, last)]]
        x3 = X[idx[min(r + 3, last)]]
        S.fill(0.0)
        for j0 in range(0, D, TILE):
            _block_scores(x0, x1, x2, x3, Wt, S, j0, min(D, j0 + TILE))
        for k in range(4):
            if r + k > last:
                S[k].fill(0.0)
            elif kind == 0:
                loss += _softmax_row(S[k], y[idx[r + k]], inv_n)
            else:
                loss += _hinge_row(S[k], y[idx[r + k]], inv_n)
        for j0 in range(0, D, TILE):
            _block_grad(x0, x1, x2, x3, S, G, j0, min(D, j0 + TILE))
    return loss


@njit(cache=True)
def _reduce(losses, G, out, n):
    """``out = G[0] + G[1] + ...`` and the mean loss, always in part order."""
    for c in range(out.shape[0]):
        for j in range(out.shape[1]):
            total = G[0, c, j]
            for p in range(1, G.shape[0]):
                total += G[p, c, j]
            out[c, j] = total
    loss = 0.0
    for p in range(losses.shape[0]):
        loss += losses[p]
    return loss / n


def _bounds(n: int) -> np.ndarray:
    """Row ranges of the :data:`PARTS` parts of an ``n``-row batch, in whole 4-row blocks."""
    per = -(-n // PARTS)
    per += -per % 4
    return np.minimum(np.arange(PARTS + 1) * per, n)


@njit(cache=True)
def _loss_grad_serial(X, idx, y, Wt, bounds, kind, S, G, out):
    n = idx.shape[0]
    losses = np.zeros(PARTS)
    for p in range(PARTS):
        losses[p] = _part(X, idx, y, Wt, bounds[p], bounds[p + 1], 1.0 / n, kind, S[p], G[p])
    return _reduce(losses, G, out, n)


@njit(cache=True, parallel=True)
def _loss_grad_parallel(X, idx, y, Wt, bounds, kind, S, G, out):
    n = idx.shape[0]
    losses = np.zeros(PARTS)
    for p in prange(PARTS):
        losses[p] = _part(X, idx, y, Wt, bounds[p], bounds[p + 1], 1.0 / n, kind, S[p], G[p])
    return _reduce(losses, G, out, n)


@njit(fastmath=_FASTMATH, cache=True)
def _eval_part(X, y, Wt, lo, hi, kind, S):
    """Data loss sum and number of correct argmax predictions over the rows ``lo:hi``."""
    D = Wt.shape[1]
    last = hi - 1
    loss = 0.0
    correct = 0
    for r in range(lo, hi, 4):
        x0, x1, x2, x3 = X[r], X[min(r + 1, last)], X[min(r + 2, last)], X[min(r + 3, last)]
        S.fill(0.0)
        for j0 in range(0, D, TILE):
            _block_scores(x0, x1, x2, x3, Wt, S, j0, min(D, j0 + TILE))
        for k in range(min(4, hi - r)):
            s, yi = S[k], y[r + k]
            best = 0  # the first maximum, as np.argmax
            for c in range(1, s.shape[0]):
                if s[c] > s[best]:
                    best = c
            if best == yi:
                correct += 1
            loss += _softmax_row(s, yi, 1.0) if kind == 0 else _hinge_row(s, yi, 1.0)
    return loss, correct


@njit(cache=True)
def _evaluate_serial(X, y, Wt, bounds, kind, S):
    loss, correct = 0.0, 0
    for p in range(PARTS):
        part_loss, part_correct = _eval_part(X, y, Wt, bounds[p], bounds[p + 1], kind, S[p])
        loss += part_loss
        correct += part_correct
    return loss, correct


@njit(cache=True, parallel=True)
def _evaluate_parallel(X, y, Wt, bounds, kind, S):
    losses = np.zeros(PARTS)
    corrects = np.zeros(PARTS, dtype=np.int64)
    for p in prange(PARTS):
        losses[p], corrects[p] = _eval_part(X, y, Wt, bounds[p], bounds[p + 1], kind, S[p])
    loss, correct = 0.0, 0
    for p in range(PARTS):
        loss += losses[p]
        correct += corrects[p]
    return loss, correct


# numba's fallback thread pool ("workqueue") aborts the process if two Python threads launch
# parallel kernels at once; a caller that finds the pool busy runs the same parts serially.
_POOL = threading.Lock()


class BatchLossGrad:
    """Mean loss and gradient of mini-batches ``X[idx]`` of one training set.

    ``X`` is ``(N, D)`` C-contiguous (float32 or float64, bias column included), ``y`` holds
    labels ``0..C-1``. Calling it with transposed weights ``Wt`` ``(C, D)`` of ``X``'s dtype
    and row indices ``idx`` returns ``(loss, grad)``: the data loss as a Python float and its
    gradient ``(C, D)`` in a buffer that is reused by the next call. No regularizer: the caller
    adds it (:func:`tuner.model.add_l2`).
    """

    def __init__(self, loss: str, X: np.ndarray, y: np.ndarray, n_classes: int,
                 max_batch: int) -> None:
        if loss not in LOSS_KINDS:
            raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSS_KINDS)}")
        if not X.flags.c_contiguous:
            raise ValueError("X must be C-contiguous")
        self.kind = LOSS_KINDS[loss]
        self.X, self.y = X, _labels(y)
        d = X.shape[1]
        self.S = np.zeros((PARTS, 4, n_classes), dtype=X.dtype)
        self.G = np.zeros((PARTS, n_classes, d), dtype=X.dtype)
        self.grad = np.zeros((n_classes, d), dtype=X.dtype)
        self.parallel = max_batch * d * n_classes >= PARALLEL_MIN_WORK
        self._bounds: dict[int, np.ndarray] = {}

    def __call__(self, Wt: np.ndarray, idx: np.ndarray) -> tuple[float, np.ndarray]:
        n = len(idx)
        bounds = self._bounds.get(n)
        if bounds is None:
            bounds = self._bounds[n] = _bounds(n)
        loss = _run(_loss_grad_parallel if self.parallel else None, _loss_grad_serial,
                    self.X, idx, self.y, Wt, bounds, self.kind, self.S, self.G, self.grad)
        return float(loss), self.grad


def evaluate(Wt: np.ndarray, X: np.ndarray, y: np.ndarray, loss: str) -> tuple[float, float]:
    """Mean data loss (no regularizer) and accuracy of transposed weights ``Wt`` ``(C, D)`` on
    ``(X, y)``: :func:`tuner.model.evaluate` without BLAS, whose idle threads would spin
    against the training kernels' threads after every epoch (docs/benchmarks.md)."""
    n, d = X.shape
    if n == 0:
        return float("nan"), float("nan")
    c = Wt.shape[0]
    S = np.zeros((PARTS, 4, c), dtype=X.dtype)
    parallel = _evaluate_parallel if n * d * c >= PARALLEL_MIN_WORK else None
    total, correct = _run(parallel, _evaluate_serial, np.ascontiguousarray(X), _labels(y), Wt,
                          _bounds(n), LOSS_KINDS[loss], S)
    return float(total) / n, int(correct) / n


def _labels(y: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(y, dtype=np.intp)


def _run(parallel, serial, *args):
    """``parallel(*args)`` when it is worth it and the thread pool is free, else ``serial``:
    both give the same bits."""
    if parallel is not None and numba.get_num_threads() > 1 and _POOL.acquire(blocking=False):
        try:
            return parallel(*args)
        finally:
            _POOL.release()
    return serial(*args)


def set_threads(n: int) -> None:
    """Use at most ``n`` threads for parallel kernels in this process (workers share cores)."""
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


def warm_up(dtype: str | np.dtype = "float32") -> None:
    """Compile (or load from numba's cache) the kernels for ``dtype`` now, not in the first
    trial: a worker calls it at start-up, so a trial's wall time is training only."""
    X = np.zeros((8, 4), dtype=dtype)
    f = BatchLossGrad("softmax", X, np.zeros(8, dtype=np.intp), 2, 8)
    for parallel in (False, True) if numba.get_num_threads() > 1 else (False,):
        f.parallel = parallel
        f(np.zeros((2, 4), dtype=dtype), np.arange(8))
