"""fm.stats.coxph under threshold policies (issue 17, item 1): time bins that every server allows, each a cell of
at least k persons, and a fit equal to statsmodels' PHReg on the binned times."""

import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import yaml
from statsmodels.duration.hazard_regression import PHReg

import fedmed as fm
from fedmed.ops import cox

EXACT, PRIVATE = "example/config-exact.yaml", "example/config.yaml"
K = 5


def cohort(n, seed):
    """Days of follow-up (ties) to a study end at day 730, a continuous and a 0/1 predictor, a ward; hazard
    rising with both. (Without a study end the last persons followed up thin out into bins of fewer than k,
    and the bins must be coarse: ``test_a_small_real_data_set_gets_coarse_bins_honestly``.)"""
    rng = np.random.default_rng(seed)
    age, sex = rng.normal(60, 10, n), rng.binomial(1, 0.5, n).astype(float)
    event_day = np.ceil(rng.exponential(700 / np.exp(0.03 * (age - 60) + 0.4 * sex)))
    censor_day = np.minimum(np.ceil(rng.uniform(0, 3000, n)), 730)
    return pd.DataFrame({"id": np.arange(n), "t": np.minimum(event_day, censor_day),
                         "e": (event_day <= censor_day).astype(int), "age": age, "sex": sex,
                         "ward": rng.integers(0, 2, n)})


def servers(df, cuts=(0.5, 0.8), config=PRIVATE):
    bounds = [0] + [int(c * len(df)) for c in cuts] + [len(df)]
    out = []
    for i in range(len(bounds) - 1):
        server = fm.Server(config=config)
        server["d"] = df.iloc[bounds[i]:bounds[i + 1]].reset_index(drop=True)
        out.append(server)
    return out


def fed(df, cuts=(0.5, 0.8), config=PRIVATE, client=None):
    return fm.FedData([fm.Simulation(s, "d", name=f"h{i}") for i, s in enumerate(servers(df, cuts, config))],
                      config=client or config)


def fit_quietly(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fm.PrivacyWarning)
        return fm.stats.coxph(*args, **kwargs).compute()


def binned_reference(df, bins, X, ties, strata=None):
    return PHReg(cox.binned(df["t"].to_numpy(dtype=float), bins), df[X], status=df["e"], ties=ties,
                 strata=strata).fit(tol=1e-12)


def small_cells(frame, bins, X, efron):
    """Per time bin of ``frame``: the counts the rule bounds (persons leaving, events, and those with each
    predictor and product of two zero and non-zero), every one that is 1 to k-1. Written from the rule's text,
    apart from the server's code."""
    frame = frame.assign(bin=cox.binned(frame["t"].to_numpy(dtype=float), bins))
    terms = {c: frame[c] for c in X}
    terms.update({f"{a}*{b}": frame[a] * frame[b] for i, a in enumerate(X) for b in X[i:]})
    found = []
    for _, cell in frame.groupby("bin"):
        events = cell[cell["e"] == 1]
        counts = [len(cell), len(events)]
        for term in terms.values():
            counts += [int((term[cell.index] != 0).sum()), int((term[cell.index] == 0).sum())]
            if efron:
                counts += [int((term[events.index] != 0).sum()), int((term[events.index] == 0).sum())]
        found += [c for c in counts if 0 < c < K]
    return found


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_the_fit_is_phreg_on_the_binned_times_and_says_so(ties):
    df = cohort(3000, 1)
    with pytest.warns(fm.PrivacyWarning, match="event times in bins"):
        fit = fm.stats.coxph(fed(df), "t", "e", ["age", "sex"], ties=ties).compute()
    bins = fit.extra["bin_width"]
    assert bins is not None and cox.nested(bins) and "PHReg" in fit.extra["note"]
    reference = binned_reference(df, bins, ["age", "sex"], ties)
    np.testing.assert_allclose(fit.params.to_numpy(), reference.params, rtol=1e-8)
    np.testing.assert_allclose(fit.bse.to_numpy(), reference.bse, rtol=1e-8)
    np.testing.assert_allclose(fit.llf, reference.llf, rtol=1e-8)
    assert fit.rounds == 1 + fit.iterations  # one round for the ladder of binnings, then Newton
    # the binning is fine enough to be useful: many event bins, estimates near the exact-time ones
    exact = PHReg(df["t"], df[["age", "sex"]], status=df["e"], ties=ties).fit()
    assert fit.extra["grid_times"] >= 8
    np.testing.assert_allclose(fit.params.to_numpy(), exact.params, rtol=0.2)


def test_no_server_releases_a_cell_of_fewer_than_k_at_the_chosen_binning():
    df = cohort(2000, 2)
    cuts = (0.15, 0.6)
    for ties, efron in (("breslow", False), ("efron", True)):
        fit = fit_quietly(fed(df, cuts), "t", "e", ["age", "sex"], ties=ties)
        bins = fit.extra["bin_width"]
        bounds = [0, 300, 1200, 2000]
        for i in range(3):
            part = df.iloc[bounds[i]:bounds[i + 1]]
            assert small_cells(part, bins, ["age", "sex"], efron) == []
        # and the finer binnings that were refused had such cells on some server
        finer = [b for b in (1.0, 8.0, [1.0, 4.0]) if b != bins]
        assert all(any(small_cells(df.iloc[bounds[i]:bounds[i + 1]], b, ["age", "sex"], efron) for i in range(3))
                   for b in finer)


def test_released_cells_are_the_binned_sums_and_nothing_finer():
    df = cohort(1500, 3)
    data = fed(df, cuts=())
    fit = fit_quietly(data, "t", "e", ["age"])
    parts = data["t"]._aggregate("cox_step", (data["e"], [0.0], False, False, fit.extra["bin_width"],
                                              data["age"])).compute()
    times = cox.binned(df["t"].to_numpy(dtype=float), fit.extra["bin_width"])
    assert parts[0]["time"].tolist() == np.unique(times).tolist()
    np.testing.assert_array_equal(parts[0]["cells"][:, 0], pd.Series(times).value_counts().sort_index().to_numpy())


def test_exact_times_that_single_out_a_late_patient_are_refused():
    # red-team: the risk set of the last exact time is one or two persons: their predictors, summed
    df = cohort(400, 4)
    data = fed(df, cuts=())
    request = data["t"]._aggregate("cox_step", (data["e"], [0.0], False, False, 0.0, data["age"]))
    with pytest.raises(fm.PrivacyError, match=r"fewer than 5 rows in one of its cells \(the persons leaving"):
        request.compute()
    with pytest.raises(fm.PrivacyError, match="fewer than 5 rows in one of its cells"):
        data["t"]._aggregate("cox_bins", (data["e"], False, False, 0.0, data["age"])).compute()


@pytest.mark.parametrize("bins", [3.0, [2.0, 3.0], 0.1])
def test_bins_that_are_not_powers_of_two_are_refused(bins):
    # bins of 3 and of 2 overlap without nesting: two fits would differ by the persons of a sliver
    data = fed(cohort(1200, 5))
    with pytest.raises(fm.PrivacyError, match="power of two"):
        fit_quietly(data, "t", "e", ["age"], bin_width=bins)


def test_a_predictor_made_non_zero_on_one_person_per_bin_is_refused():
    # red-team: age times a marker of one person in each bin: each bin's S1 would be that person's age
    df = cohort(1500, 6)
    data = fed(df, cuts=())
    fit = fit_quietly(data, "t", "e", ["age"])
    bins = fit.extra["bin_width"]
    times = pd.Series(cox.binned(df["t"].to_numpy(dtype=float), bins))
    first_of_bin = (~times.duplicated()).astype(int).to_numpy()
    marked = df.assign(first=first_of_bin)
    data = fed(marked, cuts=())
    with pytest.raises(fm.PrivacyError, match="fewer than 5"):
        fm.stats.coxph(data, "t", "e", {"probe": data["age"] * data["first"]}, bin_width=bins).compute()
    with pytest.raises(fm.PrivacyError):  # shifted so that it is never zero: judged within each bin
        fm.stats.coxph(data, "t", "e", {"probe": data["age"] * data["first"] + 1000}, bin_width=bins).compute()


def test_a_beta_that_puts_a_bin_on_one_person_is_refused():
    # red-team: a huge beta makes each bin's S1 / S0 the age of its oldest person
    df = cohort(1500, 7)
    data = fed(df, cuts=())
    bins = fit_quietly(data, "t", "e", ["age"]).extra["bin_width"]
    for beta in ([5.0], [-5.0]):
        request = data["t"]._aggregate("cox_step", (data["e"], beta, False, False, bins, data["age"]))
        with pytest.raises(fm.PrivacyError):
            request.compute()


def test_persons_with_several_rows_count_once():
    # 3 rows per patient: the day of 2 patients has 6 rows and 6 events, and is still 2 persons
    days = [1] * 5 + [2] * 5 + [3] * 2 + [4] * 18
    patients = pd.DataFrame({"id": range(30), "t": days, "e": [1] * 12 + [0] * 18,
                             "age": np.linspace(40, 80, 30)})
    long = pd.concat([patients] * 3, ignore_index=True)
    config = yaml.safe_load(open(PRIVATE))
    by_rows = fm.Server(config=config)
    by_rows["d"] = long
    config["persons"] = {"d": "id"}
    by_persons = fm.Server(config=config)
    by_persons["d"] = long
    ask = lambda data: data["t"]._aggregate("cox_bins", (data["e"], False, False, 1.0, data["age"])).compute()  # noqa: E731
    assert ask(fm.FedData([fm.Simulation(by_rows, "d")], config=PRIVATE))[0]["times"] == 3
    with pytest.raises(fm.PrivacyError, match="fewer than 5 persons in one of its cells"):
        ask(fm.FedData([fm.Simulation(by_persons, "d")], config=config))


def test_a_client_config_without_policies_still_gets_a_binned_fit():
    # the servers' policies decide: exact times are refused, and the client falls back to the ladder
    df = cohort(2000, 9)
    with pytest.warns(fm.PrivacyWarning, match="event times in bins"):
        fit = fm.stats.coxph(fed(df, config=PRIVATE, client=EXACT), "t", "e", ["age"]).compute()
    reference = binned_reference(df, fit.extra["bin_width"], ["age"], "breslow")
    np.testing.assert_allclose(fit.params.to_numpy(), reference.params, rtol=1e-8)
    assert fit.rounds == 2 + fit.iterations  # the refused exact round, the ladder, then Newton


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_strata_under_policies_equal_phreg_on_the_binned_times(ties):
    df = cohort(2400, 10)
    cuts = (0.3, 0.7)
    fit = fit_quietly(fed(df, cuts), "t", "e", ["age", "sex"], ties=ties, strata="server")
    site = np.searchsorted([720, 1680], np.arange(len(df)), side="right")
    reference = binned_reference(df, fit.extra["bin_width"], ["age", "sex"], ties, strata=site)
    np.testing.assert_allclose(fit.params.to_numpy(), reference.params, rtol=1e-8)
    fit = fit_quietly(fed(df, cuts), "t", "e", ["age"], ties=ties, strata="ward")
    reference = binned_reference(df, fit.extra["bin_width"], ["age"], ties, strata=df["ward"])
    np.testing.assert_allclose(fit.params.to_numpy(), reference.params, rtol=1e-8)


def test_a_small_real_data_set_gets_coarse_bins_honestly():
    # statsmodels' heart transplant data: 69 patients over 2 servers under k = 5; few late patients
    heart = sm.datasets.heart.load_pandas().data.rename(columns={"survival": "t", "censors": "e"})
    fit = fit_quietly(fed(heart, cuts=(0.5,)), "t", "e", ["age"], ties="efron")
    reference = binned_reference(heart, fit.extra["bin_width"], ["age"], "efron")
    np.testing.assert_allclose(fit.params.to_numpy(), reference.params, rtol=1e-8)
    assert fit.extra["bin_width"] is not None and fit.extra["grid_times"] < 10
