"""fm.stats.slma: per-site fits equal statsmodels on each site's rows, pooling equals combine_effects.

Real data shipped with statsmodels (spector, star98, fair, cancer) split
unevenly over 2 to 8 simulated servers, under the exact and the
privacy-aware example configs; the rows-per-parameter refusal; one request
per server; the forest plot's artists.
"""

from __future__ import annotations

import dataclasses

import matplotlib
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy.optimize import minimize_scalar
from statsmodels.duration.hazard_regression import PHReg
from statsmodels.stats.meta_analysis import combine_effects

import fedmed as fm
from fedmed.config import Aggregate, load_config
from fedmed.ops import private, public
from fedmed.stats.meta import reml_score

matplotlib.use("Agg")

CONFIGS = ["example/config-exact.yaml", "example/config.yaml"]
TOL = 1e-8


def bounds(n: int, cuts: tuple[float, ...]) -> list[int]:
    return [0] + [int(c * n) for c in cuts] + [n]


def fed(df: pd.DataFrame, config: str = "example/config-exact.yaml", cuts: tuple[float, ...] = (0.5, 0.8),
        servers: list | None = None) -> fm.FedData:
    b, sources = bounds(len(df), cuts), []
    for i in range(len(b) - 1):
        s = fm.Server(config=config)
        s["d"] = df.iloc[b[i]:b[i + 1]].reset_index(drop=True)
        sources.append(fm.Simulation(s, "d", name=f"h{i}"))
        if servers is not None:
            servers.append(s)
    return fm.FedData(sources, config=config)


def parts(df: pd.DataFrame, cuts: tuple[float, ...]) -> list[pd.DataFrame]:
    b = bounds(len(df), cuts)
    return [df.iloc[b[i]:b[i + 1]] for i in range(len(b) - 1)]


def shuffled(df: pd.DataFrame) -> pd.DataFrame:
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True)


def fair() -> pd.DataFrame:
    df = shuffled(sm.datasets.fair.load_pandas().data)
    return df.assign(affair=(df["affairs"] > 0).astype(float))


def star98() -> pd.DataFrame:
    df = shuffled(sm.datasets.star98.load_pandas().data)
    return df.assign(share=df["NABOVE"] / (df["NABOVE"] + df["NBELOW"]))


def cancer() -> pd.DataFrame:
    df = shuffled(sm.datasets.cancer.load_pandas().data)
    return df.assign(logpop=np.log(df["population"]))


def spector() -> pd.DataFrame:
    return shuffled(sm.datasets.spector.load_pandas().data)


# (name, data, model, statsmodels model, y, X, cuts, rows per parameter asked)
CASES = [
    ("fair logit 4", fair, fm.stats.logit, sm.Logit, "affair", ["rate_marriage", "age", "yrs_married", "children"],
     (0.3, 0.55, 0.8), 10),
    ("fair poisson 8", fair, fm.stats.poisson, sm.Poisson, "children", ["rate_marriage", "age", "religious"],
     (0.1, 0.2, 0.35, 0.5, 0.6, 0.7, 0.85), 10),
    ("star98 ols 3", star98, fm.stats.ols, sm.OLS, "share", ["LOWINC", "PERASIAN", "PERBLACK", "PERHISP"],
     (0.4, 0.7), 10),
    ("cancer poisson 2", cancer, fm.stats.poisson, sm.Poisson, "cancer", ["logpop"], (0.6,), 10),
    ("spector logit 2", spector, fm.stats.logit, sm.Logit, "GRADE", ["GPA", "PSI"], (0.5,), 5),
    ("spector ols 2", spector, fm.stats.ols, sm.OLS, "GPA", ["TUCE"], (0.45,), 5),
]


def statsmodels_fit(model, part, y, X):
    design = sm.add_constant(part[X], has_constant="add")
    fit = model(part[y], design)
    return fit.fit() if model is sm.OLS else fit.fit(disp=0, method="newton", tol=1e-13, maxiter=200)


def close(a, b, tol=TOL) -> None:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert np.allclose(a, b, rtol=tol, atol=tol * np.max(np.abs(b))), (a, b)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_each_site_equals_statsmodels_on_its_rows(case, config):
    _, load, model, sm_model, y, X, cuts, rows = case
    df = load()
    meta = fm.stats.slma(model, fed(df, config, cuts), y=y, X=X, rows_per_parameter=rows).compute()
    assert list(meta.sites.index) == [f"h{i}" for i in range(len(cuts) + 1)]
    for i, part in enumerate(parts(df, cuts)):
        expected = statsmodels_fit(sm_model, part, y, X)
        close(meta.sites.iloc[i], expected.params)
        close(meta.sites_bse.iloc[i], expected.bse)
        assert meta.nobs.iloc[i] == len(part)


@pytest.mark.parametrize("method, method_re", [("dl", "chi2"), ("pm", "iterated")])
@pytest.mark.parametrize("case", CASES[:4], ids=[c[0] for c in CASES[:4]])
def test_pooled_equals_combine_effects(case, method, method_re):
    _, load, model, _, y, X, cuts, rows = case
    meta = fm.stats.slma(model, fed(load(), cuts=cuts), method=method, y=y, X=X, rows_per_parameter=rows).compute()
    for name in meta.fixed.index:
        with np.errstate(invalid="ignore"):  # statsmodels' square root of its negative tau2
            sm_meta = combine_effects(meta.sites[name].to_numpy(), meta.sites_bse[name].to_numpy() ** 2,
                                      method_re=method_re)
        close(meta.fixed[name], sm_meta.mean_effect_fe, 1e-12)
        close(meta.fixed_bse[name], sm_meta.sd_eff_w_fe, 1e-12)
        close(meta.q[name], sm_meta.q, 1e-12)
        close(meta.i2[name], max(0.0, sm_meta.i2), 1e-12)
        if sm_meta.tau2 > 0:
            close(meta.tau2[name], sm_meta.tau2, 1e-10)
            close(meta.random[name], sm_meta.mean_effect_re, 1e-10)
            close(meta.random_bse[name], sm_meta.sd_eff_w_re, 1e-10)
        else:  # statsmodels leaves a negative tau2; truncated at 0 the random effect is the fixed one
            assert meta.tau2[name] == 0.0
            close(meta.random[name], sm_meta.mean_effect_fe, 1e-12)
    if case[0] == "fair logit 4":
        assert (meta.tau2 > 0).any()  # both branches above are taken: heterogeneity was there to estimate


def test_reml_solves_its_score_equation():
    meta = fm.stats.slma(fm.stats.logit, fed(fair(), cuts=(0.3, 0.55, 0.8)), method="reml", y="affair",
                         X=["rate_marriage", "age", "yrs_married", "children"]).compute()
    assert (meta.tau2 > 0).any() and (meta.tau2 == 0).any()
    for name in meta.fixed.index:
        effect, variance = meta.sites[name].to_numpy(), meta.sites_bse[name].to_numpy() ** 2
        tau2 = meta.tau2[name]
        if tau2 > 0:
            assert abs(reml_score(tau2, effect, variance)) < 1e-8 * np.sum(1 / variance)
        else:
            assert reml_score(0.0, effect, variance) <= 0
        w = 1 / (variance + tau2)
        close(meta.random[name], w @ effect / w.sum(), 1e-12)
        best = minimize_scalar(restricted_nll, bounds=(0.0, 10 * (np.var(effect) + variance.max())),
                               args=(effect, variance), method="bounded", options={"xatol": 1e-14})
        assert restricted_nll(tau2, effect, variance) <= restricted_nll(best.x, effect, variance) + 1e-12


def restricted_nll(tau2, effect, variance):
    """Minus the restricted log-likelihood of a random effects meta-analysis, up to a constant."""
    w = 1 / (variance + tau2)
    mean = w @ effect / w.sum()
    return 0.5 * (np.sum(np.log(variance + tau2)) + np.log(w.sum()) + w @ (effect - mean) ** 2)


def test_one_request_per_server_for_a_logit_over_eight_servers():
    servers: list[fm.Server] = []
    data = fed(fair(), "example/config.yaml", (0.1, 0.2, 0.35, 0.5, 0.6, 0.7, 0.85), servers)
    meta = fm.stats.slma(fm.stats.logit, data, y="affair", X=["rate_marriage", "age", "yrs_married"]).compute()
    assert len(meta.sites) == 8
    assert [s.traffic.requests for s in servers] == [1] * 8


def test_computed_with_other_statistics_in_the_same_request():
    servers: list[fm.Server] = []
    data = fed(fair(), cuts=(0.5,), servers=servers)
    meta, mean = fm.compute(fm.stats.slma(fm.stats.ols, data, y="age", X=["yrs_married"]), data["age"].mean())
    assert [s.traffic.requests for s in servers] == [1, 1]
    close(mean, fair()["age"].mean(), 1e-12)
    assert meta.sites.shape == (2, 2)


@pytest.mark.parametrize("config", CONFIGS)
def test_a_site_with_too_few_rows_per_parameter_is_refused(config):
    df = spector()  # 32 rows: a site of 8 rows, 3 parameters
    data = fed(df, config, cuts=(0.25,))
    with pytest.raises(fm.PrivacyError, match="rows per parameter") as refused:
        fm.stats.slma(fm.stats.logit, data, y="GRADE", X=["GPA", "PSI"], rows_per_parameter=3).compute()
    assert refused.value.server.startswith("h0")
    # the analyst cannot go below the server's floor of 3
    small = fed(df.iloc[:16], config, cuts=(0.5,))  # 8 rows, 3 parameters: 2.7 rows each
    with pytest.raises(fm.PrivacyError, match="at least 3 complete rows per parameter"):
        fm.stats.slma(fm.stats.ols, small, y="GPA", X=["TUCE", "PSI"], rows_per_parameter=1).compute()


def test_a_server_sets_a_stricter_floor_in_its_config():
    config = load_config("example/config-exact.yaml")
    strict = dataclasses.replace(config, aggregates={
        **config.aggregates, "site_fit": Aggregate("site_fit", private.site_fit_with(10), public.site_fit)})
    df = spector()
    sources = []
    for i, part in enumerate(parts(df, (0.5,))):
        server = fm.Server(config=strict if i == 1 else "example/config-exact.yaml")
        server["d"] = part.reset_index(drop=True)
        sources.append(fm.Simulation(server, "d", name=f"h{i}"))
    data = fm.FedData(sources, config="example/config-exact.yaml")
    with pytest.raises(fm.PrivacyError, match="at least 10 complete rows") as refused:  # 16 rows < 10 * 2
        fm.stats.slma(fm.stats.ols, data, y="GPA", X=["TUCE"], rows_per_parameter=4).compute()
    assert refused.value.server.startswith("h1")


def test_an_indicator_built_in_the_predictors_is_refused_under_privacy():
    df = fair().assign(id=lambda d: np.arange(len(d)))
    data = fed(df, "example/config.yaml", cuts=(0.5,))
    with pytest.raises(fm.PrivacyError, match="fewer than 5"):
        fm.stats.slma(fm.stats.ols, data, y="age", X={"marked": data["yrs_married"] * (data["id"] == 17)}).compute()


def test_separation_on_one_site_is_named():
    df = fair()
    df.loc[df.index[:1000], "affair"] = (df["rate_marriage"].iloc[:1000] < 3).astype(float)  # site 0 separated
    with pytest.raises(fm.TaskFailed, match="separation") as failed:
        fm.stats.slma(fm.stats.logit, fed(df, cuts=(0.15,)), y="affair", X=["rate_marriage"]).compute()
    assert failed.value.server.startswith("h0")


def test_misuse_is_an_argument_error():
    data = fed(fair())
    with pytest.raises(fm.ArgumentError, match="fm.stats.ols"):
        fm.stats.slma(fm.stats.mean, data, y="age", X=["children"])
    with pytest.raises(fm.ArgumentError, match="reml"):
        fm.stats.slma(fm.stats.ols, data, method="hksj", y="age", X=["children"])
    with pytest.raises(fm.DataError, match="at least two sites"):
        fm.stats.slma(fm.stats.ols, fed(fair(), cuts=()), y="age", X=["children"]).compute()


def test_result_reports_and_forest_plot():
    meta = fm.stats.slma(fm.stats.poisson, fed(cancer(), cuts=(0.3, 0.6)), y="cancer", X=["logpop"]).compute()
    summary = meta.summary()
    assert list(summary.index) == ["Intercept", "logpop"] and "tau2" in summary.columns
    assert "SLMA · 3 sites · dl" in repr(meta) and "<table" in meta._repr_html_()
    ci = meta.conf_int()
    assert (ci["lower"] < meta.random).all() and (meta.random < ci["upper"]).all()
    ax = meta.plot()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["h0", "h1", "h2", "fixed effect", "random effects (dl)"]
    assert len(ax.patches) == 2  # the two pooled diamonds
    diamond = ax.patches[0].get_xy()
    close([diamond[:, 0].min(), diamond[:, 0].max()],
          [meta.fixed["logpop"] - 1.959963984540054 * meta.fixed_bse["logpop"],
           meta.fixed["logpop"] + 1.959963984540054 * meta.fixed_bse["logpop"]], 1e-9)
    squares = ax.collections[-1].get_offsets()
    close(squares[:, 0], meta.sites["logpop"])
    with pytest.raises(fm.ArgumentError, match="no coefficient"):
        meta.plot("age")


def test_two_predictors_that_differ_on_one_row_are_refused_side_by_side():
    # site_fit is judged as the other sums released side by side: a pair proportional on all rows but
    # one would let the site's coefficients depend on that row
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"id": np.arange(300), "y": rng.normal(size=300), "x": rng.normal(size=300),
                       "age": rng.integers(20, 90, 300).astype(float)})
    sources = []
    for i, (a, b) in enumerate([(0, 150), (150, 300)]):
        server = fm.Server(config="example/config.yaml")
        server["d"] = df.iloc[a:b].reset_index(drop=True)
        sources.append(fm.Simulation(server, "d", name=f"h{i}"))
    d = fm.FedData(sources, config="example/config.yaml")
    with pytest.raises(fm.PrivacyError, match="differs from a multiple of another input"):
        fm.stats.slma(fm.stats.ols, d, y="y",
                      X={"a": d["age"] * (d["id"] <= 17), "b": d["age"] * (d["id"] < 17), "x": d["x"]}).compute()


# -- fm.stats.glm per site (families and links of fedmed.ops.private.GLM_FAMILIES / GLM_LINKS) -------------

SM_FAMILIES = {"gaussian": sm.families.Gaussian, "binomial": sm.families.Binomial, "poisson": sm.families.Poisson,
               "gamma": sm.families.Gamma}
SM_LINKS = {"identity": sm.families.links.Identity, "log": sm.families.links.Log, "logit": sm.families.links.Logit,
            "inverse_power": sm.families.links.InversePower}

# (name, data, family, link, y, X, cuts)
GLM_CASES = [
    ("star98 gamma log 3", star98, "gamma", "log", "AVSALK", ["PTRATIO", "LOWINC"], (0.4, 0.7)),
    ("star98 gamma inverse 2", star98, "gamma", "inverse_power", "AVSALK", ["PTRATIO", "LOWINC"], (0.5,)),
    ("fair binomial identity 3", fair, "binomial", "identity", "affair", ["age", "educ"], (0.3, 0.6)),
    ("fair binomial log 3", fair, "binomial", "log", "affair", ["age", "educ"], (0.3, 0.6)),
    ("cancer poisson log 2", cancer, "poisson", "log", "cancer", ["logpop"], (0.6,)),
    ("star98 gaussian log 3", star98, "gaussian", "log", "share", ["LOWINC", "PERBLACK"], (0.3, 0.65)),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("case", GLM_CASES, ids=[c[0] for c in GLM_CASES])
def test_glm_each_site_equals_statsmodels_glm(case, config):
    _, load, family, link, y, X, cuts = case
    df = load()
    meta = fm.stats.slma(fm.stats.glm, fed(df, config, cuts), y=y, X=X, family=family, link=link).compute()
    for i, part in enumerate(parts(df, cuts)):
        model = sm.GLM(part[y], sm.add_constant(part[X]), family=SM_FAMILIES[family](SM_LINKS[link]()))
        # statsmodels' IRLS stops on the deviance's change, flat at the optimum: on fair's identity link it stops
        # with a score 1000 times fedmed's and coefficients 1e-7 apart. Its Newton method finds the optimum; IRLS
        # started there gives statsmodels' (expected information) standard errors.
        optimum = model.fit(method="newton", tol=1e-14, maxiter=200)
        expected = model.fit(start_params=optimum.params, tol=1e-14, maxiter=200)
        assert optimum.mle_retvals["converged"] and 0 < expected.fittedvalues.min()  # converged inside the range
        assert family != "binomial" or expected.fittedvalues.max() < 1
        close(meta.sites.iloc[i], expected.params)
        close(meta.sites_bse.iloc[i], expected.bse)
        assert meta.nobs.iloc[i] == len(part)
    pooled = combine_effects(meta.sites[X[0]].to_numpy(), meta.sites_bse[X[0]].to_numpy() ** 2, method_re="chi2")
    assert meta.fixed[X[0]] == pytest.approx(pooled.mean_effect_fe, rel=1e-12)


def test_glm_family_and_link_are_checked_before_any_request():
    data = fed(fair())
    with pytest.raises(fm.ArgumentError, match="slma: the gamma family takes the links"):
        fm.stats.slma(fm.stats.glm, data, y="age", X=["children"], family="gamma", link="logit")
    with pytest.raises(fm.ArgumentError, match="family, link, offset, exposure, freq_weights, var_weights, "
                                               "not \\['weights'\\]"):
        fm.stats.slma(fm.stats.glm, data, y="age", X=["children"], family="gamma", weights="age")
    with pytest.raises(fm.ArgumentError, match="poisson per site takes offset, exposure, not \\['freq_weights'\\]"):
        fm.stats.slma(fm.stats.poisson, data, y="children", X=["age"], freq_weights="age")
    with pytest.raises(fm.errors.FedMedError, match="slma: offset is a column name or a column of the data"):
        fm.stats.slma(fm.stats.glm, data, y="age", X=["children"], family="gamma", offset=[1.0, 2.0])
    with pytest.raises(fm.ArgumentError, match="takes no \\['family'\\]"):
        fm.stats.slma(fm.stats.logit, data, y="affair", X=["age"], family="binomial")


def test_glm_site_whose_probabilities_reach_one_fails_with_the_reason():
    # statsmodels does not converge on any of these sites (probabilities up to 1.0006, 1.24, 1.07 when it stops)
    with pytest.raises(fm.TaskFailed, match="edge of their range") as failed:
        fm.stats.slma(fm.stats.glm, fed(fair(), cuts=(0.3, 0.6)), y="affair", X=["rate_marriage", "yrs_married"],
                      family="binomial", link="log").compute()
    assert failed.value.server.startswith("h")


# -- fm.stats.glm per site with offsets, exposures and weights (GLM_ROLES) -----------------------------------


def scotland() -> pd.DataFrame:
    df = shuffled(sm.datasets.scotland.load_pandas().data)
    households = np.random.default_rng(5).integers(1, 6, len(df)).astype(float)
    return df.assign(households=households, logmor=np.log(df["MOR"]))


def trials(d):
    """The number of tests behind star98's share (works on a DataFrame and on FedData alike)."""
    return d["NABOVE"] + d["NBELOW"]


def weighted(n: int = 900, seed: int = 8) -> pd.DataFrame:
    """Synthetic rows with integer frequency weights, positive variance weights and an exposure."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.uniform(0, 2, n)
    t = rng.uniform(0.5, 3.0, n)
    return pd.DataFrame({"x1": x1, "x2": x2, "t": t, "fw": rng.integers(1, 6, n).astype(float),
                         "vw": rng.uniform(0.5, 2.0, n), "cost": rng.gamma(2.0, np.exp(0.3 + 0.2 * x1) / 2.0),
                         "count": rng.poisson(t * np.exp(0.2 + 0.4 * x1 - 0.3 * x2)).astype(float),
                         "level": 1.0 + 0.5 * x1 - x2 + rng.normal(size=n)})


# (name, data, family, link, y, X, roles (column names or functions of the data), cuts, rows per parameter)
GLM_ROLE_CASES = [
    ("cancer poisson exposure 3", cancer, "poisson", "log", "cancer", ["logpop"], {"exposure": "population"},
     (0.3, 0.65), 10),
    ("cancer poisson offset and exposure 2", cancer, "poisson", "log", "cancer", ["logpop"],
     {"offset": lambda d: d["population"] / 100000, "exposure": "population"}, (0.6,), 10),
    ("scotland gamma inverse var_weights 2", scotland, "gamma", "inverse_power", "YES", ["COUTAX", "UNEMPF"],
     {"var_weights": lambda d: d["ACT"] / 80}, (0.4,), 3),
    ("scotland gamma log offset freq_weights 2", scotland, "gamma", "log", "YES", ["UNEMPF", "AGE"],
     {"offset": lambda d: d["logmor"] / 10, "freq_weights": "households"}, (0.55,), 3),
    ("star98 binomial var_weights 3", star98, "binomial", "logit", "share", ["LOWINC", "PERASIAN", "PERBLACK"],
     {"var_weights": trials}, (0.35, 0.7), 10),
    ("star98 binomial freq_weights 2", star98, "binomial", "logit", "share", ["LOWINC", "PERMINTE"],
     {"freq_weights": trials}, (0.45,), 10),
    ("weighted gaussian freq_weights 3", weighted, "gaussian", "identity", "level", ["x1", "x2"],
     {"freq_weights": "fw"}, (0.2, 0.55), 10),
    ("weighted gamma log all roles 2", weighted, "gamma", "log", "cost", ["x1", "x2"],
     {"offset": lambda d: d["x2"] / 10, "exposure": "t", "freq_weights": "fw", "var_weights": "vw"}, (0.3,), 10),
    ("weighted poisson exposure freq_weights 4", weighted, "poisson", "log", "count", ["x1", "x2"],
     {"exposure": "t", "freq_weights": "fw"}, (0.15, 0.4, 0.7), 10),
]


def role_values(roles: dict, frame) -> dict:
    """Each role's column: by name, or a function of the data (FedData for fedmed, a DataFrame for statsmodels)."""
    return {role: frame[item] if isinstance(item, str) else item(frame) for role, item in roles.items()}


def statsmodels_glm(part: pd.DataFrame, family: str, link: str, y: str, X: list[str], roles: dict):
    """statsmodels' GLM on ``part`` with its default covariance, at its Newton optimum (as the glm cases above)."""
    model = sm.GLM(part[y], sm.add_constant(part[X], has_constant="add"),
                   family=SM_FAMILIES[family](SM_LINKS[link]()), **role_values(roles, part))
    optimum = model.fit(method="newton", tol=1e-14, maxiter=200)
    assert optimum.mle_retvals["converged"]
    return model.fit(start_params=optimum.params, tol=1e-14, maxiter=200)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("case", GLM_ROLE_CASES, ids=[c[0] for c in GLM_ROLE_CASES])
def test_glm_with_offsets_and_weights_each_site_equals_statsmodels_glm(case, config):
    _, load, family, link, y, X, roles, cuts, rows = case
    df = load()
    data = fed(df, config, cuts)
    meta = fm.stats.slma(fm.stats.glm, data, y=y, X=X, family=family, link=link, rows_per_parameter=rows,
                         **role_values(roles, data)).compute()
    for i, part in enumerate(parts(df, cuts)):
        expected = statsmodels_glm(part, family, link, y, X, roles)
        close(meta.sites.iloc[i], expected.params)
        close(meta.sites_bse.iloc[i], expected.bse)
        assert meta.nobs.iloc[i] == len(part)  # rows, not the sum of the frequency weights


@pytest.mark.parametrize("roles", [{"exposure": "population"}, {"offset": "logpop"}])
def test_poisson_with_an_exposure_or_offset_is_the_poisson_glm_per_site(roles):
    df, cuts = cancer(), (0.25, 0.6)
    data = fed(df, "example/config.yaml", cuts)
    meta = fm.stats.slma(fm.stats.poisson, data, y="cancer", X=[], **roles).compute()
    assert list(meta.sites.columns) == ["Intercept"]
    for i, part in enumerate(parts(df, cuts)):
        expected = statsmodels_glm(part, "poisson", "log", "cancer", [], roles)
        close(meta.sites.iloc[i], expected.params)
        close(meta.sites_bse.iloc[i], expected.bse)


def test_frequency_weights_fit_as_repeated_rows():
    df, cuts = weighted(300, 9), (0.4,)
    meta = fm.stats.slma(fm.stats.glm, fed(df, cuts=cuts), y="level", X=["x1", "x2"], freq_weights="fw").compute()
    for i, part in enumerate(parts(df, cuts)):
        repeated = part.loc[part.index.repeat(part["fw"].astype(int))]
        expected = sm.OLS(repeated["level"], sm.add_constant(repeated[["x1", "x2"]])).fit()
        close(meta.sites.iloc[i], expected.params)
        close(meta.sites_bse.iloc[i], expected.bse)  # the scale's degrees of freedom are sum(fw) - p


def test_glm_with_weights_one_request_per_server_under_privacy():
    servers: list[fm.Server] = []
    data = fed(weighted(), "example/config.yaml", (0.3, 0.6), servers)
    meta = fm.stats.slma(fm.stats.glm, data, y="count", X=["x1"], family="poisson", exposure="t",
                         freq_weights="fw").compute()
    assert len(meta.sites) == 3
    assert [s.traffic.requests for s in servers] == [1] * 3


def test_glm_site_fit_names_its_roles():
    df = weighted(200)
    fit = private.site_fit(df["count"], "glm/poisson/log/offset,freq_weights", True, 10.0, 50, 1e-10,
                           np.log(df["t"]), df["fw"], df["x1"])
    expected = sm.GLM(df["count"], sm.add_constant(df[["x1"]]), family=sm.families.Poisson(),
                      exposure=df["t"], freq_weights=df["fw"]).fit(tol=1e-13)
    close(fit[1], expected.params, 1e-7)
    assert fit[0] == len(df) and len(fit) == 3
    for wrong in ("glm/poisson/log/freq_weights,offset", "glm/poisson/log/offset,offset", "glm/poisson/log/",
                  "glm/poisson/log/weights", "glm/poisson/log/offset/x"):
        with pytest.raises(fm.errors.OperationError, match="unknown model"):
            private.site_fit(df["count"], wrong, True, 10.0, 50, 1e-10, df["t"], df["fw"], df["x1"])


def test_bad_exposures_and_weights_are_refused():
    df = weighted(400, 3)
    df.loc[7, "t"] = -1.0  # its log is NaN, which a server reads as missing: the client counts it as glm does
    with pytest.raises(fm.DataError, match="slma: exposure is 0 or negative on 1 rows"):
        fm.stats.slma(fm.stats.glm, fed(df), y="count", X=["x1"], family="poisson", exposure="t").compute()
    df.loc[7, "t"] = 0.0  # its log is -inf: the server refuses the infinite offset
    with pytest.raises(fm.TaskFailed, match="exposure of 0") as failed:
        fm.stats.slma(fm.stats.poisson, fed(df), y="count", X=["x1"], exposure="t").compute()
    assert failed.value.server.startswith("h0")
    df.loc[7, "t"], df.loc[390, "vw"] = 1.0, -0.5
    with pytest.raises(fm.TaskFailed, match="var_weights are negative") as failed:
        fm.stats.slma(fm.stats.glm, fed(df), y="cost", X=["x1"], family="gamma", var_weights="vw").compute()
    assert failed.value.server.startswith("h2")


@pytest.mark.parametrize("config", CONFIGS)
def test_rows_of_zero_weight_do_not_count_towards_the_floor(config):
    df = weighted(400, 4)
    df["flag"] = 0.0
    df.loc[df.index[:12], "flag"] = 1.0  # a raw column: 12 rows of h0 (200 rows) weigh, 3 parameters
    data = fed(df, config, cuts=(0.5,))
    with pytest.raises(fm.PrivacyError, match="at least 5 complete rows of positive weight per parameter") as refused:
        fm.stats.slma(fm.stats.glm, data, y="level", X=["x1", "x2"], freq_weights="flag",
                      rows_per_parameter=5).compute()
    assert refused.value.server.startswith("h0")


@pytest.mark.parametrize("role", ["freq_weights", "var_weights", "offset"])
def test_a_weight_that_singles_out_a_row_is_refused_under_privacy(role):
    df = weighted(400, 6).assign(id=lambda d: np.arange(len(d), dtype=float))
    data = fed(df, "example/config.yaml", cuts=(0.5,))
    selector = 1000 * (data["id"] == 17) + 1  # one row weighs as a thousand: the site's fit would be that row's
    with pytest.raises(fm.PrivacyError, match="fewer than 5") as refused:
        fm.stats.slma(fm.stats.glm, data, y="level", X=["x1", "x2"], **{role: selector}).compute()
    assert refused.value.server.startswith("h0")
    exact = fed(df, "example/config-exact.yaml", cuts=(0.5,))  # without the policies the same request is answered
    fm.stats.slma(fm.stats.glm, exact, y="level", X=["x1", "x2"], **{role: 1000 * (exact["id"] == 17) + 1}).compute()


# -- Cox models per site (fm.stats.coxph) ------------------------------------------------------------


def heart() -> pd.DataFrame:
    return shuffled(sm.datasets.heart.load_pandas().data)


def tied(n: int = 600, seed: int = 1) -> pd.DataFrame:
    """Survival times on a coarse grid (many ties), a fifth of the rows censored, two predictors."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.binomial(1, 0.4, n).astype(float)
    time = np.ceil(rng.exponential(np.exp(-(0.5 * x1 - 0.7 * x2))) * 8)
    return pd.DataFrame({"t": time, "e": rng.binomial(1, 0.8, n), "x1": x1, "x2": x2})


# (name, data, duration, event, X, cuts, rows per parameter asked)
COX_CASES = [
    ("heart 2", heart, "survival", "censors", ["age"], (0.45,), 10),
    ("heart 3", heart, "survival", "censors", ["age"], (0.3, 0.65), 5),
    ("tied 2", tied, "t", "e", ["x1", "x2"], (0.6,), 10),
    ("tied 4", tied, "t", "e", ["x1", "x2"], (0.2, 0.45, 0.7), 10),
]


def phreg(part: pd.DataFrame, duration: str, event: str, X: list[str], ties: str):
    return PHReg(part[duration], part[X], status=part[event], ties=ties).fit()


@pytest.mark.parametrize("ties", ["breslow", "efron"])
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("case", COX_CASES, ids=[c[0] for c in COX_CASES])
def test_cox_each_site_equals_phreg_on_its_rows(case, config, ties):
    _, load, duration, event, X, cuts, rows = case
    df = load()
    meta = fm.stats.slma(fm.stats.coxph, fed(df, config, cuts), duration=duration, event=event, X=X, ties=ties,
                         rows_per_parameter=rows).compute()
    assert list(meta.sites.columns) == X  # no intercept: the baseline hazard absorbs it
    for i, part in enumerate(parts(df, cuts)):
        expected = phreg(part, duration, event, X, ties)
        np.testing.assert_allclose(meta.sites.iloc[i], expected.params, rtol=TOL)
        np.testing.assert_allclose(meta.sites_bse.iloc[i], expected.bse, rtol=TOL)
        assert meta.nobs.iloc[i] == len(part)


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_cox_pooled_equals_combine_effects_of_the_phreg_fits(ties):
    df, cuts, X = tied(), (0.2, 0.45, 0.7), ["x1", "x2"]
    meta = fm.stats.slma(fm.stats.coxph, fed(df, cuts=cuts), duration="t", event="e", X=X, ties=ties).compute()
    fits = [phreg(part, "t", "e", X, ties) for part in parts(df, cuts)]
    for j, name in enumerate(X):
        with np.errstate(invalid="ignore"):
            expected = combine_effects(np.array([f.params[j] for f in fits]), np.array([f.bse[j] ** 2 for f in fits]),
                                       method_re="chi2")
        close(meta.fixed[name], expected.mean_effect_fe)
        close(meta.fixed_bse[name], expected.sd_eff_w_fe)
        close(meta.q[name], expected.q)
        close(meta.random[name], expected.mean_effect_re if expected.tau2 > 0 else expected.mean_effect_fe)


def test_cox_site_answer_holds_only_counts_coefficients_and_covariance():
    df = tied(200, 3)
    frame = df.assign(e=df["e"].astype(float))
    answer = private.site_fit(frame["t"], "cox/efron", False, 10.0, 50, 1e-10, frame["e"], frame["x1"], frame["x2"])
    assert answer[0] == len(df) and answer[3] == int(df["e"].sum())  # n, coefficients, covariance, events
    assert len(answer) == 4 and np.shape(answer[1]) == (2,) and np.shape(answer[2]) == (2, 2)


def test_cox_one_request_per_server_under_privacy():
    servers: list[fm.Server] = []
    data = fed(tied(), "example/config.yaml", (0.25, 0.5, 0.75), servers)
    meta = fm.stats.slma(fm.stats.coxph, data, duration="t", event="e", X=["x1", "x2"], ties="efron").compute()
    assert len(meta.sites) == 4
    assert [s.traffic.requests for s in servers] == [1] * 4


@pytest.mark.parametrize("config", CONFIGS)
def test_a_cox_site_with_too_few_rows_or_events_per_coefficient_is_refused(config):
    df = tied(400, 2)
    data = fed(df, config, cuts=(0.9,))  # 40 rows on h1, 2 coefficients
    with pytest.raises(fm.PrivacyError, match="at least 25 complete rows per parameter") as refused:
        fm.stats.slma(fm.stats.coxph, data, duration="t", event="e", X=["x1", "x2"], rows_per_parameter=25).compute()
    assert refused.value.server.startswith("h1")
    censored = df.assign(e=np.where(np.arange(len(df)) < 300, df["e"], 0))  # h1: 100 rows, no events
    data = fed(censored, config, cuts=(0.75,))
    with pytest.raises(fm.PrivacyError, match="at least 10 events per parameter") as refused:
        fm.stats.slma(fm.stats.coxph, data, duration="t", event="e", X=["x1", "x2"]).compute()
    assert refused.value.server.startswith("h1")


def test_cox_misuse_is_an_argument_error():
    data = fed(tied())
    with pytest.raises(fm.ArgumentError, match="outcome is duration and event; give event"):
        fm.stats.slma(fm.stats.coxph, data, duration="t", X=["x1"])
    with pytest.raises(fm.ArgumentError, match="not \\['y'\\]"):
        fm.stats.slma(fm.stats.coxph, data, y="t", duration="t", event="e", X=["x1"])
    with pytest.raises(fm.ArgumentError, match="outcome is y, not \\[.duration.\\]"):
        fm.stats.slma(fm.stats.ols, data, duration="t", X=["x1"])
    with pytest.raises(fm.ArgumentError, match="no intercept"):
        fm.stats.slma(fm.stats.coxph, data, duration="t", event="e", X=["x1"], intercept=True)
    with pytest.raises(fm.ArgumentError, match="ties"):
        fm.stats.slma(fm.stats.coxph, data, duration="t", event="e", X=["x1"], ties="exact")
    with pytest.raises(fm.ArgumentError, match="takes ties, not \\['strata'\\]"):
        fm.stats.slma(fm.stats.coxph, data, duration="t", event="e", X=["x1"], strata="server")
    with pytest.raises(fm.TaskFailed, match="recode"):
        fm.stats.slma(fm.stats.coxph, fed(tied().assign(e=lambda d: d["e"] * 2)), duration="t", event="e",
                      X=["x1"]).compute()


def test_a_cox_site_needs_ten_events_per_coefficient_whatever_the_analyst_asks():
    rng = np.random.default_rng(4)
    n = 200
    frame = pd.DataFrame({"t": rng.exponential(10, n).round(1), "x": rng.normal(size=n)})
    frame["e"] = 0.0
    frame.loc[:7, "e"] = 1.0  # 8 events on the first site: above k = 5, below 10 per coefficient
    frame.loc[100:150, "e"] = 1.0
    sources = []
    for i, (a, b) in enumerate([(0, 100), (100, 200)]):
        server = fm.Server(config="example/config-exact.yaml")
        server["d"] = frame.iloc[a:b].reset_index(drop=True)
        sources.append(fm.Simulation(server, "d", name=f"h{i}"))
    data = fm.FedData(sources, config="example/config-exact.yaml")
    with pytest.raises(fm.PrivacyError, match="events"):
        fm.stats.slma(fm.stats.coxph, data, duration="t", event="e", X=["x"], rows_per_parameter=3).compute()
