"""Red team: extracting one person's value under the example config's threshold policies.

The server runs example/config.yaml (CacheLimit, ComplexityCap 200,
Anonymity k=5, Dominance 1/0.9) over a 200-row cohort; the attacker wants
the age (77) or the rare diagnosis of the person with ``id == 17``.
Every attack must end in an ``fm.PrivacyError`` naming the policy, the
server, the fragment and the operation, while honest statistics on the same
server still come out exact.

Tests that FAIL here are attacks that succeed against the current code (see
each docstring); ``test_general_tracker_defeats_thresholds`` is the one test
that asserts an attack works: thresholds cannot stop a tracker.
"""

from __future__ import annotations

import datetime
import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fedmed as fm

_spec = importlib.util.spec_from_file_location("redteam_support", Path(__file__).with_name("redteam_support.py"))
rt = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(rt)  # type: ignore[union-attr]

T = rt.TARGET_ID


@pytest.fixture
def example():
    frame = rt.cohort()
    server, data = rt.serve(rt.EXAMPLE_CONFIG, frame)
    return server, data, frame


# -- 1. a filter down to one person ----------------------------------------------------------


def test_single_person_filter_is_suppressed_and_honest_statistics_still_work(example):
    server, data, frame = example
    err = rt.suppressed(lambda: data[data["id"] == T]["age"].sum().compute(), "Anonymity", data)
    assert "fewer than 5 rows" in err.message and " 1 " not in err.message  # never the small count
    assert err.operation == "data[(data['id'] == 17)]['age'].sum()"
    assert "Anonymity(k=5)" in str(err) and err.server in str(err)
    rt.quietly(lambda: rt.check_honest(data, frame))


@pytest.mark.parametrize("aggregate", ["sum", "len", "count", "mean", "max"])
def test_single_person_filter_is_suppressed_for_every_aggregate(example, aggregate):
    _, data, _ = example
    person = data[data["id"] == T]["age"]
    run = {
        "sum": lambda: person.sum(), "len": lambda: person.len(), "count": lambda: person.count(),
        "mean": lambda: fm.stats.mean(person), "max": lambda: person.max(),
    }[aggregate]
    rt.suppressed(lambda: run().compute(), "Anonymity", data)


# -- 2. differencing through the complement -----------------------------------------------------

COMPLEMENTS = {
    "filter": lambda d: d[d["id"] != T]["age"].sum(),
    "mask": lambda d: (d["age"] * (d["id"] != T)).sum(),
    "mask astype float": lambda d: (d["age"] * (d["id"] != T).astype("float")).sum(),
    "nan mask": lambda d: (d["age"] * (d["id"] != T) / (d["id"] != T)).sum(),
    "filter moments": lambda d: d[d["id"] != T]["age"].moments(),
}


@pytest.mark.parametrize("form", COMPLEMENTS)
def test_differencing_with_the_complement_is_suppressed(example, form):
    _, data, frame = example
    assert data["age"].sum().compute() == frame["age"].sum()  # sum(all) is released ...
    err = rt.suppressed(lambda: COMPLEMENTS[form](data).compute(), "Anonymity", data)  # ... sum(all but 17) is not
    assert "fewer than 5 rows" in err.message and " 1 " not in err.message
    rt.quietly(lambda: rt.check_honest(data, frame))


def test_numeric_anti_mask_differencing_is_suppressed(example):
    """FAILS today: the complement rule only recognises *boolean* masks.

    ``(id != 17) ** 1`` is the same 0/1 multiplier as integers; Disclosure does
    not treat it as a mask, and a zero term "contributes nothing" rather than
    being left out, so ``sum(age * ((id != 17) ** 1))`` = sum of all but 17
    is released and ``sum(age) - it`` is person 17's age.
    """
    _, data, _ = example

    def attack() -> float:
        total = data["age"].sum().compute()
        return total - (data["age"] * ((data["id"] != T) ** 1)).sum().compute()

    rt.suppressed(attack, ("Anonymity", "Dominance"), data)


# -- 3. one-hot multiplication ------------------------------------------------------------------

ONE_HOTS = {
    "mask": lambda d: (d["age"] * (d["id"] == T)).sum(),
    "mask astype float": lambda d: (d["age"] * (d["id"] == T).astype("float")).sum(),
    "padded": lambda d: (d["age"] * (d["id"] == T) + 1e-9 * d["y"]).sum(),
    "padded constant": lambda d: (d["age"] * (d["id"] == T) + 1000).sum(),
    "moments": lambda d: (d["age"] * (d["id"] == T)).moments(),
    "padded moments": lambda d: (d["age"] * (d["id"] == T) + 1e-9 * d["y"]).moments(),
}


@pytest.mark.parametrize("form", ONE_HOTS)
def test_one_hot_multiplication_is_suppressed(example, form):
    _, data, frame = example
    err = rt.suppressed(lambda: ONE_HOTS[form](data).compute(), "Anonymity", data)
    assert "fewer than 5 rows" in err.message and " 1 " not in err.message
    rt.quietly(lambda: rt.check_honest(data, frame))


DOMINATED = {
    "padded mask": lambda d: (d["age"] * (d["id"] == T) + 1e-9 * d["y"]),
    "padded 0/1 integers": lambda d: (d["age"] * ((d["id"] == T) ** 1) + 1e-9 * d["y"]),
}


@pytest.mark.parametrize("form", DOMINATED)
@pytest.mark.parametrize("aggregate", ["sum", "moments"])
def test_dominance_alone_suppresses_a_padded_one_hot(form, aggregate):
    frame = rt.cohort()
    _, data = rt.serve(rt.config(rt.policy("Dominance", n=1, p=0.9)), frame)
    expr = DOMINATED[form](data)
    err = rt.suppressed(lambda: getattr(expr, aggregate)().compute(), "Dominance", data)
    assert "90%" in err.message
    # honest sums, where no one dominates, pass exactly
    assert data["age"].sum().compute() == frame["age"].sum()
    assert data["y"].sum().compute() == pytest.approx(frame["y"].sum(), rel=1e-12)
    rt.check_honest(data, frame)


NUMERIC_ONE_HOTS = {
    "(id == 17) ** 1": lambda d: (d["id"] == T) ** 1,
    "1 - clip(|id - 17|, 0, 1)": lambda d: 1 - abs(d["id"] - T).clip(0, 1),
    "client literal vector": lambda d: d["id"] * 0 + [1.0 if i == T else 0.0 for i in range(rt.N)],
}


@pytest.mark.parametrize("aggregate", ["sum", "moments"])
@pytest.mark.parametrize("form", NUMERIC_ONE_HOTS)
def test_numeric_one_hot_padded_by_a_constant_is_suppressed(example, form, aggregate):
    """FAILS today: a 0/1 multiplier that is not of boolean dtype is not seen as a mask.

    ``age * onehot + 1000`` has 200 non-zero terms (Anonymity counts 200
    contributing rows, complement 0) and no dominant term (1077 of 200077),
    so it is released; subtracting ``1000 * n`` gives person 17's age exactly.
    The disclosure docs promise "a zero factor is a filter in disguise".
    """
    _, data, _ = example
    padded = data["age"] * NUMERIC_ONE_HOTS[form](data) + 1000

    def attack() -> float:
        if aggregate == "sum":
            return padded.sum().compute() - 1000 * rt.N
        m = padded.moments().compute()
        return m.mean * m.n - 1000 * m.n

    rt.suppressed(attack, ("Anonymity", "Dominance"), data)


# -- 4. the rare category ------------------------------------------------------------------------


def test_rare_category_is_absent_from_unique(example):
    _, data, _ = example
    with pytest.warns(fm.PrivacyWarning, match="1 cell of fewer than 5 rows suppressed"):
        levels = data["dx"].unique().compute()
    assert levels == list(rt.COMMON)


def test_rare_category_is_absent_from_value_counts(example):
    """The withheld cell loses its label too: that a rare value is present is the disclosure."""
    _, data, frame = example
    with pytest.warns(fm.PrivacyWarning, match=r"value_counts\(\): 1 cell of fewer than 5 rows suppressed"):
        counts = data["dx"].value_counts().compute()
    assert rt.RARE not in counts.index
    truth = frame["dx"].value_counts()
    # the smallest common level is withheld with it: else the total minus the released levels is the rare count
    assert all(counts[level] == truth[level] for level in counts.index)
    assert len(frame) - counts.sum() >= 5 and len(counts) == len(rt.COMMON) - 1


def test_bisection_for_the_rare_label_finds_nothing(example):
    """Was a working attack (docs/privacy.md 5.3) while withheld cells kept their labels: the label's
    presence in ``value_counts`` of ``id < t`` located the one patient with the rare diagnosis."""
    _, data, _ = example
    dx = data["dx"].astype("str")

    def rare_below(t: int) -> bool:
        try:
            return rt.RARE in rt.quietly(lambda: dx[data["id"] < t].value_counts().compute()).index
        except fm.PrivacyError:  # a subset too small to judge is refused as a whole: nothing found either
            return False

    assert [rare_below(t) for t in (5, 18, 100, 195)] == [False] * 4


def test_known_limit_bisection_on_zero_against_withheld(example):
    """KNOWN LIMIT (docs/privacy.md 5.3): a category of a categorical column (or a histogram bin) that no
    row of the subset has is released as a true 0, and one that 1 to k-1 rows have is withheld: the
    switch from 0 to withheld, over ``id < t``, still finds the patient. (Over text, the number of
    withheld cells in the note switches the same way.) Only Noise with a Budget bounds it. The subset
    is padded with ``id >= 100`` so that no other cell is small: a small one nearby can get the zero
    withheld too (secondary suppression), which blurs but does not close the switch."""
    _, data, _ = example

    def zero_below(t: int) -> bool:
        subset = data[(data["id"] < t) | (data["id"] >= 100)]
        counts = rt.quietly(lambda: subset["dx"].value_counts().compute())
        return counts.get(rt.RARE) == 0

    low, high = 5, 195
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if zero_below(mid) else (low, mid)
    assert low == T


def test_a_label_withheld_by_one_server_is_unknown_in_the_pool_never_a_partial_count():
    """Server A holds 6 rows of "Z" (released), server B 2 (withheld): the pooled "Z" is NaN, not 6;
    labels no server withheld stay exact; a crosstab cell that may be withheld is NaN, a true 0 stays 0.
    (B also holds 3 rows of "W", withheld with "Z": two withheld cells of 5 rows in all, so that B's
    total minus its "Y" gives neither away and "Y" needs no secondary suppression.)"""
    config = rt.config(rt.policy("Anonymity", k=5))
    a, b = fm.Server(config=config), fm.Server(config=config)
    a["site"] = pd.DataFrame({"dx": ["Z"] * 6 + ["Y"] * 5, "old": [True] * 11})
    b["site"] = pd.DataFrame({"dx": ["Z"] * 2 + ["Y"] * 5 + ["W"] * 3, "old": [True] * 10})
    data = fm.FedData([fm.Simulation(a, "site"), fm.Simulation(b, "site")], config=config)
    counts = rt.quietly(lambda: data["dx"].value_counts().compute())
    assert counts["Y"] == 10 and math.isnan(counts["Z"])
    table = rt.quietly(lambda: data["dx"].crosstab(data["old"]).compute())
    assert table.loc["Y", True] == 10 and math.isnan(table.loc["Z", True])
    # nothing withheld anywhere: exact, zeros included, as pandas
    exact = fm.FedData([fm.Simulation(a, "site")], config=config)
    assert exact["dx"].crosstab(exact["old"]).compute().to_dict() == {True: {"Y": 5, "Z": 6}}


def test_rare_category_bin_of_a_histogram_is_nan(example):
    _, data, frame = example
    # the indicator of the rare category singles out one row: refused as a whole
    rt.suppressed(lambda: (data["dx"] == rt.RARE).astype("float").histogram([-0.5, 0.5, 1.5]).compute(), "Anonymity")
    # a bin of fewer than k rows is withheld (NaN), never a small count or a wrong 0
    edges = [20, 88, 89, 90]
    truth = np.histogram(frame["age"], edges)[0]
    assert 0 < truth[-1] < 5
    hist = rt.quietly(lambda: data["age"].histogram(edges).compute())
    assert math.isnan(hist.counts[-1])
    assert all(math.isnan(c) or c == t for c, t in zip(hist.counts, truth))
    # a histogram of common values is exact
    edges = [0, 40, 60, 130]
    exact = data["age"].histogram(edges).compute()
    assert exact.counts.tolist() == np.histogram(frame["age"], bins=edges)[0].tolist()


CROSSTABS = {
    # dx is categorical: pandas' groupby also yields the empty (RARE, False) cell
    "categorical dx by age > 50": (lambda d: d["dx"], lambda d: d["age"] > 50, lambda f: (f["dx"], f["age"] > 50)),
    # 4 patients with dx A are 84 or older (suppressed), 5 with B and 8 with C (released)
    "dx as text by age >= 84": (
        lambda d: d["dx"].astype("str"), lambda d: d["age"] >= 84, lambda f: (f["dx"].astype(str), f["age"] >= 84)
    ),
}


@pytest.mark.parametrize("case", CROSSTABS)
def test_suppressed_crosstab_cells_are_absent_or_nan(example, case):
    """FAILS today: the crosstab reduce fills suppressed cells with 0.

    A suppressed cell must be unknown (absent, or NaN as the histogram does),
    never a 0: 0 is a wrong count, and with a categorical column it
    publishes the rare level with an explicit "nobody aged <= 50 has RARE".
    """
    _, data, frame = example
    rows, cols, ref = CROSSTABS[case]
    with pytest.warns(fm.PrivacyWarning, match="suppressed"):
        table = rows(data).crosstab(cols(data)).compute()
    a, b = ref(frame)
    truth = pd.crosstab(a, b)
    wrong = {}
    for r in truth.index:
        for c in truth.columns:
            n = int(truth.loc[r, c])
            shown = table.loc[r, c] if (r in table.index and c in table.columns) else None
            if n >= 5:  # common cells exact, or withheld to protect a small one (secondary suppression)
                assert shown == n or shown is None or math.isnan(shown), (r, c, shown, n)
            elif n > 0 and shown is not None and not (isinstance(shown, float) and math.isnan(shown)):
                wrong[(str(r), bool(c))] = {"true": n, "released": shown.item() if hasattr(shown, "item") else shown}
    assert not wrong, f"suppressed cells released as numbers: {wrong}"


def test_a_suppressed_cell_is_not_recovered_from_the_margins(example):
    """Was a KNOWN LIMIT (no secondary suppression): the rare cell was withheld from
    ``crosstab(dx, age > 50)``, but the margin ``value_counts(age > 50)`` minus the shown cells
    recovered it: the RARE patient is over 50. Now each row and column that withholds a cell
    withholds at least two, of at least k rows together (fedmed.privacy.cells).
    """
    _, data, frame = example

    def attack() -> dict[bool, int]:
        table = rt.quietly(lambda: data["dx"].astype("str").crosstab(data["age"] > 50).compute())
        margin = (data["age"] > 50).value_counts().compute()
        return {flag: int(margin[flag] - table[flag].sum()) for flag in (False, True)}

    truth = {False: 0, True: 1}  # the RARE patient (77) is over 50
    recovered = attack()
    assert recovered != truth
    assert all(n == 0 or n >= 5 for n in recovered.values()), recovered


# -- other single-query extractions under the example config ----------------------------------


def test_max_releases_no_single_persons_value(example):
    """Was a KNOWN LIMIT: min and max are one row's exact value, and the analyst chooses whose
    (a padded subset, or arithmetic that pushes the target to the top). Now an extreme is released
    only when at least k rows hold it; otherwise it is withheld (NaN), never a wrong number."""
    _, data, frame = example
    age, ids = data["age"], data["id"]
    rt.suppressed(lambda: data[(age < 30) | (ids == T)]["age"].max().compute(), "Anonymity", data)
    steered = {
        "quadratic push": (age - 1000 * (ids - T) ** 2).max(),
        "soft bump": (age * 2.0 ** (-30.0 * (ids - T) ** 2)).max(),
        "raw max": age.max(),
        "raw min": age.min(),
    }
    for name, query in steered.items():
        try:
            released = rt.quietly(query.compute)
        except fm.PrivacyError:
            continue
        assert math.isnan(released), (name, released)


def test_a_date_indicator_is_refused_and_honest_date_statistics_pass():
    """Dates are quasi-identifiers: an entry date held by one person picks them out as an id does. The
    indicator made of a date comparison is judged like any intermediate (text, ``pd.Timestamp`` or
    ``datetime.date`` constant), a filter to that date too, and the latest date is withheld unless k hold it."""
    frame = rt.cohort()
    days = pd.Series(np.random.default_rng(18).integers(0, 700, len(frame)))
    days[days == 430] = 431  # 2021-03-06 is the target's date alone
    days[T] = 430
    frame["entry"] = (pd.Timestamp("2020-01-01") + pd.to_timedelta(days, unit="D")).astype("datetime64[us]")
    frame["exit"] = frame["entry"] + pd.to_timedelta(frame["age"] * 3, unit="D")
    _, data = rt.serve(rt.EXAMPLE_CONFIG, frame)
    date, age = data["entry"], data["age"]
    for constant in ("2021-03-06", pd.Timestamp("2021-03-06"), datetime.date(2021, 3, 6)):
        err = rt.suppressed(lambda: (age * (date == constant)).sum().compute(), "Anonymity", data)
        assert "fewer than 5 rows" in err.message and " 1 " not in err.message
        rt.suppressed(lambda: data[date == constant]["age"].sum().compute(), "Anonymity", data)
    march = (frame["entry"].dt.year == 2021) & (frame["entry"].dt.month == 3)
    assert march.sum() >= 5  # a month many persons share is no indicator: released as pandas has it
    assert (age * ((date.dt.year == 2021) & (date.dt.month == 3))).sum().compute() == frame.loc[march, "age"].sum()
    latest = rt.quietly(lambda: date.max().compute())
    assert math.isnan(latest) or (frame["entry"] == latest).sum() >= 5
    stay = (data["exit"] - date).dt.days
    assert stay.mean().compute() == pytest.approx((frame["age"] * 3).mean(), rel=1e-12)
    assert (date >= "2021-01-01").sum().compute() == (frame["entry"] >= "2021-01-01").sum()


def test_cell_tables_apply_the_complement_rule(example):
    """FAILS today: the "leaves 1 to k-1 rows out" rule is skipped for value_counts,
    histogram, crosstab, count_below and unique.

    ``(age >= t).value_counts()`` over everyone and over ``id != 17`` differ by one
    in the True cell exactly when person 17 is at least ``t``; every cell has
    dozens of rows, so nothing is suppressed, and a bisection over ``t`` (8
    pairs of queries) gives the exact age.
    """
    _, data, _ = example
    others = data[data["id"] != T]

    def at_least(t: int) -> bool:
        everyone = (data["age"] >= t).value_counts().compute()
        without = (others["age"] >= t).value_counts().compute()
        return int(everyone.get(True, 0)) - int(without.get(True, 0)) == 1

    def attack() -> int:
        low, high = 0, 130
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if at_least(mid) else (low, mid)
        return low

    rt.suppressed(attack, "Anonymity", data)


# -- 9. the tracker: what thresholds cannot stop ------------------------------------------------


def test_general_tracker_defeats_thresholds(example):
    """This test asserts that the attack WORKS: thresholds alone do not stop a tracker.

    Denning's general tracker: with a padding predicate T (``id`` even, 100
    rows) and the target's characteristic C (``id == 17``),
    ``q(C) = q(C or T) + q(C or not T) - q(all)``. Written with ``isin`` over
    two large lists of ids, no step of any query singles anyone out: each
    covers about half the cohort and leaves about half out, so Anonymity,
    Dominance and the ComplexityCap pass it, and the three exact answers
    give person 17's age. Only noise with a budget (test_noise_budget.py)
    limits what a tracker learns. The indicator forms (``(id == 17) | T``,
    ``(ids < 100) & (ids != 17)``) are refused: they single out one row.
    """
    _, data, _ = example
    age, ids = data["age"], data["id"]
    evens_and_target = [i for i in range(rt.N) if i % 2 == 0 or i == T]
    odds = [i for i in range(rt.N) if i % 2 == 1]
    with_even, with_odd, everyone = fm.compute(
        data[ids.isin(evens_and_target)]["age"].sum(), data[ids.isin(odds)]["age"].sum(), age.sum()
    )
    assert with_even + with_odd - everyone == rt.TARGET_AGE
    # the simplest tracker too: two large subsets that differ by the target
    first = data[ids <= T]["age"].sum().compute()
    second = data[ids < T]["age"].sum().compute()
    assert first - second == rt.TARGET_AGE
    # the indicator forms are refused
    rt.suppressed(lambda: data[(ids == T) | (ids % 2 == 0)]["age"].sum().compute(), "Anonymity", data)
    rt.suppressed(lambda: data[(ids < 100) & (ids != T)]["age"].sum().compute(), "Anonymity", data)


# -- over a real waitress server ----------------------------------------------------------------


def test_suppression_over_http_arrives_as_privacy_error_naming_the_url(serve):
    frame = rt.cohort()
    server = fm.Server(config=rt.EXAMPLE_CONFIG)
    server["cohort"] = frame
    url = serve(server).url
    data = fm.FedData([fm.Remote(ip=url, fragment="cohort")], config=rt.EXAMPLE_CONFIG)
    with pytest.raises(fm.PrivacyError) as info:
        data[data["id"] == T]["age"].sum().compute()
    err = info.value
    assert err.server == url
    assert err.fragment == "cohort"
    assert err.operation == "data[(data['id'] == 17)]['age'].sum()"
    assert err.policy == "Anonymity(k=5)"
    assert url in str(err) and "Anonymity(k=5)" in str(err)
    rt.quietly(lambda: rt.check_honest(data, frame))


@pytest.mark.parametrize("target", ["hiv", "flu"])
def test_a_date_comparison_that_selects_nobody_is_no_oracle(target):
    """Was an attack (red team, 2026-12-03): influence moves shifted dates by ten years, so
    ``(birth < T) & (diag == 'hiv')`` with T before every birth was refused exactly when the patient born
    within ten years after T had hiv (and bisecting T gave the birth date). Dates now move to the far past
    and future: the query selects nobody and is answered 0 whatever the patient's diagnosis."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(5)
    birth = pd.Timestamp("1950-01-01") + pd.to_timedelta(rng.integers(0, 15000, 60), unit="D")
    birth = birth.to_numpy().copy()
    birth[0] = np.datetime64("1931-07-14")
    diag = np.array(["flu"] * 60, dtype=object)
    diag[1:8] = "hiv"
    diag[0] = target
    server = fm.Server(config="example/config.yaml")
    server["c"] = pd.DataFrame({"birth": birth, "diag": diag})
    data = fm.FedData([fm.Simulation(server, "c")], config="example/config.yaml")
    assert ((data["birth"] < "1925-01-01") & (data["diag"] == "hiv")).sum().compute() == 0
    days = (data["birth"] - pd.Timestamp("1900-01-01")).dt.days
    assert ((days < 9300) * (data["diag"] == "hiv")).sum().compute() == 0


def test_a_numeric_comparison_beyond_the_data_is_no_oracle():
    """Was an attack (red team, 2026-12-03): numbers moved relative to their own value (v +- 10 (|v| + 1)), so
    ``age < -800`` selected nobody, yet moving ages down made it true for the oldest patient alone
    (-9 * 95 - 10 < -800): the query was refused exactly when that patient had hiv. Numbers now move to
    constants, as dates do: answered 0 either way."""
    import numpy as np
    import pandas as pd

    answers = {}
    for target in ("hiv", "flu"):
        age = np.random.default_rng(3).integers(30, 80, 60).astype(float)
        age[0] = 95.0
        diag = np.array(["flu"] * 60, dtype=object)
        diag[1:8] = "hiv"
        diag[0] = target
        server = fm.Server(config="example/config.yaml")
        server["c"] = pd.DataFrame({"age": age, "diag": diag})
        data = fm.FedData([fm.Simulation(server, "c")], config="example/config.yaml")
        answers[target] = ((data["age"] < -800) & (data["diag"] == "hiv")).sum().compute()
    assert answers == {"hiv": 0, "flu": 0}
