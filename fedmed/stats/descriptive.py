"""Descriptive statistics: mean, spread, describe, covariance and correlation, all in one round.

Every function here reduces to ``moments`` (n, mean, M2 per server, merged
with Chan et al.'s parallel update) or ``comoments`` (the same for pairs, on
rows where both values are present, as pandas does), plus ``min``/``max``
for ``describe``. Statistics of the same columns computed together share
those map tasks.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import ArgumentError
from ..lazy import FedData, LazyResult
from ..results import Comoments, Moments
from .lazy_call import aggregate, call


def mean(x: FedData) -> LazyResult:
    """Mean of the non-missing values (one round).

    Examples
    --------
    >>> import fedmed as fm
    >>> x = fm.FedData([fm.Local([1.0, 2.0]), fm.Local([3.0, None])])
    >>> fm.stats.mean(x).compute()
    2.0
    """
    return call(_mean, aggregate(x, "moments", needed_by="mean"))


def var(x: FedData, ddof: int = 1) -> LazyResult:
    """Variance with ``ddof`` delta degrees of freedom (pandas' default 1; one round).

    Examples
    --------
    >>> import fedmed as fm
    >>> x = fm.FedData([fm.Local([1.0, 2.0]), fm.Local([3.0, 4.0])])
    >>> round(fm.stats.var(x).compute(), 6), round(fm.stats.var(x, ddof=0).compute(), 6)
    (1.666667, 1.25)
    """
    return call(_var, aggregate(x, "moments", needed_by="var"), ddof)


def std(x: FedData, ddof: int = 1) -> LazyResult:
    """Standard deviation (square root of ``var``; one round)."""
    return call(_std, aggregate(x, "moments", needed_by="std"), ddof)


def sem(x: FedData, ddof: int = 1) -> LazyResult:
    """Standard error of the mean, ``std / sqrt(n)`` (as ``scipy.stats.sem``; one round)."""
    return call(_sem, aggregate(x, "moments", needed_by="sem"), ddof)


def describe(x: FedData) -> LazyResult:
    """count, mean, std, min and max as a pandas Series, in one round.

    Examples
    --------
    >>> import fedmed as fm
    >>> x = fm.FedData([fm.Local([1.0, 2.0]), fm.Local([3.0, 6.0])])
    >>> float(fm.stats.describe(x).compute()["max"])
    6.0
    """
    return call(
        _describe,
        aggregate(x, "moments", needed_by="describe"),
        aggregate(x, "min", needed_by="describe"),
        aggregate(x, "max", needed_by="describe"),
    )


def cov(x: FedData, y: FedData, ddof: int = 1) -> LazyResult:
    """Covariance over rows where both are present (as ``Series.cov``; one round)."""
    return call(_cov, aggregate(x, "comoments", y, needed_by="cov"), ddof)


def pearson(x: FedData, y: FedData) -> LazyResult:
    """Pearson correlation over rows where both are present (as ``Series.corr``; one round).

    Examples
    --------
    >>> import fedmed as fm
    >>> d = fm.FedData([fm.Local({"a": [1, 2], "b": [2, 4]}), fm.Local({"a": [3], "b": [7]})])
    >>> round(fm.stats.pearson(d["a"], d["b"]).compute(), 4)
    0.9934
    """
    return call(_pearson, aggregate(x, "comoments", y, needed_by="pearson"))


def corr(data: FedData, columns: Sequence[str]) -> LazyResult:
    """Pearson correlation matrix of ``columns`` as a DataFrame (pairwise complete rows; one round).

    Examples
    --------
    >>> import fedmed as fm
    >>> d = fm.FedData([fm.Local({"a": [1, 2, 3], "b": [1, 0, 1], "c": [3, 2, 1]})])
    >>> float(fm.stats.corr(d, ["a", "c"]).compute().loc["a", "c"])
    -1.0
    """
    if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
        raise ArgumentError(f"corr takes a list of column names, such as ['age', 'bmi'], not {columns!r}")
    columns = list(columns)
    pairs = [(i, j) for i in range(len(columns)) for j in range(i + 1, len(columns))]
    comoments = [aggregate(data[columns[i]], "comoments", data[columns[j]], needed_by="corr") for i, j in pairs]
    # each column's own moments decide its diagonal: 1, or nan when constant or too short (as pandas)
    moments = [aggregate(data[c], "moments", needed_by="corr") for c in columns]
    return call(_corr_matrix, tuple(columns), len(pairs), *comoments, *moments)


def _mean(m: Moments) -> float:
    return m.mean


def _var(m: Moments, ddof: int) -> float:
    return m.var(ddof)


def _std(m: Moments, ddof: int) -> float:
    return math.sqrt(m.var(ddof))


def _sem(m: Moments, ddof: int) -> float:
    return math.sqrt(m.var(ddof) / m.n) if m.n else math.nan


def _describe(m: Moments, low: float | None, high: float | None) -> pd.Series:
    nan = math.nan
    values = [m.n, m.mean, math.sqrt(m.var(1)), nan if low is None else low, nan if high is None else high]
    return pd.Series(values, index=["count", "mean", "std", "min", "max"], dtype=float)


def _cov(c: Comoments, ddof: int) -> float:
    return c.cxy / (c.n - ddof) if c.n > ddof else math.nan


def _constant(m2: float, n: int, mean: float) -> bool:
    """True when the spread is within rounding of the mean: a constant column split over servers
    merges to an M2 of about (eps * mean)^2 rather than exactly 0."""
    return m2 <= n * (16 * np.finfo(float).eps * abs(mean)) ** 2


def _pearson(c: Comoments) -> float:
    if c.n < 2 or _constant(c.m2_x, c.n, c.mean_x) or _constant(c.m2_y, c.n, c.mean_y):
        return math.nan
    denominator = math.sqrt(c.m2_x * c.m2_y)
    # rounding can push |r| a hair past 1
    return max(-1.0, min(1.0, c.cxy / denominator))


def _corr_matrix(columns: tuple[str, ...], n_pairs: int, *inputs: "Comoments | Moments") -> pd.DataFrame:
    k = len(columns)
    own = inputs[n_pairs:]
    matrix = np.diag([1.0 if m.n >= 2 and not _constant(m.m2, m.n, m.mean) else math.nan for m in own])  # type: ignore[union-attr]
    pairs = iter(inputs[:n_pairs])
    for i in range(k):
        for j in range(i + 1, k):
            matrix[i, j] = matrix[j, i] = _pearson(next(pairs))
    return pd.DataFrame(matrix, index=list(columns), columns=list(columns))
