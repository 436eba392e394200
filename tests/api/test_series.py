"""Column methods (``fedmed.api.series``): each idiom equals pandas' on the pooled rows.

One list of idioms runs on a pandas DataFrame and on a FedData over 1-5
uneven servers (one of them empty), on real statsmodels data and on messy
synthetic data (NaNs, ties, text, a categorical). Under the privacy config
a result is pandas', NaN where withheld, or a FedMedError: never another number.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fedmed as fm
from fedmed.api import series

EXACT, PRIVATE = "example/config-exact.yaml", "example/config.yaml"

#: Where the pooled rows are cut between servers: 1 to 5 servers, uneven, one split with an empty fragment.
SPLITS = [(), (0.3,), (0.15, 0.7), (0.2, 0.2, 0.6), (0.1, 0.35, 0.5, 0.9)]


def fed(df: pd.DataFrame, config: str = EXACT, cuts: tuple[float, ...] = (0.5, 0.8)) -> fm.FedData:
    n = len(df)
    bounds = [0] + [int(c * n) for c in cuts] + [n]
    sources = []
    for i in range(len(bounds) - 1):
        server = fm.Server(config=config)
        server["d"] = df.iloc[bounds[i]:bounds[i + 1]].reset_index(drop=True)
        sources.append(fm.Simulation(server, "d", name=f"h{i}"))
    return fm.FedData(sources, config=config)


def synthetic(n: int = 400, seed: int = 1) -> pd.DataFrame:
    """Floats with NaNs and ties, small integers, text with NaNs, a categorical; columns x y k s c."""
    rng = np.random.default_rng(seed)
    x = rng.normal(50, 12, n).round(1)
    x[rng.choice(n, n // 10, replace=False)] = np.nan
    s = rng.choice(["F", "M", "X"], n, p=[0.5, 0.4, 0.1]).astype(object)
    s[rng.choice(n, n // 20, replace=False)] = None
    return pd.DataFrame({
        "x": x, "y": rng.gamma(2.0, 3.0, n), "k": rng.integers(0, 6, n), "s": s,
        "c": pd.Categorical(rng.choice(["lo", "mid", "hi"], n), categories=["lo", "mid", "hi"]),
    })


def fair() -> pd.DataFrame:
    import statsmodels.api as sm

    d = sm.datasets.fair.load_pandas().data
    occupation = d["occupation"].map({1.0: "student", 2.0: "farm", 3.0: "clerical", 4.0: "teacher", 5.0: "manager",
                                      6.0: "professional"})
    return pd.DataFrame({"x": d["affairs"], "y": d["age"], "k": d["children"].astype(int), "s": occupation,
                         "c": d["religious"].astype(int).astype("category")})


def anes96() -> pd.DataFrame:
    import statsmodels.api as sm

    d = sm.datasets.anes96.load_pandas().data
    return pd.DataFrame({"x": d["popul"], "y": d["age"], "k": d["educ"].astype(int),
                         "s": d["vote"].map({0.0: "Clinton", 1.0: "Dole"}), "c": d["PID"].astype("category")})


DATASETS: dict[str, Callable[[], pd.DataFrame]] = {"synthetic": synthetic, "fair": fair, "anes96": anes96}
_CACHE: dict[str, pd.DataFrame] = {}


def dataset(name: str) -> pd.DataFrame:
    if name not in _CACHE:
        _CACHE[name] = DATASETS[name]()
    return _CACHE[name]


#: (idiom, code on a DataFrame or a FedData, rounds). Elementwise results are seen through an aggregate.
IDIOMS: list[tuple[str, Callable[[Any], Any], int]] = [
    ("mean", lambda d: d["x"].mean(), 1),
    ("std", lambda d: d["x"].std(), 1),
    ("var ddof=0", lambda d: d["y"].var(ddof=0), 1),
    ("sem", lambda d: d["x"].sem(), 1),
    ("sum", lambda d: d["y"].sum(), 1),
    ("sum of ints", lambda d: d["k"].sum(), 1),
    ("sum min_count", lambda d: d["x"].sum(min_count=100000), 1),
    ("mean skipna=False", lambda d: d["x"].mean(skipna=False), 1),
    ("count", lambda d: d["x"].count(), 1),
    ("min", lambda d: d["x"].min(), 1),
    ("max skipna", lambda d: d["y"].max(skipna=True), 1),
    ("median", lambda d: d["y"].median(), 4),
    ("quantile", lambda d: d["x"].quantile(0.9), 4),
    ("quantile list", lambda d: d["x"].quantile([0.1, 0.5, 0.75]), 4),
    ("describe", lambda d: d["x"].describe(), 4),
    ("describe percentiles", lambda d: d["y"].describe(percentiles=[0.1, 0.9]), 4),
    ("skew", lambda d: d["x"].skew(), 1),
    ("kurt", lambda d: d["y"].kurt(), 1),
    ("kurtosis of ints", lambda d: d["k"].kurtosis(), 1),
    ("nunique", lambda d: d["s"].nunique(), 1),
    ("nunique dropna=False", lambda d: d["x"].nunique(dropna=False), 1),
    ("value_counts", lambda d: d["s"].value_counts().sort_index(), 1),
    ("value_counts normalize", lambda d: d["k"].value_counts(normalize=True).sort_index(), 1),
    ("value_counts dropna=False", lambda d: d["s"].value_counts(dropna=False, normalize=True).sort_index(), 1),
    ("value_counts ascending", lambda d: d["k"].value_counts(ascending=True).sort_index(), 1),
    # a categorical's counts (its unused categories 0), by label: pandas' CategoricalIndex needs the dtype
    ("value_counts categorical", lambda d: d["c"].value_counts().to_dict(), 1),
    ("corr", lambda d: d["x"].corr(d["y"]), 1),
    ("cov", lambda d: d["x"].cov(d["y"], ddof=0), 1),
    ("corr min_periods", lambda d: d["x"].corr(d["y"], min_periods=10**6), 1),
    ("agg list", lambda d: d["x"].agg(["count", "mean", "std", "min", "max"]), 1),
    ("agg name", lambda d: d["y"].agg("sum"), 1),
    ("isna sum", lambda d: d["x"].isna().sum(), 1),
    ("notna sum", lambda d: d["s"].notna().sum(), 1),
    ("isnull/notnull", lambda d: d["x"].isnull().sum() + d["x"].notnull().sum(), 1),
    ("between", lambda d: d["y"].between(20, 40).sum(), 1),
    ("between neither", lambda d: d["k"].between(1, 3, inclusive="neither").sum(), 1),
    ("isin list", lambda d: d["k"].isin([0, 2]).sum(), 1),
    ("isin set", lambda d: d["s"].isin({"F", "Dole", "teacher"}).sum(), 1),
    ("where", lambda d: d["x"].where(d["y"] > 30).mean(), 1),
    ("where other", lambda d: d["x"].where(d["x"] > 50, 0).sum(), 1),
    ("where other column", lambda d: d["x"].where(d["k"] > 2, d["y"]).mean(), 1),
    ("mask", lambda d: d["y"].mask(d["k"] == 1, -1.0).sum(), 1),
    ("clip", lambda d: d["y"].clip(10, 40).mean(), 1),
    ("clip lower", lambda d: d["x"].clip(lower=45).std(), 1),
    ("fillna", lambda d: d["x"].fillna(0).mean(), 1),
    ("fillna lazy", lambda d: d["x"].fillna(d["x"].mean()).std(), 2),
    ("fillna text", lambda d: d["s"].fillna("unknown").value_counts().sort_index(), 1),
    ("dropna", lambda d: d["x"].dropna().count(), 1),
    ("map numbers", lambda d: d["k"].map({0: 10.0, 1: 20.0, 2: 0.5}).sum(), 1),
    ("map text", lambda d: d["k"].map({0: "none", 1: "one", 3: "three"}).value_counts(dropna=False).sort_index(), 1),
    ("map text keys", lambda d: d["s"].map({"F": 1, "M": 2, "Dole": 3}).mean(), 1),
    ("map Series", lambda d: d["k"].map(pd.Series({1: 5.0, 2: 7.0})).sum(), 1),
    ("replace dict", lambda d: d["k"].replace({0: 100, 5: -5}).sum(), 1),
    ("replace to None", lambda d: d["k"].replace([4, 5], None).count(), 1),
    ("replace text", lambda d: d["s"].replace({"F": "female"}).value_counts().sort_index(), 1),
    ("astype float", lambda d: d["k"].astype(float).mean(), 1),
    ("astype int", lambda d: d["y"].astype(int).sum(), 1),
    ("astype str", lambda d: d["k"].astype(str).value_counts().sort_index(), 1),
    ("astype category", lambda d: d["k"].astype("category").value_counts().to_dict(), 1),
    ("astype int64 truncates", lambda d: (d["y"] - 10).astype("int64").sum(), 1),
    ("round", lambda d: d["y"].round(1).sum(), 1),
    ("round nunique", lambda d: d["x"].round(-1).nunique(), 1),
    ("abs", lambda d: (d["x"] - 50).abs().mean(), 1),
    ("np.log", lambda d: np.log(d["y"]).mean(), 1),
    ("np.sqrt", lambda d: np.sqrt(d["y"]).std(), 1),
    ("np.exp", lambda d: np.exp(d["y"] / 10).sum(), 1),
    ("np.abs", lambda d: np.abs(d["x"] - 50).max(), 1),
    ("np.log10", lambda d: np.log10(d["y"]).mean(), 1),
    ("np.square", lambda d: np.square(d["k"]).sum(), 1),
    ("np.round", lambda d: np.round(d["y"]).sum(), 1),
    ("np.mean", lambda d: np.mean(d["x"]), 1),
    ("filtered column", lambda d: d[d["k"] > 1]["x"].median(), 4),
    ("derived describe", lambda d: (d["y"] * 2 + 1).describe(), 4),
]


def run(result: Any) -> Any:
    return result.compute() if isinstance(result, fm.LazyResult) else result


def same(got: Any, want: Any) -> None:
    """Equal to pandas: exact for counts and labels, to 1e-9 relative for floats."""
    if isinstance(want, dict):
        assert got.keys() == want.keys() and all(got[k] == want[k] for k in want), (got, want)
    elif isinstance(want, pd.Series):
        assert isinstance(got, pd.Series), type(got)
        pd.testing.assert_series_equal(got, want, rtol=1e-9, check_index_type=False, check_dtype=False)
        assert got.dtype.kind == want.dtype.kind or {got.dtype.kind, want.dtype.kind} <= set("iuf")
    elif isinstance(want, (float, np.floating)) and math.isnan(want):
        assert isinstance(got, float) and math.isnan(got), got
    else:
        assert isinstance(got, (int, float, np.number)), type(got)
        assert got == pytest.approx(float(want), rel=1e-9, abs=1e-12), (got, want)


def not_wrong(got: Any, want: Any) -> None:
    """Under privacy policies: pandas' value, or NaN where something was withheld."""
    if isinstance(want, dict):
        got, want = pd.Series(got, dtype=float), pd.Series(want, dtype=float)
    if isinstance(want, pd.Series):
        assert isinstance(got, pd.Series)
        shown = got.dropna()
        assert set(shown.index) <= set(want.index), set(shown.index) - set(want.index)
        pd.testing.assert_series_equal(shown, want.loc[shown.index].astype(float), rtol=1e-9,
                                       check_index_type=False, check_dtype=False, check_names=False)
    elif isinstance(got, float) and math.isnan(got):
        return
    else:
        same(got, want)


@pytest.mark.parametrize("cuts", SPLITS, ids=lambda c: f"{len(c) + 1} servers")
@pytest.mark.parametrize("name", list(DATASETS))
def test_idioms_equal_pandas(name: str, cuts: tuple[float, ...]) -> None:
    df = dataset(name)
    data = fed(df, cuts=cuts)
    failures = []
    for idiom, code, _ in IDIOMS:
        try:
            same(run(code(data)), code(df))
        except Exception as exc:  # collect all, so one run shows every idiom that differs
            failures.append(f"{idiom}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", ["fair", "anes96", "synthetic"])
def test_idioms_under_privacy_are_pandas_nan_or_refused(name: str) -> None:
    df = dataset(name)
    data = fed(df, config=PRIVATE, cuts=(0.3, 0.65))
    outcomes = {"equal": 0, "withheld": 0, "refused": 0}
    for idiom, code, _ in IDIOMS:
        want = code(df)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", fm.PrivacyWarning)
                got = run(code(data))
        except fm.FedMedError:
            outcomes["refused"] += 1
            continue
        not_wrong(got, want)
        shown_nan = (isinstance(got, pd.Series) and got.isna().sum() > want.isna().sum()) or (
            isinstance(got, float) and math.isnan(got) and not (isinstance(want, float) and math.isnan(want)))
        outcomes["withheld" if shown_nan else "equal"] += 1
    # most idioms on hundreds of rows per server pass the policies unchanged
    assert outcomes["equal"] > len(IDIOMS) // 2, outcomes


@pytest.mark.parametrize("idiom, code, rounds", IDIOMS, ids=[i[0] for i in IDIOMS])
def test_rounds(idiom: str, code: Callable[[Any], Any], rounds: int) -> None:
    data = fed(synthetic(40))
    plan = fm.explain(code(data))
    assert f"· {rounds} round{'s' if rounds > 1 else ''} ·" in plan.splitlines()[0]


def test_one_round_idioms_together_are_one_request_per_server() -> None:
    data = fed(synthetic(60), cuts=(0.2, 0.5, 0.7))
    results = [code(data) for _, code, rounds in IDIOMS if rounds == 1]
    head = fm.explain(*results).splitlines()[0]
    assert "· 1 round · 4 requests" in head, head
    assert len(fm.compute(*results)) == len(results)


def test_describe_states_its_quantile_rounds() -> None:
    plan = fm.explain(fed(synthetic(40))["x"].describe())
    assert "4 rounds" in plan.splitlines()[0]
    assert "count_below" in plan and "moments" in plan and "min" in plan


@pytest.mark.parametrize("method", ["mean", "std", "skew", "kurt", "median", "describe", "sem", "sum"])
def test_text_column_in_a_numeric_method_names_the_column(method: str) -> None:
    data = fed(synthetic(40))
    with pytest.raises(fm.TaskFailed, match=r"column 's' holds text values.*to_numeric"):
        run(getattr(data["s"], method)())


@pytest.mark.parametrize("call, message", [
    (lambda x: x.map(lambda v: v + 1), "Python functions"),
    (lambda x: x.agg(np.mean), "Python functions"),
    (lambda x: x.corr(x, method="spearman"), "pearson"),
    (lambda x: x.value_counts(bins=3), "histogram"),
    (lambda x: x.quantile(0.5, interpolation="nearest"), "linear"),
    (lambda x: x.mean(axis=1), "one axis"),
    (lambda x: x.astype(np.datetime64), "float, int, bool, str"),
    (lambda x: x.where([True, False]), "boolean FedData"),
    (lambda x: x.map({1: "a", 2: 3}), "all numbers, all text"),
    (lambda x: x.dropna(inplace=True), "in place"),
    (lambda x: np.sin(x), "np.sin is not offered.*log, .*sqrt"),
    (lambda x: np.add.reduce(x), "only plain calls"),
    (lambda x: np.sqrt(x, dtype=float), "only plain calls"),
    (lambda x: x.mean(out=np.zeros(1)), "out="),
])
def test_refusals_are_argument_errors_that_say_what_to_do(call: Callable[[Any], Any], message: str) -> None:
    x = fed(synthetic(40))["x"]
    with pytest.raises(fm.ArgumentError, match=message):
        call(x)


def test_config_calls_give_what_they_gave() -> None:
    """No-argument sum/count/min/max of a column are the config's aggregates (min of no values is None,
    as before); astype("float") and round(1) are the config's operations."""
    data = fm.FedData([fm.Local({"x": [1.0, None, 3.0]}), fm.Local({"x": [2.0]})])
    x = data["x"]
    assert (x.sum().compute(), x.count().compute(), x.min().compute(), x.max().compute()) == (6.0, 3, 1.0, 3.0)
    for name in ("sum", "count", "min", "max"):
        assert getattr(x, name)().node == x._aggregate(name, ()).node
    # value_counts() gives the config's counts, with pandas' index name
    pd.testing.assert_series_equal(x.value_counts().compute(), x._aggregate("value_counts", ()).compute(),
                                   check_index_type=False, check_names=False)
    empty = fm.FedData([fm.Local({"x": [None]})])["x"].astype("float")
    assert empty.min().compute() is None and math.isnan(empty.min(skipna=True).compute())
    assert x.astype("float").node == x._elementwise("astype", (x, "float")).node
    assert x.round(1).node == x._elementwise("round", (x, 1)).node


def test_names_follow_pandas() -> None:
    df = synthetic(50)
    data = fed(df)
    assert series.column_name(data["x"]) == "x"
    assert series.column_name(data[data["k"] > 2]["x"] * 2) == "x"
    assert series.column_name(data["x"] + data["y"]) is None
    assert run(data["s"].value_counts()).index.name == "s"


def test_nunique_is_nan_when_a_server_withheld_a_cell() -> None:
    # "rare" appears twice on one server: withheld there under Anonymity(k=5), so not known to exist
    df = pd.DataFrame({"g": ["a"] * 30 + ["b"] * 30 + ["rare"] * 2})
    data = fed(df.sample(frac=1, random_state=0).reset_index(drop=True), config=PRIVATE, cuts=(0.5,))
    assert df["g"].nunique() == 3
    assert math.isnan(run(data["g"].nunique()))


def test_skew_and_kurt_accurate_when_the_mean_is_large() -> None:
    """Years (mean 2000, sd 5): raw power sums would lose 1e-6 (skew) and 1e-4 (kurt) relative."""
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"x": 2000 + rng.gamma(2.0, 3.5, 5000)})
    data = fed(df, cuts=(0.1, 0.45, 0.8))
    assert run(data["x"].skew()) == pytest.approx(df["x"].skew(), rel=1e-9)
    assert run(data["x"].kurt()) == pytest.approx(df["x"].kurt(), rel=1e-9)


def test_constant_and_short_columns_as_pandas() -> None:
    df = pd.DataFrame({"x": [0.1] * 9, "z": [1.0, 2.0, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan, 5.0]})
    data = fed(df, cuts=(0.3, 0.6))
    for code in (lambda d: d["x"].skew(), lambda d: d["x"].kurt(), lambda d: d["z"].kurt(),
                 lambda d: d["z"].skew(), lambda d: d["x"].std()):
        same(run(code(data)), code(df))


def test_whole_table_goes_to_the_frame_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def dispatch(data: Any, name: str) -> Any:
        seen.append(name)
        return (lambda: "table") if type(data.node).__name__ == "Fragment" else None

    monkeypatch.setattr(series, "hook", lambda name: dispatch if name == "dispatch" else None)
    data, mean = fed(synthetic(20)), series.METHODS["mean"].fn
    assert mean(data) == "table"
    assert isinstance(mean(data["x"]), fm.LazyResult) and seen == ["mean", "mean"]
    # the config's own call of an overridden name is not the frame's: what it gave before
    assert isinstance(series.METHODS["sum"].fn(data), fm.LazyResult) and seen == ["mean", "mean"]


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.one_of(finite, st.just(math.nan), st.integers(-50, 50).map(float)), min_size=0, max_size=40),
    cuts=st.lists(st.floats(0, 1), max_size=4).map(lambda c: tuple(sorted(c))),
)
def test_numeric_idioms_equal_pandas_on_random_columns(values: list[float], cuts: tuple[float, ...]) -> None:
    df = pd.DataFrame({"x": values, "y": [v * 0.5 + 1 for v in values]}, dtype=float)
    data = fed(df, cuts=cuts)
    codes = [
        lambda d: d["x"].mean(), lambda d: d["x"].std(), lambda d: d["x"].var(ddof=0), lambda d: d["x"].sem(),
        lambda d: d["x"].sum(), lambda d: d["x"].min(skipna=True), lambda d: d["x"].max(skipna=True),
        lambda d: d["x"].count(), lambda d: d["x"].between(-10, 10).sum(), lambda d: d["x"].clip(-5, 5).sum(),
        lambda d: d["x"].where(d["x"] > 0, -1.0).sum(), lambda d: d["x"].nunique(),
        lambda d: d["x"].value_counts().sort_index(),
    ]
    results = fm.compute(*[code(data) for code in codes])
    for code, got in zip(codes, results):
        want = code(df)
        if isinstance(want, (float, np.floating)) and not math.isnan(want) and abs(want) > 0:
            assert got == pytest.approx(float(want), rel=1e-9, abs=1e-9 * df["x"].abs().max())
        else:
            same(got, want)
    # skew/kurt: pandas' own Welford sums round too; compare to 1e-6 where the spread is not tiny
    x = df["x"].dropna()
    if len(x) >= 4 and x.std() > 1e-3 * max(1.0, x.abs().max()):
        assert run(data["x"].skew()) == pytest.approx(x.skew(), rel=1e-6, abs=1e-9)
        assert run(data["x"].kurt()) == pytest.approx(x.kurt(), rel=1e-6, abs=1e-9)


def test_over_real_http_servers(serve: Callable[..., Any]) -> None:
    df = synthetic(60)
    servers = [fm.Server(config=EXACT), fm.Server(config=EXACT)]
    servers[0]["d"], servers[1]["d"] = df.iloc[:25], df.iloc[25:].reset_index(drop=True)
    data = fm.FedData([fm.Remote(ip=serve(s).url, fragment="d") for s in servers], config=EXACT)
    same(run(data["x"].describe()), df["x"].describe())
    same(run(np.log(data["y"]).skew()), np.log(df["y"]).skew())
    same(run(data["k"].map({1: "one"}).value_counts(dropna=False).sort_index()),
         df["k"].map({1: "one"}).value_counts(dropna=False).sort_index())

