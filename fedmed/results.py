"""Result types of aggregates and statistics, as the client hands them to the user.

Small frozen dataclasses: their fields are what an analyst reads
(``result.pvalue``), and ``n`` says how many rows were used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations (M2) of the non-missing values."""

    n: int
    mean: float
    m2: float

    def var(self, ddof: int = 1) -> float:
        if self.n <= ddof:
            return math.nan
        # a constant split over servers merges to an M2 of rounding size, not 0: call it 0, as
        # numpy does for the pooled values, so tests on constant data give inf/nan like scipy
        if self.m2 <= self.n * (16 * np.finfo(float).eps * abs(self.mean)) ** 2:
            return 0.0
        return self.m2 / (self.n - ddof)


@dataclass(frozen=True)
class Comoments:
    """Moments of two columns over the rows where both are present, and their co-moment."""

    n: int
    mean_x: float
    mean_y: float
    m2_x: float
    m2_y: float
    cxy: float


@dataclass(frozen=True, eq=False)
class CoMatrix:
    """Count, means and centred cross-product matrix of several columns (complete rows)."""

    n: int
    mean: np.ndarray
    m2: np.ndarray


@dataclass(frozen=True)
class Histogram:
    """Counts per bin, and the ``len(counts) + 1`` bin edges (as ``numpy.histogram``).

    A bin a server's privacy policy withheld has an unknown pooled count:
    NaN in ``counts`` (then a float array), never 0, and ``withheld`` marks
    it. ``n`` is then NaN too, since the total of the bins is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> h = Histogram(np.array([12.0, np.nan, 7.0]), np.array([0.0, 10.0, 20.0, 30.0]))
    >>> h.withheld.tolist(), h.exact, h.n
    ([False, True, False], False, nan)
    """

    counts: np.ndarray
    edges: np.ndarray

    @property
    def withheld(self) -> np.ndarray:
        """True for each bin whose pooled count is unknown (withheld by a server)."""
        return np.isnan(np.asarray(self.counts, dtype=float))

    @property
    def exact(self) -> bool:
        """True when every bin's count is known."""
        return not self.withheld.any()

    @property
    def n(self) -> "int | float":
        """The total count, or NaN when a bin was withheld."""
        return int(self.counts.sum()) if self.exact else math.nan

    def plot(self, ax: Any = None, **style: Any) -> Any:
        """Draw the histogram with matplotlib (``pip install 'fedmed[plot]'``); returns the axes.

        Withheld bins are drawn hatched over the whole height and labelled
        "withheld" in the legend, never as empty bars.
        """
        from .plot import histogram

        return histogram(self.counts, self.edges, ax, **style)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Histogram)
            and np.array_equal(self.counts, other.counts, equal_nan=True)
            and np.array_equal(self.edges, other.edges)
        )


@dataclass(frozen=True)
class TestResult:
    """A test statistic, its p-value, degrees of freedom and the number of rows used."""

    __test__ = False  # not a pytest test class

    statistic: float
    pvalue: float
    df: float
    n: int


@dataclass(frozen=True)
class Chi2Result:
    """Chi-squared test of independence (as ``scipy.stats.chi2_contingency``), with the table."""

    statistic: float
    pvalue: float
    dof: int
    expected: pd.DataFrame
    observed: pd.DataFrame
    n: int

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Chi2Result) and (self.statistic, self.pvalue, self.dof, self.n) == (
            other.statistic, other.pvalue, other.dof, other.n
        ) and self.observed.equals(other.observed)


class SurvivalTable(pd.DataFrame):
    """A Kaplan–Meier table (time, at risk, events, censored, survival, CI) that can plot itself.

    Counts are pandas ``Int64`` (<NA> where unknown), survival and its
    interval NaN where unknown. What was withheld, and how the table was
    made, are attributes (kept in ``attrs``, so they follow copies):

    - ``bin_width``: the width of the time bins, None for exact times;
    - ``automatic``: whether ``bin_width="auto"`` chose it;
    - ``withheld``: the times whose counts are unknown (a server withheld cells);
    - ``exact_until``: the last time whose survival is known (None: none is);
    - ``note``: what was withheld and what to do, None when nothing was.
    """

    @property
    def _constructor(self) -> type:
        return SurvivalTable

    @property
    def bin_width(self) -> float | None:
        return self.attrs.get("bin_width")

    @property
    def automatic(self) -> bool:
        return bool(self.attrs.get("automatic", False))

    @property
    def withheld(self) -> list[Any]:
        return list(self.attrs.get("withheld", []))

    @property
    def exact_until(self) -> Any:
        return self.attrs.get("exact_until")

    @property
    def note(self) -> str | None:
        return self.attrs.get("note")

    def plot(self, ax: Any = None, label: str | None = None, **style: Any) -> Any:  # type: ignore[override]
        """Draw the survival curve with its confidence band (``pip install 'fedmed[plot]'``)."""
        from .plot import survival

        return survival(self, ax, label, **style)
