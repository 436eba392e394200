"""Server-side nodes: expressions over the private rows of one fragment.

These are the only nodes that travel on the wire. A ``Map`` node is an
aggregate's server half; everything below it is row-level and never leaves
the server. ``Param`` is the one bridge back to the client: a value the
client computes in an earlier round, replaced by a ``Literal`` before the
request is sent. Tables a server derives from several fragments (merge,
concat, named aggregation) are in ``fedmed.expr.tables``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .node import Node
from .tables import Concat, GroupAgg, Merge, Project, Sort

#: Elementwise operations written with Python operators, and how to print them.
INFIX = {
    "add": "+", "sub": "-", "mul": "*", "truediv": "/", "floordiv": "//", "mod": "%",
    "pow": "**", "eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=",
    "and": "&", "or": "|",
}
PREFIX = {"neg": "-", "invert": "~"}


@dataclass(frozen=True, eq=False)
class Fragment(Node):
    """The rows of a fragment; ``name`` is bound per source when a plan is made."""

    name: str | None = None
    kind: ClassVar[str] = "fragment"

    def describe(self, refs: list[str]) -> str:
        return "fragment" if self.name is None else f"fragment({self.name!r})"

    def code(self, args: list[str]) -> str:
        return "data"


@dataclass(frozen=True, eq=False)
class Column(Node):
    """Select a column (or a key of a nested dict) by name."""

    arg: Node
    name: str
    kind: ClassVar[str] = "column"

    def describe(self, refs: list[str]) -> str:
        return f"{refs[0]}[{self.name!r}]"

    code = describe


@dataclass(frozen=True, eq=False)
class Literal(Node):
    """A constant: a number, string, bool, None, or a list of those."""

    value: Any
    kind: ClassVar[str] = "literal"

    def describe(self, refs: list[str]) -> str:
        return repr(self.value)

    code = describe


@dataclass(frozen=True, eq=False)
class Elementwise(Node):
    """A row-by-row operation named in the config's ``methods`` (``add``, ``log``, ``isin``...)."""

    op: str
    args: tuple[Node, ...]
    kind: ClassVar[str] = "elementwise"

    def describe(self, refs: list[str]) -> str:
        if self.op in INFIX and len(refs) == 2:
            return f"{refs[0]} {INFIX[self.op]} {refs[1]}"
        if self.op in PREFIX and len(refs) == 1:
            return f"{PREFIX[self.op]}{refs[0]}"
        return f"{self.op}({', '.join(refs)})"

    def code(self, args: list[str]) -> str:
        if self.op in INFIX and len(args) == 2:
            return f"({args[0]} {INFIX[self.op]} {args[1]})"
        if self.op in PREFIX and len(args) == 1:
            return f"{PREFIX[self.op]}{args[0]}"
        return f"{args[0]}.{self.op}({', '.join(args[1:])})" if args else f"{self.op}()"


@dataclass(frozen=True, eq=False)
class Filter(Node):
    """Keep the rows of ``arg`` where the boolean ``mask`` holds."""

    arg: Node
    mask: Node
    kind: ClassVar[str] = "filter"

    def describe(self, refs: list[str]) -> str:
        return f"{refs[0]}[{refs[1]}]"

    code = describe


@dataclass(frozen=True, eq=False)
class Map(Node):
    """The server half of an aggregate: one value per fragment, sent to the client."""

    op: str
    args: tuple[Node, ...]
    kind: ClassVar[str] = "map"

    def describe(self, refs: list[str]) -> str:
        return f"{self.op}({', '.join(refs)})"

    def code(self, args: list[str]) -> str:
        return f"{args[0]}.{self.op}({', '.join(args[1:])})" if args else f"{self.op}()"


@dataclass(frozen=True, eq=False)
class Param(Node):
    """A value computed on the client in an earlier round, used inside a server expression."""

    value: Node
    kind: ClassVar[str] = "param"

    def describe(self, refs: list[str]) -> str:
        return f"param({refs[0]})" if refs else "param"

    def code(self, args: list[str]) -> str:
        return args[0] if args else "<client value>"


#: Node kinds a server accepts on the wire, by name.
WIRE_NODES: dict[str, type[Node]] = {
    cls.kind: cls for cls in (Fragment, Column, Literal, Elementwise, Filter, Map, Merge, Concat, GroupAgg, Sort, Project)
}
