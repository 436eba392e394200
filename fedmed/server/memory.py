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
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import ServerUnavailable
from ..expr.node import Node
from ..expr.rowwise import Column, Elementwise, Filter, Fragment as FragmentNode, Literal, Map
from ..expr.tables import RELATIONS, Concat, GroupAgg, Merge, Sort

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
    columns (or a nested fragment's tables) by name.
    """

    rows: int = 0
    columns: int = 0
    item: int = 8
    text: int = 0
    shape: tuple[int, ...] = ()
    parts: Mapping[str, "Size"] | None = None

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

    A merge is priced at the rows of both sides together: a bound when one
    side has one row per key (a per-person table), not for a many-to-many
    join, whose pricing from each key's largest multiplicity is a later step
    (docs/design/tables.md, section 6).
    """
    if isinstance(node, Merge):
        rows = args[0].rows + args[1].rows
        left, right = _resized(args[0], rows), _resized(args[1], rows)
        shared = {a for a, b in zip(node.left_on, node.right_on) if a == b}  # one column, as pandas
        clash = (set(left) & set(right)) - shared
        parts = {f"{k}{node.suffixes[0]}" if k in clash else k: p for k, p in left.items()}
        parts.update({f"{k}{node.suffixes[1]}" if k in clash else k: p for k, p in right.items() if k not in shared})
    elif isinstance(node, Concat):
        rows = sum(a.rows for a in args)
        parts = _resized(args[0], rows)
    elif isinstance(node, GroupAgg):
        rows = args[0].rows
        given = args[0].parts or {}
        parts = {k: Size(rows, 1, given.get(k, Size()).item, given.get(k, Size()).text) for k in node.keys}
        parts.update({n: Size(rows, 1, given.get(c, Size()).item if f in ("first", "last", "min", "max") else 8,
                              given.get(c, Size()).text if f in ("first", "last", "min", "max") else 0)
                      for n, c, f in zip(node.names, node.columns, node.funcs)})
    elif isinstance(node, Sort):
        rows, parts = args[0].rows, dict(args[0].parts or {})
    else:  # Project
        rows = args[0].rows
        parts = dict(args[0].parts or {}) if node.keep else {}  # type: ignore[attr-defined]
        parts.update({n: Size(rows, 1, a.item, a.text) for n, a in zip(node.names, args[1:])})  # type: ignore[attr-defined]
    size = Size(rows, max(len(parts), 1), max((p.item for p in parts.values()), default=8),
                max((p.text for p in parts.values()), default=0), parts=parts)
    input_rows = sum(a.rows for a in args if a.rowwise)
    return Cost(size, size.nbytes, size.nbytes + input_rows * 16)  # row positions and group codes


def _resized(size: Size, rows: int) -> dict[str, Size]:
    return {k: Size(rows, p.columns, p.item, p.text) for k, p in (size.parts or {}).items()}


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
