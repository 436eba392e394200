"""fm.stats.coxph against statsmodels' PHReg on the pooled rows (issue 17, item 1)."""

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from statsmodels.duration.hazard_regression import PHReg

import fedmed as fm

EXACT, PRIVATE = "example/config-exact.yaml", "example/config.yaml"


def fed(df, config=EXACT, cuts=(0.5, 0.8)):
    n = len(df)
    b = [0] + [int(c * n) for c in cuts] + [n]
    sources = []
    for i in range(len(b) - 1):
        s = fm.Server(config=config)
        s["d"] = df.iloc[b[i]:b[i + 1]].reset_index(drop=True)
        sources.append(fm.Simulation(s, "d", name=f"h{i}"))
    return fm.FedData(sources, config=config)


def site(df, cuts):
    """The server index of each row, as ``fed`` splits them."""
    edges = [int(c * len(df)) for c in cuts]
    return np.searchsorted(edges, np.arange(len(df)), side="right")


def agree(fit, df, time, event, X, ties, strata=None):
    reference = PHReg(df[time], df[X], status=df[event], ties=ties, strata=strata).fit(tol=1e-12)
    np.testing.assert_allclose(fit.params.to_numpy(), reference.params, rtol=1e-8)
    np.testing.assert_allclose(fit.bse.to_numpy(), reference.bse, rtol=1e-8)
    np.testing.assert_allclose(fit.pvalues.to_numpy(), reference.pvalues, rtol=1e-8)
    np.testing.assert_allclose(fit.llf, reference.llf, rtol=1e-8)
    np.testing.assert_allclose(fit.conf_int().to_numpy(), reference.conf_int(), rtol=1e-8)
    assert fit.events == int(df[event].sum()) and fit.nobs == len(df)


def synthetic(n, seed, levels=30):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.binomial(1, 0.4, n).astype(float)
    time = np.ceil(rng.exponential(np.exp(-(0.5 * x1 - 0.7 * x2))) * levels / 3)  # heavy ties
    return pd.DataFrame({"t": time, "e": rng.binomial(1, 0.7, n), "x1": x1, "x2": x2,
                         "g": rng.integers(0, 3, n), "ward": rng.choice(["A", "B"], n)})


@pytest.mark.parametrize("ties", ["breslow", "efron"])
@pytest.mark.parametrize("cuts", [(), (0.3,), (0.5, 0.8), (0.1, 0.2, 0.6, 0.9)])
def test_heart_data_equals_phreg_split_over_1_to_5_servers(ties, cuts):
    heart = sm.datasets.heart.load_pandas().data
    fit = fm.stats.coxph(fed(heart, cuts=cuts), "survival", "censors", ["age"], ties=ties).compute()
    agree(fit, heart, "survival", "censors", ["age"], ties)
    assert fit.rounds == fit.iterations and fit.converged  # no grid round: cells are added on the client


@pytest.mark.parametrize("ties", ["breslow", "efron"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ties_and_a_stratum_column_equal_phreg(ties, seed):
    df = synthetic(400, seed)
    agree(fm.stats.coxph(fed(df), "t", "e", ["x1", "x2"], ties=ties).compute(), df, "t", "e", ["x1", "x2"], ties)
    fit = fm.stats.coxph(fed(df), "t", "e", ["x1", "x2"], ties=ties, strata="g").compute()
    agree(fit, df, "t", "e", ["x1", "x2"], ties, strata=df["g"])
    assert fit.strata == "g"


def test_text_strata_are_coded_by_the_client():
    df = synthetic(300, 4)
    fit = fm.stats.coxph(fed(df), "t", "e", ["x1"], ties="efron", strata="ward").compute()
    agree(fit, df, "t", "e", ["x1"], "efron", strata=df["ward"])


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_strata_server_is_a_baseline_hazard_per_site(ties):
    df, cuts = synthetic(500, 5), (0.2, 0.55, 0.7)
    fit = fm.stats.coxph(fed(df, cuts=cuts), "t", "e", ["x1", "x2"], ties=ties, strata="server").compute()
    agree(fit, df, "t", "e", ["x1", "x2"], ties, strata=site(df, cuts))
    pooled = fm.stats.coxph(fed(df, cuts=cuts), "t", "e", ["x1", "x2"], ties=ties).compute()
    assert abs(fit.llf - pooled.llf) > 1e-3  # a different model, not the pooled one relabelled


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_a_server_with_zero_events_and_one_all_censored(ties):
    df = synthetic(400, 6)
    df.loc[:99, "e"] = 0  # server 1 of 4: all censored
    df.loc[320:, "e"] = 0  # server 4: zero events, late times in others' risk sets
    df.loc[320:, "t"] += 5
    cuts = (0.25, 0.5, 0.8)
    agree(fm.stats.coxph(fed(df, cuts=cuts), "t", "e", ["x1", "x2"], ties=ties).compute(),
          df, "t", "e", ["x1", "x2"], ties)
    fit = fm.stats.coxph(fed(df, cuts=cuts), "t", "e", ["x1", "x2"], ties=ties, strata="server").compute()
    agree(fit, df, "t", "e", ["x1", "x2"], ties, strata=site(df, cuts))


def test_missing_values_are_left_out():
    df = synthetic(300, 7)
    df.loc[[3, 50, 200], "x1"] = np.nan
    df.loc[[10, 250], "t"] = np.nan
    complete = df.dropna().reset_index(drop=True)
    data = fed(df)
    fit = fm.stats.coxph(data, data["t"], data["e"], {"x1": data["x1"], "x2": data["x2"]}, ties="efron").compute()
    agree(fit, complete, "t", "e", ["x1", "x2"], "efron")


def test_errors_say_what_to_do():
    df = synthetic(100, 8)
    with pytest.raises(fm.DataError, match="no events"):
        fm.stats.coxph(fed(df.assign(e=0)), "t", "e", ["x1"]).compute()
    with pytest.raises(fm.DataError, match="recode"):
        fm.stats.coxph(fed(df.assign(e=df["e"] * 2)), "t", "e", ["x1"]).compute()
    with pytest.raises(fm.ArgumentError, match="ties"):
        fm.stats.coxph(fed(df), "t", "e", ["x1"], ties="exact")
    with pytest.raises(fm.FedMedError, match="constant"):
        fm.stats.coxph(fed(df.assign(c=1.0)), "t", "e", ["x1", "c"]).compute()


def test_explain_shows_the_rounds():
    df = synthetic(50, 10)
    text = fm.stats.coxph(fed(df), "t", "e", ["x1"]).explain()
    assert "cox_step(" in text and "cox_bins(" not in text and "once per Newton iteration" in text
    text = fm.stats.coxph(fed(df, config=PRIVATE), "t", "e", ["x1"]).explain()
    assert "cox_bins(" in text and "binnings of the times in one request" in text


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_under_threshold_policies_slma_fits_each_site_exactly(ties):
    df = synthetic(600, 13)
    meta = fm.stats.slma(fm.stats.coxph, fed(df, config=PRIVATE), duration="t", event="e", X=["x1", "x2"],
                         ties=ties).compute()
    b = [0, 300, 480, 600]
    for i in range(3):
        part = df.iloc[b[i]:b[i + 1]]
        reference = PHReg(part["t"], part[["x1", "x2"]], status=part["e"], ties=ties).fit()
        np.testing.assert_allclose(meta.sites.iloc[i], reference.params, rtol=1e-8)
        np.testing.assert_allclose(meta.sites_bse.iloc[i], reference.bse, rtol=1e-8)


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_one_servers_own_rows_give_the_same_fit_through_coxph_and_site_fit(ties):
    # the client's fit and a server's site fit share the partial-likelihood math (fedmed.ops.cox)
    from fedmed.ops import private

    df = synthetic(300, 14)
    fit = fm.stats.coxph(fed(df, cuts=()), "t", "e", ["x1", "x2"], ties=ties).compute()
    frame = df.astype({"e": float})
    n, params, cov, events = private.site_fit(frame["t"], f"cox/{ties}", False, 3.0, 50, 1e-10, frame["e"],
                                              frame["x1"], frame["x2"])
    np.testing.assert_allclose(params, fit.params, rtol=1e-8)
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), fit.bse, rtol=1e-6)  # coxph's information is one step back
    assert (n, events) == (fit.nobs, fit.events)
