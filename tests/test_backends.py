"""Local, Simulation and Remote give the same answers on the same data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fedmed as fm

FRAGMENTS = {
    "list": ([1.5, 2.0, None, 4.0], [10.0, -3.0]),
    "dict of lists": ({"x": [1.0, 2.0, 3.0], "g": [1, 0, 1]}, {"x": [4.0, 5.0], "g": [0, 0]}),
    "DataFrame": (
        pd.DataFrame({"x": [1.0, np.nan, 3.0], "g": [1, 0, 1]}),
        pd.DataFrame({"x": [4.0, 5.0, 6.0, 7.0], "g": [0, 1, 1, 0]}),
    ),
    "nested dict": ({"visit": {"x": [1.0, 2.0], "g": [1, 1]}}, {"visit": {"x": [3.0], "g": [0]}}),
}


def column(data: fm.FedData, kind: str) -> fm.FedData:
    return {"list": data, "dict of lists": data["x"], "DataFrame": data["x"], "nested dict": data["visit"]["x"]}[kind]


def three_backends(parts, serve) -> dict[str, fm.FedData]:
    servers = [fm.Server(), fm.Server()]
    for i, (server, part) in enumerate(zip(servers, parts)):
        server[f"part {i}"] = part
    urls = [serve(s).url for s in servers]
    return {
        "local": fm.FedData([fm.Local(p) for p in parts]),
        "simulation": fm.FedData([fm.Simulation(s, f"part {i}") for i, s in enumerate(servers)]),
        "remote": fm.FedData([fm.Remote(u, f"part {i}") for i, u in enumerate(urls)]),
    }


def analysis(x: fm.FedData):
    mean = x.sum() / x.count()
    return (
        x.len(), x.count(), x.sum(), x.min(), x.max(), x.set(), mean,
        ((x - mean) ** 2).sum() / (x.count() - 1),  # two rounds
        x[x > 2].sum(), (abs(-x) // 2 % 3).sum(),
    )


@pytest.mark.parametrize("kind", list(FRAGMENTS))
def test_backends_agree_with_pandas(kind, serve):
    parts = FRAGMENTS[kind]
    results = {name: fm.compute(*analysis(column(data, kind))) for name, data in three_backends(parts, serve).items()}
    assert results["local"] == results["simulation"] == results["remote"]
    pooled = pd.concat([column_of(p, kind) for p in parts], ignore_index=True)
    length, count, total, low, high, distinct, mean, var, above, folded = results["remote"]
    assert (length, count) == (len(pooled), pooled.count())
    assert total == pytest.approx(pooled.sum(), rel=1e-12)
    assert (low, high) == (pooled.min(), pooled.max())
    assert distinct == sorted(pooled.dropna().unique())
    assert mean == pytest.approx(pooled.mean(), rel=1e-12)
    assert var == pytest.approx(pooled.var(), rel=1e-12)
    assert above == pytest.approx(pooled[pooled > 2].sum(), rel=1e-12)
    assert folded == pytest.approx((pooled.abs() // 2 % 3).sum(), rel=1e-12)


def column_of(part, kind: str) -> pd.Series:
    if kind == "list":
        return pd.Series(part, dtype=float)
    if kind == "nested dict":
        return pd.Series(part["visit"]["x"], dtype=float)
    return pd.Series(part["x"], dtype=float)


def test_aggregate_of_a_whole_table_is_per_column_like_pandas():
    parts = FRAGMENTS["DataFrame"]
    data = fm.FedData([fm.Local(p) for p in parts])
    pooled = pd.concat(parts, ignore_index=True)
    pd.testing.assert_series_equal((data.sum() / data.count()).compute(), pooled.mean(), check_dtype=False)


def test_simulation_reports_exact_traffic():
    server = fm.Server()
    server["a"] = [1, 2, 3]
    sim = fm.Simulation(server, "a")
    data = fm.FedData([sim])
    fm.compute(data.sum(), data.len())
    assert sim.traffic.requests == 1
    assert sim.traffic.bytes_in > 0 and sim.traffic.bytes_out > 0


def test_several_fragments_on_one_server_share_one_request(serve):
    server = fm.Server()
    server["a"], server["b"] = [1, 2], [3, 4, 5]
    url = serve(server).url
    data = fm.FedData([fm.Remote(url, "a"), fm.Remote(url, "b")])
    assert (data.sum() / data.len()).compute() == 3.0
    assert server.traffic.requests == 1


def test_replacing_a_fragment_bumps_its_version():
    server = fm.Server()
    server["a"] = [1]
    server["a"] = [1, 2]
    assert server.version("a") == 2
    assert fm.FedData([fm.Simulation(server, "a")]).sum().compute() == 3
