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

from ..errors import OperationError


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


def _complete_rows(columns: Any) -> np.ndarray:
    """The rows where every column has a value, as a float matrix (one column per input)."""
    return _complete_columns(columns).T


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
