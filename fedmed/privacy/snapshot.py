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
    """Size of the multiset difference between the rows of two tables (or columns).

    Both are hashed after one concatenation, so a column whose type changed
    (an int column that became float with a missing value) compares by
    value, and one new row stays one changed row.
    """
    if not isinstance(old, (pd.DataFrame, pd.Series)) or not isinstance(new, (pd.DataFrame, pd.Series)):
        raise TypeError("Snapshot compares tables or columns")
    hashes = pd.util.hash_pandas_object(pd.concat([old, new], ignore_index=True), index=False)
    before, after = hashes.iloc[: len(old)].value_counts(), hashes.iloc[len(old):].value_counts()
    both = pd.concat([before.rename("old"), after.rename("new")], axis=1).fillna(0)
    return int((both["old"] - both["new"]).abs().sum())
