"""Regression: ordinary least squares in one round, logistic and Poisson GLMs by Newton–Raphson.

OLS needs only each server's count, means and centred cross-product matrix
of the design and outcome (``comoment_matrix``), merged exactly on the
client: one round, whatever the number of rows or servers. A GLM is fitted
by Newton–Raphson (IRLS): every iteration is one round in which each server
returns its gradient, Hessian and log-likelihood at the current
coefficients.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, Union

import numpy as np
import pandas as pd

from ..errors import ArgumentError, DataError, FedMedError, PrivacyError
from ..executor import progress
from ..expr.node import render_code
from ..expr.rowwise import Column as ColumnNode
from ..lazy import FedData, LazyResult, compute
from ..results import CoMatrix
from .lazy_call import aggregate, call

INTERCEPT = "Intercept"


class ConvergenceWarning(UserWarning):
    """Newton–Raphson stopped at ``max_iter`` before its tolerance was met."""


@dataclass(frozen=True, eq=False)
class RegressionResult:
    """Coefficients with standard errors, test statistics and p-values, as statsmodels reports them.

    ``statistic`` holds t values for OLS and z values for GLMs.
    """

    params: pd.Series
    bse: pd.Series
    statistic: pd.Series
    pvalues: pd.Series
    nobs: int
    df_resid: float
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def tvalues(self) -> pd.Series:
        return self.statistic

    def __getattr__(self, name: str) -> Any:
        # rsquared, rsquared_adj, llf, converged, iterations...
        try:
            return self.__dict__["extra"][name]
        except KeyError:
            raise AttributeError(name) from None

    def summary(self) -> pd.DataFrame:
        """One row per coefficient: estimate, standard error, statistic, p-value."""
        return pd.DataFrame(
            {"coef": self.params, "std err": self.bse, "statistic": self.statistic, "p": self.pvalues}
        )

    def _repr_html_(self) -> str:
        return self.summary()._repr_html_()

    def __repr__(self) -> str:
        facts = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.extra.items())
        return f"{self.summary()!r}\nnobs={self.nobs}, {facts}"


#: A column of a model: a column name, or a column or expression of the data (``data["bmi"] / 10``).
Column = Union[str, FedData]
#: The predictors: names and columns in a list (a column is named after itself), or a dict naming each.
Predictors = Union[Column, Sequence[Column], Mapping[str, Column]]


def ols(
    data: FedData,
    y: Column,
    X: Predictors,
    intercept: bool = True,
    categorical: "Sequence[str] | Mapping[str, Sequence[Any]] | None" = None,
) -> LazyResult:
    """Linear regression of ``y`` on the predictors ``X`` (rows with any missing value left out).

    ``y`` and each predictor are column names or expressions of ``data``;
    ``X`` is a list (a name, or a plain column such as ``data["age"]``, is
    named after its column) or a dict naming each predictor, e.g.
    ``{"age": data["age"], "bmi/10": data["bmi"] / 10}``. One round: each
    server sends its row count, means and centred cross-product matrix of
    ``X`` and ``y``. Categorical predictors are dummy-coded against their
    first level; give their levels as a mapping (``{"sex": ["F", "M"]}``) or
    list their names and FedMed finds the levels in one extra round, run
    when ``ols`` is called. Rows whose level is not listed are left out.

    Examples
    --------
    >>> import fedmed as fm
    >>> a = fm.Local({"y": [1.0, 3.0, 2.0], "x": [0.0, 2.0, 1.0]})
    >>> b = fm.Local({"y": [5.2, 3.9], "x": [4.0, 3.0]})
    >>> data = fm.FedData([a, b])
    >>> fit = fm.stats.ols(data, y="y", X=["x"]).compute()
    >>> [round(float(v), 4) for v in fit.params]
    [0.96, 1.03]
    >>> fit = fm.stats.ols(data, y=data["y"] * 10, X={"x/2": data["x"] / 2}).compute()
    >>> [round(float(v), 4) for v in fit.params], list(fit.params.index)
    ([9.6, 20.6], ['Intercept', 'x/2'])
    """
    predictors = _predictors(data, X, "ols")
    outcome = _column(data, y, "ols", "y")
    levels = _levels(dict(predictors), categorical)
    if levels:
        outcome, predictors = _known_levels(outcome, predictors, levels)
    names, columns = [], []
    for name, column in predictors:
        if name in levels:
            for level in levels[name][1:]:
                names.append(f"{name}[T.{level}]")
                columns.append(column.dummy(level))
        else:
            names.append(name)
            columns.append(column)
    if not columns:
        raise FedMedError("ols needs at least one predictor in X")
    moments = aggregate(columns[0], "comoment_matrix", *columns[1:], outcome, needed_by="ols")
    return call(_ols, moments, tuple(names), bool(intercept))


def _predictors(data: FedData, X: Any, needed_by: str) -> list[tuple[str, FedData]]:
    """``(name, column)`` of each predictor, in order; names are those the result's coefficients get."""
    if isinstance(X, (str, FedData)):
        X = [X]
    if isinstance(X, Mapping):
        named = [(_key(name, needed_by), column) for name, column in X.items()]
    else:
        named = [(_name(item, needed_by), item) for item in X]
    names = [name for name, _ in named]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated or INTERCEPT in names:
        raise FedMedError(f"{needed_by}: predictor names must differ from each other and from {INTERCEPT!r}; "
                          f"{', '.join(map(repr, repeated or [INTERCEPT]))} repeated: name each in a dict")
    return [(name, _column(data, column, needed_by, name)) for name, column in named]


def _key(name: Any, needed_by: str) -> str:
    if not isinstance(name, str):
        raise FedMedError(f"{needed_by}: the keys of X name the coefficients and must be text, not {name!r}")
    return name


def _name(item: Any, needed_by: str) -> str:
    """A predictor's name: its own if it is a name, its column's if it is a plain column."""
    if isinstance(item, str):
        return item
    if isinstance(item, FedData) and isinstance(item.node, ColumnNode):
        return item.node.name
    if isinstance(item, FedData):
        raise FedMedError(
            f"{needed_by}: the predictor {render_code(item.node)} has no name; give X as a dict, "
            f"e.g. X={{\"bmi/10\": data[\"bmi\"] / 10}}"
        )
    raise FedMedError(f"{needed_by}: a predictor is a column name or a column of the data, not {type(item).__name__}")


def _column(data: FedData, item: Any, needed_by: str, role: str) -> FedData:
    """``item`` as a column of ``data``'s rows: a name is looked up, an expression must be on the same sources."""
    if isinstance(item, str):
        return data[item]
    if not isinstance(item, FedData):
        raise FedMedError(f"{needed_by}: {role} is a column name or a column of the data, not {type(item).__name__}")
    if item.sources != data.sources:
        raise FedMedError(f"{needed_by}: {role} is built on other sources than the data; "
                          "build it from the same FedData")
    return item


def _levels(columns: Mapping[str, FedData], categorical: Any) -> dict[str, list[Any]]:
    if not categorical:
        return {}
    if isinstance(categorical, str):
        categorical = [categorical]
    unknown = [name for name in categorical if name not in columns]
    if unknown:
        raise FedMedError(f"categorical names {unknown}, which are not predictors in X ({list(columns)})")
    if isinstance(categorical, Mapping):
        return {name: list(values) for name, values in categorical.items()}
    found = compute(*(columns[name].unique() for name in categorical))
    return dict(zip(categorical, found))


def _known_levels(outcome: FedData, predictors: list[tuple[str, FedData]],
                  levels: Mapping[str, list[Any]]) -> tuple[FedData, list[tuple[str, FedData]]]:
    """Every column restricted to rows whose categorical values are listed.

    A row of an unlisted level is left out, never counted as the reference level.
    """
    columns = dict(predictors)
    for name, known in levels.items():
        keep = columns[name].isin(list(known))
        outcome = outcome[keep]
        columns = {other: column[keep] for other, column in columns.items()}
    return outcome, list(columns.items())


def _ols(cm: CoMatrix, names: tuple[str, ...], intercept: bool) -> RegressionResult:
    if cm.n == 0:
        raise FedMedError("ols has no complete rows: every row misses y or a predictor. Text is read as missing: "
                          "compare it to a value (data['smoker'] == 'yes') or make it categorical")
    if not (np.all(np.isfinite(cm.m2)) and np.all(np.isfinite(cm.mean))):
        raise FedMedError("ols: y or a predictor holds infinite values on complete rows; "
                          "clip them or leave those rows out")
    k = len(names)
    mxx, mxy, myy = cm.m2[:k, :k], cm.m2[:k, k], cm.m2[k, k]
    xbar, ybar = cm.mean[:k], cm.mean[k]
    if intercept:
        gram, cross, total = mxx, mxy, myy
    else:  # uncentred moments, rebuilt exactly from the centred ones
        gram = mxx + cm.n * np.outer(xbar, xbar)
        cross = mxy + cm.n * xbar * ybar
        total = myy + cm.n * ybar * ybar
    _check_design(gram, names, cm.n, "ols", centred=intercept, means=xbar if intercept else None)
    inverse = np.linalg.inv(gram)
    beta = inverse @ cross
    rss = total - beta @ cross
    p = k + int(intercept)
    df_resid = cm.n - p
    sigma2 = rss / df_resid if df_resid > 0 else math.nan
    cov = sigma2 * inverse
    params, variances, labels = list(beta), list(np.diag(cov)), list(names)
    if intercept:
        params.insert(0, ybar - xbar @ beta)
        variances.insert(0, sigma2 * (1.0 / cm.n + xbar @ inverse @ xbar))
        labels.insert(0, INTERCEPT)
    bse = np.sqrt(np.asarray(variances))
    with np.errstate(divide="ignore", invalid="ignore"):  # an exact fit: t is ±inf or nan, as in statsmodels
        t = np.asarray(params) / bse
    from scipy import stats as sps  # here, not at the top: scipy.stats is half of fedmed's import time

    pvalues = 2 * sps.t.sf(np.abs(t), df_resid)
    rsquared = 1.0 - rss / total
    # statsmodels: adjusted R² uses n - 1 with an intercept, n without
    rsquared_adj = 1.0 - (1.0 - rsquared) * (cm.n - int(intercept)) / df_resid if df_resid > 0 else math.nan
    series = lambda values: pd.Series(values, index=labels, dtype=float)  # noqa: E731
    return RegressionResult(
        series(params), series(bse), series(t), series(pvalues), cm.n, float(df_resid),
        {"rsquared": float(rsquared), "rsquared_adj": float(rsquared_adj)},
    )


#: Below this reciprocal condition number of the design's correlation matrix, the coefficients would carry
#: relative errors above about 1e-6: a model refuses to report them rather than give wrong digits.
RCOND = 1e-10


def _check_design(gram: np.ndarray, names: Sequence[str], n: int, model: str, centred: bool,
                  means: "np.ndarray | None" = None) -> None:
    """A FedMed error naming the columns when the cross-product matrix ``gram`` is (nearly) singular.

    ``means`` (with a centred ``gram``) also catches columns whose spread is so small against their
    size that centring them on the servers leaves fewer digits than the coefficients need.
    """
    diagonal = np.diag(gram).astype(float)
    size = n * (np.finfo(float).eps * np.abs(means)) ** 2 if means is not None else np.zeros(len(names))
    # a constant column split over servers merges to a spread of rounding size, not exactly 0
    flat = [name for name, d, s in zip(names, diagonal, size) if d <= 16**2 * s]
    if flat:
        what = "constant on the complete rows, so they cannot be told from the intercept" if centred \
            else "0 on every complete row"
        raise FedMedError(f"{model}: the predictors {flat} are {what} ({n} rows); leave them out, or check "
                          "that a categorical level has rows")
    narrow = [name for name, d, s in zip(names, diagonal, size) if d <= 1e14 * s]
    if narrow:
        raise FedMedError(f"{model}: the predictors {narrow} vary by less than 2e-9 of their size; "
                          "subtract a typical value first (e.g. X={'year - 2000': data['year'] - 2000})")
    scale = 1.0 / np.sqrt(diagonal)
    values = np.linalg.eigvalsh(gram * np.outer(scale, scale))
    if values[0] <= RCOND * values[-1]:
        raise FedMedError(
            f"{model}: the predictors {_weakest(gram * np.outer(scale, scale), names)} are (nearly) collinear on "
            f"the {n} complete rows: one is, or almost is, a linear combination of the others; leave one out, "
            "and subtract a typical value from large values with a small spread "
            "(e.g. X={'year - 2000': data['year'] - 2000})"
        )


def _weakest(correlation: np.ndarray, names: Sequence[str]) -> list[str]:
    """The columns that make up the direction the (scaled) matrix knows least about."""
    _, vectors = np.linalg.eigh(correlation)
    weakest = np.abs(vectors[:, 0])
    return [name for name, w in zip(names, weakest) if w >= 0.1 * weakest.max()]


def _information_lost(hessian: np.ndarray, scale: np.ndarray) -> bool:
    """True when some direction has lost (almost) all the information it had at beta = 0.

    The weights of rows the model predicts perfectly go to 0 as their
    coefficients grow: the Hessian, measured in the units of the first one,
    then has a vanishing eigenvalue. A fit that converges never gets there.
    """
    values = np.linalg.eigvalsh(hessian * np.outer(scale, scale))
    return bool(values[0] <= 1e-8 * len(scale))


def _rounded(names: Sequence[str], beta: np.ndarray) -> dict[str, float]:
    return {name: float(f"{b:.4g}") for name, b in zip(names, beta)}


#: The function that fits each family, for messages.
_MODEL = {"binomial": "logit", "poisson": "poisson"}


class GLMFit:
    """A generalised linear model fitted on ``compute()``: one round per Newton–Raphson iteration.

    ``explain()`` shows the plan of one iteration.
    """

    def __init__(self, data: FedData, y: Column, X: Predictors, family: str, intercept: bool,
                 max_iter: int, tol: float) -> None:
        needed_by = _MODEL[family]
        predictors = _predictors(data, X, needed_by)
        if not predictors and not intercept:
            raise FedMedError(f"{needed_by} needs a predictor in X or an intercept")
        self.data, self.outcome = data, _column(data, y, needed_by, "y")
        self.columns = [column for _, column in predictors]
        self.family, self.intercept, self.max_iter, self.tol = family, intercept, max_iter, tol
        self.names = ([INTERCEPT] if intercept else []) + [name for name, _ in predictors]

    def _step(self, beta: np.ndarray) -> LazyResult:
        return aggregate(
            self.outcome, "glm_step", self.family, self.intercept, [float(b) for b in beta], *self.columns,
            needed_by=_MODEL[self.family],
        )

    def explain(self) -> str:
        return self._step(np.zeros(len(self.names))).explain() + f"\n(repeated once per iteration, at most {self.max_iter})"

    def _round(self, beta: np.ndarray, iteration: int) -> dict[str, Any]:
        """One iteration's pooled ``glm_step``; the first also counts outcomes the family cannot take."""
        model = _MODEL[self.family]
        try:
            if iteration > 1:
                return self._step(beta).compute()
            step, outside = compute(self._step(beta), self._outside().sum())
        except PrivacyError as error:
            if iteration == 1:
                raise
            # Later rounds weigh rows by the model: the weights pile up on few rows when a predictor
            # (nearly) separates the outcome, and the server rightly refuses.
            raise type(error)(
                f"{model} round {iteration} (coefficients {_rounded(self.names, beta)}): {error.message}. "
                "From the second round on, the server judges the weights the model gives its rows at these "
                "coefficients: they rest on few rows when the server holds few complete rows, or when a "
                "predictor (nearly) predicts the outcome on its own (separation); pool servers or subgroups "
                "into larger ones, or leave that predictor out or merge its categories",
                server=error.server, fragment=error.fragment, operation=error.operation, policy=error.policy,
            ) from None
        if outside:
            allowed = "0 and 1 (or True and False)" if self.family == "binomial" else "counts of 0 or more"
            raise FedMedError(f"{model}: y is not one of {allowed} on {int(outside)} rows; recode it "
                              "(e.g. y=data['diabetes'] == 'yes')")
        if step["n"] == 0:
            raise FedMedError(
                f"{model} has no complete rows: every row misses y or a predictor. Text is read as missing: "
                "compare it to a value (y=data['diabetes'] == 'yes') or dummy-code it"
            )
        return step

    def _outside(self) -> FedData:
        """True on rows whose outcome the family cannot take (a logit's y outside [0, 1], a negative count)."""
        y = self.outcome
        return ((y < 0) | (y > 1)) if self.family == "binomial" else (y < 0)

    def _change(self, step: Mapping[str, Any], beta: np.ndarray, iteration: int) -> np.ndarray:
        """The Newton step ``H⁻¹ g``, or a FedMed error when the design or the fit has degenerated."""
        model, hessian, gradient = _MODEL[self.family], step["hessian"], step["gradient"]
        if not (np.all(np.isfinite(hessian)) and np.all(np.isfinite(gradient)) and math.isfinite(step["loglik"])):
            raise FedMedError(
                f"{model} overflowed in round {iteration} (coefficients {_rounded(self.names, beta)}): a predictor "
                "holds infinite or very large values; rescale or clip it "
                "(e.g. X={'income/1000': data['income'] / 1000})"
            )
        if iteration == 1:
            # At beta = 0 every row weighs the same: the Hessian is the design's own cross-products.
            _check_design(hessian, self.names, step["n"], model, centred=False)
            self._scale, self._last = 1.0 / np.sqrt(np.diag(hessian)), None
        elif _information_lost(hessian, self._scale):
            raise FedMedError(
                f"{model}: the fit diverges in round {iteration}: the coefficients of "
                f"{_weakest(hessian * np.outer(self._scale, self._scale), self.names)} grow without bound "
                f"(now {_rounded(self.names, beta)}) because they predict the outcome perfectly on some rows "
                "(separation, or a subgroup whose outcome is all 0); leave them out or merge their categories"
            )
        if self._last is not None and step["loglik"] < self._last[0] - 1e-9 * (1.0 + abs(self._last[0])):
            # The last step overshot (the log-likelihood fell): go back half of it, as a damped Newton
            # method does; the log-likelihood is concave, so some fraction of the step gains.
            loglik, overshot = self._last
            self._last = (loglik, overshot / 2)
            return -overshot / 2
        change = self._newton(step, iteration)
        self._last = (step["loglik"], change)
        return change

    def _newton(self, step: Mapping[str, Any], iteration: int) -> np.ndarray:
        hessian, gradient = step["hessian"], step["gradient"]
        if iteration > 1 or self.family != "poisson" or not self.intercept:
            return np.linalg.solve(hessian, gradient)
        # From beta = 0 a Poisson Newton step can overshoot by orders of magnitude (counts far from 1).
        # Start instead where statsmodels does, at the intercept-only fit log(mean y): there every row's
        # mean is mean y, so its Hessian and gradient follow from those at 0 without another round.
        n, ones = step["n"], hessian[:, 0]  # the intercept's column: the sums of the predictors
        mean = (gradient[0] + n) / n  # gradient[0] = sum(y - 1)
        if not mean > 0:
            raise FedMedError("poisson: y is 0 on every complete row; there is no rate to model")
        start = np.zeros(len(gradient))
        start[0] = math.log(mean)
        return start + np.linalg.solve(mean * hessian, gradient + (1.0 - mean) * ones)

    def compute(self) -> RegressionResult:
        from scipy import stats as sps  # here, not at the top: scipy.stats is half of fedmed's import time

        beta = np.zeros(len(self.names))
        converged, iterations = False, 0

        with progress() as bar:
            for iterations in range(1, self.max_iter + 1):
                bar.stage(f"{self.family} IRLS round {iterations}/{self.max_iter}")
                step = self._round(beta, iterations)
                change = self._change(step, beta, iterations)
                beta = beta + change
                if np.max(np.abs(change)) < self.tol * (1.0 + np.max(np.abs(beta))):
                    converged = True
                    break
        if not converged:
            warnings.warn(
                f"{self.family} regression did not converge in {self.max_iter} iterations; "
                "estimates are from the last one", ConvergenceWarning, stacklevel=2,
            )
        # The last Hessian was taken one step (smaller than tol) before the
        # estimate: its standard errors agree far below any reported digit,
        # and a whole round is saved.
        final = step
        bse = np.sqrt(np.diag(np.linalg.inv(final["hessian"])))
        z = beta / bse
        series = lambda values: pd.Series(values, index=self.names, dtype=float)  # noqa: E731
        return RegressionResult(
            series(beta), series(bse), series(z), series(2 * sps.norm.sf(np.abs(z))), int(final["n"]),
            float(final["n"] - len(beta)),
            {"llf": float(final["loglik"]), "converged": converged, "iterations": iterations},
        )


def logit(data: FedData, y: Column, X: Predictors, intercept: bool = True,
          max_iter: int = 25, tol: float = 1e-10) -> GLMFit:
    """Logistic regression by Newton–Raphson: one round per iteration (typically 5 to 8).

    Coefficients, standard errors, z values and p-values as ``statsmodels``'
    ``Logit``. ``y`` (0/1 or a condition such as ``data["diabetes"] == "yes"``)
    and the predictors ``X`` are given as in :func:`ols`. ``max_iter`` 25 and
    a relative step tolerance stop the iterations; a progress bar shows them
    on a terminal. A design whose columns are (nearly) collinear, or an
    outcome that the predictors separate perfectly, raises ``FedMedError``
    naming the columns.

    Examples
    --------
    >>> import fedmed as fm
    >>> a = fm.Local({"y": [0, 0, 1, 1, 0], "x": [0.5, 1.0, 1.5, 3.0, 2.0]})
    >>> b = fm.Local({"y": [1, 0, 1], "x": [2.5, 0.2, 1.2]})
    >>> data = fm.FedData([a, b])
    >>> fit = fm.stats.logit(data, y="y", X=["x"]).compute()
    >>> fit.converged, fit.iterations, round(float(fit.params["x"]), 4)
    (True, 6, 1.973)
    >>> fit = fm.stats.logit(data, y=data["y"] == 1, X={"x*2": data["x"] * 2}).compute()
    >>> round(float(fit.params["x*2"]), 4)
    0.9865
    """
    return GLMFit(data, y, X, "binomial", intercept, max_iter, tol)


def poisson(data: FedData, y: Column, X: Predictors, intercept: bool = True,
            max_iter: int = 25, tol: float = 1e-10, offset: "Column | None" = None,
            exposure: "Column | None" = None) -> "GLMFit | GLM":
    """Poisson regression (log link) by Newton–Raphson, as ``statsmodels``' ``Poisson``; one round per iteration.

    Arguments as :func:`logit`; with an ``offset`` or ``exposure`` (column names or expressions) it is
    :func:`glm` with ``family="poisson"``.

    Examples
    --------
    >>> import fedmed as fm
    >>> a = fm.Local({"n": [0, 1, 3, 2], "x": [0.1, 0.4, 1.0, 0.8]})
    >>> data = fm.FedData([a, fm.Local({"n": [5, 1], "x": [1.3, 0.2]})])
    >>> fit = fm.stats.poisson(data, y="n", X=["x"]).compute()
    >>> fit.converged, list(fit.params.index)
    (True, ['Intercept', 'x'])
    """
    if offset is not None or exposure is not None:
        return glm(data, y, X, "poisson", offset=offset, exposure=exposure, intercept=intercept,
                   max_iter=max_iter, tol=tol)
    return GLMFit(data, y, X, "poisson", intercept, max_iter, tol)


# -- GLM families with links, offsets and weights ------------------------------------------------

#: Per family: its links (the first is statsmodels' default), the outcomes it cannot take, and whether its
#: scale is estimated (Pearson chi² / df_resid) or fixed at 1.
_FAMILIES = {
    "gaussian": (("identity", "log"), None, True),
    # log and identity links: relative risks and risk differences, whose fitted probabilities may leave (0, 1)
    "binomial": (("logit", "log", "identity"), "outside 0 to 1", False),
    "poisson": (("log",), "negative", False),
    "gamma": (("inverse_power", "log"), "0 or negative", True),
}
#: Links whose fitted means can leave the family's range (fedmed.ops.private.GLM_MEAN_RANGE), with the
#: intercept that puts every mean at the range's centre (a probability of 0.5): a valid place to restart.
_BOUNDED = {("binomial", "log"): math.log(0.5), ("binomial", "identity"): 0.5}
#: Link names as users write them, to the names the servers know.
_LINK_NAMES = {"inverse": "inverse_power"}
_WEIGHTS = ("freq_weights", "var_weights")


def family_link(family: str, link: "str | None", needed_by: str = "glm") -> tuple[str, str]:
    """``(family, link)`` as the servers know them (the canonical link for None), or an ``ArgumentError``."""
    if family not in _FAMILIES:
        raise ArgumentError(f"{needed_by}: family {family!r} is not one of {list(_FAMILIES)}")
    links = _FAMILIES[family][0]
    link = _LINK_NAMES.get(link, link) if link is not None else links[0]
    if link not in links:
        raise ArgumentError(f"{needed_by}: the {family} family takes the links {list(links)}, not {link!r}")
    return family, link


def _invalid(family: str, y: FedData) -> FedData:
    """True on rows whose outcome ``family`` cannot take."""
    return {"binomial": (y < 0) | (y > 1), "poisson": y < 0, "gamma": y <= 0}.get(family, y != y)


class GLM:
    """A GLM of any family fitted on ``compute()``: one round per IRLS iteration, one more when needed.

    ``explain()`` shows the plan of one iteration. Built by :func:`glm`.
    """

    def __init__(self, data: FedData, y: Column, X: Predictors, family: str, link: "str | None",
                 offset: "Column | None", exposure: "Column | None", freq_weights: "Column | None",
                 var_weights: "Column | None", cov_type: str, intercept: bool, max_iter: int, tol: float) -> None:
        family, link = family_link(family, link)
        _, self._outside, self._estimated = _FAMILIES[family]
        if cov_type not in ("nonrobust", "HC0"):
            raise ArgumentError(f"glm: cov_type is 'nonrobust' or 'HC0', not {cov_type!r}")
        predictors = _predictors(data, X, "glm")
        if not predictors and not intercept:
            raise ArgumentError("glm needs a predictor in X or an intercept")
        self.outcome = _column(data, y, "glm", "y")
        self.extra = self._extra(data, offset, exposure, freq_weights, var_weights)
        self.columns = [column for _, column in predictors]
        self.family, self.link, self.cov_type, self.intercept = family, link, cov_type, intercept
        self.max_iter, self.tol = max_iter, tol
        self.names = ([INTERCEPT] if intercept else []) + [name for name, _ in predictors]

    def _extra(self, data: FedData, offset: Any, exposure: Any, freq: Any, var: Any) -> dict[str, FedData]:
        """The row-wise inputs besides y and X, by role; an exposure joins the offset as its log."""
        extra = {role: _column(data, item, "glm", role)
                 for role, item in (("offset", offset), ("exposure", exposure), ("freq_weights", freq),
                                    ("var_weights", var)) if item is not None}
        if "exposure" in extra:
            self._exposure = extra.pop("exposure")
            logged = self._exposure.log()
            extra["offset"] = extra["offset"] + logged if "offset" in extra else logged
        return {role: extra[role] for role in ("offset", *_WEIGHTS) if role in extra}

    def _step(self, beta: "np.ndarray | None", scale: float = 1.0, robust: bool = False) -> LazyResult:
        return aggregate(
            self.outcome, "glm_family_step", self.family, self.link, self.intercept,
            None if beta is None else [float(b) for b in beta], float(scale), robust, list(self.extra),
            *self.extra.values(), *self.columns, needed_by="glm",
        )

    def explain(self) -> str:
        return self._step(np.zeros(len(self.names))).explain() + \
            f"\n(repeated once per iteration, at most {self.max_iter})"

    def _checks(self) -> list[tuple[str, FedData]]:
        """What the first round also counts: rows of inputs no fit can take, each with what to do."""
        checks = []
        if self._outside:
            checks.append((f"y is {self._outside} on {{}} rows, which the {self.family} family cannot take; "
                           "leave them out or choose another family", _invalid(self.family, self.outcome)))
        for role in _WEIGHTS:
            if role in self.extra:
                checks.append((f"{role} are negative on {{}} rows; weights are 0 or more", self.extra[role] < 0))
        if hasattr(self, "_exposure"):
            checks.append(("exposure is 0 or negative on {} rows; its log is the offset, so it must be "
                           "positive", self._exposure <= 0))
        return checks

    def _first(self) -> dict[str, Any]:
        checks = self._checks()
        step, *counts = compute(self._step(None), *(mask.sum() for _, mask in checks))
        for (message, _), count in zip(checks, counts):
            if count:
                raise DataError(f"glm: {message.format(int(count))}")
        if step["n"] == 0:
            raise DataError("glm has no complete rows: every row misses y, a predictor, an offset or a weight")
        return step

    def _round(self, beta: np.ndarray, iteration: int, scale: float = 1.0, robust: bool = False) -> dict[str, Any]:
        try:
            return self._step(beta, scale, robust).compute()
        except PrivacyError as error:
            raise type(error)(
                f"glm round {iteration} (coefficients {_rounded(self.names, beta)}): {error.message}. The server "
                "judges the rows behind each round; pool servers or subgroups into larger ones",
                server=error.server, fragment=error.fragment, operation=error.operation, policy=error.policy,
            ) from None

    def _centre(self) -> "np.ndarray | None":
        """Coefficients whose fitted means are all the middle of the family's range (0.5 for a probability),
        where a link that can leave the range restarts; None for the other links or without an intercept."""
        if (self.family, self.link) not in _BOUNDED or not self.intercept:
            return None
        centre = np.zeros(len(self.names))
        centre[0] = _BOUNDED[self.family, self.link]
        return centre

    def _at_edge(self, beta: np.ndarray, iteration: int) -> FedMedError:
        advice = {"log": "for relative risks fit family='poisson' (log link) with cov_type='HC0'",
                  "identity": "for risk differences fit the identity link on fewer predictors, or model odds "
                              "ratios with the logit link"}[self.link]
        return FedMedError(
            f"glm: binomial with the {self.link} link did not converge by round {iteration}: the fitted "
            f"probabilities leave (0, 1) at the optimum (they reach {'1' if self.link == 'log' else '0 or 1'} "
            f"on some rows; last valid coefficients {_rounded(self.names, beta)}), where the maximum likelihood "
            f"estimate has no usual standard errors; {advice}")

    def _diverged(self, beta: np.ndarray, iteration: int) -> FedMedError:
        where = f"in round {iteration} (coefficients {_rounded(self.names, beta)})"
        if self.link == "inverse_power":
            return FedMedError(f"glm: the gamma inverse link gives fitted means of 0 or below {where}; "
                               "use link='log'")
        return FedMedError(f"glm overflowed {where}: a predictor holds very large values; rescale or clip it "
                           "(e.g. X={'income/1000': data['income'] / 1000})")

    def _iterate(self) -> tuple[np.ndarray, dict[str, Any], bool, int]:
        """IRLS from statsmodels' start; a step that worsens the deviance (or leaves the family's range) is halved."""
        step = self._first()
        information = np.asarray(step["information"])
        _check_design(information, self.names, step["n"], "glm", centred=False)
        scaling = 1.0 / np.sqrt(np.diag(information))
        beta = np.linalg.solve(information, step["gradient"])
        best, change, halvings, left, edge = math.inf, beta, 0, False, False
        for iteration in range(2, self.max_iter + 1):
            with progress() as bar:
                bar.stage(f"{self.family} IRLS round {iteration}/{self.max_iter}")
                step = self._round(beta, iteration)
            worse = not math.isfinite(step["deviance"]) or step["deviance"] > best + 1e-12 * (1.0 + abs(best))
            if worse:
                halvings += 1
                left = left or not math.isfinite(step["deviance"])
                edge = edge or left
                if best == math.inf and left and halvings == 1 and self._centre() is not None:
                    # the first estimate left the family's range (probabilities above 1): restart from the
                    # centre of the range, whence every later step halves back towards valid coefficients
                    beta = change = self._centre()
                    continue
                if halvings > 40 or best == math.inf:  # the first estimate has no earlier one to fall back to
                    raise self._at_edge(beta, iteration) if edge and self._centre() is not None \
                        else self._diverged(beta, iteration)
                change = change / 2
                beta = beta - change
                continue
            left = False
            if _information_lost(np.asarray(step["information"]), scaling):
                raise FedMedError(
                    f"glm: the fit diverges in round {iteration}: the coefficients of "
                    f"{_weakest(np.asarray(step['information']) * np.outer(scaling, scaling), self.names)} grow "
                    f"without bound (now {_rounded(self.names, beta)}) because they predict the outcome perfectly "
                    "on some rows (separation); leave them out or merge their categories")
            best, halvings = step["deviance"], 0
            change = np.linalg.solve(step["information"], step["gradient"])
            beta = beta + change
            if np.max(np.abs(change)) < self.tol * (1.0 + np.max(np.abs(beta))):
                return beta, step, True, iteration
        if edge and (self.family, self.link) in _BOUNDED:
            # steps towards the optimum kept leaving the range: it lies on its edge, where no MLE has the usual
            # standard errors (statsmodels' IRLS oscillates there without converging)
            raise self._at_edge(beta, self.max_iter)
        warnings.warn(f"glm ({self.family}) did not converge in {self.max_iter} iterations; estimates are "
                      "from the last one", ConvergenceWarning, stacklevel=3)
        return beta, step, False, self.max_iter

    def compute(self) -> RegressionResult:
        from scipy import stats as sps  # here, not at the top: scipy.stats is half of fedmed's import time

        beta, step, converged, iterations = self._iterate()
        df_resid = step["wn"] - len(beta)
        # statsmodels: Pearson chi² / df_resid for estimated scales; the Gaussian identity llf at RSS / n
        scale = step["pearson"] / df_resid if self._estimated else 1.0
        llf_scale = step["deviance"] / step["wn"] if (self.family, self.link) == ("gaussian", "identity") else scale
        final = step
        if self._estimated or self.cov_type == "HC0":  # the log-likelihood at the scale, the sandwich's meat
            final = self._round(beta, iterations + 1, llf_scale, robust=self.cov_type == "HC0")
        cov = scale * np.linalg.inv(step["information"])
        if self.cov_type == "HC0":
            bread = np.linalg.inv(final["observed"])
            cov = bread @ final["meat"] @ bread
        bse = np.sqrt(np.diag(cov))
        z = beta / bse
        series = lambda values: pd.Series(values, index=self.names, dtype=float)  # noqa: E731
        return RegressionResult(
            series(beta), series(bse), series(z), series(2 * sps.norm.sf(np.abs(z))), int(step["n"]),
            float(df_resid),
            {"llf": float(final["loglik"]), "deviance": float(step["deviance"]),
             "pearson_chi2": float(step["pearson"]), "scale": float(scale), "family": self.family,
             "link": self.link, "cov_type": self.cov_type, "converged": converged, "iterations": iterations},
        )


def glm(data: FedData, y: Column, X: Predictors, family: str = "gaussian", link: "str | None" = None,
        offset: "Column | None" = None, exposure: "Column | None" = None, freq_weights: "Column | None" = None,
        var_weights: "Column | None" = None, cov_type: str = "nonrobust", intercept: bool = True,
        max_iter: int = 50, tol: float = 1e-10) -> GLM:
    """A generalised linear model as statsmodels' ``GLM``: one round per IRLS iteration.

    ``family`` is ``"gaussian"``, ``"binomial"``, ``"poisson"`` or ``"gamma"``; ``link`` defaults to the
    canonical one (statsmodels' default) and may be ``"log"`` for the gaussian and gamma families,
    ``"logit"``, ``"log"`` (relative risks) or ``"identity"`` (risk differences) for the binomial one, whose
    steps halve back whenever fitted probabilities leave (0, 1) (an optimum on that edge raises a
    ``FedMedError``: use ``family="poisson"`` with ``cov_type="HC0"`` for relative risks there); the gamma's
    canonical link is ``"inverse_power"`` (also written ``"inverse"``). ``y`` and ``X`` are given as in
    :func:`ols`; ``offset``, ``exposure`` (its log joins the offset), ``freq_weights`` and ``var_weights``
    are column names or expressions of ``data``. A binomial ``y`` is 0/1 or a proportion (give the trials
    as ``var_weights``). ``cov_type="HC0"`` gives sandwich standard errors. Rounds: one per iteration,
    plus one at the final coefficients for the gaussian and gamma families (the log-likelihood at the
    estimated scale) and for ``HC0`` (the sandwich's meat).

    Examples
    --------
    >>> import fedmed as fm
    >>> a = fm.Local({"cost": [1.2, 2.5, 0.8, 3.1], "age": [30.0, 50.0, 25.0, 60.0]})
    >>> b = fm.Local({"cost": [1.9, 2.2, 4.0], "age": [45.0, 40.0, 70.0]})
    >>> data = fm.FedData([a, b])
    >>> fit = fm.stats.glm(data, y="cost", X={"age/10": data["age"] / 10}, family="gamma", link="log").compute()
    >>> fit.converged, [round(float(v), 4) for v in fit.params]
    (True, [-0.7992, 0.328])
    """
    return GLM(data, y, X, family, link, offset, exposure, freq_weights, var_weights, cov_type, intercept,
               max_iter, tol)
