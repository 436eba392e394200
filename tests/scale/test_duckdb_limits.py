"""DuckDB fragments get the memory bounds of pandas ones (issue 14).

Text cannot grow: the repeating operations the pandas engine refuses on
text (``x = x + x`` eighteen times, ``"x" * n``...) are refused by the SQL
compiler too, before any query runs, with the same message; so is
repetition through a whole table with a text column. Every query runs under
the server's memory budget (``limits.memory_bytes``), spilling what DuckDB
can spill; what does not fit fails its task with ``TooExpensive``, and the
server answers the next query as usual.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import duckdb
import numpy as np
import pandas as pd
import pytest

import fedmed as fm
import fedmed.fragments  # noqa: F401  (fm.fragments until fedmed/__init__ imports it)
from fedmed.fragments.sql import MAX_FILL_TEXT

ROOT = Path(__file__).resolve().parents[2]
EXACT = ROOT / "example" / "config-exact.yaml"
MiB = 2**20


def cohort(n: int, seed: int = 5) -> pd.DataFrame:
    """Patients with a text column (sex, some missing) and a column of nothing but missing values."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "id": np.arange(n),
        "age": rng.integers(20, 90, n),
        "bmi": np.round(rng.normal(26.0, 4.5, n), 2),
        "sex": rng.choice(["F", "M"], n).astype(object),
        "unknown": pd.Series([None] * n, dtype=object),
    })
    frame.loc[rng.random(n) < 0.08, "sex"] = None
    return frame


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    connection = duckdb.connect()
    connection.register("frame", frame)
    connection.execute(f"COPY (SELECT * FROM frame) TO '{path}' (FORMAT parquet)")
    connection.close()
    return path


SMALL = cohort(2_000)
BIG = cohort(100_000, seed=6)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("limits")
    write_parquet(SMALL, folder / "small.parquet")
    write_parquet(BIG, folder / "big.parquet")
    return folder


def exact(**limits: int) -> dict[str, Any]:
    return {"methods": fm.load_config(EXACT).raw["methods"], "privacy": [], "limits": limits}


def served(fragment: Any, config: Any = EXACT) -> tuple[fm.Server, fm.FedData]:
    server = fm.Server(config=config)
    server["cohort"] = fragment
    return server, fm.FedData([fm.Simulation(server, "cohort")], config=server.config)


def queries(fragment: fm.fragments.SQLFragment, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the SQL queries the fragment runs."""
    count: list[int] = []
    connect = fragment.connect
    monkeypatch.setattr(fragment, "connect", lambda: count.append(1) or connect())
    return count


def setting(fragment: fm.fragments.SQLFragment, name: str) -> str:
    return fragment.connect().execute(f"SELECT current_setting('{name}')").fetchone()[0]


def outcome(analysis: Callable[[], Any]) -> tuple[str, Any]:
    """What an analysis gives: its value, or its error's type and message."""
    try:
        return "value", analysis()
    except fm.ServerError as exc:
        return type(exc).__name__, exc.message


# -- text cannot grow -----------------------------------------------------------------------------


def doubled(d: fm.FedData, times: int = 18) -> fm.FedData:
    x = d["sex"]
    for _ in range(times):
        x = x + x
    return x


REPEATING: dict[str, Callable[[fm.FedData], Any]] = {
    "x = x + x, 18 times": lambda d: doubled(d).value_counts(),
    "text * n": lambda d: (d["sex"] * 100_000).count(),
    "n * text": lambda d: (100_000 * d["sex"]).len(),
    "text % n": lambda d: (d["sex"] % 3).count(),
    "text ** n": lambda d: (d["sex"] ** 2).count(),
    "text // n": lambda d: (d["sex"] // 2).count(),
    "constant + text": lambda d: ("x" * 1000 + d["sex"]).value_counts(),
    "numbers as text + text": lambda d: (d["age"].astype("str") + d["sex"]).value_counts(),
    "missing values only + n": lambda d: (d["unknown"] + 1).count(),  # pandas holds them as objects
}


@pytest.mark.parametrize("backend", ["simulation", "local"])
@pytest.mark.parametrize("name", list(REPEATING))
def test_repeating_text_is_refused_at_once_as_on_the_pandas_path(files, monkeypatch, backend, name):
    parquet = fm.fragments.Parquet(files / "small.parquet")
    ran = queries(parquet, monkeypatch)
    decisions = []
    for fragment in (fm.fragments.InMemory(SMALL), parquet):
        source = fm.Simulation(served(fragment)[0], "cohort") if backend == "simulation" else fm.Local(fragment, EXACT)
        data = fm.FedData([source], config=EXACT)
        decisions.append(outcome(lambda: REPEATING[name](data).compute()))
    (pandas, said), (sql, says) = decisions
    assert pandas == sql == "TaskFailed", decisions
    # the same refusal on both engines: only the pandas engine, without privacy policies, adds a count after
    # "; ", and pandas keeps a column's name through a conversion ("column 'age'") where SQL says "a column"
    if name == "missing values only + n":  # pandas holds them as objects; DuckDB's guard on repeating text
        assert " needs numbers, but column 'unknown' holds Python objects" in said, decisions
        assert says == "add is not defined for text values", decisions
    else:
        assert said.split("; ")[0] == says.split("; ")[0].replace("a column", "column 'age'").replace(
            "the column.", "data['age'].") and " needs numbers, but " in says, decisions
    assert ran == []  # refused while compiling: no query ran


def test_a_refused_task_does_not_spoil_the_others_in_its_request(files, monkeypatch):
    parquet = fm.fragments.Parquet(files / "small.parquet")
    ran = queries(parquet, monkeypatch)
    server, _ = served(parquet)
    nodes = [["fragment", ["cohort"], []], ["column", ["sex"], [0]]]
    for _ in range(18):  # x = x + x: each node adds the one below to itself
        nodes.append(["elementwise", ["add"], [len(nodes) - 1, len(nodes) - 1]])
    nodes += [["map", ["value_counts"], [len(nodes) - 1]], ["column", ["age"], [0]]]
    nodes += [["map", ["sum"], [len(nodes) - 1]]]
    results = server.evaluate({"protocol": 1, "nodes": nodes, "outputs": [len(nodes) - 3, len(nodes) - 1]})["results"]
    assert results[0]["error"]["type"] == "TaskFailed"
    assert results[0]["error"]["message"].startswith("add needs numbers, but column 'sex' holds text values")
    assert results[1] == {"value": int(SMALL["age"].sum())}
    assert len(ran) == 1


@pytest.mark.parametrize("repeat, op", [(lambda d: d * 100_000, "mul"), (lambda d: d + d, "add"),
                                        (lambda d: d % 7, "mod")])
def test_repeating_a_whole_table_with_a_text_column_is_refused(files, monkeypatch, repeat, op):
    parquet = fm.fragments.Parquet(files / "small.parquet")
    ran = queries(parquet, monkeypatch)
    _, data = served(parquet)
    with pytest.raises(fm.TaskFailed, match=f"^{op} needs numbers, but column 'sex' holds text values"):
        repeat(data).len().compute()
    assert ran == []


def test_a_table_of_numbers_still_repeats_as_on_the_pandas_path(files):
    numbers = SMALL[["id", "age", "bmi"]]
    parquet = fm.fragments.Parquet(write_parquet(numbers, files / "numbers.parquet"))
    memory, duck = (served(fragment)[1] for fragment in (fm.fragments.InMemory(numbers), parquet))
    pd.testing.assert_series_equal((duck * 3).sum().compute(), (memory * 3).sum().compute(), check_dtype=False)


def test_fillna_fills_with_text_of_bounded_length(files):
    memory, duck = (served(f)[1] for f in (fm.fragments.InMemory(SMALL), fm.fragments.Parquet(files / "small.parquet")))
    longest = "?" * MAX_FILL_TEXT
    expected = memory["sex"].fillna(longest).value_counts().compute()
    pd.testing.assert_series_equal(duck["sex"].fillna(longest).value_counts().compute(), expected, check_dtype=False)
    with pytest.raises(fm.TaskFailed, match=f"at most {MAX_FILL_TEXT:,} characters"):
        duck["sex"].fillna(longest + "?").value_counts().compute()


# -- the memory budget ----------------------------------------------------------------------------


def test_a_query_over_the_memory_budget_fails_its_task_and_the_server_answers_the_next(files, serve):
    """Over a real server: a msgpack error the client rebuilds (413 when every task fails so), never a 500.
    Rows not counted (``count_rows=False``): nothing is priced, DuckDB's ``memory_limit`` stops the query."""
    fragment = fm.fragments.Parquet(files / "big.parquet", settings={"threads": 2}, count_rows=False)
    server = fm.Server(config=exact(memory_bytes=8 * MiB))
    server["cohort"] = fragment
    data = fm.FedData([fm.Remote(serve(server).url, "cohort", timeout=60)], config=server.config)
    with pytest.raises(fm.TooExpensive) as failed:  # a histogram of 100,000 distinct values
        data["id"].value_counts().compute()
    message = failed.value.message
    assert "8 MiB of memory" in message and "limits.memory_bytes" in message
    assert failed.value.fragment == "cohort" and "value_counts" in failed.value.operation
    assert data["age"].sum().compute() == int(BIG["age"].sum())  # the next query


VALUE_COUNTS_AND_SUM = [["fragment", ["cohort"], []], ["column", ["id"], [0]], ["map", ["value_counts"], [1]],
                        ["column", ["age"], [0]], ["map", ["sum"], [3]]]


def test_answers_of_one_entry_per_row_are_priced_from_the_row_count_before_any_query(files, monkeypatch):
    """DuckDB bounds its own work; what it hands to Python (a value_counts of 100,000 values, about
    80 MiB at its peak) is priced from the row count alone: refused before any query runs, naming
    the task; the other task of the request is answered; a larger budget answers both."""
    fragment = fm.fragments.Parquet(files / "big.parquet", settings={"threads": 2})
    server, _ = served(fragment, exact(memory_bytes=32 * MiB))
    ran = queries(fragment, monkeypatch)
    results = server.evaluate({"protocol": 1, "nodes": VALUE_COUNTS_AND_SUM, "outputs": [2, 4]})["results"]
    error = results[0]["error"]
    assert error["type"] == "TooExpensive" and "value_counts" in error["message"]
    assert f"{len(BIG)} value(s)" in error["message"] and "32 MiB per request" in error["message"]
    assert results[1] == {"value": int(BIG["age"].sum())}
    assert len(ran) == 1  # the sum's query only
    roomy, _ = served(fragment, exact(memory_bytes=256 * MiB))
    results = roomy.evaluate({"protocol": 1, "nodes": VALUE_COUNTS_AND_SUM, "outputs": [2, 4]})["results"]
    assert len(results[0]["value"]) == len(BIG) and results[1] == {"value": int(BIG["age"].sum())}


#: A grouping of a million groups: beyond a budget of 32 MiB, within one of 32 MiB plus disk to spill to.
GROUPING = "SELECT count(*), sum(s) FROM (SELECT i % 1000000 AS k, sum(i) AS s FROM range(2000000) AS t(i) GROUP BY k)"


def test_a_big_grouping_spills_to_the_servers_temporary_folder_within_its_bounds(files):
    """DuckDB spills under the budget into a directory of this process, as much as the budget (or the owner's
    ``max_temp_directory_size``) allows; beyond that, the query fails as out of memory."""
    roomy = fm.fragments.Parquet(files / "small.parquet", settings={"threads": 2, "max_temp_directory_size": "1GiB"})
    spill = Path(setting(roomy, "temp_directory"))
    assert spill.parent == Path(tempfile.gettempdir()) and spill.name.startswith(f"fedmed-duckdb-{os.getpid()}-")
    roomy.limit(32 * MiB)
    assert roomy.connect().execute(GROUPING).fetchone() == (1_000_000, sum(range(2_000_000)))
    assert spill.is_dir()  # made by DuckDB when it first spilled
    tight = fm.fragments.Parquet(files / "small.parquet", settings={"threads": 2})
    assert setting(tight, "temp_directory") != str(spill)  # one directory per fragment of files
    tight.limit(32 * MiB)
    with pytest.raises(duckdb.OutOfMemoryException):  # 32 MiB in memory and 32 MiB on disk do not hold it
        tight.connect().execute(GROUPING).fetchone()
    assert tight.connect().execute("SELECT 42").fetchone() == (42,)


def test_the_budget_and_the_owners_smaller_settings_bound_each_query(files, tmp_path):
    owned = fm.fragments.Parquet(files / "small.parquet", settings={"memory_limit": "20MiB", "threads": 1,
                                                                  "temp_directory": str(tmp_path / "spill")})
    plain = fm.fragments.Parquet(files / "small.parquet")
    for budget in (512 * MiB, 8 * MiB):
        for fragment in (owned, plain):
            served(fragment, exact(memory_bytes=budget))[1]["age"].sum().compute()
            memory = min(budget, 20 * MiB) if fragment is owned else budget
            assert fragment.bounds(budget) == {"memory_limit": memory, "max_temp_directory_size": budget}
            assert setting(fragment, "memory_limit") == f"{memory / MiB:.1f} MiB"
            assert setting(fragment, "max_temp_directory_size") == f"{budget / MiB:.1f} MiB"
    assert setting(owned, "temp_directory") == str(tmp_path / "spill") and setting(owned, "threads") == 1
    # DuckDB's other name and another unit; the owner's spill limit is taken as it is, larger or not
    alias = fm.fragments.Parquet(files / "small.parquet", settings={"max_memory": "10MB",
                                                                  "max_temp_directory_size": "2GiB"})
    assert alias.bounds(8 * MiB) == {"memory_limit": 8 * MiB, "max_temp_directory_size": 2 * 1024 * MiB}
    assert alias.bounds(512 * MiB) == {"memory_limit": pytest.approx(10**7, rel=1e-2),  # as DuckDB reports it: 9.5 MiB
                                       "max_temp_directory_size": 2 * 1024 * MiB}


def test_a_database_file_opened_read_only_is_bounded_too(tmp_path):
    path = tmp_path / "registry.duckdb"
    connection = duckdb.connect(str(path))
    connection.register("frame", SMALL)
    connection.execute("CREATE TABLE cohort AS SELECT * FROM frame")
    connection.execute("CREATE TABLE other AS SELECT 1 AS x")
    connection.close()
    table = fm.fragments.DuckDB(path, table="cohort")
    other = fm.fragments.DuckDB(path, table="other")  # the same database: opened with the same settings
    _, data = served(table, exact(memory_bytes=64 * MiB))
    assert data["age"].sum().compute() == int(SMALL["age"].sum())
    assert setting(table, "memory_limit") == setting(other, "memory_limit") == "64.0 MiB"
    with pytest.raises(fm.TaskFailed, match="add needs numbers, but column .sex. holds text values"):
        doubled(data).count().compute()
