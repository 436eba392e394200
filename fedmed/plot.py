"""Plots of federated results, drawn with matplotlib (the optional extra ``fedmed[plot]``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def _axes(ax: Any) -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'fedmed[plot]'") from None
    return ax if ax is not None else plt.subplots(figsize=(6, 4))[1]


def histogram(counts: np.ndarray, edges: np.ndarray, ax: Any = None, **style: Any) -> Any:
    """Bars of a pooled histogram (suppressed bins, NaN, are left blank)."""
    ax = _axes(ax)
    widths = np.diff(edges)
    ax.bar(edges[:-1], np.nan_to_num(counts, nan=0.0), width=widths, align="edge",
           edgecolor="white", **{"color": "#3b6ea5", **style})
    ax.set_ylabel("count")
    return ax


def survival(table: pd.DataFrame, ax: Any = None, label: str | None = None, **style: Any) -> Any:
    """A Kaplan–Meier step curve with its confidence band."""
    ax = _axes(ax)
    times = np.concatenate([[0.0], table["time"].to_numpy(dtype=float)])
    surv = np.concatenate([[1.0], table["survival"].to_numpy(dtype=float)])
    low = np.concatenate([[1.0], table["ci_lower"].to_numpy(dtype=float)])
    high = np.concatenate([[1.0], table["ci_upper"].to_numpy(dtype=float)])
    line = ax.step(times, surv, where="post", label=label, **style)[0]
    ax.fill_between(times, low, high, step="post", alpha=0.2, color=line.get_color())
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("time")
    ax.set_ylabel("survival")
    return ax
