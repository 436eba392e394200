"""The optimised plan gives the naive plan's answers, and pandas', in fewer requests."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings, strategies as st

import fedmed as fm

values = st.floats(-1e3, 1e3, allow_nan=False).map(lambda v: round(v, 3))
fragments = st.lists(st.lists(st.one_of(values, st.just(float("nan"))), min_size=0, max_size=8), min_size=1, max_size=5)


def unary(draw_op, x):
    return {"neg": lambda: -x, "abs": lambda: abs(x), "add": lambda: x + 1.5, "mul": lambda: x * 2}[draw_op]()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fragments, st.lists(st.sampled_from(["neg", "abs", "add", "mul"]), max_size=3), st.floats(-500, 500))
def test_optimised_equals_naive_equals_pandas(parts, ops, threshold):
    servers = []
    for i, part in enumerate(parts):
        server = fm.Server()
        server[f"f{i}"] = pd.Series(part, dtype=float)
        servers.append(server)
    sources = [fm.Simulation(s, f"f{i}") for i, s in enumerate(servers)]
    pooled = pd.concat([pd.Series(p, dtype=float) for p in parts], ignore_index=True)
    for op in ops:
        pooled = unary(op, pooled)

    def analysis(data):
        x = data
        for op in ops:
            x = unary(op, x)
        mean = x.sum() / x.count()
        return x.sum(), x.count(), x.len(), x[x > threshold].sum(), ((x - mean) ** 2).sum()

    fast = fm.compute(*analysis(fm.FedData(sources)))
    fast_requests = sum(s.traffic.requests for s in servers)
    slow = fm.compute(*analysis(fm.FedData(sources, optimize=False)))
    slow_requests = sum(s.traffic.requests for s in servers) - fast_requests

    assert all(same(a, b) for a, b in zip(fast, slow))
    total, count, length, above, css = fast
    assert close(total, pooled.sum())
    assert (count, length) == (pooled.count(), len(pooled))
    assert close(above, pooled[pooled > threshold].sum())
    assert close(css, ((pooled - pooled.mean()) ** 2).sum())
    # two rounds (the centred sum of squares needs the mean): one request per server per round
    assert fast_requests == 2 * len(servers)
    # naive: every aggregate object is its own request; round 1 has sum, count, len, the
    # filtered sum and the mean's own sum and count, round 2 the centred sum of squares
    assert slow_requests == 7 * len(servers)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def close(a: float, b: float) -> bool:
    return same(a, b) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)
