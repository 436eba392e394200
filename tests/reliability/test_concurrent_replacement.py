"""Concurrent clients while the data owner replaces the fragment: every answer comes from ONE version.

One waitress server with 8 threads; 8 client threads send mixed queries
through ``fm.Remote``; a writer thread keeps replacing the fragment among a
few known versions (different sizes and values). Each query asks for several
aggregates in one request, and the tuple of answers must equal the tuple
computed on exactly one version: a torn answer (a sum from one version, a
count from another) would match none.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np
import pandas as pd

import fedmed as fm
from fedmed.serving import BackgroundServer

THREADS = 8
QUERIES_PER_THREAD = 200
TIME_BUDGET = 30.0  # seconds: a safety bound; the loop normally finishes well before

rng = np.random.default_rng(7)
VERSIONS = [
    pd.Series(np.full(10, 7.0)),
    pd.Series(np.arange(1000, dtype=float)),
    pd.Series(rng.normal(50.0, 10.0, 5000)),
    pd.Series(np.r_[rng.exponential(3.0, 200), [np.nan] * 20]),
]

Query = Callable[[fm.FedData], tuple[Any, ...]]
QUERIES: dict[str, Query] = {
    "sum, len": lambda x: fm.compute(x.sum(), x.len()),
    "len": lambda x: fm.compute(x.len()),
    "mean": lambda x: fm.compute(fm.stats.mean(x)),
    "describe": lambda x: tuple(fm.compute(fm.stats.describe(x))[0].round(9).items()),
    "sum, count, max, mean": lambda x: fm.compute(x.sum(), x.count(), x.max(), fm.stats.mean(x)),
}


def expected_answers() -> dict[str, list[tuple[Any, ...]]]:
    """The answer of every query on every version, computed in-process through the same code."""
    answers: dict[str, list[tuple[Any, ...]]] = {name: [] for name in QUERIES}
    for version in VERSIONS:
        reference = fm.Server()
        reference["f"] = version
        data = fm.FedData([fm.Simulation(reference, "f")])
        for name, query in QUERIES.items():
            answers[name].append(query(data))
    for name, per_version in answers.items():  # the versions are told apart by every query
        assert len(set(per_version)) == len(VERSIONS), name
    return answers


def test_answers_never_mix_versions():
    expected = expected_answers()
    server = fm.Server()
    server["f"] = VERSIONS[0]
    background = BackgroundServer(server.app, threads=THREADS)
    done = threading.Event()
    failures: list[str] = []
    seen: dict[str, set[int]] = {name: set() for name in QUERIES}
    replacements = 0
    lock = threading.Lock()

    def writer() -> None:
        nonlocal replacements
        i = 0
        while not done.is_set():
            i += 1
            server["f"] = VERSIONS[i % len(VERSIONS)]
            replacements += 1
            time.sleep(0.001)

    def reader(worker: int) -> None:
        data = fm.FedData([fm.Remote(background.url, "f", timeout=20)])
        names = list(QUERIES)
        deadline = time.monotonic() + TIME_BUDGET
        for q in range(QUERIES_PER_THREAD):
            if time.monotonic() > deadline:
                with lock:
                    failures.append(f"worker {worker}: time budget exhausted after {q} queries")
                return
            name = names[(worker + q) % len(names)]
            try:
                answer = QUERIES[name](data)
            except Exception as exc:  # noqa: BLE001 - every failure is reported below
                with lock:
                    failures.append(f"worker {worker} {name}: {type(exc).__name__}: {exc}")
                continue
            matches = [v for v, candidate in enumerate(expected[name]) if candidate == answer]
            with lock:
                if len(matches) != 1:
                    failures.append(f"worker {worker} {name}: {answer!r} matches versions {matches}")
                else:
                    seen[name].add(matches[0])

    writing = threading.Thread(target=writer, name="writer")
    readers = [threading.Thread(target=reader, args=(w,), name=f"reader-{w}") for w in range(THREADS)]
    started = time.monotonic()
    try:
        writing.start()
        for t in readers:
            t.start()
        for t in readers:
            t.join(TIME_BUDGET + 30)
        assert not any(t.is_alive() for t in readers), "a client thread hung"
    finally:
        done.set()
        writing.join(5)
        background.stop()
    elapsed = time.monotonic() - started

    assert failures == [], "\n".join(failures[:20])
    assert server.traffic.requests == THREADS * QUERIES_PER_THREAD  # one request per query
    assert replacements > 10 and server.version("f") == replacements + 1
    # the writer really interleaved with the readers: answers came from several versions
    assert len(set().union(*seen.values())) >= 2, (seen, elapsed)
