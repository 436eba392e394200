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
    df = cohort(6000, 1)
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
    assert fit.extra["grid_times"] >= 5
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


# -- red team (2026-12-03): what a few releases at hand-chosen times, betas and predictors give -------------


def patients(n=200, seed=1):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": np.arange(n), "t": np.round(rng.exponential(500, n) + 1, 0),
                         "e": (rng.random(n) < 0.7).astype(int), "age": rng.integers(30, 90, n).astype(float),
                         "bmi": np.round(rng.normal(27, 4, n), 1)})


def one_server(df):
    server = fm.Server(config=PRIVATE)
    server["d"] = df
    return fm.FedData([fm.Simulation(server, "d", name="h0")], config=PRIVATE)


def test_the_persons_of_a_bin_without_an_event_are_a_cell_too():
    # was an attack: 6 persons leave a bin, 5 of them events; with Efron the bin's sums minus its events' sums
    # were the sixth person's predictors, exactly
    df = pd.DataFrame({"t": [1.0] * 6 + [3.0] * 20, "e": [1] * 5 + [0] * 21, "age": np.arange(26.0) + 40})
    data = one_server(df)
    request = data["t"]._aggregate("cox_step", (data["e"], [0.0], True, False, 2.0, data["age"]))
    with pytest.raises(fm.PrivacyError, match="the persons leaving one time bin without an event"):
        request.compute()


def test_an_infinity_made_on_one_row_is_refused():
    # was an attack: log|bmi - v| is -inf on the patient whose bmi is v; exp(-inf) = 0 hid it from the weights'
    # spread, and the NaN it made in its bin told the bin (the follow-up time) and xsum the event
    df = patients()
    target = df[df["bmi"].map(df["bmi"].value_counts()) == 1].iloc[2]
    data = one_server(df)
    probe = ((data["bmi"] - float(target["bmi"])).abs() * 1.2345).log()
    request = (data["t"] * 0 + 1.0)._aggregate("cox_step", (data["e"], [1.0], True, False, 1.0, probe))
    with pytest.raises(fm.PrivacyError, match="is missing on fewer than 5 rows"):
        request.compute()


def test_known_limit_two_fits_whose_time_expressions_differ_by_one_person():
    """KNOWN LIMIT (docs/privacy.md 4.10 and 5.1): dyadic bins nest only for one time column. A time made by
    the analyst, (t >= 0) + (t >= B), puts the rows before B in one bin; at B and B + 1 the two bins differ by
    the patients who left on day B: a tracker, as two filters are."""
    df = patients()
    target = df[df["t"].map(df["t"].value_counts()) == 1].iloc[3]
    data = one_server(df)

    def first_bin(day):
        time = (data["t"] >= 0).astype("float") + (data["t"] >= day).astype("float")
        cells = time._aggregate("cox_step", (data["e"], [0.0], False, False, 1.0, data["age"])).compute()[0]
        return cells["cells"][list(cells["time"]).index(1.0)]

    difference = first_bin(target["t"] + 1) - first_bin(target["t"])
    assert difference[0] == 1 and difference[1] == target["age"] and difference[-1] == target["e"]


def test_known_limit_betas_as_moments_of_a_small_bin():
    """KNOWN LIMIT (docs/privacy.md 4.10): exact sums at betas the analyst chooses. A bin of 5 persons released
    at beta = 0, b, ..., 5b gives the power sums of exp(b * age), from which every age follows (Newton's
    identities): exact sums over small cells answer as many questions as there are betas. Only Noise bounds it;
    there is no noise mechanism for cox_step yet, so a server under Noise refuses it."""
    df = patients()
    data = one_server(df)
    ages = data["age"]
    time = (data["t"] >= 100).astype("float") + (data["t"] >= 116).astype("float")
    released = []
    for j in range(6):
        answer = time._aggregate("cox_step", (data["e"] * 0, [0.01 * j], False, False, 1.0, ages)).compute()[0]
        released.append(answer["cells"][list(answer["time"]).index(1.0)][0])
    n = int(round(released[0]))
    power = np.array(released[1:n + 1])
    elementary = [1.0]
    for m in range(1, n + 1):
        elementary.append(sum((-1) ** (i - 1) * elementary[m - i] * power[i - 1] for i in range(1, m + 1)) / m)
    roots = np.roots([(-1) ** m * elementary[m] for m in range(n + 1)]).real
    truth = np.sort(df[(df["t"] >= 100) & (df["t"] < 116)]["age"].to_numpy())
    assert n == len(truth) >= 5
    np.testing.assert_allclose(np.sort(np.log(roots) / 0.01), truth, atol=1e-3)


def test_a_binning_refused_in_a_later_round_moves_to_the_next_coarser_one(monkeypatch):
    # Dominance at a fitted beta is not known when the ladder is asked (benchmarks/cox.py: Efron, 3 x 20k rows):
    # the fit moves to the next binning every server allowed, and says so
    df = cohort(3000, 11)
    model = fm.stats.coxph(fed(df), "t", "e", ["age"])
    real_fit, tried = model._fit, []

    def refuse_the_first(bins):
        tried.append(bins)
        if len(tried) == 1:
            raise fm.PrivacyError("in one of its cells, the largest contribution makes more than 90% of a sum",
                                  policy="Dominance(n=1, p=0.9)")
        return real_fit(bins)

    monkeypatch.setattr(model, "_fit", refuse_the_first)
    with pytest.warns(fm.PrivacyWarning, match=r"1 finer binning\(s\) refused in a later round"):
        fit = model.compute()
    assert len(tried) == 2 and tried[0] != tried[1] and fit.extra["bin_width"] == tried[1]
    reference = binned_reference(df, tried[1], ["age"], "breslow")
    np.testing.assert_allclose(fit.params.to_numpy(), reference.params, rtol=1e-8)
