"""Group-by benchmark: a server's time for ``groupby(g)[x].agg([5 stats])`` against pandas' own, side by side.

One fragment of ``--rows`` rows (20 groups, a float column with 5% missing values)
is held by an in-process ``fm.Server`` (``fm.Simulation``: the request's msgpack
encoding and the server's evaluation, no sockets). Each repeat times, one after
the other on the same frame:

- **pandas**: ``df.groupby("g")["x"].agg(["mean", "std", "count", "min", "max"])``;
- **FedMed, exact**: the same idiom on a ``FedData`` over the fragment under
  ``example/config-exact.yaml`` (the server's ``grouped`` map, the client's merge);
- **FedMed, privacy** (with ``--privacy``): under ``example/config.yaml``, where
  every group is judged as a cell (rows, persons, dominance, extremes).

It reports the medians and the ratio FedMed / pandas, and checks that the values
are equal. Run ``python benchmarks/groupby.py`` (1M rows, 5 repeats) or
``--rows 100000 --repeats 3`` for a quick look. No test asserts a time.
"""

from __future__ import annotations

import argparse
import sys
import statistics
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import ``benchmarks`` as a package, from the repo root
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    __package__ = "benchmarks"

import numpy as np
import pandas as pd

import fedmed as fm

from .support import timed


ROOT = Path(__file__).resolve().parents[1]
STATS = ["mean", "std", "count", "min", "max"]


def frame(rows: int, groups: int = 20, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(50, 10, rows)
    x[rng.random(rows) < 0.05] = np.nan
    return pd.DataFrame({"g": rng.integers(0, groups, rows), "x": x})


def fedmed_result(df: pd.DataFrame, config: str) -> fm.LazyResult:
    server = fm.Server(config=str(ROOT / config))
    server["d"] = df
    data = fm.FedData([fm.Simulation(server, "d")], config=str(ROOT / config))
    return data.groupby("g")["x"].agg(STATS)




def run(rows: int, repeats: int, privacy: bool) -> dict[str, float]:
    df = frame(rows)
    configs = {"FedMed, exact": "example/config-exact.yaml"}
    if privacy:
        configs["FedMed, privacy"] = "example/config.yaml"
    times: dict[str, list[float]] = {"pandas": [], **{name: [] for name in configs}}
    for _ in range(repeats):  # side by side within each repeat: the machine's load hits all alike
        seconds, want = timed(lambda: df.groupby("g")["x"].agg(STATS))
        times["pandas"].append(seconds)
        for name, config in configs.items():
            result = fedmed_result(df, config)  # a fresh server: no cached answer
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                seconds, got = timed(result.compute)
            times[name].append(seconds)
            pd.testing.assert_frame_equal(got.dropna(), want.loc[got.dropna().index], check_index_type=False,
                                          check_dtype=False, check_column_type=False, rtol=1e-9)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--privacy", action="store_true", help="also time it under example/config.yaml")
    args = parser.parse_args()
    medians = run(args.rows, args.repeats, args.privacy)
    base = medians["pandas"]
    print(f"groupby(g)[x].agg({STATS}) over {args.rows:,} rows, 20 groups; median of {args.repeats}")
    print("| | seconds | / pandas |\n|---|---|---|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.4f} | {seconds / base:.2f}x |")


if __name__ == "__main__":
    main()
