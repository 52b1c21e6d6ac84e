"""tuner.kernels: the fused mini-batch loss/gradient equals the reference losses of tuner.model
on X[idx], in both dtypes and every shape corner (partial 4-row blocks, feature tiles, two
classes, one row), is bit-identical on one thread or several, and keeps non-finite values
non-finite for the divergence guard; warm_up compiles every signature a worker's run uses."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numba
import numpy as np
import pytest

from tuner import kernels
from tuner.kernels import TILE, BatchLossGrad
from tuner.model import evaluate, softmax_loss, svm_loss
from tuner.train import fit

REFERENCE = {"softmax": softmax_loss, "svm": svm_loss}
TOL = {"float64": (1e-12, 1e-13), "float32": (2e-5, 1e-5)}  # (loss rtol, grad atol / max|grad|)

SHAPES = [  # (N, D, C, batch)
    (300, 65, 10, 256),  # digits-like
    (300, 7, 3, 37),  # batch not a multiple of 4; fewer features than a tile
    (400, 2 * TILE + 3, 10, 101),  # several feature tiles, the last one partial
    (50, 5, 2, 1),  # one row, two classes
    (50, 5, 4, 6),  # fewer rows than the parts times 4
    (300, TILE + 9, 7, 64),  # classes in pairs and one left over, over two tiles
]


def problem(n, d, c, dtype, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    y = rng.integers(0, c, n)
    W = (scale * rng.standard_normal((d, c))).astype(dtype)
    return X, y, W, rng


def kernel_result(loss, X, y, W, idx, *, parallel=None):
    f = BatchLossGrad(loss, X, y, W.shape[1], len(idx))
    if parallel is not None:
        f.threads.parallel = parallel
    value, grad = f(np.ascontiguousarray(W.T), idx)
    return value, grad.T.copy()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("loss", ["softmax", "svm"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_equals_the_reference_loss_on_the_gathered_batch(shape, loss, dtype):
    n, d, c, batch = shape
    X, y, W, rng = problem(n, d, c, dtype)
    idx = rng.permutation(n)[:batch]
    value, grad = kernel_result(loss, X, y, W, idx)
    ref_value, ref_grad = REFERENCE[loss](W, X[idx], y[idx], 0.0)
    rtol, gtol = TOL[dtype]
    assert value == pytest.approx(ref_value, rel=rtol)
    assert grad.dtype == np.dtype(dtype)
    assert np.abs(grad - ref_grad).max() <= gtol * max(np.abs(ref_grad).max(), 1e-30)


@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_one_thread_or_several_give_identical_bits(loss):
    X, y, W, rng = problem(600, TILE + 40, 10, "float32")
    idx = rng.permutation(600)[:203]
    serial = kernel_result(loss, X, y, W, idx, parallel=False)
    parallel = kernel_result(loss, X, y, W, idx, parallel=True)
    assert serial[0] == parallel[0]
    np.testing.assert_array_equal(serial[1], parallel[1])


def test_fit_is_bit_identical_whatever_the_thread_count():
    X, y, _, _ = problem(2000, 300, 10, "float32")  # batch x D x C above PARALLEL_MIN_WORK
    params = {"optimizer": "adam", "lr": 1e-2, "batch_size": 256, "decay": "cosine"}
    assert 256 * 300 * 10 >= kernels.PARALLEL_MIN_WORK
    before = numba.get_num_threads()
    try:
        kernels.set_threads(1)
        one = fit(params, X, y, X[:100], y[:100], epochs=2, seed=5)
        kernels.set_threads(2)
        two = fit(params, X, y, X[:100], y[:100], epochs=2, seed=5)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one.W, two.W)
    assert one.history == two.history


def test_concurrent_callers_neither_crash_nor_disturb_each_other():
    """numba's fallback thread pool cannot run two parallel kernels at once; a second caller
    runs the same parts serially (same bits)."""
    X, y, W, rng = problem(3000, 600, 10, "float32")
    batches = [rng.permutation(3000)[:256] for _ in range(6)]
    expected = [kernel_result("softmax", X, y, W, idx, parallel=False) for idx in batches]
    results: dict[tuple[int, int], tuple] = {}

    def work(thread):
        for round_ in range(5):
            for i, idx in enumerate(batches):
                results[thread, round_ * len(batches) + i] = kernel_result("softmax", X, y, W, idx)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (_, k), (value, grad) in results.items():
        assert value == expected[k % len(batches)][0]
        np.testing.assert_array_equal(grad, expected[k % len(batches)][1])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_huge_scores_stay_finite_like_the_reference(dtype):
    X, y, W, rng = problem(64, 9, 5, dtype, scale=1e4)  # scores ~1e4: exp overflows unshifted
    idx = rng.permutation(64)[:32]
    value, grad = kernel_result("softmax", X, y, W, idx)
    ref_value, ref_grad = softmax_loss(W, X[idx], y[idx], 0.0)
    assert np.isfinite(value) and np.isfinite(grad).all()
    assert value == pytest.approx(ref_value, rel=1e-5)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-6)


@pytest.mark.parametrize("loss", ["softmax", "svm"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weights_give_a_non_finite_loss(loss, bad):
    """No "no-NaN / no-inf" fast-math: the divergence guard must see what happened."""
    X, y, W, rng = problem(40, 6, 3, "float32")
    W[2, 1] = bad
    value, _ = kernel_result(loss, X, y, W, rng.permutation(40)[:16])
    assert not np.isfinite(value)


def test_hinge_counts_only_strictly_positive_margins():
    X = np.eye(3, dtype=np.float64)
    W = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # margins exactly 0
    y = np.array([0, 1, 2])
    value, grad = kernel_result("svm", X, y, W, np.arange(3))
    assert value == 0.0
    assert not grad.any()


def test_inputs_are_not_modified():
    X, y, W, rng = problem(100, 20, 4, "float32")
    X0, y0, W0 = X.copy(), y.copy(), W.copy()
    idx = rng.permutation(100)[:30]
    idx0 = idx.copy()
    kernel_result("softmax", X, y, W, idx)
    for a, b in ((X, X0), (y, y0), (W, W0), (idx, idx0)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("loss", ["softmax", "svm"])
@pytest.mark.parametrize("n, d, c", [(7, 5, 10), (359, 65, 3), (1000, TILE + 77, 10)])
def test_evaluate_equals_the_reference(n, d, c, loss, dtype):
    X, y, W, _ = problem(n, d, c, dtype, scale=0.3)
    value, accuracy = kernels.evaluate(np.ascontiguousarray(W.T), X, y, loss)
    ref_value, ref_accuracy = evaluate(W, X, y, loss)
    assert value == pytest.approx(ref_value, rel=TOL[dtype][0])
    assert accuracy == ref_accuracy


@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_evaluation_on_one_thread_or_several_gives_identical_bits(loss):
    X, y, W, _ = problem(900, TILE + 40, 10, "float32", scale=0.1)  # above PARALLEL_MIN_WORK
    Wt = np.ascontiguousarray(W.T)
    results = []
    for parallel in (False, True):
        evaluator = kernels.Evaluator(X, y, loss, 10)
        evaluator.threads.parallel = parallel
        results.append([evaluator(Wt) for _ in range(6)])  # threads first, then one thread
    assert results[0] == results[1] == [kernels.evaluate(Wt, X, y, loss)] * 6


def test_an_evaluator_is_reused_across_epochs_and_checks_the_weights():
    X, y, W, rng = problem(200, 30, 5, "float64", scale=0.3)
    evaluator = kernels.Evaluator(X, y, "softmax", 5)
    for _ in range(3):
        Wt = np.ascontiguousarray(W.T)
        assert evaluator(Wt) == kernels.evaluate(Wt, X, y, "softmax")
        W = W + 0.1 * rng.standard_normal(W.shape)
    with pytest.raises(ValueError, match=r"weights of shape \(4, 30\), expected \(5, 30\)"):
        evaluator(np.zeros((4, 30)))
    with pytest.raises(ValueError, match="weights of shape"):
        BatchLossGrad("svm", X, y, 5, 8)(np.zeros((5, 29)), np.arange(8))
    empty = kernels.Evaluator(X[:0], y[:0], "svm", 5)(np.zeros((5, 30)))
    assert all(v != v for v in empty)  # NaN


@pytest.mark.parametrize("bad, label", [(-1, "-1"), (5, "5"), (7, "7")])
def test_out_of_range_labels_are_refused_before_any_kernel_runs(bad, label):
    # the kernels do not check bounds: -1 wrapped to the last class, 5 wrote past the buffers
    X, y, W, _ = problem(40, 6, 5, "float64")
    y[7] = bad
    message = rf"label {label} is out of range: labels must be in 0\.\.4 \(n_classes = 5\)"
    with pytest.raises(ValueError, match=message):
        BatchLossGrad("softmax", X, y, 5, 8)
    with pytest.raises(ValueError, match=message):
        kernels.Evaluator(X, y, "svm", 5)
    with pytest.raises(ValueError, match=message):
        kernels.evaluate(np.ascontiguousarray(W.T), X, y, "softmax")


def test_labels_must_match_the_rows_of_X():
    X, y, W, _ = problem(40, 6, 5, "float64")
    with pytest.raises(ValueError, match=r"labels of shape \(39,\), expected \(40,\)"):
        BatchLossGrad("softmax", X, y[:-1], 5, 8)
    with pytest.raises(ValueError, match=r"labels of shape \(39,\), expected \(40,\)"):
        kernels.Evaluator(X, y[:-1], "softmax", 5)


def test_evaluate_breaks_ties_like_argmax():
    X = np.ones((3, 2))
    Wt = np.zeros((4, 2))  # every class scores 0: argmax picks class 0
    assert kernels.evaluate(Wt, X, np.array([0, 1, 0]), "softmax")[1] == pytest.approx(2 / 3)


def run_choice(choice, timings, calls):
    picks = []
    for _ in range(calls):
        mode = choice.pick()
        picks.append(mode)
        choice.record(mode, 5.0 if choice.seen[mode] == 0 else timings[mode])  # 1st: compiling
    return picks


def test_threads_are_used_while_they_beat_one_thread():
    choice = kernels._ThreadChoice()
    keep = choice.KEEP
    picks = run_choice(choice, {True: 0.010, False: 0.020}, 1000)  # threads twice as fast
    assert picks[:2 * keep + 2] == [True] * (keep + 1) + [False] * (keep + 1)  # 1st not counted
    assert choice._median(True) == 0.010
    probes = picks[2 * keep + 2:].count(False)  # one thread only to check, ever more rarely
    assert 1 <= probes <= 4
    later = run_choice(choice, {True: 0.050, False: 0.020}, 3000)  # the other core got busy
    switched = later.index(False)
    assert switched <= choice.MAX_PROBE
    assert later[switched + 10:].count(True) <= 6  # threads only as ever rarer probes
    again = run_choice(choice, {True: 0.010, False: 0.020}, choice.MAX_PROBE + 100)  # idle again
    assert again[-50:] == [True] * 50


def test_run_times_only_what_it_is_told_and_never_threads_small_work():
    calls = []
    kernel = kernels._Kernel(lambda a: calls.append(("serial", a)) or a,
                             lambda a: calls.append(("parallel", a)) or a)
    small = kernels._ThreadChoice(parallel=False)
    assert small.run(kernel, 1) == 1 and small.calls == 0 and calls == [("serial", 1)]
    choice = kernels._ThreadChoice()
    assert choice.run(kernel, 2, timed=False) == 2
    assert choice.calls == 1 and choice.seen == {True: 0, False: 0}  # picked, not timed
    choice.run(kernel, 3)
    assert sum(choice.seen.values()) == 1
    if numba.get_num_threads() > 1:
        assert calls[1:] == [("parallel", 2), ("parallel", 3)]  # threads are tried first


WARM_UP_THEN_RUN = """
import json, sys
import numpy as np
from numba.core.registry import CPUDispatcher
from tuner import kernels
from tuner.data import make_synthetic, split_dataset
from tuner.runner.shared import SharedSplits
from tuner.train import fit

def signatures():
    return {name: sorted(map(str, d.signatures)) for name, d in vars(kernels).items()
            if isinstance(d, CPUDispatcher)}

threads = int(sys.argv[1])
kernels.set_threads(threads)  # as a worker does, before warm_up
for dtype in ("float32", "float64"):
    kernels.warm_up(dtype)
warm = signatures()
params = {"optimizer": "adam", "lr": 1e-2, "batch_size": 256}
for dtype in ("float32", "float64"):
    # big enough for threads in training and evaluation (PARALLEL_MIN_WORK), and small
    for n, d in ((1500, 300), (300, 20)):
        splits = split_dataset(make_synthetic(n=n, d=d, classes=10, seed=1), val_size=0.4,
                               test_size=0.1, dtype=dtype)
        shared = SharedSplits(splits)
        arrays, blocks = shared.handle.attach()  # read-only views, as in a worker
        assert not arrays["X_train"].flags.writeable
        for loss in ("softmax", "svm"):
            fit(dict(params, loss=loss), arrays["X_train"], arrays["y_train"], arrays["X_val"],
                arrays["y_val"], epochs=3, dtype=dtype)
            fit(dict(params, loss=loss), splits.X_train, splits.y_train, splits.X_val,
                splits.y_val, epochs=3, dtype=dtype)  # writable
            W = np.ascontiguousarray(np.ones((10, splits.X_val.shape[1]), dtype=dtype))
            kernels.evaluate(W, arrays["X_val"], arrays["y_val"], loss)
        for block in blocks:
            block.close()
        shared.close()
json.dump({"warm": warm, "after": signatures()}, sys.stdout)
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_warm_up_compiles_every_signature_a_worker_run_uses(threads):
    """A worker trains on read-only views of shared memory (numba compiles read-only arrays
    apart from writable ones) and evaluates the validation split: after warm_up of both
    dtypes, neither that nor a run on writable arrays compiles anything. A fresh interpreter,
    so no earlier test has compiled them already (numba's disk cache still counts: loading a
    signature from it adds it too)."""
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("one core: no threads")
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(WARM_UP_THEN_RUN), str(threads)],
                         capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    result = json.loads(out.stdout)
    warm, after = result["warm"], result["after"]
    assert {name: sigs for name, sigs in after.items() if sigs != warm[name]} == {}
    used = ["_loss_grad_serial", "_evaluate_serial"]
    if threads > 1:
        used += ["_loss_grad_parallel", "_evaluate_parallel"]
    for name in used:  # one signature per dtype, X read-only whatever the caller's flags
        assert [sig[:36] for sig in warm[name]] == ["(Array(float32, 2, 'C', True, aligne",
                                                    "(Array(float64, 2, 'C', True, aligne"]


def test_bad_arguments_are_refused():
    X = np.zeros((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="unknown loss 'hinge'; valid: softmax, svm"):
        BatchLossGrad("hinge", X, np.zeros(4, dtype=int), 2, 4)
    with pytest.raises(ValueError, match="C-contiguous"):
        BatchLossGrad("svm", np.asfortranarray(np.zeros((4, 3))), np.zeros(4, dtype=int), 2, 4)
