"""Red-team findings on the model aggregates of issue 17, as tests (example/config.yaml).

``glm_family_step`` sums three per-row multipliers at the analyst's beta:
the information's weights, the score's factor and the Pearson sum's. Gamma
with a log link has information weights of 1 on every row, but a score
factor ``exp(-eta)``: an offset that is small on patient 17 only made the
score (or, through the public ``fm.stats.glm``, the fitted intercept) that
patient's age. Each multiplier is now judged like any intermediate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fedmed as fm

PRIVATE = "example/config.yaml"


@pytest.fixture(scope="module")
def data() -> fm.FedData:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"id": np.arange(200), "age": rng.integers(20, 90, 200).astype(float),
                          "lab": np.round(rng.gamma(4, 10, 200), 1)})
    sources = []
    for i, (lo, hi) in enumerate([(0, 100), (100, 160), (160, 200)]):
        server = fm.Server(config=PRIVATE)
        server["d"] = frame.iloc[lo:hi].reset_index(drop=True)
        sources.append(fm.Simulation(server, "d", name=f"h{i}"))
    return fm.FedData(sources, config=PRIVATE)


@pytest.mark.parametrize("column", ["age", "lab"])
def test_a_score_that_weighs_one_row_is_refused(data: fm.FedData, column: str) -> None:
    offset = (50 * (data["id"] - 17) ** 2).clip(0, 300)  # 0 on patient 17, 300 (weight e^-300) on most rows
    step = data[column]._aggregate("glm_family_step", ("gamma", "log", True, [0.0], 1.0, False, ["offset"], offset))
    with pytest.raises(fm.PrivacyError, match="its row weights at this beta"):
        step.compute()


def test_the_same_through_fm_stats_glm_is_refused(data: fm.FedData) -> None:
    # four decoys far above, so that no four rows hold 90% of the offset's own spread
    a, b, c = np.linalg.solve([[1, 1, 1], [2, 4, 8], [3, 9, 27]], [25.0, 25.0, 8.0])
    u = (data["id"] - 17).abs().clip(0, 3)
    offset = u * a + u ** 2 * b + u ** 3 * c
    with pytest.raises(fm.PrivacyError, match="its row weights at this beta"):
        fm.stats.glm(data, y="age", X=[], family="gamma", link="log", offset=offset, max_iter=300).compute()


def test_an_honest_gamma_model_with_an_offset_is_still_fitted(data: fm.FedData) -> None:
    fit = fm.stats.glm(data, y="lab", X=["age"], family="gamma", link="log", offset=data["age"] * 0.001).compute()
    assert fit.converged and np.isfinite(fit.params).all()
