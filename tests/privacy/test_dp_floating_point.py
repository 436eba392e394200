"""The differential-privacy promise of ``Noise``, checked by sampling, and the floating-point attack.

For two neighbouring inputs (a count of 0 or 1; a bounded sum without or
with one more row) we draw many releases of each through ``Noise.apply``
and compare how often each output region occurs. Differential privacy says
no region is more than ``e^epsilon`` times likelier (plus ``delta``) under
one input than under the other. The check is a principled one: one-sided
Clopper-Pearson bounds for both probabilities of every region, Bonferroni
corrected over all of them, so a correct mechanism fails it with
probability below ``ALPHA``; it fails when the data *prove* a ratio above
``e^epsilon``.

The same check catches numpy's floating-point Laplace noise, which the
previous version used: its outputs near 0 betray whether 1 was added
(Mironov 2012), an event of probability about 0.15 under one input and
exactly 0 under the other. OpenDP's releases are integers, or multiples of
one known grid step for sums, whatever the input.

Measured on the development machine (2 shared cores): 20,000 releases per
input take 1.5 to 2 s for a count and 2 to 3 s for a sum (the file, about
25 s). The largest ratio the samples prove is about 1.4 (Laplace) and 1.0
(Gaussian), below ``e^0.5 = 1.65``; raw ratios over regions of at least
500 releases each reach 1.7 to 1.9, sampling error around 1.65. The same
audit proves 2.4 for Laplace noise of epsilon 1 sold as 0.5, and more than
10 for numpy's noise.
"""

from __future__ import annotations

import importlib.util
import math
import types
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import fedmed as fm
from fedmed.expr.rowwise import Column, Fragment, Map
from fedmed.privacy import Noise, Task
from fedmed.privacy.noise import GRID_BITS

_spec = importlib.util.spec_from_file_location("redteam_support", Path(__file__).with_name("redteam_support.py"))
rt = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(rt)  # type: ignore[union-attr]

EPSILON = 0.5
DELTA = 1e-6
DRAWS = 20_000
#: Family-wise probability that a correct mechanism fails an audit.
ALPHA = 1e-6
BOUNDS = (0.0, 120.0)
#: The documented grid of a sum with sensitivity 120: 2**k, k = floor(log2 120) - GRID_BITS = -14.
SUM_GRID = math.frexp(BOUNDS[1])[1] - 1 - GRID_BITS
ROWS = [10.0, 20.0, 30.0]
#: The neighbour has one more row, beyond the upper bound: clipped to 120, the largest change.
NEIGHBOUR = ROWS + [1000.0]


@dataclass
class Audit:
    """The outcome of comparing two samples region by region."""

    worst: float  # largest ratio the data prove: lower bound of p_a over upper bound of p_b (either way)
    largest_empirical: float  # largest empirical ratio among regions with at least 500 draws on each side
    regions: int

    def holds(self, epsilon: float) -> bool:
        return self.worst <= math.exp(epsilon) * (1 + 1e-12)


def audit(first: np.ndarray, second: np.ndarray, regions: list[np.ndarray | tuple[np.ndarray, np.ndarray]],
          delta: float = 0.0) -> Audit:
    """Clopper-Pearson bounds for every region under both inputs; the largest proven likelihood ratio.

    ``regions`` are pairs of boolean masks (over ``first``, over
    ``second``). For (epsilon, delta)-DP, P_a(S) <= e^eps P_b(S) + delta:
    the proven ratio is (lower_a - delta) / upper_b.
    """
    n_a, n_b = len(first), len(second)
    level = ALPHA / (4 * len(regions))  # Bonferroni: two bounds per direction per region
    worst, largest = 0.0, 0.0
    for in_a, in_b in regions:
        a, b = int(np.sum(in_a)), int(np.sum(in_b))
        for (x, n_x), (y, n_y) in (((a, n_a), (b, n_b)), ((b, n_b), (a, n_a))):
            lower = sps.beta.ppf(level, x, n_x - x + 1) if x > 0 else 0.0
            upper = sps.beta.ppf(1 - level, y + 1, n_y - y) if y < n_y else 1.0
            worst = max(worst, max(lower - delta, 0.0) / upper)
            if x >= 500 and y >= 500:
                largest = max(largest, (x / n_x) / (y / n_y))
    return Audit(worst, largest, len(regions))


def value_regions(first: np.ndarray, second: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """One region per output value seen under either input (values reachable from one input only included)."""
    values = np.union1d(first, second)
    return [(first == v, second == v) for v in values]


def interval_regions(first: np.ndarray, second: np.ndarray, edges: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """One region per bin of ``edges``, plus both tails."""
    cuts = [-np.inf, *edges, np.inf]
    return [((lo <= first) & (first < hi), (lo <= second) & (second < hi)) for lo, hi in zip(cuts, cuts[1:])]


def low_bit_regions(first: np.ndarray, second: np.ndarray, grid: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Where a floating-point attack looks: the residue of the output's grid index modulo 2, 4 and 8."""
    index_a, index_b = (np.ldexp(x, -grid).astype(np.int64) for x in (first, second))
    return [(index_a % m == r, index_b % m == r) for m in (2, 4, 8) for r in range(m)]


def task(op: str, rows: list[float] | None = None) -> Task:
    """A map task over column ``age``, with the per-row values a server would have computed."""
    out = Task("cohort", 1, Map(op, (Column(Fragment(), "age"),)), client="auditor")
    if rows is not None:
        out.disclosure = types.SimpleNamespace(inputs=[pd.Series(rows)])
    return out


def releases(noise: Noise, op: str, value: int | None = None, rows: list[float] | None = None) -> np.ndarray:
    t = task(op, rows)
    return np.asarray([noise.apply(t, value) for _ in range(DRAWS)])


def mechanism(mode: str) -> Noise:
    delta = DELTA if mode == "gaussian" else None
    return Noise(mode=mode, epsilon=EPSILON, delta=delta, bounds=list(BOUNDS))


# -- the promise, measured ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["laplace", "gaussian"])
def test_a_count_of_0_and_a_count_of_1_are_within_e_to_the_epsilon(mode):
    noise = mechanism(mode)
    zero, one = releases(noise, "len", 0), releases(noise, "len", 1)
    assert all(isinstance(x, int) for x in zero[:100].tolist())  # integers whatever the input: nothing in low bits
    regions = value_regions(zero, one) + interval_regions(zero, one, np.arange(-10.5, 11.5, 3.0))
    result = audit(zero, one, regions, delta=DELTA if mode == "gaussian" else 0.0)
    assert result.holds(EPSILON), result
    assert np.std(zero) > 2  # and the noise is there


@pytest.mark.parametrize("mode", ["laplace", "gaussian"])
def test_a_bounded_sum_with_one_more_row_is_within_e_to_the_epsilon_on_one_grid(mode):
    noise = mechanism(mode)
    without, with_row = releases(noise, "sum", rows=ROWS), releases(noise, "sum", rows=NEIGHBOUR)
    # (ii) both lie on the documented grid: a multiple of 2**-14 is reachable from either input
    for sample in (without, with_row):
        index = np.ldexp(sample, -SUM_GRID)
        assert np.array_equal(index, np.rint(index))
    scale = np.std(without)
    assert 100 < scale < 2000  # noise of the order of the sensitivity over epsilon
    edges = np.linspace(-4 * scale, 4 * scale + 120, 41)
    regions = interval_regions(without, with_row, edges) + low_bit_regions(without, with_row, SUM_GRID)
    result = audit(without, with_row, regions, delta=DELTA if mode == "gaussian" else 0.0)
    assert result.holds(EPSILON), result
    # the clipped row shifts the centre by 120, not 1000 (at least 5 standard errors of the difference)
    assert abs(np.median(with_row) - np.median(without) - 120) < 10 * scale / np.sqrt(DRAWS)


def test_the_audit_catches_numpys_floating_point_laplace():
    """The previous version's noise: ``x + rng.laplace(0, 1/epsilon)`` in doubles.

    When 1 was added, an output in (-0.5, 0.5) is ``1 + y`` computed exactly
    (Sterbenz), with ``y`` a double in [-1.5, -0.5]: a multiple of 2**-53.
    From 0, the output is ``y`` itself, whose finer bits are usually set. So
    "near 0 and not a multiple of 2**-53" happens only when the count is 0:
    an infinite likelihood ratio, which the audit proves from the samples.
    """
    rng = np.random.default_rng(2012)
    zero = 0.0 + rng.laplace(0.0, 1 / EPSILON, DRAWS)
    one = 1.0 + rng.laplace(0.0, 1 / EPSILON, DRAWS)

    def fine(x: np.ndarray) -> np.ndarray:
        return (np.abs(x) < 0.5) & (np.ldexp(x, 53) != np.rint(np.ldexp(x, 53)))

    assert not fine(one).any()  # impossible from count 1
    assert fine(zero).mean() > 0.1  # ... and common from count 0 (about 0.15)
    result = audit(zero, one, [(fine(zero), fine(one))])
    assert not result.holds(EPSILON) and result.worst > 10 * math.exp(EPSILON), result
    # the same question asked of OpenDP's releases finds nothing
    noise = mechanism("laplace")
    zero, one = (releases(noise, "len", v).astype(float) for v in (0, 1))
    assert not fine(zero).any() and not fine(one).any()


def test_the_audit_has_the_power_to_see_a_release_less_noisy_than_promised():
    """Laplace noise for epsilon 1, audited against the promise of 0.5: the samples prove the excess."""
    noise = Noise(mode="laplace", epsilon=1.0)
    zero, one = releases(noise, "len", 0), releases(noise, "len", 1)
    result = audit(zero, one, value_regions(zero, one))
    assert not result.holds(EPSILON) and result.worst > 2.0, result


# -- the same releases through a server -----------------------------------------------------------------


def test_releases_through_a_server_are_whole_counts_and_sums_on_the_grid():
    frame = rt.cohort()
    _, data = rt.serve(rt.config(rt.policy("Noise", mode="laplace", epsilon=EPSILON, bounds=list(BOUNDS))), frame)
    target = data[data["id"] == rt.TARGET_ID]["age"]
    counts = [target.len().compute() for _ in range(200)]
    sums = [data["age"].sum().compute() for _ in range(200)]
    assert all(isinstance(c, int) for c in counts)
    index = np.ldexp(np.asarray(sums), -SUM_GRID)
    assert np.array_equal(index, np.rint(index))
    # Laplace scale 240: the mean of 200 is within 6 standard errors (6 * 340 / sqrt(200) = 144)
    assert abs(np.mean(sums) - frame["age"].sum()) < 150
    assert abs(np.mean(counts) - 1) < 6 * 2.83 / np.sqrt(200)


@pytest.mark.parametrize("mode", ["laplace", "gaussian"])
def test_opendp_proves_each_release_within_its_epsilon(mode):
    """The measurements Noise uses: OpenDP's privacy map at the sensitivity is at most the target."""
    noise = mechanism(mode)
    target = EPSILON if mode == "laplace" else (EPSILON, DELTA)
    for space, d_in, grid in (("count", 1, None), ("cells", 1, None), ("sum", 120.0, SUM_GRID)):
        measurement = noise._measurement(space, d_in, grid)
        assert measurement.check(d_in, target)
        loss = measurement.map(d_in)
        first = loss if mode == "laplace" else loss[0]
        assert EPSILON * 0.99 < first <= EPSILON  # calibrated, not wastefully noisy


def test_gaussian_noise_is_no_longer_limited_to_epsilon_below_1():
    """OpenDP's zCDP-to-approximate-DP conversion holds for any epsilon; the classical bound did not."""
    noise = Noise(mode="gaussian", epsilon=2.5, delta=1e-6)
    measurement = noise._measurement("count", 1, None)
    epsilon, delta = measurement.map(1)
    assert epsilon <= 2.5 and delta == 1e-6


# -- family 8: a threshold's refusal under Noise is part of the accounted release ---------------------


def test_a_threshold_refusal_under_noise_is_post_processing_of_the_noisy_count():
    """With Noise, Anonymity and Dominance together, the refusal is decided on the noisy count, never on
    the exact one: over neighbouring cohorts (with and without the one RARE patient), "refused" and every
    released value are within e^epsilon of each other, and a one-row filter is not refused outright
    (the exact-data rules would refuse it every time, answering "there is such a row" exactly)."""
    draws = 3000
    config = rt.config(rt.policy("Noise", mode="laplace", epsilon=EPSILON, bounds=list(BOUNDS)),
                       rt.policy("Anonymity", k=5), rt.policy("Dominance", n=1, p=0.9))

    def outcomes(frame: pd.DataFrame) -> np.ndarray:
        _, data = rt.serve(config, frame)
        rare = data["dx"] == rt.RARE
        # distinct questions, so that each is a fresh release (no cache in this config anyway)
        queries = [data[rare & (data["age"] > -1 - i)]["age"].len() for i in range(draws)]
        return np.asarray([_release_or_refused(q) for q in queries], dtype=float)

    with_target = rt.cohort()
    without = with_target[with_target["id"] != rt.TARGET_ID].reset_index(drop=True)
    a, b = outcomes(with_target), outcomes(without)
    refused_a, refused_b = np.isnan(a), np.isnan(b)
    assert 0 < refused_a.mean() < 1 and 0 < refused_b.mean() < 1  # decided on the noise, both ways
    regions = [(refused_a, refused_b)] + [(a == v, b == v) for v in np.union1d(a[~refused_a], b[~refused_b])]
    result = audit(a, b, regions)
    assert result.holds(EPSILON), result


def _release_or_refused(query: Any) -> float:
    try:
        return float(rt.quietly(query.compute))
    except fm.PrivacyError:
        return math.nan
