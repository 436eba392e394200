"""Out-of-core fragments (Parquet, CSV, a DuckDB table) answer exactly as in-memory ones.

Every analysis runs twice through ``fm.Server`` + ``fm.Simulation``: over
DuckDB-backed fragments of some data and over ``InMemory`` fragments of the
same data, and the results must agree (missing values included). Also: one
SQL query per request, what the compiler cannot express fails that task
with ``TaskFailed`` naming it, and the example config's privacy policies
suppress the same attacks while releasing the same honest statistics.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Callable

import duckdb
import numpy as np
import pandas as pd
import pytest

import fedmed as fm
import fedmed.fragments  # noqa: F401  (fm.fragments until fedmed/__init__ imports it)
from fedmed.results import Histogram
from fedmed.stats.regression import RegressionResult

ROOT = Path(__file__).resolve().parents[2]
EXACT = ROOT / "example" / "config-exact.yaml"
EXAMPLE = ROOT / "example" / "config.yaml"


# -- data and files -------------------------------------------------------------------------------


def cohort(n: int, seed: int, start: int = 0) -> pd.DataFrame:
    """Patients with missing values in a float column (bmi) and a text column (sex)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "id": np.arange(start, start + n),
        "age": rng.integers(20, 90, n),
        "bmi": np.round(rng.normal(26.0, 4.5, n), 2),
        "sex": rng.choice(["F", "M"], n).astype(object),
        "grp": rng.choice(["a", "b", "c"], n).astype(object),
        "smoker": rng.random(n) < 0.3,
        "y": np.round(rng.normal(5.0, 2.0, n), 3),
    })
    frame.loc[rng.random(n) < 0.12, "bmi"] = np.nan
    frame.loc[rng.random(n) < 0.08, "sex"] = None
    return frame


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    connection = duckdb.connect()
    connection.register("frame", frame)
    connection.execute(f"COPY (SELECT * FROM frame) TO '{path}' (FORMAT parquet)")
    connection.close()
    return path


def write_duckdb(frame: pd.DataFrame, path: Path, table: str) -> Path:
    connection = duckdb.connect(str(path))
    connection.register("frame", frame)
    connection.execute(f"CREATE TABLE {table} AS SELECT * FROM frame")
    connection.close()
    return path


PART_A = cohort(70, seed=1)
PART_B = cohort(50, seed=2, start=70)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scale")
    write_parquet(PART_A.iloc[:40], folder / "a-1.parquet")  # one fragment made of two files
    write_parquet(PART_A.iloc[40:], folder / "a-2.parquet")
    PART_B.to_csv(folder / "b.csv", index=False)  # NaN and None as empty fields
    write_duckdb(PART_B, folder / "registry.duckdb", "registry")
    return folder


def federation(fragments: list[Any], config: Any = EXACT) -> tuple[list[fm.Server], fm.FedData]:
    servers = []
    for fragment in fragments:
        server = fm.Server(config=config)
        server["cohort"] = fragment
        servers.append(server)
    return servers, fm.FedData([fm.Simulation(s, "cohort") for s in servers], config=servers[0].config)


@pytest.fixture(scope="module")
def pair(files: Path) -> tuple[fm.FedData, fm.FedData]:
    """The same two parts as (Parquet glob + CSV) and as (InMemory + InMemory)."""
    _, duck = federation([fm.fragments.Parquet(files / "a-*.parquet"), fm.fragments.CSV(files / "b.csv")])
    _, memory = federation([fm.fragments.InMemory(PART_A), fm.fragments.InMemory(PART_B)])
    return duck, memory


# -- comparison -----------------------------------------------------------------------------------


def assert_same(got: Any, expected: Any, rel: float = 1e-9) -> None:
    """Equal, floats to ``rel`` (sums in another order), nan equal to nan."""
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(got, expected, check_dtype=False, rtol=rel)
    elif isinstance(expected, pd.Series):
        pd.testing.assert_series_equal(got, expected, check_dtype=False, check_index_type=False, rtol=rel)
    elif isinstance(expected, Histogram):
        assert np.array_equal(got.counts, expected.counts, equal_nan=True), (got, expected)
        assert np.array_equal(got.edges, expected.edges), (got, expected)
    elif isinstance(expected, RegressionResult):
        for name in ("params", "bse", "pvalues"):
            assert_same(getattr(got, name), getattr(expected, name), rel)
        assert got.nobs == expected.nobs
    elif is_dataclass(expected):
        for f in fields(expected):
            assert_same(getattr(got, f.name), getattr(expected, f.name), rel)
    elif isinstance(expected, (list, tuple, np.ndarray)):
        assert len(got) == len(expected), (got, expected)
        for g, e in zip(got, expected):
            assert_same(g, e, rel)
    elif isinstance(expected, dict):
        assert set(got) == set(expected), (got, expected)
        for key in expected:
            assert_same(got[key], expected[key], rel)
    elif isinstance(expected, (float, np.floating)) or isinstance(got, (float, np.floating)):
        assert got == pytest.approx(expected, rel=rel, abs=1e-12, nan_ok=True), (got, expected)
    else:
        assert got == expected, (got, expected)


def both(pair: tuple[fm.FedData, fm.FedData], analysis: Callable[[fm.FedData], Any], rel: float = 1e-9) -> Any:
    duck, memory = pair
    got, expected = analysis(duck), analysis(memory)
    assert_same(got, expected, rel)
    return got


# -- the same answers ------------------------------------------------------------------------------


def test_fragments_report_rows_and_columns(files):
    parquet = fm.fragments.Parquet(files / "a-*.parquet")
    assert parquet.rows == len(PART_A)
    assert parquet.dtypes == {"id": "BIGINT", "age": "BIGINT", "bmi": "DOUBLE", "sex": "VARCHAR", "grp": "VARCHAR",
                              "smoker": "BOOLEAN", "y": "DOUBLE"}
    csv = fm.fragments.CSV(files / "b.csv")
    assert csv.rows is None  # a CSV is counted by its first query, not when it is opened
    assert csv.dtypes == parquet.dtypes
    server = fm.Server()
    server["b"] = csv
    assert fm.FedData([fm.Simulation(server, "b")])["id"].len().compute() == len(PART_B)
    assert csv.rows == len(PART_B) and server.info()["fragments"]["b"]["rows"] == len(PART_B)
    assert isinstance(csv, fm.fragments.Fragment)
    # counting is a choice either way: when created, or by the first query
    assert fm.fragments.CSV(files / "b.csv", count_rows=True).rows == len(PART_B)
    assert fm.fragments.Parquet(files / "a-*.parquet", count_rows=False).rows is None


def test_plain_aggregates_with_missing_values(pair):
    both(pair, lambda d: fm.compute(
        d["age"].sum(), d["bmi"].sum(), d["bmi"].sqsum(), d["smoker"].sum(), d.len(), d.count(),
        d["bmi"].count(), d["sex"].count(), d["age"].min(), d["bmi"].max(), d["sex"].min(), d["sex"].max(),
        d["grp"].set(), d["sex"].unique(),
    ))


def test_filtered_mean_describe_pearson(pair):
    both(pair, lambda d: fm.compute(
        fm.stats.mean(d[d["sex"] == "F"]["bmi"]),
        fm.stats.mean(d[(d["age"] > 40) & ~d["smoker"]]["bmi"]),
        fm.stats.mean(d["bmi"][d["grp"].isin(["a", "c"])]),
        fm.stats.describe(d["bmi"]),
        fm.stats.pearson(d["age"], d["bmi"]),
        fm.stats.var(d["y"]),
    ))


def test_welch_t_test_and_ols(pair):
    both(pair, lambda d: fm.stats.ttest_ind(d["bmi"][d["sex"] == "F"], d["bmi"][d["sex"] == "M"],
                                            equal_var=False).compute())
    both(pair, lambda d: fm.stats.ols(d, y="bmi", X=["age", "y"]).compute())
    both(pair, lambda d: fm.stats.ols(d, y="y", X=["age", "sex"], categorical={"sex": ["F", "M"]}).compute())


def test_value_counts_crosstab_histogram_quantile(pair):
    both(pair, lambda d: fm.compute(
        d["sex"].value_counts(), d["grp"].value_counts(), d["smoker"].value_counts(),
        d["grp"].crosstab(d["sex"]),
        fm.stats.histogram(d["bmi"], bins=6, range=(10, 40)),
        fm.stats.histogram(d["age"], bins=[20, 35, 50.5, 89]),  # 89 is in the last bin, closed
    ))
    both(pair, lambda d: fm.stats.quantile(d["bmi"], [0.1, 0.5, 0.9]).compute())


def test_elementwise_expressions(pair):
    both(pair, lambda d: fm.compute(
        (d["bmi"].fillna(0) * 2 - d["age"] / 3).sum(),
        ((d["age"] // 7) % 3).value_counts(),
        (d["bmi"] ** 2).sum(), (d["age"] ** 2).sum(), (-d["y"]).abs().sum(),
        d["bmi"].isna().sum(), d["sex"].notna().sum(), d["sex"].fillna("?").value_counts(),
        d["bmi"].clip(18, 30).sum(), d["age"].clip(upper=50).sum(),
        d["bmi"].log().sum(), d["y"].exp().sum(), d["bmi"].sqrt().sum(), d["bmi"].round(0).value_counts(),
        d["smoker"].astype("float").sum(), d["age"].astype("str").value_counts(), d["sex"].dummy("F").sum(),
        (d["bmi"] > 25).sum(), (d["bmi"] != 25.13).sum(), (d["sex"] != "F").sum(), (d["sex"] == 1).sum(),
        (d["smoker"] | (d["age"] < 30)).sum(),
    ))


def test_pandas_sign_and_division_rules(tmp_path):
    """Python's floor division and modulo, IEEE division by zero, numpy's powers and rounding."""
    frame = pd.DataFrame({
        "a": [-7, 7, 7, 0, 5, -3, 9], "b": [2, -2, 0, 0, 3, 2, -4],
        "f": [-7.5, 7.0, 1.0, 0.0, np.nan, 2.5, -1.0], "g": [2.0, -2.0, 0.1, 0.0, 1.0, -0.5, 0.0],
        "h": [2.675, 0.125, -2.5, 1.5, np.nan, 1e300, -0.5],
    })
    _, duck = federation([fm.fragments.Parquet(write_parquet(frame, tmp_path / "t.parquet"))])
    _, memory = federation([frame])
    counts = lambda d: fm.compute(*[e.value_counts() for e in (  # noqa: E731  (multisets of row values)
        d["a"] // d["b"], d["a"] % d["b"], d["a"] / d["b"], d["f"] // d["g"], d["f"] % d["g"], d["f"] / d["g"],
        d["a"] // 3, d["a"] % -3, d["f"] // 0.5, d["f"] ** d["g"], d["g"] ** 0, d["a"] ** 2, d["f"] ** 0.5,
        d["h"].round(2), d["h"].round(-1), d["a"].round(-1), d["f"].log(), d["h"].exp(), d["g"].round(0).astype("int"),
        d["b"].clip(0, 1).astype("bool"), (d["f"] * 0).isna(), d["f"].clip(-1, 1),
        # what pandas refuses to convert or numpy to compute is missing, on both (never a failed task)
        d["a"].astype("bool"), d["f"].astype("int"), d["a"] ** d["b"], d["a"] ** -1,
        d["a"].astype("bool").isna(), d["f"].astype("int").isna(), (d["a"] ** d["b"]).isna(), (d["a"] ** -1).isna(),
    )])
    assert_same(counts(duck), counts(memory), rel=0)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, "both"])
def test_moments_with_infinite_values_as_on_the_pandas_path(tmp_path, bad):
    # numpy's centred sums of an infinite column are NaN (inf - inf); DuckDB's var_pop and covar_pop too
    x = [1.0, 2.0, 4.0, 8.0, 16.0]
    x[1:3] = [np.inf, -np.inf] if bad == "both" else [bad, 3.0]
    frame = pd.DataFrame({"x": x, "y": [2.0, 1.0, 5.0, 7.0, 9.0], "z": [0.5, 0.25, 1.0, 2.0, 3.0]})
    _, duck = federation([fm.fragments.Parquet(write_parquet(frame, tmp_path / "inf.parquet"))])
    _, memory = federation([frame])
    both((duck, memory), lambda d: fm.compute(
        d["x"].moments(), d["y"].moments(), d["x"].comoments(d["y"]), d["y"].comoments(d["z"]),
        fm.stats.corr(d, ["x", "y", "z"]), fm.stats.ols(d, "z", ["y"]),
    ))


def test_duckdb_database_table(files):
    _, duck = federation([fm.fragments.DuckDB(files / "registry.duckdb", table="registry")])
    _, memory = federation([PART_B])
    both((duck, memory), lambda d: fm.compute(fm.stats.describe(d["bmi"]), d["sex"].value_counts(), d.len()))


# -- one query, no fallback ------------------------------------------------------------------------


class Spy:
    """Wraps a DuckDB connection and records every statement it executes."""

    def __init__(self, connection: Any, log: list[str]) -> None:
        self._connection, self._log = connection, log

    def execute(self, sql: str, *args: Any) -> Any:
        self._log.append(sql)
        return self._connection.execute(sql, *args)

    def close(self) -> None:
        self._connection.close()


def spied(fragment: fm.fragments.SQLFragment, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    log: list[str] = []
    connect = fragment.connect
    monkeypatch.setattr(fragment, "connect", lambda: Spy(connect(), log))
    return log


def test_one_sql_query_per_request(files, monkeypatch):
    fragment = fm.fragments.Parquet(files / "a-*.parquet")
    log = spied(fragment, monkeypatch)
    (server,), data = federation([fragment])
    bmi = data["bmi"]
    fm.compute(bmi.sum(), data.len(), fm.stats.describe(bmi), fm.stats.pearson(data["age"], bmi),
               data["sex"].value_counts(), data["grp"].crosstab(data["sex"]), fm.stats.histogram(bmi, 5, (10, 40)),
               fm.stats.mean(bmi[data["sex"] == "F"]), fm.stats.ols(data, y="bmi", X=["age", "y"]))
    assert server.traffic.requests == 1 and len(log) == 1
    assert log[0].count("read_parquet") == 1 and log[0].lstrip().startswith("WITH")
    fm.stats.quantile(bmi, 0.5).compute()  # one request per round, one query per request
    assert len(log) == server.traffic.requests == 5


def test_unsupported_operations_fail_their_task_only(files, monkeypatch):
    config = fm.load_config(EXACT)
    methods = {**config.raw["methods"], "nanmedian": {"map": "numpy.nanmedian", "reduce": "fedmed.ops.public.sum"},
               "floor": "numpy.floor"}
    fragment = fm.fragments.Parquet(files / "a-*.parquet")
    log = spied(fragment, monkeypatch)
    (server,), data = federation([fragment], {"methods": methods, "privacy": []})
    with pytest.raises(fm.TaskFailed, match="'nanmedian'"):
        data["bmi"].nanmedian().compute()
    with pytest.raises(fm.TaskFailed, match="'floor'"):
        data["bmi"].floor().sum().compute()
    with pytest.raises(fm.TaskFailed, match="list used as a column"):
        (data["age"] + list(range(len(PART_A)))).sum().compute()
    with pytest.raises(fm.TaskFailed, match="sum needs numbers"):
        data["sex"].sum().compute()
    assert log == []  # refused while compiling: no query, no data loaded
    # in one request, the failing task does not spoil the others
    nodes = [["fragment", ["cohort"], []], ["column", ["bmi"], [0]], ["map", ["nanmedian"], [1]], ["map", ["sum"], [1]]]
    results = server.evaluate({"protocol": 1, "nodes": nodes, "outputs": [2, 3]})["results"]
    assert results[0]["error"]["type"] == "TaskFailed" and "nanmedian" in results[0]["error"]["message"]
    assert results[1]["value"] == pytest.approx(PART_A["bmi"].sum(), rel=1e-12)
    assert len(log) == 1


def test_a_value_that_cannot_be_converted_is_missing_in_one_query(files, monkeypatch):
    fragment = fm.fragments.Parquet(files / "a-*.parquet")
    log = spied(fragment, monkeypatch)
    (server,), _ = federation([fragment])
    nodes = [["fragment", ["cohort"], []], ["column", ["sex"], [0]], ["literal", ["float"], []],
             ["elementwise", ["astype"], [1, 2]], ["map", ["count"], [3]], ["column", ["age"], [0]], ["map", ["sum"], [5]]]
    results = server.evaluate({"protocol": 1, "nodes": nodes, "outputs": [4, 6]})["results"]
    assert results == [{"value": 0}, {"value": int(PART_A["age"].sum())}]  # 'F' and 'M' are no numbers
    assert len(log) == 1


def test_a_runtime_error_fails_its_task_only_and_quotes_no_value(files, monkeypatch):
    # the compiler leaves DuckDB no error to raise on data; one is made here (integer overflow
    # without TRY) to check the fallback that remains for any that would
    monkeypatch.setattr(fm.fragments.sql.elementwise, "_try", lambda expr: expr)
    fragment = fm.fragments.Parquet(files / "a-*.parquet")
    log = spied(fragment, monkeypatch)
    (server,), _ = federation([fragment])
    nodes = [["fragment", ["cohort"], []], ["column", ["age"], [0]], ["literal", [2**62], []],
             ["elementwise", ["mul"], [1, 2]], ["map", ["sum"], [3]], ["map", ["sum"], [1]]]
    results = server.evaluate({"protocol": 1, "nodes": nodes, "outputs": [4, 5]})["results"]
    assert results[0]["error"]["type"] == "TaskFailed"
    assert str(2**62) not in results[0]["error"]["message"] and "OutOfRange" in results[0]["error"]["message"]
    assert results[1] == {"value": int(PART_A["age"].sum())}
    assert len(log) == 3  # the whole request, then each task on its own


def test_importing_without_duckdb_works_and_creating_says_how_to_install(tmp_path):
    script = (
        "import sys; sys.modules['duckdb'] = None\n"
        "import fedmed.fragments as f\n"
        "assert f.InMemory and f.Parquet\n"
        "try:\n    f.Parquet('x.parquet')\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "pip install 'fedmed[duckdb]'" in out.stdout


# -- privacy: the same suppressions ------------------------------------------------------------------

N, TARGET = 200, 17


def private_cohort() -> pd.DataFrame:
    rng = np.random.default_rng(20240517)
    frame = pd.DataFrame({"id": np.arange(N), "age": rng.integers(20, 90, N), "y": np.round(rng.normal(5, 2, N), 3),
                          "dx": rng.choice(["A", "B", "C"], N).astype(object)})
    frame.loc[TARGET, ["age", "dx"]] = [77, "RARE"]
    return frame


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> tuple[fm.FedData, fm.FedData, pd.DataFrame]:
    frame = private_cohort()
    path = write_parquet(frame, tmp_path_factory.mktemp("private") / "cohort.parquet")
    _, duck = federation([fm.fragments.Parquet(path)], EXAMPLE)
    _, memory = federation([frame], EXAMPLE)
    return duck, memory, frame


ATTACKS = {
    "single-person filter sum": lambda d: d[d["id"] == TARGET]["age"].sum(),
    "single-person filter len": lambda d: d[d["id"] == TARGET]["age"].len(),
    "single-person filter max": lambda d: d[d["id"] == TARGET]["age"].max(),
    "single-person filter mean": lambda d: fm.stats.mean(d[d["id"] == TARGET]["age"]),
    "complement filter": lambda d: d[d["id"] != TARGET]["age"].sum(),
    "complement mask": lambda d: (d["age"] * (d["id"] != TARGET)).sum(),
    "complement nan mask": lambda d: (d["age"] * (d["id"] != TARGET) / (d["id"] != TARGET)).sum(),
    "one-hot mask": lambda d: (d["age"] * (d["id"] == TARGET)).sum(),
    "one-hot astype float": lambda d: (d["age"] * (d["id"] == TARGET).astype("float")).sum(),
    "one-hot padded": lambda d: (d["age"] * (d["id"] == TARGET) + 1e-9 * d["y"]).sum(),
    "one-hot padded constant": lambda d: (d["age"] * (d["id"] == TARGET) + 1000).sum(),
    "one-hot moments": lambda d: (d["age"] * (d["id"] == TARGET)).moments(),
    "numeric one-hot padded": lambda d: (d["age"] * ((d["id"] == TARGET) ** 1) + 1000).sum(),
    "numeric one-hot clip padded": lambda d: (d["age"] * (1 - abs(d["id"] - TARGET).clip(0, 1)) + 1000).moments(),
    # the rare category's indicator singles out one row, inside a count table too: refused as a whole
    "rare indicator histogram": lambda d: (d["dx"] == "RARE").astype("float").histogram([-0.5, 0.5, 1.5]),
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_attacks_are_suppressed_as_on_the_pandas_path(guarded, attack):
    duck, memory, _ = guarded
    errors = []
    for data in (duck, memory):
        with pytest.raises(fm.PrivacyError) as info:
            ATTACKS[attack](data).compute()
        errors.append(info.value)
    assert (errors[0].message, errors[0].policy) == (errors[1].message, errors[1].policy)


def test_honest_statistics_are_released_as_on_the_pandas_path(guarded):
    duck, memory, frame = guarded

    def honest(d: fm.FedData) -> Any:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            values = fm.compute(fm.stats.mean(d["age"]), fm.stats.describe(d["y"]), d["dx"].value_counts(),
                                d["dx"].unique(), fm.stats.ttest_ind(d["age"][d["dx"] == "A"], d["age"][d["dx"] == "B"]),
                                d["age"].histogram([20, 50, 88, 90]))
        return values, sorted(str(w.message).split(": ", 1)[-1] for w in caught)

    (mean, _, counts, levels, _, hist), notes = both((duck, memory), honest)
    assert mean == pytest.approx(frame["age"].mean(), rel=1e-12)
    # 3 patients are 88 or older: that bin is withheld (and one more, so the total cannot give it away)
    assert "RARE" not in counts.index and "RARE" not in levels and math.isnan(hist.counts[2])
    # one rare cell suppressed in each table; describe's min and max of y are one patient's values each
    assert sum("suppressed" in n for n in notes) == 3
    assert [n for n in notes if "withheld" in n] == ["max withheld: held by fewer than 5 rows",
                                                      "min withheld: held by fewer than 5 rows"]


def test_dominance_alone_suppresses_a_padded_one_hot(tmp_path):
    frame = private_cohort()
    config = {"methods": fm.load_config(EXAMPLE).raw["methods"],
              "privacy": [{"policy": "fedmed.privacy.Dominance", "params": {"n": 1, "p": 0.9}}]}
    _, duck = federation([fm.fragments.Parquet(write_parquet(frame, tmp_path / "c.parquet"))], config)
    _, memory = federation([frame], config)
    for data in (duck, memory):
        with pytest.raises(fm.PrivacyError, match="90%"):
            (data["age"] * (data["id"] == TARGET) + 1e-9 * data["y"]).sum().compute()
        assert data["age"].sum().compute() == frame["age"].sum()


def test_noise_on_a_sum_is_refused_clearly_and_counts_are_noised(tmp_path):
    frame = private_cohort()
    config = {"methods": fm.load_config(EXAMPLE).raw["methods"],
              "privacy": [{"policy": "fedmed.privacy.Noise", "params": {"epsilon": 1.0, "bounds": [0, 100]}}]}
    _, duck = federation([fm.fragments.Parquet(write_parquet(frame, tmp_path / "c.parquet"))], config)
    with pytest.raises(fm.TaskFailed, match="cannot hand the row values"):
        duck["age"].sum().compute()
    assert abs(duck["age"].count().compute() - N) < 50


@pytest.mark.parametrize("change", ["a file rewritten", "a file added", "a file removed"])
def test_files_changed_on_disk_are_refused_until_registered_again(tmp_path, change):
    # rows never change under one version: Snapshot and the client's versions keep their meaning
    first, second = cohort(30, seed=7), cohort(20, seed=8, start=30)
    write_parquet(first, tmp_path / "part-1.parquet")
    write_parquet(second, tmp_path / "part-2.parquet")
    servers, data = federation([fm.fragments.Parquet(str(tmp_path / "*.parquet"))])
    assert data["age"].count().compute() == pd.concat([first, second])["age"].count()
    if change == "a file rewritten":
        write_parquet(cohort(31, seed=9), tmp_path / "part-1.parquet")
    elif change == "a file added":
        write_parquet(cohort(5, seed=9, start=50), tmp_path / "part-3.parquet")
    else:
        (tmp_path / "part-2.parquet").unlink()
    with pytest.raises(fm.TaskFailed, match="files changed on disk"):
        data["age"].count().compute()
    servers[0]["cohort"] = fm.fragments.Parquet(str(tmp_path / "*.parquet"))  # the owner registers it again
    now = pd.concat([pd.read_parquet(p) for p in sorted(tmp_path.glob("*.parquet"))])
    assert data["age"].count().compute() == now["age"].count()
