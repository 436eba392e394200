"""Aggregates over a whole table: map per column on the server, reduce per column on the client.

``data.sum()`` on a DataFrame fragment means what it means in pandas: one sum
per column. The map runs once per column and sends ``{column: value}``; the
reduce pools each column across servers and returns a pandas Series, so that
``data.sum() / data.len()`` is a per-column mean, as in pandas. Per-column
results travel as ``{"$columns": {column: value}}``, a key no map result
uses, so a map that itself returns a dict is never mistaken for one.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

COLUMNS = "$columns"


def map_columns(fn: Callable[..., Any], value: Any, *args: Any) -> Any:
    """Apply a map to a Series, or to each column of a DataFrame or nested dict."""
    if isinstance(value, pd.DataFrame):
        return {COLUMNS: {str(col): fn(value[col], *args) for col in value.columns}}
    if isinstance(value, dict):
        return {COLUMNS: {str(k): map_columns(fn, v, *args) for k, v in value.items()}}
    return fn(value, *args)


def reduce_columns(fn: Callable[[Sequence[Any]], Any], parts: Sequence[Any]) -> Any:
    """Pool partial results; per-column results are pooled column by column."""
    per_column = [isinstance(p, dict) and COLUMNS in p for p in parts]
    if not any(per_column):
        return fn(parts)
    if not all(per_column):
        raise ValueError("some fragments are tables and some are single columns")
    tables = [p[COLUMNS] for p in parts]
    keys = list(dict.fromkeys(k for t in tables for k in t))
    missing = [k for k in keys if not all(k in t for t in tables)]
    if missing:
        raise ValueError(f"fragments disagree on their columns: {missing} missing on some servers")
    pooled = {k: reduce_columns(fn, [t[k] for t in tables]) for k in keys}
    if all(np.ndim(v) == 0 and not isinstance(v, dict) for v in pooled.values()):
        return pd.Series(pooled)
    return pooled
