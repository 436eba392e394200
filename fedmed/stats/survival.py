"""Survival analysis from federated counts: Kaplan-Meier estimate and the log-rank test. One round.

Both need only how many subjects had an event or were censored at each
time (per group, for the log-rank test). The servers send those counts
through the ``crosstab`` aggregate; the client rebuilds the numbers at risk
from them (everybody with a time at or after ``t`` is at risk at ``t``) and
applies the textbook formulas. No row leaves a server.

Conventions, as in R's ``survfit``, lifelines and most textbooks:

- ``event`` is 1 (or True) for an event, 0 (or False) for a censored time.
  Rows missing the time or the event (or the group, for the log-rank test)
  are left out. Any other event code is an error: codings such as 0/1/2 of
  competing risks must be recoded first (``event == 1``).
- Subjects censored at time ``t`` count as at risk at ``t``: censoring is
  taken to happen just after the events of the same time.

Exact times are identifying: with ``bin_width=None`` every distinct time
travels to the client with its counts. ``bin_width=w`` replaces each time
``t`` by ``(t // w) * w`` on the server (the lower edge of its bin, so
``bin_width=30`` maps 0..29.9 to 0 and 30..59.9 to 30), and only counts per
bin leave it. Everything in one bin is then tied at the bin's lower edge:
the curve drops at the start of the bin instead of at the exact times, and
the log-rank test treats the bin's events as tied (an approximation that
gets better as the bins get finer).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from ..lazy import FedData, LazyResult
from ..results import SurvivalTable, TestResult
from .lazy_call import aggregate, call

#: Columns of the Kaplan-Meier table, in order.
KM_COLUMNS = ["time", "at_risk", "events", "censored", "survival", "ci_lower", "ci_upper"]

#: Normal quantile of the two-sided 95% confidence interval.
_Z = float(special.ndtri(0.975))


@dataclass(frozen=True)
class LogrankResult(TestResult):
    """The log-rank test of two groups, with the observed and expected events of each.

    ``statistic`` is the chi-squared statistic (1 degree of freedom),
    ``pvalue`` its upper tail, ``n`` the number of rows used; ``levels`` are
    the two group values (sorted), ``observed`` and ``expected`` the event
    counts of each level, in the order of ``levels``.
    """

    levels: tuple[Any, Any]
    observed: tuple[int, int]
    expected: tuple[float, float]


def kaplan_meier(time: FedData, event: FedData, bin_width: float | None = None) -> LazyResult:
    """Kaplan-Meier survival curve with Greenwood's 95% confidence interval (log-log). One round.

    Parameters
    ----------
    time : FedData
        Follow-up time of each subject (numbers).
    event : FedData
        1 or True for an event, 0 or False for a censored time. Rows missing
        ``time`` or ``event`` are left out; another code raises ``ValueError``.
    bin_width : float, optional
        Group times into bins ``[k * w, (k + 1) * w)`` on the server, labelled
        by their lower edge ``(time // w) * w``; only counts per bin leave it.
        ``None`` (default) uses the exact times, which then all reach the client.

    Returns
    -------
    LazyResult of pandas.DataFrame
        One row per distinct (binned) time with at least one event or
        censoring, in increasing order, with columns ``time``, ``at_risk``
        (subjects with a time at or after it), ``events``, ``censored``,
        ``survival`` (the product of ``1 - events / at_risk`` up to and
        including the row), ``ci_lower`` and ``ci_upper``.

    Notes
    -----
    The confidence interval is Greenwood's variance on the log-log scale
    (R's ``survfit(conf.type="log-log")``, lifelines' default):
    with ``G = sum(d / (n * (n - d)))`` over the rows up to ``t``,
    ``se = sqrt(G) / |log S|`` and ``z = 1.95996...`` (the 97.5% normal
    quantile), the interval is ``S ** exp(z * se)`` to ``S ** exp(-z * se)``,
    i.e. ``exp(-exp(log(-log S) ± z * se))``. It always lies in [0, 1].
    Where ``S`` is 1 (no event yet) the interval is [1, 1]; where ``S`` is 0
    (everybody at risk had the event) the transform is undefined and both
    bounds are nan.

    One round: the only aggregate is ``crosstab`` of the (binned) time
    against ``event``, so ``fm.compute`` with other statistics of the same
    sources still needs one request per server.

    Examples
    --------
    >>> import fedmed as fm
    >>> from fedmed.stats.survival import kaplan_meier
    >>> d = fm.FedData([fm.Local({"t": [2, 3, 3, 5], "e": [1, 1, 0, 1]}),
    ...                 fm.Local({"t": [3, 8, None], "e": [1, 0, 1]})])
    >>> km = kaplan_meier(d["t"], d["e"]).compute()
    >>> km[["time", "at_risk", "events", "censored", "survival"]]
       time  at_risk  events  censored  survival
    0   2.0        6       1         0  0.833333
    1   3.0        5       2         1  0.500000
    2   5.0        2       1         0  0.250000
    3   8.0        1       0         1  0.250000
    >>> kaplan_meier(d["t"], d["e"], bin_width=4).compute()["time"].tolist()
    [0.0, 4.0, 8.0]
    """
    needed_by = "kaplan_meier"
    _check_columns(needed_by, time=time, event=event)
    binned = _binned(needed_by, time, bin_width)
    return call(_kaplan_meier, aggregate(binned, "crosstab", event, needed_by=needed_by))


def logrank(time: FedData, event: FedData, group: FedData, bin_width: float | None = None) -> LazyResult:
    """Log-rank test that two groups have the same survival. One round.

    Parameters
    ----------
    time, event : FedData
        As in :func:`kaplan_meier` (``event`` 1/True for an event, 0/False
        for censored).
    group : FedData
        The group of each subject: exactly two distinct values among the
        rows used (e.g. 0/1 or "A"/"B"). Rows missing ``time``, ``event``
        or ``group`` are left out.
    bin_width : float, optional
        Bin the times on the server as in :func:`kaplan_meier`; the events
        of one bin count as tied.

    Returns
    -------
    LazyResult of LogrankResult
        ``statistic`` ``(O - E)^2 / V`` of the first level, ``pvalue`` from
        the chi-squared distribution with ``df`` = 1, ``n`` the number of
        rows used, and ``levels``, ``observed`` and ``expected`` per group.

    Notes
    -----
    With ``n`` at risk and ``d`` events at a time, ``n1`` and ``d1`` of them
    in the first group: ``O = sum(d1)``, ``E = sum(d * n1 / n)`` and
    ``V = sum(d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1))`` (the
    hypergeometric variance, with ties), summed over the times with an
    event: the Mantel-Haenszel form of R's ``survdiff`` and lifelines'
    ``logrank_test``.

    The group levels are read from the counts themselves, so no round is
    spent finding them; a group column with other than two levels raises
    ``ValueError`` when the result is computed. The servers send three
    tables: time against group among the events, time against group among
    the censored, and event code against group (to check the codes). One
    round, one request per server, also together with
    :func:`kaplan_meier` and other statistics in ``fm.compute``.

    Examples
    --------
    >>> import fedmed as fm
    >>> from fedmed.stats.survival import logrank
    >>> d = fm.FedData([fm.Local({"t": [1, 2, 3, 4], "e": [1, 1, 0, 1], "g": ["A", "A", "B", "B"]}),
    ...                 fm.Local({"t": [5, 6, 2], "e": [1, 0, 1], "g": ["B", "B", None]})])
    >>> r = logrank(d["t"], d["e"], d["g"]).compute()
    >>> round(r.statistic, 4), round(r.pvalue, 4), r.df, r.n, r.levels, r.observed
    (5.6279, 0.0177, 1.0, 6, ('A', 'B'), (2, 2))
    >>> round(r.expected[0] * 15, 6)  # A: E = 2/6 + 1/5 = 8/15, V = 2/9 + 4/25 = 86/225, so (2 - 8/15)^2 / V = 484/86
    8.0
    """
    needed_by = "logrank"
    _check_columns(needed_by, time=time, event=event, group=group)
    binned = _binned(needed_by, time, bin_width)
    is_event, is_censored = event == 1, event == 0
    return call(
        _logrank,
        aggregate(binned[is_event], "crosstab", group[is_event], needed_by=needed_by),
        aggregate(binned[is_censored], "crosstab", group[is_censored], needed_by=needed_by),
        aggregate(event, "crosstab", group, needed_by=needed_by),
    )


# -- building the server-side inputs -----------------------------------------


def _check_columns(needed_by: str, **columns: Any) -> None:
    for name, column in columns.items():
        if not isinstance(column, FedData):
            raise TypeError(f"{needed_by}: {name} must be a FedData column, not {type(column).__name__}")


def _binned(needed_by: str, time: FedData, bin_width: Any) -> FedData:
    """``time``, or its bin's lower edge ``(time // bin_width) * bin_width`` computed on the server."""
    if bin_width is None:
        return time
    if isinstance(bin_width, bool) or not isinstance(bin_width, numbers.Real):
        raise TypeError(f"{needed_by}: bin_width must be a number, not {type(bin_width).__name__}")
    if not (math.isfinite(bin_width) and bin_width > 0):
        raise ValueError(f"{needed_by}: bin_width must be a positive finite number, not {bin_width!r}")
    return (time // bin_width) * bin_width


# -- client-side formulas -------------------------------------------------------


def _check_codes(needed_by: str, codes: Any) -> None:
    bad = [c for c in codes if isinstance(c, str) or c not in (0, 1)]
    if bad:
        raise ValueError(f"{needed_by}: event must be 1/True (event) or 0/False (censored); found the codes {bad}")


def _counts(table: pd.DataFrame, code: int) -> np.ndarray:
    """The column of ``table`` whose label equals ``code`` (1 and True are one label), or zeros."""
    label = next((c for c in table.columns if c == code), None)
    return np.zeros(len(table), dtype=np.int64) if label is None else table[label].to_numpy(dtype=np.int64)


def _at_risk(removed: np.ndarray) -> np.ndarray:
    """Subjects still followed at each time: those leaving at that time or later (reverse cumulative sum)."""
    return removed[::-1].cumsum(axis=0)[::-1]


def _kaplan_meier(table: pd.DataFrame) -> pd.DataFrame:
    _check_codes("kaplan_meier", table.columns)
    events, censored = _counts(table, 1), _counts(table, 0)
    at_risk = _at_risk(events + censored)
    n, d = at_risk.astype(float), events.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        survival = np.cumprod(1.0 - d / n)
        greenwood = np.cumsum(d / (n * (n - d)))  # inf from the time everybody at risk had the event
        se = np.sqrt(greenwood) / np.abs(np.log(survival))
        lower = survival ** np.exp(_Z * se)
        upper = survival ** np.exp(-_Z * se)
    lower = np.where(survival == 1.0, 1.0, np.where(survival == 0.0, np.nan, lower))
    upper = np.where(survival == 1.0, 1.0, np.where(survival == 0.0, np.nan, upper))
    columns = [table.index.to_numpy(), at_risk, events, censored, survival, lower, upper]
    return SurvivalTable(dict(zip(KM_COLUMNS, columns)), columns=KM_COLUMNS)


def _logrank(events: pd.DataFrame, censored: pd.DataFrame, codes: pd.DataFrame) -> LogrankResult:
    _check_codes("logrank", codes.index)
    levels = events.columns.union(censored.columns)
    if len(levels) != 2:
        raise ValueError(
            f"logrank compares two groups; among the complete rows the group has {len(levels)} levels: {list(levels)}"
        )
    times = events.index.union(censored.index)
    d_by_group = events.reindex(index=times, columns=levels, fill_value=0).to_numpy(dtype=float)
    c_by_group = censored.reindex(index=times, columns=levels, fill_value=0).to_numpy(dtype=float)
    n_by_group = _at_risk(d_by_group + c_by_group)
    d, n = d_by_group.sum(axis=1), n_by_group.sum(axis=1)
    used = d > 0
    d, n, d1, n1 = d[used], n[used], d_by_group[used, 0], n_by_group[used, 0]
    share = n1 / n
    expected1 = float(np.sum(d * share))
    # n == 1 means d == 1 == n: no variance at that time (the term's factor n - d is 0)
    variance = float(np.sum(d * share * (1.0 - share) * (n - d) / np.maximum(n - 1.0, 1.0)))
    observed1 = float(d1.sum())
    statistic = (observed1 - expected1) ** 2 / variance if variance > 0 else math.nan
    from scipy import stats as sps  # here, not at the top: scipy.stats is half of fedmed's import time

    pvalue = float(sps.chi2.sf(statistic, 1)) if variance > 0 else math.nan
    observed = (int(observed1), int(d_by_group[:, 1].sum()))
    expected = (expected1, float(d.sum()) - expected1)
    n_rows = int(d_by_group.sum() + c_by_group.sum())
    return LogrankResult(
        float(statistic), pvalue, 1.0, n_rows, (_plain(levels[0]), _plain(levels[1])), observed, expected
    )


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
