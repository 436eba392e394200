"""pandas' schema on ``FedData`` (``columns``, ``dtypes``, ``shape``, ``len``), refused row-level calls, unknown names.

A server answers the ``schema`` aggregate with its fragment's column names
and dtype strings, never a value (``fedmed.ops.private.schema``). The client
asks every source in one round, compares the answers and pools the dtypes
as ``pd.concat`` would (``int64`` here and ``float64`` there is
``float64``); where servers disagree (a column missing on one, numbers here
and text there) it raises ``fm.DataError`` naming the servers and the column.
Answers are kept per set of sources and expression, so ``data.columns``
asks once. ``len(data)`` and ``data.shape`` count rows now (``len()`` must
return an int, as in Dask). Calls that would show rows (``head``, ``iloc``,
iteration...) are refused with ``fm.RowLevelError`` saying what to use
instead; a name that is a column reads it (``data.age``), any other name
raises an ``AttributeError`` listing close matches.
"""

from __future__ import annotations

import difflib
import weakref
from typing import Any, Sequence

import pandas as pd

from ..errors import ArgumentError, DataError, FedMedError, RowLevelError
from ..expr.client import Reduce
from ..expr.node import Node
from ..expr.rowwise import Column, Elementwise, Filter, Fragment, Literal, Map, Param
from ..expr.tables import RELATIONS
from ..lazy import FedData, LazyResult, compute
from . import Method, table


class UnknownName(AttributeError, FedMedError):
    """``data.name`` where ``name`` is neither a column nor a method: an ``AttributeError`` (so ``hasattr``
    works), listing close matches."""


# -- asking the servers ------------------------------------------------------------------------


#: Schema answers per first source (weakly: they go with the sources), keyed by (sources, expression).
_ANSWERS: "weakref.WeakKeyDictionary[Any, dict[tuple[tuple[str, ...], str], list[Any]]]" = weakref.WeakKeyDictionary()


def _unfiltered(node: Node) -> Node:
    """``node`` without its row filters: a boolean filter keeps pandas' dtypes, and a schema that never
    depends on which rows a filter kept is one no privacy rule has to judge as a subset."""
    if isinstance(node, Filter):
        return _unfiltered(node.arg)
    if isinstance(node, Param) or not node.children:
        return node
    return node.replace_children(_unfiltered(c) for c in node.children)


def _schema_results(data: FedData) -> tuple[list[LazyResult], tuple[Any, tuple[tuple[str, ...], str]] | None]:
    """One schema result per source (its own reduce, so each answer stays apart), or none when cached."""
    if "schema" not in data.config.aggregates:
        raise FedMedError(f"the schema (columns, dtypes) needs the aggregate 'schema', which the config "
                          f"{data.config.origin} does not offer; add the line "
                          "'schema: {map: fedmed.ops.private.schema, reduce: fedmed.ops.public.schema}'")
    node = _unfiltered(data.node)
    key = (tuple(s.uid for s in data.sources), node.key)
    if key in _ANSWERS.get(data.sources[0], {}):
        return [], None
    fn = data.config.aggregates["schema"].reduce
    results = [LazyResult(Reduce(Map("schema", (node,)), (s,), fn), data._flags) for s in data.sources]
    return results, (data.sources[0], key)


def _ask(data: FedData, *extra: LazyResult) -> tuple[list[Any], tuple[Any, ...]]:
    """The per-source schema answers (cached) and the values of ``extra``, in one batch: one round."""
    results, slot = _schema_results(data)
    values = compute(*results, *extra) if results or extra else ()
    if slot is not None:
        # a one-source reduce of a table's answer is {column: [dtype]}; of a column's, [dtype]
        answers = [_unwrap(v) for v in values[: len(results)]]
        _ANSWERS.setdefault(slot[0], {})[slot[1]] = answers
    first, key = data.sources[0], (tuple(s.uid for s in data.sources), _unfiltered(data.node).key)
    return _ANSWERS[first][key], tuple(values[len(results):])


def _unwrap(value: Any) -> Any:
    """A source's answer: ``{column: dtype}`` for a table, a dtype string for a column."""
    if isinstance(value, dict):
        return {str(k): _unwrap(v) for k, v in value.items()}
    if isinstance(value, list) and len(value) == 1:
        return value[0]
    return value


# -- pooling the answers -----------------------------------------------------------------------


def _where(data: FedData, indices: Sequence[int]) -> str:
    return ", ".join(f"{data.sources[i].server} [{data.sources[i].fragment!r}]" for i in indices)


def _kind(dtype: str) -> str:
    """What a dtype holds, for telling disagreeing servers from ones pandas pools (int64 with float64)."""
    try:
        resolved = pd.api.types.pandas_dtype(dtype)
    except TypeError:
        return dtype
    if isinstance(resolved, pd.CategoricalDtype) or resolved.kind in "OSU":
        return "text"
    return {"i": "number", "u": "number", "f": "number"}.get(resolved.kind, resolved.kind)


def _pooled(data: FedData, column: str | None, dtypes: Sequence[str]) -> str:
    """The dtype pandas gives the pooled column, or ``DataError`` naming the servers that differ."""
    if len(set(dtypes)) == 1:
        return dtypes[0]
    kinds = {_kind(d) for d in dtypes}
    if len(kinds) > 1:
        by_dtype: dict[str, list[int]] = {}
        for i, d in enumerate(dtypes):
            by_dtype.setdefault(d, []).append(i)
        what = f"column {column!r}" if column is not None else "the column"
        seen = "; ".join(f"{d} on {_where(data, idx)}" for d, idx in by_dtype.items())
        raise DataError(f"the servers disagree on the type of {what}: {seen}. Convert it where it differs "
                        f"(e.g. data[{column or 'x'!r}].to_numeric() or .astype(...)) or ask the server's owner")
    # within one kind pandas finds a common type (int64 and float64 make float64): ask pandas itself
    return str(pd.concat([pd.Series([], dtype=d) for d in dtypes]).dtype)


def _reconcile(data: FedData, answers: list[Any]) -> "pd.Series | str":
    """The pooled schema: a Series of dtypes for tables, a dtype string for a column."""
    tables = [isinstance(a, dict) for a in answers]
    if not all(tables):
        if any(tables):
            raise DataError(f"some fragments are tables ({_where(data, [i for i, t in enumerate(tables) if t])}) "
                            f"and some single columns ({_where(data, [i for i, t in enumerate(tables) if not t])})")
        return _pooled(data, data.node.name if isinstance(data.node, Column) else None, answers)
    names = list(dict.fromkeys(c for a in answers for c in a))  # pd.concat's order: first seen first
    for name in names:
        lacking = [i for i, a in enumerate(answers) if name not in a]
        if lacking:
            having = [i for i in range(len(answers)) if i not in lacking]
            raise DataError(f"column {name!r} is missing on {_where(data, lacking)} but present on "
                            f"{_where(data, having)}; select the columns all servers have, or ask the owners")
    values = [_pooled(data, n, [a[n] for a in answers]) for n in names]
    if any(isinstance(v, dict) for a in answers for v in a.values()):
        raise ArgumentError("a nested fragment (a dict of tables) has no flat schema: select one table first")
    return pd.Series(values, index=pd.Index(names), dtype=object)


# -- the pandas names ---------------------------------------------------------------------------


def dtypes(data: FedData) -> "pd.Series":
    """The dtypes of the pooled frame, as ``DataFrame.dtypes`` (strings): one round, then cached.

    For a single column (``data["x"].dtypes``) the dtype string, as ``Series.dtypes``.

    Examples
    --------
    >>> import fedmed as fm
    >>> data = fm.FedData([fm.Local({"age": [30, 40], "bmi": [20.5, 22.0]}), fm.Local({"age": [50], "bmi": [25]})])
    >>> data.dtypes
    age      int64
    bmi    float64
    dtype: object
    """
    answers, _ = _ask(data)
    return _reconcile(data, answers)


def columns(data: FedData) -> pd.Index:
    """The column names, as ``DataFrame.columns``: one round, then cached.

    Examples
    --------
    >>> import fedmed as fm
    >>> fm.FedData([fm.Local({"age": [30], "sex": ["F"]})]).columns.tolist()
    ['age', 'sex']
    """
    pooled = dtypes(data)
    if not isinstance(pooled, pd.Series):
        raise UnknownName("a single column has no .columns (as a pandas Series): use .dtype, or select "
                          "columns of the table: data[['a', 'b']]")
    return pooled.index


def dtype(data: FedData) -> str:
    """A single column's dtype string, as ``Series.dtype``: one round, then cached.

    >>> import fedmed as fm
    >>> fm.FedData([fm.Local({"age": [30]})])["age"].dtype
    'int64'
    """
    pooled = dtypes(data)
    if isinstance(pooled, pd.Series):
        raise UnknownName("a table has no .dtype (as a pandas DataFrame): use .dtypes")
    return pooled


def length(data: FedData) -> int:
    """``len(data)``: the rows of the whole fragment or of a filtered expression, counted now (one round).

    Examples
    --------
    >>> import fedmed as fm
    >>> data = fm.FedData([fm.Local({"age": [30, 40]}), fm.Local({"age": [50]})])
    >>> len(data), len(data[data["age"] > 35])
    (3, 2)
    """
    return _rows(compute(data.len())[0])


def _rows(counted: Any) -> int:
    # a table's len is one count per column, all equal (a table without columns has no column to count)
    if isinstance(counted, pd.Series):
        return int(counted.iloc[0]) if len(counted) else 0
    return int(counted)


def shape(data: FedData) -> tuple[int, ...]:
    """``(rows, columns)`` for a table, ``(rows,)`` for a column, as pandas: one round (counted now).

    Examples
    --------
    >>> import fedmed as fm
    >>> fm.FedData([fm.Local({"age": [30, 40], "sex": ["F", "M"]}), fm.Local({"age": [50], "sex": ["F"]})]).shape
    (3, 2)
    """
    answers, (counted,) = _ask(data, data.len())
    pooled = _reconcile(data, answers)
    rows = _rows(counted)
    return (rows, len(pooled)) if isinstance(pooled, pd.Series) else (rows,)


# -- row-level calls ----------------------------------------------------------------------------

#: What each refused pandas name would show, and what to use instead.
ROW_LEVEL: dict[str, str] = {
    "head": "describe(), value_counts() or fm.stats.reconstruct(...) for synthetic rows",
    "tail": "describe(), value_counts() or fm.stats.reconstruct(...) for synthetic rows",
    "sample": "fm.stats.reconstruct(...) for synthetic rows with the same statistics",
    "iloc": "a row filter, data[data['age'] > 50], then an aggregate",
    "sort_values": "quantile(...), min()/max(), or value_counts().sort_index() on the pooled counts",
    "nlargest": "quantile(...) or max()",
    "nsmallest": "quantile(...) or min()",
    "to_csv": "an aggregate's result, which is a pandas object you can save",
    "to_numpy": "an aggregate (describe(), value_counts(), histogram)",
    "values": "an aggregate (describe(), value_counts(), histogram)",
    "to_list": "an aggregate (describe(), value_counts(), unique())",
    "tolist": "an aggregate (describe(), value_counts(), unique())",
    "iterrows": "an aggregate, or fm.stats.reconstruct(...) for synthetic rows",
    "itertuples": "an aggregate, or fm.stats.reconstruct(...) for synthetic rows",
    "__iter__": "an aggregate's result (iterate over value_counts().compute())",
    "apply": "elementwise operators and methods (+, np.log, where, map({...}), astype); "
             "a Python function cannot run on a server",
}

#: pandas reads these as attributes, not methods.
_PROPERTIES = frozenset({"iloc", "values"})


def refuse(data: FedData, name: str) -> RowLevelError:
    """The error for a pandas call that would show rows, saying what to use instead.

    Examples
    --------
    >>> import fedmed as fm
    >>> fm.FedData([fm.Local({"age": [30]})]).head()
    Traceback (most recent call last):
    ...
    fedmed.errors.RowLevelError: data.head() would show rows, and rows never leave a server; use describe(), value_counts() or fm.stats.reconstruct(...) for synthetic rows
    """
    call = f"data.{name}" if name in _PROPERTIES else "iterating over data" if name == "__iter__" else f"data.{name}()"
    instead = ROW_LEVEL.get(name, "an aggregate such as describe() or value_counts()")
    return RowLevelError(f"{call} would show rows, and rows never leave a server; use {instead}")


def _refused(name: str) -> Method:
    if name in _PROPERTIES:
        def read(data: FedData) -> Any:
            raise refuse(data, name)
        return Method(read, kind="property")

    def call(data: FedData, *args: Any, **kwargs: Any) -> Any:
        raise refuse(data, name)
    return Method(call)


# -- names that are neither config operations nor in the table ------------------------------------


def _is_table(node: Node) -> bool | None:
    """Whether ``node`` is a table by its structure (True/False), or None when only the schema can tell."""
    if isinstance(node, (Fragment, *RELATIONS)):
        return True
    if isinstance(node, Filter):
        return _is_table(node.arg)
    if isinstance(node, (Column, Literal, Map, Param)):
        return False  # a column of a nested fragment may be a table: read it with data["visit"]["age"]
    if isinstance(node, Elementwise):
        return any(_is_table(a) for a in node.args)
    return None


def unknown(data: FedData, name: str) -> Any:
    """``data.name`` for a name that is neither a config operation nor a pandas method here.

    A column of a table reads it (``data.age`` is ``data["age"]``, as pandas
    allows); any other name raises ``UnknownName`` (an ``AttributeError``)
    listing at most five close matches: columns first, then pandas' names
    and the config's operations (never the whole config).

    Examples
    --------
    >>> import fedmed as fm
    >>> data = fm.FedData([fm.Local({"age": [30, 40]})])
    >>> int(data.age.sum())
    70
    >>> data.aeg
    Traceback (most recent call last):
    ...
    fedmed.api.schema.UnknownName: FedData has no column or method 'aeg'; did you mean: age...
    """
    names: list[str] = []
    why = ""
    if _is_table(data.node) is not False:
        try:
            pooled = dtypes(data)
        except FedMedError as exc:
            why = f" (its columns could not be read: {exc})"
        else:
            if isinstance(pooled, pd.Series):
                names = [str(c) for c in pooled.index]
                if name in names:
                    return data[name]
    config = data.config
    methods = [m for m in dict.fromkeys([*table(), *config.aggregates, *config.elementwise]) if m not in names]
    close = difflib.get_close_matches(name, names, n=5)  # a column first: data.aeg meant data.age
    if len(close) < 5:  # difflib refuses n=0
        close += difflib.get_close_matches(name, methods, n=5 - len(close))
    hint = f"; did you mean: {', '.join(close)}?" if close else \
        "; see data.columns for the columns and docs/pandas.md for the methods"
    raise UnknownName(f"FedData has no column or method {name!r}{hint}{why}")


METHODS: dict[str, Method] = {
    "columns": Method(columns, kind="property"),
    "dtypes": Method(dtypes, kind="property"),
    "dtype": Method(dtype, kind="property"),
    "shape": Method(shape, kind="property"),
    # a table's sort_values is fedmed.api.tables' (a Sort kept on the servers); a column's is refused there
    **{name: _refused(name) for name in ROW_LEVEL if name not in ("__iter__", "sort_values")},
}
