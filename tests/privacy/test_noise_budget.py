"""Red team: averaging noise away, spending the budget, and trackers under differential privacy.

``Noise`` (Laplace, bounds [0, 120]) makes every released number random;
``CacheLimit`` answers a repeated question with the answer released before;
``Budget`` refuses noisy queries once a client has spent its epsilon. Noise
``seed`` is fixed in every test, so each test is deterministic.

Tests that FAIL here show an attack that succeeds or a policy that
misbehaves (see each docstring). Two tests assert that an attack WORKS, to
document a limit: repeated *rewritten* queries under Noise + CacheLimit
without a Budget, and the tracker without a Budget.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import numpy as np
import pytest

import fedmed as fm
from fedmed.privacy import Budget, Task

_spec = importlib.util.spec_from_file_location("redteam_support", Path(__file__).with_name("redteam_support.py"))
rt = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(rt)  # type: ignore[union-attr]

T = rt.TARGET_ID
BOUNDS = [0, 120]


def noise(epsilon: float = 1.0, seed: int = 1, **extra) -> dict:
    return rt.policy("Noise", mode="laplace", epsilon=epsilon, bounds=BOUNDS, seed=seed, **extra)


def map_node(result: fm.LazyResult):
    """The server-side ``Map`` node of a single aggregate."""
    return result.node.map


# -- 5. averaging the noise away ------------------------------------------------------------------


def test_cache_limit_answers_a_thousand_repeats_with_one_noisy_value():
    frame = rt.cohort()
    server, data = rt.serve(rt.config(noise(), rt.policy("CacheLimit", limit=10_000)), frame)
    answers = [data["age"].sum().compute() for _ in range(1000)]
    assert len(set(answers)) == 1
    assert answers[0] != frame["age"].sum()  # it is noisy ...
    assert abs(answers[0] - frame["age"].sum()) < 2000  # ... with Laplace scale 120
    # the commuted expression is the same question: one cache entry, the same answer
    cache = next(p.policy for p in server.config.privacy if isinstance(p.policy, fm.privacy.CacheLimit))
    before = len(cache._answers)
    ab = (data["age"] + data["y"]).sum().compute()
    ba = (data["y"] + data["age"]).sum().compute()
    assert ab == ba
    assert len(cache._answers) == before + 1


def test_without_cache_limit_repeats_draw_fresh_noise_and_average_it_away():
    frame = rt.cohort()
    _, data = rt.serve(rt.config(noise()), frame)
    answers = [data["age"].sum().compute() for _ in range(300)]
    assert len(set(answers)) == 300
    # what the cache protects against: the average converges on the exact sum (standard error ~10)
    assert statistics.stdev(answers) > 100
    assert abs(statistics.fmean(answers) - frame["age"].sum()) < 40


def test_rewritten_queries_average_noise_away_under_noise_and_cache_without_a_budget():
    """This test asserts that the attack WORKS: CacheLimit only recognises equal expressions.

    ``data[(id == 17) & (age > -k)]["age"].sum()`` is the same number for
    every k >= 1 but a different question for the cache, so each draws fresh
    noise; averaging 500 of them gives person 17's age to within a few
    years although one answer has a standard deviation of about 170. Under
    Noise the only defence against this is a Budget.
    """
    _, data = rt.serve(rt.config(noise(seed=5), rt.policy("CacheLimit")))
    person = lambda k: data[(data["id"] == T) & (data["age"] > -k)]["age"].sum()  # noqa: E731
    answers = fm.compute(*(person(k) for k in range(1, 501)))
    assert len(set(answers)) == 500
    assert statistics.stdev(answers) > 100  # one answer tells nothing ...
    assert abs(statistics.fmean(answers) - rt.TARGET_AGE) < 30  # ... their mean does (standard error ~8)


# -- 6. the budget ---------------------------------------------------------------------------------


def budget_config(**budget) -> dict:
    return rt.config(noise(epsilon=0.5), rt.policy("Budget", **{"epsilon": 1.0, **budget}))


def test_pipeline_charges_a_query_only_the_epsilon_of_its_noise():
    """FAILS today: ``Pipeline.screen`` sums the ``epsilon`` attribute of every active policy,
    and Budget's ``epsilon`` is its allowance: a query costs 0.5 (noise) + 1.0
    (the budget itself) = 1.5 > 1.0, so every noisy query is refused."""
    server, data = rt.serve(budget_config())
    task = Task("cohort", server.version("cohort"), map_node(data["age"].sum()), client="alice")
    server.pipeline.screen(task)
    assert task.epsilon == 0.5


def test_budget_allows_two_half_epsilon_queries_then_refuses_the_third():
    """FAILS today (see test_pipeline_charges_a_query_only_the_epsilon_of_its_noise): the first is refused."""
    frame = rt.cohort()
    _, data = rt.serve(budget_config(), frame)
    first = data["age"].sum().compute()
    second = data["age"].len().compute()
    assert abs(first - frame["age"].sum()) < 5000 and abs(second - rt.N) < 50
    err = rt.suppressed(lambda: data["y"].len().compute(), "Budget", data)
    assert "budget exhausted" in err.message and "spent 1 of 1" in err.message


def test_budget_is_kept_per_client_identity():
    """FAILS today (see test_pipeline_charges_a_query_only_the_epsilon_of_its_noise)."""
    server = fm.Server(config=budget_config())
    server["cohort"] = rt.cohort()
    alice = fm.FedData([fm.Simulation(server, "cohort", name="alice")], config=server.config)
    bob = fm.FedData([fm.Simulation(server, "cohort", name="bob")], config=server.config)
    alice["age"].sum().compute()
    alice["age"].len().compute()
    rt.suppressed(lambda: alice["y"].len().compute(), "Budget", alice)
    # bob has his own, untouched account
    bob["age"].sum().compute()
    bob["age"].len().compute()
    rt.suppressed(lambda: bob["y"].len().compute(), "Budget", bob)


def test_budget_state_file_survives_a_server_restart(serve, tmp_path):
    """FAILS today (see test_pipeline_charges_a_query_only_the_epsilon_of_its_noise).

    Over HTTP, so the client's identity (its address) is the same before and
    after the restart; a Simulation's identity includes the server object's id.
    """
    state = tmp_path / "budget.json"
    cfg = budget_config(state_file=str(state))
    first = fm.Server(config=cfg)
    first["cohort"] = rt.cohort()
    running = serve(first)
    data = fm.FedData([fm.Remote(ip=running.url, fragment="cohort")], config=cfg)
    data["age"].sum().compute()
    data["age"].len().compute()
    running.stop()
    assert json.loads(state.read_text()) == {"epsilon": {"127.0.0.1": 1.0}, "delta": {}}
    restarted = fm.Server(config=cfg)  # the same config: a fresh process would do the same
    restarted["cohort"] = rt.cohort()
    url = serve(restarted).url
    again = fm.FedData([fm.Remote(ip=url, fragment="cohort")], config=cfg)
    err = rt.suppressed(lambda: again["y"].len().compute(), "Budget", again)
    assert err.server == url


def test_budget_accounting_itself_is_per_client_and_persistent(tmp_path):
    """The Budget policy on its own (hooks called directly, with the cost a correct pipeline would set)."""
    state = tmp_path / "spent.json"
    _, data = rt.serve(rt.config())
    node = map_node(data["age"].sum())
    budget = Budget(epsilon=1.0, state_file=str(state))
    task = lambda who: Task("cohort", 1, node, client=who, epsilon=0.5)  # noqa: E731
    budget.admit(task("alice"))
    budget.admit(task("alice"))
    with pytest.raises(fm.PrivacyError) as info:
        budget.admit(task("alice"))
    assert info.value.policy == "Budget(epsilon=1.0, per='client')"
    budget.admit(task("bob"))
    restarted = Budget(epsilon=1.0, state_file=str(state))
    assert restarted.spent("alice") == 1.0 and restarted.spent("bob") == 0.5
    with pytest.raises(fm.PrivacyError):
        restarted.admit(task("alice"))
    shared = Budget(epsilon=1.0, per="server")
    shared.admit(task("alice"))
    shared.admit(task("bob"))
    with pytest.raises(fm.PrivacyError):
        shared.admit(task("carol"))


def gaussian(epsilon: float = 0.5, delta: float = 1e-6, seed: int = 1) -> dict:
    return rt.policy("Noise", mode="gaussian", epsilon=epsilon, delta=delta, bounds=BOUNDS, seed=seed)


@pytest.mark.parametrize("epsilon", [1.0, 2.5])
def test_gaussian_noise_refuses_an_epsilon_its_bound_does_not_cover(epsilon):
    # the classical Gaussian mechanism is (epsilon, delta)-DP only for epsilon < 1
    with pytest.raises(ValueError, match="epsilon < 1"):
        fm.privacy.Noise(mode="gaussian", epsilon=epsilon, delta=1e-6)


def test_gaussian_noise_has_the_documented_spread():
    """A count (sensitivity 1) asked 400 times, each a new question: the answers' spread is the
    documented sigma = sqrt(2 ln(1.25 / delta)) / epsilon."""
    frame = rt.cohort()
    _, data = rt.serve(rt.config(gaussian(epsilon=0.5, delta=1e-6)), frame)
    sigma = np.sqrt(2 * np.log(1.25 / 1e-6)) / 0.5
    errors = [data["age"].len().compute() - len(frame) for _ in range(400)]
    assert abs(statistics.mean(errors)) < 4 * sigma / np.sqrt(400)
    assert 0.85 * sigma < statistics.stdev(errors) < 1.15 * sigma


def test_budget_accounts_delta_and_admits_gaussian_noise_only_with_a_delta_allowance():
    _, data = rt.serve(rt.config(gaussian(epsilon=0.1, delta=1e-6), rt.policy("Budget", epsilon=10.0)))
    err = rt.suppressed(lambda: data["age"].len().compute(), "Budget", data)
    assert "spent delta 0 of 0, this query needs 1e-06" in str(err)
    _, data = rt.serve(rt.config(gaussian(epsilon=0.1, delta=1e-6),
                                 rt.policy("Budget", epsilon=10.0, delta=3e-6)))
    for column in ("age", "y", "id"):  # three releases: delta 3e-6, epsilon 0.3 of 10
        data[column].len().compute()
    err = rt.suppressed(lambda: data["age"].sum().compute(), "Budget", data)
    assert "spent delta 3e-06 of 3e-06" in str(err)
    assert err.policy == "Budget(epsilon=10.0, delta=3e-06, per='client')"


def test_budget_state_file_keeps_delta_and_reads_the_older_epsilon_only_file(tmp_path):
    state = tmp_path / "spent.json"
    state.write_text(json.dumps({"alice": 0.5}))  # as written before delta was accounted
    budget = Budget(epsilon=1.0, delta=1e-5, state_file=str(state))
    assert budget.spent("alice") == 0.5 and budget.spent_delta("alice") == 0.0
    _, data = rt.serve(rt.config())
    budget.admit(Task("cohort", 1, map_node(data["age"].sum()), client="alice", epsilon=0.25, delta=4e-6))
    restarted = Budget(epsilon=1.0, delta=1e-5, state_file=str(state))
    assert restarted.spent("alice") == 0.75 and restarted.spent_delta("alice") == 4e-6


# -- 9. the tracker under noise and budget -----------------------------------------------------------


def tracker(data: fm.FedData, k: int = 1) -> tuple[fm.LazyResult, fm.LazyResult]:
    """The two queries of the simplest tracker; ``k`` rewrites them so the cache sees new questions."""
    ids = data["id"]
    return data[(ids < 100) & (ids > -k)]["age"].sum(), data[(ids < 100) & (ids != T) & (ids > -k)]["age"].sum()


TRACKER_CONFIGS = {
    "noise + cache": lambda seed: rt.config(noise(0.1, seed), rt.policy("CacheLimit")),
    "noise + budget + cache": lambda seed: rt.config(
        noise(0.1, seed), rt.policy("Budget", epsilon=1.0), rt.policy("CacheLimit")
    ),
}


@pytest.mark.parametrize("name", TRACKER_CONFIGS)
def test_tracker_estimate_is_swamped_by_noise(name):
    """With epsilon 0.1 per sum (Laplace scale 1200), a tracker's difference of two sums is
    off by hundreds of years: over 50 fresh servers (50 noise seeds) the spread
    of the estimate of person 17's age is enormous. FAILS today with the Budget
    (see test_pipeline_charges_a_query_only_the_epsilon_of_its_noise)."""
    frame = rt.cohort()
    estimates = []
    for seed in range(50):
        _, data = rt.serve(TRACKER_CONFIGS[name](seed), frame)
        first, second = fm.compute(*tracker(data))
        estimates.append(first - second)
    errors = np.abs(np.asarray(estimates) - rt.TARGET_AGE)
    assert np.median(errors) > 200
    assert np.std(estimates) > 500
    # without noise the same two queries give the age exactly
    assert frame.loc[frame.id < 100, "age"].sum() - frame.loc[(frame.id < 100) & (frame.id != T), "age"].sum() == 77


def test_budget_stops_the_tracker_after_ten_queries():
    """FAILS today: the Budget refuses the very first query (cost 0.1 + 1.0 > 1.0)
    instead of the eleventh (see test_pipeline_charges_a_query_only_the_epsilon_of_its_noise)."""
    _, data = rt.serve(TRACKER_CONFIGS["noise + budget + cache"](7))
    answered: list[float] = []
    refusal = None
    for k in range(1, 50):  # rewritten trackers, so the cache cannot serve them for free
        for query in tracker(data, k):
            try:
                answered.append(query.compute())
            except fm.PrivacyError as err:
                refusal = err
                break
        if refusal is not None:
            break
    assert refusal is not None and refusal.policy.startswith("Budget("), refusal
    assert len(answered) == 10, f"{len(answered)} noisy answers before the budget refused: {refusal}"
    pairs = np.asarray(answered).reshape(-1, 2)
    estimate = float(np.mean(pairs[:, 0] - pairs[:, 1]))
    assert abs(estimate - rt.TARGET_AGE) > 10  # five tracker pairs still cannot locate the age
    # an answer released before is still served, from the cache, at no cost
    first, second = tracker(data, 1)
    assert first.compute() == answered[0]


# -- what Noise refuses, and what it must not release -------------------------------------------------


@pytest.mark.parametrize("aggregate", ["min", "max", "moments", "unique", "count_below"])
def test_noise_refuses_aggregates_of_unbounded_sensitivity(aggregate):
    _, data = rt.serve(rt.config(noise()))
    age = data["age"]
    run = {
        "min": age.min, "max": age.max, "moments": age.moments, "unique": age.unique,
        "count_below": lambda: age.count_below([50.0]),
    }[aggregate]
    err = rt.suppressed(lambda: run().compute(), "Noise", data)
    # unique releases the values themselves as labels: refused for that reason
    assert ("labels" if aggregate == "unique" else "sensitivity") in err.message


def test_noise_refuses_a_sum_without_bounds_and_honest_counts_are_close():
    frame = rt.cohort()
    _, data = rt.serve(rt.config(rt.policy("Noise", mode="laplace", epsilon=1.0, bounds={"age": [0, 120]}, seed=3)), frame)
    err = rt.suppressed(lambda: data["y"].sum().compute(), "Noise", data)  # no bounds declared for y
    assert "bounds" in err.message
    total, n = fm.compute(data["age"].sum(), data["age"].len())
    assert abs(total / n - frame["age"].mean()) < 5
    # a histogram's bins are fixed by the query, so its counts can be noised
    hist = data["age"].histogram([0.0, 40.0, 60.0, 120.0]).compute()
    truth = np.histogram(frame["age"], bins=[0.0, 40.0, 60.0, 120.0])[0]
    assert np.all(np.abs(hist.counts - truth) <= 10)
    # value_counts labels are the data's own values: refused under Noise
    rt.suppressed(lambda: data["dx"].value_counts().compute(), "Noise", data)


NOISY_TABLES = {
    "value_counts of one person's age": lambda d: list(d[d["id"] == T]["age"].value_counts().compute().index),
    "crosstab of one person's dx and age": lambda d: [
        (str(r), c) for r, row in d[d["id"] == T]["dx"].astype("str").crosstab(d[d["id"] == T]["age"]).compute().iterrows()
        for c in row.index
    ],
}


@pytest.mark.parametrize("attack", NOISY_TABLES)
def test_noise_does_not_release_one_persons_values_as_cell_labels(attack):
    """FAILS today: Noise perturbs the counts of value_counts/crosstab but releases their
    labels, which are the data. ``data[id == 17]["age"].value_counts()`` has
    one cell, labelled 77: person 17's exact age, at an epsilon cost of 1.
    (The labels are not differentially private; histogram, with edges chosen
    by the client, is the safe form.)"""
    _, data = rt.serve(rt.config(noise()))
    rt.suppressed(lambda: NOISY_TABLES[attack](data), "Noise", data)
