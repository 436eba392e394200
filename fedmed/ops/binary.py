"""Elementwise operations: row by row, on the server, never exposed to the client.

Each takes pandas Series (or scalars) and returns a Series of the same rows,
so every operation is vectorised. Python's operators already do the right
thing on Series, including pandas' alignment and missing-value rules.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import pandas as pd

from ..errors import OperationError

add = operator.add
sub = operator.sub
mul = operator.mul
truediv = operator.truediv
floordiv = operator.floordiv
mod = operator.mod
pow = operator.pow
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
    """Missing values replaced by ``value``."""
    return x.fillna(value)


def isin(x: pd.Series, values: list[Any]) -> pd.Series:
    """True where the value is one of ``values``."""
    return x.isin(values)


def clip(x: pd.Series, lower: Any = None, upper: Any = None) -> pd.Series:
    """Values limited to ``[lower, upper]`` (either may be None)."""
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
    """Values converted to ``"float"``, ``"int"``, ``"bool"`` or ``"str"``."""
    if dtype not in DTYPES:
        raise OperationError(f"astype accepts {sorted(DTYPES)}, not {dtype!r}")
    return x.astype(DTYPES[dtype])


def dummy(x: pd.Series, level: Any) -> pd.Series:
    """1.0 where the value equals ``level``, 0.0 elsewhere, missing where the value is missing."""
    return (x == level).astype("float64").where(x.notna())
