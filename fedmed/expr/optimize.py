"""The optimizer: from the outputs a user asked for to rounds of per-server requests.

Passes, each switchable through :class:`OptFlags`:

- ``dedupe_nodes``: equal subtrees (equal keys) become one node, so a map
  used twice is computed once and sent once (common-subexpression
  elimination across the whole batch);
- ``batch_requests``: all map tasks of a round for one server, whatever the
  fragment, travel in one request.

``split_rounds`` always runs: a map whose expression uses a client-side
result (a ``Param``) must wait for the round that computes it, so the number
of rounds equals the dependency depth of the reduce graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Sequence

from ..backend.base import Link, Source
from ..errors import DataError
from .client import CLIENT_NODES, Reduce
from .node import Node, rewrite, walk
from .rowwise import Fragment, Literal, Param
from .tables import Table


@dataclass(frozen=True)
class OptFlags:
    """Which optimizer passes run. ``OptFlags.naive()`` switches all of them off.

    Examples
    --------
    >>> OptFlags().passes
    ('dedupe_nodes', 'batch_requests', 'split_rounds')
    >>> OptFlags.naive().passes
    ('split_rounds',)
    """

    dedupe: bool = True
    batch: bool = True

    @classmethod
    def naive(cls) -> "OptFlags":
        return cls(dedupe=False, batch=False)

    @property
    def passes(self) -> tuple[str, ...]:
        return tuple(
            name for name, on in (("dedupe_nodes", self.dedupe), ("batch_requests", self.batch)) if on
        ) + ("split_rounds",)

    def identity(self) -> Callable[[Node], Hashable]:
        """How nodes are told apart: by content when deduplicating, else by object."""
        return (lambda node: node.key) if self.dedupe else id


@dataclass(frozen=True)
class Task:
    """One map task: a reduce's map for one source.

    ``template`` is the map with the client's values in and the fragment
    left unnamed: the same object for every source of the reduce, so a
    round's requests are encoded once, not once per server (``wire.Encoder``).
    """

    reduce: Reduce
    source: Source
    template: Node

    @property
    def map(self) -> Node:
        """The map bound to this source's fragment (for messages; encoding uses the template)."""
        return bind(self.template, self.source.fragments)


@dataclass
class Request:
    """All tasks of one round that travel together to one server."""

    link: Link
    tasks: list[Task] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    """What ``compute`` will do: reduces grouped into rounds, and the client graph."""

    outputs: tuple[Node, ...]
    rounds: tuple[tuple[Reduce, ...], ...]
    client: tuple[Node, ...]  # every client-side node, children first
    flags: OptFlags


def make_plan(outputs: Sequence[Node], flags: OptFlags = OptFlags()) -> Plan:
    """Deduplicate the graph below ``outputs`` and split its reduces into rounds."""
    identity = flags.identity()
    unique: dict[Hashable, Node] = {}
    for node in walk(outputs):
        unique.setdefault(identity(node), node)
    depth: dict[Hashable, int] = {}
    for ident, node in unique.items():  # children come first in walk order
        below = max((depth[identity(c)] for c in node.children), default=0)
        depth[ident] = below + 1 if isinstance(node, Reduce) else below
    reduces = [n for n in unique.values() if isinstance(n, Reduce)]
    rounds = tuple(
        tuple(r for r in reduces if depth[identity(r)] == level)
        for level in range(1, max((depth[identity(r)] for r in reduces), default=0) + 1)
    )
    client = tuple(n for n in unique.values() if isinstance(n, CLIENT_NODES))
    return Plan(tuple(outputs), rounds, client, flags)


def bind(expr: Node, fragment: "str | Sequence[str] | None", values: Callable[[Node], Any] | None = None) -> Node:
    """The map expression for one source: name its fragment(s), put client values in as literals.

    ``fragment`` is a name, or a paired source's names by slot: ``Fragment()``
    reads slot 0 and ``Table(i)`` slot ``i`` (``fedmed.expr.tables``).
    Without ``values`` (when explaining before anything ran) ``Param`` nodes stay;
    without ``fragment`` the fragments stay unnamed.
    """
    names = (fragment,) if isinstance(fragment, str) else tuple(fragment) if fragment is not None else None

    def replace(node: Node) -> Node | None:
        if isinstance(node, Fragment) and node.name is None and names is not None:
            return Fragment(names[0])
        if isinstance(node, Table) and names is not None:
            if not 0 <= node.slot < len(names):
                raise DataError(f"table slot {node.slot} of a source with {len(names)} fragment(s)")
            return Fragment(names[node.slot])
        if isinstance(node, Param) and values is not None:
            return Literal(_literal(values(node.value)))
        return None

    return rewrite(expr, replace, stop=lambda n: isinstance(n, Param))


def plan_requests(
    reduces: Iterable[Reduce], flags: OptFlags, values: Callable[[Node], Any] | None = None
) -> list[Request]:
    """The requests of one round: one per server when batching, else one per task."""
    requests: dict[Hashable, Request] = {}
    out: list[Request] = []
    for reduce in reduces:
        template = bind(reduce.map, None, values)
        for source in reduce.sources:
            task = Task(reduce, source, template)
            if not flags.batch:
                out.append(Request(source.link(), [task]))
                continue
            if source.link_key not in requests:
                requests[source.link_key] = Request(source.link())
                out.append(requests[source.link_key])
            requests[source.link_key].tasks.append(task)
    return out


def _literal(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_literal(v) for v in value]
    raise DataError(
        f"a {type(value).__name__} computed on the client cannot be sent to a server as a constant; "
        "use a single number, string or list (a statistic of several rounds, such as quantile or median, "
        "needs a single column: data['age'], not the whole table)"
    )
