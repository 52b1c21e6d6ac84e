"""Datasets: built-ins, synthetic, CSV / Parquet / npz files, splitting, and every bad-data case."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest

from tuner.data import (
    BUILTIN_DATASETS,
    SPLIT_ARRAYS,
    Dataset,
    check_dataset_name,
    load_dataset,
    load_splits,
    make_synthetic,
    split_dataset,
)
from tuner.errors import DataError, TunerError


def frame(n=60, classes=("a", "b", "c"), seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"f1": rng.standard_normal(n), "f2": rng.uniform(0, 10, n),
                       "count": rng.integers(0, 5, n)})
    df["label"] = [classes[i % len(classes)] for i in range(n)]
    return df


def dataset(counts, d=3, seed=0):
    """A Dataset with ``counts[c]`` examples of class ``c``."""
    y = np.repeat(np.arange(len(counts)), counts)
    X = np.random.default_rng(seed).standard_normal((len(y), d))
    return Dataset("toy", X, y, [f"k{c}" for c in range(len(counts))], [f"x{i}" for i in range(d)])


# --- round-trips ------------------------------------------------------------------------------

def test_csv_round_trip_and_string_label_mapping(tmp_path):
    df = frame()
    df["label"] = df["label"].map({"a": "zebra", "b": "ant", "c": "moose"})
    path = tmp_path / "animals.csv"
    df.to_csv(path, index=False)
    ds = load_dataset(str(path), target="label")
    assert ds.name == "animals.csv"
    assert ds.class_names == ["ant", "moose", "zebra"]  # sorted originals
    assert ds.feature_names == ["f1", "f2", "count"]
    np.testing.assert_allclose(ds.X, df[["f1", "f2", "count"]].to_numpy())
    assert ds.X.dtype == np.float64 and ds.y.dtype == np.intp
    np.testing.assert_array_equal(np.array(ds.class_names)[ds.y], df["label"].to_numpy())
    assert set(ds.y) == {0, 1, 2}


def test_parquet_round_trip(tmp_path):
    df = frame(n=45, classes=(3, 7, 11))
    path = tmp_path / "data.parquet"
    df.to_parquet(path)
    ds = load_dataset(str(path), target="label")
    np.testing.assert_allclose(ds.X, df[["f1", "f2", "count"]].to_numpy())
    assert ds.class_names == ["3", "7", "11"]  # numeric labels sorted numerically
    np.testing.assert_array_equal(ds.y, np.searchsorted([3, 7, 11], df["label"]))


def test_a_parquet_files_named_index_is_one_of_its_columns(tmp_path):
    """pandas restores a column saved as the DataFrame's index as the index: a target there
    was 'not found' and a feature there silently dropped. A plain row index is not data."""
    df = frame(n=45)
    path = tmp_path / "data.parquet"
    df.set_index("label").to_parquet(path)  # the target as the index
    ds = load_dataset(str(path), target="label")
    np.testing.assert_allclose(ds.X, df[["f1", "f2", "count"]].to_numpy())
    np.testing.assert_array_equal(np.array(ds.class_names)[ds.y], df["label"].to_numpy())
    df.set_index(["f1", "f2"]).to_parquet(path)  # features as a two-level index
    ds = load_dataset(str(path), target="label")
    assert ds.feature_names == ["f1", "f2", "count"]
    np.testing.assert_allclose(ds.X, df[["f1", "f2", "count"]].to_numpy())
    df.iloc[::2].to_parquet(path)  # an unnamed index of row numbers 0, 2, 4, ...
    assert load_dataset(str(path), target="label").feature_names == ["f1", "f2", "count"]


def test_npz_round_trip_with_relative_path(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((30, 4)).astype(np.float32)
    y = np.array([-1, 5, 2] * 10)
    np.savez(tmp_path / "arrays.npz", X=X, y=y)
    ds = load_dataset("arrays.npz", base_dir=tmp_path)
    np.testing.assert_allclose(ds.X, X.astype(np.float64))
    assert ds.class_names == ["-1", "2", "5"]
    np.testing.assert_array_equal(ds.y, np.searchsorted([-1, 2, 5], y))
    assert ds.feature_names == ["x0", "x1", "x2", "x3"]


def test_a_relative_path_is_relative_to_the_study_files_folder_only(tmp_path, monkeypatch):
    """A file of the same name in the current folder is not taken instead (one study file
    trained on other data depending on where it was run from), and the study file's folder
    missing it is an error even when the current folder has it."""
    study_dir, cwd = tmp_path / "study", tmp_path / "here"
    (study_dir / "data").mkdir(parents=True)
    (cwd / "data").mkdir(parents=True)
    rng = np.random.default_rng(2)
    for folder, features in ((study_dir, 3), (cwd, 5)):
        np.savez(folder / "data" / "set.npz", X=rng.standard_normal((30, features)),
                 y=np.arange(30) % 3)
    monkeypatch.chdir(cwd)
    assert load_dataset("data/set.npz", base_dir=study_dir).X.shape == (30, 3)
    assert load_dataset("data/set.npz").X.shape == (30, 5)  # no study file: the current folder
    (study_dir / "data" / "set.npz").unlink()
    with pytest.raises(DataError, match=f"{study_dir}/data/set.npz: data file not found"):
        load_dataset("data/set.npz", base_dir=study_dir)


def test_load_splits_from_a_file(tmp_path):
    path = tmp_path / "t.csv"
    frame(n=90).to_csv(path, index=False)
    sp = load_splits(str(path), target="label", val_size=0.2, test_size=0.2)
    assert (len(sp.y_train), len(sp.y_val), len(sp.y_test)) == (54, 18, 18)
    assert sp.X_train.shape == (54, 4)  # 3 features + bias


# --- bad data -----------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="data file not found") as info:
        load_dataset(str(tmp_path / "nope.csv"), target="y")
    assert "nope.csv" in str(info.value)


def test_unknown_dataset_name():
    with pytest.raises(DataError, match="unknown dataset 'mnist'") as info:
        load_dataset("mnist")
    assert "digits" in str(info.value) and "synthetic" in str(info.value)  # the hint


def test_unknown_format(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match=r"unknown data format '\.xlsx'; supported: \.csv"):
        load_dataset(str(path))


def test_unknown_format_wins_over_target(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a,y\n1,0\n")
    with pytest.raises(DataError, match=r"p\.txt: unknown data format '\.txt'; supported: \.csv"):
        load_dataset(str(path), target="y")


def test_a_directory_is_not_a_file(tmp_path):
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(DataError, match="not a file"):
        load_dataset(str(tmp_path / "dir.csv"), target="y")


def test_unreadable_csv(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match="cannot read CSV file"):
        load_dataset(str(path), target="y")


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_csv_says_the_file_is_empty(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(DataError, match="the file is empty") as info:
        load_dataset(str(path), target="y")
    assert "No columns to parse" not in str(info.value)


def test_empty_parquet_says_the_file_is_empty(tmp_path):
    path = tmp_path / "empty.parquet"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.parquet: cannot read PARQUET file: the file is empty"):
        load_dataset(str(path), target="y")


def test_a_short_line_names_the_line_and_its_field_count(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("a,b,c,label\n1.0,2.0,3.0,x\n\n1.0,2.0,y\n4.0,5.0,6.0,y\n1.0,x\n")
    with pytest.raises(DataError) as info:
        load_dataset(str(path), target="label")
    message = str(info.value)
    assert "line 4 has 3 fields, expected 4" in message, message  # the blank line 3 counts
    assert "2 lines in all, e.g. lines 4, 6" in message, message
    assert "non-numeric" not in message and "missing" in info.value.hint


def test_a_short_line_with_a_missing_target_is_reported_as_short(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("a,b,label\n1.0,2.0,x\n3.0,4.0\n5.0,6.0,y\n")
    with pytest.raises(DataError, match="line 3 has 2 fields, expected 3"):
        load_dataset(str(path), target="label")


@pytest.mark.parametrize("lines", [
    "1,2.0,3.0,x\n2,4.0,5.0,y\n",  # an index column with no name in the header
    "2.0,3.0,x,\n4.0,5.0,y,\n",  # a comma at the end of each data line
])
def test_data_lines_one_field_longer_than_the_header_are_refused(tmp_path, lines):
    # pandas would take each line's first field as the row index and shift every column
    path = tmp_path / "long.csv"
    path.write_text("a,b,label\n" + lines)
    with pytest.raises(DataError, match="line 2 has 4 fields, expected 3") as info:
        load_dataset(str(path), target="label")
    assert "every data line has 4 fields: name the extra column" in info.value.hint


def test_one_long_line_among_good_ones_gets_the_general_hint(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("a,b,label\n1.0,2.0,x\n3.0,4.0,y\n5.0,6.0,y,\n")
    with pytest.raises(DataError, match="line 4 has 4 fields, expected 3") as info:
        load_dataset(str(path), target="label")
    assert "missing or extra commas" in info.value.hint


def test_a_target_that_differs_only_in_spaces_or_capitals_is_pointed_at(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,Species name \n1,2,x\n3,4,y\n5,6,x\n7,8,y\n")
    with pytest.raises(DataError, match="target column 'species name' not found; columns: a, b, "
                                        "'Species name '") as info:
        load_dataset(str(path), target="species name")
    assert info.value.hint == ("the file has 'Species name ', which differs only in spaces or "
                               "capitals: set data.target = 'Species name ', or fix the header")


def test_a_misspelt_target_gets_a_suggestion(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n1,2,x\n3,4,y\n5,6,x\n7,8,y\n")
    with pytest.raises(DataError, match="target column 'lable' not found; did you mean label\\? "
                                        "columns: a, b, label"):
        load_dataset(str(path), target="lable")


def test_a_tsv_file_is_read_with_tabs_and_checked_like_a_csv_file(tmp_path):
    path = tmp_path / "t.tsv"
    frame().to_csv(path, index=False, sep="\t")
    ds = load_dataset(str(path), target="label")
    assert ds.feature_names == ["f1", "f2", "count"] and len(ds.y) == len(frame())
    path.write_text("a\tb\tlabel\n1.0\t2.0\tx\n3.0\t4.0\n5.0\t6.0\ty\n")
    with pytest.raises(DataError, match="line 3 has 2 fields, expected 3"):
        load_dataset(str(path), target="label")
    frame().to_csv(path, index=False)  # commas in a .tsv file
    with pytest.raises(DataError, match="target column 'label' not found") as info:
        load_dataset(str(path), target="label")
    assert info.value.hint == ("the file does not look tab-separated: its header is one column "
                               "that contains commas; set data.delimiter = \",\", or name it .csv")


@pytest.mark.parametrize("sep, name", [(";", "semicolons"), ("\t", "tabs")])
def test_a_file_that_is_not_comma_separated_gets_a_hint(tmp_path, sep, name):
    path = tmp_path / "t.csv"
    frame().to_csv(path, index=False, sep=sep)
    with pytest.raises(DataError, match="target column 'label' not found") as info:
        load_dataset(str(path), target="label")
    assert "does not look comma-separated" in info.value.hint
    assert name in info.value.hint
    assert f"set data.delimiter = {json.dumps(sep)}" in info.value.hint
    ds = load_dataset(str(path), target="label", delimiter=sep)  # as the hint says
    assert ds.feature_names == ["f1", "f2", "count"] and len(ds.y) == len(frame())


def test_decimal_commas_are_named_as_such(tmp_path):
    """A European CSV: ';' between fields and decimal commas. The hint to re-save it with ','
    between fields would have broken it further."""
    path = tmp_path / "t.csv"
    path.write_text("a;b;label\n0,346;1;x\n-1,5;2;y\n0,1;3;x\n2,0;4;y\n")
    with pytest.raises(DataError, match=r"non-numeric feature column\(s\): 'a' \(e\.g\. '0,346'\)") as info:
        load_dataset(str(path), target="label", delimiter=";")
    assert info.value.hint.startswith("numbers written with a comma ('0,346'): tuner reads numbers "
                                      "with a decimal point and no thousands separator; re-save "
                                      "the file so, e.g. with pandas: pd.read_csv(path, sep=';', "
                                      "decimal=',')")


def test_a_delimiter_is_used_for_every_check_of_the_file(tmp_path):
    """The field-count check and the file lines in messages read the file with the same
    delimiter as pandas did."""
    path = tmp_path / "t.csv"
    path.write_text("a;b;label\n1,5;2;x\n3;4\n5;6;y\n")  # a decimal comma is text here
    with pytest.raises(DataError, match="line 3 has 2 fields, expected 3"):
        load_dataset(str(path), target="label", delimiter=";")
    path.write_text("a;b;label\n1;2;x\n3;nan;y\n5;6;y\n")
    with pytest.raises(DataError, match=r"data row 2 \(line 3 of the file\)"):
        load_dataset(str(path), target="label", delimiter=";")


@pytest.mark.parametrize("name, match", [
    ("mnist", "unknown dataset 'mnist': not a built-in dataset and not a file"),
    ("data.xlsx", r"data\.xlsx: unknown data format '\.xlsx'; supported: \.csv"),
])
def test_dataset_names_are_checked_without_any_file(name, match):
    with pytest.raises(DataError, match=match):
        check_dataset_name(name)
    with pytest.raises(DataError, match=match.split(": ")[-1] if "xlsx" in name else match):
        load_dataset(name)  # the same message as when loading


@pytest.mark.parametrize("name", ["digits", "synthetic", "missing.csv", "sub/x.NPZ", "a.pq"])
def test_good_dataset_names_pass_the_name_check(name):
    check_dataset_name(name)  # no file access: a missing file is the loader's business


def test_missing_target_column(tmp_path):
    path = tmp_path / "t.csv"
    frame().to_csv(path, index=False)
    with pytest.raises(DataError, match="target column 'class' not found; "
                                        "columns: f1, f2, count, label"):
        load_dataset(str(path), target="class")


def test_no_target_given(tmp_path):
    path = tmp_path / "t.parquet"
    frame().to_parquet(path)
    with pytest.raises(DataError, match="no target column given; "
                                        "set data.target to one of: f1, f2"):
        load_dataset(str(path))


def test_only_a_target_column(tmp_path):
    path = tmp_path / "t.csv"
    frame()[["label"]].to_csv(path, index=False)
    with pytest.raises(DataError, match="no feature columns besides the target 'label'"):
        load_dataset(str(path), target="label")


def test_non_numeric_features(tmp_path):
    df = frame()
    df["colour"] = ["red", "green", "blue"] * 20
    df["f2"] = df["f2"].astype(object)
    df.loc[3, "f2"] = "unknown"  # a text value in an otherwise numeric column
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match="non-numeric feature column") as info:
        load_dataset(str(path), target="label")
    message = str(info.value)
    assert "'colour' (e.g. 'red')" in message and "'f2' (e.g. 'unknown')" in message
    assert "only the target may be text" in message  # the hint


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_feature_values(tmp_path, bad):
    df = frame()
    df.loc[[4, 9], "f1"] = bad
    path = tmp_path / "t.parquet"
    df.to_parquet(path)
    with pytest.raises(DataError, match=r"t\.parquet: missing or infinite feature values in "
                                        r"'f1' \(2 values, in data rows 5, 10\)\n"):
        load_dataset(str(path), target="label")


def test_nan_in_csv_is_reported_as_missing(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n1,2,x\n3,,y\n5,inf,x\n7,8,y\n")
    with pytest.raises(DataError, match=r"'b' \(2 values, in data rows 2, 3 "
                                        r"\(lines 3, 4 of the file\)\)"):
        load_dataset(str(path), target="label")


def test_nan_row_in_csv_names_data_row_and_file_line(tmp_path):
    path = tmp_path / "sensors.csv"
    rows = [f"{i},{'nan' if i == 6 else 20 + i},{i % 2}" for i in range(1, 11)]
    path.write_text("id,temperature_c,label\n" + "\n".join(rows) + "\n")  # NaN on line 7
    with pytest.raises(DataError, match=r"sensors\.csv: missing or infinite feature values in "
                                        r"'temperature_c' \(1 value, in data row 6 "
                                        r"\(line 7 of the file\)\)\n"):
        load_dataset(str(path), target="label")


def test_csv_file_lines_skip_blank_lines_and_follow_quoted_newlines(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('\na,b,label\n1,2,"two\nlines"\n\n   \n3,,y\n4,5,x\n')
    with pytest.raises(DataError, match=r"'b' \(1 value, in data row 2 \(line 7 of the file\)\)"):
        load_dataset(str(path), target="label")


def test_many_bad_rows_are_shortened(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n" + "".join(f"{i},,{i % 2}\n" for i in range(12)))
    with pytest.raises(DataError, match=r"'b' \(12 values, in data rows 1, 2, 3, 4, 5, \.\.\. "
                                        r"\(lines 2, 3, 4, 5, 6, \.\.\. of the file\)\)"):
        load_dataset(str(path), target="label")


def test_missing_target_values(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,label\n1,x\n2,\n3,y\n")
    with pytest.raises(DataError, match=r"t\.csv: target column 'label' is missing in "
                                        r"1 row \(data row 2 \(line 3 of the file\)\)\n") as info:
        load_dataset(str(path), target="label")
    assert info.value.hint.startswith("fill in the label of those rows or delete them")


def test_class_names_pandas_would_read_as_missing_are_classes(tmp_path):
    """'NA' (North America), 'None' (no defect), 'null' are class names; in a feature column
    they still mean a missing value."""
    path = tmp_path / "t.csv"
    frame(classes=("NA", "None", "null", "dog")).to_csv(path, index=False)
    ds = load_dataset(str(path), target="label")
    assert ds.class_names == ["NA", "None", "dog", "null"] and np.bincount(ds.y).tolist() == [15] * 4
    path.write_text("f1,label\n1,NA\nNA,dog\n3,NA\n4,dog\n")
    with pytest.raises(DataError, match=r"missing or infinite feature values in 'f1' \(1 value, "
                                        r"in data row 2 "):
        load_dataset(str(path), target="label")
    # numbers and NA (R's missing value): a numeric target with a missing label, not a class
    path.write_text("f1,label\n" + "".join(f"{i},{i % 2}\n" for i in range(20)) + "7,NA\n")
    with pytest.raises(DataError, match=r"target column 'label' is missing in 1 row \(data row 21 "):
        load_dataset(str(path), target="label")


def test_labels_are_stripped_and_a_blank_label_is_missing(tmp_path):
    path = tmp_path / "t.csv"
    df = frame(classes=("dog", "cat"))
    df.loc[1, "label"] = " dog "
    df.to_csv(path, index=False)
    assert load_dataset(str(path), target="label").class_names == ["cat", "dog"]
    df.loc[3, "label"] = "  "
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"target column 'label' is missing in 1 row \(data row 4 "):
        load_dataset(str(path), target="label")


@pytest.mark.parametrize(("value", "dtype", "limit"), [(1e300, "float64", "1e+150"),
                                                        (1e39, "float32", "3.4e+38")])
def test_values_too_large_for_the_engine_are_refused_by_column(value, dtype, limit):
    """A 1e300 'missing' placeholder would overflow float32 (a non-finite loss in every trial)
    or, in float64, the column's standard deviation (the column silently flattened to 0)."""
    ds = dataset([20, 20])
    ds.X[3, 1] = value
    expected = (f"toy: feature values too large for the engine (beyond {limit} for dtype {dtype}) "
                f"in 'x1' (largest |value| {value:.3g})")
    with pytest.raises(DataError, match=re.escape(expected)) as info:
        split_dataset(ds, dtype=dtype)
    assert "placeholder for missing values" in info.value.hint
    ds.X[3, 1] = 1e30  # large but fine in float64
    split_dataset(ds, dtype="float64")


def test_fewer_than_two_classes(tmp_path):
    df = frame(classes=("only",))
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match="has 1 class \\('only'\\); a classifier needs at least 2"):
        load_dataset(str(path), target="label")
    np.savez(tmp_path / "one.npz", X=np.ones((5, 2)), y=np.zeros(5))
    with pytest.raises(DataError, match="has 1 class"):
        load_dataset(str(tmp_path / "one.npz"))


def test_class_with_too_few_examples_to_split():
    with pytest.raises(DataError, match="class 'k2' has 2 example\\(s\\); a stratified "
                                        "train/validation/test split needs at least 3") as info:
        split_dataset(dataset([30, 30, 2]))
    assert info.value.hint and "drop it" in info.value.hint
    assert "set data.test_size = 0" in info.value.hint and "val_size" not in info.value.hint
    with pytest.raises(DataError, match="class 'k2' has 1 example") as info:
        split_dataset(dataset([30, 30, 1]))
    assert "test_size" not in info.value.hint  # one example is too few even without a test set
    assert "spaces or capitals" not in info.value.message
    # a stray space or capital makes a class of its own: the message points at its twin
    twins = dataset([30, 30, 1])
    twins.class_names = ["no", "yes", " Yes"]
    with pytest.raises(DataError, match=r"class ' Yes' has 1 example\(s\); .* \(is it 'yes', "
                                        r"written with other spaces or capitals\?\)") as info:
        split_dataset(twins)
    assert info.value.hint.endswith("labels are compared exactly: fix its spelling in the file")
    # without a test set two examples are enough
    sp = split_dataset(dataset([30, 30, 2]), val_size=0.2, test_size=0)
    assert len(sp.y_test) == 0 and 2 in sp.y_train


def test_small_class_emptied_by_the_test_split():
    """Three examples pass the per-class count, but a large test set can take two of them."""
    with pytest.raises(DataError, match="class 'k2' has 3 example\\(s\\) and the stratified "
                                        "test split leaves 1, too few to split into train "
                                        "and validation"):
        split_dataset(dataset([50, 50, 3]), val_size=0.1, test_size=0.45)


@pytest.mark.parametrize("counts, kwargs, match", [
    ([20, 20, 20], {"val_size": 2, "test_size": 10}, "the validation set would have 2 example"),
    ([20, 20, 20], {"val_size": 10, "test_size": 0.02}, "the test set would have 1 example"),
    ([5, 5], {"val_size": 0.5, "test_size": 0.4}, "leave 1 for training"),
    ([5, 5], {"val_size": 6, "test_size": 5}, r"validation \(6\) \+ test \(5\) examples are more "
                                              "than the 10 examples there are"),
    ([10, 10], {"val_size": 25}, "data.val_size = 25 would take 25 of the 20 examples"),
    ([10, 10], {"test_size": -0.1}, "test_size must be >= 0"),
])
def test_impossible_split_sizes(counts, kwargs, match):
    with pytest.raises(DataError, match=match):
        split_dataset(dataset(counts), **kwargs)


def test_npz_missing_arrays(tmp_path):
    np.savez(tmp_path / "a.npz", data=np.ones((4, 2)), y=np.arange(4))
    with pytest.raises(DataError, match="missing array\\(s\\) X; found: data, y"):
        load_dataset(str(tmp_path / "a.npz"))
    np.savez(tmp_path / "b.npz", X=np.ones((4, 2)))
    with pytest.raises(DataError, match="missing array\\(s\\) y"):
        load_dataset(str(tmp_path / "b.npz"))


@pytest.mark.parametrize("X, y, match", [
    (np.ones(6), np.arange(6), r"X must be 2-D \(examples x features\), got shape \(6,\)"),
    (np.ones((6, 2, 2)), np.arange(6), "X must be 2-D"),
    (np.ones((6, 2)), np.arange(5), r"X has 6 rows, y has shape \(5,\)"),
    (np.ones((6, 2)), np.ones((6, 1)), r"y must be 1-D.*shape \(6, 1\)"),
    (np.array([["a", "b"]] * 6), np.arange(6) % 2, "X must be numeric, got dtype <U1"),
    (np.array([[1.0, np.nan]] * 6), np.arange(6) % 2,
     r"missing or infinite feature values in 'x1' \(6 values, in row indices 0, 1, 2, 3, 4, \.\.\.\)"),
    (np.array([[1.0, 2.0]] * 5 + [[np.inf, 2.0]]), np.arange(6) % 2,
     r"'x0' \(1 value, in row index 5\)"),
])
def test_npz_wrong_shapes_and_values(tmp_path, X, y, match):
    np.savez(tmp_path / "a.npz", X=X, y=y)
    with pytest.raises(DataError, match=match):
        load_dataset(str(tmp_path / "a.npz"))


@pytest.mark.parametrize("key", ["X", "y"])
def test_npz_object_arrays_are_not_unpickled(tmp_path, key):
    arrays = {"X": np.ones((50, 2)), "y": np.arange(50) % 2}
    arrays[key] = np.array([{"a": 1}] * 50, dtype=object)
    np.savez(tmp_path / "h.npz", **arrays)
    with pytest.raises(DataError, match=rf"h\.npz: array '{key}' holds Python objects "
                                        r"\(dtype object\); save numeric arrays") as info:
        load_dataset(str(tmp_path / "h.npz"))
    assert ("y=y.astype(str)" if key == "y" else "X=X.astype(float)") in info.value.hint


def npy_bytes():
    buffer = io.BytesIO()
    np.save(buffer, np.ones((4, 2)))
    return buffer.getvalue()


def truncated_npz_bytes():
    buffer = io.BytesIO()
    np.savez(buffer, X=np.ones((4, 2)), y=np.arange(4))
    return buffer.getvalue()[:200]


@pytest.mark.parametrize("content, reason", [
    (b"some text, not arrays\n", "it is not a zip file"),
    (b"", "the file is empty"),
    (npy_bytes(), "it holds a single array saved with numpy.save"),
    (truncated_npz_bytes(), "a damaged or truncated zip file"),
])
def test_npz_that_is_not_an_archive(tmp_path, content, reason):
    (tmp_path / "g.npz").write_bytes(content)
    with pytest.raises(DataError, match=rf"g\.npz: not a NumPy \.npz archive \({reason}\)") as info:
        load_dataset(str(tmp_path / "g.npz"))
    assert "pickled" not in str(info.value) and "numpy.savez" in info.value.hint


def test_zip_without_npz_arrays(tmp_path):
    with zipfile.ZipFile(tmp_path / "z.npz", "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(DataError, match=r"z\.npz: missing array\(s\) X, y; found: readme\.txt"):
        load_dataset(str(tmp_path / "z.npz"))
    with zipfile.ZipFile(tmp_path / "j.npz", "w") as archive:
        archive.writestr("X.npy", "not an array")
        archive.writestr("y.npy", "not an array")
    with pytest.raises(DataError, match=r"j\.npz: 'X' in the archive is not a NumPy \.npy array"):
        load_dataset(str(tmp_path / "j.npz"))


def test_npz_with_a_damaged_array(tmp_path):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, X=np.random.default_rng(0).random((200, 3)), y=np.arange(200) % 2)
    data = bytearray(path.read_bytes())
    data[300] ^= 0xFF  # inside the compressed X.npy
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"c\.npz: cannot read array 'X' \(damaged archive\?\)"):
        load_dataset(str(path))


# --- columns that are not what they seem: a saved index, a continuous target, repeated names ---

def sorted_by_label(n=60):
    """Rows sorted by label, as a user's export often is: a row number then gives the label away."""
    return frame(n=n).sort_values("label", kind="stable").reset_index(drop=True)


def test_a_pandas_index_column_is_refused(tmp_path):
    path = tmp_path / "sorted.csv"
    sorted_by_label().to_csv(path)  # pandas' default: the index, under an empty header
    with pytest.raises(DataError) as info:
        load_dataset(str(path), target="label")
    assert info.value.message == (
        f"{path}: column 1 has an empty header (pandas names it 'Unnamed: 0') and holds the "
        f"numbers 0..59, one per row, like the index DataFrame.to_csv writes unless index=False. "
        f"tuner does not train on a column without a name: it is usually a row index saved with "
        f"the data, which leaks the row order into the model (of rows sorted by label, it gives "
        f"the labels away)")
    assert info.value.hint == ("save the file again with DataFrame.to_csv(path, index=False), or "
                               "delete the column; a real feature needs a name in the header "
                               "(every column but data.target is a feature)")
    sorted_by_label().to_csv(path, index=False)  # the fix the hint gives
    assert load_dataset(str(path), target="label").feature_names == ["f1", "f2", "count"]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_an_unnamed_column_saved_again_is_refused(tmp_path, fmt):
    """Read back with pandas and saved again, the index keeps pandas' name 'Unnamed: 0'."""
    sorted_by_label().to_csv(tmp_path / "first.csv")
    again = pd.read_csv(tmp_path / "first.csv")
    path = tmp_path / f"again.{fmt}"
    again.to_csv(path, index=False) if fmt == "csv" else again.to_parquet(path)
    with pytest.raises(DataError, match=rf"again\.{fmt}: column 1 is named 'Unnamed: 0' \(the "
                                        r"name pandas gives a column with an empty header: .*\) "
                                        r"and holds the numbers 0\.\.59, one per row") as info:
        load_dataset(str(path), target="label")
    expected = ("DataFrame.to_csv(path, index=False)" if fmt == "csv"
                else "drop the column (DataFrame.drop(columns=['Unnamed: 0'])) and save the file again")
    assert expected in info.value.hint


def test_an_empty_header_on_a_real_column_asks_for_a_name(tmp_path):
    path = tmp_path / "blank.csv"
    path.write_text("f0,,  ,label\n" + "".join(f"{i % 7},{i * 2.5},{i % 3},{'ab'[i % 2]}\n"
                                               for i in range(20)))
    with pytest.raises(DataError) as info:
        load_dataset(str(path), target="label")
    assert info.value.message.startswith(
        f"{path}: column 2 has an empty header (pandas names it 'Unnamed: 1'); column 3 has a "
        f"blank header. tuner does not train on a column without a name")
    assert info.value.hint.startswith("give them a name in the header if they are real "
                                      "features, else delete them")


def test_lines_that_end_with_a_comma_are_said_to(tmp_path):
    """'a,b,label,' on every line: an empty last column, not a saved index."""
    path = tmp_path / "trailing.csv"
    path.write_text("f0,f1,label,\n" + "".join(f"{i % 7},{i % 5},{'ab'[i % 2]},\n" for i in range(20)))
    with pytest.raises(DataError) as info:
        load_dataset(str(path), target="label")
    assert info.value.message == (f"{path}: the last column has no header and no values "
                                  "('Unnamed: 3' to pandas): the lines end with a separator (a "
                                  "trailing comma)")
    assert info.value.hint == "remove the separator at the end of each line"


def test_an_unnamed_column_named_as_the_target_is_accepted(tmp_path):
    """data.target names a column explicitly: that is the user's choice, empty header or not."""
    path = tmp_path / "t.csv"
    path.write_text(",f1,f2\n" + "".join(f"{'xyz'[i % 3]},{i % 5},{i % 7}\n" for i in range(30)))
    ds = load_dataset(str(path), target="Unnamed: 0")
    assert ds.class_names == ["x", "y", "z"] and ds.feature_names == ["f1", "f2"]


def test_a_row_counter_or_identifier_feature_is_a_warning(tmp_path, caplog):
    df = sorted_by_label().reset_index()  # a named 'index' column, 0..59 in order
    df["id"] = np.random.default_rng(1).permutation(1000)[:60] + 5000  # distinct, not a range
    path = tmp_path / "ids.csv"
    df.to_csv(path, index=False)
    with caplog.at_level("WARNING", logger="tuner"):
        ds = load_dataset(str(path), target="label")
    assert ds.feature_names == ["index", "f1", "f2", "count", "id"]  # a warning, not an error
    warned = [r.getMessage() for r in caplog.records if r.name == "tuner.data"]
    tail = ("not a measurement; if the row order or the numbering follows the label (rows sorted "
            "by it, say) it gives the labels away. Delete the column from the file unless it is "
            "a real feature")
    assert warned == [
        f"{path}: feature column 'index' holds the numbers 0..59, one per row: it looks like a "
        f"row counter, {tail}",
        f"{path}: feature column 'id' has a different value in every row: it looks like a row "
        f"identifier, {tail}",
    ]
    caplog.clear()  # said once per process: a run reads its data more than once
    with caplog.at_level("WARNING", logger="tuner"):
        load_dataset(str(path), target="label")
    assert not [r for r in caplog.records if r.name == "tuner.data"]


def test_a_shuffled_one_based_counter_is_a_warning_and_ordinary_features_are_not(tmp_path, caplog):
    df = frame(n=60)
    df["n"] = np.random.default_rng(2).permutation(60) + 1  # 1..60, shuffled, any name
    path = tmp_path / "t.parquet"
    df.to_parquet(path)
    with caplog.at_level("WARNING", logger="tuner"):
        load_dataset(str(path), target="label")
        frame(n=60).to_parquet(path)
        load_dataset(str(path), target="label")
    warned = [r.getMessage() for r in caplog.records if r.name == "tuner.data"]
    assert len(warned) == 1 and "feature column 'n' holds the numbers 1..60, one per row" in warned[0]


def test_a_continuous_target_is_refused_before_the_split(tmp_path):
    df = frame(n=600)
    df["label"] = np.random.default_rng(3).normal(50.0, 10.0, 600)  # a measurement, 600 values
    path = tmp_path / "reg.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DataError) as info:
        load_splits(str(path), target="label")
    message = str(info.value)
    assert info.value.message.startswith(
        f"{path}: target column 'label' has 600 distinct values in 600 rows, not all whole "
        f"numbers (e.g. ")
    assert ("): it looks continuous, a quantity to predict by regression; tuner trains "
            "classifiers, which need a few classes with several examples each") in message
    assert info.value.hint == ("bin the values into classes (e.g. with pandas.cut) or set "
                               "data.target to the column that holds the classes; class labels "
                               "that are numbers must be whole numbers (1, 2, 3 or 1.0, 2.0) or "
                               "text")
    assert "fewer than" not in message and "val_size" not in message
    np.savez(tmp_path / "reg.npz", X=df[["f1", "f2"]].to_numpy(), y=df["label"].to_numpy())
    with pytest.raises(DataError, match=r"reg\.npz: y has 600 distinct values in 600 rows, not all "
                                        r"whole numbers") as info:
        load_dataset(str(tmp_path / "reg.npz"))
    assert "save the class labels as y" in info.value.hint


def test_a_rounded_continuous_target_with_repeats_is_refused_too(tmp_path):
    """Rounded to one decimal, 600 values repeat (a stratified split would go through) but are
    still no classes: more than 20 distinct non-whole numbers is continuous."""
    df = frame(n=600)
    df["label"] = np.round(np.random.default_rng(4).uniform(0.0, 5.0, 600), 1)
    path = tmp_path / "rounded.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"target column 'label' has 51 distinct values in 600 "
                                        r"rows, not all whole numbers \(e\.g\. 0\.1, 0\.2, 0\.3\): "
                                        r"it looks continuous"):
        load_dataset(str(path), target="label")


@pytest.mark.parametrize("labels, names", [
    ([1.0, 2.0, 3.0], ["1.0", "2.0", "3.0"]),        # whole-number floats (pandas reads 1.0)
    ([0.5, 1.5, 2.5], ["0.5", "1.5", "2.5"]),        # a few fractional classes that repeat
    (["low", "mid", "high"], ["high", "low", "mid"]),
    ([10, 20, 30], ["10", "20", "30"]),
])
def test_class_labels_of_any_kind_still_load_and_split(tmp_path, labels, names):
    df = frame(n=90)
    df["label"] = [labels[i % 3] for i in range(90)]
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    assert load_dataset(str(path), target="label").class_names == names
    assert len(load_splits(str(path), target="label").y_val) == 18


def test_a_target_with_a_class_per_row_is_refused(tmp_path):
    df = frame(n=100)
    df["label"] = np.arange(100) * 3 + 1000  # e.g. a customer number picked as the target
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DataError) as info:
        load_splits(str(path), target="label")
    assert info.value.message == (
        f"{path}: target column 'label' has 100 distinct values in 100 rows: with more classes "
        f"than half the rows, some class has a single example, too few to learn from or to split "
        f"into train/validation/test (is it an identifier or a measurement rather than a class?)")
    assert info.value.hint == ("set data.target to the column that holds the classes (a class is "
                               "a value that several rows share)")


def test_duplicate_column_names_are_refused(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("f0,f0,label\n" + "".join(f"{i % 5},{i % 7},{'ab'[i % 2]}\n" for i in range(20)))
    with pytest.raises(DataError) as info:
        load_dataset(str(path), target="label")
    assert str(info.value) == (
        f"{path}: duplicate column name in the header: 'f0' (columns 1, 2); pandas renames the "
        f"repeats (e.g. 'f0' to 'f0.1') and tuner would use every copy: a repeated feature counts "
        f"twice, a repeated target becomes a feature\n"
        f"  hint: give every column a name of its own, or delete the repeated columns")


def test_a_repeated_target_and_several_repeats_are_all_named(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("label,f0,label,f1,f1\n"
                    + "".join(f"{'ab'[i % 2]},{i % 5},{'ab'[i % 2]},1,2\n" for i in range(20)))
    with pytest.raises(DataError, match=r"dup\.csv: duplicate column names in the header: 'label' "
                                        r"\(columns 1, 3\), 'f1' \(columns 4, 5\); pandas renames "
                                        r"the repeats \(e\.g\. 'label' to 'label\.1'\)"):
        load_dataset(str(path), target="label")


def test_a_name_that_only_looks_renamed_is_not_a_duplicate(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("f0,f0.1,label\n" + "".join(f"{i % 5},{i % 7},{'ab'[i % 2]}\n" for i in range(20)))
    assert load_dataset(str(path), target="label").feature_names == ["f0", "f0.1"]


def test_duplicate_column_names_in_parquet(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    table = pa.table([pa.array([1.0, 2.0] * 10), pa.array([3.0, 4.0] * 10), pa.array(["x", "y"] * 10)],
                     names=["f0", "f0", "label"])
    pq.write_table(table, tmp_path / "dup.parquet")
    with pytest.raises(DataError, match=r"dup\.parquet: duplicate column name in the file: 'f0' "
                                        r"\(columns 1, 2\)\n  hint: give every column"):
        load_dataset(str(tmp_path / "dup.parquet"), target="label")


def test_data_errors_are_user_errors():
    assert issubclass(DataError, TunerError)


# --- splitting ----------------------------------------------------------------------------------

def test_stratified_split_keeps_class_proportions():
    ds = dataset([300, 150, 50], d=2)
    sp = split_dataset(ds, val_size=0.2, test_size=0.2, seed=3)
    assert (len(sp.y_train), len(sp.y_val), len(sp.y_test)) == (300, 100, 100)
    for part, expected in ((sp.y_train, [180, 90, 30]), (sp.y_val, [60, 30, 10]),
                           (sp.y_test, [60, 30, 10])):
        np.testing.assert_allclose(np.bincount(part, minlength=3), expected, atol=1)


def test_split_is_seeded_and_disjoint():
    ds = dataset([40, 40, 40], d=2)
    a, b = split_dataset(ds, seed=7), split_dataset(ds, seed=7)
    np.testing.assert_array_equal(a.X_train, b.X_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    c = split_dataset(ds, seed=8)
    assert not np.array_equal(a.y_train, c.y_train) or not np.array_equal(a.X_train, c.X_train)
    # the three parts are disjoint and cover the data: match rows back through their raw values
    raw = {tuple(np.round(r, 12)) for r in ds.X}
    parts = [{tuple(np.round(r[:-1] * a.std + a.mean, 5)) for r in X.astype(np.float64)}
             for X in (a.X_train, a.X_val, a.X_test)]
    assert sum(len(p) for p in parts) == len(raw) == 120
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])


def test_standardization_fitted_on_train_only():
    rng = np.random.default_rng(4)
    y = np.arange(400) % 4
    X = rng.normal(loc=[5.0, -3.0, 100.0], scale=[2.0, 0.1, 30.0], size=(400, 3))
    X[:, 1] += 0.5 * y  # informative, so splits differ in distribution a little
    sp = split_dataset(Dataset("n", X, y, list("abcd"), ["u", "v", "w"]), dtype="float64")
    body = sp.X_train[:, :-1]
    np.testing.assert_allclose(body.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(body.std(axis=0), 1.0, rtol=1e-12)
    val = sp.X_val[:, :-1]
    assert np.all(np.abs(val.mean(axis=0)) > 1e-6)  # not re-fitted on validation data
    np.testing.assert_allclose(val.mean(axis=0), 0.0, atol=0.5)
    assert not np.allclose(sp.mean, X.mean(axis=0), rtol=1e-9)  # not fitted on all the data
    # the recorded mean/std are the training set's
    train_raw = sp.X_train[:, :-1] * sp.std + sp.mean
    np.testing.assert_allclose(train_raw.mean(axis=0), sp.mean, rtol=1e-10)


def test_constant_features_keep_std_one_and_no_nan():
    ds = dataset([20, 20], d=3)
    ds.X[:, 1] = 7.0
    sp = split_dataset(ds)
    assert sp.std[1] == 1.0
    assert np.all(sp.X_train[:, 1] == 0.0) and np.isfinite(sp.X_val).all()


@pytest.mark.parametrize("value", [0.1, 0.7, -2.7])
def test_a_constant_column_with_a_rounding_std_is_treated_as_constant(value):
    # np.std of a column of 0.1s can be ~1e-17, not 0: dividing by it sent other rows to ~1e15
    ds = dataset([40, 40], d=3)
    ids = ds.X.copy()
    ids[:, 0] = np.arange(len(ids))  # the split depends on y and the seed only: find train rows
    train = split_dataset(Dataset("ids", ids, ds.y, ds.class_names, ds.feature_names),
                          standardize=False, dtype="float64").X_train[:, 0].astype(int)
    assert np.std(np.full(len(train), value)) > 0  # the premise: rounding, not an exact zero
    ds.X[:, 1] = value + 1.0
    ds.X[train, 1] = value  # constant on the training rows only
    sp = split_dataset(ds, dtype="float64")
    assert sp.std[1] == 1.0 and sp.mean[1] == pytest.approx(value, rel=1e-15)
    assert np.abs(sp.X_train[:, 1]).max() <= 1e-9
    for X in (sp.X_val, sp.X_test):
        np.testing.assert_allclose(X[:, 1], 1.0, rtol=1e-9)  # x - mean, not divided by 1e-17


def test_no_standardization_keeps_raw_values():
    ds = dataset([20, 20], d=3)
    sp = split_dataset(ds, standardize=False, dtype="float64", val_size=0, test_size=0)
    np.testing.assert_array_equal(np.sort(sp.X_train[:, :-1], axis=0), np.sort(ds.X, axis=0))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bias_column_and_dtype(dtype):
    sp = split_dataset(dataset([25, 25, 25]), dtype=dtype)
    for X in (sp.X_train, sp.X_val, sp.X_test):
        assert X.dtype == np.dtype(dtype)
        assert X.shape[1] == 4
        np.testing.assert_array_equal(X[:, -1], 1.0)
    assert sp.n_features == 3 and sp.n_classes == 3
    assert "3 features, 3 classes" in sp.describe()


# --- built-ins and synthetic ------------------------------------------------------------------

@pytest.mark.parametrize("name, shape, classes", [
    ("digits", (1797, 64), 10), ("iris", (150, 4), 3), ("wine", (178, 13), 3),
    ("breast_cancer", (569, 30), 2),
])
def test_builtin_datasets_load(name, shape, classes):
    assert name in BUILTIN_DATASETS
    ds = load_dataset(name)
    assert ds.X.shape == shape and ds.n_classes == classes
    assert len(ds.feature_names) == shape[1] and len(ds.class_names) == classes
    np.testing.assert_array_equal(np.unique(ds.y), np.arange(classes))
    sp = load_splits(name, val_size=0.2, test_size=0.2)
    assert len(sp.y_train) + len(sp.y_val) + len(sp.y_test) == shape[0]
    assert set(sp.y_val) == set(range(classes))


# --- the cache of prepared built-in splits -----------------------------------------------------

def assert_same_splits(a, b):
    for key in SPLIT_ARRAYS:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
        assert getattr(a, key).dtype == getattr(b, key).dtype, key
    assert (a.name, a.class_names, a.feature_names) == (b.name, b.class_names, b.feature_names)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cached_builtin_splits_equal_fresh_ones(tmp_path, monkeypatch, dtype):
    monkeypatch.setenv("TUNER_CACHE_DIR", "")
    fresh = load_splits("wine", seed=3, dtype=dtype, val_size=0.25)
    monkeypatch.setenv("TUNER_CACHE_DIR", str(tmp_path))
    first = load_splits("wine", seed=3, dtype=dtype, val_size=0.25)  # computed and written
    assert len(list((tmp_path / "splits").glob("wine-*.npz"))) == 1
    again = load_splits("wine", seed=3, dtype=dtype, val_size=0.25)  # read back
    assert_same_splits(first, fresh)
    assert_same_splits(again, fresh)
    other = load_splits("wine", seed=4, dtype=dtype, val_size=0.25)  # another key, another file
    assert len(list((tmp_path / "splits").glob("wine-*.npz"))) == 2
    assert not np.array_equal(other.y_train, fresh.y_train)


def test_a_cached_split_loads_without_importing_scikit_learn(tmp_path):
    code = ("import sys; from tuner.data import load_splits; s = load_splits('digits'); "
            "print(len(s.y_train), 'sklearn' in sys.modules)")
    env = {**os.environ, "TUNER_CACHE_DIR": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           check=True).stdout.split() for _ in range(2)]
    assert runs == [["1079", "True"], ["1079", "False"]]


def test_a_damaged_cache_file_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_CACHE_DIR", str(tmp_path))
    good = load_splits("iris")
    (path,) = (tmp_path / "splits").glob("iris-*.npz")
    path.write_bytes(path.read_bytes()[:500])
    assert_same_splits(load_splits("iris"), good)
    assert_same_splits(load_splits("iris"), good)  # and the rebuilt file is whole again


def test_no_cache_when_disabled_or_not_writable(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_CACHE_DIR", "")
    load_splits("iris")
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("TUNER_CACHE_DIR", str(blocked))
    assert len(load_splits("iris").y_train) == 90
    assert blocked.read_text() == "not a folder"


def test_synthetic_is_seeded():
    a = make_synthetic(n=200, d=30, classes=4, seed=1)
    b = make_synthetic(n=200, d=30, classes=4, seed=1)
    c = make_synthetic(n=200, d=30, classes=4, seed=2)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.X, c.X)


def test_synthetic_shapes_and_balance():
    ds = load_dataset("synthetic", n=500, d=12, classes=5, difficulty=0.2, seed=3)
    assert ds.X.shape == (500, 12) and ds.X.dtype == np.float32
    np.testing.assert_array_equal(np.bincount(ds.y), [100] * 5)
    assert ds.class_names == ["0", "1", "2", "3", "4"] and ds.n_classes == 5
    sp = split_dataset(ds, val_size=50, test_size=50)
    assert sp.X_train.shape == (400, 13) and len(sp.y_val) == 50 and len(sp.y_test) == 50


def test_synthetic_difficulty_controls_separation():
    """Easy data is nearly separable, hard data is not (class-mean distance shrinks)."""
    def nearest_mean_accuracy(difficulty):
        ds = make_synthetic(n=2000, d=50, classes=4, difficulty=difficulty, seed=0)
        X, y = ds.X[:1000], ds.y[:1000]
        means = np.stack([X[y == c].mean(axis=0) for c in range(4)])
        test_X, test_y = ds.X[1000:], ds.y[1000:]
        pred = np.argmin(((test_X[:, None, :] - means) ** 2).sum(-1), axis=1)
        return np.mean(pred == test_y)

    assert nearest_mean_accuracy(0.0) > nearest_mean_accuracy(1.0) + 0.2


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 5, "d": 3, "classes": 3}, "n >= 2\\*classes"),
    ({"n": 50, "d": 3, "classes": 1}, "classes >= 2"),
    ({"n": 50, "d": 3, "classes": 2, "difficulty": 1.5}, "difficulty must be in \\[0, 1\\]"),
])
def test_synthetic_invalid_arguments(kwargs, match):
    with pytest.raises(DataError, match=match):
        make_synthetic(**kwargs)
