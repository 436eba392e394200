"""Dirty data: a numeric column that loaded as text ("unknown", ">89") is refused by name, and ``to_numeric`` fixes it.

A CSV column with a few values that are not numbers loads as text. Every
operation that needs numbers refuses it with a ``fm.TaskFailed`` that names
the column and says to convert it with ``data[col].to_numeric()``
(``pd.to_numeric(errors="coerce")``), on every engine (pandas, DuckDB,
Dask). The refusal is decided by the column's type, never its values: under
privacy policies its message is the same whatever the values hold (a
failure reaches the client before any policy); a server without policies
also says how many values are not numbers.
"""

from __future__ import annotations

import io
import itertools
import math
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fedmed as fm
import fedmed.fragments  # noqa: F401  (fm.fragments)

EXACT, PRIVATE = "example/config-exact.yaml", "example/config.yaml"
CONFIGS = [EXACT, PRIVATE]


def messy_csv(rows: int = 60, seed: int = 0) -> str:
    """A cohort as a CSV file: ``bmi`` and ``sbp`` are numbers with a few text values and blanks."""
    rng = np.random.default_rng(seed)
    bmi = [f"{v:.1f}" for v in rng.normal(27, 4, rows)]
    sbp = [str(int(v)) for v in rng.normal(135, 15, rows)]
    for i, text in ((3, "unknown"), (17, ">89"), (29, " 31.5 "), (41, "n/a"), (52, "")):
        bmi[i] = text
    for i, text in ((8, "refused"), (33, "<90")):
        sbp[i] = text
    age = [str(a) for a in rng.integers(20, 90, rows)]
    sex = [("F", "M")[i % 2] for i in range(rows)]
    lines = ["bmi,sbp,age,sex"] + [",".join(r) for r in zip(bmi, sbp, age, sex)]
    return "\n".join(lines) + "\n"


def read(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text))


def fed(df: pd.DataFrame, config: str = EXACT, cuts: tuple[float, ...] = (0.5, 0.8)) -> fm.FedData:
    """``df`` split unevenly over 3 simulated servers."""
    n = len(df)
    bounds = [0] + [int(c * n) for c in cuts] + [n]
    sources = []
    for i in range(len(bounds) - 1):
        server = fm.Server(config=config)
        server["d"] = df.iloc[bounds[i]:bounds[i + 1]].reset_index(drop=True)
        sources.append(fm.Simulation(server, "d", name=f"h{i}"))
    return fm.FedData(sources, config=config)


#: statistics that need numbers, asked of a text column
NEEDS_NUMBERS: dict[str, Callable[[fm.FedData], Any]] = {
    "moments": lambda x: x.moments(),
    "sum": lambda x: x.sum(),
    "mean": lambda x: fm.stats.mean(x),
    "describe": lambda x: fm.stats.describe(x),
    "histogram": lambda x: x.histogram([0, 30, 100]),
    "median": lambda x: fm.stats.median(x),
    "greater than": lambda x: (x > 25).sum(),
    "at most": lambda x: (x <= 25).count(),
    "minus": lambda x: (x - 1).count(),
    "log": lambda x: x.log().count(),
    "round": lambda x: x.round().count(),
    "filter by a comparison": lambda x: x[x > 25].len(),
}


def refusal(compute: Callable[[], Any]) -> fm.TaskFailed:
    with pytest.raises(fm.TaskFailed) as info:
        compute()
    return info.value


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("statistic", list(NEEDS_NUMBERS))
def test_text_where_numbers_are_needed_is_refused_naming_the_column_and_the_fix(config, statistic):
    data = fed(read(messy_csv()), config)
    error = refusal(lambda: NEEDS_NUMBERS[statistic](data["bmi"]).compute())
    message = str(error)
    assert "column 'bmi' holds text values" in message and "data['bmi'].to_numeric()" in message
    for value in ("unknown", ">89", "n/a"):
        assert value not in message  # never a value
    if config == PRIVATE:  # the same whatever the values: a way to count them instead
        assert "(x.notna() & x.to_numeric().isna()).sum()" in message and "values present here" not in message
    else:
        assert re.search(r"\d+ of the \d+ values present here are not numbers", message)


def test_a_table_with_a_text_column_names_it():
    data = fed(read(messy_csv()), EXACT)
    assert "column 'bmi' holds text values" in str(refusal(lambda: fm.stats.mean(data).compute()))


def test_text_compared_with_text_and_counted_still_works():
    frame = read(messy_csv())
    data = fed(frame, PRIVATE)
    assert data["bmi"].count().compute() == frame["bmi"].count()
    assert (data["sex"] < "M").sum().compute() == (frame["sex"] < "M").sum()
    exact = fed(frame, EXACT)  # equality with text is pandas' (under privacy it would single out one row)
    assert (exact["bmi"] != "unknown").sum().compute() == (frame["bmi"] != "unknown").sum()


@pytest.mark.parametrize("config", CONFIGS)
def test_to_numeric_gives_pandas_on_the_pooled_coerced_rows(config):
    frame = read(messy_csv(rows=90))
    coerced = pd.to_numeric(frame["bmi"], errors="coerce")
    data = fed(frame, config)
    x = data["bmi"].to_numeric()
    if config == PRIVATE:
        # each server has at most 4 values that are not numbers: telling them apart singles out rows
        with pytest.raises(fm.PrivacyError):
            fm.stats.mean(x).compute()
        return
    mean, std, n, total = fm.compute(fm.stats.mean(x), fm.stats.std(x), x.count(), x.sum())
    assert n == coerced.count() and mean == pytest.approx(coerced.mean(), rel=1e-12)
    assert std == pytest.approx(coerced.std(), rel=1e-12) and total == pytest.approx(coerced.sum(), rel=1e-12)
    assert (x > 25).sum().compute() == (coerced > 25).sum()
    y = pd.to_numeric(frame["sbp"], errors="coerce")
    r = fm.stats.pearson(x, data["sbp"].to_numeric()).compute()
    assert r == pytest.approx(coerced.corr(y), rel=1e-9)
    not_numbers = (data["bmi"].notna() & data["bmi"].to_numeric().isna()).sum().compute()
    assert not_numbers == (frame["bmi"].notna() & coerced.isna()).sum() == 2  # "unknown", ">89" (read_csv: "n/a" is NaN)


def test_to_numeric_keeps_numbers_and_is_released_under_privacy_when_no_row_is_singled_out():
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(0, 1, 60), "k": rng.integers(0, 5, 60), "t": [str(i) for i in range(60)]})
    data = fed(frame, PRIVATE)
    assert data["x"].to_numeric().sum().compute() == pytest.approx(frame["x"].sum())
    assert data["k"].to_numeric().sum().compute() == frame["k"].sum()
    assert data["t"].to_numeric().sum().compute() == pytest.approx(pd.to_numeric(frame["t"]).sum())


def test_the_message_under_privacy_is_the_same_whatever_the_text_values():
    rng = np.random.default_rng(2)
    numbers = [f"{v:.1f}" for v in rng.normal(27, 4, 40)]
    few = numbers.copy()
    few[5] = "unknown"
    many = numbers.copy()
    for i in range(0, 40, 3):
        many[i] = f"patient {i} refused"
    messages = []
    for values in (few, many, [*numbers[:-1], "x"]):
        server = fm.Server(config=PRIVATE)
        server["d"] = pd.DataFrame({"bmi": values})
        data = fm.FedData([fm.Simulation(server, "d", name="h")], config=PRIVATE)
        messages += [refusal(lambda: statistic(data["bmi"]).compute()).message  # without the server's name
                     for statistic in (NEEDS_NUMBERS["moments"], NEEDS_NUMBERS["greater than"])]
    assert messages[0::2] == [messages[0]] * 3 and messages[1::2] == [messages[1]] * 3
    exact = fm.Server(config=EXACT)
    exact["d"] = pd.DataFrame({"bmi": many})
    data = fm.FedData([fm.Simulation(exact, "d", name="h")], config=EXACT)
    assert "14 of the 40 values present here are not numbers" in str(refusal(lambda: data["bmi"].sum().compute()))


# -- engines ----------------------------------------------------------------------------------------


def engines(tmp_path: Path, frame: pd.DataFrame, config: str) -> dict[str, fm.FedData]:
    """The same rows in 3 servers per engine: pandas, DuckDB (a CSV and a Parquet file) and Dask."""
    import dask.dataframe as dd

    from fedmed.fragments.dask import Dask

    parts = [frame.iloc[:25], frame.iloc[25:40], frame.iloc[40:]]
    made: dict[str, list[Any]] = {"pandas": [], "csv": [], "parquet": [], "dask": []}
    for i, part in enumerate(parts):
        csv, parquet = tmp_path / f"p{i}.csv", tmp_path / f"p{i}.parquet"
        part.to_csv(csv, index=False)
        read(csv.read_text()).to_parquet(parquet)  # as a CSV loads: text columns stay text
        made["pandas"].append(read(csv.read_text()))
        made["csv"].append(fm.fragments.CSV(csv))
        made["parquet"].append(fm.fragments.Parquet(parquet))
        made["dask"].append(Dask(dd.from_pandas(read(csv.read_text()), npartitions=2)))
    out = {}
    for engine, fragments in made.items():
        sources = []
        for i, fragment in enumerate(fragments):
            server = fm.Server(config=config)
            server["d"] = fragment
            sources.append(fm.Simulation(server, "d", name=f"{engine}{i}"))
        out[engine] = fm.FedData(sources, config=config)
    return out


def test_every_engine_refuses_text_by_name_and_converts_it_alike(tmp_path):
    frame = read(messy_csv())
    by_engine = engines(tmp_path, frame, EXACT)
    coerced = pd.to_numeric(frame["bmi"], errors="coerce")
    for engine, data in by_engine.items():
        for statistic in ("moments", "greater than", "minus"):
            message = str(refusal(lambda: NEEDS_NUMBERS[statistic](data["bmi"]).compute()))
            assert "column 'bmi' holds text values" in message and "data['bmi'].to_numeric()" in message, engine
        x = data["bmi"].to_numeric()
        moments, count, above = fm.compute(x.moments(), x.count(), (x > 25).sum())
        assert count == coerced.count() and above == (coerced > 25).sum(), engine
        assert moments.mean == pytest.approx(coerced.mean(), rel=1e-12), engine
        assert moments.m2 == pytest.approx(((coerced - coerced.mean()) ** 2).sum(), rel=1e-9), engine
        assert data["age"].to_numeric().sum().compute() == frame["age"].sum(), engine


TEXT_VALUES = ["unknown", ">89", "<5", "n/a", "NA", "", " ", "12", " 31.5 ", "1e2", "-0", "+7", ".5", "5.", "inf",
               "-Infinity", "nan", "1_000", "0x10", "1,5", " inf", "3 4", "1e400", "١٢"]
_files = itertools.count()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(st.one_of(st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: repr(round(v, 3))),
                              st.sampled_from(TEXT_VALUES), st.none()), min_size=3, max_size=40),
    config=st.sampled_from(CONFIGS),
)
def test_text_sprinkled_into_numbers_never_gives_a_bare_exception_or_a_wrong_number(tmp_path, values, config):
    frame = pd.DataFrame({"v": pd.Series(values, dtype="str")})
    coerced = pd.to_numeric(frame["v"], errors="coerce")
    path = tmp_path / f"v{next(_files)}.parquet"
    frame.to_parquet(path)  # a text column, whatever its values (DuckDB's CSV reader would guess types)
    server = fm.Server(config=config)
    server["d"] = fm.fragments.Parquet(path)
    for data in (fed(frame, config, cuts=(0.5,)), fm.FedData([fm.Simulation(server, "d")], config=config)):
        x = data["v"]
        number = x.to_numeric()
        for statistic, expected in (
            (x.sum(), None), (fm.stats.mean(x), None), ((x > 0).sum(), None),  # text: refused
            (number.sum(), coerced.sum()), (fm.stats.mean(number), coerced.mean()),
            (number.count(), coerced.count()), ((number > 0).sum(), (coerced > 0).sum()),
        ):
            try:
                value = statistic.compute()
            except fm.FedMedError:  # a refusal with a reason is honest
                continue
            assert expected is not None, "a statistic of text was computed"
            if isinstance(value, float) and math.isnan(value):
                # NaN says "cannot": fine where policies withheld parts, or where pandas' mean is infinite
                # (servers' moments with an infinite mean do not merge: a known limit of moments)
                assert config == PRIVATE or not math.isfinite(expected)
            else:
                assert value == pytest.approx(expected, rel=1e-9, abs=1e-9)


# -- a CSV served as `fedmed serve` loads it -----------------------------------------------------------


def test_csv_loaded_by_fedmed_serve_gives_the_same_refusal_and_conversion(tmp_path):
    from fedmed.cli import load_fragment

    frame = read(messy_csv())
    (tmp_path / "cohort.csv").write_text(messy_csv())
    name, loaded = load_fragment(f"cohort={tmp_path / 'cohort.csv'}")
    server = fm.Server(config=EXACT)
    server[name] = loaded
    data = fm.FedData([fm.Simulation(server, name)], config=EXACT)
    assert "column 'sbp' holds text values" in str(refusal(lambda: fm.stats.mean(data["sbp"]).compute()))
    assert fm.stats.mean(data["sbp"].to_numeric()).compute() == pytest.approx(
        pd.to_numeric(frame["sbp"], errors="coerce").mean(), rel=1e-12)



def test_the_text_refusal_never_tells_whether_a_filter_kept_rows() -> None:
    """Red-team finding (issue 15): exempting empty columns from the text refusal made the message tell
    whether ``data[(id == 17) & (age > x)]`` was empty, so bisecting ``x`` read a patient's age. The
    refusal follows the type alone; only a fragment with no rows at all is let through."""
    rng = np.random.default_rng(17)
    frame = pd.DataFrame({"id": np.arange(200), "age": rng.integers(20, 90, 200),
                          "name": [f"p{i}" for i in range(200)]})
    server = fm.Server(config="example/config.yaml")
    server["d"] = frame
    d = fm.FedData([fm.Simulation(server, "d")], config="example/config.yaml")
    age = int(frame.loc[17, "age"])
    for attack in (lambda s: (s["name"] + 1).sum(), lambda s: (s["name"] - 1).count(), lambda s: s["name"].sum(),
                   lambda s: s["name"].log().count(), lambda s: (s["name"] < 3).sum()):
        said = set()
        for kept in ((d["id"] == 17) & (d["age"] > age - 1), (d["id"] == 17) & (d["age"] > age), d["id"] == 1000):
            try:
                attack(d[kept]).compute()
                said.add("released")
            except fm.FedMedError as error:
                said.add(f"{type(error).__name__}: {error.message}")
        assert len(said) == 1, said
