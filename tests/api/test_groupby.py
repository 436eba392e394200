"""data.groupby(...): pandas' group-bys from per-group partials, one round, every group a privacy cell."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fedmed as fm

EXACT, PRIVATE = "example/config-exact.yaml", "example/config.yaml"
CUTS = {1: (), 2: (0.7,), 3: (0.5, 0.8), 5: (0.1, 0.15, 0.6, 0.62)}


def fed(df: pd.DataFrame, config: str = EXACT, cuts: tuple = (0.5, 0.8), kind: str = "pandas") -> fm.FedData:
    n = len(df)
    b = [0] + [int(c * n) for c in cuts] + [n]
    sources = []
    for i in range(len(b) - 1):
        s = fm.Server(config=config)
        part = df.iloc[b[i]:b[i + 1]].reset_index(drop=True)
        s["d"] = _fragment(part, kind)
        sources.append(fm.Simulation(s, "d", name=f"h{i}"))
    return fm.FedData(sources, config=config)


def _fragment(part: pd.DataFrame, kind: str):
    if kind == "dask":
        import dask.dataframe as dd

        from fedmed.fragments.dask import Dask

        return Dask(dd.from_pandas(part, npartitions=2))
    if kind == "duckdb":
        import tempfile

        path = f"{tempfile.mkdtemp()}/d.parquet"
        part.to_parquet(path)
        return fm.fragments.Parquet(path)
    return part


def same(got, want, rtol: float = 1e-9) -> None:
    if isinstance(want, pd.Series):
        pd.testing.assert_series_equal(got, want, check_index_type=False, rtol=rtol)
    else:
        pd.testing.assert_frame_equal(got, want, check_index_type=False, check_column_type=False, rtol=rtol)


# -- data ---------------------------------------------------------------------------------------


def anes96() -> pd.DataFrame:
    import statsmodels.api as sm

    return sm.datasets.anes96.load_pandas().data


def fair() -> pd.DataFrame:
    import statsmodels.api as sm

    return sm.datasets.fair.load_pandas().data


def synthetic(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """NaN keys and values, ties, a categorical key, a text column."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "sex": rng.choice(["F", "M", None], n, p=[0.48, 0.48, 0.04]),
        "smoker": rng.choice([0.0, 1.0, np.nan], n, p=[0.6, 0.35, 0.05]),
        "grade": pd.Categorical(rng.choice(["I", "II", "III"], n)),
        "age": rng.integers(18, 90, n),
        "bmi": rng.normal(26, 4, n).round(1),
        "town": rng.choice(["Bern", "Basel", "Chur"], n),
    })
    df.loc[rng.random(n) < 0.1, "bmi"] = np.nan
    return df


#: (group-by expression, on what) each compared with pandas on the pooled rows; `g` is the group-by.
IDIOMS = [
    "g[V].mean()", "g[V].sum()", "g[V].count()", "g.size()", "g[V].std()", "g[V].var(ddof=0)", "g[V].sem()",
    "g[V].min()", "g[V].max()", "g[V].median()", "g[V].quantile(0.9)", "g[V].quantile([0.25, 0.75])",
    "g[V].describe()", "g[V].nunique()", "g[V].agg(['mean', 'std', 'count'])", "g[[V, W]].mean()",
    "g[[V, W]].agg(['min', 'max'])", "g[[V, W]].agg({V: 'mean', W: ['min', 'max']})", "g[[V, W]].agg({V: 'sum', W: 'max'})",
    "g[V].value_counts().sort_index()", "g[[V, W]].describe()",
]


def check(df: pd.DataFrame, data: fm.FedData, by, fed_by, v: str, w: str, idioms=IDIOMS) -> None:
    results = []
    for idiom in idioms:
        g = data.groupby(fed_by)
        results.append(eval(idiom, {"g": g, "V": v, "W": w}))
    got = fm.compute(*results)
    for idiom, value in zip(idioms, got):
        want = eval(idiom, {"g": df.groupby(by), "V": v, "W": w})
        try:
            same(value, want)
        except AssertionError as exc:
            raise AssertionError(f"{idiom}: {exc}") from None


@pytest.mark.parametrize("servers", [1, 2, 3, 5])
def test_anes96_by_vote_and_education(servers):
    df = anes96()
    check(df, fed(df, cuts=CUTS[servers]), ["vote", "educ"], ["vote", "educ"], "age", "income")


@pytest.mark.parametrize("servers", [1, 3])
def test_fair_by_religious(servers):
    df = fair()
    check(df, fed(df, cuts=CUTS[servers]), "religious", "religious", "affairs", "yrs_married")


def test_synthetic_nan_keys_values_and_an_empty_fragment():
    df = synthetic()
    data = fed(df, cuts=(0.0, 0.3, 0.3, 0.9))  # first and third fragments empty
    check(df, data, "sex", "sex", "bmi", "age")
    check(df, data, ["sex", "smoker"], ["sex", "smoker"], "bmi", "age")


def test_categorical_key_observed_groups_sorted():
    df = synthetic()
    df["grade"] = df["grade"].cat.remove_categories(["II"]).cat.add_categories(["IV"])  # unobserved, and NaN keys
    # the groups of pandas' CategoricalIndex (observed=True), by label: FedMed's index holds the labels
    check(df.astype({"grade": object}), fed(df), "grade", "grade", "bmi", "age", IDIOMS[:6])


def test_derived_key_named_after_its_column():
    df = synthetic()
    data = fed(df)
    got = data.groupby(data["age"] // 10 * 10)["bmi"].agg(["mean", "count"]).compute()
    same(got, df.groupby(df["age"] // 10 * 10)["bmi"].agg(["mean", "count"]))
    got = data.groupby([data["sex"], data["bmi"] > 25])["age"].mean().compute()
    same(got, df.groupby([df["sex"], df["bmi"] > 25])["age"].mean())


def test_filtered_rows_and_text_values():
    df = synthetic()
    data = fed(df)
    older = data[data["age"] > 40]
    same(older.groupby("sex")["bmi"].mean().compute(), df[df["age"] > 40].groupby("sex")["bmi"].mean())
    idioms = ["g[V].min()", "g[V].max()", "g[V].count()", "g[V].nunique()", "g[V].value_counts().sort_index()"]
    check(df, data, "sex", "sex", "town", "town", idioms)


def test_whole_frame_needs_value_columns_or_the_schema():
    df = synthetic()[["sex", "age", "bmi"]]
    data = fed(df)
    try:
        got = data.groupby("sex").mean().compute()
    except fm.ArgumentError as exc:  # without fedmed.api.schema: the message says what to select
        assert "data.groupby('sex')[['bmi', 'age']]" in str(exc)
    else:
        same(got, df.groupby("sex").mean())


@pytest.mark.parametrize("kind", ["dask", "duckdb"])
def test_out_of_core_engines_equal_the_pandas_fragment(kind):
    df = synthetic().astype({"grade": str})
    idioms = ["g[V].agg(['mean', 'std', 'min', 'max', 'sum', 'count'])", "g.size()", "g[V].median()",
              "g[[V, W]].nunique()", "g[V].value_counts().sort_index()"]
    check(df, fed(df, kind=kind), ["sex", "grade"], ["sex", "grade"], "bmi", "age", idioms)
    data = fed(df, kind=kind)
    got = data.groupby(data["age"] // 10)["town"].agg(["min", "max", "count"]).compute()
    same(got, df.groupby(df["age"] // 10)["town"].agg(["min", "max", "count"]))


def test_one_request_per_server_for_five_statistics_over_twenty_groups():
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"g": rng.integers(0, 20, 2000), "x": rng.normal(size=2000)})
    data = fed(df, cuts=(0.3, 0.7))
    result = data.groupby("g")["x"].agg(["mean", "std", "count", "min", "max"])
    assert "1 round" in result.explain()
    before = [s.traffic.requests for s in data.sources]
    same(result.compute(), df.groupby("g")["x"].agg(["mean", "std", "count", "min", "max"]))
    assert [s.traffic.requests - b for s, b in zip(data.sources, before)] == [1, 1, 1]


def test_refused_calls_say_what_to_do():
    data = fed(synthetic())
    with pytest.raises(fm.ArgumentError, match="never leave a server"):
        list(data.groupby("sex"))
    with pytest.raises(fm.ArgumentError, match="Python functions"):
        data.groupby("sex")["bmi"].agg(np.mean)
    with pytest.raises(fm.ArgumentError, match="defaults"):
        data.groupby("sex", dropna=False)
    with pytest.raises(AttributeError, match="offers"):
        data.groupby("sex")["bmi"].transform


# -- privacy ------------------------------------------------------------------------------------


def patients(n: int = 120, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": np.arange(n), "sex": rng.choice(["F", "M"], n),
                         "age": rng.integers(20, 30, n).astype(float), "lone": [1] + [0] * (n - 1)})


def quietly(result):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return result.compute()


def test_group_by_id_withholds_every_group():
    data = fed(patients(), PRIVATE)
    got = quietly(data.groupby("id")["age"].mean())
    assert got.dropna().empty


def test_a_derived_key_that_singles_out_one_patient_is_refused():
    data = fed(patients(), PRIVATE)
    with pytest.raises(fm.PrivacyError):
        data.groupby(data["id"] == 17)["age"].mean().compute()


def test_complement_a_group_of_one_next_to_its_complement_is_withheld_too():
    df = patients()
    data = fed(df, PRIVATE, cuts=())
    got = quietly(data.groupby("lone")["age"].agg(["mean", "sum", "count"]))
    assert got.isna().all().all()  # the lone patient's group and the n-1 beside it (total - rest = lone)


def test_groups_of_k_or_more_are_released_exactly_and_small_ones_are_nan():
    df = patients(300)
    df["site"] = np.where(df["id"] < 3, "rare", df["sex"])
    data = fed(df, PRIVATE)
    got = quietly(data.groupby("site")["age"].agg(["mean", "count", "sum"]))
    want = df.groupby("site")["age"].agg(["mean", "count", "sum"])
    assert "rare" not in got.index.dropna() or got.loc["rare"].isna().all()
    released = got.dropna()
    same(released, want.loc[released.index].astype(released.dtypes.to_dict()))
    assert not released.empty


def test_pooled_group_is_nan_where_any_server_withheld_it():
    df = patients(200)
    df["site"] = np.where(df["id"] % 10 == 0, "X", df["sex"])  # 20 rows of X, 2 of them on the small server
    data = fed(df, PRIVATE, cuts=(0.45, 0.9))
    got = quietly(data.groupby("site")["age"].mean())
    assert "X" in got.index and np.isnan(got["X"])  # released by two servers: never their mean alone


def test_extremes_per_group_follow_the_holders_rule():
    df = patients(200)
    df["age"] = 40.0
    df.loc[df["id"] == 7, "age"] = 99.0  # one patient's max: withheld; the min 40 is held by many
    got = quietly(fed(df, PRIVATE, cuts=()).groupby("sex")[["age"]].agg(["min", "max"]))
    assert (got[("age", "min")] == 40.0).all()
    sex = df.loc[df["id"] == 7, "sex"].item()
    assert np.isnan(got.loc[sex, ("age", "max")])


def test_a_dominated_group_sum_is_withheld():
    df = patients(200)
    df["income"] = 1.0
    df.loc[df["id"] == 3, "income"] = 1e6
    got = quietly(fed(df, PRIVATE, cuts=()).groupby("sex")["income"].sum())
    sex = df.loc[df["id"] == 3, "sex"].item()
    assert np.isnan(got.get(sex, np.nan))


def test_per_value_counts_are_cells_too():
    df = patients(300)
    got = quietly(fed(df, PRIVATE, cuts=()).groupby("sex")["age"].median())
    want = df.groupby("sex")["age"].median()
    assert got.notna().any()  # integer ages: enough ties for cells of k
    for sex, value in got.items():  # exact where every count was released, else NaN
        assert np.isnan(value) or value == want[sex]


# -- properties ---------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(st.tuples(st.integers(0, 4), st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False))),
                  min_size=0, max_size=40),
    cut=st.floats(0, 1),
)
def test_numeric_aggregates_equal_pandas(rows, cut):
    df = pd.DataFrame(rows, columns=["k", "x"]).astype({"k": "int64", "x": "float64"})
    data = fed(df, cuts=(cut,))
    stats = ["mean", "sum", "count", "min", "max", "std", "var", "size", "median"]
    got = data.groupby("k")["x"].agg(stats).compute()
    want = df.groupby("k")["x"].agg(stats)
    pd.testing.assert_frame_equal(got, want, check_index_type=False, check_column_type=False, check_dtype=False,
                                  rtol=1e-7, atol=1e-6)


def test_dask_runs_a_group_by_and_its_counts_in_one_compute(monkeypatch):
    import dask

    computes = []
    compute = dask.base.compute

    def spy(*args, **kwargs):
        computes.append(1)
        return compute(*args, **kwargs)

    monkeypatch.setattr(dask, "compute", spy)
    monkeypatch.setattr(dask.base, "compute", spy)
    df = synthetic()
    got = fed(df, kind="dask", cuts=()).groupby("sex")["bmi"].describe().compute()
    assert len(computes) == 1  # one server, one request: the partials and the per-value counts together
    same(got, df.groupby("sex")["bmi"].describe())


def test_duckdb_compiles_a_group_by_into_the_request_statement(monkeypatch):
    import duckdb

    statements = []
    execute = duckdb.DuckDBPyConnection.execute

    def spy(self, query, *args, **kwargs):
        statements.append(query)
        return execute(self, query, *args, **kwargs)

    df = synthetic().astype({"grade": str})
    data = fed(df, kind="duckdb", cuts=())
    monkeypatch.setattr(duckdb.DuckDBPyConnection, "execute", spy)
    got = data.groupby(["sex", "grade"])["bmi"].agg(["mean", "count", "max", "median"]).compute()
    same(got, df.groupby(["sex", "grade"])["bmi"].agg(["mean", "count", "max", "median"]))
    # one statement for the request: the partials and the per-value counts as two GROUP BY subqueries
    queries = [q for q in statements if not q.startswith("SET ")]  # the memory budget's settings aside
    assert len(queries) == 1 and queries[0].count("GROUP BY") == 2
