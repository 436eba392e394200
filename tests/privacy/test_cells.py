"""Count tables that cannot leak through their own cells (``fedmed.privacy.cells``).

Unit tests of the rules on hand-made tables (primary and secondary
suppression, ``count_below``'s two sides and differences, per-column sets,
counts that are not whole numbers), and attacks through a real
``fm.Server`` under example/config.yaml (Anonymity k=5): histogram edges that
are NaN, decreasing or repeated; a withheld cell recovered from the total or
the margins; the max found by bisection on ``count_below``; a whole-table
``unique()`` of one row. The same attacks run on a DuckDB Parquet fragment
and edges are checked on a Dask one. An attack may end in a ``PrivacyError``
(another Anonymity rule refusing the query as a whole) or in a table that
gives nothing away; never in a small count, a wrong number or a 500.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

import fedmed as fm
from fedmed.errors import TaskFailed
from fedmed.ops import private
from fedmed.privacy.cells import KnownSizes, DisclosureSizes, Withheld, withhold_cells

_spec = importlib.util.spec_from_file_location("redteam_support", Path(__file__).with_name("redteam_support.py"))
rt = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(rt)  # type: ignore[union-attr]

K = 5
T = rt.TARGET_ID
EXACT_CONFIG = rt.ROOT / "example" / "config-exact.yaml"
COLUMNS = "$columns"


# -- the rules on hand-made tables --------------------------------------------------------------


def test_a_single_small_cell_is_protected_by_the_smallest_released_one():
    kept, withheld = withhold_cells("value_counts", [["A", 40], ["B", 9], ["C", 2]], K, KnownSizes(total=51))
    assert kept == [["A", 40], [None, None], [None, None]]
    assert withheld == Withheld(small=1, protective=1)


def test_a_two_valued_table_with_one_small_cell_is_withheld_whole():
    # (dx == "RARE").value_counts(): total minus the released cell would be the rare count
    kept, withheld = withhold_cells("value_counts", [[False, 199], [True, 1]], K, KnownSizes(total=200))
    assert kept == [[None, None], [None, None]]
    assert withheld == Withheld(small=1, protective=1)


def test_small_cells_that_already_sum_to_k_need_no_protection():
    kept, withheld = withhold_cells("value_counts", [["A", 40], ["B", 3], ["C", 2], ["D", 9]], K, KnownSizes())
    assert kept == [["A", 40], [None, None], [None, None], ["D", 9]]
    assert withheld == Withheld(small=2)


def test_histogram_zeros_are_withheld_first_when_a_small_bin_needs_protection():
    # one row, bins covering everything: releasing the empty bins would place it
    kept, withheld = withhold_cells("histogram", {"counts": [0, 1, 0], "edges": [0, 50, 100, 130]}, K, KnownSizes())
    assert kept == {"counts": [None, None, None], "edges": [0, 50, 100, 130]}
    assert withheld == Withheld(small=1, protective=2)
    # nothing small: zeros are true zeros and stay
    kept, withheld = withhold_cells("histogram", {"counts": [0, 7, 0], "edges": [0, 1, 2, 3]}, K, KnownSizes())
    assert kept["counts"] == [0, 7, 0] and not withheld


@pytest.mark.parametrize("bad", [-3, float("nan"), 2.5, None, True, "7", float("inf")])
def test_a_count_that_is_not_a_non_negative_whole_number_is_withheld(bad):
    kept, _ = withhold_cells("histogram", {"counts": [50, bad, 60, 70], "edges": [0, 1, 2, 3, 4]}, K, KnownSizes())
    assert kept["counts"][1] is None
    # and it protects nothing: another bin goes with it
    assert kept["counts"].count(None) >= 2
    kept, _ = withhold_cells("value_counts", [["A", 50], ["B", bad], ["C", 60]], K, KnownSizes())
    assert [None, None] in kept and kept.count([None, None]) >= 2


def test_crosstab_protects_every_row_and_column():
    # rows dx, columns age > 50: the RARE cell, then its column, then the rows and columns that touch
    table = [["A", False, 30], ["A", True, 40], ["B", False, 20], ["B", True, 25], ["C", False, 31],
             ["C", True, 44], ["RARE", True, 1]]
    kept, withheld = withhold_cells("crosstab", table, K, KnownSizes())
    assert_crosstab_protected(table, kept)
    assert withheld.small == 1 and withheld.protective >= 3
    assert ["C", False, 31] in kept and ["C", True, 44] in kept  # not everything is lost


def test_count_below_releases_only_counts_with_k_rows_on_each_side_and_apart():
    counts = [0, 1, 4, 5, 6, 10, 12, 20, 195, 196, 200]
    kept, withheld = withhold_cells("count_below", counts, K, KnownSizes(total=200))
    assert kept == [None, None, None, 5, None, 10, None, 20, 195, None, None]
    assert withheld.small + withheld.protective == 7
    # unknown total: nothing can be judged on the upper side
    assert withhold_cells("count_below", [50, 100], K, KnownSizes())[0] == [None, None]
    # equal counts (no row between two thresholds) are not a difference to hide
    assert withhold_cells("count_below", [50, 50, 100], K, KnownSizes(total=200))[0] == [50, 50, 100]


def test_set_elements_need_k_rows_in_their_own_column_and_unknown_ones_are_withheld():
    value = {COLUMNS: {"dx": ["A", "RARE"], "age": [77, 30], "y": [1.5]}}
    sizes = {("dx",): {"A": 50, "RARE": 1}, ("age",): {30: 6}, ("y",): {}}

    class PerColumn(KnownSizes):
        def cells(self, path):
            return sizes[path]

    kept, withheld = withhold_cells("unique", value, K, PerColumn())
    assert kept == {COLUMNS: {"dx": ["A"], "age": [30], "y": []}}
    assert withheld == Withheld(small=3)


def test_per_column_results_are_judged_column_by_column_and_nested():
    value = {COLUMNS: {"a": [["x", 40], ["y", 1]], "b": {COLUMNS: {"c": [["z", 50]]}}}}
    kept, withheld = withhold_cells("value_counts", value, K, KnownSizes())
    assert kept == {COLUMNS: {"a": [[None, None], [None, None]], "b": {COLUMNS: {"c": [["z", 50]]}}}}
    assert withheld == Withheld(small=1, protective=1)


def test_big_cells_are_released_unchanged_and_nothing_is_noted():
    tables = {
        "value_counts": [["A", 40], ["B", 9], ["C", 12]],
        "crosstab": [["A", 1, 40], ["A", 2, 9], ["B", 1, 12], ["B", 2, 6]],
        "histogram": {"counts": [0, 40, 9, 0], "edges": [0, 1, 2, 3, 4]},
        "count_below": [0 + 5, 40, 49, 95],
        "set": ["A", "B"],
    }
    for op, table in tables.items():
        kept, withheld = withhold_cells(op, table, K, KnownSizes(total=100, elements={"A": 5, "B": 90}
                                                                   if op == "set" else None))
        assert kept == table and not withheld and withheld.note(op, K) is None, op


def test_notes_count_cells_never_rows():
    note = Withheld(small=1, protective=1).note("value_counts", K)
    assert note.startswith("1 cell of fewer than 5 rows suppressed, and 1 more")
    assert "persons" in Withheld(small=2).note("histogram", K, "persons")
    assert Withheld(small=2, protective=1).note("count_below", K).startswith("3 counts withheld: fewer than 5 rows")


@pytest.mark.parametrize("op, value", [("value_counts", {"A": 3}), ("histogram", [1, 2]), ("crosstab", [["A", 1]]),
                                       ("count_below", 7), ("min", 3)])
def test_a_table_of_another_shape_fails_the_task_not_the_server(op, value):
    with pytest.raises(TaskFailed):
        withhold_cells(op, value, K, KnownSizes(total=10))


def test_row_sizes_count_set_elements_in_each_column_of_the_input():
    class Disclosure:
        inputs = [pd.DataFrame({"dx": ["A"] * 6 + ["RARE", None], "y": [1.0] * 5 + [2.0, np.nan, np.nan]})]

        def contributing(self) -> int:
            return 8

    sizes = DisclosureSizes(Disclosure(), "unique")
    assert sizes.cells(("dx",)) == {"A": 6, "RARE": 1}
    assert sizes.cells(("y",)) == {1.0: 5, 2.0: 1}
    assert sizes.cells(("nope",)) == {} and sizes.cells(()) == {}
    assert sizes.total(("dx",)) == 8
    assert DisclosureSizes(Disclosure(), "histogram").cells(()) is None
    assert DisclosureSizes(None, "set").cells(()) == {} and DisclosureSizes(None, "count_below").total(()) is None


def test_disclosure_sizes_count_distinct_persons_where_declared():
    class Disclosure:
        inputs = [pd.Series([1, 1, 1, 2, 2, 2, 2, 2, np.nan]), [1.5]]
        persons = pd.Series([0, 0, 0, 1, 2, 3, 4, None, 5])  # a row without a key is a person of its own

        def contributing(self) -> int:
            return 8

    assert DisclosureSizes(Disclosure(), "value_counts").cells(()) == {1: 1, 2: 5}
    assert DisclosureSizes(Disclosure(), "unique").cells(()) == {1: 1, 2: 5}
    below = DisclosureSizes(Disclosure(), "count_below")
    assert below.cells(()) == {0: 1} and below.total(()) == 6


# -- properties: no withheld cell can be worked out ------------------------------------------------


cell_counts = st.lists(st.integers(0, 30), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(cell_counts)
def test_one_dimensional_tables_never_give_a_small_cell_away(counts):
    kept, _ = withhold_cells("histogram", {"counts": counts, "edges": list(range(len(counts) + 1))}, K, KnownSizes())
    released = kept["counts"]
    hidden = [c for c, r in zip(counts, released) if r is None]
    assert all(r is None or r == c for c, r in zip(counts, released))  # released cells are exact
    assert all(r is None or not 0 < r < K for r in released)
    # the total minus the released cells is the hidden sum: of at least k rows over two cells, or everything
    assert not hidden or (len(hidden) >= 2 and sum(hidden) >= K) or all(r is None for r in released)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.tuples(st.sampled_from("abcd"), st.sampled_from("wxyz")), st.integers(1, 25), min_size=1))
def test_crosstabs_never_give_a_small_cell_away_by_row_or_column(cells):
    table = [[a, b, n] for (a, b), n in cells.items()]
    kept, _ = withhold_cells("crosstab", table, K, KnownSizes())
    assert_crosstab_protected(table, kept)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 60), min_size=1, max_size=10), st.integers(0, 20))
def test_count_below_never_releases_a_count_near_an_edge_or_a_neighbour(counts, above):
    total = max(counts) + above
    kept, _ = withhold_cells("count_below", counts, K, KnownSizes(total=total))
    released = sorted({c for c in kept if c is not None})
    assert all(K <= c <= total - K for c in released)
    assert all(b - a >= K for a, b in zip(released, released[1:]))
    assert all(r is None or r == c for c, r in zip(counts, kept))


def assert_crosstab_protected(table: list[list[Any]], kept: list[list[Any]]) -> None:
    hidden = [i for i, entry in enumerate(kept) if entry == [None, None, None]]
    assert all(kept[i] == table[i] for i in range(len(table)) if i not in hidden)
    for axis in (0, 1, None):
        groups: dict[Any, list[int]] = {}
        for i, entry in enumerate(table):
            groups.setdefault(None if axis is None else entry[axis], []).append(i)
        for members in groups.values():
            out = [table[i][2] for i in members if i in hidden]
            everything = len(out) == len(members)
            assert not out or everything or (len(out) >= 2 and sum(out) >= K), (axis, members, kept)


# -- attacks through a server running example/config.yaml ---------------------------------------


@pytest.fixture(params=["simulation", "http"])
def example(request, serve):
    """The example config over the red-team cohort, in process or over a real waitress server."""
    frame = rt.cohort()
    server, data = rt.serve(rt.EXAMPLE_CONFIG, frame)
    if request.param == "http":
        data = fm.FedData([fm.Remote(ip=serve(server).url, fragment="cohort")], config=rt.EXAMPLE_CONFIG)
    return server, data, frame


BAD_EDGES = {
    "NaN edge": ([0.0, math.nan, 130.0], "finite"),
    "decreasing edges": ([130.0, 77.5, 76.5, 0.0], "strictly increasing"),
    "repeated edges": ([0.0, 76.5, 76.5, 77.5, 130.0], "strictly increasing"),
    "infinite edge": ([-math.inf, 76.5, 77.5, math.inf], "finite"),
    "one edge": ([77.0], "at least two"),
}


@pytest.mark.parametrize("case", BAD_EDGES)
def test_bad_histogram_edges_are_refused_before_counting(example, case):
    _, data, _ = example
    edges, reason = BAD_EDGES[case]
    for subset in (data, data[data["id"] == T]):
        with pytest.raises((fm.TaskFailed, fm.PrivacyError)) as info:
            subset["age"].histogram(edges).compute()
        if subset is data:
            assert isinstance(info.value, fm.TaskFailed) and reason in info.value.message, info.value


@pytest.mark.parametrize("bins, range_", [(3, (50.0, 50.0)), (3, (60.0, 40.0)), (3, (0.0, math.nan)), (0, (0, 1))])
def test_a_bin_count_needs_a_finite_range_with_lo_below_hi(example, bins, range_):
    _, data, _ = example
    with pytest.raises(fm.TaskFailed, match="histogram"):
        data["age"].histogram(bins, range_).compute()


def test_histogram_counts_are_never_negative():
    x = pd.Series([1.0, 2.0, 3.0, np.nan])
    for bins, range_ in (([0, 1.5, 2.5, 4], None), (4, (0, 4)), ([-10, 10], None)):
        assert min(private.histogram(x, bins, range_)["counts"]) >= 0


def test_a_withheld_value_counts_cell_is_not_the_total_minus_the_rest(example):
    """``(dx == "RARE").value_counts()`` has two cells; withholding the rare one alone let
    ``data.len() - counts[False]`` give its count (and with it, that someone is RARE)."""
    _, data, frame = example
    total = data["id"].len().compute()
    assert total == len(frame)
    try:
        counts = rt.quietly(lambda: (data["dx"] == rt.RARE).value_counts().compute())
    except fm.PrivacyError:
        return  # refused as a whole: nothing to subtract from
    assert True not in counts.index
    recovered = total - counts.sum()
    assert recovered == 0 or recovered >= K, recovered


def test_histogram_bins_covering_every_row_give_no_small_bin_away(example):
    _, data, frame = example
    edges = [0.0, 50.0, 88.5, 130.0]  # the last bin holds the few patients aged 89
    truth = np.histogram(frame["age"], edges)[0]
    assert 0 < truth[-1] < K
    hist = rt.quietly(lambda: data["age"].histogram(edges).compute())
    shown = hist.counts
    assert all(math.isnan(s) or s == t for s, t in zip(shown, truth))
    hidden = [t for s, t in zip(shown, truth) if math.isnan(s)]
    assert len(hidden) >= 2 and len(frame) - np.nansum(shown) >= K


def test_histogram_of_one_person_gives_nothing_away(example):
    _, data, _ = example
    edges = [0.0, 50.0, 76.5, 77.5, 130.0]
    try:
        hist = rt.quietly(lambda: data[data["id"] == T]["age"].histogram(edges).compute())
    except fm.PrivacyError:
        return
    assert np.isnan(hist.counts).all(), hist.counts  # not even the empty bins: they would place the person


def test_a_one_row_fragment_histogram_gives_nothing_away():
    frame = rt.cohort().iloc[[T]].reset_index(drop=True)
    _, data = rt.serve(rt.EXAMPLE_CONFIG, frame)
    hist = rt.quietly(lambda: data["age"].histogram([0.0, 50.0, 76.5, 77.5, 130.0]).compute())
    assert np.isnan(hist.counts).all(), hist.counts


def test_count_below_bisection_does_not_find_the_max(example):
    """The max is the smallest threshold at which every row is counted: those counts are withheld."""
    _, data, frame = example
    thresholds = [t + 0.5 for t in range(60, 95)]
    counts = rt.quietly(lambda: data["age"].count_below(thresholds).compute())
    n = len(frame)
    assert not any(c >= n - K + 1 for c in counts if not math.isnan(c))
    assert not any(0 < c < K for c in counts if not math.isnan(c))

    def all_below(t: float) -> bool:
        c = rt.quietly(lambda: data["age"].count_below([t]).compute())[0]
        return c == n

    low, high = 0.0, 200.0  # bisection for the smallest t with count(age <= t) == n
    for _ in range(12):
        mid = (low + high) / 2
        low, high = (low, mid) if all_below(mid) else (mid, high)
    assert high == 200.0  # never saw every row counted: the max is not found
    # released counts of one query are k apart
    released = sorted({c for c in counts if not math.isnan(c)})
    assert released and all(b - a >= K for a, b in zip(released, released[1:]))


def test_a_crosstab_cell_is_not_recovered_from_the_margins(example):
    """The margin ``value_counts(age > 50)`` minus the released cells of its column is the sum of the
    column's withheld cells: at least k rows over at least two cells, never the RARE patient alone."""
    _, data, frame = example
    table = rt.quietly(lambda: data["dx"].astype("str").crosstab(data["age"] > 50).compute())
    margin = (data["age"] > 50).value_counts().compute()
    truth = pd.crosstab(frame["dx"].astype(str), frame["age"] > 50)
    for flag in (False, True):
        shown = table[flag] if flag in table.columns else pd.Series(dtype=float)
        recovered = int(margin[flag] - np.nansum(shown))
        assert recovered == 0 or recovered >= K, (flag, recovered)
        for label, n in shown.items():
            assert math.isnan(n) or n == truth.loc[label, flag]
    assert rt.RARE not in table.index


def with_missing(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[frame["id"] == T, "y"] = np.nan
    return frame


@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize("op", ["unique", "set"])
def test_whole_table_unique_of_one_row_releases_nothing_of_it(missing, op):
    frame = rt.cohort()
    frame = with_missing(frame) if missing else frame
    _, data = rt.serve(rt.EXAMPLE_CONFIG, frame)
    row = frame[frame["id"] == T].iloc[0]
    person = data[data["id"] == T]
    try:
        levels = rt.quietly(lambda: getattr(person, op)().compute())
    except fm.PrivacyError:
        levels = None
    if levels is not None:
        assert all(len(v) == 0 for v in levels.values()), levels
    # the same row as a fragment of its own: no filter for another rule to refuse
    _, alone = rt.serve(rt.EXAMPLE_CONFIG, frame[frame["id"] == T].reset_index(drop=True))
    levels = rt.quietly(lambda: getattr(alone, op)().compute())
    assert set(levels) == {"id", "age", "y", "dx"}
    assert all(len(v) == 0 for v in levels.values()), (levels, dict(row))


def test_whole_table_unique_keeps_elements_held_by_k_rows_of_their_column():
    frame = pd.DataFrame({"sex": ["F"] * 6 + ["M"] * 5 + ["X"], "grp": ["a"] * 5 + [None] * 2 + ["b"] * 5,
                          "age": [40] * 5 + [41] * 7})
    _, data = rt.serve(rt.EXAMPLE_CONFIG, frame)
    with pytest.warns(fm.PrivacyWarning, match="1 cell of fewer than 5 rows suppressed"):
        levels = data.unique().compute()
    assert {k: list(v) for k, v in levels.items()} == {"sex": ["F", "M"], "grp": ["a", "b"], "age": [40, 41]}


def test_honest_tables_with_big_cells_are_unchanged():
    frame = rt.cohort(target=False)
    _, data = rt.serve(rt.EXAMPLE_CONFIG, frame)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fm.PrivacyWarning)  # nothing withheld, nothing noted
        counts, hist, table, below, levels = fm.compute(
            data["dx"].value_counts(), data["age"].histogram([0, 40, 60, 130]),
            data["dx"].crosstab(data["age"] > 50), data["age"].count_below([30.5, 50.5, 70.5]),
            data["dx"].unique(),
        )
    truth = frame["dx"].value_counts()
    assert {k: int(v) for k, v in counts.items() if v} == {k: int(v) for k, v in truth.items() if v}
    assert hist.counts.tolist() == np.histogram(frame["age"], [0, 40, 60, 130])[0].tolist()
    expected = pd.crosstab(frame["dx"].astype(str), frame["age"] > 50)
    for label in expected.index:
        for flag in expected.columns:
            assert table.loc[label, flag] == expected.loc[label, flag]
    assert below == [float((frame["age"] <= t).sum()) for t in (30.5, 50.5, 70.5)]
    assert levels == sorted(rt.COMMON)


def test_cells_count_persons_where_the_server_declares_a_person_column():
    """Patient 42's 8 lab rows are one person: a cell of them is small however many rows it has."""
    rng = np.random.default_rng(3)
    patient = np.repeat(np.arange(60), 8)
    frame = pd.DataFrame({"patient": patient, "visit": np.tile(np.arange(8), 60),
                          "hba1c": np.round(rng.normal(6.0, 1.0, patient.size), 1), "hiv": (patient == 42).astype(int)})
    frame.loc[patient == 42, "hba1c"] = 15.0  # far above everyone else
    config = rt.config(*rt.example_privacy())
    config["persons"] = {"labs*": "patient"}
    server = fm.Server(config=config)
    server["labs"] = frame
    data = fm.FedData([fm.Simulation(server, "labs")], config=server.config)
    counts = rt.quietly(lambda: data["hiv"].value_counts().compute())
    assert 1 not in counts.index and len(frame) - counts.sum() >= K
    assert 15.0 not in rt.quietly(lambda: data["hba1c"].unique().compute())
    hist = rt.quietly(lambda: data["hba1c"].histogram([0.0, 10.0, 20.0]).compute())
    assert np.isnan(hist.counts).all()
    below = rt.quietly(lambda: data["hba1c"].count_below([9.0, 14.0]).compute())
    assert all(math.isnan(c) for c in below)  # 8 rows above 9, but one person
    table = rt.quietly(lambda: data["hiv"].crosstab(data["visit"]).compute())
    assert 1 not in table.index
    with pytest.warns(fm.PrivacyWarning, match="fewer than 5 persons"):
        data["hiv"].unique().compute()


# -- the same through other engines ---------------------------------------------------------------


@pytest.fixture
def parquet(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    frame = rt.cohort()
    frame["dx"] = frame["dx"].astype(str)
    path = tmp_path / "cohort.parquet"
    connection = duckdb.connect()
    connection.register("frame", frame)
    connection.execute(f"COPY (SELECT * FROM frame) TO '{path}' (FORMAT parquet)")
    connection.close()

    def serve(rows: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> fm.FedData:
        """A server over the cohort's Parquet file, or over a file of ``rows(cohort)``."""
        target = path
        if rows is not None:
            target = tmp_path / "rows.parquet"
            connection = duckdb.connect()
            connection.register("frame", rows(frame))
            connection.execute(f"COPY (SELECT * FROM frame) TO '{target}' (FORMAT parquet)")
            connection.close()
        server = fm.Server(config=rt.EXAMPLE_CONFIG)
        server["cohort"] = fm.fragments.Parquet(str(target))
        return fm.FedData([fm.Simulation(server, "cohort")], config=server.config)

    return serve, frame


def test_duckdb_refuses_bad_edges_with_the_same_message(parquet, example):
    serve, _ = parquet
    duck, (_, memory, _) = serve(), example
    for case, (edges, reason) in BAD_EDGES.items():
        messages = []
        for data in (duck, memory):
            with pytest.raises(fm.TaskFailed) as info:
                data["age"].histogram(edges).compute()
            messages.append(info.value.message)
        assert reason in messages[0] and messages[0] == messages[1], (case, messages)


def test_duckdb_cells_are_withheld_as_on_the_pandas_path(parquet):
    serve, frame = parquet
    data = serve()
    total = data["id"].len().compute()
    try:
        counts = rt.quietly(lambda: (data["dx"] == rt.RARE).value_counts().compute())
        recovered = total - counts.sum()
        assert recovered == 0 or recovered >= K
    except fm.PrivacyError:
        pass
    edges = [0.0, 50.0, 88.5, 130.0]
    hist = rt.quietly(lambda: data["age"].histogram(edges).compute())
    assert np.isnan(hist.counts).sum() >= 2 and len(frame) - np.nansum(hist.counts) >= K
    counts = rt.quietly(lambda: data["age"].count_below([t + 0.5 for t in range(60, 95)]).compute())
    assert not any(c > len(frame) - K for c in counts if not math.isnan(c))
    table = rt.quietly(lambda: data["dx"].crosstab(data["age"] > 50).compute())
    assert rt.RARE not in table.index


def test_duckdb_whole_table_unique_of_one_row_releases_nothing(parquet):
    serve, frame = parquet
    alone = serve(lambda f: with_missing(f)[f["id"] == T])
    levels = rt.quietly(lambda: alone.unique().compute())
    assert all(len(v) == 0 for v in levels.values()), levels


def test_dask_refuses_bad_edges_too():
    dd = pytest.importorskip("dask.dataframe")
    from fedmed.fragments.dask import Dask

    server = fm.Server(config=EXACT_CONFIG)
    server["cohort"] = Dask(dd.from_pandas(rt.cohort(), npartitions=2))
    data = fm.FedData([fm.Simulation(server, "cohort")], config=server.config)
    for edges, reason in BAD_EDGES.values():
        with pytest.raises(fm.TaskFailed, match=reason):
            data["age"].histogram(edges).compute()
    assert data["age"].histogram([0, 50, 130]).compute().counts.sum() == rt.N
