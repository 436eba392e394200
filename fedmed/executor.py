"""The one executor: runs a plan round by round over any mix of backends.

Per round it builds the requests (``plan_requests``), sends them to all
servers at once from a bounded thread pool, pools each reduce's partial
results, and moves on; the client graph is evaluated at the end. Backends
only move bytes, so Local, Simulation and Remote behave the same.
"""

from __future__ import annotations

import atexit
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Hashable, Sequence

from . import wire
from .errors import ERROR_TYPES, FedMedError, ServerError
from .expr.client import Apply, Call, Reduce, Scalar
from .expr.node import Node, walk
from .expr.optimize import OptFlags, Request, make_plan, plan_requests
from .ops.columns import reduce_columns

#: Bounded fan-out: enough for hundreds of servers without a thread each.
MAX_PARALLEL_REQUESTS = 32

_pool: ThreadPoolExecutor | None = None


def _fan_out() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=MAX_PARALLEL_REQUESTS, thread_name_prefix="fedmed")
        atexit.register(_pool.shutdown, wait=False)
    return _pool


def execute(outputs: Sequence[Node], flags: OptFlags = OptFlags()) -> list[Any]:
    """Compute the values of ``outputs`` (client nodes) in as few rounds as their dependencies allow."""
    plan = make_plan(outputs, flags)
    identity = flags.identity()
    values: dict[Hashable, Any] = {}
    for reduces in plan.rounds:
        requests = plan_requests(reduces, flags, lambda node: _client_value(node, values, identity))
        partials = _send_all(requests, flags)
        for reduce in reduces:
            parts = [partials[(id(reduce), source.token)] for source in reduce.sources]
            values[identity(reduce)] = _reduce(reduce, parts)
    return [_client_value(node, values, identity) for node in outputs]


def _send_all(requests: list[Request], flags: OptFlags) -> dict[tuple[int, str], Any]:
    """Send every request of a round at once; the partial result of each (reduce, source)."""
    if len(requests) == 1:
        responses = [_send(requests[0], flags)]
    else:
        responses = list(_fan_out().map(lambda request: _send(request, flags), requests))
    partials: dict[tuple[int, str], Any] = {}
    for request, results in zip(requests, responses):
        for task, result in zip(request.tasks, results):
            partials[(id(task.reduce), task.source.token)] = result
    return partials


def _send(request: Request, flags: OptFlags) -> list[Any]:
    """One request: a node table of the tasks' maps; the value of each task, or its error raised."""
    table = wire.encode_table([task.map for task in request.tasks], dedupe=flags.dedupe)
    response = request.link.send(table.request())
    results = response["results"]
    if len(results) != len(request.tasks):
        raise ServerError(
            f"the server sent {len(results)} results for {len(request.tasks)} tasks", server=request.link.name
        )
    values = []
    for task, result in zip(request.tasks, results):
        if not isinstance(result, dict) or ("value" not in result and "error" not in result):
            raise ServerError("the server sent a malformed result", server=request.link.name)
        if "error" in result:
            raise _task_error(result["error"], request.link.name, task)
        values.append(result["value"])
    return values


def _task_error(error: Any, server: str, task: Any) -> ServerError:
    error = error if isinstance(error, dict) else {"message": str(error)}
    cls = ERROR_TYPES.get(error.get("type"), ServerError)
    return cls(
        str(error.get("message", "unknown error")),
        server=server,
        fragment=error.get("fragment") or task.source.fragment,
        operation=error.get("operation"),
    )


def _reduce(reduce: Reduce, parts: list[Any]) -> Any:
    try:
        return reduce_columns(reduce.fn, parts)
    except Exception as exc:
        raise FedMedError(f"reduce of {reduce.op!r} failed on the client: {type(exc).__name__}: {exc}") from exc


def _client_value(root: Node, values: dict[Hashable, Any], identity: Any) -> Any:
    """Evaluate the client graph below ``root``; reduces must already be in ``values``."""
    for node in walk([root], stop=lambda n: isinstance(n, Reduce)):
        ident = identity(node)
        if ident in values:
            continue
        if isinstance(node, Scalar):
            values[ident] = node.value
        elif isinstance(node, (Apply, Call)):
            values[ident] = node.evaluate(*(values[identity(c)] for c in node.children))
        else:
            raise FedMedError(f"cannot evaluate a {node.kind} node on the client")
    return values[identity(root)]
