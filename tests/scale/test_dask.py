"""Dask fragments: the in-memory results, one ``dask.compute`` per request, and refusals named.

A ``dask.distributed.LocalCluster`` (threads, on loopback TCP) runs every
dask computation of this module. Each server holds the same rows twice:
as an in-memory (pandas) fragment and as a ``Dask`` fragment of a
``dask.dataframe`` split into partitions; every analysis must give the
same result on both, up to floating-point rounding (partitions are merged
with Chan et al.'s update, the order of additions differs).
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pytest

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

import dask  # noqa: E402
import dask.base  # noqa: E402

import fedmed as fm  # noqa: E402
from fedmed.expr.rowwise import Column, Fragment as FragmentNode, Map  # noqa: E402
from fedmed.fragments.dask import Dask  # noqa: E402
from fedmed.server.evaluate import Failure  # noqa: E402

RTOL = 1e-9


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """One scheduler and one worker (two threads) in this process, over TCP on loopback."""
    local = distributed.LocalCluster(
        processes=False, n_workers=1, threads_per_worker=2, protocol="tcp", host="127.0.0.1", dashboard_address=None
    )
    client = distributed.Client(local)
    yield client
    client.close()
    local.close()


def site(i: int, rows: int) -> pd.DataFrame:
    rng = np.random.default_rng([11, i])
    x = rng.normal(50.0 + 3 * i, 10.0, rows)
    x[rng.random(rows) < 0.1] = np.nan
    g = rng.choice(["a", "b", "c"], rows).astype(object)
    g[rng.random(rows) < 0.05] = None
    h = rng.integers(0, 2, rows)
    return pd.DataFrame({
        "x": x,
        "y": 0.4 * np.nan_to_num(x, nan=50.0) + 2.0 * h + rng.normal(0.0, 3.0, rows),
        "g": g,
        "h": h,
        "t": rng.integers(1, 8, rows),
    })


PARTS = [site(0, 60), site(1, 75)]
NUMBERS = [p[["x", "y", "t"]] for p in PARTS]


@pytest.fixture(scope="module")
def pair(cluster: Any) -> dict[str, Any]:
    """Two servers per kind holding the same rows: pandas fragments, and Dask fragments (3 and 2 partitions)."""
    memory, lazy = [fm.Server(), fm.Server()], [fm.Server(), fm.Server()]
    for i, (part, numbers) in enumerate(zip(PARTS, NUMBERS)):
        memory[i]["cohort"], memory[i]["numbers"] = part, numbers
        lazy[i]["cohort"] = Dask(dd.from_pandas(part, npartitions=3 - i))
        lazy[i]["numbers"] = Dask(dd.from_pandas(numbers, npartitions=2))
    return {
        "servers": {"memory": memory, "dask": lazy},
        "cohort": {k: fm.FedData([fm.Simulation(s, "cohort") for s in v]) for k, v in (("memory", memory), ("dask", lazy))},
        "numbers": {k: fm.FedData([fm.Simulation(s, "numbers") for s in v]) for k, v in (("memory", memory), ("dask", lazy))},
    }


#: name -> analysis of the cohort (a FedData of both servers)
ANALYSES: dict[str, Callable[[fm.FedData], Any]] = {
    "sum": lambda d: d["x"].sum(),
    "count": lambda d: d["x"].count(),
    "len": lambda d: d["x"].len(),
    "sqsum": lambda d: d["x"].sqsum(),
    "min": lambda d: d["x"].min(),
    "max": lambda d: d["x"].max(),
    "min of text": lambda d: d["g"].min(),
    "max of text": lambda d: d["g"].max(),
    "set": lambda d: d["g"].set(),
    "len of a filter": lambda d: d[d["h"] == 1]["x"].len(),
    "sum of a filter": lambda d: d["x"][d["h"] == 1].sum(),
    "sum where text equals": lambda d: d["x"][d["g"] == "a"].sum(),
    "count of a combined filter": lambda d: d["x"][(d["x"] > 45) & ~(d["h"] == 1)].count(),
    "filter by astype(bool)": lambda d: d["x"][d["h"].astype("bool")].sum(),  # dask/dask#12172
    "elementwise chain": lambda d: (d["x"].log() * 2 + 1 - d["y"] / 4).sum(),
    "fillna clip round": lambda d: d["x"].fillna(0).clip(40, 60).round(1).sum(),
    "isna, isin": lambda d: d["x"].isna().sum() + d["g"].isin(["a", "b"]).sum(),
    "abs pow floordiv mod": lambda d: ((abs(-d["x"]) ** 2) // 3 % 7).sum(),
    "astype int": lambda d: d["x"].round(0).astype("int").sum(),
    "dummy": lambda d: d["g"].dummy("b").sum(),
    "value_counts": lambda d: d["g"].value_counts(),
    "value_counts of numbers": lambda d: d["t"].value_counts(),
    "crosstab (chi2)": lambda d: fm.stats.chi2_contingency(d["g"], d["h"]),
    "histogram": lambda d: fm.stats.histogram(d["x"], bins=6, range=(20, 80)),
    "count_below (median)": lambda d: fm.stats.median(d["x"]),
    "moments (describe)": lambda d: fm.stats.describe(d["x"]),
    "moments of a filter (var)": lambda d: fm.stats.var(d["x"][d["g"] == "c"]),
    "comoments (pearson)": lambda d: fm.stats.pearson(d["x"], d["y"]),
    "comoments of a filter (cov)": lambda d: fm.stats.cov(d["x"][d["h"] == 0], d["y"]),
    "t-test": lambda d: fm.stats.ttest_ind(d["x"][d["h"] == 1], d["x"][d["h"] == 0], equal_var=False),
    "comoment_matrix (ols)": lambda d: fm.stats.ols(d, "y", ["x", "t"]),
}

#: per-column aggregates of a whole numeric table
TABLE_ANALYSES: dict[str, Callable[[fm.FedData], Any]] = {
    "table sum": lambda d: d.sum(),
    "table count": lambda d: d.count(),
    "table min": lambda d: d.min(),
    "table mean": lambda d: fm.stats.mean(d),
}


def assert_same(a: Any, b: Any, where: str) -> None:
    """Equal values, floats to a relative 1e-9 (also inside Series, frames, arrays and result objects)."""
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=RTOL, obj=where)
    elif isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b, check_exact=False, rtol=RTOL, obj=where)
    elif isinstance(a, np.ndarray):
        np.testing.assert_allclose(a, b, rtol=RTOL, err_msg=where)
    elif dataclasses.is_dataclass(a):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            assert_same(u, v, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, str):
        assert b == pytest.approx(a, rel=RTOL, nan_ok=True), where
    else:
        assert a == b, where


@pytest.fixture
def dask_computes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A log of every ``Dask.evaluate`` call and every ``dask.compute`` (``.compute()`` of a collection
    goes through ``dask.base.compute``, so it is logged too)."""
    log: list[str] = []
    compute, evaluate = dask.base.compute, Dask.evaluate

    def spy_compute(*args: Any, **kwargs: Any) -> Any:
        log.append(f"compute {threading.get_ident()}")
        return compute(*args, **kwargs)

    def spy_evaluate(self: Dask, *args: Any, **kwargs: Any) -> Any:
        log.append(f"evaluate {threading.get_ident()}")
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(dask, "compute", spy_compute)
    monkeypatch.setattr(dask.base, "compute", spy_compute)
    monkeypatch.setattr(Dask, "evaluate", spy_evaluate)
    return log


def kinds(log: list[str]) -> list[str]:
    return [entry.split()[0] for entry in log]


def one_compute_per_evaluate(log: list[str]) -> bool:
    """In every thread (servers answer in parallel), each evaluate call is followed by exactly one compute."""
    threads: dict[str, str] = {}
    for entry in log:
        kind, thread = entry.split()
        threads[thread] = threads.get(thread, "") + kind[0]
    return bool(threads) and all(seq == "ec" * (len(seq) // 2) for seq in threads.values())


def requests_to(servers: list[fm.Server]) -> int:
    return sum(s.traffic.requests for s in servers)


def test_dask_fragments_give_the_in_memory_results_with_one_dask_compute_per_evaluate(pair, dask_computes) -> None:
    results = {}
    for kind in ("memory", "dask"):
        cohort, numbers = pair["cohort"][kind], pair["numbers"][kind]
        before = requests_to(pair["servers"][kind])
        outputs = [f(cohort) for f in ANALYSES.values()] + [f(numbers) for f in TABLE_ANALYSES.values()]
        results[kind] = fm.compute(*outputs)
        if kind == "memory":
            assert dask_computes == []  # pandas fragments never touch dask
        else:
            requests = requests_to(pair["servers"][kind]) - before
            assert requests == 2 * 4  # two servers, four rounds (the median narrows its bracket three times)
            # round 1 asks each server about two fragments (cohort and numbers) in one request: two evaluates
            assert kinds(dask_computes).count("evaluate") == requests + 2
            assert one_compute_per_evaluate(dask_computes)
    for name, a, b in zip([*ANALYSES, *TABLE_ANALYSES], results["memory"], results["dask"]):
        assert_same(a, b, name)


def test_logistic_regression_glm_step_one_compute_per_newton_iteration(pair, dask_computes) -> None:
    fits = {}
    for kind in ("memory", "dask"):
        before = requests_to(pair["servers"][kind])
        fits[kind] = fm.stats.logit(pair["cohort"][kind], "h", ["y"]).compute()
        if kind == "dask":
            assert kinds(dask_computes).count("evaluate") == requests_to(pair["servers"][kind]) - before >= 2 * 3
            assert one_compute_per_evaluate(dask_computes)
    assert_same(fits["memory"].params, fits["dask"].params, "params")
    assert_same(fits["memory"].bse, fits["dask"].bse, "bse")
    assert fits["memory"].nobs == fits["dask"].nobs


def test_one_request_one_compute_for_many_aggregates(pair, dask_computes) -> None:
    cohort = pair["cohort"]["dask"]
    x, y = cohort["x"], cohort["y"]
    before = requests_to(pair["servers"]["dask"])
    fm.compute(x.sum(), x.count(), x.min(), x.max(), fm.stats.describe(x), fm.stats.pearson(x, y),
               cohort["g"].value_counts(), fm.stats.histogram(x, bins=4, range=(0, 100)))
    assert requests_to(pair["servers"]["dask"]) - before == 2  # one round, two servers
    assert sorted(kinds(dask_computes)) == ["compute", "compute", "evaluate", "evaluate"]
    assert one_compute_per_evaluate(dask_computes)


def test_the_result_matches_pandas_on_the_pooled_rows(pair) -> None:
    pooled = pd.concat(PARTS, ignore_index=True)
    cohort = pair["cohort"]["dask"]
    mean, summary = fm.compute(fm.stats.mean(cohort["x"]), fm.stats.describe(cohort["x"]))
    assert mean == pytest.approx(pooled["x"].mean(), rel=1e-12)
    expected = pooled["x"].describe()[["count", "mean", "std", "min", "max"]]
    np.testing.assert_allclose(summary.to_numpy(), expected.to_numpy(), rtol=1e-12)


def config_with_custom_operations() -> fm.Config:
    raw = fm.load_config(None).raw
    methods = {**raw["methods"], "square": "numpy.square", "median_max": {"map": "numpy.nanmedian", "reduce": "builtins.max"}}
    return fm.load_config({"methods": methods, "privacy": []})


def test_operations_without_a_dask_version_fail_by_name_and_compute_nothing(cluster, dask_computes) -> None:
    config = config_with_custom_operations()
    memory, lazy = fm.Server(config), fm.Server(config)
    memory["cohort"], lazy["cohort"] = PARTS[0], Dask(dd.from_pandas(PARTS[0], npartitions=2))
    on_memory = fm.FedData([fm.Simulation(memory, "cohort")], config=config)
    on_dask = fm.FedData([fm.Simulation(lazy, "cohort")], config=config)

    # the pandas fragment runs the server owner's own functions ...
    assert float(on_memory["x"].median_max()) == pytest.approx(np.nanmedian(PARTS[0]["x"]))
    assert float(on_memory["x"].square().sum()) == pytest.approx(np.nansum(PARTS[0]["x"] ** 2))
    # ... the Dask fragment refuses them by name rather than guess (or compute the frame into pandas)
    with pytest.raises(fm.TaskFailed, match="no dask version of the aggregate 'median_max'"):
        on_dask["x"].median_max().compute()
    with pytest.raises(fm.TaskFailed, match="no dask version of the elementwise operation 'square'"):
        on_dask["x"].square().sum().compute()
    assert kinds(dask_computes) == ["evaluate", "evaluate"]  # nothing was left to compute

    # a refused task is a Failure of its own: the other tasks of the request are answered, in one compute
    frame = FragmentNode("cohort")
    x = Column(frame, "x")
    nodes = [frame, x, Map("sum", (x,)), Map("median_max", (x,)), Map("moments", (x,))]
    total, refused, moments = lazy["cohort"].evaluate(nodes, [2, 3, 4], config)
    assert total.value == pytest.approx(np.nansum(PARTS[0]["x"]), rel=1e-12)
    assert isinstance(refused.value, Failure) and isinstance(refused.value.error, fm.TaskFailed)
    assert moments.value[0] == PARTS[0]["x"].count()
    assert total.disclosure is None  # no row facts: see test_policies_needing_row_facts_refuse_dask_fragments
    assert kinds(dask_computes)[2:] == ["evaluate", "compute"]


def test_failures_name_missing_columns_and_nested_data(cluster) -> None:
    server = fm.Server()
    server["cohort"] = Dask(dd.from_pandas(PARTS[0], npartitions=2))
    data = fm.FedData([fm.Simulation(server, "cohort")])
    with pytest.raises(fm.TaskFailed, match="no column 'nope'"):
        data["nope"].sum().compute()
    with pytest.raises(fm.TaskFailed, match="sum needs numbers"):  # as the pandas path: text is not summed
        data["g"].sum().compute()
    with pytest.raises(fm.TaskFailed, match="needs range"):  # caught before computing, for this output only
        data["x"].histogram(4).compute()
    with pytest.raises(fm.TaskFailed, match="text values"):
        (data["g"] + data["g"]).len().compute()
    with pytest.raises(TypeError, match="dask.dataframe DataFrame or Series"):
        Dask(PARTS[0])


def test_policies_needing_row_facts_refuse_dask_fragments(cluster) -> None:
    config = {**fm.load_config("example/config.yaml").raw}  # Anonymity(k=5) and Dominance
    server = fm.Server(config)
    server["cohort"] = Dask(dd.from_pandas(PARTS[0], npartitions=2))
    data = fm.FedData([fm.Simulation(server, "cohort")], config=config)
    with pytest.raises(fm.PrivacyError, match="cannot report the rows"):
        data["x"].sum().compute()


def test_policies_needing_only_the_value_apply_to_dask_fragments(cluster) -> None:
    methods = fm.load_config(None).raw["methods"]
    noise = {"policy": "fedmed.privacy.Noise", "params": {"epsilon": 1.0}}
    config = {"methods": methods, "privacy": [noise]}
    server = fm.Server(config)
    server["cohort"] = Dask(dd.from_pandas(PARTS[0], npartitions=2))
    data = fm.FedData([fm.Simulation(server, "cohort")], config=config)
    exact = PARTS[0]["x"].count()
    # a count: noise needs no row facts. Discrete Laplace at epsilon 1 returns the exact count about
    # 46% of the time; in 20 releases (new questions each: the filter keeps every row) some must differ
    noisy = fm.compute(*(data[data["x"] > -1e9 - i]["x"].count() for i in range(20)))
    assert all(float(v).is_integer() and abs(v - exact) < 50 for v in noisy)
    assert any(v != exact for v in noisy)
    with pytest.raises(fm.PrivacyError):  # a sum: bounded terms need the rows
        data["x"].sum().compute()
