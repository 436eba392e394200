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
    if all(_is_number(v) for v in pooled.values()):
        return pd.Series(pooled)
    return PerColumn(pooled)


class PerColumn(dict):
    """Pooled per-column results that are not plain numbers (moments, histograms, ...).

    Client-side formulas applied to one are applied column by column
    (:func:`apply_columns`), so ``fm.stats.mean(table)`` is a Series of
    means, as ``DataFrame.mean()``.
    """


def apply_columns(fn: Callable[..., Any], values: Sequence[Any]) -> Any:
    """``fn(*values)``, column by column where some values are ``PerColumn``."""
    tables = [v for v in values if isinstance(v, PerColumn)]
    if not tables:
        return fn(*values)
    keys = list(tables[0])
    # a pooled Series of plain numbers over the same columns (min, max of the table) goes along
    split = [
        isinstance(v, PerColumn) or (isinstance(v, pd.Series) and list(v.index) == keys) for v in values
    ]
    results = {k: apply_columns(fn, [v[k] if s else v for v, s in zip(values, split)]) for k in keys}
    if all(_is_number(r) for r in results.values()):
        return pd.Series(results)
    if all(isinstance(r, pd.Series) for r in results.values()):
        return pd.DataFrame(results)  # describe() of a table: statistics as rows, as pandas
    return PerColumn(results)


def _is_number(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, np.number))
