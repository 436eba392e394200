"""Aggregates as SQL: one method per aggregate (``_agg_<name>``), each a few expressions of the final ``SELECT``.

Each method selects its aggregate expressions over ``CASE WHEN <rows>
THEN <value> END`` and returns how to read the map's wire value from the
result row, as the pandas map (``fedmed.ops.private``) would send it.
``AggregateCompiler`` is one part of ``Compiler``
(``fedmed.fragments.sql.compiler``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from ...errors import OperationError, TaskFailed
from ...ops import private
from ...ops.columns import COLUMNS
from .program import Output
from .query import LAST_LAYER
from .schema import pandas_dtype
from .values import (BOOL, DELTA, FLOAT, FLOAT_INF, FLOAT_ONE, FLOAT_ZERO, INT, NUMERIC, OTHER, TIME, Col, Const,
                     Operand, Table, Value, _and, _count_rows, _describe_kind, _favg, _fsum, _refuse_text, _when,
                     float_literal)


#: Most thresholds of one ``count_below`` (and bins of one histogram): the pandas path's ``MAX_BINS``.
MAX_THRESHOLDS = private.MAX_BINS
#: Most columns of one ``comoment_matrix`` or ``glm_step`` (the answer grows with their square).
MAX_COLUMNS = 200


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


builtin_range = range


class AggregateCompiler:
    """The ``Compiler``'s aggregates: ``_map`` dispatches a map node to its ``_agg_<name>``."""

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
        if x.kind in (TIME, DELTA) and op not in ("len", "count", "schema", *(("min", "max") if x.kind == TIME else ())):
            raise TaskFailed(f"{name} of {'dates' if x.kind == TIME else 'differences of dates'} is not supported by "
                             "this fragment: take numbers of them first (.dt.year, .dt.month, or .dt.days of a "
                             "difference)")
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
        if x.kind == TIME:  # a date as the pandas map gives it
            return lambda row: None if row[i] is None else pd.Timestamp(row[i])
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
        if b.kind in (OTHER, TIME, DELTA):
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
        if any(k.kind in (OTHER, TIME, DELTA) for k in keys):
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
