"""Elementwise operations: row by row, on the server, never exposed to the client.

Each takes pandas Series (or scalars) and returns a Series of the same rows,
so every operation is vectorised. Python's operators already do the right
thing on Series, including pandas' alignment and missing-value rules.

No operation may fail because of the values it meets, and none may choose
its result's type from them: either would tell a client something about
the rows before any privacy policy sees a result (a query that fails only
when some row holds a zero is a one-bit answer about that row). Where
pandas or numpy would raise for some values (an integer to a negative
power, ``astype("int")`` of 2.5 or of infinity) those rows come out
missing; where pandas would pick a type from the values (``fillna`` of a
number column with text gives text only where something was missing), the
operation decides from the types alone, or refuses whatever the values. The
evaluator (``fedmed.server.evaluate``) turns any failure these rules missed,
and any failure of a server owner's own function, into missing rows too.
"""

from __future__ import annotations

import datetime as dt
import operator
from typing import Any

import numpy as np
import pandas as pd

from ..errors import OperationError

add = operator.add
sub = operator.sub
mul = operator.mul
truediv = operator.truediv


def floordiv(x: Any, y: Any) -> Any:
    """``x // y``; integers (or booleans) divided by a column give floats, whether or not it holds a zero.

    pandas gives floats (``inf``, ``nan``) only when some divisor is 0: the
    type of the result would tell whether one is.
    """
    return _float_if_divided_by_rows(operator.floordiv(x, y), x, y)


def mod(x: Any, y: Any) -> Any:
    """``x % y``; integers modulo a column give floats, as ``floordiv``."""
    return _float_if_divided_by_rows(operator.mod(x, y), x, y)


def _float_if_divided_by_rows(result: Any, x: Any, y: Any) -> Any:
    if isinstance(y, pd.Series) and _is_integer(x, True) and _is_integer(y, True) and isinstance(result, pd.Series):
        return result.astype("Float64" if _is_nullable(result) else "float64")
    return result


def pow(x: Any, y: Any) -> Any:
    """``x ** y``; an integer to a negative integer power is missing (numpy refuses to compute it).

    An integer base with integer exponents that are a column, or a negative
    constant, gives nullable integers (``Int64``) whatever the exponents are.
    """
    if isinstance(x, pd.Series) and isinstance(y, pd.Series) and not x.index.equals(y.index):
        x, y = x.align(y)  # as pandas would: rows one side lacks are missing (floats, then)
    integers = _is_integer(x, boolean=True) and _is_integer(y)
    if integers and isinstance(y, pd.Series):
        negative = (y < 0).fillna(False).astype(bool)
        some = bool(negative.any())  # only saves work: the result's type is Int64 either way
        power = operator.pow(x, y.where(~negative, 0) if some else y)
        if not isinstance(power, pd.Series):
            power = pd.Series(power, index=y.index, name=y.name)
        return power.astype("Int64").mask(negative) if some else power.astype("Int64")
    if integers and isinstance(x, pd.Series) and y < 0:  # a negative constant: no row has a power
        return pd.Series(pd.NA, index=x.index, dtype="Int64", name=x.name)
    return operator.pow(x, y)


def _is_integer(value: Any, boolean: bool = False) -> bool:
    """An integer column (numpy's or pandas' nullable one) or an integer constant; booleans with ``boolean``."""
    if isinstance(value, pd.Series):
        return pd.api.types.is_integer_dtype(value.dtype) or (boolean and pd.api.types.is_bool_dtype(value.dtype))
    if isinstance(value, (bool, np.bool_)):
        return boolean
    return isinstance(value, (int, np.integer))


def _is_nullable(x: pd.Series) -> bool:
    return isinstance(x.dtype, pd.api.extensions.ExtensionDtype)


neg = operator.neg
abs = operator.abs
eq = operator.eq
ne = operator.ne
lt = operator.lt
le = operator.le
gt = operator.gt
ge = operator.ge
and_ = operator.and_
or_ = operator.or_
invert = operator.invert


# -- missing values, membership, bounds --------------------------------------


def isna(x: pd.Series) -> pd.Series:
    """True where the value is missing (NaN or None)."""
    return x.isna()


def notna(x: pd.Series) -> pd.Series:
    """True where the value is present."""
    return x.notna()


def fillna(x: pd.Series, value: Any) -> pd.Series:
    """Missing values replaced by ``value``: a number in a number column, text in a text column,
    a boolean in a boolean one (any value in a column of mixed Python objects).

    Other pairs are refused whatever the rows hold: pandas would change the
    column's type only when it has a missing value to fill, or fail only
    then. Integers (nullable) filled with a fraction become floats.
    """
    if value is None or isinstance(value, (list, tuple, dict)):
        raise OperationError("fillna needs one value (a number, text or boolean) or a column")
    have, fill = _kind(x), _kind(value)
    if have != "object" and fill != "object" and have != fill:
        raise OperationError(f"fillna cannot fill {have} values with {fill} ones")
    if have == "number" and _is_nullable(x) and pd.api.types.is_integer_dtype(x.dtype) and not _is_integer(value):
        x = x.astype("Float64")
    return x.fillna(value)


def _kind(value: Any) -> str:
    """``number``, ``bool``, ``text``, ``time`` or ``object`` (anything else): what ``fillna`` may combine."""
    if isinstance(value, pd.Series):
        dtype = value.dtype
        if pd.api.types.is_bool_dtype(dtype):
            return "bool"
        if dtype.kind in "mM":
            return "time"
        if pd.api.types.is_numeric_dtype(dtype):
            return "number"
        if pd.api.types.is_string_dtype(dtype) and dtype != object:
            return "text"
        return "object"
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, float, np.number)):
        return "number"
    if isinstance(value, str):
        return "text"
    return "object"


def isin(x: pd.Series, values: list[Any]) -> pd.Series:
    """True where the value is one of ``values``."""
    return x.isin(values)


def clip(x: pd.Series, lower: Any = None, upper: Any = None) -> pd.Series:
    """Values limited to ``[lower, upper]`` (either may be None).

    Nullable integers clipped to a fraction become floats first: pandas
    fails only when some value actually needs clipping.
    """
    if _is_nullable(x) and pd.api.types.is_integer_dtype(x.dtype) and any(
        isinstance(b, (float, np.floating)) or (isinstance(b, pd.Series) and not _is_integer(b)) for b in (lower, upper)
    ):
        x = x.astype("Float64")
    return x.clip(lower, upper)


# -- numeric functions --------------------------------------------------------
# numpy's ufuncs keep the Series and give nan (log of a negative) or -inf
# (log of 0) as pandas does; the warnings are noise on a server.


def log(x: pd.Series) -> pd.Series:
    """Natural logarithm."""
    with np.errstate(all="ignore"):
        return np.log(x)


def exp(x: pd.Series) -> pd.Series:
    """Exponential."""
    with np.errstate(all="ignore"):
        return np.exp(x)


def sqrt(x: pd.Series) -> pd.Series:
    """Square root."""
    with np.errstate(all="ignore"):
        return np.sqrt(x)


def round(x: pd.Series, decimals: int = 0) -> pd.Series:
    """Values rounded to ``decimals`` places (half to even, as numpy)."""
    return x.round(decimals)


#: The type names ``astype`` accepts. Nullable pandas types keep missing
#: values missing (numpy's ``bool`` would turn NaN into True).
DTYPES = {"float": "float64", "int": "Int64", "bool": "boolean", "str": "string"}


def astype(x: pd.Series, dtype: str) -> pd.Series:
    """Values converted to ``"float"``, ``"int"``, ``"bool"`` or ``"str"``; missing where one cannot be.

    pandas refuses a whole column for one value it cannot convert (2.5 or
    infinity to ``int``, 3 to ``bool``, ``"n/a"`` to ``float``): here that
    value becomes missing. Text converts to numbers as ``pd.to_numeric``
    reads it; to ``bool`` only 0 and 1 (as numbers or text) convert.
    """
    if dtype not in DTYPES:
        raise OperationError(f"astype accepts {sorted(DTYPES)}, not {dtype!r}")
    if _kind(x) == "time":  # as text, pandas writes the times of day only when some value has one
        raise OperationError("astype does not convert dates; take numbers of them with .dt.year, .dt.month, "
                             "or .dt.days of a difference")
    try:
        return x.astype(DTYPES[dtype])
    except (TypeError, ValueError, OverflowError, ArithmeticError):
        if isinstance(x, pd.DataFrame):
            return pd.DataFrame({c: astype(x.iloc[:, i], dtype) for i, c in enumerate(x.columns)}, index=x.index)
        return _convert(x, dtype)


def _convert(x: pd.Series, dtype: str) -> pd.Series:
    """``astype`` for a column pandas would refuse: each value that cannot be converted is missing."""
    if dtype == "str":
        return x.astype(object).map(lambda v: v if v is None or v is pd.NA else str(v)).astype(DTYPES[dtype])
    numbers = x if pd.api.types.is_numeric_dtype(x.dtype) else pd.to_numeric(x.astype(object), errors="coerce")
    values = pd.Series(numbers.to_numpy(dtype="float64", na_value=np.nan), index=x.index, name=x.name)
    if dtype == "float":
        return values
    if dtype == "bool":
        return values.where(values.isin([0.0, 1.0])).astype("boolean")
    with np.errstate(invalid="ignore"):
        whole = np.isfinite(values) & (values == np.trunc(values)) & (values >= -(2.0**63)) & (values < 2.0**63)
    return values.where(whole).astype("Int64")


def to_numeric(x: pd.Series) -> pd.Series:
    """Values read as numbers, as ``pd.to_numeric(x, errors="coerce")``: text that is not a number is missing.

    This is how a column that loaded as text because a few values are not
    numbers ("unknown", ">89") becomes numbers again: ``" 27.5 "`` is
    27.5, ``"unknown"`` is missing. Numbers and booleans are kept as they
    are. Text and Python objects always become ``float64``, where pandas
    gives ``int64`` when every value happens to be a whole number: the type
    of a result must not tell what the values are. Times are refused.

    Examples
    --------
    >>> to_numeric(pd.Series(["27.5", " 31 ", "unknown", ">89", None])).tolist()
    [27.5, 31.0, nan, nan, nan]
    """
    if isinstance(x, pd.DataFrame):
        return pd.DataFrame({c: to_numeric(x.iloc[:, i]) for i, c in enumerate(x.columns)}, index=x.index)
    kind = _kind(x)
    if kind in ("number", "bool"):
        return x
    if kind == "time":
        raise OperationError("to_numeric reads text as numbers; this column holds times")
    return pd.to_numeric(x.astype(object), errors="coerce").astype("float64")


def dummy(x: pd.Series, level: Any) -> pd.Series:
    """1.0 where the value equals ``level``, 0.0 elsewhere, missing where the value is missing."""
    return (x == level).astype("float64").where(x.notna())


# -- dates --------------------------------------------------------------------
# A date column arrives as text (CSV, JSON), as datetimes (Parquet, pandas) or as Python dates
# (Parquet DATE read by pandas). ``to_datetime`` makes any of them datetimes; ``dt_year``,
# ``dt_month`` and ``dt_days`` make numbers of them, which every aggregate then takes. The text
# grammar is fixed (``ISO_DATE``), and so is every result's type: pandas' own ``to_datetime``
# guesses a format, and a unit, from the first values it meets.

#: The text ``to_datetime`` reads (Python ``re`` and RE2 alike): an ISO 8601 date (years 0001 to 9999),
#: optionally a time (``T`` or a space; seconds and 1 to 9 decimals optional, digits beyond microseconds
#: dropped) with a UTC offset (``Z`` or ``+hh:mm``), white space (``DATE_SPACES``) around it. Anything
#: else is missing, in every engine.
ISO_DATE = (r"([1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
            r"([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,9})?)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?)?")
DATE_SPACES = " \t\n\r\f\v"
#: The type of the datetimes ``to_datetime`` makes of text: microseconds, as DuckDB's ``TIMESTAMP``.
DATETIME = "datetime64[us]"


def to_datetime(x: Any) -> Any:
    """Values read as dates, as ``pd.to_datetime(x, format="ISO8601", errors="coerce")``: what is not one is NaT.

    Text is read when it is an ISO 8601 date or date and time (``ISO_DATE``:
    ``"2021-03-04"``, ``"2021-03-04 10:30"``, ``"2021-03-04T10:30:00.5Z"``);
    a time with a UTC offset is converted to UTC. Impossible dates
    (``"2021-02-30"``) and any other text are missing. Datetimes are kept
    (with a time zone: in UTC, without it), Python dates become datetimes.
    Numbers are refused: pandas would read them as nanoseconds since 1970.
    Text always gives ``datetime64[us]``, whatever the values are.

    Examples
    --------
    >>> to_datetime(pd.Series(["2021-03-04", " 2021-03-04 10:30 ", "2021-02-30", "04/03/2021", None])).tolist()
    [Timestamp('2021-03-04 00:00:00'), Timestamp('2021-03-04 10:30:00'), NaT, NaT, NaT]
    """
    if isinstance(x, pd.DataFrame):
        return pd.DataFrame({c: to_datetime(x.iloc[:, i]) for i, c in enumerate(x.columns)}, index=x.index)
    if not isinstance(x, pd.Series):  # a constant (a date the client sent as ISO text)
        return to_datetime(pd.Series([x], dtype=object)).iloc[0]
    if x.dtype.kind == "M":
        return _naive(x)
    if x.dtype.kind == "m":
        raise OperationError("to_datetime reads dates; this column holds differences of dates (use .dt.days)")
    if _kind(x) in ("number", "bool"):
        raise OperationError("to_datetime reads text as dates; this column holds numbers")
    text_only = pd.api.types.is_string_dtype(x.dtype) and x.dtype != object
    values = x if text_only else x.astype(object)
    text = x.str.strip(DATE_SPACES) if text_only else values.map(
        lambda v: v.strip(DATE_SPACES) if isinstance(v, str) else None)
    text = text.where(text.str.fullmatch(ISO_DATE).fillna(False).astype(bool))
    # beyond microseconds pandas would parse every value in nanoseconds, and years past 2262 become NaT
    text = text.str.replace(r"(\.[0-9]{6})[0-9]+", r"\1", regex=True)
    parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce").dt.tz_localize(None).astype(DATETIME)
    if not text_only:
        dates = values.map(lambda v: v if isinstance(v, (dt.date, np.datetime64)) and not pd.isna(v) else None)
        if dates.notna().any():  # only saves work: the result's type is the same either way
            parsed = parsed.fillna(_naive(pd.to_datetime(dates, utc=True, errors="coerce")).astype(DATETIME))
    return pd.Series(parsed, index=x.index, name=x.name)


def _naive(x: pd.Series) -> pd.Series:
    """Datetimes without a time zone (those with one in UTC)."""
    if getattr(x.dtype, "tz", None) is not None:
        return x.dt.tz_convert("UTC").dt.tz_localize(None)
    return x


def _dates(x: Any, what: str) -> pd.Series:
    if not isinstance(x, pd.Series) or x.dtype.kind != "M":
        raise OperationError(f"dt.{what} needs dates: convert text with .to_datetime() first")
    return x


def dt_year(x: pd.Series) -> pd.Series:
    """The year of each date, as ``x.dt.year``; integers (``Int64``), missing where the date is."""
    return _dates(x, "year").dt.year.astype("Int64")


def dt_month(x: pd.Series) -> pd.Series:
    """The month (1 to 12) of each date, as ``x.dt.month``; integers (``Int64``), missing where the date is."""
    return _dates(x, "month").dt.month.astype("Int64")


def dt_days(x: pd.Series) -> pd.Series:
    """Whole days of each difference of dates, as ``x.dt.days``: rounded down (-14.5 days is -15); ``Int64``.

    Examples
    --------
    >>> a = to_datetime(pd.Series(["2021-03-01", "2021-03-01"]))
    >>> dt_days(a - to_datetime(pd.Series(["2021-03-15 12:00", "2021-02-01"]))).tolist()
    [-15, 28]
    """
    if not isinstance(x, pd.Series) or x.dtype.kind != "m":
        raise OperationError("dt.days needs a difference of two dates, such as (data['exit'] - data['entry']).dt.days")
    return x.dt.days.astype("Int64")
