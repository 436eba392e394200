"""The Cox partial likelihood from per-time sums, written once for the server and the client.

A server adds its rows per (stratum, event time): the events ``d`` and the
sums ``S0``, ``S1``, ``S2`` of ``w``, ``w x``, ``w x x'`` (``w = exp(x'beta)``)
over the rows still at risk, and for Efron's ties the same sums over the tied
events (``E0``, ``E1``, ``E2``). Whoever holds these sums gets the log partial
likelihood, its gradient and information without another pass over the rows:
the client after adding the servers' sums (``fm.stats.coxph``), or a server
fitting a Cox model on its own rows (the ``site_fit`` map, ``fm.stats.slma``).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def row_terms(design: np.ndarray, beta: np.ndarray, event: np.ndarray, efron: bool) -> np.ndarray:
    """Per row: ``w, w x, w x x'`` then ``event`` (and, for Efron, the same three times ``event``)."""
    n, p = design.shape
    w = np.exp(design @ beta)
    risk = np.column_stack([w, w[:, None] * design,
                            (w[:, None, None] * design[:, :, None] * design[:, None, :]).reshape(n, p * p)])
    parts = [risk, event[:, None].astype(float)] + ([risk * event[:, None]] if efron else [])
    return np.hstack(parts)


def cell_sums(cell: np.ndarray, table: np.ndarray, cells: int) -> np.ndarray:
    """``table``'s rows added per ``cell`` (0 to ``cells - 1``): one sort, one ``reduceat``."""
    order = np.argsort(cell, kind="stable")
    return sorted_cell_sums(cell[order], table[order], cells)


def sorted_cell_sums(cell: np.ndarray, table: np.ndarray, cells: int) -> np.ndarray:
    """As :func:`cell_sums` for rows already sorted by ``cell`` (a fit sorts once, then sums every iteration)."""
    out = np.zeros((cells, table.shape[1]))
    if len(cell):
        starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])
        out[cell[starts]] = np.add.reduceat(table, starts, axis=0)
    return out


def risk_sums(cells: np.ndarray, p: int, efron: bool) -> dict[str, np.ndarray]:
    """Per-cell sums (``(strata, times, columns)`` from :func:`row_terms`) as ``d``, ``S0``... per stratum and time.

    The risk set of a time is every row at that time or later: a reverse
    cumulative sum over the times.
    """
    width = 1 + p + p * p
    later = np.flip(np.cumsum(np.flip(cells[:, :, :width], axis=1), axis=1), axis=1)
    shapes = {"0": (), "1": (p,), "2": (p, p)}
    sums = {"d": cells[:, :, width]}
    for prefix, block in (("S", later), ("E", cells[:, :, width + 1:])) if efron else (("S", later),):
        for order, (start, stop) in zip("012", ((0, 1), (1, 1 + p), (1 + p, width))):
            sums[prefix + order] = block[:, :, start:stop].reshape(*block.shape[:2], *shapes[order])
    return sums


def pooled_sums(stratum: np.ndarray, time: np.ndarray, cells: np.ndarray, p: int, efron: bool) -> dict[str, np.ndarray]:
    """Cells of :func:`row_terms` sums from any number of servers, added per (stratum, time), as risk sums.

    Each row of ``cells`` is one server's cell (``stratum`` a number,
    ``time`` its binned time). Equal keys are added; then, per stratum, the
    risk set of a time is every cell from that time on (a reverse
    cumulative sum); the result is :func:`risk_sums`' dictionary with the
    times of all strata stacked (a time without events adds nothing to
    :func:`derivatives`).

    >>> sums = pooled_sums(np.zeros(3), np.array([2.0, 1.0, 2.0]), np.array([[1.0, 0, 0, 1], [1, 1, 1, 1], [1, 0, 0, 0]]),
    ...                    1, efron=False)
    >>> sums["S0"].tolist(), sums["d"].tolist()
    ([3.0, 2.0], [1.0, 1.0])
    """
    keys = np.column_stack([stratum, time]).astype(float)
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)  # sorted by stratum, then time
    summed = np.zeros((len(unique), cells.shape[1]))
    np.add.at(summed, inverse.ravel(), cells)
    blocks = [summed[unique[:, 0] == s][None] for s in np.unique(unique[:, 0])]
    parts = [risk_sums(block, p, efron) for block in blocks]
    return {name: np.concatenate([part[name][0] for part in parts]) for name in parts[0]} if parts else {}


def derivatives(sums: Mapping[str, np.ndarray], xsum: np.ndarray, beta: np.ndarray, efron: bool) -> dict[str, Any]:
    """Log partial likelihood, gradient and information from the sums of every time (stacked), all times at once.

    ``xsum`` is the sum of ``x`` over the events. Each event time with ``d``
    events adds ``-sum_l log(S0 - f_l E0)`` with ``f_l = l / d``,
    ``l = 0..d-1`` (Efron), or ``-d log S0`` (Breslow, one term of weight
    ``d``), and the matching gradient and information terms.

    Two events, at times 1 (``x = 1``) and 2 (``x = 0``), at ``beta = 0``:

    >>> sums = {"d": np.array([1.0, 1.0]), "S0": np.array([2.0, 1.0]), "S1": np.array([[1.0], [0.0]]),
    ...         "S2": np.array([[[1.0]], [[0.0]]])}
    >>> derivatives(sums, np.array([1.0]), np.zeros(1), efron=False)["gradient"]
    array([0.5])
    """
    at, fraction, weight = _terms(sums["d"], efron)
    den, num1, num2 = (sums[f"S{k}"][at] - (_scaled(fraction, sums[f"E{k}"][at]) if efron else 0.0)
                       for k in "012")
    mean = num1 / den[:, None]
    loglik = float(xsum @ beta - np.sum(weight * np.log(den)))
    gradient = xsum - weight @ mean
    information = np.einsum("t,tij->ij", weight / den, num2) - np.einsum("t,ti,tj->ij", weight, mean, mean)
    return {"loglik": loglik, "gradient": gradient, "information": information}


def _terms(d: np.ndarray, efron: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(time index, f, weight)`` of each term: one per event for Efron, one per event time for Breslow."""
    counts = np.rint(d).astype(int)
    times = np.flatnonzero(counts)
    if not efron:
        return times, np.zeros(len(times)), counts[times].astype(float)
    at = np.repeat(times, counts[times])
    first = np.repeat(np.cumsum(counts[times]) - counts[times], counts[times])
    return at, (np.arange(len(at)) - first) / counts[at], np.ones(len(at))


def _scaled(fraction: np.ndarray, values: np.ndarray) -> np.ndarray:
    return fraction.reshape(-1, *([1] * (values.ndim - 1))) * values


def cells(stratum: np.ndarray, time: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's cell (0, 1, ...) of equal (stratum, time), cells sorted by stratum then time; and each
    cell's stratum and time.

    >>> cells(np.array([1.0, 0.0, 1.0]), np.array([5.0, 7.0, 5.0]))
    (array([1, 0, 1]), array([0., 1.]), array([7., 5.]))
    """
    s_code, s_values = _codes(stratum)
    t_code, t_values = _codes(time)
    unique, code = np.unique(s_code * max(len(t_values), 1) + t_code, return_inverse=True)
    return code.ravel(), s_values[unique // max(len(t_values), 1)], t_values[unique % max(len(t_values), 1)]


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unique, code = np.unique(values, return_inverse=True)
    return code.ravel().astype(np.int64), unique


def binned(times: np.ndarray, bins: Any) -> np.ndarray:
    """``times`` moved down to the start of their time bin.

    ``bins`` is a width (0: exact times, unchanged) or ``[width, per_octave]``:
    bins of ``width`` up to ``width * per_octave``, then each octave
    ``[2^e, 2^(e+1))`` cut into ``per_octave`` equal bins (wider where
    follow-up thins out). With powers of two every bin is a dyadic interval
    ``[m 2^j, (m + 1) 2^j)``, and any two of those, of any two binnings, are
    nested or disjoint (``nested``).

    >>> binned(np.array([0.5, 3.0, 5.0, 13.0, 27.0]), [2.0, 4])
    array([ 0.,  2.,  4., 12., 24.])
    """
    width, per_octave = _bins(bins)
    if width <= 0:
        return times
    step = np.full(times.shape, width)
    if per_octave:
        octave = np.ldexp(1.0, np.frexp(times)[1] - 1)  # 2^e <= t < 2^(e+1) for t > 0
        wide = times >= width * per_octave
        step[wide] = octave[wide] / per_octave
    return np.floor(times / step) * step


def nested(bins: Any) -> bool:
    """Are ``bins`` exact times, or powers of two whose bins nest with those of every other such binning?"""
    width, per_octave = _bins(bins)
    return width == 0 or (_power_of_two(width) and (per_octave == 0 or _power_of_two(per_octave)))


def describe_bins(bins: Any) -> str:
    """``bins`` in words, for results and messages."""
    width, per_octave = _bins(bins)
    if width <= 0:
        return "exact times"
    if not per_octave:
        return f"bins of width {width:g}"
    return f"bins of width {width:g} up to {width * per_octave:g}, then {per_octave:g} per doubling of time"


def _bins(bins: Any) -> tuple[float, float]:
    if isinstance(bins, (list, tuple)):
        return float(bins[0] or 0.0), float(bins[1] or 0.0)
    return float(bins or 0.0), 0.0


def _power_of_two(value: float) -> bool:
    return bool(value > 0 and np.isfinite(value) and np.frexp(value)[0] == 0.5)
