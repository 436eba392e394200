"""Client-side nodes: the reduce graph, evaluated on the analyst's machine.

A ``Reduce`` pools the map results of every source of a ``FedData``; the
other nodes combine reduced values with ordinary Python (arithmetic, item
access, functions such as a t-test's formula). Nothing here travels on the
wire.
"""

from __future__ import annotations

import operator

import numpy as np
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from ..ops.columns import apply_columns
from .node import Node
from .rowwise import INFIX, PREFIX, Map

#: Python operators a client value supports, by the name used in nodes.
OPERATORS: dict[str, Callable[..., Any]] = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul,
    "truediv": operator.truediv, "floordiv": operator.floordiv, "mod": operator.mod,
    "pow": operator.pow, "eq": operator.eq, "ne": operator.ne, "lt": operator.lt,
    "le": operator.le, "gt": operator.gt, "ge": operator.ge, "and": operator.and_,
    "or": operator.or_, "neg": operator.neg, "invert": operator.invert, "abs": operator.abs,
    "getitem": operator.getitem, "getattr": getattr,
    "call": lambda fn, args, kwargs: fn(*args, **kwargs),  # a method of a value: r0.sort_index()
}


@dataclass(frozen=True, eq=False)
class Reduce(Node):
    """Pool the results of ``map`` over ``sources`` with the aggregate's reduce ``fn``."""

    map: Node
    sources: tuple[Any, ...]
    fn: Callable[[list[Any]], Any]
    kind: ClassVar[str] = "reduce"

    @property
    def op(self) -> str:
        assert isinstance(self.map, Map)
        return self.map.op

    def describe(self, refs: list[str]) -> str:
        return f"{self.op}.reduce({refs[0]}) over {len(self.sources)} sources"

    def code(self, args: list[str]) -> str:
        return args[0]


@dataclass(frozen=True, eq=False)
class Scalar(Node):
    """A constant on the client side."""

    value: Any
    kind: ClassVar[str] = "scalar"

    def describe(self, refs: list[str]) -> str:
        return repr(self.value)

    code = describe


@dataclass(frozen=True, eq=False)
class Apply(Node):
    """A Python operator applied to client values (``r0 / r1``, ``r0["mean"]``)."""

    op: str
    args: tuple[Node, ...]
    kind: ClassVar[str] = "apply"

    def describe(self, refs: list[str]) -> str:
        if self.op in INFIX and len(refs) == 2:
            return f"{refs[0]} {INFIX[self.op]} {refs[1]}"
        if self.op in PREFIX:
            return f"{PREFIX[self.op]}{refs[0]}"
        if self.op == "getitem":
            return f"{refs[0]}[{refs[1]}]"
        if self.op == "getattr":
            return f"{refs[0]}.{refs[1].strip(chr(39))}"
        if self.op == "call":
            return f"{refs[0]}(*{refs[1]}, **{refs[2]})"
        return f"{self.op}({', '.join(refs)})"

    def code(self, args: list[str]) -> str:
        text = self.describe(args)
        return f"({text})" if self.op in INFIX else text

    def evaluate(self, *values: Any) -> Any:
        try:
            return OPERATORS[self.op](*values)
        except ZeroDivisionError:
            # numbers follow numpy and pandas: the mean of no rows is nan, not an exception
            with np.errstate(all="ignore"):
                return OPERATORS[self.op](np.float64(values[0]), *values[1:]).item()


@dataclass(frozen=True, eq=False)
class Call(Node):
    """A client-side function of reduced values (the formula of a statistic).

    ``fn`` must be a module-level function: its qualified name is part of the
    node's key, so two calls of the same function on equal inputs merge.
    """

    fn: Callable[..., Any]
    args: tuple[Node, ...]
    kind: ClassVar[str] = "call"

    def describe(self, refs: list[str]) -> str:
        return f"{self.fn.__name__}({', '.join(refs)})"

    code = describe

    def evaluate(self, *values: Any) -> Any:
        return apply_columns(self.fn, values)


#: Node kinds evaluated on the client.
CLIENT_NODES = (Reduce, Scalar, Apply, Call)
