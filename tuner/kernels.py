"""Fused mini-batch loss and gradient for :func:`tuner.train.fit` (numba).

:class:`BatchLossGrad` computes exactly what ``LOSS_FUNCTIONS[loss](W, X[idx], y[idx], 0)`` of
:mod:`tuner.model` computes (the batch-mean loss and its gradient), without copying the batch
``X[idx]`` out of the training set and with both passes over the batch fused:

    for each block of 8 rows x_r = X[idx[r]] of the batch:
        s_r  = Wt @ x_r                      # scores, one pass over the block's features
        L_r, d_r = row loss and dL_r/ds_r     # softmax: p - onehot; hinge: margin indicators
        G   += sum_r (d_r / B) outer x_r      # gradient, a second pass while the block is in cache

The features are walked in tiles of :data:`TILE` so a block's rows stay in the L1 cache across
the ``C`` classes, which are taken two at a time: each weight read serves the block's 8 rows
and each feature read 2 classes. No batch is copied and each training row is read from memory
once per epoch: ``docs/benchmarks.md`` has the figures.
:class:`Evaluator` computes the validation loss and accuracy the same way, with buffers built
once per split. Both choose threads or one thread per call through ``_ThreadChoice.run``, and
:func:`warm_up` compiles every signature they use (data writable or read-only).

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
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numba
import numpy as np
from numba import njit, prange

BLOCK = 8  # rows per block: each weight loaded from cache serves 8 rows
TILE = 512  # features per cache tile: 8 rows x 512 float32 = 16 KiB, half an L1 cache
PARTS = 4  # fixed row partition of a batch; results never depend on the thread count
PARALLEL_MIN_WORK = 1 << 19  # batch x features x classes below which threads cost more than they give
LOSS_KINDS = {"softmax": 0, "svm": 1}

_FASTMATH = {"reassoc", "contract"}


@njit(cache=True, inline="always")
def _block_index(idx, r, hi):
    """Row numbers ``idx[r:r+8]`` of a block; past ``hi`` the last one repeats (its
    coefficient is then zero)."""
    last = hi - 1
    return (idx[r], idx[min(r + 1, last)], idx[min(r + 2, last)], idx[min(r + 3, last)],
            idx[min(r + 4, last)], idx[min(r + 5, last)], idx[min(r + 6, last)],
            idx[min(r + 7, last)])


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def _block_scores(r0, r1, r2, r3, r4, r5, r6, r7, Wt, S):
    """``S[k, c] = Wt[c] . r_k`` for the block's eight rows, tile by tile, two classes at a
    time (each feature loaded serves 2 classes, each weight 8 rows)."""
    S.fill(0.0)
    n_classes = Wt.shape[0]
    for j0 in range(0, Wt.shape[1], TILE):
        j1 = min(Wt.shape[1], j0 + TILE)
        x0, x1, x2, x3 = r0[j0:j1], r1[j0:j1], r2[j0:j1], r3[j0:j1]
        x4, x5, x6, x7 = r4[j0:j1], r5[j0:j1], r6[j0:j1], r7[j0:j1]
        for c in range(0, n_classes - 1, 2):
            _tile_scores_2(x0, x1, x2, x3, x4, x5, x6, x7, Wt[c, j0:j1], Wt[c + 1, j0:j1], S, c)
        if n_classes % 2:
            _tile_scores_1(x0, x1, x2, x3, x4, x5, x6, x7, Wt[n_classes - 1, j0:j1], S, n_classes - 1)


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def _tile_scores_2(x0, x1, x2, x3, x4, x5, x6, x7, w, v, S, c):
    """``S[k, c] += w . x_k`` and ``S[k, c + 1] += v . x_k`` over one tile."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)  # float64 with float64 data
    b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = np.float32(0.0)
    for j in range(w.shape[0]):
        wj, vj = w[j], v[j]
        a0 += x0[j] * wj
        b0 += x0[j] * vj
        a1 += x1[j] * wj
        b1 += x1[j] * vj
        a2 += x2[j] * wj
        b2 += x2[j] * vj
        a3 += x3[j] * wj
        b3 += x3[j] * vj
        a4 += x4[j] * wj
        b4 += x4[j] * vj
        a5 += x5[j] * wj
        b5 += x5[j] * vj
        a6 += x6[j] * wj
        b6 += x6[j] * vj
        a7 += x7[j] * wj
        b7 += x7[j] * vj
    _add_scores(S, c, a0, a1, a2, a3, a4, a5, a6, a7)
    _add_scores(S, c + 1, b0, b1, b2, b3, b4, b5, b6, b7)


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def _tile_scores_1(x0, x1, x2, x3, x4, x5, x6, x7, w, S, c):
    """``S[k, c] += w . x_k`` over one tile (the last class of an odd number)."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
    for j in range(w.shape[0]):
        wj = w[j]
        a0 += x0[j] * wj
        a1 += x1[j] * wj
        a2 += x2[j] * wj
        a3 += x3[j] * wj
        a4 += x4[j] * wj
        a5 += x5[j] * wj
        a6 += x6[j] * wj
        a7 += x7[j] * wj
    _add_scores(S, c, a0, a1, a2, a3, a4, a5, a6, a7)


@njit(cache=True, inline="always")
def _add_scores(S, c, a0, a1, a2, a3, a4, a5, a6, a7):
    S[0, c] += a0
    S[1, c] += a1
    S[2, c] += a2
    S[3, c] += a3
    S[4, c] += a4
    S[5, c] += a5
    S[6, c] += a6
    S[7, c] += a7


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def _block_grad(r0, r1, r2, r3, r4, r5, r6, r7, S, G):
    """``G[c] += sum_k S[k, c] * r_k`` for the block's eight rows, tile by tile, two classes at
    a time (each feature loaded serves 2 classes)."""
    n_classes = G.shape[0]
    for j0 in range(0, G.shape[1], TILE):
        j1 = min(G.shape[1], j0 + TILE)
        x0, x1, x2, x3 = r0[j0:j1], r1[j0:j1], r2[j0:j1], r3[j0:j1]
        x4, x5, x6, x7 = r4[j0:j1], r5[j0:j1], r6[j0:j1], r7[j0:j1]
        for c in range(0, n_classes - 1, 2):
            _tile_grad_2(x0, x1, x2, x3, x4, x5, x6, x7, S, c, G[c, j0:j1], G[c + 1, j0:j1])
        if n_classes % 2:
            _tile_grad_1(x0, x1, x2, x3, x4, x5, x6, x7, S, n_classes - 1, G[n_classes - 1, j0:j1])


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def _tile_grad_2(x0, x1, x2, x3, x4, x5, x6, x7, S, c, g, h):
    """``g += sum_k S[k, c] x_k`` and ``h += sum_k S[k, c + 1] x_k`` over one tile."""
    d0, d1, d2, d3, d4, d5, d6, d7 = S[0, c], S[1, c], S[2, c], S[3, c], S[4, c], S[5, c], S[6, c], S[7, c]
    e0, e1, e2, e3 = S[0, c + 1], S[1, c + 1], S[2, c + 1], S[3, c + 1]
    e4, e5, e6, e7 = S[4, c + 1], S[5, c + 1], S[6, c + 1], S[7, c + 1]
    for j in range(g.shape[0]):
        y0, y1, y2, y3, y4, y5, y6, y7 = x0[j], x1[j], x2[j], x3[j], x4[j], x5[j], x6[j], x7[j]
        g[j] += ((d0 * y0 + d1 * y1 + d2 * y2 + d3 * y3)
                 + (d4 * y4 + d5 * y5 + d6 * y6 + d7 * y7))
        h[j] += ((e0 * y0 + e1 * y1 + e2 * y2 + e3 * y3)
                 + (e4 * y4 + e5 * y5 + e6 * y6 + e7 * y7))


@njit(fastmath=_FASTMATH, cache=True, inline="always")
def _tile_grad_1(x0, x1, x2, x3, x4, x5, x6, x7, S, c, g):
    """``g += sum_k S[k, c] x_k`` over one tile (the last class of an odd number)."""
    d0, d1, d2, d3, d4, d5, d6, d7 = S[0, c], S[1, c], S[2, c], S[3, c], S[4, c], S[5, c], S[6, c], S[7, c]
    for j in range(g.shape[0]):
        g[j] += ((d0 * x0[j] + d1 * x1[j] + d2 * x2[j] + d3 * x3[j])
                 + (d4 * x4[j] + d5 * x5[j] + d6 * x6[j] + d7 * x7[j]))


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
    loss = 0.0
    for r in range(lo, hi, BLOCK):
        i0, i1, i2, i3, i4, i5, i6, i7 = _block_index(idx, r, hi)
        r0, r1, r2, r3, r4, r5, r6, r7 = X[i0], X[i1], X[i2], X[i3], X[i4], X[i5], X[i6], X[i7]
        _block_scores(r0, r1, r2, r3, r4, r5, r6, r7, Wt, S)
        for k in range(BLOCK):
            if r + k >= hi:
                S[k].fill(0.0)
            elif kind == 0:
                loss += _softmax_row(S[k], y[idx[r + k]], inv_n)
            else:
                loss += _hinge_row(S[k], y[idx[r + k]], inv_n)
        _block_grad(r0, r1, r2, r3, r4, r5, r6, r7, S, G)
    return loss


@njit(cache=True)
def _reduce(losses, G, out, n):
    """``out = G[0] + G[1] + ...`` and the mean loss, always in part order."""
    for c in range(out.shape[0]):
        out[c] = G[0, c]
        for p in range(1, G.shape[0]):
            row, part = out[c], G[p, c]
            for j in range(row.shape[0]):  # the part loop outside: vectorizes over features
                row[j] += part[j]
    loss = 0.0
    for p in range(losses.shape[0]):
        loss += losses[p]
    return loss / n


def _bounds(n: int) -> np.ndarray:
    """Row ranges of the :data:`PARTS` parts of an ``n``-row batch, in whole blocks."""
    per = -(-n // PARTS)
    per += -per % BLOCK
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
def _eval_part(X, idx, y, Wt, lo, hi, kind, S):
    """Data loss sum and number of correct argmax predictions over the rows ``idx[lo:hi]``."""
    loss = 0.0
    correct = 0
    for r in range(lo, hi, BLOCK):
        i0, i1, i2, i3, i4, i5, i6, i7 = _block_index(idx, r, hi)
        r0, r1, r2, r3, r4, r5, r6, r7 = X[i0], X[i1], X[i2], X[i3], X[i4], X[i5], X[i6], X[i7]
        _block_scores(r0, r1, r2, r3, r4, r5, r6, r7, Wt, S)
        for k in range(min(BLOCK, hi - r)):
            s, yi = S[k], y[idx[r + k]]
            best = 0  # the first maximum, as np.argmax
            for c in range(1, s.shape[0]):
                if s[c] > s[best]:
                    best = c
            if best == yi:
                correct += 1
            loss += _softmax_row(s, yi, 1.0) if kind == 0 else _hinge_row(s, yi, 1.0)
    return loss, correct


@njit(cache=True)
def _evaluate_serial(X, idx, y, Wt, bounds, kind, S):
    loss, correct = 0.0, 0
    for p in range(PARTS):
        part_loss, part_correct = _eval_part(X, idx, y, Wt, bounds[p], bounds[p + 1], kind, S[p])
        loss += part_loss
        correct += part_correct
    return loss, correct


@njit(cache=True, parallel=True)
def _evaluate_parallel(X, idx, y, Wt, bounds, kind, S):
    losses = np.zeros(PARTS)
    corrects = np.zeros(PARTS, dtype=np.int64)
    for p in prange(PARTS):
        losses[p], corrects[p] = _eval_part(X, idx, y, Wt, bounds[p], bounds[p + 1], kind, S[p])
    loss, correct = 0.0, 0
    for p in range(PARTS):
        loss += losses[p]
        correct += corrects[p]
    return loss, correct


class _Kernel(NamedTuple):
    """The two variants of a kernel: same arguments, same bits."""

    serial: Callable[..., Any]
    parallel: Callable[..., Any]


_LOSS_GRAD = _Kernel(_loss_grad_serial, _loss_grad_parallel)
_EVALUATE = _Kernel(_evaluate_serial, _evaluate_parallel)

# numba's fallback thread pool ("workqueue") aborts the process if two Python threads launch
# parallel kernels at once; a caller that finds the pool busy runs the same parts serially.
_POOL = threading.Lock()


class BatchLossGrad:
    """Mean loss and gradient of mini-batches ``X[idx]`` of one training set.

    ``X`` is ``(N, D)`` C-contiguous (float32 or float64, bias column included; writable or
    read-only), ``y`` holds labels ``0..C-1``. Calling it with transposed weights ``Wt``
    ``(C, D)`` of ``X``'s dtype and row indices ``idx`` (a contiguous int64 array, e.g. a slice
    of a permutation) returns ``(loss, grad)``: the data loss as a Python float and its gradient
    ``(C, D)`` in a buffer that is reused by the next call. No regularizer: the caller adds it
    (:func:`tuner.model.add_l2`).
    """

    def __init__(self, loss: str, X: np.ndarray, y: np.ndarray, n_classes: int,
                 max_batch: int) -> None:
        self.kind = _loss_kind(loss)
        if not X.flags.c_contiguous:
            raise ValueError("X must be C-contiguous")
        self.X, self.y = _readonly(X), _labels(y, n_classes, len(X))
        d = X.shape[1]
        self.S = np.zeros((PARTS, BLOCK, n_classes), dtype=X.dtype)
        self.G = np.zeros((PARTS, n_classes, d), dtype=X.dtype)
        self.grad = np.zeros((n_classes, d), dtype=X.dtype)
        self.max_batch = max_batch
        self.threads = _ThreadChoice(parallel=max_batch * d * n_classes >= PARALLEL_MIN_WORK)
        self._bounds: dict[int, np.ndarray] = {}

    def __call__(self, Wt: np.ndarray, idx: np.ndarray) -> tuple[float, np.ndarray]:
        # full batches only are timed: a short last batch would look fast
        loss = self.threads.run(_LOSS_GRAD, *self._args(Wt, idx), timed=len(idx) == self.max_batch)
        return float(loss), self.grad

    def _args(self, Wt: np.ndarray, idx: np.ndarray) -> tuple:
        _check_weights(Wt, self.grad)
        n = len(idx)
        bounds = self._bounds.get(n)
        if bounds is None:
            bounds = self._bounds[n] = _bounds(n)
        return self.X, idx, self.y, Wt, bounds, self.kind, self.S, self.G, self.grad


class Evaluator:
    """Mean data loss (no regularizer) and accuracy on one fixed split ``(X, y)``:
    :func:`tuner.model.evaluate` without BLAS, whose idle threads would spin against the
    training kernels' threads after every epoch (docs/benchmarks.md).

    Built once per split (:func:`tuner.train.fit` builds one for the validation set), it keeps
    the split's labels, row order, part bounds and score buffers, and its own choice of threads,
    across calls. ``X`` as for :class:`BatchLossGrad` (it may be a read-only view, as in a
    worker); calling it with transposed weights ``Wt`` ``(n_classes, D)`` of ``X``'s dtype
    returns ``(loss, accuracy)``, both NaN on an empty split.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, loss: str, n_classes: int) -> None:
        self.kind = _loss_kind(loss)
        self.X = _readonly(np.ascontiguousarray(X))
        self.y = _labels(y, n_classes, len(self.X))
        n, d = self.X.shape
        self.n = n
        self.idx = np.arange(n)
        self.bounds = _bounds(n)
        self.S = np.zeros((PARTS, BLOCK, n_classes), dtype=self.X.dtype)
        self.shape = (n_classes, d)
        self.threads = _ThreadChoice(parallel=n * d * n_classes >= PARALLEL_MIN_WORK)

    def __call__(self, Wt: np.ndarray) -> tuple[float, float]:
        if self.n == 0:
            return float("nan"), float("nan")
        total, correct = self.threads.run(_EVALUATE, *self._args(Wt))
        return float(total) / self.n, int(correct) / self.n

    def _args(self, Wt: np.ndarray) -> tuple:
        _check_weights(Wt, self)
        return self.X, self.idx, self.y, Wt, self.bounds, self.kind, self.S


def evaluate(Wt: np.ndarray, X: np.ndarray, y: np.ndarray, loss: str) -> tuple[float, float]:
    """Mean data loss (no regularizer) and accuracy of transposed weights ``Wt`` ``(C, D)`` on
    ``(X, y)``, once: an :class:`Evaluator` for one call (build one to evaluate repeatedly)."""
    return Evaluator(X, y, loss, Wt.shape[0])(Wt)


class _ThreadChoice:
    """Whether a kernel runs on threads: while that beats one thread (:meth:`run`).

    Both give the same bits, so the choice can follow the machine. On an idle machine threads
    halve a CIFAR-shaped step; with a busy process on the other core, a part waits for its
    preempted sibling and a step can take 20x as long as on one thread (docs/benchmarks.md).
    Each mode's time is the median of its last :attr:`KEEP` timed calls (the first call of a
    mode, which may compile, does not count). The slower mode is timed again after
    :attr:`PROBE` calls, then after twice as many each time it loses again (up to
    :attr:`MAX_PROBE`), so probing a loaded machine costs little; a probe that wins switches
    at once. ``parallel=False``: the work is too small for threads ever to pay.
    """

    KEEP = 3
    PROBE = 64
    MAX_PROBE = 1024

    def __init__(self, parallel: bool = True) -> None:
        self.parallel = parallel
        self.samples: dict[bool, list[float]] = {True: [], False: []}
        self.seen = {True: 0, False: 0}
        self.calls = 0
        self.interval = self.PROBE
        self.next_probe = 0
        self.probing: bool | None = None

    def run(self, kernel: _Kernel, *args: Any, timed: bool = True) -> Any:
        """``kernel.parallel(*args)`` when threads are the choice and numba's pool is free,
        else ``kernel.serial(*args)``; ``timed``: the call's time counts for the choice (calls
        of the usual size only)."""
        if not (self.parallel and numba.get_num_threads() > 1):
            return kernel.serial(*args)
        threaded = self.pick() and _POOL.acquire(blocking=False)
        started = time.perf_counter()
        try:
            result = kernel.parallel(*args) if threaded else kernel.serial(*args)
        finally:
            if threaded:
                _POOL.release()
        if timed:
            self.record(threaded, time.perf_counter() - started)
        return result

    def pick(self) -> bool:
        self.calls += 1
        for mode in (True, False):
            if self.seen[mode] <= self.KEEP:
                return mode
        faster = self.faster()
        if self.calls >= self.next_probe:
            self.probing = not faster
            return not faster
        return faster

    def record(self, threaded: bool, seconds: float) -> None:
        self.seen[threaded] += 1
        if self.seen[threaded] == 1:
            return
        if self.probing == threaded:
            if seconds < self._median(not threaded):  # the machine changed: switch at once
                self.samples[threaded], self.interval = [seconds], self.PROBE
            else:
                self.samples[threaded].append(seconds)
                self.interval = min(2 * self.interval, self.MAX_PROBE)
            self.next_probe, self.probing = self.calls + self.interval, None
        else:
            self.samples[threaded].append(seconds)
        del self.samples[threaded][:-self.KEEP]

    def faster(self) -> bool:
        """Whether threads are faster, by the medians of the recent calls."""
        return self._median(True) <= self._median(False)

    def _median(self, mode: bool) -> float:
        return sorted(self.samples[mode])[len(self.samples[mode]) // 2]


def _loss_kind(loss: str) -> int:
    if loss not in LOSS_KINDS:
        raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSS_KINDS)}")
    return LOSS_KINDS[loss]


def _readonly(X: np.ndarray) -> np.ndarray:
    """A read-only view of ``X``. The kernels never write ``X``; seen read-only whatever the
    caller's flags, writable arrays and a worker's read-only shared memory share one compiled
    signature (numba compiles readonly arrays separately, and the machine code is the same)."""
    view = X.view()
    view.flags.writeable = False
    return view


def _labels(y: np.ndarray, n_classes: int, n_rows: int) -> np.ndarray:
    """``y`` as a fresh writable intp array (labels are small): one signature whatever the
    caller's dtype and flags. The kernels do not check bounds: a label outside ``0..C-1``
    (a negative one wraps) or a label array shorter than ``X`` would read and write past the
    score buffers, so both are checked here, once per split."""
    labels = np.array(y, dtype=np.intp, order="C", copy=True)
    if labels.ndim != 1 or len(labels) != n_rows:
        raise ValueError(f"labels of shape {labels.shape}, expected ({n_rows},): one per row of X")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes!r}")
    if len(labels):
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= n_classes:
            bad = low if low < 0 else high
            raise ValueError(f"label {bad} is out of range: labels must be in 0..{n_classes - 1} "
                             f"(n_classes = {n_classes})")
    return labels


def _check_weights(Wt: np.ndarray, like: Any) -> None:
    """The kernels do not check bounds: weights of another shape would write past the buffers."""
    if Wt.shape != like.shape:
        raise ValueError(f"weights of shape {Wt.shape}, expected {like.shape}")


def engine_id() -> str:
    """What a result's last bits depend on besides the inputs: tuner's and numba's versions and
    the CPU the kernels were compiled for (the vector width and FMA contraction follow it).
    Stored with every trial, so a replay can tell a changed engine from a lost reproduction."""
    import llvmlite.binding

    from tuner import __version__

    return f"tuner {__version__}, numba {numba.__version__}, {llvmlite.binding.get_host_cpu_name()}"


def set_threads(n: int) -> None:
    """Use at most ``n`` threads for parallel kernels in this process (workers share cores)."""
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


def warm_up(dtype: str | np.dtype = "float32", *, parallel: bool | None = None) -> None:
    """Compile (or load from numba's cache) every kernel signature :func:`tuner.train.fit` uses
    with ``dtype`` now, not in the first trial: a worker calls it at start-up, so a trial's wall
    time is training only.

    That is the mini-batch loss/gradient on batches (contiguous slices of a permutation) and
    the evaluation of a whole split, through the same :class:`BatchLossGrad` and
    :class:`Evaluator` that ``fit`` builds, so the arguments have exactly the dtypes, layouts and
    flags of a real run; both see the data read-only, so this covers writable data and a
    worker's read-only shared memory (:mod:`tuner.runner.shared`) alike. The thread-parallel variants are
    compiled when this process may use threads (``parallel=None``), or as told (an image built
    on one core for machines with more: ``parallel=True``). ``tests/test_kernels.py`` checks
    that a run on either kind of data compiles nothing more.
    """
    if parallel is None:
        parallel = numba.get_num_threads() > 1
    n, d, c = 2 * BLOCK, 4, 2
    X, y = np.zeros((n, d), dtype=dtype), np.zeros(n, dtype=np.intp)
    Wt = np.zeros((c, d), dtype=dtype)
    idx = np.random.default_rng(0).permutation(n)[:BLOCK]
    loss_grad, evaluator = BatchLossGrad("softmax", X, y, c, BLOCK), Evaluator(X, y, "softmax", c)
    for kernel, args in ((_LOSS_GRAD, loss_grad._args(Wt, idx)), (_EVALUATE, evaluator._args(Wt))):
        kernel.serial(*args)
        if parallel:
            with _POOL:
                kernel.parallel(*args)
