"""The request's two SQL statements under construction: ``Query`` and ``_Followup``.

``Query`` holds the chain of CTE layers of named columns (``t0`` reads the
source) and the aggregate expressions of the final ``SELECT``: the first
statement, which computes every output. ``_Followup`` collects what the
disclosure needs another aggregate for first (a mode, a median, sums per
person) and writes it as a second statement over the same layers.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Sequence

from .values import SourceColumn


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
