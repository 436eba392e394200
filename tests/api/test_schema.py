"""pandas' schema on FedData: columns, dtypes, shape and len equal pandas' on the pooled rows; servers
that disagree are named; DuckDB and Dask fragments answer as pandas ones; row-level calls are refused;
unknown names list close matches; columns read as attributes. Under both example configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fedmed as fm
from fedmed.api.schema import ROW_LEVEL, UnknownName

ROOT = Path(__file__).resolve().parents[2]
EXACT = str(ROOT / "example" / "config-exact.yaml")
PRIVATE = str(ROOT / "example" / "config.yaml")
CONFIGS = [EXACT, PRIVATE]


def fed(df: pd.DataFrame, config: str = EXACT, cuts: tuple[float, ...] = (0.5, 0.8)) -> fm.FedData:
    n = len(df)
    b = [0] + [int(c * n) for c in cuts] + [n]
    sources = []
    for i in range(len(b) - 1):
        s = fm.Server(config=config)
        s["d"] = df.iloc[b[i]:b[i + 1]].reset_index(drop=True)
        sources.append(fm.Simulation(s, "d", name=f"h{i}"))
    return fm.FedData(sources, config=config)


def on(frames: list[pd.DataFrame], config: str = EXACT) -> fm.FedData:
    """One server per frame, as given (servers that may disagree)."""
    sources = []
    for i, frame in enumerate(frames):
        s = fm.Server(config=config)
        s["d"] = frame
        sources.append(fm.Simulation(s, "d", name=f"h{i}"))
    return fm.FedData(sources, config=config)


def synthetic(n: int = 60, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "age": rng.integers(20, 90, n),
        "bmi": np.round(rng.normal(26.0, 4.0, n), 1),  # rounded: ties
        "sex": rng.choice(["F", "M"], n),
        "grp": pd.Categorical(rng.choice(["a", "b", "c"], n)),
        "note": rng.choice(["x", "yy", None], n).astype(object),
        "smoker": rng.random(n) < 0.3,
    })
    frame.loc[rng.random(n) < 0.15, "bmi"] = np.nan
    return frame


def statsmodels_data(name: str) -> pd.DataFrame:
    sm = pytest.importorskip("statsmodels.api")
    return getattr(sm.datasets, name).load_pandas().data


SPLITS = [(), (0.3,), (0.5, 0.8), (0.1, 0.45, 0.7), (0.15, 0.3, 0.6, 0.9)]  # 1-5 uneven servers


def as_text(dtypes: pd.Series) -> pd.Series:
    """pandas' dtypes as the strings FedMed gives (an object Series, as ``DataFrame.dtypes``)."""
    return dtypes.map(str).astype(object)


def assert_schema(data: fm.FedData, pooled: pd.DataFrame) -> None:
    pd.testing.assert_index_equal(data.columns, pooled.columns)
    pd.testing.assert_series_equal(data.dtypes, as_text(pooled.dtypes))
    assert data.shape == pooled.shape
    assert len(data) == len(pooled)


# -- parity with pandas -------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("cuts", SPLITS)
@pytest.mark.parametrize("name", ["anes96", "fair", "star98"])
def test_statsmodels_data_schema_equals_pandas(name: str, cuts: tuple[float, ...], config: str) -> None:
    df = statsmodels_data(name)
    assert_schema(fed(df, config, cuts), df)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("cuts", [(0.0, 0.5), (0.4,), (0.2, 0.2, 0.7)])  # an empty fragment first / in the middle
def test_synthetic_schema_with_nans_text_categories_and_an_empty_fragment(cuts: tuple[float, ...], config: str) -> None:
    df = synthetic()
    data = fed(df, config, cuts)
    assert_schema(data, df)
    assert data["bmi"].dtype == "float64" and data["grp"].dtypes == "category"
    assert data["sex"].shape == df["sex"].shape


@pytest.mark.parametrize("config", CONFIGS)
def test_len_and_shape_of_filtered_rows_and_derived_columns(config: str) -> None:
    df = synthetic(200)
    data = fed(df, config)
    mask = df["age"] > 40
    assert len(data[data["age"] > 40]) == int(mask.sum())
    assert data[data["age"] > 40].shape == df[mask].shape
    pd.testing.assert_series_equal(data[data["age"] > 40].dtypes, as_text(df[mask].dtypes))
    assert (data["age"] / 2).dtype == str((df["age"] / 2).dtype)
    assert (data["age"] + 1).dtype == str((df["age"] + 1).dtype)
    assert (data["bmi"] > 25).dtype == "bool"


def test_len_of_a_whole_fragment_is_never_refused_by_a_subset_rule() -> None:
    df = synthetic(40)
    data = fed(df, PRIVATE, (0.5,))
    assert len(data) == 40 and data.shape == (40, 6)
    assert len(data["bmi"]) == 40  # rows, missing values included, as len(Series)


def test_pooled_dtype_follows_pd_concat() -> None:
    a = pd.DataFrame({"x": [1, 2, 3], "y": [1, 2, 3]})
    b = pd.DataFrame({"x": [1.5, 2.5], "y": np.array([1, 2], dtype="int32")})
    data = on([a, b])
    pd.testing.assert_series_equal(data.dtypes, as_text(pd.concat([a, b]).dtypes))


# -- servers that disagree ------------------------------------------------------------------------


def test_a_missing_column_names_the_servers_and_the_column() -> None:
    data = on([pd.DataFrame({"x": [1], "y": [2]}), pd.DataFrame({"x": [3]}), pd.DataFrame({"x": [4], "y": [5]})])
    with pytest.raises(fm.DataError, match=r"column 'y' is missing on h1:.*present on h0:.*h2:"):
        data.columns


def test_numbers_here_and_text_there_names_the_servers_and_the_column() -> None:
    data = on([pd.DataFrame({"x": [1, 2]}), pd.DataFrame({"x": ["a", "b"]})])
    with pytest.raises(fm.DataError, match=r"type of column 'x': int64 on h0:.*; str on h1:"):
        data.dtypes
    with pytest.raises(fm.DataError, match="column 'x'"):
        data["x"].dtype


def test_a_table_and_a_single_column_disagree() -> None:
    data = on([pd.DataFrame({"x": [1]}), pd.Series([1, 2])])
    with pytest.raises(fm.DataError, match=r"tables \(h0:.*single columns \(h1:"):
        data.dtypes


# -- one round, then cached ------------------------------------------------------------------------


def test_the_schema_is_one_request_per_server_and_asked_once() -> None:
    data = fed(synthetic(), EXACT, (0.5,))
    servers = [s.server_object for s in data.sources]
    assert list(data.columns) == list(synthetic().columns)
    assert [s.traffic.requests for s in servers] == [1, 1]
    data.dtypes, data.columns, data[data["age"] > 30].dtypes  # a filter keeps the dtypes: the same answer
    assert [s.traffic.requests for s in servers] == [1, 1]
    assert data.shape == (60, 6)  # the rows only: one more request
    assert [s.traffic.requests for s in servers] == [2, 2]


def test_shape_asks_schema_and_rows_in_one_round() -> None:
    data = fed(synthetic(), EXACT, (0.5,))
    assert data.shape == (60, 6)
    assert [s.server_object.traffic.requests for s in data.sources] == [1, 1]


# -- privacy ----------------------------------------------------------------------------------------


def test_below_k_rows_the_schema_is_refused_naming_the_server() -> None:
    data = fed(synthetic(40), PRIVATE, (0.05, 0.5))  # h0 holds 2 rows
    with pytest.raises(fm.PrivacyError, match=r"fewer than 5 rows.*h0:"):
        data.columns
    with pytest.raises(fm.PrivacyError, match="h0:"):
        len(data)


def test_a_server_answers_names_and_dtypes_only() -> None:
    server = fm.Server(config=PRIVATE)
    server["d"] = synthetic()
    data = fm.FedData([fm.Simulation(server, "d")], config=PRIVATE)
    answer = data.schema().compute()
    assert answer == {c: [str(t)] for c, t in synthetic().dtypes.items()}


# -- out-of-core fragments ---------------------------------------------------------------------------


def _numbers_and_text() -> pd.DataFrame:
    df = synthetic(80).drop(columns=["grp", "note"])  # text as pandas' default str; Parquet has no categories
    df["count"] = np.arange(80, dtype="int32")
    df["ratio"] = df["bmi"].astype("float32")
    return df


def test_duckdb_parquet_fragments_answer_as_pandas(tmp_path: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    df = _numbers_and_text()
    parts = [df.iloc[:30], df.iloc[30:]]
    frames, files = [], []
    for i, part in enumerate(parts):
        path = tmp_path / f"p{i}.parquet"
        connection = duckdb.connect()
        connection.register("frame", part)
        connection.execute(f"COPY (SELECT * FROM frame) TO '{path}' (FORMAT parquet)")
        connection.close()
        files.append(fm.fragments.Parquet(path))
        frames.append(part)
    for config in CONFIGS:
        disk, memory = on(files, config), on(frames, config)
        pd.testing.assert_series_equal(disk.dtypes, memory.dtypes)
        pd.testing.assert_series_equal(disk.dtypes, as_text(pd.read_parquet(tmp_path / "p0.parquet").dtypes))
        assert disk.shape == memory.shape == df.shape
        for expr in (lambda d: d["age"] / 2, lambda d: d["age"] + 1, lambda d: d["bmi"] > 1, lambda d: d["sex"].fillna("F")):
            assert expr(disk).dtype == expr(memory).dtype
    with pytest.raises(fm.DataError, match="column 'age'"):
        on([files[0], fm.fragments.InMemory(df.assign(age=df["age"].astype(str)))]).dtypes


def test_dask_fragments_answer_as_pandas() -> None:
    dd = pytest.importorskip("dask.dataframe")
    from fedmed.fragments.dask import Dask

    df = _numbers_and_text()
    parts = [df.iloc[:30], df.iloc[30:]]
    lazy = on([Dask(dd.from_pandas(p, npartitions=2)) for p in parts])
    memory = on(parts)
    pd.testing.assert_series_equal(lazy.dtypes, memory.dtypes)
    assert lazy.shape == memory.shape == df.shape
    assert (lazy["age"] / 2).dtype == (memory["age"] / 2).dtype
    # a Dask fragment reports no rows behind its results: the example's policies refuse, as for every aggregate
    with pytest.raises(fm.PrivacyError):
        on([Dask(dd.from_pandas(p, npartitions=2)) for p in parts], PRIVATE).dtypes


# -- row-level calls ----------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", sorted(set(ROW_LEVEL) - {"__iter__", "iloc", "values"}))
def test_row_level_methods_are_refused(name: str, config: str) -> None:
    data = fed(synthetic(), config)
    for target in (data, data["age"]):
        with pytest.raises(fm.RowLevelError, match="rows never leave a server; use "):
            getattr(target, name)()


@pytest.mark.parametrize("config", CONFIGS)
def test_row_level_properties_and_iteration_are_refused(config: str) -> None:
    data = fed(synthetic(), config)
    with pytest.raises(fm.RowLevelError, match=r"data.values would show rows"):
        data.values
    with pytest.raises(fm.RowLevelError, match=r"data.iloc would show rows.*row filter"):
        data.iloc[0]
    with pytest.raises(fm.RowLevelError, match="iterating over data"):
        list(data["age"])
    with pytest.raises(fm.RowLevelError, match="Python function cannot run on a server"):
        data["age"].apply(lambda v: v + 1)
    with pytest.raises(fm.RowLevelError, match=r"fm\.stats\.reconstruct"):
        data.head(3)
    assert issubclass(fm.RowLevelError, fm.FedMedError)


# -- unknown names and attribute access ------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS)
def test_columns_read_as_attributes(config: str) -> None:
    df = synthetic(100)
    data = fed(df, config)
    assert float(data.age.sum()) == float(df["age"].sum())
    assert data.bmi.node.key == data["bmi"].node.key
    assert hasattr(data, "sex") and not hasattr(data, "sexx")


def test_unknown_names_list_close_matches_not_the_whole_config() -> None:
    data = fed(synthetic())
    with pytest.raises(UnknownName) as caught:
        data.bmii
    message = str(caught.value)
    assert "neither" not in message and "no column or method 'bmii'" in message
    assert "did you mean: bmi" in message
    suggestions = message.split("did you mean: ")[1].rstrip("?").split(", ")
    assert 1 <= len(suggestions) <= 5
    assert "glm_step" not in message and "comoment_matrix" not in message
    assert isinstance(caught.value, AttributeError) and isinstance(caught.value, fm.FedMedError)
    with pytest.raises(UnknownName, match="did you mean: .*describe|did you mean: .*dtypes"):
        data.dtypess


def test_at_most_five_suggestions_even_when_columns_alone_match_more() -> None:
    data = on([pd.DataFrame({f"bmi{i}": [1.0] for i in range(8)})])
    with pytest.raises(UnknownName) as caught:
        data.bmi
    assert str(caught.value).count("bmi") == 6  # the name asked for and five columns


def test_a_column_is_not_read_as_an_attribute_of_a_column() -> None:
    data = fed(synthetic())
    servers = [s.server_object for s in data.sources]
    with pytest.raises(AttributeError, match="no column or method 'age'"):
        data["bmi"].age
    assert [s.traffic.requests for s in servers] == [0, 0, 0]  # a column's structure says it has no columns
    with pytest.raises(AttributeError, match="single column has no .columns"):
        data["bmi"].columns


def test_unknown_name_when_the_columns_cannot_be_read_says_why() -> None:
    data = fed(synthetic(40), PRIVATE, (0.05, 0.5))
    with pytest.raises(UnknownName, match="its columns could not be read: .*fewer than 5 rows"):
        data.agee
