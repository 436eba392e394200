"""Fan-out: the wall time of one round over 1, 50 and 200 servers, in round trips.

``python benchmarks/fanout.py [--quick]`` (or ``python -m benchmarks.fanout``):
about 1-2 minutes (quick: under one). ``docs/scaling.md`` discusses the numbers.

Every server is a real waitress server on loopback holding 1,000 rows
(``support.cohort``), behind ``support.Middleware`` sleeping 20 ms per
request (a network round trip; ``--delay``). The servers run in child
processes (two, one per core: ``--hosts``), so the client process does only
the client's work and its CPU time can be read on its own. The analysis is
``fm.stats.mean(x)``: one round, one request per server; each measurement
checks the value against numpy on the concatenated rows and that every
server got exactly one request.

Two server modes, one after the other (``--modes``):

- ``fedmed``: every request evaluated by its FedMed server. All servers'
  work (HTTP, msgpack, pandas: about 2 ms of CPU per request) shares this
  machine's cores with the client.
- ``replay``: each server answers a repeated request with the bytes it sent
  the first time (``Replay``), leaving out the server's own work as a
  machine per server would; waitress and the delay remain. This measures
  the client's fan-out.

One round trip is the wall time of that mean over one server (20 ms plus
the HTTP and evaluation overhead of one request); each count is reported
as a multiple of it. Median of 3, each after an untimed warm-up call
(reported as ``cold``).

Variants of the client, set by monkeypatching and measured side by side
within each repeat (one after another, same servers):

- ``pool 32``, ``pool 128``, ``pool 256``: FedMed's thread pool bounded at
  that many threads (``fm.options.max_parallel_requests``), posting through FedMed's one shared
  ``urllib3`` pool (the variant equal to FedMed's own bound is ``CURRENT``);
- ``asyncio``: a prototype transport posting every request of a round at
  once from one asyncio event loop over kept-alive connections, then
  FedMed's own result handling (``_send_all``) on the answers.

For each: the latency floor (``ceil(servers / threads) x delay``: the
waves of requests a bounded pool needs), the client's CPU time per
request (``time.process_time`` of this process), the servers' CPU time per
request (the host processes' own), and whether the largest count stays
under 3x one round trip. Writes ``benchmarks/results/fanout.json``
(``--out`` takes a folder or a ``.json`` path).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as a script: import ``benchmarks`` as a package, from the repo root
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    __package__ = "benchmarks"

import numpy as np  # noqa: E402

import fedmed as fm  # noqa: E402
from fedmed import executor, wire  # noqa: E402
from fedmed.backend import remote  # noqa: E402
from fedmed.backend.base import read_response  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.hosts import Hosts  # noqa: E402
from benchmarks.support import cohort, median  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ROWS = 1_000
SEED = 2024
THRESHOLD = 3.0  # the question: do 200 servers stay under 3x one round trip?


# -- the client variants -------------------------------------------------------
# Each variant is the pool bound and the patches it needs; ``use`` applies one
# and undoes the others. Only module attributes are patched, and the same
# executor code (plan, encode, pool results, errors) runs in every variant.
_ORIGINAL = {
    (executor, "_send_all"): executor._send_all,
    (executor, "_fan_out"): executor._fan_out,
    (remote.HttpLink, "send"): remote.HttpLink.send,
}


def _headers(link: remote.HttpLink) -> dict[str, str]:
    headers = {"Content-Type": wire.CONTENT_TYPE, "Accept": wire.CONTENT_TYPE}
    if link.token:
        headers["Authorization"] = f"Bearer {link.token}"
    return headers


class AsyncTransport:
    """A prototype asyncio transport: one event loop thread, kept-alive HTTP/1.1 connections per server.

    ``post_all`` sends every request of a round at once and waits for all
    answers; a failure is returned as the exception, for the ordinary
    (threaded) path to retry and report.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.idle: dict[tuple[str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}
        threading.Thread(target=self.loop.run_forever, name="fanout-asyncio", daemon=True).start()

    async def _post(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, bytes]:
        parts = urlsplit(url)
        key = (parts.hostname or "127.0.0.1", parts.port or 80)
        pool = self.idle.setdefault(key, [])
        reader, writer = pool.pop() if pool else await asyncio.open_connection(*key)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(
            f"POST {parts.path} HTTP/1.1\r\nHost: {key[0]}:{key[1]}\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        status_line = await reader.readline()
        status, length, close = int(status_line.split()[1]), 0, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        content = await reader.readexactly(length)
        if close:
            writer.close()
        else:
            pool.append((reader, writer))
        return status, content

    async def _gather(self, items: list[tuple[str, bytes, dict[str, str], float]]) -> list[Any]:
        # the whole exchange (connect, send, answer) within each link's timeout
        posts = (asyncio.wait_for(self._post(*item), item[3]) for item in items)
        return await asyncio.gather(*posts, return_exceptions=True)

    def post_all(self, items: list[tuple[str, bytes, dict[str, str], float]]) -> list[Any]:
        return asyncio.run_coroutine_threadsafe(self._gather(items), self.loop).result()


_transport: AsyncTransport | None = None
_prefetched: dict[tuple[str, bytes], tuple[int, bytes]] = {}


def _async_send_all(requests_: list[Any], flags: Any, *args: Any) -> Any:
    """Phase 1: every request's body, posted at once on the event loop. Phase 2: FedMed's own
    ``_send_all``, one request after another, each link answering from phase 1."""
    global _transport
    if _transport is None:
        _transport = AsyncTransport()
    encoder = wire.Encoder(dedupe=flags.dedupe)
    bodies = [wire.pack(encoder.encode(r.tasks).request()) for r in requests_]
    links = [r.link for r in requests_]
    answers = _transport.post_all(
        [(link.name + wire.ENDPOINT, body, _headers(link), link.timeout) for link, body in zip(links, bodies)]
    )
    for link, body, answer in zip(links, bodies, answers):
        if not isinstance(answer, BaseException):
            _prefetched[(link.name, body)] = answer
    return _ORIGINAL[(executor, "_send_all")](requests_, flags, *args)


def _prefetched_send(self: remote.HttpLink, request: dict[str, Any]) -> dict[str, Any]:
    answer = _prefetched.pop((self.name, wire.pack(request)), None)
    if answer is None:  # the asyncio post failed: the ordinary path retries and reports it
        return _ORIGINAL[(remote.HttpLink, "send")](self, request)
    return read_response(answer[0], answer[1], self.name)


def _in_order() -> Any:
    return SimpleNamespace(map=map)  # phase 2 needs no threads: the answers are already here


@dataclass(frozen=True)
class Variant:
    threads: int  # fm.options.max_parallel_requests (for asyncio: requests in flight are not bounded by threads)
    patches: dict[tuple[Any, str], Any] = field(default_factory=dict)
    about: str = ""


VARIANTS: dict[str, Variant] = {
    "pool 32": Variant(32, about="a bounded pool of 32 threads (FedMed's bound until 2026-11-27), shared urllib3 pool"),
    "pool 128": Variant(128, about="a bounded pool of 128 threads, shared urllib3 pool"),
    "pool 256": Variant(256, about="a bounded pool of 256 threads, shared urllib3 pool"),
    "asyncio": Variant(
        10_000, {(executor, "_send_all"): _async_send_all, (executor, "_fan_out"): _in_order,
                 (remote.HttpLink, "send"): _prefetched_send},
        about="prototype: every request of a round posted at once from one asyncio event loop, "
              "kept-alive HTTP/1.1 connection per server; FedMed's result handling unchanged",
    ),
}
#: FedMed as it is: the variant whose bound is fedmed.executor's
CURRENT = next(name for name, v in VARIANTS.items() if v.threads == fm.options.max_parallel_requests and not v.patches)


def use(variant: str) -> None:
    """Switch the client to ``variant``: a new pool of its size and its patches, the others' undone."""
    chosen = VARIANTS[variant]
    if executor._pool is not None:
        executor._pool.shutdown(wait=True)  # its threads end here, before the next variant's are made
    executor._pool = None
    fm.options.max_parallel_requests = chosen.threads
    for (owner, name), original in _ORIGINAL.items():
        setattr(owner, name, chosen.patches.get((owner, name), original))
    _prefetched.clear()


# -- one measurement -----------------------------------------------------------
def expected_mean(servers: int, rows: int = ROWS) -> float:
    return float(np.concatenate([cohort(rows, i, SEED)["x"] for i in range(servers)]).mean())


def measure(hosts: Hosts, data: fm.FedData, expected: float, variant: str) -> dict[str, float]:
    """Switch to ``variant``, warm up (timed apart as ``cold``), then one timed mean with its CPU times."""
    use(variant)
    x = data["x"]
    started = time.perf_counter()
    fm.stats.mean(x).compute()
    cold = time.perf_counter() - started
    before, host_cpu = hosts.counts()
    cpu, started = time.process_time(), time.perf_counter()
    value = fm.stats.mean(x).compute()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    after, host_cpu_after = hosts.counts()
    if not math.isclose(value, expected, rel_tol=1e-12):
        raise AssertionError(f"{variant}: mean {value} != {expected}")
    if [b - a for a, b in zip(before, after)] != [1] * len(before):
        raise AssertionError(f"{variant}: not one request per server")
    n = len(before)
    return {"wall": wall, "cold": cold, "client_cpu_per_request": cpu / n,
            "server_cpu_per_request": (host_cpu_after - host_cpu) / n}


SERVER_MODES = {
    "fedmed": "every request evaluated by its FedMed server (all servers' work shares this machine's cores)",
    "replay": "repeated requests answered from each server's first answer (the servers' work left out, "
              "as with a machine per server): the client's own fan-out",
}


def run(counts: tuple[int, ...], repeats: int, delay: float, processes: int, replay: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for servers in counts:
        started = time.perf_counter()
        hosts = Hosts(servers, processes, delay, rows=ROWS, replay=replay, fragment="site", seed=SEED)
        try:
            data = fm.FedData([fm.Remote(url, "site") for url in hosts.urls])
            expected = expected_mean(servers)
            runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
            for _ in range(repeats):
                for variant in VARIANTS:  # side by side: every variant within each repeat
                    runs[variant].append(measure(hosts, data, expected, variant))
        finally:
            hosts.close()
            use(CURRENT)
        results[str(servers)] = {
            variant: {
                "wall": median(r["wall"] for r in rs),
                "cold": median(r["cold"] for r in rs),
                "client_cpu_per_request": median(r["client_cpu_per_request"] for r in rs),
                "server_cpu_per_request": median(r["server_cpu_per_request"] for r in rs),
                "latency_floor": math.ceil(servers / VARIANTS[variant].threads) * delay,
                "runs": rs,
            }
            for variant, rs in runs.items()
        }
        mode = "replay" if replay else "fedmed"
        print(f"  {mode}, {servers} servers: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return results


def table(results: dict[str, Any], unit: float) -> str:
    lines = [
        "| servers | client | wall (ms) | x one round trip | latency floor (ms) | client CPU / request (ms) "
        "| server CPU / request (ms) | first call, cold (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for servers, variants in results.items():
        for variant, r in variants.items():
            lines.append(
                f"| {servers} | {variant} | {1000 * r['wall']:.1f} | {r['wall'] / unit:.2f}x | "
                f"{1000 * r['latency_floor']:.0f} | {1000 * r['client_cpu_per_request']:.2f} | "
                f"{1000 * r['server_cpu_per_request']:.2f} | {1000 * r['cold']:.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1, 20 and 50 servers")
    parser.add_argument("--servers", type=int, nargs="+", help="server counts (default 1 50 200; quick 1 20 50)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.020, help="seconds each server sleeps per request")
    parser.add_argument("--hosts", type=int, default=2, help="child processes holding the servers")
    parser.add_argument("--modes", nargs="+", choices=list(SERVER_MODES), default=list(SERVER_MODES))
    parser.add_argument("--out", type=Path, default=RESULTS, help="a folder (fanout.json is written there) or a .json file")
    args = parser.parse_args(argv)
    counts = tuple(args.servers or ((1, 20, 50) if args.quick else (1, 50, 200)))
    if 1 not in counts:
        counts = (1, *counts)  # one server's wall time is the unit
    largest = str(max(counts))
    fm.options.progress = False
    started = time.perf_counter()
    modes: dict[str, Any] = {}
    for mode in args.modes:
        results = run(counts, args.repeats, args.delay, args.hosts, replay=mode == "replay")
        unit = results["1"][CURRENT]["wall"]
        ratios = {v: results[largest][v]["wall"] / unit for v in VARIANTS}
        modes[mode] = {
            "about": SERVER_MODES[mode], "one_round_trip": unit, "results": results,
            "largest": {"servers": int(largest), "x_one_round_trip": ratios,
                        "under_threshold": {v: r < THRESHOLD for v, r in ratios.items()}},
        }
    document = {
        "benchmark": "fanout",
        "mode": "quick" if args.quick else "full",
        "machine": report.machine(),
        "settings": {"servers": counts, "repeats": args.repeats, "delay": args.delay, "host_processes": args.hosts,
                     "rows_per_server": ROWS, "threshold": THRESHOLD,
                     "analysis": "fm.stats.mean(x): one round, one request per server",
                     "variants": {v: {"max_parallel_requests": c.threads, "about": c.about}
                                  for v, c in VARIANTS.items()}},
        "server_modes": modes,
        "seconds": time.perf_counter() - started,
    }
    path = report.write_json(document, args.out, "fanout.json")

    m = document["machine"]
    print(f"Machine: {m['cpu']}, {m['cores_usable']} of {m['cores']} cores, {m['ram_gb']} GB RAM; "
          f"servers in {args.hosts} child processes, {1000 * args.delay:.0f} ms per request; median of {args.repeats}.")
    for mode, found in modes.items():
        print(f"\n## Servers: {mode} ({found['about']})\n")
        print(f"One round trip (mean over 1 server, {CURRENT}): {1000 * found['one_round_trip']:.1f} ms\n")
        print(table(found["results"], found["one_round_trip"]))
        print()
        for variant, r in found["largest"]["x_one_round_trip"].items():
            word = "under" if r < THRESHOLD else "NOT under"
            print(f"- {largest} servers, {variant}: {r:.2f}x one round trip, {word} {THRESHOLD:g}x")
    print(f"\nwrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({document['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
