"""User data files (CSV, Parquet, NPZ): found, read and checked.

Every problem with a file raises :class:`~tuner.errors.DataError` with a message that says what
is wrong and where (the file, the column, the rows and their lines). Mistakes that would train
without complaint are refused too: a column without a name (pandas' ``Unnamed: 0``, usually a
saved row index that leaks the row order), a repeated column name, data lines with more or
fewer fields than the header, a target that looks continuous or has a class per row. A feature
that numbers the rows, or an ``id``-like one that differs in every row, is logged as a warning
(it may be a real feature).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import zipfile
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.npyio import NpzFile

from tuner.data.dataset import BUILTIN_DATASETS, FILE_FORMATS, Dataset
from tuner.errors import DataError, did_you_mean
from tuner.params import literal

RowNamer = Callable[[np.ndarray], str]
"""Names 0-based row positions for a message, e.g. ``data rows 5, 10 (lines 6, 11 of the file)``."""

log = logging.getLogger("tuner.data")

UNNAMED_COLUMN = re.compile(r"Unnamed: \d+(_level_\d+)?")
"""The name pandas gives a CSV column with an empty header (``Unnamed: 0`` for the index
``DataFrame.to_csv`` writes unless ``index=False``)."""
ID_COLUMN_NAMES = frozenset({"id", "index", "idx", "row", "rowid", "row_id", "row_number",
                             "row_num", "rownum", "level_0", "sample_id", "example_id",
                             "record_id"})
"""Feature names that are row identifiers when every row has its own value (a warning)."""
MAX_FRACTIONAL_CLASSES = 20
"""More distinct labels than this, some of them not whole numbers: a continuous target."""


def data_file(name: str, base_dir: Path | None = None) -> Path:
    """The file a ``dataset`` names (a relative path is relative to ``base_dir``, the study
    file's folder, when given: never to the current folder, so one study file trains on one
    file wherever it is run from), checked to exist and to be in a supported format, without
    reading it."""
    path = Path(name).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.suffix.lower() not in FILE_FORMATS:
        if not path.suffix and not path.exists():
            check_dataset_name(name)
        raise DataError(f"{path}: unknown data format {path.suffix!r}; "
                        f"supported: {', '.join(FILE_FORMATS)}", key="dataset")
    if not path.exists():
        raise DataError(f"{path}: data file not found", key="dataset")
    if not path.is_file():
        raise DataError(f"{path}: not a file", key="dataset")
    return path


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


def _table_rows(path: Path, fmt: str, n_rows: int, sep: str) -> RowNamer:
    """Rows as a user finds them: 1-based data rows and, for CSV, file lines (header = line 1)."""
    # the file is re-read only for an error message, and at most once
    file_lines = cache(lambda: _csv_line_numbers(path, n_rows, sep) if fmt == "csv" else None)

    def name(rows: np.ndarray) -> str:
        text = f"data {_word(len(rows), 'row', 'rows')} {_first(rows + 1)}"
        lines = file_lines()
        if lines is not None:
            text += f" ({_word(len(rows), 'line', 'lines')} {_first(lines[rows])} of the file)"
        return text

    return name


def _csv_line_numbers(path: Path, n_rows: int, sep: str) -> np.ndarray | None:
    """The file line on which each data row starts, counting rows as pandas does (blank lines
    skipped, quoted fields may span lines); None if the file cannot be matched row for row."""
    starts, line = [], 1
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=sep)
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


def load_table(path: Path, fmt: str, target: str | None, sep: str | None = None) -> Dataset:
    """Read a CSV/TSV or Parquet table whose ``target`` column holds the labels and every other
    column a numeric feature. ``sep``: the field separator of a text table (default: a tab for
    ``.tsv`` files, else a comma)."""
    import pandas as pd

    sep = sep or delimiter(path)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: cannot read {fmt.upper()} file: the file is empty (0 bytes)",
                        hint="expected a header line with the column names, then one row per "
                             "example" if fmt == "csv" else None)
    try:
        frame = _read_csv(path, sep, target) if fmt == "csv" else pd.read_parquet(path)
    except pd.errors.EmptyDataError:  # only blank lines: nothing to parse
        raise DataError(f"{path}: cannot read CSV file: the file is empty (no header line)",
                        hint="expected a header line with the column names, then one row per "
                             "example") from None
    except Exception as exc:  # pandas raises many types for unreadable files
        if fmt == "parquet":  # pyarrow refuses a repeated name with "Multiple matches for ..."
            _check_duplicate_names(path, fmt, _parquet_names(path), None)
        elif isinstance(exc, pd.errors.ParserError) and (header := _csv_header(path, sep)):
            _check_field_counts(path, len(header), sep)  # "Expected 3 fields in line 4, saw 4"
        raise DataError(f"{path}: cannot read {fmt.upper()} file: {exc}") from None
    if fmt == "parquet" and any(name is not None for name in frame.index.names):
        # a DataFrame saved with a named index (df.set_index("label").to_parquet(...)): pandas
        # restores it as the index; it is a column of the file like any other
        frame = frame.reset_index(level=[n for n in frame.index.names if n is not None])
        frame = frame.reset_index(drop=True)
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    # pandas renames a repeated CSV header ("f0,f0" -> f0, f0.1): only the header line tells
    header = _csv_header(path, sep) if fmt == "csv" else None
    _check_duplicate_names(path, fmt, header if header is not None else columns, columns)
    separator = _separator_hint(columns, sep) if fmt == "csv" else None
    if target is None:
        raise DataError(f"{path}: no target column given; set data.target to one of: "
                        f"{', '.join(columns)}", hint=separator, key="target")
    if target not in columns:
        twin = next((c for c in columns if c.strip().lower() == target.strip().lower()), None)
        shown = ", ".join(repr(c) if c != c.strip() else c for c in columns)
        meant = "" if twin else did_you_mean(target, columns)
        raise DataError(f"{path}: target column {target!r} not found; {meant}columns: {shown}",
                        key="target",
                        hint=separator or (
                            f"the file has {twin!r}, which differs only in spaces or capitals: "
                            f"set data.target = {twin!r}, or fix the header" if twin else None))
    if len(frame) == 0:
        raise DataError(f"{path}: the file has no rows")
    # a short line leaves the last column NaN; lines one field longer than the header make
    # pandas take their first field as the row index
    if fmt == "csv" and (frame.iloc[:, -1].isna().any()
                         or not frame.index.equals(pd.RangeIndex(len(frame)))):
        _check_field_counts(path, len(columns), sep)
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
        commas = [str(v).strip() for c in non_numeric for v in features[c].dropna().head(20)]
        commas = [v for v in commas if re.fullmatch(r"[-+]?\d*,\d+", v)]
        separator = SEPARATORS.get(sep, repr(sep))
        raise DataError(f"{path}: non-numeric feature column(s): {', '.join(examples)}",
                        hint=(f"numbers written with a comma ({commas[0]!r}): tuner reads numbers "
                              f"with a decimal point and no thousands separator; re-save the file "
                              f"so, e.g. with pandas: pd.read_csv(path, sep={sep!r}, decimal=',') "
                              f"(or thousands=',') then .to_csv(path, sep={sep!r}, index=False) "
                              f"({separator}s between fields)" if commas
                              else "encode them as numbers or drop them; only the target may be text"))
    labels = frame[target]
    if not pd.api.types.is_numeric_dtype(labels):  # "dog " is "dog"; a blank label is missing
        labels = labels.map(lambda v: (v.strip() or None) if isinstance(v, str) else v)
    row_names = _table_rows(path, fmt, len(frame), sep)
    if labels.isna().any():
        rows = np.flatnonzero(labels.isna().to_numpy())
        raise DataError(f"{path}: target column {target!r} is missing in {len(rows)} "
                        f"{_word(len(rows), 'row', 'rows')} ({row_names(rows)})",
                        hint="fill in the label of those rows or delete them (an example without "
                             "a label cannot be trained on or scored)", key="target")
    X = features.to_numpy(dtype=np.float64)
    _check_finite(X, list(features.columns), str(path), row_names)
    y, class_names = _encode_labels(labels.to_numpy(), f"{path}: target column {target!r}",
                                    fix="set data.target to the column that holds the classes")
    _warn_row_identifiers(path, X, list(features.columns))
    return Dataset(name=path.name, X=X, y=y, class_names=class_names,
                   feature_names=list(features.columns))


def _read_csv(path: Path, sep: str, target: str | None) -> Any:
    """``pd.read_csv``, except that in a target column of text only an empty cell is missing:
    pandas would read the class names ``NA``, ``None`` or ``null`` as missing too. (In a column
    of numbers, ``NA`` still means missing.)"""
    import pandas as pd

    names = [] if target is None else [str(c) for c in pd.read_csv(path, sep=sep, nrows=0).columns]
    if target not in names:  # (pandas' names: an empty header is "Unnamed: 3", a repeated "x.1")
        return pd.read_csv(path, sep=sep)
    try:
        from pandas._libs.parsers import STR_NA_VALUES as missing  # pandas' default list
    except ImportError:  # pragma: no cover - moved in a future pandas
        missing = {"", "NA", "N/A", "NaN", "nan", "NULL", "null", "None", "-NaN", "-nan", "n/a",
                   "#N/A", "#NA", "<NA>", "1.#IND", "1.#QNAN", "-1.#IND", "-1.#QNAN", "#N/A N/A"}
    na_values = {name: sorted(missing) for name in names}
    na_values[target] = [""]
    frame = pd.read_csv(path, sep=sep, keep_default_na=False, na_values=na_values)
    labels = frame[target]
    if not pd.api.types.is_numeric_dtype(labels):
        # numbers and "NA": a numeric target with missing values (as R writes them), not a class
        tokens = labels.isin(missing)
        rest = labels[~tokens & labels.notna()]
        if tokens.any() and len(rest) and pd.to_numeric(rest, errors="coerce").notna().all():
            frame[target] = pd.to_numeric(labels.mask(tokens))
    return frame


def _csv_header(path: Path, sep: str) -> list[str] | None:
    """The names on the header line as written (the first line that is not blank, as pandas
    takes it), before pandas renames repeats; None if the csv module cannot read it."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            for record in csv.reader(f, delimiter=sep):
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


_ID_WARNED: set[tuple[str, str]] = set()  # (file, column) already warned about


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
        if (str(path), names[i]) in _ID_WARNED:  # once per process (a run reads its data twice)
            continue
        _ID_WARNED.add((str(path), names[i]))
        log.warning("%s: feature column %r %s, not a measurement; if the row order or the "
                    "numbering follows the label (rows sorted by it, say) it gives the labels "
                    "away. Delete the column from the file unless it is a real feature",
                    path, names[i], what)


def delimiter(path: Path) -> str:
    """The default field separator of a text table: a tab for ``.tsv`` files, else a comma."""
    return "\t" if path.suffix.lower() == ".tsv" else ","


SEPARATORS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "'|'"}


def _separator_hint(columns: list[str], expected: str = ",") -> str | None:
    """A hint when a text table parsed as one column looks separated by something else than
    ``expected`` (a comma; a tab for ``.tsv``; else ``data.delimiter``)."""
    if len(columns) != 1:
        return None
    for sep, name in SEPARATORS.items():
        if sep != expected and sep in columns[0]:
            fix = f"set data.delimiter = {json.dumps(sep)}"
            if sep == "\t":
                fix += ", or name it .tsv"
            elif sep == "," and expected == "\t":
                fix += ", or name it .csv"
            return (f"the file does not look {SEPARATORS.get(expected, repr(expected))}-separated: "
                    f"its header is one column that contains {name}s; {fix}")
    return None


def _check_field_counts(path: Path, expected: int, sep: str) -> None:
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
            reader = csv.reader(f, delimiter=sep)
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


def load_npz(path: Path) -> Dataset:
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
                            f"save numeric arrays", hint=(
                                "for text class labels, save y as strings: np.savez(..., "
                                "y=y.astype(str))" if key == "y" else
                                "save X as numbers: np.savez(..., X=X.astype(float))")) from None
        raise DataError(f"{path}: cannot read array {key!r}: {exc}") from None
    except Exception as exc:  # a damaged member: zipfile.BadZipFile, zlib.error, EOFError, ...
        raise DataError(f"{path}: cannot read array {key!r} (damaged archive?): {exc}") from None
    if not isinstance(value, np.ndarray):  # np.load returns raw bytes for non-.npy members
        raise DataError(f"{path}: {key!r} in the archive is not a NumPy .npy array")
    return value
