"""Tables derived on the servers: ``merge``, ``fm.concat``, ``sort_values`` and named aggregation.

Each server joins, stacks, sorts and groups its own fragments inside a
request (``fedmed.expr.tables``); nothing derived is released or stored,
and the result is a ``FedData`` like any other: select columns, filter
rows, compute aggregates or fit models on it. Two tables meet only on the
servers that hold both: ``pair`` matches their sources server by server
into ``Paired`` sources (``fedmed.backend.base``) and renumbers the right
table's fragments as slots of the pair. Persons must not be spread over
servers for a pooled result to equal pandas on the pooled tables: each
server joins only its own rows.

``data.groupby(keys).agg(name=(column, fn), ...)`` (pandas' named
aggregation) is the table-valued group-by: one row per group, kept on each
server (for example per person). Every other form of ``groupby`` pools
its groups across servers and returns a released result
(``fedmed.api.groupby``).
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

from ..backend.base import Paired, Source
from ..errors import ArgumentError, FedMedError
from ..expr.node import Node, rewrite
from ..expr.rowwise import Fragment, Param
from ..expr.tables import GROUP_FUNCS, JOINS, Concat, GroupAgg, Merge, Project, Sort, Table
from ..lazy import FedData
from . import Method
from .frame import Frame, is_table


def relation(data: FedData, what: str) -> Node:
    """``data`` as a table node: a frame with selected or derived columns becomes a ``Project``."""
    if not is_table(data):
        raise ArgumentError(f"{what} takes tables (data, or data[['a', 'b']]), not a column expression: {data!r}")
    if isinstance(data, Frame) and data._names is not None:
        names = tuple(data._names)
        return Project(data.node, tuple(data._column(n) for n in names), names)
    if isinstance(data, Frame) and data._derived:
        return Project(data.node, tuple(data._derived.values()), tuple(data._derived), keep=True)
    return data.node


def _slot(i: int) -> Node:
    return Fragment() if i == 0 else Table(i)


def _described(sources: Sequence[Source]) -> str:
    return "+".join(dict.fromkeys(s.fragment for s in sources))


def _by_server(sources: Sequence[Source], side: str) -> dict[Hashable, Source]:
    found: dict[Hashable, Source] = {}
    for s in sources:
        if s.link_key in found:
            raise ArgumentError(
                f"the {side} table has two fragments on {s.server} ({found[s.link_key].fragment!r}, {s.fragment!r}): "
                "fm.concat them first")
        found[s.link_key] = s
    return found


def pair(left: Sequence[Source], right: Sequence[Source], node: Node) -> tuple[tuple[Source, ...], Node]:
    """The sources of a table reading both sides, server by server, and ``node`` (the right side's
    expression) renumbered to read its fragments as slots of those sources.

    A right fragment that is the left's on every server reuses the left's
    slot (a merge with a table derived from the same fragment reads it
    once); the others are appended. The numbering depends only on the
    argument order, so equal builds give equal keys.
    """
    lefts, rights = _by_server(left, "left"), _by_server(right, "right")
    lacking = [f"the right table ({_described(right)}) has no fragment on server {s.server}, where the left has "
               f"{s.fragment!r}" for k, s in lefts.items() if k not in rights]
    lacking += [f"the left table ({_described(left)}) has no fragment on server {s.server}, where the right has "
                f"{s.fragment!r}" for k, s in rights.items() if k not in lefts]
    if lacking:
        raise FedMedError("; ".join(lacking) + ". Both tables must be on the same servers: each server joins its "
                          "own fragments (build both FedData from the servers that hold both)")
    order = list(lefts)
    n_left, n_right = len(lefts[order[0]].parts), len(rights[order[0]].parts)
    if {len(lefts[k].parts) for k in order} != {n_left} or {len(rights[k].parts) for k in order} != {n_right}:
        raise FedMedError("the tables' sources read different numbers of fragments on different servers")
    slots: list[int] = []
    extra: list[int] = []
    for j in range(n_right):
        same = next((i for i in range(n_left)
                     if all(lefts[k].parts[i].uid == rights[k].parts[j].uid for k in order)), None)
        if same is None:
            extra.append(j)
            same = n_left + len(extra) - 1
        slots.append(same)
    sources = []
    for k in order:
        parts = lefts[k].parts + tuple(rights[k].parts[j] for j in extra)
        sources.append(parts[0] if len(parts) == 1 else Paired(parts))

    def renumber(n: Node) -> Node | None:
        if isinstance(n, Fragment) and n.name is None:
            return _slot(slots[0])
        if isinstance(n, Table):
            return _slot(slots[n.slot])
        return None

    return tuple(sources), rewrite(node, renumber, stop=lambda n: isinstance(n, Param))


def _table(like: FedData, sources: tuple[Source, ...], node: Node) -> FedData:
    new = like._derive(node)
    new._sources = sources
    return new


def _keys(value: Any, what: str) -> tuple[str, ...]:
    keys = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if not keys or not all(isinstance(k, str) for k in keys):
        raise ArgumentError(f"{what} takes a column name or a list of column names, not {value!r}")
    return tuple(keys)


def merge(left: FedData, right: FedData, how: str = "inner", on: Any = None, left_on: Any = None,
          right_on: Any = None, suffixes: Sequence[str] = ("_x", "_y"), sort: bool = False) -> FedData:
    """pandas' ``merge``, run by each server on its own fragments of both tables.

    ``how`` is ``"inner"`` or ``"left"``; keys are named (``on=`` or
    ``left_on=``/``right_on=``), never guessed. Both tables must have
    fragments on the same servers; a person's rows must all be on one
    server for the pooled result to equal pandas on the pooled tables.

    Examples
    --------
    >>> import fedmed as fm
    >>> a = fm.Local.site({"patients": {"id": [1, 2], "age": [50, 70]}, "labs": {"id": [1, 1, 2], "x": [1.0, 3.0, 5.0]}})
    >>> b = fm.Local.site({"patients": {"id": [3], "age": [60]}, "labs": {"id": [4], "x": [7.0]}})
    >>> patients = fm.FedData([a["patients"], b["patients"]])
    >>> labs = fm.FedData([a["labs"], b["labs"]])
    >>> cohort = patients.merge(labs, on="id", how="left")
    >>> float(cohort["x"].mean()), int(cohort["age"].count())
    (3.0, 4)
    """
    if not isinstance(right, FedData):
        raise ArgumentError(f"merge takes a FedData table to merge with, not {type(right).__name__}")
    if how not in JOINS:
        raise ArgumentError(f"merge(how={how!r}): FedMed joins {' and '.join(map(repr, JOINS))} (each server its own rows)")
    if on is not None and (left_on is not None or right_on is not None):
        raise ArgumentError("merge takes on= or left_on= and right_on=, not both (as pandas)")
    if on is None and (left_on is None or right_on is None):
        raise ArgumentError("name the key columns: merge(other, on='patient_id') or left_on=..., right_on=... "
                            "(FedMed does not guess them from the columns)")
    lkeys, rkeys = (_keys(on, "on"),) * 2 if on is not None else (_keys(left_on, "left_on"), _keys(right_on, "right_on"))
    if len(lkeys) != len(rkeys):
        raise ArgumentError("left_on and right_on must name as many columns each")
    if not (isinstance(suffixes, (list, tuple)) and len(suffixes) == 2 and all(isinstance(s, str) for s in suffixes)):
        raise ArgumentError(f"suffixes must be two strings, such as ('_x', '_y'), not {suffixes!r}")
    if sort:
        raise ArgumentError("merge(sort=True) orders rows, which never leave a server: sort_values before first/last")
    lnode, rnode = relation(left, "merge"), relation(right, "merge")
    sources, rnode = pair(left.sources, right.sources, rnode)
    try:
        node = Merge(lnode, rnode, lkeys, rkeys, how, tuple(suffixes))
    except ValueError as exc:
        raise ArgumentError(f"merge: {exc}") from None
    return _table(left, sources, node)


def concat(objs: Sequence[FedData], axis: Any = 0, ignore_index: bool = False) -> FedData:
    """pandas' ``concat`` of tables with the same columns: each server stacks its own fragments.

    Row labels never leave a server, so ``ignore_index`` changes nothing.

    Examples
    --------
    >>> import fedmed as fm
    >>> site = fm.Local.site({"labs23": {"x": [1.0, 2.0]}, "labs24": {"x": [4.0]}})
    >>> both = fm.concat([fm.FedData([site["labs23"]]), fm.FedData([site["labs24"]])])
    >>> float(both["x"].mean())
    2.3333333333333335
    """
    objs = list(objs)
    if axis not in (0, "index", "rows"):
        raise ArgumentError("concat(axis=1) puts columns side by side by row label: merge on a key column instead")
    if not objs or not all(isinstance(o, FedData) for o in objs):
        raise ArgumentError("concat takes a list of FedData tables")
    sources, nodes = objs[0].sources, [relation(objs[0], "concat")]
    for other in objs[1:]:
        sources, node = pair(sources, other.sources, relation(other, "concat"))
        nodes.append(node)
    return _table(objs[0], sources, Concat(tuple(nodes)))


def sort_values(data: FedData, by: Any = None, ascending: Any = True, kind: Any = None, na_position: str = "last",
                ignore_index: bool = False) -> FedData:
    """pandas' ``sort_values`` of a table, kept on the servers: what ``first`` and ``last`` of a named
    aggregation follow (``labs.sort_values("date").groupby("id").agg(last=("x", "last"))``).

    The sort is stable (rows with equal keys keep their order) and puts
    missing values last. A column's rows are refused: they would be shown.
    """
    if not is_table(data) or by is None:  # a column's own sort would only order rows for showing them
        from .schema import refuse

        raise refuse(data, "sort_values")
    columns = _keys(by, "sort_values(by=...)")
    flags = [ascending] * len(columns) if isinstance(ascending, bool) else list(ascending)
    if len(flags) != len(columns) or not all(isinstance(a, bool) for a in flags):
        raise ArgumentError("sort_values(ascending=...) takes a bool, or one bool per column")
    if na_position != "last":
        raise ArgumentError("sort_values(na_position='first') is not offered: missing values sort last")
    return data._derive(Sort(relation(data, "sort_values"), columns, tuple(flags)))


def group_agg(data: FedData, keys: Sequence[FedData], names: Sequence[Any], selection: Sequence[str] | None,
              named: Mapping[str, Any]) -> FedData:
    """``data.groupby(keys).agg(name=(column, fn), ...)``: one row per group, kept on each server.

    ``fn`` is one of ``GROUP_FUNCS``; ``first`` and ``last`` skip missing
    values and follow the rows' order (``sort_values`` first). Groups are
    made on each server from its own rows only: group by the person key to
    get per-person features (persons are not spread over servers).

    Examples
    --------
    >>> import fedmed as fm
    >>> a = fm.Local({"id": [1, 1, 2], "day": [2, 1, 1], "x": [5.0, 3.0, 4.0]})
    >>> labs = fm.FedData([a, fm.Local({"id": [3], "day": [1], "x": [9.0]})])
    >>> feats = labs.sort_values("day").groupby("id").agg(last_x=("x", "last"), n=("x", "count"))
    >>> float(feats["last_x"].sum()), int(feats["n"].sum())
    (18.0, 4)
    """
    columns = []
    for key, name in zip(keys, names):
        if not isinstance(name, str) or key.node != data[name].node:
            raise ArgumentError("a named aggregation groups by column names: assign a derived key first "
                                "(data['decade'] = data['age'] // 10; data.groupby('decade').agg(...))")
        columns.append(name)
    items = []
    for out, spec in named.items():
        if isinstance(spec, str) and selection is not None and len(selection) == 1:
            spec = (selection[0], spec)  # g["x"].agg(last="last"), as pandas' SeriesGroupBy
        if not (isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str)):
            raise ArgumentError(f"agg({out}=...) takes a (column, function name) pair, such as ('hba1c', 'last'), "
                                f"not {spec!r}")
        column, fn = spec
        if not isinstance(fn, str) or fn not in GROUP_FUNCS:
            raise ArgumentError(f"agg({out}=({column!r}, ...)) takes a function name among {list(GROUP_FUNCS)}, not "
                                f"{fn!r} (Python functions would run on the rows, which never leave a server)")
        items.append((str(out), column, fn))
    if not items:
        raise ArgumentError("a named aggregation needs at least one name=(column, function) pair")
    try:
        node = GroupAgg(relation(data, "a named aggregation"), tuple(columns), *map(tuple, zip(*items)))
    except ValueError as exc:
        raise ArgumentError(f"named aggregation: {exc}") from None
    return data._derive(node)


METHODS = {
    "merge": Method(merge),
    "sort_values": Method(sort_values),
}
