"""fm.stats plans: every statistic (and any mix computed together) is one round, one request per server.

Requests are counted on the servers themselves (``server.traffic.requests``).
The naive plan (``optimize=False``) sends one request per map task per
source and merges nothing, so it needs more; its exact count is derived in
each test. Also: ``chi2_contingency`` against ``scipy.stats.chi2_contingency``.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import fedmed as fm

NAN = np.nan

PARTS = (
    pd.DataFrame(
        {
            "a": [1.5, 2.0, NAN, 4.25, 3.0],
            "b": [2.0, NAN, 1.0, 5.5, 2.5],
            "c": [0.5, 1.0, 1.5, NAN, 3.0],
            "d": [10.0, 9.0, 7.5, 8.0, NAN],
            "g": [1.0, 0.0, 1.0, 0.0, 1.0],
        }
    ),
    pd.DataFrame({"a": [6.0, 0.5], "b": [3.0, 4.0], "c": [2.0, NAN], "d": [1.0, 2.0], "g": [0.0, 1.0]}),
    pd.DataFrame(
        {
            "a": [2.5, NAN, 7.0, 1.0, 5.0, 3.5, 2.0],
            "b": [1.0, 2.0, 6.0, NAN, 4.5, 3.0, 0.5],
            "c": [4.0, 3.5, NAN, 1.0, 2.0, 0.0, 6.0],
            "d": [3.0, 4.0, 5.0, 6.0, 7.0, NAN, 1.0],
            "g": [0.0, 1.0, 1.0, 0.0, NAN, 1.0, 0.0],
        }
    ),
)
POOLED = pd.concat(PARTS, ignore_index=True)


def federation(optimize: bool = True) -> tuple[list[fm.Server], fm.FedData]:
    servers = [fm.Server() for _ in PARTS]
    for server, part in zip(servers, PARTS):
        server["cohort"] = part
    return servers, fm.FedData([fm.Simulation(s, "cohort") for s in servers], optimize=optimize)


def requests(servers: list[fm.Server]) -> list[int]:
    return [s.traffic.requests for s in servers]


def header(plan: str) -> str:
    return plan.splitlines()[0]


def tasks_per_request(plan: str) -> list[int]:
    """How many map tasks each request of the plan carries."""
    return [len(line.split(": send ")[1].split(", ")) for line in plan.splitlines() if ": send " in line]


def check_plan(plan: str, rounds: int, n_requests: int, tasks: int) -> None:
    assert re.search(rf"· {rounds} rounds? ·", header(plan)), plan
    assert header(plan).endswith(f"· {n_requests} request{'s' if n_requests != 1 else ''}"), plan
    assert tasks_per_request(plan) == [tasks] * n_requests, plan


def close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


# -- each statistic in one request per server ---------------------------------------


def describe_of(data):
    return (fm.stats.describe(data["a"]),)


def corr_of(data):
    return (fm.stats.corr(data, ["a", "b", "c", "d"]),)


def ttests_of(data):
    a, b = data["a"], data["b"]
    return (
        fm.stats.ttest_ind(a, b),
        fm.stats.ttest_ind(a, b, equal_var=False),
        fm.stats.ttest_1samp(a, 3.0),
        fm.stats.ttest_rel(a, b),
    )


def mixed_of(data):
    x, g = data["a"], data["g"]
    return fm.stats.mean(x), fm.stats.std(x), fm.stats.ttest_ind(x[g == 1], x[g == 0])


# (analysis, distinct map tasks per server when optimised, map tasks per server in the naive plan)
CASES = {
    # describe: moments, min, max of one column; the naive plan sends each on its own
    "describe": (describe_of, 3, 3),
    # corr over 4 columns: one comoments per pair, 4 * 3 / 2 = 6, and one moments per column
    # (its diagonal: 1, or nan for a constant column), 4: 10; naive: still 10, one request each
    "corr": (corr_of, 10, 10),
    # moments of a, b (shared by Student and Welch and ttest_1samp) and of a - b (ttest_rel): 3;
    # naive: every statistic asks for its own, 2 + 2 + 1 + 1 = 6
    "t-tests": (ttests_of, 3, 6),
    # mean and std share moments(x); the t-test adds the two filtered groups: 3;
    # naive: 1 (mean) + 1 (std) + 2 (t-test) = 4
    "mean, std, t-test": (mixed_of, 3, 4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_request_per_server(case):
    analysis, tasks, _ = CASES[case]
    servers, data = federation()
    results = analysis(data)
    check_plan(fm.explain(*results), rounds=1, n_requests=len(servers), tasks=tasks)
    assert requests(servers) == [0, 0, 0]  # explain sends nothing
    fm.compute(*results)
    assert requests(servers) == [1, 1, 1]


@pytest.mark.parametrize("case", list(CASES))
def test_each_statistic_alone_explains_as_one_round(case):
    analysis, _, _ = CASES[case]
    servers, data = federation()
    for result in analysis(data):
        assert "· 1 round ·" in header(result.explain())
        result.compute()
    assert requests(servers) == [len(analysis(data))] * 3  # one request per server per compute


@pytest.mark.parametrize("case", list(CASES))
def test_naive_plan_sends_one_request_per_map_task(case):
    analysis, tasks, naive_tasks = CASES[case]
    fast_servers, fast = federation()
    slow_servers, slow = federation(optimize=False)
    slow_results = analysis(slow)
    check_plan(fm.explain(*slow_results), rounds=1, n_requests=naive_tasks * len(slow_servers), tasks=1)
    slow_values = fm.compute(*slow_results)
    fast_values = fm.compute(*analysis(fast))
    assert requests(slow_servers) == [naive_tasks] * 3
    assert requests(fast_servers) == [1, 1, 1]
    assert naive_tasks > 1
    assert_same_values(fast_values, slow_values)


def assert_same_values(fast, slow) -> None:
    for a, b in zip(fast, slow, strict=True):
        if isinstance(a, pd.Series):
            pd.testing.assert_series_equal(a, b)
        elif isinstance(a, pd.DataFrame):
            pd.testing.assert_frame_equal(a, b)
        elif isinstance(a, float):
            assert close(a, b)
        else:
            assert (a.statistic, a.pvalue, a.df, a.n) == (b.statistic, b.pvalue, b.df, b.n)


def test_results_of_the_batched_statistics_match_scipy():
    servers, data = federation()
    (described,) = fm.compute(*describe_of(data))
    (matrix,) = fm.compute(*corr_of(data))
    student, welch, one, paired = fm.compute(*ttests_of(data))
    mean, std, groups = fm.compute(*mixed_of(data))
    assert requests(servers) == [4, 4, 4]

    a, b = POOLED["a"].dropna(), POOLED["b"].dropna()
    pairs = POOLED[["a", "b"]].dropna()
    expected_describe = POOLED["a"].describe()
    for key in ["count", "mean", "std", "min", "max"]:
        assert close(described[key], expected_describe[key])
    pd.testing.assert_frame_equal(matrix, POOLED[["a", "b", "c", "d"]].corr(), rtol=1e-12)
    for got, expected in [
        (student, sps.ttest_ind(a, b)),
        (welch, sps.ttest_ind(a, b, equal_var=False)),
        (one, sps.ttest_1samp(a, 3.0)),
        (paired, sps.ttest_rel(pairs["a"], pairs["b"])),
    ]:
        assert close(got.statistic, expected.statistic) and close(got.pvalue, expected.pvalue)
        assert close(got.df, float(expected.df))
    assert (student.n, one.n, paired.n) == (len(a) + len(b), len(a), len(pairs))
    assert close(mean, a.mean()) and close(std, a.std())
    x, g = POOLED["a"], POOLED["g"]
    expected = sps.ttest_ind(x[g == 1].dropna(), x[g == 0].dropna())
    assert close(groups.statistic, expected.statistic) and close(groups.pvalue, expected.pvalue)


# -- chi-squared test of independence ---------------------------------------------------

SEX = (["F", "M", "F", None, "M", "F"], ["M", "M"], ["F", "M", "F", "M", "M", "F", "F", "M"])
SITE = (["north", "south", "east", "east", "north", NAN], ["south", "east"], ["east", "north", "north", "south", "south", "east", "south", "east"])
SMOKER = ([1.0, 0.0, 1.0, 1.0, NAN, 1.0], [0.0, 1.0], [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0])


def contingency() -> tuple[list[fm.Server], fm.FedData, pd.DataFrame]:
    servers = [fm.Server() for _ in SEX]
    frames = [
        pd.DataFrame({"sex": pd.Series(s, dtype="str"), "site": pd.Series(t, dtype="str"), "smoker": m})
        for s, t, m in zip(SEX, SITE, SMOKER)
    ]
    for server, frame in zip(servers, frames):
        server["visits"] = frame
    data = fm.FedData([fm.Simulation(s, "visits") for s in servers])
    return servers, data, pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("second, shape", [("site", (2, 3)), ("smoker", (2, 2))])
@pytest.mark.parametrize("correction", [True, False])
def test_chi2_contingency_equals_scipy(second, shape, correction):
    servers, data, pooled = contingency()
    got = fm.stats.chi2_contingency(data["sex"], data[second], correction=correction).compute()
    table = pd.crosstab(pooled["sex"], pooled[second])
    assert table.shape == shape
    expected = sps.chi2_contingency(table.to_numpy(), correction=correction)
    assert close(got.statistic, expected.statistic) and close(got.pvalue, expected.pvalue)
    assert got.dof == expected.dof == (shape[0] - 1) * (shape[1] - 1)
    np.testing.assert_allclose(got.expected.to_numpy(), expected.expected_freq, rtol=1e-12)
    assert got.observed.to_numpy().tolist() == table.to_numpy().tolist()
    assert list(got.expected.index) == list(got.observed.index) == list(table.index)
    assert list(got.expected.columns) == list(got.observed.columns) == list(table.columns)
    assert got.n == table.to_numpy().sum() == (pooled["sex"].notna() & pooled[second].notna()).sum()
    assert requests(servers) == [1, 1, 1]


def test_chi2_yates_correction_applies_to_a_two_by_two_table_only():
    servers, data, _ = contingency()
    tests = (
        fm.stats.chi2_contingency(data["sex"], data["smoker"]),
        fm.stats.chi2_contingency(data["sex"], data["smoker"], correction=False),
        fm.stats.chi2_contingency(data["sex"], data["site"]),
        fm.stats.chi2_contingency(data["sex"], data["site"], correction=False),
    )
    # the two tests of each pair of columns share their crosstab task: 2 tasks, one request per server
    check_plan(fm.explain(*tests), rounds=1, n_requests=3, tasks=2)
    corrected, plain, corrected_3, plain_3 = fm.compute(*tests)
    assert requests(servers) == [1, 1, 1]
    assert corrected.dof == 1 and corrected.statistic < plain.statistic
    assert corrected_3.dof == 2 and corrected_3.statistic == plain_3.statistic
