"""Tables derived on the servers (issue 18, pandas, exact configs): merge, concat, sort_values and named
aggregation equal pandas on the pooled tables when persons are not spread over servers; refusals are clear."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fedmed as fm
from fedmed import wire
from fedmed.expr.optimize import bind
from fedmed.expr.rowwise import Column, Fragment, Map
from fedmed.expr.tables import GroupAgg, Merge

EXACT, PRIVATE = "example/config-exact.yaml", "example/config.yaml"
FUNCS = ("first", "last", "min", "max", "mean", "sum", "count", "nunique", "size")


# -- pooled tables, persons disjoint across servers ---------------------------------------------------


def tables(persons: int, labs: int, servers: int, seed: int) -> dict[str, pd.DataFrame]:
    """patients (a few duplicated ids), labs (several per person, some persons without, some ids unknown to
    patients), visits; unique dates, so first/last never depend on ties; a server per person."""
    rng = np.random.default_rng(seed)
    ids = np.arange(persons) * 7 + 3
    patients = pd.DataFrame({"patient_id": ids, "age": rng.integers(20, 90, persons).astype(float),
                             "event": rng.integers(0, 2, persons)})
    patients.loc[rng.random(persons) < 0.1, "age"] = np.nan
    if persons > 3:  # a duplicated key: a many-to-many part within one server
        patients = pd.concat([patients, patients.iloc[[1]]], ignore_index=True)
    known = np.concatenate([ids[: max(1, persons * 3 // 4)], [1, 2]])  # 1, 2: in labs, not in patients
    lab = pd.DataFrame({"patient_id": rng.choice(known, labs), "date": rng.permutation(labs),
                        "hba1c": rng.normal(6.5, 1.2, labs).round(2)})
    lab.loc[rng.random(labs) < 0.1, "hba1c"] = np.nan
    visits = pd.DataFrame({"patient_id": rng.choice(ids, labs // 2 + 1), "cost": rng.gamma(2.0, 50.0, labs // 2 + 1)})
    where = {int(i): int(rng.integers(0, servers)) for i in [*ids, 1, 2]}
    return {"patients": patients, "labs": lab, "visits": visits, "_where": where, "_servers": servers}  # type: ignore[dict-item]


def federate(pooled: dict, config: str = EXACT) -> tuple[dict[str, fm.FedData], list[fm.Server]]:
    servers = [fm.Server(config=config) for _ in range(pooled["_servers"])]
    where = pooled["_where"]
    for name in ("patients", "labs", "visits"):
        table = pooled[name]
        at = table["patient_id"].map(where)
        for i, server in enumerate(servers):
            server[name] = table[at == i].reset_index(drop=True)
    data = {name: fm.FedData([fm.Simulation(s, name, name=f"h{i}") for i, s in enumerate(servers)], config=config)
            for name in ("patients", "labs", "visits")}
    return data, servers


def close(a: float, b: float) -> bool:
    if b is None or (isinstance(b, float) and math.isnan(b)):  # FedMed's max of no values is None
        return a is None or (isinstance(a, float) and math.isnan(a))
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)


def same_summary(fed: fm.FedData, frame: pd.DataFrame, columns: list[str]) -> None:
    results = fm.compute(fed[columns[0]].len(), *(fed[c].count() for c in columns), *(fed[c].sum() for c in columns),
                         *(fed[c].max() for c in columns))
    n = len(columns)
    expected = [len(frame), *(frame[c].count() for c in columns), *(frame[c].sum() for c in columns),
                *(frame[c].max() if frame[c].count() else None for c in columns)]
    assert int(results[0]) == expected[0]
    for got, want in zip(results[1:], expected[1:]):
        assert close(got, want), (got, want, columns, n)


SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPES = dict(persons=st.integers(1, 40), labs=st.integers(1, 120), servers=st.integers(1, 5), seed=st.integers(0, 2**16))


# -- parity with pandas ---------------------------------------------------------------------------------


@SETTINGS
@given(how=st.sampled_from(["inner", "left"]), **SHAPES)
def test_merge_equals_pandas_on_the_pooled_tables(how: str, persons: int, labs: int, servers: int, seed: int) -> None:
    pooled = tables(persons, labs, servers, seed)
    data, _ = federate(pooled)
    got = data["patients"].merge(data["labs"], on="patient_id", how=how)
    want = pooled["patients"].merge(pooled["labs"], on="patient_id", how=how)
    same_summary(got, want, ["age", "hba1c", "date"])
    assert close(float(got["hba1c"].mean()), want["hba1c"].mean())


@SETTINGS
@given(**SHAPES)
def test_left_on_right_on_and_suffixes_equal_pandas(persons: int, labs: int, servers: int, seed: int) -> None:
    pooled = tables(persons, labs, servers, seed)
    pooled["labs"] = pooled["labs"].rename(columns={"patient_id": "pid"}).assign(age=lambda d: d["hba1c"] * 2)
    data, _ = federate({**pooled, "labs": pooled["labs"].assign(patient_id=pooled["labs"]["pid"])})
    right = data["labs"][["pid", "age", "hba1c"]]
    got = data["patients"].merge(right, left_on="patient_id", right_on="pid", how="left", suffixes=("_p", "_l"))
    want = pooled["patients"].merge(pooled["labs"][["pid", "age", "hba1c"]], left_on="patient_id", right_on="pid",
                                    how="left", suffixes=("_p", "_l"))
    assert list(got.columns) == list(want.columns)
    same_summary(got, want, ["age_p", "age_l", "pid"])


@SETTINGS
@given(**SHAPES)
def test_per_person_features_after_sort_values_equal_pandas(persons: int, labs: int, servers: int, seed: int) -> None:
    pooled = tables(persons, labs, servers, seed)
    data, _ = federate(pooled)
    spec = {f"{f}_h": ("hba1c", f) for f in FUNCS} | {"last_date": ("date", "last")}
    feats = data["labs"].sort_values("date").groupby("patient_id").agg(**spec)
    cohort = data["patients"].merge(feats, on="patient_id", how="left")
    want_feats = pooled["labs"].sort_values("date", kind="stable").groupby("patient_id").agg(**spec).reset_index()
    want = pooled["patients"].merge(want_feats, on="patient_id", how="left")
    same_summary(feats, want_feats, list(spec))
    same_summary(cohort, want, list(spec))


@SETTINGS
@given(descending=st.booleans(), **SHAPES)
def test_first_and_last_follow_the_sort(descending: bool, persons: int, labs: int, servers: int, seed: int) -> None:
    pooled = tables(persons, labs, servers, seed)
    data, _ = federate(pooled)
    spec = {"first_h": ("hba1c", "first"), "last_h": ("hba1c", "last")}
    got = data["labs"].sort_values(["date"], ascending=not descending).groupby("patient_id").agg(**spec)
    want = (pooled["labs"].sort_values("date", ascending=not descending, kind="stable")
            .groupby("patient_id").agg(**spec).reset_index())
    same_summary(got, want, ["first_h", "last_h"])


@SETTINGS
@given(**SHAPES)
def test_concat_equals_pandas(persons: int, labs: int, servers: int, seed: int) -> None:
    pooled = tables(persons, labs, servers, seed)
    half = len(pooled["labs"]) // 2
    early, late = pooled["labs"].iloc[:half], pooled["labs"].iloc[half:]
    data, servers_ = federate({**pooled, "labs": early, "visits": late})  # "visits" holds the later labs here
    both = fm.concat([data["labs"], data["visits"]])
    want = pd.concat([early, late], ignore_index=True)
    same_summary(both, want, ["hba1c", "date"])
    feats = both.sort_values("date").groupby("patient_id").agg(n=("hba1c", "size"), last=("hba1c", "last"))
    want_feats = want.sort_values("date", kind="stable").groupby("patient_id").agg(
        n=("hba1c", "size"), last=("hba1c", "last")).reset_index()
    same_summary(feats, want_feats, ["n", "last"])


def test_three_tables_in_one_request_per_server() -> None:
    pooled = tables(30, 90, 3, 1)
    data, servers = federate(pooled)
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
    assert {s.fragment for s in cohort.sources} == {"patients+labs+visits"}


def test_the_cohort_logit_equals_statsmodels_one_request_per_server_per_round() -> None:
    sm = pytest.importorskip("statsmodels.api")
    pooled = tables(300, 900, 3, 7)
    pooled["patients"]["age"] = pooled["patients"]["age"].fillna(50.0)
    data, servers = federate(pooled)
    feats = data["labs"].sort_values("date").groupby("patient_id").agg(last_hba1c=("hba1c", "last"))
    cohort = data["patients"].merge(feats, on="patient_id")
    before = [s.traffic.requests for s in servers]
    fit = fm.stats.logit(cohort, y="event", X=["age", "last_hba1c"]).compute()
    used = [s.traffic.requests - b for s, b in zip(servers, before)]
    want_feats = (pooled["labs"].sort_values("date", kind="stable").groupby("patient_id")
                  .agg(last_hba1c=("hba1c", "last")).reset_index())
    frame = pooled["patients"].merge(want_feats, on="patient_id").dropna(subset=["age", "last_hba1c"])
    want = sm.Logit(frame["event"], sm.add_constant(frame[["age", "last_hba1c"]])).fit(disp=0)
    assert np.allclose(fit.params.to_numpy(), want.params.to_numpy(), rtol=1e-6, atol=1e-8)
    assert len(set(used)) == 1 and used[0] <= fit.iterations + 1


def test_one_evaluation_serves_every_output_that_reads_a_table() -> None:
    pooled = tables(20, 60, 2, 3)
    data, servers = federate(pooled)
    feats = data["labs"].groupby("patient_id").agg(n=("hba1c", "count"))
    cohort = data["patients"].merge(feats, on="patient_id")
    before = [s.traffic.requests for s in servers]
    fm.compute(cohort["n"].mean(), cohort["age"].max(), feats["n"].sum(), data["patients"]["age"].sum())
    assert [s.traffic.requests - b for s, b in zip(servers, before)] == [1, 1]


@given(how=st.sampled_from(["inner", "left"]), key=st.sampled_from(["patient_id", "event"]), **SHAPES)
@SETTINGS
def test_a_merge_is_priced_at_no_fewer_rows_than_it_makes(how: str, key: str, persons: int, labs: int, servers: int,
                                                       seed: int) -> None:
    """The memory price of a merge (docs/security.md 2.4) bounds its rows, for per-person and many-to-many
    keys, through a per-person group-by, and is at most the other side's rows for a key unique on one side."""
    from fedmed.config import load_config
    from fedmed.server.fragments import InMemory, price_tables

    pooled = tables(persons, labs, servers, seed)
    patients = pooled["patients"].drop_duplicates("patient_id", ignore_index=True)
    lab = pooled["labs"].assign(event=pooled["labs"]["date"] % 2)
    frames = {"patients": patients, "labs": lab}
    feats = GroupAgg(Fragment("labs"), ("patient_id",), ("n",), ("hba1c",), ("count",))
    merges = [Merge(Fragment("patients"), Fragment("labs"), (key,), (key,), how=how),
              Merge(Fragment("labs"), Fragment("labs"), (key,), (key,), how=how),
              Merge(Fragment("patients"), feats, ("patient_id",), ("patient_id",), how=how)]
    request = wire.encode_table([Map("len", (Column(m, "hba1c" if i < 2 else "n"),)) for i, m in enumerate(merges)])
    nodes, outputs = wire.decode_table(request.request(), max_nodes=100)
    price = price_tables({n: InMemory(f) for n, f in frames.items()}, nodes, outputs, load_config(EXACT))
    priced = [price.costs[i].size.rows for i, n in enumerate(nodes) if isinstance(n, Merge)]
    grouped = lab.groupby("patient_id").agg(n=("hba1c", "count")).reset_index()
    made = [len(pd.merge(patients, lab, on=key, how=how)), len(pd.merge(lab, lab, on=key, how=how)),
            len(pd.merge(patients, grouped, on="patient_id", how=how))]
    assert all(p >= m for p, m in zip(priced, made)), (priced, made)
    if key == "patient_id" and how == "inner":  # one patient row per key: at most the lab rows
        assert priced[0] <= len(lab) and priced[2] <= len(lab)  # a group-by is priced at its input rows


# -- the expression: keys, wire, plan ---------------------------------------------------------------------


def test_equal_builds_give_equal_keys_and_on_equals_left_on_right_on() -> None:
    data, _ = federate(tables(5, 10, 2, 0))
    a = data["patients"].merge(data["labs"], on="patient_id")
    b = data["patients"].merge(data["labs"], left_on=["patient_id"], right_on=["patient_id"])
    assert a.node.key == b.node.key
    assert a.node.key != data["patients"].merge(data["labs"], on="patient_id", how="left").node.key
    g1 = data["labs"].groupby("patient_id").agg(x=("hba1c", "last"))
    g2 = data["labs"].groupby("patient_id").agg(x=("hba1c", "last"))
    assert g1.node.key == g2.node.key and isinstance(g1.node, GroupAgg)


def test_a_wire_round_trip_keeps_keys() -> None:
    data, _ = federate(tables(5, 10, 2, 0))
    feats = data["labs"].sort_values("date").groupby("patient_id").agg(x=("hba1c", "last"))
    cohort = data["patients"][["patient_id", "age"]].merge(feats, on="patient_id")
    task = bind(Map("sum", (Column(cohort.node, "x"),)), ("patients", "labs"))
    nodes, outputs = wire.decode_table(wire.unpack(wire.pack(wire.encode_table([task]).request())))
    assert nodes[outputs[0]].key == task.key


@pytest.mark.parametrize("bad", [
    ["merge", [["id"], ["id"], "outer", ["_x", "_y"]], [0, 0]],
    ["merge", [["id"], ["id", "b"], "inner", ["_x", "_y"]], [0, 0]],
    ["merge", [["id"], ["id"], "inner", ["_x", "y" * 40]], [0, 0]],
    ["groupagg", [["id"], ["x"], ["v"], ["apply"]], [0]],
    ["groupagg", [["id"], ["id"], ["v"], ["last"]], [0]],
    ["sort", [["d"], ["yes"]], [0]],
])
def test_bad_relations_are_refused_with_400(bad: list) -> None:
    server = fm.Server(config=EXACT)
    server["t"] = {"id": [1, 2], "v": [1.0, 2.0]}
    request = {"protocol": 1, "nodes": [["fragment", ["t"], []], bad, ["map", ["len"], [1]]], "outputs": [2]}
    status, body = server.handle(wire.pack(request))
    assert status == 400 and "node 1" in wire.unpack(body)["error"]["message"]


def test_rows_of_two_tables_meet_only_in_a_merge() -> None:
    server = fm.Server(config=EXACT)
    server["p"] = {"id": [1, 2], "age": [50.0, 60.0]}
    server["l"] = {"id": [1, 1], "x": [1.0, 2.0]}
    merged = Merge(Fragment("p"), Fragment("l"), ("id",), ("id",))
    mixed = Map("sum", (Column(merged, "x"), Column(Fragment("p"), "age")))
    status, body = server.handle(wire.pack(wire.encode_table([mixed]).request()))
    assert status == 400 and "different tables; merge them first" in wire.unpack(body)["error"]["message"]
    data, _ = federate(tables(5, 10, 2, 0))
    cohort = data["patients"].merge(data["labs"], on="patient_id")
    with pytest.raises(fm.FedMedError, match="different sources"):
        cohort["hba1c"] + data["patients"]["age"]


def test_the_plan_reads_both_fragments_in_one_request() -> None:
    data, _ = federate(tables(5, 10, 2, 0))
    feats = data["labs"].sort_values("date").groupby("patient_id").agg(last=("hba1c", "last"))
    plan = str(data["patients"].merge(feats, on="patient_id")["last"].sum().explain())
    assert "round 1 · 2 requests" in plan
    assert "  m1 := table(1)\n  m2 := m1.sort_values(['date'], ascending=[True])\n" in plan
    assert ("m3 := m2.groupby(['patient_id']).agg(last=('hba1c', 'last')).reset_index()\n"
            "  m4 := m0.merge(m3, left_on=['patient_id'], right_on=['patient_id'], how='inner', "
            "suffixes=('_x', '_y'))") in plan
    assert "['patients+labs']: send" in plan


# -- what is refused, and how it says so ------------------------------------------------------------------


def test_a_python_function_in_agg_is_refused() -> None:
    data, _ = federate(tables(5, 10, 2, 0))
    with pytest.raises(fm.ArgumentError, match="Python functions would run on the rows"):
        data["labs"].groupby("patient_id").agg(x=("hba1c", lambda s: s.iloc[-1]))
    with pytest.raises(fm.ArgumentError, match="function name among"):
        data["labs"].groupby("patient_id").agg(x=("hba1c", "median"))
    with pytest.raises(fm.ArgumentError, match="derived key"):
        data["labs"].groupby(data["labs"]["patient_id"] // 2).agg(x=("hba1c", "last"))


def test_the_released_group_by_is_unchanged() -> None:
    pooled = tables(10, 30, 2, 0)
    data, _ = federate(pooled)
    got = data["labs"].groupby("patient_id")["hba1c"].mean()
    assert isinstance(got, fm.LazyResult)
    pd.testing.assert_series_equal(got.compute(), pooled["labs"].groupby("patient_id")["hba1c"].mean())
    named = data["labs"].groupby("patient_id")["hba1c"].agg(m="mean")  # SeriesGroupBy named: a table
    assert isinstance(named, fm.FedData) and close(float(named["m"].sum()),
                                                    pooled["labs"].groupby("patient_id")["hba1c"].mean().sum())


def test_a_server_lacking_a_fragment_is_named() -> None:
    servers = [fm.Server(config=EXACT) for _ in range(3)]
    for s in servers:
        s["patients"] = {"patient_id": [1], "age": [1.0]}
        s["labs"] = {"patient_id": [1], "x": [1.0]}
    patients = fm.FedData([fm.Simulation(s, "patients", name=f"h{i}") for i, s in enumerate(servers)], config=EXACT)
    labs = fm.FedData([fm.Simulation(s, "labs", name=f"h{i}") for i, s in enumerate(servers[:2])], config=EXACT)
    with pytest.raises(fm.FedMedError, match=r"right table \(labs\) has no fragment on server h2:"):
        patients.merge(labs, on="patient_id")
    with pytest.raises(fm.FedMedError, match=r"left table \(labs\) has no fragment on server h2:"):
        labs.merge(patients, on="patient_id")
    twice = fm.FedData([fm.Simulation(servers[0], "labs"), fm.Simulation(servers[0], "patients")], config=EXACT)
    with pytest.raises(fm.ArgumentError, match="two fragments on .*fm.concat them first"):
        patients.merge(twice, on="patient_id")


def test_schema_errors_name_the_column() -> None:
    data, _ = federate(tables(5, 10, 2, 0))
    with pytest.raises(fm.TaskFailed, match="no column 'nope'"):
        data["patients"].merge(data["labs"], left_on="nope", right_on="patient_id")["age"].sum().compute()
    with pytest.raises(fm.TaskFailed, match="same columns"):
        fm.concat([data["patients"], data["labs"]])["age"].sum().compute()
    with pytest.raises(fm.ArgumentError, match="outer"):
        data["patients"].merge(data["labs"], on="patient_id", how="outer")


def test_under_privacy_policies_a_table_needs_declared_persons() -> None:
    """Rules count persons through relations: without a person column per fragment nothing can be counted."""
    pooled = tables(40, 200, 2, 0)
    data, _ = federate(pooled, PRIVATE)  # example/config.yaml declares no persons
    feats = data["labs"].groupby("patient_id").agg(n=("hba1c", "count"))
    cohort = data["patients"].merge(feats, on="patient_id")
    for result in (cohort["age"].count(), feats["n"].sum(), fm.concat([data["labs"], data["labs"]])["hba1c"].count(),
                   data["labs"].sort_values("date")["hba1c"].count()):
        with pytest.raises(fm.PrivacyError, match=r"declares no person column \('persons:' in the server's config\)"):
            result.compute()
    assert int(data["patients"]["age"].count()) > 0  # other tasks are judged as before


@pytest.mark.parametrize("kind", ["duckdb", "dask"])
def test_mixed_engines_and_dask_fragments_refuse_tables(kind: str, tmp_path) -> None:
    # a Parquet or Dask labs beside an in-memory patients is refused; a table of one engine alone runs there.
    # (Tables of DuckDB or Dask fragments alone: tests/scale/test_duckdb_tables.py, test_dask_tables.py.)
    pooled = tables(10, 30, 1, 0)
    server = fm.Server(config=EXACT)
    server["patients"] = pooled["patients"]
    if kind == "duckdb":
        pytest.importorskip("duckdb")
        path = tmp_path / "labs.parquet"
        pooled["labs"].to_parquet(path)
        server["labs"] = fm.fragments.Parquet(path)
    else:
        dd = pytest.importorskip("dask.dataframe")
        server["labs"] = fm.fragments.Dask(dd.from_pandas(pooled["labs"], npartitions=2))
    patients = fm.FedData([fm.Simulation(server, "patients")], config=EXACT)
    labs = fm.FedData([fm.Simulation(server, "labs")], config=EXACT)
    with pytest.raises(fm.TaskFailed, match="labs"):
        patients.merge(labs, on="patient_id")["age"].sum().compute()
    feature = labs.sort_values("date").groupby("patient_id").agg(x=("hba1c", "last"))["x"].sum()
    expected = pooled["labs"].sort_values("date", kind="stable").groupby("patient_id")["hba1c"].last().sum()
    assert feature.compute() == pytest.approx(expected)
    assert int(labs["hba1c"].count()) == pooled["labs"]["hba1c"].count()  # plain tasks as before


def test_local_site_pairs_tables_of_one_process() -> None:
    a = fm.Local.site({"p": {"id": [1, 2]}, "l": {"id": [1, 1, 2], "x": [1.0, 2.0, 4.0]}})
    b = fm.Local.site({"p": {"id": [3]}, "l": {"id": [3, 5], "x": [8.0, 16.0]}})
    p, lab = fm.FedData([a["p"], b["p"]]), fm.FedData([a["l"], b["l"]])
    assert float(fm.merge(p, lab, on="id")["x"].sum()) == 15.0
    assert float(p.merge(lab, on="id", how="left")["x"].count()) == 4
