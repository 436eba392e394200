"""Load test: one FedMed server on loopback, many concurrent clients, a fixed duration.

    python benchmarks/load.py --rows 100000 --clients 16 --seconds 10
    python benchmarks/load.py --quick          # 10,000 rows for 2 s

One waitress server (as many worker threads as there are clients) holds one
fragment of ``--rows`` float64 values; each client thread loops
``fm.compute(fm.stats.describe(x))`` through ``fm.Remote`` (one request per
query) until the time is up. Prints requests/second, latency p50/p95 and the
error count, then the same as one JSON line; exits 1 if any query failed (an
exception or a wrong count) or none completed.

The server runs in a child process by default, so clients and server do not
share one interpreter lock (``--in-process`` runs it in this process). It
binds 127.0.0.1 only. Everything is bounded: the duration, each request's
timeout, and the joins.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

import fedmed as fm
from fedmed.serving import BackgroundServer

HOST = "127.0.0.1"
FRAGMENT = "x"
BLAS_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def make_server(rows: int) -> fm.Server:
    server = fm.Server()
    server[FRAGMENT] = np.random.default_rng(42).normal(50.0, 10.0, rows)  # float64
    return server


def serve_forever(rows: int, threads: int) -> int:
    """Child mode: serve, print the port as one JSON line, stop when stdin closes (the parent ended)."""
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth" is expected here
    running = BackgroundServer(make_server(rows).app, host=HOST, threads=threads)
    print(json.dumps({"port": running.port}), flush=True)
    try:
        sys.stdin.read()  # returns at EOF: the parent closed the pipe or exited
    finally:
        running.stop()
    return 0


class ChildServer:
    """The server in a child process (its own interpreter lock)."""

    def __init__(self, rows: int, threads: int, blas_threads: int | None = None) -> None:
        env = dict(os.environ)
        if blas_threads is not None:  # read by OpenBLAS/MKL/OpenMP when numpy loads, so only a new process
            env.update({var: str(blas_threads) for var in BLAS_VARIABLES})
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", "--rows", str(rows), "--clients", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        if not line:
            self.stop()
            raise RuntimeError("the server process did not start")
        self.url = f"http://{HOST}:{json.loads(line)['port']}"

    def stop(self) -> None:
        try:
            self.process.stdin.close()  # type: ignore[union-attr]
            self.process.wait(10)
        except (subprocess.TimeoutExpired, OSError):
            self.process.kill()
            self.process.wait(10)


class InProcessServer:
    def __init__(self, rows: int, threads: int) -> None:
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        self.running = BackgroundServer(make_server(rows).app, host=HOST, threads=threads)
        self.url = self.running.url

    def stop(self) -> None:
        self.running.stop()


def client_loop(url: str, rows: int, deadline: float, timeout: float, latencies: list[float], errors: list[str]) -> None:
    """Query until ``deadline``; record each latency (seconds) or error (kept short)."""
    x = fm.FedData([fm.Remote(url, FRAGMENT, timeout=timeout, retries=0)])
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        try:
            (summary,) = fm.compute(fm.stats.describe(x))
            if int(summary["count"]) != rows:
                raise AssertionError(f"count {summary['count']} != {rows}")
        except Exception as exc:  # noqa: BLE001 - every failure counts as an error
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
            continue
        latencies.append(time.perf_counter() - started)


def run(rows: int, clients: int, seconds: float, timeout: float, in_process: bool,
        blas_threads: int | None = None) -> dict[str, Any]:
    server = InProcessServer(rows, clients) if in_process else ChildServer(rows, clients, blas_threads)
    try:
        # warm-up (imports, first connection), outside the measurement
        (summary,) = fm.compute(fm.stats.describe(fm.FedData([fm.Remote(server.url, FRAGMENT, timeout=timeout)])))
        assert int(summary["count"]) == rows
        per_client: list[list[float]] = [[] for _ in range(clients)]
        errors: list[str] = []
        started = time.perf_counter()
        deadline = started + seconds
        threads = [
            threading.Thread(target=client_loop, args=(server.url, rows, deadline, timeout, per_client[i], errors),
                             name=f"client-{i}", daemon=True)
            for i in range(clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, deadline - time.perf_counter()) + timeout + 5)
        elapsed = time.perf_counter() - started
        hung = sum(t.is_alive() for t in threads)
        if hung:
            errors.append(f"{hung} client thread(s) still running after the deadline")
    finally:
        server.stop()
    latencies = np.array([v for chunk in per_client for v in chunk])
    ms = (lambda q: round(float(np.percentile(latencies, q)) * 1000, 2)) if latencies.size else (lambda q: None)
    return {
        "requests": int(latencies.size),
        "errors": len(errors),
        "first_errors": errors[:5],
        "seconds": round(elapsed, 2),
        "requests_per_second": round(latencies.size / elapsed, 1),
        "latency_ms": {"p50": ms(50), "p95": ms(95), "max": ms(100)},
        "per_client_requests": [len(chunk) for chunk in per_client],
        "setup": {
            "rows": rows, "clients": clients, "server_threads": clients, "duration_s": seconds,
            "server": "in-process" if in_process else "child process", "host": HOST,
            "server_blas_threads": blas_threads if blas_threads is not None and not in_process else "default",
            "cores": os.cpu_count(), "python": platform.python_version(), "fedmed": fm.__version__,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="float64 values on the server (default 100000)")
    parser.add_argument("--clients", type=int, default=16, help="client threads = server threads (default 16)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the measurement (default 10)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds (default 30)")
    parser.add_argument("--quick", action="store_true", help="10,000 rows for 2 s (a smoke run)")
    parser.add_argument("--in-process", action="store_true", help="run the server in this process")
    parser.add_argument("--blas-threads", type=int, default=None, metavar="N",
                        help="BLAS threads of the server process (sets OPENBLAS/OMP/MKL_NUM_THREADS; default: "
                             "the environment's); ignored with --in-process")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.seconds = 10_000, 2.0
    if args.rows < 1 or args.clients < 1 or not 0 < args.seconds <= 3600 or args.timeout <= 0:
        parser.error("--rows and --clients must be positive, --seconds in (0, 3600], --timeout positive")
    if args.serve:
        return serve_forever(args.rows, args.clients)

    result = run(args.rows, args.clients, args.seconds, args.timeout, args.in_process, args.blas_threads)
    setup = result["setup"]
    print(f"fedmed load test: 1 server ({setup['server']}, waitress, {args.clients} threads) on {HOST}, "
          f"{args.rows:,} float64 rows, {args.clients} clients, {args.seconds:g} s, {setup['cores']} cores, "
          f"server BLAS threads: {setup['server_blas_threads']}")
    print("  queries:       fm.compute(fm.stats.describe(x)) via fm.Remote, one request each")
    print(f"  requests:      {result['requests']:,} in {result['seconds']:.2f} s")
    print(f"  throughput:    {result['requests_per_second']:,.1f} req/s")
    print(f"  latency p50:   {result['latency_ms']['p50']} ms")
    print(f"  latency p95:   {result['latency_ms']['p95']} ms")
    print(f"  errors:        {result['errors']}")
    for error in result["first_errors"]:
        print(f"    {error}")
    print(json.dumps(result))
    return 0 if result["errors"] == 0 and result["requests"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
