"""Drive the original fedmed 0.3.2: run with the interpreter of ``benchmarks/.venv-fedmed032`` only.

It starts the original's Flask servers with waitress in threads on free
loopback ports, each behind ``support.Middleware`` (request and byte counts,
optional delay per request), loads every server with the same synthetic rows
as the FedMed side (``support.cohort``), and runs the analyses the original
supports with its own ``fedmed.stats``. Its client reads ``./config.yaml``
whatever config it is given, so the driver works in a temporary folder
holding one (operations only, no privacy policies, no ``sqsum``: the original
has no implementation of it and a call hangs the server).

The original cannot filter rows, so each server also holds ``x`` split by
``g`` as two fragments (``x_g1``, ``x_g0``) for the t-test, and ``x``, ``y``
as separate fragments: its binary operations between sub-columns of one
fragment can hang a server.

Two modes:

- ``python original_driver.py --servers 3 --rows 10000 [--delay 0.02] [--repeats 3]``
  prints one JSON object: per analysis, requests per server, bytes, wall times;
- ``python original_driver.py --serve`` answers JSON commands, one per line,
  so the runner can interleave the original with FedMed repeat by repeat:
  ``{"cmd": "start", "servers": n, "rows": r, "delay": s, "seed": k}``,
  ``{"cmd": "run", "analysis": name}``, ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
# this checkout's fedmed must never shadow the original
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(HERE)]
WORKDIR = tempfile.mkdtemp(prefix="fedmed032-")
os.chdir(WORKDIR)

import requests  # noqa: E402
import scipy.stats  # noqa: E402
import yaml  # noqa: E402

import fedmed  # noqa: E402
from fedmed.stats import base as fstats  # noqa: E402
from fedmed.stats.test import Welch  # noqa: E402

from support import Background, Middleware, cohort, median, run_record  # noqa: E402

BINARY = ("mul", "pow", "add", "sub", "eq", "ne", "lt", "le", "gt", "ge")
CONFIG: dict[str, Any] = {
    "privacy": [],
    "methods": {
        **{f"__{op}__": f"fedmed.ops.binary.{op}" for op in BINARY},
        "__abs__": "fedmed.ops.binary.abs",
        "round": "fedmed.ops.binary.round",
        "max": {"map": "fedmed.ops.private.max", "reduce": "fedmed.ops.public.max"},
        "min": {"map": "fedmed.ops.private.min", "reduce": "fedmed.ops.public.min"},
        "sum": {"map": "fedmed.ops.private.sum", "reduce": "fedmed.ops.public.sum"},
        "len": {"map": "fedmed.ops.private.num", "reduce": "fedmed.ops.public.sum"},
        "set": {"map": "fedmed.ops.private.unique", "reduce": "fedmed.ops.public.union"},
    },
}
with open("config.yaml", "w") as file:
    yaml.safe_dump(CONFIG, file)

#: The original's client has no timeout; a hung server must not hang the benchmark.
REQUEST_TIMEOUT = 60.0
_post = requests.post
requests.post = lambda *args, **kwargs: _post(*args, **{"timeout": REQUEST_TIMEOUT, **kwargs})


def _welch(d: dict[str, Any]) -> list[float]:
    t, df = Welch().t_statistic(d["x_g1"], d["x_g0"])
    return [t, float(2 * scipy.stats.t.sf(abs(t), df))]  # the p-value is client-side: no request


#: What the original can run, written with its own fedmed.stats, returning plain numbers.
ANALYSES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "mean": lambda d: fstats.mean(d["x"]),
    "std": lambda d: fstats.std(d["x"], 1),
    "describe": lambda d: [
        fstats.len(d["x"]), fstats.mean(d["x"]), fstats.std(d["x"], 1), fstats.min(d["x"]), fstats.max(d["x"])
    ],
    "pearson": lambda d: fstats.pearson(d["x"], d["y"]),
    "welch": _welch,
}


class Running:
    """One original server with its counting middleware, served in a thread."""

    def __init__(self, rows: int, index: int, seed: int, delay: float, threads: int) -> None:
        server = fedmed.Server(config=CONFIG)
        columns = cohort(rows, index, seed)
        group = columns["g"] == 1
        server["x"] = columns["x"].tolist()
        server["y"] = columns["y"].tolist()
        server["x_g1"] = columns["x"][group].tolist()
        server["x_g0"] = columns["x"][~group].tolist()
        self.counter = Middleware(server.app, delay)
        self.background = Background(self.counter, threads)
        self.url = self.background.url

    def stop(self) -> None:
        self.background.stop()


class Session:
    """Servers plus the FedData of each fragment over all of them."""

    def __init__(self) -> None:
        self.running: list[Running] = []
        self.spec: dict[str, Any] = {}

    def start(self, servers: int, rows: int, delay: float = 0.0, seed: int = 2024, threads: int = 4) -> dict[str, Any]:
        self.stop()
        self.spec = dict(servers=servers, rows=rows, delay=delay, seed=seed, threads=threads)
        self.running = [Running(rows, i, seed, delay, threads) for i in range(servers)]
        self.data = {
            name: fedmed.FedData([fedmed.Remote(r.url, name) for r in self.running], CONFIG)
            for name in ("x", "y", "x_g1", "x_g0")
        }
        return {"ok": True, "servers": servers, "fedmed": fedmed.__name__}

    def stop(self) -> None:
        for r in self.running:
            r.stop()
        self.running = []

    def run(self, analysis: str) -> dict[str, Any]:
        for r in self.running:
            r.counter.reset()
        started = time.perf_counter()
        try:
            value = ANALYSES[analysis](self.data)
        except Exception as exc:  # a failed call may leave a server holding its lock: start afresh
            self.start(**self.spec)
            return {"error": f"{type(exc).__name__}: {exc}"}
        wall = time.perf_counter() - started
        return run_record(wall, value, [r.counter.counts() for r in self.running])


def serve() -> int:
    """The JSON-lines loop; everything else the original prints goes to stderr."""
    out, sys.stdout = sys.stdout, sys.stderr
    session = Session()
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        try:
            cmd = command.pop("cmd")
            if cmd == "quit":
                break
            answer = session.start(**command) if cmd == "start" else session.run(command["analysis"])
        except Exception as exc:
            traceback.print_exc()
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    session.stop()
    return 0


def one_shot(args: argparse.Namespace) -> int:
    session = Session()
    session.start(args.servers, args.rows, args.delay, args.seed)
    session.run("mean")  # warm-up: first requests import and set up Flask
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ANALYSES}
    for _ in range(args.repeats):
        for name in ANALYSES:
            runs[name].append(session.run(name))
    session.stop()
    report = {}
    for name, results in runs.items():
        ok = [r for r in results if "error" not in r]
        report[name] = (
            {"error": results[0]["error"]} if not ok else {
                "requests_per_server": ok[0]["requests_per_server"],
                "bytes_in": ok[0]["bytes_in"],
                "bytes_out": ok[0]["bytes_out"],
                "wall_median": median(r["wall"] for r in ok),
                "walls": [r["wall"] for r in ok],
                "value": ok[0]["value"],
            }
        )
    print(json.dumps({"servers": args.servers, "rows": args.rows, "delay": args.delay, "analyses": report}, indent=1))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="answer JSON commands on stdin")
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds of delay per request")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    return serve() if args.serve else one_shot(args)


if __name__ == "__main__":
    sys.exit(main())
