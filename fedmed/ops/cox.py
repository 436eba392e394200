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
