"""Kaplan-Meier and the log-rank test from federated counts, against the textbook formulas on the pooled rows.

Three uneven servers (37, 160 and 403 rows) hold the fragments, with missing
times, events and groups; the first codes its events as True/False (with
None), the others as 1.0/0.0 (with NaN). The references below loop over the
pooled rows subject by subject, written from the formulas, sharing no code
with ``fedmed.stats.survival``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import fedmed as fm
from fedmed.stats.survival import KM_COLUMNS, LogrankResult, kaplan_meier, logrank

SIZES = (37, 160, 403)
Z = 1.959963984540054  # 97.5% quantile of the standard normal
EXACT = dict(rel=1e-9, abs=1e-12)


def make_frames(seed: int = 20240612) -> list[pd.DataFrame]:
    rng = np.random.default_rng(seed)
    frames = []
    for i, n in enumerate(SIZES):
        group = rng.choice(["A", "B"], n)
        scale = np.where(group == "A", 300.0, 210.0)  # mean survival in days: B dies sooner
        death, censor = rng.exponential(scale), rng.uniform(0.0, 700.0, n)
        time = np.ceil(np.minimum(death, censor))  # whole days: many ties, events and censorings on one day
        event = (death <= censor).astype(float)
        time[rng.random(n) < 0.05] = np.nan
        event[rng.random(n) < 0.05] = np.nan
        arm = (group == "B").astype(float)
        missing_group = rng.random(n) < 0.05
        arm[missing_group] = np.nan
        group = group.astype(object)
        group[missing_group] = None
        frame = pd.DataFrame({"t": time, "e": event, "group": group, "arm": arm})
        if i == 0:
            frame["e"] = [None if math.isnan(v) else bool(v) for v in event]
        frames.append(frame)
    return frames


@pytest.fixture
def setup(simulate):
    """(servers, FedData over fm.Simulation sources, the pooled DataFrame with e as float)."""
    frames = make_frames()
    servers, data = simulate(frames)
    pooled = pd.concat(frames, ignore_index=True)
    pooled["e"] = as_float(pooled["e"])
    return servers, data, pooled


def as_float(event: pd.Series) -> pd.Series:
    """True/False/None and 1.0/0.0/NaN as one float column."""
    return event.map(lambda v: np.nan if v is None or pd.isna(v) else float(v)).astype(float)


def requests(servers) -> list[int]:
    return [s.traffic.requests for s in servers]


# -- textbook references on the pooled rows ------------------------------------


def textbook_km(time: pd.Series, event: pd.Series) -> pd.DataFrame:
    """Kaplan-Meier with Greenwood's variance and the log-log interval, subject by subject."""
    rows = [(t, e) for t, e in zip(time, event) if not (pd.isna(t) or pd.isna(e))]
    table, survival, greenwood = [], 1.0, 0.0
    for t in sorted({t for t, _ in rows}):
        at_risk = sum(1 for s, _ in rows if s >= t)
        deaths = sum(1 for s, e in rows if s == t and e == 1)
        censored = sum(1 for s, e in rows if s == t and e == 0)
        survival *= 1.0 - deaths / at_risk
        if deaths:
            greenwood += deaths / (at_risk * (at_risk - deaths)) if deaths < at_risk else math.inf
        if survival == 1.0:
            lower = upper = 1.0
        elif survival == 0.0:
            lower = upper = math.nan
        else:
            centre = math.log(-math.log(survival))
            half = Z * math.sqrt(greenwood) / abs(math.log(survival))
            lower, upper = math.exp(-math.exp(centre + half)), math.exp(-math.exp(centre - half))
        table.append((t, at_risk, deaths, censored, survival, lower, upper))
    return pd.DataFrame(table, columns=KM_COLUMNS)


def textbook_logrank(time: pd.Series, event: pd.Series, group: pd.Series) -> tuple[float, float, float, float, int]:
    """(O, E, V of the first sorted level, chi-squared, rows used): the Mantel-Haenszel log-rank test."""
    rows = [(t, e, g) for t, e, g in zip(time, event, group) if not (pd.isna(t) or pd.isna(e) or pd.isna(g))]
    first = sorted({g for _, _, g in rows})[0]
    observed = expected = variance = 0.0
    for t in sorted({t for t, e, _ in rows if e == 1}):
        n = sum(1 for s, _, _ in rows if s >= t)
        n1 = sum(1 for s, _, g in rows if s >= t and g == first)
        d = sum(1 for s, e, _ in rows if s == t and e == 1)
        d1 = sum(1 for s, e, g in rows if s == t and e == 1 and g == first)
        observed += d1
        expected += d * n1 / n
        if n > 1:
            variance += d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1)
    return observed, expected, variance, (observed - expected) ** 2 / variance, len(rows)


def assert_frames_close(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(got.columns) == KM_COLUMNS
    assert len(got) == len(expected)
    for column in ("time", "at_risk", "events", "censored"):
        assert got[column].tolist() == expected[column].tolist(), column
    for column in ("survival", "ci_lower", "ci_upper"):
        np.testing.assert_allclose(got[column], expected[column], rtol=1e-9, atol=1e-12, equal_nan=True)


# -- Kaplan-Meier -----------------------------------------------------------


def test_kaplan_meier_equals_textbook(setup):
    servers, data, pooled = setup
    km = kaplan_meier(data["t"], data["e"], bin_width=None).compute()  # exact times: one round
    expected = textbook_km(pooled["t"], pooled["e"])
    assert len(expected) > 100 and expected["censored"].gt(0).any() and expected["events"].gt(1).any()
    assert ((expected["events"] > 0) & (expected["censored"] > 0)).any()  # ties of events and censorings
    assert_frames_close(km, expected)
    complete = pooled[["t", "e"]].dropna()
    assert km["at_risk"].iloc[0] == len(complete) == km["events"].sum() + km["censored"].sum()
    assert km["survival"].is_monotonic_decreasing and 0 < km["survival"].iloc[-1] < 0.5
    assert (km["ci_lower"] <= km["survival"]).all() and (km["survival"] <= km["ci_upper"]).all()
    assert requests(servers) == [1, 1, 1]
    auto = kaplan_meier(data["t"], data["e"]).compute()  # "auto": the scale, then the finest released binning
    assert_frames_close(auto, expected)
    assert auto.bin_width is None and auto.automatic
    assert requests(servers) == [2, 2, 2]  # no privacy policies in the config: the exact times, one round


def test_kaplan_meier_binned_times_equal_textbook_on_binned_rows(setup):
    servers, data, pooled = setup
    km = kaplan_meier(data["t"], data["e"], bin_width=30).compute()
    expected = textbook_km(np.floor(pooled["t"] / 30) * 30, pooled["e"])
    assert_frames_close(km, expected)
    assert len(km) < 30 and all(t % 30 == 0 for t in km["time"])
    assert requests(servers) == [1, 1, 1]


def test_binned_times_never_leave_the_server(setup):
    servers, data, pooled = setup
    sent: list = []
    for server in servers:
        original = server.evaluate
        server.evaluate = lambda *args, original=original: sent.append(original(*args)) or sent[-1]
    fm.compute(kaplan_meier(data["t"], data["e"], bin_width=30), logrank(data["t"], data["e"], data["group"], 30))
    assert len(sent) == 3
    # the tables' cells; the other answers are plain numbers (complete rows, the first binned time)
    cells = [cell for response in sent for result in response["results"] if isinstance(result["value"], list)
             for cell in result["value"]]
    firsts = {cell[0] for cell in cells}  # binned times, or event codes 0/1 in logrank's check of the codes
    assert len(cells) > 50 and all(v == 1 or v % 30 == 0 for v in firsts)
    assert len({t for t in pooled["t"].dropna() if t % 30}) > 300  # what exact times would have revealed


def test_confidence_interval_log_log_by_hand():
    # 4 subjects: deaths at 1 and 3, censored at 2, the last at risk dies at 4
    data = fm.FedData([fm.Local({"t": [1, 2], "e": [1, 0]}), fm.Local({"t": [3, 4], "e": [True, True]})])
    km = kaplan_meier(data["t"], data["e"]).compute()
    assert km["survival"].tolist() == pytest.approx([0.75, 0.75, 0.375, 0.0])
    # at t = 3: G = 1/(4*3) + 1/(2*1), se of log(-log S) = sqrt(G) / |log S|
    s, g = 0.375, 1 / 12 + 1 / 2
    se = math.sqrt(g) / abs(math.log(s))
    assert km.loc[2, "ci_lower"] == pytest.approx(math.exp(-math.exp(math.log(-math.log(s)) + Z * se)), **EXACT)
    assert km.loc[2, "ci_upper"] == pytest.approx(math.exp(-math.exp(math.log(-math.log(s)) - Z * se)), **EXACT)
    # by hand: log(-log S) = -0.019356, se = 0.763763 / 0.980829 = 0.778691, z * se = 1.526206
    assert km.loc[2, "ci_lower"] == pytest.approx(0.010971, abs=1e-6)
    assert km.loc[2, "ci_upper"] == pytest.approx(0.808001, abs=1e-6)  # not S ± 1.96 S sqrt(G) = [-0.186, 0.936]
    assert math.isnan(km.loc[3, "ci_lower"]) and math.isnan(km.loc[3, "ci_upper"])  # S = 0: undefined


def test_confidence_interval_is_one_before_the_first_event():
    data = fm.FedData([fm.Local({"t": [1.0, 2.0, 5.0], "e": [0, 1, 0]})])
    km = kaplan_meier(data["t"], data["e"]).compute()
    assert km.loc[0, ["survival", "ci_lower", "ci_upper"]].tolist() == [1.0, 1.0, 1.0]
    assert 0 < km.loc[1, "ci_lower"] < km.loc[1, "survival"] == 0.5 < km.loc[1, "ci_upper"] < 1


def test_kaplan_meier_of_no_rows_is_an_empty_table():
    data = fm.FedData([fm.Local({"t": [None, 3.0], "e": [1.0, None]})])
    km = kaplan_meier(data["t"], data["e"]).compute()
    assert list(km.columns) == KM_COLUMNS and len(km) == 0


# -- log-rank -------------------------------------------------------------------


@pytest.mark.parametrize("column", ["group", "arm"])
def test_logrank_equals_textbook(setup, column):
    servers, data, pooled = setup
    result = logrank(data["t"], data["e"], data[column], bin_width=None).compute()
    observed, expected, variance, statistic, n = textbook_logrank(pooled["t"], pooled["e"], pooled[column])
    assert isinstance(result, LogrankResult)
    assert 1e-8 < result.pvalue < 0.05  # B dies sooner: a p-value with digits to compare
    assert result.statistic == pytest.approx(statistic, **EXACT)
    assert result.pvalue == pytest.approx(float(1 - sps.chi2.cdf(statistic, 1)), rel=1e-6)
    assert (result.df, result.n) == (1.0, n)
    assert result.observed[0] == observed and result.expected[0] == pytest.approx(expected, **EXACT)
    total_events = pooled.dropna(subset=["t", "e", column])["e"].sum()
    assert sum(result.observed) == total_events and sum(result.expected) == pytest.approx(total_events)
    assert result.levels == (("A", "B") if column == "group" else (0.0, 1.0))
    assert requests(servers) == [1, 1, 1]


def test_logrank_binned_equals_textbook_on_binned_rows(setup):
    servers, data, pooled = setup
    result = logrank(data["t"], data["e"], data["group"], bin_width=30).compute()
    *_, statistic, n = textbook_logrank(np.floor(pooled["t"] / 30) * 30, pooled["e"], pooled["group"])
    exact = logrank(data["t"], data["e"], data["group"]).compute()
    assert result.statistic == pytest.approx(statistic, **EXACT) and result.n == n
    assert result.statistic != pytest.approx(exact.statistic, rel=1e-6)  # binning really changed the ties
    assert result.statistic == pytest.approx(exact.statistic, rel=0.05)  # but not by much


def test_logrank_is_symmetric_in_the_groups(setup):
    _, data, _ = setup
    a = logrank(data["t"], data["e"], data["arm"]).compute()
    b = logrank(data["t"], data["e"], 1 - data["arm"]).compute()
    assert b.statistic == pytest.approx(a.statistic, **EXACT) and b.observed == a.observed[::-1]


def test_logrank_lazy_attribute():
    data = fm.FedData([fm.Local({"t": [1, 2, 3, 4, 5, 6], "e": [1, 1, 0, 1, 1, 0], "g": [0, 0, 1, 1, 1, 1]})])
    # group 0: O = 2, E = 2/6 + 1/5 = 8/15, V = 2/9 + 4/25 = 86/225, so the statistic is 484/86
    assert float(logrank(data["t"], data["e"], data["g"]).pvalue) == pytest.approx(sps.chi2.sf(484 / 86, 1), **EXACT)


# -- rounds, batching, real servers -------------------------------------------


def test_everything_together_is_one_request_per_server(setup):
    servers, data, pooled = setup
    t, e = data["t"], data["e"]
    km, km30, lr, lr30, total = fm.compute(
        kaplan_meier(t, e, None), kaplan_meier(t, e, 30), logrank(t, e, data["group"], None),
        logrank(t, e, data["arm"], 30),
        t.count(),
    )
    assert requests(servers) == [1, 1, 1]
    assert total == pooled["t"].count()
    assert_frames_close(km, textbook_km(pooled["t"], pooled["e"]))
    assert lr.statistic == pytest.approx(textbook_logrank(pooled["t"], pooled["e"], pooled["group"])[3], **EXACT)
    plan = fm.explain(kaplan_meier(t, e, None), logrank(t, e, data["group"], None))
    assert "1 round" in plan and "3 requests" in plan


def test_over_real_servers(serve):
    frames = make_frames()
    servers = [fm.Server() for _ in frames]
    sources = []
    for i, (server, frame) in enumerate(zip(servers, frames)):
        server[f"site {i}"] = frame
        sources.append(fm.Remote(ip=serve(server).url, fragment=f"site {i}"))
    data = fm.FedData(sources)
    km, lr = fm.compute(kaplan_meier(data["t"], data["e"], 7), logrank(data["t"], data["e"], data["group"], None))
    pooled = pd.concat(frames, ignore_index=True)
    event = as_float(pooled["e"])
    assert_frames_close(km, textbook_km(np.floor(pooled["t"] / 7) * 7, event))
    assert lr.statistic == pytest.approx(textbook_logrank(pooled["t"], event, pooled["group"])[3], **EXACT)
    assert requests(servers) == [1, 1, 1]


# -- errors ---------------------------------------------------------------------


def test_event_codes_other_than_0_and_1_are_refused():
    data = fm.FedData([fm.Local({"t": [1, 2, 3], "e": [0, 1, 2], "g": [0, 1, 1]})])
    with pytest.raises(ValueError, match=r"codes \[2\]"):
        kaplan_meier(data["t"], data["e"]).compute()
    with pytest.raises(ValueError, match=r"codes \[2\]"):
        logrank(data["t"], data["e"], data["g"]).compute()


def test_logrank_needs_exactly_two_levels():
    data = fm.FedData([fm.Local({"t": [1, 2, 3, 4], "e": [1, 1, 0, 1], "g": ["a", "b", "c", None]})])
    with pytest.raises(ValueError, match="two groups.*3 levels"):
        logrank(data["t"], data["e"], data["g"]).compute()
    with pytest.raises(ValueError, match="1 levels"):
        logrank(data["t"], data["e"], data["g"][data["g"] == "a"]).compute()


def test_bad_arguments():
    data = fm.FedData([fm.Local({"t": [1, 2], "e": [1, 0]})])
    for width in (0, -3, math.inf, math.nan):
        with pytest.raises(ValueError, match="bin_width"):
            kaplan_meier(data["t"], data["e"], width)
    with pytest.raises(TypeError, match="bin_width"):
        kaplan_meier(data["t"], data["e"], "30")
    with pytest.raises(TypeError, match="event must be a FedData"):
        kaplan_meier(data["t"], [1, 0])
    with pytest.raises(TypeError, match="group must be a FedData"):
        logrank(data["t"], data["e"], "g")


# -- lifelines, where installed -------------------------------------------------


def test_against_lifelines(setup):
    lifelines = pytest.importorskip("lifelines")
    from lifelines.statistics import logrank_test

    _, data, pooled = setup
    rows = pooled.dropna(subset=["t", "e", "group"])
    a, b = rows[rows["group"] == "A"], rows[rows["group"] == "B"]
    reference = logrank_test(a["t"], b["t"], event_observed_A=a["e"], event_observed_B=b["e"])
    result = logrank(data["t"], data["e"], data["group"]).compute()
    assert result.statistic == pytest.approx(reference.test_statistic, rel=1e-9)
    assert result.pvalue == pytest.approx(reference.p_value, rel=1e-6)

    complete = pooled.dropna(subset=["t", "e"])
    fitter = lifelines.KaplanMeierFitter().fit(complete["t"], complete["e"])
    km = kaplan_meier(data["t"], data["e"]).compute().set_index("time")
    np.testing.assert_allclose(km["survival"], fitter.survival_function_.loc[km.index].iloc[:, 0], rtol=1e-9)
    ci = fitter.confidence_interval_.loc[km.index]
    defined = km["survival"] > 0
    np.testing.assert_allclose(km["ci_lower"][defined], ci.iloc[:, 0][defined], rtol=1e-6)
    np.testing.assert_allclose(km["ci_upper"][defined], ci.iloc[:, 1][defined], rtol=1e-6)
