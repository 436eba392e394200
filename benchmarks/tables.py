"""Tables (issue 18): per-person features of three tables, joined and fitted per engine, against pandas + statsmodels.

``python benchmarks/tables.py [--quick] [--patients N] [--repeats R] [--data DIR] [--out PATH]``
(or ``python -m benchmarks.tables``). The data is ``example/tables_data.py``'s
cohort over 3 servers (persons disjoint, uneven sizes: shares 1.25, 1.0 and
0.75 of an equal split), written as one Parquet file per server and table:
full size 300,000 patients and about 10 lab rows each, so about 1M lab rows
per server (1.25M, 1.0M, 0.75M) and 0.3M visits per server; ``--quick``
1,500 patients (used by ``tests/test_tables_benchmark_smoke.py`` with the
hidden ``--concurrent``).

The analysis, written once as an analyst would (``features``)::

    hba1c = labs[labs["test"] == "hba1c"].sort_values("date")     # ISO dates sort as text
    last  = hba1c.groupby("patient_id").agg(last_hba1c=("value", "last"))
    tests = labs.groupby("patient_id").agg(n_tests=("value", "size"))
    seen  = visits.groupby("patient_id").agg(n_visits=("cost", "size"), total_cost=("cost", "sum"))
    cohort = patients.merge(last, ...).merge(tests, ...).merge(seen, ...)   # left joins on patient_id
    cohort["male"] = (cohort["sex"] == "M").astype(float); counts and cost fillna(0)
    fm.stats.logit(cohort, y="event", X=["age", "male", "last_hba1c", "n_tests", "n_visits", "total_cost"])

Each section runs in a child process of its own, one after another, so that
its peak RSS (``VmHWM``) is its own; the servers are in-process
(``fm.Simulation``: msgpack requests and answers, no sockets) and new for
every fit (``CacheLimit`` would answer a repeated fit from its cache):

- ``pooled``: the reference: the three servers' files read and stacked,
  the same features with pandas (a stable sort), the merges, and
  statsmodels' ``Logit`` (Newton, ``tol`` 1e-10) on the complete rows;
- ``pandas``, ``duckdb``, ``dask``: the fit under ``example/config-exact.yaml``
  over in-memory frames (read from the files before the fit), Parquet
  fragments (DuckDB scans the files in place in every request) and
  ``fm.fragments.Dask(dd.read_parquet(...))`` (Dask's default threaded
  scheduler, in the same process); DuckDB and Dask are then asked the same
  under ``example/config.yaml`` with ``persons:`` declared: refused by design
  (recorded, not a failure);
- ``pandas-policies``: the pandas fit under ``example/config.yaml`` with
  ``persons:`` declared for the three tables.

Per fit: wall time, requests and bytes per server (the servers' exact
``traffic`` counters, from the servers' creation: everything the analysis
sent), Newton iterations, and the servers' own time (each
``Server.handle`` call timed; "busy" is the time during which at least one
server was working, "client" the rest of the wall time). Per section: the
seconds to make the fragments ready and the process's RSS at idle (imports
done), when ready and at its peak. Checked: requests per server at most
iterations + 1, and the coefficients against the pooled statsmodels fit
(max abs difference at most ``ATOL``); the process exits 1 otherwise, or
when a section fails or is refused (DuckDB and Dask under policies aside).
Writes ``benchmarks/results/tables.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import ``benchmarks`` as a package, from the repo root
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    __package__ = "benchmarks"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.scale import memory  # noqa: E402
from benchmarks.support import median  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EXACT, POLICIES = ROOT / "example" / "config-exact.yaml", ROOT / "example" / "config.yaml"
PERSONS = {"patients*": "patient_id", "labs*": "patient_id", "visits*": "patient_id"}
SIZES = {"full": 300_000, "quick": 1_500}  # patients over all servers
SERVERS, LABS_PER_PATIENT, VISITS_PER_PATIENT, SEED = 3, 10, 3, 18
X = ["age", "male", "last_hba1c", "n_tests", "n_visits", "total_cost"]
SECTIONS = {"pooled": ("pooled", None), "pandas": ("pandas", "exact"), "duckdb": ("duckdb", "exact"),
            "dask": ("dask", "exact"), "pandas-policies": ("pandas", "policies")}
ATOL = 1e-6  # coefficients against statsmodels on the pooled tables
TIMEOUT = 3 * 3600.0  # seconds one section may take
MB = 1024**2


def tables_data() -> Any:
    """``example/tables_data.py`` (the example folder is not a package)."""
    spec = importlib.util.spec_from_file_location("tables_data", ROOT / "example" / "tables_data.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


# -- the data -----------------------------------------------------------------------------------------------
def prepare(folder: Path, patients: int) -> dict[str, Any]:
    """The Parquet files in ``folder`` (``server{i}/{table}.parquet``): reused when a run of the same size made them."""
    marker = folder / "generated.json"
    wanted = {"servers": SERVERS, "patients": patients, "labs_per_patient": LABS_PER_PATIENT,
              "visits_per_patient": VISITS_PER_PATIENT, "seed": SEED}
    data = tables_data()
    if not (marker.exists() and json.loads(marker.read_text()) == wanted):
        marker.unlink(missing_ok=True)
        started = time.perf_counter()
        data.write(folder, SERVERS, patients, LABS_PER_PATIENT, VISITS_PER_PATIENT, SEED)
        marker.write_text(json.dumps(wanted))  # last: a half-written folder is made again
        print(f"data: written in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    rows = {name: [pq_rows(folder / f"server{i}" / f"{name}.parquet") for i in range(SERVERS)]
            for name in data.TABLES}
    size = sum(p.stat().st_size for p in folder.glob("server*/*.parquet"))
    return {**wanted, "rows": rows, "bytes": size}


def pq_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def paths(folder: Path) -> list[dict[str, Path]]:
    return [{name: folder / f"server{i}" / f"{name}.parquet" for name in ("patients", "labs", "visits")}
            for i in range(SERVERS)]


# -- the analysis -------------------------------------------------------------------------------------------
def features(patients: Any, labs: Any, visits: Any) -> Any:
    """The cohort with per-person features, on FedData tables (kept on each server)."""
    hba1c = labs[labs["test"] == "hba1c"].sort_values("date")  # ISO dates: text order is date order
    last = hba1c.groupby("patient_id").agg(last_hba1c=("value", "last"))
    tests = labs.groupby("patient_id").agg(n_tests=("value", "size"))
    seen = visits.groupby("patient_id").agg(n_visits=("cost", "size"), total_cost=("cost", "sum"))
    cohort = (patients.merge(last, on="patient_id", how="left").merge(tests, on="patient_id", how="left")
              .merge(seen, on="patient_id", how="left"))
    cohort["male"] = (cohort["sex"] == "M").astype(float)
    for column in ("n_tests", "n_visits", "total_cost"):
        cohort[column] = cohort[column].fillna(0)
    return cohort


def pooled_features(patients: pd.DataFrame, labs: pd.DataFrame, visits: pd.DataFrame) -> pd.DataFrame:
    """The same with pandas on the pooled tables."""
    hba1c = labs[labs["test"] == "hba1c"].sort_values("date", kind="stable")
    last = hba1c.groupby("patient_id").agg(last_hba1c=("value", "last")).reset_index()
    tests = labs.groupby("patient_id").agg(n_tests=("value", "size")).reset_index()
    seen = visits.groupby("patient_id").agg(n_visits=("cost", "size"), total_cost=("cost", "sum")).reset_index()
    cohort = (patients.merge(last, on="patient_id", how="left").merge(tests, on="patient_id", how="left")
              .merge(seen, on="patient_id", how="left"))
    cohort["male"] = (cohort["sex"] == "M").astype(float)
    return cohort.fillna({"n_tests": 0, "n_visits": 0, "total_cost": 0})


# -- child processes: one section each ----------------------------------------------------------------------
class Clock:
    """Times every ``Server.handle`` call of the servers it wraps."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self._lock = threading.Lock()

    def wrap(self, server: Any) -> None:
        handle = server.handle

        def timed_handle(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return handle(*args, **kwargs)
            finally:
                ended = time.perf_counter()
                with self._lock:
                    self.spans.append((started, ended))

        server.handle = timed_handle  # Simulation's link calls server.handle: the instance's own comes first

    def busy(self) -> float:
        """Seconds during which at least one server was handling a request."""
        total, end = 0.0, -np.inf
        for start, stop in sorted(self.spans):
            if stop > end:
                total += stop - max(start, end)
                end = stop
        return total


def policies_config(memory_bytes: int | None = None) -> dict[str, Any]:
    """``example/config.yaml`` with ``persons:`` for the three tables (and ``limits.memory_bytes``, if given)."""
    import yaml

    config = {**yaml.safe_load(POLICIES.read_text()), "persons": PERSONS}
    if memory_bytes:
        config["limits"] = {**config.get("limits", {}), "memory_bytes": memory_bytes}
    return config


def fit_once(engine: str, config: Any, files: list[dict[str, Path]], frames: list[dict[str, Any]] | None,
             settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """New servers holding the files (or ``frames``) through ``engine``; the features and the logit on them.
    ``settings``: DuckDB's, for each Parquet fragment."""
    import fedmed as fm
    import fedmed.fragments  # noqa: F401

    servers, clock = [], Clock()
    for i, tables in enumerate(files):
        server = fm.Server(config=config)
        for name, path in tables.items():
            if engine == "pandas":
                server[name] = frames[i][name]  # type: ignore[index]
            elif engine == "duckdb":
                server[name] = fm.fragments.Parquet(path, settings=settings)
            else:
                import dask.dataframe as dd

                server[name] = fm.fragments.Dask(dd.read_parquet(path))
        clock.wrap(server)
        servers.append(server)
    data = {name: fm.FedData([fm.Simulation(s, name, name=f"h{i}") for i, s in enumerate(servers)], config=config)
            for name in ("patients", "labs", "visits")}
    out: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        fit = fm.stats.logit(features(data["patients"], data["labs"], data["visits"]), y="event", X=X).compute()
        out.update(params=fit.params.to_dict(), iterations=fit.iterations, converged=fit.converged, nobs=fit.nobs)
    except fm.ServerError as error:  # a privacy rule, or the memory budget (TooExpensive): recorded
        out["refused"] = f"{type(error).__name__}: " + str(error).split(" [")[0]  # without server and operation
    out["wall"] = time.perf_counter() - started
    out["requests_per_server"] = [s.traffic.requests for s in servers]
    out["bytes_in_per_server"] = [s.traffic.bytes_in for s in servers]
    out["bytes_out_per_server"] = [s.traffic.bytes_out for s in servers]
    out["server_busy"] = clock.busy()
    out["server_sum"] = sum(stop - start for start, stop in clock.spans)
    out["client"] = out["wall"] - out["server_busy"]
    return out


def child(section: str, folder: Path, repeats: int, settings: dict[str, Any] | None = None,
          memory_bytes: int | None = None) -> dict[str, Any]:
    engine, config_name = SECTIONS[section]
    import fedmed as fm
    import fedmed.fragments  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import statsmodels.api as sm

    if engine == "dask":
        import dask.dataframe  # noqa: F401

        # dask's own Parquet reader under pandas 3.1, once per partition read: noise here
        warnings.filterwarnings("ignore", message="The inplace keyword in DataFrame.reset_index is deprecated")
    if engine == "duckdb":
        from fedmed.fragments.duckdb import require_duckdb

        require_duckdb()
    fm.options.progress = False
    result: dict[str, Any] = {"idle": memory()}
    files = paths(folder)
    started = time.perf_counter()
    if engine in ("pooled", "pandas"):
        frames = [{name: pd.read_parquet(path) for name, path in tables.items()} for tables in files]
    else:
        frames = None
    result["ready_seconds"] = time.perf_counter() - started
    result["ready"] = memory()
    if engine == "pooled":
        result["fits"] = [pooled_fit(frames, sm) for _ in range(repeats)]  # type: ignore[arg-type]
    else:
        config = str(EXACT) if config_name == "exact" else policies_config(memory_bytes)
        result["fits"] = [fit_once(engine, config, files, frames, settings) for _ in range(repeats)]
        if config_name == "exact" and engine != "pandas":  # refused under policies by design: recorded
            result["policies"] = fit_once(engine, policies_config(memory_bytes), files, frames, settings)
    result["end"] = memory()
    return result


def pooled_fit(frames: list[dict[str, pd.DataFrame]], sm: Any) -> dict[str, Any]:
    """pandas on the stacked tables, then statsmodels' Logit on the complete rows; timed in two parts."""
    started = time.perf_counter()
    pooled = {name: pd.concat([f[name] for f in frames], ignore_index=True) for name in frames[0]}
    cohort = pooled_features(pooled["patients"], pooled["labs"], pooled["visits"])
    complete = cohort.dropna(subset=["event", *X])
    middle = time.perf_counter()
    fit = sm.Logit(complete["event"].astype(float), sm.add_constant(complete[X])).fit(
        disp=0, method="newton", maxiter=50, tol=1e-10)
    ended = time.perf_counter()
    params = fit.params.rename({"const": "Intercept"}).to_dict()
    return {"params": params, "iterations": int(fit.mle_retvals["iterations"]), "nobs": int(fit.nobs),
            "converged": bool(fit.mle_retvals["converged"]), "wall": ended - started,
            "pandas": middle - started, "statsmodels": ended - middle}


# -- the runner ---------------------------------------------------------------------------------------------
def launch(section: str, args: argparse.Namespace, folder: Path, out: Path) -> subprocess.Popen:
    extra = ["--memory-bytes", str(args.memory_bytes)] if args.memory_bytes else []
    extra += ["--duckdb-settings", json.dumps(args.duckdb_settings)] if args.duckdb_settings else []
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", section, "--data",
                             str(folder), "--repeats", str(args.repeats), "--result", str(out), *extra], cwd=ROOT)


def collect(process: subprocess.Popen, out: Path, timeout: float) -> dict[str, Any]:
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()  # this benchmark's own child, by its handle
        process.wait(timeout=60)
        return {"error": f"timed out after {timeout:.0f} s"}
    if code != 0 or not out.exists():
        return {"error": f"the child process ended with exit code {code} (its stderr is above)"}
    return json.loads(out.read_text())


def summarise(sections: dict[str, Any]) -> None:
    """Per section: medians, the checks, the comparison with the pooled reference."""
    reference = sections.get("pooled", {})
    want = reference["fits"][0]["params"] if "fits" in reference else None
    base = median(f["wall"] for f in reference["fits"]) if "fits" in reference else None
    for name, r in sections.items():
        if "error" in r:
            continue
        fits = r["fits"]
        r["peak"] = r["end"]["peak"]
        r["wall"] = median(f["wall"] for f in fits)
        r["time_vs_pooled"] = report.div(r["wall"], base)
        if name == "pooled":
            r["pandas"], r["statsmodels"] = (median(f[key] for f in fits) for key in ("pandas", "statsmodels"))
            continue
        done = [f for f in fits if "params" in f]
        for key in ("server_busy", "server_sum", "client"):
            r[key] = median(f[key] for f in fits)
        r["refused"] = next((f["refused"] for f in fits if "refused" in f), None)
        r["requests_bound_held"] = bool(done) and all(
            max(f["requests_per_server"]) <= f["iterations"] + 1 for f in done)
        if want is not None and done:
            r["max_abs_diff"] = max(abs(f["params"][k] - want[k]) for f in done for k in want)
            r["params_agree"] = r["max_abs_diff"] <= ATOL


def failures(sections: dict[str, Any]) -> list[str]:
    bad = []
    for name, r in sections.items():
        if "error" in r:
            bad.append(f"{name}: {r['error']}")
        elif name != "pooled" and not (r.get("requests_bound_held") and r.get("params_agree")):
            bad.append(f"{name}: " + (r["refused"] or "requests above iterations + 1 or coefficients differ"))
    return bad


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value / MB:,.0f}"


CONFIGS = {None: "-", "exact": "config-exact.yaml", "policies": "config.yaml + persons"}


def table(sections: dict[str, Any]) -> str:
    lines = ["| section | config | requests per server | iterations | requests <= iterations + 1 | fit wall (s) "
             "| servers busy (s) | client (s) | ready (s) | peak RSS (MB) | above idle (MB) "
             "| max abs diff vs statsmodels | time / pooled |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in sections.items():
        engine, config = SECTIONS[name]
        head = f"| {'pooled pandas + statsmodels' if name == 'pooled' else engine} | {CONFIGS[config]} "
        if "error" in r:
            lines.append(head + f"| failed: {r['error']} |" + " |" * 10)
            continue
        above = r["peak"] - r["idle"]["peak"]
        tail = f"| {_s(r['ready_seconds'])} | {_mb(r['peak'])} | {_mb(above)} "
        fit = r["fits"][0]
        if name == "pooled":
            lines.append(head + f"| - | {fit['iterations']} | - | {_s(r['wall'])} (pandas {_s(r['pandas'])}, "
                         f"statsmodels {_s(r['statsmodels'])}) | - | - " + tail + "| 0 | 1.00x |")
        elif r.get("refused"):
            lines.append(head + f"| {', '.join(map(str, fit['requests_per_server']))} | refused: {r['refused']} | - "
                         f"| {_s(r['wall'])} | {_s(r['server_busy'])} | {_s(r['client'])} " + tail + "| - | - |")
        else:
            held = "yes" if r["requests_bound_held"] else "NO"
            lines.append(head + f"| {', '.join(map(str, fit['requests_per_server']))} | {fit['iterations']} | {held} "
                         f"| {_s(r['wall'])} | {_s(r['server_busy'])} | {_s(r['client'])} " + tail
                         + f"| {r.get('max_abs_diff', float('nan')):.1e} | {report.ratio(r['time_vs_pooled'])} |")
    return "\n".join(lines)


def refusals(sections: dict[str, Any]) -> list[str]:
    """What DuckDB and Dask answered under policies."""
    out = []
    for name, r in sections.items():
        policy = r.get("policies")
        if policy is not None:
            answer = f"refused: {policy['refused']}" if "refused" in policy else "NOT refused (fitted)"
            out.append(f"- {name} under config.yaml + persons: {answer} "
                       f"(requests per server {policy['requests_per_server']})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{SIZES['quick']:,} patients")
    parser.add_argument("--patients", type=int, help=f"patients over the 3 servers (default {SIZES['full']:,})")
    parser.add_argument("--repeats", type=int, default=1, help="fits per section (the median is reported)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds one section may take")
    parser.add_argument("--data", type=Path, help="keep the Parquet files in this folder and reuse them "
                                                  "(default: a temporary folder, deleted afterwards)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="a folder (tables.json is written there) or a .json")
    parser.add_argument("--memory-bytes", type=int, help="limits.memory_bytes of the servers under config.yaml "
                        "(default: the config's own, none: a quarter of the machine's memory)")
    parser.add_argument("--duckdb-settings", type=json.loads, help='settings of every Parquet fragment, as JSON, '
                        'e.g. \'{"disabled_optimizers": "partial_aggregate_pushdown"}\'')
    parser.add_argument("--concurrent", action="store_true", help=argparse.SUPPRESS)  # the smoke test: all at once
    parser.add_argument("--child", choices=SECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.result.write_text(json.dumps(child(args.child, args.data, args.repeats, args.duckdb_settings,
                                                args.memory_bytes)))
        return 0

    mode = "quick" if args.quick else "full"
    patients = args.patients or SIZES[mode]
    started = time.perf_counter()
    folder = args.data.resolve() if args.data else Path(tempfile.mkdtemp(prefix="fedmed-tables-"))
    sections: dict[str, Any] = {}
    try:
        data = prepare(folder, patients)
        labs = data["rows"]["labs"]
        print(f"data: {patients:,} patients; lab rows per server {labs}; {data['bytes'] / MB:,.0f} MB of Parquet",
              file=sys.stderr, flush=True)
        results = folder / "results"
        results.mkdir(exist_ok=True)
        running = {}
        for name in args.sections:  # one child at a time (all at once with --concurrent)
            out = results / f"{name}.json"
            out.unlink(missing_ok=True)
            running[name] = (launch(name, args, folder, out), out)
            if not args.concurrent:
                sections[name] = collect(*running[name], args.timeout)
                print(f"  {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        for name, (process, out) in running.items():
            if name not in sections:
                sections[name] = collect(process, out, args.timeout)
    finally:
        if args.data is None:
            shutil.rmtree(folder, ignore_errors=True)
    summarise(sections)
    document = {
        "benchmark": "tables",
        "mode": mode,
        "machine": report.machine(),
        "settings": {
            "servers": SERVERS, "patients": patients, "labs_per_patient": LABS_PER_PATIENT,
            "visits_per_patient": VISITS_PER_PATIENT, "seed": SEED, "repeats": args.repeats, "X": X, "atol": ATOL,
            "concurrent": args.concurrent, "persons": PERSONS, "memory_bytes": args.memory_bytes,
            "duckdb_settings": args.duckdb_settings,
            "servers_kind": "fm.Simulation: in-process servers, msgpack, no sockets; new servers per fit",
            "rss": "VmHWM of each section's child process (client, servers and engine together)",
        },
        "data": {k: v for k, v in data.items()},
        "sections": sections,
        "failures": failures(sections),
        "seconds": time.perf_counter() - started,
    }
    path = report.write_json(document, args.out, "tables.json")
    m = document["machine"]
    print(f"Machine: {m['cpu']}, {m['cores_usable']} of {m['cores']} cores, {m['ram_gb']} GB RAM; "
          f"{patients:,} patients over {SERVERS} servers, lab rows per server {labs}; "
          f"fits per section: {args.repeats}" + (" (sections ran concurrently)" if args.concurrent else "") + ".\n")
    print(table(sections))
    print()
    for line in refusals(sections):
        print(line)
    for line in document["failures"]:
        print(f"- FAILED {line}")
    print(f"\nwrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({document['seconds']:.0f} s)")
    return 1 if document["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
