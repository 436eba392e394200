"""A real ``fedmed serve`` process under an address-space cap, the requests of issue 14, and its memory per request.

``tests/reliability/test_memory_attacks.py`` and ``benchmarks/memory.py``
share this module (both load it by file location: ``tests`` is not a
package). ``Served`` starts ``fedmed serve`` as a child process on
127.0.0.1 (port 0: the server picks a free one and prints it), with its
address space capped by ``RLIMIT_AS`` the way an owner's ``ulimit -v`` or a
small machine would, and waits (bounded) until ``/v1/info`` answers.
``Served.measure(request)`` posts one crafted msgpack node table and
returns the status, the body (decoded when it is msgpack) and what the
request cost the server: its peak resident memory above the resident
memory before it (``VmHWM`` after resetting it through
``/proc/PID/clear_refs``; polling ``VmRSS`` where that file cannot be
written), and the wall time. The request builders write node tables with
the node classes of ``fedmed.expr.rowwise`` and ``fedmed.wire.encode_table``:
with ``dedupe=False`` every distinct Python object becomes its own table
entry, which is how a hostile client repeats equal nodes.
"""

from __future__ import annotations

import http.client
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import msgpack
import numpy as np
import pandas as pd
import yaml

import fedmed
from fedmed import wire
from fedmed.expr.node import Node
from fedmed.expr.rowwise import Column, Elementwise, Filter, Fragment, Literal, Map

#: The checkout of the fedmed imported here: the server runs the same code, with its example configs.
SOURCE = Path(fedmed.__file__).resolve().parents[1]
EXAMPLE = SOURCE / "example"  # config-exact.yaml: every operation, no policy; config.yaml: CacheLimit and others

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
#: The address-space cap of issue 14's measurements.
CAP = 3 * GiB
#: The per-request budget the test servers are configured with (``limits.memory_bytes``).
BUDGET = 512 * MiB
#: ``fedmed serve`` reserves ~2.1 GB of address space with its default 8 threads (thread stacks,
#: malloc arenas, BLAS buffers) and ~1.7 GB with 2: 2 threads leave the most room under the cap.
THREADS = 2
STARTUP_TIMEOUT = 60.0
#: Longer than any request should take once refused or bounded; a server past it is restarted.
REQUEST_TIMEOUT = 30.0
#: Rows of the ``value_counts`` column: every value distinct, ~20 MiB of Python objects per answer
#: kept by ``CacheLimit`` (1,000,000 rows: ~100 MiB each, but 5 s per request on 2 cores).
UNIQUE_ROWS = 200_000
_URL = re.compile(r"FedMed server on (http://[\d.]+:(\d+))")


# -- configs and data -------------------------------------------------------------------------


def write_config(folder: Path, name: str, *, privacy: bool, memory_bytes: int | None = BUDGET,
                 extra: Mapping[str, Any] | None = None, example: Path = EXAMPLE) -> Path:
    """A config file in ``folder``: every operation of ``example/``; its privacy policies or none; the budget."""
    source = example / ("config.yaml" if privacy else "config-exact.yaml")
    raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    if memory_bytes is not None:
        raw.setdefault("limits", {})["memory_bytes"] = int(memory_bytes)
    raw.update(extra or {})
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def cohort(rows: int = 200_000, seed: int = 14) -> pd.DataFrame:
    """Numbers and short text: ``x`` float64, ``y`` int64 (0-99), ``t`` text of 5 characters (1,000 distinct)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "x": rng.normal(50.0, 10.0, rows).round(3),
        "y": rng.integers(0, 100, rows),
        "t": [f"w{i % 1000:04d}" for i in range(rows)],
    })


def uniques(rows: int = UNIQUE_ROWS) -> pd.DataFrame:
    """One column ``u`` of ``rows`` distinct integers, and ``x`` floats, for ``value_counts`` that never repeat."""
    return pd.DataFrame({"u": np.arange(rows, dtype="int64"), "x": np.linspace(0.0, 1.0, rows)})


# -- the server process -----------------------------------------------------------------------


@dataclass
class Answer:
    """One response: status, content type, raw body, the body decoded (None when not msgpack), the cost."""

    status: int | None
    content_type: str
    body: bytes
    decoded: Any
    seconds: float
    rss_before: int | None = None
    peak_growth: int | None = None
    rss_after: int | None = None
    error: str | None = None  # no response at all (timeout, connection reset): why

    @property
    def is_msgpack(self) -> bool:
        return self.content_type.startswith(wire.CONTENT_TYPE) and isinstance(self.decoded, dict)

    @property
    def refused(self) -> bool:
        """A 4xx with a msgpack error body, or a 200 whose every task is a msgpack error."""
        if not self.is_msgpack or self.status is None:
            return False
        if 400 <= self.status < 500:
            return "error" in self.decoded or _all_errors(self.decoded)
        return self.status == 200 and _all_errors(self.decoded)

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The msgpack error bodies in the answer (the request's, or each failed task's)."""
        if not self.is_msgpack:
            return []
        if "error" in self.decoded:
            return [self.decoded["error"]]
        return [r["error"] for r in self.decoded.get("results", []) if isinstance(r, dict) and "error" in r]

    @property
    def values(self) -> list[Any]:
        if not self.is_msgpack:
            return []
        return [r.get("value") for r in self.decoded.get("results", [])]

    def summary(self) -> str:
        """One line for reports and assertion messages."""
        kinds = sorted({f"{e.get('type')}: {str(e.get('message'))[:120]}" for e in self.errors})
        body = "msgpack" if self.is_msgpack else f"{self.content_type or 'no content type'}: {self.body[:80]!r}"
        return (f"status {self.status}{' (' + self.error + ')' if self.error else ''}, {body}, "
                f"peak RSS growth {mib(self.peak_growth)}, RSS {mib(self.rss_before)} -> {mib(self.rss_after)}, "
                f"{self.seconds:.2f} s" + (f"; errors: {'; '.join(kinds)}" if kinds else ""))


def _path_with(folder: Path) -> str:
    return os.pathsep.join([str(folder), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])


def _all_errors(decoded: dict[str, Any]) -> bool:
    results = decoded.get("results")
    return bool(results) and all(isinstance(r, dict) and "error" in r for r in results)


def mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / MiB:,.0f} MiB"


@dataclass
class Served:
    """``fedmed serve`` in a child process with ``RLIMIT_AS`` capped at ``cap`` bytes.

    Parameters
    ----------
    config : the config file to serve with.
    data : fragment name -> file (``--data NAME=FILE``).
    in_place : serve the files with DuckDB where they lie (``--in-place``).
    cap : the address-space cap in bytes, or None for none.
    threads : waitress worker threads.
    env : extra environment variables for the child.
    """

    config: Path
    data: Mapping[str, Path]
    in_place: bool = False
    cap: int | None = CAP
    threads: int = THREADS
    env: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    url: str = field(default="", init=False)
    port: int = field(default=0, init=False)
    started_rss: int | None = field(default=None, init=False)
    unanswered: bool = field(default=False, init=False)  # a request got no answer: the server may still be busy
    _logs: Path | None = field(default=None, init=False, repr=False)
    _can_reset: bool | None = field(default=None, init=False, repr=False)

    def __enter__(self) -> "Served":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- life ---------------------------------------------------------------------------------
    def start(self, timeout: float = STARTUP_TIMEOUT) -> "Served":
        """Start the server and return once ``GET /v1/info`` answers 200 (or raise, with its output)."""
        self._logs = Path(tempfile.mkdtemp(prefix="fedmed-memory-"))
        command = [sys.executable, "-c", "import sys; from fedmed.cli import main; sys.exit(main())", "serve",
                   "--config", str(self.config), "--host", "127.0.0.1", "--port", "0",
                   "--threads", str(self.threads)]
        for name, path in self.data.items():
            command += ["--data", f"{name}={path}"]
        if self.in_place:
            command.append("--in-place")
        cap = self.cap

        def limit() -> None:  # runs in the child between fork and exec
            if cap is not None:
                resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

        with open(self._logs / "stdout", "wb") as out, open(self._logs / "stderr", "wb") as err:
            # files, not pipes: the request log (one JSON line per request) must never block the server
            self.process = subprocess.Popen(
                command, cwd=self._logs, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                preexec_fn=limit, env={**os.environ, "PYTHONPATH": _path_with(SOURCE), **self.env},
            )
        deadline = time.monotonic() + timeout
        while not self.url:
            found = _URL.search(self._read("stdout"))
            if found:
                self.url, self.port = found.group(1), int(found.group(2))
                break
            self._check_alive_before(deadline, "print its address")
            time.sleep(0.05)
        while True:
            try:
                if self.get("/v1/info", timeout=2.0).status == 200:
                    self.started_rss, self.unanswered = self.rss(), False
                    return self
            except OSError:
                pass
            self._check_alive_before(deadline, "answer /v1/info")
            time.sleep(0.05)

    def _check_alive_before(self, deadline: float, what: str) -> None:
        assert self.process is not None
        if self.process.poll() is not None or time.monotonic() > deadline:
            reason = (f"exited with {self.process.returncode}" if self.process.poll() is not None
                      else "timed out")
            output = self.output()
            self.stop()
            raise RuntimeError(f"fedmed serve did not {what} ({reason}):\n{output}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGINT (waitress closes, the CLI prints "stopped."), then SIGKILL if it does not end in ``timeout``."""
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if self._logs is not None:
            shutil.rmtree(self._logs, ignore_errors=True)
            self._logs = None

    def healthy(self, grown: int) -> bool:
        """Running, every request answered, and resident memory at most ``grown`` above what it was at start."""
        rss = self.rss() if self.alive() else None
        return (rss is not None and not self.unanswered and self.started_rss is not None
                and rss - self.started_rss <= grown)

    def _read(self, name: str) -> str:
        if self._logs is None or not (self._logs / name).exists():
            return ""
        return (self._logs / name).read_text(encoding="utf-8", errors="replace")

    def output(self, tail: int = 3000) -> str:
        """The end of the server's stdout and stderr (startup lines, request log, tracebacks)."""
        return f"--- stdout\n{self._read('stdout')[-tail:]}\n--- stderr\n{self._read('stderr')[-tail:]}"

    # -- memory -------------------------------------------------------------------------------
    def status_field(self, key: str) -> int | None:
        """A ``kB`` field of ``/proc/PID/status`` in bytes (``VmRSS``, ``VmHWM``, ``VmSize``); None once gone."""
        assert self.process is not None
        try:
            with open(f"/proc/{self.process.pid}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) * KiB
        except (OSError, ValueError):
            return None
        return None

    def rss(self) -> int | None:
        return self.status_field("VmRSS")

    def reset_peak(self) -> bool:
        """Reset ``VmHWM`` to the current RSS (``echo 5 > /proc/PID/clear_refs``); False where not allowed."""
        assert self.process is not None
        if self._can_reset is False:
            return False
        try:
            with open(f"/proc/{self.process.pid}/clear_refs", "w") as f:
                f.write("5")
            self._can_reset = True
        except OSError:
            self._can_reset = False
        return self._can_reset

    # -- requests -----------------------------------------------------------------------------
    def get(self, path: str, timeout: float = REQUEST_TIMEOUT) -> Answer:
        return self._send("GET", path, None, timeout)

    def post(self, request: Mapping[str, Any] | bytes, timeout: float = REQUEST_TIMEOUT) -> Answer:
        """POST a request (a dict is packed with ``fedmed.wire.pack``) to ``/v1/evaluate``."""
        body = request if isinstance(request, bytes) else wire.pack(dict(request))
        return self._send("POST", wire.ENDPOINT, body, timeout)

    def measure(self, request: Mapping[str, Any] | bytes, timeout: float = REQUEST_TIMEOUT) -> Answer:
        """``post`` with the request's cost: peak RSS above the RSS just before it, and RSS after it."""
        exact = self.reset_peak()
        before = self.rss()
        sampler = None if exact else _Sampler(self.rss)
        try:
            answer = self.post(request, timeout)
        finally:
            polled = sampler.stop() if sampler is not None else None
        peak = self.status_field("VmHWM") if exact else polled
        answer.rss_before, answer.rss_after = before, self.rss()
        if peak is not None and before is not None:
            answer.peak_growth = max(0, peak - before)
        return answer

    def _send(self, method: str, path: str, body: bytes | None, timeout: float) -> Answer:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        started = time.perf_counter()
        try:
            headers = {"Content-Type": wire.CONTENT_TYPE} if body is not None else {}
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            status, content_type = response.status, response.getheader("Content-Type", "")
        except (OSError, http.client.HTTPException) as exc:
            self.unanswered = True
            return Answer(None, "", b"", None, time.perf_counter() - started, error=f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()
        seconds = time.perf_counter() - started
        decoded = None
        if content_type.startswith(wire.CONTENT_TYPE):
            try:  # no size limit here: an answer may be larger than a request may
                decoded = msgpack.unpackb(data, raw=False, strict_map_key=False)
            except Exception:
                decoded = None
        return Answer(status, content_type, data, decoded, seconds)


class Pool:
    """Servers shared by several tests, each restarted when a request left it unhealthy.

    ``pool.get(name)`` returns the running server ``name`` (made by ``factories[name]()``), after
    restarting it if it died, left a request unanswered, or kept more than ``grown`` bytes of
    resident memory: each row is measured on a server in the state a fresh one is in.
    """

    def __init__(self, factories: Mapping[str, Any], grown: int = 128 * MiB) -> None:
        self.factories, self.grown = dict(factories), grown
        self.running: dict[str, Served] = {}

    def get(self, name: str) -> Served:
        served = self.running.get(name)
        if served is None or not served.healthy(self.grown):
            if served is not None:
                served.stop()
            served = self.running[name] = self.factories[name]().start()
        return served

    def close(self) -> None:
        for served in self.running.values():
            served.stop()
        self.running.clear()


class _Sampler:
    """Polls a reading (the server's RSS) every 2 ms in a thread; ``stop()`` gives the largest seen."""

    def __init__(self, read: Any, every: float = 0.002) -> None:
        self._read, self._every = read, every
        self._peak: int | None = read()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self._every):
            value = self._read()
            if value is not None and (self._peak is None or value > self._peak):
                self._peak = value

    def stop(self) -> int | None:
        self._done.set()
        self._thread.join()
        return self._peak


# -- requests: node tables ----------------------------------------------------------------------


def request(maps: Sequence[Node], *, dedupe: bool = True) -> dict[str, Any]:
    """The protocol request for map nodes ``maps`` (their table deduplicated, or one entry per object)."""
    return wire.encode_table(list(maps), dedupe=dedupe).request()


def column(fragment: str, name: str) -> Column:
    return Column(Fragment(fragment), name)


def ordinary(fragment: str, name: str = "x") -> dict[str, Any]:
    """``x.sum()``: the query every attack must leave the server able to answer."""
    return request([Map("sum", (column(fragment, name),))])


def wide_tree(fragment: str, name: str = "x", leaves: int = 8192) -> dict[str, Any]:
    """A balanced tree of ``+`` over ``leaves`` copies of one column, every node its own table entry.

    8,192 leaves give 16,385 entries (~300 KB) but only ~16 distinct keys: ``ComplexityCap`` counted
    keys, while the evaluator kept all 8,191 sums (one column each) until the request ended.
    """
    data = Fragment(fragment)
    level: list[Node] = [Column(data, name) for _ in range(leaves)]
    while len(level) > 1:
        level = [Elementwise("add", (level[i], level[i + 1])) for i in range(0, len(level), 2)]
    return request([Map("sum", (level[0],))], dedupe=False)


def many_sums(fragment: str, name: str = "x", tasks: int = 2000) -> dict[str, Any]:
    """``(x + i).sum()`` for i in 0..tasks-1: distinct tasks in one request, each one column wide."""
    x = column(fragment, name)
    return request([Map("sum", (Elementwise("add", (x, Literal(float(i)))),)) for i in range(tasks)])


def text_repetition(fragment: str, times: int = 100_000) -> dict[str, Any]:
    """``(data * times).len()`` on a whole table holding a text column: each text repeated ``times`` times."""
    return request([Map("len", (Elementwise("mul", (Fragment(fragment), Literal(times))),))])


def broadcast_literals(dims: int = 9, size: int = 10, value: float = 1.5) -> list[Literal]:
    """``dims`` nested-list constants, the k-th of shape (1, .., size at axis k, .., 1): small alone
    (``size`` numbers each, ~1.3 KB together), ``size ** dims`` float64 once added (7.5 GiB for 10 ** 9)."""
    out = []
    for k in range(dims):
        shape = [1] * dims
        shape[k] = size
        out.append(Literal(np.full(shape, value).tolist()))
    return out


def broadcast(fragment: str, name: str = "x", *, into: str = "rows", dims: int = 9, size: int = 10) -> dict[str, Any]:
    """The constants of ``broadcast_literals`` added together through ``Elementwise("add")``, then either
    added to a column (``into="rows"``: ``(x + c).sum()``) or passed to a map as constants only
    (``into="constants"``: ``x.count_below(c)``)."""
    literals = broadcast_literals(dims, size)
    total: Node = literals[0]
    for lit in literals[1:]:
        total = Elementwise("add", (total, lit))
    x = column(fragment, name)
    if into == "rows":
        return request([Map("sum", (Elementwise("add", (x, total)),))])
    if into == "constants":
        return request([Map("count_below", (x, total))])
    raise ValueError(f"into must be 'rows' or 'constants', not {into!r}")


def doubling(fragment: str, name: str = "t", times: int = 18, op: str = "count") -> dict[str, Any]:
    """``x = x + x``, ``times`` times, on a text column, then ``op`` (a table of ``times`` + 3 entries)."""
    x: Node = column(fragment, name)
    for _ in range(times):
        x = Elementwise("add", (x, x))
    return request([Map(op, (x,))])


def value_counts(fragment: str, name: str = "u", shift: int = 0) -> dict[str, Any]:
    """``(u + shift).value_counts()``: a distinct question for each ``shift``, as large an answer each time."""
    u: Node = column(fragment, name)
    if shift:
        u = Elementwise("add", (u, Literal(shift)))
    return request([Map("value_counts", (u,))])


def honest_mix(fragment: str) -> dict[str, dict[str, Any]]:
    """Ordinary questions an analyst asks of ``cohort()``, one request each."""
    x, y, t = (column(fragment, n) for n in ("x", "y", "t"))
    return {
        "x.sum()": ordinary(fragment),
        "describe(x)": request([Map("moments", (x,)), Map("min", (x,)), Map("max", (x,))]),
        "x[y > 50].moments()": request([Map("moments", (Filter(x, Elementwise("gt", (y, Literal(50)))),))]),
        "pearson(x, y)": request([Map("comoments", (x, y))]),
        "t.value_counts()": request([Map("value_counts", (t,))]),
        "x.histogram(20)": request([Map("histogram", (x, Literal(20), Literal([0.0, 100.0])))]),
    }


def sizes(requests: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, tuple[int, int]]:
    """Per request: (table entries, bytes on the wire)."""
    return {name: (len(r["nodes"]), len(wire.pack(dict(r)))) for name, r in requests}
