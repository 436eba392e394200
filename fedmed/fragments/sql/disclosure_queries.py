"""The disclosure queries: the aggregates that answer what a privacy policy asks about each result.

``fedmed.server.disclosure`` judges evaluated values; here each fact it
uses is a condition over the rows (the same graph walk, ``_Graph``) and
each number it derives an aggregate, counted in the first statement or in
the second (``_Followup``). ``DisclosureCompiler._disclose`` compiles one
map output's and returns how to read its ``SQLDisclosure``.
``DisclosureCompiler`` is one part of ``Compiler``
(``fedmed.fragments.sql.compiler``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ...expr.node import Node, walk
from ...expr.rowwise import Column, Elementwise, Filter, Fragment as FragmentNode, Literal, Map
from ...server.disclosure import (_CELLS_AND_EXTREMES, _POSITIONAL, _SIDE_BY_SIDE, MAX_INFLUENCE, _judged_by_cells,
                                  _under_masks)
from .aggregates import AGGREGATES
from .disclosure import Contributions, Judged, SQLDisclosure
from .elementwise import _wrapped
from .query import Read
from .values import (BOOL, DAY_US, DELTA, FLOAT, FLOAT_HALF, FLOAT_INF, FLOAT_ONE, FLOAT_ZERO, INT, NUMERIC, TIME, Col,
                     Const, Operand, Rows, Table, Value, _and, _count_rows, _nan_null, _not, _or, _when, float_literal)


#: Most steps whose influence is counted by person in the second statement (``Compiler._distinct``).
FEW_STEPS = 8

#: Where an influence move puts a date and a difference of dates: ``disclosure._moves``' constants (far future and
#: far past; 10,000 years either way, in days).
FAR_DATES = ("9999-12-31", "0001-01-01")
#: And a number: ``disclosure.FAR_INTEGERS`` and ``FAR_NUMBERS`` (the same constants, so that both engines decide alike).
FAR_INTEGERS = (2**20, -(2**20))  # small enough that a square or a cube of it stays in 64 bits on both engines
FAR_NUMBERS = (1e15, -1e15)
FAR_DAYS = 3_652_500

#: Integers that an influence move (``v +- 10 * (|v| + 1)``) takes nowhere near 64 bits' overflow.
SMALL = 838_000_000_000_000_000


class DisclosureCompiler:
    """The ``Compiler``'s disclosure queries (compiled only when a policy needs them: ``Compiler.needs``)."""

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
        # as Disclosure._finite: an infinity the arithmetic made marks a row as a missing value does
        finite = f"{value.sql} IS NOT NULL" + (f" AND isfinite({value.sql})" if value.kind == FLOAT else "")
        present = _and(within, f"({finite})")
        nulled = self._count(_and(within, *sorted(raw), f"NOT ({finite})"))
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
        down, keeping its type: integers stay integers, wrapping around on overflow as numpy's do; dates and
        differences of dates set to ``FAR_DATES`` / ``FAR_DAYS`` either way)."""
        if value.kind == TIME:
            return [self._column(f"(CASE WHEN {value.sql} IS NULL THEN NULL ELSE TIMESTAMP '{far}' END)",
                                 value.depth, value.rows, TIME) for far in FAR_DATES]
        if value.kind == DELTA:
            return [self._column(f"(CASE WHEN {value.sql} IS NULL THEN NULL ELSE {sign}{FAR_DAYS * DAY_US} END)",
                                 value.depth, value.rows, DELTA) for sign in ("", "-")]
        if value.kind == BOOL:
            return [self._column(f"(NOT {value.sql})", value.depth, value.rows, BOOL, value.nullable)]
        if value.kind == INT:  # disclosure.FAR_INTEGERS: a constant on every row, missing kept
            return [self._column(f"(CASE WHEN {value.sql} IS NULL THEN NULL ELSE CAST({far} AS BIGINT) END)",
                                 value.depth, value.rows, INT, value.nullable) for far in FAR_INTEGERS]
        if value.kind != FLOAT:
            return []
        return [self._column(f"(CASE WHEN {value.sql} IS NULL THEN NULL ELSE CAST({far!r} AS DOUBLE) END)",
                             value.depth, value.rows, FLOAT, signed=False) for far in FAR_NUMBERS]

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
        from ...privacy.shapes import CELL_OPS
        from ...privacy.threshold import EXTREMES, SUMS

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
