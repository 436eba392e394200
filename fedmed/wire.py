"""The wire protocol: msgpack requests of node tables, msgpack responses of map results.

A request is ``{"protocol": 1, "nodes": [...], "outputs": [...]}``. Each
entry of ``nodes`` is ``[kind, params, children]``: the node kind (one of
``fedmed.expr.rowwise.WIRE_NODES``), its parameters in field order, and the
indices of its children, all smaller than its own index (so the table is in
topological order and acyclic by construction). ``outputs`` lists the indices
of the ``map`` nodes whose results are wanted. A response is
``{"protocol": 1, "results": [...], "versions": {fragment: version}}`` with
one ``{"value": v}`` or ``{"error": {...}}`` per output. The full
specification, for third-party servers, is ``docs/protocol.md``.

Nothing here pickles, evaluates or imports: a server turns a table back into
nodes of the few kinds it knows, and checks every field on the way.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Sequence

import msgpack
import numpy as np
import pandas as pd

from .errors import BadRequest, ProtocolError
from .expr.node import Node, canonical, walk
from .expr.rowwise import WIRE_NODES

PROTOCOL = 1
ENDPOINT = f"/v{PROTOCOL}/evaluate"
CONTENT_TYPE = "application/msgpack"

#: Bounds a server enforces while decoding (issue-level defaults; see docs/protocol.md).
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_NODES = 20_000
MAX_DEPTH = 32
MAX_CHILDREN = 64


def pack(obj: Any) -> bytes:
    """Encode ``obj`` as msgpack, turning numpy and pandas values into plain ones."""
    return msgpack.packb(obj, default=_plain, use_bin_type=True)


def unpack(data: bytes, *, max_bytes: int = MAX_BODY_BYTES) -> Any:
    """Decode msgpack with size limits (msgpack bounds every length by the message size)."""
    if len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=False, use_list=True, object_hook=_dated
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"not a valid msgpack message ({type(exc).__name__})") from None


#: How a date (``pd.Timestamp``) and a difference of dates (``pd.Timedelta``) travel: ``{"$datetime": iso}``.
DATETIME, TIMEDELTA = "$datetime", "$timedelta"


def _plain(value: Any) -> Any:
    if value is pd.NaT:
        return None
    if isinstance(value, (datetime.date, np.datetime64)):  # before np.generic: .item() of nanoseconds is an int
        return {DATETIME: pd.Timestamp(value).isoformat()}
    if isinstance(value, (datetime.timedelta, np.timedelta64)):
        return {TIMEDELTA: pd.Timedelta(value).isoformat()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, pd.Series):
        return {k: _plain_scalar(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if value is pd.NA or value is pd.NaT:
        return None
    raise TypeError(f"cannot send a {type(value).__name__} over the wire")


def _dated(entry: dict[Any, Any]) -> Any:
    """A decoded map, or the date (or difference of dates) it stands for (``_plain``)."""
    if len(entry) == 1:
        (key, text), = entry.items()
        if key in (DATETIME, TIMEDELTA) and isinstance(text, str):
            try:
                return pd.Timestamp(text) if key == DATETIME else pd.Timedelta(text)
            except (TypeError, ValueError, OverflowError):
                return entry
    return entry


def _plain_scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# -- requests -------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """A node table ready to send: ``outputs[i]`` is the node index of map ``i``."""

    nodes: list[list[Any]]
    outputs: list[int]

    def request(self) -> dict[str, Any]:
        return {"protocol": PROTOCOL, "nodes": self.nodes, "outputs": self.outputs}


def encode_table(maps: Sequence[Node], *, dedupe: bool = True, template: bool = False) -> Table:
    """Flatten bound map nodes into one table; equal subtrees become one entry when ``dedupe``.

    ``template``: the maps are unbound templates, whose ``table`` slots
    (``fedmed.expr.tables.Table``) the ``Encoder`` fills in per request.
    """
    index: dict[Any, int] = {}
    nodes: list[list[Any]] = []
    identity = (lambda n: n.key) if dedupe else id
    for node in walk(maps):
        ident = identity(node)
        if ident in index:
            continue
        if node.kind not in WIRE_NODES and not (template and node.kind == "table"):
            raise ProtocolError(f"a {node.kind} node cannot be sent to a server")
        index[ident] = len(nodes)
        nodes.append([node.kind, canonical(list(node.params)), [index[identity(c)] for c in node.children]])
    return Table(nodes, [index[identity(m)] for m in maps])


class Encoder:
    """Encodes the requests of one round, each distinct set of map templates once.

    The requests of a round usually differ only in their fragments' names:
    the table is built once from the templates (the fragments unnamed) and
    each request gets a copy with its names put in (``fragment`` for slot 0,
    ``table`` slots for a paired source's others). A request whose tasks
    read different fragments of one server is encoded task by task, bound.
    """

    def __init__(self, dedupe: bool = True) -> None:
        self.dedupe = dedupe
        self._tables: dict[tuple[int, ...], tuple[Table, list[int]]] = {}

    def encode(self, tasks: Sequence[Any]) -> Table:
        fragments = {t.source.fragments for t in tasks}
        if len(fragments) != 1:
            return encode_table([t.map for t in tasks], dedupe=self.dedupe)
        key = tuple(id(t.template) for t in tasks)
        if key not in self._tables:
            table = encode_table([t.template for t in tasks], dedupe=self.dedupe, template=True)
            unnamed = [(i, 0 if kind == "fragment" else params[0]) for i, (kind, params, _) in enumerate(table.nodes)
                       if (kind == "fragment" and params == [None]) or kind == "table"]
            self._tables[key] = table, unnamed
        table, unnamed = self._tables[key]
        nodes = list(table.nodes)
        (names,) = fragments
        for i, slot in unnamed:
            if not 0 <= slot < len(names):
                raise ProtocolError(f"table slot {slot} of a source with {len(names)} fragment(s)")
            nodes[i] = ["fragment", [names[slot]], []]
        return Table(nodes, table.outputs)


def decode_table(request: Any, *, max_nodes: int = MAX_NODES) -> tuple[list[Node], list[int]]:
    """Check a decoded request and rebuild its nodes; raises ``BadRequest`` naming the fault."""
    if not isinstance(request, dict):
        raise BadRequest("the request must be a msgpack map")
    version = request.get("protocol")
    if type(version) is not int or version != PROTOCOL:
        raise BadRequest(f"protocol version {repr(version)[:20]} is not supported; this server speaks {PROTOCOL}")
    table, outputs = request.get("nodes"), request.get("outputs")
    if not isinstance(table, list) or not isinstance(outputs, list):
        raise BadRequest("the request needs a 'nodes' list and an 'outputs' list")
    if len(table) > max_nodes:
        raise BadRequest(f"the request has {len(table)} nodes; this server accepts at most {max_nodes}")
    decoded = [_decode_node(entry, i) for i, entry in enumerate(table)]
    nodes, where = _link(decoded)
    return nodes, [where[o] for o in _check_outputs(outputs, table)]


def _decode_node(entry: Any, i: int) -> tuple[type[Node], list[Any], list[int]]:
    if not (isinstance(entry, list) and len(entry) == 3):
        raise BadRequest(f"node {i}: expected [kind, params, children]")
    kind, params, children = entry
    cls = WIRE_NODES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise BadRequest(f"node {i}: unknown node kind {kind!r}")
    if not isinstance(params, list) or len(params) != len(cls.param_fields()):
        raise BadRequest(f"node {i} ({kind}): expected {len(cls.param_fields())} parameter(s)")
    for value in params:
        _check_value(value, f"node {i} ({kind})")
    if not isinstance(children, list) or not all(type(c) is int and 0 <= c < i for c in children):
        raise BadRequest(f"node {i} ({kind}): children must be indices of earlier nodes")
    return cls, params, children


def _link(decoded: list[tuple[type[Node], list[Any], list[int]]]) -> tuple[list[Node], list[int]]:
    """The distinct nodes of the table, children first, and where each entry went.

    Equal entries (equal kind, parameters and children) become one node: a
    table is evaluated once per distinct node, so 16,000 entries that repeat
    a dozen subtrees cost a dozen evaluations, and every count a server
    makes of a request (``ComplexityCap``, the memory price) is of what it
    will evaluate.
    """
    nodes: list[Node] = []
    where: list[int] = []  # entry -> index in nodes
    seen: dict[str, int] = {}
    for i, (cls, params, children) in enumerate(decoded):
        kids = [nodes[where[c]] for c in children]
        try:
            node = _build(cls, params, kids)
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"node {i} ({cls.kind}): {exc}") from None
        if node.key not in seen:
            seen[node.key] = len(nodes)
            nodes.append(node)
        where.append(seen[node.key])
    return nodes, where


def _build(cls: type[Node], params: list[Any], kids: list[Node]) -> Node:
    child_fields = cls.child_fields()
    fixed = [f for f in child_fields if f.type == "Node"]
    variadic = len(child_fields) > len(fixed)
    if len(kids) < len(fixed) or (not variadic and len(kids) != len(fixed)):
        raise ValueError(f"expected {len(fixed)}{'+' if variadic else ''} children, got {len(kids)}")
    if variadic and not kids:
        raise ValueError("an operation needs at least one operand")
    if len(kids) > MAX_CHILDREN:  # a map over 20,000 copies of a column answers in gigabytes
        raise ValueError(f"at most {MAX_CHILDREN} operands")
    for f, value in zip(cls.param_fields(), params):
        if f.name in ("op", "name") and not isinstance(value, str):
            raise ValueError(f"parameter {f.name!r} must be a string")
    args: dict[str, Any] = dict(zip((f.name for f in cls.param_fields()), params))
    it = iter(kids)
    for f in child_fields:
        args[f.name] = next(it) if f.type == "Node" else tuple(it)
    return cls(**args)


def _check_value(value: Any, where: str, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise BadRequest(f"{where}: parameter nested too deeply")
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, list):
        for v in value:
            _check_value(v, where, depth + 1)
        return
    raise BadRequest(f"{where}: parameters must be numbers, strings, bools, None or lists")


def _check_outputs(outputs: list[Any], table: list[Any]) -> list[int]:
    for o in outputs:
        if type(o) is not int or not 0 <= o < len(table) or table[o][0] != "map":
            raise BadRequest(f"output {repr(o)[:20]} is not the index of a map node")
    return outputs


# -- responses ------------------------------------------------------------


def error_body(exc: Exception) -> dict[str, Any]:
    """The wire form of a server-side error (no traceback, no data)."""
    return {
        "type": type(exc).__name__,
        "message": getattr(exc, "message", str(exc)),
        "fragment": getattr(exc, "fragment", None),
        "operation": getattr(exc, "operation", None),
        "policy": getattr(exc, "policy", None),
    }
