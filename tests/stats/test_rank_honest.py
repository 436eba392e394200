"""Rank tests on real, messy data under the privacy config: scipy's value or a reason, never a wrong number.

Real data: the 1996 American National Election Study shipped with
statsmodels (944 voters), split unevenly over three servers (50 %, 30 %,
20 % of the rows). ``mannwhitneyu`` compares the ages of Clinton and Dole
voters, ``wilcoxon`` the paired 7-point placements of oneself and of
Clinton on the left-right scale. Under ``example/config-exact.yaml`` both
equal scipy on the pooled rows; under ``example/config.yaml``
(``Anonymity(k=5)``) rare values and small bins are withheld, and the tests
must then raise ``fm.PrivacyError`` saying what was withheld and what to do.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats as sps

import fedmed as fm
from fedmed.stats.rank import mannwhitneyu, wilcoxon

PRIVACY, EXACT = "example/config.yaml", "example/config-exact.yaml"
SAME = dict(rel=1e-9, abs=0.0)
# servers warn about each withheld table; what the tests check is the error the statistic raises
pytestmark = pytest.mark.filterwarnings("ignore::fedmed.errors.PrivacyWarning")


def fed(frame: pd.DataFrame, config: str, cuts: tuple[float, ...] = (0.5, 0.8)) -> fm.FedData:
    """``frame`` split at the fractions ``cuts`` over in-process servers under ``config``."""
    n = len(frame)
    bounds = [0] + [int(c * n) for c in cuts] + [n]
    sources = []
    for i in range(len(bounds) - 1):
        server = fm.Server(config=config)
        server["d"] = frame.iloc[bounds[i]:bounds[i + 1]].reset_index(drop=True)
        sources.append(fm.Simulation(server, "d", name=f"h{i}"))
    return fm.FedData(sources, config=config)


@pytest.fixture(scope="module")
def anes() -> pd.DataFrame:
    return sm.datasets.anes96.load_pandas().data


def ages(data):
    """Ages of Dole voters (vote 1) and of Clinton voters (vote 0)."""
    return data["age"][data["vote"] == 1], data["age"][data["vote"] == 0]


def assert_scipy(result, expected, n: int) -> None:
    assert result.statistic == pytest.approx(float(expected.statistic), **SAME)
    assert result.pvalue == pytest.approx(float(expected.pvalue), **SAME)
    assert result.n == n


def midpoints(values: pd.Series, edges: list[float]) -> np.ndarray:
    """Each value replaced by the midpoint of its bin (numpy's bins, the last one closed)."""
    edges = np.asarray(edges, dtype=float)
    index = np.clip(np.searchsorted(edges, values.to_numpy(), side="right") - 1, 0, len(edges) - 2)
    return (edges[index] + edges[index + 1]) / 2


# -- without privacy policies: scipy on the pooled rows ------------------------------------------


@pytest.mark.parametrize("use_continuity", [True, False])
def test_mannwhitneyu_on_anes96_equals_scipy(anes, use_continuity):
    a, b = ages(fed(anes, EXACT))
    pooled_a, pooled_b = anes["age"][anes["vote"] == 1], anes["age"][anes["vote"] == 0]
    expected = sps.mannwhitneyu(pooled_a, pooled_b, method="asymptotic", use_continuity=use_continuity)
    assert 1e-8 < expected.pvalue < 0.9
    assert_scipy(mannwhitneyu(a, b, use_continuity=use_continuity).compute(), expected, len(anes))


@pytest.mark.parametrize("correction", [False, True])
def test_wilcoxon_on_anes96_equals_scipy(anes, correction):
    data = fed(anes, EXACT)
    expected = sps.wilcoxon(anes["selfLR"], anes["ClinLR"], method="asymptotic", correction=correction)
    assert 0 < expected.pvalue < 1e-50  # Dole voters place themselves far right of Clinton; not underflowed to 0
    assert_scipy(wilcoxon(data["selfLR"], data["ClinLR"], correction=correction).compute(), expected, len(anes))
    # one bin per nonzero |difference| (1..6) changes nothing
    binned = wilcoxon(data["selfLR"], data["ClinLR"], bins=6, range=(0.5, 6.5), correction=correction).compute()
    assert_scipy(binned, expected, len(anes))


def test_values_outside_the_bins_are_a_data_error(anes):
    a, b = ages(fed(anes, EXACT))
    with pytest.raises(fm.DataError, match="outside the bins"):
        mannwhitneyu(a, b, bins=[20, 40, 60, 80]).compute()  # ages 19 and 81-91 lie outside
    data = fed(anes, EXACT)
    with pytest.raises(fm.DataError, match="outside the bins"):
        wilcoxon(data["selfLR"], data["ClinLR"], bins=[0, 1.5, 3]).compute()


# -- under Anonymity(k=5): withheld counts are a PrivacyError, released bins are exact --------------


def test_withheld_ages_are_a_privacy_error_not_a_bare_value_error(anes):
    a, b = ages(fed(anes, PRIVACY))
    with pytest.raises(fm.PrivacyError) as raised:
        mannwhitneyu(a, b).compute()
    message = str(raised.value)
    assert "mannwhitneyu" in message and "withheld" in message
    assert "h0" in message and "values" in message  # the servers that withheld values, with how many
    assert "bins=" in message and "larger subgroup" in message  # what to do


def test_withheld_bins_are_named(anes):
    a, b = ages(fed(anes, PRIVACY))
    # a server holds 2 Clinton voters of 75-91: that bin (and one more protecting it) is withheld
    with pytest.raises(fm.PrivacyError, match=r"\[75, 92\].*coarser bins") as raised:
        mannwhitneyu(a, b, bins=[17, 30, 45, 60, 75, 92]).compute()
    assert "nan" not in str(raised.value)


def test_released_bins_give_scipy_on_bin_midpoints(anes):
    """Coarse bins that every server releases: exactly scipy's test of the values tied at their bins' midpoints."""
    edges = [17, 40, 60, 92]
    a, b = ages(fed(anes, PRIVACY))
    result = mannwhitneyu(a, b, bins=edges).compute()
    pooled_a, pooled_b = anes["age"][anes["vote"] == 1], anes["age"][anes["vote"] == 0]
    expected = sps.mannwhitneyu(midpoints(pooled_a, edges), midpoints(pooled_b, edges), method="asymptotic")
    assert_scipy(result, expected, len(anes))


def test_withheld_differences_are_a_privacy_error(anes):
    data = fed(anes, PRIVACY)
    with pytest.raises(fm.PrivacyError, match="wilcoxon.*withheld.*a - b.*range=\\(0, hi\\)"):
        wilcoxon(data["selfLR"], data["ClinLR"]).compute()
    with pytest.raises(fm.PrivacyError, match=r"wilcoxon.*bins \[.*coarser bins"):
        wilcoxon(data["selfLR"], data["ClinLR"], bins=6, range=(0.5, 6.5)).compute()


def test_all_values_withheld_is_an_error_not_nan_with_n_0():
    """Continuous values are all distinct: every count is withheld, and the released Series is empty."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"x": rng.normal(size=120), "y": rng.normal(size=120), "g": rng.integers(0, 2, 120)})
    data = fed(frame, PRIVACY)
    with pytest.raises(fm.PrivacyError, match="withheld"):
        mannwhitneyu(data["x"][data["g"] == 1], data["x"][data["g"] == 0]).compute()
    with pytest.raises(fm.PrivacyError, match="withheld"):
        wilcoxon(data["x"], data["y"]).compute()
    # 40 bins over 24-60 values a server: many bins of fewer than 5 rows
    with pytest.raises(fm.PrivacyError, match="withheld the counts of the bins"):
        mannwhitneyu(data["x"][data["g"] == 1], data["x"][data["g"] == 0], bins=40, range=(-5, 5)).compute()


# -- messy data: scipy's value or a FedMedError ----------------------------------------------------


@st.composite
def messy(draw) -> list[pd.DataFrame]:
    """Three sites of 0-30 rows: scores 1-4 (ties), missing values, a group that may be tiny or empty."""
    frames = []
    for _ in range(3):
        n = draw(st.integers(0, 30))
        row = st.tuples(st.sampled_from([1.0, 2.0, 3.0, 4.0, math.nan]), st.sampled_from([1.0, 2.0, 3.0, 4.0, math.nan]),
                        st.sampled_from([0, 0, 0, 1]))
        rows = draw(st.lists(row, min_size=n, max_size=n))
        frames.append(pd.DataFrame(rows, columns=["x", "y", "g"]).astype({"x": float, "y": float, "g": int}))
    return frames


def scipy_reference(pooled: pd.DataFrame) -> dict[str, tuple[float, float, int]]:
    a, b = pooled["x"][pooled["g"] == 1].dropna(), pooled["x"][pooled["g"] == 0].dropna()
    pairs = pooled[["x", "y"]].dropna()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # scipy warns on empty samples and 0 / 0
        u = sps.mannwhitneyu(a, b, method="asymptotic")
        w = sps.wilcoxon(pairs["x"], pairs["y"], method="asymptotic")
    return {"u": (u.statistic, u.pvalue, len(a) + len(b)), "w": (w.statistic, w.pvalue, len(pairs))}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(frames=messy(), config=st.sampled_from([PRIVACY, EXACT]))
def test_messy_data_gives_scipy_or_a_fedmed_error(frames, config):
    servers = []
    for i, frame in enumerate(frames):
        server = fm.Server(config=config)
        server["d"] = frame
        servers.append(fm.Simulation(server, "d", name=f"h{i}"))
    data = fm.FedData(servers, config=config)
    x, g = data["x"], data["g"]
    expected = scipy_reference(pd.concat(frames, ignore_index=True))
    # bins of width 1 around the integer scores (and |differences| 1-3) are exact, like value counts
    cases = {
        "u": [lambda: mannwhitneyu(x[g == 1], x[g == 0]),
              lambda: mannwhitneyu(x[g == 1], x[g == 0], bins=4, range=(0.5, 4.5))],
        "w": [lambda: wilcoxon(x, data["y"]), lambda: wilcoxon(x, data["y"], bins=3, range=(0.5, 3.5))],
    }
    for key, builds in cases.items():
        statistic, pvalue, n = expected[key]
        for build in builds:
            try:
                result = build().compute()
            except fm.FedMedError:
                assert config == PRIVACY  # without policies every case has an answer
                continue
            assert result.n == n
            assert result.statistic == pytest.approx(statistic, rel=1e-9, nan_ok=True)
            assert result.pvalue == pytest.approx(pvalue, rel=1e-9, nan_ok=True)
