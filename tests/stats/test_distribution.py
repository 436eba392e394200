"""Quantiles from counts, histograms and synthetic samples, against numpy on the pooled values."""

from __future__ import annotations

import numpy as np
import pytest

import fedmed as fm


def split(values: np.ndarray, sizes=(0.2, 0.05)) -> tuple[list[fm.Server], fm.FedData]:
    cut = np.cumsum([int(len(values) * s) for s in sizes])
    servers = [fm.Server() for _ in range(3)]
    for server, part in zip(servers, np.split(values, cut)):
        server["x"] = list(part)
    return servers, fm.FedData([fm.Simulation(s, "x") for s in servers])


DATA = {
    "normal": np.random.default_rng(1).normal(60, 12, 1001),
    "integers with ties": np.random.default_rng(2).integers(18, 90, 500).astype(float),
    "skewed": np.random.default_rng(3).lognormal(3, 1, 777),
    "negative and small": np.random.default_rng(4).normal(-1e-3, 1e-4, 100),
}


@pytest.mark.parametrize("name", list(DATA))
def test_quantiles_within_1e7_of_the_range_in_four_rounds(name):
    values = DATA[name].copy()
    values[::17] = np.nan  # missing values are skipped, as numpy.nanquantile
    servers, data = split(values)
    qs = [0.0, 0.1, 0.25, 0.5, 0.9, 1.0]
    got = np.asarray(fm.stats.quantile(data, qs).compute())
    expected = np.nanquantile(values, qs)
    spread = np.nanmax(values) - np.nanmin(values)
    assert np.max(np.abs(got - expected)) <= 1e-7 * spread
    assert [s.traffic.requests for s in servers] == [4, 4, 4]


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
    assert fm.stats.median(data).compute() == pytest.approx(2.5, abs=1e-8)
    empty = fm.FedData([fm.Local([])])
    assert np.isnan(fm.stats.quantile(empty, 0.5).compute())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fm.stats.quantile(empty, 1.5)


def test_quantile_explain_shows_four_rounds():
    _, data = split(DATA["normal"])
    assert "4 rounds" in fm.stats.quantile(data, 0.5).explain()


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
