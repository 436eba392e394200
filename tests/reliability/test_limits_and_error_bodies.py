"""Request limits, and the body of every error status: msgpack, typed, no traceback."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import requests
import yaml

import fedmed as fm
from fedmed import wire
from fedmed.auth import digest
from fedmed.config import DEFAULT_CONFIG
from fedmed.errors import ERROR_TYPES

RAW = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
SUM = {"map": "fedmed.ops.private.sum", "reduce": "fedmed.ops.public.sum"}


def request(nodes: list[Any], outputs: list[int]) -> bytes:
    return wire.pack({"protocol": 1, "nodes": nodes, "outputs": outputs})


def sum_of(fragment: str) -> bytes:
    return request([["fragment", [fragment], []], ["map", ["sum"], [0]]], [1])


def decode_error(body: bytes) -> dict[str, Any]:
    """The typed error of a non-200 body; asserts the body's shape and that no traceback leaks."""
    assert b"Traceback" not in body and b'File "' not in body and b"<html" not in body.lower()
    decoded = msgpack.unpackb(body, raw=False)
    assert decoded["protocol"] == 1
    error = decoded["error"]
    assert set(error) >= {"type", "message", "fragment", "operation"}
    assert error["type"] in ERROR_TYPES and isinstance(error["message"], str) and error["message"]
    return error


def chain(n: int) -> list[list[Any]]:
    """A valid table of exactly ``n`` nodes: a fragment, literals, and one sum."""
    return [["fragment", ["v"], []]] + [["literal", [i], []] for i in range(n - 2)] + [["map", ["sum"], [0]]]


@pytest.fixture
def server() -> fm.Server:
    server = fm.Server({**RAW, "limits": {"max_nodes": 50, "max_body_bytes": 2000}})
    server["v"] = [1.0, 2.0, 3.0]
    return server


def test_more_nodes_than_the_limit_is_a_400_naming_it(server):
    client = server.app.test_client()
    ok = client.post(wire.ENDPOINT, data=request(chain(50), [49]))
    assert ok.status_code == 200 and msgpack.unpackb(ok.get_data())["results"] == [{"value": 6.0}]
    refused = client.post(wire.ENDPOINT, data=request(chain(51), [50]))
    assert refused.status_code == 400
    error = decode_error(refused.get_data())
    assert error["type"] == "BadRequest"
    assert "51 nodes" in error["message"] and "at most 50" in error["message"]


def test_default_node_limit_is_enforced():
    server = fm.Server()
    server["v"] = [1.0]
    reply = server.app.test_client().post(wire.ENDPOINT, data=request(chain(20_001), [20_000]))
    assert reply.status_code == 400 and "at most 20000" in decode_error(reply.get_data())["message"]


def test_body_limit_applies_to_the_declared_length_and_to_the_bytes(server):
    client = server.app.test_client()
    body = request([["fragment", ["v"], []], ["literal", ["x" * 3000], []], ["map", ["count"], [0]]], [2])
    reply = client.post(wire.ENDPOINT, data=body)
    assert reply.status_code == 413
    error = decode_error(reply.get_data())
    assert error["type"] == "RequestTooLarge" and "2000" in error["message"]
    # Server.handle enforces the limit too (Simulation and other callers skip the HTTP layer)
    status, answer = server.handle(body)
    assert status == 400 and decode_error(answer)["type"] == "BadRequest"


def error_cases() -> list[tuple[str, int, str, Any]]:
    """(name, expected status, expected type, request maker(client))."""
    return [
        ("not msgpack", 400, "BadRequest", lambda c: c.post(wire.ENDPOINT, data=b"\xc1garbage")),
        ("wrong protocol", 400, "BadRequest", lambda c: c.post(wire.ENDPOINT, data=wire.pack({"protocol": 2}))),
        ("too many nodes", 400, "BadRequest", lambda c: c.post(wire.ENDPOINT, data=request(chain(51), [50]))),
        ("no token", 401, "Unauthorized", lambda c: c.post(wire.ENDPOINT, data=sum_of("v"), headers={})),
        ("wrong token", 401, "Unauthorized",
         lambda c: c.post(wire.ENDPOINT, data=sum_of("v"), headers={"Authorization": "Bearer nope"})),
        ("info without token", 401, "Unauthorized", lambda c: c.get("/v1/info", headers={})),
        ("operation not offered", 403, "OperationNotAllowed",
         lambda c: c.post(wire.ENDPOINT, data=request([["fragment", ["v"], []], ["map", ["max"], [0]]], [1]))),
        ("unknown fragment", 404, "UnknownFragment", lambda c: c.post(wire.ENDPOINT, data=sum_of("nope"))),
        ("unknown route", 404, "ServerError", lambda c: c.get("/v2/evaluate")),
        ("unknown route (POST)", 404, "ServerError", lambda c: c.post("/nope", data=b"x")),
        ("wrong method on evaluate", 405, "ServerError", lambda c: c.get(wire.ENDPOINT)),
        ("wrong method on info", 405, "ServerError", lambda c: c.post("/v1/info", data=b"")),
        ("too large", 413, "RequestTooLarge", lambda c: c.post(wire.ENDPOINT, data=b"\x00" * 2001)),
    ]


TOKEN = "s3cret"


@pytest.fixture
def guarded() -> fm.Server:
    """Auth on, limits small, ``max`` not offered."""
    methods = {k: v for k, v in RAW["methods"].items() if k != "max"}
    server = fm.Server({"methods": methods, "auth": {"tokens": {"alice": digest(TOKEN)}},
                        "limits": {"max_nodes": 50, "max_body_bytes": 2000}})
    server["v"] = [1.0, 2.0, 3.0]
    return server


class Authorized:
    """A test client that sends the token unless the call passes its own headers."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def _headers(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs.setdefault("headers", {"Authorization": f"Bearer {TOKEN}"})
        return kwargs

    def post(self, *args: Any, **kwargs: Any) -> Any:
        return self.client.post(*args, **self._headers(kwargs))

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return self.client.get(*args, **self._headers(kwargs))


@pytest.mark.parametrize("name, status, kind, call", error_cases(), ids=[c[0] for c in error_cases()])
def test_every_error_status_has_a_typed_msgpack_body(guarded, name, status, kind, call):
    reply = call(Authorized(guarded.app.test_client()))
    assert reply.status_code == status
    assert reply.headers["Content-Type"] == wire.CONTENT_TYPE
    error = decode_error(reply.get_data())
    assert error["type"] == kind
    # the client rebuilds the same class from the body, whatever the status
    assert ERROR_TYPES[kind].status in (status, 500)


def test_all_tasks_refused_by_policy_is_403_with_typed_results():
    server = fm.Server({**RAW, "privacy": [{"policy": "fedmed.privacy.Anonymity", "params": {"k": 10}}]})
    server["v"] = [1.0, 2.0, 3.0]
    body = request([["fragment", ["v"], []], ["map", ["sum"], [0]], ["map", ["count"], [0]]], [1, 2])
    reply = server.app.test_client().post(wire.ENDPOINT, data=body)
    assert reply.status_code == 403
    raw = reply.get_data()
    assert b"Traceback" not in raw
    results = msgpack.unpackb(raw)["results"]
    assert [r["error"]["type"] for r in results] == ["PrivacyError", "PrivacyError"]
    assert all(r["error"]["policy"] for r in results)


def test_internal_failure_is_a_generic_500_with_the_traceback_only_in_the_log(caplog):
    # a map whose value the wire cannot carry (an iterator): the one way to reach the 500 branch
    server = fm.Server({"methods": {"sum": SUM, "leak": {"map": "builtins.iter", "reduce": "builtins.list"}}})
    server["v"] = [987654.321, 2.0]
    body = request([["fragment", ["v"], []], ["map", ["leak"], [0]]], [1])
    with caplog.at_level("INFO", logger="fedmed.server"):
        reply = server.app.test_client().post(wire.ENDPOINT, data=body)
    assert reply.status_code == 500
    error = decode_error(reply.get_data())
    assert error["type"] == "ServerError" and "internal server error" in error["message"]
    assert b"987654" not in reply.get_data()
    assert "Traceback" in caplog.text  # the details went to the server's log
    # and the server is fine afterwards
    again = server.app.test_client().post(wire.ENDPOINT, data=sum_of("v"))
    assert again.status_code == 200


def test_error_bodies_over_waitress(serve, guarded):
    """The same bodies through a real WSGI server (waitress adds nothing of its own)."""
    url = serve(guarded).url
    auth = {"Authorization": f"Bearer {TOKEN}"}
    cases = [
        (requests.post(url + wire.ENDPOINT, data=b"\xc1", headers=auth, timeout=10), 400),
        (requests.post(url + wire.ENDPOINT, data=sum_of("v"), timeout=10), 401),
        (requests.post(url + wire.ENDPOINT, data=request([["fragment", ["v"], []], ["map", ["max"], [0]]], [1]),
                       headers=auth, timeout=10), 403),
        (requests.post(url + wire.ENDPOINT, data=sum_of("nope"), headers=auth, timeout=10), 404),
        (requests.get(url + "/nope", headers=auth, timeout=10), 404),
        (requests.get(url + wire.ENDPOINT, headers=auth, timeout=10), 405),
        (requests.post(url + wire.ENDPOINT, data=b"\x00" * 5000, headers=auth, timeout=10), 413),
    ]
    for reply, status in cases:
        assert reply.status_code == status
        assert reply.headers["Content-Type"] == wire.CONTENT_TYPE
        decode_error(reply.content)


def test_client_raises_the_typed_errors(serve, guarded):
    url = serve(guarded).url
    with pytest.raises(fm.Unauthorized) as caught:
        fm.FedData([fm.Remote(url, "v")]).sum().compute()
    assert caught.value.server == url
    with pytest.raises(fm.UnknownFragment):
        fm.FedData([fm.Remote(url, "nope", token=TOKEN)]).sum().compute()
    with pytest.raises(fm.OperationNotAllowed):
        fm.FedData([fm.Remote(url, "v", token=TOKEN)]).max().compute()
    assert fm.FedData([fm.Remote(url, "v", token=TOKEN)]).sum().compute() == 6.0
