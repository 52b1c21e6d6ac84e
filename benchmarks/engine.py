"""Epoch time of ``tuner.train.fit`` against a plain PyTorch CPU loop doing the same work.

Workload (issue 2): the CIFAR-10-shaped synthetic set (49000 train x 3072 features + bias
column, 10 classes), softmax loss, batch 256, Adam (lr 1e-3, torch defaults), float32, no
regularizer, no validation pass. The PyTorch side trains ``nn.Linear(3073, 10, bias=False)``
over the same bias-augmented ``X`` with ``torch.optim.Adam`` and ``F.cross_entropy``, on the
same batches: each epoch uses the permutation ``fit`` draws (its seeded shuffle generator is
reproduced below), one ``index_select`` gather per batch and ``loss.item()`` per batch (``fit``
also reads the loss every update, for the divergence guard and the epoch's train loss).

Data generation and splitting are outside the timed region. Per-epoch times are the median
over the epochs after a warm-up epoch. ``torch.set_num_threads`` and tuner's kernel threads are set
to numpy's BLAS thread count (threadpoolctl), so both sides use the same number of cores.

    .venv/bin/python benchmarks/engine.py            # 49000 x 3073, 1 warm-up + 5 timed epochs
    .venv/bin/python benchmarks/engine.py --quick    # 8000 x 769, a smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

from tuner.data import make_synthetic, split_dataset
from tuner.train import fit


def blas_threads() -> int:
    """Threads numpy's BLAS uses (threadpoolctl), or 1 if it cannot be told."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return 1
    counts = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    return max(counts) if counts else 1


def make_data(n_train: int, d: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Standardized float32 training set with a bias column: ``(n_train, d + 1)``."""
    ds = make_synthetic(n=n_train + 2 * 1000, d=d, classes=classes, seed=seed)
    splits = split_dataset(ds, val_size=1000, test_size=1000, seed=seed, dtype="float32")
    return splits.X_train, splits.y_train


def epoch_permutations(seed: int, n: int, epochs: int) -> list[np.ndarray]:
    """The permutations ``fit(..., seed=seed)`` draws, one per epoch (its second spawned stream)."""
    shuffle_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1])
    return [shuffle_rng.permutation(n) for _ in range(epochs)]


def time_ours(X: np.ndarray, y: np.ndarray, *, epochs: int, batch: int, lr: float,
              seed: int) -> tuple[list[float], float]:
    """Wall time of each epoch of ``fit`` and its last epoch's train loss."""
    params = {"optimizer": "adam", "lr": lr, "batch_size": batch, "base_batch_size": batch,
              "loss": "softmax", "reg": 0.0}
    stamps: list[float] = []

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        stamps.append(time.perf_counter())

    start = time.perf_counter()
    result = fit(params, X, y, epochs=epochs, seed=seed, dtype="float32", on_epoch=on_epoch)
    assert not result.diverged, result.divergence
    times = np.diff([start, *stamps]).tolist()
    return times, result.history[-1]["train_loss"]


def time_torch(torch, X: np.ndarray, y: np.ndarray, perms: list[np.ndarray], *, batch: int,
               lr: float, seed: int) -> tuple[list[float], float]:
    """Wall time of each epoch of a plain PyTorch loop over the same batches."""
    import torch.nn.functional as F

    torch.manual_seed(seed)
    X_t, y_t = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    model = torch.nn.Linear(X.shape[1], int(y.max()) + 1, bias=False)
    with torch.no_grad():
        model.weight.normal_(0.0, 1e-3)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    times: list[float] = []
    mean_loss = float("nan")
    for perm in perms:
        start = time.perf_counter()
        order = torch.from_numpy(perm)
        total = 0.0
        for lo in range(0, len(perm), batch):
            idx = order[lo:lo + batch]
            xb, yb = X_t.index_select(0, idx), y_t.index_select(0, idx)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item()
        times.append(time.perf_counter() - start)
        mean_loss = total / -(-len(perm) // batch)
    return times, mean_loss


def breakdown(X: np.ndarray, y: np.ndarray, perms: list[np.ndarray], *, batch: int,
              lr: float) -> dict[str, list[float]]:
    """Seconds per epoch spent in each part of a training step, timed in the loop, one list
    entry per epoch: the numpy path the kernel replaced (one gather per batch, then
    ``tuner.model.softmax_loss``, i.e. two skinny GEMMs), then tuner's fused loss/gradient
    kernel and its Adam step. Each in its own pass over the epochs: numba's and OpenBLAS's
    idle threads spin for a while after their parallel regions and would slow each other."""
    from tuner.kernels import BatchLossGrad
    from tuner.model import softmax_loss
    from tuner.optim import make_optimizer

    classes = int(y.max()) + 1
    Wt = np.zeros((classes, X.shape[1]), dtype=X.dtype)
    loss_and_grad = BatchLossGrad("softmax", X, y, classes, batch)
    buf = np.empty((batch, X.shape[1]), dtype=X.dtype)
    opt = make_optimizer("adam")
    parts: dict[str, list[float]] = {key: [] for key in ("fused loss+grad", "adam", "numpy gather",
                                                          "numpy loss+grad")}
    for perm in perms:
        gather = loss = 0.0
        for lo in range(0, len(perm), batch):
            idx = perm[lo:lo + batch]
            t0 = time.perf_counter()
            Xb = np.take(X, idx, axis=0, out=buf[: len(idx)], mode="clip")
            t1 = time.perf_counter()
            softmax_loss(Wt.T, Xb, y[idx], 0.0)
            gather += t1 - t0
            loss += time.perf_counter() - t1
        parts["numpy gather"].append(gather)
        parts["numpy loss+grad"].append(loss)
    for perm in perms:
        kernel = step = 0.0
        for lo in range(0, len(perm), batch):
            idx = perm[lo:lo + batch]
            t0 = time.perf_counter()
            _, grad = loss_and_grad(Wt, idx)
            t1 = time.perf_counter()
            opt.step(Wt, grad, lr)
            kernel += t1 - t0
            step += time.perf_counter() - t1
        parts["fused loss+grad"].append(kernel)
        parts["adam"].append(step)
    return parts


def summary(times: list[float]) -> float:
    """Median of the epochs after each run's warm-up epoch."""
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=49000, help="training examples")
    parser.add_argument("--features", type=int, default=3072, help="features (bias not counted)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=5,
                        help="timed epochs per run (after 1 warm-up)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="alternating runs of each side (evens out noise from other processes)")
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS / torch threads (default: numpy's current BLAS thread count)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-torch", action="store_true", help="time tuner only")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the parts of a training step (kernel, Adam; numpy gather and GEMMs)")
    parser.add_argument("--quick", action="store_true",
                        help="small smoke run: 8000 x 768 features, 2 timed epochs, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_train, args.features, args.epochs, args.repeats = 8000, 768, 2, 1

    torch = None if args.no_torch else _import_torch()
    threads = args.threads or blas_threads()
    _limit_blas(threads)
    print(f"machine: {platform.machine()} {_cpu_name()}, {os.cpu_count()} logical CPUs, "
          f"Python {platform.python_version()}, numpy {np.__version__}"
          + (f", torch {torch.__version__}" if torch else ""))
    print(f"numpy BLAS threads: {blas_threads()}; tuner kernel threads: {_numba_threads()}"
          + (f"; torch.set_num_threads({threads})" if torch else ""))
    if torch is not None:
        torch.set_num_threads(threads)

    print(f"generating synthetic data: {args.n_train} x {args.features} (+ bias), "
          f"{args.classes} classes ...", flush=True)
    X, y = make_data(args.n_train, args.features, args.classes, args.seed)
    print(f"workload: X {X.shape} {X.dtype}, batch {args.batch_size}, Adam lr {args.lr:g}, "
          f"{-(-len(y) // args.batch_size)} updates/epoch; {args.repeats} x (1 warm-up + "
          f"{args.epochs} timed epochs) per side", flush=True)

    epochs = args.epochs + 1
    perms = epoch_permutations(args.seed, len(y), epochs)
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(args.repeats):
        times, ours_loss = time_ours(X, y, epochs=epochs, batch=args.batch_size, lr=args.lr,
                                     seed=args.seed)
        print(f"tuner  epoch times (s): {_fmt(times)}  last train loss {ours_loss:.4f}", flush=True)
        ours += times[1:]
        if torch is not None:
            times, theirs_loss = time_torch(torch, X, y, perms, batch=args.batch_size,
                                            lr=args.lr, seed=args.seed)
            print(f"torch  epoch times (s): {_fmt(times)}  last train loss {theirs_loss:.4f}",
                  flush=True)
            theirs += times[1:]
    if args.breakdown:
        runs = breakdown(X, y, perms, batch=args.batch_size, lr=args.lr)
        parts = {key: statistics.median(times[1:]) for key, times in runs.items()}
        numpy_path = parts["numpy gather"] + parts["numpy loss+grad"]
        print("step breakdown (s/epoch, median): "
              + ", ".join(f"{key} {value:.3f}" for key, value in parts.items())
              + f"; fused / numpy loss+grad: {parts['fused loss+grad'] / numpy_path:.2f}")
    print(f"tuner  epoch: median {summary(ours):.3f} s, min {min(ours):.3f} s")
    if torch is not None:
        print(f"torch  epoch: median {summary(theirs):.3f} s, min {min(theirs):.3f} s")
        print(f"ratio ours/torch (medians): {summary(ours) / summary(theirs):.2f} "
              f"(target <= 0.50)")
    return 0


def _import_torch():
    try:
        import torch
    except ImportError:
        print("note: torch is not importable; timing tuner only "
              "(install it with .venv/bin/pip install torch==2.13.0)")
        return None
    return torch


def _limit_blas(threads: int) -> None:
    """Set numpy's BLAS and tuner's kernels to ``threads`` for the rest of the process."""
    from tuner.kernels import set_threads

    set_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=threads, user_api="blas")


def _numba_threads() -> int:
    import numba

    return numba.get_num_threads()


def _fmt(times: list[float]) -> str:
    return "[" + ", ".join(f"{t:.3f}" for t in times) + "]"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


if __name__ == "__main__":
    sys.exit(main())
