"""Elementwise operations as SQL: one method per operation (``_op_<name>``) or per family.

Each writes a new column of a CTE layer with pandas' (numpy's) semantics:
arithmetic that wraps around or turns missing as numpy's does (``_try``),
division by zero as IEEE floats, comparisons and ``fillna``/``isin``/
``astype``... as pandas. Dates are ``TIMESTAMP`` columns (kind ``TIME``),
read from text by ``binary.ISO_DATE`` as the pandas engine reads them; a
date minus a date is whole microseconds (kind ``DELTA``), which ``dt_days``
floors exactly. Work on constants only is computed by the configured
function itself (``_constant``). ``ElementwiseCompiler`` is one part of
``Compiler`` (``fedmed.fragments.sql.compiler``).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ...errors import ServerError, TaskFailed
from ...ops import binary
from ...server.evaluate import _REPEATING, MAX_FILL_TEXT, _bounded
from .values import (BOOL, DAY_US, DELTA, FLOAT, FLOAT_HALF, FLOAT_INF, FLOAT_NAN, FLOAT_NINF, FLOAT_ONE, FLOAT_ZERO,
                     INT, LIST, NULL, NUMERIC, OTHER, STR, TIME, Col, Const, Operand, Rows, Table, Value,
                     _describe_kind, _nan_null, _or, _refuse_text, constant_kind, float_literal, literal, quote_string)


#: Largest constant (characters of text, elements of a list) made from constants in a request.
MAX_CONSTANT = 100_000


def _wrapped(huge: str) -> str:
    """A HUGEINT ``huge`` as numpy's int64 arithmetic has it: wrapped around into 64 bits (NULL where it is
    beyond even a HUGEINT: a source column of 128 bits, which pandas cannot hold anyway)."""
    return _try(f"CAST((({huge} + {2**63}) % {2**64} + {2**64}) % {2**64} - {2**63} AS BIGINT)")


def _try(expr: str) -> str:
    """``expr``, NULL on the rows where DuckDB raises (an integer overflow, where numpy wraps around):
    whether a query fails must not depend on the rows (see ``fedmed.ops.binary``). TRY costs about
    a nanosecond per row and wrapped operation (DuckDB 2.0), so only integer arithmetic that can
    overflow is wrapped."""
    return f"TRY({expr})"


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
    binary.to_datetime: "to_datetime", binary.dt_year: "dt_year", binary.dt_month: "dt_month",
    binary.dt_days: "dt_days",
}

#: Number of operands each operation takes (min, max).
ARITY = {
    **{op: (2, 2) for op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "eq", "ne", "lt", "le",
                             "gt", "ge", "and", "or", "fillna", "isin", "astype", "dummy")},
    **{op: (1, 1) for op in ("neg", "abs", "invert", "isna", "notna", "log", "exp", "sqrt", "to_numeric",
                             "to_datetime", "dt_year", "dt_month", "dt_days")},
    "clip": (1, 3), "round": (1, 2),
}

SYMBOL = {"add": "+", "sub": "-", "mul": "*", "eq": "=", "ne": "<>", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
PYTHON_SYMBOL = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
COMPARISONS = {"eq", "ne", "lt", "le", "gt", "ge"}
#: Operations compiled by one method per family (``_compare``, ``_arithmetic``, ``_logical``).
FAMILIES = {**{op: "compare" for op in COMPARISONS}, **{op: "arithmetic" for op in ("add", "sub", "mul")},
            "and": "logical", "or": "logical"}


def _refuse_repeating(op: str, args: Sequence[Value]) -> None:
    """``fedmed.server.evaluate._bounded`` on kinds: a repeating operation on text is refused, whatever else
    the operands are. A column of nothing but missing values counts as text: pandas holds it as objects."""
    if op not in _REPEATING:
        return
    for a in args:
        cols = a.columns.values() if isinstance(a, Table) else [a] if isinstance(a, Col) else []
        if (isinstance(a, Const) and a.kind == STR) or any(c.kind == STR or c.untyped for c in cols):
            raise TaskFailed(f"{op} is not defined for text values")


class ElementwiseCompiler:
    """The ``Compiler``'s elementwise operations: each returns the result's ``Col`` (or ``Table``, ``Const``)."""

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
                                                   "to_numeric", "dummy", "log", "exp", "sqrt", "to_datetime",
                                                   "dt_year", "dt_month", "dt_days"):
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
        if kinds & {TIME, DELTA}:
            return self._dates_arithmetic(op, x, y, rows, level)
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

    def _dates_arithmetic(self, op: str, x: Operand, y: Operand, rows: Rows, level: int) -> Col:
        """A date minus a date: the difference in whole microseconds (pandas' ``Timedelta``); nothing else."""
        if op == "sub" and x.kind == TIME and y.kind == TIME:
            return self._column(f"(epoch_us({x.sql}) - epoch_us({y.sql}))", level, rows, DELTA)
        raise TaskFailed(f"unsupported operand type(s) for {SYMBOL[op]}: '{_describe_kind(x.kind)}' and "
                         f"'{_describe_kind(y.kind)}' (this fragment subtracts a date from a date, nothing else)")

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
        if TIME in kinds and STR in kinds:  # pandas reads a text constant compared with dates as a date
            if not all(v.is_const for v in (x, y) if v.kind == STR):  # and a text column with its own parser
                raise TaskFailed("comparing dates with a text column is not supported by this fragment: convert "
                                 "the text with .to_datetime() first")
            x, y = (self._date_constant(op, v) if v.kind == STR else v for v in (x, y))
            kinds = {x.kind, y.kind}
            if NULL in kinds:
                return Col("TRUE" if op == "ne" else "FALSE", 0, rows, BOOL)
        if kinds == {DELTA, STR}:  # pandas reads the text as a Timedelta ("3 days"): no such constants here
            raise TaskFailed("comparing differences of dates with text is not supported by this fragment: compare "
                             "whole days, (a - b).dt.days, with a number")
        if kinds & {TIME, DELTA} and len(kinds) > 1:  # a date is neither a number nor text: equal to none
            if op in ("eq", "ne"):
                return Col("TRUE" if op == "ne" else "FALSE", 0, rows, BOOL)
            raise TaskFailed(f"Invalid comparison between dtype={_describe_kind(x.kind)} and "
                             f"{_describe_kind(y.kind)}")
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

    @staticmethod
    def _date_constant(op: str, text: Operand) -> Operand:
        """A text constant compared with dates, read as pandas reads it there (``pd.Timestamp(text)``); text that
        is not a date (or has a time zone, which naive dates cannot be compared with) equals no date."""
        try:
            stamp = pd.Timestamp(text.const)
        except (TypeError, ValueError, OverflowError):
            stamp = None
        if stamp is None or stamp is pd.NaT or stamp.tzinfo is not None:
            if op in ("eq", "ne"):
                return Operand("NULL", NULL, const=None, is_const=True)
            raise TaskFailed(f"Invalid comparison between dtype=datetime and str (the text {text.const[:40]!r} "
                             "is not a date)")
        return Operand(literal(stamp), TIME, const=stamp, is_const=True)

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
        if kind in (TIME, DELTA):
            raise TaskFailed("astype does not convert dates; take numbers of them with .dt.year, .dt.month, "
                             "or .dt.days of a difference")
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

    # -- dates ---------------------------------------------------------------------------------------
    def _op_to_datetime(self, a: Col) -> Col:
        """``binary.to_datetime``: dates kept, text read when it matches ``binary.ISO_DATE`` (an offset converted
        to UTC), anything else missing; numbers refused, as the pandas engine does."""
        if a.kind == TIME:
            return a
        if a.untyped:  # nothing but missing values: pandas holds them as objects, all NaT
            return self._column("CAST(NULL AS TIMESTAMP)", a.depth, a.rows, TIME)
        if a.kind in NUMERIC:
            raise TaskFailed("to_datetime reads text as dates; this column holds numbers")
        if a.kind != STR:
            raise TaskFailed("to_datetime is not supported for values of this type by this fragment")
        text, at = self.query.name(f"trim({a.sql}, {quote_string(binary.DATE_SPACES)})", a.depth)
        offset = r"[+-][0-9]{2}:[0-9]{2}$"
        minutes = (f"(CASE WHEN regexp_matches({text}, '{offset}') THEN (CASE WHEN substr({text}, -6, 1) = '-' "
                   f"THEN -1 ELSE 1 END) * (CAST(substr({text}, -5, 2) AS BIGINT) * 60 + "
                   f"CAST(substr({text}, -2, 2) AS BIGINT)) ELSE 0 END)")
        local = f"regexp_replace({text}, '(Z|[+-][0-9]{{2}}:[0-9]{{2}})$', '')"
        expr = (f"(CASE WHEN regexp_full_match({text}, {quote_string(binary.ISO_DATE)}) "
                f"THEN TRY_CAST({local} AS TIMESTAMP) - to_minutes({minutes}) END)")
        return self._column(expr, at, a.rows, TIME)

    def _date_part(self, part: str, a: Col) -> Col:
        if a.kind != TIME:
            raise TaskFailed(f"dt.{part} needs dates: convert text with .to_datetime() first")
        return self._column(f"{part}({a.sql})", a.depth, a.rows, INT, True)

    def _op_dt_year(self, a: Col) -> Col:
        return self._date_part("year", a)

    def _op_dt_month(self, a: Col) -> Col:
        return self._date_part("month", a)

    def _op_dt_days(self, a: Col) -> Col:
        """Whole days of a difference, rounded down as pandas' ``Timedelta.days`` (-14.5 days is -15), exactly:
        the difference is whole microseconds, floored by integer arithmetic (``%`` keeps the dividend's sign)."""
        if a.kind != DELTA:
            raise TaskFailed("dt.days needs a difference of two dates, such as (data['exit'] - data['entry']).dt.days")
        x, day = a.sql, DAY_US
        return self._column(f"(({x} - (({x} % {day}) + {day}) % {day}) // {day})", a.depth, a.rows, INT, True)
