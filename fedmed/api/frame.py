"""Whole frames: column selections, derived columns, row filters and reductions over every column.

A frame is still a ``FedData`` (the one type users construct and pass to
``fm.stats``): ``Frame`` is a ``FedData`` whose node is the rows (the
fragment, or the fragment filtered) and which also holds a mapping of named
column expressions: ``data[["age", "bmi"]]`` names two columns of the
fragment, ``data.assign(bmi10=data["bmi"] / 10)`` adds a column that exists in
the expression only (nothing is written on a server). ``frame["x"]`` gives
the column's expression, so every column method, statistic and group-by
works on derived columns unchanged. A whole-frame reduction
(``frame.mean()``, ``describe()``, ``corr()``) is one column statistic per
column, all asked in the same request per server, assembled on the client
into pandas' shape. ``query`` parses its text with ``ast`` into the same
nodes Python's operators build; nothing the user writes is evaluated.
"""

from __future__ import annotations

import ast
import io
import operator
import os
import sys
import tokenize
from functools import reduce
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import ArgumentError
from ..expr.client import Scalar
from ..expr.node import Node
from ..expr.rowwise import Filter, Fragment
from ..expr.tables import RELATIONS
from ..lazy import FedData, LazyResult
from ..stats.lazy_call import call
from . import Method


class Frame(FedData):
    """Rows of a fragment with named column expressions: what pandas calls a DataFrame.

    ``node`` is the rows; ``_names`` the columns in order (``None``: every
    column of the fragment, then the derived ones); ``_derived`` the columns
    defined by an expression rather than read from the fragment.

    Examples
    --------
    >>> import fedmed as fm
    >>> data = fm.FedData([fm.Local({"a": [1.0, 2.0], "b": [3.0, 5.0]}), fm.Local({"a": [3.0], "b": [7.0]})])
    >>> data[["a", "b"]].mean().compute()
    a    2.0
    b    5.0
    dtype: float64
    """

    _names: "tuple[str, ...] | None"
    _derived: dict[str, Node]

    def column_names(self) -> list[str]:
        """The columns in order; a frame of every fragment column asks the servers' schema (one round, cached)."""
        if self._names is not None:
            return list(self._names)
        from .schema import dtypes

        stored = list(dtypes(self._derive(_root(self._node))).index)
        return stored + [name for name in self._derived if name not in stored]

    def _column(self, name: str) -> Node:
        if name in self._derived:
            return self._derived[name]
        if self._names is not None and name not in self._names:
            raise ArgumentError(f"no column {name!r} in this selection; it has {list(self._names)}")
        return FedData.__getitem__(self, name)._node

    def __getitem__(self, key: Any) -> FedData:
        if isinstance(key, str):
            return self._derive(self._column(key))
        if isinstance(key, FedData) and not isinstance(key, Frame):
            return _filtered(self, self._operand(key))
        if _is_names(key):
            names = tuple(key)
            return _frame(self, self._node, names, {n: self._column(n) for n in names})
        raise ArgumentError(
            f"select a column by name, columns by a list of names, or rows with a boolean FedData, not {type(key).__name__}"
        )

    def __setitem__(self, key: Any, value: Any) -> None:
        if not isinstance(key, str):
            raise ArgumentError(f"assign one column by name: data['new'] = expression, not a {type(key).__name__} key")
        node = _column_node(self, value, key)
        self._derived = {**self._derived, key: node}
        if self._names is not None and key not in self._names:
            self._names = (*self._names, key)

    def _elementwise(self, op: str, args: Sequence[Any]) -> FedData:
        # frame.isna(), frame > 0: the operation on every column, as pandas broadcasts it
        names = self.column_names()
        derived = {n: FedData._elementwise(self, op, [self[n] if a is self else a for a in args])._node for n in names}
        return _frame(self, self._node, tuple(names), derived)

    def _aggregate(self, name: str, args: Sequence[Any]) -> LazyResult:
        if name == "len":  # rows, whatever the columns
            return FedData._aggregate(self, name, args)
        raise ArgumentError(
            f"{name}() of a whole frame is not defined: select a column (data['x'].{name}()) "
            "or use a reduction pandas has for frames (mean, sum, count, describe, agg...)"
        )

    def __repr__(self) -> str:
        shown = "all columns" if self._names is None else list(self._names)
        extra = f" + derived {sorted(self._derived)}" if self._names is None and self._derived else ""
        return f"{FedData.__repr__(self)[:-1]}; frame of {shown}{extra})"


def _frame(like: FedData, rows: Node, names: "tuple[str, ...] | None", derived: Mapping[str, Node]) -> Frame:
    new = object.__new__(Frame)
    new._sources, new._config, new._flags = like._sources, like._config, like._flags
    new._node, new._names, new._derived = rows, names, dict(derived)
    return new


def _filtered(frame: Frame, mask: Node) -> Frame:
    # a derived column is an expression over the unfiltered rows: it is filtered by the same mask
    derived = {n: Filter(node, mask) for n, node in frame._derived.items()}
    return _frame(frame, Filter(frame._node, mask), frame._names, derived)


def _on_rows(node: Node, rows: Node) -> Node:
    """``node`` restricted to the frame's rows: pandas aligns an assigned column to the frame's index, so
    ``data[mask].assign(x=expr)`` keeps only the rows ``mask`` keeps, even for an ``expr`` built on all
    rows. Row filters select by row label, so a filter ``expr`` already has is kept, not doubled."""
    masks = []
    while isinstance(rows, Filter):
        masks.append(rows.mask)
        rows = rows.arg
    for mask in reversed(masks):
        node = Filter(node, mask)
    return node


def _root(node: Node) -> Node:
    while isinstance(node, Filter):
        node = node.arg
    return node


def _is_names(key: Any) -> bool:
    return isinstance(key, (list, pd.Index)) and all(isinstance(k, str) for k in key)


def is_table(data: Any) -> bool:
    """True for a frame: a ``Frame``, a fragment or a table derived on the servers (a merge, a per-person
    group-by...), or one of those with rows filtered (not a column expression)."""
    return isinstance(data, Frame) or (isinstance(data, FedData) and isinstance(_root(data.node), (Fragment, *RELATIONS)))


def as_frame(data: FedData) -> Frame:
    """``data`` as a ``Frame``: itself when it is one, every column of its fragment otherwise."""
    if isinstance(data, Frame):
        return data
    if not is_table(data):
        raise ArgumentError(f"{data!r} is a column, not a table: this is a method of a frame (data or data[['a', 'b']])")
    return _frame(data, data.node, None, {})


def _column_node(frame: Frame, value: Any, name: str) -> Node:
    """The expression of a derived column: a column of the same rows, or a function of the frame."""
    if callable(value) and not isinstance(value, (FedData, LazyResult)):
        value = value(frame)  # pandas' assign(new=lambda df: df["a"] + 1)
    if isinstance(value, FedData) and not isinstance(value, Frame):
        return _on_rows(frame._operand(value), frame.node)
    raise ArgumentError(
        f"column {name!r}: assign an expression of columns (data['bmi'] / 10), not a {type(value).__name__}; "
        "a constant or client value has no rows of its own: combine it with a column (data['x'] * 0 + value)"
    )


# -- hooks FedData calls -----------------------------------------------------------------------------


def select(data: FedData, key: Any) -> FedData:
    """``data[["a", "b"]]``: a frame of those columns (other keys are refused with what to write)."""
    return as_frame(data)[key]


def setitem(data: FedData, key: Any, value: Any) -> FedData:
    """``data["new"] = expr``: ``data`` becomes a frame with a derived column; nothing is written on a server.

    The object itself changes (pandas' semantics): it turns into a ``Frame``,
    a ``FedData`` that knows its derived columns, so ``data["new"]`` reads them.
    """
    if not is_table(data):
        raise ArgumentError("assign columns to a table (data['new'] = ...), not to a column expression")
    if not isinstance(data, Frame):
        data.__class__ = Frame  # same layout plus two attributes: the user's object gains its columns
        data._names, data._derived = None, {}
    data[key] = value
    return data


# -- reductions over every column ------------------------------------------------------------------------

#: What pandas' frame reductions compute per column when fedmed.api.series has no method of that name.
_FALLBACK: dict[str, Callable[..., LazyResult]] = {}


def _column_stat(column: FedData, name: str, **kwargs: Any) -> LazyResult:
    """``column.<name>(**kwargs)``: the column method (fedmed.api.series) or the config aggregate."""
    from . import table

    if name in table() or (name in column.config.aggregates and not kwargs):
        return getattr(column, name)(**kwargs)
    if name in _FALLBACK:
        return _FALLBACK[name](column, **kwargs)
    raise ArgumentError(f"{name!r} is not a column statistic FedMed knows; use mean, std, var, sum, count, min, max, median...")


def _fallbacks() -> None:
    from .. import stats

    _FALLBACK.update(
        mean=lambda c: stats.mean(c),
        std=lambda c, ddof=1: stats.std(c, ddof),
        var=lambda c, ddof=1: stats.var(c, ddof),
        sem=lambda c, ddof=1: stats.sem(c, ddof),
        median=lambda c: stats.median(c),
        describe=lambda c: call(_describe_rows, stats.describe(c), stats.quantile(c, [0.25, 0.5, 0.75])),
    )


_fallbacks()


def _describe_rows(summary: pd.Series, quartiles: Any) -> pd.Series:
    q = list(np.atleast_1d(np.asarray(quartiles, dtype=float)))
    rows = [summary["count"], summary["mean"], summary["std"], summary["min"], *q, summary["max"]]
    return pd.Series(rows, index=["count", "mean", "std", "min", "25%", "50%", "75%", "max"], dtype=float)


def _dtypes(frame: Frame) -> dict[str, str]:
    """The dtype of every column: the fragment's from the schema, a derived column's from its own (one round each, cached)."""
    from .schema import dtypes

    stored = dtypes(frame._derive(_root(frame.node)))
    return {n: dtypes(frame[n]) if n in frame._derived else stored[n] for n in frame.column_names()}


def _numeric_names(frame: Frame, booleans: bool = True) -> list[str]:
    """The numeric columns, as pandas' ``numeric_only`` (booleans included) or ``describe`` (booleans not)."""
    return [n for n, dt in _dtypes(frame).items() if _is_numeric(dt, booleans)]


def _is_numeric(dtype: str, booleans: bool) -> bool:
    try:
        kind = pd.api.types.pandas_dtype(dtype)
    except TypeError:
        return False
    return pd.api.types.is_numeric_dtype(kind) and (booleans or not pd.api.types.is_bool_dtype(kind))


def _assemble(fn: Callable[..., Any], names: Sequence[str], results: Sequence[LazyResult], like: FedData) -> LazyResult:
    if not results:  # a frame of no (numeric) columns: pandas gives an empty result
        return LazyResult(Scalar(fn(tuple(names))), like._flags)
    return call(fn, tuple(names), *results)


def _series(names: tuple[str, ...], *values: Any) -> pd.Series:
    return pd.Series(list(values), index=list(names), dtype=None if values else float)


def _columns_frame(names: tuple[str, ...], *values: pd.Series) -> pd.DataFrame:
    return pd.DataFrame(dict(zip(names, values)), columns=list(names))


def _reduction(name: str) -> Callable[..., LazyResult]:
    def reduction(frame: Frame, numeric_only: bool = False, **kwargs: Any) -> LazyResult:
        names = _numeric_names(frame) if numeric_only else frame.column_names()
        results = [_column_stat(frame[n], name, **kwargs) for n in names]
        return _assemble(_series, names, results, frame)

    reduction.__name__ = name
    reduction.__doc__ = f"pandas' ``DataFrame.{name}``: the column {name} of every column, as a Series indexed by column."
    return reduction


def count(frame: Frame) -> LazyResult:
    """Non-missing values of every column (text included), as pandas' ``DataFrame.count()``.

    >>> import fedmed as fm
    >>> data = fm.FedData([fm.Local({"a": [1.0, None], "b": ["x", "y"]})])
    >>> data[["a", "b"]].count().compute().tolist()
    [1, 2]
    """
    names = frame.column_names()
    return _assemble(_series, names, [_column_stat(frame[n], "count") for n in names], frame)


def describe(frame: Frame) -> LazyResult:
    """pandas' ``DataFrame.describe()``: count, mean, std, min, quartiles, max of every numeric column.

    The quartiles take the quantile rounds (``fm.explain`` shows them); all
    columns share each round's request.

    >>> import fedmed as fm
    >>> data = fm.FedData([fm.Local({"a": [1.0, 2.0, 3.0], "t": ["x", "y", "z"]}), fm.Local({"a": [4.0], "t": ["w"]})])
    >>> data[["a", "t"]].describe().compute()["a"].tolist()
    [4.0, 2.5, 1.2909944487358056, 1.0, 1.75, 2.5, 3.25, 4.0]
    """
    names = _numeric_names(frame, booleans=False)
    if not names:
        raise ArgumentError("describe() of a frame without numeric columns: describe a column, or value_counts() for text")
    return _assemble(_columns_frame, names, [_column_stat(frame[n], "describe") for n in names], frame)


def corr(frame: Frame, method: str = "pearson", numeric_only: bool = False) -> LazyResult:
    """Pearson correlations of every pair of columns over their complete rows, as ``DataFrame.corr()``.

    >>> import fedmed as fm
    >>> data = fm.FedData([fm.Local({"a": [1, 2, 3], "b": [2, 4, 7]})])
    >>> round(float(data[["a", "b"]].corr().compute().loc["a", "b"]), 4)
    0.9934
    """
    if method != "pearson":
        raise ArgumentError(f"corr(method={method!r}): FedMed computes Pearson correlations only")
    from .. import stats

    names = _numeric_names(frame) if numeric_only else frame.column_names()
    return stats.corr(frame, names)


def cov(frame: Frame, ddof: int = 1, numeric_only: bool = False) -> LazyResult:
    """Covariances of every pair of columns over their complete rows, as ``DataFrame.cov()``.

    >>> import fedmed as fm
    >>> data = fm.FedData([fm.Local({"a": [1.0, 2.0, 3.0], "b": [2.0, 4.0, 7.0]})])
    >>> float(data[["a", "b"]].cov().compute().loc["a", "b"])
    2.5
    """
    from .. import stats

    names = _numeric_names(frame) if numeric_only else frame.column_names()
    pairs = [(i, j) for i in range(len(names)) for j in range(i, len(names))]
    results = [
        stats.var(frame[names[i]], ddof) if i == j else stats.cov(frame[names[i]], frame[names[j]], ddof) for i, j in pairs
    ]
    return _assemble(_matrix, names, results, frame)


def _matrix(names: tuple[str, ...], *values: float) -> pd.DataFrame:
    k = len(names)
    out = np.full((k, k), np.nan)
    pairs = iter(values)
    for i in range(k):
        for j in range(i, k):
            out[i, j] = out[j, i] = next(pairs)
    return pd.DataFrame(out, index=list(names), columns=list(names))


def agg(frame: Frame, func: Any) -> LazyResult:
    """pandas' ``DataFrame.agg``: a list of statistics (rows) of every column, or a dict column -> statistic(s).

    >>> import fedmed as fm
    >>> data = fm.FedData([fm.Local({"a": [1.0, 2.0, 3.0], "b": [2.0, 4.0, 9.0]})])
    >>> data[["a", "b"]].agg(["min", "max"]).compute().loc["max"].tolist()
    [3.0, 9.0]
    """
    if isinstance(func, str):
        return _column_or_frame_stat(frame, func)
    if isinstance(func, (list, tuple)):
        wanted = {n: list(func) for n in frame.column_names()}
    elif isinstance(func, Mapping):
        wanted = {n: [f] if isinstance(f, str) else list(f) for n, f in func.items()}
        if all(isinstance(f, str) for f in func.values()):  # one statistic per column: a Series, as pandas
            names = list(func)
            return _assemble(_series, names, [_column_stat(frame[n], func[n]) for n in names], frame)
    else:
        raise ArgumentError(f"agg takes a statistic's name, a list of names or a dict column -> names, not {type(func).__name__}")
    names = tuple(wanted)
    cells = [(n, f) for n in names for f in wanted[n]]
    results = [_column_stat(frame[n], f) for n, f in cells]
    return _assemble(_agg_table, (names, tuple(cells)), results, frame) if results else _assemble(_series, (), [], frame)


def _column_or_frame_stat(frame: Frame, name: str) -> LazyResult:
    method = _METHODS.get(name)
    if method is None:
        raise ArgumentError(f"agg({name!r}): not a statistic FedMed computes for frames")
    return method.fn(frame)


def _agg_table(spec: tuple[tuple[str, ...], tuple[tuple[str, str], ...]], *values: Any) -> pd.DataFrame:
    names, cells = spec
    rows = list(dict.fromkeys(f for _, f in cells))
    out = pd.DataFrame(np.nan, index=rows, columns=list(names), dtype=object)
    for (n, f), v in zip(cells, values):
        out.loc[f, n] = v
    return out.infer_objects()


# -- selection and derived columns ------------------------------------------------------------------------


def assign(frame: Frame, **columns: Any) -> Frame:
    """pandas' ``assign``: a new frame with derived columns (expressions, or functions of the frame).

    >>> import fedmed as fm
    >>> data = fm.FedData([fm.Local({"w": [60.0, 80.0], "h": [1.5, 2.0]})])
    >>> data.assign(bmi=lambda d: d["w"] / d["h"] ** 2)["bmi"].max().compute()
    26.666666666666668
    """
    new = _frame(frame, frame.node, frame._names, frame._derived)
    for name, value in columns.items():
        new[name] = value  # pandas: later columns may use earlier ones
    return new


def dropna(frame: Frame, axis: Any = 0, how: str = "any", thresh: "int | None" = None, subset: Any = None) -> Frame:
    """pandas' ``DataFrame.dropna`` for rows: keep rows with (any / all / ``thresh``) values present in ``subset``.

    >>> import fedmed as fm
    >>> data = fm.FedData([fm.Local({"a": [1.0, None, 3.0], "b": [1.0, 2.0, None]})])
    >>> data[["a", "b"]].dropna(subset=["a"])["b"].count().compute()
    1
    """
    if axis not in (0, "index", "rows"):
        raise ArgumentError("dropna(axis=1) drops columns by their values: count them (data.isna().sum()) and select")
    if how not in ("any", "all"):
        raise ArgumentError(f"dropna(how={how!r}): how is 'any' or 'all'")
    names = [subset] if isinstance(subset, str) else list(subset) if subset is not None else frame.column_names()
    present = [frame[n].notna() for n in names]
    if not present:
        return frame
    if thresh is not None:
        mask = reduce(operator.add, [p * 1 for p in present]) >= thresh  # bool + bool is "or" in numpy
    else:
        mask = reduce(operator.and_ if how == "any" else operator.or_, present)
    return frame[mask]


class _Loc:
    """``data.loc[rows, columns]``: rows by a condition, columns by name(s) or ``:``."""

    def __init__(self, frame: Frame) -> None:
        self._frame = frame

    def __getitem__(self, key: Any) -> FedData:
        rows, columns = key if isinstance(key, tuple) and len(key) == 2 else (key, slice(None))
        frame = self._frame
        if callable(rows) and not isinstance(rows, FedData):
            rows = rows(frame)
        if isinstance(rows, FedData) and not isinstance(rows, Frame):
            frame = frame[rows]
        elif not _is_everything(rows):
            raise ArgumentError(
                "loc selects rows by a condition (data.loc[data['age'] > 50, ...]) or all rows (:); "
                "row labels and positions never leave a server"
            )
        if _is_everything(columns):
            return frame
        if isinstance(columns, str) or _is_names(columns):
            return frame[columns]
        raise ArgumentError(f"loc selects columns by a name, a list of names or ':', not {type(columns).__name__}")

    def __setitem__(self, key: Any, value: Any) -> None:
        raise ArgumentError("loc[...] = value writes rows; derive a column instead: data['new'] = expression")


def _is_everything(key: Any) -> bool:
    return isinstance(key, slice) and key == slice(None)


def loc(frame: Frame) -> _Loc:
    """pandas' ``loc``: ``data.loc[mask, "col"]``, ``data.loc[mask, ["a", "b"]]``, ``data.loc[:, cols]``.

    >>> import fedmed as fm
    >>> data = fm.FedData([fm.Local({"age": [30, 60, 70], "bmi": [20.0, 30.0, 25.0]})])
    >>> data.loc[data["age"] > 50, "bmi"].sum().compute()
    55.0
    """
    return _Loc(frame)


# -- query: a safe subset of pandas' expression language -------------------------------------------------

#: Longest query text: a query is a condition, not a program (and ast's parser recurses).
MAX_QUERY = 10_000
_LOCAL = "_fedmed_local_"

_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
    ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
}
_ARITHMETIC: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
    ast.BitAnd: operator.and_, ast.BitOr: operator.or_,
}
_UNARY: dict[type, Callable[[Any], Any]] = {
    ast.Not: operator.invert, ast.Invert: operator.invert, ast.USub: operator.neg, ast.UAdd: operator.pos,
}
#: What a construct is called in messages (anything not listed: its ast class name).
_CONSTRUCT = {
    ast.Call: "a function call", ast.Attribute: "attribute access (x.y)", ast.Subscript: "a subscript (x[...])",
    ast.Lambda: "a lambda", ast.ListComp: "a comprehension", ast.GeneratorExp: "a comprehension",
    ast.DictComp: "a comprehension", ast.SetComp: "a comprehension", ast.IfExp: "a conditional (x if c else y)",
    ast.NamedExpr: "an assignment (:=)", ast.Dict: "a dict", ast.JoinedStr: "an f-string", ast.Starred: "a starred expression",
    ast.Await: "await", ast.Yield: "yield", ast.Slice: "a slice",
}


def query(frame: Frame, expr: str, *, local_dict: "Mapping[str, Any] | None" = None,
          global_dict: "Mapping[str, Any] | None" = None) -> Frame:
    """pandas' ``query``: rows where a condition holds, parsed on the client (never evaluated).

    Allowed: column names, numbers, strings, ``True/False/None``, comparisons
    (chained too), ``and or not & | ~``, ``in`` / ``not in`` a list,
    arithmetic ``+ - * / // % **``, and ``@name`` for a variable of the
    caller (or of ``local_dict``). Anything else (calls, attributes,
    subscripts...) is an ``fm.ArgumentError`` naming the construct.

    >>> import fedmed as fm
    >>> data = fm.FedData([fm.Local({"age": [30, 60, 70], "sex": ["F", "F", "M"]})])
    >>> low = 50
    >>> data.query("age > @low and sex in ['F']")["age"].count().compute()
    1
    """
    if not isinstance(expr, str):
        raise ArgumentError(f"query takes a string, not {type(expr).__name__}")
    if len(expr) > MAX_QUERY:
        raise ArgumentError(f"query of {len(expr)} characters: a condition of at most {MAX_QUERY} is accepted")
    variables = dict(local_dict) if local_dict is not None else _caller_variables()
    if global_dict is not None:
        variables = {**global_dict, **variables}
    tree = _parse(expr)
    mask = _Query(frame, variables).visit(tree.body)
    if not isinstance(mask, FedData) or isinstance(mask, Frame):
        raise ArgumentError(f"query {expr!r} is not a condition on columns")
    return frame[mask]


def _parse(expr: str) -> ast.Expression:
    try:
        return ast.parse(_mark_locals(expr.strip()), mode="eval")
    except (SyntaxError, tokenize.TokenError, RecursionError, MemoryError, ValueError) as exc:
        raise ArgumentError(f"query {expr!r} cannot be parsed: {exc}") from None


#: pandas reads & and | as 'and' and 'or' (below comparisons): "a in [1] & b > 2" is (a in [1]) and (b > 2)
_BOOLEANS = {"&": "and", "|": "or"}


def _mark_locals(expr: str) -> str:
    # "@low" is not Python: it becomes a name no column can clash with, found by tokens so strings keep their "@"
    tokens = list(tokenize.generate_tokens(io.StringIO(expr).readline))
    out: list[tuple[int, str]] = []
    for i, tok in enumerate(tokens):
        if tok.type == tokenize.OP and tok.string in _BOOLEANS:
            out.append((tokenize.NAME, _BOOLEANS[tok.string]))
            continue
        if tok.type == tokenize.OP and tok.string == "@":
            if i + 1 >= len(tokens) or tokens[i + 1].type != tokenize.NAME:
                raise ArgumentError(f"query {expr!r}: '@' must be followed by a variable name")
            continue
        text = _LOCAL + tok.string if i and tokens[i - 1].string == "@" and tokens[i - 1].type == tokenize.OP else tok.string
        out.append((tok.type, text))
    return tokenize.untokenize(out)


def _is_fedmed(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path == _LAZY_FILE or os.path.dirname(path) == _API_DIR


_API_DIR = os.path.dirname(os.path.abspath(__file__))
_LAZY_FILE = os.path.abspath(sys.modules[FedData.__module__].__file__ or "")


def _caller_variables() -> dict[str, Any]:
    """The variables of the code that called ``query`` (pandas' ``@name``), past FedMed's own frames."""
    frame = sys._getframe(1)
    while frame is not None and _is_fedmed(frame.f_code.co_filename):
        frame = frame.f_back
    return {} if frame is None else {**frame.f_globals, **frame.f_locals}


class _Query(ast.NodeVisitor):
    """Builds FedData nodes from the allowed ast nodes; every other node is refused by name."""

    def __init__(self, frame: Frame, variables: Mapping[str, Any]) -> None:
        self.frame, self.variables = frame, variables

    def generic_visit(self, node: ast.AST) -> Any:
        what = _CONSTRUCT.get(type(node), type(node).__name__)
        raise ArgumentError(
            f"query: {what} is not allowed; use column names, constants, comparisons, and/or/not, "
            "'in [...]' and @variables (FedMed parses the text and never runs it)"
        )

    def visit_Constant(self, node: ast.Constant) -> Any:
        if node.value is not None and not isinstance(node.value, (bool, int, float, str)):
            return self.generic_visit(node)
        return node.value

    def visit_Name(self, node: ast.Name) -> Any:
        if node.id.startswith(_LOCAL):
            name = node.id[len(_LOCAL):]
            if name not in self.variables:
                raise ArgumentError(f"query: @{name} is not a variable of the caller (pass local_dict={{...}})")
            return self.variables[name]
        return self.frame[node.id]

    def visit_List(self, node: ast.List | ast.Tuple) -> list[Any]:
        values = [self.visit(e) for e in node.elts]
        if any(isinstance(v, (FedData, LazyResult)) for v in values):
            raise ArgumentError("query: a list holds constants only ('x in [1, 2]')")
        return values

    visit_Tuple = visit_List

    def visit_BoolOp(self, node: ast.BoolOp) -> Any:
        combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
        return reduce(combine, [self._condition(v) for v in node.values])

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        return _UNARY[type(node.op)](self.visit(node.operand))

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        op = _ARITHMETIC.get(type(node.op))
        if op is None:
            return self.generic_visit(node.op)
        return op(self.visit(node.left), self.visit(node.right))

    def visit_Compare(self, node: ast.Compare) -> Any:
        # a < b < c is (a < b) & (b < c), as in Python and pandas
        operands = [self.visit(node.left), *(self.visit(c) for c in node.comparators)]
        parts = [self._compare(op, a, b) for op, a, b in zip(node.ops, operands, operands[1:])]
        return reduce(operator.and_, parts)

    def _compare(self, op: ast.cmpop, left: Any, right: Any) -> Any:
        if not isinstance(left, FedData) and not isinstance(right, FedData):
            raise ArgumentError("query: a comparison needs a column on one side")
        if isinstance(op, (ast.In, ast.NotIn)) or (isinstance(op, (ast.Eq, ast.NotEq)) and isinstance(right, list)):
            if not isinstance(left, FedData) or not isinstance(right, (list, tuple)):
                raise ArgumentError("query: 'in' takes a column on the left and a list on the right ('sex in [\"F\"]')")
            found = left.isin(list(right))
            return ~found if isinstance(op, (ast.NotIn, ast.NotEq)) else found
        compare = _COMPARE.get(type(op))
        if compare is None:
            return self.generic_visit(op)
        return compare(left, right)

    def _condition(self, node: ast.AST) -> Any:
        value = self.visit(node)
        if not isinstance(value, FedData):
            raise ArgumentError("query: 'and'/'or' combine conditions on columns, not constants")
        return value


# -- the schema of a frame: its own columns, derived ones included ------------------------------------


def columns(frame: Frame) -> pd.Index:
    """The frame's column names, as ``DataFrame.columns`` (derived columns last, as pandas appends them)."""
    return pd.Index(frame.column_names())


def dtypes(frame: Frame) -> pd.Series:
    """The frame's dtypes, as ``DataFrame.dtypes`` (a derived column's from the servers' schema of it)."""
    return pd.Series(_dtypes(frame), dtype=object)


def shape(frame: Frame) -> tuple[int, int]:
    """``(rows, columns)``: the rows are counted now (one round), as ``len(data)``."""
    return len(frame), len(frame.column_names())


# -- the table -------------------------------------------------------------------------------------------

#: Every frame method, by pandas' name: installed on ``Frame`` (so a frame takes them before any
#: config operation or column method of the same name), and the frame-only ones registered for FedData.
_METHODS: dict[str, Method] = {
    **{name: Method(_reduction(name)) for name in ("mean", "std", "var", "sem", "sum", "min", "max", "median")},
    "count": Method(count),
    "describe": Method(describe),
    "corr": Method(corr),
    "cov": Method(cov),
    "agg": Method(agg),
    "aggregate": Method(agg),
    "assign": Method(assign),
    "dropna": Method(dropna),
    "query": Method(query),
    "loc": Method(loc, kind="property"),
    "columns": Method(columns, kind="property"),
    "dtypes": Method(dtypes, kind="property"),
    "shape": Method(shape, kind="property"),
}

#: Names only frames have: a table FedData (the whole fragment, filtered or not) reaches them through
#: the registry. The others (mean, describe, dropna...) are column methods too (fedmed.api.series):
#: ``dispatch`` picks the frame's for a table.
FRAME_ONLY = ("assign", "query", "loc")


def _lifted(method: Method) -> Method:
    fn = method.fn
    return Method(lambda data, *args, **kwargs: fn(as_frame(data), *args, **kwargs), kind=method.kind)


METHODS: dict[str, Method] = {name: _lifted(_METHODS[name]) for name in FRAME_ONLY}


#: Names the schema module answers for a whole fragment (one round); a Frame answers them itself.
SCHEMA_NAMES = frozenset({"columns", "dtypes", "shape"})


def dispatch(data: FedData, name: str) -> Any:
    """``data.name`` as a frame method when ``data`` is a table and frames have ``name``, else None.

    For ``fedmed.api.lookup`` to call first: ``data.describe()`` on a whole
    fragment is the frame's describe, ``data["x"].describe()`` the column's.
    """
    method = _METHODS.get(name)
    if method is None or not is_table(data) or (name in SCHEMA_NAMES and not isinstance(data, Frame)):
        return None  # a whole fragment's columns, dtypes and shape: the schema module's, in one round
    from .schema import dtypes  # the frame module is imported by the schema module's users too

    if not isinstance(data, Frame) and ("schema" not in data.config.aggregates or isinstance(dtypes(data), str)):
        return None  # a fragment holding one column (a list): its column methods apply
    return getattr(as_frame(data), name)


def _install() -> None:
    for name, method in _METHODS.items():
        fn = method.fn
        setattr(Frame, name, property(fn) if method.kind == "property" else _bound(fn))


def _bound(fn: Callable[..., Any]) -> Callable[..., Any]:
    def method(self: Frame, *args: Any, **kwargs: Any) -> Any:
        return fn(self, *args, **kwargs)

    # the summary line only: the examples run once, from the function's own docstring
    method.__name__, method.__doc__ = fn.__name__, (fn.__doc__ or "").split("\n\n")[0]
    return method


_install()
