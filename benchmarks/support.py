"""What both sides of a comparison share: the synthetic cohort, the WSGI middleware, the server thread.

This module imports only the standard library, numpy and waitress, so the original
fedmed's driver (``original_driver.py``, run in its own virtual environment)
uses it too: both FedMeds then hold the very same numbers and are counted
and delayed by the very same code.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from waitress import wasyncore
from waitress.server import create_server

COLUMNS = ("x", "y", "z", "w", "g")


def cohort(rows: int, index: int, seed: int = 2024) -> dict[str, np.ndarray]:
    """Server ``index``'s rows: correlated normals ``x y z``, a uniform ``w`` and a 0/1 group ``g``.

    Servers differ a little in their means, as hospitals do. The covariance of
    ``x`` and ``y`` stays below 1, where the original's ``pearson`` is right.
    """
    rng = np.random.default_rng([seed, index])
    x = rng.normal(0.1 * index, 1.0, rows)
    g = rng.integers(0, 2, rows)
    y = 0.5 * x + 0.3 * g + rng.normal(0.0, 0.8, rows)
    z = 0.3 * x - 0.2 * y + rng.normal(0.0, 1.0, rows)
    w = rng.uniform(0.0, 1.0, rows)
    return {"x": x, "y": y, "z": z, "w": w, "g": g}


class Middleware:
    """WSGI middleware: sleeps ``delay`` seconds per request (a network round trip) and counts.

    Counts are exact: requests, request body bytes (``Content-Length``) and
    response body bytes (the bytes the app yields). Headers are not counted.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], delay: float = 0.0) -> None:
        self.app = app
        self.delay = delay
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.requests = self.bytes_in = self.bytes_out = 0

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"requests": self.requests, "bytes_in": self.bytes_in, "bytes_out": self.bytes_out}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self.delay:
            time.sleep(self.delay)
        size = int(environ.get("CONTENT_LENGTH") or 0)
        answer = self.app(environ, start_response)
        try:
            body = b"".join(answer)
        finally:
            if hasattr(answer, "close"):  # WSGI: the app's teardown runs on close
                answer.close()
        with self._lock:
            self.requests += 1
            self.bytes_in += size
            self.bytes_out += len(body)
        return [body]


class Background:
    """A WSGI app served by waitress in a daemon thread on a free loopback port.

    Like ``fedmed.serving.BackgroundServer``, but with waitress's own event-loop
    timeout: that class passes ``asyncore_loop_timeout=0.05``, which waitress
    reads as an integer, 0, so each of its servers polls without sleeping and
    keeps half a core busy while idle; with 16 of them a 20 ms round trip took
    over 400 ms here. Stopping goes through the loop's trigger either way, so
    the longer timeout never delays ``stop``.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], threads: int = 4) -> None:
        # poll, not select: with dozens of servers and pooled client connections, descriptors pass 1024
        self._server = create_server(app, host="127.0.0.1", port=0, threads=threads, asyncore_use_poll=True)
        self.url = f"http://127.0.0.1:{self._server.effective_port}"  # type: ignore[union-attr]
        self._thread = threading.Thread(target=self._server.run, name=self.url, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        server = self._server
        try:
            server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))  # type: ignore[union-attr]
        except OSError:  # the loop closed its trigger already (seen once in a dozen runs): it is ending
            pass
        self._thread.join(timeout)
        server.task_dispatcher.shutdown(timeout=timeout)  # type: ignore[union-attr]


def run_record(wall: float, value: Any, traffic: Sequence[dict[str, int]]) -> dict[str, Any]:
    """One measured call: its wall seconds, its value, and the servers' traffic during it (``Middleware.counts``)."""
    return {
        "wall": wall,
        "value": value,
        "requests_per_server": [t["requests"] for t in traffic],
        "bytes_in": sum(t["bytes_in"] for t in traffic),
        "bytes_out": sum(t["bytes_out"] for t in traffic),
    }


def median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, result)`` of one call."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """The median seconds of ``repeats`` calls of ``fn``."""
    return median(timed(fn)[0] for _ in range(repeats))
