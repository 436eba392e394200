"""Rank tests from federated counts: Mann-Whitney U and Wilcoxon signed-rank. One round.

A rank test needs only how many values of each sample share each level:
the servers send counts, never rows, and the client ranks the pooled levels
(average ranks for ties) and applies scipy's normal approximation with its
tie correction. Two ways of counting:

- ``bins=None`` (default): the ``value_counts`` aggregate. The ranks, the
  statistic and the p-value are exactly scipy's (``method="asymptotic"``)
  on the pooled rows. Exact and cheap when the values have few distinct
  levels (Likert scores, counts, integer ages), but every distinct value
  travels to the client with its count: for continuous data that is
  essentially the data itself, so pass ``bins``.
- ``bins`` given: the ``histogram`` aggregate over bins the caller fixes
  (a bin count with ``range=(lo, hi)``, or explicit edges), so the servers
  agree on them without a first round. All values in one bin count as tied
  at the bin's midpoint. Only counts per bin travel, and the test becomes
  approximate: values of different size inside a bin lose their order, the
  tie correction grows (a slightly smaller variance), and the statistic
  moves towards its null mean. The finer the bins, the closer to the exact
  test; bins narrower than the data's own resolution (e.g. one per integer)
  give the exact result again. But the finer the bins, the more the counts
  reveal: bins that hold one value each locate every value to within a bin.

Withheld counts: a rank depends on every value, so one unknown count makes
every rank unknown. A server's privacy policy (``Anonymity(k)``) withholds
the values held by fewer than ``k`` of its rows together with their labels
(which values exist is the secret), and bins of fewer than ``k`` rows. The
tests then raise :class:`~fedmed.errors.PrivacyError` naming the values or
bins concerned and the servers that withheld values; never a p-value from
the counts that were released, which would be a wrong number. The way out
is coarser counting: ``bins`` wide enough to hold ``k`` rows on every
server, or a larger subgroup. Whether a server withheld values is read
from the same map results as the counts (no extra task).

Formulas are scipy's ``_mannwhitneyu`` and ``_wilcoxon`` (scipy 1.17) written
for tied groups; nothing is computed from rows on the client.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import special

from ..errors import ArgumentError, DataError, PrivacyError
from ..expr.client import Reduce
from ..lazy import FedData, LazyResult
from ..results import Histogram, TestResult
from .lazy_call import aggregate, call

#: How many values or bins with unknown counts an error message lists before it says "and N more".
SHOWN = 8


def mannwhitneyu(
    a: FedData, b: FedData, bins: Any = None, range: Any = None, use_continuity: bool = True
) -> LazyResult:
    """Mann-Whitney U test of two independent samples (two-sided, normal approximation). One round.

    Parameters
    ----------
    a, b : FedData
        Two columns, or two filtered subsets of one column
        (``x[g == 1]``, ``x[g == 0]``). Missing values are skipped.
    bins : None, int or sequence of float
        ``None`` counts each distinct value (``value_counts``): exact. An
        int is a number of equal bins over ``range``; a sequence gives the
        bin edges (``histogram``): approximate, see below.
    range : (float, float), optional
        ``(lo, hi)`` for an int ``bins`` (required then, so that every
        server uses the same edges). Values outside it would be dropped by
        the histogram; the test refuses to run instead.
    use_continuity : bool
        The continuity correction of ``scipy.stats.mannwhitneyu`` (default on).

    Returns
    -------
    LazyResult of TestResult
        ``statistic`` is U of ``a`` (scipy's ``mannwhitneyu(a, b).statistic``),
        ``pvalue`` the two-sided p-value of scipy's ``method="asymptotic"``
        (normal approximation with tie correction), ``df`` is nan and ``n``
        the number of values in both samples. A sample without values gives
        NaN statistic and p-value, as scipy.

    Raises
    ------
    fm.PrivacyError
        When computed, if a server's privacy policy withheld the count of a
        value (without ``bins``) or of a bin: the ranks are then unknown.
        The message names the values or bins and the servers; use ``bins``
        (with ``range``) wide enough to hold ``k`` rows on every server, or
        a larger subgroup.
    fm.DataError
        When computed, if values of a sample lie outside the bins.

    Notes
    -----
    Without ``bins`` the result equals scipy's on the pooled rows. But
    ``value_counts`` sends every distinct value to the client: with
    continuous data (lab values, exact times) that reveals the values, so
    pass ``bins``. With bins, every value in a bin is tied at the bin's
    midpoint; the statistic approximates the exact one (pairs inside one bin
    count 1/2 instead of 0 or 1, so U moves by at most half the number of
    such pairs), the tie correction is larger, and the error shrinks as the
    bins get finer. Either way one round: all counts
    are asked for together, and ``fm.compute`` with other statistics still
    needs one request per server.

    Examples
    --------
    >>> import fedmed as fm
    >>> from fedmed.stats.rank import mannwhitneyu
    >>> d = fm.FedData([fm.Local({"score": [1, 2, 2, 5], "g": [0, 0, 1, 1]}),
    ...                 fm.Local({"score": [3, 4, None], "g": [1, 0, 1]})])
    >>> r = mannwhitneyu(d["score"][d["g"] == 1], d["score"][d["g"] == 0]).compute()
    >>> r.statistic, round(r.pvalue, 4), r.n  # scipy.stats.mannwhitneyu([2, 5, 3], [1, 2, 4], method="asymptotic")
    (6.5, 0.5066, 6)
    >>> r = mannwhitneyu(d["score"][d["g"] == 1], d["score"][d["g"] == 0], bins=2, range=(0, 6)).compute()
    >>> r.statistic, r.n  # 1, 2, 2 tied in [0, 3) and 3, 4, 5 tied in [3, 6]: U approximates 6.5
    (6.0, 6)
    """
    needed_by = "mannwhitneyu"
    _check_data(needed_by, a, b)
    if bins is None:
        if range is not None:
            raise ArgumentError("mannwhitneyu: range is only used with bins")
        return call(
            _mannwhitneyu_values,
            *_value_counts(needed_by, a),
            *_value_counts(needed_by, b),
            bool(use_continuity),
        )
    bins, range = _bin_args(needed_by, bins, range)
    return call(
        _mannwhitneyu_bins,
        aggregate(a, "histogram", bins, range, needed_by=needed_by),
        aggregate(b, "histogram", bins, range, needed_by=needed_by),
        aggregate(a, "count", needed_by=needed_by),
        aggregate(b, "count", needed_by=needed_by),
        bool(use_continuity),
    )


def wilcoxon(
    a: FedData, b: FedData, bins: Any = None, range: Any = None, correction: bool = False
) -> LazyResult:
    """Wilcoxon signed-rank test of paired samples (two-sided, normal approximation). One round.

    The differences ``a - b`` are taken on rows where both are present; zero
    differences are dropped (scipy's default ``zero_method="wilcox"``) and
    the absolute differences are ranked.

    Parameters
    ----------
    a, b : FedData
        Two columns of the same rows.
    bins : None, int or sequence of float
        ``None`` counts each distinct difference (``value_counts``): exact.
        Otherwise bins of the ABSOLUTE differences ``|a - b|``: an int with
        ``range=(0, hi)``, or edges starting at 0 (``histogram``):
        approximate, see below.
    range : (float, float), optional
        ``(lo, hi)`` for an int ``bins``, over ``|a - b|``. Nonzero
        differences outside it make the test refuse to run.
    correction : bool
        scipy's continuity correction (default off, as in scipy).

    Returns
    -------
    LazyResult of TestResult
        ``statistic`` is the smaller of the positive and negative rank sums
        and ``pvalue`` the two-sided p-value, as
        ``scipy.stats.wilcoxon(a, b, method="asymptotic")`` (normal
        approximation with tie correction); ``df`` is nan and ``n`` the
        number of complete pairs (zero differences included). No complete
        pair gives NaN statistic and p-value, as scipy.

    Raises
    ------
    fm.PrivacyError
        When computed, if a server's privacy policy withheld the count of a
        difference (without ``bins``) or of a bin: the ranks are then
        unknown. The message names the differences or bins and the servers;
        use ``bins`` (with ``range=(0, hi)``) wide enough to hold ``k`` rows
        on every server, or a larger subgroup.
    fm.DataError
        When computed, if nonzero differences lie outside the bins.

    Notes
    -----
    Without ``bins`` the result equals scipy's on the pooled complete pairs,
    but every distinct difference is sent to the client; with continuous
    data pass ``bins`` (privacy). With bins, the positive and the negative
    differences are counted in the same bins of ``|a - b|`` and all values
    in a bin are tied at its midpoint: signs and exact zeros stay exact,
    ranks are approximate (the statistic approximates the exact one, the tie
    correction grows, and the finer the bins the closer the result). One
    round either way.

    Examples
    --------
    >>> import fedmed as fm
    >>> from fedmed.stats.rank import wilcoxon
    >>> d = fm.FedData([fm.Local({"before": [3, 4, 2, 5], "after": [4, 4, 4, 3]}),
    ...                 fm.Local({"before": [1, 2, None], "after": [3, 5, 2]})])
    >>> r = wilcoxon(d["before"], d["after"]).compute()
    >>> r.statistic, round(r.pvalue, 4), r.n  # as scipy.stats.wilcoxon(..., method="asymptotic")
    (3.0, 0.2164, 6)
    """
    needed_by = "wilcoxon"
    _check_data(needed_by, a, b)
    d = a - b
    if bins is None:
        if range is not None:
            raise ArgumentError("wilcoxon: range is only used with bins")
        return call(_wilcoxon_values, *_value_counts(needed_by, d), bool(correction))
    bins, range = _bin_args(needed_by, bins, range)
    positive, negative = d[d > 0], (-d)[d < 0]
    return call(
        _wilcoxon_bins,
        aggregate(positive, "histogram", bins, range, needed_by=needed_by),
        aggregate(negative, "histogram", bins, range, needed_by=needed_by),
        aggregate(positive, "count", needed_by=needed_by),
        aggregate(negative, "count", needed_by=needed_by),
        aggregate(d, "count", needed_by=needed_by),
        bool(correction),
    )


# -- checks on the client, before anything is sent ----------------------------


def _check_data(needed_by: str, *columns: Any) -> None:
    for x in columns:
        if not isinstance(x, FedData):
            raise ArgumentError(f"{needed_by} takes FedData columns, not {type(x).__name__}")


def _value_counts(needed_by: str, x: FedData) -> tuple[LazyResult, LazyResult, tuple[str, ...]]:
    """The pooled ``value_counts`` of ``x``, how many values each server withheld, and the servers' names."""
    counts = aggregate(x, "value_counts", needed_by=needed_by)
    reduce = counts.node
    assert isinstance(reduce, Reduce)
    # read from the same map results as the counts (no extra task): the pooled Series cannot tell a
    # value withheld by its only holder from a value nobody has
    withheld = LazyResult(Reduce(reduce.map, reduce.sources, _count_withheld), counts._flags)
    names = tuple(f"{source.server} [{source.fragment!r}]" for source in x.sources)
    return counts, withheld, names


def _count_withheld(parts: Sequence[Sequence[Sequence[Any]]]) -> list[int]:
    # a withheld value_counts entry travels as [None, None] (fedmed.privacy.cells)
    return [sum(entry[0] is None for entry in part) for part in parts]


def _bin_args(needed_by: str, bins: Any, range: Any) -> tuple[Any, Any]:
    """``(bins, range)`` as plain msgpack values, the same for every server."""
    if isinstance(bins, numbers.Integral) and not isinstance(bins, bool):
        if bins < 1:
            raise ArgumentError(f"{needed_by}: bins must be at least 1, not {bins}")
        if range is None:
            raise ArgumentError(f"{needed_by}: a bin count needs range=(lo, hi), so that every server uses the same bins")
        lo, hi = (float(v) for v in range)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ArgumentError(f"{needed_by}: range must be finite with lo < hi, not {range!r}")
        return int(bins), [lo, hi]
    if isinstance(bins, (str, bytes, bool)) or not isinstance(bins, (Sequence, np.ndarray)):
        raise ArgumentError(f"{needed_by}: bins must be None, a bin count or a sequence of edges, not {bins!r}")
    if range is not None:
        raise ArgumentError(f"{needed_by}: give either bin edges or a bin count with range, not both")
    edges = [float(e) for e in bins]
    if len(edges) < 2 or not all(math.isfinite(e) for e in edges) or any(x >= y for x, y in zip(edges, edges[1:])):
        raise ArgumentError(f"{needed_by}: bin edges must be at least two finite, increasing numbers")
    return edges, None


# -- client-side formulas (module level, so equal calls merge) ---------------


def _mannwhitneyu_values(
    counts_a: pd.Series, withheld_a: list[int], names_a: tuple[str, ...],
    counts_b: pd.Series, withheld_b: list[int], names_b: tuple[str, ...], use_continuity: bool,
) -> TestResult:
    _check_released("mannwhitneyu", "a", counts_a, withheld_a, names_a)
    _check_released("mannwhitneyu", "b", counts_b, withheld_b, names_b)
    levels = _levels("mannwhitneyu", counts_a, counts_b)
    return _mannwhitneyu_groups(levels[:, 0], levels[:, 1], use_continuity)


def _mannwhitneyu_bins(
    hist_a: Histogram, hist_b: Histogram, count_a: int, count_b: int, use_continuity: bool
) -> TestResult:
    _check_binned("mannwhitneyu", "a", hist_a, count_a)
    _check_binned("mannwhitneyu", "b", hist_b, count_b)
    return _mannwhitneyu_groups(hist_a.counts, hist_b.counts, use_continuity)


def _wilcoxon_values(counts: pd.Series, withheld: list[int], names: tuple[str, ...], correction: bool) -> TestResult:
    # one value_counts of a - b: split by sign, rank the absolute values
    _check_released("wilcoxon", "a - b", counts, withheld, names)
    pairs = int(counts.sum())
    by_size: dict[float, list[int]] = {}
    for value, count in zip(_numeric("wilcoxon", counts.index), counts.to_numpy()):
        if value != 0:
            by_size.setdefault(abs(value), [0, 0])[0 if value > 0 else 1] += int(count)
    sizes = sorted(by_size)
    positive = np.array([by_size[s][0] for s in sizes], dtype=np.int64)
    negative = np.array([by_size[s][1] for s in sizes], dtype=np.int64)
    return _wilcoxon_groups(positive, negative, pairs, correction)


def _wilcoxon_bins(
    hist_positive: Histogram, hist_negative: Histogram, count_positive: int, count_negative: int, pairs: int,
    correction: bool,
) -> TestResult:
    _check_binned("wilcoxon", "a - b > 0", hist_positive, count_positive)
    _check_binned("wilcoxon", "b - a > 0", hist_negative, count_negative)
    return _wilcoxon_groups(hist_positive.counts, hist_negative.counts, int(pairs), correction)


def _numeric(needed_by: str, values: Any) -> np.ndarray:
    try:
        return np.asarray(list(values), dtype=float)
    except (TypeError, ValueError):
        raise ArgumentError(
            f"{needed_by} ranks numbers: pass one numeric column (e.g. data['x']), not {list(values)[:3]!r}..."
        ) from None


def _levels(needed_by: str, *counts: pd.Series) -> np.ndarray:
    """Counts per distinct value (rows, in increasing order of value) and per sample (columns)."""
    totals: dict[float, np.ndarray] = {}
    for j, series in enumerate(counts):
        for value, count in zip(_numeric(needed_by, series.index), series.to_numpy()):
            totals.setdefault(float(value), np.zeros(len(counts), dtype=np.int64))[j] += int(count)
    if not totals:
        return np.zeros((0, len(counts)), dtype=np.int64)
    return np.array([totals[v] for v in sorted(totals)], dtype=np.int64)


def _check_released(needed_by: str, name: str, counts: pd.Series, withheld: list[int], names: tuple[str, ...]) -> None:
    """Refuse unless every value's pooled count is known: one unknown count leaves every rank unknown."""
    unknown = sorted((value for value, count in counts.items() if math.isnan(count)), key=_order)
    if not unknown and not any(withheld):
        return
    listed = ", ".join(_format(value) for value in unknown[:SHOWN])
    more = f" and {len(unknown) - SHOWN} more" if len(unknown) > SHOWN else ""
    values = f"the pooled counts of {len(unknown)} values ({listed}{more}) are unknown; " if unknown else ""
    servers = [f"{server}: {n}" for server, n in zip(names, withheld) if n]
    by = f"values withheld with their labels, so absent from the counts: {', '.join(servers)}; " if servers else ""
    range_ = "range=(0, hi) over |a - b|" if needed_by == "wilcoxon" else "range=(lo, hi)"
    raise PrivacyError(
        f"{needed_by}: privacy policies withheld counts of the values of {name} (values held by fewer than k "
        f"rows of a server, or protecting such values), so the ranks are not known: {values}{by}"
        f"count in bins instead (bins=n with {range_}, or bin edges), wide enough to hold k rows on every "
        f"server (approximate: values in one bin count as tied), or analyse a larger subgroup",
        operation=needed_by,
    )


def _order(value: Any) -> tuple[int, Any]:
    # numbers by value, then anything else (text, refused later) by its text: never a TypeError here
    return (0, float(value)) if isinstance(value, numbers.Real) else (1, str(value))


def _format(value: Any) -> str:
    return f"{value:g}" if isinstance(value, numbers.Real) else repr(value)


def _check_binned(needed_by: str, name: str, hist: Histogram, count: int) -> None:
    if not hist.exact:
        raise PrivacyError(
            f"{needed_by}: privacy policies withheld the counts of the bins {_withheld_bins(hist)} of {name} "
            f"(fewer than k rows of a server in them, or protecting such bins), so the ranks are not known; "
            f"use coarser bins (fewer, wider: a smaller bin count or fewer edges) or a larger subgroup",
            operation=needed_by,
        )
    if hist.n != count:
        edges = hist.edges
        raise DataError(
            f"{needed_by}: {count - hist.n} of the {count} values of {name} lie outside the bins "
            f"[{edges[0]:g}, {edges[-1]:g}]; widen the range or the edges"
        )


def _withheld_bins(hist: Histogram) -> str:
    """The withheld bins as intervals, e.g. ``[20, 30), [60, 70]`` (numpy's last bin is closed)."""
    last = len(hist.counts) - 1
    bins = [f"[{hist.edges[i]:g}, {hist.edges[i + 1]:g}{']' if i == last else ')'}" for i in np.flatnonzero(hist.withheld)]
    more = f" and {len(bins) - SHOWN} more" if len(bins) > SHOWN else ""
    return ", ".join(bins[:SHOWN]) + more


def _average_ranks(ties: np.ndarray) -> np.ndarray:
    """The average rank of each tied group, the groups in increasing order."""
    ties = ties.astype(float)
    return np.cumsum(ties) - ties + (ties + 1.0) / 2.0


def _mannwhitneyu_groups(count_a: np.ndarray, count_b: np.ndarray, use_continuity: bool) -> TestResult:
    # scipy.stats._mannwhitneyu with method="asymptotic", alternative="two-sided"
    n1, n2 = int(np.sum(count_a)), int(np.sum(count_b))
    n = n1 + n2
    if n1 == 0 or n2 == 0:
        return TestResult(math.nan, math.nan, math.nan, n)
    ties = np.asarray(count_a) + np.asarray(count_b)
    ranks = _average_ranks(ties)
    u1 = float(np.dot(np.asarray(count_a, dtype=float), ranks)) - n1 * (n1 + 1) / 2
    u = max(u1, n1 * n2 - u1)
    t = ties.astype(float)
    tie_term = float(np.sum(t**3 - t))
    s = np.sqrt(n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1))))
    numerator = np.float64(u - n1 * n2 / 2 - (0.5 if use_continuity else 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = numerator / s  # all values tied: -0.5 / 0 = -inf, p = 1 (as scipy)
    pvalue = float(np.clip(2 * special.ndtr(-z), 0.0, 1.0))
    return TestResult(u1, pvalue, math.nan, n)


def _wilcoxon_groups(positive: np.ndarray, negative: np.ndarray, pairs: int, correction: bool) -> TestResult:
    # scipy.stats._wilcoxon with zero_method="wilcox", method="asymptotic", alternative="two-sided";
    # zeros are not among the groups
    if pairs == 0:
        return TestResult(math.nan, math.nan, math.nan, 0)
    ties = np.asarray(positive) + np.asarray(negative)
    ranks = _average_ranks(ties)
    r_plus = float(np.dot(np.asarray(positive, dtype=float), ranks))
    r_minus = float(np.dot(np.asarray(negative, dtype=float), ranks))
    count = float(np.sum(ties))
    t = ties.astype(float)
    mean = count * (count + 1) / 4
    se = np.sqrt((count * (count + 1) * (2 * count + 1) - float(np.sum(t**3 - t)) / 2) / 24)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.float64(r_plus - mean) / se  # only zero differences: 0 / 0, p = nan (as scipy)
        if correction:
            z = z - np.sign(z) * 0.5 / se
    pvalue = float(2 * special.ndtr(-abs(z)))
    return TestResult(min(r_plus, r_minus), pvalue, math.nan, pairs)
