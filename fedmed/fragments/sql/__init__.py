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

The compiler is split by what it compiles; this package re-exports the
names other modules use:

- ``values``: kinds of values, SQL literals and shared snippets, and what
  a node compiles to (``Rows``, ``Col``, ``Table``, ``Const``, ``Operand``);
- ``query``: the two statements under construction (``Query``, ``_Followup``);
- ``elementwise``: elementwise operations; ``filters``: row filters;
- ``aggregates``: one method per aggregate; ``schema``: pandas dtypes;
- ``disclosure``: ``SQLDisclosure`` and the facts behind it;
  ``disclosure_queries``: the aggregates that compute those facts;
- ``program``: ``Program`` and ``Output``; ``compiler``: ``Compiler``,
  which walks the node table with the parts above, and ``compile_request``.
"""

from __future__ import annotations

from ...server.evaluate import MAX_FILL_TEXT  # the fillna limit the compiler enforces (tests import it from here)
from .aggregates import AGGREGATES, EXTRA_ARGUMENTS, MAX_COLUMNS, MAX_THRESHOLDS, builtin_range
from .compiler import Compiler, compile_request
from .disclosure import Contributions, Judged, Needs, SQLDisclosure, ValueCounts
from .disclosure_queries import FEW_STEPS, SMALL
from .elementwise import (ARITY, COMPARISONS, ELEMENTWISE, FAMILIES, MAX_CONSTANT, PANDAS_NUMBER, PYTHON_SYMBOL, SPACES,
                          SYMBOL)
from .program import Output, Program
from .query import ALIAS, LAST_LAYER, Query, Read
from .schema import KIND_DTYPES, PANDAS_DTYPES, pandas_dtype
from .values import (ALL, BOOL, FLOAT, FLOAT_HALF, FLOAT_INF, FLOAT_NAN, FLOAT_NINF, FLOAT_ONE, FLOAT_ZERO, INT, LIST,
                     MARKER, NAN_LITERAL, NULL, NUMERIC, OTHER, STR, Col, Const, Operand, Rows, SourceColumn, Table, Value,
                     constant_kind, float_literal, kind_of_type, literal, quote_identifier, quote_string, read_expression)

__all__ = [
    "INT", "FLOAT", "BOOL", "STR", "OTHER", "NUMERIC", "NULL", "LIST", "MARKER", "MAX_THRESHOLDS", "MAX_COLUMNS",
    "MAX_CONSTANT", "MAX_FILL_TEXT", "FLOAT_NAN", "FLOAT_INF", "FLOAT_NINF", "FLOAT_ONE", "FLOAT_ZERO", "FLOAT_HALF",
    "NAN_LITERAL", "quote_identifier", "quote_string", "float_literal", "literal", "constant_kind", "kind_of_type",
    "read_expression", "SourceColumn", "Rows", "ALL", "Col", "Table", "Const", "Value", "FEW_STEPS", "SMALL",
    "LAST_LAYER", "ALIAS", "Query", "SPACES", "PANDAS_NUMBER", "ELEMENTWISE", "ARITY", "SYMBOL", "PYTHON_SYMBOL",
    "COMPARISONS", "FAMILIES", "AGGREGATES", "EXTRA_ARGUMENTS", "Operand", "ValueCounts", "Contributions", "Needs",
    "Judged", "SQLDisclosure", "Output", "Program", "Compiler", "Read", "builtin_range", "PANDAS_DTYPES",
    "KIND_DTYPES", "pandas_dtype", "compile_request",
]
