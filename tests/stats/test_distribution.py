"""Quantiles from counts, histograms and synthetic samples, against numpy on the pooled values.

Quantiles run under three kinds of servers: without policies (exact to
numpy, bit for bit on data with ties or few decimals), under
``example/config.yaml`` (``Anonymity(k=5)`` withholds counts), and under
``Edges``, a test policy that withholds only the counts with fewer than
``k`` rows on one side, to check the client's logic apart from the server's
full rule. Under policies a quantile is exact, or an interval holding the
true one, or refused with the reason: never a wrong number.
"""

from __future__ import annotations

import dataclasses
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from statsmodels.datasets import anes96

import fedmed as fm
from fedmed.privacy import Policy
from fedmed.privacy.base import Scoped
from fedmed.stats.distribution import GRID, Quantile

EXACT = "example/config-exact.yaml"
EXAMPLE = "example/config.yaml"
K = 5


def split(values: np.ndarray, sizes=(0.2, 0.05), config=None) -> tuple[list[fm.Server], fm.FedData]:
    cut = np.cumsum([int(len(values) * s) for s in sizes])
    servers = [fm.Server(config=config) for _ in range(len(sizes) + 1)]
    for server, part in zip(servers, np.split(values, cut)):
        server["x"] = list(part)
    return servers, fm.FedData([fm.Simulation(s, "x") for s in servers])


class Edges(Policy):
    """Withholds a ``count_below`` count with fewer than ``k`` rows at or below it or above it; nothing else."""

    def __init__(self, k: int = K) -> None:
        self.k = k

    def apply(self, task, value):
        if task.op != "count_below":
            return value
        n = task.disclosure.contributing()
        return [c if self.k <= c <= n - self.k else None for c in value]


EDGES = dataclasses.replace(fm.load_config(EXACT), privacy=(Scoped(Edges()),))


def quietly(compute):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fm.PrivacyWarning)
        return compute()


def ages() -> np.ndarray:
    return anes96.load_pandas().data["age"].to_numpy(dtype=float)  # 944 respondents, ages 19 to 91


DATA = {
    "normal": np.random.default_rng(1).normal(60, 12, 1001),
    "integers with ties": np.random.default_rng(2).integers(18, 90, 500).astype(float),
    "skewed": np.random.default_rng(3).lognormal(3, 1, 777),
    "negative and small": np.random.default_rng(4).normal(-1e-3, 1e-4, 100),
}
QS = [0.0, 0.1, 0.25, 0.5, 0.9, 1.0]


# -- without policies: numpy's quantiles ----------------------------------------------------------


@pytest.mark.parametrize("name", list(DATA))
def test_quantiles_equal_numpy_to_1e9_in_four_rounds(name):
    values = DATA[name].copy()
    values[::17] = np.nan  # missing values are skipped, as numpy.nanquantile
    servers, data = split(values, config=EXACT)
    got = fm.stats.quantile(data, QS).compute()
    expected = np.nanquantile(values, QS)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=0)
    assert all(q.low <= e <= q.high for q, e in zip(got, expected))
    assert [s.traffic.requests for s in servers] == [4, 4, 4]


@pytest.mark.parametrize("values", [
    ages(),
    DATA["integers with ties"],
    np.round(np.random.default_rng(5).normal(5.4, 0.8, 600), 1),  # a lab value with one decimal
    np.round(np.random.default_rng(6).lognormal(1, 1, 400), 3),
    np.array([-2.5, 7.0, 7.0, 7.0, 1e6]),
], ids=["anes ages", "integers", "one decimal", "three decimals", "few"])
def test_values_with_few_decimals_or_ties_are_exact(values):
    values = values.copy()
    values[::13] = np.nan
    _, data = split(values, sizes=(0.5, 0.3), config=EXACT)
    qs = [0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0]
    got = fm.stats.quantile(data, qs).compute()
    assert got == np.nanquantile(values, qs).tolist()  # to the last bit
    assert all(q.exact for q in got)
    series = pd.Series(values)
    assert fm.stats.median(data).compute() == series.median() and series.median() == series.quantile(0.5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.integers(-30, 30).map(lambda v: v / 4), max_size=12), min_size=1, max_size=4),
       st.lists(st.floats(0, 1), min_size=1, max_size=4))
def test_any_split_of_quarter_steps_gives_numpy_exactly(parts, qs):
    data = fm.FedData([fm.Local(part) for part in parts])
    pooled = [v for part in parts for v in part]
    got = fm.stats.quantile(data, qs).compute()
    if not pooled:
        assert all(np.isnan(got))
    else:
        assert got == np.quantile(pooled, qs).tolist()


@pytest.mark.parametrize("centre", [3e-12, -3e-12, 3e18, -3e18])
def test_values_beyond_the_first_round_grid_are_located(centre):
    values = np.random.default_rng(7).normal(centre, abs(centre) / 30, 300)
    _, data = split(values, config=EXACT)
    got = fm.stats.quantile(data, [0.1, 0.5, 0.9]).compute()
    np.testing.assert_allclose(got, np.quantile(values, [0.1, 0.5, 0.9]), rtol=1e-6)


def test_no_server_sends_a_value():
    values = DATA["normal"]
    servers, data = split(values)
    sent: list = []
    for server in servers:
        original = server.evaluate
        server.evaluate = lambda *args, original=original: sent.append(original(*args)) or sent[-1]
    fm.stats.median(data).compute()
    results = [r["value"] for response in sent for r in response["results"]]
    assert results and all(isinstance(v, int) or all(isinstance(c, int) for c in v) for v in results)


def test_median_and_empty_input():
    _, data = split(np.array([1.0, 2.0, 3.0, 4.0]), sizes=(0.5, 0.25))
    assert fm.stats.median(data).compute() == 2.5
    empty = fm.FedData([fm.Local([])])
    assert np.isnan(fm.stats.quantile(empty, 0.5).compute())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fm.stats.quantile(empty, 1.5)


def test_quantile_explain_shows_four_rounds():
    _, data = split(DATA["normal"])
    assert "4 rounds" in fm.stats.quantile(data, 0.5).explain()


def test_bytes_per_round_of_a_median():
    def sent(values: np.ndarray, rounds: int) -> int:
        servers, data = split(values, config=EXACT)
        fm.stats.median(data, rounds=rounds).compute()
        return servers[0].traffic.bytes_in

    assert len(GRID) == 151 and sent(ages(), 0) < 1_600  # round 1: 151 thresholds (the decades were 51)
    one_bracket = sent(ages(), 1) - sent(ages(), 0)
    assert one_bracket < 10_000  # at most 1024 cuts: both middle ranks share the bracket
    assert sent(ages(), 3) - sent(ages(), 1) < 1_000  # pinned in round 2: rounds 3 and 4 ask next to nothing
    assert sent(DATA["normal"], 3) < 1_600 + 3 * 2 * 10_000  # never pinned: at most two brackets a round


def test_pooled_counts_keep_each_source_and_the_result_keeps_its_interval():
    _, data = split(np.arange(40.0), sizes=(0.5,), config=EDGES)
    counts = quietly(lambda: data.count_below([1.0, 10.0, 30.0]).compute())
    assert np.isnan(counts).all()  # each threshold has a count withheld somewhere
    np.testing.assert_array_equal(counts.parts, [[np.nan, 11.0, np.nan], [np.nan, np.nan, 11.0]])
    _, data = split(np.arange(40.0), sizes=(0.5,), config=EXACT)
    assert data.count_below([1.0, 10.0, 30.0]).compute() == [2.0, 11.0, 31.0]
    result = fm.stats.median(data).compute()
    again = pickle.loads(pickle.dumps(result))
    assert (float(again), again.low, again.high, again.exact) == (19.5, 19.5, 19.5, True)


# -- under privacy policies: exact, an interval holding the truth, or refused --------------------------


def check(result: Quantile, truth: float) -> None:
    assert result.low <= truth <= result.high, (float(result), truth, result.low, result.high)
    assert result.low <= result <= result.high
    assert result.exact == (result.low == result.high) and (not result.exact or result == truth)


def anes(config, cuts=(0, 500, 800, 944)) -> tuple[fm.FedData, np.ndarray]:
    values = ages()
    sources = []
    for i, (lo, hi) in enumerate(zip(cuts, cuts[1:])):
        server = fm.Server(config=config)
        server["anes"] = pd.DataFrame({"age": values[lo:hi]})
        sources.append(fm.Simulation(server, "anes", name=f"site{i}"))
    return fm.FedData(sources)["age"], values


def test_median_of_real_ages_is_exact_under_the_example_config():
    age, values = anes(EXAMPLE)
    median = quietly(lambda: fm.stats.median(age).compute())
    assert median == np.median(values) == 44.0 and median.exact
    qs = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]
    for result, truth in zip(quietly(lambda: fm.stats.quantile(age, qs).compute()), np.quantile(values, qs)):
        check(result, truth)
    assert sum(r.exact for r in quietly(lambda: fm.stats.quantile(age, qs).compute())) >= 4


@pytest.mark.parametrize("q, side", [(0.0, "smallest"), (0.005, "smallest"), (1.0, "largest")])
def test_a_quantile_in_a_hidden_tail_is_refused_naming_the_servers(q, side):
    age, _ = anes(EXAMPLE)
    with pytest.raises(fm.FedMedError, match=rf"quantile {q:g} is within the k most extreme \({side}\) values "
                                             r"on site0:\w+ \['anes'\], site1:.*which their privacy policies withhold"):
        quietly(lambda: fm.stats.quantile(age, q).compute())


def test_an_interval_comes_with_a_privacy_warning():
    values = np.random.default_rng(8).normal(60, 12, 700)  # no ties: no order statistic can be pinned
    _, data = split(values, sizes=(0.5, 0.3), config=EXAMPLE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", fm.PrivacyWarning)
        median = fm.stats.median(data).compute()
    ours = [str(w.message) for w in caught if str(w.message).startswith("quantile 0.5: withheld counts")]
    assert ours == [f"quantile 0.5: withheld counts leave it between {median.low!r} and {median.high!r}; "
                    "the value is the middle"]
    check(median, np.median(values))
    assert not median.exact and median.high - median.low < 1.0  # about k values around the rank


@pytest.mark.parametrize("config", [EDGES, EXAMPLE], ids=["edges", "example"])
def test_ties_and_missing_values_over_uneven_servers(config):
    rng = np.random.default_rng(9)
    values = rng.integers(30, 80, 420).astype(float)
    values[rng.random(420) < 0.1] = np.nan
    _, data = split(values, sizes=(0.6, 0.3), config=config)
    qs = [0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98]
    truth = np.nanquantile(values, qs)
    results = []
    for q, t in zip(qs, truth):
        try:
            results.append(quietly(lambda: fm.stats.quantile(data, q).compute()))
        except fm.FedMedError as error:
            assert q in (0.02, 0.98) and "most extreme" in str(error)
            continue
        check(results[-1], t)
    assert sum(r.exact for r in results) >= 4  # about 8 rows share each value: the middle ones are pinned


def test_a_small_server_whose_counts_are_all_withheld_still_lets_the_median_be_placed():
    """Pooled counts would all be NaN; each source's own counts bound the small one's (at most its 8 rows)."""
    values = np.random.default_rng(10).integers(20, 90, 408).astype(float)
    _, data = split(values, sizes=(400 / 408,), config=EDGES)  # 400 rows and 8 rows: k <= c <= 3 never holds
    median = quietly(lambda: fm.stats.median(data).compute())
    check(median, np.median(values))
    # the big server releases counts up to 395 of its 400 rows, so the small one has at most 408 - 395 = 13 rows
    # at or below any threshold: the median is known to 13 ranks either way, about 2 values of 70
    assert median.high - median.low <= 8.0


def test_values_all_between_two_grid_thresholds_are_found():
    """Blood pressures within (100, 200]: every first-round count is 0 or n, all withheld."""
    values = np.clip(np.round(np.random.default_rng(11).normal(140, 15, 600)), 101, 199)
    _, data = split(values, sizes=(0.5, 0.3), config=EDGES)
    median = quietly(lambda: fm.stats.median(data).compute())
    assert median == np.median(values) and median.exact
    tiny = np.random.default_rng(12).normal(3e-12, 1e-13, 300)  # no cut of 4 rounds splits them
    _, data = split(tiny, sizes=(0.5, 0.3), config=EDGES)
    with pytest.raises(fm.FedMedError, match="no released count places quantile 0.5.*rescale"):
        quietly(lambda: fm.stats.median(data).compute())


@pytest.mark.parametrize("bins, kwargs, rounds", [(12, {}, 2), (12, {"range": (20.0, 100.0)}, 1), ([0.0, 50.0, 60.0, 200.0], {}, 1)])
def test_histogram_equals_numpy(bins, kwargs, rounds):
    values = DATA["normal"]
    servers, data = split(values)
    hist = fm.stats.histogram(data, bins=bins, **kwargs).compute()
    counts, edges = np.histogram(values, bins=bins, **kwargs)
    assert hist.counts.tolist() == counts.tolist()
    np.testing.assert_allclose(hist.edges, edges, rtol=1e-12)
    assert [s.traffic.requests for s in servers] == [rounds] * 3


def test_reconstruct_is_synthetic_with_the_same_histogram():
    values = DATA["skewed"]
    _, data = split(values)
    sample = fm.stats.reconstruct(data, bins=20, seed=5).compute()
    counts, edges = np.histogram(values, bins=20)
    assert np.histogram(sample, bins=edges)[0].tolist() == counts.tolist()
    assert not np.isin(sample, values).any()  # no real value comes back
    again = fm.stats.reconstruct(data, bins=20, seed=5).compute()
    np.testing.assert_array_equal(sample, again)


def test_t_tests_on_empty_or_constant_samples_follow_scipy():
    data = fm.FedData([fm.Local({"x": [0.1, 0.1, 0.1], "g": [0, 0, 0]}), fm.Local({"x": [0.1, 0.1], "g": [0, 0]})])
    empty = fm.stats.ttest_ind(data["x"][data["g"] == 1], data["x"]).compute()
    assert np.isnan(empty.statistic) and np.isnan(empty.pvalue)
    # a constant split over servers merges to an M2 of rounding size: treated as 0, as scipy does
    shifted = fm.stats.ttest_1samp(data["x"], 0.0).compute()
    assert np.isinf(shifted.statistic) and shifted.pvalue == 0.0
