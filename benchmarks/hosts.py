"""FedMed servers in child processes, as separate machines would run them.

A benchmark's client and its servers in one process share one interpreter
lock: the servers' work (HTTP, decoding, pandas, encoding) then queues
behind the client's and each other's, which separate machines would never
do. ``Hosts(servers, processes, ...)`` spreads the servers over a few child
processes (one per core is enough: the servers mostly sleep in their delay),
each serving its share on loopback with waitress until its stdin closes.
A line ``counts`` on a child's stdin is answered with each of its servers'
exact traffic (requests, request and response body bytes, as
``support.Middleware`` counts them) and the child's CPU seconds.

Run as a child: ``python -m benchmarks.hosts SPEC_JSON``.
"""

from __future__ import annotations

import io
import json
import math
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import ``benchmarks`` as a package, from the repo root
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    __package__ = "benchmarks"

import pandas as pd  # noqa: E402

import fedmed as fm  # noqa: E402

from benchmarks.support import Background, Middleware, cohort  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 300  # seconds for a child to import fedmed and start its servers


class Replay:
    """WSGI: the first answer to each distinct request body comes from the FedMed server, repeats from memory.

    The client cannot tell: it gets the very bytes the server sent. The
    server's own work (Flask, decoding, pandas, encoding) is then done once,
    so a repeated measurement sees the client, waitress and the delay only,
    as when every server has a machine of its own.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.answers: dict[bytes, tuple[str, list[tuple[str, str]], bytes]] = {}

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        key = environ["REQUEST_METHOD"].encode() + environ.get("PATH_INFO", "").encode() + b"\0" + body
        if key not in self.answers:
            captured: list[Any] = []
            environ["wsgi.input"] = io.BytesIO(body)
            answer = self.app(environ, lambda status, headers, exc_info=None: captured.extend([status, headers]))
            try:
                content = b"".join(answer)
            finally:
                if hasattr(answer, "close"):
                    answer.close()
            self.answers[key] = (captured[0], list(captured[1]), content)
        status, headers, content = self.answers[key]
        start_response(status, headers)
        return [content]


def host(spec: dict[str, Any]) -> None:
    """Child process: the servers ``spec`` names, their URLs on stdout, then serve until stdin closes."""
    config = fm.load_config(None)  # one config for all: no privacy policies, exact results
    running, middlewares = [], []
    for site in range(spec["first"], spec["first"] + spec["count"]):
        server = fm.Server(config)
        server[spec["fragment"]] = pd.DataFrame(cohort(spec["rows"], site, spec["seed"]))
        app = Replay(server.app) if spec["replay"] else server.app
        middlewares.append(Middleware(app, spec["delay"]))
        # poll(), not select(): hundreds of servers and their connections pass 1,024 descriptors
        running.append(Background(middlewares[-1], threads=spec["threads"]))
    print(json.dumps([r.url for r in running]), flush=True)
    for line in sys.stdin:
        if line.strip() == "counts":
            print(json.dumps({"traffic": [m.counts() for m in middlewares], "cpu": time.process_time()}), flush=True)
    for r in running:
        r.stop()


class Hosts:
    """``servers`` servers, sites ``0..servers-1`` of ``support.cohort``, spread over ``processes`` child processes.

    Every server holds one fragment ``fragment`` of ``rows`` rows and sleeps
    ``delay`` seconds per request; ``replay`` answers repeated requests from
    memory (``Replay``).
    """

    def __init__(self, servers: int, processes: int, delay: float = 0.0, *, rows: int, replay: bool = False,
                 fragment: str = "cohort", seed: int = 2024, threads: int = 2) -> None:
        self.children: list[subprocess.Popen[str]] = []
        self.urls: list[str] = []
        share = math.ceil(servers / max(1, min(processes, servers)))
        try:
            for first in range(0, servers, share):
                spec = {"count": min(share, servers - first), "first": first, "delay": delay, "rows": rows,
                        "replay": replay, "fragment": fragment, "seed": seed, "threads": threads}
                self.children.append(subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), json.dumps(spec)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                ))
            for child in self.children:
                self.urls += json.loads(self._answer(child, START_TIMEOUT, "start its servers"))
        except BaseException:
            self.close()
            raise

    def traffic(self) -> tuple[list[dict[str, int]], float]:
        """Each server's traffic so far (``requests``, ``bytes_in``, ``bytes_out``), and the children's CPU seconds."""
        traffic, cpu = [], 0.0
        for child in self.children:
            child.stdin.write("counts\n")  # type: ignore[union-attr]
            child.stdin.flush()  # type: ignore[union-attr]
            answer = json.loads(self._answer(child, 60, "report its counts"))
            traffic += answer["traffic"]
            cpu += answer["cpu"]
        return traffic, cpu

    def counts(self) -> tuple[list[int], float]:
        """Each server's request count so far, and the children's CPU seconds."""
        traffic, cpu = self.traffic()
        return [t["requests"] for t in traffic], cpu

    @staticmethod
    def _answer(child: subprocess.Popen[str], timeout: float, what: str) -> str:
        # a bounded wait: a child that hangs or dies fails the benchmark instead of stalling it
        with selectors.DefaultSelector() as selector:
            selector.register(child.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
            if not selector.select(timeout):
                raise RuntimeError(f"a host process did not {what} within {timeout} s")
        line = child.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"a host process ended before it could {what} (exit code {child.poll()})")
        return line

    def close(self) -> None:
        for child in self.children:
            try:
                child.stdin.close()  # type: ignore[union-attr]
                child.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                child.kill()  # this process's own child, by its handle
        self.children = []

    def __enter__(self) -> "Hosts":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


if __name__ == "__main__":
    host(json.loads(sys.argv[1]))
