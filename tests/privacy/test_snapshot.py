"""Red team: learning a new patient's values from the difference of two versions of a fragment.

Under ``Snapshot(min_new_rows=5)`` a server keeps serving the published
version until at least 5 rows differ from it, so an analyst who reruns a
query after each new patient sees nothing change until five have arrived.
Tests that FAIL show the rule being bypassed (see the docstring).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fedmed as fm

_spec = importlib.util.spec_from_file_location("redteam_support", Path(__file__).with_name("redteam_support.py"))
rt = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(rt)  # type: ignore[union-attr]


def snapshot_config() -> dict:
    """The example's policies plus Snapshot(min_new_rows=5)."""
    return {"methods": rt.example_methods(), "privacy": [*rt.example_privacy(), rt.policy("Snapshot", min_new_rows=5)]}


def new_patient(i: int, age=None, y: float | None = None) -> pd.DataFrame:
    return pd.DataFrame({
        "id": [1000 + i], "age": [50 + i if age is None else age], "y": [10.0 + i if y is None else y], "dx": ["A"],
    })


def answers(data: fm.FedData) -> tuple:
    return fm.compute(data["age"].sum(), data["y"].sum(), data["age"].len(), fm.stats.mean(data["age"]))


def test_snapshot_publishes_appended_rows_only_from_the_fifth():
    frame = rt.cohort()
    server, data = rt.serve(snapshot_config(), frame)
    before = rt.quietly(lambda: answers(data))
    assert server.version("cohort") == 1
    for i in range(4):
        server.append("cohort", new_patient(i))
        assert server.version("cohort") == 1
        assert server.info()["fragments"]["cohort"] == {"rows": rt.N, "version": 1}
        assert answers(data) == before  # differencing learns nothing
    server.append("cohort", new_patient(4))
    assert server.version("cohort") == 2
    assert server.info()["fragments"]["cohort"] == {"rows": rt.N + 5, "version": 2}
    total, y_total, n, _ = answers(data)
    assert n == rt.N + 5
    assert total == frame["age"].sum() + sum(50 + i for i in range(5))
    assert y_total == pytest.approx(frame["y"].sum() + sum(10.0 + i for i in range(5)), rel=1e-12)


def test_snapshot_applies_the_same_rule_to_replacing_a_fragment():
    frame = rt.cohort()
    server, data = rt.serve(snapshot_config(), frame)
    before = answers(data)
    # the same rows in another order: nothing changed
    server["cohort"] = frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert server.version("cohort") == 1
    # two edited rows count as 2 removed + 2 added = 4 changed rows: held back
    edited = frame.copy()
    edited.loc[[3, 4], "y"] += 1.0
    server["cohort"] = edited
    assert server.version("cohort") == 1 and answers(data) == before
    # four new rows: still held back
    server["cohort"] = pd.concat([frame, *(new_patient(i) for i in range(4))], ignore_index=True)
    assert server.version("cohort") == 1 and answers(data) == before
    # five new rows: published
    grown = pd.concat([frame, *(new_patient(i) for i in range(5))], ignore_index=True)
    server["cohort"] = grown
    assert server.version("cohort") == 2
    assert answers(data)[2] == rt.N + 5
    assert answers(data)[0] == grown["age"].sum()


@pytest.mark.parametrize("age", [np.nan, 50.5], ids=["missing age", "fractional age"])
def test_snapshot_holds_back_one_new_row_whatever_its_values(age):
    """FAILS today: Snapshot compares row hashes, and the hash depends on the dtype.

    The cohort's ``age`` is int64; one new patient with a missing (or
    fractional) age turns the column into float64, every row's hash changes,
    all 201 rows count as changed and the new version is published at once.
    Two sums of ``y`` (each over 200+ rows, passing every threshold policy)
    then differ by the new patient's ``y`` exactly.
    """
    frame = rt.cohort()
    server, data = rt.serve(snapshot_config(), frame)
    before = data["y"].sum().compute()
    server.append("cohort", new_patient(0, age=age, y=12.345))

    def attack() -> float:
        return data["y"].sum().compute() - before

    leaked = attack()
    assert server.version("cohort") == 1, (
        f"one appended row published version {server.version('cohort')}; sum(y) differencing gives {leaked:.3f} (the new y is 12.345)"
    )
    assert leaked == 0.0
