"""What a map result discloses: which of the fragment's rows it was computed from.

Privacy policies need more than the value: how many rows contributed, how
many rows a query's subset leaves out (the differencing attack
``sum(all) - sum(all but one)``), and how large each row's contribution is
(the dominance rule). ``Disclosure`` answers these from the evaluated
expression, computed only when a policy asks.

Rows are followed through the expression:

- a row filter ``data[mask]`` drops the rows where the mask is false;
- a *mask used as a multiplier* (``x * (id == 17)``, ``x / mask``, also
  after ``astype`` or arithmetic with constants, and ``dummy``) drops them
  too: a zero factor is a filter in disguise;
- a row whose raw columns all have values but whose term came out missing
  (``x * mask / mask``, ``x + mask * nan``) was dropped by the query, not by
  the data, and counts in the complement.

Natural missing values are not part of any complement: they were never in
the data.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..expr.node import walk
from ..expr.rowwise import Column, Elementwise, Filter, Fragment, Literal, Map

#: Operations through which a mask operand filters rows.
MASKING_OPS = {"mul", "truediv", "floordiv"}
#: Operations whose result is a mask whenever their operands are.
MASK_PRESERVING = {"mul", "truediv", "add", "sub", "astype", "neg", "abs", "and", "or", "invert"}


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
    def _rows(self) -> tuple[pd.Series, pd.Series]:
        selected: dict[int, pd.Series] = {}
        present: dict[int, pd.Series] = {}
        masklike: dict[int, bool] = {}
        everything = pd.Series(True, index=self.index)
        for node in walk([self.node]):
            value = self._values.get(id(node))
            kids = [c for c in node.children if not isinstance(c, Literal)]
            sel = _all(everything, [selected[id(c)] for c in kids])
            pres = _all(everything, [present[id(c)] for c in kids])
            # raw values: a selected column, or a fragment that is itself one column; rows a
            # filter already removed count as present (conservative: they join the complement)
            if (isinstance(node, Column) and isinstance(value, (pd.Series, pd.DataFrame))) or (
                isinstance(node, Fragment) and isinstance(value, pd.Series)
            ):
                pres = pres & _notna(value).reindex(self.index, fill_value=True).astype(bool)
            elif isinstance(node, Filter):
                sel = sel & self._align(_truthy(self._values[id(node.mask)]))
            elif isinstance(node, Elementwise) and node.op in MASKING_OPS:
                for child in kids:
                    if masklike[id(child)]:
                        sel = sel & self._align(_truthy(self._values[id(child)]))
            selected[id(node)], present[id(node)] = sel, pres
            masklike[id(node)] = _is_mask(value) or (
                isinstance(node, Elementwise)
                and (node.op == "dummy" or (node.op in MASK_PRESERVING and bool(kids) and all(masklike[id(c)] for c in kids)))
            )
        used = selected[id(self.node)]
        for value in self.inputs:
            if isinstance(value, (pd.Series, pd.DataFrame)):
                used = used & self._align(_notna(value))
        return used, present[id(self.node)]

    @property
    def used(self) -> pd.Series:
        """Rows the result was computed from: selected by filters and masks, with values present."""
        return self._rows[0]

    def contributing(self, additive: bool = False) -> int:
        """Rows that contributed; for an additive aggregate (a sum) a zero term contributes nothing."""
        used = self.used
        if additive:
            used = used & self._align(_nonzero(self.inputs[0]))
        return int(used.sum())

    @property
    def complement(self) -> int:
        """Rows with values in the raw columns that the query's filters, masks or arithmetic left out."""
        used, present = self._rows
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
    if isinstance(value, pd.Series) and value.dtype.kind in "fiub":
        return value.fillna(0) != 0
    return _notna(value)


def _is_mask(value: Any) -> bool:
    return isinstance(value, pd.Series) and (value.dtype == bool or str(value.dtype) == "boolean")

