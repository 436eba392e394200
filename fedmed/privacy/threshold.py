"""Threshold rules of statistical disclosure control: minimum cell size and dominance."""

from __future__ import annotations

from typing import Any

from ..ops.columns import COLUMNS
from .base import Policy, Task
from .shapes import CELL_OPS

#: Aggregates where a zero term adds nothing: a row with x = 0 does not contribute to sum(x).
ADDITIVE = {"sum", "sqsum"}
#: Aggregates built from sums of the values, for the dominance rule.
SUMS = {"sum", "sqsum", "moments", "comoments", "comoment_matrix", "glm_step"}


class Anonymity(Policy):
    """Suppress what fewer than ``k`` rows stand behind, and subsets that leave fewer than ``k`` out.

    - An aggregate over fewer than ``k`` contributing rows is suppressed.
      Contributing rows are counted after row filters, masks used as
      multipliers (``x * (id == 17)``) and missing values; for a sum, a row
      whose term is zero contributes nothing.
    - An aggregate whose query leaves between 1 and ``k - 1`` rows out of
      its subset (filters, masks, or values made missing by arithmetic) is
      suppressed: this blocks ``sum(all) - sum(all but one)``.
    - Each cell of ``value_counts``, ``crosstab`` and ``histogram``, each
      element of ``set``/``unique``, and each count of ``count_below``
      backed by 1 to ``k - 1`` rows is removed from the result (the client
      is told how many).

    Examples
    --------
    >>> import fedmed as fm
    >>> server = fm.Server({"methods": {"sum": {"map": "fedmed.ops.private.sum", "reduce": "fedmed.ops.public.sum"},
    ...                                 "eq": "fedmed.ops.binary.eq"},
    ...                     "privacy": [{"policy": "fedmed.privacy.Anonymity", "params": {"k": 5}}]})
    >>> server["a"] = {"id": list(range(20)), "x": [1.0] * 20}
    >>> data = fm.FedData([fm.Simulation(server, "a")], config=server.config)
    >>> data["x"].sum().compute()
    20.0
    >>> data[data["id"] == 17]["x"].sum().compute()
    Traceback (most recent call last):
    ...
    fedmed.errors.PrivacyError: computed from 1 row; this server releases aggregates of at least 5 rows [...]
    """

    def __init__(self, k: int = 5) -> None:
        if int(k) < 1:
            raise ValueError("k must be at least 1")
        self.k = int(k)

    def apply(self, task: Task, value: Any) -> Any:
        disclosure = task.disclosure
        if disclosure is None:
            raise task.refuse(self, "this fragment cannot report the rows behind a result")
        cells = task.op in CELL_OPS
        if not cells:
            rows = disclosure.contributing(additive=task.op in ADDITIVE)
            if 0 < rows < self.k:
                raise task.refuse(
                    self, f"computed from {rows} row{'s' if rows > 1 else ''}; "
                    f"this server releases aggregates of at least {self.k} rows"
                )
        left_out = disclosure.complement(terms=not cells)
        if 0 < left_out < self.k:
            raise task.refuse(
                self, f"the query leaves {left_out} row{'s' if left_out > 1 else ''} out of its subset; "
                f"this server requires at least {self.k} on each side"
            )
        return self._cells(task, value) if cells else value

    def _cells(self, task: Task, value: Any) -> Any:
        if isinstance(value, dict) and COLUMNS in value:
            return {COLUMNS: {c: self._cells(task, v) for c, v in value[COLUMNS].items()}}
        small = lambda n: n is not None and 0 < n < self.k  # noqa: E731
        op = task.op
        # a withheld cell of a labelled table loses its labels too: a rare value's
        # presence is the disclosure. It is sent as an entry of Nones, so that the
        # pooled table shows NaN where it may be, never a wrong 0 (ops.public).
        if op == "value_counts":
            kept = [[None, None] if small(n) else [v, n] for v, n in value]
        elif op == "crosstab":
            kept = [[None, None, None] if small(n) else [a, b, n] for a, b, n in value]
        elif op == "histogram":
            kept = {**value, "counts": [None if small(n) else n for n in value["counts"]]}
        elif op == "count_below":
            total = task.disclosure.contributing() if task.disclosure is not None else None
            kept = [None if small(n) or (total is not None and small(total - n)) else n for n in value]
        else:  # set / unique: each element's own count decides
            counts = task.disclosure.inputs[0].value_counts() if task.disclosure is not None else {}
            kept = [v for v in value if not small(int(counts.get(v, 0)))]
        removed = _removed(value, kept, op)
        if removed:
            task.note(f"{removed} cell{'s' if removed > 1 else ''} of fewer than {self.k} rows suppressed")
        return kept


def _removed(before: Any, after: Any, op: str) -> int:
    if op in ("set", "unique"):
        return len(before) - len(after)
    counts = {"histogram": lambda v: v["counts"], "count_below": lambda v: v}.get(op, lambda v: [c[-1] for c in v])
    return sum(1 for a, b in zip(counts(before), counts(after)) if a is not None and b is None)


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
        if task.op not in SUMS:
            return value
        if task.disclosure is None:
            raise task.refuse(self, "this fragment cannot report the contributions behind a result")
        terms = task.disclosure.contributions()
        if task.op == "sqsum":
            terms = terms**2
        total = float(terms.sum())
        if total > 0 and float(terms[: self.n].sum()) > self.p * total:
            raise task.refuse(
                self, f"the largest {self.n} contribution{'s make' if self.n > 1 else ' makes'} up more than "
                f"{self.p:.0%} of the total"
            )
        return value
