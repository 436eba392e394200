"""Threshold rules of statistical disclosure control: minimum cell size and dominance."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..ops.columns import COLUMNS
from .base import Policy, Task
from .cells import withhold_task_cells
from .shapes import CELL_OPS

#: Aggregates where a zero term adds nothing: a row with x = 0 does not contribute to sum(x).
ADDITIVE = {"sum", "sqsum"}
#: Aggregates built from sums of the values, for the dominance rule.
SUMS = {"sum", "sqsum", "moments", "comoments", "comoment_matrix", "glm_step", "glm_family_step", "site_fit",
        "cox_step"}
#: Aggregates that release one row's own value.
EXTREMES = {"min", "max"}
class Anonymity(Policy):
    """Suppress what fewer than ``k`` persons stand behind, or what singles out fewer than ``k``.

    Judged on the values the server computed (``fedmed.server.disclosure``),
    counting persons where the server declares a person column, rows
    otherwise:

    - A task any step of which singles out 1 to ``k - 1`` persons is
      refused: a row filter that keeps or drops that few (within the rows
      its other filters keep), an intermediate value that is the same on
      all persons but that few, that the arithmetic makes missing for that
      few, or whose spread that few hold almost entirely
      (``concentration``), and any per-row list constant. However the
      indicator is built (``x * (id == 17)``, ``x ** (id == 17)``,
      ``0 ** abs(id - 17)``...), some step of it does one of these.
    - An aggregate over 1 to ``k - 1`` contributing persons is refused; for
      a sum, a person whose terms are all zero contributes nothing.
    - A task whose filters leave 1 to ``k - 1`` persons out is refused
      (``sum(all) - sum(all but one)``).
    - ``min``/``max`` are withheld (NaN) unless at least ``k`` persons hold
      the extreme value: otherwise it is one person's value.
    - Cells of count tables (``value_counts``, ``crosstab``, ``histogram``,
      ``count_below``, ``set``/``unique``) backed by 1 to ``k - 1`` persons
      are withheld, with secondary suppression (``fedmed.privacy.cells``).

    Under a ``Noise`` policy (``task.noised``) these exact-data rules would
    answer outside the privacy accounting; the task is then judged only on
    its noisy value: noisy counts and cells below ``k`` are withheld.
    Refusals never state a count.

    Examples
    --------
    >>> import fedmed as fm
    >>> server = fm.Server({"methods": {"sum": {"map": "fedmed.ops.private.sum", "reduce": "fedmed.ops.public.sum"},
    ...                                 "eq": "fedmed.ops.binary.eq", "mul": "fedmed.ops.binary.mul"},
    ...                     "privacy": [{"policy": "fedmed.privacy.Anonymity", "params": {"k": 5}}]})
    >>> server["a"] = {"id": list(range(20)), "x": [1.0] * 20}
    >>> data = fm.FedData([fm.Simulation(server, "a")], config=server.config)
    >>> data["x"].sum().compute()
    20.0
    >>> (data["x"] * (data["id"] == 17)).sum().compute()
    Traceback (most recent call last):
    ...
    fedmed.errors.PrivacyError: (data['id'] == ?) takes one value on all but fewer than 5 rows; ...
    """

    def __init__(self, k: int = 5, concentration: float = 0.9) -> None:
        if int(k) < 1:
            raise ValueError("k must be at least 1")
        if not 0 < float(concentration) <= 1:
            raise ValueError("concentration must be in (0, 1]")
        self.k = int(k)
        self.concentration = float(concentration)

    def apply(self, task: Task, value: Any) -> Any:
        if getattr(task, "noised", False):
            return self._noisy(task, value)
        disclosure = task.disclosure
        if disclosure is None:
            raise task.refuse(self, "this fragment cannot report the rows behind a result")
        k, unit = self.k, disclosure.unit
        finding = disclosure.singled_out(k, self.concentration)
        if finding is not None:
            raise task.refuse(self, f"{finding}; this server releases nothing that singles out fewer than {k} {unit}")
        if task.op not in CELL_OPS:
            rows = disclosure.contributing(additive=task.op in ADDITIVE, present=task.op != "len")
            if 0 < rows < k:
                raise task.refuse(self, f"computed from fewer than {k} {unit}; "
                                  f"this server releases aggregates of at least {k} {unit}")
        if 0 < disclosure.complement() < k:
            raise task.refuse(self, f"the query leaves fewer than {k} {unit} out of its subset; "
                              f"this server requires at least {k} on each side")
        if task.op in EXTREMES:
            return self._extremes(task, value)
        return self._cells(task, value) if task.op in CELL_OPS else value

    def describe(self) -> str:
        extra = "" if self.concentration == 0.9 else f", concentration={self.concentration!r}"
        return f"Anonymity(k={self.k!r}{extra})"

    def _extremes(self, task: Task, value: Any) -> Any:
        """A min or max stays only when at least k persons hold it: else it is one person's value."""
        def keep(column: str | None, extreme: Any) -> Any:
            if extreme is not None and task.disclosure.holders(extreme, column) in range(1, self.k):
                withheld.append(column)
                return float("nan")
            return extreme

        withheld: list[str | None] = []
        if isinstance(value, dict) and COLUMNS in value:
            kept = {COLUMNS: {c: keep(c, v) for c, v in value[COLUMNS].items()}}
        else:
            kept = keep(None, value)
        if withheld:
            task.note(f"{task.op} withheld: held by fewer than {self.k} {task.disclosure.unit}")
        return kept

    def _noisy(self, task: Task, value: Any) -> Any:
        """Post-processing of a noisy release: counts and cells below k are withheld (costs nothing)."""
        small = lambda n: isinstance(n, (int, float)) and n < self.k  # noqa: E731
        if task.op in ("len", "count"):
            if small(value):
                raise task.refuse(self, f"the noisy count is below {self.k}")
            return value
        if task.op == "histogram":
            return {**value, "counts": [None if small(n) else n for n in value["counts"]]}
        return value

    def _cells(self, task: Task, value: Any) -> Any:
        return withhold_task_cells(task, value, self.k)


class Dominance(Policy):
    """The (n, p)-dominance rule: suppress a sum whose ``n`` largest terms exceed ``p`` of its total.

    Applies to sums and everything built from them (``moments``,
    ``comoments``, regression blocks). It stops
    ``(x * (id == 17) + 1e-9 * y).sum()``, where every row contributes a
    little and one row almost everything.
    """

    def __init__(self, n: int = 1, p: float = 0.9) -> None:
        self.n = int(n)
        self.p = float(p)

    def apply(self, task: Task, value: Any) -> Any:
        if task.op not in SUMS or getattr(task, "noised", False):
            return value  # under Noise an exact-data refusal would answer outside the accounting
        if task.disclosure is None:
            raise task.refuse(self, "this fragment cannot report the contributions behind a result")
        cells = getattr(task.disclosure, "cell_contributions", lambda: None)()
        if cells is not None:  # sums per cell (fedmed.ops.declared): each cell's own sums
            if any(_dominated(code, values, self.n, self.p) for code, values in cells):
                raise task.refuse(self, f"in one of its cells, {self._largest()} more than {self.p:.0%} of a sum")
            return value
        terms = task.disclosure.contributions()
        if task.op == "sqsum":
            terms = terms**2
        total = float(terms.sum())
        if not math.isfinite(total):  # a NaN total compares false with everything: it would pass unjudged
            raise task.refuse(self, "its sum is not a finite number, which no share of it can be judged against")
        if total > 0 and float(terms[: self.n].sum()) > self.p * total:
            raise task.refuse(self, f"{self._largest()} up more than {self.p:.0%} of the total")
        return value

    def _largest(self) -> str:
        return "the largest contribution makes" if self.n == 1 else f"the {self.n} largest contributions make"


def _dominated(code: np.ndarray, values: np.ndarray, n: int, p: float) -> bool:
    """Does some cell's sum of some column have its ``n`` largest terms above ``p`` of its total?"""
    if not len(code):
        return False
    for column in values.T:
        order = np.lexsort((-column, code))
        cell, term = code[order], column[order]
        starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])
        rank = np.arange(len(cell)) - np.repeat(starts, np.diff(np.r_[starts, len(cell)]))
        top = np.bincount(cell, weights=np.where(rank < n, term, 0.0))
        total = np.bincount(cell, weights=term)
        if not np.all(np.isfinite(total)) or np.any((total > 0) & (top > p * total)):  # NaN: no share to judge
            return True
    return False
