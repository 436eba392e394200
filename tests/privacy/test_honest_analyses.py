"""Honest analyses under example/config.yaml on real data: exact, or unknown where withheld.

The American National Election Studies 1996 sample that ships with
statsmodels (944 respondents: age, education, party identification, vote)
split unevenly over three servers (500 / 300 / 144 rows), every server
running the privacy-aware example config. Each statistic must equal
pandas/scipy/statsmodels on the pooled rows, or be NaN where a server
withheld something, never a finite wrong number. Kaplan-Meier runs on a
synthetic 300-patient cohort with ties, split over two servers.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats as sps

import fedmed as fm

CONFIG = "example/config.yaml"


@pytest.fixture(scope="module")
def anes() -> tuple[fm.FedData, pd.DataFrame]:
    frame = sm.datasets.anes96.load_pandas().data[["age", "educ", "income", "PID", "vote", "selfLR"]].copy()
    frame["age"] = frame["age"].astype(int)
    frame["party"] = np.where(frame["PID"] <= 2, "dem", np.where(frame["PID"] >= 4, "rep", "ind"))
    cuts = [0, 500, 800, len(frame)]
    sources = []
    for i, (lo, hi) in enumerate(zip(cuts, cuts[1:])):
        server = fm.Server(config=CONFIG)
        server["anes"] = frame.iloc[lo:hi].reset_index(drop=True)
        sources.append(fm.Simulation(server, "anes", name=f"site{i}"))
    return fm.FedData(sources, config=CONFIG), frame


def quiet(compute):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fm.PrivacyWarning)
        return compute()


def test_describe_ttest_and_chi_square(anes):
    data, frame = anes
    desc = quiet(lambda: fm.stats.describe(data["age"]).compute())
    assert desc["count"] == len(frame)
    assert desc["mean"] == pytest.approx(frame["age"].mean(), rel=1e-12)
    assert desc["std"] == pytest.approx(frame["age"].std(), rel=1e-9)
    for stat, truth in (("min", frame["age"].min()), ("max", frame["age"].max())):
        assert desc[stat] == truth or math.isnan(desc[stat])  # an extreme held by fewer than 5 is withheld

    voters, others = data[data["vote"] == 1]["age"], data[data["vote"] == 0]["age"]
    welch = fm.stats.ttest_ind(voters, others, equal_var=False).compute()
    ref = sps.ttest_ind(frame.loc[frame.vote == 1, "age"], frame.loc[frame.vote == 0, "age"], equal_var=False)
    assert welch.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert welch.pvalue == pytest.approx(ref.pvalue, rel=1e-9)

    chi2 = fm.stats.chi2_contingency(data["age"] >= 50, data["vote"]).compute()
    ref = sps.chi2_contingency(pd.crosstab(frame["age"] >= 50, frame["vote"]))
    assert chi2.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert chi2.pvalue == pytest.approx(ref.pvalue, rel=1e-9)
    # party by vote has cells of fewer than 5 rows on the smallest site: refused with the reason
    with pytest.raises(fm.FedMedError, match="withheld cells"):
        quiet(lambda: fm.stats.chi2_contingency(data["party"], data["vote"]).compute())


def test_ols_and_logit_with_a_categorical_predictor(anes):
    data, frame = anes
    fit = quiet(lambda: fm.stats.ols(data, y="selfLR", X=["age", "income", "party"],
                                     categorical={"party": ["dem", "ind", "rep"]}).compute())
    design = pd.get_dummies(frame[["age", "income", "party"]], columns=["party"], drop_first=True, dtype=float)
    ref = sm.OLS(frame["selfLR"], sm.add_constant(design)).fit()
    assert np.allclose(np.asarray(fit.params, float), ref.params.to_numpy(), rtol=1e-9)
    assert np.allclose(np.asarray(fit.bse, float), ref.bse.to_numpy(), rtol=1e-9)

    logit = quiet(lambda: fm.stats.logit(data, y="vote", X=["age", "income", "selfLR"]).compute())
    ref = sm.Logit(frame["vote"], sm.add_constant(frame[["age", "income", "selfLR"]])).fit(disp=0)
    assert np.allclose(np.asarray(logit.params, float), ref.params.to_numpy(), rtol=1e-7)


def test_quantiles_are_exact_or_refused_with_a_reason(anes):
    data, frame = anes
    try:
        median = quiet(lambda: fm.stats.median(data["age"]).compute())
    except fm.FedMedError as err:  # a quantile the released counts cannot locate: said, never guessed
        assert "quantile" in str(err)
        return
    assert median == pytest.approx(frame["age"].median(), abs=1e-6)


def test_kaplan_meier_on_a_few_hundred_patients():
    rng = np.random.default_rng(11)
    n = 300
    cohort = pd.DataFrame({"months": rng.integers(1, 60, n).astype(float), "died": rng.integers(0, 2, n)})
    servers = []
    for part in (cohort.iloc[:180], cohort.iloc[180:]):
        server = fm.Server(config=CONFIG)
        server["surv"] = part.reset_index(drop=True)
        servers.append(fm.Simulation(server, "surv"))
    data = fm.FedData(servers, config=CONFIG)
    table = quiet(lambda: fm.stats.kaplan_meier(data["months"], data["died"], bin_width=12).compute())
    assert len(table) >= 4
    # every released survival value is the pooled truth at that time, or unknown
    binned = (cohort["months"] // 12) * 12
    at_risk = {t: int((binned >= t).sum()) for t in table["time"]}
    for _, row in table.iterrows():
        assert math.isnan(row["at_risk"]) or row["at_risk"] == at_risk[row["time"]]
        assert math.isnan(row["survival"]) or 0 <= row["survival"] <= 1
