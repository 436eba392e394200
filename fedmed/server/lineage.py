"""Rows through relations: stable row labels, and the person behind every row (issue 18).

Privacy rules count persons. On one fragment the server's config names the
column that holds a row's person (``persons:``); through a join, a
concatenation or a per-person group-by (``fedmed.expr.tables``) each new
row must still belong to exactly one person, or nothing can be counted.
``Lineage`` finds, for one task, every *row space* it reads (a fragment's,
a merge's, a concat's, a group-by's) and the column that holds each row's
person there, by the structure of the relations, never by the values:

- a fragment: its declared person column;
- a merge: only a join that pairs the two sides' person columns (``on``
  or ``left_on``/``right_on`` at one position) keeps one person per row;
- a group-by: only one that groups by the person column (one row per
  person: the per-person features of docs/tables.md);
- a concat: the same person column on every side;
- a filter, a sort, an ``assign``: the input's (a column replaced or not
  selected takes the person key with it).

Anything else has no person per row and is refused with ``why``: counting
a group of ten year-groups as one person, or a merged row as the left
side's person, would undercount what the rule protects.

A value-dependent check would be an oracle (a join key crafted to meet
another person's row only when one patient's value exceeds a threshold
would be refused exactly then), so none is made here.

Under privacy policies the evaluator labels new rows by where they come
from (``merge_rows``, ``group_rows``, ``concat_rows``) instead of 0..n-1, so
that a "what if" rerun of the task (``fedmed.server.disclosure``) finds
the same row under the same label when other rows appear or vanish: a
person's rows are followed, not their positions.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from ..expr.node import Node, render_code, walk
from ..expr.rowwise import Column, Filter, Fragment
from ..expr.tables import NEW_ROWS, Concat, GroupAgg, Merge, Project, Sort

#: The position columns a labelled merge adds while it runs (names starting with NUL: no analyst's column).
_LEFT, _RIGHT = "\0fedmed-left", "\0fedmed-right"


# -- stable labels (used by the pandas evaluator under privacy policies) ----------------------------------

def merge_rows(left: pd.DataFrame, right: pd.DataFrame, how: str, left_on: Sequence[str], right_on: Sequence[str],
               suffixes: Sequence[str]) -> pd.DataFrame:
    """``pd.merge`` whose rows are labelled (left row's label, right row's label), missing where unmatched.

    ``how`` may also be ``"outer"`` here: the judge's "what if the join kept
    every row" (``Lineage.alternatives``).
    """
    out = pd.merge(left.assign(**{_LEFT: np.arange(len(left))}), right.assign(**{_RIGHT: np.arange(len(right))}),
                   how=how, left_on=list(left_on), right_on=list(right_on), suffixes=tuple(suffixes), sort=False)
    positions = [_positions(out.pop(_LEFT)), _positions(out.pop(_RIGHT))]
    out.index = _joined([left.index, right.index], positions)
    return out


def group_rows(out: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """A group-by's table (keys as columns) labelled by its keys: a group keeps its label whatever other
    groups hold."""
    # unnamed levels: a level named as a column would make pandas' merge on that column ambiguous
    index = pd.MultiIndex.from_arrays([out[k].to_numpy() for k in keys]) if len(keys) > 1 \
        else pd.Index(out[keys[0]].to_numpy())
    return out.set_axis(index, axis=0)


def concat_rows(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """``pd.concat`` whose rows are labelled (which table, that table's label)."""
    out = pd.concat(tables, ignore_index=True)
    depth = max(t.index.nlevels for t in tables)
    levels: list[list[pd.Index]] = [[] for _ in range(depth)]
    codes: list[list[np.ndarray]] = [[] for _ in range(depth)]
    for t in tables:
        lv, cd = _levels_and_codes(t.index)
        for i in range(depth):
            levels[i].append(lv[i] if i < len(lv) else pd.Index([]))
            codes[i].append(cd[i] if i < len(cd) else np.full(len(t), -1))
    which = np.repeat(np.arange(len(tables)), [len(t) for t in tables])
    merged_levels, merged_codes = [pd.RangeIndex(len(tables))], [which]
    for lv, cd in zip(levels, codes):
        union, parts = _union_levels(lv, cd)
        merged_levels.append(union)
        merged_codes.append(parts)
    out.index = pd.MultiIndex(levels=merged_levels, codes=merged_codes, verify_integrity=False)
    return out


def _positions(column: pd.Series) -> np.ndarray:
    """Row positions of one side of a merge (-1 where that side had no row)."""
    return column.fillna(-1).to_numpy(dtype=np.int64)


def _levels_and_codes(index: pd.Index) -> tuple[list[pd.Index], list[np.ndarray]]:
    if isinstance(index, pd.MultiIndex):
        return list(index.levels), [np.asarray(c, dtype=np.int64) for c in index.codes]
    return [index], [np.arange(len(index), dtype=np.int64)]


def _joined(indexes: Sequence[pd.Index], positions: Sequence[np.ndarray]) -> pd.MultiIndex:
    """Labels made of each side's label at ``positions`` (-1: that side's levels are missing)."""
    levels: list[pd.Index] = []
    codes: list[np.ndarray] = []
    for index, pos in zip(indexes, positions):
        lv, cd = _levels_and_codes(index)
        for level, code in zip(lv, cd):
            levels.append(level)
            codes.append(np.where(pos >= 0, code[np.maximum(pos, 0)] if len(code) else -1, -1))
    return pd.MultiIndex(levels=levels, codes=codes, verify_integrity=False)


def _union_levels(levels: list[pd.Index], codes: list[np.ndarray]) -> tuple[pd.Index, np.ndarray]:
    """One level holding every part's values, and each row's code in it."""
    union = levels[0]
    for level in levels[1:]:
        union = union.append(level).unique() if len(level) else union
    union = pd.Index(union).unique()
    out = []
    for level, code in zip(levels, codes):
        where = union.get_indexer(level) if len(level) else np.array([], dtype=np.int64)
        out.append(np.where(code >= 0, where[np.maximum(code, 0)] if len(where) else -1, -1))
    return union, np.concatenate(out) if out else np.array([], dtype=np.int64)


# -- the person behind each row ---------------------------------------------------------------------------

#: The one person that the rows without a person key of a table made in the request count as.
UNKNOWN = ("no person key",)


class NoPerson(Exception):
    """A relation whose rows do not each belong to one person (the message says why and what to do)."""


class Lineage:
    """The row spaces one task reads and the person column of each (see the module's docstring).

    Parameters
    ----------
    root : the task's ``Map`` node.
    values : ``id(node) -> value`` of the evaluated task (every table node's table).
    person_of : each fragment's declared person column (None where the server declares none).

    ``why`` is None when every row space has a person per row; otherwise
    what the analyst can do instead, and the task is refused.
    """

    def __init__(self, root: Node, values: Mapping[int, Any], person_of: Mapping[str, str | None]) -> None:
        self.root = root
        self.values = values
        self.person_of = person_of
        self._columns: dict[int, str] = {}
        self.why: str | None = None
        try:
            sources = self.sources(root)
            if len(sources) != 1:
                raise NoPerson("the task reads rows of several tables at once; merge them first")
            self.source = sources[0]
            for _, source in self.segments():
                self.column(source)
            self.column(self.source)
        except NoPerson as exc:
            self.why = str(exc)

    # -- the row spaces -----------------------------------------------------------------------------------
    def sources(self, node: Node) -> list[Node]:
        """The nodes that start the row space ``node`` lives in (one, for a well-formed task)."""
        return [n for n in walk([node], stop=_starts_rows) if _starts_rows(n)]

    def segments(self) -> Iterator[tuple[Node, Node]]:
        """Every input of every relation below the root's space: ``(input, the source of its space)``."""
        seen: set[int] = set()
        stack = [s for s in self.sources(self.root) if isinstance(s, NEW_ROWS)]
        while stack:
            relation = stack.pop()
            if id(relation) in seen:
                continue
            seen.add(id(relation))
            for table in relation.children:
                for source in self.sources(table):
                    yield table, source
                    if isinstance(source, NEW_ROWS):
                        stack.append(source)

    def nodes(self, top: Node) -> list[Node]:
        """The nodes of ``top``'s own row space below it, children first (a relation below is a leaf)."""
        return list(walk([top], stop=_starts_rows))

    def persons(self, source: Node, value: Any = None) -> pd.Series:
        """The person of each row of ``source``'s table (``value``: that table in a rerun).

        A fragment's row without a person key is a person of its own, as on one table; in a table a
        relation made, such rows may be copies of one row (pandas' merge matches missing keys with each
        other), so all of them count as one person."""
        table = self.values[id(source)] if value is None else value
        persons = table[self.column(source)]
        if isinstance(source, NEW_ROWS) and persons.isna().any():
            persons = persons.astype(object).where(persons.notna(), UNKNOWN)
        return persons

    def index(self, source: Node) -> pd.Index:
        """The row labels of ``source``'s table."""
        return self.values[id(source)].index

    def made(self, node: Column) -> bool:
        """Whether ``node`` reads a column a group-by computed (its values are the analyst's, judged as such)."""
        return _made(node.arg, node.name, self.values)

    def alternatives(self) -> list[tuple[Node, Callable[[], Any], str]]:
        """Each step below the root's own rows that leaves rows out, how to make the table it would give if it
        left none out, and what it is: the filters of every other row space, and every join (an inner join
        leaves out the unmatched rows of both sides, a left join those of the right).

        The judge reruns the task with each and counts the persons whose part in the result changes: a
        filter under a per-person table, or a join, that leaves out fewer than k persons of those reaching
        the result is the differencing attack, whatever the rows outside the result hold.
        """
        steps: dict[int, tuple[Node, Callable[[], Any], str]] = {}
        for top, source in self.segments():
            for node in self.nodes(top):
                if isinstance(node, Filter):
                    steps[id(node)] = node, (lambda n=node: self.values[id(n.arg)]), "row filter"
        for source in [self.source, *(s for _, s in self.segments())]:
            if isinstance(source, Merge):
                steps[id(source)] = source, (lambda n=source: self._outer(n)), "join"
        return list(steps.values())

    def _outer(self, node: Merge) -> pd.DataFrame:
        """``node``'s join keeping every row of both sides, each with its person."""
        left, right = self.values[id(node.left)], self.values[id(node.right)]
        out = merge_rows(left, right, "outer", node.left_on, node.right_on, node.suffixes)
        name, r = self.column(node), self.column(node.right)
        if r != self.column(node.left):  # two key columns: the right one names the right side's unmatched rows
            clash = set(left.columns) & set(right.columns) - {a for a, b in zip(node.left_on, node.right_on) if a == b}
            out[name] = out[name].fillna(out[r + node.suffixes[1] if r in clash else r])
        return out

    def keys(self) -> set[int]:
        """The nodes whose values become a join's or a group-by's keys (a key column, or a value assigned
        under a key's name). Moving one of them to a far constant would pair every row with every other
        (a join of rows x rows, far beyond any price), so the influence rule leaves them to the rules that
        judge keys: the person keys by structure, the others as the row filters a join makes."""
        nodes = list(walk([self.root]))
        names = {k for n in nodes if isinstance(n, Merge) for k in (*n.left_on, *n.right_on)}
        names |= {k for n in nodes if isinstance(n, GroupAgg) for k in n.keys}
        keyed = {id(n) for n in nodes if isinstance(n, Column) and n.name in names}
        keyed |= {id(v) for n in nodes if isinstance(n, Project) for name, v in zip(n.names, n.values) if name in names}
        return keyed

    @property
    def relations(self) -> bool:
        """Whether the task reads rows a relation made (a merge, a concat, a group-by)."""
        return isinstance(self.source, NEW_ROWS) or any(True for _ in self.segments())

    # -- the person column of a table, by structure ------------------------------------------------------
    def column(self, node: Node) -> str:
        """The column of ``node``'s table that holds each row's person; ``NoPerson`` says why there is none."""
        known = self._columns.get(id(node))
        if known is None:
            known = self._columns[id(node)] = self._column(node)
        return known

    def _column(self, node: Node) -> str:
        if isinstance(node, Fragment):
            column = self.person_of.get(node.name or "")
            if column is None:
                raise NoPerson(f"fragment {node.name!r} declares no person column ('persons:' in the server's config): "
                               "joins and derived tables are judged per person, so each table needs one")
            table = self.values.get(id(node))
            if not isinstance(table, pd.DataFrame) or column not in table.columns:
                raise NoPerson(f"fragment {node.name!r} has no column {column!r}, its declared person key")
            return column
        if isinstance(node, (Filter, Sort)):
            return self.column(node.arg)
        if isinstance(node, Project):
            return self._projected(node)
        if isinstance(node, GroupAgg):
            column = self.column(node.arg)
            if column not in node.keys:
                raise NoPerson(f"{_code(node)} does not group by the person key {column!r}: a table kept on the "
                               f"server holds one row per person (groupby({column!r}) or with more keys); "
                               "group-bys over persons are released pooled instead: data.groupby(key)[col].mean()")
            return column
        if isinstance(node, Merge):
            return self._merged(node)
        if isinstance(node, Concat):
            columns = {self.column(arg) for arg in node.args}
            if len(columns) != 1:
                raise NoPerson(f"concat of tables whose person keys differ ({sorted(columns)}): rename them alike")
            return columns.pop()
        raise NoPerson(f"{_code(node)} is not a table with a person key")

    def _projected(self, node: Project) -> str:
        """An ``assign`` keeps the person column unless it replaces it; a selection keeps the columns that
        are the person column as it is (under any name)."""
        try:
            kept = self.column(node.rows)
        except NoPerson:
            kept = None
        if node.keep and kept is not None and kept not in node.names:
            return kept
        for name, value in zip(node.names, node.values):
            # the person column of these very rows: of a filtered copy it would be missing on the rows the
            # filter drops, and each row without a key would count as a person of its own (red-teamed)
            if isinstance(value, Column) and value.arg is node.rows and kept is not None and value.name == kept:
                return name
        raise NoPerson(f"{_code(node)} drops or replaces the person key column; keep it in the table")

    def _merged(self, node: Merge) -> str:
        left, right = self.column(node.left), self.column(node.right)
        if not any(a == left and b == right for a, b in zip(node.left_on, node.right_on)):
            raise NoPerson(f"the join does not pair each person's rows: {_code(node)} must match the person keys "
                           f"({left!r} with {right!r}), with any other keys beside them")
        same = {a for a, b in zip(node.left_on, node.right_on) if a == b}
        columns = lambda n: set(self.values[id(n)].columns)  # noqa: E731
        clash = (columns(node.left) & columns(node.right)) - same
        name = left + node.suffixes[0] if left in clash else left
        if name not in self.values[id(node)].columns:
            raise NoPerson(f"the join loses the person key column {left!r}; keep it in the table")
        return name


def _made(table: Node, name: str, values: Mapping[int, Any]) -> bool:
    """Whether column ``name`` of ``table`` was computed by a group-by (followed back through the relations)."""
    if isinstance(table, (Filter, Sort)):
        return _made(table.arg, name, values)
    if isinstance(table, Project):
        if name in table.names:
            value = table.values[table.names.index(name)]
            return isinstance(value, Column) and _made(value.arg, value.name, values)
        return table.keep and _made(table.rows, name, values)
    if isinstance(table, GroupAgg):
        return name in table.names or (name in table.keys and _made(table.arg, name, values))
    if isinstance(table, Concat):
        return any(_made(arg, name, values) for arg in table.args)
    if isinstance(table, Merge):
        same = {a for a, b in zip(table.left_on, table.right_on) if a == b}
        left, right = (set(values[id(t)].columns) for t in (table.left, table.right))
        clash = (left & right) - same
        for side, columns, suffix in ((table.left, left, table.suffixes[0]), (table.right, right - same, table.suffixes[1])):
            for c in columns:
                if (c + suffix if c in clash else c) == name:
                    return _made(side, c, values)
    return False


def _starts_rows(node: Node) -> bool:
    return isinstance(node, (Fragment, *NEW_ROWS))


def _code(node: Node) -> str:
    return render_code(node, literals=False)[:160]
