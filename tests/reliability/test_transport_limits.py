"""What the transport itself bounds: every error a msgpack body, answers larger than requests, idle
connections, and the memory a server process keeps after big requests."""

from __future__ import annotations

import gc
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pandas as pd
import pytest
import requests
import werkzeug.exceptions

import fedmed as fm
from fedmed import wire
from fedmed.cli import connection_options
from fedmed.server import http, process
from fedmed.serving import BackgroundServer

EXACT = "example/config-exact.yaml"  # every operation, no privacy policy
SECRET = 987654.321
SUM = wire.pack({"protocol": 1, "nodes": [["fragment", ["v"], []], ["map", ["sum"], [0]]], "outputs": [1]})


def make_server() -> fm.Server:
    server = fm.Server(EXACT)
    server["v"] = [SECRET, 2.0]
    return server


def error_of(reply: Any) -> dict[str, Any]:
    """The typed msgpack error of a reply (test client or requests), checking it is no HTML page."""
    body = reply.get_data() if hasattr(reply, "get_data") else reply.content
    assert reply.headers["Content-Type"] == wire.CONTENT_TYPE, body[:200]
    assert b"<html" not in body.lower() and b"Traceback" not in body and b"987654" not in body
    error = msgpack.unpackb(body)["error"]
    assert error["type"] in fm.errors.ERROR_TYPES and error["message"]
    return error


# -- 1. every error is a msgpack body ------------------------------------------------------------------


def boom(exc: BaseException) -> Any:
    def raise_it(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return raise_it


def test_memory_error_escaping_a_route_is_a_msgpack_503(serve, monkeypatch):
    server = make_server()
    monkeypatch.setattr(server, "handle", boom(MemoryError()))
    for reply in (server.app.test_client().post(wire.ENDPOINT, data=SUM),
                  requests.post(serve(server).url + wire.ENDPOINT, data=SUM, timeout=10)):
        assert reply.status_code == 503
        error = error_of(reply)
        assert error["type"] == "ServerUnavailable" and error["message"] == http.OUT_OF_MEMORY
    with pytest.raises(fm.ServerUnavailable, match="ran out of memory"):
        fm.FedData([fm.Remote(serve(server).url, "v")]).sum().compute()


def test_an_error_outside_server_handle_is_a_generic_msgpack_500(monkeypatch, caplog):
    server = make_server()
    monkeypatch.setattr(server, "info", boom(RuntimeError(f"value {SECRET}")))
    with caplog.at_level("INFO", logger="fedmed.server"):
        reply = server.app.test_client().get("/v1/info")
    assert reply.status_code == 500
    error = error_of(reply)
    assert error == {**error, "type": "ServerError", "message": http.INTERNAL_ERROR}
    assert "Traceback" in caplog.text  # the details stay in the server's log


def test_a_failing_after_request_hook_is_a_msgpack_500():
    server = make_server()
    server.app.after_request(boom(ZeroDivisionError()))
    reply = server.app.test_client().post(wire.ENDPOINT, data=SUM)
    assert reply.status_code == 500 and error_of(reply)["message"] == http.INTERNAL_ERROR


def test_out_of_memory_while_logging_still_answers_503(monkeypatch):
    server = make_server()
    monkeypatch.setattr(server, "handle", boom(MemoryError()))
    monkeypatch.setattr(http.log, "error", boom(MemoryError()))
    reply = server.app.test_client().post(wire.ENDPOINT, data=SUM)
    assert reply.status_code == 503 and error_of(reply)["message"] == http.OUT_OF_MEMORY


def test_out_of_memory_in_server_handles_own_error_path_is_a_503(monkeypatch):
    """Evaluation runs out of memory, then so does ``Server.handle`` logging it: the app still answers."""
    from fedmed.server import core

    server = make_server()
    monkeypatch.setattr(server, "evaluate", boom(MemoryError()))
    monkeypatch.setattr(core.log, "exception", boom(MemoryError()))
    monkeypatch.setattr(core.log, "error", boom(MemoryError()))
    reply = server.app.test_client().post(wire.ENDPOINT, data=SUM)
    assert reply.status_code == 503
    error_of(reply)
    monkeypatch.undo()
    assert server.app.test_client().post(wire.ENDPOINT, data=SUM).status_code == 200


def test_werkzeug_refusals_and_unknown_routes_stay_typed(monkeypatch):
    server = make_server()
    client = server.app.test_client()
    assert (client.get("/nope").status_code, error_of(client.get("/nope"))["type"]) == (404, "ServerError")
    assert (client.get(wire.ENDPOINT).status_code, error_of(client.get(wire.ENDPOINT))["type"]) == (405, "ServerError")
    monkeypatch.setattr(server, "handle", boom(werkzeug.exceptions.BadRequest()))  # e.g. a body cut short
    reply = client.post(wire.ENDPOINT, data=SUM)
    assert reply.status_code == 400 and error_of(reply) == {**error_of(reply), "type": "BadRequest"}


def test_unexpected_error_answers_are_prepared():
    assert http.unexpected_error(MemoryError())[0] == 503
    assert http.unexpected_error(KeyError("x"))[0] == 500
    assert http.unexpected_error(MemoryError()) is http.unexpected_error(MemoryError())  # nothing built


# -- 2. answers larger than a request may be ------------------------------------------------------------


def distinct_words(n: int) -> pd.DataFrame:
    return pd.DataFrame({"w": [f"word-{i:09d}" for i in range(n)], "x": np.arange(n, dtype="float64")})


ROWS = 400_000  # set() of w packs to ~6.4 MB, value_counts() to ~6.8 MB: both over the 4 MiB request limit


def test_an_answer_over_4_mib_reaches_the_client(serve, simulate):
    frame = distinct_words(ROWS)
    assert len(wire.pack(set(frame["w"]))) > wire.MAX_BODY_BYTES
    _, simulated = simulate([frame], config=EXACT)
    words = simulated["w"].set().compute()
    assert len(words) == ROWS and set(words) == set(frame["w"])
    server = fm.Server(EXACT)
    server["f"] = frame
    remote = fm.FedData([fm.Remote(serve(server).url, "f")], config=EXACT)
    counts = remote["w"].value_counts().compute()
    assert len(counts) == ROWS and int(counts.sum()) == ROWS


def test_an_answer_over_the_client_bound_names_its_size_and_the_option(serve, monkeypatch):
    server = fm.Server(EXACT)
    server["f"] = distinct_words(1000)
    url = serve(server).url
    monkeypatch.setattr(fm.options, "max_response_bytes", 4096)
    with pytest.raises(fm.ServerError) as caught:
        fm.FedData([fm.Remote(url, "f")], config=EXACT)["w"].set().compute()
    message = str(caught.value)
    size = int(re.search(r"with ([\d,]+) bytes", message).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert size > 4096 and "fm.options.max_response_bytes" in message and "4,096" in message
    assert caught.value.server == url and "not msgpack" not in message
    monkeypatch.setattr(fm.options, "max_response_bytes", 1 << 30)
    assert len(fm.FedData([fm.Remote(url, "f")], config=EXACT)["w"].set().compute()) == 1000


# -- 3. memory handed back after big requests -----------------------------------------------------------

glibc = pytest.mark.skipif(process._glibc is None, reason="glibc only")


@glibc
def test_arenas_can_be_limited_and_memory_trimmed():
    assert process.limit_arenas(process.ARENAS)
    assert process.trim() in (True, False)
    assert process.resident_bytes() > 0


@glibc
def test_responses_trim_only_after_growth():
    server = make_server()
    middleware = server.app.wsgi_app
    assert isinstance(middleware, process.ReturnFreedMemory)
    client = server.app.test_client()
    middleware.growth = 32 << 20
    assert client.post(wire.ENDPOINT, data=SUM, buffered=True).status_code == 200 and middleware.trims == 0
    grown = np.ones(64 << 20 >> 3)  # 64 MiB more resident than when the app was made
    assert client.post(wire.ENDPOINT, data=SUM, buffered=True).status_code == 200 and middleware.trims == 1
    assert client.post(wire.ENDPOINT, data=SUM, buffered=True).status_code == 200 and middleware.trims == 1
    del grown


@glibc
def test_trimming_gives_freed_heap_memory_back():
    # many small objects live in malloc's heap (not in mmaps), which glibc keeps after free without a trim
    process.trim()
    before = process.resident_bytes()
    junk = [bytearray(2000) for _ in range(100_000)]  # ~200 MB
    grown = process.resident_bytes()
    del junk[:-1]  # the last one pins the top of the heap, so free() alone cannot shrink it
    gc.collect()
    kept = process.resident_bytes()
    process.trim()
    after = process.resident_bytes()
    assert grown - before > 150 << 20
    assert kept - after > 100 << 20, (before, grown, kept, after)


# -- 4. idle and half-open connections ------------------------------------------------------------------


def fill(port: int, sockets: int) -> list[socket.socket]:
    """Idle connections: opened, half a request line sent, then silence."""
    out = []
    for _ in range(sockets):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/evaluate HTTP/1.1\r\n")
        out.append(s)
    return out


def served_after(url: str, limit: float) -> float:
    """Seconds until ``GET /v1/info`` is answered (the connection waits in the listen backlog meanwhile)."""
    started = time.monotonic()
    reply = requests.get(url + "/v1/info", timeout=limit)
    assert reply.status_code == 200
    return time.monotonic() - started


def test_idle_connections_are_closed_so_new_clients_are_served():
    server = make_server()
    with BackgroundServer(server.app, connection_limit=5, channel_timeout=1, cleanup_interval=1) as running:
        idle = fill(running.port, 5)
        try:
            with pytest.raises(requests.exceptions.ReadTimeout):  # every slot held: nobody reads the request
                requests.get(running.url + "/v1/info", timeout=0.5)
            assert served_after(running.url, 10) < 5  # channel timeout 1 s, checked every second
            for s in idle:
                s.settimeout(5)
                assert s.recv(100) == b""  # closed by the server
        finally:
            for s in idle:
                s.close()


def test_serve_takes_connection_limit_and_channel_timeout(tmp_path: Path):
    pd.DataFrame({"v": [1.0, 2.0]}).to_csv(tmp_path / "v.csv", index=False)
    process_ = subprocess.Popen(
        [sys.executable, "-u", "-m", "fedmed.cli", "serve", "--config", EXACT, "--port", "0",
         "--data", f"v={tmp_path / 'v.csv'}", "--connection-limit", "4", "--channel-timeout", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = [process_.stdout.readline() for _ in range(5)]  # type: ignore[union-attr]
        url = re.search(r"http://127\.0\.0\.1:(\d+)", lines[0])
        assert url, lines
        assert any("connections: at most 4; idle ones closed after 1 s" in line for line in lines), lines
        idle = fill(int(url.group(1)), 4)
        try:
            assert served_after(url.group(0), 10) < 5
        finally:
            for s in idle:
                s.close()
    finally:
        process_.send_signal(signal.SIGINT)
        out, _ = process_.communicate(timeout=20)
    assert process_.returncode == 0 and "stopped." in out


@pytest.mark.parametrize("flag", [["--channel-timeout", "0"], ["--connection-limit", "-1"], ["--channel-timeout", "x"]])
def test_serve_refuses_bad_connection_settings(flag):
    done = subprocess.run([sys.executable, "-m", "fedmed.cli", "serve", "--config", EXACT, *flag],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and flag[0] in done.stderr


def test_cleanup_interval_follows_the_channel_timeout():
    assert connection_options(100, 30) == {"connection_limit": 100, "channel_timeout": 30, "cleanup_interval": 15}
    assert connection_options(10, 1)["cleanup_interval"] == 1
    assert connection_options(10, 600)["cleanup_interval"] == 30

