"""t-tests from per-server moments: independent (Student and Welch), one-sample, paired. One round.

The test statistics come from pooled n, mean and variance, exactly the
numbers ``scipy.stats`` computes on the pooled rows; the p-values come from
scipy's t distribution.
"""

from __future__ import annotations

import math

import numpy as np

from ..lazy import FedData, LazyResult
from ..results import Moments, TestResult
from .lazy_call import aggregate, call, columns


def ttest_ind(a: FedData, b: FedData, equal_var: bool = True) -> LazyResult:
    """Two independent samples: Student's t (``equal_var=True``) or Welch's (``False``).

    ``a`` and ``b`` may be two columns, or two filtered subsets of one column
    (``x[g == 1]``, ``x[g == 0]``). Equal to ``scipy.stats.ttest_ind`` on the
    pooled rows; one round.

    Examples
    --------
    >>> import fedmed as fm
    >>> d = fm.FedData([fm.Local({"x": [1.0, 2.0, 3.0], "g": [0, 0, 1]}), fm.Local({"x": [5.0, 7.0], "g": [1, 1]})])
    >>> r = fm.stats.ttest_ind(d["x"][d["g"] == 1], d["x"][d["g"] == 0], equal_var=False).compute()
    >>> round(r.statistic, 4), r.n
    (2.7815, 5)
    """
    return call(
        _ttest_ind,
        aggregate(a, "moments", needed_by="ttest_ind"),
        aggregate(b, "moments", needed_by="ttest_ind"),
        bool(equal_var),
    )


def ttest_1samp(a: FedData, popmean: float) -> LazyResult:
    """One sample against ``popmean`` (as ``scipy.stats.ttest_1samp``; one round)."""
    return call(_ttest_1samp, aggregate(a, "moments", needed_by="ttest_1samp"), float(popmean))


def ttest_rel(a: FedData, b: FedData) -> LazyResult:
    """Paired samples: a one-sample test of ``a - b`` against 0 over rows where both are present.

    Equal to ``scipy.stats.ttest_rel`` on the pooled complete pairs; one round.
    """
    columns("ttest_rel", a, b)
    return call(_ttest_1samp, aggregate(a - b, "moments", needed_by="ttest_rel"), 0.0)


def _ttest_ind(ma: Moments, mb: Moments, equal_var: bool) -> TestResult:
    from scipy import stats as sps  # here, not at the top: scipy.stats is half of fedmed's import time

    if ma.n == 0 or mb.n == 0:  # scipy on an empty sample: nan, not an exception
        return TestResult(math.nan, math.nan, math.nan, ma.n + mb.n)
    result = sps.ttest_ind_from_stats(
        ma.mean, math.sqrt(ma.var(1)), ma.n, mb.mean, math.sqrt(mb.var(1)), mb.n, equal_var=equal_var
    )
    if equal_var:
        df = ma.n + mb.n - 2.0
    else:  # Welch–Satterthwaite; numpy arithmetic so degenerate samples give nan, as scipy
        with np.errstate(all="ignore"):
            va, vb = np.float64(ma.var(1)) / ma.n, np.float64(mb.var(1)) / mb.n
            df = (va + vb) ** 2 / (va**2 / np.float64(ma.n - 1) + vb**2 / np.float64(mb.n - 1))
    return TestResult(float(result.statistic), float(result.pvalue), float(df), ma.n + mb.n)


def _ttest_1samp(m: Moments, popmean: float) -> TestResult:
    from scipy import stats as sps  # here, not at the top: scipy.stats is half of fedmed's import time

    df = m.n - 1.0 if m.n else math.nan
    # numpy division, as scipy: constant data give ±inf (mean differs) or nan (it does not)
    with np.errstate(all="ignore"):
        standard_error = np.sqrt(np.float64(m.var(1)) / m.n) if m.n else np.float64(math.nan)
        statistic = np.float64(m.mean - popmean) / standard_error
    pvalue = float(2 * sps.t.sf(abs(statistic), df)) if df > 0 else math.nan
    return TestResult(float(statistic), pvalue, df, m.n)
