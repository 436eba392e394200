"""Issue 15, item 4: counting rows is never refused for missing or zero values in some column.

Under ``example/config.yaml`` (``Anonymity(k=5)``), the row count of a whole
table, of a filter that passes the rules, and of one column of it, are
released exactly: ``len`` does not read the values, and the rules judge
natural missing values and natural zeros as what the data say, not as
something the query's arithmetic singled out. What the rules must still
refuse (a sum backed by fewer than 5 non-zero terms) is refused with a
``PrivacyError``, never answered wrong.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import fedmed as fm

CONFIG = "example/config.yaml"


def split(frame: pd.DataFrame, cuts: tuple[float, ...] = (0.5, 0.8)) -> list[pd.DataFrame]:
    """Uneven parts (50%, 30%, 20% by default), each with a fresh index."""
    edges = [0, *(int(c * len(frame)) for c in cuts), len(frame)]
    return [frame.iloc[a:b].reset_index(drop=True) for a, b in zip(edges, edges[1:])]


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    """300 patients: a 0/1 column with natural zeros, a few missing values on the smallest site."""
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"age": rng.integers(20, 90, 300).astype(float),
                          "hiv": rng.choice([0.0, 1.0], 300, p=[0.9, 0.1]),
                          "bmi": rng.normal(27, 4, 300)})
    frame.loc[[250, 260, 270], "bmi"] = np.nan  # 3 missing, all on the third site
    frame.loc[5, "hiv"] = np.nan
    return frame


def federate(simulate: Callable[..., Any], frame: pd.DataFrame) -> fm.FedData:
    return simulate(split(frame), CONFIG)[1]


def test_whole_table_len_and_count_are_released_despite_a_few_missing_values(simulate, cohort) -> None:
    data = federate(simulate, cohort)
    assert data.len().compute().to_dict() == {c: len(cohort) for c in cohort}
    assert data.count().compute().to_dict() == cohort.count().to_dict()
    assert data["bmi"].count().compute() == cohort["bmi"].count() == 297
    assert data["bmi"].len().compute() == len(cohort)


@pytest.mark.parametrize("where", ["age > 50", "hiv == 0", "bmi.notna()"])
def test_a_filter_that_passes_the_rules_counts_exactly_whatever_its_columns_hold(simulate, cohort, where) -> None:
    data = federate(simulate, cohort)
    kept = {"age > 50": data["age"] > 50, "hiv == 0": data["hiv"] == 0, "bmi.notna()": data["bmi"].notna()}[where]
    truth = cohort[cohort.eval(where) if where != "bmi.notna()" else cohort["bmi"].notna()]
    assert data[kept].len().compute().to_dict() == {c: len(truth) for c in cohort}
    assert data[kept].count().compute().to_dict() == truth.count().to_dict()
    assert data[kept]["hiv"].len().compute() == len(truth)  # natural zeros of a 0/1 column: no refusal
    assert data[kept]["hiv"].count().compute() == truth["hiv"].count()


def test_a_sum_of_few_non_zero_terms_is_still_refused_not_answered(simulate, cohort) -> None:
    frame = cohort.copy()
    frame.loc[240:, "hiv"] = 0.0
    frame.loc[[241, 250], "hiv"] = 1.0  # two positives on the third site: a sum of 2 is a cell of 2
    data = federate(simulate, frame)
    with pytest.raises(fm.PrivacyError, match="fewer than 5"):
        data["hiv"].sum().compute()
    assert data["hiv"].len().compute() == len(frame)  # counting the rows is still fine


def test_real_survival_data_counts_exactly() -> None:
    heart = sm.datasets.heart.load_pandas().data
    heart.loc[[3, 40, 66], "age"] = np.nan  # a few missing ages, one on each site
    servers = []
    for i, part in enumerate(split(heart)):
        server = fm.Server(config=CONFIG)
        server["heart"] = part
        servers.append(fm.Simulation(server, "heart", name=f"site {i}"))
    data = fm.FedData(servers, config=CONFIG)
    assert data.len().compute().to_dict() == {c: len(heart) for c in heart}
    assert data.count().compute().to_dict() == heart.count().to_dict()
    alive = data["censors"] == 0
    assert data[alive].len().compute().to_dict() == {c: int((heart["censors"] == 0).sum()) for c in heart}
