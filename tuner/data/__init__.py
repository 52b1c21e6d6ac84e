"""Datasets: scikit-learn's bundled sets, a seeded synthetic generator and user files, split into
stratified train / validation / test sets, standardized on the training set, with a bias column.

Sources (``name`` in :func:`load_dataset`):

- ``digits``, ``iris``, ``wine``, ``breast_cancer``: bundled with scikit-learn (no download);
- ``synthetic``: Gaussian classes in ``d`` dimensions with correlated nuisance factors
  (``n``, ``d``, ``classes``, ``difficulty`` in [0, 1]); ``n=51000, d=3072, classes=10`` with a
  1000/1000 validation/test split is shaped like CS231n's CIFAR-10 (49000 x 3072 x 10);
- a path to a ``.csv``, ``.tsv`` (tabs) or ``.parquet`` file (one row per example, a named
  ``target`` column, all other columns numeric features) or a ``.npz`` file with arrays ``X``
  (N, D) and ``y`` (N,).

Labels of any type are mapped to ``0..C-1`` in sorted order; :attr:`Splits.class_names` keeps
the originals. Every problem with the data raises :class:`~tuner.errors.DataError` with a
message that says what is wrong and where; what a user file is checked for is in
:mod:`tuner.data.files`.

Modules: :mod:`~tuner.data.dataset` (the ``Dataset`` and ``Splits`` types),
:mod:`~tuner.data.files` (user files), :mod:`~tuner.data.split` (the stratified split),
:mod:`~tuner.data.cache` (prepared splits of the bundled sets); this module ties them together.

The prepared splits of the bundled sets are cached (a few hundred kB each, in
``$TUNER_CACHE_DIR``, else ``$XDG_CACHE_HOME/tuner``, else ``~/.cache/tuner``; an empty
``TUNER_CACHE_DIR`` turns it off): loading them again skips importing scikit-learn, which is most
of a short command's start-up. The key holds every argument and the versions of scikit-learn
and tuner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tuner.data.cache import SPLIT_ARRAYS, cache_dir, cache_file, read_splits, write_splits
from tuner.data.dataset import BUILTIN_DATASETS, FILE_FORMATS, Dataset, Splits, strip_bias
from tuner.data.files import check_dataset_name, data_file, load_npz, load_table
from tuner.data.split import split_dataset, split_size_problem
from tuner.errors import DataError

__all__ = ["BUILTIN_DATASETS", "FILE_FORMATS", "SPLIT_ARRAYS", "Dataset", "Splits", "cache_dir",
           "check_dataset_name", "data_file", "load_dataset", "load_splits", "make_synthetic",
           "split_dataset", "split_size_problem", "strip_bias"]


def load_dataset(name: str, *, target: str | None = None, base_dir: Path | None = None,
                 delimiter: str | None = None, n: int = 51000, d: int = 3072, classes: int = 10,
                 difficulty: float = 0.5, seed: int = 0) -> Dataset:
    """Load a bundled dataset, generate ``synthetic`` data, or read a user file.

    ``target`` names the label column of CSV/Parquet files; ``delimiter`` is a CSV/TSV file's
    field separator (default: a comma, a tab for ``.tsv``). Relative paths are resolved against
    ``base_dir`` (the study file's folder) when given. ``n, d, classes, difficulty, seed`` are
    used by ``synthetic`` only.
    """
    if name in BUILTIN_DATASETS:
        return _load_builtin(name)
    if name == "synthetic":
        return make_synthetic(n=n, d=d, classes=classes, difficulty=difficulty, seed=seed)
    path = data_file(name, base_dir)
    fmt = FILE_FORMATS[path.suffix.lower()]
    if fmt == "npz":
        return load_npz(path)
    return load_table(path, fmt, target, delimiter)


def make_synthetic(*, n: int, d: int, classes: int, difficulty: float = 0.5,
                   seed: int = 0) -> Dataset:
    """Seeded Gaussian-class data: ``x = mu[y] + F @ L + noise``.

    Class means ``mu`` are random directions with pairwise distance about ``sep = 4*(1 -
    difficulty) + 0.25`` noise standard deviations; ``F @ L`` adds 16 shared nuisance factors of
    variance 4 (correlated features make the problem ill-conditioned, like natural images).
    Generated in float32 to keep CIFAR-sized sets at ~600 MB.
    """
    if n < 2 * classes or d < 1 or classes < 2:
        raise DataError(f"synthetic data needs classes >= 2, d >= 1 and n >= 2*classes; "
                        f"got n={n}, d={d}, classes={classes}")
    if not 0.0 <= difficulty <= 1.0:
        raise DataError(f"synthetic difficulty must be in [0, 1], got {difficulty!r}")
    rng = np.random.default_rng(seed)
    sep = 4.0 * (1.0 - difficulty) + 0.25
    y = rng.permutation(np.arange(n) % classes)
    means = rng.standard_normal((classes, d), dtype=np.float32) * np.float32(sep / np.sqrt(2.0 * d))
    factors = rng.standard_normal((16, d), dtype=np.float32) * np.float32(2.0 / np.sqrt(16))
    X = rng.standard_normal((n, d), dtype=np.float32)
    X += means[y]
    X += rng.standard_normal((n, 16), dtype=np.float32) @ factors
    return Dataset(name=f"synthetic(n={n}, d={d}, classes={classes}, difficulty={difficulty:g})",
                   X=X, y=y.astype(np.intp), class_names=[str(c) for c in range(classes)],
                   feature_names=[f"x{i}" for i in range(d)])


def load_splits(name: str, *, val_size: float = 0.2, test_size: float = 0.2, seed: int = 0,
                dtype: str = "float32", standardize: bool = True, **source: Any) -> Splits:
    """:func:`load_dataset` then :func:`split_dataset`; ``source`` goes to ``load_dataset``.
    A bundled set's splits come from the cache when they are there (see the module docs)."""
    cached = None
    if name in BUILTIN_DATASETS:
        cached = cache_file(name, val_size=val_size, test_size=test_size, seed=seed,
                             dtype=np.dtype(dtype).name, standardize=standardize)
        splits = read_splits(cached) if cached is not None else None
        if splits is not None:
            return splits
    ds = load_dataset(name, seed=seed, **source)
    splits = split_dataset(ds, val_size=val_size, test_size=test_size, seed=seed, dtype=dtype,
                           standardize=standardize)
    if cached is not None:
        write_splits(cached, splits)
    return splits


def _load_builtin(name: str) -> Dataset:
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    names = [str(t) for t in getattr(bunch, "target_names", np.unique(bunch.target))]
    features = [str(f) for f in getattr(bunch, "feature_names", range(bunch.data.shape[1]))]
    return Dataset(name=name, X=np.asarray(bunch.data, dtype=np.float64),
                   y=np.asarray(bunch.target, dtype=np.intp), class_names=names,
                   feature_names=features)
