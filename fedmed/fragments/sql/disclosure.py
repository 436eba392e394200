"""What a policy learns about a result: ``SQLDisclosure`` and the facts it answers from.

``Needs`` says what the server's policies will ask; ``SQLDisclosure``
answers them from numbers the query computed (``Judged`` for one
intermediate value, ``Contributions`` for the largest terms of a sum,
``ValueCounts`` for ``set``), with the methods and decisions of
``fedmed.server.disclosure.Disclosure``. The queries behind those numbers
are compiled by ``fedmed.fragments.sql.disclosure_queries``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ...errors import TaskFailed
from ...server.disclosure import Finding


# -- what a policy learns about a result --------------------------------------------------------


class ValueCounts:
    """Stands for a map's input where a policy asks only for its counts per value (``set``/``unique``)."""

    def __init__(self, counts: Mapping[Any, int]) -> None:
        self._counts = dict(counts)

    def value_counts(self) -> dict[Any, int]:
        return dict(self._counts)


class Contributions:
    """The largest absolute contributions of the persons (or rows) used, largest first, and totals over all.

    Answers what the dominance rule does with ``Disclosure.contributions()``:
    ``terms[:n].sum()``, ``terms.sum()`` and ``terms ** 2``.
    """

    def __init__(self, top: Sequence[float], total: float, squares: float | None, count: int) -> None:
        self.top = np.asarray(sorted((float(v) for v in top), reverse=True), dtype=float)
        self.total = float(total)
        self.squares = squares
        self.count = int(count)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key: Any) -> Any:
        stop = key.stop if isinstance(key, slice) else (key + 1 if isinstance(key, int) and key >= 0 else None)
        if (stop is None or stop > len(self.top)) and self.count > len(self.top):
            raise TaskFailed(f"this fragment reports only the {len(self.top)} largest contributions")
        return self.top[key]

    def sum(self) -> float:
        return self.total

    def __pow__(self, power: Any) -> "Contributions":
        if power != 2 or self.squares is None:
            raise TaskFailed("this fragment reports contributions and their squares only")
        return Contributions(self.top**2, self.squares, None, self.count)

    def __repr__(self) -> str:
        return f"Contributions(top={self.top.tolist()}, total={self.total!r}, count={self.count})"


@dataclass(frozen=True)
class Needs:
    """What the server's privacy policies will ask of each result's disclosure (``disclosure_needs``).

    ``judge``: the singling-out analysis (``singled_out``), for any ``k`` up
    to ``k``; ``contributions``: the largest ``top`` contributions behind
    sums (Dominance). The counts (``contributing``, ``complement``,
    ``holders``) come with either.
    """

    judge: bool = True
    contributions: bool = True
    k: int = 5
    top: int = 10


@dataclass(frozen=True)
class Judged:
    """What one intermediate value does within one scope, in persons (or rows): read from the query."""

    nulled: int  # missing although the raw values below it are present
    present: int  # with a value (0: nothing to judge)
    distinct: int  # distinct values (3: three or more)
    minority: int  # with another value than the mode (see ``Compiler._classes``)
    spread: tuple[int, float, list[float]] | None = None  # numbers: (holders, total, largest) of |x - median|

    def selects(self, k: int, share: float, unit: str) -> str | None:
        """``Disclosure._selects`` on these numbers: what the value does to single out 1 to k-1, or None."""
        if 0 < self.nulled < k:
            return f"is missing on fewer than {k} {unit} whose values are present"
        if self.nulled and 0 < self.present < k:
            return f"is present on fewer than {k} {unit} only"
        if self.present == 0:
            return None
        if self.distinct > 1 and 0 < self.minority < k:
            return f"takes one value on all but fewer than {k} {unit}"
        if self.spread is not None and self.distinct > 2:
            holders, total, largest = self.spread
            if total > 0 and holders >= k and float(sum(largest[: k - 1])) > share * total:
                return f"puts almost all of its spread on fewer than {k} {unit}"
        return None


class SQLDisclosure:
    """What a map result discloses, answered from aggregates of the request's SQL statements.

    The methods and decisions of ``fedmed.server.disclosure.Disclosure``
    (same findings, same counts), from numbers the query computed: no row is
    loaded into Python. ``inputs`` exists only for ``set``/``unique``
    (counts per value); ``used`` (a row mask) not at all; ``singled_out``
    decides for any ``k`` up to the one it was compiled for, and ``holders``
    knows only the extreme the query found.
    """

    def __init__(self, op: str, rows: int, *, person: str | None = None, facts: Mapping[str, Any] | None = None,
                 value_counts: Mapping[Any, int] | None = None, unavailable: str | None = None) -> None:
        self.op = op
        self.persons = person
        self._rows = int(rows)
        self._facts = facts
        self._value_counts = value_counts
        self._unavailable = unavailable

    @property
    def unit(self) -> str:
        """What the rules count: ``"persons"`` or ``"rows"``."""
        return "rows" if self.persons is None else "persons"

    @property
    def rows(self) -> int:
        """Persons (or rows) of the whole fragment."""
        return self._rows

    def _fact(self, name: str) -> Any:
        if self._facts is None:
            raise TaskFailed(self._unavailable or f"this fragment cannot report the {self.unit} behind {self.op}")
        fact = self._facts.get(name)
        if fact is None:
            raise TaskFailed(f"this fragment did not compute what a privacy policy asks about {self.op} ({name})")
        return fact

    def contributing(self, additive: bool = False, present: bool = True) -> int:
        """Persons behind the result: the smallest positive count over its columns (0 if none).

        With ``additive`` (sums) a zero term contributes nothing; with
        ``present=False`` (``len``) missing values count too.
        """
        positive = [c for c in self._fact("contributing")[bool(additive), bool(present)] if c > 0]
        return min(positive) if positive else 0

    def complement(self) -> int:
        """Persons with raw values present that the task's filters leave out."""
        return int(self._fact("complement"))

    def holders(self, value: Any, column: str | None = None) -> int:
        """Persons, among the rows used, whose input (``column`` of a table) equals ``value``: the extreme.

        The query counts the holders of the extreme of the rows used (up to
        the largest ``k`` it was compiled for: more are reported as that
        many); a value beyond it (the map's rows may be more than the rows
        used) has none. Any other value is refused rather than counted.
        """
        held = self._fact("holders").get(column)
        if held is None:
            return 0
        op, extreme, count = held
        if extreme is None:
            return 0
        if value == extreme:
            return count
        try:
            beyond = bool(value > extreme if op == "max" else value < extreme)
        except TypeError:
            beyond = False
        if beyond:
            return 0
        raise TaskFailed(f"this fragment counts the holders of the {self.op} it computed, not of another value")

    def contributions(self) -> Contributions:
        """Absolute contributions of each person (or row) used, largest first (the top ones and the totals)."""
        return self._fact("contributions")

    def singled_out(self, k: int, concentration: float = 0.9) -> Finding | None:
        """The first step of the task that singles out 1 to ``k - 1`` persons, or None (see ``Disclosure``).

        A count table counted by person is refused here: the cell rules
        (``fedmed.privacy.cells``) size cells in persons from row-level keys,
        which this fragment does not load, and sizing them in rows would
        release cells of fewer than ``k`` persons.
        """
        if self.persons is not None and self._facts is not None and self._facts.get("cells"):
            raise TaskFailed(f"this fragment cannot size the cells of {self.op} in persons: count tables are refused "
                             "where a person column is declared")
        unit, bound = self.unit, self._fact("k")
        if k > bound:  # the order statistics behind the checks were taken for k up to ``bound``
            raise TaskFailed(f"this fragment judges what singles out fewer than {bound} {unit}, not {k}")
        for node, kind, *facts in self._fact("checks"):
            what = None
            if kind == "list":
                what = "combines a list constant row by row (or column by column): positions must not be addressable"
            elif kind == "filter":
                kept, out = facts
                if 0 < out < k or 0 < kept < k:
                    what = f"is a row filter that keeps or drops fewer than {k} {unit}"
            elif kind == "derived":
                what = facts[0].selects(k, concentration, unit)
            elif kind == "ratio":  # two inputs released side by side, proportional but on a few
                ratio: Judged = facts[0]
                if ratio.distinct > 1 and 0 < ratio.minority < k:
                    what = f"differs from a multiple of another input on fewer than {k} {unit}"
            elif kind == "weights":
                what = facts[0].selects(k, concentration, unit)
                what = what and f"(its row weights at this beta) {what}"
            elif kind == "steps":
                what = f"has more than {facts[0]} row-wise steps, too many to judge; simplify it"
            elif kind == "unjudged":  # a move the task cannot be compiled with: fail closed
                what = "cannot be judged: changing its values makes the task fail"
            elif kind == "influence" and 0 < facts[0] < k:  # the rows through which the value reaches the result
                what = f"reaches the result through fewer than {k} {unit} only"
            if what:
                return Finding(node, what)
        return None

    @property
    def inputs(self) -> list[Any]:
        if self._value_counts is not None:
            return [ValueCounts(self._value_counts)]
        raise TaskFailed(
            f"this fragment cannot hand the row values behind {self.op} to a privacy policy "
            "(out-of-core data is never loaded; a policy that clips or inspects values, such as Noise on sums, "
            "needs an in-memory fragment)"
        )

    @property
    def used(self) -> Any:
        raise TaskFailed("this fragment cannot hand out row-level masks to a privacy policy")


def _unavailable(op: str, rows_index: int, reason: str, person: str | None) -> Callable[[tuple, Any], SQLDisclosure]:
    return lambda row, extra: SQLDisclosure(op, row[rows_index], person=person, unavailable=reason)
