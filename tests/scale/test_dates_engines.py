"""Dates give the same answers on pandas, DuckDB (Parquet and CSV, read in place) and Dask fragments.

The same rows, split unevenly over three servers, are served as in-memory
frames, Parquet files, CSV files and Dask frames; every date expression
(``to_datetime`` of messy text, ``.dt.year``/``.dt.month``, ``.dt.days`` of
negative and fractional differences, comparisons with every kind of date
constant, filters) must give the in-memory answer, which is pandas' on the
pooled rows. Under example/config.yaml, pandas and DuckDB fragments release
and refuse the same date queries (Dask fragments report no rows: refused).
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("duckdb")
dd = pytest.importorskip("dask.dataframe")

import fedmed as fm  # noqa: E402
import fedmed.fragments  # noqa: E402,F401
from fedmed.fragments.dask import Dask  # noqa: E402
from fedmed.ops import binary  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXACT = ROOT / "example" / "config-exact.yaml"
EXAMPLE = ROOT / "example" / "config.yaml"
ENGINES = ("pandas", "duckdb", "dask")

JUNK = ["bad", None, "2021-02-30", " 2020-05-06T10:00:00+02:00", "2020-05-06 10:00Z", "04/05/2020", "2020-5-6",
        "2020-05-06 10:00:00.1234567", "0000-01-01"]


def cohort(n: int = 120, seed: int = 7) -> pd.DataFrame:
    """Entry and exit times (half-hours, exits before entries, a missing exit) and the entry as messy text."""
    rng = np.random.default_rng(seed)
    entry = (pd.Timestamp("2019-01-01") + pd.to_timedelta(rng.integers(0, 900, n), unit="D")
             + pd.to_timedelta(rng.integers(0, 48, n) * 30, unit="min"))
    exit_ = entry + pd.to_timedelta(rng.integers(-30, 700, n) * 12, unit="h")
    text = [str(e.date()) if i % 6 else JUNK[i // 6 % len(JUNK)] for i, e in enumerate(entry)]
    frame = pd.DataFrame({"id": np.arange(n), "entry": pd.Series(entry).astype("datetime64[us]"),
                          "exit": pd.Series(exit_).astype("datetime64[us]"), "t": pd.Series(text, dtype="str"),
                          "x": np.round(rng.normal(50.0, 10.0, n), 3)})
    frame.loc[3, "exit"] = pd.NaT
    return frame


def fragment(engine: str, part: pd.DataFrame, path: Path) -> Any:
    if engine == "pandas":
        return part
    if engine == "duckdb":
        part.to_parquet(path)
        return fm.fragments.Parquet(path)
    return Dask(dd.from_pandas(part, npartitions=2))


def federate(engine: str, frame: pd.DataFrame, folder: Path, config: Path = EXACT,
             edges: tuple[int, ...] = (0, 17, 70)) -> fm.FedData:
    """``frame`` split at ``edges`` (uneven parts) over one server each, as ``engine`` fragments."""
    bounds = [*edges, len(frame)]
    sources = []
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        server = fm.Server(config=config)
        server["cohort"] = fragment(engine, frame.iloc[lo:hi].reset_index(drop=True), folder / f"{engine}{i}.parquet")
        sources.append(fm.Simulation(server, "cohort", name=f"{engine} {i}"))
    return fm.FedData(sources, config=config)


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> dict[str, fm.FedData]:
    folder = tmp_path_factory.mktemp("dates")
    return {engine: federate(engine, cohort(), folder) for engine in ENGINES}


POOLED = cohort()
PARSED = binary.to_datetime(POOLED["t"])
DAYS = (POOLED["exit"] - POOLED["entry"]).dt.days

#: name -> (the federated expression, pandas on the pooled rows)
EXPRESSIONS: dict[str, tuple[Callable[[fm.FedData], Any], Any]] = {
    "days sum": (lambda d: (d["exit"] - d["entry"]).dt.days.sum(), DAYS.sum()),
    "days mean": (lambda d: (d["exit"] - d["entry"]).dt.days.mean(), DAYS.mean()),
    "days count": (lambda d: (d["exit"] - d["entry"]).dt.days.count(), DAYS.count()),
    "days min": (lambda d: (d["exit"] - d["entry"]).dt.days.min(), DAYS.min()),
    "negative days": (lambda d: ((d["exit"] - d["entry"]).dt.days < 0).sum(), (DAYS < 0).sum()),
    "year sum": (lambda d: d["entry"].dt.year.sum(), POOLED["entry"].dt.year.sum()),
    "month counts": (lambda d: d["entry"].dt.month.value_counts().sort_index(),
                     POOLED["entry"].dt.month.value_counts().sort_index()),
    ">= text": (lambda d: (d["entry"] >= "2020-03-04").sum(), (POOLED["entry"] >= "2020-03-04").sum()),
    "< text with time": (lambda d: (d["entry"] < "2020-03-04 12:00").sum(),
                         (POOLED["entry"] < "2020-03-04 12:00").sum()),
    "> Timestamp": (lambda d: (d["entry"] > pd.Timestamp("2020-03-04")).sum(),
                    (POOLED["entry"] > pd.Timestamp("2020-03-04")).sum()),
    "<= date": (lambda d: (d["entry"] <= dt.date(2020, 3, 4)).sum(), (POOLED["entry"] <= pd.Timestamp("2020-03-04")).sum()),
    "!= datetime64": (lambda d: (d["entry"] != np.datetime64("2020-03-04")).sum(),
                      (POOLED["entry"] != pd.Timestamp("2020-03-04")).sum()),
    "== not a date": (lambda d: (d["entry"] == "not a date").sum(), 0),
    "column >= column": (lambda d: (d["exit"] >= d["entry"]).sum(), (POOLED["exit"] >= POOLED["entry"]).sum()),
    "filter mean": (lambda d: d[d["entry"] >= "2020-01-01"]["x"].mean(), POOLED.loc[POOLED["entry"] >= "2020-01-01", "x"].mean()),
    "filter by days": (lambda d: d[(d["exit"] - d["entry"]).dt.days > 100]["x"].count(), POOLED.loc[DAYS > 100, "x"].count()),
    "parsed count": (lambda d: d["t"].to_datetime().count(), PARSED.count()),
    "parsed year": (lambda d: d["t"].to_datetime().dt.year.sum(), PARSED.dt.year.sum()),
    "parsed days": (lambda d: (d["t"].to_datetime() - d["entry"]).dt.days.sum(), (PARSED - POOLED["entry"]).dt.days.sum()),
    "parsed >=": (lambda d: (d["t"].to_datetime() >= pd.Timestamp("2020-05-06 08:00")).sum(),
                  (PARSED >= pd.Timestamp("2020-05-06 08:00")).sum()),
    "days since 1970": (lambda d: (d["entry"] - pd.Timestamp("1970-01-01")).dt.days.max(),
                        (POOLED["entry"] - pd.Timestamp("1970-01-01")).dt.days.max()),
    "max date": (lambda d: d["entry"].max(), POOLED["entry"].max()),
    "min parsed date": (lambda d: d["t"].to_datetime().min(), PARSED.min()),
    "missing exits": (lambda d: d["exit"].isna().sum(), POOLED["exit"].isna().sum()),
}


def same(got: Any, want: Any) -> bool:
    if isinstance(want, pd.Series):
        return isinstance(got, pd.Series) and got.index.tolist() == want.index.tolist() and np.allclose(
            got.to_numpy(dtype=float), want.to_numpy(dtype=float), rtol=1e-12)
    if isinstance(want, (float, np.floating)) and not float(want).is_integer():
        return math.isclose(float(got), float(want), rel_tol=1e-12)
    return got == want


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", EXPRESSIONS)
def test_date_expressions_equal_pandas_on_every_engine(engines, engine, name):
    build, want = EXPRESSIONS[name]
    got = build(engines[engine]).compute()
    assert same(got, want), (engine, name, got, want)


@pytest.mark.parametrize("engine", ENGINES)
def test_what_no_engine_does_with_dates_is_refused_alike(engines, engine):
    data = engines[engine]
    refusals = {
        "dt.year of text": (lambda: data["t"].dt.year.sum(), "dt.year needs dates"),
        "to_datetime of numbers": (lambda: data["x"].to_datetime().count(), "to_datetime reads text as dates"),
        "dt.days of dates": (lambda: data["entry"].dt.days.sum(), "dt.days needs a difference of two dates"),
        "astype of dates": (lambda: data["entry"].astype("float").sum(), "astype does not convert dates"),
        "a date minus a number": (lambda: (data["entry"] - 5).count(), None),
        "ordered against text that is no date": (lambda: (data["entry"] >= "not a date").sum(), None),
    }
    for name, (run, message) in refusals.items():
        with pytest.raises(fm.TaskFailed, match=message):
            run().compute()


def test_csv_dates_read_in_place_equal_pandas(tmp_path):
    """DuckDB types a CSV column of dates as DATE (pandas reads text): ``to_datetime`` gives both the same dates."""
    frame = cohort()
    frame = frame.assign(entry=frame["entry"].dt.strftime("%Y-%m-%d"), exit=frame["exit"].dt.strftime("%Y-%m-%d %H:%M"))
    results = {}
    for engine in ("pandas", "csv"):
        sources = []
        for i, (lo, hi) in enumerate([(0, 40), (40, len(frame))]):
            part = frame.iloc[lo:hi].reset_index(drop=True)
            server = fm.Server(config=EXACT)
            if engine == "csv":
                part.to_csv(tmp_path / f"{i}.csv", index=False)
                server["cohort"] = fm.fragments.CSV(tmp_path / f"{i}.csv")
            else:
                server["cohort"] = part
            sources.append(fm.Simulation(server, "cohort"))
        data = fm.FedData(sources, config=EXACT)
        entry, exit_ = data["entry"].to_datetime(), data["exit"].to_datetime()
        results[engine] = fm.compute((exit_ - entry).dt.days.sum(), entry.dt.month.sum(), (entry >= "2020-01-01").sum(),
                                     exit_.count(), entry.max())
    assert results["csv"] == results["pandas"]
    entry, exit_ = binary.to_datetime(frame["entry"]), binary.to_datetime(frame["exit"])
    assert results["pandas"][:2] == ((exit_ - entry).dt.days.sum(), entry.dt.month.sum())


def heart_dates() -> pd.DataFrame:
    """statsmodels' heart transplant survival: entry 1970-01-01 plus random days, exit entry plus survival days."""
    sm = pytest.importorskip("statsmodels.api")
    heart = sm.datasets.heart.load_pandas().data
    rng = np.random.default_rng(1970)
    entry = pd.Timestamp("1970-01-01") + pd.to_timedelta(rng.integers(0, 3650, len(heart)), unit="D")
    entry = entry + pd.to_timedelta(rng.integers(0, 24 * 60, len(heart)), unit="min")  # times of day too
    frame = heart.assign(entry=pd.Series(entry).astype("datetime64[us]"))
    return frame.assign(exit=frame["entry"] + pd.to_timedelta(frame["survival"], unit="D"))


@pytest.mark.parametrize("engine", ENGINES)
def test_heart_survival_days_from_dates_on_every_engine(engine, tmp_path):
    frame = heart_dates()
    data = federate(engine, frame, tmp_path, edges=(0, 9, 40))  # 9, 31 and 29 patients
    days = (data["exit"] - data["entry"]).dt.days
    wrong, total, mean, dead = fm.compute((days != data["survival"]).sum(), days.sum(), days.mean(),
                                          days[data["censors"] == 1].count())
    assert wrong == 0
    assert total == frame["survival"].sum() and mean == pytest.approx(frame["survival"].mean(), rel=1e-14)
    assert dead == int((frame["censors"] == 1).sum())


# -- under the example config's policies ----------------------------------------------------------


def judged(run: Callable[[], Any]) -> Any:
    """The released value, NaN where withheld, or the refusal's policy name."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fm.PrivacyWarning)
            return run()
    except fm.PrivacyError as exc:
        return exc.policy.split("(")[0]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> dict[str, fm.FedData]:
    """200 patients on two servers under example/config.yaml; row 17 alone entered on 2021-03-04, and the latest
    entry (2022-06-01) is shared by five patients on each server."""
    frame = cohort(200, seed=11)
    frame.loc[frame["entry"].dt.normalize() == pd.Timestamp("2021-03-04"), "entry"] = pd.Timestamp("2021-03-05")
    frame.loc[17, "entry"] = pd.Timestamp("2021-03-04")
    frame.loc[[3, 20, 40, 60, 80, 120, 140, 160, 180, 199], "entry"] = pd.Timestamp("2022-06-01")
    folder = tmp_path_factory.mktemp("guarded")
    return {engine: federate(engine, frame, folder, config=EXAMPLE, edges=(0, 100)) for engine in ENGINES}


GUARDED: dict[str, Callable[[fm.FedData], Any]] = {
    "days mean": lambda d: (d["exit"] - d["entry"]).dt.days.mean(),
    "year mean": lambda d: d["entry"].dt.year.mean(),
    "entered since 2020": lambda d: (d["entry"] >= "2020-01-01").sum(),
    "max entry (5 holders per server)": lambda d: d["entry"].max(),
    "min exit (one holder)": lambda d: d["exit"].min(),
    "indicator": lambda d: (d["x"] * (d["entry"] == "2021-03-04")).sum(),
    "indicator of a Timestamp": lambda d: (d["x"] * (d["entry"] == pd.Timestamp("2021-03-04"))).sum(),
    "filter to one date": lambda d: d[d["entry"] == dt.date(2021, 3, 4)]["x"].sum(),
    "all but one date": lambda d: d[d["entry"] != "2021-03-04"]["x"].sum(),
    "tracker through a date": lambda d: (d["id"] + d["x"] * (d["entry"] <= "2021-03-04")
                                         - d["x"] * (d["entry"] < "2021-03-04")).sum(),
}


@pytest.mark.parametrize("name", GUARDED)
def test_pandas_and_duckdb_judge_dates_alike(guarded, name):
    pandas_answer = judged(lambda: GUARDED[name](guarded["pandas"]).compute())
    duckdb_answer = judged(lambda: GUARDED[name](guarded["duckdb"]).compute())
    if isinstance(pandas_answer, float) and math.isnan(pandas_answer):
        assert isinstance(duckdb_answer, float) and math.isnan(duckdb_answer)
    elif isinstance(pandas_answer, float):
        assert duckdb_answer == pytest.approx(pandas_answer, rel=1e-12)
    else:
        assert duckdb_answer == pandas_answer
    expected = {"days mean": "released", "year mean": "released", "entered since 2020": "released",
                "max entry (5 holders per server)": "released", "min exit (one holder)": "withheld"}
    kind = expected.get(name, "Anonymity")
    if kind == "released":
        assert not isinstance(pandas_answer, str) and not (isinstance(pandas_answer, float) and math.isnan(pandas_answer))
    elif kind == "withheld":
        assert isinstance(pandas_answer, float) and math.isnan(pandas_answer)
    else:
        assert pandas_answer == "Anonymity", pandas_answer
    assert judged(lambda: GUARDED[name](guarded["dask"]).compute()) == "Anonymity"  # no rows reported: refused


def test_a_released_max_date_is_the_date(guarded):
    assert guarded["duckdb"]["entry"].max().compute() == pd.Timestamp("2022-06-01")
    assert guarded["pandas"]["entry"].max().compute() == pd.Timestamp("2022-06-01")


# -- to_datetime's grammar, string by string ----------------------------------------------------------


def date_strings(n: int, seed: int) -> list[str]:
    """ISO 8601 dates and times near the grammar's edges: every part optional or malformed, offsets, white space,
    impossible days (29 February of a common year, 31 April), hours 24, years 0000 and 9999."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        year = int(rng.choice([0, 1, 999, 1600, 1700, 1900, 2000, 2021, 2024, 2262, 2263, 9999]))
        month, day = int(rng.integers(1, 13)), int(rng.choice([1, 15, 28, 29, 30, 31]))
        text = f"{year:04d}-{month:02d}-{day:02d}"
        if rng.random() < 0.7:
            hour, minute, second = int(rng.choice([0, 9, 23, 24])), int(rng.choice([0, 30, 59, 60])), int(rng.integers(0, 61))
            text += str(rng.choice(["T", " ", "t", "  "])) + f"{hour:02d}:{minute:02d}"
            if rng.random() < 0.7:
                text += f":{second:02d}"
                if rng.random() < 0.5:
                    text += "." + "".join(str(d) for d in rng.integers(0, 10, int(rng.integers(1, 11))))
            if rng.random() < 0.4:
                text += str(rng.choice(["Z", "+00:00", "-00:00", "+01:00", "-05:30", "+23:59", "+24:00", "+0100", "z"]))
        if rng.random() < 0.1:
            text = text.replace("-", "/", 2) if rng.random() < 0.5 else text.replace("-0", "-", 1)
        if rng.random() < 0.2:
            text = str(rng.choice([" ", "\t", "\n", "\u00a0"])) + text + str(rng.choice(["", " ", "\r\n"]))
        out.append(text)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_to_datetime_reads_each_string_alike_on_every_engine(seed, tmp_path):
    """Each engine's dates, compared at every date pandas reads and the microsecond after it: one request per
    server, and any string read differently by one engine changes some count."""
    frame = pd.DataFrame({"t": pd.Series(date_strings(300, seed), dtype="str")})
    truth = binary.to_datetime(frame["t"])
    assert 0.2 < truth.notna().mean() < 0.8  # both kinds are well represented
    marks = sorted(set(truth.dropna()))
    for engine in ENGINES:
        data = federate(engine, frame, tmp_path, edges=(0, 100, 180))
        parsed = data["t"].to_datetime()
        got = fm.compute(parsed.count(), *((parsed >= m).sum() for m in marks),
                         *((parsed > m + pd.Timedelta(microseconds=1)).sum() for m in marks))
        want = (truth.count(), *((truth >= m).sum() for m in marks),
                *((truth > m + pd.Timedelta(microseconds=1)).sum() for m in marks))
        assert list(got) == list(want), engine


@pytest.mark.parametrize("engine", ENGINES)
def test_dates_have_pandas_dtypes_on_every_engine(engines, engine):
    data = engines[engine]
    columns = {"parsed": data["t"].to_datetime(), "year": data["entry"].dt.year,
               "days": (data["exit"] - data["entry"]).dt.days, "difference": data["exit"] - data["entry"]}
    dtypes = {name: column.schema().compute()[0] for name, column in columns.items()}
    assert dtypes == {"parsed": "datetime64[us]", "year": "Int64", "days": "Int64", "difference": "timedelta64[us]"}
