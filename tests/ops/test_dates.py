"""Dates on the servers: ``to_datetime``, ``.dt.year``/``.dt.month``/``.dt.days``, and date constants.

Each expression runs on three in-process fragments (one empty) and is
observed through aggregates; the reference is pandas on the pooled rows,
with ``pd.to_datetime(format="ISO8601", errors="coerce")`` for text. The
engines' parity (DuckDB, Dask) is ``tests/scale/test_dates_engines.py``;
the privacy of dates ``tests/privacy/test_attacks.py``.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

import fedmed as fm
from fedmed import wire
from fedmed.api.series import to_datetime as fm_to_datetime
from fedmed.errors import OperationError
from fedmed.ops import binary
from fedmed.server.disclosure import _finite, _moves

EXACT = "example/config-exact.yaml"

TEXT = ["2021-03-04", " 2021-03-04 10:30 ", "2020-02-29T23:59:59.5", "2021-03-04T10:00:00+02:00",
        "2021-03-04T10:00:00Z", "2021-02-30", "04/03/2021", "2021-3-4", "unknown", None, "2021-03-04 24:00",
        "0000-01-01", "1850-07-01", "2021-12-31 23:59:59.123456789"]
#: What each of ``TEXT`` reads as (NaT: not a date ``to_datetime`` reads).
PARSED = [pd.Timestamp("2021-03-04"), pd.Timestamp("2021-03-04 10:30"), pd.Timestamp("2020-02-29 23:59:59.5"),
          pd.Timestamp("2021-03-04 08:00"), pd.Timestamp("2021-03-04 10:00"), pd.NaT, pd.NaT, pd.NaT, pd.NaT,
          pd.NaT, pd.NaT, pd.NaT, pd.Timestamp("1850-07-01"), pd.Timestamp("2021-12-31 23:59:59.123456")]


def parts() -> list[pd.DataFrame]:
    entry = pd.to_datetime(["2020-01-01", "2020-01-01 12:00", "2019-12-31", "2021-06-30 23:00", None,
                            "2020-02-29", "2018-03-04", "2021-03-04"], format="ISO8601")
    exit_ = pd.to_datetime(["2020-01-15 12:00", "2020-01-01", "2021-12-31", "2021-06-30 22:00", "2021-01-01",
                            None, "2019-03-04", "2021-03-04 00:00:01"], format="ISO8601")
    frame = pd.DataFrame({"entry": entry, "exit": exit_, "x": np.arange(8.0)})
    return [frame.iloc[:3].reset_index(drop=True), frame.iloc[:0], frame.iloc[3:].reset_index(drop=True)]


@pytest.fixture
def data() -> fm.FedData:
    return fm.FedData([fm.Local(p) for p in parts()], config=EXACT)


POOLED = pd.concat(parts(), ignore_index=True)


# -- to_datetime --------------------------------------------------------------------------------------


def test_to_datetime_reads_iso_text_and_nothing_else():
    got = binary.to_datetime(pd.Series(TEXT, dtype="str", name="d"))
    assert got.dtype == "datetime64[us]" and got.name == "d"
    assert got.tolist() == PARSED


@pytest.mark.parametrize("dtype", ["str", object, "category"])
def test_to_datetime_gives_one_type_whatever_the_values(dtype):
    """pandas picks a unit (and fails on mixed offsets) from the values; ``to_datetime`` never does."""
    for values in (TEXT, ["2021-03-04"], ["2021-03-04 10:00:00.123456789"], [None], []):
        assert binary.to_datetime(pd.Series(values, dtype=dtype)).dtype == "datetime64[us]"
    mixed = pd.Series(["2021-03-04T10:00:00+02:00", "2021-03-04T10:00:00-05:00", "2021-03-04"], dtype=dtype)
    assert binary.to_datetime(mixed).tolist() == [pd.Timestamp("2021-03-04 08:00"), pd.Timestamp("2021-03-04 15:00"),
                                                  pd.Timestamp("2021-03-04")]


def test_to_datetime_keeps_dates_and_reads_python_dates():
    dates = pd.Series(pd.to_datetime(["2021-03-04", None]))
    assert binary.to_datetime(dates).equals(dates)
    aware = pd.Series(pd.to_datetime(["2021-03-04 10:00"]).tz_localize("Europe/Paris"))
    assert binary.to_datetime(aware).tolist() == [pd.Timestamp("2021-03-04 09:00")]
    objects = pd.Series([dt.date(2021, 3, 4), dt.datetime(2020, 1, 1, 12), "2019-01-01", 5, None], dtype=object)
    assert binary.to_datetime(objects).tolist() == [pd.Timestamp("2021-03-04"), pd.Timestamp("2020-01-01 12:00"),
                                                    pd.Timestamp("2019-01-01"), pd.NaT, pd.NaT]
    assert binary.to_datetime("2021-03-04T00:00:00") == pd.Timestamp("2021-03-04")
    assert binary.to_datetime("not a date") is pd.NaT


@pytest.mark.parametrize("values", [[1.0, 2.0], [1, 2], [True, False]])
def test_to_datetime_refuses_numbers_whatever_they_are(values):
    with pytest.raises(OperationError, match="holds numbers"):
        binary.to_datetime(pd.Series(values))


def test_to_datetime_on_the_servers_equals_pandas_on_the_pooled_text():
    frames = [pd.DataFrame({"d": TEXT[:5]}), pd.DataFrame({"d": []}, dtype="str"), pd.DataFrame({"d": TEXT[5:]})]
    data = fm.FedData([fm.Local(f) for f in frames], config=EXACT)
    truth = pd.Series(PARSED)
    d = data["d"].to_datetime()
    assert d.count().compute() == truth.count()
    assert d.dt.year.sum().compute() == truth.dt.year.sum()
    assert fm_to_datetime(data["d"]).count().compute() == truth.count()
    assert (d >= "2021-03-04 09:00").sum().compute() == (truth >= "2021-03-04 09:00").sum()


# -- numbers made of dates ------------------------------------------------------------------------------


def test_year_month_and_days_equal_pandas(data):
    days = (data["exit"] - data["entry"]).dt.days
    truth = (POOLED["exit"] - POOLED["entry"]).dt.days
    assert truth.tolist()[:4] == [14, -1, 731, -1]  # pandas floors: 23 hours back is -1 day
    assert days.sum().compute() == truth.sum()
    assert days.count().compute() == truth.count()
    assert days.mean().compute() == pytest.approx(truth.mean(), rel=1e-15)
    assert days.min().compute() == truth.min() and days.max().compute() == truth.max()
    assert data["entry"].dt.year.sum().compute() == POOLED["entry"].dt.year.sum()
    assert data["entry"].dt.month.value_counts().compute().sort_index().equals(
        POOLED["entry"].dt.month.value_counts().sort_index().astype("int64"))


def test_days_round_down_as_pandas():
    d = binary.to_datetime(pd.Series(["2021-03-01", "2021-03-01", "2021-03-01 00:00:00.000001", None]))
    e = binary.to_datetime(pd.Series(["2021-03-15 12:00", "2021-03-01 00:00:00.000001", "2021-03-01", "2021-03-01"]))
    got = binary.dt_days(d - e)
    assert got.dtype == "Int64" and got.tolist() == [-15, -1, 0, pd.NA]
    assert got.tolist()[:3] == (d - e).dt.days.tolist()[:3]


def test_dt_refuses_what_is_not_dates(data):
    frames = [pd.DataFrame({"t": ["2021-03-04"] * 3, "x": [1.0, 2.0, 3.0]})]
    text = fm.FedData([fm.Local(f) for f in frames], config=EXACT)
    with pytest.raises(fm.TaskFailed, match=r"dt.year needs dates: convert text with .to_datetime\(\)"):
        text["t"].dt.year.sum().compute()
    with pytest.raises(fm.TaskFailed, match="dt.days needs a difference of two dates"):
        data["entry"].dt.days.sum().compute()
    with pytest.raises(fm.TaskFailed, match="to_datetime reads text as dates"):
        text["x"].to_datetime().count().compute()
    with pytest.raises(fm.ArgumentError, match=r".dt.hour is not offered"):
        data["entry"].dt.hour
    with pytest.raises(fm.TaskFailed, match="astype does not convert dates"):
        data["entry"].astype("float").sum().compute()


# -- comparisons with dates ---------------------------------------------------------------------------

CONSTANTS = ["2020-01-01", "2020-01-01 12:00", pd.Timestamp("2020-01-01 12:00"), dt.date(2020, 1, 1),
             dt.datetime(2020, 1, 1, 12), np.datetime64("2020-01-01T12:00:00.000000000"),
             pd.Timestamp("2020-01-01 13:00", tz="Europe/Paris")]


@pytest.mark.parametrize("constant", CONSTANTS, ids=repr)
@pytest.mark.parametrize("op", ["eq", "ne", "lt", "le", "gt", "ge"])
def test_comparisons_with_date_constants_equal_pandas(data, constant, op):
    reference = pd.Timestamp(constant).tz_convert("UTC").tz_localize(None) if getattr(constant, "tzinfo", None) \
        else constant
    truth = getattr(POOLED["entry"], f"__{op}__")(pd.Timestamp(reference) if not isinstance(reference, str)
                                                  else reference)
    got = getattr(data["entry"], f"__{op}__")(constant)
    assert got.sum().compute() == truth.sum()
    assert data[got]["x"].sum().compute() == POOLED.loc[truth, "x"].sum()


def test_dates_compare_with_dates_and_equal_no_other_value(data):
    assert (data["exit"] >= data["entry"]).sum().compute() == (POOLED["exit"] >= POOLED["entry"]).sum()
    assert (data["entry"] == "not a date").sum().compute() == 0
    assert (data["entry"] != 5).sum().compute() == len(POOLED)
    with pytest.raises(fm.TaskFailed):
        (data["entry"] >= "not a date").sum().compute()


def test_a_date_constant_is_read_on_the_server_and_missing_dates_are_refused(data):
    plan = (data["entry"] >= pd.Timestamp("2020-01-01")).sum().explain()
    assert "'2020-01-01T00:00:00'" in str(plan) and "to_datetime" in str(plan)
    with pytest.raises(fm.ArgumentError, match="NaT"):
        data["entry"]._operand(pd.NaT)
    with pytest.raises(TypeError):
        data["entry"] >= pd.NaT


# -- dates as answers -------------------------------------------------------------------------------------


def test_min_and_max_of_dates_are_dates(data):
    assert data["entry"].max().compute() == POOLED["entry"].max()
    assert data["exit"].min().compute() == POOLED["exit"].min()
    assert isinstance(data["entry"].min().compute(), pd.Timestamp)
    assert pd.isna(data[data["x"] > 100]["entry"].max(skipna=True).compute())


def test_dates_travel_as_dates():
    value = {"d": pd.Timestamp("2021-03-04 10:00:00.000001"), "t": pd.Timedelta(days=-14.5),
             "n": np.datetime64("2021-03-04"), "p": dt.date(2021, 3, 4), "missing": pd.NaT}
    back = wire.unpack(wire.pack(value))
    assert back == {"d": value["d"], "t": value["t"], "n": pd.Timestamp("2021-03-04"), "p": pd.Timestamp("2021-03-04"),
                    "missing": None}
    assert wire.unpack(wire.pack({"$datetime": 5})) == {"$datetime": 5}  # not a date: left as it is
    assert wire.unpack(wire.pack({"$datetime": "no"})) == {"$datetime": "no"}


# -- the disclosure's view of dates ---------------------------------------------------------------------


def test_influence_moves_dates_to_the_far_future_and_past_and_nat_is_missing():
    # constants, not a shift: a shift changes a comparison with a constant only near the constant (an oracle)
    dates = pd.Series(pd.to_datetime(["2021-03-04", None, "2259-12-31"]).astype("datetime64[ns]"))
    up, down = _moves(dates)
    assert up.tolist()[0] == pd.Timestamp("9999-12-31") and down.tolist()[0] == pd.Timestamp("0001-01-01")
    assert up.tolist()[2] == pd.Timestamp("9999-12-31")  # beyond nanoseconds' range: microseconds, no overflow
    assert pd.isna(up[1]) and pd.isna(down[1])
    differences = dates - pd.Timestamp("2020-01-01")
    assert [m.dt.days.tolist()[0] for m in _moves(differences)] == [3_652_500, -3_652_500]
    assert _finite(dates).tolist() == [True, False, True]
    assert _finite(dates.astype(object)).tolist() == [True, False, True]


def test_numeric_statistics_of_raw_dates_are_refused_not_microseconds():
    # read as numbers a date is microseconds since 1970: a mean of them would be a finite wrong number
    import fedmed as fm

    server = fm.Server(config="example/config-exact.yaml")
    server["d"] = pd.DataFrame({"d": pd.to_datetime(["2020-01-01", "2021-06-01", "2022-01-01"])})
    data = fm.FedData([fm.Simulation(server, "d")], config="example/config-exact.yaml")
    for statistic in (data["d"].mean, data["d"].std, data["d"].median):
        with pytest.raises(fm.TaskFailed, match=r"holds dates .*\.dt\.year"):
            statistic().compute()
    assert data["d"].max().compute() == pd.Timestamp("2022-01-01")
    assert data["d"].dt.year.mean().compute() == pytest.approx(2021.0)
