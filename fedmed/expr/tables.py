"""Relations: tables a server derives from its fragments inside one request (issue 18).

A relation is a table made on the server from other tables: ``Merge`` (a
join), ``Concat`` (rows of several tables), ``GroupAgg`` (pandas' named
aggregation, one row per group, e.g. per person), ``Sort`` (row order, for
``first``/``last``) and ``Project`` (a frame's selected or derived columns
made a table). None is ever released or stored: a relation is recomputed
in every request that reads it and shared between that request's outputs
by key, like any node. Only ``map`` nodes leave a server.

Each relation starts a *row space* (``Fragment``, ``Merge``, ``Concat``,
``GroupAgg``) or stays in its input's (``Sort``, ``Project``); rows of two
row spaces meet only through ``Merge`` and ``Concat``.

``Table(slot)`` is a client-only leaf: the ``slot``-th fragment of a paired
source (``fedmed.backend.base.Paired``), bound to ``Fragment(name)`` per
source exactly as ``Fragment(None)`` is (``optimize.bind``).

Parameters arrive from the wire as lists; ``__post_init__`` checks them
(``ValueError``, which the server turns into a 400 naming the entry) and
makes them tuples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .node import Node

#: pandas' named-aggregation functions a ``GroupAgg`` runs (``first``/``last`` skip missing values).
GROUP_FUNCS = ("first", "last", "min", "max", "mean", "sum", "count", "nunique", "size")
#: Joins a ``Merge`` runs; outer and right joins are out of scope (docs/design/tables.md, section 9).
JOINS = ("inner", "left")
#: Longest merge suffix: a name, not a payload.
MAX_SUFFIX = 32
#: Most names in any name list of a relation.
MAX_NAMES = 1024


def _names(value: Any, what: str, *, empty: bool = False) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} must be a list of column names")
    if (not value and not empty) or len(value) > MAX_NAMES:
        raise ValueError(f"{what} must name between {0 if empty else 1} and {MAX_NAMES} columns")
    return tuple(value)


def _set(node: Node, **values: Any) -> None:
    for name, value in values.items():
        object.__setattr__(node, name, value)


@dataclass(frozen=True, eq=False)
class Table(Node):
    """The ``slot``-th fragment of a paired source; the client binds it to ``Fragment(name)``."""

    slot: int
    kind: ClassVar[str] = "table"

    def describe(self, refs: list[str]) -> str:
        return f"table({self.slot})"

    def code(self, args: list[str]) -> str:
        return f"data{self.slot}"


@dataclass(frozen=True, eq=False)
class Merge(Node):
    """``pd.merge(left, right, how, left_on, right_on, suffixes, sort=False)``, rows relabelled 0..n-1."""

    left: Node
    right: Node
    left_on: tuple[str, ...]
    right_on: tuple[str, ...]
    how: str = "inner"
    suffixes: tuple[str, str] = ("_x", "_y")
    kind: ClassVar[str] = "merge"

    def __post_init__(self) -> None:
        left_on, right_on = _names(self.left_on, "left_on"), _names(self.right_on, "right_on")
        if len(left_on) != len(right_on):
            raise ValueError("left_on and right_on must name as many columns each")
        if self.how not in JOINS:
            raise ValueError(f"how must be one of {list(JOINS)}, not {str(self.how)[:20]!r}")
        suffixes = self.suffixes
        if (not isinstance(suffixes, (list, tuple)) or len(suffixes) != 2
                or not all(isinstance(s, str) and len(s) <= MAX_SUFFIX for s in suffixes)):
            raise ValueError(f"suffixes must be two strings of at most {MAX_SUFFIX} characters")
        _set(self, left_on=left_on, right_on=right_on, suffixes=tuple(suffixes))

    def describe(self, refs: list[str]) -> str:
        return self.code(refs)

    def code(self, args: list[str]) -> str:
        return (f"{args[0]}.merge({args[1]}, left_on={list(self.left_on)!r}, right_on={list(self.right_on)!r}, "
                f"how={self.how!r}, suffixes={self.suffixes!r})")


@dataclass(frozen=True, eq=False)
class Concat(Node):
    """``pd.concat(args, ignore_index=True)`` of tables with the same columns, in the same order."""

    args: tuple[Node, ...]
    kind: ClassVar[str] = "concat"

    def describe(self, refs: list[str]) -> str:
        return self.code(refs)

    def code(self, args: list[str]) -> str:
        return f"pd.concat([{', '.join(args)}], ignore_index=True)"


@dataclass(frozen=True, eq=False)
class GroupAgg(Node):
    """``arg.groupby(keys).agg(names[i]=(columns[i], funcs[i]), ...).reset_index()``: one row per group."""

    arg: Node
    keys: tuple[str, ...]
    names: tuple[str, ...]
    columns: tuple[str, ...]
    funcs: tuple[str, ...]
    kind: ClassVar[str] = "groupagg"

    def __post_init__(self) -> None:
        keys, names = _names(self.keys, "keys"), _names(self.names, "names")
        columns, funcs = _names(self.columns, "columns"), _names(self.funcs, "funcs")
        if not len(names) == len(columns) == len(funcs):
            raise ValueError("names, columns and funcs must be as long as each other")
        if len(set(names)) != len(names) or set(names) & set(keys):
            raise ValueError("the names of a group-by's results must be unique and differ from its keys")
        unknown = sorted(set(funcs) - set(GROUP_FUNCS))
        if unknown:
            raise ValueError(f"{unknown[0][:20]!r} is not a group function; use one of {list(GROUP_FUNCS)}")
        _set(self, keys=keys, names=names, columns=columns, funcs=funcs)

    def describe(self, refs: list[str]) -> str:
        return self.code(refs)

    def code(self, args: list[str]) -> str:
        spec = ", ".join(f"{n}=({c!r}, {f!r})" for n, c, f in zip(self.names, self.columns, self.funcs))
        return f"{args[0]}.groupby({list(self.keys)!r}).agg({spec}).reset_index()"


@dataclass(frozen=True, eq=False)
class Sort(Node):
    """``arg.sort_values(by, ascending, kind="stable", na_position="last")``: labels kept (same row space)."""

    arg: Node
    by: tuple[str, ...]
    ascending: tuple[bool, ...]
    kind: ClassVar[str] = "sort"

    def __post_init__(self) -> None:
        by = _names(self.by, "by")
        ascending = self.ascending
        if not isinstance(ascending, (list, tuple)) or len(ascending) != len(by) \
                or not all(isinstance(a, bool) for a in ascending):
            raise ValueError("ascending must be one bool per sort column")
        _set(self, by=by, ascending=tuple(ascending))

    def describe(self, refs: list[str]) -> str:
        return self.code(refs)

    def code(self, args: list[str]) -> str:
        return f"{args[0]}.sort_values({list(self.by)!r}, ascending={list(self.ascending)!r})"


@dataclass(frozen=True, eq=False)
class Project(Node):
    """Columns ``names`` = ``values`` on the rows of ``rows`` (same row space); ``keep`` adds them to
    the rows' own columns, as ``assign`` does, instead of making a table of them alone."""

    rows: Node
    values: tuple[Node, ...]
    names: tuple[str, ...]
    keep: bool = False
    kind: ClassVar[str] = "project"

    def __post_init__(self) -> None:
        names = _names(self.names, "names", empty=True)
        if len(names) != len(self.values) or len(set(names)) != len(names):
            raise ValueError("a projection needs one unique name per value")
        if not isinstance(self.keep, bool):
            raise ValueError("keep must be a bool")
        _set(self, names=names)

    def describe(self, refs: list[str]) -> str:
        return self.code(refs)

    def code(self, args: list[str]) -> str:
        columns = ", ".join(f"{n}={a}" for n, a in zip(self.names, args[1:]))
        return f"{args[0]}.assign({columns})" if self.keep else f"pd.DataFrame(dict({columns}), index={args[0]}.index)"


#: Relations that start a row space of their own (with ``Fragment``): their rows are new rows.
NEW_ROWS = (Merge, Concat, GroupAgg)
#: Every relation kind: a task reading one is evaluated over tables (``fedmed.server.core``).
RELATIONS = (Merge, Concat, GroupAgg, Sort, Project)
