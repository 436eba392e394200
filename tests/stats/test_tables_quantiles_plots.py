"""Contingency tables, quantiles, histograms and their plots on real, messy data (issue 15).

Without policies (``example/config-exact.yaml``) each equals scipy, pandas or
numpy on the pooled rows of real data split unevenly over three servers.
Under ``example/config.yaml`` (``Anonymity(k=5)`` withholds small cells) each
is exact where the released counts allow, unknown (NaN, an interval) where
they do not, or raises ``fm.PrivacyError`` saying which cells were withheld:
never a finite wrong number, never a bare Python exception. Plots draw
withheld bins and unknown survival hatched and labelled, never as 0.
"""

from __future__ import annotations

import math
import warnings

import matplotlib
import numpy as np
import pandas as pd
import pytest
import scipy.stats
import statsmodels.api as sm
from hypothesis import HealthCheck, given, settings, strategies as st

import fedmed as fm
from fedmed import plot

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

EXACT = "example/config-exact.yaml"
PRIVATE = "example/config.yaml"
CUTS = (0.5, 0.8)  # uneven: half, three tenths, one fifth


def fed(frame: pd.DataFrame, config: str = PRIVATE, cuts: tuple[float, ...] = CUTS) -> fm.FedData:
    """``frame`` split by rows over one in-process server per part, in order."""
    n = len(frame)
    bounds = [0, *(int(c * n) for c in cuts), n]
    sources = []
    for i, (start, stop) in enumerate(zip(bounds, bounds[1:])):
        server = fm.Server(config=config)
        server["d"] = frame.iloc[start:stop].reset_index(drop=True)
        sources.append(fm.Simulation(server, "d", name=f"h{i}"))
    return fm.FedData(sources, config=config)


def quietly(compute):
    """Compute without the servers' notes about withheld cells (the result itself must say it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fm.PrivacyWarning)
        return compute()


def anes() -> pd.DataFrame:
    return sm.datasets.anes96.load_pandas().data  # 944 voters: age, education, income, party, vote


def heart() -> pd.DataFrame:
    return sm.datasets.heart.load_pandas().data  # 69 heart transplant patients: survival, censors, age


def cohort(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Made-up patients with text, missing values, ties and a tiny subgroup (3 rows of "rare")."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "age": rng.integers(18, 95, n).astype(float),
        "sex": rng.choice(["F", "M"], n),
        "smoker": rng.choice(["never", "former", "current"], n, p=[0.5, 0.3, 0.2]).astype(object),
        "ward": rng.choice(["A", "B"], n),
    })
    frame.loc[rng.random(n) < 0.05, "age"] = np.nan
    frame.loc[rng.random(n) < 0.05, "smoker"] = None
    frame.loc[[7, n // 2, n - 1], "ward"] = "rare"
    return frame


# -- chi2_contingency ----------------------------------------------------------------------------


@pytest.mark.parametrize("a, b", [("vote", "educ"), ("PID", "vote"), ("income", "educ")])
def test_chi2_equals_scipy_on_real_data_without_policies(a, b):
    frame = anes()
    data = fed(frame, EXACT)
    got = fm.stats.chi2_contingency(data[a], data[b]).compute()
    table = pd.crosstab(frame[a], frame[b])
    expected = scipy.stats.chi2_contingency(table)
    assert got.statistic == pytest.approx(expected.statistic, rel=1e-9)
    assert got.pvalue == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)
    assert got.dof == expected.dof and got.n == table.to_numpy().sum()
    assert (got.observed.to_numpy() == table.to_numpy()).all()


def test_chi2_equals_scipy_on_text_with_missing_values_without_policies():
    frame = cohort()
    data = fed(frame, EXACT)
    got = fm.stats.chi2_contingency(data["smoker"], data["ward"]).compute()
    table = pd.crosstab(frame["smoker"], frame["ward"])  # rows missing either value left out
    expected = scipy.stats.chi2_contingency(table)
    assert (got.statistic, got.dof, got.n) == (pytest.approx(expected.statistic, rel=1e-12), expected.dof, table.values.sum())


def test_chi2_of_a_table_with_withheld_cells_names_them_and_what_to_do():
    data = fed(anes())
    with pytest.raises(fm.PrivacyError) as error:
        quietly(fm.stats.chi2_contingency(data["vote"], data["educ"]).compute)
    message = str(error.value)
    assert "(row 0.0, column 2.0)" in message  # an unknown cell, by its labels
    assert "h0" in message and "withheld" in message
    assert "coarser categories" in message and "larger subgroup" in message


def test_chi2_refuses_when_a_rare_level_vanished_with_its_labels():
    # the rows "X" and "Y" exist only on this server and are withheld with their labels, and so is row
    # "F" (to protect them): the pooled table is the "M" row alone, with no NaN in it. A test on it
    # was a finite wrong number (statistic 0, p-value 1).
    frame = pd.DataFrame({"a": ["F"] * 10 + ["M"] * 10 + ["X"] * 3 + ["Y"] * 3,
                          "b": ([0] * 5 + [1] * 5) * 2 + [0] * 3 + [1] * 3})
    data = fed(frame, cuts=())
    assert quietly(data["a"].crosstab(data["b"]).compute).notna().all().all()
    with pytest.raises(fm.PrivacyError, match=r"h0:\S+ \['d'\] withheld \d+ cells with their labels"):
        quietly(fm.stats.chi2_contingency(data["a"], data["b"]).compute)


def test_chi2_of_a_small_subgroup_says_withheld_not_empty():
    data = fed(heart())
    with pytest.raises(fm.PrivacyError, match="coarser categories"):
        quietly(fm.stats.chi2_contingency(data["censors"], data["age"] > 40).compute)


def test_chi2_of_no_rows_says_the_table_is_empty():
    data = fed(anes())
    old = data[data["age"] > 200]
    with pytest.raises(fm.FedMedError, match="the table is empty") as error:
        quietly(fm.stats.chi2_contingency(old["vote"], old["educ"]).compute)
    assert not isinstance(error.value, fm.PrivacyError)


def test_chi2_with_every_cell_released_equals_scipy_under_policies():
    frame = anes()
    data = fed(frame)
    got = quietly(fm.stats.chi2_contingency(data["vote"], data["age"] > 45).compute)
    expected = scipy.stats.chi2_contingency(pd.crosstab(frame["vote"], frame["age"] > 45))
    assert got.statistic == pytest.approx(expected.statistic, rel=1e-12)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000), st.integers(30, 1500), st.sampled_from([(0.5, 0.8), (0.1, 0.3), (0.9,)]),
       st.sampled_from([("smoker", "sex"), ("smoker", "ward"), ("sex", "ward")]))
def test_chi2_under_policies_is_scipy_or_a_privacy_error(seed, n, cuts, columns):
    frame = cohort(n, seed)
    data = fed(frame, cuts=cuts)
    a, b = columns
    try:
        got = quietly(fm.stats.chi2_contingency(data[a], data[b]).compute)
    except fm.PrivacyError as error:
        assert "withheld" in str(error) and "coarser categories" in str(error)
        return
    assert b != "ward"  # the 3 rows of "rare" are always withheld
    expected = scipy.stats.chi2_contingency(pd.crosstab(frame[a], frame[b]))
    assert got.statistic == pytest.approx(expected.statistic, rel=1e-12)


# -- quantiles -----------------------------------------------------------------------------------


REAL = {
    "anes96 age": lambda: anes()["age"],
    "heart age": lambda: heart()["age"],
    "heart survival": lambda: heart()["survival"],
    "fair age": lambda: sm.datasets.fair.load_pandas().data["age"],
    "star98 LOWINC": lambda: sm.datasets.star98.load_pandas().data["LOWINC"],
}
QS = [0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0]


@pytest.mark.parametrize("name", list(REAL))
@pytest.mark.parametrize("cuts", [(0.5, 0.8), (0.05, 0.1)])
def test_quantiles_equal_pandas_on_real_data_without_policies(name, cuts):
    values = REAL[name]().reset_index(drop=True)
    data = fed(pd.DataFrame({"x": values}), EXACT, cuts)
    got = fm.stats.quantile(data["x"], QS).compute()
    assert got == values.quantile(QS).tolist()  # recorded with a few decimals: to the last bit
    assert fm.stats.median(data["x"]).compute() == values.median()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000), st.integers(1, 250), st.sampled_from(["uniform", "ties", "skewed"]),
       st.lists(st.floats(0, 1), min_size=1, max_size=5), st.sampled_from([(0.5, 0.8), (0.02, 0.9), (0.97,)]))
def test_median_of_integer_ages_is_pandas_exactly(seed, n, shape, qs, cuts):
    # reported: fm.stats.median(age) gave 57.999999986071 where pandas gives 58
    rng = np.random.default_rng(seed)
    ages = {"uniform": lambda: rng.integers(18, 95, n),
            "ties": lambda: rng.choice([40, 58, 58, 58, 71], n),
            "skewed": lambda: np.minimum(18 + rng.geometric(0.05, n), 105)}[shape]().astype(float)
    ages[rng.random(n) < 0.1] = np.nan
    values = pd.Series(ages)
    data = fed(pd.DataFrame({"age": values}), EXACT, cuts)
    if values.count() == 0:
        assert math.isnan(fm.stats.median(data["age"]).compute())
        return
    assert fm.stats.median(data["age"]).compute() == values.median()
    assert fm.stats.quantile(data["age"], qs).compute() == values.quantile(qs).tolist()


def test_quantiles_of_values_with_many_digits_are_within_1e9_without_policies():
    values = pd.Series(np.random.default_rng(3).normal(58, 10, 333))
    data = fed(pd.DataFrame({"x": values}), EXACT)
    got = fm.stats.quantile(data["x"], QS).compute()
    np.testing.assert_allclose(got, values.quantile(QS), rtol=1e-9, atol=0)
    assert all(q.low <= e <= q.high for q, e in zip(got, values.quantile(QS)))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000), st.integers(20, 300), st.sampled_from(["ages", "ties", "normal", "one decimal"]),
       st.lists(st.floats(0, 1), min_size=1, max_size=4), st.sampled_from([(0.5, 0.8), (0.1, 0.15), (0.9,)]))
def test_quantiles_under_policies_hold_the_true_value_or_say_why(seed, n, shape, qs, cuts):
    rng = np.random.default_rng(seed)
    values = {"ages": lambda: rng.integers(18, 95, n).astype(float),
              "ties": lambda: rng.choice([40.0, 58.0, 58.0, 71.0], n),
              "normal": lambda: rng.normal(60, 15, n),
              "one decimal": lambda: np.round(rng.exponential(30, n), 1)}[shape]()
    values[rng.random(n) < 0.1] = np.nan
    series = pd.Series(values)
    data = fed(pd.DataFrame({"x": series}), PRIVATE, cuts)
    try:
        got = quietly(fm.stats.quantile(data["x"], qs).compute)
    except fm.PrivacyError as error:  # a quantile among a server's k extreme values, or a count of < k rows
        assert "fewer than" in str(error)
        return
    for q, expected in zip(got, series.quantile(qs)):
        assert q.low <= expected <= q.high and q.low <= q <= q.high  # the stated precision holds
        assert not q.exact or q == expected


def test_quantile_hidden_by_withheld_counts_is_a_privacy_error():
    data = fed(heart())
    with pytest.raises(fm.PrivacyError, match="k most extreme"):
        quietly(fm.stats.quantile(data["age"], 0.0).compute)


def test_quantile_widened_by_withheld_counts_states_its_interval():
    values = anes()["age"]
    data = fed(pd.DataFrame({"x": values}))
    with pytest.warns(fm.PrivacyWarning, match="between"):
        got = fm.stats.median(data["x"]).compute()
    assert got.low <= values.median() <= got.high


# -- histograms and synthetic samples -------------------------------------------------------------


EDGES = [0, 20, 30, 40, 50, 60, 70]


def test_histogram_equals_numpy_without_policies():
    frame = heart()
    data = fed(frame, EXACT)
    for bins, range_ in (EDGES, None), (6, (0, 70)), (6, None):
        got = fm.stats.histogram(data["age"], bins=bins, range=range_).compute()
        counts, edges = np.histogram(frame["age"], bins=bins, range=range_)
        assert got.counts.tolist() == counts.tolist() and got.edges.tolist() == edges.tolist()
        assert got.exact and got.n == len(frame)


def test_withheld_bins_are_nan_never_zero_and_the_total_is_unknown():
    frame = heart()
    got = quietly(fm.stats.histogram(fed(frame)["age"], bins=EDGES).compute)
    truth, _ = np.histogram(frame["age"], bins=EDGES)
    assert got.withheld.any() and not got.exact
    assert np.isnan(got.n)  # was: ValueError: cannot convert float NaN to integer
    released = ~got.withheld
    assert got.counts[released].tolist() == truth[released].tolist()


def test_histogram_bin_count_with_a_withheld_minimum_asks_for_edges():
    data = fed(heart())
    with pytest.raises(fm.PrivacyError, match=r"give the edges \(bins=\[\.\.\.\]\) or range"):
        quietly(fm.stats.histogram(data["age"], bins=5).compute)


def test_histogram_bin_count_of_a_whole_table_asks_for_one_column_or_edges():
    table = fed(heart()[["age", "survival"]], EXACT)
    for statistic in fm.stats.histogram, fm.stats.reconstruct:
        with pytest.raises(fm.FedMedError, match=r"needs a single column"):  # was a bare TypeError
            statistic(table, bins=4).compute()


def test_reconstruct_with_withheld_bins_names_them():
    data = fed(heart())
    with pytest.raises(fm.PrivacyError, match=r"\[0, 20\), .*\[60, 70\].*coarser bins"):
        quietly(fm.stats.reconstruct(data["age"], bins=EDGES, seed=0).compute)


def test_reconstruct_with_every_bin_released_matches_the_histogram():
    frame = anes()
    edges = [18, 30, 45, 60, 75, 95]
    sample = quietly(fm.stats.reconstruct(fed(frame)["age"], bins=edges, seed=1).compute)
    assert np.histogram(sample, edges)[0].tolist() == np.histogram(frame["age"], edges)[0].tolist()


# -- plots ---------------------------------------------------------------------------------------


def hatched(ax) -> list:
    return [p for p in ax.patches if p.get_hatch()]


def test_histogram_plot_hatches_withheld_bins_and_draws_no_empty_bar_for_them():
    hist = quietly(fm.stats.histogram(fed(heart())["age"], bins=EDGES).compute)
    ax = hist.plot()
    bars = [bar for container in ax.containers for bar in container]
    withheld = np.isnan(hist.counts)
    released = np.flatnonzero(~withheld)
    assert sorted(bar.get_x() for bar in bars) == [EDGES[i] for i in released]
    assert [bar.get_height() for bar in bars] == hist.counts[released].tolist()
    spans = sorted((p.get_x(), p.get_x() + p.get_width()) for p in hatched(ax))
    assert spans == [(EDGES[i], EDGES[i + 1]) for i in np.flatnonzero(withheld)]
    assert ax.get_legend_handles_labels()[1] == ["withheld"]
    assert ax.get_legend() is not None
    plt.close("all")


def test_histogram_plot_without_withheld_bins_has_no_hatch_and_keeps_true_zeros():
    hist = fm.stats.histogram(fed(heart(), EXACT)["age"], bins=[0, 5, 10, 60, 70]).compute()
    ax = hist.plot()
    assert [bar.get_height() for bar in ax.containers[0]] == hist.counts.tolist()
    assert 0 in hist.counts.tolist() and not hatched(ax) and ax.get_legend() is None
    plt.close("all")


def km_table(survival: list, counts: list) -> pd.DataFrame:
    """A Kaplan–Meier table as the survival helper makes it: NaN survival from the first withheld bin on."""
    nullable = pd.array(counts, dtype="Int64")
    survival = pd.array(survival, dtype="Float64")
    return pd.DataFrame({"time": [2.0, 4.0, 6.0, 8.0, 10.0], "at_risk": nullable, "events": nullable,
                         "censored": nullable, "survival": survival,
                         "ci_lower": survival * 0.8, "ci_upper": survival * 0.5 + 0.5})


def test_survival_plot_stops_where_survival_becomes_unknown_and_hatches_the_rest():
    table = km_table([0.9, 0.7, None, None, None], [30, 20, None, None, None])
    ax = plot.survival(table, label="all")
    line = ax.lines[0]
    assert line.get_xdata().tolist() == [0.0, 2.0, 4.0, 6.0]  # held at 0.7 until t = 6, no further
    assert line.get_ydata().tolist() == [1.0, 0.9, 0.7, 0.7]
    (span,) = hatched(ax)
    assert (span.get_x(), span.get_x() + span.get_width()) == (6.0, 10.0)
    assert ax.get_legend_handles_labels()[1] == ["all", "unknown (withheld)"]
    plt.close("all")


def test_survival_plot_with_everything_known_has_no_unknown_span():
    table = km_table([0.9, 0.7, 0.6, 0.5, 0.2], [30, 20, 15, 10, 5])
    ax = plot.survival(table)
    assert ax.lines[0].get_xdata().tolist() == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert not hatched(ax) and ax.get_legend() is None
    plt.close("all")


def test_survival_plot_of_a_federated_table_under_policies_draws_only_known_values():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"t": np.round(rng.exponential(50, 600)), "e": (rng.random(600) < 0.7).astype(int)})
    data = fed(frame)  # many early events, a thin tail: its counts are withheld
    table = quietly(fm.stats.kaplan_meier(data["t"], data["e"], bin_width=10).compute)
    ax = table.plot()
    drawn = np.asarray(ax.lines[0].get_ydata(), dtype=float)
    assert np.isfinite(drawn).all() and ((0 <= drawn) & (drawn <= 1)).all()
    unknown = pd.isna(table["survival"]).to_numpy()
    assert bool(hatched(ax)) == bool(unknown.any())
    if unknown.any():  # the curve ends where survival becomes unknown
        assert ax.lines[0].get_xdata()[-1] == table["time"].to_numpy(dtype=float)[np.argmax(unknown)]
    plt.close("all")
