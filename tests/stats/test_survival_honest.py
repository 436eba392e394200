"""Kaplan-Meier and log-rank on real and messy data, with and without privacy policies (issue 15, items 1-2).

The rule: exact (equal to statsmodels on the pooled rows, binned alike) where
the released counts allow it, unknown (<NA>, NaN) or a FedMedError where they
do not; never a wrong number, a negative count, or survival outside [0, 1].
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from hypothesis import given, settings, strategies as st
from scipy import special
from statsmodels.duration.survfunc import SurvfuncRight, survdiff

import fedmed as fm

PRIVATE, EXACT = "example/config.yaml", "example/config-exact.yaml"
Z = float(special.ndtri(0.975))


def fed(df: pd.DataFrame, config: str = PRIVATE, cuts: tuple[float, ...] = (0.5, 0.8)) -> fm.FedData:
    n = len(df)
    bounds = [0] + [int(c * n) for c in cuts] + [n]
    sources = []
    for i in range(len(bounds) - 1):
        server = fm.Server(config=config)
        server["d"] = df.iloc[bounds[i]:bounds[i + 1]].reset_index(drop=True)
        sources.append(fm.Simulation(server, "d", name=f"h{i}"))
    return fm.FedData(sources, config=config)


def quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fm.PrivacyWarning)
        return fn()


@pytest.fixture(scope="module")
def heart() -> pd.DataFrame:
    return sm.datasets.heart.load_pandas().data


def big_cohort(n: int = 1500, seed: int = 3) -> pd.DataFrame:
    """Follow-up in whole months 1..6 with many patients per month: every cell of a month table is large."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"t": rng.integers(1, 7, n).astype(float), "e": rng.integers(0, 2, n),
                         "g": rng.choice(["A", "B"], n)})


def assert_matches_statsmodels(table: pd.DataFrame, time: pd.Series, event: pd.Series) -> None:
    """Survival, at risk, events and the log-log interval equal SurvfuncRight's at its (event) times."""
    ref = SurvfuncRight(time.to_numpy(float), event.to_numpy(float))
    rows = table.set_index("time").loc[ref.surv_times]
    assert np.allclose(rows["survival"].to_numpy(float), ref.surv_prob, rtol=0, atol=1e-9)
    assert np.array_equal(rows["at_risk"].to_numpy(float), np.asarray(ref.n_risk, float))
    assert np.array_equal(rows["events"].to_numpy(float), np.asarray(ref.n_events, float))
    s, se = ref.surv_prob, ref.surv_prob_se
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = Z * se / (s * np.abs(np.log(s)))  # the se of log(-log S), from statsmodels' Greenwood se of S
        lower, upper = np.exp(-np.exp(np.log(-np.log(s)) + spread)), np.exp(-np.exp(np.log(-np.log(s)) - spread))
    inside = (s > 0) & (s < 1)
    assert np.allclose(rows["ci_lower"].to_numpy(float)[inside], lower[inside], atol=1e-9)
    assert np.allclose(rows["ci_upper"].to_numpy(float)[inside], upper[inside], atol=1e-9)
    # the rows statsmodels leaves out (censorings only) are accounted for too
    assert table["events"].sum() + table["censored"].sum() == len(time)


def test_heart_exact_config_auto_gives_exact_times_equal_to_statsmodels(heart):
    data = fed(heart, EXACT, cuts=(0.49, 0.8))
    table = fm.stats.kaplan_meier(data["survival"], data["censors"]).compute()
    assert table.bin_width is None and table.automatic and table.note is None and table.withheld == []
    assert str(table["at_risk"].dtype) == "Int64"
    assert_matches_statsmodels(table, heart["survival"], heart["censors"])


@pytest.mark.parametrize("width", [30, 100, 365])
def test_heart_exact_config_binned_equals_statsmodels_on_the_binned_rows(heart, width):
    data = fed(heart, EXACT)
    table = fm.stats.kaplan_meier(data["survival"], data["censors"], bin_width=width).compute()
    assert table.bin_width == width and not table.automatic
    assert_matches_statsmodels(table, (heart["survival"] // width) * width, heart["censors"])


def test_heart_private_config_is_exact_unknown_or_refused(heart):
    """69 rows over 3 servers: withheld cells everywhere; every number shown is still the truth."""
    data = fed(heart)
    for width in (30, 100, None):
        table = quiet(lambda: fm.stats.kaplan_meier(data["survival"], data["censors"], bin_width=width).compute())
        assert table.note and "withheld" in table.note
        assert_honest(table, heart["survival"], heart["censors"], width)
    with pytest.raises(fm.FedMedError):
        quiet(lambda: fm.stats.kaplan_meier(data["survival"], data["censors"]).compute())


def assert_honest(table: pd.DataFrame, time: pd.Series, event: pd.Series, width: float | None) -> None:
    """Every known count and survival equals the pooled truth; unknown from the first unknown survival on."""
    for column in ("at_risk", "events", "censored"):
        assert str(table[column].dtype) == "Int64"
        assert (table[column].dropna() >= 0).all()
    survival = table["survival"].to_numpy(float)
    assert np.all(np.isnan(survival) | ((survival >= 0) & (survival <= 1)))
    known = ~np.isnan(survival)
    assert not np.any(known[1:] & ~known[:-1]), "survival unknown, then known again"
    binned = time if width is None else (time // width) * width
    complete = binned.notna() & event.notna()
    binned, event = binned[complete], event[complete]
    truth_s = 1.0
    for _, row in table.iterrows():
        t = row["time"]
        at_risk, d, c = int((binned >= t).sum()), int(((binned == t) & (event == 1)).sum()), int(
            ((binned == t) & (event == 0)).sum())
        truth_s *= 1 - d / at_risk if at_risk else 1.0
        assert row["at_risk"] is pd.NA or row["at_risk"] == at_risk
        assert row["events"] is pd.NA or row["events"] == d
        assert row["censored"] is pd.NA or row["censored"] == c
        assert math.isnan(row["survival"]) or row["survival"] == pytest.approx(truth_s, abs=1e-12)
    assert set(table.withheld) == set(table["time"][table[["at_risk", "events", "censored"]].isna().any(axis=1)])


def test_issue_cohort_with_bins_of_12_no_int_cast_of_nan_and_nan_from_the_first_withheld_bin():
    rng = np.random.default_rng(1)
    n = 300
    t, c = rng.exponential(60, n).round(1), rng.uniform(10, 120, n).round(1)
    frame = pd.DataFrame({"time": np.minimum(t, c), "event": (t <= c).astype(int)})
    data = fed(frame)
    with pytest.warns(fm.PrivacyWarning, match="kaplan_meier: the servers' privacy policies withheld"):
        table = fm.stats.kaplan_meier(data["time"], data["event"], bin_width=12).compute()
    assert table.bin_width == 12 and table.withheld
    assert table.loc[0, "time"] == 0 and table.loc[0, "at_risk"] == 300  # the released total, not a cast of NaN
    assert table["survival"].isna().any()
    assert_honest(table, frame["time"], frame["event"], 12)
    auto = quiet(lambda: fm.stats.kaplan_meier(data["time"], data["event"]).compute())
    assert auto.automatic and auto.note
    assert_honest(auto, frame["time"], frame["event"], auto.bin_width)


def test_private_config_auto_asks_for_one_binning_and_equals_statsmodels():
    """Under privacy policies "auto" asks for ONE binning (two of the same rows would give away withheld
    cells by subtraction): the nice width a step below the times' standard deviation (1.74 here: 0.5)."""
    frame = big_cohort()
    frame["t"] = frame["t"] + np.random.default_rng(4).integers(0, 10, len(frame)) / 10  # exact times: 60 values
    data = fed(frame)
    sent: list = []
    for source in data.sources:
        server = source.server_object
        server.evaluate = lambda request, *rest, evaluate=server.evaluate: sent.append(request) or evaluate(request, *rest)
    table = quiet(lambda: fm.stats.kaplan_meier(data["t"], data["e"]).compute())
    width = table.bin_width
    assert table.automatic and table.note is None and width == 0.5
    assert_matches_statsmodels(table, (frame["t"] // width) * width, frame["e"])
    crosstabs = [n for request in sent for n in request["nodes"] if n[0] == "map" and n[1] == ["crosstab"]]
    assert len(crosstabs) == len(data.sources)  # one table per server, in round 2
    # the log-rank test splits the same bins by group: cells of fewer than 5 are withheld, so "auto" refuses,
    # saying what to do; a coarser width the analyst chooses is released and exact
    with pytest.raises(fm.PrivacyError, match=r"bins of 0\.5.*coarser"):
        quiet(lambda: fm.stats.logrank(data["t"], data["e"], data["g"]).compute())
    result = quiet(lambda: fm.stats.logrank(data["t"], data["e"], data["g"], bin_width=2).compute())
    binned = (frame["t"] // 2) * 2
    statistic, pvalue = survdiff(binned.to_numpy(), frame["e"].to_numpy(), frame["g"].to_numpy())
    assert result.statistic == pytest.approx(statistic, rel=1e-9) and result.pvalue == pytest.approx(pvalue, rel=1e-9)


def test_logrank_exact_config_equals_statsmodels_survdiff(heart):
    frame = heart.assign(old=(heart["age"] > 47).astype(int))
    data = fed(frame, EXACT)
    for width in ("auto", None, 100):
        result = fm.stats.logrank(data["survival"], data["censors"], data["old"], bin_width=width).compute()
        binned = frame["survival"] if width in ("auto", None) else (frame["survival"] // width) * width
        statistic, pvalue = survdiff(binned.to_numpy(), frame["censors"].to_numpy(), frame["old"].to_numpy())
        assert result.statistic == pytest.approx(statistic, rel=1e-9)
        assert result.pvalue == pytest.approx(pvalue, rel=1e-9)
        assert result.n == len(frame) and result.bin_width == (None if width == "auto" else width)


def test_logrank_with_withheld_cells_raises_a_privacy_error_naming_the_bins():
    rng = np.random.default_rng(1)
    n = 300
    t, c = rng.exponential(60, n).round(1), rng.uniform(10, 120, n).round(1)
    frame = pd.DataFrame({"time": np.minimum(t, c), "event": (t <= c).astype(int), "g": rng.choice(["A", "B"], n)})
    data = fed(frame)
    with pytest.raises(fm.PrivacyError, match=r"withheld cells of the bins of 12 \(cells at the times .*coarser"):
        quiet(lambda: fm.stats.logrank(data["time"], data["event"], data["g"], bin_width=12).compute())
    with pytest.raises(fm.PrivacyError, match="every binning tried"):
        quiet(lambda: fm.stats.logrank(data["time"], data["event"], data["g"]).compute())


def test_bad_event_codes_and_group_levels_raise_fedmed_errors():
    frame = big_cohort(60).assign(e2=lambda f: f["e"] * 2, g3=lambda f: np.resize(["A", "B", "C"], len(f)))
    data = fed(frame, EXACT)
    for width in ("auto", None, 2):
        with pytest.raises(fm.FedMedError, match="event must be 1/True"):
            fm.stats.kaplan_meier(data["t"], data["e2"], bin_width=width).compute()
        with pytest.raises(fm.FedMedError, match="event must be 1/True"):
            fm.stats.logrank(data["t"], data["e2"], data["g"], bin_width=width).compute()
        with pytest.raises(fm.FedMedError, match="two groups; .* 3 levels"):
            fm.stats.logrank(data["t"], data["e"], data["g3"], bin_width=width).compute()
    with pytest.raises(fm.FedMedError, match="positive finite"):
        fm.stats.kaplan_meier(data["t"], data["e"], bin_width=-1)


def test_missing_values_and_text_groups_exact_config_equal_statsmodels_on_complete_rows():
    frame = big_cohort(200)
    frame.loc[::7, "t"] = np.nan
    frame.loc[::11, "e"] = np.nan
    frame.loc[::13, "g"] = None
    data = fed(frame, EXACT)
    table = fm.stats.kaplan_meier(data["t"], data["e"]).compute()
    ok = frame["t"].notna() & frame["e"].notna()
    assert_matches_statsmodels(table, frame["t"][ok], frame["e"][ok])
    result = fm.stats.logrank(data["t"], data["e"], data["g"]).compute()
    ok &= frame["g"].notna()
    statistic, pvalue = survdiff(frame["t"][ok].to_numpy(), frame["e"][ok].to_numpy(), frame["g"][ok].to_numpy())
    assert result.statistic == pytest.approx(statistic, rel=1e-9) and result.n == ok.sum()


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(8, 80),
    seed=st.integers(0, 10_000),
    missing=st.floats(0, 0.3),
    width=st.sampled_from(["auto", None, 1, 3]),
    tiny_group=st.booleans(),
)
def test_property_exact_where_known_unknown_or_refused_otherwise(n, seed, missing, width, tiny_group):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"t": rng.integers(0, 12, n).astype(float), "e": rng.integers(0, 2, n).astype(float),
                          "g": np.where(rng.random(n) < (0.1 if tiny_group else 0.5), "rare", "common")})
    frame.loc[rng.random(n) < missing, "t"] = np.nan
    frame.loc[rng.random(n) < missing, "e"] = np.nan
    data = fed(frame, PRIVATE, cuts=(0.6,))
    try:
        table = quiet(lambda: fm.stats.kaplan_meier(data["t"], data["e"], bin_width=width).compute())
    except fm.FedMedError:
        pass
    else:
        assert_honest(table, frame["t"], frame["e"], table.bin_width)
    try:
        result = quiet(lambda: fm.stats.logrank(data["t"], data["e"], data["g"], bin_width=width).compute())
    except fm.FedMedError:
        return
    ok = frame[["t", "e", "g"]].notna().all(axis=1)
    binned = frame["t"] if result.bin_width is None else (frame["t"] // result.bin_width) * result.bin_width
    statistic, _ = survdiff(binned[ok].to_numpy(), frame["e"][ok].to_numpy(), frame["g"][ok].to_numpy())
    assert result.statistic == pytest.approx(statistic, rel=1e-9, abs=1e-12) or (
        math.isnan(result.statistic) and math.isnan(statistic))
