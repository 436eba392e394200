"""Red team: whether a task fails must not tell whether a row exists.

A failed task reaches the client as an error before any privacy policy
runs, even under Noise + Budget: if ``(1 / (data["id"] - 17)).astype("int")``
fails only when a row with ``id == 17`` exists (``astype("int")`` of
infinity), every query answers one exact bit. Elementwise operations are
therefore total on every engine: a row an operation cannot compute is
missing, the task succeeds. Aggregates read values they cannot read as
missing too.

Each attack runs over the cohort with and without the target's row
(``id == 17``); the outcome (released, refused by a policy, or failed, and
whether a value came back) must be the same. Engines: an in-memory
fragment through ``fm.Simulation`` and over HTTP, a Parquet fragment
(DuckDB) and a Dask fragment.
"""

from __future__ import annotations

import importlib.util
import math
import operator
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest

import fedmed as fm
import fedmed.fragments  # noqa: F401  (fm.fragments)
from fedmed.errors import OperationError, TaskFailed
from fedmed.server.evaluate import MAX_CALLS, apply_elementwise, apply_map
from fedmed.ops import binary, private

_spec = importlib.util.spec_from_file_location("redteam_support", Path(__file__).with_name("redteam_support.py"))
rt = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(rt)  # type: ignore[union-attr]

T = rt.TARGET_ID


def cohort(target: bool = True) -> pd.DataFrame:
    """The red-team cohort plus ``code``: Python objects, numbers except the target's text ``"n/a"``."""
    frame = rt.cohort()
    frame["code"] = pd.Series([float(i % 7) if i != T else "n/a" for i in frame["id"]], dtype=object)
    return frame if target else frame[frame["id"] != T]


#: name -> attack: a query whose failure, before this change, depended on the target's row
ATTACKS: dict[str, Callable[[fm.FedData], Any]] = {
    # conversions pandas refuses for one value
    "astype int of inf": lambda d: (1 / (d["id"] - T)).astype("int").sum(),
    "astype int of nan": lambda d: (0 / (d["id"] - T)).astype("int").sum(),
    "astype int of a fraction": lambda d: ((d["id"] == T) * 0.5).astype("int").sum(),
    "astype int of a huge float": lambda d: ((d["id"] == T) * 1e300).astype("int").count(),
    "astype bool of 2": lambda d: ((d["id"] == T) * 2).astype("bool").sum(),
    "astype float of text": lambda d: d["code"].astype("float").sum(),
    "astype int of text": lambda d: d["code"].astype("int").count(),
    # integers to negative powers
    "negative integer power": lambda d: (d["age"] ** ((d["id"] == T) * -1)).sum(),
    "negative powers of every id": lambda d: (d["age"] ** (d["id"] - T)).count(),
    "negative constant power of one row": lambda d: (d[d["id"] == T]["age"] ** -1).count(),
    "negative power of a filtered base": lambda d: (2 ** (d[d["id"] >= T]["id"] - T - 1)).count(),
    # mixed types in a column of Python objects
    "mixed-type comparison": lambda d: (d["code"] < 5).sum(),
    "mixed-type comparison filter": lambda d: d[d["code"] >= 3]["age"].len(),
    "text minus a number": lambda d: (d["code"] - 1).count(),
    "text divided by a number": lambda d: (d["code"] / 2).count(),
    "absolute value of text": lambda d: abs(d["code"]).count(),
    "log of text": lambda d: d["code"].log().count(),
    "rounding text": lambda d: d["code"].round(1).count(),
    # division by zero and logarithms of negatives
    "division by zero": lambda d: (d["age"] / (d["id"] - T)).count(),
    "floor division by zero changes the type": lambda d: (~(d["age"] // (d["id"] - T))).count(),
    "modulo by zero changes the type": lambda d: ((d["age"] % (d["id"] - T)) & 1).count(),
    "text divided by zero": lambda d: (d["code"] / (d["id"] - T)).count(),
    "log of negatives": lambda d: ((d["id"] == T) * -1.0).log().count(),
    # types chosen by the values
    "fillna with text where one value is missing": lambda d: (((0 * d["y"]) / (d["id"] != T)).fillna("x") * 2).count(),
    "fillna of nullable integers with a fraction": lambda d: (d["age"] ** ((d["id"] == T) * -1)).fillna(0.5).sum(),
    # rows one side lacks
    "comparing a filtered column": lambda d: (d[d["id"] != T]["age"] == d["age"]).sum(),
    "a mask from a filtered column": lambda d: d["age"][d[d["id"] != T]["age"] > 0].len(),
    # aggregates of values they cannot read
    "moments of text": lambda d: d["code"].moments(),
    "max of text and numbers": lambda d: d["code"].max(),
    "set of text and numbers": lambda d: d["code"].set(),
    "histogram of text": lambda d: d["code"].histogram([0, 3, 7]),
    "count_below of text": lambda d: d["code"].count_below([3.0]),
    "min of the target's text": lambda d: d[d["id"] >= T]["code"].min(),
    # overflow (DuckDB raises where numpy wraps around)
    "integer overflow": lambda d: (d["age"] * (d["id"] == T) * 2**62 * 4).sum(),
    "integer power overflow": lambda d: (d["age"] ** ((d["id"] == T) * 40)).sum(),
}


#: Attacks refused by their types alone, with or without the row (no longer by the values).
#: Fail whatever the rows hold: the kinds of values (text where numbers are needed, a float where
#: ``&`` needs booleans) are the cause, which the schema decides, never a row.
REFUSED_BY_TYPE = {
    "fillna with text where one value is missing", "modulo by zero changes the type",
    # An object or text column is refused by numeric operations whatever its rows hold (issue 15:
    # rows that were text used to become missing silently); to_numeric() converts it first.
    "text minus a number", "text divided by a number", "text divided by zero",
    "mixed-type comparison", "mixed-type comparison filter", "absolute value of text", "log of text",
    "rounding text", "moments of text", "histogram of text", "count_below of text",
}
#: Outcomes that may differ between engines (none today: every engine refuses text by its type).
TYPE_OF_ENGINE: set[str] = set()


def outcome(compute: Callable[[], Any]) -> tuple[str, Any]:
    """What the client learns besides the value: released (and whether a value came back), refused, or failed."""
    try:
        value = compute()
    except fm.PrivacyError as err:
        return "refused", err.policy
    except fm.ServerError as err:
        return "failed", type(err).__name__
    return "released", value is not None


def assert_no_oracle(make: Callable[[pd.DataFrame], fm.FedData], attacks: dict[str, Callable[[fm.FedData], Any]],
                     expect: bool = True, refusals: bool = True) -> None:
    """Each attack has one outcome with and without the target's row; with ``expect``, every attack is
    released except those ``REFUSED_BY_TYPE`` (which fail); without ``refusals``, only failures must agree
    (a threshold policy's refusal depends on the rows by design: see docs/privacy.md, section 5)."""
    with_target, without = make(cohort(True)), make(cohort(False))
    differ, unexpected = {}, {}
    for name, attack in attacks.items():
        seen = rt.quietly(lambda: outcome(lambda: attack(with_target).compute()))
        other = rt.quietly(lambda: outcome(lambda: attack(without).compute()))
        compared = (seen, other) if refusals else tuple(o if o[0] == "failed" else "not failed" for o in (seen, other))
        if compared[0] != compared[1]:
            differ[name] = (seen, other)
        elif expect and name not in TYPE_OF_ENGINE and seen[0] != ("failed" if name in REFUSED_BY_TYPE else "released"):
            unexpected[name] = seen
    assert not differ, f"the outcome tells whether row {T} exists: {differ}"
    assert not unexpected, f"expected every attack released (those refused by type failed): {unexpected}"


def simulated(cfg: Any = None) -> Callable[[pd.DataFrame], fm.FedData]:
    return lambda frame: rt.serve(rt.config() if cfg is None else cfg, frame)[1]


# -- the pandas evaluator ---------------------------------------------------------------------------


def test_no_attack_fails_and_none_tells_whether_the_row_exists():
    assert_no_oracle(simulated(), ATTACKS)


def test_no_failure_tells_whether_the_row_exists_under_the_example_policies():
    # Anonymity refuses a sum that leaves one row out (here: the target's row, made missing); that
    # refusal is the threshold rule's documented answer, no failure before the policies run
    assert_no_oracle(simulated(rt.EXAMPLE_CONFIG), ATTACKS, expect=False, refusals=False)


NOISED = {name: ATTACKS[name] for name in (
    "astype int of inf", "astype bool of 2", "negative integer power", "mixed-type comparison",
    "mixed-type comparison filter", "floor division by zero changes the type", "comparing a filtered column",
    "a mask from a filtered column", "histogram of text", "text minus a number", "astype int of a huge float",
)}


def test_the_outcome_is_the_same_under_noise_and_budget():
    noise = rt.policy("Noise", mode="laplace", epsilon=0.01, bounds=[0, 120], seed=3)
    cfg = rt.config(noise, rt.policy("Budget", epsilon=1.0))
    assert_no_oracle(simulated(cfg), NOISED, expect=False)
    _, data = rt.serve(cfg, cohort())
    assert outcome(lambda: ATTACKS["astype int of inf"](data).compute())[0] == "released"  # noised, not failed


def test_the_outcome_is_the_same_over_http(serve):
    def make(frame: pd.DataFrame) -> fm.FedData:
        server = fm.Server(config=rt.config())
        server["cohort"] = frame
        return fm.FedData([fm.Remote(ip=serve(server).url, fragment="cohort")], config=server.config)

    assert_no_oracle(make, ATTACKS)


def test_rows_that_cannot_be_computed_are_missing_and_the_others_computed():
    frame = cohort()
    _, data = rt.serve(rt.config(), frame)
    others = frame[frame["id"] != T]
    as_int = (1 / (data["id"] - T)).astype("int").sum().compute()
    assert as_int == int(np.trunc(1 / (others["id"] - T)).astype(int).sum())  # the target's inf is missing
    assert (data["age"] ** ((data["id"] == T) * -1)).count().compute() == len(frame) - 1
    numbers = pd.to_numeric(frame["code"], errors="coerce")
    code = data["code"].to_numeric()  # an object column is refused by numeric operations: converted first
    assert (code < 5).sum().compute() == int((numbers < 5).sum())
    assert (code - 1).astype("float").sum().compute() == pytest.approx((numbers - 1).sum())
    assert (data[data["id"] != T]["age"] == data["age"]).sum().compute() == len(frame) - 1
    assert code.moments().compute().n == len(frame) - 1


def test_what_depends_on_the_request_alone_still_fails_and_names_no_data():
    _, data = rt.serve(rt.config(), cohort())
    for bad, says in (
        (lambda: data["age"].astype("complex").sum(), "astype accepts"),
        (lambda: data["y"].fillna("x").sum(), "fillna cannot fill number values with text"),
        (lambda: (data["code"] * 2).count(), "mul needs numbers"),  # by the column's type
        (lambda: data["code"].sum(), "sum needs numbers"),
        (lambda: data["y"].histogram(3), "needs range"),
    ):
        with pytest.raises(fm.TaskFailed, match=says) as info:
            bad().compute()
        assert "n/a" not in str(info.value)


# -- DuckDB ---------------------------------------------------------------------------------------


def parquet(tmp_path: Path) -> Callable[[pd.DataFrame], fm.FedData]:
    duckdb = pytest.importorskip("duckdb")

    def make(frame: pd.DataFrame) -> fm.FedData:
        path = tmp_path / f"cohort-{len(frame)}.parquet"
        typed = frame.assign(code=frame["code"].astype(str))  # Parquet columns have one type: text here
        connection = duckdb.connect()
        connection.register("frame", typed)
        connection.execute(f"COPY (SELECT * FROM frame) TO '{path}' (FORMAT parquet)")
        connection.close()
        return rt.serve(rt.config(), fm.fragments.Parquet(path))[1]

    return make


def test_no_attack_tells_whether_the_row_exists_on_a_parquet_fragment(tmp_path):
    # text columns are typed in SQL: operations that mix text and numbers fail on every row set alike
    assert_no_oracle(parquet(tmp_path), ATTACKS, expect=False)


def test_duckdb_computes_what_pandas_cannot_as_missing(tmp_path):
    data = parquet(tmp_path)(cohort())
    numeric = {name: attack for name, attack in ATTACKS.items() if "text" not in name and "mixed" not in name}
    outcomes = {name: outcome(lambda: attack(data).compute()) for name, attack in numeric.items()}
    # what SQL refuses by the columns' types and the filters' structure, not by their values
    structural = {"floor division by zero changes the type", "modulo by zero changes the type",
                  "comparing a filtered column", "a mask from a filtered column"}
    assert {name: o for name, o in outcomes.items() if o[0] != "released"} == dict.fromkeys(
        structural, ("failed", "TaskFailed"))
    assert (data["age"] * (data["id"] == T) * 2**62 * 4).count().compute() == rt.N - 1  # overflow: missing
    assert data["code"].astype("float").count().compute() == rt.N - 1  # "n/a" is no number


# -- Dask -----------------------------------------------------------------------------------------


def test_no_attack_fails_or_tells_whether_the_row_exists_on_a_dask_fragment():
    dd = pytest.importorskip("dask.dataframe")
    from fedmed.fragments.dask import Dask

    numeric = {name: attack for name, attack in ATTACKS.items()
               if not name.endswith(("of text", "text and numbers", "target's text"))}  # aggregates: see below
    assert_no_oracle(lambda frame: rt.serve(rt.config(), Dask(dd.from_pandas(frame, npartitions=3)))[1], numeric)


# -- the mechanism --------------------------------------------------------------------------------


def test_a_server_owners_own_function_is_made_total_as_well():
    def strict_log(x: pd.Series) -> pd.Series:
        if (x <= 0).any():
            raise ValueError(f"bad value {x[x <= 0].iloc[0]}")
        return np.log(x)

    x = pd.Series([1.0, -1.0, np.e, 0.0])
    out = apply_elementwise("strict_log", strict_log, [x])
    assert out.tolist()[0] == 0.0 and out.tolist()[2] == pytest.approx(1.0) and out.isna().tolist() == [False, True, False, True]
    with pytest.raises(TaskFailed, match="does not take 2 operand"):
        apply_elementwise("strict_log", strict_log, [x, 2])
    with pytest.raises(ValueError):  # constants alone: the request decides
        apply_elementwise("pow", binary.pow, [np.asarray(2), np.asarray(-1)])


def test_the_type_of_a_result_does_not_depend_on_which_rows_failed():
    x = pd.Series([1, 2, 3, 4], dtype="int64")
    ok = apply_elementwise("pow", operator.pow, [x, pd.Series([1, 1, 1, 1])])
    bad = apply_elementwise("pow", operator.pow, [x, pd.Series([1, -1, 1, 1])])
    assert ok.dtype == "int64" and bad.dtype == "Int64" and bad.isna().tolist() == [False, True, False, False]
    assert binary.pow(x, pd.Series([1, 1, 1, 1])).dtype == binary.pow(x, pd.Series([1, -1, 1, 1])).dtype == "Int64"
    assert binary.floordiv(x, pd.Series([1, 1, 1, 1])).dtype == binary.floordiv(x, pd.Series([0, 1, 1, 1])).dtype
    flags = apply_elementwise("lt", operator.lt, [pd.Series([1, "a", 3], dtype=object), 2])
    assert flags.dtype == "boolean" and flags.tolist()[0] is True and flags.isna().tolist() == [False, True, False]


def test_many_failing_rows_cost_a_bounded_number_of_calls():
    calls = []

    def counted(x: Any, y: Any) -> Any:
        calls.append(len(x))
        return operator.lt(x, y)

    text = pd.Series(["x"] * 100_000, dtype=object)
    out = apply_elementwise("lt", counted, [text, 1])
    assert len(out) == len(text) and out.isna().all()
    assert len(calls) <= MAX_CALLS + 2
    one = pd.Series(list(range(100_000)), dtype=object)
    one[T] = "x"
    calls.clear()
    assert apply_elementwise("lt", counted, [one, 5]).isna().sum() == 1
    assert len(calls) < 2 * math.log2(len(one)) + 4


def test_a_map_reads_what_it_cannot_read_as_missing():
    mixed = pd.Series([1, "a", 2.5, None, 3], dtype=object)
    assert apply_map(private.moments, [mixed])[0] == 3
    assert apply_map(private.max, [mixed]) == 3.0
    assert apply_map(private.histogram, [mixed, [0, 2, 4]])["counts"] == [1, 2]
    with pytest.raises(OperationError):  # the map's own refusal, by type: not the values' fault
        apply_map(private.sum, [mixed])
