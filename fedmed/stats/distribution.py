"""Quantiles, histograms and synthetic samples, from counts only.

Quantiles are found by bisection on counts, many thresholds at a time: the
servers say how many of their values lie at or below each threshold, never
a value. A first round places each wanted order statistic between two
powers of ten (thresholds ±10^-8 ... ±10^16 and 0); each further round splits
its bracket into ``thresholds + 1`` equal parts. With the defaults (3
refining rounds of 1024 thresholds, 4 rounds in all) the bracket shrinks by
1025^3 ≈ 1.08e9, so the error is at most 9·10^e / 1.08e9 ≈ 8.4e-9 · 10^e
for a quantile between 10^e and 10^(e+1): below 1e-7 of the range whenever
the range is at least a tenth of the values' magnitude (ages, blood
pressure, lab values). Each refining round sends about 18 KB per quantile
to each server (two brackets of 1024 float64 thresholds); fewer thresholds
and more rounds trade bytes for round trips.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..errors import FedMedError
from ..lazy import FedData, LazyResult
from ..results import Histogram
from .lazy_call import aggregate, call

#: First-round thresholds: 0 and ±10^e, so a bracket spans at most one decade.
DECADES = sorted({0.0, *(s * 10.0**e for s in (-1.0, 1.0) for e in range(-8, 17))})


def quantile(x: FedData, q: "float | Sequence[float]", rounds: int = 3, thresholds: int = 1024) -> LazyResult:
    """Quantiles of the non-missing values, as ``numpy.quantile`` (method ``linear``).

    Takes ``1 + rounds`` rounds; no server sends a value, only counts. The
    result is within the bracket width documented in this module (about
    8e-9 of the quantile's decade with the defaults: 4 rounds). Returns a float, or a
    list for a list of ``q``.

    Examples
    --------
    >>> import fedmed as fm
    >>> x = fm.FedData([fm.Local([1.0, 2.0, 3.0]), fm.Local([4.0, 10.0])])
    >>> round(fm.stats.quantile(x, 0.5).compute(), 6), [round(v, 6) for v in fm.stats.quantile(x, [0.1, 0.9]).compute()]
    (3.0, [1.4, 7.6])
    """
    qs = [float(q)] if np.ndim(q) == 0 else [float(v) for v in q]  # type: ignore[arg-type]
    if not all(0.0 <= v <= 1.0 for v in qs):
        raise ValueError("quantiles must lie in [0, 1]")
    state = call(_start, aggregate(x, "count", needed_by="quantile"),
                 aggregate(x, "count_below", DECADES, needed_by="quantile"), tuple(qs))
    for _ in range(rounds):
        cuts = call(_cuts, state, int(thresholds))
        state = call(_narrow, state, cuts, aggregate(x, "count_below", cuts, needed_by="quantile"))
    return call(_finish, state, np.ndim(q) == 0)


def median(x: FedData, rounds: int = 3, thresholds: int = 1024) -> LazyResult:
    """The median (``quantile(x, 0.5)``)."""
    return quantile(x, 0.5, rounds, thresholds)


def _start(n: int, counts: list[int], qs: tuple[float, ...]) -> dict[str, Any]:
    # For each q, numpy's linear method interpolates between order statistics
    # k and k + 1 (0-based), k = floor((n - 1) q): find both by their rank.
    if n == 0:
        return {"n": 0, "qs": qs, "ranks": [], "brackets": []}
    ranks = []
    for q in qs:
        h = (n - 1) * q
        k = math.floor(h)
        ranks += [k + 1, min(k + 2, n)]
    edges = [-math.inf, *DECADES, math.inf]
    full = [0, *counts, n]
    brackets = [_bracket(edges, full, r) for r in ranks]
    return {"n": n, "qs": qs, "ranks": ranks, "brackets": brackets}


def _bracket(edges: list[float], counts: list[float], rank: int) -> tuple[float, float]:
    """(lo, hi] with count(<= lo) < rank <= count(<= hi).

    A count a server suppressed (nan: too few rows on one side) is harmless
    away from the bracket; inside it, the quantile cannot be located.
    """
    i = next(i for i, c in enumerate(counts) if not math.isnan(c) and c >= rank)
    if math.isnan(counts[i - 1]):
        raise FedMedError(
            "quantile: a server's privacy policy suppressed the counts around this quantile "
            "(too few rows below or above it); report a coarser summary such as a histogram"
        )
    return edges[i - 1], edges[i]


def _cuts(state: dict[str, Any], thresholds: int) -> list[float]:
    cuts: list[float] = []
    for lo, hi in state["brackets"]:
        if math.isinf(lo) or math.isinf(hi):
            cuts += [0.0] * thresholds  # out of range: reported by _finish
        else:
            cuts += np.linspace(lo, hi, thresholds + 2)[1:-1].tolist()
    return cuts


def _narrow(state: dict[str, Any], cuts: list[float], counts: list[int]) -> dict[str, Any]:
    per = len(cuts) // max(len(state["brackets"]), 1)
    brackets = []
    for j, ((lo, hi), rank) in enumerate(zip(state["brackets"], state["ranks"])):
        if math.isinf(lo) or math.isinf(hi):
            brackets.append((lo, hi))
            continue
        edges = [lo, *cuts[j * per:(j + 1) * per], hi]
        # below lo there are fewer than rank values; at hi, at least rank
        full = [rank - 1, *counts[j * per:(j + 1) * per], rank]
        brackets.append(_bracket(edges, full, rank))
    return {**state, "brackets": brackets}


def _finish(state: dict[str, Any], scalar: bool) -> "float | list[float]":
    if state["n"] == 0:
        values = [math.nan] * len(state["qs"])
    else:
        if any(math.isinf(lo) or math.isinf(hi) for lo, hi in state["brackets"]):
            raise FedMedError("quantile: values beyond ±1e16 cannot be bracketed")
        mids = [(lo + hi) / 2 for lo, hi in state["brackets"]]
        values = []
        for i, q in enumerate(state["qs"]):
            h = (state["n"] - 1) * q
            low, high = mids[2 * i], mids[2 * i + 1]
            values.append(low + (h - math.floor(h)) * (high - low))
    return values[0] if scalar else values


def histogram(x: FedData, bins: "int | Sequence[float]" = 10, range: "tuple[float, float] | None" = None) -> LazyResult:
    """Counts per bin, as ``numpy.histogram``.

    Given edges, or a bin count with ``range``: one round. A bin count
    without a range takes two rounds: the pooled minimum and maximum first
    (each a single value, subject to the servers' policies), then the counts.

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
    if low is None or high is None:
        raise FedMedError("histogram: no values to bin")
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
    Rounds as ``histogram``.

    Examples
    --------
    >>> import fedmed as fm
    >>> x = fm.FedData([fm.Local([1.0, 2.0, 2.5]), fm.Local([4.0])])
    >>> len(fm.stats.reconstruct(x, bins=3, seed=0).compute())
    4
    """
    return call(_reconstruct, histogram(x, bins, range), seed)


def _reconstruct(hist: Histogram, seed: int | None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts = [rng.uniform(lo, hi, int(n)) for lo, hi, n in zip(hist.edges[:-1], hist.edges[1:], hist.counts)]
    sample = np.concatenate(parts) if parts else np.array([])
    rng.shuffle(sample)
    return sample
