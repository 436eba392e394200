"""pandas' Series methods on a FedData column: reductions, recodings and numpy's ufuncs.

A column (``data["bmi"]``, a filtered column, a derived expression) takes
pandas' method names with pandas' arguments. Reductions (``mean``,
``describe``, ``value_counts``...) reuse ``fm.stats`` and the config's
aggregates and give a ``LazyResult`` of a float or of a ``pd.Series``
indexed as pandas'; recodings (``where``, ``map``, ``replace``,
``between``...) are built from the config's elementwise operations and give
a ``FedData``: nothing new runs on a server, so a server owner's list of
operations still says everything a client can ask. Names the config also
offers (``sum``, ``min``, ``value_counts``, ``astype``...) are taken here
first (``override``) only to accept pandas' arguments: called as the
config's operation is, each gives what the operation gives.

Whole tables share these names (``data.mean()``): every entry asks
``fedmed.api.frame``'s hook ``dispatch(data, name)`` first, which gives the
frame's method for a table and None for a column.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ..errors import ArgumentError
from ..expr.client import Reduce
from ..expr.rowwise import Column, Elementwise, Filter, Literal, Map, Param
from ..lazy import FedData, LazyResult
from ..ops.public import value_counts as pool_value_counts
from ..stats import descriptive
from ..stats.distribution import Quantile
from ..stats.distribution import quantile as stats_quantile
from ..stats.lazy_call import aggregate, call
from . import Method, hook

# -- helpers -------------------------------------------------------------------------------------


def column_name(data: FedData) -> Any:
    """The name pandas would give this column: the selected column's, kept through filters and
    elementwise operations whose columns all share it (``(data["x"] * 2)`` is still ``"x"``)."""
    return _node_name(data.node)


def _node_name(node: Any) -> Any:
    while isinstance(node, Filter):
        node = node.arg
    if isinstance(node, Column):
        return node.name
    if isinstance(node, Elementwise):
        names = {_node_name(a) for a in node.args if not isinstance(a, (Literal, Param))}
        return names.pop() if len(names) == 1 else None
    return None


def _check_axis(name: str, axis: Any) -> None:
    if axis not in (None, 0, "index"):
        raise ArgumentError(f"{name}: a column has one axis (0, 'index'), not {axis!r}")


def _unless_missing(value: Any, count: int, length: int) -> Any:
    """pandas' ``skipna=False``: NaN when any value is missing."""
    return math.nan if count < length else value


def _skipna(x: FedData, result: LazyResult, skipna: bool) -> LazyResult:
    if skipna:
        return result
    return call(_unless_missing, result, x.count(), x.len())


#: numpy passes these to a method it calls by name (np.mean(x) calls x.mean(axis=None, dtype=None, out=None)).
_NUMPY_DEFAULTS = {"dtype": None, "out": None, "keepdims": False}


def _numpy_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    for key, default in _NUMPY_DEFAULTS.items():
        if key in kwargs:
            if kwargs[key] is not default and kwargs[key] != default:
                raise ArgumentError(f"{name}: {key}={kwargs[key]!r} is not supported on a FedData column")
            kwargs = {k: v for k, v in kwargs.items() if k != key}
    return kwargs


def _entry(name: str, fn: Callable[..., Any], override: bool = False) -> Method:
    """A table entry: a whole table goes to ``fedmed.api.frame`` first, numpy's defaults are dropped."""

    def method(data: FedData, *args: Any, **kwargs: Any) -> Any:
        if override and not args and not kwargs:
            return fn(data)  # the config's operation, called as it always was, on a column or a table
        dispatch = hook("dispatch")  # fedmed.api.frame: the frame's method for a table, None for a column
        frame_method = dispatch(data, name) if dispatch is not None else None
        if frame_method is not None:
            return frame_method(*args, **kwargs)
        return fn(data, *args, **_numpy_kwargs(name, kwargs))

    method.__name__ = method.__qualname__ = name
    method.__doc__ = fn.__doc__
    return Method(method, override=override)


def _config_call(data: FedData, name: str) -> Any:
    """The config's own aggregate ``name`` without arguments, as before this table existed."""
    return aggregate(data, name, needed_by=name)


# -- reductions: a LazyResult ----------------------------------------------------------------------


def mean(x: FedData, axis: Any = None, skipna: bool = True, numeric_only: bool = False) -> LazyResult:
    """Mean of the values, as ``Series.mean`` (one round).

    Examples
    --------
    >>> import fedmed as fm
    >>> d = fm.FedData([fm.Local({"x": [1.0, 2.0]}), fm.Local({"x": [6.0, None]})])
    >>> d["x"].mean().compute()
    3.0
    """
    _check_axis("mean", axis)
    return _skipna(x, descriptive.mean(x), skipna)


def _spread(statistic: Callable[..., LazyResult]) -> Callable[..., LazyResult]:
    def method(x: FedData, axis: Any = None, skipna: bool = True, ddof: int = 1, numeric_only: bool = False) -> LazyResult:
        _check_axis(statistic.__name__, axis)
        return _skipna(x, statistic(x, ddof=ddof), skipna)

    method.__doc__ = f"``Series.{statistic.__name__}(ddof=1)`` through ``fm.stats.{statistic.__name__}`` (one round)."
    return method


def sum_(x: FedData, *args: Any, **kwargs: Any) -> LazyResult:
    """Sum, as ``Series.sum(skipna=True, min_count=0)``; ``sum()`` is the config's aggregate (one round).

    Examples
    --------
    >>> import fedmed as fm
    >>> d = fm.FedData([fm.Local({"x": [1.0, None]}), fm.Local({"x": [2.0]})])
    >>> d["x"].sum().compute(), d["x"].sum(min_count=3).compute()
    (3.0, nan)
    """
    if not args and not kwargs:
        return _config_call(x, "sum")
    return _pandas_sum(x, *args, **kwargs)


def _pandas_sum(x: FedData, axis: Any = None, skipna: bool = True, numeric_only: bool = False,
                min_count: int = 0) -> LazyResult:
    _check_axis("sum", axis)
    total = _skipna(x, aggregate(x, "sum", needed_by="sum"), skipna)
    return call(_at_least, total, x.count(), int(min_count)) if min_count else total


def _at_least(value: Any, count: int, needed: int) -> Any:
    return value if count >= needed else math.nan


def _extreme(name: str) -> Callable[..., LazyResult]:
    def method(x: FedData, *args: Any, **kwargs: Any) -> LazyResult:
        if not args and not kwargs:
            return _config_call(x, name)
        return _pandas_extreme(x, name, *args, **kwargs)

    method.__doc__ = (f"``Series.{name}(skipna=True)``: NaN without values (pandas); ``{name}()`` is the config's "
                      f"aggregate, None without values (one round).")
    return method


def _pandas_extreme(x: FedData, name: str, axis: Any = None, skipna: bool = True,
                    numeric_only: bool = False) -> LazyResult:
    _check_axis(name, axis)
    return _skipna(x, call(_nan_if_none, aggregate(x, name, needed_by=name)), skipna)


def _nan_if_none(value: Any) -> Any:
    return math.nan if value is None else value


def count(x: FedData, *args: Any, **kwargs: Any) -> LazyResult:
    """Number of non-missing values, as ``Series.count()`` (the config's aggregate; one round)."""
    if args or kwargs:
        raise ArgumentError("count() of a column takes no arguments")
    return _config_call(x, "count")


#: A quantile whose proven interval is wider than this (relative) is NaN: pandas' value is not known.
SHARP = 2e-9


def _sharp(q: Quantile) -> Quantile:
    """``q`` when its counts pin it (to ``SHARP``), else NaN with the proven ``low``/``high`` kept:
    under privacy policies the middle of a wide interval would be a number pandas does not give."""
    if q != q or q.high - q.low <= SHARP * max(abs(q.low), abs(q.high)):
        return q
    return Quantile(math.nan, q.low, q.high)


def median(x: FedData, axis: Any = None, skipna: bool = True, numeric_only: bool = False) -> LazyResult:
    """The median through ``fm.stats.median`` (counts only: 4 rounds); a float with ``low``/``high``/``exact``.

    NaN when the released counts do not pin it (privacy policies withheld
    some): ``low`` and ``high`` still give the interval they prove.
    """
    _check_axis("median", axis)
    return _skipna(x, call(_sharp, stats_quantile(x, 0.5)), skipna)


def quantile(x: FedData, q: Any = 0.5, interpolation: str = "linear") -> LazyResult:
    """``Series.quantile(q)``: a float for one ``q``, a Series indexed by ``q`` for a list (4 rounds).

    Examples
    --------
    >>> import fedmed as fm
    >>> d = fm.FedData([fm.Local({"x": [1.0, 2.0, 3.0]}), fm.Local({"x": [4.0, 10.0]})])
    >>> d["x"].quantile([0.5, 1.0]).compute().tolist()
    [3.0, 10.0]
    """
    if interpolation != "linear":
        raise ArgumentError(f"quantile: only interpolation='linear' (pandas' default), not {interpolation!r}")
    if np.ndim(q) == 0:
        return call(_sharp, stats_quantile(x, float(q)))
    qs = [float(v) for v in q]
    return call(_quantile_series, stats_quantile(x, qs), tuple(qs), column_name(x))


def _quantile_series(values: Sequence[float], qs: tuple[float, ...], name: Any) -> pd.Series:
    return pd.Series([float(_sharp(v)) for v in values], index=list(qs), name=name, dtype=float)


def describe(x: FedData, percentiles: Any = None, include: Any = None, exclude: Any = None) -> LazyResult:
    """pandas' rows ``count mean std min 25% 50% 75% max`` for a number column.

    count, mean, std, min and max come from ``fm.stats.describe`` (round 1),
    the percentiles from ``fm.stats.quantile`` (its 4 rounds, in ``explain()``).

    Examples
    --------
    >>> import fedmed as fm
    >>> d = fm.FedData([fm.Local({"x": [1.0, 2.0, 3.0]}), fm.Local({"x": [4.0, 10.0]})])
    >>> d["x"].describe().compute()["50%"]
    np.float64(3.0)
    """
    if include is not None or exclude is not None:
        raise ArgumentError("describe of a column takes no include/exclude (they select a table's columns)")
    qs = [0.25, 0.5, 0.75] if percentiles is None else sorted({float(p) for p in percentiles})
    return call(_describe_series, descriptive.describe(x), stats_quantile(x, qs), tuple(qs), column_name(x))


def _describe_series(summary: pd.Series, values: Sequence[float], qs: tuple[float, ...], name: Any) -> pd.Series:
    from pandas.io.formats.format import format_percentiles

    middle = pd.Series([float(_sharp(v)) for v in values], index=format_percentiles(list(qs)), dtype=float)
    out = pd.concat([summary[["count", "mean", "std", "min"]], middle, summary[["max"]]])
    out.name = name
    return out


# skew and kurt: one round from comoments(x, x ** 2.0) (n, mean, M2 of x, M2 of x^2, co-moment
# of x and x^2, each merged with Chan et al.'s update). With a the deviation from the pooled mean m:
#   sum a^3 = C - 2 m M2              (C = sum (x - m)(x^2 - mean x^2) = sum a x^2)
#   sum a^4 = M2y - 4 m sum a^3 - 4 m^2 M2 + M2^2 / n
# The cancellation is of size eps * |m| / sd for skew and eps * (m / sd)^2 for kurt, where raw power
# sums would lose eps * (|m| / sd)^3 and ^4 (a year column, mean 2000 and sd 5: 1e-13 and 1e-11
# relative here, 1e-6 and 1e-4 with raw sums).


def _higher_moments(x: FedData) -> LazyResult:
    return aggregate(x, "comoments", x ** 2.0, needed_by="skew and kurt")


def _central(c: Any) -> tuple[int, float, float, float]:
    n, m, m2 = c.n, c.mean_x, c.m2_x
    m3 = c.cxy - 2.0 * m * m2
    m4 = c.m2_y - 4.0 * m * m3 - 4.0 * m * m * m2 + (m2 * m2 / n if n else 0.0)
    return n, m2, m3, m4


def _skew(c: Any) -> float:
    n, m2, m3, _ = _central(c)
    if n < 3 or descriptive._constant(m2, n, c.mean_x):
        return math.nan  # pandas (3.1): a constant column has no skew
    return m3 / (m2 * math.sqrt(m2)) * (n * math.sqrt(n - 1.0)) / (n - 2.0)


def _kurt(c: Any) -> float:
    n, m2, _, m4 = _central(c)
    if n < 4 or descriptive._constant(m2, n, c.mean_x):
        return math.nan
    inner = n * (n + 1.0) * (m4 / (m2 * m2)) - 3.0 * (n - 1.0)
    return (n - 1.0) / ((n - 2.0) * (n - 3.0)) * inner


def _shape(formula: Callable[[Any], float], name: str) -> Callable[..., LazyResult]:
    def method(x: FedData, axis: Any = None, skipna: bool = True, numeric_only: bool = False) -> LazyResult:
        _check_axis(name, axis)
        # a text column is refused by the server's x ** 2.0, naming the column and to_numeric
        return _skipna(x, call(formula, _higher_moments(x)), skipna)

    method.__doc__ = (f"``Series.{name}()``, pandas' bias-corrected formula, from moments of x and x**2 "
                      f"(one round).")
    return method


def nunique(x: FedData, dropna: bool = True) -> LazyResult:
    """Number of distinct values, as ``Series.nunique`` (one round); NaN when a server withheld cells.

    Examples
    --------
    >>> import fedmed as fm
    >>> d = fm.FedData([fm.Local({"s": ["a", "b"]}), fm.Local({"s": ["b", None]})])
    >>> d["s"].nunique().compute(), d["s"].nunique(dropna=False).compute()
    (2, 3)
    """
    distinct = _counts_and_withheld(x)
    if dropna:
        return call(_nunique, distinct)
    return call(_nunique, distinct, x.count(), x.len())


def _counts_and_withheld(x: FedData) -> LazyResult:
    """``value_counts``' map with a reduce that also says whether any server withheld a cell, whose
    label may then be missing from the pooled table (the config's reduce keeps only labels it saw)."""
    aggregate(x, "value_counts", needed_by="nunique")  # checks the config offers it
    node = Reduce(Map("value_counts", (x.node,)), x.sources, _pool_noting_withheld)
    return LazyResult(node, x._flags)


def _pool_noting_withheld(parts: Sequence[Any]) -> tuple[pd.Series, bool]:
    withheld = any(all(v is None for v in entry[:-1]) for part in parts for entry in part)
    return pool_value_counts(parts), withheld


def _nunique(pooled: tuple[pd.Series, bool], count: int | None = None, length: int | None = None) -> Any:
    counts, withheld = pooled
    if withheld:
        return math.nan
    present = int((counts.fillna(1) > 0).sum())  # a categorical's unused categories count 0
    return present + (1 if length is not None and count < length else 0)


def value_counts(x: FedData, *args: Any, **kwargs: Any) -> LazyResult:
    """``Series.value_counts(normalize, sort, ascending, dropna)`` (one round).

    Counts pooled over servers, most frequent first; ties, whose order pandas
    takes from the rows, are ordered by value. ``normalize`` divides by the
    number of values (``count()``, or ``len()`` with ``dropna=False``), so a
    cell a server withheld changes no other proportion. ``sort=False`` gives
    the same order as ``sort=True`` (pandas' order of first appearance is
    the rows' order). Called with no argument on a whole fragment: the
    config's aggregate.

    Examples
    --------
    >>> import fedmed as fm
    >>> d = fm.FedData([fm.Local({"s": ["a", "b", "b"]}), fm.Local({"s": ["b", None]})])
    >>> d["s"].value_counts(normalize=True).compute().to_dict()
    {'b': 0.75, 'a': 0.25}
    >>> d["s"].value_counts(dropna=False).compute().to_dict()
    {'b': 3, 'a': 1, nan: 1}
    """
    name = column_name(x)
    if not args and not kwargs and name is None:
        return _config_call(x, "value_counts")
    return _pandas_value_counts(x, *args, **kwargs)


def _pandas_value_counts(x: FedData, normalize: bool = False, sort: bool = True, ascending: bool = False,
                         bins: Any = None, dropna: bool = True) -> LazyResult:
    if bins is not None:
        raise ArgumentError("value_counts(bins=...) needs the servers' min and max first: "
                            "use fm.stats.histogram(x, bins=edges) with edges you choose")
    counts = aggregate(x, "value_counts", needed_by="value_counts")
    missing = () if dropna else (x.count(), x.len())
    total = (x.count(),) if normalize and dropna else ()
    options = (bool(normalize), bool(ascending), column_name(x))
    return call(_value_counts_series, counts, options, *missing, *total)


def _value_counts_series(counts: pd.Series, options: tuple[bool, bool, Any], *totals: int) -> pd.Series:
    normalize, ascending, name = options
    cells = list(counts.items())
    if len(totals) == 2 and totals[1] > totals[0]:  # dropna=False: the missing values, len - count of them
        cells.append((np.nan, totals[1] - totals[0]))
    # by count (a cell of unknown count last), ties in the pooled order (by value)
    side = 1 if ascending else -1
    cells = [cells[i] for i in sorted(range(len(cells)), key=lambda i: (_unknown(cells[i][1]), side * _known(cells[i][1]), i))]
    values = [count for _, count in cells]
    exact = not any(_unknown(v) for v in values)
    out = pd.Series(values, index=pd.Index([label for label, _ in cells], name=name),
                    dtype="int64" if exact else "float64", name="count")
    if not normalize:
        return out
    total = totals[-1] if totals else math.nan
    return (out / total if total else out * math.nan).rename("proportion")


def _unknown(count: float) -> bool:
    return count != count


def _known(count: float) -> float:
    return 0.0 if count != count else count


def corr(x: FedData, other: FedData, method: str = "pearson", min_periods: int | None = None) -> LazyResult:
    """Pearson correlation with ``other`` over rows where both are present (``fm.stats.pearson``; one round)."""
    if method != "pearson":
        raise ArgumentError(f"corr: only method='pearson' is federated, not {method!r} "
                            "(ranks need every value: fm.stats.mannwhitneyu/wilcoxon use counts)")
    return _min_periods(x, other, descriptive.pearson(x, other), min_periods)


def cov(x: FedData, other: FedData, min_periods: int | None = None, ddof: int = 1) -> LazyResult:
    """Covariance with ``other`` over rows where both are present (``fm.stats.cov``; one round)."""
    return _min_periods(x, other, descriptive.cov(x, other, ddof=ddof), min_periods)


def _min_periods(x: FedData, other: Any, result: LazyResult, min_periods: int | None) -> LazyResult:
    if not isinstance(other, FedData):
        raise ArgumentError(f"corr/cov take another column (data['y']), not {type(other).__name__}")
    if not min_periods:
        return result
    return call(_enough_pairs, result, aggregate(x, "comoments", other, needed_by="min_periods"), int(min_periods))


def _enough_pairs(value: float, comoments: Any, needed: int) -> float:
    return value if comoments.n >= needed else math.nan


def agg(x: FedData, func: Any = None, axis: Any = 0, *args: Any, **kwargs: Any) -> LazyResult:
    """``Series.agg``: one name gives its result; a list gives a Series indexed by the names;
    a dict ``{label: name}`` a Series indexed by the labels. All in the rounds of the deepest.

    Examples
    --------
    >>> import fedmed as fm
    >>> d = fm.FedData([fm.Local({"x": [1.0, 2.0]}), fm.Local({"x": [6.0]})])
    >>> d["x"].agg(["count", "mean", "max"]).compute().to_dict()
    {'count': 3.0, 'mean': 3.0, 'max': 6.0}
    """
    _check_axis("agg", axis)
    if args or kwargs:
        raise ArgumentError("agg: arguments for the functions are not supported; call the method itself")
    if isinstance(func, str):
        return _by_name(x, func)
    if isinstance(func, dict):
        labels, names = list(func), list(func.values())
    elif isinstance(func, (list, tuple)):
        labels, names = list(func), list(func)
    else:
        raise ArgumentError("agg takes a method name, a list of names or a dict {label: name}; Python functions "
                            "do not run on the servers")
    results = [_by_name(x, name) for name in names]
    return call(_agg_series, tuple(labels), column_name(x), *results)


def _by_name(x: FedData, name: Any) -> LazyResult:
    if not isinstance(name, str):
        raise ArgumentError(f"agg takes method names such as 'mean', not {type(name).__name__}: "
                            "Python functions do not run on the servers")
    result = getattr(x, name)()
    if not isinstance(result, LazyResult):
        raise ArgumentError(f"agg: {name!r} is not a reduction of a column")
    return result


def _agg_series(labels: tuple[Any, ...], name: Any, *values: Any) -> pd.Series:
    return pd.Series(list(values), index=list(labels), name=name)


# -- elementwise: a FedData ------------------------------------------------------------------------


def between(x: FedData, left: Any, right: Any, inclusive: str = "both") -> FedData:
    """``Series.between``: ``left <= x <= right`` (``inclusive`` "both", "neither", "left", "right")."""
    bounds = {"both": (x >= left, x <= right), "neither": (x > left, x < right),
              "left": (x >= left, x < right), "right": (x > left, x <= right)}
    if inclusive not in bounds:
        raise ArgumentError(f"between: inclusive is one of {sorted(bounds)}, not {inclusive!r}")
    low, high = bounds[inclusive]
    return low & high


def isin(x: FedData, values: Any) -> FedData:
    """``Series.isin``: a list, tuple, set, array, Index or Series of values (sent as a list)."""
    if isinstance(values, (FedData, LazyResult, str)):
        raise ArgumentError("isin takes a list of values, such as ['F', 'M']")
    if isinstance(values, dict):
        values = list(values)
    items = list(values.tolist() if hasattr(values, "tolist") else values)
    if isinstance(values, (set, frozenset)):
        items = sorted(items, key=lambda v: (type(v).__name__, v))  # equal sets, equal plans
    return x._elementwise("isin", (x, items))


def _kept(cond: FedData) -> FedData:
    """1.0 where ``cond`` holds, NaN elsewhere (a missing condition too): ``m / m`` of ``cond`` as 0/1."""
    if not isinstance(cond, FedData):
        raise ArgumentError("where/mask take a boolean FedData condition, such as data['age'] > 50")
    ones = cond.astype("float")
    return ones / ones


def _where(x: FedData, cond: FedData, other: Any) -> FedData:
    kept = _kept(cond)
    values = x * kept
    if _kind(other) == "missing":
        return values
    # where the condition fails (or is missing), as pandas: other
    replaced = other * _kept(kept.isna()) if isinstance(other, FedData) else _constant_where(kept.isna(), other)
    return values.fillna(replaced)


def where(x: FedData, cond: FedData, other: Any = np.nan) -> FedData:
    """``Series.where``: ``x`` where ``cond`` holds, ``other`` (NaN) elsewhere; for number columns.

    Built from elementwise operations every config offers: ``x * (c / c)``
    with ``c`` the condition as 0/1, then ``fillna`` with ``other`` where the
    condition fails. Values become floats (pandas keeps integers when no
    row is replaced).
    """
    return _where(x, cond, other)


def mask(x: FedData, cond: FedData, other: Any = np.nan) -> FedData:
    """``Series.mask``: ``other`` (NaN) where ``cond`` holds, ``x`` elsewhere (``where(~cond)``)."""
    if not isinstance(cond, FedData):
        raise ArgumentError("mask takes a boolean FedData condition, such as data['age'] > 50")
    return _where(x, ~cond, other)


def dropna(x: FedData, *, axis: Any = 0, inplace: bool = False, how: Any = None, ignore_index: bool = False) -> FedData:
    """``Series.dropna``: the rows where the value is present (a filter on the servers)."""
    _check_axis("dropna", axis)
    if inplace:
        raise ArgumentError("dropna(inplace=True): a FedData is never changed in place; use x = x.dropna()")
    return x[x.notna()]


def _constant_where(cond: FedData, value: Any) -> FedData | None:
    """``value`` where ``cond`` holds, missing elsewhere; None for a missing ``value``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        # no operation turns numbers into chosen text: fill the rows where cond holds (a filter) of an
        # all-missing text column, then put them back in place by fillna, which aligns rows as pandas
        blank = (cond.isna() * math.nan).astype("str")
        return blank.fillna(blank[cond].fillna(value))
    kept = _kept(cond)
    if isinstance(value, (bool, np.bool_, numbers.Number, LazyResult)):
        return kept * float(value) if isinstance(value, (bool, np.bool_)) else kept * value
    raise ArgumentError(f"map/replace: values must be numbers, text or booleans, not {type(value).__name__}")


def _recode(x: FedData, mapping: dict[Any, Any], name: str) -> FedData | None:
    """The value ``mapping[v]`` where ``x == v``, missing where no key matches."""
    kinds = {_kind(v) for v in mapping.values() if _kind(v) != "missing"}
    if len(kinds) > 1:
        raise ArgumentError(f"{name}: the new values must be all numbers, all text or all booleans, not {sorted(kinds)}")
    result = None
    for key, value in mapping.items():
        if key is None or (isinstance(key, float) and math.isnan(key)):
            raise ArgumentError(f"{name}: a missing key is not supported; use fillna(value) for missing values")
        piece = _constant_where(x == key, value)
        if piece is not None:
            result = piece if result is None else result.fillna(piece)
    if result is not None and kinds == {"bool"}:
        result = result.astype("bool")
    return result


def _kind(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "missing"
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    return "text" if isinstance(value, str) else "number"


def _mapping(arg: Any, name: str) -> dict[Any, Any]:
    if isinstance(arg, pd.Series):
        arg = arg.to_dict()
    if not isinstance(arg, dict):
        raise ArgumentError(f"{name} takes a dict (or a Series) of old -> new values; Python functions "
                            "do not run on the servers")
    return {(k.item() if isinstance(k, np.generic) else k): (v.item() if isinstance(v, np.generic) else v)
            for k, v in arg.items()}


def map_(x: FedData, arg: Any, na_action: Any = None) -> FedData:
    """``Series.map(dict)``: each value replaced by ``arg[value]``, missing when not a key.

    Built on the servers from ``==``, division, ``astype``, ``clip`` and
    ``fillna`` (about 5 operations per key: under ``ComplexityCap(200)``
    at most about 35 keys). New values are numbers, text or booleans.

    Examples
    --------
    >>> import fedmed as fm
    >>> d = fm.FedData([fm.Local({"sex": [1, 2, 2]}), fm.Local({"sex": [1, 3]})])
    >>> d["sex"].map({1: "M", 2: "F"}).value_counts().compute().to_dict()
    {'F': 2, 'M': 2}
    """
    if na_action not in (None, "ignore"):
        raise ArgumentError(f"map: na_action is None or 'ignore', not {na_action!r}")
    recoded = _recode(x, _mapping(arg, "map"), "map")
    return recoded if recoded is not None else x * math.nan


def replace(x: FedData, to_replace: Any = None, value: Any = None, *, inplace: bool = False,
            regex: bool = False) -> FedData:
    """``Series.replace``: ``{old: new}``, or ``(old, new)`` / ``([olds], new)``; other values kept.

    Examples
    --------
    >>> import fedmed as fm
    >>> d = fm.FedData([fm.Local({"x": [1, 2, 9]}), fm.Local({"x": [9, 4]})])
    >>> d["x"].replace(9, None).count().compute()
    3
    """
    if inplace or regex:
        raise ArgumentError("replace: inplace and regex are not supported (a FedData is never changed in place)")
    if isinstance(to_replace, (dict, pd.Series)):
        mapping = _mapping(to_replace, "replace")
    elif isinstance(to_replace, (list, tuple)):
        mapping = {old: value for old in to_replace}
    else:
        mapping = {to_replace: value}
    missing = [old for old, new in mapping.items() if _kind(new) == "missing"]
    recoded = _recode(x, {old: new for old, new in mapping.items() if old not in missing}, "replace")
    kept = x if not missing else _where(x, ~x.isin(missing), np.nan)
    return kept if recoded is None else recoded.fillna(kept)


#: The config's own ``astype`` names: called with one of them, ``astype`` is the config's operation.
CONFIG_DTYPES = ("float", "int", "bool", "str")


def _astype_name(dtype: Any) -> str | None:
    """The config's ``astype`` name for a pandas/numpy/Python dtype; None where the values stay as they are."""
    if isinstance(dtype, pd.CategoricalDtype) or dtype in ("category", object, "object", "O"):
        return None  # categories and objects are another view of the same values
    if dtype in (str, "str", "string"):
        return "str"
    try:
        kind = pd.api.types.pandas_dtype(dtype).kind
    except TypeError:
        raise ArgumentError(f"astype: unknown dtype {dtype!r}; use float, int, bool, str or 'category'") from None
    names = {"f": "float", "i": "int", "u": "int", "b": "bool", "U": "str", "O": "str"}
    if kind not in names:
        raise ArgumentError(f"astype: {dtype!r} is not offered; use float, int, bool, str or 'category'")
    return names[kind]


def astype(x: FedData, dtype: Any, copy: Any = None, errors: str = "raise") -> FedData:
    """``Series.astype``: float, int (nullable ``Int64``), bool, str, "category" (values unchanged).

    To an integer type, values are truncated toward 0 as pandas does (2.7 is
    2, -2.7 is -2); a missing value stays missing (pandas would refuse the
    column). ``astype("int")``, the config's own name, is the config's
    operation: a value that is not whole becomes missing.

    Examples
    --------
    >>> import fedmed as fm
    >>> d = fm.FedData([fm.Local({"x": [2.7, -2.7]}), fm.Local({"x": ["4"]})])
    >>> d["x"].astype(int).sum().compute(), d["x"].astype("int").count().compute()
    (4, 1)
    """
    if isinstance(dtype, str) and dtype in CONFIG_DTYPES:
        return x._elementwise("astype", (x, dtype))
    try:
        name = _astype_name(dtype)
    except ArgumentError:
        if isinstance(dtype, str):  # the config's operation answers, naming what it accepts
            return x._elementwise("astype", (x, dtype))
        raise
    if name is None:
        return x
    if name == "int":
        # floor, plus one for a negative fraction: truncation from floordiv, mod and a comparison
        numbers = x._elementwise("astype", (x, "float"))
        x = numbers // 1 + ((numbers < 0) & (numbers % 1 != 0))
    return x._elementwise("astype", (x, name))


def round_(x: FedData, decimals: int = 0, *args: Any, **kwargs: Any) -> FedData:
    """``Series.round(decimals)``, also reached by ``np.round(x)`` (half to even)."""
    return x._elementwise("round", (x, int(decimals)))


def isnull(x: FedData) -> FedData:
    """Alias of ``isna``."""
    return x.isna()


def notnull(x: FedData) -> FedData:
    """Alias of ``notna``."""
    return x.notna()


# -- dates ---------------------------------------------------------------------------------------


class DatetimeProperties:
    """``x.dt``: numbers made of dates on the servers, as pandas' ``Series.dt``.

    ``year`` and ``month`` of a date column, ``days`` of a difference of two
    (whole days, rounded down as pandas': -14.5 days is -15). Each is an
    integer column (``Int64``: missing where the date is) that every
    aggregate takes. Dates that arrive as text are read with
    ``x.to_datetime()`` first (ISO 8601; anything else is missing).

    Examples
    --------
    >>> import fedmed as fm
    >>> d = fm.FedData([fm.Local({"entry": ["2020-01-01", "2020-06-30"], "exit": ["2020-01-15 12:00", "2021-06-30"]}),
    ...                 fm.Local({"entry": ["2019-03-04"], "exit": ["2019-03-01"]})])
    >>> entry, exit = d["entry"].to_datetime(), d["exit"].to_datetime()
    >>> (exit - entry).dt.days.sum().compute(), entry.dt.year.max().compute()
    (376, 2020)
    """

    def __init__(self, x: FedData) -> None:
        self._x = x

    @property
    def year(self) -> FedData:
        """The year of each date (``Series.dt.year``)."""
        return self._x._elementwise("dt_year", (self._x,))

    @property
    def month(self) -> FedData:
        """The month of each date, 1 to 12 (``Series.dt.month``)."""
        return self._x._elementwise("dt_month", (self._x,))

    @property
    def days(self) -> FedData:
        """Whole days of each difference of dates, rounded down (``Series.dt.days`` of timedeltas)."""
        return self._x._elementwise("dt_days", (self._x,))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise ArgumentError(f".dt.{name} is not offered on a FedData column: .dt has year, month and days; "
                            "a date itself never leaves a server (compare it with a date, or take .dt.days of "
                            "a difference)")


def dt(x: FedData) -> DatetimeProperties:
    """``x.dt``: ``year``, ``month`` and ``days`` on the servers (see ``DatetimeProperties``)."""
    return DatetimeProperties(x)


def to_datetime(arg: Any) -> FedData:
    """``pd.to_datetime(arg, errors="coerce")`` of a FedData column: ``arg.to_datetime()`` on the servers.

    Reads ISO 8601 text (a date, or a date and time, with or without a UTC
    offset) as dates and keeps datetimes; any other value is missing (NaT).

    Examples
    --------
    >>> import fedmed as fm
    >>> d = fm.FedData([fm.Local({"d": ["2021-03-04", "not a date"]}), fm.Local({"d": ["2020-12-31"]})])
    >>> to_datetime(d["d"]).count().compute(), (to_datetime(d["d"]) >= "2021-01-01").sum().compute()
    (2, 1)
    """
    if not isinstance(arg, FedData):
        raise ArgumentError("to_datetime takes a FedData column, such as data['date']; for constants use pd.Timestamp")
    return arg._elementwise("to_datetime", (arg,))


# -- numpy's ufuncs -------------------------------------------------------------------------------

#: ufuncs that are one config operation.
UFUNCS: dict[Any, str] = {
    np.log: "log", np.exp: "exp", np.sqrt: "sqrt", np.absolute: "abs", np.fabs: "abs", np.negative: "neg",
    np.add: "add", np.subtract: "sub", np.multiply: "mul", np.true_divide: "truediv",
    np.floor_divide: "floordiv", np.remainder: "mod", np.power: "pow", np.equal: "eq", np.not_equal: "ne",
    np.less: "lt", np.less_equal: "le", np.greater: "gt", np.greater_equal: "ge",
    np.logical_and: "and", np.logical_or: "or", np.logical_not: "invert", np.invert: "invert",
    np.isnan: "isna", np.rint: "round",
}

#: ufuncs written with config operations: accurate to a rounding (log10(x) is log(x) / log(10)).
COMPOSED: dict[Any, Callable[[FedData], FedData]] = {
    np.log10: lambda x: np.log(x) / math.log(10.0),
    np.log2: lambda x: np.log(x) / math.log(2.0),
    np.square: lambda x: x * x,
    np.reciprocal: lambda x: 1.0 / x,
    np.positive: lambda x: x,
}


def array_ufunc(data: FedData, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> FedData:
    """``np.log(x)`` and other numpy ufuncs as elementwise operations on the servers.

    Examples
    --------
    >>> import numpy as np, fedmed as fm
    >>> d = fm.FedData([fm.Local({"x": [1.0, 100.0]}), fm.Local({"x": [10000.0]})])
    >>> round(np.sqrt(d["x"]).sum().compute(), 6)
    111.0
    """
    supported = sorted(u.__name__ for u in (*UFUNCS, *COMPOSED))
    if method != "__call__" or kwargs:
        raise ArgumentError(f"np.{ufunc.__name__}.{method}{' with ' + str(sorted(kwargs)) if kwargs else ''}: "
                            f"only plain calls of numpy ufuncs run on a FedData ({', '.join(supported)})")
    if ufunc in COMPOSED and len(inputs) == 1:
        return COMPOSED[ufunc](inputs[0])
    if ufunc not in UFUNCS:
        raise ArgumentError(f"np.{ufunc.__name__} is not offered on a FedData; supported: {', '.join(supported)}")
    return data._elementwise(UFUNCS[ufunc], inputs)


# -- the table ------------------------------------------------------------------------------------

_REDUCTIONS: dict[str, Callable[..., Any]] = {
    "mean": mean, "std": _spread(descriptive.std), "var": _spread(descriptive.var), "sem": _spread(descriptive.sem),
    "median": median, "quantile": quantile, "describe": describe,
    "skew": _shape(_skew, "skew"), "kurt": _shape(_kurt, "kurt"), "kurtosis": _shape(_kurt, "kurt"),
    "nunique": nunique, "corr": corr, "cov": cov, "agg": agg, "aggregate": agg,
}
_ELEMENTWISE: dict[str, Callable[..., Any]] = {
    "between": between, "where": where, "mask": mask, "dropna": dropna, "map": map_, "replace": replace,
    "isnull": isnull, "notnull": notnull,
}
#: Names the config offers too: pandas' arguments are taken here; the config's call gives what it gave.
_OVERRIDES: dict[str, Callable[..., Any]] = {
    "sum": sum_, "count": count, "min": _extreme("min"), "max": _extreme("max"), "value_counts": value_counts,
    "isin": isin, "astype": astype, "round": round_,
}

METHODS: dict[str, Method] = {
    **{name: _entry(name, fn) for name, fn in {**_REDUCTIONS, **_ELEMENTWISE}.items()},
    **{name: _entry(name, fn, override=True) for name, fn in _OVERRIDES.items()},
    "dt": Method(dt, kind="property"),
}
