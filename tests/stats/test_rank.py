"""Rank tests from federated counts against scipy on the pooled rows.

Three uneven servers (23, 140 and 257 rows) with missing values hold the
fragments; scipy runs on the concatenation of the same rows.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import fedmed as fm
from fedmed.stats.rank import mannwhitneyu, wilcoxon

SIZES = (23, 140, 257)
EXACT = dict(rel=1e-9, abs=0.0)


def make_frames(seed: int = 20240611) -> list[pd.DataFrame]:
    rng = np.random.default_rng(seed)
    frames = []
    for n in SIZES:
        g = rng.integers(0, 2, n)
        # Likert scores 1..5, a little higher in group 1; y is x moved by -1, 0 or +1 (a small upward
        # drift): few levels, many ties and many zero differences
        x = np.clip(rng.integers(1, 6, n) + (rng.random(n) < 0.3 * g), 1, 5).astype(float)
        y = np.clip(x + rng.choice([-1, 0, 1], n, p=[0.25, 0.4, 0.35]), 1, 5).astype(float)
        # continuous: a shift of 0.25 sd between the groups, c2 a noisy follow-up of c
        c = rng.normal(0.0, 1.0, n) + 0.25 * g
        c2 = c + rng.normal(0.15, 1.0, n)
        for column in (x, y, c, c2):
            column[rng.random(n) < 0.1] = np.nan
        frames.append(pd.DataFrame({"g": g, "x": x, "y": y, "c": c, "c2": c2}))
    return frames


@pytest.fixture
def setup(simulate):
    """(servers, FedData over fm.Simulation sources, the pooled DataFrame)."""
    frames = make_frames()
    servers, data = simulate(frames)
    return servers, data, pd.concat(frames, ignore_index=True)


def requests(servers) -> list[int]:
    return [s.traffic.requests for s in servers]


def assert_same(result, expected) -> None:
    """Statistic and p-value equal to scipy's up to rounding."""
    assert result.statistic == pytest.approx(expected.statistic, **EXACT)
    assert result.pvalue == pytest.approx(expected.pvalue, **EXACT)


def scipy_mwu(a: pd.Series, b: pd.Series):
    return sps.mannwhitneyu(a.dropna(), b.dropna(), method="asymptotic")


def scipy_wilcoxon(a: pd.Series, b: pd.Series, correction: bool = False):
    both = pd.DataFrame({"a": a, "b": b}).dropna()
    return sps.wilcoxon(both["a"], both["b"], method="asymptotic", correction=correction), len(both)


# -- (1) few levels: exactly scipy ------------------------------------------


def test_mannwhitneyu_few_levels_equals_scipy(setup):
    _, data, pooled = setup
    result = mannwhitneyu(data["x"], data["y"]).compute()
    expected = scipy_mwu(pooled["x"], pooled["y"])
    assert 1e-6 < expected.pvalue < 0.9  # a p-value with digits to compare, not 0 or 1
    assert_same(result, expected)
    assert result.n == pooled["x"].count() + pooled["y"].count()
    assert math.isnan(result.df)


@pytest.mark.parametrize("correction", [False, True])
def test_wilcoxon_few_levels_equals_scipy(setup, correction):
    _, data, pooled = setup
    differences = (pooled["x"] - pooled["y"]).dropna()
    assert (differences == 0).sum() > 100 and differences.abs().nunique() == 2  # zeros to drop, ties to correct
    result = wilcoxon(data["x"], data["y"], correction=correction).compute()
    expected, pairs = scipy_wilcoxon(pooled["x"], pooled["y"], correction)
    assert 1e-6 < expected.pvalue < 0.9
    assert_same(result, expected)
    assert result.n == pairs


def test_mannwhitneyu_without_continuity_equals_scipy(setup):
    _, data, pooled = setup
    result = mannwhitneyu(data["x"], data["y"], use_continuity=False).compute()
    expected = sps.mannwhitneyu(pooled["x"].dropna(), pooled["y"].dropna(), method="asymptotic", use_continuity=False)
    assert result.pvalue == pytest.approx(expected.pvalue, **EXACT)


def test_bins_at_the_data_resolution_are_exact(setup):
    """One bin per integer level: every bin holds one distinct value, so binning changes nothing."""
    _, data, pooled = setup
    exact_u = scipy_mwu(pooled["x"], pooled["y"])
    exact_w, _ = scipy_wilcoxon(pooled["x"], pooled["y"])
    for bins, range_ in [(5, (0.5, 5.5)), ([0.5, 1.5, 2.5, 3.5, 4.5, 5.5], None)]:
        u = mannwhitneyu(data["x"], data["y"], bins=bins, range=range_).compute()
        assert_same(u, exact_u)
    # nonzero |x - y| are integers 1..4: one bin each
    assert_same(wilcoxon(data["x"], data["y"], bins=4, range=(0.5, 4.5)).compute(), exact_w)


# -- (2) continuous data with bins: close, and closer as bins get finer -----

# With bins, values sharing a bin are tied: only pairs (one value of each sample,
# or a positive and a negative difference) that share a bin change, each from 0 or
# 1 to 1/2. So |U_binned - U_exact| <= 1/2 * sum_k count_a[k] * count_b[k] (checked
# below on the pooled rows), and since those changes have random signs the error
# is typically 1/2 * sqrt(number of such pairs). The tolerance is therefore in
# units of the statistic's null standard error sigma, where it means the same
# for any n: with 1000 bins (width 0.012 sd for U, 0.006 for |a - b|) 116 pairs
# share a bin here, 1/2 * sqrt(116) / sigma(U) ~ 5.4 / 1100 ~ 0.005. Z_TOL =
# 0.03 sigma is ~6 such errors: over 200 seeds of this design the largest error
# was 0.016 sigma (U) and 0.010 (Wilcoxon), and 100 bins broke it for 39 % and
# 11 % of the seeds, 10 bins for 96 % and 85 %. The p-value then differs by at
# most 2 * phi(z) * Z_TOL <= 0.024 (much less in the tails); the z values behind
# the p-values (norm.isf(p / 2)) are compared with the same Z_TOL.
FINE_BINS = 1000
Z_TOL = 0.03


def binned_results(data: fm.FedData, bins: int):
    return fm.compute(
        mannwhitneyu(data["c"][data["g"] == 1], data["c"][data["g"] == 0], bins=bins, range=(-6, 6)),
        wilcoxon(data["c"], data["c2"], bins=bins, range=(0, 6)),
    )


def continuous_reference(pooled: pd.DataFrame):
    a, b = pooled["c"][pooled["g"] == 1].dropna(), pooled["c"][pooled["g"] == 0].dropna()
    d = (pooled["c"] - pooled["c2"]).dropna()
    n1, n2, m = len(a), len(b), int((d != 0).sum())
    sigma_u = math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
    sigma_w = math.sqrt(m * (m + 1) * (2 * m + 1) / 24)
    return a, b, d, scipy_mwu(a, b), scipy_wilcoxon(pooled["c"], pooled["c2"])[0], sigma_u, sigma_w


def z(pvalue: float) -> float:
    return float(sps.norm.isf(pvalue / 2))


def errors(u, w, exact_u, exact_w, sigma_u, sigma_w) -> list[float]:
    """Differences from scipy in standard errors: U, z of U, Wilcoxon T, z of T."""
    return [
        abs(u.statistic - exact_u.statistic) / sigma_u, abs(z(u.pvalue) - z(exact_u.pvalue)),
        abs(w.statistic - exact_w.statistic) / sigma_w, abs(z(w.pvalue) - z(exact_w.pvalue)),
    ]


def test_continuous_with_fine_bins_is_close_to_scipy(setup):
    _, data, pooled = setup
    a, b, d, exact_u, exact_w, sigma_u, sigma_w = continuous_reference(pooled)
    assert 1e-6 < exact_u.pvalue < 0.9 and 1e-6 < exact_w.pvalue < 0.9
    u, w = binned_results(data, FINE_BINS)
    assert max(errors(u, w, exact_u, exact_w, sigma_u, sigma_w)) < Z_TOL
    assert u.pvalue == pytest.approx(exact_u.pvalue, abs=0.8 * Z_TOL)  # 2 * phi(z) <= 0.8
    assert w.pvalue == pytest.approx(exact_w.pvalue, abs=0.8 * Z_TOL)
    assert u.statistic != exact_u.statistic  # binned, so approximate: not scipy's value by accident
    assert (u.n, w.n) == (len(a) + len(b), len(d))
    # without bins the continuous test is exact (but sends every value to the client)
    exact = mannwhitneyu(data["c"][data["g"] == 1], data["c"][data["g"] == 0]).compute()
    assert_same(exact, exact_u)


def test_coarser_bins_are_further_off(setup):
    _, data, pooled = setup
    a, b, d, exact_u, exact_w, sigma_u, sigma_w = continuous_reference(pooled)
    found, bounds = {}, {}
    for bins in (10, 100, FINE_BINS):
        u, w = binned_results(data, bins)
        # the bound of the comment above, from the pooled rows: pairs sharing a bin
        count_a, count_b = np.histogram(a, bins, (-6, 6))[0], np.histogram(b, bins, (-6, 6))[0]
        count_pos, count_neg = np.histogram(d[d > 0], bins, (0, 6))[0], np.histogram(-d[d < 0], bins, (0, 6))[0]
        bounds[bins] = (0.5 * np.dot(count_a, count_b), 0.5 * np.dot(count_pos, count_neg))
        assert abs(u.statistic - exact_u.statistic) <= bounds[bins][0]
        assert abs(w.statistic - exact_w.statistic) <= bounds[bins][1]
        found[bins] = errors(u, w, exact_u, exact_w, sigma_u, sigma_w)
    # the worst case shrinks as the bins get finer (each bin count refines the previous one) ...
    for k in range(2):
        assert bounds[10][k] > bounds[100][k] > bounds[FINE_BINS][k]
    # ... and so does the error: with 10 bins both statistics are outside the tolerance 1000 bins
    # meet (0.08 and 0.30 sigma here), and so is a p-value (the larger tie correction of coarse
    # bins shrinks sigma, which can partly offset the error of U in z)
    u_error, u_z_error, w_error, w_z_error = found[10]
    assert u_error > Z_TOL and w_error > Z_TOL and max(u_z_error, w_z_error) > Z_TOL
    assert max(found[FINE_BINS]) < Z_TOL


# -- (3) one round: one request per server ----------------------------------


def test_all_rank_tests_together_are_one_request_per_server(setup):
    servers, data, pooled = setup
    assert requests(servers) == [0, 0, 0]
    x, y, g, c = data["x"], data["y"], data["g"], data["c"]
    results = (
        mannwhitneyu(x, y),
        wilcoxon(x, y),
        mannwhitneyu(c[g == 1], c[g == 0], bins=200, range=(-6, 6)),
        wilcoxon(data["c"], data["c2"], bins=200, range=(0, 6)),
        fm.stats.ttest_ind(x, y),
    )
    assert "1 round" in fm.explain(*results)
    assert requests(servers) == [0, 0, 0]  # building and explaining send nothing
    computed = fm.compute(*results)
    assert requests(servers) == [1, 1, 1]
    assert computed[1].pvalue == pytest.approx(scipy_wilcoxon(pooled["x"], pooled["y"])[0].pvalue, **EXACT)
    # each alone is one request per server too (binned: all its histograms and counts together)
    wilcoxon(data["c"], data["c2"], bins=50, range=(0, 6)).compute()
    mannwhitneyu(c[g == 1], c[g == 0], bins=50, range=(-6, 6)).compute()
    assert requests(servers) == [3, 3, 3]


# -- (4) subsets of one column ----------------------------------------------


def test_subsets_of_one_column(setup):
    _, data, pooled = setup
    x, y, g = data["x"], data["y"], data["g"]
    result = mannwhitneyu(x[g == 1], x[g == 0]).compute()
    expected = scipy_mwu(pooled["x"][pooled["g"] == 1], pooled["x"][pooled["g"] == 0])
    assert 1e-6 < expected.pvalue < 0.9
    assert_same(result, expected)
    assert result.n == pooled["x"].count()
    # swapping the samples gives the other U (the two add up to n1 * n2) and the same p-value, as in scipy
    in_1, in_0 = pooled["x"][pooled["g"] == 1], pooled["x"][pooled["g"] == 0]
    swapped = mannwhitneyu(x[g == 0], x[g == 1]).compute()
    assert swapped.statistic == pytest.approx(scipy_mwu(in_0, in_1).statistic, **EXACT)
    assert swapped.statistic + result.statistic == in_1.count() * in_0.count()
    assert swapped.statistic != result.statistic and swapped.pvalue == pytest.approx(result.pvalue, **EXACT)
    # a paired test on a subset of rows
    paired = wilcoxon(x[g == 1], y[g == 1]).compute()
    one = pooled[pooled["g"] == 1]
    expected_w, pairs = scipy_wilcoxon(one["x"], one["y"])
    assert_same(paired, expected_w)
    assert paired.n == pairs


# -- edge cases and errors ----------------------------------------------------


def test_degenerate_samples_follow_scipy():
    data = fm.FedData([fm.Local({"a": [2.0, 2.0, None], "b": [2.0, 2.0, 3.0]}), fm.Local({"a": [2.0], "b": [2.0]})])
    tied = mannwhitneyu(data["a"], data["a"] * 1).compute()  # every value tied
    expected = sps.mannwhitneyu([2.0] * 3, [2.0] * 3, method="asymptotic")
    assert (tied.statistic, tied.pvalue) == (expected.statistic, expected.pvalue) == (4.5, 1.0)
    empty = mannwhitneyu(data["a"], data["a"][data["a"] > 5]).compute()
    assert math.isnan(empty.statistic) and math.isnan(empty.pvalue) and empty.n == 3
    zeros = wilcoxon(data["a"], data["b"]).compute()  # every complete pair has difference 0
    with np.errstate(invalid="ignore"):  # scipy divides 0 by 0
        expected = sps.wilcoxon([2.0] * 3, [2.0] * 3, method="asymptotic")
    assert zeros.statistic == expected.statistic == 0.0 and math.isnan(zeros.pvalue) and math.isnan(expected.pvalue)
    assert zeros.n == 3
    none = wilcoxon(data["a"][data["a"] > 5], data["b"][data["a"] > 5]).compute()
    assert math.isnan(none.statistic) and math.isnan(none.pvalue) and none.n == 0


def test_bad_arguments_are_refused_before_sending(setup):
    servers, data, _ = setup
    with pytest.raises(ValueError, match="range"):
        mannwhitneyu(data["c"], data["c2"], bins=10)
    with pytest.raises(ValueError, match="not both"):
        wilcoxon(data["c"], data["c2"], bins=[0, 1, 2], range=(0, 2))
    with pytest.raises(ValueError, match="increasing"):
        mannwhitneyu(data["c"], data["c2"], bins=[0, 2, 1])
    with pytest.raises(TypeError, match="FedData"):
        mannwhitneyu([1, 2, 3], data["c"])
    with pytest.raises(TypeError, match="FedData"):
        wilcoxon(data["c"], [1, 2, 3])
    assert requests(servers) == [0, 0, 0]


def test_values_outside_the_bins_are_an_error_not_dropped(setup):
    _, data, _ = setup
    with pytest.raises(ValueError, match="outside the bins"):
        mannwhitneyu(data["c"], data["c2"], bins=10, range=(-1, 1)).compute()
    with pytest.raises(ValueError, match="outside the bins"):
        wilcoxon(data["c"], data["c2"], bins=10, range=(0, 1)).compute()


def test_non_numeric_values_are_refused():
    data = fm.FedData([fm.Local({"s": ["low", "high"], "t": ["high", "low"]})])
    with pytest.raises(TypeError, match="numeric column"):
        mannwhitneyu(data["s"], data["t"]).compute()
