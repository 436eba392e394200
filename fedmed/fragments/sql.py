"""Compile a request's node table into ONE DuckDB SQL query, with pandas semantics.

The pandas evaluator (``fedmed/server/evaluate.py``) computes each node as a
pandas object; this compiler writes each node as SQL over the fragment's
rows instead, so that DuckDB can scan Parquet, CSV or a database table out
of core in a single pass:

- a *table* (the fragment, a filtered fragment, an elementwise result over a
  table) is a set of columns over a subset of rows;
- a *column* is one SQL expression over the base rows, plus the subset of rows
  it has (pandas' index): ``Rows`` is a boolean SQL condition and the
  ``lineage`` of filter conditions ANDed into it, so that the compiler can
  tell when one subset contains another (pandas' alignment by row label);
- a *constant* is a Python value (a ``literal`` node).

Every elementwise node is written once, as a named column of a chain of CTEs
(``t0`` reads the source, ``t1, t2, ...`` add the columns whose inputs exist
in the layer below), so a shared subexpression is computed once per row.
Every aggregate is one or a few aggregate expressions of the final ``SELECT``
over ``CASE WHEN <rows> THEN <value> END``; all outputs of a request share that
``SELECT`` and therefore one scan. Missing values are SQL NULLs everywhere:
NaN read from the source or produced by arithmetic (``0 / 0``) is turned into
NULL as pandas treats NaN as missing, while infinities stay values.

What a privacy policy asks about a result (``fedmed/server/disclosure.py``:
persons contributing and left out, what each intermediate value singles out,
who holds an extreme, largest contributions) is computed by further
aggregates: counts in the same ``SELECT``, and what needs another aggregate
first (a mode, a median, sums per person) in one second statement over the
same CTEs, only when a policy needs it; see ``SQLDisclosure``.

A node the compiler cannot express raises ``TaskFailed`` naming it; the
output becomes a ``Failure`` and nothing is ever loaded into memory instead.

Text never grows without bound. Repeating operations on text (``+``,
``*``, ``%``, ``//`` and ``**``: ``fedmed.server.evaluate._REPEATING``) are
refused when compiled, as the pandas engine refuses them, and with its
message ("add is not defined for text values"): on a text column or
constant, and on a table with a text column. So ``x = x + x`` cannot double
a text 18 times, and ``||`` is never written; nor is any function that
lengthens text (``repeat``, ``lpad``, ``concat``...). What still makes text
is bounded: ``astype("str")`` of a number or a boolean gives a few dozen
characters at most, and ``fillna`` fills with a text constant of at most
``MAX_FILL_TEXT`` characters, refusing a longer one (DuckDB shares the
constant between rows, but hashes and compares each row's copy). What a
query still costs (a histogram of many distinct values, a grouping by
person) runs under the server's memory budget (``fedmed.fragments.duckdb``).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..config import Config
from ..errors import OperationError, ServerError, TaskFailed
from ..expr.node import Node, walk
from ..expr.rowwise import Column, Elementwise, Filter, Fragment as FragmentNode, Literal, Map
from ..ops import binary, private
from ..ops.columns import COLUMNS
from ..server.disclosure import (_CELLS_AND_EXTREMES, _POSITIONAL, _SIDE_BY_SIDE, MAX_INFLUENCE, Finding, _judged_by_cells,
                                 _under_masks)
from ..server.evaluate import (_REPEATING, MAX_FILL_TEXT, NEEDS_NUMBERS, ORDERING, Failure, _bounded, needed_nodes,
                               text_message)

# -- kinds of values -----------------------------------------------------------------------

INT, FLOAT, BOOL, STR, OTHER = "int", "float", "bool", "str", "other"
NUMERIC = {INT, FLOAT, BOOL}
#: Kinds of constants that are not column kinds.
NULL, LIST = "null", "list"

#: Prefix of the messages the query itself raises with ``error(...)``; only those reach the client.
MARKER = "fedmed: "

#: Most thresholds of one ``count_below`` (and bins of one histogram): the pandas path's ``MAX_BINS``.
MAX_THRESHOLDS = private.MAX_BINS
#: Most columns of one ``comoment_matrix`` or ``glm_step`` (the answer grows with their square).
MAX_COLUMNS = 200
#: Largest constant (characters of text, elements of a list) made from constants in a request.
MAX_CONSTANT = 100_000

FLOAT_NAN = "CAST(NULL AS DOUBLE)"
FLOAT_INF = "CAST('inf' AS DOUBLE)"
FLOAT_NINF = "CAST('-inf' AS DOUBLE)"
FLOAT_ONE = "CAST(1 AS DOUBLE)"
FLOAT_ZERO = "CAST(0 AS DOUBLE)"
FLOAT_HALF = "CAST(0.5 AS DOUBLE)"
NAN_LITERAL = "CAST('nan' AS DOUBLE)"


def quote_identifier(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


def quote_string(text: str) -> str:
    if "\x00" in text:
        raise TaskFailed("text values may not contain NUL characters")
    return "'" + text.replace("'", "''") + "'"


def float_literal(value: float) -> str:
    if math.isnan(value):
        return FLOAT_NAN  # pandas: NaN is missing
    return f"CAST('{float(value)!r}' AS DOUBLE)"  # parsed from text: exact, never a DECIMAL


def literal(value: Any) -> str:
    """A Python constant as SQL (NaN as NULL: pandas treats it as missing)."""
    if value is None:
        return "NULL"
    if isinstance(value, (bool, np.bool_)):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, np.integer)):
        value = int(value)
        if not -(2**63) <= value < 2**63:
            raise TaskFailed("integer constants must fit in 64 bits")
        return f"CAST({value} AS BIGINT)"
    if isinstance(value, (float, np.floating)):
        return float_literal(float(value))
    if isinstance(value, str):
        return quote_string(value)
    raise TaskFailed(f"a constant of type {type(value).__name__} is not supported by this fragment")


def constant_kind(value: Any) -> str:
    if value is None:
        return NULL
    if isinstance(value, (bool, np.bool_)):
        return BOOL
    if isinstance(value, (int, np.integer)):
        return INT
    if isinstance(value, (float, np.floating)):
        return FLOAT
    if isinstance(value, str):
        return STR
    if isinstance(value, (list, tuple)):
        return LIST
    return OTHER


def kind_of_type(sql_type: str) -> str:
    """The kind of a DuckDB column type (as ``DESCRIBE`` writes it)."""
    t = sql_type.upper()
    if t == "BOOLEAN":
        return BOOL
    if t in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
             "UBIGINT", "UHUGEINT"):
        return INT
    if t in ("FLOAT", "REAL", "DOUBLE", "NULL", '"NULL"') or t.startswith("DECIMAL"):
        return FLOAT  # a column of nothing but missing values (type NULL) behaves as missing floats
    if t == "VARCHAR" or t.startswith("ENUM"):
        return STR
    return OTHER


def read_expression(name: str, sql_type: str) -> str:
    """How layer ``t0`` reads a source column: NaN as NULL, small integers widened, categories as text."""
    column = quote_identifier(name)
    t = sql_type.upper()
    kind = kind_of_type(sql_type)
    if kind == FLOAT:
        return f"nullif(CAST({column} AS DOUBLE), {NAN_LITERAL})"
    if kind == INT and t not in ("HUGEINT", "UBIGINT", "UHUGEINT"):
        return f"CAST({column} AS BIGINT)"
    if t.startswith("ENUM"):
        return f"CAST({column} AS VARCHAR)"
    return column


@dataclass(frozen=True)
class SourceColumn:
    """A column of the fragment's source: its name, DuckDB type, alias in ``t0`` and kind."""

    name: str
    type: str
    alias: str

    @property
    def kind(self) -> str:
        return kind_of_type(self.type)

    @property
    def untyped(self) -> bool:
        return self.type.upper().strip('"') == "NULL"

    @property
    def expression(self) -> str:
        return read_expression(self.name, self.type)


# -- values of nodes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """A subset of the fragment's rows: ``cond`` holds for them; ``lineage`` names the filters behind it.

    A subset whose lineage is contained in another's lineage contains that
    subset's rows: this is how the compiler follows pandas' row labels.
    """

    cond: str
    level: int = 0
    lineage: frozenset = frozenset()

    def contains(self, other: "Rows") -> bool:
        return self.lineage <= other.lineage


ALL = Rows("TRUE")


@dataclass(frozen=True)
class Col:
    """A column: ``sql`` (valid from CTE layer ``level`` on) over the rows ``rows``.

    ``nullable`` marks pandas' extension dtypes (``Int64``, ``boolean``,
    ``string``, made by ``astype``): comparisons keep their missing values missing.
    """

    sql: str
    level: int
    rows: Rows
    kind: str
    nullable: bool = False
    untyped: bool = False  # a source column of type NULL (nothing but missing values)
    name: str | None = None  # the source column's name (a filter keeps it), for messages that name it

    @property
    def depth(self) -> int:
        """The layer from which both the value and its rows condition exist."""
        return max(self.level, self.rows.level)


@dataclass(frozen=True)
class Table:
    """Named columns over one subset of rows."""

    columns: Mapping[str, Col]
    rows: Rows

    def with_rows(self, rows: Rows) -> "Table":
        return Table({n: replace(c, rows=rows) for n, c in self.columns.items()}, rows)


@dataclass(frozen=True)
class Const:
    """A constant (a ``literal`` node, or elementwise work on constants only)."""

    value: Any

    @property
    def kind(self) -> str:
        return constant_kind(self.value)


Value = Any  # Col | Table | Const | Failure


def _and(*parts: str) -> str:
    kept = [p for p in dict.fromkeys(parts) if p != "TRUE"]
    if "FALSE" in kept:
        return "FALSE"
    if not kept:
        return "TRUE"
    return kept[0] if len(kept) == 1 else "(" + " AND ".join(kept) + ")"


def _or(*parts: str) -> str:
    kept = [p for p in dict.fromkeys(parts) if p != "FALSE"]
    if "TRUE" in kept:
        return "TRUE"
    if not kept:
        return "FALSE"
    return kept[0] if len(kept) == 1 else "(" + " OR ".join(kept) + ")"


def _not(part: str) -> str:
    return {"TRUE": "FALSE", "FALSE": "TRUE"}.get(part, f"(NOT {part})")


# Aggregates see only their rows through CASE, not FILTER: DuckDB applies each FILTER clause to the
# whole input (every column), which makes a request of many filtered outputs quadratic.


def _when(cond: str, expr: str) -> str:
    """``expr`` on the rows where ``cond`` holds, NULL (skipped by every aggregate) elsewhere."""
    return expr if cond == "TRUE" else f"(CASE WHEN {cond} THEN {expr} END)"


def _count_rows(cond: str) -> str:
    return "count(*)" if cond == "TRUE" else f"count(CASE WHEN {cond} THEN 1 END)"


def _fsum(expr: str) -> str:
    """An accurate (Kahan) sum of doubles; the plain sum where that is not finite (DuckDB 1.1's
    ``fsum`` turns an infinite term into NaN; numpy gives the infinity)."""
    return f"(CASE WHEN isfinite(sum({expr})) THEN fsum({expr}) ELSE sum({expr}) END)"


def _favg(expr: str) -> str:
    return f"(CASE WHEN isfinite(avg({expr})) THEN favg({expr}) ELSE avg({expr}) END)"


def _nan_null(expr: str) -> str:
    return f"nullif({expr}, {NAN_LITERAL})"


#: Most steps whose influence is counted by person in the second statement (``Compiler._distinct``).
FEW_STEPS = 8

#: Integers that an influence move (``v +- 10 * (|v| + 1)``) takes nowhere near 64 bits' overflow.
SMALL = 838_000_000_000_000_000


def _wrapped(huge: str) -> str:
    """A HUGEINT ``huge`` as numpy's int64 arithmetic has it: wrapped around into 64 bits (NULL where it is
    beyond even a HUGEINT: a source column of 128 bits, which pandas cannot hold anyway)."""
    return _try(f"CAST((({huge} + {2**63}) % {2**64} + {2**64}) % {2**64} - {2**63} AS BIGINT)")


def _positive_zero(expr: str) -> str:
    """A float without -0.0 (``fedmed.server.evaluate._positive_zero``): ``-0.0 + 0.0`` is ``+0.0`` in IEEE
    arithmetic, every other value (and NULL) is unchanged. -0.0 equals 0.0 to every comparison and count,
    yet ``1 / -0.0`` is ``-inf``: one row's sign would carry past every rule that looks at values.
    (DuckDB keeps ``x + 0.0`` as written: its optimizer does not drop the addition, see the tests.)"""
    return f"({expr} + {FLOAT_ZERO})"


def _try(expr: str) -> str:
    """``expr``, NULL on the rows where DuckDB raises (an integer overflow, where numpy wraps around):
    whether a query fails must not depend on the rows (see ``fedmed.ops.binary``). TRY costs about
    a nanosecond per row and wrapped operation (DuckDB 2.0), so only integer arithmetic that can
    overflow is wrapped."""
    return f"TRY({expr})"


#: Where a subquery reads the last CTE layer, whose name is known only when the query is written.
LAST_LAYER = "<<last layer>>"

#: A column name the compiler made (``s3``, ``n12``...); found in expressions to know which
#: columns a layer must pass on (a name inside a text literal only keeps a column a little longer).
ALIAS = re.compile(r"\b[a-z][0-9]+\b")


# -- the query under construction -------------------------------------------------------------


class Query:
    """CTE layers of named columns and the aggregate expressions of the final ``SELECT``."""

    def __init__(self, source: str, columns: Sequence[SourceColumn], ordinal: str | None = None) -> None:
        self.source = source
        self.columns = list(columns)
        self.ordinal = ordinal  # the rows' order in the source, as column ``o0`` of ``t0`` (None: not known)
        self.layers: list[list[tuple[str, str]]] = [[]]
        self._named: dict[str, tuple[str, int]] = {}
        self.selects: list[str] = []
        self._selected: dict[str, int] = {}

    def name(self, expr: str, level: int, prefix: str = "n") -> tuple[str, int]:
        """``expr`` (reading columns of layers up to ``level``) as a named column of layer ``level + 1``."""
        if expr in ("TRUE", "FALSE", "NULL"):
            return expr, 0
        known = self._named.get(expr)
        if known is not None:
            return known
        alias = f"{prefix}{sum(len(layer) for layer in self.layers)}"
        while len(self.layers) <= level + 1:
            self.layers.append([])
        self.layers[level + 1].append((alias, expr))
        self._named[expr] = (alias, level + 1)
        return alias, level + 1

    def select(self, expr: str) -> int:
        """Index of the aggregate ``expr`` in the result row (equal expressions are computed once)."""
        if expr not in self._selected:
            self._selected[expr] = len(self.selects)
            self.selects.append(expr)
        return self._selected[expr]

    def sql(self) -> str:
        """The query. Each layer passes on only the columns used further up, so that a deep
        expression costs DuckDB linear work (``SELECT *`` at every layer would be quadratic)."""
        ctes, last = self._layers(self.selects)
        # a GROUP BY subquery (``Compiler._agg_grouped``) reads the last layer too: named once it is known
        selects = [expr.replace(LAST_LAYER, last) for expr in self.selects]
        return f"WITH {', '.join(ctes)}\nSELECT {', '.join(selects)} FROM {last}"

    def followup(self, columns: Sequence[tuple[str, str]], ctes: Sequence[str], selects: Sequence[str]) -> str:
        """A second statement over the same layers: ``_b`` holds each ``(expression, name)`` of
        ``columns`` per row; ``ctes`` (over ``_b``) and ``selects`` (scalar subqueries) read it.

        ``_b`` is left to DuckDB to inline: each pass that reads it scans the source again,
        streaming, instead of holding every row's columns in memory (measured about as fast)."""
        layers, last = self._layers([expr for expr, _ in columns])
        layers.append(f"_b AS (SELECT {', '.join(f'{expr} AS {name}' for expr, name in columns)} FROM {last})")
        return f"WITH {', '.join([*layers, *ctes])}\nSELECT {', '.join(selects)}"

    def _layers(self, uses: Sequence[str]) -> tuple[list[str], str]:
        """The CTEs of the layers, each passing on what is used above it (by ``uses`` in the end), and the last one."""
        final = len(self.layers)
        # only the columns ``uses`` reads, directly or through others: a statement does not carry what
        # only another statement reads (the disclosure's recomputed steps, most of all)
        needed = {alias for expr in uses for alias in ALIAS.findall(expr)}
        layers = [[]] * len(self.layers)
        for level in range(final - 1, 0, -1):
            layers[level] = [(alias, expr) for alias, expr in self.layers[level] if alias in needed]
            needed.update(a for _, expr in layers[level] for a in ALIAS.findall(expr))
        last_use: dict[str, int] = {}
        for level, layer in enumerate(layers):
            for _, expr in layer:
                for alias in ALIAS.findall(expr):
                    last_use[alias] = level
        for expr in uses:
            for alias in ALIAS.findall(expr):
                last_use[alias] = final
        defined = [(c.alias, 0) for c in self.columns] + ([("o0", 0)] if self.ordinal else [])
        read = ", ".join([*(f"{c.expression} AS {c.alias}" for c in self.columns),
                          *([f"{self.ordinal} AS o0"] if self.ordinal and "o0" in last_use else [])]) or "1 AS _row"
        ctes = [f"t0 AS (SELECT {read} FROM {self.source})"]
        previous = "t0"
        for level, layer in enumerate(layers[1:], 1):
            if not layer:
                continue
            kept = [alias for alias, at in defined if last_use.get(alias, -1) > level]
            columns = kept + [f"{expr} AS {alias}" for alias, expr in layer]
            ctes.append(f"t{level} AS (SELECT {', '.join(columns)} FROM {previous})")
            defined = [(alias, at) for alias, at in defined if last_use.get(alias, -1) > level]
            defined += [(alias, level) for alias, _ in layer]
            previous = f"t{level}"
        return ctes, previous


# -- elementwise operations ----------------------------------------------------------------------

#: The white space pandas' number parser skips around a number (C's ``isspace``).
SPACES = " \t\n\v\f\r"
#: What ``pd.to_numeric`` reads as a number (RE2): a decimal with optional exponent, white space around it,
#: or infinity (no white space: pandas reads " inf" as missing). "nan" is missing either way.
PANDAS_NUMBER = (r"[ \t\n\v\f\r]*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?[ \t\n\v\f\r]*"
                 r"|[+-]?(?i:inf|infinity)")

#: The built-in elementwise functions this compiler writes in SQL, by identity of the
#: function the server's config names (a custom function under a built-in name is refused).
ELEMENTWISE: dict[Any, str] = {
    binary.add: "add", binary.sub: "sub", binary.mul: "mul", binary.truediv: "truediv",
    binary.floordiv: "floordiv", binary.mod: "mod", binary.pow: "pow", binary.neg: "neg",
    binary.abs: "abs", binary.eq: "eq", binary.ne: "ne", binary.lt: "lt", binary.le: "le",
    binary.gt: "gt", binary.ge: "ge", binary.and_: "and", binary.or_: "or", binary.invert: "invert",
    binary.isna: "isna", binary.notna: "notna", binary.fillna: "fillna", binary.isin: "isin",
    binary.clip: "clip", binary.log: "log", binary.exp: "exp", binary.sqrt: "sqrt",
    binary.round: "round", binary.astype: "astype", binary.to_numeric: "to_numeric", binary.dummy: "dummy",
}

#: Number of operands each operation takes (min, max).
ARITY = {
    **{op: (2, 2) for op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "eq", "ne", "lt", "le",
                             "gt", "ge", "and", "or", "fillna", "isin", "astype", "dummy")},
    **{op: (1, 1) for op in ("neg", "abs", "invert", "isna", "notna", "log", "exp", "sqrt", "to_numeric")},
    "clip": (1, 3), "round": (1, 2),
}

SYMBOL = {"add": "+", "sub": "-", "mul": "*", "eq": "=", "ne": "<>", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
PYTHON_SYMBOL = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
COMPARISONS = {"eq", "ne", "lt", "le", "gt", "ge"}
#: Operations compiled by one method per family (``_compare``, ``_arithmetic``, ``_logical``).
FAMILIES = {**{op: "compare" for op in COMPARISONS}, **{op: "arithmetic" for op in ("add", "sub", "mul")},
            "and": "logical", "or": "logical"}

#: The built-in aggregates this compiler writes in SQL, by identity of their map function.
AGGREGATES: dict[Any, str] = {
    private.len: "len", private.count: "count", private.sum: "sum", private.sqsum: "sqsum",
    private.min: "min", private.max: "max", private.set: "set", private.value_counts: "value_counts",
    private.histogram: "histogram", private.crosstab: "crosstab", private.moments: "moments",
    private.comoments: "comoments", private.comoment_matrix: "comoment_matrix",
    private.count_below: "count_below", private.glm_step: "glm_step", private.grouped: "grouped", private.schema: "schema",
}


#: Arguments after the value that each aggregate takes (min, max).
EXTRA_ARGUMENTS = {"histogram": (1, 2), "count_below": (1, 1), "crosstab": (1, 1), "comoments": (1, 1),
                   "grouped": (2, 64),
                   "comoment_matrix": (0, 10_000), "glm_step": (3, 10_000)}


@dataclass(frozen=True)
class Operand:
    """One operand of an elementwise operation, aligned to the result's rows."""

    sql: str
    kind: str
    nullable: bool = False
    const: Any = None
    is_const: bool = False

    @property
    def double(self) -> str:
        return self.sql if self.kind == FLOAT else f"CAST({self.sql} AS DOUBLE)"

    @property
    def bigint(self) -> str:
        return f"CAST({self.sql} AS BIGINT)" if self.kind == BOOL else self.sql


def _refuse_repeating(op: str, args: Sequence[Value]) -> None:
    """``fedmed.server.evaluate._bounded`` on kinds: a repeating operation on text is refused, whatever else
    the operands are. A column of nothing but missing values counts as text: pandas holds it as objects."""
    if op not in _REPEATING:
        return
    for a in args:
        cols = a.columns.values() if isinstance(a, Table) else [a] if isinstance(a, Col) else []
        if (isinstance(a, Const) and a.kind == STR) or any(c.kind == STR or c.untyped for c in cols):
            raise TaskFailed(f"{op} is not defined for text values")


def _refuse_text(op: str, args: Sequence[Value], numbers: bool = False) -> None:
    """``fedmed.server.evaluate.refuse_text`` on kinds: a text column where ``op`` needs numbers is refused with
    the pandas engine's message (without the count of values that are not numbers, which a query would read)."""
    cols = [(n, c) for a in args for n, c in
            (a.columns.items() if isinstance(a, Table) else [(a.name, a)] if isinstance(a, Col) else [])]
    texts = [n for n, c in cols if c.kind == STR]
    if not texts:
        return
    against_number = any(c.kind in NUMERIC for _, c in cols) or any(
        isinstance(a, Const) and a.kind in NUMERIC for a in args)
    if numbers or op in NEEDS_NUMBERS or (op in ORDERING and against_number):
        raise TaskFailed(text_message(op, texts[0], "VARCHAR"))


def _describe_kind(kind: str) -> str:
    return {INT: "int", FLOAT: "float", BOOL: "bool", STR: "str", NULL: "NoneType", LIST: "list"}.get(kind, kind)


# -- what a policy learns about a result --------------------------------------------------------


class ValueCounts:
    """Stands for a map's input where a policy asks only for its counts per value (``set``/``unique``)."""

    def __init__(self, counts: Mapping[Any, int]) -> None:
        self._counts = dict(counts)

    def value_counts(self) -> dict[Any, int]:
        return dict(self._counts)


class Contributions:
    """The largest absolute contributions of the persons (or rows) used, largest first, and totals over all.

    Answers what the dominance rule does with ``Disclosure.contributions()``:
    ``terms[:n].sum()``, ``terms.sum()`` and ``terms ** 2``.
    """

    def __init__(self, top: Sequence[float], total: float, squares: float | None, count: int) -> None:
        self.top = np.asarray(sorted((float(v) for v in top), reverse=True), dtype=float)
        self.total = float(total)
        self.squares = squares
        self.count = int(count)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key: Any) -> Any:
        stop = key.stop if isinstance(key, slice) else (key + 1 if isinstance(key, int) and key >= 0 else None)
        if (stop is None or stop > len(self.top)) and self.count > len(self.top):
            raise TaskFailed(f"this fragment reports only the {len(self.top)} largest contributions")
        return self.top[key]

    def sum(self) -> float:
        return self.total

    def __pow__(self, power: Any) -> "Contributions":
        if power != 2 or self.squares is None:
            raise TaskFailed("this fragment reports contributions and their squares only")
        return Contributions(self.top**2, self.squares, None, self.count)

    def __repr__(self) -> str:
        return f"Contributions(top={self.top.tolist()}, total={self.total!r}, count={self.count})"


@dataclass(frozen=True)
class Needs:
    """What the server's privacy policies will ask of each result's disclosure (``disclosure_needs``).

    ``judge``: the singling-out analysis (``singled_out``), for any ``k`` up
    to ``k``; ``contributions``: the largest ``top`` contributions behind
    sums (Dominance). The counts (``contributing``, ``complement``,
    ``holders``) come with either.
    """

    judge: bool = True
    contributions: bool = True
    k: int = 5
    top: int = 10


@dataclass(frozen=True)
class Judged:
    """What one intermediate value does within one scope, in persons (or rows): read from the query."""

    nulled: int  # missing although the raw values below it are present
    present: int  # with a value (0: nothing to judge)
    distinct: int  # distinct values (3: three or more)
    minority: int  # with another value than the mode (see ``Compiler._classes``)
    spread: tuple[int, float, list[float]] | None = None  # numbers: (holders, total, largest) of |x - median|

    def selects(self, k: int, share: float, unit: str) -> str | None:
        """``Disclosure._selects`` on these numbers: what the value does to single out 1 to k-1, or None."""
        if 0 < self.nulled < k:
            return f"is missing on fewer than {k} {unit} whose values are present"
        if self.nulled and 0 < self.present < k:
            return f"is present on fewer than {k} {unit} only"
        if self.present == 0:
            return None
        if self.distinct > 1 and 0 < self.minority < k:
            return f"takes one value on all but fewer than {k} {unit}"
        if self.spread is not None and self.distinct > 2:
            holders, total, largest = self.spread
            if total > 0 and holders >= k and float(sum(largest[: k - 1])) > share * total:
                return f"puts almost all of its spread on fewer than {k} {unit}"
        return None


class SQLDisclosure:
    """What a map result discloses, answered from aggregates of the request's SQL statements.

    The methods and decisions of ``fedmed.server.disclosure.Disclosure``
    (same findings, same counts), from numbers the query computed: no row is
    loaded into Python. ``inputs`` exists only for ``set``/``unique``
    (counts per value); ``used`` (a row mask) not at all; ``singled_out``
    decides for any ``k`` up to the one it was compiled for, and ``holders``
    knows only the extreme the query found.
    """

    def __init__(self, op: str, rows: int, *, person: str | None = None, facts: Mapping[str, Any] | None = None,
                 value_counts: Mapping[Any, int] | None = None, unavailable: str | None = None) -> None:
        self.op = op
        self.persons = person
        self._rows = int(rows)
        self._facts = facts
        self._value_counts = value_counts
        self._unavailable = unavailable

    @property
    def unit(self) -> str:
        """What the rules count: ``"persons"`` or ``"rows"``."""
        return "rows" if self.persons is None else "persons"

    @property
    def rows(self) -> int:
        """Persons (or rows) of the whole fragment."""
        return self._rows

    def _fact(self, name: str) -> Any:
        if self._facts is None:
            raise TaskFailed(self._unavailable or f"this fragment cannot report the {self.unit} behind {self.op}")
        fact = self._facts.get(name)
        if fact is None:
            raise TaskFailed(f"this fragment did not compute what a privacy policy asks about {self.op} ({name})")
        return fact

    def contributing(self, additive: bool = False, present: bool = True) -> int:
        """Persons behind the result: the smallest positive count over its columns (0 if none).

        With ``additive`` (sums) a zero term contributes nothing; with
        ``present=False`` (``len``) missing values count too.
        """
        positive = [c for c in self._fact("contributing")[bool(additive), bool(present)] if c > 0]
        return min(positive) if positive else 0

    def complement(self) -> int:
        """Persons with raw values present that the task's filters leave out."""
        return int(self._fact("complement"))

    def holders(self, value: Any, column: str | None = None) -> int:
        """Persons, among the rows used, whose input (``column`` of a table) equals ``value``: the extreme.

        The query counts the holders of the extreme of the rows used (up to
        the largest ``k`` it was compiled for: more are reported as that
        many); a value beyond it (the map's rows may be more than the rows
        used) has none. Any other value is refused rather than counted.
        """
        held = self._fact("holders").get(column)
        if held is None:
            return 0
        op, extreme, count = held
        if extreme is None:
            return 0
        if value == extreme:
            return count
        try:
            beyond = bool(value > extreme if op == "max" else value < extreme)
        except TypeError:
            beyond = False
        if beyond:
            return 0
        raise TaskFailed(f"this fragment counts the holders of the {self.op} it computed, not of another value")

    def contributions(self) -> Contributions:
        """Absolute contributions of each person (or row) used, largest first (the top ones and the totals)."""
        return self._fact("contributions")

    def singled_out(self, k: int, concentration: float = 0.9) -> Finding | None:
        """The first step of the task that singles out 1 to ``k - 1`` persons, or None (see ``Disclosure``).

        A count table counted by person is refused here: the cell rules
        (``fedmed.privacy.cells``) size cells in persons from row-level keys,
        which this fragment does not load, and sizing them in rows would
        release cells of fewer than ``k`` persons.
        """
        if self.persons is not None and self._facts is not None and self._facts.get("cells"):
            raise TaskFailed(f"this fragment cannot size the cells of {self.op} in persons: count tables are refused "
                             "where a person column is declared")
        unit, bound = self.unit, self._fact("k")
        if k > bound:  # the order statistics behind the checks were taken for k up to ``bound``
            raise TaskFailed(f"this fragment judges what singles out fewer than {bound} {unit}, not {k}")
        for node, kind, *facts in self._fact("checks"):
            what = None
            if kind == "list":
                what = "combines a list constant row by row (or column by column): positions must not be addressable"
            elif kind == "filter":
                kept, out = facts
                if 0 < out < k or 0 < kept < k:
                    what = f"is a row filter that keeps or drops fewer than {k} {unit}"
            elif kind == "derived":
                what = facts[0].selects(k, concentration, unit)
            elif kind == "ratio":  # two inputs released side by side, proportional but on a few
                ratio: Judged = facts[0]
                if ratio.distinct > 1 and 0 < ratio.minority < k:
                    what = f"differs from a multiple of another input on fewer than {k} {unit}"
            elif kind == "weights":
                what = facts[0].selects(k, concentration, unit)
                what = what and f"(its row weights at this beta) {what}"
            elif kind == "steps":
                what = f"has more than {facts[0]} row-wise steps, too many to judge; simplify it"
            elif kind == "unjudged":  # a move the task cannot be compiled with: fail closed
                what = "cannot be judged: changing its values makes the task fail"
            elif kind == "influence" and 0 < facts[0] < k:  # the rows through which the value reaches the result
                what = f"reaches the result through fewer than {k} {unit} only"
            if what:
                return Finding(node, what)
        return None

    @property
    def inputs(self) -> list[Any]:
        if self._value_counts is not None:
            return [ValueCounts(self._value_counts)]
        raise TaskFailed(
            f"this fragment cannot hand the row values behind {self.op} to a privacy policy "
            "(out-of-core data is never loaded; a policy that clips or inspects values, such as Noise on sums, "
            "needs an in-memory fragment)"
        )

    @property
    def used(self) -> Any:
        raise TaskFailed("this fragment cannot hand out row-level masks to a privacy policy")


# -- the compiler ---------------------------------------------------------------------------------


@dataclass
class Output:
    """How to read one map output (and its disclosure) from the result row."""

    read: Callable[[tuple], Any]
    disclosure: Callable[[tuple, Any], Any] | None = None  # (first row, second row or None)


@dataclass
class Program:
    """One query for a request's outputs: ``sql`` (None when no output needs one) and how to read each output.

    ``followup`` is the second statement the disclosure needs (None when it needs none); ``extra`` its row.
    """

    sql: str | None
    outputs: dict[int, "Output | Failure"] = field(default_factory=dict)
    followup: str | None = None

    def read(self, position: int, row: tuple | None, extra: tuple | None = None) -> tuple[Any, Any]:
        output = self.outputs[position]
        if isinstance(output, Failure):
            return output, None
        assert row is not None
        value = output.read(row)
        return value, output.disclosure(row, extra) if output.disclosure is not None else None


class Compiler:
    """Compiles the outputs of one request over one fragment into a ``Program``.

    ``needs`` says what the privacy policies ask of each result's
    disclosure (None: nothing, and no disclosure is compiled); ``person``
    names the column whose distinct values are the persons counted;
    ``ordinal`` is an SQL expression over the source giving the rows' order
    (the pandas engine's "first" among tied modes), or None.
    """

    def __init__(self, source: str, columns: Sequence[SourceColumn], config: Config, *,
                 needs: Needs | None = None, person: str | None = None, ordinal: str | None = None) -> None:
        self.query = Query(source, columns, ordinal)
        self.config = config
        self.needs = needs
        self.person = person
        key = next((c.alias for c in columns if c.name == person), None)
        if person is not None and key is None:
            raise TaskFailed(f"this fragment has no column {person!r} to count persons by")
        self.later = _Followup(key)
        self._key = key  # the person column in ``t0`` (None: rows are counted)
        self.fragment = Table({c.name: Col(c.alias, 0, ALL, c.kind, untyped=c.untyped, name=c.name) for c in columns},
                              ALL)
        self.rows_index = self.query.select("count(*)")
        self._never_null: set[str] = set()  # boolean columns that are never NULL: usable as a filter as they are
        self._unsigned: set[str] = set()  # float columns that are never -0.0 (every elementwise result)

    # -- driver ----------------------------------------------------------------------------------
    def compile(self, nodes: Sequence[Node], outputs: Sequence[int]) -> Program:
        position = {id(node): i for i, node in enumerate(nodes)}
        needed = needed_nodes(nodes, outputs, position)
        values: dict[int, Value] = {}
        program = Program(None)
        for i in sorted(needed):
            node = nodes[i]
            args = [values[position[id(child)]] for child in node.children]
            failed = next((a for a in args if isinstance(a, Failure)), None)
            if failed is not None:
                values[i] = failed
                continue
            try:
                values[i] = self._visit(node, args)
            except ServerError as exc:
                values[i] = Failure(exc)
            except Exception as exc:  # a bug or an unexpected value: typed and data-free
                values[i] = Failure(TaskFailed(f"{node.kind} {getattr(node, 'op', '')} cannot be compiled to SQL: "
                                               f"{type(exc).__name__}"))
        by_node = {id(nodes[i]): v for i, v in values.items()}
        for o in dict.fromkeys(outputs):
            value = values[o]
            if isinstance(value, Failure):
                program.outputs[o] = value
                continue
            output: Output = value
            if self.needs is not None:
                try:
                    output.disclosure = self._disclose(nodes[o], by_node)  # type: ignore[arg-type]
                except Exception as exc:  # the policies will refuse the result, saying why
                    reason = exc.message if isinstance(exc, ServerError) else \
                        "this fragment cannot report the rows behind this result"
                    output.disclosure = _unavailable(nodes[o].op, self.rows_index, reason, self.person)  # type: ignore[attr-defined]
            program.outputs[o] = output
        if any(not isinstance(v, Failure) for v in program.outputs.values()):
            program.sql = self.query.sql()
            program.followup = self.later.statement(self.query)
        return program

    def _visit(self, node: Node, args: list[Value]) -> Value:
        if any(isinstance(a, Output) for a in args):
            raise TaskFailed("an aggregate used inside another expression is not supported by this fragment")
        if isinstance(node, FragmentNode):
            return self.fragment
        if isinstance(node, Column):
            (table,) = args
            if isinstance(table, Table):
                if node.name in table.columns:
                    return table.columns[node.name]
                raise TaskFailed(f"no column {node.name!r}")
            raise TaskFailed(f"cannot select column {node.name!r}: the value has no columns")
        if isinstance(node, Literal):
            return Const(node.value)
        if isinstance(node, Elementwise):
            fn = self.config.elementwise[node.op]
            op = ELEMENTWISE.get(fn)
            if op is None:
                raise TaskFailed(f"this fragment cannot run the elementwise operation {node.op!r} in SQL "
                                 f"(the server's config maps it to {_name(fn)})")
            return self._elementwise(op, fn, args)
        if isinstance(node, Filter):
            return self._filter(*args)
        if isinstance(node, Map):
            fn = self.config.aggregates[node.op].map
            op = AGGREGATES.get(fn)
            if op is None:
                raise TaskFailed(f"this fragment cannot compute the aggregate {node.op!r} in SQL "
                                 f"(the server's config maps it to {_name(fn)})")
            return self._map(op, node.op, args)
        raise TaskFailed(f"this fragment cannot compile a {node.kind} node")

    # -- helpers -----------------------------------------------------------------------------------
    def _column(self, expr: str, level: int, rows: Rows, kind: str, nullable: bool = False,
                signed: bool = True) -> Col:
        """``expr`` as a named column; a float one without -0.0 (``signed=False``: it never is -0.0)."""
        if kind == FLOAT and signed:
            expr = _positive_zero(expr)
        alias, at = self.query.name(expr, level)
        if kind == FLOAT:
            self._unsigned.add(alias)
        return Col(alias, at, rows, kind, nullable)

    def _align(self, op: str, cols: Sequence[Col], mode: str) -> tuple[Rows, list[str]]:
        """The rows of a result over ``cols`` and each column's SQL on them (pandas' alignment by label).

        ``mode``: ``"same"`` (comparisons: pandas refuses unequal labels), ``"union"`` (arithmetic:
        missing where an operand has no row), ``"logical"`` (``&``, ``|``: false where it has none).
        """
        if not cols:
            return ALL, []
        first = cols[0].rows
        if all(c.rows.lineage == first.lineage for c in cols):
            return first, [c.sql for c in cols]
        if mode == "same":
            raise TaskFailed("Can only compare identically-labeled Series objects")
        widest = next((c.rows for c in cols if all(c.rows.contains(o.rows) for o in cols)), None)
        if widest is None:
            raise TaskFailed(f"{op}: the operands come from different row filters, which this fragment cannot align")
        fill = "FALSE" if mode == "logical" else "NULL"
        return widest, [
            c.sql if c.rows.lineage == widest.lineage else f"(CASE WHEN {c.rows.cond} THEN {c.sql} ELSE {fill} END)"
            for c in cols
        ]

    def _operands(self, op: str, args: Sequence[Value], mode: str = "union") -> tuple[Rows, list[Operand], int]:
        for a in args:
            if isinstance(a, Const) and a.kind == LIST:
                raise TaskFailed(f"{op}: a list used as a column (one value per row, by position) "
                                 "is not supported by this fragment")
            if isinstance(a, Const) and a.kind == OTHER:
                raise TaskFailed(f"{op}: constants of type {type(a.value).__name__} are not supported")
        cols = [a for a in args if isinstance(a, Col)]
        rows, sqls = self._align(op, cols, mode)
        aligned = iter(sqls)
        operands = [
            Operand(next(aligned), a.kind, a.nullable) if isinstance(a, Col)
            else Operand(literal(a.value), a.kind, False, a.value, True)
            for a in args
        ]
        level = max([c.depth for c in cols], default=0)
        return rows, operands, level

    # -- elementwise ---------------------------------------------------------------------------------
    def _elementwise(self, op: str, fn: Callable[..., Any], args: list[Value]) -> Value:
        _refuse_text(op, args)
        _refuse_repeating(op, args)
        low, high = ARITY[op]
        if not low <= len(args) <= high:
            raise TaskFailed(f"elementwise {op} takes {low}{'' if low == high else f' to {high}'} operands, "
                             f"not {len(args)}")
        if all(isinstance(a, Const) for a in args):
            return self._constant(op, fn, args)
        tables = [a for a in args if isinstance(a, Table)]
        if tables:
            if any(isinstance(a, Col) for a in args):
                raise TaskFailed(f"{op}: combining a table with a column (pandas aligns them by column name) "
                                 "is not supported by this fragment")
            names = list(tables[0].columns)
            if any(list(t.columns) != names or t.rows.lineage != tables[0].rows.lineage for t in tables):
                raise TaskFailed(f"{op}: the tables have different columns or rows")
            return Table(
                {n: self._elementwise(op, fn, [a.columns[n] if isinstance(a, Table) else a for a in args])
                 for n in names},
                tables[0].rows,
            )
        if not isinstance(args[0], Col) and op in ("isna", "notna", "fillna", "isin", "clip", "round", "astype",
                                                   "to_numeric", "dummy", "log", "exp", "sqrt"):
            raise TaskFailed(f"{op} needs a column as its first operand")
        family = FAMILIES.get(op)  # operations written by one method for the family
        return getattr(self, f"_{family}")(op, *args) if family else getattr(self, f"_op_{op}")(*args)

    def _constant(self, op: str, fn: Callable[..., Any], args: list[Value]) -> Const:
        """Work on constants only: computed by the configured function itself (numpy scalars, bounded)."""
        try:
            with np.errstate(all="ignore"):
                value = fn(*_bounded(op, [a.value for a in args]))
        except ServerError:
            raise
        except Exception as exc:
            raise TaskFailed(f"elementwise {op} failed: {type(exc).__name__}: {exc}"[:300]) from None
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, (np.ndarray, pd.Series, pd.DataFrame)):
            raise TaskFailed(f"elementwise {op} of constants gave an array, which this fragment does not support")
        if isinstance(value, (str, list, tuple)) and len(value) > MAX_CONSTANT:
            raise TaskFailed(f"elementwise {op} of constants gave a constant of more than {MAX_CONSTANT:,} elements")
        return Const(value)

    def _arithmetic(self, op: str, a: Value, b: Value) -> Col:
        rows, (x, y), level = self._operands(op, [a, b])
        kinds = {x.kind, y.kind}
        nullable = x.nullable or y.nullable
        if NULL in kinds:
            raise TaskFailed(f"unsupported operand type(s) for {op}: None")
        if OTHER in kinds:
            raise TaskFailed(f"{op} is not supported for values of this type by this fragment")
        if STR in kinds:  # add and mul: refused by ``_refuse_repeating`` already
            raise TaskFailed(f"unsupported operand type(s) for {op}: text")
        if kinds == {BOOL}:
            if op == "sub":
                raise TaskFailed("numpy boolean subtract, the `-` operator, is not supported")
            logic = "OR" if op == "add" else "AND"
            return self._column(f"({x.sql} {logic} {y.sql})", level, rows, BOOL, nullable)
        if FLOAT in kinds:
            return self._column(_nan_null(f"({x.double} {SYMBOL[op]} {y.double})"), level, rows, FLOAT, nullable)
        return self._column(_try(f"({x.bigint} {SYMBOL[op]} {y.bigint})"), level, rows, INT, nullable)

    def _numeric(self, op: str, operands: Sequence[Operand]) -> None:
        for x in operands:
            if x.kind == STR:
                raise TaskFailed(f"unsupported operand type(s) for {op}: text")
            if x.kind == NULL:
                raise TaskFailed(f"unsupported operand type(s) for {op}: None")
            if x.kind not in NUMERIC:
                raise TaskFailed(f"{op} is not supported for values of this type by this fragment")

    @staticmethod
    def _by_zero(a: str, b: str) -> str:
        """``a / b`` where ``b`` is zero, as IEEE floats: ±inf, or missing for ``0 / 0``."""
        return (f"(CASE WHEN {a} > 0 THEN (CASE WHEN signbit({b}) THEN {FLOAT_NINF} ELSE {FLOAT_INF} END) "
                f"WHEN {a} < 0 THEN (CASE WHEN signbit({b}) THEN {FLOAT_INF} ELSE {FLOAT_NINF} END) END)")

    def _op_truediv(self, a: Value, b: Value) -> Col:
        rows, (x, y), level = self._operands("truediv", [a, b])
        self._numeric("truediv", [x, y])
        num, den = x.double, y.double
        if y.is_const:
            expr = self._by_zero(num, den) if y.const == 0 else f"({num} / {den})"
        else:
            expr = f"(CASE WHEN {den} = 0 THEN {self._by_zero(num, den)} ELSE {num} / {den} END)"
        return self._column(_nan_null(expr), level, rows, FLOAT, x.nullable or y.nullable)

    def _op_floordiv(self, a: Value, b: Value) -> Col:
        rows, (x, y), level = self._operands("floordiv", [a, b])
        self._numeric("floordiv", [x, y])
        nullable = x.nullable or y.nullable
        if FLOAT not in (x.kind, y.kind):
            # Python's floor division of integers: truncate, then step down when the signs differ
            p, q = x.bigint, y.bigint
            floor = (f"(({p} // {q}) - (CASE WHEN ({p} % {q} <> 0) AND (({p} < 0) <> ({q} < 0)) "
                     "THEN 1 ELSE 0 END))")
            if not (y.is_const and y.const != -1):  # the smallest integer // -1 overflows
                floor = _try(floor)
            if y.is_const and y.const != 0:
                return self._column(floor, level, rows, INT, nullable)
            zero = _nan_null(self._by_zero(x.double, y.double))
            if y.is_const:  # +-inf or missing, never -0.0 (nor is an integer quotient)
                return self._column(zero, level, rows, FLOAT, nullable, signed=False)
            return self._column(f"(CASE WHEN {q} = 0 THEN {zero} ELSE {floor} END)", level, rows, FLOAT, nullable,
                                signed=False)
        # numpy's npy_divmod for floats, step by step
        p, q = x.double, y.double
        mod, at = self.query.name(f"(CASE WHEN {q} <> 0 THEN {p} % {q} END)", level)
        div, at = self.query.name(
            f"(CASE WHEN {q} <> 0 THEN (({p} - {mod}) / {q}) - "
            f"(CASE WHEN {mod} <> 0 AND (({q} < 0) <> ({mod} < 0)) THEN 1 ELSE 0 END) END)", at
        )
        floor = (f"(CASE WHEN {q} = 0 THEN {self._by_zero(p, q)} WHEN {div} IS NULL THEN {FLOAT_NAN} "
                 f"WHEN {div} <> 0 THEN (CASE WHEN {div} - floor({div}) > {FLOAT_HALF} THEN floor({div}) + 1 "
                 f"ELSE floor({div}) END) ELSE {FLOAT_ZERO} END)")
        return self._column(_nan_null(floor), at, rows, FLOAT, nullable)

    def _op_mod(self, a: Value, b: Value) -> Col:
        rows, (x, y), level = self._operands("mod", [a, b])
        self._numeric("mod", [x, y])
        nullable = x.nullable or y.nullable
        if FLOAT not in (x.kind, y.kind):
            p, q = x.bigint, y.bigint
            rem, at = self.query.name(f"(CASE WHEN {q} <> 0 THEN {p} % {q} END)", level)
            python = f"(CASE WHEN {rem} <> 0 AND (({rem} < 0) <> ({q} < 0)) THEN {rem} + {q} ELSE {rem} END)"
            if y.is_const and y.const != 0:
                return self._column(python, at, rows, INT, nullable)
            # pandas gives floats (NaN) once a divisor is 0: as floordiv, a column divisor gives floats
            return self._column(f"CAST({python} AS DOUBLE)", at, rows, FLOAT, nullable, signed=False)
        p, q = x.double, y.double
        mod, at = self.query.name(f"(CASE WHEN {q} <> 0 THEN {p} % {q} END)", level)
        python = f"(CASE WHEN {mod} <> 0 AND (({q} < 0) <> ({mod} < 0)) THEN {mod} + {q} ELSE {mod} END)"
        return self._column(_nan_null(python), at, rows, FLOAT, nullable)

    def _op_pow(self, a: Value, b: Value) -> Col:
        rows, (x, y), level = self._operands("pow", [a, b])
        self._numeric("pow", [x, y])
        nullable = x.nullable or y.nullable
        if FLOAT not in (x.kind, y.kind):
            # an integer to a negative integer power is missing (binary.pow), in nullable integers
            # whenever the exponents are a column: their values must not choose the result's type
            base, exponent = x.bigint, y.bigint
            power = f"TRY_CAST(pow({base}, {exponent}) AS BIGINT)"
            if y.is_const and y.const >= 0:
                return self._column(power, level, rows, INT, nullable)
            if y.is_const:
                return self._column("CAST(NULL AS BIGINT)", level, rows, INT, True)
            return self._column(f"(CASE WHEN {exponent} >= 0 THEN {power} END)", level, rows, INT, True)
        base, exponent = x.double, y.double
        # numpy: x ** 0 and 1 ** y are 1 even for missing x or y; 0 ** -y is inf, -0.0 ** -odd is -inf
        expr = (f"(CASE WHEN {exponent} = 0 THEN {FLOAT_ONE} WHEN {base} = 1 THEN {FLOAT_ONE} "
                f"WHEN {base} = 0 AND {exponent} < 0 THEN (CASE WHEN signbit({base}) AND isfinite({exponent}) AND "
                f"{exponent} = trunc({exponent}) AND {exponent} % 2 <> 0 THEN {FLOAT_NINF} ELSE {FLOAT_INF} END) "
                f"WHEN {base} < 0 AND {exponent} <> trunc({exponent}) THEN {FLOAT_NAN} "
                f"ELSE pow({base}, {exponent}) END)")
        return self._column(_nan_null(expr), level, rows, FLOAT, nullable)

    def _op_neg(self, a: Col) -> Col:
        rows, (x,), level = self._operands("neg", [a])
        if x.kind == BOOL:
            return self._column(f"(NOT {x.sql})", level, rows, BOOL, x.nullable)
        self._numeric("neg", [x])
        expr = f"(-{x.sql})"
        return self._column(_try(expr) if x.kind == INT else expr, level, rows, x.kind, x.nullable)

    def _op_abs(self, a: Col) -> Col:
        rows, (x,), level = self._operands("abs", [a])
        if x.kind == BOOL:
            return a
        self._numeric("abs", [x])
        expr = f"abs({x.sql})"  # abs(-0.0) is 0.0
        return self._column(_try(expr) if x.kind == INT else expr, level, rows, x.kind, x.nullable, signed=False)

    def _op_invert(self, a: Col) -> Col:
        rows, (x,), level = self._operands("invert", [a])
        if x.kind == BOOL:
            return self._column(f"(NOT {x.sql})", level, rows, BOOL, x.nullable)
        if x.kind == INT:
            return self._column(f"(~{x.sql})", level, rows, INT, x.nullable)
        raise TaskFailed(f"bad operand type for unary ~: '{_describe_kind(x.kind)}'")

    def _compare(self, op: str, a: Value, b: Value) -> Col:
        rows, (x, y), level = self._operands(op, [a, b], mode="same")
        kinds = {x.kind, y.kind}
        nullable = x.nullable or y.nullable
        if OTHER in kinds:
            raise TaskFailed(f"{op} is not supported for values of this type by this fragment")
        if NULL in kinds:  # pandas: comparing with a missing scalar is False (True for !=)
            return Col("TRUE" if op == "ne" else "FALSE", 0, rows, BOOL)
        if STR in kinds and kinds != {STR}:
            if op in ("eq", "ne"):
                return Col("TRUE" if op == "ne" else "FALSE", 0, rows, BOOL)
            other = (kinds - {STR}).pop()
            raise TaskFailed(f"'{PYTHON_SYMBOL[op]}' not supported between instances of 'str' and "
                             f"'{_describe_kind(other)}'")
        if kinds == {STR} or kinds == {BOOL}:
            expr = f"({x.sql} {SYMBOL[op]} {y.sql})"
        else:
            expr = f"({x.bigint} {SYMBOL[op]} {y.bigint})"
        if nullable:
            return self._column(expr, level, rows, BOOL, nullable)
        return self._boolean(f"coalesce({expr}, {'TRUE' if op == 'ne' else 'FALSE'})", level, rows)

    def _logical(self, op: str, a: Value, b: Value) -> Col:
        rows, (x, y), level = self._operands(op, [a, b], mode="logical")
        kinds = {x.kind, y.kind}
        nullable = x.nullable or y.nullable
        if kinds == {BOOL}:
            return self._column(f"({x.sql} {op.upper()} {y.sql})", level, rows, BOOL, nullable)
        if kinds <= {BOOL, INT}:
            return self._column(f"({x.bigint} {'&' if op == 'and' else '|'} {y.bigint})", level, rows, INT, nullable)
        raise TaskFailed(f"unsupported operand type(s) for {'&' if op == 'and' else '|'}: "
                         f"'{_describe_kind(x.kind)}' and '{_describe_kind(y.kind)}'")

    def _op_isna(self, a: Col) -> Col:
        return self._boolean(f"({a.sql} IS NULL)", a.depth, a.rows)

    def _op_notna(self, a: Col) -> Col:
        return self._boolean(f"({a.sql} IS NOT NULL)", a.depth, a.rows)

    def _boolean(self, expr: str, level: int, rows: Rows) -> Col:
        """A boolean column that is never NULL (a filter takes it as it is)."""
        column = self._column(expr, level, rows, BOOL)
        self._never_null.add(column.sql)
        return column

    def _op_fillna(self, a: Col, value: Value) -> Col:
        if isinstance(value, Const) and value.kind == NULL:
            raise TaskFailed("Must specify a fill 'value' or 'method'.")
        if isinstance(value, Table):
            raise TaskFailed("fillna with a table is not supported by this fragment")
        if isinstance(value, Col):  # pandas aligns the filling column to a's rows
            fill = value.sql if value.rows.contains(a.rows) else f"(CASE WHEN {value.rows.cond} THEN {value.sql} END)"
            y = Operand(fill, value.kind, value.nullable)
            level = max(a.depth, value.depth)
        else:
            _, (y,), _ = self._operands("fillna", [value])
            level = a.depth
            if y.kind == STR and len(y.const) > MAX_FILL_TEXT:
                raise TaskFailed(f"fillna: this fragment fills with text of at most {MAX_FILL_TEXT:,} characters")
        x = Operand(a.sql, a.kind, a.nullable)
        if a.untyped and y.kind in (INT, FLOAT, BOOL, STR):  # nothing but missing values: all filled
            return self._column(f"coalesce(NULL, {y.sql})", level, a.rows, y.kind, y.nullable)
        if x.kind == STR and y.kind == STR or x.kind == BOOL and y.kind == BOOL:
            return self._column(f"coalesce({x.sql}, {y.sql})", level, a.rows, x.kind, a.nullable)
        if x.kind in (INT, FLOAT) and y.kind in (INT, FLOAT):
            if FLOAT in (x.kind, y.kind):
                return self._column(f"coalesce({x.double}, {y.double})", level, a.rows, FLOAT, a.nullable)
            return self._column(f"coalesce({x.sql}, {y.sql})", level, a.rows, INT, a.nullable)
        raise TaskFailed(f"fillna: this fragment cannot mix {_describe_kind(x.kind)} and "
                         f"{_describe_kind(y.kind)} values in one column")

    def _op_isin(self, a: Col, values: Value) -> Col:
        if not isinstance(values, Const) or values.kind != LIST:
            raise TaskFailed("only list-like objects are allowed to be passed to isin()")
        items = list(values.value)
        if any(constant_kind(v) in (LIST, OTHER) for v in items):
            raise TaskFailed("isin: the values must be numbers, text, booleans or None")
        nan = any(isinstance(v, float) and math.isnan(v) for v in items)
        none = any(v is None for v in items)
        x = Operand(a.sql, a.kind, a.nullable)
        if x.kind in NUMERIC:
            numbers = [v for v in items if constant_kind(v) in NUMERIC and not (isinstance(v, float) and math.isnan(v))]
            as_float = x.kind == FLOAT or any(isinstance(v, float) for v in numbers)
            column = x.double if as_float else x.bigint
            members = [float_literal(float(v)) if as_float else literal(int(v)) for v in numbers]
            missing_matches = nan if x.kind in (FLOAT, INT) else none
        elif x.kind == STR:
            column = x.sql
            members = [quote_string(v) for v in items if isinstance(v, str)]
            missing_matches = none
        else:
            raise TaskFailed("isin is not supported for values of this type by this fragment")
        parts = []
        if members:
            parts.append(f"coalesce({column} IN ({', '.join(dict.fromkeys(members))}), FALSE)")
        if missing_matches:
            parts.append(f"({x.sql} IS NULL)")
        return self._column(_or(*parts), a.depth, a.rows, BOOL)

    def _op_clip(self, a: Col, lower: Value = Const(None), upper: Value = Const(None)) -> Col:
        if isinstance(lower, (Col, Table)) or isinstance(upper, (Col, Table)):
            raise TaskFailed("clip with bounds that vary by row is not supported by this fragment")
        bounds = []
        for bound in (lower, upper):
            value = bound.value
            if value is not None and (constant_kind(value) not in NUMERIC):
                raise TaskFailed("clip bounds must be numbers")
            bounds.append(None if value is None or isinstance(value, float) and math.isnan(value) else value)
        if a.kind not in (INT, FLOAT):
            raise TaskFailed(f"clip is not supported for {_describe_kind(a.kind)} values by this fragment")
        as_float = a.kind == FLOAT or any(isinstance(b, float) for b in bounds)
        x = Operand(a.sql, a.kind, a.nullable)
        expr = x.double if as_float else x.sql
        low, high = (None if b is None else (float_literal(float(b)) if as_float else literal(int(b))) for b in bounds)
        if low is not None:
            expr = f"(CASE WHEN {expr} < {low} THEN {low} ELSE {expr} END)"
        if high is not None:
            expr = f"(CASE WHEN {expr} > {high} THEN {high} ELSE {expr} END)"
        return self._column(expr, a.depth, a.rows, FLOAT if as_float else INT, a.nullable)

    def _unary_float(self, op: str, a: Col, template: str, signed: bool = True) -> Col:
        if a.kind not in NUMERIC:
            raise TaskFailed(f"{op} is not supported for {_describe_kind(a.kind)} values")
        x = Operand(a.sql, a.kind).double
        return self._column(_nan_null(template.format(x=x)), a.depth, a.rows, FLOAT, a.nullable, signed)

    def _op_log(self, a: Col) -> Col:  # ln(1) is +0.0
        return self._unary_float("log", a, f"(CASE WHEN {{x}} > 0 THEN ln({{x}}) WHEN {{x}} = 0 THEN {FLOAT_NINF} END)",
                                 signed=False)

    def _op_exp(self, a: Col) -> Col:
        return self._unary_float("exp", a, f"(CASE WHEN {{x}} > 709.78 THEN {FLOAT_INF} ELSE exp({{x}}) END)",
                                 signed=False)

    def _op_sqrt(self, a: Col) -> Col:  # sqrt(-0.0) is -0.0
        return self._unary_float("sqrt", a, "(CASE WHEN {x} >= 0 THEN sqrt({x}) END)")

    def _op_round(self, a: Col, decimals: Value = Const(0)) -> Col:
        if not isinstance(decimals, Const) or constant_kind(decimals.value) not in (INT,) or abs(decimals.value) > 300:
            raise TaskFailed("round needs a whole number of decimals")
        d = int(decimals.value)
        if a.kind in (INT, BOOL):
            if d >= 0:
                return a
            scale = float_literal(10.0 ** (-d))
            expr = f"TRY_CAST(round_even(CAST({a.sql} AS DOUBLE) / {scale}, 0) * {scale} AS BIGINT)"
            return self._column(expr, a.depth, a.rows, INT, a.nullable)
        if a.kind != FLOAT:
            raise TaskFailed(f"round is not supported for {_describe_kind(a.kind)} values")
        # numpy: rint(x * 10**d) / 10**d (or rint(x / 10**-d) * 10**-d), half to even
        if d >= 0:
            scale = float_literal(10.0**d)
            expr = f"(round_even({a.sql} * {scale}, 0) / {scale})"
        else:
            scale = float_literal(10.0 ** (-d))
            expr = f"(round_even({a.sql} / {scale}, 0) * {scale})"
        return self._column(_nan_null(expr), a.depth, a.rows, FLOAT, a.nullable)

    def _op_astype(self, a: Col, dtype: Value) -> Col:
        """``binary.astype``: a value that cannot be converted is missing (NULL), never an error."""
        name = dtype.value if isinstance(dtype, Const) else None
        if not isinstance(name, str) or name not in binary.DTYPES:
            raise TaskFailed(f"astype accepts {sorted(binary.DTYPES)}, not {name!r}")
        kind, x = a.kind, a.sql
        if kind == OTHER:
            raise TaskFailed("astype is not supported for values of this type by this fragment")
        # text is read as a number as pd.to_numeric reads it (" 2 ", "1e3"); what is none is NULL
        number = _nan_null(f"TRY_CAST(trim({x}) AS DOUBLE)") if kind == STR else Operand(x, kind).double
        if name == "float":
            if kind == FLOAT and a.sql in self._unsigned:
                return replace(a, nullable=False)
            # a raw column's -0.0 becomes 0.0 (pandas: an elementwise float result); integers never are -0.0
            return self._column(number, a.depth, a.rows, FLOAT, signed=kind in (FLOAT, STR))
        if name == "int":
            if kind == INT:
                return replace(a, nullable=True)
            if kind == BOOL:
                return self._column(f"CAST({x} AS BIGINT)", a.depth, a.rows, INT, True)
            whole = (f"(CASE WHEN isfinite({number}) AND {number} = trunc({number}) AND {number} >= "
                     f"{float_literal(-(2.0**63))} AND {number} < {float_literal(2.0**63)} "
                     f"THEN CAST({number} AS BIGINT) END)")
            if kind == STR:  # digits alone convert exactly, beyond a double's 53 bits
                whole = (f"(CASE WHEN regexp_full_match(trim({x}), '[+-]?[0-9]+') THEN TRY_CAST(trim({x}) AS BIGINT) "
                         f"ELSE {whole} END)")
            return self._column(whole, a.depth, a.rows, INT, True)
        if name == "bool":
            if kind == BOOL:
                return replace(a, nullable=True)
            return self._column(f"(CASE WHEN {number} IN (0, 1) THEN {number} = 1 END)", a.depth, a.rows, BOOL, True)
        # "str"
        if kind == STR:
            return replace(a, nullable=True)
        if kind == BOOL:
            return self._column(f"(CASE WHEN {x} THEN 'True' WHEN NOT {x} THEN 'False' END)", a.depth, a.rows,
                                STR, True)
        return self._column(f"CAST({x} AS VARCHAR)", a.depth, a.rows, STR, True)

    def _op_to_numeric(self, a: Col) -> Col:
        """``binary.to_numeric``: numbers kept, text read as ``pd.to_numeric(errors="coerce")`` reads it.

        DuckDB's cast reads more than pandas (``1_000``, spaces around
        ``inf``): only what matches ``PANDAS_NUMBER`` is cast, the rest is missing.
        """
        if a.kind in NUMERIC:
            return a
        if a.kind != STR:
            raise TaskFailed("to_numeric reads text as numbers; this column holds values of another type")
        number = (f"(CASE WHEN regexp_full_match({a.sql}, {quote_string(PANDAS_NUMBER)}) "
                  f"THEN TRY_CAST(trim({a.sql}, {quote_string(SPACES)}) AS DOUBLE) END)")
        return self._column(_nan_null(number), a.depth, a.rows, FLOAT)

    def _op_dummy(self, a: Col, level: Value) -> Col:
        if not isinstance(level, Const) or level.kind in (LIST, OTHER):
            raise TaskFailed("dummy needs one level (a number, text or boolean)")
        equal = self._compare("eq", a, level)
        expr = f"(CASE WHEN {a.sql} IS NULL THEN NULL WHEN {equal.sql} THEN {FLOAT_ONE} ELSE {FLOAT_ZERO} END)"
        return self._column(expr, max(a.depth, equal.depth), a.rows, FLOAT, signed=False)

    # -- filters -----------------------------------------------------------------------------------
    def _truthy(self, mask: Col) -> str:
        """pandas' ``mask.fillna(False).astype(bool)``."""
        if mask.kind == BOOL and mask.sql in self._never_null:
            return mask.sql
        if mask.kind == BOOL:
            return f"coalesce({mask.sql}, FALSE)"
        if mask.kind in (INT, FLOAT):
            return f"coalesce({mask.sql} <> 0, FALSE)"
        if mask.kind == STR:
            return f"coalesce(length({mask.sql}) > 0, FALSE)"
        raise TaskFailed("a row filter needs a boolean column of the same fragment")

    def _filter(self, table: Value, mask: Value) -> Value:
        if not isinstance(mask, Col) or not isinstance(table, (Table, Col)):
            raise TaskFailed("a row filter needs a boolean column of the same fragment")
        if not mask.rows.contains(table.rows):
            raise TaskFailed("Unalignable boolean Series provided as indexer (index of the boolean Series and of "
                             "the indexed object do not match).")
        truthy = self._truthy(mask)
        # a comparison's column is the filter as it is: a copy of it in a layer of its own costs a tenth of a scan
        atom, atom_level = (mask.sql, mask.level) if truthy == mask.sql else \
            self.query.name(truthy, mask.depth, prefix="m")
        if atom == "TRUE":
            return table
        cond, level = self.query.name(_and(table.rows.cond, atom), max(table.rows.level, atom_level), prefix="r") \
            if table.rows.cond != "TRUE" else (atom, atom_level)
        rows = Rows(cond, level, table.rows.lineage | {atom})
        return table.with_rows(rows) if isinstance(table, Table) else replace(table, rows=rows)

    # -- aggregates --------------------------------------------------------------------------------
    def _map(self, op: str, name: str, args: list[Value]) -> Output:
        if not args:
            raise TaskFailed(f"{name} needs a value")
        _refuse_text(name, args, numbers=getattr(self.config.aggregates[name].map, "needs_numbers", False))
        value, extra = args[0], args[1:]
        if isinstance(value, Table):
            readers = {str(c): self._aggregate(op, name, col, extra) for c, col in value.columns.items()}
            return Output(lambda row: {COLUMNS: {c: read(row) for c, read in readers.items()}})
        if not isinstance(value, Col):
            raise TaskFailed(f"{name} needs a column of the fragment")
        return Output(self._aggregate(op, name, value, extra))

    def _aggregate(self, op: str, name: str, x: Col, extra: list[Value]) -> Callable[[tuple], Any]:
        low, high = EXTRA_ARGUMENTS.get(op, (0, 0))
        if not low <= len(extra) <= high:
            raise TaskFailed(f"map {name} failed: TypeError: it takes {low + 1}"
                             f"{'' if low == high else ' or more'} argument(s), not {len(extra) + 1}")
        if x.kind == OTHER and op not in ("len", "count", "schema"):
            raise TaskFailed(f"{name} is not supported for values of this type by this fragment")
        return getattr(self, f"_agg_{op}")(x, *extra)

    def _agg_schema(self, x: Col) -> Callable[[tuple], Any]:
        """The column's dtype as pandas writes it, from its DuckDB type (``pandas_dtype``): never a value."""
        source = next((c for c in self.query.columns if c.alias == x.sql), None)
        dtype = pandas_dtype(x, source.type if source is not None else None)
        return lambda row: dtype

    def _numbers(self, op: str, *cols: Value) -> None:
        for c in cols:
            if not isinstance(c, Col):
                raise TaskFailed(f"{op} needs columns of the fragment")
            if c.kind not in NUMERIC:
                raise TaskFailed(f"{op} failed: ValueError: could not convert {_describe_kind(c.kind)} values to float")

    def _agg_len(self, x: Col) -> Callable[[tuple], Any]:
        i = self.query.select(_count_rows(x.rows.cond))
        return lambda row: int(row[i])

    def _agg_count(self, x: Col) -> Callable[[tuple], Any]:
        i = self.query.select(f"count({_when(x.rows.cond, x.sql)})")
        return lambda row: int(row[i])

    def _agg_sum(self, x: Col) -> Callable[[tuple], Any]:
        if x.kind == FLOAT:
            i = self.query.select(_fsum(_when(x.rows.cond, x.sql)))
            return lambda row: 0.0 if row[i] is None else float(row[i])
        if x.kind in (INT, BOOL):
            i = self.query.select(f"sum({_when(x.rows.cond, Operand(x.sql, x.kind).bigint)})")
            return lambda row: 0 if row[i] is None else int(row[i])
        raise TaskFailed("sum of text values (pandas concatenates them) is not supported by this fragment")

    def _agg_sqsum(self, x: Col) -> Callable[[tuple], Any]:
        r = x.rows.cond
        if x.kind == FLOAT:
            i = self.query.select(_fsum(_when(r, f'{x.sql} * {x.sql}')))
            return lambda row: 0.0 if row[i] is None else float(row[i])
        if x.kind == INT:
            i = self.query.select(f"sum({_when(r, f'CAST({x.sql} AS HUGEINT) * CAST({x.sql} AS HUGEINT)')})")
            return lambda row: 0 if row[i] is None else int(row[i])
        if x.kind == BOOL:  # numpy's dot product of booleans is a logical "any"
            i = self.query.select(f"bool_or({_when(r, x.sql)})")
            return lambda row: bool(row[i])
        raise TaskFailed("sqsum is not defined for text values")

    def _agg_min(self, x: Col, fn: str = "min") -> Callable[[tuple], Any]:
        i = self.query.select(f"{fn}({_when(x.rows.cond, x.sql)})")
        return lambda row: row[i]

    def _agg_max(self, x: Col) -> Callable[[tuple], Any]:
        return self._agg_min(x, "max")

    def _counts(self, x: Col) -> int:
        """Select index of ``[{key, value}]``: each distinct non-missing value and its count."""
        return self.query.select(f"map_entries(histogram({_when(x.rows.cond, x.sql)}))")

    def _agg_set(self, x: Col) -> Callable[[tuple], Any]:
        i = self._counts(x)
        return lambda row: sorted(entry["key"] for entry in row[i] or [])

    def _agg_value_counts(self, x: Col) -> Callable[[tuple], Any]:
        i = self._counts(x)

        def read(row: tuple) -> list[list[Any]]:
            entries = sorted(row[i] or [], key=lambda e: (-e["value"], e["key"]))
            return [[e["key"], int(e["value"])] for e in entries]

        return read

    def _agg_crosstab(self, a: Col, b: Value) -> Callable[[tuple], Any]:
        if not isinstance(b, Col):
            raise TaskFailed("crosstab needs two columns of the fragment")
        if b.kind == OTHER:
            raise TaskFailed("crosstab is not supported for values of this type by this fragment")
        # pandas: a frame of both, rows missing either dropped (so rows both have)
        cond = _and(a.rows.cond, b.rows.cond, f"{a.sql} IS NOT NULL", f"{b.sql} IS NOT NULL")
        i = self.query.select(f"map_entries(histogram({_when(cond, f'struct_pack(a := {a.sql}, b := {b.sql})')}))")
        return lambda row: [[e["key"]["a"], e["key"]["b"], int(e["value"])] for e in row[i] or []]

    def _cumulative(self, x: Col, thresholds: Iterable[float]) -> Callable[[tuple], dict[float, int]]:
        """How many non-missing values are at most each threshold (nan and +inf: all of them)."""
        v = Operand(x.sql, x.kind).double
        present = _and(x.rows.cond, f"{x.sql} IS NOT NULL")
        total = self.query.select(f"count({_when(x.rows.cond, x.sql)})")
        finite = sorted({float(t) for t in thresholds if not math.isnan(t) and t != math.inf})
        if len(finite) > MAX_THRESHOLDS:
            raise TaskFailed(f"at most {MAX_THRESHOLDS} thresholds or bins")
        buckets = None
        if finite:
            bounds = "CAST([" + ", ".join(f"'{t!r}'" for t in finite) + "] AS DOUBLE[])"
            buckets = self.query.select(f"map_entries(histogram({_when(present, v)}, {bounds}))")

        def read(row: tuple) -> dict[float, int]:
            # DuckDB counts each value in the bucket (previous boundary, boundary], plus one above the last
            counts = {e["key"]: int(e["value"]) for e in (row[buckets] if buckets is not None else None) or []}
            out, running = {}, 0
            for t in finite:
                running += counts.get(t, 0)
                out[t] = running
            out[math.inf] = out[math.nan] = int(row[total])
            return out

        return read

    @staticmethod
    def _at_most(counts: dict[float, int], t: float) -> int:
        return counts[math.nan] if math.isnan(t) else counts[t]

    def _agg_histogram(self, x: Col, bins: Value, range: Value = Const(None)) -> Callable[[tuple], Any]:
        if not isinstance(bins, Const) or not isinstance(range, Const):
            raise TaskFailed("histogram bins and range must be constants")
        self._numbers("histogram", x)
        # the same checks and edges as the pandas path (run on no values): finite, strictly
        # increasing edges, so that no count below can come out negative
        try:
            edges = private.histogram(pd.Series([], dtype=float), bins.value, range.value)["edges"]
        except OperationError as exc:
            raise TaskFailed(f"map histogram failed: {exc}"[:300]) from None
        except Exception as exc:
            raise TaskFailed(f"map histogram failed: {type(exc).__name__}: {exc}"[:300]) from None
        # numpy: [e_i, e_i+1) and the last bin closed; "x < e" is "x <= the float just below e"
        below = [float(np.nextafter(e, -math.inf)) for e in edges]
        cumulative = self._cumulative(x, [*below, edges[-1]])

        def read(row: tuple) -> dict[str, list[Any]]:
            c = cumulative(row)
            less = [c[b] for b in below]
            counts = [less[i + 1] - less[i] for i in builtin_range(len(edges) - 2)]
            counts.append(self._at_most(c, edges[-1]) - less[-2])  # at least two edges: checked above
            return {"counts": counts, "edges": list(edges)}

        return read

    def _agg_grouped(self, x: Col, values: Value, *keys: Value) -> Callable[[tuple], Any]:
        """Per-group partials (``private.grouped``) from one ``GROUP BY`` subquery over the last layer,
        a scalar of the request's one statement: rows without a key or outside ``x``'s rows are left out."""
        if not isinstance(values, Const) or not all(isinstance(k, Col) for k in keys):
            raise TaskFailed("grouped needs a constant flag and key columns of the fragment")
        if any(k.kind == OTHER for k in keys):
            raise TaskFailed("grouped is not supported for keys of this type by this fragment")
        fields = [f"key{chr(97 + i)}" for i in range(len(keys))]
        cond = _and(x.rows.cond, *(k.rows.cond for k in keys), *(f"{k.sql} IS NOT NULL" for k in keys))
        labels = ", ".join(f"{k.sql} AS {f}" for k, f in zip(keys, fields))
        by = ", ".join(str(i + 1) for i in range(len(keys)))
        pack = lambda names: f"list(struct_pack({', '.join(f'{n} := {n}' for n in names)}))"  # noqa: E731
        if values.value:
            inner = (f"SELECT {labels}, {x.sql} AS val, count(*) AS cnt FROM {LAST_LAYER} "
                     f"WHERE {_and(cond, f'{x.sql} IS NOT NULL')} GROUP BY {by}, {len(keys) + 1}")
            i = self.query.select(f"(SELECT {pack([*fields, 'val', 'cnt'])} FROM ({inner}))")
            return lambda row: {"keys": len(keys), "counts": [[*(e[f] for f in fields), e["val"], int(e["cnt"])]
                                                              for e in row[i] or []]}
        if x.kind in NUMERIC:
            v = Operand(x.sql, x.kind).double
            total = _fsum(v) if x.kind == FLOAT else f"sum(CAST({x.sql} AS BIGINT))"
            moments = f"{total} AS total, {_favg(v)} AS avg, coalesce(var_pop({v}) * count({x.sql}), 0) AS msq"
            extremes = f"min({Operand(x.sql, x.kind).bigint if x.kind == BOOL else x.sql})"
            extremes = f"{extremes} AS lo, max({Operand(x.sql, x.kind).bigint if x.kind == BOOL else x.sql}) AS hi"
        else:
            moments = "NULL AS total, NULL AS avg, NULL AS msq"
            extremes = f"min({x.sql}) AS lo, max({x.sql}) AS hi"
        inner = (f"SELECT {labels}, count(*) AS size, count({x.sql}) AS cnt, {moments}, {extremes} "
                 f"FROM {LAST_LAYER} WHERE {cond} GROUP BY {by}")
        names = [*fields, "size", "cnt", "total", "avg", "msq", "lo", "hi"]
        i = self.query.select(f"(SELECT {pack(names)} FROM ({inner}))")
        whole = x.kind != FLOAT

        def read(row: tuple) -> dict[str, Any]:
            groups = []
            for e in row[i] or []:
                total = e["total"]
                if total is not None:
                    total = int(total) if whole else float(total)
                elif x.kind in NUMERIC:
                    total = 0 if whole else 0.0
                groups.append([*(e[f] for f in fields), int(e["size"]), int(e["cnt"]), total,
                               None if e["avg"] is None else float(e["avg"]),
                               None if e["msq"] is None else float(e["msq"]), e["lo"], e["hi"]])
            return {"keys": len(keys), "groups": groups}

        return read

    def _agg_count_below(self, x: Col, thresholds: Value) -> Callable[[tuple], Any]:
        if not isinstance(thresholds, Const):
            raise TaskFailed("count_below thresholds must be constants")
        self._numbers("count_below", x)
        try:
            values = [float(t) for t in np.asarray(thresholds.value, dtype=float).ravel()]
        except Exception as exc:
            raise TaskFailed(f"map count_below failed: {type(exc).__name__}: {exc}"[:300]) from None
        cumulative = self._cumulative(x, values)

        def read(row: tuple) -> list[int]:
            counts = cumulative(row)
            return [self._at_most(counts, t) for t in values]

        return read

    def _moments(self, cols: Sequence[Col]) -> tuple[str, list[str]]:
        rows = _and(*[c.rows.cond for c in cols], *[f"{c.sql} IS NOT NULL" for c in cols])
        return rows, [Operand(c.sql, c.kind).double for c in cols]

    # M2 is var_pop times the count. An infinite value makes DuckDB's var_pop and covar_pop NaN, as
    # numpy's centred sums are (inf - inf): no separate count of non-finite rows, which cost a
    # quarter of a describe + t-test + OLS request.

    def _agg_moments(self, x: Col) -> Callable[[tuple], Any]:
        self._numbers("moments", x)
        rows, (v,) = self._moments([x])
        n = self.query.select(_count_rows(rows))
        mean = self.query.select(_favg(_when(rows, v)))
        var = self.query.select(f"var_pop({_when(rows, v)})")

        def read(row: tuple) -> list[Any]:
            count = int(row[n])
            if count == 0:
                return [0, 0.0, 0.0]
            return [count, float(row[mean]), float(row[var] or 0.0) * count]

        return read

    def _comatrix(self, op: str, cols: Sequence[Col]) -> Callable[[tuple], tuple[int, list[float], np.ndarray]]:
        if len(cols) > MAX_COLUMNS:
            raise TaskFailed(f"{op} of more than {MAX_COLUMNS} columns is not supported by this fragment")
        self._numbers(op, *cols)
        rows, values = self._moments(cols)
        k = len(values)
        n = self.query.select(_count_rows(rows))
        means = [self.query.select(_favg(_when(rows, v))) for v in values]
        pairs = {
            (i, j): self.query.select(
                f"var_pop({_when(rows, values[i])})" if i == j
                else f"covar_pop({_when(rows, values[i])}, {_when(rows, values[j])})"
            )
            for i in builtin_range(k) for j in builtin_range(i, k)
        }

        def read(row: tuple) -> tuple[int, list[float], np.ndarray]:
            count = int(row[n])
            matrix = np.zeros((k, k))
            if count == 0:
                return 0, [0.0] * k, matrix
            for (i, j), index in pairs.items():
                matrix[i, j] = matrix[j, i] = float(row[index] or 0.0) * count
            return count, [float(row[m]) for m in means], matrix

        return read

    def _agg_comoments(self, x: Col, *rest: Value) -> Callable[[tuple], Any]:
        if len(rest) != 1 or not isinstance(rest[0], Col):
            raise TaskFailed("comoments needs two columns of the fragment")
        read = self._comatrix("comoments", [x, rest[0]])

        def comoments(row: tuple) -> list[Any]:
            n, means, m = read(row)
            if n == 0:
                return [0, 0.0, 0.0, 0.0, 0.0, 0.0]
            return [n, means[0], means[1], float(m[0, 0]), float(m[1, 1]), float(m[0, 1])]

        return comoments

    def _agg_comoment_matrix(self, x: Col, *rest: Value) -> Callable[[tuple], Any]:
        if not all(isinstance(c, Col) for c in rest):
            raise TaskFailed("comoment_matrix needs columns of the fragment")
        read = self._comatrix("comoment_matrix", [x, *rest])  # type: ignore[list-item]

        def matrix(row: tuple) -> list[Any]:
            n, means, m = read(row)
            return [n, means, m.tolist()]

        return matrix

    def _agg_glm_step(self, y: Col, family: Value, intercept: Value, beta: Value, *columns: Value
                      ) -> Callable[[tuple], Any]:
        if not all(isinstance(v, Const) for v in (family, intercept, beta)):
            raise TaskFailed("glm_step: family, intercept and beta must be constants")
        if not all(isinstance(c, Col) for c in columns):
            raise TaskFailed("glm_step needs columns of the fragment")
        self._numbers("glm_step", y, *columns)  # type: ignore[arg-type]
        if family.value not in ("binomial", "poisson"):
            raise TaskFailed(f"map glm_step failed: ValueError: unknown family {family.value!r}: "
                             "use 'binomial' or 'poisson'")
        try:
            coefficients = [float(b) for b in np.asarray(beta.value, dtype=float).ravel()]
        except Exception as exc:
            raise TaskFailed(f"map glm_step failed: {type(exc).__name__}: {exc}"[:300]) from None
        cols: list[Col] = [y, *columns]  # type: ignore[list-item]
        if len(cols) > MAX_COLUMNS:
            raise TaskFailed(f"glm_step of more than {MAX_COLUMNS} columns is not supported by this fragment")
        design = ([FLOAT_ONE] if intercept.value else []) + [Operand(c.sql, c.kind).double for c in columns]  # type: ignore[union-attr]
        if len(design) != len(coefficients):
            raise TaskFailed(f"map glm_step failed: ValueError: {len(coefficients)} coefficients for "
                             f"{len(design)} columns of the design")
        rows = _and(*[c.rows.cond for c in cols], *[f"{c.sql} IS NOT NULL" for c in cols])
        level = max(c.depth for c in cols)
        target = Operand(y.sql, y.kind).double

        def on_rows(expr: str) -> str:  # computed only where the step uses the row
            return expr if rows == "TRUE" else f"(CASE WHEN {rows} THEN {expr} END)"

        terms = [f"{float_literal(b)} * {d}" for b, d in zip(coefficients, design)]
        eta, at = self.query.name(on_rows("(" + (" + ".join(terms) or FLOAT_ZERO) + ")"), level, "g")
        if family.value == "binomial":  # the logistic function, without overflow
            mean, at = self.query.name(
                f"(CASE WHEN {eta} >= 0 THEN {FLOAT_ONE} / ({FLOAT_ONE} + exp(-{eta})) "
                f"ELSE exp({eta}) / ({FLOAT_ONE} + exp({eta})) END)", at, "g")
            weight, at = self.query.name(f"({mean} * ({FLOAT_ONE} - {mean}))", at, "g")
            softplus = (f"(CASE WHEN {eta} < 0 THEN ln({FLOAT_ONE} + exp({eta})) "
                        f"ELSE {eta} + ln({FLOAT_ONE} + exp(-{eta})) END)")
            loglik, at = self.query.name(f"({target} * {eta} - {softplus})", at, "g")
        else:
            mean, at = self.query.name(f"(CASE WHEN {eta} > 709.78 THEN {FLOAT_INF} ELSE exp({eta}) END)", at, "g")
            weight = mean
            loglik, at = self.query.name(
                on_rows(f"({target} * {eta} - {mean} - lgamma({target} + {FLOAT_ONE}))"), at, "g"
            )
        residual, at = self.query.name(f"({target} - {mean})", at, "g")
        p = len(design)
        n = self.query.select(_count_rows(rows))
        gradient = [self.query.select(_fsum(_when(rows, f'{design[j]} * {residual}'))) for j in builtin_range(p)]
        hessian = {(j, k): self.query.select(_fsum(_when(rows, f'{design[j]} * {design[k]} * {weight}')))
                   for j in builtin_range(p) for k in builtin_range(j, p)}
        total = self.query.select(_fsum(_when(rows, loglik)))

        def read(row: tuple) -> list[Any]:
            matrix = [[0.0] * p for _ in builtin_range(p)]
            for (j, k), index in hessian.items():
                matrix[j][k] = matrix[k][j] = float(row[index] or 0.0)
            return [int(row[n]), [float(row[g] or 0.0) for g in gradient], matrix, float(row[total] or 0.0)]

        return read

    # -- disclosure ----------------------------------------------------------------------------------
    # ``fedmed.server.disclosure`` judges the evaluated values; here every fact it uses is a condition
    # over the rows (the same graph walk, as SQL) and every number it derives is an aggregate: counts
    # in the first statement, what needs another aggregate first (a mode, a median, per-person sums)
    # in the second (``_Followup``).

    def _count(self, cond: str) -> Read:
        """Persons (or rows) where ``cond`` holds; a row without a person key is a person of its own."""
        if cond == "FALSE":
            return lambda row, extra: 0
        if self.later.key is None:
            i = self.query.select(_count_rows(cond))
            return lambda row, extra: int(row[i])
        return self.later.persons(self.later.column(cond))

    def _judge(self, value: Col, scope: frozenset[str], raw: frozenset[str]) -> Read:
        """What ``value`` does within ``scope``: the numbers of ``Disclosure._selects``, as a ``Judged``."""
        within = _and(*sorted(scope), value.rows.cond)
        present = _and(within, f"{value.sql} IS NOT NULL")
        nulled = self._count(_and(within, *sorted(raw), f"{value.sql} IS NULL"))
        classes = self._classes(value.sql, value.kind, present)
        spread = self._spread(value.sql, value.kind, present) if value.kind in (INT, FLOAT) else None

        def read(row: tuple, extra: Any) -> Judged:
            return Judged(nulled(row, extra), *classes(row, extra), spread(row, extra) if spread else None)

        return read

    def _classes(self, value: str, kind: str, present: str) -> Callable[[tuple, Any], tuple[int, int, int]]:
        """``value``'s classes where ``present`` holds: (persons there, distinct values, persons without the mode).

        The mode is pandas' ``value_counts().index[0]``: of the values held by
        the most rows, the first in the rows' order. Counting rows, which of
        them does not matter; counting persons it does, and a source that
        does not know its rows' order (CSV) takes the one that leaves the
        fewest persons out.
        """
        ordinal = "o0" if self.query.ordinal and self.later.key is not None else None
        if kind == BOOL:  # two classes, counted in the first statement
            true, false = _and(present, value), _and(present, _not(value))
            rows = (self.query.select(_count_rows(true)), self.query.select(_count_rows(false)))
            minority = (self._count(false), self._count(true))  # of the mode True, of the mode False
            persons = self._count(present)
            first = self.query.select(f"arg_min({_when(present, value)}, {_when(present, ordinal)})") if ordinal else None

            def read_bool(row: tuple, extra: Any) -> tuple[int, int, int]:
                t, f = int(row[rows[0]]), int(row[rows[1]])
                modes = [i for i, n in enumerate((t, f)) if n == max(t, f)]
                if len(modes) == 2 and first is not None and row[first] is not None:
                    modes = [0 if row[first] else 1]
                return persons(row, extra), (t > 0) + (f > 0), min(minority[i](row, extra) for i in modes)

            return read_bool
        later, key = self.later, self.later.key
        x, has = later.column(value), later.column(present)
        held = f"(CASE WHEN {has} THEN {x} END)"
        if key is None:  # rows: any most frequent value leaves the same number of rows out
            return self._row_classes(x, has)
        # persons: the persons with another value than the mode are all but those whose every value is the mode
        low, high = later.per_person(f"min({held})", held), later.per_person(f"max({held})", held)
        first = f", min({later.column(ordinal)}) AS _f" if ordinal else ", NULL AS _f"
        groups = f"SELECT {x} AS _v, count(*) AS _n{first} FROM _b WHERE {has} GROUP BY {x}"
        pure = f"SELECT {low} AS _v, count(*) AS _n FROM _p WHERE {low} = {high} GROUP BY {low}"
        best = later.select(
            f"(SELECT struct_pack(d := count(*) OVER (), n := _c._n, p := coalesce(_u._n, 0)) FROM ({groups}) AS _c "
            f"LEFT JOIN ({pure}) AS _u ON _c._v = _u._v ORDER BY _c._n DESC, _c._f ASC, coalesce(_u._n, 0) DESC LIMIT 1)"
        )
        persons = later.persons(has)

        def read(row: tuple, extra: Any) -> tuple[int, int, int]:
            c = best(row, extra)
            return (0, 0, 0) if c is None else (persons(row, extra), int(c["d"]), persons(row, extra) - int(c["p"]))

        return read

    def _row_classes(self, x: str, has: str) -> Callable[[tuple, Any], tuple[int, int, int]]:
        """``_classes`` counting rows, from order statistics rather than a hash of every value.

        A value held by all rows but fewer than k is held by more than half
        of them once there are more than 2k rows: it is then the median
        (``quantile_disc``), and the rows without it are counted in the
        second pass. Up to 2k rows, the 2k smallest values are all of them.
        Whether there are 1, 2 or more distinct values follows from the
        extremes and the rows strictly between them.
        """
        later, few = self.later, 2 * self.needs.k
        held = f"(CASE WHEN {has} THEN {x} END)"
        size, low, high, middle, smallest = (later.first(f"{aggregate}({held}{more})") for aggregate, more in (
            ("count", ""), ("min", ""), ("max", ""), ("quantile_disc", ", 0.5"), ("min", f", {few}")))
        at_middle = later.second(f"count(CASE WHEN {has} AND {x} = {middle} THEN 1 END)")
        between = later.second(f"count(CASE WHEN {has} AND {x} <> {low} AND {x} <> {high} THEN 1 END)")
        first = {name: later.read_first(name) for name in (size, low, high, smallest)}

        def read(row: tuple, extra: Any) -> tuple[int, int, int]:
            n = int(first[size](row, extra))
            if n == 0:
                return 0, 0, 0
            distinct = 1 if first[low](row, extra) == first[high](row, extra) else 2 if not between(row, extra) else 3
            if n <= few:
                values = first[smallest](row, extra) or []
                mode = max(sum(1 for w in values if w == v) for v in values)
            else:
                mode = int(at_middle(row, extra))
            return n, distinct, n - mode

        return read

    def _spread(self, value: str, kind: str, present: str) -> Read:
        """(persons, total, largest) of ``|value - median|`` over its finite values, summed per person."""
        later, key = self.later, self.later.key
        number = Operand(value, kind).double
        v, finite = later.column(number), later.column(_and(present, f"isfinite({number})"))
        deviation = f"(CASE WHEN {finite} THEN abs({v} - {later.first(f'median(CASE WHEN {finite} THEN {v} END)')}) END)"
        if key is not None:
            deviation = later.per_person(f"sum({deviation})", deviation)
        stats = (f"struct_pack(n := count({deviation}), total := fsum({deviation}), "
                 f"top := max({deviation}, {max(self.needs.k - 1, 1)}))")
        spread = later.second(stats) if key is None else later.outer(stats)

        def read(row: tuple, extra: Any) -> tuple[int, float, list[float]]:
            s = spread(row, extra)
            return int(s["n"]), float(s["total"] or 0.0), [float(t) for t in s["top"] or []]

        return read

    def _ratio(self, a: Col, b: Col, used: str) -> Read:
        """``Disclosure._jointly`` for two inputs: the classes of ``a / b`` where they are not both zero."""
        x, y = Operand(a.sql, a.kind).double, Operand(b.sql, b.kind).double
        live = _and(used, a.rows.cond, b.rows.cond, f"{a.sql} IS NOT NULL", f"{b.sql} IS NOT NULL",
                    f"NOT ({x} = 0 AND {y} = 0)")
        ratio = (f"(CASE WHEN {y} = 0 THEN {self._by_zero(x, y)} WHEN isnan({x} / {y}) THEN {FLOAT_INF} "
                 f"ELSE {x} / {y} END)")
        classes = self._classes(ratio, FLOAT, live)
        return lambda row, extra: Judged(0, *classes(row, extra))

    def _weights(self, inputs: Sequence[Value], used: str, raw: frozenset[str]) -> Read | None:
        """``Disclosure._glm_weights`` judged like an intermediate: the row weights a ``glm_step`` gives."""
        if len(inputs) < 5:
            return None
        y, family, intercept, beta, *columns = inputs
        if not all(isinstance(c, Col) for c in (y, *columns)) or not all(
                isinstance(v, Const) for v in (family, intercept, beta)):
            return None
        coefficients = [float(b) for b in np.asarray(beta.value, dtype=float).ravel()]
        design = ([FLOAT_ONE] if intercept.value else []) + [Operand(c.sql, c.kind).double for c in columns]
        if len(design) != len(coefficients):
            return None
        rows = _and(*[c.rows.cond for c in (y, *columns)], *[f"{c.sql} IS NOT NULL" for c in (y, *columns)])
        eta = "(" + (" + ".join(f"{float_literal(b)} * {d}" for b, d in zip(coefficients, design)) or FLOAT_ZERO) + ")"
        if family.value == "binomial":
            mean = f"({FLOAT_HALF} * ({FLOAT_ONE} + tanh({FLOAT_HALF} * {eta})))"
            weight = f"({mean} * ({FLOAT_ONE} - {mean}))"
        else:
            weight = f"exp({eta})"
        level = max(c.depth for c in (y, *columns))
        weights, at = self.query.name(f"(CASE WHEN {rows} THEN {_nan_null(weight)} END)", level, "w")
        scope = frozenset([used, f"{weights} IS NOT NULL"])
        return self._judge(Col(weights, at, Rows(rows, level), FLOAT), scope, raw)

    @staticmethod
    def _influence_candidates(node: Map, by_node: Mapping[int, Value], graph: "_Graph") -> list[Node]:
        """``Disclosure._influence_candidates``: the row-wise steps whose influence is judged."""
        return [n for n in graph.order if not isinstance(n, (Literal, FragmentNode, Filter, Map))
                and not any(n is a for a in node.args) and isinstance(by_node.get(id(n)), Col)]

    def _influence(self, node: Map, by_node: Mapping[int, Value], graph: "_Graph") -> list[tuple[Any, ...]]:
        """``Disclosure._influence``: per intermediate, the persons with raw values present whose terms
        change when it is moved, by each move (not for count tables and extremes) and by either move;
        a move the task cannot be compiled with is refused (fail closed), as the pandas engine's failed rerun."""
        terms = [(i, v) for i, v in enumerate(by_node[id(a)] for a in node.args) if isinstance(v, Col)]
        if not terms:
            return []
        present = sorted(graph.present)
        each_move = node.op not in _CELLS_AND_EXTREMES
        candidates = self._influence_candidates(node, by_node, graph)
        count = self._count if len(candidates) <= FEW_STEPS else self._distinct
        checks: list[tuple[Any, ...]] = []
        for candidate in candidates:
            union = []
            for moved in self._moves(by_node[id(candidate)]):
                again = self._rerun(node, by_node, {id(candidate): moved})
                if again is None:
                    checks.append((candidate, "unjudged"))
                    break  # pandas returns here: nothing after it is ever read
                pairs = [(before, again[i]) for i, before in terms if isinstance(again[i], Col)]
                changed = _or(*[self._differs(before, after) for before, after in pairs])
                if changed not in ("TRUE", "FALSE"):  # a column: computed once for this move's count and the union's
                    changed, _ = self.query.name(changed, max(c.depth for pair in pairs for c in pair), prefix="d")
                union.append(changed)
                if each_move:
                    checks.append((candidate, "influence", count(_and(*present, changed))))
            else:
                if union and not (each_move and len(union) == 1):  # one move: its own count was judged already
                    checks.append((candidate, "influence", count(_and(*present, _or(*union)))))
        return checks

    def _distinct(self, cond: str) -> Read:
        """``_count`` in the first statement: persons as distinct keys, plus the rows without a key.

        Slower than the second statement's count per person (one grouping serves every count there),
        but the recomputed steps then stay out of the second statement, each of whose passes DuckDB
        plans anew with every column below it: beyond ``FEW_STEPS`` steps, seconds per request."""
        if cond == "FALSE" or self._key is None:
            return self._count(cond)
        keyed = self.query.select(f"count(DISTINCT CASE WHEN {cond} THEN {self._key} END)")
        single = self.query.select(_count_rows(_and(cond, f"{self._key} IS NULL")))
        return lambda row, extra: int(row[keyed]) + int(row[single])

    def _moves(self, value: Col) -> list[Col]:
        """``disclosure._moves``: the value changed on every row (a boolean flipped, a number moved far up and
        down, keeping its type: integers stay integers, wrapping around on overflow as numpy's do)."""
        if value.kind == BOOL:
            return [self._column(f"(NOT {value.sql})", value.depth, value.rows, BOOL, value.nullable)]
        if value.kind == INT:
            v = value.sql
            return [self._column(f"(CASE WHEN {v} BETWEEN -{SMALL} AND {SMALL} THEN "
                                 f"CAST({v} AS BIGINT) {sign} 10 * (abs(CAST({v} AS BIGINT)) + 1) "
                                 f"ELSE {_wrapped(f'(CAST({v} AS HUGEINT) {sign} 10 * (abs(CAST({v} AS HUGEINT)) + 1))')} "
                                 "END)", value.depth, value.rows, INT, value.nullable)
                    for sign in "+-"]
        if value.kind != FLOAT:
            return []
        # pandas: value.astype(float) +- 10 * (|value| + 1), plain float64 (never -0.0: |step| > |value|)
        step = f"(CAST(10 AS DOUBLE) * (abs({value.sql}) + {FLOAT_ONE}))"
        return [self._column(_nan_null(f"({value.sql} {sign} {step})"), value.depth, value.rows, FLOAT, signed=False)
                for sign in "+-"]

    def _rerun(self, root: Map, by_node: Mapping[int, Value], overrides: dict[int, Value]) -> list[Value] | None:
        """The map's arguments compiled again with some node values replaced (None when that fails to compile)."""
        known, changed = {**by_node, **overrides}, set(overrides)
        for n in walk(root.children):
            if id(n) in changed or not any(id(c) in changed for c in n.children):
                continue
            try:
                known[id(n)] = self._visit(n, [known[id(c)] for c in n.children])
            except Exception:  # the engine cannot say "what if" here: as a failed rerun of the pandas engine
                return None
            changed.add(id(n))
        return [known[id(c)] for c in root.children]

    @staticmethod
    def _differs(before: Col, after: Col) -> str:
        """``disclosure._differs``: rows where two versions of a term differ (NaN equals NaN; 64 ulps are rounding)."""
        both = _and(before.rows.cond, after.rows.cond)
        if before.sql == after.sql:
            same = "TRUE"
        elif {before.kind, after.kind} <= {INT, FLOAT}:
            x, y = Operand(before.sql, before.kind).double, Operand(after.sql, after.kind).double
            same = (f"(({x} IS NULL AND {y} IS NULL) OR coalesce({x} = {y} OR abs({x} - {y}) <= "
                    f"{float_literal(64 * float(np.finfo(float).eps))} * greatest(abs({x}), abs({y})), FALSE))")
        else:
            same = f"({before.sql} IS NOT DISTINCT FROM {after.sql})"
        one_side = f"(({before.rows.cond}) <> ({after.rows.cond}))" if before.rows.cond != after.rows.cond else "FALSE"
        return _or(one_side, _and(both, _not(same)))

    def _holders(self, op: str, x: Col, used: str) -> Callable[[tuple, Any], tuple[str, Any, int]]:
        """The extreme of ``x`` over the rows used, and how many persons (or rows) hold it."""
        extreme = self.query.select(f"{op}({_when(used, x.sql)})")
        if self.later.key is None:  # the k largest (smallest) values, ties included: enough to tell below k
            top = self.query.select(f"{op}({_when(used, x.sql)}, {self.needs.k})")

            def read_rows(row: tuple, extra: Any) -> tuple[str, Any, int]:
                return op, row[extreme], sum(1 for v in row[top] or [] if v == row[extreme])

            return read_rows
        later = self.later
        value, on = later.column(x.sql), later.column(used)
        at = later.first(f"{op}(CASE WHEN {on} THEN {value} END)")
        held = later.persons(f"({on} AND coalesce({value} = {at}, FALSE))")
        return lambda row, extra: (op, row[extreme], held(row, extra))

    @staticmethod
    def _nonzero(value: Col) -> str:
        if value.kind == BOOL:
            return f"coalesce({value.sql}, FALSE)"
        if value.kind in (INT, FLOAT):
            return f"coalesce({value.sql} <> 0, FALSE)"
        return f"({value.sql} IS NOT NULL)"

    @staticmethod
    def _contribution(value: Value) -> str | None:
        """A row's absolute contribution to a sum over ``value`` (a table: its number columns), or None."""
        if isinstance(value, Col):
            numeric = [value] if value.kind in NUMERIC else []
        elif isinstance(value, Table):
            numeric = [c for c in value.columns.values() if c.kind in (INT, FLOAT)]  # select_dtypes("number")
        else:
            return None
        if not numeric:
            return None
        terms = " + ".join(f"coalesce(abs({Operand(c.sql, c.kind).double}), {FLOAT_ZERO})" for c in numeric)
        return f"(CASE WHEN {value.rows.cond} THEN {terms} ELSE {FLOAT_ZERO} END)" if value.rows.cond != "TRUE" else terms

    def _contributions(self, inputs: Sequence[Value], used: str) -> Callable[[tuple, Any], Contributions]:
        terms = [t for t in map(self._contribution, inputs) if t is not None]
        level = max([c.depth for v in inputs for c in (v.columns.values() if isinstance(v, Table) else [v])
                     if isinstance(c, Col)], default=0)
        top = self.needs.top
        if self.later.key is None:
            contribution, _ = self.query.name(" + ".join(terms) or FLOAT_ZERO, level, "c")
            parts = [self.query.select(f"max({_when(used, contribution)}, {top})"),
                     self.query.select(f"sum({_when(used, contribution)})"),
                     self.query.select(f"sum({_when(used, f'{contribution} * {contribution}')})")]
            count = self._count(used)
            return lambda row, extra: Contributions(row[parts[0]] or [], row[parts[1]] or 0.0, row[parts[2]] or 0.0,
                                                    count(row, extra))
        later = self.later
        term = f"(CASE WHEN {later.column(used)} THEN {later.column(' + '.join(terms) or FLOAT_ZERO)} END)"
        each = later.per_person(f"sum({term})", term)  # a person's contribution: the sum of their rows'
        summed = later.outer(f"struct_pack(n := count({each}), total := sum({each}), squares := sum({each} * {each}), "
                             f"top := max({each}, {top}))")

        def read(row: tuple, extra: Any) -> Contributions:
            s = summed(row, extra)
            return Contributions(s["top"] or [], s["total"] or 0.0, s["squares"] or 0.0, int(s["n"]))

        return read

    def _disclose(self, node: Map, by_node: Mapping[int, Value]) -> Callable[[tuple, Any], SQLDisclosure]:
        from ..privacy.shapes import CELL_OPS
        from ..privacy.threshold import EXTREMES, SUMS

        op = AGGREGATES[self.config.aggregates[node.op].map]
        needs = self.needs
        graph = _Graph.of(node, by_node)
        inputs = [by_node[id(a)] for a in node.args]
        series = [v for v in inputs if isinstance(v, Col)]
        tables = [v for v in inputs if isinstance(v, Table)]
        views = [(None, series)] if not tables else [(str(n), [c, *series]) for n, c in tables[0].columns.items()]

        def used_in(view: list[Col], present: bool = True) -> list[str]:
            parts = sorted(graph.selected)
            for c in view if present else ():
                parts += [c.rows.cond, f"{c.sql} IS NOT NULL"]
            return parts

        reads: dict[str, Callable[[tuple, Any], Any]] = {"rows": self._count("TRUE")}
        if needs.judge:
            contributing = {
                (additive, present): [
                    self._count(_and(*used_in(view, present),
                                     *([view[0].rows.cond, self._nonzero(view[0])] if additive and view else [])))
                    for _, view in views
                ]
                for additive in (False, True) for present in (False, True)
            }
            reads["contributing"] = lambda row, extra: {
                key: [c(row, extra) for c in counts] for key, counts in contributing.items()
            }
            reads["complement"] = self._count(_and(*sorted(graph.present), _not(_and(*sorted(graph.selected)))))
            if op in ("min", "max") or node.op in EXTREMES:
                holders = {name: self._holders("max" if op == "max" else "min", view[0], _and(*used_in(view)))
                           for name, view in views if view}
                reads["holders"] = lambda row, extra: {name: h(row, extra) for name, h in holders.items()}
            # in the order of ``Disclosure.singled_out``: (node, kind, reads of its facts...); too many steps
            # to judge are refused before anything else is compiled (each costs a recomputation)
            steps = len(self._influence_candidates(node, by_node, graph)) > MAX_INFLUENCE
            checks: list[tuple[Any, ...]] = [(node, "steps", MAX_INFLUENCE)] if steps else \
                [(n, "list") for n in graph.lists]
            for f, dropped, scopes in [] if steps else graph.filters:
                checks += [(f, "filter", self._count(_and(*sorted(scope), _not(dropped))),
                            self._count(_and(*sorted(scope), dropped))) for scope in scopes]
            for n, scopes in [] if steps else graph.derived:
                value = by_node[id(n)]
                columns = list(value.columns.values()) if isinstance(value, Table) else [value]
                for scope in scopes:
                    checks += [(n, "derived", self._judge(c, scope, graph.raw[id(n)])) for c in columns]
            if node.op in _SIDE_BY_SIDE and not steps:
                used = _and(*sorted(graph.selected))
                numeric = [(a, v) for a, v in zip(node.args, inputs) if isinstance(v, Col) and v.kind in NUMERIC]
                checks += [(a, "ratio", self._ratio(x, y, used)) for (a, x), (_, y) in itertools.combinations(numeric, 2)]
                weights = self._weights(inputs, used, graph.raw[id(node)]) if node.op == "glm_step" else None
                checks += [(node, "weights", weights)] if weights is not None else []
            checks += [] if steps else self._influence(node, by_node, graph)

            def read_checks(row: tuple, extra: Any) -> list[tuple[Any, ...]]:
                return [(n, kind, *(read if isinstance(read, int) else read(row, extra) for read in reads_))
                        for n, kind, *reads_ in checks]

            reads["checks"] = read_checks
        if needs.contributions and (op in SUMS or node.op in SUMS):
            reads["contributions"] = self._contributions(inputs, _or(*[_and(*used_in(view)) for _, view in views]))
        value_counts = self._counts(inputs[0]) if op == "set" and isinstance(inputs[0], Col) else None
        person, bound, cells = self.person, needs.k, node.op in CELL_OPS

        def read(row: tuple, extra: Any) -> SQLDisclosure:
            facts = {name: r(row, extra) for name, r in reads.items()}
            facts["k"], facts["cells"] = bound, cells
            per_value = None
            if value_counts is not None:
                per_value = {e["key"]: int(e["value"]) for e in row[value_counts] or []}
            elif op == "set":
                per_value = {}
            return SQLDisclosure(node.op, facts.pop("rows"), person=person, facts=facts, value_counts=per_value)

        return read


Read = Callable[[tuple, Any], Any]


class _Followup:
    """The request's second statement: what needs another aggregate first (a mode, a median, sums per person).

    It reads the same layers as the first. ``_b`` holds, per row, the
    columns and conditions it reads (``_q0, _q1...``); ``_s`` is a first
    pass over them (medians, modes, extremes: ``_a0...``); a second pass
    over ``_b`` and ``_s`` computes what depends on those (``_e0...``).
    With a person key, ``_p`` has one row per person (and one per row
    without a key: a person of its own) with what the person has
    (``bool_or`` of conditions, sums, smallest and largest values:
    ``_t0...``), and ``_o0...`` aggregate it. Each pass serves every task
    of the request; only the persons' classes of a value need a subquery
    of their own.
    """

    def __init__(self, key: str | None) -> None:
        self._columns: dict[str, str] = {}
        self._first: dict[str, str] = {}
        self._second: dict[str, str] = {}
        self._person: dict[tuple[str, str], str] = {}  # (aggregate per person, value of a keyless row) -> name
        self._outer: dict[str, str] = {}
        self._selects: dict[str, int] = {}
        self._at: dict[str, int] = {}  # position of each pass's struct in the result row
        self.key = None if key is None else self.column(key)

    def column(self, expr: str) -> str:
        """``expr`` (over the last layer) as a column of ``_b``."""
        return self._columns.setdefault(expr, f"_q{len(self._columns)}")

    def first(self, aggregate: str) -> str:
        """``aggregate`` (over ``_b``) as a column of ``_s``, for the later passes."""
        return self._first.setdefault(aggregate, f"_a{len(self._first)}")

    def read_first(self, name: str) -> Read:
        return lambda row, extra: extra[self._at["first"]][name]

    def second(self, aggregate: str) -> Read:
        """``aggregate`` over ``_b`` and ``_s``."""
        name = self._second.setdefault(aggregate, f"_e{len(self._second)}")
        return lambda row, extra: extra[self._at["second"]][name]

    def per_person(self, aggregate: str, single: str) -> str:
        """A column of ``_p``: ``aggregate`` over a person's rows, or ``single`` for a row without a key."""
        return self._person.setdefault((aggregate, single), f"_t{len(self._person)}")

    def outer(self, aggregate: str) -> Read:
        """``aggregate`` over ``_p``."""
        name = self._outer.setdefault(aggregate, f"_o{len(self._outer)}")
        return lambda row, extra: extra[self._at["outer"]][name]

    def persons(self, cond: str) -> Read:
        """Persons with some row where ``cond`` (over ``_b`` and ``_s``) holds."""
        flag = self.per_person(f"bool_or({cond})", cond)
        return self.outer(f"count(CASE WHEN {flag} THEN 1 END)")

    def select(self, subquery: str) -> Read:
        """A scalar ``subquery`` over ``_b``, ``_s`` and ``_p``."""
        i = self._selects.setdefault(subquery, len(self._selects))
        return lambda row, extra: extra[self._at["selects"] + i]

    def statement(self, query: Query) -> str | None:
        if not (self._first or self._second or self._outer or self._selects):
            return None
        rows = "_b, _s" if self._first else "_b"
        ctes, selects = [], []
        if self._first:  # one row, materialized: every later pass reads it
            ctes.append(f"_s AS MATERIALIZED (SELECT {_pairs(self._first.items(), '{0} AS {1}')} FROM _b)")
            self._at["first"] = len(selects)
            selects.append(f"(SELECT struct_pack({', '.join(f'{n} := {n}' for n in self._first.values())}) FROM _s)")
        if self._person:
            key = self.key
            grouped = _pairs([(aggregate, name) for (aggregate, _), name in self._person.items()], "{0} AS {1}")
            single = _pairs([(value, name) for (_, value), name in self._person.items()], "{0} AS {1}")
            ctes.append(f"_p AS MATERIALIZED (SELECT {grouped} FROM {rows} WHERE {key} IS NOT NULL GROUP BY {key} "
                        f"UNION ALL SELECT {single} FROM {rows} WHERE {key} IS NULL)")
        if self._second:
            self._at["second"] = len(selects)
            selects.append(f"(SELECT struct_pack({_pairs(self._second.items(), '{1} := {0}')}) FROM {rows})")
        if self._outer:
            self._at["outer"] = len(selects)
            selects.append(f"(SELECT struct_pack({_pairs(self._outer.items(), '{1} := {0}')}) FROM _p)")
        self._at["selects"] = len(selects)
        return query.followup(list(self._columns.items()), ctes, [*selects, *self._selects])


def _pairs(fields: Iterable[tuple[str, str]], template: str) -> str:
    return ", ".join(template.format(expr, name) for expr, name in fields)


@dataclass
class _Graph:
    """``fedmed.server.disclosure._Graph`` as SQL: the same walk, each row set a set of conditions to AND."""

    selected: frozenset[str]  # rows passing every filter of the task
    present: frozenset[str]  # rows whose raw values (every column the task reads) are present
    raw: dict[int, frozenset[str]]  # per node: raw values below it present
    filters: list[tuple[Filter, str, list[frozenset[str]]]]  # (filter, rows it drops, scopes)
    derived: list[tuple[Node, list[frozenset[str]]]]  # (row-wise intermediate, scopes)
    lists: list[Node]  # per-row list constants
    order: list[Node]  # every node of the task, children first

    @classmethod
    def of(cls, root: Map, by_node: Mapping[int, Value]) -> "_Graph":
        order = list(walk([root]))
        raw: dict[int, frozenset[str]] = {}
        dropped: dict[int, str] = {}
        passes: dict[int, str] = {}  # id(filter) -> rows it does not drop
        lists: list[Node] = []
        for node in order:
            value = by_node.get(id(node))
            present = frozenset().union(*(raw[id(c)] for c in node.children if not isinstance(c, Literal)))
            if isinstance(node, Column) and isinstance(value, Col):  # raw values; rows it lacks count as present
                present |= {_or(_not(value.rows.cond), f"({value.sql} IS NOT NULL)")}
            raw[id(node)] = present
            if isinstance(node, Filter):
                before, after = _rows_of(by_node.get(id(node.arg))), _rows_of(value)
                dropped[id(node)] = _and(before, _not(after))
                passes[id(node)] = _or(_not(before), after)
            if isinstance(node, Elementwise) and node.op in _POSITIONAL and any(
                isinstance(c, Literal) and isinstance(c.value, (list, tuple)) for c in node.args
            ):
                lists.append(node)
        present = raw[id(root)]

        def scope(excluded: frozenset[int]) -> frozenset[str]:
            return present | {p for f, p in passes.items() if f not in excluded}

        under = _under_masks(root)
        filters = [(node, dropped[id(node)], [scope(ex | {id(node)}) for ex in under[id(node)]])
                   for node in order if isinstance(node, Filter)]
        derived = [(node, [scope(ex) for ex in under[id(node)]]) for node in order
                   if isinstance(node, Elementwise) and isinstance(by_node.get(id(node)), (Col, Table))
                   and not _judged_by_cells(node, root)]
        return cls(frozenset(passes.values()), present, raw, filters, derived, lists, order)


def _rows_of(value: Value) -> str:
    return value.rows.cond if isinstance(value, (Col, Table)) else "TRUE"


def _unavailable(op: str, rows_index: int, reason: str, person: str | None) -> Callable[[tuple, Any], SQLDisclosure]:
    return lambda row, extra: SQLDisclosure(op, row[rows_index], person=person, unavailable=reason)


builtin_range = range


def _name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


# -- schema (fedmed.api.schema) -------------------------------------------------------------------

#: pandas' dtype of a source column by its DuckDB type: what ``pd.read_parquet`` gives for the same
#: Parquet column, so that a DuckDB fragment and a pandas fragment of the same data answer alike.
PANDAS_DTYPES = {
    "BIGINT": "int64", "INTEGER": "int32", "SMALLINT": "int16", "TINYINT": "int8",
    "UBIGINT": "uint64", "UINTEGER": "uint32", "USMALLINT": "uint16", "UTINYINT": "uint8",
    "DOUBLE": "float64", "FLOAT": "float32", "REAL": "float32", "BOOLEAN": "bool", "VARCHAR": "str",
    "TIMESTAMP": "datetime64[us]", "TIMESTAMP_NS": "datetime64[ns]", "TIMESTAMP_MS": "datetime64[ms]",
    "TIMESTAMP_S": "datetime64[s]", "NULL": "float64", '"NULL"': "float64",
}
#: pandas' dtype of a computed column by its kind: (plain, nullable extension dtype).
KIND_DTYPES = {INT: ("int64", "Int64"), FLOAT: ("float64", "Float64"), BOOL: ("bool", "boolean"),
               STR: ("str", "string"), OTHER: ("object", "object")}


def pandas_dtype(x: Col, sql_type: str | None) -> str:
    """The dtype pandas would show for ``x``: by its DuckDB type for a source column (``sql_type``),
    by its kind for a computed one. DuckDB types no nullability, so a Parquet column written from
    pandas' ``Int64`` answers ``int64``."""
    if sql_type is not None:
        t = sql_type.upper()
        if t.startswith("ENUM"):
            return "category"
        if t.startswith("DECIMAL") or t == "HUGEINT" or t == "UHUGEINT":
            return "float64"  # as DuckDB hands them to pandas
        return PANDAS_DTYPES.get(t, "object")
    plain, nullable = KIND_DTYPES[x.kind]
    return nullable if x.nullable else plain


def compile_request(nodes: Sequence[Node], outputs: Sequence[int], config: Config, *, source: str,
                    columns: Sequence[SourceColumn], needs: Needs | None = None, person: str | None = None,
                    ordinal: str | None = None) -> Program:
    """The query (and the disclosure's second statement, if any) for ``outputs`` of a request over a fragment."""
    compiler = Compiler(source, columns, config, needs=needs, person=person, ordinal=ordinal)
    return compiler.compile(nodes, outputs)
