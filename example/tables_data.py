"""A seeded longitudinal cohort in three tables, split over several servers (issue 18's examples and benchmark).

Every server holds its own patients (a person's rows are never spread over
servers), and the servers differ in size (the first holds most):

- ``patients``: ``patient_id``, ``age``, ``sex`` ("F"/"M"), ``baseline``
  (an ISO date as text) and ``event`` (0/1; more likely with age, HbA1c
  and male sex, so a logit on them has signal);
- ``labs``: ``patient_id``, ``date`` (ISO text, after the baseline),
  ``test`` (``hba1c``, ``ldl``, ``creatinine``, ``glucose``) and ``value``
  (3% missing); 0 to ``2 * labs_per_patient`` rows per patient, so some
  have none; rows in no particular order;
- ``visits``: ``patient_id``, ``date``, ``cost``; 0 to ``2 * visits_per_patient``
  rows per patient.

Example (from the repository's root)::

    import sys; sys.path.insert(0, "example")
    import fedmed as fm
    import tables_data

    sites = [fm.Local.site(tables) for tables in tables_data.make(servers=2, patients=2000)]
    patients, labs = (fm.FedData([site[name] for site in sites]) for name in ("patients", "labs"))
    hba1c = labs[labs["test"] == "hba1c"].sort_values("date")
    feats = hba1c.groupby("patient_id").agg(last_hba1c=("value", "last"))
    cohort = patients.merge(feats, on="patient_id")
    print(fm.stats.logit(cohort, y="event", X=["age", "last_hba1c"]).compute().params)

``python example/tables_data.py DIR [--servers 3] [--patients N] [--labs M]``
writes ``DIR/server{i}/{patients,labs,visits}.parquet`` (for
``fm.fragments.Parquet``: DuckDB reads them in place).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

TABLES = ("patients", "labs", "visits")
TESTS = ("hba1c", "ldl", "creatinine", "glucose")
START = np.datetime64("2015-01-01")


def _iso(days: np.ndarray) -> np.ndarray:
    return np.datetime_as_string(START + days.astype("timedelta64[D]"), unit="D")


def _rows_per_patient(rng: np.random.Generator, ids: np.ndarray, mean: float) -> np.ndarray:
    """0 to 2*mean rows per patient (uniform): each id repeated that often."""
    return np.repeat(ids, rng.integers(0, int(round(2 * mean)) + 1, len(ids)))


def site(rng: np.random.Generator, first_id: int, n: int, labs_per_patient: float,
         visits_per_patient: float) -> dict[str, pd.DataFrame]:
    """One server's three tables, patients ``first_id`` to ``first_id + n - 1``."""
    ids = np.arange(first_id, first_id + n)
    age = rng.integers(30, 86, n).astype(float)
    male = rng.random(n) < 0.5
    true_hba1c = rng.normal(6.5, 1.0, n)  # each patient's level, measured with noise in labs
    baseline = rng.integers(0, 5 * 365, n)
    logit = -1.0 + 0.04 * (age - 57.5) + 0.7 * (true_hba1c - 6.5) + 0.3 * male
    event = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    patients = pd.DataFrame({"patient_id": ids, "age": age, "sex": np.where(male, "M", "F"),
                             "baseline": _iso(baseline), "event": event})

    pid = rng.permutation(_rows_per_patient(rng, ids, labs_per_patient))  # labs in no particular order
    at = pid - first_id
    test = rng.choice(np.array(TESTS), len(pid), p=[0.4, 0.2, 0.2, 0.2])
    value = np.select([test == "hba1c", test == "ldl", test == "creatinine"],
                      [true_hba1c[at] + rng.normal(0, 0.4, len(pid)), rng.normal(3.0, 0.8, len(pid)),
                       rng.normal(80.0, 20.0, len(pid))], rng.normal(6.0, 1.5, len(pid))).round(2)
    value[rng.random(len(pid)) < 0.03] = np.nan
    labs = pd.DataFrame({"patient_id": pid, "date": _iso(baseline[at] + rng.integers(0, 5 * 365, len(pid))),
                         "test": test, "value": value})

    vid = rng.permutation(_rows_per_patient(rng, ids, visits_per_patient))
    dates = _iso(baseline[vid - first_id] + rng.integers(0, 5 * 365, len(vid)))
    visits = pd.DataFrame({"patient_id": vid, "date": dates, "cost": rng.gamma(2.0, 80.0, len(vid)).round(2)})
    return {"patients": patients, "labs": labs, "visits": visits}


def make(servers: int = 3, patients: int = 3000, labs_per_patient: float = 10, visits_per_patient: float = 3,
         seed: int = 0) -> list[dict[str, pd.DataFrame]]:
    """``servers`` dicts of ``{"patients", "labs", "visits"}`` frames; ``patients`` in all, split unevenly
    (shares from 1.25 down to 0.75 of an equal split), ids disjoint across servers."""
    rng = np.random.default_rng(seed)
    weights = np.linspace(1.25, 0.75, servers) if servers > 1 else np.ones(1)
    sizes = np.floor(patients * weights / weights.sum()).astype(int)
    sizes[0] += patients - sizes.sum()
    starts = np.concatenate([[1], 1 + np.cumsum(sizes)[:-1]])
    return [site(rng, int(s), int(n), labs_per_patient, visits_per_patient) for s, n in zip(starts, sizes)]


def pool(sites: list[dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Each table over all servers, server after server (as one pooled data set would hold them)."""
    return {name: pd.concat([s[name] for s in sites], ignore_index=True) for name in TABLES}


def write(directory: str | Path, servers: int = 3, patients: int = 3000, labs_per_patient: float = 10,
          visits_per_patient: float = 3, seed: int = 0,
          sites: list[dict[str, pd.DataFrame]] | None = None) -> list[dict[str, Path]]:
    """Write ``make(...)`` (or ``sites``) as ``directory/server{i}/{table}.parquet``; the paths, per server."""
    sites = sites if sites is not None else make(servers, patients, labs_per_patient, visits_per_patient, seed)
    paths = []
    for i, tables in enumerate(sites):
        folder = Path(directory) / f"server{i}"
        folder.mkdir(parents=True, exist_ok=True)
        paths.append({name: folder / f"{name}.parquet" for name in TABLES})
        for name in TABLES:
            tables[name].to_parquet(paths[-1][name], index=False)
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--patients", type=int, default=3000, help="patients over all servers")
    parser.add_argument("--labs", type=float, default=10, help="mean lab rows per patient")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for i, tables in enumerate(write(args.directory, args.servers, args.patients, args.labs, seed=args.seed)):
        print(f"server{i}: " + ", ".join(f"{p}" for p in tables.values()))
