"""How many everyday pandas idioms run unchanged on a FedData, with pandas' results (issue 16).

Each idiom is written once, as an analyst writes it against a pandas
DataFrame, and run on the pooled DataFrame and on a FedData over three
uneven servers (``example/config-exact.yaml``). An idiom counts when its
FedData result (after ``.compute()``) equals pandas' (values, index and
columns; floats to 1e-9 relative). The row-level calls at the end count
when FedData refuses them with ``fm.RowLevelError``.

    python benchmarks/idioms.py          # prints the table, writes benchmarks/results/idioms.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

import fedmed as fm

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "example" / "config-exact.yaml")

#: name -> the idiom, as written on a pandas DataFrame ``d``.
IDIOMS: dict[str, Callable[[Any], Any]] = {
    # single columns
    "mean": lambda d: d["age"].mean(),
    "std": lambda d: d["age"].std(),
    "var ddof=0": lambda d: d["age"].var(ddof=0),
    "sem": lambda d: d["bmi"].sem(),
    "sum": lambda d: d["age"].sum(),
    "count": lambda d: d["bmi"].count(),
    "min": lambda d: d["age"].min(),
    "max": lambda d: d["age"].max(),
    "median": lambda d: d["age"].median(),
    "quantile": lambda d: d["age"].quantile(0.9),
    "quantile list": lambda d: d["age"].quantile([0.25, 0.75]),
    "describe": lambda d: d["bmi"].describe(),
    "skew": lambda d: d["bmi"].skew(),
    "kurt": lambda d: d["bmi"].kurt(),
    "nunique": lambda d: d["sex"].nunique(),
    "value_counts": lambda d: d["smoker"].value_counts(),
    "value_counts normalize": lambda d: d["smoker"].value_counts(normalize=True),
    "value_counts sort_index": lambda d: d["smoker"].value_counts().sort_index(),
    "corr": lambda d: d["age"].corr(d["bmi"]),
    "cov": lambda d: d["age"].cov(d["bmi"]),
    "agg list": lambda d: d["bmi"].agg(["mean", "std", "count"]),
    "isna sum": lambda d: d["bmi"].isna().sum(),
    "between": lambda d: d["age"].between(40, 60).sum(),
    "isin": lambda d: d["sex"].isin(["F"]).sum(),
    "where": lambda d: d["bmi"].where(d["age"] > 50).mean(),
    "clip": lambda d: d["bmi"].clip(20, 30).mean(),
    "fillna value": lambda d: d["bmi"].fillna(0).mean(),
    "fillna mean": lambda d: d["bmi"].fillna(d["bmi"].mean()).std(),
    "dropna": lambda d: d["bmi"].dropna().count(),
    "map dict": lambda d: d["smoker"].map({"yes": 1, "no": 0}).mean(),
    "replace": lambda d: d["sex"].replace({"F": "female"}).value_counts(),
    "astype float": lambda d: d["age"].astype(float).mean(),
    "round": lambda d: d["bmi"].round(0).mean(),
    "abs": lambda d: (d["bmi"] - 25).abs().mean(),
    "np.log": lambda d: np.log(d["bmi"]).mean(),
    "np.sqrt": lambda d: np.sqrt(d["age"]).mean(),
    # frames
    "columns": lambda d: list(d.columns),
    "dtypes": lambda d: d.dtypes.astype(str),
    "len": lambda d: len(d),
    "shape": lambda d: d.shape,
    "select columns mean": lambda d: d[["age", "bmi"]].mean(),
    "frame corr": lambda d: d[["age", "bmi"]].corr(),
    "frame cov": lambda d: d[["age", "bmi"]].cov(),
    "frame describe": lambda d: d.describe(),
    "frame count": lambda d: d.count(),
    "frame isna sum": lambda d: d.isna().sum(),
    "frame mean numeric_only": lambda d: d.mean(numeric_only=True),
    "frame agg dict": lambda d: d.agg({"age": "mean", "bmi": ["min", "max"]}),
    "loc mask col": lambda d: d.loc[d["age"] > 50, "bmi"].mean(),
    "query": lambda d: d.query("age > 50 and sex == 'F'")["bmi"].mean(),
    "assign": lambda d: d.assign(bmi10=d["bmi"] / 10)["bmi10"].mean(),
    "dropna subset": lambda d: len(d.dropna(subset=["bmi"])),
    "attribute column": lambda d: d.age.mean(),
    # group-bys
    "groupby mean": lambda d: d.groupby("sex")["bmi"].mean(),
    "groupby size": lambda d: d.groupby("sex").size(),
    "groupby agg list": lambda d: d.groupby("sex")["bmi"].agg(["mean", "std", "count"]),
    "groupby agg dict": lambda d: d.groupby("sex").agg({"bmi": "mean", "age": ["min", "max"]}),
    "groupby two keys": lambda d: d.groupby(["sex", "smoker"])["bmi"].mean(),
    "groupby derived key": lambda d: d.groupby(d["age"] // 10 * 10)["bmi"].mean(),
    "groupby two values": lambda d: d.groupby("smoker")[["bmi", "age"]].mean(),
    "groupby median": lambda d: d.groupby("sex")["age"].median(),
    "groupby describe": lambda d: d.groupby("sex")["bmi"].describe(),
}

#: Row-level calls: FedData must refuse them (rows never leave a server).
REFUSED: dict[str, Callable[[Any], Any]] = {
    "head": lambda d: d.head(),
    "iloc": lambda d: d.iloc[0],
    "sort_values": lambda d: d["age"].sort_values(),  # a table's sort stays on the servers (fedmed.api.tables)
    "to_numpy": lambda d: d.to_numpy(),
    "iteration": lambda d: list(d["age"]),
}


def cohort(n: int = 400, seed: int = 16) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"age": rng.integers(20, 90, n), "sex": rng.choice(["F", "M"], n),
                          "smoker": rng.choice(["yes", "no"], n, p=[0.3, 0.7]), "bmi": rng.normal(27, 4, n).round(1)})
    frame.loc[rng.random(n) < 0.05, "bmi"] = np.nan
    return frame


def federated(frame: pd.DataFrame, shares: tuple[int, ...] = (5, 3, 2)) -> fm.FedData:
    edges = np.cumsum((0, *shares)) * len(frame) // sum(shares)
    sources = []
    for i, (lo, hi) in enumerate(zip(edges, edges[1:])):
        server = fm.Server(config=CONFIG)
        server["cohort"] = frame.iloc[lo:hi].reset_index(drop=True)
        sources.append(fm.Simulation(server, "cohort", name=f"site {i}"))
    return fm.FedData(sources, config=CONFIG)


def same(got: Any, want: Any) -> bool:
    if hasattr(got, "compute") and not isinstance(got, (pd.Series, pd.DataFrame)):
        got = got.compute()
    try:
        if isinstance(want, pd.DataFrame):
            pd.testing.assert_frame_equal(got, want, check_dtype=False, rtol=1e-9)
        elif isinstance(want, pd.Series):
            pd.testing.assert_series_equal(got, want, check_dtype=False, rtol=1e-9)
        elif isinstance(want, (float, np.floating)):
            return bool(np.isclose(float(got), float(want), rtol=1e-9, atol=0) or (np.isnan(got) and np.isnan(want)))
        else:
            return bool(got == want)
    except (AssertionError, TypeError, ValueError):
        return False
    return True


def run() -> dict[str, Any]:
    frame = cohort()
    data = federated(frame)
    outcome: dict[str, str] = {}
    for name, idiom in IDIOMS.items():
        try:
            outcome[name] = "equal" if same(idiom(data), idiom(frame)) else "differs"
        except Exception as exc:  # an idiom that does not run is what this counts
            outcome[name] = f"fails: {type(exc).__name__}"
    for name, idiom in REFUSED.items():
        try:
            idiom(data)
            outcome[name] = "not refused"
        except fm.RowLevelError:
            outcome[name] = "refused"
        except Exception as exc:
            outcome[name] = f"fails: {type(exc).__name__}"
    good = sum(v in ("equal", "refused") for v in outcome.values())
    return {"run": good, "of": len(outcome), "outcomes": outcome}


#: Rounds the issue sets (plan counted by ``explain``, nothing sent): name -> (idiom, rounds).
ROUNDS: dict[str, tuple[Callable[[Any], Any], int]] = {
    "describe() of 10 numeric columns (quartiles in the quantile rounds)": (lambda d: d.describe(), 4),
    "groupby(20 groups).agg of 5 statistics": (lambda d: d.groupby("g")["x0"].agg(["mean", "std", "count", "min", "max"]), 1),
    "fillna(x.mean()) then std()": (lambda d: d["x1"].fillna(d["x1"].mean()).std(), 2),
}


def rounds(servers: int = 3) -> dict[str, dict[str, int]]:
    """Each ``ROUNDS`` idiom's planned rounds and requests on a 10-column frame over ``servers`` servers."""
    rng = np.random.default_rng(7)
    wide = pd.DataFrame({f"x{i}": rng.normal(size=2000) for i in range(10)} | {"g": rng.integers(0, 20, 2000)})
    data = federated(wide, tuple(range(servers, 0, -1)))
    counted = {}
    for name, (idiom, _) in ROUNDS.items():
        head = str(fm.explain(idiom(data))).splitlines()[0]  # "FedPlan · 1 output · 3 servers · 4 rounds · 12 requests"
        numbers = dict((word.rstrip("s"), int(n)) for n, word in (part.split() for part in head.split(" · ")[2:]))
        counted[name] = {"rounds": numbers["round"], "requests": numbers["request"]}
    return counted


def main() -> int:
    result = run()
    result["rounds"] = rounds()
    for name, what in result["outcomes"].items():
        print(f"{name:28} {what}")
    print(f"{result['run']} of {result['of']} idioms run with pandas' results (or are refused as row-level)")
    for name, counted in result["rounds"].items():
        print(f"{name}: {counted['rounds']} round(s), {counted['requests']} requests over 3 servers")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "idioms.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
