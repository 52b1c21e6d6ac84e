"""Datasets: scikit-learn's bundled sets, a seeded synthetic generator and user files, split into
stratified train / validation / test sets, standardized on the training set, with a bias column.

Sources (``name`` in :func:`load_dataset`):

- ``digits``, ``iris``, ``wine``, ``breast_cancer``: bundled with scikit-learn (no download);
- ``synthetic``: Gaussian classes in ``d`` dimensions with correlated nuisance factors
  (``n``, ``d``, ``classes``, ``difficulty`` in [0, 1]); ``n=51000, d=3072, classes=10`` with a
  1000/1000 validation/test split is shaped like CS231n's CIFAR-10 (49000 x 3072 x 10);
- a path to a ``.csv`` or ``.parquet`` file (one row per example, a named ``target`` column, all
  other columns numeric features) or a ``.npz`` file with arrays ``X`` (N, D) and ``y`` (N,).

Labels of any type are mapped to ``0..C-1`` in sorted order; :attr:`Splits.class_names` keeps
the originals. Every problem with the data raises :class:`~tuner.errors.DataError` with a
message that says what is wrong and where. Mistakes that would train without complaint are
refused too: a column without a name (pandas' ``Unnamed: 0``, usually a saved row index that
leaks the row order), a repeated column name, a target that looks continuous or has a class
per row. A feature that numbers the rows, or an ``id``-like one that differs in every row, is
logged as a warning (it may be a real feature).

The prepared splits of the bundled sets are cached (a few hundred kB each, in
``$TUNER_CACHE_DIR``, else ``$XDG_CACHE_HOME/tuner``, else ``~/.cache/tuner``; an empty
``TUNER_CACHE_DIR`` turns it off): loading them again skips importing scikit-learn, which is most
of a short command's start-up. The key holds every argument and the versions of scikit-learn
and tuner.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.npyio import NpzFile

from tuner.errors import DataError
from tuner.params import literal

BUILTIN_DATASETS: tuple[str, ...] = ("digits", "iris", "wine", "breast_cancer")
FILE_FORMATS: dict[str, str] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet",
                                 ".npz": "npz"}

RowNamer = Callable[[np.ndarray], str]
"""Names 0-based row positions for a message, e.g. ``data rows 5, 10 (lines 6, 11 of the file)``."""

log = logging.getLogger(__name__)

UNNAMED_COLUMN = re.compile(r"Unnamed: \d+(_level_\d+)?")
"""The name pandas gives a CSV column with an empty header (``Unnamed: 0`` for the index
``DataFrame.to_csv`` writes unless ``index=False``)."""
ID_COLUMN_NAMES = frozenset({"id", "index", "idx", "row", "rowid", "row_id", "row_number",
                             "row_num", "rownum", "level_0", "sample_id", "example_id",
                             "record_id"})
"""Feature names that are row identifiers when every row has its own value (a warning)."""
MAX_FRACTIONAL_CLASSES = 20
"""More distinct labels than this, some of them not whole numbers: a continuous target."""


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


def data_file(name: str, base_dir: Path | None = None) -> Path:
    """The file a ``dataset`` names (relative to ``base_dir`` unless it exists as given), checked
    to exist and to be in a supported format, without reading it."""
    path = Path(name).expanduser()
    if not path.is_absolute() and base_dir is not None and not path.exists():
        path = base_dir / path
    if path.suffix.lower() not in FILE_FORMATS:
        if not path.suffix and not path.exists():
            check_dataset_name(name)
        raise DataError(f"{path}: unknown data format {path.suffix!r}; "
                        f"supported: {', '.join(FILE_FORMATS)}")
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    return path


def load_dataset(name: str, *, target: str | None = None, base_dir: Path | None = None,
                 n: int = 51000, d: int = 3072, classes: int = 10, difficulty: float = 0.5,
                 seed: int = 0) -> Dataset:
    """Load a bundled dataset, generate ``synthetic`` data, or read a user file.

    ``target`` names the label column of CSV/Parquet files. Relative paths are resolved against
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
        return _load_npz(path)
    return _load_table(path, fmt, target)


def check_dataset_name(name: str) -> None:
    """Raise :class:`DataError` if ``name`` cannot be a dataset whatever the files hold: not a
    built-in, not ``synthetic`` and not a path with a supported extension (``mnist``,
    ``data.xlsx``). Needs no file access, so it can run without loading the data (``tuner
    check --no-data``); :func:`load_dataset` gives the same messages."""
    if name in BUILTIN_DATASETS or name == "synthetic":
        return
    suffix = Path(name).suffix
    if suffix.lower() in FILE_FORMATS:
        return
    if not suffix:
        raise DataError(
            f"unknown dataset {name!r}: not a built-in dataset and not a file",
            hint=f"use one of {', '.join(BUILTIN_DATASETS)}, 'synthetic', or a path to a "
                 f"{', '.join(FILE_FORMATS)} file",
        )
    raise DataError(f"{name}: unknown data format {suffix!r}; "
                    f"supported: {', '.join(FILE_FORMATS)}")


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


def load_splits(name: str, *, val_size: float = 0.2, test_size: float = 0.2, seed: int = 0,
                dtype: str = "float32", standardize: bool = True, **source: Any) -> Splits:
    """:func:`load_dataset` then :func:`split_dataset`; ``source`` goes to ``load_dataset``.
    A bundled set's splits come from the cache when they are there (see the module docs)."""
    cached = None
    if name in BUILTIN_DATASETS:
        cached = _cache_file(name, val_size=val_size, test_size=test_size, seed=seed,
                             dtype=np.dtype(dtype).name, standardize=standardize)
        splits = _read_splits(cached) if cached is not None else None
        if splits is not None:
            return splits
    ds = load_dataset(name, seed=seed, **source)
    splits = split_dataset(ds, val_size=val_size, test_size=test_size, seed=seed, dtype=dtype,
                           standardize=standardize)
    if cached is not None:
        _write_splits(cached, splits)
    return splits


SPLIT_ARRAYS = ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test", "mean", "std")
_CACHE_FORMAT = 1


def cache_dir() -> Path | None:
    """Folder of tuner's caches, or ``None`` when ``TUNER_CACHE_DIR`` is set but empty."""
    explicit = os.environ.get("TUNER_CACHE_DIR")
    if explicit is not None:
        return Path(explicit).expanduser() if explicit else None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tuner"


def _cache_file(name: str, **args: Any) -> Path | None:
    folder = cache_dir()
    if folder is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        sklearn_version = version("scikit-learn")
    except PackageNotFoundError:
        return None
    from tuner import __version__

    # tuner's version too: a release may prepare the splits differently
    key = json.dumps({"name": name, **args, "scikit-learn": sklearn_version,
                      "tuner": __version__, "format": _CACHE_FORMAT}, sort_keys=True)
    return folder / "splits" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"


def _read_splits(path: Path) -> Splits | None:
    """The splits stored at ``path``; ``None`` if missing or unreadable (then rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in SPLIT_ARRAYS}
            meta = json.loads(str(archive["meta"]))
        return Splits(name=meta["name"], class_names=meta["class_names"],
                      feature_names=meta["feature_names"], **arrays)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def _write_splits(path: Path, splits: Splits) -> None:
    """Store ``splits`` at ``path`` atomically; a cache that cannot be written is skipped."""
    meta = json.dumps({"name": splits.name, "class_names": splits.class_names,
                       "feature_names": splits.feature_names})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as fh:
            np.savez(fh, meta=np.array(meta), **{key: getattr(splits, key) for key in SPLIT_ARRAYS})
        os.replace(fh.name, path)
    except OSError:
        try:
            os.unlink(fh.name)
        except (OSError, UnboundLocalError):
            pass


def strip_bias(X: np.ndarray) -> np.ndarray:
    """``X`` without its trailing bias column (for reference models with their own intercept)."""
    return X[:, :-1]


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
        raise DataError(f"{name}={size!r} would take {count} of the {n} examples")
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


def _load_builtin(name: str) -> Dataset:
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    names = [str(t) for t in getattr(bunch, "target_names", np.unique(bunch.target))]
    features = [str(f) for f in getattr(bunch, "feature_names", range(bunch.data.shape[1]))]
    return Dataset(name=name, X=np.asarray(bunch.data, dtype=np.float64),
                   y=np.asarray(bunch.target, dtype=np.intp), class_names=names,
                   feature_names=features)


def _encode_labels(raw: np.ndarray, where: str, fix: str) -> tuple[np.ndarray, list[str]]:
    """Labels as ``0..C-1`` and the class names. ``fix`` says how to point tuner at class
    labels (the hint when the labels look like no classes at all)."""
    classes, y = np.unique(raw, return_inverse=True)
    if len(classes) < 2:
        found = f" ({literal(classes[0])})" if len(classes) else ""
        raise DataError(f"{where} has {len(classes)} class{found}; a classifier needs at least 2")
    n, k = len(raw), len(classes)
    fractional = (classes[classes != np.round(classes)]
                  if np.issubdtype(classes.dtype, np.floating) else classes[:0])
    if len(fractional) and (k > MAX_FRACTIONAL_CLASSES or 2 * k > n):
        raise DataError(
            f"{where} has {k} distinct values in {n} rows, not all whole numbers (e.g. "
            f"{', '.join(f'{v:g}' for v in fractional[:3])}): it looks continuous, a quantity to "
            f"predict by regression; tuner trains classifiers, which need a few classes with "
            f"several examples each",
            hint=f"bin the values into classes (e.g. with pandas.cut) or {fix}; class labels that "
                 f"are numbers must be whole numbers (1, 2, 3 or 1.0, 2.0) or text")
    if 2 * k > n:  # some class has a single example: no stratified split, nothing to learn
        raise DataError(
            f"{where} has {k} distinct values in {n} rows: with more classes than half the "
            f"rows, some class has a single example, too few to learn from or to split into "
            f"train/validation/test (is it an identifier or a measurement rather than a class?)",
            hint=f"{fix} (a class is a value that several rows share)")
    return y.astype(np.intp), [str(c) for c in classes]


def _first(values: Sequence[int] | np.ndarray) -> str:
    """The first five numbers, then ``...``."""
    return ", ".join(str(v) for v in values[:5]) + (", ..." if len(values) > 5 else "")


def _word(count: int, singular: str, plural: str) -> str:
    return singular if count == 1 else plural


def _npz_rows(rows: np.ndarray) -> str:
    return f"{_word(len(rows), 'row index', 'row indices')} {_first(rows)}"


def _table_rows(path: Path, fmt: str, n_rows: int) -> RowNamer:
    """Rows as a user finds them: 1-based data rows and, for CSV, file lines (header = line 1)."""
    # the file is re-read only for an error message, and at most once
    file_lines = cache(lambda: _csv_line_numbers(path, n_rows) if fmt == "csv" else None)

    def name(rows: np.ndarray) -> str:
        text = f"data {_word(len(rows), 'row', 'rows')} {_first(rows + 1)}"
        lines = file_lines()
        if lines is not None:
            text += f" ({_word(len(rows), 'line', 'lines')} {_first(lines[rows])} of the file)"
        return text

    return name


def _csv_line_numbers(path: Path, n_rows: int) -> np.ndarray | None:
    """The file line on which each data row starts, counting rows as pandas does (blank lines
    skipped, quoted fields may span lines); None if the file cannot be matched row for row."""
    starts, line = [], 1
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            for record in reader:
                if len(record) > 1 or "".join(record).strip():
                    starts.append(line)
                line = reader.line_num + 1
    except (OSError, UnicodeError, csv.Error):
        return None
    return np.array(starts[1:]) if len(starts) == n_rows + 1 else None


def _check_finite(X: np.ndarray, names: list[str], where: str, row_names: RowNamer) -> None:
    bad = ~np.isfinite(X)
    if bad.any():
        cols = np.flatnonzero(bad.any(axis=0))
        details = []
        for c in cols[:5]:
            rows = np.flatnonzero(bad[:, c])
            count = f"{len(rows)} {_word(len(rows), 'value', 'values')}"
            details.append(f"{literal(names[c])} ({count}, in {row_names(rows)})")
        more = f" and {len(cols) - 5} more column(s)" if len(cols) > 5 else ""
        raise DataError(f"{where}: missing or infinite feature values in "
                        f"{', '.join(details)}{more}",
                        hint="fill or drop those values before tuning")


def _load_table(path: Path, fmt: str, target: str | None) -> Dataset:
    import pandas as pd

    if path.stat().st_size == 0:
        raise DataError(f"{path}: cannot read {fmt.upper()} file: the file is empty (0 bytes)",
                        hint="expected a header line with the column names, then one row per "
                             "example" if fmt == "csv" else None)
    try:
        frame = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    except pd.errors.EmptyDataError:  # only blank lines: nothing to parse
        raise DataError(f"{path}: cannot read CSV file: the file is empty (no header line)",
                        hint="expected a header line with the column names, then one row per "
                             "example") from None
    except Exception as exc:  # pandas raises many types for unreadable files
        if fmt == "parquet":  # pyarrow refuses a repeated name with "Multiple matches for ..."
            _check_duplicate_names(path, fmt, _parquet_names(path), None)
        elif isinstance(exc, pd.errors.ParserError) and (header := _csv_header(path)):
            _check_field_counts(path, len(header))  # "Expected 3 fields in line 4, saw 4"
        raise DataError(f"{path}: cannot read {fmt.upper()} file: {exc}") from None
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    # pandas renames a repeated CSV header ("f0,f0" -> f0, f0.1): only the header line tells
    header = _csv_header(path) if fmt == "csv" else None
    _check_duplicate_names(path, fmt, header if header is not None else columns, columns)
    separator = _separator_hint(columns) if fmt == "csv" else None
    if target is None:
        raise DataError(f"{path}: no target column given; set data.target to one of: "
                        f"{', '.join(columns)}", hint=separator)
    if target not in columns:
        raise DataError(f"{path}: target column {target!r} not found; "
                        f"columns: {', '.join(columns)}", hint=separator)
    if len(frame) == 0:
        raise DataError(f"{path}: the file has no rows")
    # a short line leaves the last column NaN; lines one field longer than the header make
    # pandas take their first field as the row index
    if fmt == "csv" and (frame.iloc[:, -1].isna().any()
                         or not frame.index.equals(pd.RangeIndex(len(frame)))):
        _check_field_counts(path, len(columns))
    _check_unnamed_columns(path, fmt, frame, header, target)
    features = frame.drop(columns=[target])
    if features.shape[1] == 0:
        raise DataError(f"{path}: no feature columns besides the target {target!r}",
                        hint=separator)
    non_numeric = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        examples = []
        for c in non_numeric[:5]:
            sample = features[c].dropna()
            bad = sample[pd.to_numeric(sample, errors="coerce").isna()]
            examples.append(f"{c!r} (e.g. {literal(bad.iloc[0])})" if len(bad) else repr(c))
        raise DataError(f"{path}: non-numeric feature column(s): {', '.join(examples)}",
                        hint="encode them as numbers or drop them; only the target may be text")
    labels = frame[target]
    row_names = _table_rows(path, fmt, len(frame))
    if labels.isna().any():
        rows = np.flatnonzero(labels.isna().to_numpy())
        raise DataError(f"{path}: target column {target!r} is missing in {len(rows)} "
                        f"{_word(len(rows), 'row', 'rows')} ({row_names(rows)})",
                        hint="fill in the label of those rows or delete them (an example without "
                             "a label cannot be trained on or scored)")
    X = features.to_numpy(dtype=np.float64)
    _check_finite(X, list(features.columns), str(path), row_names)
    y, class_names = _encode_labels(labels.to_numpy(), f"{path}: target column {target!r}",
                                    fix="set data.target to the column that holds the classes")
    _warn_row_identifiers(path, X, list(features.columns))
    return Dataset(name=path.name, X=X, y=y, class_names=class_names,
                   feature_names=list(features.columns))


def _csv_header(path: Path) -> list[str] | None:
    """The names on the header line as written (the first line that is not blank, as pandas
    takes it), before pandas renames repeats; None if the csv module cannot read it."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            for record in csv.reader(f):
                if len(record) > 1 or "".join(record).strip():
                    return record
    except (OSError, UnicodeError, csv.Error):
        return None
    return None


def _parquet_names(path: Path) -> list[str] | None:
    """The column names of a Parquet file's schema, None if they cannot be read."""
    try:
        import pyarrow.parquet as pq

        return [str(name) for name in pq.read_schema(path).names]
    except Exception:  # no pyarrow, or a file pyarrow cannot read: the caller reports that
        return None


def _check_duplicate_names(path: Path, fmt: str, names: list[str] | None,
                           columns: list[str] | None) -> None:
    """Raise if a column name occurs twice in ``names`` (the header as written). ``columns``
    are pandas' names for the same columns (repeats renamed), when it could read the file."""
    if names is None:
        return
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        if name.strip():  # empty headers are the unnamed-column check's business
            positions.setdefault(name, []).append(i)
    repeated = {name: where for name, where in positions.items() if len(where) > 1}
    if not repeated:
        return
    details = ", ".join(f"{name!r} (columns {', '.join(str(i + 1) for i in where)})"
                        for name, where in list(repeated.items())[:5])
    more = f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""
    what = "the header" if fmt == "csv" else "the file"
    text = (f"{path}: duplicate column {_word(len(repeated), 'name', 'names')} in {what}: "
            f"{details}{more}")
    if columns is not None:
        name, where = next(iter(repeated.items()))
        renamed = (f" (e.g. {name!r} to {columns[where[1]]!r})"
                   if len(columns) == len(names) and columns[where[1]] != name else "")
        text += (f"; pandas renames the repeats{renamed} and tuner would use every copy: a "
                 f"repeated feature counts twice, a repeated target becomes a feature")
    raise DataError(text, hint="give every column a name of its own, or delete the repeated "
                               "columns")


def _row_counter(values: np.ndarray) -> str | None:
    """``'0..N-1'`` or ``'1..N'`` when ``values`` (float64, one per row) are those numbers, each
    once, in any order: a row counter."""
    n = len(values)
    if n == 0:
        return None
    low = values.min()
    if low not in (0.0, 1.0) or values.max() != low + n - 1:
        return None
    if not np.array_equal(np.sort(values), np.arange(low, low + n)):
        return None
    return f"{int(low)}..{int(low) + n - 1}"


def _check_unnamed_columns(path: Path, fmt: str, frame: Any, header: list[str] | None,
                           target: str) -> None:
    """Raise if a column has no name: an empty header (``Unnamed: N`` to pandas), usually the
    index ``DataFrame.to_csv`` writes unless ``index=False``. Used as a feature it leaks the
    row order (of rows sorted by label, the labels). The target is exempt: data.target names
    it explicitly."""
    columns = list(frame.columns)
    aligned = header is not None and len(header) == len(columns)
    last = columns[-1]
    if (last != target and (UNNAMED_COLUMN.fullmatch(last) or not last.strip())
            and frame[last].isna().all()):
        raise DataError(f"{path}: the last column has no header and no values ({last!r} to "
                        f"pandas): the lines end with a separator (a trailing comma)",
                        hint="remove the separator at the end of each line")
    found: list[str] = []
    unnamed: list[str] = []
    index_like = False
    for i, name in enumerate(columns):
        blank = (aligned and not header[i].strip()) or not name.strip()
        if name == target or not (blank or UNNAMED_COLUMN.fullmatch(name)):
            continue
        if blank and name.strip():
            text = f"column {i + 1} has an empty header (pandas names it {name!r})"
        elif blank:
            text = f"column {i + 1} has a blank header"
        else:
            text = (f"column {i + 1} is named {name!r} (the name pandas gives a column with an "
                    f"empty header: the data was probably read from a CSV file saved with its "
                    f"index)")
        values, counter = frame[name], None
        if values.dtype.kind in "iuf" and not values.isna().any():
            counter = _row_counter(values.to_numpy(dtype=np.float64))
            if counter is not None:
                text += (f" and holds the numbers {counter}, one per row, like the index "
                         f"DataFrame.to_csv writes unless index=False")
        index_like = index_like or i == 0 or counter is not None
        found.append(text)
        unnamed.append(name)
    if not found:
        return
    more = f"; and {len(found) - 5} more" if len(found) > 5 else ""
    it = _word(len(found), "it", "them")
    the_columns = _word(len(found), "the column", "the columns")
    if fmt != "csv":
        fix = (f"drop {the_columns} (DataFrame.drop(columns={unnamed[:5]!r})) and save the file "
               f"again; a real feature needs a name")
    elif index_like:
        fix = (f"save the file again with DataFrame.to_csv(path, index=False), or delete "
               f"{the_columns}; a real feature needs a name in the header")
    else:
        real = _word(len(found), "it is a real feature", "they are real features")
        fix = f"give {it} a name in the header if {real}, else delete {it}"
    raise DataError(
        f"{path}: {'; '.join(found[:5])}{more}. tuner does not train on a column without a "
        f"name: it is usually a row index saved with the data, which leaks the row order into "
        f"the model (of rows sorted by label, it gives the labels away)",
        hint=f"{fix} (every column but data.target is a feature)")


def _warn_row_identifiers(path: Path, X: np.ndarray, names: list[str]) -> None:
    """Warn about a feature column that numbers the rows (each of 0..N-1 or 1..N once) or is
    named like an identifier (``id``, ``index``) and differs in every row. Not an error: it may
    be a real feature, and nothing but deleting it can leave it out. Reported through logging,
    which the CLI prints as ``warning: ...``."""
    n = len(X)
    if n < 2 or X.shape[1] == 0:
        return
    low, high = X.min(axis=0), X.max(axis=0)
    candidates = set(np.flatnonzero(((low == 0) | (low == 1)) & (high - low == n - 1)).tolist())
    candidates |= {i for i, name in enumerate(names) if name.strip().lower() in ID_COLUMN_NAMES}
    for i in sorted(candidates):
        counter = _row_counter(X[:, i])
        if counter is not None:
            what = f"holds the numbers {counter}, one per row: it looks like a row counter"
        elif len(np.unique(X[:, i])) == n:
            what = "has a different value in every row: it looks like a row identifier"
        else:
            continue
        log.warning("%s: feature column %r %s, not a measurement; if the row order or the "
                    "numbering follows the label (rows sorted by it, say) it gives the labels "
                    "away. Delete the column from the file unless it is a real feature",
                    path, names[i], what)


def _separator_hint(columns: list[str]) -> str | None:
    """A hint when a CSV file parsed as one column looks separated by something else."""
    if len(columns) != 1:
        return None
    for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "'|'")):
        if sep in columns[0]:
            return (f"the file does not look comma-separated: its header is one column that "
                    f"contains {name}; save it as CSV with ',' between fields")
    return None


def _check_field_counts(path: Path, expected: int) -> None:
    """Raise if a data line has more or fewer fields than the header. pandas fills a short
    line with NaN (a missing target, or a text value shifted into a numeric column, would be
    reported instead), and takes the first field of lines that all have one field more as the
    row index (a column silently lost); other long lines make pandas fail. Checked by reading
    the file again, with the csv module (a few seconds for a CIFAR-sized file), only when pandas
    failed or the frame shows one of those signs."""
    short: list[tuple[int, int]] = []
    lines = 0
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            line = 1
            for number, record in enumerate(reader):
                blank = len(record) <= 1 and not "".join(record).strip()
                if number and not blank:
                    lines += 1
                    if len(record) != expected:
                        short.append((line, len(record)))
                line = reader.line_num + 1
    except (OSError, UnicodeError, csv.Error):
        return
    if short:
        first_line, count = short[0]
        more = (f" ({len(short)} lines in all, e.g. lines {_first([n for n, _ in short])})"
                if len(short) > 1 else "")
        raise DataError(f"{path}: line {first_line} has {count} "
                        f"{_word(count, 'field', 'fields')}, expected {expected} (one per "
                        f"column of the header){more}",
                        hint=(f"every data line has {expected + 1} fields: name the extra "
                              f"column in the header line, or remove the comma that ends each "
                              f"line" if len(short) == lines and {c for _, c in short}
                              == {expected + 1} else "every line needs a value for every "
                              "column; check for missing or extra commas"))


def _load_npz(path: Path) -> Dataset:
    archive = _open_npz(path)
    with archive:
        missing = [k for k in ("X", "y") if k not in archive.files]
        if missing:
            raise DataError(f"{path}: missing array(s) {', '.join(missing)}; found: "
                            f"{', '.join(archive.files) or 'none'} (expected X (N, D) and y (N,))")
        X, raw_y = _npz_array(archive, path, "X"), _npz_array(archive, path, "y")
    if X.ndim != 2:
        raise DataError(f"{path}: X must be 2-D (examples x features), got shape {X.shape}")
    if raw_y.ndim != 1 or len(raw_y) != len(X):
        raise DataError(f"{path}: y must be 1-D with one label per row of X; X has {len(X)} rows, "
                        f"y has shape {raw_y.shape}")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise DataError(f"{path}: X must be numeric, got dtype {X.dtype}")
    X = X.astype(np.float64)
    names = [f"x{i}" for i in range(X.shape[1])]
    _check_finite(X, names, str(path), _npz_rows)
    y, class_names = _encode_labels(raw_y, f"{path}: y", fix="save the class labels as y")
    return Dataset(name=path.name, X=X, y=y, class_names=class_names, feature_names=names)


def _open_npz(path: Path) -> NpzFile:
    """``np.load`` of a zip archive only: np.load would also accept a lone ``.npy`` array (and
    report any other file as "pickled data")."""
    if not zipfile.is_zipfile(path):
        with path.open("rb") as f:
            head = f.read(6)
        what = ("the file is empty" if not head else
                "it holds a single array saved with numpy.save" if head == b"\x93NUMPY" else
                "a damaged or truncated zip file" if head.startswith(b"PK") else
                "it is not a zip file")
        raise DataError(f"{path}: not a NumPy .npz archive ({what})",
                        hint="save the arrays with numpy.savez(path, X=X, y=y)")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # zipfile and numpy raise several types for damaged archives
        raise DataError(f"{path}: cannot read .npz archive: {exc}") from None


def _npz_array(archive: NpzFile, path: Path, key: str) -> np.ndarray:
    try:
        value = archive[key]
    except ValueError as exc:
        if "allow_pickle" in str(exc):  # never load pickles: they can run arbitrary code
            raise DataError(f"{path}: array {key!r} holds Python objects (dtype object); "
                            f"save numeric arrays") from None
        raise DataError(f"{path}: cannot read array {key!r}: {exc}") from None
    except Exception as exc:  # a damaged member: zipfile.BadZipFile, zlib.error, EOFError, ...
        raise DataError(f"{path}: cannot read array {key!r} (damaged archive?): {exc}") from None
    if not isinstance(value, np.ndarray):  # np.load returns raw bytes for non-.npy members
        raise DataError(f"{path}: {key!r} in the archive is not a NumPy .npy array")
    return value
