"""Section 3: server work for ``describe`` against numpy computing the same five numbers.

The server answers one request through ``Server.handle`` with the msgpack
body a client would send (decode, checks, evaluation, policies, encode: no
HTTP). numpy computes count, mean, std, min and max of the same float64
array in the same process. Both are timed as the median of several calls.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import fedmed as fm
from fedmed import wire
from fedmed.expr.optimize import OptFlags, make_plan, plan_requests

from .report import Section, Table, div, ms, ratio
from .support import median, timed


def describe_body(server: fm.Server, fragment: str) -> bytes:
    """The exact request body the optimised client sends for ``fm.stats.describe`` of ``fragment``."""
    result = fm.stats.describe(fm.FedData([fm.Simulation(server, fragment)]))
    plan = make_plan([result.node])
    (request,) = plan_requests(plan.rounds[0], OptFlags())
    return wire.pack(wire.encode_table([task.map for task in request.tasks]).request())


def numpy_describe(values: np.ndarray) -> list[float]:
    present = values[~np.isnan(values)]
    return [present.size, present.mean(), present.std(ddof=1), present.min(), present.max()]


def run(settings: Any) -> Section:
    rows, data = [], {}
    for size in settings.throughput_rows:
        values = np.random.default_rng(settings.seed).normal(50.0, 10.0, size)
        server = fm.Server()
        server["big"] = values
        body = describe_body(server, "big")
        status, answer = server.handle(body)  # warm-up, and the answer's size
        assert status == 200, wire.unpack(answer)
        numpy_describe(values)
        served, computed = [], []
        for _ in range(settings.throughput_repeats):  # alternate, so both see the same machine
            served.append(timed(lambda: server.handle(body))[0])
            computed.append(timed(lambda: numpy_describe(values))[0])
        server_s, numpy_s = median(served), median(computed)
        data[str(size)] = {"server_s": server_s, "numpy_s": numpy_s, "ratio": div(server_s, numpy_s),
                           "server_runs": served, "numpy_runs": computed,
                           "request_bytes": len(body), "response_bytes": len(answer)}
        rows.append([f"{size:,}", ms(server_s), ms(numpy_s), ratio(div(server_s, numpy_s)), len(body), len(answer)])
        del server, values
    table = Table(
        f"describe on one float64 column, ms (median of {settings.throughput_repeats})",
        ["rows", "server.handle", "numpy (5 numbers)", "server / numpy", "request bytes", "response bytes"],
        rows,
    )
    notes = ["The server's describe is three map tasks in one request: moments (n, mean, M2), min and max, "
             "each over the non-missing values."]
    return Section("throughput", "3. Server throughput", __doc__.split("\n\n", 1)[1].replace("\n", " ").strip(),
                   [table], notes, data)
