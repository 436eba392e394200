"""Scale: one analysis over a 20M-row Parquet fragment through pandas, DuckDB and Dask, in time and peak memory.

``python benchmarks/scale.py [--quick] [--rows N] [--out PATH]`` (or
``python -m benchmarks.scale``). Full size (20,000,000 rows) takes about a
minute on the 2-core test machine and about 3 GB of RAM for the pandas path;
``--quick`` (2,000,000 rows) about half a minute; the hidden
``--smoke`` (20,000 rows), run by ``tests/scale/test_scale_benchmark_smoke.py``,
a few seconds plus Dask's start.

The data: three float64 columns ``x``, ``y`` and ``g`` (``g`` a 0/1 group,
``x`` one unit higher where ``g == 1``, ``y = 1 + 0.5 x + 2 g`` plus noise),
generated with numpy a million rows at a time and written as 8 Parquet files
(pyarrow, snappy) into a temporary folder, deleted afterwards; ``--data DIR``
keeps them there and reuses them on the next run with the same size. The
files are read warm: just written (or just read), they sit in the OS page
cache for every engine alike.

The analysis is one ``fm.compute`` call from this process over loopback:
``fm.stats.describe(x)``, Welch's t-test of ``x`` between the groups and OLS
of ``y`` on ``x`` and ``g``. Three engines serve the same files, each as the
one fragment of a default ``fm.Server()`` (no privacy policies) on a
waitress server in a child process of its own, one child at a time:

- ``pandas``: ``pd.read_parquet(folder)`` into the server's memory first;
- ``duckdb``: ``fm.fragments.Parquet("folder/*.parquet")``, each request one
  SQL query over the files, with DuckDB settings ``DUCKDB_SETTINGS``
  (2 threads, ``memory_limit`` 512MB);
- ``dask``: ``fm.fragments.Dask(dd.read_parquet(folder))`` on a
  ``distributed.LocalCluster`` of 2 worker processes (1 thread each) started
  by the child; the partitions are read in the workers, so their peak RSS is
  reported too.

Per engine: the seconds to make the fragment ready (the read, or the
fragment's construction; Dask's cluster start is reported apart), the wall
time of the first call and the median of the next ``--repeats`` calls, and
the peak RSS (``VmHWM``) of the server process: idle (fedmed, the engine's
libraries and the waitress server loaded, before the data), after making
the fragment ready, and after all calls. Every call's results are checked
against the pandas engine's (describe's values, t, p, df, the OLS
coefficients, standard errors, t values and p-values) to a relative 1e-9;
a difference is reported, not raised. (From 2M rows on, the effects are
so clear that every p-value is 0.0 in float64, on every engine: there the
t values carry the comparison.) The issue's targets (DuckDB's peak
server RSS under a quarter of pandas', its time no worse) are reported as
yes or no. Writes ``benchmarks/results/scale.json`` (``--out`` takes a
folder or a ``.json`` path).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TextIO

if __package__ in (None, ""):  # run as a script: import ``benchmarks`` as a package, from the repo root
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    __package__ = "benchmarks"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import fedmed as fm  # noqa: E402

from benchmarks import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SIZES = {"full": 20_000_000, "quick": 2_000_000, "smoke": 20_000}
FILES = 8
CHUNK = 1_000_000  # rows generated and written at a time: one Parquet row group
SEED = 2024
ENGINES = ("pandas", "duckdb", "dask")
DUCKDB_SETTINGS = {"threads": 2, "memory_limit": "512MB"}
DASK_WORKERS = 2
RTOL = 1e-9
STARTUP_TIMEOUT = 600.0  # seconds a child may take to start and make its fragment ready
CALL_TIMEOUT = 600.0  # fm.Remote's timeout for one request
MB = 1024**2


# -- the data -------------------------------------------------------------------
def generate(folder: Path, rows: int, files: int = FILES) -> None:
    """``files`` Parquet files of ``x y g`` holding ``rows`` rows in all, never more than ``CHUNK`` rows in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("x", pa.float64()), ("y", pa.float64()), ("g", pa.float64())])
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        rng = np.random.default_rng([SEED, i])
        left = rows // files + (i < rows % files)
        with pq.ParquetWriter(folder / f"part-{i:02d}.parquet", schema) as writer:
            while left:
                n = min(CHUNK, left)
                g = (rng.random(n) < 0.4).astype(np.float64)
                x = rng.normal(50.0, 10.0, n) + 1.0 * g
                y = 1.0 + 0.5 * x + 2.0 * g + rng.normal(0.0, 5.0, n)
                writer.write_table(pa.table({"x": x, "y": y, "g": g}, schema=schema))
                left -= n


def prepare(folder: Path, rows: int) -> dict[str, Any]:
    """The files in ``folder/parquet``: reused when a finished run of the same size left them, else generated.

    The marker lies beside that folder, not in it: the engines read every file there.
    """
    marker, files = folder / "generated.json", folder / "parquet"
    wanted = {"rows": rows, "files": FILES, "chunk": CHUNK, "seed": SEED}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return {"folder": files, "generated": False, "seconds": 0.0, "bytes": _size(files)}
    marker.unlink(missing_ok=True)
    shutil.rmtree(files, ignore_errors=True)
    started = time.perf_counter()
    generate(files, rows)
    seconds = time.perf_counter() - started
    marker.write_text(json.dumps(wanted))  # written last: a half-written folder is regenerated
    return {"folder": files, "generated": True, "seconds": seconds, "bytes": _size(files)}


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.parquet"))


# -- memory ---------------------------------------------------------------------
def memory() -> dict[str, int]:
    """This process's peak and current resident memory in bytes (``VmHWM``, ``VmRSS``)."""
    found: dict[str, int] = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    found["peak" if key == "VmHWM" else "current"] = int(value.split()[0]) * 1024
    except OSError:  # not Linux: the peak only, which getrusage gives in KiB (bytes on macOS)
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        found = {"peak": peak if sys.platform == "darwin" else peak * 1024}
    return found


# -- the server: a child process --------------------------------------------------
def serve(engine: str, folder: Path) -> None:
    """Child process: serve the files as fragment ``data`` through ``engine``; report on stdout, one JSON line each.

    First line: the URL, the idle memory, the seconds to make the fragment
    ready and the memory after it. Then ``rss`` on stdin answers with the
    memory now (and the Dask workers'); end of stdin stops everything.
    """
    # stdout is the protocol: anything a library prints (C code included) goes to stderr
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr

    from fedmed.serving import BackgroundServer

    def send(message: dict[str, Any]) -> None:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    hello: dict[str, Any] = {"pid": os.getpid()}
    client = cluster = None
    if engine == "pandas":
        import pyarrow.parquet  # noqa: F401  # loaded before the idle measurement, as each engine's library

        make = lambda: pd.read_parquet(folder)  # noqa: E731
    elif engine == "duckdb":
        from fedmed.fragments.duckdb import require_duckdb

        require_duckdb()
        make = lambda: fm.fragments.Parquet(str(folder / "*.parquet"), settings=DUCKDB_SETTINGS)  # noqa: E731
    elif engine == "dask":
        import dask.dataframe as dd
        import distributed

        started = time.perf_counter()
        # processes: the workers are processes of their own, holding the partitions they read
        cluster = distributed.LocalCluster(n_workers=DASK_WORKERS, threads_per_worker=1, processes=True,
                                           host="127.0.0.1", dashboard_address=None)
        client = distributed.Client(cluster)  # the default scheduler from now on: the fragment's dask.compute
        hello["cluster_seconds"] = time.perf_counter() - started
        make = lambda: fm.fragments.Dask(dd.read_parquet(folder))  # noqa: E731
    else:
        raise ValueError(f"unknown engine {engine!r}")

    def workers() -> dict[str, Any]:
        return {"workers": list(client.run(memory).values())} if client is not None else {}

    running = None
    try:
        server = fm.Server()
        running = BackgroundServer(server.app, host="127.0.0.1", threads=2)
        hello.update(url=running.url, idle=memory(), **{f"idle_{k}": v for k, v in workers().items()})
        started = time.perf_counter()
        server["data"] = make()
        hello.update(ready_seconds=time.perf_counter() - started, fragment_rows=server["data"].rows)
        hello.update(loaded=memory(), **{f"loaded_{k}": v for k, v in workers().items()})
        send(hello)
        for line in sys.stdin:
            if line.strip() == "rss":
                send({"memory": memory(), **workers()})
    finally:
        if running is not None:
            running.stop()
        if client is not None:
            client.close()
            cluster.close()  # type: ignore[union-attr]


class Child:
    """One server child process (``--serve ENGINE``), spoken to line by line, every wait bounded."""

    def __init__(self, engine: str, folder: Path, timeout: float = STARTUP_TIMEOUT) -> None:
        env = dict(os.environ, DASK_LOGGING__DISTRIBUTED="warning")  # the cluster's INFO lines are noise here
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", engine, str(folder)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()
        try:
            self.hello = self.receive(timeout)
        except BaseException:
            self.close()
            raise

    def _read(self, stream: TextIO) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def receive(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"the server process sent nothing for {timeout:.0f} s") from None
        if line is None:
            raise RuntimeError(f"the server process ended (exit code {self.process.wait(timeout=30)}); "
                               "its stderr is above")
        return json.loads(line)

    def ask(self, command: str, timeout: float = 120.0) -> dict[str, Any]:
        self.process.stdin.write(command + "\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        return self.receive(timeout)

    def close(self) -> None:
        try:
            self.process.stdin.close()  # type: ignore[union-attr]
            self.process.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()  # this process's own child, by its handle
            self.process.wait(timeout=30)


# -- the client -----------------------------------------------------------------
def analysis(d: fm.FedData) -> tuple[Any, ...]:
    """describe, Welch's t-test between the groups and OLS with 2 predictors: one ``fm.compute`` call."""
    x, g = d["x"], d["g"]
    return fm.compute(
        fm.stats.describe(x),
        fm.stats.ttest_ind(x[g == 1], x[g == 0], equal_var=False),
        fm.stats.ols(d, "y", ["x", "g"]),
    )


def flatten(results: tuple[Any, ...]) -> dict[str, float]:
    """Every number of the analysis, by name, to compare engines."""
    describe, ttest, ols = results
    values = {f"describe.{k}": float(v) for k, v in describe.items()}
    values.update({f"ttest.{k}": float(getattr(ttest, k)) for k in ("statistic", "pvalue", "df", "n")})
    for part in ("params", "bse", "statistic", "pvalues"):
        values.update({f"ols.{part}[{label}]": float(v) for label, v in getattr(ols, part).items()})
    values.update({"ols.nobs": float(ols.nobs), "ols.df_resid": float(ols.df_resid),
                   "ols.rsquared": float(ols.rsquared)})
    return values


def difference(got: dict[str, float], expected: dict[str, float]) -> tuple[float, str | None]:
    """The largest relative difference and its name (a missing name or unmatched nan counts as infinite)."""
    worst, name = 0.0, None
    for key in expected.keys() | got.keys():
        a, b = got.get(key, math.nan), expected.get(key, math.nan)
        if a == b or (math.isnan(a) and math.isnan(b) and key in got and key in expected):
            continue
        rel = abs(a - b) / max(abs(a), abs(b)) if not (math.isnan(a) or math.isnan(b)) else math.inf
        if rel > worst:
            worst, name = rel, key
    return worst, name


def measure(engine: str, folder: Path, repeats: int) -> dict[str, Any]:
    """Start ``engine``'s server, run the analysis ``1 + repeats`` times, read its memory, stop it."""
    started = time.perf_counter()
    child = Child(engine, folder)
    try:
        hello = child.hello
        data = fm.FedData([fm.Remote(ip=hello["url"], fragment="data", timeout=CALL_TIMEOUT)])
        calls, values = [], []
        for _ in range(1 + repeats):
            began = time.perf_counter()
            results = analysis(data)
            calls.append(time.perf_counter() - began)
            values.append(flatten(results))
        final = child.ask("rss")
    finally:
        child.close()
    result: dict[str, Any] = {
        "ready_seconds": hello["ready_seconds"],
        "fragment_rows": hello["fragment_rows"],  # as the fragment reports them (Dask: not counted, None)
        "first_call": calls[0],
        "next_calls": statistics.median(calls[1:]) if repeats else None,
        "calls": calls,
        "server_rss": {"idle": hello["idle"], "ready": hello["loaded"], "end": final["memory"]},
        "peak_server_rss": final["memory"]["peak"],
        "values": values[0],
        "all_values": values,
        "seconds": time.perf_counter() - started,
    }
    if "workers" in final:
        result["cluster_seconds"] = hello["cluster_seconds"]
        result["worker_rss"] = {"idle": hello["idle_workers"], "ready": hello["loaded_workers"],
                                "end": final["workers"]}
        result["peak_worker_rss"] = [w["peak"] for w in final["workers"]]
    return result


# -- the report -------------------------------------------------------------------
def compare(engines: dict[str, Any]) -> None:
    """Add each engine's ratios to pandas and whether its every call's results equal pandas' first."""
    base = engines.get("pandas")
    for name, r in engines.items():
        if "error" in r or base is None or "error" in base:
            continue
        worst, key = max((difference(v, base["values"]) for v in r["all_values"]), key=lambda t: t[0])
        r["same_as_pandas"] = worst <= RTOL
        r["max_rel_diff"] = worst
        r["max_rel_diff_at"] = key
        r["rss_vs_pandas"] = r["peak_server_rss"] / base["peak_server_rss"]
        idle, base_idle = r["server_rss"]["idle"]["peak"], base["server_rss"]["idle"]["peak"]
        r["rss_above_idle_vs_pandas"] = report.div(r["peak_server_rss"] - idle, base["peak_server_rss"] - base_idle)
        r["time_vs_pandas"] = report.div(r["next_calls"], base["next_calls"])
        r["first_call_vs_pandas"] = r["first_call"] / base["first_call"]
        r["ready_and_first_call_vs_pandas"] = (r["ready_seconds"] + r["first_call"]) / (
            base["ready_seconds"] + base["first_call"])


def targets(engines: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets for DuckDB, as yes/no (never asserted)."""
    duck = engines.get("duckdb", {})
    if "rss_vs_pandas" not in duck:
        return {}
    return {
        "duckdb_peak_rss_under_quarter_of_pandas": duck["rss_vs_pandas"] < 0.25,
        "duckdb_call_time_no_worse": duck["time_vs_pandas"] is not None and duck["time_vs_pandas"] <= 1.0,
        "duckdb_ready_and_first_call_no_worse": duck["ready_and_first_call_vs_pandas"] <= 1.0,
    }


TARGETS = {
    "duckdb_peak_rss_under_quarter_of_pandas": "DuckDB's peak server RSS under a quarter of pandas'",
    "duckdb_call_time_no_worse": "DuckDB's call time (median of the next calls) no worse than pandas'",
    "duckdb_ready_and_first_call_no_worse": "DuckDB's ready + first call no worse than pandas' (pandas' load counted)",
}


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value / MB:,.0f}"


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def table(engines: dict[str, Any]) -> str:
    lines = [
        "| engine | ready (s) | first call (s) | next calls, median (s) | idle server RSS (MB) "
        "| peak server RSS (MB) | Dask workers' peak RSS (MB) | RSS / pandas | time / pandas | same as pandas |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in engines.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} |" + " |" * 8)
            continue
        workers = " + ".join(_mb(p) for p in r["peak_worker_rss"]) if "peak_worker_rss" in r else ""
        same = ("yes" if r["same_as_pandas"] else "NO") + f" (max rel diff {r['max_rel_diff']:.1e})" \
            if "same_as_pandas" in r else "n/a"
        lines.append(
            f"| {name} | {_s(r['ready_seconds'])} | {_s(r['first_call'])} | {_s(r['next_calls'])} "
            f"| {_mb(r['server_rss']['idle']['peak'])} | {_mb(r['peak_server_rss'])} | {workers} "
            f"| {report.ratio(r.get('rss_vs_pandas'))} | {report.ratio(r.get('time_vs_pandas'))} | {same} |"
        )
    return "\n".join(lines)


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in ("duckdb", "dask", "distributed", "pyarrow"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{SIZES['quick']:,} rows")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # the test's tiny size
    parser.add_argument("--rows", type=int, help=f"rows in all (default {SIZES['full']:,}; quick {SIZES['quick']:,})")
    parser.add_argument("--repeats", type=int, default=3, help="calls after the first, timed for the median")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--data", type=Path, help="keep the Parquet files in this folder and reuse them (default: "
                                                  "a temporary folder, deleted afterwards)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="a folder (scale.json is written there) or a .json file")
    parser.add_argument("--serve", nargs=2, metavar=("ENGINE", "FOLDER"), help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve[0], Path(args.serve[1]))
        return 0

    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    rows = args.rows or SIZES[mode]
    fm.options.progress = False
    started = time.perf_counter()
    folder = args.data.resolve() if args.data else Path(tempfile.mkdtemp(prefix="fedmed-scale-"))
    engines: dict[str, Any] = {}
    try:
        data = prepare(folder, rows)
        print(f"data: {rows:,} rows in {FILES} Parquet files, {data['bytes'] / MB:,.0f} MB"
              + (f", generated in {data['seconds']:.1f} s" if data["generated"] else f", reused from {folder}"),
              file=sys.stderr, flush=True)
        for engine in args.engines:  # one child at a time: the machine's cores go to one engine
            try:
                engines[engine] = measure(engine, data["folder"], args.repeats)
            except Exception as exc:  # the others still run; the failure is in the table and the JSON
                engines[engine] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"  {engine}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    finally:
        if args.data is None:
            shutil.rmtree(folder, ignore_errors=True)
    compare(engines)
    document = {
        "benchmark": "scale",
        "mode": mode,
        "machine": {**report.machine(), "engine_versions": _versions()},
        "settings": {
            "rows": rows, "files": FILES, "seed": SEED, "repeats": args.repeats, "rtol": RTOL,
            "columns": "x, y, g: float64; g 0/1 (P(g=1)=0.4), x ~ N(50 + g, 10), y = 1 + 0.5 x + 2 g + N(0, 5)",
            "analysis": "fm.compute(describe(x), ttest_ind(x[g == 1], x[g == 0], equal_var=False), "
                        "ols(d, 'y', ['x', 'g'])): one call, one server over loopback",
            "server": "default fm.Server() (no privacy policies), waitress in a child process, one engine at a time",
            "duckdb_settings": DUCKDB_SETTINGS,
            "dask": {"n_workers": DASK_WORKERS, "threads_per_worker": 1, "processes": True},
            "rss": "VmHWM (peak resident set) of the server process; Dask's workers apart",
        },
        "data": {**data, "folder": str(data["folder"]) if args.data else "(temporary, deleted)"},
        "engines": engines,
        "targets": targets(engines),
        "seconds": time.perf_counter() - started,
    }
    path = report.write_json(document, args.out, "scale.json")

    m = document["machine"]
    print(f"Machine: {m['cpu']}, {m['cores_usable']} of {m['cores']} cores, {m['ram_gb']} GB RAM; "
          f"{rows:,} rows x 3 float64 columns in {FILES} Parquet files ({data['bytes'] / MB:,.0f} MB); "
          f"DuckDB {DUCKDB_SETTINGS}; Dask: LocalCluster of {DASK_WORKERS} worker processes x 1 thread; "
          f"next calls: median of {args.repeats}.\n")
    print(table(engines))
    print()
    for name in ("duckdb", "dask"):
        r = engines.get(name, {})
        if "rss_vs_pandas" in r:
            print(f"- {name}: peak server RSS above idle {report.ratio(r['rss_above_idle_vs_pandas'])} of pandas'; "
                  f"ready + first call {report.ratio(r['ready_and_first_call_vs_pandas'])} of pandas'")
    if "peak_worker_rss" in engines.get("dask", {}):
        d = engines["dask"]
        print(f"- dask: server + workers' peak RSS {_mb(d['peak_server_rss'] + sum(d['peak_worker_rss']))} MB; "
              f"cluster start {d['cluster_seconds']:.1f} s (not in ready)")
    words = {True: "yes", False: "NO"}
    for target, met in document["targets"].items():
        print(f"- target: {TARGETS[target]}: {words[met]}")
    print(f"\nwrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({document['seconds']:.0f} s)")
    failed = [n for n, r in engines.items() if "error" in r or not r.get("same_as_pandas", True)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
