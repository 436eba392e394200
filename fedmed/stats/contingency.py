"""Chi-squared test of independence from one ``crosstab`` round."""

from __future__ import annotations

import pandas as pd

from ..errors import FedMedError
from ..lazy import FedData, LazyResult
from ..results import Chi2Result
from .lazy_call import aggregate, call


def chi2_contingency(a: FedData, b: FedData, correction: bool = True) -> LazyResult:
    """Pearson's chi-squared test on the pooled contingency table of ``a`` and ``b``.

    The servers send their cell counts; scipy's ``chi2_contingency`` (with
    the same Yates ``correction`` default) runs on the pooled table. One round.

    Examples
    --------
    >>> import fedmed as fm
    >>> d = fm.FedData([fm.Local({"sex": ["F", "M", "F"], "smoker": [1, 0, 0]}), fm.Local({"sex": ["M"], "smoker": [1]})])
    >>> r = fm.stats.chi2_contingency(d["sex"], d["smoker"]).compute()
    >>> r.dof, r.n, int(r.observed.loc["F", 1])
    (1, 4, 1)
    """
    return call(_chi2, aggregate(a, "crosstab", b, needed_by="chi2_contingency"), bool(correction))


def _chi2(table: pd.DataFrame, correction: bool) -> Chi2Result:
    from scipy import stats as sps  # here, not at the top: scipy.stats is half of fedmed's import time

    if table.isna().to_numpy().any():
        raise FedMedError(
            "chi2_contingency: a server's privacy policy withheld cells of this table (too few rows in them), "
            "so the pooled counts are unknown; merge rare levels or analyse a coarser grouping"
        )
    if table.size == 0:
        raise FedMedError("chi2_contingency: the table is empty (no rows with both values present)")
    result = sps.chi2_contingency(table.to_numpy(), correction=correction)
    expected = pd.DataFrame(result.expected_freq, index=table.index, columns=table.columns)
    return Chi2Result(
        float(result.statistic), float(result.pvalue), int(result.dof), expected, table, int(table.to_numpy().sum())
    )
