"""Elementwise operations on federated rows give what pandas gives on the pooled rows.

Each operation runs on the servers (here ``fm.Local`` fragments, three of
them, one empty) and is observed through aggregates; the reference is the
same pandas operation on the concatenation of the fragments.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import fedmed as fm

NAN = np.nan


def frame(age, bmi, sex, smoker, z) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": pd.Series(age, dtype="float64"),
            "bmi": pd.Series(bmi, dtype="float64"),
            "sex": pd.Series(sex, dtype="str"),
            "smoker": pd.Series(smoker, dtype="float64"),  # 0/1 with missing values
            "z": pd.Series(z, dtype="float64"),  # zero, negatives and missing values
        }
    )


PARTS = (
    frame(
        [34.0, 71.0, NAN, 50.0, 63.0],
        [22.51, 31.04, 27.125, NAN, 24.0],
        ["F", "M", "F", None, "M"],
        [1.0, 0.0, NAN, 1.0, 0.0],
        [0.0, -2.5, 4.0, NAN, 1.25],
    ),
    frame([], [], [], [], []),  # an empty fragment
    frame(
        [58.0, 45.0, 81.0, 50.0],
        [19.875, NAN, 29.3, 35.5],
        ["M", "F", "F", "F"],
        [0.0, 1.0, 1.0, NAN],
        [9.0, 0.5, -1.0, 2.0],
    ),
)
POOLED = pd.concat(PARTS, ignore_index=True)


@pytest.fixture
def data() -> fm.FedData:
    return fm.FedData([fm.Local(p) for p in PARTS])


def close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


def summary(x: fm.FedData) -> tuple:
    """What the client can learn of a column: rows, non-missing values, their sum and distinct values."""
    return fm.compute(x.len(), x.count(), x.sum(), x.set())


def pandas_summary(s: pd.Series) -> tuple:
    return len(s), int(s.count()), s.sum(), sorted(s.dropna().unique().tolist())


def assert_same_column(x: fm.FedData, s: pd.Series) -> None:
    length, count, total, distinct = summary(x)
    expected_length, expected_count, expected_total, expected_distinct = pandas_summary(s)
    assert (length, count) == (expected_length, expected_count)
    assert close(float(total), float(expected_total))
    assert distinct == expected_distinct


# -- missing values, membership, bounds ----------------------------------------


@pytest.mark.parametrize("column", ["age", "bmi", "sex", "smoker"])
def test_isna_and_notna(data, column):
    isna, notna = fm.compute(data[column].isna().sum(), data[column].notna().sum())
    assert isna == POOLED[column].isna().sum() > 0
    assert notna == POOLED[column].notna().sum()
    assert isna + notna == len(POOLED)


def test_isna_of_a_whole_table_is_per_column(data):
    result = data.isna().sum().compute()
    expected = POOLED.isna().sum()
    assert result.to_dict() == expected.to_dict()


@pytest.mark.parametrize("value", [0, -1.5, 100])
def test_fillna_with_a_number(data, value):
    filled = data["bmi"].fillna(value)
    assert_same_column(filled, POOLED["bmi"].fillna(value))
    assert filled.count().compute() == len(POOLED)


def test_fillna_with_a_string(data):
    result = data["sex"].fillna("unknown").value_counts().compute()
    assert result.to_dict() == POOLED["sex"].fillna("unknown").value_counts().to_dict()
    assert result["unknown"] == 1


@pytest.mark.parametrize(
    "column, values",
    [("age", [50, 81.0, 99]), ("sex", ["F"]), ("sex", ["M", "X"]), ("bmi", []), ("z", [0, -1])],
)
def test_isin(data, column, values):
    got = data[column].isin(values).sum().compute()
    assert got == POOLED[column].isin(values).sum()
    # and as a row filter
    filtered = data[data[column].isin(values)]["age"].sum().compute()
    assert close(filtered, POOLED[POOLED[column].isin(values)]["age"].sum())


@pytest.mark.parametrize(
    "args, kwargs",
    [((40, 60), {}), ((), {"upper": 3}), ((), {"lower": 0}), ((25.0,), {"upper": 30.0}), ((None, 2), {})],
)
@pytest.mark.parametrize("column", ["bmi", "z"])
def test_clip(data, column, args, kwargs):
    clipped = data[column].clip(*args, **kwargs)
    expected = POOLED[column].clip(*args, **kwargs)
    assert_same_column(clipped, expected)
    assert fm.compute(clipped.min(), clipped.max()) == (expected.min(), expected.max())


def test_clip_keyword_and_positional_forms_are_one_task(data):
    # clip(upper=3) is bound to clip(None, 3): equal calls, so one map task
    a, b = data["z"].clip(upper=3).sum(), data["z"].clip(None, 3).sum()
    assert fm.explain(a, b).count(":= clip(") == 1
    assert fm.compute(a, b) == (POOLED["z"].clip(upper=3).sum(),) * 2


# -- numeric functions -------------------------------------------------------


@pytest.mark.parametrize("name", ["log", "exp", "sqrt"])
@pytest.mark.parametrize("column", ["age", "z"])
def test_numeric_functions(data, name, column):
    fn = {"log": np.log, "exp": np.exp, "sqrt": np.sqrt}[name]
    x = getattr(data[column], name)()
    with np.errstate(all="ignore"):
        expected = fn(POOLED[column])
    length, count, low, high, total = fm.compute(x.len(), x.count(), x.min(), x.max(), x.sum())
    assert (length, count) == (len(expected), expected.count())
    assert low == expected.min() and high == expected.max()  # -inf for log(0)
    assert close(total, expected.sum())


def test_log_of_zero_and_negative_values(data):
    x = data["z"].log()
    # log(0) is -inf (present), log of a negative value is missing
    assert x.min().compute() == -math.inf
    assert x.count().compute() == (POOLED["z"] > 0).sum() + (POOLED["z"] == 0).sum()


@pytest.mark.parametrize("decimals", [0, 1, 2, -1])
def test_round_method(data, decimals):
    x = (data["bmi"] / 3).round(decimals)
    assert_same_column(x, (POOLED["bmi"] / 3).round(decimals))


def test_python_round_builtin(data):
    x = round(data["bmi"] / 3, 2)
    assert isinstance(x, fm.FedData)
    assert_same_column(x, (POOLED["bmi"] / 3).round(2))
    # round(x) without digits rounds to whole numbers (half to even, as numpy)
    assert_same_column(round(data["z"]), POOLED["z"].round())
    assert round(data["z"]).set().compute() == sorted(np.round(POOLED["z"].dropna()).unique().tolist())


# -- types ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "column, dtype, pandas_dtype",
    [
        ("age", "float", "float64"),
        ("age", "int", "Int64"),
        ("smoker", "int", "Int64"),
        ("smoker", "bool", "boolean"),
        ("age", "str", "string"),
        ("sex", "str", "string"),
    ],
)
def test_astype_keeps_missing_values_missing(data, column, dtype, pandas_dtype):
    x = data[column].astype(dtype)
    expected = POOLED[column].astype(pandas_dtype)
    assert expected.isna().sum() > 0
    missing, count, length, distinct = fm.compute(x.isna().sum(), x.count(), x.len(), x.set())
    assert missing == POOLED[column].isna().sum()
    assert (count, length) == (expected.count(), len(expected))
    assert distinct == sorted(expected.dropna().unique().tolist())


def test_astype_values(data):
    as_int = data["age"].astype("int").set().compute()
    assert all(type(v) is int for v in as_int)
    as_str = data["age"].astype("str").set().compute()
    assert as_str == sorted(POOLED["age"].dropna().astype("string").unique().tolist())
    assert all(isinstance(v, str) for v in as_str)
    # bool: 1 -> True, 0 -> False, missing stays missing (numpy's bool would make it True)
    trues, falses, missing = fm.compute(
        data["smoker"].astype("bool").sum(),
        (~data["smoker"].astype("bool")).sum(),
        data["smoker"].astype("bool").isna().sum(),
    )
    assert (trues, falses, missing) == (
        (POOLED["smoker"] == 1).sum(), (POOLED["smoker"] == 0).sum(), POOLED["smoker"].isna().sum()
    )
    float_of_str = data["sex"].isin(["F"]).astype("float").sum().compute()
    assert float_of_str == (POOLED["sex"] == "F").sum()


def test_astype_to_an_unknown_type_names_the_allowed_ones(data):
    with pytest.raises(fm.TaskFailed) as info:
        data["age"].astype("complex").sum().compute()
    message = str(info.value)
    assert "complex" in message
    for allowed in ("float", "int", "bool", "str"):
        assert repr(allowed) in message


# -- comparisons and row filters ------------------------------------------------


def test_string_equality(data):
    eq, ne = fm.compute((data["sex"] == "F").sum(), (data["sex"] != "F").sum())
    assert eq == (POOLED["sex"] == "F").sum() == 5
    assert ne == (POOLED["sex"] != "F").sum()  # a missing value is "not equal", as in pandas
    assert data[data["sex"] == "M"]["age"].sum().compute() == POOLED[POOLED["sex"] == "M"]["age"].sum()


@pytest.mark.parametrize("threshold", [50, 0, 100])
def test_row_filter(data, threshold):
    got = data[data["age"] > threshold]["bmi"].sum().compute()
    assert close(got, POOLED[POOLED["age"] > threshold]["bmi"].sum())


def test_row_filter_with_invert(data):
    # ~ of a comparison: rows with a missing age are "not > 50" and kept
    got = fm.compute(data[~(data["age"] > 50)]["bmi"].sum(), data[~(data["age"] > 50)]["bmi"].len())
    expected = POOLED[~(POOLED["age"] > 50)]["bmi"]
    assert close(got[0], expected.sum()) and got[1] == len(expected)


def test_row_filter_with_and(data):
    mask = (data["age"] > 50) & (data["sex"] == "F")
    got = data[mask]["bmi"].sum().compute()
    assert close(got, POOLED[(POOLED["age"] > 50) & (POOLED["sex"] == "F")]["bmi"].sum())


def test_row_filter_with_or(data):
    mask = (data["age"] > 60) | (data["sex"] == "F")
    got = data[mask]["bmi"].sum().compute()
    assert close(got, POOLED[(POOLED["age"] > 60) | (POOLED["sex"] == "F")]["bmi"].sum())


def test_row_filter_with_and_or_invert(data):
    mask = ((data["age"] > 50) | (data["z"] < 0)) & ~(data["sex"] == "M")
    pooled_mask = ((POOLED["age"] > 50) | (POOLED["z"] < 0)) & ~(POOLED["sex"] == "M")
    got = fm.compute(data[mask]["bmi"].sum(), data[mask]["bmi"].len())
    assert close(got[0], POOLED[pooled_mask]["bmi"].sum()) and got[1] == pooled_mask.sum()


def test_lazy_results_combine_with_and_or():
    # README: results support the same operators; & and | on two client values
    data = fm.FedData([fm.Local([1, 2]), fm.Local([3])])
    both, either = (data.sum() > 5) & (data.len() > 5), (data.sum() > 5) | (data.len() > 5)
    assert (both.compute(), either.compute()) == (False, True)
