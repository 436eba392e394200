"""Section 4: client overhead of big expressions: build, optimise, explain, encode.

Three shapes, each at two sizes (nodes counted exactly, before merging):
a chain of alternating ``+ 1`` and ``* 2`` on one column, then ``.sum()``;
a balanced tree of ``+`` over leaves ``x * i`` on the server, then ``.sum()``;
a balanced tree of ``+`` on the client over many sums ``(x + i).sum()``.
Each repeat builds the expression afresh and times, in order: building it,
``make_plan`` (which computes the content keys), ``explain()``, and encoding
the round-1 requests as the client sends them (``plan_requests``, node table,
msgpack). Three sources on three (never contacted) servers.
"""

from __future__ import annotations

from typing import Any, Callable

import fedmed as fm
from fedmed import wire
from fedmed.expr.node import walk
from fedmed.expr.optimize import make_plan, plan_requests

from .report import Section, Table, div, ratio
from .support import median, timed


def _balanced(items: list[Any]) -> Any:
    while len(items) > 1:
        items = [items[i] + items[i + 1] if i + 1 < len(items) else items[i] for i in range(0, len(items), 2)]
    return items[0]


def chain(data: fm.FedData, nodes: int) -> fm.LazyResult:
    e = data["x"]
    for i in range((nodes - 4) // 2):  # each step: one elementwise node and one literal
        e = e + 1 if i % 2 == 0 else e * 2
    return e.sum()


def server_tree(data: fm.FedData, nodes: int) -> fm.LazyResult:
    x = data["x"]
    return _balanced([x * i for i in range((nodes - 3) // 3)]).sum()  # per leaf 2 nodes, per join 1


def client_tree(data: fm.FedData, nodes: int) -> fm.LazyResult:
    x = data["x"]
    return _balanced([(x + i).sum() for i in range(nodes // 5)])  # per leaf 4 nodes, per join 1


SHAPES: dict[str, tuple[str, Callable[[fm.FedData, int], fm.LazyResult]]] = {
    "chain": ("chain of + 1 / * 2", chain),
    "server_tree": ("balanced tree of + (server side)", server_tree),
    "client_tree": ("balanced tree of sums (client side)", client_tree),
}
STEPS = ("build", "plan", "explain", "encode")


def encode(result: fm.LazyResult) -> int:
    """Bytes of the round-1 requests, built exactly as the executor builds them."""
    plan = make_plan([result.node], result._flags)
    encoder = wire.Encoder(dedupe=result._flags.dedupe)
    return sum(
        len(wire.pack(encoder.encode(request.tasks).request()))
        for request in plan_requests(plan.rounds[0], result._flags)
    )


def measure(shape: str, nodes: int, repeats: int) -> dict[str, Any]:
    data = fm.FedData([fm.Remote(ip=f"http://127.0.0.1:{port}", fragment="cohort") for port in (9, 10, 11)])
    build = SHAPES[shape][1]
    times: dict[str, list[float]] = {step: [] for step in STEPS}
    for _ in range(repeats):
        seconds, result = timed(lambda: build(data, nodes))
        times["build"].append(seconds)
        times["plan"].append(timed(lambda: make_plan([result.node], result._flags))[0])
        times["explain"].append(timed(result.explain)[0])
        seconds, sent = timed(lambda: encode(result))
        times["encode"].append(seconds)
    unique = {n.key for n in walk([result.node])}
    return {
        "nodes": sum(1 for _ in walk([result.node])),
        "unique_nodes": len(unique),
        "request_bytes": sent,
        **{f"{step}_ms": 1000 * median(times[step]) for step in STEPS},
        "runs_ms": {step: [1000 * t for t in times[step]] for step in STEPS},
    }


def run(settings: Any) -> Section:
    small, large = settings.overhead_nodes
    data, rows = {}, []
    for shape, (label, _) in SHAPES.items():
        data[shape] = {str(size): measure(shape, size, settings.overhead_repeats) for size in (small, large)}
        a, b = data[shape][str(small)], data[shape][str(large)]
        for step in STEPS:
            rows.append([label, step, f"{a[step + '_ms']:.1f}", f"{b[step + '_ms']:.1f}",
                         ratio(div(b[step + "_ms"], a[step + "_ms"]))])
        data[shape]["ratios"] = {step: div(b[step + "_ms"], a[step + "_ms"]) for step in STEPS}
    table = Table(
        f"Client overhead, ms (median of {settings.overhead_repeats}); near-linear is a ratio near {large // small}",
        ["expression", "step", f"~{small:,} nodes", f"~{large:,} nodes", f"ratio {large:,} / {small:,}"],
        rows,
    )
    notes = [
        "Exact node counts (walked / unique after merging equal subtrees) and request bytes: "
        + "; ".join(
            f"{SHAPES[s][0]}: " + ", ".join(
                f"{d['nodes']:,} / {d['unique_nodes']:,} nodes, {d['request_bytes']:,} B" for k, d in data[s].items()
                if k != "ratios")
            for s in SHAPES
        ) + ".",
    ]
    return Section("overhead", "4. Client overhead", __doc__.split("\n\n", 1)[1].replace("\n", " ").strip(),
                   [table], notes, {"nodes": [small, large], "repeats": settings.overhead_repeats, "shapes": data})
