"""Concurrent ``Server.append`` and replacement: no lost rows, one version per append.

A data owner's process may append rows from several threads (one per feed)
while it replaces fragments and while clients query them. Each append reads
the current table, concatenates and stores the result under one lock, so 8
threads x 50 one-row appends keep exactly 400 new rows and raise the version
exactly 400 times. Under a ``Snapshot`` policy appends go to the pending
version, which is published in batches as before.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np
import pandas as pd

import fedmed as fm
from fedmed.serving import BackgroundServer

THREADS = 8
APPENDS = 50
TIME_BUDGET = 60.0  # seconds: a safety bound; each test normally takes well under a second or two


def run_together(*targets: Callable[[], None]) -> None:
    """Start every target at once (behind a barrier) and wait for all of them."""
    barrier = threading.Barrier(len(targets))

    def start(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            barrier.wait()
            target()
        return run

    threads = [threading.Thread(target=start(t), name=f"worker-{i}") for i, t in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIME_BUDGET)
    assert not any(t.is_alive() for t in threads), "a worker hung"


def appender(server: fm.Server, worker: int) -> Callable[[], None]:
    """Appends rows ``(worker, i)`` one at a time, ``i`` = 0..APPENDS-1."""
    def run() -> None:
        for i in range(APPENDS):
            server.append("f", pd.DataFrame({"worker": [worker], "i": [i], "one": [1.0]}))
    return run


def start_table() -> pd.DataFrame:
    return pd.DataFrame({"worker": [-1], "i": [-1], "one": [1.0]})


def test_concurrent_appends_keep_every_row_and_raise_the_version_once_each():
    server = fm.Server()
    server["f"] = start_table()
    run_together(*(appender(server, w) for w in range(THREADS)))
    table = server["f"].data
    assert len(table) == 1 + THREADS * APPENDS
    appended = table[table["worker"] >= 0]
    assert sorted(zip(appended["worker"], appended["i"])) == [(w, i) for w in range(THREADS) for i in range(APPENDS)]
    assert server.version("f") == 1 + THREADS * APPENDS
    for w in range(THREADS):  # each thread's rows in its own order
        assert appended[appended["worker"] == w]["i"].tolist() == list(range(APPENDS))


def test_appends_mixed_with_replacements_lose_no_row_after_the_last_replacement():
    """A replacement starts the table afresh; every append after it must be there.

    Each worker appends in order, so the rows of worker ``w`` that survive
    the last replacement are exactly its appends that came after it: a run
    ``k..49`` with no gap. A lost append shows as a gap (or a missing tail).
    """
    server = fm.Server()
    server["f"] = start_table()
    replacements = 0

    def replacer() -> None:
        # replace until about half the appends are in (the version counts both), so that
        # appends come before the last replacement and after it
        nonlocal replacements
        while server.version("f") < 1 + THREADS * APPENDS // 2:
            r = replacements
            server["f"] = pd.DataFrame({"worker": [-1] * (r + 1), "i": [-(r + 2)] * (r + 1), "one": [1.0] * (r + 1)})
            replacements += 1
            time.sleep(0.001)

    run_together(replacer, *(appender(server, w) for w in range(THREADS)))
    table = server["f"].data
    assert server.version("f") == 1 + replacements + THREADS * APPENDS
    base = table[table["worker"] < 0]
    assert len(set(base["i"])) == 1 and len(base) == -1 - base["i"].iloc[0]  # one replacement's rows, all of them
    appended = table[table["worker"] >= 0]
    for w in range(THREADS):
        kept = appended[appended["worker"] == w]["i"].tolist()
        assert kept == list(range(APPENDS - len(kept), APPENDS)), (w, kept)
    # the replacements interleaved with the appends: some rows were dropped by a replacement, some kept
    assert replacements >= 1 and 0 < len(appended) < THREADS * APPENDS


def test_appends_under_snapshot_accumulate_in_the_pending_version():
    server = fm.Server({"methods": {"add": "fedmed.ops.binary.add"},
                        "privacy": [{"policy": "fedmed.privacy.Snapshot", "params": {"min_new_rows": 10}}]})
    server["f"] = start_table()
    run_together(*(appender(server, w) for w in range(THREADS)))
    # appends are serialised, so every 10th one publishes: 40 publications, nothing left pending
    assert len(server["f"].data) == 1 + THREADS * APPENDS and "f" not in server._pending
    assert server.version("f") == 1 + THREADS * APPENDS // 10
    server.append("f", start_table())  # one more row waits in the pending version
    assert len(server["f"].data) == 1 + THREADS * APPENDS and len(server._pending["f"].data) == 2 + THREADS * APPENDS
    assert server.version("f") == 1 + THREADS * APPENDS // 10


def test_appends_while_clients_read_through_simulation_and_http():
    """Readers never see a torn table and never see rows disappear; the end state has every row."""
    server = fm.Server()
    server["f"] = start_table()
    background = BackgroundServer(server.app, threads=4)
    failures: list[str] = []
    done = threading.Event()

    def reader(source: Callable[[], fm.FedData], name: str) -> Callable[[], None]:
        def run() -> None:
            data = source()
            last = 0
            while not done.is_set():
                try:
                    rows, total = fm.compute(data["one"].len(), data["one"].sum())
                except Exception as exc:  # noqa: BLE001 - every failure is reported below
                    failures.append(f"{name}: {type(exc).__name__}: {exc}")
                    return
                if rows != total or rows < last:  # every row has one == 1.0; appends only add rows
                    failures.append(f"{name}: {rows} rows, sum {total}, after {last} rows")
                last = rows
        return run

    def writers() -> None:
        run_together(*(appender(server, w) for w in range(THREADS)))
        done.set()

    try:
        run_together(
            writers,
            reader(lambda: fm.FedData([fm.Simulation(server, "f")]), "simulation"),
            reader(lambda: fm.FedData([fm.Remote(background.url, "f", timeout=20)]), "http"),
        )
    finally:
        done.set()
        background.stop()
    assert failures == [], "\n".join(failures[:20])
    assert len(server["f"].data) == 1 + THREADS * APPENDS and server.version("f") == 1 + THREADS * APPENDS
    assert server.traffic.requests > 2  # the readers really ran alongside the writers


def test_append_of_many_rows_is_one_version():
    server = fm.Server()
    server["f"] = start_table()
    server.append("f", pd.DataFrame({"worker": np.zeros(1000, int), "i": np.arange(1000), "one": np.ones(1000)}))
    assert len(server["f"].data) == 1001 and server.version("f") == 2
