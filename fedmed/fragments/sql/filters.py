"""Row filters as SQL: a filter narrows a value's ``Rows`` by the mask's truth (pandas' ``x[mask]``)."""

from __future__ import annotations

from dataclasses import replace

from ...errors import TaskFailed
from .values import BOOL, FLOAT, INT, STR, Col, Rows, Table, Value, _and


class FilterCompiler:
    """The ``Compiler``'s row filters."""

    # -- filters -----------------------------------------------------------------------------------
    def _truthy(self, mask: Col) -> str:
        """pandas' ``mask.fillna(False).astype(bool)``."""
        if mask.kind == BOOL and mask.sql in self._never_null:
            return mask.sql
        if mask.kind == BOOL:
            return f"coalesce({mask.sql}, FALSE)"
        if mask.kind in (INT, FLOAT):
            return f"coalesce({mask.sql} <> 0, FALSE)"
        if mask.kind == STR:
            return f"coalesce(length({mask.sql}) > 0, FALSE)"
        raise TaskFailed("a row filter needs a boolean column of the same fragment")

    def _filter(self, table: Value, mask: Value) -> Value:
        if not isinstance(mask, Col) or not isinstance(table, (Table, Col)):
            raise TaskFailed("a row filter needs a boolean column of the same fragment")
        if not mask.rows.contains(table.rows):
            raise TaskFailed("Unalignable boolean Series provided as indexer (index of the boolean Series and of "
                             "the indexed object do not match).")
        truthy = self._truthy(mask)
        # a comparison's column is the filter as it is: a copy of it in a layer of its own costs a tenth of a scan
        atom, atom_level = (mask.sql, mask.level) if truthy == mask.sql else \
            self.query.name(truthy, mask.depth, prefix="m")
        if atom == "TRUE":
            return table
        cond, level = self.query.name(_and(table.rows.cond, atom), max(table.rows.level, atom_level), prefix="r") \
            if table.rows.cond != "TRUE" else (atom, atom_level)
        rows = Rows(cond, level, table.rows.lineage | {atom})
        return table.with_rows(rows) if isinstance(table, Table) else replace(table, rows=rows)
