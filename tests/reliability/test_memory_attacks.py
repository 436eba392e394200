"""Issue 14: a request inside the documented limits never costs a server more than its memory budget.

Every row of the issue's table is sent, as the crafted msgpack node table a
hostile but authenticated client would send, to a real ``fedmed serve``
process whose address space is capped at 3 GiB (``RLIMIT_AS``, as in the
issue) and whose config sets ``limits.memory_bytes`` to 512 MiB
(``memory_support``). A row passes when the server

1. answers, with a msgpack body (never Flask's HTML page) and a status below 500;
2. refuses, if it refuses, before doing the work: no out-of-memory error
   (``MemoryError``, Arrow's, DuckDB's) in the body;
3. grows by at most its budget: peak resident memory during the request
   (``VmHWM``, reset just before it) above the resident memory before it;
4. answers ``x.sum()`` correctly right afterwards.

A refusal (413/422, or a task error inside a 200) passes 2 and 3 by
costing nothing; an answer passes them by staying within the budget. Rows
run without privacy policies, which would refuse some of them first and
hide the cost, except the ``CacheLimit`` row, which uses
``example/config.yaml``'s. Servers are shared between tests
(``memory_support.Pool``) and restarted when a row left one dead, busy or
holding more than 128 MiB above its start, so each row meets a server in
the state of a fresh one. Appends under concurrency are tested elsewhere.

Joins (issue 18) run on a server of their own with a 64 MiB budget holding
``labs`` and ``patients``: a many-to-many join is refused before it runs,
whatever the request's filters keep, and a per-person join answers.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest

from fedmed.expr.rowwise import Column, Elementwise, Filter, Fragment, Literal, Map
from fedmed.expr.tables import Merge

_spec = importlib.util.spec_from_file_location("memory_support", Path(__file__).with_name("memory_support.py"))
ms = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules["memory_support"] = ms  # its dataclasses look their module up by name
_spec.loader.exec_module(ms)  # type: ignore[union-attr]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")

#: What ``CacheLimit`` may keep by default (its byte bound), and what else a server may keep after
#: 20 large answers without a cache (allocator arenas of its threads, fragmentation: ~50 MiB measured).
CACHE_BYTES = 64 * ms.MiB
SLACK = 96 * ms.MiB
#: Out-of-memory errors as they reach a client: a refusal that names one came after the work.
OUT_OF_MEMORY = ("MemoryError", "OutOfMemory", "out of memory", "bad_alloc")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("memory")
    cohort, uniques = ms.cohort(), ms.uniques()
    cohort.to_csv(folder / "cohort.csv", index=False)
    out = {
        "folder": folder,
        "cohort.csv": folder / "cohort.csv",
        "plain": ms.write_config(folder, "plain", privacy=False),
        "private": ms.write_config(folder, "private", privacy=True),
        "sums": {"d": float(cohort["x"].sum()), "u": float(uniques["x"].sum())},
    }
    uniques.to_parquet(folder / "uniques.parquet")
    out["uniques.parquet"] = folder / "uniques.parquet"
    try:
        cohort.to_parquet(folder / "cohort.parquet")
        out["cohort.parquet"] = folder / "cohort.parquet"
    except ImportError:
        pass
    return out


@pytest.fixture(scope="module")
def pool(files: dict[str, Any]) -> Iterator[Any]:
    servers = ms.Pool({
        "plain": lambda: ms.Served(files["plain"], {"d": files["cohort.csv"]}),
        "duckdb": lambda: ms.Served(files["plain"], {"d": files["cohort.parquet"]}, in_place=True),
        "private": lambda: ms.Served(files["private"], {"u": files["uniques.parquet"]}),
    })
    yield servers
    servers.close()


def problems(answer: Any, *, budget: int = ms.BUDGET) -> list[str]:
    """What is wrong with ``answer`` by points 1-3 of the module docstring (empty: nothing)."""
    found = []
    if answer.status is None:
        return [f"no answer within {ms.REQUEST_TIMEOUT:.0f} s ({answer.error})"]
    if not answer.is_msgpack:
        found.append("the body is not msgpack")
    if answer.status >= 500:
        found.append(f"status {answer.status}")
    oom = [e for e in answer.errors if any(word in str(e.get("message")) for word in OUT_OF_MEMORY)]
    if oom:
        found.append("refused only after running out of memory")
    if answer.peak_growth is None:
        found.append("the server's memory could not be read (did it die?)")
    elif answer.peak_growth > budget:
        found.append(f"grew by {ms.mib(answer.peak_growth)}, over its budget of {ms.mib(budget)}")
    return found


def next_query(served: Any, fragment: str, expected: float) -> list[str]:
    """Point 4: the server answers ``x.sum()`` afterwards, correctly."""
    answer = served.post(ms.ordinary(fragment))
    if answer.status != 200 or answer.values[:1] != [pytest.approx(expected, rel=1e-9)]:
        return [f"the next query x.sum() got {answer.summary()}"]
    return []


def check_row(served: Any, request: dict[str, Any], fragment: str, expected: float) -> None:
    answer = served.measure(request)
    print(f"\n    {answer.summary()}")
    found = problems(answer)
    if served.alive() and not served.unanswered:
        found += next_query(served, fragment, expected)
    else:
        found.append("the server died or is still busy: it cannot answer the next query")
    assert not found, f"{'; '.join(found)}\n{answer.summary()}\n{served.output(1500)}"


# -- the harness itself ---------------------------------------------------------------------------


def test_the_server_runs_under_the_address_space_cap_and_its_peak_can_be_reset(pool: Any) -> None:
    served = pool.get("plain")
    limits = Path(f"/proc/{served.process.pid}/limits").read_text()
    line = next(line for line in limits.splitlines() if line.startswith("Max address space"))
    assert line.split()[3:5] == [str(ms.CAP), str(ms.CAP)]
    assert served.status_field("VmSize") < ms.CAP
    assert served.measure(ms.ordinary("d")).peak_growth is not None


def test_ordinary_questions_cost_a_few_megabytes(pool: Any, files: dict[str, Any]) -> None:
    served = pool.get("plain")
    for name, request in ms.honest_mix("d").items():
        answer = served.measure(request)
        print(f"\n    {name}: {answer.summary()}")
        assert answer.status == 200 and not answer.errors, (name, answer.summary())
        assert answer.peak_growth is not None and answer.peak_growth < 64 * ms.MiB, (name, answer.summary())
    assert not next_query(served, "d", files["sums"]["d"])


def test_an_error_is_a_msgpack_body(pool: Any) -> None:
    answer = pool.get("plain").measure({"protocol": 1, "nodes": [["fragment", ["nope"], []]], "outputs": [0]})
    assert answer.status == 400 and answer.is_msgpack and answer.errors


# -- the rows -----------------------------------------------------------------------------


def test_a_wide_tree_of_repeated_entries(pool: Any, files: dict[str, Any]) -> None:
    """(a) A balanced tree of ``+`` over one column, 16,385 table entries (~300 KB), ~16 distinct keys."""
    check_row(pool.get("plain"), ms.wide_tree("d"), "d", files["sums"]["d"])


def test_many_distinct_tasks_in_one_request(pool: Any, files: dict[str, Any]) -> None:
    """(b) 2,000 tasks ``(x + i).sum()`` in one request: each one column wide, all kept until the end."""
    check_row(pool.get("plain"), ms.many_sums("d"), "d", files["sums"]["d"])


def test_text_repetition_through_a_whole_table(pool: Any, files: dict[str, Any]) -> None:
    """(c) ``(data * 100000).len()`` on a table with a text column (91 bytes asking ~100 GB)."""
    check_row(pool.get("plain"), ms.text_repetition("d"), "d", files["sums"]["d"])


@pytest.mark.parametrize("into", ["rows", "constants"])
def test_nested_list_constants_that_broadcast(pool: Any, files: dict[str, Any], into: str) -> None:
    """(d) Nine 10-number constants, each along its own axis, added: 1.5 KB asking 10 ** 9 float64 (7.5 GiB),
    then added to ``x`` (``into="rows"``) or handed to ``x.count_below`` as constants only."""
    check_row(pool.get("plain"), ms.broadcast("d", into=into), "d", files["sums"]["d"])


def test_text_doubling_on_an_in_place_parquet_fragment(pool: Any, files: dict[str, Any]) -> None:
    """(e) ``x = x + x`` 18 times on a text column, served ``--in-place`` (DuckDB's ``||``), then counted."""
    pytest.importorskip("duckdb")
    if "cohort.parquet" not in files:
        pytest.skip("writing Parquet needs pyarrow")
    check_row(pool.get("duckdb"), ms.doubling("d", times=18), "d", files["sums"]["d"])


def test_the_answer_cache_keeps_a_bounded_number_of_bytes(pool: Any, files: dict[str, Any]) -> None:
    """(f) 20 distinct ``value_counts`` of a column of distinct values under ``example/config.yaml``
    (``CacheLimit`` first): the server keeps at most the cache's byte bound plus slack."""
    served = pool.get("private")
    found, after = [], []
    for shift in range(20):
        answer = served.measure(ms.value_counts("u", shift=shift))
        print(f"\n    value_counts #{shift + 1}: {answer.summary()}")
        found += [f"#{shift + 1}: {p}" for p in problems(answer)]
        after.append(answer.rss_after)
        if answer.status is None:
            break
    if len(after) == 20 and None not in after:
        kept = after[-1] - after[0]
        print(f"\n    RSS after #1 {ms.mib(after[0])}, after #20 {ms.mib(after[-1])}: {ms.mib(kept)} more")
        if kept > CACHE_BYTES + SLACK:
            found.append(f"kept {ms.mib(kept)} more after 20 answers than after the first, over "
                         f"{ms.mib(CACHE_BYTES)} (the cache's byte bound) + {ms.mib(SLACK)}")
    found += next_query(served, "u", files["sums"]["u"]) if served.alive() and not served.unanswered else [
        "the server died or is still busy"]
    assert not found, "; ".join(found)


# -- joins priced before they run (issue 18, docs/design/tables.md section 6) -------------------------

#: A small budget: a per-person join of ``JOIN_ROWS`` lab rows fits in it; a join on ``ward`` would hold
#: ~200,000 x 4,000 = 8e8 rows (about 30 GiB) if it ran, ten times the server's address-space cap.
JOIN_BUDGET = 64 * ms.MiB
JOIN_ROWS, JOIN_PERSONS, WARDS = 200_000, 40_000, 50
#: A refusal decided from the price alone answers in well under this (the first one counts the keys once).
REFUSED_WITHIN = 5.0


@pytest.fixture(scope="module")
def joins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``fedmed serve`` holding ``labs`` (several rows per person, 50 wards) and ``patients`` (one row per
    person), budget ``JOIN_BUDGET``; and the pooled frames, for the expected answers."""
    folder = tmp_path_factory.mktemp("joins")
    rng = np.random.default_rng(18)
    labs = pd.DataFrame({"patient_id": rng.integers(0, JOIN_PERSONS, JOIN_ROWS),
                         "ward": rng.integers(0, WARDS, JOIN_ROWS), "x": rng.normal(6.5, 1.2, JOIN_ROWS).round(3)})
    patients = pd.DataFrame({"patient_id": np.arange(JOIN_PERSONS), "age": rng.integers(20, 90, JOIN_PERSONS)})
    labs.to_csv(folder / "labs.csv", index=False)
    patients.to_csv(folder / "patients.csv", index=False)
    config = ms.write_config(folder, "joins", privacy=False, memory_bytes=JOIN_BUDGET)
    with ms.Served(config, {"labs": folder / "labs.csv", "patients": folder / "patients.csv"}) as served:
        yield {"served": served, "labs": labs, "patients": patients}


def _join_sum(left: Any, right: Any, on: str, column: str) -> Any:
    return Map("sum", (Column(Merge(left, right, (on,), (on,)), column),))


def _ward_refusal(answer: Any) -> str:
    error = answer.decoded["results"][0]["error"]
    assert error["type"] == "TooExpensive", answer.summary()
    return error["message"]


def test_a_many_to_many_join_fails_alone_before_it_runs(joins: dict[str, Any]) -> None:
    """``labs.merge(labs, on="ward")`` is priced at rows x the key's most repeated value (a power of two) and
    refused before any work, naming the join; the per-person join in the same request is answered."""
    served, labs, patients = joins["served"], joins["labs"], joins["patients"]
    request = ms.request([_join_sum(Fragment("labs"), Fragment("labs"), "ward", "x_x"),
                          _join_sum(Fragment("patients"), Fragment("labs"), "patient_id", "x")])
    answer = served.measure(request)
    print(f"\n    {answer.summary()}")
    assert not problems(answer, budget=JOIN_BUDGET), answer.summary()
    assert answer.status == 200 and answer.seconds < REFUSED_WITHIN, answer.summary()
    most = 1 << (int(labs["ward"].value_counts().max()) - 1).bit_length()
    message = _ward_refusal(answer)
    assert f"merge on ['ward'] of 'labs' and 'labs' could hold about {JOIN_ROWS * most:,} rows x 5 columns" in message
    assert "64 MiB per request" in message and "join on a key with fewer repeats" in message
    expected = float(patients.merge(labs, on="patient_id")["x"].sum())
    assert answer.values[1] == pytest.approx(expected, rel=1e-9)
    assert served.alive() and not next_query(served, "labs", float(labs["x"].sum()))


def test_the_join_s_price_does_not_depend_on_the_rows_a_filter_keeps(joins: dict[str, Any]) -> None:
    """The same join with its left side filtered to no row is refused the same way: a price that followed
    the filter would tell which rows it keeps."""
    served = joins["served"]
    labs = Fragment("labs")
    none = Filter(labs, Elementwise("gt", (Column(labs, "x"), Literal(1e9))))
    whole = _ward_refusal(served.measure(ms.request([_join_sum(labs, labs, "ward", "x_x")])))
    answer = served.measure(ms.request([_join_sum(none, labs, "ward", "x_x")]))
    print(f"\n    {answer.summary()}")
    assert not problems(answer, budget=JOIN_BUDGET) and answer.seconds < REFUSED_WITHIN, answer.summary()
    assert _ward_refusal(answer) == whole.replace("of 'labs' and", "of 'labs' (filtered) and")


def test_a_per_person_join_fits_and_answers(joins: dict[str, Any]) -> None:
    """patients x labs on the person key is priced at about the lab rows (one patient row per key) and
    answers, inner and left, within the budget."""
    served, labs, patients = joins["served"], joins["labs"], joins["patients"]
    left = Merge(Fragment("patients"), Fragment("labs"), ("patient_id",), ("patient_id",), how="left")
    answer = served.measure(ms.request([_join_sum(Fragment("patients"), Fragment("labs"), "patient_id", "x"),
                                        Map("count", (Column(left, "x"),)), Map("len", (Column(left, "age"),))]))
    print(f"\n    {answer.summary()}")
    assert answer.status == 200 and not answer.errors and not problems(answer, budget=JOIN_BUDGET), answer.summary()
    pooled = patients.merge(labs, on="patient_id", how="left")
    assert answer.values[0] == pytest.approx(float(patients.merge(labs, on="patient_id")["x"].sum()), rel=1e-9)
    assert answer.values[1:] == [int(pooled["x"].count()), len(pooled)]
