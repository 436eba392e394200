"""Shared fixtures: real waitress servers on free loopback ports."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

import fedmed as fm
from fedmed.serving import BackgroundServer


@pytest.fixture
def serve() -> Iterator[Callable[..., BackgroundServer]]:
    """``serve(server_or_app)`` starts it on a free loopback port; all are stopped after the test."""
    running: list[BackgroundServer] = []

    def start(target: Any) -> BackgroundServer:
        app = target.app if isinstance(target, fm.Server) else target
        background = BackgroundServer(app)
        running.append(background)
        return background

    yield start
    for background in running:
        background.stop()


@pytest.fixture
def quickstart(serve: Callable[..., BackgroundServer]) -> tuple[list[fm.Server], list[fm.Remote]]:
    """The README's two servers ([1, 2, 3] and [4, 5]) running on loopback, with their sources."""
    servers = [fm.Server(config="example/config-exact.yaml"), fm.Server(config="example/config-exact.yaml")]
    servers[0]["test array 1/2"] = [1, 2, 3]
    servers[1]["test array 2/2"] = [4, 5]
    urls = [serve(s).url for s in servers]
    sources = [fm.Remote(ip=urls[0], fragment="test array 1/2"), fm.Remote(ip=urls[1], fragment="test array 2/2")]
    return servers, sources


@pytest.fixture
def simulate() -> Callable[..., tuple[list[fm.Server], fm.FedData]]:
    """``simulate(frames)``: one in-process server per frame (fragment "site i"), and a FedData over them."""

    def start(frames: list[Any], config: Any = None) -> tuple[list[fm.Server], fm.FedData]:
        servers = [fm.Server(config) for _ in frames]
        for i, (server, frame) in enumerate(zip(servers, frames)):
            server[f"site {i}"] = frame
        return servers, fm.FedData([fm.Simulation(s, f"site {i}") for i, s in enumerate(servers)], config=config)

    return start
