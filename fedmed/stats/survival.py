"""Survival analysis from federated counts: Kaplan-Meier estimate and the log-rank test.

Both need only how many subjects had an event or were censored at each
time (per group, for the log-rank test). The servers send those counts
through the ``crosstab`` aggregate, with the number of complete rows (time
and event present); the client rebuilds the numbers at risk from them
(everybody still followed at ``t``: the complete rows minus those that left
before ``t``) and applies the textbook formulas. No row leaves a server.

Conventions, as in R's ``survfit``, lifelines and statsmodels' ``SurvfuncRight``:

- ``event`` is 1 (or True) for an event, 0 (or False) for a censored time.
  Rows missing the time or the event (or the group, for the log-rank test)
  are left out. Any other event code is an error: codings such as 0/1/2 of
  competing risks must be recoded first (``event == 1``).
- Subjects censored at time ``t`` count as at risk at ``t``: censoring is
  taken to happen just after the events of the same time.

Exact times are identifying: a server's privacy policy withholds the cells
of fewer than k rows, and with them their times (a withheld cell travels
without its labels). ``bin_width=w`` replaces each time ``t`` by
``(t // w) * w`` on the server (the lower edge of its bin), and only counts
per bin leave it. ``bin_width="auto"`` (the default) asks, in one more
round, for the exact times and a ladder of "nice" widths (1, 2, 5 x 10^k)
below the standard deviation of the times, and keeps the finest table that
no server withheld anything from: exact times where the policies allow
them (always, without policies). Everything in one bin is tied at the
bin's lower edge: the curve drops at the start of the bin, and the log-rank
test treats the bin's events as tied.

Where cells were withheld (an explicit ``bin_width`` the policies do not
release in full), nothing is guessed: the Kaplan-Meier table is exact up
to the last time before anything could have been withheld and unknown
(NaN, <NA>) from there on, and says so (``table.note``); the log-rank test
raises ``PrivacyError``, since its sums need every time.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from ..errors import ArgumentError, DataError, PrivacyError, PrivacyWarning
from ..lazy import FedData, LazyResult
from ..results import SurvivalTable, TestResult
from .lazy_call import aggregate, call

#: Columns of the Kaplan-Meier table, in order.
KM_COLUMNS = ["time", "at_risk", "events", "censored", "survival", "ci_lower", "ci_upper"]

#: Normal quantile of the two-sided 95% confidence interval.
_Z = float(special.ndtri(0.975))

#: Under privacy policies ``bin_width="auto"`` bins by the nice width (1, 2, 5 x 10^k) this many steps
#: below the largest one at most the times' standard deviation.
AUTO_STEP = 1

AUTO = "auto"


@dataclass(frozen=True)
class LogrankResult(TestResult):
    """The log-rank test of two groups, with the observed and expected events of each.

    ``statistic`` is the chi-squared statistic (1 degree of freedom),
    ``pvalue`` its upper tail, ``n`` the number of rows used; ``levels`` are
    the two group values (sorted), ``observed`` and ``expected`` the event
    counts of each level, in the order of ``levels``; ``bin_width`` the
    width the times were binned with (None: exact times).
    """

    levels: tuple[Any, Any]
    observed: tuple[int, int]
    expected: tuple[float, float]
    bin_width: float | None = None


def kaplan_meier(time: FedData, event: FedData, bin_width: float | str | None = AUTO) -> LazyResult:
    """Kaplan-Meier survival curve with Greenwood's 95% confidence interval (log-log).

    Parameters
    ----------
    time : FedData
        Follow-up time of each subject (numbers).
    event : FedData
        1 or True for an event, 0 or False for a censored time. Rows missing
        ``time`` or ``event`` are left out; another code raises ``fm.DataError``.
    bin_width : "auto", float or None
        ``"auto"`` (default): the exact times when the client's config
        has no privacy policies (1 round); otherwise one nice width
        (1, 2, 5 x 10^k) a step below the times' standard deviation,
        known after round 1 (2 rounds). Only one binning is ever asked
        for: two binnings of the same rows would let released cells give
        away withheld ones by subtraction. A number ``w`` (1 round): group
        times into bins ``[k * w, (k + 1) * w)`` on the server, labelled by
        their lower edge ``(time // w) * w``. ``None`` (1 round): the exact
        times.

    Returns
    -------
    LazyResult of SurvivalTable
        A DataFrame, one row per distinct (binned) time with at least one
        event or censoring, in increasing order, with columns ``time``,
        ``at_risk`` (subjects still followed at that time), ``events``,
        ``censored`` (pandas ``Int64``: <NA> where unknown), ``survival``
        (the product of ``1 - events / at_risk`` up to and including the
        row), ``ci_lower`` and ``ci_upper`` (NaN where unknown). Its
        attributes say how it was made: ``bin_width`` (None for exact
        times), ``automatic``, ``withheld`` (the times whose counts are
        unknown), ``exact_until`` (the last time whose survival is known)
        and ``note`` (None when nothing was withheld).

    Notes
    -----
    The confidence interval is Greenwood's variance on the log-log scale
    (R's ``survfit(conf.type="log-log")``, lifelines' default; statsmodels'
    ``SurvfuncRight.surv_prob_se`` is the same Greenwood standard error of ``S``):
    with ``G = sum(d / (n * (n - d)))`` over the rows up to ``t``,
    ``se = sqrt(G) / |log S|``, the interval is ``S ** exp(z * se)`` to
    ``S ** exp(-z * se)``. Where ``S`` is 1 the interval is [1, 1]; where
    ``S`` is 0 both bounds are NaN.

    The number at risk at ``t`` is the count of complete rows minus the
    rows that left before ``t``. Where a server withheld cells (their
    times too), the rows before ``t`` are known only up to the first time
    that could hold a withheld cell: from there on the counts are <NA> and
    survival NaN, listed in ``withheld`` and explained in ``note``, with
    a ``PrivacyWarning``. A finer binning than the policies release gives
    an unknown tail, never a wrong number.

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
    >>> km.bin_width, km.automatic, km.note
    (None, True, None)
    >>> kaplan_meier(d["t"], d["e"], bin_width=4).compute()["time"].tolist()
    [0.0, 4.0, 8.0]
    """
    needed_by = "kaplan_meier"
    _check_columns(needed_by, time=time, event=event)
    complete = time + _numeric(event) * 0  # missing where the time or the event is: the rows every table counts
    rows = aggregate(complete, "count", needed_by=needed_by)
    if _is_auto(bin_width):
        widths = _ladder(needed_by, complete)
        binned = [_binned(needed_by, time, w) for w in widths]
        tables = [aggregate(b, "crosstab", event, needed_by=needed_by) for b in binned]
        firsts = [aggregate(b + _numeric(event) * 0, "min", needed_by=needed_by) for b in binned]
        return call(_auto_kaplan_meier, rows, *widths, *tables, *firsts)
    binned = _binned(needed_by, time, bin_width)
    first = aggregate(binned + _numeric(event) * 0, "min", needed_by=needed_by)
    return call(_kaplan_meier, aggregate(binned, "crosstab", event, needed_by=needed_by), rows, first, bin_width)


def logrank(time: FedData, event: FedData, group: FedData, bin_width: float | str | None = AUTO) -> LazyResult:
    """Log-rank test that two groups have the same survival.

    Parameters
    ----------
    time, event : FedData
        As in :func:`kaplan_meier` (``event`` 1/True for an event, 0/False
        for censored).
    group : FedData
        The group of each subject: exactly two distinct values among the
        rows used (e.g. 0/1 or "A"/"B"). Rows missing ``time``, ``event``
        or ``group`` are left out.
    bin_width : "auto", float or None
        As in :func:`kaplan_meier`: ``"auto"`` (default, 2 rounds) keeps
        the finest binning at which all three tables below are released in
        full; the events of one bin count as tied.

    Returns
    -------
    LazyResult of LogrankResult
        ``statistic`` ``(O - E)^2 / V`` of the first level, ``pvalue`` from
        the chi-squared distribution with ``df`` = 1, ``n`` the number of
        rows used, ``levels``, ``observed`` and ``expected`` per group, and
        the ``bin_width`` used (None: exact times).

    Notes
    -----
    With ``n`` at risk and ``d`` events at a time, ``n1`` and ``d1`` of them
    in the first group: ``O = sum(d1)``, ``E = sum(d * n1 / n)`` and
    ``V = sum(d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1))`` (the
    hypergeometric variance, with ties), summed over the times with an
    event: R's ``survdiff``, lifelines' ``logrank_test`` and statsmodels'
    ``survdiff``.

    The servers send three tables: time against group among the events,
    time against group among the censored, and event code against group
    (which checks the codes and the tables' totals). The statistic needs
    every time, so if a server withheld a cell of them it raises
    ``PrivacyError`` naming the times concerned and suggesting coarser
    bins. A group column with other than two levels, or event codes other
    than 0/1, raise ``fm.DataError``.

    Examples
    --------
    >>> import fedmed as fm
    >>> from fedmed.stats.survival import logrank
    >>> d = fm.FedData([fm.Local({"t": [1, 2, 3, 4], "e": [1, 1, 0, 1], "g": ["A", "A", "B", "B"]}),
    ...                 fm.Local({"t": [5, 6, 2], "e": [1, 0, 1], "g": ["B", "B", None]})])
    >>> r = logrank(d["t"], d["e"], d["g"]).compute()
    >>> round(r.statistic, 4), round(r.pvalue, 4), r.df, r.n, r.levels, r.observed, r.bin_width
    (5.6279, 0.0177, 1.0, 6, ('A', 'B'), (2, 2), None)
    >>> round(r.expected[0] * 15, 6)  # A: E = 2/6 + 1/5 = 8/15, V = 2/9 + 4/25 = 86/225, so (2 - 8/15)^2 / V = 484/86
    8.0
    """
    needed_by = "logrank"
    _check_columns(needed_by, time=time, event=event, group=group)
    is_event, is_censored = event == 1, event == 0
    # the event codes (checked as sent), and the events and censorings of the rows with a time, to check
    # the time tables' totals against
    codes = aggregate(event, "crosstab", group, needed_by=needed_by)
    totals = aggregate(_numeric(event) + time * 0, "crosstab", group, needed_by=needed_by)

    def tables(binned: FedData) -> tuple[LazyResult, LazyResult]:
        return (aggregate(binned[is_event], "crosstab", group[is_event], needed_by=needed_by),
                aggregate(binned[is_censored], "crosstab", group[is_censored], needed_by=needed_by))

    if _is_auto(bin_width):
        widths = _ladder(needed_by, time + _numeric(event) * 0)
        pairs = [table for w in widths for table in tables(_binned(needed_by, time, w))]
        return call(_auto_logrank, codes, totals, *widths, *pairs)
    return call(_logrank, *tables(_binned(needed_by, time, bin_width)), codes, totals, bin_width)


# -- building the server-side inputs -----------------------------------------


def _check_columns(needed_by: str, **columns: Any) -> None:
    for name, column in columns.items():
        if not isinstance(column, FedData):
            raise ArgumentError(f"{needed_by}: {name} must be a FedData column, not {type(column).__name__}")


def _numeric(event: FedData) -> FedData:
    """The event codes as numbers (True/False/None held as Python objects too); text codes become missing."""
    return event.astype("float")


def _is_auto(bin_width: Any) -> bool:
    return isinstance(bin_width, str) and bin_width == AUTO


def _binned(needed_by: str, time: FedData, bin_width: Any) -> FedData:
    """``time``, or its bin's lower edge ``(time // bin_width) * bin_width`` computed on the server."""
    if bin_width is None:
        return time
    if isinstance(bin_width, LazyResult):  # a width of the automatic ladder, known after round 1
        return (time // bin_width) * bin_width
    if isinstance(bin_width, bool) or not isinstance(bin_width, numbers.Real):
        raise ArgumentError(f"{needed_by}: bin_width must be 'auto', a number or None, not {bin_width!r}")
    if not (math.isfinite(bin_width) and bin_width > 0):
        raise DataError(f"{needed_by}: bin_width must be a positive finite number, not {bin_width!r}")
    return (time // bin_width) * bin_width


def _ladder(needed_by: str, complete: FedData) -> list[Any]:
    """The binning ``"auto"`` asks for: the exact times without privacy policies (one round), else ONE
    nice width known after round 1, a step below the times' standard deviation.

    One table only: cell suppression judges each table alone, so two binnings of the same rows
    (nested widths, or exact times and bins) let the released cells of one give away the withheld
    cells of the other by subtraction (red-teamed: withheld counts down to 1 were recovered from a
    ladder of widths 2, 5 and 10).
    """
    if not complete.config.privacy:
        return [None]
    moments = aggregate(complete, "moments", needed_by=needed_by)
    return [call(_nice_width, moments, AUTO_STEP)]


def _nice_width(moments: Any, step: int) -> float:
    """The nice width (1, 2, 5 x 10^k) ``step`` steps below the largest one at most the times' standard deviation."""
    sd, mean = moments.var() ** 0.5, abs(moments.mean)
    scale = sd if sd > 0 else mean if mean > 0 else 1.0  # (nan compares False: no rows, or withheld)
    exponent = math.floor(math.log10(scale))
    mantissas = (1, 2, 5)
    top = 3 * exponent + max(i for i, m in enumerate(mantissas) if m * 10.0**exponent <= scale * (1 + 1e-12))
    index = top - step
    return float(f"{mantissas[index % 3]}e{index // 3}")  # the float nearest the decimal: 0.2, not 2 * 0.1


# -- client-side formulas -------------------------------------------------------


def _check_codes(needed_by: str, codes: Any) -> None:
    bad = [c for c in codes if isinstance(c, str) or c not in (0, 1)]
    if bad:
        raise DataError(f"{needed_by}: event must be 1/True (event) or 0/False (censored); found the codes {bad}; "
                          "recode first, for example event == 1")


def _counts(table: pd.DataFrame, code: int, full: bool) -> np.ndarray:
    """The column of ``table`` whose label equals ``code`` (1 and True are one label); NaN where unknown.

    A column no server labelled is all zeros in a table released in full, and unknown otherwise
    (its cells may all have been withheld).
    """
    label = next((c for c in table.columns if c == code), None)
    if label is None:
        return np.zeros(len(table)) if full else np.full(len(table), np.nan)
    return table[label].to_numpy(dtype=float)


def _released_in_full(table: pd.DataFrame, rows: float) -> bool:
    """No cell unknown, and the cells add up to the complete rows (a withheld cell travels without its labels)."""
    values = table.to_numpy(dtype=float)
    return not np.isnan(values).any() and values.sum() == rows


def _width_text(width: float | None) -> str:
    return "exact times" if width is None else f"bins of {width:g}"


def _auto_kaplan_meier(rows: int, *inputs: Any) -> SurvivalTable:
    count = len(inputs) // 3
    widths, tables, firsts = inputs[:count], inputs[count:2 * count], inputs[2 * count:]
    for table in tables:
        _check_codes("kaplan_meier", table.columns)
    for width, table in zip(widths, tables):
        if _released_in_full(table, rows):
            return _km_table(table, rows, None, width, automatic=True)
    # none in full (a sparse tail usually is withheld): the one whose survival is known furthest, the finest of ties
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        partial = [_km_table(t, rows, f, w, automatic=True) for w, t, f in zip(widths, tables, firsts)]
    reach = [(-math.inf if p.exact_until is None else p.exact_until) for p in partial]
    best = int(np.argmax(reach))
    if reach[best] == -math.inf:
        raise PrivacyError(
            f"kaplan_meier: the servers' privacy policies withheld cells at every binning tried "
            f"({', '.join(_width_text(w) for w in widths)}); {_withheld_text(tables[-1])} at the coarsest. "
            f"Pass a coarser bin_width (e.g. {widths[-1] * 5:g}), or study larger groups"
        )
    warnings.warn(f"kaplan_meier: {partial[best].note}", PrivacyWarning, stacklevel=2)
    return partial[best]


def _kaplan_meier(table: pd.DataFrame, rows: int, first: Any, width: float | None) -> SurvivalTable:
    _check_codes("kaplan_meier", table.columns)
    return _km_table(table, rows, first, width, automatic=False)


def _km_table(table: pd.DataFrame, rows: int, first: Any, width: float | None, automatic: bool) -> SurvivalTable:
    full = _released_in_full(table, rows)
    if not full and width is not None and len(table):
        table = _on_grid(table, width)  # bins between released ones that no server labelled are unknown, not empty
    events, censored = _counts(table, 1, full), _counts(table, 0, full)
    at_risk = _at_risk(events + censored, rows, full, _starts_at(table, first), width)
    survival, lower, upper = _survival(at_risk, events)
    times = table.index.to_numpy()
    unknown = np.isnan(at_risk) | np.isnan(events) | np.isnan(censored)
    result = SurvivalTable({
        "time": times, "at_risk": _nullable(at_risk), "events": _nullable(events),
        "censored": _nullable(censored), "survival": survival, "ci_lower": lower, "ci_upper": upper,
    }, columns=KM_COLUMNS)
    known = times[~np.isnan(survival)]
    result.attrs.update(bin_width=width, automatic=automatic, withheld=[_plain(t) for t in times[unknown]],
                        exact_until=_plain(known[-1]) if len(known) else None,
                        note=None if full else _km_note(table, times, survival, width))
    if not full:
        warnings.warn(f"kaplan_meier: {result.attrs['note']}", PrivacyWarning, stacklevel=2)
    return result


def _on_grid(table: pd.DataFrame, width: float) -> pd.DataFrame:
    steps = np.rint(table.index.to_numpy(dtype=float) / width).astype(np.int64)
    grid = [float(q) * width for q in range(int(steps.min()), int(steps.max()) + 1)]  # as the server computes them
    return table.reindex(grid)


def _starts_at(table: pd.DataFrame, first: Any) -> bool:
    """Whether the released minimum time is the first row's: then no withheld cell lies before it."""
    if not len(table) or first is None or (isinstance(first, float) and math.isnan(first)):
        return False
    return bool(table.index[0] == first)


def _at_risk(removed: np.ndarray, rows: float, full: bool, starts: bool, width: float | None) -> np.ndarray:
    """Complete rows minus those that left before each time; NaN from where a withheld cell may have left before."""
    before = np.concatenate([[0.0], np.cumsum(removed)[:-1]]) if len(removed) else removed
    at_risk = float(rows) - before  # NaN after the first unknown count, by the cumulative sum
    if not full:
        if not starts:
            at_risk[:] = np.nan  # a withheld cell may lie before the first released time
        elif width is None:
            at_risk[1:] = np.nan  # withheld exact times may lie between any two released ones
    return at_risk


def _survival(at_risk: np.ndarray, events: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, d = at_risk, events
    with np.errstate(divide="ignore", invalid="ignore"):
        survival = np.cumprod(1.0 - d / n)  # NaN from the first unknown count on
        greenwood = np.cumsum(d / (n * (n - d)))  # inf from the time everybody at risk had the event
        se = np.sqrt(greenwood) / np.abs(np.log(survival))
        lower = survival ** np.exp(_Z * se)
        upper = survival ** np.exp(-_Z * se)
    lower = np.where(survival == 1.0, 1.0, np.where(survival == 0.0, np.nan, lower))
    upper = np.where(survival == 1.0, 1.0, np.where(survival == 0.0, np.nan, upper))
    return survival, lower, upper


def _nullable(counts: np.ndarray) -> pd.arrays.IntegerArray:
    """Whole counts as pandas ``Int64``, <NA> where unknown (never an integer cast of NaN)."""
    return pd.array([None if math.isnan(c) else int(round(c)) for c in counts], dtype="Int64")


def _withheld_text(table: pd.DataFrame) -> str:
    unknown = np.isnan(table.to_numpy(dtype=float)).any(axis=1) if table.size else np.zeros(len(table), bool)
    rows = table.index[unknown].unique().sort_values()
    listed = ", ".join(f"{_plain(t):g}" if isinstance(_plain(t), float) else str(_plain(t)) for t in rows[:8])
    more = " ..." if len(rows) > 8 else ""
    at = f"cells at the times {listed}{more} and cells" if len(rows) else "cells"
    return f"{at} whose times the servers did not release were withheld"


def _km_note(table: pd.DataFrame, times: np.ndarray, survival: np.ndarray, width: float | None) -> str:
    known = np.flatnonzero(~np.isnan(survival))
    if not len(times):
        span = "no cell was released"
    elif len(known) == len(times):
        span = "survival is known at every released time"
    elif len(known):
        span = f"survival is exact up to time {times[known[-1]]:g} and unknown (NaN) from {times[known[-1] + 1]:g} on"
    else:
        span = "survival is unknown (NaN) at every time: a withheld cell may lie before the first released time"
    return (f"the servers' privacy policies withheld cells of the {_width_text(width)} "
            f"({_withheld_text(table)}); {span}. Use bin_width='auto' or a coarser bin_width")


def _auto_logrank(codes: pd.DataFrame, totals: pd.DataFrame, *widths_and_tables: Any) -> LogrankResult:
    count = len(widths_and_tables) // 3
    widths, tables = widths_and_tables[:count], widths_and_tables[count:]
    pairs = [(tables[2 * i], tables[2 * i + 1]) for i in range(count)]
    _check_codes("logrank", codes.index)
    for width, (events, censored) in zip(widths, pairs):
        if _logrank_released_in_full(events, censored, totals):
            return _logrank(events, censored, codes, totals, width)
    events, censored = pairs[-1]
    raise PrivacyError(
        f"logrank: the servers' privacy policies withheld cells at every binning tried "
        f"({', '.join(_width_text(w) for w in widths)}); {_withheld_text(pd.concat([events, censored]))} at the "
        f"coarsest. Pass a coarser bin_width (e.g. {widths[-1] * 5:g}), or compare larger groups"
    )


def _logrank_released_in_full(events: pd.DataFrame, censored: pd.DataFrame, codes: pd.DataFrame) -> bool:
    """Every cell known, and each group's events and censorings over time add up to ``codes``, the
    event-by-group table of the rows with a time."""
    if any(np.isnan(t.to_numpy(dtype=float)).any() for t in (events, censored, codes)):
        return False
    levels = codes.columns.union(events.columns).union(censored.columns)
    for code, table in ((1, events), (0, censored)):
        margin = codes.loc[code] if any(c == code for c in codes.index) else pd.Series(0, index=codes.columns)
        over_time = table.sum(axis=0).reindex(levels, fill_value=0)
        if not np.array_equal(over_time.to_numpy(dtype=float), margin.reindex(levels, fill_value=0).to_numpy(dtype=float)):
            return False
    return True


def _logrank(events: pd.DataFrame, censored: pd.DataFrame, codes: pd.DataFrame, totals: pd.DataFrame,
             width: float | None) -> LogrankResult:
    _check_codes("logrank", codes.index)
    levels = totals.columns.union(events.columns).union(censored.columns)
    if len(levels) != 2:
        raise DataError(
            f"logrank compares two groups; among the complete rows the group has {len(levels)} levels: "
            f"{[_plain(v) for v in levels]}; compare two of them (filter the rows) or recode the group"
        )
    if not _logrank_released_in_full(events, censored, totals):
        raise PrivacyError(
            f"logrank: the servers' privacy policies withheld cells of the {_width_text(width)} "
            f"({_withheld_text(pd.concat([events, censored]))}), and the test needs every time. "
            "Use bin_width='auto' or a coarser bin_width"
        )
    times = events.index.union(censored.index)
    d_by_group = events.reindex(index=times, columns=levels, fill_value=0).to_numpy(dtype=float)
    c_by_group = censored.reindex(index=times, columns=levels, fill_value=0).to_numpy(dtype=float)
    n_by_group = (d_by_group + c_by_group)[::-1].cumsum(axis=0)[::-1]  # at or after each time: a complete table
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
        float(statistic), pvalue, 1.0, n_rows, (_plain(levels[0]), _plain(levels[1])), observed, expected, width
    )


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
