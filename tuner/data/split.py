"""Stratified, seeded train / validation / test splits, standardized on the training set."""

from __future__ import annotations

from typing import Any

import numpy as np

from tuner.data.dataset import Dataset, Splits
from tuner.errors import DataError
from tuner.params import literal


def split_dataset(ds: Dataset, *, val_size: float = 0.2, test_size: float = 0.2, seed: int = 0,
                  dtype: str = "float32", standardize: bool = True) -> Splits:
    """Stratified, seeded train/validation/test split.

    ``val_size`` and ``test_size`` are fractions of the whole dataset when < 1, or example
    counts when >= 1. Standardization (mean 0, std 1 per feature; constant features keep std 1)
    is fitted on the training set only, then a bias column of ones is appended.
    """
    from sklearn.model_selection import train_test_split

    n = len(ds.y)
    n_val, n_test = _count(val_size, n, "val_size"), _count(test_size, n, "test_size")
    if n - n_val - n_test < ds.n_classes:
        left = (f"leave {n - n_val - n_test} for training, fewer than the {ds.n_classes} classes"
                if n_val + n_test <= n else f"are more than the {n} examples there are")
        raise DataError(f"{ds.name}: validation ({n_val}) + test ({n_test}) examples {left}",
                        hint="lower data.val_size / data.test_size")
    counts = np.bincount(ds.y, minlength=ds.n_classes)
    need = 1 + (n_val > 0) + (n_test > 0)
    names = [str(c) for c in ds.class_names]
    for label, count in enumerate(counts):
        if count < need:
            name = names[label]
            twin = next((other for other in names if other != name
                         and other.strip().lower() == name.strip().lower()), None)
            raise DataError(
                f"{ds.name}: class {literal(ds.class_names[label])} has {count} example(s); a stratified "
                f"train/validation/test split needs at least {need} per class"
                + (f" (is it {twin!r}, written with other spaces or capitals?)" if twin else ""),
                hint="add examples of that class or drop it" + (
                    ", or set data.test_size = 0 (no test split)" if n_test and count >= need - 1
                    else "") + ("; labels are compared exactly: fix its spelling in the file"
                                if twin else ""),
            )
    for part, size in (("validation", n_val), ("test", n_test)):
        if 0 < size < ds.n_classes:
            raise DataError(f"{ds.name}: the {part} set would have {size} example(s), fewer than "
                            f"the {ds.n_classes} classes; a stratified split needs at least one "
                            f"per class", hint=f"raise the {part} size")
    index = np.arange(n)
    rest, test_idx = _split(index, ds.y, n_test, seed, train_test_split)
    if n_val:
        _check_left_for_validation(ds, counts, np.bincount(ds.y[rest], minlength=ds.n_classes))
    train_idx, val_idx = _split(rest, ds.y[rest], n_val, seed + 1, train_test_split)

    dt = np.dtype(dtype)
    _check_magnitudes(ds, dt)
    train_rows = ds.X[train_idx]
    mean = train_rows.mean(axis=0, dtype=np.float64)
    std = train_rows.std(axis=0, dtype=np.float64)
    # constant on the training rows: exactly (min == max), not std == 0, since a column of
    # 0.1s has std ~1e-17 from rounding and dividing by it blows other rows up to ~1e15
    constant = train_rows.min(axis=0) == train_rows.max(axis=0)
    del train_rows
    if not standardize:
        mean, std = np.zeros_like(mean), np.ones_like(std)
    std[constant] = 1.0

    def prepare(idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), ds.X.shape[1] + 1), dtype=dt)
        body = out[:, :-1]
        body[...] = ds.X[idx]
        body -= mean.astype(dt)
        body /= std.astype(dt)
        out[:, -1] = 1.0
        return out

    return Splits(name=ds.name, X_train=prepare(train_idx), y_train=ds.y[train_idx],
                  X_val=prepare(val_idx), y_val=ds.y[val_idx], X_test=prepare(test_idx),
                  y_test=ds.y[test_idx], class_names=ds.class_names,
                  feature_names=ds.feature_names, mean=mean, std=std)


def _check_magnitudes(ds: Dataset, dtype: np.dtype) -> None:
    """Refuse feature values the engine cannot hold: beyond ``dtype``'s range, or so large that
    their square overflows float64 (the column's standard deviation would be infinite and the
    whole column silently flattened to 0). Such values are usually placeholders (``1e300`` for
    "missing")."""
    limit = min(float(np.finfo(dtype).max), 1e150)
    peak = (np.maximum(ds.X.max(axis=0), -ds.X.min(axis=0)) if ds.X.size  # (no |X| copy)
            else np.zeros(ds.X.shape[1]))
    cols = np.flatnonzero(peak > limit)
    if len(cols):
        names = ", ".join(f"{literal(ds.feature_names[c]) if ds.feature_names else c} "
                          f"(largest |value| {peak[c]:.3g})" for c in cols[:5])
        more = f" and {len(cols) - 5} more" if len(cols) > 5 else ""
        raise DataError(f"{ds.name}: feature values too large for the engine (beyond {limit:.3g} "
                        f"for dtype {dtype.name}) in {names}{more}",
                        hint="a placeholder for missing values (like 1e300)? leave those cells empty "
                             "and fill or drop them; otherwise rescale the column (e.g. log)")


def split_size_problem(size: float) -> str | None:
    """Why ``size`` (``val_size``/``test_size``) is not a fraction or a count, else ``None``."""
    if size >= 1 and not float(size).is_integer():
        return "neither a fraction (below 1) nor a count of examples (a whole number >= 1)"
    return None


def _count(size: float, n: int, name: str) -> int:
    if size < 0:
        raise DataError(f"{name} must be >= 0, got {size!r}")
    problem = split_size_problem(size)
    if problem:
        raise DataError(f"{name}={size!r} is {problem}")
    count = int(round(size * n)) if size < 1 else int(size)
    if count >= n:
        raise DataError(f"data.{name} = {size:g} would take {count} of the {n} examples",
                        hint=f"give a fraction (e.g. data.{name} = 0.2) or fewer than {n} examples")
    return count


def _check_left_for_validation(ds: Dataset, counts: np.ndarray, left: np.ndarray) -> None:
    """The stratified test split may take all but one example of a small class; the
    train/validation split then cannot be stratified (scikit-learn would raise)."""
    short = np.flatnonzero(left < 2)
    if len(short):
        label = short[0]
        raise DataError(
            f"{ds.name}: class {literal(ds.class_names[label])} has {counts[label]} example(s) and the "
            f"stratified test split leaves {left[label]}, too few to split into train and "
            f"validation",
            hint="add examples of that class, drop it, or lower test_size",
        )


def _split(index: np.ndarray, labels: np.ndarray, size: int, seed: int, splitter: Any):
    if size == 0:
        return index, index[:0]
    return splitter(index, test_size=size, random_state=seed, shuffle=True, stratify=labels)
