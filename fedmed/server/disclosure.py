"""What a map result discloses: which of the fragment's rows it was computed from.

Privacy policies need more than the value: how many rows contributed, how
many rows a query's subset leaves out (the differencing attack
``sum(all) - sum(all but one)``), and how large each row's contribution is
(the dominance rule). ``Disclosure`` answers these from the evaluated
expression, computed only when a policy asks.

A row is *left out* of a result when

- a row filter ``data[mask]`` dropped it, or
- its term came out missing although its raw values are present
  (``x * mask / mask``, ``x + mask * nan``), or
- it was multiplied by 0 in a factor made only of 0s and 1s (a mask, however
  it was computed, or a list of 0s and 1s sent by the client), even if a
  constant is added afterwards (``x * (id == 17) + 1000``), or
- its term came out zero although one of its raw values is not zero: a
  zero factor is a filter in disguise (``x * (id != 17)``).

Natural missing values and natural zeros are not left out: they are what
the data say. The rule is conservative: ``(x * w).sum()`` with a few zero
weights counts those rows as left out.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..expr.node import walk
from ..expr.rowwise import Column, Elementwise, Filter, Fragment, Literal, Map


class Disclosure:
    """The rows behind one map result, computed lazily from the evaluated node values."""

    def __init__(self, node: Map, values: Mapping[int, Any], index: pd.Index) -> None:
        self.node = node
        self._values = values  # id(node) -> evaluated value
        self.index = index  # the fragment's row labels

    @property
    def rows(self) -> int:
        """Rows of the fragment."""
        return len(self.index)

    @cached_property
    def inputs(self) -> list[Any]:
        """The map's evaluated arguments (Series, tables or constants)."""
        return [self._values[id(arg)] for arg in self.node.args]

    @cached_property
    def _rows(self) -> tuple[pd.Series, pd.Series, pd.Series]:
        """(selected by filters, raw values present, some raw value non-zero), per fragment row."""
        selected: dict[int, pd.Series] = {}
        present: dict[int, pd.Series] = {}
        raw_nonzero: dict[int, pd.Series] = {}
        everything = pd.Series(True, index=self.index)
        nothing = pd.Series(False, index=self.index)
        for node in walk([self.node]):
            value = self._values.get(id(node))
            kids = [c for c in node.children if not isinstance(c, Literal)]
            sel = _all(everything, [selected[id(c)] for c in kids])
            pres = _all(everything, [present[id(c)] for c in kids])
            nonzero = _any(nothing, [raw_nonzero[id(c)] for c in kids])
            # raw values: a selected column, or a fragment that is itself one column; rows a
            # filter already removed count as present (conservative: they join the complement)
            if (isinstance(node, Column) and isinstance(value, (pd.Series, pd.DataFrame))) or (
                isinstance(node, Fragment) and isinstance(value, pd.Series)
            ):
                pres = pres & _notna(value).reindex(self.index, fill_value=True).astype(bool)
                nonzero = nonzero | self._align(_nonzero(value))
            elif isinstance(node, Filter):
                sel = sel & self._align(_truthy(self._values[id(node.mask)]))
            elif isinstance(node, Elementwise) and node.op == "mul":
                # a factor that is only 0s and 1s is a filter, whatever else is added later
                for factor in _indicators([self._values.get(id(c)) for c in node.children]):
                    sel = sel & self._align(factor != 0)
            selected[id(node)], present[id(node)], raw_nonzero[id(node)] = sel, pres, nonzero
        key = id(self.node)
        return selected[key], present[key], raw_nonzero[key]

    def _terms(self, zero_is_out: bool) -> pd.Series:
        """Rows whose terms are present (and, with ``zero_is_out``, not zeroed by the arithmetic)."""
        selected, _, raw_nonzero = self._rows
        used = selected
        for value in self.inputs:
            if isinstance(value, (pd.Series, pd.DataFrame)):
                used = used & self._align(_notna(value))
                if zero_is_out:
                    used = used & ~(self._align(~_nonzero(value) & _notna(value)) & raw_nonzero)
        return used

    @property
    def used(self) -> pd.Series:
        """Rows the result was computed from: selected by filters, terms present and not zeroed."""
        return self._terms(zero_is_out=True)

    def contributing(self, additive: bool = False) -> int:
        """Rows that contributed; for an additive aggregate (a sum) any zero term contributes nothing."""
        used = self.used
        if additive:
            used = used & self._align(_nonzero(self.inputs[0]))
        return int(used.sum())

    def complement(self, terms: bool = True) -> int:
        """Rows with raw values that the query left out: by its filters, and with ``terms`` by its arithmetic.

        Tables of counts use ``terms=False``: their small cells are handled cell by cell.
        """
        _, present, _ = self._rows
        used = self._terms(zero_is_out=True) if terms else self._rows[0]
        return int((present & ~used).sum())

    def contributions(self) -> np.ndarray:
        """Absolute contribution of each used row (summed over the inputs), largest first."""
        used = self.used
        total = pd.Series(0.0, index=self.index)
        for value in self.inputs:
            if isinstance(value, pd.DataFrame):
                value = value.select_dtypes("number").abs().sum(axis=1)
            if isinstance(value, pd.Series) and value.dtype.kind in "fiub":
                total = total.add(self._align_values(value.astype(float).abs()), fill_value=0.0)
        return np.sort(total[used].to_numpy())[::-1]

    def _align(self, mask: pd.Series) -> pd.Series:
        return mask.reindex(self.index, fill_value=False).astype(bool)

    def _align_values(self, values: pd.Series) -> pd.Series:
        return values.reindex(self.index).fillna(0.0)


def _all(start: pd.Series, masks: list[pd.Series]) -> pd.Series:
    out = start
    for mask in masks:
        out = out & mask
    return out


def _indicators(values: list[Any]) -> list[pd.Series]:
    """The operands of a product that hold only 0s and 1s (lists aligned by position to the Series)."""
    index = next((v.index for v in values if isinstance(v, pd.Series)), None)
    out = []
    for value in values:
        if isinstance(value, list) and index is not None and len(value) == len(index):
            value = pd.Series(value, index=index)
        if isinstance(value, pd.Series) and value.dtype.kind in "fiub" or str(getattr(value, "dtype", "")) == "boolean":
            present = value.dropna()
            if len(present) and present.isin([0, 1]).all():
                out.append(value.fillna(0))
    return out


def _any(start: pd.Series, masks: list[pd.Series]) -> pd.Series:
    out = start
    for mask in masks:
        out = out | mask
    return out


def _notna(value: Any) -> pd.Series:
    if isinstance(value, pd.DataFrame):
        return value.notna().all(axis=1)
    if isinstance(value, pd.Series):
        return value.notna()
    return pd.Series(dtype=bool)


def _truthy(value: Any) -> pd.Series:
    if not isinstance(value, pd.Series):
        return pd.Series(dtype=bool)
    return value.fillna(0).astype(bool) if value.dtype.kind != "O" else value.notna() & value.astype(bool)


def _nonzero(value: Any) -> pd.Series:
    """Non-zero numbers (True for text and other present values)."""
    if isinstance(value, pd.DataFrame):
        return value.apply(_nonzero).any(axis=1) if len(value.columns) else pd.Series(False, index=value.index)
    if isinstance(value, pd.Series):
        if value.dtype.kind in "fiub" or str(value.dtype) in ("boolean", "Int64", "Float64"):
            return (value.fillna(0) != 0).astype(bool)
        return value.notna()
    return pd.Series(dtype=bool)

