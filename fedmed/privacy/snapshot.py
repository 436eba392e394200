"""``Snapshot``: publish a fragment's new version only once enough rows have changed.

Without it, a data owner who adds one patient and lets analysts rerun a
query hands them that patient's values as the difference of two answers.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .base import Policy


class Snapshot(Policy):
    """Keep serving the published version until at least ``min_new_rows`` rows differ from it.

    Rows are compared as a multiset (order does not matter; an edited row
    counts as one removed and one added). Each response names the version
    it was computed on.
    """

    def __init__(self, min_new_rows: int = 10) -> None:
        self.min_new_rows = int(min_new_rows)

    def should_publish(self, published: Any, candidate: Any) -> bool:
        """Whether ``candidate`` differs from ``published`` in enough rows."""
        return rows_changed(published, candidate) >= self.min_new_rows


def rows_changed(old: Any, new: Any) -> int:
    """Size of the multiset difference between the rows of two tables (or columns)."""
    old_rows, new_rows = _row_hashes(old), _row_hashes(new)
    both = pd.concat([old_rows.rename("old"), new_rows.rename("new")], axis=1).fillna(0)
    return int((both["old"] - both["new"]).abs().sum())


def _row_hashes(data: Any) -> pd.Series:
    if not isinstance(data, (pd.DataFrame, pd.Series)):
        raise TypeError("Snapshot compares tables or columns")
    hashes = pd.util.hash_pandas_object(data, index=False)
    return hashes.value_counts()
