"""``data.groupby(key)``: pandas' group-bys, from per-group partial aggregates in one round.

Groups are not known in advance, so each server answers the aggregate
``grouped`` (``fedmed.ops.private.grouped``) with its groups' partials keyed
by label, as ``value_counts`` does: rows, values present, sum, mean and
centred sum of squares (merged exactly with Chan et al.'s update), min and
max. Medians, quantiles, ``nunique``, ``value_counts`` and the quartiles of
``describe`` are read from each group's per-value counts (the same
aggregate with ``values=True``), in the same round: exact, and NaN for a
group where a server withheld a count. Every group is a cell for the
privacy policies (``fedmed.privacy.cells``): a group a server withheld
shows NaN in the pooled result, never a number computed without it.

Each pandas method is one row of ``STATISTICS``: the partials it needs and
the client formula that turns one group table into a Series.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ..errors import ArgumentError
from ..expr.node import walk
from ..expr.rowwise import Column
from ..lazy import FedData, LazyResult
from ..stats.lazy_call import aggregate, call
from . import Method

#: The config aggregate that sends per-group partials (``fedmed.ops.private.grouped``).
AGGREGATE = "grouped"


# -- client formulas: one group table (and, for order statistics, its per-value counts) -> a Series --


def _var(t: pd.DataFrame, ddof: int = 1) -> pd.Series:
    dof = t["n"] - ddof
    return (t["m2"] / dof.where(dof > 0)).astype(float)


def _std(t: pd.DataFrame, ddof: int = 1) -> pd.Series:
    return np.sqrt(_var(t, ddof))


def _sem(t: pd.DataFrame, ddof: int = 1) -> pd.Series:
    return _std(t, ddof) / np.sqrt(t["n"].astype(float))


def _column(name: str) -> Callable[..., pd.Series]:
    return lambda t: t[name]


def _by_group(counts: pd.Series, t: pd.DataFrame, fn: Callable[[np.ndarray, np.ndarray], Any]) -> pd.Series:
    """``fn(values, counts)`` of each group of ``t`` from its per-value counts; NaN where a count is
    unknown or the counts do not add up to the group's values (a server withheld some)."""
    out = []
    nkeys = counts.index.nlevels - 1
    levels = 0 if nkeys == 1 else list(range(nkeys))  # a list of one level would key groups by 1-tuples
    grouped = dict(iter(counts.groupby(level=levels, sort=False))) if len(counts) else {}
    for label, n in zip(t.index, t["n"]):
        cells = grouped.get(label)
        if cells is None:
            out.append(math.nan if n != 0 else fn(np.array([]), np.array([])))
            continue
        c = cells.to_numpy(dtype=float)
        if np.isnan(c).any() or c.sum() != n:
            out.append(math.nan)
            continue
        values = cells.index.get_level_values(-1).to_numpy()
        order = np.argsort(values, kind="stable")
        out.append(fn(values[order], c[order]))
    return pd.Series(out, index=t.index, dtype=float)


def _at(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """pandas' linear-interpolation quantile of the values repeated by their counts."""
    n = counts.sum()
    if n == 0:
        return math.nan
    values = values.astype(float)
    h = (n - 1) * q
    below = np.cumsum(counts)
    lo = values[np.searchsorted(below, math.floor(h), side="right")]
    hi = values[np.searchsorted(below, math.ceil(h), side="right")]
    return lo + (hi - lo) * (h - math.floor(h))


def _quantile(t: pd.DataFrame, counts: pd.Series, q: float = 0.5) -> pd.Series:
    return _by_group(counts, t, lambda v, c: _at(v, c, q))


def _nunique(t: pd.DataFrame, counts: pd.Series) -> pd.Series:
    out = _by_group(counts, t, lambda v, c: float((c > 0).sum()))
    return out.astype("int64") if not out.isna().any() else out


@dataclass(frozen=True)
class Statistic:
    """One pandas group-by method: the partials it needs and its formula."""

    fn: Callable[..., pd.Series]
    counts: bool = False  # needs per-value counts (order statistics)
    whole: bool = False  # counts: int64 when none is unknown


#: pandas' group-by methods by name (also the names ``agg`` takes).
STATISTICS: dict[str, Statistic] = {
    "size": Statistic(_column("size"), whole=True),
    "count": Statistic(_column("n"), whole=True),
    "sum": Statistic(_column("sum")),
    "mean": Statistic(_column("mean")),
    "min": Statistic(_column("min")),
    "max": Statistic(_column("max")),
    "var": Statistic(_var),
    "std": Statistic(_std),
    "sem": Statistic(_sem),
    "median": Statistic(_quantile, counts=True),
    "quantile": Statistic(_quantile, counts=True),
    "nunique": Statistic(_nunique, counts=True),
}

#: What ``describe()`` shows, as pandas: (row name, statistic, parameters).
DESCRIBE = tuple((row, name, {**params, "float": True}) for row, name, params in (
    ("count", "count", {}), ("mean", "mean", {}), ("std", "std", {}), ("min", "min", {}),
    ("25%", "quantile", {"q": 0.25}), ("50%", "quantile", {"q": 0.5}), ("75%", "quantile", {"q": 0.75}),
    ("max", "max", {})))


def _one(table: pd.DataFrame, counts: pd.Series | None, name: str, params: dict[str, Any]) -> pd.Series:
    stat = STATISTICS[name]
    as_float = params.pop("float", False)  # describe() counts as floats, as pandas
    out = stat.fn(table, counts, **params) if stat.counts else stat.fn(table, **params)
    if as_float:
        out = out.astype(float)
    elif stat.whole:
        out = out.astype("int64") if not out.isna().any() else out.astype(float)
    return out


def _assemble(spec: tuple, names: tuple, *inputs: Any) -> Any:
    """The pandas-shaped result: ``spec`` = (shape, [(column, statistic, params, label, table i,
    counts i), ...]); ``inputs`` the pooled group tables and counts."""
    shape, items = spec
    series = []
    for column, name, params, label, ti, ci in items:
        out = _one(inputs[ti], inputs[ci] if ci is not None else None, name, dict(params))
        series.append(out.rename(label))
    index = _index(inputs[items[0][4]].index, names) if items else pd.Index([])
    series = [s.set_axis(index) for s in series]
    if shape == "series":
        return series[0]
    frame = pd.concat(series, axis=1) if series else pd.DataFrame(index=index)
    if shape == "multi":
        frame.columns = pd.MultiIndex.from_tuples([label for *_, label, _ti, _ci in items])
    return frame


def _index(index: pd.Index, names: Sequence[Any]) -> pd.Index:
    if len(names) > 1:
        return pd.MultiIndex.from_tuples(list(index), names=list(names)) if len(index) else \
            pd.MultiIndex.from_arrays([[]] * len(names), names=list(names))
    return pd.Index(list(index), name=names[0]) if len(index) else pd.Index([], name=names[0], dtype=object)


def _value_counts(spec: tuple, names: tuple, table: pd.DataFrame, counts: pd.Series) -> pd.Series:
    """``SeriesGroupBy.value_counts()``: counts by (group, value), most frequent first within each group
    (ties by value). Withheld cells are left out, as ``value_counts`` leaves them out; a pooled count a
    server withheld is NaN, and so is every share (``normalize``) of a group whose table is incomplete."""
    column, normalize = spec
    nkeys = len(names)
    known = _by_group(counts, table, lambda v, c: 1.0)  # NaN where a group's counts are incomplete
    rows = []
    for label, ok in zip(table.index, known):
        key = label if isinstance(label, tuple) else (label,)
        if not len(counts):
            continue
        cells = counts.loc[label] if (label in counts.index.droplevel(-1)) else pd.Series(dtype=float)
        if isinstance(cells, pd.DataFrame):
            cells = cells.iloc[:, 0]
        cells = cells[cells.isna() | (cells > 0)]
        ordered = sorted(cells.items(), key=lambda item: (-(item[1] if item[1] == item[1] else -1), item[0]))
        total = sum(c for _, c in ordered)
        for value, c in ordered:  # a released count is exact; a share needs the group's whole table
            rows.append((*key, value, (c / total if ok == ok else math.nan) if normalize else c))
    index = pd.MultiIndex.from_tuples([r[:-1] for r in rows], names=[*names, column]) if rows else \
        pd.MultiIndex.from_arrays([[]] * (nkeys + 1), names=[*names, column])
    values = [r[-1] for r in rows]
    exact = not normalize and not any(v != v for v in values)
    return pd.Series(values, index=index, name="proportion" if normalize else "count",
                     dtype="int64" if exact else "float64")


# -- the lazy group-by ---------------------------------------------------------------------------


class GroupBy:
    """``data.groupby(key)``: groups of a FedData's rows, computed on the servers in one round.

    Examples
    --------
    >>> import fedmed as fm
    >>> a = fm.Local({"sex": ["F", "M", "F"], "bmi": [20.0, 30.0, 24.0]})
    >>> b = fm.Local({"sex": ["M", "F"], "bmi": [26.0, 22.0]})
    >>> data = fm.FedData([a, b])
    >>> data.groupby("sex")["bmi"].mean().compute()
    sex
    F    22.0
    M    28.0
    Name: bmi, dtype: float64
    >>> data.groupby("sex")["bmi"].agg(["count", "max"]).compute()
         count   max
    sex
    F        3  24.0
    M        2  30.0
    """

    def __init__(self, data: FedData, keys: tuple[FedData, ...], names: tuple[Any, ...],
                 selection: tuple[str, ...] | None = None, single: bool = False) -> None:
        self._data, self._keys, self._names = data, keys, names
        self._selection, self._single = selection, single

    def __getitem__(self, key: Any) -> "GroupBy":
        if isinstance(key, str):
            return GroupBy(self._data, self._keys, self._names, (key,), single=True)
        if isinstance(key, (list, tuple)) and all(isinstance(k, str) for k in key):
            return GroupBy(self._data, self._keys, self._names, tuple(key))
        raise ArgumentError(f"select value columns by name (g['bmi'] or g[['bmi', 'age']]), not {type(key).__name__}")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in STATISTICS:
            return lambda *args, **kwargs: self._statistic(name, args, kwargs)
        raise AttributeError(f"a FedMed group-by has no method {name!r}; it offers "
                             f"{sorted([*STATISTICS, 'agg', 'aggregate', 'describe', 'value_counts'])}")

    def __iter__(self) -> Any:
        raise ArgumentError("the groups' rows never leave a server: aggregate them (g.mean(), g.agg([...]))")

    def __repr__(self) -> str:
        return f"GroupBy(by {list(self._names)}{'' if self._selection is None else f', {list(self._selection)}'})"

    # -- what pandas offers ------------------------------------------------------------------
    def agg(self, func: Any = None, **named: Any) -> Any:
        """``agg("mean")``, ``agg(["mean", "std"])`` or ``agg({"bmi": "mean", "age": ["min", "max"]})``, as pandas:
        pooled over every server and released (a ``LazyResult``).

        Named aggregation, ``agg(last_x=("x", "last"), n=("x", "count"))``, is different: a table of one row
        per group made on each server from its own rows and kept there (a ``FedData`` to merge or analyse;
        ``fedmed.api.tables.group_agg``).
        """
        if named:
            if func is not None:
                raise ArgumentError("agg takes either a function spec or name=(column, function) pairs, not both")
            from .tables import group_agg

            return group_agg(self._data, self._keys, self._names, self._selection, named)
        if func is None:
            raise ArgumentError("agg needs statistics: agg(['mean', 'max']) or name=(column, function) pairs")
        if isinstance(func, str):
            return self._statistic(func, (), {})
        if isinstance(func, (list, tuple)):
            funcs = [self._name(f) for f in func]
            if self._single:
                (column,) = self._columns()
                return self._build("frame", [(column, f, {}, f) for f in funcs])
            return self._build("multi", [(c, f, {}, (c, f)) for c in self._columns() for f in funcs])
        if isinstance(func, dict):
            nested = any(isinstance(f, (list, tuple)) for f in func.values())
            items = []
            for column, fs in func.items():
                for f in (fs if isinstance(fs, (list, tuple)) else [fs]):
                    items.append((column, self._name(f), {}, (column, self._name(f)) if nested else column))
            return self._build("multi" if nested else "frame", items)
        if callable(func):
            self._name(func)  # refused: says why
        raise ArgumentError("agg takes a method name, a list of names, or a dict of column -> name(s)")

    aggregate = agg

    def describe(self) -> LazyResult:
        """count, mean, std, min, quartiles, max per group (quartiles from per-value counts, same round)."""
        if self._single:
            (column,) = self._columns()
            return self._build("frame", [(column, s, p, row) for row, s, p in DESCRIBE])
        return self._build("multi", [(c, s, p, (c, row)) for c in self._columns() for row, s, p in DESCRIBE])

    def value_counts(self, normalize: bool = False) -> LazyResult:
        """Counts of each value per group (``SeriesGroupBy.value_counts``), most frequent first."""
        if not self._single:
            raise ArgumentError("value_counts per group takes one column: g['smoker'].value_counts()")
        (column,) = self._columns()
        x = self._data[column]
        return call(_value_counts, (column, bool(normalize)), self._names, self._partials(x, False),
                    self._partials(x, True))

    # -- building --------------------------------------------------------------------------------
    def _statistic(self, name: str, args: tuple, kwargs: dict[str, Any]) -> LazyResult:
        params = _params(name, args, kwargs)
        if name == "size":
            if self._single:
                (column,) = self._columns()
                return self._build("series", [(column, "size", {}, column)])
            # rows per group, whatever the values: counted on the first key, with no schema to ask for
            return call(_assemble, ("series", ((None, "size", (), None, 0, None),)), self._names,
                        self._partials(self._keys[0], False))
        if name == "quantile" and isinstance(params.get("q"), (list, tuple)):
            return self._quantiles(list(params["q"]))
        if self._single:
            (column,) = self._columns()
            return self._build("series", [(column, name, params, column)])
        return self._build("frame", [(c, name, params, c) for c in self._columns()])

    def _quantiles(self, qs: list[float]) -> LazyResult:
        if not self._single:
            raise ArgumentError("quantile of several q per group takes one column: g['bmi'].quantile([0.25, 0.75])")
        (column,) = self._columns()
        frame = self._build("frame", [(column, "quantile", {"q": float(q)}, float(q)) for q in qs])
        return frame.stack().rename(column)  # pandas: a Series indexed by (group, q)

    def _build(self, shape: str, items: list[tuple]) -> LazyResult:
        inputs: list[LazyResult] = []
        where: dict[tuple[str, bool], int] = {}

        def slot(column: str, values: bool) -> int:
            if (column, values) not in where:
                where[column, values] = len(inputs)
                inputs.append(self._partials(self._data[column], values))
            return where[column, values]

        spec = []
        for column, name, params, label in items:
            if name not in STATISTICS:
                raise ArgumentError(f"unknown group-by statistic {name!r}: use one of {sorted(STATISTICS)}")
            table = slot(column, False)
            counts = slot(column, True) if STATISTICS[name].counts else None
            spec.append((column, name, tuple(sorted(params.items())), label, table, counts))
        return call(_assemble, (shape, tuple(spec)), self._names, *inputs)

    def _partials(self, x: FedData, values: bool) -> LazyResult:
        return aggregate(x, AGGREGATE, bool(values), *self._keys, needed_by="groupby")

    def _columns(self) -> tuple[str, ...]:
        if self._selection is not None:
            return self._selection
        columns = _schema_columns(self._data)
        keys = {n for n in self._names if isinstance(n, str)}
        return tuple(c for c in columns if c not in keys)

    @staticmethod
    def _name(f: Any) -> str:
        if isinstance(f, str) and f in STATISTICS:
            return f
        raise ArgumentError(f"agg takes names of group-by statistics {sorted(STATISTICS)}, not {f!r} "
                            "(Python functions would run on the rows, which never leave a server)")


def _params(name: str, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments pandas' method takes that change the result (ddof, q); the rest must keep pandas' defaults."""
    accepted = {"var": ("ddof",), "std": ("ddof",), "sem": ("ddof",), "quantile": ("q",)}.get(name, ())
    if len(args) > len(accepted):
        raise ArgumentError(f"{name}() takes {', '.join(accepted) or 'no arguments'} here")
    params = dict(zip(accepted, args))
    for key, value in kwargs.items():
        if key in accepted:
            params[key] = value
        elif not (key == "numeric_only" and value in (False, True)) and not (key == "skipna" and value is True):
            raise ArgumentError(f"{name}() of a FedMed group-by does not take {key}={value!r}")
    if name == "median":
        return {"q": 0.5}
    if name == "quantile":
        params.setdefault("q", 0.5)
    return params


def _schema_columns(data: FedData) -> list[str]:
    try:
        columns = data.columns  # fedmed.api.schema: names the servers agree on (one round)
    except Exception as exc:  # noqa: BLE001 - any failure means: name the columns instead
        raise ArgumentError("select the value columns of the group-by: data.groupby('sex')[['bmi', 'age']].mean()") \
            from exc
    return [str(c) for c in columns]


def _key_name(key: FedData) -> Any:
    """pandas names a group-by's index after the key Series: the column a derived key is made of."""
    names = {n.name for n in walk([key.node]) if isinstance(n, Column)}
    return names.pop() if len(names) == 1 else None


def groupby(data: FedData, by: Any = None, *, level: Any = None, as_index: bool = True, sort: bool = True,
            group_keys: bool = True, observed: bool = True, dropna: bool = True) -> GroupBy:
    """``data.groupby(by)``: ``by`` a column name, a list of names, or FedData keys (``data["age"] // 10``).

    pandas' defaults only (``sort=True``, ``observed=True``, ``dropna=True``): rows with a missing key
    are left out, groups come sorted by label, only groups with rows appear.
    """
    if by is None or level is not None:
        raise ArgumentError("groupby needs keys: a column name, a list of names, or a FedData expression")
    if not (as_index and sort and dropna and observed):
        raise ArgumentError("a FedMed group-by keeps pandas' defaults as_index=True, sort=True, observed=True, "
                            "dropna=True; reset the index or reorder after compute()")
    keys, names = [], []
    for key in by if isinstance(by, (list, tuple)) else [by]:
        if isinstance(key, str):
            keys.append(data[key])
            names.append(key)
        elif isinstance(key, FedData):
            keys.append(key)
            names.append(_key_name(key))
        else:
            raise ArgumentError(f"group by column names or FedData expressions, not {type(key).__name__}")
    if not keys:
        raise ArgumentError("groupby needs at least one key")
    return GroupBy(data, tuple(keys), tuple(names))


METHODS = {"groupby": Method(groupby)}
