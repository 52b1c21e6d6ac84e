"""The two shapes data takes in tuner: raw examples (:class:`Dataset`) and prepared, split
arrays (:class:`Splits`), and the names of the datasets tuner knows without a file."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BUILTIN_DATASETS: tuple[str, ...] = ("digits", "iris", "wine", "breast_cancer")
FILE_FORMATS: dict[str, str] = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet",
                                 ".pq": "parquet", ".npz": "npz"}
"""Suffix -> how the file is read (a ``.tsv`` file is a CSV file with tabs between fields)."""


@dataclass
class Dataset:
    """Raw examples before splitting: ``X`` float64 (N, D), ``y`` int labels in 0..C-1."""

    name: str
    X: np.ndarray
    y: np.ndarray
    class_names: list[str]
    feature_names: list[str]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


@dataclass
class Splits:
    """Standardized train / validation / test arrays, each ``X`` with a trailing bias column of
    ones (so ``W`` is ``(D + 1, C)``). ``mean`` and ``std`` were fitted on the training set."""

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    feature_names: list[str]
    mean: np.ndarray = field(repr=False)
    std: np.ndarray = field(repr=False)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_features(self) -> int:
        """Features without the bias column."""
        return self.X_train.shape[1] - 1

    def describe(self) -> str:
        return (f"{self.name}: {self.n_features} features, {self.n_classes} classes, "
                f"train/val/test = {len(self.y_train)}/{len(self.y_val)}/{len(self.y_test)}")


def strip_bias(X: np.ndarray) -> np.ndarray:
    """``X`` without its trailing bias column (for reference models with their own intercept)."""
    return X[:, :-1]
