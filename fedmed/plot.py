"""Plots of federated results, drawn with matplotlib (the optional extra ``fedmed[plot]``).

A count or a survival a privacy policy withheld is unknown, not zero: a
plot that drew it as an empty bar or a flat line would show a number
nobody computed. Withheld bins and unknown spans of a curve are drawn
hatched over the whole height of the axes and named in the legend.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

#: How unknown (withheld) parts of a plot look: hatched, unfilled, over the whole height.
HATCH = {"hatch": "///", "fill": False, "edgecolor": "0.55", "linewidth": 0.8}
WITHHELD = "withheld"
UNKNOWN = "unknown (withheld)"


def _axes(ax: Any) -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'fedmed[plot]'") from None
    return ax if ax is not None else plt.subplots(figsize=(6, 4))[1]


def _floats(values: Any) -> np.ndarray:
    """Values as a float array with NaN for every missing value (NaN, None, pd.NA of nullable dtypes)."""
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _mark_unknown(ax: Any, spans: list[tuple[float, float]], label: str) -> None:
    """Hatch each ``(start, stop)`` span over the whole height; one legend entry for all of them."""
    for i, (start, stop) in enumerate(spans):
        ax.axvspan(start, stop, label=label if i == 0 else "_nolegend_", **HATCH)
    if spans:
        ax.legend()


def histogram(counts: np.ndarray, edges: np.ndarray, ax: Any = None, **style: Any) -> Any:
    """Bars of a pooled histogram; withheld bins (NaN counts) hatched and labelled "withheld", never as 0.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> ax = histogram(np.array([12.0, np.nan, 7.0]), np.array([0.0, 10.0, 20.0, 30.0]))
    >>> [round(bar.get_height()) for bar in ax.containers[0]]
    [12, 7]
    >>> ax.get_legend_handles_labels()[1]
    ['withheld']
    """
    ax = _axes(ax)
    counts, edges = _floats(counts), np.asarray(edges, dtype=float)
    known = ~np.isnan(counts)
    ax.bar(edges[:-1][known], counts[known], width=np.diff(edges)[known], align="edge",
           edgecolor="white", **{"color": "#3b6ea5", **style})
    _mark_unknown(ax, [(edges[i], edges[i + 1]) for i in np.flatnonzero(~known)], WITHHELD)
    ax.set_ylabel("count")
    return ax


def survival(table: pd.DataFrame, ax: Any = None, label: str | None = None, **style: Any) -> Any:
    """A Kaplan–Meier step curve with its confidence band.

    The curve stops where survival becomes unknown (NaN or ``<NA>``: a
    privacy policy withheld counts it depends on); from that time to the
    end of the table the span is hatched and labelled "unknown (withheld)".

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> table = pd.DataFrame({"time": [2.0, 5.0, 9.0], "survival": [0.8, None, None],
    ...                       "ci_lower": [0.5, None, None], "ci_upper": [0.95, None, None]})
    >>> ax = survival(table)
    >>> ax.lines[0].get_xdata().tolist(), ax.lines[0].get_ydata().tolist()
    ([0.0, 2.0, 5.0], [1.0, 0.8, 0.8])
    >>> ax.get_legend_handles_labels()[1]
    ['unknown (withheld)']
    """
    ax = _axes(ax)
    times = np.concatenate([[0.0], _floats(table["time"])])
    surv, low, high = (np.concatenate([[1.0], _floats(table[c])]) for c in ("survival", "ci_lower", "ci_upper"))
    end, last = _first_unknown(surv), float(times[-1])
    unknown = [(float(times[end]), last)] if end < len(times) else []
    if unknown:
        # the last known values hold until the time survival becomes unknown, and the curve stops there
        times = times[:end + 1]
        surv, low, high = (np.append(v[:end], v[end - 1]) for v in (surv, low, high))
    line = ax.step(times, surv, where="post", label=label, **style)[0]
    ax.fill_between(times, low, high, step="post", alpha=0.2, color=line.get_color())
    _mark_unknown(ax, unknown, UNKNOWN)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("time")
    ax.set_ylabel("survival")
    return ax


def _first_unknown(surv: np.ndarray) -> int:
    """Index of the first unknown survival (``len(surv)`` if none is)."""
    unknown = np.flatnonzero(np.isnan(surv))
    return int(unknown[0]) if unknown.size else len(surv)


def forest(estimates: pd.Series, bse: pd.Series, pooled: "dict[str, tuple[float, float]] | None" = None,
           alpha: float = 0.05, title: str | None = None, ax: Any = None) -> Any:
    """A forest plot: each site's estimate with its confidence interval, then pooled estimates as diamonds.

    ``estimates`` and ``bse`` are Series by site; ``pooled`` maps a label
    (``"fixed effect"``) to ``(estimate, standard error)``. Squares are
    sized by inverse variance, as in a meta-analysis.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> ax = forest(pd.Series({"a": 0.2, "b": 0.5}), pd.Series({"a": 0.1, "b": 0.2}), pooled={"fixed": (0.26, 0.09)})
    >>> [t.get_text() for t in ax.get_yticklabels()], len(ax.patches)
    (['a', 'b', 'fixed'], 1)
    """
    from scipy import stats as sps

    ax = _axes(ax)
    z = sps.norm.ppf(1 - alpha / 2)
    values, errors = _floats(estimates), _floats(bse)
    rows = np.arange(len(values))[::-1] + len(pooled or {})  # sites from the top, pooled rows below them
    weights = 1.0 / errors**2
    ax.errorbar(values, rows, xerr=z * errors, fmt="none", ecolor="0.2", linewidth=1)
    ax.scatter(values, rows, marker="s", s=20 + 80 * weights / np.nanmax(weights), color="0.2", zorder=3)
    labels = list(map(str, estimates.index))
    for i, (label, (estimate, error)) in enumerate((pooled or {}).items()):
        row = len(pooled) - 1 - i
        half = z * float(error)
        ax.add_patch(_diamond(float(estimate), half, row))
        labels.append(label)
    ax.axvline(0.0, color="0.6", linestyle=":", linewidth=1)
    ax.set_yticks(list(rows) + list(range(len(pooled or {}) - 1, -1, -1)), labels)
    ax.set_ylim(-1, len(labels))
    ax.set_xlabel(f"estimate ({1 - alpha:.0%} CI)" if title is None else f"{title} ({1 - alpha:.0%} CI)")
    return ax


def _diamond(estimate: float, half: float, row: float) -> Any:
    from matplotlib.patches import Polygon

    return Polygon([(estimate - half, row), (estimate, row + 0.3), (estimate + half, row), (estimate, row - 0.3)],
                   closed=True, color="C0")
