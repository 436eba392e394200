"""How a statistic is built: aggregates of its inputs, then one client-side formula.

``aggregate(x, "moments")`` asks for a map task (checked against the
client's config, with a message saying which statistic needed it);
``call(fn, ...)`` applies a module-level formula to lazy inputs. Because the
formula is a ``Call`` node and the aggregates are ordinary reduces, any mix
of statistics computed together shares map tasks and needs one request per
server per round.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import ArgumentError, FedMedError
from ..expr.client import Call, Scalar
from ..lazy import FedData, LazyResult


def columns(needed_by: str, *xs: Any) -> None:
    """Raise ``ArgumentError`` unless every ``x`` is a FedData (a list would broadcast as a constant)."""
    for x in xs:
        if not isinstance(x, FedData):
            raise ArgumentError(f"{needed_by} takes FedData columns (data['x']), not {type(x).__name__}")


def aggregate(x: FedData, name: str, *args: Any, needed_by: str) -> LazyResult:
    """The aggregate ``name`` of ``x``, or an error naming the statistic that needs it."""
    columns(needed_by, x)
    if name not in x.config.aggregates:
        raise FedMedError(f"{needed_by} needs the aggregate {name!r}, which the config {x.config.origin} does not offer")
    return x._aggregate(name, args)


def call(fn: Callable[..., Any], *inputs: Any) -> LazyResult:
    """``fn`` applied on the client to lazy results (plain values become constants)."""
    flags = next(i._flags for i in inputs if isinstance(i, LazyResult))
    nodes = tuple(i.node if isinstance(i, LazyResult) else Scalar(i) for i in inputs)
    return LazyResult(Call(fn, nodes), flags)
