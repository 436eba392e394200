"""Cell withholding for count tables: small cells, and the cells that would give them away.

``value_counts``, ``crosstab``, ``histogram``, ``count_below`` and
``set``/``unique`` release one number (or one element) per cell. A cell
backed by 1 to ``k - 1`` rows is *withheld* (primary suppression), and so is
any cell whose count is not a non-negative whole number: a count that comes
out negative or NaN is never judged "not small". Withholding the small cells
is not enough when the analyst knows the table's total (another query
gives it): the total minus the released cells is the withheld cells' sum.
So more cells are withheld (secondary suppression), by these rules:

- **1-d tables** (``value_counts``, ``histogram``): when the withheld cells
  are fewer than two or sum to fewer than ``k``, the smallest released cells
  (zeros first) are withheld too, until at least two are withheld and they
  sum to at least ``k``, or everything is. The total then gives away only a
  sum of at least ``k`` rows spread over at least two cells.
- **crosstab**: the same rule on each row, each column (their margins are
  other queries) and the whole table, repeated until no rule withholds
  anything more. This is the usual greedy heuristic of statistical
  offices, not an optimal (fewest cells lost) pattern, and it judges one
  table at a time.
- **count_below** is cumulative: a count ``c`` at a threshold is released
  only when ``k <= c <= n - k``, ``n`` being the rows behind the table
  (0 and ``n`` included: otherwise the min and max of a column could be
  found by bisection on the thresholds), and the released counts must
  differ from each other by 0 or at least ``k`` (the larger of two counts
  too close together is withheld; when cells are measured in persons, both
  the rows and the persons between two released counts must).
- **set/unique** release no counts: each element stays only when at least
  ``k`` rows of its column hold it. An element whose rows are not known is
  withheld (never taken for 0 rows). A whole table's set is judged column
  by column.

Per-column results of a whole table (``{"$columns": {column: value}}``)
are judged column by column, recursively; a column is named by its *path*,
a tuple of column names (``()`` for a single column's result).

What counts as a cell's size is the caller's: :class:`CellSizes` has two
methods, ``total(path)`` (the rows behind the table at ``path``, or None
when unknown: then no ``count_below`` count is released) and
``cells(path)`` (each cell's size by the cell's key, or None when the
table's own counts are the sizes). Keys are the value for ``value_counts``,
``set`` and ``unique``; the ``(a, b)`` pair for ``crosstab``; the bin's or
threshold's position for ``histogram`` and ``count_below``; a key missing
from the mapping is withheld. :class:`DisclosureSizes` counts rows, or persons where the server declares
a person column, from a task's disclosure; other measures are other
``CellSizes``.

The wire shapes stay those of the map results: a withheld ``value_counts`` or
``crosstab`` cell is an entry of Nones (its labels are withheld too: that a
rare value is present is the disclosure), a withheld histogram bin or
``count_below`` count is None in place, a withheld element is left out.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd

from ..errors import TaskFailed
from ..ops.columns import COLUMNS

#: Which column of a whole table a result belongs to: ``()`` for a single column's result.
Path = tuple[str, ...]


class CellSizes(Protocol):
    """How big each cell of a count table is, in whatever unit the rules count (rows, persons)."""

    def total(self, path: Path) -> int | None:
        """The rows (or persons) behind the whole table at ``path``; None when unknown."""

    def cells(self, path: Path) -> Mapping[Any, Any] | None:
        """Each cell's size by its key, or None when the table's own counts are the sizes."""


@dataclass(frozen=True)
class Withheld:
    """How many cells a table lost: ``small`` ones, and ``protective`` ones withheld to protect them."""

    small: int = 0
    protective: int = 0

    def __add__(self, other: "Withheld") -> "Withheld":
        return Withheld(self.small + other.small, self.protective + other.protective)

    def __bool__(self) -> bool:
        return bool(self.small or self.protective)

    def note(self, op: str, k: int, unit: str = "rows") -> str | None:
        """What the client is told: how many cells were withheld and why, never how many rows they hold."""
        if not self:
            return None
        if op == "count_below":
            total = self.small + self.protective
            return (f"{total} count{_s(total)} withheld: fewer than {k} {unit} at or below, above, "
                    "or between the thresholds")
        text = f"{self.small} cell{_s(self.small)} of fewer than {k} {unit} suppressed"
        if self.protective:
            text += (f", and {self.protective} more so that no suppressed cell can be worked out "
                     "from the total or the margins")
        return text


def withhold_cells(op: str, value: Any, k: int, sizes: CellSizes) -> tuple[Any, Withheld]:
    """``value`` (a result of the count table ``op``) without the cells that would disclose fewer than ``k`` rows.

    Parameters
    ----------
    op : ``value_counts``, ``crosstab``, ``histogram``, ``count_below``, ``set`` or ``unique``.
    value : the map result, or per-column results ``{"$columns": {column: result}}``.
    k : the smallest number of rows (or persons) a released cell may stand for.
    sizes : each cell's size and each table's total (see :class:`CellSizes`).

    Returns
    -------
    The value with withheld cells in the same wire shape, and how many were withheld.

    Examples
    --------
    >>> kept, withheld = withhold_cells("value_counts", [["A", 40], ["B", 9], ["C", 2]], 5, KnownSizes(total=51))
    >>> kept
    [['A', 40], [None, None], [None, None]]
    >>> withheld.note("value_counts", 5)
    '1 cell of fewer than 5 rows suppressed, and 1 more so that no suppressed cell can be worked out from the total or the margins'
    """
    return _withhold(op, value, int(k), sizes, ())


def withhold_task_cells(task: Any, value: Any, k: int, sizes: CellSizes | None = None) -> Any:
    """:func:`withhold_cells` for a policy: sizes from ``task.disclosure`` unless given; notes the client."""
    disclosure = task.disclosure
    kept, withheld = withhold_cells(task.op, value, k, DisclosureSizes(disclosure, task.op) if sizes is None else sizes)
    note = withheld.note(task.op, k, getattr(disclosure, "unit", "rows"))
    if note:
        task.note(note)
    return kept


class DisclosureSizes:
    """Cell sizes read from a task's disclosure (in-memory or SQL): rows, or persons where declared.

    Without a person column the counts of a table are its cells' sizes, the
    elements of a ``set`` are counted in the aggregate's evaluated input,
    column by column, and the total is ``disclosure.contributing()`` (for a
    whole table, no more than any column has, which only withholds more).
    An input that cannot be counted per element (an SQL fragment's whole
    table) withholds every element.

    With a person column (``disclosure.persons``, a key per fragment row;
    a row without a key is a person of its own) each cell's size is the
    number of distinct persons among its rows; for ``count_below`` the
    persons with a value at or below each threshold, out of the persons
    with a value. (A person in two cells counts in both sums of the
    secondary rule: that rule is a heuristic either way.)
    """

    def __init__(self, disclosure: Any, op: str) -> None:
        self.disclosure = disclosure
        self.op = op

    @cached_property
    def _persons(self) -> pd.Series | None:
        persons = getattr(self.disclosure, "persons", None)
        return persons if isinstance(persons, pd.Series) else None

    def total(self, path: Path) -> int | None:
        if self.disclosure is None:
            return None
        if self._persons is not None and self.op == "count_below":
            x = _column(self._input(0), path)
            return None if x is None else len(_first_values(x, self._persons))
        return self._rows

    @cached_property
    def _rows(self) -> int:
        return int(self.disclosure.contributing())

    def cells(self, path: Path) -> Mapping[Any, Any] | None:
        if self.disclosure is None:
            return {} if self.op in ("set", "unique") else None
        persons = self._persons
        if persons is None:
            return _element_counts(self._input(0), path) if self.op in ("set", "unique") else None
        x = _column(self._input(0), path)
        if x is None:
            return {}
        if self.op in ("set", "unique", "value_counts"):
            return _persons_by(x, persons)
        if self.op == "crosstab":
            b = self._input(1)
            if not isinstance(b, pd.Series):
                return {}
            both = pd.DataFrame({"a": x, "b": b}).dropna()
            return _persons_by(pd.Series(list(zip(both["a"], both["b"])), index=both.index, dtype=object), persons)
        if self.op == "histogram":
            return _persons_by(_bins(x, self._input(1), self._input(2)), persons)
        if self.op == "count_below":
            firsts = np.sort(_first_values(x, persons))
            thresholds = np.asarray(self._input(1), dtype=float).ravel()
            return dict(enumerate(np.searchsorted(firsts, thresholds, side="right").tolist()))
        return {}

    def _input(self, i: int) -> Any:
        inputs = self.disclosure.inputs
        return inputs[i] if i < len(inputs) else None


class KnownSizes:
    """:class:`CellSizes` from known numbers (tests, and callers that have them): counts are sizes."""

    def __init__(self, total: int | None = None, elements: Mapping[Any, int] | None = None) -> None:
        self._total = total
        self._elements = elements

    def total(self, path: Path) -> int | None:
        return self._total

    def cells(self, path: Path) -> Mapping[Any, Any] | None:
        return self._elements


# -- the tables ----------------------------------------------------------------------------------


def _withhold(op: str, value: Any, k: int, sizes: CellSizes, path: Path) -> tuple[Any, Withheld]:
    if isinstance(value, dict) and COLUMNS in value:
        kept, withheld = {}, Withheld()
        for column, part in value[COLUMNS].items():
            kept[column], lost = _withhold(op, part, k, sizes, (*path, str(column)))
            withheld += lost
        return {COLUMNS: kept}, withheld
    rule = _RULES.get(op)
    if rule is None:
        raise TaskFailed(f"{op} is not a table of counts this server can check")
    try:
        return rule(value, k, sizes, path)
    except (TypeError, ValueError, KeyError, IndexError):
        # a replacement map with another shape: nothing can be judged, so nothing is released
        raise TaskFailed(f"the result of {op} is not in the shape this server's privacy rules check") from None


def _value_counts(value: Any, k: int, sizes: CellSizes, path: Path) -> tuple[Any, Withheld]:
    entries = [list(entry) for entry in value]
    keys = [entry[0] for entry in entries]
    counts = [entry[1] for entry in entries]
    hidden, small = _one_table(_sizes(counts, keys, sizes.cells(path)), counts, k, [range(len(entries))])
    kept = [[None, None] if i in hidden else [v, n] for i, (v, n) in enumerate(entries)]
    return kept, Withheld(small, _protective(hidden, counts, small))


def _crosstab(value: Any, k: int, sizes: CellSizes, path: Path) -> tuple[Any, Withheld]:
    entries = [list(entry) for entry in value]
    counts = [entry[2] for entry in entries]
    cells = _sizes(counts, [(a, b) for a, b, _ in entries], sizes.cells(path))
    labelled = [i for i, (a, b, _) in enumerate(entries) if not (a is None and b is None)]
    groups = [*_grouped(labelled, lambda i: _label(entries[i][0])),
              *_grouped(labelled, lambda i: _label(entries[i][1])), range(len(entries))]
    hidden, small = _one_table(cells, counts, k, groups)
    kept = [[None, None, None] if i in hidden else [a, b, n] for i, (a, b, n) in enumerate(entries)]
    return kept, Withheld(small, _protective(hidden, counts, small))


def _histogram(value: Any, k: int, sizes: CellSizes, path: Path) -> tuple[Any, Withheld]:
    counts = list(value["counts"])
    hidden, small = _one_table(_sizes(counts, range(len(counts)), sizes.cells(path)), counts, k, [range(len(counts))])
    kept = [None if i in hidden else n for i, n in enumerate(counts)]
    return {**value, "counts": kept}, Withheld(small, _protective(hidden, counts, small))


def _count_below(value: Any, k: int, sizes: CellSizes, path: Path) -> tuple[Any, Withheld]:
    counts = list(value)
    cells = _sizes(counts, range(len(counts)), sizes.cells(path))
    total = sizes.total(path)
    total = _whole(total) if total is not None else None
    # each side of a threshold must hold k rows: at or below it (c), and above it (n - c)
    far = lambda c: c is not None and total is not None and k <= c <= total - k  # noqa: E731
    hidden = {i for i, c in enumerate(cells) if not far(c)}
    small = sum(1 for i in hidden if counts[i] is not None)
    # what lies between two thresholds is a difference of released counts: none, or at least k
    # (in rows and in the cells' own measure, when that is another: persons)
    last = None
    for i in sorted(set(range(len(cells))) - hidden, key=lambda i: (cells[i], counts[i])):
        level = (cells[i], int(counts[i]))
        if last is None or level == last or min(level[0] - last[0], level[1] - last[1]) >= k:
            last = level
        else:
            hidden.add(i)
    kept = [None if i in hidden else n for i, n in enumerate(counts)]
    return kept, Withheld(small, _protective(hidden, counts, small))


def _set(value: Any, k: int, sizes: CellSizes, path: Path) -> tuple[Any, Withheld]:
    elements = list(value)
    held = sizes.cells(path) or {}
    kept = [v for v in elements if _at_least(_lookup(held, v), k)]
    return kept, Withheld(len(elements) - len(kept))


def _grouped(value: Any, k: int, sizes: CellSizes, path: Path) -> tuple[Any, Withheld]:
    """Per-group partials (``fedmed.ops.private.grouped``): every group is a cell.

    Per-value counts are a crosstab of group by value (the crosstab rules, labels included). Per-group
    statistics: a group is withheld, labels and all, when its rows or its values present number 1 to
    ``k - 1`` persons, or when one person makes up more than ``DOMINANCE`` of its sum of absolute
    values; then the 1-d secondary rule runs on both measures (rows and values present add up to
    totals other queries give), until stable. A released group's min and max stay only when at least
    ``k`` persons of the group hold them (the extremes rule), else NaN. Without a disclosure to read
    (``KnownSizes``) the counts are the sizes and every extreme is withheld.
    """
    nkeys = int(value["keys"])
    if "counts" in value:
        entries = [[tuple(e[:nkeys]), e[nkeys], e[nkeys + 1]] for e in value["counts"]]
        kept, withheld = _crosstab(entries, k, _Relabelled(sizes), path)
        return {"keys": nkeys, "counts": [[None] * (nkeys + 2) if a is None and b is None else [*a, b, n]
                                          for a, b, n in kept]}, withheld
    entries = [list(e) for e in value["groups"]]
    labels = [tuple(e[:nkeys]) for e in entries]
    facts = _group_facts(sizes, path, nkeys)
    size = [_whole(e[nkeys]) for e in entries]
    present = [_whole(e[nkeys + 1]) for e in entries]
    if facts is not None:
        size = [None if s is None else _whole(facts.size.get(key)) for s, key in zip(size, labels)]
        present = [None if n is None else _whole(facts.n.get(key, 0)) for n, key in zip(present, labels)]
    hidden = {i for i in range(len(entries)) if size[i] is None or present[i] is None or 0 < size[i] < k
              or 0 < present[i] < k or (facts is not None and labels[i] in facts.dominated)}
    small = len(hidden)
    everything = list(range(len(entries)))
    while True:  # the 1-d rule on rows, then on values present, until neither withholds more
        before = set(hidden)
        _protect(everything, size, hidden, k)
        _protect(everything, present, hidden, k)
        if hidden == before:
            break
    kept, extremes = [], 0
    for i, entry in enumerate(entries):
        if i in hidden:
            kept.append([None] * len(entry))
            continue
        for j, which in ((nkeys + 5, "min"), (nkeys + 6, "max")):
            held = None if facts is None else facts.holders(labels[i], which, entry[j])
            if entry[j] is not None and not _at_least(held, k):
                entry[j] = math.nan
                extremes += 1
        kept.append(entry)
    return {"keys": nkeys, "groups": kept}, Withheld(small, len(hidden) - small)


#: The dominance rule a group's sum is held to ((1, 0.9), as ``Dominance``'s defaults): one person may
#: not make up more than this share of a group's sum of absolute values.
DOMINANCE = 0.9


class _Relabelled:
    """The sizes of a group-by-value table's cells, keyed as the crosstab rule keys them."""

    def __init__(self, sizes: CellSizes) -> None:
        self._sizes = sizes

    def total(self, path: Path) -> int | None:
        return self._sizes.total(path)

    def cells(self, path: Path) -> Mapping[Any, Any] | None:
        facts = _group_facts(self._sizes, path, None)
        return None if facts is None else facts.by_value


@dataclass
class _GroupFacts:
    """Persons behind each group of a ``grouped`` result, read from its disclosure."""

    size: dict[tuple, int]
    n: dict[tuple, int]
    dominated: set[tuple]
    by_value: dict[tuple, int]
    _extremes: dict[tuple, tuple[Any, int, Any, int]]

    def holders(self, label: tuple, which: str, value: Any) -> int | None:
        low, low_n, high, high_n = self._extremes.get(label, (None, 0, None, 0))
        extreme, count = (low, low_n) if which == "min" else (high, high_n)
        return count if extreme is not None and extreme == value else None


def _group_facts(sizes: CellSizes, path: Path, nkeys: int | None) -> _GroupFacts | None:
    """Facts from an in-memory disclosure; None when ``sizes`` has none (counts are the sizes then).
    An engine that cannot hand its rows over (SQL) fails the task: nothing is released unjudged.
    ``nkeys`` None: the per-value cells are wanted (and only they are computed)."""
    disclosure = getattr(sizes, "disclosure", None)
    if disclosure is None:
        return None
    inputs = disclosure.inputs
    x = _column(inputs[0], path)
    keys = list(inputs[2:])
    if x is None or not keys or not all(isinstance(k, pd.Series) for k in keys):
        raise TaskFailed("grouped: the groups' rows cannot be judged by this server's privacy rules")
    persons = getattr(disclosure, "persons", None)
    names = [f"k{i}" for i in range(len(keys))]
    frame = pd.DataFrame({"x": x})  # as the map aligns them: keys to the values' rows
    for name, k in zip(names, keys):
        frame[name] = k
    used = disclosure.used_in([]).reindex(frame.index, fill_value=False).to_numpy(dtype=bool)
    frame = frame[used].dropna(subset=names)
    by_person = isinstance(persons, pd.Series)
    if by_person:
        frame["who"] = _who(frame.index, persons).to_numpy()
    there = frame[frame["x"].notna().to_numpy()]

    def persons_by(rows: pd.DataFrame, by: list[str]) -> pd.Series:
        grouped = rows.groupby(by, sort=False, observed=True, dropna=True)
        return grouped["who"].nunique() if by_person else grouped.size()

    if nkeys is None:
        return _GroupFacts({}, {}, set(), _labelled(persons_by(there, [*names, "x"]), pairs=True), {})
    size, n = _labelled(persons_by(frame, names)), _labelled(persons_by(there, names))
    dominated: set[tuple] = set()
    if pd.api.types.is_numeric_dtype(there["x"].dtype) and not there.empty:
        terms = there.assign(a=pd.to_numeric(there["x"], errors="coerce").astype(float).abs())
        if by_person:
            terms = terms.groupby([*names, "who"], sort=False, observed=True)["a"].sum().reset_index()
        share = terms.groupby(names, sort=False, observed=True)["a"].agg(["max", "sum"])
        dominated = set(_labelled(share["max"] > DOMINANCE * share["sum"].where(share["sum"] > 0)).items())
        dominated = {label for label, flag in dominated if flag}
    extremes: dict[tuple, tuple[Any, int, Any, int]] = {}
    if not there.empty:
        grouped = there.groupby(names, sort=False, observed=True)["x"]
        low, high = grouped.transform("min"), grouped.transform("max")
        lows, highs = _labelled(grouped.min()), _labelled(grouped.max())
        at_low = _labelled(persons_by(there[(there["x"] == low).to_numpy()], names))
        at_high = _labelled(persons_by(there[(there["x"] == high).to_numpy()], names))
        extremes = {label: (lows[label], at_low.get(label, 0), highs[label], at_high.get(label, 0)) for label in lows}
    return _GroupFacts(size, n, dominated, {}, extremes)


def _labelled(series: pd.Series, pairs: bool = False) -> dict[Any, Any]:
    """``{labels tuple: value}`` from a Series indexed by group (``pairs``: by (labels tuple, value))."""
    out = {}
    for key, value in series.items():
        key = tuple(_plain(k) for k in (key if isinstance(key, tuple) else (key,)))
        out[(key[:-1], key[-1]) if pairs else key] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


_RULES: dict[str, Callable[[Any, int, CellSizes, Path], tuple[Any, Withheld]]] = {
    "value_counts": _value_counts, "crosstab": _crosstab, "histogram": _histogram,
    "count_below": _count_below, "set": _set, "unique": _set, "grouped": _grouped,
}


# -- the rules -----------------------------------------------------------------------------------


def _one_table(cells: list[int | None], counts: Sequence[Any], k: int,
               groups: Sequence[Iterable[int]]) -> tuple[set[int], int]:
    """Primary suppression, then secondary within every group until stable: (withheld cells, small ones)."""
    hidden = {i for i, size in enumerate(cells) if size is None or 0 < size < k}
    small = sum(1 for i in hidden if counts[i] is not None)  # cells that came withheld are not news
    groups = [list(g) for g in groups]
    member_of: dict[int, list[int]] = {}
    for g, group in enumerate(groups):
        for i in group:
            member_of.setdefault(i, []).append(g)
    # only a group that gained a withheld cell can need more: check those until none does
    pending = {g for i in hidden for g in member_of.get(i, ())}
    while pending:
        before = set(hidden)
        _protect(groups[pending.pop()], cells, hidden, k)
        pending |= {g for i in hidden - before for g in member_of[i]}
    return hidden, small


def _protect(group: list[int], cells: list[int | None], hidden: set[int], k: int) -> None:
    """Withhold the smallest released cells of ``group`` until its withheld cells are two or more and
    sum to at least ``k``, or it has none left (the 1-d rule)."""
    withheld = [i for i in group if i in hidden]
    if not withheld:
        return
    total = sum(cells[i] or 0 for i in withheld)  # a cell of unknown size protects nothing
    released = sorted((i for i in group if i not in hidden), key=lambda i: (cells[i], i))
    for i in released:
        if len(withheld) >= 2 and total >= k:
            break
        hidden.add(i)
        withheld.append(i)
        total += cells[i]


def _sizes(counts: Sequence[Any], keys: Iterable[Any], given: Mapping[Any, Any] | None) -> list[int | None]:
    """Each cell's size as a whole number, or None when it is not a non-negative whole number."""
    if given is None:
        return [_whole(c) for c in counts]
    return [None if _whole(c) is None else _whole(_lookup(given, key)) for c, key in zip(counts, keys)]


def _whole(n: Any) -> int | None:
    if n is None or isinstance(n, bool):
        return None
    if isinstance(n, numbers.Integral):
        return int(n) if n >= 0 else None
    if isinstance(n, numbers.Real) and math.isfinite(n) and float(n).is_integer() and n >= 0:
        return int(n)
    return None


def _at_least(n: Any, k: int) -> bool:
    size = _whole(n)
    return size is not None and size >= k


def _lookup(mapping: Mapping[Any, Any], key: Any) -> Any:
    try:
        return mapping.get(key)
    except TypeError:  # an unhashable key has no size
        return None


def _protective(hidden: set[int], counts: Sequence[Any], small: int) -> int:
    return sum(1 for i in hidden if counts[i] is not None) - small


def _grouped(indices: Iterable[int], key: Callable[[int], Any]) -> list[list[int]]:
    groups: dict[Any, list[int]] = {}
    for i in indices:
        groups.setdefault(key(i), []).append(i)
    return list(groups.values())


def _label(value: Any) -> tuple[str, Any]:
    # 1, 1.0 and True are one dict key but different labels of a table
    return (type(value).__name__, value)


def _s(n: int) -> str:
    return "" if n == 1 else "s"


# -- counting elements ---------------------------------------------------------------------------


def _element_counts(value: Any, path: Path) -> Mapping[Any, int]:
    """Rows holding each distinct non-missing value of the input at ``path``; {} when it cannot tell."""
    if not path and not isinstance(value, (pd.Series, pd.DataFrame, dict)) and hasattr(value, "value_counts"):
        counts = value.value_counts()  # an SQL fragment's counts per value of one column
        return counts if isinstance(counts, Mapping) else {}
    x = _column(value, path)
    return {} if x is None else x.value_counts(dropna=True).to_dict()


def _column(value: Any, path: Path) -> pd.Series | None:
    """The Series at ``path`` of an evaluated input (a column of a table, of a nested dict), or None."""
    for name in path:
        if isinstance(value, pd.DataFrame):
            matches = [c for c in value.columns if str(c) == name]
        elif isinstance(value, dict):
            matches = [key for key in value if str(key) == name]
        else:
            return None
        if len(matches) != 1:
            return None
        value = value[matches[0]]
    return value if isinstance(value, pd.Series) else None


def _who(index: pd.Index, persons: pd.Series) -> pd.Series:
    """The person of each row of ``index``; a row without a person key is a person of its own."""
    who = persons.reindex(index).astype(object)
    missing = who.isna().to_numpy()
    if missing.any():
        who[missing] = [("row", i) for i in range(int(missing.sum()))]
    return who


def _persons_by(keys: pd.Series, persons: pd.Series) -> dict[Any, int]:
    """Distinct persons per non-missing key."""
    keys = keys[keys.notna().to_numpy()]
    frame = pd.DataFrame({"key": keys.to_numpy(dtype=object), "who": _who(keys.index, persons).to_numpy()})
    return frame.groupby("key", sort=False)["who"].nunique().to_dict()


def _first_values(x: pd.Series, persons: pd.Series) -> np.ndarray:
    """Each person's smallest non-missing value: a person is at or below a threshold from there on."""
    present = x.dropna()
    values = pd.to_numeric(present, errors="coerce").astype(float)
    return values.groupby(_who(present.index, persons).to_numpy(), sort=False).min().to_numpy()


def _bins(x: pd.Series, bins: Any, range_: Any) -> pd.Series:
    """The histogram bin of each row inside the edges (numpy's: half-open bins, the last one closed)."""
    edges = np.histogram_bin_edges([], bins=bins, range=range_)
    values = pd.to_numeric(x, errors="coerce").astype(float).to_numpy()
    inside = (values >= edges[0]) & (values <= edges[-1])
    index = np.minimum(np.searchsorted(edges, values[inside], side="right") - 1, len(edges) - 2)
    return pd.Series(index, index=x.index[inside], dtype=object)
