"""Red-team findings on the pandas-shaped API (issue 16), as tests.

A group of a group-by releases its own sum, so it acts as a row filter:
``age * (id % 5 == 2) + 40`` marks a fifth of the fragment (nothing is
singled out over the whole fragment) but one patient in every group of
``id // 5``, and ``sum - 40 * size`` gave every marked patient's age in one
query. The disclosure analysis now judges each intermediate within each
group as well. A derived column assigned to a filtered frame keeps the
frame's rows, as pandas aligns it (it was summed over every row).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import fedmed as fm

PRIVATE, EXACT = "example/config.yaml", "example/config-exact.yaml"


def cohort(n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"id": np.arange(n), "age": rng.integers(20, 90, n), "sex": rng.choice(["F", "M"], n),
                          "bmi": rng.normal(27, 4, n).round(1)})
    frame.loc[17, "age"] = 77
    return frame


def federate(frame: pd.DataFrame, config: str) -> fm.FedData:
    edges = [0, 100, 160, len(frame)]
    sources = []
    for i, (lo, hi) in enumerate(zip(edges, edges[1:])):
        server = fm.Server(config=config)
        server["d"] = frame.iloc[lo:hi].reset_index(drop=True)
        sources.append(fm.Simulation(server, "d", name=f"h{i}"))
    return fm.FedData(sources, config=config)


@pytest.mark.parametrize("marked", [0, 2, 4])
def test_a_group_by_cannot_pick_one_patient_per_group(marked: int) -> None:
    d = federate(cohort(), PRIVATE)
    ids, age = d["id"], d["age"]
    x = age * (ids % 5 == marked) + 40
    with pytest.raises(fm.PrivacyError, match="within a group of the group-by"):
        d.assign(x=x).groupby(ids // 5)["x"].agg(["size", "sum"]).compute()
    with pytest.raises(fm.PrivacyError, match="within a group of the group-by"):  # softly: one row far from the rest
        d.assign(x=age * 2.0 ** (-30.0 * (ids % 5 - marked) ** 2) + 40).groupby(ids // 5)["x"].sum().compute()


def test_honest_group_bys_are_still_answered_exactly() -> None:
    frame = cohort()
    d = federate(frame, PRIVATE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fm.PrivacyWarning)
        got = d.assign(bmi10=d["bmi"] / 10).groupby("sex")["bmi10"].mean().compute()
        decade = d.groupby(d["age"] // 10 * 10)["bmi"].count().compute()
    pd.testing.assert_series_equal(got, frame.assign(bmi10=frame["bmi"] / 10).groupby("sex")["bmi10"].mean())
    expected = frame.groupby(frame["age"] // 10 * 10)["bmi"].count()
    known = decade.dropna()
    assert len(known) >= 4 and (known == expected.reindex(known.index)).all()


def test_a_column_assigned_to_a_filtered_frame_keeps_the_frames_rows() -> None:
    frame = cohort()
    d = federate(frame, EXACT)
    x = d["age"] * 2 + 1  # built on every row
    kept = d[d["id"] // 5 == 3].assign(x=x)
    expected = frame[frame["id"] // 5 == 3].assign(x=frame["age"] * 2 + 1)
    assert kept["x"].sum().compute() == expected["x"].sum()
    assert kept["x"].len().compute() == len(expected) == 5
    assert len(kept) == 5
