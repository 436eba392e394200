"""Red team: averaging noise away, spending the budget, and trackers under differential privacy.

``Noise`` (Laplace, bounds [0, 120]) makes every released number random;
``CacheLimit`` answers a repeated question with the answer released before;
``Budget`` refuses noisy queries once a client has spent its epsilon (and
delta), composing the releases with OpenDP. Noise comes from OpenDP's
CSPRNG, which cannot be seeded: the statistical assertions allow at least
six standard errors, so a correct implementation fails them with
negligible probability.

Two tests assert that an attack WORKS, to document a limit: repeated
*rewritten* queries under Noise + CacheLimit without a Budget, and
averaging fresh noise without a cache. The floating-point attack and the
measured likelihood ratios are in ``test_dp_floating_point.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
from pathlib import Path

import numpy as np
import pytest

import fedmed as fm
import opendp.prelude as dp
from fedmed.expr.rowwise import Column, Fragment, Map
from fedmed.privacy import Budget, Noise, Task
from fedmed.privacy.noise import compose

_spec = importlib.util.spec_from_file_location("redteam_support", Path(__file__).with_name("redteam_support.py"))
rt = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(rt)  # type: ignore[union-attr]

T = rt.TARGET_ID
BOUNDS = [0, 120]


def noise(epsilon: float = 1.0, **extra) -> dict:
    return rt.policy("Noise", mode="laplace", epsilon=epsilon, bounds=BOUNDS, **extra)


def map_node(result: fm.LazyResult):
    """The server-side ``Map`` node of a single aggregate."""
    return result.node.map


def laplace_sd(epsilon: float, sensitivity: float = 120.0) -> float:
    """Standard deviation of Laplace noise of scale sensitivity / epsilon (to size the tolerances)."""
    return np.sqrt(2) * sensitivity / epsilon


# -- 5. averaging the noise away ------------------------------------------------------------------


def test_cache_limit_answers_a_thousand_repeats_with_one_noisy_value():
    frame = rt.cohort()
    server, data = rt.serve(rt.config(noise(), rt.policy("CacheLimit", limit=10_000)), frame)
    answers = [data["age"].sum().compute() for _ in range(1000)]
    assert len(set(answers)) == 1
    assert answers[0] != frame["age"].sum()  # it is noisy ...
    assert abs(answers[0] - frame["age"].sum()) < 4000  # ... with Laplace scale 120 (exceeded with p = 3e-15)
    # the commuted expression is the same question: one cache entry, the same answer
    cache = next(p.policy for p in server.config.privacy if isinstance(p.policy, fm.privacy.CacheLimit))
    before = len(cache._answers)
    ab = (data["age"] + data["y"]).sum().compute()
    ba = (data["y"] + data["age"]).sum().compute()
    assert ab == ba
    assert len(cache._answers) == before + 1


def test_without_cache_limit_repeats_draw_fresh_noise_and_average_it_away():
    """This test asserts that the attack WORKS: without a cache or a budget, the mean of
    1000 fresh answers (standard error 170 / sqrt(1000) = 5.4) approaches the exact sum."""
    frame = rt.cohort()
    _, data = rt.serve(rt.config(noise()), frame)
    answers = [data["age"].sum().compute() for _ in range(1000)]
    assert len(set(answers)) > 990  # fresh noise (two may meet on the grid: about 3% of runs)
    assert statistics.stdev(answers) > 100
    assert abs(statistics.fmean(answers) - frame["age"].sum()) < 6 * laplace_sd(1.0) / np.sqrt(1000)


def test_rewritten_queries_average_noise_away_under_noise_and_cache_without_a_budget():
    """This test asserts that the attack WORKS: CacheLimit only recognises equal expressions.

    ``data[(id == 17) & (age > -k)]["age"].sum()`` is the same number for
    every k >= 1 but a different question for the cache, so each draws fresh
    noise; averaging 500 of them gives person 17's age to within a few
    years although one answer has a standard deviation of about 170. Under
    Noise the only defence against this is a Budget.
    """
    _, data = rt.serve(rt.config(noise(), rt.policy("CacheLimit")))
    person = lambda k: data[(data["id"] == T) & (data["age"] > -k)]["age"].sum()  # noqa: E731
    answers = fm.compute(*(person(k) for k in range(1, 501)))
    assert len(set(answers)) > 490  # fresh noise each (two may meet on the grid: about 2% of runs)
    assert statistics.stdev(answers) > 100  # one answer tells nothing ...
    assert abs(statistics.fmean(answers) - rt.TARGET_AGE) < 6 * laplace_sd(1.0) / np.sqrt(500)  # ... their mean does


# -- 6. the budget ---------------------------------------------------------------------------------


def budget_config(**budget) -> dict:
    return rt.config(noise(epsilon=0.5), rt.policy("Budget", **{"epsilon": 1.0, **budget}))


def test_pipeline_charges_a_query_only_the_epsilon_of_its_noise():
    """Budget's own ``epsilon`` is its allowance, not a cost: a query costs the 0.5 of its noise."""
    server, data = rt.serve(budget_config())
    task = Task("cohort", server.version("cohort"), map_node(data["age"].sum()), client="alice")
    server.pipeline.screen(task)
    assert task.epsilon == 0.5 and task.delta == 0.0
    assert task.noised


def test_budget_allows_two_half_epsilon_queries_then_refuses_the_third():
    frame = rt.cohort()
    _, data = rt.serve(budget_config(), frame)
    first = data["age"].sum().compute()
    second = data["age"].len().compute()
    assert abs(first - frame["age"].sum()) < 5000 and abs(second - rt.N) < 50
    err = rt.suppressed(lambda: data["y"].len().compute(), "Budget", data)
    assert "budget exhausted" in err.message and "spent epsilon 1 of 1" in err.message


def test_budget_is_kept_per_client_identity():
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
    """Over HTTP, so the client's identity (its address) is the same before and
    after the restart; a Simulation's identity includes the server object's id."""
    state = tmp_path / "budget.json"
    cfg = budget_config(state_file=str(state))
    first = fm.Server(config=cfg)
    first["cohort"] = rt.cohort()
    running = serve(first)
    data = fm.FedData([fm.Remote(ip=running.url, fragment="cohort")], config=cfg)
    data["age"].sum().compute()
    data["age"].len().compute()
    running.stop()
    assert json.loads(state.read_text()) == {
        "releases": {"127.0.0.1": [[0.5, 0.0], [0.5, 0.0]]}, "epsilon": {"127.0.0.1": 1.0}, "delta": {},
    }
    restarted = fm.Server(config=cfg)  # the same config: a fresh process would do the same
    restarted["cohort"] = rt.cohort()
    url = serve(restarted).url
    again = fm.FedData([fm.Remote(ip=url, fragment="cohort")], config=cfg)
    err = rt.suppressed(lambda: again["y"].len().compute(), "Budget", again)
    assert err.server == url
    assert not [p for p in os.listdir(tmp_path) if p != "budget.json"]  # no temporary file left


#: A task's node for the hooks called directly: ``data['age'].sum()``.
SUM = Map("sum", (Column(Fragment(), "age"),))


def charge(budget: Budget, who: str = "alice", epsilon: float = 0.5, delta: float = 0.0) -> None:
    """Admit one release of ``(epsilon, delta)`` for ``who`` (raises PrivacyError when refused)."""
    budget.admit(Task("cohort", 1, SUM, client=who, epsilon=epsilon, delta=delta))


def test_budget_accounting_itself_is_per_client_and_persistent(tmp_path):
    """The Budget policy on its own (hooks called directly, with the cost a correct pipeline would set)."""
    state = tmp_path / "spent.json"
    budget = Budget(epsilon=1.0, state_file=str(state))
    charge(budget)
    charge(budget)
    with pytest.raises(fm.PrivacyError) as info:
        charge(budget)
    assert info.value.policy == "Budget(epsilon=1.0, per='client')"
    charge(budget, "bob")
    restarted = Budget(epsilon=1.0, state_file=str(state))
    assert restarted.spent("alice") == 1.0 and restarted.spent("bob") == 0.5
    with pytest.raises(fm.PrivacyError):
        charge(restarted)
    shared = Budget(epsilon=1.0, per="server")
    charge(shared, "alice")
    charge(shared, "bob")
    with pytest.raises(fm.PrivacyError):
        charge(shared, "carol")


# -- composition by OpenDP ----------------------------------------------------------------------------


def test_laplace_releases_compose_to_the_sum_of_their_epsilons():
    """Pure releases: basic composition is the plain sum (OpenDP rounds it up, by ulps)."""
    epsilons = [0.1, 0.25, 0.05, 0.3, 0.2]
    budget = Budget(epsilon=1.0)
    for e in epsilons:
        charge(budget, epsilon=e)
    assert budget.spent("alice") == pytest.approx(sum(epsilons), rel=1e-12)
    assert budget.spent("alice") >= sum(epsilons)  # never below
    assert budget.spent_delta("alice") == 0.0
    # ten releases of 0.1 fill a budget of 1 exactly, up to rounding; the eleventh is refused
    tenths = Budget(epsilon=1.0)
    for _ in range(10):
        charge(tenths, epsilon=0.1)
    with pytest.raises(fm.PrivacyError):
        charge(tenths, epsilon=0.1)


def test_the_composition_is_opendps():
    """``compose`` is OpenDP's basic composition of measurements with these privacy losses."""
    releases = [(0.3, 0.0), (0.1, 1e-6), (0.2, 2e-6)]
    space = dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)
    mechanisms = [dp.m.make_canonical_noise(*space, d_in=1.0, d_out=r) for r in releases]
    assert compose(releases) == tuple(dp.c.make_composition(mechanisms).map(1.0))
    assert compose(releases) == pytest.approx((0.6, 3e-6), rel=1e-12)
    assert compose([]) == (0.0, 0.0)


def test_gaussian_releases_compose_with_their_delta_and_the_account_refuses_on_either():
    budget = Budget(epsilon=10.0, delta=3e-6)
    for _ in range(3):
        charge(budget, epsilon=0.1, delta=1e-6)
    assert budget.spent("alice") == pytest.approx(0.3, rel=1e-12)
    assert budget.spent_delta("alice") == pytest.approx(3e-6, rel=1e-12)
    with pytest.raises(fm.PrivacyError) as info:  # delta would exceed
        charge(budget, epsilon=0.1, delta=1e-6)
    assert "delta 3e-06 of 3e-06; this query needs epsilon 0.1 and delta 1e-06" in info.value.message
    charge(budget, epsilon=0.1)  # a Laplace release needs no delta: still admitted
    small = Budget(epsilon=0.25, delta=1e-3)
    charge(small, epsilon=0.2, delta=1e-6)
    with pytest.raises(fm.PrivacyError) as info:  # epsilon would exceed
        charge(small, epsilon=0.1, delta=1e-6)
    assert "spent epsilon 0.2 of 0.25" in info.value.message


def test_laplace_and_gaussian_releases_mix():
    budget = Budget(epsilon=1.0, delta=1e-5)
    charge(budget, epsilon=0.3)
    charge(budget, epsilon=0.2, delta=4e-6)
    charge(budget, epsilon=0.4)
    assert budget.spent("alice") == pytest.approx(0.9, rel=1e-12)
    assert budget.spent_delta("alice") == pytest.approx(4e-6, rel=1e-12)
    with pytest.raises(fm.PrivacyError):
        charge(budget, epsilon=0.2, delta=1e-6)


def test_budget_admits_gaussian_noise_only_with_a_delta_allowance():
    gaussian = rt.policy("Noise", mode="gaussian", epsilon=0.1, delta=1e-6, bounds=BOUNDS)
    _, data = rt.serve(rt.config(gaussian, rt.policy("Budget", epsilon=10.0)))
    err = rt.suppressed(lambda: data["age"].len().compute(), "Budget", data)
    assert "delta 0 of 0; this query needs epsilon 0.1 and delta 1e-06" in str(err)
    _, data = rt.serve(rt.config(gaussian, rt.policy("Budget", epsilon=10.0, delta=3e-6)))
    for column in ("age", "y", "id"):  # three releases: delta 3e-6, epsilon 0.3 of 10
        data[column].len().compute()
    err = rt.suppressed(lambda: data["age"].sum().compute(), "Budget", data)
    assert "delta 3e-06 of 3e-06" in str(err)
    assert err.policy == "Budget(epsilon=10.0, delta=3e-06, per='client')"


def test_gaussian_noise_has_opendps_spread():
    """A count (sensitivity 1) asked 400 times, each a new question: the answers' spread is the
    discrete Gaussian's scale that OpenDP finds for (0.5, 1e-6), smaller than the classical
    sqrt(2 ln(1.25 / delta)) / epsilon = 10.6 (whose proof needed epsilon < 1)."""
    frame = rt.cohort()
    _, data = rt.serve(rt.config(rt.policy("Noise", mode="gaussian", epsilon=0.5, delta=1e-6, bounds=BOUNDS)), frame)
    space = dp.atom_domain(T="i64"), dp.absolute_distance(T="i64")

    def gaussian(scale: float):
        return dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(dp.m.make_gaussian(*space, scale=scale)), 1e-6)

    sigma = dp.binary_search_param(gaussian, d_in=1, d_out=(0.5, 1e-6))
    assert 8 < sigma < np.sqrt(2 * np.log(1.25 / 1e-6)) / 0.5
    errors = [data["age"].len().compute() - len(frame) for _ in range(400)]
    assert all(isinstance(e, int) for e in errors)
    assert abs(statistics.mean(errors)) < 6 * sigma / np.sqrt(400)
    assert 0.8 * sigma < statistics.stdev(errors) < 1.2 * sigma  # 5.7 standard errors either way


# -- the state file -------------------------------------------------------------------------------------


def test_budget_state_file_keeps_each_release_and_reads_both_older_forms(tmp_path):
    state = tmp_path / "spent.json"
    state.write_text(json.dumps({"alice": 0.5}))  # as written before delta was accounted
    budget = Budget(epsilon=1.0, delta=1e-5, state_file=str(state))
    assert budget.spent("alice") == 0.5 and budget.spent_delta("alice") == 0.0
    charge(budget, epsilon=0.25, delta=4e-6)
    assert json.loads(state.read_text())["releases"] == {"alice": [[0.5, 0.0], [0.25, 4e-6]]}
    restarted = Budget(epsilon=1.0, delta=1e-5, state_file=str(state))
    assert restarted.spent("alice") == 0.75 and restarted.spent_delta("alice") == 4e-6
    # totals by account, as written by the version before releases were kept
    state.write_text(json.dumps({"epsilon": {"alice": 0.75, "bob": 0.1}, "delta": {"alice": 4e-6}}))
    older = Budget(epsilon=1.0, delta=1e-5, state_file=str(state))
    assert (older.spent("alice"), older.spent_delta("alice")) == (0.75, 4e-6)
    assert (older.spent("bob"), older.spent_delta("bob")) == (0.1, 0.0)
    with pytest.raises(fm.PrivacyError):
        charge(older, epsilon=0.3)


def test_an_unwritable_state_location_refuses_and_leaves_nothing(tmp_path):
    """A state file whose folder cannot hold files (here a regular file, which fails for root too,
    unlike a read-only folder) refuses every charge and leaves nothing behind."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    budget = Budget(epsilon=1.0, state_file=str(blocker / "budget.json"))
    with pytest.raises(fm.PrivacyError) as info:
        charge(budget)
    assert "cannot be saved" in info.value.message
    assert sorted(os.listdir(tmp_path)) == ["not-a-folder"] and budget.spent("alice") == 0.0


@pytest.mark.parametrize("failing", ["mkstemp", "json.dump", "os.replace"])
def test_a_failed_save_refuses_undoes_the_charge_and_leaves_no_temporary_file(tmp_path, monkeypatch, failing):
    """Fail closed: the task is refused before anything is computed, so it released nothing
    and is not charged; the state file keeps its previous content."""
    state = tmp_path / "budget.json"
    budget = Budget(epsilon=1.0, state_file=str(state))
    charge(budget, epsilon=0.25)
    saved = state.read_text()

    def broken(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    target = {"mkstemp": "tempfile.mkstemp", "json.dump": "json.dump", "os.replace": "os.replace"}[failing]
    monkeypatch.setattr(target, broken)
    with pytest.raises(fm.PrivacyError) as info:
        charge(budget, epsilon=0.25)
    monkeypatch.undo()
    assert "cannot be saved on this server (Permission denied)" in info.value.message
    assert os.listdir(tmp_path) == ["budget.json"] and state.read_text() == saved
    assert budget.spent("alice") == 0.25
    charge(budget, epsilon=0.25)  # works again once the file can be written
    assert Budget(epsilon=1.0, state_file=str(state)).spent("alice") == 0.5


# -- every noised task is charged once, at admit ----------------------------------------------------------


REFUSER = '''
from fedmed.privacy import Policy


class RefuseEverything(Policy):
    """Refuses every result after evaluation (after Noise has drawn its noise)."""

    def apply(self, task, value):
        raise task.refuse(self, "refused after evaluation")
'''


def test_a_noised_task_is_charged_once_whatever_happens_after_admit(tmp_path, monkeypatch):
    (tmp_path / "noise_budget_refuser.py").write_text(REFUSER)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = rt.config(noise(epsilon=0.1), rt.policy("Budget", epsilon=10.0, per="server"),
                    {"policy": "noise_budget_refuser.RefuseEverything", "filter": ["*.count()"]})
    server, data = rt.serve(cfg)
    budget = server.config.privacy[1].policy
    spent = lambda: budget.spent("anyone")  # noqa: E731

    data["age"].len().compute()  # released
    assert spent() == pytest.approx(0.1)
    with pytest.raises(fm.TaskFailed):  # fails in evaluation
        data["age"].histogram([3.0, 1.0]).compute()
    assert spent() == pytest.approx(0.2)
    rt.suppressed(lambda: data["age"].count().compute(), "RefuseEverything", data)  # refused later
    assert spent() == pytest.approx(0.3)
    rt.suppressed(lambda: data.len().compute(), "Noise", data)  # a whole table: refused by Noise itself
    assert spent() == pytest.approx(0.4)
    # two tasks in one request: each charged once
    fm.compute(data["age"].len(), data["y"].len())
    assert spent() == pytest.approx(0.6)
    assert len(budget._releases["*"]) == 6
    # what Noise refuses from the query alone is refused at its admit: never evaluated, never charged
    rt.suppressed(lambda: data["age"].max().compute(), "Noise", data)
    rt.suppressed(lambda: data["dx"].value_counts().compute(), "Noise", data)
    assert spent() == pytest.approx(0.6)


def test_noise_marks_its_tasks_as_noised_and_simple_mode_does_not():
    node = Map("len", (Column(Fragment(), "age"),))
    modes = (("laplace", {"epsilon": 1.0}, True), ("gaussian", {"epsilon": 1.0, "delta": 1e-6}, True),
             ("simple", {"value": 1.0}, False))
    for mode, params, noised in modes:
        task = Task("cohort", 1, node)
        Noise(mode=mode, **params).admit(task)
        assert task.noised is noised, mode


def test_seed_only_seeds_simple_mode():
    """OpenDP's CSPRNG cannot be seeded: a seed in laplace mode is accepted (old configs) and ignored."""
    task = Task("cohort", 1, Map("len", (Column(Fragment(), "age"),)))
    simple = [Noise(mode="simple", value=5.0, seed=3).apply(task, 100) for _ in range(2)]
    assert simple[0] == simple[1]
    laplace = {Noise(mode="laplace", epsilon=0.1, seed=3).apply(task, 100) for _ in range(20)}
    assert len(laplace) > 1


@pytest.mark.parametrize("bounds", [[0, 0], [5, 1], [0, float("inf")], ["a", 1], {"age": [1]}])
def test_noise_refuses_unusable_bounds_when_the_config_is_loaded(bounds):
    with pytest.raises(ValueError, match="bounds"):
        Noise(mode="laplace", epsilon=1.0, bounds=bounds)


# -- 9. the tracker under noise and budget -----------------------------------------------------------


def tracker(data: fm.FedData, k: int = 1) -> tuple[fm.LazyResult, fm.LazyResult]:
    """The two queries of the simplest tracker; ``k`` rewrites them so the cache sees new questions."""
    ids = data["id"]
    return data[(ids < 100) & (ids > -k)]["age"].sum(), data[(ids < 100) & (ids != T) & (ids > -k)]["age"].sum()


TRACKER_CONFIGS = {
    "noise + cache": lambda: rt.config(noise(0.1), rt.policy("CacheLimit")),
    "noise + budget + cache": lambda: rt.config(
        noise(0.1), rt.policy("Budget", epsilon=1.0), rt.policy("CacheLimit")
    ),
}


@pytest.mark.parametrize("name", TRACKER_CONFIGS)
def test_tracker_estimate_is_swamped_by_noise(name):
    """With epsilon 0.1 per sum (Laplace scale 1200), a tracker's difference of two sums is
    off by hundreds of years: over 50 fresh servers the spread of the estimate of person
    17's age is enormous."""
    frame = rt.cohort()
    estimates = []
    for _ in range(50):
        _, data = rt.serve(TRACKER_CONFIGS[name](), frame)
        first, second = fm.compute(*tracker(data))
        estimates.append(first - second)
    errors = np.abs(np.asarray(estimates) - rt.TARGET_AGE)
    assert np.median(errors) > 200
    assert np.std(estimates) > 500
    # without noise the same two queries give the age exactly
    assert frame.loc[frame.id < 100, "age"].sum() - frame.loc[(frame.id < 100) & (frame.id != T), "age"].sum() == 77


def test_budget_stops_the_tracker_after_ten_queries():
    _, data = rt.serve(TRACKER_CONFIGS["noise + budget + cache"]())
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
    _, data = rt.serve(rt.config(rt.policy("Noise", mode="laplace", epsilon=1.0, bounds={"age": [0, 120]})), frame)
    err = rt.suppressed(lambda: data["y"].sum().compute(), "Noise", data)  # no bounds declared for y
    assert "bounds" in err.message
    total, n = fm.compute(data["age"].sum(), data["age"].len())
    assert abs(total / n - frame["age"].mean()) < 5
    # a histogram's bins are fixed by the query, so its counts can be noised: whole numbers
    hist = data["age"].histogram([0.0, 40.0, 60.0, 120.0]).compute()
    truth = np.histogram(frame["age"], bins=[0.0, 40.0, 60.0, 120.0])[0]
    assert np.all(np.abs(hist.counts - truth) <= 15)
    assert all(isinstance(c, (int, np.integer)) for c in hist.counts)
    # value_counts labels are the data's own values: refused under Noise
    rt.suppressed(lambda: data["dx"].value_counts().compute(), "Noise", data)


def test_a_sum_clips_each_row_to_the_bounds():
    """One row of 10**9 moves a sum bounded by [0, 120] by at most 120 (plus noise of scale 12 at epsilon 10)."""
    frame = rt.cohort()
    frame.loc[0, "age"] = 10**9
    _, data = rt.serve(rt.config(noise(epsilon=10.0)), frame)
    clipped = frame["age"].clip(0, 120).sum()
    assert abs(data["age"].sum().compute() - clipped) < 12 * 30


NOISY_TABLES = {
    "value_counts of one person's age": lambda d: list(d[d["id"] == T]["age"].value_counts().compute().index),
    "crosstab of one person's dx and age": lambda d: [
        (str(r), c) for r, row in d[d["id"] == T]["dx"].astype("str").crosstab(d[d["id"] == T]["age"]).compute().iterrows()
        for c in row.index
    ],
}


@pytest.mark.parametrize("attack", NOISY_TABLES)
def test_noise_does_not_release_one_persons_values_as_cell_labels(attack):
    """Noise would perturb the counts of value_counts/crosstab but their labels are the data:
    ``data[id == 17]["age"].value_counts()`` has one cell, labelled 77, person 17's exact
    age. Refused (histogram, with edges chosen by the client, is the safe form)."""
    _, data = rt.serve(rt.config(noise()))
    rt.suppressed(lambda: NOISY_TABLES[attack](data), "Noise", data)
