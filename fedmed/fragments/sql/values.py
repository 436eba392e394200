"""The compiler's vocabulary: kinds of values, SQL constants and literals, and what a node compiles to.

A node's value is a ``Col`` (an SQL expression over the rows ``Rows``), a
``Table`` (named columns over one subset of rows), a ``Const`` or a
``Failure``; ``SourceColumn`` is how layer ``t0`` reads a column of the
fragment. The small functions here write the SQL every part of the
compiler shares (``_and``, ``_when``, ``_fsum``...), and ``_refuse_text``
refuses text where numbers are needed, by kinds, as the pandas engine does.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ...errors import TaskFailed
from ...server.evaluate import NEEDS_NUMBERS, ORDERING, text_message


# -- kinds of values -----------------------------------------------------------------------

INT, FLOAT, BOOL, STR, OTHER = "int", "float", "bool", "str", "other"
NUMERIC = {INT, FLOAT, BOOL}
#: Dates (a ``TIMESTAMP``) and differences of dates (whole microseconds, a ``BIGINT``: exact where
#: DuckDB's ``INTERVAL`` would count months and days apart).
TIME, DELTA = "time", "delta"
#: Source types read as dates (as a ``TIMESTAMP``, microseconds: what ``to_datetime`` makes of text).
TIME_TYPES = ("TIMESTAMP", "TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S", "TIMESTAMP_US", "DATETIME", "DATE")
#: Microseconds in a day.
DAY_US = 86_400_000_000
#: Kinds of constants that are not column kinds.
NULL, LIST = "null", "list"

#: Prefix of the messages the query itself raises with ``error(...)``; only those reach the client.
MARKER = "fedmed: "


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
    if value is None or value is pd.NaT:
        return "NULL"
    if isinstance(value, (datetime.date, np.datetime64)):  # a date the request made (``to_datetime`` of text)
        return f"CAST('{pd.Timestamp(value).isoformat()}' AS TIMESTAMP)"
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
    if value is None or value is pd.NaT:
        return NULL
    if isinstance(value, pd.Timestamp) and value.tzinfo is None:
        return TIME
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
    if t in TIME_TYPES:
        return TIME
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
    if kind == TIME and t != "TIMESTAMP":
        return f"CAST({column} AS TIMESTAMP)"
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


def _positive_zero(expr: str) -> str:
    """A float without -0.0 (``fedmed.server.evaluate._positive_zero``): ``-0.0 + 0.0`` is ``+0.0`` in IEEE
    arithmetic, every other value (and NULL) is unchanged. -0.0 equals 0.0 to every comparison and count,
    yet ``1 / -0.0`` is ``-inf``: one row's sign would carry past every rule that looks at values.
    (DuckDB keeps ``x + 0.0`` as written: its optimizer does not drop the addition, see the tests.)"""
    return f"({expr} + {FLOAT_ZERO})"


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
    return {INT: "int", FLOAT: "float", BOOL: "bool", STR: "str", NULL: "NoneType", LIST: "list", TIME: "datetime",
            DELTA: "timedelta"}.get(kind, kind)
