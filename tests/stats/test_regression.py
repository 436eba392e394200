"""OLS, logit and Poisson regression against statsmodels on the pooled complete rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import fedmed as fm
from fedmed.stats.regression import ConvergenceWarning

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 400
    df = pd.DataFrame({
        "x1": rng.normal(50, 10, n), "x2": rng.normal(0, 1, n), "sex": rng.choice(["F", "M", "X"], n),
    })
    df["y"] = 3 + 0.5 * df.x1 - 2 * df.x2 + (df.sex == "M") * 1.5 + rng.normal(0, 2, n)
    df["b"] = (rng.random(n) < 1 / (1 + np.exp(-(1.2 * df.x2 - 0.3 + 0.02 * (df.x1 - 50))))).astype(float)
    df["count"] = rng.poisson(np.exp(0.3 + 0.4 * df.x2)).astype(float)
    for column, rows in {"x1": [3, 50], "y": [7], "b": [9, 300], "count": [11], "sex": [13]}.items():
        df.loc[rows, column] = np.nan if column != "sex" else None
    return df


def split(df: pd.DataFrame) -> tuple[list[fm.Server], fm.FedData]:
    servers = [fm.Server() for _ in range(3)]
    for server, part in zip(servers, (df.iloc[:40], df.iloc[40:47], df.iloc[47:])):  # uneven
        server["cohort"] = part
    return servers, fm.FedData([fm.Simulation(s, "cohort") for s in servers])


def close(ours: pd.Series, theirs: pd.Series, rel: float) -> None:
    np.testing.assert_allclose(ours.to_numpy(), theirs.to_numpy(), rtol=rel, atol=0)


def test_ols_equals_statsmodels_in_one_round(cohort):
    servers, data = split(cohort)
    fit = fm.stats.ols(data, y="y", X=["x1", "x2"]).compute()
    rows = cohort[["y", "x1", "x2"]].dropna()
    ref = sm.OLS(rows.y, sm.add_constant(rows[["x1", "x2"]])).fit()
    for ours, theirs in [(fit.params, ref.params), (fit.bse, ref.bse), (fit.tvalues, ref.tvalues), (fit.pvalues, ref.pvalues)]:
        close(ours, theirs, 1e-8)
    assert fit.rsquared == pytest.approx(ref.rsquared, rel=1e-8)
    assert fit.rsquared_adj == pytest.approx(ref.rsquared_adj, rel=1e-8)
    assert fit.nobs == ref.nobs and fit.df_resid == ref.df_resid
    assert list(fit.params.index) == ["Intercept", "x1", "x2"]
    assert [s.traffic.requests for s in servers] == [1, 1, 1]


def test_ols_without_intercept(cohort):
    _, data = split(cohort)
    fit = fm.stats.ols(data, y="y", X=["x1", "x2"], intercept=False).compute()
    rows = cohort[["y", "x1", "x2"]].dropna()
    ref = sm.OLS(rows.y, rows[["x1", "x2"]]).fit()
    close(fit.params, ref.params, 1e-8)
    close(fit.bse, ref.bse, 1e-8)
    assert fit.rsquared == pytest.approx(ref.rsquared, rel=1e-8)
    assert fit.rsquared_adj == pytest.approx(ref.rsquared_adj, rel=1e-8)


@pytest.mark.parametrize("levels", [["sex"], {"sex": ["F", "M", "X"]}])
def test_ols_with_a_categorical_predictor(cohort, levels):
    servers, data = split(cohort)
    lazy = fm.stats.ols(data, y="y", X=["x1", "sex"], categorical=levels)
    fit = lazy.compute()
    rows = cohort[["y", "x1", "sex"]].dropna()
    ref = sm.OLS.from_formula("y ~ x1 + C(sex)", rows).fit()
    theirs = ref.params.rename(lambda name: name.replace("C(sex)", "sex"))
    close(fit.params, theirs[fit.params.index], 1e-8)
    close(fit.bse, ref.bse.rename(lambda name: name.replace("C(sex)", "sex"))[fit.params.index], 1e-8)
    # levels found in one extra round when only names are given
    assert [s.traffic.requests for s in servers] == [2 if isinstance(levels, list) else 1] * 3


def test_ols_is_stable_for_large_offsets():
    rng = np.random.default_rng(2)
    x = 1e6 + rng.normal(0, 1, 200)
    df = pd.DataFrame({"x": x, "y": 2.0 * (x - 1e6) + rng.normal(0, 0.1, 200)})
    _, data = split(df)
    fit = fm.stats.ols(data, y="y", X=["x"]).compute()
    ref = sm.OLS(df.y, sm.add_constant(df[["x"]])).fit()
    close(fit.params, ref.params, 1e-7)


@pytest.mark.parametrize("family, column", [("logit", "b"), ("poisson", "count")])
def test_glm_equals_statsmodels(cohort, family, column):
    servers, data = split(cohort)
    fit = getattr(fm.stats, family)(data, y=column, X=["x1", "x2"]).compute()
    rows = cohort[[column, "x1", "x2"]].dropna()
    model = sm.Logit if family == "logit" else sm.Poisson
    ref = model(rows[column], sm.add_constant(rows[["x1", "x2"]])).fit(disp=0)
    close(fit.params, ref.params.rename({"const": "Intercept"}), 1e-6)
    close(fit.bse, ref.bse.rename({"const": "Intercept"}), 1e-6)
    close(fit.pvalues, ref.pvalues.rename({"const": "Intercept"}), 1e-6)
    assert fit.llf == pytest.approx(ref.llf, rel=1e-9)
    assert fit.converged and fit.nobs == len(rows)
    # one round per Newton iteration, one request per server each
    assert [s.traffic.requests for s in servers] == [fit.iterations] * 3
    assert 3 <= fit.iterations <= 10


def test_glm_stops_at_max_iter_and_says_so(cohort):
    _, data = split(cohort)
    with pytest.warns(ConvergenceWarning, match="did not converge in 2 iterations"):
        fit = fm.stats.logit(data, y="b", X=["x1", "x2"], max_iter=2).compute()
    assert fit.iterations == 2 and not fit.converged


def test_a_model_cannot_join_a_batch_silently(cohort):
    _, data = split(cohort)
    with pytest.raises(TypeError, match="GLMFit cannot join a batch"):
        fm.compute(fm.stats.logit(data, y="b", X=["x1"]), data["x1"].sum())


def test_levels_not_listed_are_left_out_not_taken_as_reference(cohort):
    _, data = split(cohort)
    fit = fm.stats.ols(data, y="y", X=["x1", "sex"], categorical={"sex": ["F", "M"]}).compute()
    rows = cohort[cohort.sex.isin(["F", "M"])][["y", "x1", "sex"]].dropna()
    ref = sm.OLS.from_formula("y ~ x1 + C(sex)", rows).fit()
    assert fit.nobs == ref.nobs
    close(fit.params, ref.params.rename(lambda name: name.replace("C(sex)", "sex"))[fit.params.index], 1e-8)


def test_glm_explain_shows_one_iteration(cohort):
    _, data = split(cohort)
    text = fm.stats.logit(data, y="b", X=["x2"]).explain()
    assert "1 round" in text and "glm_step(" in text and "at most 25" in text


def test_summary_is_a_dataframe(cohort):
    _, data = split(cohort)
    summary = fm.stats.ols(data, y="y", X=["x2"]).compute().summary()
    assert list(summary.columns) == ["coef", "std err", "statistic", "p"]
    assert list(summary.index) == ["Intercept", "x2"]
