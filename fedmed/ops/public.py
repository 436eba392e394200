"""Reduce halves of aggregates: pool the servers' map results on the client.

Each takes the list of per-fragment results (in source order) and returns
the pooled value.
"""

from __future__ import annotations

import builtins
import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..results import CoMatrix, Comoments, Histogram, Moments


def sum(parts: Sequence[Any]) -> Any:
    """Add the partial results."""
    return builtins.sum(parts, 0)


def min(parts: Sequence[Any]) -> Any:
    """Smallest of the partial minima (None where no fragment had a value; NaN where one was withheld)."""
    return _extreme(builtins.min, parts)


def max(parts: Sequence[Any]) -> Any:
    """Largest of the partial maxima (None where no fragment had a value; NaN where one was withheld)."""
    return _extreme(builtins.max, parts)


def _extreme(pick: Any, parts: Sequence[Any]) -> Any:
    present = [p for p in parts if p is not None]
    if any(isinstance(p, float) and math.isnan(p) for p in present):
        return math.nan  # a server withheld its extreme: the pooled one is unknown, never another server's
    return pick(present) if present else None


def union(parts: Sequence[Sequence[Any]]) -> list[Any]:
    """Sorted union of the partial sets."""
    return sorted(builtins.set().union(*parts))


def value_counts(parts: Sequence[Sequence[Sequence[Any]]]) -> pd.Series:
    """Pooled counts per value, most frequent first (ties by value), as ``Series.value_counts``."""
    cells = [_cells(part) for part in parts]
    labels = dict.fromkeys(key for known, _ in cells for key in known)
    totals = {key[0]: _pooled(key, cells) for key in labels}
    ordered = sorted(totals.items(), key=lambda item: (-_rank(item[1]), _sort_key(item[0])))
    counts = [count for _, count in ordered]
    exact = not any(math.isnan(c) for c in counts)
    return pd.Series(counts, index=[value for value, _ in ordered], name="count", dtype="int64" if exact else "float64")


def _cells(part: Sequence[Sequence[Any]]) -> tuple[dict[tuple, float], bool]:
    """One server's table as ``{labels: count}``, and whether it withheld cells.

    A privacy policy withholds a cell as an entry without labels (all None):
    which labels it had is the secret. A cell it keeps with an unknown count
    has its labels and a None count.
    """
    known, withheld = {}, False
    for *labels, count in part:
        if all(label is None for label in labels):
            withheld = True
        else:
            known[tuple(labels)] = math.nan if count is None else count
    return known, withheld


def _pooled(key: tuple, cells: Sequence[tuple[dict[tuple, float], bool]]) -> float:
    # absent from a server that withheld cells: maybe withheld there, so unknown (nan), never a silent 0
    return builtins.sum(known.get(key, math.nan if withheld else 0) for known, withheld in cells)


def histogram(parts: Sequence[dict[str, Any]]) -> Histogram:
    """Counts added bin by bin; every server must have used the same edges."""
    edges = parts[0]["edges"]
    if any(part["edges"] != edges for part in parts):
        raise ValueError("servers used different histogram edges")
    # a cell a server suppressed (None) makes the pooled cell unknown: nan, never a silent 0
    counts = np.sum(np.asarray([part["counts"] for part in parts], dtype=float), axis=0)
    exact = not np.isnan(counts).any()
    return Histogram(counts.astype(np.int64) if exact else counts, np.asarray(edges, dtype=float))


def crosstab(parts: Sequence[Sequence[Sequence[Any]]]) -> pd.DataFrame:
    """The pooled contingency table, rows and columns sorted; absent combinations 0, or nan
    (unknown) where a server withheld cells."""
    cells = [_cells(part) for part in parts]
    keys = [key for known, _ in cells for key in known]
    rows, columns = _sorted(a for a, _ in keys), _sorted(b for _, b in keys)
    table = pd.DataFrame([[_pooled((a, b), cells) for b in columns] for a in rows], index=rows, columns=columns,
                         dtype=float)
    return table.astype("int64") if not table.isna().any().any() else table


def moments(parts: Sequence[Sequence[Any]]) -> Moments:
    """Merge ``[n, mean, M2]`` of each server with the parallel algorithm of Chan et al. (1979).

    Merging means and M2 instead of adding raw sums of squares keeps the
    variance accurate when the mean is large against the spread.
    """
    n, mean, m2 = 0, 0.0, 0.0
    for nb, mean_b, m2_b in parts:
        if nb == 0:
            continue
        total = n + nb
        delta = mean_b - mean
        mean += delta * nb / total
        m2 += m2_b + delta * delta * n * nb / total
        n = total
    return Moments(n, mean if n else math.nan, m2)


def comoments(parts: Sequence[Sequence[Any]]) -> Comoments:
    """Merge bivariate moments (Chan et al.'s update, applied to the co-moment as well)."""
    n, mx, my, m2x, m2y, cxy = 0, 0.0, 0.0, 0.0, 0.0, 0.0
    for nb, mx_b, my_b, m2x_b, m2y_b, cxy_b in parts:
        if nb == 0:
            continue
        total = n + nb
        dx, dy = mx_b - mx, my_b - my
        weight = n * nb / total
        mx += dx * nb / total
        my += dy * nb / total
        m2x += m2x_b + dx * dx * weight
        m2y += m2y_b + dy * dy * weight
        cxy += cxy_b + dx * dy * weight
        n = total
    nan = math.nan
    return Comoments(n, mx if n else nan, my if n else nan, m2x, m2y, cxy)


def _rank(count: float) -> float:
    return -1.0 if math.isnan(count) else count


def _sorted(labels: Any) -> list[Any]:
    """Distinct labels in their natural order (numbers by value, as pandas), by type first when mixed."""
    distinct = list(dict.fromkeys(labels))
    try:
        return sorted(distinct)
    except TypeError:  # numbers and text together
        return sorted(distinct, key=_sort_key)


def _sort_key(value: Any) -> tuple[str, Any]:
    # values of mixed types (numbers and text) still sort deterministically
    return (type(value).__name__, value)


def comoment_matrix(parts: Sequence[Sequence[Any]]) -> CoMatrix:
    """Merge ``[n, means, M]`` of each server with Chan et al.'s update, in matrix form."""
    n, mean, m2 = 0, None, None
    for nb, mean_b, m2_b in parts:
        mean_b, m2_b = np.asarray(mean_b, dtype=float), np.asarray(m2_b, dtype=float)
        if mean is None:
            mean, m2 = np.zeros_like(mean_b), np.zeros_like(m2_b)
        if nb == 0:
            continue
        total = n + nb
        delta = mean_b - mean
        mean = mean + delta * nb / total
        m2 = m2 + m2_b + np.outer(delta, delta) * n * nb / total
        n = total
    return CoMatrix(n, mean, m2)


class Counts(list):
    """Pooled counts, one float per threshold, that keep each source's own in ``parts``.

    A pooled count is NaN where any source withheld its count; ``parts``
    (sources in order, NaN where withheld) lets quantiles bound a withheld
    count by the same source's released ones instead of losing the pooled one.
    """

    parts: list[list[float]]


def count_below(parts: Sequence[Sequence[int | None]]) -> Counts:
    """Counts added threshold by threshold (nan where a server suppressed its count); ``.parts`` keeps each source's."""
    table = np.asarray(parts, dtype=float).reshape(builtins.len(parts), -1)
    pooled = Counts(np.sum(table, axis=0).tolist())
    pooled.parts = table.tolist()
    return pooled


def glm_step(parts: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """Gradients, Hessians and log-likelihoods added over servers."""
    return {
        "n": builtins.sum(p[0] for p in parts),
        "gradient": np.sum([p[1] for p in parts], axis=0),
        "hessian": np.sum([p[2] for p in parts], axis=0),
        "loglik": math.fsum(p[3] for p in parts),
    }


def glm_family_step(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each number of the servers' ``glm_family_step`` answers added over servers (matrices as arrays)."""
    return {key: (math.fsum(p[key] for p in parts) if isinstance(parts[0][key], float)
                  else builtins.sum(p[key] for p in parts) if isinstance(parts[0][key], int)
                  else np.sum([np.asarray(p[key], dtype=float) for p in parts], axis=0))
            for key in parts[0]}


# -- Cox proportional hazards (fedmed.stats.cox) ---------------------------------------------------


def cox_bins(parts: Sequence[Any]) -> list[Any]:
    """Each server's answer (or, under ``on_suppressed="keep"``, its ``PrivacyError``), in source order:
    ``fm.stats.coxph`` picks a binning every server answered."""
    return list(parts)


def cox_step(parts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each server's cells as arrays, kept apart: ``fm.stats.coxph`` adds them per stratum and time, or
    keeps each server's apart (``strata="server"``)."""
    return [{key: value if key == "stratum" else np.asarray(value, dtype=float) for key, value in p.items()}
            for p in parts]


# -- schema (fedmed.api.schema) -----------------------------------------------------------------


def schema(parts: Sequence[Any]) -> list[Any]:
    """The per-source answers as they came, in source order: the client compares them
    (``fedmed.api.schema.dtypes``), naming the servers that differ, instead of merging them here."""
    return list(parts)


# -- grouped partial aggregates (data.groupby(...)) ------------------------------------------------

_STATS = ("size", "n", "sum", "mean", "m2", "min", "max")  # fedmed.ops.private.GROUP_STATS


def grouped(parts: Sequence[dict[str, Any]]) -> pd.DataFrame | pd.Series:
    """Pool per-group partial aggregates: a DataFrame of ``size n sum mean m2 min max`` per group (moments
    merged with Chan et al.'s update), or, for per-value counts, a Series of counts by (labels, value).

    Groups are sorted by label (pandas' ``sort=True``), the index is a MultiIndex for several keys. A
    group a server withheld (its entry without labels) is unknown: every number of a group absent from
    a server that withheld groups is NaN, never a silent 0 (as ``value_counts``).
    """
    nkeys = next((p["keys"] for p in parts if isinstance(p, dict) and "keys" in p), 1)
    if any("counts" in p for p in parts):
        return _grouped_counts([p.get("counts", []) for p in parts], nkeys)
    return _grouped_stats([p.get("groups", []) for p in parts], nkeys)


def merge_grouped(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Partials of several pieces of one fragment (Dask partitions) merged into one fragment's wire value."""
    pooled = grouped(parts)
    nkeys = next((p["keys"] for p in parts if "keys" in p), 1)
    if isinstance(pooled, pd.Series):
        return {"keys": nkeys, "counts": [[*_plain_labels(k), int(v)] for k, v in pooled.items()]}
    rows = [[*_plain_labels(k), *(None if _missing(v) else _py(v) for v in row)]
            for k, row in zip(pooled.index, pooled.itertuples(index=False))]
    for row in rows:  # counts are whole numbers on the wire
        row[nkeys], row[nkeys + 1] = int(row[nkeys]), int(row[nkeys + 1])
    return {"keys": nkeys, "groups": rows}


def _plain_labels(key: Any) -> list[Any]:
    return [_py(k) for k in (key if isinstance(key, tuple) else (key,))]


def _py(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _grouped_counts(parts: Sequence[Sequence[Sequence[Any]]], nkeys: int) -> pd.Series:
    cells = [_cells(part) for part in parts]
    keys = _sorted(key for known, _ in cells for key in known)
    counts = [_pooled(key, cells) for key in keys]
    exact = not any(math.isnan(c) for c in counts)
    index = pd.MultiIndex.from_tuples(keys, names=[*range(nkeys), "value"]) if keys else \
        pd.MultiIndex.from_arrays([[]] * (nkeys + 1), names=[*range(nkeys), "value"])
    return pd.Series(counts, index=index, name="count", dtype="int64" if exact else "float64")


def _grouped_stats(parts: Sequence[Sequence[Sequence[Any]]], nkeys: int) -> pd.DataFrame:
    servers = []
    for part in parts:
        known, withheld = {}, False
        for entry in part:
            labels = tuple(entry[:nkeys])
            if all(label is None for label in labels):
                withheld = True
            else:
                known[labels] = entry[nkeys:]
        servers.append((known, withheld))
    keys = _sorted(key for known, _ in servers for key in known)
    rows = [_merge_group([known.get(key) if key in known else (None if withheld else ()) for known, withheld in servers])
            for key in keys]
    table = pd.DataFrame(rows, columns=list(_STATS), dtype=object)
    if nkeys > 1:
        table.index = pd.MultiIndex.from_tuples(keys) if keys else pd.MultiIndex.from_arrays([[]] * nkeys)
    else:
        table.index = pd.Index([k[0] for k in keys], dtype=None if keys else object)
    for column in ("size", "n", "sum"):
        values = table[column].tolist()
        whole = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)
        table[column] = np.asarray(values, dtype="int64" if whole and values else "float64")
    for column in ("mean", "m2"):
        table[column] = np.asarray([math.nan if v is None else v for v in table[column]], dtype="float64")
    for column in ("min", "max"):
        values = [math.nan if v is None else v for v in table[column]]
        kind = _common(values)
        table[column] = np.asarray(values, dtype=object if kind == object else kind) if values else \
            np.asarray([], dtype="float64")
    return table


def _common(values: Sequence[Any]) -> Any:
    """int64 for whole numbers none of which is missing (as pandas' min of an int column), float64
    for numbers (NaN where missing or withheld), object for text."""
    present = [v for v in values if not _missing(v)]
    if len(present) == len(values) and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present):
        return "int64"
    if all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in present):
        return "float64"
    return object


def _merge_group(entries: Sequence[Any]) -> list[Any]:
    """One group over the servers: ``()`` where a server has no such group, None where it may have
    withheld it (then everything is unknown); moments merged with Chan et al.'s update."""
    if any(e is None for e in entries):
        return [math.nan] * len(_STATS)
    size, n, total, mean, m2 = 0, 0, 0, 0.0, 0.0
    lows, highs, text = [], [], False
    for entry in entries:
        if not entry:
            continue
        s, nb, sb, mean_b, m2_b, low, high = entry
        size += s
        if sb is None:
            text = True
        else:
            total += sb
        if nb and mean_b is not None:
            merged = n + nb
            delta = mean_b - mean
            mean += delta * nb / merged
            m2 += (m2_b if m2_b is not None else math.nan) + delta * delta * n * nb / merged
        n += nb
        if nb:
            lows.append(low)
            highs.append(high)
    nan = math.nan
    if text:
        total = mean = m2 = nan
    elif n == 0:
        mean = nan
    return [size, n, total, mean, m2, _extreme(builtins.min, lows), _extreme(builtins.max, highs)]


# -- per-site model fits (fm.stats.slma; helper "slma", issue 17) ---------------------------------


def site_fit(parts: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """Each source's own fit, in source order, as ``{"n", "params", "cov"}`` (and ``"events"`` for a Cox
    fit): a meta-analysis pools them, not a sum."""
    return [{"n": int(p[0]), "params": np.asarray(p[1], dtype=float), "cov": np.asarray(p[2], dtype=float),
             **({"events": int(p[3])} if len(p) > 3 else {})} for p in parts]
