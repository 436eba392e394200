"""fm.stats over real waitress servers: pandas' and scipy's answers, one request per server."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import fedmed as fm

NAN = np.nan


def cohort(seed: int, rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": np.round(rng.uniform(20, 90, rows), 1),
            "bmi": np.round(rng.normal(26, 4, rows), 2),
            "smoker": rng.integers(0, 2, rows).astype(float),
            "sex": pd.Series(rng.choice(["F", "M"], rows), dtype="str"),
        }
    )
    frame["bmi"] += 0.05 * frame["age"]  # some correlation
    # missing values, independently per column
    for column in ["age", "bmi", "smoker", "sex"]:
        frame.loc[rng.random(rows) < 0.1, column] = None
    return frame


PARTS = (cohort(1, 3), cohort(2, 41), cohort(3, 157))  # uneven fragment sizes
POOLED = pd.concat(PARTS, ignore_index=True)


@pytest.fixture
def federation(serve) -> tuple[list[fm.Server], fm.FedData]:
    servers = [fm.Server() for _ in PARTS]
    for i, (server, part) in enumerate(zip(servers, PARTS)):
        server[f"cohort {i + 1}/3"] = part
    urls = [serve(s).url for s in servers]
    sources = [fm.Remote(url, f"cohort {i + 1}/3") for i, url in enumerate(urls)]
    return servers, fm.FedData(sources)


def close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def test_statistics_over_real_servers_in_one_request_each(federation):
    servers, data = federation
    assert POOLED.isna().any().all()  # every column has missing values
    smokers, others = data["bmi"][data["smoker"] == 1], data["bmi"][data["smoker"] == 0]
    lazy = (
        fm.stats.describe(data["bmi"]),
        fm.stats.pearson(data["age"], data["bmi"]),
        fm.stats.ttest_ind(smokers, others, equal_var=False),
        fm.stats.chi2_contingency(data["sex"], data["smoker"]),
    )
    assert "· 1 round · 3 requests" in fm.explain(*lazy).splitlines()[0]
    assert [s.traffic.requests for s in servers] == [0, 0, 0]

    described, r, welch, chi2 = fm.compute(*lazy)
    assert [s.traffic.requests for s in servers] == [1, 1, 1]

    expected = POOLED["bmi"].describe()
    for key in ["count", "mean", "std", "min", "max"]:
        assert close(described[key], expected[key]), key

    assert close(r, POOLED["age"].corr(POOLED["bmi"]))
    assert r > 0.3  # the data are built to correlate

    group_a = POOLED["bmi"][POOLED["smoker"] == 1].dropna()
    group_b = POOLED["bmi"][POOLED["smoker"] == 0].dropna()
    expected_t = sps.ttest_ind(group_a, group_b, equal_var=False)
    assert close(welch.statistic, expected_t.statistic)
    assert close(welch.pvalue, expected_t.pvalue)
    assert close(welch.df, expected_t.df)
    assert welch.n == len(group_a) + len(group_b)

    table = pd.crosstab(POOLED["sex"], POOLED["smoker"])
    expected_chi2 = sps.chi2_contingency(table.to_numpy())
    assert close(chi2.statistic, expected_chi2.statistic) and close(chi2.pvalue, expected_chi2.pvalue)
    assert chi2.dof == expected_chi2.dof == 1
    np.testing.assert_allclose(chi2.expected.to_numpy(), expected_chi2.expected_freq, rtol=1e-12)
    assert chi2.observed.to_numpy().tolist() == table.to_numpy().tolist()
    assert chi2.n == table.to_numpy().sum()
