"""Chi-squared test of independence from one ``crosstab`` round.

A privacy policy withholds a small cell of a server's table together with
its labels (that a rare level is present at all is the disclosure), so the
pooled table alone cannot tell a table with withheld cells from a complete
one: a row or column that only a withholding server has simply vanishes.
The test therefore also counts, from the same map results, how many cells
each server withheld, and refuses with :class:`~fedmed.errors.PrivacyError`
when any did: a chi-squared statistic of a table with unknown cells would
be a wrong number.
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from ..errors import FedMedError, PrivacyError
from ..expr.client import Reduce
from ..lazy import FedData, LazyResult
from ..results import Chi2Result
from .lazy_call import aggregate, call

#: How many unknown cells an error message lists by their labels before it says "and N more".
SHOWN_CELLS = 8


def chi2_contingency(a: FedData, b: FedData, correction: bool = True) -> LazyResult:
    """Pearson's chi-squared test on the pooled contingency table of ``a`` and ``b``.

    The servers send their cell counts; scipy's ``chi2_contingency`` (with
    the same Yates ``correction`` default) runs on the pooled table. One round.

    With every cell released the result equals scipy's on the pooled rows.
    If any server withheld a cell (``Anonymity(k)`` withholds cells of fewer
    than ``k`` rows, and more cells to protect them), the pooled table is
    not known, and computing raises ``fm.PrivacyError`` naming the unknown
    cells by their labels and the servers that withheld cells; merge rare
    levels into coarser categories or analyse a larger subgroup. A table
    with no rows (no row with both values present) raises ``FedMedError``.

    Examples
    --------
    >>> import fedmed as fm
    >>> d = fm.FedData([fm.Local({"sex": ["F", "M", "F"], "smoker": [1, 0, 0]}), fm.Local({"sex": ["M"], "smoker": [1]})])
    >>> r = fm.stats.chi2_contingency(d["sex"], d["smoker"]).compute()
    >>> r.dof, r.n, int(r.observed.loc["F", 1])
    (1, 4, 1)
    """
    table = aggregate(a, "crosstab", b, needed_by="chi2_contingency")
    names = tuple(f"{source.server} [{source.fragment!r}]" for source in a.sources)
    return call(_chi2, table, _withheld_per_source(table), names, bool(correction))


def _withheld_per_source(table: LazyResult) -> LazyResult:
    """How many cells each server withheld, read from the same map results as ``table`` (no extra task)."""
    reduce = table.node
    assert isinstance(reduce, Reduce)
    return LazyResult(Reduce(reduce.map, reduce.sources, _count_withheld), table._flags)


def _count_withheld(parts: Sequence[Sequence[Sequence[Any]]]) -> list[int]:
    # a withheld crosstab cell travels as an entry whose labels are all None (fedmed.privacy.cells)
    return [sum(all(label is None for label in entry[:-1]) for entry in part) for part in parts]


def _chi2(table: pd.DataFrame, withheld: list[int], names: tuple[str, ...], correction: bool) -> Chi2Result:
    from scipy import stats as sps  # here, not at the top: scipy.stats is half of fedmed's import time

    if any(withheld) or table.isna().to_numpy().any():
        raise PrivacyError(_withheld_message(table, withheld, names), operation="chi2_contingency")
    if table.size == 0:
        raise FedMedError("chi2_contingency: the table is empty (no rows with both values present); "
                          "check the filter and that both columns have values in the same rows")
    result = sps.chi2_contingency(table.to_numpy(), correction=correction)
    expected = pd.DataFrame(result.expected_freq, index=table.index, columns=table.columns)
    return Chi2Result(
        float(result.statistic), float(result.pvalue), int(result.dof), expected, table, int(table.to_numpy().sum())
    )


def _withheld_message(table: pd.DataFrame, withheld: list[int], names: tuple[str, ...]) -> str:
    """Which cells are unknown (by their row and column labels), which servers withheld cells, what to do."""
    unknown = [(row, column) for row in table.index for column in table.columns if pd.isna(table.at[row, column])]
    listed = ", ".join(f"(row {row!r}, column {column!r})" for row, column in unknown[:SHOWN_CELLS])
    more = f" and {len(unknown) - SHOWN_CELLS} more" if len(unknown) > SHOWN_CELLS else ""
    cells = f"unknown pooled counts in {len(unknown)} cells {listed}{more}; " if unknown else ""
    servers = [f"{name} withheld {count} cell{'s' if count > 1 else ''}" for name, count in zip(names, withheld) if count]
    by = (f"{', '.join(servers)} with their labels (so rows or columns of rare levels may be missing "
          f"altogether); ") if servers else ""
    return (f"chi2_contingency: privacy policies withheld cells of this table (fewer than k rows in them, or "
            f"protecting such cells), so the pooled table is not known: {cells}{by}"
            f"merge rare levels into coarser categories, or analyse a larger subgroup")
