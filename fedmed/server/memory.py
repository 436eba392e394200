"""How much memory a request may cost a server, decided before any work is done.

A hospital server shares a modest machine with other services, so a few
hundred bytes of request must never make it allocate gigabytes. Every
request is therefore priced first, from sizes the server already knows
(rows and columns of the fragment, item sizes, text lengths, constants after
broadcasting), and refused when its price exceeds the server's budget
(config ``limits.memory_bytes``; by default a quarter of the machine's
memory, or of the address space a ``ulimit -v`` leaves, whichever is less).
"""

from __future__ import annotations

import math
import os
import resource
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import ServerUnavailable
from ..expr.node import Node, walk
from ..expr.rowwise import Column, Elementwise, Filter, Fragment as FragmentNode, Literal, Map
from ..expr.tables import RELATIONS, Concat, GroupAgg, Merge, Project, Sort

#: Share of the machine's memory (or of a ``ulimit -v`` cap) a server spends on one request by default.
SHARE = 4


def machine_budget() -> int:
    """The default budget: a quarter of the memory this process can use.

    The least of: physical memory, a cgroup (container) memory limit, and
    the address-space limit (``ulimit -v``), which also counts memory that
    is reserved but not used, such as thread stacks.
    """
    limits = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    cgroup = _cgroup_limit()
    if cgroup:
        limits.append(cgroup)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft)
    return min(limits) // SHARE


def request_budget(limits: Mapping[str, int | None]) -> int:
    """The bytes one request may cost: ``limits['memory_bytes']``, or the machine's default."""
    configured = limits.get("memory_bytes")
    return int(configured) if configured else machine_budget()


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return None


# -- what a value will weigh --------------------------------------------------------------------

#: Bytes a Python string costs beyond its characters (object header, hash, length).
STR_OVERHEAD = 56
#: Characters a text value of the fragment is priced at (its real length is the data's business).
TEXT = 64
#: Longest text ``astype(str)`` makes of a number or a date.
NUMBER_TEXT = 32
#: Bytes per entry of a small Python result (a list slot and a boxed number).
BOXED = 64
#: Bytes per distinct value of a per-value result such as ``value_counts``: a ``[value, count]``
#: list, two boxed values and their msgpack bytes (measured: about 150).
PER_VALUE = 160
#: Bytes per row the disclosure analysis of one task borrows (masks and moved copies; measured
#: about 60 for a sum over an expression).
JUDGING = 96


@dataclass(frozen=True)
class Size:
    """What the server knows of a value before computing it.

    ``rows`` and ``columns`` for row-wise values (``columns`` 1 for a
    single column), ``shape`` for constants (their numpy shape after
    broadcasting); ``item`` the bytes of one entry, ``text`` the longest
    text in it (0 when it holds none); ``parts`` the sizes of a table's
    columns (or a nested fragment's tables) by name. ``most``, for a
    column, bounds how many of its rows share one value (missing counts as
    a value, as in a merge): measured on the whole fragment for join keys
    (``most_repeated``), derived for a relation's columns; None where
    unknown, which means ``rows``.
    """

    rows: int = 0
    columns: int = 0
    item: int = 8
    text: int = 0
    shape: tuple[int, ...] = ()
    parts: Mapping[str, "Size"] | None = None
    most: int | None = None

    @property
    def repeats(self) -> int:
        """``most``, or ``rows`` where it is unknown."""
        return self.rows if self.most is None else min(self.most, self.rows)

    @property
    def rowwise(self) -> bool:
        return self.columns > 0

    @property
    def entries(self) -> int:
        return self.rows * self.columns if self.rowwise else math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.entries * self.item


def size_of_data(data: Any) -> Size:
    """The size of a fragment's data (pandas objects, or a dict of them), from its schema alone.

    Only rows, columns and types count, never the values: whether a request
    is refused must not depend on the rows (the longest name in a column
    would otherwise be learnt by bisecting the budget), so text is priced
    at ``TEXT`` characters a value whatever it holds, and the text a
    request brings (a constant) at its own length.
    """
    if isinstance(data, pd.DataFrame):
        parts = {str(c): size_of_data(data.iloc[:, i]) for i, c in enumerate(data.columns)}
        return Size(len(data), max(len(parts), 1), max((p.item for p in parts.values()), default=8),
                    max((p.text for p in parts.values()), default=0), parts=parts)
    if isinstance(data, pd.Series):
        if _holds_text(data.dtype):
            return Size(len(data), 1, 8 + STR_OVERHEAD + TEXT, TEXT)
        return Size(len(data), 1, max(getattr(data.dtype, "itemsize", 8), 8))
    if isinstance(data, dict):
        parts = {str(k): size_of_data(v) for k, v in data.items()}
        rows = max((p.rows for p in parts.values()), default=0)
        return Size(rows, max((p.columns for p in parts.values()), default=1), 8,
                    max((p.text for p in parts.values()), default=0), parts=parts)
    return Size()


def _holds_text(dtype: Any) -> bool:
    return dtype == object or str(dtype).startswith(("string", "str", "category"))


def size_of_constant(value: Any) -> Size:
    """A request's constant: its shape as numpy would see it, and its longest text."""
    shape: list[int] = []
    level = [value]
    while level and all(isinstance(v, list) for v in level):
        lengths = {len(v) for v in level}
        if len(lengths) != 1:  # ragged: numpy makes an object array of the outer level
            break
        shape.append(lengths.pop())
        level = [x for v in level for x in v]
    text = max((len(v) for v in _leaves(value) if isinstance(v, str)), default=0)
    return Size(shape=tuple(shape), item=8 + (text + STR_OVERHEAD if text else 0), text=text)


def _leaves(value: Any) -> Iterator[Any]:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        else:
            yield v


# -- what a request will cost -------------------------------------------------------------------


@dataclass(frozen=True)
class Cost:
    """One node's price: its value's size, the bytes it adds, and what computing it borrows."""

    size: Size
    new: int = 0        # bytes of the value the server keeps (0 for the fragment's own columns)
    borrowed: int = 0   # bytes held only while it is computed (pandas temporaries, conversions)

    @property
    def peak(self) -> int:
        return self.new + self.borrowed


@dataclass(frozen=True)
class Price:
    """What evaluating a node table will cost a fragment."""

    costs: Mapping[int, Cost]   # node index -> its cost
    peak: int                   # bytes held at the busiest moment of the evaluation

    def biggest(self) -> int:
        """The index of the node with the largest price."""
        return max(self.costs, key=lambda i: self.costs[i].peak)


def price(nodes: Sequence[Node], outputs: Sequence[int], data: "Size | Mapping[str, Size]", config: Any) -> Price:
    """The cost of evaluating ``outputs`` of ``nodes`` over data of size ``data``, in the evaluator's order.

    The evaluator computes the outputs one after the other (``schedule``),
    keeps a task's intermediates until its result has been judged, frees
    each value once no later task needs it, and keeps the results for the
    answer. Under privacy policies judging a result costs too: the
    disclosure analysis recomputes the task's intermediates once more and
    builds masks over the rows, and the cell rules copy a per-value result
    a few times (measured: ``benchmarks/memory.py``).
    """
    judged = bool(getattr(config, "privacy", ()))
    plan = schedule(nodes, outputs, judged)
    rows = data.rows if isinstance(data, Size) else max((d.rows for d in data.values()), default=0)
    costs: dict[int, Cost] = {}
    position = {id(node): i for i, node in enumerate(nodes)}
    for step in plan:
        for i in step.new:
            costs[i] = cost_of(nodes[i], [costs[position[id(c)]].size for c in nodes[i].children], data, config)
    keep = set(outputs)
    live = peak = 0
    for o, step in zip(outputs, plan):
        held = 0  # the task's own intermediates, which judging recomputes once more
        for i in step.new:
            peak = max(peak, live + costs[i].peak)
            live += costs[i].new
            held += costs[i].new if i not in keep else 0
            if judged and isinstance(nodes[i], Merge):  # the judge reruns the task as if the join kept every row
                held += _unmatched(costs[i], [costs[position[id(c)]].size for c in nodes[i].children])
            live -= sum(costs[c].new for c in step.drops.get(i, ()) if c not in keep)
        if judged:
            peak = max(peak, live + held + rows * JUDGING + costs[o].new * 3)
        live -= sum(costs[i].new for i in step.freed if i not in keep)
    return Price(costs, peak + sum(costs[o].new for o in keep))  # the answer is packed from the results


#: Bytes one entry of a per-value answer costs when DuckDB hands it to Python (the fetched rows, the
#: answer's dict, its msgpack). Measured: a value_counts of 1,000,000 distinct values grew a server
#: by 738 MiB at its peak, 200,000 by 164 MiB (``tests/scale/test_duckdb_limits.py``).
FETCHED = 800


def price_answers(nodes: Sequence[Node], outputs: Sequence[int], rows: int, config: Any) -> Price:
    """The price of a request to an engine that holds its intermediates under its own memory limit
    (DuckDB's ``memory_limit``): only the answers it hands back to Python.

    A map of a fixed size (``@fixed_size``) answers in a few values; any
    other (``value_counts``, ``set``, ``crosstab``) may answer one entry per
    row of the fragment, whatever the rows hold: like ``price``, this reads
    the fragment's row count, never its values.
    """
    costs = {}
    for o in dict.fromkeys(outputs):
        node = nodes[o]
        aggregate = config.aggregates.get(getattr(node, "op", None))
        if getattr(getattr(aggregate, "map", None), "fixed_size", False):
            costs[o] = Cost(Size(shape=(1,)), 1024)
        else:
            entries = rows * max(1, len(node.children))
            costs[o] = Cost(Size(shape=(entries,)), entries * FETCHED + 1024)
    return Price(costs, sum(c.new for c in costs.values()))


def cost_of(node: Node, args: list[Size], data: "Size | Mapping[str, Size]", config: Any) -> Cost:
    """The cost of one node whose children have sizes ``args``; ``data`` is the fragment's size, or
    the size of each fragment a task over tables reads, by name."""
    if isinstance(node, FragmentNode):
        return Cost(data if isinstance(data, Size) else data.get(node.name or "", Size()))
    if isinstance(node, RELATIONS):
        return _relation(node, args)
    if isinstance(node, Column):
        parts = args[0].parts or {}
        return Cost(parts.get(node.name, Size()))
    if isinstance(node, Literal):
        size = size_of_constant(node.value)
        return Cost(size, size.nbytes)
    if isinstance(node, Filter):
        return Cost(args[0], args[0].nbytes, args[0].rows)
    if isinstance(node, Elementwise):
        size = _elementwise(node.op, args)
        return Cost(size, size.nbytes, size.nbytes)
    if isinstance(node, Map):
        inputs = [a for a in args if a.rowwise]
        width = sum(a.columns for a in inputs)
        aggregate = config.aggregates.get(node.op)
        if getattr(getattr(aggregate, "map", None), "fixed_size", False):
            result = (width * width + len(args)) * BOXED + 1024
        else:  # one entry per row at most (value counts of a column of distinct values)
            result = sum(a.rows * a.columns * (PER_VALUE + a.text) for a in inputs) + 1024
        return Cost(Size(), result, sum(a.rows * a.columns * 8 for a in inputs))
    return Cost(Size())


def _relation(node: Node, args: list[Size]) -> Cost:
    """A table made in the request: pandas builds it whole (a copy) and borrows about as much.

    Its rows are bounded whatever rows the request's filters keep (a filter
    is priced at its input's rows, and ``most`` is measured on the whole
    fragment), so whether a relation is refused never depends on the rows a
    request selects: docs/security.md, section 2.4.
    """
    if isinstance(node, Merge):
        rows, parts = _merged(node, args[0], args[1])
    elif isinstance(node, Concat):
        rows = sum(a.rows for a in args)
        given = args[0].parts or {}
        parts = {k: _column(rows, p, sum(_repeats(a, k) for a in args)) for k, p in given.items()}
    elif isinstance(node, GroupAgg):
        rows = args[0].rows  # at most one group per row
        given = args[0].parts or {}
        parts = {k: _column(rows, given.get(k, Size()), 1 if len(node.keys) == 1 else _repeats(args[0], k))
                 for k in node.keys}
        for n, c, f in zip(node.names, node.columns, node.funcs):
            if f in ("first", "last", "min", "max"):  # a value of the group: no more groups than rows hold it
                parts[n] = _column(rows, given.get(c, Size()), _repeats(args[0], c))
            else:
                parts[n] = Size(rows, 1, 8)
    elif isinstance(node, Sort):
        rows, parts = args[0].rows, dict(args[0].parts or {})
    else:  # Project
        rows = args[0].rows
        parts = dict(args[0].parts or {}) if node.keep else {}  # type: ignore[attr-defined]
        parts.update({n: _column(rows, a, a.most) for n, a in zip(node.names, args[1:])})  # type: ignore[attr-defined]
    size = Size(rows, max(len(parts), 1), max((p.item for p in parts.values()), default=8),
                max((p.text for p in parts.values()), default=0), parts=parts)
    input_rows = sum(a.rows for a in args if a.rowwise)
    return Cost(size, size.nbytes, size.nbytes + input_rows * 16)  # row positions and group codes


def _unmatched(cost: Cost, sides: list[Size]) -> int:
    """What an outer version of a merge adds (every row of both sides, unmatched): the judge's rerun of a
    join under privacy policies (``fedmed.server.lineage``), with its row labels (16 bytes a row a side)."""
    per_row = cost.size.nbytes // max(cost.size.rows, 1) + 32
    return sum(side.rows for side in sides) * per_row


def _merged(node: Merge, left: Size, right: Size) -> tuple[int, dict[str, Size]]:
    """A merge's rows and columns. Each left row meets at most as many right rows as the right key's
    most repeated value holds, and each right row as many left rows: the rows are at most the smaller
    of ``left.rows x most(right key)`` and ``right.rows x most(left key)`` (a left join adds the left
    rows without a match). Several keys: the least ``most`` of them bounds the pairs' repeats."""
    fan_left = min((_repeats(left, k) for k in node.left_on), default=left.rows)    # left rows per key value
    fan_right = min((_repeats(right, k) for k in node.right_on), default=right.rows)
    outer = node.how == "left"
    if outer:
        fan_right = max(fan_right, 1)  # a left row without a match is kept once
    rows = min(left.rows * fan_right, right.rows * fan_left + (left.rows if outer else 0))
    shared = {a for a, b in zip(node.left_on, node.right_on) if a == b}  # one column, as pandas
    mine, theirs = left.parts or {}, right.parts or {}
    clash = (set(mine) & set(theirs)) - shared
    parts = {f"{k}{node.suffixes[0]}" if k in clash else k: _column(rows, p, _repeats(left, k) * fan_right)
             for k, p in mine.items()}
    parts.update({f"{k}{node.suffixes[1]}" if k in clash else k:
                  _column(rows, p, _repeats(right, k) * fan_left + (left.rows if outer else 0))
                  for k, p in theirs.items() if k not in shared})
    return rows, parts


def _repeats(table: Size, column: str) -> int:
    """How many rows of ``table`` may share one value of ``column`` (all of them where unknown)."""
    part = (table.parts or {}).get(column)
    return table.rows if part is None or part.most is None else min(part.most, table.rows)


def _column(rows: int, like: Size, most: int | None) -> Size:
    return Size(rows, like.columns or 1, like.item, like.text, most=None if most is None else min(most, rows))


# -- what a join's keys repeat: measured once per fragment version -------------------------------------


def key_columns(nodes: Sequence[Node]) -> set[str]:
    """The columns whose repeats price the request's merges: the merge keys, and the columns a
    projection names as a key (``labs[["id", "x"]]`` keeps the names; ``assign`` may rename)."""
    keys = {k for n in nodes if isinstance(n, Merge) for k in (*n.left_on, *n.right_on)}
    renamed = {v.name for n in nodes if isinstance(n, Project)
               for name, v in zip(n.names, n.values) if name in keys and isinstance(v, Column)}
    return keys | renamed


def most_repeated(column: Any) -> int | None:
    """The number of rows of the whole ``column`` sharing its most frequent value (missing values,
    which a merge matches with each other, count as one value), rounded up to a power of two so that
    a refusal tells no more than that; None when its values cannot be counted (unhashable)."""
    if not isinstance(column, pd.Series):
        return None
    try:
        counts = column.value_counts(dropna=True)
    except TypeError:
        return None
    most = max(int(counts.max()) if len(counts) else 0, int(column.isna().sum()))
    return 0 if most == 0 else 1 << (most - 1).bit_length()


def with_repeats(size: Size, most: Mapping[str, int | None]) -> Size:
    """``size`` with the measured ``most`` of some of its columns."""
    if not size.parts or not most:
        return size
    parts = {k: replace(p, most=most[k]) if k in most else p for k, p in size.parts.items()}
    return replace(size, parts=parts)


def too_big_relation(node: Node, cost: Cost, budget: int) -> str:
    """Why a relation is refused, from its price alone: which tables it makes of what, and what to do."""
    size = cost.size
    said = (f"{_what(node)} could hold about {size.rows:,} rows x {size.columns} columns (about {mib(cost.peak)} "
            f"to build), more than this server's budget of {mib(budget)} per request (limits.memory_bytes); ")
    if isinstance(node, Merge):
        return said + ("the bound takes every row of both tables, whatever a filter keeps, and each key's most "
                       "repeated value in the whole table (to a power of two): join on a key with fewer repeats "
                       "(a person key), or aggregate one side to one row per key first (groupby(...).agg)")
    return said + "select fewer columns first, or aggregate to fewer rows (groupby(...).agg)"


def _what(node: Node) -> str:
    if isinstance(node, Merge):
        keys = (f"on {list(node.left_on)}" if node.left_on == node.right_on
                else f"left_on={list(node.left_on)}, right_on={list(node.right_on)}")
        return f"{'left ' if node.how == 'left' else ''}merge {keys} of {_source(node.left)} and {_source(node.right)}"
    if isinstance(node, Concat):
        return f"concat of {', '.join(_source(a) for a in node.args)}"
    if isinstance(node, GroupAgg):
        return f"groupby({list(node.keys)}).agg of {_source(node.arg)}"
    if isinstance(node, Sort):
        return f"sort_values({list(node.by)}) of {_source(node.arg)}"
    return f"a table of columns {list(node.names)[:5]} of {_source(node.rows)}"  # type: ignore[attr-defined]


def _source(node: Node) -> str:
    """A relation's input as its reader would name it: ``'labs'``, ``'labs' (filtered)``, or what it is made from."""
    if isinstance(node, FragmentNode):
        return repr(node.name)
    if isinstance(node, Filter) and isinstance(node.children[0], FragmentNode):
        return f"{node.children[0].name!r} (filtered)"
    names = sorted({n.name for n in walk([node]) if isinstance(n, FragmentNode) and n.name})
    return f"a table made from {' and '.join(map(repr, names))}"


def _elementwise(op: str, args: list[Size]) -> Size:
    """The size of an elementwise result: the shape of its widest row-wise operand, or of its
    constants after broadcasting; text as long as the longest text it is given."""
    text = max((a.text for a in args), default=0) + (NUMBER_TEXT if op == "astype" else 0)
    item = 8 + (text + STR_OVERHEAD if text else 0)
    rowwise = [a for a in args if a.rowwise]
    if rowwise:
        widest = max(rowwise, key=lambda a: a.rows * a.columns)
        parts = None
        if widest.parts is not None:
            parts = {name: Size(p.rows, p.columns, item, text) for name, p in widest.parts.items()}
        return Size(widest.rows, widest.columns, item, text, parts=parts)
    try:
        shape = np.broadcast_shapes(*(a.shape for a in args))
    except ValueError:  # the operation will fail, at the cost of its operands
        shape = max((a.shape for a in args), key=math.prod, default=())
    return Size(shape=tuple(shape), item=item, text=text)


@dataclass(frozen=True)
class Step:
    """The evaluator's work for one output: ``new`` nodes computed for it (in order), ``drops[i]`` the
    values no longer needed once node ``i`` is computed, ``freed`` those no longer needed once the
    output's result has been judged."""

    new: list[int]
    drops: Mapping[int, list[int]]
    freed: list[int]


def schedule(nodes: Sequence[Node], outputs: Sequence[int], judged: bool = True) -> list[Step]:
    """The evaluator's order: the outputs one after the other, each node computed once, when first needed.

    When results are ``judged`` (privacy policies read the disclosure, which
    reads every value below the output), a value lives until the last output
    that needs it has been judged; otherwise until its last parent has been
    computed, so peak memory follows the widest level of the table, not its
    length. Linear in the table: each node is reached once going forwards
    (first use) and once going backwards (last use).
    """
    position = {id(node): i for i, node in enumerate(nodes)}

    def reach(order: Sequence[int]) -> list[list[int]]:
        seen: set[int] = set()
        found = []
        for o in order:
            stack, mine = [o], []
            while stack:
                i = stack.pop()
                if i in seen:
                    continue
                seen.add(i)
                mine.append(i)
                stack.extend(position[id(c)] for c in nodes[i].children)
            found.append(sorted(mine))
        return found

    first = reach(outputs)
    if judged:
        last = reach(outputs[::-1])[::-1]
        return [Step(new, {}, freed) for new, freed in zip(first, last)]
    # Without judging, a value is needed by the nodes that read it and by the output that yields it;
    # it goes after whichever of those comes last (an output may be read by a later output's node, and
    # equal wire entries can make one output appear twice).
    last: dict[int, tuple[int, int]] = {}  # node -> (tick of its last use, the node or step it follows)
    tick = 0
    for k, (new, o) in enumerate(zip(first, outputs)):
        for i in new:
            for c in nodes[i].children:
                last[position[id(c)]] = (tick, i)
            tick += 1
        last[o] = (tick, -1 - k)  # read when step k yields
        tick += 1
    drops: dict[int, list[int]] = {}
    freed: list[list[int]] = [[] for _ in outputs]
    for n, (_, at) in last.items():
        if at < 0:
            freed[-1 - at].append(n)
        else:
            drops.setdefault(at, []).append(n)
    return [Step(new, {i: drops[i] for i in new if i in drops}, gone) for new, gone in zip(first, freed)]

class MemoryPool:
    """The server's memory budget shared by concurrent requests.

    A request reserves its price before it is evaluated and gives it back
    when its answer is packed, so eight worker threads never hold more than
    one budget between them. A request that does not fit waits for others
    to finish, at most ``wait`` seconds.
    """

    def __init__(self, capacity: int, wait: float = 30.0) -> None:
        self.capacity = int(capacity)
        self.wait = wait
        self.used = 0
        self._free = threading.Condition()

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        nbytes = min(int(nbytes), self.capacity)
        with self._free:
            if not self._free.wait_for(lambda: self.used + nbytes <= self.capacity, timeout=self.wait):
                raise ServerUnavailable(
                    "the server is busy: other large requests hold its memory budget; try again shortly")
            self.used += nbytes
        try:
            yield
        finally:
            with self._free:
                self.used -= nbytes
                self._free.notify_all()


def mib(nbytes: float) -> str:
    """Bytes as MiB (or GiB) for messages."""
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"
