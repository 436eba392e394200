"""The memory budget of a request, in process: priced before any work, freed as the work goes.

``fedmed.server.memory`` prices a node table from what the server knows
before computing (rows, columns, types, the request's own constants) and
``Server`` refuses what exceeds ``limits.memory_bytes``: a task with one
value too big fails alone, naming that value; a request whose tasks together
would hold more is refused whole (413). The evaluator computes outputs one
after the other and frees each value once no later output needs it.

What the real ``fedmed serve`` process does under an address-space cap is
tests/reliability/test_memory_attacks.py; here the parts, exactly.

Data: the extramarital-affairs survey shipped with statsmodels (Fair 1978,
6,366 rows) split unevenly over two servers, and synthetic columns of 200k
rows where memory is measured.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
from typing import Any, Callable

import msgpack
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import yaml

import fedmed as fm
from fedmed import wire
from fedmed.config import load_config
from fedmed.server.memory import MemoryPool, price, schedule, size_of_data

MiB = 2**20
ROWS = 200_000
EXAMPLE = load_config("example/config.yaml")


def exact(memory: int | None = None) -> dict[str, Any]:
    """The example config's operations without privacy, with a memory budget."""
    return {"methods": EXAMPLE.raw["methods"], **({"limits": {"memory_bytes": memory}} if memory else {})}


def judged(memory: int | None = None) -> dict[str, Any]:
    """The example config's privacy without its answer cache (each query computed afresh)."""
    raw = yaml.safe_load(open("example/config.yaml"))
    raw["privacy"] = [p for p in raw["privacy"] if "CacheLimit" not in p["policy"]]
    return {**raw, **({"limits": {"memory_bytes": memory}} if memory else {})}


@pytest.fixture(scope="module")
def synthetic() -> pd.DataFrame:
    rng = np.random.default_rng(14)
    return pd.DataFrame({"x": rng.random(ROWS), "y": rng.normal(size=ROWS), "g": rng.integers(0, 5, ROWS),
                         "t": [f"patient-{i}" for i in range(ROWS)], "u": np.arange(ROWS)})


def ask(server: fm.Server, table: list[Any], outputs: list[int]) -> tuple[int, dict[str, Any]]:
    status, body = server.handle(wire.pack({"protocol": wire.PROTOCOL, "nodes": table, "outputs": outputs}))
    return status, msgpack.unpackb(body)


def traced(fn: Callable[[], Any]) -> tuple[Any, int]:
    """``fn()`` and the peak of the memory it traced (Python and numpy allocations)."""
    tracemalloc.start()
    try:
        return fn(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -- equal entries are one node -----------------------------------------------------------------


def wide_tree(levels: int) -> tuple[list[Any], int]:
    """``x + x`` doubled ``levels`` times as a tree whose every entry is written out: 2 ** levels leaves."""
    table: list[Any] = [["fragment", ["s"], []]]
    layer = []
    for _ in range(2**levels):
        table.append(["column", ["x"], [0]])
        layer.append(len(table) - 1)
    while len(layer) > 1:
        nxt = []
        for a, b in zip(layer[::2], layer[1::2]):
            table.append(["elementwise", ["add"], [a, b]])
            nxt.append(len(table) - 1)
        layer = nxt
    table.append(["map", ["sum"], [layer[0]]])
    return table, len(table) - 1


def test_equal_entries_decode_to_one_node_each() -> None:
    table, out = wide_tree(13)
    nodes, outputs = wire.decode_table({"protocol": wire.PROTOCOL, "nodes": table, "outputs": [out, out]})
    assert len(table) == 2**14 + 1 and len(nodes) == 1 + 1 + 13 + 1  # fragment, column, 13 additions, the sum
    assert outputs == [len(nodes) - 1] * 2


def test_a_wide_tree_of_equal_entries_is_cheap_exact_and_counted_as_evaluated(synthetic: pd.DataFrame) -> None:
    """ComplexityCap counts what is evaluated: 16 nodes, admitted, one column's worth of memory each."""
    server = fm.Server({**exact(), "privacy": [{"policy": "fedmed.privacy.ComplexityCap", "params": {"cap": 20}}]})
    server["s"] = synthetic
    table, out = wide_tree(13)
    (status, answer), peak = traced(lambda: ask(server, table, [out]))
    assert status == 200
    assert answer["results"][0]["value"] == pytest.approx(synthetic["x"].sum() * 2**13, rel=1e-12)
    # a policy is set, so each addition is kept until the sum is judged: 13 columns, not 16k (25 GB)
    assert peak < 20 * synthetic["x"].nbytes

    small = fm.Server({**exact(), "privacy": [{"policy": "fedmed.privacy.ComplexityCap", "params": {"cap": 15}}]})
    small["s"] = synthetic
    status, answer = ask(small, table, [out])
    assert status == 403 and "16 nodes" in answer["results"][0]["error"]["message"]


# -- the evaluator frees as it goes -------------------------------------------------------------


def many_sums(n: int) -> tuple[list[Any], list[int]]:
    table: list[Any] = [["fragment", ["s"], []], ["column", ["x"], [0]]]
    outputs = []
    for i in range(n):
        table += [["literal", [i], []], ["elementwise", ["add"], [1, len(table)]]]
        table.append(["map", ["sum"], [len(table) - 1]])
        outputs.append(len(table) - 1)
    return table, outputs


@pytest.mark.parametrize("config", [exact, judged], ids=["exact", "privacy"])
def test_many_distinct_tasks_hold_one_task_at_a_time(synthetic: pd.DataFrame, config: Any) -> None:
    server = fm.Server(config())
    server["s"] = synthetic
    table, outputs = many_sums(300)
    ask(server, *many_sums(2))  # warm up lazy imports
    (status, answer), peak = traced(lambda: ask(server, table, outputs))
    assert status == 200
    values = [r["value"] for r in answer["results"]]
    assert values == pytest.approx([(synthetic["x"] + i).sum() for i in range(300)], rel=1e-12)
    column = synthetic["x"].nbytes
    assert peak < 20 * column, f"{peak / MiB:.0f} MiB for 300 tasks of {column / MiB:.1f} MiB each"


def test_schedule_computes_each_node_once_and_frees_it_after_its_last_output() -> None:
    table = [["fragment", ["s"], []], ["column", ["x"], [0]], ["literal", [1], []],
             ["elementwise", ["add"], [1, 2]], ["map", ["sum"], [3]], ["map", ["count"], [1]], ["map", ["max"], [3]]]
    nodes, outputs = wire.decode_table({"protocol": wire.PROTOCOL, "nodes": table, "outputs": [4, 5, 6]})
    plan = schedule(nodes, outputs)  # judged: a value lives until the last output reading it is judged
    computed = [i for step in plan for i in step.new]
    assert sorted(computed) == list(range(len(nodes))) and len(set(computed)) == len(computed)
    freed = {i: j for j, step in enumerate(plan) for i in step.freed}
    assert freed[3] == 2 and freed[1] == 2 and freed[4] == 0 and freed[5] == 1  # x + 1 lives until max
    plan = schedule(nodes, outputs, judged=False)  # not judged: until its last reader is computed
    dropped = {c: i for step in plan for i, gone in step.drops.items() for c in gone}
    assert dropped[3] == 6 and dropped[1] == 5 and dropped[2] == 3
    assert [step.freed for step in plan] == [[4], [5], [6]]


@pytest.mark.parametrize("config", [exact, judged])
@pytest.mark.parametrize("outputs", [[5, 6], [5, 5], [6, 5], [6, 6, 5], [4, 5, 6]])
def test_an_output_read_by_a_later_task_or_asked_twice_is_kept_until_then(
    synthetic: pd.DataFrame, config: Callable[[], dict[str, Any]], outputs: list[int]
) -> None:
    """Entry 5 equals entry 4 (one node), and entry 6 reads it: the fuzz case that once freed a value
    when its own output was answered although a later output's node still needed it."""
    server = fm.Server(config())
    server["s"] = synthetic[:1000]
    table = [["fragment", ["s"], []], ["column", ["x"], [0]], ["literal", [2], []],
             ["elementwise", ["mul"], [1, 2]], ["map", ["len"], [3]], ["map", ["len"], [3]], ["map", ["len"], [4]]]
    status, answer = ask(server, table, outputs)
    assert status == 200, answer
    alone = {o: ask(server, table, [o])[1]["results"][0] for o in set(outputs)}
    assert answer["results"] == [alone[o] for o in outputs]


def test_without_policies_a_long_chain_holds_one_level_at_a_time(synthetic: pd.DataFrame) -> None:
    server = fm.Server(exact())
    server["s"] = synthetic
    table: list[Any] = [["fragment", ["s"], []], ["column", ["x"], [0]], ["literal", [1], []]]
    value = 1
    for _ in range(60):
        table.append(["elementwise", ["add"], [value, 2]])
        value = len(table) - 1
    table.append(["map", ["sum"], [value]])
    ask(server, table, [len(table) - 1])
    (status, answer), peak = traced(lambda: ask(server, table, [len(table) - 1]))
    assert status == 200 and answer["results"][0]["value"] == pytest.approx((synthetic["x"] + 60).sum())
    assert peak < 4 * synthetic["x"].nbytes  # 60 kept columns would be 96 MB


# -- priced from the schema, never from the values -----------------------------------------------


def test_the_price_depends_on_the_schema_not_on_the_values() -> None:
    """Whether a request is refused must not tell the longest name in a column (simulatable refusals)."""
    short = pd.DataFrame({"t": ["a"] * 1000, "x": np.zeros(1000)})
    long = pd.DataFrame({"t": ["a" * 900] + ["b"] * 999, "x": np.arange(1000.0)})
    table = [["fragment", ["s"], []], ["column", ["t"], [0]], ["literal", ["z" * 500], []],
             ["elementwise", ["fillna"], [1, 2]], ["map", ["value_counts"], [3]]]
    nodes, outputs = wire.decode_table({"protocol": wire.PROTOCOL, "nodes": table, "outputs": [4]})
    config = load_config(exact())
    assert price(nodes, outputs, size_of_data(short), config) == price(nodes, outputs, size_of_data(long), config)


def test_a_task_with_a_value_over_the_budget_fails_alone_and_names_it(synthetic: pd.DataFrame) -> None:
    server = fm.Server(exact(memory=64 * MiB))
    server["s"] = synthetic
    table = [["fragment", ["s"], []], ["column", ["t"], [0]], ["literal", ["z" * 999], []],
             ["elementwise", ["fillna"], [1, 2]], ["map", ["len"], [3]],
             ["column", ["x"], [0]], ["map", ["sum"], [5]]]
    status, answer = ask(server, table, [4, 6])
    assert status == 200
    error = answer["results"][0]["error"]
    assert error["type"] == "TooExpensive"
    assert "data['t'].fillna(?)" in error["message"] and "200000 rows" in error["message"]
    assert "64 MiB" in error["message"] and "limits.memory_bytes" in error["message"]
    assert answer["results"][1]["value"] == pytest.approx(synthetic["x"].sum())


def test_a_request_whose_tasks_together_exceed_the_budget_is_refused_whole(synthetic: pd.DataFrame) -> None:
    """Per-value answers (one entry per row, priced from the rows) are kept for the response: 20 of them
    do not fit 64 MiB though each does; the client is told to send fewer tasks per request."""
    server = fm.Server(exact(memory=64 * MiB))
    server["s"] = synthetic.iloc[:20_000]
    table: list[Any] = [["fragment", ["s"], []], ["column", ["u"], [0]]]
    outputs = []
    for i in range(40):
        table += [["literal", [i], []], ["elementwise", ["add"], [1, len(table)]]]
        table.append(["map", ["value_counts"], [len(table) - 1]])
        outputs.append(len(table) - 1)
    status, answer = ask(server, table, outputs[:2])
    assert status == 200
    status, answer = ask(server, table, outputs)
    assert status == 413 and answer["error"]["type"] == "TooExpensive"
    assert "fewer tasks per request" in answer["error"]["message"]
    status, answer = ask(server, table, outputs[:1])  # and the server answers the next request
    assert status == 200 and len(answer["results"][0]["value"]) == 20_000


@pytest.mark.parametrize("config", [exact, judged], ids=["exact", "privacy"])
def test_the_price_bounds_what_honest_analyses_hold(synthetic: pd.DataFrame, config: Any) -> None:
    """The price is an upper bound of the traced peak of the server's work (numbers only: tracemalloc
    does not see Arrow's text buffers), for the shapes honest analyses send."""
    numbers = synthetic[["x", "y", "g", "u"]]
    server = fm.Server(config())
    server["s"] = numbers
    data = fm.FedData([fm.Simulation(server, "s")], config=config())
    priced: list[int] = []
    original = server._priced

    def spy(*args: Any) -> Any:
        outs, cost = original(*args)
        priced.append(cost)
        return outs, cost

    server._priced = spy  # type: ignore[method-assign]
    handle = server.handle
    peaks: list[int] = []
    server.handle = lambda body, client="t": peaks.append(traced(lambda: handle(body, client))[1]) or handle(body, client)  # type: ignore[method-assign]
    shapes = {
        "sum of an expression": lambda: ((data["x"] * 2 + data["y"]) / 3 - data["x"] ** 2).sum(),
        "filtered sum": lambda: data[data["g"] == 2]["x"].sum(),
        "value counts": lambda: data["g"].value_counts(),
        "per-value answer": lambda: data["u"].value_counts(),
        "histogram": lambda: fm.stats.histogram(data["x"], bins=10, range=(0, 1)),
    }
    def run(analysis: Callable[[], Any]) -> None:
        result = analysis()
        try:
            getattr(result, "compute", lambda: result)()
        except fm.PrivacyError:
            pass

    for name, analysis in shapes.items():
        run(analysis)  # warm up lazy imports (and under privacy: judged twice, never recalled)
        priced.clear()
        peaks.clear()
        run(analysis)
        assert peaks and max(peaks) <= max(priced) + MiB, (name, max(peaks) / MiB, max(priced) / MiB)


# -- constants, text and the shared pool ----------------------------------------------------------


def test_constants_never_broadcast_beyond_the_fragment() -> None:
    server = fm.Server(exact())
    server["s"] = pd.DataFrame({"x": np.arange(10.0)})
    axes = [np.full([10 if d == i else 1 for d in range(9)], 1.5).tolist() for i in range(9)]
    table: list[Any] = [["fragment", ["s"], []], ["column", ["x"], [0]]]
    table += [["literal", [a], []] for a in axes]
    total = 2
    for i in range(3, 11):
        table.append(["elementwise", ["add"], [total, i]])
        total = len(table) - 1
    table += [["elementwise", ["add"], [1, total]], ["map", ["sum"], [len(table)]]]
    (status, answer), peak = traced(lambda: ask(server, table, [len(table) - 1]))
    assert status in (413, 422), answer
    assert answer["results"][0]["error"]["type"] in ("TooExpensive", "TaskFailed")
    assert peak < 64 * MiB


def test_text_is_not_repeated_through_a_whole_table(synthetic: pd.DataFrame) -> None:
    server = fm.Server(exact())
    server["s"] = synthetic.iloc[:1000]
    data = fm.FedData([fm.Simulation(server, "s")], config=exact())
    with pytest.raises(fm.TaskFailed, match=r"mul needs numbers, but column 't' holds text values"):
        (data * 100_000).count().compute()
    assert float(data["x"].sum()) == pytest.approx(synthetic["x"].iloc[:1000].sum())


def test_fillna_text_is_bounded_as_on_the_sql_engine() -> None:
    from fedmed.server.evaluate import MAX_FILL_TEXT

    server = fm.Server(exact())
    server["s"] = pd.DataFrame({"t": ["a", None, "b"]})
    data = fm.FedData([fm.Simulation(server, "s")], config=exact())
    assert float(data["t"].fillna("z" * MAX_FILL_TEXT).count()) == 3
    with pytest.raises(fm.TaskFailed, match="fillna: this fragment fills with text of at most 1,000 characters"):
        data["t"].fillna("z" * (MAX_FILL_TEXT + 1)).count().compute()


def test_the_pool_never_lends_more_than_its_capacity() -> None:
    pool = MemoryPool(100, wait=5.0)
    held, most = [0], [0]
    lock = threading.Lock()

    def work() -> None:
        with pool.reserve(40):
            with lock:
                held[0] += 40
                most[0] = max(most[0], held[0])
            time.sleep(0.02)
            with lock:
                held[0] -= 40

    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 80 and pool.used == 0


def test_a_request_that_cannot_get_memory_in_time_is_told_to_try_again() -> None:
    pool = MemoryPool(100, wait=0.05)
    with pool.reserve(90):
        with pytest.raises(fm.ServerUnavailable, match="busy"):
            with pool.reserve(20):
                pass
    with pool.reserve(100):
        assert pool.used == 100


def test_real_data_split_unevenly_answers_as_pandas_under_the_default_budget() -> None:
    fair = sm.datasets.fair.load_pandas().data
    servers = [fm.Server(exact()) for _ in range(2)]
    servers[0]["fair"], servers[1]["fair"] = fair.iloc[:5000], fair.iloc[5000:]
    data = fm.FedData([fm.Simulation(s, "fair") for s in servers], config=exact())
    assert float(data["age"].sum()) == pytest.approx(fair["age"].sum())
    counts = data["children"].value_counts().compute()
    assert dict(counts) == pytest.approx(dict(fair["children"].value_counts()))
    kept = data[data["affairs"] > 0]["yrs_married"]
    assert float(kept.sum()) == pytest.approx(fair.loc[fair["affairs"] > 0, "yrs_married"].sum())
