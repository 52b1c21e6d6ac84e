"""The LogisticRegression reference (``tuner.reference``) with BLAS on one thread against BLAS's
default thread count, on an idle machine and with one core kept busy (as while a study's workers
train, or the dashboard serves).

Both variants run in this process, alternating, on the same data; the figure is the ratio of
median fit times (default threads / one thread: above 1 means one thread is faster).

    .venv/bin/python benchmarks/reference.py               # digits, 5,000 x 200, 20,000 x 500
    .venv/bin/python benchmarks/reference.py --large       # + 49,000 x 3,072 (CIFAR-shaped)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuner.data import load_splits  # noqa: E402
from tuner.reference import logistic_regression_accuracy  # noqa: E402


def _busy(stop: mp.Event) -> None:  # type: ignore[valid-type]
    x = 0
    while not stop.is_set():  # type: ignore[attr-defined]
        for _ in range(100_000):
            x += 1


def _problems(large: bool) -> list[tuple[str, np.ndarray, np.ndarray]]:
    digits = load_splits("digits", val_size=0.2, test_size=0.2, seed=0)
    out = [("digits 1,078 x 65", digits.X_train, digits.y_train)]
    rng = np.random.default_rng(0)
    sizes = [(5_000, 200), (20_000, 500)] + ([(49_000, 3_072)] if large else [])
    for n, d in sizes:
        X = rng.standard_normal((n, d)).astype(np.float32)
        W = rng.standard_normal((d, 10))
        y = np.argmax(X @ W + 3 * rng.standard_normal((n, 10)), axis=1)
        out.append((f"{n:,} x {d:,}", np.hstack([X, np.ones((n, 1), np.float32)]), y))
    return out


def _time(X: np.ndarray, y: np.ndarray, threads: int | None, max_iter: int) -> float:
    start = time.perf_counter()
    if threads is None:  # what the reference did before: BLAS's default thread count
        from sklearn.linear_model import LogisticRegression

        LogisticRegression(max_iter=max_iter).fit(X[:, :-1], y)
    else:
        assert threads == 1
        logistic_regression_accuracy(X, y, {}, max_iter=max_iter)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--large", action="store_true", help="also the CIFAR-shaped 49,000 x 3,072")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    described = [f"{i['internal_api']} {i['num_threads']} threads" for i in blas]
    print(f"BLAS: {', '.join(described)}")
    problems = _problems(args.large)
    print(f"{'problem':<22} {'machine':<10} {'1 thread s':>11} {'default s':>10} {'default/1':>10}")
    for busy in (False, True):
        stop = mp.Event()
        hog = mp.Process(target=_busy, args=(stop,), daemon=True) if busy else None
        if hog is not None:
            hog.start()
        try:
            for name, X, y in problems:
                max_iter = 100 if X.shape[0] > 40_000 else 1000
                one, default = [], []
                for _ in range(args.repeats):
                    one.append(_time(X, y, 1, max_iter))
                    default.append(_time(X, y, None, max_iter))
                a, b = statistics.median(one), statistics.median(default)
                print(f"{name:<22} {'1 busy' if busy else 'idle':<10} {a:>11.3f} {b:>10.3f} "
                      f"{b / a:>10.2f}", flush=True)
        finally:
            stop.set()
            if hog is not None:
                hog.join()


if __name__ == "__main__":
    with threadpool_limits(None):
        main()
