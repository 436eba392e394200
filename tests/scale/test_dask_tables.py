"""Tables derived on the servers (issue 18) over Dask fragments: the parity cases of tests/api/test_tables.py with
each server's tables held as ``dask.dataframe`` frames of several partitions. Each request is one ``dask.compute``
per server; under privacy policies every task reading a table is refused; a Dask table beside another engine's
refuses clearly."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

dd = pytest.importorskip("dask.dataframe")

import dask  # noqa: E402
import dask.base  # noqa: E402

import fedmed as fm  # noqa: E402
import fedmed.fragments  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[2]
EXACT, PRIVATE = str(ROOT / "example" / "config-exact.yaml"), str(ROOT / "example" / "config.yaml")

_spec = importlib.util.spec_from_file_location("api_test_tables", ROOT / "tests" / "api" / "test_tables.py")
api = importlib.util.module_from_spec(_spec)  # the pandas parity cases and their data, shared
_spec.loader.exec_module(api)  # type: ignore[union-attr]
tables, same_summary, close, FUNCS = api.tables, api.same_summary, api.close, api.FUNCS

NAMES = ("patients", "labs", "visits")


def federate(pooled: dict, kind: str = "dask", config: str = EXACT, partitions: int = 3
             ) -> tuple[dict[str, fm.FedData], list[fm.Server]]:
    """``api.federate`` with each server's part of each table a Dask frame of ``partitions`` partitions (``kind``
    dask), or in memory (pandas)."""
    servers = [fm.Server(config=config) for _ in range(pooled["_servers"])]
    for name in NAMES:
        at = pooled[name]["patient_id"].map(pooled["_where"])
        for i, server in enumerate(servers):
            part = pooled[name][at == i].reset_index(drop=True)
            server[name] = part if kind == "pandas" else fm.fragments.Dask(dd.from_pandas(part, npartitions=partitions))
    data = {name: fm.FedData([fm.Simulation(s, name, name=f"h{i}") for i, s in enumerate(servers)], config=config)
            for name in NAMES}
    return data, servers


SETTINGS = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPES = dict(persons=st.integers(1, 30), labs=st.integers(1, 90), servers=st.integers(1, 3), seed=st.integers(0, 2**16),
              partitions=st.integers(1, 4))


class _Everywhere(dict):
    """Every key on server 0 (missing keys included, which a dict of NaN keys would not find)."""

    def __missing__(self, key: Any) -> int:
        return 0


# -- parity with pandas ---------------------------------------------------------------------------------


@SETTINGS
@given(how=st.sampled_from(["inner", "left"]), **SHAPES)
def test_merge_equals_pandas(how: str, persons: int, labs: int, servers: int, seed: int, partitions: int) -> None:
    pooled = tables(persons, labs, servers, seed)  # missing ages, a duplicated patient, labs of unknown ids
    data, _ = federate(pooled, partitions=partitions)
    got = data["patients"].merge(data["labs"], on="patient_id", how=how)
    want = pooled["patients"].merge(pooled["labs"], on="patient_id", how=how)
    same_summary(got, want, ["age", "hba1c", "date"])
    assert close(float(got["hba1c"].mean()), want["hba1c"].mean())


def test_missing_and_duplicate_keys_meet_as_in_pandas() -> None:
    pooled = {"patients": pd.DataFrame({"patient_id": [1.0, np.nan, 2.0, 2.0, 4.0], "age": [50.0, 60.0, 70.0, 80.0, 90.0]}),
              "labs": pd.DataFrame({"patient_id": [np.nan, 2.0, 2.0, 3.0, np.nan], "hba1c": [1.0, 2.0, 4.0, 8.0, 16.0]}),
              "visits": pd.DataFrame({"patient_id": [1.0], "cost": [1.0]}), "_where": _Everywhere(), "_servers": 1}
    data, _ = federate(pooled, partitions=2)
    for how in ("inner", "left"):  # NaN meets NaN, 2 meets 2 four times, 4 and 1 find no lab (left: kept)
        got = data["patients"].merge(data["labs"], on="patient_id", how=how)
        want = pooled["patients"].merge(pooled["labs"], on="patient_id", how=how)
        same_summary(got, want, ["age", "hba1c"])


@SETTINGS
@given(**SHAPES)
def test_left_on_right_on_and_suffixes_equal_pandas(persons: int, labs: int, servers: int, seed: int,
                                                    partitions: int) -> None:
    pooled = tables(persons, labs, servers, seed)
    pooled["labs"] = pooled["labs"].rename(columns={"patient_id": "pid"}).assign(age=lambda d: d["hba1c"] * 2)
    data, _ = federate({**pooled, "labs": pooled["labs"].assign(patient_id=pooled["labs"]["pid"])},
                       partitions=partitions)
    right = data["labs"][["pid", "age", "hba1c"]]
    got = data["patients"].merge(right, left_on="patient_id", right_on="pid", how="left", suffixes=("_p", "_l"))
    want = pooled["patients"].merge(pooled["labs"][["pid", "age", "hba1c"]], left_on="patient_id", right_on="pid",
                                    how="left", suffixes=("_p", "_l"))
    assert list(got.columns) == list(want.columns)
    same_summary(got, want, ["age_p", "age_l", "pid"])


@SETTINGS
@given(descending=st.booleans(), **SHAPES)
def test_the_nine_functions_after_sort_values_equal_pandas(descending: bool, persons: int, labs: int, servers: int,
                                                           seed: int, partitions: int) -> None:
    pooled = tables(persons, labs, servers, seed)
    data, _ = federate(pooled, partitions=partitions)
    spec = {f"{f}_h": ("hba1c", f) for f in FUNCS} | {"last_date": ("date", "last"), "first_date": ("date", "first")}
    feats = data["labs"].sort_values("date", ascending=not descending).groupby("patient_id").agg(**spec)
    cohort = data["patients"].merge(feats, on="patient_id", how="left")
    want_feats = (pooled["labs"].sort_values("date", ascending=not descending, kind="stable")
                  .groupby("patient_id").agg(**spec).reset_index())
    want = pooled["patients"].merge(want_feats, on="patient_id", how="left")
    same_summary(feats, want_feats, list(spec))
    same_summary(cohort, want, list(spec))


def test_first_and_last_follow_ties_and_pandas_row_order() -> None:
    # ties in the sort column keep the rows' order (a stable sort); after a merge without a sort, pandas'
    # merge order (left rows in order, each one's matches in right order) decides first and last
    rng = np.random.default_rng(3)
    labs = pd.DataFrame({"patient_id": rng.integers(0, 6, 80), "date": rng.integers(0, 5, 80),
                         "hba1c": rng.normal(6.0, 1.0, 80).round(3)})
    labs.loc[rng.random(80) < 0.2, "date"] = np.nan
    patients = pd.DataFrame({"patient_id": [5, 3, 1, 0, 3], "age": [1.0, 2.0, 3.0, 4.0, 5.0]})
    pooled = {"patients": patients, "labs": labs, "visits": patients.rename(columns={"age": "cost"}),
              "_where": _Everywhere(), "_servers": 1}
    data, _ = federate(pooled, partitions=4)
    spec = {"f": ("hba1c", "first"), "l": ("hba1c", "last"), "fa": ("age", "first"), "la": ("age", "last")}
    for by, ascending in ((["date"], [True]), (["date", "hba1c"], [False, True]), (["date"], [False])):
        got = data["labs"].sort_values(by, ascending=ascending).groupby("patient_id").agg(f=("hba1c", "first"),
                                                                                          l=("hba1c", "last"))
        want = (labs.sort_values(by, ascending=ascending, kind="stable", na_position="last").groupby("patient_id")
                .agg(f=("hba1c", "first"), l=("hba1c", "last")).reset_index())
        same_summary(got, want, ["f", "l"])
    got = data["patients"].merge(data["labs"], on="patient_id").groupby("patient_id").agg(**spec)
    want = patients.merge(labs, on="patient_id").groupby("patient_id").agg(**spec).reset_index()
    same_summary(got, want, list(spec))
    got = data["labs"].merge(data["patients"], on="patient_id", how="left").groupby("patient_id").agg(**spec)
    want = labs.merge(patients, on="patient_id", how="left").groupby("patient_id").agg(**spec).reset_index()
    same_summary(got, want, list(spec))


@SETTINGS
@given(**SHAPES)
def test_concat_equals_pandas(persons: int, labs: int, servers: int, seed: int, partitions: int) -> None:
    pooled = tables(persons, labs, servers, seed)
    half = len(pooled["labs"]) // 2
    early, late = pooled["labs"].iloc[:half], pooled["labs"].iloc[half:]
    data, _ = federate({**pooled, "labs": early, "visits": late}, partitions=partitions)  # "visits": the later labs
    both = fm.concat([data["labs"], data["visits"]])
    want = pd.concat([early, late], ignore_index=True)
    same_summary(both, want, ["hba1c", "date"])
    spec = dict(n=("hba1c", "size"), last=("hba1c", "last"), first=("hba1c", "first"), k=("date", "nunique"))
    feats = both.sort_values("date").groupby("patient_id").agg(**spec)
    want_feats = want.sort_values("date", kind="stable").groupby("patient_id").agg(**spec).reset_index()
    same_summary(feats, want_feats, list(spec))
    unsorted = both.groupby("patient_id").agg(**spec)  # first/last in the concat's row order
    same_summary(unsorted, want.groupby("patient_id").agg(**spec).reset_index(), list(spec))


def test_filters_and_derived_columns_below_and_above_a_join() -> None:
    pooled = tables(40, 160, 2, 11)
    data, _ = federate(pooled)
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
    assert close(float((cohort["top"] * cohort["n"]).sum()), float((want["top"] * want["n"]).sum()))


@pytest.fixture
def computes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thread of every ``dask.compute`` (``.compute()`` of a collection goes through ``dask.base.compute``)."""
    log: list[int] = []
    compute = dask.base.compute

    def spy(*args: Any, **kwargs: Any) -> Any:
        log.append(threading.get_ident())
        return compute(*args, **kwargs)

    monkeypatch.setattr(dask, "compute", spy)
    monkeypatch.setattr(dask.base, "compute", spy)
    return log


def test_three_tables_in_one_dask_compute_per_request(computes: list[int]) -> None:
    pooled = tables(30, 90, 3, 1)
    data, servers = federate(pooled)
    labs = data["labs"].sort_values("date").groupby("patient_id").agg(mean_h=("hba1c", "mean"),
                                                                       last_h=("hba1c", "last"))
    visits = data["visits"].groupby("patient_id").agg(total=("cost", "sum"), n_visits=("cost", "size"))
    cohort = data["patients"].merge(labs, on="patient_id", how="left").merge(visits, on="patient_id", how="left")
    want = (pooled["patients"]
            .merge(pooled["labs"].sort_values("date", kind="stable").groupby("patient_id")
                   .agg(mean_h=("hba1c", "mean"), last_h=("hba1c", "last")).reset_index(), on="patient_id", how="left")
            .merge(pooled["visits"].groupby("patient_id").agg(total=("cost", "sum"), n_visits=("cost", "size"))
                   .reset_index(), on="patient_id", how="left"))
    before = [s.traffic.requests for s in servers]
    computes.clear()
    same_summary(cohort, want, ["mean_h", "last_h", "total", "n_visits", "age"])  # 16 outputs, one request
    assert [s.traffic.requests - b for s, b in zip(servers, before)] == [1, 1, 1]
    assert len(computes) == 3  # one dask.compute per server


def test_the_cohort_logit_equals_the_pandas_engine(computes: list[int]) -> None:
    pooled = tables(300, 900, 3, 7)
    pooled["patients"]["age"] = pooled["patients"]["age"].fillna(50.0)
    fits = {}
    for kind in ("pandas", "dask"):
        data, servers = federate(pooled, kind)
        feats = data["labs"].sort_values("date").groupby("patient_id").agg(last_hba1c=("hba1c", "last"))
        cohort = data["patients"].merge(feats, on="patient_id")
        before = [s.traffic.requests for s in servers]
        computes.clear()
        fits[kind] = fit = fm.stats.logit(cohort, y="event", X=["age", "last_hba1c"]).compute()
        used = [s.traffic.requests - b for s, b in zip(servers, before)]
        assert len(set(used)) == 1 and used[0] <= fit.iterations + 1
        assert len(computes) == (sum(used) if kind == "dask" else 0)  # one dask.compute per request
    assert np.allclose(fits["dask"].params.to_numpy(), fits["pandas"].params.to_numpy(), rtol=1e-9, atol=1e-12)


# -- what is refused ----------------------------------------------------------------------------------------


def test_schema_errors_name_the_column() -> None:
    data, _ = federate(tables(5, 10, 2, 0))
    with pytest.raises(fm.TaskFailed, match="no column 'nope'"):
        data["patients"].merge(data["labs"], left_on="nope", right_on="patient_id")["age"].sum().compute()
    with pytest.raises(fm.TaskFailed, match="same columns"):
        fm.concat([data["patients"], data["labs"]])["age"].sum().compute()
    with pytest.raises(fm.TaskFailed, match="no column 'nope'"):
        data["labs"].groupby("patient_id").agg(x=("nope", "last"))["x"].sum().compute()
    with pytest.raises(fm.TaskFailed, match="no column 'nope'"):
        data["labs"].sort_values("nope").groupby("patient_id").agg(x=("hba1c", "last"))["x"].sum().compute()


def test_every_task_reading_a_table_is_refused_under_privacy_policies() -> None:
    pooled = tables(40, 200, 2, 0)
    data, _ = federate(pooled, config=PRIVATE)
    feats = data["labs"].sort_values("date").groupby("patient_id").agg(n=("hba1c", "count"))
    cohort = data["patients"].merge(feats, on="patient_id")
    for result in (cohort["age"].count(), feats["n"].sum(), fm.concat([data["labs"], data["labs"]])["hba1c"].count()):
        with pytest.raises(fm.PrivacyError, match=r"not judged by this server's privacy rules yet \(issue 18\)"):
            result.compute()


@pytest.mark.parametrize("other", ["pandas", "parquet"])
def test_a_dask_table_beside_another_engine_is_refused(other: str, tmp_path: Path) -> None:
    pooled = tables(10, 30, 1, 0)
    server = fm.Server(config=EXACT)
    server["labs"] = fm.fragments.Dask(dd.from_pandas(pooled["labs"], npartitions=2))
    if other == "parquet":
        pytest.importorskip("duckdb")
        pooled["patients"].to_parquet(tmp_path / "patients.parquet")
        server["patients"] = fm.fragments.Parquet(tmp_path / "patients.parquet")
        described = "'patients' is a Parquet fragment"
    else:
        server["patients"] = pooled["patients"]
        described = "'patients' is an in-memory fragment"
    patients, labs = (fm.FedData([fm.Simulation(server, n)], config=EXACT) for n in ("patients", "labs"))
    with pytest.raises(fm.TaskFailed, match=f"not on several engines at once: 'labs' is a Dask fragment and {described}"):
        patients.merge(labs, on="patient_id")["age"].sum().compute()
    assert int(labs["hba1c"].count()) == pooled["labs"]["hba1c"].count()  # plain tasks as before
