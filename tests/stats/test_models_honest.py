"""Models on real, messy data under the privacy config: statsmodels' numbers or a FedMed error, never a wrong number.

``ols``, ``logit`` and ``poisson`` are compared with statsmodels' ``OLS``,
``Logit`` and ``Poisson`` on the pooled complete rows (params and bse to a
relative 1e-6), on data shipped with statsmodels split unevenly over three
servers, under ``example/config-exact.yaml`` and ``example/config.yaml``.
Outcomes and predictors may be expressions (``data["diabetes"] == "yes"``,
``data["age"] / 10``). Where the pooled fit does not exist (collinear
design, separation, an outcome the family cannot take, no complete rows) or
a server withholds what it needs, the model raises a ``FedMedError`` that
names the columns, never a bare numpy or Python exception.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats as sps
from statsmodels.tools.sm_exceptions import ConvergenceWarning, HessianInversionWarning, PerfectSeparationWarning
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fedmed as fm
from fedmed.stats.regression import ConvergenceWarning as FedMedConvergenceWarning

EXACT, PRIVATE = "example/config-exact.yaml", "example/config.yaml"
CONFIGS = [EXACT, PRIVATE]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::fedmed.PrivacyWarning")


def fed(df: pd.DataFrame, config: str = PRIVATE, cuts: tuple[float, ...] = (0.5, 0.8)) -> fm.FedData:
    """``df`` split at ``cuts`` (fractions of its rows) over in-process servers."""
    n = len(df)
    bounds = [0] + [int(c * n) for c in cuts] + [n]
    sources = []
    for i in range(len(bounds) - 1):
        server = fm.Server(config=config)
        server["d"] = df.iloc[bounds[i]:bounds[i + 1]].reset_index(drop=True)
        sources.append(fm.Simulation(server, "d", name=f"h{i}"))
    return fm.FedData(sources, config=config)


def reference(kind: str, y: pd.Series, X: pd.DataFrame) -> Any:
    """statsmodels on the pooled complete rows, with a constant named as FedMed names it."""
    rows = pd.concat([y.rename("__y"), X], axis=1).dropna()
    design = sm.add_constant(rows.drop(columns="__y"), has_constant="add").rename(columns={"const": "Intercept"})
    if kind == "ols":
        return sm.OLS(rows["__y"], design).fit()
    model = sm.Logit if kind == "logit" else sm.Poisson
    return model(rows["__y"].astype(float), design).fit(disp=0, maxiter=100)


def agree(fit: Any, ref: Any, rel: float = 1e-6) -> None:
    """Same coefficients and standard errors; a standard error neither can give (an exact fit) is nan or inf in both."""
    assert list(fit.params.index) == list(ref.params.index)
    theirs = ref.params.to_numpy(float)
    # a coefficient that is 0 (all counts equal, say) is rounding noise in statsmodels: judged on the largest
    np.testing.assert_allclose(fit.params.to_numpy(float), theirs, rtol=rel, atol=1e-12 * (1 + np.abs(theirs).max()))
    finite = lambda values: np.where(np.isfinite(values), values, np.nan)  # noqa: E731
    np.testing.assert_allclose(finite(fit.bse.to_numpy(float)), finite(ref.bse.to_numpy(float)), rtol=rel, atol=0)
    assert fit.nobs == ref.nobs


def fit_model(kind: str, data: fm.FedData, y: Any, X: Any) -> Any:
    return getattr(fm.stats, kind)(data, y=y, X=X).compute()


# -- real data shipped with statsmodels, split unevenly over three servers ----------------------------------------

@pytest.mark.parametrize("config", CONFIGS)
def test_logit_on_spector_equals_statsmodels(config):
    df = sm.datasets.spector.load_pandas().data
    data = fed(df, config, cuts=(0.375, 0.6875))  # 12, 10 and 10 students
    fit = fm.stats.logit(data, y="GRADE", X=["GPA", "TUCE", "PSI"]).compute()
    agree(fit, reference("logit", df["GRADE"], df[["GPA", "TUCE", "PSI"]]))
    assert fit.converged


@pytest.mark.parametrize("config", CONFIGS)
def test_ols_on_longley_equals_statsmodels(config):
    # longley is the classic ill-conditioned regression: it must still be exact, not refused
    df = sm.datasets.longley.load_pandas().data
    columns = ["GNPDEFL", "GNP", "UNEMP", "ARMED", "POP", "YEAR"]
    fit = fm.stats.ols(fed(df, config, cuts=(0.4, 0.7)), y="TOTEMP", X=columns).compute()
    agree(fit, reference("ols", df["TOTEMP"], df[columns]))


@pytest.mark.parametrize("config", CONFIGS)
def test_ols_and_logit_on_fair_with_expressions_equal_statsmodels(config):
    df = sm.datasets.fair.load_pandas().data
    data = fed(df, config, cuts=(0.2, 0.9))
    X = {"rate_marriage": data["rate_marriage"], "age/10": data["age"] / 10, "yrs_married": "yrs_married"}
    pooled = pd.DataFrame({"rate_marriage": df.rate_marriage, "age/10": df.age / 10, "yrs_married": df.yrs_married})
    agree(fm.stats.ols(data, y=data["affairs"], X=X).compute(), reference("ols", df["affairs"], pooled))
    fit = fm.stats.logit(data, y=data["affairs"] > 0, X=X).compute()
    agree(fit, reference("logit", (df["affairs"] > 0).astype(float), pooled))


@pytest.mark.parametrize("config", CONFIGS)
def test_poisson_of_counts_far_from_one_equals_statsmodels(config):
    # cancer counts up to 360 against log population: a Newton step from beta = 0 overshoots to
    # exp(-300) and diverged (converged=False, params off by a factor 60) before the fit started
    # from the intercept-only model, as statsmodels does
    df = sm.datasets.cancer.load_pandas().data
    data = fed(df, config)
    fit = fm.stats.poisson(data, y="cancer", X={"log_pop": data["population"].log()}).compute()
    agree(fit, reference("poisson", df["cancer"], pd.DataFrame({"log_pop": np.log(df["population"])})))
    assert fit.converged and fit.iterations <= 8


@pytest.mark.parametrize("config", CONFIGS)
def test_poisson_on_star98_equals_statsmodels(config):
    df = sm.datasets.star98.load_pandas().data
    columns = ["LOWINC", "PERASIAN", "PERBLACK", "PERHISP", "PTRATIO"]
    data = fed(df, config, cuts=(0.15, 0.55))
    fit = fm.stats.poisson(data, y=data["NABOVE"] / 10, X=columns).compute()
    agree(fit, reference("poisson", df["NABOVE"] / 10, df[columns]))


# -- expressions as y and X --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clinic() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    n = 400
    df = pd.DataFrame({"age": rng.integers(30, 80, n).astype(float), "bmi": rng.normal(27, 4, n).round(1),
                       "sex": rng.choice(["F", "M"], n)})
    risk = 1 / (1 + np.exp(-(-7 + 0.07 * df.age + 0.08 * df.bmi)))
    df["diabetes"] = np.where(rng.random(n) < risk, "yes", "no")
    df["visits"] = rng.poisson(np.exp(-1 + 0.02 * df.age)).astype(float)
    df.loc[rng.choice(n, 12, replace=False), "bmi"] = np.nan
    return df


@pytest.mark.parametrize("config", CONFIGS)
def test_text_outcome_compared_to_yes_was_a_key_error(clinic, config):
    # data["diabetes"] == "yes" as y was taken as a row filter of the whole table: glm_step of a
    # table came back per column, and the fit failed with a bare KeyError: 'hessian'
    data = fed(clinic, config)
    fit = fm.stats.logit(data, y=data["diabetes"] == "yes", X={"age": data["age"], "bmi": data["bmi"] / 10}).compute()
    pooled = pd.DataFrame({"age": clinic.age, "bmi": clinic.bmi / 10})
    agree(fit, reference("logit", (clinic.diabetes == "yes").astype(float), pooled))


@pytest.mark.parametrize("kind, y", [("ols", "bmi"), ("logit", "yes"), ("poisson", "visits")])
def test_a_list_mixing_names_and_columns_names_each_after_its_column(clinic, kind, y):
    data = fed(clinic)
    outcome = data["diabetes"] == "yes" if y == "yes" else data[y]
    predictors = ["age", data["visits"] if kind != "poisson" else data["bmi"]]
    fit = fit_model(kind, data, outcome, predictors)
    named = ["age", "visits" if kind != "poisson" else "bmi"]
    pooled_y = (clinic.diabetes == "yes").astype(float) if y == "yes" else clinic[y]
    agree(fit, reference(kind, pooled_y, clinic[named]))


@pytest.mark.parametrize("kind", ["ols", "logit", "poisson"])
def test_an_unnamed_expression_asks_for_a_dict(clinic, kind):
    data = fed(clinic, EXACT)
    with pytest.raises(fm.FedMedError, match="has no name; give X as a dict"):
        fit_model(kind, data, "visits", ["age", data["bmi"] / 10])


@pytest.mark.parametrize("X, message", [
    (lambda d: ["age", d["age"]], "'age' repeated"),
    (lambda d: {"Intercept": d["age"]}, "from 'Intercept'"),
    (lambda d: {"age": 3}, "not int"),
    (lambda d: {"age": fed(pd.DataFrame({"age": [1.0] * 9}), EXACT)["age"]}, "other sources"),
])
def test_predictors_that_cannot_be_named_or_placed_are_refused(clinic, X, message):
    data = fed(clinic, EXACT)
    for kind in ("ols", "logit"):
        with pytest.raises(fm.FedMedError, match=message):
            fit_model(kind, data, "visits", X(data))


def test_rows_whose_text_outcome_is_missing_can_be_left_out(clinic):
    # data["diabetes"] == "yes" is False where diabetes is missing (as in pandas); filtering the
    # data first leaves those rows out, and every column of the model is read from the filtered rows
    df = clinic.copy()
    df.loc[::9, "diabetes"] = None
    data = fed(df)
    known = data[data["diabetes"].notna()]
    fit = fm.stats.logit(known, y=known["diabetes"] == "yes", X=["age", "bmi"]).compute()
    rows = df[df.diabetes.notna()]
    agree(fit, reference("logit", (rows.diabetes == "yes").astype(float), rows[["age", "bmi"]]))


@pytest.mark.parametrize("config", CONFIGS)
def test_categorical_keeps_working_next_to_expressions(clinic, config):
    data = fed(clinic, config)
    fit = fm.stats.ols(data, y="bmi", X={"age/10": data["age"] / 10, "sex": "sex"}, categorical={"sex": ["F", "M"]}).compute()
    pooled = pd.DataFrame({"age/10": clinic.age / 10, "sex[T.M]": (clinic.sex == "M").astype(float)})
    agree(fit, reference("ols", clinic.bmi, pooled))
    with pytest.raises(fm.FedMedError, match="not predictors in X"):
        fm.stats.ols(data, y="bmi", X=["age"], categorical=["sex"])


# -- no pooled fit: a FedMed error naming the columns --------------------------------------------------------------

@pytest.fixture(scope="module")
def degenerate() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n = 200
    x, z = rng.normal(0, 1, n), rng.normal(0, 1, n)
    return pd.DataFrame({
        "x": x, "z": z, "w": x + 2 * z, "five": 5.0, "zero": 0.0, "big": 1e9 + rng.normal(0, 1e-3, n),
        "coin": (rng.random(n) < 0.4).astype(float), "count": rng.poisson(2.0, n).astype(float),
        "above": (x > 0).astype(float), "high": (x > 1).astype(float),
        "quasi": np.where(x > 1, 1.0, (rng.random(n) < 0.3).astype(float)),
    })


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("kind, y", [("ols", "count"), ("logit", "coin"), ("poisson", "count")])
@pytest.mark.parametrize("X, named", [
    (["x", "z", "w"], "'x', 'z', 'w'"),
    (["x", "five"], "five"),
    (["x", "big"], "big"),
])
def test_a_singular_design_is_a_fedmed_error_naming_the_columns(degenerate, config, kind, y, X, named):
    with pytest.raises(fm.FedMedError, match=named):
        fit_model(kind, fed(degenerate, config), y, X)


def test_a_column_of_zeros_without_intercept_is_named(degenerate):
    with pytest.raises(fm.FedMedError, match=r"\['zero'\] are 0 on every complete row"):
        fm.stats.ols(fed(degenerate, EXACT), y="count", X=["x", "zero"], intercept=False).compute()


@pytest.mark.parametrize("outcome, X", [("above", ["x", "z"]), ("quasi", ["high", "z"])])
def test_separation_is_a_fedmed_error_not_a_huge_coefficient(degenerate, outcome, X):
    # statsmodels warns of perfect separation and reports coefficients of hundreds with standard
    # errors of thousands: there is no maximum-likelihood estimate to report
    with warnings.catch_warnings():
        warnings.simplefilter("error", FedMedConvergenceWarning)
        with pytest.raises(fm.FedMedError, match=f"{X[0]}.*grow without bound"):
            fm.stats.logit(fed(degenerate, EXACT), y=outcome, X=X).compute()


@pytest.mark.parametrize("outcome, X", [("above", ["x", "z"]), ("quasi", ["high", "z"])])
def test_separation_under_the_privacy_config_is_refused_with_advice(degenerate, outcome, X):
    # the weights of a separating fit pile up on few rows: the servers may refuse before the
    # client sees the coefficients run away; either way the analyst is told why
    with pytest.raises(fm.FedMedError, match="grow without bound|separation"):
        fm.stats.logit(fed(degenerate, PRIVATE), y=outcome, X=X).compute()


def test_a_subgroup_whose_counts_are_all_zero_is_named():
    rng = np.random.default_rng(8)
    n = 300
    group = rng.choice([0.0, 1.0], n)
    df = pd.DataFrame({"group": group, "age": rng.normal(50, 10, n),
                       "count": np.where(group == 1, 0.0, rng.poisson(3.0, n))})
    with pytest.raises(fm.FedMedError, match="group.*grow without bound"):
        fm.stats.poisson(fed(df, EXACT), y="count", X=["group", "age"]).compute()


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("kind, y, allowed", [("logit", lambda d: d["count"], "0 and 1"),
                                              ("poisson", lambda d: d["x"], "counts of 0 or more")])
def test_an_outcome_the_family_cannot_take_is_refused(degenerate, config, kind, y, allowed):
    data = fed(degenerate, config)
    with pytest.raises(fm.FedMedError, match=allowed):
        fit_model(kind, data, y(data), ["z"])


@pytest.mark.parametrize("kind", ["ols", "logit", "poisson"])
def test_no_complete_rows_is_a_fedmed_error(kind):
    df = pd.DataFrame({"y": [1.0, 0.0, 1.0, 0.0, 1.0, 0.0], "x": [np.nan] * 6})
    with pytest.raises(fm.FedMedError, match="no complete rows"):
        fit_model(kind, fed(df, EXACT), "y", ["x"])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_infinite_values_are_a_fedmed_error():
    df = pd.DataFrame({"y": [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0], "x": [1.0, 2.0, np.inf, 0.5, 3.0, 1.0, 2.0, 0.0]})
    for kind in ("ols", "logit", "poisson"):
        with pytest.raises(fm.FedMedError, match="infinite"):
            fit_model(kind, fed(df, EXACT), "y", ["x"])


def test_exact_fit_gives_infinite_t_not_a_warning_or_an_error():
    df = pd.DataFrame({"y": [1.0, 2.0, 4.0, 5.0], "x": [0.0, 1.0, 3.0, 4.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = fm.stats.ols(fed(df, EXACT), y="y", X="x").compute()
    assert list(fit.params.round(12)) == [1.0, 1.0]


def test_a_fit_refused_in_a_later_round_says_which_round_and_what_to_do():
    # 32 students, one server holding 7: its weights at the first step's coefficients rest on
    # fewer than 5 of them, and that server refuses round 2
    df = sm.datasets.spector.load_pandas().data
    with pytest.raises(fm.PrivacyError, match=r"logit round \d+ \(coefficients .*pool servers or subgroups"):
        fm.stats.logit(fed(df, PRIVATE, cuts=(0.5, 0.8)), y="GRADE", X=["GPA", "TUCE", "PSI"]).compute()


# -- messy data: missing values, text, tiny subgroups ------------------------------------------------------------

def pooled_numbers(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return df[columns].apply(pd.to_numeric, errors="coerce")


def statsmodels_or_none(kind: str, y: pd.Series, X: pd.DataFrame) -> Any:
    """statsmodels' fit, or None where it has no trustworthy one (singular, separated, not converged)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ref = reference(kind, y, X)
        except Exception:
            return None
    # statsmodels flags any perfect prediction; a saturated Poisson fit of positive counts still has an MLE
    doubts = (ConvergenceWarning, HessianInversionWarning) + ((PerfectSeparationWarning,) if kind == "logit" else ())
    if any(issubclass(w.category, doubts) for w in caught):
        return None
    if kind != "ols" and not ref.mle_retvals.get("converged", False):
        return None
    if np.linalg.matrix_rank(ref.model.exog) < ref.model.exog.shape[1]:
        return None  # more coefficients than the rows determine: statsmodels picks one of many fits
    if not np.all(np.isfinite(ref.params)) or (kind != "ols" and not np.all(np.isfinite(ref.bse))):
        return None
    return ref


@st.composite
def messy(draw: Callable) -> pd.DataFrame:
    """Rows with missing values, a few text values, a tiny subgroup; outcomes for each family."""
    n = draw(st.integers(20, 90))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, n).round(draw(st.sampled_from([1, 3])))
    z = rng.choice([0.0, 1.0, 2.0], n)
    df = pd.DataFrame({
        "x": x, "z": z,
        "y": (1 + 0.5 * x - 0.3 * z + rng.normal(0, 1, n)).round(2),
        "b": (rng.random(n) < 1 / (1 + np.exp(-(0.8 * x - 0.2)))).astype(float),
        "c": rng.poisson(np.exp(0.3 + 0.4 * x)).astype(float),
        "g": rng.choice(["a", "b"], n),
    })
    df.loc[rng.choice(n, draw(st.integers(1, 3)), replace=False), "g"] = "rare"
    for column in ["x", "y", "b", "c"]:
        df.loc[rng.random(n) < draw(st.sampled_from([0.0, 0.05, 0.2])), column] = np.nan
    if draw(st.booleans()):  # text where a number is expected, as spreadsheets have
        df["x"] = df["x"].astype(object)
        df.loc[rng.choice(n, 2, replace=False), "x"] = "n/a"
    return df


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(df=messy(), config=st.sampled_from(CONFIGS), kind=st.sampled_from(["ols", "logit", "poisson"]),
       subgroup=st.sampled_from([None, "a", "rare"]), cuts=st.sampled_from([(0.5, 0.8), (0.1, 0.3), (0.6, 0.65)]))
def test_messy_data_gives_statsmodels_numbers_or_a_fedmed_error(df, config, kind, subgroup, cuts):
    y = {"ols": "y", "logit": "b", "poisson": "c"}[kind]
    data = fed(df, config, cuts)
    if subgroup is not None:
        data = data[data["g"] == subgroup]
    # text in a number column is refused, or read as missing after to_numeric(), as pandas does
    X = {"x": data["x"].to_numeric(), "z/2": data["z"] / 2}
    try:
        fit = fit_model(kind, data, y, X)
    except fm.FedMedError:
        fit = None  # withheld, refused, or no pooled fit: said so with a FedMed error
    rows = df if subgroup is None else df[df.g == subgroup]
    numbers = pooled_numbers(rows, ["x", "z", y])
    ref = statsmodels_or_none(kind, numbers[y], pd.DataFrame({"x": numbers.x, "z/2": numbers.z / 2}))
    if fit is None:
        # without privacy policies, a refusal is right only where statsmodels has no trustworthy fit either
        assert config == PRIVATE or ref is None, "refused where statsmodels fits"
        return
    assert ref is not None, "a number was returned where statsmodels has no trustworthy fit"
    agree(fit, ref)
    assert kind == "ols" or fit.converged


# -- the one-round statistics next to the models: exact, NaN or a FedMed error -------------------------------------

@pytest.fixture(scope="module")
def sparse() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    n = 120
    df = pd.DataFrame({"x": rng.normal(50, 10, n), "y": rng.normal(0, 1, n), "g": rng.choice(["a", "b"], n)})
    df.loc[[3, 70], "g"] = "rare"
    df.loc[[1, 2, 90], "x"] = np.nan
    return df


TESTS = {
    "ttest_ind": (lambda d: fm.stats.ttest_ind(d["x"][d["g"] == "a"], d["x"][d["g"] == "b"], equal_var=False),
                  lambda f: sps.ttest_ind(f.x[f.g == "a"].dropna(), f.x[f.g == "b"].dropna(), equal_var=False).statistic),
    "ttest_1samp": (lambda d: fm.stats.ttest_1samp(d["x"], 50.0),
                    lambda f: sps.ttest_1samp(f.x.dropna(), 50.0).statistic),
    "ttest_rel": (lambda d: fm.stats.ttest_rel(d["x"], d["y"] + 50),
                  lambda f: sps.ttest_rel(*f[["x", "y"]].dropna().assign(y=lambda r: r.y + 50).T.to_numpy()).statistic),
}


@pytest.mark.parametrize("name", sorted(TESTS))
def test_t_tests_with_missing_values_are_exact_and_a_tiny_subgroup_is_refused(sparse, name):
    call, truth = TESTS[name]
    data = fed(sparse, PRIVATE)
    assert call(data).compute().statistic == pytest.approx(truth(sparse), rel=1e-9)
    tiny = data[data["g"] == "rare"]  # 2 rows, on two servers
    with pytest.raises(fm.PrivacyError, match="fewer than 5"):
        call(tiny).compute()


def test_descriptive_statistics_give_exact_values_or_nan_never_a_guess(sparse):
    data = fed(sparse, PRIVATE)
    summary = fm.stats.describe(data["x"]).compute()
    pandas = sparse["x"].describe()
    for row in ("count", "mean", "std"):
        assert summary[row] == pytest.approx(pandas[row], rel=1e-12)
    # the extremes are one patient's values, held by fewer than 5: withheld, so NaN, not a nearby number
    assert np.isnan(summary["min"]) and np.isnan(summary["max"])
    assert fm.stats.cov(data["x"], data["y"]).compute() == pytest.approx(sparse[["x", "y"]].dropna().cov().iloc[0, 1])
    assert fm.stats.pearson(data["x"], data["y"]).compute() == pytest.approx(sparse["x"].corr(sparse["y"]))
    np.testing.assert_allclose(fm.stats.corr(data, ["x", "y"]).compute(), sparse[["x", "y"]].corr(), rtol=1e-12)
    with pytest.raises(fm.PrivacyError, match="fewer than 5"):
        fm.stats.pearson(data["x"][data["g"] == "rare"], data["y"][data["g"] == "rare"]).compute()
