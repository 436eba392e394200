"""Faults on the client's path: servers that stop, hang, answer garbage, come up late, or are down."""

from __future__ import annotations

import socket
import threading
import time
import warnings
from typing import Any, Callable, Iterator

import pytest

import fedmed as fm
from fedmed.backend.remote import HttpLink
from fedmed.serving import BackgroundServer


@pytest.fixture
def hold() -> Iterator[Callable[[socket.socket], socket.socket]]:
    """Close the sockets a test opened, whatever happens."""
    sockets: list[socket.socket] = []

    def keep(sock: socket.socket) -> socket.socket:
        sockets.append(sock)
        return sock

    yield keep
    for sock in sockets:
        sock.close()


def server_with(values: list[float]) -> fm.Server:
    server = fm.Server()
    server["f"] = values
    return server


# -- (a) a server stopped in the middle of an analysis ------------------------------


def test_server_stopped_between_rounds(monkeypatch):
    running = BackgroundServer(server_with([1.0, 2.0, 3.0]).app)
    try:
        source = fm.Remote(running.url, "f", timeout=3, retries=1, backoff=0.05)
        data = fm.FedData([source])
        sent: list[str] = []
        stopped: list[BackgroundServer] = []
        send = HttpLink.send

        def send_then_stop(self: HttpLink, request: dict[str, Any]) -> dict[str, Any]:
            response = send(self, request)
            sent.append(self.name)
            if len(sent) == 1:
                stopped.append(running)
                running.stop()  # round 1 answered; the server goes away before round 2
            return response

        monkeypatch.setattr(HttpLink, "send", send_then_stop)
        css = ((data - data.sum() / data.len()) ** 2).sum()  # two rounds
        assert css.explain().count("round ") == 2
        started = time.monotonic()
        with pytest.raises(fm.ServerUnavailable) as caught:
            css.compute()
        elapsed = time.monotonic() - started
    finally:
        if not stopped:
            running.stop()
    assert sent == [running.url]  # round 1 succeeded, round 2 never got an answer
    assert caught.value.server == running.url and running.url in str(caught.value)
    assert elapsed < source.timeout


def test_next_compute_after_the_server_stopped():
    running = BackgroundServer(server_with([1.0, 2.0, 3.0]).app)
    source = fm.Remote(running.url, "f", timeout=3, retries=2, backoff=0.05)
    data = fm.FedData([source])
    assert data.sum().compute() == 6.0  # the pooled connection is now open
    running.stop()
    started = time.monotonic()
    with pytest.raises(fm.ServerUnavailable) as caught:
        data.len().compute()
    assert time.monotonic() - started < source.timeout
    assert caught.value.server == running.url and running.url in str(caught.value)
    assert "after 3 attempts" in str(caught.value)


# -- (b) a server that accepts the connection and never answers -------------------------


def test_silent_server_times_out(hold):
    listener = hold(socket.socket())
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    timeout = 0.5
    data = fm.FedData([fm.Remote(url, "f", timeout=timeout, retries=2)])
    started = time.monotonic()
    with pytest.raises(fm.ServerUnavailable) as caught:
        data.sum().compute()
    elapsed = time.monotonic() - started
    assert timeout * 0.9 <= elapsed < timeout + 1.0  # one wait: a timed-out answer is not retried
    assert caught.value.server == url and "no answer within 0.5 s" in str(caught.value)


# -- (c) a server that answers garbage ------------------------------------------------------


def wsgi(status: str, body: bytes, content_type: str) -> Callable[..., list[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    return app


@pytest.mark.parametrize(
    "status, body, content_type, words",
    [
        ("200 OK", b"garbage", "application/msgpack", "HTTP 200"),
        ("502 Bad Gateway", b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html", "HTTP 502"),
        ("200 OK", b"", "application/msgpack", "HTTP 200"),
        ("200 OK", b"\x93\x01\x02\x03", "application/msgpack", "not a msgpack map"),  # msgpack, but a list
        ("200 OK", b"\x81\xa8protocol\x01", "application/msgpack", "without results"),
    ],
    ids=["garbage", "html-502", "empty", "msgpack-list", "no-results"],
)
def test_garbage_answers_are_a_server_error_naming_the_url(serve, status, body, content_type, words):
    url = serve(wsgi(status, body, content_type)).url
    data = fm.FedData([fm.Remote(url, "f", timeout=5)])
    with pytest.raises(fm.ServerError) as caught:
        data.sum().compute()
    assert type(caught.value) is fm.ServerError  # not mistaken for unavailability or a typed error
    assert caught.value.server == url and url in str(caught.value)
    assert words in str(caught.value)


# -- (d) on_error="skip" ------------------------------------------------------------------


def test_skip_pools_the_servers_that_answered(serve):
    up = [serve(server_with([1.0, 2.0, 3.0])).url, serve(server_with([10.0, 20.0])).url]
    down = BackgroundServer(server_with([100.0]).app)
    down_url = down.url
    down.stop()
    sources = [fm.Remote(up[0], "f", timeout=3, retries=0), fm.Remote(down_url, "f", timeout=3, retries=0),
               fm.Remote(up[1], "f", timeout=3, retries=0)]
    data = fm.FedData(sources)
    with pytest.warns(fm.ServerWarning) as warned:
        total, n = fm.compute(data.sum(), data.len(), on_error="skip")
    assert (total, n) == (36.0, 5)
    messages = [str(w.message) for w in warned]
    assert messages and all(down_url in m for m in messages)
    assert not any(up[0] in m or up[1] in m for m in messages)
    assert "pooled 2 of 3" in messages[0]
    # the default still raises, naming the down server
    with pytest.raises(fm.ServerUnavailable) as caught:
        fm.compute(data.sum())
    assert caught.value.server == down_url


def test_skip_with_every_server_down_raises():
    urls = []
    for _ in range(3):
        gone = BackgroundServer(server_with([1.0]).app)
        urls.append(gone.url)
        gone.stop()
    data = fm.FedData([fm.Remote(u, "f", timeout=2, retries=0) for u in urls])
    with warnings.catch_warnings():
        warnings.simplefilter("error", fm.ServerWarning)  # nothing is pooled, so nothing to warn about
        with pytest.raises(fm.ServerUnavailable) as caught:
            fm.compute(data.sum(), on_error="skip")
    assert caught.value.server in urls


# -- (e) retries with backoff ---------------------------------------------------------------


def start_late(port: int, delay: float, reserved: socket.socket, started: list[BackgroundServer]) -> threading.Thread:
    """Start a server on ``port`` ``delay`` seconds from now (the reserved socket keeps it ours until then)."""

    def run() -> None:
        time.sleep(delay)
        reserved.close()
        started.append(BackgroundServer(server_with([1.0, 2.0, 3.0]).app, port=port))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def reserve_port(hold: Callable[[socket.socket], socket.socket]) -> tuple[socket.socket, int]:
    # bound but not listening: connections are refused, and no other process can take the port
    sock = hold(socket.socket())
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


@pytest.mark.parametrize("retries, reached", [(4, True), (0, False)])
def test_a_server_that_comes_up_late_is_reached_with_retries(hold, retries, reached):
    reserved, port = reserve_port(hold)
    url = f"http://127.0.0.1:{port}"
    started: list[BackgroundServer] = []
    data = fm.FedData([fm.Remote(url, "f", timeout=3, retries=retries, backoff=0.15)])
    thread = start_late(port, 0.3, reserved, started)
    t0 = time.monotonic()
    try:
        if reached:
            # attempts at 0, 0.15, 0.45, 1.05 s: the server is up from 0.3 s
            assert data.sum().compute() == 6.0
            assert 0.3 <= time.monotonic() - t0 < 2.5
        else:
            with pytest.raises(fm.ServerUnavailable) as caught:
                data.sum().compute()
            assert time.monotonic() - t0 < 0.3  # one attempt, no waiting
            assert caught.value.server == url and "connection refused" in str(caught.value)
    finally:
        thread.join(5)
        for background in started:
            background.stop()
