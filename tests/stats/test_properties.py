"""fm.stats on random fragment splits equals pandas and scipy on the concatenation.

Fragments: 1 to 6 servers (``fm.Server`` + ``fm.Simulation``, through the
real wire encoding), empty fragments allowed, missing values allowed,
values in -1e3..1e3 rounded to 3 decimals. Agreement: relative 1e-9
(absolute 1e-9 near zero), nan equal to nan.

``assume`` only drops inputs where the reference itself is undefined: too
few values, or a column without spread (a t statistic of 0/0, a correlation
of a constant column), where scipy's and pandas' answers are rounding noise.
Those degenerate inputs have their own deterministic tests at the end.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from scipy import stats as sps

import fedmed as fm

NAN = float("nan")
SERVERS = [fm.Server() for _ in range(6)]  # reused: each example replaces the fragments

values = st.floats(-1e3, 1e3, allow_nan=False).map(lambda v: round(v, 3))
cells = st.one_of(values, values, values, st.just(NAN))  # about one value in four missing


def fragments(cell, max_rows: int = 8):
    return st.lists(st.lists(cell, max_size=max_rows), min_size=1, max_size=len(SERVERS))


single = fragments(cells)
pairs = fragments(st.tuples(cells, cells))
triples = fragments(st.tuples(cells, cells, cells))

# filter_too_much: some tests assume() two non-empty groups, which a random split of tiny parts often is not
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def federate(parts, columns=None) -> tuple[fm.FedData, "pd.Series | pd.DataFrame"]:
    """Put fragment i on server i; return the FedData and the pooled pandas object."""
    frames = [
        pd.DataFrame(list(part), columns=columns, dtype=float) if columns else pd.Series(part, dtype=float)
        for part in parts
    ]
    for server, frame in zip(SERVERS, frames):
        server["fragment"] = frame
    data = fm.FedData([fm.Simulation(server, "fragment") for server in SERVERS[: len(frames)]])
    return data, pd.concat(frames, ignore_index=True)


def same(a, b) -> bool:
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def same_test(got, expected) -> bool:
    return same(got.statistic, expected.statistic) and same(got.pvalue, expected.pvalue) and same(got.df, expected.df)


def quiet(fn, *args, **kwargs):
    """scipy warns on small or degenerate samples; the tests only want its answer."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def spread(values) -> bool:
    values = np.asarray(values, dtype=float)
    return len(values) > 0 and float(np.ptp(values)) > 0


# -- one column ------------------------------------------------------------------


@SETTINGS
@given(single)
def test_mean_var_std_sem(parts):
    x, pooled = federate(parts)
    mean, var, var0, std, sem = fm.compute(
        fm.stats.mean(x), fm.stats.var(x), fm.stats.var(x, ddof=0), fm.stats.std(x), fm.stats.sem(x)
    )
    present = pooled.dropna().to_numpy()
    assert same(mean, pooled.mean())
    assert same(var, pooled.var())
    assert same(var0, pooled.var(ddof=0))
    assert same(std, pooled.std())
    assert same(sem, quiet(sps.sem, present))


@SETTINGS
@given(single)
def test_describe(parts):
    x, pooled = federate(parts)
    got = fm.stats.describe(x).compute()
    expected = pooled.describe()
    assert list(got.index) == ["count", "mean", "std", "min", "max"]
    for key in got.index:
        assert same(got[key], expected[key]), key


# -- two and more columns ----------------------------------------------------------


@SETTINGS
@given(pairs)
def test_cov_and_pearson_use_pairwise_complete_rows(parts):
    data, pooled = federate(parts, ["a", "b"])
    complete = pooled.dropna()
    assume(len(complete) >= 2 and spread(complete["a"]) and spread(complete["b"]))
    cov, cov0, r = fm.compute(
        fm.stats.cov(data["a"], data["b"]), fm.stats.cov(data["a"], data["b"], ddof=0),
        fm.stats.pearson(data["a"], data["b"]),
    )
    assert same(cov, pooled["a"].cov(pooled["b"]))
    assert same(cov0, pooled["a"].cov(pooled["b"], ddof=0))
    assert same(r, pooled["a"].corr(pooled["b"]))


@SETTINGS
@given(triples)
def test_corr_matrix(parts):
    columns = ["a", "b", "c"]
    data, pooled = federate(parts, columns)
    for i, first in enumerate(columns):
        for second in columns[i + 1:]:
            complete = pooled[[first, second]].dropna()
            assume(len(complete) >= 2 and spread(complete[first]) and spread(complete[second]))
    got = fm.stats.corr(data, columns).compute()
    expected = pooled.corr()
    assert list(got.index) == list(got.columns) == columns
    for first in columns:
        for second in columns:
            assert same(got.loc[first, second], expected.loc[first, second]), (first, second)


# -- t-tests -------------------------------------------------------------------------


@SETTINGS
@given(single, single)
def test_ttest_ind(parts_a, parts_b):
    # two independent samples on two sets of servers (the second reuses the first servers'
    # objects under another fragment name, so both columns share requests)
    a, pooled_a = federate(parts_a)
    for server, part in zip(SERVERS, parts_b):
        server["second"] = pd.Series(part, dtype=float)
    b = fm.FedData([fm.Simulation(server, "second") for server in SERVERS[: len(parts_b)]])
    pooled_b = pd.concat([pd.Series(p, dtype=float) for p in parts_b], ignore_index=True)
    va, vb = pooled_a.dropna().to_numpy(), pooled_b.dropna().to_numpy()
    assume(len(va) >= 2 and len(vb) >= 2 and (spread(va) or spread(vb)))
    student, welch = fm.compute(fm.stats.ttest_ind(a, b), fm.stats.ttest_ind(a, b, equal_var=False))
    assert same_test(student, quiet(sps.ttest_ind, va, vb, equal_var=True))
    assert same_test(welch, quiet(sps.ttest_ind, va, vb, equal_var=False))
    assert student.n == welch.n == len(va) + len(vb)


@SETTINGS
@given(pairs)
def test_ttest_ind_of_two_groups_of_one_column(parts):
    # the README's use: x[g > 0] against x[g <= 0]
    data, pooled = federate(parts, ["x", "g"])
    x, g = data["x"], data["g"]
    va = pooled["x"][pooled["g"] > 0].dropna().to_numpy()
    vb = pooled["x"][pooled["g"] <= 0].dropna().to_numpy()
    assume(len(va) >= 2 and len(vb) >= 2 and (spread(va) or spread(vb)))
    student, welch = fm.compute(fm.stats.ttest_ind(x[g > 0], x[g <= 0]), fm.stats.ttest_ind(x[g > 0], x[g <= 0], False))
    assert same_test(student, quiet(sps.ttest_ind, va, vb, equal_var=True))
    assert same_test(welch, quiet(sps.ttest_ind, va, vb, equal_var=False))


@SETTINGS
@given(single, values)
def test_ttest_1samp(parts, popmean):
    x, pooled = federate(parts)
    present = pooled.dropna().to_numpy()
    assume(len(present) >= 2 and spread(present))
    got = fm.stats.ttest_1samp(x, popmean).compute()
    assert same_test(got, quiet(sps.ttest_1samp, present, popmean))
    assert got.n == len(present)


@SETTINGS
@given(pairs)
def test_ttest_rel(parts):
    data, pooled = federate(parts, ["a", "b"])
    complete = pooled.dropna()
    assume(len(complete) >= 2 and spread(complete["a"] - complete["b"]))
    got = fm.stats.ttest_rel(data["a"], data["b"]).compute()
    assert same_test(got, quiet(sps.ttest_rel, complete["a"], complete["b"]))
    assert got.n == len(complete)


# -- degenerate inputs, deterministic ---------------------------------------------------
# Columns without spread: the reference answer is nan (0/0), and FedMed must not
# report a finite correlation or a significant test instead.


def federate_columns(*parts: dict) -> tuple[fm.FedData, pd.DataFrame]:
    frames = [pd.DataFrame(p, dtype=float) for p in parts]
    for server, frame in zip(SERVERS, frames):
        server["fragment"] = frame
    data = fm.FedData([fm.Simulation(server, "fragment") for server in SERVERS[: len(frames)]])
    return data, pd.concat(frames, ignore_index=True)


def test_ttest_rel_of_identical_samples_is_undefined_not_significant():
    data, pooled = federate_columns({"a": [1.0, 2.0, 3.0], "b": [1.0, 2.0, 3.0]}, {"a": [4.0], "b": [4.0]})
    got = fm.stats.ttest_rel(data["a"], data["b"]).compute()
    expected = quiet(sps.ttest_rel, pooled["a"], pooled["b"])
    assert math.isnan(expected.statistic) and math.isnan(expected.pvalue)
    # no difference at all must not come out as infinitely significant (statistic inf, p 0)
    assert same_test(got, expected), got


def test_ttest_1samp_of_constant_values_at_the_population_mean_is_undefined():
    x, pooled = federate([[5.0, 5.0], [5.0]])
    got = fm.stats.ttest_1samp(x, 5.0).compute()
    expected = quiet(sps.ttest_1samp, pooled.to_numpy(), 5.0)
    assert math.isnan(expected.statistic)
    assert same_test(got, expected), got


def test_ttest_1samp_of_constant_values_away_from_the_population_mean_is_infinite():
    x, pooled = federate([[5.0, 5.0], [5.0]])
    got = fm.stats.ttest_1samp(x, 4.0).compute()
    expected = quiet(sps.ttest_1samp, pooled.to_numpy(), 4.0)
    assert got.statistic == expected.statistic == math.inf
    assert got.pvalue == expected.pvalue == 0.0


def test_pearson_of_an_exactly_constant_column_is_nan():
    data, pooled = federate_columns({"a": [2.0, 2.0], "b": [1.0, 3.0]}, {"a": [2.0], "b": [7.0]})
    assert math.isnan(quiet(pooled["a"].corr, pooled["b"]))
    assert math.isnan(fm.stats.pearson(data["a"], data["b"]).compute())


def test_pearson_of_a_constant_column_split_over_servers_is_nan():
    # 0.7 is not exact in binary: each server's mean of its 0.7s is off by a rounding error,
    # and merging those means must not turn the rounding into a correlation
    parts = [{"a": [0.7] * n, "b": [float(k * (i + 1)) for k in range(n)]} for i, n in enumerate([3, 5, 6])]
    data, pooled = federate_columns(*parts)
    assert math.isnan(quiet(pooled["a"].corr, pooled["b"]))
    got = fm.stats.pearson(data["a"], data["b"]).compute()
    assert math.isnan(got), got


def test_corr_matrix_of_a_constant_column_is_nan_like_pandas():
    data, pooled = federate_columns({"a": [2.0, 2.0, 2.0], "b": [1.0, 3.0, 2.0]}, {"a": [2.0], "b": [7.0]})
    got = fm.stats.corr(data, ["a", "b"]).compute()
    expected = pooled.corr()
    for first in "ab":
        for second in "ab":
            assert same(got.loc[first, second], expected.loc[first, second]), (first, second, got)


@pytest.mark.parametrize("n_values", [0, 1])
def test_statistics_of_too_few_values_are_nan(n_values):
    x, pooled = federate([[NAN, 3.0] if n_values else [NAN], []])
    mean, var, std, sem = fm.compute(fm.stats.mean(x), fm.stats.var(x), fm.stats.std(x), fm.stats.sem(x))
    assert pooled.count() == n_values
    assert same(mean, pooled.mean()) and same(var, pooled.var()) and same(std, pooled.std())
    assert math.isnan(sem)
