"""Quantiles, histograms and synthetic samples, from counts only.

Quantiles are found by bisection on counts, many thresholds at a time: the
servers say how many of their values lie at or below each threshold, never
a value. Each server's counts are kept apart, and a count its privacy
policy withheld is *unknown*, not missing: since counts never decrease
with the threshold, the counts a server did release bound the ones it
withheld, and every bracket the client keeps is one the counts prove.
Round 1 asks at 0 and ±{1, 2, 5}·10^e; each further round cuts every
bracket at evenly spaced floats (evenly in the order of all float64
values), at its roundest numbers and at the float just below each of them,
so that a value recorded with few decimals is pinned exactly, and a bracket
that has shrunk to one float is the order statistic itself.
:func:`quantile` states the rounds, bytes and precision.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Sequence

import numpy as np

from ..errors import ArgumentError, FedMedError, PrivacyError, PrivacyWarning
from ..lazy import FedData, LazyResult
from ..ops.private import MAX_BINS
from ..results import Histogram
from .lazy_call import aggregate, call, columns

#: First-round thresholds: 0 and ±{1, 2, 5}·10^e for e = -8 ... 16, so a bracket spans at most a factor 2.5.
GRID = sorted({0.0, *(float(f"{sign}{m}e{e}") for sign in "-+" for m in (1, 2, 5) for e in range(-8, 17))})
#: A bracket's cuts at round numbers (each with the float just below it): one pair per 32 cuts.
ROUND_SHARE = 32


class Quantile(float):
    """A quantile, with the interval its counts prove: ``low <= true quantile <= high``.

    The float is the value: exact when ``low == high`` (``exact``),
    otherwise the middle of the interval.

    Examples
    --------
    >>> import fedmed as fm
    >>> x = fm.FedData([fm.Local([1.0, 2.0, 3.0]), fm.Local([4.0, 10.0])])
    >>> m = fm.stats.median(x).compute()
    >>> m, m.exact, (m.low, m.high)
    (3.0, True, (3.0, 3.0))
    """

    low: float
    high: float

    def __new__(cls, value: float, low: float, high: float) -> "Quantile":
        self = super().__new__(cls, value)
        self.low, self.high = float(low), float(high)
        return self

    def __getnewargs__(self) -> tuple[float, float, float]:
        return float(self), self.low, self.high

    @property
    def exact(self) -> bool:
        """True when the counts pin the quantile to one value."""
        return self.low == self.high


def quantile(x: FedData, q: "float | Sequence[float]", rounds: int = 3, thresholds: int = 1024) -> LazyResult:
    """Quantiles of the non-missing values, as ``numpy.quantile`` (method ``linear``).

    No server sends a value, only counts of its values at or below
    thresholds. With ``n`` values, ``h = (n - 1) q`` and ``k = floor(h)``,
    the quantile interpolates between the order statistics of ranks
    ``k + 1`` and ``k + 2`` (only the first when ``h`` is whole); each is
    bracketed by its rank: ``(lo, hi]`` with count(<= lo) < rank <= count(<= hi).

    - Rounds: ``1 + rounds`` (4 by default), whatever the number of ``q``.
      Round 1: ``count`` and ``count_below`` at 151 fixed thresholds (0 and
      ±{1, 2, 5}·10^e, e = -8 ... 16). Each further round: ``count_below``
      at up to ``thresholds`` new cuts per bracket still open; ranks that
      share a bracket share its cuts, a pinned rank needs none.
    - Bytes to each server: 1.5 KB in round 1 (the old decades: 0.6 KB),
      then about 9.3 KB per open bracket and round (float64 thresholds;
      the counts back are smaller). A median of data recorded with a few
      decimals is pinned by round 3: about 20 KB in all, against 56 KB
      before (two brackets of 1024 cuts in every round).
    - Exact: an order statistic is pinned when its bracket holds one float,
      ``hi``. Cuts at the bracket's round numbers and at the float just
      below each (and just below ``hi``) pin values recorded with a few
      decimals (ages, lab values, ties) in 2 or 3 rounds; the result is
      then numpy's to the last bit, and ``result.exact`` is True.
    - Otherwise the value is the middle of a proven interval. When every
      count is released it is within 7.1e-10 of the order statistics'
      magnitude (a bracket of round 1 holds at most 1.25·2^52 floats, and
      each round keeps one of at least 960 parts: 0.63 / 959^3) for
      magnitudes between 1e-8 and 5e16, about 1e-8 to 3e-7 beyond.
    - Withheld counts (``Anonymity(k)`` releases a count only with ``k``
      rows on each side, ``k`` apart from the others of its request):
      each server's counts are kept apart, so a count one withheld is
      bounded by those it released on either side and by the other
      servers' totals, and the interval is only what the released counts
      prove (typically the span of about ``k`` values around the rank, a
      single value when each server holds it 0 or ``k`` or more times). A
      ``PrivacyWarning`` gives it when withheld counts widened it. A
      quantile among the ``k`` smallest or largest values of a server,
      which no released count can place, raises ``fm.PrivacyError`` naming
      the servers.

    Returns a :class:`Quantile` (a float with ``low``, ``high`` and
    ``exact``), or a list of them for a list of ``q``; NaN without values.

    Examples
    --------
    >>> import fedmed as fm
    >>> import numpy as np
    >>> x = fm.FedData([fm.Local([1.0, 2.0, 3.0]), fm.Local([4.0, 10.0])])
    >>> fm.stats.quantile(x, 0.5).compute()
    3.0
    >>> fm.stats.quantile(x, [0.1, 0.9]).compute() == np.quantile([1.0, 2.0, 3.0, 4.0, 10.0], [0.1, 0.9]).tolist()
    True
    """
    columns("quantile", x)
    qs = [float(q)] if np.ndim(q) == 0 else [float(v) for v in q]  # type: ignore[arg-type]
    if not all(0.0 <= v <= 1.0 for v in qs):
        raise ArgumentError("quantiles must lie in [0, 1]")
    names = tuple(f"{source.server} [{source.fragment!r}]" for source in x.sources)
    state = call(_start, aggregate(x, "count", needed_by="quantile"),
                 aggregate(x, "count_below", GRID, needed_by="quantile"), tuple(qs))
    for _ in range(rounds):
        cuts = call(_cuts, state, int(thresholds))
        state = call(_narrow, state, cuts, aggregate(x, "count_below", cuts, needed_by="quantile"))
    return call(_finish, state, names, np.ndim(q) == 0)


def median(x: FedData, rounds: int = 3, thresholds: int = 1024) -> LazyResult:
    """The median (``quantile(x, 0.5)``)."""
    return quantile(x, 0.5, rounds, thresholds)


# -- what the counts prove -----------------------------------------------------------------------


def _start(n: int, counts: list[float], qs: tuple[float, ...]) -> dict[str, Any]:
    ranks = []
    for q in qs:
        h = (n - 1) * q
        k = math.floor(h)
        ranks.append((k + 1, k + 2) if h > k else (k + 1,))
    state = {"n": n, "qs": qs, "ranks": ranks, "round": 0,
             "thresholds": np.asarray(GRID), "counts": _per_source(counts)}
    return state if n else {**state, "ranks": [()] * len(qs)}


def _per_source(counts: list[float]) -> np.ndarray:
    """Each source's counts (sources x thresholds, NaN where withheld); the pooled ones if the reduce keeps none."""
    parts = getattr(counts, "parts", None)
    rows = parts if parts is not None else [counts]
    return np.asarray(rows, dtype=float).reshape(len(rows), len(counts))


def _narrow(state: dict[str, Any], cuts: list[float], counts: list[float]) -> dict[str, Any]:
    thresholds = np.concatenate([state["thresholds"], np.asarray(cuts, dtype=float)])
    table = np.concatenate([state["counts"], _per_source(counts)], axis=1)
    # a threshold asked again (its count was withheld before) keeps every count released for it
    unique, where = np.unique(thresholds, return_inverse=True)
    merged = np.full((table.shape[0], len(unique)), np.nan)
    np.fmax.at(merged.T, where, table.T)
    return {**state, "thresholds": unique, "counts": merged, "round": state["round"] + 1}


def _bounds(state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The least and greatest pooled count at each threshold that the released counts allow.

    Counts never decrease with the threshold, so a withheld count lies
    between the source's released counts below and above it; above its last
    released count, a source has at most the rows the others do not.
    """
    table, n = state["counts"], state["n"]
    known = ~np.isnan(table)
    least = np.maximum.accumulate(np.where(known, table, 0.0), axis=1)
    most = np.minimum.accumulate(np.where(known, table, np.inf)[:, ::-1], axis=1)[:, ::-1]
    top = least[:, -1]
    most = np.minimum(most, (n - (top.sum() - top))[:, None])
    if np.any(least > most):
        raise FedMedError("quantile: a server's counts decrease with the threshold or exceed its rows; "
                          "a policy that perturbs counts cannot place quantiles")
    return least.sum(axis=0), np.minimum(most.sum(axis=0), n)


def _brackets(state: dict[str, Any]) -> dict[int, tuple[float, float]]:
    """For each rank, the tightest proven (lo, hi]: count(<= lo) < rank <= count(<= hi)."""
    thresholds = state["thresholds"]
    least, most = _bounds(state)
    brackets = {}
    for rank in {r for ranks in state["ranks"] for r in ranks}:
        below = int(np.searchsorted(most, rank, side="left")) - 1  # last with most < rank
        above = int(np.searchsorted(least, rank, side="left"))  # first with least >= rank
        lo = float(thresholds[below]) if below >= 0 else -math.inf
        hi = float(thresholds[above]) if above < len(thresholds) else math.inf
        brackets[rank] = (lo, hi)
    return brackets


def _pinned(lo: float, hi: float) -> bool:
    return math.isfinite(lo) and math.isfinite(hi) and float(np.nextafter(lo, math.inf)) == hi


# -- where to cut next ---------------------------------------------------------------------------


def _cuts(state: dict[str, Any], thresholds: int) -> list[float]:
    open_brackets = [(lo, hi) for lo, hi in set(_brackets(state).values()) if not _pinned(lo, hi)]
    budget = min(thresholds, MAX_BINS // max(len(open_brackets), 1))  # a server takes at most MAX_BINS at once
    phase = (32 + 40 * state["round"]) % 64 or 1  # a new offset each round (40/64 ≈ the golden ratio)
    cuts: set[float] = set()
    for lo, hi in open_brackets:
        cuts.update(_inside(lo, hi, budget, phase))
    # a withheld count may be released in another request, among other thresholds: asked again
    known = state["thresholds"][~np.isnan(state["counts"]).any(axis=0)]
    fresh = np.asarray(sorted(cuts), dtype=float)
    return fresh[~np.isin(fresh, known)].tolist()


def _inside(lo: float, hi: float, budget: int, phase: int) -> list[float]:
    """About ``budget`` cuts strictly inside (lo, hi]: just below ``hi``, round numbers with the float
    just below each, and floats evenly spread in their order."""
    if math.isinf(lo) and math.isinf(hi):
        # no count was released on either side: the values may sit inside any interval of the grid
        edges = [-math.inf, *GRID, math.inf]
        share = budget // (len(edges) - 1)
        return [cut for a, b in zip(edges, edges[1:]) for cut in _spread(a, b, share, phase)]
    a, b = _cut_range(lo, hi)
    cuts = []
    if math.isfinite(hi) and float(np.nextafter(hi, -math.inf)) > lo:
        cuts.append(float(np.nextafter(hi, -math.inf)))
    for value in _round_numbers(a, b, budget // ROUND_SHARE):
        cuts += [value, float(np.nextafter(value, -math.inf))]
    return cuts + _spread(a, b, budget - len(cuts), phase)


def _cut_range(lo: float, hi: float) -> tuple[float, float]:
    """Where to cut a bracket open at one end: within two steps of the first-round grid from its finite end."""
    if math.isinf(lo):
        below = [g for g in GRID if g < hi]
        return (below[-2] if len(below) >= 2 else -math.inf), hi
    if math.isinf(hi):
        above = [g for g in GRID if g > lo]
        return lo, (above[1] if len(above) >= 2 else math.inf)
    return lo, hi


def _round_numbers(a: float, b: float, most: int) -> list[float]:
    """The multiples of the finest step 1, 2 or 5·10^e with at most ``most`` of them strictly inside (a, b)."""
    width = b - a
    if most < 1 or not math.isfinite(width) or width / most <= 0:
        return []
    e = math.floor(math.log10(width / most))
    for m, exponent in ((1, e), (2, e), (5, e), (1, e + 1), (2, e + 1), (5, e + 1), (1, e + 2)):
        step = m * 10.0**exponent
        try:
            first, last = math.floor(a / step) + 1, math.ceil(b / step) - 1
        except (OverflowError, ValueError, ZeroDivisionError):
            return []
        if last - first + 1 <= most:
            values = (_decimal(i * m, exponent) for i in range(first, last + 1))
            return [v for v in values if a < v < b]
    return []


def _decimal(mantissa: int, exponent: int) -> float:
    """The float nearest to ``mantissa · 10^exponent`` (as ``float("<m>e<e>")``)."""
    return float(mantissa * 10**exponent) if exponent >= 0 else mantissa / 10**-exponent


def _spread(a: float, b: float, count: int, phase: int = 32) -> list[float]:
    """``count`` floats strictly inside (a, b), evenly spaced in the order of all float64 values.

    The i-th sits ``(i + phase / 64) / count`` of the way: rounds that cut
    the same bracket again with another phase ask new thresholds.
    """
    start, stop = _order(a), _order(b)
    span = stop - start
    if count < 1 or span < 2:
        return []
    if span - 1 <= count:
        orders = list(range(start + 1, stop))
    else:
        orders = sorted({start + max((64 * i + phase) * span // (64 * count), 1) for i in range(count)})
    return _from_order(np.asarray(orders, dtype=np.int64)).tolist()


_MAGNITUDE = (1 << 63) - 1


def _order(value: float) -> int:
    """The position of ``value`` among float64 values: increasing with the value, 0 for ±0."""
    bits = int(np.float64(value).view(np.int64))
    return bits if bits >= 0 else -(bits & _MAGNITUDE)


def _from_order(orders: np.ndarray) -> np.ndarray:
    bits = np.where(orders >= 0, orders, np.int64(-(1 << 63)) | -orders)
    return bits.view(np.float64)


# -- the result ----------------------------------------------------------------------------------


def _finish(state: dict[str, Any], names: tuple[str, ...], scalar: bool) -> "Quantile | list[Quantile]":
    if not state["n"]:
        values = [Quantile(math.nan, math.nan, math.nan) for _ in state["qs"]]
        return values[0] if scalar else values
    brackets = _brackets(state)
    values = []
    for q, ranks in zip(state["qs"], state["ranks"]):
        for rank in ranks:
            lo, hi = brackets[rank]
            if math.isinf(lo) or math.isinf(hi):
                raise PrivacyError(_hidden(state, names, q, rank, lo, hi), operation=f"quantile {q:g}")
        h = (state["n"] - 1) * q
        gamma = h - math.floor(h)
        first, second = brackets[ranks[0]], brackets[ranks[-1]]  # one rank when h is whole
        value = _lerp(_value(*first), _value(*second), gamma)
        low = _lerp(_low(*first), _low(*second), gamma)
        high = _lerp(first[1], second[1], gamma)
        values.append(Quantile(value, min(low, value), max(high, value)))
        _warn_if_withheld(state, q, ranks, brackets, values[-1])
    return values[0] if scalar else values


def _value(lo: float, hi: float) -> float:
    return hi if _pinned(lo, hi) else lo / 2 + hi / 2


def _low(lo: float, hi: float) -> float:
    return float(np.nextafter(lo, math.inf))


def _lerp(a: float, b: float, t: float) -> float:
    # numpy's _lerp, so that pinned order statistics give numpy's value to the last bit
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def _warn_if_withheld(state: dict[str, Any], q: float, ranks: tuple[int, ...],
                      brackets: dict[int, tuple[float, float]], value: Quantile) -> None:
    # a threshold strictly inside a proven bracket is one whose count was withheld somewhere
    thresholds = state["thresholds"]
    if any(np.any((thresholds > brackets[r][0]) & (thresholds < brackets[r][1])) for r in ranks):
        warnings.warn(f"quantile {q:g}: withheld counts leave it between {value.low!r} and {value.high!r}; "
                      f"the value is the middle", PrivacyWarning, stacklevel=2)


def _hidden(state: dict[str, Any], names: tuple[str, ...], q: float, rank: int, lo: float, hi: float) -> str:
    """Why a rank cannot be placed, naming the sources whose withheld counts hide it."""
    thresholds, table = state["thresholds"], state["counts"]
    least, most = _bounds(state)
    # the threshold that would have closed the open end, had every source released its count there
    if math.isinf(lo):
        i = max(int(np.searchsorted(least, rank, side="left")) - 1, 0)
    else:
        i = min(int(np.searchsorted(most, rank, side="left")), len(thresholds) - 1)
    unsure = [s for s in range(table.shape[0]) if np.isnan(table[s, i])] or list(range(table.shape[0]))
    where = ", ".join(names[s] for s in unsure) if len(names) == table.shape[0] else "a server"
    if math.isinf(lo) and math.isinf(hi):
        return (f"quantile: no released count places quantile {q:g}: {where} withheld every count asked "
                f"(fewer than k rows on one side of each threshold); its values may all lie between two "
                f"neighbouring thresholds (rescale them, e.g. x * 1000) or be too few")
    side, tail = ("smallest", "lower") if math.isinf(lo) else ("largest", "upper")
    whose = "its privacy policy withholds" if len(unsure) == 1 else "their privacy policies withhold"
    return (f"quantile: quantile {q:g} is within the k most extreme ({side}) values on {where}, which {whose} "
            f"(fewer than k rows on one side of a threshold); ask for a quantile further from the {tail} "
            f"tail, or a histogram with fixed edges")


def histogram(x: FedData, bins: "int | Sequence[float]" = 10, range: "tuple[float, float] | None" = None) -> LazyResult:
    """Counts per bin, as ``numpy.histogram``.

    Given edges, or a bin count with ``range``: one round. A bin count
    without a range takes two rounds: the pooled minimum and maximum first
    (each a single value, subject to the servers' policies), then the counts.

    A bin a server's privacy policy withheld is NaN in the pooled counts,
    never 0 (``result.withheld`` marks it, ``result.n`` is then NaN); a
    withheld minimum or maximum raises ``fm.PrivacyError`` asking for
    edges or a ``range``.

    Examples
    --------
    >>> import fedmed as fm
    >>> x = fm.FedData([fm.Local([1.0, 2.0, 2.5]), fm.Local([4.0])])
    >>> fm.stats.histogram(x, bins=3).compute().counts.tolist()
    [1, 2, 1]
    """
    if np.ndim(bins) == 1:
        return aggregate(x, "histogram", [float(b) for b in bins], needed_by="histogram")  # type: ignore[union-attr]
    if range is not None:
        return aggregate(x, "histogram", int(bins), [float(r) for r in range], needed_by="histogram")  # type: ignore[arg-type]
    edges = call(_edges, aggregate(x, "min", needed_by="histogram"), aggregate(x, "max", needed_by="histogram"), int(bins))  # type: ignore[arg-type]
    return aggregate(x, "histogram", edges, needed_by="histogram")


def _edges(low: float | None, high: float | None, bins: int) -> list[float]:
    if not all(v is None or isinstance(v, numbers.Real) for v in (low, high)):
        # a whole table's min and max are one per column: edges computed here could not be sent
        raise FedMedError("histogram: a bin count without range=(lo, hi) needs a single column (data['age']); "
                          "for a whole table give the edges (bins=[...]) or range=(lo, hi)")
    if low is None or high is None:
        raise FedMedError("histogram: no values to bin")
    if math.isnan(low) or math.isnan(high):
        # a server withheld its minimum or maximum (held by fewer than k rows): no edges can be placed
        raise PrivacyError("histogram: a privacy policy withheld the pooled minimum or maximum, so a bin count "
                           "alone cannot place the edges; give the edges (bins=[...]) or range=(lo, hi)",
                           operation="histogram")
    if low == high:  # numpy's rule for a single value
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, bins + 1).tolist()


def reconstruct(x: FedData, bins: "int | Sequence[float]" = 10, range: "tuple[float, float] | None" = None,
                seed: int | None = None) -> LazyResult:
    """A SYNTHETIC sample with the same binned distribution as ``x`` (not the real values).

    Each bin's count of values is drawn uniformly within the bin, then
    shuffled: the histogram of the result equals ``histogram(x, bins)``, and
    nothing finer than the bins is reproduced. Useful to sketch a
    distribution or try a method; never to report per-person results.
    Rounds as ``histogram``. A histogram with withheld bins raises
    ``fm.PrivacyError`` naming them (how many values to draw there is
    unknown): use coarser bins.

    Examples
    --------
    >>> import fedmed as fm
    >>> x = fm.FedData([fm.Local([1.0, 2.0, 2.5]), fm.Local([4.0])])
    >>> len(fm.stats.reconstruct(x, bins=3, seed=0).compute())
    4
    """
    return call(_reconstruct, histogram(x, bins, range), seed)


def _reconstruct(hist: Histogram, seed: int | None) -> np.ndarray:
    if not hist.exact:
        raise PrivacyError(f"reconstruct: a privacy policy withheld the counts of the bins {_bins(hist)}, so how "
                           f"many values to draw there is unknown; use coarser bins (fewer, wider) or a larger "
                           f"subgroup", operation="reconstruct")
    rng = np.random.default_rng(seed)
    parts = [rng.uniform(lo, hi, int(n)) for lo, hi, n in zip(hist.edges[:-1], hist.edges[1:], hist.counts)]
    sample = np.concatenate(parts) if parts else np.array([])
    rng.shuffle(sample)
    return sample


def _bins(hist: Histogram) -> str:
    """The withheld bins as intervals, e.g. ``[20, 30), [60, 70]`` (numpy's last bin is closed)."""
    last = len(hist.counts) - 1
    return ", ".join(f"[{hist.edges[i]:g}, {hist.edges[i + 1]:g}{']' if i == last else ')'}"
                     for i in np.flatnonzero(hist.withheld))
