"""Tables derived on the servers (issue 18) over DuckDB fragments: the parity cases of tests/api/test_tables.py
with each server's tables written to Parquet and to CSV. Each request is one SQL query per server over the
files in place (checked by counting queries, and by peak RSS far below the data on a few hundred MB)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fedmed as fm
import fedmed.fragments  # noqa: F401
from fedmed.fragments.duckdb import SQLFragment

ROOT = Path(__file__).resolve().parents[2]
EXACT, PRIVATE = str(ROOT / "example" / "config-exact.yaml"), str(ROOT / "example" / "config.yaml")

_spec = importlib.util.spec_from_file_location("api_test_tables", ROOT / "tests" / "api" / "test_tables.py")
api = importlib.util.module_from_spec(_spec)  # the pandas parity cases and their data, shared
_spec.loader.exec_module(api)  # type: ignore[union-attr]
tables, same_summary, close, FUNCS = api.tables, api.same_summary, api.close, api.FUNCS

NAMES = ("patients", "labs", "visits")
#: CSV carries no types: an empty part would be read as text, so the owner says them (read_csv's ``types``).
CSV_TYPES = {"patient_id": "BIGINT", "age": "DOUBLE", "event": "BIGINT", "date": "BIGINT", "hba1c": "DOUBLE",
             "cost": "DOUBLE", "pid": "BIGINT"}


def write(frame: pd.DataFrame, path: Path, kind: str) -> Any:
    connection = duckdb.connect()
    connection.register("frame", frame)
    connection.execute(f"COPY (SELECT * FROM frame) TO '{path}' (FORMAT {kind})")
    connection.close()
    if kind == "parquet":
        return fm.fragments.Parquet(path)
    return fm.fragments.CSV(path, types={c: t for c, t in CSV_TYPES.items() if c in frame.columns})


def federate(pooled: dict, kind: str, config: str = EXACT, folder: Path | None = None
             ) -> tuple[dict[str, fm.FedData], list[fm.Server]]:
    """``api.federate`` with each server's part of each table in a file of its own (``kind``: parquet, csv,
    or pandas for the in-memory engine)."""
    folder = Path(tempfile.mkdtemp(prefix="fedmed-tables-")) if folder is None else folder
    servers = [fm.Server(config=config) for _ in range(pooled["_servers"])]
    for name in NAMES:
        at = pooled[name]["patient_id"].map(pooled["_where"])
        for i, server in enumerate(servers):
            part = pooled[name][at == i].reset_index(drop=True)
            server[name] = part if kind == "pandas" else write(part, folder / f"{name}-{i}.{kind}", kind)
    data = {name: fm.FedData([fm.Simulation(s, name, name=f"h{i}") for i, s in enumerate(servers)], config=config)
            for name in NAMES}
    return data, servers


SETTINGS = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPES = dict(persons=st.integers(1, 30), labs=st.integers(1, 90), servers=st.integers(1, 3), seed=st.integers(0, 2**16))
ENGINES = pytest.mark.parametrize("kind", ["parquet", "csv"])


# -- parity with pandas ---------------------------------------------------------------------------------


@ENGINES
@SETTINGS
@given(how=st.sampled_from(["inner", "left"]), **SHAPES)
def test_merge_equals_pandas(kind: str, how: str, persons: int, labs: int, servers: int, seed: int) -> None:
    pooled = tables(persons, labs, servers, seed)  # missing ages, a duplicated patient, labs of unknown ids
    data, _ = federate(pooled, kind)
    got = data["patients"].merge(data["labs"], on="patient_id", how=how)
    want = pooled["patients"].merge(pooled["labs"], on="patient_id", how=how)
    same_summary(got, want, ["age", "hba1c", "date"])
    assert close(float(got["hba1c"].mean()), want["hba1c"].mean())


@ENGINES
def test_missing_keys_meet_as_in_pandas(kind: str) -> None:
    pooled = {"patients": pd.DataFrame({"patient_id": [1.0, np.nan, 2.0, 2.0], "age": [50.0, 60.0, 70.0, 80.0]}),
              "labs": pd.DataFrame({"patient_id": [np.nan, 2.0, 2.0, 3.0, np.nan], "hba1c": [1.0, 2.0, 4.0, 8.0, 16.0]}),
              "visits": pd.DataFrame({"patient_id": [1.0], "cost": [1.0]}), "_where": _Everywhere(), "_servers": 1}
    data, _ = federate(pooled, kind)
    for how in ("inner", "left"):
        got = data["patients"].merge(data["labs"], on="patient_id", how=how)
        want = pooled["patients"].merge(pooled["labs"], on="patient_id", how=how)
        same_summary(got, want, ["age", "hba1c"])


class _Everywhere(dict):
    """Every key on server 0 (missing keys included, which a dict of NaN keys would not find)."""

    def __missing__(self, key: Any) -> int:
        return 0


@ENGINES
@SETTINGS
@given(**SHAPES)
def test_left_on_right_on_and_suffixes_equal_pandas(kind: str, persons: int, labs: int, servers: int, seed: int
                                                    ) -> None:
    pooled = tables(persons, labs, servers, seed)
    pooled["labs"] = pooled["labs"].rename(columns={"patient_id": "pid"}).assign(age=lambda d: d["hba1c"] * 2)
    data, _ = federate({**pooled, "labs": pooled["labs"].assign(patient_id=pooled["labs"]["pid"])}, kind)
    right = data["labs"][["pid", "age", "hba1c"]]
    got = data["patients"].merge(right, left_on="patient_id", right_on="pid", how="left", suffixes=("_p", "_l"))
    want = pooled["patients"].merge(pooled["labs"][["pid", "age", "hba1c"]], left_on="patient_id", right_on="pid",
                                    how="left", suffixes=("_p", "_l"))
    assert list(got.columns) == list(want.columns)
    same_summary(got, want, ["age_p", "age_l", "pid"])


@ENGINES
@SETTINGS
@given(descending=st.booleans(), **SHAPES)
def test_per_person_features_after_sort_values_equal_pandas(kind: str, descending: bool, persons: int, labs: int,
                                                            servers: int, seed: int) -> None:
    pooled = tables(persons, labs, servers, seed)
    data, _ = federate(pooled, kind)
    spec = {f"{f}_h": ("hba1c", f) for f in FUNCS} | {"last_date": ("date", "last"), "first_date": ("date", "first")}
    feats = data["labs"].sort_values("date", ascending=not descending).groupby("patient_id").agg(**spec)
    cohort = data["patients"].merge(feats, on="patient_id", how="left")
    want_feats = (pooled["labs"].sort_values("date", ascending=not descending, kind="stable")
                  .groupby("patient_id").agg(**spec).reset_index())
    want = pooled["patients"].merge(want_feats, on="patient_id", how="left")
    same_summary(feats, want_feats, list(spec))
    same_summary(cohort, want, list(spec))


@ENGINES
def test_first_and_last_without_a_sort_follow_the_files_rows(kind: str) -> None:
    pooled = tables(25, 120, 2, 5)
    data, _ = federate(pooled, kind)
    spec = {"first_h": ("hba1c", "first"), "last_h": ("hba1c", "last"), "last_d": ("date", "last")}
    got = data["labs"].groupby("patient_id").agg(**spec)
    where = pooled["labs"]["patient_id"].map(pooled["_where"])
    # each server's rows in its file's order: pandas on the parts, stacked
    want = pd.concat([pooled["labs"][where == i].groupby("patient_id").agg(**spec).reset_index() for i in range(2)])
    same_summary(got, want, list(spec))


@ENGINES
@SETTINGS
@given(**SHAPES)
def test_concat_equals_pandas(kind: str, persons: int, labs: int, servers: int, seed: int) -> None:
    pooled = tables(persons, labs, servers, seed)
    half = len(pooled["labs"]) // 2
    early, late = pooled["labs"].iloc[:half], pooled["labs"].iloc[half:]
    data, _ = federate({**pooled, "labs": early, "visits": late}, kind)  # "visits" holds the later labs here
    both = fm.concat([data["labs"], data["visits"]])
    want = pd.concat([early, late], ignore_index=True)
    same_summary(both, want, ["hba1c", "date"])
    feats = both.sort_values("date").groupby("patient_id").agg(n=("hba1c", "size"), last=("hba1c", "last"),
                                                                first=("hba1c", "first"))
    want_feats = want.sort_values("date", kind="stable").groupby("patient_id").agg(
        n=("hba1c", "size"), last=("hba1c", "last"), first=("hba1c", "first")).reset_index()
    same_summary(feats, want_feats, ["n", "last", "first"])


@ENGINES
def test_filters_and_derived_columns_below_and_above_a_join(kind: str) -> None:
    pooled = tables(40, 160, 2, 11)
    data, _ = federate(pooled, kind)
    labs = data["labs"]
    high = labs[labs["hba1c"] > 6.0]
    high["week"] = high["date"] // 7
    feats = high.sort_values(["week", "date"], ascending=[False, True]).groupby("patient_id").agg(
        last_week=("week", "last"), n=("hba1c", "count"), top=("hba1c", "max"))
    cohort = data["patients"].merge(feats, on="patient_id")
    old = cohort[cohort["age"] > 50]
    p = pooled["labs"][pooled["labs"]["hba1c"] > 6.0].assign(week=lambda d: d["date"] // 7)
    want_feats = p.sort_values(["week", "date"], ascending=[False, True], kind="stable").groupby("patient_id").agg(
        last_week=("week", "last"), n=("hba1c", "count"), top=("hba1c", "max")).reset_index()
    want = pooled["patients"].merge(want_feats, on="patient_id")
    same_summary(old, want[want["age"] > 50], ["last_week", "n", "top", "age"])
    got = float((cohort["top"] * cohort["n"]).sum())
    assert close(got, float((want["top"] * want["n"]).sum()))


@ENGINES
def test_three_tables_in_one_query_per_server(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pooled = tables(30, 90, 3, 1)
    data, servers = federate(pooled, kind)
    queries = []
    run = SQLFragment._run
    monkeypatch.setattr(SQLFragment, "_run", lambda self, *a, **k: queries.append(1) or run(self, *a, **k))
    labs = data["labs"].groupby("patient_id").agg(mean_h=("hba1c", "mean"))
    visits = data["visits"].groupby("patient_id").agg(total=("cost", "sum"), n_visits=("cost", "size"))
    cohort = data["patients"].merge(labs, on="patient_id", how="left").merge(visits, on="patient_id", how="left")
    want = (pooled["patients"]
            .merge(pooled["labs"].groupby("patient_id").agg(mean_h=("hba1c", "mean")).reset_index(), on="patient_id",
                   how="left")
            .merge(pooled["visits"].groupby("patient_id").agg(total=("cost", "sum"), n_visits=("cost", "size"))
                   .reset_index(), on="patient_id", how="left"))
    before = [s.traffic.requests for s in servers]
    same_summary(cohort, want, ["mean_h", "total", "n_visits", "age"])
    assert [s.traffic.requests - b for s, b in zip(servers, before)] == [1, 1, 1]
    assert len(queries) == 3  # one SQL query per server for all 13 outputs
    assert fragment_rows(servers) == {name: len(pooled[name]) for name in NAMES if kind == "parquet"}


def fragment_rows(servers: list[fm.Server]) -> dict[str, int]:
    """Rows of each table over the servers, as the fragments know them (a join's rows must not replace them)."""
    out: dict[str, int] = {}
    for server in servers:
        for name in NAMES:
            rows = server._fragments[name][0].rows
            if rows is not None:
                out[name] = out.get(name, 0) + rows
    return out


def test_the_cohort_logit_equals_the_pandas_engine_and_statsmodels() -> None:
    sm = pytest.importorskip("statsmodels.api")
    pooled = tables(300, 900, 3, 7)
    pooled["patients"]["age"] = pooled["patients"]["age"].fillna(50.0)
    fits = {}
    for kind in ("pandas", "parquet", "csv"):
        data, servers = federate(pooled, kind)
        feats = data["labs"].sort_values("date").groupby("patient_id").agg(last_hba1c=("hba1c", "last"))
        cohort = data["patients"].merge(feats, on="patient_id")
        before = [s.traffic.requests for s in servers]
        fits[kind] = fit = fm.stats.logit(cohort, y="event", X=["age", "last_hba1c"]).compute()
        used = [s.traffic.requests - b for s, b in zip(servers, before)]
        assert len(set(used)) == 1 and used[0] <= fit.iterations + 1
    want_feats = (pooled["labs"].sort_values("date", kind="stable").groupby("patient_id")
                  .agg(last_hba1c=("hba1c", "last")).reset_index())
    frame = pooled["patients"].merge(want_feats, on="patient_id").dropna(subset=["age", "last_hba1c"])
    want = sm.Logit(frame["event"], sm.add_constant(frame[["age", "last_hba1c"]])).fit(disp=0)
    for kind in ("parquet", "csv"):
        assert np.allclose(fits[kind].params.to_numpy(), fits["pandas"].params.to_numpy(), rtol=1e-9, atol=1e-12)
        assert np.allclose(fits[kind].params.to_numpy(), want.params.to_numpy(), rtol=1e-6, atol=1e-8)


# -- what is refused ----------------------------------------------------------------------------------------


def test_schema_errors_name_the_column() -> None:
    data, _ = federate(tables(5, 10, 2, 0), "parquet")
    with pytest.raises(fm.TaskFailed, match="no column 'nope'"):
        data["patients"].merge(data["labs"], left_on="nope", right_on="patient_id")["age"].sum().compute()
    with pytest.raises(fm.TaskFailed, match="same columns"):
        fm.concat([data["patients"], data["labs"]])["age"].sum().compute()
    with pytest.raises(fm.TaskFailed, match="no column 'nope'"):
        data["labs"].groupby("patient_id").agg(x=("nope", "last"))["x"].sum().compute()


def test_an_in_memory_table_and_a_parquet_table_stay_refused(tmp_path: Path) -> None:
    server = fm.Server(config=EXACT)
    server["patients"] = pd.DataFrame({"patient_id": [1, 2], "age": [50.0, 60.0]})
    server["labs"] = write(pd.DataFrame({"patient_id": [1, 1], "x": [1.0, 2.0]}), tmp_path / "labs.parquet", "parquet")
    patients, labs = (fm.FedData([fm.Simulation(server, n)], config=EXACT) for n in ("patients", "labs"))
    with pytest.raises(fm.TaskFailed, match="'labs' is a Parquet fragment and 'patients' is an in-memory fragment"):
        patients.merge(labs, on="patient_id")["x"].sum().compute()


def test_every_task_reading_a_table_is_refused_under_privacy_policies() -> None:
    pooled = tables(40, 200, 2, 0)
    data, _ = federate(pooled, "parquet", PRIVATE)
    feats = data["labs"].groupby("patient_id").agg(n=("hba1c", "count"))
    cohort = data["patients"].merge(feats, on="patient_id")
    for result in (cohort["age"].count(), feats["n"].sum(), fm.concat([data["labs"], data["labs"]])["hba1c"].count()):
        with pytest.raises(fm.PrivacyError, match=r"not judged by this server's privacy rules yet \(issue 18\)"):
            result.compute()
    assert int(data["patients"]["age"].count()) > 0  # other tasks are judged as before


# -- out of core --------------------------------------------------------------------------------------------

LAB_ROWS, PERSONS = 16_000_000, 200_000

MEASURE = """
import json, resource, sys, time
import fedmed as fm, fedmed.fragments
folder, memory = sys.argv[1], int(sys.argv[2])
config = {"methods": fm.load_config(sys.argv[3]).raw["methods"], "privacy": [], "limits": {"memory_bytes": memory}}
server = fm.Server(config=config)
server["patients"] = fm.fragments.Parquet(folder + "/patients.parquet")
server["labs"] = fm.fragments.Parquet(folder + "/labs.parquet")
patients, labs = (fm.FedData([fm.Simulation(server, n)], config=config) for n in ("patients", "labs"))
idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
feats = labs.sort_values("date").groupby("patient_id").agg(last=("hba1c", "last"), n=("hba1c", "count"))
cohort = patients.merge(feats, on="patient_id", how="left")
started = time.perf_counter()
values = fm.compute(cohort["last"].sum(), cohort["n"].sum(), cohort["age"].mean())
took = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"idle": idle, "peak": peak, "seconds": took, "values": [float(v) for v in values]}))
"""


def test_features_and_join_over_a_large_parquet_stay_out_of_core(tmp_path: Path) -> None:
    """16M lab rows (384 MB as pandas columns, ~200 MB of Parquet): the server's peak RSS grows by far less
    than the data while the features, the join and three aggregates run; the answer equals DuckDB's own."""
    connection = duckdb.connect()
    connection.execute(f"COPY (SELECT CAST(hash(i) % {PERSONS} AS BIGINT) AS patient_id, "
                       f"CAST(hash(i + 7) % 100000000 AS BIGINT) AS date, random() * 4 + 4 AS hba1c "
                       f"FROM range({LAB_ROWS}) t(i)) TO '{tmp_path}/labs.parquet' (FORMAT parquet)")
    connection.execute(f"COPY (SELECT i AS patient_id, CAST(20 + i % 70 AS DOUBLE) AS age FROM range({PERSONS}) t(i)) "
                       f"TO '{tmp_path}/patients.parquet' (FORMAT parquet)")
    last, n = connection.execute(
        f"SELECT sum(last), sum(n) FROM (SELECT arg_max(hba1c, struct_pack(date, file_row_number)) AS last, "
        f"count(hba1c) AS n FROM read_parquet('{tmp_path}/labs.parquet') GROUP BY patient_id)").fetchone()
    connection.close()
    data_bytes = LAB_ROWS * 3 * 8
    out = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path), str(256 * 2**20), EXACT], capture_output=True,
                         text=True, cwd=ROOT, check=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert np.isclose(measured["values"][0], last, rtol=1e-9) and measured["values"][1] == n
    assert measured["peak"] - measured["idle"] < data_bytes / 2, measured


def test_tables_of_one_duckdb_database_join_in_it(tmp_path: Path) -> None:
    pooled = tables(20, 60, 1, 4)
    path = tmp_path / "registry.duckdb"
    connection = duckdb.connect(str(path))
    for name in ("patients", "labs"):
        connection.register("frame", pooled[name])
        connection.execute(f"CREATE TABLE {name} AS SELECT * FROM frame")
        connection.unregister("frame")
    connection.close()
    server = fm.Server(config=EXACT)
    for name in ("patients", "labs"):
        server[name] = fm.fragments.DuckDB(path, table=name)
    patients, labs = (fm.FedData([fm.Simulation(server, n)], config=EXACT) for n in ("patients", "labs"))
    feats = labs.groupby("patient_id").agg(last=("hba1c", "last"), n=("hba1c", "size"))
    got = patients.merge(feats, on="patient_id", how="left")
    want = pooled["patients"].merge(pooled["labs"].groupby("patient_id").agg(last=("hba1c", "last"),
                                                                            n=("hba1c", "size")).reset_index(),
                                    on="patient_id", how="left")
    same_summary(got, want, ["last", "n", "age"])
