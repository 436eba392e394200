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
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..errors import FedMedError
from ..lazy import FedData, LazyResult, compute
from ..options import options
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


def ols(
    data: FedData,
    y: str,
    X: Sequence[str],
    intercept: bool = True,
    categorical: "Sequence[str] | Mapping[str, Sequence[Any]] | None" = None,
) -> LazyResult:
    """Linear regression of ``data[y]`` on the columns ``X`` (rows with any missing value left out).

    One round: each server sends its row count, means and centred
    cross-product matrix of ``X`` and ``y``. Categorical predictors are
    dummy-coded against their first level; give their levels as a mapping
    (``{"sex": ["F", "M"]}``) or list their names and FedMed finds the levels
    in one extra round, run when ``ols`` is called.

    Examples
    --------
    >>> import fedmed as fm
    >>> a = fm.Local({"y": [1.0, 3.0, 2.0], "x": [0.0, 2.0, 1.0]})
    >>> b = fm.Local({"y": [5.2, 3.9], "x": [4.0, 3.0]})
    >>> fit = fm.stats.ols(fm.FedData([a, b]), y="y", X=["x"]).compute()
    >>> [round(float(v), 4) for v in fit.params]
    [0.96, 1.03]
    """
    levels = _levels(data, categorical)
    for name, known in levels.items():
        # rows whose level is not in the list are left out, never counted as the reference level
        data = data[data[name].isin(list(known))]
    names, columns = [], []
    for name in X:
        if name in levels:
            for level in levels[name][1:]:
                names.append(f"{name}[T.{level}]")
                columns.append(data[name].dummy(level))
        else:
            names.append(name)
            columns.append(data[name])
    if not columns:
        raise FedMedError("ols needs at least one predictor in X")
    moments = aggregate(columns[0], "comoment_matrix", *columns[1:], data[y], needed_by="ols")
    return call(_ols, moments, tuple(names), bool(intercept))


def _levels(data: FedData, categorical: Any) -> dict[str, list[Any]]:
    if not categorical:
        return {}
    if isinstance(categorical, Mapping):
        return {name: list(values) for name, values in categorical.items()}
    found = compute(*(data[name].unique() for name in categorical))
    return dict(zip(categorical, found))


def _ols(cm: CoMatrix, names: tuple[str, ...], intercept: bool) -> RegressionResult:
    k = len(names)
    mxx, mxy, myy = cm.m2[:k, :k], cm.m2[:k, k], cm.m2[k, k]
    xbar, ybar = cm.mean[:k], cm.mean[k]
    if intercept:
        gram, cross, total = mxx, mxy, myy
    else:  # uncentred moments, rebuilt exactly from the centred ones
        gram = mxx + cm.n * np.outer(xbar, xbar)
        cross = mxy + cm.n * xbar * ybar
        total = myy + cm.n * ybar * ybar
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
    t = np.asarray(params) / bse
    from scipy import stats as sps  # here, not at the top: scipy.stats is half of fedmed's import time

    pvalues = 2 * sps.t.sf(np.abs(t), df_resid)
    rsquared = 1.0 - rss / total
    # statsmodels: adjusted R² uses n - 1 with an intercept, n without
    rsquared_adj = 1.0 - (1.0 - rsquared) * (cm.n - int(intercept)) / df_resid
    series = lambda values: pd.Series(values, index=labels, dtype=float)  # noqa: E731
    return RegressionResult(
        series(params), series(bse), series(t), series(pvalues), cm.n, float(df_resid),
        {"rsquared": float(rsquared), "rsquared_adj": float(rsquared_adj)},
    )


class GLMFit:
    """A generalised linear model fitted on ``compute()``: one round per Newton–Raphson iteration.

    ``explain()`` shows the plan of one iteration.
    """

    def __init__(self, data: FedData, y: str, X: Sequence[str], family: str, intercept: bool,
                 max_iter: int, tol: float) -> None:
        self.data, self.y, self.X = data, y, list(X)
        self.family, self.intercept, self.max_iter, self.tol = family, intercept, max_iter, tol
        self.names = ([INTERCEPT] if intercept else []) + self.X

    def _step(self, beta: np.ndarray) -> LazyResult:
        columns = [self.data[name] for name in self.X]
        return aggregate(
            self.data[self.y], "glm_step", self.family, self.intercept, [float(b) for b in beta], *columns,
            needed_by=self.family,
        )

    def explain(self) -> str:
        return self._step(np.zeros(len(self.names))).explain() + f"\n(repeated once per iteration, at most {self.max_iter})"

    def compute(self) -> RegressionResult:
        from scipy import stats as sps  # here, not at the top: scipy.stats is half of fedmed's import time

        beta = np.zeros(len(self.names))
        converged, iterations = False, 0
        quiet = None if options.progress else True  # None: only on a terminal
        with tqdm(total=self.max_iter, desc=f"{self.family} IRLS", unit="round", disable=quiet, leave=False,
                  delay=options.progress_delay) as bar:
            for iterations in range(1, self.max_iter + 1):
                step = self._step(beta).compute()
                change = np.linalg.solve(step["hessian"], step["gradient"])
                beta = beta + change
                bar.update(1)
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


def logit(data: FedData, y: str, X: Sequence[str], intercept: bool = True,
          max_iter: int = 25, tol: float = 1e-10) -> GLMFit:
    """Logistic regression by Newton–Raphson: one round per iteration (typically 5 to 8).

    Coefficients, standard errors, z values and p-values as ``statsmodels``'
    ``Logit``. ``max_iter`` 25 and a relative step tolerance stop the
    iterations; a tqdm bar shows them on a terminal.

    Examples
    --------
    >>> import fedmed as fm
    >>> a = fm.Local({"y": [0, 0, 1, 1, 0], "x": [0.5, 1.0, 1.5, 3.0, 2.0]})
    >>> b = fm.Local({"y": [1, 0, 1], "x": [2.5, 0.2, 1.2]})
    >>> fit = fm.stats.logit(fm.FedData([a, b]), y="y", X=["x"]).compute()
    >>> fit.converged, fit.iterations, round(float(fit.params["x"]), 4)
    (True, 6, 1.973)
    """
    return GLMFit(data, y, X, "binomial", intercept, max_iter, tol)


def poisson(data: FedData, y: str, X: Sequence[str], intercept: bool = True,
            max_iter: int = 25, tol: float = 1e-10) -> GLMFit:
    """Poisson regression (log link) by Newton–Raphson, as ``statsmodels``' ``Poisson``; one round per iteration."""
    return GLMFit(data, y, X, "poisson", intercept, max_iter, tol)
