"""Aggregates over a whole table: map per column on the server, reduce per column on the client.

``data.sum()`` on a DataFrame fragment means what it means in pandas: one sum
per column. The map runs once per column and sends ``{column: value}``; the
reduce pools each column across servers and returns a pandas Series, so that
``data.sum() / data.len()`` is a per-column mean, as in pandas.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import pandas as pd


def map_columns(fn: Callable[..., Any], value: Any, *args: Any) -> Any:
    """Apply a map to a Series, or to each column of a DataFrame or nested dict."""
    if isinstance(value, pd.DataFrame):
        return {str(col): fn(value[col], *args) for col in value.columns}
    if isinstance(value, dict):
        return {str(k): map_columns(fn, v, *args) for k, v in value.items()}
    return fn(value, *args)


def reduce_columns(fn: Callable[[Sequence[Any]], Any], parts: Sequence[Any]) -> Any:
    """Pool partial results; per-column results are pooled column by column."""
    if parts and all(isinstance(p, dict) for p in parts):
        keys = list(dict.fromkeys(k for p in parts for k in p))
        missing = [k for k in keys if not all(k in p for p in parts)]
        if missing:
            raise ValueError(f"fragments disagree on their columns: {missing} missing on some servers")
        pooled = {k: reduce_columns(fn, [p[k] for p in parts]) for k in keys}
        if all(not isinstance(v, (dict, list)) for v in pooled.values()):
            return pd.Series(pooled)
        return pooled
    return fn(parts)
