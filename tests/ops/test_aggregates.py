"""Aggregates pooled over fragments equal pandas (and numpy) on the concatenated rows.

Every test runs on ``fm.Local`` fragments and on ``fm.Simulation`` servers
(the same data through the msgpack wire encoding); three fragments, one of
them empty, with missing values.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import fedmed as fm

NAN = np.nan


def frame(age, bmi, sex, group) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": pd.Series(age, dtype="float64"),
            "bmi": pd.Series(bmi, dtype="float64"),
            "sex": pd.Series(sex, dtype="str"),
            "group": pd.Series(group, dtype="float64"),
            "none": pd.Series([NAN] * len(age), dtype="float64"),
        }
    )


PARTS = (
    frame(
        [34.0, 71.0, NAN, 50.0, 63.0, 19.0],
        [22.51, 31.04, 27.125, NAN, 24.0, 18.5],
        ["M", "F", "F", None, "M", "X"],
        [1.0, 2.0, 3.0, 1.0, NAN, 2.0],
    ),
    frame([], [], [], []),
    frame(
        [58.0, 45.0, 81.0, 50.0, 34.0],
        [19.875, NAN, 29.3, 35.5, 40.25],
        ["M", "F", "M", "F", "X"],
        [2.0, 1.0, 1.0, NAN, 3.0],
    ),
)
POOLED = pd.concat(PARTS, ignore_index=True)


@pytest.fixture(params=["local", "simulation"])
def data(request) -> fm.FedData:
    if request.param == "local":
        return fm.FedData([fm.Local(p) for p in PARTS])
    servers = [fm.Server() for _ in PARTS]
    for i, (server, part) in enumerate(zip(servers, PARTS)):
        server[f"part {i}"] = part
    return fm.FedData([fm.Simulation(s, f"part {i}") for i, s in enumerate(servers)])


def close(a: float, b: float, rel: float = 1e-12) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


# -- simple aggregates ---------------------------------------------------------


@pytest.mark.parametrize("column", ["age", "bmi", "sex", "group"])
def test_count_and_len(data, column):
    count, length = fm.compute(data[column].count(), data[column].len())
    assert count == POOLED[column].count()
    assert length == len(POOLED) == 11
    assert count < length  # every column has missing values


@pytest.mark.parametrize("column", ["age", "bmi", "group"])
def test_sum_sqsum_min_max(data, column):
    x = data[column]
    total, squares, low, high = fm.compute(x.sum(), x.sqsum(), x.min(), x.max())
    s = POOLED[column]
    assert close(total, s.sum())
    assert close(squares, (s**2).sum())
    assert (low, high) == (s.min(), s.max())


def test_min_max_of_strings_with_missing_values(data):
    # documented: the smallest (largest) non-missing value; the column has a missing value
    present = POOLED["sex"].dropna()
    assert POOLED["sex"].isna().any()
    assert fm.compute(data["sex"].min(), data["sex"].max()) == (present.min(), present.max()) == ("F", "X")


def test_aggregates_of_a_column_without_values(data):
    x = data["none"]
    count, length, total, squares, low, high, distinct = fm.compute(
        x.count(), x.len(), x.sum(), x.sqsum(), x.min(), x.max(), x.set()
    )
    assert (count, length, total, squares, distinct) == (0, len(POOLED), 0, 0, [])
    assert (low, high) == (None, None)  # documented: no fragment had a value


@pytest.mark.parametrize("column", ["age", "sex", "group"])
@pytest.mark.parametrize("name", ["set", "unique"])
def test_set_and_unique(data, column, name):
    got = getattr(data[column], name)().compute()
    assert got == sorted(POOLED[column].dropna().unique().tolist())


def test_aggregates_of_a_filtered_column(data):
    older = data[data["age"] >= 50]
    got = fm.compute(older["bmi"].sum(), older["bmi"].count(), older["sex"].set(), older["age"].len())
    expected = POOLED[POOLED["age"] >= 50]
    assert close(got[0], expected["bmi"].sum())
    assert got[1:] == (expected["bmi"].count(), sorted(expected["sex"].dropna().unique()), len(expected))


# -- value_counts ----------------------------------------------------------------


@pytest.mark.parametrize("column", ["age", "sex", "group"])
def test_value_counts(data, column):
    got = data[column].value_counts().compute()
    expected = POOLED[column].value_counts()
    assert isinstance(got, pd.Series)
    assert dict(sorted(got.items())) == dict(sorted(expected.items()))
    # FedMed's order: count descending, ties by value
    pairs = list(got.items())
    assert pairs == sorted(pairs, key=lambda item: (-item[1], item[0]))
    assert list(got.to_numpy()) == sorted(expected.to_numpy(), reverse=True)


def test_value_counts_ties_are_ordered_by_value(data):
    got = data["sex"].value_counts().compute()
    # M and F are both seen 4 times (M first): the tie is broken by value
    assert list(got.items()) == [("F", 4), ("M", 4), ("X", 2)]
    ages = data["age"].value_counts().compute()
    assert list(ages.index[:2]) == [34.0, 50.0]  # the two ages seen twice, in value order
    assert list(ages.to_numpy()[:3]) == [2, 2, 1]


# -- histogram -----------------------------------------------------------------


@pytest.mark.parametrize("edges", [[20, 30, 50, 80], [0, 100], [40.5, 45.0, 60.0, 90.0]])
def test_histogram_with_edges(data, edges):
    got = data["age"].histogram(edges).compute()
    counts, numpy_edges = np.histogram(POOLED["age"].dropna().to_numpy(), bins=edges)
    assert got.counts.tolist() == counts.tolist()
    assert got.edges.tolist() == numpy_edges.astype(float).tolist()
    assert got.n == counts.sum()


@pytest.mark.parametrize("bins, lo, hi", [(4, 20, 80), (7, 0.0, 100.0), (3, 18.0, 40.0)])
def test_histogram_with_bin_count_and_range(data, bins, lo, hi):
    got = data["bmi"].histogram(bins=bins, range=(lo, hi)).compute()
    counts, edges = np.histogram(POOLED["bmi"].dropna().to_numpy(), bins=bins, range=(lo, hi))
    assert got.counts.tolist() == counts.tolist()
    assert got.edges.tolist() == edges.tolist()
    # keyword and positional forms are the same task
    assert data["bmi"].histogram(bins, (lo, hi)).compute() == got


def test_histogram_bin_count_without_range_is_refused(data):
    with pytest.raises(fm.TaskFailed) as info:
        data["age"].histogram(bins=5).compute()
    assert "range" in str(info.value)


# -- crosstab ------------------------------------------------------------------


@pytest.mark.parametrize("a, b", [("sex", "group"), ("group", "sex"), ("age", "group")])
def test_crosstab(data, a, b):
    got = data[a].crosstab(data[b]).compute()
    expected = pd.crosstab(POOLED[a], POOLED[b])  # drops rows missing either, as FedMed
    assert list(got.index) == sorted(got.index) == list(expected.index)
    assert list(got.columns) == sorted(got.columns) == list(expected.columns)
    assert got.to_numpy().tolist() == expected.to_numpy().tolist()
    assert got.to_numpy().sum() == (POOLED[a].notna() & POOLED[b].notna()).sum()


def test_crosstab_of_categoricals_sends_only_the_combinations_present():
    # a category no row has is not data: it is neither sent nor shown
    sex = pd.Categorical(["M", "F", "M"], categories=["F", "M", "X"])
    group = pd.Categorical(["a", "a", "b"], categories=["a", "b", "c"])
    server = fm.Server()
    server["part"] = pd.DataFrame({"sex": sex, "group": group})
    data = fm.FedData([fm.Simulation(server, "part")])
    got = data["sex"].crosstab(data["group"]).compute()
    assert got.to_dict() == {"a": {"F": 1, "M": 1}, "b": {"F": 0, "M": 1}}


def test_crosstab_orders_integer_and_float_labels_by_value():
    # one server's column has missing values (floats), the other's not (integers): one numeric order
    parts = [fm.Local({"t": [8.0, 3.0, None], "e": [0, 1, 1]}), fm.Local({"t": [2, 3, 5], "e": [1, 1, 0]})]
    data = fm.FedData(parts)
    got = data["t"].crosstab(data["e"]).compute()
    assert list(got.index) == [2, 3, 5, 8] and got.loc[3, 1] == 2


# -- moments -------------------------------------------------------------------


@pytest.mark.parametrize("column", ["age", "bmi", "none"])
def test_moments(data, column):
    m = data[column].moments().compute()
    s = POOLED[column].dropna()
    assert m.n == len(s)
    assert close(m.mean, s.mean())
    assert close(m.m2, float(((s - s.mean()) ** 2).sum()))
    assert close(m.var(1), s.var()) and close(m.var(0), s.var(ddof=0))


def test_comoments(data):
    c = data["age"].comoments(data["bmi"]).compute()
    both = POOLED[["age", "bmi"]].dropna()
    assert c.n == len(both)
    assert close(c.mean_x, both["age"].mean()) and close(c.mean_y, both["bmi"].mean())
    assert close(c.cxy / (c.n - 1), both["age"].cov(both["bmi"]))


def test_comoments_of_differently_filtered_columns_match_rows_by_index(data):
    # the server stacks plain arrays only when the columns share their index; otherwise pandas aligns them
    older = data["age"][data["age"] >= 40]
    c = older.comoments(data["bmi"]).compute()
    aligned = pd.DataFrame({"age": POOLED["age"][POOLED["age"] >= 40], "bmi": POOLED["bmi"]}).dropna()
    pooled_by_part = pd.concat(
        [pd.DataFrame({"age": p["age"][p["age"] >= 40], "bmi": p["bmi"]}).dropna() for p in PARTS]
    )
    assert len(aligned) == len(pooled_by_part) == c.n
    assert close(c.cxy / (c.n - 1), pooled_by_part["age"].cov(pooled_by_part["bmi"]))


@pytest.mark.parametrize("dtype", ["int64", "bool", "Int64", "boolean", "float32"])
def test_numeric_aggregates_of_other_dtypes(dtype):
    # min and max take numpy's path for numpy dtypes and pandas' for its nullable ones
    values = [[3, 1, 0], [1, 0], []] if "bool" not in dtype else [[True, True], [False], []]
    if dtype in ("Int64", "boolean"):  # nullable: with missing values
        values = [v + [None] for v in values]
    parts = [pd.Series(v, dtype=dtype) for v in values]
    x = fm.FedData([fm.Local(p) for p in parts])
    pooled = pd.concat(parts, ignore_index=True)
    low, high, m = fm.compute(x.min(), x.max(), x.moments())
    assert (low, high) == (pooled.min(), pooled.max())
    assert type(low) is type(pooled.min().item())
    assert m.n == pooled.count() and close(m.mean, float(pooled.astype("float64").mean()))


def test_variance_is_stable_when_the_mean_is_large_against_the_spread():
    rng = np.random.default_rng(20240601)
    values = 1e9 + rng.normal(0.0, 1.0, size=3000)
    servers = [fm.Server() for _ in range(3)]
    for i, (server, part) in enumerate(zip(servers, np.array_split(values, [700, 1900]))):
        server[f"part {i}"] = part
    x = fm.FedData([fm.Simulation(s, f"part {i}") for i, s in enumerate(servers)])
    expected = float(np.var(values, ddof=1))
    assert 0.5 < expected < 2.0

    stable = fm.stats.var(x).compute()
    assert math.isclose(stable, expected, rel_tol=1e-9)

    # the textbook formula over the same servers cancels catastrophically
    naive = ((x.sqsum() - x.sum() ** 2 / x.len()) / (x.len() - 1)).compute()
    assert abs(naive - expected) / expected > 1e-3
