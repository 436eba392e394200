"""Frames: column selections, derived columns, query, loc, dropna and whole-frame reductions equal pandas'.

Every idiom runs on a pandas DataFrame and on a FedData of the same rows split
unevenly over 1-5 servers, and the results are compared. Lazy pandas results
(``.sort_index()``, ``.round(2)``, ``["mean"]``, ``.loc[...]``, ``.to_frame()``)
are checked the same way.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from hypothesis import given, settings, strategies as st

import fedmed as fm
from fedmed.api import frame as frame_api

EXACT, PRIVATE = "example/config-exact.yaml", "example/config.yaml"
SPLITS = {1: (), 2: (0.3,), 3: (0.5, 0.8), 5: (0.1, 0.25, 0.6, 0.7)}


def fed(df, config=EXACT, cuts=(0.5, 0.8)):
    n = len(df)
    b = [0] + [int(c * n) for c in cuts] + [n]
    sources = []
    for i in range(len(b) - 1):
        s = fm.Server(config=config)
        s["d"] = df.iloc[b[i]:b[i + 1]].reset_index(drop=True)
        sources.append(fm.Simulation(s, "d", name=f"h{i}"))
    return fm.FedData(sources, config=config)


def anes() -> pd.DataFrame:
    return sm.datasets.anes96.load_pandas().data[["age", "educ", "income", "selfLR", "PID", "TVnews", "vote"]]


def fair() -> pd.DataFrame:
    return sm.datasets.fair.load_pandas().data


def messy(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """NaNs, ties, an int, a bool, a categorical and a text column; rows in an order that leaves an empty fragment."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "age": rng.integers(18, 90, n),
        "bmi": np.round(rng.normal(26, 4, n), 1),
        "sbp": rng.normal(130, 15, n),
        "smoker": rng.random(n) < 0.3,
        "sex": rng.choice(["F", "M"], n),
        "stage": pd.Categorical(rng.choice(["I", "II", "III"], n)),
    })
    df.loc[rng.random(n) < 0.1, "bmi"] = np.nan
    df.loc[rng.random(n) < 0.05, "sbp"] = np.nan
    return df


def same(got, want):
    if isinstance(want, pd.DataFrame):
        pd.testing.assert_frame_equal(got, want, check_dtype=False, rtol=1e-9, atol=1e-12)
    elif isinstance(want, pd.Series):
        pd.testing.assert_series_equal(got, want, check_dtype=False, rtol=1e-9, atol=1e-12)
    else:
        assert got == pytest.approx(want, rel=1e-9, nan_ok=True)


NUMERIC = ["age", "bmi", "sbp"]

#: (name, idiom): each runs unchanged on a pandas DataFrame and on a FedData of the same rows.
IDIOMS = [
    ("select-mean", lambda d: d[NUMERIC].mean()),
    ("select-std", lambda d: d[NUMERIC].std()),
    ("select-var-ddof0", lambda d: d[NUMERIC].var(ddof=0)),
    ("select-sem", lambda d: d[NUMERIC].sem()),
    ("select-sum", lambda d: d[NUMERIC].sum()),
    ("select-min", lambda d: d[NUMERIC].min()),
    ("select-max", lambda d: d[NUMERIC].max()),
    ("select-median", lambda d: d[NUMERIC].median()),
    ("count-with-text", lambda d: d[["age", "bmi", "sex", "stage"]].count()),
    ("numeric-only-mean", lambda d: d[["age", "bmi", "sex", "stage", "smoker"]].mean(numeric_only=True)),
    ("numeric-only-sum", lambda d: d[["age", "sex", "smoker", "sbp"]].sum(numeric_only=True)),
    ("describe", lambda d: d[["age", "bmi", "sex", "smoker", "sbp"]].describe()),
    ("corr", lambda d: d[NUMERIC].corr()),
    ("corr-numeric-only", lambda d: d[["age", "sex", "bmi"]].corr(numeric_only=True)),
    ("cov", lambda d: d[NUMERIC].cov()),
    ("agg-list", lambda d: d[NUMERIC].agg(["mean", "std", "count", "min", "max"])),
    ("agg-dict-single", lambda d: d[NUMERIC].agg({"age": "mean", "bmi": "max"})),
    ("agg-dict-lists", lambda d: d[NUMERIC].agg({"age": ["min", "max"], "bmi": "mean"})),
    ("isna-sum", lambda d: d[["age", "bmi", "sbp", "sex"]].isna().sum()),
    ("notna-sum", lambda d: d[["bmi", "sbp"]].notna().sum()),
    ("dropna-subset", lambda d: d[NUMERIC].dropna(subset=["bmi"]).mean()),
    ("dropna-all", lambda d: d[["bmi", "sbp"]].dropna(how="all").count()),
    ("dropna-any", lambda d: d[["bmi", "sbp"]].dropna().count()),
    ("dropna-thresh", lambda d: d[["age", "bmi", "sbp"]].dropna(thresh=3)["age"].sum()),
    ("filter-frame", lambda d: d[d["age"] > 50][NUMERIC].mean()),
    ("frame-filter", lambda d: d[NUMERIC][d["sex"] == "F"].max()),
    ("loc-mask-col", lambda d: d.loc[d["age"] > 40, "bmi"].mean()),
    ("loc-mask-cols", lambda d: d.loc[d["sex"] == "M", ["age", "sbp"]].mean()),
    ("loc-all-cols", lambda d: d.loc[:, ["age", "bmi"]].std()),
    ("loc-callable", lambda d: d.loc[lambda x: x["age"] < 60, ["bmi"]].count()),
    ("assign", lambda d: d.assign(bmi10=d["bmi"] / 10, old=lambda x: x["age"] > 65)[["bmi10", "old"]].sum()),
    ("assign-chained", lambda d: d.assign(a2=d["age"] * 2).assign(a3=lambda x: x["a2"] + x["age"])["a3"].mean()),
    ("assign-describe", lambda d: d.assign(pp=d["sbp"] - 80)[["pp", "age"]].describe()),
    ("query-and", lambda d: d.query("age > 50 and sex == 'F'")[NUMERIC].mean()),
    ("query-chained", lambda d: d.query("30 <= age < 60")["bmi"].count()),
    ("query-in", lambda d: d.query("stage in ['I', 'III'] or not smoker")["age"].sum()),
    ("query-not-in", lambda d: d.query("sex not in ('F',) & (bmi >= 25)")["sbp"].max()),
    ("query-arith", lambda d: d.query("sbp - 2 * age > 0")["age"].count()),
    ("query-list-eq", lambda d: d.query("stage == ['II']")["bmi"].mean()),
]


def _run(idiom, df, data):
    want = idiom(df)
    got = idiom(data)
    return (got.compute() if hasattr(got, "compute") else got), want


@pytest.mark.parametrize("servers", sorted(SPLITS))
@pytest.mark.parametrize("name,idiom", IDIOMS, ids=[n for n, _ in IDIOMS])
def test_idioms_equal_pandas_on_messy_data(name, idiom, servers):
    df = messy()
    # sorted by age, the first cut of 5 servers holds no rows of some filters: empty fragments included
    data = fed(df, cuts=SPLITS[servers])
    got, want = _run(idiom, df, data)
    same(got, want)


def test_empty_fragment():
    df = messy()
    data = fed(df, cuts=(0.0, 0.5))  # the first server holds no rows at all
    for _, idiom in IDIOMS[:20]:
        got, want = _run(idiom, df, data)
        same(got, want)


REAL = [
    ("mean", lambda d: d.loc[:, list(d.columns)].mean()),
    ("describe", lambda d: d[list(d.columns)].describe()),
    ("corr", lambda d: d[list(d.columns)].corr()),
    ("cov", lambda d: d[list(d.columns)].cov()),
    ("agg", lambda d: d[list(d.columns)[:3]].agg(["sum", "var", "median"])),
]


@pytest.mark.parametrize("load", [anes, fair], ids=["anes96", "fair"])
@pytest.mark.parametrize("name,idiom", REAL, ids=[n for n, _ in REAL])
def test_real_data_equal_pandas(load, name, idiom):
    df = load()
    data = fed(df, cuts=(0.17, 0.4, 0.41, 0.9))
    # d.columns on the FedData asks the schema: the same names, in the same order
    got = idiom(data).compute()
    same(got, idiom(df))


# -- derived columns: nothing is written on a server -----------------------------------------------------


def test_setitem_derives_a_column_in_the_expression_only():
    df = messy()
    data = fed(df)
    data["pp"] = data["sbp"] - 80
    data["old"] = data["age"] >= 65
    pandas = df.copy()
    pandas["pp"] = pandas["sbp"] - 80
    pandas["old"] = pandas["age"] >= 65
    same(data["pp"].mean().compute(), pandas["pp"].mean())
    same(data[data["old"]]["pp"].sum().compute(), pandas[pandas["old"]]["pp"].sum())
    same(data[["pp", "old", "age"]].mean().compute(), pandas[["pp", "old", "age"]].mean())
    assert list(data.columns) == list(pandas.columns)
    # the servers' fragments are unchanged: a new FedData over the same sources has no such column
    assert "pp" not in fm.FedData(data.sources, config=EXACT).columns


def test_setitem_on_a_selection_and_whole_frame_after_assignment():
    df = messy()
    data = fed(df)
    sel = data[["age", "bmi"]]
    sel["ratio"] = sel["bmi"] / sel["age"]
    pandas = df[["age", "bmi"]].copy()
    pandas["ratio"] = pandas["bmi"] / pandas["age"]
    same(sel.mean().compute(), pandas.mean())
    whole = data.assign(pp=data["sbp"] - 80)
    same(whole.mean(numeric_only=True).compute(), df.assign(pp=df["sbp"] - 80).mean(numeric_only=True))


def test_assign_is_not_in_place_and_refuses_constants():
    data = fed(messy())
    data.assign(x=data["age"] + 1)
    with pytest.raises(fm.ArgumentError, match="no column 'x'|x"):
        data[["age"]]["x"]
    with pytest.raises(fm.ArgumentError, match="expression of columns"):
        data.assign(one=1)
    with pytest.raises(fm.ArgumentError, match="one column by name"):
        data[["a", "b"]] = data["age"]


def test_a_column_is_not_a_frame():
    data = fed(messy())
    with pytest.raises(fm.ArgumentError, match="a column, not a table"):
        data["age"].query("age > 3")
    with pytest.raises(fm.ArgumentError, match="assign columns to a table"):
        col = data["age"]
        col["x"] = data["bmi"]


def test_selection_errors_say_what_to_write():
    data = fed(messy())
    with pytest.raises(fm.ArgumentError, match="list of names"):
        data[3]
    with pytest.raises(fm.ArgumentError, match="no column 'sbp'"):
        data[["age", "bmi"]]["sbp"]
    with pytest.raises(fm.ArgumentError, match="row labels and positions never leave a server"):
        data.loc[3, "age"]
    with pytest.raises(fm.ArgumentError, match="derive a column instead"):
        data.loc[data["age"] > 3, "age"] = 0
    with pytest.raises(fm.ArgumentError, match="Pearson"):
        data[NUMERIC].corr(method="spearman")
    with pytest.raises(fm.ArgumentError, match="axis=1"):
        data[NUMERIC].dropna(axis=1)
    with pytest.raises(fm.ArgumentError, match="without numeric columns"):
        data[["sex"]].describe()


def test_text_column_in_a_numeric_reduction_is_the_fedmed_error():
    data = fed(messy())
    with pytest.raises(fm.FedMedError, match="sex"):
        data[["age", "sex"]].mean().compute()


# -- query: parsed, never evaluated -------------------------------------------------------------------


def test_query_variables_from_the_caller_and_local_dict():
    df = messy()
    data = fed(df)
    low, sexes = 40, ["F"]
    want = df.query("age > @low and sex in @sexes")["bmi"].mean()
    same(data.query("age > @low and sex in @sexes")["bmi"].mean().compute(), want)
    same(data.query("age > @low", local_dict={"low": 70})["age"].count().compute(), (df["age"] > 70).sum())
    # a client value (a LazyResult) is a parameter of a second round
    mean_age = data["age"].mean()
    q = data.query("age > @mean_age")["age"].count()
    assert q.compute() == (df["age"] > df["age"].mean()).sum()
    assert "2 rounds" in fm.explain(q)
    # '@' inside a string is text, not a variable
    assert data.query("sex == '@F'")["age"].count().compute() == 0


@pytest.mark.parametrize("text,construct", [
    ("__import__('os').system('echo hi')", "a function call"),
    ("age.__class__", "attribute access"),
    ("sex.str.len() > 1", "a function call"),
    ("age[0] > 1", "a subscript"),
    ("(lambda: 1)() > 0", "a function call"),
    ("[x for x in age] == 1", "a comprehension"),
    ("age if sex else bmi", "a conditional"),
    ("(y := 3) > age", "an assignment"),
    ("{'a': 1} == age", "a dict"),
    ("f'{age}' == 'x'", "an f-string"),
    ("age << 2 > 1", "LShift"),
    ("age @ bmi", "cannot be parsed"),
    ("age is None", "Is"),
])
def test_query_refuses_anything_but_the_safe_subset(text, construct):
    data = fed(messy())
    with pytest.raises(fm.ArgumentError, match=re.escape(construct)):
        data.query(text)


@pytest.mark.parametrize("text,message", [
    ("age >", "cannot be parsed"),
    ("1 < 2", "column on one side"),
    ("age > @nowhere_defined", "not a variable"),
    ("'F'", "not a condition"),
    ("age in bmi", "a list on the right"),
    ("1 and age > 2", "not constants"),
    ("x" * 10_001, "at most"),
    ("(" * 500 + "age > 1" + ")" * 500, "parsed|not allowed|age"),
])
def test_query_errors(text, message):
    data = fed(messy())
    with pytest.raises(fm.ArgumentError, match=message):
        data.query(text).mean().compute()


def test_query_never_evaluates_text(monkeypatch):
    import builtins

    def boom(*args, **kwargs):
        raise AssertionError("eval called")

    data = fed(messy())
    with monkeypatch.context() as patched:
        patched.setattr(builtins, "eval", boom)
        patched.setattr(builtins, "exec", boom)
        count = data.query("age > 50 and sex == 'F'")["age"].count()
    assert count.compute() > 0


# -- rounds -----------------------------------------------------------------------------------------


def test_reductions_of_every_column_share_one_request_per_server():
    data = fed(messy(), cuts=(0.2, 0.5, 0.9))
    frame = data[NUMERIC]
    plan = fm.explain(frame.mean(), frame.std(), frame.count(), frame.corr(), frame.cov(), frame.agg(["sum", "max"]))
    assert "1 round" in plan and "4 servers" in plan
    assert "4 requests" in plan.splitlines()[0]


def test_describe_rounds_are_the_quantile_rounds():
    data = fed(messy())
    rounds = lambda plan: int(re.search(r"(\d+) rounds?", plan).group(1))  # noqa: E731
    # every column's quartiles share each quantile round: as many rounds as one column's describe
    assert rounds(fm.explain(data[NUMERIC].describe())) == rounds(fm.explain(data["age"].describe())) > 1


# -- under the privacy config: exact, NaN, or an error; never a wrong number ---------------------------


def test_privacy_config_results_are_exact_or_refused():
    df = fair()
    data = fed(df, config=PRIVATE, cuts=(0.3, 0.7))
    cols = ["age", "yrs_married", "children", "affairs"]
    same(data[cols].mean().compute(), df[cols].mean())
    same(data[cols].count().compute(), df[cols].count())
    same(data.query("age > 30 and religious in [1, 2]")[cols].std().compute(),
         df.query("age > 30 and religious in [1, 2]")[cols].std())
    top = sorted(df["affairs"])[-3]
    assert 1 <= (df["affairs"] >= top).sum() < 5  # fewer rows than Anonymity(k=5) allows
    with pytest.raises(fm.PrivacyError):
        data.query("affairs >= @top")[cols].mean().compute()


def test_privacy_config_withheld_quartiles_are_nan_or_refused():
    df = messy(40)
    data = fed(df, config=PRIVATE, cuts=(0.5,))
    try:
        got = data[["age", "sbp"]].describe().compute()
    except fm.FedMedError:
        return
    want = df[["age", "sbp"]].describe()
    known = got.notna()
    assert np.allclose(got[known].to_numpy(dtype=float), want[known].to_numpy(dtype=float), rtol=1e-9, equal_nan=True)


# -- lazy pandas results (item 5) ----------------------------------------------------------------------

CHAINS = [
    ("sort_index", lambda r: r.sort_index()),
    ("round", lambda r: r.round(2)),
    ("getitem", lambda r: r["bmi"]),
    ("loc", lambda r: r.loc[["sbp", "age"]]),
    ("to_frame", lambda r: r.to_frame()),
    ("to_frame-named", lambda r: r.to_frame(name="mean")),
    ("arith", lambda r: (r * 2 - 1).round(3)),
]


@pytest.mark.parametrize("name,chain", CHAINS, ids=[n for n, _ in CHAINS])
def test_lazy_series_result_takes_pandas_methods(name, chain):
    df = messy()
    data = fed(df)
    got = chain(data[NUMERIC].mean())
    assert isinstance(got, fm.LazyResult)
    same(got.compute(), chain(df[NUMERIC].mean()))


FRAME_CHAINS = [
    ("describe-row", lambda r: r.loc["mean"]),
    ("describe-col", lambda r: r["age"]),
    ("describe-cell", lambda r: r.loc["50%", "bmi"]),
    ("describe-round", lambda r: r.round(2)),
    ("describe-T", lambda r: r.T),
    ("describe-rows", lambda r: r.loc[["mean", "std"]]),
    ("corr-sort", lambda r: r.sort_index().round(4)),
]


@pytest.mark.parametrize("name,chain", FRAME_CHAINS, ids=[n for n, _ in FRAME_CHAINS])
def test_lazy_frame_result_takes_pandas_methods(name, chain):
    df = messy()
    data = fed(df)
    source = (lambda d: d[NUMERIC].corr()) if name.startswith("corr") else (lambda d: d[NUMERIC].describe())
    same(chain(source(data)).compute(), chain(source(df)))


def test_value_counts_chain():
    df = messy()
    data = fed(df)
    got = data["sex"].value_counts().sort_index()
    same(got.compute(), df["sex"].value_counts().sort_index())


# -- property: any numeric frame, any split ---------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    # values below 1e-70 in size are zeros here: pandas' corr multiplies two sums of squares, which
    # underflow to 0 for a column like [0, 0, 1.3e-99] (x**4 below 1e-308) and make its self-correlation
    # NaN, where it is 1 (a random hypothesis seed found 1.3e-99 after 8e-109)
    st.lists(st.tuples(st.integers(-1000, 1000),
                       st.floats(-1e3, 1e3, allow_nan=False).map(lambda v: 0.0 if abs(v) < 1e-70 else v),
                       st.booleans()),
         min_size=3, max_size=40),
    st.lists(st.floats(0.0, 1.0), max_size=3),
)
def test_numeric_frames_equal_pandas(rows, cuts):
    df = pd.DataFrame(rows, columns=["a", "b", "flag"])
    df.loc[df["flag"], "b"] = np.nan
    data = fed(df, cuts=tuple(sorted(cuts)))
    frame = data[["a", "b"]]
    mean, var, count, total, corr = fm.compute(frame.mean(), frame.var(), frame.count(), frame.sum(), frame.corr())
    pandas = df[["a", "b"]]
    same(mean, pandas.mean())
    same(var, pandas.var())
    same(count, pandas.count())
    same(total, pandas.sum())
    pd.testing.assert_frame_equal(corr, pandas.corr(), rtol=1e-7, atol=1e-9)
    low = int(df["a"].median())
    same(data.query("a > @low or b < 0")["a"].sum().compute(), df.query("a > @low or b < 0")["a"].sum())


# -- dispatch for whole-fragment tables --------------------------------------------------------------


def test_dispatch_picks_frame_methods_for_tables_only():
    df = messy()
    data = fed(df)
    same(frame_api.dispatch(data, "describe")().compute(), df.describe())
    same(frame_api.dispatch(data, "count")().compute(), df.count())
    same(frame_api.dispatch(data[data["age"] > 50], "mean")(numeric_only=True).compute(),
         df[df["age"] > 50].mean(numeric_only=True))
    assert frame_api.dispatch(data["age"], "describe") is None
    assert frame_api.dispatch(data, "assign") is not None
    assert frame_api.dispatch(data, "no_such_name") is None
