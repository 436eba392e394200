"""The expression node: immutable, keyed by content, walked without recursion.

Every node is a frozen dataclass. Fields annotated ``Node`` or
``tuple[Node, ...]`` are children; every other field is a parameter (a
string, number, bool, None, or a tuple of those). A node's ``key`` is a
blake2b digest of its class, its parameters and its children's keys: two
separately built but equal expressions get the same key in this process, on
the wire and on any server, so the optimizer merges them and the key names
them everywhere (plans, requests, results). Python's ``hash()`` is salted per
process and is never used for identity.

Walking and key computation are iterative, so expressions of tens of
thousands of nodes need no recursion limit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from functools import cached_property
from typing import Any, Callable, ClassVar, Iterable, Iterator

import msgpack
import numpy as np

_CHILD = "Node"
_CHILDREN = "tuple[Node, ...]"


class Node:
    """Base class of every expression node (subclasses are frozen dataclasses)."""

    #: Name of the node kind in plans and on the wire.
    kind: ClassVar[str] = "node"

    # -- structure -------------------------------------------------------
    @classmethod
    def child_fields(cls) -> tuple[dataclasses.Field, ...]:
        return _field_split(cls)[0]

    @classmethod
    def param_fields(cls) -> tuple[dataclasses.Field, ...]:
        return _field_split(cls)[1]

    @property
    def children(self) -> tuple["Node", ...]:
        out: list[Node] = []
        for f in self.child_fields():
            value = getattr(self, f.name)
            out.extend(value if isinstance(value, tuple) else (value,))
        return tuple(out)

    @property
    def params(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in self.param_fields())

    def replace_children(self, children: Iterable["Node"]) -> "Node":
        """A copy of this node with new children, in ``children`` order."""
        it = iter(children)
        changes = {}
        for f in self.child_fields():
            old = getattr(self, f.name)
            changes[f.name] = tuple(next(it) for _ in old) if isinstance(old, tuple) else next(it)
        return dataclasses.replace(self, **changes)

    # -- identity --------------------------------------------------------
    @cached_property
    def key(self) -> str:
        """Content hash of this node and everything below it (hex, 20 chars)."""
        # children first, so no recursion; subtrees already keyed are not re-entered
        for node in walk([self], stop=lambda n: "key" in n.__dict__):
            if "key" not in node.__dict__:
                node.__dict__["key"] = _digest(node)
        return self.__dict__["key"]

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return type(other) is type(self) and other.key == self.key  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key[:8]}>"

    # -- rendering -------------------------------------------------------
    def describe(self, refs: list[str]) -> str:
        """One line for ``explain()``: this node with its children named by ``refs``."""
        args = refs + [repr(p) for p in self.params]
        return f"{self.kind}({', '.join(args)})"

    def code(self, args: list[str]) -> str:
        """This node as user code, with children already written as ``args``."""
        return self.describe(args)


def _field_split(cls: type) -> tuple[tuple[dataclasses.Field, ...], tuple[dataclasses.Field, ...]]:
    cached = cls.__dict__.get("_fields_split")
    if cached is None:
        fields = dataclasses.fields(cls)
        children = tuple(f for f in fields if f.type in (_CHILD, _CHILDREN))
        params = tuple(f for f in fields if f.type not in (_CHILD, _CHILDREN))
        cached = (children, params)
        setattr(cls, "_fields_split", cached)
    return cached


def canonical(value: Any) -> Any:
    """A parameter as plain msgpack data, for hashing and for the wire."""
    if isinstance(value, (tuple, list)):
        return [canonical(v) for v in value]
    uid = getattr(value, "uid", None)  # sources name themselves
    if isinstance(uid, str):
        return ["source", uid]
    if callable(value):
        return ["fn", f"{value.__module__}.{value.__qualname__}"]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str, bytes, dict)):
        return value
    # any other client-side constant (a computed DataFrame...): identity only, never merged
    return ["object", type(value).__qualname__, id(value)]


def _digest(node: Node) -> str:
    payload = [
        type(node).__name__,
        canonical(list(node.params)),
        [child.key for child in node.children],
    ]
    data = msgpack.packb(payload, use_bin_type=True)
    return hashlib.blake2b(data, digest_size=10).hexdigest()


def walk(roots: Iterable[Node], stop: Callable[[Node], bool] | None = None) -> Iterator[Node]:
    """Yield every node below ``roots`` once, children before parents.

    Nodes are told apart by object identity here (keys may not exist yet);
    deduplicate by ``key`` afterwards to merge equal subtrees. ``stop(node)``
    true means: yield the node but do not descend into it.
    """
    seen: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False) for root in reversed(list(roots))]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            yield node
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        if stop is None or not stop(node):
            stack.extend((child, False) for child in reversed(node.children) if id(child) not in seen)


def rewrite(root: Node, fn: Callable[[Node], Node | None], stop: Callable[[Node], bool] | None = None) -> Node:
    """Rebuild ``root`` bottom-up, replacing each node for which ``fn`` returns a node.

    ``fn`` sees the node with its children already rewritten.
    """
    done: dict[int, Node] = {}
    for node in walk([root], stop):
        kids = node.children if stop is not None and stop(node) else tuple(done[id(c)] for c in node.children)
        rebuilt = node if all(a is b for a, b in zip(kids, node.children)) else node.replace_children(kids)
        replaced = fn(rebuilt)
        done[id(node)] = rebuilt if replaced is None else replaced
    return done[id(root)]


#: Longest rendering of any subexpression: a DAG that reuses a node at every level
#: (x = x + x, 30 times) would otherwise render to gigabytes.
MAX_CODE = 400


def render_code(root: Node, stop: Callable[[Node], bool] | None = None, literals: bool = True) -> str:
    """The expression below ``root`` as readable user code (``data["age"].sum()``).

    Long subexpressions are cut (``…``); with ``literals=False`` constants
    show as ``?`` (for logs and the status page: a constant may be a result
    computed from data in an earlier round).
    """
    text: dict[int, str] = {}
    for node in walk([root], stop):
        if not literals and node.kind == "literal":
            text[id(node)] = "?"
            continue
        args = [] if stop is not None and stop(node) else [text[id(c)] for c in node.children]
        code = node.code(args)
        text[id(node)] = code if len(code) <= MAX_CODE else code[: MAX_CODE - 1] + "…"
    return text[id(root)]


#: Longest text ``render_full`` writes: a request of 4 MB can hold constants of about this size.
MAX_FULL_CODE = 8_000_000

#: Stands for child ``i`` while a node's own text is taken apart; ``repr`` of any parameter
#: escapes NUL, so no parameter can forge one.
_SLOT = re.compile("\x00([0-9]+)\x00")


def render_full(root: Node, limit: int = MAX_FULL_CODE) -> str | None:
    """The expression below ``root`` as user code, never cut; None when longer than ``limit`` characters.

    ``render_code`` shortens every subexpression for display; matching a
    pattern against that text would judge a task by a part of it. A DAG
    renders each use of a shared node in full, so its text can be
    exponentially longer than the DAG (``x = x + x``, 30 times): lengths are
    added up first, once per distinct node, and nothing is written when the
    total exceeds ``limit``. The text is then written in one pass, so the
    work is linear in the nodes plus the text's length. None also answers a
    node whose text cannot be taken apart reliably.

    >>> from fedmed.expr.rowwise import Column, Elementwise, Fragment, Literal
    >>> render_full(Elementwise("isin", (Column(Fragment(), "id"), Literal(list(range(3))))))
    "data['id'].isin([0, 1, 2])"
    """
    pieces: dict[int, tuple[list[str], list[Node]]] = {}
    length: dict[int, int] = {}
    for node in walk([root]):
        kids = node.children
        parts = _SLOT.split(node.code(["\x00%d\x00" % i for i in range(len(kids))]))
        texts, slots = parts[0::2], [int(i) for i in parts[1::2]]
        if any("\x00" in t for t in texts) or any(i >= len(kids) for i in slots):
            return None
        order = [kids[i] for i in slots]
        total = sum(map(len, texts)) + sum(length[id(k)] for k in order)
        if total > limit:
            return None
        pieces[id(node)], length[id(node)] = (texts, order), total
    out: list[str] = []
    stack: list[Node | str] = [root]
    budget = 4 * limit + 4  # visits, empty pieces included: every node writes some text of its own
    while stack:
        item = stack.pop()
        budget -= 1
        if budget < 0:
            return None
        if isinstance(item, str):
            out.append(item)
            continue
        texts, order = pieces[id(item)]
        stack.append(texts[-1])
        for text, kid in zip(reversed(texts[:-1]), reversed(order)):
            stack.append(kid)
            stack.append(text)
    return "".join(out)
