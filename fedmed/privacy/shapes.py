"""Where the numbers are in each built-in aggregate's result.

Policies that round, clip, noise or suppress counts must touch the counts
of a ``value_counts`` result, not its values; the bins' counts of a
histogram, not its edges. ``counts_of`` knows each shape in one place.
"""

from __future__ import annotations

from typing import Any, Callable

from ..ops.columns import COLUMNS

#: Aggregates whose result is a table of counts, one per cell.
CELL_OPS = {"value_counts", "crosstab", "histogram", "set", "unique", "count_below", "grouped"}


def map_numbers(op: str, value: Any, fn: Callable[[Any], Any]) -> Any:
    """``value`` with ``fn`` applied to each released number (counts for cell tables)."""
    if isinstance(value, dict) and COLUMNS in value:
        return {COLUMNS: {k: map_numbers(op, v, fn) for k, v in value[COLUMNS].items()}}
    if op == "value_counts":
        return [[v, fn(c)] for v, c in value]
    if op == "crosstab":
        return [[a, b, fn(c)] for a, b, c in value]
    if op == "histogram":
        return {**value, "counts": [fn(c) for c in value["counts"]]}
    if op == "grouped":  # the labels come first: they are values, not numbers to perturb
        labels = value["keys"] + ("counts" in value)  # per-value counts: the value is a label too
        return {**value, **{part: [[*e[:labels], *(_every_number(v, fn) for v in e[labels:])] for e in value[part]]
                            for part in ("groups", "counts") if part in value}}
    if op in ("set", "unique"):
        return value  # values, not numbers to perturb
    return _every_number(value, fn)


def _every_number(value: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return fn(value)
    if isinstance(value, list):
        return [_every_number(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _every_number(v, fn) for k, v in value.items()}
    return value
