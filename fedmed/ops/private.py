"""Map halves of aggregates: computed on a server over one fragment's rows.

Each takes a pandas Series and returns one small, msgpack-friendly value.
Missing values are skipped as pandas does; ``len`` counts rows.
"""

from __future__ import annotations

import builtins
from typing import Any

import numpy as np
import pandas as pd


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def len(x: pd.Series) -> int:
    """Number of rows, missing values included."""
    return builtins.len(x)


def count(x: pd.Series) -> int:
    """Number of non-missing values."""
    return int(x.count())


def sum(x: pd.Series) -> Any:
    """Sum of the non-missing values (0 for none)."""
    return _plain(x.sum())


def sqsum(x: pd.Series) -> Any:
    """Sum of squares of the non-missing values."""
    values = x.dropna().to_numpy()
    return _plain(np.dot(values, values)) if values.dtype.kind in "fiub" else _plain((x * x).sum())


def min(x: pd.Series) -> Any:
    """Smallest non-missing value, or None if there is none."""
    return None if x.count() == 0 else _plain(x.min())


def max(x: pd.Series) -> Any:
    """Largest non-missing value, or None if there is none."""
    return None if x.count() == 0 else _plain(x.max())


def set(x: pd.Series) -> list[Any]:
    """Sorted distinct non-missing values."""
    return sorted(_plain(v) for v in pd.unique(x.dropna()))
