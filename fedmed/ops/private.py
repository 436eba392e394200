"""Map halves of aggregates: computed on a server over one fragment's rows.

Each takes a pandas Series and returns one small, msgpack-friendly value.
Missing values are skipped as pandas does; ``len`` counts rows.

Maps whose answer does not grow with the rows say so with ``@fixed_size``:
a server prices every request's memory before evaluating it, and counts
an undeclared map's answer as one entry per row (``set``, ``value_counts``).
"""

from __future__ import annotations

import builtins
from typing import Any

import numpy as np
import pandas as pd

from ..errors import OperationError, PrivacyError
from . import cox
from ..memo import IdentityMemo
from .declared import Cells, Release, declares


def fixed_size(fn: Any) -> Any:
    """Declare that ``fn``'s answer is small whatever the rows (a number, a few moments, a matrix of
    its columns): see ``fedmed.server.memory``."""
    fn.fixed_size = True
    return fn


def needs_numbers(fn: Any) -> Any:
    """Declare that ``fn`` reads its columns as numbers: a server refuses it on a text column, by the
    column's type, with a message that names the column and ``to_numeric`` (``fedmed.server.evaluate.refuse_text``)."""
    fn.needs_numbers = True
    return fn


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


@fixed_size
def len(x: pd.Series) -> int:
    """Number of rows, missing values included."""
    return builtins.len(x)


@fixed_size
def count(x: pd.Series) -> int:
    """Number of non-missing values."""
    return int(x.count())


def _numbers(x: pd.Series, op: str) -> pd.Series:
    # pandas "sums" text by joining it: that would send the whole column
    if x.dtype.kind not in "fiub" and str(x.dtype) not in ("boolean", "Int64", "Float64"):
        raise OperationError(f"{op} needs numbers, not {x.dtype} values")
    return x


def _floats(x: pd.Series) -> np.ndarray:
    """All values as a float array, NaN where missing (no copy for a float64 column)."""
    if _is_numeric(x):
        return x.to_numpy(dtype=float)
    return x.to_numpy(dtype=float, na_value=np.nan)  # pd.NA and None, which numpy cannot hold


def _present(x: pd.Series) -> np.ndarray:
    """The non-missing values as a float array, without pandas' per-call index copies.

    ``Series.dropna`` also filters the index, which on 10M rows costs as much
    as the statistic itself; a float array is only copied when it has gaps.
    """
    values = _floats(x)
    missing = np.isnan(values)
    return values[~missing] if missing.any() else values


def _is_numeric(x: pd.Series) -> bool:
    return isinstance(x.dtype, np.dtype) and x.dtype.kind in "fiub"


@fixed_size
@needs_numbers
def sum(x: pd.Series) -> Any:
    """Sum of the non-missing values (0 for none)."""
    return _plain(_numbers(x, "sum").sum())


@fixed_size
@needs_numbers
def sqsum(x: pd.Series) -> Any:
    """Sum of squares of the non-missing values."""
    values = _present(_numbers(x, "sqsum"))
    return float(np.square(values).sum())  # elementwise: no BLAS threads fighting over the cores


@fixed_size
def min(x: pd.Series) -> Any:
    """Smallest non-missing value, or None if there is none."""
    if _is_numeric(x):
        return _extreme(x, np.fmin)
    present = x.dropna()  # pandas skips missing text values only with its own string type
    return None if present.empty else _plain(present.min())


@fixed_size
def max(x: pd.Series) -> Any:
    """Largest non-missing value, or None if there is none."""
    if _is_numeric(x):
        return _extreme(x, np.fmax)
    present = x.dropna()
    return None if present.empty else _plain(present.max())


def _extreme(x: pd.Series, pick: np.ufunc) -> Any:
    # fmin/fmax skip NaN in one pass with no copy; all-missing leaves NaN
    if builtins.len(x) == 0:
        return None
    value = pick.reduce(x.to_numpy())
    return None if value != value else _plain(value)


def set(x: pd.Series) -> list[Any]:
    """Sorted distinct non-missing values."""
    return sorted(_plain(v) for v in pd.unique(x.dropna()))


#: Largest histogram a server computes (memory is allocated per bin).
MAX_BINS = 100_000


def value_counts(x: pd.Series) -> list[list[Any]]:
    """``[value, count]`` for each distinct non-missing value."""
    return [[_plain(value), int(count)] for value, count in x.value_counts(dropna=True).items()]


@fixed_size
@needs_numbers
def histogram(x: pd.Series, bins: Any, range: Any = None) -> dict[str, list[Any]]:
    """Counts per bin: ``bins`` are the edges, or a bin count with ``range=(lo, hi)``.

    Edges must be finite and strictly increasing, and a range finite with
    ``lo < hi``: numpy counts NaN edges as negative numbers, which no
    privacy rule should have to recognise, so bad edges are refused before
    anything is counted. A bin count without a range would let each
    server pick its own edges, which cannot be pooled (and would reveal its
    min and max), so it is refused too. Every engine checks its arguments
    here.
    """
    _check_histogram(bins, range)
    counts, edges = np.histogram(_present(x), bins=bins, range=range)
    return {"counts": counts.tolist(), "edges": edges.tolist()}


def _check_histogram(bins: Any, range: Any = None) -> None:
    """Raise ``OperationError`` unless ``bins`` and ``range`` describe bins every server draws alike."""
    if isinstance(bins, (builtins.int, np.integer)) and not isinstance(bins, (bool, np.bool_)):
        if range is None:
            raise OperationError("a histogram with a bin count needs range=(lo, hi), the same on every server")
        if not 1 <= bins <= MAX_BINS:
            raise OperationError(f"a histogram needs between 1 and {MAX_BINS} bins")
    else:
        edges = _numbers_of(bins, "histogram edges must be a list of numbers, or bins a whole number")
        if edges.ndim != 1 or builtins.len(edges) < 2:
            raise OperationError("histogram edges must be a list of at least two numbers")
        if builtins.len(edges) > MAX_BINS:
            raise OperationError(f"at most {MAX_BINS} bins")
        if not np.isfinite(edges).all():
            raise OperationError("histogram edges must be finite numbers (no NaN or infinity)")
        if not (np.diff(edges) > 0).all():
            raise OperationError("histogram edges must be strictly increasing")
    if range is not None:
        bounds = _numbers_of(range, "a histogram range must be two numbers (lo, hi)")
        if bounds.shape != (2,) or not np.isfinite(bounds).all() or not bounds[0] < bounds[1]:
            raise OperationError("a histogram range must be two finite numbers (lo, hi) with lo < hi")


def _numbers_of(value: Any, message: str) -> np.ndarray:
    if isinstance(value, (str, bytes, dict)):
        raise OperationError(message)
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise OperationError(message) from None


def crosstab(a: pd.Series, b: pd.Series) -> list[list[Any]]:
    """``[a value, b value, count]`` for each combination present (rows missing either are dropped)."""
    both = pd.DataFrame({"a": a, "b": b}).dropna()
    counts = both.groupby(["a", "b"], sort=False, observed=True).size()  # combinations present only
    return [[_plain(i), _plain(j), int(n)] for (i, j), n in counts.items()]


#: An infinite value makes a centred sum NaN (inf - inf), as it should: no warning on the server for it.
_INFINITE_IS_NAN = np.errstate(invalid="ignore")


@_INFINITE_IS_NAN
@fixed_size
@needs_numbers
def moments(x: pd.Series) -> list[Any]:
    """``[n, mean, M2]`` of the non-missing values, computed in two passes for accuracy."""
    values = _present(x)
    if builtins.len(values) == 0:
        return [0, 0.0, 0.0]
    mean = values.mean()
    centred = values - mean
    np.multiply(centred, centred, out=centred)  # in place: one temporary array, not two
    return [builtins.len(values), float(mean), float(centred.sum())]


@_INFINITE_IS_NAN
@fixed_size
@needs_numbers
def comoments(x: pd.Series, y: pd.Series) -> list[Any]:
    """``[n, mean x, mean y, M2 x, M2 y, co-moment]`` over rows where both are present."""
    a, b = _complete_columns((x, y))
    if builtins.len(a) == 0:
        return [0, 0.0, 0.0, 0.0, 0.0, 0.0]
    mean_a, mean_b = a.mean(), b.mean()
    da, db = a - mean_a, b - mean_b
    return [builtins.len(a), float(mean_a), float(mean_b),
            float((da * da).sum()), float((db * db).sum()), float((da * db).sum())]


@_INFINITE_IS_NAN
@fixed_size
@needs_numbers
def comoment_matrix(*columns: pd.Series) -> list[Any]:
    """``[n, means, M]`` of several columns over rows where all are present; ``M`` is the centred cross-product matrix.

    Centring on the server keeps regression accurate when values are large
    against their spread (the client merges with Chan et al.'s update).
    """
    rows = _complete_rows(columns)
    if builtins.len(rows) == 0:
        k = builtins.len(columns)
        return [0, [0.0] * k, [[0.0] * k for _ in range(k)]]
    means = rows.mean(axis=0)
    centred = rows - means
    return [builtins.len(rows), means.tolist(), (centred.T @ centred).tolist()]


@fixed_size
@needs_numbers
def count_below(x: pd.Series, thresholds: list[float]) -> list[int]:
    """For each threshold, how many non-missing values are at most that threshold."""
    values = np.sort(_present(x))
    return np.searchsorted(values, np.asarray(thresholds, dtype=float), side="right").tolist()


def glm_step_release(y: pd.Series, family: str, intercept: bool, beta: Any, *columns: pd.Series) -> Release | None:
    """The row weights ``glm_step`` sums at the analyst's ``beta`` (``μ(1 − μ)`` for a logit, ``μ`` for a
    Poisson model): a ``beta`` that puts all the weight on one row makes the Hessian that row's value, so
    the weights are judged like any intermediate (``fedmed.ops.declared``)."""
    if not all(isinstance(c, pd.Series) for c in (y, *columns)) or beta is None:
        return None
    # read as the map reads them: what is not a number is missing (fedmed.server.evaluate.apply_map)
    frame = pd.concat([pd.to_numeric(c, errors="coerce") for c in (y, *columns)], axis=1).dropna()
    design = frame.iloc[:, 1:].to_numpy(dtype=float)
    if intercept:
        design = np.column_stack([np.ones(builtins.len(frame)), design])
    with np.errstate(all="ignore"):
        eta = design @ np.asarray(beta, dtype=float)
        if family == "binomial":
            mean = 0.5 * (1.0 + np.tanh(0.5 * eta))
            weight = mean * (1.0 - mean)
        else:
            weight = np.exp(eta)
    return Release(weights=(pd.Series(weight, index=frame.index),))


@declares(glm_step_release)
@fixed_size
@needs_numbers
def glm_step(y: pd.Series, family: str, intercept: bool, beta: list[float], *columns: pd.Series) -> list[Any]:
    """One Newton step's ingredients at ``beta``: ``[n, gradient, Hessian, log-likelihood]``.

    ``family`` is ``"binomial"`` (logit link) or ``"poisson"`` (log link);
    rows missing any value are left out.
    """
    rows = _complete_rows((y, *columns))
    target, design = rows[:, 0], rows[:, 1:]
    if intercept:
        design = np.column_stack([np.ones(builtins.len(rows)), design])
    eta = design @ np.asarray(beta, dtype=float)
    if family == "binomial":
        mean = 0.5 * (1.0 + np.tanh(0.5 * eta))  # the logistic function, without overflow
        weight = mean * (1.0 - mean)
        loglik = float(np.sum(target * eta - np.logaddexp(0.0, eta)))
    elif family == "poisson":
        mean = np.exp(eta)
        weight = mean
        loglik = float(np.sum(target * eta - mean - _log_factorial(target)))
    else:
        raise OperationError(f"unknown family {family!r}: use 'binomial' or 'poisson'")
    gradient = design.T @ (target - mean)
    hessian = (design * weight[:, None]).T @ design
    return [builtins.len(rows), gradient.tolist(), hessian.tolist(), loglik]


# -- GLM families with links, offsets and weights (fm.stats.glm) ---------------------------------

#: Per link: the mean from the linear predictor, and g'(mu), g''(mu) of the link g (as statsmodels' links).
GLM_LINKS = {
    "identity": (lambda eta: eta, lambda mu: np.ones_like(mu), lambda mu: np.zeros_like(mu)),
    "log": (np.exp, lambda mu: 1.0 / mu, lambda mu: -1.0 / mu**2),
    "logit": (lambda eta: 0.5 * (1.0 + np.tanh(0.5 * eta)), lambda mu: 1.0 / (mu * (1.0 - mu)),
              lambda mu: (2.0 * mu - 1.0) / (mu * (1.0 - mu)) ** 2),
    "inverse_power": (lambda eta: 1.0 / eta, lambda mu: -1.0 / mu**2, lambda mu: 2.0 / mu**3),
}


#: Per link: the link g itself, the linear predictor of a mean (statsmodels' start, a per-site fit's start).
GLM_LINK_VALUES = {"identity": lambda mu: mu, "log": np.log, "logit": lambda mu: np.log(mu / (1 - mu)),
                   "inverse_power": lambda mu: 1 / mu}


def _xlogy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.special import xlogy

    return xlogy(a, b)


def _gammaln(values: Any) -> Any:
    from scipy.special import gammaln

    return gammaln(values)


#: Per family: V(mu), V'(mu), the unit deviance d(y, mu), and the log-likelihood of a row at
#: ``(y, mu, var_weight, scale)``, all as statsmodels' ``genmod.families`` define them.
GLM_FAMILIES = {
    "gaussian": (lambda mu: np.ones_like(mu), lambda mu: np.zeros_like(mu), lambda y, mu: (y - mu) ** 2,
                 lambda y, mu, v, s: -0.5 * (v * (y - mu) ** 2 / s + np.log(s / v) + np.log(2 * np.pi))),
    "binomial": (lambda mu: mu * (1.0 - mu), lambda mu: 1.0 - 2.0 * mu,
                 lambda y, mu: 2.0 * (_xlogy(y, y) - _xlogy(y, mu) + _xlogy(1 - y, 1 - y) - _xlogy(1 - y, 1 - mu)),
                 lambda y, mu, v, s: v * (-_gammaln(y + 1) - _gammaln(2 - y) + y * np.log((mu + 1e-20) / (1 - mu + 1e-20))
                                          + np.log(1 - mu + 1e-20))),
    "poisson": (lambda mu: mu, lambda mu: np.ones_like(mu),
                lambda y, mu: 2.0 * (_xlogy(y, y) - _xlogy(y, mu) - (y - mu)),
                lambda y, mu, v, s: v / s * (_xlogy(y, mu) - mu - _gammaln(y + 1))),
    "gamma": (lambda mu: mu**2, lambda mu: 2.0 * mu, lambda y, mu: 2.0 * ((y - mu) / mu - np.log(y / mu)),
              lambda y, mu, v, s: (v / s) * np.log(v / s * y / mu) - v / s * y / mu - _gammaln(v / s) - np.log(y)),
}

#: The open interval a fitted mean must lie in under links that can leave it (a probability of 1.2 under the
#: log link): outside it a step's deviance, Pearson chi² and log-likelihood are NaN, and the client halves
#: back towards its last valid coefficients (fedmed.stats.regression.GLM).
GLM_MEAN_RANGE = {("binomial", "log"): (0.0, 1.0), ("binomial", "identity"): (0.0, 1.0)}


def _clip(family: str, mu: np.ndarray) -> np.ndarray:
    eps = np.finfo(float).eps
    return np.clip(mu, eps, 1 - eps) if family == "binomial" else mu


#: Extra row-wise inputs a ``glm_family_step`` may take before the predictors, in this order.
GLM_ROLES = ("offset", "freq_weights", "var_weights")


def glm_family_weights(y: pd.Series, family: str, link: str, intercept: bool, beta: Any, scale: float,
                       robust: bool, roles: list[str], *columns: pd.Series) -> list[pd.Series] | None:
    """The per-row multipliers that ``glm_family_step`` sums at the analyst's ``beta``, on the rows it
    uses: the information's weights ``W = f v / (g'(μ)² V(μ))``, the score's ``f v / (g'(μ) V(μ))`` (it
    multiplies ``y − μ``) and the Pearson sum's ``f v / V(μ)``. The disclosure analysis judges each like
    any intermediate: a ``beta`` or an offset that puts (almost) all of one of them on one row makes
    that sum one row's value. Red-teamed: gamma with a log link has ``W = 1`` on every row, but its
    score factor ``exp(-η)``, with an offset that is small on one row only, summed one patient's age.
    None before the first estimate (``beta=None``: the server's own start) or for unknown arguments.
    """
    if beta is None or family not in GLM_FAMILIES or link not in GLM_LINKS or any(r not in GLM_ROLES for r in roles):
        return None
    if not all(isinstance(c, pd.Series) for c in (y, *columns)):
        return None
    frame = pd.concat([pd.to_numeric(c, errors="coerce") for c in (y, *columns)], axis=1).dropna()
    values = frame.to_numpy(dtype=float).T
    extra, design = dict(zip(roles, values[1:])), values[1 + builtins.len(roles):].T
    if intercept:
        design = np.column_stack([np.ones(builtins.len(frame)), design])
    ones = np.ones(builtins.len(frame))
    offset, freq, var = (extra.get(role, ones * (role != "offset")) for role in GLM_ROLES)
    inverse, deriv, _ = GLM_LINKS[link]
    variance = GLM_FAMILIES[family][0]
    with np.errstate(all="ignore"):
        mu = inverse(design @ np.asarray(beta, dtype=float) + offset)
        gprime, v_mu = deriv(mu), variance(mu)
        factors = [freq * var / (gprime**2 * v_mu), freq * var / (gprime * v_mu), freq * var / v_mu]
        # a row whose mean leaves the family's range makes the round's deviance NaN, one bit the analyst
        # steers with beta: such rows are missing here, so that 1 to k-1 of them are refused as any
        # intermediate missing on a few rows is (what is left is the "zero against refused" limit)
        low, high = GLM_MEAN_RANGE.get((family, link), (-np.inf, np.inf))
        if link == "inverse_power":
            low = 0.0  # a gamma mean at or below zero
        inside = (mu > low) & (mu < high) & np.isfinite(mu)
        return [pd.Series(_to_digits(np.where(inside, f, np.nan)), index=frame.index) for f in factors]


def _to_digits(values: np.ndarray, digits: int = 12) -> np.ndarray:
    """``values`` to ``digits`` of the largest: a multiplier constant in theory (gamma with a log link has
    ``W = 1`` on every row) must not look like one that singles out the rows rounding moved."""
    finite = np.isfinite(values)
    top = np.max(np.abs(values[finite])) if finite.any() else 0.0
    if top > 0:
        return np.round(values / top, digits) * top
    return values


def glm_family_release(*args: Any) -> Release | None:
    """``glm_family_step``'s row multipliers at the analyst's ``beta`` (:func:`glm_family_weights`), judged
    like intermediates (``fedmed.ops.declared``)."""
    weights = glm_family_weights(*args) if builtins.len(args) >= 8 else None
    return None if weights is None else Release(weights=tuple(weights))


@declares(glm_family_release)
@_INFINITE_IS_NAN
@fixed_size
@needs_numbers
def glm_family_step(y: pd.Series, family: str, link: str, intercept: bool, beta: Any, scale: float, robust: bool,
                    roles: list[str], *columns: pd.Series) -> dict[str, Any]:
    """One IRLS (Fisher scoring) round of a GLM at ``beta``, over the rows where every input is present.

    ``columns`` are the inputs named in ``roles`` (a subset of ``GLM_ROLES``, in that order), then the
    predictors. Returns ``n`` (rows), ``wn`` (sum of the frequency weights), ``gradient`` (the score
    ``Xᵀ f v (y − μ) / (g'(μ) V(μ))``), ``information`` (``Xᵀ W X`` with ``W = f v / (g'(μ)² V(μ))``),
    ``deviance``, ``pearson`` (``Σ f v (y − μ)² / V(μ)``) and ``loglik`` at ``scale``; with ``robust``
    also ``meat`` (``Σ f (score of the row)²``) and ``observed`` (the observed information), the two
    halves of the HC0 sandwich. ``beta=None`` starts as statsmodels does, from ``μ = (y + ȳ) / 2``
    (binomial ``(y + 0.5) / 2``): ``gradient`` is then ``Xᵀ W z`` with the working response ``z``, so
    that ``information⁻¹ gradient`` is the first estimate.

    >>> step = glm_family_step(pd.Series([1.0, 2.0, 4.0]), "gamma", "log", True, [0.5], 1.0, False, [])
    >>> step["n"], round(step["gradient"][0], 6)
    (3, 1.245715)
    """
    unknown = [r for r in roles if r not in GLM_ROLES]
    if family not in GLM_FAMILIES or link not in GLM_LINKS or unknown:
        raise OperationError(f"glm_family_step: unknown family {family!r}, link {link!r} or roles {unknown}")
    inverse, deriv, deriv2 = GLM_LINKS[link]
    variance, variance_deriv, unit_deviance, loglik = GLM_FAMILIES[family]
    rows = _complete_columns((y, *columns))
    target, extra, design = rows[0], dict(zip(roles, rows[1:])), rows[1 + builtins.len(roles):].T
    if intercept:
        design = np.column_stack([np.ones(builtins.len(target)), design])
    ones = np.ones_like(target)
    offset, freq, var = (extra.get(role, ones * (role != "offset")) for role in GLM_ROLES)
    if beta is None:
        mu = (target + 0.5) / 2 if family == "binomial" else (target + target.mean()) / 2
    else:
        mu = inverse(design @ np.asarray(beta, dtype=float) + offset)
    gprime, v_mu = deriv(mu), variance(mu)
    weight = freq * var / (gprime**2 * v_mu)
    residual = target - mu
    if beta is None:  # the working response of the first weighted least-squares fit
        eta = GLM_LINK_VALUES[link](mu)
        gradient = design.T @ (weight * (eta - offset + gprime * residual))
    else:
        gradient = design.T @ (freq * var * residual / (gprime * v_mu))
    answer = {
        "n": builtins.len(target), "wn": float(freq.sum()), "gradient": gradient.tolist(),
        "information": ((design * weight[:, None]).T @ design).tolist(),
        # statsmodels clips a binomial mean into (0, 1) for these sums only (log and identity links leave it)
        "deviance": float(np.sum(freq * var * unit_deviance(target, _clip(family, mu)))),
        "pearson": float(np.sum(freq * var * residual**2 / v_mu)),
        "loglik": float(np.sum(freq * loglik(target, _clip(family, mu), var, float(scale)))),
    }
    low, high = GLM_MEAN_RANGE.get((family, link), (-np.inf, np.inf))
    if not np.all((mu > low) & (mu < high)):  # no fit here: only that the coefficients left the range
        answer.update(deviance=float("nan"), pearson=float("nan"), loglik=float("nan"))
    if robust:
        factor = residual / (gprime * v_mu)
        score = var * factor  # per row, without the frequency weight
        observed = weight * (1 + factor * (v_mu * deriv2(mu) + variance_deriv(mu) * gprime))
        answer["meat"] = ((design * (freq * score**2)[:, None]).T @ design).tolist()
        answer["observed"] = ((design * observed[:, None]).T @ design).tolist()
    return answer


def _complete_rows(columns: Any) -> np.ndarray:
    """The rows where every column has a value, as a float matrix (one column per input)."""
    return _complete_columns(columns).T


def _complete_indexed(columns: Any) -> tuple[pd.Index, np.ndarray]:
    """As :func:`_complete_rows`, with the index labels of the rows kept (for a release's declaration)."""
    frame = pd.concat([pd.Series(_floats(c), index=c.index) for c in columns], axis=1)
    values = frame.to_numpy(dtype=float)
    keep = ~np.isnan(values).any(axis=1)
    return frame.index[keep], values[keep]


def _complete_columns(columns: Any) -> np.ndarray:
    """The same values column by column: row ``i`` holds input ``i``, each contiguous in memory.

    Columns are matched by index, as pandas does; columns of one table share
    their index, and then plain arrays are stacked (a DataFrame built for the
    purpose costs more than the statistic on small fragments).
    """
    tables = [i for i, c in enumerate(columns) if isinstance(c, pd.DataFrame)]
    if tables:  # pairs and matrices are of single columns: a whole table has no one value per row
        raise OperationError("this aggregate pairs single columns (data['x'], data['y']), not whole tables; "
                             "select the columns, or use fm.stats.corr(data, columns) for a table")
    first = columns[0].index
    if all(c.index is first or c.index.equals(first) for c in columns[1:]):
        stacked = np.vstack([_floats(c) for c in columns])
    else:
        stacked = pd.DataFrame({i: c for i, c in enumerate(columns)}).to_numpy(dtype=float, na_value=np.nan).T.copy()
    missing = np.isnan(stacked).any(axis=0)
    return stacked[:, ~missing] if missing.any() else stacked


def _log_factorial(values: np.ndarray) -> np.ndarray:
    from scipy.special import gammaln

    return gammaln(values + 1.0)


# -- Cox proportional hazards (fedmed.stats.cox) ---------------------------------------------------


def cox_release(time: pd.Series, event: pd.Series, beta: Any, efron: bool, strata: bool, bins: Any,
                *columns: pd.Series) -> Release:
    """What a ``cox_step`` (or ``cox_bins``) answer is made of, for the privacy rules (``fedmed.ops.declared``).

    Per stratum and time bin (``bins``, ``fedmed.ops.cox.binned``) the answer
    sums over the persons who leave follow-up in it (a risk set is the bins
    from its time on) and counts its events: each bin is a cell, judged
    like a group of a group-by. The terms summed are 1, each predictor and
    each product of two, weighed by ``exp(x'beta)``, whose spread over the
    rows is judged like any intermediate. Bins other than powers of two are
    refused: bins of powers of two are dyadic intervals, any two of which
    nest or are disjoint, so that what two fits at two binnings release
    differs by whole bins one of them judged, never by a sliver of persons.
    """
    index, rows, everywhere, terms = _COX_ROWS[bool(strata)].get((time, event, *columns),
                                                                 lambda: _cox_terms(time, event, strata, columns))
    t, e = cox.binned(rows[:, 0], bins), rows[:, 1]
    design = rows[:, 2:-1] if strata else rows[:, 2:]
    stratum = rows[:, -1] if strata else np.zeros(builtins.len(rows))
    cell = cox.cells(stratum, t)[0]

    def coded(where: np.ndarray) -> pd.Series:
        codes = pd.Series(-1, index=everywhere)
        codes[index[where]] = cell[where]
        return codes

    bad = (e != 0) & (e != 1)
    scale = None
    if beta is not None:
        with np.errstate(all="ignore"):
            scale = pd.Series(np.exp(design @ np.asarray(beta, dtype=float)), index=index)
    return Release(
        weights=() if scale is None else (scale,),
        cells=(Cells("the persons leaving follow-up in one time bin", coded(np.ones(builtins.len(rows), bool))),
               Cells("the events of one time bin", coded(e == 1), summed=efron),  # Breslow: their count only
               # the rest of a bin: its count and the events' tell it apart, and with Efron its sums too (red-teamed:
               # six persons leaving a bin, five of them events, gave the sixth's predictors)
               Cells("the persons leaving one time bin without an event", coded(e != 1), summed=efron),
               Cells("the rows whose event is neither 0 nor 1", _flagged(index, bad, everywhere), summed=False)),
        terms=terms, scale=scale,
        refused=None if cox.nested(bins) else
        f"time bins {bins!r}: under privacy rules a width is 0 (exact times) or a power of two (..., 0.5, 1, 2, "
        "4, ...), and so is a number of bins per octave, so that the bins of any two fits nest",
        advice="widen the time bins (fm.stats.coxph(..., bin_width='auto') finds the binning every cell allows)",
    )


#: The complete rows and summed terms of the last Cox release judged: the same for every binning of a ladder.
_COX_ROWS = {False: IdentityMemo(), True: IdentityMemo()}  # by strata: the last column a predictor or not


def _cox_terms(time: pd.Series, event: pd.Series, strata: bool,
               columns: tuple[pd.Series, ...]) -> tuple[pd.Index, np.ndarray, pd.Index, pd.DataFrame]:
    """The complete rows (index and values), every row's label, and the terms a Cox answer sums per cell:
    each predictor and each product of two."""
    index, rows = _complete_indexed((time, event, *columns))
    design = rows[:, 2:-1] if strata else rows[:, 2:]
    names = [str(c.name) if c.name is not None else f"predictor {i + 1}" for i, c in enumerate(columns)]
    names = names[: design.shape[1]]
    terms = {name: design[:, j] for j, name in enumerate(names)}
    terms.update({f"{a} * {b}": design[:, i] * design[:, j]
                  for i, a in enumerate(names) for j, b in enumerate(names) if j >= i})
    return index, rows, time.index.union(event.index), pd.DataFrame(terms, index=index)


def _flagged(index: pd.Index, where: np.ndarray, everywhere: pd.Index) -> pd.Series:
    """One cell (0) of the rows of ``index`` where ``where`` holds; -1 on the other rows of ``everywhere``."""
    codes = pd.Series(-1, index=everywhere)
    codes[index[where]] = 0
    return codes


def _cox_rows(time: pd.Series, event: pd.Series, strata: bool, bins: Any,
              columns: tuple[pd.Series, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The complete rows as (binned time, event code, stratum code, predictors)."""
    rows = _complete_rows((time, event, *columns))
    stratum = rows[:, -1] if strata else np.zeros(builtins.len(rows))
    return cox.binned(rows[:, 0], bins), rows[:, 1], stratum, rows[:, 2:-1] if strata else rows[:, 2:]


@declares(lambda time, event, efron, strata, bins, *columns: cox_release(time, event, None, efron, strata, bins,
                                                                          *columns))
@fixed_size
@needs_numbers
def cox_bins(time: pd.Series, event: pd.Series, efron: bool, strata: bool, bins: Any,
             *columns: pd.Series) -> dict[str, int]:
    """Whether a binning of the times can be released, and how many event times it keeps (``fm.stats.coxph``).

    The answer is ``{"n", "events", "bad", "times"}``: complete rows, events,
    event codes other than 0/1 and distinct binned event times. Its privacy
    rules are ``cox_step``'s at the same binning, so that a client asks for
    a ladder of binnings in one request and fits at one every server answered.

    >>> t, e, x = pd.Series([1.0, 2.0, 2.0, 3.0]), pd.Series([1, 1, 0, 1]), pd.Series([0.5, 0.0, 1.0, 2.0])
    >>> cox_bins(t, e, False, False, 0.0, x), cox_bins(t, e, False, False, 2.0, x)["times"]
    ({'n': 4, 'events': 3, 'bad': 0, 'times': 3}, 2)
    """
    t, e, _, _ = _cox_rows(time, event, strata, bins, columns)
    return {"n": builtins.len(t), "events": int(np.sum(e == 1)), "bad": int(np.sum((e != 0) & (e != 1))),
            "times": builtins.len(np.unique(t[e == 1]))}


# Not @fixed_size: the answer holds a few sums per time bin, and there can be as many bins as rows.
@declares(cox_release)
@needs_numbers
def cox_step(time: pd.Series, event: pd.Series, beta: Any, efron: bool, strata: bool, bins: Any,
             *columns: pd.Series) -> dict[str, Any]:
    """Per stratum and time bin, the sums a Cox model's partial likelihood at ``beta`` needs (``fm.stats.coxph``).

    Rows missing any value are left out; ``columns`` are the predictors,
    then (``strata`` true) a numeric stratum code. Times are read in
    ``bins`` (each moved down to the start of its bin,
    ``fedmed.ops.cox.binned``; 0 keeps them exact). The answer has ``n``,
    ``events`` and ``bad`` (complete rows, events, event codes other than
    0/1), one entry per cell of rows sharing a stratum and a binned time in
    ``stratum`` and ``time`` (sorted), and per cell the sums of
    ``fedmed.ops.cox.row_terms`` in ``cells``: ``w``, ``w x``, ``w x x'``
    (``w = exp(x'beta)``), the events, and with ``efron`` the same three
    over the events; ``xsum`` is the sum of ``x`` over all events. The
    client adds the cells of all servers and sums them backwards over time
    into risk sets (``fedmed.ops.cox.pooled_sums``): no grid of event times
    has to be agreed first. One sort of the rows, sums per cell in one pass.

    >>> t, e, x = pd.Series([1.0, 2.0, 2.0, 3.0]), pd.Series([1, 1, 0, 1]), pd.Series([0.5, 0.0, 1.0, 2.0])
    >>> step = cox_step(t, e, [0.0], False, False, 0.0, x)
    >>> step["time"], step["cells"][1], step["xsum"]
    ([1.0, 2.0, 3.0], [2.0, 1.0, 1.0, 1.0], [2.5])
    """
    t, e, stratum, design = _cox_rows(time, event, strata, bins, columns)
    event_rows = e == 1
    code, labels, times = cox.cells(stratum, t)
    table = cox.row_terms(design, np.asarray(beta, dtype=float), event_rows, efron)
    sums = cox.cell_sums(code, table, builtins.len(times))
    return {"n": builtins.len(t), "events": int(np.sum(event_rows)), "bad": int(np.sum((e != 0) & (e != 1))),
            "stratum": [_plain(v) for v in labels], "time": times.tolist(),
            "cells": sums.tolist(), "xsum": design[event_rows].sum(axis=0).tolist()}


# -- schema (pandas' columns and dtypes; fedmed.api.schema) ---------------------------------------


@fixed_size
def schema(x: pd.Series) -> str:
    """The column's dtype as pandas writes it (``"int64"``, ``"str"``, ``"category"``): never a value.

    On a table, each column answers on its own (``{"$columns": {name: dtype}}``, see
    ``fedmed.ops.columns``): the column names and dtypes, in the fragment's order.

    >>> schema(pd.Series([1, 2]))
    'int64'
    """
    return str(x.dtype)


# -- grouped partial aggregates (data.groupby(...)) ------------------------------------------------

#: Numbers a ``grouped`` entry holds after its labels, in this order: rows of the group, values
#: present, their sum, mean and centred sum of squares (Chan et al.'s merge), smallest, largest.
GROUP_STATS = ("size", "n", "sum", "mean", "m2", "min", "max")


def grouped(x: pd.Series, values: bool, *keys: pd.Series) -> dict[str, Any]:
    """Per-group partial aggregates of ``x``, keyed by the labels of ``keys`` (as pandas' groupby).

    With ``values=False``: ``{"keys": len(keys), "groups": [[*labels, size, n, sum, mean, m2, min,
    max], ...]}`` (``GROUP_STATS``; sum, mean and m2 are None for text). With ``values=True``: ``{"keys":
    len(keys), "counts": [[*labels, value, count], ...]}``, each value's count per group (medians,
    quantiles, nunique and value_counts per group). Rows missing a key are dropped, as pandas'
    ``dropna=True``; only groups present are sent (``observed=True``). The answer grows with the
    groups, not the rows: a server prices it as one entry per row, as ``value_counts``.

    Examples
    --------
    >>> x = pd.Series([1.0, 2.0, 4.0, None]); k = pd.Series(["a", "a", "b", "b"])
    >>> grouped(x, False, k)["groups"]
    [['a', 2, 2, 3.0, 1.5, 0.5, 1.0, 2.0], ['b', 2, 1, 4.0, 4.0, 0.0, 4.0, 4.0]]
    >>> grouped(x, True, k)["counts"]
    [['a', 1.0, 1], ['a', 2.0, 1], ['b', 4.0, 1]]
    """
    if not keys:
        raise OperationError("grouped needs at least one key column")
    if any(not isinstance(k, pd.Series) for k in keys):
        raise OperationError("grouped keys must be columns of the fragment (data['sex']), not constants")
    # keys are aligned to the values' rows, as pandas aligns a Series key to the grouped object
    frame = pd.DataFrame({"x": x})
    for i, k in enumerate(keys):
        frame[f"k{i}"] = k
    if values:
        counts = frame.dropna(subset=["x"]).groupby([*frame.columns[1:], "x"], sort=False, observed=True,
                                                    dropna=True).size()
        return {"keys": builtins.len(keys), "counts": [[*map(_plain, _labels(i)), int(n)] for i, n in counts.items()]}
    return {"keys": builtins.len(keys), "groups": _group_stats(frame, builtins.len(keys))}


def _labels(label: Any) -> tuple[Any, ...]:
    return label if isinstance(label, tuple) else (label,)


def _group_stats(frame: pd.DataFrame, nkeys: int) -> list[list[Any]]:
    x = frame["x"]
    if isinstance(x.dtype, pd.CategoricalDtype) and not x.dtype.ordered:
        frame = frame.assign(x=x.astype(x.dtype.categories.dtype))  # by value: an unordered category has no min
        x = frame["x"]
    numeric = _is_numeric(x) or pd.api.types.is_numeric_dtype(x.dtype)
    if numeric and not _is_numeric(x):
        frame = frame.assign(x=_floats(x))  # nullable Int64/Float64/boolean: as floats, NaN where missing
    elif x.dtype.kind == "b":
        frame = frame.assign(x=x.astype("int64"))  # pandas sums and averages booleans as 0/1
    g = frame.groupby([f"k{i}" for i in range(nkeys)], sort=False, observed=True, dropna=True)["x"]
    size, n, low, high = g.size(), g.count(), g.min(), g.max()
    if numeric:
        # one grouper for every statistic (keys factorised once); the mean from pandas' compensated sum
        total, var = g.sum(), g.var(ddof=0)
        mean = total / n.where(n > 0)
        m2 = (var * n).where(n > 0, 0.0)
    else:
        total = mean = m2 = pd.Series(None, index=size.index, dtype=object)
    rows = zip(size.index, size.to_numpy(), n.to_numpy(), total.to_numpy(), mean.to_numpy(), m2.to_numpy(),
               low.to_numpy(), high.to_numpy())
    return [[*map(_plain, _labels(label)), int(s), int(c), _number(t), _number(mu), _number(q), _value(lo), _value(hi)]
            for label, s, c, t, mu, q, lo, hi in rows]


def _number(value: Any) -> Any:
    """A plain number, None for none (text columns, or a mean of no values)."""
    if value is None or value is pd.NA:
        return None
    value = _plain(value)
    return None if isinstance(value, float) and value != value else value


def _value(value: Any) -> Any:
    # an extreme of no values is None (as ``min``), never NaN: NaN means withheld on the wire
    return _number(value)


# -- per-site model fits (fm.stats.slma; helper "slma", issue 17) ---------------------------------

#: The fewest complete rows per parameter a ``site_fit`` accepts, whatever the analyst asks:
#: DataSHIELD's ``nfilter.glm`` (parameters at most 0.37 of the rows), as rows per parameter.
SITE_FIT_ROWS_PER_PARAMETER = 3.0


def site_fit_with(rows_per_parameter: float = SITE_FIT_ROWS_PER_PARAMETER) -> Any:
    """A ``site_fit`` map that refuses sites with fewer than ``rows_per_parameter`` complete rows per parameter.

    The analyst may ask for more rows per parameter, never fewer: a server
    that wants a stricter floor names its own map in its config, e.g.
    ``site_fit: {map: hospital.ops.site_fit, reduce: fedmed.ops.public.site_fit}``
    with ``site_fit = fedmed.ops.private.site_fit_with(10)`` in ``hospital/ops.py``.
    """
    floor = float(rows_per_parameter)

    @fixed_size
    @needs_numbers
    def site_fit(y: pd.Series, model: str, intercept: bool, rows_per_parameter: float, max_iter: int,
                 tol: float, *columns: pd.Series) -> list[Any]:
        """``model`` fitted on this fragment's complete rows to convergence: ``[n, coefficients, covariance]``.

        ``model`` is a key of ``SITE_FITS`` (``"ols"``, ``"logit"``, ``"poisson"``), ``"glm/<family>/<link>"``
        (``"glm/<family>/<link>/<roles>"`` with offsets or weights: the first of ``columns`` are then the
        inputs ``roles`` names, see :func:`_site_family_fit`) or ``"cox/breslow"``, ``"cox/efron"``. A Cox
        fit reads ``y`` as the follow-up time and the first of ``columns`` as the event (0/1), and adds the
        number of events to its answer.
        """
        fit = SITE_FITS.get(model) or _site_family_fit(model)
        if fit is None:
            raise OperationError(f"unknown model {model!r}: use one of {sorted(SITE_FITS)}, 'glm/<family>/<link>' "
                                 f"or 'glm/<family>/<link>/<roles>' (roles of {list(GLM_ROLES)}, in that order)")
        outcomes = getattr(fit, "outcomes", 1)  # leading columns that are the outcome (Cox: time and event)
        rows = _complete_rows((y, *columns))
        target, design = (rows[:, 0] if outcomes == 1 else rows[:, :outcomes]), rows[:, outcomes:]
        if intercept:
            design = np.column_stack([np.ones(builtins.len(rows)), design])
        least = builtins.max(floor, float(rows_per_parameter))
        # the rows the floor counts (a weighted GLM: those of positive weight), then a fit's own counts (Cox: events)
        counts = {**getattr(fit, "rows", _complete)(target), **getattr(fit, "counts", _no_counts)(target)}
        floors = getattr(fit, "floors", {})  # a fit's own floors, which no analyst can lower
        for what, count in counts.items():
            _check_site_size(count, design.shape[1], builtins.max(least, floors.get(what, 0)), what)
        params, cov = fit(target, design, int(max_iter), float(tol))
        return [builtins.len(rows), params.tolist(), cov.tolist(), *list(counts.values())[1:]]

    site_fit.rows_per_parameter = floor
    return site_fit


def _complete(target: np.ndarray) -> dict[str, int]:
    return {"complete rows": builtins.len(target)}


def _no_counts(target: np.ndarray) -> dict[str, int]:
    return {}


def _check_site_size(n: int, parameters: int, rows_per_parameter: float, what: str = "complete rows") -> None:
    if n < rows_per_parameter * parameters:
        # no count in the message: the refusal says only that the site is too small for the model
        raise PrivacyError(
            f"a per-site fit of {parameters} parameters needs at least {rows_per_parameter:g} {what} per "
            f"parameter, and this fragment has fewer {what}: fit fewer predictors, or pool this site with others "
            "(fm.stats.logit, fm.stats.ols, fm.stats.coxph... on the pooled rows, where the server allows it)",
            operation="site_fit", policy=f"site_fit rows_per_parameter={rows_per_parameter:g}",
        )


def _site_ols(y: np.ndarray, design: np.ndarray, max_iter: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Least squares with statsmodels' covariance ``rss / (n - p) (X'X)^-1``."""
    n, p = design.shape
    params, _, rank, _ = np.linalg.lstsq(design, y, rcond=None)
    if rank < p or n <= p:
        raise OperationError("the predictors are collinear on this site's rows (a column constant there, "
                             "or one a combination of others): leave one out")
    residual = y - design @ params
    return params, (residual @ residual / (n - p)) * _inverse(design.T @ design)


def _glm_terms(family: str, y: np.ndarray, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean, Newton weight and log-likelihood (up to a constant in beta) of a canonical-link GLM at ``eta``."""
    if family == "logit":
        mean = 0.5 * (1.0 + np.tanh(0.5 * eta))  # the logistic function, without overflow
        return mean, mean * (1.0 - mean), float(np.sum(y * eta - np.logaddexp(0.0, eta)))
    mean = np.exp(eta)
    return mean, mean, float(np.sum(y * eta - mean))


def _site_glm(family: str) -> Any:
    """Newton–Raphson to convergence for a canonical-link ``family``, halving steps that lower the likelihood."""
    def fit(y: np.ndarray, design: np.ndarray, max_iter: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
        _check_outcome(family, y)
        beta = _glm_start(family, y, design)
        _, weight, loglik = _glm_terms(family, y, design @ beta)
        for _ in range(max_iter):
            mean, weight, _ = _glm_terms(family, y, design @ beta)
            step = _solve(design.T @ (design * weight[:, None]), design.T @ (y - mean))
            for _ in range(40):
                new = _glm_terms(family, y, design @ (beta + step))[2]
                if new >= loglik - 1e-12 * (1.0 + abs(loglik)):
                    break
                step = step / 2
            beta, loglik = beta + step, new
            if np.max(np.abs(step)) < tol * (1.0 + np.max(np.abs(beta))):
                _, weight, _ = _glm_terms(family, y, design @ beta)
                return beta, _inverse(design.T @ (design * weight[:, None]))
        raise OperationError(f"the {family} fit did not converge on this site in {max_iter} iterations: a predictor "
                             "may predict the outcome perfectly there (separation); leave it out or raise max_iter")
    return fit


def _glm_start(family: str, y: np.ndarray, design: np.ndarray) -> np.ndarray:
    """Where statsmodels starts a Poisson fit (the intercept at log mean y); zeros otherwise."""
    beta = np.zeros(design.shape[1])
    if family == "poisson" and design.shape[1] and np.all(design[:, 0] == 1.0) and y.mean() > 0:
        beta[0] = np.log(y.mean())
    return beta


def _check_outcome(family: str, y: np.ndarray) -> None:
    if family == "logit" and (np.any(y < 0) or np.any(y > 1)):
        raise OperationError("a logit's y must lie between 0 and 1: recode it (y=data['died'] == 1)")
    if family == "poisson" and np.any(y < 0):
        raise OperationError("a Poisson y must be a count of 0 or more")


def _solve(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    return _inverse(matrix) @ vector


def _inverse(matrix: np.ndarray) -> np.ndarray:
    """The inverse, or an error when the fit's information matrix is (nearly) singular on this site."""
    scale = 1.0 / np.sqrt(np.where(np.diag(matrix) > 0, np.diag(matrix), np.inf))
    scaled = matrix * np.outer(scale, scale)
    if not np.all(np.isfinite(scaled)) or np.linalg.eigvalsh(scaled)[0] <= 1e-10 * builtins.max(1.0, np.abs(scaled).max()):
        raise OperationError("the predictors are collinear on this site's rows, or some are constant there, or "
                             "the fit diverges (separation): leave them out")
    return np.linalg.inv(scaled) * np.outer(scale, scale)


def _site_family_fit(model: str) -> Any:
    """The fit of ``"glm/<family>/<link>"`` (a key pair of ``GLM_FAMILIES`` and ``GLM_LINKS``) or, with offsets
    or weights, ``"glm/<family>/<link>/<roles>"``: ``roles`` a comma-separated subset of ``GLM_ROLES`` in that
    order (``"glm/poisson/log/offset,freq_weights"``), whose columns follow ``y`` in the fit's outcome. None
    for any other name.

    IRLS as ``glm_family_step`` and the client's ``fm.stats.glm`` run it, on one site: weights
    ``W = f v / (g'(μ)² V(μ))``, score and deviance weighted by ``f v``, statsmodels' start, steps halved
    while the deviance rises or the means leave the family's range, statsmodels' covariance
    ``scale · (Xᵀ W X)⁻¹`` (scale Pearson χ² / (Σf − p) for the gaussian and gamma families, else 1).
    An offset must be finite, a weight finite and 0 or more; the rows-per-parameter floor counts the
    complete rows of positive weight (rows, not the sum of the frequency weights): a row of weight 0 adds
    nothing to the fit, and must not count towards it.
    """
    parts = model.split("/")
    if builtins.len(parts) not in (3, 4) or parts[0] != "glm":
        return None
    family, link = parts[1], parts[2]
    roles = parts[3].split(",") if builtins.len(parts) == 4 else []
    if family not in GLM_FAMILIES or link not in GLM_LINKS or roles != [r for r in GLM_ROLES if r in roles]:
        return None

    def fit(outcome: np.ndarray, design: np.ndarray, max_iter: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
        y, offset, freq, var = _family_inputs(outcome, roles)
        prior = freq * var
        _check_family_outcome(family, y)
        beta = _family_start(family, link, y, design, offset, prior)
        deviance = _family_terms(family, link, y, design, beta, offset, prior)[3]
        if not np.isfinite(deviance):
            raise OperationError(f"the {family} {link} fit leaves the range of its means at its start on this site: "
                                 "fit another link")
        for _ in range(max_iter):
            _, weight, score, _ = _family_terms(family, link, y, design, beta, offset, prior)
            step = _solve(design.T @ (design * weight[:, None]), score)
            for _ in range(40):
                new = _family_terms(family, link, y, design, beta + step, offset, prior)[3]
                if np.isfinite(new) and new <= deviance + 1e-12 * (1.0 + abs(deviance)):
                    break
                step = step / 2
            else:
                break
            beta, deviance = beta + step, new
            if np.max(np.abs(step)) < tol * (1.0 + np.max(np.abs(beta))):
                mu, weight, _, _ = _family_terms(family, link, y, design, beta, offset, prior)
                scale = 1.0
                if family in ("gaussian", "gamma"):  # estimated scale, as statsmodels: Pearson chi² / df_resid
                    df_resid = float(np.sum(freq)) - design.shape[1]
                    if df_resid <= 0:
                        raise OperationError("the frequency weights on this site sum to no more than the "
                                             "coefficients: no scale can be estimated; fit fewer predictors")
                    scale = float(np.sum(prior * (y - mu) ** 2 / GLM_FAMILIES[family][0](mu))) / df_resid
                return beta, scale * _inverse(design.T @ (design * weight[:, None]))
        raise OperationError(f"the {family} fit with the {link} link did not converge on this site: its means may "
                             "reach the edge of their range (probabilities of 0 or 1) or a predictor separates the "
                             "outcome there; fit fewer predictors or another link")

    fit.outcomes = 1 + builtins.len(roles)
    if roles:
        fit.rows = lambda outcome: _weighted_rows(outcome, roles)
    return fit


def _family_inputs(outcome: np.ndarray, roles: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``y``, offset, frequency and variance weights from a fit's outcome (``y``, then the columns of ``roles``)."""
    if outcome.ndim == 1:
        return outcome, np.zeros_like(outcome), np.ones_like(outcome), np.ones_like(outcome)
    extra, ones = dict(zip(roles, outcome[:, 1:].T)), np.ones(builtins.len(outcome))
    offset, freq, var = (extra.get(role, ones * (role != "offset")) for role in GLM_ROLES)
    return outcome[:, 0], offset, freq, var


def _weighted_rows(outcome: np.ndarray, roles: list[str]) -> dict[str, int]:
    """The complete rows of positive weight, which the floor counts; offsets and weights checked first (a
    miscoded weight must not read as a site too small)."""
    _, offset, freq, var = _family_inputs(outcome, roles)
    if not np.all(np.isfinite(offset)):
        raise OperationError("the offset is infinite on some of this site's rows (an exposure of 0, whose log "
                             "is the offset?): exposures must be positive, offsets finite")
    for name, weights in (("freq_weights", freq), ("var_weights", var)):
        if not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise OperationError(f"{name} are negative or infinite on some of this site's rows; weights are "
                                 "finite and 0 or more")
    return {"complete rows of positive weight": int(np.count_nonzero(freq * var > 0))}


def _family_start(family: str, link: str, y: np.ndarray, design: np.ndarray, offset: np.ndarray,
                  prior: np.ndarray) -> np.ndarray:
    """statsmodels' first estimate: weighted least squares at ``μ = (y + ȳ)/2`` (binomial ``(y + ½)/2``) with the
    weights ``prior / (g'(μ)² V(μ))``, the offset taken off the working response; for a link whose means can
    leave the family's range and do there, every linear predictor at the range's centre instead."""
    inverse, deriv, _ = GLM_LINKS[link]
    mu = (y + 0.5) / 2 if family == "binomial" else (y + y.mean()) / 2
    weight = prior / (deriv(mu) ** 2 * GLM_FAMILIES[family][0](mu))
    working = GLM_LINK_VALUES[link](mu) - offset + deriv(mu) * (y - mu)
    beta = _solve(design.T @ (design * weight[:, None]), design.T @ (weight * working))
    low, high = GLM_MEAN_RANGE.get((family, link), (-np.inf, np.inf))
    if np.isfinite(low) and np.all(design[:, 0] == 1.0):
        mu = inverse(design @ beta + offset)
        if not np.all((mu > low) & (mu < high)):
            beta = np.zeros_like(beta)
            beta[0] = GLM_LINK_VALUES[link](np.array((low + high) / 2))
    return beta


def _family_terms(family: str, link: str, y: np.ndarray, design: np.ndarray, beta: np.ndarray, offset: np.ndarray,
                  prior: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Mean, IRLS weight, score and deviance at ``beta`` with the offset and the prior weights ``f v`` (the
    deviance NaN where the means leave their range)."""
    inverse, deriv, _ = GLM_LINKS[link]
    variance, _, unit_deviance, _ = GLM_FAMILIES[family]
    with np.errstate(all="ignore"):
        mu = inverse(design @ beta + offset)
        gprime, v_mu = deriv(mu), variance(mu)
        low, high = GLM_MEAN_RANGE.get((family, link), (-np.inf, np.inf))
        deviance = float(np.sum(prior * unit_deviance(y, _clip(family, mu))))
    if not np.all((mu > low) & (mu < high)):
        deviance = float("nan")
    return mu, prior / (gprime**2 * v_mu), design.T @ (prior * (y - mu) / (gprime * v_mu)), deviance


def _check_family_outcome(family: str, y: np.ndarray) -> None:
    bad = {"binomial": (y < 0) | (y > 1), "poisson": y < 0, "gamma": y <= 0}.get(family)
    if bad is not None and np.any(bad):
        raise OperationError(f"y takes values the {family} family cannot take on this site (binomial 0 to 1, "
                             "Poisson 0 or more, gamma above 0): recode it or choose another family")


def _site_cox(ties: str) -> Any:
    """Newton on a Cox model's partial likelihood (``ties`` Breslow or Efron), to convergence on this site.

    The outcome is two columns, time and event (0/1). The rows are sorted
    once by event time; each iteration sums them per time and accumulates
    the risk sets backwards (``fedmed.ops.cox``, the math the client's
    ``fm.stats.coxph`` runs on the servers' sums), with no loop over times.
    Steps that lower the partial likelihood are halved. The covariance is
    the inverse information at the estimate, as statsmodels' ``PHReg``.
    """
    efron = ties == "efron"

    def fit(outcome: np.ndarray, design: np.ndarray, max_iter: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
        derivatives = _cox_likelihood(outcome[:, 0], outcome[:, 1] == 1, design, efron)  # events checked: _cox_events
        beta = np.zeros(design.shape[1])
        step = derivatives(beta)
        for _ in range(max_iter):
            change = _solve(step["information"], step["gradient"])
            for _ in range(40):
                new = derivatives(beta + change)
                if np.isfinite(new["loglik"]) and new["loglik"] >= step["loglik"] - 1e-12 * (1.0 + abs(step["loglik"])):
                    break
                change = change / 2
            beta, step = beta + change, new
            if np.max(np.abs(change)) < tol * (1.0 + np.max(np.abs(beta))):
                return beta, _inverse(step["information"])
        raise OperationError(f"the Cox fit did not converge on this site in {max_iter} iterations: a predictor may "
                             "order the event times perfectly there (monotone likelihood); leave it out")

    fit.outcomes = 2
    fit.counts = _cox_events
    fit.floors = {"events": COX_EVENTS_PER_PARAMETER}
    return fit


#: Events per coefficient a site's Cox fit needs at least, whatever the analyst asks: the usual "ten events
#: per variable" of survival models, and always more events than a threshold policy's k, so that a site's
#: coefficients never rest on the covariates of a handful of deaths.
COX_EVENTS_PER_PARAMETER = 10


def _cox_events(outcome: np.ndarray) -> dict[str, int]:
    """The site's events (checked before its size: a miscoded event must not read as a site too small)."""
    event = outcome[:, 1]
    if np.any((event != 0) & (event != 1)):
        raise OperationError("a Cox model's event is 0 (censored) or 1 (event): recode it (event=data['status'] == 2)")
    return {"events": int(np.sum(event == 1))}


def _cox_likelihood(time: np.ndarray, event: np.ndarray, design: np.ndarray, efron: bool) -> Any:
    """``beta -> {"loglik", "gradient", "information"}`` on these rows: sorted by time once, summed per iteration."""
    grid = np.unique(time[event])
    slot = np.searchsorted(grid, time, side="right") - 1  # the last event time at or before the row's time
    keep = slot >= 0  # a row censored before the first event is in no risk set
    order = np.argsort(slot[keep], kind="stable")
    slot, rows, events = slot[keep][order], design[keep][order], event[keep][order]
    xsum = design[event].sum(axis=0)

    def derivatives(beta: np.ndarray) -> dict[str, Any]:
        with np.errstate(over="ignore", invalid="ignore"):  # an overflowing step is halved back
            table = cox.row_terms(rows, beta, events, efron)
            sums = cox.risk_sums(cox.sorted_cell_sums(slot, table, builtins.len(grid))[None], design.shape[1], efron)
            return cox.derivatives({name: value[0] for name, value in sums.items()}, xsum, beta, efron)
    return derivatives


#: The fits ``site_fit`` runs, by model name: ``(y, design, max_iter, tol) -> (coefficients, covariance)``.
SITE_FITS = {"ols": _site_ols, "logit": _site_glm("logit"), "poisson": _site_glm("poisson"),
             "cox/breslow": _site_cox("breslow"), "cox/efron": _site_cox("efron")}

#: The per-site fit a default server offers (at least 3 rows per parameter).
site_fit = site_fit_with()
