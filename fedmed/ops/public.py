"""Reduce halves of aggregates: pool the servers' map results on the client.

Each takes the list of per-fragment results (in source order) and returns
the pooled value.
"""

from __future__ import annotations

import builtins
from typing import Any, Sequence


def sum(parts: Sequence[Any]) -> Any:
    """Add the partial results."""
    return builtins.sum(parts, 0)


def min(parts: Sequence[Any]) -> Any:
    """Smallest of the partial minima (None where no fragment had a value)."""
    present = [p for p in parts if p is not None]
    return builtins.min(present) if present else None


def max(parts: Sequence[Any]) -> Any:
    """Largest of the partial maxima (None where no fragment had a value)."""
    present = [p for p in parts if p is not None]
    return builtins.max(present) if present else None


def union(parts: Sequence[Sequence[Any]]) -> list[Any]:
    """Sorted union of the partial sets."""
    return sorted(builtins.set().union(*parts))
