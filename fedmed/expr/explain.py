"""``explain()``: the plan as text, one name per value, read top-down.

Map-side values are named ``m0, m1, ...`` and client values ``r0, r1, ...``
(A-normal form: every shared node is named and written once). Each round
lists its map expressions once, with the fragment left generic, then which
server receives which of them in which request; the client section is the
reduce graph.
"""

from __future__ import annotations

import html
from typing import Hashable, Sequence

from .client import Reduce
from .node import Node, walk
from .optimize import OptFlags, make_plan, plan_requests
from .rowwise import Param


class PlanText(str):
    """The text of a plan; notebooks show it preformatted."""

    def _repr_html_(self) -> str:
        return f"<pre style='font-size:12.5px;line-height:1.35'>{html.escape(self)}</pre>"


def explain_plan(outputs: Sequence[Node], flags: OptFlags = OptFlags()) -> PlanText:
    """Render the plan that ``compute(*outputs)`` would run."""
    plan = make_plan(outputs, flags)
    identity = flags.identity()
    client_names: dict[Hashable, str] = {}
    for node in plan.client:
        client_names.setdefault(identity(node), f"r{len(client_names)}")
    map_names: dict[Hashable, str] = {}
    requests_per_round = [plan_requests(reduces, flags) for reduces in plan.rounds]
    servers = {task.source.link_key for requests in requests_per_round for r in requests for task in r.tasks}
    lines = [
        f"FedPlan · {_n(len(outputs), 'output')} · {_n(len(servers), 'server')} · "
        f"{_n(len(plan.rounds), 'round')} · {_n(sum(map(len, requests_per_round)), 'request')}",
        f"passes: {', '.join(flags.passes)}",
    ]
    for number, (reduces, requests) in enumerate(zip(plan.rounds, requests_per_round), start=1):
        lines.append(f"round {number} · {_n(len(requests), 'request')}")
        for node in walk([r.map for r in reduces], stop=lambda n: isinstance(n, Param)):
            ident = identity(node)
            if ident in map_names:
                continue
            map_names[ident] = name = f"m{len(map_names)}"
            refs = (
                [client_names[identity(node.value)]] if isinstance(node, Param)
                else [map_names[identity(c)] for c in node.children]
            )
            lines.append(f"  {name} := {node.describe(refs)}")
        for request in requests:
            fragments = ", ".join(repr(f) for f in dict.fromkeys(t.source.fragment for t in request.tasks))
            sent = ", ".join(dict.fromkeys(map_names[identity(t.reduce.map)] for t in request.tasks))
            lines.append(f"  {request.link.name} [{fragments}]: send {sent}")
    lines.append("client")
    for node in plan.client:
        refs = (
            [map_names[identity(node.map)]] if isinstance(node, Reduce)
            else [client_names[identity(c)] for c in node.children]
        )
        lines.append(f"  {client_names[identity(node)]} := {node.describe(refs)}")
    lines.append(f"  return {', '.join(client_names[identity(o)] for o in outputs)}")
    return PlanText("\n".join(lines))


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"
