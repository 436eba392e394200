"""Hundreds of servers: one request each, the pooled result pandas gives, and a bounded client.

Two fan-outs, each checked the same way (``check_fanout``): 100 in-process
servers (``fm.Simulation``) and 100 real waitress servers on loopback
(``fedmed.serving.BackgroundServer``, through ``fm.Remote``), all in this
process; about 3 s on the 2-core test machine. (Before ``BackgroundServer``
passed an integer loop timeout, each idle server busy-polled: 100 of them
took 39 s to start and 12 s to stop there.)

The client's thread count is sampled on the server side, inside every
request: it must stay below the baseline plus the executor's bound
(``fm.options.max_parallel_requests``), however many servers there are.
Each request waits a little inside the server so that requests overlap: an
unbounded fan-out would then need a thread per server (checked by hand with
a 200-thread pool, which these tests reject). The bound is set to
``BOUND`` here, below the 100 servers, so that it is the bound that is
tested (FedMed's own, 256, is above them).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pytest

import fedmed as fm
from fedmed import executor
from fedmed.serving import BackgroundServer

CONFIG = fm.load_config(None)  # loaded once: a hundred servers share it (no policies: exact results)
POOL_PREFIX = "fedmed"  # thread_name_prefix of the executor's pool
HOLD = 0.05  # seconds each request waits inside the server
BOUND = 32  # the executor's bound in these tests: fewer threads than servers


@pytest.fixture(autouse=True)
def bounded_pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The executor bounded at ``BOUND`` threads (it makes a new pool when the option changes)."""
    if executor._pool is not None:
        executor._pool.shutdown(wait=True)  # the earlier pool's threads are gone before threads are counted
        executor._pool = None
    monkeypatch.setattr(fm.options, "max_parallel_requests", BOUND)
    yield


class SamplingServer(fm.Server):
    """A server that, inside each request, records the process's thread count and the calling thread.

    Each request also waits ``HOLD`` seconds, as a remote server would, so the
    requests overlap: a fan-out without a bound would need a thread per server.
    """

    samples: list[tuple[int, str]]  # shared by every server of a test

    def handle(self, body: bytes, client: str = "unknown") -> tuple[int, bytes]:
        time.sleep(HOLD)
        self.samples.append((threading.active_count(), threading.current_thread().name))
        return super().handle(body, client)


def make_servers(count: int) -> tuple[list[SamplingServer], list[pd.DataFrame], list[tuple[int, str]]]:
    """``count`` servers with different rows: a float column ``x`` (some missing) and a group ``g``."""
    samples: list[tuple[int, str]] = []
    servers, parts = [], []
    for i in range(count):
        rng = np.random.default_rng([7, i])
        rows = 5 + i % 11
        x = rng.normal(50.0 + i % 13, 10.0, rows)
        x[rng.random(rows) < 0.1] = np.nan
        part = pd.DataFrame({"x": x, "g": rng.integers(0, 2, rows)})
        server = SamplingServer(CONFIG)
        server.samples = samples
        server[f"site {i}"] = part
        servers.append(server)
        parts.append(part)
    return servers, parts, samples


def pool_threads() -> int:
    return sum(t.name.startswith(POOL_PREFIX) for t in threading.enumerate())


def check_fanout(
    servers: list[SamplingServer], parts: list[pd.DataFrame], samples: list[tuple[int, str]], sources: list[Any],
    client_threads: bool,
) -> None:
    """One ``fm.compute`` of mean, describe and a filtered sum: one request per server, pandas' values, bounded threads."""
    # the pool's threads persist between computations; they are part of the bound, not of the baseline
    baseline = threading.active_count() - pool_threads()
    data = fm.FedData(sources, config=CONFIG)
    x = data["x"]
    mean, summary, above = fm.compute(fm.stats.mean(x), fm.stats.describe(x), x[data["g"] == 1].sum())

    assert [s.traffic.requests for s in servers] == [1] * len(servers)  # one request per server, one round
    pooled = pd.concat(parts, ignore_index=True)
    assert mean == pytest.approx(pooled["x"].mean(), rel=1e-12)
    expected = pooled["x"].describe()[["count", "mean", "std", "min", "max"]]
    assert list(summary.index) == list(expected.index)
    np.testing.assert_allclose(summary.to_numpy(), expected.to_numpy(), rtol=1e-12)
    assert above == pytest.approx(pooled.loc[pooled["g"] == 1, "x"].sum(), rel=1e-12)

    assert len(samples) == len(servers)
    peak = max(count for count, _ in samples)
    # +2: room for a helper thread (tqdm's monitor) that is not the fan-out's
    assert peak <= baseline + BOUND + 2, (peak, baseline)
    if client_threads:  # in-process servers run on the client's threads: at most the pool's, and more than one
        names = {name for _, name in samples}
        assert all(name.startswith(POOL_PREFIX) for name in names), names
        assert 1 < len(names) <= BOUND
    assert pool_threads() <= BOUND


def test_100_in_process_servers_one_request_each_pandas_results_bounded_threads() -> None:
    servers, parts, samples = make_servers(100)
    sources = [fm.Simulation(s, f"site {i}") for i, s in enumerate(servers)]
    check_fanout(servers, parts, samples, sources, client_threads=True)


@pytest.fixture
def start_all() -> Iterator[Callable[[list[fm.Server]], list[BackgroundServer]]]:
    running: list[BackgroundServer] = []

    def start(servers: list[fm.Server]) -> list[BackgroundServer]:
        for server in servers:
            running.append(BackgroundServer(server.app))
        return running

    yield start
    for background in running:
        background.stop()


def test_100_waitress_servers_one_request_each_pandas_results_bounded_threads(start_all) -> None:
    servers, parts, samples = make_servers(100)
    running = start_all(servers)
    sources = [fm.Remote(r.url, f"site {i}", timeout=20.0) for i, r in enumerate(running)]
    check_fanout(servers, parts, samples, sources, client_threads=False)


def test_the_bound_is_an_option_checked_when_a_round_goes_out(monkeypatch) -> None:
    servers, parts, _ = make_servers(3)
    data = fm.FedData([fm.Simulation(s, f"site {i}") for i, s in enumerate(servers)], config=CONFIG)
    monkeypatch.setattr(fm.options, "max_parallel_requests", 2)
    assert data["x"].count().compute() == sum(p["x"].count() for p in parts)
    assert executor._pool is not None and executor._pool._max_workers == 2  # a pool of the new bound
    monkeypatch.setattr(fm.options, "max_parallel_requests", 0)
    with pytest.raises(ValueError, match="max_parallel_requests must be at least 1"):
        data["x"].count().compute()
